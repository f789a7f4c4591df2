//! The result of one run: a human table and one JSON object.

use std::fmt::Write as _;

use serde::Serialize;

use crate::proc::ProcSample;
use crate::scenarios::rate_search::SearchReport;
use crate::stats::{LatencySummary, WorkerStats};

/// Server resource use, from `/proc/<pid>` of the server's process tree.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerUsage {
    pub(crate) pid: u32,
    /// Processes in the tree (nginx: master + workers).
    pub(crate) processes: usize,
    /// CPU seconds used during the measured phase.
    pub(crate) cpu_seconds: f64,
    /// RSS before any connection of this run was opened.
    pub(crate) rss_before_kib: u64,
    /// RSS with all connections open (idle/connect) or at the end of the measured phase.
    pub(crate) rss_after_kib: u64,
    /// (after − before) / open connections, for idle and connect.
    pub(crate) rss_per_connection_kib: Option<f64>,
}

impl ServerUsage {
    pub(crate) fn between(
        pid: u32,
        before_connect: ProcSample,
        measure_start: ProcSample,
        end: ProcSample,
    ) -> Self {
        ServerUsage {
            pid,
            processes: end.processes,
            cpu_seconds: (end.cpu_seconds - measure_start.cpu_seconds).max(0.0),
            rss_before_kib: before_connect.rss_kib,
            rss_after_kib: end.rss_kib,
            rss_per_connection_kib: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) target: &'static str,
    /// The scenario's options, as given.
    pub(crate) params: serde_json::Value,
    /// Length of the measured phase in seconds (publishing, holding or connecting).
    pub(crate) measured_seconds: f64,
    pub(crate) connections: u64,
    pub(crate) connection_errors: u64,
    pub(crate) disconnects: u64,
    /// Connections confirmed by a warm-up probe and therefore measured.
    pub(crate) measured_connections: u64,
    pub(crate) alive_at_end: u64,
    pub(crate) publishes_ok: u64,
    pub(crate) publish_errors: u64,
    pub(crate) publishes_per_second: f64,
    pub(crate) expected_deliveries: u64,
    pub(crate) deliveries: u64,
    pub(crate) deliveries_per_second: f64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) misrouted: u64,
    /// Measured messages received by connections outside the measurement (not counted above).
    pub(crate) unexpected: u64,
    pub(crate) latency_ms: Option<LatencySummary>,
    /// Pairs on Pushca: sends acknowledged to their sender (`<id>@@ACKNOWLEDGE`, or 200 from
    /// the with-acknowledge route).
    pub(crate) acks: u64,
    /// With `--ack`: sends answered with an error (not acknowledged in time, not connected).
    pub(crate) ack_failures: u64,
    /// Sends that should have been answered and were neither acknowledged nor refused.
    pub(crate) unacked: u64,
    /// The sender's send → acknowledgement round trip: with `--ack` until the receiver
    /// acknowledged, without until the server sent the message on.
    pub(crate) ack_latency_ms: Option<LatencySummary>,
    /// `fanout --rate max`: the highest sustainable rate and every step tried; the other
    /// figures are those of that rate's step.
    pub(crate) search: Option<SearchReport>,
    /// Connect scenario: connections per second from the first attempt to the last success.
    pub(crate) connects_per_second: Option<f64>,
    pub(crate) connect_latency_ms: Option<LatencySummary>,
    pub(crate) server: Option<ServerUsage>,
    /// CPU seconds the generator (all its processes) used during the measured phase.
    pub(crate) generator_cpu_seconds: f64,
    pub(crate) generator_processes: u64,
    pub(crate) warnings: Vec<String>,
}

impl Report {
    pub(crate) fn new(
        scenario: &'static str,
        target: &'static str,
        params: serde_json::Value,
        stats: &WorkerStats,
        measured_seconds: f64,
    ) -> Self {
        let per_s = |n: u64| {
            if measured_seconds > 0.0 {
                n as f64 / measured_seconds
            } else {
                0.0
            }
        };
        Report {
            scenario,
            target,
            params,
            measured_seconds,
            connections: stats.connected,
            connection_errors: stats.connect_errors,
            disconnects: stats.disconnects,
            measured_connections: stats.included,
            alive_at_end: stats.alive_at_end,
            publishes_ok: stats.publishes_ok,
            publish_errors: stats.publish_errors,
            publishes_per_second: per_s(stats.publishes_ok),
            expected_deliveries: stats.expected,
            deliveries: stats.deliveries,
            deliveries_per_second: per_s(stats.deliveries),
            lost: stats.lost,
            duplicated: stats.duplicated,
            misrouted: stats.misrouted,
            unexpected: stats.unexpected,
            latency_ms: stats.latency(),
            acks: stats.acks,
            ack_failures: stats.ack_failures,
            unacked: stats.unacked,
            ack_latency_ms: stats.ack_latency(),
            search: None,
            connects_per_second: None,
            connect_latency_ms: stats.connect_latency(),
            server: None,
            generator_cpu_seconds: stats.cpu_seconds,
            generator_processes: stats.processes,
            warnings: Vec::new(),
        }
    }

    /// A two-column table for people.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<28} {v}");
        };
        row("scenario", format!("{} on {}", self.scenario, self.target));
        row("params", self.params.to_string());
        row("measured seconds", format!("{:.2}", self.measured_seconds));
        row(
            "connections",
            format!(
                "{} ok, {} errors, {} dropped, {} measured, {} open at end",
                self.connections,
                self.connection_errors,
                self.disconnects,
                self.measured_connections,
                self.alive_at_end
            ),
        );
        if self.publishes_ok + self.publish_errors > 0 {
            row(
                "publishes",
                format!(
                    "{} ok ({:.1}/s), {} errors",
                    self.publishes_ok, self.publishes_per_second, self.publish_errors
                ),
            );
            row(
                "deliveries",
                format!(
                    "{} of {} expected ({:.1}/s)",
                    self.deliveries, self.expected_deliveries, self.deliveries_per_second
                ),
            );
            row(
                "lost / duplicated",
                format!(
                    "{} / {} (misrouted {}, outside measurement {})",
                    self.lost, self.duplicated, self.misrouted, self.unexpected
                ),
            );
        }
        if let Some(l) = &self.latency_ms {
            row("latency ms p50/p90/p99", fmt3(l.p50_ms, l.p90_ms, l.p99_ms));
            row(
                "latency ms p99.9/max/mean",
                fmt3(l.p999_ms, l.max_ms, l.mean_ms),
            );
        }
        if self.acks + self.ack_failures + self.unacked > 0 {
            row(
                "sender acks",
                format!(
                    "{} acknowledged, {} failed, {} unanswered",
                    self.acks, self.ack_failures, self.unacked
                ),
            );
        }
        if let Some(l) = &self.ack_latency_ms {
            row("ack ms p50/p90/p99", fmt3(l.p50_ms, l.p90_ms, l.p99_ms));
            row(
                "ack ms p99.9/max/mean",
                fmt3(l.p999_ms, l.max_ms, l.mean_ms),
            );
        }
        if let Some(search) = &self.search {
            row(
                "highest sustainable rate",
                match search.max_rate {
                    Some(r) => format!("{r:.1} msg/s (the figures above are its step)"),
                    None => "none".into(),
                },
            );
            for (i, step) in search.steps.iter().enumerate() {
                row(
                    &format!("step {}", i + 1),
                    format!(
                        "{:.1} msg/s: {:.1} pub/s, {:.0} of {:.0} deliveries/s, p99 {} ms, {} lost: {}",
                        step.rate,
                        step.publishes_per_second,
                        step.deliveries_per_second,
                        step.expected_deliveries_per_second,
                        step.p99_ms.map_or("-".into(), |p| format!("{p:.2}")),
                        step.lost,
                        step.verdict
                    ),
                );
            }
        }
        if let Some(c) = self.connects_per_second {
            row("connects per second", format!("{c:.1}"));
        }
        if let Some(l) = &self.connect_latency_ms {
            row("connect ms p50/p99/max", fmt3(l.p50_ms, l.p99_ms, l.max_ms));
        }
        if let Some(s) = &self.server {
            row(
                "server cpu seconds",
                format!(
                    "{:.2} ({:.0}% of one core; pid {}, {} processes)",
                    s.cpu_seconds,
                    100.0 * s.cpu_seconds / self.measured_seconds.max(1e-9),
                    s.pid,
                    s.processes
                ),
            );
            row(
                "server rss MiB before/after",
                format!(
                    "{:.1} / {:.1}",
                    s.rss_before_kib as f64 / 1024.0,
                    s.rss_after_kib as f64 / 1024.0
                ),
            );
            if let Some(per) = s.rss_per_connection_kib {
                row("server rss per connection", format!("{per:.2} KiB"));
            }
        }
        row(
            "generator cpu seconds",
            format!(
                "{:.2} ({} processes)",
                self.generator_cpu_seconds, self.generator_processes
            ),
        );
        for w in &self.warnings {
            row("WARNING", w.clone());
        }
        t
    }
}

fn fmt3(a: f64, b: f64, c: f64) -> String {
    format!("{a:.2} / {b:.2} / {c:.2}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{histogram_to_pairs, new_histogram};

    #[test]
    fn report_from_stats() {
        let mut h = new_histogram();
        for v in 1..=100u64 {
            h.record(v * 1000).expect("in range");
        }
        let stats = WorkerStats {
            connected: 10,
            included: 10,
            publishes_ok: 20,
            expected: 200,
            deliveries: 198,
            lost: 2,
            latency_us: histogram_to_pairs(&h),
            cpu_seconds: 0.25,
            processes: 1,
            ..WorkerStats::default()
        };
        let r = Report::new(
            "fanout",
            "nchan",
            serde_json::json!({"rate": 2}),
            &stats,
            10.0,
        );
        assert!((r.deliveries_per_second - 19.8).abs() < 1e-9);
        assert!((r.publishes_per_second - 2.0).abs() < 1e-9);
        let l = r.latency_ms.expect("latency");
        assert!((l.p50_ms - 50.0).abs() < 0.1 && (l.max_ms - 100.0).abs() < 0.1);
        let table = r.table();
        assert!(table.contains("198 of 200 expected"), "{table}");
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        assert_eq!(json["lost"], 2);
        assert_eq!(json["latency_ms"]["count"], 100);
    }
}
