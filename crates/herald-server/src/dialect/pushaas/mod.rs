//! PushaaS's Tsuru service API, under `[pushaas] prefix`: Tsuru creates,
//! binds and removes Push Service instances here (`/api/v1/resources…`), and
//! each instance is served at once, as a namespace of its own with its own
//! push-api (`/instances/<name>/push-api/…`, its own credentials) and
//! push-stream routes (`/instances/<name>/ps/…`). See docs/pushstream.md.
//!
//! - [`instances`]: the service API (plans, instances, status, binds).
//! - [`mount`]: the instances' push-api and push-stream routes.

pub(crate) mod instances;
pub(crate) mod mount;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::dialect::pushapi::{DOC_UNAUTHORIZED, auth, gin_json};
use crate::http::openapi::BasicAuth;
use crate::state::AppState;

/// Everything the handlers share; cheap to clone.
#[derive(Clone)]
pub(crate) struct TsuruState(Arc<Inner>);

pub(crate) struct Inner {
    /// The server's shared state: the broker keeps the instances.
    pub(crate) app: AppState,
    /// The `Authorization` value Tsuru must send.
    authorization: String,
    /// The instances this node serves, built on first use.
    pub(crate) mounts: mount::Mounts,
}

impl std::ops::Deref for TsuruState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The routes' OpenAPI entries, relative to the prefix.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        instances::plans,
        instances::list,
        instances::create,
        instances::get,
        instances::update,
        instances::remove,
        instances::status,
        instances::bind_app,
        instances::unbind_app,
        instances::bind_unit,
        instances::unbind_unit,
        mount::dispatch,
    ),
    modifiers(&TSURU_AUTH, &INSTANCE_AUTH),
    tags((name = "pushaas", description = "PushaaS's Tsuru service API and its instances \
        (docs/pushstream.md), under `[pushaas] prefix`: shown at the default `/pushaas`. \
        Mounted only with `[pushaas] enabled = true` (off by default)."))
)]
pub(crate) struct ApiDoc;

const TSURU_AUTH: BasicAuth = BasicAuth {
    name: "tsuru_basic",
    description: "Tsuru's `[pushaas] username` and `password` (default `tsuru`/`abc123`)",
};
const INSTANCE_AUTH: BasicAuth = BasicAuth {
    name: "pushaas_instance_basic",
    description: "An instance's name and password, as binding hands them out \
        (`PUSHAAS_USERNAME`, `PUSHAAS_PASSWORD`)",
};
const DOC_NAME: &str = "Instance name";
const DOC_VARIABLES: &str = "`{\"PUSHAAS_ENDPOINT\", \"PUSHAAS_USERNAME\", \"PUSHAAS_PASSWORD\"}`: \
    the instance's push-api and its credentials";

/// pushaas's error body: `{"code": N, "message": "…", "fields": ""}`.
#[derive(Serialize, utoipa::ToSchema)]
struct TsuruError {
    code: u16,
    message: &'static str,
    fields: &'static str,
}

/// An error reply as pushaas writes it.
pub(crate) fn error(status: StatusCode, code: u16, message: &'static str) -> Response {
    gin_json(
        status,
        &TsuruError {
            code,
            message,
            fields: "",
        },
    )
}

/// A route's `{name}`, percent-decoded, lossily when not UTF-8: gin hands
/// such a name to the handler, which finds no such instance and answers
/// its own not-found, where axum's `Path` (and `RawPathParams`) would
/// refuse it with Herald's native JSON error. Read from the path below the
/// prefix, `/api/v1/resources/{name}…` or `/instances/{name}/…` (the routes
/// of [`router`]).
pub(crate) struct Name(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let segments: Vec<&str> = parts.uri.path().split('/').skip(1).collect();
        let at = if segments.first() == Some(&"instances") {
            1
        } else {
            3
        };
        let raw = segments.get(at).copied().unwrap_or("");
        Ok(Self(
            percent_decode_str(raw).decode_utf8_lossy().into_owned(),
        ))
    }
}

/// Middleware: Tsuru's basic auth, as gin's `BasicAuth` answers.
async fn require(State(state): State<TsuruState>, req: Request, next: Next) -> Response {
    if auth::presents(req.headers(), &state.authorization) {
        return next.run(req).await;
    }
    auth::unauthorized()
}

/// The routes, to nest under the prefix.
pub(crate) fn router(app: &AppState) -> Router<AppState> {
    let cfg = &app.config.pushaas;
    let state = TsuruState(Arc::new(Inner {
        app: app.clone(),
        authorization: auth::expected(&cfg.username, &cfg.password),
        mounts: mount::Mounts::default(),
    }));
    let service = Router::new()
        .route("/api/v1/resources", post(instances::create))
        .route(
            "/api/v1/resources/{name}",
            get(instances::get)
                .put(instances::update)
                .delete(instances::remove),
        )
        .route("/api/v1/resources/{name}/status", get(instances::status))
        .route(
            "/api/v1/resources/{name}/bind-app",
            post(instances::bind_app).delete(instances::unbind_app),
        )
        .route(
            "/api/v1/resources/{name}/bind",
            post(instances::bind_unit).delete(instances::unbind_unit),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require));
    service
        .route("/instances/{name}/{*rest}", any(mount::dispatch))
        .fallback(not_found)
        .with_state(state)
}

/// gin's default 404.
async fn not_found() -> Response {
    let mut res = (StatusCode::NOT_FOUND, "404 page not found").into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}
