//! Starting real servers for the end-to-end tests and running the generator against them.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// apt-get must not run twice at once: tests that install nginx take turns.
static INSTALL: Mutex<()> = Mutex::new(());

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16, within: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + within;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `HERALD_PEERS_DIR`, else `shared/peers` beside the repository.
pub fn peers_dir() -> PathBuf {
    std::env::var_os("HERALD_PEERS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers"),
        PathBuf::from,
    )
}

/// A server process killed when dropped.
pub struct Server {
    pub pid: u32,
    pub port: u16,
    /// Set when we started the process ourselves (Herald); nginx daemonises its own master.
    child: Option<Child>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                // Started by a script: nginx's TERM is its fast shutdown (the master stops its
                // workers); sockudo exits on TERM.
                let _ = Command::new("kill")
                    .args(["-TERM", &self.pid.to_string()])
                    .status();
            }
        }
    }
}

/// Starts Nchan with `start-nchan.sh` (which installs nginx + nchan with apt if needed).
/// `Err` carries the reason when it cannot be started.
pub fn start_nchan() -> Result<Server, String> {
    let _turn = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    start_peer("start-nchan.sh", &["1"])
}

/// Starts sockudo with `start-sockudo.sh`, but only if it is already built: building it takes
/// about 13 minutes on 2 cores, too long for a test (`bench/compare.sh` builds it).
pub fn start_sockudo() -> Result<Server, String> {
    let root = std::env::var_os("SOCKUDO_ROOT").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/peers/sockudo"),
        PathBuf::from,
    );
    if !root.join("bin/sockudo").exists() {
        return Err(format!(
            "{} is not built (run ../shared/peers/start-sockudo.sh once)",
            root.join("bin/sockudo").display()
        ));
    }
    start_peer("start-sockudo.sh", &[])
}

/// Runs `script PORT args…` from the peers directory; the script daemonises the server and
/// prints its pid last.
fn start_peer(script: &str, args: &[&str]) -> Result<Server, String> {
    let script = peers_dir().join(script);
    if !script.exists() {
        return Err(format!(
            "{} not found (set HERALD_PEERS_DIR)",
            script.display()
        ));
    }
    let port = free_port();
    let out = Command::new("bash")
        .arg(&script)
        .arg(port.to_string())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("no pid from {}: {stdout:?}", script.display()))?;
    Ok(Server {
        pid,
        port,
        child: None,
    })
}

/// The `herald` binary next to this test's own build output, built first.
pub fn herald_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<test> → target/<profile>/herald
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("unexpected test binary location")?;
    let bin = profile_dir.join("herald");
    // Always asked for: a binary left by an older build would test old code.
    // Up to date, it costs cargo a second.
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "herald"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cargo build -p herald: {e}"))?;
    if status.success() && bin.exists() {
        Ok(bin)
    } else {
        Err(format!("could not build {}", bin.display()))
    }
}

/// Starts `herald serve` on a free port with client publishing allowed.
pub fn start_herald() -> Result<Server, String> {
    let bin = herald_binary()?;
    let port = free_port();
    let child = Command::new(&bin)
        .arg("serve")
        .env("HERALD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_SERVER__ALLOW_CLIENT_PUBLISH", "true")
        .env("HERALD_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let server = Server {
        pid: child.id(),
        port,
        child: Some(child),
    };
    if !wait_listening(port, Duration::from_secs(20)) {
        return Err(format!("herald did not listen on {port}"));
    }
    Ok(server)
}

/// The started server, or else the test returns early, saying why it is skipped.
macro_rules! started {
    ($what:literal, $start:expr) => {
        match $start {
            Ok(server) => server,
            Err(reason) => {
                eprintln!("SKIPPED: {} could not be started: {reason}", $what);
                return;
            }
        }
    };
}
pub(crate) use started;

/// Runs herald-bench with `args` (split at whitespace) plus `--json`, bounded by a timeout, and
/// returns its report.
pub fn bench(args: &str) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args.split_whitespace())
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("herald-bench starts");
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if Instant::now() > end => {
                let _ = child.kill();
                panic!("herald-bench {args} did not finish within 120 s");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "herald-bench {args}: {}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn n(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

/// Fan-out must count exactly: every message to every subscriber of its channel, once.
pub fn assert_exact_fanout(r: &serde_json::Value, subscribers: u64, channels: u64, messages: u64) {
    assert_eq!(n(r, "connections"), subscribers, "{r}");
    assert_eq!(n(r, "connection_errors"), 0, "{r}");
    assert_eq!(n(r, "measured_connections"), subscribers, "{r}");
    assert_eq!(n(r, "publishes_ok"), messages, "{r}");
    assert_eq!(n(r, "publish_errors"), 0, "{r}");
    assert_eq!(
        n(r, "expected_deliveries"),
        messages * subscribers / channels,
        "{r}"
    );
    assert_eq!(n(r, "deliveries"), messages * subscribers / channels, "{r}");
    assert_eq!(n(r, "lost"), 0, "{r}");
    assert_eq!(n(r, "duplicated"), 0, "{r}");
    assert_eq!(n(r, "misrouted"), 0, "{r}");
    assert_eq!(
        r["latency_ms"]["count"].as_u64(),
        Some(messages * subscribers / channels),
        "{r}"
    );
}

/// Pairs must count exactly: every accepted message reached its receiver, once.
pub fn assert_exact_pairs(r: &serde_json::Value, clients: u64, publishes: u64) {
    assert_eq!(n(r, "connections"), clients, "{r}");
    assert_eq!(n(r, "measured_connections"), clients, "{r}");
    assert_eq!(n(r, "publishes_ok"), publishes, "{r}");
    assert_eq!(n(r, "publish_errors"), 0, "{r}");
    assert_eq!(n(r, "deliveries"), n(r, "publishes_ok"), "{r}");
    assert_eq!(n(r, "lost"), 0, "{r}");
    assert_eq!(n(r, "duplicated"), 0, "{r}");
    assert_eq!(n(r, "misrouted"), 0, "{r}");
}
