//! Herald's native protocol: JSON over WebSocket with request ids, SSE, and
//! the HTTP publish, channel and polling APIs. See docs/api.md.

pub(crate) mod channels;
pub(crate) mod poll;

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{
    ChannelKey, Format, Message, Position, PresenceChange, Publication, Published, Recovery,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::auth::Verified;
use crate::cursor::Cursor;
use crate::dialect::{one_line_json, push_json_str, slot};
use crate::error::ApiError;
use crate::http::extract::Query;
use crate::http::read_body;
use crate::ratelimit::Bucket;
use crate::session::{Session, channel_keys, parse_channel_list};
use crate::state::AppState;
use crate::transport::sse::{self, SseStyle};
use crate::transport::ws::{self, Reply, WsDialect, close};

/// Longest accepted message id or event name.
const MAX_LABEL_LEN: usize = 128;

/// `{"channel","id","offset","epoch","event"?,"data"}`: one push, as JSON.
fn envelope(msg: &Message) -> Vec<u8> {
    let p = &msg.publication;
    // The keys, quotes and a u64's digits take 71 bytes, an event 11 more:
    // sized once, the envelope is never regrown unless a string needs escapes.
    let event = p.event.as_ref().map_or(0, |e| 11 + e.len());
    let strings = msg.channel.name().len() + p.id.len() + msg.epoch.len();
    let mut out = Vec::with_capacity(71 + strings + event + p.data.len());
    out.extend_from_slice(b"{\"channel\":");
    push_json_str(&mut out, msg.channel.name());
    out.extend_from_slice(b",\"id\":");
    push_json_str(&mut out, &p.id);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(itoa::Buffer::new().format(msg.offset).as_bytes());
    out.extend_from_slice(b",\"epoch\":");
    push_json_str(&mut out, &msg.epoch);
    if let Some(event) = &p.event {
        out.extend_from_slice(b",\"event\":");
        push_json_str(&mut out, event);
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&p.data);
    out.push(b'}');
    out
}

/// Native WebSocket pushes.
pub(crate) struct WsFormat;

impl Format for WsFormat {
    fn slot(&self) -> usize {
        slot::NATIVE_WS
    }
    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::from(envelope(msg))
    }

    fn deleted(&self, channel: &ChannelKey) -> Option<Bytes> {
        let mut out = b"{\"type\":\"deleted\",\"channel\":".to_vec();
        push_json_str(&mut out, channel.name());
        out.push(b'}');
        Some(Bytes::from(out))
    }

    fn presence(&self, channel: &ChannelKey, change: PresenceChange, user: &str) -> Option<Bytes> {
        let mut out = format!("{{\"type\":\"{}\",", change.as_str()).into_bytes();
        out.extend_from_slice(&presence_body(channel, user)[1..]);
        Some(Bytes::from(out))
    }
}

/// `{"channel":…,"user":…}`: who joined or left which channel.
fn presence_body(channel: &ChannelKey, user: &str) -> Vec<u8> {
    let mut out = b"{\"channel\":".to_vec();
    push_json_str(&mut out, channel.name());
    out.extend_from_slice(b",\"user\":");
    push_json_str(&mut out, user);
    out.push(b'}');
    out
}

/// Native SSE events: an `event:` line when given, the envelope as `data:`.
/// The transport adds the `id:` line: the connection's cursor.
pub(crate) struct SseFormat;

impl Format for SseFormat {
    fn slot(&self) -> usize {
        slot::NATIVE_SSE
    }

    fn encode(&self, msg: &Message) -> Bytes {
        let body = envelope(msg);
        let mut out = Vec::with_capacity(body.len() + 32);
        if let Some(event) = &msg.publication.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(event.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    fn wants_message(&self) -> bool {
        true
    }

    fn deleted(&self, channel: &ChannelKey) -> Option<Bytes> {
        let mut out = b"event: deleted\ndata: {\"channel\":".to_vec();
        push_json_str(&mut out, channel.name());
        out.extend_from_slice(b"}\n\n");
        Some(Bytes::from(out))
    }

    fn presence(&self, channel: &ChannelKey, change: PresenceChange, user: &str) -> Option<Bytes> {
        let mut out = format!("event: {}\ndata: ", change.as_str()).into_bytes();
        out.extend_from_slice(&presence_body(channel, user));
        out.extend_from_slice(b"\n\n");
        Some(Bytes::from(out))
    }
}

#[derive(Deserialize)]
pub(crate) struct ChannelsQuery {
    channels: Option<String>,
    /// A JWT giving the connection an identity (docs/targeting.md).
    token: Option<String>,
}

/// `GET /ws`: native WebSocket, optionally subscribed via `?channels=a,b`
/// and identified by `?token=<jwt>` or `Authorization: Bearer <jwt>`.
#[utoipa::path(get, path = "/ws", tag = "native",
    params(("channels" = Option<String>, Query, description = "Comma-separated channels"),
        ("token" = Option<String>, Query, description = "JWT giving the connection an identity")),
    responses((status = 101, description = "WebSocket: native JSON protocol"),
        (status = 401, description = "Invalid or expired token"),
        (status = 403, description = "A protected channel the token does not grant")))]
pub(crate) async fn ws(
    State(state): State<AppState>,
    Query(q): Query<ChannelsQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let token = crate::auth::request_token(q.token.as_deref(), req.headers());
    let session = open_ws(&state, token, q.channels.as_deref()).await?;
    ws::upgrade(&state, req, session, NativeWs::new(&state))
}

/// `GET /ws` as the handshake fast path read it
/// ([`crate::transport::handshake`]): the session and dialect, or `None`
/// where [`ws()`] would answer an error.
pub(crate) async fn ws_direct(
    state: &AppState,
    query: &str,
    authorization: Option<&str>,
) -> Option<(Session, impl WsDialect + use<>)> {
    // As the handler's extractor would, or the handler answers.
    if !crate::http::extract::query_is_utf8(query) {
        return None;
    }
    let q: ChannelsQuery = serde_urlencoded::from_str(query).ok()?;
    let token = q
        .token
        .as_deref()
        .or(authorization.and_then(crate::auth::bearer));
    let session = open_ws(state, token, q.channels.as_deref()).await.ok()?;
    Some((session, NativeWs::new(state)))
}

/// A native WebSocket's session: identified by `token`, subscribed to
/// the comma-separated `channels`.
async fn open_ws(
    state: &AppState,
    token: Option<&str>,
    channels: Option<&str>,
) -> Result<Session, ApiError> {
    let verified = crate::auth::verify(state, token)?;
    let keys = parse_channel_list(state, channels.unwrap_or(""))?;
    let mut session = Session::new(state.clone(), Arc::new(WsFormat));
    if let Some(v) = verified {
        session.grant(v.grants);
        session.identify(v.identity, Arc::new(WsFormat), v.issued_at);
    }
    session.subscribe(keys).await?;
    Ok(session)
}

#[derive(Deserialize)]
pub(crate) struct SseQuery {
    channels: Option<String>,
    /// A cursor to resume from, like `Last-Event-ID`.
    since: Option<String>,
    /// A JWT giving the connection an identity (docs/targeting.md).
    token: Option<String>,
}

/// `GET /sse?channels=a,b[&since=cursor][&token=jwt]`: native Server-Sent
/// Events. A `Last-Event-ID` header (or `since`) resumes every channel it
/// names; a token (or `Authorization: Bearer`) identifies the connection for
/// targeted sends, and the stream then announces its receiver key.
#[utoipa::path(get, path = "/sse", tag = "native",
    params(("channels" = String, Query, description = "Comma-separated channels"),
        ("token" = Option<String>, Query, description = "JWT giving the connection an identity")),
    responses((status = 200, description = "text/event-stream"), (status = 400, description = "Bad channels or cursor"),
        (status = 401, description = "Invalid or expired token"),
        (status = 403, description = "A protected channel the token does not grant")))]
pub(crate) async fn sse(
    State(state): State<AppState>,
    Query(q): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = crate::auth::request_token(q.token.as_deref(), &headers);
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| ApiError::bad_request("Last-Event-ID is not a cursor: not visible ASCII"))?;
    let (session, style) = open_sse(&state, &q, token, last_event_id).await?;
    sse::respond(&state, session, style, &headers)
}

/// `GET /sse` as the handshake fast path read it
/// ([`crate::transport::handshake`]): the session and its stream's style, or
/// `None` where [`sse()`] would answer an error.
pub(crate) async fn sse_direct(
    state: &AppState,
    query: &str,
    authorization: Option<&str>,
    last_event_id: Option<&str>,
) -> Option<(Session, SseStyle)> {
    // As the handler's extractor would, or the handler answers.
    if !crate::http::extract::query_is_utf8(query) {
        return None;
    }
    let q: SseQuery = serde_urlencoded::from_str(query).ok()?;
    let token = q
        .token
        .as_deref()
        .or(authorization.and_then(crate::auth::bearer));
    open_sse(state, &q, token, last_event_id).await.ok()
}

/// A native SSE stream's session, identified by `token` and resumed from
/// `Last-Event-ID` (or `since`), and the frames its stream starts with.
async fn open_sse(
    state: &AppState,
    q: &SseQuery,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<(Session, SseStyle), ApiError> {
    let verified = crate::auth::verify(state, token)?;
    let keys = parse_channel_list(state, q.channels.as_deref().unwrap_or(""))?;
    if keys.is_empty() && verified.is_none() {
        return Err(ApiError::bad_request(
            "'channels' query parameter required (or a token, for targeted messages only)",
        ));
    }
    let resume = last_event_id
        .or(q.since.as_deref())
        .map(Cursor::parse)
        .transpose()
        .map_err(ApiError::bad_request)?
        .unwrap_or_default();
    let keys_empty = keys.is_empty();
    let mut session = Session::new(state.clone(), Arc::new(SseFormat));
    let mut cursor = Cursor::default();
    let mut preamble = format!(
        "retry: {}\n: connected\n\n",
        state.config.connection.sse_retry.as_millis()
    );
    if let Some(Verified {
        identity,
        grants,
        issued_at,
        ..
    }) = verified
    {
        session.grant(grants);
        // The stream cannot carry acks back: its key lets POST /api/v1/ack.
        let receiver = state.receivers.issue(session.outbox.id());
        preamble.push_str(&format!(
            "event: identified\ndata: {}\n\n",
            json!({"receiver": receiver})
        ));
        session.identify(identity, Arc::new(SseFormat), issued_at);
    }
    for key in keys {
        let since = resume.get(key.name()).cloned();
        let s = session.subscribe_from(key.clone(), since).await?;
        if let Some(recovery) = s.recovery.filter(|r| *r != Recovery::Recovered) {
            let note = json!({"channel": key.name(), "recovery": recovery, "position": position_json(&s.position)});
            preamble.push_str(&format!("event: recovery\ndata: {note}\n\n"));
        }
        cursor.set_subscribed(&key, &s);
    }
    if !keys_empty {
        // An id without data dispatches no event, yet browsers keep it: one
        // that reconnects before the first message still resumes.
        preamble.push_str(&format!("id: {cursor}\n\n"));
    }
    let style = SseStyle {
        preamble: Bytes::from(preamble),
        heartbeat: Bytes::from_static(b": heartbeat\n\n"),
        reconnect: Bytes::from_static(b"event: reconnect\ndata: {}\n\n"),
        disconnected: Bytes::from_static(b"event: disconnected\ndata: {}\n\n"),
        cursor: Some(cursor),
    };
    Ok((session, style))
}

pub(crate) fn position_json(p: &Position) -> Value {
    json!({"offset": p.offset, "epoch": p.epoch})
}

/// The `id` of a command that is refused before it is read, if that much
/// parses: echoed, so the client can tell which command failed.
fn command_id(text: &str) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    serde_json::from_str::<IdOnly>(text).ok().and_then(|c| c.id)
}

/// Native WebSocket connection state.
struct NativeWs {
    /// Whether the client answered since the last ping.
    alive: bool,
    /// The client's commands, within `limits.ws_commands_per_second`.
    commands: Bucket,
}

impl NativeWs {
    fn new(state: &AppState) -> Self {
        let l = &state.config.limits;
        Self {
            alive: true,
            commands: Bucket::new(l.ws_commands_per_second, l.ws_commands_burst),
        }
    }
}

/// One client command, parsed loosely so that errors can be precise, and
/// borrowing from its frame where it can.
#[derive(Deserialize)]
struct Command<'a> {
    /// Echoed as sent, so the client can match the answer.
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    cmd: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    channels: Option<Vec<String>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    event: Option<String>,
    /// The targeted message an `ack` command acknowledges.
    #[serde(borrow)]
    message_id: Option<Cow<'a, str>>,
    /// Resume point for `subscribe` to a single channel.
    since: Option<SinceArg>,
    /// `false`: answer only if the command fails. A client streaming
    /// publishes (cursor moves, typing) saves a frame per message.
    reply: Option<bool>,
}

/// The answer to a command: `{"id", "result"}` or `{"id", "error"}`,
/// serialised straight from these fields.
#[derive(Serialize)]
struct Answer<'a> {
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Done>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Failure<'a>>,
}

/// What a command did.
#[derive(Serialize)]
#[serde(untagged)]
enum Done {
    /// A publish: its typed outcome, the most frequent answer.
    Published(Outcome),
    /// Anything else.
    Other(Value),
}

/// Why a command failed: the native API's error body.
#[derive(Serialize)]
struct Failure<'a> {
    /// Stable, for programs.
    code: &'a str,
    /// For people.
    message: &'a str,
}

impl Answer<'_> {
    fn frame(&self) -> Reply {
        // Room for a publish's answer: no regrowth while serialising.
        let mut out = Vec::with_capacity(256);
        match self {
            Self {
                id,
                result: Some(Done::Published(outcome)),
                error: None,
            } => {
                out.extend_from_slice(b"{\"id\":");
                out.extend_from_slice(id.map_or("null", RawValue::get).as_bytes());
                out.extend_from_slice(b",\"result\":");
                outcome.write_json(&mut out);
                out.push(b'}');
            }
            _ => serde_json::to_writer(&mut out, self).expect("an answer serializes"),
        }
        Reply::frame(out)
    }
}

#[derive(Deserialize)]
struct SinceArg {
    offset: u64,
    epoch: String,
}

impl WsDialect for NativeWs {
    fn heartbeat(&mut self) -> Result<Option<Bytes>, (u16, &'static str)> {
        if !std::mem::replace(&mut self.alive, false) {
            return Err((close::PING_TIMEOUT, "no pong to the last ping"));
        }
        Ok(None)
    }

    fn on_activity(&mut self) {
        self.alive = true;
    }

    fn reconnect_hint(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b"{\"type\":\"reconnect\"}"))
    }

    async fn on_text(&mut self, session: &mut Session, text: &str) -> Reply {
        // Before parsing: malformed commands count too.
        if !self.commands.try_acquire() {
            return failure(
                command_id(text),
                "rate_limited",
                "too many commands: over limits.ws_commands_per_second",
            );
        }
        let cmd: Command = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let message = format!("malformed command: {e}");
                return failure(command_id(text), "bad_request", &message);
            }
        };
        let (id, quiet) = (cmd.id, cmd.reply == Some(false));
        match execute(session, cmd).await {
            Ok(_) if quiet => Reply::default(),
            Ok(result) => Answer {
                id,
                result: Some(result),
                error: None,
            }
            .frame(),
            Err(e) => failure(id, e.code, &e.message),
        }
    }
}

fn failure(id: Option<&RawValue>, code: &str, message: &str) -> Reply {
    let error = Some(Failure { code, message });
    Answer {
        id,
        result: None,
        error,
    }
    .frame()
}

/// Runs one command.
///
/// The rarer commands' work is boxed: every native WebSocket's task keeps
/// room for the largest command in flight, for its whole life, and a
/// subscription's state is larger than a publish's (docs/benchmarks.md).
async fn execute(session: &mut Session, cmd: Command<'_>) -> Result<Done, ApiError> {
    let state = session.state.clone();
    let names = || -> Result<Vec<ChannelKey>, ApiError> {
        let names = cmd
            .channels
            .clone()
            .or_else(|| cmd.channel.as_deref().map(|c| vec![c.to_owned()]))
            .ok_or_else(|| ApiError::bad_request("'channels' is required"))?;
        channel_keys(&state, names.iter().map(String::as_str))
    };
    match cmd.cmd.as_deref() {
        Some("subscribe") => {
            let keys = names()?;
            let Some(since) = cmd.since else {
                let names: Vec<String> = keys.iter().map(|k| k.name().to_owned()).collect();
                let positions = Box::pin(session.subscribe(keys)).await?;
                let positions: serde_json::Map<String, Value> = names
                    .into_iter()
                    .zip(positions.iter().map(position_json))
                    .collect();
                let channels = channel_names(session.channels());
                return Ok(Done::Other(
                    json!({ "channels": channels, "positions": positions }),
                ));
            };
            let [key] = <[ChannelKey; 1]>::try_from(keys)
                .map_err(|_| ApiError::bad_request("'since' needs exactly one channel"))?;
            let since = Position {
                offset: since.offset,
                epoch: Arc::from(since.epoch),
            };
            // The replay, and live messages after it, follow the reply: the
            // transport releases the outbox once it wrote it.
            session.outbox.hold();
            let s = Box::pin(session.subscribe_from(key, Some(since))).await?;
            Ok(Done::Other(json!({
                "channels": channel_names(session.channels()),
                "recovery": s.recovery,
                "replayed": s.replayed,
                "position": position_json(&s.position),
            })))
        }
        Some("unsubscribe") => {
            Box::pin(session.unsubscribe(&names()?)).await;
            let channels = channel_names(session.channels());
            Ok(Done::Other(json!({ "channels": channels })))
        }
        Some("publish") => {
            if !state.config.server.allow_client_publish {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "publishing over WebSocket is disabled (server.allow_client_publish)",
                ));
            }
            let channel = cmd
                .channel
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("'channel' is required"))?;
            let key = state.channel(channel)?;
            session.may_use(std::slice::from_ref(&key))?;
            state.check_writable(&key)?;
            let data = cmd
                .data
                .ok_or_else(|| ApiError::bad_request("'data' is required"))?;
            let publication = publication(&state, data, cmd.event, None)?;
            let p = state.engine.publish(&key, publication).await?;
            Ok(Done::Published(Outcome::from(p)))
        }
        Some("ping") => Ok(Done::Other(json!({}))),
        Some("ack") => {
            let id = cmd
                .message_id
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("'message_id' is required"))?;
            let acked = Box::pin(state.engine.acknowledge(session.outbox.id(), id)).await?;
            tracing::debug!(conn = session.outbox.id(), message = id, acked, "Acked.");
            Ok(Done::Other(crate::dialect::send::ack_result(acked)))
        }
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_command",
            format!(
                "unknown command {other:?}; expected subscribe, unsubscribe, publish, ack or ping"
            ),
        )),
        None => Err(ApiError::bad_request("'cmd' is required")),
    }
}

fn channel_names(keys: &[ChannelKey]) -> Vec<&str> {
    keys.iter().map(ChannelKey::name).collect()
}

/// The answer to a publish, serialised straight from these fields.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    /// One channel: where the message landed, and the subscribers reached.
    One {
        id: Arc<str>,
        offset: u64,
        epoch: Arc<str>,
        subscribers: usize,
    },
    /// Several: the id, the subscribers reached, and each channel's position.
    Many {
        id: Arc<str>,
        subscribers: usize,
        channels: Vec<Landed>,
    },
}

impl Outcome {
    /// Writes what serde would, by hand for the one-channel answer every
    /// publish over HTTP or WebSocket gets (serde_json escapes keys and
    /// values byte by byte).
    fn write_json(&self, out: &mut Vec<u8>) {
        let Self::One {
            id,
            offset,
            epoch,
            subscribers,
        } = self
        else {
            return serde_json::to_writer(out, self).expect("an outcome serializes");
        };
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(b"{\"id\":");
        push_json_str(out, id);
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(digits.format(*offset).as_bytes());
        out.extend_from_slice(b",\"epoch\":");
        push_json_str(out, epoch);
        out.extend_from_slice(b",\"subscribers\":");
        out.extend_from_slice(digits.format(*subscribers).as_bytes());
        out.push(b'}');
    }
}

impl From<Published> for Outcome {
    fn from(p: Published) -> Self {
        Self::One {
            id: p.id,
            offset: p.offset,
            epoch: p.epoch,
            subscribers: p.subscribers,
        }
    }
}

/// Where a message landed in one of several channels.
#[derive(Serialize)]
struct Landed {
    channel: String,
    offset: u64,
    epoch: Arc<str>,
}

/// Builds a publication, enforcing the size limit and label rules.
fn publication(
    state: &AppState,
    data: &RawValue,
    event: Option<String>,
    id: Option<String>,
) -> Result<Publication, ApiError> {
    // Measured as delivered: data spread over lines loses its indentation.
    let data = one_line_json(data);
    let max = state.config.limits.max_message_size;
    if data.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("data is larger than {max} bytes"),
        ));
    }
    let mut p = Publication::new(data);
    if let Some(id) = id {
        p.id = Arc::from(label("id", &id)?);
    }
    if let Some(event) = event {
        p.event = Some(Arc::from(label("event", &event)?));
    }
    Ok(p)
}

/// Ids and event names end up on SSE lines: short, no control characters.
fn label<'a>(what: &str, s: &'a str) -> Result<&'a str, ApiError> {
    if s.is_empty() || s.len() > MAX_LABEL_LEN || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "'{what}' must be 1 to {MAX_LABEL_LEN} bytes without control characters"
        )));
    }
    Ok(s)
}

/// One message of `POST /api/v1/publish` (and of a batch).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishRequest<'a> {
    /// Borrowed from the body, as is `data`: a publish allocates neither.
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    channels: Option<Vec<String>>,
    #[schema(value_type = Object)]
    #[serde(borrow)]
    data: &'a RawValue,
    event: Option<String>,
    id: Option<String>,
}

/// A validated publish: where to and what.
struct PublishPlan {
    /// The channels to publish to: one, or several at once.
    keys: Vec<ChannelKey>,
    /// What every channel gets: the data, with its event and id.
    publication: Publication,
}

fn plan(state: &AppState, req: PublishRequest<'_>) -> Result<PublishPlan, ApiError> {
    let keys = match (req.channel, req.channels) {
        (Some(c), None) => vec![state.channel(&c)?],
        (None, Some(cs)) if !cs.is_empty() => channel_keys(state, cs.iter().map(String::as_str))?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give 'channel' or 'channels', not both",
            ));
        }
        _ => return Err(ApiError::bad_request("'channel' or 'channels' is required")),
    };
    keys.iter().try_for_each(|key| state.check_writable(key))?;
    let publication = publication(state, req.data, req.event, req.id)?;
    Ok(PublishPlan { keys, publication })
}

async fn run(state: &AppState, plan: PublishPlan) -> Result<Outcome, ApiError> {
    if let [key] = plan.keys.as_slice() {
        let p = state.engine.publish(key, plan.publication).await?;
        return Ok(p.into());
    }
    let id = plan.publication.id.clone();
    let mut subscribers = 0;
    let mut channels = Vec::with_capacity(plan.keys.len());
    for key in &plan.keys {
        let p = state.engine.publish(key, plan.publication.clone()).await?;
        subscribers += p.subscribers;
        channels.push(Landed {
            channel: key.name().to_owned(),
            offset: p.offset,
            epoch: p.epoch,
        });
    }
    Ok(Outcome::Many {
        id,
        subscribers,
        channels,
    })
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// `POST /api/v1/publish`.
#[utoipa::path(post, path = "/api/v1/publish", tag = "native", request_body = PublishRequest,
    responses((status = 200, description = "{id, offset, epoch, subscribers}"), (status = 400, description = "Malformed request"),
        (status = 413, description = "Message over `limits.max_message_size`")))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let body = read_body(req, state.config.limits.max_message_size + 64 * 1024).await?;
    let plan = plan(&state, parse(&body)?)?;
    let mut body = Vec::with_capacity(128);
    run(&state, plan).await?.write_json(&mut body);
    // Built by hand, with its length: axum's tuple of parts, and its
    // length check after, cost more than the publish's own JSON.
    let length = HeaderValue::from(body.len());
    let mut answer = Response::new(axum::body::Body::from(body));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, length);
    Ok(answer)
}

/// The batch's schema, for the OpenAPI document; the handler reads each
/// message on its own.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchRequest<'a> {
    messages: Vec<PublishRequest<'a>>,
}

/// `POST /api/v1/publish/batch`: every message is validated before any is
/// published, so a bad batch publishes nothing.
#[utoipa::path(post, path = "/api/v1/publish/batch", tag = "native", request_body = BatchRequest,
    responses((status = 200, description = "{results: [...]}"), (status = 400, description = "Malformed request, or not 1 to `limits.max_batch` messages"),
        (status = 413, description = "Body over what `limits.max_batch` messages may take")))]
pub(crate) async fn publish_batch(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let limits = &state.config.limits;
    let body = read_body(req, limits.max_batch * (limits.max_message_size + 1024)).await?;
    // Each message is parsed on its own, so that any error names its index.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawBatch<'a> {
        #[serde(borrow)]
        messages: Vec<&'a RawValue>,
    }
    let batch: RawBatch = parse(&body)?;
    if batch.messages.is_empty() || batch.messages.len() > limits.max_batch {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {} messages",
            limits.max_batch
        )));
    }
    let plans = batch
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            parse(m.get().as_bytes())
                .and_then(|m| plan(&state, m))
                .map_err(|mut e| {
                    e.message = format!("messages[{i}]: {}", e.message);
                    e
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(plans.len());
    for plan in plans {
        results.push(run(&state, plan).await?);
    }
    Ok((StatusCode::OK, Json(json!({"results": results}))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server state, a connected socket and a connection slot on it.
    async fn connection(
        transport: crate::metrics::Transport,
    ) -> (
        AppState,
        tokio::net::TcpStream,
        crate::metrics::ConnectionSlot,
    ) {
        let hub = Arc::new(herald_core::Hub::with_policy(Default::default()));
        let broker = Arc::new(herald_broker::MemoryBroker::new(hub.clone()));
        let engine = herald_core::Engine::new(hub, broker);
        let config = crate::Config::default();
        let state = AppState::new(engine, config, crate::Shutdown::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, _peer) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let slot = state.metrics.take(transport, 1).unwrap();
        (state, stream.unwrap(), slot)
    }

    /// Every native stream's task holds its future for the connection's
    /// life, in a tokio cell that adds ~120 bytes, allocated from
    /// jemalloc's size classes (…, 1,536, 1,792, 2,048, 2,560, …): a future
    /// that grows past its class costs every idle connection the next
    /// class's difference, a tenth or more of its memory (docs/benchmarks.md).
    #[tokio::test]
    async fn a_websocket_sessions_task_fits_its_size_class() {
        let (state, stream, slot) = connection(crate::metrics::Transport::Ws).await;
        let session = Session::new(state.clone(), Arc::new(WsFormat));
        let dialect = NativeWs::new(&state);
        let task = ws::run_tcp(state, stream, Bytes::new(), session, dialect, slot, None);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2_432, "a native WebSocket's task is {size} bytes");
    }

    #[tokio::test]
    async fn an_sse_streams_task_fits_its_size_class() {
        let (state, stream, slot) = connection(crate::metrics::Transport::Sse).await;
        let session = Session::new(state.clone(), Arc::new(SseFormat));
        let style = SseStyle {
            preamble: Bytes::new(),
            heartbeat: Bytes::new(),
            reconnect: Bytes::new(),
            disconnected: Bytes::new(),
            cursor: Some(Cursor::default()),
        };
        let task = sse::run_tcp(state, stream, session, sse::tcp_style(style, None), slot);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1_408, "a native SSE stream's task is {size} bytes");
    }

    #[test]
    fn hand_written_answers_are_what_serde_writes() {
        let one = || Outcome::One {
            id: Arc::from("0193-id"),
            offset: u64::MAX,
            epoch: Arc::from("e\"1"),
            subscribers: 12,
        };
        let many = Outcome::Many {
            id: Arc::from("m"),
            subscribers: 3,
            channels: vec![Landed {
                channel: "a".into(),
                offset: 1,
                epoch: Arc::from("e"),
            }],
        };
        for outcome in [one(), many] {
            let mut out = Vec::new();
            outcome.write_json(&mut out);
            assert_eq!(out, serde_json::to_vec(&outcome).unwrap());
        }
        let raw = serde_json::value::RawValue::from_string(r#"{"n": [1]}"#.into()).unwrap();
        for id in [None, Some(&*raw)] {
            let answer = Answer {
                id,
                result: Some(Done::Published(one())),
                error: None,
            };
            let Reply { frames, .. } = answer.frame();
            assert_eq!(frames[0], serde_json::to_vec(&answer).unwrap());
        }
    }

    #[test]
    fn the_envelope_is_json_with_every_field_and_fits_its_first_allocation() {
        let app: Arc<str> = Arc::from("default");
        let key = ChannelKey::new(&app, "room-1").unwrap();
        let mut publication = Publication::new(Bytes::from_static(br#"{"x":[1,2]}"#));
        publication.event = Some("chat".into());
        let msg = Message::new(key, publication, u64::MAX, Arc::from("e-1"));
        let bytes = envelope(&msg);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"channel": "room-1", "id": &*msg.publication.id, "offset": u64::MAX,
                   "epoch": "e-1", "event": "chat", "data": {"x": [1, 2]}})
        );
        // The longest offset and an event still need no second allocation.
        assert_eq!(
            bytes.len(),
            bytes.capacity(),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
