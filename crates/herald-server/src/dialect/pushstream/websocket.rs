//! `/ws/…`: the header template, one text frame per message (the
//! template), the footer template before a normal close, WS pings at
//! `ping_interval`, client text frames published to the connection's
//! channels when `websocket_allow_publish` is on. Refusals after the
//! upgrade close with 1008 and `{"http_status": N, "explain":"…"}`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use herald_core::ChannelKey;
use parking_lot::Mutex;

use super::events::Presence;
use super::format::{Kind, PsFormat};
use super::request::{self, Args, ControlArgs, Refusal};
use super::{PsState, channels_path, header_only};
use crate::config::ConnectionConfig;
use crate::session::Session;
use crate::transport::ws::{self, Reply, WsDialect, close};

const NO_MANDATORY_HEADERS: &str = "Don't have at least one of the mandatory headers: Connection, Upgrade, Sec-WebSocket-Key and Sec-WebSocket-Version";
const WRONG_VERSION: &str = "Version not supported. Supported versions: 13";
/// The module's policy-violation close.
const POLICY: u16 = 1008;

/// `GET /ws/ch1.b3/ch2`: a WebSocket (version 13).
#[utoipa::path(get, path = "/ws/{channels}", tag = "pushstream",
    operation_id = "pushstream_ws", summary = "WebSocket subscription",
    description = "The header template as a first frame, one text frame per message (the \
        template), WS pings every `ping_interval`, the footer template as a frame then a 1000 \
        close at `subscriber_ttl` or when every channel was deleted. \
        With `websocket_allow_publish` (default on), a client text frame is published to the \
        connection's channels, when the handshake presents a publisher key (if keys are set; \
        on a PushaaS instance, its credentials); otherwise it is ignored. Refused \
        subscriptions upgrade, then close with 1008 and \
        `{\"http_status\": N, \"explain\": \"…\"}`.",
    params(("channels" = String, Path, description = super::DOC_CHANNELS), ControlArgs,
        super::ResumeHeaders),
    responses((status = 101, description = "WebSocket: the push-stream frames"),
        (status = 400, description = "Missing upgrade headers, or a version other than 13",
            headers(("X-Nginx-PushStream-Explain" = String, description = "Why")))))]
pub(crate) async fn ws(
    State(ps): State<PsState>,
    Args(args): Args<ControlArgs>,
    req: Request,
) -> Response {
    if req.method() != Method::GET {
        return super::not_allowed("GET");
    }
    let h = req.headers();
    if [
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
    ]
    .iter()
    .any(|name| !h.contains_key(*name))
    {
        return header_only(StatusCode::BAD_REQUEST, Some(NO_MANDATORY_HEADERS));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut res = header_only(StatusCode::BAD_REQUEST, Some(WRONG_VERSION));
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return res;
    }
    let may_publish = ps.cfg.websocket_allow_publish
        && match req.extensions().get::<MayPublish>() {
            Some(MayPublish(allowed)) => *allowed,
            // As `/pub`: with publisher keys, only a handshake that presents one.
            None => {
                ps.app.config.auth.api_keys.is_empty()
                    || crate::publisher_auth::presents_key(&ps.app, req.headers())
            }
        };
    let (format, deleted) = PsFormat::new(Kind::Text, ps.render.clone());
    let mut session = Session::new(ps.app.clone(), format);
    let mut presence = Presence::new(&ps);
    let subscribed =
        match request::subscription(&ps, channels_path(req.uri()), req.headers(), &args) {
            Ok(sub) => request::subscribe(&ps, &mut session, &sub, &mut presence).await,
            Err(r) => Err(r),
        };
    let dialect = PushStreamWs {
        ps: ps.clone(),
        may_publish,
        refusal: subscribed.err(),
        refused: false,
        deleted,
        presence,
    };
    ws::upgrade(&ps.app, req, session, dialect)
        .unwrap_or_else(|e| header_only(e.status, Some(&e.message)))
}

/// The close reason the module refuses a WebSocket with,
/// `{"http_status": N, "explain":"…"}`, the explanation escaped and cut so
/// that the whole stays JSON within a close frame.
fn refusal_reason(refusal: Refusal) -> String {
    let head = format!(
        "{{\"http_status\": {}, \"explain\":",
        refusal.status.as_u16()
    );
    let mut explain = refusal.explain;
    // Bounded: every pass but the last shortens the explanation.
    loop {
        let reason = format!("{head}{}}}", serde_json::Value::from(explain.as_str()));
        if ws::fit_close_reason(&reason).len() == reason.len() || explain.pop().is_none() {
            return reason;
        }
    }
}

/// Whether a push-stream WebSocket's handshake may publish, when the mount
/// decides it (a PushaaS instance: with its credentials); else the server's
/// publisher keys do.
#[derive(Clone, Copy)]
pub(crate) struct MayPublish(pub(crate) bool);

/// One push-stream WebSocket.
struct PushStreamWs {
    /// The mount the connection belongs to: its chunks, timing and publish rules.
    ps: PsState,
    /// Whether the client's text frames are published: the mount allows it
    /// and the handshake may (see [`MayPublish`]).
    may_publish: bool,
    /// When set, the connection only closes with this refusal.
    refusal: Option<Refusal>,
    /// Whether it was refused (no templates then).
    refused: bool,
    /// Channels deleted under this connection, filled by its format.
    deleted: Arc<Mutex<Vec<ChannelKey>>>,
    /// Announces the unsubscriptions when the connection ends.
    presence: Presence,
}

impl WsDialect for PushStreamWs {
    fn greeting(&mut self) -> Reply {
        if let Some(r) = self.refusal.take() {
            self.refused = true;
            return Reply::close(POLICY, refusal_reason(r));
        }
        let header = &self.ps.chunks.header;
        if header.is_empty() {
            Reply::default()
        } else {
            Reply::frame(header.clone())
        }
    }

    fn heartbeat(&mut self) -> Result<Option<Bytes>, (u16, &'static str)> {
        // A WS Ping frame; the module does not require pongs.
        Ok(None)
    }

    fn reconnect_hint(&self) -> Option<Bytes> {
        None
    }

    fn lifetime_close(&self) -> (u16, &'static str) {
        (1000, "")
    }

    /// The footer template, as the module finalizes a WebSocket: at the
    /// TTL, when every channel was deleted and at shutdown; a refused one
    /// got no header either.
    fn farewell(&mut self, code: u16) -> Option<Bytes> {
        let footer = &self.ps.chunks.footer;
        (!self.refused && !footer.is_empty() && (code == 1000 || code == close::RESTART))
            .then(|| footer.clone())
    }

    fn timing(&self) -> Option<ConnectionConfig> {
        Some(super::timing(&self.ps.cfg))
    }

    /// A deleted channel's last frame must pass the task, which then unsubscribes.
    fn direct_writes(&self) -> bool {
        false
    }

    async fn after_batch(&mut self, session: &mut Session) -> Option<(u16, Cow<'static, str>)> {
        let gone: Vec<ChannelKey> = std::mem::take(&mut *self.deleted.lock());
        if gone.is_empty() {
            return None;
        }
        for key in &gone {
            self.presence.left(key);
        }
        session.unsubscribe(&gone).await;
        session
            .channels()
            .is_empty()
            .then_some((1000, Cow::Borrowed("")))
    }

    async fn on_text(&mut self, session: &mut Session, text: &str) -> Reply {
        if !self.may_publish || text.is_empty() {
            return Reply::default();
        }
        let keys: Vec<ChannelKey> = session
            .channels()
            .iter()
            .filter(|k| !self.ps.is_events_channel(k.name()))
            .cloned()
            .collect();
        let publication = PsState::publication(text, None, None);
        for key in keys {
            if let Err(e) = self.ps.publish(&key, publication.clone()).await {
                tracing::warn!(channel = %key, error = %e, "Push-stream WebSocket publish failed.");
            }
        }
        Reply::default()
    }
}
