//! Native targeted delivery over real sockets: JWT identity on `/ws`,
//! `POST /api/v1/send` by user and labels, and acknowledgements.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use herald_server::Config;
use herald_testkit::token::{hs256, unix_now};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "native-test-secret";

fn config(c: &mut Config) {
    c.auth.secret = Some(SECRET.into());
    c.delivery.ack_timeout = Duration::from_millis(300);
}

fn jwt(secret: &str, sub: &str, labels: Value, exp_offset: i64) -> String {
    let exp = unix_now() as i64 + exp_offset;
    hs256(secret, &json!({"sub": sub, "labels": labels, "exp": exp}))
}

async fn user(server: &TestServer, sub: &str, labels: Value) -> Ws {
    server
        .ws(&format!("/ws?token={}", jwt(SECRET, sub, labels, 600)))
        .await
}

async fn send(server: &TestServer, body: Value) -> (u16, Value) {
    let res = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(server.http("/api/v1/send"))
            .json(&body)
            .send(),
    )
    .await
    .expect("send timed out")
    .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

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

#[tokio::test]
async fn send_reaches_connections_by_user_and_labels() {
    let server = TestServer::with(config).await;
    let mut phone = user(&server, "alice", json!({"device": "phone"})).await;
    let mut laptop = user(&server, "alice", json!({"device": "laptop"})).await;
    let mut bob = user(&server, "bob", json!({"device": "phone"})).await;

    let (status, reply) = send(
        &server,
        json!({"filter": {"user": "alice"}, "data": {"n": 1}, "event": "note", "id": "n-1"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["matched"].as_u64(), reply["delivered"].as_u64()),
        (Some(2), Some(2))
    );
    for ws in [&mut phone, &mut laptop] {
        let m = next_json(ws).await;
        assert_eq!(
            m,
            json!({"type": "message", "id": "n-1", "event": "note", "data": {"n": 1}})
        );
    }

    let (_, reply) = send(
        &server,
        json!({"filter": {"labels": {"device": "phone"}, "exclude": [{"user": "alice", "labels": {"device": "phone"}}]}, "data": "x"}),
    )
    .await;
    assert_eq!(reply["delivered"], 1);
    assert_eq!(next_json(&mut bob).await["data"], "x");

    let (_, reply) = send(&server, json!({"filter": {"user": "carol"}, "data": 1})).await;
    assert_eq!(
        (reply["matched"].as_u64(), reply["delivered"].as_u64()),
        (Some(0), Some(0))
    );

    // Channel subscriptions keep working on an identified connection.
    let mut both = server
        .ws(&format!(
            "/ws?channels=news&token={}",
            jwt(SECRET, "dave", json!({}), 600)
        ))
        .await;
    server.publish(json!({"channel": "news", "data": 5})).await;
    assert_eq!(next_json(&mut both).await["channel"], "news");
    send(&server, json!({"filter": {"user": "dave"}, "data": 6})).await;
    assert_eq!(next_json(&mut both).await["data"], 6);
}

#[tokio::test]
async fn find_any_spreads_over_matches() {
    let server = TestServer::with(config).await;
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(user(&server, &format!("w{i}"), json!({"role": "worker"})).await);
    }
    for i in 0..30 {
        let (_, r) = send(
            &server,
            json!({"filter": {"labels": {"role": "worker"}, "find_any": true}, "data": i}),
        )
        .await;
        assert_eq!(r["delivered"], 1);
    }
    send(
        &server,
        json!({"filter": {"labels": {"role": "worker"}}, "data": "end"}),
    )
    .await;
    for ws in &mut workers {
        let mut n = 0;
        while next_json(ws).await["data"] != "end" {
            n += 1;
        }
        assert_eq!(n, 10);
    }
}

#[tokio::test]
async fn ack_is_200_when_acknowledged_408_when_not_404_when_nobody() {
    let server = TestServer::with(config).await;
    let mut ws = user(&server, "alice", json!({})).await;

    let url = server.http("/api/v1/send");
    let request = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(url)
            .json(&json!({"filter": {"user": "alice"}, "data": "confirm me", "id": "a-1", "ack": true}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    });
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["id"].as_str(), m["ack"].as_bool()),
        (Some("a-1"), Some(true))
    );
    let reply = command(&mut ws, json!({"id": 1, "cmd": "ack", "message_id": "a-1"})).await;
    assert_eq!(reply, json!({"id": 1, "result": {"acked": true}}));
    let (status, body) = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["acked"].as_bool(), body["attempts"].as_u64()),
        (Some(true), Some(1))
    );

    // Acking twice, or an id never sent, is a harmless no-op.
    let reply = command(&mut ws, json!({"id": 2, "cmd": "ack", "message_id": "a-1"})).await;
    assert_eq!(reply["result"]["acked"], false);

    let (status, body) = send(
        &server,
        json!({"filter": {"user": "alice"}, "data": 1, "ack": true, "timeout_ms": 100}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (408, Some("ack_timeout"))
    );
    let (status, body) = send(
        &server,
        json!({"filter": {"user": "nobody"}, "data": 1, "ack": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_connected"))
    );
    let (status, _) = send(
        &server,
        json!({"filter": {"user": "alice"}, "data": 1, "ack": true, "timeout_ms": 0}),
    )
    .await;
    assert_eq!(status, 400);

    // One acked, one timed out (one attempt each, the default), one unmatched.
    let acks = |outcome: &str| format!("herald_targeted_acks_total{{outcome=\"{outcome}\"}}");
    assert_eq!(server.metric(&acks("acked")).await, 1.0);
    assert_eq!(server.metric(&acks("timed_out")).await, 1.0);
    assert_eq!(server.metric(&acks("not_connected")).await, 1.0);
    assert_eq!(server.metric("herald_targeted_attempts_total").await, 3.0);
    assert_eq!(server.metric("herald_targeted_delivered_total").await, 2.0);
    assert_eq!(server.metric("herald_targeted_unmatched_total").await, 1.0);
}

#[tokio::test]
async fn retries_carry_the_same_id_and_a_late_ack_counts() {
    let server = TestServer::with(|c| {
        config(c);
        c.delivery.ack_attempts = 2;
        c.delivery.ack_backoff = Duration::from_millis(10);
    })
    .await;
    let mut ws = user(&server, "alice", json!({})).await;
    let url = server.http("/api/v1/send");
    let request = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(url)
            .json(&json!({"filter": {"user": "alice"}, "data": 1, "id": "r-1", "ack": true}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    });
    let first = next_json(&mut ws).await;
    let second = next_json(&mut ws).await;
    assert_eq!(first, second, "a retry is the same message, same id");
    command(&mut ws, json!({"cmd": "ack", "message_id": "r-1"})).await;
    let (status, body) = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["attempts"], 2);
}

#[tokio::test]
async fn a_late_ack_of_an_earlier_send_confirms_no_later_send_of_its_id() {
    let server = TestServer::with(config).await;
    let mut bob = user(&server, "bob", json!({})).await;
    let mut dave = user(&server, "dave", json!({})).await;
    let (status, _) = send(
        &server,
        json!({"filter": {"user": "bob"}, "data": 1, "id": "same", "ack": true, "timeout_ms": 100}),
    )
    .await;
    assert_eq!(status, 408);
    assert_eq!(next_json(&mut bob).await["id"], "same");

    let url = server.http("/api/v1/send");
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"filter": {"user": "dave"}, "data": 2, "id": "same", "ack": true, "timeout_ms": 1000}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(next_json(&mut dave).await["data"], 2);
    // Bob owed "same" to the first send, which is over: his ack confirms nothing.
    let reply = command(
        &mut bob,
        json!({"id": 1, "cmd": "ack", "message_id": "same"}),
    )
    .await;
    assert_eq!(reply["result"]["acked"], false);
    let status = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(status, 408, "dave never acknowledged");
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = TestServer::with(config).await;
    let base = format!("ws://{}/ws?token=", server.addr);
    assert_eq!(
        refused(&format!("{base}{}", jwt("forged", "eve", json!({}), 600))).await,
        401
    );
    assert_eq!(
        refused(&format!("{base}{}", jwt(SECRET, "eve", json!({}), -600))).await,
        401
    );
    assert_eq!(refused(&format!("{base}garbage")).await, 401);
    let (res_status, body) = {
        let res = reqwest::Client::new()
            .get(server.http(&format!(
                "/ws?token={}",
                jwt("forged", "eve", json!({}), 600)
            )))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (res_status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // Authorization: Bearer works too.
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", jwt(SECRET, "erin", json!({}), 600))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    send(&server, json!({"filter": {"user": "erin"}, "data": "hi"})).await;
    assert_eq!(next_json(&mut ws).await["data"], "hi");
    ws.send(Message::Close(None)).await.unwrap();

    // Without an [auth] key, a token cannot be verified: refused, not ignored.
    let open = TestServer::start().await;
    let url = format!(
        "ws://{}/ws?token={}",
        open.addr,
        jwt(SECRET, "x", json!({}), 600)
    );
    assert_eq!(refused(&url).await, 401);
}

#[tokio::test]
async fn pushca_and_native_connections_share_the_directory() {
    let server = TestServer::with(|c| {
        config(c);
        c.pushca.secret_key = Some("pushca-test-secret".into());
    })
    .await;
    let res: Value = fetch_json(reqwest::Client::new()
        .post(server.http("/open-connection"))
        .json(&json!({"client": {"workSpaceId": "w", "accountId": "acc", "deviceId": "d", "applicationId": "a"}}))).await;
    let (mut pushca, _) =
        tokio_tungstenite::connect_async(res["externalAdvertisedUrl"].as_str().unwrap())
            .await
            .unwrap();
    let (_, reply) = send(
        &server,
        json!({"filter": {"labels": {"account": "acc"}}, "data": "from native"}),
    )
    .await;
    assert_eq!(reply["delivered"], 1);
    assert_eq!(next_text(&mut pushca).await, "from native");
}

/// Creates a key pair with openssl: (PKCS#8 private PEM, public PEM path).
fn key_pair(dir: &std::path::Path, kind: &str) -> (Vec<u8>, std::path::PathBuf) {
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
    match kind {
        "ec" => {
            run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "ec.pem",
            ]);
            run(&["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub.pem"]);
            (
                std::fs::read(dir.join("ec.pem")).unwrap(),
                dir.join("ec.pub.pem"),
            )
        }
        _ => {
            run(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa.pem",
            ]);
            run(&["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"]);
            (
                std::fs::read(dir.join("rsa.pem")).unwrap(),
                dir.join("rsa.pub.pem"),
            )
        }
    }
}

#[tokio::test]
async fn asymmetric_tokens_rs256_and_es256() {
    let dir = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (kind, alg) in [
        ("rsa", jsonwebtoken::Algorithm::RS256),
        ("ec", jsonwebtoken::Algorithm::ES256),
    ] {
        let (private, public) = key_pair(&dir, kind);
        let server = TestServer::with(|c| {
            c.auth.algorithm = alg;
            c.auth.public_key_path = Some(public.clone());
        })
        .await;
        let exp = unix_now() + 600;
        let key = match kind {
            "ec" => jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
        };
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &json!({"sub": "erin", "exp": exp}),
            &key,
        )
        .unwrap();
        let mut ws = server.ws(&format!("/ws?token={token}")).await;
        let (status, reply) =
            send(&server, json!({"filter": {"user": "erin"}, "data": kind})).await;
        assert_eq!(
            (status, reply["delivered"].as_u64()),
            (200, Some(1)),
            "{alg:?}"
        );
        assert_eq!(next_json(&mut ws).await["data"], kind);
        // An HMAC token, even one keyed with the public key, is refused:
        // only the configured algorithm counts.
        let forged = jwt(
            &String::from_utf8_lossy(&std::fs::read(&public).unwrap()),
            "erin",
            json!({}),
            600,
        );
        let url = format!("ws://{}/ws?token={forged}", server.addr);
        assert_eq!(refused(&url).await, 401, "{alg:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn sse_connections_are_identified_and_ack_over_http() {
    let server = TestServer::with(config).await;
    let token = jwt(SECRET, "carol", json!({"device": "browser"}), 600);
    // Targeted messages only: no channel needed with a token.
    let mut sse = Sse::connect(&server.http(&format!("/sse?token={token}"))).await;
    let identified = sse.next_data().await;
    assert_eq!(identified.event.as_deref(), Some("identified"));
    let receiver = serde_json::from_str::<Value>(&identified.data.unwrap()).unwrap()["receiver"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = send(
        &server,
        json!({"filter": {"user": "carol"}, "data": {"n": 1}, "id": "s-1", "event": "note"}),
    )
    .await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(1)));
    let ev = sse.next_data().await;
    assert_eq!((ev.event.as_deref(), ev.id), (Some("note"), None));
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data.unwrap()).unwrap(),
        json!({"type": "message", "id": "s-1", "event": "note", "data": {"n": 1}})
    );

    // An acknowledged send: the SSE client acks over HTTP with its key.
    let url = server.http("/api/v1/send");
    let request = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(url)
            .json(&json!({"filter": {"labels": {"device": "browser"}}, "data": 2, "id": "s-2", "ack": true}))
            .send()
            .await
            .unwrap();
        res.status().as_u16()
    });
    let ev = sse.next_data().await;
    let m: Value = serde_json::from_str(&ev.data.unwrap()).unwrap();
    assert_eq!(
        (m["id"].as_str(), m["ack"].as_bool()),
        (Some("s-2"), Some(true))
    );
    let ack = |receiver: String, id: &str| {
        let url = server.http("/api/v1/ack");
        let body = json!({"receiver": receiver, "id": id});
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let res = reqwest::Client::new()
        .post(server.http("/api/v1/ack"))
        .body(r#"{"receiver": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a malformed ack is refused");
    let forged = receiver.replacen('.', "0.", 1);
    let (status, body) = ack(forged, "s-2").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        ack(receiver.clone(), "s-2").await,
        (200, json!({"acked": true}))
    );
    assert_eq!(
        tokio::time::timeout(WAIT, request).await.unwrap().unwrap(),
        200
    );
    assert_eq!(ack(receiver, "s-2").await, (200, json!({"acked": false})));

    // A bad token is refused before the stream starts.
    let res = reqwest::get(server.http("/sse?channels=a&token=nope"))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_a_user_and_no_other() {
    let server = TestServer::with(config).await;
    let mut phone = user(&server, "alice", json!({"device": "phone"})).await;
    let mut laptop = user(&server, "alice", json!({"device": "laptop"})).await;
    let mut bob = user(&server, "bob", json!({})).await;
    let token = jwt(SECRET, "alice", json!({}), 600);
    let mut stream = Sse::connect(&server.http(&format!("/sse?token={token}"))).await;
    // A head longer than the streams' own first read is hyper's: its body
    // loop says goodbye too.
    let padded = reqwest::Client::new()
        .get(server.http(&format!("/sse?token={token}")))
        .header("x-pad", "p".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        padded.headers()["transfer-encoding"],
        "chunked",
        "served by hyper"
    );
    let mut by_hyper = Sse::from_response(padded);
    let disconnect = |body: Value| {
        reqwest::Client::new()
            .post(server.http("/api/v1/disconnect"))
            .json(&body)
            .send()
    };

    // One device first, by label.
    let res = disconnect(json!({"filter": {"user": "alice", "labels": {"device": "phone"}}}))
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"disconnected": 1})
    );
    assert_eq!(expect_close(&mut phone).await.0, 4009);

    // Then the rest of her connections, the SSE stream included.
    let res = disconnect(json!({"filter": {"user": "alice"}}))
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"disconnected": 3})
    );
    assert_eq!(expect_close(&mut laptop).await.0, 4009);
    for sse in [&mut stream, &mut by_hyper] {
        loop {
            let ev = sse
                .next()
                .await
                .expect("the disconnected event before the end");
            if ev.event.as_deref() == Some("disconnected") {
                break;
            }
        }
        assert_eq!(sse.next().await, None, "the stream ends after it");
    }

    // Bob is still served.
    let (status, reply) = send(&server, json!({"filter": {"user": "bob"}, "data": "hi"})).await;
    assert_eq!((status, &reply["delivered"]), (200, &json!(1)), "{reply}");
    assert_eq!(next_json(&mut bob).await["data"], "hi");

    // A filter must name someone: an empty one would empty the server.
    for bad in [
        json!({"filter": {}}),
        json!({"filter": {"user": "bob", "find_any": true}}),
        json!({"filter": {"user": "bob"}, "extra": 1}),
    ] {
        let res = disconnect(bad.clone()).await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn presence_counts_a_channels_connections_by_user() {
    let server = TestServer::with(config).await;
    let alice = jwt(SECRET, "alice", json!({}), 600);
    let mut phone = server.ws(&format!("/ws?channels=room&token={alice}")).await;
    let _laptop = server.ws(&format!("/ws?channels=room&token={alice}")).await;
    let bob = jwt(SECRET, "bob", json!({}), 600);
    let _bob = Sse::connect(&server.http(&format!("/sse?channels=room&token={bob}"))).await;
    let _anonymous = server.ws("/ws?channels=room").await;
    let _elsewhere = server
        .ws(&format!(
            "/ws?channels=hall&token={}",
            jwt(SECRET, "carol", json!({}), 600)
        ))
        .await;
    let presence = || async {
        let res = reqwest::get(server.http("/api/v1/channels/room/presence"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()
    };
    assert_eq!(
        presence().await,
        json!({
            "channel": "room",
            "connections": 4,
            "users": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}],
            "anonymous": 1,
        })
    );
    phone.send(Message::Close(None)).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while presence().await["users"][0]["connections"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's phone never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let empty = reqwest::get(server.http("/api/v1/channels/nobody/presence"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(empty["connections"], 0, "{empty}");
}

#[tokio::test]
async fn presence_events_tell_subscribers_who_joins_and_leaves() {
    let server = TestServer::with(|c| {
        config(c);
        c.presence.events = vec!["room:*".into()];
    })
    .await;
    let token = |sub: &str| jwt(SECRET, sub, json!({}), 600);
    let event =
        |change: &str, user: &str| json!({"type": change, "channel": "room:1", "user": user});
    // Alice's own join reaches her too.
    let mut alice = server
        .ws(&format!("/ws?channels=room:1&token={}", token("alice")))
        .await;
    assert_eq!(next_json(&mut alice).await, event("join", "alice"));
    // An anonymous stream is told, but announces nothing itself: alice's
    // next event is bob's.
    let mut anonymous = Sse::connect(&server.http("/sse?channels=room:1")).await;
    let mut bob = server
        .ws(&format!("/ws?channels=hall&token={}", token("bob")))
        .await;
    let reply = command(
        &mut bob,
        json!({"id": 1, "cmd": "subscribe", "channel": "room:1"}),
    )
    .await;
    assert_eq!(
        reply["result"]["channels"],
        json!(["hall", "room:1"]),
        "{reply}"
    );
    assert_eq!(next_json(&mut alice).await, event("join", "bob"));
    let told = anonymous.next_data().await;
    assert_eq!(told.event.as_deref(), Some("join"));
    let data: Value = serde_json::from_str(told.data.as_deref().unwrap()).unwrap();
    assert_eq!(data, json!({"channel": "room:1", "user": "bob"}));

    // Unsubscribing leaves; closing the connection leaves too.
    command(
        &mut bob,
        json!({"id": 2, "cmd": "unsubscribe", "channels": ["room:1"]}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await, event("leave", "bob"));
    command(
        &mut bob,
        json!({"id": 3, "cmd": "subscribe", "channel": "room:1"}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await, event("join", "bob"));
    bob.send(Message::Close(None)).await.unwrap();
    assert_eq!(next_json(&mut alice).await, event("leave", "bob"));

    // Channels presence.events does not name announce nothing; events are
    // not messages, so history and offsets never see them.
    let mut hall = server
        .ws(&format!("/ws?channels=hall&token={}", token("carol")))
        .await;
    server
        .ws(&format!("/ws?channels=hall&token={}", token("dave")))
        .await;
    server
        .publish(json!({"channel": "hall", "data": "first"}))
        .await;
    assert_eq!(next_json(&mut hall).await["data"], "first");
    let published = server
        .publish(json!({"channel": "room:1", "data": "msg"}))
        .await;
    assert_eq!(published["offset"], 1, "{published}");
    assert_eq!(next_json(&mut alice).await["data"], "msg");
}

/// A token for `sub` issued at `iat` (Unix seconds; `None`: no `iat`).
fn jwt_issued(sub: &str, iat: Option<i64>) -> String {
    let mut claims = json!({"sub": sub, "exp": unix_now() + 600});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    hs256(SECRET, &claims)
}

#[tokio::test]
async fn revoking_a_user_closes_their_connections_and_refuses_older_tokens() {
    let server = TestServer::with(config).await;
    let now = unix_now() as i64;
    let old = jwt_issued("alice", Some(now - 60));
    let mut alice = server.ws(&format!("/ws?token={old}")).await;
    let mut bob = server
        .ws(&format!("/ws?token={}", jwt_issued("bob", Some(now - 60))))
        .await;
    let revoke = |body: Value| {
        reqwest::Client::new()
            .post(server.http("/api/v1/revoke"))
            .json(&body)
            .send()
    };

    let res = revoke(json!({"user": "alice", "until": now}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"user": "alice", "until": now, "disconnected": 1})
    );
    assert_eq!(expect_close(&mut alice).await.0, 4009);

    // Older tokens, and tokens that do not say when they were issued, are
    // refused on every route that reads a token; newer ones work.
    let ws = |token: &str| format!("ws://{}/ws?token={token}", server.addr);
    assert_eq!(refused(&ws(&old)).await, 401);
    assert_eq!(refused(&ws(&jwt_issued("alice", None))).await, 401);
    let sse = reqwest::get(server.http(&format!("/sse?channels=a&token={old}")))
        .await
        .unwrap();
    assert_eq!(sse.status(), 401);
    assert_eq!(json_of(sse).await["error"]["code"], "token_revoked");
    let fresh = jwt_issued("alice", Some(now + 1));
    server.ws(&format!("/ws?token={fresh}")).await;
    // Bob was neither closed nor refused.
    let (status, reply) = send(&server, json!({"filter": {"user": "bob"}, "data": 1})).await;
    assert_eq!((status, &reply["delivered"]), (200, &json!(1)), "{reply}");
    assert_eq!(next_json(&mut bob).await["data"], 1);
    server
        .ws(&format!("/ws?token={}", jwt_issued("bob", Some(now - 60))))
        .await;

    // A second in the future keeps the user out until then: a ban.
    let res = revoke(json!({"user": "alice", "until": now + 3600}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(refused(&ws(&fresh)).await, 401);
    // And an earlier second does not lift it.
    revoke(json!({"user": "alice", "until": now}))
        .await
        .unwrap();
    assert_eq!(refused(&ws(&fresh)).await, 401);

    for bad in [
        json!({"user": ""}),
        json!({}),
        json!({"user": "a", "extra": 1}),
        json!({"user": "a", "until": u64::MAX}),
    ] {
        let res = revoke(bad.clone()).await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
}

/// A revocation another node wrote (its disconnect lost, or this node's
/// connection opened before it reread them) closes this node's connections
/// of that user once it is read, and only theirs.
#[tokio::test]
async fn a_revocation_learned_from_the_broker_closes_the_users_connections_here() {
    let server = herald_server::Server::bind({
        let mut c = TestServer::config();
        config(&mut c);
        c
    })
    .await
    .unwrap();
    let broker = server.state().engine.broker().clone();
    let server = TestServer::run(server);
    let now = unix_now() as i64;
    let mut alice = server
        .ws(&format!(
            "/ws?token={}",
            jwt_issued("alice", Some(now - 60))
        ))
        .await;
    let mut bob = server
        .ws(&format!("/ws?token={}", jwt_issued("bob", Some(now - 60))))
        .await;
    // Alice logged in again, with a token the revocation does not cover.
    let mut again = server
        .ws(&format!("/ws?token={}", jwt_issued("alice", Some(now + 1))))
        .await;
    // As another node writes it.
    let record = herald_core::Record {
        id: format!("{now}:alice"),
        value: now.to_string().into(),
        created_ms: 0,
    };
    assert!(
        broker
            .create_record("revocation", record, Some(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert_eq!(expect_close(&mut alice).await.0, 4009);
    let (status, reply) = send(&server, json!({"filter": {"user": "bob"}, "data": 1})).await;
    assert_eq!((status, &reply["delivered"]), (200, &json!(1)), "{reply}");
    assert_eq!(next_json(&mut bob).await["data"], 1);
    let (status, reply) = send(&server, json!({"filter": {"user": "alice"}, "data": 2})).await;
    assert_eq!((status, &reply["delivered"]), (200, &json!(1)), "{reply}");
    assert_eq!(
        next_json(&mut again).await["data"],
        2,
        "the newer token stays"
    );
}
