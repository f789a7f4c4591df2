//! The whole pipeline against real parts: notifications produced to a real
//! Kafka-compatible broker (tansu), sent to local APNs, FCM and Web Push
//! servers that speak the real protocols, feedback read back from Kafka, dead tokens
//! deleted from a real PostgreSQL, stats received over UDP as StatsD lines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use herald_mobile::provider::apns::ApnsConfig;
use herald_mobile::provider::fcm::FcmConfig;
use herald_mobile::provider::webpush::WebPushConfig;
use herald_mobile::{
    Mobile, MobileConfig, MobileMetrics, Platform, Provider, Push, Rejection, Sent,
};
use herald_testkit::apns::MockApns;
use herald_testkit::fcm::{FcmError, MockFcm};
use herald_testkit::kafka::Kafka;
use herald_testkit::postgres::Postgres;
use herald_testkit::webpush::MockPushService;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound on every wait.
const STEP: Duration = Duration::from_secs(20);
const APNS_TOPIC: &str = "push-game_apns_single";
const GCM_TOPIC: &str = "push-game_gcm_massive";
const APNS_FEEDBACK: &str = "push-game-apns-feedbacks";
const GCM_FEEDBACK: &str = "push-game-gcm-feedbacks";
const WEBPUSH_TOPIC: &str = "push-game_webpush_single";
const WEBPUSH_FEEDBACK: &str = "push-game-webpush-feedbacks";

/// Everything a pipeline talks to.
struct Rig {
    kafka: Kafka,
    pg: Postgres,
    apns: MockApns,
    fcm: MockFcm,
    statsd: UdpSocket,
    producer: FutureProducer,
}

impl Rig {
    async fn start() -> Rig {
        let kafka = Kafka::start(&[APNS_TOPIC, GCM_TOPIC, APNS_FEEDBACK, GCM_FEEDBACK]);
        let pg = Postgres::start();
        for table in ["game_apns", "game_gcm", "game_webpush"] {
            pg.psql(&format!(
                "CREATE TABLE {table} (id serial PRIMARY KEY, user_id text, token text NOT NULL, \
                 region text, locale text, tz text)"
            ));
        }
        let producer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .create()
            .unwrap();
        Rig {
            kafka,
            pg,
            apns: MockApns::start().await,
            fcm: MockFcm::start().await,
            statsd: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            producer,
        }
    }

    fn config(&self, group: &str) -> MobileConfig {
        let mut c = MobileConfig {
            enabled: true,
            attempts: 3,
            retry_backoff: Duration::from_millis(50),
            graceful_timeout: Duration::from_secs(10),
            ..MobileConfig::default()
        };
        c.kafka.brokers = self.kafka.bootstrap();
        c.kafka.group = group.into();
        c.kafka.offset_reset = "earliest".into();
        c.kafka.metadata_refresh = Duration::from_secs(1);
        c.apns = BTreeMap::from([(
            "game".to_owned(),
            ApnsConfig {
                key_file: self.apns.issue_key("KEY123", "TEAM123"),
                key_id: "KEY123".into(),
                team_id: "TEAM123".into(),
                topic: "com.example.game".into(),
                push_type: "alert".into(),
                endpoint: Some(self.apns.url()),
                ca_file: Some(self.apns.ca_pem_path()),
                timeout: STEP,
            },
        )]);
        c.fcm = BTreeMap::from([(
            "game".to_owned(),
            FcmConfig {
                service_account_file: self.fcm.write_service_account("game-project"),
                credentials_json: None,
                project_id: None,
                endpoint: Some(self.fcm.url()),
                ca_file: Some(self.fcm.ca_pem_path()),
                timeout: STEP,
            },
        )]);
        c.invalid_tokens.postgres_url = self.pg.url();
        c.invalid_tokens.flush_interval = Duration::from_millis(100);
        c.statsd.host = self.statsd.local_addr().unwrap().to_string();
        c.statsd.flush_interval = Duration::from_millis(100);
        c
    }

    async fn produce(&self, topic: &str, body: Value) {
        let body = body.to_string();
        self.producer
            .send(FutureRecord::<(), _>::to(topic).payload(&body), STEP)
            .await
            .unwrap();
    }

    /// Inserts device rows; returns nothing, tests read them back with psql.
    fn register(&self, table: &str, tokens: &[&str]) {
        for t in tokens {
            self.pg.psql(&format!(
                "INSERT INTO {table} (user_id, token) VALUES ('user-{t}', '{t}')"
            ));
        }
    }

    fn tokens(&self, table: &str) -> String {
        self.pg
            .psql(&format!("SELECT token FROM {table} ORDER BY token"))
    }

    /// Polls the table until it holds exactly `expected` (no signal crosses
    /// from PostgreSQL; the poll is bounded).
    async fn wait_tokens(&self, table: &str, expected: &str) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let now = self.tokens(table);
            if now == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} holds {now:?}, want {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running pipeline and its stop switch.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: MobileMetrics,
}

impl Running {
    async fn start(config: &MobileConfig) -> Running {
        Self::run(Mobile::start(config).await.unwrap())
    }

    /// A pipeline sending through `providers` instead of the configured ones.
    async fn with_providers(
        config: &MobileConfig,
        providers: HashMap<Platform, Arc<dyn Provider>>,
    ) -> Running {
        Self::run(Mobile::with_providers(config, providers).await.unwrap())
    }

    fn run(mobile: Mobile) -> Running {
        let metrics = mobile.metrics();
        let stop = CancellationToken::new();
        let task = tokio::spawn(mobile.run(stop.clone().cancelled_owned()));
        Running {
            stop,
            task,
            metrics,
        }
    }

    /// Stops the pipeline; returns its metrics as they were when it ended.
    async fn stop(self) -> String {
        self.stop.cancel();
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("the pipeline stops within its graceful timeout")
            .unwrap();
        let mut text = String::new();
        self.metrics.render(&mut text);
        text
    }
}

/// Reads `n` records from a feedback topic, from its start.
async fn feedback(kafka: &Kafka, topic: &str, n: usize) -> Vec<Value> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", format!("reader-{topic}-{}", rand_suffix()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(STEP, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: {} of {n} feedback records", out.len()))
            .unwrap();
        out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
    }
    out
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Sums StatsD counters (`name|#tags` → count) until `want` are all reached.
async fn stats_until(statsd: &UdpSocket, want: &[(&str, u64)]) -> HashMap<String, u64> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut buf = vec![0; 65_536];
    while !want
        .iter()
        .all(|(k, n)| counts.get(*k).copied().unwrap_or(0) >= *n)
    {
        let len = tokio::time::timeout(STEP, statsd.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stats so far: {counts:?}, want {want:?}"))
            .unwrap();
        for line in std::str::from_utf8(&buf[..len]).unwrap().lines() {
            // herald.mobile.sent:2|c|#platform:apns,…
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let mut parts = rest.split('|');
            let (Some(value), Some("c"), Some(tags)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let key = format!("{name}|{tags}");
            *counts.entry(key).or_default() += value.parse::<u64>().unwrap();
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_notifications_are_sent_reported_and_dead_tokens_deleted() {
    let rig = Rig::start().await;
    rig.register("game_apns", &["alive-1", "dead-1", "other-2"]);
    rig.apns.respond("dead-1", 410, "Unregistered");
    let running = Running::start(&rig.config("apns-group")).await;

    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "alive-1", "Payload": {"aps": {"alert": "hello"}},
               "metadata": {"userId": "u1"}, "collapse_id": "news"}),
    )
    .await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "dead-1", "Payload": {"aps": {"alert": "hi"}}}),
    )
    .await;

    let requests = rig.apns.wait_for(2, STEP).await;
    let alive = requests.iter().find(|r| r.token == "alive-1").unwrap();
    assert_eq!(
        alive.body,
        json!({"aps": {"alert": "hello"}, "M": {"userId": "u1"}})
    );
    assert_eq!(alive.header("apns-topic"), Some("com.example.game"));
    assert_eq!(alive.header("apns-collapse-id"), Some("news"));
    assert_eq!(alive.status, 200);

    let mut records = feedback(&rig.kafka, APNS_FEEDBACK, 2).await;
    records.sort_by_key(|r| r["token"].as_str().unwrap_or_default().to_owned());
    assert_eq!(records[0]["token"], "alive-1");
    assert_eq!(records[0]["status"], 200);
    assert!(
        records[0]["apnsID"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(records[0]["metadata"], json!({"userId": "u1"}));
    assert_eq!(records[1]["token"], "dead-1");
    assert_eq!(records[1]["DeviceToken"], "dead-1");
    assert_eq!(records[1]["status"], 410);
    assert_eq!(records[1]["reason"], "Unregistered");
    assert_eq!(records[1]["err"]["key"], "unregistered");
    assert_eq!(records[1]["metadata"]["deleteToken"], true);

    rig.wait_tokens("game_apns", "alive-1\nother-2").await;
    stats_until(
        &rig.statsd,
        &[
            (
                "herald.mobile.sent|#platform:apns,game:game,topic:push-game_apns_single",
                2,
            ),
            ("herald.mobile.ack|#platform:apns,game:game", 1),
            (
                "herald.mobile.failed|#platform:apns,game:game,reason:unregistered",
                1,
            ),
        ],
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_gcm_notifications_go_out_as_fcm_v1() {
    let rig = Rig::start().await;
    rig.register("game_gcm", &["g-alive", "g-dead"]);
    rig.fcm.respond(
        "g-dead",
        FcmError::new(404, "UNREGISTERED", "Requested entity was not found."),
    );
    let running = Running::start(&rig.config("gcm-group")).await;

    rig.produce(
        GCM_TOPIC,
        json!({"to": "g-alive", "message_id": "m-1", "priority": "high", "time_to_live": 600,
               "notification": {"title": "Come play!", "body": "Helena misses you", "sound": "bell"},
               "data": {"level": 7}, "metadata": {"campaign": "c1"}}),
    )
    .await;
    rig.produce(
        GCM_TOPIC,
        json!({"to": "g-dead", "message_id": "m-2", "data": {}}),
    )
    .await;

    let requests = rig.fcm.wait_for(2, STEP).await;
    let alive = requests.iter().find(|r| r.token == "g-alive").unwrap();
    assert_eq!(alive.project, "game-project");
    let message = &alive.body["message"];
    assert_eq!(
        message["notification"],
        json!({"title": "Come play!", "body": "Helena misses you"})
    );
    assert_eq!(message["android"]["notification"]["sound"], "bell");
    assert_eq!(message["android"]["priority"], "high");
    assert_eq!(
        message["data"],
        json!({"level": "7", "campaign": "c1"}),
        "metadata joins data, as the seed does it"
    );
    let ttl = message["android"]["ttl"].as_str().unwrap();
    let secs: u64 = ttl.trim_end_matches('s').parse().unwrap();
    assert!((595..=600).contains(&secs), "{ttl}");

    let mut records = feedback(&rig.kafka, GCM_FEEDBACK, 2).await;
    records.sort_by_key(|r| r["message_id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(records[0]["from"], "g-alive");
    assert_eq!(records[0]["message_type"], "ack");
    assert_eq!(records[1]["from"], "g-dead");
    assert_eq!(records[1]["message_type"], "nack");
    assert_eq!(records[1]["error"], "DEVICE_UNREGISTERED");
    assert_eq!(records[1]["fcm_error"], "UNREGISTERED");
    assert_eq!(records[1]["metadata"]["deleteToken"], true);

    rig.wait_tokens("game_gcm", "g-alive").await;
    running.stop().await;
}

/// The seed runs `pusher apns` and `pusher gcm` as separate processes, often
/// in one consumer group: each must take only its own platform's topics, or
/// the group hands it partitions of the other's whose messages it can only
/// skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_group_take_only_their_platforms_topics() {
    let rig = Rig::start().await;
    let mut apns_only = rig.config("split-group");
    apns_only.fcm.clear();
    let mut gcm_only = rig.config("split-group");
    gcm_only.apns.clear();
    let apns_node = Running::start(&apns_only).await;
    let gcm_node = Running::start(&gcm_only).await;
    for i in 0..5 {
        rig.produce(
            APNS_TOPIC,
            json!({"DeviceToken": format!("a-{i}"), "Payload": {"aps": {}}}),
        )
        .await;
        rig.produce(GCM_TOPIC, json!({"to": format!("g-{i}"), "data": {}}))
            .await;
    }
    let mut apns: Vec<String> = rig
        .apns
        .wait_for(5, STEP)
        .await
        .into_iter()
        .map(|r| r.token)
        .collect();
    let mut fcm: Vec<String> = rig
        .fcm
        .wait_for(5, STEP)
        .await
        .into_iter()
        .map(|r| r.token)
        .collect();
    apns.sort();
    fcm.sort();
    assert_eq!(apns, ["a-0", "a-1", "a-2", "a-3", "a-4"]);
    assert_eq!(fcm, ["g-0", "g-1", "g-2", "g-3", "g-4"]);
    let (apns_metrics, gcm_metrics) = (apns_node.stop().await, gcm_node.stop().await);
    for text in [apns_metrics, gcm_metrics] {
        assert!(
            !text.contains("unknown-app"),
            "a node skipped another's message:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_pushes_are_retried_up_to_the_attempt_limit() {
    let rig = Rig::start().await;
    rig.apns.respond("busy", 429, "TooManyRequests");
    let running = Running::start(&rig.config("retry-group")).await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "busy", "Payload": {"aps": {}}}),
    )
    .await;
    let records = feedback(&rig.kafka, APNS_FEEDBACK, 1).await;
    assert_eq!(records[0]["status"], 429);
    assert_eq!(records[0]["err"]["key"], "too-many-requests");
    assert_eq!(
        records[0]["metadata"].get("deleteToken"),
        None,
        "throttling says nothing about the token"
    );
    let tries = rig
        .apns
        .requests()
        .iter()
        .filter(|r| r.token == "busy")
        .count();
    assert_eq!(tries, 3, "the seed's three attempts");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_unknown_messages_are_skipped_and_the_rest_flows() {
    let rig = Rig::start().await;
    rig.kafka.create_topic("push-stranger_apns_single");
    let running = Running::start(&rig.config("skip-group")).await;
    rig.producer
        .send(
            FutureRecord::<(), _>::to(APNS_TOPIC).payload("{not json"),
            STEP,
        )
        .await
        .unwrap();
    rig.produce(APNS_TOPIC, json!({"Payload": {"aps": {}}}))
        .await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "late", "Payload": {"aps": {}}, "push_expiry": 1_000}),
    )
    .await;
    rig.produce(
        "push-stranger_apns_single",
        json!({"DeviceToken": "stranger", "Payload": {"aps": {}}}),
    )
    .await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "after", "Payload": {"aps": {}}}),
    )
    .await;

    let counts = stats_until(
        &rig.statsd,
        &[
            (
                "herald.mobile.failed|#platform:apns,game:game,reason:invalid-json",
                1,
            ),
            (
                "herald.mobile.failed|#platform:apns,game:game,reason:missing-device-token",
                1,
            ),
            (
                "herald.mobile.failed|#platform:apns,game:game,reason:push-expired",
                1,
            ),
            (
                "herald.mobile.failed|#platform:apns,game:stranger,reason:unknown-app",
                1,
            ),
            ("herald.mobile.ack|#platform:apns,game:game", 1),
        ],
    )
    .await;
    assert_eq!(
        counts.get("herald.mobile.sent|#platform:apns,game:game,topic:push-game_apns_single"),
        Some(&1),
        "only the good notification reached APNs: {counts:?}"
    );
    let tokens: Vec<String> = rig.apns.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens, ["after"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pipeline_resumes_after_what_it_finished() {
    let rig = Rig::start().await;
    let config = rig.config("resume-group");
    let running = Running::start(&config).await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "first", "Payload": {"aps": {}}}),
    )
    .await;
    rig.apns.wait_for(1, STEP).await;
    feedback(&rig.kafka, APNS_FEEDBACK, 1).await;
    running.stop().await;

    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "second", "Payload": {"aps": {}}}),
    )
    .await;
    let running = Running::start(&config).await;
    let requests = rig.apns.wait_for(2, STEP).await;
    let tokens: Vec<&str> = requests.iter().map(|r| r.token.as_str()).collect();
    assert_eq!(tokens, ["first", "second"], "nothing resent, nothing lost");
    // The second run finished its one notification; nothing else arrives.
    feedback(&rig.kafka, APNS_FEEDBACK, 2).await;
    assert_eq!(rig.apns.requests().len(), 2);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_pushes_in_flight_finish_and_commits_them() {
    let rig = Rig::start().await;
    let mut config = rig.config("drain-group");
    // Nothing else to wait for at shutdown: only the pushes hold it up.
    config.invalid_tokens.postgres_url = String::new();
    let running = Running::start(&config).await;
    rig.apns.answer_after(Duration::from_millis(500));
    for token in ["slow-1", "slow-2", "slow-3"] {
        rig.produce(
            APNS_TOPIC,
            json!({"DeviceToken": token, "Payload": {"aps": {}}}),
        )
        .await;
    }
    // All three reached APNs and wait for its answer when the stop comes.
    rig.apns.wait_for(3, STEP).await;
    let metrics = running.stop().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"herald_mobile_acked_total{platform="apns",app="game"} 3"#),
        "the pipeline ended before the answers: {metrics}"
    );

    // Each got its answer and its feedback before the pipeline ended …
    let records = feedback(&rig.kafka, APNS_FEEDBACK, 3).await;
    assert!(records.iter().all(|r| r["status"] == 200), "{records:?}");
    // … and its offset committed: a new run sends none of them again.
    rig.apns.answer_after(Duration::ZERO);
    let running = Running::start(&config).await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "fresh", "Payload": {"aps": {}}}),
    )
    .await;
    feedback(&rig.kafka, APNS_FEEDBACK, 4).await;
    let tokens: Vec<String> = rig.apns.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert_eq!(tokens[3], "fresh");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_pushes_past_the_graceful_timeout_and_kafka_resends_them() {
    let rig = Rig::start().await;
    let mut config = rig.config("cancel-group");
    config.invalid_tokens.postgres_url = String::new();
    config.graceful_timeout = Duration::from_millis(300);
    // Longer than the waits below, so only a cancel can end the request.
    config.apns.get_mut("game").unwrap().timeout = 3 * STEP;
    let running = Running::start(&config).await;
    rig.apns.answer_after(Duration::from_secs(3600));
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "stuck", "Payload": {"aps": {}}}),
    )
    .await;
    rig.apns.wait_for(1, STEP).await;
    let metrics = running.stop().await;
    assert!(
        !metrics.contains("herald_mobile_acked_total{"),
        "nothing was answered: {metrics}"
    );
    // The push was cancelled, not left running: APNs saw it given up.
    rig.apns.wait_abandoned(1, STEP).await;

    // Its offset was not committed, so the next run sends it again.
    rig.apns.answer_after(Duration::ZERO);
    let running = Running::start(&config).await;
    let requests = rig.apns.wait_for(2, STEP).await;
    assert_eq!(requests[1].token, "stuck");
    let records = feedback(&rig.kafka, APNS_FEEDBACK, 1).await;
    assert_eq!(records[0]["status"], 200, "{records:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webpush_notifications_arrive_decrypted_and_gone_subscriptions_are_deleted() {
    let rig = Rig::start().await;
    rig.kafka.create_topic(WEBPUSH_TOPIC);
    rig.kafka.create_topic(WEBPUSH_FEEDBACK);
    let service = MockPushService::start().await;
    let (alive, gone) = (service.subscribe(), service.subscribe());
    service.respond(&gone.endpoint, 410);
    rig.register("game_webpush", &[&alive.endpoint, &gone.endpoint]);
    let mut config = rig.config("webpush-group");
    config.webpush = BTreeMap::from([(
        "game".to_owned(),
        WebPushConfig {
            vapid_key_file: service.issue_vapid_key(),
            subject: "mailto:ops@example.com".into(),
            ca_file: Some(service.ca_pem_path()),
            timeout: STEP,
            // The mock listens on 127.0.0.1.
            allow_private_endpoints: true,
        },
    )]);
    let running = Running::start(&config).await;

    rig.produce(
        WEBPUSH_TOPIC,
        json!({"subscription": alive.to_json(), "payload": {"title": "Your turn", "match": 7},
               "ttl": 600, "urgency": "high", "topic": "match-7", "metadata": {"userId": "u1"}}),
    )
    .await;
    let mut plain = alive.to_json();
    plain["endpoint"] = alive.endpoint.replace("https://", "http://").into();
    rig.produce(
        WEBPUSH_TOPIC,
        json!({"subscription": plain, "payload": "never sent"}),
    )
    .await;
    rig.produce(
        WEBPUSH_TOPIC,
        json!({"subscription": gone.to_json(), "payload": "are you there?",
               "metadata": {"userId": "u2"}}),
    )
    .await;

    let requests = service.wait_for(2, STEP).await;
    let delivered = requests.iter().find(|r| r.status == 201).unwrap();
    let data: Value = serde_json::from_str(delivered.text().unwrap()).unwrap();
    assert_eq!(data, json!({"title": "Your turn", "match": 7}));
    assert_eq!(delivered.header("urgency"), Some("high"));
    assert_eq!(delivered.header("topic"), Some("match-7"));
    let ttl: u64 = delivered.header("ttl").unwrap().parse().unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
    assert_eq!(
        delivered.vapid.as_ref().map(|v| v.aud.as_str()),
        Some(service.url().as_str())
    );

    let mut records = feedback(&rig.kafka, WEBPUSH_FEEDBACK, 2).await;
    records.sort_by_key(|r| r["status"].as_u64());
    assert_eq!(records[0]["endpoint"], alive.endpoint.as_str());
    assert_eq!(records[0]["status"], 201);
    assert!(
        records[0]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with(&service.url()))
    );
    assert_eq!(records[0]["metadata"], json!({"userId": "u1"}));
    assert_eq!(records[1]["endpoint"], gone.endpoint.as_str());
    assert_eq!(records[1]["status"], 410);
    assert_eq!(records[1]["reason"], "Gone");
    assert_eq!(
        records[1]["metadata"],
        json!({"userId": "u2", "deleteToken": true})
    );

    rig.wait_tokens("game_webpush", &alive.endpoint).await;
    let counts = stats_until(
        &rig.statsd,
        &[
            ("herald.mobile.ack|#platform:webpush,game:game", 1),
            (
                "herald.mobile.failed|#platform:webpush,game:game,reason:gone",
                1,
            ),
            (
                "herald.mobile.failed|#platform:webpush,game:game,reason:invalid-endpoint",
                1,
            ),
        ],
    )
    .await;
    assert_eq!(
        counts.get("herald.mobile.sent|#platform:webpush,game:game,topic:push-game_webpush_single"),
        Some(&2),
        "the http:// subscription never reached the service: {counts:?}"
    );
    assert_eq!(service.requests().len(), 2);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_door_keeps_to_mobile_concurrency() {
    let rig = Rig::start().await;
    let mut config = rig.config("http-concurrency-group");
    config.concurrency = 2;
    let mobile = Mobile::start(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Served here, not spawned: it ends with the request, so a failed
    // assertion cannot leave it holding the pipeline past Kafka's end.
    let server = axum::serve(listener, mobile.routes()).into_future();
    // Long enough that unbounded sends would all be in flight together.
    rig.apns.answer_after(Duration::from_millis(100));

    let notifications: Vec<Value> = (0..8)
        .map(|i| {
            json!({"platform": "apns", "app": "game",
                   "notification": {"DeviceToken": format!("d{i}"), "Payload": {"aps": {}}}})
        })
        .collect();
    let request = async {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}{}", herald_mobile::http::PATH))
            .json(&json!({ "notifications": notifications }))
            .timeout(STEP)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    };
    let answer = tokio::select! {
        answer = request => answer,
        ended = server => panic!("the server ended: {ended:?}"),
    };
    drop(mobile);
    let sent: Vec<&Value> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["sent"])
        .collect();
    assert_eq!(sent, [&json!(true); 8], "{answer}");
    assert_eq!(rig.apns.requests().len(), 8);
    assert_eq!(
        rig.apns.peak_in_flight(),
        2,
        "mobile.concurrency bounds the HTTP door's pushes"
    );
}

/// An APNs provider for the app `game` that takes every push but panics on
/// the token `poison`, as a provider bug would; it reports each token it is
/// handed, panicking or not.
struct PanickingApns(mpsc::UnboundedSender<String>);

#[async_trait::async_trait]
impl Provider for PanickingApns {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn serves(&self, app: &str) -> bool {
        app == "game"
    }

    async fn send(&self, push: &Push) -> Result<Sent, Rejection> {
        let _ = self.0.send(push.token.clone());
        if push.token == "poison" {
            panic!("provider bug on a poison push");
        }
        Ok(Sent { id: None })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_push_is_counted_and_skipped_so_its_partition_moves_on() {
    let rig = Rig::start().await;
    let mut config = rig.config("panic-group");
    config.invalid_tokens.postgres_url = String::new();
    let (tx, mut handed) = mpsc::unbounded_channel();
    let providers = HashMap::from([(
        Platform::Apns,
        Arc::new(PanickingApns(tx)) as Arc<dyn Provider>,
    )]);
    let mut next = async || {
        tokio::time::timeout(STEP, handed.recv())
            .await
            .expect("a push reaches the provider")
            .unwrap()
    };

    let running = Running::with_providers(&config, providers.clone()).await;
    for token in ["poison", "after"] {
        rig.produce(
            APNS_TOPIC,
            json!({"DeviceToken": token, "Payload": {"aps": {}}}),
        )
        .await;
    }
    let first = BTreeSet::from([next().await, next().await]);
    assert_eq!(first, BTreeSet::from(["after".into(), "poison".into()]));
    // The stop waits for both pushes' tasks, then commits.
    let metrics = running.stop().await;

    // Both offsets were settled and committed: a new run resends neither.
    // A resend would come before `fresh` on the partition, so its task would
    // be among those the stop waits for; the order tasks run in is not kept.
    let running = Running::with_providers(&config, providers).await;
    rig.produce(
        APNS_TOPIC,
        json!({"DeviceToken": "fresh", "Payload": {"aps": {}}}),
    )
    .await;
    let mut second = Vec::new();
    while second.last().is_none_or(|t| t != "fresh") {
        second.push(next().await);
    }
    running.stop().await;
    while let Ok(token) = handed.try_recv() {
        second.push(token);
    }
    assert_eq!(second, ["fresh"], "settled messages were resent");

    for line in [
        r#"herald_mobile_failed_total{platform="apns",app="game",reason="internal-error"} 1"#,
        r#"herald_mobile_acked_total{platform="apns",app="game"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}
