//! A real Kafka-compatible broker per test: [tansu](https://github.com/tansu-io/tansu)
//! 0.6 with in-memory storage on a free loopback port. Topics are not
//! auto-created, so tests name the ones they need. The broker is killed and
//! its directory removed when the [`Kafka`] is dropped.
//!
//! tansu is not packaged; `scripts/test` builds it once into
//! `$HOME/.cache/peers/tansu` (`HERALD_TANSU` points elsewhere).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::redis::free_port;
use crate::{fresh_dir, log_tail, run_bounded, wait_serving};

/// The `tansu` binary: `$HERALD_TANSU`, else where `scripts/test` builds it.
/// Panics, saying how to get it, when it is missing.
pub fn tansu_bin() -> PathBuf {
    let bin = match std::env::var_os("HERALD_TANSU") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            PathBuf::from(home).join(".cache/peers/tansu/bin/tansu")
        }
    };
    assert!(
        bin.is_file(),
        "tansu not found at {}; run scripts/test once (it builds tansu into \
         $HOME/.cache/peers/tansu), or set HERALD_TANSU to a tansu 0.6 binary",
        bin.display()
    );
    bin
}

/// One tansu broker (a single-node cluster, memory storage).
pub struct Kafka {
    /// Loopback port the broker listens on and advertises.
    port: u16,
    /// Temp directory: the broker's working directory and `tansu.log`;
    /// removed on drop.
    dir: PathBuf,
    /// The `tansu` binary, kept for topic commands.
    bin: PathBuf,
    /// The broker process.
    child: Option<Child>,
}

impl Kafka {
    /// Starts a broker on a free port, waits until it accepts connections
    /// and creates `topics` (one partition each). Panics, with the broker
    /// log, if any of that fails.
    pub fn start(topics: &[&str]) -> Self {
        let bin = tansu_bin();
        let dir = fresh_dir("kafka");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = File::create(dir.join("tansu.log")).expect("create tansu.log");
        let child = Command::new(&bin)
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            // Settings tansu reads from the environment that would point
            // the broker at services the tests do not run.
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // Plain text in tansu.log and panic messages.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut kafka = Self {
            port,
            dir,
            bin,
            child: Some(child),
        };
        kafka.wait_listening();
        for topic in topics {
            kafka.create_topic(topic);
        }
        kafka
    }

    /// Waits until the broker accepts connections, bounded by [`crate::redis::STEP`].
    fn wait_listening(&mut self) {
        let log = self.dir.join("tansu.log");
        let child = self.child.as_mut().expect("started");
        wait_serving(child, "tansu", self.port, || log_tail(&log), || true);
    }

    /// `host:port` for a client's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The loopback port, for clients configured by parts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a topic with one partition (so order is total). Panics, with
    /// tansu's output and the broker log, if it fails, e.g. because the
    /// topic exists.
    pub fn create_topic(&self, name: &str) {
        if let Err(e) = self.try_create_topic(name) {
            panic!("{e}\n{}", self.log());
        }
    }

    /// Creates a topic with one partition; `Err` carries tansu's output
    /// when the broker refuses, e.g. "Topic with this name already exists."
    /// for a second create of the same name.
    pub fn try_create_topic(&self, name: &str) -> Result<(), String> {
        let out = run_bounded(
            Command::new(&self.bin)
                .current_dir(&self.dir)
                .args(["topic", "create", name, "--partitions", "1"])
                .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                .env("NO_COLOR", "1"),
            "tansu topic create",
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tansu topic create {name} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn log(&self) -> String {
        log_tail(&self.dir.join("tansu.log"))
    }
}

impl Drop for Kafka {
    /// SIGKILL: the storage is in memory, there is nothing to flush.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
