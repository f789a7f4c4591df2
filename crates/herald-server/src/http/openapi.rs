//! `GET /openapi.json`: the OpenAPI document, generated from the handlers'
//! and types' annotations, with the routes of parts running beside the
//! server (`Server::add_route`) merged in.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::config::{PushApiConfig, PushStreamConfig, PushaasConfig};
use crate::dialect::native::{channels, poll};
use crate::dialect::{native, push, pushaas, pushapi, pushca, pushstream, send};

/// Every route of Herald's own; the dialects under a configurable prefix
/// are shown at its default.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Real-time push server: native API, the Push seed's, \
        Pushca's, push-stream's, push-api's and PushaaS's APIs, and mobile push when configured."),
    paths(
        native::publish,
        native::publish_batch,
        native::ws,
        native::sse,
        poll::poll,
        channels::list,
        channels::get,
        channels::delete,
        channels::history,
        channels::presence,
        send::send,
        send::ack,
        send::disconnect,
        send::revoke,
        push::publish,
        push::sse,
        push::ws,
        pushca::http::open_connection,
        pushca::http::open_connection_pool,
        pushca::http::send_notification,
        pushca::http::send_with_acknowledge,
        pushca::http::send_with_delivery_guarantee,
        pushca::http::connect,
        pushca::http::sign_in,
        super::live,
        super::ready,
        super::metrics,
        serve,
    ),
    nest(
        (path = PushStreamConfig::default().prefix, api = pushstream::ApiDoc),
        (path = PushApiConfig::default().prefix, api = pushapi::ApiDoc),
        (path = PushaasConfig::default().prefix, api = pushaas::ApiDoc),
    ),
    modifiers(&PublisherKeys),
    tags(
        (name = "native", description = "Herald's own API (docs/api.md, docs/targeting.md)"),
        (name = "push", description = "The Push seed's API"),
        (name = "pushca", description = "Pushca's API"),
        (name = "ops", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

const PUBLISHER_KEY: &str = "publisher_key";

/// Marks the routes that want a publisher key when `auth.api_keys` is set,
/// with the same rule the server enforces; without keys they are open, so
/// anonymous access is listed as well.
struct PublisherKeys;

impl Modify for PublisherKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(PUBLISHER_KEY, SecurityScheme::Http(bearer));
        let ps_prefix = PushStreamConfig::default().prefix;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::DELETE, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(op) = operation
                    && crate::publisher_auth::is_publisher(Some(&ps_prefix), &method, path)
                {
                    keyed(op);
                }
            }
        }
    }
}

/// Lists the publisher key, or nothing when no keys are configured.
fn keyed(op: &mut Operation) {
    let key = SecurityRequirement::new(PUBLISHER_KEY, Vec::<String>::new());
    op.security = Some(vec![key, SecurityRequirement::default()]);
}

/// Marks every operation of `doc` as [`PublisherKeys`] does: for routes
/// added with `publishes`, which want a key on every method.
pub(crate) fn mark_keyed(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            keyed(op);
        }
    }
}

/// A dialect's HTTP basic auth, registered under `name`.
pub(crate) struct BasicAuth {
    /// The security scheme's name, as the dialect's routes give it in `security(…)`.
    pub(crate) name: &'static str,
    /// Whose credentials the scheme takes, shown in the document.
    pub(crate) description: &'static str,
}

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let basic = HttpBuilder::new()
            .scheme(HttpAuthScheme::Basic)
            .description(Some(self.description))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(self.name, SecurityScheme::Http(basic));
    }
}

/// The document of a server with `extra` (routes added beside Herald's,
/// already marked), serialized once.
pub(crate) fn document(extra: Vec<utoipa::openapi::OpenApi>) -> Bytes {
    let mut doc = ApiDoc::openapi();
    for fragment in extra {
        doc.merge(fragment);
    }
    split_shared_ids(&mut doc);
    Bytes::from(serde_json::to_vec(&doc).expect("an OpenAPI document serializes"))
}

/// One handler documented for several methods gives each the same
/// `operationId`, which OpenAPI wants unique: those get their method appended.
fn split_shared_ids(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let mut operations = [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        let ids: Vec<String> = operations
            .iter()
            .filter_map(|(_, op)| op.as_ref()?.operation_id.clone())
            .collect();
        for (method, op) in &mut operations {
            if let Some(op) = op.as_mut()
                && let Some(id) = &mut op.operation_id
                && ids.iter().filter(|other| *other == id).count() > 1
            {
                id.push('_');
                id.push_str(method);
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 JSON")))]
pub(crate) async fn serve(State(doc): State<Bytes>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}
