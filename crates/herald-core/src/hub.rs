//! The hub: which local connections listen to which channel, and fan-out.
//!
//! Channels live in shards chosen by hash, each behind its own lock, so
//! subscribes on different channels rarely contend. A channel's own mutex
//! orders its messages: offsets are assigned and subscribers fed under it, so
//! every subscriber sees a channel's messages in offset order. Fan-out only
//! queues shared bytes into outboxes; it never waits on a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::Mutex;

use crate::channel::ChannelKey;
use crate::channel_map::ChannelMap;
use crate::flusher::Flushers;
use crate::history::{History, HistoryPolicy, Position, Recovery, Replay, Retention};
use crate::identity::PresenceChange;
use crate::message::{Message, Publication, next_publish_time, now_ms};
use crate::outbox::{ConnId, Outbox, Pushed};
use crate::stats::HubStats;

/// Channels with at most this many local subscribers are written to their
/// sockets by the publishing thread, under the channel's lock (unless a
/// subscriber gets frames too fast, see [`Outbox::push_direct`]): a few
/// writes cost less than waking each subscriber's task. Bigger fan-outs
/// queue under the lock without waking anyone and are written after it,
/// oldest first, by the hub's [`Flushers`].
const DIRECT_FAN_OUT: usize = 16;

/// The result of publishing one message to one channel.
#[derive(Debug, Clone)]
pub struct Published {
    /// The message id.
    pub id: Arc<str>,
    /// Its position in the channel (0 when nobody listened and nothing is kept).
    pub offset: u64,
    /// The channel's history generation.
    pub epoch: Arc<str>,
    /// Local subscribers the message was queued for.
    pub subscribers: usize,
}

/// What [`Hub::deliver`] did with a message from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for this many local subscribers.
    Reached(usize),
    /// Already delivered (offset behind the channel): dropped.
    Duplicate,
    /// Held back behind an open gap.
    Held,
    /// Offsets are missing: read them from history and give them to
    /// [`Hub::fill`]. The message was held back.
    Gap(Missing),
}

/// Offsets `after + 1 .. before` of a channel, missing here: a gap, which
/// [`Hub::fill`] closes only when given this gap's `id`. A read that
/// outlived its gap (the channel was dropped and made again, and has a new
/// gap) must not close another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    /// The last offset delivered before the gap.
    pub after: u64,
    /// The first offset delivered (held) after it.
    pub before: u64,
    /// Which gap: unique within the process.
    pub id: u64,
}

/// Gap ids, process-wide: a channel made again starts no new sequence.
static GAP_IDS: AtomicU64 = AtomicU64::new(1);

/// An open gap: its id, and the broker's messages held back behind it.
struct Gap {
    id: u64,
    held: Vec<Arc<Message>>,
}

impl Gap {
    fn open(held: Vec<Arc<Message>>) -> Self {
        Self {
            id: GAP_IDS.fetch_add(1, Ordering::Relaxed),
            held,
        }
    }
}

/// Counts for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel these counts are for.
    pub key: ChannelKey,
    /// Connections on this node subscribed to it.
    pub subscribers: usize,
    /// Messages published to it since it was created on this node.
    pub published: u64,
    /// The offset the next message will get.
    pub next_offset: u64,
    /// The channel's history generation.
    pub epoch: Arc<str>,
    /// Messages stored for resume.
    pub stored: usize,
}

impl ChannelInfo {
    /// The info of a channel as a cluster broker counts it.
    pub fn from_stats(key: ChannelKey, stats: crate::broker::ChannelStats) -> Self {
        Self {
            key,
            subscribers: stats.subscribers,
            published: stats.position.offset,
            next_offset: stats.position.offset + 1,
            epoch: stats.position.epoch,
            stored: stats.stored,
        }
    }
}

/// What a subscribe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's first local subscriber: the node must start listening.
    pub first_local: bool,
    /// Messages replayed into the outbox before live ones.
    pub replayed: usize,
    /// The outcome of a resume, when one was asked for.
    pub recovery: Option<Recovery>,
    /// The channel's position at subscribe time: the last offset and epoch.
    pub position: Position,
}

/// What a hub holds at one moment, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Channels the hub holds.
    pub channels: usize,
    /// Local subscriptions, summed over channels.
    pub subscriptions: usize,
    /// Messages kept in the channels' history on this node.
    pub stored: usize,
}

/// The local subscription registry and fan-out engine.
pub struct Hub {
    /// Channels by key, split across shards to spread lock contention.
    channels: ChannelMap<Channel>,
    /// Counters shared with the metrics endpoint.
    stats: Arc<HubStats>,
    /// Which channels keep history.
    policy: HistoryPolicy,
    /// Write big fan-outs once the channel's lock is released.
    flushers: Flushers,
    /// How long a channel that never had a message, and has no subscribers,
    /// is kept before the sweep forgets it, with its epoch: a client that
    /// reconnects or polls again within it resumes where it was, where a
    /// new epoch would tell it to start over. (A channel that had messages
    /// goes at once, as its position there would go stale once the node
    /// stops listening to the broker.)
    idle_grace: Duration,
}

/// How long idle channels are kept unless [`Hub::with_idle_grace`] says
/// otherwise: longer than clients take to poll again or reconnect.
pub const IDLE_GRACE: Duration = Duration::from_secs(30);

struct Channel {
    /// The channel's state, behind a lock of its own so that channels do not contend.
    inner: Mutex<ChannelInner>,
}

/// One local subscription.
struct Subscriber {
    /// Where its frames go.
    outbox: Arc<Outbox>,
    /// Whether live messages go to the outbox yet.
    feed: Feed,
}

/// Where a subscriber's live messages go.
enum Feed {
    /// To its outbox.
    Live,
    /// Held here: the subscriber is still reading history from the broker,
    /// and the two are merged by offset when it activates.
    Pending(Vec<Arc<Message>>),
    /// To its outbox, but it activated while a gap was open, its replay
    /// reaching this offset: the gap's fill skips what it replayed.
    Replayed(u64),
}

impl Subscriber {
    fn live(outbox: &Arc<Outbox>) -> Self {
        Self {
            outbox: outbox.clone(),
            feed: Feed::Live,
        }
    }
}

struct ChannelInner {
    /// Local subscribers; `IndexMap` for O(1) removal and dense iteration.
    subscribers: IndexMap<ConnId, Subscriber>,
    /// Offset of the next message.
    next_offset: u64,
    /// History generation; new each time the channel is created here.
    epoch: Arc<str>,
    /// Whether `epoch` is the broker's (learned at a subscribe or from a
    /// message) rather than this hub's own: only then is a message of
    /// another epoch past its first offset proof that some were missed.
    broker_epoch: bool,
    /// Messages published since creation.
    published: u64,
    /// How much history this channel keeps.
    retention: Retention,
    /// Stored messages for resume.
    history: History,
    /// Messages from the broker held back while a gap before them is read
    /// from history; `None` when in order.
    gap: Option<Gap>,
    /// Set when the channel left the shard map; holders of a stale `Arc`
    /// must look it up again.
    removed: bool,
    /// When the sweep first found the channel idle (no subscribers, nothing
    /// stored); `None` while it is not.
    idle_since: Option<u64>,
    /// The publish time of the last message sequenced or delivered here
    /// (see [`next_publish_time`]); 0 before the first.
    last_time_ms: u64,
}

/// Subscribers that activated during a gap, once its fill fanned out the
/// gap's messages: from now on everything is new to them.
fn end_replays(subscribers: &mut IndexMap<ConnId, Subscriber>) {
    for sub in subscribers.values_mut() {
        if let Feed::Replayed(_) = sub.feed {
            sub.feed = Feed::Live;
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// A hub whose channels keep no history.
    pub fn new() -> Self {
        Self::with_policy(HistoryPolicy::default())
    }

    /// A hub whose channels keep history as `policy` says.
    pub fn with_policy(policy: HistoryPolicy) -> Self {
        Self {
            channels: ChannelMap::new(),
            stats: Arc::default(),
            policy,
            flushers: Flushers::new(),
            idle_grace: IDLE_GRACE,
        }
    }

    /// Sets how long idle channels are kept (see [`IDLE_GRACE`]).
    pub fn with_idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// The retention policy channels are created with.
    pub fn policy(&self) -> &HistoryPolicy {
        &self.policy
    }

    pub fn stats(&self) -> &Arc<HubStats> {
        &self.stats
    }

    fn get(&self, key: &ChannelKey) -> Option<Arc<Channel>> {
        self.channels.get(key)
    }

    fn get_or_create(&self, key: &ChannelKey) -> Arc<Channel> {
        self.channels.get_or_insert_with(key, || Channel {
            inner: Mutex::new(ChannelInner {
                subscribers: IndexMap::new(),
                next_offset: 1,
                epoch: new_epoch(),
                broker_epoch: false,
                published: 0,
                retention: self.policy.retention(key),
                history: History::default(),
                gap: None,
                removed: false,
                idle_since: None,
                last_time_ms: 0,
            }),
        })
    }

    /// Adds `outbox` to `key`'s subscribers. Returns true when it is the
    /// channel's first local subscriber, so the node must start listening.
    pub fn subscribe(&self, key: &ChannelKey, outbox: &Arc<Outbox>) -> bool {
        self.subscribe_with(key, outbox, Replay::None).first_local
    }

    /// Adds `outbox` to `key`'s subscribers after queuing the stored messages
    /// `replay` selects. Both happen under the channel lock, so replayed and
    /// live messages meet with no gap and no duplicate.
    pub fn subscribe_with(
        &self,
        key: &ChannelKey,
        outbox: &Arc<Outbox>,
        replay: Replay<'_>,
    ) -> Subscribed {
        loop {
            let ch = self.get_or_create(key);
            let mut inner = ch.inner.lock();
            if inner.removed {
                continue;
            }
            let inner = &mut *inner;
            let (recovery, start) = replay.start(&inner.history, &inner.epoch, inner.next_offset);
            let mut replayed = 0;
            if let Some(from) = start {
                for msg in inner.history.iter().skip(from) {
                    outbox.push_replayed(msg);
                    replayed += 1;
                }
            }
            let first_local = inner.subscribers.is_empty();
            inner
                .subscribers
                .insert(outbox.id(), Subscriber::live(outbox));
            return Subscribed {
                first_local,
                replayed,
                recovery,
                position: Position {
                    offset: inner.next_offset - 1,
                    epoch: inner.epoch.clone(),
                },
            };
        }
    }

    /// Adds `outbox` to `key` with live messages held back, for a subscriber
    /// that first reads history kept by the broker. Returns true when it is
    /// the channel's first local subscriber. Call [`Hub::activate`] next.
    pub fn subscribe_pending(&self, key: &ChannelKey, outbox: &Arc<Outbox>) -> bool {
        loop {
            let ch = self.get_or_create(key);
            let mut inner = ch.inner.lock();
            if inner.removed {
                continue;
            }
            let first_local = inner.subscribers.is_empty();
            inner.subscribers.insert(
                outbox.id(),
                Subscriber {
                    outbox: outbox.clone(),
                    feed: Feed::Pending(Vec::new()),
                },
            );
            return first_local;
        }
    }

    /// Ends a pending subscription: queues `replay` (history read after the
    /// subscription began), then the held-back live messages newer than
    /// `position` (where that history read ended), and
    /// delivers live from then on. Nothing is lost and nothing repeats.
    pub fn activate(
        &self,
        key: &ChannelKey,
        id: ConnId,
        replay: &[Arc<Message>],
        position: &Position,
    ) {
        let Some(ch) = self.get(key) else { return };
        let mut inner = ch.inner.lock();
        let inner = &mut *inner;
        if inner.published == 0 && inner.gap.is_none() {
            // Nothing delivered here yet: start from the broker's position so
            // the next message is checked for a gap against it. (An idle
            // channel kept from an earlier subscriber may hold an older
            // generation's offset.)
            if *inner.epoch != *position.epoch {
                inner.epoch = position.epoch.clone();
                inner.next_offset = 0;
            }
            inner.broker_epoch = true;
            inner.next_offset = inner.next_offset.max(position.offset + 1);
        }
        let history_head = position.offset;
        let Some(sub) = inner.subscribers.get_mut(&id) else {
            return;
        };
        for msg in replay {
            sub.outbox.push_replayed(msg);
        }
        // A gap's fill fans out what it recovers to every live subscriber:
        // this one replayed some of it already.
        let feed = if inner.gap.is_some() && *inner.epoch == *position.epoch {
            Feed::Replayed(history_head)
        } else {
            Feed::Live
        };
        if let Feed::Pending(pending) = std::mem::replace(&mut sub.feed, feed) {
            // Held back by the server while history was read, not left
            // unread by the client: counted as replay, not against its
            // bound (a busy channel would otherwise close it for being slow,
            // and again at every resume).
            for msg in pending {
                if msg.offset > history_head {
                    sub.outbox.push_replayed(&msg);
                }
            }
        }
    }

    /// Removes connection `id` from `key`. Returns true when the channel has no
    /// local subscribers left, so the node may stop listening. A channel that
    /// never had a message stays until the sweep finds it idle past the grace.
    pub fn unsubscribe(&self, key: &ChannelKey, id: ConnId) -> bool {
        let Some(ch) = self.get(key) else {
            return false;
        };
        let mut inner = ch.inner.lock();
        if inner.subscribers.swap_remove(&id).is_none() || !inner.subscribers.is_empty() {
            return false;
        }
        let lingers = inner.published == 0;
        drop(inner);
        if !lingers {
            self.remove_if_idle(key, &ch);
        }
        true
    }

    /// Removes `key` with its history, telling its subscribers in their
    /// format. Returns how many subscribers it had, or `None` if unknown.
    pub fn delete(&self, key: &ChannelKey) -> Option<usize> {
        let mut slot = self.channels.lock(key);
        let ch = slot.remove()?;
        let mut inner = ch.inner.lock();
        inner.removed = true;
        drop(slot);
        for sub in inner.subscribers.values() {
            if let Some(frame) = sub.outbox.format().deleted(key) {
                sub.outbox.push(frame);
            }
        }
        Some(inner.subscribers.len())
    }

    /// Tells `key`'s local subscribers, in their formats, that a connection
    /// of `user` joined or left it. Returns how many were told.
    pub fn announce(&self, key: &ChannelKey, change: PresenceChange, user: &str) -> usize {
        let Some(ch) = self.get(key) else { return 0 };
        let inner = ch.inner.lock();
        // Each format's frame, built once: a channel has few formats.
        let mut frames: Vec<(usize, Option<Bytes>)> = Vec::new();
        let mut told = 0;
        for sub in inner.subscribers.values() {
            let format = sub.outbox.format();
            let slot = format.slot();
            let frame = match frames.iter().find(|(s, _)| *s == slot) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let frame = format.presence(key, change, user);
                    frames.push((slot, frame.clone()));
                    frame
                }
            };
            if let Some(frame) = frame {
                sub.outbox.push(frame);
                told += 1;
            }
        }
        told
    }

    /// Drops expired history and forgets channels with neither subscribers
    /// nor stored messages (one that never had a message, once idle for the
    /// grace). Call periodically.
    pub fn sweep(&self) {
        let now = now_ms();
        let grace = u64::try_from(self.idle_grace.as_millis()).unwrap_or(u64::MAX);
        let mut idle: Vec<(ChannelKey, Arc<Channel>)> = Vec::new();
        self.channels.for_each_shard(|channels| {
            idle.extend(channels.filter_map(|(k, ch)| {
                let mut inner = ch.inner.lock();
                let ttl = inner.retention.ttl;
                inner.history.expire(now, ttl);
                if !(inner.subscribers.is_empty() && inner.history.is_empty()) {
                    inner.idle_since = None;
                    return None;
                }
                let since = *inner.idle_since.get_or_insert(now);
                (inner.published > 0 || now.saturating_sub(since) >= grace)
                    .then(|| (k.clone(), ch.clone()))
            }));
        });
        for (key, ch) in idle {
            self.remove_if_idle(&key, &ch);
        }
    }

    fn remove_if_idle(&self, key: &ChannelKey, ch: &Arc<Channel>) {
        let mut slot = self.channels.lock(key);
        let mut inner = ch.inner.lock();
        if inner.subscribers.is_empty()
            && inner.history.is_empty()
            && !inner.removed
            && slot.get().is_some_and(|c| Arc::ptr_eq(c, ch))
        {
            inner.removed = true;
            slot.remove();
        }
    }

    /// Assigns the next offset in `key` and, with it, the publish time
    /// (whatever `publication` says, see [`next_publish_time`]), stores the
    /// message if the channel keeps history, and queues it for every local
    /// subscriber. Used when this node is the channel's only sequencer (the
    /// memory broker).
    pub fn publish_local(&self, key: &ChannelKey, mut publication: Publication) -> Published {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        loop {
            let ch = match self.get(key) {
                Some(ch) => ch,
                None if self.policy.retention(key).keeps() => self.get_or_create(key),
                None => {
                    // Nobody listens and nothing is kept: nothing to sequence.
                    return Published {
                        id: publication.id,
                        offset: 0,
                        epoch: Arc::from(""),
                        subscribers: 0,
                    };
                }
            };
            let mut inner = ch.inner.lock();
            if inner.removed {
                continue;
            }
            let offset = inner.next_offset;
            inner.next_offset += 1;
            inner.published += 1;
            // Read under the lock, as the message goes out under it: a
            // publisher delayed between reading the clock and fanning out
            // would stamp its message earlier than ones other channels
            // delivered meanwhile, and a client resuming several channels
            // from one time (push-stream's long-poll) would step over it.
            publication.time_ms = next_publish_time(now_ms(), inner.last_time_ms);
            inner.last_time_ms = publication.time_ms;
            let msg = Arc::new(Message::new(
                key.clone(),
                publication,
                offset,
                inner.epoch.clone(),
            ));
            let mut unflushed = Vec::new();
            let subscribers = self.fan_out(&mut inner.subscribers, &msg, &mut unflushed);
            let retention = inner.retention;
            if retention.keeps() {
                inner.history.push(msg.clone(), retention);
            }
            drop(inner);
            self.flushers.flush(unflushed);
            return Published {
                id: msg.publication.id.clone(),
                offset,
                epoch: msg.epoch.clone(),
                subscribers,
            };
        }
    }

    /// Queues an already-sequenced message (from the broker) for every local
    /// subscriber of its channel, in offset order.
    ///
    /// On a channel that keeps history, a message past the next expected
    /// offset means messages went missing on the way (a broker reconnect):
    /// it is held back with everything after it, and [`Delivery::Gap`] asks
    /// the caller to read the missing range from history and [`Hub::fill`] it.
    pub fn deliver(&self, msg: &Arc<Message>) -> Delivery {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let Some(ch) = self.get(&msg.channel) else {
            return Delivery::Reached(0);
        };
        let mut guard = ch.inner.lock();
        let inner = &mut *guard;
        if let Some(gap) = &mut inner.gap {
            // Even a message of a new epoch waits: what is held and what the
            // gap's read recovers were published before it.
            gap.held.push(msg.clone());
            return Delivery::Held;
        }
        if *inner.epoch != *msg.epoch {
            // A new history generation (the broker lost its state, or the
            // channel expired and started over): its offsets start at 1.
            // Those before this one were published while this node was not
            // listening, or are still on their way: on a channel that keeps
            // history they are read back like any other gap.
            let missed =
                inner.broker_epoch && inner.retention.keeps() && !inner.subscribers.is_empty();
            inner.epoch = msg.epoch.clone();
            inner.broker_epoch = true;
            inner.next_offset = if missed { 1 } else { msg.offset };
        }
        if msg.offset < inner.next_offset {
            return Delivery::Duplicate;
        }
        if msg.offset > inner.next_offset && inner.retention.keeps() {
            let gap = Gap::open(vec![msg.clone()]);
            let missing = Missing {
                after: inner.next_offset - 1,
                before: msg.offset,
                id: gap.id,
            };
            inner.gap = Some(gap);
            return Delivery::Gap(missing);
        }
        inner.published += 1;
        inner.next_offset = msg.offset + 1;
        inner.last_time_ms = msg.publication.time_ms;
        let mut unflushed = Vec::new();
        let reached = self.fan_out(&mut inner.subscribers, msg, &mut unflushed);
        drop(guard);
        self.flushers.flush(unflushed);
        Delivery::Reached(reached)
    }

    /// Opens a gap when the broker's `position` for `key` is ahead of what
    /// this node delivered (messages published while it was not listening).
    /// Returns what is missing, to read from history and
    /// [`fill`](Hub::fill); live messages are held back meanwhile.
    pub fn catch_up(&self, key: &ChannelKey, position: &Position) -> Option<Missing> {
        let ch = self.get(key)?;
        let mut inner = ch.inner.lock();
        if inner.gap.is_some() {
            return None;
        }
        if *inner.epoch != *position.epoch && inner.broker_epoch && inner.retention.keeps() {
            // The broker started a new generation while this node was not
            // listening: none of its messages were delivered here.
            inner.epoch = position.epoch.clone();
            inner.next_offset = 1;
        }
        if *inner.epoch != *position.epoch || position.offset < inner.next_offset {
            return None;
        }
        let gap = Gap::open(Vec::new());
        let missing = Missing {
            after: inner.next_offset - 1,
            before: position.offset + 1,
            id: gap.id,
        };
        inner.gap = Some(gap);
        Some(missing)
    }

    /// Closes gap `id` ([`Missing::id`]), if still open: delivers
    /// `recovered` (read from history) and the held-back messages in offset
    /// order, once each. With nothing recovered (history trimmed), the held
    /// messages go out anyway and the gap stays visible to clients as an
    /// offset jump.
    pub fn fill(&self, key: &ChannelKey, id: u64, recovered: Vec<Arc<Message>>) {
        let Some(ch) = self.get(key) else { return };
        let mut guard = ch.inner.lock();
        let inner = &mut *guard;
        if inner.gap.as_ref().is_none_or(|gap| gap.id != id) {
            return;
        }
        let Some(Gap { held, .. }) = inner.gap.take() else {
            return;
        };
        let gap_epoch = inner.epoch.clone();
        // Held messages of a later epoch (the broker lost its state while
        // the gap was read) follow the gap's own, in the order they came.
        let (held, later): (Vec<_>, Vec<_>) =
            held.into_iter().partition(|m| *m.epoch == *inner.epoch);
        let mut all: Vec<Arc<Message>> = recovered
            .into_iter()
            .filter(|m| *m.epoch == *inner.epoch)
            .chain(held)
            .collect();
        all.sort_by_key(|m| m.offset);
        let mut unflushed = Vec::new();
        let mut replays_ended = false;
        for msg in all.into_iter().chain(later) {
            if *inner.epoch != *msg.epoch {
                inner.epoch = msg.epoch.clone();
                inner.broker_epoch = true;
                inner.next_offset = msg.offset;
            }
            if !replays_ended && *msg.epoch != *gap_epoch {
                end_replays(&mut inner.subscribers);
                replays_ended = true;
            }
            if msg.offset >= inner.next_offset {
                inner.published += 1;
                inner.next_offset = msg.offset + 1;
                inner.last_time_ms = msg.publication.time_ms;
                self.fan_out(&mut inner.subscribers, &msg, &mut unflushed);
            }
        }
        if !replays_ended {
            end_replays(&mut inner.subscribers);
        }
        drop(guard);
        self.flushers.flush(unflushed);
    }

    /// Queues `msg` for every subscriber. Outboxes that must be flushed once
    /// the caller let go of the channel's lock go to `unflushed`.
    fn fan_out(
        &self,
        subscribers: &mut IndexMap<ConnId, Subscriber>,
        msg: &Arc<Message>,
        unflushed: &mut Vec<Arc<Outbox>>,
    ) -> usize {
        let (mut delivered, mut dropped, mut slow) = (0u64, 0u64, 0u64);
        let direct = subscribers.len() <= DIRECT_FAN_OUT;
        for sub in subscribers.values_mut() {
            match &mut sub.feed {
                Feed::Live => {}
                Feed::Pending(pending) => {
                    pending.push(msg.clone());
                    delivered += 1;
                    continue;
                }
                Feed::Replayed(through) if msg.offset <= *through => continue,
                Feed::Replayed(_) => {}
            }
            let pushed = if direct {
                sub.outbox.push_message_direct(msg)
            } else {
                let (pushed, flush) = sub.outbox.push_message_deferred(msg);
                if flush {
                    unflushed.push(sub.outbox.clone());
                }
                pushed
            };
            match pushed {
                Pushed::Queued => delivered += 1,
                Pushed::Overflowed => {
                    slow += 1;
                    dropped += 1;
                }
                Pushed::Closed => dropped += 1,
            }
        }
        let stats = &self.stats;
        stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        if dropped > 0 {
            stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            stats.slow_consumers.fetch_add(slow, Ordering::Relaxed);
        }
        stats.fanout_latency.observe(msg.accepted_at.elapsed());
        delivered as usize
    }

    /// Local subscribers of `key`.
    pub fn subscriber_count(&self, key: &ChannelKey) -> usize {
        self.get(key)
            .map_or(0, |ch| ch.inner.lock().subscribers.len())
    }

    /// The connections subscribed to `key` on this node.
    pub fn subscriber_ids(&self, key: &ChannelKey) -> Vec<ConnId> {
        self.get(key).map_or_else(Vec::new, |ch| {
            ch.inner.lock().subscribers.keys().copied().collect()
        })
    }

    /// Whether connection `id` subscribes to `key` here: not once the
    /// channel was deleted.
    pub fn is_subscribed(&self, key: &ChannelKey, id: ConnId) -> bool {
        self.get(key)
            .is_some_and(|ch| ch.inner.lock().subscribers.contains_key(&id))
    }

    /// Counts for `key`, if the channel exists on this node.
    pub fn channel_info(&self, key: &ChannelKey) -> Option<ChannelInfo> {
        let ch = self.get(key)?;
        let inner = ch.inner.lock();
        Some(ChannelInfo {
            key: key.clone(),
            subscribers: inner.subscribers.len(),
            published: inner.published,
            next_offset: inner.next_offset,
            epoch: inner.epoch.clone(),
            stored: inner.history.len(),
        })
    }

    /// The position of the last message delivered (or sequenced) on `key`
    /// here, with its publish time: what the broker that sequenced it must
    /// still hold. `None` before the first.
    pub fn last_delivered(&self, key: &ChannelKey) -> Option<(Position, u64)> {
        let ch = self.get(key)?;
        let inner = ch.inner.lock();
        // Once a message went out, only delivered messages move the offset.
        (inner.published > 0).then(|| {
            let position = Position {
                offset: inner.next_offset - 1,
                epoch: inner.epoch.clone(),
            };
            (position, inner.last_time_ms)
        })
    }

    /// Runs `read` on `key`'s history with its epoch and next offset.
    pub fn with_history<R>(
        &self,
        key: &ChannelKey,
        read: impl FnOnce(&History, &Arc<str>, u64) -> R,
    ) -> Option<R> {
        let ch = self.get(key)?;
        let inner = ch.inner.lock();
        Some(read(&inner.history, &inner.epoch, inner.next_offset))
    }

    /// Every channel of `app` on this node, sorted by name.
    pub fn channels(&self, app: &str) -> Vec<ChannelInfo> {
        let mut keys: Vec<ChannelKey> = Vec::new();
        self.channels.for_each_shard(|channels| {
            keys.extend(
                channels
                    .filter(|(k, _)| k.app() == app)
                    .map(|(k, _)| k.clone()),
            );
        });
        let mut all: Vec<ChannelInfo> = keys.iter().filter_map(|k| self.channel_info(k)).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Counts channels, subscriptions and stored messages, locking each
    /// channel only while reading its counts.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        self.channels.for_each_shard(|channels| {
            for (_, ch) in channels {
                let inner = ch.inner.lock();
                census.channels += 1;
                census.subscriptions += inner.subscribers.len();
                census.stored += inner.history.len();
            }
        });
        census
    }
}

fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:08x}", rand::random::<u32>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RetentionRule;
    use crate::message::Raw;
    use crate::outbox::TestSocket;
    use bytes::Bytes;
    use std::time::Duration;

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(&Arc::from("app"), name).unwrap()
    }

    fn outbox(id: ConnId) -> Arc<Outbox> {
        Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20))
    }

    fn drained(o: &Outbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        o.drain(&mut out);
        out.into_iter().map(|f| f.bytes).collect()
    }

    fn publish(hub: &Hub, ch: &str, data: &str) -> Published {
        hub.publish_local(&key(ch), Publication::new(Bytes::from(data.to_owned())))
    }

    fn keeping(size: usize) -> Hub {
        Hub::with_policy(HistoryPolicy {
            rules: vec![RetentionRule {
                pattern: "h*".into(),
                retention: Retention {
                    size,
                    ttl: Duration::from_secs(60),
                },
            }],
        })
    }

    #[test]
    fn census_counts_channels_subscriptions_and_history() {
        let hub = keeping(2);
        let (a, b) = (outbox(1), outbox(2));
        hub.subscribe(&key("h1"), &a);
        hub.subscribe(&key("h1"), &b);
        hub.subscribe(&key("x"), &a);
        for data in ["1", "2", "3"] {
            publish(&hub, "h1", data);
        }
        let census = Census {
            channels: 2,
            subscriptions: 3,
            stored: 2,
        };
        assert_eq!(hub.census(), census);
        hub.unsubscribe(&key("x"), 1);
        assert_eq!(hub.census().subscriptions, 2);
    }

    #[test]
    fn fan_out_reaches_each_subscriber_once_in_order() {
        let hub = Hub::default();
        let (a, b) = (outbox(1), outbox(2));
        assert!(hub.subscribe(&key("c"), &a));
        assert!(!hub.subscribe(&key("c"), &b));
        assert_eq!(publish(&hub, "c", "1").subscribers, 2);
        let p2 = publish(&hub, "c", "2");
        assert_eq!(p2.offset, 2);
        for o in [&a, &b] {
            assert_eq!(
                drained(o),
                vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
            );
        }
    }

    /// Subscribes `n` outboxes with sockets attached to `ch`, so the channel
    /// is past [`DIRECT_FAN_OUT`].
    fn big_channel(hub: &Hub, ch: &str) -> Vec<(Arc<Outbox>, Arc<TestSocket>)> {
        (0..DIRECT_FAN_OUT as ConnId + 4)
            .map(|id| {
                let (o, socket) = (outbox(id), TestSocket::opened());
                o.attach(socket.clone());
                hub.subscribe(&key(ch), &o);
                (o, socket)
            })
            .collect()
    }

    #[test]
    fn big_fan_outs_without_a_runtime_are_written_inline() {
        let hub = Hub::default();
        let subs = big_channel(&hub, "c");
        publish(&hub, "c", "1");
        for (o, socket) in &subs {
            assert_eq!(socket.written(), [&b"1"[..]]);
            assert_eq!(o.queued_bytes(), 0);
        }
    }

    #[tokio::test]
    async fn big_fan_outs_coalesce_what_queued_before_their_flush() {
        let hub = Hub::default();
        let subs = big_channel(&hub, "c");
        publish(&hub, "c", "1");
        publish(&hub, "c", "2");
        assert!(
            subs.iter().all(|(_, socket)| socket.written().is_empty()),
            "written after the publisher yields, not under the channel's lock"
        );
        // The flusher runs once this task lets it, and yields once before writing.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        for (o, socket) in &subs {
            assert_eq!(
                *socket.batches.lock(),
                [vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]],
                "both frames in one write"
            );
            assert_eq!(o.queued_bytes(), 0);
        }
    }

    #[tokio::test]
    async fn a_full_socket_hands_a_big_fan_out_to_the_connections_task() {
        let hub = Hub::default();
        let subs = big_channel(&hub, "c");
        subs[0].1.open.store(false, Ordering::Relaxed);
        publish(&hub, "c", "1");
        tokio::time::timeout(Duration::from_secs(5), subs[0].0.ready())
            .await
            .expect("the flush wakes the task of a connection it could not write");
        assert_eq!(subs[0].0.queued_bytes(), 1, "still queued, for the task");
        assert_eq!(subs[1].1.written(), [&b"1"[..]]);
    }

    #[test]
    fn channels_are_isolated() {
        let hub = Hub::default();
        let a = outbox(1);
        hub.subscribe(&key("c"), &a);
        assert_eq!(publish(&hub, "d", "x").subscribers, 0);
        assert!(drained(&a).is_empty());
    }

    #[test]
    fn the_sweep_forgets_a_channel_its_last_subscriber_left() {
        let hub = Hub::default().with_idle_grace(Duration::ZERO);
        let (a, b) = (outbox(1), outbox(2));
        hub.subscribe(&key("c"), &a);
        hub.subscribe(&key("c"), &b);
        assert!(!hub.unsubscribe(&key("c"), 1));
        assert!(!hub.unsubscribe(&key("c"), 1), "second removal is a no-op");
        assert!(hub.unsubscribe(&key("c"), 2));
        hub.sweep();
        assert!(hub.channel_info(&key("c")).is_none());
        assert_eq!(publish(&hub, "c", "x").subscribers, 0);
    }

    #[test]
    fn an_idle_channel_keeps_its_epoch_through_the_grace() {
        let hub = Hub::default();
        let a = outbox(1);
        let first = hub.subscribe_with(&key("quiet"), &a, Replay::None);
        assert!(hub.unsubscribe(&key("quiet"), 1));
        hub.sweep();
        // Back within the grace (a poll, a reconnect): the same channel.
        let since = first.position.clone();
        let again = hub.subscribe_with(&key("quiet"), &a, Replay::After(since));
        assert_eq!(again.position, first.position);
        assert_eq!(again.recovery, Some(Recovery::Recovered));
    }

    #[test]
    fn stats_count_deliveries() {
        let hub = Hub::default();
        hub.subscribe(&key("c"), &outbox(1));
        hub.subscribe(&key("c"), &outbox(2));
        publish(&hub, "c", "x");
        assert_eq!(hub.stats().published.load(Ordering::Relaxed), 1);
        assert_eq!(hub.stats().delivered.load(Ordering::Relaxed), 2);
        let infos = hub.channels("app");
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].published, 1);
        assert_eq!(infos[0].subscribers, 2);
    }

    #[test]
    fn history_is_kept_without_subscribers_and_replayed() {
        let hub = keeping(3);
        for i in 1..=5 {
            assert_eq!(publish(&hub, "hist", &i.to_string()).offset, i);
        }
        assert_eq!(
            publish(&hub, "plain", "x").offset,
            0,
            "no history, no sequence"
        );
        let info = hub.channel_info(&key("hist")).unwrap();
        assert_eq!((info.stored, info.next_offset), (3, 6));

        let late = outbox(1);
        let s = hub.subscribe_with(&key("hist"), &late, Replay::Last(2));
        assert_eq!((s.replayed, s.position.offset), (2, 5));
        assert_eq!(
            drained(&late),
            vec![Bytes::from_static(b"4"), Bytes::from_static(b"5")]
        );

        let resumer = outbox(2);
        let pos = Position {
            offset: 3,
            epoch: info.epoch.clone(),
        };
        let s = hub.subscribe_with(&key("hist"), &resumer, Replay::After(pos));
        assert_eq!(s.recovery, Some(Recovery::Recovered));
        assert_eq!(
            hub.subscribe_with(&key("hist"), &outbox(9), Replay::None)
                .recovery,
            None
        );
        assert_eq!(
            drained(&resumer),
            vec![Bytes::from_static(b"4"), Bytes::from_static(b"5")]
        );

        let stale = outbox(3);
        let pos = Position {
            offset: 1,
            epoch: info.epoch.clone(),
        };
        assert_eq!(
            hub.subscribe_with(&key("hist"), &stale, Replay::After(pos))
                .recovery,
            Some(Recovery::TooOld)
        );
        let lost = outbox(4);
        let pos = Position {
            offset: 4,
            epoch: Arc::from("other"),
        };
        let s = hub.subscribe_with(&key("hist"), &lost, Replay::After(pos));
        assert_eq!((s.recovery, s.replayed), (Some(Recovery::EpochChanged), 0));
    }

    #[test]
    fn announcements_reach_the_channels_subscribers_only() {
        let hub = keeping(10);
        let (a, b, other) = (outbox(1), outbox(2), outbox(3));
        hub.subscribe(&key("room"), &a);
        hub.subscribe(&key("room"), &b);
        hub.subscribe(&key("hall"), &other);
        assert_eq!(hub.announce(&key("room"), PresenceChange::Join, "alice"), 2);
        assert_eq!(hub.announce(&key("none"), PresenceChange::Leave, "bob"), 0);
        let joined = vec![Bytes::from_static(b"join room alice")];
        assert_eq!(drained(&a), joined);
        assert_eq!(drained(&b), joined);
        assert!(drained(&other).is_empty());
        // Announcements are not messages: nothing is published or stored.
        let info = hub.channel_info(&key("room")).unwrap();
        assert_eq!((info.published, info.stored), (0, 0));
    }

    #[test]
    fn delete_tells_subscribers_and_resets_the_epoch() {
        let hub = keeping(10);
        let a = outbox(1);
        hub.subscribe(&key("hist"), &a);
        publish(&hub, "hist", "1");
        let epoch = hub.channel_info(&key("hist")).unwrap().epoch;
        assert_eq!(hub.delete(&key("hist")), Some(1));
        assert_eq!(
            drained(&a),
            vec![
                Bytes::from_static(b"1"),
                Bytes::from_static(b"deleted hist")
            ]
        );
        assert_eq!(hub.delete(&key("hist")), None);
        let p = publish(&hub, "hist", "2");
        assert_eq!(p.subscribers, 0, "deleted channels drop their subscribers");
        assert_eq!(p.offset, 1);
        assert_ne!(p.epoch, epoch);
    }

    /// The hub stamps each message as it gets its offset, whatever time the
    /// publisher put on it: a channel's times grow with its offsets and
    /// never repeat, however fast it publishes.
    #[test]
    fn publish_times_grow_with_offsets() {
        let hub = keeping(10_000);
        let before = now_ms();
        for i in 0..3000u64 {
            let mut p = Publication::new(Bytes::from(i.to_string()));
            // A publisher's clock that jumps around.
            p.time_ms = if i % 2 == 0 { 0 } else { before + 3_600_000 };
            hub.publish_local(&key("hot"), p);
        }
        let times = hub
            .with_history(&key("hot"), |h, _, _| {
                h.iter().map(|m| m.publication.time_ms).collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(times.len(), 3000);
        assert!(times[0] >= before && times[0] <= now_ms(), "{}", times[0]);
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        // Another channel keeps its own times: the wall clock's, again.
        publish(&hub, "hcold", "x");
        let cold = hub
            .with_history(&key("hcold"), |h, _, _| {
                h.iter().next().unwrap().publication.time_ms
            })
            .unwrap();
        assert!(cold <= now_ms(), "{cold} ran ahead with another channel");
    }

    #[test]
    fn sweep_forgets_idle_channels_only() {
        let hub = Hub::with_policy(HistoryPolicy {
            rules: vec![RetentionRule {
                pattern: "h*".into(),
                retention: Retention {
                    size: 10,
                    ttl: Duration::from_millis(1),
                },
            }],
        })
        .with_idle_grace(Duration::ZERO);
        publish(&hub, "hist", "old");
        std::thread::sleep(Duration::from_millis(5));
        hub.subscribe(&key("busy"), &outbox(1));
        hub.sweep();
        assert!(hub.channel_info(&key("hist")).is_none());
        assert!(hub.channel_info(&key("busy")).is_some());
    }

    #[test]
    fn resume_races_publishes_without_gaps_or_duplicates() {
        let hub = Arc::new(keeping(100_000));
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 1..=20_000u64 {
                    publish(&hub, "hot", &i.to_string());
                }
            })
        };
        // Subscribers resume from wherever the publisher is, repeatedly.
        let mut checked = 0;
        while !publisher.is_finished() || checked == 0 {
            let Some(info) = hub.channel_info(&key("hot")) else {
                continue;
            };
            let from = info.next_offset.saturating_sub(1) / 2;
            let o = outbox(1000 + checked);
            let s = hub.subscribe_with(
                &key("hot"),
                &o,
                Replay::After(Position {
                    offset: from,
                    epoch: info.epoch,
                }),
            );
            assert_eq!(s.recovery, Some(Recovery::Recovered));
            std::thread::yield_now();
            hub.unsubscribe(&key("hot"), o.id());
            let got: Vec<u64> = drained(&o)
                .iter()
                .map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
                .collect();
            let expected: Vec<u64> = (from + 1..from + 1 + got.len() as u64).collect();
            assert_eq!(got, expected, "contiguous from the resume point");
            checked += 1;
        }
        publisher.join().unwrap();
    }

    fn remote(offset: u64, epoch: &str) -> Arc<Message> {
        Arc::new(Message::new(
            key("hist"),
            Publication::new(Bytes::from(offset.to_string())),
            offset,
            Arc::from(epoch),
        ))
    }

    #[test]
    fn deliver_orders_dedupes_and_reports_gaps() {
        let hub = keeping(100);
        let a = outbox(1);
        hub.subscribe(&key("hist"), &a);
        assert_eq!(
            hub.deliver(&remote(5, "R")),
            Delivery::Reached(1),
            "adopts the broker's epoch"
        );
        assert_eq!(hub.deliver(&remote(6, "R")), Delivery::Reached(1));
        assert_eq!(hub.deliver(&remote(6, "R")), Delivery::Duplicate);
        let (range, id) = gap(hub.deliver(&remote(9, "R")));
        assert_eq!(range, (6, 9));
        assert_eq!(hub.deliver(&remote(10, "R")), Delivery::Held);
        // History returns 7 and 8 (and a stale 6): each goes out once, in order.
        hub.fill(
            &key("hist"),
            id,
            vec![remote(6, "R"), remote(7, "R"), remote(8, "R")],
        );
        assert_eq!(hub.deliver(&remote(11, "R")), Delivery::Reached(1));
        let got: Vec<Bytes> = drained(&a);
        let want: Vec<Bytes> = [5, 6, 7, 8, 9, 10, 11]
            .iter()
            .map(|i: &u64| Bytes::from(i.to_string()))
            .collect();
        assert_eq!(got, want);
        // A new epoch (the broker lost its state) restarts the count.
        assert_eq!(hub.deliver(&remote(1, "S")), Delivery::Reached(1));
    }

    #[test]
    fn a_new_epoch_during_a_gap_waits_behind_the_held_messages() {
        let hub = keeping(100);
        let a = outbox(1);
        hub.subscribe(&key("hist"), &a);
        // Data is offset and epoch, e.g. "4R".
        let msg = |offset: u64, epoch: &str| {
            let data = Bytes::from(format!("{offset}{epoch}"));
            Arc::new(Message::new(
                key("hist"),
                Publication::new(data),
                offset,
                Arc::from(epoch),
            ))
        };
        hub.deliver(&msg(1, "R"));
        let (_, id) = gap(hub.deliver(&msg(4, "R")));
        // The broker lost its state while 2 and 3 were being read.
        assert_eq!(hub.deliver(&msg(1, "S")), Delivery::Held);
        assert_eq!(hub.deliver(&msg(2, "S")), Delivery::Held);
        hub.fill(&key("hist"), id, vec![msg(2, "R"), msg(3, "R")]);
        assert_eq!(hub.deliver(&msg(3, "S")), Delivery::Reached(1));
        let want = ["1R", "2R", "3R", "4R", "1S", "2S", "3S"].map(|s| Bytes::from(s.to_owned()));
        assert_eq!(drained(&a), want);
    }

    #[test]
    fn catch_up_opens_a_gap_only_when_behind() {
        let hub = keeping(100);
        let a = outbox(1);
        hub.subscribe(&key("hist"), &a);
        hub.deliver(&remote(3, "R"));
        let at = |offset, epoch: &str| Position {
            offset,
            epoch: Arc::from(epoch),
        };
        assert_eq!(hub.catch_up(&key("hist"), &at(3, "R")), None, "up to date");
        let missing = hub.catch_up(&key("hist"), &at(5, "R")).unwrap();
        assert_eq!((missing.after, missing.before), (3, 6));
        assert_eq!(hub.deliver(&remote(6, "R")), Delivery::Held);
        // A read that outlived an earlier gap closes nothing.
        hub.fill(&key("hist"), missing.id - 1, vec![]);
        assert_eq!(hub.deliver(&remote(7, "R")), Delivery::Held);
        hub.fill(
            &key("hist"),
            missing.id,
            vec![remote(4, "R"), remote(5, "R")],
        );
        let got = drained(&a);
        assert_eq!(
            got,
            ["3", "4", "5", "6", "7"].map(|s| Bytes::from(s.to_owned()))
        );
    }

    /// The range of the gap `delivery` opened, and its id.
    fn gap(delivery: Delivery) -> ((u64, u64), u64) {
        let Delivery::Gap(m) = delivery else {
            panic!("no gap: {delivery:?}")
        };
        ((m.after, m.before), m.id)
    }

    /// The broker started a new generation while this node was not
    /// listening (it lost its state, or the channel expired): its first
    /// messages are read from history, whether a reconnect's catch-up or
    /// the next live message finds the new epoch first.
    #[test]
    fn a_new_epoch_is_read_from_its_first_offset() {
        let at = |offset, epoch: &str| Position {
            offset,
            epoch: Arc::from(epoch),
        };
        let subscribed = |position: Position| {
            let hub = keeping(100);
            let a = outbox(1);
            hub.subscribe_pending(&key("hist"), &a);
            hub.activate(&key("hist"), 1, &[], &position);
            (hub, a)
        };
        let texts = |list: &[&str]| {
            list.iter()
                .map(|s| Bytes::from(s.to_string()))
                .collect::<Vec<_>>()
        };

        let (hub, a) = subscribed(at(3, "R"));
        assert_eq!(hub.deliver(&remote(4, "R")), Delivery::Reached(1));
        let missing = hub.catch_up(&key("hist"), &at(2, "S")).unwrap();
        assert_eq!((missing.after, missing.before), (0, 3));
        assert_eq!(hub.deliver(&remote(3, "S")), Delivery::Held);
        hub.fill(
            &key("hist"),
            missing.id,
            vec![remote(1, "S"), remote(2, "S")],
        );
        assert_eq!(drained(&a), texts(&["4", "1", "2", "3"]));

        // The channel was empty when the subscriber came: no epoch yet.
        let (hub, a) = subscribed(at(0, ""));
        let (range, id) = gap(hub.deliver(&remote(3, "S")));
        assert_eq!(range, (0, 3));
        hub.fill(&key("hist"), id, vec![remote(1, "S"), remote(2, "S")]);
        assert_eq!(hub.deliver(&remote(4, "S")), Delivery::Reached(1));
        assert_eq!(drained(&a), texts(&["1", "2", "3", "4"]));
    }

    #[test]
    fn messages_held_during_a_history_read_do_not_count_as_slow() {
        let hub = keeping(100);
        let small = Arc::new(Outbox::new(1, Arc::new(Raw), 10));
        hub.subscribe_pending(&key("hist"), &small);
        // Far more than the outbox's 10 bytes arrive while history is read.
        for offset in 1..=20 {
            hub.deliver(&remote(offset, "R"));
        }
        let at = Position {
            offset: 0,
            epoch: Arc::from("R"),
        };
        hub.activate(&key("hist"), 1, &[], &at);
        let mut frames = Vec::new();
        assert_eq!(small.drain(&mut frames), None, "not closed as slow");
        assert_eq!(frames.len(), 20);
    }

    #[test]
    fn last_delivered_follows_what_went_out_not_what_was_announced() {
        let hub = keeping(100);
        let a = outbox(1);
        hub.subscribe_pending(&key("hist"), &a);
        let at = Position {
            offset: 7,
            epoch: Arc::from("R"),
        };
        hub.activate(&key("hist"), 1, &[], &at);
        assert_eq!(hub.last_delivered(&key("hist")), None, "nothing delivered");
        let timed = |offset, time_ms| {
            let mut publication = Publication::new(Bytes::from_static(b"m"));
            publication.time_ms = time_ms;
            Arc::new(Message::new(
                key("hist"),
                publication,
                offset,
                Arc::from("R"),
            ))
        };
        hub.deliver(&timed(8, 1_000));
        assert_eq!(
            hub.last_delivered(&key("hist")),
            Some((at_offset(8), 1_000))
        );
        // Held behind a gap: not delivered yet.
        let (_, id) = gap(hub.deliver(&timed(11, 1_003)));
        assert_eq!(
            hub.last_delivered(&key("hist")),
            Some((at_offset(8), 1_000))
        );
        hub.fill(&key("hist"), id, vec![timed(9, 1_001), timed(10, 1_002)]);
        assert_eq!(
            hub.last_delivered(&key("hist")),
            Some((at_offset(11), 1_003))
        );
    }

    fn at_offset(offset: u64) -> Position {
        Position {
            offset,
            epoch: Arc::from("R"),
        }
    }

    #[test]
    fn a_resume_during_a_gap_gets_each_message_once() {
        let hub = keeping(100);
        let (a, b) = (outbox(1), outbox(2));
        hub.subscribe(&key("hist"), &a);
        hub.deliver(&remote(1, "R"));
        let (_, id) = gap(hub.deliver(&remote(4, "R")));
        // b resumes meanwhile, its history read reaching offset 4.
        hub.subscribe_pending(&key("hist"), &b);
        let at = Position {
            offset: 4,
            epoch: Arc::from("R"),
        };
        let replay = [remote(2, "R"), remote(3, "R"), remote(4, "R")];
        hub.activate(&key("hist"), 2, &replay, &at);
        hub.fill(&key("hist"), id, vec![remote(2, "R"), remote(3, "R")]);
        assert_eq!(hub.deliver(&remote(5, "R")), Delivery::Reached(2));
        let bytes = |offsets: &[u64]| -> Vec<Bytes> {
            offsets.iter().map(|o| Bytes::from(o.to_string())).collect()
        };
        assert_eq!(drained(&a), bytes(&[1, 2, 3, 4, 5]));
        assert_eq!(
            drained(&b),
            bytes(&[2, 3, 4, 5]),
            "the fill skips its replay"
        );
    }

    #[test]
    fn unfilled_gap_still_releases_held_messages() {
        let hub = keeping(100);
        let a = outbox(1);
        hub.subscribe(&key("hist"), &a);
        hub.deliver(&remote(1, "R"));
        let (_, id) = gap(hub.deliver(&remote(4, "R")));
        hub.fill(&key("hist"), id, Vec::new());
        assert_eq!(
            drained(&a),
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"4")]
        );
    }

    #[test]
    fn concurrent_subscribe_and_unsubscribe_never_lose_a_subscriber() {
        let hub = Arc::new(Hub::default());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let id = t * 10_000 + i;
                        let o = outbox(id);
                        hub.subscribe(&key("hot"), &o);
                        hub.unsubscribe(&key("hot"), id);
                    }
                    let keep = outbox(t + 1_000_000);
                    hub.subscribe(&key("hot"), &keep);
                    keep
                })
            })
            .collect();
        let kept: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(hub.subscriber_count(&key("hot")), 4);
        assert_eq!(publish(&hub, "hot", "x").subscribers, 4);
        drop(kept);
    }
}
