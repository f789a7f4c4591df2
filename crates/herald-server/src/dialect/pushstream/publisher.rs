//! `/pub?id=ch`: `POST`/`PUT` publish the raw body (with `Event-Id` and
//! `Event-Type`), `GET` reads channel info, `DELETE` (admin mode) deletes.
//! `id=a/b` acts on each channel. Errors are header-only with
//! `X-Nginx-PushStream-Explain`, as the module answers them.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use herald_core::ChannelKey;
use serde::Deserialize;

use super::events::{self, CHANNEL_DESTROYED};
use super::request::{Args, NO_CHANNEL_ID, channel_key, parse_ids};
use super::stats::{self, Fmt};
use super::{PsState, header_only};
use crate::http::read_body;

const EMPTY_POST: &str = "Empty post requests are not allowed.";
const EVENTS_CHANNEL: &str = "Only internal routines can change events channel.";
const CHANNEL_DELETED: &str = "Channel deleted.";

#[derive(Default, Deserialize)]
pub(crate) struct PubQuery {
    id: Option<String>,
}

/// Every `/pub` request; [`doc`] documents each method.
pub(crate) async fn handle(
    State(ps): State<PsState>,
    Args(q): Args<PubQuery>,
    req: Request,
) -> Response {
    let methods = if ps.cfg.admin {
        "GET, POST, PUT, DELETE"
    } else {
        "GET, POST, PUT"
    };
    let mut res = answer(&ps, q, req, methods).await;
    ps.cors(res.headers_mut(), methods);
    res
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

async fn answer(ps: &PsState, q: PubQuery, req: Request, methods: &'static str) -> Response {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return header_only(StatusCode::OK, None);
    }
    let allowed = method == Method::GET
        || method == Method::POST
        || method == Method::PUT
        || (method == Method::DELETE && ps.cfg.admin);
    if !allowed {
        return super::not_allowed(methods);
    }
    let requested = parse_ids(q.id.as_deref().unwrap_or(""));
    if requested.is_empty() {
        return header_only(StatusCode::BAD_REQUEST, Some(NO_CHANNEL_ID));
    }
    // Before anything per channel: each one publishes (and stores) a copy.
    let limit = ps.app.config.limits.max_channels_per_connection;
    if requested.len() > limit {
        let explain = format!("at most {limit} channels per request");
        return header_only(StatusCode::FORBIDDEN, Some(&explain));
    }
    let mut keys: Vec<ChannelKey> = Vec::with_capacity(requested.len());
    for r in &requested {
        match channel_key(ps, &r.id) {
            Ok(key) if method != Method::GET && ps.is_events_channel(&r.id) => {
                drop(key);
                return header_only(StatusCode::FORBIDDEN, Some(EVENTS_CHANNEL));
            }
            Ok(key) => {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            Err(refusal) => return header_only(refusal.status, Some(&refusal.explain)),
        }
    }
    let fmt = Fmt::from_accept(req.headers());
    if method == Method::GET {
        return match ps.channel_infos(&keys).await {
            Ok(infos) => stats::detailed(ps, fmt, &infos).await,
            Err(res) => res,
        };
    }
    let event_id = header(req.headers(), "event-id").map(str::to_owned);
    let event_type = header(req.headers(), "event-type").map(str::to_owned);
    let body = match read_body(req, ps.app.config.limits.max_message_size).await {
        Ok(b) => b,
        Err(e) => return header_only(e.status, None),
    };
    if method == Method::DELETE {
        return delete(ps, &keys, &body).await;
    }
    if body.is_empty() {
        return header_only(StatusCode::BAD_REQUEST, Some(EMPTY_POST));
    }
    let text = String::from_utf8_lossy(&body);
    let publication = PsState::publication(&text, event_id.as_deref(), event_type.as_deref());
    for key in &keys {
        let published = ps.publish(key, publication.clone()).await;
        if let Err(e) = published {
            tracing::warn!(channel = %key, error = %e, "Push-stream publish failed.");
            return header_only(StatusCode::INTERNAL_SERVER_ERROR, None);
        }
    }
    if !ps.cfg.channel_info_on_publish {
        return header_only(StatusCode::OK, None);
    }
    let infos = match ps.channel_infos(&keys).await {
        Ok(infos) => infos,
        Err(res) => return res,
    };
    if infos.is_empty() {
        // Nothing kept the channel (no history, no subscriber): report the
        // publish alone.
        return header_only(StatusCode::OK, None);
    }
    stats::detailed(ps, fmt, &infos).await
}

/// The OpenAPI entries of `/pub`, one per method: [`handle`] answers them
/// all, so these functions only carry the documentation.
#[allow(dead_code)]
pub(super) mod doc {
    use super::super::DOC_IDS;

    const BAD_ID: &str = "No `id`, or a channel id too long or not a valid Herald name";
    const FORBIDDEN: &str = "`ALL` or `*` in `id`, or (to write) the events channel";
    const INFO: &str = "The channel info in the format `Accept` picks (JSON by default): \
        `{\"channel\", \"published_messages\", \"stored_messages\", \"subscribers\"}`, \
        several channels as a group (see `/channels-stats`)";
    const TOO_LARGE: &str = "Body over `limits.max_message_size`";

    /// Publishes the body to each channel of `id`.
    #[utoipa::path(post, path = "/pub", tag = "pushstream",
        operation_id = "pushstream_publish",
        description = "`PUT` does the same. The reply is the channel info with \
            `channel_info_on_publish` (default on), otherwise empty.",
        params(("id" = String, Query, description = DOC_IDS),
            ("Event-Id" = Option<String>, Header,
                description = "The message's `~event-id~` (EventSource `id:`)"),
            ("Event-Type" = Option<String>, Header,
                description = "The message's `~event-type~` (EventSource `event:`)")),
        request_body(content = String, content_type = "text/plain",
            description = "The message text, delivered as is (not UTF-8 is replaced lossily)"),
        responses((status = 200, description = INFO),
            (status = 400, description = "An empty body, or a bad `id`",
                headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
            (status = 403, description = FORBIDDEN,
                headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
            (status = 413, description = TOO_LARGE),
            (status = 500, description = "The publish failed"),
            (status = 503, description = "The broker could not be asked for the channel info")))]
    fn publish() {}

    /// The channel info of each channel of `id`.
    #[utoipa::path(get, path = "/pub", tag = "pushstream",
        operation_id = "pushstream_channel_info",
        params(("id" = String, Query, description = DOC_IDS)),
        responses((status = 200, description = INFO),
            (status = 400, description = BAD_ID,
                headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
            (status = 403, description = "`ALL` or `*` in `id`",
                headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
            (status = 404, description = "No such channel"),
            (status = 503, description = "The broker could not be asked")))]
    fn channel_info() {}

    /// Deletes each channel of `id` (`[pushstream] admin`, default on).
    #[utoipa::path(delete, path = "/pub", tag = "pushstream",
        operation_id = "pushstream_delete",
        description = "Subscribers get the -2 message and leave, unless subscribed to other \
            channels; stored messages are dropped.",
        params(("id" = String, Query, description = DOC_IDS)),
        request_body(content = Option<String>, content_type = "text/plain",
            description = "Replaces `channel_deleted_message_text` in the -2 message"),
        responses(
            (status = 200, description = "Deleted",
                headers(("X-Nginx-PushStream-Explain" = String, description = "`Channel deleted.`"))),
            (status = 400, description = BAD_ID,
                headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
            (status = 403, description = FORBIDDEN,
                headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
            (status = 404, description = "No channel existed"),
            (status = 405, description = "`admin` is off"),
            (status = 413, description = TOO_LARGE),
            (status = 503, description = "The broker could not delete")))]
    fn delete() {}
}

/// `DELETE /pub?id=…`: subscribers get the -2 message (the body, when
/// given, replaces the configured text) and leave; 404 when no channel
/// existed. On a cluster the channel goes on every node, whose subscribers
/// get the configured text.
async fn delete(ps: &PsState, keys: &[ChannelKey], body: &[u8]) -> Response {
    let mut deleted = 0;
    for key in keys {
        if !body.is_empty() {
            ps.render
                .deleting
                .lock()
                .insert(key.clone(), String::from_utf8_lossy(body).into_owned());
        }
        let subscribers = ps.app.engine.delete(key).await;
        ps.render.deleting.lock().remove(key);
        let subscribers = match subscribers {
            Ok(subscribers) => subscribers,
            Err(e) => {
                tracing::warn!(channel = %key, error = %e, "Push-stream delete failed.");
                return header_only(StatusCode::SERVICE_UNAVAILABLE, None);
            }
        };
        if let Some(subscribers) = subscribers {
            deleted += 1;
            tracing::info!(channel = %key, subscribers, "Push-stream channel deleted.");
            events::emit(ps, CHANNEL_DESTROYED, key.name());
        }
    }
    if deleted == 0 {
        header_only(StatusCode::NOT_FOUND, None)
    } else {
        header_only(StatusCode::OK, Some(CHANNEL_DELETED))
    }
}
