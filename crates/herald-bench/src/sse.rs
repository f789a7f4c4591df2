//! A minimal HTTP/1.1 EventSource client over a raw TCP stream: one request, then the response
//! body (chunked or not) split into events at blank lines. Events are handed over unparsed; the
//! caller only searches them for a token, so `data:`/`id:`/`event:` lines need no decoding.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{BenchError, Result};
use crate::head::{self, Head};

/// A single event larger than this ends the stream as a protocol error.
const MAX_EVENT: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many data bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The terminating zero-size chunk was seen.
    Done,
}

pub(crate) struct SseStream {
    /// The connection the event stream is read from.
    tcp: TcpStream,
    /// Bytes read but not yet de-chunked.
    raw: BytesMut,
    /// De-chunked body bytes not yet split into events.
    body: BytesMut,
    /// Whether the body uses chunked transfer encoding (hyper's default for streams).
    chunked: bool,
    /// Where the de-chunking is within a chunked body.
    state: Chunk,
}

impl SseStream {
    /// Sends `GET path` with `Accept: text/event-stream` and reads the response head; fails
    /// unless the status is 200.
    pub(crate) async fn open(mut tcp: TcpStream, authority: &str, path: &str) -> Result<Self> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = BytesMut::with_capacity(4096);
        let head_len = head::read(&mut tcp, &mut raw).await?;
        let head = Head::parse(&raw[..head_len])?;
        if head.status != 200 {
            return Err(BenchError::Status(head.status));
        }
        let chunked = head.has_token("transfer-encoding", "chunked");
        raw.advance(head_len + 4);
        let mut stream = SseStream {
            tcp,
            raw,
            body: BytesMut::with_capacity(4096),
            chunked,
            state: Chunk::Size,
        };
        stream.decode()?;
        Ok(stream)
    }

    /// Waits until at least one complete event is available and passes every complete event to
    /// `on_event`. `Ok(false)` once the stream has ended.
    pub(crate) async fn recv(&mut self, on_event: &mut impl FnMut(&[u8])) -> Result<bool> {
        // Bounded: each pass either delivers events, ends, or consumes a read from the socket.
        loop {
            if drain_events(&mut self.body, on_event) > 0 {
                return Ok(true);
            }
            if self.body.len() > MAX_EVENT {
                return Err(BenchError::Protocol("event too large".into()));
            }
            if self.state == Chunk::Done {
                return Ok(false);
            }
            if self.tcp.read_buf(&mut self.raw).await? == 0 {
                return Ok(false);
            }
            self.decode()?;
        }
    }

    /// Moves what can be de-chunked from `raw` to `body`.
    fn decode(&mut self) -> Result<()> {
        if !self.chunked {
            let all = self.raw.split();
            self.body.extend_from_slice(&all);
            return Ok(());
        }
        dechunk(&mut self.raw, &mut self.body, &mut self.state)
    }
}

/// De-chunks what `raw` holds into `body` (chunked transfer coding, RFC 9112 §7.1).
pub(crate) fn dechunk(raw: &mut BytesMut, body: &mut BytesMut, state: &mut Chunk) -> Result<()> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = memchr::memmem::find(raw, b"\r\n") else {
                    if raw.len() > 1024 {
                        return Err(BenchError::Protocol("bad chunk size line".into()));
                    }
                    return Ok(());
                };
                let line = std::str::from_utf8(&raw[..eol])
                    .map_err(|_| BenchError::Protocol("bad chunk size".into()))?;
                let hex = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| BenchError::Protocol(format!("bad chunk size {hex:?}")))?;
                raw.advance(eol + 2);
                *state = if size == 0 {
                    Chunk::Done
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if raw.is_empty() {
                    return Ok(());
                }
                let take = left.min(raw.len());
                body.extend_from_slice(&raw[..take]);
                raw.advance(take);
                *state = if take == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - take)
                };
            }
            Chunk::DataEnd => {
                if raw.len() < 2 {
                    return Ok(());
                }
                if &raw[..2] != b"\r\n" {
                    return Err(BenchError::Protocol("missing CRLF after chunk".into()));
                }
                raw.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Done => return Ok(()),
        }
    }
}

/// Splits complete events (ended by a blank line, `\n\n` or `\r\n\r\n`) off the front of `body`.
fn drain_events(body: &mut BytesMut, on_event: &mut impl FnMut(&[u8])) -> usize {
    let mut events = 0;
    loop {
        let Some((end, consumed)) = event_end(body) else {
            return events;
        };
        let event = body.split_to(consumed);
        if end > 0 {
            on_event(&event[..end]);
            events += 1;
        }
    }
}

/// `(end of the event's text, bytes up to and including the blank line)`.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    for p in memchr::memchr_iter(b'\n', buf) {
        match &buf[p + 1..] {
            [b'\n', ..] => return Some((p, p + 2)),
            [b'\r', b'\n', ..] => return Some((p, p + 3)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &[u8]) -> Vec<String> {
        let mut body = BytesMut::from(text);
        let mut out = Vec::new();
        drain_events(&mut body, &mut |e| {
            out.push(String::from_utf8_lossy(e).into_owned())
        });
        out
    }

    #[test]
    fn splits_lf_and_crlf_events_and_keeps_partial() {
        let text = b": hi\n\nid: 1\ndata: a\n\nretry: 5\r\ndata: b\r\n\r\ndata: partial";
        assert_eq!(
            events(text),
            vec![": hi", "id: 1\ndata: a", "retry: 5\r\ndata: b\r"]
        );
    }

    #[test]
    fn dechunks_across_arbitrary_splits() {
        let wire =
            b"5\r\ndata:\r\n7;ext=1\r\n x\n\ndat\r\n3\r\na: \r\n2\r\ny\n\r\n1\r\n\n\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut raw = BytesMut::new();
            let mut body = BytesMut::new();
            let mut state = Chunk::Size;
            raw.extend_from_slice(&wire[..split]);
            dechunk(&mut raw, &mut body, &mut state).expect("valid");
            raw.extend_from_slice(&wire[split..]);
            dechunk(&mut raw, &mut body, &mut state).expect("valid");
            assert_eq!(state, Chunk::Done, "split {split}");
            assert_eq!(&body[..], b"data: x\n\ndata: y\n\n", "split {split}");
        }
    }

    #[test]
    fn bad_chunk_size_is_an_error() {
        let mut raw = BytesMut::from(&b"zz\r\n"[..]);
        let mut body = BytesMut::new();
        let mut state = Chunk::Size;
        assert!(dechunk(&mut raw, &mut body, &mut state).is_err());
    }
}
