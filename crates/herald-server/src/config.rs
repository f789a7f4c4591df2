//! Server configuration. Every key has a default; the binary layers a TOML
//! file and `HERALD_…` environment variables on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Which channels tell their subscribers who joins and leaves.
    pub presence: PresenceConfig,
    pub poll: PollConfig,
    /// The nginx-push-stream-module URL API (docs/pushstream.md).
    pub pushstream: PushStreamConfig,
    /// PushaaS's push-api publisher API (docs/pushstream.md).
    pub pushapi: PushApiConfig,
    /// PushaaS's Tsuru service API: instances on demand (docs/pushstream.md).
    pub pushaas: PushaasConfig,
}

/// Presence events: on the channels named here, each subscriber is told
/// when a user's connection subscribes (`join`) or goes (`leave`), on every
/// node. `GET /api/v1/channels/{ch}/presence` tells who is there already.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Channel names, or patterns with one `*` (`room:*`). Empty: no events.
    pub events: Vec<String>,
}

/// The Tsuru service API of PushaaS. Each instance is a namespace of its
/// own, with its own push-api and push-stream routes and credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushaasConfig {
    /// Whether the routes are mounted.
    pub enabled: bool,
    /// Mount point: Tsuru's service endpoint is `<prefix>/api/v1`, and
    /// instance `x` is served under `<prefix>/instances/x/`.
    pub prefix: String,
    /// Tsuru's basic-auth user (pushaas's `api.basic_auth_user`).
    pub username: String,
    /// Tsuru's basic-auth password.
    pub password: String,
    /// The base URL bound apps reach Herald at, for `PUSHAAS_ENDPOINT`;
    /// empty: `http://<Host of the bind request>` (`https://` with TLS).
    pub public_url: String,
}

impl Default for PushaasConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "/pushaas".into(),
            username: "tsuru".into(),
            password: SEED_PASSWORD.into(),
            public_url: String::new(),
        }
    }
}

/// The push-stream dialect. Defaults are PushaaS's `nginx.conf`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushStreamConfig {
    /// Whether the routes are mounted.
    pub enabled: bool,
    /// Path prefix of every push-stream route (`/ps/pub`, `/ps/sub/…`).
    pub prefix: String,
    /// `push_stream_message_template`.
    pub message_template: String,
    /// `push_stream_header_template`: sent first on streams and polls.
    pub header_template: String,
    /// `push_stream_footer_template`: sent last on streams and polls.
    pub footer_template: String,
    /// Content type of `/sub` streams and `/lp` replies (nginx `default_type`).
    pub content_type: String,
    /// `push_stream_ping_message_interval`; zero sends no pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// `push_stream_ping_message_text`, rendered with id -1 on `/sub` streams.
    pub ping_message_text: String,
    /// `push_stream_subscriber_connection_ttl`; zero keeps streams open.
    #[serde(with = "humantime_serde")]
    pub subscriber_ttl: Duration,
    /// `push_stream_longpolling_connection_ttl`: longest a long-poll waits.
    #[serde(with = "humantime_serde")]
    pub longpolling_ttl: Duration,
    /// `push_stream_timeout_with_body`: answer a long-poll timeout with the
    /// -3 "Timed out" message instead of 304.
    pub timeout_with_body: bool,
    /// `push_stream_store_messages`: adds a history rule for every channel
    /// (after the `[history]` rules, which win).
    pub store_messages: bool,
    /// `push_stream_max_messages_stored_per_channel`.
    pub max_messages_stored_per_channel: usize,
    /// `push_stream_message_ttl`.
    #[serde(with = "humantime_serde")]
    pub message_ttl: Duration,
    /// `push_stream_wildcard_channel_prefix`; empty disables wildcards.
    pub wildcard_prefix: String,
    /// `push_stream_wildcard_channel_max_qtd`.
    pub wildcard_max: usize,
    /// `push_stream_events_channel_id`; empty disables the events channel.
    pub events_channel_id: String,
    /// `push_stream_allow_connections_to_events_channel`.
    pub allow_connections_to_events_channel: bool,
    /// `push_stream_websocket_allow_publish`: client text frames are
    /// published to the connection's channels.
    pub websocket_allow_publish: bool,
    /// `push_stream_channel_deleted_message_text`.
    pub channel_deleted_message_text: String,
    /// `push_stream_publisher admin`: `DELETE /pub?id=` deletes channels.
    pub admin: bool,
    /// `push_stream_channel_info_on_publish`.
    pub channel_info_on_publish: bool,
    /// `push_stream_authorized_channels_only`: subscribing needs stored messages.
    pub authorized_channels_only: bool,
    /// `push_stream_allowed_origins`: the CORS `Access-Control-Allow-Origin`;
    /// empty sends no CORS headers.
    pub allowed_origins: String,
}

impl PushStreamConfig {
    /// Whether `id` names the events channel (none when its id is empty).
    pub(crate) fn is_events_channel(&self, id: &str) -> bool {
        !self.events_channel_id.is_empty() && id == self.events_channel_id
    }
}

impl Default for PushStreamConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: "/ps".into(),
            message_template: r#"{"id":~id~,"channel":"~channel~","text":"~text~", "tag":"~tag~", "time":"~time~", "eventid":"~event-id~"}"#.into(),
            header_template: String::new(),
            footer_template: String::new(),
            content_type: "text/plain; charset=utf-8".into(),
            ping_interval: Duration::from_secs(30),
            ping_message_text: " ".into(),
            subscriber_ttl: Duration::from_secs(15 * 60),
            longpolling_ttl: Duration::from_secs(30),
            timeout_with_body: false,
            store_messages: true,
            max_messages_stored_per_channel: 20,
            message_ttl: Duration::from_secs(5 * 60),
            wildcard_prefix: "broad_".into(),
            wildcard_max: 3,
            events_channel_id: String::new(),
            allow_connections_to_events_channel: false,
            websocket_allow_publish: true,
            channel_deleted_message_text: "Channel deleted".into(),
            admin: true,
            channel_info_on_publish: true,
            authorized_channels_only: false,
            allowed_origins: "*".into(),
        }
    }
}

/// PushaaS's push-api. Defaults are push-api's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushApiConfig {
    /// Whether the routes are mounted.
    pub enabled: bool,
    /// Path prefix (`/push-api/api/v1/messages`).
    pub prefix: String,
    /// `api.enable_auth`: HTTP basic auth on every `/api` route.
    pub enable_auth: bool,
    /// `api.basic_auth_user`.
    pub basic_auth_user: String,
    /// `api.basic_auth_password`.
    pub basic_auth_password: String,
    /// `push_stream.url` reported by `/api/v1/config`; empty reports this
    /// server's push-stream prefix at the request's `Host`.
    pub push_stream_url: String,
    /// The agent name stats report (push-agent's random name).
    pub agent: String,
    /// How often every channel created through `/api/v1/channels` gets the
    /// `ping` message push-api's persistent-channels worker sends; zero never.
    #[serde(with = "humantime_serde")]
    pub persistent_ping_interval: Duration,
}

impl Default for PushApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: "/push-api".into(),
            enable_auth: true,
            basic_auth_user: "app".into(),
            basic_auth_password: SEED_PASSWORD.into(),
            push_stream_url: String::new(),
            agent: "herald".into(),
            persistent_ping_interval: Duration::from_secs(60),
        }
    }
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
    /// How long an HTTP client may keep Herald waiting: for a request's
    /// headers (and, on an idle keep-alive or HTTP/2 connection, for its
    /// next request) and for each part of a request body. Streams are not affected once
    /// open: heartbeats watch them. Zero waits forever.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long a client may leave a write waiting, taking not one byte of
    /// it, before its connection is closed: on any route, stream or
    /// request. Zero waits forever.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Web origins whose pages may use Herald from a browser: `*` for any,
    /// or origins like `https://app.example.com` (`https://*.example.com`
    /// for subdomains). Herald's own origin is always allowed; a browser
    /// request from any other is refused with 403. push-stream's routes
    /// follow `pushstream.allowed_origins` instead.
    pub allowed_origins: Vec<String>,
    /// Compress WebSocket messages for clients that offer permessage-deflate
    /// (every browser does), on every WebSocket route. Each message is
    /// compressed once, however many subscribers it has.
    pub ws_compression: bool,
    /// Compress SSE streams with gzip for clients whose `Accept-Encoding`
    /// takes it (every browser's does), on Herald's and the Push seed's SSE
    /// routes. Each message is compressed once, as for WebSocket.
    pub sse_compression: bool,
    /// Messages shorter than this, in bytes, go out uncompressed, over
    /// WebSocket and SSE: too small to gain.
    #[serde(alias = "ws_compression_min_size")]
    pub compression_min_size: usize,
    /// TLS on the listener (`https://`, `wss://`); off unless both files are set.
    pub tls: TlsConfig,
}

/// The listener's certificate. With both files set the listener speaks TLS
/// only; `Server::tls_reloader` rereads them (the binary does on SIGHUP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, Herald's own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate: PKCS#8, PKCS#1 or SEC1.
    pub key_file: Option<PathBuf>,
    /// Offer HTTP/2 to clients that ask for it (ALPN `h2`): a browser's
    /// SSE streams, polls and publishes then share one connection instead
    /// of six at most per host. WebSockets stay on HTTP/1.1.
    pub http2: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            http2: true,
        }
    }
}

impl TlsConfig {
    /// The certificate and key files, when TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            backlog: 4096,
            allow_client_publish: false,
            shutdown_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            allowed_origins: vec!["*".into()],
            ws_compression: true,
            sse_compression: true,
            compression_min_size: 256,
            tls: TlsConfig::default(),
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
    /// Connections this node holds at once: WebSocket and SSE streams, and
    /// polls and long-polls while they wait.
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
    /// Longest request head (request line and headers) read, in bytes;
    /// a longer one is answered 431 and its connection closed, so a client
    /// cannot make the server buffer without bound.
    pub max_header_bytes: usize,
    /// Commands one native WebSocket client may send per second, on
    /// average (0, the default: no limit); beyond it a command is refused
    /// with `rate_limited`, so one client cannot take the node's time from
    /// the rest.
    pub ws_commands_per_second: u32,
    /// How many commands may come at once before that rate applies
    /// (0: one second's worth).
    pub ws_commands_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_message_size: 64 * 1024,
            max_channels_per_connection: 128,
            max_batch: 1000,
            outbox_bytes: 1024 * 1024,
            ws_read_buffer: 2048,
            max_header_bytes: 64 * 1024,
            ws_commands_per_second: 0,
            ws_commands_burst: 0,
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
    /// Signs the receiver keys SSE connections ack with (`POST /api/v1/ack`).
    /// Give every node of a cluster the same one so that any node accepts an
    /// ack; unset, each process draws its own and accepts only its keys.
    pub receiver_secret: Option<String>,
    /// Keys publishers present (`Authorization: Bearer <key>` or
    /// `X-Api-Key`) to publish, send, delete channels or mint Pushca
    /// connection tokens. Empty leaves those routes open, as the seeds do.
    pub api_keys: Vec<String>,
    /// Channels (names, or patterns with one `*`) that only a token whose
    /// `channels` claim grants them may read, or a WebSocket client publish
    /// to. Empty leaves every channel open, as the seeds do.
    pub protected_channels: Vec<String>,
    /// How long a revocation (`POST /api/v1/revoke`) is kept. Tokens it
    /// revoked that have not expired by then work again: issue tokens that
    /// expire sooner.
    #[serde(with = "humantime_serde")]
    pub revocation_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret: None,
            algorithm: jsonwebtoken::Algorithm::HS256,
            public_key_path: None,
            leeway: Duration::ZERO,
            receiver_secret: None,
            api_keys: Vec::new(),
            protected_channels: Vec::new(),
            revocation_ttl: Duration::from_secs(24 * 3600),
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
    /// Unset: `ws://<Host header>/` (`wss://` with TLS).
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
    /// How long a Pushca WebSocket may stay open before Herald closes it
    /// (4200, reconnect). Zero, the default, never does: Pushca servers do
    /// not recycle connections, and its protocol has no reconnect hint.
    #[serde(with = "humantime_serde")]
    pub connection_lifetime: Duration,
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
            connection_lifetime: Duration::ZERO,
        }
    }
}

/// First path segments the native API and the Push seed use.
const RESERVED_SEGMENTS: [&str; 8] = [
    "api", "ws", "sse", "poll", "messages", "health", "metrics", "",
];

/// A dialect prefix: `/name[/more]`, no trailing slash, clear of native routes.
fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    let first = prefix
        .strip_prefix('/')
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match first {
        Some(first) if !prefix.ends_with('/') && !RESERVED_SEGMENTS.contains(&first) => Ok(()),
        _ => Err(ConfigError(format!(
            "{key} {prefix:?} must start with '/', not end with '/', and not start with a native route (/api, /ws, /sse, /poll, /messages, /health, /metrics)"
        ))),
    }
}

/// push-api's and pushaas's default password, as the seeds ship it.
pub(crate) const SEED_PASSWORD: &str = "abc123";

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The history policy channels are created with: `[history]`, then, when
    /// push-stream stores messages, a rule keeping every other channel's
    /// last `max_messages_stored_per_channel` for `message_ttl`.
    pub fn history_policy(&self) -> herald_core::HistoryPolicy {
        let mut policy = self.history.clone();
        let ps = &self.pushstream;
        if ps.enabled && ps.store_messages {
            policy.rules.push(herald_core::history::RetentionRule {
                pattern: "*".into(),
                retention: herald_core::Retention {
                    size: ps.max_messages_stored_per_channel,
                    ttl: ps.message_ttl,
                },
            });
        }
        policy
    }

    /// Checks relations between keys that types cannot express, and that
    /// the TLS files load.
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
        crate::cors::Origins::parse(&self.server.allowed_origins).map_err(ConfigError)?;
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
        // An empty key would let an empty `Bearer` through; short ones are guessable.
        let a = &self.auth;
        if a.api_keys.iter().any(|k| k.trim().len() < 16) {
            return Err(ConfigError(
                "auth.api_keys must be at least 16 characters each".into(),
            ));
        }
        // Each signs or keys something a client must not forge: an empty or
        // short one makes that easy.
        for (key, secret) in [
            ("auth.receiver_secret", &a.receiver_secret),
            ("auth.secret", &a.secret),
            ("pushca.secret_key", &self.pushca.secret_key),
        ] {
            if secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err(ConfigError(format!("{key} must be at least 16 characters")));
            }
        }
        for (key, patterns) in [
            ("auth.protected_channels", &a.protected_channels),
            ("presence.events", &self.presence.events),
        ] {
            crate::access::Patterns::new(patterns.clone())
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
            // A pattern no channel name can match protects nothing.
            if let Some(bad) = patterns
                .iter()
                .find(|p| herald_core::channel::validate_name(&p.replace('*', "x")).is_err())
            {
                return Err(ConfigError(format!(
                    "{key}: {bad:?} can match no channel name"
                )));
            }
        }
        if !a.protected_channels.is_empty() && a.secret.is_none() && a.public_key_path.is_none() {
            return Err(ConfigError(
                "auth.protected_channels needs auth.secret or auth.public_key_path to verify the tokens that grant them".into(),
            ));
        }
        for rule in &self.history.rules {
            if rule.pattern.matches('*').count() > 1 {
                return Err(ConfigError(format!(
                    "history pattern {:?} has more than one '*'",
                    rule.pattern
                )));
            }
        }
        let ps = &self.pushstream;
        let pa = &self.pushapi;
        let mounted: Vec<(&str, &str)> = [
            (ps.enabled, "pushstream.prefix", &ps.prefix),
            (pa.enabled, "pushapi.prefix", &pa.prefix),
            (self.pushaas.enabled, "pushaas.prefix", &self.pushaas.prefix),
        ]
        .into_iter()
        .filter(|(enabled, ..)| *enabled)
        .map(|(_, key, prefix)| (key, prefix.as_str()))
        .collect();
        for (i, &(key, prefix)) in mounted.iter().enumerate() {
            check_prefix(key, prefix)?;
            // One mount inside another's path would take its routes.
            let inside = |outer: &str| prefix == outer || prefix.starts_with(&format!("{outer}/"));
            if let Some((other, _)) = mounted[..i]
                .iter()
                .find(|(_, other)| inside(other) || other.starts_with(&format!("{prefix}/")))
            {
                return Err(ConfigError(format!(
                    "{other} and {key} must differ, neither inside the other"
                )));
            }
        }
        // An empty password lets anyone in who sends an Authorization header.
        if pa.enabled && pa.enable_auth && pa.basic_auth_password.is_empty() {
            return Err(ConfigError(
                "pushapi.basic_auth_password is empty: set one, or pushapi.enable_auth = false"
                    .into(),
            ));
        }
        if self.pushaas.enabled && self.pushaas.password.is_empty() {
            return Err(ConfigError(
                "pushaas.password is empty: Tsuru's API would be open to anyone".into(),
            ));
        }
        // With publisher keys the operator locked publishing; push-api and
        // PushaaS publish with their own credentials, which must not be the
        // seeds' well-known defaults then.
        if !a.api_keys.is_empty() {
            if pa.enabled && (!pa.enable_auth || pa.basic_auth_password == SEED_PASSWORD) {
                return Err(ConfigError(
                    "auth.api_keys is set, but push-api publishes with the seed's default \
                     credentials: set pushapi.basic_auth_password (with pushapi.enable_auth) \
                     or pushapi.enabled = false"
                        .into(),
                ));
            }
            if self.pushaas.enabled && self.pushaas.password == SEED_PASSWORD {
                return Err(ConfigError(
                    "auth.api_keys is set, but PushaaS's Tsuru API has the seed's default \
                     password: set pushaas.password"
                        .into(),
                ));
            }
        }
        if ps.enabled && ps.store_messages && ps.max_messages_stored_per_channel == 0 {
            return Err(ConfigError(
                "pushstream.max_messages_stored_per_channel must be positive".into(),
            ));
        }
        if l.ws_read_buffer < 512 {
            return Err(ConfigError(
                "limits.ws_read_buffer must be at least 512".into(),
            ));
        }
        if l.max_header_bytes < 1024 {
            return Err(ConfigError(
                "limits.max_header_bytes must be at least 1024".into(),
            ));
        }
        let tls = &self.server.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError(
                "server.tls.cert_file and server.tls.key_file must be set together".into(),
            ));
        }
        if let Some((cert, key)) = tls.files() {
            crate::tls::server_config(cert, key, tls.http2)
                .map_err(|e| ConfigError(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount that cannot be routed is refused at start, not a panic of
    /// the router's.
    #[test]
    fn mounts_must_be_prefixes_apart() {
        let mut c = Config::default();
        c.pushaas.enabled = true;
        assert!(c.validate().is_ok());
        for (prefix, why) in [
            ("pushaas", "must start with '/'"),
            ("", "must start with '/'"),
            ("/pushaas/", "not end with '/'"),
            ("/ps", "neither inside the other"),
            ("/ps/tsuru", "neither inside the other"),
            ("/push-api", "neither inside the other"),
            ("/api/pushaas", "native route"),
        ] {
            c.pushaas.prefix = prefix.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{prefix:?}: {e}");
        }
        c.pushaas.prefix = "/push".into();
        assert!(
            c.validate().is_ok(),
            "a prefix of another's name, not of its path"
        );
        c.pushstream.prefix = "/push/ps".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn secrets_are_not_short() {
        let mut c = Config::default();
        for short in ["", "secret"] {
            c.auth.secret = Some(short.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("auth.secret"), "{e}");
            c.auth.secret = None;
            c.pushca.secret_key = Some(short.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("pushca.secret_key"), "{e}");
            c.pushca.secret_key = None;
        }
        c.auth.secret = Some("sixteen-chars-ok".into());
        c.pushca.secret_key = Some("sixteen-chars-ok".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_pattern_no_channel_name_matches_is_refused() {
        let mut c = Config::default();
        c.auth.secret = Some("sixteen-chars-ok".into());
        for good in ["private-*", "user:alice", "*"] {
            c.auth.protected_channels = vec![good.into()];
            assert!(c.validate().is_ok(), "{good}");
        }
        for bad in ["private/*", "a,b", "two**", ""] {
            c.auth.protected_channels = vec![bad.into()];
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("auth.protected_channels"), "{bad:?}: {e}");
        }
        c.auth.protected_channels.clear();
        c.presence.events = vec!["room /*".into()];
        assert!(c.validate().is_err());
    }
}
