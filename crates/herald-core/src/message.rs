//! Messages, and their encodings shared by every subscriber of one wire format.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::channel::ChannelKey;
use crate::identity::PresenceChange;

/// How many wire formats one process may register (see [`Format::slot`]).
/// Every message carries one cache slot per format, stored messages too, so
/// this stays close to the number of formats there are (seven today).
pub const MAX_FORMATS: usize = 8;

/// What a publisher hands in: everything but the channel position.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Unique message id; the publisher's own or a generated UUIDv7.
    pub id: Arc<str>,
    /// Optional event name (SSE `event:`, push-stream `Event-Type`).
    pub event: Option<Arc<str>>,
    /// The payload as JSON text, kept raw so it is never re-parsed.
    pub data: Bytes,
    /// Wall-clock publish time in milliseconds since the Unix epoch. What
    /// sequences the message (the hub, or a broker that keeps offsets)
    /// sets it again when it assigns the offset, by [`next_publish_time`]:
    /// within a channel it grows with the offset and never repeats.
    pub time_ms: u64,
}

impl Publication {
    /// A publication of `data` (JSON text) with a fresh id, stamped now.
    pub fn new(data: Bytes) -> Self {
        let time_ms = now_ms();
        Self {
            id: message_id_at(time_ms),
            event: None,
            data,
            time_ms,
        }
    }
}

/// A fresh, time-ordered, globally unique message id.
pub fn new_message_id() -> Arc<str> {
    message_id_at(now_ms())
}

/// A fresh message id for a message made at `time_ms`: a lowercase
/// hyphenated UUIDv7 whose 12-bit `rand_a` counts the ids this thread made
/// in that millisecond (RFC 9562 §6.2, method 1) and whose 62-bit `rand_b`
/// comes from a randomly seeded generator. Ids of one thread grow in order;
/// those of other threads and nodes differ by `rand_b`. Unlike
/// `Uuid::now_v7`, this takes no lock and reads no clock of its own.
fn message_id_at(time_ms: u64) -> Arc<str> {
    thread_local! {
        /// The last millisecond used, the counter within it, and the
        /// generator's state.
        static IDS: Cell<(u64, u16, u64)> = Cell::new((0, 0, rand::random()));
    }
    let (ms, count, seed) = IDS.with(|ids| {
        let (last, count, seed) = ids.get();
        // A clock stepping back, or more than 4,096 ids in a millisecond,
        // borrows the next millisecond rather than break the order.
        let (ms, count) = match count.checked_add(1) {
            _ if time_ms > last => (time_ms, 0),
            Some(next) if next < 0x1000 => (last, next),
            _ => (last + 1, 0),
        };
        // SplitMix64's step; its output mix follows.
        let seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        ids.set((ms, count, seed));
        (ms, count, seed)
    });
    let mut random = seed;
    random = (random ^ (random >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    random = (random ^ (random >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    random ^= random >> 31;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&((ms << 16) | (0x7000 | u64::from(count))).to_be_bytes());
    bytes[8..].copy_from_slice(&((random >> 2) | (0b10 << 62)).to_be_bytes());
    // Encoded on the stack: one allocation, the `Arc`'s, and no formatter.
    let mut text = uuid::Uuid::encode_buffer();
    Arc::from(
        &*uuid::Uuid::from_bytes(bytes)
            .hyphenated()
            .encode_lower(&mut text),
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A channel's next publish time: `now`, or one millisecond after its
/// previous message's time (`last`) when that is later. Messages keep the
/// order of their offsets even when the wall clock steps back, and a
/// channel publishing faster than once a millisecond runs a little ahead
/// of it. The Redis broker's publish script applies the same rule in
/// Redis' clock.
pub fn next_publish_time(now: u64, last: u64) -> u64 {
    now.max(last + 1)
}

/// A publication placed in a channel: what subscribers receive.
#[derive(Debug)]
pub struct Message {
    /// The channel it was published to.
    pub channel: ChannelKey,
    /// The publication itself.
    pub publication: Publication,
    /// Position in the channel; grows by one per message.
    pub offset: u64,
    /// Names the channel's history generation; changes when history is lost.
    pub epoch: Arc<str>,
    /// When this node accepted it, for the publish-to-fan-out histogram.
    pub accepted_at: Instant,
    /// Its encodings, built on first use.
    encoded: Encodings,
}

/// One encoding per wire format that reads a message. Most messages are read
/// in one format only: that one is kept inline, so a stored message stays a
/// few cache lines; any others go to a table allocated when a second format
/// asks.
#[derive(Debug, Default)]
struct Encodings {
    /// The first format's slot and bytes.
    first: OnceLock<(usize, Bytes)>,
    /// Every other format's bytes, by slot.
    others: OnceLock<Box<[OnceLock<Bytes>; MAX_FORMATS]>>,
}

impl Message {
    pub fn new(
        channel: ChannelKey,
        publication: Publication,
        offset: u64,
        epoch: Arc<str>,
    ) -> Self {
        Self {
            channel,
            publication,
            offset,
            epoch,
            accepted_at: Instant::now(),
            encoded: Encodings::default(),
        }
    }

    /// The bytes of this message in `format`, encoded once and shared afterwards.
    pub fn encoded(&self, format: &dyn Format) -> Bytes {
        let slot = format.slot();
        let (first, bytes) = self
            .encoded
            .first
            .get_or_init(|| (slot, format.encode(self)));
        if *first == slot {
            return bytes.clone();
        }
        self.encoded.others.get_or_init(Box::default)[slot]
            .get_or_init(|| format.encode(self))
            .clone()
    }

    /// The payload as JSON text.
    pub fn data(&self) -> &[u8] {
        &self.publication.data
    }

    /// The payload as the Push seed and push-stream deliver it: a JSON string
    /// payload unquoted, anything else as its JSON text.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let data = &self.publication.data;
        if data.first() == Some(&b'"')
            && let Ok(s) = serde_json::from_slice::<String>(data)
        {
            return std::borrow::Cow::Owned(s);
        }
        String::from_utf8_lossy(data)
    }
}

/// A wire format: how a message looks on one transport and dialect.
///
/// Fan-out encodes a message once per format and hands every subscriber of
/// that format the same bytes.
pub trait Format: Send + Sync + 'static {
    /// This format's cache slot, unique per process and below [`MAX_FORMATS`].
    fn slot(&self) -> usize;
    /// Encodes `msg`; called at most once per message.
    fn encode(&self, msg: &Message) -> Bytes;

    /// Whether queued frames must carry the message itself, for framing
    /// that differs per connection (such as SSE ids that hold a cursor).
    fn wants_message(&self) -> bool {
        false
    }

    /// The frame telling a subscriber that `channel` was deleted, if this
    /// format has one.
    fn deleted(&self, _channel: &ChannelKey) -> Option<Bytes> {
        None
    }

    /// The frame telling a subscriber that a connection of `user` joined or
    /// left `channel`, if this format has one.
    fn presence(
        &self,
        _channel: &ChannelKey,
        _change: PresenceChange,
        _user: &str,
    ) -> Option<Bytes> {
        None
    }
}

/// A wire format for tests: the payload as is.
#[cfg(test)]
pub(crate) struct Raw;

#[cfg(test)]
impl Format for Raw {
    fn slot(&self) -> usize {
        0
    }
    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::copy_from_slice(msg.data())
    }
    fn deleted(&self, channel: &ChannelKey) -> Option<Bytes> {
        Some(Bytes::from(format!("deleted {channel}")))
    }
    fn presence(&self, channel: &ChannelKey, change: PresenceChange, user: &str) -> Option<Bytes> {
        Some(Bytes::from(format!("{} {channel} {user}", change.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Encodes as `<slot>:<data>`, counting its calls.
    struct Counting(usize, AtomicUsize);
    impl Format for Counting {
        fn slot(&self) -> usize {
            self.0
        }
        fn encode(&self, msg: &Message) -> Bytes {
            self.1.fetch_add(1, Ordering::Relaxed);
            let data = String::from_utf8_lossy(msg.data());
            Bytes::from(format!("{}:{data}", self.0))
        }
    }

    #[test]
    fn message_ids_are_lowercase_hyphenated_uuid_v7s_in_time_order() {
        let (a, b) = (new_message_id(), new_message_id());
        for id in [&a, &b] {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(**id, parsed.hyphenated().to_string(), "{id}");
        }
        assert!(a < b, "{a} then {b}");
    }

    #[test]
    fn message_ids_stay_unique_and_ordered_past_4096_a_millisecond_and_a_clock_step_back() {
        let t = now_ms();
        let mut ids: Vec<Arc<str>> = (0..10_000).map(|_| message_id_at(t)).collect();
        ids.push(message_id_at(t - 5_000));
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        let ms = |id: &str| {
            let id = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        };
        assert_eq!(ms(&ids[0]), t);
        // 4,096 ids a millisecond: the 10,000th is two milliseconds on,
        // and the step back stays there.
        assert_eq!(ms(&ids[9_999]), t + 2);
        assert_eq!(ms(&ids[10_000]), t + 2);
    }

    #[test]
    fn message_ids_of_two_threads_differ_in_the_same_millisecond() {
        let t = now_ms();
        let theirs = std::thread::spawn(move || message_id_at(t)).join().unwrap();
        let ours = message_id_at(t);
        assert_ne!(ours, theirs);
        assert_eq!(ours[..18], theirs[..18], "same time and counter");
    }

    #[test]
    fn a_message_stays_small() {
        // Stored messages are many; this catches a regrown encoding cache.
        let size = std::mem::size_of::<Message>();
        assert!(size <= 256, "Message is {size} bytes");
    }

    fn message(data: &str) -> Message {
        let app: Arc<str> = Arc::from("app");
        let key = ChannelKey::new(&app, "c").unwrap();
        Message::new(
            key,
            Publication::new(Bytes::from(data.to_owned())),
            1,
            Arc::from("e"),
        )
    }

    #[test]
    fn encodes_once_per_format() {
        let formats = [3, 0, 7].map(|slot| Counting(slot, AtomicUsize::new(0)));
        let m = message("1");
        for _ in 0..5 {
            for f in &formats {
                assert_eq!(m.encoded(f), Bytes::from(format!("{}:1", f.0)));
            }
        }
        for f in &formats {
            assert_eq!(f.1.load(Ordering::Relaxed), 1, "slot {}", f.0);
        }
    }

    #[test]
    fn text_unquotes_json_strings_only() {
        assert_eq!(message(r#""hi \"x\"""#).text(), r#"hi "x""#);
        assert_eq!(message(r#"{"a":1}"#).text(), r#"{"a":1}"#);
        assert_eq!(message("12").text(), "12");
    }
}
