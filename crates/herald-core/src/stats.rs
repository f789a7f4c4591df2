//! Process-wide counters the hub keeps; the server renders them as metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the publish-to-fan-out latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Counters updated on the hot path with relaxed atomics.
#[derive(Default)]
pub struct HubStats {
    /// Messages accepted for fan-out on this node.
    pub published: AtomicU64,
    /// Frames queued to a subscriber.
    pub delivered: AtomicU64,
    /// Frames not queued: the subscriber was closed or fell behind.
    pub dropped: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub slow_consumers: AtomicU64,
    /// Time from accepting a message to queuing it for every subscriber.
    pub fanout_latency: Histogram,
}

/// Counters of targeted sends (identity filters), kept by the engine.
#[derive(Default)]
pub struct SendStats {
    /// Delivery attempts: one per send, one more per ack retry.
    pub attempts: AtomicU64,
    /// Connections that took a targeted message (across the cluster).
    pub delivered: AtomicU64,
    /// Attempts whose filter matched no connection.
    pub unmatched: AtomicU64,
    /// Acknowledged sends that the receiver acknowledged.
    pub acked: AtomicU64,
    /// Acknowledged sends that were not acknowledged in time.
    pub timed_out: AtomicU64,
    /// Acknowledged sends that found nobody to deliver to.
    pub not_connected: AtomicU64,
}

/// A fixed-bucket histogram of durations (see [`LATENCY_BUCKETS_US`]).
#[derive(Default)]
pub struct Histogram {
    /// Counts per bucket, plus the overflow bucket at the end.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of all observations in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is +Inf) and the sum in microseconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (cumulative, self.sum_us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_secs(5));
        let (counts, sum) = h.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 2);
        assert_eq!(*counts.last().unwrap(), 3);
        assert_eq!(counts[counts.len() - 2], 2);
        assert_eq!(sum, 5_000_110);
    }
}
