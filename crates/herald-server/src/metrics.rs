//! Connection counters and the Prometheus text exposition. Labels are of
//! bounded cardinality: transport, outcome and broker names only, never
//! channels or connections.

mod process;

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::Engine;
use herald_core::stats::LATENCY_BUCKETS_US;

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Ws,
    Sse,
    /// A poll or long-poll request, for as long as it waits: it holds a
    /// subscription and a socket like a stream does.
    Poll,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Poll];

    fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// Server-side counters; the hub keeps the message counters.
#[derive(Default)]
pub struct Metrics {
    /// Open streaming connections per transport.
    open: [AtomicU64; 3],
    /// Open connections in all: the one counter `max_connections`
    /// is taken from, so concurrent handshakes cannot both take the last.
    total: AtomicU64,
    /// Connections accepted since start per transport.
    opened: [AtomicU64; 3],
    /// Connections refused because `max_connections` was reached.
    refused: AtomicU64,
    /// Streams opened compressed, per transport: WebSocket handshakes that
    /// agreed to permessage-deflate, SSE streams sent as gzip.
    compressed: [AtomicU64; 3],
    /// HTTP answers by status class (1xx to 5xx): error rates to alert on.
    answers: [AtomicU64; 5],
    /// Metrics of parts that run beside the server (the mobile pipeline),
    /// appended to the exposition.
    extra: parking_lot::RwLock<Vec<ExtraMetrics>>,
}

/// Appends metrics in the Prometheus text format.
pub type ExtraMetrics = Box<dyn Fn(&mut String) + Send + Sync>;

/// Holds one connection slot; releases it on drop.
pub(crate) struct ConnectionSlot {
    /// The counters the slot was taken from, given back on drop.
    metrics: Arc<Metrics>,
    /// Which transport's open connections the slot counts in.
    transport: Transport,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.open[self.transport as usize].fetch_sub(1, Ordering::Relaxed);
        self.metrics.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a stream opened compressed.
    pub(crate) fn compressed(&self, transport: Transport) {
        self.compressed[transport as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a connection slot unless `max` streaming connections are open.
    pub(crate) fn open(
        self: &Arc<Self>,
        transport: Transport,
        max: usize,
    ) -> Option<ConnectionSlot> {
        let slot = self.take(transport, max);
        if slot.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// [`Metrics::open`] without counting a refusal: for a caller that
    /// leaves refusing to someone who will count it.
    pub(crate) fn take(
        self: &Arc<Self>,
        transport: Transport,
        max: usize,
    ) -> Option<ConnectionSlot> {
        let max = max as u64;
        self.total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.open[transport as usize].fetch_add(1, Ordering::Relaxed);
        self.opened[transport as usize].fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot {
            metrics: self.clone(),
            transport,
        })
    }

    /// Counts an HTTP answer with `status`.
    pub(crate) fn answered(&self, status: axum::http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.answers[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Open streaming connections across transports.
    pub fn connections(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Renders every metric in the Prometheus text format.
    pub(crate) fn render(&self, engine: &Engine) -> String {
        let mut out = String::with_capacity(8192);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (hub, send) = (engine.hub().stats(), engine.send_stats());

        header(
            &mut out,
            "herald_connections",
            "gauge",
            "Open connections: streams, and polls while they wait.",
        );
        for t in Transport::ALL {
            let _ = writeln!(
                out,
                "herald_connections{{transport=\"{}\"}} {}",
                t.label(),
                load(&self.open[t as usize])
            );
        }
        header(
            &mut out,
            "herald_connections_opened_total",
            "counter",
            "Connections accepted: streams and polls.",
        );
        for t in Transport::ALL {
            let _ = writeln!(
                out,
                "herald_connections_opened_total{{transport=\"{}\"}} {}",
                t.label(),
                load(&self.opened[t as usize])
            );
        }
        for (name, help, value) in [
            (
                "herald_connections_refused_total",
                "Connections refused at the connection limit.",
                load(&self.refused),
            ),
            (
                "herald_ws_compressed_total",
                "WebSocket connections opened with permessage-deflate.",
                load(&self.compressed[Transport::Ws as usize]),
            ),
            (
                "herald_sse_compressed_total",
                "SSE streams sent gzip-compressed.",
                load(&self.compressed[Transport::Sse as usize]),
            ),
            (
                "herald_messages_published_total",
                "Messages accepted for fan-out on this node.",
                load(&hub.published),
            ),
            (
                "herald_messages_delivered_total",
                "Messages queued to a subscriber.",
                load(&hub.delivered),
            ),
            (
                "herald_messages_dropped_total",
                "Messages not queued: subscriber closed or too slow.",
                load(&hub.dropped),
            ),
            (
                "herald_slow_consumer_disconnects_total",
                "Connections dropped for falling behind.",
                load(&hub.slow_consumers),
            ),
            (
                "herald_targeted_attempts_total",
                "Targeted delivery attempts (a send, and each ack retry).",
                load(&send.attempts),
            ),
            (
                "herald_targeted_delivered_total",
                "Connections that took a targeted message.",
                load(&send.delivered),
            ),
            (
                "herald_targeted_unmatched_total",
                "Targeted delivery attempts whose filter matched nobody.",
                load(&send.unmatched),
            ),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "herald_targeted_acks_total";
        header(
            &mut out,
            name,
            "counter",
            "Acknowledged sends by how they ended.",
        );
        for (outcome, value) in [
            ("acked", &send.acked),
            ("timed_out", &send.timed_out),
            ("not_connected", &send.not_connected),
        ] {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", load(value));
        }

        let name = "herald_http_responses_total";
        header(
            &mut out,
            name,
            "counter",
            "HTTP answers by status class (streams opened on their own socket are connections).",
        );
        for (class, value) in ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .zip(&self.answers)
        {
            let _ = writeln!(out, "{name}{{class=\"{class}\"}} {}", load(value));
        }

        let name = "herald_fanout_latency_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time from accepting a message to queuing it for every local subscriber.",
        );
        let (counts, sum_us) = hub.fanout_latency.snapshot();
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(&counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {count}",
                *bound as f64 / 1e6
            );
        }
        let total = counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
        // Counted at scrape time, so publishing and delivering pay nothing.
        let census = engine.hub().census();
        for (name, help, value) in [
            (
                "herald_channels",
                "Channels this node holds.",
                census.channels,
            ),
            (
                "herald_subscriptions",
                "Local subscriptions, summed over channels.",
                census.subscriptions,
            ),
            (
                "herald_history_messages",
                "Messages kept in this node's channel history.",
                census.stored,
            ),
        ] {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        let broker = engine.broker();
        let name = "herald_broker_ready";
        header(
            &mut out,
            name,
            "gauge",
            "1 while the broker can take publishes, else 0.",
        );
        let _ = writeln!(
            out,
            "{name}{{kind=\"{}\"}} {}",
            broker.name(),
            u8::from(broker.is_ready())
        );
        process::render(&mut out);
        for render in self.extra.read().iter() {
            render(&mut out);
        }
        out
    }

    /// Adds metrics rendered after the server's own.
    pub fn add(&self, render: ExtraMetrics) {
        self.extra.write().push(render);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_release() {
        let m = Arc::new(Metrics::default());
        let a = m.open(Transport::Ws, 2).unwrap();
        let _b = m.open(Transport::Sse, 2).unwrap();
        assert!(m.open(Transport::Ws, 2).is_none());
        drop(a);
        assert_eq!(m.connections(), 1);
        let hub = Arc::new(herald_core::Hub::new());
        let broker = Arc::new(herald_broker::MemoryBroker::new(hub.clone()));
        let engine = Engine::new(hub, broker);
        let text = m.render(&engine);
        assert!(text.contains("herald_connections{transport=\"sse\"} 1"));
        assert!(text.contains("herald_connections_refused_total 1"));
        m.answered(axum::http::StatusCode::NOT_FOUND);
        m.answered(axum::http::StatusCode::OK);
        m.answered(axum::http::StatusCode::OK);
        let text = m.render(&engine);
        assert!(text.contains("herald_http_responses_total{class=\"2xx\"} 2\n"));
        assert!(text.contains("herald_http_responses_total{class=\"4xx\"} 1\n"));
        assert!(text.contains("herald_http_responses_total{class=\"5xx\"} 0\n"));
        assert!(text.contains("herald_fanout_latency_seconds_bucket{le=\"+Inf\"} 0"));
        assert!(text.contains("\nherald_subscriptions 0\n"));
        assert!(text.contains("\nherald_broker_ready{kind=\"memory\"} 1\n"));
    }

    /// Handshakes on many threads at once take exactly the slots there are.
    #[test]
    fn concurrent_takes_never_pass_the_limit() {
        let m = Arc::new(Metrics::default());
        let taken: Vec<_> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..8)
                .map(|_| {
                    let m = m.clone();
                    s.spawn(move || {
                        (0..1_000)
                            .filter_map(|_| m.take(Transport::Ws, 100))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            takers.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(taken.len(), 100);
        assert_eq!(m.connections(), 100);
        drop(taken);
        assert_eq!(m.connections(), 0);
    }
}
