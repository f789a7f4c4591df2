//! A real PostgreSQL server per test: a fresh cluster made by `initdb` in a
//! temp directory, served by `postgres` on a free loopback port with trust
//! auth and `fsync=off` (tests need speed, not durability). The server is
//! stopped and its directory removed when the [`Postgres`] is dropped.
//!
//! PostgreSQL refuses to run as root; when the tests do, the cluster is
//! owned by and run as the `postgres` user (which the Debian package
//! creates).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::redis::{STEP, free_port};
use crate::{fresh_dir, is_root, log_tail, on_path, run_bounded, wait_bounded, wait_serving};

/// The OS user that owns and runs the cluster when the tests run as root.
const OS_USER: &str = "postgres";

/// Makes sure PostgreSQL's server binaries exist, installing Debian's
/// `postgresql` with apt-get when running as root; returns the directory
/// holding them, or `None` when they are found on `PATH`.
pub fn ensure_postgres_installed() -> Option<&'static Path> {
    static BIN_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            if let Some(dir) = debian_bin_dir() {
                return Some(dir);
            }
            if on_path("initdb") && on_path("postgres") {
                return None;
            }
            assert!(
                is_root(),
                "PostgreSQL (initdb/postgres) not found; install it \
                 (apt-get install -y postgresql) to run these tests"
            );
            crate::apt_install(&["postgresql"]);
            Some(debian_bin_dir().expect("initdb still missing after apt-get install postgresql"))
        })
        .as_deref()
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`: Debian
/// keeps the server binaries there, off `PATH`.
fn debian_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// A PostgreSQL program: from the server's bin directory when known (so
/// client and server versions match), else from `PATH`.
fn tool(name: &str) -> PathBuf {
    match ensure_postgres_installed() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// A command running `program` as the cluster's owner: directly, or, as
/// root, through `setpriv` (which execs, so the child we hold *is* the
/// server and signals reach it, unlike `runuser`, which forks).
fn as_owner(program: &Path, root: bool) -> Command {
    if root {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            OS_USER,
            "--regid",
            OS_USER,
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// One PostgreSQL server with a fresh cluster, superuser `postgres`, trust
/// auth, listening on `127.0.0.1` (and a unix socket in its directory).
pub struct Postgres {
    /// Loopback TCP port the server listens on.
    port: u16,
    /// Temp directory holding the cluster (`data/`), the unix socket and
    /// `postgres.log`; removed on drop.
    dir: PathBuf,
    /// The `postgres` process itself (not a wrapper), so stopping it stops
    /// the server.
    child: Option<Child>,
}

impl Postgres {
    /// Creates a cluster and starts a server on a free port, returning once
    /// it accepts connections. Panics, with the server log, if it cannot.
    pub fn start() -> Self {
        let root = is_root();
        let initdb = tool("initdb");
        let postgres = tool("postgres");
        // Built first so a failed start still removes the directory.
        let mut server = Self {
            port: free_port(),
            dir: fresh_dir("postgres"),
            child: None,
        };
        let dir = &server.dir;
        if root {
            let out = run_bounded(
                Command::new("chown")
                    .arg(format!("{OS_USER}:{OS_USER}"))
                    .arg(dir),
                "chown",
            );
            assert!(
                out.status.success(),
                "chown {OS_USER} {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let data = dir.join("data");
        let out = run_bounded(
            as_owner(&initdb, root)
                .current_dir(dir)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync", "--no-instructions"]),
            "initdb",
        );
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let log_path = dir.join("postgres.log");
        let log = File::create(&log_path).expect("create postgres.log");
        let child = as_owner(&postgres, root)
            .current_dir(dir)
            .arg("-D")
            .arg(&data)
            .args(["-p", &server.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", postgres.display()));
        server.child = Some(child);
        server.wait_ready(&log_path);
        server
    }

    /// Polls until the port accepts TCP connections and `pg_isready` (when
    /// installed) says the server accepts sessions, bounded by [`STEP`].
    fn wait_ready(&mut self, log_path: &Path) {
        let pg_isready = tool("pg_isready");
        let have_isready = pg_isready.is_file() || on_path("pg_isready");
        let port = self.port.to_string();
        let ready = || {
            !have_isready
                || Command::new(&pg_isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port])
                    .args(["-U", "postgres", "-d", "postgres", "-t", "1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        };
        let child = self.child.as_mut().expect("started");
        wait_serving(child, "postgres", self.port, || log_tail(log_path), ready);
    }

    /// Connection URL for clients (superuser `postgres`, database
    /// `postgres`, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The loopback TCP port, for clients configured by parts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` with `psql` (stopping at the first error) and returns its
    /// trimmed, unaligned, tuples-only output (`|` between columns; command
    /// tags such as `INSERT 0 1` included). Panics with psql's stderr if any
    /// statement fails, or if it runs longer than [`STEP`].
    pub fn psql(&self, sql: &str) -> String {
        let out = run_bounded(
            Command::new(tool("psql"))
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-c", sql])
                .env_remove("PGPASSWORD")
                .env_remove("PGOPTIONS"),
            "psql",
        );
        assert!(
            out.status.success(),
            "psql failed ({}) on {sql:?}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    /// Immediate shutdown: SIGQUIT makes the postmaster stop its backends
    /// and exit at once (no checkpoint, nothing to keep); SIGKILL if it is
    /// still running after [`STEP`]. Then the directory goes.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = wait_bounded(&mut child, STEP);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
