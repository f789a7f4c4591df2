//! Stored messages per channel, bounded by count and age, so that
//! subscribers can resume where they left off.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelKey;
use crate::message::Message;

/// How much of a channel to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Messages kept; 0 keeps none.
    pub size: usize,
    /// How long a message is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Retention {
    pub const NONE: Retention = Retention {
        size: 0,
        ttl: Duration::ZERO,
    };

    pub fn keeps(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

/// A retention rule for channel names matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    /// A channel name, or a name with one `*` standing for any run of characters.
    pub pattern: String,
    #[serde(flatten)]
    pub retention: Retention,
}

/// Which channels keep history, and how much. The first matching rule wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPolicy {
    pub rules: Vec<RetentionRule>,
}

impl HistoryPolicy {
    /// The retention of `key`: the first rule whose pattern matches its name.
    pub fn retention(&self, key: &ChannelKey) -> Retention {
        self.rules
            .iter()
            .find(|r| crate::channel::pattern_matches(&r.pattern, key.name()))
            .map_or(Retention::NONE, |r| r.retention)
    }
}

/// Where a resuming subscriber wants to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Offset of the last message the client has.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: Arc<str>,
}

/// Whether a resume could replay everything the client missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// Every missed message was replayed (possibly none).
    Recovered,
    /// The channel's history was lost since (restart, eviction): reload.
    EpochChanged,
    /// Messages the client missed are no longer stored: reload.
    TooOld,
}

/// Picks where replay starts in a channel's history: an index, or why the
/// history cannot serve the request.
pub type ReplayPick<'a> = Box<dyn FnOnce(&History) -> Result<usize, Recovery> + Send + 'a>;

/// Which stored messages a new subscriber wants first.
pub enum Replay<'a> {
    /// Live messages only.
    None,
    /// Everything after this position, if still stored.
    After(Position),
    /// The last `n` stored messages.
    Last(usize),
    /// A dialect's own choice (by time, by event id, …).
    Custom(ReplayPick<'a>),
}

impl Replay<'_> {
    /// Where replay starts in `history` (`None`: nothing to replay), and the
    /// recovery outcome to report when a resume was asked for.
    pub fn start(
        self,
        history: &History,
        epoch: &str,
        next_offset: u64,
    ) -> (Option<Recovery>, Option<usize>) {
        let start = match self {
            Replay::None => return (None, None),
            Replay::After(pos) => history.after(&pos, epoch, next_offset),
            Replay::Last(n) => Ok(history.len().saturating_sub(n)),
            Replay::Custom(pick) => pick(history),
        };
        match start {
            Ok(i) => (Some(Recovery::Recovered), Some(i)),
            Err(r) => (Some(r), None),
        }
    }

    /// How many stored messages this replay can need at most, when known.
    pub fn wants(&self) -> Option<usize> {
        match self {
            Replay::None => Some(0),
            Replay::Last(n) => Some(*n),
            Replay::After(_) | Replay::Custom(_) => None,
        }
    }
}

/// One channel's stored messages, oldest first.
#[derive(Debug, Default)]
pub struct History {
    /// Oldest first, so that trimming and expiry pop from the front.
    messages: VecDeque<Arc<Message>>,
}

impl History {
    /// A history holding `messages` (oldest first), e.g. read from a broker.
    pub fn from_messages(messages: Vec<Arc<Message>>) -> Self {
        Self {
            messages: messages.into(),
        }
    }

    /// Stores `msg` and trims to `retention`.
    pub(crate) fn push(&mut self, msg: Arc<Message>, retention: Retention) {
        self.messages.push_back(msg);
        while self.messages.len() > retention.size {
            self.messages.pop_front();
        }
    }

    /// Drops messages older than `ttl` (by publish time, milliseconds).
    pub(crate) fn expire(&mut self, now_ms: u64, ttl: Duration) {
        let cutoff = now_ms.saturating_sub(ttl.as_millis() as u64);
        while self
            .messages
            .front()
            .is_some_and(|m| m.publication.time_ms < cutoff)
        {
            self.messages.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Message>> + ExactSizeIterator {
        self.messages.iter()
    }

    /// The index of the first stored message after `position`, when the
    /// history still covers it.
    pub fn after(
        &self,
        position: &Position,
        epoch: &str,
        next_offset: u64,
    ) -> Result<usize, Recovery> {
        if *position.epoch != *epoch {
            return Err(Recovery::EpochChanged);
        }
        if position.offset + 1 >= next_offset {
            // The client has everything (or claims more than exists).
            return Ok(self.messages.len());
        }
        match self.messages.front() {
            Some(first) if first.offset <= position.offset + 1 => Ok(self
                .messages
                .partition_point(|m| m.offset <= position.offset)),
            _ => Err(Recovery::TooOld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Publication;
    use bytes::Bytes;

    fn msg(offset: u64, time_ms: u64) -> Arc<Message> {
        let key = ChannelKey::new(&Arc::from("a"), "c").unwrap();
        let mut p = Publication::new(Bytes::from_static(b"1"));
        p.time_ms = time_ms;
        Arc::new(Message::new(key, p, offset, Arc::from("e")))
    }

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: Arc::from(epoch),
        }
    }

    #[test]
    fn patterns_pick_the_first_matching_rule() {
        let policy = HistoryPolicy {
            rules: vec![
                RetentionRule {
                    pattern: "chat:*".into(),
                    retention: Retention {
                        size: 10,
                        ttl: Duration::from_secs(60),
                    },
                },
                RetentionRule {
                    pattern: "*".into(),
                    retention: Retention {
                        size: 1,
                        ttl: Duration::from_secs(1),
                    },
                },
            ],
        };
        let key = |n: &str| ChannelKey::new(&Arc::from("a"), n).unwrap();
        assert_eq!(policy.retention(&key("chat:1")).size, 10);
        assert_eq!(policy.retention(&key("news")).size, 1);
        assert_eq!(
            HistoryPolicy::default().retention(&key("x")),
            Retention::NONE
        );
    }

    #[test]
    fn trims_by_count_and_age() {
        let mut h = History::default();
        let r = Retention {
            size: 3,
            ttl: Duration::from_secs(10),
        };
        for i in 1..=5 {
            h.push(msg(i, i * 1000), r);
        }
        assert_eq!(h.iter().map(|m| m.offset).collect::<Vec<_>>(), [3, 4, 5]);
        h.expire(14_500, r.ttl);
        assert_eq!(h.iter().map(|m| m.offset).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn resume_points() {
        let mut h = History::default();
        let r = Retention {
            size: 3,
            ttl: Duration::from_secs(10),
        };
        for i in 1..=5 {
            h.push(msg(i, 0), r);
        }
        // Stored: 3, 4, 5; next offset 6.
        assert_eq!(h.after(&pos(2, "e"), "e", 6), Ok(0));
        assert_eq!(h.after(&pos(4, "e"), "e", 6), Ok(2));
        assert_eq!(h.after(&pos(5, "e"), "e", 6), Ok(3));
        assert_eq!(h.after(&pos(1, "e"), "e", 6), Err(Recovery::TooOld));
        assert_eq!(h.after(&pos(4, "x"), "e", 6), Err(Recovery::EpochChanged));
        assert_eq!(
            History::default().after(&pos(0, "e"), "e", 1),
            Ok(0),
            "a client at the start of an empty channel has everything"
        );
    }
}
