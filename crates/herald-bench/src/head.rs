//! HTTP/1.1 response heads, read straight off the socket: the publish client, the EventSource
//! client and the WebSocket handshake all start with one.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::error::{BenchError, Result};

/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;

/// Reads into `buf` until it holds a whole response head; the head's length without the blank
/// line that ends it. Bytes after the head stay in `buf`.
pub(crate) async fn read(tcp: &mut TcpStream, buf: &mut BytesMut) -> Result<usize> {
    // Bounded: each pass finds the end, fails, or consumes a read from the socket.
    loop {
        if let Some(at) = memchr::memmem::find(buf, b"\r\n\r\n") {
            return Ok(at);
        }
        if buf.len() > MAX_HEAD {
            return Err(BenchError::Protocol("response head too large".into()));
        }
        if tcp.read_buf(buf).await? == 0 {
            return Err(BenchError::Protocol(
                "closed before the end of a response head".into(),
            ));
        }
    }
}

/// A parsed response head, borrowing the bytes it was read into.
pub(crate) struct Head<'a> {
    /// `HTTP/1.x NNN reason`.
    pub(crate) status_line: &'a str,
    /// The status code.
    pub(crate) status: u16,
    /// The header lines, CRLF-separated.
    fields: &'a str,
}

impl<'a> Head<'a> {
    /// Parses `head` (as found by [`read`], without the blank line).
    pub(crate) fn parse(head: &'a [u8]) -> Result<Self> {
        let head = std::str::from_utf8(head)
            .map_err(|_| BenchError::Protocol("response head is not UTF-8".into()))?;
        let (status_line, fields) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| BenchError::Protocol(format!("bad status line {status_line:?}")))?;
        Ok(Head {
            status_line,
            status,
            fields,
        })
    }

    /// Every header field as `(name, value)`, the value trimmed; lines without a colon are
    /// skipped.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.fields
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name, value.trim()))
    }

    /// The first value of the field `name` (case-insensitive).
    pub(crate) fn field(&self, name: &str) -> Option<&'a str> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether field `name` holds `token` in its comma-separated list (case-insensitive).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_fields_are_parsed() {
        let head = Head::parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nX-Empty:\r\nno colon",
        )
        .unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(head.status_line, "HTTP/1.1 101 Switching Protocols");
        assert_eq!(head.field("UPGRADE"), Some("WebSocket"));
        assert_eq!(head.field("x-empty"), Some(""));
        assert_eq!(head.field("missing"), None);
        assert!(head.has_token("Connection", "upgrade"));
        assert!(!head.has_token("Connection", "close"));
        assert_eq!(head.fields().count(), 3);
    }

    #[test]
    fn a_bad_status_line_is_refused() {
        for bad in [
            &b"HTTP/1.1 abc OK"[..],
            b"SSH-2.0-x",
            b"HTTP/1.1",
            b"\xff\xfe",
        ] {
            assert!(Head::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Head::parse(b"HTTP/1.0 204 No Content").unwrap().status, 204);
    }
}
