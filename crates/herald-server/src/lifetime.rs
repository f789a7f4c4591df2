//! Per-connection timing: heartbeats, and a lifetime drawn with random dither
//! so that reconnects after a deploy or a lifetime wave spread out.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::ConnectionConfig;

/// What a connection's clock asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Send a heartbeat (and check liveness).
    Heartbeat,
    /// Tell the client to reconnect: the lifetime ends in `close_grace`.
    ReconnectHint,
    /// The lifetime is over: close.
    Expire,
}

/// The deadlines of one connection.
#[derive(Debug)]
pub(crate) struct Clock {
    /// Interval between heartbeats.
    heartbeat: Duration,
    /// When the next heartbeat is due.
    next_heartbeat: Instant,
    /// When the reconnect hint is due; `None` once sent or without a lifetime.
    hint_at: Option<Instant>,
    /// When the connection is closed; `None` without a lifetime.
    expire_at: Option<Instant>,
}

impl Clock {
    /// Starts a clock now, drawing the lifetime uniformly from
    /// `[lifetime_min, lifetime_max)` (exactly `lifetime_min` when they are equal).
    pub(crate) fn start(cfg: &ConnectionConfig) -> Self {
        let now = Instant::now();
        let lifetime = draw_lifetime(cfg);
        Self {
            heartbeat: cfg.heartbeat,
            next_heartbeat: now + cfg.heartbeat,
            hint_at: lifetime.map(|l| now + l.saturating_sub(cfg.close_grace)),
            expire_at: lifetime.map(|l| now + l),
        }
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Instant {
        let mut next = self.next_heartbeat;
        for t in [self.hint_at, self.expire_at].into_iter().flatten() {
            next = next.min(t);
        }
        next
    }

    /// Returns what is due at `now` and moves past it.
    pub(crate) fn fire(&mut self, now: Instant) -> Option<Tick> {
        if self.expire_at.is_some_and(|t| now >= t) {
            self.expire_at = None;
            self.hint_at = None;
            return Some(Tick::Expire);
        }
        if self.hint_at.is_some_and(|t| now >= t) {
            self.hint_at = None;
            return Some(Tick::ReconnectHint);
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.heartbeat;
            return Some(Tick::Heartbeat);
        }
        None
    }
}

fn draw_lifetime(cfg: &ConnectionConfig) -> Option<Duration> {
    if cfg.lifetime_max.is_zero() {
        return None;
    }
    // Drawn in whole milliseconds: bounds apart by less are one value.
    let (min, max) = (cfg.lifetime_min.as_millis(), cfg.lifetime_max.as_millis());
    if max <= min {
        return Some(cfg.lifetime_min);
    }
    let ms = rand::rng().random_range(min..max);
    Some(Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u64, max: u64) -> ConnectionConfig {
        ConnectionConfig {
            heartbeat: Duration::from_secs(30),
            lifetime_min: Duration::from_secs(min),
            lifetime_max: Duration::from_secs(max),
            close_grace: Duration::from_secs(4),
            sse_retry: Duration::from_secs(3),
        }
    }

    #[test]
    fn lifetime_is_uniform_within_bounds() {
        let c = cfg(120, 180);
        let draws: Vec<Duration> = (0..2000).map(|_| draw_lifetime(&c).unwrap()).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= c.lifetime_min && *d < c.lifetime_max)
        );
        let below_150 = draws.iter().filter(|d| d.as_secs() < 150).count();
        assert!(
            (800..1200).contains(&below_150),
            "{below_150} of 2000 below the midpoint"
        );
    }

    #[test]
    fn equal_bounds_and_zero_are_handled() {
        assert_eq!(draw_lifetime(&cfg(5, 5)), Some(Duration::from_secs(5)));
        assert_eq!(draw_lifetime(&cfg(0, 0)), None);
        // Apart by less than a millisecond: one value, not an empty range.
        let mut close = cfg(120, 120);
        close.lifetime_max += Duration::from_micros(500);
        assert_eq!(draw_lifetime(&close), Some(Duration::from_secs(120)));
    }

    #[tokio::test(start_paused = true)]
    async fn hint_comes_grace_before_expiry() {
        let mut clock = Clock::start(&cfg(10, 10));
        let start = Instant::now();
        let mut seen = Vec::new();
        while seen.last() != Some(&Tick::Expire) {
            let at = clock.next_deadline();
            tokio::time::sleep_until(at).await;
            if let Some(t) = clock.fire(Instant::now()) {
                seen.push(t);
                assert_eq!(
                    (t, at - start),
                    match t {
                        Tick::ReconnectHint => (t, Duration::from_secs(6)),
                        Tick::Expire => (t, Duration::from_secs(10)),
                        Tick::Heartbeat => (t, at - start),
                    }
                );
            }
        }
        assert_eq!(seen, vec![Tick::ReconnectHint, Tick::Expire]);
    }
}
