//! The native streams' opening requests (a WebSocket handshake, an SSE
//! request) are answered before hyper sees the connection when they can be;
//! every other request, and every refusal, is hyper's and the handlers'.
//! These tests hold both ways to the same behaviour.

mod common;

use common::{RawSse, RawWs, TestServer, keep_history, read_some};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A handshake for `target`, with `extra` header lines.
fn handshake(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut RawWs) -> Value {
    let (opcode, payload) = ws.frame().await.expect("a frame");
    assert_eq!(opcode, 1, "a text frame");
    serde_json::from_slice(&payload).unwrap()
}

#[tokio::test]
async fn frames_sent_with_the_handshake_are_read_on_either_path() {
    let server = TestServer::start().await;
    // A handshake bigger than the fast path's first read is hyper's.
    let pad = format!("X-Pad: {}\r\n", "p".repeat(5000));
    for (extra, by_hyper) in [("", false), (pad.as_str(), true)] {
        let mut bytes = handshake("/ws?channels=a", extra).into_bytes();
        let subscribe = json!({"id": 1, "cmd": "subscribe", "channels": ["b"]});
        bytes.extend(RawWs::encode(1, subscribe.to_string().as_bytes()));
        let (mut ws, head) = RawWs::open(server.addr, &bytes).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // Hyper dates its answers; the fast path has no use for a date.
        assert_eq!(head.contains("\r\ndate: "), by_hyper, "{head}");
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["id"], 1, "{reply}");
        assert_eq!(reply["result"]["channels"], json!(["a", "b"]), "{reply}");
        server
            .publish(json!({"channel": "b", "data": extra.len()}))
            .await;
        assert_eq!(next_json(&mut ws).await["data"], extra.len());
    }
}

/// Sends `request` and reads the whole answer (the server closes after it).
async fn answer(server: &TestServer, request: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut got))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn handshakes_the_handler_refuses_get_its_json_errors() {
    let server = TestServer::start().await;
    let close = "Connection: close\r\n";
    let cases = [
        (
            handshake("/ws", close).replace("Version: 13", "Version: 8"),
            400,
        ),
        (
            handshake("/ws", close).replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
        (handshake("/ws?channels=a/b", close), 400),
        (handshake("/ws?channels=a&channels=b", close), 400),
        (
            handshake("/ws", close).replace("Upgrade: websocket\r\n", ""),
            426,
        ),
        (sse_request("/sse?channels=a/b", close), 400),
        (sse_request("/sse", close), 400),
        (sse_request("/sse?channels=a&channels=b", close), 400),
        (
            sse_request(
                "/sse?channels=a",
                "Last-Event-ID: nonsense\r\nConnection: close\r\n",
            ),
            400,
        ),
        (sse_request("/sse?channels=a&token=forged", close), 401),
    ];
    for (request, status) in cases {
        let (got, body) = answer(&server, &request).await;
        assert_eq!(got, status, "{request}");
        assert!(body["error"]["code"].is_string(), "{request}: {body}");
    }
    // The server is no worse for them.
    let (mut ws, head) = RawWs::open(server.addr, handshake("/ws?channels=a", "").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    server.publish(json!({"channel": "a", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
}

/// An SSE request for `target`, with `extra` header lines.
fn sse_request(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n")
}

/// How an SSE request reaches the server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    /// As a connection's first request: the fast path.
    First,
    /// With a head longer than the fast path's first read: hyper.
    Long,
    /// As a keep-alive connection's second request: hyper.
    Second,
}

impl Way {
    async fn open(self, server: &TestServer, target: &str, extra: &str) -> RawSse {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let extra = match self {
            Way::Long => format!("{extra}X-Pad: {}\r\n", "p".repeat(5000)),
            Way::First => extra.to_owned(),
            Way::Second => {
                stream
                    .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\nok") {
                    read_some(&mut stream, &mut got).await;
                }
                extra.to_owned()
            }
        };
        let sse = RawSse::open(stream, &sse_request(target, &extra)).await;
        assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
        assert!(sse.head.contains("\r\ncontent-type: text/event-stream"));
        assert!(sse.head.contains("\r\ncache-control: no-cache"));
        assert!(sse.head.contains("\r\ndate: "), "{}", sse.head);
        // Only the fast path owns the socket, and so sends frames unchunked.
        assert_eq!(sse.chunked, self != Way::First, "{self:?}: {}", sse.head);
        sse
    }
}

/// The same stream on every path: the preamble, ids that carry every
/// channel's position, and a resume from `Last-Event-ID` that replays
/// exactly what was missed.
#[tokio::test]
async fn sse_streams_are_the_same_on_either_path() {
    let server = TestServer::with(|c| keep_history(c, 100)).await;
    for way in [Way::First, Way::Long, Way::Second] {
        let (a, b) = (format!("ha-{way:?}"), format!("hb-{way:?}"));
        let target = format!("/sse?channels={a},{b}");
        let mut sse = way.open(&server, &target, "").await;
        assert_eq!(sse.event().await, ["retry: 3000", ": connected"]);
        let ea = server.publish(json!({"channel": a, "data": "a1"})).await["epoch"].clone();
        let eb = server.publish(json!({"channel": b, "data": "b1"})).await["epoch"].clone();
        let (ea, eb) = (ea.as_str().unwrap(), eb.as_str().unwrap());
        let first = format!("{a}:{ea}:1,{b}:{eb}:0");
        assert_eq!(sse.message().await, (first, json!("a1")));
        let last = format!("{a}:{ea}:1,{b}:{eb}:1");
        assert_eq!(sse.message().await, (last.clone(), json!("b1")));
        drop(sse);

        server.publish(json!({"channel": a, "data": "a2"})).await;
        let mut sse = way
            .open(&server, &target, &format!("Last-Event-ID: {last}\r\n"))
            .await;
        sse.event().await;
        assert_eq!(
            sse.message().await,
            (format!("{a}:{ea}:2,{b}:{eb}:1"), json!("a2")),
            "{way:?}"
        );
    }
}

/// Handshakes the RFCs refuse are refused on both paths, with the headers
/// the refusals must carry.
#[tokio::test]
async fn refused_handshakes_say_what_would_be_taken() {
    let server = TestServer::start().await;
    for target in ["/ws?channels=a", "/ws/messages?channels=a"] {
        let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
        for (lines, status, header) in [
            // Not asking to upgrade: 426, naming the protocol.
            (String::new(), 426, "upgrade: websocket"),
            // Another version: refused, naming the one spoken.
            (
                format!(
                    "{upgrade}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                ),
                400,
                "sec-websocket-version: 13",
            ),
            // A key that is not 16 bytes in base64.
            (
                format!("{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n"),
                400,
                "",
            ),
            (
                format!(
                    "{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n"
                ),
                400,
                "",
            ),
        ] {
            let (mut stream, head) = {
                let mut stream = TcpStream::connect(server.addr).await.unwrap();
                let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    read_some(&mut stream, &mut got).await;
                }
                (stream, String::from_utf8_lossy(&got).to_ascii_lowercase())
            };
            assert!(
                head.starts_with(&format!("http/1.1 {status}")),
                "{target} {lines:?}: {head}"
            );
            assert!(head.contains(header), "{target} {lines:?}: {head}");
            stream.shutdown().await.unwrap();
        }
    }
}
