//! Cluster-wide subscriber counts.
//!
//! Each node keeps, per channel it listens to, its local subscriber count in
//! the channel's count hash (`node id → count:expires_ms`, expiry in Redis'
//! clock). The publish script sums the unexpired entries, so a publish learns
//! the cluster-wide count in the same round trip, and a node that died stops
//! counting once its entries expire. Counts lag by up to one refresh tick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::ChannelKey;
use tracing::debug;

use super::Inner;
use super::conn::bounded;
use super::script;

/// Writes issued at once.
const CHUNK: usize = 512;

/// Keeps this node's entries current: on every tick (or when woken by a
/// subscribe), writes counts that changed or are due for refresh.
pub(crate) async fn run_counts(inner: Arc<Inner>) {
    let ttl = inner.config.count_ttl();
    let refresh = ttl / 3;
    let tick = refresh.min(Duration::from_secs(1));
    // What this node last wrote per channel, under which connection.
    let mut written: HashMap<ChannelKey, (usize, Instant)> = HashMap::new();
    let mut generation = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = inner.counts_dirty.notified() => {}
        }
        let Some(session) = inner.session() else {
            continue;
        };
        if session.generation != generation {
            // Redis may have restarted and lost everything: write it all again.
            written.clear();
            generation = session.generation;
        }
        let wanted: HashSet<ChannelKey> = inner.subs.channels.lock().keys().cloned().collect();
        let mut writes: Vec<(ChannelKey, usize)> = wanted
            .iter()
            .filter_map(|key| {
                let n = inner.hub.subscriber_count(key);
                match written.get(key) {
                    Some(&(m, at)) if m == n && at.elapsed() < refresh => None,
                    None if n == 0 => None,
                    _ => Some((key.clone(), n)),
                }
            })
            .collect();
        writes.extend(
            written
                .keys()
                .filter(|k| !wanted.contains(*k))
                .map(|k| (k.clone(), 0)),
        );
        for chunk in writes.chunks(CHUNK) {
            let timeout = inner.config.timeout();
            let calls = chunk.iter().map(|(key, n)| {
                let mut conn = session.publisher.clone();
                let mut call = script::SET_COUNT.prepare_invoke();
                call.key(inner.keys.subscribers(key))
                    .arg(&inner.config.node_id)
                    .arg(*n)
                    .arg(ttl.as_millis() as u64);
                async move {
                    let r: redis::RedisResult<i64> =
                        bounded(timeout, call.invoke_async(&mut conn)).await;
                    r
                }
            });
            let results = futures_util::future::join_all(calls).await;
            for ((key, n), result) in chunk.iter().zip(results) {
                match result {
                    Ok(_) if *n == 0 => {
                        written.remove(key);
                    }
                    Ok(_) => {
                        written.insert(key.clone(), (*n, Instant::now()));
                    }
                    Err(error) => {
                        debug!(channel = %key, %error, "Subscriber count not written.");
                    }
                }
            }
        }
    }
}
