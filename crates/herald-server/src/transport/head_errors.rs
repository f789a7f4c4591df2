//! Herald's JSON errors in place of hyper's bare answers to request heads
//! it cannot take.
//!
//! When a request line or header does not parse, or a head is over
//! `limits.max_header_bytes`, hyper answers by itself, before any route sees
//! the request, and closes: `400`, `414` or `431` with `content-length: 0`,
//! on the first request of a connection or any later one. hyper 1.x has no
//! hook for that answer. It writes it through the connection's stream
//! ([`super::rewind::Rewind`]), with flattened writes in one write, which
//! the stream hands to [`replacement`]: a write that is exactly such an
//! answer goes out as `{"error": {"code", "message"}}` (with
//! `content-type: application/json` and `connection: close`) instead.
//! A route's own bare `400` looks the same: the service notes those
//! ([`note_route_answer`]) and their write passes unchanged. On success
//! nothing is copied or allocated: a response with a body, or any other
//! status, fails the test within its first bytes.
//!
//! Not replaced: hyper's answer sharing a write with the end of the
//! previous response (a client that pipelined the bad request and stopped
//! reading, so that the previous response was still unsent), which goes
//! out bare as before. Only a whole write is ever replaced, and only in the
//! connection's own task: never in an upgraded stream's.

use std::cell::Cell;
use std::future::Future;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Body as _;

use crate::error::ApiError;

tokio::task_local! {
    /// The HTTP connection its task serves; the task's writes are hyper's.
    /// Upgraded streams run in tasks of their own, where nothing is replaced.
    static CONNECTION: Connection;
}

struct Connection {
    /// hyper's limit on a request's head, for the `431`'s message.
    max_header_bytes: usize,
    /// A route answered with a status and nothing else that hyper could also
    /// have sent by itself: the next such answer is the route's.
    route_bare: Cell<bool>,
}

/// Runs `connection`, hyper's serving of one connection, with its bare
/// answers replaced.
pub(crate) fn scope<F: Future>(
    max_header_bytes: usize,
    connection: F,
) -> impl Future<Output = F::Output> {
    let conn = Connection {
        max_header_bytes,
        route_bare: Cell::new(false),
    };
    CONNECTION.scope(conn, connection)
}

/// Called with every route's response: notes one hyper's own would look like.
pub(crate) fn note_route_answer(res: &Response) {
    if is_replaced(res.status())
        && res.headers().is_empty()
        && res.body().size_hint().exact() == Some(0)
    {
        let _ = CONNECTION.try_with(|c| c.route_bare.set(true));
    }
}

/// The statuses hyper answers a head with.
fn is_replaced(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::URI_TOO_LONG
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    )
}

/// What to write instead of `write`, when it is hyper's own bare answer to
/// a request head; `None` (nearly always at the first byte) otherwise.
pub(crate) fn replacement(write: &[u8]) -> Option<Bytes> {
    let bare = Bare::parse(write)?;
    let max_header_bytes = CONNECTION
        .try_with(|c| (!c.route_bare.replace(false)).then_some(c.max_header_bytes))
        .ok()
        .flatten()?;
    let error = match bare.status {
        StatusCode::BAD_REQUEST => {
            ApiError::bad_request("malformed request: its request line or a header does not parse")
        }
        StatusCode::URI_TOO_LONG => ApiError::new(
            bare.status,
            "uri_too_long",
            "request target longer than 65534 bytes",
        ),
        _ => ApiError::new(
            bare.status,
            "headers_too_large",
            format!(
                "request head (request line and headers) longer than \
                 limits.max_header_bytes ({max_header_bytes} bytes), or with too many headers"
            ),
        ),
    };
    let body = serde_json::to_vec(&error.body()).ok()?;
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(bare.status_line);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n");
    out.extend_from_slice(bare.date);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(out.into())
}

/// A response with a status and no body, as hyper writes its own:
/// `HTTP/1.x <status>\r\n[connection: close\r\n]content-length: 0\r\n[date: …\r\n]\r\n`.
struct Bare<'a> {
    /// Which of hyper's answers it is, to pick the JSON error that replaces it.
    status: StatusCode,
    /// The status line, `\r\n` included.
    status_line: &'a [u8],
    /// The `date` line, `\r\n` included; empty without one.
    date: &'a [u8],
}

impl<'a> Bare<'a> {
    fn parse(write: &'a [u8]) -> Option<Self> {
        const LINES: [(&[u8], StatusCode); 3] = [
            (b" 400 Bad Request\r\n", StatusCode::BAD_REQUEST),
            (b" 414 URI Too Long\r\n", StatusCode::URI_TOO_LONG),
            (
                b" 431 Request Header Fields Too Large\r\n",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
        ];
        // Longer than any such answer: a response with a body.
        if write.len() > 160 || !write.starts_with(b"HTTP/1.") || write.len() < 9 {
            return None;
        }
        if !matches!(write[7], b'0' | b'1') {
            return None;
        }
        let rest = &write[8..];
        let (line, status) = LINES.iter().find(|(line, _)| rest.starts_with(line))?;
        let (status_line, rest) = write.split_at(8 + line.len());
        let rest = rest
            .strip_prefix(&b"connection: close\r\n"[..])
            .unwrap_or(rest);
        let rest = rest.strip_prefix(&b"content-length: 0\r\n"[..])?;
        let date_len = if rest.starts_with(b"date: ") {
            rest.windows(2).position(|w| w == b"\r\n")? + 2
        } else {
            0
        };
        let (date, rest) = rest.split_at(date_len);
        (rest == b"\r\n").then_some(Self {
            status: *status,
            status_line,
            date,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPERS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
content-length: 0\r\ndate: Mon, 30 Nov 2026 12:18:55 GMT\r\n\r\n";

    fn in_scope<T>(f: impl FnOnce() -> T) -> T {
        let conn = Connection {
            max_header_bytes: 1024,
            route_bare: Cell::new(false),
        };
        CONNECTION.sync_scope(conn, f)
    }

    #[test]
    fn hypers_answers_are_replaced() {
        let out = in_scope(|| replacement(HYPERS)).expect("replaced");
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
content-length: {}\r\nconnection: close\r\ndate: Mon, 30 Nov 2026 12:18:55 GMT",
                body.len()
            )
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");

        let large = b"HTTP/1.0 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let out = in_scope(|| replacement(large)).expect("replaced");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.0 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("\"headers_too_large\""), "{text}");
        assert!(text.contains("(1024 bytes)"), "{text}");
    }

    #[test]
    fn other_writes_pass() {
        let text = std::str::from_utf8(HYPERS).unwrap();
        let cases = [
            text.replace("400 Bad Request", "404 Not Found"),
            text.replace("content-length: 0", "content-length: 2") + "{}",
            text.replace("HTTP/1.1", "HTTP/2.0"),
            text.replace("connection: close\r\n", "content-type: text/plain\r\n"),
            text.to_owned() + "x",
            text[1..].to_owned(),
            text[..text.len() - 2].to_owned(),
        ];
        for case in cases {
            assert!(
                in_scope(|| replacement(case.as_bytes())).is_none(),
                "{case:?}"
            );
        }
        // Outside a connection's task (an upgraded stream's), nothing is.
        assert!(replacement(HYPERS).is_none());
    }

    #[test]
    fn a_routes_own_bare_answer_passes_once() {
        let res = axum::response::IntoResponse::into_response(StatusCode::BAD_REQUEST);
        in_scope(|| {
            note_route_answer(&res);
            assert!(replacement(HYPERS).is_none(), "the route's");
            assert!(replacement(HYPERS).is_some(), "hyper's");
        });
    }
}
