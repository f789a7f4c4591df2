//! Browser origins (`server.allowed_origins`): CORS answers on the native
//! API and streams, and refusals of pages from origins not allowed, over
//! real connections on both the streams' own handshake path and hyper's.

mod common;

use std::net::SocketAddr;

use common::{RawSse, RawWs, TestServer, WAIT, json_of};
use reqwest::header::HeaderMap;
use serde_json::json;
use tokio::net::TcpStream;

const HANDSHAKE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The head of the answer to a WebSocket handshake on `path` from `origin`.
async fn ws_head(addr: SocketAddr, path: &str, origin: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n{HANDSHAKE}\r\n");
    RawWs::open(addr, req.as_bytes()).await.1
}

/// An SSE stream opened as a connection's first request, with `origin`.
async fn sse_first(addr: SocketAddr, origin: &str) -> RawSse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET /sse?channels=news HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\r\n");
    RawSse::open(stream, &req).await
}

async fn publish_from(server: &TestServer, origin: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(server.http("/api/v1/publish"))
        .json(&json!({"channel": "news", "data": "hi"}));
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap()
}

fn allow_origin(h: &HeaderMap) -> Vec<&str> {
    h.get_all("access-control-allow-origin")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
async fn by_default_pages_from_any_origin_may_subscribe_and_publish() {
    let server = TestServer::start().await;
    let addr = server.addr;

    // The streams' own handshake path: an SSE stream as a first request.
    let mut sse = sse_first(addr, "http://app.example").await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(!sse.chunked, "served on its own socket: {}", sse.head);
    assert!(
        sse.head.contains("\r\naccess-control-allow-origin: *\r\n"),
        "{}",
        sse.head
    );
    let res = publish_from(&server, Some("http://app.example")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(res.headers()), ["*"]);
    assert_eq!(sse.message().await.1, "hi");

    // The Push seed's stream goes through the router.
    let res = reqwest::Client::new()
        .get(server.http("/sse/messages?channels=news"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(res.headers()), ["*"]);

    // Requests without an Origin (servers, CLIs) get no CORS headers.
    let res = publish_from(&server, None).await;
    assert_eq!(res.status(), 200);
    assert!(allow_origin(res.headers()).is_empty());

    // Long-polling, and a WebSocket from a page.
    let res = reqwest::Client::new()
        .get(server.http("/poll?channels=news&timeout=0"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allow_origin(res.headers()), ["*"]);
    let head = ws_head(addr, "/ws?channels=news", "http://app.example").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn a_preflight_allows_the_methods_and_the_headers_asked_for() {
    let server = TestServer::start().await;
    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.http("/api/v1/publish"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(allow_origin(h), ["*"]);
    assert_eq!(
        h["access-control-allow-methods"],
        "GET, POST, DELETE, OPTIONS"
    );
    assert_eq!(h["access-control-allow-headers"], "content-type,x-api-key");
    assert_eq!(h["access-control-max-age"], "7200");
}

#[tokio::test]
async fn only_listed_origins_and_heralds_own_are_let_through() {
    let server = TestServer::with(|c| {
        c.server.allowed_origins =
            vec!["http://app.example".into(), "https://*.example.org".into()];
    })
    .await;
    let addr = server.addr;

    // A page elsewhere can cause nothing: its publish is refused unread.
    let res = publish_from(&server, Some("http://evil.example")).await;
    assert_eq!(res.status(), 403);
    assert!(allow_origin(res.headers()).is_empty());
    let body = json_of(res).await;
    assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
    let res = publish_from(&server, Some("http://app.example")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(res.headers()), ["http://app.example"]);
    assert_eq!(res.headers()["vary"], "origin");
    let answer = json_of(res).await;
    assert_eq!(answer["offset"], 1, "the refused publish took no offset");
    let res = publish_from(&server, Some("https://eu.shop.example.org")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(res.headers()), ["https://eu.shop.example.org"]);

    // Streams: refused before they open, on either path.
    for path in ["/ws?channels=news", "/ws/messages?channels=news"] {
        let head = ws_head(addr, path, "http://evil.example").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{path}: {head}");
        let head = ws_head(addr, path, "http://app.example").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
    }
    // Herald's own pages (its origin is its Host) need no listing.
    let head = ws_head(addr, "/ws?channels=news", &format!("http://{addr}")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let refused = sse_first(addr, "https://example.org").await;
    assert!(refused.head.starts_with("HTTP/1.1 403"), "{}", refused.head);
    let sse = sse_first(addr, "http://app.example").await;
    assert!(
        sse.head
            .contains("\r\naccess-control-allow-origin: http://app.example\r\nvary: origin\r\n"),
        "{}",
        sse.head
    );

    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.http("/api/v1/publish"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // push-stream's routes keep their own rule (`pushstream.allowed_origins`).
    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.http("/ps/lp/news"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(res.headers()), ["*"]);
}

#[test]
fn an_entry_that_is_not_an_origin_is_a_configuration_error() {
    let mut config = herald_server::Config::default();
    config.server.allowed_origins = vec!["https://app.example/".into()];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("server.allowed_origins"), "{err}");
    config.server.allowed_origins = vec![];
    config.validate().unwrap();
}
