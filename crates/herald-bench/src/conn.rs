//! One subscriber connection, WebSocket or EventSource, reduced to "give me the next payloads".

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::error::Result;
use crate::sse::SseStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

pub(crate) enum Conn {
    Ws {
        ws: Box<Ws>,
        /// Pusher protocol: application-level `pusher:ping` must be answered with `pusher:pong`.
        pusher: bool,
    },
    Sse(Box<SseStream>),
}

/// Read buffer per connection. tungstenite's default (128 KiB) is zero-filled on every read,
/// which cost the generator more CPU than everything else together at 10,000 connections;
/// pushed frames here are small, and larger ones are simply read in several steps.
const WS_READ_BUFFER: usize = 4096;

/// Performs the WebSocket handshake for `url` over an already connected stream.
pub(crate) async fn ws_handshake(tcp: TcpStream, url: &str) -> Result<Ws> {
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0);
    let (ws, _response) = client_async_with_config(url, tcp, Some(config)).await?;
    Ok(ws)
}

impl Conn {
    /// Waits for the next frame (WS) or batch of events (SSE) and passes each application payload
    /// to `on_payload`; control frames are handled here. `Ok(false)` once the connection closed.
    pub(crate) async fn recv(&mut self, on_payload: &mut impl FnMut(&[u8])) -> Result<bool> {
        match self {
            Conn::Sse(sse) => sse.recv(on_payload).await,
            Conn::Ws { ws, pusher } => loop {
                // Bounded: returns on the first data frame, close or error; pings are answered
                // by tungstenite while reading.
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if *pusher && text.as_str().contains("\"pusher:ping\"") {
                            ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#))
                                .await?;
                            continue;
                        }
                        on_payload(text.as_bytes());
                        return Ok(true);
                    }
                    Some(Ok(Message::Binary(data))) => {
                        on_payload(&data);
                        return Ok(true);
                    }
                    Some(Ok(Message::Close(_)))
                    | None
                    | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        return Ok(false);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }

    /// Sends a text frame (WebSocket only; a no-op on SSE, which has no upstream).
    pub(crate) async fn send_text(&mut self, text: String) -> Result<()> {
        if let Conn::Ws { ws, .. } = self {
            ws.send(Message::text(text)).await?;
        }
        Ok(())
    }
}
