//! `/api/v1/channels`: push-api's channel records (`{"id","ttl","created"}`,
//! gone after `ttl` seconds; kept when `ttl` is 0), and its persistent-
//! channels worker, which publishes `ping` to every record periodically.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{ApiState, error, gin_json, messages};
use crate::dialect::utc::Utc;

/// A channel as push-api stores and returns it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Channel {
    pub(crate) id: String,
    /// Seconds, as given (push-api keeps Go's `time.Duration` count).
    pub(crate) ttl: i64,
    /// RFC 3339 UTC creation time.
    pub(crate) created: String,
}

/// One stored record.
struct Record {
    channel: Channel,
    /// Creation order, for listing.
    created_ns: u128,
    /// When the record expires; `None` keeps it.
    expires: Option<Instant>,
}

/// The records, by id.
#[derive(Default)]
pub(crate) struct Store {
    /// Held only for map operations.
    records: Mutex<HashMap<String, Record>>,
}

impl Store {
    /// The live records, oldest first; expired ones are dropped.
    pub(crate) fn live(&self) -> Vec<Channel> {
        let now = Instant::now();
        let mut records = self.records.lock();
        records.retain(|_, r| r.expires.is_none_or(|t| t > now));
        let mut all: Vec<(u128, Channel)> = records
            .values()
            .map(|r| (r.created_ns, r.channel.clone()))
            .collect();
        all.sort_by_key(|(ns, _)| *ns);
        all.into_iter().map(|(_, c)| c).collect()
    }

    fn get(&self, id: &str) -> Option<Channel> {
        let mut records = self.records.lock();
        match records.get(id) {
            Some(r) if r.expires.is_some_and(|t| t <= Instant::now()) => {
                records.remove(id);
                None
            }
            Some(r) => Some(r.channel.clone()),
            None => None,
        }
    }
}

/// The create body; fields of the wrong type fail as Go's decoder does.
#[derive(Deserialize)]
struct CreateBody {
    id: Option<String>,
    ttl: Option<i64>,
}

/// `POST /api/v1/channels` → 201, or 400 with code 10 (bad body) or 11 (exists).
pub(crate) async fn create(State(state): State<ApiState>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<CreateBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, 10, "invalid request body");
    };
    let id = body.id.unwrap_or_default();
    let ttl = body.ttl.unwrap_or(0);
    if state.channels.get(&id).is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            11,
            "a channel with this id already exists",
        );
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let channel = Channel {
        id: id.clone(),
        ttl,
        created: Utc::from_nanos(now_ns).rfc3339_nano(),
    };
    let expires = u64::try_from(ttl)
        .ok()
        .filter(|s| *s > 0)
        .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
    tracing::debug!(channel = %id, ttl, "push-api channel created.");
    state.channels.records.lock().insert(
        id,
        Record {
            channel,
            created_ns: now_ns,
            expires,
        },
    );
    StatusCode::CREATED.into_response()
}

/// `GET /api/v1/channels`.
pub(crate) async fn list(State(state): State<ApiState>) -> Response {
    gin_json(StatusCode::OK, &state.channels.live())
}

/// `GET /api/v1/channels/{id}` → the record, or 404 with code 20.
pub(crate) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.channels.get(&id) {
        Some(c) => gin_json(StatusCode::OK, &c),
        None => error(StatusCode::NOT_FOUND, 20, "channel not found"),
    }
}

/// `DELETE /api/v1/channels/{id}` → 204, or 404 with code 30.
pub(crate) async fn delete(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    if state.channels.get(&id).is_none() {
        return error(StatusCode::NOT_FOUND, 30, "channel not found");
    }
    state.channels.records.lock().remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

/// Starts the persistent-channels worker: every `persistent_ping_interval`,
/// `ping` to every live record's channel. Stops at shutdown.
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
                _ = tick.tick() => {}
            }
            let ids: Vec<String> = state.channels.live().into_iter().map(|c| c.id).collect();
            messages::deliver(&state, &ids, "ping").await;
        }
    });
}
