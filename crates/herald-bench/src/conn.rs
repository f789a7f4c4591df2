//! One subscriber connection, WebSocket or EventSource, reduced to "give me the next payloads".

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::error::{BenchError, Result};
use crate::head::{self, Head};
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

/// Performs the WebSocket handshake (RFC 6455 §4.1) for `path` at `authority` over an already
/// connected stream: one write, reads until the response head, and checks the status, the
/// upgrade and the accept key.
///
/// Written out rather than left to tungstenite's client, which builds an `http::Request`,
/// parses a URL and allocates each header: in the connect scenario the generator's core is the
/// limit, and that was a sixth of its user-space time.
pub(crate) async fn ws_handshake(mut tcp: TcpStream, authority: &str, path: &str) -> Result<Ws> {
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(512);
    let head_len = head::read(&mut tcp, &mut buf).await?;
    check_upgrade(&Head::parse(&buf[..head_len])?, &key)?;
    buf.advance(head_len + 4);
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0);
    // Frames the server sent right behind its response are already in `buf`.
    Ok(WebSocketStream::from_partially_read(tcp, buf.to_vec(), Role::Client, Some(config)).await)
}

/// Whether `head` accepts the upgrade asked for with `key`.
fn check_upgrade(head: &Head<'_>, key: &str) -> Result<()> {
    if head.status != 101 {
        return Err(BenchError::Status(head.status));
    }
    if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
        return Err(BenchError::Protocol(
            "101 without the websocket upgrade".into(),
        ));
    }
    if head.field("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(BenchError::Protocol("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Serves one connection: reads the request head, answers with `respond(key)` and closes
    /// after the client does.
    async fn serve_once(respond: fn(&str) -> Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = BytesMut::new();
            let len = head::read(&mut s, &mut buf).await.expect("request head");
            let request = std::str::from_utf8(&buf[..len]).expect("utf-8").to_owned();
            assert!(
                request.starts_with("GET /ws?channels=a HTTP/1.1\r\n"),
                "{request}"
            );
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("key");
            s.write_all(&respond(key)).await.expect("respond");
            let _ = s.read(&mut [0; 64]).await;
        });
        addr
    }

    async fn handshake(addr: &str) -> Result<Ws> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        ws_handshake(tcp, addr, "/ws?channels=a").await
    }

    fn accepted(key: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    #[tokio::test]
    async fn a_frame_right_behind_the_response_is_kept() {
        let addr = serve_once(|key| {
            let mut bytes = accepted(key).into_bytes();
            // An unmasked text frame "hi" in the same segment as the head.
            bytes.extend_from_slice(&[0x81, 2, b'h', b'i']);
            bytes
        })
        .await;
        let mut conn = Conn::Ws {
            ws: Box::new(handshake(&addr).await.expect("handshake")),
            pusher: false,
        };
        let mut got = Vec::new();
        let mut collect = |p: &[u8]| got.push(p.to_vec());
        let recv = conn.recv(&mut collect);
        let open = tokio::time::timeout(std::time::Duration::from_secs(5), recv)
            .await
            .expect("the frame is read from what the handshake kept, not waited for");
        assert!(open.expect("recv"));
        assert_eq!(got, [b"hi".to_vec()]);
    }

    #[tokio::test]
    async fn a_wrong_answer_is_refused() {
        let wrong_key = serve_once(|_| accepted("not the key").into_bytes()).await;
        assert!(matches!(
            handshake(&wrong_key).await,
            Err(BenchError::Protocol(m)) if m.contains("Accept")
        ));
        let refused =
            serve_once(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        assert!(matches!(
            handshake(&refused).await,
            Err(BenchError::Status(404))
        ));
        let no_upgrade = serve_once(|key| {
            accepted(key)
                .replace("Upgrade: websocket\r\n", "")
                .into_bytes()
        })
        .await;
        assert!(matches!(
            handshake(&no_upgrade).await,
            Err(BenchError::Protocol(m)) if m.contains("upgrade")
        ));
    }
}
