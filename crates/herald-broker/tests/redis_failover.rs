//! Redis going away: fail fast while it is gone, recover without help.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::{HistoryLimits, HistoryPolicy};
use herald_core::{Broker, BrokerError, Publication};
use support::{
    FreezingProxy, Got, Node, RedisServer, STEP, command, config, eventually, key, recv_n,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_fails_fast_while_down_then_resubscribes_by_itself() {
    let mut redis = RedisServer::start();
    let a = Node::start(config(vec![redis.url()])).await;
    let b = Node::start(config(vec![redis.url()])).await;
    let ch = key("survivor");
    let outbox = b.subscribe(&ch).await;
    let before = a.publish(&ch, "before").await;
    assert_eq!(recv_n(&outbox, 1, STEP).await[0].data, "before");

    redis.kill();

    // A publish racing the failure is bounded by the operation timeout. It
    // fails either before it is written or, written into a socket whose EOF
    // the client has not read yet, with its outcome unknown.
    let started = Instant::now();
    let raced = tokio::time::timeout(
        STEP,
        a.engine
            .publish(&ch, Publication::new(Bytes::from_static(b"1"))),
    )
    .await
    .expect("publish must not hang");
    assert!(
        matches!(
            raced,
            Err(BrokerError::Unavailable(_) | BrokerError::OutcomeUnknown(_))
        ),
        "{raced:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));

    assert!(
        eventually(STEP, || !a.broker.is_ready() && !b.broker.is_ready()).await,
        "both nodes notice"
    );
    // Once unready, publishes fail at once.
    for _ in 0..3 {
        let started = Instant::now();
        let r = tokio::time::timeout(
            STEP,
            a.engine
                .publish(&ch, Publication::new(Bytes::from_static(b"1"))),
        )
        .await
        .expect("publish must not hang");
        assert!(matches!(r, Err(BrokerError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
    }
    // New subscribers are refused rather than silently not subscribed.
    let refused = tokio::time::timeout(STEP, b.broker.subscribe(&key("other"))).await;
    assert!(matches!(refused, Ok(Err(BrokerError::Unavailable(_)))));

    redis.restart();
    assert!(
        eventually(STEP, || a.broker.is_ready() && b.broker.is_ready()).await,
        "both nodes reconnect"
    );

    // B never re-subscribed through its hub, yet receives again. Redis lost
    // its data, so the channel starts over in a new epoch.
    let after = a.publish(&ch, "after").await;
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch);
    let got = recv_n(&outbox, 1, STEP).await;
    assert_eq!(got.len(), 1, "subscription restored");
    assert_eq!((got[0].offset, got[0].data.as_str()), (1, "after"));
    assert_eq!(got[0].epoch, &*after.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_is_found_and_replaced() {
    let redis = RedisServer::start();
    let proxy = FreezingProxy::start(redis.port).await;
    let a = Node::start(config(vec![redis.url()])).await;
    // B reaches Redis through the proxy.
    let b = Node::start(config(vec![proxy.url()])).await;
    let ch = key("quiet");
    let outbox = b.subscribe(&ch).await;
    a.publish(&ch, "1").await;
    assert_eq!(recv_n(&outbox, 1, STEP).await[0].data, "1");

    // B's sockets stay open but carry nothing: no error, no disconnect.
    // The probe notices and replaces them; the window in which B is not
    // ready is too short to poll for, so watch the reconnect count.
    assert_eq!(b.broker.reconnects(), 0);
    proxy.freeze_existing();
    assert!(
        eventually(STEP, || b.broker.reconnects() >= 1 && b.broker.is_ready()).await,
        "the probe finds the dead connection and replaces it"
    );
    a.publish(&ch, "2").await;
    let got = recv_n(&outbox, 1, STEP).await;
    assert_eq!(got.len(), 1, "subscription restored on the new connection");
    assert_eq!((got[0].offset, got[0].data.as_str()), (2, "2"));
}

/// Redis restarting from a snapshot older than its last writes (as after a
/// crash with `appendfsync everysec`, or a failover to a lagging replica)
/// rolls the channel's offset counter back: the next messages would take
/// offsets its subscribers already had, and be dropped as repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_redis_lost_start_a_new_epoch_rather_than_reuse_offsets() {
    lost_writes_start_a_new_epoch(true).await;
}

/// Without history nothing is replayed, but reused offsets would still be
/// dropped as repeats by the hub, and by clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_channel_without_history_too() {
    lost_writes_start_a_new_epoch(false).await;
}

async fn lost_writes_start_a_new_epoch(history: bool) {
    let mut redis = RedisServer::start();
    let mut cfg = config(vec![redis.url()]);
    if history {
        cfg.history = HistoryPolicy::all(HistoryLimits {
            max_len: 100,
            ttl: Duration::from_secs(60),
        });
    }
    let a = Node::start(cfg.clone()).await;
    let b = Node::start(cfg).await;
    let ch = key("snapshot");
    let outbox = b.subscribe(&ch).await;
    for data in ["1", "2", "3"] {
        a.publish(&ch, data).await;
    }
    assert_eq!(command(redis.port, &["SAVE"]).as_deref(), Some("+OK"));
    for data in ["4", "5"] {
        a.publish(&ch, data).await;
    }
    let got = recv_n(&outbox, 5, STEP).await;
    let offsets: Vec<u64> = got.iter().map(|g| g.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let lossy = got[0].epoch.clone();

    // Back with offsets 1–3 only.
    redis.restart();
    let deadline = Instant::now() + STEP;
    let renewed = loop {
        if let Ok(h) = a.broker.history(&ch, None, 0).await
            && *h.epoch != *lossy
        {
            break h;
        }
        assert!(Instant::now() < deadline, "B never renewed the epoch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(renewed.offset, 0, "the new epoch starts over");
    assert!(eventually(STEP, || a.broker.is_ready()).await);

    let after = a.publish(&ch, "6").await;
    assert_eq!((after.offset, &*after.epoch), (1, &*renewed.epoch));
    let got = recv_n(&outbox, 1, STEP).await;
    let want = Got {
        offset: 1,
        epoch: renewed.epoch.to_string(),
        data: "6".into(),
    };
    assert_eq!(
        got,
        [want],
        "delivered, not dropped as a repeat of offset 4"
    );
}
