//! The native WebSocket handshake is answered before hyper sees the
//! connection when it can be; every other request, and every refusal, is
//! hyper's and the handlers'. These tests hold both ways to the same
//! behaviour.

mod common;

use common::{RawWs, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        assert_eq!(
            next_json(&mut ws).await,
            json!({"id": 1, "result": {"channels": ["a", "b"]}})
        );
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
