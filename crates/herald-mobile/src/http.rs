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
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::Platform;
use crate::pipeline::{Delivery, Shared};
use crate::topic::Route;

/// The path the routes answer.
pub const PATH: &str = "/api/v1/push";
/// Notifications per request, at most: one request must stay one bounded
/// piece of work.
const MAX_NOTIFICATIONS: usize = 1_000;
/// Users per notification, at most.
const MAX_USERS: usize = 1_000;
/// Devices that one request's `users` may fan out to, in all.
const MAX_REQUEST_DEVICES: usize = 10_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MobilePushRequest)]
struct Batch {
    /// 1 to 1000.
    notifications: Vec<Item>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MobileNotification)]
struct Item {
    /// `apns`, `gcm` or `webpush`.
    platform: String,
    /// The app whose credentials send it.
    app: String,
    /// The notification, exactly as on the app's Kafka topic.
    #[schema(value_type = Object)]
    notification: Box<RawValue>,
    /// Send to every device of these users instead (APNs and GCM): their
    /// tokens are read from the app's token table, the seed's
    /// `<app>_<platform>(user_id, token, …)`.
    #[serde(default)]
    users: Option<Vec<String>>,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().route(PATH, post(push)).with_state(shared)
}

#[derive(OpenApi)]
#[openapi(
    paths(push),
    tags((name = "mobile", description = "Mobile push over HTTP (docs/mobile.md); served \
        when `[mobile] enabled = true`"))
)]
struct ApiDoc;

/// The routes' OpenAPI entries, for the server's `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Herald's error answer: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Sends notifications through APNs, FCM or Web Push, answering once
/// every provider has.
#[utoipa::path(post, path = PATH, tag = "mobile",
    operation_id = "mobile_push",
    description = "The reporting of the Kafka door follows (stats, dead tokens, feedback). \
        `results` holds one entry per notification, or per device of its `users`: \
        `{\"sent\": true, \"token\", \"id\"}`, or `{\"sent\": false, \"reason\", ...}` \
        with the provider's `status`, `description` and `invalid_token` when it refused.",
    request_body = Batch,
    responses((status = 200, description = "`{\"results\": [...]}`"),
        (status = 400, description = "`{\"error\": {\"code\": \"bad_request\", \"message\"}}`: \
            invalid body, 0 or over 1000 notifications, an unknown platform, or `users` \
            that cannot be served"),
        (status = 413, description = "`{\"error\": {\"code\": \"body_too_large\", \"message\"}}`: \
            over 2 MiB")))]
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
        if let Some(users) = &item.users {
            let why = if platform == Platform::WebPush {
                "a Web Push subscription is more than a token: send to it directly"
            } else if shared.table.is_none() {
                "pushing to users reads their tokens: set mobile.invalid_tokens.postgres_url"
            } else if users.is_empty() || users.len() > MAX_USERS {
                "users: 1 to 1000 per notification"
            } else {
                ""
            };
            if !why.is_empty() {
                return bad_request(format!("notifications[{i}].users: {why}"));
            }
        }
        routes.push(Route {
            app: item.app.clone(),
            platform,
        });
    }
    // Lookups share the budget in order; sends take the pipeline's permits.
    let budget = tokio::sync::Mutex::new(MAX_REQUEST_DEVICES);
    // By index: a closure over borrowed items trips the handler's `Send`
    // check (higher-ranked lifetimes).
    let items = &batch.notifications;
    let results: Vec<Vec<Value>> = stream::iter(0..items.len())
        .map(|i| deliver(&shared, &items[i], &routes[i], &budget))
        .buffered(shared.concurrency)
        .collect()
        .await;
    let results: Vec<Value> = results.into_iter().flatten().collect();
    axum::Json(json!({ "results": results })).into_response()
}

/// One push, counted with every other in flight (Kafka's too) against
/// `mobile.concurrency`.
async fn send(shared: &Shared, route: &Route, payload: &[u8]) -> Delivery {
    let _permit = shared
        .permits
        .acquire()
        .await
        .expect("the semaphore is never closed");
    shared.deliver(route, "http", payload).await
}

/// One item's results: one, or one per device of its users, taking those
/// devices out of the request's `budget`.
async fn deliver(
    shared: &Shared,
    item: &Item,
    route: &Route,
    budget: &tokio::sync::Mutex<usize>,
) -> Vec<Value> {
    // Apps come from the request here, not from a topic an operator made:
    // only configured ones reach the stats' labels.
    if !shared.serves(route) {
        let detail = format!(
            "no {} credentials for app {:?}",
            route.platform.as_str(),
            route.app
        );
        return vec![result(Delivery::Skipped {
            reason: "unknown-app",
            detail,
        })];
    }
    let (Some(users), Some(table)) = (&item.users, &shared.table) else {
        let payload = item.notification.get().as_bytes();
        return vec![result(send(shared, route, payload).await)];
    };
    let mut left = budget.lock().await;
    let (devices, cut) = match table.of_users(route, users, *left).await {
        Ok(mut devices) => {
            let cut = devices.len() > *left;
            devices.truncate(*left);
            *left -= devices.len();
            (devices, cut)
        }
        Err(e) => {
            tracing::warn!(app = %route.app, error = %e, "Users' tokens not read.");
            return vec![json!({
                "sent": false,
                "reason": "token-lookup-failed",
                "description": e.to_string(),
            })];
        }
    };
    drop(left);
    let Ok(Value::Object(template)) = serde_json::from_str::<Value>(item.notification.get()) else {
        return vec![result(Delivery::Skipped {
            reason: "invalid-json",
            detail: "the notification must be a JSON object".into(),
        })];
    };
    let token_key = match route.platform {
        Platform::Apns => "DeviceToken",
        _ => "to",
    };
    // Each copy is made when its turn comes, not all at once.
    let template = &template;
    let devices = &devices;
    let sends = (0..devices.len()).map(|i| {
        let (user, token) = &devices[i];
        async move {
            let payload = Value::Object(addressed(template, token_key, token)).to_string();
            let mut r = result(send(shared, route, payload.as_bytes()).await);
            r["user"] = Value::String(user.clone());
            r
        }
    });
    let mut out: Vec<Value> = stream::iter(sends)
        .buffered(shared.concurrency)
        .collect()
        .await;
    let missing = if cut { "device-limit" } else { "no-tokens" };
    for user in users {
        if !devices.iter().any(|(u, _)| u == user) {
            out.push(json!({"sent": false, "user": user, "reason": missing}));
        }
    }
    out
}

/// `template` sent to `token`: under `token_key`, and in place of a token
/// an FCM v1 template names itself (`message.token` wins over `to`).
fn addressed(template: &Map<String, Value>, token_key: &str, token: &str) -> Map<String, Value> {
    let mut notification = template.clone();
    notification.insert(token_key.into(), Value::String(token.into()));
    if let Some(Value::Object(v1)) = notification.get_mut("message")
        && v1.contains_key("token")
    {
        v1.insert("token".into(), Value::String(token.into()));
    }
    notification
}

/// A delivery as the reply shows it.
fn result(delivery: Delivery) -> Value {
    let (token, result, feedback) = match delivery {
        Delivery::Skipped { reason, detail } => {
            return json!({"sent": false, "reason": reason, "description": detail});
        }
        Delivery::Answered {
            token,
            result,
            feedback,
        } => (token, result, feedback),
    };
    // The reply does not wait for Kafka's acknowledgement; a failure is logged.
    tokio::spawn(feedback.delivered());
    match result {
        Ok(sent) => json!({"sent": true, "token": token, "id": sent.id}),
        Err(r) => json!({
            "sent": false,
            "token": token,
            "status": r.status,
            "reason": r.reason,
            "description": r.description,
            "invalid_token": r.invalid_token,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_copy_goes_to_its_own_device() {
        let legacy = json!({"notification": {"title": "hi"}});
        let Value::Object(legacy) = legacy else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(addressed(&legacy, "to", "phone")),
            json!({"to": "phone", "notification": {"title": "hi"}})
        );
        // An FCM v1 template naming a token: each copy's device replaces it.
        let v1 = json!({"message": {"token": "template", "data": {"a": "1"}}});
        let Value::Object(v1) = v1 else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(addressed(&v1, "to", "phone")),
            json!({"to": "phone", "message": {"token": "phone", "data": {"a": "1"}}})
        );
    }
}
