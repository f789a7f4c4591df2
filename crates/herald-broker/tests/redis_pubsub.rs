//! Two Herald nodes linked by one Redis server.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use herald_broker::{HistoryLimits, HistoryPolicy};
use herald_core::{Broker, Publication};
use support::{Node, RedisServer, STEP, command, config, eventually, key, recv_n};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_reaches_subscribers_on_another() {
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    assert!(a.broker.is_ready() && b.broker.is_ready());

    let ch = key("news");
    let outbox = b.subscribe(&ch).await;
    let first = a.publish(&ch, r#"{"n":1}"#).await;
    let second = a.publish(&ch, r#"{"n":2}"#).await;
    assert_eq!((first.offset, second.offset), (1, 2));
    assert_eq!(first.epoch, second.epoch);

    let got = recv_n(&outbox, 2, STEP).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].offset, first.offset);
    assert_eq!(got[0].epoch, &*first.epoch);
    assert_eq!(got[0].data, r#"{"n":1}"#);
    assert_eq!(got[1].offset, second.offset);

    // The publishing node sees the same sequence once it subscribes too.
    let local = a.subscribe(&ch).await;
    let third = b.publish(&ch, "3").await;
    assert_eq!(third.offset, 3);
    let got = recv_n(&local, 1, STEP).await;
    assert_eq!((got[0].offset, got[0].data.as_str()), (3, "3"));
    assert_eq!(recv_n(&outbox, 1, STEP).await[0].offset, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_two_nodes_get_distinct_increasing_offsets() {
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let ch = key("hot");
    let outbox = b.subscribe(&ch).await;

    const PER_NODE: usize = 200;
    let publish_all = |node: &Node, tag: &'static str| {
        let engine = node.engine.clone();
        let ch = ch.clone();
        async move {
            let calls = (0..PER_NODE).map(|i| {
                let engine = engine.clone();
                let ch = ch.clone();
                async move {
                    let p = herald_core::Publication::new(format!("\"{tag}{i}\"").into());
                    engine.publish(&ch, p).await.expect("publish").offset
                }
            });
            futures_util::future::join_all(calls).await
        }
    };
    let (from_a, from_b) = tokio::time::timeout(
        STEP,
        futures_util::future::join(publish_all(&a, "a"), publish_all(&b, "b")),
    )
    .await
    .expect("publishes timed out");

    let all: HashSet<u64> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(all.len(), 2 * PER_NODE, "offsets are unique");
    assert_eq!(all, (1..=2 * PER_NODE as u64).collect(), "and gapless");

    // Subscribers see them in offset order.
    let got = recv_n(&outbox, 2 * PER_NODE, STEP).await;
    let offsets: Vec<u64> = got.iter().map(|g| g.offset).collect();
    assert_eq!(offsets, (1..=2 * PER_NODE as u64).collect::<Vec<_>>());
}

/// A channel's publish times grow with its offsets, in Redis' clock: not
/// the publishing node's, which may be ahead or behind, and never the same
/// millisecond twice, however many nodes publish at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_times_grow_with_offsets_in_redis_time() {
    let redis = RedisServer::start();
    let mut cfg = config(vec![redis.url()]);
    cfg.history = HistoryPolicy::new(|_| {
        Some(HistoryLimits {
            max_len: 10_000,
            ttl: Duration::from_secs(60),
        })
    });
    let a = Node::start(cfg.clone()).await;
    let b = Node::start(cfg).await;
    let ch = key("timed");

    // Nodes whose clocks are an hour ahead and an hour behind.
    let now = herald_core::message::now_ms();
    for (node, skew) in [(&a, now + 3_600_000), (&b, now - 3_600_000)] {
        let mut p = Publication::new("\"skewed\"".into());
        p.time_ms = skew;
        tokio::time::timeout(STEP, node.engine.publish(&ch, p))
            .await
            .unwrap()
            .unwrap();
    }
    const PER_NODE: usize = 200;
    let publish_all = |node: &Node| {
        let calls = (0..PER_NODE).map(|i| {
            let engine = node.engine.clone();
            let ch = ch.clone();
            async move {
                let p = Publication::new(format!("{i}").into());
                engine.publish(&ch, p).await.expect("publish")
            }
        });
        futures_util::future::join_all(calls)
    };
    tokio::time::timeout(
        STEP,
        futures_util::future::join(publish_all(&a), publish_all(&b)),
    )
    .await
    .expect("publishes timed out");

    let h = a.broker.history(&ch, Some(0), 10_000).await.unwrap();
    assert_eq!(h.messages.len(), 2 * PER_NODE + 2);
    let times: Vec<u64> = h.messages.iter().map(|m| m.publication.time_ms).collect();
    let after = herald_core::message::now_ms();
    assert!(
        times[0] + 1000 >= now && times[0] <= after,
        "in Redis' clock, not the node's: {} not in {now}..={after}",
        times[0]
    );
    for (w, m) in times.windows(2).zip(&h.messages[1..]) {
        assert!(w[0] < w[1], "offset {}: {} after {}", m.offset, w[1], w[0]);
    }
    assert!(
        *times.last().unwrap() <= after + 1000,
        "the channel's clock runs at most a little ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_kept_per_policy_and_read_by_offset() {
    let redis = RedisServer::start();
    let mut cfg = config(vec![redis.url()]);
    cfg.history = HistoryPolicy::new(|ch| {
        ch.name().starts_with("kept").then_some(HistoryLimits {
            max_len: 5,
            ttl: Duration::from_secs(60),
        })
    });
    let a = Node::start(cfg).await;

    let kept = key("kept:1");
    let mut last = None;
    for i in 1..=8 {
        last = Some(a.publish(&kept, &i.to_string()).await);
    }
    let last = last.unwrap();
    assert_eq!(last.offset, 8);

    let h = tokio::time::timeout(STEP, a.broker.history(&kept, None, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.epoch, last.epoch);
    assert_eq!(h.offset, 8);
    let offsets: Vec<u64> = h.messages.iter().map(|m| m.offset).collect();
    assert_eq!(
        offsets,
        vec![4, 5, 6, 7, 8],
        "bounded to max_len, oldest first"
    );
    assert_eq!(h.messages[0].data(), b"4");
    assert_eq!(h.messages[0].publication.id.len(), 36, "id survives");

    let newest = a.broker.history(&kept, None, 2).await.unwrap();
    let offsets: Vec<u64> = newest.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![7, 8], "limit without since takes the newest");

    let since = a.broker.history(&kept, Some(5), 2).await.unwrap();
    let offsets: Vec<u64> = since.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![6, 7], "since is exclusive, limit caps");
    assert!(
        a.broker
            .history(&kept, Some(8), 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let none = a.broker.history(&kept, None, 0).await.unwrap();
    assert!(
        none.messages.is_empty() && none.offset == 8,
        "limit 0 reads only the position"
    );

    // Without history the offset still advances, but nothing is stored.
    let plain = key("plain");
    a.publish(&plain, "1").await;
    assert_eq!(a.publish(&plain, "2").await.offset, 2);
    let h = a.broker.history(&plain, None, 10).await.unwrap();
    assert!(h.messages.is_empty());
    assert_eq!(h.offset, 2);

    // An unknown channel has no epoch.
    let h = a.broker.history(&key("never"), None, 10).await.unwrap();
    assert!(h.epoch.is_empty() && h.offset == 0 && h.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_unsubscribe_leaves_redis_lazily_and_a_return_cancels_it() {
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let ch = key("lazy");
    let pubsub = b.broker.pubsub_channel(&ch);
    let numsub = || {
        let reply = command(redis.port, &["PUBSUB", "NUMSUB", &pubsub]).unwrap();
        reply
            .lines()
            .last()
            .unwrap()
            .trim_start_matches(':')
            .parse::<u32>()
            .unwrap()
    };

    let outbox = b.subscribe(&ch).await;
    assert_eq!(numsub(), 1);

    // Leave and come back within the delay: Redis never sees it.
    b.engine.unsubscribe(&ch, &outbox).await;
    assert!(b.broker.is_subscribed(&ch), "unsubscribe is deferred");
    let outbox = b.subscribe(&ch).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // two delays: nothing must happen
    assert_eq!(numsub(), 1);
    a.publish(&ch, "still").await;
    assert_eq!(recv_n(&outbox, 1, STEP).await[0].data, "still");

    // Leave for good: after the delay the node unsubscribes in Redis and
    // a publish reaches nobody.
    b.engine.unsubscribe(&ch, &outbox).await;
    assert!(
        eventually(STEP, || numsub() == 0).await,
        "unsubscribed in redis"
    );
    assert!(!b.broker.is_subscribed(&ch));
    let p = a.publish(&ch, "gone").await;
    assert_eq!(p.subscribers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_report_cluster_wide_subscriber_counts() {
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let c = Node::start(config(vec![redis.url()])).await;
    let ch = key("counted");
    let _b1 = b.subscribe(&ch).await;
    let _b2 = b.subscribe(&ch).await;
    let c1 = c.subscribe(&ch).await;

    // Counts are written asynchronously; wait until all three show up.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let p = a.publish(&ch, "x").await;
        if p.subscribers == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "count stuck at {}",
            p.subscribers
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.engine.unsubscribe(&ch, &c1).await;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let p = a.publish(&ch, "x").await;
        if p.subscribers == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "count stuck at {}",
            p.subscribers
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_can_message_each_other_directly() {
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.broker.on_node_message(move |bytes| {
        let _ = tx.send(bytes);
    });
    assert!(a.broker.node_alive(b.broker.node_id()).await.unwrap());
    assert!(!a.broker.node_alive("nobody").await.unwrap());
    let delivered = a
        .broker
        .send_to_node(b.broker.node_id(), "hello".into())
        .await
        .unwrap();
    assert!(delivered);
    let got = tokio::time::timeout(STEP, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert!(!a.broker.send_to_node("nobody", "x".into()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_subscribes_are_batched_and_all_work() {
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let channels: Vec<_> = (0..600).map(|i| key(&format!("many-{i}"))).collect();
    let outboxes = tokio::time::timeout(
        STEP,
        futures_util::future::join_all(channels.iter().map(|ch| b.subscribe(ch))),
    )
    .await
    .expect("subscribes timed out");
    let channels_in_redis = command(redis.port, &["PUBSUB", "CHANNELS", "t:{app/many-*"]).unwrap();
    assert_eq!(channels_in_redis.matches("many-").count(), 600);
    for (ch, outbox) in channels.iter().zip(&outboxes).step_by(37) {
        let p = a.publish(ch, "1").await;
        let got = recv_n(outbox, 1, STEP).await;
        assert_eq!(got[0].offset, p.offset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_leases_are_shared_and_expire_in_redis_time() {
    use herald_core::Record;
    let redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let record = |id: &str, created_ms: u64| Record {
        id: id.into(),
        value: format!("value of {id}: with colons").into(),
        created_ms,
    };
    let (a, b) = (&a.broker, &b.broker);

    assert!(
        a.create_record("k", record("late", 20), None)
            .await
            .unwrap()
    );
    assert!(
        b.create_record("k", record("early", 10), None)
            .await
            .unwrap()
    );
    assert!(
        !b.create_record("k", record("late", 30), None)
            .await
            .unwrap()
    );
    assert!(
        b.create_record("other", record("late", 1), None)
            .await
            .unwrap()
    );
    let short = Some(Duration::from_millis(200));
    assert!(
        a.create_record("k", record("brief", 5), short)
            .await
            .unwrap()
    );

    let got = b.record("k", "late").await.unwrap().unwrap();
    assert_eq!(
        (got.created_ms, &got.value[..]),
        (20, &b"value of late: with colons"[..])
    );
    let ids = |records: Vec<Record>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(a.records("k").await.unwrap()),
        ["brief", "early", "late"]
    );

    // "brief" expires by Redis' clock, then a new one may take its id.
    let mut expired = false;
    for _ in 0..50 {
        if b.record("k", "brief").await.unwrap().is_none() {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(expired, "brief never expired");
    assert_eq!(ids(b.records("k").await.unwrap()), ["early", "late"]);
    assert!(
        b.create_record("k", record("brief", 6), None)
            .await
            .unwrap()
    );

    assert!(b.delete_record("k", "late").await.unwrap());
    assert!(!a.delete_record("k", "late").await.unwrap());
    assert_eq!(a.record("k", "late").await.unwrap(), None);

    // One holder per lease until it lapses.
    let lease = Duration::from_millis(300);
    assert!(a.lease("job", lease).await.unwrap());
    assert!(!b.lease("job", lease).await.unwrap());
    assert!(b.lease("other-job", lease).await.unwrap());
    let mut taken = false;
    for _ in 0..50 {
        if b.lease("job", lease).await.unwrap() {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "the lease never lapsed");
    assert!(!a.lease("job", lease).await.unwrap());
}
