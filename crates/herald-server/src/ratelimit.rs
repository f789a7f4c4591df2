//! A token bucket shared by one node's requests of a kind (Pushca's REST
//! API answers 429 when it is empty).

use std::time::Instant;

use parking_lot::Mutex;

/// Refills `rate` tokens per second up to `burst`.
pub(crate) struct RateLimit {
    /// Tokens per second; 0 means unlimited.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `rate` per second (0: unlimited), bursts of `burst` (0: `rate`).
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let rate = f64::from(rate);
        let burst = if burst == 0 { rate } else { f64::from(burst) };
        Self {
            rate,
            burst,
            bucket: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub(crate) fn try_acquire(&self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut bucket = self.bucket.lock();
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
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
