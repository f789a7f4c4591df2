//! Server-Sent Events transport: heartbeats, a lifetime and a reconnect hint
//! around the connection's outbox. Behind hyper the stream is a response
//! body; on a plain TCP connection whose first request it is
//! ([`crate::transport::handshake`]) it owns the socket, and frames go to it
//! straight from the publisher, as on a WebSocket.

use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use herald_core::{Closed, Frame};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::cursor::{Cursor, Undo};
use crate::error::ApiError;
use crate::lifetime::{Clock, Tick};
use crate::metrics::{ConnectionSlot, Transport};
use crate::session::Session;
use crate::state::AppState;
use crate::transport::deflate::{self, GzipStream};
use crate::transport::shared_socket::{Framing, Queued, SharedSocket, SocketIo};
use crate::transport::ws::{CLOSE_WAIT, connection_limit, due, sent_within};

/// The fixed frames of one SSE dialect.
#[derive(Clone, Default)]
pub(crate) struct SseStyle {
    /// Sent first (e.g. `retry:`, an initial heartbeat).
    pub(crate) preamble: Bytes,
    /// Sent every heartbeat interval.
    pub(crate) heartbeat: Bytes,
    /// Sent once, `close_grace` before the lifetime ends, and on shutdown.
    pub(crate) reconnect: Bytes,
    /// Sent last when the server disconnects the client on purpose
    /// ([`Closed::Evicted`]); nothing when empty.
    pub(crate) disconnected: Bytes,
    /// When set, every message gets an `id:` line holding the connection's
    /// position in all its channels, so `Last-Event-ID` resumes them all.
    pub(crate) cursor: Option<Cursor>,
}

impl SseStyle {
    /// The style of a stream sent as `gzip`: every fixed frame as its
    /// segment, the header in front of the preamble.
    fn encoded(mut self, gzip: Option<GzipStream>) -> Self {
        if let Some(gzip) = gzip {
            let mut preamble = GzipStream::HEADER.to_vec();
            if !self.preamble.is_empty() {
                preamble.extend_from_slice(&gzip.encode(&self.preamble));
            }
            self.preamble = preamble.into();
            for frame in [
                &mut self.heartbeat,
                &mut self.reconnect,
                &mut self.disconnected,
            ] {
                if !frame.is_empty() {
                    *frame = gzip.encode(frame);
                }
            }
        }
        self
    }
}

/// gzip for an SSE stream, when the server compresses SSE and the client's
/// `accepts` (its `Accept-Encoding` values) take it.
pub(crate) fn negotiate_gzip<'a>(
    state: &AppState,
    accepts: impl IntoIterator<Item = &'a [u8]>,
) -> Option<GzipStream> {
    let server = &state.config.server;
    if !server.sse_compression {
        return None;
    }
    let gzip = GzipStream::negotiate(accepts, server.compression_min_size);
    if gzip.is_some() {
        state.metrics.compressed(Transport::Sse);
    }
    gzip
}

/// Frames as they are, each message preceded by an `id:` line when the
/// connection keeps a cursor; as gzip segments when the stream is gzip.
pub(crate) struct SseFraming {
    /// The connection's position, advanced by each message and written as its `id:`.
    cursor: Option<Cursor>,
    /// How to step the cursor back over each frame laid out since the last
    /// [`Framing::keep`], in case the socket does not take it.
    laid_out: Vec<Option<Undo>>,
    /// Set when the stream is gzip.
    gzip: Option<GzipStream>,
}

impl SseFraming {
    fn new(cursor: Option<Cursor>, gzip: Option<GzipStream>) -> Self {
        Self {
            cursor,
            laid_out: Vec::new(),
            gzip,
        }
    }
}

impl Framing for SseFraming {
    fn lay_out(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        if let Some(cursor) = &mut self.cursor {
            let undo = frame.message.as_ref().map(|msg| {
                let undo = cursor.advance(msg);
                // The connection's own line: stored, not compressed.
                let stored = self.gzip.map(|_| deflate::begin_stored(out));
                // Writing into a Vec cannot fail.
                let _ = writeln!(out, "id: {cursor}");
                if let Some(at) = stored {
                    deflate::end_stored(out, at);
                }
                undo
            });
            self.laid_out.push(undo);
        }
        match &self.gzip {
            Some(gzip) => gzip.push_shared(&frame.bytes, out),
            None => out.extend_from_slice(&frame.bytes),
        }
    }

    fn keep(&mut self, taken: usize) {
        if let Some(cursor) = &mut self.cursor {
            while self.laid_out.len() > taken {
                if let Some(Some(undo)) = self.laid_out.pop() {
                    cursor.undo(undo);
                }
            }
        }
        self.laid_out.clear();
    }
}

/// State carried between body chunks.
struct Stream {
    /// The app, for its shutdown signal.
    state: AppState,
    /// The subscriptions, and the outbox the chunks come from.
    session: Session,
    /// Adds the cursor's `id:` lines to the frames.
    framing: SseFraming,
    /// The dialect's preamble, heartbeat, reconnect and farewell frames.
    style: SseStyle,
    /// When the next heartbeat, reconnect hint or expiry is due.
    clock: Clock,
    /// Reused between drains.
    batch: Vec<Frame>,
    /// Set once the stream must end after the next chunk.
    done: bool,
    /// Held for the life of the response.
    _slot: ConnectionSlot,
}

/// Builds the streaming response for an already-subscribed `session`, to a
/// request with `headers`.
pub(crate) fn respond(
    state: &AppState,
    session: Session,
    style: SseStyle,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let slot = state
        .metrics
        .open(Transport::Sse, state.config.limits.max_connections)
        .ok_or_else(connection_limit)?;
    let accepts = headers.get_all(header::ACCEPT_ENCODING);
    let gzip = negotiate_gzip(state, accepts.iter().map(HeaderValue::as_bytes));
    let mut style = style.encoded(gzip);
    let first = style.preamble.clone();
    let s = Stream {
        clock: Clock::start(&state.config.connection),
        state: state.clone(),
        session,
        framing: SseFraming::new(style.cursor.take(), gzip),
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
    if gzip.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if state.config.server.sse_compression {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(res)
}

impl Stream {
    /// Joins the drained frames into one chunk, adding cursor ids.
    fn render_batch(&mut self) -> Bytes {
        if let ([frame], None, None) = (
            &mut self.batch[..],
            &self.framing.cursor,
            &self.framing.gzip,
        ) {
            let bytes = std::mem::take(&mut frame.bytes);
            self.batch.clear();
            return bytes;
        }
        let size: usize = self.batch.iter().map(|f| f.bytes.len() + 64).sum();
        let mut buf = Vec::with_capacity(size);
        for frame in &self.batch {
            self.framing.lay_out(frame, &mut buf);
        }
        self.framing.keep(self.batch.len());
        self.batch.clear();
        Bytes::from(buf)
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
                let farewell = if closed == Some(Closed::Evicted) {
                    s.style.disconnected.clone()
                } else {
                    Bytes::new()
                };
                if s.batch.is_empty() {
                    if closed.is_some() {
                        return (!farewell.is_empty()).then_some((Ok(farewell), s));
                    }
                    continue;
                }
                let mut chunk = s.render_batch();
                if !farewell.is_empty() {
                    chunk = [chunk, farewell].concat().into();
                }
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

/// `style` for a stream on a plain TCP socket, `gzip` or not: what
/// [`run_tcp`] takes, its preamble to write after the response head.
pub(crate) fn tcp_style(style: SseStyle, gzip: Option<GzipStream>) -> (SseStyle, SseFraming) {
    let mut style = style.encoded(gzip);
    let framing = SseFraming::new(style.cursor.take(), gzip);
    (style, framing)
}

/// Serves an SSE stream on a plain TCP socket, holding its connection slot,
/// once its response head and `style.preamble` are written (`style` and
/// `framing` from [`tcp_style`]). Frames go to the socket from the
/// publisher; this task writes what the socket could not take at once, the
/// heartbeats and the hints, and notices the client leaving. What the
/// client sends is read and ignored.
pub(crate) async fn run_tcp(
    state: AppState,
    stream: TcpStream,
    session: Session,
    (style, framing): (SseStyle, SseFraming),
    _slot: ConnectionSlot,
) {
    let conn = session.outbox.id();
    tracing::debug!(conn, "SSE stream opened.");
    let socket = SharedSocket::new(stream, framing);
    let mut io = SocketIo::new(socket.clone(), Bytes::new());
    let outbox = session.outbox.clone();
    outbox.attach(socket.clone());
    let heartbeat = state.config.connection.heartbeat;
    let mut clock = Clock::start(&state.config.connection);
    let sleep = tokio::time::sleep_until(clock.next_deadline());
    tokio::pin!(sleep);
    // Made once: see `ws::run_tcp`.
    let shutdown = state.shutdown.signalled();
    tokio::pin!(shutdown);
    let ready = outbox.ready();
    tokio::pin!(ready);
    // The socket was full when a heartbeat, the lifetime or shutdown came
    // due: the queue waits for it to take bytes again.
    let mut stalled = false;
    loop {
        // Whether to write the outbox's queue now.
        let write = tokio::select! {
            biased;
            () = &mut shutdown => {
                let _ = tokio::time::timeout(CLOSE_WAIT, io.write_all(&style.reconnect)).await;
                break;
            }
            () = &mut ready => {
                ready.set(outbox.ready());
                true
            }
            room = socket.writable(), if stalled => {
                if room.is_err() {
                    break;
                }
                true
            }
            read = std::future::poll_fn(|cx| discard(&mut io, cx)) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                false
            }
            () = &mut sleep => {
                let frame = match clock.fire(tokio::time::Instant::now()) {
                    Some(Tick::Heartbeat) => Some(&style.heartbeat),
                    Some(Tick::ReconnectHint) => Some(&style.reconnect),
                    Some(Tick::Expire) => break,
                    None => None,
                };
                if let Some(frame) = frame
                    && !sent_within(heartbeat, io.write_all(frame)).await
                {
                    break;
                }
                sleep.as_mut().reset(clock.next_deadline());
                false
            }
        };
        if !write {
            continue;
        }
        let due = due(shutdown.as_mut(), sleep.as_mut());
        match socket.write_queued(&outbox, &mut io, due).await {
            Ok(Queued::Written(None)) => stalled = false,
            Ok(Queued::Written(Some(why))) => {
                tracing::debug!(conn, ?why, "SSE stream's outbox closed.");
                if why == Closed::Evicted && !style.disconnected.is_empty() {
                    let bye = io.write_all(&style.disconnected);
                    let _ = tokio::time::timeout(CLOSE_WAIT, bye).await;
                }
                break;
            }
            Ok(Queued::Stalled) => stalled = true,
            Err(_) => break,
        }
    }
    // The body ends with the connection: what is written goes out first,
    // unless the client stopped reading.
    outbox.detach();
    let _ = tokio::time::timeout(CLOSE_WAIT, io.shutdown()).await;
    drop(session);
    tracing::debug!(conn, "SSE stream closed.");
}

/// Reads what the client sent and drops it, returning how much: an SSE
/// client has nothing to say, and only its end matters. The buffer lives
/// for the call alone: held across the stream's awaits, it would be part
/// of every idle stream's task.
fn discard(io: &mut SocketIo<SseFraming>, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    let mut scratch = [0u8; 512];
    let mut buf = ReadBuf::new(&mut scratch);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    Poll::Ready(Ok(buf.filled().len()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::{ChannelKey, Message, Publication};

    use super::*;

    fn frame(channel: &str, offset: u64) -> Frame {
        let key = ChannelKey::new(&Arc::from("app"), channel).unwrap();
        let msg = Message::new(
            key,
            Publication::new(Bytes::from_static(b"1")),
            offset,
            "e".into(),
        );
        Frame {
            bytes: Bytes::from(format!("data: {channel}{offset}\n\n")),
            message: Some(Arc::new(msg)),
        }
    }

    fn laid_out(framing: &mut SseFraming, frames: &[Frame]) -> String {
        let mut out = Vec::new();
        for frame in frames {
            framing.lay_out(frame, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    /// A frame's id holds the cursor after it and before any later frame,
    /// even when the socket took only some of a batch and the rest are laid
    /// out again.
    #[test]
    fn frames_the_socket_did_not_take_leave_the_cursor_as_it_was() {
        let mut framing = SseFraming::new(Some(Cursor::parse("a:e:0,b:e:0").unwrap()), None);
        let frames = [frame("a", 1), frame("b", 1), frame("a", 2)];
        assert_eq!(
            laid_out(&mut framing, &frames),
            "id: a:e:1,b:e:0\ndata: a1\n\n\
             id: a:e:1,b:e:1\ndata: b1\n\n\
             id: a:e:2,b:e:1\ndata: a2\n\n"
        );
        framing.keep(1);
        assert_eq!(
            laid_out(&mut framing, &frames[1..2]),
            "id: a:e:1,b:e:1\ndata: b1\n\n"
        );
        framing.keep(0);
        assert_eq!(
            laid_out(&mut framing, &frames[1..]),
            "id: a:e:1,b:e:1\ndata: b1\n\nid: a:e:2,b:e:1\ndata: a2\n\n"
        );
        framing.keep(2);
        let next = frame("b", 2);
        assert_eq!(
            laid_out(&mut framing, std::slice::from_ref(&next)),
            "id: a:e:2,b:e:2\ndata: b2\n\n"
        );
    }

    #[test]
    fn frames_without_a_message_or_cursor_go_as_they_are() {
        let mut framing = SseFraming::new(None, None);
        assert_eq!(laid_out(&mut framing, &[frame("a", 1)]), "data: a1\n\n");
        let mut framing = SseFraming::new(Some(Cursor::default()), None);
        let note = Frame::from(Bytes::from_static(b"event: deleted\ndata: {}\n\n"));
        assert_eq!(
            laid_out(&mut framing, &[note]),
            "event: deleted\ndata: {}\n\n"
        );
    }
}
