//! Herald in a real browser: headless Chromium (playwright-core) runs the
//! scripts in `tests/browser` against servers these tests start:
//! - `pushstream.mjs`: push-stream's transports, with short TTLs so every
//!   one is forced to reconnect and resume;
//! - `admin.mjs`: push-api's admin page;
//! - `native.mjs`: native streams and publishing from a page on another
//!   origin, allowed and refused;
//! - `client.mjs`: `clients/js/herald.js` resuming across reconnects;
//! - `h2.mjs`: many SSE streams over one HTTP/2 connection;
//! - `compression.mjs`: permessage-deflate over ws:// and wss://, gzip SSE
//!   over http:// and https://.
//!
//! Needs `node`/`npm` and Chromium (`apt-get install -y chromium`, or
//! `CHROMIUM=/path`); without them the test says so and passes, unless
//! `HERALD_BROWSER_TESTS=required`. `npm ci` runs once into
//! `tests/browser/node_modules`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use tokio::process::Command;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

async fn succeeds(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{cmd:?} took longer than {limit:?}"))?
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}):\n{text}", out.status))
    }
}

/// What is missing to run the browser test, if anything.
async fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    for tool in ["node", "npm"] {
        if succeeds(Command::new(tool).arg("--version"), Duration::from_secs(30))
            .await
            .is_err()
        {
            return Some(format!("no {tool}"));
        }
    }
    None
}

/// Runs `node <script> <args>` in `tests/browser`, within `secs`, and
/// asserts that it printed OK; skips when the browser cannot run.
async fn run_script(script: &str, args: &[String], secs: u64) {
    let _one = BROWSER.lock().await;
    if !prepared().await {
        return;
    }
    let out = succeeds(
        Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(browser_dir()),
        Duration::from_secs(secs),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{out}");
    assert!(out.contains("\nOK"), "{out}");
}

/// One browser at a time: Chromium is heavy and the push-stream test's
/// timing tight. The guard also keeps two `npm ci` from racing.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the browser tests can run (else they skip, unless required),
/// with the node modules installed.
async fn prepared() -> bool {
    if let Some(why) = missing().await {
        assert!(
            std::env::var("HERALD_BROWSER_TESTS").as_deref() != Ok("required"),
            "browser test required but {why}"
        );
        eprintln!("SKIPPED: browser test ({why}; apt-get install -y chromium nodejs npm)");
        return false;
    }
    let dir = browser_dir();
    if !dir.join("node_modules/playwright-core").exists() {
        succeeds(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            Duration::from_secs(300),
        )
        .await
        .unwrap_or_else(|e| panic!("npm ci: {e}"));
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushstream_transports_in_chromium_resume_across_reconnects() {
    let server = TestServer::with(|c| {
        let ps = &mut c.pushstream;
        ps.subscriber_ttl = Duration::from_millis(1200);
        ps.longpolling_ttl = Duration::from_millis(700);
        ps.ping_interval = Duration::from_millis(500);
        ps.max_messages_stored_per_channel = 200;
    })
    .await;
    run_script("pushstream.mjs", &[server.http("/ps")], 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushapi_admin_page_in_chromium() {
    let server = TestServer::with(|c| {
        c.pushstream.enabled = true;
        c.pushapi.enabled = true;
        // No keep-alive `ping` among the messages the page's subscriber gets.
        c.pushapi.persistent_ping_interval = Duration::ZERO;
    })
    .await;
    run_script("admin.mjs", &[server.http("")], 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_streams_and_publish_from_another_origin_in_chromium() {
    let open = TestServer::start().await;
    let closed = TestServer::with(|c| {
        c.server.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    run_script("native.mjs", &[open.http(""), closed.http("")], 120).await;
}

/// `clients/js/herald.js` in Chromium (`tests/browser/client.mjs`): it
/// resumes its channels across forced reconnects with nothing missed or
/// doubled, reports a gap it cannot fill, and uses tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_in_chromium_resumes_across_reconnects_and_reports_gaps() {
    const SECRET: &str = "browser-client-test-secret";
    let server = TestServer::with(|c| {
        c.connection.lifetime_min = Duration::from_millis(1200);
        c.connection.lifetime_max = Duration::from_millis(1800);
        c.connection.close_grace = Duration::from_millis(300);
        common::keep_history(c, 20);
        c.auth.secret = Some(SECRET.into());
        c.auth.protected_channels = vec!["hsecret*".into()];
        c.presence.events = vec!["hsecret".into()];
        c.server.allow_client_publish = true;
    })
    .await;
    let exp = herald_testkit::token::unix_now() + 600;
    let claims = serde_json::json!({"sub": "page", "channels": ["hsecret"], "exp": exp});
    let token = herald_testkit::token::hs256(SECRET, &claims);
    run_script("client.mjs", &[server.http(""), token], 150).await;
}

/// A self-signed certificate for 127.0.0.1, written to `dir`; the returned
/// closure turns TLS on in a config, with HTTP/2 or without.
fn self_signed(
    dir: &std::path::Path,
) -> impl Fn(bool) -> Box<dyn FnOnce(&mut herald_server::Config)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    move |http2: bool| {
        let (cert, key) = (cert.clone(), key.clone());
        Box::new(move |c: &mut herald_server::Config| {
            c.server.tls.cert_file = Some(cert);
            c.server.tls.key_file = Some(key);
            c.server.tls.http2 = http2;
        })
    }
}

/// Compression in Chromium (`tests/browser/compression.mjs`): over ws://
/// and wss:// the browser agrees to permessage-deflate, and a large message
/// goes from the page's `publish` command back to the page intact; over
/// http:// and https:// an EventSource stream comes as gzip, and resumes
/// after the server ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    // Streams end after 3 s, after a reconnect hint 1 s before.
    let short = |c: &mut herald_server::Config| {
        c.server.allow_client_publish = true;
        c.connection.lifetime_min = Duration::from_secs(3);
        c.connection.lifetime_max = Duration::from_secs(3);
        c.connection.close_grace = Duration::from_secs(1);
    };
    let plain = TestServer::with(short).await;
    let secure = TestServer::with(|c| {
        tls(false)(c);
        short(c);
    })
    .await;
    let urls = [
        format!("ws://{}", plain.addr),
        format!("wss://{}", secure.addr),
    ];
    run_script("compression.mjs", &urls, 120).await;
}

/// HTTPS with HTTP/2 in Chromium (`tests/browser/h2.mjs`): a page keeps more
/// EventSource streams open than HTTP/1.1 allows it per host, and every one
/// gets a message published by `fetch`; without HTTP/2, six open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_share_one_http2_connection_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let h2 = TestServer::with(tls(true)).await;
    let h1 = TestServer::with(tls(false)).await;
    run_script(
        "h2.mjs",
        &[
            format!("https://{}", h2.addr),
            format!("https://{}", h1.addr),
        ],
        120,
    )
    .await;
}
