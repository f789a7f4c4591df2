//! The nginx-push-stream-module URL API, under `[pushstream] prefix`:
//! `/pub`, `/sub/…`, `/ev/…`, `/lp/…`, `/jsonp/…`, `/ws/…`,
//! `/channels-stats`. See docs/pushstream.md.
//!
//! - [`publisher`]: `/pub` publish, channel info, delete.
//! - [`stream`]: `/sub` (streaming) and `/ev` (EventSource) bodies.
//! - [`longpoll`]: `/lp` long-polling and polling, `/jsonp`.
//! - [`websocket`]: the `/ws` route.
//! - [`stats`]: the `/channels-stats` route.
//! - [`request`], [`marker`], [`template`], [`format`](mod@format): the shared rules.

pub(crate) mod events;
pub(crate) mod format;
pub(crate) mod longpoll;
pub(crate) mod marker;
pub(crate) mod publisher;
pub(crate) mod request;
pub(crate) mod stats;
pub(crate) mod stream;
pub(crate) mod template;
pub(crate) mod websocket;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::any;
use bytes::Bytes;
use herald_core::{BrokerError, ChannelKey, ChannelNameError, Publication};
use tokio::sync::mpsc;

use self::format::{PING_ID, Render};
use self::template::{Fields, Template, lines};
use crate::config::{ConnectionConfig, PushStreamConfig};
use crate::lifetime::Clock;
use crate::state::AppState;

pub(crate) const EXPLAIN: &str = "x-nginx-pushstream-explain";
const ALLOWED_HEADERS: &str =
    "If-Modified-Since,If-None-Match,Etag,Event-Id,Event-Type,Last-Event-Id";

/// Everything push-stream handlers share; cheap to clone.
#[derive(Clone)]
pub(crate) struct PsState(Arc<Inner>);

pub(crate) struct Inner {
    /// The server's shared state.
    pub(crate) app: AppState,
    /// The app namespace this mount's channels live in: `default`, or a
    /// PushaaS instance's own.
    pub(crate) namespace: Arc<str>,
    /// `[pushstream]`.
    pub(crate) cfg: PushStreamConfig,
    /// Templates shared by every connection's format.
    pub(crate) render: Arc<Render>,
    /// When the dialect started, for `uptime`.
    pub(crate) started: Instant,
    /// Reported by `/channels-stats`.
    pub(crate) hostname: String,
    /// Fixed chunks, rendered once.
    pub(crate) chunks: Chunks,
    /// The queue of the events channel's publisher, started by the first
    /// event (see [`events::emit`]).
    pub(crate) events: OnceLock<mpsc::Sender<(&'static str, String)>>,
}

/// The fixed bytes of streams, rendered from the configuration once.
pub(crate) struct Chunks {
    /// `header_template` as is (`/sub`, `/lp`).
    pub(crate) header: Bytes,
    /// `footer_template` as is.
    pub(crate) footer: Bytes,
    /// The EventSource header: `: \n`, or the header template as comments.
    pub(crate) ev_header: Bytes,
    /// The footer template as comments.
    pub(crate) ev_footer: Bytes,
    /// The streaming ping: the ping text through the template, id -1.
    pub(crate) ping: Bytes,
}

impl std::ops::Deref for PsState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn comments(text: &str) -> Bytes {
    let mut out = String::new();
    for line in lines(text) {
        out.push_str(": ");
        out.push_str(line);
        out.push('\n');
    }
    Bytes::from(out)
}

impl PsState {
    pub(crate) fn new(app: AppState, namespace: Arc<str>) -> Self {
        let cfg = app.config.pushstream.clone();
        let render = Arc::new(Render::new(&cfg));
        let ping = Template::parse(&cfg.message_template).to_bytes(&Fields {
            text: &cfg.ping_message_text,
            ..Fields::control(PING_ID, "")
        });
        let chunks = Chunks {
            header: Bytes::from(cfg.header_template.clone()),
            footer: Bytes::from(cfg.footer_template.clone()),
            ev_header: if cfg.header_template.is_empty() {
                Bytes::from_static(b": \n")
            } else {
                comments(&cfg.header_template)
            },
            ev_footer: comments(&cfg.footer_template),
            ping: Bytes::from(ping),
        };
        Self(Arc::new(Inner {
            app,
            namespace,
            cfg,
            render,
            started: Instant::now(),
            hostname: hostname(),
            chunks,
            events: OnceLock::new(),
        }))
    }

    /// A channel of this mount's namespace.
    pub(crate) fn channel(&self, name: &str) -> Result<ChannelKey, ChannelNameError> {
        ChannelKey::new(&self.namespace, name)
    }

    pub(crate) fn is_events_channel(&self, id: &str) -> bool {
        self.cfg.is_events_channel(id)
    }

    pub(crate) fn is_wildcard(&self, id: &str) -> bool {
        !self.cfg.wildcard_prefix.is_empty() && id.starts_with(&self.cfg.wildcard_prefix)
    }

    /// Adds the CORS headers when `allowed_origins` is set.
    pub(crate) fn cors(&self, h: &mut HeaderMap, methods: &'static str) {
        if self.cfg.allowed_origins.is_empty() {
            return;
        }
        if let Ok(origin) = HeaderValue::from_str(&self.cfg.allowed_origins) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
    }

    /// A push-stream publication of `text`: the raw body as a JSON string.
    /// Its publish time, which its markers derive from, is assigned with
    /// its offset (see [`marker`]).
    pub(crate) fn publication(
        text: &str,
        event_id: Option<&str>,
        event_type: Option<&str>,
    ) -> Publication {
        let data = serde_json::to_vec(text).unwrap_or_default();
        let mut p = Publication::new(Bytes::from(data));
        p.id = Arc::from(event_id.unwrap_or(""));
        p.event = event_type.map(Arc::from);
        p
    }

    /// Publishes `publication` ([`PsState::publication`]) to `key`, telling
    /// the events channel when the publish creates the channel. Publishing
    /// to several channels passes clones, which share the bytes.
    pub(crate) async fn publish(
        &self,
        key: &ChannelKey,
        publication: Publication,
    ) -> Result<(), BrokerError> {
        let creating = events::creating(self, key).await;
        let created = events::is_new(self, key).await;
        self.app.engine.publish(key, publication).await?;
        drop(creating);
        if created {
            events::emit(self, events::CHANNEL_CREATED, key.name());
        }
        Ok(())
    }
}

/// The host name `/channels-stats` reports.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Headers every push-stream reply carries (nginx `expires epoch`).
pub(crate) fn no_cache(h: &mut HeaderMap) {
    h.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:01 GMT"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// A header-only reply, with `X-Nginx-PushStream-Explain` when given.
pub(crate) fn header_only(status: StatusCode, explain: Option<&str>) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    let h = res.headers_mut();
    no_cache(h);
    if let Some(text) = explain.and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(HeaderName::from_static(EXPLAIN), text);
    }
    res
}

/// `405` with `Allow`.
pub(crate) fn not_allowed(allow: &'static str) -> Response {
    let mut res = header_only(StatusCode::METHOD_NOT_ALLOWED, None);
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

/// Connection timing for push-stream streams and WebSockets: pings every
/// `ping_interval` (never when zero), closed after exactly `subscriber_ttl`.
pub(crate) fn timing(cfg: &PushStreamConfig) -> ConnectionConfig {
    const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);
    ConnectionConfig {
        heartbeat: if cfg.ping_interval.is_zero() {
            NEVER
        } else {
            cfg.ping_interval
        },
        lifetime_min: cfg.subscriber_ttl,
        lifetime_max: cfg.subscriber_ttl,
        close_grace: Duration::ZERO,
        sse_retry: Duration::ZERO,
    }
}

/// A started clock with [`timing`].
pub(crate) fn clock(cfg: &PushStreamConfig) -> Clock {
    Clock::start(&timing(cfg))
}

/// The channels part of a subscriber path: `/sub/a/b` → `a/b`.
pub(crate) fn channels_path(uri: &Uri) -> &str {
    let path = uri.path().trim_start_matches('/');
    path.split_once('/').map_or("", |(_, rest)| rest)
}

/// The routes' OpenAPI entries, relative to the prefix.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        publisher::doc::publish,
        publisher::doc::channel_info,
        publisher::doc::delete,
        stream::sub,
        stream::ev,
        longpoll::lp,
        longpoll::jsonp,
        websocket::ws,
        stats::handle,
    ),
    tags((name = "pushstream", description = "The nginx push-stream module's URL API \
        (docs/pushstream.md), under `[pushstream] prefix`: shown at the default `/ps`. \
        Mounted unless `[pushstream] enabled = false`. `/pub`, `/sub`, `/ev`, `/lp` and \
        `/jsonp` also answer `OPTIONS` with the CORS headers of `allowed_origins` (`/ws` and \
        `/channels-stats` answer it 405, as the module's do); refusals are header-only, with \
        the reason in `X-Nginx-PushStream-Explain`."))
)]
pub(crate) struct ApiDoc;

/// OpenAPI descriptions the routes share.
const DOC_IDS: &str = "Channel ids separated by `/`";
const DOC_CHANNELS: &str = "Channel ids separated by `/`, each with an optional `.bN` \
    suffix: replay its last N stored messages";

/// The headers a subscriber resumes with, for the OpenAPI entries of every
/// subscriber route (the handlers read them from the `HeaderMap`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct ResumeHeaders {
    /// Resume after the message with this `Event-Id` (or `eventid`)
    #[param(rename = "Last-Event-Id")]
    last_event_id: Option<String>,
    /// With `If-None-Match`: resume after the message with this time and tag
    /// (or `time` and `tag`)
    #[param(rename = "If-Modified-Since")]
    if_modified_since: Option<String>,
    /// The tag for `If-Modified-Since`; `W/` is stripped
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}
/// A refused subscription, for the OpenAPI entries of the subscriber routes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refused {
    #[response(status = 403, description = DOC_REFUSED,
        headers(("X-Nginx-PushStream-Explain" = String, description = "Why")))]
    Refused,
}

const DOC_REFUSED: &str = "`ALL` or `*`, wildcard channels alone or over `wildcard_max`, \
    the events channel, a channel without messages under `authorized_channels_only`, or \
    more than `limits.max_channels_per_connection` channels";
const DOC_BAD_CHANNEL: &str = "No channel, or a channel id too long or not a valid Herald name";

/// The routes, to nest under the prefix.
pub(crate) fn router(app: &AppState, namespace: Arc<str>) -> Router<AppState> {
    let state = PsState::new(app.clone(), namespace);
    let mut r = Router::new()
        .route("/pub", any(publisher::handle))
        .route("/channels-stats", any(stats::handle));
    for (mode, handler) in [
        ("sub", any(stream::sub)),
        ("ev", any(stream::ev)),
        ("lp", any(longpoll::lp)),
        ("jsonp", any(longpoll::lp)),
        ("ws", any(websocket::ws)),
    ] {
        r = r
            .route(&format!("/{mode}"), handler.clone())
            .route(&format!("/{mode}/"), handler.clone())
            .route(&format!("/{mode}/{{*channels}}"), handler);
    }
    r.with_state(state)
}
