//! Counters and latency histograms a worker collects, and their merging across worker processes.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to one hour, with 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;
const HIST_SIGFIG: u8 = 3;

pub(crate) fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts; this arm is never taken.
        Err(e) => panic!("histogram bounds: {e}"),
    }
}

/// A histogram as `(value, count)` pairs of its non-empty buckets: small, JSON-friendly and
/// merged exactly, because a bucket's value maps back into the same bucket.
pub(crate) fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub(crate) fn pairs_to_histogram(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &(value, count) in pairs {
        h.saturating_record_n(value, count);
    }
    h
}

/// Many tasks record into a few mutex-guarded histograms chosen by a key (a connection index),
/// so 10,000 connections need neither 10,000 histograms nor one contended lock.
pub(crate) struct Recorder {
    /// The histograms; a record goes to the one its key picks.
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    pub(crate) fn new(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub(crate) fn record(&self, key: usize, micros: u64) {
        let shard = &self.shards[key % self.shards.len()];
        // A poisoned shard still holds valid counts.
        let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(micros.max(1));
    }

    /// Empties every shard, for a new measurement step.
    pub(crate) fn reset(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
    }

    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides, so adding cannot fail.
            let _ = out.add(&*h);
        }
        out
    }
}

/// Percentiles for the report, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl LatencySummary {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// What one worker (a process or the in-process share) measured; summed across workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WorkerStats {
    /// Connections that completed their handshake (and subscription, where the protocol confirms it).
    pub(crate) connected: u64,
    /// Connections that failed or timed out before being established.
    pub(crate) connect_errors: u64,
    /// Established connections that the server (or the network) closed before the end.
    pub(crate) disconnects: u64,
    /// Connections included in the measurement: confirmed by a warm-up probe before it started.
    pub(crate) included: u64,
    /// Publishes the server accepted (2xx, or a WS command without an error reply).
    pub(crate) publishes_ok: u64,
    /// Publishes refused, failed or timed out.
    pub(crate) publish_errors: u64,
    /// Deliveries the measurement expected (fan-out: sum over messages of included subscribers on
    /// the message's channel; pairs: accepted publishes).
    pub(crate) expected: u64,
    /// First receipts of a measured message by an included connection.
    pub(crate) deliveries: u64,
    /// Expected deliveries never received.
    pub(crate) lost: u64,
    /// Receipts of a message the connection had already received.
    pub(crate) duplicated: u64,
    /// Pairs messages received by a client that was not their receiver.
    pub(crate) misrouted: u64,
    /// Measured messages received by connections not included in the measurement.
    pub(crate) unexpected: u64,
    /// Fan-out search: first receipts, during a step, of an earlier step's messages.
    pub(crate) late: u64,
    /// Unix nanoseconds of the first and last established connection (0: none), for connect rates.
    pub(crate) first_connect_ns: u64,
    pub(crate) last_connect_ns: u64,
    /// Unix nanoseconds of the last counted fan-out delivery (0: none): when a step really ended.
    pub(crate) last_delivery_ns: u64,
    /// Sends acknowledged to their sender (Pushca), and the round trip's histogram (µs).
    pub(crate) acks: u64,
    pub(crate) ack_latency_us: Vec<(u64, u64)>,
    /// With `--ack`: sends answered with an error (not acknowledged in time, not connected).
    pub(crate) ack_failures: u64,
    /// Sends that should have been answered (Pushca over WebSocket, or with acknowledge) and
    /// were neither acknowledged nor refused by the end of the drain.
    pub(crate) unacked: u64,
    /// End-to-end latency histogram (µs), as `(value, count)` pairs.
    pub(crate) latency_us: Vec<(u64, u64)>,
    /// Time from starting a connection to its being established (µs), as pairs.
    pub(crate) connect_us: Vec<(u64, u64)>,
    /// Connections still open when the worker stopped.
    pub(crate) alive_at_end: u64,
    /// CPU seconds of the processes that produced these stats (generator cost).
    pub(crate) cpu_seconds: f64,
    /// Number of generator processes merged in.
    pub(crate) processes: u64,
}

impl WorkerStats {
    /// Adds `other` into `self`.
    pub(crate) fn merge(&mut self, other: &WorkerStats) {
        self.connected += other.connected;
        self.connect_errors += other.connect_errors;
        self.disconnects += other.disconnects;
        self.included += other.included;
        self.publishes_ok += other.publishes_ok;
        self.publish_errors += other.publish_errors;
        self.expected += other.expected;
        self.deliveries += other.deliveries;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.misrouted += other.misrouted;
        self.unexpected += other.unexpected;
        self.late += other.late;
        self.first_connect_ns = match (self.first_connect_ns, other.first_connect_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_connect_ns = self.last_connect_ns.max(other.last_connect_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.acks += other.acks;
        self.ack_latency_us = merge_pairs(&self.ack_latency_us, &other.ack_latency_us);
        self.ack_failures += other.ack_failures;
        self.unacked += other.unacked;
        self.latency_us = merge_pairs(&self.latency_us, &other.latency_us);
        self.connect_us = merge_pairs(&self.connect_us, &other.connect_us);
        self.alive_at_end += other.alive_at_end;
        self.cpu_seconds += other.cpu_seconds;
        self.processes += other.processes;
    }

    pub(crate) fn latency(&self) -> Option<LatencySummary> {
        LatencySummary::of(&pairs_to_histogram(&self.latency_us))
    }

    pub(crate) fn connect_latency(&self) -> Option<LatencySummary> {
        LatencySummary::of(&pairs_to_histogram(&self.connect_us))
    }

    pub(crate) fn ack_latency(&self) -> Option<LatencySummary> {
        LatencySummary::of(&pairs_to_histogram(&self.ack_latency_us))
    }
}

fn merge_pairs(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut h = pairs_to_histogram(a);
    let _ = h.add(pairs_to_histogram(b));
    histogram_to_pairs(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let r = Recorder::new(4);
        // 1..=1000 ms, one sample each, spread over shards.
        for i in 1..=1000u64 {
            r.record(i as usize, i * 1000);
        }
        let s = LatencySummary::of(&r.merged()).expect("non-empty");
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn reset_empties_every_shard() {
        let r = Recorder::new(3);
        for i in 0..10 {
            r.record(i, 5);
        }
        r.reset();
        assert!(r.merged().is_empty());
        r.record(1, 7);
        assert_eq!(r.merged().len(), 1);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert_eq!(LatencySummary::of(&new_histogram()), None);
    }

    #[test]
    fn pairs_round_trip_exactly() {
        let mut h = new_histogram();
        for v in [1u64, 7, 999, 1_234_567, 3_000_000_000] {
            h.record_n(v, v % 5 + 1).expect("in range");
        }
        let back = pairs_to_histogram(&histogram_to_pairs(&h));
        assert_eq!(back, h);
        assert_eq!(LatencySummary::of(&back), LatencySummary::of(&h));
    }

    #[test]
    fn merging_workers_equals_recording_once() {
        let mut all = new_histogram();
        let mut workers = Vec::new();
        for w in 0..3u64 {
            let mut h = new_histogram();
            for i in 0..500u64 {
                let v = 100 + w * 10_000 + i * 37;
                h.record(v).expect("in range");
                all.record(v).expect("in range");
            }
            workers.push(WorkerStats {
                connected: 10 + w,
                connect_errors: w,
                deliveries: 500,
                expected: 501,
                lost: 1,
                duplicated: w,
                first_connect_ns: 1000 + w,
                last_connect_ns: 2000 + w,
                last_delivery_ns: 3000 - w,
                acks: 400,
                ack_failures: w,
                unacked: 1,
                late: w,
                latency_us: histogram_to_pairs(&h),
                ack_latency_us: histogram_to_pairs(&h),
                cpu_seconds: 0.5,
                processes: 1,
                ..WorkerStats::default()
            });
        }
        let mut merged = WorkerStats::default();
        for w in &workers {
            merged.merge(w);
        }
        assert_eq!(merged.connected, 33);
        assert_eq!(merged.connect_errors, 3);
        assert_eq!(merged.deliveries, 1500);
        assert_eq!(merged.expected, 1503);
        assert_eq!(merged.lost, 3);
        assert_eq!(merged.duplicated, 3);
        assert_eq!(merged.first_connect_ns, 1000);
        assert_eq!(merged.last_connect_ns, 2002);
        assert_eq!(merged.last_delivery_ns, 3000);
        assert_eq!(
            (merged.acks, merged.ack_failures, merged.unacked),
            (1200, 3, 3)
        );
        assert_eq!(merged.late, 3);
        assert_eq!(pairs_to_histogram(&merged.ack_latency_us), all);
        assert_eq!(merged.processes, 3);
        assert!((merged.cpu_seconds - 1.5).abs() < 1e-9);
        assert_eq!(pairs_to_histogram(&merged.latency_us), all);
        // Survives the JSON hop between processes unchanged.
        let json = serde_json::to_string(&merged).expect("serialize");
        let back: WorkerStats = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, merged);
    }
}
