//! The `herald` binary as operators run it: CLI, config, signals, memory.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{HERALD, Herald, next_json, publish_ok, ws};

#[tokio::test(flavor = "multi_thread")]
async fn cli_publish_and_subscribe_then_sigterm() {
    let mut herald = Herald::start(&[]);
    let mut sub = Command::new(HERALD)
        .args([
            "subscribe",
            "news,alerts",
            "--url",
            &format!("ws://{}", herald.addr),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while herald.metric("herald_connections{transport=\"ws\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "subscriber never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = Command::new(HERALD)
        .args([
            "publish",
            "alerts",
            r#"{"level":"high"}"#,
            "--url",
            &format!("http://{}", herald.addr),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["subscribers"], 1);

    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["channel"], "alerts");
    assert_eq!(first["data"], serde_json::json!({"level": "high"}));

    // SIGTERM: the server hints the subscriber to reconnect, closes it with 1012, exits 0.
    let status = herald.terminate();
    assert!(status.success(), "{status:?}");
    let hint: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(hint["type"], "reconnect");
    let sub_out = sub.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&sub_out.stderr);
    assert!(stderr.contains("Restart"), "subscriber saw: {stderr}");
    assert!(
        sub_out.status.success(),
        "a restart is a normal end: {stderr}"
    );
}

#[test]
fn config_check_default_and_env_overrides() {
    let out = Command::new(HERALD)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("lifetime_min = \"2m\""), "{text}");

    let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9999\"\n[connection]\nheartbeat = \"5s\"\n",
    )
    .unwrap();
    let out = Command::new(HERALD)
        .args(["--config", file.to_str().unwrap(), "config", "check"])
        .env("HERALD_CONNECTION__HEARTBEAT", "7s")
        // Not a setting (no section): ignored, not an error.
        .env("HERALD_UNRELATED_FLAG", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("listen = \"127.0.0.1:9999\""),
        "file applies: {text}"
    );
    assert!(
        text.contains("heartbeat = \"7s\""),
        "environment wins: {text}"
    );

    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9999\"\nunknown_key = 1\n",
    )
    .unwrap();
    let out = Command::new(HERALD)
        .args(["--config", file.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"));

    let out = Command::new(HERALD)
        .args(["config", "check"])
        .env("HERALD_CONNECTION__LIFETIME_MIN", "10s")
        .env("HERALD_CONNECTION__LIFETIME_MAX", "5s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lifetime_min"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Environment values are the text they are: a password made of digits (or
/// `true`) is a password, numbers and bools are still read where a setting
/// wants one, and an error never shows a secret's value.
#[test]
fn environment_values_keep_their_text_and_errors_hide_secrets() {
    let check = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(HERALD);
        cmd.args(["config", "check"]).env_remove("HERALD_CONFIG");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = check(&[
        ("HERALD_PUSHAAS__ENABLED", "true"),
        ("HERALD_PUSHAAS__PASSWORD", "83920174"),
        ("HERALD_PUSHAPI__BASIC_AUTH_PASSWORD", "true"),
        ("HERALD_LIMITS__MAX_CONNECTIONS", "1234"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_connections = 1234"), "{text}");
    assert!(!text.contains("83920174"), "{text}");

    // A list given as a plain string: refused, naming the key, not the key's value.
    let out = check(&[("HERALD_AUTH__API_KEYS", "k3y-0123456789abcdef")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api_keys"), "{stderr}");
    assert!(!stderr.contains("k3y-0123456789abcdef"), "{stderr}");
}

#[test]
fn cli_publish_presents_an_api_key() {
    let herald = Herald::start(&[
        ("HERALD_AUTH__API_KEYS", r#"["cli-key-0123456789"]"#),
        ("HERALD_PUSHAPI__ENABLED", "false"),
    ]);
    let publish = |key: Option<&str>| {
        let mut cmd = Command::new(HERALD);
        cmd.args([
            "publish",
            "news",
            "1",
            "--url",
            &format!("http://{}", herald.addr),
        ])
        .env_remove("HERALD_API_KEY");
        if let Some(key) = key {
            cmd.env("HERALD_API_KEY", key);
        }
        cmd.output().unwrap()
    };
    let refused = publish(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("unauthorized"));
    let out = publish(Some("cli-key-0123456789"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_subscribe_reads_a_protected_channel_with_a_token() {
    const SECRET: &str = "cli-secret-0123456789";
    let herald = Herald::start(&[
        ("HERALD_AUTH__SECRET", SECRET),
        ("HERALD_AUTH__PROTECTED_CHANNELS", r#"["private-*"]"#),
    ]);
    let url = format!("ws://{}", herald.addr);
    let subscribe = |token: Option<&str>| {
        let mut cmd = Command::new(HERALD);
        cmd.args(["subscribe", "private-ops", "--url", &url])
            .env_remove("HERALD_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            cmd.env("HERALD_TOKEN", token);
        }
        cmd.spawn().unwrap()
    };
    let refused = subscribe(None).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("protected"),
        "{stderr}"
    );

    let exp = herald_testkit::token::unix_now() + 600;
    let claims = serde_json::json!({"sub": "ops", "channels": ["private-*"], "exp": exp});
    let token = herald_testkit::token::hs256(SECRET, &claims);
    let mut sub = subscribe(Some(&token));
    let deadline = Instant::now() + Duration::from_secs(10);
    while herald.metric("herald_connections{transport=\"ws\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "subscriber never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = publish_ok(&herald, "private-ops", serde_json::json!("deploy")).await;
    assert_eq!(reply["subscribers"], 1);
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let got: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(got["data"], "deploy");
    // Shut out (4009): an error end, which scripts must be able to tell.
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/v1/disconnect", herald.addr))
        .json(&serde_json::json!({"filter": {"user": "ops"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let out = sub.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("closed with 4009"), "{stderr}");
}

/// A child process killed when dropped.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP relay to `to` whose open connections can be cut at once, as a
/// network failure would; new ones are relayed again.
struct Relay {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = to.clone();
                conns.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self { addr, open }
    }

    /// Drops every relayed connection.
    fn cut(&self) {
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_subscribe_follow_resumes_after_drops_and_lifetimes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[connection]\nlifetime_min = \"1200ms\"\nlifetime_max = \"1800ms\"\nclose_grace = \"300ms\"\n\
         [[history.rules]]\npattern = \"h*\"\nsize = 100\nttl = \"5m\"\n",
    )
    .unwrap();
    let herald = Herald::start(&[("HERALD_CONFIG", config.to_str().unwrap())]);
    let relay = Relay::start(herald.addr.clone()).await;
    let sub = Command::new(HERALD)
        .args(["subscribe", "hfollow", "--follow", "--url"])
        .arg(format!("ws://{}", relay.addr))
        .env_remove("HERALD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed however the test ends: it would follow forever.
    let mut sub = KillOnDrop(Some(sub));
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = sub.child().stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut got = Vec::new();
    // One deadline for all of them: other lines (reconnect hints) keep coming.
    let mut read_until = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n as usize {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("only {got:?} arrived"));
            let frame: serde_json::Value = serde_json::from_str(&line).unwrap();
            if frame["channel"] == "hfollow" {
                got.push(frame["data"].as_u64().unwrap());
            }
        }
        got.clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while herald.metric("herald_connections{transport=\"ws\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "subscriber never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Over about three connection lifetimes, which end in a reconnect.
    for i in 1..=20 {
        publish_ok(&herald, "hfollow", serde_json::json!(i)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    read_until(20);
    // A drop: what is published before the subscriber is back is resumed.
    relay.cut();
    for i in 21..=25 {
        publish_ok(&herald, "hfollow", serde_json::json!(i)).await;
    }
    let got = read_until(25);
    assert_eq!(
        got,
        (1..=25).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let mut sub = sub.0.take().unwrap();
    sub.kill().unwrap();
    let out = sub.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Both ways a connection ends were lived through.
    assert!(
        stderr.contains("Library(4200)"),
        "a lifetime's end: {stderr}"
    );
    assert!(stderr.contains("connection lost"), "the drop: {stderr}");
}

/// Writes a certificate for 127.0.0.1, self-signed as `name`, to `cert` and
/// its key to `key`; returns the certificate, for clients to trust.
fn install_certificate(name: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let signing_key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&signing_key).unwrap().pem();
    std::fs::write(cert, &pem).unwrap();
    std::fs::write(key, signing_key.serialize_pem()).unwrap();
    pem
}

/// Whether a new connection to `herald` trusting `ca` (and nothing else)
/// completes an https request.
async fn trusts(ca: &str, herald: &Herald) -> Result<(), String> {
    // A client of its own: a pooled connection would keep its old certificate.
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let res = client
        .get(format!("https://{}/health/live", herald.addr))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(res.status(), 200);
    Ok(())
}

/// SIGHUP rereads the certificate files; new connections get the new one.
#[tokio::test]
async fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let old = install_certificate("Herald old", &cert, &key);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // Files that do not load are refused up front, by name.
    let missing = dir.path().join("missing.pem");
    let out = Command::new(HERALD)
        .args(["config", "check"])
        .env("HERALD_SERVER__TLS__CERT_FILE", cert)
        .env("HERALD_SERVER__TLS__KEY_FILE", &missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read server.tls.key_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );

    let mut herald = Herald::start(&[
        ("HERALD_SERVER__TLS__CERT_FILE", cert),
        ("HERALD_SERVER__TLS__KEY_FILE", key),
    ]);
    trusts(&old, &herald).await.expect("the first certificate");
    let new = install_certificate("Herald new", cert.as_ref(), key.as_ref());
    let e = trusts(&new, &herald).await.expect_err("not reloaded yet");
    assert!(e.contains("UnknownIssuer"), "{e}");

    let hup = Command::new("kill")
        .args(["-HUP", &herald.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = trusts(&new, &herald).await {
        assert!(
            Instant::now() < deadline,
            "new certificate never served: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = trusts(&old, &herald)
        .await
        .expect_err("the old certificate is gone");
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert!(
        herald.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop Herald"
    );
    assert!(herald.terminate().success());
}

/// Without TLS, SIGHUP has nothing to reload: Herald logs it and serves on.
#[tokio::test]
async fn sighup_without_tls_is_logged_and_does_not_stop_herald() {
    let mut herald = Herald::start(&[]);
    let mut sub = ws(&herald, "/ws?channels=hup").await;
    let hup = Command::new("kill")
        .args(["-HUP", &herald.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    herald.wait_log("SIGHUP: nothing to reload without TLS.");
    assert!(
        herald.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop Herald"
    );
    // The connection made before the signal is still served.
    publish_ok(&herald, "hup", serde_json::json!(1)).await;
    assert_eq!(next_json(&mut sub).await["data"], 1);
    let status = herald.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(HERALD).arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("herald {}", env!("CARGO_PKG_VERSION"))
    );
}

/// On one core Herald runs on one thread, and serves as it does on many.
#[tokio::test]
async fn one_core_serves_on_one_thread() {
    let herald = Herald::start_on_one_core(&[]);
    assert_eq!(herald.threads(), 1, "one core should mean one thread");
    let mut sub = ws(&herald, "/ws?channels=solo").await;
    let reply = publish_ok(&herald, "solo", "hi".into()).await;
    assert_eq!(reply["subscribers"], 1);
    assert_eq!(next_json(&mut sub).await["data"], "hi");
    assert_eq!(herald.threads(), 1, "serving should not start threads");
}

/// Memory per idle WebSocket connection, measured on the real process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_connections_cost_under_16_kib_each() {
    const WARM: usize = 200;
    const MEASURED: usize = 2000;
    let herald = Herald::start(&[]);
    let mut clients = Vec::with_capacity(WARM + MEASURED);
    let connect = |i: usize| {
        let url = format!("ws://{}/ws?channels=idle{i}", herald.addr);
        async move {
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("connect")
                .0
        }
    };
    for i in 0..WARM {
        clients.push(connect(i).await);
    }
    let before = herald.rss_kib();
    for i in WARM..WARM + MEASURED {
        clients.push(connect(i).await);
    }
    assert_eq!(
        herald.metric("herald_connections{transport=\"ws\"}").await,
        (WARM + MEASURED) as f64
    );
    let after = herald.rss_kib();
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / MEASURED as f64;
    eprintln!("RSS {before} KiB -> {after} KiB: {per_conn:.0} bytes per idle WebSocket connection");
    assert!(
        per_conn < 16.0 * 1024.0,
        "{per_conn:.0} bytes per connection"
    );
    drop(clients);
}
