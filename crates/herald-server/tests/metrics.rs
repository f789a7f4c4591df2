//! `/metrics` over real HTTP: the hub's gauges follow real subscribers, the
//! broker and process metrics are there, and the text is valid exposition.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{Sse, TestServer, WAIT, keep_history};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn scrape(server: &TestServer) -> String {
    let res = reqwest::get(server.http("/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// Checks the text format and returns each sample's value by series
/// (`name` or `name{labels}`).
fn parse(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<&str, (&str, usize)> = HashMap::new();
    let mut helps: HashMap<&str, usize> = HashMap::new();
    let mut samples = HashMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(valid_name(name), "{line}");
            let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
            assert!(kinds.contains(&kind), "{line}");
            types.entry(name).or_insert((kind, 0)).1 += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            *helps.entry(rest.split(' ').next().unwrap()).or_default() += 1;
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect(line);
                for label in labels.split(',') {
                    let (key, v) = label.split_once('=').expect(line);
                    assert!(valid_name(key), "{line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
                name
            }
        };
        assert!(valid_name(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (types.get(base)?.0 == "histogram").then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE before it");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    for (name, (_, count)) in &types {
        assert_eq!(*count, 1, "# TYPE lines for {name}");
        assert_eq!(helps.get(name), Some(&1), "# HELP lines for {name}");
    }
    samples
}

/// Scrapes until `done` holds for the samples, for at most [`WAIT`].
async fn scrape_until(
    server: &TestServer,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = parse(&scrape(server).await);
        if done(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "never got there: {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn gauges_follow_subscribers_and_process_metrics_are_there() {
    let server = TestServer::with(|c| keep_history(c, 10)).await;
    let mut ws = server.ws("/ws?channels=h-ws").await;
    let mut sse = Sse::connect(&server.http("/sse?channels=sse")).await;
    sse.next().await.expect("the stream's first block");
    for n in 0..3 {
        server.publish(json!({"channel": "h-ws", "data": n})).await;
    }

    let m = scrape_until(&server, |m| m["herald_subscriptions"] == 2.0).await;
    assert_eq!(m["herald_channels"], 2.0);
    assert_eq!(m["herald_history_messages"], 3.0);
    assert_eq!(m["herald_broker_ready{kind=\"memory\"}"], 1.0);
    assert!(m["process_resident_memory_bytes"] > 0.0);
    assert!(m["process_open_fds"] > 0.0);
    assert!(m["process_max_fds"] >= m["process_open_fds"]);
    assert!(m["process_threads"] >= 1.0);
    assert!(m["process_start_time_seconds"] > 1e9);

    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);
    scrape_until(&server, |m| m["herald_subscriptions"] == 1.0).await;

    // Answers by class: three publishes, scrapes, one 404.
    let before = parse(&scrape(&server).await);
    let missing = reqwest::get(server.http("/no-such-route")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let after = parse(&scrape(&server).await);
    let class = |m: &HashMap<String, f64>, c: &str| {
        m[&format!("herald_http_responses_total{{class=\"{c}\"}}")]
    };
    assert_eq!(class(&after, "4xx") - class(&before, "4xx"), 1.0);
    // The scrape that read `before` was answered 200 after it was taken.
    assert_eq!(class(&after, "2xx") - class(&before, "2xx"), 1.0);
    assert!(class(&before, "2xx") >= 3.0, "the publishes count");
    assert_eq!(class(&after, "5xx"), 0.0);
}

#[test]
#[should_panic(expected = "# TYPE lines for a")]
fn the_check_refuses_a_name_typed_twice() {
    parse("# HELP a A.\n# TYPE a gauge\na 1\n# TYPE a gauge\n");
}
