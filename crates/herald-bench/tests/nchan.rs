//! The generator against a real Nchan: counts must be exact.

mod common;

use common::{assert_exact_fanout, assert_exact_pairs, bench, n, start_nchan, started};

#[test]
fn fanout_websocket_counts_exactly() {
    let server = started!("Nchan", start_nchan());
    let (url, pid) = (server.url(), server.pid);
    // 40 msg/s for 2 s = 80 messages over 5 channels of 10 subscribers each.
    let r = bench(&format!(
        "fanout --target nchan --url {url} --server-pid {pid} \
         --subscribers 50 --channels 5 --rate 40 --duration 2s"
    ));
    assert_exact_fanout(&r, 50, 5, 80);
    assert!(r["server"]["cpu_seconds"].as_f64().is_some(), "{r}");
    assert!(n(&r["server"], "rss_after_kib") > 0, "{r}");
}

#[test]
fn fanout_eventsource_counts_exactly() {
    let server = started!("Nchan", start_nchan());
    let url = server.url();
    let r = bench(&format!(
        "fanout --target nchan-sse --url {url} \
         --subscribers 30 --channels 3 --rate 30 --duration 2s"
    ));
    assert_exact_fanout(&r, 30, 3, 60);
}

#[test]
fn fanout_over_worker_processes_merges_exactly() {
    let server = started!("Nchan", start_nchan());
    let url = server.url();
    let r = bench(&format!(
        "fanout --target nchan --url {url} --procs 3 \
         --subscribers 60 --channels 4 --rate 20 --duration 2s"
    ));
    assert_exact_fanout(&r, 60, 4, 40);
    // Three workers plus the coordinator.
    assert_eq!(n(&r, "generator_processes"), 4, "{r}");
}

#[test]
fn pairs_over_http_delivers_each_message_once() {
    let server = started!("Nchan", start_nchan());
    let url = server.url();
    let r = bench(&format!(
        "pairs --target nchan --url {url} --via http --clients 20 --rate 200 --duration 2s"
    ));
    assert_exact_pairs(&r, 20, 400);
}

#[test]
fn idle_and_connect_report_server_memory() {
    let server = started!("Nchan", start_nchan());
    let (url, pid) = (server.url(), server.pid);
    let r = bench(&format!(
        "idle --target nchan --url {url} --server-pid {pid} --connections 200 --duration 1s"
    ));
    assert_eq!(n(&r, "connections"), 200, "{r}");
    assert_eq!(n(&r, "alive_at_end"), 200, "{r}");
    assert!(
        r["server"]["rss_per_connection_kib"].as_f64().is_some(),
        "{r}"
    );
    let r = bench(&format!(
        "connect --target nchan --url {url} --procs 2 --connections 300"
    ));
    assert_eq!(n(&r, "connections"), 300, "{r}");
    assert_eq!(n(&r, "connection_errors"), 0, "{r}");
    assert!(
        r["connects_per_second"].as_f64().is_some_and(|v| v > 0.0),
        "{r}"
    );
}
