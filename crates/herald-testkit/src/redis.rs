//! Real `redis-server` processes, standalone or a 3-master cluster, on free
//! loopback ports, for tests. Servers run without persistence (a test may
//! `SAVE` a snapshot) and are killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bound on every await in the tests.
pub const STEP: Duration = Duration::from_secs(10);

/// Makes sure `redis-server` and `redis-cli` exist, installing them with
/// apt-get when running as root.
pub fn ensure_redis_installed() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if crate::on_path("redis-server") && crate::on_path("redis-cli") {
            return;
        }
        assert!(
            crate::is_root(),
            "redis-server/redis-cli not found; install them \
             (apt-get install -y redis-server redis-tools) to run these tests"
        );
        crate::apt_install(&["redis-server", "redis-tools"]);
        assert!(
            crate::on_path("redis-server"),
            "redis-server still missing after apt-get"
        );
    });
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
    /// The loopback port it listens on, the same across restarts.
    pub port: u16,
    /// Working directory (cluster config file lives here).
    dir: PathBuf,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
    /// The running process; `None` once killed.
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

    /// Starts it again on the same port, with no data unless a test saved
    /// a snapshot (`SAVE`), which it loads.
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
    /// The masters (0–2), then their replicas when started replicated (3–5).
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// Starts the cluster with `extra(i)` added to server `i`'s arguments.
    pub fn start_with(extra: impl Fn(usize) -> Vec<String>) -> Self {
        Self::create(0, extra)
    }

    /// Three masters (servers 0–2, slots in that order) each with one
    /// replica (servers 3–5), which takes over when its master dies.
    pub fn start_replicated() -> Self {
        // A replica of a master that saw no writes counts as stale under the
        // default validity factor and would never take over.
        Self::create(1, |_| {
            vec!["--cluster-replica-validity-factor".into(), "0".into()]
        })
    }

    fn create(replicas: usize, extra: impl Fn(usize) -> Vec<String>) -> Self {
        let servers: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|i| {
                let mut args = vec![
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-config-file".to_owned(),
                    format!("nodes-{i}.conf"),
                    "--cluster-node-timeout".to_owned(),
                    "2000".to_owned(),
                ];
                args.extend(extra(i));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                RedisServer::start_with(free_port(), &args)
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
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
