//! Pushca's API (MaksimBugay/pushca-public), wire-compatible, on Herald's
//! directory: REST sends by client filter, with-acknowledge sends, connection
//! tokens, and the `@@`-delimited WebSocket text protocol. See
//! docs/targeting.md.
//!
//! - [`http`]: the REST endpoints, the `/<jwt>` upgrade and `/sign-in/…`.
//! - [`ws`]: the WebSocket command protocol.
//! - [`token`]: connection tokens (HS256 JWTs carrying the client).

pub(crate) mod http;
pub(crate) mod token;
pub(crate) mod ws;

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use herald_core::{Filter, Format, Identity, Message, TargetFormat, Targeted};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::PushcaConfig;
use crate::dialect::slot;
use crate::ratelimit::RateLimit;

/// Identity dimensions Pushca's four client fields map onto.
pub(crate) const WORKSPACE: &str = "workspace";
pub(crate) const ACCOUNT: &str = "account";
pub(crate) const DEVICE: &str = "device";
pub(crate) const APPLICATION: &str = "application";

/// The dimension names as shared strings: the identities and filters made
/// here clone these rather than allocate their own, once per message.
static NAMES: LazyLock<[Arc<str>; 4]> =
    LazyLock::new(|| [WORKSPACE, ACCOUNT, DEVICE, APPLICATION].map(Arc::from));

/// A Pushca client's four fields, in `NAMES`' order, as identity dimensions;
/// null or empty fields are absent.
fn identity_of(fields: [Option<&str>; 4]) -> Identity {
    Identity::new(
        NAMES
            .iter()
            .cloned()
            .zip(fields)
            .filter_map(|(name, value)| Some((name, value.filter(|v| !v.is_empty())?))),
    )
}

/// Longest accepted message or command id.
const MAX_ID_LEN: usize = 128;

/// Per-node Pushca state.
pub(crate) struct Pushca {
    /// Signs and checks connection tokens.
    pub(crate) tokens: token::Tokens,
    /// Limits the REST API (429 when empty).
    pub(crate) limit: RateLimit,
    /// `pusherInstanceId` in open-connection replies.
    pub(crate) instance_id: String,
}

impl Pushca {
    pub(crate) fn from_config(config: &PushcaConfig) -> Self {
        Self {
            tokens: token::Tokens::from_config(config),
            limit: RateLimit::new(config.rate_limit, config.rate_burst),
            instance_id: config
                .pusher_instance_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        }
    }
}

/// A Pushca client: the four dimensions of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PClient {
    pub(crate) work_space_id: Option<String>,
    pub(crate) account_id: Option<String>,
    pub(crate) device_id: Option<String>,
    pub(crate) application_id: Option<String>,
}

impl PClient {
    /// The set fields as identity dimensions; null or empty fields are absent.
    pub(crate) fn identity(&self) -> Identity {
        identity_of([
            self.work_space_id.as_deref(),
            self.account_id.as_deref(),
            self.device_id.as_deref(),
            self.application_id.as_deref(),
        ])
    }

    /// All four fields set: the client can be sent with-acknowledge.
    pub(crate) fn is_complete(&self) -> bool {
        self.identity().dims().len() == 4
    }
}

/// Pushca's `ClientSearchData`: a client filter.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientSearchData {
    pub(crate) work_space_id: Option<String>,
    pub(crate) account_id: Option<String>,
    pub(crate) device_id: Option<String>,
    pub(crate) application_id: Option<String>,
    /// Deliver to one match, round-robin per message.
    pub(crate) find_any: Option<bool>,
    /// Exact clients to skip.
    pub(crate) exclude: Option<Vec<PClient>>,
}

impl ClientSearchData {
    pub(crate) fn filter(&self) -> Filter {
        let dims = identity_of([
            self.work_space_id.as_deref(),
            self.account_id.as_deref(),
            self.device_id.as_deref(),
            self.application_id.as_deref(),
        ]);
        Filter {
            dims,
            find_any: self.find_any.unwrap_or(false),
            exclude: self
                .exclude
                .iter()
                .flatten()
                .map(PClient::identity)
                .collect(),
        }
    }
}

/// A filter selecting exactly `client`'s connections.
pub(crate) fn client_filter(client: &PClient) -> Filter {
    Filter::new(client.identity())
}

/// Checks a client-supplied message id: it ends up before `@@` on the wire.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !plain_id(id.as_bytes()) {
        return Err(format!(
            "'id' must be 1 to {MAX_ID_LEN} bytes without '@@' or control characters"
        ));
    }
    Ok(())
}

/// Whether `id` (UTF-8) has no `@@` and no control character (C0, DEL, or
/// C1: U+0080–U+009F, encoded `C2 80`–`C2 9F`). Every command and message
/// id is checked, so in passes that vectorize: a whole-slice fold for C0
/// and DEL, C1 only past ASCII, and `memchr` for `@`.
fn plain_id(id: &[u8]) -> bool {
    let c0 = id
        .iter()
        .fold(false, |found, &b| found | (b < 0x20) | (b == 0x7f));
    let c1 = || {
        id.windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]))
    };
    let at_at = || memchr::memchr_iter(b'@', id).any(|i| id.get(i + 1) == Some(&b'@'));
    !c0 && (id.is_ascii() || !c1()) && !at_at()
}

/// Checks the sender's own message id, when it gave one.
pub(crate) fn check_sender_id(id: Option<&str>) -> Result<(), String> {
    id.map_or(Ok(()), check_id)
}

/// A targeted message from Pushca's `message` (a string, or any JSON), under
/// a message id of its own, as Pushca makes one: `<transactionId>-<index>`,
/// a fresh UUIDv7 and index 0 (one message per send). Receivers see and ack
/// that id, while the sender is answered under the id it chose; so two sends
/// that reuse a sender's id never take each other's acks.
pub(crate) fn targeted(message: &serde_json::value::RawValue) -> Targeted {
    let mut msg = Targeted::new(crate::dialect::one_line_json(message));
    msg.id = Arc::from(format!("{}-0", uuid::Uuid::now_v7()));
    msg
}

/// A message for a with-acknowledge send, as [`targeted`] makes one, unless
/// its text contains `@@`. Pushca clients split `<id>@@<body>` on every
/// `@@`: with more than two parts the browser client delivers the whole
/// frame and never acknowledges it, and the Java client acknowledges but
/// delivers the body only up to its first `@@`. Such a send cannot
/// succeed, so it is refused rather than made to time out.
pub(crate) fn targeted_with_ack(message: &serde_json::value::RawValue) -> Result<Targeted, String> {
    let msg = targeted(message);
    if msg.text().contains("@@") {
        return Err("a message to acknowledge cannot contain '@@': \
            Pushca clients split frames on it and could not acknowledge it"
            .into());
    }
    Ok(msg)
}

/// How Pushca clients receive messages: the body as text, prefixed with
/// `<id>@@` when the receiver must acknowledge it.
pub(crate) struct PushcaFormat;

impl TargetFormat for PushcaFormat {
    fn encode_targeted(&self, msg: &Targeted) -> Bytes {
        if msg.ack {
            Bytes::from(format!("{}@@{}", msg.id, msg.text()))
        } else {
            Bytes::from(msg.text().into_owned())
        }
    }
}

/// Channel messages (never subscribed by Pushca connections today) as text.
impl Format for PushcaFormat {
    fn slot(&self) -> usize {
        slot::PUSHCA_WS
    }
    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::from(msg.text().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ws: Option<&str>, acc: &str) -> PClient {
        PClient {
            work_space_id: ws.map(Into::into),
            account_id: Some(acc.into()),
            device_id: Some(String::new()),
            application_id: None,
        }
    }

    #[test]
    fn null_and_empty_fields_are_absent() {
        let id = client(None, "a").identity();
        assert_eq!(id.dims().len(), 1);
        assert_eq!(id.get(ACCOUNT), Some("a"));
        assert!(!client(Some("w"), "a").is_complete());
    }

    #[test]
    fn search_data_maps_to_a_filter() {
        let data: ClientSearchData = serde_json::from_str(
            r#"{"workSpaceId":"w","accountId":null,"findAny":true,
                "exclude":[{"workSpaceId":"w","accountId":"me","deviceId":"d","applicationId":"x"}]}"#,
        )
        .unwrap();
        let f = data.filter();
        assert!(f.find_any);
        assert_eq!(f.dims.dims().len(), 1);
        assert_eq!(f.exclude.len(), 1);
        assert_eq!(f.exclude[0].get(ACCOUNT), Some("me"));
    }

    #[test]
    fn ack_messages_carry_their_id() {
        let mut m = targeted(&serde_json::value::RawValue::from_string(r#""hi""#.into()).unwrap());
        assert_eq!(PushcaFormat.encode_targeted(&m), "hi");
        m.ack = true;
        assert_eq!(PushcaFormat.encode_targeted(&m), format!("{}@@hi", m.id));
        assert!(m.id.ends_with("-0"), "{}", m.id);
        assert!(check_id("a@@b").is_err());
    }

    #[test]
    fn ids_refuse_exactly_what_a_char_scan_refuses() {
        let samples = [
            "018a842a-7e52-7692-a344-0d76460e1f3f-0",
            "a@b@c",
            "a@@",
            "@@",
            "@",
            "tab\there",
            "del\u{7f}",
            "nel\u{85}",
            "c1 end\u{9f}",
            "\u{a0}nbsp",
            "é@ü",
            "\u{c2}",
            "\u{2028}",
            "€",
            "",
        ];
        for id in samples {
            let scan = !id.contains("@@") && !id.chars().any(char::is_control);
            assert_eq!(plain_id(id.as_bytes()), scan, "{id:?}");
        }
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(check_id("ok-1").is_ok());
    }
}
