//! Many Herald processes as one, on a real Redis: cross-node fan-out,
//! cluster-wide counts, resume on another node, a Redis restart mid-stream.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Herald, WAIT, Ws, next_json, publish, publish_ok, ws};
use futures_util::{SinkExt, StreamExt};
use herald_testkit::redis::{RedisCluster, RedisServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "cluster-test-secret";

/// A config file for a node on `urls`, keeping history for `h*` channels.
fn config_file(urls: &[String]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "herald-cluster-{}-{}.toml",
        std::process::id(),
        rand_suffix()
    ));
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "[broker]\nkind = \"redis\"\n[broker.redis]\nurls = [{}]\n\
             [auth]\nsecret = \"{SECRET}\"\nreceiver_secret = \"{SECRET}-receivers\"\n\
             [[history.rules]]\npattern = \"h*\"\nsize = 10000\nttl = \"10m\"\n",
            urls.join(", ")
        ),
    )
    .unwrap();
    path
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `n` nodes on one Redis deployment. The first runs on one core, so on one
/// thread: every cluster test covers both of Herald's runtimes.
fn nodes(urls: &[String], n: usize) -> Vec<Herald> {
    nodes_with(urls, n, &[])
}

/// [`nodes`], with `extra` settings in the environment.
fn nodes_with(urls: &[String], n: usize, extra: &[(&str, &str)]) -> Vec<Herald> {
    let file = config_file(urls);
    let file = file.to_str().unwrap().to_owned();
    let mut env = vec![("HERALD_CONFIG", file.as_str())];
    env.extend_from_slice(extra);
    (0..n)
        .map(|i| match i {
            0 => Herald::start_on_one_core(&env),
            _ => Herald::start(&env),
        })
        .collect()
}

/// POSTs `body` to `path` on the node at `addr` in a task of its own (a
/// send that waits for an ack): its status, once answered.
fn post_in_background(addr: &str, path: &str, body: Value) -> tokio::task::JoinHandle<u16> {
    let url = format!("http://{addr}{path}");
    tokio::spawn(async move {
        let res = reqwest::Client::new().post(url).json(&body).send().await;
        res.unwrap().status().as_u16()
    })
}

/// Acknowledges `message_id` over `ws` and waits for the reply.
async fn ack(ws: &mut Ws, message_id: &str) {
    let cmd = json!({"id": "ack", "cmd": "ack", "message_id": message_id});
    ws.send(Message::text(cmd.to_string())).await.unwrap();
    assert_eq!(next_json(ws).await["id"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_fan_out_and_cluster_wide_counts() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    let mut on_b = ws(&n[1], "/ws?channels=news").await;
    let mut on_c = ws(&n[2], "/ws?channels=news").await;
    let mut seed_c = ws(&n[2], "/ws/messages?channels=news").await;
    assert_eq!(next_json(&mut seed_c).await["event"], "ping");

    let p = publish_ok(&n[0], "news", json!({"n": 1})).await;
    for sub in [&mut on_b, &mut on_c] {
        let m = next_json(sub).await;
        assert_eq!(
            (m["data"].clone(), m["offset"].clone(), m["epoch"].clone()),
            (json!({"n": 1}), p["offset"].clone(), p["epoch"].clone())
        );
    }
    assert_eq!(
        next_json(&mut seed_c).await["data"]["message"],
        r#"{"n":1}"#
    );

    // The Push seed's count covers every node (counts settle within a second).
    until(|| async {
        let res = reqwest::Client::new()
            .post(format!("http://{}/messages", n[0].addr))
            .json(&json!({"channel": "news", "message": "count me"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let count: Value = res.json().await.unwrap();
        (count == json!({"subscribers": 3}))
            .then_some(())
            .ok_or(format!("count {count}"))
    })
    .await;
}

async fn get_json(node: &Herald, path: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!("http://{}{}", node.addr, path))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Retries `attempt` every 100 ms until it succeeds, within [`WAIT`]: for
/// what settles across nodes (counts within a second, the identity registry
/// within 250 ms). An error describes the last attempt.
async fn until<T, F: std::future::Future<Output = Result<T, String>>>(
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(last) => assert!(Instant::now() < deadline, "gave up; last: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `path` on `node` until it answers 200 with JSON `done` holds for.
async fn get_until(node: &Herald, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    until(|| async {
        let (status, body) = get_json(node, path).await;
        (status == 200 && done(&body))
            .then(|| body.clone())
            .ok_or(format!("{path}: {status} {body}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_lists_stats_and_push_stream_delete_cover_the_cluster() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    let mut on_b = ws(&n[1], "/ws?channels=hlist").await;
    let mut on_c = ws(&n[2], "/ws?channels=hlist").await;
    publish_ok(&n[0], "hlist", json!(1)).await;
    publish_ok(&n[0], "hquiet", json!(2)).await;
    publish_ok(&n[0], "hquiet", json!(3)).await;
    for sub in [&mut on_b, &mut on_c] {
        assert_eq!(next_json(sub).await["data"], json!(1));
    }

    // Node A has no subscriber and no local state of its own, yet lists both
    // channels with the cluster's counts.
    let listed = get_until(&n[0], "/api/v1/channels", |b| {
        b["channels"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c[0]["subscribers"] == 2)
    })
    .await;
    let c = &listed["channels"];
    assert_eq!(
        (&c[0]["channel"], &c[0]["published"], &c[0]["stored"]),
        (&json!("hlist"), &json!(1), &json!(1))
    );
    assert_eq!(
        (&c[1]["channel"], &c[1]["subscribers"], &c[1]["published"]),
        (&json!("hquiet"), &json!(0), &json!(2))
    );
    let (status, one) = get_json(&n[0], "/api/v1/channels/hlist").await;
    assert_eq!((status, &one["subscribers"]), (200, &json!(2)));

    // Push-stream's stats, on a node with none of the subscribers.
    let ps = get_until(&n[0], "/ps/channels-stats?id=ALL", |_| true).await;
    assert_eq!(ps["channels"], 2);
    let summary = get_until(&n[0], "/ps/channels-stats", |_| true).await;
    assert_eq!(
        (
            &summary["channels"],
            &summary["subscribers"],
            &summary["published_messages"]
        ),
        (&json!(2), &json!(2), &json!(3))
    );

    // Deleting through push-stream on A reaches the subscribers on B and C.
    let res = reqwest::Client::new()
        .delete(format!("http://{}/ps/pub?id=hlist", n[0].addr))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for sub in [&mut on_b, &mut on_c] {
        let m = next_json(sub).await;
        assert_eq!(
            (&m["type"], &m["channel"]),
            (&json!("deleted"), &json!("hlist"))
        );
    }
    // Gone everywhere, once a count written just before the delete expires.
    until(|| async {
        let (status, body) = get_json(&n[2], "/api/v1/channels/hlist").await;
        (status == 404)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    let listed = get_until(&n[1], "/api/v1/channels", |_| true).await;
    assert_eq!(listed["channels"].as_array().unwrap().len(), 1);
}

/// How many nodes listen to `channel` (of app `default`) in Redis, as
/// `PUBSUB NUMSUB` answers it (`:N`).
fn numsub(redis: &RedisServer, channel: &str) -> String {
    let name = format!("herald:{{default/{channel}}}");
    let reply = herald_testkit::redis::command(redis.port, &["PUBSUB", "NUMSUB", &name]);
    let reply = reply.unwrap_or_default();
    reply.rsplit("\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_channel_releases_every_nodes_subscription() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    let mut on_b = ws(&n[1], "/ws?channels=gone").await;
    let mut on_c = ws(&n[2], "/ws?channels=gone").await;
    assert_eq!(numsub(&redis, "gone"), ":2");

    // B deletes (its own notice comes back through Redis); C hears of it.
    let res = reqwest::Client::new()
        .delete(format!("http://{}/api/v1/channels/gone", n[1].addr))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for sub in [&mut on_b, &mut on_c] {
        assert_eq!(next_json(sub).await["type"], "deleted");
        sub.close(None).await.unwrap();
    }
    // Neither node keeps listening once its lazy unsubscribe is due (1 s).
    until(|| async {
        let left = numsub(&redis, "gone");
        (left == ":0").then_some(()).ok_or(left)
    })
    .await;

    // The channel can be subscribed again.
    let mut again = ws(&n[2], "/ws?channels=gone").await;
    assert_eq!(numsub(&redis, "gone"), ":1");
    publish_ok(&n[0], "gone", json!("back")).await;
    assert_eq!(next_json(&mut again).await["data"], "back");
}

/// A delete reaches another node's subscribers after every message
/// published before it, however many that node still has to fan out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_does_not_overtake_the_messages_before_it() {
    const MESSAGES: usize = 1_000;
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 2);
    let mut watched = ws(&n[0], "/ws?channels=busy").await;
    assert_eq!(numsub(&redis, "busy"), ":1");
    // The watched node is paused while the messages and the delete are
    // published: on resuming it reads them all from its Redis connection
    // at once, the delete right behind the messages.
    let pid = n[0].child.id().to_string();
    signal(&pid, "STOP");
    let batch: Vec<Value> = (0..MESSAGES)
        .map(|i| json!({"channel": "busy", "data": i}))
        .collect();
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://{}/api/v1/publish/batch", n[1].addr))
        .json(&json!({ "messages": batch }))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let deleted = client
        .delete(format!("http://{}/api/v1/channels/busy", n[1].addr))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    signal(&pid, "CONT");
    assert_eq!(
        (res.status().as_u16(), deleted.status().as_u16()),
        (200, 200)
    );
    for i in 0..MESSAGES {
        let frame = next_json(&mut watched).await;
        assert_eq!(frame["data"], i, "message {i} before the delete: {frame}");
    }
    assert_eq!(next_json(&mut watched).await["type"], "deleted");
}

/// The process id of the Redis server on `port`.
fn redis_pid(port: u16) -> String {
    let info = herald_testkit::redis::command(port, &["INFO", "server"]).unwrap();
    let pid = info.lines().find_map(|l| l.strip_prefix("process_id:"));
    pid.unwrap().trim().to_owned()
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `node`'s readiness until it answers `status`.
async fn ready_until(node: &Herald, status: u16) {
    until(|| async {
        let (got, _) = get_json(node, "/health/ready").await;
        (got == status).then_some(()).ok_or(format!("ready {got}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscriber_waits_for_the_first_ones_redis_subscribe() {
    let redis = RedisServer::start();
    // No history, so nothing but the subscribe waits on Redis; a long
    // timeout keeps the first subscriber's SUBSCRIBE in flight.
    let n = nodes_with(
        &[redis.url()],
        2,
        &[
            ("HERALD_PUSHSTREAM__STORE_MESSAGES", "false"),
            ("HERALD_BROKER__REDIS__TIMEOUT_MS", "3000"),
        ],
    );
    ready_until(&n[1], 200).await;
    let pid = redis_pid(redis.port);
    signal(&pid, "STOP");
    let connect = |node: &Herald| {
        let url = format!("ws://{}/ws?channels=stall", node.addr);
        tokio::spawn(async move { tokio_tungstenite::connect_async(url).await })
    };
    // The first subscriber's SUBSCRIBE hangs while Redis is stopped.
    let first = connect(&n[1]);
    // No signal tells when it reached the hub: it takes milliseconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = connect(&n[1]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Told subscribed now, the second would miss what is published before
    // the node listens.
    assert!(
        !second.is_finished(),
        "the second waits for the first's SUBSCRIBE"
    );
    assert!(!first.is_finished());
    signal(&pid, "CONT");
    let (mut first, _) = first.await.unwrap().unwrap();
    let (mut second, _) = second.await.unwrap().unwrap();
    let res = publish(&n[0], "stall", json!("after")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(next_json(&mut first).await["data"], "after");
    assert_eq!(next_json(&mut second).await["data"], "after");
    assert_eq!(numsub(&redis, "stall"), ":1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_never_answered_is_outcome_unknown_not_unavailable() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 1);
    // Loads the publish script, so a later EVALSHA needs no second round.
    publish_ok(&n[0], "hmaybe", json!("before")).await;
    let pid = redis_pid(redis.port);
    signal(&pid, "STOP");

    // Sent while the node still takes Redis for alive: the script is written,
    // the answer never comes.
    let res = publish(&n[0], "hmaybe", json!("maybe")).await;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (504, &json!("outcome_unknown")),
        "{body}"
    );
    // Once the node knows, publishes never reach Redis.
    ready_until(&n[0], 503).await;
    let res = publish(&n[0], "hmaybe", json!("never")).await;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("unavailable")),
        "{body}"
    );
    // The broker's own words (addresses, script errors) stay in the log.
    assert_eq!(
        body["error"]["message"],
        "the broker is unavailable; try again later"
    );

    // Redis runs the unanswered script when it resumes; the other never ran.
    signal(&pid, "CONT");
    ready_until(&n[0], 200).await;
    let page = get_until(&n[0], "/api/v1/channels/hmaybe/history", |_| true).await;
    let stored: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(stored, [&json!("before"), &json!("maybe")], "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_message_redis_never_answered_is_outcome_unknown() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 2);
    // An SSE receiver on B; its key lets an ack for it go through A.
    let url = format!("http://{}/sse?token={}", n[1].addr, token("gil", json!({})));
    let res = reqwest::get(url).await.unwrap();
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let receiver = loop {
        if let Some(at) = buf.find("\"receiver\":\"") {
            let rest = &buf[at + 12..];
            if let Some(end) = rest.find('"') {
                break rest[..end].to_owned();
            }
        }
        let chunk = tokio::time::timeout(WAIT, body.next()).await.unwrap();
        buf.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    };
    let ack = async || {
        let res = reqwest::Client::new()
            .post(format!("http://{}/api/v1/ack", n[0].addr))
            .json(&json!({"receiver": receiver, "id": "g-1"}))
            .timeout(WAIT)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    };
    assert_eq!(ack().await, (200, json!({"acked": false})));
    let pid = redis_pid(redis.port);
    signal(&pid, "STOP");

    // A's request to B is in Redis' socket; Redis may deliver it on resuming.
    let (status, body) = ack().await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (504, &json!("outcome_unknown")),
        "{body}"
    );
    // Once A knows, nothing is sent.
    ready_until(&n[0], 503).await;
    let (status, body) = ack().await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("unavailable")),
        "{body}"
    );
    signal(&pid, "CONT");
}

/// A push-api request with its default credentials.
async fn push_api(node: &Herald, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .request(
            method,
            format!("http://{}/push-api/api/v1{path}", node.addr),
        )
        .basic_auth("app", Some("abc123"))
        .body(body.to_owned())
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_api_channel_records_are_shared_by_every_node() {
    use reqwest::Method;
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    let (status, _) = push_api(&n[0], Method::POST, "/channels", r#"{"id":"rec","ttl":0}"#).await;
    assert_eq!(status, 201);
    let (status, listed) = push_api(&n[1], Method::GET, "/channels", "").await;
    assert_eq!(
        (status, &listed[0]["id"], &listed[0]["ttl"]),
        (200, &json!("rec"), &json!(0))
    );
    let (status, dup) = push_api(&n[2], Method::POST, "/channels", r#"{"id":"rec","ttl":9}"#).await;
    assert_eq!((status, &dup["code"]), (400, &json!(11)));
    let (status, _) = push_api(&n[2], Method::DELETE, "/channels/rec", "").await;
    assert_eq!(status, 204);
    let (status, gone) = push_api(&n[0], Method::GET, "/channels/rec", "").await;
    assert_eq!((status, &gone["code"]), (404, &json!(20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_api_refuses_a_ttl_redis_cannot_hold_and_tells_a_failed_publish() {
    use reqwest::Method;
    let mut redis = RedisServer::start();
    let n = nodes(&[redis.url()], 1);
    let huge = r#"{"id":"far","ttl":10000000000000000}"#;
    let (status, refused) = push_api(&n[0], Method::POST, "/channels", huge).await;
    assert_eq!((status, &refused["code"]), (400, &json!(10)));
    let longest = r#"{"id":"far","ttl":9223372036}"#;
    let (status, _) = push_api(&n[0], Method::POST, "/channels", longest).await;
    assert_eq!(status, 201);
    let (status, listed) = push_api(&n[0], Method::GET, "/channels", "").await;
    assert_eq!((status, &listed[0]["ttl"]), (200, &json!(9223372036_i64)));

    let message = r#"{"channels":["news"],"content":"hello"}"#;
    assert_eq!(
        push_api(&n[0], Method::POST, "/messages", message).await.0,
        204
    );
    redis.kill();
    let (status, failed) = push_api(&n[0], Method::POST, "/messages", message).await;
    assert_eq!((status, &failed["code"]), (500, &json!(101)));
}

/// `authorized_channels_only` lets a subscriber in where messages are
/// stored anywhere in the cluster, not only where they were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stream_authorized_channels_count_the_clusters_messages() {
    let redis = RedisServer::start();
    let n = nodes_with(
        &[redis.url()],
        2,
        &[("HERALD_PUSHSTREAM__AUTHORIZED_CHANNELS_ONLY", "true")],
    );
    let sub = async |node: &Herald, channel: &str| {
        reqwest::Client::new()
            .get(format!("http://{}/ps/sub/{channel}.b1", node.addr))
            .timeout(WAIT)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(
        sub(&n[1], "hauth").await.status(),
        403,
        "nothing stored yet"
    );
    let posted = reqwest::Client::new()
        .post(format!("http://{}/ps/pub?id=hauth", n[0].addr))
        .body("stored")
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let mut res = sub(&n[1], "hauth").await;
    assert_eq!(res.status(), 200);
    let first = tokio::time::timeout(WAIT, res.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.is_some_and(|c| String::from_utf8_lossy(&c).contains("stored")),
        "the stored message is replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stream_events_tell_a_new_channel_once_across_nodes() {
    let redis = RedisServer::start();
    let file = config_file(&[redis.url()]);
    let env = [
        ("HERALD_CONFIG", file.to_str().unwrap()),
        ("HERALD_PUSHSTREAM__EVENTS_CHANNEL_ID", "events"),
    ];
    let n: Vec<Herald> = (0..3).map(|_| Herald::start(&env)).collect();
    let mut events = ws(&n[1], "/ws?channels=events").await;
    let event = async |events: &mut Ws| -> Value {
        let m = next_json(events).await;
        serde_json::from_str(m["data"].as_str().unwrap()).unwrap()
    };
    let post = |node: &Herald| {
        reqwest::Client::new()
            .post(format!("http://{}/ps/pub?id=hfresh", node.addr))
            .body("hello")
            .timeout(WAIT)
            .send()
    };
    assert_eq!(post(&n[0]).await.unwrap().status(), 200);
    assert_eq!(
        event(&mut events).await,
        json!({"type": "channel_created", "channel": "hfresh"})
    );
    // The channel exists in Redis now: a subscriber on another node joins
    // it without a second channel_created.
    let _sub = ws(&n[2], "/ps/ws/hfresh").await;
    assert_eq!(
        event(&mut events).await,
        json!({"type": "client_subscribed", "channel": "hfresh"})
    );
    assert_eq!(post(&n[2]).await.unwrap().status(), 200);
    // A marker: nothing about hfresh came before it.
    assert_eq!(post_marker(&n[0]).await, 200);
    assert_eq!(
        event(&mut events).await,
        json!({"type": "channel_created", "channel": "hmarker"})
    );
}

async fn post_marker(node: &Herald) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}/ps/pub?id=hmarker", node.addr))
        .body("m")
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_a_dead_node_resumes_on_another() {
    let redis = RedisServer::start();
    let mut n = nodes(&[redis.url()], 3);
    let mut first = ws(&n[0], "/ws?channels=hbook").await;
    let mut last = Value::Null;
    for i in 1..=3 {
        publish_ok(&n[2], "hbook", json!(i)).await;
        last = next_json(&mut first).await;
        assert_eq!(last["data"], i);
    }
    // Node A dies; its client goes elsewhere.
    n[0].child.kill().unwrap();
    n[0].child.wait().unwrap();
    assert!(
        tokio::time::timeout(WAIT, first.next())
            .await
            .unwrap()
            .is_none_or(|r| r.is_err())
    );
    for i in 4..=8 {
        publish_ok(&n[2], "hbook", json!(i)).await;
    }
    // Node B never had a subscriber on this channel: history comes from Redis.
    let mut again = ws(&n[1], "/ws").await;
    let since = json!({"offset": last["offset"], "epoch": last["epoch"]});
    again
        .send(Message::text(
            json!({"id": 1, "cmd": "subscribe", "channel": "hbook", "since": since}).to_string(),
        ))
        .await
        .unwrap();
    let reply = next_json(&mut again).await;
    assert_eq!(reply["result"]["recovery"], "recovered", "{reply}");
    assert_eq!(reply["result"]["replayed"], 5);
    for i in 4..=8 {
        assert_eq!(next_json(&mut again).await["data"], i);
    }
    publish_ok(&n[2], "hbook", json!(9)).await;
    assert_eq!(
        next_json(&mut again).await["data"],
        9,
        "then live, from another node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_loses_nothing_on_history_channels() {
    const N: u64 = 300;
    let mut redis = RedisServer::start_with(
        herald_testkit::redis::free_port(),
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let n = nodes(&[redis.url()], 2);
    let mut sub = ws(&n[1], "/ws?channels=hstream").await;
    let client = reqwest::Client::new();
    let mut acked: Vec<u64> = Vec::new();
    let mut saw_unready = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 1..=N {
        if i == N / 3 {
            redis.kill();
            // While Redis is down, publishes fail fast with 503 and readiness is false.
            let res = publish(&n[0], "hstream", json!("lost?")).await;
            assert_eq!(res.status(), 503);
            let ready = client
                .get(format!("http://{}/health/ready", n[0].addr))
                .send()
                .await
                .unwrap();
            saw_unready = ready.status() == 503;
            redis.restart();
        }
        loop {
            assert!(Instant::now() < deadline, "publishing never recovered");
            let res = publish(&n[0], "hstream", json!(i)).await;
            if res.status() == 200 {
                let body: Value = res.json().await.unwrap();
                acked.push(body["offset"].as_u64().unwrap());
                break;
            }
            assert_eq!(res.status(), 503, "only 'unavailable' while Redis restarts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(saw_unready, "readiness turned false while Redis was down");
    let mut got: Vec<u64> = Vec::new();
    while got.len() < acked.len() {
        let m = next_json(&mut sub).await;
        got.push(m["data"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (1..=N).collect();
    assert_eq!(got, expected, "every acknowledged message, once, in order");
    assert!(
        acked.windows(2).all(|w| w[1] == w[0] + 1),
        "offsets survive the restart: {acked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_with_sharded_pubsub() {
    let cluster = RedisCluster::start();
    let n = nodes(&cluster.urls(), 3);
    // Enough channels to land on every master.
    let channels: Vec<String> = (0..12).map(|i| format!("hroom{i}")).collect();
    let mut subs = Vec::new();
    for ch in &channels {
        subs.push(ws(&n[(subs.len() % 2) + 1], &format!("/ws?channels={ch}")).await);
    }
    for (ch, sub) in channels.iter().zip(subs.iter_mut()) {
        let p = publish_ok(&n[0], ch, json!(ch)).await;
        let m = next_json(sub).await;
        assert_eq!(
            (m["data"].as_str(), m["offset"].clone()),
            (Some(ch.as_str()), p["offset"].clone())
        );
    }
    // Resume from history on another node works on the cluster too.
    let p = publish_ok(&n[2], "hroom0", json!("again")).await;
    let mut late = ws(&n[0], "/ws").await;
    let since = json!({"offset": p["offset"].as_u64().unwrap() - 1, "epoch": p["epoch"]});
    late.send(Message::text(
        json!({"id": 1, "cmd": "subscribe", "channel": "hroom0", "since": since}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut late).await["result"]["replayed"], 1);
    assert_eq!(next_json(&mut late).await["data"], "again");

    // Listing scans every master.
    let listed = get_until(&n[0], "/api/v1/channels", |b| {
        b["channels"].as_array().is_some_and(|c| c.len() == 12)
    })
    .await;
    let mut names: Vec<&str> = listed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<&str> = channels.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(names, want);
}

/// The code of the close frame `ws` gets next, skipping other frames;
/// fails if the connection ends without one.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(close))) => return close.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// A connection token for user `sub` with `labels`.
fn token(sub: &str, labels: Value) -> String {
    let exp = herald_testkit::token::unix_now() + 600;
    herald_testkit::token::hs256(SECRET, &json!({"sub": sub, "labels": labels, "exp": exp}))
}

async fn send(node: &Herald, body: Value) -> (u16, Value) {
    post(node, "/api/v1/send", body).await
}

/// POSTs JSON `body` to `path` on `node`: the status and the JSON answer.
async fn post(node: &Herald, path: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("http://{}{path}", node.addr))
        .json(&body)
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// Sends until the registry (synced every 250 ms) shows `want` matches.
async fn send_until_matched(node: &Herald, body: Value, want: u64) -> Value {
    until(|| async {
        let (status, reply) = send(node, body.clone()).await;
        (status == 200 && reply["matched"] == want)
            .then(|| reply.clone())
            .ok_or(format!("matched {want}? {status} {reply}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_leaves_no_counts_or_registrations_behind() {
    let redis = RedisServer::start();
    let mut n = nodes(&[redis.url()], 2);
    let path = format!("/ws?channels=cnt&token={}", token("jan", json!({})));
    let _first = ws(&n[1], &path).await;
    let _second = ws(&n[1], &path).await;
    let redis_cmd = |args: &[&str]| herald_testkit::redis::command(redis.port, args);
    // B's count reached Redis (the channel has a position, so it is listed
    // without subscribers too) and B is in the registry.
    until(|| async {
        let p = publish_ok(&n[0], "cnt", json!("x")).await;
        (p["subscribers"] == 2).then_some(()).ok_or(p.to_string())
    })
    .await;
    let b_id = until(|| async {
        let members = redis_cmd(&["SMEMBERS", "herald:{ident}:nodes"]).unwrap_or_default();
        let id = members.lines().nth(2).map(str::to_owned);
        id.ok_or(format!("B not registered: {members:?}"))
    })
    .await;
    let node_key = format!("herald:node:{{{b_id}}}");
    assert_eq!(redis_cmd(&["EXISTS", &node_key]).as_deref(), Some(":1"));

    // Once B exits after SIGTERM, nothing of it is left to expire.
    assert!(n[1].terminate().success());
    let (status, stats) = get_json(&n[0], "/api/v1/channels/cnt").await;
    assert_eq!((status, &stats["subscribers"]), (200, &json!(0)), "{stats}");
    assert_eq!(redis_cmd(&["EXISTS", &node_key]).as_deref(), Some(":0"));
    let registered = redis_cmd(&["SISMEMBER", "herald:{ident}:nodes", &b_id]);
    assert_eq!(registered.as_deref(), Some(":0"));
    let jan = redis_cmd(&["EXISTS", "herald:{ident}:d:4=userjan"]);
    assert_eq!(jan.as_deref(), Some(":0"));

    // A Redis that does not answer holds a shutdown up for `timeout_ms` (1 s)
    // at most.
    let pid = redis_pid(redis.port);
    signal(&pid, "STOP");
    let started = Instant::now();
    assert!(n[0].terminate().success());
    signal(&pid, "CONT");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_leaves_the_identity_registry() {
    let redis = RedisServer::start();
    let mut n = nodes(&[redis.url()], 3);
    let carol = format!("/ws?token={}", token("carol", json!({})));
    let _on_b = ws(&n[1], &carol).await;
    let _on_c = ws(&n[2], &carol).await;
    let dave = format!("/ws?token={}", token("dave", json!({})));
    let _dave_on_c = ws(&n[2], &dave).await;
    let body = json!({"filter": {"user": "carol"}, "data": "x"});
    send_until_matched(&n[0], body.clone(), 2).await;
    send_until_matched(&n[0], json!({"filter": {"user": "dave"}, "data": "x"}), 1).await;
    let registered = || {
        let reply = herald_testkit::redis::command(redis.port, &["SCARD", "herald:{ident}:nodes"]);
        reply.unwrap_or_default()
    };
    // Both registered (a node that a loaded machine let lapse for a moment
    // registers again within a sync tick).
    until(|| async {
        let now = registered();
        (now == ":2").then_some(()).ok_or(now)
    })
    .await;

    // C dies without a goodbye: once its liveness key lapses, senders stop
    // counting it and drop it from the registry.
    n[2].child.kill().unwrap();
    n[2].child.wait().unwrap();
    until(|| async {
        let (status, reply) = send(&n[0], body.clone()).await;
        let left = registered();
        (status == 200 && reply["matched"] == 1 && left == ":1")
            .then_some(())
            .ok_or(format!("{status} {reply}, registered {left}"))
    })
    .await;
    // Every set C wrote itself to went with it, not only carol's: nobody
    // sends to dave, and his set would hold the dead node for good.
    let dave_set =
        herald_testkit::redis::command(redis.port, &["EXISTS", "herald:{ident}:d:4=userdave"]);
    assert_eq!(dave_set.as_deref(), Some(":0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgotten_while_alive_registers_again() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 2);
    let erin = format!("/ws?token={}", token("erin", json!({})));
    let _on_b = ws(&n[1], &erin).await;
    let body = json!({"filter": {"user": "erin"}, "data": "x"});
    send_until_matched(&n[0], body.clone(), 1).await;
    let redis_cmd = |args: &[&str]| herald_testkit::redis::command(redis.port, args);
    let members = redis_cmd(&["SMEMBERS", "herald:{ident}:nodes"]).unwrap();
    let b_id = members.lines().last().unwrap().to_owned();
    assert_eq!(members, format!("*1\r\n${}\r\n{b_id}", b_id.len()));

    // B's liveness key lapses (as when B is paused past its TTL): A's next
    // send takes B for dead and removes it from the registry. B refreshes
    // its key every second, so repeat until a send saw it gone.
    let node_key = format!("herald:node:{{{b_id}}}");
    until(|| async {
        redis_cmd(&["DEL", &node_key]);
        let (status, reply) = send(&n[0], body.clone()).await;
        (status == 200 && reply["matched"] == 0)
            .then_some(())
            .ok_or(format!("not forgotten yet: {status} {reply}"))
    })
    .await;

    // B is alive and still has erin: it must become findable again.
    send_until_matched(&n[0], body.clone(), 1).await;
    assert_eq!(
        redis_cmd(&["SISMEMBER", "herald:{ident}:nodes", &b_id]).as_deref(),
        Some(":1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_receiver_acks_through_any_node() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    // Dave listens over SSE on B; the sender is on A; the ack goes to C.
    let url = format!(
        "http://{}/sse?token={}",
        n[1].addr,
        token("dave", json!({}))
    );
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut next_data = async move || loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                return serde_json::from_str::<Value>(data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    };
    let receiver = next_data().await["receiver"].as_str().unwrap().to_owned();
    send_until_matched(
        &n[0],
        json!({"filter": {"user": "dave"}, "data": "warmup"}),
        1,
    )
    .await;
    // Warm-up attempts may have arrived several times: drain to a marker.
    let (_, r) = send(&n[0], json!({"filter": {"user": "dave"}, "data": "synced"})).await;
    assert_eq!(r["delivered"], 1);
    while next_data().await["data"] != "synced" {}

    let a = n[0].addr.clone();
    let sender = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(format!("http://{a}/api/v1/send"))
            .json(&json!({"filter": {"user": "dave"}, "data": "sign", "id": "d-1", "ack": true, "timeout_ms": 5000}))
            .send()
            .await
            .unwrap();
        res.status().as_u16()
    });
    let m = next_data().await;
    assert_eq!(
        (m["id"].as_str(), m["ack"].as_bool()),
        (Some("d-1"), Some(true))
    );
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/v1/ack", n[2].addr))
        .json(&json!({"receiver": receiver, "id": "d-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"acked": true}));
    assert_eq!(
        tokio::time::timeout(WAIT, sender).await.unwrap().unwrap(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_sends_and_acks_cross_nodes() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    let mut alice_b = ws(
        &n[1],
        &format!("/ws?token={}", token("alice", json!({"role": "worker"}))),
    )
    .await;
    let mut bob_c = ws(
        &n[2],
        &format!("/ws?token={}", token("bob", json!({"role": "worker"}))),
    )
    .await;

    // Multicast by label from node A reaches both other nodes.
    let reply = send_until_matched(
        &n[0],
        json!({"filter": {"labels": {"role": "worker"}}, "data": "warmup"}),
        2,
    )
    .await;
    assert_eq!(reply["delivered"], 2);
    // Warm-up attempts may have reached one side several times: drain each
    // up to a marker sent to it alone.
    for (who, ws) in [("alice", &mut alice_b), ("bob", &mut bob_c)] {
        let (_, r) = send(&n[0], json!({"filter": {"user": who}, "data": "synced"})).await;
        assert_eq!(r["delivered"], 1);
        while next_json(ws).await["data"] != "synced" {}
    }
    let (status, reply) = send(
        &n[0],
        json!({"filter": {"labels": {"role": "worker"}}, "data": "hello"}),
    )
    .await;
    assert_eq!((status, reply["delivered"].as_u64()), (200, Some(2)));
    assert_eq!(next_json(&mut alice_b).await["data"], "hello");
    assert_eq!(next_json(&mut bob_c).await["data"], "hello");

    // find_any: exactly one connection per message, taking turns across nodes.
    let mut got = [0u32; 2];
    for i in 0..20 {
        let (status, reply) = send(
            &n[0],
            json!({"filter": {"labels": {"role": "worker"}, "find_any": true}, "data": i}),
        )
        .await;
        assert_eq!(
            (status, reply["delivered"].as_u64()),
            (200, Some(1)),
            "{reply}"
        );
    }
    for (k, ws) in [&mut alice_b, &mut bob_c].into_iter().enumerate() {
        // Each side drains what it got; a sentinel after marks the end.
        let (_, r) = send(
            &n[0],
            json!({"filter": {"user": if k == 0 { "alice" } else { "bob" }}, "data": "end"}),
        )
        .await;
        assert_eq!(r["delivered"], 1);
        loop {
            let m = next_json(ws).await;
            if m["data"] == "end" {
                break;
            }
            got[k] += 1;
        }
    }
    assert_eq!(
        got[0] + got[1],
        20,
        "each find_any message went to exactly one: {got:?}"
    );
    assert_eq!(got, [10, 10], "turns alternate between the two nodes");

    // Ack across nodes: the sender on A waits for alice's ack on B.
    let sender = post_in_background(
        &n[0].addr,
        "/api/v1/send",
        json!({"filter": {"user": "alice"}, "data": "confirm", "id": "x-1", "ack": true, "timeout_ms": 5000}),
    );
    let m = next_json(&mut alice_b).await;
    assert_eq!(
        (m["id"].as_str(), m["ack"].as_bool()),
        (Some("x-1"), Some(true))
    );
    ack(&mut alice_b, "x-1").await;
    assert_eq!(
        tokio::time::timeout(WAIT, sender).await.unwrap().unwrap(),
        200
    );

    // Nobody acks: 408 after the timeout.
    let (status, _) = send(
        &n[0],
        json!({"filter": {"user": "bob"}, "data": "ignored", "ack": true, "timeout_ms": 300}),
    )
    .await;
    assert_eq!(status, 408);
}

/// Native ids are the sender's own (Pushca sends get one of their own), so
/// a fallback to another receiver may reuse one. A late ack owed to an earlier send of the id, which has ended,
/// must neither confirm a later send of it reaching the same node nor take
/// the route that the later send's real ack needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_on_one_node_closes_the_users_connections_on_another() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 2);
    let mut alice = ws(&n[1], &format!("/ws?token={}", token("alice", json!({})))).await;
    let mut bob = ws(&n[1], &format!("/ws?token={}", token("bob", json!({})))).await;
    // Node A sees alice once the registry has her.
    send_until_matched(
        &n[0],
        json!({"filter": {"user": "alice"}, "data": "sync"}),
        1,
    )
    .await;

    let body = json!({"filter": {"user": "alice"}});
    let answer = post(&n[0], "/api/v1/disconnect", body).await;
    assert_eq!(answer, (200, json!({"disconnected": 1})));
    assert_eq!(close_code(&mut alice).await, Some(4009));
    // Bob, on the same node, stays.
    let (_, reply) = send(
        &n[0],
        json!({"filter": {"user": "bob"}, "data": "still here"}),
    )
    .await;
    assert_eq!(reply["delivered"], 1, "{reply}");
    while next_json(&mut bob).await["data"] != "still here" {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_every_nodes_subscribers() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 3);
    let alice = token("alice", json!({}));
    let _a1 = ws(&n[1], &format!("/ws?channels=lobby&token={alice}")).await;
    let _a2 = ws(&n[2], &format!("/ws?channels=lobby&token={alice}")).await;
    let _bob = ws(
        &n[0],
        &format!("/ws?channels=lobby&token={}", token("bob", json!({}))),
    )
    .await;
    let _anonymous = ws(&n[2], "/ws?channels=lobby").await;
    // Nodes count their subscribers into Redis within a second.
    let presence = get_until(&n[0], "/api/v1/channels/lobby/presence", |p| {
        p["connections"] == 4
    })
    .await;
    assert_eq!(
        presence["users"],
        json!([{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}])
    );
    assert_eq!(presence["anonymous"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_reach_every_nodes_subscribers_once() {
    let redis = RedisServer::start();
    let n = nodes_with(
        &[redis.url()],
        2,
        &[("HERALD_PRESENCE__EVENTS", "[\"room:*\"]")],
    );
    let event =
        |change: &str, user: &str| json!({"type": change, "channel": "room:1", "user": user});
    let join = |user: &str| format!("/ws?channels=room:1&token={}", token(user, json!({})));
    let mut alice = ws(&n[0], &join("alice")).await;
    assert_eq!(next_json(&mut alice).await, event("join", "alice"));
    let mut carol = ws(&n[1], &join("carol")).await;
    assert_eq!(next_json(&mut carol).await, event("join", "carol"));
    assert_eq!(next_json(&mut alice).await, event("join", "carol"));
    let mut bob = ws(&n[1], &join("bob")).await;
    assert_eq!(next_json(&mut alice).await, event("join", "bob"));
    assert_eq!(next_json(&mut carol).await, event("join", "bob"));
    // Told once: carol, on bob's node, sees the next message right after.
    publish_ok(&n[0], "room:1", json!("marker")).await;
    assert_eq!(next_json(&mut carol).await["data"], "marker");
    assert_eq!(next_json(&mut alice).await["data"], "marker");

    bob.send(Message::Close(None)).await.unwrap();
    assert_eq!(next_json(&mut alice).await, event("leave", "bob"));
    assert_eq!(next_json(&mut carol).await, event("leave", "bob"));
}

/// Two nodes on `urls` telling joins and leaves of `room:*`.
fn presence_nodes(urls: &[String]) -> Vec<Herald> {
    nodes_with(urls, 2, &[("HERALD_PRESENCE__EVENTS", "[\"room:*\"]")])
}

fn room_event(change: &str, user: &str) -> Value {
    json!({"type": change, "channel": "room:1", "user": user})
}

/// A WebSocket path joining `room:1` as `user`.
fn join_room(user: &str) -> String {
    format!("/ws?channels=room:1&token={}", token(user, json!({})))
}

/// Alice joins `room:1` on the first node, then bob on the second; alice is
/// told of both. Their WebSockets.
async fn alice_then_bob(n: &[Herald]) -> (Ws, Ws) {
    let mut alice = ws(&n[0], &join_room("alice")).await;
    assert_eq!(next_json(&mut alice).await, room_event("join", "alice"));
    let bob = ws(&n[1], &join_room("bob")).await;
    assert_eq!(next_json(&mut alice).await, room_event("join", "bob"));
    (alice, bob)
}

/// Asserts that nothing but a marker published now reaches `ws` next.
async fn nothing_more(node: &Herald, ws: &mut Ws) {
    publish_ok(node, "room:1", json!("marker")).await;
    assert_eq!(next_json(ws).await["data"], "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_leave_the_other_nodes_subscribers() {
    let redis = RedisServer::start();
    let mut n = presence_nodes(&[redis.url()]);
    let (mut alice, _bob_phone) = alice_then_bob(&n).await;
    let _bob_laptop = ws(&n[1], &join_room("bob")).await;
    assert_eq!(next_json(&mut alice).await, room_event("join", "bob"));
    let mut carol = ws(&n[1], &join_room("carol")).await;
    assert_eq!(next_json(&mut alice).await, room_event("join", "carol"));
    carol.send(Message::Close(None)).await.unwrap();
    assert_eq!(next_json(&mut alice).await, room_event("leave", "carol"));

    // B dies without a goodbye: once its liveness key lapses, A tells the
    // leaves B never sent, one per connection, and carol's not again.
    n[1].child.kill().unwrap();
    n[1].child.wait().unwrap();
    assert_eq!(next_json(&mut alice).await, room_event("leave", "bob"));
    assert_eq!(next_json(&mut alice).await, room_event("leave", "bob"));
    nothing_more(&n[0], &mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_leave_on_a_redis_cluster_too() {
    // The ledger, the set of nodes with one and the channel's pub/sub live
    // in three slots.
    let cluster = RedisCluster::start();
    let mut n = presence_nodes(&cluster.urls());
    let (mut alice, _bob) = alice_then_bob(&n).await;

    n[1].child.kill().unwrap();
    n[1].child.wait().unwrap();
    assert_eq!(next_json(&mut alice).await, room_event("leave", "bob"));
    nothing_more(&n[0], &mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_has_each_user_leave_once() {
    let redis = RedisServer::start();
    let mut n = presence_nodes(&[redis.url()]);
    let (mut alice, mut bob) = alice_then_bob(&n).await;
    let _carol = ws(&n[1], &join_room("carol")).await;
    assert_eq!(next_json(&mut alice).await, room_event("join", "carol"));
    bob.send(Message::Close(None)).await.unwrap();
    assert_eq!(next_json(&mut alice).await, room_event("leave", "bob"));

    // Carol's leave is told as her session ends, or from B's ledger once
    // A finds B's liveness key gone: either way once, and bob's not again.
    assert!(n[1].terminate().success());
    assert_eq!(next_json(&mut alice).await, room_event("leave", "carol"));
    n[0].wait_log("Presence: node dead, its users leave.");
    nothing_more(&n[0], &mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taken_for_dead_has_its_users_join_again() {
    let redis = RedisServer::start();
    let n = presence_nodes(&[redis.url()]);
    let (mut alice, _bob) = alice_then_bob(&n).await;
    // B is paused past its liveness key's 3 s: A takes it for dead and
    // tells bob's leave.
    let b = n[1].pid().to_string();
    signal(&b, "STOP");
    assert_eq!(next_json(&mut alice).await, room_event("leave", "bob"));
    signal(&b, "CONT");

    // B was alive all along and bob still there: once B renews its key, A
    // tells bob's join again.
    assert_eq!(next_json(&mut alice).await, room_event("join", "bob"));
    nothing_more(&n[0], &mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_holds_on_every_node() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 2);
    // Tokens without `iat`: any revocation of their user covers them.
    let alice = token("alice", json!({}));
    let mut on_b = ws(&n[1], &format!("/ws?token={alice}")).await;
    send_until_matched(
        &n[0],
        json!({"filter": {"user": "alice"}, "data": "sync"}),
        1,
    )
    .await;

    let (status, answer) = post(&n[0], "/api/v1/revoke", json!({"user": "alice"})).await;
    assert_eq!(
        (status, &answer["disconnected"]),
        (200, &json!(1)),
        "{answer}"
    );
    assert_eq!(close_code(&mut on_b).await, Some(4009));

    // Node B, and a node started after the revocation, refuse the token
    // once they reread the revocations (every second).
    let late = nodes(&[redis.url()], 1).remove(0);
    let bob = token("bob", json!({}));
    for node in [&n[1], &late] {
        let status = |token: String| async move {
            let url = format!("http://{}/sse?channels=a&token={token}", node.addr);
            reqwest::get(url).await.unwrap().status().as_u16()
        };
        until(|| async {
            match status(alice.clone()).await {
                401 => Ok(()),
                other => Err(format!("{}: alice's token answered {other}", node.addr)),
            }
        })
        .await;
        assert_eq!(status(bob.clone()).await, 200, "bob is not revoked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_across_nodes_confirms_no_later_send_of_its_id() {
    let redis = RedisServer::start();
    let n = nodes(&[redis.url()], 2);
    let mut gail = ws(&n[1], &format!("/ws?token={}", token("gail", json!({})))).await;
    let mut hugo = ws(&n[1], &format!("/ws?token={}", token("hugo", json!({})))).await;
    // Warm-up attempts may have arrived several times: drain each up to a
    // marker sent to it alone.
    for (who, ws) in [("gail", &mut gail), ("hugo", &mut hugo)] {
        let body = json!({"filter": {"user": who}, "data": "warmup"});
        send_until_matched(&n[0], body, 1).await;
        let (_, r) = send(&n[0], json!({"filter": {"user": who}, "data": "synced"})).await;
        assert_eq!(r["delivered"], 1);
        while next_json(ws).await["data"] != "synced" {}
    }
    let acked = |user: &str, timeout_ms: u64| {
        json!({"filter": {"user": user}, "data": user, "id": "reused", "ack": true,
            "timeout_ms": timeout_ms})
    };

    // Send #1 of the id reaches gail on B, who does not ack in time.
    let (status, _) = send(&n[0], acked("gail", 300)).await;
    assert_eq!(status, 408);
    assert_eq!(next_json(&mut gail).await["id"], "reused");

    // Send #2 of the id reaches hugo on B, who never acks; gail's late ack
    // of send #1 must not end it as acknowledged.
    let second = post_in_background(&n[0].addr, "/api/v1/send", acked("hugo", 1500));
    assert_eq!(next_json(&mut hugo).await["id"], "reused");
    ack(&mut gail, "reused").await;
    assert_eq!(
        tokio::time::timeout(WAIT, second).await.unwrap().unwrap(),
        408,
        "hugo never acknowledged send #2"
    );

    // Send #3 reaches gail again; hugo's late ack of send #2 comes first and
    // must leave gail's ack its way to A.
    let third = post_in_background(&n[0].addr, "/api/v1/send", acked("gail", 5000));
    assert_eq!(next_json(&mut gail).await["id"], "reused");
    ack(&mut hugo, "reused").await;
    ack(&mut gail, "reused").await;
    assert_eq!(
        tokio::time::timeout(WAIT, third).await.unwrap().unwrap(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_any_never_asks_a_second_node_while_a_silent_one_may_deliver() {
    let redis = RedisServer::start();
    // B must stay alive to the others while it is paused below, through two
    // sends of up to a second each on a loaded machine: its liveness key
    // lasts three probe intervals, 9 s here.
    let n = nodes_with(
        &[redis.url()],
        3,
        &[("HERALD_BROKER__REDIS__PROBE_INTERVAL_MS", "3000")],
    );
    let worker = |who| format!("/ws?token={}", token(who, json!({"role": "any1"})));
    let mut on_b = ws(&n[1], &worker("hal")).await;
    let mut on_c = ws(&n[2], &worker("ida")).await;
    let all = json!({"filter": {"labels": {"role": "any1"}}, "data": "warmup"});
    send_until_matched(&n[0], all, 2).await;
    // Warm-up attempts may have reached each several times: drain each up
    // to a marker sent to it alone.
    for (who, ws) in [("hal", &mut on_b), ("ida", &mut on_c)] {
        let (_, r) = send(&n[0], json!({"filter": {"user": who}, "data": "synced"})).await;
        assert_eq!(r["delivered"], 1);
        while next_json(ws).await["data"] != "synced" {}
    }

    // B stops answering (its process is paused, its Redis connections stay
    // open). Turns alternate, so one of two find_any sends asks B first.
    let b_pid = n[1].pid().to_string();
    signal(&b_pid, "STOP");
    let mut answers = Vec::new();
    for i in 0..2 {
        let body = json!({"filter": {"labels": {"role": "any1"}, "find_any": true}, "data": i});
        let (status, reply) = send(&n[0], body).await;
        answers.push((
            status,
            reply["error"]["code"].clone(),
            reply["delivered"].clone(),
        ));
    }
    signal(&b_pid, "CONT");
    let silent = answers
        .iter()
        .position(|a| a.0 == 504)
        .unwrap_or_else(|| panic!("no send waited on B: {answers:?}"));
    assert_eq!(answers[silent].1, "outcome_unknown", "{answers:?}");
    assert_eq!(
        answers[1 - silent],
        (200, json!(null), json!(1)),
        "{answers:?}"
    );

    // B delivers the message it took; C got only the other one.
    assert_eq!(next_json(&mut on_b).await["data"], json!(silent));
    let (_, r) = send(&n[0], json!({"filter": {"user": "ida"}, "data": "end"})).await;
    assert_eq!(r["delivered"], 1);
    assert_eq!(next_json(&mut on_c).await["data"], json!(1 - silent));
    assert_eq!(next_json(&mut on_c).await["data"], "end");
}

/// Publishes every message of `messages` on `channel`, pipelined over one
/// connection to Redis on `port`; returns once Redis answered them all.
fn publish_all(port: u16, channel: &str, messages: &[String]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = Vec::new();
    for m in messages {
        req.extend_from_slice(
            format!(
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{m}\r\n",
                channel.len(),
                m.len()
            )
            .as_bytes(),
        );
    }
    s.write_all(&req).unwrap();
    // Each answer is one integer line.
    let (mut lines, mut buf) = (0, [0u8; 64 * 1024]);
    while lines < messages.len() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed after {lines} answers");
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_finds_its_sender_after_many_other_sends_awaiting_acks() {
    let redis = RedisServer::start();
    // B answers the flood below with as many replies, which may hold up its
    // probe for seconds: a long timeout keeps it from reconnecting (and
    // losing the rest of the flood) meanwhile.
    let n = nodes_with(
        &[redis.url()],
        2,
        &[("HERALD_BROKER__REDIS__TIMEOUT_MS", "10000")],
    );
    let mut frank = ws(&n[1], &format!("/ws?token={}", token("frank", json!({})))).await;
    let b_id = until(|| async {
        let members =
            herald_testkit::redis::command(redis.port, &["SMEMBERS", "herald:{ident}:nodes"]);
        let members = members.unwrap_or_default();
        let id = members.lines().nth(2).map(str::to_owned);
        id.ok_or(format!("B not registered: {members:?}"))
    })
    .await;

    // A sends to frank on B and waits for his ack.
    let sender = post_in_background(
        &n[0].addr,
        "/api/v1/send",
        json!({"filter": {"user": "frank"}, "data": "confirm", "id": "f-real", "ack": true, "timeout_ms": 20000}),
    );
    assert_eq!(next_json(&mut frank).await["id"], "f-real");

    // Meanwhile B delivers 100,000 other messages awaiting acks (for a node
    // of an older version, which does not say how long it waits), then one
    // to frank that shows B handled them all.
    let wire_send = |id: &str, user: &str, ack: bool| {
        json!({"t": "send", "from": "ghost", "req": 1,
            "filter": {"dims": [["user", user]], "find_any": false, "exclude": []},
            "msg": {"id": id, "event": null, "data": "1", "ack": ack, "time_ms": 0}})
        .to_string()
    };
    let mut flood: Vec<String> = (0..100_000)
        .map(|i| wire_send(&format!("other-{i}"), "nobody", true))
        .collect();
    flood.push(wire_send("f-marker", "frank", false));
    let direct = format!("herald:node:{{{b_id}}}:direct");
    let port = redis.port;
    tokio::task::spawn_blocking(move || publish_all(port, &direct, &flood))
        .await
        .unwrap();
    assert_eq!(next_json(&mut frank).await["id"], "f-marker");

    // Frank's ack must still reach A: 200, not 408 after the timeout.
    ack(&mut frank, "f-real").await;
    assert_eq!(
        tokio::time::timeout(WAIT, sender).await.unwrap().unwrap(),
        200
    );
}

/// A private CA and a server certificate for 127.0.0.1, made with openssl.
fn tls_files(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=Herald test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_to_redis_over_tls() {
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tls_files(&dir);
    let tls_port = herald_testkit::redis::free_port();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    // The plain port only serves the test's readiness check; nodes use TLS.
    let _redis = RedisServer::start_with(
        herald_testkit::redis::free_port(),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("redis://127.0.0.1:{tls_port}");
    let env = [
        ("HERALD_BROKER__KIND", "redis".to_owned()),
        ("HERALD_BROKER__REDIS__URLS", format!("[\"{url}\"]")),
        ("HERALD_BROKER__REDIS__TLS", "true".to_owned()),
        ("HERALD_BROKER__REDIS__TLS_CA_FILE", path("ca.pem")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Herald::start(&env);
    let b = Herald::start(&env);
    let mut sub = ws(&b, "/ws?channels=secure").await;
    let p = publish_ok(&a, "secure", json!("over tls")).await;
    let m = next_json(&mut sub).await;
    assert_eq!(
        (m["data"].as_str(), m["offset"].clone()),
        (Some("over tls"), p["offset"].clone())
    );
    // Certificates are verified: without the private CA a node cannot start.
    let untrusted = std::process::Command::new(common::HERALD)
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_BROKER__KIND", "redis")
        .env("HERALD_BROKER__REDIS__URLS", format!("[\"{url}\"]"))
        .env("HERALD_BROKER__REDIS__TLS", "true")
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("cannot start"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_to_a_redis_cluster_over_tls_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("herald-ctls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tls_files(&dir);
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let tls_ports: Vec<u16> = (0..3).map(|_| herald_testkit::redis::free_port()).collect();
    // Clients and the cluster bus speak TLS; the plain ports only serve the
    // test harness (cluster creation, readiness checks).
    let cluster = RedisCluster::start_with(|i| {
        [
            "--tls-port",
            &tls_ports[i].to_string(),
            "--tls-cluster",
            "yes",
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned)
        .to_vec()
    });
    let urls: Vec<String> = tls_ports
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}\""))
        .collect();
    let env = [
        ("HERALD_BROKER__KIND", "redis".to_owned()),
        (
            "HERALD_BROKER__REDIS__URLS",
            format!("[{}]", urls.join(",")),
        ),
        ("HERALD_BROKER__REDIS__TLS", "true".to_owned()),
        ("HERALD_BROKER__REDIS__TLS_CA_FILE", path("ca.pem")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Herald::start(&env);
    let b = Herald::start(&env);
    // Channels on every master.
    for i in 0..6 {
        let ch = format!("secure{i}");
        let mut sub = ws(&b, &format!("/ws?channels={ch}")).await;
        let p = publish_ok(&a, &ch, json!(ch)).await;
        let m = next_json(&mut sub).await;
        assert_eq!(
            (m["data"].as_str(), m["offset"].clone()),
            (Some(ch.as_str()), p["offset"].clone())
        );
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_authenticate_with_the_configured_password() {
    let redis = RedisServer::start();
    let set =
        herald_testkit::redis::command(redis.port, &["CONFIG", "SET", "requirepass", "s3cret"]);
    assert_eq!(set.as_deref(), Some("+OK"));
    let urls = format!("[\"{}\"]", redis.url());
    let env = [
        ("HERALD_BROKER__KIND", "redis"),
        ("HERALD_BROKER__REDIS__URLS", urls.as_str()),
        ("HERALD_BROKER__REDIS__PASSWORD", "s3cret"),
    ];
    let a = Herald::start(&env);
    let b = Herald::start(&env);
    let mut sub = ws(&b, "/ws?channels=locked").await;
    publish_ok(&a, "locked", json!(1)).await;
    assert_eq!(next_json(&mut sub).await["data"], 1);
    // Without the password a node cannot start.
    let refused = std::process::Command::new(common::HERALD)
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_BROKER__KIND", "redis")
        .env("HERALD_BROKER__REDIS__URLS", &urls)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot start"));
}

/// A Tsuru service API request (form body) to `node`.
async fn tsuru(
    node: &Herald,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            method,
            format!("http://{}/pushaas/api/v1/resources{path}", node.addr),
        )
        .basic_auth("tsuru", Some("abc123"))
        .form(form)
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushaas_instance_is_served_by_every_node() {
    use reqwest::Method;
    let redis = RedisServer::start();
    let file = config_file(&[redis.url()]);
    let env = [
        ("HERALD_CONFIG", file.to_str().unwrap()),
        ("HERALD_PUSHAAS__ENABLED", "true"),
    ];
    let n = [Herald::start_on_one_core(&env), Herald::start(&env)];

    let create = [
        ("name", "shop"),
        ("plan", "small"),
        ("team", "t"),
        ("user", "u"),
    ];
    let created = tsuru(&n[0], Method::POST, "", &create).await;
    assert_eq!(created.status(), 201);
    let bound = tsuru(
        &n[1],
        Method::POST,
        "/shop/bind-app",
        &[("app-host", "h"), ("app-name", "web")],
    )
    .await;
    assert_eq!(bound.status(), 201);
    let env: Value = bound.json().await.unwrap();
    let password = env["PUSHAAS_PASSWORD"].as_str().unwrap().to_owned();

    // A subscriber of the instance on node 0, a publisher on node 1.
    let sub = reqwest::get(format!(
        "http://{}/pushaas/instances/shop/ps/sub/orders",
        n[0].addr
    ))
    .await
    .unwrap();
    assert_eq!(sub.status(), 200);
    let mut sub = sub.bytes_stream();
    let mut seen = String::new();
    let publish = || {
        reqwest::Client::new()
            .post(format!(
                "http://{}/pushaas/instances/shop/push-api/api/v1/messages",
                n[1].addr
            ))
            .basic_auth("shop", Some(&password))
            .body(r#"{"channels":["orders"],"content":"new order"}"#)
            .timeout(WAIT)
            .send()
    };
    // The subscription reaches Redis asynchronously: publish until it lands
    // (bounded; each round waits for the stream, not a fixed sleep).
    let deadline = Instant::now() + WAIT;
    while !seen.contains("new%20order") {
        assert!(
            Instant::now() < deadline,
            "nothing across nodes; saw {seen:?}"
        );
        assert_eq!(publish().await.unwrap().status(), 204);
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await
        {
            seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    // Removed through node 1, the instance is gone on node 0 too.
    assert_eq!(
        tsuru(&n[1], Method::DELETE, "/shop", &[]).await.status(),
        200
    );
    let gone = reqwest::get(format!(
        "http://{}/pushaas/instances/shop/ps/channels-stats",
        n[0].addr
    ))
    .await
    .unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(
        tsuru(&n[0], Method::GET, "/shop/status", &[])
            .await
            .status(),
        404
    );
}
