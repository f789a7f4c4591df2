//! Requests hyper refuses before any route sees them (a request line or a
//! header that does not parse, a head over the limit) are answered like
//! every other error: a status, a JSON error body, and the connection closed.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One response as it came off the wire.
struct Answer {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error's code, checking the whole answer is one.
    fn error_code(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.describe());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.describe()
        );
        assert_eq!(
            self.header("connection"),
            Some("close"),
            "{}",
            self.describe()
        );
        let length: usize = self
            .header("content-length")
            .expect("a content-length")
            .parse()
            .unwrap();
        assert_eq!(length, self.body.len(), "{}", self.describe());
        let body: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(!message.is_empty());
        body["error"]["code"].as_str().expect("a code").to_owned()
    }

    fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// Splits the first response off `bytes`: its head, and a body of its
/// `content-length`.
fn parse_answer(bytes: &[u8]) -> (Answer, usize) {
    let text = String::from_utf8_lossy(bytes);
    let end = text
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("a whole head: {text:?}"));
    let mut lines = text[..end].split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1."), "{text:?}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let start = end + 4;
    assert!(bytes.len() >= start + length, "a whole body: {text:?}");
    let body = bytes[start..start + length].to_vec();
    (
        Answer {
            status,
            headers,
            body,
        },
        start + length,
    )
}

/// Sends `request` on a new connection; the one answer, and that the
/// connection closed after it.
async fn answer_to(server: &TestServer, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let got = read_to_close(&mut stream).await;
    let (answer, used) = parse_answer(&got);
    assert_eq!(used, got.len(), "one answer, then the close");
    answer
}

#[tokio::test]
async fn a_garbage_request_line_gets_a_json_400() {
    let server = TestServer::start().await;
    for request in [
        &b"hello there\r\n\r\n"[..],
        b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws?channels=a HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    ] {
        let answer = answer_to(&server, request).await;
        assert_eq!(answer.error_code(400), "bad_request");
    }
}

#[tokio::test]
async fn an_invalid_header_gets_a_json_400() {
    let server = TestServer::start().await;
    for request in [
        &b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"[..],
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nno-colon\r\n\r\n",
        // The native handshake's path, which Herald reads before hyper.
        b"GET /ws?channels=a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nBad(Name): y\r\n\r\n",
        // A body framed two ways.
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
Content-Length: 4\r\n\r\nabcd",
    ] {
        let answer = answer_to(&server, request).await;
        assert_eq!(answer.error_code(400), "bad_request");
    }
}

#[tokio::test]
async fn a_head_over_the_limit_gets_a_json_431() {
    let server = TestServer::with(|c| c.limits.max_header_bytes = 16 * 1024).await;
    let request = |pad: usize| {
        format!(
            "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(pad)
        )
    };
    let over = request(20 * 1024);
    let endless = request(64 * 1024);
    // Whole, and never finished.
    for head in [&over[..], &endless[..endless.len() - 4]] {
        let answer = answer_to(&server, head.as_bytes()).await;
        assert_eq!(answer.error_code(431), "headers_too_large");
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("16384"), "{message}");
    }
    // Under the limit, served.
    let answer = answer_to(
        &server,
        format!(
            "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(12 * 1024)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
}

#[tokio::test]
async fn a_malformed_request_after_a_good_one_on_a_kept_alive_connection_gets_a_json_400() {
    let server = TestServer::start().await;
    let good: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    for bad in [
        &b"hello there\r\n\r\n"[..],
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // Two good ones first: the connection is kept alive.
        let mut got = Vec::new();
        for _ in 0..2 {
            stream.write_all(good).await.unwrap();
            got.clear();
            loop {
                read_some(&mut stream, &mut got).await;
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let (_, used) = parse_answer(&got);
                    if got.len() >= used && end < used {
                        break;
                    }
                }
            }
            let (answer, used) = parse_answer(&got);
            assert_eq!(used, got.len());
            assert_eq!(answer.status, 200, "{}", answer.describe());
            assert_eq!(answer.header("connection"), None);
        }
        stream.write_all(bad).await.unwrap();
        let got = read_to_close(&mut stream).await;
        let (answer, used) = parse_answer(&got);
        assert_eq!(used, got.len(), "one answer, then the close");
        assert_eq!(answer.error_code(400), "bad_request");
    }
}

/// Both requests in one write: the good one's answer, then the error's.
#[tokio::test]
async fn a_malformed_request_pipelined_behind_a_good_one_gets_a_json_400() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nhello there\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut stream).await;
    let (first, used) = parse_answer(&got);
    assert_eq!(first.status, 200, "{}", first.describe());
    let (second, rest) = parse_answer(&got[used..]);
    assert_eq!(used + rest, got.len());
    assert_eq!(second.error_code(400), "bad_request");
}

/// A body that breaks its chunked framing is the route's to answer (hyper
/// hands it the error), and it answers with JSON as well.
#[tokio::test]
async fn a_malformed_chunked_body_gets_a_json_400() {
    let server = TestServer::start().await;
    let head = "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\n\
Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in ["zz\r\n{}\r\n0\r\n\r\n", "2\r\n{}XX0\r\n\r\n"] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        let got = read_to_close(&mut stream).await;
        let (answer, _) = parse_answer(&got);
        assert_eq!(answer.status, 400, "{}", answer.describe());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
    }
}
