//! Pairs (the Pushca scenario): each client listens on its own channel `c<i>` (with
//! `--target pushca`, is the Pushca client standing for it); a sender picks two distinct
//! clients at random and sends a uniquely numbered message from one to the other, over the
//! sender's WebSocket (`--via ws`: Herald's publish command, Pushca's `SEND_MESSAGE`) or over
//! HTTP. With `--ack` (Pushca) the receiver acknowledges each message and the message stays in
//! flight until its sender has the acknowledgement.
//! With `--procs P`, each worker process pairs its own clients, with 1/P of the rate and
//! concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, timeout};

use super::{Ctx, own_cpu_since};
use crate::adapters::{Adapter, PairMessage, Target};
use crate::cli::{Cli, Scenario, Via};
use crate::clients::{ChannelName, Plan, Shared};
use crate::error::{BenchError, Result};
use crate::proc::self_cpu_seconds;
use crate::report::{Report, ServerUsage};
use crate::token::now_ns;

/// One worker's share of the pairs load.
#[derive(Debug, Clone)]
pub(crate) struct PairsConfig {
    /// Messages per second; 0 = unpaced.
    rate: f64,
    /// Messages in flight (sent, not yet delivered or refused), at most.
    concurrency: u64,
    /// Over the sender's WebSocket, or through the HTTP publish API.
    via: Via,
    /// Send with acknowledgement (Pushca).
    ack: bool,
    /// Herald over WebSocket: ask for no answer to a publish that succeeds.
    no_reply: bool,
    /// How long to keep sending.
    duration: Duration,
    /// This worker's share of `--max-messages`.
    max_messages: u64,
    /// Size of each message body.
    payload_bytes: usize,
    /// HTTP publish requests in flight, at most.
    publish_concurrency: usize,
}

impl PairsConfig {
    /// This worker's share, or `None` outside the pairs scenario.
    pub(crate) fn share(cli: &Cli) -> Option<Self> {
        let Scenario::Pairs {
            rate,
            concurrency,
            max_messages,
            ack,
            no_reply,
            ..
        } = cli.scenario
        else {
            return None;
        };
        let via = cli.pairs_via()?;
        let procs = cli.common.procs.max(1);
        Some(PairsConfig {
            rate: rate / f64::from(procs),
            concurrency: u64::from(concurrency.div_ceil(procs).max(1)),
            via,
            ack,
            no_reply,
            duration: cli.common.duration,
            max_messages: max_messages / u64::from(procs),
            payload_bytes: cli.common.payload_bytes,
            publish_concurrency: cli
                .common
                .publish_concurrency
                .div_ceil(procs as usize)
                .max(1),
        })
    }
}

/// What the sender did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    /// Publishes accepted (HTTP 2xx) or written to the sender's WebSocket.
    pub(crate) ok: u64,
    /// Publishes that failed, and frames that could not be queued in time.
    pub(crate) errors: u64,
    /// Every send gets an answer to its sender (Pushca over WebSocket, or with acknowledge),
    /// so sends without one can be counted.
    pub(crate) answered: bool,
}

/// Sends pairs messages among this worker's measured clients until the duration or the message
/// limit is reached.
pub(crate) async fn dispatch(
    cfg: PairsConfig,
    shared: Arc<Shared>,
    senders: Vec<Option<mpsc::Sender<String>>>,
    plan: Plan,
    adapter: Arc<Adapter>,
) -> Sent {
    let clients: Vec<usize> = shared
        .included
        .iter()
        .enumerate()
        .filter(|(_, f)| f.load(Relaxed))
        .map(|(i, _)| i)
        .collect();
    if clients.len() < 2 {
        return Sent::default();
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let http_gate = Arc::new(Semaphore::new(cfg.publish_concurrency));
    let mut rng = StdRng::from_os_rng();
    let (start, start_ns) = (Instant::now(), now_ns());
    let end = start + cfg.duration;
    // Bounded by max_messages and the end time (every wait below is cut at `end`).
    'send: for id in 0..cfg.max_messages.min(plan.pair_ids) {
        // Paced, a message counts from its turn in the schedule, however long the wait
        // for a free slot below: a server slow to answer must not hide that wait
        // (coordinated omission; see `on_schedule`). Unpaced, there is no
        // schedule: it counts from when it goes.
        let mut due_ns = None;
        if cfg.rate > 0.0 {
            let offset = Duration::from_secs_f64(id as f64 / cfg.rate);
            let due = start + offset;
            if due >= end {
                break;
            }
            due_ns = Some(super::on_schedule(due, start_ns + offset.as_nanos() as u64).await);
        }
        while shared.inflight.load(Relaxed) >= cfg.concurrency {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break 'send;
            }
            let _ = timeout(
                left.min(Duration::from_millis(10)),
                shared.inflight_dropped.notified(),
            )
            .await;
        }
        if Instant::now() >= end {
            break;
        }
        let from = clients[rng.random_range(0..clients.len())];
        let mut to = clients[rng.random_range(0..clients.len() - 1)];
        if to == from {
            to = clients[clients.len() - 1];
        }
        let name = |local: usize| ChannelName {
            prefix: &plan.prefix,
            index: plan.globals[local],
        };
        let message = PairMessage {
            run: plan.run,
            id,
            sent_ns: due_ns.unwrap_or_else(now_ns),
            from: name(from),
            to: name(to),
            worker: plan.index,
            size: cfg.payload_bytes,
            ack: cfg.ack,
            no_reply: cfg.no_reply,
        };
        shared.inflight.fetch_add(1, Relaxed);
        match cfg.via {
            Via::Ws => {
                let frame = adapter.ws_send_frame(&message);
                let queued = match (frame, &senders[from]) {
                    (Some(frame), Some(tx)) => {
                        let left = end.saturating_duration_since(Instant::now());
                        matches!(timeout(left, tx.send(frame)).await, Ok(Ok(())))
                    }
                    _ => false,
                };
                if queued {
                    ok.fetch_add(1, Relaxed);
                } else {
                    errors.fetch_add(1, Relaxed);
                    shared.release_inflight();
                }
            }
            Via::Http => {
                let Ok(permit) = http_gate.clone().acquire_owned().await else {
                    break;
                };
                let (adapter, shared, ok, errors) =
                    (adapter.clone(), shared.clone(), ok.clone(), errors.clone());
                let channel = message.to.to_string();
                let payload = message.token().payload(message.size);
                let (ack, sent_ns) = (cfg.ack, message.sent_ns);
                tokio::spawn(async move {
                    let sent = if ack {
                        adapter.publish_acked(&channel, &payload).await
                    } else {
                        adapter.publish(&channel, &payload).await.map(|()| false)
                    };
                    match sent {
                        Ok(acked) => {
                            ok.fetch_add(1, Relaxed);
                            match (ack, acked) {
                                (true, true) => shared.on_send_acked(from, sent_ns),
                                (true, false) => shared.on_send_failed(),
                                (false, _) => {}
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Relaxed);
                            shared.release_inflight();
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
    // Wait for HTTP publishes still running (each bounded by the client's timeout).
    let _ = http_gate
        .acquire_many(u32::try_from(cfg.publish_concurrency).unwrap_or(u32::MAX))
        .await;
    Sent {
        ok: ok.load(Relaxed),
        errors: errors.load(Relaxed),
        answered: cfg.ack || (adapter.target == Target::Pushca && cfg.via == Via::Ws),
    }
}

pub(crate) async fn run(ctx: &mut Ctx) -> Result<Report> {
    let Scenario::Pairs {
        clients,
        rate,
        concurrency,
        ack,
        no_reply,
        ..
    } = ctx.cli.scenario
    else {
        unreachable!("pairs::run is only called for pairs");
    };
    let via = ctx.cli.pairs_via().unwrap_or(Via::Http);
    let target = ctx.adapter.target;
    if via == Via::Ws && !target.sends_over_ws() {
        return Err(BenchError::Config(format!(
            "--via ws needs a WebSocket publish command, which {} lacks; use --via http",
            target.name()
        )));
    }
    if ack && target != Target::Pushca {
        return Err(BenchError::Config(format!(
            "--ack needs --target pushca, not {}",
            target.name()
        )));
    }
    if no_reply && (target != Target::Herald || via != Via::Ws) {
        return Err(BenchError::Config(
            "--no-reply needs --target herald --via ws".to_owned(),
        ));
    }
    let before = ctx.server_sample();
    let status = ctx.connect_all().await?;
    eprintln!(
        "pairs: {} connected, {} failed; warming up",
        status.connected, status.connect_errors
    );
    let status = ctx.warm_up().await?;
    eprintln!(
        "pairs: {} confirmed; sending for {:?}",
        status.confirmed, ctx.cli.common.duration
    );
    let start_sample = ctx.server_sample();
    let cpu0 = self_cpu_seconds();
    let start = Instant::now();
    ctx.workers.command(crate::worker::Cmd::Measure).await?;
    tokio::time::sleep(ctx.cli.common.duration).await;
    // Stop waits for each worker's sender to finish and for its in-flight messages to drain.
    let end_sample = ctx.server_sample();
    let coordinator_cpu = own_cpu_since(cpu0);
    let mut stats = ctx.workers.stop(Vec::new()).await?;
    let elapsed = ctx
        .cli
        .common
        .duration
        .as_secs_f64()
        .min(start.elapsed().as_secs_f64());
    stats.cpu_seconds += coordinator_cpu;
    stats.processes += 1;
    let mut report = Report::new(
        "pairs",
        ctx.adapter.target.name(),
        serde_json::json!({
            "clients": clients,
            "rate": rate,
            "concurrency": concurrency,
            "via": via,
            "ack": ack,
            "no_reply": no_reply,
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
