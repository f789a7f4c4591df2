//! The generator against a real Herald (`herald serve`): counts must be exact.

mod common;

use common::{assert_exact_fanout, assert_exact_pairs, bench, n, start_herald};

macro_rules! herald_or_skip {
    () => {
        match start_herald() {
            Ok(s) => s,
            Err(reason) => {
                eprintln!("SKIPPED: Herald could not be started: {reason}");
                return;
            }
        }
    };
}

#[test]
fn fanout_websocket_counts_exactly() {
    let server = herald_or_skip!();
    let url = server.url();
    let pid = server.pid.to_string();
    let r = bench(&[
        "fanout",
        "--target",
        "herald",
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--subscribers",
        "50",
        "--channels",
        "5",
        "--rate",
        "40",
        "--duration",
        "2s",
    ]);
    assert_exact_fanout(&r, 50, 5, 80);
    assert!(n(&r["server"], "rss_after_kib") > 0, "{r}");
}

#[test]
fn fanout_sse_counts_exactly() {
    let server = herald_or_skip!();
    let url = server.url();
    let r = bench(&[
        "fanout",
        "--target",
        "herald-sse",
        "--url",
        &url,
        "--subscribers",
        "30",
        "--channels",
        "3",
        "--rate",
        "30",
        "--duration",
        "2s",
    ]);
    assert_exact_fanout(&r, 30, 3, 60);
}

#[test]
fn pairs_over_websocket_and_http_deliver_each_message_once() {
    let server = herald_or_skip!();
    let url = server.url();
    for via in ["ws", "http"] {
        let r = bench(&[
            "pairs",
            "--target",
            "herald",
            "--url",
            &url,
            "--via",
            via,
            "--clients",
            "20",
            "--rate",
            "200",
            "--duration",
            "2s",
        ]);
        assert_exact_pairs(&r, 20);
        assert_eq!(n(&r, "publishes_ok"), 400, "{r}");
    }
}
