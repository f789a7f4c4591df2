//! The channel API: list, stats, history, delete.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_core::{ChannelInfo, Position, Recovery};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{envelope, position_json};
use crate::access::{Grants, Readable, grants_of};
use crate::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::state::AppState;

/// Most messages one history request returns.
const MAX_HISTORY_PAGE: usize = 1000;

fn info_json(i: &ChannelInfo) -> Value {
    json!({
        "channel": i.key.name(),
        "subscribers": i.subscribers,
        "published": i.published,
        "stored": i.stored,
        "position": {"offset": i.next_offset - 1, "epoch": i.epoch},
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no channel {name:?}"),
    )
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    token: Option<String>,
}

/// `GET /api/v1/channels`: every channel with subscribers or stored
/// messages, on any node of a cluster, that the request may read: a
/// protected one only with a publisher key or a token that grants it.
#[utoipa::path(get, path = "/api/v1/channels", tag = "native",
    params(("token" = Option<String>, Query, description = "JWT whose grants add protected channels")),
    responses((status = 200, description = "Channels"), (status = 503, description = "The broker could not list channels")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let grants = match state.access.protects() {
        true => grants_of(&state, q.token.as_deref(), &headers)?,
        false => Grants::default(),
    };
    let infos = state.engine.channel_infos(&state.default_app).await?;
    let channels: Vec<Value> = (infos.iter())
        .filter(|i| state.access.may_read(&i.key, &grants))
        .map(info_json)
        .collect();
    Ok(Json(json!({"channels": channels})))
}

/// `GET /api/v1/channels/{ch}`.
#[utoipa::path(get, path = "/api/v1/channels/{channel}", tag = "native", params(("channel" = String, Path, description = "Channel name"),
        ("token" = Option<String>, Query, description = "JWT granting a protected channel")),
    responses((status = 200, description = "Channel counts"), (status = 403, description = "A protected channel, not granted"),
        (status = 404, description = "No such channel")))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Readable(key): Readable,
) -> Result<Json<Value>, ApiError> {
    let info = state
        .engine
        .channel_info(&key)
        .await?
        .ok_or_else(|| not_found(key.name()))?;
    Ok(Json(info_json(&info)))
}

/// `GET /api/v1/channels/{ch}/presence`: who is subscribed, on every node.
#[utoipa::path(get, path = "/api/v1/channels/{channel}/presence", tag = "native",
    params(("channel" = String, Path, description = "Channel name"),
        ("token" = Option<String>, Query, description = "JWT granting a protected channel")),
    responses((status = 200, description = "`{channel, connections, users: [{user, connections}], anonymous}`"),
        (status = 403, description = "A protected channel, not granted")))]
pub(crate) async fn presence(
    State(state): State<AppState>,
    Readable(key): Readable,
) -> Result<Json<Value>, ApiError> {
    let presence = state.engine.presence(&key).await?;
    let connections = presence.users.values().sum::<usize>() + presence.anonymous;
    let users: Vec<Value> = presence
        .users
        .iter()
        .map(|(user, n)| json!({"user": user, "connections": n}))
        .collect();
    Ok(Json(json!({
        "channel": key.name(),
        "connections": connections,
        "users": users,
        "anonymous": presence.anonymous,
    })))
}

/// `DELETE /api/v1/channels/{ch}`: subscribers are told and unsubscribed;
/// history is dropped (the next message starts a new epoch).
#[utoipa::path(delete, path = "/api/v1/channels/{channel}", tag = "native", params(("channel" = String, Path, description = "Channel name")),
    responses((status = 200, description = "Deleted")))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = state.channel(&name)?;
    state.check_writable(&key)?;
    let subscribers = state
        .engine
        .delete(&key)
        .await?
        .ok_or_else(|| not_found(&name))?;
    tracing::info!(channel = %key, subscribers, "Channel deleted.");
    Ok(Json(json!({"deleted": true, "subscribers": subscribers})))
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    /// Return messages after this offset …
    since: Option<u64>,
    /// … of this epoch (required with `since`).
    epoch: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/channels/{ch}/history?since=&epoch=&limit=`: stored
/// messages, oldest first. Without `since`, the newest `limit`.
#[utoipa::path(get, path = "/api/v1/channels/{channel}/history", tag = "native", params(("channel" = String, Path, description = "Channel name"),
        ("token" = Option<String>, Query, description = "JWT granting a protected channel")),
    responses((status = 200, description = "Stored messages, oldest first"), (status = 400, description = "`since` without `epoch`, or the reverse"),
        (status = 403, description = "A protected channel, not granted")))]
pub(crate) async fn history(
    State(state): State<AppState>,
    Readable(key): Readable,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_HISTORY_PAGE);
    let since = match (q.since, q.epoch) {
        (Some(offset), Some(epoch)) => Some(Position {
            offset,
            epoch: epoch.into(),
        }),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("'since' and 'epoch' go together")),
    };
    let page = state
        .engine
        .history(&key, since.as_ref().map(|p| p.offset), limit)
        .await?
        .ok_or_else(|| not_found(key.name()))?;
    let head = &page.position;
    let recovery = since.as_ref().map(|pos| {
        if pos.epoch != head.epoch {
            Recovery::EpochChanged
        } else if pos.offset < head.offset
            && page
                .messages
                .first()
                .is_none_or(|m| m.offset > pos.offset + 1)
        {
            Recovery::TooOld
        } else {
            Recovery::Recovered
        }
    });
    let messages: Vec<Box<RawValue>> = if recovery.is_none_or(|r| r == Recovery::Recovered) {
        page.messages
            .iter()
            .filter_map(|m| RawValue::from_string(String::from_utf8(envelope(m)).ok()?).ok())
            .collect()
    } else {
        Vec::new()
    };
    Ok(Json(HistoryPage {
        channel: key.name().to_owned(),
        position: position_json(head),
        recovery,
        messages,
    }))
}

/// A page of history. Messages stay raw JSON, never parsed again: what a
/// publish was accepted with is served as it was.
#[derive(Serialize)]
pub(crate) struct HistoryPage {
    channel: String,
    position: Value,
    recovery: Option<Recovery>,
    messages: Vec<Box<RawValue>>,
}
