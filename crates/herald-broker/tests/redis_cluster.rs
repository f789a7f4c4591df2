//! Two Herald nodes on a 3-master Redis Cluster: sharded pub/sub, one slot
//! per channel, channels spread over every master.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use herald_broker::redis::slot;
use herald_broker::{HistoryLimits, HistoryPolicy};
use herald_core::{Broker, ChannelKey};
use support::{Node, RedisCluster, STEP, command, config, eventually, key, recv_n};

/// The master owning `slot` after `redis-cli --cluster create` of three.
fn master_of(slot: u16) -> usize {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

/// One channel per master.
fn spread_channels(node: &Node) -> Vec<ChannelKey> {
    let mut found: Vec<Option<ChannelKey>> = vec![None, None, None];
    for i in 0.. {
        let ch = key(&format!("room-{i}"));
        let m = master_of(slot(node.broker.pubsub_channel(&ch).as_bytes()));
        found[m].get_or_insert(ch);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_exchange_messages_on_every_master() {
    let cluster = RedisCluster::start();
    let mut cfg = config(cluster.urls());
    cfg.cluster = None; // detected
    cfg.history = HistoryPolicy::all(HistoryLimits {
        max_len: 10,
        ttl: Duration::from_secs(60),
    });
    let a = Node::start(cfg.clone()).await;
    cfg.node_id = herald_broker::redis::random_node_id();
    let b = Node::start(cfg).await;
    assert!(a.broker.is_cluster() && b.broker.is_cluster());

    let channels = spread_channels(&b);
    let mut outboxes = Vec::new();
    for ch in &channels {
        outboxes.push(b.subscribe(ch).await);
    }
    for (i, ch) in channels.iter().enumerate() {
        let p1 = a.publish(ch, &format!("\"{i}-1\"")).await;
        let p2 = b.publish(ch, &format!("\"{i}-2\"")).await;
        assert_eq!((p1.offset, p2.offset), (1, 2));
        assert_eq!(p1.epoch, p2.epoch);
        let got = recv_n(&outboxes[i], 2, STEP).await;
        assert_eq!(got.len(), 2, "channel {ch:?}: {got:?}");
        assert_eq!((got[0].offset, got[0].epoch.as_str()), (1, &*p1.epoch));
        assert_eq!(got[1].data, format!("\"{i}-2\""));

        let h = a.broker.history(ch, Some(0), 10).await.unwrap();
        let offsets: Vec<u64> = h.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![1, 2]);
        assert_eq!(h.epoch, p1.epoch);
    }

    // Concurrent publishers on one channel still share one sequence.
    let ch = &channels[1];
    let calls = (0..100).map(|i| {
        let engine = if i % 2 == 0 {
            a.engine.clone()
        } else {
            b.engine.clone()
        };
        let ch = ch.clone();
        async move {
            let p = herald_core::Publication::new("1".into());
            engine.publish(&ch, p).await.expect("publish").offset
        }
    });
    let offsets: HashSet<u64> = tokio::time::timeout(STEP, futures_util::future::join_all(calls))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(offsets, (3..=102).collect());
    let got = recv_n(&outboxes[1], 100, STEP).await;
    let seen: Vec<u64> = got.iter().map(|g| g.offset).collect();
    assert_eq!(seen, (3..=102).collect::<Vec<_>>(), "in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_unsubscribes_lazily_on_the_owning_master() {
    let cluster = RedisCluster::start();
    let a = Node::start(config(cluster.urls())).await;
    let b = Node::start(config(cluster.urls())).await;
    for ch in spread_channels(&b) {
        let pubsub = b.broker.pubsub_channel(&ch);
        let port = cluster.servers[master_of(slot(pubsub.as_bytes()))].port;
        let shard_subscribers = || {
            let reply = command(port, &["PUBSUB", "SHARDNUMSUB", &pubsub]).unwrap();
            let n = reply.lines().last().unwrap().trim_start_matches(':');
            n.parse::<u32>().unwrap()
        };

        let outbox = b.subscribe(&ch).await;
        assert_eq!(shard_subscribers(), 1, "{ch:?} subscribed on its master");
        a.publish(&ch, "1").await;
        assert_eq!(recv_n(&outbox, 1, STEP).await.len(), 1);

        b.engine.unsubscribe(&ch, &outbox).await;
        assert!(b.broker.is_subscribed(&ch), "deferred");
        assert!(
            eventually(STEP, || shard_subscribers() == 0).await,
            "{ch:?} left"
        );
        assert!(!b.broker.is_subscribed(&ch));
        assert!(a.broker.is_ready());
        assert_eq!(a.publish(&ch, "2").await.subscribers, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_restart_is_survived_without_resubscribing() {
    let mut cluster = RedisCluster::start();
    let a = Node::start(config(cluster.urls())).await;
    let b = Node::start(config(cluster.urls())).await;
    let channels = spread_channels(&b);
    let mut outboxes = Vec::new();
    for ch in &channels {
        outboxes.push(b.subscribe(ch).await);
    }

    // The master owning channels[0] dies; its slots are uncovered, so the
    // cluster refuses writes and both nodes turn unready.
    cluster.servers[0].kill();
    assert!(
        eventually(STEP, || !a.broker.is_ready() && !b.broker.is_ready()).await,
        "nodes notice the lost master"
    );
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        STEP,
        a.engine
            .publish(&channels[0], herald_core::Publication::new("1".into())),
    )
    .await
    .expect("publish must not hang");
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_millis(1500));

    // It comes back (same port, same cluster config, no data).
    let server = &mut cluster.servers[0];
    server.restart();
    cluster.wait_ok();
    assert!(
        eventually(Duration::from_secs(30), || a.broker.is_ready()
            && b.broker.is_ready())
        .await,
        "nodes reconnect"
    );
    // Readiness waits for an echo through every master, so the first
    // publish after it reaches the subscriber on the restarted master too.
    for (ch, outbox) in channels.iter().zip(&outboxes) {
        let p = a.publish(ch, "\"back\"").await;
        let got = recv_n(outbox, 1, STEP).await;
        assert_eq!(got.len(), 1, "{ch:?} resubscribed");
        assert_eq!(
            (got[0].offset, got[0].epoch.as_str()),
            (p.offset, &*p.epoch)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_to_a_replica_is_survived() {
    let mut cluster = RedisCluster::start_replicated();
    let role = command(cluster.servers[0].port, &["ROLE"]).unwrap();
    assert!(role.contains("master"), "server 0 is a master: {role}");
    let a = Node::start(config(cluster.urls())).await;
    let b = Node::start(config(cluster.urls())).await;
    let channels = spread_channels(&b);
    let mut outboxes = Vec::new();
    for ch in &channels {
        outboxes.push(b.subscribe(ch).await);
    }

    // Master 0 dies; its replica is promoted once the cluster notices
    // (node timeout 2 s). Both nodes drop and rebuild their sessions.
    cluster.servers[0].kill();
    assert!(
        eventually(STEP, || !a.broker.is_ready() && !b.broker.is_ready()).await,
        "nodes notice the lost master"
    );
    assert!(
        eventually(Duration::from_secs(30), || a.broker.is_ready()
            && b.broker.is_ready())
        .await,
        "nodes follow the failover"
    );
    let promoted = cluster.servers[3..]
        .iter()
        .filter(|s| command(s.port, &["ROLE"]).is_some_and(|r| r.contains("master")))
        .count();
    assert_eq!(promoted, 1, "one replica took over");
    for (ch, outbox) in channels.iter().zip(&outboxes) {
        let p = a.publish(ch, "\"after failover\"").await;
        let got = recv_n(outbox, 1, STEP).await;
        assert_eq!(got.len(), 1, "{ch:?} followed its slot");
        assert_eq!(
            (got[0].offset, got[0].epoch.as_str()),
            (p.offset, &*p.epoch)
        );
    }
}
