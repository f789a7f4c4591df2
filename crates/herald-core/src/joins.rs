//! First subscribes in flight. Until the broker listens to a channel for
//! this node, the node hears none of its messages: a second local
//! subscriber arriving meanwhile must wait for the first one's broker
//! subscribe, or it would be told it is subscribed (and read history, and
//! go live) while messages still pass this node by.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::channel::ChannelKey;

/// The channels whose first local subscriber is still subscribing at the
/// broker, each with what it will tell: `Some(true)` once the broker
/// listens, `Some(false)` if it failed; dropped unsent if its subscriber
/// gave up.
pub(crate) struct Joins {
    /// The in-flight subscribes, by channel, each with its number; in
    /// shards, so that a subscribe replaying history under one shard's lock
    /// holds up only the channels that hash with it.
    shards: [Mutex<Inflight>; SHARDS],
    /// Picks a channel's shard.
    hasher: RandomState,
}

/// Shards of [`Joins`].
const SHARDS: usize = 64;

impl Default for Joins {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
        }
    }
}

/// [`Joins`]' state, behind its lock.
#[derive(Default)]
struct Inflight {
    /// The subscribes, by channel.
    by_channel: HashMap<ChannelKey, (u64, watch::Receiver<Option<bool>>)>,
    /// Numbers them: a guard removes its own entry, not a later one's.
    issued: u64,
}

/// What a local subscriber does about the broker.
pub(crate) enum Turn {
    /// It is the channel's first: it subscribes, and tells the others.
    First(JoinGuard),
    /// Another's subscribe is in flight: it waits for it.
    Wait(watch::Receiver<Option<bool>>),
    /// The broker listens already.
    Listening,
}

impl Joins {
    /// Runs `subscribe` (the hub's subscribe, which says whether this is
    /// the channel's first local subscriber) and finds its turn, both under
    /// one lock: a subscriber that is not first sees the first one's
    /// subscribe in flight.
    pub(crate) fn enter<T>(
        self: &Arc<Self>,
        key: &ChannelKey,
        subscribe: impl FnOnce() -> (bool, T),
    ) -> (Turn, T) {
        let mut inflight = self.shard(key).lock();
        let (first, value) = subscribe();
        let turn = if first {
            let (tx, rx) = watch::channel(None);
            inflight.issued += 1;
            let number = inflight.issued;
            inflight.by_channel.insert(key.clone(), (number, rx));
            Turn::First(JoinGuard {
                joins: self.clone(),
                key: key.clone(),
                number,
                tx,
            })
        } else {
            match inflight.by_channel.get(key) {
                Some((_, rx)) => Turn::Wait(rx.clone()),
                None => Turn::Listening,
            }
        };
        (turn, value)
    }

    /// The lock `key`'s in-flight subscribe is under.
    fn shard(&self, key: &ChannelKey) -> &Mutex<Inflight> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }
}

/// A first subscribe in flight; dropping it ends it, told or not.
pub(crate) struct JoinGuard {
    /// Where it is registered.
    joins: Arc<Joins>,
    /// Its channel.
    key: ChannelKey,
    /// Its number in [`Inflight`].
    number: u64,
    /// Tells the waiting subscribers how it went.
    tx: watch::Sender<Option<bool>>,
}

impl JoinGuard {
    /// Tells the waiting subscribers whether the broker listens now.
    pub(crate) fn done(self, listening: bool) {
        self.tx.send_replace(Some(listening));
    }
}

impl Drop for JoinGuard {
    fn drop(&mut self) {
        let mut inflight = self.joins.shard(&self.key).lock();
        // A later first subscribe of the channel may have replaced this one.
        if inflight
            .by_channel
            .get(&self.key)
            .is_some_and(|(number, _)| *number == self.number)
        {
            inflight.by_channel.remove(&self.key);
        }
    }
}

/// Waits for another subscriber's broker subscribe: whether it left the
/// broker listening. `false` when it failed or its subscriber gave up: the
/// caller then subscribes itself.
pub(crate) async fn wait(mut rx: watch::Receiver<Option<bool>>) -> bool {
    matches!(
        rx.wait_for(Option::is_some).await.as_deref(),
        Ok(Some(true))
    )
}
