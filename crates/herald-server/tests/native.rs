//! The native API over real sockets: HTTP publish, WebSocket, SSE.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_subscriber_receives_published_messages_in_order() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?channels=news,other").await;
    let first = server
        .publish(json!({"channel": "news", "data": {"n": 1}, "event": "tick"}))
        .await;
    assert_eq!(first["subscribers"], 1);
    server
        .publish(json!({"channel": "news", "data": "two", "id": "my-id"}))
        .await;

    let m1 = next_json(&mut ws).await;
    assert_eq!(m1["channel"], "news");
    assert_eq!(m1["data"], json!({"n": 1}));
    assert_eq!(m1["event"], "tick");
    assert_eq!(m1["id"], first["id"]);
    assert_eq!(m1["offset"], first["offset"]);
    let m2 = next_json(&mut ws).await;
    assert_eq!(m2["id"], "my-id");
    assert_eq!(m2["data"], "two");
    assert_eq!(
        m2["offset"].as_u64().unwrap(),
        m1["offset"].as_u64().unwrap() + 1
    );
    assert_eq!(m2["epoch"], m1["epoch"]);
    assert!(m2.get("event").is_none());
}

#[tokio::test]
async fn publish_to_several_channels_and_in_batches() {
    let server = TestServer::start().await;
    let mut a = server.ws("/ws?channels=a").await;
    let mut b = server.ws("/ws?channels=b").await;
    let reply = server
        .publish(json!({"channels": ["a", "b", "c"], "data": 7}))
        .await;
    assert_eq!(reply["subscribers"], 2);
    assert_eq!(reply["channels"].as_array().unwrap().len(), 3);
    assert_eq!(next_json(&mut a).await["data"], 7);
    assert_eq!(next_json(&mut b).await["data"], 7);

    let client = reqwest::Client::new();
    let res = client
        .post(server.http("/api/v1/publish/batch"))
        .json(&json!({"messages": [{"channel": "a", "data": 1}, {"channel": "b", "data": 2}, {"channel": "a", "data": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), 3);
    assert_eq!(next_json(&mut a).await["data"], 1);
    assert_eq!(next_json(&mut a).await["data"], 3);
    assert_eq!(next_json(&mut b).await["data"], 2);

    // One bad message rejects the whole batch: nothing is published.
    let res = client
        .post(server.http("/api/v1/publish/batch"))
        .json(&json!({"messages": [{"channel": "a", "data": "never"}, {"channel": "bad,name", "data": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_channel");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[1]")
    );
    server
        .publish(json!({"channel": "a", "data": "after"}))
        .await;
    assert_eq!(
        next_json(&mut a).await["data"],
        "after",
        "the rejected batch published nothing"
    );
}

#[tokio::test]
async fn websocket_commands_reply_with_their_ids() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws").await;
    let r = command(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channels": ["x", "y"]}),
    )
    .await;
    assert_eq!(r["id"], 1);
    assert_eq!(r["result"]["channels"], json!(["x", "y"]));
    for ch in ["x", "y"] {
        let position = &r["result"]["positions"][ch];
        assert_eq!(position["offset"], 0, "{r}");
        assert!(position["epoch"].is_string(), "{r}");
    }
    let r = command(&mut ws, json!({"id": "two", "cmd": "ping"})).await;
    assert_eq!(r, json!({"id": "two", "result": {}}));
    let r = command(
        &mut ws,
        json!({"id": 3, "cmd": "unsubscribe", "channel": "x"}),
    )
    .await;
    assert_eq!(r["result"]["channels"], json!(["y"]));

    server
        .publish(json!({"channel": "x", "data": "gone"}))
        .await;
    server
        .publish(json!({"channel": "y", "data": "here"}))
        .await;
    assert_eq!(next_json(&mut ws).await["data"], "here");

    let r = command(
        &mut ws,
        json!({"id": 4, "cmd": "publish", "channel": "y", "data": 1}),
    )
    .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = command(&mut ws, json!({"id": 5, "cmd": "dance"})).await;
    assert_eq!(r["id"], 5);
    assert_eq!(r["error"]["code"], "unknown_command");
    assert!(r.get("result").is_none(), "{r}");
    ws.send(Message::text("{not json")).await.unwrap();
    let r = next_json(&mut ws).await;
    assert_eq!(r["error"]["code"], "bad_request");
    assert_eq!(r["id"], Value::Null, "{r}");
    let r = command(
        &mut ws,
        json!({"id": 6, "cmd": "subscribe", "channels": ["bad/name"]}),
    )
    .await;
    assert_eq!(r["error"]["code"], "invalid_channel");
    // The connection survives every error above.
    let r = command(&mut ws, json!({"id": 7, "cmd": "ping"})).await;
    assert_eq!(r["id"], 7);
}

#[tokio::test]
async fn websocket_publish_when_allowed() {
    let server = TestServer::with(|c| c.server.allow_client_publish = true).await;
    let mut sub = server.ws("/ws?channels=room").await;
    let mut publisher = server.ws("/ws").await;
    let r = command(&mut publisher, json!({"id": 1, "cmd": "publish", "channel": "room", "data": {"hi": true}, "event": "chat"})).await;
    assert_eq!(r["result"]["subscribers"], 1, "{r}");
    let m = next_json(&mut sub).await;
    assert_eq!(m["data"], json!({"hi": true}));
    assert_eq!(m["event"], "chat");

    // The answer echoes any JSON id, and escaped names read as unescaped.
    let raw =
        r#"{"id": {"n": [1, "a\"b"]}, "cmd": "pub\u006cish", "channel": "r\u006fom", "data": 3}"#;
    publisher.send(Message::text(raw)).await.unwrap();
    let r = next_json(&mut publisher).await;
    assert_eq!(r["id"], json!({"n": [1, "a\"b"]}), "{r}");
    let result = r["result"].as_object().unwrap();
    let mut fields: Vec<&str> = result.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["epoch", "id", "offset", "subscribers"], "{r}");
    assert_eq!(r["result"]["offset"], 2, "{r}");
    assert!(r.get("error").is_none(), "{r}");
    let m = next_json(&mut sub).await;
    assert_eq!(
        (m["data"].clone(), m["id"].clone()),
        (json!(3), r["result"]["id"].clone())
    );

    // A frame many times the read buffer arrives whole.
    let big = "x".repeat(40_000);
    let r = command(
        &mut publisher,
        json!({"id": 2, "cmd": "publish", "channel": "room", "data": big}),
    )
    .await;
    assert_eq!(r["result"]["subscribers"], 1, "{r}");
    assert_eq!(
        next_json(&mut sub).await["data"].as_str().map(str::len),
        Some(40_000)
    );
}

#[tokio::test]
async fn reply_false_answers_only_failures() {
    let server = TestServer::with(|c| c.server.allow_client_publish = true).await;
    let mut sub = server.ws("/ws?channels=room").await;
    let mut publisher = server.ws("/ws").await;
    for n in 0..3 {
        let cmd = json!({"id": n, "cmd": "publish", "channel": "room", "data": n, "reply": false});
        publisher
            .send(Message::text(cmd.to_string()))
            .await
            .unwrap();
    }
    for n in 0..3 {
        assert_eq!(next_json(&mut sub).await["data"], n);
    }
    // Frames keep their order, so the first one back is the ping's: no publish answered.
    let r = command(&mut publisher, json!({"id": "p", "cmd": "ping"})).await;
    assert_eq!(r, json!({"id": "p", "result": {}}));

    // A failure is still answered, under its id.
    let bad = json!({"id": 9, "cmd": "publish", "channel": "room", "reply": false});
    let r = command(&mut publisher, bad).await;
    assert_eq!(r["id"], 9, "{r}");
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // Any other command is quiet too, and `reply` must be a boolean.
    let quiet = json!({"cmd": "subscribe", "channel": "other", "reply": false});
    publisher
        .send(Message::text(quiet.to_string()))
        .await
        .unwrap();
    let r = command(
        &mut publisher,
        json!({"id": 1, "cmd": "ping", "reply": "no"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    server
        .publish(json!({"channel": "other", "data": "o"}))
        .await;
    assert_eq!(next_json(&mut publisher).await["data"], "o");
}

#[tokio::test]
async fn sse_subscriber_gets_retry_ids_events_and_data() {
    let server = TestServer::start().await;
    let mut sse = Sse::connect(&server.http("/sse?channels=feed")).await;
    let hello = sse.next().await.unwrap();
    assert_eq!(hello.retry.as_deref(), Some("3000"));
    let p = server
        .publish(json!({"channel": "feed", "data": {"k": "v"}, "event": "update"}))
        .await;
    let ev = sse.next_data().await;
    assert_eq!(ev.event.as_deref(), Some("update"));
    // The id is the stream's cursor: channel, epoch and offset.
    let cursor = format!("feed:{}:{}", p["epoch"].as_str().unwrap(), p["offset"]);
    assert_eq!(ev.id.as_deref(), Some(cursor.as_str()));
    let data: serde_json::Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["data"], json!({"k": "v"}));
    assert_eq!(data["channel"], "feed");
    assert_eq!(data["id"], p["id"]);
}

#[tokio::test]
async fn multi_line_json_is_sent_on_one_sse_line() {
    let server = TestServer::start().await;
    let mut sse = Sse::connect(&server.http("/sse?channels=feed")).await;
    let res = reqwest::Client::new()
        .post(server.http("/api/v1/publish"))
        .header("content-type", "application/json")
        .body("{\"channel\": \"feed\",\n \"data\": {\n  \"a\": [1,\n 2]\n}}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ev = sse.next_data().await;
    let data: serde_json::Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["data"], json!({"a": [1, 2]}));
}

#[tokio::test]
async fn sse_heartbeats_arrive() {
    let server =
        TestServer::with(|c| c.connection.heartbeat = std::time::Duration::from_millis(100)).await;
    let mut sse = Sse::connect(&server.http("/sse?channels=feed")).await;
    sse.next().await.unwrap();
    assert!(
        sse.next().await.unwrap().id.is_some(),
        "the stream's first id"
    );
    let beat = sse.next().await.unwrap();
    assert_eq!(beat.comment.as_deref(), Some("heartbeat"));
}

#[tokio::test]
async fn clients_that_read_answer_pings_and_stay_connected() {
    // tungstenite answers pings only while the client reads; a client that
    // stops reading is closed with 4201 after two heartbeats.
    let server =
        TestServer::with(|c| c.connection.heartbeat = std::time::Duration::from_millis(150)).await;
    let mut alive = server.ws("/ws?channels=a").await;
    // Reading keeps answering pings: still open after several heartbeats.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(700);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(frame)) =
            tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut alive)).await
        {
            assert!(matches!(frame.unwrap(), Message::Ping(_)));
        }
    }
    let r = command(&mut alive, json!({"id": 1, "cmd": "ping"})).await;
    assert_eq!(r["id"], 1);
}

/// A client's close frame is answered with one (RFC 6455 §5.5.1), so
/// browsers see a clean close: on the native fast path and behind hyper.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let server = TestServer::start().await;
    for path in ["/ws?channels=a", "/ws/messages?channels=a"] {
        let mut ws = server.ws(path).await;
        ws.close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1000, "{path}");
    }
}

/// Input the decoders would quietly replace is refused instead: a query
/// that is not UTF-8 once percent-decoded, a `Last-Event-ID` that is not
/// visible ASCII. Replaced, a channel or a cursor became another.
#[tokio::test]
async fn undecodable_queries_and_cursors_are_refused() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for path in [
        "/sse?channels=%FF",
        "/poll?channels=a&since=a:%FF:0",
        "/api/v1/channels/a/history?epoch=%C3&since=1",
    ] {
        let res = client.get(server.http(path)).send().await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
    let cursor = reqwest::header::HeaderValue::from_bytes(b"a:\xff:1").unwrap();
    let res = client
        .get(server.http("/sse?channels=a"))
        .header("last-event-id", cursor)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
}

/// Errors point at what failed: a batch message by its index, whatever the
/// error; a WebSocket command by its id, even when another field of it has
/// the wrong type. And the channel list stays in subscription order.
#[tokio::test]
async fn errors_name_the_failing_part() {
    let server = TestServer::start().await;
    let res = reqwest::Client::new()
        .post(server.http("/api/v1/publish/batch"))
        .json(&json!({"messages": [{"channel": "a", "data": 1}, {"channel": 5, "data": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("messages[1]: "), "{message}");

    let mut ws = server.ws("/ws").await;
    let reply = command(
        &mut ws,
        json!({"id": 7, "cmd": "subscribe", "since": "garbage"}),
    )
    .await;
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");

    command(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channels": ["news", "a", "b"]}),
    )
    .await;
    let reply = command(
        &mut ws,
        json!({"id": 2, "cmd": "unsubscribe", "channel": "news"}),
    )
    .await;
    assert_eq!(reply["result"]["channels"], json!(["a", "b"]), "{reply}");
}

/// A deleted channel leaves the connection's subscriptions: it is no
/// longer listed, nor counted against the channel limit.
#[tokio::test]
async fn a_deleted_channel_leaves_the_subscription_list() {
    let server = TestServer::with(|c| c.limits.max_channels_per_connection = 2).await;
    let mut ws = server.ws("/ws?channels=gone,kept").await;
    server.publish(json!({"channel": "gone", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
    assert_eq!(server.delete_channel("gone").await.status(), 200);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "deleted", "channel": "gone"})
    );
    let reply = command(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channel": "new"}),
    )
    .await;
    assert_eq!(
        reply["result"]["channels"],
        json!(["kept", "new"]),
        "{reply}"
    );
}

/// `limits.max_message_size` holds `data` as delivered: indentation that
/// folding removes does not count.
#[tokio::test]
async fn the_size_limit_counts_data_as_delivered() {
    let server = TestServer::with(|c| c.limits.max_message_size = 1024).await;
    let client = reqwest::Client::new();
    let publish = |data: String| {
        client
            .post(server.http("/api/v1/publish"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"channel":"a","data":{data}}}"#))
            .send()
    };
    let indented = format!("[1,\n{}2]", " ".repeat(2000));
    assert_eq!(publish(indented).await.unwrap().status(), 200);
    let big = format!("\"{}\"", "x".repeat(1100));
    let res = publish(big).await.unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "message_too_large");
}

/// A stream's preamble carries its first id, which browsers keep without
/// dispatching an event: one that reconnects before any message arrived
/// still resumes, and gets what was published meanwhile.
#[tokio::test]
async fn an_sse_stream_resumes_from_before_its_first_message() {
    let server = TestServer::start().await;
    let url = server.http("/sse?channels=a,b");
    let mut sse = Sse::connect(&url).await;
    assert!(sse.next().await.unwrap().retry.is_some());
    let first = sse.next().await.unwrap();
    assert_eq!(first.data, None, "{first:?}");
    let id = first.id.expect("an id before any message");
    drop(sse);
    server
        .publish(json!({"channel": "b", "data": "while away"}))
        .await;
    let res = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", &id)
        .send()
        .await
        .unwrap();
    let mut sse = Sse::from_response(res);
    let ev = sse.next_data().await;
    let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["data"], "while away");
}
