//! `/api/v1/channels`: push-api's channel records (`{"id","ttl","created"}`,
//! gone after `ttl` seconds; kept when `ttl` is 0), and its persistent-
//! channels worker, which publishes `ping` to every record periodically.
//! The records live in the broker, so every node of a cluster shares them.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::{BrokerError, Record};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, error, gin_json, go_json, messages};
use crate::dialect::utc::Utc;
use crate::http::extract::Path;

/// A channel as push-api stores and returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PushApiChannel)]
pub(crate) struct Channel {
    pub(crate) id: String,
    /// Seconds, as given (push-api keeps Go's `time.Duration` count).
    pub(crate) ttl: i64,
    /// RFC 3339 UTC creation time.
    pub(crate) created: String,
}

/// The create body, read by [`go_json`]: fields of the wrong type fail as
/// Go's decoder does.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PushApiNewChannel)]
struct CreateBody {
    id: Option<String>,
    /// Seconds the record lives; 0 or none keeps it.
    ttl: Option<i64>,
}

/// The live records, oldest first.
async fn live(state: &ApiState) -> Result<Vec<Channel>, BrokerError> {
    let records = state
        .ps
        .app
        .engine
        .broker()
        .records(&state.record_kind)
        .await?;
    Ok(records
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect())
}

/// A storage failure: push-api answers 500 with the operation's code.
fn failed(code: u16, e: &BrokerError) -> Response {
    tracing::warn!(error = %e, "push-api channel store unavailable.");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        code,
        "channel store unavailable",
    )
}

/// The longest `ttl`, in seconds: push-api's `time.Duration(ttl) *
/// time.Second` overflows past it (292 years), and Redis' scripts count
/// expiry times in exact integers of milliseconds only far below.
const MAX_TTL: i64 = i64::MAX / 1_000_000_000;

/// `POST /api/v1/channels` → 201, or 400 with code 10 (bad body or a `ttl`
/// past [`MAX_TTL`]) or 11 (exists), 500 with code 12 (store unavailable).
#[utoipa::path(post, path = "/api/v1/channels", tag = "push-api",
    operation_id = "pushapi_create_channel", summary = "Creates a channel record",
    security(("push_api_basic" = [])),
    request_body = CreateBody,
    responses((status = 201, description = "Created"),
        (status = 400, description = "Code 10: invalid body, or a ttl over 9,223,372,036 s; \
            code 11: the channel exists",
            body = ApiError),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 500, description = super::DOC_STORE, body = ApiError)))]
pub(crate) async fn create(State(state): State<ApiState>, body: Bytes) -> Response {
    let Some(body) = go_json::<CreateBody>(&body, &["id", "ttl"]) else {
        return error(StatusCode::BAD_REQUEST, 10, "invalid request body");
    };
    let id = body.id.unwrap_or_default();
    let ttl = body.ttl.unwrap_or(0);
    if ttl > MAX_TTL {
        return error(StatusCode::BAD_REQUEST, 10, "ttl too large");
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let channel = Channel {
        id: id.clone(),
        ttl,
        created: Utc::from_nanos(now_ns).rfc3339_nano(),
    };
    let record = Record {
        id: id.clone(),
        value: serde_json::to_vec(&channel).unwrap_or_default().into(),
        created_ms: u64::try_from(now_ns / 1_000_000).unwrap_or(u64::MAX),
    };
    // A ttl of 0 (or less) keeps the record.
    let keep_for = u64::try_from(ttl)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let broker = state.ps.app.engine.broker();
    match broker
        .create_record(&state.record_kind, record, keep_for)
        .await
    {
        Ok(true) => {
            tracing::debug!(channel = %id, ttl, "push-api channel created.");
            StatusCode::CREATED.into_response()
        }
        Ok(false) => error(
            StatusCode::BAD_REQUEST,
            11,
            "a channel with this id already exists",
        ),
        Err(e) => failed(12, &e),
    }
}

/// `GET /api/v1/channels`, oldest first.
#[utoipa::path(get, path = "/api/v1/channels", tag = "push-api",
    operation_id = "pushapi_list_channels", summary = "Lists the channel records, oldest first",
    security(("push_api_basic" = [])),
    responses((status = 200, description = "The live records", body = [Channel]),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 500, description = super::DOC_STORE, body = ApiError)))]
pub(crate) async fn list(State(state): State<ApiState>) -> Response {
    match live(&state).await {
        Ok(channels) => gin_json(StatusCode::OK, &channels),
        Err(e) => failed(21, &e),
    }
}

/// `GET /api/v1/channels/{id}` → the record, or 404 with code 20.
#[utoipa::path(get, path = "/api/v1/channels/{id}", tag = "push-api",
    operation_id = "pushapi_get_channel", summary = "A channel record",
    security(("push_api_basic" = [])),
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "The record", body = Channel),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 20: not found", body = ApiError),
        (status = 500, description = super::DOC_STORE, body = ApiError)))]
pub(crate) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let broker = state.ps.app.engine.broker();
    let channel = broker
        .record(&state.record_kind, &id)
        .await
        .map(|r| r.and_then(|r| serde_json::from_slice::<Channel>(&r.value).ok()));
    match channel {
        Ok(Some(c)) => gin_json(StatusCode::OK, &c),
        Ok(None) => error(StatusCode::NOT_FOUND, 20, "channel not found"),
        Err(e) => failed(21, &e),
    }
}

/// `DELETE /api/v1/channels/{id}` → 204, or 404 with code 30.
#[utoipa::path(delete, path = "/api/v1/channels/{id}", tag = "push-api",
    operation_id = "pushapi_delete_channel", summary = "Deletes a channel record",
    security(("push_api_basic" = [])),
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 30: not found", body = ApiError),
        (status = 500, description = super::DOC_STORE, body = ApiError)))]
pub(crate) async fn delete(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state
        .ps
        .app
        .engine
        .broker()
        .delete_record(&state.record_kind, &id)
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, 30, "channel not found"),
        Err(e) => failed(31, &e),
    }
}

/// Starts the persistent-channels worker: every `persistent_ping_interval`,
/// `ping` to every live record's channel. On a cluster one node pings per
/// interval: the one that takes the interval's lease. Stops at shutdown.
pub(crate) fn start_keepalive(state: &ApiState) {
    let every = state.ps.app.config.pushapi.persistent_ping_interval;
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if every.is_zero() {
        return;
    }
    let state = state.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = state.ps.app.shutdown.signalled() => return,
                () = state.retired.cancelled() => return,
                _ = tick.tick() => {}
            }
            let broker = state.ps.app.engine.broker();
            // Slightly shorter than the interval, so the next tick finds it free.
            let lease = every.mul_f64(0.9);
            let name = format!("{}:keepalive", state.record_kind);
            if !matches!(broker.lease(&name, lease).await, Ok(true)) {
                continue;
            }
            match live(&state).await {
                Ok(channels) => {
                    let ids: Vec<String> = channels.into_iter().map(|c| c.id).collect();
                    // Failures are logged per channel; the next tick pings again.
                    let _ = messages::deliver(&state, &ids, "ping").await;
                }
                Err(e) => tracing::debug!(error = %e, "push-api keep-alive skipped."),
            }
        }
    });
}
