//! Native targeted delivery: `POST /api/v1/send` to connections by identity,
//! optionally waiting for the receiver's ack. See docs/targeting.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{AckOutcome, AckPolicy, Filter, Identity, TargetFormat, Targeted};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::auth::USER_DIM;
use crate::dialect::native::{SseFormat, WsFormat};
use crate::dialect::{one_line_json, push_json_str};
use crate::error::ApiError;
use crate::http::read_json;
use crate::state::AppState;

/// An identity as JSON: the token's `sub` and labels.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityBody {
    /// The user id (`sub` of the connection's token).
    user: Option<String>,
    /// Further dimensions, e.g. `{"device": "phone-1"}`.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl IdentityBody {
    fn identity(&self) -> Result<Identity, ApiError> {
        if self.labels.contains_key(USER_DIM) {
            return Err(ApiError::bad_request(
                "give the user as 'user', not as a label",
            ));
        }
        Ok(Identity::new(
            self.user
                .iter()
                .map(|u| (USER_DIM.to_owned(), u.clone()))
                .chain(self.labels.clone()),
        ))
    }
}

/// Which connections receive a targeted message.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterBody {
    /// Match this user; absent matches any.
    user: Option<String>,
    /// Match these dimensions; absent ones match any.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Deliver to exactly one match, round-robin per message.
    #[serde(default)]
    find_any: bool,
    /// Exact identities to skip.
    #[serde(default)]
    exclude: Vec<IdentityBody>,
}

impl FilterBody {
    fn filter(&self) -> Result<Filter, ApiError> {
        let dims = IdentityBody {
            user: self.user.clone(),
            labels: self.labels.clone(),
        }
        .identity()?;
        Ok(Filter {
            dims,
            find_any: self.find_any,
            exclude: self
                .exclude
                .iter()
                .map(IdentityBody::identity)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// `POST /api/v1/send` request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    filter: FilterBody,
    /// Any JSON value.
    #[schema(value_type = Object)]
    data: Box<RawValue>,
    event: Option<String>,
    /// Message id (kept on retries); a UUIDv7 when absent.
    id: Option<String>,
    /// Wait until a receiver acknowledges.
    #[serde(default)]
    ack: bool,
    /// Per-attempt ack timeout; `delivery.ack_timeout` when absent.
    timeout_ms: Option<u64>,
}

/// `POST /api/v1/send` reply.
#[derive(Serialize, ToSchema)]
pub(crate) struct SendResponse {
    id: String,
    /// Connections the filter selected on the first attempt.
    matched: usize,
    /// Of those, connections the message was queued for.
    delivered: usize,
    /// With `ack`: true (a timeout is a 408).
    #[serde(skip_serializing_if = "Option::is_none")]
    acked: Option<bool>,
    /// With `ack`: attempts made.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
}

/// Native WebSocket clients receive targeted messages as
/// `{"type":"message","id","event"?,"ack"?,"data"}`.
impl TargetFormat for WsFormat {
    fn encode_targeted(&self, msg: &Targeted) -> Bytes {
        let mut out = Vec::with_capacity(64 + msg.data.len());
        push_targeted_json(&mut out, msg);
        Bytes::from(out)
    }
}

/// Native SSE clients receive the same JSON as an event's data, under the
/// message's `event` name (the default `message` without one) and with no
/// `id:` line, so it never moves the stream's resume cursor.
impl TargetFormat for SseFormat {
    fn encode_targeted(&self, msg: &Targeted) -> Bytes {
        let mut out = Vec::with_capacity(80 + msg.data.len());
        if let Some(event) = &msg.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(event.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        push_targeted_json(&mut out, msg);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// `{"type":"message","id","event"?,"ack"?,"data"}`.
fn push_targeted_json(out: &mut Vec<u8>, msg: &Targeted) {
    out.extend_from_slice(b"{\"type\":\"message\",\"id\":");
    push_json_str(out, &msg.id);
    if let Some(event) = &msg.event {
        out.extend_from_slice(b",\"event\":");
        push_json_str(out, event);
    }
    if msg.ack {
        out.extend_from_slice(b",\"ack\":true");
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&msg.data);
    out.push(b'}');
}

/// Sends to connections by identity. With `ack`, waits for a receiver's
/// ack: 200 acked, 408 not acked in time, 404 nobody matched.
#[utoipa::path(post, path = "/api/v1/send", tag = "native",
    request_body = SendRequest,
    responses((status = 200, description = "Delivered (or, with ack, acknowledged)", body = SendResponse),
        (status = 400, description = "Malformed request"),
        (status = 404, description = "With ack: no connection matched"),
        (status = 408, description = "With ack: not acknowledged in time"),
        (status = 409, description = "With ack: this id is already waiting for an ack")))]
pub(crate) async fn send(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let r: SendRequest = read_json(req, state.config.limits.max_message_size + 64 * 1024).await?;
    let filter = r.filter.filter()?;
    let max = state.config.limits.max_message_size;
    if r.data.get().len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("data is larger than {max} bytes"),
        ));
    }
    let mut msg = Targeted::new(one_line_json(&r.data));
    if let Some(id) = &r.id {
        msg.id = Arc::from(label("id", id)?);
    }
    if let Some(event) = &r.event {
        msg.event = Some(Arc::from(label("event", event)?));
    }
    let id = msg.id.to_string();
    if !r.ack {
        let out = state.engine.send(&filter, msg).await?;
        return Ok(Json(SendResponse {
            id,
            matched: out.matched,
            delivered: out.delivered,
            acked: None,
            attempts: None,
        })
        .into_response());
    }
    let delivery = &state.config.delivery;
    let timeout = r
        .timeout_ms
        .map_or(delivery.ack_timeout, Duration::from_millis);
    if timeout.is_zero() || timeout > delivery.max_ack_timeout {
        return Err(ApiError::bad_request(format!(
            "'timeout_ms' must be 1 to {}",
            delivery.max_ack_timeout.as_millis()
        )));
    }
    let policy = AckPolicy {
        timeout,
        attempts: delivery.ack_attempts,
        backoff: delivery.ack_backoff,
    };
    match state.engine.send_acked(&filter, msg, policy).await? {
        AckOutcome::Acked {
            attempts, first, ..
        } => Ok(Json(SendResponse {
            id,
            matched: first.matched,
            delivered: first.delivered,
            acked: Some(true),
            attempts: Some(attempts),
        })
        .into_response()),
        AckOutcome::TimedOut { attempts, .. } => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "ack_timeout",
            format!(
                "not acknowledged after {attempts} attempt(s) of {} ms",
                timeout.as_millis()
            ),
        )),
        AckOutcome::NotConnected => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_connected",
            "no connection matches the filter",
        )),
        AckOutcome::InFlight => Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_flight",
            format!("message {id} is already waiting for an ack"),
        )),
    }
}

/// Ids and event names: short, printable.
fn label<'a>(what: &str, s: &'a str) -> Result<&'a str, ApiError> {
    if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "'{what}' must be 1 to 128 bytes without control characters"
        )));
    }
    Ok(s)
}

/// The reply to a native `ack` command.
pub(crate) fn ack_result(acked: bool) -> serde_json::Value {
    json!({ "acked": acked })
}

/// `POST /api/v1/ack` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckRequest {
    /// The receiver key the SSE stream announced (`event: identified`).
    receiver: String,
    /// The id of the message being acknowledged.
    id: String,
}

/// `POST /api/v1/disconnect` request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectRequest {
    /// Which connections: a user, labels, exclusions (`find_any` is
    /// refused); at least one dimension, so that no request empties the
    /// server by accident.
    filter: FilterBody,
}

/// `POST /api/v1/disconnect` reply.
#[derive(Serialize, ToSchema)]
pub(crate) struct DisconnectResponse {
    /// Connections closed, on every node.
    disconnected: usize,
}

/// Closes every connection the filter selects, on every node: a WebSocket
/// with 4009 (don't reconnect), an SSE stream with a `disconnected` event.
/// Their tokens stay valid: revoke those too to keep a client out.
#[utoipa::path(post, path = "/api/v1/disconnect", tag = "native",
    request_body = DisconnectRequest,
    responses((status = 200, description = "Closed", body = DisconnectResponse),
        (status = 400, description = "Malformed request, a filter naming no dimension, or `find_any`")))]
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<DisconnectResponse>, ApiError> {
    let r: DisconnectRequest = read_json(req, 64 * 1024).await?;
    if r.filter.find_any {
        return Err(ApiError::bad_request("'find_any' makes no sense here"));
    }
    let filter = r.filter.filter()?;
    if filter.dims.is_empty() {
        return Err(ApiError::bad_request(
            "the filter must name a user or a label: an empty one selects every connection",
        ));
    }
    let out = state.engine.disconnect(&filter).await?;
    tracing::info!(
        identity = ?filter.dims.dims(),
        disconnected = out.delivered,
        "Connections disconnected."
    );
    Ok(Json(DisconnectResponse {
        disconnected: out.delivered,
    }))
}

/// `POST /api/v1/revoke` request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// Whose tokens: their `sub`.
    user: String,
    /// Tokens issued (`iat`) at or before this Unix second are refused;
    /// default now. A later second keeps the user out until then.
    until: Option<u64>,
}

/// How far ahead a revocation's `until` may be.
const MAX_BAN: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// `POST /api/v1/revoke` reply.
#[derive(Serialize, ToSchema)]
pub(crate) struct RevokeResponse {
    user: String,
    /// The last second whose tokens are revoked.
    until: u64,
    /// The user's connections closed, on every node.
    disconnected: usize,
}

/// Revokes a user's tokens issued up to `until` (tokens without `iat`
/// too), on every node, for `auth.revocation_ttl`, and closes the user's
/// connections as `POST /api/v1/disconnect` does: what a ban or a "log out
/// everywhere" needs.
#[utoipa::path(post, path = "/api/v1/revoke", tag = "native",
    request_body = RevokeRequest,
    responses((status = 200, description = "Revoked", body = RevokeResponse),
        (status = 400, description = "Malformed request or an empty user")))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<RevokeResponse>, ApiError> {
    let r: RevokeRequest = read_json(req, 4096).await?;
    let user = label("user", &r.user)?;
    let now = herald_core::message::now_ms() / 1000;
    let until = r.until.unwrap_or(now);
    // A ban is for a while, not for ever: its record must be able to expire.
    if until > now + MAX_BAN.as_secs() {
        return Err(ApiError::bad_request(
            "'until' is more than ten years ahead",
        ));
    }
    crate::revocations::revoke(&state, user, until).await?;
    let filter = Filter::new(Identity::new([(USER_DIM, user)]));
    let out = state.engine.disconnect(&filter).await?;
    tracing::info!(user, until, disconnected = out.delivered, "Tokens revoked.");
    Ok(Json(RevokeResponse {
        user: user.to_owned(),
        until,
        disconnected: out.delivered,
    }))
}

/// Acknowledges a targeted message for an SSE connection, which cannot
/// answer on its stream: 200 `{"acked": bool}` (false when the connection
/// owed no such ack), 403 for a key this server did not issue.
#[utoipa::path(post, path = "/api/v1/ack", tag = "native",
    request_body = AckRequest,
    responses((status = 200, description = "{acked: bool}"),
        (status = 400, description = "Malformed request"),
        (status = 403, description = "Unknown receiver key")))]
pub(crate) async fn ack(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r: AckRequest = read_json(req, 4096).await?;
    let receiver = state.receivers.verify(&r.receiver).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not a receiver key of this server",
        )
    })?;
    let acked = state
        .engine
        .acknowledge_on(receiver.node.as_deref(), receiver.conn, &r.id)
        .await?;
    Ok(Json(ack_result(acked)))
}
