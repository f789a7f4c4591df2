//! Server-Sent Events transport: a streaming response body fed from the
//! connection's outbox, with heartbeats, a lifetime and a reconnect hint.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use herald_core::Frame;

use crate::cursor::Cursor;

use crate::error::ApiError;
use crate::lifetime::{Clock, Tick};
use crate::metrics::{ConnectionSlot, Transport};
use crate::session::Session;
use crate::state::AppState;
use crate::transport::ws::connection_limit;

/// The fixed frames of one SSE dialect.
#[derive(Clone, Default)]
pub(crate) struct SseStyle {
    /// Sent first (e.g. `retry:`, an initial heartbeat).
    pub(crate) preamble: Bytes,
    /// Sent every heartbeat interval.
    pub(crate) heartbeat: Bytes,
    /// Sent once, `close_grace` before the lifetime ends, and on shutdown.
    pub(crate) reconnect: Bytes,
    /// When set, every message gets an `id:` line holding the connection's
    /// position in all its channels, so `Last-Event-ID` resumes them all.
    pub(crate) cursor: Option<Cursor>,
}

/// State carried between body chunks.
struct Stream {
    state: AppState,
    session: Session,
    style: SseStyle,
    clock: Clock,
    /// Reused between drains.
    batch: Vec<Frame>,
    /// Set once the stream must end after the next chunk.
    done: bool,
    /// Held for the life of the response.
    _slot: ConnectionSlot,
}

/// Builds the streaming response for an already-subscribed `session`.
pub(crate) fn respond(
    state: &AppState,
    session: Session,
    style: SseStyle,
) -> Result<Response, ApiError> {
    let slot = state
        .metrics
        .open(Transport::Sse, state.config.limits.max_connections)
        .ok_or_else(connection_limit)?;
    let first = style.preamble.clone();
    let s = Stream {
        clock: Clock::start(&state.config.connection),
        state: state.clone(),
        session,
        style,
        batch: Vec::new(),
        done: false,
        _slot: slot,
    };
    let body = stream::once(async move { Ok::<_, Infallible>(first) })
        .chain(stream::unfold(s, next_chunk));
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

use futures_util::StreamExt;

impl Stream {
    /// Joins the drained frames into one chunk, adding cursor ids.
    fn render_batch(&mut self) -> Bytes {
        if self.batch.len() == 1 && self.style.cursor.is_none() {
            return self.batch.pop().map(|f| f.bytes).unwrap_or_default();
        }
        let size: usize = self.batch.iter().map(|f| f.bytes.len() + 64).sum();
        let mut buf = BytesMut::with_capacity(size);
        for frame in self.batch.drain(..) {
            if let (Some(cursor), Some(msg)) = (&mut self.style.cursor, &frame.message) {
                cursor.advance(msg);
                buf.extend_from_slice(format!("id: {cursor}\n").as_bytes());
            }
            buf.extend_from_slice(&frame.bytes);
        }
        buf.freeze()
    }
}

/// Waits for the next thing to write; `None` ends the response.
async fn next_chunk(mut s: Stream) -> Option<(Result<Bytes, Infallible>, Stream)> {
    if s.done {
        return None;
    }
    let outbox = s.session.outbox.clone();
    loop {
        let deadline = s.clock.next_deadline();
        tokio::select! {
            biased;
            () = s.state.shutdown.signalled() => {
                s.done = true;
                return Some((Ok(s.style.reconnect.clone()), s));
            }
            () = outbox.ready() => {
                let closed = outbox.drain(&mut s.batch);
                if closed.is_some() {
                    s.done = true;
                }
                if s.batch.is_empty() {
                    if closed.is_some() {
                        return None;
                    }
                    continue;
                }
                let chunk = s.render_batch();
                return Some((Ok(chunk), s));
            }
            () = tokio::time::sleep_until(deadline) => {
                match s.clock.fire(tokio::time::Instant::now()) {
                    Some(Tick::Heartbeat) => return Some((Ok(s.style.heartbeat.clone()), s)),
                    Some(Tick::ReconnectHint) => return Some((Ok(s.style.reconnect.clone()), s)),
                    Some(Tick::Expire) => return None,
                    None => continue,
                }
            }
        }
    }
}
