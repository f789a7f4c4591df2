//! The native streams' opening requests (`GET /ws`, `GET /sse`), answered
//! before hyper sees the connection.
//!
//! Most connections to a push server are streams that stay open, so
//! opening them is the server's busiest HTTP work. Three quarters of a
//! connect is the kernel's; of the rest, hyper's connection, the router and
//! the upgrade hand-off between two tasks took most (docs/benchmarks.md).
//! And a stream hyper serves can only be written through hyper: an SSE
//! body is polled, chunked and written by hyper's task, where a socket of
//! the stream's own takes frames straight from the publisher.
//! So a plain TCP connection's first read is looked at here: a complete,
//! ordinary `GET /ws` handshake or `GET /sse` request that the handler would
//! accept is answered directly, and its session starts on the socket.
//! Anything else (another route, a request that arrived in pieces, one the
//! handler would refuse) goes to hyper with the bytes put back, so hyper and
//! the handlers stay the one place that speaks HTTP and answers errors.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::cors::Allowed;
use crate::dialect::native;
use crate::metrics::Transport;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::transport::ws::{self, has_token};
use crate::transport::{shared_socket, sse};

/// The first read's size: a browser's handshake, cookies included, usually
/// fits; a longer one is hyper's.
const FIRST_READ: usize = 4096;

/// More header lines than this and the request is hyper's.
const MAX_HEADERS: usize = 32;

/// Serves the connection's first request if it opens a native stream the
/// handler would accept, waiting for it at most `read_timeout`, as hyper
/// waits for a request's head. Returns the socket and the bytes read from
/// it when the connection is hyper's to serve.
pub(crate) async fn serve(
    state: &AppState,
    stream: TcpStream,
    shutdown: &Shutdown,
    read_timeout: Option<Duration>,
) -> Option<(TcpStream, Bytes)> {
    let buf = read_first(&stream, shutdown, read_timeout).await?;
    // Other requests skip the parse: hyper parses them anyway.
    if !(buf.starts_with(b"GET /ws") || buf.starts_with(b"GET /sse")) {
        return Some((stream, buf.freeze()));
    }
    let Some(head) = Head::parse(&buf) else {
        return Some((stream, buf.freeze()));
    };
    // A browser's page from an origin that is not allowed is refused by
    // the router.
    let allowed = match head.origin {
        Some(origin) => match state.origins.allow(origin, head.host) {
            Some(allowed) => Some((allowed, origin)),
            None => return Some((stream, buf.freeze())),
        },
        None => None,
    };
    // Herald's own routes, the ones nearly every stream uses; the seeds'
    // routes go through the router.
    let declined = match (head.path, head.ws_key) {
        ("/ws", Some(key)) => open_ws(state, &head, key, &buf[head.len..], stream).await,
        ("/sse", None) => open_sse(state, &head, allowed, stream).await,
        _ => Err(stream),
    };
    declined.err().map(|stream| (stream, buf.freeze()))
}

/// Answers a WebSocket handshake with the `101` and starts its session,
/// `early` holding the client's first frames (what followed the head). Gives
/// the socket back when the handler would answer otherwise.
async fn open_ws(
    state: &AppState,
    head: &Head<'_>,
    key: &[u8],
    early: &[u8],
    mut stream: TcpStream,
) -> Result<(), TcpStream> {
    // Refusals are counted where they are answered, by the handler.
    let Some(slot) = state
        .metrics
        .take(Transport::Ws, state.config.limits.max_connections)
    else {
        return Err(stream);
    };
    let Some((session, dialect)) = native::ws_direct(state, head.query, head.authorization).await
    else {
        return Err(stream);
    };
    let deflate = ws::negotiate_deflate(state, head.extensions);
    let mut response = Vec::with_capacity(192);
    response.extend_from_slice(SWITCHING);
    response.extend_from_slice(derive_accept_key(key).as_bytes());
    if let Some(deflate) = deflate {
        response.extend_from_slice(b"\r\nsec-websocket-extensions: ");
        response.extend_from_slice(deflate.response().as_bytes());
    }
    response.extend_from_slice(b"\r\n\r\n");
    // Frames published meanwhile wait in the outbox: no socket is attached
    // to it before the session runs.
    if stream.write_all(&response).await.is_ok() {
        // Copied, so the first read's buffer is not kept for them.
        let early = Bytes::copy_from_slice(early);
        // A task of its own, sized for the session alone: this one's future
        // has room for the handshake, and for hyper's connection.
        let run = ws::run_tcp(
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
    Ok(())
}

/// Answers an SSE request with its response head and the stream's first
/// frames, and starts the stream. The body runs until the connection
/// closes: no length, no chunks, so frames go to the socket as they are.
/// Gives the socket back when the handler would answer otherwise.
async fn open_sse(
    state: &AppState,
    head: &Head<'_>,
    allowed: Option<(Allowed, &[u8])>,
    mut stream: TcpStream,
) -> Result<(), TcpStream> {
    let Some(slot) = state
        .metrics
        .take(Transport::Sse, state.config.limits.max_connections)
    else {
        return Err(stream);
    };
    let Some((session, style)) =
        native::sse_direct(state, head.query, head.authorization, head.last_event_id).await
    else {
        return Err(stream);
    };
    let gzip = sse::negotiate_gzip(state, head.accept_encoding);
    let (style, framing) = sse::tcp_style(style, gzip);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut response = Vec::with_capacity(256 + style.preamble.len());
    response.extend_from_slice(EVENT_STREAM);
    if gzip.is_some() {
        response.extend_from_slice(b"content-encoding: gzip\r\n");
    }
    if state.config.server.sse_compression {
        response.extend_from_slice(b"vary: accept-encoding\r\n");
    }
    if let Some((allowed, origin)) = allowed {
        response.extend_from_slice(b"access-control-allow-origin: ");
        match allowed {
            Allowed::Any => response.push(b'*'),
            Allowed::Origin => {
                response.extend_from_slice(origin);
                response.extend_from_slice(b"\r\nvary: origin");
            }
        }
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"date: ");
    response.extend_from_slice(date.as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    response.extend_from_slice(&style.preamble);
    if stream.write_all(&response).await.is_ok() {
        let run = sse::run_tcp(state.clone(), stream, session, (style, framing), slot);
        state.shutdown.spawn(run);
    }
    Ok(())
}

/// The connection's first bytes, read within `read_timeout`; `None` when
/// the connection ends, times out or the server shuts down first.
async fn read_first(
    stream: &TcpStream,
    shutdown: &Shutdown,
    read_timeout: Option<Duration>,
) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let deadline = super::deadline(read_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            ready = stream.readable() => ready.ok()?,
            () = shutdown.signalled() => return None,
            () = &mut deadline => return None,
        }
        // A whole request read leaves the socket not readable: the
        // session's (or hyper's) first read waits for the client's next
        // bytes instead of failing first.
        match shared_socket::read_draining(stream, FIRST_READ, || stream.try_read_buf(&mut buf)) {
            Ok(0) => return None,
            Ok(_) => return Some(buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

/// The `101` up to the accept key's value.
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ";

/// An SSE response's head up to its CORS and date headers, as hyper's
/// would be but for the body's framing.
const EVENT_STREAM: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n\
connection: close\r\n";

/// What the fast path reads from a request.
struct Head<'a> {
    /// The path, without the query.
    path: &'a str,
    /// The query, without `?`; empty when there is none.
    query: &'a str,
    /// `Authorization`, which may carry the connection's token.
    authorization: Option<&'a str>,
    /// `Last-Event-ID`, which resumes an SSE stream.
    last_event_id: Option<&'a str>,
    /// `Origin`, sent by browsers: the page the stream is opened from.
    origin: Option<&'a [u8]>,
    /// `Host`, which names Herald's own origin.
    host: Option<&'a [u8]>,
    /// `Sec-WebSocket-Key` of a WebSocket handshake; `None` when the
    /// request asks for no upgrade.
    ws_key: Option<&'a [u8]>,
    /// `Sec-WebSocket-Extensions`: what the client offers (compression).
    extensions: Option<&'a [u8]>,
    /// `Accept-Encoding`: whether an SSE stream may go as gzip.
    accept_encoding: Option<&'a [u8]>,
    /// The head's length: what follows are the client's first frames.
    len: usize,
}

impl<'a> Head<'a> {
    /// A complete `GET`, without a body, that either upgrades to WebSocket
    /// version 13 or asks no upgrade at all, with nothing unusual about it;
    /// or `None`, for hyper to judge.
    fn parse(buf: &'a [u8]) -> Option<Self> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
            return None;
        };
        if req.method != Some("GET") || req.version != Some(1) {
            return None;
        }
        let target = req.path?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        // Only bytes hyper's URI parser takes in a query, fragments aside.
        if !query
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"#<>".contains(&b))
        {
            return None;
        }
        let (mut connection, mut upgrade, mut version) = (false, false, false);
        let (mut upgrade_header, mut key, mut authorization, mut last_event_id) =
            (false, None, None, None);
        let (mut origin, mut host, mut extensions, mut accept_encoding) = (None, None, None, None);
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                connection |= has_token(h.value, "upgrade");
            } else if name.eq_ignore_ascii_case("upgrade") {
                upgrade_header = true;
                upgrade |= has_token(h.value, "websocket");
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                // Repeated headers: the handler reads the first; leave them to it.
                if version {
                    return None;
                }
                version = h.value == b"13";
                if !version {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                // Repeated or malformed: the handler refuses it.
                if key.replace(h.value).is_some() || !ws::is_websocket_key(h.value) {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("authorization") {
                let value = std::str::from_utf8(h.value).ok()?;
                if authorization.replace(value).is_some() {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("last-event-id") {
                // The handler takes visible ASCII only.
                if !h.value.iter().all(|&b| b == b' ' || b.is_ascii_graphic())
                    || last_event_id
                        .replace(std::str::from_utf8(h.value).ok()?)
                        .is_some()
                {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("origin") {
                // Only a value the answer can repeat; the router judges the rest.
                if origin.replace(h.value).is_some() || !h.value.iter().all(u8::is_ascii_graphic) {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                // Offers over several lines: hyper's handler reads them all.
                if extensions.replace(h.value).is_some() {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("accept-encoding") {
                // Over several lines: the handler reads them all.
                if accept_encoding.replace(h.value).is_some() {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("host") {
                if host.replace(h.value).is_some() {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                // A body on a handshake: hyper decides what that means.
                return None;
            }
        }
        // Half an upgrade is hyper's.
        let ws = connection && upgrade && version && key.is_some();
        if !ws && (connection || upgrade_header || version || key.is_some()) {
            return None;
        }
        Some(Self {
            path,
            query,
            authorization,
            last_event_id,
            origin,
            host,
            ws_key: key.filter(|_| ws),
            extensions,
            accept_encoding,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /ws?channels=a,b HTTP/1.1\r\nHost: x\r\n\
Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn an_ordinary_handshake_is_read() {
        let mut buf = GOOD.to_vec();
        buf.extend_from_slice(b"\x81\x00");
        let head = Head::parse(&buf).expect("a handshake");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query, "channels=a,b");
        assert_eq!(head.ws_key, Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]));
        assert_eq!(head.authorization, None);
        assert_eq!((head.host, head.origin), (Some(&b"x"[..]), None));
        assert_eq!(&buf[head.len..], b"\x81\x00");
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        let text = std::str::from_utf8(GOOD).unwrap();
        let cases = [
            // In pieces.
            text.trim_end_matches("\r\n").to_owned(),
            text.replace("GET", "POST"),
            text.replace("HTTP/1.1", "HTTP/1.0"),
            text.replace("Upgrade: websocket", "Upgrade: h2c"),
            text.replace("keep-alive, Upgrade", "keep-alive"),
            text.replace("Version: 13", "Version: 8"),
            text.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            text.replace("Host: x", "Content-Length: 0"),
            text.replace("Host: x", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),
            text.replace("Host: x", "Authorization: a\r\nAuthorization: b"),
            text.replace("channels=a,b", "channels=a#b"),
            text.replace("Host: x", "Origin: https://a\r\nOrigin: https://b"),
            text.replace("Host: x", "Origin: https://a b"),
        ];
        for case in cases {
            assert!(Head::parse(case.as_bytes()).is_none(), "{case:?}");
        }
    }

    #[test]
    fn header_tokens_match_in_any_case() {
        assert!(has_token(b"keep-alive, UPGRADE", "upgrade"));
        assert!(has_token(b" WebSocket ", "websocket"));
        assert!(!has_token(b"upgrades", "upgrade"));
    }
}
