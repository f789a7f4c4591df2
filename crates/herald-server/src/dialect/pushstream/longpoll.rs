//! `/lp/…` (and PushaaS's `/jsonp/…`): long-polling, and polling when
//! `X-Nginx-PushStream-Mode: polling` asks for it.
//!
//! A request subscribes for its duration, replaying what the client's
//! markers say it missed. With something to send it answers 200 at once,
//! with `Last-Modified`/`Etag` naming the newest message sent; otherwise it
//! waits up to `longpolling_ttl` (polling does not wait) and answers 304
//! with the client's own markers, or, for a client that sent none, markers
//! naming the moment it subscribed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use herald_core::Frame;
use herald_core::message::now_ms;

use super::events::Presence;
use super::format::{Kind, PsFormat, TIMEOUT_ID, TIMEOUT_TEXT};
use super::marker::Marker;
use super::request::{self, Args, ControlArgs, Refusal};
use super::template::Fields;
use super::{PsState, channels_path, header_only, no_cache};
use crate::metrics::Transport;
use crate::session::Session;

/// OpenAPI descriptions `/lp` and `/jsonp` share.
const ANSWER: &str = "The rendered messages back to back, with `Last-Modified` and `Etag` \
    naming the newest; `fn([m1,m2]);` with `callback`";
const NOTHING_NEW: &str = "Nothing new within `longpolling_ttl`: `Last-Modified` and `Etag` \
    to poll again with (200 with the -3 message under `timeout_with_body`)";

/// `GET /lp/ch1/ch2`: long-polling.
#[utoipa::path(get, path = "/lp/{channels}", tag = "pushstream",
    operation_id = "pushstream_lp", summary = "Long-polling subscription",
    description = "Answers at once when the markers or a backtrack select stored messages, \
        otherwise waits up to `longpolling_ttl` for the next one.",
    params(("channels" = String, Path, description = super::DOC_CHANNELS), ControlArgs,
        super::ResumeHeaders),
    responses((status = 200, description = ANSWER),
        (status = 304, description = NOTHING_NEW),
        (status = 400, description = "No channel, a bad channel id, or a bad `callback`",
            headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
        super::Refused))]
pub(crate) async fn lp(
    State(ps): State<PsState>,
    method: Method,
    uri: Uri,
    Args(args): Args<ControlArgs>,
    headers: HeaderMap,
) -> Response {
    let mut res = if method == Method::OPTIONS {
        header_only(StatusCode::OK, None)
    } else if method != Method::GET {
        super::not_allowed("GET")
    } else {
        answer(&ps, &uri, &args, &headers, true).await
    };
    ps.cors(res.headers_mut(), "GET");
    res
}

// `/jsonp/…` is served by `lp`; this only carries its OpenAPI entry.
/// `GET /jsonp/ch1/ch2`: PushaaS's name for `/lp`.
#[utoipa::path(get, path = "/jsonp/{channels}", tag = "pushstream",
    operation_id = "pushstream_jsonp", summary = "Long-polling subscription, for JSONP",
    description = "`/lp` under another name, for JSONP clients (`callback`).",
    params(("channels" = String, Path, description = super::DOC_CHANNELS), ControlArgs,
        super::ResumeHeaders),
    responses((status = 200, description = ANSWER),
        (status = 304, description = NOTHING_NEW),
        (status = 400, description = "No channel, a bad channel id, or a bad `callback`",
            headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
        super::Refused))]
#[allow(dead_code)]
fn jsonp() {}

/// A JSONP callback name: letters, digits, `_`, `$` and `.` only (the
/// module takes any; the name is written into a script). `args` holds it
/// decoded once already, as the module's `unescape_uri` of `$arg_callback`.
fn callback(args: &ControlArgs) -> Result<Option<String>, Refusal> {
    let Some(name) = args.callback.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_$.".contains(c))
    {
        Ok(Some(name.to_owned()))
    } else {
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "Invalid callback name.",
        ))
    }
}

/// Answers one polling (`long` false) or long-polling request.
pub(crate) async fn answer(
    ps: &PsState,
    uri: &Uri,
    args: &ControlArgs,
    headers: &HeaderMap,
    long: bool,
) -> Response {
    let prepared = callback(args).and_then(|cb| {
        request::subscription(ps, channels_path(uri), headers, args).map(|sub| (cb, sub))
    });
    let (callback, sub) = match prepared {
        Ok(p) => p,
        Err(r) => return header_only(r.status, Some(&r.explain)),
    };
    // Where a timeout sends a client that gave no markers: just before it
    // subscribed, so that its next request reads from history whatever was
    // published since and never reached it. The clock at the timeout would
    // step over a message stamped before a second boundary and queued after
    // the last drain (in a cluster, one still on its way from Redis).
    let subscribed = Marker::from_ms(now_ms().saturating_sub(1));
    let max = ps.app.config.limits.max_connections;
    let Some(_slot) = ps.app.metrics.open(Transport::Poll, max) else {
        return header_only(StatusCode::SERVICE_UNAVAILABLE, None);
    };
    let (format, _deleted) = PsFormat::new(Kind::Poll, ps.render.clone());
    let mut session = Session::new(ps.app.clone(), format);
    let mut presence = Presence::new(ps);
    if let Err(r) = request::subscribe(ps, &mut session, &sub, &mut presence).await {
        return header_only(r.status, Some(&r.explain));
    }
    let outbox = session.outbox.clone();
    let mut frames: Vec<Frame> = Vec::new();
    outbox.drain(&mut frames);
    // The client's own markers, each echoed when given (the module keeps a
    // tag that came without a time).
    let given = Marker {
        time: sub.since.map_or(0, |s| s.time),
        tag: sub.tag.unwrap_or(0),
    };
    if frames.is_empty() && !long {
        // Nothing new: 304 with the client's own markers.
        let mut res = header_only(StatusCode::NOT_MODIFIED, None);
        markers(res.headers_mut(), given, sub.tag.is_some());
        return res;
    }
    if frames.is_empty() {
        let ttl = ps.cfg.longpolling_ttl;
        tokio::select! {
            () = outbox.ready() => {}
            () = tokio::time::sleep(if ttl.is_zero() { Duration::from_secs(30) } else { ttl }) => {}
            () = ps.app.shutdown.signalled() => {}
        }
        outbox.drain(&mut frames);
    }
    drop(session);
    drop(presence);
    if frames.is_empty() {
        // A client with markers keeps them: nothing reached it since (an
        // overflowed queue was dropped whole, to be read from history).
        let (marker, with_tag) = match sub.since.is_some() || sub.tag.is_some() {
            true => (given, sub.tag.is_some()),
            false => (subscribed, true),
        };
        return timed_out(ps, callback.as_deref(), marker, with_tag);
    }
    let newest = frames
        .iter()
        .filter_map(|f| f.message.as_deref().map(Marker::of))
        .max()
        .unwrap_or_else(Marker::now);
    let parts: Vec<Bytes> = frames.into_iter().map(|f| f.bytes).collect();
    reply(ps, StatusCode::OK, &parts, callback.as_deref(), newest)
}

/// The long-poll TTL ran out with nothing to send: the client is sent to
/// `marker` (its tag too when `with_tag`).
fn timed_out(ps: &PsState, callback: Option<&str>, marker: Marker, with_tag: bool) -> Response {
    if ps.cfg.timeout_with_body {
        let body = ps
            .render
            .message
            .to_bytes(&Fields::control(TIMEOUT_ID, TIMEOUT_TEXT));
        return reply(ps, StatusCode::OK, &[Bytes::from(body)], callback, marker);
    }
    let mut res = header_only(StatusCode::NOT_MODIFIED, None);
    markers(res.headers_mut(), marker, with_tag);
    res
}

fn markers(h: &mut HeaderMap, m: Marker, with_tag: bool) {
    if m.time > 0
        && let Ok(v) = HeaderValue::from_str(&m.http_date())
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    if with_tag && let Ok(v) = HeaderValue::from_str(&m.etag()) {
        h.insert(header::ETAG, v);
    }
}

/// A 200 with `parts` between the header and footer templates, wrapped as
/// `callback([a,b]);` for JSONP.
fn reply(
    ps: &PsState,
    status: StatusCode,
    parts: &[Bytes],
    callback: Option<&str>,
    newest: Marker,
) -> Response {
    let mut body = BytesMut::new();
    body.extend_from_slice(&ps.chunks.header);
    if let Some(cb) = callback {
        body.extend_from_slice(cb.as_bytes());
        body.extend_from_slice(b"([");
    }
    for (i, part) in parts.iter().enumerate() {
        if i > 0 && callback.is_some() {
            body.extend_from_slice(b",");
        }
        body.extend_from_slice(part);
    }
    if callback.is_some() {
        body.extend_from_slice(b"]);");
    }
    body.extend_from_slice(&ps.chunks.footer);
    let mut res = Response::new(Body::from(body.freeze()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    let content_type = match callback {
        Some(_) => HeaderValue::from_static("application/javascript"),
        None => HeaderValue::from_str(&ps.cfg.content_type)
            .unwrap_or(HeaderValue::from_static("text/plain")),
    };
    h.insert(header::CONTENT_TYPE, content_type);
    no_cache(h);
    markers(h, newest, true);
    res
}
