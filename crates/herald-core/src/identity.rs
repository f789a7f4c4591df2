//! Who a connection is, and the directory that finds connections by who they
//! are: the base of targeted delivery (as opposed to channel fan-out).
//!
//! An [`Identity`] is a set of (dimension, value) pairs: natively `user` plus
//! any labels from the token; Pushca's client maps to `workspace`, `account`,
//! `device` and `application`. A [`Filter`] names some dimensions; a
//! connection matches when it has every named dimension with the same value.
//!
//! The [`Directory`] indexes connections by (dimension, value). Resolving a
//! filter with `k` dimensions intersects `k` posting sets, walking the
//! smallest and probing the others, so it costs
//! `O(min_i |P_i| · (k - 1) · log n)`: proportional to the most selective
//! dimension, never to the number of connections. A filter without
//! dimensions matches every connection that has an identity and walks them
//! all, which is also the size of its result.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, oneshot};

use crate::outbox::{Closed, ConnId, Outbox, Pushed};

/// One (dimension, value) pair, e.g. `("account", "alice@example.com")`.
pub type Dim = (Arc<str>, Arc<str>);

/// Unacknowledged message ids remembered per connection; older ones are
/// forgotten (their acks are then ignored and the sender times out).
const MAX_AWAITING: usize = 1024;

/// Round-robin counters kept for distinct `findAny` filters before the table
/// is reset (rotation then restarts at the first match).
const MAX_ROTATIONS: usize = 10_000;

/// A connection's identity: dimensions sorted by name, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Sorted by dimension; unique dimensions.
    dims: Arc<[Dim]>,
}

impl Identity {
    /// An identity from pairs; a repeated dimension keeps its last value.
    pub fn new<K: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            dims: normalize(pairs.into_iter().map(|(k, v)| (k.into(), v.into()))).into(),
        }
    }

    /// The value of `dim`, if this identity has it.
    pub fn get(&self, dim: &str) -> Option<&str> {
        self.dims
            .binary_search_by(|(k, _)| (**k).cmp(dim))
            .ok()
            .map(|i| &*self.dims[i].1)
    }

    /// Every (dimension, value) pair, sorted by dimension.
    pub fn dims(&self) -> &[Dim] {
        &self.dims
    }

    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }
}

fn normalize(pairs: impl Iterator<Item = Dim>) -> Vec<Dim> {
    let mut v: Vec<Dim> = pairs.collect();
    // Stable sort keeps input order among equal keys, so "last wins" below.
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Dim> = Vec::with_capacity(v.len());
    for pair in v {
        match out.last_mut() {
            Some(last) if last.0 == pair.0 => *last = pair,
            _ => out.push(pair),
        }
    }
    out
}

/// Which connections a targeted message goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Dimensions a connection must have, with these values; absent
    /// dimensions match anything.
    pub dims: Identity,
    /// Deliver to exactly one match, rotating round-robin per message.
    pub find_any: bool,
    /// Exact identities to skip (typically the sender).
    pub exclude: Vec<Identity>,
}

impl Filter {
    /// A multicast filter on `dims`.
    pub fn new(dims: Identity) -> Self {
        Self {
            dims,
            find_any: false,
            exclude: Vec::new(),
        }
    }

    /// Whether a connection with `identity` is a target (ignoring `find_any`).
    pub fn matches(&self, identity: &Identity) -> bool {
        self.dims
            .dims()
            .iter()
            .all(|(k, v)| identity.get(k) == Some(v))
            && !self.exclude.contains(identity)
    }
}

/// A message for the connections a filter selects.
#[derive(Debug, Clone)]
pub struct Targeted {
    /// Message id; kept on retries so receivers can drop duplicates.
    pub id: Arc<str>,
    /// Optional event name.
    pub event: Option<Arc<str>>,
    /// The payload as JSON text.
    pub data: Bytes,
    /// Whether receivers must acknowledge it.
    pub ack: bool,
    /// With `ack`, how long after an attempt its sender may still take an
    /// ack. Carried to other nodes, for those of older versions, which keep
    /// the route of an ack by id that long; this version keeps it with the
    /// receiver that owes the ack.
    pub ack_wait: Duration,
    /// Wall-clock send time in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl Targeted {
    /// A message of `data` (JSON text) with a fresh id, stamped now.
    pub fn new(data: Bytes) -> Self {
        Self {
            id: crate::message::new_message_id(),
            event: None,
            data,
            ack: false,
            ack_wait: Duration::ZERO,
            time_ms: crate::message::now_ms(),
        }
    }

    /// The payload as text: a JSON string unquoted, anything else as JSON.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        if self.data.first() == Some(&b'"')
            && let Ok(s) = serde_json::from_slice::<String>(&self.data)
        {
            return std::borrow::Cow::Owned(s);
        }
        String::from_utf8_lossy(&self.data)
    }
}

/// How a targeted message looks on one connection's wire.
pub trait TargetFormat: Send + Sync + 'static {
    /// Encodes `msg` for one receiver.
    fn encode_targeted(&self, msg: &Targeted) -> Bytes;
}

/// The dimension that names a connection's user (its token's `sub`).
pub const USER: &str = "user";

/// A user's connection joining or leaving a channel, told to the channel's
/// subscribers where presence events are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Leave,
}

impl PresenceChange {
    /// Its name on the wire: `join` or `leave`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// Who is in a channel: connections per user, and those without one.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// Connections per user, by user.
    pub users: std::collections::BTreeMap<String, usize>,
    /// Connections with no user: no token, or a token for no user.
    pub anonymous: usize,
}

impl Presence {
    /// Adds another node's count.
    pub fn merge(&mut self, other: Presence) {
        for (user, n) in other.users {
            *self.users.entry(user).or_default() += n;
        }
        self.anonymous += other.anonymous;
    }
}

/// What one delivery attempt reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Connections the filter selected.
    pub matched: usize,
    /// Of those, connections whose outbox took the message.
    pub delivered: usize,
}

/// A sender waiting for the ack of one message id.
struct Waiting {
    /// Tells this send from an earlier or later one of the same id.
    ticket: u64,
    /// Wakes the sender with the acknowledging connection.
    tx: oneshot::Sender<ConnId>,
    /// Connections of this node the send was delivered to. Only their acks
    /// (or, once it reached other nodes, any routed to it) end the send: a
    /// connection still owing the same id to an earlier send confirms
    /// nothing here.
    reached: Vec<ConnId>,
    /// Deliveries on this node in the current attempt, not yet reported by
    /// [`AckWaiter::attempted`].
    local: usize,
    /// Whether some attempt reached connections on other nodes, whose acks
    /// arrive by id alone; `None` until the first attempt is reported.
    remote: Option<bool>,
    /// Told when a connection in `reached` disconnects.
    left: Arc<Notify>,
}

/// The send a receiver's ack answers, as the node that delivered the
/// message to it recorded it: where to route the ack, and what the waiting
/// node checks it against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckTo {
    /// Nobody: no send waited for the id when it was delivered.
    Nobody,
    /// The send on this node with this ticket.
    Here(u64),
    /// The send with `ticket` on node `node`; `None` when that node, of an
    /// older version, did not name its send.
    Node { node: Arc<str>, ticket: Option<u64> },
}

/// An id a connection owes an ack for.
struct Owed {
    /// The message id an ack must name.
    id: Arc<str>,
    /// The send it was delivered for.
    to: AckTo,
}

/// One connection in the directory.
struct Entry {
    /// Who it is.
    identity: Identity,
    /// Where its frames go.
    outbox: Arc<Outbox>,
    /// How targeted messages are encoded for it.
    format: Arc<dyn TargetFormat>,
    /// Ids delivered with `ack` and not yet acknowledged, oldest first; an
    /// ack is only accepted for an id this connection was actually sent.
    awaiting: Mutex<VecDeque<Owed>>,
    /// When the token it came with was issued (Unix seconds), when it said:
    /// a revocation closes only connections whose token it revokes.
    issued_at: Option<u64>,
}

#[derive(Default)]
struct Index {
    /// Every connection with an identity.
    conns: HashMap<ConnId, Entry>,
    /// (dimension, value) → connections, sorted so round-robin is stable.
    postings: HashMap<Dim, Posting>,
    /// Every dimension name in use, with how many registered pairs use it:
    /// connections share one copy of each name, as they share one copy of
    /// each pair through `postings`.
    names: HashMap<Arc<str>, usize>,
}

impl Index {
    /// `identity` holding the index's own copies of the names and pairs it
    /// has already, so that a thousand connections of one app or account
    /// keep one copy of those strings, not a thousand.
    fn shared(&self, identity: Identity) -> Identity {
        let dims = identity.dims().iter().map(|dim| {
            if let Some((pair, _)) = self.postings.get_key_value(dim) {
                return pair.clone();
            }
            match self.names.get_key_value(&dim.0) {
                Some((name, _)) => (name.clone(), dim.1.clone()),
                None => dim.clone(),
            }
        });
        Identity {
            dims: dims.collect(),
        }
    }

    fn add_postings(&mut self, id: ConnId, identity: &Identity) {
        for dim in identity.dims() {
            match self.postings.get_mut(dim) {
                Some(posting) => posting.insert(id),
                None => {
                    self.postings.insert(dim.clone(), Posting::One(id));
                }
            }
            *self.names.entry(dim.0.clone()).or_default() += 1;
        }
    }

    fn remove_postings(&mut self, id: ConnId, identity: &Identity) {
        for dim in identity.dims() {
            let Some(posting) = self.postings.get_mut(dim) else {
                continue;
            };
            if posting.remove(id) {
                self.postings.remove(dim);
            }
            if let MapEntry::Occupied(mut uses) = self.names.entry(dim.0.clone()) {
                *uses.get_mut() -= 1;
                if *uses.get() == 0 {
                    uses.remove();
                }
            }
        }
    }
}

/// The connections with one (dimension, value) pair, ascending. Most pairs
/// name a single connection (a device, an account), which is kept without
/// a set of its own.
enum Posting {
    One(ConnId),
    Many(BTreeSet<ConnId>),
}

impl Posting {
    fn insert(&mut self, id: ConnId) {
        match self {
            Self::One(one) if *one == id => {}
            Self::One(one) => *self = Self::Many(BTreeSet::from([*one, id])),
            Self::Many(set) => {
                set.insert(id);
            }
        }
    }

    /// Removes `id`; whether none is left.
    fn remove(&mut self, id: ConnId) -> bool {
        match self {
            Self::One(one) => *one == id,
            Self::Many(set) => {
                set.remove(&id);
                match set.len() {
                    0 => true,
                    1 => {
                        let last = *set.first().expect("one left");
                        *self = Self::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(set) => set.len(),
        }
    }

    fn contains(&self, id: &ConnId) -> bool {
        match self {
            Self::One(one) => one == id,
            Self::Many(set) => set.contains(id),
        }
    }

    fn iter(&self) -> impl Iterator<Item = ConnId> + '_ {
        let (one, many) = match self {
            Self::One(one) => (Some(*one), None),
            Self::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// The local directory of connected identities.
pub struct Directory {
    /// Connections and their postings, read-mostly.
    index: RwLock<Index>,
    /// `findAny` rotation per filter's dimensions (whatever it excludes, so
    /// that senders excluding themselves share one turn): the next message
    /// goes to match `n % len`.
    rotation: Mutex<HashMap<Identity, u64>>,
    /// Senders waiting for an ack, by message id; the ticket keeps a dropped
    /// waiter from removing a newer one for the same id.
    pending: Mutex<HashMap<Arc<str>, Waiting>>,
    /// Next waiter ticket. Tickets travel with sends to other nodes and
    /// come back with acks; starting at a random number, they also tell
    /// this process's sends from those of an earlier process that ran
    /// under the same node name.
    tickets: AtomicU64,
    /// Targeted messages queued, for metrics.
    delivered: AtomicU64,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            index: RwLock::default(),
            rotation: Mutex::default(),
            pending: Mutex::default(),
            tickets: AtomicU64::new(rand::random()),
            delivered: AtomicU64::default(),
        }
    }
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) connection `outbox`'s identity. Returns it as
    /// stored, sharing the strings other connections have in common with
    /// it: the copy for the connection to keep.
    #[must_use = "keeping the identity returned keeps one copy of its strings"]
    pub fn register(
        &self,
        identity: Identity,
        outbox: Arc<Outbox>,
        format: Arc<dyn TargetFormat>,
        issued_at: Option<u64>,
    ) -> Identity {
        let id = outbox.id();
        let mut index = self.index.write();
        if let Some(old) = index.conns.remove(&id) {
            index.remove_postings(id, &old.identity);
        }
        let identity = index.shared(identity);
        index.add_postings(id, &identity);
        index.conns.insert(
            id,
            Entry {
                identity: identity.clone(),
                outbox,
                format,
                awaiting: Mutex::default(),
                issued_at,
            },
        );
        identity
    }

    /// Removes connection `id`; unknown ids are ignored. Sends on this node
    /// it still owed an ack are told, so they need not wait for it.
    pub fn unregister(&self, id: ConnId) {
        let mut index = self.index.write();
        if let Some(old) = index.conns.remove(&id) {
            index.remove_postings(id, &old.identity);
            let pending = self.pending.lock();
            for owed in old.awaiting.lock().iter() {
                if let AckTo::Here(ticket) = owed.to
                    && let Some(w) = pending.get(&owed.id)
                    && w.ticket == ticket
                {
                    w.left.notify_one();
                }
            }
        }
    }

    /// Whether every connection send `ticket` of `id` reached has
    /// disconnected, and it reached no other node: nobody can ack it.
    fn receivers_left(&self, id: &str, ticket: u64) -> bool {
        let index = self.index.read();
        let pending = self.pending.lock();
        pending.get(id).is_some_and(|w| {
            w.ticket == ticket
                && w.remote == Some(false)
                && w.reached.iter().all(|c| !index.conns.contains_key(c))
        })
    }

    /// Connections with an identity.
    pub fn len(&self) -> usize {
        self.index.read().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The identity of connection `id`, if it has one.
    pub fn identity(&self, id: ConnId) -> Option<Identity> {
        self.index.read().conns.get(&id).map(|e| e.identity.clone())
    }

    /// Every (dimension, value) pair some local connection has: what a
    /// cluster registry must list for this node.
    pub fn dims_present(&self) -> Vec<Dim> {
        self.index.read().postings.keys().cloned().collect()
    }

    /// Targeted messages queued so far.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// The connections `filter` selects, ascending; one for `find_any`
    /// (advancing that filter's rotation).
    pub fn resolve(&self, filter: &Filter) -> Vec<ConnId> {
        let index = self.index.read();
        let mut all = self.in_turn(&index, filter);
        if filter.find_any {
            all.truncate(1);
        }
        all
    }

    /// The connections `filter` selects in `index`: ascending, or for
    /// `find_any` rotated to start at this message's turn (the others
    /// following, for when it cannot take the message).
    fn in_turn(&self, index: &Index, filter: &Filter) -> Vec<ConnId> {
        let mut all = matches(index, filter);
        if filter.find_any && all.len() > 1 {
            let turn = self.next_turn(filter, all.len());
            all.rotate_left(turn);
        }
        all
    }

    fn next_turn(&self, filter: &Filter, len: usize) -> usize {
        let mut rotation = self.rotation.lock();
        if rotation.len() >= MAX_ROTATIONS && !rotation.contains_key(&filter.dims) {
            rotation.clear();
        }
        let n = rotation.entry(filter.dims.clone()).or_insert(0);
        let turn = (*n % len as u64) as usize;
        *n = n.wrapping_add(1);
        turn
    }

    /// Who is in channel `key` on this node: its subscribers in `hub`,
    /// counted by the user their token names, the rest as anonymous.
    pub fn presence(&self, hub: &crate::Hub, key: &crate::ChannelKey) -> Presence {
        let ids = hub.subscriber_ids(key);
        let index = self.index.read();
        let mut presence = Presence::default();
        for id in ids {
            match index.conns.get(&id).and_then(|e| e.identity.get(USER)) {
                Some(user) => *presence.users.entry(user.to_owned()).or_default() += 1,
                None => presence.anonymous += 1,
            }
        }
        presence
    }

    /// Closes every connection on this node that `filter` selects
    /// (`find_any` aside: all of them) as [`Closed::Evicted`]; their
    /// transports tell their clients not to come back. `delivered` counts
    /// the connections this call closed: one closed already, and not yet
    /// gone, is matched but not counted again.
    pub fn disconnect(&self, filter: &Filter) -> SendOutcome {
        let index = self.index.read();
        let targets = matches(&index, filter);
        let closed = targets
            .iter()
            .filter_map(|id| index.conns.get(id))
            .filter(|entry| entry.outbox.close(Closed::Evicted))
            .count();
        SendOutcome {
            matched: targets.len(),
            delivered: closed,
        }
    }

    /// Closes (as [`Closed::Evicted`]) this node's connections that `filter`
    /// selects and whose token was issued at or before `until` (Unix
    /// seconds), or did not say when: those a revocation revokes. Returns
    /// how many it closed.
    pub fn disconnect_issued_until(&self, filter: &Filter, until: u64) -> usize {
        let index = self.index.read();
        matches(&index, filter)
            .iter()
            .filter_map(|id| index.conns.get(id))
            .filter(|entry| entry.issued_at.is_none_or(|iat| iat <= until))
            .filter(|entry| entry.outbox.close(Closed::Evicted))
            .count()
    }

    /// The ticket of the send on this node waiting for an ack of `id`, if
    /// any: what a delivery on another node names as the send it is for.
    pub fn waiting_ticket(&self, id: &str) -> Option<u64> {
        self.pending.lock().get(id).map(|w| w.ticket)
    }

    /// Queues `msg` for every connection `filter` selects on this node. With
    /// `msg.ack`, each receiver is remembered as owing an ack for `msg.id`
    /// to the send on this node waiting for it.
    pub fn deliver(&self, filter: &Filter, msg: &Targeted) -> SendOutcome {
        // The send on this node waiting for the id, if any: the receivers
        // owe their ack to it, not to whichever send of the id comes next.
        let ticket = if msg.ack {
            self.waiting_ticket(&msg.id)
        } else {
            None
        };
        self.deliver_owed(filter, msg, ticket.map_or(AckTo::Nobody, AckTo::Here))
    }

    /// As [`deliver`](Self::deliver), for send `ticket` of node `node`: with
    /// `msg.ack`, each receiver owes its ack to that send, and its ack is
    /// routed there carrying `ticket`, never to a send on this node.
    pub fn deliver_for(
        &self,
        node: Arc<str>,
        ticket: Option<u64>,
        filter: &Filter,
        msg: &Targeted,
    ) -> SendOutcome {
        self.deliver_owed(filter, msg, AckTo::Node { node, ticket })
    }

    fn deliver_owed(&self, filter: &Filter, msg: &Targeted, to: AckTo) -> SendOutcome {
        // Chosen and written under one read of the index: a connection
        // chosen cannot leave in between.
        let index = self.index.read();
        let targets = self.in_turn(&index, filter);
        let mut outcome = SendOutcome {
            matched: if filter.find_any {
                targets.len().min(1)
            } else {
                targets.len()
            },
            delivered: 0,
        };
        let mut owing = Vec::new();
        for id in targets {
            let Some(entry) = index.conns.get(&id) else {
                continue;
            };
            if msg.ack {
                let mut awaiting = entry.awaiting.lock();
                match awaiting.iter_mut().find(|o| o.id == msg.id) {
                    Some(owed) => owed.to.clone_from(&to),
                    None => {
                        if awaiting.len() >= MAX_AWAITING {
                            awaiting.pop_front();
                        }
                        awaiting.push_back(Owed {
                            id: msg.id.clone(),
                            to: to.clone(),
                        });
                    }
                }
            }
            // A targeted send reaches one connection or a few: written directly.
            if entry.outbox.push_direct(entry.format.encode_targeted(msg)) == Pushed::Queued {
                outcome.delivered += 1;
                if msg.ack {
                    owing.push(id);
                }
                if filter.find_any {
                    break;
                }
            }
            // Closed or overflowing (going away): findAny tries the next in
            // turn.
        }
        if let AckTo::Here(ticket) = to
            && let Some(w) = self.pending.lock().get_mut(&msg.id)
            && w.ticket == ticket
        {
            for conn in owing {
                if !w.reached.contains(&conn) {
                    w.reached.push(conn);
                }
            }
            w.local += outcome.delivered;
        }
        self.delivered
            .fetch_add(outcome.delivered as u64, Ordering::Relaxed);
        outcome
    }

    /// Receiver side: connection `conn` acknowledges `id`. `Some` when
    /// `conn` was sent `id` with an ack request and had not acknowledged it
    /// yet, unless that send was made on this node and has ended: the send
    /// to give the ack to.
    pub fn acknowledge(&self, conn: ConnId, id: &str) -> Option<AckTo> {
        let index = self.index.read();
        let entry = index.conns.get(&conn)?;
        let owed = {
            let mut awaiting = entry.awaiting.lock();
            let i = awaiting.iter().position(|o| &*o.id == id)?;
            awaiting.remove(i)?
        };
        // Owed to a send that has ended: a later send of the same id, maybe
        // to another connection, must not take this ack as its own. A send
        // on another node is checked there, against its ticket.
        match owed.to {
            AckTo::Here(ticket) => self
                .pending
                .lock()
                .get(id)
                .is_some_and(|w| w.ticket == ticket)
                .then_some(owed.to),
            to => Some(to),
        }
    }

    /// Gives back an ack [`Directory::acknowledge`] took, owed to `to`, when
    /// passing it on failed: the client's retry of it is taken again rather
    /// than refused as not owed.
    pub fn owe_again(&self, conn: ConnId, id: &str, to: AckTo) {
        let index = self.index.read();
        if let Some(entry) = index.conns.get(&conn) {
            let mut awaiting = entry.awaiting.lock();
            if !awaiting.iter().any(|o| &*o.id == id) {
                awaiting.push_front(Owed {
                    id: Arc::from(id),
                    to,
                });
            }
        }
    }

    /// Sender side: starts waiting for an ack of `id`. `None` when another
    /// send of the same id is already waiting.
    pub fn expect_ack(self: &Arc<Self>, id: Arc<str>) -> Option<AckWaiter> {
        let (tx, rx) = oneshot::channel();
        let left = Arc::new(Notify::new());
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        match self.pending.lock().entry(id.clone()) {
            MapEntry::Occupied(_) => return None,
            MapEntry::Vacant(v) => {
                v.insert(Waiting {
                    ticket,
                    tx,
                    reached: Vec::new(),
                    local: 0,
                    remote: None,
                    left: left.clone(),
                });
            }
        }
        Some(AckWaiter {
            rx,
            id,
            ticket,
            left,
            reached: false,
            directory: self.clone(),
        })
    }

    /// `conn`'s ack of `id`, owed to `to`, when `to` is a send on this node:
    /// true when that send still waits, and it ends. What a broker linking
    /// no other nodes does with every ack.
    pub fn ack_here(&self, id: &str, conn: ConnId, to: &AckTo) -> bool {
        match to {
            AckTo::Here(ticket) => self.ack_received(id, conn, Some(*ticket)),
            AckTo::Nobody | AckTo::Node { .. } => false,
        }
    }

    /// An ack of `id` by `conn` reached the node waiting for it, for send
    /// `ticket` of this node. True when that send still waits, and it ends.
    ///
    /// Without a ticket (an ack from a node of an older version, which
    /// carries no more than the id), true when a send of `id` was waiting
    /// for an ack from `conn`: one of this node's connections it was
    /// delivered to, or any connection once it reached other nodes.
    pub fn ack_received(&self, id: &str, conn: ConnId, ticket: Option<u64>) -> bool {
        let mut pending = self.pending.lock();
        let ours = pending.get(id).is_some_and(|w| match ticket {
            Some(ticket) => w.ticket == ticket,
            None => w.remote != Some(false) || w.reached.contains(&conn),
        });
        ours && pending.remove(id).is_some_and(|w| w.tx.send(conn).is_ok())
    }
}

/// Connections matching `filter` (all of them, ascending), by intersecting
/// postings from the smallest.
fn matches(index: &Index, filter: &Filter) -> Vec<ConnId> {
    let dims = filter.dims.dims();
    let excluded = |id: &ConnId| {
        !filter.exclude.is_empty()
            && index
                .conns
                .get(id)
                .is_some_and(|e| filter.exclude.contains(&e.identity))
    };
    if dims.is_empty() {
        let mut all: Vec<ConnId> = index
            .conns
            .keys()
            .copied()
            .filter(|id| !excluded(id))
            .collect();
        all.sort_unstable();
        return all;
    }
    let mut sets = Vec::with_capacity(dims.len());
    for dim in dims {
        match index.postings.get(dim) {
            Some(set) => sets.push(set),
            None => return Vec::new(),
        }
    }
    sets.sort_by_key(|s| s.len());
    let (smallest, rest) = sets.split_first().expect("at least one dimension");
    smallest
        .iter()
        .filter(|id| rest.iter().all(|s| s.contains(id)) && !excluded(id))
        .collect()
}

/// A sender waiting for the ack of one message id; stops waiting when dropped.
pub struct AckWaiter {
    /// Resolves with the acknowledging connection.
    rx: oneshot::Receiver<ConnId>,
    /// The message id waited on.
    id: Arc<str>,
    /// Tells this waiter's registration from a later one for the same id.
    ticket: u64,
    /// Told when a connection the send reached disconnects.
    left: Arc<Notify>,
    /// The last attempt reached someone: the next wait may end early.
    reached: bool,
    /// Where the waiter is registered.
    directory: Arc<Directory>,
}

impl AckWaiter {
    /// Waits up to `timeout` for the ack; `Some(conn)` once acknowledged.
    /// May be called again after a timeout.
    ///
    /// The wait right after an attempt that reached someone ends early,
    /// with `None`, once every connection the send reached has disconnected
    /// (and it reached no other node): nobody is left who could ack, so the
    /// engine goes on to its next attempt, or gives up, without idling.
    pub async fn wait(&mut self, timeout: std::time::Duration) -> Option<ConnId> {
        let early = std::mem::take(&mut self.reached);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.left.clone();
            let mut notified = std::pin::pin!(left.notified());
            let rx = &mut self.rx;
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(acked) = Pin::new(&mut *rx).poll(cx) {
                    return Poll::Ready(Some(acked.ok()));
                }
                if early && notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            });
            match tokio::time::timeout_at(deadline, woken).await {
                Ok(Some(acked)) => return acked,
                Ok(None) if self.directory.receivers_left(&self.id, self.ticket) => return None,
                Ok(None) => {}
                Err(_) => return None,
            }
        }
    }

    /// The ack already arrived (without waiting).
    pub fn try_acked(&mut self) -> Option<ConnId> {
        self.rx.try_recv().ok()
    }

    /// Reports that an attempt queued the message for `delivered`
    /// connections on every node. More than this node delivered means
    /// other nodes hold receivers, and acks routed from them are accepted.
    pub fn attempted(&mut self, delivered: usize) {
        self.reached = delivered > 0;
        let mut pending = self.directory.pending.lock();
        if let Some(w) = pending
            .get_mut(&self.id)
            .filter(|w| w.ticket == self.ticket)
        {
            let remote = delivered > std::mem::take(&mut w.local);
            w.remote = Some(w.remote == Some(true) || remote);
        }
    }
}

impl Drop for AckWaiter {
    fn drop(&mut self) {
        let mut pending = self.directory.pending.lock();
        if pending
            .get(&self.id)
            .is_some_and(|w| w.ticket == self.ticket)
        {
            pending.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Raw;

    impl TargetFormat for Raw {
        fn encode_targeted(&self, msg: &Targeted) -> Bytes {
            msg.data.clone()
        }
    }

    fn ident(pairs: &[(&str, &str)]) -> Identity {
        Identity::new(pairs.iter().map(|&(k, v)| (k, v)))
    }

    fn add(dir: &Directory, id: ConnId, pairs: &[(&str, &str)]) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20));
        let _ = dir.register(ident(pairs), outbox.clone(), Arc::new(Raw), None);
        outbox
    }

    fn client(ws: &str, acc: &str, dev: &str) -> Vec<(&'static str, String)> {
        vec![
            ("workspace", ws.to_owned()),
            ("account", acc.to_owned()),
            ("device", dev.to_owned()),
            ("application", "app".to_owned()),
        ]
    }

    fn add_client(dir: &Directory, id: ConnId, ws: &str, acc: &str, dev: &str) {
        let outbox = Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20));
        let _ = dir.register(
            Identity::new(client(ws, acc, dev)),
            outbox,
            Arc::new(Raw),
            None,
        );
    }

    #[test]
    fn disconnect_closes_the_matches_once_and_leaves_the_rest() {
        let dir = Directory::default();
        let phone = add(&dir, 1, &[("user", "alice"), ("device", "phone")]);
        let laptop = add(&dir, 2, &[("user", "alice"), ("device", "laptop")]);
        let bob = add(&dir, 3, &[("user", "bob")]);
        let alice = Filter {
            dims: ident(&[("user", "alice")]),
            find_any: false,
            exclude: Vec::new(),
        };
        let out = dir.disconnect(&alice);
        assert_eq!((out.matched, out.delivered), (2, 2));
        let mut frames = Vec::new();
        assert_eq!(phone.drain(&mut frames), Some(Closed::Evicted));
        assert_eq!(laptop.drain(&mut frames), Some(Closed::Evicted));
        assert_eq!(bob.drain(&mut frames), None);
        // Closed already, not gone yet: matched, not closed again.
        let out = dir.disconnect(&alice);
        assert_eq!((out.matched, out.delivered), (2, 0));
    }

    #[test]
    fn identity_is_sorted_and_last_value_wins() {
        let i = ident(&[("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(i.get("a"), Some("2"));
        assert_eq!(i.get("b"), Some("3"));
        assert_eq!(i.get("c"), None);
        assert_eq!(i, ident(&[("a", "2"), ("b", "3")]));
    }

    #[test]
    fn filter_matches_any_subset_of_dimensions() {
        let who = ident(&[("account", "a"), ("device", "d"), ("workspace", "w")]);
        assert!(Filter::new(Identity::default()).matches(&who));
        assert!(Filter::new(ident(&[("account", "a")])).matches(&who));
        assert!(Filter::new(ident(&[("account", "a"), ("workspace", "w")])).matches(&who));
        assert!(!Filter::new(ident(&[("account", "b")])).matches(&who));
        assert!(!Filter::new(ident(&[("application", "x")])).matches(&who));
        let mut f = Filter::new(ident(&[("account", "a")]));
        f.exclude.push(who.clone());
        assert!(!f.matches(&who));
    }

    #[test]
    fn resolve_intersects_postings() {
        let dir = Directory::new();
        add_client(&dir, 1, "w1", "alice", "phone");
        add_client(&dir, 2, "w1", "alice", "laptop");
        add_client(&dir, 3, "w1", "bob", "phone");
        add_client(&dir, 4, "w2", "alice", "phone");
        let f = |pairs: &[(&str, &str)]| Filter::new(ident(pairs));
        assert_eq!(dir.resolve(&f(&[("workspace", "w1")])), vec![1, 2, 3]);
        assert_eq!(
            dir.resolve(&f(&[("workspace", "w1"), ("account", "alice")])),
            vec![1, 2]
        );
        assert_eq!(
            dir.resolve(&f(&[("account", "alice"), ("device", "phone")])),
            vec![1, 4]
        );
        assert_eq!(
            dir.resolve(&f(&[("account", "carol")])),
            Vec::<ConnId>::new()
        );
        assert_eq!(dir.resolve(&f(&[])), vec![1, 2, 3, 4]);
        dir.unregister(2);
        assert_eq!(
            dir.resolve(&f(&[("workspace", "w1"), ("account", "alice")])),
            vec![1]
        );
        dir.unregister(1);
        dir.unregister(3);
        dir.unregister(4);
        let index = dir.index.read();
        assert!(index.postings.is_empty(), "postings are cleaned up");
        assert!(index.names.is_empty(), "names are cleaned up");
    }

    #[test]
    fn connections_share_the_strings_of_the_pairs_and_names_they_have_in_common() {
        let dir = Directory::new();
        add_client(&dir, 1, "w1", "alice", "phone");
        add_client(&dir, 2, "w1", "bob", "laptop");
        let (one, two) = (dir.identity(1).unwrap(), dir.identity(2).unwrap());
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b);
        let [acc1, app1, dev1, ws1] = one.dims() else {
            panic!("four dims")
        };
        let [acc2, app2, dev2, ws2] = two.dims() else {
            panic!("four dims")
        };
        assert!(
            same(&ws1.0, &ws2.0) && same(&ws1.1, &ws2.1),
            "one copy of workspace=w1"
        );
        assert!(same(&app1.1, &app2.1), "one copy of application=app");
        assert!(
            same(&acc1.0, &acc2.0) && same(&dev1.0, &dev2.0),
            "one copy of each name"
        );
        assert_eq!((&*acc2.1, &*dev2.1), ("bob", "laptop"));
        // Shared copies do not change what an identity is.
        assert_eq!(two, Identity::new(client("w1", "bob", "laptop")));
    }

    #[test]
    fn a_posting_shrinks_back_to_one_and_keeps_its_order() {
        let dir = Directory::new();
        let f = Filter::new(ident(&[("workspace", "w")]));
        for id in [5, 3, 9] {
            add_client(&dir, id, "w", &format!("a{id}"), "d");
        }
        assert_eq!(dir.resolve(&f), vec![3, 5, 9]);
        dir.unregister(5);
        dir.unregister(9);
        assert!(matches!(
            dir.index
                .read()
                .postings
                .get(&ident(&[("workspace", "w")]).dims()[0]),
            Some(Posting::One(3))
        ));
        assert_eq!(dir.resolve(&f), vec![3]);
        // Registering the same connection again changes nothing.
        add_client(&dir, 3, "w", "a3", "d");
        add_client(&dir, 7, "w", "a7", "d");
        assert_eq!(dir.resolve(&f), vec![3, 7]);
        assert_eq!(dir.index.read().names["workspace"], 2);
    }

    #[test]
    fn resolve_agrees_with_a_scan() {
        let dir = Directory::new();
        let mut all = Vec::new();
        for id in 0..200u64 {
            let pairs = client(
                &format!("w{}", id % 3),
                &format!("a{}", id % 7),
                &format!("d{}", id % 5),
            );
            let who = Identity::new(pairs.clone());
            all.push((id, who));
            let outbox = Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20));
            let _ = dir.register(Identity::new(pairs), outbox, Arc::new(Raw), None);
        }
        for ws in 0..3 {
            for acc in 0..7 {
                let mut f = Filter::new(ident(&[
                    ("workspace", &format!("w{ws}")),
                    ("account", &format!("a{acc}")),
                ]));
                f.exclude.push(all[5].1.clone());
                let scanned: Vec<ConnId> = all
                    .iter()
                    .filter(|(_, who)| f.matches(who))
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(dir.resolve(&f), scanned);
            }
        }
    }

    #[test]
    fn find_any_rotates_fairly_and_skips_excluded() {
        let dir = Directory::new();
        for id in 1..=3 {
            add_client(&dir, id, "w", "svc", &format!("d{id}"));
        }
        add_client(&dir, 4, "w", "other", "d4");
        let mut f = Filter::new(ident(&[("account", "svc")]));
        f.find_any = true;
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let got = dir.resolve(&f);
            assert_eq!(got.len(), 1);
            *counts.entry(got[0]).or_insert(0) += 1;
        }
        assert_eq!(counts, HashMap::from([(1, 100), (2, 100), (3, 100)]));

        f.exclude.push(Identity::new(client("w", "svc", "d2")));
        let picks: Vec<ConnId> = (0..4).flat_map(|_| dir.resolve(&f)).collect();
        assert!(picks.iter().all(|&p| p == 1 || p == 3));
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 2);
    }

    #[test]
    fn find_any_passes_a_closed_connection_to_the_next_in_turn() {
        let dir = Directory::new();
        let outboxes: Vec<_> = (1..=3)
            .map(|id| {
                add(
                    &dir,
                    id,
                    &[("account", "svc"), ("device", &format!("d{id}"))],
                )
            })
            .collect();
        // Closed (slow, or evicted), not yet unregistered.
        outboxes[1].close(Closed::SlowConsumer);
        let mut f = Filter::new(ident(&[("account", "svc")]));
        f.find_any = true;
        let msg = Targeted::new(Bytes::from_static(b"1"));
        for _ in 0..6 {
            let out = dir.deliver(&f, &msg);
            assert_eq!(
                out,
                SendOutcome {
                    matched: 1,
                    delivered: 1
                }
            );
        }
        let mut frames = Vec::new();
        let got: Vec<usize> = outboxes
            .iter()
            .map(|o| {
                frames.clear();
                o.drain(&mut frames);
                frames.len()
            })
            .collect();
        // 2's turns went to 3, the next in turn.
        assert_eq!(got, [2, 0, 4]);
    }

    #[test]
    fn deliver_queues_encoded_frames_and_counts() {
        let dir = Directory::new();
        let a = add(&dir, 1, &[("user", "u1")]);
        let b = add(&dir, 2, &[("user", "u2")]);
        let msg = Targeted::new(Bytes::from_static(b"\"hi\""));
        let out = dir.deliver(&Filter::new(ident(&[("user", "u1")])), &msg);
        assert_eq!(
            out,
            SendOutcome {
                matched: 1,
                delivered: 1
            }
        );
        let mut frames = Vec::new();
        a.drain(&mut frames);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].bytes, Bytes::from_static(b"\"hi\""));
        frames.clear();
        b.drain(&mut frames);
        assert!(frames.is_empty());
        assert_eq!(msg.text(), "hi");
    }

    #[tokio::test]
    async fn acks_are_accepted_only_from_receivers() {
        let dir = Arc::new(Directory::new());
        add(&dir, 1, &[("user", "u1")]);
        add(&dir, 2, &[("user", "u2")]);
        let mut msg = Targeted::new(Bytes::from_static(b"1"));
        msg.ack = true;
        let mut waiter = dir.expect_ack(msg.id.clone()).expect("first waiter");
        assert!(
            dir.expect_ack(msg.id.clone()).is_none(),
            "one waiter per id"
        );
        dir.deliver(&Filter::new(ident(&[("user", "u1")])), &msg);
        assert_eq!(dir.acknowledge(2, &msg.id), None, "u2 was not sent this id");
        let to = dir.acknowledge(1, &msg.id).expect("u1 owes it");
        assert_eq!(to, AckTo::Here(waiter.ticket));
        assert_eq!(dir.acknowledge(1, &msg.id), None, "a second ack is a no-op");
        assert!(dir.ack_received(&msg.id, 1, Some(waiter.ticket)));
        assert_eq!(
            waiter.wait(std::time::Duration::from_secs(1)).await,
            Some(1)
        );
        drop(waiter);
        assert!(dir.expect_ack(msg.id.clone()).is_some(), "id free again");
    }

    /// A directory with connection 1 as user `b` and 2 as user `d`, and a
    /// message to send them with ack.
    fn b_and_d_owe_acks() -> (Arc<Directory>, Targeted) {
        let dir = Arc::new(Directory::new());
        add(&dir, 1, &[("user", "b")]);
        add(&dir, 2, &[("user", "d")]);
        let mut msg = Targeted::new(Bytes::from_static(b"1"));
        msg.ack = true;
        (dir, msg)
    }

    /// The filter for user `user`.
    fn to(user: &str) -> Filter {
        Filter::new(ident(&[("user", user)]))
    }

    #[tokio::test]
    async fn an_ack_owed_to_an_ended_send_confirms_no_later_one() {
        let (dir, msg) = b_and_d_owe_acks();
        let mut first = dir.expect_ack(msg.id.clone()).unwrap();
        let first_ticket = first.ticket;
        dir.deliver(&to("b"), &msg);
        first.attempted(1);
        drop(first); // b never acked in time

        // The same id again, to d: b's late ack is not d's.
        let mut second = dir.expect_ack(msg.id.clone()).unwrap();
        dir.deliver(&to("d"), &msg);
        second.attempted(1);
        assert_eq!(dir.acknowledge(1, &msg.id), None, "b owed the first send");
        assert!(!dir.ack_received(&msg.id, 1, Some(first_ticket)));
        assert!(
            !dir.ack_received(&msg.id, 1, None),
            "b was not sent the second"
        );
        assert_eq!(second.try_acked(), None);
        assert_eq!(
            dir.acknowledge(2, &msg.id),
            Some(AckTo::Here(second.ticket))
        );
        assert!(dir.ack_received(&msg.id, 2, Some(second.ticket)));
        assert_eq!(second.try_acked(), Some(2));
        drop(second);

        // A send that reached another node takes acks routed from there
        // that name it, and those of older nodes, which name no send.
        let mut third = dir.expect_ack(msg.id.clone()).unwrap();
        dir.deliver(&to("d"), &msg);
        third.attempted(2);
        assert!(!dir.ack_received(&msg.id, 98, Some(first_ticket)));
        assert!(dir.ack_received(&msg.id, 99, Some(third.ticket)));
        assert_eq!(third.try_acked(), Some(99));
        drop(third);
        let mut fourth = dir.expect_ack(msg.id.clone()).unwrap();
        dir.deliver(&to("d"), &msg);
        fourth.attempted(2);
        assert!(dir.ack_received(&msg.id, 97, None));
        assert_eq!(fourth.try_acked(), Some(97));
    }

    #[tokio::test]
    async fn a_delivery_for_another_node_owes_the_ack_to_that_nodes_send() {
        let (dir, msg) = b_and_d_owe_acks();
        // A send of the same id waits here too: remote deliveries are not
        // its own, and their acks go back to their node with its ticket.
        let mut here = dir.expect_ack(msg.id.clone()).unwrap();
        let node: Arc<str> = Arc::from("A");
        dir.deliver_for(node.clone(), Some(7), &to("b"), &msg);
        dir.deliver_for(node.clone(), Some(8), &to("d"), &msg);
        let b = dir.acknowledge(1, &msg.id).expect("b owes it");
        assert_eq!(
            b,
            AckTo::Node {
                node: node.clone(),
                ticket: Some(7)
            }
        );
        assert_eq!(
            dir.acknowledge(2, &msg.id),
            Some(AckTo::Node {
                node,
                ticket: Some(8)
            })
        );
        assert_eq!(here.try_acked(), None);

        // A sender of an older version names no send.
        dir.deliver_for(Arc::from("old"), None, &to("b"), &msg);
        assert_eq!(
            dir.acknowledge(1, &msg.id),
            Some(AckTo::Node {
                node: Arc::from("old"),
                ticket: None
            })
        );

        // Sent while nobody waited: owed to nobody.
        drop(here);
        dir.deliver(&to("b"), &msg);
        assert_eq!(dir.acknowledge(1, &msg.id), Some(AckTo::Nobody));
    }

    #[tokio::test]
    async fn dropped_waiter_frees_its_id() {
        let dir = Arc::new(Directory::new());
        let id: Arc<str> = Arc::from("m1");
        let mut w = dir.expect_ack(id.clone()).unwrap();
        assert_eq!(w.wait(std::time::Duration::from_millis(1)).await, None);
        let ticket = w.ticket;
        drop(w);
        assert!(!dir.ack_received("m1", 1, Some(ticket)));
        assert!(!dir.ack_received("m1", 1, None));
        assert!(dir.expect_ack(id).is_some());
    }
}
