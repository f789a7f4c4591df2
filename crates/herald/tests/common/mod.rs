//! Test support: the real `herald` binary as a child process.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A `herald serve` child process on a free port.
pub struct Herald {
    pub child: Child,
    pub addr: String,
    /// Its log lines (JSON) after the one saying it listens.
    logs: std::sync::mpsc::Receiver<String>,
}

impl Herald {
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::spawn(Command::new(HERALD), env)
    }

    /// Starts Herald allowed to run on one core only (`taskset -c 0`), as
    /// the benchmarks pin it.
    pub fn start_on_one_core(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0", HERALD]);
        Self::spawn(cmd, env)
    }

    fn spawn(mut cmd: Command, env: &[(&str, &str)]) -> Self {
        let mut child = cmd
            .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
            .env("HERALD_LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let listening = next_log(&rx, "Herald listening.");
        Self {
            child,
            addr: listening["fields"]["addr"].as_str().unwrap().to_string(),
            logs: rx,
        }
    }

    /// Waits for a log line with `message`, skipping the ones before it.
    pub fn wait_log(&self, message: &str) -> serde_json::Value {
        next_log(&self.logs, message)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmRSS")
    }

    /// The process's OS threads.
    pub fn threads(&self) -> u64 {
        self.status_field("Threads:").parse().expect("Threads")
    }

    /// One field of `/proc/<pid>/status`, trimmed.
    fn status_field(&self, name: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The next JSON log line from `logs` whose message is `message`, within 10 s.
fn next_log(logs: &std::sync::mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = logs
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == message {
            return v;
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a test waits for anything over the network.
pub const WAIT: Duration = Duration::from_secs(15);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `node` at `path`.
pub async fn ws(node: &Herald, path: &str) -> Ws {
    let url = format!("ws://{}{}", node.addr, path);
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect timed out")
        .expect("connect")
        .0
}

/// The next text frame, as JSON.
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
            .expect("closed")
            .expect("error");
        if let Message::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// `POST /api/v1/publish` of `data` to `channel`.
pub async fn publish(node: &Herald, channel: &str, data: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish", node.addr))
        .json(&json!({"channel": channel, "data": data}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
}

/// A publish that must succeed; its answer.
pub async fn publish_ok(node: &Herald, channel: &str, data: Value) -> Value {
    let res = publish(node, channel, data).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}
