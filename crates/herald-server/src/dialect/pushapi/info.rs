//! push-api's informational routes: `/api/`, `/api/healthcheck`,
//! `/api/v1/config` and the stats push-agent would have collected from
//! push-stream (here read from this node directly, agent `[pushapi] agent`).

use crate::http::extract::Path;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

use super::{ApiError, ApiState, error, gin_json};

/// `GET /api/`.
#[utoipa::path(get, path = "/api/", tag = "push-api",
    operation_id = "pushapi_root", summary = "push-api's name", security(("push_api_basic" = [])),
    responses((status = 200, description = "`{\"data\":{\"app\":\"push-api\"}}`"),
        (status = 401, description = super::DOC_UNAUTHORIZED)))]
pub(crate) async fn root() -> Response {
    gin_json(StatusCode::OK, &json!({"data": {"app": "push-api"}}))
}

/// `GET /api/healthcheck`.
#[utoipa::path(get, path = "/api/healthcheck", tag = "push-api",
    operation_id = "pushapi_healthcheck", summary = "Health check",
    security(("push_api_basic" = [])),
    responses((status = 200,
            description = "`{\"data\":{\"services\":[{\"service\":\"app\",\"status\":\"working\"}]}}`"),
        (status = 401, description = super::DOC_UNAUTHORIZED)))]
pub(crate) async fn healthcheck() -> Response {
    gin_json(
        StatusCode::OK,
        &json!({"data": {"services": [{"service": "app", "status": "working"}]}}),
    )
}

/// Splits `scheme://host[:port]/…` as Go's `url.Parse` reports
/// `Hostname()` and `Port()`.
fn host_and_port(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
        return (
            host.to_owned(),
            after.strip_prefix(':').unwrap_or("").to_owned(),
        );
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.to_owned()),
        None => (authority.to_owned(), String::new()),
    }
}

/// `GET /api/v1/config` → `{"pushStream":{"hostname","port","url"}}`.
#[utoipa::path(get, path = "/api/v1/config", tag = "push-api",
    operation_id = "pushapi_config", summary = "Where push-stream is",
    security(("push_api_basic" = [])),
    description = "`url` is `[pushapi] push_stream_url`, or `http://<Host><pushstream prefix>` (`https://` with TLS).",
    responses((status = 200, description = "`{\"pushStream\":{\"hostname\",\"port\",\"url\"}}`"),
        (status = 400, description = "Code 300: the `Host` is not `host[:port]` and no URL is set"),
        (status = 401, description = super::DOC_UNAUTHORIZED)))]
pub(crate) async fn config(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let url = if state.push_stream_url.is_empty() {
        let Some(base) = crate::http::request_base(&state.ps.app, &headers, "https") else {
            let message = "the Host header is not host[:port] (or set pushapi.push_stream_url)";
            return error(StatusCode::BAD_REQUEST, 300, message);
        };
        format!("{base}{}", state.push_stream_path)
    } else {
        state.push_stream_url.clone()
    };
    let (hostname, port) = host_and_port(&url);
    gin_json(
        StatusCode::OK,
        &json!({"pushStream": {"url": url, "hostname": hostname, "port": port}}),
    )
}

/// One agent's summarized push-stream stats.
#[derive(Serialize)]
struct GlobalStats {
    hostname: String,
    time: String,
    channels: usize,
    wildcard_channels: usize,
    published_messages: u64,
    stored_messages: usize,
    messages_in_trash: u64,
    channels_in_delete: u64,
    channels_in_trash: u64,
    subscribers: usize,
    uptime: u64,
    agent: String,
}

#[derive(Serialize)]
struct GlobalAggregated {
    time: String,
    subscribers: usize,
}

#[derive(Serialize)]
struct GlobalResult {
    aggregated: GlobalAggregated,
    all: Vec<GlobalStats>,
}

/// `GET /api/v1/stats/global`.
#[utoipa::path(get, path = "/api/v1/stats/global", tag = "push-api",
    operation_id = "pushapi_global_stats", summary = "push-stream's server stats",
    security(("push_api_basic" = [])),
    responses((status = 200, description = "`{\"aggregated\":{\"subscribers\",\"time\"},\"all\":[…]}`: \
            `all` holds push-stream's summary (see `/channels-stats`) with `agent`"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 503, description = "The broker could not be asked")))]
pub(crate) async fn global_stats(State(state): State<ApiState>) -> Response {
    let ps = &state.ps;
    let all = match ps.all_channels().await {
        Ok(all) => all,
        Err(res) => return res,
    };
    let g = ps.global(&all);
    let s = ps.summary(&all);
    let stats = GlobalStats {
        hostname: g.hostname,
        time: g.time.clone(),
        channels: g.channels,
        wildcard_channels: g.wildcard,
        published_messages: s.published,
        stored_messages: s.stored,
        messages_in_trash: 0,
        channels_in_delete: 0,
        channels_in_trash: 0,
        subscribers: s.subscribers,
        uptime: g.uptime,
        agent: ps.app.config.pushapi.agent.clone(),
    };
    let result = GlobalResult {
        aggregated: GlobalAggregated {
            time: g.time,
            subscribers: s.subscribers,
        },
        all: vec![stats],
    };
    gin_json(StatusCode::OK, &result)
}

#[derive(Serialize)]
struct ChannelStats {
    channel: String,
    published_messages: u64,
    stored_messages: usize,
    subscribers: usize,
    hostname: String,
    agent: String,
}

#[derive(Serialize)]
struct ChannelAggregated {
    subscribers: usize,
}

#[derive(Serialize)]
struct ChannelResult {
    aggregated: ChannelAggregated,
    all: Vec<ChannelStats>,
}

/// `GET /api/v1/stats/channels/{id}` → the channel's stats, or 404 with
/// code 200 when this node has no such channel.
#[utoipa::path(get, path = "/api/v1/stats/channels/{id}", tag = "push-api",
    operation_id = "pushapi_channel_stats", summary = "A channel's stats",
    security(("push_api_basic" = [])),
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "`{\"aggregated\":{\"subscribers\"},\"all\":[{\"channel\", \
            \"published_messages\",\"stored_messages\",\"subscribers\",\"hostname\",\"agent\"}]}`"),
        (status = 401, description = super::DOC_UNAUTHORIZED),
        (status = 404, description = "Code 200: no such channel", body = ApiError),
        (status = 503, description = "The broker could not be asked")))]
pub(crate) async fn channel_stats(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Response {
    let ps = &state.ps;
    let keys: Vec<_> = ps.channel(&id).into_iter().collect();
    let infos = match ps.channel_infos(&keys).await {
        Ok(infos) => infos,
        Err(res) => return res,
    };
    let Some(info) = infos.into_iter().next() else {
        return error(StatusCode::NOT_FOUND, 200, "stats data not found");
    };
    let stats = ChannelStats {
        channel: id,
        published_messages: info.next_offset.saturating_sub(1),
        stored_messages: info.stored,
        subscribers: info.subscribers,
        hostname: ps.hostname.clone(),
        agent: ps.app.config.pushapi.agent.clone(),
    };
    gin_json(
        StatusCode::OK,
        &ChannelResult {
            aggregated: ChannelAggregated {
                subscribers: stats.subscribers,
            },
            all: vec![stats],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls_like_go() {
        assert_eq!(
            host_and_port("http://localhost:9080"),
            ("localhost".into(), "9080".into())
        );
        assert_eq!(
            host_and_port("http://h.example/ps"),
            ("h.example".into(), String::new())
        );
        assert_eq!(
            host_and_port("http://[::1]:80/x"),
            ("::1".into(), "80".into())
        );
    }
}
