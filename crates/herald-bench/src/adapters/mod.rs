//! What differs between the servers: URLs, subscription handshakes and publish requests.

pub(crate) mod herald;
pub(crate) mod nchan;
pub(crate) mod sockudo;

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::conn::{Conn, ws_handshake};
use crate::error::{BenchError, Result};
use crate::http::HttpPool;
use crate::net::{self, Endpoint};
use crate::sse::SseStream;

/// The server and transport under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Target {
    /// Herald native protocol over WebSocket (`/ws?channels=`).
    Herald,
    /// Herald native protocol over Server-Sent Events (`/sse?channels=`).
    HeraldSse,
    /// Nchan over WebSocket (`/sub/<ch>`).
    Nchan,
    /// Nchan over EventSource.
    NchanSse,
    /// sockudo, Pusher Channels protocol 7 over WebSocket.
    Sockudo,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::HeraldSse => "herald-sse",
            Target::Nchan => "nchan",
            Target::NchanSse => "nchan-sse",
            Target::Sockudo => "sockudo",
        }
    }
}

/// Connects subscribers and publishes for one target.
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    pub(crate) target: Target,
    /// Where subscribers connect (the publish endpoint unless told otherwise).
    pub(crate) sub_endpoint: Endpoint,
    /// Keep-alive HTTP connections for publishing.
    http: HttpPool,
    /// Bound on a connection's TCP connect + handshake + subscription.
    connect_timeout: Duration,
}

impl Adapter {
    pub(crate) fn new(
        target: Target,
        endpoint: Endpoint,
        sub_endpoint: Endpoint,
        connect_timeout: Duration,
        pool: usize,
    ) -> Result<Self> {
        let http = HttpPool::new(&endpoint, pool, Duration::from_secs(30));
        Ok(Adapter {
            target,
            sub_endpoint,
            http,
            connect_timeout,
        })
    }

    /// Opens a connection subscribed to `channels`, from `source` if given. For Herald and Nchan
    /// the subscription is part of the handshake; for sockudo it waits for
    /// `pusher_internal:subscription_succeeded` on every channel.
    pub(crate) async fn subscribe(
        &self,
        channels: &[String],
        source: Option<(Ipv4Addr, u16)>,
    ) -> Result<Conn> {
        let attempt = async {
            let tcp = net::connect(self.sub_endpoint.addr, source).await?;
            let ep = &self.sub_endpoint;
            Ok(match self.target {
                Target::Herald => Conn::Ws {
                    ws: Box::new(ws_handshake(tcp, &ep.ws(&herald::ws_path(channels))).await?),
                    pusher: false,
                },
                Target::Nchan => Conn::Ws {
                    ws: Box::new(ws_handshake(tcp, &ep.ws(&nchan::sub_path(channels))).await?),
                    pusher: false,
                },
                Target::HeraldSse => Conn::Sse(Box::new(
                    SseStream::open(tcp, &ep.authority, &herald::sse_path(channels)).await?,
                )),
                Target::NchanSse => Conn::Sse(Box::new(
                    SseStream::open(tcp, &ep.authority, &nchan::sub_path(channels)).await?,
                )),
                Target::Sockudo => Conn::Ws {
                    ws: Box::new(sockudo::subscribe(tcp, ep, channels).await?),
                    pusher: true,
                },
            })
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| BenchError::Timeout("connecting"))?
    }

    /// Publishes `payload` (a JSON object) to `channel` over HTTP; Ok only on a 2xx answer.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> Result<()> {
        let (path, body) = match self.target {
            Target::Herald | Target::HeraldSse => herald::publish(channel, payload),
            Target::Nchan | Target::NchanSse => nchan::publish(channel, payload),
            Target::Sockudo => sockudo::publish(channel, payload),
        };
        let status = self.http.post(&path, &body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(BenchError::Status(status))
        }
    }

    /// The WebSocket frame that publishes `payload` to `channel` from a subscriber's own
    /// connection, where the protocol has one (Herald native only).
    pub(crate) fn ws_publish_frame(&self, id: u64, channel: &str, payload: &str) -> Option<String> {
        match self.target {
            Target::Herald => Some(herald::ws_publish_frame(id, channel, payload)),
            _ => None,
        }
    }
}
