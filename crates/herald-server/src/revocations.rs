//! Revoked tokens (`POST /api/v1/revoke`): a user's tokens issued up to a
//! moment are refused from then on, and the user's connections closed.
//!
//! Revocations are broker records, so every node of a cluster shares them;
//! each node keeps them in memory, where verifying a token looks, and
//! rereads them every [`SYNC_EVERY`]. The node that revokes knows at once,
//! the others within that.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{BrokerError, Record};
use parking_lot::RwLock;

use crate::state::AppState;

/// The record kind revocations are stored as.
const KIND: &str = "revocation";

/// How often a node of a cluster rereads the revocations.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Users whose older tokens are refused.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    /// User → the last second (Unix) whose tokens are revoked.
    until: RwLock<HashMap<String, u64>>,
}

impl Revocations {
    /// Whether `user`'s token issued at `issued_at` (Unix seconds; `None`
    /// when it does not say, so it may be old) is revoked.
    pub(crate) fn is_revoked(&self, user: &str, issued_at: Option<u64>) -> bool {
        let until = self.until.read();
        // No lookup while nothing is revoked: the common case.
        if until.is_empty() {
            return false;
        }
        until
            .get(user)
            .is_some_and(|&last| issued_at.is_none_or(|iat| iat <= last))
    }

    fn insert(&self, user: &str, last: u64) {
        let mut until = self.until.write();
        let entry = until.entry(user.to_owned()).or_default();
        *entry = (*entry).max(last);
    }
}

/// Revokes `user`'s tokens issued at or before `last` (Unix seconds) on
/// every node, for `auth.revocation_ttl`.
pub(crate) async fn revoke(state: &AppState, user: &str, last: u64) -> Result<(), BrokerError> {
    let broker = state.engine.broker();
    // A later revocation replaces an earlier one; never the other way.
    let last = match broker.record(KIND, user).await? {
        Some(kept) => parse(&kept).map_or(last, |kept| kept.max(last)),
        None => last,
    };
    broker.delete_record(KIND, user).await?;
    let record = Record {
        id: user.to_owned(),
        value: Bytes::from(last.to_string()),
        created_ms: herald_core::message::now_ms(),
    };
    let ttl = state.config.auth.revocation_ttl;
    broker.create_record(KIND, record, Some(ttl)).await?;
    state.revocations.insert(user, last);
    Ok(())
}

/// Rereads the revocations every [`SYNC_EVERY`], for as long as the server
/// runs: on a cluster, what other nodes revoked arrives this way, and what
/// expired goes.
pub(crate) async fn sync(state: AppState) {
    let mut every = tokio::time::interval(SYNC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.engine.broker().records(KIND).await {
            Ok(records) => {
                let fresh = records
                    .iter()
                    .filter_map(|r| Some((r.id.clone(), parse(r)?)))
                    .collect();
                *state.revocations.until.write() = fresh;
            }
            // Keep what is known; the next turn tries again.
            Err(error) => tracing::debug!(%error, "Revocations not reread."),
        }
    }
}

fn parse(record: &Record) -> Option<u64> {
    std::str::from_utf8(&record.value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_up_to_the_revoked_second_are_refused() {
        let r = Revocations::default();
        assert!(!r.is_revoked("alice", Some(10)));
        r.insert("alice", 100);
        assert!(r.is_revoked("alice", Some(99)));
        assert!(r.is_revoked("alice", Some(100)));
        assert!(
            r.is_revoked("alice", None),
            "a token without iat may be old"
        );
        assert!(!r.is_revoked("alice", Some(101)));
        assert!(!r.is_revoked("bob", Some(1)));
        // An earlier second never shortens a later revocation.
        r.insert("alice", 50);
        assert!(r.is_revoked("alice", Some(100)));
    }
}
