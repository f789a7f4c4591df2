//! The embedded broker: one node, channels sequenced by the local hub.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{Broker, BrokerError, ChannelKey, Hub, Publication, Published};

/// A broker for a single node: publishing is local fan-out.
pub struct MemoryBroker {
    /// The node's hub, which sequences and delivers every channel.
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
    ) -> Result<Published, BrokerError> {
        Ok(self.hub.publish_local(channel, publication))
    }

    async fn subscribe(&self, _channel: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
