//! push-stream's message markers: `~time~` (publish time, whole seconds,
//! sent as an HTTP-date) and `~tag~` (order within that second), and the
//! resume rule over them.
//!
//! Both derive from the core message alone, so that live fan-out, stored
//! history and a resuming client agree: `time = time_ms / 1000` and
//! `tag = time_ms % 1000 + 1`. Tags start at 1 like the module's, so a
//! marker `(now, 0)` sorts before every message of its second.
//!
//! Resuming finds a message by its markers and goes on by offset, so a
//! channel's markers must grow with its offsets. Whatever sequences the
//! channel assigns the publish time together with the offset, never at or
//! before the previous message's ([`next_publish_time`]): the hub on a
//! single node, the Redis publish script (in Redis' clock) in a cluster.
//! The module gets the same from assigning tags under its shared-memory
//! lock.
//!
//! Markers are unique within a channel, not across channels as the
//! module's process-wide tag is: a time unique per process would run ahead
//! of the clock once the whole process published more than a message a
//! millisecond, and no clock is shared by a cluster's channels.
//!
//! [`next_publish_time`]: herald_core::message::next_publish_time

use std::time::{Duration, UNIX_EPOCH};

use herald_core::Message;
use herald_core::message::now_ms;

/// A message's position in push-stream terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Marker {
    /// Seconds since the Unix epoch.
    pub(crate) time: u64,
    /// Order within that second, from 1.
    pub(crate) tag: u64,
}

impl Marker {
    /// Control messages (pings, deleted, timeout) carry time 0, tag 0.
    pub(crate) const ZERO: Marker = Marker { time: 0, tag: 0 };

    pub(crate) fn of(msg: &Message) -> Self {
        Self::from_ms(msg.publication.time_ms)
    }

    pub(crate) fn from_ms(ms: u64) -> Self {
        Self {
            time: ms / 1000,
            tag: ms % 1000 + 1,
        }
    }

    /// This second, before any of its messages.
    pub(crate) fn now() -> Self {
        Self {
            time: now_ms() / 1000,
            tag: 0,
        }
    }

    pub(crate) fn http_date(&self) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(self.time))
    }

    /// The `Etag` value.
    pub(crate) fn etag(&self) -> String {
        format!("W/{}", self.tag)
    }
}

/// Parses an HTTP-date (`If-Modified-Since`, the `time` argument) into seconds.
pub(crate) fn parse_http_date(text: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(text.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Parses an `If-None-Match` value or `tag` argument: an integer, with an
/// optional `W/` prefix; the module takes its absolute value.
pub(crate) fn parse_tag(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"')
        .parse::<i64>()
        .ok()
        .map(i64::unsigned_abs)
}

/// Where a client resumes, as it told the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Since {
    /// `If-Modified-Since` / `time`, in seconds.
    pub(crate) time: u64,
    /// `If-None-Match` / `tag`, when given.
    pub(crate) tag: Option<u64>,
}

impl Since {
    /// Whether `m` is at or after this point by the module's rule: a later
    /// second, or the same second with a tag at least the given one.
    pub(crate) fn reaches(&self, m: Marker) -> bool {
        m.time > self.time || (m.time == self.time && self.tag.is_some_and(|t| m.tag >= t))
    }

    /// Whether `m` is exactly the message the client named (it has it).
    pub(crate) fn is(&self, m: Marker) -> bool {
        m.time == self.time && self.tag == Some(m.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_resume_rule() {
        let m = Marker::from_ms(1_700_000_000_250);
        assert_eq!((m.time, m.tag), (1_700_000_000, 251));
        assert_eq!(parse_http_date(&m.http_date()), Some(m.time));
        assert_eq!(parse_tag("W/251"), Some(251));
        assert_eq!(parse_tag("-3"), Some(3));
        assert_eq!(parse_tag("x"), None);
        let since = Since {
            time: m.time,
            tag: Some(251),
        };
        assert!(since.reaches(m) && since.is(m));
        assert!(since.reaches(Marker::from_ms(1_700_000_001_000)));
        assert!(!since.reaches(Marker::from_ms(1_700_000_000_100)));
        let no_tag = Since {
            time: m.time,
            tag: None,
        };
        assert!(!no_tag.reaches(m), "without a tag only later seconds count");
        assert!(Marker::now() > Marker::ZERO);
    }
}
