//! Token buckets: one shared by a node's requests of a kind (Pushca's REST
//! API answers 429 when it is empty), or one a connection owns (the native
//! WebSocket's commands).

use std::time::Instant;

use parking_lot::Mutex;

/// Refills `rate` tokens per second up to `burst`; owned by one task.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// Tokens per second; 0 means unlimited.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// Tokens left …
    tokens: f64,
    /// … when last counted.
    last: Instant,
}

impl Bucket {
    /// `rate` per second (0: unlimited), bursts of `burst` (0: `rate`).
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let rate = f64::from(rate);
        let burst = if burst == 0 { rate } else { f64::from(burst) };
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub(crate) fn try_acquire(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// A [`Bucket`] shared by many tasks.
pub(crate) struct RateLimit(Mutex<Bucket>);

impl RateLimit {
    /// As [`Bucket::new`].
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self(Mutex::new(Bucket::new(rate, burst)))
    }

    /// Takes one token; false when the bucket is empty.
    pub(crate) fn try_acquire(&self) -> bool {
        self.0.lock().try_acquire()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empties_after_the_burst_and_zero_is_unlimited() {
        let limit = RateLimit::new(1, 3);
        assert_eq!((0..5).filter(|_| limit.try_acquire()).count(), 3);
        let off = RateLimit::new(0, 0);
        assert!((0..10_000).all(|_| off.try_acquire()));
    }
}
