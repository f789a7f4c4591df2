//! `/api/v1/resources…`: the Tsuru service API. An instance is a record in
//! the broker (so every node of a cluster serves it), with the password its
//! push-api wants; binding an app hands it the variables to reach that
//! push-api. Instances need no provisioning: they are ready (204) at once.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::{BrokerError, Record};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use super::{Name, TsuruError, TsuruState, error};
use crate::dialect::pushapi::gin_json;

/// The record kind instances are stored under.
const KIND: &str = "pushaas:instance";
/// The one plan, as pushaas offers it.
const PLAN: &str = "small";

/// An instance as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) name: String,
    /// Always `small`, the one plan.
    plan: String,
    /// Who asked for it, as Tsuru tells: shown back, never used.
    team: String,
    user: String,
    /// The push-api password of the instance (the user is its name).
    pub(crate) password: String,
}

/// A plan, as pushaas's `models.Plan` (field order kept).
#[derive(Serialize)]
struct Plan {
    name: &'static str,
    description: &'static str,
}

/// An instance as Tsuru sees it: no password.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TsuruInstance)]
struct Shown<'a> {
    name: &'a str,
    plan: &'a str,
    team: &'a str,
    user: &'a str,
    status: &'static str,
}

impl Stored {
    fn shown(&self) -> Shown<'_> {
        Shown {
            name: &self.name,
            plan: &self.plan,
            team: &self.team,
            user: &self.user,
            status: "running",
        }
    }
}

/// The bind records of instance `name`, one per app.
fn bindings_kind(name: &str) -> String {
    format!("pushaas:binding:{name}")
}

/// Instance names: what Tsuru allows, and safe as one path segment.
fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        // `GET /plans` and `GET /instances` share the instance route.
        && name != "plans"
        && name != "instances"
}

/// A form body (Tsuru sends `application/x-www-form-urlencoded`, also on
/// DELETE); unparsable forms read as empty. A body that cannot be read at
/// all (over the size limit, cut off) gives the status to refuse it with.
fn form(body: Result<Bytes, BytesRejection>) -> Result<HashMap<String, String>, StatusCode> {
    let body = body.map_err(|e| e.status())?;
    Ok(serde_urlencoded::from_bytes(&body).unwrap_or_default())
}

/// The stored instance `name`.
pub(crate) async fn find(state: &TsuruState, name: &str) -> Result<Option<Stored>, BrokerError> {
    let record = state.app.engine.broker().record(KIND, name).await?;
    Ok(record.and_then(|r| serde_json::from_slice(&r.value).ok()))
}

fn unavailable(e: &BrokerError, code: u16, message: &'static str) -> Response {
    tracing::warn!(error = %e, "PushaaS instance store unavailable.");
    error(StatusCode::INTERNAL_SERVER_ERROR, code, message)
}

/// `POST /resources` (form `name, plan, team, user`) → 201; 409 code 22
/// when the name is taken; 400 code 23 for a bad name or plan, or no team
/// or user.
#[utoipa::path(post, path = "/api/v1/resources", tag = "pushaas",
    operation_id = "pushaas_create", summary = "Creates an instance",
    security(("tsuru_basic" = [])),
    request_body(content = HashMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "`name` (`[A-Za-z0-9][A-Za-z0-9_-]{0,62}`), `plan` (`small`), \
            `team`, `user`: all required"),
    responses((status = 201, description = "Created, ready at once"),
        (status = 400, description = "Code 23: a bad name or plan, or no team or user",
            body = TsuruError),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 409, description = "Code 22: the name is taken", body = TsuruError),
        (status = 500, description = "Code 20: store unreachable", body = TsuruError)))]
pub(crate) async fn create(
    State(state): State<TsuruState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut f = match form(body) {
        Ok(f) => f,
        Err(status) => return error(status, 23, "invalid request body"),
    };
    let mut field = |key: &str| f.remove(key).unwrap_or_default();
    let (name, plan, team, user) = (field("name"), field("plan"), field("team"), field("user"));
    // pushaas's `InstanceForm.Validate`: the plan is `small`, and name,
    // team and user are given (Herald's name rule is stricter).
    if !valid_name(&name) || plan != PLAN || team.is_empty() || user.is_empty() {
        return error(StatusCode::BAD_REQUEST, 23, "Invalid instance data");
    }
    let stored = Stored {
        name: name.clone(),
        plan,
        team,
        user,
        password: Alphanumeric.sample_string(&mut rand::rng(), 24),
    };
    let record = Record {
        id: name.clone(),
        value: serde_json::to_vec(&stored).unwrap_or_default().into(),
        created_ms: now_ms(),
    };
    match state
        .app
        .engine
        .broker()
        .create_record(KIND, record, None)
        .await
    {
        Ok(true) => {
            tracing::info!(instance = %name, team = %stored.team, "PushaaS instance created.");
            StatusCode::CREATED.into_response()
        }
        Ok(false) => error(
            StatusCode::CONFLICT,
            22,
            "An instance with this name already exists",
        ),
        Err(e) => unavailable(&e, 20, "Failed to create instance"),
    }
}

/// `GET /resources/plans`, `GET /resources/instances` (404 code 11 when
/// there are none), or `GET /resources/<name>` (`[{name, plan, team, user,
/// status}]`; 404 code 11).
#[utoipa::path(get, path = "/api/v1/resources/{name}", tag = "pushaas",
    operation_id = "pushaas_get", summary = "An instance", security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    responses((status = 200, description = "The instance, `running`", body = [Shown]),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 11: no such instance", body = TsuruError),
        (status = 500, description = "Code 10: store unreachable", body = TsuruError)))]
pub(crate) async fn get(State(state): State<TsuruState>, Name(name): Name) -> Response {
    match name.as_str() {
        "plans" => gin_json(
            StatusCode::OK,
            &[Plan {
                name: PLAN,
                description: "The only plan",
            }],
        ),
        "instances" => match state.app.engine.broker().records(KIND).await {
            Ok(records) => {
                let all: Vec<Stored> = records
                    .iter()
                    .filter_map(|r| serde_json::from_slice(&r.value).ok())
                    .collect();
                if all.is_empty() {
                    // pushaas's `GetAll` finds no keys: `InstanceRetrievalNotFound`.
                    return error(StatusCode::NOT_FOUND, 11, "Instance not found");
                }
                let shown: Vec<Shown<'_>> = all.iter().map(Stored::shown).collect();
                gin_json(StatusCode::OK, &shown)
            }
            Err(e) => unavailable(&e, 10, "Failed to retrieve instance"),
        },
        _ => match find(&state, &name).await {
            Ok(Some(stored)) => gin_json(StatusCode::OK, &[stored.shown()]),
            Ok(None) => error(StatusCode::NOT_FOUND, 11, "Instance not found"),
            Err(e) => unavailable(&e, 10, "Failed to retrieve instance"),
        },
    }
}

/// `PUT /resources/<name>`: 404, which tells Tsuru "not implemented".
#[utoipa::path(put, path = "/api/v1/resources/{name}", tag = "pushaas",
    operation_id = "pushaas_update", summary = "Updates an instance: not implemented",
    security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    responses((status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Always: not implemented")))]
pub(crate) async fn update() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// `DELETE /resources/<name>` → 200; 404 code 32. The instance's bindings,
/// channel records and channels go with it; its subscribers are told.
#[utoipa::path(delete, path = "/api/v1/resources/{name}", tag = "pushaas",
    operation_id = "pushaas_remove", summary = "Removes an instance",
    security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    responses((status = 200, description = "Removed, with its binds, channel records and channels"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 32: no such instance", body = TsuruError),
        (status = 500, description = "Code 30: store unreachable", body = TsuruError)))]
pub(crate) async fn remove(State(state): State<TsuruState>, Name(name): Name) -> Response {
    match find(&state, &name).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, 32, "Instance not found"),
        Err(e) => return unavailable(&e, 30, "Failed to delete instance"),
    }
    // What the instance stored goes first and its record last: a failure
    // leaves an instance to remove again (Tsuru retries), not leftovers
    // that a new instance of the name would inherit.
    if let Err(e) = super::mount::purge(&state, &name).await {
        tracing::warn!(instance = %name, error = %e, "PushaaS instance not purged.");
        return unavailable(&e, 30, "Failed to delete instance");
    }
    if let Err(e) = state.app.engine.broker().delete_record(KIND, &name).await {
        return unavailable(&e, 30, "Failed to delete instance");
    }
    tracing::info!(instance = %name, "PushaaS instance removed.");
    StatusCode::OK.into_response()
}

/// `GET /resources/<name>/status`: 204 (running); 404 code 41.
#[utoipa::path(get, path = "/api/v1/resources/{name}/status", tag = "pushaas",
    operation_id = "pushaas_status", summary = "An instance's status",
    security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    responses((status = 204, description = "Running"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 41: no such instance", body = TsuruError),
        (status = 500, description = "Code 40: store unreachable", body = TsuruError)))]
pub(crate) async fn status(State(state): State<TsuruState>, Name(name): Name) -> Response {
    match find(&state, &name).await {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, 41, "Instance not found"),
        Err(e) => unavailable(&e, 40, "Failed to retrieve instance status"),
    }
}

/// Where bound apps reach push-api: `pushaas.public_url`, else this
/// server as the request names it. `None` when the `Host` cannot be used.
fn public_base(state: &TsuruState, headers: &HeaderMap) -> Option<String> {
    let cfg = &state.app.config.pushaas;
    if cfg.public_url.is_empty() {
        crate::http::request_base(&state.app, headers, "https")
    } else {
        Some(cfg.public_url.trim_end_matches('/').to_owned())
    }
}

/// The refusal of a bind whose `Host` cannot name this server.
const BAD_HOST: &str = "the Host header is not host[:port] (or set pushaas.public_url)";

/// What a bound app gets: where its push-api is (`base`) and how to log in.
fn variables(state: &TsuruState, base: &str, stored: &Stored) -> Response {
    let cfg = &state.app.config.pushaas;
    let endpoint = format!(
        "{base}{}{}",
        cfg.prefix.trim_end_matches('/'),
        super::mount::api_path(&stored.name)
    );
    let env = serde_json::json!({
        "PUSHAAS_ENDPOINT": endpoint,
        "PUSHAAS_USERNAME": stored.name,
        "PUSHAAS_PASSWORD": stored.password,
    });
    gin_json(StatusCode::CREATED, &env)
}

/// `POST /resources/<name>/bind-app` (form `app-host, app-name`) → 201 with
/// the app's variables; 404 code 100; 500 code 101 when already bound.
#[utoipa::path(post, path = "/api/v1/resources/{name}/bind-app", tag = "pushaas",
    operation_id = "pushaas_bind_app", summary = "Binds an app to an instance",
    security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    request_body(content = HashMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "`app-name` (required), `app-host`"),
    responses((status = 201, description = super::DOC_VARIABLES),
        (status = 400, description = "Code 102: no `app-name`, or a `Host` that is not \
            `host[:port]` and no `pushaas.public_url`", body = TsuruError),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 100: no such instance", body = TsuruError),
        (status = 500, description = "Code 101: already bound; code 102: store unreachable",
            body = TsuruError)))]
pub(crate) async fn bind_app(
    State(state): State<TsuruState>,
    Name(name): Name,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let f = match form(body) {
        Ok(f) => f,
        Err(status) => return error(status, 102, "invalid request body"),
    };
    let app_name = f.get("app-name").cloned().unwrap_or_default();
    let stored = match find(&state, &name).await {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, 100, "Instance not found"),
        Err(e) => return unavailable(&e, 102, "Failed to bind instance to app"),
    };
    if app_name.is_empty() {
        return error(StatusCode::BAD_REQUEST, 102, "app-name is required");
    }
    let Some(base) = public_base(&state, &headers) else {
        return error(StatusCode::BAD_REQUEST, 102, BAD_HOST);
    };
    let record = Record {
        id: app_name.clone(),
        value: serde_json::to_vec(&f).unwrap_or_default().into(),
        created_ms: now_ms(),
    };
    let broker = state.app.engine.broker();
    match broker
        .create_record(&bindings_kind(&name), record, None)
        .await
    {
        Ok(true) => {
            tracing::info!(instance = %name, app = %app_name, "PushaaS instance bound.");
            variables(&state, &base, &stored)
        }
        Ok(false) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            101,
            "Instance is already bound to app",
        ),
        Err(e) => unavailable(&e, 102, "Failed to bind instance to app"),
    }
}

/// `DELETE /resources/<name>/bind-app` (form body) → 200; 404 code 110
/// (no instance) or 111 (not bound).
#[utoipa::path(delete, path = "/api/v1/resources/{name}/bind-app", tag = "pushaas",
    operation_id = "pushaas_unbind_app", summary = "Unbinds an app", security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    request_body(content = HashMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "`app-name`"),
    responses((status = 200, description = "Unbound"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 110: no such instance; code 111: not bound",
            body = TsuruError),
        (status = 500, description = "Code 112: store unreachable", body = TsuruError)))]
pub(crate) async fn unbind_app(
    State(state): State<TsuruState>,
    Name(name): Name,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let app_name = match form(body) {
        Ok(mut f) => f.remove("app-name").unwrap_or_default(),
        Err(status) => return error(status, 112, "invalid request body"),
    };
    match find(&state, &name).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, 110, "Instance not found"),
        Err(e) => return unavailable(&e, 112, "Failed to unbind instance from app"),
    }
    let broker = state.app.engine.broker();
    match broker.delete_record(&bindings_kind(&name), &app_name).await {
        Ok(true) => {
            // Its units are gone with it (Tsuru unbinds them first anyway).
            if let Err(e) = drop_units(&state, &name, &app_name).await {
                tracing::warn!(instance = %name, error = %e, "PushaaS unit binds not dropped.");
            }
            StatusCode::OK.into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, 111, "Instance is not bound to app"),
        Err(e) => unavailable(&e, 112, "Failed to unbind instance from app"),
    }
}

/// The unit records of app `app` bound to instance `name`, one per unit
/// host (instance names hold no `:`).
fn units_kind(name: &str, app: &str) -> String {
    format!("pushaas:unit:{name}:{app}")
}

/// Whether app `app` is bound to instance `name`.
async fn is_bound(state: &TsuruState, name: &str, app: &str) -> Result<bool, BrokerError> {
    let broker = state.app.engine.broker();
    Ok(broker.record(&bindings_kind(name), app).await?.is_some())
}

/// `POST /resources/<name>/bind` (form `app-name, app-host, unit-host`) →
/// 201 with the variables, as pushaas's `BindUnit`: 404 code 120 when the
/// app is not bound; 500 code 122 when there is no instance (or no store).
#[utoipa::path(post, path = "/api/v1/resources/{name}/bind", tag = "pushaas",
    operation_id = "pushaas_bind_unit", summary = "Binds a unit of a bound app",
    security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    request_body(content = HashMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "`app-name`, `app-host`, `unit-host`"),
    responses((status = 201, description = super::DOC_VARIABLES),
        (status = 400, description = "Code 122: a `Host` that is not `host[:port]` and no \
            `pushaas.public_url`", body = TsuruError),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 120: the app is not bound", body = TsuruError),
        (status = 500, description = "Code 122: no such instance, or store unreachable",
            body = TsuruError)))]
pub(crate) async fn bind_unit(
    State(state): State<TsuruState>,
    Name(name): Name,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const FAILED: &str = "Failed to bind unit to service";
    let mut f = match form(body) {
        Ok(f) => f,
        Err(status) => return error(status, 122, FAILED),
    };
    let app = f.remove("app-name").unwrap_or_default();
    let stored = match find(&state, &name).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return error(StatusCode::INTERNAL_SERVER_ERROR, 122, FAILED),
        Err(e) => return unavailable(&e, 122, FAILED),
    };
    match is_bound(&state, &name, &app).await {
        Ok(true) => {}
        Ok(false) => {
            let message = "App is not bound to service, could not bind unit";
            return error(StatusCode::NOT_FOUND, 120, message);
        }
        Err(e) => return unavailable(&e, 122, FAILED),
    }
    let Some(base) = public_base(&state, &headers) else {
        return error(StatusCode::BAD_REQUEST, 122, BAD_HOST);
    };
    let record = Record {
        id: f.remove("unit-host").unwrap_or_default(),
        value: Bytes::new(),
        created_ms: now_ms(),
    };
    // A unit bound again is fine (pushaas ignores its set's answer).
    let broker = state.app.engine.broker();
    if let Err(e) = broker
        .create_record(&units_kind(&name, &app), record, None)
        .await
    {
        return unavailable(&e, 122, FAILED);
    }
    variables(&state, &base, &stored)
}

/// `DELETE /resources/<name>/bind` (form `app-name` or `app-host`,
/// `unit-host`) → 200, as pushaas's `UnbindUnit`: 404 code 130 when the app
/// is not bound (nor the instance there), 131 when the unit is not.
#[utoipa::path(delete, path = "/api/v1/resources/{name}/bind", tag = "pushaas",
    operation_id = "pushaas_unbind_unit", summary = "Unbinds a unit",
    security(("tsuru_basic" = [])),
    params(("name" = String, Path, description = super::DOC_NAME)),
    request_body(content = HashMap<String, String>,
        content_type = "application/x-www-form-urlencoded",
        description = "`app-name` (else the first label of `app-host`), `unit-host`"),
    responses((status = 200, description = "Unbound"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 130: the app is not bound; code 131: the unit is not",
            body = TsuruError),
        (status = 500, description = "Code 132: store unreachable", body = TsuruError)))]
pub(crate) async fn unbind_unit(
    State(state): State<TsuruState>,
    Name(name): Name,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const FAILED: &str = "Failed to unbind unit from service";
    let mut f = match form(body) {
        Ok(f) => f,
        Err(status) => return error(status, 132, FAILED),
    };
    // Tsuru may leave `app-name` out; pushaas then takes `app-host`'s first label.
    let app = match f.remove("app-name") {
        Some(app) => app,
        None => f
            .get("app-host")
            .and_then(|h| h.split('.').next())
            .unwrap_or_default()
            .to_owned(),
    };
    match is_bound(&state, &name, &app).await {
        Ok(true) => {}
        Ok(false) => {
            let message = "App is not bound to service, could not unbind unit";
            return error(StatusCode::NOT_FOUND, 130, message);
        }
        Err(e) => return unavailable(&e, 132, FAILED),
    }
    let unit = f.remove("unit-host").unwrap_or_default();
    let broker = state.app.engine.broker();
    match broker.delete_record(&units_kind(&name, &app), &unit).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, 131, "Unit is not bound to service"),
        Err(e) => unavailable(&e, 132, FAILED),
    }
}

// `get` serves these two; the functions only carry their OpenAPI entries.
/// `GET /resources/plans`.
#[utoipa::path(get, path = "/api/v1/resources/plans", tag = "pushaas",
    operation_id = "pushaas_plans", summary = "The plans", security(("tsuru_basic" = [])),
    responses((status = 200, description = "`[{\"name\":\"small\",\"description\":\"The only plan\"}]`"),
        (status = 401, description = super::DOC_UNAUTHORIZED)))]
#[allow(dead_code)]
fn plans() {}

/// `GET /resources/instances`.
#[utoipa::path(get, path = "/api/v1/resources/instances", tag = "pushaas",
    operation_id = "pushaas_instances", summary = "Every instance", security(("tsuru_basic" = [])),
    responses((status = 200, description = "Every instance", body = [Shown]),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 11: there are none", body = TsuruError),
        (status = 500, description = "Code 10: store unreachable", body = TsuruError)))]
#[allow(dead_code)]
fn list() {}

/// Removes every bind record of instance `name`, its units' too.
pub(crate) async fn drop_bindings(state: &TsuruState, name: &str) -> Result<(), BrokerError> {
    let broker = state.app.engine.broker();
    let kind = bindings_kind(name);
    for record in broker.records(&kind).await? {
        drop_units(state, name, &record.id).await?;
        broker.delete_record(&kind, &record.id).await?;
    }
    Ok(())
}

/// Removes the unit records of app `app` bound to instance `name`.
async fn drop_units(state: &TsuruState, name: &str, app: &str) -> Result<(), BrokerError> {
    let broker = state.app.engine.broker();
    let kind = units_kind(name, app);
    for record in broker.records(&kind).await? {
        broker.delete_record(&kind, &record.id).await?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_single_safe_segments() {
        for good in ["a", "my-app", "App_2", &"x".repeat(63)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a/b",
            "a b",
            "plans",
            "instances",
            "é",
            &"x".repeat(64),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
