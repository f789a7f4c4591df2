//! The Push seed's API (thegoncalomartins/push), wire-compatible:
//! `POST /messages`, `GET /sse/messages`, `GET /ws/messages`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{ChannelKey, Format, Message, Publication};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::dialect::{compact_json, push_json_str, slot};
use crate::error::ApiError;
use crate::http::extract::Query;
use crate::http::read_body;
use crate::session::{Session, parse_channel_list};
use crate::state::AppState;
use crate::transport::sse::{self, SseStyle};
use crate::transport::ws::{self, Reply, WsDialect, close};

const CHANNELS_REQUIRED: &str = "'channels' query parameter required";

/// `{"channel":"c","message":"<string>"}`: the seed always delivers the
/// message as a string (JSON payloads as their JSON text).
fn payload(msg: &Message) -> Vec<u8> {
    let text = msg.text();
    let mut out = Vec::with_capacity(32 + text.len());
    out.extend_from_slice(b"{\"channel\":");
    push_json_str(&mut out, msg.channel.name());
    out.extend_from_slice(b",\"message\":");
    push_json_str(&mut out, &text);
    out.push(b'}');
    out
}

/// WebSocket frames: `{"event":"message","data":{…}}`.
pub(crate) struct WsFormat;

impl Format for WsFormat {
    fn slot(&self) -> usize {
        slot::PUSH_WS
    }
    fn encode(&self, msg: &Message) -> Bytes {
        let mut out = b"{\"event\":\"message\",\"data\":".to_vec();
        out.extend_from_slice(&payload(msg));
        out.push(b'}');
        Bytes::from(out)
    }
    /// The seed's subscriptions last as long as the connection and it
    /// never deletes a channel; one deleted through another API took this
    /// subscriber with it, so the client is asked to reconnect, with the
    /// hint it gets before every lifetime ends.
    fn deleted(&self, _channel: &ChannelKey) -> Option<Bytes> {
        Some(Bytes::from_static(WS_RECONNECT))
    }
}

/// The seed's reconnect hint over WebSocket.
const WS_RECONNECT: &[u8] = b"{\"event\":\"reconnect\",\"data\":{}}";
/// The seed's reconnect hint over SSE.
const SSE_RECONNECT: &[u8] = b"event:reconnect\ndata:{}\n\n";

/// SSE events in Spring's framing: `event:message` / `data:{…}`.
pub(crate) struct SseFormat;

impl Format for SseFormat {
    fn slot(&self) -> usize {
        slot::PUSH_SSE
    }
    fn encode(&self, msg: &Message) -> Bytes {
        let mut out = b"event:message\ndata:".to_vec();
        out.extend_from_slice(&payload(msg));
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
    /// As [`WsFormat::deleted`].
    fn deleted(&self, _channel: &ChannelKey) -> Option<Bytes> {
        Some(Bytes::from_static(SSE_RECONNECT))
    }
}

/// A seed-style error body: `{"error": "<message>"}`.
fn seed_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PublishBody {
    channel: String,
    #[schema(value_type = Object)]
    message: Box<RawValue>,
}

/// `POST /messages` → 202 `{"subscribers":N}`.
#[utoipa::path(post, path = "/messages", tag = "push", operation_id = "push_publish", request_body = PublishBody,
    responses((status = 202, description = "{\"subscribers\": N}"),
        (status = 400, description = "{\"error\": msg}: a malformed body, a null `message` or a bad channel"),
        (status = 503, description = "{\"error\": msg}: the broker did not take the message \
            (the seed answers 500)")))]
pub(crate) async fn publish(State(state): State<AppState>, req: Request) -> Response {
    let body = match read_body(req, state.config.limits.max_message_size + 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return seed_error(e.status, e.message),
    };
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return seed_error(StatusCode::BAD_REQUEST, format!("malformed body: {e}")),
    };
    // The seed's Kotlin model refuses a null `message` as it refuses a
    // missing one: a malformed body, answered like any other here.
    if body.message.get() == "null" {
        return seed_error(
            StatusCode::BAD_REQUEST,
            "malformed body: 'message' must not be null",
        );
    }
    let key = match state.channel(&body.channel) {
        Ok(k) => k,
        Err(e) => return seed_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Err(e) = state.check_writable(&key) {
        return seed_error(e.status, e.message);
    }
    let max = state.config.limits.max_message_size;
    if body.message.get().len() > max {
        return seed_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message is larger than {max} bytes"),
        );
    }
    match state
        .engine
        .publish(&key, Publication::new(compact_json(&body.message)))
        .await
    {
        Ok(p) => (
            StatusCode::ACCEPTED,
            Json(json!({"subscribers": p.subscribers})),
        )
            .into_response(),
        Err(e) => seed_error(StatusCode::SERVICE_UNAVAILABLE, ApiError::from(e).message),
    }
}

#[derive(Deserialize)]
pub(crate) struct ChannelsQuery {
    channels: Option<String>,
}

async fn subscribed(
    state: &AppState,
    channels: Option<&str>,
    format: Arc<dyn Format>,
) -> Result<Session, (StatusCode, String)> {
    let keys =
        parse_channel_list(state, channels.unwrap_or("")).map_err(|e| (e.status, e.message))?;
    if keys.is_empty() {
        return Err((StatusCode::BAD_REQUEST, CHANNELS_REQUIRED.into()));
    }
    let mut session = Session::new(state.clone(), format);
    session
        .subscribe(keys)
        .await
        .map_err(|e| (e.status, e.message))?;
    Ok(session)
}

/// `GET /sse/messages?channels=a,b`.
#[utoipa::path(get, path = "/sse/messages", tag = "push", operation_id = "push_sse",
    params(("channels" = String, Query, description = "Comma-separated channels")),
    responses((status = 200, description = "text/event-stream"), (status = 400, description = "Bad channels")))]
pub(crate) async fn sse(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ChannelsQuery>, ApiError>,
) -> Response {
    // A query that does not parse is answered in the seed's error shape too.
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return seed_error(e.status, e.message),
    };
    let session = match subscribed(&state, q.channels.as_deref(), Arc::new(SseFormat)).await {
        Ok(s) => s,
        Err((status, message)) => return seed_error(status, message),
    };
    let heartbeat = Bytes::from_static(b"event:heartbeat\ndata:{}\n\n");
    let style = SseStyle {
        preamble: heartbeat.clone(),
        heartbeat,
        reconnect: Bytes::from_static(SSE_RECONNECT),
        // The seed's streams carry no identity: nothing disconnects them.
        disconnected: Bytes::new(),
        cursor: None,
    };
    sse::respond(&state, session, style, &headers)
        .unwrap_or_else(|e| seed_error(e.status, e.message))
}

/// `GET /ws/messages?channels=a,b`. Without channels the seed upgrades, sends
/// the error frame and closes; Herald does the same.
#[utoipa::path(get, path = "/ws/messages", tag = "push", operation_id = "push_ws",
    params(("channels" = String, Query, description = "Comma-separated channels")),
    responses((status = 101, description = "WebSocket: the Push seed's JSON frames")))]
pub(crate) async fn ws(
    State(state): State<AppState>,
    query: Result<Query<ChannelsQuery>, ApiError>,
    req: Request,
) -> Response {
    // A query that does not parse is refused like any other channel list:
    // after the upgrade, with the error frame and the close.
    let subscribed = match query {
        Ok(Query(q)) => subscribed(&state, q.channels.as_deref(), Arc::new(WsFormat)).await,
        Err(e) => Err((e.status, e.message)),
    };
    let (session, refused) = match subscribed {
        Ok(session) => (session, None),
        Err((_, message)) => {
            let session = Session::new(state.clone(), Arc::new(WsFormat));
            (session, Some(message))
        }
    };
    let dialect = PushWs {
        responding: true,
        refused,
    };
    ws::upgrade(&state, req, session, dialect).unwrap_or_else(|e| e.into_response())
}

/// The seed's WebSocket liveness rule and frames.
struct PushWs {
    /// Set by the client's `{"event":"pong"}`; must be set again before
    /// each ping, or the connection is closed.
    responding: bool,
    /// When set, the connection only says this error (as a frame, and as
    /// the close reason) and closes.
    refused: Option<String>,
}

#[derive(Deserialize)]
struct ClientEvent {
    event: Option<String>,
}

impl WsDialect for PushWs {
    fn greeting(&mut self) -> Reply {
        match self.refused.take() {
            Some(error) => {
                let mut reply = Reply::frame(json!({ "error": error }).to_string());
                reply.close = Some((close::BAD_REQUEST, error.into()));
                reply
            }
            None => {
                // The seed's tick at t=0: it clears the flag like every tick,
                // so the first ping needs its pong before the next.
                self.responding = false;
                Reply::frame(Bytes::from_static(b"{\"event\":\"ping\",\"data\":{}}"))
            }
        }
    }

    fn heartbeat(&mut self) -> Result<Option<Bytes>, (u16, &'static str)> {
        if !std::mem::replace(&mut self.responding, false) {
            return Err((close::PING_TIMEOUT, "no pong to the last ping"));
        }
        Ok(Some(Bytes::from_static(
            b"{\"event\":\"ping\",\"data\":{}}",
        )))
    }

    fn reconnect_hint(&self) -> Option<Bytes> {
        Some(Bytes::from_static(WS_RECONNECT))
    }

    fn lifetime_close(&self) -> (u16, &'static str) {
        (1000, "lifetime expired, reconnect")
    }

    async fn on_text(&mut self, _session: &mut Session, text: &str) -> Reply {
        match serde_json::from_str::<ClientEvent>(text) {
            Ok(ClientEvent { event: Some(e) }) if e == "pong" => {
                self.responding = true;
                Reply::default()
            }
            Ok(ClientEvent { event: Some(e) }) if e == "ping" => {
                Reply::frame(Bytes::from_static(b"{\"event\":\"pong\",\"data\":{}}"))
            }
            Ok(_) => Reply::default(),
            Err(e) => {
                let mut reply =
                    Reply::frame(json!({"error": format!("malformed frame: {e}")}).to_string());
                reply.close = Some((close::BAD_REQUEST, "malformed frame".into()));
                reply
            }
        }
    }
}
