//! Connect: open connections as fast as the connect concurrency allows until N are open;
//! report connections per second and errors.

use tokio::time::Instant;

use super::{Ctx, own_cpu_since};
use crate::cli::Scenario;
use crate::error::Result;
use crate::proc::self_cpu_seconds;
use crate::report::{Report, ServerUsage};
use crate::token::now_ns;
use crate::worker::Cmd;

pub(crate) async fn run(ctx: &mut Ctx) -> Result<Report> {
    let Scenario::Connect {
        connections,
        channels,
    } = ctx.cli.scenario
    else {
        unreachable!("connect::run is only called for connect");
    };
    let before = ctx.server_sample();
    let cpu0 = self_cpu_seconds();
    // Measure first: the connecting is what is measured here.
    ctx.workers.command(Cmd::Measure).await?;
    let started_ns = now_ns();
    let start = Instant::now();
    let status = ctx.connect_all().await?;
    let elapsed = start.elapsed().as_secs_f64();
    let open_sample = ctx.server_sample();
    eprintln!(
        "connect: {} connected, {} failed in {elapsed:.2}s",
        status.connected, status.connect_errors
    );
    let coordinator_cpu = own_cpu_since(cpu0);
    let mut stats = ctx.workers.stop(Vec::new()).await?;
    stats.cpu_seconds += coordinator_cpu;
    stats.processes += 1;
    // From the first attempt to the last success, measured by the workers' clocks.
    let span = if stats.last_connect_ns > started_ns {
        (stats.last_connect_ns - started_ns) as f64 / 1e9
    } else {
        elapsed
    };
    let mut report = Report::new(
        "connect",
        ctx.adapter.target.name(),
        serde_json::json!({
            "connections": connections,
            "channels": channels,
            "connect_concurrency": ctx.cli.common.connect_concurrency,
            "procs": ctx.cli.common.procs,
        }),
        &stats,
        span,
    );
    report.connects_per_second = (span > 0.0).then(|| stats.connected as f64 / span);
    if let (Some(pid), Some(b), Some(o)) = (ctx.cli.common.server_pid, before, open_sample) {
        let mut usage = ServerUsage::between(pid, b, b, o);
        usage.rss_per_connection_kib = (stats.connected > 0)
            .then(|| (o.rss_kib as f64 - b.rss_kib as f64) / stats.connected as f64);
        report.server = Some(usage);
    }
    Ok(report)
}
