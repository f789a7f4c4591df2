//! Server configuration. Every key has a default; the binary layers a TOML
//! file and `HERALD_…` environment variables on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the server needs to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub connection: ConnectionConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub pushca: PushcaConfig,
    /// Which channels keep history for resume, by name pattern.
    pub history: herald_core::HistoryPolicy,
    pub poll: PollConfig,
}

/// Polling and long-polling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// Longest a long-poll waits for a message before answering empty.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(30),
        }
    }
}

/// The listener and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Pending connections the kernel queues before `accept`.
    pub backlog: u32,
    /// Whether WebSocket clients may publish with the `publish` command.
    pub allow_client_publish: bool,
    /// How long shutdown waits for connections to close after the reconnect hint.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            backlog: 4096,
            allow_client_publish: false,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Timing of every streaming connection, on every transport. The defaults are
/// the Push seed's (`push.reconnect.dither.*`, `push.client.close.grace…`,
/// `push.heartbeat.interval…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Interval of server heartbeats (WS pings, SSE heartbeat events).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Shortest connection lifetime; each connection draws uniformly from
    /// `[lifetime_min, lifetime_max)`. Zero for both disables the lifetime.
    #[serde(with = "humantime_serde")]
    pub lifetime_min: Duration,
    /// Longest connection lifetime.
    #[serde(with = "humantime_serde")]
    pub lifetime_max: Duration,
    /// Gap between the reconnect hint and the forced close.
    #[serde(with = "humantime_serde")]
    pub close_grace: Duration,
    /// SSE `retry:` hint sent to native EventSource clients.
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            lifetime_min: Duration::from_secs(120),
            lifetime_max: Duration::from_secs(180),
            close_grace: Duration::from_secs(4),
            sse_retry: Duration::from_secs(3),
        }
    }
}

/// Bounds that protect the server from clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Streaming connections (WebSocket + SSE) this node accepts.
    pub max_connections: usize,
    /// Largest published payload or WebSocket message, in bytes.
    pub max_message_size: usize,
    /// Channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Messages in one batch publish.
    pub max_batch: usize,
    /// Bytes queued for one connection before it is dropped as a slow consumer.
    pub outbox_bytes: usize,
    /// WebSocket read buffer per connection, in bytes.
    pub ws_read_buffer: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_message_size: 64 * 1024,
            max_channels_per_connection: 128,
            max_batch: 1000,
            outbox_bytes: 1024 * 1024,
            ws_read_buffer: 4096,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `herald_server=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Which broker links nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory` (one node, the default) or `redis` (many nodes as one).
    pub kind: BrokerKind,
    /// Used when `kind = "redis"`: URLs, cluster mode, key prefix, password, TLS.
    pub redis: herald_broker::RedisConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    #[default]
    Memory,
    Redis,
}

/// Verification of native connection tokens (`GET /ws?token=<jwt>`). With
/// neither `secret` nor `public_key_path`, tokens are refused and
/// connections are anonymous.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256/HS384/HS512 tokens.
    pub secret: Option<String>,
    /// The only algorithm accepted, e.g. `HS256`, `RS256`, `ES256`; tokens
    /// naming another are refused (no algorithm confusion).
    pub algorithm: jsonwebtoken::Algorithm,
    /// PEM public key for RS*/PS*/ES*/EdDSA tokens.
    pub public_key_path: Option<PathBuf>,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret: None,
            algorithm: jsonwebtoken::Algorithm::HS256,
            public_key_path: None,
            leeway: Duration::ZERO,
        }
    }
}

/// Acknowledged targeted sends (`POST /api/v1/send` with `ack`, and
/// Pushca's with-acknowledge sends). See docs/targeting.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// How long one attempt waits for the receiver's ack (native default;
    /// requests may ask for another up to `max_ack_timeout`).
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Longest per-attempt timeout a native request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ack_timeout: Duration,
    /// Delivery attempts per acknowledged send; 1 disables retries.
    pub ack_attempts: u32,
    /// Pause before the first retry; doubles for each later one.
    #[serde(with = "humantime_serde")]
    pub ack_backoff: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_millis(1000),
            max_ack_timeout: Duration::from_secs(60),
            ack_attempts: 1,
            ack_backoff: Duration::from_millis(100),
        }
    }
}

/// The Pushca-compatible API (docs/targeting.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushcaConfig {
    /// How long a with-acknowledge send waits per attempt
    /// (`PUSHCA_ACKNOWLEDGE_TIMEOUT_MS`); attempts and backoff are
    /// `delivery.ack_attempts` and `delivery.ack_backoff`.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// HS256 secret signing connection tokens (`pushca.coordinator.secret-key`).
    /// Unset: a random one per process, so tokens die with the process and
    /// are not accepted by other nodes.
    pub secret_key: Option<String>,
    /// WebSocket base URL handed to clients, e.g. `ws://push.example.com/`.
    /// Unset: `ws://<Host header>/`.
    pub external_advertised_url: Option<String>,
    /// WebSocket base URL for clients inside the deployment. Unset: as external.
    pub internal_advertised_url: Option<String>,
    /// WebSocket base URL for browsers. Unset: as external.
    pub browser_advertised_url: Option<String>,
    /// Lifetime of a connection token.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// This node's `pusherInstanceId`. Unset: a random UUID per process.
    pub pusher_instance_id: Option<String>,
    /// Pushca REST requests per second this node accepts before answering
    /// 429; 0 disables the limit.
    pub rate_limit: u32,
    /// Requests allowed in a burst above `rate_limit` (0: one second's worth).
    pub rate_burst: u32,
    /// Connection tokens one `open-connection-pool` request may ask for.
    pub max_pool_size: usize,
}

impl Default for PushcaConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_millis(1000),
            secret_key: None,
            external_advertised_url: None,
            internal_advertised_url: None,
            browser_advertised_url: None,
            token_ttl: Duration::from_secs(30 * 60),
            pusher_instance_id: None,
            rate_limit: 0,
            rate_burst: 0,
            max_pool_size: 100,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Checks relations between keys that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.connection;
        if c.lifetime_min > c.lifetime_max {
            return Err(ConfigError(
                "connection.lifetime_min is greater than connection.lifetime_max".into(),
            ));
        }
        if !c.lifetime_max.is_zero() && c.close_grace >= c.lifetime_min {
            return Err(ConfigError(
                "connection.close_grace must be shorter than connection.lifetime_min".into(),
            ));
        }
        if c.heartbeat.is_zero() {
            return Err(ConfigError("connection.heartbeat must be positive".into()));
        }
        let l = &self.limits;
        if l.max_message_size == 0 || l.max_channels_per_connection == 0 || l.max_batch == 0 {
            return Err(ConfigError("limits must be positive".into()));
        }
        let d = &self.delivery;
        if d.ack_timeout.is_zero() || self.pushca.ack_timeout.is_zero() || d.ack_attempts == 0 {
            return Err(ConfigError(
                "delivery.ack_timeout, delivery.ack_attempts and pushca.ack_timeout must be positive"
                    .into(),
            ));
        }
        if self.pushca.token_ttl.is_zero() {
            return Err(ConfigError("pushca.token_ttl must be positive".into()));
        }
        for rule in &self.history.rules {
            if rule.pattern.matches('*').count() > 1 {
                return Err(ConfigError(format!(
                    "history pattern {:?} has more than one '*'",
                    rule.pattern
                )));
            }
        }
        if l.ws_read_buffer < 512 {
            return Err(ConfigError(
                "limits.ws_read_buffer must be at least 512".into(),
            ));
        }
        Ok(())
    }
}
