//! `/instances/<name>/push-api/…` and `/instances/<name>/ps/…`: each
//! instance's own push-api (basic auth with its name and password) and
//! push-stream routes, over the namespace `pushaas/<name>`. A node builds an
//! instance's routes on its first request and checks the instance still
//! exists on every request, so one removed on another node stops here too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_core::BrokerError;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::instances::{self, Stored};
use super::{Name, TsuruError, TsuruState, error};
use crate::dialect::{pushapi, pushstream};

/// The instances' routes built on this node.
#[derive(Default)]
pub(crate) struct Mounts(Mutex<HashMap<String, Arc<Mount>>>);

/// One instance's routes.
pub(crate) struct Mount {
    /// The instance's push-api (`/push-api`) and push-stream (`/ps`) routes.
    router: Router,
    /// The password the routes were built with: an instance removed and
    /// made again under the same name gets new routes.
    password: String,
    /// Ends the instance's background work (push-api's keep-alive pings).
    retired: CancellationToken,
    /// The `Authorization` value of the instance's credentials.
    authorization: String,
}

/// The namespace of instance `name`'s channels; `/` cannot start a name of
/// the default app, so nothing else lands there.
fn namespace(name: &str) -> Arc<str> {
    Arc::from(format!("pushaas/{name}"))
}

/// The push-api path of instance `name`, under the prefix.
pub(crate) fn api_path(name: &str) -> String {
    format!("/instances/{name}/push-api")
}

/// The push-stream path of instance `name`, under the prefix.
fn stream_path(name: &str) -> String {
    format!("/instances/{name}/ps")
}

impl Mounts {
    fn get(&self, state: &TsuruState, stored: &Stored) -> Arc<Mount> {
        let mut mounts = self.0.lock();
        if let Some(m) = mounts.get(&stored.name)
            && m.password == stored.password
        {
            return m.clone();
        }
        let mount = Arc::new(build(state, stored));
        if let Some(old) = mounts.insert(stored.name.clone(), mount.clone()) {
            old.retired.cancel();
        }
        mount
    }

    fn retire(&self, name: &str) {
        if let Some(old) = self.0.lock().remove(name) {
            old.retired.cancel();
        }
    }
}

fn build(state: &TsuruState, stored: &Stored) -> Mount {
    let app = &state.app;
    let cfg = &app.config.pushaas;
    let prefix = cfg.prefix.trim_end_matches('/');
    let push_stream_path = format!("{prefix}{}", stream_path(&stored.name));
    let retired = CancellationToken::new();
    let authorization = pushapi::auth::expected(&stored.name, &stored.password);
    let api = pushapi::router(
        app,
        pushapi::Mount {
            namespace: namespace(&stored.name),
            authorization: Some(authorization.clone()),
            record_kind: format!("push-api:channel:{}", stored.name),
            push_stream_url: if cfg.public_url.is_empty() {
                String::new()
            } else {
                format!("{}{push_stream_path}", cfg.public_url.trim_end_matches('/'))
            },
            push_stream_path,
            retired: retired.clone(),
        },
    );
    let router = Router::new()
        .nest("/push-api", api)
        // A nested router cannot see `/push-api/`: the admin page's redirect.
        .route("/push-api/", get(pushapi::admin::redirect))
        .nest("/ps", pushstream::router(app, namespace(&stored.name)))
        .with_state(app.clone());
    Mount {
        router,
        password: stored.password.clone(),
        retired,
        authorization,
    }
}

/// Serves a request for an instance's routes.
#[utoipa::path(method(get, post, put, delete), path = "/instances/{name}/{rest}", tag = "pushaas",
    operation_id = "pushaas_instance",
    summary = "An instance's push-api and push-stream routes",
    description = "An instance's own push-api at `push-api/…` and push-stream routes at \
        `ps/…` (`rest` spans several segments), as documented for `/push-api` and `/ps`, over \
        the instance's channels. Its push-api's `/api` routes and its `ps/pub` want the \
        instance's credentials; the rest is open.",
    security(("pushaas_instance_basic" = []), ()),
    params(("name" = String, Path, description = super::DOC_NAME),
        ("rest" = String, Path, description = "`push-api/…` or `ps/…`")),
    responses((status = 200, description = "As the instance's route answers"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 11: no such instance", body = TsuruError),
        (status = 503, description = "Code 10: store unreachable", body = TsuruError)))]
pub(crate) async fn dispatch(
    State(state): State<TsuruState>,
    Name(name): Name,
    mut req: Request,
) -> Response {
    let stored = match instances::find(&state, &name).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            state.mounts.retire(&name);
            return error(StatusCode::NOT_FOUND, 11, "Instance not found");
        }
        Err(e) => {
            tracing::warn!(error = %e, "PushaaS instance store unavailable.");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                10,
                "Failed to retrieve instance",
            );
        }
    };
    let mount = state.mounts.get(&state, &stored);
    // Hand the instance's router the path below `/instances/<name>`.
    let uri = req.uri();
    let own = format!("/instances/{name}");
    let rest = uri.path().strip_prefix(&own).unwrap_or("/");
    // push-stream's publisher is push-agent's door in PushaaS, never the
    // public's: here it wants the instance's push-api credentials.
    let credentials = pushapi::auth::presents(req.headers(), &mount.authorization);
    if rest == "/ps/pub" && !credentials {
        return pushapi::auth::unauthorized();
    }
    let rest = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    match rest.parse::<Uri>() {
        Ok(inner) => *req.uri_mut() = inner,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    // Nor does its WebSocket publish without them.
    req.extensions_mut()
        .insert(pushstream::websocket::MayPublish(credentials));
    match mount.router.clone().oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// Forgets instance `name` on this node and deletes what it stored: its
/// bindings, its push-api channel records and its channels, whose
/// subscribers are told the channel is gone.
pub(crate) async fn purge(state: &TsuruState, name: &str) -> Result<(), BrokerError> {
    state.mounts.retire(name);
    instances::drop_bindings(state, name).await?;
    let engine = &state.app.engine;
    let broker = engine.broker();
    let kind = format!("push-api:channel:{name}");
    for record in broker.records(&kind).await? {
        broker.delete_record(&kind, &record.id).await?;
    }
    for info in engine.channel_infos(&namespace(name)).await? {
        engine.delete(&info.key).await?;
    }
    Ok(())
}
