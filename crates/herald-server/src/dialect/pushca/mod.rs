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

use std::sync::Arc;

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
        Identity::new(
            [
                (WORKSPACE, &self.work_space_id),
                (ACCOUNT, &self.account_id),
                (DEVICE, &self.device_id),
                (APPLICATION, &self.application_id),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_deref().filter(|s| !s.is_empty())?))),
        )
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
        let dims = PClient {
            work_space_id: self.work_space_id.clone(),
            account_id: self.account_id.clone(),
            device_id: self.device_id.clone(),
            application_id: self.application_id.clone(),
        }
        .identity();
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
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || id.contains("@@")
        || id.chars().any(char::is_control)
    {
        return Err(format!(
            "'id' must be 1 to {MAX_ID_LEN} bytes without '@@' or control characters"
        ));
    }
    Ok(())
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
}
