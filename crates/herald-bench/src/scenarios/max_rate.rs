//! `fanout --rate max`: on the subscribers already connected and confirmed, short steps at
//! the rates [`RateSearch`] picks; each step publishes for `--step-duration`, drains, and is
//! judged ([`Step::judge`]). Reports the highest sustainable rate with the full report of its
//! step, and every step tried. Bounded by `--max-steps` and by `--duration` over the whole
//! search.

use tokio::time::Instant;

use super::fanout::{self, Shape};
use super::rate_search::{RateSearch, SearchReport, Step, delivery_span};
use super::{Ctx, own_cpu_since};
use crate::cli::{Scenario, Search};
use crate::error::Result;
use crate::proc::{ProcSample, self_cpu_seconds};
use crate::report::Report;
use crate::token::now_ns;
use crate::worker::Cmd;

pub(crate) async fn run(ctx: &mut Ctx, shape: Shape, before: Option<ProcSample>) -> Result<Report> {
    let Scenario::Fanout { ref search, .. } = ctx.cli.scenario else {
        unreachable!("max_rate::run is only called for fanout");
    };
    let search: Search = search.clone();
    let step_seconds = search.step_duration.as_secs_f64();
    let max_p99_ms = search.max_p99.as_secs_f64() * 1000.0;
    // A step must publish at least one message.
    let min_rate = 1.0 / step_seconds.max(1e-3);
    let mut rates = RateSearch::new(search.rate_start, min_rate, search.max_steps);
    let budget_end = Instant::now() + ctx.cli.common.duration;
    let mut steps = Vec::new();
    // (rate, report) of the highest sustainable step, and of the lowest step as a fallback.
    let mut best: Option<(f64, Report)> = None;
    let mut lowest: Option<(f64, Report)> = None;
    let mut next = 0;
    // Bounded by max_steps (RateSearch) and by the time budget.
    while let Some(rate) = rates.next() {
        if !steps.is_empty() && Instant::now() + search.step_duration > budget_end {
            ctx.warnings.push(format!(
                "search stopped after {} steps: --duration {:?} reached",
                steps.len(),
                ctx.cli.common.duration
            ));
            break;
        }
        eprintln!("fanout: step {} at {rate:.1} msg/s", steps.len() + 1);
        let (step, report, after) = run_step(ctx, shape, before, rate, next, &search).await?;
        next = after;
        eprintln!(
            "fanout: step {}: {:.0} deliveries/s of {:.0}, p99 {:.2} ms: {}",
            steps.len() + 1,
            step.deliveries_per_second,
            step.expected_deliveries_per_second,
            step.p99_ms.unwrap_or(f64::NAN),
            step.verdict
        );
        rates.record(rate, step.sustainable);
        if step.sustainable && best.as_ref().is_none_or(|(r, _)| rate > *r) {
            best = Some((rate, report.clone()));
        }
        if lowest.as_ref().is_none_or(|(r, _)| rate < *r) {
            lowest = Some((rate, report));
        }
        steps.push(step);
    }
    let closing = ctx.workers.stop(Vec::new()).await?;
    let Some((_, mut report)) = best.or(lowest) else {
        // No step ran (--max-steps 0): the report of nothing.
        return Ok(Report::new(
            "fanout",
            ctx.adapter.target.name(),
            fanout::params(ctx, shape, "max".into()),
            &closing,
            0.0,
        ));
    };
    if rates.cut_short() {
        let limit = match (rates.best(), rates.worst()) {
            (Some(good), None) => {
                format!("every step was sustainable; the limit is above {good} msg/s")
            }
            (good, Some(bad)) => format!(
                "the limit is between {} and {bad} msg/s, not yet within 10%",
                good.unwrap_or(0.0)
            ),
            (None, None) => "no step ran".into(),
        };
        ctx.warnings.push(format!(
            "search stopped at --max-steps {}: {limit}",
            search.max_steps
        ));
    }
    if rates.best().is_none() {
        ctx.warnings
            .push("no rate was sustainable; the report is the lowest rate's step".into());
    }
    // Connections over the whole search, not only the chosen step.
    report.disconnects = closing.disconnects;
    report.alive_at_end = closing.alive_at_end;
    report.search = Some(SearchReport {
        max_rate: rates.best(),
        step_seconds,
        max_p99_ms,
        steps,
    });
    Ok(report)
}

/// One step at `rate`, numbering its messages from `first` (rounded up to a whole round over
/// the channels, so every channel's step starts at the same sequence number). Returns the
/// step's summary, its full report, and the next message number.
async fn run_step(
    ctx: &mut Ctx,
    shape: Shape,
    before: Option<ProcSample>,
    rate: f64,
    first: u64,
    search: &Search,
) -> Result<(Step, Report, u64)> {
    let step_seconds = search.step_duration.as_secs_f64();
    let channels = u64::from(shape.channels);
    let first = first.div_ceil(channels) * channels;
    ctx.workers
        .command(Cmd::Step {
            first_seq: first / channels,
        })
        .await?;
    let start_sample = ctx.server_sample();
    let cpu0 = self_cpu_seconds();
    let start_ns = now_ns();
    let phase = fanout::publish(ctx, shape, rate, search.step_duration, first).await;
    fanout::drain(ctx, shape.planned_deliveries(&phase.published)).await?;
    let end_sample = ctx.server_sample();
    let coordinator_cpu = own_cpu_since(cpu0);
    let mut stats = ctx.workers.snapshot(phase.published.clone()).await?;
    stats.publishes_ok = phase.accepted();
    stats.publish_errors = phase.errors;
    stats.cpu_seconds += coordinator_cpu;
    stats.processes += 1;
    // Rates are over the step's whole length: the last message of a step is due up to one
    // interval before its end, so the time to the last answer alone would overstate them.
    let seconds = phase.elapsed.max(step_seconds);
    let mut report = Report::new(
        "fanout",
        ctx.adapter.target.name(),
        fanout::params(ctx, shape, serde_json::json!(rate)),
        &stats,
        seconds,
    );
    report.server = fanout::usage(ctx, before, start_sample, end_sample);
    let to_last_delivery = stats.last_delivery_ns.saturating_sub(start_ns) as f64 / 1e9;
    let span = delivery_span(seconds, to_last_delivery, search.max_p99.as_secs_f64());
    let per_message = if stats.publishes_ok > 0 {
        stats.expected as f64 / stats.publishes_ok as f64
    } else {
        0.0
    };
    let latency = report.latency_ms;
    let mut step = Step {
        rate,
        publishes_per_second: report.publishes_per_second,
        deliveries_per_second: if span > 0.0 {
            stats.deliveries as f64 / span
        } else {
            0.0
        },
        expected_deliveries_per_second: rate * per_message,
        p50_ms: latency.map(|l| l.p50_ms),
        p99_ms: latency.map(|l| l.p99_ms),
        lost: stats.lost,
        publish_errors: stats.publish_errors,
        late: stats.late,
        sustainable: false,
        verdict: String::new(),
    };
    step.judge(search.max_p99.as_secs_f64() * 1000.0);
    Ok((step, report, phase.next))
}
