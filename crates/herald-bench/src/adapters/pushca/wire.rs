//! Pushca's WebSocket text protocol, as the pairs scenario speaks it.
//!
//! A sender writes `<id>@@SEND_MESSAGE@@{"id","filter","sender","message"}` (or
//! `SEND_MESSAGE_WITH_ACKNOWLEDGE` with `client`) and is answered `<id>@@ACKNOWLEDGE`, or
//! `<id>@@RESPONSE@@{"body":null,"error":…}`. A receiver gets the raw body, or `<id>@@<body>`
//! when it must answer `<cmd>@@ACKNOWLEDGE@@{"messageId":"<id>"}`.

use std::fmt::{Display, Write as _};

use super::{write_client, write_message};
use crate::token::Token;

/// A sender's command id, which is also the message id. It is shaped like a UUID
/// (8-4-4-4-12 hex digits, as Pushca clients send) and carries what the sender needs back from
/// the bare `<id>@@ACKNOWLEDGE`, so no per-message state is kept: the send time (64 bits over
/// the first three groups), the worker (16 bits: ids are unique across worker processes, as
/// the server's in-flight acknowledgements are keyed by id) and the message number (48 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsgId {
    /// Unix nanoseconds when the message was sent (the token's `sent_ns`).
    pub(crate) sent_ns: u64,
    /// The generator worker that sent it (low 16 bits).
    pub(crate) worker: u16,
    /// The pairs message number (low 48 bits).
    pub(crate) id: u64,
}

/// Length of a [`MsgId`] in text.
const ID_LEN: usize = 36;
/// Message numbers are written in 12 hex digits.
const ID_MASK: u64 = (1 << 48) - 1;
/// Prefix of a receiver's ACKNOWLEDGE command id (followed by the message id): never a
/// [`MsgId`], so the server's reply to it is not taken for a sender's acknowledgement.
const RECEIVER_ACK_PREFIX: char = 'r';

impl Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.sent_ns;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            t >> 32,
            (t >> 16) & 0xffff,
            t & 0xffff,
            self.worker,
            self.id & ID_MASK
        )
    }
}

impl MsgId {
    /// Reads an id written by [`Display`]; `None` for anything else.
    pub(crate) fn parse(text: &[u8]) -> Option<MsgId> {
        if text.len() != ID_LEN {
            return None;
        }
        let mut digits: u128 = 0;
        for (i, &b) in text.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b != b'-' {
                    return None;
                }
                continue;
            }
            let d = char::from(b).to_digit(16)?;
            digits = (digits << 4) | u128::from(d);
        }
        // 128 bits: send time (64) | worker (16) | message number (48).
        Some(MsgId {
            sent_ns: (digits >> 64) as u64,
            worker: ((digits >> 48) & 0xffff) as u16,
            id: (digits as u64) & ID_MASK,
        })
    }
}

/// One pairs message from client `from` to client `to` (channel names), over the sender's
/// WebSocket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendFrame<'a, N: Display> {
    /// Command and message id: the server's acknowledgement or error reply echoes it.
    pub(crate) id: MsgId,
    /// The sending client, written as the message's `sender`.
    pub(crate) from: &'a N,
    /// The receiving client, written as the `filter` (the `client`, with acknowledge).
    pub(crate) to: &'a N,
    /// The token the message body carries.
    pub(crate) token: Token,
    /// Size of the message body (a JSON object).
    pub(crate) size: usize,
    /// `SEND_MESSAGE_WITH_ACKNOWLEDGE` (the receiver must acknowledge) instead of `SEND_MESSAGE`.
    pub(crate) ack: bool,
}

impl<N: Display> SendFrame<'_, N> {
    /// The command frame, built in one allocation.
    pub(crate) fn frame(&self) -> String {
        let mut out = String::with_capacity(self.size + 320);
        let (command, target) = if self.ack {
            ("SEND_MESSAGE_WITH_ACKNOWLEDGE", "client")
        } else {
            ("SEND_MESSAGE", "filter")
        };
        let id = self.id;
        let _ = write!(out, r#"{id}@@{command}@@{{"id":"{id}","{target}":"#);
        write_client(&mut out, self.to);
        out.push_str(r#","sender":"#);
        write_client(&mut out, self.from);
        out.push_str(r#","message":""#);
        write_message(&mut out, &self.token, self.size);
        out.push_str("\"}");
        out
    }
}

/// Appends a receiver's `ACKNOWLEDGE` of message `message_id` to `out`.
pub(crate) fn write_receiver_ack(out: &mut String, message_id: &[u8]) {
    let id = String::from_utf8_lossy(message_id);
    let _ = write!(
        out,
        r#"{RECEIVER_ACK_PREFIX}{id}@@ACKNOWLEDGE@@{{"messageId":"{id}"}}"#
    );
}

/// What a frame from the server means to the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// `<id>@@ACKNOWLEDGE` answering one of this generator's sends.
    SendAcked(MsgId),
    /// `<id>@@RESPONSE@@{…"error":"…"}` answering a send: refused, not connected, or (with
    /// acknowledge) not acknowledged in time.
    SendFailed,
    /// `<id>@@<body>`: a message to acknowledge (its body follows the id).
    NeedsAck(&'a [u8]),
    /// A raw message body, or a frame to ignore: `PONG`, `<id>@@RESPONSE` (to a PING) and the
    /// replies to the receiver's own acknowledgements.
    Other,
}

/// Classifies one text frame.
pub(crate) fn classify(frame: &[u8]) -> Incoming<'_> {
    let Some(at) = memchr::memmem::find(frame, b"@@") else {
        return Incoming::Other;
    };
    let (id, rest) = (&frame[..at], &frame[at + 2..]);
    let from_receiver_ack = id.first() == Some(&(RECEIVER_ACK_PREFIX as u8));
    if rest == b"ACKNOWLEDGE" {
        return MsgId::parse(id).map_or(Incoming::Other, Incoming::SendAcked);
    }
    if rest.starts_with(b"RESPONSE") {
        // Unreadable commands are answered with an empty id: they can only be sends here.
        let failed = !from_receiver_ack && memchr::memmem::find(rest, b"\"error\":\"").is_some();
        return if failed {
            Incoming::SendFailed
        } else {
            Incoming::Other
        };
    }
    if id.is_empty() {
        return Incoming::Other;
    }
    Incoming::NeedsAck(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> MsgId {
        MsgId {
            sent_ns: 1_765_432_109_876_543_210,
            worker: 3,
            id: 123_456,
        }
    }

    #[test]
    fn ids_round_trip_and_look_like_uuids() {
        let text = id().to_string();
        assert_eq!(text.len(), ID_LEN);
        let dashes: Vec<usize> = text.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert_eq!(MsgId::parse(text.as_bytes()), Some(id()));
        assert_eq!(MsgId::parse(format!("r{text}").as_bytes()), None);
        assert_eq!(MsgId::parse(text.replace('-', "x").as_bytes()), None);
    }

    #[test]
    fn send_frames_parse_as_pushca_commands() {
        let token = Token::Pair {
            run: 1,
            receiver: 7,
            id: 123_456,
            sent_ns: id().sent_ns,
        };
        for ack in [false, true] {
            let send = SendFrame {
                id: id(),
                from: &"c2",
                to: &"c7",
                token,
                size: 64,
                ack,
            };
            let frame = send.frame();
            let mut parts = frame.splitn(3, "@@");
            assert_eq!(parts.next(), Some(id().to_string().as_str()));
            let command = parts.next().expect("command");
            let meta: serde_json::Value =
                serde_json::from_str(parts.next().expect("metaData")).expect("json");
            assert_eq!(meta["id"], id().to_string());
            assert_eq!(meta["sender"]["accountId"], "a-c2");
            let target = if ack {
                assert_eq!(command, "SEND_MESSAGE_WITH_ACKNOWLEDGE");
                &meta["client"]
            } else {
                assert_eq!(command, "SEND_MESSAGE");
                &meta["filter"]
            };
            assert_eq!(target["deviceId"], "d-c7");
            let body = meta["message"].as_str().expect("a string message");
            assert_eq!(body.len(), 64);
            assert_eq!(Token::find(body.as_bytes()), Some(token));
        }
    }

    #[test]
    fn frames_are_told_apart() {
        let text = id().to_string();
        let acked = format!("{text}@@ACKNOWLEDGE");
        assert_eq!(classify(acked.as_bytes()), Incoming::SendAcked(id()));
        let failed = format!(r#"{text}@@RESPONSE@@{{"body":null,"error":"acknowledge timeout"}}"#);
        assert_eq!(classify(failed.as_bytes()), Incoming::SendFailed);
        let unreadable = r#"@@RESPONSE@@{"body":null,"error":"malformed command"}"#;
        assert_eq!(classify(unreadable.as_bytes()), Incoming::SendFailed);
        let body = format!(r#"{text}@@{{"x":"hbq:1:2:3:4;"}}"#);
        assert_eq!(
            classify(body.as_bytes()),
            Incoming::NeedsAck(text.as_bytes())
        );
        let mut reply = String::new();
        write_receiver_ack(&mut reply, text.as_bytes());
        assert_eq!(
            reply,
            format!(r#"r{text}@@ACKNOWLEDGE@@{{"messageId":"{text}"}}"#)
        );
        // Replies to the receiver's own commands, to PINGs, raw bodies and PONG are ignored.
        for other in [
            format!("r{text}@@ACKNOWLEDGE"),
            format!(r#"r{text}@@RESPONSE@@{{"body":null,"error":"x"}}"#),
            "p1@@RESPONSE".to_owned(),
            r#"p1@@RESPONSE@@{"body":"t","error":null}"#.to_owned(),
            r#"{"x":"hbq:1:2:3:4;"}"#.to_owned(),
            "PONG".to_owned(),
        ] {
            assert_eq!(classify(other.as_bytes()), Incoming::Other, "{other}");
        }
    }
}
