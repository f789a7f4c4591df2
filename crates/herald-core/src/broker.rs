//! The boundary between nodes: a broker carries messages to every node that
//! has subscribers, and sequences each channel.

use async_trait::async_trait;

use crate::channel::ChannelKey;
use crate::hub::Published;
use crate::identity::{Directory, Filter, SendOutcome, Targeted};
use crate::message::Publication;
use crate::outbox::ConnId;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached; callers answer 503 and retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with something this node cannot use.
    #[error("broker protocol error: {0}")]
    Protocol(String),
}

/// Carries messages between nodes.
///
/// `publish` assigns the message its channel offset (atomically with storing
/// it, for brokers that keep history) and gets it to every node that
/// subscribed to the channel, this one included, which feeds it to the
/// [`Hub`](crate::hub::Hub). `subscribe`/`unsubscribe` tell the broker which
/// channels have local subscribers, so a node only receives what it needs.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes to one channel. Resolves once the broker accepted it.
    async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
    ) -> Result<Published, BrokerError>;

    /// This node gained its first local subscriber on `channel`.
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// This node lost its last local subscriber on `channel`. Brokers may
    /// defer the actual unsubscribe so that channel churn stays cheap.
    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Delivers a targeted message to the connections `filter` selects. One
    /// call is one delivery attempt; the engine retries and waits for acks.
    ///
    /// The default delivers on this node only, through `local`. A cluster
    /// broker overrides it to reach matching connections on every node
    /// (and must then keep `find_any` to exactly one match cluster-wide).
    async fn send(
        &self,
        local: &Directory,
        filter: &Filter,
        msg: Targeted,
    ) -> Result<SendOutcome, BrokerError> {
        Ok(local.deliver(filter, &msg))
    }

    /// Carries a receiver's ack of message `id` (already checked against the
    /// receiving connection `conn`) to the node whose sender waits for it.
    /// Returns whether a sender was waiting.
    ///
    /// The default resolves the waiter on this node only, through `local`.
    async fn ack(&self, local: &Directory, id: &str, conn: ConnId) -> Result<bool, BrokerError> {
        Ok(local.ack_received(id, conn))
    }

    /// Whether the broker can take publishes right now (readiness probe).
    fn is_ready(&self) -> bool;

    /// A short name for logs and metrics ("memory", "redis").
    fn name(&self) -> &'static str;
}
