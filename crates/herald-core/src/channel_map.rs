//! The hub's channels by key, split into shards that each have their own
//! lock, so work on different channels rarely contends.
//!
//! A key is hashed once per lookup: the same keyed SipHash picks the shard
//! and the slot within it. (A `HashMap` per shard would hash it again.)

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use parking_lot::{RwLock, RwLockWriteGuard};

use crate::channel::ChannelKey;

const SHARDS: usize = 64;

/// What one shard holds: each channel with its key.
type Slots<V> = HashTable<(ChannelKey, Arc<V>)>;

/// Values (the hub's channels) by channel key.
pub(crate) struct ChannelMap<V> {
    /// Shard `i` holds the keys whose hash has `i` in bits 32–37: the table
    /// inside uses the low bits for its slot and the top seven to tell
    /// keys apart, so a shard's keys still spread over both.
    shards: Box<[RwLock<Slots<V>>]>,
    /// Keyed per process, so clients cannot choose colliding channel names.
    hasher: RandomState,
}

impl<V> ChannelMap<V> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn locate(&self, key: &ChannelKey) -> (u64, &RwLock<Slots<V>>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    fn rehash(&self) -> impl Fn(&(ChannelKey, Arc<V>)) -> u64 + '_ {
        |(key, _)| self.hasher.hash_one(key)
    }

    pub(crate) fn get(&self, key: &ChannelKey) -> Option<Arc<V>> {
        let (hash, shard) = self.locate(key);
        let slots = shard.read();
        slots.find(hash, |(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// The value under `key`, made by `make` if there is none.
    pub(crate) fn get_or_insert_with(&self, key: &ChannelKey, make: impl FnOnce() -> V) -> Arc<V> {
        let (hash, shard) = self.locate(key);
        if let Some((_, v)) = shard.read().find(hash, |(k, _)| k == key) {
            return v.clone();
        }
        let mut slots = shard.write();
        match slots.entry(hash, |(k, _)| k == key, self.rehash()) {
            Entry::Occupied(e) => e.get().1.clone(),
            Entry::Vacant(e) => {
                let v = Arc::new(make());
                e.insert((key.clone(), v.clone()));
                v
            }
        }
    }

    /// `key`'s slot, write-locked: what is there can be read and removed
    /// under one lock.
    pub(crate) fn lock<'a>(&'a self, key: &'a ChannelKey) -> Slot<'a, V> {
        let (hash, shard) = self.locate(key);
        Slot {
            slots: shard.write(),
            hash,
            key,
        }
    }

    /// Calls `f` on each shard's entries in turn, under that shard's read
    /// lock.
    pub(crate) fn for_each_shard(
        &self,
        mut f: impl FnMut(&mut dyn Iterator<Item = (&ChannelKey, &Arc<V>)>),
    ) {
        for shard in self.shards.iter() {
            let slots = shard.read();
            f(&mut slots.iter().map(|(k, v)| (k, v)));
        }
    }
}

/// One key's place in its write-locked shard.
pub(crate) struct Slot<'a, V> {
    /// The shard, held for as long as the slot is.
    slots: RwLockWriteGuard<'a, Slots<V>>,
    /// The key's hash, computed once for the lock and every lookup after.
    hash: u64,
    /// The key whose place this is.
    key: &'a ChannelKey,
}

impl<V> Slot<'_, V> {
    pub(crate) fn get(&self) -> Option<&Arc<V>> {
        let key = self.key;
        self.slots
            .find(self.hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn remove(&mut self) -> Option<Arc<V>> {
        let key = self.key;
        let entry = self.slots.find_entry(self.hash, |(k, _)| k == key).ok()?;
        Some(entry.remove().0.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(&Arc::from("app"), name).unwrap()
    }

    #[test]
    fn keys_find_their_values_across_shards() {
        let map = ChannelMap::new();
        for i in 0..1_000 {
            let made = map.get_or_insert_with(&key(&format!("c{i}")), || i);
            assert_eq!(*made, i);
        }
        for i in 0..1_000 {
            assert_eq!(map.get(&key(&format!("c{i}"))).as_deref(), Some(&i));
            let again = map.get_or_insert_with(&key(&format!("c{i}")), || unreachable!());
            assert_eq!(*again, i);
        }
        assert_eq!(map.get(&key("other")), None);
        let mut seen = 0;
        let mut shards_used = 0;
        map.for_each_shard(|entries| {
            let n = entries.count();
            seen += n;
            shards_used += usize::from(n > 0);
        });
        assert_eq!(seen, 1_000);
        assert_eq!(shards_used, SHARDS, "1,000 keys leave no shard empty");
    }

    #[test]
    fn a_locked_slot_reads_and_removes() {
        let map = ChannelMap::new();
        map.get_or_insert_with(&key("c"), || 1);
        let k = key("c");
        let mut slot = map.lock(&k);
        assert_eq!(slot.get().map(|v| **v), Some(1));
        assert_eq!(slot.remove().as_deref(), Some(&1));
        assert_eq!(slot.get(), None);
        assert_eq!(slot.remove(), None);
        drop(slot);
        assert_eq!(map.get(&k), None);
    }
}
