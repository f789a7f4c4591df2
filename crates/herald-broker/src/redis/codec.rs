//! The wire form of a sequenced message, as published on Redis pub/sub and
//! kept in history streams.
//!
//! A frame is a short text header the Lua script writes, followed by the
//! binary body this node builds before publishing:
//!
//! ```text
//! frame = "H2 " offset " " epoch " " time_ms " " body
//! body  = str16(app) str16(name) str16(id) str16(event) data
//! str16 = u16 big-endian length, then that many bytes
//! ```
//!
//! The script assigns the publish time with the offset, in Redis' clock
//! (see [`script::PUBLISH`](super::script::PUBLISH)). Frames of the
//! previous layout, `"H1 " offset " " epoch " " body` with `u64(time_ms)`
//! between `str16(event)` and `data`, may still sit in history streams and
//! are read too.
//!
//! `event` has length 0 when absent (an empty event name is not meaningful).
//! `data` is the raw JSON text and runs to the end of the frame, so it is
//! never escaped or copied more than once.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{ChannelKey, Message, PresenceChange, Publication};

/// What starts every frame; bump it when the layout changes.
const MAGIC: &[u8] = b"H2 ";

/// What started frames before the script assigned publish times.
const MAGIC_H1: &[u8] = b"H1 ";

/// What starts a channel-deleted notice: `"D1 " str16(app) str16(name)`.
const DELETED: &[u8] = b"D1 ";

/// The notice telling every node that `channel` was deleted.
pub(crate) fn encode_deleted(channel: &ChannelKey) -> Result<Bytes, TooLong> {
    let mut buf = BytesMut::with_capacity(8 + channel.app().len() + channel.name().len());
    buf.put_slice(DELETED);
    put_str16(&mut buf, channel.app(), "app")?;
    put_str16(&mut buf, channel.name(), "channel name")?;
    Ok(buf.freeze())
}

/// The channel a deleted notice names, if `payload` is one.
pub(crate) fn decode_deleted(payload: &[u8]) -> Option<ChannelKey> {
    let mut rest = payload.strip_prefix(DELETED)?;
    let app = take_str16(&mut rest)?;
    let name = take_str16(&mut rest)?;
    ChannelKey::new(&Arc::from(app), &name).ok()
}

/// What starts a presence notice:
/// `"P1 " str16(node) str16(app) str16(name) change str16(user)`, with
/// `change` one byte, `j` or `l`.
const PRESENCE: &[u8] = b"P1 ";

/// A connection joining or leaving a channel, as one node tells the others.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PresenceNotice {
    /// The node that told its own subscribers already.
    pub(crate) node: String,
    /// The channel joined or left.
    pub(crate) channel: ChannelKey,
    /// Whether the connection joined or left.
    pub(crate) change: PresenceChange,
    /// The connection's user, whose presence on the channel changed.
    pub(crate) user: String,
}

/// The notice telling the other nodes that a connection of `user` on `node`
/// joined or left `channel`.
pub(crate) fn encode_presence(
    node: &str,
    channel: &ChannelKey,
    change: PresenceChange,
    user: &str,
) -> Result<Bytes, TooLong> {
    let len = 12 + node.len() + channel.app().len() + channel.name().len() + user.len();
    let mut buf = BytesMut::with_capacity(len);
    buf.put_slice(PRESENCE);
    put_str16(&mut buf, node, "node id")?;
    put_str16(&mut buf, channel.app(), "app")?;
    put_str16(&mut buf, channel.name(), "channel name")?;
    buf.put_u8(match change {
        PresenceChange::Join => b'j',
        PresenceChange::Leave => b'l',
    });
    put_str16(&mut buf, user, "user")?;
    Ok(buf.freeze())
}

/// The presence notice `payload` holds, if it is one.
pub(crate) fn decode_presence(payload: &[u8]) -> Option<PresenceNotice> {
    let mut rest = payload.strip_prefix(PRESENCE)?;
    let node = take_str16(&mut rest)?;
    let app = take_str16(&mut rest)?;
    let name = take_str16(&mut rest)?;
    let (&change, tail) = rest.split_first()?;
    rest = tail;
    let change = match change {
        b'j' => PresenceChange::Join,
        b'l' => PresenceChange::Leave,
        _ => return None,
    };
    let user = take_str16(&mut rest)?;
    Some(PresenceNotice {
        node,
        channel: ChannelKey::new(&Arc::from(app), &name).ok()?,
        change,
        user,
    })
}

/// A presence ledger's field: `str16(app) str16(name) str16(user)`.
pub(crate) fn encode_member(channel: &ChannelKey, user: &str) -> Result<Bytes, TooLong> {
    let mut buf =
        BytesMut::with_capacity(6 + channel.app().len() + channel.name().len() + user.len());
    put_str16(&mut buf, channel.app(), "app")?;
    put_str16(&mut buf, channel.name(), "channel name")?;
    put_str16(&mut buf, user, "user")?;
    Ok(buf.freeze())
}

/// The channel and user a presence ledger's field names.
pub(crate) fn decode_member(mut field: &[u8]) -> Option<(ChannelKey, String)> {
    let app = take_str16(&mut field)?;
    let name = take_str16(&mut field)?;
    let user = take_str16(&mut field)?;
    if !field.is_empty() {
        return None;
    }
    Some((ChannelKey::new(&Arc::from(app), &name).ok()?, user))
}

/// The `str16` at the front of `rest`, which moves past it.
fn take_str16(rest: &mut &[u8]) -> Option<String> {
    let (len, tail) = rest.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    let (s, tail) = (tail.get(..len)?, tail.get(len..)?);
    *rest = tail;
    std::str::from_utf8(s).ok().map(str::to_owned)
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("frame does not start with {MAGIC:?}")]
    Magic,
    #[error("frame is truncated")]
    Truncated,
    #[error("frame field {0} is malformed")]
    Malformed(&'static str),
}

/// Why a publication could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("{0} is longer than 65535 bytes")]
pub(crate) struct TooLong(pub(crate) &'static str);

/// Builds the body of a frame; the script prepends offset, epoch and time.
pub(crate) fn encode_body(channel: &ChannelKey, p: &Publication) -> Result<Bytes, TooLong> {
    let event = p.event.as_deref().unwrap_or("");
    let len = 8 + channel.app().len() + channel.name().len() + p.id.len() + event.len();
    let mut buf = BytesMut::with_capacity(len + p.data.len());
    put_str16(&mut buf, channel.app(), "app")?;
    put_str16(&mut buf, channel.name(), "channel name")?;
    put_str16(&mut buf, &p.id, "message id")?;
    put_str16(&mut buf, event, "event name")?;
    buf.put_slice(&p.data);
    Ok(buf.freeze())
}

fn put_str16(buf: &mut BytesMut, s: &str, what: &'static str) -> Result<(), TooLong> {
    let len = u16::try_from(s.len()).map_err(|_| TooLong(what))?;
    buf.put_u16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

/// Reads a whole frame back into a message. `data` shares `frame`'s memory.
pub(crate) fn decode(frame: Bytes) -> Result<Message, DecodeError> {
    let (rest, h1) = match frame.strip_prefix(MAGIC) {
        Some(rest) => (rest, false),
        None => (
            frame.strip_prefix(MAGIC_H1).ok_or(DecodeError::Magic)?,
            true,
        ),
    };
    let (offset, rest) = split_word(rest)?;
    let (epoch, mut body) = split_word(rest)?;
    let offset = number(offset, "offset")?;
    let epoch: Arc<str> = Arc::from(utf8(epoch, "epoch")?);
    let mut time_ms = 0;
    if !h1 {
        let (time, rest) = split_word(body)?;
        time_ms = number(time, "time")?;
        body = rest;
    }
    let body_start = frame.len() - body.len();

    let mut r = Reader { buf: body, pos: 0 };
    let app: Arc<str> = Arc::from(utf8(r.str16()?, "app")?);
    let name = utf8(r.str16()?, "channel name")?;
    let id: Arc<str> = Arc::from(utf8(r.str16()?, "message id")?);
    let event = utf8(r.str16()?, "event name")?;
    if h1 {
        time_ms = u64::from_be_bytes(r.take(8)?.try_into().expect("took 8 bytes"));
    }
    let data = frame.slice(body_start + r.pos..);

    let channel =
        ChannelKey::new(&app, name).map_err(|_| DecodeError::Malformed("channel name"))?;
    let publication = Publication {
        id,
        event: (!event.is_empty()).then(|| Arc::from(event)),
        data,
        time_ms,
    };
    Ok(Message::new(channel, publication, offset, epoch))
}

/// Splits at the first space.
fn split_word(b: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let i = b
        .iter()
        .position(|&c| c == b' ')
        .ok_or(DecodeError::Truncated)?;
    Ok((&b[..i], &b[i + 1..]))
}

/// A decimal number of the header.
fn number(b: &[u8], what: &'static str) -> Result<u64, DecodeError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(DecodeError::Malformed(what))
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::Malformed(what))
}

/// A cursor over the body.
struct Reader<'a> {
    /// The body being read.
    buf: &'a [u8],
    /// Bytes of `buf` consumed so far.
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn str16(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("took 2 bytes"));
        self.take(len as usize)
    }
}

/// Prepends the header the Lua script writes; used by tests and nowhere on
/// the hot path (the script does this inside Redis).
#[cfg(test)]
pub(crate) fn frame(offset: u64, epoch: &str, time_ms: u64, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_slice(MAGIC);
    buf.put_slice(format!("{offset} {epoch} {time_ms} ").as_bytes());
    buf.put_slice(body);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str, name: &str) -> ChannelKey {
        ChannelKey::new(&Arc::from(app), name).unwrap()
    }

    #[test]
    fn ledger_members_round_trip_and_refuse_anything_else() {
        let channel = key("app:1/x", "room:1");
        let field = encode_member(&channel, "bob\nthe builder").unwrap();
        assert_eq!(
            decode_member(&field),
            Some((channel.clone(), "bob\nthe builder".to_owned()))
        );
        assert_eq!(decode_member(&field[..field.len() - 1]), None);
        assert_eq!(decode_member(&[&field[..], b"x"].concat()), None);
        assert!(encode_member(&channel, &"u".repeat(70_000)).is_err());
    }

    #[test]
    fn notices_round_trip_and_are_told_apart() {
        let channel = key("app", "room:1");
        let deleted = encode_deleted(&channel).unwrap();
        assert_eq!(decode_deleted(&deleted), Some(channel.clone()));
        let joined = encode_presence("node-a", &channel, PresenceChange::Join, "alice").unwrap();
        assert_eq!(
            decode_presence(&joined),
            Some(PresenceNotice {
                node: "node-a".into(),
                channel: channel.clone(),
                change: PresenceChange::Join,
                user: "alice".into(),
            })
        );
        let left = encode_presence("n", &channel, PresenceChange::Leave, "").unwrap();
        assert_eq!(
            decode_presence(&left).unwrap().change,
            PresenceChange::Leave
        );
        assert_eq!(decode_presence(&deleted), None);
        assert_eq!(decode_deleted(&joined), None);
        assert_eq!(decode_presence(&joined[..joined.len() - 1]), None);
        assert!(decode(joined).is_err(), "a notice is not a message");
    }

    #[test]
    fn round_trips_every_field() {
        let mut p = Publication::new(Bytes::from_static(br#"{"a":[1,2]} "#));
        p.event = Some(Arc::from("update"));
        let body = encode_body(&key("tenant", "room:1"), &p).unwrap();
        let m = decode(frame(42, "00ab", 1_700_000_000_123, &body)).unwrap();
        assert_eq!(m.channel, key("tenant", "room:1"));
        assert_eq!(m.offset, 42);
        assert_eq!(&*m.epoch, "00ab");
        assert_eq!(m.publication.id, p.id);
        assert_eq!(m.publication.event.as_deref(), Some("update"));
        assert_eq!(
            m.publication.time_ms, 1_700_000_000_123,
            "the script's time"
        );
        assert_eq!(m.publication.data, p.data);
    }

    #[test]
    fn reads_frames_of_the_previous_layout() {
        // "H1 " offset " " epoch " " body, the time inside the body.
        let mut buf = BytesMut::new();
        buf.put_slice(b"H1 7 e1 ");
        for s in ["a", "b", "id-1", "ev"] {
            put_str16(&mut buf, s, "field").unwrap();
        }
        buf.put_u64(1_600_000_000_001);
        buf.put_slice(b"{\"x\":1}");
        let m = decode(buf.freeze()).unwrap();
        assert_eq!((m.offset, &*m.epoch), (7, "e1"));
        assert_eq!(m.channel, key("a", "b"));
        assert_eq!(&*m.publication.id, "id-1");
        assert_eq!(m.publication.event.as_deref(), Some("ev"));
        assert_eq!(m.publication.time_ms, 1_600_000_000_001);
        assert_eq!(m.data(), b"{\"x\":1}");
    }

    #[test]
    fn absent_event_stays_absent_and_empty_data_is_fine() {
        let p = Publication::new(Bytes::new());
        let body = encode_body(&key("a", "b"), &p).unwrap();
        let m = decode(frame(1, "e", 5, &body)).unwrap();
        assert!(m.publication.event.is_none());
        assert!(m.publication.data.is_empty());
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let p = Publication::new(Bytes::from_static(b"1"));
        let body = encode_body(&key("a", "b"), &p).unwrap();
        let good = frame(7, "e", 5, &body);
        // Every cut into the header or the fixed fields fails (the last byte
        // is the data, which may be empty).
        for cut in 0..good.len() - 1 {
            assert!(decode(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            decode(Bytes::from_static(b"X1 1 e ")),
            Err(DecodeError::Magic)
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"H1 x e ")),
            Err(DecodeError::Malformed("offset"))
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"H2 1 e x ")),
            Err(DecodeError::Malformed("time"))
        ));
    }

    #[test]
    fn refuses_oversized_ids() {
        let mut p = Publication::new(Bytes::new());
        p.id = Arc::from("x".repeat(70_000));
        assert!(encode_body(&key("a", "b"), &p).is_err());
    }
}
