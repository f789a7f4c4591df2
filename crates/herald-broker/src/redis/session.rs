//! Connection lifecycle: establishing a session, probing it, replacing it.
//!
//! A session is a pair of connections: one for publishes and reads, one that
//! carries pub/sub (RESP3 pushes). Every probe interval the supervisor PINGs
//! the first and sends an echo through the second ([`super::echo`]); a
//! failed probe, a failed command, or the subscriber connection closing
//! drops the session (the broker turns unready and publishes fail fast) and
//! the supervisor builds a new one, resubscribes every wanted channel,
//! checks that an echo comes back through every server, and only then turns
//! ready again. Because the wanted set lives
//! here, not in the client library, a connection that died silently and was
//! replaced gets exactly the same subscriptions back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_core::BrokerError;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::conn::{Conn, bounded};
use super::subscriber::{Op, sweep};
use super::{Inner, echo};

/// The live connections of one generation.
#[derive(Clone)]
pub(crate) struct Session {
    /// Counts sessions. A disconnection of an older one is ignored; its
    /// late messages are not, and the hub drops them by offset.
    pub(crate) generation: u64,
    /// Scripts, reads, counts: multiplexed, never blocked by pub/sub.
    pub(crate) publisher: Conn,
    /// Pub/sub subscriptions; pushes arrive on the broker's push queue.
    pub(crate) subscriber: Conn,
    /// This node's echo channels, one per server of this session.
    pub(crate) echo_channels: Arc<[String]>,
}

/// Builds a session, resubscribes what is wanted, and turns ready.
pub(crate) async fn establish(inner: &Inner) -> Result<(), BrokerError> {
    let generation = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let config = &inner.config;
    let unavailable = |e: redis::RedisError| BrokerError::Unavailable(e.to_string());
    let mut publisher = bounded(config.timeout(), Conn::open(config, inner.cluster, None))
        .await
        .map_err(unavailable)?;
    let echo_channels: Arc<[String]> = echo::channels(inner, &mut publisher).await?.into();
    let push = Some((inner.push_tx.clone(), generation));
    let subscriber = bounded(config.timeout(), Conn::open(config, inner.cluster, push))
        .await
        .map_err(unavailable)?;
    *inner.session.write() = Some(Session {
        generation,
        publisher: publisher.clone(),
        subscriber,
        echo_channels: echo_channels.clone(),
    });
    let (tx, rx) = oneshot::channel();
    let _ = inner.subs.ops.send(Op::Resync(tx));
    let resynced = match rx.await {
        Ok(r) => r,
        Err(_) => Err(BrokerError::Unavailable("redis: broker stopped".into())),
    };
    if let Err(e) = resynced {
        drop_session(inner, "resubscribe failed");
        return Err(e);
    }
    if let Err(e) = echo::round_trip(inner, publisher, &echo_channels).await {
        drop_session(inner, "pub/sub echo failed");
        return Err(e);
    }
    // The ledger as it is now, before the liveness key says this node is
    // back: a node that finds it alive again tells its users' joins from
    // the ledger, which may still hold users who left while Redis was away.
    if let Err(e) = super::presence::keep_ledger(inner, true).await {
        drop_session(inner, "presence ledger not written");
        return Err(e);
    }
    refresh_node_key(inner).await;
    // Under the session's lock: a disconnection told meanwhile dropped the
    // session, and must not be followed by turning ready.
    let session = inner.session.read();
    if session.is_none() {
        return Err(BrokerError::Unavailable(
            "redis: connection lost while connecting".into(),
        ));
    }
    inner.ready.store(true, Ordering::Release);
    Ok(())
}

/// Forgets the current session and turns unready.
pub(crate) fn drop_session(inner: &Inner, why: &str) {
    let mut session = inner.session.write();
    let was_ready = inner.ready.swap(false, Ordering::AcqRel);
    if session.take().is_some() && was_ready {
        warn!(reason = why, "Redis connection lost.");
    }
}

/// PINGs the publishing connection and echoes through the subscriber one.
async fn probe(inner: &Inner) -> Result<(), BrokerError> {
    let Some(session) = inner.session() else {
        return Ok(());
    };
    let mut publisher = session.publisher.clone();
    bounded(inner.config.timeout(), publisher.ping())
        .await
        .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
    echo::round_trip(inner, publisher, &session.echo_channels).await
}

/// Marks this node alive for [`RedisConfig::liveness_ttl`].
///
/// [`RedisConfig::liveness_ttl`]: super::config::RedisConfig::liveness_ttl
async fn refresh_node_key(inner: &Inner) {
    let Ok(mut conn) = inner.publisher_conn() else {
        return;
    };
    let ttl = inner.config.liveness_ttl();
    let mut set = redis::cmd("SET");
    set.arg(inner.keys.node(&inner.config.node_id))
        .arg(herald_core::message::now_ms())
        .arg("PX")
        .arg(ttl.as_millis() as u64);
    if let Err(error) = bounded(inner.config.timeout(), set.query_async::<()>(&mut conn)).await {
        debug!(%error, "Node key not refreshed.");
    }
}

/// Probes the session every interval (or when woken) and rebuilds it when
/// it is gone, backing off while Redis stays unreachable.
pub(crate) async fn run_supervisor(inner: Arc<Inner>) {
    let interval = inner.config.probe_interval();
    let mut backoff = Duration::from_millis(50);
    loop {
        if inner.session().is_none() {
            match establish(&inner).await {
                Ok(()) => {
                    info!("Redis connection restored.");
                    backoff = Duration::from_millis(50);
                    tokio::spawn(super::subscriber::catch_up(inner.clone()));
                }
                Err(error) => {
                    debug!(%error, "Redis still unreachable.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(interval);
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = inner.wake.notified() => {}
        }
        match probe(&inner).await {
            Ok(()) => refresh_node_key(&inner).await,
            Err(error) => drop_session(&inner, &format!("probe failed: {error}")),
        }
    }
}

/// Carries out lazy unsubscribes a few times per delay.
pub(crate) async fn run_sweeper(inner: Arc<Inner>) {
    let tick = (inner.config.unsubscribe_delay() / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        if !sweep(&inner).is_empty() {
            inner.counts_dirty.notify_one();
        }
    }
}
