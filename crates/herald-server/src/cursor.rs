//! A client's position in several channels, as one string:
//! `news:4f1c2a9e:7,chat:0b33d2f1:12` (channel, epoch, last offset).
//! Used as the SSE event id (so `Last-Event-ID` resumes every channel of a
//! stream) and as the `since` of polling.

use std::fmt::{self, Write};
use std::sync::Arc;

use herald_core::{ChannelKey, Message, Position, Subscribed};

/// Positions per channel name, in subscription order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Each channel's name and the last epoch and offset the client has, in subscription order.
    entries: Vec<(Arc<str>, Position)>,
}

impl Cursor {
    /// Parses `a:epoch:offset,b:epoch:offset`. Channel names may contain `:`,
    /// so each entry is split from the right.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let bad = || format!("bad cursor entry {part:?}: expected channel:epoch:offset");
            let (rest, offset) = part.rsplit_once(':').ok_or_else(bad)?;
            let (channel, epoch) = rest.rsplit_once(':').ok_or_else(bad)?;
            let offset = offset.parse().map_err(|_| bad())?;
            if channel.is_empty() {
                return Err(bad());
            }
            entries.push((
                Arc::from(channel),
                Position {
                    offset,
                    epoch: Arc::from(epoch),
                },
            ));
        }
        Ok(Self { entries })
    }

    /// The position recorded for `channel`.
    pub(crate) fn get(&self, channel: &str) -> Option<&Position> {
        self.entries
            .iter()
            .find(|(c, _)| &**c == channel)
            .map(|(_, p)| p)
    }

    /// Records where a subscribe left `channel`: before the messages it
    /// queued (the newest, up to the channel's position), which advance
    /// the cursor as they go out. Recording the channel's position instead
    /// would let an id sent before them claim them sent.
    pub(crate) fn set_subscribed(&mut self, channel: &ChannelKey, subscribed: &Subscribed) {
        let head = &subscribed.position;
        let position = Position {
            offset: head.offset.saturating_sub(subscribed.replayed as u64),
            epoch: head.epoch.clone(),
        };
        self.set(channel, position);
    }

    /// Records `position` for `channel`.
    pub(crate) fn set(&mut self, channel: &ChannelKey, position: Position) {
        match self
            .entries
            .iter_mut()
            .find(|(c, _)| &**c == channel.name())
        {
            Some((_, p)) => *p = position,
            None => self.entries.push((Arc::from(channel.name()), position)),
        }
    }

    /// Advances past `msg`; what it replaced lets [`Cursor::undo`] step back.
    pub(crate) fn advance(&mut self, msg: &Message) -> Undo {
        let position = Position {
            offset: msg.offset,
            epoch: msg.epoch.clone(),
        };
        let channel = msg.channel.name();
        match self.entries.iter().position(|(c, _)| &**c == channel) {
            Some(i) => Undo::Moved(i, std::mem::replace(&mut self.entries[i].1, position)),
            None => {
                self.entries.push((Arc::from(channel), position));
                Undo::Added
            }
        }
    }

    /// Steps back over the latest [`Cursor::advance`] not yet undone.
    pub(crate) fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Moved(i, position) => self.entries[i].1 = position,
            Undo::Added => {
                self.entries.pop();
            }
        }
    }
}

/// What one [`Cursor::advance`] replaced.
pub(crate) enum Undo {
    /// The entry at this index had this position.
    Moved(usize, Position),
    /// A new entry was added at the end.
    Added,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (channel, p)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{channel}:{}:{}", p.epoch, p.offset)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_splits_from_the_right() {
        let c = Cursor::parse("news:ab12:7,user:42:ff00:3").unwrap();
        assert_eq!(c.get("user:42").unwrap().offset, 3);
        assert_eq!(&*c.get("news").unwrap().epoch, "ab12");
        assert_eq!(c.to_string(), "news:ab12:7,user:42:ff00:3");
        assert!(Cursor::parse("news:7").is_err());
        assert!(Cursor::parse("news:e:x").is_err());
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
    }

    #[test]
    fn undo_steps_back_in_reverse_order() {
        let msg = |channel: &str, offset| {
            let key = ChannelKey::new(&Arc::from("app"), channel).unwrap();
            let publication = herald_core::Publication::new(bytes::Bytes::from_static(b"1"));
            Message::new(key, publication, offset, Arc::from("e"))
        };
        let mut c = Cursor::parse("a:e:1").unwrap();
        let steps = [
            c.advance(&msg("a", 2)),
            c.advance(&msg("b", 5)),
            c.advance(&msg("a", 3)),
        ];
        assert_eq!(c.to_string(), "a:e:3,b:e:5");
        let mut steps = Vec::from(steps);
        c.undo(steps.pop().unwrap());
        assert_eq!(c.to_string(), "a:e:2,b:e:5");
        c.undo(steps.pop().unwrap());
        c.undo(steps.pop().unwrap());
        assert_eq!(c.to_string(), "a:e:1");
    }
}
