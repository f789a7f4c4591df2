//! The highest-sustainable-rate search, without any I/O: which rate to try next, and whether
//! a step at some rate was sustainable.

use serde::Serialize;

/// A step is sustainable only if it achieved at least this fraction of the offered publishes
/// and of the expected deliveries per second.
const KEEP_UP: f64 = 0.97;
/// The bisection stops once the first unsustainable rate is within this fraction above the
/// last sustainable one.
const PRECISION: f64 = 0.10;

/// Chooses rates: doubling from the start until a step fails, then bisecting between the
/// highest sustainable and the lowest unsustainable rate. If the start rate already fails, it
/// halves instead, down to `min_rate`.
#[derive(Debug, Clone)]
pub(crate) struct RateSearch {
    /// The first rate tried (at least `min_rate`).
    start: f64,
    /// Below this a step would publish less than one message.
    min_rate: f64,
    /// Steps allowed: the search ends there, narrowed down or not.
    max_steps: u32,
    /// Steps recorded so far.
    steps: u32,
    /// Highest sustainable rate so far.
    good: Option<f64>,
    /// Lowest unsustainable rate so far.
    bad: Option<f64>,
}

impl RateSearch {
    pub(crate) fn new(start: f64, min_rate: f64, max_steps: u32) -> Self {
        RateSearch {
            start: start.max(min_rate),
            min_rate,
            max_steps,
            steps: 0,
            good: None,
            bad: None,
        }
    }

    /// The next rate to try, or `None` when the search is over.
    pub(crate) fn next(&self) -> Option<f64> {
        self.wanted().filter(|_| self.steps < self.max_steps)
    }

    /// Whether the step limit ended the search before it had narrowed the rate down.
    pub(crate) fn cut_short(&self) -> bool {
        self.steps >= self.max_steps && self.wanted().is_some()
    }

    /// The rate the search would try next, were there no step limit.
    fn wanted(&self) -> Option<f64> {
        match (self.good, self.bad) {
            (None, None) => Some(self.start),
            (Some(good), None) => Some(good * 2.0),
            (None, Some(bad)) => Some(bad / 2.0).filter(|r| *r >= self.min_rate),
            (Some(good), Some(bad)) => {
                Some((good + bad) / 2.0).filter(|_| bad > good * (1.0 + PRECISION))
            }
        }
    }

    /// Records a step's verdict.
    pub(crate) fn record(&mut self, rate: f64, sustainable: bool) {
        self.steps += 1;
        if sustainable {
            self.good = Some(self.good.map_or(rate, |g| g.max(rate)));
        } else {
            self.bad = Some(self.bad.map_or(rate, |b| b.min(rate)));
        }
    }

    /// The highest sustainable rate found.
    pub(crate) fn best(&self) -> Option<f64> {
        self.good
    }

    /// The lowest unsustainable rate found.
    pub(crate) fn worst(&self) -> Option<f64> {
        self.bad
    }
}

/// What one step measured, as far as the verdict needs it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// Offered publish rate (msg/s).
    pub(crate) rate: f64,
    /// Publishes accepted per second of publishing.
    pub(crate) publishes_per_second: f64,
    /// Deliveries of this step's messages per second over [`delivery_span`] (so a server
    /// that falls behind shows a longer tail and a lower figure).
    pub(crate) deliveries_per_second: f64,
    /// The offered rate times the measured subscribers per message.
    pub(crate) expected_deliveries_per_second: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Expected deliveries that had not arrived when the drain ended.
    pub(crate) lost: u64,
    pub(crate) publish_errors: u64,
    /// Deliveries of earlier steps' messages that arrived during this one (after their drain).
    pub(crate) late: u64,
    pub(crate) sustainable: bool,
    /// "ok", or why the step is not sustainable.
    pub(crate) verdict: String,
}

impl Step {
    /// Fills in `sustainable` and `verdict` against the limits; `max_p99_ms` is the highest
    /// sustainable latency p99.
    pub(crate) fn judge(&mut self, max_p99_ms: f64) {
        let mut why = Vec::new();
        if self.lost > 0 {
            why.push(format!("{} lost", self.lost));
        }
        if self.publish_errors > 0 {
            why.push(format!("{} publish errors", self.publish_errors));
        }
        let share = |got: f64, want: f64| if want > 0.0 { got / want } else { 0.0 };
        let publishes = share(self.publishes_per_second, self.rate);
        if publishes < KEEP_UP {
            why.push(format!("publishes {:.0}% of offered", publishes * 100.0));
        }
        let deliveries = share(
            self.deliveries_per_second,
            self.expected_deliveries_per_second,
        );
        if deliveries < KEEP_UP {
            why.push(format!("deliveries {:.0}% of expected", deliveries * 100.0));
        }
        match self.p99_ms {
            Some(p99) if p99 > max_p99_ms => {
                why.push(format!("p99 {p99:.1} ms > {max_p99_ms} ms"));
            }
            Some(_) => {}
            None => why.push("nothing delivered".into()),
        }
        self.sustainable = why.is_empty();
        self.verdict = if why.is_empty() {
            "ok".into()
        } else {
            why.join("; ")
        };
    }
}

/// The time a step's deliveries are counted over, in seconds: its publishing time, or longer
/// when the last delivery came later than the latency limit allows. Up to `max_p99` of
/// latency on the last message is the limit's to judge, not the throughput's: counting it
/// here too would hold the last delivery to about 3 % of the step (150 ms of 5 s), far below
/// the limit. A server that falls behind still stretches the span: its backlog delays the
/// last delivery past the limit.
pub(crate) fn delivery_span(publishing: f64, to_last_delivery: f64, max_p99: f64) -> f64 {
    publishing.max(to_last_delivery - max_p99)
}

/// The search as reported: the answer and every step tried, in order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SearchReport {
    /// Highest sustainable rate (msg/s); `None` if no step was sustainable.
    pub(crate) max_rate: Option<f64>,
    /// Publishing time of each step.
    pub(crate) step_seconds: f64,
    /// The p99 limit a sustainable step had to meet.
    pub(crate) max_p99_ms: f64,
    pub(crate) steps: Vec<Step>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a server that sustains rates up to `limit`.
    fn search(start: f64, limit: f64, max_steps: u32) -> (Option<f64>, Vec<f64>) {
        let mut s = RateSearch::new(start, 0.2, max_steps);
        let mut tried = Vec::new();
        // Bounded by max_steps.
        while let Some(rate) = s.next() {
            tried.push(rate);
            s.record(rate, rate <= limit);
        }
        (s.best(), tried)
    }

    #[test]
    fn doubles_then_bisects_to_within_ten_percent() {
        let (best, tried) = search(10.0, 3000.0, 30);
        let best = best.expect("found");
        assert!(best <= 3000.0 && best > 3000.0 / 1.1, "{best} {tried:?}");
        assert_eq!(
            &tried[..10],
            &[10., 20., 40., 80., 160., 320., 640., 1280., 2560., 5120.]
        );
        assert!(tried.len() < 16, "{tried:?}");
    }

    #[test]
    fn halves_when_the_start_fails_and_gives_up_at_the_floor() {
        let (best, tried) = search(10.0, 3.0, 30);
        assert!(best.expect("found") > 3.0 / 1.1, "{tried:?}");
        assert_eq!(&tried[..3], &[10., 5., 2.5]);
        let (best, tried) = search(10.0, 0.0, 30);
        assert_eq!(best, None);
        assert_eq!(tried.last().copied(), Some(0.3125), "{tried:?}");
    }

    #[test]
    fn stops_at_max_steps() {
        let (best, tried) = search(1.0, 1e12, 5);
        assert_eq!(tried, [1., 2., 4., 8., 16.]);
        assert_eq!(best, Some(16.));
        let mut s = RateSearch::new(10.0, 0.2, 2);
        s.record(10.0, true);
        assert!(!s.cut_short());
        s.record(20.0, false);
        assert!(s.cut_short(), "15 msg/s was still to try");
        let mut s = RateSearch::new(10.0, 0.2, 2);
        s.record(10.0, true);
        s.record(10.5, false);
        assert!(!s.cut_short(), "already within 10%");
    }

    #[test]
    fn the_span_allows_the_latency_limit_and_not_a_backlog() {
        // Kept up: the last message arrived 200 ms after a 5 s step, within a 250 ms limit.
        assert_eq!(delivery_span(5.0, 5.2, 0.25), 5.0);
        // Fell 10 % behind: 500 ms of backlog on top of 100 ms of fan-out.
        let span = delivery_span(5.0, 5.6, 0.25);
        assert!((span - 5.35).abs() < 1e-9, "{span}");
        let mut s = step();
        s.deliveries_per_second = 10_000.0 * 5.0 / span;
        s.judge(1000.0);
        assert_eq!(s.verdict, "deliveries 93% of expected");
    }

    fn step() -> Step {
        Step {
            rate: 100.0,
            publishes_per_second: 99.0,
            deliveries_per_second: 9_800.0,
            expected_deliveries_per_second: 10_000.0,
            p50_ms: Some(1.0),
            p99_ms: Some(20.0),
            lost: 0,
            publish_errors: 0,
            late: 0,
            sustainable: false,
            verdict: String::new(),
        }
    }

    #[test]
    fn a_step_is_sustainable_only_within_every_limit() {
        let mut s = step();
        s.judge(50.0);
        assert!(s.sustainable, "{}", s.verdict);
        assert_eq!(s.verdict, "ok");
        type Spoil = fn(&mut Step);
        let cases: [(&str, Spoil); 5] = [
            ("1 lost", |s| s.lost = 1),
            ("2 publish errors", |s| s.publish_errors = 2),
            ("publishes 90% of offered", |s| {
                s.publishes_per_second = 90.0
            }),
            ("deliveries 96% of expected", |s| {
                s.deliveries_per_second = 9_600.0;
            }),
            ("p99 60.0 ms > 50 ms", |s| s.p99_ms = Some(60.0)),
        ];
        for (why, spoil) in cases {
            let mut s = step();
            spoil(&mut s);
            s.judge(50.0);
            assert!(!s.sustainable, "{why}");
            assert_eq!(s.verdict, why);
        }
        let mut s = step();
        s.p99_ms = None;
        s.judge(50.0);
        assert_eq!(s.verdict, "nothing delivered");
    }
}
