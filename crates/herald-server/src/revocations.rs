//! Revoked tokens (`POST /api/v1/revoke`): a user's tokens issued up to a
//! moment are refused from then on, and the user's connections closed.
//!
//! Revocations are broker records, so every node of a cluster shares them;
//! each node keeps them in memory, where verifying a token looks, and
//! rereads them every [`SYNC_EVERY`]. The node that revokes knows at once,
//! the others within that; a node that learns of one then closes its own
//! connections of that user, as one that reconnected there in between
//! came with a token the node did not know was revoked yet.
//!
//! Each revocation is a record of its own (`<until>:<user>`), never
//! replaced: two nodes revoking one user at once cannot lose either, and
//! the latest second wins when they are read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::identity::{Filter, Identity};
use herald_core::{BrokerError, Record};
use parking_lot::{Mutex, RwLock};

use crate::auth::USER_DIM;
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
    /// Revoked on this node lately, and when: a reread that began before
    /// the record was written must not forget it.
    recent: Mutex<HashMap<String, (u64, Instant)>>,
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
        // One lock at a time: `replace` takes `recent`, then `until`.
        let last = {
            let mut until = self.until.write();
            let entry = until.entry(user.to_owned()).or_default();
            *entry = (*entry).max(last);
            *entry
        };
        self.recent
            .lock()
            .insert(user.to_owned(), (last, Instant::now()));
    }

    /// Takes `fresh`, as read from the broker, as the revocations, with
    /// what this node revoked lately (the read may have begun before its
    /// record was written); returns the users whose revocation is new here
    /// or reaches later than before, with the second it reaches.
    fn replace(&self, mut fresh: HashMap<String, u64>) -> Vec<(String, u64)> {
        let mut recent = self.recent.lock();
        recent.retain(|_, (_, at)| at.elapsed() < 2 * SYNC_EVERY);
        for (user, &(last, _)) in recent.iter() {
            let entry = fresh.entry(user.clone()).or_default();
            *entry = (*entry).max(last);
        }
        let mut until = self.until.write();
        let raised = fresh
            .iter()
            .filter(|&(user, &last)| until.get(user).is_none_or(|&known| known < last))
            .map(|(user, &last)| (user.clone(), last))
            .collect();
        *until = fresh;
        raised
    }
}

/// Revokes `user`'s tokens issued at or before `last` (Unix seconds) on
/// every node, for `auth.revocation_ttl` past `last` (a later second keeps
/// the user out until then, and the tokens it revoked expire after).
pub(crate) async fn revoke(state: &AppState, user: &str, last: u64) -> Result<(), BrokerError> {
    let record = Record {
        id: format!("{last}:{user}"),
        value: Bytes::from(last.to_string()),
        created_ms: herald_core::message::now_ms(),
    };
    let ttl = record_ttl(state.config.auth.revocation_ttl, last, now_secs());
    // `false`: the same second was revoked already, which is as good.
    state
        .engine
        .broker()
        .create_record(KIND, record, Some(ttl))
        .await?;
    state.revocations.insert(user, last);
    Ok(())
}

/// How long the record revoking up to second `last` is kept, at `now`.
fn record_ttl(revocation_ttl: Duration, last: u64, now: u64) -> Duration {
    revocation_ttl.saturating_add(Duration::from_secs(last.saturating_sub(now)))
}

fn now_secs() -> u64 {
    herald_core::message::now_ms() / 1000
}

/// Rereads the revocations every [`SYNC_EVERY`], for as long as the server
/// runs: on a cluster, what other nodes revoked arrives this way (and this
/// node's connections of those users close), and what expired goes.
pub(crate) async fn sync(state: AppState) {
    let mut every = tokio::time::interval(SYNC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.engine.broker().records(KIND).await {
            Ok(records) => {
                let mut fresh: HashMap<String, u64> = HashMap::new();
                for (user, last) in records.iter().filter_map(parse) {
                    let entry = fresh.entry(user).or_default();
                    *entry = (*entry).max(last);
                }
                let raised = state.revocations.replace(fresh);
                for (user, until) in raised {
                    let filter = Filter::new(Identity::new([(USER_DIM, user.as_str())]));
                    let directory = state.engine.directory();
                    let closed = directory.disconnect_issued_until(&filter, until);
                    if closed > 0 {
                        tracing::info!(%user, closed, "Revoked elsewhere: connections closed.");
                    }
                }
            }
            // Keep what is known; the next turn tries again.
            Err(error) => tracing::debug!(%error, "Revocations not reread."),
        }
    }
}

/// A record's user and last revoked second: `<until>:<user>` holding
/// `until`, or, as written before, `<user>` holding it.
fn parse(record: &Record) -> Option<(String, u64)> {
    let last: u64 = std::str::from_utf8(&record.value).ok()?.parse().ok()?;
    let user = match record.id.split_once(':') {
        Some((second, user)) if second == last.to_string() => user,
        _ => record.id.as_str(),
    };
    Some((user.to_owned(), last))
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

    #[test]
    fn a_later_ban_is_kept_until_its_tokens_expired() {
        let day = Duration::from_secs(86_400);
        assert_eq!(record_ttl(day, 1_000, 1_000), day, "up to now");
        assert_eq!(record_ttl(day, 900, 1_000), day, "up to a past second");
        let week = 7 * 86_400;
        assert_eq!(
            record_ttl(day, 1_000 + week, 1_000),
            day + Duration::from_secs(week),
            "a ban a week ahead"
        );
    }

    #[test]
    fn records_read_by_user_new_and_old_layouts() {
        let record = |id: &str, value: &str| Record {
            id: id.into(),
            value: Bytes::from(value.to_owned()),
            created_ms: 0,
        };
        assert_eq!(
            parse(&record("100:alice", "100")),
            Some(("alice".into(), 100))
        );
        assert_eq!(parse(&record("100:a:b", "100")), Some(("a:b".into(), 100)));
        assert_eq!(parse(&record("alice", "100")), Some(("alice".into(), 100)));
        assert_eq!(parse(&record("7:x", "100")), Some(("7:x".into(), 100)));
        assert_eq!(parse(&record("alice", "soon")), None);
    }

    #[test]
    fn a_reread_reports_what_is_new_and_keeps_what_the_read_missed() {
        let r = Revocations::default();
        r.insert("alice", 100);
        let raised = r.replace(HashMap::from([("bob".into(), 5), ("alice".into(), 100)]));
        assert_eq!(raised, [("bob".to_owned(), 5)]);
        let raised = r.replace(HashMap::from([("bob".into(), 9), ("alice".into(), 100)]));
        assert_eq!(raised, [("bob".to_owned(), 9)], "raised");
        // Revoked here after the read began: not lost to it.
        r.insert("carol", 7);
        assert!(r.replace(HashMap::new()).is_empty(), "not new here");
        assert!(r.is_revoked("carol", Some(7)));
        r.recent.lock().clear();
        // Gone from the broker (expired): gone here.
        r.replace(HashMap::new());
        assert!(!r.is_revoked("alice", Some(1)));
    }

    /// A revoke and a reread at once, many times over: they must never
    /// wait on each other's lock for good.
    #[test]
    fn revoking_while_rereading_does_not_deadlock() {
        let r = std::sync::Arc::new(Revocations::default());
        let (done, finished) = std::sync::mpsc::channel();
        for side in 0..2 {
            let (r, done) = (r.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    if side == 0 {
                        r.insert("alice", i);
                    } else {
                        r.replace(HashMap::from([("bob".to_owned(), i)]));
                    }
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..2 {
            finished
                .recv_timeout(Duration::from_secs(20))
                .expect("both finished: no deadlock");
        }
    }
}
