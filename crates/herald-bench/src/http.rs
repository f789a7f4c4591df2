//! A small HTTP/1.1 keep-alive client for publishing: a few persistent connections ("lanes")
//! taking requests from one shared queue, one request at a time each. It replaced reqwest,
//! whose per-request cost made the generator, not the server, the limit in the pairs scenario.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::{BenchError, Result};
use crate::head::{self, Head};
use crate::net::{self, Endpoint};
use crate::sse::{Chunk, dechunk};

/// Response bodies larger than this are refused (publish answers are tiny).
const MAX_BODY: usize = 16 * 1024 * 1024;

struct Job {
    /// The whole request, head and body, written as it is.
    request: Vec<u8>,
    /// Whether the caller reads the response body (publishes do not: no copy for them).
    want_body: bool,
    /// Where the lane sends the status and body back, or why the request failed.
    reply: oneshot::Sender<Result<(u16, Bytes)>>,
}

/// A pool of keep-alive connections to one server.
#[derive(Debug, Clone)]
pub(crate) struct HttpPool {
    /// Written as every request's `Host` header.
    authority: String,
    /// Requests waiting for the next free lane.
    queue: mpsc::Sender<Job>,
    /// Bound on one request: connect, write, and the whole response.
    timeout: Duration,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl HttpPool {
    /// Starts `lanes` connection tasks (connected lazily). Must run inside the tokio runtime.
    pub(crate) fn new(ep: &Endpoint, lanes: usize, timeout: Duration) -> Self {
        let (queue, rx) = mpsc::channel(lanes.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(ep.clone(), rx.clone(), timeout));
        }
        HttpPool {
            authority: ep.authority.clone(),
            queue,
            timeout,
        }
    }

    /// POSTs a JSON `body` to `path` (with its query); the response status.
    pub(crate) async fn post(&self, path: &str, body: &str) -> Result<u16> {
        Ok(self.submit(path, body, false).await?.0)
    }

    /// POSTs like [`Self::post`]; the response status and body.
    pub(crate) async fn post_for_body(&self, path: &str, body: &str) -> Result<(u16, Bytes)> {
        self.submit(path, body, true).await
    }

    async fn submit(&self, path: &str, body: &str, want_body: bool) -> Result<(u16, Bytes)> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.authority,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body.as_bytes());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                request,
                want_body,
                reply,
            })
            .await
            .map_err(|_| BenchError::Protocol("HTTP pool closed".into()))?;
        // The lane bounds the exchange itself; this bounds the wait for a free lane too.
        match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BenchError::Protocol("HTTP lane stopped".into())),
            Err(_) => Err(BenchError::Timeout("publishing")),
        }
    }
}

/// One connection: takes jobs from the shared queue until it closes.
async fn lane(ep: Endpoint, rx: Arc<Mutex<mpsc::Receiver<Job>>>, timeout: Duration) {
    let mut conn: Option<(TcpStream, BytesMut)> = None;
    // Bounded by the queue, which closes when the pool is dropped.
    loop {
        let job = { rx.lock().await.recv().await };
        let Some(job) = job else { return };
        let exchange = exchange(&ep, &mut conn, &job.request, job.want_body);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(BenchError::Timeout("publishing")),
        };
        if result.is_err() {
            conn = None;
        }
        let _ = job.reply.send(result);
    }
}

async fn exchange(
    ep: &Endpoint,
    conn: &mut Option<(TcpStream, BytesMut)>,
    request: &[u8],
    want_body: bool,
) -> Result<(u16, Bytes)> {
    // A kept-alive connection the server closed meanwhile fails before any response byte:
    // then, and only then, the request is sent once more on a new connection.
    for attempt in 0..2 {
        let reused = conn.is_some();
        if conn.is_none() {
            *conn = Some((
                net::connect(ep.addr, None).await?,
                BytesMut::with_capacity(4096),
            ));
        }
        let Some((tcp, buf)) = conn.as_mut() else {
            continue;
        };
        match roundtrip(tcp, buf, request, want_body).await {
            Ok((status, keep_alive, body)) => {
                if !keep_alive {
                    *conn = None;
                }
                return Ok((status, body));
            }
            Err(Stale) if reused && attempt == 0 => *conn = None,
            Err(Stale) => {
                *conn = None;
                return Err(BenchError::Protocol(
                    "connection closed before a response".into(),
                ));
            }
            Err(Failed(e)) => {
                *conn = None;
                return Err(e);
            }
        }
    }
    Err(BenchError::Protocol(
        "connection closed before a response".into(),
    ))
}

enum RoundtripError {
    /// Closed or reset before any response byte arrived.
    Stale,
    Failed(BenchError),
}
use RoundtripError::{Failed, Stale};

impl From<std::io::Error> for RoundtripError {
    fn from(e: std::io::Error) -> Self {
        Failed(e.into())
    }
}

fn protocol(msg: &str) -> RoundtripError {
    Failed(BenchError::Protocol(msg.into()))
}

/// Writes one request and reads one response: `(status, keep-alive, body)`; the body is
/// empty unless `want_body`.
async fn roundtrip(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    request: &[u8],
    want_body: bool,
) -> std::result::Result<(u16, bool, Bytes), RoundtripError> {
    buf.clear();
    if tcp.write_all(request).await.is_err() {
        return Err(Stale);
    }
    let head_len = match head::read(tcp, buf).await {
        Ok(len) => len,
        // A keep-alive connection the server closed while it was idle: retried on a new one.
        Err(_) if buf.is_empty() => return Err(Stale),
        Err(e) => return Err(Failed(e)),
    };
    let head = Head::parse(&buf[..head_len]).map_err(Failed)?;
    let status = head.status;
    let mut keep_alive = !head.status_line.starts_with("HTTP/1.0");
    let mut length = None;
    let mut chunked = false;
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| protocol("bad content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            keep_alive = if v.contains("close") {
                false
            } else {
                keep_alive || v.contains("keep-alive")
            };
        }
    }
    buf.advance(head_len + 4);
    let body = if chunked {
        let mut body = BytesMut::new();
        let mut state = Chunk::Size;
        // Bounded by MAX_BODY and by the caller's timeout.
        loop {
            dechunk(buf, &mut body, &mut state).map_err(Failed)?;
            if state == Chunk::Done && buf.len() >= 2 {
                // The empty trailer section ends the message.
                break;
            }
            if body.len() > MAX_BODY {
                return Err(protocol("response body too large"));
            }
            if tcp.read_buf(buf).await? == 0 {
                return Err(protocol("closed inside a chunked body"));
            }
        }
        body
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(protocol("response body too large"));
        }
        while buf.len() < n {
            if tcp.read_buf(buf).await? == 0 {
                return Err(protocol("closed inside a response body"));
            }
        }
        if want_body {
            buf.split_to(n)
        } else {
            BytesMut::new()
        }
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        // Body until the server closes.
        keep_alive = false;
        while buf.len() <= MAX_BODY {
            if tcp.read_buf(buf).await? == 0 {
                break;
            }
        }
        buf.split()
    } else {
        BytesMut::new()
    };
    let body = if want_body {
        body.freeze()
    } else {
        Bytes::new()
    };
    Ok((status, keep_alive, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next canned response.
    async fn serve(responses: Vec<&'static str>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = BytesMut::new();
            for r in responses {
                // Read one request: head plus Content-Length body.
                loop {
                    if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= at + 4 + len {
                            buf.advance(at + 4 + len);
                            break;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        Endpoint::parse(&format!("http://{addr}")).expect("endpoint")
    }

    #[tokio::test]
    async fn keep_alive_with_length_and_chunked_bodies() {
        let ep = serve(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nworld",
        ])
        .await;
        // One lane: all requests must reuse the one connection the server accepts.
        let pool = HttpPool::new(&ep, 1, Duration::from_secs(5));
        assert_eq!(
            pool.post_for_body("/a", "{}").await.expect("first"),
            (200, Bytes::from_static(b"hello"))
        );
        assert_eq!(
            pool.post_for_body("/b", "{\"x\":1}").await.expect("second"),
            (201, Bytes::from_static(b"abc"))
        );
        assert_eq!(pool.post("/c", "").await.expect("third"), 202);
        // A body not asked for is skipped, and the connection stays usable.
        assert_eq!(pool.post("/d", "").await.expect("fourth"), 200);
    }

    #[tokio::test]
    async fn error_status_is_returned_and_close_is_honoured() {
        let ep = serve(vec![
            "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
        ])
        .await;
        let pool = HttpPool::new(&ep, 1, Duration::from_secs(5));
        assert_eq!(pool.post("/a", "{}").await.expect("answer"), 403);
        // The server accepts only one connection, so the next request cannot be answered.
        assert!(pool.post("/a", "{}").await.is_err());
    }
}
