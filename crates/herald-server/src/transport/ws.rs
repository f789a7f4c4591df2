//! WebSocket transport: the handshake, and one task per connection that
//! selects over shutdown, the outbox, the socket and the connection's clock.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_core::{Closed, Frame};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::ConnectionConfig;
use crate::error::ApiError;
use crate::lifetime::{Clock, Tick};
use crate::metrics::{ConnectionSlot, Transport};
use crate::session::Session;
use crate::state::AppState;
use crate::transport::deflate::{Deflate, Inflate, InflateError};
use crate::transport::rewind::Rewind;
use crate::transport::shared_socket::{Flush, Framing, Queued, SharedSocket, SocketIo, WsText};
use crate::transport::write_timeout::WriteTimeout;

/// Close codes Herald uses (documented in docs/api.md).
pub(crate) mod close {
    /// Malformed frame or command the server cannot continue after. Don't reconnect.
    pub(crate) const BAD_REQUEST: u16 = 4000;
    /// Disconnected on purpose (`POST /api/v1/disconnect`). Don't reconnect.
    pub(crate) const DISCONNECTED: u16 = 4009;
    /// Client is too slow: its queue overflowed. Reconnect with backoff.
    pub(crate) const SLOW_CONSUMER: u16 = 4100;
    /// Connection lifetime over. Reconnect now.
    pub(crate) const LIFETIME: u16 = 4200;
    /// No pong to the server's ping. Reconnect now.
    pub(crate) const PING_TIMEOUT: u16 = 4201;
    /// Server shutting down or restarting. Reconnect (standard code).
    pub(crate) const RESTART: u16 = 1012;
}

/// `reason` cut to what a close frame carries: its payload is at most 125
/// bytes, two of them the code (RFC 6455 §5.5). A longer one would make
/// browsers fail the connection (1006) instead of reading the close.
pub(crate) fn fit_close_reason(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// What a dialect wants after handling a client frame.
#[derive(Default)]
pub(crate) struct Reply {
    /// Text frames to send, in order.
    pub(crate) frames: Vec<Bytes>,
    /// Close after sending them.
    pub(crate) close: Option<(u16, Cow<'static, str>)>,
}

impl Reply {
    pub(crate) fn frame(bytes: impl Into<Bytes>) -> Self {
        Self {
            frames: vec![bytes.into()],
            close: None,
        }
    }

    pub(crate) fn close(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            frames: Vec::new(),
            close: Some((code, reason.into())),
        }
    }
}

/// How one WebSocket dialect speaks: everything but the plumbing.
pub(crate) trait WsDialect: Send + 'static {
    /// Frames sent right after the handshake.
    fn greeting(&mut self) -> Reply {
        Reply::default()
    }

    /// Called every heartbeat: a frame to send (`None` sends a WS Ping), or
    /// an error close when the client failed the liveness check.
    fn heartbeat(&mut self) -> Result<Option<Bytes>, (u16, &'static str)>;

    /// The client answered something: a WS Pong or any frame.
    fn on_activity(&mut self) {}

    /// The frame telling the client to reconnect soon.
    fn reconnect_hint(&self) -> Option<Bytes>;

    /// The close sent when the lifetime ends.
    fn lifetime_close(&self) -> (u16, &'static str) {
        (close::LIFETIME, "lifetime expired, reconnect")
    }

    /// Handles one text frame from the client.
    fn on_text(&mut self, session: &mut Session, text: &str) -> impl Future<Output = Reply> + Send;

    /// Connection timing (heartbeat, lifetime); `None` uses `[connection]`.
    fn timing(&self) -> Option<ConnectionConfig> {
        None
    }

    /// Called after each batch of fanned-out frames is written: a close to
    /// end the connection with (e.g. every channel was deleted).
    fn after_batch(
        &mut self,
        _session: &mut Session,
    ) -> impl Future<Output = Option<(u16, Cow<'static, str>)>> + Send {
        async { None }
    }

    /// Whether frames may go to the socket without passing the connection's
    /// task ([`herald_core::Outbox::push_direct`]). Off for dialects whose
    /// [`WsDialect::after_batch`] must see every batch.
    fn direct_writes(&self) -> bool {
        true
    }

    /// A last text frame to send before the server's own close `code`
    /// (push-stream's footer template).
    fn farewell(&mut self, _code: u16) -> Option<Bytes> {
        None
    }

    /// Handles one binary frame from the client.
    fn on_binary(&mut self, _session: &mut Session, _data: &[u8]) -> Reply {
        Reply::close(close::BAD_REQUEST, "binary frames are not supported")
    }
}

/// Checks the upgrade request and builds the 101 response; [`upgrade`] then
/// runs the connection on the upgraded socket.
pub(crate) fn accept(
    state: &AppState,
    req: &mut Request,
) -> Result<(Response, hyper::upgrade::OnUpgrade, Option<Deflate>), ApiError> {
    // The router answers HEAD with the GET handler; a handshake is a GET
    // (RFC 6455 §4.1).
    if req.method() != axum::http::Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "a WebSocket handshake is a GET",
        ));
    }
    let headers = req.headers();
    let lists = |name: header::HeaderName, token: &str| {
        (headers.get_all(name).iter()).any(|v| has_token(v.as_bytes(), token))
    };
    if !lists(header::CONNECTION, "upgrade") || !lists(header::UPGRADE, "websocket") {
        // RFC 9110 §15.5.22: a 426 names the protocol to switch to.
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket",
        )
        .with_header(header::UPGRADE, "websocket"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        // RFC 6455 §4.2.2: with the version the server speaks.
        return Err(ApiError::bad_request("Sec-WebSocket-Version must be 13")
            .with_header(header::SEC_WEBSOCKET_VERSION, "13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::bad_request("Sec-WebSocket-Key is missing"));
    };
    if !is_websocket_key(key.as_bytes()) {
        return Err(ApiError::bad_request(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offers = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS);
    let deflate = negotiate_deflate(state, offers.iter().map(HeaderValue::as_bytes));
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::bad_request("connection cannot be upgraded"));
    };
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h: &mut HeaderMap = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(deflate) = deflate {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(&deflate.response()).expect("an ASCII header value"),
        );
    }
    Ok((res, on_upgrade, deflate))
}

/// permessage-deflate, when the server compresses and the client offers it
/// in a way Herald can accept.
pub(crate) fn negotiate_deflate<'a>(
    state: &AppState,
    offers: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Deflate> {
    let server = &state.config.server;
    if !server.ws_compression {
        return None;
    }
    let deflate = Deflate::negotiate(offers, server.compression_min_size);
    if deflate.is_some() {
        state.metrics.compressed(Transport::Ws);
    }
    deflate
}

/// Whether a comma-separated header value lists `token`, in any case.
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Upgrades `req` and runs `dialect` on the socket with `session`, which the
/// caller has already subscribed. Takes a connection slot first.
pub(crate) fn upgrade<D: WsDialect>(
    state: &AppState,
    mut req: Request,
    session: Session,
    dialect: D,
) -> Result<Response, ApiError> {
    let slot = state
        .metrics
        .open(Transport::Ws, state.config.limits.max_connections)
        .ok_or_else(connection_limit)?;
    let (response, on_upgrade, deflate) = accept(state, &mut req)?;
    let state = state.clone();
    state.shutdown.clone().spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "Upgrade failed."),
        };
        match upgraded.downcast::<TokioIo<WriteTimeout<Rewind>>>() {
            Ok(parts) => {
                let (stream, unread) = parts.io.into_inner().into_inner().into_parts();
                // Hyper's first read takes the whole prefix (at most 4
                // KiB), but were any left, it would follow what hyper read.
                // Copied: hyper's read buffer is kilobytes, and a slice of
                // it, even an empty one, would keep it whole.
                let early = if unread.is_empty() {
                    Bytes::copy_from_slice(&parts.read_buf)
                } else {
                    [parts.read_buf, unread].concat().into()
                };
                let run = run_tcp(
                    state.clone(),
                    stream,
                    early,
                    session,
                    dialect,
                    slot,
                    deflate,
                );
                state.shutdown.spawn(run);
            }
            // Not a plain TCP connection (TLS): everything goes through the
            // task, which drains the outbox; fan-outs wake it, as they do any
            // outbox without a socket attached.
            Err(upgraded) => {
                let limit = state.config.limits.max_message_size;
                let io = Inflate::new(TokioIo::new(upgraded), deflate, limit);
                let run = run(state.clone(), io, None, session, dialect, deflate, slot);
                state.shutdown.spawn(run);
            }
        }
    });
    Ok(response)
}

/// Serves `dialect` on a plain TCP socket whose handshake is done, holding
/// its connection slot; `early` holds the bytes read past the handshake,
/// the client's first frames; `deflate`, the compression agreed in it.
///
/// Not `async`: the task holds [`run`]'s future alone, without a wrapper
/// keeping room for these arguments beside it for the connection's life.
pub(crate) fn run_tcp<D: WsDialect>(
    state: AppState,
    stream: TcpStream,
    early: Bytes,
    session: Session,
    dialect: D,
    slot: ConnectionSlot,
    deflate: Option<Deflate>,
) -> impl Future<Output = ()> + Send + use<D> {
    let socket = SharedSocket::new(stream, WsText { deflate });
    let io = SocketIo::new(socket.clone(), early);
    // The task's own writes (replies, and every frame without direct
    // writes); direct writes never wait.
    let io = WriteTimeout::new(io, state.config.server.write_timeout);
    let io = Inflate::new(io, deflate, state.config.limits.max_message_size);
    let direct = dialect.direct_writes().then_some(socket);
    run(state, io, direct, session, dialect, deflate, slot)
}

/// tungstenite buffers what the task writes; its flush then writes the
/// socket's rest.
impl<S: AsyncRead + AsyncWrite + Unpin> Flush for WebSocketStream<S> {
    fn poll_flush(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        futures_util::Sink::poll_flush(std::pin::Pin::new(self), cx).map_err(std::io::Error::other)
    }
}

pub(crate) fn connection_limit() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "connection_limit",
        "the server is at its connection limit; retry later",
    )
}

fn socket_config(state: &AppState) -> WebSocketConfig {
    let limits = &state.config.limits;
    WebSocketConfig::default()
        .read_buffer_size(limits.ws_read_buffer)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(limits.outbox_bytes + 64 * 1024)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size))
}

/// A text frame from already-valid UTF-8 bytes, without validating again;
/// compressed, with `deflate` agreed, when that gains.
fn text_frame(deflate: Option<Deflate>, bytes: Bytes) -> Message {
    let compressed = deflate.and_then(|d| d.compress(&bytes));
    let rsv1 = compressed.is_some();
    let mut frame = WsFrame::message(compressed.unwrap_or(bytes), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = rsv1;
    Message::Frame(frame)
}

/// Serves one WebSocket on `io` until it closes, holding its connection
/// slot. With `direct`, the outbox writes to that socket itself and the task
/// only finishes what it could not.
///
/// The WebSocket is made here, not by the caller: a caller that awaited it
/// first would keep room for both in every connection's task.
async fn run<D, S>(
    state: AppState,
    io: S,
    direct: Option<Arc<SharedSocket>>,
    mut session: Session,
    mut dialect: D,
    deflate: Option<Deflate>,
    _slot: ConnectionSlot,
) where
    D: WsDialect,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = Some(socket_config(&state));
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, config).await;
    let conn = session.outbox.id();
    tracing::debug!(conn, deflate = deflate.is_some(), "WebSocket opened.");
    let text = |bytes: Bytes| text_frame(deflate, bytes);
    let timing = dialect.timing();
    let timing = timing.as_ref().unwrap_or(&state.config.connection);
    let mut clock = Clock::start(timing);
    let heartbeat = timing.heartbeat;
    let sleep = tokio::time::sleep_until(clock.next_deadline());
    tokio::pin!(sleep);
    let mut batch: Vec<Frame> = Vec::new();
    let outbox = session.outbox.clone();

    // A client's close is answered, once nothing else can be written.
    let mut peer_closed = false;
    let close: Option<(u16, Cow<'static, str>)> = 'conn: {
        let hello = dialect.greeting();
        for frame in hello.frames {
            if ws.feed(text(frame)).await.is_err() {
                break 'conn None;
            }
        }
        if ws.flush().await.is_err() {
            break 'conn None;
        }
        if hello.close.is_some() {
            break 'conn hello.close;
        }
        // Publishers write straight to the socket from now on: not before
        // the greeting is out, which must come first.
        if let Some(socket) = &direct {
            session.outbox.attach(socket.clone());
        }
        // Made once, not per turn of the loop: each new one would join
        // and leave its notifier's waiter list again.
        let shutdown = state.shutdown.signalled();
        tokio::pin!(shutdown);
        let ready = outbox.ready();
        tokio::pin!(ready);
        // The socket was full when a heartbeat, the lifetime or shutdown
        // came due: the queue waits for it to take bytes again.
        let mut stalled = false;
        loop {
            // Whether to write the outbox's queue now.
            let write = tokio::select! {
                biased;
                () = &mut shutdown => {
                    // Bounded as the close is: a client that stopped reading
                    // must not hold shutdown up for a whole write timeout.
                    if let Some(hint) = dialect.reconnect_hint() {
                        let _ = tokio::time::timeout(CLOSE_WAIT, ws.feed(text(hint))).await;
                    }
                    break 'conn Some((close::RESTART, "server restarting, reconnect".into()));
                }
                () = &mut ready => {
                    ready.set(outbox.ready());
                    true
                }
                room = writable(direct.as_deref()), if stalled => {
                    if room.is_err() {
                        break 'conn None;
                    }
                    true
                }
                frame = ws.next() => {
                    dialect.on_activity();
                    let reply = match frame {
                        Some(Ok(Message::Text(t))) => dialect.on_text(&mut session, t.as_str()).await,
                        Some(Ok(Message::Binary(b))) => dialect.on_binary(&mut session, &b),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Reply::default(),
                        Some(Ok(Message::Close(_))) => {
                            peer_closed = true;
                            break 'conn None;
                        }
                        None => break 'conn None,
                        Some(Err(e)) => break 'conn protocol_error_close(e),
                    };
                    for frame in reply.frames {
                        if ws.feed(text(frame)).await.is_err() {
                            break 'conn None;
                        }
                    }
                    if ws.flush().await.is_err() {
                        break 'conn None;
                    }
                    // A command that held the outbox for its reply (a
                    // resume) lets what queued behind it go.
                    outbox.release();
                    if let Some(close) = reply.close {
                        break 'conn Some(close);
                    }
                    false
                }
                () = &mut sleep => {
                    match clock.fire(tokio::time::Instant::now()) {
                        Some(Tick::Heartbeat) => {
                            let frame = match dialect.heartbeat() {
                                Ok(Some(frame)) => text(frame),
                                Ok(None) => Message::Ping(Bytes::new()),
                                Err((code, reason)) => break 'conn Some((code, reason.into())),
                            };
                            if !sent_within(heartbeat, ws.send(frame)).await {
                                break 'conn None;
                            }
                        }
                        Some(Tick::ReconnectHint) => {
                            let hint = dialect.reconnect_hint();
                            if let Some(hint) = hint
                                && !sent_within(heartbeat, ws.send(text(hint))).await
                            {
                                break 'conn None;
                            }
                        }
                        Some(Tick::Expire) => {
                            let (code, reason) = dialect.lifetime_close();
                            break 'conn Some((code, reason.into()));
                        }
                        None => {}
                    }
                    sleep.as_mut().reset(clock.next_deadline());
                    false
                }
            };
            if !write {
                continue;
            }
            let closed = if let Some(socket) = &direct {
                let due = due(shutdown.as_mut(), sleep.as_mut());
                match socket.write_queued(&outbox, &mut ws, due).await {
                    Ok(Queued::Written(closed)) => {
                        stalled = false;
                        closed
                    }
                    Ok(Queued::Stalled) => {
                        stalled = true;
                        continue;
                    }
                    Err(_) => break 'conn None,
                }
            } else {
                let closed = outbox.drain(&mut batch);
                for frame in batch.drain(..) {
                    if ws.feed(text(frame.bytes)).await.is_err() {
                        break 'conn None;
                    }
                }
                if ws.flush().await.is_err() {
                    break 'conn None;
                }
                closed
            };
            match closed {
                Some(Closed::SlowConsumer) => {
                    tracing::debug!(conn, "Slow consumer disconnected.");
                    break 'conn Some((
                        close::SLOW_CONSUMER,
                        "slow consumer: too far behind".into(),
                    ));
                }
                Some(Closed::Evicted) => {
                    tracing::debug!(conn, "Disconnected by request.");
                    break 'conn Some((close::DISCONNECTED, "disconnected by the server".into()));
                }
                None => {}
            }
            if let Some(close) = dialect.after_batch(&mut session).await {
                break 'conn Some(close);
            }
        }
    };

    // From here on only this task writes: nothing may follow the close frame.
    outbox.detach();
    if peer_closed {
        // tungstenite queued the answering close frame (RFC 6455 §5.5.1).
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.flush()).await;
    } else if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: fit_close_reason(&reason).into(),
        };
        // Best effort: send our close, then give the client a moment to
        // answer; a moment in all, as a client that stopped reading takes
        // neither.
        let farewell = dialect.farewell(code);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if let Some(last) = farewell
                && ws.feed(text(last)).await.is_err()
            {
                return;
            }
            if ws.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }
    drop(session);
    tracing::debug!(conn, "WebSocket closed.");
}

/// Whether `key` is a `Sec-WebSocket-Key`: 16 bytes in base64 (RFC 6455
/// §4.1).
pub(crate) fn is_websocket_key(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// Resolves when either of a connection's `shutdown` or `sleep` (its next
/// heartbeat, hint or expiry) does: what a stalled write gives way to.
pub(crate) fn due(
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    mut sleep: Pin<&mut tokio::time::Sleep>,
) -> impl Future<Output = ()> {
    std::future::poll_fn(move |cx| {
        if shutdown.as_mut().poll(cx).is_ready() || sleep.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Resolves once `socket` may take bytes again; never without one.
pub(crate) async fn writable<F: Framing>(socket: Option<&SharedSocket<F>>) -> std::io::Result<()> {
    match socket {
        Some(socket) => socket.writable().await,
        None => std::future::pending().await,
    }
}

/// How long closing a connection may take: our close frame, then the
/// client's.
pub(crate) const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `send` finished, without error, within `limit`: a client that
/// cannot take a heartbeat for a whole heartbeat interval is as gone as one
/// that does not answer it.
pub(crate) async fn sent_within<E>(
    limit: std::time::Duration,
    send: impl Future<Output = Result<(), E>>,
) -> bool {
    matches!(tokio::time::timeout(limit, send).await, Ok(Ok(())))
}

/// The close for a frame-level error, or `None` when the socket is gone.
fn protocol_error_close(e: WsError) -> Option<(u16, Cow<'static, str>)> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some((u16::from(CloseCode::Size), "message too big".into()))
        }
        WsError::Utf8(_) => Some((
            u16::from(CloseCode::Invalid),
            "invalid UTF-8 in text frame".into(),
        )),
        WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing,
        ) => None,
        WsError::Protocol(p) => Some((u16::from(CloseCode::Protocol), p.to_string().into())),
        WsError::Io(e) => InflateError::find(&e).map(|e| (e.code, e.reason.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::fit_close_reason;

    #[test]
    fn close_reasons_are_cut_to_a_close_frame_at_a_character() {
        assert_eq!(fit_close_reason("short"), "short");
        let exact = "x".repeat(123);
        assert_eq!(fit_close_reason(&exact), exact);
        let long = format!("{}é{}", "x".repeat(122), "y".repeat(50));
        // "é" takes bytes 122 and 123: the cut falls before it.
        assert_eq!(fit_close_reason(&long), "x".repeat(122));
    }
}
