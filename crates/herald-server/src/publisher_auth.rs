//! Publisher keys: with `auth.api_keys` set, every route that publishes,
//! sends, deletes or mints connection tokens wants one of them, as
//! `Authorization: Bearer <key>` or `X-Api-Key: <key>`. Subscribing and
//! reading stay open (subscribers identify with their own tokens).
//!
//! Which routes those are is decided here, in one list, so a reader sees
//! the whole surface at once; push-api keeps its own basic auth.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{same_secret, unauthorized};
use crate::state::AppState;

/// Refuses publisher requests without a configured key (401); passes
/// everything else. Mounted only when keys are configured.
pub(crate) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ps = &state.config.pushstream;
    let ps_prefix = ps.enabled.then_some(ps.prefix.as_str());
    if !is_publisher(ps_prefix, req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    require_key(State(state), req, next).await
}

/// Refuses every request without a configured key (401): for routes that
/// only publish, such as the mobile push API.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match presented(req.headers()) {
        Some(key) if is_key(&state, key) => next.run(req).await,
        presented => {
            let why = if presented.is_some() {
                "the API key is not valid"
            } else {
                "this route needs an API key (Authorization: Bearer <key>)"
            };
            let mut res = unauthorized(why).into_response();
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
    }
}

/// Whether `method path` publishes, sends, deletes or mints tokens; push-stream
/// routes count when mounted under `ps_prefix`. Also marks the OpenAPI
/// document's operations, so the two cannot disagree.
pub(crate) fn is_publisher(ps_prefix: Option<&str>, method: &Method, path: &str) -> bool {
    // A browser's CORS preflight carries no credentials: it only asks.
    if let Some(prefix) = ps_prefix
        && path.strip_prefix(prefix) == Some("/pub")
    {
        return *method != Method::OPTIONS;
    }
    match *method {
        Method::POST => matches!(
            path,
            "/api/v1/publish"
                | "/api/v1/publish/batch"
                | "/api/v1/send"
                | "/api/v1/disconnect"
                | "/api/v1/revoke"
                | "/messages"
                | "/open-connection"
                | "/open-connection-pool"
                | "/send-notification"
                | "/send-notification-with-acknowledge"
                | "/send-notification-with-delivery-guarantee"
        ),
        Method::DELETE => path.starts_with("/api/v1/channels/"),
        // The router answers HEAD with the GET handler.
        Method::GET | Method::HEAD => path.starts_with("/sign-in/"),
        _ => false,
    }
}

/// Whether `headers` present one of the configured publisher keys.
pub(crate) fn presents_key(state: &AppState, headers: &HeaderMap) -> bool {
    presented(headers).is_some_and(|key| is_key(state, key))
}

fn is_key(state: &AppState, key: &str) -> bool {
    let keys = &state.config.auth.api_keys;
    keys.iter()
        .any(|k| same_secret(k.as_bytes(), key.as_bytes()))
}

/// The key a request presents, if any: a bearer token, else `X-Api-Key`
/// (beside credentials of another scheme, meant for a proxy).
fn presented(headers: &HeaderMap) -> Option<&str> {
    let authorization = headers.get(header::AUTHORIZATION);
    authorization
        .and_then(|v| crate::auth::bearer(v.to_str().ok()?))
        .or_else(|| headers.get("x-api-key")?.to_str().ok().map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(presented(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("BEARER k3"));
        assert_eq!(presented(&h), Some("k3"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert_eq!(presented(&h), Some("k2"));
        h.remove("x-api-key");
        assert_eq!(presented(&h), None);
    }
}
