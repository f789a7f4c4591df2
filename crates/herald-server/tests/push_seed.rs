//! The Push seed's API, exactly as its README and tests use it.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn post_message(server: &TestServer, body: serde_json::Value) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(server.http("/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn post_messages_answers_202_with_subscriber_count() {
    let server = TestServer::start().await;
    let (status, body) = post_message(
        &server,
        json!({"channel": "qwerty", "message": "a message"}),
    )
    .await;
    assert_eq!((status, body), (202, json!({"subscribers": 0})));
    let _ws = server.ws("/ws/messages?channels=qwerty,xyz").await;
    let _sse = Sse::connect(&server.http("/sse/messages?channels=qwerty")).await;
    let (status, body) = post_message(&server, json!({"channel": "qwerty", "message": "x"})).await;
    assert_eq!((status, body), (202, json!({"subscribers": 2})));
}

#[tokio::test]
async fn sse_matches_the_seed_framing() {
    let server = TestServer::start().await;
    let mut sse = Sse::connect(&server.http("/sse/messages?channels=xyz,qwerty")).await;
    let first = sse.next().await.unwrap();
    assert_eq!(
        (first.event.as_deref(), first.data.as_deref()),
        (Some("heartbeat"), Some("{}"))
    );
    post_message(
        &server,
        json!({"channel": "qwerty", "message": "a message to channel qwerty"}),
    )
    .await;
    post_message(&server, json!({"channel": "xyz", "message": {"a": 1}})).await;
    let ev = sse.next().await.unwrap();
    assert_eq!(ev.event.as_deref(), Some("message"));
    assert_eq!(
        ev.data.as_deref(),
        Some(r#"{"channel":"qwerty","message":"a message to channel qwerty"}"#)
    );
    let ev = sse.next().await.unwrap();
    // Subscribers always get `message` as a string.
    assert_eq!(
        ev.data.as_deref(),
        Some(r#"{"channel":"xyz","message":"{\"a\":1}"}"#)
    );
}

#[tokio::test]
async fn sse_without_channels_is_400() {
    let server = TestServer::start().await;
    let res = reqwest::get(server.http("/sse/messages")).await.unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "'channels' query parameter required"})
    );
}

#[tokio::test]
async fn ws_matches_the_seed_frames() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws/messages?channels=qwerty,xyz").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "ping", "data": {}})
    );
    post_message(
        &server,
        json!({"channel": "qwerty", "message": "a message to channel 'qwerty'"}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "message", "data": {"channel": "qwerty", "message": "a message to channel 'qwerty'"}})
    );
    ws.send(Message::text(r#"{"event":"ping"}"#)).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "pong", "data": {}})
    );
}

/// The seed never deletes a channel; one deleted through another API takes
/// its subscribers with it, so they are asked to reconnect, with the hint
/// that comes before every lifetime's end.
#[tokio::test]
async fn a_channel_deleted_elsewhere_asks_its_subscribers_to_reconnect() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws/messages?channels=gone").await;
    assert_eq!(next_json(&mut ws).await["event"], "ping");
    let mut sse = Sse::connect(&server.http("/sse/messages?channels=gone")).await;
    assert_eq!(
        sse.next().await.unwrap().event.as_deref(),
        Some("heartbeat")
    );
    assert_eq!(server.delete_channel("gone").await.status(), 200);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "reconnect", "data": {}})
    );
    let ev = sse.next().await.unwrap();
    assert_eq!(
        (ev.event.as_deref(), ev.data.as_deref()),
        (Some("reconnect"), Some("{}"))
    );
}

#[tokio::test]
async fn ws_without_channels_sends_the_error_then_closes() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws/messages").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "'channels' query parameter required"})
    );
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 4000);
}

/// A query string that does not parse is answered in the seed's shapes too:
/// `{"error": "..."}` over SSE, the error frame and the close over WebSocket.
#[tokio::test]
async fn an_unparsable_query_gets_the_seeds_error_shape() {
    let server = TestServer::start().await;
    for query in ["channels=%FF", "channels=a&channels=b"] {
        let res = reqwest::get(server.http(&format!("/sse/messages?{query}")))
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
        let mut ws = server.ws(&format!("/ws/messages?{query}")).await;
        let frame = next_json(&mut ws).await;
        assert!(frame["error"].is_string(), "{query}: {frame}");
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 4000, "{query}");
    }
}

/// Every refusal closes with its own reason, not "'channels' … required".
#[tokio::test]
async fn ws_refusal_closes_with_the_error_it_sent() {
    let server = TestServer::start().await;
    let many: Vec<String> = (0..130).map(|i| format!("c{i}")).collect();
    let long = "n".repeat(201);
    for query in ["a%20b", &many.join(","), &long] {
        let mut ws = server.ws(&format!("/ws/messages?channels={query}")).await;
        let frame = next_json(&mut ws).await;
        let error = frame["error"].as_str().unwrap().to_owned();
        assert!(!error.contains("required"), "{query}: {error}");
        let (code, reason) = expect_close(&mut ws).await;
        assert_eq!(code, 4000);
        assert!(!reason.is_empty() && reason.len() <= 123, "{reason}");
        assert!(error.starts_with(&reason), "{reason:?} is not {error:?}");
    }
}

#[tokio::test]
async fn ws_liveness_requires_a_pong_before_each_ping() {
    let server = TestServer::with(|c| c.connection.heartbeat = Duration::from_millis(200)).await;
    let mut polite = server.ws("/ws/messages?channels=a").await;
    let mut silent = server.ws("/ws/messages?channels=a").await;
    // The polite client answers three pings and is still served.
    for _ in 0..3 {
        assert_eq!(next_json(&mut polite).await["event"], "ping");
        polite
            .send(Message::text(r#"{"event":"pong"}"#))
            .await
            .unwrap();
    }
    // The silent one got the first ping (t=0) and is closed at the next tick
    // (the seed's flag is cleared by every tick, the first included).
    assert_eq!(next_json(&mut silent).await["event"], "ping");
    let next = tokio::time::timeout(WAIT, silent.next()).await.unwrap();
    let Some(Ok(Message::Close(Some(close)))) = next else {
        panic!("the close, not another ping: {next:?}");
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4201, "no pong to the last ping")
    );
    post_message(&server, json!({"channel": "a", "message": "still here"})).await;
    loop {
        let m = next_json(&mut polite).await;
        if m["event"] == "message" {
            assert_eq!(m["data"]["message"], "still here");
            break;
        }
    }
}

#[tokio::test]
async fn ws_non_json_input_gets_an_error_and_a_close() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws/messages?channels=a").await;
    next_json(&mut ws).await;
    ws.send(Message::text("hello?")).await.unwrap();
    let err = next_json(&mut ws).await;
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed frame")
    );
    assert_eq!(expect_close(&mut ws).await.0, 4000);
}

#[tokio::test]
async fn malformed_publish_body_is_a_json_error() {
    let server = TestServer::start().await;
    let res = reqwest::Client::new()
        .post(server.http("/messages"))
        .body("{\"channel\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed body")
    );
}

/// A documented deviation: the seed takes any channel string, Herald its own
/// channel rules (shared by every dialect), refused in the seed's error shape.
#[tokio::test]
async fn channels_outside_herald_rules_are_refused_in_the_seed_shape() {
    let server = TestServer::start().await;
    for channel in ["my channel", "a/b", "ü", &"n".repeat(201)] {
        let (status, body) =
            post_message(&server, json!({"channel": channel, "message": "m"})).await;
        assert_eq!(status, 400, "{channel}: {body}");
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 1, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("channel"),
            "{body}"
        );
    }
    // `?channels=` is a missing list, not the channel "".
    let res = reqwest::get(server.http("/sse/messages?channels="))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "'channels' query parameter required"})
    );
}

async fn post_raw(server: &TestServer, body: &'static str) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(server.http("/messages"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// The seed re-serializes a non-string `message` with Jackson, compactly:
/// what subscribers get does not depend on the publisher's whitespace. A
/// null `message` its Kotlin model refuses; so does Herald, publishing
/// nothing.
#[tokio::test]
async fn object_messages_arrive_compact_and_null_is_refused() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws/messages?channels=c").await;
    next_json(&mut ws).await;
    let (status, body) = post_raw(
        &server,
        r#"{"channel": "c", "message": {"a": 1, "b": "x y", "c": [1, 2]} }"#,
    )
    .await;
    assert_eq!((status, body), (202, json!({"subscribers": 1})));
    assert_eq!(
        next_json(&mut ws).await["data"]["message"],
        r#"{"a":1,"b":"x y","c":[1,2]}"#
    );

    let (status, body) = post_raw(&server, r#"{"channel": "c", "message": null }"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({"error": "malformed body: 'message' must not be null"})
    );
    post_message(&server, json!({"channel": "c", "message": "after"})).await;
    assert_eq!(
        next_json(&mut ws).await["data"]["message"],
        "after",
        "nothing was published before"
    );
}
