//! Pushca's WebSocket text protocol.
//!
//! Client → server: `<id>@@<COMMAND>@@<json metaData>` or `<id>@@<COMMAND>`,
//! and the legacy `{"command":…,"metaData":…}`. Server → client:
//! `<id>@@ACKNOWLEDGE`, `<id>@@RESPONSE[@@{"body":…,"error":…}]`, messages
//! needing an ack as `<id>@@<body>`, plain messages as the raw body, and
//! `PONG` for the legacy `{"command":"PING"}`.
//!
//! Clients resend a command (same id) when no reply came; the last
//! [`RECENT_COMMANDS`] ids are remembered with their reply, so a resent
//! command is answered again, not executed again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{AckOutcome, Outbox};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    ClientSearchData, PClient, check_id, check_sender_id, client_filter, targeted,
    targeted_with_ack,
};
use crate::config::ConnectionConfig;
use crate::error::ApiError;
use crate::session::Session;
use crate::state::AppState;
use crate::transport::ws::{Reply, WsDialect, close};

/// Command ids remembered per connection for idempotency.
const RECENT_COMMANDS: usize = 256;

/// Commands of Pushca's protocol this server does not implement (channels,
/// binaries, gateways): answered with an error RESPONSE.
const UNSUPPORTED: &[&str] = &[
    "SEND_GATEWAY_REQUEST",
    "SEND_GATEWAY_RESPONSE",
    "SEND_MESSAGE_WITH_PRESERVED_ORDER",
    "SEND_ENVELOPES",
    "SEND_MESSAGE_TO_CHANNEL",
    "SEND_BINARY_MANIFEST",
    "SEND_UPLOAD_BINARY_APPEAL",
    "CREATE_CHANNEL",
    "ADD_MEMBERS_TO_CHANNEL",
    "MARK_CHANNEL_AS_READ",
    "ADD_IMPRESSION",
    "REMOVE_IMPRESSION",
    "GET_IMPRESSION_STAT",
    "GET_CHANNELS",
    "GET_CHANNEL_HISTORY",
    "GET_CHANNELS_PUBLIC_INFO",
    "GET_CHANNEL_MEMBERS",
    "REMOVE_ME_FROM_CHANNEL",
    "REGISTER_FILTER",
    "REMOVE_FILTER",
];

/// Replies already sent per command id.
type Recent = Arc<Mutex<RecentCommands>>;

/// A remembered command's reply, for answering a resend.
#[derive(Debug, Clone, Default, PartialEq)]
enum Answer {
    /// Still running, or finished without a reply: a resend gets nothing.
    #[default]
    Pending,
    /// `<id>@@ACKNOWLEDGE`, the usual reply, rebuilt from the id on a resend
    /// rather than kept as bytes for every command.
    Acknowledged,
    /// Any other reply, as sent.
    Frame(Bytes),
}

impl Answer {
    fn frame(&self, id: &str) -> Option<Bytes> {
        match self {
            Answer::Pending => None,
            Answer::Acknowledged => Some(acknowledge(id)),
            Answer::Frame(b) => Some(b.clone()),
        }
    }
}

/// The last [`RECENT_COMMANDS`] command ids of a connection and their answers,
/// oldest first. Ids are kept as keyed fingerprints, not strings: every
/// connection holds hundreds, and a busy server thousands of connections. A
/// fingerprint and its answer share one `u64` in a ring, so a connection's
/// memory is 2 KiB, scanned in order: a thousand busy connections' rings
/// stay in cache where hash tables of the same ids (~10 KiB each) did not.
/// A false match needs two of one connection's last few hundred ids to
/// collide in 62 bits.
#[derive(Default)]
struct RecentCommands {
    /// `fingerprint | state`, in arrival order from `next` once full.
    ring: Vec<u64>,
    /// Where the next id goes once the ring is full: the oldest.
    next: usize,
    /// The replies kept as bytes ([`FRAME`]): errors and the like, few.
    frames: HashMap<u64, Bytes, BuildHasherDefault<Prehashed>>,
}

/// The low bits of a ring entry: which [`Answer`] the id got.
const STATE: u64 = 0b11;
const PENDING: u64 = 0;
const ACKNOWLEDGED: u64 = 1;
/// The bytes are in `frames`.
const FRAME: u64 = 2;

/// Keys id fingerprints; drawn per process so clients cannot aim collisions.
static FINGERPRINTS: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A command id as the resend memory knows it: hashed once per command, its
/// low bits left free for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64);

impl Fingerprint {
    fn of(id: &str) -> Self {
        Self(FINGERPRINTS.hash_one(id) & !STATE)
    }
}

impl RecentCommands {
    /// The ring slot of `key`, newest first: an answer follows its command.
    fn find(&self, key: u64) -> Option<usize> {
        let is = |e: &u64| e & !STATE == key;
        // Once the ring has wrapped, `..next` holds the newest ids.
        let (newest, oldest) = self.ring.split_at(self.next);
        newest
            .iter()
            .rposition(is)
            .or_else(|| oldest.iter().rposition(is).map(|i| self.next + i))
    }

    fn get(&self, Fingerprint(key): Fingerprint) -> Option<Answer> {
        // Most ids are new: one pass without early exits, which compiles to
        // vector compares, settles that before any search.
        let seen = self
            .ring
            .iter()
            .fold(false, |seen, &e| seen | (e & !STATE == key));
        if !seen {
            return None;
        }
        let entry = self.ring[self.find(key)?];
        Some(match entry & STATE {
            ACKNOWLEDGED => Answer::Acknowledged,
            FRAME => self
                .frames
                .get(&key)
                .map_or(Answer::Pending, |b| Answer::Frame(b.clone())),
            _ => Answer::Pending,
        })
    }

    /// Records the answer of a command `begin` saw first.
    fn answer(&mut self, Fingerprint(key): Fingerprint, answer: Answer) {
        let Some(slot) = self.find(key) else {
            return;
        };
        let state = match answer {
            Answer::Pending => PENDING,
            Answer::Acknowledged => ACKNOWLEDGED,
            Answer::Frame(bytes) => {
                self.frames.insert(key, bytes);
                FRAME
            }
        };
        self.ring[slot] = key | state;
    }

    /// Remembers `id` as running, forgetting the oldest beyond the limit.
    fn insert(&mut self, Fingerprint(key): Fingerprint) {
        if self.ring.len() < RECENT_COMMANDS {
            self.ring.push(key | PENDING);
            return;
        }
        let oldest = std::mem::replace(&mut self.ring[self.next], key | PENDING);
        if oldest & STATE == FRAME {
            self.frames.remove(&(oldest & !STATE));
        }
        self.next = (self.next + 1) % RECENT_COMMANDS;
    }
}

/// Hashes a fingerprint, already uniformly spread, to itself.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One Pushca WebSocket connection.
pub(crate) struct PushcaWs {
    /// The client its token names; REFRESH_TOKEN reissues for it.
    client: PClient,
    /// Whether the client answered since the last ping.
    alive: bool,
    /// Recent command ids and their replies.
    recent: Recent,
    /// Heartbeats as configured; the lifetime is `pushca.connection_lifetime`.
    timing: ConnectionConfig,
}

/// A parsed client frame.
#[derive(Debug)]
pub(crate) struct Command<'a> {
    /// The command id; empty for legacy frames without one.
    pub(crate) id: &'a str,
    /// The command name, e.g. `SEND_MESSAGE`.
    pub(crate) name: Cow<'a, str>,
    /// The metaData JSON text, if any. Decoded once, straight into the
    /// command's type, which is also where malformed JSON is caught.
    pub(crate) meta: Option<&'a str>,
    /// Came in the legacy JSON form.
    pub(crate) legacy: bool,
}

/// Parses one text frame; `Err` carries the best id found and the reason.
pub(crate) fn parse(text: &str) -> Result<Command<'_>, (&str, String)> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Legacy<'a> {
            #[serde(borrow)]
            command: Cow<'a, str>,
            #[serde(borrow)]
            meta_data: Option<&'a RawValue>,
        }
        let l: Legacy<'_> =
            serde_json::from_str(trimmed).map_err(|e| ("", format!("malformed command: {e}")))?;
        return Ok(Command {
            id: "",
            name: l.command,
            meta: l.meta_data.map(RawValue::get).filter(|m| *m != "null"),
            legacy: true,
        });
    }
    let mut parts = text.splitn(3, "@@");
    let (Some(id), Some(name)) = (parts.next(), parts.next()) else {
        return Err((
            "",
            "malformed command: expected <id>@@<COMMAND>[@@<json>]".into(),
        ));
    };
    if id.is_empty() || name.is_empty() || super::check_id(id).is_err() {
        return Err(("", "malformed command: bad id or command name".into()));
    }
    Ok(Command {
        id,
        name: Cow::Borrowed(name),
        meta: parts.next().filter(|json| !json.is_empty()),
        legacy: false,
    })
}

/// `<id>@@ACKNOWLEDGE`.
fn acknowledge(id: &str) -> Bytes {
    const SUFFIX: &[u8] = b"@@ACKNOWLEDGE";
    // Exactly sized: a `Vec` with spare capacity would cost `Bytes` a second allocation.
    let mut v = Vec::with_capacity(id.len() + SUFFIX.len());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(SUFFIX);
    Bytes::from(v)
}

/// `<id>@@RESPONSE@@{"body":…,"error":…}`.
fn response(id: &str, body: Value, error: Option<&str>) -> Bytes {
    let json = serde_json::json!({"body": body, "error": error});
    Bytes::from(format!("{id}@@RESPONSE@@{json}"))
}

fn error(id: &str, message: &str) -> Bytes {
    response(id, Value::Null, Some(message))
}

// `sender` and `preserveOrder` are accepted and ignored: receivers get only
// the message (see `docs/targeting.md`), and one node delivers in order.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendMessage<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    filter: Option<ClientSearchData>,
    #[serde(borrow)]
    message: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendWithAck<'a> {
    id: Option<String>,
    client: PClient,
    #[serde(borrow)]
    message: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ack {
    message_id: String,
}

fn decode<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| format!("malformed metaData: {e}"))
}

/// What running a command produced.
enum Outcome {
    /// Reply now with `<id>@@ACKNOWLEDGE`.
    Ack,
    /// Reply now with this frame (or nothing).
    Now(Option<Bytes>),
    /// A task replies later, through the outbox.
    Later,
}

impl PushcaWs {
    pub(crate) fn new(client: PClient, state: &AppState) -> Self {
        let lifetime = state.config.pushca.connection_lifetime;
        Self {
            client,
            alive: true,
            recent: Arc::default(),
            timing: ConnectionConfig {
                lifetime_min: lifetime,
                lifetime_max: lifetime,
                close_grace: Duration::ZERO,
                ..state.config.connection.clone()
            },
        }
    }

    /// Records `id` as running; returns the earlier answer when it is a resend.
    fn begin(&self, id: Fingerprint) -> Option<Answer> {
        let mut recent = self.recent.lock();
        if let Some(answer) = recent.get(id) {
            return Some(answer);
        }
        recent.insert(id);
        None
    }

    async fn run(&self, session: &Session, cmd: &Command<'_>) -> Result<Outcome, String> {
        let state = &session.state;
        let meta = || {
            cmd.meta
                .ok_or_else(|| format!("{} needs metaData", cmd.name))
        };
        match &*cmd.name {
            "PING" => Ok(Outcome::Now(Some(Bytes::from(format!(
                "{}@@RESPONSE",
                cmd.id
            ))))),
            "REFRESH_TOKEN" => {
                let token = state.pushca.tokens.issue(&self.client);
                Ok(Outcome::Now(Some(response(
                    cmd.id,
                    Value::String(token),
                    None,
                ))))
            }
            "ACKNOWLEDGE" => {
                let ack: Ack = decode(meta()?)?;
                let acked = state
                    .engine
                    .acknowledge(session.outbox.id(), &ack.message_id)
                    .await
                    .map_err(|e| ApiError::from(e).message)?;
                tracing::debug!(conn = session.outbox.id(), message = %ack.message_id, acked, "Acked.");
                Ok(Outcome::Ack)
            }
            "SEND_MESSAGE" => {
                let m: SendMessage = decode(meta()?)?;
                let filter = m.filter.ok_or("SEND_MESSAGE needs a filter")?.filter();
                // A client's filter naming no dimension would reach every
                // identified connection on the server, other apps' and
                // Herald's own users' too; a back end may (REST).
                if filter.dims.is_empty() {
                    return Err(
                        "a client's filter must name workSpaceId, accountId, deviceId or applicationId"
                            .into(),
                    );
                }
                check_sender_id(m.id.as_deref())?;
                let out = state
                    .engine
                    .send(&filter, targeted(m.message))
                    .await
                    .map_err(|e| ApiError::from(e).message)?;
                tracing::debug!(
                    conn = session.outbox.id(),
                    delivered = out.delivered,
                    "Pushca message sent."
                );
                Ok(Outcome::Ack)
            }
            "SEND_MESSAGE_WITH_ACKNOWLEDGE" => {
                let m: SendWithAck = decode(meta()?)?;
                // The sender is answered under its metaData.id, else the
                // command id; a legacy frame may have neither, and is then
                // answered under the message's own id, as Pushca does.
                let given = [m.id.as_deref(), Some(cmd.id)]
                    .into_iter()
                    .flatten()
                    .find(|s| !s.is_empty());
                // Refusals too: the sender waits on that id, not the command's.
                let refuse = |why: String| match given {
                    Some(id) if check_id(id).is_ok() => Ok(Outcome::Now(Some(error(id, &why)))),
                    _ => Err(why),
                };
                if !m.client.is_complete() {
                    return refuse("'client' needs all four fields".into());
                }
                let msg = match targeted_with_ack(m.message) {
                    Ok(msg) => msg,
                    Err(why) => return refuse(why),
                };
                let reply_id = given.unwrap_or(&msg.id);
                check_id(reply_id)?;
                spawn_acked(
                    state.clone(),
                    session.outbox.clone(),
                    self.recent.clone(),
                    cmd.id.to_owned(),
                    reply_id.to_owned(),
                    client_filter(&m.client),
                    msg,
                );
                Ok(Outcome::Later)
            }
            name if UNSUPPORTED.contains(&name) => Err(format!("command {name} is not supported")),
            name => Err(format!("unknown command {name:?}")),
        }
    }
}

/// Waits for the receiver's ack off the connection's task, then queues the
/// sender's reply: `<reply_id>@@ACKNOWLEDGE`, or an error RESPONSE. The reply
/// is recorded under command `cmd_id`, so that a resend gets the very same
/// frame.
fn spawn_acked(
    state: AppState,
    outbox: Arc<Outbox>,
    recent: Recent,
    cmd_id: String,
    reply_id: String,
    filter: herald_core::Filter,
    msg: herald_core::Targeted,
) {
    tokio::spawn(async move {
        let policy = super::http::ack_policy(&state);
        let answer = match state.engine.send_acked(&filter, msg, policy).await {
            // Rebuilt from the command id on a resend: only when it is the
            // message id (as Java clients send) can it be kept that small.
            Ok(AckOutcome::Acked { .. }) if reply_id == cmd_id => Answer::Acknowledged,
            Ok(AckOutcome::Acked { .. }) => Answer::Frame(acknowledge(&reply_id)),
            Ok(AckOutcome::NotConnected) => {
                Answer::Frame(error(&reply_id, "client is not connected"))
            }
            // Not expected, every send having its own message id; still
            // answered: the sender must not wait for a reply never coming.
            Ok(AckOutcome::InFlight) => Answer::Frame(error(
                &reply_id,
                "a send with this id is still waiting for its acknowledge",
            )),
            Ok(AckOutcome::TimedOut { .. }) => {
                Answer::Frame(error(&reply_id, "acknowledge timeout"))
            }
            Err(e) => Answer::Frame(error(&reply_id, &ApiError::from(e).message)),
        };
        let reply = answer.frame(&reply_id);
        recent.lock().answer(Fingerprint::of(&cmd_id), answer);
        outbox.push(reply.expect("an acked send always answers"));
    });
}

impl WsDialect for PushcaWs {
    fn heartbeat(&mut self) -> Result<Option<Bytes>, (u16, &'static str)> {
        if !std::mem::replace(&mut self.alive, false) {
            return Err((close::PING_TIMEOUT, "no pong to the last ping"));
        }
        Ok(None)
    }

    fn on_activity(&mut self) {
        self.alive = true;
    }

    fn reconnect_hint(&self) -> Option<Bytes> {
        None
    }

    fn timing(&self) -> Option<ConnectionConfig> {
        Some(self.timing.clone())
    }

    async fn on_text(&mut self, session: &mut Session, text: &str) -> Reply {
        let cmd = match parse(text) {
            Ok(cmd) => cmd,
            Err((id, why)) => return Reply::frame(error(id, &why)),
        };
        if cmd.legacy && cmd.name == "PING" {
            return Reply::frame(Bytes::from_static(b"PONG"));
        }
        // Legacy commands carry no id, and are never resends.
        let key = (!cmd.id.is_empty()).then(|| Fingerprint::of(cmd.id));
        if let Some(key) = key
            && let Some(earlier) = self.begin(key)
        {
            return earlier.frame(cmd.id).map(Reply::frame).unwrap_or_default();
        }
        let answer = match self.run(session, &cmd).await {
            Ok(Outcome::Ack) => Answer::Acknowledged,
            Ok(Outcome::Now(reply)) => reply.map_or(Answer::Pending, Answer::Frame),
            Ok(Outcome::Later) => return Reply::default(),
            Err(why) => Answer::Frame(error(cmd.id, &why)),
        };
        let reply = answer.frame(cmd.id);
        if let Some(key) = key {
            self.recent.lock().answer(key, answer);
        }
        // Legacy commands carry no id to answer to; only errors are reported,
        // and answers addressed to an id of their own (a refused send with
        // acknowledge, to the message's id).
        match reply {
            Some(r)
                if !cmd.id.is_empty()
                    || !r.starts_with(b"@@")
                    || r.starts_with(b"@@RESPONSE@@") =>
            {
                Reply::frame(r)
            }
            _ => Reply::default(),
        }
    }

    fn on_binary(&mut self, _session: &mut Session, _data: &[u8]) -> Reply {
        Reply::frame(error("", "binary frames are not supported"))
    }
}

/// The browser sign-in socket: one OpenConnectionResponse frame, then close.
pub(crate) struct SignIn {
    /// The OpenConnectionResponse JSON.
    reply: Option<String>,
}

impl SignIn {
    pub(crate) fn new(reply: String) -> Self {
        Self { reply: Some(reply) }
    }
}

impl WsDialect for SignIn {
    fn greeting(&mut self) -> Reply {
        let mut reply = Reply::close(1000, "");
        reply.frames.extend(self.reply.take().map(Bytes::from));
        reply
    }

    fn heartbeat(&mut self) -> Result<Option<Bytes>, (u16, &'static str)> {
        Ok(None)
    }

    fn reconnect_hint(&self) -> Option<Bytes> {
        None
    }

    async fn on_text(&mut self, _session: &mut Session, _text: &str) -> Reply {
        Reply::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_commands_forget_the_oldest_first() {
        let mut recent = RecentCommands::default();
        let id = |i: usize| Fingerprint::of(&i.to_string());
        for i in 0..=RECENT_COMMANDS {
            recent.insert(id(i));
        }
        assert!(recent.get(id(0)).is_none());
        assert!(recent.get(id(1)).is_some());
        assert!(recent.get(id(RECENT_COMMANDS)).is_some());
        assert_eq!(recent.ring.len(), RECENT_COMMANDS);
    }

    #[test]
    fn recent_commands_answer_the_right_id_after_the_ring_wraps() {
        let mut recent = RecentCommands::default();
        let id = |i: usize| Fingerprint::of(&i.to_string());
        for i in 0..RECENT_COMMANDS + 44 {
            recent.insert(id(i));
        }
        recent.answer(id(RECENT_COMMANDS + 43), Answer::Acknowledged);
        recent.answer(id(50), Answer::Acknowledged);
        // Forgotten: its answer is dropped, not written over another id.
        recent.answer(id(10), Answer::Acknowledged);
        assert_eq!(
            recent.get(id(RECENT_COMMANDS + 43)),
            Some(Answer::Acknowledged)
        );
        assert_eq!(recent.get(id(50)), Some(Answer::Acknowledged));
        assert_eq!(recent.get(id(51)), Some(Answer::Pending));
        assert_eq!(recent.get(id(10)), None);
        let acked = recent.ring.iter().filter(|&&e| e & STATE == ACKNOWLEDGED);
        assert_eq!(acked.count(), 2);
    }

    #[test]
    fn recent_commands_keep_frame_replies_until_forgotten() {
        let mut recent = RecentCommands::default();
        let (e, a) = (Fingerprint::of("e"), Fingerprint::of("a"));
        recent.insert(e);
        recent.answer(e, Answer::Frame(Bytes::from_static(b"e@@RESPONSE")));
        recent.insert(a);
        recent.answer(a, Answer::Acknowledged);
        assert_eq!(
            recent.get(e),
            Some(Answer::Frame(Bytes::from_static(b"e@@RESPONSE")))
        );
        assert_eq!(recent.get(a), Some(Answer::Acknowledged));
        for i in 0..RECENT_COMMANDS {
            recent.insert(Fingerprint::of(&i.to_string()));
        }
        assert_eq!(recent.get(e), None);
        assert!(recent.frames.is_empty(), "forgotten with its id");
    }

    #[test]
    fn parses_both_forms() {
        let c = parse(r#"id1@@SEND_MESSAGE@@{"message":"a@@b"}"#).unwrap();
        assert_eq!((c.id, &*c.name, c.legacy), ("id1", "SEND_MESSAGE", false));
        let meta = |c: &Command<'_>| -> Value { serde_json::from_str(c.meta.unwrap()).unwrap() };
        assert_eq!(meta(&c)["message"], "a@@b");
        let c = parse("id2@@PING").unwrap();
        assert_eq!((c.id, c.meta.is_none()), ("id2", true));
        let c = parse(r#"{"command":"ACKNOWLEDGE","metaData":{"messageId":"m"}}"#).unwrap();
        assert!(c.legacy);
        assert_eq!(meta(&c)["messageId"], "m");
    }

    #[test]
    fn malformed_frames_are_errors_with_the_best_id() {
        assert_eq!(parse("hello").unwrap_err().0, "");
        assert_eq!(parse("@@PING").unwrap_err().0, "");
        // Malformed metaData is caught where it is decoded, under the command's id.
        let c = parse("x@@SEND_MESSAGE@@{oops").unwrap();
        assert_eq!(c.id, "x");
        let err = decode::<SendMessage>(c.meta.unwrap()).err().unwrap();
        assert!(err.starts_with("malformed metaData"), "{err}");
        assert!(parse("{not json").is_err());
    }
}
