//! Protected channels (`auth.protected_channels`) over real sockets: only a
//! token whose `channels` claim grants one may read it, on every route that
//! reads, or publish to it from a WebSocket; other channels stay open.

mod common;

use common::*;
use herald_server::Config;
use serde_json::{Value, json};

const SECRET: &str = "access-test-secret";
const KEY: &str = "publisher-key-0123456789";

fn config(c: &mut Config) {
    c.auth.secret = Some(SECRET.into());
    c.auth.protected_channels = vec!["private-*".into(), "user:alice".into()];
    c.auth.api_keys = vec![KEY.into()];
    c.pushapi.basic_auth_password = "push-api-password".into();
    c.server.allow_client_publish = true;
    // Every channel keeps history, so offsets count every publish.
    c.history.rules = vec![herald_core::history::RetentionRule {
        pattern: "*".into(),
        retention: herald_core::history::Retention {
            size: 10,
            ttl: std::time::Duration::from_secs(300),
        },
    }];
}

/// A token for `sub` granting `channels`.
fn jwt(sub: &str, channels: Value) -> String {
    let exp = herald_testkit::token::unix_now() + 600;
    herald_testkit::token::hs256(
        SECRET,
        &json!({"sub": sub, "channels": channels, "exp": exp}),
    )
}

async fn publish(server: &TestServer, channel: &str, data: &str) -> Value {
    let res = reqwest::Client::new()
        .post(server.http("/api/v1/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The status and JSON body of a GET.
async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let res = reqwest::get(server.http(path)).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// The status of a refused WebSocket handshake.
async fn ws_refused(server: &TestServer, path: &str) -> u16 {
    let url = format!("ws://{}{path}", server.addr);
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        other => panic!("{path}: expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_open_protected_channels_only_with_a_token_granting_them() {
    let server = TestServer::with(config).await;
    let alice = jwt("alice", json!(["user:alice", "private-a*"]));
    let bob = jwt("bob", json!(["user:bob"]));

    // Refused before the upgrade, on the streams' own path and hyper's.
    assert_eq!(ws_refused(&server, "/ws?channels=user:alice").await, 403);
    assert_eq!(
        ws_refused(
            &server,
            &format!("/ws?channels=news,user:alice&token={bob}")
        )
        .await,
        403
    );
    let res = reqwest::get(server.http("/sse?channels=private-abc"))
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private-abc"),
        "{body}"
    );

    // Granted, exactly or by pattern.
    let mut ws = server
        .ws(&format!("/ws?channels=user:alice,news&token={alice}"))
        .await;
    let mut sse =
        Sse::connect(&server.http(&format!("/sse?channels=private-abc&token={alice}"))).await;
    publish(&server, "user:alice", "to alice").await;
    publish(&server, "private-abc", "secret").await;
    assert_eq!(next_json(&mut ws).await["data"], "to alice");
    let ev = sse.next_data().await;
    assert_eq!(ev.event.as_deref(), Some("identified"), "{ev:?}");
    let ev = sse.next_data().await;
    let data: Value = serde_json::from_str(&ev.data.unwrap()).unwrap();
    assert_eq!(data["data"], "secret");

    // Public channels need nothing.
    let mut open = server.ws("/ws?channels=news").await;
    publish(&server, "news", "for all").await;
    assert_eq!(next_json(&mut open).await["data"], "for all");
    assert_eq!(next_json(&mut ws).await["data"], "for all");
}

#[tokio::test]
async fn websocket_commands_need_the_grant_to_subscribe_or_publish() {
    let server = TestServer::with(config).await;
    let mut ws = server
        .ws(&format!(
            "/ws?token={}",
            jwt("alice", json!(["user:alice", "private-a*"]))
        ))
        .await;

    let reply = command(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channels": ["news", "private-x"]}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    // All or none: the public channel was not subscribed either.
    let reply = command(
        &mut ws,
        json!({"id": 2, "cmd": "subscribe", "channel": "user:alice"}),
    )
    .await;
    assert_eq!(
        reply["result"]["channels"],
        json!(["user:alice"]),
        "{reply}"
    );

    // Publishing into a protected channel takes the same grant.
    let reply = command(
        &mut ws,
        json!({"id": 3, "cmd": "publish", "channel": "private-b", "data": 1}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    let reply = command(
        &mut ws,
        json!({"id": 4, "cmd": "publish", "channel": "private-a1", "data": 2}),
    )
    .await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let answer = publish(&server, "private-b", "from the backend").await;
    assert_eq!(answer["offset"], 1, "the refused publish took no offset");
}

#[tokio::test]
async fn polling_and_history_read_protected_channels_with_a_grant_or_a_publisher_key() {
    let server = TestServer::with(config).await;
    publish(&server, "private-h", "kept").await;
    let token = jwt("alice", json!(["private-*"]));

    for path in [
        "/poll?channels=private-h&since=",
        "/api/v1/channels/private-h/history",
        "/api/v1/channels/private-h",
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{path}: {body}");
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, body) = get(&server, &format!("{path}{sep}token={token}")).await;
        assert_eq!(status, 200, "{path}: {body}");
        let res = reqwest::Client::new()
            .get(server.http(path))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path} with a publisher key");
    }
    let (_, page) = get(
        &server,
        &format!("/api/v1/channels/private-h/history?token={token}"),
    )
    .await;
    assert_eq!(page["messages"][0]["data"], "kept", "{page}");
    // A token that is not valid is told so.
    let (status, _) = get(&server, "/api/v1/channels/private-h?token=forged").await;
    assert_eq!(status, 401);
    // Public channels read without anything.
    publish(&server, "news", "open").await;
    let (status, _) = get(&server, "/api/v1/channels/news/history").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn routes_without_herald_tokens_cannot_read_protected_channels() {
    let server = TestServer::with(config).await;
    // The Push seed's streams and push-stream's subscriber.
    for path in [
        "/sse/messages?channels=private-x",
        "/ps/sub/private-x",
        "/ps/lp/private-x",
    ] {
        let res = reqwest::get(server.http(path)).await.unwrap();
        assert_eq!(res.status(), 403, "{path}");
    }
    let mut ws = server.ws("/ws/messages?channels=private-x").await;
    let frame = next_text(&mut ws).await;
    assert!(frame.contains("protected"), "{frame}");
    let (code, _) = expect_close(&mut ws).await;
    assert_ne!(code, 1000, "a refusal is not a normal close");
}

#[test]
fn protected_channels_need_a_way_to_verify_tokens() {
    let mut c = Config::default();
    c.auth.protected_channels = vec!["private-*".into()];
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("auth.protected_channels"), "{err}");
    c.auth.secret = Some(SECRET.into());
    c.validate().unwrap();
    c.auth.protected_channels = vec!["a*b*".into()];
    assert!(c.validate().is_err());
}

#[tokio::test]
async fn listings_show_protected_channels_only_to_those_who_may_read_them() {
    let server = TestServer::with(config).await;
    for channel in ["news", "private-a", "user:alice"] {
        publish(&server, channel, "kept").await;
    }
    let names = |body: &Value, list: &str, field: &str| -> Vec<String> {
        let mut names: Vec<String> = (body[list].as_array().unwrap().iter())
            .map(|c| c[field].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let client = reqwest::Client::new();
    let listed = |req: reqwest::RequestBuilder| async {
        let body = fetch_json(req).await;
        names(&body, "channels", "channel")
    };
    let token = jwt("bob", json!(["private-*"]));
    let list = server.http("/api/v1/channels");
    assert_eq!(listed(client.get(&list)).await, ["news"]);
    assert_eq!(
        listed(client.get(format!("{list}?token={token}"))).await,
        ["news", "private-a"]
    );
    assert_eq!(
        listed(client.get(&list).header("x-api-key", KEY)).await,
        ["news", "private-a", "user:alice"]
    );
    let (status, _) = get(&server, "/api/v1/channels?token=forged").await;
    assert_eq!(status, 401);

    // push-stream's statistics carry no token: a publisher key shows all.
    let stats = server.http("/ps/channels-stats?id=ALL");
    let body = fetch_json(client.get(&stats)).await;
    assert_eq!(names(&body, "infos", "channel"), ["news"], "{body}");
    assert_eq!(body["channels"], 1, "{body}");
    let body = fetch_json(client.get(&stats).header("x-api-key", KEY)).await;
    assert_eq!(names(&body, "infos", "channel").len(), 3, "{body}");
    let one = server.http("/ps/channels-stats?id=private-a");
    let res = client.get(&one).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let res = client
        .get(&one)
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
