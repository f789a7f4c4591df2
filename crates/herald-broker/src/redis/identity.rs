//! Targeted delivery across nodes: a registry in Redis of which nodes have
//! connections with which identity pairs, and node-to-node requests over
//! each node's direct pub/sub channel.
//!
//! Registry: for every (dimension, value) pair some local connection has,
//! the node is a member of the set `…{ident}:d:<pair>`, and of
//! `…{ident}:nodes` while it has any identified connection. A sync task keeps
//! these current (every 250 ms). A filter's candidate nodes are the
//! intersection of its pairs' sets (`SINTER`, one slot), minus nodes whose
//! liveness key expired. A node lists the sets it wrote itself to in
//! `…{ident}:n:<node>`, so the first sender to find it dead removes it from
//! every one of them, not only the filter's: a crashed node leaves nothing.
//! A node that was only paused finds itself gone from `…:nodes` and writes
//! its entries again.
//! Candidates resolve the filter exactly against their own directory.
//!
//! Requests: the sender asks each candidate to deliver (`find_any`: one
//! candidate at a time, rotating per filter, until one delivers) and sums
//! the replies.
//!
//! Acks: a message sent with `ack` names the send it is for, by the sending
//! node (`from`) and the ticket of that send there (`msg.ticket`). The
//! receiving node remembers both with every connection that owes the ack,
//! and the connection's ack travels back to that node with the ticket
//! (`Ack.ticket`), which takes it only while that very send waits. Ids
//! alone cannot tell sends apart: a sender may reuse an id (a fallback to
//! another receiver), and a receiver still owing it to an earlier send that
//! timed out would otherwise, by acking late, confirm the later one.
//!
//! Mixed versions. Nodes before tickets kept the route of an ack per
//! message id (for `msg.wait_ms`) and sent acks by id alone; the fields
//! added since are optional both ways, and unknown ones are ignored:
//! - an older sender names no ticket: its receivers here route the ack to
//!   it as before, by node, without a ticket;
//! - an older receiver drops the ticket and acks by id alone: the sender
//!   here then takes the ack as before, from any receiver once a send
//!   reached another node, so acks from older nodes can still confirm a
//!   later send of a reused id;
//! - `wait_ms` is still sent, for older receivers' route tables.
//!
//! Only once every node runs this version are late acks of earlier sends
//! always refused; nothing breaks while versions are mixed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herald_core::identity::{
    AckTo, Dim, Directory, Filter, Identity, Presence, SendOutcome, Targeted,
};
use herald_core::{BrokerError, ChannelKey, ConnId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::debug;

use super::Inner;
use super::conn::bounded;

/// How often the registry is brought in line with the local directory.
const SYNC_EVERY: Duration = Duration::from_millis(250);

/// How long a sender that did not say (a node of an older version) waits
/// for an ack: `delivery.max_ack_timeout`'s default.
const DEFAULT_ACK_WAIT_MS: u64 = 60_000;

/// One request or reply between nodes.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    /// Deliver `msg` to local matches of `filter` and reply with counts.
    Send {
        from: String,
        req: u64,
        filter: WireFilter,
        msg: WireMsg,
    },
    /// Disconnect local matches of `filter`; replied to with a `Sent`
    /// counting them.
    Disconnect {
        from: String,
        req: u64,
        filter: WireFilter,
    },
    /// Count who is in channel `name` of `app` here; replied to with a
    /// `Present`.
    Presence {
        from: String,
        req: u64,
        app: String,
        name: String,
    },
    /// The reply to a `Presence`.
    Present { req: u64, presence: Presence },
    /// The reply to a `Send` or a `Disconnect`.
    Sent {
        req: u64,
        matched: usize,
        delivered: usize,
    },
    /// Connection `conn` of the node sending this acknowledged message `id`,
    /// which it owed to the send with `ticket` on the node receiving this
    /// (`None`: from a node of an older version, or for a sender that named
    /// no ticket).
    Ack {
        id: String,
        conn: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ticket: Option<u64>,
    },
    /// Acknowledge `id` for local connection `conn`, as if it had acked
    /// itself (an SSE client acking over HTTP on another node), and reply.
    AckFor {
        from: String,
        req: u64,
        conn: u64,
        id: String,
    },
    /// The reply to an `AckFor`: whether `conn` owed that ack.
    AckedFor { req: u64, acked: bool },
}

#[derive(Serialize, Deserialize)]
struct WireFilter {
    dims: Vec<(String, String)>,
    find_any: bool,
    exclude: Vec<Vec<(String, String)>>,
}

#[derive(Serialize, Deserialize)]
struct WireMsg {
    id: String,
    event: Option<String>,
    /// The payload's JSON text.
    data: String,
    ack: bool,
    /// How long the sender may still take an ack ([`Targeted::ack_wait`]);
    /// read by nodes of older versions only.
    #[serde(default = "default_ack_wait_ms")]
    wait_ms: u64,
    time_ms: u64,
    /// With `ack`, the ticket of the send on the sending node this delivery
    /// is for; receivers' acks carry it back. Absent from a node of an older
    /// version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ticket: Option<u64>,
}

fn default_ack_wait_ms() -> u64 {
    DEFAULT_ACK_WAIT_MS
}

fn pairs(identity: &Identity) -> Vec<(String, String)> {
    identity
        .dims()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn identity(pairs: Vec<(String, String)>) -> Identity {
    Identity::new(pairs)
}

impl From<&Filter> for WireFilter {
    fn from(f: &Filter) -> Self {
        Self {
            dims: pairs(&f.dims),
            find_any: f.find_any,
            exclude: f.exclude.iter().map(pairs).collect(),
        }
    }
}

impl From<WireFilter> for Filter {
    fn from(w: WireFilter) -> Self {
        Self {
            dims: identity(w.dims),
            find_any: w.find_any,
            exclude: w.exclude.into_iter().map(identity).collect(),
        }
    }
}

impl From<&Targeted> for WireMsg {
    fn from(m: &Targeted) -> Self {
        Self {
            id: m.id.to_string(),
            event: m.event.as_deref().map(str::to_owned),
            data: String::from_utf8_lossy(&m.data).into_owned(),
            ack: m.ack,
            wait_ms: m.ack_wait.as_millis() as u64,
            time_ms: m.time_ms,
            ticket: None,
        }
    }
}

impl From<WireMsg> for Targeted {
    fn from(w: WireMsg) -> Self {
        Self {
            id: Arc::from(w.id),
            event: w.event.map(Arc::from),
            data: Bytes::from(w.data),
            ack: w.ack,
            ack_wait: Duration::from_millis(w.wait_ms),
            time_ms: w.time_ms,
        }
    }
}

/// Cross-node targeting state of one node.
pub(crate) struct Router {
    /// This node's directory of identified connections.
    directory: Arc<Directory>,
    /// Replies awaited by request number.
    waiting: Mutex<HashMap<u64, oneshot::Sender<SendOutcome>>>,
    /// `AckFor` replies awaited by request number.
    waiting_acks: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    /// `Present` replies awaited by request number.
    waiting_presence: Mutex<HashMap<u64, oneshot::Sender<Presence>>>,
    /// Next request number.
    next_req: AtomicU64,
    /// `find_any` rotation over candidate nodes, per filter.
    rotation: Mutex<HashMap<Vec<(String, String)>, u64>>,
    /// The pairs the sync task last wrote to the registry, for
    /// [`unregister`].
    registered: Mutex<HashSet<Dim>>,
}

impl Router {
    pub(crate) fn new(directory: Arc<Directory>) -> Self {
        Self {
            directory,
            waiting: Mutex::default(),
            waiting_acks: Mutex::default(),
            waiting_presence: Mutex::default(),
            next_req: AtomicU64::new(1),
            rotation: Mutex::default(),
            registered: Mutex::default(),
        }
    }
}

/// Delivers `msg` to every connection `filter` selects on any node.
pub(crate) async fn send(
    inner: &Arc<Inner>,
    router: &Router,
    filter: &Filter,
    msg: Targeted,
) -> Result<SendOutcome, BrokerError> {
    let me = inner.config.node_id.as_str();
    let mut nodes = candidates(inner, filter).await?;
    nodes.sort();
    // The send on this node waiting for the ack: other nodes' receivers
    // owe their ack to it, and name it when they ack.
    let ticket = if msg.ack {
        router.directory.waiting_ticket(&msg.id)
    } else {
        None
    };
    if !filter.find_any {
        let mut total = SendOutcome::default();
        let remote: Vec<&String> = nodes.iter().filter(|n| n.as_str() != me).collect();
        let requests = remote
            .iter()
            .map(|node| request(inner, router, node, filter, &msg, ticket));
        let local = router.directory.deliver(filter, &msg);
        total.matched += local.matched;
        total.delivered += local.delivered;
        return summed(total, futures_util::future::join_all(requests).await);
    }
    // One connection cluster-wide: nodes with matches take turns per filter,
    // each picking one of its own matches in turn. This node counts by its
    // own directory, which is fresher than the registry.
    let every = Filter {
        find_any: false,
        ..filter.clone()
    };
    let local_matches = !router.directory.resolve(&every).is_empty();
    nodes.retain(|n| n != me);
    if local_matches {
        nodes.push(me.to_owned());
        nodes.sort();
    }
    let start = {
        let mut rotation = router.rotation.lock();
        if rotation.len() > 10_000 {
            rotation.clear();
        }
        let n = rotation.entry(pairs(&filter.dims)).or_insert(0);
        let start = *n;
        *n = n.wrapping_add(1);
        start as usize
    };
    let mut matched = 0;
    for i in 0..nodes.len() {
        let node = &nodes[(start + i) % nodes.len()];
        let outcome = if node == me {
            router.directory.deliver(filter, &msg)
        } else {
            match request(inner, router, node, filter, &msg, ticket).await? {
                Asked::Answered(outcome) => outcome,
                Asked::Gone => SendOutcome::default(),
                // It may still deliver: asking the next node could make
                // two receivers.
                Asked::Silent => {
                    return Err(BrokerError::OutcomeUnknown(format!(
                        "node {node} did not answer in time"
                    )));
                }
            }
        };
        matched += outcome.matched;
        if outcome.delivered > 0 {
            return Ok(SendOutcome {
                matched,
                delivered: outcome.delivered,
            });
        }
    }
    Ok(SendOutcome {
        matched,
        delivered: 0,
    })
}

/// Routes an ack of `id` by local connection `conn` to the send it answers,
/// `to`: on the node that sent the message, with that send's ticket, or
/// here when it was sent here.
pub(crate) async fn ack(
    inner: &Arc<Inner>,
    router: &Router,
    id: &str,
    conn: ConnId,
    to: AckTo,
) -> Result<bool, BrokerError> {
    match to {
        AckTo::Node { node, ticket } if *node != inner.config.node_id => {
            let wire = Wire::Ack {
                id: id.to_owned(),
                conn,
                ticket,
            };
            super::send_to_node(inner, &node, encode(&wire)).await
        }
        // Named by this node's own name: a send here, as `AckTo::Here`.
        AckTo::Node { ticket, .. } => Ok(router.directory.ack_received(id, conn, ticket)),
        here => Ok(router.directory.ack_here(id, conn, &here)),
    }
}

/// Asks `node` to acknowledge `id` for its connection `conn`; waits for the
/// answer (bounded by the broker timeout; no answer counts as not acked).
pub(crate) async fn ack_for(
    inner: &Arc<Inner>,
    router: &Router,
    node: &str,
    conn: ConnId,
    id: &str,
) -> Result<bool, BrokerError> {
    let from = inner.config.node_id.clone();
    let id = id.to_owned();
    let wire = |req| Wire::AckFor {
        from,
        req,
        conn,
        id,
    };
    let acked = ask(inner, router, &router.waiting_acks, node, wire).await?;
    Ok(acked.reply().unwrap_or(false))
}

/// `local` plus the presence in `key` of every other live node that
/// counts subscribers to it. A node that does not answer in time counts as
/// nobody.
pub(crate) async fn presence(
    inner: &Arc<Inner>,
    router: &Router,
    mut local: Presence,
    key: &ChannelKey,
) -> Result<Presence, BrokerError> {
    let me = inner.config.node_id.as_str();
    let mut conn = inner.publisher_conn()?;
    let nodes: Vec<String> = bounded(
        inner.config.timeout(),
        redis::cmd("HKEYS")
            .arg(inner.keys.subscribers(key))
            .query_async(&mut conn),
    )
    .await
    .map_err(|e| inner.failed(e))?;
    let from = &inner.config.node_id;
    let requests = nodes.iter().filter(|n| n.as_str() != me).map(|node| {
        let wire = |req| Wire::Presence {
            from: from.clone(),
            req,
            app: key.app().to_owned(),
            name: key.name().to_owned(),
        };
        ask(inner, router, &router.waiting_presence, node, wire)
    });
    for asked in futures_util::future::join_all(requests).await {
        if let Some(remote) = asked?.reply() {
            local.merge(remote);
        }
    }
    Ok(local)
}

/// Disconnects the connections `filter` selects on every node that has
/// one: this node's at once, the others' by request. A node that does not
/// answer in time counts as none.
pub(crate) async fn disconnect(
    inner: &Arc<Inner>,
    router: &Router,
    filter: &Filter,
) -> Result<SendOutcome, BrokerError> {
    let me = inner.config.node_id.as_str();
    let nodes = candidates(inner, filter).await?;
    let from = &inner.config.node_id;
    let requests = nodes.iter().filter(|n| n.as_str() != me).map(|node| {
        let wire = |req| Wire::Disconnect {
            from: from.clone(),
            req,
            filter: filter.into(),
        };
        ask(inner, router, &router.waiting, node, wire)
    });
    let total = router.directory.disconnect(filter);
    summed(total, futures_util::future::join_all(requests).await)
}

/// Adds the other nodes' answers to `total`, this node's own. A node that
/// did not answer in time counts as nothing; so does one Redis would not
/// take the request for: what the others did stands, and an error would
/// have the caller do it all again. Only when nothing was delivered
/// anywhere is that failure the result.
fn summed(
    mut total: SendOutcome,
    answers: Vec<Result<Asked<SendOutcome>, BrokerError>>,
) -> Result<SendOutcome, BrokerError> {
    let mut failed = None;
    for answer in answers {
        match answer {
            Ok(asked) => {
                let outcome = asked.reply().unwrap_or_default();
                total.matched += outcome.matched;
                total.delivered += outcome.delivered;
            }
            Err(e) => {
                debug!(error = %e, "A node could not be asked.");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) if total.delivered == 0 => Err(e),
        _ => Ok(total),
    }
}

/// Asks `node` to deliver `msg` for send `ticket` of this node; waits for
/// its counts (bounded by the broker timeout).
async fn request(
    inner: &Arc<Inner>,
    router: &Router,
    node: &str,
    filter: &Filter,
    msg: &Targeted,
    ticket: Option<u64>,
) -> Result<Asked<SendOutcome>, BrokerError> {
    let from = inner.config.node_id.clone();
    let wire = |req| Wire::Send {
        from,
        req,
        filter: filter.into(),
        msg: WireMsg {
            ticket,
            ..msg.into()
        },
    };
    ask(inner, router, &router.waiting, node, wire).await
}

/// What became of a request to another node.
enum Asked<T> {
    /// Its reply.
    Answered(T),
    /// Nobody listens on that node's channel: it is gone, and did nothing.
    Gone,
    /// It took the request but sent no reply in time: it may still act on it.
    Silent,
}

impl<T> Asked<T> {
    fn reply(self) -> Option<T> {
        match self {
            Self::Answered(reply) => Some(reply),
            Self::Gone | Self::Silent => None,
        }
    }
}

/// Sends `node` the request `wire(req)` and waits, within the broker
/// timeout, for the reply that `on_message` puts in `waiting` under `req`.
async fn ask<T>(
    inner: &Arc<Inner>,
    router: &Router,
    waiting: &Mutex<HashMap<u64, oneshot::Sender<T>>>,
    node: &str,
    wire: impl FnOnce(u64) -> Wire,
) -> Result<Asked<T>, BrokerError> {
    let req = router.next_req.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let _entry = Awaited::insert(waiting, req, tx);
    let reply = match super::send_to_node(inner, node, encode(&wire(req))).await? {
        true => match tokio::time::timeout(inner.config.timeout(), rx).await {
            Ok(Ok(reply)) => Asked::Answered(reply),
            _ => Asked::Silent,
        },
        false => Asked::Gone,
    };
    Ok(reply)
}

/// A request's entry in its `waiting` map, removed however the wait ends:
/// answered, timed out, failed, or dropped by a caller that went away (an
/// HTTP client hanging up on a targeted send).
struct Awaited<'a, T> {
    waiting: &'a Mutex<HashMap<u64, oneshot::Sender<T>>>,
    req: u64,
}

impl<'a, T> Awaited<'a, T> {
    fn insert(
        waiting: &'a Mutex<HashMap<u64, oneshot::Sender<T>>>,
        req: u64,
        tx: oneshot::Sender<T>,
    ) -> Self {
        waiting.lock().insert(req, tx);
        Self { waiting, req }
    }
}

impl<T> Drop for Awaited<'_, T> {
    fn drop(&mut self) {
        self.waiting.lock().remove(&self.req);
    }
}

fn encode(wire: &Wire) -> Bytes {
    Bytes::from(serde_json::to_vec(wire).unwrap_or_default())
}

/// Sends `reply` to node `to`, without holding up the message handler.
fn answer(inner: &Arc<Inner>, to: String, reply: Wire) {
    let inner = inner.clone();
    tokio::spawn(async move {
        let _ = super::send_to_node(&inner, &to, encode(&reply)).await;
    });
}

/// Answers request `req` of node `from` with the counts of `outcome`.
fn reply_sent(inner: &Arc<Inner>, from: String, req: u64, outcome: SendOutcome) {
    let reply = Wire::Sent {
        req,
        matched: outcome.matched,
        delivered: outcome.delivered,
    };
    answer(inner, from, reply);
}

/// Handles a request or reply from another node.
pub(crate) fn on_message(inner: &Arc<Inner>, router: &Arc<Router>, bytes: Bytes) {
    let Ok(wire) = serde_json::from_slice::<Wire>(&bytes) else {
        debug!("Ignoring a malformed node message.");
        return;
    };
    match wire {
        Wire::Send {
            from,
            req,
            filter,
            msg,
        } => {
            let filter = Filter::from(filter);
            let ticket = msg.ticket;
            let msg = Targeted::from(msg);
            // Receivers owe their acks to send `ticket` of `from`, never to
            // a send of the same id on this node.
            let outcome =
                router
                    .directory
                    .deliver_for(Arc::from(from.as_str()), ticket, &filter, &msg);
            reply_sent(inner, from, req, outcome);
        }
        Wire::Disconnect { from, req, filter } => {
            let outcome = router.directory.disconnect(&Filter::from(filter));
            reply_sent(inner, from, req, outcome);
        }
        Wire::Presence {
            from,
            req,
            app,
            name,
        } => {
            let Ok(key) = ChannelKey::new(&Arc::from(app), &name) else {
                return;
            };
            let presence = router.directory.presence(&inner.hub, &key);
            answer(inner, from, Wire::Present { req, presence });
        }
        Wire::Present { req, presence } => {
            if let Some(tx) = router.waiting_presence.lock().remove(&req) {
                let _ = tx.send(presence);
            }
        }
        Wire::Sent {
            req,
            matched,
            delivered,
        } => {
            if let Some(tx) = router.waiting.lock().remove(&req) {
                let _ = tx.send(SendOutcome { matched, delivered });
            }
        }
        Wire::Ack { id, conn, ticket } => {
            router.directory.ack_received(&id, conn, ticket);
        }
        Wire::AckFor {
            from,
            req,
            conn,
            id,
        } => {
            let inner = inner.clone();
            let router = router.clone();
            tokio::spawn(async move {
                // As Engine::acknowledge: the answer is whether `conn` owed
                // the ack; the sender learns of it through `ack`.
                let owed = router.directory.acknowledge(conn, &id);
                let acked = owed.is_some();
                if let Some(to) = owed {
                    let _ = ack(&inner, &router, &id, conn, to).await;
                }
                let reply = Wire::AckedFor { req, acked };
                let _ = super::send_to_node(&inner, &from, encode(&reply)).await;
            });
        }
        Wire::AckedFor { req, acked } => {
            if let Some(tx) = router.waiting_acks.lock().remove(&req) {
                let _ = tx.send(acked);
            }
        }
    }
}

/// Nodes that may have connections matching `filter`.
async fn candidates(inner: &Inner, filter: &Filter) -> Result<Vec<String>, BrokerError> {
    let mut conn = inner.publisher_conn()?;
    let keys: Vec<String> = match filter.dims.dims() {
        [] => vec![inner.keys.ident_nodes()],
        dims => dims.iter().map(|(k, v)| inner.keys.ident(k, v)).collect(),
    };
    let nodes: Vec<String> = bounded(
        inner.config.timeout(),
        redis::cmd("SINTER").arg(&keys).query_async(&mut conn),
    )
    .await
    .map_err(|e| inner.failed(e))?;
    let mut alive = Vec::with_capacity(nodes.len());
    for node in nodes {
        if node == inner.config.node_id || super::node_alive(inner, &node).await? {
            alive.push(node);
        } else {
            forget_node(inner, &node, &keys).await;
        }
    }
    Ok(alive)
}

/// Removes a dead node from the registry: from every set it listed as its
/// own, from `keys` (the sets it was found in, which a node of an older
/// version did not list), and last from `…{ident}:nodes`.
async fn forget_node(inner: &Inner, node: &str, keys: &[String]) {
    let Ok(mut conn) = inner.publisher_conn() else {
        return;
    };
    let own = inner.keys.ident_of_node(node);
    let listed: Vec<String> = bounded(
        inner.config.timeout(),
        redis::cmd("SMEMBERS").arg(&own).query_async(&mut conn),
    )
    .await
    .unwrap_or_default();
    let mut pipe = redis::pipe();
    for key in listed.iter().chain(keys) {
        pipe.cmd("SREM").arg(key).arg(node).ignore();
    }
    pipe.cmd("DEL").arg(&own).ignore();
    pipe.cmd("SREM")
        .arg(inner.keys.ident_nodes())
        .arg(node)
        .ignore();
    let _: Result<(), _> = bounded(inner.config.timeout(), pipe.query_async(&mut conn)).await;
    debug!(
        node,
        sets = listed.len(),
        "Dead node removed from the identity registry."
    );
}

/// Whether this node is still in `…{ident}:nodes`. [`forget_node`] removes
/// it from there last, so a node missing from any set is missing here too.
/// A failed check counts as registered: the next tick asks again.
async fn still_registered(inner: &Inner, me: &str) -> bool {
    let Ok(mut conn) = inner.publisher_conn() else {
        return true;
    };
    let mut ask = redis::cmd("SISMEMBER");
    ask.arg(inner.keys.ident_nodes()).arg(me);
    bounded(inner.config.timeout(), ask.query_async::<bool>(&mut conn))
        .await
        .unwrap_or(true)
}

/// Keeps this node's registry entries equal to its directory's pairs.
pub(crate) async fn run_sync(inner: Arc<Inner>, router: Arc<Router>) {
    let me = inner.config.node_id.clone();
    let mut written: HashSet<Dim> = HashSet::new();
    let mut registered = false;
    let mut generation = 0;
    loop {
        tokio::time::sleep(SYNC_EVERY).await;
        let Some(session) = inner.session() else {
            continue;
        };
        if session.generation != generation {
            // Redis may have restarted empty: write everything again.
            written.clear();
            registered = false;
            generation = session.generation;
        }
        if registered && !still_registered(&inner, &me).await {
            // Another node took this one for dead (its liveness key lapsed,
            // say while this process was paused) and forgot it: the session
            // survived, so only this check notices. Write everything again.
            debug!("Forgotten by the identity registry; registering again.");
            written.clear();
            registered = false;
        }
        let now: HashSet<Dim> = router.directory.dims_present().into_iter().collect();
        let add: Vec<&Dim> = now.difference(&written).collect();
        let remove: Vec<&Dim> = written.difference(&now).collect();
        let want_registered = !now.is_empty();
        if add.is_empty() && remove.is_empty() && want_registered == registered {
            continue;
        }
        let own = inner.keys.ident_of_node(&me);
        let mut pipe = redis::pipe();
        for (k, v) in &add {
            let key = inner.keys.ident(k, v);
            pipe.cmd("SADD").arg(&own).arg(&key).ignore();
            pipe.cmd("SADD").arg(&key).arg(&me).ignore();
        }
        for (k, v) in &remove {
            let key = inner.keys.ident(k, v);
            pipe.cmd("SREM").arg(&key).arg(&me).ignore();
            pipe.cmd("SREM").arg(&own).arg(&key).ignore();
        }
        pipe.cmd(if want_registered { "SADD" } else { "SREM" })
            .arg(inner.keys.ident_nodes())
            .arg(&me)
            .ignore();
        let Ok(mut conn) = inner.publisher_conn() else {
            continue;
        };
        if bounded(inner.config.timeout(), pipe.query_async::<()>(&mut conn))
            .await
            .is_ok()
        {
            written = now;
            registered = want_registered;
            router.registered.lock().clone_from(&written);
        }
    }
}

/// Removes this node from the registry: every set the sync task wrote it
/// to, and `…{ident}:nodes`. The sync task must have stopped.
pub(crate) async fn unregister(
    inner: &Inner,
    router: &Router,
    mut conn: super::conn::Conn,
) -> Result<(), BrokerError> {
    let me = inner.config.node_id.as_str();
    let mut pipe = redis::pipe();
    for (k, v) in router.registered.lock().iter() {
        pipe.cmd("SREM")
            .arg(inner.keys.ident(k, v))
            .arg(me)
            .ignore();
    }
    pipe.cmd("DEL").arg(inner.keys.ident_of_node(me)).ignore();
    pipe.cmd("SREM")
        .arg(inner.keys.ident_nodes())
        .arg(me)
        .ignore();
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(|e| inner.failed(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node Redis would not take the request for does not undo what the
    /// others delivered: the caller would send it all again.
    #[test]
    fn a_node_that_could_not_be_asked_counts_as_silent() {
        let reached = |matched, delivered| SendOutcome { matched, delivered };
        let unreachable = || Err(BrokerError::Unavailable("master down".into()));
        let summed_up = summed(
            reached(1, 1),
            vec![
                Ok(Asked::Answered(reached(2, 2))),
                unreachable(),
                Ok(Asked::Silent),
            ],
        );
        assert_eq!(summed_up.unwrap(), reached(3, 3));
        let nothing = summed(reached(0, 0), vec![Ok(Asked::Gone), unreachable()]);
        assert!(
            nothing.is_err(),
            "delivered nowhere: the failure is the answer"
        );
    }

    #[test]
    fn sends_and_acks_name_the_send_and_read_without_it() {
        let mut msg = Targeted::new(Bytes::from_static(b"1"));
        msg.ack = true;
        let send = Wire::Send {
            from: "A".into(),
            req: 1,
            filter: (&Filter::default()).into(),
            msg: WireMsg {
                ticket: Some(u64::MAX),
                ..(&msg).into()
            },
        };
        let json: serde_json::Value = serde_json::from_slice(&encode(&send)).unwrap();
        assert_eq!(json["msg"]["ticket"], u64::MAX);

        // From a node of an older version: no ticket, no wait.
        let old = r#"{"t":"send","from":"A","req":1,
            "filter":{"dims":[],"find_any":false,"exclude":[]},
            "msg":{"id":"x","event":null,"data":"1","ack":true,"time_ms":0}}"#;
        let Ok(Wire::Send { msg, .. }) = serde_json::from_str::<Wire>(old) else {
            panic!("an older send is read");
        };
        assert_eq!((msg.ticket, msg.wait_ms), (None, DEFAULT_ACK_WAIT_MS));

        // An ack names its send when it has one, and only then.
        let ack = |ticket| {
            encode(&Wire::Ack {
                id: "x".into(),
                conn: 3,
                ticket,
            })
        };
        assert_eq!(&ack(None)[..], br#"{"t":"ack","id":"x","conn":3}"#);
        assert_eq!(
            &ack(Some(9))[..],
            br#"{"t":"ack","id":"x","conn":3,"ticket":9}"#
        );
        let old = r#"{"t":"ack","id":"x","conn":3}"#;
        assert!(matches!(
            serde_json::from_str::<Wire>(old),
            Ok(Wire::Ack { ticket: None, .. })
        ));
    }

    #[test]
    fn a_request_abandoned_midway_leaves_no_entry() {
        use futures_util::FutureExt;
        let waiting: Mutex<HashMap<u64, oneshot::Sender<bool>>> = Mutex::default();
        let (tx, rx) = oneshot::channel();
        let wait = async {
            let _entry = Awaited::insert(&waiting, 7, tx);
            rx.await
        };
        let mut wait = Box::pin(wait);
        assert!(wait.as_mut().now_or_never().is_none(), "still waiting");
        assert!(waiting.lock().contains_key(&7));
        drop(wait);
        assert!(waiting.lock().is_empty());
    }
}
