//! The engine: what transports and dialects call. It ties the local hub to
//! the broker so that neither callers nor dialects hold routing state.

use std::sync::Arc;

use crate::broker::{Broker, BrokerError, StoredPage};
use crate::channel::ChannelKey;
use crate::history::{History, Position, Replay};
use crate::hub::{ChannelInfo, Hub, Published, Subscribed};
use crate::message::Publication;
use crate::outbox::Outbox;

/// Most stored messages one resume reads from a broker.
const MAX_REPLAY: usize = 10_000;

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
        // Where the broker keeps history, positions come from it: even a
        // plain subscribe asks it, so the client learns a resumable position.
        let from_broker = self.broker.keeps_history()
            && (!matches!(replay, Replay::None) || self.hub.policy().retention(channel).keeps());
        if from_broker {
            return self.subscribe_from_broker(channel, outbox, replay).await;
        }
        let subscribed = self.hub.subscribe_with(channel, outbox, replay);
        if subscribed.first_local
            && let Err(e) = self.broker.subscribe(channel).await
        {
            self.hub.unsubscribe(channel, outbox.id());
            return Err(e);
        }
        Ok(subscribed)
    }

    /// Resume against history kept by the broker: subscribe first with live
    /// messages held back, read history, then merge the two by offset.
    async fn subscribe_from_broker(
        &self,
        channel: &ChannelKey,
        outbox: &Arc<Outbox>,
        replay: Replay<'_>,
    ) -> Result<Subscribed, BrokerError> {
        let first_local = self.hub.subscribe_pending(channel, outbox);
        let fail = |e: BrokerError| {
            self.hub.unsubscribe(channel, outbox.id());
            e
        };
        if first_local {
            self.broker.subscribe(channel).await.map_err(fail)?;
        }
        let since = match &replay {
            Replay::After(p) => Some(p.offset),
            _ => None,
        };
        let limit = replay.wants().unwrap_or(MAX_REPLAY);
        let page = self
            .broker
            .history(channel, since, limit)
            .await
            .map_err(fail)?;
        let history = History::from_messages(page.messages);
        let (recovery, start) =
            replay.start(&history, &page.position.epoch, page.position.offset + 1);
        let replayed: Vec<_> = start
            .map(|from| history.iter().skip(from).cloned().collect())
            .unwrap_or_default();
        self.hub
            .activate(channel, outbox.id(), &replayed, &page.position);
        Ok(Subscribed {
            first_local,
            replayed: replayed.len(),
            recovery,
            position: page.position,
        })
    }

    /// Reads stored messages of `channel` wherever history lives: after
    /// `since` (up to `limit`) or the newest `limit`. `None` when the channel
    /// is unknown to a hub that keeps history locally.
    pub async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Option<StoredPage>, BrokerError> {
        if self.broker.keeps_history() {
            return self.broker.history(channel, since, limit).await.map(Some);
        }
        Ok(self
            .hub
            .with_history(channel, |history, epoch, next_offset| {
                let from = match since {
                    Some(s) => history.iter().take_while(|m| m.offset <= s).count(),
                    None => history.len().saturating_sub(limit),
                };
                StoredPage {
                    messages: history.iter().skip(from).take(limit).cloned().collect(),
                    position: Position {
                        offset: next_offset - 1,
                        epoch: epoch.clone(),
                    },
                }
            }))
    }

    /// Counts for `channel`: across the cluster when the broker knows them,
    /// else this node's.
    pub async fn channel_info(
        &self,
        channel: &ChannelKey,
    ) -> Result<Option<ChannelInfo>, BrokerError> {
        let Some(stats) = self.broker.channel_stats(channel).await? else {
            return Ok(self.hub.channel_info(channel));
        };
        Ok(Some(ChannelInfo {
            key: channel.clone(),
            subscribers: stats.subscribers,
            published: stats.position.offset,
            next_offset: stats.position.offset + 1,
            epoch: stats.position.epoch,
            stored: stats.stored,
        }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recovery;
    use crate::message::{Format, Message};
    use async_trait::async_trait;
    use bytes::Bytes;
    use parking_lot::Mutex;

    /// A broker that keeps history itself, like Redis, and can publish in
    /// the middle of a history read to exercise the merge.
    struct StoringBroker {
        hub: Arc<Hub>,
        log: Mutex<Vec<Arc<Message>>>,
        publish_during_read: Mutex<Option<Publication>>,
    }

    impl StoringBroker {
        fn append(&self, channel: &ChannelKey, publication: Publication) -> Published {
            let mut log = self.log.lock();
            let offset = log.len() as u64 + 1;
            let msg = Arc::new(Message::new(
                channel.clone(),
                publication,
                offset,
                Arc::from("E"),
            ));
            log.push(msg.clone());
            let subscribers = match self.hub.deliver(&msg) {
                crate::hub::Delivery::Reached(n) => n,
                _ => 0,
            };
            Published {
                id: msg.publication.id.clone(),
                offset,
                epoch: msg.epoch.clone(),
                subscribers,
            }
        }
    }

    #[async_trait]
    impl Broker for StoringBroker {
        async fn publish(
            &self,
            channel: &ChannelKey,
            publication: Publication,
        ) -> Result<Published, BrokerError> {
            Ok(self.append(channel, publication))
        }
        async fn subscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn unsubscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            Ok(())
        }
        fn keeps_history(&self) -> bool {
            true
        }
        async fn history(
            &self,
            channel: &ChannelKey,
            since: Option<u64>,
            limit: usize,
        ) -> Result<StoredPage, BrokerError> {
            let page = {
                let log = self.log.lock();
                let messages: Vec<_> = log
                    .iter()
                    .filter(|m| since.is_none_or(|s| m.offset > s))
                    .take(limit)
                    .cloned()
                    .collect();
                StoredPage {
                    messages,
                    position: Position {
                        offset: log.len() as u64,
                        epoch: Arc::from("E"),
                    },
                }
            };
            // A publish lands after the read but before the subscriber is live.
            if let Some(p) = self.publish_during_read.lock().take() {
                self.append(channel, p);
            }
            Ok(page)
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn name(&self) -> &'static str {
            "storing"
        }
    }

    struct Raw;
    impl Format for Raw {
        fn slot(&self) -> usize {
            0
        }
        fn encode(&self, msg: &Message) -> Bytes {
            Bytes::copy_from_slice(msg.data())
        }
    }

    fn text(p: &str) -> Publication {
        Publication::new(Bytes::from(p.to_owned()))
    }

    #[tokio::test]
    async fn resume_from_broker_history_merges_with_live_messages() {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(StoringBroker {
            hub: hub.clone(),
            log: Mutex::default(),
            publish_during_read: Mutex::new(Some(text("4"))),
        });
        let engine = Engine::new(hub, broker.clone());
        let key = ChannelKey::new(&Arc::from("app"), "c").unwrap();
        for p in ["1", "2", "3"] {
            engine.publish(&key, text(p)).await.unwrap();
        }
        let outbox = Arc::new(Outbox::new(1, Arc::new(Raw), 1 << 20));
        let since = Position {
            offset: 1,
            epoch: Arc::from("E"),
        };
        let s = engine
            .subscribe_with(&key, &outbox, Replay::After(since))
            .await
            .unwrap();
        assert_eq!((s.recovery, s.replayed), (Some(Recovery::Recovered), 2));
        engine.publish(&key, text("5")).await.unwrap();
        let mut frames = Vec::new();
        outbox.drain(&mut frames);
        let got: Vec<_> = frames.iter().map(|f| f.bytes.clone()).collect();
        assert_eq!(got, ["2", "3", "4", "5"].map(|s| Bytes::from(s.to_owned())));
    }
}
