//! permessage-deflate (RFC 7692): clients that offer it get large messages
//! compressed and may send compressed ones, on every WebSocket route; bad
//! compressed input closes only its own connection, with a clear code.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::{RawWs, TestServer, next_json};
use flate2::write::DeflateEncoder;
use flate2::{Compression, FlushDecompress};
use serde_json::{Value, json};

/// What Chromium offers.
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// What Herald answers it with.
const AGREED: &str = "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Opens `target` with `extra` header lines; returns the client and the
/// answer's head, lower-cased.
async fn open(addr: SocketAddr, target: &str, extra: &str) -> (RawWs, String) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    let (ws, head) = RawWs::open(addr, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (ws, head.to_ascii_lowercase())
}

/// A message payload that compresses well, of about `len` bytes.
fn ticker(len: usize) -> Value {
    let rows: Vec<Value> = (0..len / 40)
        .map(|i| json!({"symbol": "HRLD", "price": 100 + i % 7}))
        .collect();
    json!(rows)
}

/// The client's half of a compressed message: raw deflate, sync-flushed,
/// without the final `00 00 ff ff`.
fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.flush().unwrap();
    let mut out = encoder.get_ref().clone();
    assert_eq!(out.split_off(out.len() - 4), [0, 0, 0xff, 0xff]);
    out
}

/// A compressed payload from the server, inflated.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    flate2::Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// The next text message: whether it came compressed, and its JSON.
async fn next_message(ws: &mut RawWs) -> (bool, Value) {
    let (first, payload) = ws.raw_frame().await.expect("a frame");
    assert_eq!(first & 0x8f, 0x81, "a final text frame");
    let compressed = first & 0x40 != 0;
    let text = if compressed {
        inflate(&payload)
    } else {
        payload
    };
    (compressed, serde_json::from_slice(&text).unwrap())
}

/// The next message but the Push seed's pings, which open its streams.
async fn next_delivery(ws: &mut RawWs) -> (bool, Value) {
    loop {
        let (compressed, msg) = next_message(ws).await;
        if msg["event"] != "ping" {
            return (compressed, msg);
        }
    }
}

#[tokio::test]
async fn large_messages_reach_clients_that_offer_deflate_compressed() {
    let server = TestServer::start().await;
    let big = ticker(4000);
    // The fast path (`/ws`), hyper's (the same route, its handshake too big
    // for the fast path's first read) and a seed's route.
    let pad = format!("X-Pad: {}\r\n{OFFER}", "p".repeat(5000));
    let targets = [
        ("/ws?channels=t", OFFER.to_owned()),
        ("/ws?channels=t", pad),
        ("/ws/messages?channels=t", OFFER.to_owned()),
    ];
    let mut clients = Vec::new();
    for (target, extra) in &targets {
        let (ws, head) = open(server.addr, target, extra).await;
        assert!(head.contains(AGREED), "{target}: {head}");
        clients.push(ws);
    }
    // One that offers nothing, on the same channel.
    let (mut plain, head) = open(server.addr, "/ws?channels=t", "").await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");

    let published = server.publish(json!({"channel": "t", "data": big})).await;
    assert_eq!(published["subscribers"], 4, "{published}");
    server.publish(json!({"channel": "t", "data": "hi"})).await;
    for (ws, (target, _)) in clients.iter_mut().zip(&targets) {
        let (compressed, msg) = next_delivery(ws).await;
        assert!(compressed, "{target}");
        let data = match target.starts_with("/ws/messages") {
            // The Push seed delivers `message` as a string.
            true => serde_json::from_str(msg["data"]["message"].as_str().unwrap()).unwrap(),
            false => msg["data"].clone(),
        };
        assert_eq!(data, big, "{target}");
        // Too small to gain: sent as it is.
        let (compressed, _) = next_delivery(ws).await;
        assert!(!compressed, "{target}");
    }
    let (compressed, msg) = next_message(&mut plain).await;
    assert!(!compressed);
    assert_eq!(msg["data"], big);

    let metrics = reqwest::get(server.http("/metrics")).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "herald_ws_compressed_total 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn compressed_commands_are_read_even_in_fragments() {
    let server = TestServer::with(|c| c.server.allow_client_publish = true).await;
    let (mut ws, head) = open(server.addr, "/ws?channels=mine", OFFER).await;
    assert!(head.contains(AGREED), "{head}");
    let mut reader = server.ws("/ws?channels=room").await;

    let big = ticker(3000);
    let command = json!({"id": 7, "cmd": "publish", "channel": "room", "data": big}).to_string();
    let compressed = deflate(command.as_bytes());
    assert!(compressed.len() < command.len() / 4);
    // RSV1 on the first fragment only; a ping between the fragments.
    let (head_part, tail_part) = compressed.split_at(compressed.len() / 2);
    let mut bytes = RawWs::encode_raw(0x41, head_part);
    bytes.extend(RawWs::encode(9, b"between"));
    bytes.extend(RawWs::encode_raw(0x80, tail_part));
    // And a small command, uncompressed, right behind.
    let small = json!({"id": 8, "cmd": "publish", "channel": "room", "data": 1}).to_string();
    bytes.extend(RawWs::encode(1, small.as_bytes()));
    ws.send_bytes(&bytes).await;

    let (first, pong) = ws.raw_frame().await.unwrap();
    assert_eq!((first, pong.as_slice()), (0x8a, &b"between"[..]));
    for id in [7, 8] {
        let (_, reply) = next_message(&mut ws).await;
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply.get("error").is_none(), "{reply}");
    }
    assert_eq!(next_json(&mut reader).await["data"], big);
    assert_eq!(next_json(&mut reader).await["data"], 1);
}

#[tokio::test]
async fn bad_compressed_input_closes_only_its_connection() {
    let server = TestServer::with(|c| c.server.allow_client_publish = true).await;
    let limit = herald_server::Config::default().limits.max_message_size;
    // A bomb: tiny on the wire, past the message size limit once inflated.
    let bomb = deflate(&vec![b' '; limit + 1]);
    assert!(bomb.len() < 1024);
    let mut bystander = server.ws("/ws?channels=room").await;
    let cases: [(&[u8], u16, &str); 3] = [
        (&bomb, 1009, "message too big"),
        (b"\xff\xfe\xfd\xfc", 1007, "invalid compressed data"),
        // RSV1 on a control frame is not compression.
        (b"", 1002, "Reserved bits are non-zero"),
    ];
    for (payload, code, reason) in cases {
        let (mut ws, _) = open(server.addr, "/ws?channels=room", OFFER).await;
        let first = if code == 1002 { 0xc9 } else { 0xc1 };
        ws.send_bytes(&RawWs::encode_raw(first, payload)).await;
        assert_eq!(ws.close_frame().await, (code, reason.to_owned()));
    }
    // A compressed data frame where a continuation was due.
    let (mut ws, _) = open(server.addr, "/ws?channels=room", OFFER).await;
    let mut bytes = RawWs::encode_raw(0x41, &deflate(b"{\"id\":1,"));
    bytes.extend(RawWs::encode_raw(0xc1, &deflate(b"{}")));
    ws.send_bytes(&bytes).await;
    assert_eq!(
        ws.close_frame().await,
        (1002, "expected a continuation frame".to_owned())
    );

    server
        .publish(json!({"channel": "room", "data": "still here"}))
        .await;
    assert_eq!(next_json(&mut bystander).await["data"], "still here");
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let server = TestServer::with(|c| c.server.ws_compression = false).await;
    let (mut ws, head) = open(server.addr, "/ws?channels=t", OFFER).await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    let big = ticker(4000);
    server.publish(json!({"channel": "t", "data": big})).await;
    let (compressed, msg) = next_message(&mut ws).await;
    assert!(!compressed);
    assert_eq!(msg["data"], big);
    // Without the extension agreed, a compressed frame is a protocol error.
    ws.send_bytes(&RawWs::encode_raw(0xc1, &deflate(b"{}")))
        .await;
    assert_eq!(ws.close_frame().await.0, 1002);
}
