//! The generator against a real sockudo (Pusher protocol), when it has been built.

mod common;

use common::{assert_exact_fanout, assert_exact_pairs, bench, n, start_sockudo, started};

#[test]
fn fanout_and_pairs_count_exactly() {
    let server = started!("sockudo", start_sockudo());
    let (url, pid) = (server.url(), server.pid);
    let r = bench(&format!(
        "fanout --target sockudo --url {url} --server-pid {pid} \
         --subscribers 40 --channels 4 --rate 20 --duration 2s"
    ));
    assert_exact_fanout(&r, 40, 4, 40);
    assert!(n(&r["server"], "rss_after_kib") > 0, "{r}");
    let r = bench(&format!(
        "pairs --target sockudo --url {url} --via http --clients 20 --rate 100 --duration 2s"
    ));
    assert_exact_pairs(&r, 20, 200);
}
