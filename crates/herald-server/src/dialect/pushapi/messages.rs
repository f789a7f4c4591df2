//! `POST /api/v1/messages {"channels":[…],"content":"…"}` → 204.
//!
//! push-api escapes the content with Go's `url.PathEscape` and push-agent
//! POSTs it to push-stream's `/pub?id=<channel>` for each channel, so
//! subscribers see the escaped text (pushstream.js `decodeURIComponent`s it).
//! An empty content publishes nothing (push-stream refuses empty bodies).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::BrokerError;
use serde::Deserialize;

use super::{ApiError, ApiState, error, go_json};
use crate::dialect::pushstream::PsState;
use crate::dialect::pushstream::request::{channel_key, parse_ids};

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PushApiMessage)]
struct MessageBody {
    /// Channel ids; one with `/` is several.
    channels: Option<Vec<String>>,
    /// Delivered escaped as Go's `url.PathEscape` does; empty sends nothing.
    content: Option<String>,
}

/// Go's `url.PathEscape`: everything but `A-Z a-z 0-9 - _ . ~ $ & + : = @`
/// becomes `%XX` (upper-case hex, per UTF-8 byte).
pub(crate) fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Publishes the escaped `content` to every channel of `channels`, as
/// push-agent does (an id with `/` is several channels to push-stream).
/// Invalid ids are skipped, as push-agent's requests for them fail unseen;
/// a broker that fails is push-api's failed Redis `PUBLISH`: the others are
/// still tried, and the error is returned.
pub(crate) async fn deliver(
    state: &ApiState,
    channels: &[String],
    content: &str,
) -> Result<(), BrokerError> {
    let text = path_escape(content);
    if text.is_empty() {
        return Ok(());
    }
    let publication = PsState::publication(&text, None, None);
    let mut failed = None;
    for channel in channels {
        for requested in parse_ids(channel) {
            let key = match channel_key(&state.ps, &requested.id) {
                Ok(k) if !state.ps.is_events_channel(&requested.id) => k,
                Ok(_) => continue,
                Err(r) => {
                    tracing::warn!(channel = %requested.id, reason = %r.explain, "push-api message not delivered.");
                    continue;
                }
            };
            if let Err(e) = state.ps.publish(&key, publication.clone()).await {
                tracing::warn!(channel = %key, error = %e, "push-api publish failed.");
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// `POST /api/v1/messages`.
#[utoipa::path(post, path = "/api/v1/messages", tag = "push-api",
    operation_id = "pushapi_publish", summary = "Publishes a message to channels",
    security(("push_api_basic" = [])),
    description = "Invalid channel ids are skipped.",
    request_body = MessageBody,
    responses((status = 204, description = "Published"),
        (status = 400, description = "Code 100: invalid body", body = ApiError),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 500, description = "Code 101: the broker failed to take the message \
            for at least one channel (the others got it)", body = ApiError)))]
pub(crate) async fn publish(State(state): State<ApiState>, body: Bytes) -> Response {
    let Some(body) = go_json::<MessageBody>(&body, &["channels", "content"]) else {
        return error(StatusCode::BAD_REQUEST, 100, "invalid request body");
    };
    let channels = body.channels.unwrap_or_default();
    match deliver(&state, &channels, &body.content.unwrap_or_default()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            101,
            "failed to publish message",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go_path_escape() {
        assert_eq!(path_escape("hello world"), "hello%20world");
        assert_eq!(path_escape("a/b;c,d?e"), "a%2Fb%3Bc%2Cd%3Fe");
        assert_eq!(path_escape("$&+:=@-_.~"), "$&+:=@-_.~");
        assert_eq!(path_escape("é\"{}"), "%C3%A9%22%7B%7D");
    }
}
