//! Presence events that outlive their node: each node keeps in Redis a
//! ledger of the joins it announced and has not announced leaving, so that
//! when it dies without a goodbye the others tell their own subscribers
//! that its users left.
//!
//! - Ledger: `…:node:{id}:presence`, channel and user → connections
//!   ([`codec::encode_member`]). An announcement counts into it before its
//!   notice goes out, so it never lags the events told. The node keeps it
//!   from expiring; a dead node's expires after [`ledger_ttl`], and the node
//!   is then dropped from `…{presence}:nodes`.
//! - Watch: every second each node reads that set and the liveness key of
//!   every node in it. A node it saw alive whose key lapsed is dead: the
//!   ledger's users leave every local subscriber of their channels, once,
//!   and notices still arriving from that node are dropped. Should it come
//!   back (it was paused, not dead), its ledger as it then is joins them
//!   again.
//! - Leaving, a node stops announcing, lets the announcements under way
//!   finish and deletes its liveness key: the others then tell the leaves
//!   its ledger still holds, as for a crash, so none is told twice or lost
//!   between its sessions' goodbyes and the shutdown.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{BrokerError, ChannelKey, PresenceChange};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::conn::bounded;
use super::{Inner, codec, script};

/// How often ledgers are refreshed and other nodes' liveness checked.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// This node's ledger, and what it knows of the others'.
#[derive(Default)]
pub(crate) struct Presence {
    /// This node's joins not yet left, as its ledger in Redis should hold.
    held: Mutex<Held>,
    /// Wakes [`Presence::close`] as announcements under way finish.
    settled: Notify,
    /// Nodes with a ledger this node has seen, and whether each is taken
    /// for dead (its users told to leave).
    others: Mutex<HashMap<String, bool>>,
}

#[derive(Default)]
struct Held {
    /// Ledger field → connections.
    counts: HashMap<Bytes, u64>,
    /// Announcements past the `closed` check and not finished.
    in_flight: usize,
    /// Set when the node leaves: nothing more is announced.
    closed: bool,
    /// The session in which this node was last added to the set of nodes
    /// with a ledger (0: never).
    listed: u64,
}

impl Presence {
    /// Whether `node` is taken for dead: its users were told to leave, and
    /// its notices are stale.
    pub(crate) fn is_dead(&self, node: &str) -> bool {
        self.others.lock().get(node) == Some(&true)
    }

    /// Stops announcing and waits (up to `timeout`) for announcements under
    /// way to be told.
    pub(crate) async fn close(&self, timeout: Duration) {
        let settled = async {
            loop {
                let notified = self.settled.notified();
                {
                    let mut held = self.held.lock();
                    held.closed = true;
                    if held.in_flight == 0 {
                        return;
                    }
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, settled).await;
    }
}

/// How long a ledger outlives its node's last refresh: long enough for
/// every other node to find the node dead first.
fn ledger_ttl(inner: &Inner) -> Duration {
    (inner.config.liveness_ttl() * 4).max(Duration::from_secs(60))
}

/// Counts `user` joining or leaving `channel` into this node's ledger, then
/// tells the other nodes.
pub(crate) async fn announce(
    inner: &Inner,
    channel: &ChannelKey,
    change: PresenceChange,
    user: &str,
) -> Result<(), BrokerError> {
    let too_long = |e: codec::TooLong| BrokerError::Protocol(e.to_string());
    let field = codec::encode_member(channel, user).map_err(too_long)?;
    let notice =
        codec::encode_presence(&inner.config.node_id, channel, change, user).map_err(too_long)?;
    let (delta, list) = {
        let mut held = inner.presence.held.lock();
        if held.closed {
            return Ok(());
        }
        held.in_flight += 1;
        let delta: i64 = match change {
            PresenceChange::Join => {
                *held.counts.entry(field.clone()).or_default() += 1;
                1
            }
            PresenceChange::Leave => {
                if let Entry::Occupied(mut e) = held.counts.entry(field.clone()) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
                -1
            }
        };
        let generation = inner.session().map_or(0, |s| s.generation);
        (delta, delta > 0 && held.listed != generation)
    };
    let _in_flight = InFlight(&inner.presence);
    tell(inner, &field, delta, list, channel, &notice).await
}

/// An announcement under way, until it is told (or given up).
struct InFlight<'a>(&'a Presence);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut held = self.0.held.lock();
        held.in_flight -= 1;
        if held.closed && held.in_flight == 0 {
            self.0.settled.notify_waiters();
        }
    }
}

/// Counts `delta` into the ledger (listing this node first if `list`), then
/// publishes `notice`.
async fn tell(
    inner: &Inner,
    field: &Bytes,
    delta: i64,
    list: bool,
    channel: &ChannelKey,
    notice: &Bytes,
) -> Result<(), BrokerError> {
    let me = &inner.config.node_id;
    let mut conn = inner.ready_publisher()?;
    let generation = inner.session().map_or(0, |s| s.generation);
    if list {
        let mut sadd = redis::cmd("SADD");
        sadd.arg(inner.keys.presence_nodes()).arg(me);
        bounded(inner.config.timeout(), sadd.query_async::<()>(&mut conn))
            .await
            .map_err(|e| inner.failed(e))?;
        inner.presence.held.lock().listed = generation;
    }
    let ttl = ledger_ttl(inner).as_millis() as u64;
    let mut count = script::COUNT_PRESENCE.prepare_invoke();
    count
        .key(inner.keys.presence_ledger(me))
        .arg(field.as_ref())
        .arg(delta)
        .arg(ttl);
    bounded(inner.config.timeout(), count.invoke_async::<()>(&mut conn))
        .await
        .map_err(|e| inner.unanswered(e))?;
    let mut publish = redis::cmd(conn.publish_command());
    publish.arg(inner.keys.pubsub(channel)).arg(notice.as_ref());
    bounded(inner.config.timeout(), publish.query_async::<()>(&mut conn))
        .await
        .map_err(|e| inner.unanswered(e))
}

/// Keeps this node's ledger and listing current, and tells the users of
/// nodes that die (or come back) to this node's subscribers.
pub(crate) async fn run_watch(inner: Arc<Inner>) {
    let mut generation = 0;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(session) = inner.session() else {
            continue;
        };
        let fresh = session.generation != generation;
        // Redis may have restarted empty: on a new session, write it all.
        if keep_ledger(&inner, fresh).await.is_ok() {
            generation = session.generation;
        }
        if let Err(error) = watch_others(&inner).await {
            debug!(%error, "Presence watch failed; trying again next tick.");
        }
    }
}

/// Refreshes this node's ledger and listing, or with `rewrite` writes the
/// ledger whole.
pub(crate) async fn keep_ledger(inner: &Inner, rewrite: bool) -> Result<(), BrokerError> {
    let me = &inner.config.node_id;
    let ledger = inner.keys.presence_ledger(me);
    let (any, counts): (bool, Vec<(Bytes, u64)>) = {
        let held = inner.presence.held.lock();
        // Closed, or nothing to refresh.
        if held.closed || (!rewrite && held.counts.is_empty()) {
            return Ok(());
        }
        let counts = match rewrite {
            true => held.counts.iter().map(|(f, n)| (f.clone(), *n)).collect(),
            false => Vec::new(),
        };
        (!held.counts.is_empty(), counts)
    };
    let mut pipe = redis::pipe();
    if rewrite {
        pipe.cmd("DEL").arg(&ledger).ignore();
        for chunk in counts.chunks(512) {
            let mut hset = redis::cmd("HSET");
            hset.arg(&ledger);
            for (field, n) in chunk {
                hset.arg(field.as_ref()).arg(*n);
            }
            pipe.add_command(hset).ignore();
        }
    }
    if any {
        pipe.cmd("PEXPIRE")
            .arg(&ledger)
            .arg(ledger_ttl(inner).as_millis() as u64)
            .ignore();
        pipe.cmd("SADD")
            .arg(inner.keys.presence_nodes())
            .arg(me)
            .ignore();
    }
    let mut conn = inner.publisher_conn()?;
    bounded(inner.config.timeout(), pipe.query_async::<()>(&mut conn))
        .await
        .map_err(|e| inner.failed(e))
}

/// Checks every other node with a ledger: tells the users of one found dead
/// to leave, and of one back from the dead to join again.
async fn watch_others(inner: &Inner) -> Result<(), BrokerError> {
    let me = inner.config.node_id.as_str();
    let nodes: Vec<String> = {
        let mut conn = inner.publisher_conn()?;
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(inner.keys.presence_nodes());
        bounded(inner.config.timeout(), smembers.query_async(&mut conn))
            .await
            .map_err(|e| inner.failed(e))?
    };
    inner
        .presence
        .others
        .lock()
        .retain(|node, _| nodes.contains(node));
    for node in nodes.iter().filter(|n| n.as_str() != me) {
        let alive = super::node_alive(inner, node).await?;
        // Set before telling, so the node's late notices are dropped.
        let was = inner.presence.others.lock().insert(node.clone(), !alive);
        let told = match (alive, was) {
            // Back from the dead: its users are here again.
            (true, Some(true)) => {
                info!(node, "Presence: node back, its users join again.");
                tell_locally(inner, node, PresenceChange::Join).await
            }
            // Seen alive, now gone without a goodbye. (One never seen alive
            // died before this node started: its joins were not told here.)
            (false, Some(false)) => {
                info!(node, "Presence: node dead, its users leave.");
                tell_locally(inner, node, PresenceChange::Leave).await
            }
            _ => Ok(()),
        };
        if let Err(e) = told {
            // Not told: as it was, so that the next check tells it.
            if let Some(was) = was {
                inner.presence.others.lock().insert(node.clone(), was);
            }
            return Err(e);
        }
        if !alive {
            forget_if_expired(inner, node).await?;
        }
    }
    Ok(())
}

/// Tells this node's subscribers that every connection in `node`'s ledger
/// joined or left.
async fn tell_locally(
    inner: &Inner,
    node: &str,
    change: PresenceChange,
) -> Result<(), BrokerError> {
    let mut conn = inner.publisher_conn()?;
    let mut hgetall = redis::cmd("HGETALL");
    hgetall.arg(inner.keys.presence_ledger(node));
    let ledger: Vec<(Vec<u8>, u64)> =
        bounded(inner.config.timeout(), hgetall.query_async(&mut conn))
            .await
            .map_err(|e| inner.failed(e))?;
    for (field, connections) in ledger {
        let Some((channel, user)) = codec::decode_member(&field) else {
            continue;
        };
        for _ in 0..connections {
            inner.hub.announce(&channel, change, &user);
        }
    }
    Ok(())
}

/// Drops a dead `node` from the set once its ledger expired.
async fn forget_if_expired(inner: &Inner, node: &str) -> Result<(), BrokerError> {
    let mut conn = inner.publisher_conn()?;
    let mut exists = redis::cmd("EXISTS");
    exists.arg(inner.keys.presence_ledger(node));
    let kept: bool = bounded(inner.config.timeout(), exists.query_async(&mut conn))
        .await
        .map_err(|e| inner.failed(e))?;
    if !kept {
        let mut srem = redis::cmd("SREM");
        srem.arg(inner.keys.presence_nodes()).arg(node);
        bounded(inner.config.timeout(), srem.query_async::<()>(&mut conn))
            .await
            .map_err(|e| inner.failed(e))?;
        inner.presence.others.lock().remove(node);
    }
    Ok(())
}
