//! Small named records shared by every node, each with an optional expiry:
//! the state compatibility APIs keep besides channels (push-api's channel
//! records). Brokers store them, so every node sees the same set; this
//! module holds the record type and the in-process store of a single node.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::message::now_ms;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unique within its kind.
    pub id: String,
    /// Opaque to the store; the owner's encoding.
    pub value: Bytes,
    /// Unix milliseconds at creation; listings are oldest first.
    pub created_ms: u64,
}

/// Unix milliseconds when a record created now with `ttl` expires; 0 keeps
/// it.
pub fn expiry_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| {
        now_ms().saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Whether a record expiring at `expires_ms` (0: never) is gone.
pub fn expired(expires_ms: u64) -> bool {
    expires_ms != 0 && expires_ms <= now_ms()
}

/// The records of one node, for the embedded broker.
#[derive(Debug, Default)]
pub struct LocalRecords {
    /// `(kind, id)` → the record and its expiry (Unix ms, 0: never).
    records: Mutex<HashMap<(String, String), (Record, u64)>>,
    /// Lease name → expiry (Unix ms).
    leases: Mutex<HashMap<String, u64>>,
}

impl LocalRecords {
    /// Stores `record` unless a live one has its id. Returns whether it did.
    pub fn create(&self, kind: &str, record: Record, ttl: Option<Duration>) -> bool {
        let mut records = self.records.lock();
        let key = (kind.to_owned(), record.id.clone());
        if records.get(&key).is_some_and(|(_, exp)| !expired(*exp)) {
            return false;
        }
        records.insert(key, (record, expiry_ms(ttl)));
        true
    }

    /// The live record `id`.
    pub fn get(&self, kind: &str, id: &str) -> Option<Record> {
        let records = self.records.lock();
        let (record, exp) = records.get(&(kind.to_owned(), id.to_owned()))?;
        (!expired(*exp)).then(|| record.clone())
    }

    /// Every live record of `kind`, oldest first; expired ones are dropped.
    pub fn list(&self, kind: &str) -> Vec<Record> {
        let mut records = self.records.lock();
        records.retain(|_, (_, exp)| !expired(*exp));
        let mut live: Vec<Record> = records
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, (r, _))| r.clone())
            .collect();
        sort(&mut live);
        live
    }

    /// Removes the live record `id`. Returns whether there was one.
    pub fn delete(&self, kind: &str, id: &str) -> bool {
        let removed = self
            .records
            .lock()
            .remove(&(kind.to_owned(), id.to_owned()));
        removed.is_some_and(|(_, exp)| !expired(exp))
    }

    /// Takes lease `name` for `ttl` unless it is held. Returns whether taken.
    pub fn lease(&self, name: &str, ttl: Duration) -> bool {
        let mut leases = self.leases.lock();
        if leases.get(name).is_some_and(|exp| !expired(*exp)) {
            return false;
        }
        leases.insert(name.to_owned(), expiry_ms(Some(ttl)));
        true
    }
}

/// Orders a listing: oldest first, then by id.
pub fn sort(records: &mut [Record]) {
    records.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, created_ms: u64) -> Record {
        Record {
            id: id.into(),
            value: Bytes::from(id.to_owned()),
            created_ms,
        }
    }

    #[test]
    fn create_refuses_a_live_duplicate_but_replaces_an_expired_one() {
        let store = LocalRecords::default();
        assert!(store.create("k", record("a", 1), None));
        assert!(!store.create("k", record("a", 2), None));
        assert!(
            store.create("other", record("a", 3), None),
            "kinds are apart"
        );
        assert_eq!(store.get("k", "a").unwrap().created_ms, 1);

        assert!(store.create("k", record("b", 1), Some(Duration::ZERO)));
        assert_eq!(store.get("k", "b"), None, "expired at once");
        assert!(store.create("k", record("b", 5), None));
        assert_eq!(store.get("k", "b").unwrap().created_ms, 5);
    }

    #[test]
    fn list_is_oldest_first_and_delete_reports_presence() {
        let store = LocalRecords::default();
        store.create("k", record("late", 9), None);
        store.create("k", record("early", 2), None);
        store.create("k", record("gone", 1), Some(Duration::ZERO));
        let ids: Vec<String> = store.list("k").into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["early", "late"]);
        assert!(store.delete("k", "late"));
        assert!(!store.delete("k", "late"));
        assert!(!store.delete("k", "never"));
    }

    #[test]
    fn a_lease_is_held_until_it_expires() {
        let store = LocalRecords::default();
        assert!(store.lease("ping", Duration::from_secs(60)));
        assert!(!store.lease("ping", Duration::from_secs(60)));
        assert!(store.lease("other", Duration::ZERO));
        assert!(store.lease("other", Duration::ZERO), "expired at once");
    }
}
