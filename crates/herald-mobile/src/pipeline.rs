//! The pipeline: consume notifications from Kafka, send each through its
//! provider (retrying what the provider asks to have retried), then report
//! the answer as a feedback record, stats, and a dead-token deletion.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::config::MobileConfig;
use crate::message::{self, Notification};
use crate::offsets::Offsets;
use crate::provider::apns::Apns;
use crate::provider::fcm::Fcm;
use crate::provider::webpush::WebPush;
use crate::stats::Stats;
use crate::subscription::{self, Wanted};
use crate::tokens::{InvalidTokens, TokenTable};
use crate::topic::{self, Route};
use crate::{Platform, Provider, Push, Rejection, Sent, feedback};

/// Longest wait a provider's `Retry-After` may impose on one push.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// Longest a feedback record may wait in the producer's queue.
const FEEDBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one "Kafka consume failed" warning per this long.
const CONSUME_WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Why the pipeline cannot start.
#[derive(Debug, Error)]
pub enum MobileError {
    #[error("invalid mobile configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Credentials(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("statsd: {0}")]
    Stats(#[from] std::io::Error),
}

/// A started pipeline, ready to run.
pub struct Mobile {
    /// The group member that reads the topics.
    consumer: Arc<StreamConsumer>,
    /// The topics to consume, followed while the pipeline runs.
    wanted: Wanted,
    /// How often the brokers' topics are listed.
    metadata_refresh: Duration,
    /// Providers, counters and limits, shared with the push tasks and the HTTP routes.
    shared: Arc<Shared>,
    /// How long in-flight pushes may finish after the stop.
    graceful_timeout: Duration,
    /// How often StatsD gets the counts.
    stats_interval: Duration,
    /// The dead-token batcher, awaited at the end so its last batch lands.
    tokens_task: Option<tokio::task::JoinHandle<()>>,
}

/// What every push task needs.
pub(crate) struct Shared {
    /// One provider per platform with credentials.
    providers: HashMap<Platform, Arc<dyn Provider>>,
    /// For storing offsets as pushes finish.
    consumer: Arc<StreamConsumer>,
    /// Which offsets are safe to commit.
    offsets: Mutex<Offsets>,
    /// `None` when feedback is off.
    producer: Option<FutureProducer>,
    /// Shared with `/metrics`, which outlives the pipeline.
    stats: Arc<Stats>,
    /// `None` when no database is configured.
    tokens: Option<InvalidTokens>,
    /// Reads users' tokens, for pushes to users; `None` without a database.
    pub(crate) table: Option<TokenTable>,
    /// Per app and platform: `true` once a push was accepted, which proves
    /// the configuration right, so that a refusal a misconfiguration also
    /// gives ([`Rejection::unless_misconfigured`]) condemns the token;
    /// `false` while such refusals were only warned about.
    proven: Mutex<HashMap<(Platform, String), bool>>,
    /// Tries per push, the first included.
    attempts: u32,
    /// Wait between tries when the provider names none.
    retry_backoff: Duration,
    /// Pushes in flight at once (`mobile.concurrency`), from Kafka and over
    /// HTTP together: the consumer, and HTTP requests, wait beyond it.
    pub(crate) permits: Arc<Semaphore>,
    /// The permits' number.
    pub(crate) concurrency: usize,
}

/// A handle on the pipeline's counters.
#[derive(Clone)]
pub struct MobileMetrics(Arc<Stats>);

impl MobileMetrics {
    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

/// What became of one notification.
pub(crate) enum Delivery {
    /// Not sent: invalid, expired, or for an app without credentials.
    Skipped {
        /// A bounded key (`invalid-json`, `push-expired`, `unknown-app`, …).
        reason: &'static str,
        detail: String,
    },
    /// The provider answered (after any retries).
    Answered {
        token: String,
        result: Result<Sent, Rejection>,
        /// The answer's feedback record, on its way to Kafka.
        feedback: Feedback,
    },
}

/// A queued feedback record, until Kafka acknowledges it.
pub(crate) struct Feedback(Option<DeliveryFuture>);

impl Feedback {
    /// Waits for the broker's acknowledgement, logging a failure.
    pub(crate) async fn delivered(self) {
        let Some(delivery) = self.0 else {
            return;
        };
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => warn!(error = %e, "Feedback not delivered."),
            Err(_) => warn!("Feedback not delivered: the producer went away."),
        }
    }
}

/// One Kafka message, copied out of the consumer's buffer.
struct Job {
    /// Names the app and platform.
    topic: String,
    /// With the offset, what to commit once the push is done.
    partition: i32,
    /// Its place in the partition: stored once it and every earlier message are done.
    offset: i64,
    /// The notification, in the platform's JSON.
    payload: Vec<u8>,
}

impl Mobile {
    /// Loads credentials, connects to Kafka and subscribes. Fails on bad
    /// credentials or configuration, before anything is consumed.
    pub async fn start(config: &MobileConfig) -> Result<Mobile, MobileError> {
        config.validate().map_err(MobileError::Config)?;
        let mut providers: HashMap<Platform, Arc<dyn Provider>> = HashMap::new();
        if !config.apns.is_empty() {
            let apns = Apns::new(&config.apns, config.production)
                .map_err(|e| MobileError::Credentials(e.to_string()))?;
            providers.insert(Platform::Apns, Arc::new(apns));
        }
        if !config.fcm.is_empty() {
            let fcm = Fcm::new(&config.fcm).map_err(|e| MobileError::Credentials(e.to_string()))?;
            providers.insert(Platform::Gcm, Arc::new(fcm));
        }
        if !config.webpush.is_empty() {
            let web_push = WebPush::new(&config.webpush)
                .map_err(|e| MobileError::Credentials(e.to_string()))?;
            providers.insert(Platform::WebPush, Arc::new(web_push));
        }
        Self::with_providers(config, providers).await
    }

    /// [`Mobile::start`] with the given providers.
    pub async fn with_providers(
        config: &MobileConfig,
        providers: HashMap<Platform, Arc<dyn Provider>>,
    ) -> Result<Mobile, MobileError> {
        let kafka = &config.kafka;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &kafka.group)
            .set("session.timeout.ms", millis(kafka.session_timeout))
            .set("auto.offset.reset", &kafka.offset_reset)
            .set("enable.auto.commit", "true")
            // Offsets are stored only once their push is done (`Offsets`).
            .set("enable.auto.offset.store", "false")
            .set(
                "topic.metadata.refresh.interval.ms",
                millis(kafka.metadata_refresh),
            )
            .create()?;
        let platforms = providers.keys().copied().collect();
        let wanted = Wanted::new(&kafka.topics, platforms).map_err(MobileError::Config)?;
        let consumer = Arc::new(consumer);
        let producer = if kafka.feedback {
            Some(
                ClientConfig::new()
                    .set(
                        "bootstrap.servers",
                        Some(&kafka.feedback_brokers)
                            .filter(|b| !b.is_empty())
                            .unwrap_or(&kafka.brokers),
                    )
                    .set("message.timeout.ms", millis(FEEDBACK_TIMEOUT))
                    .create::<FutureProducer>()?,
            )
        } else {
            None
        };
        let statsd = Some(config.statsd.host.as_str()).filter(|h| !h.is_empty());
        let stats = Stats::new(statsd, &config.statsd.prefix).await?;
        let (tokens, tokens_task) = if config.invalid_tokens.postgres_url.is_empty() {
            (None, None)
        } else {
            let (t, task) = InvalidTokens::spawn(&config.invalid_tokens);
            (Some(t), Some(task))
        };
        info!(topics = %kafka.topics, group = %kafka.group, platforms = providers.len(), "Mobile push ready.");
        Ok(Mobile {
            consumer: consumer.clone(),
            wanted,
            metadata_refresh: kafka.metadata_refresh,
            shared: Arc::new(Shared {
                providers,
                consumer,
                offsets: Mutex::new(Offsets::default()),
                producer,
                stats: Arc::new(stats),
                tokens,
                table: (!config.invalid_tokens.postgres_url.is_empty())
                    .then(|| TokenTable::new(&config.invalid_tokens)),
                proven: Mutex::default(),
                attempts: config.attempts,
                retry_backoff: config.retry_backoff,
                permits: Arc::new(Semaphore::new(config.concurrency)),
                concurrency: config.concurrency,
            }),
            graceful_timeout: config.graceful_timeout,
            stats_interval: config.statsd.flush_interval,
            tokens_task,
        })
    }

    /// `POST /api/v1/push` ([`crate::http::PATH`]): the same pipeline over
    /// HTTP, for the server to mount; it outlives `run`.
    pub fn routes(&self) -> axum::Router {
        crate::http::router(self.shared.clone())
    }

    /// The pipeline's counters, for Herald's `/metrics`; they stay readable
    /// after `run` has taken the pipeline.
    pub fn metrics(&self) -> MobileMetrics {
        MobileMetrics(self.shared.stats.clone())
    }

    /// Consumes until `shutdown` resolves, then lets in-flight pushes finish
    /// (up to the graceful timeout, after which they are cancelled: their
    /// offsets are not committed, so Kafka resends them), commits, and flushes
    /// feedback and stats. A push that panics is logged, counted as failed
    /// (`internal-error`) and its message skipped.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_until(shutdown, std::future::ready(())).await;
    }

    /// [`Mobile::run`], for a pipeline that also serves `POST /api/v1/push`:
    /// its last flushes (feedback, stats, dead tokens) wait for `served`,
    /// the end of the HTTP requests still in flight when `shutdown` came,
    /// whose feedback and dead tokens would otherwise be dropped.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
        served: impl Future<Output = ()>,
    ) {
        let permits = self.shared.permits.clone();
        let topics = tokio::spawn(subscription::follow(
            self.consumer.clone(),
            self.wanted,
            self.metadata_refresh,
        ));
        let mut tasks = JoinSet::new();
        let mut stats_tick = tokio::time::interval(self.stats_interval);
        // While the brokers are down librdkafka reports errors many times a
        // second: one warning per interval, the rest at debug.
        let mut consume_errors = Throttle::new(CONSUME_WARNING_INTERVAL);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let job = tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = stats_tick.tick() => {
                    self.shared.stats.flush().await;
                    continue;
                }
                m = self.consumer.recv() => match m {
                    Ok(m) => Job {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    },
                    Err(e) => {
                        match consume_errors.allow(Instant::now()) {
                            Some(suppressed) => {
                                warn!(error = %e, suppressed, "Kafka consume failed.");
                            }
                            None => debug!(error = %e, "Kafka consume failed."),
                        }
                        continue;
                    }
                },
            };
            self.shared
                .offsets
                .lock()
                .begin(&job.topic, job.partition, job.offset);
            // Reap finished pushes so the set holds only those in flight.
            while tasks.try_join_next().is_some() {}
            let shared = self.shared.clone();
            tasks.spawn(async move {
                // A panic is caught so its offset still settles; a cancel at
                // shutdown is not a panic, so that offset stays unsettled.
                let pushed = AssertUnwindSafe(async {
                    let feedback = shared.handle(&job).await;
                    drop(permit);
                    feedback.delivered().await;
                })
                .catch_unwind()
                .await;
                if let Err(panic) = pushed {
                    shared.panicked(&job, &*panic);
                }
                shared.done(&job);
            });
        }
        topics.abort();
        while tasks.try_join_next().is_some() {}
        info!(in_flight = tasks.len(), "Mobile push stopping.");
        let drained = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.graceful_timeout, drained)
            .await
            .is_err()
        {
            warn!(
                in_flight = tasks.len(),
                "Mobile push cancelled pushes still in flight; Kafka will resend them."
            );
            tasks.shutdown().await;
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "Final offset commit skipped.");
        }
        served.await;
        if let Some(producer) = &self.shared.producer
            && let Err(e) = producer.flush(FEEDBACK_TIMEOUT)
        {
            warn!(error = %e, "Feedback not all delivered.");
        }
        self.shared.stats.flush().await;
        if let Some(tokens) = &self.shared.tokens {
            tokens.close();
        }
        if let Some(task) = self.tokens_task.take()
            && tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
        {
            // Not silently: the tokens come back with the next push to them.
            warn!("Invalid tokens not all deleted at shutdown: PostgreSQL took over 10 s.");
        }
    }
}

impl Shared {
    /// Whether `route`'s app has credentials for its platform.
    pub(crate) fn serves(&self, route: &Route) -> bool {
        self.providers
            .get(&route.platform)
            .is_some_and(|p| p.serves(&route.app))
    }

    /// Sends a Kafka message's notification; returns its feedback record,
    /// which must reach Kafka before the offset counts as done.
    async fn handle(&self, job: &Job) -> Feedback {
        let Some(route) = topic::route(&job.topic) else {
            warn!(topic = %job.topic, "Topic names no app and platform; message skipped.");
            return Feedback(None);
        };
        match self.deliver(&route, &job.topic, &job.payload).await {
            Delivery::Skipped { reason, detail } => {
                warn!(topic = %job.topic, offset = job.offset, %reason, %detail, "Notification skipped.");
                Feedback(None)
            }
            Delivery::Answered { feedback, .. } => feedback,
        }
    }

    /// Sends one notification in the seed's format to `route`'s provider,
    /// and reports the answer: stats, dead token, feedback. `source` (the
    /// topic, or `http`) tags the `sent` count.
    pub(crate) async fn deliver(&self, route: &Route, source: &str, payload: &[u8]) -> Delivery {
        let skipped = |reason: &'static str, detail: String| {
            self.stats.failed(route, reason);
            Delivery::Skipped { reason, detail }
        };
        let notification = match message::parse(route, payload) {
            Ok(n) => n,
            Err(e) => return skipped(e.key(), e.to_string()),
        };
        if notification
            .expiry_ms
            .is_some_and(|at| at < message::now_ms())
        {
            return skipped("push-expired", "push_expiry has passed".into());
        }
        let provider = match self.providers.get(&route.platform) {
            Some(p) if p.serves(&route.app) => p,
            _ => {
                let detail = format!(
                    "no {} credentials for app {:?}",
                    route.platform.as_str(),
                    route.app
                );
                return skipped("unknown-app", detail);
            }
        };
        self.stats.sent(route, source);
        let started = Instant::now();
        let result = self.send(provider.as_ref(), &notification.push).await;
        self.stats.latency(route, started.elapsed());
        match &result {
            Ok(_) => {
                self.stats.ack(route);
                self.prove(route);
            }
            Err(r) => {
                debug!(app = %route.app, reason = %r.reason, "Push refused.");
                self.stats.failed(route, &feedback::reason_key(&r.reason));
                if r.invalid_token
                    && let Some(tokens) = &self.tokens
                    && self.condemns(route, r)
                {
                    tokens.delete(route, &notification.push.token);
                }
            }
        }
        let feedback = self.feedback(route, &notification, &result).await;
        Delivery::Answered {
            token: notification.push.token,
            result,
            feedback,
        }
    }

    /// Records that `route`'s app had a push accepted.
    fn prove(&self, route: &Route) {
        let key = (route.platform, route.app.clone());
        let mut proven = self.proven.lock();
        if proven.get(&key) != Some(&true) {
            proven.insert(key, true);
        }
    }

    /// Whether `rejection` proves its token dead: it always does, unless
    /// the app's configuration, not yet proven by an accepted push, could
    /// have caused it. Such tokens are kept, with one warning per app.
    fn condemns(&self, route: &Route, rejection: &Rejection) -> bool {
        if !rejection.unless_misconfigured {
            return true;
        }
        let mut proven = self.proven.lock();
        match proven.get(&(route.platform, route.app.clone())) {
            Some(&accepted) => accepted,
            None => {
                proven.insert((route.platform, route.app.clone()), false);
                warn!(
                    app = %route.app,
                    platform = route.platform.as_str(),
                    reason = %rejection.reason,
                    "Token refused before any push of this app was accepted; tokens are kept \
                     until one is (check the app's environment and topic)."
                );
                false
            }
        }
    }

    /// Sends, trying again while the provider asks for it.
    async fn send(&self, provider: &dyn Provider, push: &Push) -> Result<Sent, Rejection> {
        let mut attempt = 1;
        loop {
            match provider.send(push).await {
                Err(r) if attempt < self.attempts && r.retry_after.is_some() => {
                    let wait = r
                        .retry_after
                        .filter(|w| !w.is_zero())
                        .unwrap_or_else(|| backoff(self.retry_backoff, attempt, random_unit()))
                        .min(MAX_RETRY_WAIT);
                    debug!(attempt, reason = %r.reason, ?wait, "Push will be retried.");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Queues the feedback record; the broker's acknowledgement is awaited
    /// apart, so a push's slot is free as soon as its provider answered.
    async fn feedback(
        &self,
        route: &Route,
        notification: &Notification,
        result: &Result<Sent, Rejection>,
    ) -> Feedback {
        let Some(producer) = &self.producer else {
            return Feedback(None);
        };
        let topic = topic::feedback_topic(route);
        let body = feedback::record(notification, result).to_string();
        let mut record = FutureRecord::<(), _>::to(&topic).payload(&body);
        let deadline = tokio::time::Instant::now() + FEEDBACK_TIMEOUT;
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Feedback(Some(delivery)),
                // The producer's queue is full: wait for room, as `send` does.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    warn!(%topic, error = %e, "Feedback not queued.");
                    return Feedback(None);
                }
            }
        }
    }

    /// Reports a push that panicked. Its message is skipped, not left in
    /// flight: that would hold the partition's committed offset back for
    /// good, and a poison message would panic again on every resend.
    fn panicked(&self, job: &Job, panic: &(dyn Any + Send)) {
        let msg = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        error!(topic = %job.topic, partition = job.partition, offset = job.offset, panic = %msg, "Push task panicked; message skipped.");
        if let Some(route) = topic::route(&job.topic) {
            self.stats.failed(&route, "internal-error");
        }
    }

    /// Marks the job's offset done and stores the partition's safe point.
    fn done(&self, job: &Job) {
        let safe = self
            .offsets
            .lock()
            .finish(&job.topic, job.partition, job.offset);
        if let Some(offset) = safe
            && let Err(e) = self
                .consumer
                .store_offset(&job.topic, job.partition, offset)
        {
            // After a rebalance the partition may be someone else's now.
            debug!(topic = %job.topic, partition = job.partition, error = %e, "Offset not stored.");
        }
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Lets a repeated warning through once per interval, counting the rest.
struct Throttle {
    /// The least time between two warnings let through.
    every: Duration,
    /// When a warning was last let through; `None` before the first.
    last: Option<Instant>,
    /// Warnings held back since, reported with the next one let through.
    suppressed: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when the warning may be logged at `now`, `n` being how many
    /// were held back since the last one; `None` to hold this one back.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The wait after failed try `attempt` (from 1) when the provider named
/// none: `base` doubled per try, capped at [`MAX_RETRY_WAIT`], less up to
/// half of it at random (`random` in [0, 1)), so pushes refused together
/// (a quota, an outage) do not all come back at the same instant.
fn backoff(base: Duration, attempt: u32, random: f64) -> Duration {
    let doubled = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(MAX_RETRY_WAIT);
    doubled.mul_f64(1.0 - random.clamp(0.0, 1.0) / 2.0)
}

/// A number in [0, 1), different on every call; jitter needs no more.
fn random_unit() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_consume_warnings_are_let_through_once_per_interval() {
        let every = Duration::from_secs(30);
        let mut throttle = Throttle::new(every);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(throttle.allow(at(0)), Some(0), "the first is logged");
        // An error every 50 ms, as with the brokers down: held back …
        let held = (1..600).filter(|i| throttle.allow(at(i * 50)).is_none());
        assert_eq!(held.count(), 599);
        // … until the interval has passed, which reports how many were.
        assert_eq!(throttle.allow(at(30_000)), Some(599));
        assert_eq!(throttle.allow(at(30_050)), None);
        assert_eq!(throttle.allow(at(60_000)), Some(1));
    }

    #[test]
    fn backoff_doubles_per_try_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        let ms = |d: Duration| d.as_millis();
        // No jitter: the full doubled wait; most jitter: half of it.
        assert_eq!(
            [1, 2, 3, 4].map(|a| ms(backoff(base, a, 0.0))),
            [100, 200, 400, 800]
        );
        assert_eq!(
            [1, 2, 3, 4].map(|a| ms(backoff(base, a, 0.999_999))),
            [50, 100, 200, 400]
        );
        assert_eq!(backoff(base, 40, 0.0), MAX_RETRY_WAIT);
        assert_eq!(backoff(Duration::from_secs(45), 2, 0.0), MAX_RETRY_WAIT);
        // Two pushes refused together wait differently.
        let waits: std::collections::HashSet<Duration> =
            (0..8).map(|_| backoff(base, 2, random_unit())).collect();
        assert!(waits.len() > 1, "{waits:?}");
        assert!(
            waits.iter().all(|w| (base..=2 * base).contains(w)),
            "{waits:?}"
        );
    }
}
