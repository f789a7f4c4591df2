//! Workers hold the connections. With `--procs 1` the only worker lives in the coordinator's
//! process; otherwise each is a child process (this binary re-executed with `--worker-index`)
//! driven by one JSON command per line on stdin, answering one JSON reply per line on stdout.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::adapters::Adapter;
use crate::cli::{Cli, Scenario, Via};
use crate::clients::{ClientSet, Plan, Shared};
use crate::error::{BenchError, Result};
use crate::net::address_range;
use crate::proc::self_cpu_seconds;
use crate::scenarios::pairs::{self, PairsConfig, Sent};
use crate::stats::{WorkerStats, histogram_to_pairs};

/// Longest a child may take to answer one command (Stop waits for the drain).
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// Most unconfirmed channels one status reply lists.
const MAX_LISTED_CHANNELS: usize = 20_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Cmd {
    /// Start opening this worker's connections.
    Connect,
    Status,
    /// Freeze the set of measured connections and start the measured phase (pairs: start sending).
    Measure,
    /// Fan-out search: start counting a new step, whose messages have sequence numbers from
    /// `first_seq` on.
    Step {
        first_seq: u64,
    },
    /// Fan-out search: report the current step without stopping. `published[c]` = the step's
    /// messages accepted on channel c.
    Snapshot {
        published: Vec<u64>,
    },
    /// End: close everything and report. `published[c]` = messages accepted on channel c (fan-out).
    Stop {
        published: Vec<u64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Reply {
    Done,
    Status(Status),
    Stats(Box<WorkerStats>),
    Failed(String),
}

/// Progress of a worker, summed over workers by the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    /// Connections planned.
    pub(crate) planned: u64,
    pub(crate) connected: u64,
    pub(crate) connect_errors: u64,
    pub(crate) disconnects: u64,
    /// Connections that received a warm-up probe.
    pub(crate) confirmed: u64,
    pub(crate) deliveries: u64,
    /// Channels with a subscriber still waiting for its probe.
    pub(crate) unconfirmed_channels: Vec<u32>,
}

impl Status {
    pub(crate) fn pending(&self) -> u64 {
        self.planned
            .saturating_sub(self.connected + self.connect_errors)
    }

    fn add(&mut self, o: Status) {
        self.planned += o.planned;
        self.connected += o.connected;
        self.connect_errors += o.connect_errors;
        self.disconnects += o.disconnects;
        self.confirmed += o.confirmed;
        self.deliveries += o.deliveries;
        self.unconfirmed_channels.extend(o.unconfirmed_channels);
    }
}

/// One share of the connections and what it does with them.
pub(crate) struct Worker {
    /// The command line: the pairs options and the drain limit.
    cli: Cli,
    /// Which connections this worker holds, and how they are opened.
    plan: Plan,
    /// Opens the connections and publishes the target's way.
    adapter: Arc<Adapter>,
    /// The connections, once `Connect` has started them.
    set: Option<ClientSet>,
    /// The pairs sender, once `Measure` has started it; `Stop` waits for what it sent.
    pairs: Option<JoinHandle<Sent>>,
    /// This process's CPU seconds when measuring started.
    cpu_at_measure: f64,
    /// Whether this worker is its own process (then it reports its CPU time).
    own_process: bool,
}

impl Worker {
    pub(crate) fn new(
        cli: &Cli,
        index: u32,
        run: u32,
        adapter: Arc<Adapter>,
        own_process: bool,
    ) -> Self {
        let c = &cli.common;
        let procs = c.procs.max(1);
        let (n, channels) = cli.scenario.shape();
        let base = c
            .bind_base
            .or((procs > 1).then_some(Ipv4Addr::new(127, 0, 0, 2)));
        let sources = base.map_or_else(Vec::new, |b| {
            let first = Ipv4Addr::from(u32::from(b).wrapping_add(index * c.bind_count));
            address_range(first, c.bind_count.max(1))
        });
        let (senders, pair_ids, ack) = match cli.scenario {
            Scenario::Pairs {
                max_messages, ack, ..
            } => (
                cli.pairs_via() == Some(Via::Ws),
                max_messages.div_ceil(u64::from(procs)),
                ack,
            ),
            _ => (false, 0, false),
        };
        let plan = Plan {
            run,
            globals: (index..n).step_by(procs as usize).collect(),
            channels,
            prefix: c.channel_prefix.clone(),
            sources,
            connect_concurrency: (c.connect_concurrency / procs as usize).max(1),
            senders,
            pair_ids,
            index,
            ack,
        };
        Worker {
            cli: cli.clone(),
            plan,
            adapter,
            set: None,
            pairs: None,
            cpu_at_measure: 0.0,
            own_process,
        }
    }

    pub(crate) async fn handle(&mut self, cmd: Cmd) -> Reply {
        match cmd {
            Cmd::Connect => {
                if self.set.is_none() {
                    self.set = Some(ClientSet::start(self.plan.clone(), self.adapter.clone()));
                }
                Reply::Done
            }
            Cmd::Status => Reply::Status(self.status()),
            Cmd::Measure => {
                self.cpu_at_measure = self_cpu_seconds();
                if let Some(set) = &self.set {
                    set.include_confirmed();
                    if let Some(cfg) = PairsConfig::share(&self.cli) {
                        self.pairs = Some(tokio::spawn(pairs::dispatch(
                            cfg,
                            set.shared.clone(),
                            set.senders.clone(),
                            self.plan.clone(),
                            self.adapter.clone(),
                        )));
                    }
                }
                Reply::Done
            }
            Cmd::Step { first_seq } => {
                self.cpu_at_measure = self_cpu_seconds();
                if let Some(set) = &self.set {
                    set.shared.begin_step(first_seq);
                }
                Reply::Done
            }
            Cmd::Snapshot { published } => Reply::Stats(Box::new(self.snapshot(&published))),
            Cmd::Stop { published } => Reply::Stats(Box::new(self.stop(&published).await)),
        }
    }

    /// The counters every report starts from, as they are now.
    fn counters(&self, shared: &Shared) -> WorkerStats {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        let mut stats = WorkerStats {
            connected: load(&shared.connected),
            connect_errors: load(&shared.connect_errors),
            // Connections this worker closes itself at the end are not disconnects.
            disconnects: load(&shared.disconnects),
            included: shared.included.iter().filter(|f| f.load(Relaxed)).count() as u64,
            deliveries: load(&shared.deliveries),
            duplicated: load(&shared.duplicated),
            misrouted: load(&shared.misrouted),
            unexpected: load(&shared.unexpected),
            late: load(&shared.late),
            first_connect_ns: load(&shared.first_connect_ns),
            last_connect_ns: load(&shared.last_connect_ns),
            last_delivery_ns: load(&shared.last_delivery_ns),
            latency_us: histogram_to_pairs(&shared.latency.merged()),
            connect_us: histogram_to_pairs(&shared.connect_latency.merged()),
            acks: load(&shared.acks),
            ack_failures: load(&shared.ack_failures),
            ack_latency_us: histogram_to_pairs(&shared.ack_latency.merged()),
            ..WorkerStats::default()
        };
        if self.own_process {
            stats.cpu_seconds = self_cpu_seconds() - self.cpu_at_measure;
            stats.processes = 1;
        }
        stats
    }

    /// Fan-out search: the current step's figures; expected deliveries are those of the
    /// connections measured in the step (included, and not lost before it) on each channel.
    fn snapshot(&self, published: &[u64]) -> WorkerStats {
        let Some(set) = &self.set else {
            return WorkerStats::default();
        };
        let shared = &set.shared;
        let mut stats = self.counters(shared);
        let channels = self.plan.channels.max(1);
        stats.expected = self
            .plan
            .globals
            .iter()
            .zip(&shared.in_step)
            .filter(|(_, measured)| measured.load(Relaxed))
            .map(|(g, _)| published.get((g % channels) as usize).copied().unwrap_or(0))
            .sum();
        stats.lost = stats.expected.saturating_sub(stats.deliveries);
        stats
    }

    fn status(&self) -> Status {
        let Some(set) = &self.set else {
            return Status {
                planned: self.plan.globals.len() as u64,
                ..Status::default()
            };
        };
        let s = &set.shared;
        Status {
            planned: set.len() as u64,
            connected: s.connected.load(Relaxed),
            connect_errors: s.connect_errors.load(Relaxed),
            disconnects: s.disconnects.load(Relaxed),
            confirmed: s.confirmed.load(Relaxed),
            deliveries: s.deliveries.load(Relaxed),
            unconfirmed_channels: set.unconfirmed_channels(MAX_LISTED_CHANNELS),
        }
    }

    async fn stop(&mut self, published: &[u64]) -> WorkerStats {
        let sent = match self.pairs.take() {
            Some(h) => h.await.ok(),
            None => None,
        };
        let Some(set) = self.set.take() else {
            return WorkerStats::default();
        };
        let shared = set.shared.clone();
        if sent.is_some() {
            // Pairs: wait (bounded) for messages still in flight.
            let deadline = tokio::time::Instant::now() + self.cli.common.drain;
            while shared.inflight.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let included: Vec<bool> = shared.included.iter().map(|f| f.load(Relaxed)).collect();
        let results = set.stop().await;
        let mut stats = self.counters(&shared);
        stats.alive_at_end = results.iter().filter(|r| r.alive).count() as u64;
        if let Some(sent) = sent {
            let refused = shared.ws_publish_errors.load(Relaxed);
            stats.publishes_ok = sent.ok.saturating_sub(refused);
            stats.publish_errors = sent.errors + refused;
            stats.expected = stats.publishes_ok;
            stats.lost = stats.expected.saturating_sub(stats.deliveries);
            if sent.answered {
                stats.unacked = stats
                    .publishes_ok
                    .saturating_sub(stats.acks + stats.ack_failures);
            }
        } else if !published.is_empty() {
            for r in results.iter().filter(|r| included[r.local]) {
                let expected = published.get(r.channel as usize).copied().unwrap_or(0);
                stats.expected += expected;
                stats.lost += expected.saturating_sub(r.unique);
            }
        }
        stats
    }
}

/// Serves a child worker: commands on stdin, replies on stdout, until Stop or end of input.
pub(crate) async fn serve_stdio(mut worker: Worker) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    // Bounded by the coordinator, which always ends with Stop or exits (closing our stdin).
    while let Some(line) = lines.next_line().await? {
        let cmd: Cmd = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                reply(&mut out, &Reply::Failed(format!("bad command: {e}"))).await?;
                continue;
            }
        };
        let last = matches!(cmd, Cmd::Stop { .. });
        let r = worker.handle(cmd).await;
        reply(&mut out, &r).await?;
        if last {
            return Ok(());
        }
    }
    if let Some(set) = worker.set.take() {
        set.stop().await;
    }
    Ok(())
}

async fn reply(out: &mut tokio::io::Stdout, r: &Reply) -> Result<()> {
    let mut text = serde_json::to_string(r).map_err(|e| BenchError::Worker(e.to_string()))?;
    text.push('\n');
    out.write_all(text.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

pub(crate) struct ChildWorker {
    /// Kept so the child is killed if the coordinator drops it early.
    _child: Child,
    /// Where commands are written, one JSON object a line.
    stdin: ChildStdin,
    /// Where replies are read, one JSON object a line.
    stdout: Lines<BufReader<ChildStdout>>,
}

pub(crate) enum WorkerHandle {
    Local(Box<Worker>),
    Child(Box<ChildWorker>),
}

impl WorkerHandle {
    /// Re-executes this binary with the same arguments as worker `index`.
    pub(crate) fn spawn_child(index: u32, run: u32) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let mut child = Command::new(exe)
            .args(args)
            .arg("--worker-index")
            .arg(index.to_string())
            .arg("--run-id")
            .arg(run.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Worker("child without pipes".into()));
        };
        Ok(WorkerHandle::Child(Box::new(ChildWorker {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })))
    }

    pub(crate) async fn call(&mut self, cmd: &Cmd) -> Result<Reply> {
        match self {
            WorkerHandle::Local(w) => Ok(w.handle(cmd.clone()).await),
            WorkerHandle::Child(c) => {
                let mut text =
                    serde_json::to_string(cmd).map_err(|e| BenchError::Worker(e.to_string()))?;
                text.push('\n');
                c.stdin.write_all(text.as_bytes()).await?;
                c.stdin.flush().await?;
                let line = tokio::time::timeout(REPLY_TIMEOUT, c.stdout.next_line())
                    .await
                    .map_err(|_| BenchError::Timeout("waiting for a worker"))??
                    .ok_or_else(|| BenchError::Worker("worker exited".into()))?;
                serde_json::from_str(&line)
                    .map_err(|e| BenchError::Worker(format!("bad reply {line:?}: {e}")))
            }
        }
    }
}

/// All workers, driven together.
pub(crate) struct Workers {
    /// Every worker, in index order: one local, or one child process each.
    handles: Vec<WorkerHandle>,
}

impl Workers {
    pub(crate) fn start(cli: &Cli, run: u32, adapter: Arc<Adapter>) -> Result<Self> {
        let procs = cli.common.procs.max(1);
        let handles = if procs == 1 {
            vec![WorkerHandle::Local(Box::new(Worker::new(
                cli, 0, run, adapter, false,
            )))]
        } else {
            (0..procs)
                .map(|i| WorkerHandle::spawn_child(i, run))
                .collect::<Result<_>>()?
        };
        Ok(Workers { handles })
    }

    async fn broadcast(&mut self, cmd: Cmd) -> Result<Vec<Reply>> {
        let calls = self.handles.iter_mut().map(|h| h.call(&cmd));
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect()
    }

    /// Sends a command that expects `Done` from everyone.
    pub(crate) async fn command(&mut self, cmd: Cmd) -> Result<()> {
        for r in self.broadcast(cmd).await? {
            if let Reply::Failed(e) = r {
                return Err(BenchError::Worker(e));
            }
        }
        Ok(())
    }

    pub(crate) async fn status(&mut self) -> Result<Status> {
        let mut total = Status::default();
        for r in self.broadcast(Cmd::Status).await? {
            match r {
                Reply::Status(s) => total.add(s),
                other => return Err(BenchError::Worker(format!("unexpected {other:?}"))),
            }
        }
        total.unconfirmed_channels.sort_unstable();
        total.unconfirmed_channels.dedup();
        Ok(total)
    }

    /// Fan-out search: every worker's figures for the current step, merged.
    pub(crate) async fn snapshot(&mut self, published: Vec<u64>) -> Result<WorkerStats> {
        self.collect(Cmd::Snapshot { published }).await
    }

    pub(crate) async fn stop(&mut self, published: Vec<u64>) -> Result<WorkerStats> {
        self.collect(Cmd::Stop { published }).await
    }

    async fn collect(&mut self, cmd: Cmd) -> Result<WorkerStats> {
        let mut merged = WorkerStats::default();
        for r in self.broadcast(cmd).await? {
            match r {
                Reply::Stats(s) => merged.merge(&s),
                other => return Err(BenchError::Worker(format!("unexpected {other:?}"))),
            }
        }
        Ok(merged)
    }
}
