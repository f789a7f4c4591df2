//! The generator against a real Herald (`herald serve`): counts must be exact.

mod common;

use common::{assert_exact_fanout, assert_exact_pairs, bench, n, start_herald, started};

#[test]
fn fanout_websocket_counts_exactly() {
    let server = started!("Herald", start_herald());
    let (url, pid) = (server.url(), server.pid);
    let r = bench(&format!(
        "fanout --target herald --url {url} --server-pid {pid} \
         --subscribers 50 --channels 5 --rate 40 --duration 2s"
    ));
    assert_exact_fanout(&r, 50, 5, 80);
    assert!(n(&r["server"], "rss_after_kib") > 0, "{r}");
}

/// A publisher that cannot keep its schedule (one publish in flight, far more messages per
/// second than one at a time allows) sends late, and its messages count from when they were
/// due: the wait the server's slow answers caused is in the latencies, not left out.
#[test]
fn a_late_publisher_counts_latency_from_the_schedule() {
    let server = started!("Herald", start_herald());
    let url = server.url();
    let r = bench(&format!(
        "fanout --target herald --url {url} --publish-concurrency 1 \
         --subscribers 2 --channels 1 --rate 20000 --duration 250ms"
    ));
    assert_exact_fanout(&r, 2, 1, 5000);
    let warned = r["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .is_some_and(|w| w.contains("behind its schedule"))
    });
    assert!(warned, "{r}");
    // A publish every 50 µs, one at a time: no HTTP round trip is that short, and the last
    // were due long before they went.
    assert!(r["latency_ms"]["max_ms"].as_f64().unwrap() > 100.0, "{r}");
}

#[test]
fn fanout_sse_counts_exactly() {
    let server = started!("Herald", start_herald());
    let url = server.url();
    let r = bench(&format!(
        "fanout --target herald-sse --url {url} \
         --subscribers 30 --channels 3 --rate 30 --duration 2s"
    ));
    assert_exact_fanout(&r, 30, 3, 60);
}

#[test]
fn pairs_over_websocket_and_http_deliver_each_message_once() {
    let server = started!("Herald", start_herald());
    let url = server.url();
    for via in ["ws", "ws --no-reply", "http"] {
        let r = bench(&format!(
            "pairs --target herald --url {url} --via {via} --clients 20 --rate 200 --duration 2s"
        ));
        assert_exact_pairs(&r, 20, 400);
        assert_eq!(r["params"]["no_reply"], via.ends_with("reply"), "{r}");
    }
}

#[test]
fn pairs_over_pushca_deliver_each_message_once_with_and_without_ack() {
    let server = started!("Herald", start_herald());
    let url = server.url();
    for (via, ack) in [("ws", false), ("ws", true), ("http", false), ("http", true)] {
        let flag = if ack { "--ack" } else { "" };
        let r = bench(&format!(
            "pairs --target pushca --url {url} --via {via} {flag} \
             --clients 20 --rate 200 --duration 2s"
        ));
        assert_exact_pairs(&r, 20, 400);
        assert_eq!(r["params"]["via"], via, "{r}");
        // Over WebSocket every send is acknowledged to its sender; over HTTP only with --ack.
        let answered = via == "ws" || ack;
        assert_eq!(n(&r, "acks"), if answered { 400 } else { 0 }, "{r}");
        assert_eq!(
            r["ack_latency_ms"]["count"].as_u64(),
            answered.then_some(400),
            "{r}"
        );
        assert_eq!(n(&r, "ack_failures"), 0, "{r}");
        assert_eq!(n(&r, "unacked"), 0, "{r}");
    }
}

#[test]
fn fanout_max_rate_search_finds_a_sustainable_rate() {
    let server = started!("Herald", start_herald());
    let url = server.url();
    // Two worker processes, so the step commands cross the coordinator's pipes too. A generous
    // p99 limit: this checks the search's mechanics, not the machine's latency.
    let r = bench(&format!(
        "fanout --target herald --url {url} --procs 2 --subscribers 20 --rate max \
         --rate-start 20 --step-duration 1s --max-steps 4 --max-p99 500ms --duration 30s"
    ));
    let search = &r["search"];
    let steps = search["steps"].as_array().expect("steps");
    assert!((1..=4).contains(&steps.len()), "{r}");
    let max_rate = search["max_rate"].as_f64().expect("a sustainable rate");
    assert!(max_rate > 0.0, "{r}");
    let best_step = steps
        .iter()
        .filter(|s| s["sustainable"] == true)
        .map(|s| s["rate"].as_f64().expect("rate"))
        .fold(0.0, f64::max);
    assert_eq!(best_step, max_rate, "{r}");
    for s in steps.iter().filter(|s| s["sustainable"] == true) {
        assert_eq!(s["lost"], 0, "{s}");
    }
    // The report is that step's: every accepted message reached all 20 subscribers once.
    assert_eq!(r["params"]["rate"].as_f64(), Some(max_rate), "{r}");
    assert_eq!(n(&r, "measured_connections"), 20, "{r}");
    assert!(n(&r, "publishes_ok") > 0, "{r}");
    assert_eq!(n(&r, "deliveries"), n(&r, "publishes_ok") * 20, "{r}");
    assert_eq!(n(&r, "lost"), 0, "{r}");
    assert_eq!(n(&r, "duplicated"), 0, "{r}");
    assert_eq!(n(&r, "disconnects"), 0, "{r}");
}
