//! The generator against a real sockudo (Pusher protocol), when it has been built.

mod common;

use common::{assert_exact_fanout, assert_exact_pairs, bench, n, start_sockudo};

#[test]
fn fanout_and_pairs_count_exactly() {
    let server = match start_sockudo() {
        Ok(s) => s,
        Err(reason) => {
            eprintln!("SKIPPED: sockudo could not be started: {reason}");
            return;
        }
    };
    let url = server.url();
    let pid = server.pid.to_string();
    let r = bench(&[
        "fanout",
        "--target",
        "sockudo",
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--subscribers",
        "40",
        "--channels",
        "4",
        "--rate",
        "20",
        "--duration",
        "2s",
    ]);
    assert_exact_fanout(&r, 40, 4, 40);
    assert!(n(&r["server"], "rss_after_kib") > 0, "{r}");
    let r = bench(&[
        "pairs",
        "--target",
        "sockudo",
        "--url",
        &url,
        "--via",
        "http",
        "--clients",
        "20",
        "--rate",
        "100",
        "--duration",
        "2s",
    ]);
    assert_exact_pairs(&r, 20);
    assert_eq!(n(&r, "publishes_ok"), 200, "{r}");
}
