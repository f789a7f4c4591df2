//! Fan-out: the coordinator publishes over HTTP at the target rate while the workers'
//! subscribers count and time what arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until};

use super::{Ctx, own_cpu_since};
use crate::cli::Scenario;
use crate::clients::channel_name;
use crate::error::Result;
use crate::proc::self_cpu_seconds;
use crate::report::{Report, ServerUsage};
use crate::token::{Token, now_ns};

pub(crate) async fn run(ctx: &mut Ctx) -> Result<Report> {
    let Scenario::Fanout {
        subscribers,
        channels,
        rate,
        max_messages,
    } = ctx.cli.scenario
    else {
        unreachable!("fanout::run is only called for fanout");
    };
    let channels = channels.max(1);
    let before = ctx.server_sample();
    let status = ctx.connect_all().await?;
    eprintln!(
        "fanout: {} connected, {} failed; warming up",
        status.connected, status.connect_errors
    );
    let status = ctx.warm_up().await?;
    eprintln!(
        "fanout: {} confirmed; publishing {rate} msg/s for {:?}",
        status.confirmed, ctx.cli.common.duration
    );
    let start_sample = ctx.server_sample();
    let cpu0 = self_cpu_seconds();
    ctx.workers.command(crate::worker::Cmd::Measure).await?;

    let published = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let errors = Arc::new(AtomicU64::new(0));
    let concurrency = ctx.cli.common.publish_concurrency.max(1);
    let gate = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let end = start + ctx.cli.common.duration;
    let mut sent: u64 = 0;
    // Bounded by max_messages and the end time.
    while sent < max_messages && rate > 0.0 {
        let due = start + Duration::from_secs_f64(sent as f64 / rate);
        if due >= end {
            break;
        }
        sleep_until(due).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let channel = (sent % u64::from(channels)) as u32;
        let seq = sent / u64::from(channels);
        let (adapter, published, errors) = (ctx.adapter.clone(), published.clone(), errors.clone());
        let (run, size) = (ctx.run, ctx.cli.common.payload_bytes);
        let name = channel_name(&ctx.cli.common.channel_prefix, channel);
        tokio::spawn(async move {
            let payload = Token::Measured {
                run,
                channel,
                seq,
                sent_ns: now_ns(),
            }
            .payload(size);
            match adapter.publish(&name, &payload).await {
                Ok(()) => published[channel as usize].fetch_add(1, Relaxed),
                Err(_) => errors.fetch_add(1, Relaxed),
            };
            drop(permit);
        });
        sent += 1;
    }
    // Every publish has finished once all permits are back (each is bounded by the HTTP timeout).
    let _ = gate.acquire_many(concurrency as u32).await;
    let elapsed = start.elapsed().as_secs_f64();
    let published: Vec<u64> = published.iter().map(|p| p.load(Relaxed)).collect();

    // Drain: wait for the expected deliveries, but stop early once nothing moves for a second.
    let per_channel_subs =
        |c: u32| u64::from(subscribers / channels) + u64::from(c < subscribers % channels);
    let expected: u64 = published
        .iter()
        .enumerate()
        .map(|(c, n)| n * per_channel_subs(c as u32))
        .sum();
    let drain_end = Instant::now() + ctx.cli.common.drain;
    let mut last = (0, Instant::now());
    loop {
        let s = ctx.workers.status().await?;
        if s.deliveries >= expected || Instant::now() >= drain_end {
            break;
        }
        if s.deliveries != last.0 {
            last = (s.deliveries, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let end_sample = ctx.server_sample();
    let coordinator_cpu = own_cpu_since(cpu0);
    let publishes_ok: u64 = published.iter().sum();
    let mut stats = ctx.workers.stop(published).await?;
    stats.publishes_ok = publishes_ok;
    stats.publish_errors = errors.load(Relaxed);
    stats.cpu_seconds += coordinator_cpu;
    stats.processes += 1;
    let mut report = Report::new(
        "fanout",
        ctx.adapter.target.name(),
        serde_json::json!({
            "subscribers": subscribers,
            "channels": channels,
            "rate": rate,
            "payload_bytes": ctx.cli.common.payload_bytes,
            "duration_s": ctx.cli.common.duration.as_secs_f64(),
            "procs": ctx.cli.common.procs,
        }),
        &stats,
        elapsed,
    );
    if let (Some(pid), Some(b), Some(s), Some(e)) =
        (ctx.cli.common.server_pid, before, start_sample, end_sample)
    {
        report.server = Some(ServerUsage::between(pid, b, s, e));
    }
    Ok(report)
}
