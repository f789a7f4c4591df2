//! `/sub/…` (streaming: template-rendered messages in one long body) and
//! `/ev/…` (EventSource). Both start with the header template, ping at
//! `ping_interval`, and end with the footer template when the subscriber
//! TTL runs out or every subscribed channel was deleted.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use herald_core::{ChannelKey, Frame};
use parking_lot::Mutex;

use super::events::Presence;
use super::format::{Kind, PsFormat};
use super::request::{self, Args, ControlArgs};
use super::{PsState, channels_path, header_only, longpoll, no_cache};
use crate::lifetime::{Clock, Tick};

use crate::metrics::{ConnectionSlot, Transport};
use crate::session::Session;

/// `GET /sub/ch1.b3/ch2`: one long response, a rendered template per message.
#[utoipa::path(get, path = "/sub/{channels}", tag = "pushstream",
    operation_id = "pushstream_sub", summary = "Streaming subscription",
    description = "The header template first, a ping every `ping_interval`, the footer \
        template when `subscriber_ttl` ends it or every channel was deleted.",
    params(("channels" = String, Path, description = super::DOC_CHANNELS), ControlArgs,
        super::ResumeHeaders,
        ("X-Nginx-PushStream-Mode" = Option<String>, Header,
            description = "`polling` or `long-polling`: answer as `/lp` does")),
    responses((status = 200, description = "The stream, as `[pushstream] content_type` \
            (default `text/plain; charset=utf-8`)"),
        (status = 304, description = "Polling mode: nothing new"),
        (status = 400, description = super::DOC_BAD_CHANNEL,
            headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
        super::Refused,
        (status = 503, description = "`limits.max_connections` reached")))]
pub(crate) async fn sub(
    State(ps): State<PsState>,
    method: Method,
    uri: Uri,
    Args(args): Args<ControlArgs>,
    headers: HeaderMap,
) -> Response {
    respond(&ps, method, &uri, &args, &headers, false).await
}

/// `GET /ev/ch1.b3/ch2`: EventSource.
#[utoipa::path(get, path = "/ev/{channels}", tag = "pushstream",
    operation_id = "pushstream_ev", summary = "EventSource subscription",
    description = "Per message `id:` and `event:` lines when published with them, then \
        `data:` lines of the rendered template; pings are `: -1`.",
    params(("channels" = String, Path, description = super::DOC_CHANNELS), ControlArgs,
        super::ResumeHeaders,
        ("X-Nginx-PushStream-Mode" = Option<String>, Header,
            description = "`polling` or `long-polling`: answer as `/lp` does")),
    responses((status = 200, description = "`text/event-stream`"),
        (status = 304, description = "Polling mode: nothing new"),
        (status = 400, description = super::DOC_BAD_CHANNEL,
            headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
        super::Refused,
        (status = 503, description = "`limits.max_connections` reached")))]
pub(crate) async fn ev(
    State(ps): State<PsState>,
    method: Method,
    uri: Uri,
    Args(args): Args<ControlArgs>,
    headers: HeaderMap,
) -> Response {
    respond(&ps, method, &uri, &args, &headers, true).await
}

async fn respond(
    ps: &PsState,
    method: Method,
    uri: &Uri,
    args: &ControlArgs,
    headers: &HeaderMap,
    event_source: bool,
) -> Response {
    let mut res = open(ps, method, uri, args, headers, event_source).await;
    ps.cors(res.headers_mut(), "GET");
    res
}

async fn open(
    ps: &PsState,
    method: Method,
    uri: &Uri,
    args: &ControlArgs,
    headers: &HeaderMap,
    event_source: bool,
) -> Response {
    if method == Method::OPTIONS {
        return header_only(StatusCode::OK, None);
    }
    if method != Method::GET {
        return super::not_allowed("GET");
    }
    // `X-Nginx-PushStream-Mode` turns any streaming location into polling.
    match headers
        .get("x-nginx-pushstream-mode")
        .and_then(|v| v.to_str().ok())
    {
        Some(m) if m.eq_ignore_ascii_case("polling") => {
            return longpoll::answer(ps, uri, args, headers, false).await;
        }
        Some(m) if m.eq_ignore_ascii_case("long-polling") => {
            return longpoll::answer(ps, uri, args, headers, true).await;
        }
        _ => {}
    }
    let sub = match request::subscription(ps, channels_path(uri), headers, args) {
        Ok(s) => s,
        Err(r) => return header_only(r.status, Some(&r.explain)),
    };
    let Some(slot) = ps
        .app
        .metrics
        .open(Transport::Sse, ps.app.config.limits.max_connections)
    else {
        return header_only(StatusCode::SERVICE_UNAVAILABLE, None);
    };
    let kind = if event_source {
        Kind::EventSource
    } else {
        Kind::Text
    };
    let (format, deleted) = PsFormat::new(kind, ps.render.clone());
    let mut session = Session::new(ps.app.clone(), format);
    let mut presence = Presence::new(ps);
    if let Err(r) = request::subscribe(ps, &mut session, &sub, &mut presence).await {
        return header_only(r.status, Some(&r.explain));
    }
    tracing::debug!(
        conn = session.outbox.id(),
        channels = sub.channels.len(),
        event_source,
        "Push-stream subscriber connected."
    );
    let chunks = &ps.chunks;
    let (header, footer, ping) = if event_source {
        (
            chunks.ev_header.clone(),
            chunks.ev_footer.clone(),
            Bytes::from_static(b": -1\n"),
        )
    } else {
        (
            chunks.header.clone(),
            chunks.footer.clone(),
            chunks.ping.clone(),
        )
    };
    let s = Streaming {
        clock: super::clock(&ps.cfg),
        ps: ps.clone(),
        session,
        presence,
        deleted,
        footer,
        ping,
        batch: Vec::new(),
        done: false,
        _slot: slot,
    };
    let body = stream::once(async move { Ok::<_, Infallible>(header) })
        .chain(stream::unfold(s, next_chunk));
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    let content_type = if event_source {
        HeaderValue::from_static("text/event-stream; charset=utf-8")
    } else {
        HeaderValue::from_str(&ps.cfg.content_type)
            .unwrap_or(HeaderValue::from_static("text/plain"))
    };
    h.insert(header::CONTENT_TYPE, content_type);
    no_cache(h);
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// One open stream.
struct Streaming {
    /// The mount the stream belongs to, whose app signals shutdown.
    ps: PsState,
    /// The subscriptions, and the outbox the chunks come from.
    session: Session,
    /// Announces the unsubscriptions when the stream ends.
    presence: Presence,
    /// Channels deleted under this connection, filled by its format.
    deleted: Arc<Mutex<Vec<ChannelKey>>>,
    /// Sent last when the stream ends on its own (shutdown, expiry, no channel left).
    footer: Bytes,
    /// Sent at every heartbeat, so that an idle stream still shows it is alive.
    ping: Bytes,
    /// When the next heartbeat is due, and when the stream expires.
    clock: Clock,
    /// Reused between drains.
    batch: Vec<Frame>,
    /// Set once the stream must end after the next chunk.
    done: bool,
    /// Held for the life of the response.
    _slot: ConnectionSlot,
}

impl Streaming {
    /// Drops the deleted channels; true when none is left.
    async fn forget_deleted(&mut self) -> bool {
        let gone: Vec<ChannelKey> = std::mem::take(&mut *self.deleted.lock());
        if gone.is_empty() {
            return false;
        }
        for key in &gone {
            self.presence.left(key);
        }
        self.session.unsubscribe(&gone).await;
        self.session.channels().is_empty()
    }
}

async fn next_chunk(mut s: Streaming) -> Option<(Result<Bytes, Infallible>, Streaming)> {
    if s.done {
        return None;
    }
    let outbox = s.session.outbox.clone();
    loop {
        let deadline = s.clock.next_deadline();
        tokio::select! {
            biased;
            () = s.ps.app.shutdown.signalled() => {
                s.done = true;
                return Some((Ok(s.footer.clone()), s));
            }
            () = outbox.ready() => {
                let closed = outbox.drain(&mut s.batch);
                let mut chunk = BytesMut::new();
                for frame in s.batch.drain(..) {
                    chunk.extend_from_slice(&frame.bytes);
                }
                if closed.is_some() {
                    // Slow consumer: the backlog is gone, so is the stream.
                    tracing::debug!(conn = outbox.id(), "Push-stream slow consumer disconnected.");
                    s.done = true;
                } else if s.forget_deleted().await {
                    chunk.extend_from_slice(&s.footer);
                    s.done = true;
                }
                if chunk.is_empty() && !s.done {
                    continue;
                }
                return Some((Ok(chunk.freeze()), s));
            }
            () = tokio::time::sleep_until(deadline) => {
                match s.clock.fire(tokio::time::Instant::now()) {
                    Some(Tick::Heartbeat) => return Some((Ok(s.ping.clone()), s)),
                    Some(Tick::Expire) => {
                        s.done = true;
                        return Some((Ok(s.footer.clone()), s));
                    }
                    Some(Tick::ReconnectHint) | None => continue,
                }
            }
        }
    }
}
