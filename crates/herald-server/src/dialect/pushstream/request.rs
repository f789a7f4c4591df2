//! What a subscriber asks for: channels (with `.bN` backtracks), resume
//! markers, and their validation, with the module's error texts.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use herald_core::channel::MAX_CHANNEL_NAME_LEN;
use herald_core::history::History;
use herald_core::{ChannelKey, Replay};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::PsState;
use super::events::{self, Presence};
use super::marker::{Marker, Since, parse_http_date, parse_tag};
use crate::session::Session;

pub(crate) const NO_CHANNEL_ID: &str = "No channel id provided.";
pub(crate) const NOT_AUTHORIZED: &str = "Channel id not authorized for this method.";
pub(crate) const TOO_LARGE: &str = "Channel id is too large.";
const TOO_MUCH_WILDCARD: &str = "Subscribed too much wildcard channels.";
const CANNOT_CREATE: &str = "Subscriber could not create channels.";
const EVENTS_FORBIDDEN: &str = "Subscription to events channel is not allowed.";

/// A request the module would refuse: a status and the
/// `X-Nginx-PushStream-Explain` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The status the module answers with.
    pub(crate) status: StatusCode,
    /// Why, as the module words it: sent as `X-Nginx-PushStream-Explain`.
    pub(crate) explain: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, explain: impl Into<String>) -> Self {
        Self {
            status,
            explain: explain.into(),
        }
    }
}

/// One channel id of a path, with its backtrack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requested {
    /// The id as given.
    pub(crate) id: String,
    /// `.bN`: replay the last N stored messages.
    pub(crate) backtrack: usize,
}

/// Splits `a.b3/b/c.b1` into ids and backtracks, like the module's
/// `((\.b([0-9]+))?(/|$))` pattern. Empty segments are skipped.
pub(crate) fn parse_ids(path: &str) -> Vec<Requested> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|seg| match seg.rfind(".b") {
            Some(i)
                if i > 0
                    && seg.len() > i + 2
                    && seg[i + 2..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                Requested {
                    id: seg[..i].to_owned(),
                    backtrack: seg[i + 2..].parse().unwrap_or(usize::MAX),
                }
            }
            _ => Requested {
                id: seg.to_owned(),
                backtrack: 0,
            },
        })
        .collect()
}

/// Decodes `%XX` escapes (the module sees nginx's decoded URI).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks an id for any method: not `ALL`, no `*`, not too long, a valid
/// Herald channel name.
pub(crate) fn channel_key(state: &PsState, id: &str) -> Result<ChannelKey, Refusal> {
    if id == "ALL" || id.contains('*') {
        return Err(Refusal::new(StatusCode::FORBIDDEN, NOT_AUTHORIZED));
    }
    if id.len() > MAX_CHANNEL_NAME_LEN {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, TOO_LARGE));
    }
    state
        .channel(id)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// The query string as nginx's `$arg_…` variables read it: a repeated name
/// is its first value, and nothing is refused here (not UTF-8 once decoded
/// is decoded lossily): each value is checked where it is used, with the
/// module's header-only answers.
pub(crate) struct Args<T>(pub(crate) T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequestParts<S> for Args<T> {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(first_args(parts.uri.query().unwrap_or(""))))
    }
}

/// `query` into `T`, the first of each name's values only.
fn first_args<T: DeserializeOwned + Default>(query: &str) -> T {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let mut first: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if !first.iter().any(|(n, _)| *n == name) {
            first.push((name, value));
        }
    }
    serde_urlencoded::to_string(&first)
        .ok()
        .and_then(|q| serde_urlencoded::from_str(&q).ok())
        .unwrap_or_default()
}

/// The query arguments push-stream subscribers may carry (pushstream.js's
/// `messagesControlByArgument`); empty values count as absent.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ControlArgs {
    /// With `time`: resume after the message with this tag (`If-None-Match`).
    pub(crate) tag: Option<String>,
    /// Resume after this HTTP-date (`If-Modified-Since`).
    pub(crate) time: Option<String>,
    /// Resume after the message with this `Event-Id` (`Last-Event-Id`).
    pub(crate) eventid: Option<String>,
    /// JSONP callback for long-polling and polling: `fn([m1,m2]);`.
    pub(crate) callback: Option<String>,
}

/// A validated subscription request.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// The channels with their backtracks, in request order.
    pub(crate) channels: Vec<(ChannelKey, usize)>,
    /// `If-Modified-Since` + `If-None-Match`, or `time` + `tag`.
    pub(crate) since: Option<Since>,
    /// `If-None-Match` or `tag`, even without a time: it selects nothing
    /// alone, but polling's 304 echoes it as the module does.
    pub(crate) tag: Option<u64>,
    /// `Last-Event-Id`, or `eventid`.
    pub(crate) last_event_id: Option<String>,
}

fn non_empty(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses and validates the channels of `path` and the resume markers.
pub(crate) fn subscription(
    state: &PsState,
    path: &str,
    headers: &HeaderMap,
    args: &ControlArgs,
) -> Result<Subscription, Refusal> {
    let requested = parse_ids(&percent_decode(path));
    if requested.is_empty() {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, NO_CHANNEL_ID));
    }
    // Counted before the work per channel (and the duplicates check, which
    // compares each with those before it).
    let limit = state.app.config.limits.max_channels_per_connection;
    if requested.len() > limit {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("at most {limit} channels per connection"),
        ));
    }
    let cfg = &state.cfg;
    let mut channels = Vec::with_capacity(requested.len());
    let mut wildcards = 0;
    for r in &requested {
        let key = channel_key(state, &r.id)?;
        wildcards += usize::from(is_wildcard(state, &r.id));
        if state.is_events_channel(&r.id) && !cfg.allow_connections_to_events_channel {
            return Err(Refusal::new(StatusCode::FORBIDDEN, EVENTS_FORBIDDEN));
        }
        if !channels.iter().any(|(k, _)| *k == key) {
            channels.push((key, r.backtrack));
        }
    }
    if wildcards > 0 && (wildcards > cfg.wildcard_max || wildcards == requested.len()) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, TOO_MUCH_WILDCARD));
    }
    let time = non_empty(args.time.as_deref())
        .or_else(|| header(headers, "if-modified-since"))
        .and_then(parse_http_date);
    let tag = non_empty(args.tag.as_deref())
        .or_else(|| header(headers, "if-none-match"))
        .and_then(parse_tag);
    let last_event_id = non_empty(args.eventid.as_deref())
        .or_else(|| header(headers, "last-event-id"))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(Subscription {
        channels,
        since: time.map(|time| Since { time, tag }),
        tag,
        last_event_id,
    })
}

/// Where replay starts in one channel's history: the last `backtrack`
/// messages; else after the message named by `Last-Event-Id`; else after
/// the client's marker (the exact message it names when still stored,
/// otherwise from the first one at or past it); else nothing.
pub(crate) fn replay_start(
    history: &History,
    backtrack: usize,
    since: Option<Since>,
    last_event_id: Option<&str>,
) -> usize {
    let len = history.len();
    if backtrack > 0 {
        return len.saturating_sub(backtrack);
    }
    if let Some(id) = last_event_id
        && let Some(i) = history
            .iter()
            .position(|m| !m.publication.id.is_empty() && *m.publication.id == *id)
    {
        return i + 1;
    }
    if let Some(since) = since {
        if let Some(i) = history.iter().position(|m| since.is(Marker::of(m))) {
            return i + 1;
        }
        return history
            .iter()
            .position(|m| since.reaches(Marker::of(m)))
            .unwrap_or(len);
    }
    len
}

/// Whether `id` names a wildcard channel.
fn is_wildcard(state: &PsState, id: &str) -> bool {
    let prefix = &state.cfg.wildcard_prefix;
    !prefix.is_empty() && id.starts_with(prefix.as_str())
}

/// Under `authorized_channels_only`, refuses a subscription to a channel
/// (not a wildcard one) without stored messages, as stored anywhere in the
/// cluster: the broker's count, not this node's.
async fn authorize(state: &PsState, sub: &Subscription) -> Result<(), Refusal> {
    if !state.cfg.authorized_channels_only {
        return Ok(());
    }
    for (key, _) in &sub.channels {
        if is_wildcard(state, key.name()) {
            continue;
        }
        let info = state.app.engine.channel_info(key).await.map_err(|e| {
            tracing::warn!(channel = %key, error = %e, "Channel lookup failed.");
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "Broker unavailable.")
        })?;
        if info.is_none_or(|i| i.stored == 0) {
            return Err(Refusal::new(StatusCode::FORBIDDEN, CANNOT_CREATE));
        }
    }
    Ok(())
}

/// Subscribes `session` to every channel of `sub`, replaying what each
/// asks for, and records the subscriptions in `presence`; refuses what
/// `authorized_channels_only` forbids before subscribing anything.
pub(crate) async fn subscribe(
    state: &PsState,
    session: &mut Session,
    sub: &Subscription,
    presence: &mut Presence,
) -> Result<(), Refusal> {
    authorize(state, sub).await?;
    for (key, backtrack) in &sub.channels {
        // Held from asking whether the channel is new until this
        // subscription made it exist and announced it, as publishers hold
        // it: of first subscribers and publishers racing on this node, one
        // announces the channel.
        let creating = events::creating(state, key).await;
        let created = events::is_new(state, key).await;
        let (backtrack, since) = (*backtrack, sub.since);
        let last_event_id = sub.last_event_id.as_deref();
        let pick = move |h: &History| Ok(replay_start(h, backtrack, since, last_event_id));
        session
            .subscribe_replaying(key.clone(), Replay::Custom(Box::new(pick)))
            .await
            .map_err(|e| Refusal::new(e.status, e.message))?;
        presence.joined(key, created);
        drop(creating);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backtracks_like_the_module() {
        let ids = parse_ids("/ch1.b3/ch2/a.b/x.b10/");
        let got: Vec<(&str, usize)> = ids.iter().map(|r| (r.id.as_str(), r.backtrack)).collect();
        assert_eq!(got, [("ch1", 3), ("ch2", 0), ("a.b", 0), ("x", 10)]);
        assert!(parse_ids("//").is_empty());
        assert_eq!(percent_decode("a%20b%zz"), "a b%zz");
    }

    #[test]
    fn repeated_arguments_keep_the_first() {
        let a: ControlArgs = first_args("tag=1&tag=2&time=x&callback=%FF");
        assert_eq!(a.tag.as_deref(), Some("1"));
        assert_eq!(a.time.as_deref(), Some("x"));
        assert_eq!(a.callback.as_deref(), Some("\u{FFFD}"));
        assert!(first_args::<ControlArgs>("%").tag.is_none());
    }
}
