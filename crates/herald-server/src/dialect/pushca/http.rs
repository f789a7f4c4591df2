//! Pushca's REST endpoints, the `/<jwt>` WebSocket upgrade and the browser
//! `/sign-in/<base64url(request)>` variant.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use herald_core::{AckOutcome, AckPolicy};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::token::looks_like_jwt;
use super::ws::{PushcaWs, SignIn};
use super::{
    ClientSearchData, PClient, PushcaFormat, check_sender_id, client_filter, targeted,
    targeted_with_ack,
};
use crate::error::ApiError;
use crate::http::extract::Path;
use crate::http::read_json;
use crate::session::Session;
use crate::state::AppState;
use crate::transport::ws;

/// Largest Pushca request body apart from the message itself.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// `POST /open-connection` request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OpenConnectionRequest {
    /// Who the connection will be.
    client: PClient,
    /// The pusher the client asks for; this node answers with its own.
    pusher_instance_id: Option<String>,
}

/// `POST /open-connection` reply: WebSocket URLs carrying a connection token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OpenConnectionResponse {
    pusher_instance_id: String,
    external_advertised_url: String,
    internal_advertised_url: String,
    browser_advertised_url: String,
}

/// `POST /open-connection-pool` request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OpenConnectionPoolRequest {
    client: PClient,
    pusher_instance_id: Option<String>,
    /// How many connection URLs to issue.
    pool_size: usize,
}

/// One address of an open-connection-pool reply.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PusherAddress {
    external_advertised_url: String,
    internal_advertised_url: String,
    browser_advertised_url: String,
}

/// `POST /open-connection-pool` reply.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OpenConnectionPoolResponse {
    pusher_instance_id: String,
    addresses: Vec<PusherAddress>,
}

/// `POST /send-notification` request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendNotificationRequest {
    /// Message id; generated when absent.
    id: Option<String>,
    /// Accepted; receivers get only the message (see `docs/targeting.md`).
    #[allow(dead_code)]
    sender: Option<PClient>,
    /// Who receives it; absent fields match anything.
    filter: ClientSearchData,
    /// Accepted; one node delivers in order anyway.
    #[allow(dead_code)]
    preserve_order: Option<bool>,
    /// The message, delivered to clients as text.
    #[schema(value_type = String)]
    message: Box<RawValue>,
}

/// `POST /send-notification-with-acknowledge` and
/// `/send-notification-with-delivery-guarantee` request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendNotificationWithAcknowledgeRequest {
    id: Option<String>,
    /// Accepted; receivers get only the message (see `docs/targeting.md`).
    #[allow(dead_code)]
    sender: Option<PClient>,
    /// The receiver; all four fields are required.
    client: PClient,
    #[allow(dead_code)]
    preserve_order: Option<bool>,
    #[schema(value_type = String)]
    message: Box<RawValue>,
}

/// Takes a rate-limit token or answers 429.
fn admit(state: &AppState) -> Result<(), ApiError> {
    if state.pushca.limit.try_acquire() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry later",
        ))
    }
}

async fn body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    req: Request,
) -> Result<T, ApiError> {
    read_json(req, state.config.limits.max_message_size + ENVELOPE_BYTES).await
}

/// Refuses a client without all four fields: Pushca's spec calls them
/// required, to open a connection as to be sent with-acknowledge. A token
/// for fewer would make a connection that every multicast on the missing
/// fields reaches, and that no with-acknowledge send can name.
fn check_complete(client: &PClient) -> Result<(), ApiError> {
    if client.is_complete() {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "'client' needs workSpaceId, accountId, deviceId and applicationId",
    ))
}

fn check_size(state: &AppState, message: &RawValue) -> Result<(), ApiError> {
    let max = state.config.limits.max_message_size;
    if message.get().len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("message is larger than {max} bytes"),
        ));
    }
    Ok(())
}

/// Advertised WebSocket base URLs: configured, or `ws://<Host>/`
/// (`wss://` when the listener speaks TLS).
struct Bases {
    /// For clients outside the deployment; the other two default to it.
    external: String,
    /// For clients inside the deployment.
    internal: String,
    /// For browsers.
    browser: String,
}

impl Bases {
    /// The configured URLs; the request's `Host` only for what is not
    /// configured, and only a plain `host[:port]`: tokens go out inside
    /// these URLs, which a forged `Host` must not point elsewhere or break.
    fn of(state: &AppState, headers: &HeaderMap) -> Result<Self, ApiError> {
        let cfg = &state.config.pushca;
        let external = match &cfg.external_advertised_url {
            Some(url) => url.clone(),
            None => crate::http::request_base(state, headers, "wss")
                .map(|base| base + "/")
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "the Host header is not host[:port] \
                         (or set pushca.external_advertised_url)",
                    )
                })?,
        };
        Ok(Self {
            internal: cfg
                .internal_advertised_url
                .clone()
                .unwrap_or_else(|| external.clone()),
            browser: cfg
                .browser_advertised_url
                .clone()
                .unwrap_or_else(|| external.clone()),
            external,
        })
    }

    fn addresses(&self, token: &str) -> PusherAddress {
        let url = |base: &str| {
            let sep = if base.ends_with('/') { "" } else { "/" };
            format!("{base}{sep}{token}")
        };
        PusherAddress {
            external_advertised_url: url(&self.external),
            internal_advertised_url: url(&self.internal),
            browser_advertised_url: url(&self.browser),
        }
    }
}

fn open(
    state: &AppState,
    headers: &HeaderMap,
    client: &PClient,
) -> Result<OpenConnectionResponse, ApiError> {
    check_complete(client)?;
    let a = Bases::of(state, headers)?.addresses(&state.pushca.tokens.issue(client));
    Ok(OpenConnectionResponse {
        pusher_instance_id: state.pushca.instance_id.clone(),
        external_advertised_url: a.external_advertised_url,
        internal_advertised_url: a.internal_advertised_url,
        browser_advertised_url: a.browser_advertised_url,
    })
}

/// Opens a connection: WebSocket URLs with a token valid for `pushca.token_ttl`.
#[utoipa::path(post, path = "/open-connection", tag = "pushca",
    request_body = OpenConnectionRequest,
    responses((status = 200, description = "The connection's WebSocket URLs and token", body = OpenConnectionResponse),
        (status = 400, description = "`client` lacks one of its four fields"),
        (status = 429, description = "Too many requests")))]
pub(crate) async fn open_connection(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<OpenConnectionResponse>, ApiError> {
    admit(&state)?;
    let headers = req.headers().clone();
    let r: OpenConnectionRequest = body(&state, req).await?;
    let _ = r.pusher_instance_id;
    Ok(Json(open(&state, &headers, &r.client)?))
}

/// Opens `poolSize` connections at once (at most `pushca.max_pool_size`).
#[utoipa::path(post, path = "/open-connection-pool", tag = "pushca",
    request_body = OpenConnectionPoolRequest,
    responses((status = 200, description = "One connection per pool slot", body = OpenConnectionPoolResponse),
        (status = 400, description = "`client` lacks one of its four fields, or `poolSize` is missing, zero or over `pushca.max_pool_size`"),
        (status = 429, description = "Too many requests")))]
pub(crate) async fn open_connection_pool(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<OpenConnectionPoolResponse>, ApiError> {
    admit(&state)?;
    let headers = req.headers().clone();
    let r: OpenConnectionPoolRequest = body(&state, req).await?;
    let _ = r.pusher_instance_id;
    check_complete(&r.client)?;
    let max = state.config.pushca.max_pool_size;
    if r.pool_size == 0 || r.pool_size > max {
        return Err(ApiError::bad_request(format!(
            "poolSize must be 1 to {max}"
        )));
    }
    let bases = Bases::of(&state, &headers)?;
    let addresses = (0..r.pool_size)
        .map(|_| bases.addresses(&state.pushca.tokens.issue(&r.client)))
        .collect();
    Ok(Json(OpenConnectionPoolResponse {
        pusher_instance_id: state.pushca.instance_id.clone(),
        addresses,
    }))
}

/// Sends to every client the filter matches (one with `findAny`).
#[utoipa::path(post, path = "/send-notification", tag = "pushca",
    request_body = SendNotificationRequest,
    responses((status = 200, description = "Success"), (status = 400, description = "Malformed request or filter"),
        (status = 429, description = "Too many requests")))]
pub(crate) async fn send_notification(
    State(state): State<AppState>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    admit(&state)?;
    let r: SendNotificationRequest = body(&state, req).await?;
    check_size(&state, &r.message)?;
    check_sender_id(r.id.as_deref()).map_err(ApiError::bad_request)?;
    let out = state
        .engine
        .send(&r.filter.filter(), targeted(&r.message))
        .await?;
    tracing::debug!(
        matched = out.matched,
        delivered = out.delivered,
        "Pushca notification sent."
    );
    Ok(StatusCode::OK)
}

/// The per-attempt Pushca ack policy.
pub(crate) fn ack_policy(state: &AppState) -> AckPolicy {
    AckPolicy {
        timeout: state.config.pushca.ack_timeout,
        attempts: state.config.delivery.ack_attempts,
        backoff: state.config.delivery.ack_backoff,
    }
}

async fn send_acked(state: &AppState, req: Request) -> Result<AckOutcome, ApiError> {
    admit(state)?;
    let r: SendNotificationWithAcknowledgeRequest = body(state, req).await?;
    check_size(state, &r.message)?;
    check_complete(&r.client)?;
    check_sender_id(r.id.as_deref()).map_err(ApiError::bad_request)?;
    // The message has its own id (see `targeted`): never one in flight.
    let msg = targeted_with_ack(&r.message).map_err(ApiError::bad_request)?;
    Ok(state
        .engine
        .send_acked(&client_filter(&r.client), msg, ack_policy(state))
        .await?)
}

/// Sends to one client and waits for its ACKNOWLEDGE: 200 acked, 408 not.
#[utoipa::path(post, path = "/send-notification-with-acknowledge", tag = "pushca",
    request_body = SendNotificationWithAcknowledgeRequest,
    responses((status = 200, description = "Success: the client acknowledged"),
        (status = 400, description = "Malformed request, `client` lacking a field, or `message` containing `@@`"),
        (status = 408, description = "Acknowledge time out"),
        (status = 429, description = "Too many requests")))]
pub(crate) async fn send_with_acknowledge(
    State(state): State<AppState>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    match send_acked(&state, req).await? {
        AckOutcome::Acked { .. } => Ok(StatusCode::OK),
        AckOutcome::NotConnected => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "ack_timeout",
            "the client is not connected",
        )),
        _ => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "ack_timeout",
            "the client did not acknowledge in time",
        )),
    }
}

/// Like with-acknowledge, telling "not connected" (404) from "connected
/// but unconfirmed" (503).
#[utoipa::path(post, path = "/send-notification-with-delivery-guarantee", tag = "pushca",
    request_body = SendNotificationWithAcknowledgeRequest,
    responses((status = 200, description = "Delivered and acknowledged"),
        (status = 400, description = "Malformed request, `client` lacking a field, or `message` containing `@@`"),
        (status = 404, description = "Client not connected"),
        (status = 503, description = "Delivery not confirmed"),
        (status = 429, description = "Too many requests")))]
pub(crate) async fn send_with_delivery_guarantee(
    State(state): State<AppState>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    match send_acked(&state, req).await? {
        AckOutcome::Acked { .. } => Ok(StatusCode::OK),
        AckOutcome::NotConnected => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_connected",
            "the client is not connected",
        )),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_confirmed",
            "the client did not acknowledge in time",
        )),
    }
}

/// `GET /<jwt>`: the Pushca WebSocket. A forged or expired token gets 401
/// before the upgrade; a path that is no token at all gets 404.
#[utoipa::path(get, path = "/{token}", tag = "pushca",
    params(("token" = String, Path, description = "Connection token from /open-connection")),
    responses((status = 101, description = "WebSocket: Pushca's text protocol"),
        (status = 401, description = "Invalid or expired token"),
        (status = 404, description = "Not a connection token")))]
pub(crate) async fn connect(
    State(state): State<AppState>,
    Path(token): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if !looks_like_jwt(&token) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ));
    }
    let client = state.pushca.tokens.verify(&token)?;
    let mut session = Session::new(state.clone(), Arc::new(PushcaFormat));
    // Pushca's tokens are not revoked by user.
    session.identify(client.identity(), Arc::new(PushcaFormat), None);
    let dialect = PushcaWs::new(client, &state);
    ws::upgrade(&state, req, session, dialect)
}

/// `GET /sign-in/<base64url(OpenConnectionRequest)>`: a WebSocket that sends
/// the OpenConnectionResponse as one text frame, then closes.
#[utoipa::path(get, path = "/sign-in/{request}", tag = "pushca",
    params(("request" = String, Path, description = "base64url of an OpenConnectionRequest JSON")),
    responses((status = 101, description = "WebSocket: one OpenConnectionResponse frame, then close"),
        (status = 400, description = "Not base64url of an OpenConnectionRequest, or `client` lacks one of its four fields")))]
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    Path(request): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    admit(&state)?;
    let trimmed = request.trim_end_matches('=');
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .map_err(|e| ApiError::bad_request(format!("sign-in request is not base64url: {e}")))?;
    let r: OpenConnectionRequest = serde_json::from_slice(&json)
        .map_err(|e| ApiError::bad_request(format!("malformed sign-in request: {e}")))?;
    let reply = serde_json::to_string(&open(&state, req.headers(), &r.client)?)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let session = Session::new(state.clone(), Arc::new(PushcaFormat));
    ws::upgrade(&state, req, session, SignIn::new(reply))
}
