//! `auth.api_keys`: publishing, sending, deleting and minting Pushca tokens
//! need a key; subscribing and reading do not.

mod common;

use base64::Engine;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "publisher-key-0001";

/// Publisher keys, and push-api off its seed's default password (which
/// Herald refuses beside keys).
fn keyed(c: &mut herald_server::Config, keys: &[&str]) {
    c.auth.api_keys = keys.iter().map(|k| k.to_string()).collect();
    c.pushapi.basic_auth_password = "push-api-password".into();
}

/// `method path` with `body` and an optional header; the status and JSON body.
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Value,
    header: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, s.http(path))
        .json(&body)
        .timeout(WAIT);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn publisher_routes_want_a_key_and_subscribers_do_not() {
    let s = TestServer::with(|c| keyed(c, &["another-key-0123456789", KEY])).await;
    let bearer = format!("Bearer {KEY}");
    let publish = json!({"channel": "news", "data": 1});
    let client =
        json!({"workSpaceId": "w", "accountId": "a", "deviceId": "d", "applicationId": "x"});

    let guarded = [
        (Method::POST, "/api/v1/publish", publish.clone()),
        (Method::POST, "/api/v1/publish/batch", json!([publish])),
        (
            Method::POST,
            "/api/v1/send",
            json!({"filter": {"user": "u"}, "data": 1}),
        ),
        (
            Method::POST,
            "/messages",
            json!({"channel": "news", "message": "m"}),
        ),
        (Method::POST, "/open-connection", json!({"client": client})),
        (
            Method::POST,
            "/send-notification",
            json!({"filter": client, "message": "m"}),
        ),
        (Method::DELETE, "/api/v1/channels/news", Value::Null),
        (Method::POST, "/ps/pub?id=news", Value::Null),
        (
            Method::POST,
            "/api/v1/disconnect",
            json!({"filter": {"user": "u"}}),
        ),
        (Method::POST, "/api/v1/revoke", json!({"user": "u"})),
    ];
    for (method, path, body) in &guarded {
        let (status, err) = call(&s, method.clone(), path, body.clone(), None).await;
        assert_eq!(
            (status, &err["error"]["code"]),
            (401, &json!("unauthorized")),
            "{method} {path} without a key"
        );
        let wrong = Some(("authorization", "Bearer nope"));
        let (status, err) = call(&s, method.clone(), path, body.clone(), wrong).await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
        assert_eq!(err["error"]["message"], "the API key is not valid");
    }

    // A subscriber connects without a key and gets what a keyed publisher sends.
    let mut sub = s.ws("/ws?channels=news").await;
    let (status, _) = call(
        &s,
        Method::POST,
        "/api/v1/publish",
        publish.clone(),
        Some(("authorization", &bearer)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_json(&mut sub).await["data"], 1);
    let (status, _) = call(
        &s,
        Method::POST,
        "/open-connection",
        json!({"client": client}),
        Some(("x-api-key", KEY)),
    )
    .await;
    assert_eq!(status, 200);

    // Reads stay open.
    let (status, listed) = call(&s, Method::GET, "/api/v1/channels", Value::Null, None).await;
    assert_eq!(
        (status, &listed["channels"][0]["channel"]),
        (200, &json!("news"))
    );
    let (status, _) = call(&s, Method::GET, "/health/ready", Value::Null, None).await;
    assert_eq!(status, 200);
}

/// A browser asks before publishing from a page (CORS preflight), without
/// credentials: the push-stream publisher answers it, and wants the key
/// for the publish itself.
#[tokio::test]
async fn a_cors_preflight_to_the_push_stream_publisher_needs_no_key() {
    let s = TestServer::with(|c| keyed(c, &[KEY])).await;
    let res = reqwest::Client::new()
        .request(Method::OPTIONS, s.http("/ps/pub?id=news"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let (status, _) = call(&s, Method::POST, "/ps/pub?id=news", Value::Null, None).await;
    assert_eq!(status, 401);
}

/// The router answers HEAD with a GET route's handler: a HEAD that asks to
/// upgrade must neither skip the key nor open a WebSocket.
#[tokio::test]
async fn a_head_handshake_neither_skips_the_key_nor_upgrades() {
    let s = TestServer::with(|c| {
        keyed(c, &[KEY]);
        c.pushca.secret_key = Some("pushca-test-secret".into());
    })
    .await;
    let head = |path: String, key: Option<&'static str>| {
        let addr = s.addr;
        async move {
            let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
            let request = format!(
                "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
            );
            let (_, head) = RawWs::open(addr, request.as_bytes()).await;
            head
        }
    };
    let client = json!({"client": {"workSpaceId": "w", "accountId": "a", "deviceId": "d",
                                   "applicationId": "x"}});
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client.to_string());
    let sign_in = format!("/sign-in/{encoded}");
    let answer = head(sign_in.clone(), None).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let answer = head(sign_in, Some(KEY)).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    for path in ["/ws?channels=a", "/ws/messages?channels=a", "/ps/ws/a"] {
        let answer = head(path.into(), None).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{path}: {answer}");
    }
}

/// push-stream's WebSocket publishes its client's text frames, as `/pub`
/// does: with keys set, only for a handshake that presents one.
#[tokio::test]
async fn push_stream_websocket_publishing_wants_a_key_too() {
    let s = TestServer::with(|c| keyed(c, &[KEY])).await;
    let mut sub = s.ws("/ws?channels=news").await;
    let open = |key: Option<&'static str>| {
        let addr = s.addr;
        async move {
            let key = key.map_or(String::new(), |k| format!("X-Api-Key: {k}\r\n"));
            let request = format!(
                "GET /ps/ws/news HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{key}\r\n"
            );
            let (ws, head) = RawWs::open(addr, request.as_bytes()).await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            ws
        }
    };
    let mut keyless = open(None).await;
    keyless.send(1, b"from anyone").await;
    // Its close answered: the frame before it was handled.
    keyless.send(8, &1000u16.to_be_bytes()).await;
    assert_eq!(keyless.close_frame().await.0, 1000);
    let mut keyed = open(Some(KEY)).await;
    keyed.send(1, b"from the backend").await;
    let got = next_json(&mut sub).await;
    assert_eq!(got["data"], "from the backend", "{got}");
}

#[tokio::test]
async fn without_keys_the_routes_stay_open() {
    let s = TestServer::start().await;
    let (status, _) = call(
        &s,
        Method::POST,
        "/api/v1/publish",
        json!({"channel": "open", "data": 1}),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[test]
fn empty_or_short_keys_are_refused_at_start() {
    let mut c = herald_server::Config::default();
    for bad in ["", "   ", "short-key"] {
        c.auth.api_keys = vec![KEY.into(), bad.into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.api_keys"), "{bad:?}: {e}");
    }
    c.auth.api_keys = vec![KEY.into()];
    // Beside keys, push-api and PushaaS must not keep the seeds' password.
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("pushapi.basic_auth_password"), "{e}");
    c.pushapi.enabled = false;
    assert!(c.validate().is_ok());
    c.pushapi.enabled = true;
    c.pushapi.basic_auth_password = "push-api-password".into();
    assert!(c.validate().is_ok());
    c.pushapi.enable_auth = false;
    assert!(c.validate().is_err(), "push-api open to anyone");
    c.pushapi.enable_auth = true;
    c.pushaas.enabled = true;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("pushaas.password"), "{e}");
    c.pushaas.password = "tsuru-password".into();
    assert!(c.validate().is_ok());
    c.auth.receiver_secret = Some("tiny".into());
    assert!(c.validate().is_err());

    // An empty password opens the route to anyone, keys or not.
    let mut c = herald_server::Config::default();
    c.pushapi.basic_auth_password = String::new();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("pushapi.basic_auth_password is empty"), "{e}");
    c.pushapi.enable_auth = false;
    assert!(c.validate().is_ok(), "no auth asked, as configured");
    c.pushaas.enabled = true;
    c.pushaas.password = String::new();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("pushaas.password is empty"), "{e}");
}

#[tokio::test]
async fn the_openapi_document_marks_the_keyed_routes() {
    let s = TestServer::start().await;
    let doc: Value = reqwest::get(s.http("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scheme = &doc["components"]["securitySchemes"]["publisher_key"];
    assert_eq!(scheme["scheme"], "bearer");
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    let keyed = json!([{"publisher_key": []}, {}]);
    for (path, method) in [
        ("/api/v1/publish", "post"),
        ("/api/v1/send", "post"),
        ("/api/v1/revoke", "post"),
        ("/api/v1/channels/{channel}", "delete"),
        ("/open-connection", "post"),
        ("/ps/pub", "post"),
        ("/ps/pub", "get"),
        ("/ps/pub", "delete"),
    ] {
        assert_eq!(security(path, method), keyed, "{method} {path}");
    }
    for (path, method) in [
        ("/ws", "get"),
        ("/api/v1/channels/{channel}", "get"),
        ("/api/v1/ack", "post"),
        ("/ps/sub/{channels}", "get"),
    ] {
        assert_eq!(security(path, method), Value::Null, "{method} {path}");
    }
}
