//! Test support: real `redis-server` processes (single or a 3-master
//! cluster) on free loopback ports, and Herald nodes wired to them.
//!
//! Servers run without persistence and are killed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::{RedisBroker, RedisConfig};
use herald_core::outbox::next_conn_id;
use herald_core::{ChannelKey, Engine, Format, Frame, Hub, Message, Outbox};

/// Bound on every await in the tests.
pub const STEP: Duration = Duration::from_secs(10);

/// Makes sure `redis-server` and `redis-cli` exist, installing them with
/// apt-get when running as root.
pub fn ensure_redis_installed() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if has("redis-server") && has("redis-cli") {
            return;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        assert!(
            root,
            "redis-server/redis-cli not found; install them \
             (apt-get install -y redis-server redis-tools) to run these tests"
        );
        for args in [
            &["update"][..],
            &["install", "-y", "redis-server", "redis-tools"][..],
        ] {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .expect("run apt-get");
            assert!(status.success(), "apt-get {args:?} failed");
        }
        assert!(
            has("redis-server"),
            "redis-server still missing after apt-get"
        );
    });
}

fn has(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A loopback port nobody listens on (and, for cluster buses, port + 10000).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 50_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    /// Working directory (cluster config file lives here).
    dir: PathBuf,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start() -> Self {
        Self::start_with(free_port(), &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        ensure_redis_installed();
        let dir = std::env::temp_dir().join(format!("herald-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + STEP;
        while command(self.port, &["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with no data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster without replicas.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let servers: Vec<RedisServer> = (0..3)
            .map(|i| {
                RedisServer::start_with(
                    free_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{i}.conf"),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { servers };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every server reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in &self.servers {
            while !command(s.port, &["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }
}

/// Sends one command over a fresh RESP2 connection; returns the raw reply
/// text, or `None` if the server is not reachable.
pub fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    // Simple strings and short bulk replies arrive in one read; read until a
    // pause for longer ones.
    loop {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                s.set_read_timeout(Some(Duration::from_millis(50))).ok()?;
            }
            Err(_) => break,
        }
    }
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

/// Encodes messages as `offset epoch data`, so tests can read positions.
pub struct Probe;

impl Format for Probe {
    fn slot(&self) -> usize {
        7
    }
    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            msg.offset,
            msg.epoch,
            String::from_utf8_lossy(msg.data())
        ))
    }
}

/// A received frame split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub offset: u64,
    pub epoch: String,
    pub data: String,
}

/// One Herald node: hub, Redis broker, engine.
pub struct Node {
    pub hub: Arc<Hub>,
    pub broker: Arc<RedisBroker>,
    pub engine: Engine,
}

impl Node {
    pub async fn start(config: RedisConfig) -> Self {
        let hub = Arc::new(Hub::new());
        let broker = tokio::time::timeout(STEP, RedisBroker::connect(config, hub.clone()))
            .await
            .expect("connect timed out")
            .expect("connect");
        let engine = Engine::new(hub.clone(), broker.clone());
        Self {
            hub,
            broker,
            engine,
        }
    }

    /// A new connection's outbox subscribed to `channel`.
    pub async fn subscribe(&self, channel: &ChannelKey) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(next_conn_id(), Arc::new(Probe), 1 << 20));
        tokio::time::timeout(STEP, self.engine.subscribe(channel, &outbox))
            .await
            .expect("subscribe timed out")
            .expect("subscribe");
        outbox
    }

    pub async fn publish(&self, channel: &ChannelKey, data: &str) -> herald_core::Published {
        let p = herald_core::Publication::new(Bytes::from(data.to_owned()));
        tokio::time::timeout(STEP, self.engine.publish(channel, p))
            .await
            .expect("publish timed out")
            .expect("publish")
    }
}

/// A config for tests: short timeouts and probe interval, a unique prefix.
pub fn config(urls: Vec<String>) -> RedisConfig {
    RedisConfig {
        urls,
        key_prefix: "t".into(),
        timeout_ms: 500,
        probe_interval_ms: 200,
        unsubscribe_delay_ms: 300,
        ..RedisConfig::default()
    }
}

pub fn key(name: &str) -> ChannelKey {
    ChannelKey::new(&Arc::from("app"), name).unwrap()
}

/// Waits (bounded by `limit`) until `outbox` holds at least `n` frames.
pub async fn recv_n(outbox: &Outbox, n: usize, limit: Duration) -> Vec<Got> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut frames = Vec::new();
    loop {
        outbox.drain(&mut frames);
        if frames.len() >= n {
            break;
        }
        if tokio::time::timeout_at(deadline, outbox.ready())
            .await
            .is_err()
        {
            outbox.drain(&mut frames);
            break;
        }
    }
    frames
        .iter()
        .map(|f| {
            let s = frame_text(f);
            let mut parts = s.splitn(3, ' ');
            Got {
                offset: parts.next().unwrap().parse().unwrap(),
                epoch: parts.next().unwrap().to_owned(),
                data: parts.next().unwrap_or("").to_owned(),
            }
        })
        .collect()
}

/// A queued frame as text.
fn frame_text(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.bytes).into_owned()
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback TCP proxy whose existing connections can be frozen: bytes stop
/// flowing both ways but the sockets stay open, like a peer that vanished
/// without a FIN. New connections after a freeze flow normally.
pub struct FreezingProxy {
    pub port: u16,
    /// Flags of the connections accepted so far; set = frozen.
    conns: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if frozen.load(Ordering::Relaxed) {
                                // Swallow everything, keep the socket open.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Keep the write half open while frozen, too.
                        if frozen.load(Ordering::Relaxed) {
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        Self { port, conns, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes every connection accepted so far.
    pub fn freeze_existing(&self) {
        for flag in self.conns.lock().unwrap().iter() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
