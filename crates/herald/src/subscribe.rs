//! `herald subscribe`: prints what a native WebSocket receives, one frame
//! a line. With `--follow` it outlives the connection: it reconnects after
//! a lifetime's end, a restart or a drop, and resumes every channel from
//! the last message it printed, so nothing is missed or printed twice on
//! channels that keep history.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What the subscriber was asked for.
pub(crate) struct Subscriber {
    /// `ws://host:port`.
    pub(crate) url: String,
    /// The channels, in the order given.
    pub(crate) channels: Vec<String>,
    /// A connection token (JWT), sent as `Authorization: Bearer`.
    pub(crate) token: Option<String>,
    /// Reconnect and resume instead of ending with the connection.
    pub(crate) follow: bool,
}

/// How a connection ended.
enum End {
    /// The server closed it with this code.
    Closed(u16),
    /// It failed or dropped.
    Lost(String),
}

/// The longest wait between two reconnects.
const MAX_DELAY: Duration = Duration::from_secs(30);

impl Subscriber {
    pub(crate) async fn run(self) -> Result<(), String> {
        // Each channel's last printed position: (offset, epoch).
        let mut positions: HashMap<String, (u64, String)> = HashMap::new();
        let mut delay = Duration::from_millis(250);
        loop {
            let end = self.connection(&mut positions).await?;
            let code = match end {
                End::Closed(code) => code,
                End::Lost(why) if self.follow => {
                    eprintln!("connection lost: {why}");
                    0
                }
                End::Lost(why) => return Err(why),
            };
            if !self.follow {
                // An end a client expects (a normal close, a restart, the
                // lifetime over) is a success; the rest say what went wrong.
                return match code {
                    1000 | 1001 | 1005 | 1012 | 4200 => Ok(()),
                    _ => Err(format!("closed with {code}")),
                };
            }
            // 4000–4099 (and protocol errors) say not to come back.
            if matches!(code, 1002 | 1003 | 1007 | 1008 | 1009 | 4000..=4099) {
                return Err(format!("closed with {code}: not reconnecting"));
            }
            let wait = if code == 0 || (4100..4200).contains(&code) {
                delay = (delay * 2).min(MAX_DELAY);
                delay
            } else {
                delay = Duration::from_millis(250);
                Duration::ZERO
            };
            eprintln!("reconnecting in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    /// One connection: subscribes (resuming where `positions` says), prints
    /// until it ends. Errors only for what reconnecting cannot mend: a bad
    /// URL, a refused subscription.
    async fn connection(
        &self,
        positions: &mut HashMap<String, (u64, String)>,
    ) -> Result<End, String> {
        // Channels with no position yet are subscribed before the handshake
        // completes, so nothing published once it has is missed; the rest
        // resume by command.
        let fresh: Vec<&str> = self
            .channels
            .iter()
            .filter(|c| !positions.contains_key(*c))
            .map(String::as_str)
            .collect();
        let url = format!(
            "{}/ws?channels={}",
            self.url.trim_end_matches('/'),
            fresh.join(",")
        );
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        if let Some(token) = &self.token {
            let bearer = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token is not a header value".to_owned())?;
            request.headers_mut().insert("authorization", bearer);
        }
        let mut ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                let body = res.body().as_deref().map(String::from_utf8_lossy);
                let why = format!(
                    "{url} refused: {} {}",
                    res.status(),
                    body.unwrap_or_default()
                );
                // A refusal is an answer: following cannot change it.
                return Err(why);
            }
            Err(e) => return Ok(End::Lost(format!("cannot connect to {url}: {e}"))),
        };
        for (channel, (offset, epoch)) in positions.iter() {
            let since = json!({"offset": offset, "epoch": epoch});
            let cmd =
                json!({"id": channel, "cmd": "subscribe", "channel": channel, "since": since});
            if let Err(e) = ws.send(Message::text(cmd.to_string())).await {
                return Ok(End::Lost(e.to_string()));
            }
        }
        while let Some(frame) = ws.next().await {
            let text = match frame {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(close)) => {
                    let code = close.as_ref().map_or(1005, |c| u16::from(c.code));
                    eprintln!("closed: {close:?}");
                    return Ok(End::Closed(code));
                }
                Ok(_) => continue,
                Err(e) => return Ok(End::Lost(e.to_string())),
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                println!("{text}");
                continue;
            };
            if let Some(error) = frame.get("error") {
                return Err(format!("subscribe refused: {error}"));
            }
            if frame.get("result").is_some() {
                continue;
            }
            if let (Some(channel), Some(offset), Some(epoch)) = (
                frame["channel"].as_str(),
                frame["offset"].as_u64(),
                frame["epoch"].as_str(),
            ) {
                let seen = positions.get(channel);
                // A message both live and replayed prints once.
                if seen.is_some_and(|(o, e)| e == epoch && *o >= offset) {
                    continue;
                }
                positions.insert(channel.to_owned(), (offset, epoch.to_owned()));
            }
            println!("{text}");
        }
        Ok(End::Lost("the connection ended without a close".into()))
    }
}
