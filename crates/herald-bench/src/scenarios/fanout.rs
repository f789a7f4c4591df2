//! Fan-out: the coordinator publishes over HTTP at the target rate while the workers'
//! subscribers count and time what arrives. With `--rate max` the publishing is a series of
//! steps searching for the highest sustainable rate ([`super::max_rate`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

use super::{Ctx, own_cpu_since};
use crate::cli::{Rate, Scenario};
use crate::clients::channel_name;
use crate::error::Result;
use crate::proc::{ProcSample, self_cpu_seconds};
use crate::report::{Report, ServerUsage};
use crate::token::{Token, now_ns};

/// The fan-out options every phase needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Subscribers in total, over every worker.
    pub(crate) subscribers: u32,
    /// Channels they are spread over (subscriber i on channel i mod channels).
    pub(crate) channels: u32,
}

impl Shape {
    /// Planned subscribers on channel `c` (subscriber i is on channel i mod channels).
    fn subscribers_on(&self, c: u32) -> u64 {
        u64::from(self.subscribers / self.channels)
            + u64::from(c < self.subscribers % self.channels)
    }

    /// Deliveries to expect from `published[c]` messages per channel, if every planned
    /// subscriber is measured.
    pub(crate) fn planned_deliveries(&self, published: &[u64]) -> u64 {
        published
            .iter()
            .zip(0..)
            .map(|(n, c)| n * self.subscribers_on(c))
            .sum()
    }
}

/// What one publishing phase did.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    /// Messages the server accepted, per channel.
    pub(crate) published: Vec<u64>,
    /// Publishes that failed or that the server refused.
    pub(crate) errors: u64,
    /// From the first publish to the last answer, in seconds.
    pub(crate) elapsed: f64,
    /// Number of the next message: messages are numbered across phases (message i goes to
    /// channel i mod channels with sequence number i / channels).
    pub(crate) next: u64,
    /// How far behind its schedule the publisher fell, waiting for a free publish slot
    /// while the server answered slowly. Latencies count from the scheduled times anyway.
    pub(crate) max_lag: Duration,
}

impl Phase {
    /// A warning for the report when the publisher fell behind its schedule by more than
    /// a scheduling hiccup: the server was slow to accept publishes, and sent later than
    /// planned they still count from when they were due.
    pub(crate) fn lag_warning(&self) -> Option<String> {
        (self.max_lag > Duration::from_millis(50)).then(|| {
            format!(
                "the publisher fell up to {:.0} ms behind its schedule (publishes answered \
                 slowly); latencies count from the scheduled send times",
                self.max_lag.as_secs_f64() * 1e3
            )
        })
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.published.iter().sum()
    }
}

pub(crate) async fn run(ctx: &mut Ctx) -> Result<Report> {
    let Scenario::Fanout {
        subscribers,
        channels,
        rate,
        ..
    } = ctx.cli.scenario
    else {
        unreachable!("fanout::run is only called for fanout");
    };
    let shape = Shape {
        subscribers,
        channels: channels.max(1),
    };
    let before = ctx.server_sample();
    let status = ctx.connect_all().await?;
    eprintln!(
        "fanout: {} connected, {} failed; warming up",
        status.connected, status.connect_errors
    );
    let status = ctx.warm_up().await?;
    eprintln!("fanout: {} confirmed", status.confirmed);
    ctx.workers.command(crate::worker::Cmd::Measure).await?;
    match rate {
        Rate::PerSecond(rate) => fixed(ctx, shape, before, rate).await,
        Rate::Max => super::max_rate::run(ctx, shape, before).await,
    }
}

/// One phase at `rate` for `--duration`.
async fn fixed(
    ctx: &mut Ctx,
    shape: Shape,
    before: Option<ProcSample>,
    rate: f64,
) -> Result<Report> {
    eprintln!(
        "fanout: publishing {rate} msg/s for {:?}",
        ctx.cli.common.duration
    );
    let start_sample = ctx.server_sample();
    let cpu0 = self_cpu_seconds();
    let phase = publish(ctx, shape, rate, ctx.cli.common.duration, 0).await;
    drain(ctx, shape.planned_deliveries(&phase.published)).await?;
    let end_sample = ctx.server_sample();
    let coordinator_cpu = own_cpu_since(cpu0);
    let mut stats = ctx.workers.stop(phase.published.clone()).await?;
    stats.publishes_ok = phase.accepted();
    stats.publish_errors = phase.errors;
    stats.cpu_seconds += coordinator_cpu;
    stats.processes += 1;
    let mut report = Report::new(
        "fanout",
        ctx.adapter.target.name(),
        params(ctx, shape, serde_json::json!(rate)),
        &stats,
        phase.elapsed,
    );
    report.server = usage(ctx, before, start_sample, end_sample);
    report.warnings.extend(phase.lag_warning());
    Ok(report)
}

/// The report's `params`.
pub(crate) fn params(ctx: &Ctx, shape: Shape, rate: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "subscribers": shape.subscribers,
        "channels": shape.channels,
        "rate": rate,
        "payload_bytes": ctx.cli.common.payload_bytes,
        "duration_s": ctx.cli.common.duration.as_secs_f64(),
        "procs": ctx.cli.common.procs,
    })
}

/// The server's usage over a phase, when `--server-pid` was given.
pub(crate) fn usage(
    ctx: &Ctx,
    before: Option<ProcSample>,
    start: Option<ProcSample>,
    end: Option<ProcSample>,
) -> Option<ServerUsage> {
    match (ctx.cli.common.server_pid, before, start, end) {
        (Some(pid), Some(b), Some(s), Some(e)) => Some(ServerUsage::between(pid, b, s, e)),
        _ => None,
    }
}

/// Publishes at `rate` msg/s for `duration`, round-robin over the channels, numbering messages
/// from `first`; bounded by the end time and by `--max-messages` (over all phases).
pub(crate) async fn publish(
    ctx: &Ctx,
    shape: Shape,
    rate: f64,
    duration: Duration,
    first: u64,
) -> Phase {
    let Scenario::Fanout { max_messages, .. } = ctx.cli.scenario else {
        unreachable!("fanout::publish is only called for fanout");
    };
    let channels = shape.channels;
    let published = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let errors = Arc::new(AtomicU64::new(0));
    let concurrency = ctx.cli.common.publish_concurrency.max(1);
    let gate = Arc::new(Semaphore::new(concurrency));
    let (start, start_ns) = (Instant::now(), now_ns());
    let end = start + duration;
    let mut next = first;
    let mut max_lag = Duration::ZERO;
    // Bounded by max_messages and the end time.
    while next < max_messages && rate > 0.0 {
        let offset = Duration::from_secs_f64((next - first) as f64 / rate);
        let due = start + offset;
        if due >= end {
            break;
        }
        let sent_ns = super::on_schedule(due, start_ns + offset.as_nanos() as u64).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        let channel = (next % u64::from(channels)) as u32;
        let seq = next / u64::from(channels);
        let (adapter, published, errors) = (ctx.adapter.clone(), published.clone(), errors.clone());
        let (run, size) = (ctx.run, ctx.cli.common.payload_bytes);
        let name = channel_name(&ctx.cli.common.channel_prefix, channel);
        tokio::spawn(async move {
            let payload = Token::Measured {
                run,
                channel,
                seq,
                sent_ns,
            }
            .payload(size);
            match adapter.publish(&name, &payload).await {
                Ok(()) => published[channel as usize].fetch_add(1, Relaxed),
                Err(_) => errors.fetch_add(1, Relaxed),
            };
            drop(permit);
        });
        next += 1;
    }
    // Every publish has finished once all permits are back (each is bounded by the HTTP timeout).
    let _ = gate.acquire_many(concurrency as u32).await;
    Phase {
        published: published.iter().map(|p| p.load(Relaxed)).collect(),
        errors: errors.load(Relaxed),
        elapsed: start.elapsed().as_secs_f64(),
        next,
        max_lag,
    }
}

/// Waits for `expected` deliveries, at most `--drain`, and stops early once nothing moved for
/// a second.
pub(crate) async fn drain(ctx: &mut Ctx, expected: u64) -> Result<()> {
    let drain_end = Instant::now() + ctx.cli.common.drain;
    let mut last = (0, Instant::now());
    // Bounded by the drain time.
    loop {
        let s = ctx.workers.status().await?;
        if s.deliveries >= expected || Instant::now() >= drain_end {
            return Ok(());
        }
        if s.deliveries != last.0 {
            last = (s.deliveries, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_deliveries_follow_the_round_robin() {
        // 10 subscribers over 4 channels: 3, 3, 2, 2.
        let shape = Shape {
            subscribers: 10,
            channels: 4,
        };
        assert_eq!(shape.planned_deliveries(&[1, 1, 1, 1]), 10);
        assert_eq!(shape.planned_deliveries(&[2, 0, 0, 5]), 16);
    }
}
