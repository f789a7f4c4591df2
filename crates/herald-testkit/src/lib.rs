//! Test support shared by Herald's crates.

pub mod kafka;
pub mod postgres;
pub mod redis;

pub mod apns;
pub mod fcm;
mod tls;
pub mod token;
pub mod webpush;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::STEP;

/// A new, empty directory under the system temp dir named
/// `herald-<what>-<pid>-<n>`, so servers started by one test process (and
/// by concurrent ones) never share a directory, even on a reused port.
pub(crate) fn fresh_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("herald-{what}-{}-{n}", std::process::id()));
    // Left over from a crashed process that had the same pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The last lines of a server's log file, for panic messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("--- last lines of {} ---\n{tail}", path.display())
}

/// Whether `bin --version` runs and succeeds.
pub(crate) fn on_path(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian `packages` with apt-get (as root), panicking on failure.
pub(crate) fn apt_install(packages: &[&str]) {
    let install: Vec<&str> = ["install", "-y"]
        .into_iter()
        .chain(packages.iter().copied())
        .collect();
    for args in [&["update"][..], &install[..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .expect("run apt-get");
        assert!(status.success(), "apt-get {args:?} failed");
    }
}

/// Polls until a server started as `child` accepts TCP connections on
/// `port` and `ready` agrees, bounded by [`STEP`]; panics with the server's
/// `log` if it exits or never gets there.
pub(crate) fn wait_serving(
    child: &mut Child,
    what: &str,
    port: u16,
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} on {port} exited during start-up ({status})\n{}",
                log()
            );
        }
        let listening = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_millis(200),
        )
        .is_ok();
        if listening && ready() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} on {port} did not accept connections within {STEP:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this process runs as root (and so may install packages, and must
/// drop privileges for PostgreSQL).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a short-lived command to completion, capturing its output, and
/// kills it if it takes longer than [`STEP`] (a hung client must fail the
/// test, not hang it). Panics if it cannot be started or times out.
pub(crate) fn run_bounded(cmd: &mut Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    // Drain both pipes while waiting, so a chatty child never blocks.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_bounded(&mut child, STEP);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{what} did not finish within {STEP:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits up to `limit` for `child` to exit; SIGKILLs and reaps it if it does
/// not, returning `None`.
pub(crate) fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
