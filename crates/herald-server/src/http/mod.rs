//! HTTP routes: the native API, the seeds' compatibility routes, ops.

mod body_timeout;
pub(crate) mod extract;
pub(crate) mod openapi;

pub(crate) use body_timeout::{AnswerStalled, BodyTimeout};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::cors::CorsLayer;
use crate::dialect::native::{channels, poll};
use serde_json::json;

use crate::dialect::{native, push, pushaas, pushapi, pushca, pushstream, send};
use crate::error::ApiError;
use crate::state::AppState;

/// `<scheme>://<Host>` for URLs a compatibility route hands back to its
/// caller when no public URL is configured (`localhost` without a `Host`);
/// the scheme is `secure` (`https`, `wss`) when the listener speaks TLS,
/// else the same without its final `s`.
/// `None` unless the `Host` is a plain `host[:port]`: anything more would
/// break the URL, or put a path or credentials of the caller's choosing in
/// it. (Which host it names is the caller's word; deployments behind a
/// proxy configure the public URL.)
pub(crate) fn request_base(state: &AppState, headers: &HeaderMap, secure: &str) -> Option<String> {
    let host = match headers.get(header::HOST) {
        None => "localhost",
        Some(h) => h.to_str().ok().filter(|h| is_host_and_port(h))?,
    };
    let scheme = if state.config.server.tls.files().is_some() {
        secure
    } else {
        secure.strip_suffix('s').unwrap_or(secure)
    };
    Some(format!("{scheme}://{host}"))
}

/// Whether `host` is an authority with nothing but a host and a port.
fn is_host_and_port(host: &str) -> bool {
    !host.contains('@') && host.parse::<axum::http::uri::Authority>().is_ok()
}

/// Routes of parts that run beside the server (the mobile push API).
#[derive(Default)]
pub struct Extra {
    /// Path, its routes, and whether it publishes (wants a publisher key).
    routes: Vec<(&'static str, Router, bool)>,
    /// Their OpenAPI entries, for `/openapi.json`.
    docs: Vec<utoipa::openapi::OpenApi>,
}

impl Extra {
    pub(crate) fn add(
        &mut self,
        path: &'static str,
        routes: Router,
        mut doc: utoipa::openapi::OpenApi,
        publishes: bool,
    ) {
        if publishes {
            openapi::mark_keyed(&mut doc);
        }
        self.routes.push((path, routes, publishes));
        self.docs.push(doc);
    }
}

/// Every route Herald serves.
pub fn router(state: AppState, extra: Extra) -> Router {
    let mut router = Router::new();
    // The push-stream URL API (docs/pushstream.md).
    let ps = &state.config.pushstream;
    if ps.enabled {
        router = router.nest(
            &ps.prefix,
            pushstream::router(&state, state.default_app.clone()),
        );
    }
    // PushaaS's push-api (docs/pushstream.md).
    let pa = &state.config.pushapi;
    if pa.enabled {
        let mount = pushapi::Mount::default_app(&state);
        router = router
            .nest(&pa.prefix, pushapi::router(&state, mount))
            // A nested router cannot see `<prefix>/`: the admin page's redirect.
            .route(&format!("{}/", pa.prefix), get(pushapi::admin::redirect));
    }
    // PushaaS's Tsuru service API and its instances (docs/pushstream.md).
    let tsuru = &state.config.pushaas;
    if tsuru.enabled {
        router = router.nest(&tsuru.prefix, pushaas::router(&state));
    }
    let router = router
        // Native API (docs/api.md).
        .route("/api/v1/publish", post(native::publish))
        .route("/api/v1/publish/batch", post(native::publish_batch))
        .route("/api/v1/send", post(send::send))
        .route("/api/v1/ack", post(send::ack))
        .route("/api/v1/disconnect", post(send::disconnect))
        .route("/api/v1/revoke", post(send::revoke))
        .route("/ws", get(native::ws))
        .route("/sse", get(native::sse))
        .route("/poll", get(poll::poll))
        .route("/api/v1/channels", get(channels::list))
        .route(
            "/api/v1/channels/{channel}",
            get(channels::get).delete(channels::delete),
        )
        .route("/api/v1/channels/{channel}/history", get(channels::history))
        .route(
            "/api/v1/channels/{channel}/presence",
            get(channels::presence),
        )
        // The Push seed's API.
        .route("/messages", post(push::publish))
        .route("/sse/messages", get(push::sse))
        .route("/ws/messages", get(push::ws))
        // Pushca's API (docs/targeting.md). `/{token}` only matches
        // single-segment paths no static route above or below claims.
        .route("/open-connection", post(pushca::http::open_connection))
        .route(
            "/open-connection-pool",
            post(pushca::http::open_connection_pool),
        )
        .route("/send-notification", post(pushca::http::send_notification))
        .route(
            "/send-notification-with-acknowledge",
            post(pushca::http::send_with_acknowledge),
        )
        .route(
            "/send-notification-with-delivery-guarantee",
            post(pushca::http::send_with_delivery_guarantee),
        )
        .route("/sign-in/{request}", get(pushca::http::sign_in))
        .route("/{token}", get(pushca::http::connect))
        .route(
            "/openapi.json",
            get(openapi::serve).with_state(openapi::document(extra.docs)),
        )
        // Operations.
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    let keyed = !state.config.auth.api_keys.is_empty();
    let router = extra
        .routes
        .into_iter()
        .fold(router, |router, (path, routes, publishes)| {
            let routes = if publishes && keyed {
                routes.layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::publisher_auth::require_key,
                ))
            } else {
                routes
            };
            router.route_service(path, routes)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Only servers with publisher keys pay for checking them.
    let router = if state.config.auth.api_keys.is_empty() {
        router
    } else {
        router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::publisher_auth::require,
        ))
    };
    // Outermost, so that refusals of keys and bodies reach the page too.
    // push-stream's mounts (PushaaS instances' included) answer CORS themselves.
    let skip = [
        ps.enabled.then(|| format!("{}/", ps.prefix)),
        tsuru
            .enabled
            .then(|| format!("{}/instances/", tsuru.prefix)),
    ];
    let cors = CorsLayer::new(state.origins.clone(), skip.into_iter().flatten().collect());
    router.layer(cors).with_state(state)
}

/// Reads a request body of at most `limit` bytes.
pub(crate) async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util_limited::LengthLimitError>());
            if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body is larger than {limit} bytes"),
                )
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })
}

/// Reads a JSON request body of at most `limit` bytes as a `T`; 400 when
/// it is not one.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request,
    limit: usize,
) -> Result<T, ApiError> {
    let body = read_body(req, limit).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// axum reports an over-long body through `http_body_util::LengthLimitError`.
mod http_body_util_limited {
    pub(crate) use http_body_util::LengthLimitError;
}

#[utoipa::path(get, path = "/health/live", tag = "ops", responses((status = 200, description = "ok")))]
pub(crate) async fn live() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/health/ready", tag = "ops",
    responses((status = 200, description = "{ready: true, broker}"), (status = 503, description = "Not ready")))]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let broker = state.engine.broker();
    if state.shutdown.is_signalled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reason": "shutting down"})),
        )
            .into_response();
    }
    if !broker.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"ready": false, "reason": "broker unavailable", "broker": broker.name()}),
            ),
        )
            .into_response();
    }
    axum::Json(json!({"ready": true, "broker": broker.name()})).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.engine);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
