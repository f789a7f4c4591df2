//! End-to-end checks of the pub/sub path: the node publishes a token on its
//! own echo channels and waits for it to come back on its subscriber
//! connection.
//!
//! A PING proves a socket answers; it does not prove that subscriptions on
//! it deliver. After a Redis Cluster master restarts, the connection to it
//! can answer while SSUBSCRIBEs sent to it are not yet in force. So a
//! session turns ready only once an echo came back through every master, and
//! every probe repeats the round trip: a subscriber connection that stopped
//! delivering fails it even when its socket still answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::BrokerError;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::Inner;
use super::conn::{Conn, bounded};
use super::keys::slot;

/// Tokens published and not yet seen back.
#[derive(Default)]
pub(crate) struct Echoes {
    /// Waiters by token; a received echo completes its waiter.
    pending: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Source of tokens, unique per process.
    next: AtomicU64,
}

impl Echoes {
    /// Completes the waiter of an echo payload. Unknown or stale tokens are
    /// ignored: a late echo of an abandoned round trip is harmless.
    pub(crate) fn received(&self, payload: &[u8]) {
        let token = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(waiter) = token.and_then(|t| self.pending.lock().remove(&t)) {
            let _ = waiter.send(());
        }
    }

    fn register(&self) -> (u64, oneshot::Receiver<()>) {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(token, tx);
        (token, rx)
    }

    fn forget(&self, tokens: &[u64]) {
        let mut pending = self.pending.lock();
        for t in tokens {
            pending.remove(t);
        }
    }
}

/// The echo channels of a session: one on a single server; on a cluster, one
/// per master, each hash-tagged into a slot that master serves.
pub(crate) async fn channels(inner: &Inner, conn: &mut Conn) -> Result<Vec<String>, BrokerError> {
    let node = &inner.config.node_id;
    if !inner.cluster {
        return Ok(vec![inner.keys.echo(node, 0)]);
    }
    let ranges = bounded(inner.config.timeout(), conn.slot_ranges())
        .await
        .map_err(|e| inner.failed(e))?;
    let mut by_master: HashMap<(String, u16), Vec<(u16, u16)>> = HashMap::new();
    for (start, end, master) in ranges {
        by_master.entry(master).or_default().push((start, end));
    }
    let mut names = Vec::with_capacity(by_master.len());
    for ranges in by_master.values() {
        let owned = |s: u16| ranges.iter().any(|&(a, b)| (a..=b).contains(&s));
        // 16,384 slots: a master owning any slot is hit within a few
        // hundred thousand tags, whatever its ranges.
        let tag = (0..1u32 << 20).find(|t| owned(slot(t.to_string().as_bytes())));
        if let Some(tag) = tag {
            names.push(inner.keys.echo(node, tag));
        }
    }
    Ok(names)
}

/// Publishes a token on every echo channel of the session and waits, within
/// the command timeout, for all of them to come back.
pub(crate) async fn round_trip(
    inner: &Inner,
    publisher: Conn,
    channels: &[String],
) -> Result<(), BrokerError> {
    let mut tokens = Vec::with_capacity(channels.len());
    let mut waiters = Vec::with_capacity(channels.len());
    let mut publishes = Vec::with_capacity(channels.len());
    for name in channels {
        let (token, rx) = inner.echoes.register();
        let mut cmd = redis::cmd(publisher.publish_command());
        cmd.arg(name).arg(token);
        // One command each: on a cluster every channel is on another master.
        let mut conn = publisher.clone();
        publishes.push(async move { cmd.query_async::<()>(&mut conn).await });
        tokens.push(token);
        waiters.push(rx);
    }
    let limit = inner.config.timeout();
    let result = async {
        let published = futures_util::future::join_all(publishes);
        let sent: Result<(), _> =
            bounded(limit, async { published.await.into_iter().collect() }).await;
        sent.map_err(|e| inner.failed(e))?;
        tokio::time::timeout(limit, futures_util::future::join_all(waiters))
            .await
            .map_err(|_| BrokerError::Unavailable("redis: pub/sub echo did not return".into()))
            .map(drop)
    }
    .await;
    inner.echoes.forget(&tokens);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registered_tokens_complete() {
        let echoes = Echoes::default();
        let (token, mut rx) = echoes.register();
        echoes.received(b"not a token");
        echoes.received((token + 1).to_string().as_bytes());
        assert!(rx.try_recv().is_err());
        echoes.received(token.to_string().as_bytes());
        assert!(rx.try_recv().is_ok());
    }
}
