//! Connection lifetimes, liveness, slow consumers and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn short_lifetime(c: &mut herald_server::Config) {
    c.connection.lifetime_min = Duration::from_millis(1500);
    c.connection.lifetime_max = Duration::from_millis(1500);
    c.connection.close_grace = Duration::from_millis(700);
}

#[tokio::test]
async fn native_ws_gets_reconnect_hint_then_close_at_lifetime() {
    let server = TestServer::with(short_lifetime).await;
    let start = Instant::now();
    let mut ws = server.ws("/ws?channels=a").await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "reconnect"}));
    let hinted = start.elapsed();
    let (code, _) = expect_close(&mut ws).await;
    let closed = start.elapsed();
    assert_eq!(code, 4200);
    assert!(hinted >= Duration::from_millis(700), "hint at {hinted:?}");
    assert!(
        closed - hinted >= Duration::from_millis(600),
        "grace {:?}",
        closed - hinted
    );
}

#[tokio::test]
async fn push_ws_and_sse_get_the_seed_reconnect_event() {
    let server = TestServer::with(short_lifetime).await;
    let mut ws = server.ws("/ws/messages?channels=a").await;
    assert_eq!(next_json(&mut ws).await["event"], "ping");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "reconnect", "data": {}})
    );
    assert_eq!(expect_close(&mut ws).await.0, 1000);

    let mut sse = Sse::connect(&server.http("/sse/messages?channels=a")).await;
    assert_eq!(
        sse.next().await.unwrap().event.as_deref(),
        Some("heartbeat")
    );
    let hint = sse.next().await.unwrap();
    assert_eq!(
        (hint.event.as_deref(), hint.data.as_deref()),
        (Some("reconnect"), Some("{}"))
    );
    assert!(
        sse.next().await.is_none(),
        "the stream ends at the lifetime"
    );
}

#[tokio::test]
async fn silent_native_client_is_closed_with_4201() {
    let server = TestServer::with(|c| c.connection.heartbeat = Duration::from_millis(150)).await;
    let mut raw = RawWs::connect(server.addr, "/ws?channels=a").await;
    let (opcode, _) = raw.frame().await.unwrap();
    assert_eq!(opcode, 9, "a WS ping");
    assert_eq!(
        raw.close_frame().await,
        (4201, "no pong to the last ping".into())
    );
}

#[tokio::test]
async fn frame_errors_close_with_standard_codes() {
    let server = TestServer::with(|c| c.limits.max_message_size = 1024).await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send(1, &[b'"', 0xff, 0xfe, b'"']).await;
    assert_eq!(raw.close_frame().await.0, 1007, "invalid UTF-8");

    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send(1, &vec![b' '; 4096]).await;
    assert_eq!(raw.close_frame().await.0, 1009, "too big");

    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send(2, b"\x00\x01").await;
    assert_eq!(
        raw.close_frame().await,
        (4000, "binary frames are not supported".into())
    );
    // The server is unaffected.
    let mut ws = server.ws("/ws?channels=a").await;
    server.publish(json!({"channel": "a", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
}

/// Publishes 8 KiB messages to `channel`, fifty at a time, until `slow`
/// slow consumers were counted; `caught_up` runs after each fifty with the
/// number published so far. Returns that number.
async fn publish_until_slow(
    server: &TestServer,
    channel: &str,
    slow: f64,
    caught_up: impl AsyncFnMut(usize),
) -> usize {
    let payload = "x".repeat(8 * 1024);
    flood_until_slow(
        server,
        slow,
        |client| {
            client
                .post(server.http("/api/v1/publish"))
                .json(&json!({"channel": channel, "data": payload}))
        },
        caught_up,
    )
    .await
}

/// [`publish_until_slow`] with any publish request.
async fn flood_until_slow(
    server: &TestServer,
    slow: f64,
    publish: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    mut caught_up: impl AsyncFnMut(usize),
) -> usize {
    let client = reqwest::Client::new();
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server
        .metric("herald_slow_consumer_disconnects_total")
        .await
        < slow
    {
        assert!(Instant::now() < deadline, "slow consumer never detected");
        for _ in 0..50 {
            let res = publish(&client).send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.status());
            published += 1;
        }
        caught_up(published).await;
    }
    published
}

/// Waits until no stream of either transport is open.
async fn until_all_closed(server: &TestServer) {
    let open = || async {
        server.metric("herald_connections{transport=\"ws\"}").await
            + server.metric("herald_connections{transport=\"sse\"}").await
    };
    let deadline = Instant::now() + WAIT;
    while open().await > 0.0 {
        assert!(Instant::now() < deadline, "a stuck client was never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slow_consumer_is_dropped_without_hurting_others() {
    let server = TestServer::with(|c| c.limits.outbox_bytes = 64 * 1024).await;
    let mut slow = RawWs::connect(server.addr, "/ws?channels=firehose").await;
    let mut fast = server.ws("/ws?channels=firehose").await;
    // The slow client reads nothing; once the kernel buffers fill, its
    // outbox overflows. The fast client reads everything.
    let mut received = 0;
    let published = publish_until_slow(&server, "firehose", 1.0, async |published| {
        while received < published {
            next_json(&mut fast).await;
            received += 1;
        }
    })
    .await;
    assert_eq!(received, published, "the fast client got every message");
    let (code, reason) = slow.close_frame().await;
    assert_eq!(
        (code, reason.as_str()),
        (4100, "slow consumer: too far behind")
    );
    assert!(server.metric("herald_messages_dropped_total").await >= 1.0);
}

/// Messages to a few subscribers are written straight from the publisher; the
/// connection's replies come from its task. Once the reader falls behind the
/// socket fills, some writes go in part and frames queue; every frame must
/// still arrive whole and in order, with the replies between them. (The exact
/// interleavings are pinned down by the unit tests of `outbox` and
/// `shared_socket`; this runs the whole path.)
#[tokio::test]
async fn frames_arrive_whole_and_in_order_when_the_socket_takes_them_in_part() {
    let server = TestServer::with(|c| c.limits.outbox_bytes = 64 << 20).await;
    // Smaller than one frame, so the unread bytes below overflow the
    // kernel's buffers.
    let stream = connect_with_small_buffer(server.addr).await;
    let url = format!("ws://{}/ws?channels=big", server.addr);
    let plain = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(url, plain).await.unwrap();
    let (mut commands, mut frames) = ws.split();
    let body = |i: usize| format!("{i:05}{}", "x".repeat(32 * 1024 + i));
    let (messages, pings) = (300, 15);
    let every = messages / pings;
    let http = server.http("/api/v1/publish");
    // The client starts reading once two thirds are published (about 7 MB,
    // more than the server's send buffer holds), then reads while the rest
    // are published, so the socket drains between writes.
    let (behind, caught_up) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(async move {
        let mut behind = Some(behind);
        let client = reqwest::Client::new();
        for i in 0..messages {
            let res = client
                .post(&http)
                .json(&json!({"channel": "big", "data": body(i)}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            if i == messages * 2 / 3 {
                behind.take().unwrap().send(()).unwrap();
            }
            if i % every == 0 {
                let ping = json!({"id": i, "cmd": "ping"}).to_string();
                commands.send(Message::text(ping)).await.unwrap();
            }
        }
    });
    caught_up.await.unwrap();
    let (mut next, mut replies) = (0, 0);
    while next < messages || replies < pings {
        let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("every frame well-formed");
        let Message::Text(text) = frame else { continue };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame.get("result").is_some() {
            assert_eq!(frame["id"], replies * every, "{frame}");
            replies += 1;
        } else {
            assert_eq!(frame["data"], body(next), "message {next} whole, in order");
            next += 1;
        }
    }
    publisher.await.unwrap();
}

/// An SSE stream that is its connection's first request owns its socket,
/// and is written straight from the publisher too. Its events carry ids
/// with every channel's position, laid out as they are written: when the
/// socket takes a batch only in part, the events it did not take must not
/// have moved the id of those before them.
#[tokio::test]
async fn sse_events_arrive_whole_in_order_and_with_their_ids_when_the_socket_takes_them_in_part() {
    let server = TestServer::with(|c| c.limits.outbox_bytes = 64 << 20).await;
    let stream = connect_with_small_buffer(server.addr).await;
    let request = "GET /sse?channels=pa,pb HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut sse = RawSse::open(stream, request).await;
    assert!(!sse.chunked, "the fast path served it: {}", sse.head);
    sse.event().await;
    // Small enough for a batch to hold many, so that a write the socket
    // takes in part leaves several behind.
    let body = |i: usize| format!("{i:05}{}", "x".repeat(3 * 1024 + i % 100));
    let messages = 3000;
    let http = server.http("/api/v1/publish");
    let (behind, caught_up) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(async move {
        let mut behind = Some(behind);
        let client = reqwest::Client::new();
        for i in 0..messages {
            let channel = if i % 2 == 0 { "pa" } else { "pb" };
            let res = client
                .post(&http)
                .json(&json!({"channel": channel, "data": body(i)}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            if i == messages * 2 / 3 {
                behind.take().unwrap().send(()).unwrap();
            }
        }
    });
    caught_up.await.unwrap();
    let offsets = |id: &str| -> Vec<u64> {
        id.split(',')
            .map(|entry| entry.rsplit(':').next().unwrap().parse().unwrap())
            .collect()
    };
    for i in 0..messages {
        let (id, data) = sse.message().await;
        assert_eq!(data, json!(body(i)), "message {i} whole, in order");
        let i = i as u64;
        let want = vec![i / 2 + 1, i.div_ceil(2)];
        assert_eq!(offsets(&id), want, "message {i}: id {id}");
    }
    publisher.await.unwrap();
}

/// An SSE stream on its own socket that stops reading is closed once its
/// outbox overflows; a stream that reads gets everything.
#[tokio::test]
async fn slow_sse_consumer_is_dropped_without_hurting_others() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::with(|c| c.limits.outbox_bytes = 64 * 1024).await;
    let stream = connect_with_small_buffer(server.addr).await;
    let request = "GET /sse?channels=hose HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut slow = RawSse::open(stream, request).await;
    slow.event().await;
    let mut fast = Sse::connect(&server.http("/sse?channels=hose")).await;
    fast.next().await.unwrap();
    let mut received = 0;
    let published = publish_until_slow(&server, "hose", 1.0, async |published| {
        while received < published {
            fast.next_data().await;
            received += 1;
        }
    })
    .await;
    assert_eq!(received, published, "the fast client got every message");
    // The slow stream ends: what it holds, then the close.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, slow.stream.read_to_end(&mut rest))
        .await
        .expect("the slow stream was closed")
        .unwrap();
}

/// A client that stops reading for good is closed once its outbox
/// overflows, on either transport, though its socket never takes another
/// byte: its connection is not held open until the client reads.
#[tokio::test]
async fn clients_that_stop_reading_are_closed_without_reading_again() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| c.limits.outbox_bytes = 64 * 1024).await;
    let mut ws = connect_with_small_buffer(server.addr).await;
    ws.write_all(
        b"GET /ws?channels=stuck HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let sse = RawSse::open(
        connect_with_small_buffer(server.addr).await,
        "GET /sse?channels=stuck HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    publish_until_slow(&server, "stuck", 2.0, async |_| {}).await;
    // Neither client reads; both connections must still end.
    until_all_closed(&server).await;
    drop((ws, sse));
}

/// Where the connection's own task writes every frame (behind hyper, on
/// push-stream's WebSocket), a client that stops reading leaves a write
/// waiting with nothing to race it: `server.write_timeout` ends it.
#[tokio::test]
async fn stuck_writes_end_their_connection_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| {
        c.limits.outbox_bytes = 64 * 1024;
        c.server.write_timeout = Duration::from_millis(300);
    })
    .await;
    // Hyper's SSE body: the stream is a keep-alive connection's second request.
    let mut second = connect_with_small_buffer(server.addr).await;
    second
        .write_all(
            b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /sse?channels=stuck HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    // The Push seed's SSE, a route's body from the first request on.
    let mut push = connect_with_small_buffer(server.addr).await;
    push.write_all(b"GET /sse/messages?channels=stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // push-stream's WebSocket, in its own namespace.
    let mut ps = connect_with_small_buffer(server.addr).await;
    ps.write_all(
        b"GET /ps/ws/stuck HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let until_open = async |transport: &str, n: f64| {
        let name = format!("herald_connections{{transport=\"{transport}\"}}");
        let deadline = Instant::now() + WAIT;
        while server.metric(&name).await < n {
            assert!(
                Instant::now() < deadline,
                "{transport} streams never opened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until_open("sse", 2.0).await;
    until_open("ws", 1.0).await;

    publish_until_slow(&server, "stuck", 2.0, async |_| {}).await;
    let payload = "y".repeat(8 * 1024);
    flood_until_slow(
        &server,
        3.0,
        |client| {
            client
                .post(server.http("/ps/pub?id=stuck"))
                .body(payload.clone())
        },
        async |_| {},
    )
    .await;
    // None of them reads; every connection must still end.
    until_all_closed(&server).await;
    drop((second, push, ps));
}

#[tokio::test]
async fn shutdown_sends_reconnect_hints_and_closes_with_1012() {
    let mut server = TestServer::start().await;
    let mut native = server.ws("/ws?channels=a").await;
    let mut push = server.ws("/ws/messages?channels=a").await;
    assert_eq!(next_json(&mut push).await["event"], "ping");
    let mut sse = Sse::connect(&server.http("/sse?channels=a")).await;
    sse.next().await.unwrap();
    assert!(
        sse.next().await.unwrap().id.is_some(),
        "the stream's first id"
    );
    let mut push_sse = Sse::connect(&server.http("/sse/messages?channels=a")).await;
    push_sse.next().await.unwrap();

    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?}",
        started.elapsed()
    );

    assert_eq!(next_json(&mut native).await, json!({"type": "reconnect"}));
    assert_eq!(expect_close(&mut native).await.0, 1012);
    assert_eq!(next_json(&mut push).await["event"], "reconnect");
    assert_eq!(expect_close(&mut push).await.0, 1012);
    assert_eq!(
        sse.next().await.unwrap().event.as_deref(),
        Some("reconnect")
    );
    assert!(sse.next().await.is_none());
    assert_eq!(
        push_sse.next().await.unwrap().event.as_deref(),
        Some("reconnect")
    );
    assert!(push_sse.next().await.is_none());
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_finishes_an_in_flight_publish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start().await;
    let mut ws = server.ws("/ws?channels=late").await;
    let body = br#"{"channel":"late","data":"made it"}"#;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // "100 Continue" means the handler is running and reading the body: the
    // publish is in flight.
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    server.shutdown.trigger();
    tcp.write_all(body).await.unwrap();
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\"offset\""),
        "a real publish reply: {response}"
    );
    // Subscribers were told to reconnect as shutdown began.
    assert_eq!(next_json(&mut ws).await, json!({"type": "reconnect"}));
    server.stop().await;
}

/// A client that stops reading once its socket is full, and is then sent
/// nothing more, overflows no outbox: its connection must still end, by the
/// heartbeat it cannot be sent, and not be held by the wait for room.
#[tokio::test]
async fn a_reader_that_stalls_is_closed_by_its_heartbeat_not_held_open() {
    let server = TestServer::with(|c| {
        c.limits.outbox_bytes = 64 << 20;
        c.connection.heartbeat = Duration::from_millis(200);
    })
    .await;
    let stream = connect_with_small_buffer(server.addr).await;
    let url = format!("ws://{}/ws?channels=stall", server.addr);
    let plain = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (_ws, _) = tokio_tungstenite::client_async(url, plain).await.unwrap();
    let stream = connect_with_small_buffer(server.addr).await;
    let request = "GET /sse?channels=stall HTTP/1.1\r\nHost: x\r\n\r\n";
    let sse = RawSse::open(stream, request).await;
    assert!(!sse.chunked, "the fast path served it: {}", sse.head);
    let open = async |transport: &str| {
        let name = format!("herald_connections{{transport=\"{transport}\"}}");
        server.metric(&name).await
    };
    assert_eq!((open("ws").await, open("sse").await), (1.0, 1.0));
    // About 12 MB, more than the kernel buffers hold, all of it within the
    // outbox; then nothing more.
    let data = "x".repeat(16 * 1024);
    for _ in 0..768 {
        server
            .publish(json!({"channel": "stall", "data": data}))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (open("ws").await, open("sse").await) != (0.0, 0.0) {
        assert!(Instant::now() < deadline, "a stalled connection was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
