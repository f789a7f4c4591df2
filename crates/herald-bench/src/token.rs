//! The marker every generated message carries, found without parsing JSON.
//!
//! A token is plain ASCII with no quote or backslash, so it survives every wrapping the servers
//! apply: Herald's envelope (`"data":{...}`), Nchan's raw body and sockudo's JSON-in-a-string.
//! Subscribers search a received frame for `hb` and parse the fields that follow:
//!
//! - `hbm:<run>:<channel>:<seq>:<sent_ns>;` a measured fan-out message,
//! - `hbp:<run>:<channel>;` a warm-up probe,
//! - `hbq:<run>:<receiver>:<id>:<sent_ns>;` a point-to-point (pairs) message.
//!
//! `run` is random per benchmark run, so messages a server buffered from an earlier run
//! (Nchan replays the newest one to new subscribers) are told apart and ignored.

use std::fmt::Write as _;

/// How a payload's own quotes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quoting {
    /// As a JSON object, the form every publish API takes.
    Plain,
    /// As the inside of a JSON string (`\"`), the form Pushca's `message` string takes; the
    /// receiver then gets the plain object.
    Escaped,
}

/// What a subscriber found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Measured {
        run: u32,
        channel: u32,
        seq: u64,
        sent_ns: u64,
    },
    Probe {
        run: u32,
        channel: u32,
    },
    Pair {
        run: u32,
        receiver: u32,
        id: u64,
        sent_ns: u64,
    },
}

impl Token {
    pub(crate) fn run(&self) -> u32 {
        match *self {
            Token::Measured { run, .. } | Token::Probe { run, .. } | Token::Pair { run, .. } => run,
        }
    }

    /// Appends the token's text to `out`.
    fn write(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match *self {
            Token::Measured {
                run,
                channel,
                seq,
                sent_ns,
            } => write!(out, "hbm:{run}:{channel}:{seq}:{sent_ns};"),
            Token::Probe { run, channel } => write!(out, "hbp:{run}:{channel};"),
            Token::Pair {
                run,
                receiver,
                id,
                sent_ns,
            } => write!(out, "hbq:{run}:{receiver}:{id}:{sent_ns};"),
        };
    }

    /// A JSON object carrying the token, padded to about `size` bytes so message size is a parameter.
    pub(crate) fn payload(&self, size: usize) -> String {
        let mut out = String::with_capacity(size.max(64));
        self.write_payload(&mut out, size, Quoting::Plain);
        out
    }

    /// Appends the payload object to `out` (no allocation of its own); `size` is the size of
    /// the plain object whatever the quoting.
    pub(crate) fn write_payload(&self, out: &mut String, size: usize, quoting: Quoting) {
        let q = match quoting {
            Quoting::Plain => "\"",
            Quoting::Escaped => "\\\"",
        };
        let _ = write!(out, "{{{q}x{q}:{q}");
        let token_start = out.len();
        self.write(out);
        let overhead = (out.len() - token_start) + r#"{"x":"","pad":""}"#.len();
        let _ = write!(out, "{q},{q}pad{q}:{q}");
        out.extend(std::iter::repeat_n('p', size.saturating_sub(overhead)));
        let _ = write!(out, "{q}}}");
    }

    /// The first token in `frame`, if any.
    pub(crate) fn find(frame: &[u8]) -> Option<Token> {
        memchr::memmem::find_iter(frame, b"hb").find_map(|at| parse_at(&frame[at + 2..]))
    }
}

/// Parses the part after `hb`.
fn parse_at(s: &[u8]) -> Option<Token> {
    let (&kind, rest) = s.split_first()?;
    let rest = rest.strip_prefix(b":")?;
    let end = memchr::memchr(b';', rest)?;
    let mut fields = rest[..end].split(|b| *b == b':');
    let mut next = || -> Option<u64> { parse_u64(fields.next()?) };
    let token = match kind {
        b'm' => Token::Measured {
            run: u32::try_from(next()?).ok()?,
            channel: u32::try_from(next()?).ok()?,
            seq: next()?,
            sent_ns: next()?,
        },
        b'p' => Token::Probe {
            run: u32::try_from(next()?).ok()?,
            channel: u32::try_from(next()?).ok()?,
        },
        b'q' => Token::Pair {
            run: u32::try_from(next()?).ok()?,
            receiver: u32::try_from(next()?).ok()?,
            id: next()?,
            sent_ns: next()?,
        },
        _ => return None,
    };
    Some(token)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// The monotonic clock in nanoseconds: the clock both the sender and the receiver read. It
/// is the same in every process of the machine, and unlike the wall clock no NTP step moves
/// it during a run.
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_kinds() {
        for t in [
            Token::Measured {
                run: 7,
                channel: 3,
                seq: 99,
                sent_ns: 1_712_000_000_123_456_789,
            },
            Token::Probe { run: 1, channel: 0 },
            Token::Pair {
                run: u32::MAX,
                receiver: 999,
                id: 12345,
                sent_ns: 1,
            },
        ] {
            let payload = t.payload(200);
            assert!(payload.len() >= 200 - 1, "{payload}");
            assert_eq!(Token::find(payload.as_bytes()), Some(t));
        }
    }

    #[test]
    fn found_inside_each_server_wrapping() {
        let t = Token::Measured {
            run: 5,
            channel: 1,
            seq: 2,
            sent_ns: 3,
        };
        let payload = t.payload(0);
        let herald =
            format!(r#"{{"channel":"hb","id":"0190","offset":1,"epoch":"e","data":{payload}}}"#);
        let sockudo = serde_json::json!({"event":"m","channel":"c1","data":payload}).to_string();
        let sse = format!("id: 1\nevent: message\ndata: {herald}");
        for frame in [&payload, &herald, &sockudo, &sse] {
            assert_eq!(Token::find(frame.as_bytes()), Some(t), "{frame}");
        }
    }

    #[test]
    fn escaped_payload_is_the_plain_one_inside_a_json_string() {
        let t = Token::Pair {
            run: 3,
            receiver: 4,
            id: 5,
            sent_ns: 6,
        };
        let mut escaped = String::new();
        t.write_payload(&mut escaped, 80, Quoting::Escaped);
        let inner: String = serde_json::from_str(&format!("\"{escaped}\"")).expect("string");
        assert_eq!(inner, t.payload(80));
        assert_eq!(inner.len(), 80);
        assert_eq!(Token::find(escaped.as_bytes()), Some(t));
    }

    #[test]
    fn junk_is_ignored() {
        for s in [
            "",
            "hb",
            "hbm:",
            "hbm:1:2:3;",
            "hbx:1;",
            "hbp:1:99999999999;",
            "hbm:1:2:3:4",
            r#"{"type":"reconnect"}"#,
        ] {
            assert_eq!(Token::find(s.as_bytes()), None, "{s}");
        }
    }
}
