//! Herald's Pushca dialect (docs/targeting.md, "Pushca API"). Each channel name stands for one
//! Pushca client identity, so the scenarios' "channel `c<i>`" becomes "client `c<i>`":
//! a connection asks `POST /open-connection` for its URL and opens the WebSocket it advertises;
//! messages are sent by client filter, over REST (`/send-notification…`) or over the sender's
//! own WebSocket ([`wire`]).

pub(crate) mod wire;

use std::fmt::{Display, Write as _};

use serde::Deserialize;
use tokio::net::TcpStream;

use crate::conn::{Ws, ws_handshake};
use crate::error::{BenchError, Result};
use crate::http::HttpPool;
use crate::net::Endpoint;
use crate::token::{Quoting, Token};

/// Appends the Pushca client (`PClient`) standing for channel `name`: all four fields set, so
/// it can also be sent with-acknowledge.
pub(crate) fn write_client(out: &mut String, name: impl Display) {
    let _ = write!(
        out,
        r#"{{"workSpaceId":"bench","accountId":"a-{name}","deviceId":"d-{name}","applicationId":"bench"}}"#
    );
}

/// The reply of `/open-connection`, as far as it is used.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenConnection {
    /// `ws://<host>/<jwt>`.
    external_advertised_url: String,
}

/// The connection token of an `/open-connection` reply: the advertised URL's last segment
/// (Pushca clients split the URL at its last `/` the same way).
fn token_of(reply: &[u8]) -> Result<String> {
    let r: OpenConnection = serde_json::from_slice(reply)
        .map_err(|e| BenchError::Protocol(format!("open-connection reply: {e}")))?;
    match r.external_advertised_url.rsplit_once('/') {
        Some((_, token)) if !token.is_empty() => Ok(token.to_owned()),
        _ => Err(BenchError::Protocol(format!(
            "advertised URL without a token: {}",
            r.external_advertised_url
        ))),
    }
}

/// Opens the connection of client `name`: its URL from `/open-connection` over `http`, then the
/// WebSocket over `tcp` (already connected from the generator's source address) at `ep`, the
/// subscribe endpoint: the advertised host is replaced, the token kept.
pub(crate) async fn connect(
    http: &HttpPool,
    tcp: TcpStream,
    ep: &Endpoint,
    name: &str,
) -> Result<Ws> {
    let mut body = String::with_capacity(128);
    body.push_str(r#"{"client":"#);
    write_client(&mut body, name);
    body.push('}');
    let (status, reply) = http.post_for_body("/open-connection", &body).await?;
    if status != 200 {
        return Err(BenchError::Status(status));
    }
    let token = token_of(&reply)?;
    ws_handshake(tcp, &ep.authority, &format!("/{token}")).await
}

/// `(path, body)` of a REST send of `payload` (a JSON object) to client `name`, with
/// acknowledgement or not. The message travels as a string, as Pushca's `message` does.
pub(crate) fn send(name: &str, payload: &str, ack: bool) -> (String, String) {
    let mut body = String::with_capacity(payload.len() + 192);
    let path = if ack {
        body.push_str(r#"{"client":"#);
        "/send-notification-with-acknowledge"
    } else {
        body.push_str(r#"{"filter":"#);
        "/send-notification"
    };
    write_client(&mut body, name);
    body.push_str(r#","message":""#);
    // The payload is the generator's own JSON: its only characters needing escape are quotes.
    for c in payload.chars() {
        if c == '"' {
            body.push('\\');
        }
        body.push(c);
    }
    body.push_str("\"}");
    (path.to_owned(), body)
}

/// Appends a pairs payload as the inside of Pushca's `message` string.
pub(crate) fn write_message(out: &mut String, token: &Token, size: usize) {
    token.write_payload(out, size, Quoting::Escaped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_bodies_are_pushca_json() {
        let (path, body) = send("c3", r#"{"x":"hbp:1:3;"}"#, false);
        assert_eq!(path, "/send-notification");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["filter"]["accountId"], "a-c3");
        assert_eq!(v["filter"]["workSpaceId"], "bench");
        assert_eq!(v["message"], r#"{"x":"hbp:1:3;"}"#);
        let (path, body) = send("c4", "{}", true);
        assert_eq!(path, "/send-notification-with-acknowledge");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["client"]["deviceId"], "d-c4");
        assert_eq!(v["client"]["applicationId"], "bench");
    }

    #[test]
    fn token_is_the_last_url_segment() {
        let reply = br#"{"pusherInstanceId":"p","externalAdvertisedUrl":"ws://127.0.0.1:9/eyJ.a.b",
            "internalAdvertisedUrl":"x","browserAdvertisedUrl":"y"}"#;
        assert_eq!(token_of(reply).expect("token"), "eyJ.a.b");
        assert!(token_of(br#"{"externalAdvertisedUrl":"ws://h/"}"#).is_err());
        assert!(token_of(b"not json").is_err());
    }
}
