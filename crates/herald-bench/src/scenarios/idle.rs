//! Idle: open N connections, hold them for the duration, and report the server's memory per
//! connection.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{Ctx, own_cpu_since};
use crate::cli::Scenario;
use crate::error::Result;
use crate::proc::self_cpu_seconds;
use crate::report::{Report, ServerUsage};
use crate::worker::Cmd;

pub(crate) async fn run(ctx: &mut Ctx) -> Result<Report> {
    let Scenario::Idle {
        connections,
        channels,
    } = ctx.cli.scenario
    else {
        unreachable!("idle::run is only called for idle");
    };
    let before = ctx.server_sample();
    let status = ctx.connect_all().await?;
    eprintln!(
        "idle: {} connected, {} failed; holding for {:?}",
        status.connected, status.connect_errors, ctx.cli.common.duration
    );
    // Let the server settle its buffers before reading its memory.
    sleep(Duration::from_secs(1)).await;
    let open_sample = ctx.server_sample();
    let cpu0 = self_cpu_seconds();
    ctx.workers.command(Cmd::Measure).await?;
    let start = Instant::now();
    sleep(ctx.cli.common.duration).await;
    let elapsed = start.elapsed().as_secs_f64();
    let end_sample = ctx.server_sample();
    let coordinator_cpu = own_cpu_since(cpu0);
    let mut stats = ctx.workers.stop(Vec::new()).await?;
    stats.cpu_seconds += coordinator_cpu;
    stats.processes += 1;
    let mut report = Report::new(
        "idle",
        ctx.adapter.target.name(),
        serde_json::json!({
            "connections": connections,
            "channels": channels,
            "duration_s": ctx.cli.common.duration.as_secs_f64(),
            "procs": ctx.cli.common.procs,
        }),
        &stats,
        elapsed,
    );
    if let (Some(pid), Some(b), Some(o), Some(e)) =
        (ctx.cli.common.server_pid, before, open_sample, end_sample)
    {
        let mut usage = ServerUsage::between(pid, b, o, e);
        // Memory with everything open, before the generator closes the connections.
        usage.rss_after_kib = o.rss_kib.max(e.rss_kib);
        usage.rss_per_connection_kib = (stats.connected > 0)
            .then(|| (usage.rss_after_kib as f64 - b.rss_kib as f64) / stats.connected as f64);
        report.server = Some(usage);
    }
    Ok(report)
}
