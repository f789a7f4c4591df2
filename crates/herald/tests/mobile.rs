//! The binary runs the mobile pipeline beside the server when `[mobile]` is
//! enabled: a notification produced to Kafka (a real tansu broker), or posted
//! to `/api/v1/push`, reaches a local APNs server that speaks Apple's
//! protocol, and SIGTERM stops both.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{HERALD, Herald};
use herald_testkit::apns::MockApns;
use herald_testkit::kafka::Kafka;
use herald_testkit::postgres::Postgres;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const STEP: Duration = Duration::from_secs(20);

/// Produces one APNs notification for `token` to app `shop`'s topic.
async fn produce_to_shop(kafka: &Kafka, token: &str, alert: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .unwrap();
    let body = json!({"DeviceToken": token, "Payload": {"aps": {"alert": alert}}}).to_string();
    producer
        .send(
            FutureRecord::<(), _>::to("push-shop_apns_single").payload(&body),
            STEP,
        )
        .await
        .unwrap();
}

/// A Herald with mobile push on, app `shop` sending its APNs pushes to
/// `apns`, with `extra` settings on top. It runs on one core, so on one
/// thread; `herald pusher` below covers the multi-threaded runtime.
fn herald_for_shop(kafka: &Kafka, apns: &MockApns, extra: &[(&str, &str)]) -> Herald {
    let key = apns.issue_key("SHOPKEY", "SHOPTEAM");
    let (key, ca) = (key.to_str().unwrap(), apns.ca_pem_path());
    let (brokers, url) = (kafka.bootstrap(), apns.url());
    let mut env = vec![
        ("HERALD_MOBILE__ENABLED", "true"),
        ("HERALD_MOBILE__KAFKA__BROKERS", brokers.as_str()),
        ("HERALD_MOBILE__APNS__SHOP__KEY_FILE", key),
        ("HERALD_MOBILE__APNS__SHOP__KEY_ID", "SHOPKEY"),
        ("HERALD_MOBILE__APNS__SHOP__TEAM_ID", "SHOPTEAM"),
        ("HERALD_MOBILE__APNS__SHOP__TOPIC", "com.example.shop"),
        ("HERALD_MOBILE__APNS__SHOP__ENDPOINT", url.as_str()),
        ("HERALD_MOBILE__APNS__SHOP__CA_FILE", ca.to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    Herald::start_on_one_core(&env)
}

/// A PostgreSQL whose `shop_apns` token table holds `rows`
/// (`('user', 'token'), …`).
fn shop_tokens(rows: &str) -> Postgres {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE shop_apns (id serial PRIMARY KEY, user_id text, token text NOT NULL)");
    pg.psql(&format!(
        "INSERT INTO shop_apns (user_id, token) VALUES {rows}"
    ));
    pg
}

/// [`herald_for_shop`], deleting dead tokens from `pg` within 100 ms.
fn herald_deleting_for_shop(kafka: &Kafka, apns: &MockApns, pg: &Postgres) -> Herald {
    let pg_url = pg.url();
    herald_for_shop(
        kafka,
        apns,
        &[
            ("HERALD_MOBILE__INVALID_TOKENS__POSTGRES_URL", &pg_url),
            ("HERALD_MOBILE__INVALID_TOKENS__FLUSH_INTERVAL", "100ms"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_notifications_reach_apns_through_the_binary() {
    let kafka = Kafka::start(&["push-shop_apns_single", "push-shop-apns-feedbacks"]);
    let apns = MockApns::start().await;
    let mut herald = herald_for_shop(
        &kafka,
        &apns,
        &[("HERALD_MOBILE__KAFKA__OFFSET_RESET", "earliest")],
    );

    produce_to_shop(&kafka, "device-1", "sale!").await;

    let requests = apns.wait_for(1, STEP).await;
    assert_eq!(requests[0].token, "device-1");
    assert_eq!(requests[0].body, json!({"aps": {"alert": "sale!"}}));
    assert_eq!(requests[0].header("apns-topic"), Some("com.example.shop"));
    // The server still serves beside the pipeline.
    let health = reqwest::get(format!("http://{}/health/live", herald.addr))
        .await
        .unwrap();
    assert!(health.status().is_success());
    // Its counters are on the server's /metrics, once APNs' answer is read
    // (a poll, bounded: the answer reaches the mock before the counter moves).
    let acked = "herald_mobile_acked_total{platform=\"apns\",app=\"shop\"} 1";
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let text = reqwest::get(format!("http://{}/metrics", herald.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == acked) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no {acked} in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let status = herald.terminate();
    assert!(status.success(), "herald exited with {status}");
}

#[test]
fn mobile_settings_are_checked() {
    let out = Command::new(HERALD)
        .args(["config", "default"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[mobile.kafka]"), "{text}");
    assert!(text.contains("table = \"{app}_{platform}\""), "{text}");

    let check = |name: &str, value: &str| {
        Command::new(HERALD)
            .args(["config", "check"])
            .env(name, value)
            .output()
            .unwrap()
    };
    let out = check("HERALD_MOBILE__ENABLED", "true");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs credentials"), "{stderr}");

    let out = check("HERALD_MOBILE__KAFKA__SURPRISE", "1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("surprise"), "{stderr}");

    let out = check(
        "HERALD_MOBILE__INVALID_TOKENS__POSTGRES_URL",
        "postgres://pusher:s3cret@db/push",
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("postgres://<redacted>@db/push"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_push_api_sends_through_the_pipeline() {
    let kafka = Kafka::start(&["push-shop-apns-feedbacks"]);
    let apns = MockApns::start().await;
    apns.respond("gone", 410, "Unregistered");
    let herald = herald_for_shop(
        &kafka,
        &apns,
        &[
            ("HERALD_AUTH__API_KEYS", r#"["publisher-key-0123456789"]"#),
            ("HERALD_PUSHAPI__ENABLED", "false"),
        ],
    );
    let push = |body: serde_json::Value, key: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/api/v1/push", herald.addr))
            .json(&body)
            .timeout(STEP);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    let apns_note =
        |token: &str| json!({"DeviceToken": token, "Payload": {"aps": {"alert": "hi"}}});
    let body = json!({"notifications": [
        {"platform": "apns", "app": "shop", "notification": apns_note("alive")},
        {"platform": "apns", "app": "shop", "notification": apns_note("gone")},
        {"platform": "apns", "app": "elsewhere", "notification": apns_note("x")},
        {"platform": "apns", "app": "shop", "notification": {"Payload": {}}},
    ]});

    let res = push(body.clone(), None).await.unwrap();
    assert_eq!(res.status(), 401, "the publisher key guards it");
    let res = push(body, Some("publisher-key-0123456789")).await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value = res.json().await.unwrap();
    let r = &answer["results"];
    assert_eq!(
        (&r[0]["sent"], &r[0]["token"]),
        (&json!(true), &json!("alive"))
    );
    assert!(
        r[0]["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{answer}"
    );
    assert_eq!(
        (
            &r[1]["sent"],
            &r[1]["status"],
            &r[1]["reason"],
            &r[1]["invalid_token"]
        ),
        (
            &json!(false),
            &json!(410),
            &json!("Unregistered"),
            &json!(true)
        )
    );
    assert_eq!(r[2]["reason"], "unknown-app");
    assert_eq!(r[3]["reason"], "missing-device-token");
    let tokens: Vec<String> = apns.requests().into_iter().map(|q| q.token).collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");

    for (bad, why) in [
        (json!({"notifications": []}), "1 to 1000"),
        (
            json!({"notifications": [{"platform": "sms", "app": "shop", "notification": {}}]}),
            "not apns, gcm or webpush",
        ),
        (json!({"notes": []}), "invalid body"),
    ] {
        let res = push(bad, Some("publisher-key-0123456789")).await.unwrap();
        assert_eq!(res.status(), 400);
        let err: serde_json::Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "bad_request");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(why),
            "{err}"
        );
    }

    // `/openapi.json` lists the route, keyed like every publishing route.
    let doc: serde_json::Value = reqwest::get(format!("http://{}/openapi.json", herald.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/api/v1/push"]["post"];
    assert_eq!(op["security"], json!([{"publisher_key": []}, {}]), "{op}");
    let body = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/MobilePushRequest", "{op}");
    let item = &doc["components"]["schemas"]["MobileNotification"];
    assert_eq!(item["required"], json!(["platform", "app", "notification"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_pusher_apns_runs_on_the_seeds_configuration() {
    let kafka = Kafka::start(&["push-shop_apns_single"]);
    let apns = MockApns::start().await;
    let key = apns.issue_key("SEEDKEY", "SEEDTEAM");
    let dir = std::env::temp_dir().join(format!("herald-pusher-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("default.yaml");
    std::fs::write(
        &yaml,
        format!(
            "gracefulShutdownTimeout: 5\n\
             apns:\n  apps: shop\n  certs:\n    shop:\n      authKeyPath: {}\n      \
             keyID: SEEDKEY\n      teamID: SEEDTEAM\n      topic: com.example.shop\n\
             queue:\n  brokers: nowhere:1\n  group: seed-pushers\n  offsetResetStrategy: earliest\n\
             feedback:\n  reporters: []\n",
            key.display()
        ),
    )
    .unwrap();
    let mut pusher = Command::new(HERALD)
        .args([
            "--config",
            yaml.to_str().unwrap(),
            "pusher",
            "apns",
            "--json",
        ])
        // The seed's variables override its file, Herald's override both.
        .env("PUSHER_QUEUE_BROKERS", kafka.bootstrap())
        .env("HERALD_MOBILE__APNS__SHOP__ENDPOINT", apns.url())
        .env("HERALD_MOBILE__APNS__SHOP__CA_FILE", apns.ca_pem_path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    produce_to_shop(&kafka, "seed-device", "from the seed").await;
    let requests = apns.wait_for(1, STEP).await;
    assert_eq!(requests[0].token, "seed-device");
    assert_eq!(requests[0].header("apns-topic"), Some("com.example.shop"));

    let _ = Command::new("kill")
        .args(["-TERM", &pusher.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + STEP;
    let status = loop {
        if let Some(status) = pusher.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pusher ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(dir).unwrap();

    // A seed configuration missing credentials is refused, naming them.
    let out = Command::new(HERALD)
        .args(["pusher", "gcm"])
        .env("PUSHER_GCM_APPS", "shop")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("firebaseCredentials.shop"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_users_reach_every_device_in_their_token_table() {
    let kafka = Kafka::start(&["push-shop-apns-feedbacks"]);
    let pg =
        shop_tokens("('u1', 'phone-1'), ('u1', 'tablet-1'), ('u2', 'old-2'), ('u9', 'other-9')");
    let apns = MockApns::start().await;
    apns.respond("old-2", 410, "Unregistered");
    let herald = herald_deleting_for_shop(&kafka, &apns, &pg);
    let push = |body: serde_json::Value| {
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/push", herald.addr))
            .json(&body)
            .timeout(STEP)
            .send()
    };
    let res = push(json!({"notifications": [{
        "platform": "apns", "app": "shop", "users": ["u1", "u2", "u3"],
        "notification": {"Payload": {"aps": {"alert": "your order shipped"}}},
    }]}))
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value = res.json().await.unwrap();
    let summary: Vec<(String, String, bool)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap_or_default().to_owned(),
                r["token"]
                    .as_str()
                    .unwrap_or(r["reason"].as_str().unwrap_or_default())
                    .to_owned(),
                r["sent"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("u1".into(), "phone-1".into(), true),
            ("u1".into(), "tablet-1".into(), true),
            ("u2".into(), "old-2".into(), false),
            ("u3".into(), "no-tokens".into(), false),
        ]
    );
    let mut tokens: Vec<String> = apns.requests().into_iter().map(|r| r.token).collect();
    tokens.sort();
    assert_eq!(
        tokens,
        ["old-2", "phone-1", "tablet-1"],
        "u9's device is not u1's"
    );
    assert!(
        apns.requests()
            .iter()
            .all(|r| r.body == json!({"aps": {"alert": "your order shipped"}}))
    );
    // The dead device leaves the table, as from Kafka (a bounded poll: no
    // signal crosses from PostgreSQL).
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = pg.psql("SELECT token FROM shop_apns ORDER BY token");
        if left == "other-9\nphone-1\ntablet-1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "table holds {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let res = push(json!({"notifications": [{
        "platform": "webpush", "app": "shop", "users": ["u1"], "notification": {},
    }]}))
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
}

/// APNs answers BadDeviceToken for every token of the other environment,
/// and a wrong topic condemns every token too: such refusals delete a
/// token only once the app has had a push accepted, so a server started
/// with `production` or `topic` wrong does not empty the token table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refused_before_any_push_was_accepted_are_kept() {
    let kafka = Kafka::start(&["push-shop-apns-feedbacks"]);
    let pg = shop_tokens("('u1', 'first-refused'), ('u2', 'fine'), ('u3', 'refused-later')");
    let apns = MockApns::start().await;
    apns.respond("first-refused", 400, "BadDeviceToken");
    apns.respond("refused-later", 400, "BadDeviceToken");
    let herald = herald_deleting_for_shop(&kafka, &apns, &pg);
    let push = |token: &str| {
        let body = json!({"notifications": [{"platform": "apns", "app": "shop",
            "notification": {"DeviceToken": token, "Payload": {"aps": {"alert": "hi"}}}}]});
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/push", herald.addr))
            .json(&body)
            .timeout(STEP)
            .send()
    };
    let reason = async |token: &str| -> serde_json::Value {
        let res = push(token).await.unwrap();
        assert_eq!(res.status(), 200);
        let answer: serde_json::Value = res.json().await.unwrap();
        answer["results"][0]["reason"].clone()
    };
    assert_eq!(reason("first-refused").await, "BadDeviceToken");
    assert_eq!(reason("fine").await, json!(null));
    assert_eq!(reason("refused-later").await, "BadDeviceToken");
    // Deletes go in order: once the later token is gone, the first one's
    // fate is known (a bounded poll: no signal crosses from PostgreSQL).
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = pg.psql("SELECT token FROM shop_apns ORDER BY token");
        if !left.contains("refused-later") {
            assert_eq!(left, "fine\nfirst-refused");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "table holds {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A push over HTTP still in flight when SIGTERM comes is answered, and its
/// dead token still leaves the table: the pipeline's last flush waits for
/// the server's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_in_flight_at_shutdown_still_deletes_its_dead_token() {
    let kafka = Kafka::start(&["push-shop-apns-feedbacks"]);
    let pg = shop_tokens("('u1', 'gone'), ('u2', 'kept')");
    let apns = MockApns::start().await;
    apns.respond("gone", 410, "Unregistered");
    apns.answer_after(Duration::from_millis(1_500));
    let mut herald = herald_deleting_for_shop(&kafka, &apns, &pg);
    let body = json!({"notifications": [{"platform": "apns", "app": "shop",
        "notification": {"DeviceToken": "gone", "Payload": {"aps": {"alert": "bye"}}}}]});
    let url = format!("http://{}/api/v1/push", herald.addr);
    let pushed = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&body)
            .timeout(STEP)
            .send()
            .await
            .unwrap()
    });
    // APNs has the push and holds its answer: the request is in flight.
    apns.wait_for(1, STEP).await;
    let status = tokio::task::spawn_blocking(move || herald.terminate())
        .await
        .unwrap();
    assert!(status.success(), "herald exited with {status}");
    let res = pushed.await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["results"][0]["reason"], "Unregistered");
    assert_eq!(
        pg.psql("SELECT token FROM shop_apns ORDER BY token"),
        "kept"
    );
}
