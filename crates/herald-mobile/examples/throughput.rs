//! Mobile push throughput: N APNs notifications produced to a real Kafka
//! broker (tansu) beforehand, then drained by the pipeline into a local APNs
//! server (HTTP/2 over TLS, provider tokens verified), timed from the start
//! of the pipeline to the last request the server received.
//!
//! `cargo run --release -p herald-mobile --example throughput -- [N] [CONCURRENCY]`
//! (defaults 20000 and 256). Needs the tansu binary `scripts/test` builds.
//! The APNs server runs in this process, so the CPU figure covers both
//! sides of every push; the Kafka broker is a separate process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald_mobile::provider::apns::ApnsConfig;
use herald_mobile::{Mobile, MobileConfig};
use herald_testkit::apns::MockApns;
use herald_testkit::kafka::Kafka;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "push-bench_apns_massive";
/// Bound on every phase.
const LIMIT: Duration = Duration::from_secs(300);

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);

    let kafka = Kafka::start(&[TOPIC, "push-bench-apns-feedbacks"]);
    let apns = MockApns::start().await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("linger.ms", "5")
        .create()
        .expect("a Kafka producer");
    let produce_started = Instant::now();
    let sends = (0..n).map(|i| {
        let body = format!(
            r#"{{"DeviceToken":"{i:064x}","Payload":{{"aps":{{"alert":"message {i}"}}}},"metadata":{{"n":{i}}}}}"#
        );
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::<(), _>::to(TOPIC).payload(&body), LIMIT)
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for result in futures_util::future::join_all(sends).await {
        result.expect("produce");
    }
    let produced_in = produce_started.elapsed();

    let mut config = MobileConfig {
        enabled: true,
        concurrency,
        ..MobileConfig::default()
    };
    config.kafka.brokers = kafka.bootstrap();
    config.kafka.group = "bench".into();
    config.kafka.offset_reset = "earliest".into();
    config.apns = BTreeMap::from([(
        "bench".to_owned(),
        ApnsConfig {
            key_file: apns.issue_key("BENCHKEY", "BENCHTEAM"),
            key_id: "BENCHKEY".into(),
            team_id: "BENCHTEAM".into(),
            topic: "com.example.bench".into(),
            push_type: "alert".into(),
            endpoint: Some(apns.url()),
            ca_file: Some(apns.ca_pem_path()),
            timeout: Duration::from_secs(30),
        },
    )]);
    let mobile = Mobile::start(&config).await.expect("the pipeline starts");
    let stop = CancellationToken::new();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let run = tokio::spawn(mobile.run(stop.clone().cancelled_owned()));
    let received = apns.wait_for(n, LIMIT).await.len();
    let took = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    stop.cancel();
    let _ = tokio::time::timeout(LIMIT, run).await;

    let ok = apns.requests().iter().filter(|r| r.status == 200).count();
    println!(
        "{{\"pushes\": {n}, \"received\": {received}, \"accepted\": {ok}, \"concurrency\": {concurrency}, \
         \"seconds\": {:.3}, \"pushes_per_s\": {:.0}, \"cpu_us_per_push\": {:.1}, \"produce_seconds\": {:.3}}}",
        took.as_secs_f64(),
        received as f64 / took.as_secs_f64(),
        cpu * 1e6 / received.max(1) as f64,
        produced_in.as_secs_f64(),
    );
}
