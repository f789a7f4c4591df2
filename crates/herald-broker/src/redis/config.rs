//! Settings of the Redis broker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_core::ChannelKey;
use serde::{Deserialize, Serialize};

/// How to reach Redis and how to use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed addresses (`redis://host:port`); one for a single server, any
    /// number of masters for a cluster.
    pub urls: Vec<String>,
    /// Whether the servers form a Redis Cluster; `None` asks the first server
    /// (`INFO cluster`).
    pub cluster: Option<bool>,
    /// Prefix of every key and pub/sub channel, so deployments can share a Redis.
    pub key_prefix: String,
    /// Password for `AUTH`, applied to every URL that carries none.
    pub password: Option<String>,
    /// Use TLS (`rediss://`), verified against the system's trust store or
    /// `tls_ca_file`.
    pub tls: bool,
    /// PEM certificate(s) of the CA that signed the Redis servers'
    /// certificates, trusted instead of the system store (private CAs).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This node's name in subscriber counts and the node registry; unique per
    /// running process. Defaults to a random id.
    pub node_id: String,
    /// Bound on every Redis round trip and connect, in milliseconds; past it
    /// the operation fails as unavailable instead of waiting.
    pub timeout_ms: u64,
    /// How often the connections are pinged to find silently dead ones.
    pub probe_interval_ms: u64,
    /// How long a channel stays subscribed after its last local subscriber
    /// left, so churn does not turn into SUBSCRIBE/UNSUBSCRIBE storms.
    pub unsubscribe_delay_ms: u64,
    /// How long a channel's offset and epoch outlive its last publish; past it
    /// the channel starts over at offset 1 with a new epoch.
    pub meta_ttl_secs: u64,
    /// How long a node's subscriber count for a channel counts without being
    /// refreshed (it is refreshed well before), so dead nodes fade out.
    pub count_ttl_secs: u64,
    /// Tasks that feed received messages to the hub, picked by channel hash
    /// so each channel stays in order.
    pub fanout_workers: usize,
    /// Which channels keep history, and how much. Code-only: set it after
    /// deserializing.
    #[serde(skip)]
    pub history: HistoryPolicy,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379".to_owned()],
            cluster: None,
            key_prefix: "herald".to_owned(),
            password: None,
            tls: false,
            tls_ca_file: None,
            node_id: random_node_id(),
            timeout_ms: 1_000,
            probe_interval_ms: 1_000,
            unsubscribe_delay_ms: 1_000,
            meta_ttl_secs: 24 * 3600,
            count_ttl_secs: 15,
            fanout_workers: 2,
            history: HistoryPolicy::default(),
        }
    }
}

impl RedisConfig {
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    pub(crate) fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms.max(10))
    }

    /// How long this node's liveness key lasts. The supervisor renews it
    /// after each probe, a probe interval plus up to four bounded steps
    /// apart (PING, the echo's publish and wait, the renewal itself): a
    /// node whose Redis answers slowly but within `timeout_ms` must not
    /// lapse, for the others would tell its users' leaves and drop its
    /// clients from the identity registry.
    pub(crate) fn liveness_ttl(&self) -> Duration {
        self.probe_interval() * 3 + self.timeout() * 4
    }

    pub(crate) fn unsubscribe_delay(&self) -> Duration {
        Duration::from_millis(self.unsubscribe_delay_ms)
    }

    pub(crate) fn count_ttl(&self) -> Duration {
        Duration::from_secs(self.count_ttl_secs.max(1))
    }

    /// Checks what Redis itself would not.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err("redis: no urls".into());
        }
        if self.key_prefix.contains(['{', '}']) {
            return Err(
                "redis: key_prefix must not contain braces (they pick the hash slot)".into(),
            );
        }
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("redis: node_id must be non-empty [A-Za-z0-9_-]".into());
        }
        Ok(())
    }
}

/// A fresh node id: 16 hex digits.
pub fn random_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// How much history one channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept at most (approximately, for large values: `MAXLEN ~`).
    pub max_len: u64,
    /// How long history outlives the channel's last publish; entries older
    /// than this are not returned either.
    pub ttl: Duration,
}

/// A channel's history limits, or `None` for no history.
type Rule = Arc<dyn Fn(&ChannelKey) -> Option<HistoryLimits> + Send + Sync>;

/// Decides per channel whether publishes are kept as history.
#[derive(Clone, Default)]
pub struct HistoryPolicy {
    /// `None` keeps no history for any channel.
    rule: Option<Rule>,
}

impl HistoryPolicy {
    /// History where `rule` says so.
    pub fn new(
        rule: impl Fn(&ChannelKey) -> Option<HistoryLimits> + Send + Sync + 'static,
    ) -> Self {
        Self {
            rule: Some(Arc::new(rule)),
        }
    }

    /// The same history for every channel.
    pub fn all(limits: HistoryLimits) -> Self {
        Self::new(move |_| Some(limits))
    }

    /// The limits for `channel`, if it keeps history.
    pub fn limits(&self, channel: &ChannelKey) -> Option<HistoryLimits> {
        self.rule
            .as_ref()
            .and_then(|rule| rule(channel))
            .filter(|l| l.max_len > 0 && !l.ttl.is_zero())
    }
}

/// The hub's retention rules (`[history]` in the server config) as a broker
/// policy, so one setting drives both.
impl From<herald_core::HistoryPolicy> for HistoryPolicy {
    fn from(core: herald_core::HistoryPolicy) -> Self {
        Self::new(move |key| {
            let r = core.retention(key);
            r.keeps().then_some(HistoryLimits {
                max_len: r.size as u64,
                ttl: r.ttl,
            })
        })
    }
}

impl fmt::Debug for HistoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.rule.is_some() {
            "HistoryPolicy(rule)"
        } else {
            "HistoryPolicy(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Retention;
    use herald_core::history::RetentionRule;

    #[test]
    fn core_retention_rules_become_limits() {
        let core = herald_core::HistoryPolicy {
            rules: vec![RetentionRule {
                pattern: "chat:*".into(),
                retention: Retention {
                    size: 50,
                    ttl: Duration::from_secs(30),
                },
            }],
        };
        let policy = HistoryPolicy::from(core);
        let app: Arc<str> = Arc::from("a");
        let chat = ChannelKey::new(&app, "chat:1").unwrap();
        let other = ChannelKey::new(&app, "news").unwrap();
        assert_eq!(
            policy.limits(&chat),
            Some(HistoryLimits {
                max_len: 50,
                ttl: Duration::from_secs(30)
            })
        );
        assert_eq!(policy.limits(&other), None);
        assert_eq!(HistoryPolicy::default().limits(&chat), None);
    }

    /// The liveness key outlives the longest gap between two renewals,
    /// with a probe interval to spare, whatever the two settings.
    #[test]
    fn the_liveness_key_outlasts_slow_probes() {
        for (interval_ms, timeout_ms) in
            [(1_000, 1_000), (1_000, 5_000), (200, 10_000), (5_000, 50)]
        {
            let c = RedisConfig {
                probe_interval_ms: interval_ms,
                timeout_ms,
                ..RedisConfig::default()
            };
            let longest_gap = c.probe_interval() + c.timeout() * 4;
            assert!(
                c.liveness_ttl() >= longest_gap + c.probe_interval(),
                "{interval_ms} ms / {timeout_ms} ms"
            );
        }
    }
}
