//! The embedded broker: one node, channels sequenced by the local hub.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::records::LocalRecords;
use herald_core::{Broker, BrokerError, ChannelKey, Hub, Publication, Published, Record};

/// A broker for a single node: publishing is local fan-out.
pub struct MemoryBroker {
    /// The node's hub, which sequences and delivers every channel.
    hub: Arc<Hub>,
    /// Records and leases, in process: there is no other node to share with.
    records: LocalRecords,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            records: LocalRecords::default(),
        }
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

    async fn create_record(
        &self,
        kind: &str,
        record: Record,
        ttl: Option<Duration>,
    ) -> Result<bool, BrokerError> {
        Ok(self.records.create(kind, record, ttl))
    }

    async fn record(&self, kind: &str, id: &str) -> Result<Option<Record>, BrokerError> {
        Ok(self.records.get(kind, id))
    }

    async fn records(&self, kind: &str) -> Result<Vec<Record>, BrokerError> {
        Ok(self.records.list(kind))
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, BrokerError> {
        Ok(self.records.delete(kind, id))
    }

    async fn lease(&self, name: &str, ttl: Duration) -> Result<bool, BrokerError> {
        Ok(self.records.lease(name, ttl))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
