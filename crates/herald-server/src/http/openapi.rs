//! `GET /openapi.json`: the OpenAPI document, generated from the handlers'
//! and types' annotations.

use axum::Json;
use axum::http::Method;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dialect::native::{channels, poll};
use crate::dialect::{native, push, pushca, send};

/// Every documented route.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Real-time push server: native API, the Push seed's and Pushca's APIs."),
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
        send::send,
        send::ack,
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
    modifiers(&PublisherKeys),
    tags(
        (name = "native", description = "Herald's own API (docs/api.md, docs/targeting.md)"),
        (name = "push", description = "The Push seed's API"),
        (name = "pushca", description = "Pushca's API"),
        (name = "ops", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// Marks the routes that want a publisher key when `auth.api_keys` is set,
/// with the same rule the server enforces; without keys they are open, so
/// anonymous access is listed as well.
struct PublisherKeys;

impl Modify for PublisherKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        const SCHEME: &str = "publisher_key";
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(SCHEME, SecurityScheme::Http(bearer));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(op) = operation
                    && crate::publisher_auth::is_publisher(None, &method, path)
                {
                    let keyed = SecurityRequirement::new(SCHEME, Vec::<String>::new());
                    op.security = Some(vec![keyed, SecurityRequirement::default()]);
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 JSON")))]
pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
