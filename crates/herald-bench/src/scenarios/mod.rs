//! The coordinator's side of each scenario, and what they share: connecting every worker,
//! confirming subscriptions with probes, and sampling the server.

pub(crate) mod connect;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod max_rate;
pub(crate) mod pairs;
pub(crate) mod rate_search;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, sleep, sleep_until};

use crate::adapters::Adapter;
use crate::cli::{Cli, Scenario};
use crate::clients::channel_name;
use crate::error::Result;
use crate::proc::{ProcSample, sample_tree, self_cpu_seconds};
use crate::report::Report;
use crate::token::{Token, now_ns};
use crate::worker::{Status, Workers};

/// How often the coordinator polls workers while waiting.
const POLL: Duration = Duration::from_millis(200);

pub(crate) struct Ctx {
    /// The command line the run was started with.
    pub(crate) cli: Cli,
    /// Run id, carried by every generated message.
    pub(crate) run: u32,
    /// Publishes the target's way.
    pub(crate) adapter: Arc<Adapter>,
    /// The workers holding the connections, driven together.
    pub(crate) workers: Workers,
    /// Problems met on the way, added to the report's warnings.
    pub(crate) warnings: Vec<String>,
}

pub(crate) async fn run(cli: Cli, run: u32, adapter: Arc<Adapter>) -> anyhow::Result<Report> {
    let workers = Workers::start(&cli, run, adapter.clone())?;
    let mut ctx = Ctx {
        cli: cli.clone(),
        run,
        adapter,
        workers,
        warnings: Vec::new(),
    };
    let mut report = match cli.scenario {
        Scenario::Fanout { .. } => fanout::run(&mut ctx).await?,
        Scenario::Pairs { .. } => pairs::run(&mut ctx).await?,
        Scenario::Idle { .. } => idle::run(&mut ctx).await?,
        Scenario::Connect { .. } => connect::run(&mut ctx).await?,
    };
    report.warnings.append(&mut ctx.warnings);
    if report.connection_errors > 0 {
        report
            .warnings
            .push(format!("{} connections failed", report.connection_errors));
    }
    Ok(report)
}

impl Ctx {
    /// The server's process tree now, if `--server-pid` was given and exists.
    pub(crate) fn server_sample(&self) -> Option<ProcSample> {
        self.cli.common.server_pid.and_then(sample_tree)
    }

    /// Starts every worker's connections and waits (bounded) until each has succeeded or failed.
    pub(crate) async fn connect_all(&mut self) -> Result<Status> {
        self.workers.command(crate::worker::Cmd::Connect).await?;
        let deadline = Instant::now() + self.cli.common.connect_deadline;
        loop {
            let status = self.workers.status().await?;
            if status.pending() == 0 {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.warnings.push(format!(
                    "connect deadline passed with {} connections pending",
                    status.pending()
                ));
                return Ok(status);
            }
            sleep(POLL).await;
        }
    }

    /// Publishes a probe on every channel that has an unconfirmed subscriber, until every
    /// connected subscriber has received one or the warm-up limit passes.
    pub(crate) async fn warm_up(&mut self) -> Result<Status> {
        let deadline = Instant::now() + self.cli.common.warmup_timeout;
        let concurrency = self.cli.common.publish_concurrency.max(1);
        // Bounded by the deadline.
        loop {
            let status = self.workers.status().await?;
            let waiting = status
                .connected
                .saturating_sub(status.confirmed + status.disconnects);
            if waiting == 0 {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.warnings.push(format!(
                    "warm-up limit passed with {waiting} subscribers unconfirmed; they are not measured"
                ));
                return Ok(status);
            }
            let adapter = &self.adapter;
            let (run, prefix) = (self.run, &self.cli.common.channel_prefix);
            futures_util::stream::iter(status.unconfirmed_channels)
                .for_each_concurrent(concurrency, |channel| async move {
                    let payload = Token::Probe { run, channel }.payload(0);
                    // A failed probe is simply retried in the next round.
                    let _ = adapter
                        .publish(&channel_name(prefix, channel), &payload)
                        .await;
                })
                .await;
            sleep(Duration::from_millis(300)).await;
        }
    }
}

/// CPU seconds of this (coordinator) process since `since`.
pub(crate) fn own_cpu_since(since: f64) -> f64 {
    (self_cpu_seconds() - since).max(0.0)
}

/// Waits until a paced message is `due`, and returns the send time it counts from: when
/// the timer woke, if the sender was on time (the timer's own lateness, up to a
/// millisecond, is the generator's, not the server's); when it was due (`due_ns`), if the
/// sender was behind its schedule, held up by a server slow to take earlier messages,
/// whose wait must not be left out (coordinated omission). Any wait for a free slot after
/// this counts too.
pub(crate) async fn on_schedule(due: Instant, due_ns: u64) -> u64 {
    if Instant::now() >= due {
        return due_ns;
    }
    sleep_until(due).await;
    now_ns()
}
