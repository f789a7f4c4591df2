//! Pushca's API over real sockets: REST endpoints, connection tokens, and the
//! `@@` WebSocket protocol, with real WebSocket clients.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use futures_util::SinkExt;
use herald_server::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "pushca-test-secret";

fn pushca_config(c: &mut Config) {
    c.pushca.secret_key = Some(SECRET.into());
    c.pushca.ack_timeout = Duration::from_millis(300);
}

async fn server() -> TestServer {
    TestServer::with(pushca_config).await
}

fn client(ws: &str, acc: &str, dev: &str, app: &str) -> Value {
    json!({"workSpaceId": ws, "accountId": acc, "deviceId": dev, "applicationId": app})
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, String) {
    let res = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(server.http(path))
            .json(&body)
            .send(),
    )
    .await
    .expect("request timed out")
    .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn open_connection(server: &TestServer, who: &Value) -> Value {
    let (status, body) = post(server, "/open-connection", json!({"client": who})).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// POSTs `body` to `path` in a task of its own (a send that waits for an
/// ack): its status, once answered.
fn post_in_background(
    server: &TestServer,
    path: &str,
    body: Value,
) -> tokio::task::JoinHandle<u16> {
    let url = server.http(path);
    tokio::spawn(async move {
        let res = reqwest::Client::new().post(url).json(&body).send().await;
        res.unwrap().status().as_u16()
    })
}

async fn connect_url(url: &str) -> Ws {
    let (ws, res) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(res.status(), 101);
    ws
}

/// Opens a connection for `who` and connects to its external URL.
async fn connect(server: &TestServer, who: &Value) -> Ws {
    let opened = open_connection(server, who).await;
    connect_url(opened["externalAdvertisedUrl"].as_str().unwrap()).await
}

async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

async fn notify(server: &TestServer, filter: Value, message: &str) {
    let (status, body) = post(
        server,
        "/send-notification",
        json!({"filter": filter, "message": message}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A message to acknowledge, `<id>@@<body>`, as (id, body). The id is the
/// server's, shaped like Pushca's `<transactionId>-<index>`.
async fn next_to_ack(ws: &mut Ws) -> (String, String) {
    let text = next_text(ws).await;
    let (id, body) = text.split_once("@@").unwrap_or_else(|| panic!("{text}"));
    assert!(server_made(id), "{text}");
    (id.to_owned(), body.to_owned())
}

/// `<UUID>-0`: a transaction id and the index of its only message.
fn server_made(id: &str) -> bool {
    id.strip_suffix("-0").is_some_and(|uuid| {
        uuid.len() == 36 && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    })
}

async fn ack(ws: &mut Ws, cmd: &str, message_id: &str) {
    send_text(
        ws,
        &format!(r#"{cmd}@@ACKNOWLEDGE@@{{"messageId":"{message_id}"}}"#),
    )
    .await;
    assert_eq!(next_text(ws).await, format!("{cmd}@@ACKNOWLEDGE"));
}

/// Status of a refused WebSocket handshake.
async fn refused(url: &str) -> u16 {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("{url} was accepted"),
    }
}

fn token(secret: &str, exp_offset: i64, who: &Value) -> String {
    let now = herald_testkit::token::unix_now() as i64;
    let claims =
        json!({"aud": "pushca", "iat": now, "exp": now + exp_offset, "jti": "x", "client": who});
    herald_testkit::token::hs256(secret, &claims)
}

#[tokio::test]
async fn open_connection_returns_urls_with_a_token_for_the_client() {
    let server = server().await;
    let who = client("w", "a@x", "d1", "APP");
    let opened = open_connection(&server, &who).await;
    let external = opened["externalAdvertisedUrl"].as_str().unwrap();
    assert!(
        external.starts_with(&format!("ws://{}/", server.addr)),
        "{external}"
    );
    assert!(
        opened["pusherInstanceId"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    for key in ["internalAdvertisedUrl", "browserAdvertisedUrl"] {
        assert!(opened[key].as_str().unwrap().starts_with("ws://"), "{key}");
    }
    let jwt = external.rsplit('/').next().unwrap();
    let claims = jsonwebtoken::decode::<Value>(
        jwt,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &{
            let mut v = jsonwebtoken::Validation::default();
            v.set_audience(&["pushca"]);
            v
        },
    )
    .unwrap()
    .claims;
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 30 * 60, "tokens live 30 minutes");
    assert_eq!(claims["client"], who);

    let (status, body) = post(
        &server,
        "/open-connection-pool",
        json!({"client": who, "pusherInstanceId": null, "poolSize": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pool: Value = serde_json::from_str(&body).unwrap();
    let addresses = pool["addresses"].as_array().unwrap();
    assert_eq!(addresses.len(), 3);
    let mut ws = connect_url(addresses[2]["externalAdvertisedUrl"].as_str().unwrap()).await;
    send_text(&mut ws, "p1@@PING").await;
    assert_eq!(next_text(&mut ws).await, "p1@@RESPONSE");
}

/// Pushca's spec: the client must "provide unique object with four
/// required dimensions". Fewer gets no token, by any of the three routes.
#[tokio::test]
async fn a_client_without_all_four_fields_gets_no_connection() {
    let server = server().await;
    let mut three = client("w", "a", "d", "APP");
    three.as_object_mut().unwrap().remove("applicationId");
    for who in [
        json!({}),
        three,
        client("w", "a", "", "APP"),
        json!({"workSpaceId": "w", "accountId": "a", "deviceId": null, "applicationId": "APP"}),
    ] {
        for (path, body) in [
            ("/open-connection", json!({"client": who})),
            (
                "/open-connection-pool",
                json!({"client": who, "poolSize": 1}),
            ),
        ] {
            let (status, body) = post(&server, path, body).await;
            assert_eq!(status, 400, "{path} {who}: {body}");
            let err: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(err["error"]["code"], "bad_request", "{body}");
            let message = err["error"]["message"].as_str().unwrap();
            assert!(message.contains("applicationId"), "{message}");
        }
        let request = json!({"client": who}).to_string();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(request);
        let url = format!("ws://{}/sign-in/{encoded}", server.addr);
        assert_eq!(refused(&url).await, 400, "sign-in {who}");
    }
    // All four: a token.
    open_connection(&server, &client("w", "a", "d", "APP")).await;
}

#[tokio::test]
async fn send_notification_multicasts_by_partial_filter_and_honours_exclude() {
    let server = server().await;
    let a1 = client("w1", "alice", "phone", "APP");
    let a2 = client("w1", "alice", "laptop", "APP");
    let b = client("w1", "bob", "phone", "APP");
    let other = client("w2", "alice", "phone", "APP");
    let mut ws_a1 = connect(&server, &a1).await;
    let mut ws_a2 = connect(&server, &a2).await;
    let mut ws_b = connect(&server, &b).await;
    let mut ws_other = connect(&server, &other).await;

    notify(
        &server,
        json!({"workSpaceId": "w1", "accountId": "alice", "deviceId": null, "applicationId": "APP", "findAny": false, "exclude": null}),
        "Hello dear users!",
    )
    .await;
    assert_eq!(next_text(&mut ws_a1).await, "Hello dear users!");
    assert_eq!(next_text(&mut ws_a2).await, "Hello dear users!");

    // Exclude the sender: a multicast to w1 reaches everyone in w1 but a1.
    notify(
        &server,
        json!({"workSpaceId": "w1", "exclude": [a1]}),
        "second",
    )
    .await;
    assert_eq!(next_text(&mut ws_a2).await, "second");
    assert_eq!(next_text(&mut ws_b).await, "second");
    // A message to all shows what each client got next: nothing in between.
    notify(&server, json!({}), "to-all").await;
    assert_eq!(next_text(&mut ws_a1).await, "to-all", "a1 was excluded");
    assert_eq!(
        next_text(&mut ws_b).await,
        "to-all",
        "bob got only w1 messages"
    );
    assert_eq!(
        next_text(&mut ws_other).await,
        "to-all",
        "w2 got nothing else"
    );
    assert_eq!(next_text(&mut ws_a2).await, "to-all");
}

#[tokio::test]
async fn find_any_rotates_evenly_over_matching_clients() {
    let server = server().await;
    let mut workers = Vec::new();
    for dev in ["d1", "d2", "d3"] {
        workers.push(connect(&server, &client("w", "svc", dev, "WORKER")).await);
    }
    let mut bystander = connect(&server, &client("w", "svc", "d4", "OTHER")).await;
    for i in 0..300 {
        notify(
            &server,
            json!({"workSpaceId": "w", "applicationId": "WORKER", "findAny": true}),
            &format!("job-{i}"),
        )
        .await;
    }
    notify(&server, json!({"workSpaceId": "w"}), "end").await;
    let mut seen = std::collections::HashSet::new();
    for ws in &mut workers {
        let mut mine = 0;
        loop {
            let text = next_text(ws).await;
            if text == "end" {
                break;
            }
            assert!(seen.insert(text), "each job goes to exactly one worker");
            mine += 1;
        }
        assert_eq!(mine, 100, "round-robin gives each worker a third");
    }
    assert_eq!(seen.len(), 300);
    assert_eq!(next_text(&mut bystander).await, "end");
}

#[tokio::test]
async fn with_acknowledge_is_200_when_acked_and_408_when_not() {
    let server = server().await;
    let who = client("w", "acc", "dev", "APP");
    let mut ws = connect(&server, &who).await;

    let request = post_in_background(
        &server,
        "/send-notification-with-acknowledge",
        json!({"id": "m-1", "client": who, "message": "WithAcknowledgeTest1"}),
    );
    let (id, body) = next_to_ack(&mut ws).await;
    assert_eq!(body, "WithAcknowledgeTest1");
    ack(&mut ws, "c-1", &id).await;
    let status = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(status, 200);

    // Not acknowledged within pushca.ack_timeout (300 ms here): 408.
    let (status, body) = post(
        &server,
        "/send-notification-with-acknowledge",
        json!({"id": "m-2", "client": who, "message": "ignored"}),
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(next_to_ack(&mut ws).await.1, "ignored");

    // An incomplete client cannot be sent with-acknowledge.
    let (status, _) = post(
        &server,
        "/send-notification-with-acknowledge",
        json!({"client": {"accountId": "acc"}, "message": "x"}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn unacked_delivery_is_retried_with_the_same_id() {
    let server = TestServer::with(|c| {
        pushca_config(c);
        c.delivery.ack_attempts = 3;
        c.delivery.ack_backoff = Duration::from_millis(10);
    })
    .await;
    let who = client("w", "acc", "dev", "APP");
    let mut ws = connect(&server, &who).await;
    let request = post_in_background(
        &server,
        "/send-notification-with-acknowledge",
        json!({"id": "retry-1", "client": who, "message": "hello"}),
    );
    // The first delivery is not acknowledged; the retry carries the same id.
    let (id, body) = next_to_ack(&mut ws).await;
    assert_eq!(body, "hello");
    assert_eq!(next_to_ack(&mut ws).await, (id.clone(), body));
    let legacy = json!({"command": "ACKNOWLEDGE", "metaData": {"messageId": id}});
    send_text(&mut ws, &legacy.to_string()).await;
    let status = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(status, 200);
}

/// Ids are client-chosen, so a fallback to another device may reuse one.
/// A late ack from the first receiver, which still "owes" its message, must
/// not confirm the second send, whose receiver never acked.
#[tokio::test]
async fn a_late_ack_of_an_earlier_send_confirms_no_later_send_of_its_id() {
    let server = TestServer::with(|c| {
        pushca_config(c);
        // Long enough that B's late ack surely lands inside the second wait.
        c.pushca.ack_timeout = Duration::from_secs(1);
    })
    .await;
    let a = client("w", "sender", "d", "APP");
    let b = client("w", "bob", "phone", "APP");
    let d = client("w", "bob", "laptop", "APP");
    let mut ws_a = connect(&server, &a).await;
    let mut ws_b = connect(&server, &b).await;
    let mut ws_d = connect(&server, &d).await;

    let first = json!({"id": "order-123", "client": b, "message": "to B"});
    send_text(
        &mut ws_a,
        &format!("c1@@SEND_MESSAGE_WITH_ACKNOWLEDGE@@{first}"),
    )
    .await;
    let (id_b, body) = next_to_ack(&mut ws_b).await;
    assert_eq!(body, "to B");
    let reply = next_text(&mut ws_a).await;
    assert!(reply.contains("acknowledge timeout"), "{reply}");

    let request = post_in_background(
        &server,
        "/send-notification-with-acknowledge",
        json!({"id": "order-123", "client": d, "message": "to D"}),
    );
    assert_eq!(next_to_ack(&mut ws_d).await.1, "to D");
    ack(&mut ws_b, "k", &id_b).await;
    let status = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(status, 408, "D never acknowledged");
}

/// A receiver that disconnects before acking can no longer ack: the sender
/// learns it then, not after the whole (here 20 s) timeout.
#[tokio::test]
async fn a_receiver_leaving_unacked_ends_the_wait_early() {
    let server = TestServer::with(|c| {
        pushca_config(c);
        c.pushca.ack_timeout = Duration::from_secs(20);
    })
    .await;
    let who = client("w", "acc", "dev", "APP");
    let mut ws = connect(&server, &who).await;
    let request = post_in_background(
        &server,
        "/send-notification-with-delivery-guarantee",
        json!({"id": "g-2", "client": who, "message": "bye"}),
    );
    assert_eq!(next_to_ack(&mut ws).await.1, "bye");
    ws.close(None).await.unwrap();
    drop(ws);
    let status = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("still waiting for a receiver that left")
        .unwrap();
    assert_eq!(status, 503, "connected when sent, never acknowledged");
}

#[tokio::test]
async fn delivery_guarantee_is_404_when_not_connected() {
    let server = server().await;
    let who = client("w", "acc", "dev", "APP");
    let (status, body) = post(
        &server,
        "/send-notification-with-delivery-guarantee",
        json!({"client": who, "sender": null, "message": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    let mut ws = connect(&server, &who).await;
    let request = post_in_background(
        &server,
        "/send-notification-with-delivery-guarantee",
        json!({"id": "g-1", "client": who, "message": "guaranteed"}),
    );
    let (id, body) = next_to_ack(&mut ws).await;
    assert_eq!(body, "guaranteed");
    ack(&mut ws, "a", &id).await;
    assert_eq!(
        tokio::time::timeout(WAIT, request).await.unwrap().unwrap(),
        200
    );
}

#[tokio::test]
async fn forged_expired_and_garbage_tokens_are_refused() {
    let server = server().await;
    let who = client("w", "acc", "dev", "APP");
    let base = format!("ws://{}/", server.addr);
    assert_eq!(
        refused(&format!("{base}{}", token("wrong-secret", 600, &who))).await,
        401
    );
    assert_eq!(
        refused(&format!("{base}{}", token(SECRET, -600, &who))).await,
        401
    );
    assert_eq!(refused(&format!("{base}aaa.bbb.ccc")).await, 401);
    assert_eq!(refused(&format!("{base}not-a-token")).await, 404);
    // A correctly signed token is accepted.
    let mut ws = connect_url(&format!("{base}{}", token(SECRET, 600, &who))).await;
    send_text(&mut ws, "p@@PING").await;
    assert_eq!(next_text(&mut ws).await, "p@@RESPONSE");
}

#[tokio::test]
async fn legacy_ping_and_malformed_frames_keep_the_connection() {
    let server = server().await;
    let mut ws = connect(&server, &client("w", "acc", "dev", "APP")).await;
    send_text(&mut ws, r#"{"command":"PING"}"#).await;
    assert_eq!(next_text(&mut ws).await, "PONG");

    for (frame, id) in [
        ("hello", ""),
        ("{broken json", ""),
        ("x1@@SEND_MESSAGE@@{not json", "x1"),
        ("x2@@NO_SUCH_COMMAND", "x2"),
        ("x3@@CREATE_CHANNEL@@{}", "x3"),
        ("x4@@SEND_MESSAGE", "x4"),
        // Naming no dimension: every identified connection on the server.
        (r#"x5@@SEND_MESSAGE@@{"filter":{},"message":"all"}"#, "x5"),
        (
            r#"x6@@SEND_MESSAGE@@{"filter":{"findAny":true},"message":"any"}"#,
            "x6",
        ),
    ] {
        send_text(&mut ws, frame).await;
        let reply = next_text(&mut ws).await;
        let prefix = format!("{id}@@RESPONSE@@");
        let json: Value = serde_json::from_str(
            reply
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{frame:?} → {reply:?}")),
        )
        .unwrap();
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
        assert_eq!(json["body"], Value::Null);
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("@@RESPONSE@@"));
    send_text(&mut ws, "still@@PING").await;
    assert_eq!(next_text(&mut ws).await, "still@@RESPONSE");
}

#[tokio::test]
async fn ws_commands_send_acknowledge_and_are_idempotent() {
    let server = server().await;
    let sender = client("w", "sender", "d", "APP");
    let receiver = client("w", "receiver", "d", "APP");
    let mut tx = connect(&server, &sender).await;
    let mut rx = connect(&server, &receiver).await;

    let send = format!(
        r#"cmd-1@@SEND_MESSAGE@@{}"#,
        json!({"filter": {"accountId": "receiver"}, "message": "over ws", "preserveOrder": false})
    );
    send_text(&mut tx, &send).await;
    assert_eq!(next_text(&mut tx).await, "cmd-1@@ACKNOWLEDGE");
    // The client resends (same id): answered again, not delivered again.
    send_text(&mut tx, &send).await;
    assert_eq!(next_text(&mut tx).await, "cmd-1@@ACKNOWLEDGE");
    assert_eq!(next_text(&mut rx).await, "over ws");

    let with_ack = format!(
        "msg-7@@SEND_MESSAGE_WITH_ACKNOWLEDGE@@{}",
        json!({"id": "msg-7", "client": receiver, "sender": sender, "message": "needs ack"})
    );
    send_text(&mut tx, &with_ack).await;
    let (id, body) = next_to_ack(&mut rx).await;
    assert_eq!(body, "needs ack");
    ack(&mut rx, "r-1", &id).await;
    assert_eq!(next_text(&mut tx).await, "msg-7@@ACKNOWLEDGE");
    // Resent after its ack: the same answer, and nothing sent to the receiver again.
    send_text(&mut tx, &with_ack).await;
    assert_eq!(next_text(&mut tx).await, "msg-7@@ACKNOWLEDGE");

    // Nobody acknowledges: the sender gets an error RESPONSE after the timeout.
    let unacked = format!(
        "msg-8@@SEND_MESSAGE_WITH_ACKNOWLEDGE@@{}",
        json!({"client": receiver, "message": "ignored"})
    );
    send_text(&mut tx, &unacked).await;
    assert_eq!(next_to_ack(&mut rx).await.1, "ignored");
    let reply = next_text(&mut tx).await;
    assert!(reply.starts_with("msg-8@@RESPONSE@@"), "{reply}");
    assert!(reply.contains("timeout"), "{reply}");
    send_text(&mut tx, &unacked).await;
    assert_eq!(
        next_text(&mut tx).await,
        reply,
        "a resend gets the same error"
    );

    // The multicast after shows the resend above was not delivered twice.
    notify(&server, json!({"accountId": "receiver"}), "last").await;
    assert_eq!(next_text(&mut rx).await, "last");
}

/// Receivers see a message id the server made, `<transactionId>-<index>`
/// as from Pushca, and acknowledge by it, while each sender is answered
/// under its own id. Two sends reusing one id are told apart: each is
/// confirmed only by the ack of its own message.
#[tokio::test]
async fn receivers_ack_a_server_made_id_and_senders_keep_theirs() {
    let server = server().await;
    let receiver = client("w", "receiver", "d", "APP");
    let mut tx = connect(&server, &client("w", "s1", "d", "APP")).await;
    let mut tx2 = connect(&server, &client("w", "s2", "d", "APP")).await;
    let mut rx = connect(&server, &receiver).await;
    let with_ack = |cmd: &str, message: &str| {
        let meta = json!({"id": "dup", "client": receiver, "message": message});
        format!("{cmd}@@SEND_MESSAGE_WITH_ACKNOWLEDGE@@{meta}")
    };

    send_text(&mut tx, &with_ack("s1", "first")).await;
    let (first, body) = next_to_ack(&mut rx).await;
    assert_eq!(body, "first");
    send_text(&mut tx2, &with_ack("s2", "second")).await;
    let (second, body) = next_to_ack(&mut rx).await;
    assert_eq!(body, "second");
    assert_ne!(first, second, "each send has its own id");

    // The senders' id is nothing the receiver owes; the second send's id
    // confirms the second send only.
    ack(&mut rx, "a", "dup").await;
    ack(&mut rx, "b", &second).await;
    assert_eq!(next_text(&mut tx2).await, "dup@@ACKNOWLEDGE");
    let reply = next_text(&mut tx).await;
    assert!(reply.starts_with("dup@@RESPONSE@@"), "{reply}");
    assert!(reply.contains("acknowledge timeout"), "{reply}");
}

/// Pushca clients split `<id>@@<body>` on every `@@`, so a body with `@@`
/// could never be acknowledged: such a with-acknowledge send is refused
/// (REST 400, WS error RESPONSE) and nothing reaches the receiver.
#[tokio::test]
async fn a_with_ack_message_containing_the_delimiter_is_refused() {
    let server = server().await;
    let receiver = client("w", "receiver", "d", "APP");
    let mut tx = connect(&server, &client("w", "sender", "d", "APP")).await;
    let mut rx = connect(&server, &receiver).await;
    for path in [
        "/send-notification-with-acknowledge",
        "/send-notification-with-delivery-guarantee",
    ] {
        for message in [json!("a@@b"), json!({"note": "x@@y"})] {
            let (status, body) = post(
                &server,
                path,
                json!({"client": receiver, "message": message}),
            )
            .await;
            assert_eq!(status, 400, "{path} {message}: {body}");
            let err: Value = serde_json::from_str(&body).unwrap();
            let text = err["error"]["message"].as_str().unwrap();
            assert!(text.contains("'@@'"), "{text}");
        }
    }
    let meta = json!({"id": "m1", "client": receiver, "message": "id@@a@@b"});
    send_text(
        &mut tx,
        &format!("c1@@SEND_MESSAGE_WITH_ACKNOWLEDGE@@{meta}"),
    )
    .await;
    // Answered under the id the sender waits on: its metaData.id.
    let reply = next_text(&mut tx).await;
    let json: Value = serde_json::from_str(
        reply
            .strip_prefix("m1@@RESPONSE@@")
            .unwrap_or_else(|| panic!("{reply}")),
    )
    .unwrap();
    assert!(json["error"].as_str().unwrap().contains("'@@'"), "{reply}");
    // The legacy form has no command id: the refusal still goes to the id
    // the sender waits on.
    let legacy = json!({"command": "SEND_MESSAGE_WITH_ACKNOWLEDGE",
        "metaData": {"id": "m2", "client": receiver, "message": "a@@b"}});
    send_text(&mut tx, &legacy.to_string()).await;
    let reply = next_text(&mut tx).await;
    assert!(reply.starts_with("m2@@RESPONSE@@"), "{reply}");
    assert!(reply.contains("'@@'"), "{reply}");
    // A plain message may contain it: its receiver need not answer.
    notify(&server, json!({"accountId": "receiver"}), "plain@@text").await;
    assert_eq!(next_text(&mut rx).await, "plain@@text", "nothing before it");
}

/// With `metaData.id` other than the command id, the reply is under the
/// message id, and a resend gets that very reply again.
#[tokio::test]
async fn a_resent_with_ack_command_gets_the_same_reply() {
    let server = server().await;
    let receiver = client("w", "receiver", "d", "APP");
    let mut tx = connect(&server, &client("w", "sender", "d", "APP")).await;
    let mut rx = connect(&server, &receiver).await;
    let meta = json!({"id": "msgA", "client": receiver, "message": "m"});
    let frame = format!("cmdA@@SEND_MESSAGE_WITH_ACKNOWLEDGE@@{meta}");
    send_text(&mut tx, &frame).await;
    let (id, body) = next_to_ack(&mut rx).await;
    assert_eq!(body, "m");
    ack(&mut rx, "a", &id).await;
    assert_eq!(next_text(&mut tx).await, "msgA@@ACKNOWLEDGE");
    send_text(&mut tx, &frame).await;
    assert_eq!(next_text(&mut tx).await, "msgA@@ACKNOWLEDGE");
}

/// `id` is optional in metaData; a legacy frame has no command id either,
/// so the sender is answered under the message's own id, as from Pushca.
#[tokio::test]
async fn legacy_with_ack_without_an_id_is_sent_under_a_generated_one() {
    let server = server().await;
    let receiver = client("w", "receiver", "d", "APP");
    let mut tx = connect(&server, &client("w", "sender", "d", "APP")).await;
    let mut rx = connect(&server, &receiver).await;
    let legacy = json!({"command": "SEND_MESSAGE_WITH_ACKNOWLEDGE",
        "metaData": {"client": receiver, "message": "L1"}});
    send_text(&mut tx, &legacy.to_string()).await;
    let (id, body) = next_to_ack(&mut rx).await;
    assert_eq!(body, "L1");
    ack(&mut rx, "a", &id).await;
    assert_eq!(next_text(&mut tx).await, format!("{id}@@ACKNOWLEDGE"));
}

#[tokio::test]
async fn refresh_token_returns_a_working_token() {
    let server = server().await;
    let who = client("w", "acc", "dev", "APP");
    let opened = open_connection(&server, &who).await;
    let url = opened["externalAdvertisedUrl"].as_str().unwrap();
    let mut ws = connect_url(url).await;
    send_text(&mut ws, "t-1@@REFRESH_TOKEN").await;
    let reply = next_text(&mut ws).await;
    let json: Value = serde_json::from_str(reply.strip_prefix("t-1@@RESPONSE@@").unwrap()).unwrap();
    assert_eq!(json["error"], Value::Null);
    let fresh = json["body"].as_str().unwrap();
    let base = &url[..url.rfind('/').unwrap() + 1];
    assert_ne!(format!("{base}{fresh}"), url);
    let mut again = connect_url(&format!("{base}{fresh}")).await;
    notify(&server, json!({"accountId": "acc"}), "both").await;
    assert_eq!(next_text(&mut ws).await, "both");
    assert_eq!(next_text(&mut again).await, "both");
}

#[tokio::test]
async fn browser_sign_in_sends_the_urls_then_closes() {
    let server = server().await;
    let who = client("w", "browser", "tab", "WEB");
    let request = json!({"client": who}).to_string();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(request);
    let mut ws = server.ws(&format!("/sign-in/{encoded}")).await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1000);
    let mut browser = connect_url(reply["browserAdvertisedUrl"].as_str().unwrap()).await;
    notify(&server, json!({"accountId": "browser"}), "hi browser").await;
    assert_eq!(next_text(&mut browser).await, "hi browser");
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let server = TestServer::with(|c| {
        pushca_config(c);
        c.pushca.rate_limit = 1;
        c.pushca.rate_burst = 2;
    })
    .await;
    let body = json!({"filter": {}, "message": "x"});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&server, "/send-notification", body.clone()).await.0);
    }
    assert_eq!(statuses[..2], [200, 200]);
    assert_eq!(statuses[2], 429);
}

async fn openapi(server: &TestServer) -> Value {
    let res = reqwest::get(server.http("/openapi.json")).await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn openapi_lists_every_api() {
    let server = server().await;
    let doc = openapi(&server).await;
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/open-connection",
        "/open-connection-pool",
        "/send-notification",
        "/send-notification-with-acknowledge",
        "/send-notification-with-delivery-guarantee",
        "/{token}",
        "/sign-in/{request}",
        "/api/v1/send",
        "/api/v1/publish",
        "/api/v1/publish/batch",
        "/ws",
        "/sse",
        "/poll",
        "/api/v1/channels",
        "/api/v1/channels/{channel}",
        "/api/v1/channels/{channel}/history",
        "/messages",
        "/sse/messages",
        "/ws/messages",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from /openapi.json"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "PClient",
        "ClientSearchData",
        "SendNotificationRequest",
        "OpenConnectionResponse",
        "PushApiChannel",
        "PushApiMessage",
        "PushApiError",
        "TsuruError",
        "TsuruInstance",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }

    // The dialects under a prefix, at its default, with exactly the methods
    // their handlers answer (push-stream's `PUT /pub` is `POST`'s alias).
    let methods = |path: &str| -> Vec<String> {
        let item = doc["paths"][path].as_object();
        let item = item.unwrap_or_else(|| panic!("{path} missing from /openapi.json"));
        let mut methods: Vec<String> = item
            .keys()
            .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
            .cloned()
            .collect();
        methods.sort();
        methods
    };
    let (get, post) = (&["get"][..], &["post"][..]);
    for (path, want) in [
        ("/ps/pub", &["delete", "get", "post"][..]),
        ("/ps/sub/{channels}", get),
        ("/ps/ev/{channels}", get),
        ("/ps/lp/{channels}", get),
        ("/ps/jsonp/{channels}", get),
        ("/ps/ws/{channels}", get),
        ("/ps/channels-stats", get),
        ("/push-api/api/", get),
        ("/push-api/api/healthcheck", get),
        ("/push-api/api/v1/auth", get),
        ("/push-api/api/v1/channels", &["get", "post"]),
        ("/push-api/api/v1/channels/{id}", &["delete", "get"]),
        ("/push-api/api/v1/messages", post),
        ("/push-api/api/v1/config", get),
        ("/push-api/api/v1/stats/global", get),
        ("/push-api/api/v1/stats/channels/{id}", get),
        ("/push-api/", get),
        ("/push-api/admin", get),
        ("/push-api/admin/", get),
        ("/push-api/admin/app.js", get),
        ("/push-api/admin/app.css", get),
        ("/pushaas/api/v1/resources", post),
        ("/pushaas/api/v1/resources/plans", get),
        ("/pushaas/api/v1/resources/instances", get),
        (
            "/pushaas/api/v1/resources/{name}",
            &["delete", "get", "put"],
        ),
        ("/pushaas/api/v1/resources/{name}/status", get),
        (
            "/pushaas/api/v1/resources/{name}/bind-app",
            &["delete", "post"],
        ),
        ("/pushaas/api/v1/resources/{name}/bind", &["delete", "post"]),
        (
            "/pushaas/instances/{name}/{rest}",
            &["delete", "get", "post", "put"],
        ),
    ] {
        assert_eq!(methods(path), want, "methods of {path}");
    }

    // Each dialect's basic auth on exactly its guarded routes.
    let schemes = &doc["components"]["securitySchemes"];
    for scheme in ["push_api_basic", "tsuru_basic", "pushaas_instance_basic"] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "basic", "{scheme}");
    }
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    for (path, method) in [
        ("/push-api/api/", "get"),
        ("/push-api/api/v1/auth", "get"),
        ("/push-api/api/v1/channels", "post"),
        ("/push-api/api/v1/channels/{id}", "delete"),
        ("/push-api/api/v1/messages", "post"),
        ("/push-api/api/v1/stats/channels/{id}", "get"),
    ] {
        let want = json!([{"push_api_basic": []}]);
        assert_eq!(security(path, method), want, "{method} {path}");
    }
    for (path, method) in [
        ("/pushaas/api/v1/resources", "post"),
        ("/pushaas/api/v1/resources/plans", "get"),
        ("/pushaas/api/v1/resources/{name}", "put"),
        ("/pushaas/api/v1/resources/{name}/bind-app", "delete"),
    ] {
        let want = json!([{"tsuru_basic": []}]);
        assert_eq!(security(path, method), want, "{method} {path}");
    }
    let instance = json!([{"pushaas_instance_basic": []}, {}]);
    assert_eq!(
        security("/pushaas/instances/{name}/{rest}", "post"),
        instance
    );
    for (path, method) in [
        ("/push-api/admin", "get"),
        ("/push-api/", "get"),
        ("/ps/sub/{channels}", "get"),
        ("/ps/channels-stats", "get"),
    ] {
        assert_eq!(security(path, method), Value::Null, "{method} {path}");
    }
    // PushaaS is off by default: its tag says when it is there.
    let tags = doc["tags"].as_array().unwrap();
    let pushaas = tags.iter().find(|t| t["name"] == "pushaas").unwrap();
    let description = pushaas["description"].as_str().unwrap();
    assert!(
        description.contains("`[pushaas] enabled = true`"),
        "{description}"
    );
}

/// What any OpenAPI tool requires: a unique `operationId` per operation and
/// a description on every response.
#[tokio::test]
async fn openapi_operations_have_unique_ids_and_described_responses() {
    let server = server().await;
    let doc = openapi(&server).await;
    let mut ids = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(id) = op["operationId"].as_str() else {
                panic!("{method} {path} has no operationId");
            };
            if let Some(first) = ids.insert(id.to_owned(), format!("{method} {path}")) {
                panic!("operationId {id} of {method} {path} is also {first}'s");
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                let described = response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty());
                assert!(described, "{method} {path} {status} has no description");
            }
        }
    }
    assert!(ids.len() > 60, "only {} operations", ids.len());
}

#[tokio::test]
async fn pushca_connections_outlive_the_native_lifetime_unless_configured() {
    let short = Duration::from_millis(200);
    let server = TestServer::with(|c| {
        pushca_config(c);
        c.connection.lifetime_min = short;
        c.connection.lifetime_max = short;
        c.connection.close_grace = Duration::ZERO;
    })
    .await;
    let who = client("w", "a", "d", "app");
    let mut pushca = connect(&server, &who).await;
    let mut native = server.ws("/ws?channels=x").await;
    // The native connection reaches its lifetime and is told to reconnect…
    let (code, _) = expect_close(&mut native).await;
    assert_eq!(code, 4200);
    // … while the Pushca one, opened first, still answers.
    send_text(&mut pushca, "p1@@PING").await;
    assert_eq!(next_text(&mut pushca).await, "p1@@RESPONSE");

    // With pushca.connection_lifetime set, Pushca connections are recycled too.
    let server = TestServer::with(|c| {
        pushca_config(c);
        c.pushca.connection_lifetime = short;
    })
    .await;
    let mut pushca = connect(&server, &who).await;
    let (code, _) = expect_close(&mut pushca).await;
    assert_eq!(code, 4200);
}

/// Without a configured URL the request's `Host` names the advertised one,
/// but only a plain `host[:port]`: a token must not go out inside a URL a
/// forged `Host` points elsewhere or breaks.
#[tokio::test]
async fn a_forged_host_gets_no_url() {
    let server = server().await;
    let who = client("w", "a@x", "d1", "APP");
    for (host, ok) in [
        ("push.example:8443", true),
        ("evil.example:1/x?", false),
        ("u@evil.example", false),
    ] {
        let res = reqwest::Client::new()
            .post(server.http("/open-connection"))
            .header("host", host)
            .json(&json!({"client": who}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        if ok {
            assert_eq!(status, 200, "{host}: {body}");
            let url = body["externalAdvertisedUrl"].as_str().unwrap();
            assert!(url.starts_with(&format!("ws://{host}/")), "{url}");
        } else {
            assert_eq!(status, 400, "{host}: {body}");
        }
    }
}
