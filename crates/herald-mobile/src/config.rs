//! Settings of the mobile pipeline: the `[mobile]` section of Herald's
//! configuration. Every key has a default; the pipeline runs only when
//! `enabled` and at least one app has credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::apns::ApnsConfig;
use crate::provider::fcm::FcmConfig;
use crate::provider::webpush::WebPushConfig;

/// The most pushes `mobile.concurrency` may keep in flight.
pub const MAX_CONCURRENCY: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MobileConfig {
    /// Whether the pipeline runs.
    pub enabled: bool,
    /// APNs production endpoint instead of the sandbox (the seed's `--production`).
    pub production: bool,
    /// Pushes in flight at once, across providers.
    pub concurrency: usize,
    /// Tries per push when the provider says "later" (429, 5xx); the seed's 3.
    pub attempts: u32,
    /// Wait after the first try when the provider gives no `Retry-After`;
    /// doubled per try, less up to half at random.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// On shutdown, how long in-flight pushes may take to finish.
    #[serde(with = "humantime_serde")]
    pub graceful_timeout: Duration,
    /// Where notifications come from and feedback goes.
    pub kafka: KafkaConfig,
    /// APNs credentials per app (the app as named in topics).
    pub apns: BTreeMap<String, ApnsConfig>,
    /// FCM credentials per app; topics call the platform `gcm`.
    pub fcm: BTreeMap<String, FcmConfig>,
    /// Web Push (VAPID) credentials per app; topics call the platform `webpush`.
    pub webpush: BTreeMap<String, WebPushConfig>,
    /// Deleting dead tokens from the apps' tables.
    pub invalid_tokens: InvalidTokensConfig,
    /// Counts for StatsD.
    pub statsd: StatsdConfig,
}

impl Default for MobileConfig {
    fn default() -> Self {
        MobileConfig {
            enabled: false,
            production: false,
            concurrency: 256,
            attempts: 3,
            retry_backoff: Duration::from_secs(1),
            graceful_timeout: Duration::from_secs(30),
            kafka: KafkaConfig::default(),
            apns: BTreeMap::new(),
            fcm: BTreeMap::new(),
            webpush: BTreeMap::new(),
            invalid_tokens: InvalidTokensConfig::default(),
            statsd: StatsdConfig::default(),
        }
    }
}

impl MobileConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.apns.is_empty() && self.fcm.is_empty() && self.webpush.is_empty() {
            return Err(
                "mobile.enabled needs credentials in mobile.apns, mobile.fcm or mobile.webpush"
                    .into(),
            );
        }
        if self.concurrency == 0 || self.attempts == 0 {
            return Err("mobile.concurrency and mobile.attempts must be at least 1".into());
        }
        // Pushes in flight take a semaphore's permits, of which there are
        // at most this many; far more than any provider takes at once anyway.
        if self.concurrency > MAX_CONCURRENCY {
            return Err(format!(
                "mobile.concurrency must be at most {MAX_CONCURRENCY}"
            ));
        }
        // Each drives a timer, which panics on zero inside its task.
        for (key, interval) in [
            ("mobile.statsd.flush_interval", self.statsd.flush_interval),
            (
                "mobile.invalid_tokens.flush_interval",
                self.invalid_tokens.flush_interval,
            ),
            ("mobile.kafka.metadata_refresh", self.kafka.metadata_refresh),
        ] {
            if interval.is_zero() {
                return Err(format!("{key} must be longer than 0 (e.g. \"5s\")"));
            }
        }
        if self.invalid_tokens.batch == 0 {
            return Err("mobile.invalid_tokens.batch must be at least 1".into());
        }
        crate::subscription::Wanted::new(&self.kafka.topics, Vec::new())?;
        if !["earliest", "latest"].contains(&self.kafka.offset_reset.as_str()) {
            return Err("mobile.kafka.offset_reset must be \"earliest\" or \"latest\"".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Consumer group: nodes in one group share the topics' partitions.
    pub group: String,
    /// Topics to consume: comma-separated names and `^`-patterns (the
    /// seed's default is one pattern). Of those, a node consumes the ones of
    /// platforms it has credentials for.
    pub topics: String,
    /// How long the group waits for a silent member before rebalancing.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Where a new group starts: `latest` or `earliest`.
    pub offset_reset: String,
    /// How often topics are listed, to consume new ones matching `topics`.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// Produce every provider answer to `push-<app>-<platform>-feedbacks`.
    pub feedback: bool,
    /// Where feedback goes, when not to `brokers` (the seed's
    /// `feedback.kafka.brokers`).
    pub feedback_brokers: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group: "herald-mobile".into(),
            topics: "^push-[^-_]+_(apns|gcm|webpush)[_-](single|massive)".into(),
            session_timeout: Duration::from_secs(6),
            offset_reset: "latest".into(),
            metadata_refresh: Duration::from_secs(30),
            feedback: true,
            feedback_brokers: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvalidTokensConfig {
    /// `postgres://user:password@host:port/db`; empty turns clean-up off.
    pub postgres_url: String,
    /// The table per app and platform; `{app}` and `{platform}` are replaced.
    pub table: String,
    /// Tokens per `DELETE`.
    pub batch: usize,
    /// Longest a dead token waits for its `DELETE`.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for InvalidTokensConfig {
    fn default() -> Self {
        InvalidTokensConfig {
            postgres_url: String::new(),
            table: "{app}_{platform}".into(),
            batch: 1_000,
            flush_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsdConfig {
    /// `host:port` of a StatsD server; empty turns reporting off.
    pub host: String,
    /// Prepended to every metric name.
    pub prefix: String,
    /// How often aggregated counts are sent.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            host: String::new(),
            prefix: "herald.mobile".into(),
            flush_interval: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_intervals_and_batches_are_refused_naming_the_key() {
        let valid = MobileConfig {
            enabled: true,
            webpush: BTreeMap::from([(
                "game".to_owned(),
                WebPushConfig {
                    vapid_key_file: "/etc/herald/vapid.pem".into(),
                    subject: "mailto:ops@example.com".into(),
                    ca_file: None,
                    timeout: Duration::from_secs(10),
                    allow_private_endpoints: false,
                },
            )]),
            ..MobileConfig::default()
        };
        assert_eq!(valid.validate(), Ok(()));
        let refused = |change: &dyn Fn(&mut MobileConfig)| {
            let mut config = valid.clone();
            change(&mut config);
            config.validate().unwrap_err()
        };
        let err = refused(&|c| c.statsd.flush_interval = Duration::ZERO);
        assert!(err.contains("mobile.statsd.flush_interval"), "{err}");
        let err = refused(&|c| c.invalid_tokens.flush_interval = Duration::ZERO);
        assert!(
            err.contains("mobile.invalid_tokens.flush_interval"),
            "{err}"
        );
        let err = refused(&|c| c.invalid_tokens.batch = 0);
        assert!(err.contains("mobile.invalid_tokens.batch"), "{err}");
        // More than a semaphore holds would panic at start.
        let err = refused(&|c| c.concurrency = usize::MAX);
        assert!(err.contains("mobile.concurrency must be at most"), "{err}");
        let mut at_most = valid.clone();
        at_most.concurrency = MAX_CONCURRENCY;
        assert_eq!(at_most.validate(), Ok(()));
    }
}
