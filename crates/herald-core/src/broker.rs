//! The boundary between nodes: a broker carries messages to every node that
//! has subscribers, and sequences each channel.

use async_trait::async_trait;

use crate::channel::ChannelKey;
use crate::hub::Published;
use crate::message::Publication;

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

    /// Whether the broker can take publishes right now (readiness probe).
    fn is_ready(&self) -> bool;

    /// A short name for logs and metrics ("memory", "redis").
    fn name(&self) -> &'static str;
}
