//! Test support: real `redis-server` processes (single or a 3-master
//! cluster) on free loopback ports, and Herald nodes wired to them.
//!
//! Servers run without persistence and are killed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::{RedisBroker, RedisConfig};
use herald_core::outbox::next_conn_id;
use herald_core::{ChannelKey, Engine, Format, Frame, Hub, Message, Outbox};
pub use herald_testkit::redis::*;

/// Encodes messages as `offset epoch data`, so tests can read positions.
pub struct Probe;

impl Format for Probe {
    fn slot(&self) -> usize {
        7
    }
    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            msg.offset,
            msg.epoch,
            String::from_utf8_lossy(msg.data())
        ))
    }
}

/// A received frame split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub offset: u64,
    pub epoch: String,
    pub data: String,
}

/// One Herald node: hub, Redis broker, engine.
pub struct Node {
    pub hub: Arc<Hub>,
    pub broker: Arc<RedisBroker>,
    pub engine: Engine,
}

impl Node {
    pub async fn start(config: RedisConfig) -> Self {
        let hub = Arc::new(Hub::new());
        let broker = tokio::time::timeout(STEP, RedisBroker::connect(config, hub.clone()))
            .await
            .expect("connect timed out")
            .expect("connect");
        let engine = Engine::new(hub.clone(), broker.clone());
        Self {
            hub,
            broker,
            engine,
        }
    }

    /// A new connection's outbox subscribed to `channel`.
    pub async fn subscribe(&self, channel: &ChannelKey) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(next_conn_id(), Arc::new(Probe), 1 << 20));
        tokio::time::timeout(STEP, self.engine.subscribe(channel, &outbox))
            .await
            .expect("subscribe timed out")
            .expect("subscribe");
        outbox
    }

    pub async fn publish(&self, channel: &ChannelKey, data: &str) -> herald_core::Published {
        let p = herald_core::Publication::new(Bytes::from(data.to_owned()));
        tokio::time::timeout(STEP, self.engine.publish(channel, p))
            .await
            .expect("publish timed out")
            .expect("publish")
    }
}

/// A config for tests: short timeouts and probe interval, a unique prefix.
pub fn config(urls: Vec<String>) -> RedisConfig {
    RedisConfig {
        urls,
        key_prefix: "t".into(),
        timeout_ms: 500,
        probe_interval_ms: 200,
        unsubscribe_delay_ms: 300,
        ..RedisConfig::default()
    }
}

pub fn key(name: &str) -> ChannelKey {
    ChannelKey::new(&Arc::from("app"), name).unwrap()
}

/// Waits (bounded by `limit`) until `outbox` holds at least `n` frames.
pub async fn recv_n(outbox: &Outbox, n: usize, limit: Duration) -> Vec<Got> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut frames = Vec::new();
    loop {
        outbox.drain(&mut frames);
        if frames.len() >= n {
            break;
        }
        if tokio::time::timeout_at(deadline, outbox.ready())
            .await
            .is_err()
        {
            outbox.drain(&mut frames);
            break;
        }
    }
    frames
        .iter()
        .map(|f| {
            let s = frame_text(f);
            let mut parts = s.splitn(3, ' ');
            Got {
                offset: parts.next().unwrap().parse().unwrap(),
                epoch: parts.next().unwrap().to_owned(),
                data: parts.next().unwrap_or("").to_owned(),
            }
        })
        .collect()
}

/// A queued frame as text.
fn frame_text(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.bytes).into_owned()
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback TCP proxy whose existing connections can be frozen: bytes stop
/// flowing both ways but the sockets stay open, like a peer that vanished
/// without a FIN. New connections after a freeze flow normally.
pub struct FreezingProxy {
    pub port: u16,
    /// Flags of the connections accepted so far; set = frozen.
    conns: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if frozen.load(Ordering::Relaxed) {
                                // Swallow everything, keep the socket open.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Keep the write half open while frozen, too.
                        if frozen.load(Ordering::Relaxed) {
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        Self { port, conns, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes every connection accepted so far.
    pub fn freeze_existing(&self) {
        for flag in self.conns.lock().unwrap().iter() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
