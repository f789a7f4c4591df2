//! The hub: which local connections listen to which channel, and fan-out.
//!
//! Channels live in shards chosen by hash, each behind its own lock, so
//! subscribes on different channels rarely contend. A channel's own mutex
//! orders its messages: offsets are assigned and subscribers fed under it, so
//! every subscriber sees a channel's messages in offset order. Fan-out only
//! queues shared bytes into outboxes; it never waits on a socket.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};

use crate::channel::ChannelKey;
use crate::message::{Message, Publication};
use crate::outbox::{ConnId, Outbox, Pushed};
use crate::stats::HubStats;

const SHARDS: usize = 64;

/// One shard of the channel map.
type Shard = RwLock<HashMap<ChannelKey, Arc<Channel>>>;

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

/// Counts for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub key: ChannelKey,
    /// Connections on this node subscribed to it.
    pub subscribers: usize,
    /// Messages published to it since it was created on this node.
    pub published: u64,
    /// The offset the next message will get.
    pub next_offset: u64,
    /// The channel's history generation.
    pub epoch: Arc<str>,
}

/// The local subscription registry and fan-out engine.
pub struct Hub {
    /// Channels by key, split across shards to spread lock contention.
    shards: Box<[Shard]>,
    /// Picks a key's shard; fixed for the hub's life.
    hasher: RandomState,
    /// Counters shared with the metrics endpoint.
    stats: Arc<HubStats>,
}

struct Channel {
    inner: Mutex<ChannelInner>,
}

struct ChannelInner {
    /// Local subscribers; `IndexMap` for O(1) removal and dense iteration.
    subscribers: IndexMap<ConnId, Arc<Outbox>>,
    /// Offset of the next message.
    next_offset: u64,
    /// History generation; new each time the channel is created here.
    epoch: Arc<str>,
    /// Messages published since creation.
    published: u64,
    /// Set when the channel left the shard map; holders of a stale `Arc`
    /// must look it up again.
    removed: bool,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> &Arc<HubStats> {
        &self.stats
    }

    fn shard(&self, key: &ChannelKey) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn get(&self, key: &ChannelKey) -> Option<Arc<Channel>> {
        self.shard(key).read().get(key).cloned()
    }

    fn get_or_create(&self, key: &ChannelKey) -> Arc<Channel> {
        if let Some(ch) = self.get(key) {
            return ch;
        }
        self.shard(key)
            .write()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Channel {
                    inner: Mutex::new(ChannelInner {
                        subscribers: IndexMap::new(),
                        next_offset: 1,
                        epoch: new_epoch(),
                        published: 0,
                        removed: false,
                    }),
                })
            })
            .clone()
    }

    /// Adds `outbox` to `key`'s subscribers. Returns true when it is the
    /// channel's first local subscriber, so the node must start listening.
    pub fn subscribe(&self, key: &ChannelKey, outbox: &Arc<Outbox>) -> bool {
        loop {
            let ch = self.get_or_create(key);
            let mut inner = ch.inner.lock();
            if inner.removed {
                continue;
            }
            let first = inner.subscribers.is_empty();
            inner.subscribers.insert(outbox.id(), outbox.clone());
            return first;
        }
    }

    /// Removes connection `id` from `key`. Returns true when the channel has no
    /// local subscribers left, so the node may stop listening.
    pub fn unsubscribe(&self, key: &ChannelKey, id: ConnId) -> bool {
        let Some(ch) = self.get(key) else {
            return false;
        };
        let mut inner = ch.inner.lock();
        if inner.subscribers.swap_remove(&id).is_none() || !inner.subscribers.is_empty() {
            return false;
        }
        drop(inner);
        self.remove_if_idle(key, &ch);
        true
    }

    fn remove_if_idle(&self, key: &ChannelKey, ch: &Arc<Channel>) {
        let mut shard = self.shard(key).write();
        let mut inner = ch.inner.lock();
        if inner.subscribers.is_empty()
            && !inner.removed
            && shard.get(key).is_some_and(|c| Arc::ptr_eq(c, ch))
        {
            inner.removed = true;
            shard.remove(key);
        }
    }

    /// Assigns the next offset in `key` and queues the message for every local
    /// subscriber. Used when this node is the channel's only sequencer (the
    /// memory broker).
    pub fn publish_local(&self, key: &ChannelKey, publication: Publication) -> Published {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        loop {
            let Some(ch) = self.get(key) else {
                // Nobody listens and nothing is kept: nothing to sequence.
                return Published {
                    id: publication.id,
                    offset: 0,
                    epoch: Arc::from(""),
                    subscribers: 0,
                };
            };
            let mut inner = ch.inner.lock();
            if inner.removed {
                continue;
            }
            let offset = inner.next_offset;
            inner.next_offset += 1;
            inner.published += 1;
            let msg = Message::new(key.clone(), publication, offset, inner.epoch.clone());
            let subscribers = self.fan_out(&inner.subscribers, &msg);
            return Published {
                id: msg.publication.id.clone(),
                offset,
                epoch: msg.epoch.clone(),
                subscribers,
            };
        }
    }

    /// Queues an already-sequenced message (from another node) for every local
    /// subscriber of its channel. Returns how many it reached.
    pub fn deliver(&self, msg: &Message) -> usize {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let Some(ch) = self.get(&msg.channel) else {
            return 0;
        };
        let mut inner = ch.inner.lock();
        inner.published += 1;
        inner.next_offset = inner.next_offset.max(msg.offset + 1);
        self.fan_out(&inner.subscribers, msg)
    }

    fn fan_out(&self, subscribers: &IndexMap<ConnId, Arc<Outbox>>, msg: &Message) -> usize {
        let (mut delivered, mut dropped, mut slow) = (0u64, 0u64, 0u64);
        for outbox in subscribers.values() {
            match outbox.push(msg.encoded(outbox.format())) {
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
        })
    }

    /// Every channel of `app` on this node, sorted by name.
    pub fn channels(&self, app: &str) -> Vec<ChannelInfo> {
        let mut all: Vec<ChannelInfo> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let keys: Vec<ChannelKey> = shard
                    .read()
                    .keys()
                    .filter(|k| k.app() == app)
                    .cloned()
                    .collect();
                keys
            })
            .filter_map(|k| self.channel_info(&k))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
}

fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:08x}", rand::random::<u32>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Format;
    use bytes::Bytes;

    struct Raw;
    impl Format for Raw {
        fn slot(&self) -> usize {
            0
        }
        fn encode(&self, msg: &Message) -> Bytes {
            Bytes::copy_from_slice(msg.data())
        }
    }

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(&Arc::from("app"), name).unwrap()
    }

    fn outbox(id: ConnId) -> Arc<Outbox> {
        Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20))
    }

    fn publish(hub: &Hub, ch: &str, data: &'static str) -> Published {
        hub.publish_local(
            &key(ch),
            Publication::new(Bytes::from_static(data.as_bytes())),
        )
    }

    #[test]
    fn fan_out_reaches_each_subscriber_once_in_order() {
        let hub = Hub::new();
        let (a, b) = (outbox(1), outbox(2));
        assert!(hub.subscribe(&key("c"), &a));
        assert!(!hub.subscribe(&key("c"), &b));
        assert_eq!(publish(&hub, "c", "1").subscribers, 2);
        let p2 = publish(&hub, "c", "2");
        assert_eq!(p2.offset, 2);
        for o in [&a, &b] {
            let mut out = Vec::new();
            o.drain(&mut out);
            assert_eq!(
                out,
                vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
            );
        }
    }

    #[test]
    fn channels_are_isolated() {
        let hub = Hub::new();
        let a = outbox(1);
        hub.subscribe(&key("c"), &a);
        assert_eq!(publish(&hub, "d", "x").subscribers, 0);
        let mut out = Vec::new();
        a.drain(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn last_unsubscribe_removes_the_channel() {
        let hub = Hub::new();
        let (a, b) = (outbox(1), outbox(2));
        hub.subscribe(&key("c"), &a);
        hub.subscribe(&key("c"), &b);
        assert!(!hub.unsubscribe(&key("c"), 1));
        assert!(!hub.unsubscribe(&key("c"), 1), "second removal is a no-op");
        assert!(hub.unsubscribe(&key("c"), 2));
        assert!(hub.channel_info(&key("c")).is_none());
        assert_eq!(publish(&hub, "c", "x").subscribers, 0);
    }

    #[test]
    fn stats_count_deliveries() {
        let hub = Hub::new();
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
    fn concurrent_subscribe_and_unsubscribe_never_lose_a_subscriber() {
        let hub = Arc::new(Hub::new());
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
