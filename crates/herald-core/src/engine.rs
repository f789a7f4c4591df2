//! The engine: what transports and dialects call. It ties the local hub to
//! the broker so that neither callers nor dialects hold routing state.

use std::sync::Arc;

use crate::broker::{Broker, BrokerError};
use crate::channel::ChannelKey;
use crate::hub::{Hub, Published, Replay, Subscribed};
use crate::message::Publication;
use crate::outbox::Outbox;

/// The hub and the broker, shared by every connection.
#[derive(Clone)]
pub struct Engine {
    /// Local subscriptions and fan-out.
    hub: Arc<Hub>,
    /// Carries messages between nodes and sequences channels.
    broker: Arc<dyn Broker>,
}

impl Engine {
    pub fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Self {
        Self { hub, broker }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Subscribes `outbox` to `channel`, telling the broker when this node
    /// gains the channel's first subscriber.
    pub async fn subscribe(
        &self,
        channel: &ChannelKey,
        outbox: &Arc<Outbox>,
    ) -> Result<(), BrokerError> {
        self.subscribe_with(channel, outbox, Replay::None)
            .await
            .map(drop)
    }

    /// Subscribes `outbox` to `channel` after replaying what `replay` selects
    /// from the channel's history.
    pub async fn subscribe_with(
        &self,
        channel: &ChannelKey,
        outbox: &Arc<Outbox>,
        replay: Replay<'_>,
    ) -> Result<Subscribed, BrokerError> {
        let subscribed = self.hub.subscribe_with(channel, outbox, replay);
        if subscribed.first_local
            && let Err(e) = self.broker.subscribe(channel).await
        {
            self.hub.unsubscribe(channel, outbox.id());
            return Err(e);
        }
        Ok(subscribed)
    }

    /// Removes `outbox` from `channel`.
    pub async fn unsubscribe(&self, channel: &ChannelKey, outbox: &Outbox) {
        if self.hub.unsubscribe(channel, outbox.id()) {
            // A failed broker unsubscribe only costs unwanted traffic, which
            // the hub drops; the broker retries on reconnect.
            let _ = self.broker.unsubscribe(channel).await;
        }
    }

    /// Publishes to one channel through the broker.
    pub async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
    ) -> Result<Published, BrokerError> {
        self.broker.publish(channel, publication).await
    }
}
