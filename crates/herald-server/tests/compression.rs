//! permessage-deflate (RFC 7692): clients that offer it get large messages
//! compressed and may send compressed ones, on every WebSocket route; bad
//! compressed input closes only its own connection, with a clear code.
//! SSE streams go as gzip to clients that accept it.

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

/// An SSE stream read as a client that accepts gzip reads it: chunk by
/// chunk through a streaming decoder.
struct GzipSse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    decoder: flate2::write::GzDecoder<Vec<u8>>,
    /// Compressed bytes received.
    received: usize,
}

impl GzipSse {
    async fn open(url: String, accept: &str) -> (reqwest::Response, reqwest::header::HeaderMap) {
        let res = reqwest::Client::new()
            .get(url)
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let headers = res.headers().clone();
        (res, headers)
    }

    fn new(res: reqwest::Response) -> Self {
        Self {
            body: Box::pin(res.bytes_stream()),
            decoder: flate2::write::GzDecoder::new(Vec::new()),
            received: 0,
        }
    }

    /// Reads until the decoded text holds `needle`; returns the text up to
    /// its end, consuming it, and the compressed bytes that took.
    async fn until(&mut self, needle: &str) -> (String, usize) {
        use futures_util::StreamExt;
        let start = self.received;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(self.decoder.get_ref()).into_owned();
            if let Some(at) = text.find(needle) {
                let end = at + needle.len();
                self.decoder.get_mut().drain(..end);
                return (text[..end].to_owned(), self.received - start);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"))
                .expect("stream ended")
                .unwrap();
            self.received += chunk.len();
            self.decoder.write_all(&chunk).unwrap();
            self.decoder.flush().unwrap();
        }
    }
}

#[tokio::test]
async fn sse_streams_go_as_gzip_to_clients_that_accept_it() {
    let server = TestServer::start().await;
    // Herald's stream (opened before hyper) and the Push seed's (through
    // the router), as a browser asks for them.
    for (path, channel, first) in [
        ("/sse?channels=gz1", "gz1", "id: gz1:"),
        ("/sse/messages?channels=gz2", "gz2", "event:heartbeat"),
    ] {
        let (res, headers) = GzipSse::open(server.http(path), "gzip, deflate, br, zstd").await;
        assert_eq!(headers["content-encoding"], "gzip", "{path}");
        assert_eq!(headers["content-type"], "text/event-stream", "{path}");
        assert!(
            headers
                .get_all("vary")
                .iter()
                .any(|v| v.to_str().unwrap().contains("accept-encoding")),
            "{path}: {headers:?}"
        );
        let mut sse = GzipSse::new(res);
        sse.until(first).await;
        sse.until("\n\n").await;
        let big = ticker(8000);
        let text = big.to_string();
        server
            .publish(json!({"channel": channel, "data": big}))
            .await;
        let (event, took) = sse.until("\n\n").await;
        let data = event.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
        let got: Value = serde_json::from_str(data.trim()).unwrap();
        // Herald's envelope has the data; the seed's, it as a string.
        let got = match &got["message"] {
            Value::String(inner) => inner.clone(),
            _ => got["data"].to_string(),
        };
        assert!(got == text, "{path}: another message came");
        assert!(
            took < text.len() / 4,
            "{path}: {took} bytes for {}",
            text.len()
        );
        // A small message goes as it is (stored), still readable.
        server
            .publish(json!({"channel": channel, "data": "hi"}))
            .await;
        let (event, _) = sse.until("\n\n").await;
        assert!(event.contains("hi"), "{path}: {event:?}");
    }
    assert_eq!(server.metric("herald_sse_compressed_total").await, 2.0);
}

#[tokio::test]
async fn sse_goes_plain_unless_gzip_is_accepted_and_turned_on() {
    let server = TestServer::start().await;
    for accept in ["identity", "gzip;q=0, br", "deflate"] {
        let (res, headers) = GzipSse::open(server.http("/sse?channels=p"), accept).await;
        assert!(headers.get("content-encoding").is_none(), "{accept}");
        drop(res);
    }
    let server = TestServer::with(|c| c.server.sse_compression = false).await;
    for path in ["/sse?channels=p", "/sse/messages?channels=p"] {
        let (res, headers) = GzipSse::open(server.http(path), "gzip").await;
        assert!(headers.get("content-encoding").is_none(), "{path}");
        assert!(headers.get("vary").is_none(), "{path}: {headers:?}");
        let mut body = res;
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            first.starts_with(b"retry: ") || first.starts_with(b"event:"),
            "{first:?}"
        );
    }
}
