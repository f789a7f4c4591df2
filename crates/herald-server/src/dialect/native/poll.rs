//! Polling and long-polling: `GET /poll?channels=a,b&since=<cursor>&timeout=<ms>`.
//!
//! Each request subscribes for its duration with the client's cursor, so
//! stored messages it missed are replayed and live ones arrive while it
//! waits; the reply carries the cursor for the next request. It holds one
//! of `limits.max_connections` while it runs, as a stream does.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use herald_core::{Format, Frame, Message, Recovery};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{envelope, slot};
use crate::access::request_grants;
use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::http::extract::Query;
use crate::metrics::Transport;
use crate::session::{Session, parse_channel_list};
use crate::state::AppState;
use crate::transport::ws::connection_limit;

/// The WebSocket envelope (same cache slot, so never encoded twice), with
/// the message kept so the cursor can advance.
struct PollFormat;

impl Format for PollFormat {
    fn slot(&self) -> usize {
        slot::NATIVE_WS
    }
    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::from(envelope(msg))
    }
    fn wants_message(&self) -> bool {
        true
    }
}

#[derive(Deserialize)]
pub(crate) struct PollQuery {
    channels: Option<String>,
    since: Option<String>,
    /// Milliseconds to wait for a message when there is none; 0 (the
    /// default) answers at once.
    timeout: Option<u64>,
    /// A JWT granting protected channels (docs/api.md).
    token: Option<String>,
}

/// `GET /poll`.
#[utoipa::path(get, path = "/poll", tag = "native",
    params(("token" = Option<String>, Query, description = "JWT granting protected channels")),
    responses((status = 200, description = "Messages after the cursor (long-polls when none)"), (status = 400, description = "Bad channels or cursor"),
        (status = 403, description = "A protected channel, not granted"),
        (status = 503, description = "`limits.max_connections` reached")))]
pub(crate) async fn poll(
    State(state): State<AppState>,
    Query(q): Query<PollQuery>,
    headers: HeaderMap,
) -> Result<Json<PollReply>, ApiError> {
    let keys = parse_channel_list(&state, q.channels.as_deref().unwrap_or(""))?;
    if keys.is_empty() {
        return Err(ApiError::bad_request("'channels' query parameter required"));
    }
    let since = Cursor::parse(q.since.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let wait = Duration::from_millis(q.timeout.unwrap_or(0)).min(state.config.poll.max_wait);
    let _slot = state
        .metrics
        .open(Transport::Poll, state.config.limits.max_connections)
        .ok_or_else(connection_limit)?;

    let mut session = Session::new(state.clone(), Arc::new(PollFormat));
    session.grant(request_grants(&state, &keys, q.token.as_deref(), &headers)?);
    let mut cursor = Cursor::default();
    let mut recovery = Map::new();
    for key in keys {
        let s = session
            .subscribe_from(key.clone(), since.get(key.name()).cloned())
            .await?;
        if let Some(r) = s.recovery.filter(|r| *r != Recovery::Recovered) {
            recovery.insert(key.name().to_owned(), json!(r));
        }
        cursor.set_subscribed(&key, &s);
    }

    let outbox = session.outbox.clone();
    let mut frames: Vec<Frame> = Vec::new();
    outbox.drain(&mut frames);
    if frames.is_empty() && !wait.is_zero() {
        tokio::select! {
            () = outbox.ready() => {}
            () = tokio::time::sleep(wait) => {}
            () = state.shutdown.signalled() => {}
        }
        outbox.drain(&mut frames);
    }
    drop(session);

    let mut messages = Vec::with_capacity(frames.len());
    for frame in frames {
        if let Some(msg) = &frame.message {
            cursor.advance(msg);
        }
        if let Ok(text) = String::from_utf8(frame.bytes.to_vec())
            && let Ok(raw) = RawValue::from_string(text)
        {
            messages.push(raw);
        }
    }
    Ok(Json(PollReply {
        messages,
        cursor: cursor.to_string(),
        recovery,
    }))
}

/// A poll's answer. Messages stay raw JSON, never parsed again.
#[derive(Serialize)]
pub(crate) struct PollReply {
    messages: Vec<Box<RawValue>>,
    /// Where the next poll starts.
    cursor: String,
    /// Channels that could not resume, and why.
    #[serde(skip_serializing_if = "Map::is_empty")]
    recovery: Map<String, Value>,
}
