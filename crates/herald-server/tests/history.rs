//! History, resume, the channel API and polling.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn server_keeping(size: usize) -> TestServer {
    TestServer::with(|c| keep_history(c, size)).await
}

async fn get_json(url: String) -> (u16, Value) {
    let res = reqwest::get(url).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn history_api_pages_by_offset() {
    let server = server_keeping(3).await;
    let mut epoch = Value::Null;
    for i in 1..=5 {
        let p = server.publish(json!({"channel": "hist", "data": i})).await;
        assert_eq!(p["offset"], i);
        epoch = p["epoch"].clone();
    }
    let (s, page) = get_json(server.http("/api/v1/channels/hist/history")).await;
    assert_eq!(s, 200);
    let data: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!(3), json!(4), json!(5)]);
    assert_eq!(page["position"], json!({"offset": 5, "epoch": epoch}));

    let (_, page) = get_json(server.http(&format!(
        "/api/v1/channels/hist/history?since=3&epoch={}&limit=1",
        epoch.as_str().unwrap()
    )))
    .await;
    assert_eq!(page["recovery"], "recovered");
    assert_eq!(page["messages"][0]["offset"], 4);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    let (_, page) = get_json(server.http(&format!(
        "/api/v1/channels/hist/history?since=1&epoch={}",
        epoch.as_str().unwrap()
    )))
    .await;
    assert_eq!(page["recovery"], "too_old");
    let (_, page) = get_json(server.http("/api/v1/channels/hist/history?since=4&epoch=nope")).await;
    assert_eq!(page["recovery"], "epoch_changed");
    let (s, _) = get_json(server.http("/api/v1/channels/hist/history?since=4")).await;
    assert_eq!(s, 400);
    let (s, v) = get_json(server.http("/api/v1/channels/unknown/history")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn websocket_resume_replays_then_goes_live() {
    let server = server_keeping(100).await;
    let mut epoch = String::new();
    for i in 1..=4 {
        epoch = server.publish(json!({"channel": "hroom", "data": i})).await["epoch"]
            .as_str()
            .unwrap()
            .into();
    }
    let mut ws = server.ws("/ws").await;
    let reply = command(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": "hroom", "since": {"offset": 2, "epoch": epoch}})).await;
    assert_eq!(reply["result"]["recovery"], "recovered", "{reply}");
    assert_eq!(reply["result"]["replayed"], 2);
    assert_eq!(reply["result"]["position"]["offset"], 4);
    assert_eq!(next_json(&mut ws).await["offset"], 3);
    assert_eq!(next_json(&mut ws).await["offset"], 4);
    server.publish(json!({"channel": "hroom", "data": 5})).await;
    assert_eq!(next_json(&mut ws).await["offset"], 5);

    let reply = command(&mut ws, json!({"id": 2, "cmd": "subscribe", "channel": "hother", "since": {"offset": 9, "epoch": "gone"}})).await;
    assert_eq!(reply["result"]["recovery"], "epoch_changed");
    let reply = command(&mut ws, json!({"id": 3, "cmd": "subscribe", "channels": ["ha", "hb"], "since": {"offset": 1, "epoch": "x"}})).await;
    assert_eq!(reply["error"]["code"], "bad_request");
}

/// A stream of `ha` and `hb` that got `a1` then `b1`, closed: its URL and
/// last event id.
#[tokio::test]
async fn a_plain_subscribe_tells_where_to_resume_before_any_message() {
    let server = server_keeping(10).await;
    server.publish(json!({"channel": "hq", "data": 1})).await;
    let mut ws = server.ws("/ws").await;
    let r = command(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channel": "hq"}),
    )
    .await;
    let position = r["result"]["positions"]["hq"].clone();
    assert_eq!(position["offset"], 1, "{r}");
    // The client drops before its first message; two are published meanwhile.
    drop(ws);
    for i in [2, 3] {
        server.publish(json!({"channel": "hq", "data": i})).await;
    }
    let mut ws = server.ws("/ws").await;
    let r = command(
        &mut ws,
        json!({"id": 2, "cmd": "subscribe", "channel": "hq", "since": position}),
    )
    .await;
    assert_eq!(
        (&r["result"]["recovery"], &r["result"]["replayed"]),
        (&json!("recovered"), &json!(2)),
        "{r}"
    );
    for i in [2, 3] {
        assert_eq!(next_json(&mut ws).await["data"], i);
    }
}

async fn a1_and_b1_seen(server: &TestServer) -> (String, String) {
    let url = server.http("/sse?channels=ha,hb");
    let mut sse = Sse::connect(&url).await;
    server.publish(json!({"channel": "ha", "data": "a1"})).await;
    server.publish(json!({"channel": "hb", "data": "b1"})).await;
    sse.next_data().await;
    let last_id = sse.next_data().await.id.unwrap();
    (url, last_id)
}

/// An SSE stream at `url` resumed from `last_event_id`.
async fn resume(url: &str, last_event_id: &str) -> Sse {
    let res = reqwest::Client::new()
        .get(url)
        .header("Last-Event-ID", last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    Sse::from_response(res)
}

#[tokio::test]
async fn sse_last_event_id_resumes_every_channel() {
    let server = server_keeping(100).await;
    let (url, last_id) = a1_and_b1_seen(&server).await;
    // Missed while away.
    for (ch, d) in [("ha", "a2"), ("hb", "b2"), ("ha", "a3")] {
        server.publish(json!({"channel": ch, "data": d})).await;
    }
    let mut sse = resume(&url, &last_id).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = sse.next_data().await;
        let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
        got.push(v["data"].as_str().unwrap().to_string());
    }
    let mut by_channel: Vec<String> = got.clone();
    by_channel.sort();
    assert_eq!(
        by_channel,
        ["a2", "a3", "b2"],
        "exactly the missed messages: {got:?}"
    );
    assert!(got.iter().position(|d| d == "a2") < got.iter().position(|d| d == "a3"));
}

/// Every id of a resumed stream is a place to resume from: a client that
/// drops after any replayed event, however often, still gets every message
/// once. (The first replayed event's id once claimed the other channels
/// caught up before their replay was sent.)
#[tokio::test]
async fn sse_resumes_from_any_replayed_event() {
    let server = server_keeping(100).await;
    let (url, mut last_id) = a1_and_b1_seen(&server).await;
    for (ch, d) in [("ha", "a2"), ("ha", "a3"), ("hb", "b2"), ("hb", "b3")] {
        server.publish(json!({"channel": ch, "data": d})).await;
    }
    // Take one event per connection, then drop it.
    let mut got = Vec::new();
    while got.len() < 4 {
        let ev = resume(&url, &last_id).await.next_data().await;
        let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
        got.push(v["data"].as_str().unwrap().to_string());
        last_id = ev.id.unwrap();
    }
    got.sort();
    assert_eq!(got, ["a2", "a3", "b2", "b3"]);
}

/// Many publishes race clients that keep disconnecting and resuming: every
/// message arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_under_concurrent_publishing_has_no_gaps_or_duplicates() {
    const N: u64 = 1500;
    let server = server_keeping(10_000).await;
    let first = server.publish(json!({"channel": "hrace", "data": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let url = server.http("/api/v1/publish");
    let publisher = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 1..=N {
            let res = client
                .post(&url)
                .json(&json!({"channel": "hrace", "data": i}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut last = 1u64; // offset 1 carried data 0
    let mut reconnects = 0;
    while last < N + 1 {
        let mut ws = server.ws("/ws").await;
        ws.send(Message::text(json!({"id": 1, "cmd": "subscribe", "channel": "hrace", "since": {"offset": last, "epoch": epoch}}).to_string())).await.unwrap();
        // Read a handful of messages (or the reply), then drop the connection.
        let mut read = 0;
        while read < 25 && last < N + 1 {
            let m = next_json(&mut ws).await;
            if m.get("result").is_some() {
                assert_eq!(m["result"]["recovery"], "recovered", "{m}");
                continue;
            }
            let offset = m["offset"].as_u64().unwrap();
            seen.push(offset);
            last = offset;
            read += 1;
        }
        reconnects += 1;
    }
    publisher.await.unwrap();
    let expected: Vec<u64> = (2..=N + 1).collect();
    assert_eq!(seen.len(), expected.len(), "after {reconnects} reconnects");
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    assert!(reconnects > 10);
}

#[tokio::test]
async fn channel_list_stats_and_delete() {
    let server = server_keeping(10).await;
    let mut ws = server.ws("/ws?channels=hdel,live").await;
    server.publish(json!({"channel": "hdel", "data": 1})).await;
    next_json(&mut ws).await;
    let (_, list) = get_json(server.http("/api/v1/channels")).await;
    let names: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hdel", "live"]);
    let (s, info) = get_json(server.http("/api/v1/channels/hdel")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            info["subscribers"].as_u64(),
            info["published"].as_u64(),
            info["stored"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );

    let res = server.delete_channel("hdel").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"deleted": true, "subscribers": 1})
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "deleted", "channel": "hdel"})
    );
    assert_eq!(server.delete_channel("hdel").await.status(), 404);
    // The subscriber no longer gets the deleted channel, but keeps the other.
    let p = server.publish(json!({"channel": "hdel", "data": 2})).await;
    assert_eq!(p["subscribers"], 0);
    server.publish(json!({"channel": "live", "data": 3})).await;
    assert_eq!(next_json(&mut ws).await["data"], 3);
}

#[tokio::test]
async fn polling_and_long_polling() {
    let server = server_keeping(100).await;
    server.publish(json!({"channel": "hpoll", "data": 1})).await;
    // A first poll starts from now: nothing, and a cursor.
    let (s, first) = get_json(server.http("/poll?channels=hpoll")).await;
    assert_eq!(s, 200);
    assert_eq!(first["messages"], json!([]));
    let cursor = first["cursor"].as_str().unwrap().to_string();
    server.publish(json!({"channel": "hpoll", "data": 2})).await;
    server.publish(json!({"channel": "hpoll", "data": 3})).await;
    let (_, next) = get_json(server.http(&format!("/poll?channels=hpoll&since={cursor}"))).await;
    let data: Vec<Value> = next["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!(2), json!(3)]);
    let cursor = next["cursor"].as_str().unwrap().to_string();
    assert!(cursor.ends_with(":3"), "{cursor}");

    // Long poll: waits until a message arrives.
    let url = server.http(&format!(
        "/poll?channels=hpoll&since={cursor}&timeout=10000"
    ));
    let waiting = tokio::spawn(async move { get_json(url).await });
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, info) = get_json(server.http("/api/v1/channels/hpoll")).await;
        if info["subscribers"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "long poll never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.publish(json!({"channel": "hpoll", "data": 4})).await;
    let (_, got) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(got["messages"][0]["data"], 4);

    // A long poll with nothing to say answers empty at its timeout.
    let started = std::time::Instant::now();
    let cursor = got["cursor"].as_str().unwrap();
    let (_, empty) =
        get_json(server.http(&format!("/poll?channels=hpoll&since={cursor}&timeout=300"))).await;
    assert_eq!(empty["messages"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (s, _) = get_json(server.http("/poll?channels=hpoll&since=garbage")).await;
    assert_eq!(s, 400);
}

/// `data` that is valid JSON but that no `serde_json::Value` can hold (a
/// number out of range, a lone surrogate, nesting past serde_json's limit)
/// is stored and served as sent, never parsed again: history and polls
/// once failed on it, for every later reader of the channel.
#[tokio::test]
async fn data_no_json_value_can_hold_is_served_as_sent() {
    let server = server_keeping(10).await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let sent = [
        "1e400".to_owned(),
        r#""\ud800""#.to_owned(),
        deep,
        // Spread over lines: folded onto one, keys in their order.
        "{\"z\": 1e400,\n\n \"a\": 12345678901234567890123}".to_owned(),
    ];
    let client = reqwest::Client::new();
    for data in &sent {
        let res = client
            .post(server.http("/api/v1/publish"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"channel":"hpoison","data":{data}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{data}");
    }
    let folded = r#"{"z":1e400,"a":12345678901234567890123}"#;
    let expected: Vec<&str> = vec![&sent[0], &sent[1], &sent[2], folded];
    let history = reqwest::get(server.http("/api/v1/channels/hpoison/history"))
        .await
        .unwrap();
    assert_eq!(history.status(), 200);
    let history = history.text().await.unwrap();
    let epoch = epoch_of(&history);
    let poll =
        reqwest::get(server.http(&format!("/poll?channels=hpoison&since=hpoison:{epoch}:0")))
            .await
            .unwrap();
    assert_eq!(poll.status(), 200);
    let poll = poll.text().await.unwrap();
    for body in [&history, &poll] {
        let mut rest = body.as_str();
        for data in &expected {
            let field = format!(r#""data":{data}"#);
            let at = rest
                .find(&field)
                .unwrap_or_else(|| panic!("{field} in {body}"));
            rest = &rest[at + field.len()..];
        }
    }
}

/// The epoch in a history page, read without parsing the page (it may
/// hold JSON no `Value` can).
fn epoch_of(page: &str) -> &str {
    let at = page.find(r#""epoch":""#).expect("an epoch") + r#""epoch":""#.len();
    &page[at..at + page[at..].find('"').unwrap()]
}

/// A channel named twice is one channel: replayed once, published once.
#[tokio::test]
async fn a_channel_named_twice_counts_once() {
    let server = server_keeping(10).await;
    let first = server
        .publish(json!({"channels": ["hdup", "hdup"], "data": 1}))
        .await;
    // One channel: answered as a publish to one is.
    assert_eq!(first["offset"], 1, "{first}");
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for i in 2..=3 {
        let p = server.publish(json!({"channel": "hdup", "data": i})).await;
        assert_eq!(p["offset"], i, "one offset per publish: {p}");
    }
    let (status, page) =
        get_json(server.http(&format!("/poll?channels=hdup,hdup&since=hdup:{epoch}:1"))).await;
    assert_eq!(status, 200, "{page}");
    let offsets: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["offset"])
        .collect();
    assert_eq!(offsets, [&json!(2), &json!(3)]);
    assert_eq!(page["cursor"], format!("hdup:{epoch}:3"));
}

/// A resume may replay more than a connection's outbox holds: the history
/// it asked for is not a slow consumer. (It was dropped as one, on every
/// transport, and reconnected into the same replay forever.)
#[tokio::test]
async fn a_replay_bigger_than_the_outbox_arrives_whole() {
    const MESSAGES: u64 = 30;
    let server = TestServer::with(|c| {
        c.limits.outbox_bytes = 64 * 1024;
        keep_history(c, 100);
    })
    .await;
    let payload = "x".repeat(8 * 1024);
    let mut epoch = String::new();
    for _ in 0..MESSAGES {
        let p = server
            .publish(json!({"channel": "hbig", "data": payload}))
            .await;
        epoch = p["epoch"].as_str().unwrap().to_owned();
    }
    // 240 KiB from offset 0, over each transport.
    let (status, page) =
        get_json(server.http(&format!("/poll?channels=hbig&since=hbig:{epoch}:0"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        MESSAGES as usize
    );
    assert_eq!(page["cursor"], format!("hbig:{epoch}:{MESSAGES}"));

    let mut sse = resume(
        &server.http("/sse?channels=hbig"),
        &format!("hbig:{epoch}:0"),
    )
    .await;
    for offset in 1..=MESSAGES {
        let ev = sse.next_data().await;
        assert_eq!(ev.id.unwrap(), format!("hbig:{epoch}:{offset}"));
    }

    let mut ws = server.ws("/ws").await;
    let reply = command(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": "hbig", "since": {"offset": 0, "epoch": epoch}})).await;
    assert_eq!(reply["result"]["replayed"], MESSAGES, "{reply}");
    for offset in 1..=MESSAGES {
        assert_eq!(next_json(&mut ws).await["offset"], offset);
    }
    assert_eq!(
        server
            .metric("herald_slow_consumer_disconnects_total")
            .await,
        0.0
    );
}

/// Polling a quiet channel goes on from its own cursor, poll after poll:
/// the channel outlives its last subscriber for a grace, and with it its
/// epoch. (Each poll once recreated it, and the next was told
/// `epoch_changed` with the first message of the new epoch unsent.)
#[tokio::test]
async fn polls_of_a_quiet_channel_resume_where_they_were() {
    let server = TestServer::start().await;
    let (_, first) = get_json(server.http("/poll?channels=quiet")).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let (_, second) = get_json(server.http(&format!("/poll?channels=quiet&since={cursor}"))).await;
    assert_eq!(second.get("recovery"), None, "{second}");
    assert_eq!(second["cursor"], cursor.as_str());
    server
        .publish(json!({"channel": "quiet", "data": "first"}))
        .await;
    let (_, third) = get_json(server.http(&format!("/poll?channels=quiet&since={cursor}"))).await;
    assert_eq!(third.get("recovery"), None, "{third}");
    assert_eq!(third["messages"][0]["data"], "first", "{third}");
}
