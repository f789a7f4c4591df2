//! `POST /api/v1/push`: notifications over HTTP instead of Kafka, in the
//! same formats, answered once every provider has answered. The same
//! reporting follows (stats, dead tokens, feedback), so an app can use
//! either door.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::Platform;
use crate::pipeline::{Delivery, Shared};
use crate::topic::Route;

/// The path the routes answer.
pub const PATH: &str = "/api/v1/push";
/// Notifications per request, at most: one request must stay one bounded
/// piece of work.
const MAX_NOTIFICATIONS: usize = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    notifications: Vec<Item>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    /// `apns`, `gcm` or `webpush`.
    platform: String,
    /// The app whose credentials send it.
    app: String,
    /// The notification, exactly as on the app's Kafka topic.
    notification: Box<RawValue>,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().route(PATH, post(push)).with_state(shared)
}

/// Herald's error answer: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

async fn push(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        // Over axum's 2 MiB body limit, or a broken upload.
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(e.status(), "body_too_large", e.body_text());
        }
        Err(e) => return error(e.status(), "bad_request", e.body_text()),
    };
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("invalid body: {e}")),
    };
    if batch.notifications.is_empty() || batch.notifications.len() > MAX_NOTIFICATIONS {
        return bad_request(format!(
            "notifications: 1 to {MAX_NOTIFICATIONS} per request"
        ));
    }
    let mut routes = Vec::with_capacity(batch.notifications.len());
    for (i, item) in batch.notifications.iter().enumerate() {
        let Some(platform) = Platform::from_name(&item.platform) else {
            return bad_request(format!(
                "notifications[{i}].platform: {:?} is not apns, gcm or webpush",
                item.platform
            ));
        };
        routes.push(Route {
            app: item.app.clone(),
            platform,
        });
    }
    let deliveries = batch
        .notifications
        .iter()
        .zip(&routes)
        .map(|(item, route)| {
            let shared = &shared;
            async move {
                // Apps come from the request here, not from a topic an operator
                // made: only configured ones reach the stats' labels.
                if !shared.serves(route) {
                    return Delivery::Skipped {
                        reason: "unknown-app",
                        detail: format!(
                            "no {} credentials for app {:?}",
                            route.platform.as_str(),
                            route.app
                        ),
                    };
                }
                shared
                    .deliver(route, "http", item.notification.get().as_bytes())
                    .await
            }
        });
    let results: Vec<Value> = futures_util::future::join_all(deliveries)
        .await
        .into_iter()
        .map(|d| match d {
            Delivery::Skipped { reason, detail } => {
                json!({"sent": false, "reason": reason, "description": detail})
            }
            Delivery::Answered {
                token,
                result: Ok(sent),
            } => json!({"sent": true, "token": token, "id": sent.id}),
            Delivery::Answered {
                token,
                result: Err(r),
            } => json!({
                "sent": false,
                "token": token,
                "status": r.status,
                "reason": r.reason,
                "description": r.description,
                "invalid_token": r.invalid_token,
            }),
        })
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}
