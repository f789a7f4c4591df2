//! What differs between the servers: URLs, subscription handshakes and publish requests.

pub(crate) mod herald;
pub(crate) mod nchan;
pub(crate) mod pushca;
pub(crate) mod sockudo;

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::clients::ChannelName;
use crate::conn::{Conn, ws_handshake};
use crate::error::{BenchError, Result};
use crate::http::HttpPool;
use crate::net::{self, Endpoint};
use crate::sse::SseStream;
use crate::token::Token;

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
    /// Herald's Pushca dialect: channel `c<i>` stands for a Pushca client, connected through
    /// `/open-connection` and `ws://host/<jwt>`, sent to by client filter.
    Pushca,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::HeraldSse => "herald-sse",
            Target::Nchan => "nchan",
            Target::NchanSse => "nchan-sse",
            Target::Sockudo => "sockudo",
            Target::Pushca => "pushca",
        }
    }

    /// Whether a client can send a pairs message over its own WebSocket (`--via ws`).
    pub(crate) fn sends_over_ws(self) -> bool {
        matches!(self, Target::Herald | Target::Pushca)
    }
}

/// One pairs message, as every dialect's frame needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairMessage<'a> {
    /// Run id, carried in the token so that messages of other runs are ignored.
    pub(crate) run: u32,
    /// The message number, unique within the worker.
    pub(crate) id: u64,
    /// Unix nanoseconds when it was built.
    pub(crate) sent_ns: u64,
    /// The sender.
    pub(crate) from: ChannelName<'a>,
    /// The receiver: its channel is where the message goes.
    pub(crate) to: ChannelName<'a>,
    /// The sending worker, for ids unique across workers.
    pub(crate) worker: u32,
    /// Payload size in bytes.
    pub(crate) size: usize,
    /// Ask the receiver to acknowledge it (Pushca).
    pub(crate) ack: bool,
    /// Ask the server not to answer a send that succeeds (Herald).
    pub(crate) no_reply: bool,
}

impl PairMessage<'_> {
    pub(crate) fn token(&self) -> Token {
        Token::Pair {
            run: self.run,
            receiver: self.to.index,
            id: self.id,
            sent_ns: self.sent_ns,
        }
    }
}

/// Connects subscribers and publishes for one target.
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    /// The server and transport spoken to, which pick every URL and frame format.
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
                    ws: Box::new(
                        ws_handshake(tcp, &ep.authority, &herald::ws_path(channels)).await?,
                    ),
                    pusher: false,
                },
                Target::Nchan => Conn::Ws {
                    ws: Box::new(
                        ws_handshake(tcp, &ep.authority, &nchan::sub_path(channels)).await?,
                    ),
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
                Target::Pushca => {
                    let [name] = channels else {
                        return Err(BenchError::Config(
                            "a Pushca connection is one client: one channel per connection".into(),
                        ));
                    };
                    Conn::Ws {
                        ws: Box::new(pushca::connect(&self.http, tcp, ep, name).await?),
                        pusher: false,
                    }
                }
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
            Target::Pushca => pushca::send(channel, payload, false),
        };
        let status = self.http.post(&path, &body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(BenchError::Status(status))
        }
    }

    /// Sends `payload` to `channel`'s client over HTTP and waits for its acknowledgement
    /// (Pushca's `/send-notification-with-acknowledge`): `Ok(true)` acknowledged, `Ok(false)`
    /// not acknowledged in time or not connected (408), `Err` otherwise.
    pub(crate) async fn publish_acked(&self, channel: &str, payload: &str) -> Result<bool> {
        if self.target != Target::Pushca {
            return Err(BenchError::Config(format!(
                "{} has no acknowledged send",
                self.target.name()
            )));
        }
        let (path, body) = pushca::send(channel, payload, true);
        match self.http.post(&path, &body).await? {
            200 => Ok(true),
            408 => Ok(false),
            status => Err(BenchError::Status(status)),
        }
    }

    /// The frame that sends `m` from its sender's own WebSocket, where the protocol has one
    /// (Herald's `publish` command, Pushca's `SEND_MESSAGE…`).
    pub(crate) fn ws_send_frame(&self, m: &PairMessage<'_>) -> Option<String> {
        match self.target {
            Target::Herald => Some(herald::ws_publish_frame(
                m.id,
                m.to,
                &m.token(),
                m.size,
                m.no_reply,
            )),
            Target::Pushca => Some(
                pushca::wire::SendFrame {
                    id: pushca::wire::MsgId {
                        sent_ns: m.sent_ns,
                        // 16 bits of worker number in the id; more workers than that never run.
                        worker: (m.worker & 0xffff) as u16,
                        id: m.id,
                    },
                    from: &m.from,
                    to: &m.to,
                    token: m.token(),
                    size: m.size,
                    ack: m.ack,
                }
                .frame(),
            ),
            _ => None,
        }
    }
}
