//! PushaaS's push-api publisher API, under `[pushapi] prefix`:
//! `/api/`, `/api/healthcheck`, `/api/v1/auth`, `/api/v1/channels`,
//! `/api/v1/messages`, `/api/v1/config`, `/api/v1/stats/…`, behind HTTP
//! basic auth. Messages reach push-stream subscribers as push-api's
//! push-agent would deliver them. See docs/pushstream.md.
//!
//! - [`auth`]: basic auth, as gin's `BasicAuth` answers.
//! - [`channels`]: the channel records with their TTL, and the keep-alive ping.
//! - [`messages`]: publishing, with push-api's path escaping.
//! - [`info`]: root, healthcheck, config and stats.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod channels;
pub(crate) mod info;
pub(crate) mod messages;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::dialect::pushstream::PsState;
use crate::http::openapi::BasicAuth;
use crate::state::AppState;

/// Everything push-api handlers share; cheap to clone.
#[derive(Clone)]
pub(crate) struct ApiState(Arc<Inner>);

pub(crate) struct Inner {
    /// The push-stream side, for publishing and stats.
    pub(crate) ps: PsState,
    /// The exact `Authorization` value basic auth accepts; `None`: no auth.
    pub(crate) authorization: Option<String>,
    /// The record kind this mount's channel records are stored under.
    pub(crate) record_kind: String,
    /// The push-stream URL `/api/v1/config` reports; empty: the request's
    /// host and `push_stream_path`.
    pub(crate) push_stream_url: String,
    /// The push-stream routes' path, joined to the request's host when `push_stream_url` is empty.
    pub(crate) push_stream_path: String,
    /// Ends the keep-alive pings of a mount that is gone.
    pub(crate) retired: CancellationToken,
}

/// Where one push-api is mounted: the default app's under `[pushapi]`, or
/// a PushaaS instance's own.
pub(crate) struct Mount {
    /// The app namespace its channels live in.
    pub(crate) namespace: Arc<str>,
    /// The `Authorization` value it wants; `None`: open.
    pub(crate) authorization: Option<String>,
    /// Record kind of its channel records (`push-api:channel` for the default).
    pub(crate) record_kind: String,
    /// Its push-stream routes' URL, for `/api/v1/config`; empty: the request's host and the path.
    pub(crate) push_stream_url: String,
    /// Its push-stream routes' path, from which that URL is built when empty.
    pub(crate) push_stream_path: String,
    /// Cancelled when the mount goes away.
    pub(crate) retired: CancellationToken,
}

impl Mount {
    /// The `[pushapi]` mount over the default app.
    pub(crate) fn default_app(app: &AppState) -> Mount {
        let cfg = &app.config.pushapi;
        Mount {
            namespace: app.default_app.clone(),
            authorization: cfg
                .enable_auth
                .then(|| auth::expected(&cfg.basic_auth_user, &cfg.basic_auth_password)),
            record_kind: "push-api:channel".into(),
            push_stream_url: cfg.push_stream_url.clone(),
            push_stream_path: app.config.pushstream.prefix.clone(),
            retired: CancellationToken::new(),
        }
    }
}

impl std::ops::Deref for ApiState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The routes' OpenAPI entries, relative to the prefix.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        info::root,
        info::healthcheck,
        auth::check,
        channels::create,
        channels::list,
        channels::get,
        channels::delete,
        messages::publish,
        info::config,
        info::global_stats,
        info::channel_stats,
        admin::redirect,
        admin::page,
        admin::redirect_slash,
        admin::script,
        admin::style,
    ),
    modifiers(&BASIC_AUTH),
    tags((name = "push-api", description = "PushaaS's push-api (docs/pushstream.md), under \
        `[pushapi] prefix`: shown at the default `/push-api`. Mounted unless \
        `[pushapi] enabled = false`. Its channels are push-stream's."))
)]
pub(crate) struct ApiDoc;

const BASIC_AUTH: BasicAuth = BasicAuth {
    name: "push_api_basic",
    description: "push-api's `[pushapi] basic_auth_user` and `basic_auth_password` \
        (default `app`/`abc123`); not asked with `enable_auth = false`",
};
/// gin's 401, as the OpenAPI entries describe it (PushaaS's too).
pub(crate) const DOC_UNAUTHORIZED: &str =
    "No or wrong basic auth: `WWW-Authenticate: Basic realm=\"Authorization Required\"`";
const DOC_STORE: &str = "The channel store (Redis on a cluster) is unreachable";

/// push-api's error body: `{"code": N, "message": "…"}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = PushApiError)]
pub(crate) struct ApiError {
    code: u16,
    message: &'static str,
}

/// An error reply with gin's JSON content type.
pub(crate) fn error(status: StatusCode, code: u16, message: &'static str) -> Response {
    gin_json(status, &ApiError { code, message })
}

/// A JSON reply as gin's `c.JSON` writes it.
pub(crate) fn gin_json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}

/// Decodes a request body into `T` as gin's `BindJSON` (Go's
/// `encoding/json`) would: a key names the field of `fields` it equals in
/// any case, a repeated field keeps its last value, and `null` is an empty
/// body. Anything but an object or `null` fails, as it does in Go.
pub(crate) fn go_json<T: DeserializeOwned>(body: &[u8], fields: &[&str]) -> Option<T> {
    let Entries(entries) = serde_json::from_slice(body).ok()?;
    let mut object = serde_json::Map::new();
    for (key, value) in entries {
        if let Some(field) = fields.iter().find(|f| go_fold_eq(f, &key)) {
            object.insert((*field).to_owned(), value);
        }
    }
    serde_json::from_value(Value::Object(object)).ok()
}

/// Whether `key` names ASCII `field` as Go's case folding matches it: in
/// any ASCII case, `ſ` for `s` and the Kelvin sign for `k` included.
fn go_fold_eq(field: &str, key: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    field.chars().map(fold).eq(key.chars().map(fold))
}

/// An object's entries in the order given, repeats kept; `null` is none.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object or null")
            }
            fn visit_unit<E>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// gin's default 404 (also its answer to a wrong method).
async fn not_found() -> Response {
    let mut res = (StatusCode::NOT_FOUND, "404 page not found").into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

/// The paths [`router`] serves (`{id}`: one segment), for gin's trailing
/// slash redirect. Keep in step with the routes.
const PATHS: [&str; 14] = [
    "/",
    "/api/",
    "/api/healthcheck",
    "/api/v1/auth",
    "/api/v1/channels",
    "/api/v1/channels/{id}",
    "/api/v1/config",
    "/api/v1/messages",
    "/api/v1/stats/global",
    "/api/v1/stats/channels/{id}",
    "/admin",
    "/admin/",
    "/admin/app.js",
    "/admin/app.css",
];

/// Whether `path` is one of [`PATHS`].
fn routed(path: &str) -> bool {
    PATHS.iter().any(|p| {
        let mut want = p.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some("{id}"), Some(seg)) if !seg.is_empty() => {}
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    })
}

/// A path no route takes, as gin answers it: when the path with its
/// trailing slash removed or added is routed, a redirect there
/// (`RedirectTrailingSlash`: 301 for `GET`, 307 otherwise); under
/// `/admin/`, the admin page (push-api's `NoRoute` serves its `index.html`
/// there for client-side routes; this page has none and its relative URLs
/// want `/admin`, so it is a 301 to it); otherwise gin's 404. `Location`s
/// are relative, so they hold under any prefix.
async fn no_route(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let (toggled, location) = match path.strip_suffix('/') {
        Some(bare) if !bare.is_empty() => {
            let last = bare.rsplit('/').next().unwrap_or("");
            (bare.to_owned(), format!("../{last}"))
        }
        _ => {
            let last = path.rsplit('/').next().unwrap_or("");
            (format!("{path}/"), format!("./{last}/"))
        }
    };
    if routed(&toggled) {
        let location = match uri.query() {
            Some(q) => format!("{location}?{q}"),
            None => location,
        };
        let status = if method == Method::GET {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::TEMPORARY_REDIRECT
        };
        return redirect(status, &location);
    }
    if let Some(below) = path.strip_prefix("/admin/") {
        // One `../` per segment below `/admin/` leads back to `/admin`'s level.
        return redirect(
            StatusCode::MOVED_PERMANENTLY,
            &format!("{}admin", "../".repeat(below.split('/').count())),
        );
    }
    not_found().await
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut res = status.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, value);
    }
    res
}

/// The routes of `mount`, to nest under its prefix.
pub(crate) fn router(app: &AppState, mount: Mount) -> Router<AppState> {
    let state = ApiState(Arc::new(Inner {
        ps: PsState::new(app.clone(), mount.namespace),
        authorization: mount.authorization,
        record_kind: mount.record_kind,
        push_stream_url: mount.push_stream_url,
        push_stream_path: mount.push_stream_path,
        retired: mount.retired,
    }));
    channels::start_keepalive(&state);
    let api = Router::new()
        .route("/api/", get(info::root))
        .route("/api/healthcheck", get(info::healthcheck))
        .route("/api/v1/auth", get(auth::check))
        .route(
            "/api/v1/channels",
            post(channels::create).get(channels::list),
        )
        .route(
            "/api/v1/channels/{id}",
            get(channels::get).delete(channels::delete),
        )
        .route("/api/v1/config", get(info::config))
        .route("/api/v1/messages", post(messages::publish))
        .route("/api/v1/stats/global", get(info::global_stats))
        .route("/api/v1/stats/channels/{id}", get(info::channel_stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require))
        .route("/", get(admin::redirect))
        .route("/admin", get(admin::page))
        .route("/admin/", get(admin::redirect_slash))
        .route("/admin/app.js", get(admin::script))
        .route("/admin/app.css", get(admin::style));
    api.fallback(no_route)
        .method_not_allowed_fallback(not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_fold_as_go_does() {
        assert!(go_fold_eq("channels", "CHANNELS"));
        assert!(go_fold_eq("channels", "channel\u{17F}"));
        assert!(go_fold_eq("k", "\u{212A}"));
        assert!(!go_fold_eq("id", "idx") && !go_fold_eq("id", "i"));
    }
}
