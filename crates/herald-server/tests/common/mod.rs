//! Test support: a real Herald on a free port, and real WebSocket, SSE and
//! HTTP clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_server::{Config, Server, Shutdown};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Has channels named `h*` keep their last `size` messages for 5 minutes.
pub fn keep_history(c: &mut Config, size: usize) {
    use herald_core::history::{Retention, RetentionRule};
    c.history.rules = vec![RetentionRule {
        pattern: "h*".into(),
        retention: Retention {
            size,
            ttl: Duration::from_secs(300),
        },
    }];
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running server; shut down when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Self::config();
        tweak(&mut config);
        let server = Server::bind(config).await.expect("bind");
        Self::run(server)
    }

    /// What every test server starts from: a free loopback port.
    pub fn config() -> Config {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.shutdown_timeout = Duration::from_secs(5);
        config
    }

    /// Runs a server the test bound itself (to keep a handle to it first).
    pub fn run(server: Server) -> Self {
        let addr = server.local_addr().unwrap();
        let shutdown = server.state().shutdown.clone();
        let task = tokio::spawn(server.run(std::future::pending()));
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn ws(&self, path: &str) -> Ws {
        let url = format!("ws://{}{}", self.addr, path);
        let (ws, res) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        assert_eq!(res.status(), 101);
        ws
    }

    /// Publishes natively and returns the JSON reply.
    /// `DELETE /api/v1/channels/<name>`.
    pub async fn delete_channel(&self, name: &str) -> reqwest::Response {
        reqwest::Client::new()
            .delete(self.http(&format!("/api/v1/channels/{name}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn publish(&self, body: Value) -> Value {
        let res = reqwest::Client::new()
            .post(self.http("/api/v1/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "publish {body}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let length = res
            .content_length()
            .expect("a publish's answer has a length");
        let answer = res.bytes().await.unwrap();
        assert_eq!(answer.len() as u64, length);
        serde_json::from_slice(&answer).unwrap()
    }

    /// Starts shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("shutdown timed out")
                .unwrap();
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .parse()
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The next text frame, skipping pings.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("frame error");
        match frame {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// Sends a JSON command and returns the next frame.
pub async fn command(ws: &mut Ws, cmd: Value) -> Value {
    ws.send(Message::text(cmd.to_string())).await.unwrap();
    next_json(ws).await
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time");
        match frame {
            Some(Ok(Message::Close(Some(c)))) => return (c.code.into(), c.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// A Server-Sent Events client over a real HTTP response.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

/// One parsed SSE block (comment-only blocks included, as `comment`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: Option<String>,
}

impl Sse {
    pub async fn connect(url: &str) -> Self {
        let res = reqwest::get(url).await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        Self::from_response(res)
    }

    pub fn from_response(res: reqwest::Response) -> Self {
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next block, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event::default();
                for line in block.lines().filter(|l| !l.is_empty()) {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                    match field {
                        "" => ev.comment = Some(value),
                        "event" => ev.event = Some(value),
                        "id" => ev.id = Some(value),
                        "data" => ev.data = Some(value),
                        "retry" => ev.retry = Some(value),
                        other => panic!("unknown SSE field {other:?}"),
                    }
                }
                return Some(ev);
            }
            match tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no SSE data in time")
            {
                Some(Ok(chunk)) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next block that carries data.
    pub async fn next_data(&mut self) -> Event {
        loop {
            let ev = self.next().await.expect("stream ended");
            if ev.data.is_some() {
                return ev;
            }
        }
    }
}

/// A bare WebSocket client over TCP that never answers pings, to test the
/// server's liveness checks and read frames exactly as sent.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let (ws, head) = Self::open(addr, req.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws
    }

    /// Sends `bytes` (a handshake, and perhaps more) in one write; returns
    /// the client and the head of the answer.
    pub async fn open(addr: SocketAddr, bytes: &[u8]) -> (Self, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                return (Self { stream, buf }, head);
            }
        }
    }

    /// One masked frame with `opcode` and `payload`, as a client sends it.
    pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
        Self::encode_raw(0x80 | opcode, payload)
    }

    /// One masked frame whose first byte (FIN, RSV bits, opcode) is `first`.
    pub fn encode_raw(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// Sends one masked frame with `opcode` and `payload`.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_bytes(&Self::encode(opcode, payload)).await;
    }

    /// Sends `bytes` (encoded frames) in one write.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame as (opcode, payload); `None` on EOF.
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (first, payload) = self.raw_frame().await?;
        Some((first & 0x0f, payload))
    }

    /// The next frame as (its first byte: FIN, RSV bits, opcode; payload);
    /// `None` on EOF.
    pub async fn raw_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0];
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("no frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips frames until a close; returns its code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        while let Some((opcode, payload)) = self.frame().await {
            if opcode == 8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).to_string());
            }
        }
        panic!("EOF without a close frame");
    }
}

/// An SSE response read off a raw socket: its head, then its events, with
/// the body decoded from whichever framing it came in.
pub struct RawSse {
    pub stream: TcpStream,
    pub head: String,
    pub chunked: bool,
    /// Received, not yet decoded.
    raw: Vec<u8>,
    /// Decoded, not yet handed out.
    body: String,
}

impl RawSse {
    /// Sends `request` on `stream` and reads the answer's head.
    pub async fn open(mut stream: TcpStream, request: &str) -> Self {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            read_some(&mut stream, &mut raw).await;
        };
        let head = String::from_utf8(raw[..end].to_vec()).unwrap();
        raw.drain(..end + 4);
        let chunked = head.contains("\r\ntransfer-encoding: chunked");
        Self {
            stream,
            head,
            chunked,
            raw,
            body: String::new(),
        }
    }

    /// The next event's lines.
    pub async fn event(&mut self) -> Vec<String> {
        loop {
            self.decode();
            if let Some(end) = self.body.find("\n\n") {
                let block: String = self.body.drain(..end + 2).collect();
                return block.trim_end().lines().map(str::to_owned).collect();
            }
            read_some(&mut self.stream, &mut self.raw).await;
        }
    }

    /// The next event that carries data: its `id`, and its message's `data`.
    pub async fn message(&mut self) -> (String, Value) {
        loop {
            let lines = self.event().await;
            let field = |name: &str| {
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix(name).map(str::to_owned))
            };
            if let Some(data) = field("data: ") {
                let id = field("id: ").expect("messages carry ids");
                let msg: Value = serde_json::from_str(&data).unwrap();
                return (id, msg["data"].clone());
            }
        }
    }

    fn decode(&mut self) {
        if !self.chunked {
            let bytes: Vec<u8> = self.raw.drain(..).collect();
            self.body.push_str(std::str::from_utf8(&bytes).unwrap());
            return;
        }
        while let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line]).unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            let chunk = &self.raw[line + 2..line + 2 + size];
            self.body.push_str(std::str::from_utf8(chunk).unwrap());
            self.raw.drain(..line + 2 + size + 2);
        }
    }
}

pub async fn read_some(stream: &mut TcpStream, into: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
        .await
        .expect("data in time")
        .unwrap();
    assert!(n > 0, "the stream ended");
    into.extend_from_slice(&chunk[..n]);
}

/// A client socket whose receive buffer is fixed at 16 KiB before it
/// connects (so the kernel does not grow it): a client that stops reading
/// fills it, and then the server's side, quickly.
pub async fn connect_with_small_buffer(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (a reset counts: it may
/// close with bytes unread).
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server closes the connection");
        match read {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A response's body as JSON.
pub async fn json_of(res: reqwest::Response) -> Value {
    res.json().await.unwrap()
}

/// Sends `req` and reads its answer as JSON.
pub async fn fetch_json(req: reqwest::RequestBuilder) -> Value {
    json_of(req.send().await.unwrap()).await
}
