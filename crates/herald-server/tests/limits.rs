//! Limits and bad input: clear errors, never a panic or a hang.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn status_and_json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_publish_requests_get_json_errors() {
    let server = TestServer::with(|c| c.limits.max_message_size = 100).await;
    let client = reqwest::Client::new();
    let url = server.http("/api/v1/publish");
    let cases = [
        ("{", 400, "bad_request"),
        (r#"{"channel":"a"}"#, 400, "bad_request"),
        (r#"{"data":1}"#, 400, "bad_request"),
        (
            r#"{"channel":"a","channels":["b"],"data":1}"#,
            400,
            "bad_request",
        ),
        (r#"{"channel":"","data":1}"#, 400, "invalid_channel"),
        (r#"{"channel":"a b","data":1}"#, 400, "invalid_channel"),
        (
            r#"{"channel":"a","data":1,"event":"x\ny"}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"channel":"a","data":1,"extra":true}"#,
            400,
            "bad_request",
        ),
    ];
    for (body, status, code) in cases {
        let res = client.post(&url).body(body).send().await.unwrap();
        let (s, v) = status_and_json(res).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let big = json!({"channel": "a", "data": "x".repeat(200)});
    let (s, v) = status_and_json(client.post(&url).json(&big).send().await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("message_too_large"))
    );
    let huge = "x".repeat(200_000);
    let (s, v) = status_and_json(client.post(&url).body(huge).send().await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    let (s, v) = status_and_json(
        client
            .post(&url)
            .body(vec![0xff, 0xfe])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn wrong_methods_and_routes() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let (s, v) = status_and_json(
        client
            .get(server.http("/api/v1/publish"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (s, v) = status_and_json(
        client
            .delete(server.http("/messages"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 405, "{v}");
    let (s, v) = status_and_json(client.get(server.http("/nope")).send().await.unwrap()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    // Query strings and path segments that do not fit get JSON too.
    for path in [
        "/api/v1/channels/a/history?limit=many",
        "/api/v1/channels/%FF",
        "/sse?channels=a&channels=b",
    ] {
        let (s, v) = status_and_json(client.get(server.http(path)).send().await.unwrap()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{path}: {v}"
        );
    }
    // A plain GET on a WebSocket route is told to upgrade.
    let (s, v) = status_and_json(client.get(server.http("/ws")).send().await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (426, Some("upgrade_required"))
    );
}

#[tokio::test]
async fn channel_limits_per_connection() {
    let server = TestServer::with(|c| c.limits.max_channels_per_connection = 2).await;
    let client = reqwest::Client::new();
    let (s, v) = status_and_json(
        client
            .get(server.http("/sse?channels=a,b,c"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("too_many_channels"))
    );
    let (s, v) = status_and_json(
        client
            .get(server.http("/sse?channels=a,b%2Fc"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_channel"))
    );

    let mut ws = server.ws("/ws?channels=a").await;
    let r = command(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channels": ["b", "c"]}),
    )
    .await;
    assert_eq!(r["error"]["code"], "too_many_channels");
    let r = command(
        &mut ws,
        json!({"id": 2, "cmd": "subscribe", "channels": ["b"]}),
    )
    .await;
    assert_eq!(r["result"]["channels"], json!(["a", "b"]));
}

#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let server = TestServer::with(|c| c.limits.max_connections = 2).await;
    let _a = server.ws("/ws?channels=a").await;
    let _b = Sse::connect(&server.http("/sse?channels=a")).await;
    let url = format!("ws://{}/ws?channels=a", server.addr);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let res = reqwest::get(server.http("/sse?channels=a")).await.unwrap();
    assert_eq!(res.status(), 503);
    // push-stream's WebSocket too: a refusal to retry, not a bad request.
    let url = format!("ws://{}/ps/ws/a", server.addr);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(server.metric("herald_connections_refused_total").await, 3.0);
}

/// A waiting long-poll holds a subscription and a socket as a stream does,
/// so it takes one of `max_connections` and gives it back when answered.
#[tokio::test]
async fn long_polls_count_against_the_connection_limit() {
    let server = TestServer::with(|c| c.limits.max_connections = 1).await;
    let waiting = tokio::spawn(reqwest::get(server.http("/poll?channels=a&timeout=20000")));
    let deadline = std::time::Instant::now() + WAIT;
    while server
        .metric("herald_connections{transport=\"poll\"}")
        .await
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let url = format!("ws://{}/ws?channels=a", server.addr);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let (status, body) =
        status_and_json(reqwest::get(server.http("/poll?channels=b")).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("connection_limit"))
    );
    let res = reqwest::get(server.http("/ps/lp/b")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(server.metric("herald_connections_refused_total").await, 3.0);

    server.publish(json!({"channel": "a", "data": 7})).await;
    let (status, body) = status_and_json(waiting.await.unwrap().unwrap()).await;
    assert_eq!(
        (status, body["messages"][0]["data"].clone()),
        (200, json!(7))
    );
    // Answered: its slot is free again.
    let _ws = server.ws("/ws?channels=a").await;
    assert_eq!(
        server
            .metric("herald_connections_opened_total{transport=\"poll\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    assert_eq!(
        reqwest::get(server.http("/health/live"))
            .await
            .unwrap()
            .status(),
        200
    );
    let (s, v) = status_and_json(reqwest::get(server.http("/health/ready")).await.unwrap()).await;
    assert_eq!((s, v["ready"].as_bool()), (200, Some(true)));

    let mut ws = server.ws("/ws?channels=m").await;
    let mut sse = Sse::connect(&server.http("/sse?channels=m")).await;
    server.publish(json!({"channel": "m", "data": 1})).await;
    next_json(&mut ws).await;
    sse.next_data().await;
    assert_eq!(
        server.metric("herald_connections{transport=\"ws\"}").await,
        1.0
    );
    assert_eq!(
        server.metric("herald_connections{transport=\"sse\"}").await,
        1.0
    );
    assert_eq!(server.metric("herald_messages_published_total").await, 1.0);
    assert_eq!(server.metric("herald_messages_delivered_total").await, 2.0);
    assert_eq!(
        server.metric("herald_fanout_latency_seconds_count").await,
        1.0
    );
    drop(ws);
    drop(sse);
    let deadline = std::time::Instant::now() + WAIT;
    while server.metric("herald_connections{transport=\"ws\"}").await
        + server.metric("herald_connections{transport=\"sse\"}").await
        > 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections still counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Reads from `stream` until the server closes it; returns what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the server closes a silent connection")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

/// A request head over `limits.max_header_bytes` is answered 431 and its
/// connection closed, whether it arrives at once or in pieces; a head under
/// it is served, and so are other clients.
#[tokio::test]
async fn request_heads_over_the_limit_get_431() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| c.limits.max_header_bytes = 16 * 1024).await;
    let request = |pad: usize| {
        format!(
            "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(pad)
        )
    };
    let mut under = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    under
        .write_all(request(12 * 1024).as_bytes())
        .await
        .unwrap();
    let answered = read_until_closed(&mut under).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // Whole, and never finished: no waiting for the rest either way. The
    // server closes with bytes unread, so the close may come as a reset
    // after the answer.
    let over = request(20 * 1024);
    let endless = request(64 * 1024);
    for head in [&over[..], &endless[..endless.len() - 4]] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let answered = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
        assert!(answered.starts_with("HTTP/1.1 431"), "{answered}");
    }

    let res = reqwest::get(server.http("/health/live")).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn silent_and_half_sent_requests_are_closed_after_the_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let server =
        TestServer::with(|c| c.server.read_timeout = std::time::Duration::from_millis(200)).await;

    // Connected, and nothing sent.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");

    // Headers begun and never finished.
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut half).await, "");

    // A keep-alive connection answered once, then left idle.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // Everyone else is still served.
    let res = reqwest::get(server.http("/health/live")).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_on_every_route_and_other_clients_are_served() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| {
        c.server.read_timeout = std::time::Duration::from_millis(200);
        c.pushaas.enabled = true;
    })
    .await;
    // Routes that read their body themselves, through axum's `Bytes` (push-api,
    // PushaaS) and through the publish path's own reader (native, push-stream).
    let routes = [
        ("/api/v1/publish", ""),
        ("/ps/pub?id=a", ""),
        (
            "/push-api/api/v1/messages",
            "Authorization: Basic YXBwOmFiYzEyMw==\r\n",
        ),
        (
            "/pushaas/api/v1/resources",
            "Authorization: Basic dHN1cnU6YWJjMTIz\r\n",
        ),
    ];
    for (path, auth) in routes {
        let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"channel\":"
        );
        stalled.write_all(head.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut stalled).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(error["error"]["code"], "body_timeout", "{path}: {answer}");
    }

    server.publish(json!({"channel": "a", "data": 1})).await;
}

#[tokio::test]
async fn open_streams_outlive_the_read_timeout() {
    let timeout = std::time::Duration::from_millis(100);
    let server = TestServer::with(|c| c.server.read_timeout = timeout).await;
    let mut ws = server.ws("/ws?channels=long").await;
    let mut sse = Sse::connect(&server.http("/sse?channels=long")).await;
    // The time itself is what is tested: streams idle well past the timeout.
    tokio::time::sleep(timeout * 5).await;
    server.publish(json!({"channel": "long", "data": 7})).await;
    assert_eq!(next_json(&mut ws).await["data"], 7);
    let event = sse.next_data().await;
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["data"], 7, "{event:?}");
}

#[tokio::test]
async fn a_websocket_client_over_its_command_rate_is_refused_and_others_are_not() {
    let server = TestServer::with(|c| {
        c.limits.ws_commands_per_second = 1;
        c.limits.ws_commands_burst = 5;
    })
    .await;
    let mut flood = server.ws("/ws").await;
    let mut calm = server.ws("/ws").await;
    for id in 0..20 {
        let ping = json!({"id": id, "cmd": "ping"}).to_string();
        flood.send(Message::text(ping)).await.unwrap();
    }
    let mut refused = Vec::new();
    for id in 0..20 {
        let reply = next_json(&mut flood).await;
        assert_eq!(reply["id"], id, "{reply}");
        if reply["error"]["code"] == "rate_limited" {
            refused.push(id);
        } else {
            assert_eq!(reply["result"], json!({}), "{reply}");
        }
    }
    assert_eq!(
        refused,
        (5..20).collect::<Vec<_>>(),
        "the burst, then refusals"
    );
    // Malformed commands are counted too: they cost their parse and reply.
    let mut garbage = server.ws("/ws").await;
    for id in 0..7 {
        let bad = format!(r#"{{"id": {id}, "cmd": "#);
        garbage.send(Message::text(bad)).await.unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..7 {
        let reply = next_json(&mut garbage).await;
        codes.push(
            reply["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(codes[..5], ["bad_request"; 5], "{codes:?}");
    assert_eq!(codes[5..], ["rate_limited"; 2], "{codes:?}");
    // Its own bucket: another client is served at once.
    let reply = command(&mut calm, json!({"id": 1, "cmd": "ping"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    // The refused client stays connected and is served once its bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reply = command(&mut flood, json!({"id": 99, "cmd": "ping"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
}
