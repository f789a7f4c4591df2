//! The engine: what transports and dialects call. It ties the local hub to
//! the broker so that neither callers nor dialects hold routing state.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use crate::broker::{Broker, BrokerError, StoredPage};
use crate::channel::ChannelKey;
use crate::history::{History, Position, Recovery, Replay};
use crate::hub::{ChannelInfo, Hub, Published, Subscribed};
use crate::identity::{Directory, Filter, Presence, PresenceChange, SendOutcome, Targeted};
use crate::joins::{self, Joins, Turn};
use crate::message::Publication;
use crate::outbox::{ConnId, Outbox};
use crate::stats::SendStats;

/// How an acknowledged send waits and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// How long each attempt waits for an ack.
    pub timeout: Duration,
    /// Delivery attempts in total (1 = no retry, Pushca's behaviour).
    pub attempts: u32,
    /// Pause before the second attempt; doubles for each later one.
    pub backoff: Duration,
}

impl AckPolicy {
    /// The longest a send with this policy can take: every attempt's wait
    /// plus every backoff.
    pub fn max_wait(&self) -> Duration {
        let attempts = self.attempts.max(1);
        let mut total = self.timeout * attempts;
        for n in 0..attempts.saturating_sub(1) {
            total += self.backoff * 2u32.saturating_pow(n.min(16));
        }
        total
    }
}

/// How an acknowledged send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// A receiver acknowledged, during attempt `attempts`.
    Acked {
        /// Connection that acknowledged.
        conn: ConnId,
        /// Attempts made, the acknowledged one included.
        attempts: u32,
        /// What the first attempt reached.
        first: SendOutcome,
    },
    /// Nobody acknowledged within every attempt's timeout.
    TimedOut {
        /// Attempts made.
        attempts: u32,
        /// What the first attempt reached.
        first: SendOutcome,
    },
    /// The first attempt found no matching connection: nothing was sent.
    NotConnected,
    /// Another send of the same message id is still waiting for its ack.
    InFlight,
}

/// Most stored messages one read of a resume asks a broker for; a resume
/// further behind reads on, page by page, to the head. Small enough that
/// the read past [`MAX_REPLAY_BYTES`] that ends a resume costs little more.
const REPLAY_PAGE: usize = 1_000;

/// Most pages one resume reads: a bound for the loop, far above what a
/// channel's history holds (a resume that would need more is told its
/// messages are too old).
const MAX_REPLAY_PAGES: usize = 1_000;

/// Most message bytes one resume reads from a broker. Each resume holds its
/// own copy of what it replays until the client took it, so a reconnect
/// storm after a node went away would cost clients × history; a client
/// further behind is told its messages are too old, and reloads.
const MAX_REPLAY_BYTES: usize = 32 << 20;

/// The hub and the broker, shared by every connection.
#[derive(Clone)]
pub struct Engine {
    /// Local subscriptions and fan-out.
    hub: Arc<Hub>,
    /// Carries messages between nodes and sequences channels.
    broker: Arc<dyn Broker>,
    /// Local connections by identity, for targeted delivery and acks.
    directory: Arc<Directory>,
    /// Targeted send counters, for metrics.
    send_stats: Arc<SendStats>,
    /// First broker subscribes in flight, which later subscribers wait for.
    joins: Arc<Joins>,
}

impl Engine {
    pub fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Self {
        Self {
            hub,
            broker,
            directory: Arc::default(),
            send_stats: Arc::default(),
            joins: Arc::default(),
        }
    }

    pub fn send_stats(&self) -> &SendStats {
        &self.send_stats
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
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
        let (turn, subscribed) = self.joins.enter(channel, || {
            let subscribed = self.hub.subscribe_with(channel, outbox, replay);
            (subscribed.first_local, subscribed)
        });
        if let Err(e) = self.listen(channel, turn).await {
            self.hub.unsubscribe(channel, outbox.id());
            return Err(e);
        }
        Ok(subscribed)
    }

    /// Makes sure the broker listens to `channel` for this node, as `turn`
    /// says: subscribing as its first local subscriber, or waiting for the
    /// first one's subscribe (and subscribing itself if that failed).
    async fn listen(&self, channel: &ChannelKey, turn: Turn) -> Result<(), BrokerError> {
        match turn {
            Turn::Listening => Ok(()),
            Turn::First(guard) => {
                let (broker, key) = (self.broker.clone(), channel.clone());
                let mut subscribing = Box::pin(async move {
                    let result = broker.subscribe(&key).await;
                    guard.done(result.is_ok());
                    result
                });
                // Most brokers answer at once (the memory broker always).
                let polled = std::future::poll_fn(|cx| Poll::Ready(subscribing.as_mut().poll(cx)));
                if let Poll::Ready(result) = polled.await {
                    return result;
                }
                // Others wait for this subscribe, so it finishes on its own
                // task even if this subscriber goes away meanwhile: a
                // subscribe cut short would send them to subscribe again
                // while its request is still queued at the broker.
                tokio::spawn(subscribing).await.unwrap_or_else(|e| {
                    Err(BrokerError::Unavailable(format!("subscribe task: {e}")))
                })
            }
            Turn::Wait(rx) => {
                if joins::wait(rx).await {
                    Ok(())
                } else {
                    self.broker.subscribe(channel).await
                }
            }
        }
    }

    /// Resume against history kept by the broker: subscribe first with live
    /// messages held back, read history, then merge the two by offset.
    async fn subscribe_from_broker(
        &self,
        channel: &ChannelKey,
        outbox: &Arc<Outbox>,
        replay: Replay<'_>,
    ) -> Result<Subscribed, BrokerError> {
        let (turn, first_local) = self.joins.enter(channel, || {
            let first = self.hub.subscribe_pending(channel, outbox);
            (first, first)
        });
        if let Err(e) = self.listen(channel, turn).await {
            self.hub.unsubscribe(channel, outbox.id());
            return Err(e);
        }
        let limit = replay.wants().unwrap_or(REPLAY_PAGE);
        let after = match &replay {
            Replay::After(p) => Some(p.clone()),
            _ => None,
        };
        let (page, complete) = match self.read_replay(channel, after, limit).await {
            Ok(read) => read,
            Err(e) => {
                // The broker listens now: the last subscriber to leave
                // must tell it, or it listens for good.
                self.unsubscribe(channel, outbox).await;
                return Err(e);
            }
        };
        let history = History::from_messages(page.messages);
        let (recovery, start) = match &replay {
            // The broker sequenced every offset a client holds, so one past
            // its head means it lost writes and may reuse the offsets for
            // messages this client never saw.
            Replay::After(p)
                if p.epoch == page.position.epoch && p.offset > page.position.offset =>
            {
                (Some(Recovery::EpochChanged), None)
            }
            _ if complete => replay.start(&history, &page.position.epoch, page.position.offset + 1),
            _ => (Some(Recovery::TooOld), None),
        };
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

    /// The history a subscribe reads, `limit` at a time: the newest, or
    /// what follows `after` (up to the broker's head); and whether it
    /// reached that head.
    async fn read_replay(
        &self,
        channel: &ChannelKey,
        after: Option<Position>,
        limit: usize,
    ) -> Result<(StoredPage, bool), BrokerError> {
        let since = after.as_ref().map(|p| p.offset);
        let mut page = self.broker.history(channel, since, limit).await?;
        let mut complete = true;
        if after.is_some_and(|p| p.epoch == page.position.epoch) {
            complete = self.read_to_head(channel, &mut page, limit).await?;
        }
        Ok((page, complete))
    }

    /// Extends `page`, read after some offset `limit` at a time, with the
    /// pages after it until it reaches the head it reports. Whether it did
    /// within [`MAX_REPLAY_PAGES`] and [`MAX_REPLAY_BYTES`]. A page from
    /// another epoch (the broker lost its history meanwhile) replaces it:
    /// the resume is judged on it.
    async fn read_to_head(
        &self,
        channel: &ChannelKey,
        page: &mut StoredPage,
        limit: usize,
    ) -> Result<bool, BrokerError> {
        let mut bytes: usize = page.messages.iter().map(|m| m.data().len()).sum();
        for _ in 1..MAX_REPLAY_PAGES {
            if bytes > MAX_REPLAY_BYTES {
                return Ok(false);
            }
            let Some(last) = page.messages.last().map(|m| m.offset) else {
                return Ok(true);
            };
            if page.messages.len() < limit || last >= page.position.offset {
                return Ok(true);
            }
            let next = self.broker.history(channel, Some(last), limit).await?;
            if next.position.epoch != page.position.epoch || next.messages.is_empty() {
                *page = next;
                return Ok(true);
            }
            bytes += next.messages.iter().map(|m| m.data().len()).sum::<usize>();
            page.messages.extend(next.messages);
            page.position = next.position;
        }
        Ok(false)
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
        Ok(Some(ChannelInfo::from_stats(channel.clone(), stats)))
    }

    /// Every channel of `app` with its counts, sorted by name: cluster-wide
    /// when the broker knows the cluster, else this node's.
    pub async fn channel_infos(&self, app: &str) -> Result<Vec<ChannelInfo>, BrokerError> {
        let Some(listed) = self.broker.channels(app).await? else {
            return Ok(self.hub.channels(app));
        };
        let mut infos: Vec<ChannelInfo> = listed
            .into_iter()
            .map(|(key, stats)| ChannelInfo::from_stats(key, stats))
            .collect();
        infos.sort_by(|a, b| a.key.cmp(&b.key));
        // A channel subscribed here a moment ago may not be listed yet.
        for local in self.hub.channels(app) {
            if infos.binary_search_by(|i| i.key.cmp(&local.key)).is_err()
                && let Some(info) = self.channel_info(&local.key).await?
            {
                infos.push(info);
            }
        }
        infos.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(infos)
    }

    /// Deletes `channel` everywhere: subscribers are told and dropped, history
    /// and position are forgotten. Returns the subscribers it had (across the
    /// cluster when the broker counts them), or `None` if it is unknown.
    pub async fn delete(&self, channel: &ChannelKey) -> Result<Option<usize>, BrokerError> {
        let Some(info) = self.channel_info(channel).await? else {
            return Ok(None);
        };
        self.hub.delete(channel);
        self.broker.delete(channel).await?;
        Ok(Some(info.subscribers))
    }

    /// Tells `channel`'s subscribers, on every node, that a connection of
    /// `user` joined or left it.
    pub async fn announce(
        &self,
        channel: &ChannelKey,
        change: PresenceChange,
        user: &str,
    ) -> Result<(), BrokerError> {
        self.hub.announce(channel, change, user);
        self.broker.announce(channel, change, user).await
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

    /// Sends a targeted message once, without waiting for acks (even when
    /// `msg.ack` asks receivers to acknowledge).
    pub async fn send(&self, filter: &Filter, msg: Targeted) -> Result<SendOutcome, BrokerError> {
        let sent = self.broker.send(&self.directory, filter, msg).await?;
        let stats = &self.send_stats;
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        stats
            .delivered
            .fetch_add(sent.delivered as u64, Ordering::Relaxed);
        if sent.matched == 0 {
            stats.unmatched.fetch_add(1, Ordering::Relaxed);
        }
        Ok(sent)
    }

    /// Who is in channel `key`, on every node: connections per user.
    pub async fn presence(&self, key: &ChannelKey) -> Result<Presence, BrokerError> {
        let local = self.directory.presence(&self.hub, key);
        self.broker.presence(local, key).await
    }

    /// Disconnects every connection `filter` selects, cluster-wide: logging
    /// a user out everywhere, or banning one.
    pub async fn disconnect(&self, filter: &Filter) -> Result<SendOutcome, BrokerError> {
        self.broker.disconnect(&self.directory, filter).await
    }

    /// Sends `msg` (marked as needing an ack) and waits until a receiver
    /// acknowledges it. Each attempt re-resolves `filter`, so a retry also
    /// reaches a receiver that reconnected, and carries the same id so
    /// receivers can drop duplicates. Waits at most `policy.max_wait()`.
    pub async fn send_acked(
        &self,
        filter: &Filter,
        msg: Targeted,
        policy: AckPolicy,
    ) -> Result<AckOutcome, BrokerError> {
        let outcome = self.deliver_acked(filter, msg, policy).await?;
        let stats = &self.send_stats;
        match outcome {
            AckOutcome::Acked { .. } => &stats.acked,
            AckOutcome::TimedOut { .. } => &stats.timed_out,
            AckOutcome::NotConnected => &stats.not_connected,
            AckOutcome::InFlight => return Ok(outcome),
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn deliver_acked(
        &self,
        filter: &Filter,
        mut msg: Targeted,
        policy: AckPolicy,
    ) -> Result<AckOutcome, BrokerError> {
        msg.ack = true;
        msg.ack_wait = policy.max_wait();
        let Some(mut waiter) = self.directory.expect_ack(msg.id.clone()) else {
            return Ok(AckOutcome::InFlight);
        };
        let attempts = policy.attempts.max(1);
        let mut first = SendOutcome::default();
        for attempt in 1..=attempts {
            if attempt > 1 {
                let pause = policy.backoff * 2u32.saturating_pow((attempt - 2).min(16));
                // A late ack of an earlier attempt ends the send.
                if let Some(conn) = waiter.wait(pause).await {
                    return Ok(AckOutcome::Acked {
                        conn,
                        attempts: attempt - 1,
                        first,
                    });
                }
            }
            let sent = self.send(filter, msg.clone()).await?;
            waiter.attempted(sent.delivered);
            if attempt == 1 {
                if sent.delivered == 0 {
                    return Ok(AckOutcome::NotConnected);
                }
                first = sent;
            }
            if let Some(conn) = waiter.wait(policy.timeout).await {
                return Ok(AckOutcome::Acked {
                    conn,
                    attempts: attempt,
                    first,
                });
            }
        }
        Ok(AckOutcome::TimedOut { attempts, first })
    }

    /// Acknowledges `id` for connection `conn` of node `node` (this one when
    /// `None` or its own id), for receivers that ack out of band.
    pub async fn acknowledge_on(
        &self,
        node: Option<&str>,
        conn: ConnId,
        id: &str,
    ) -> Result<bool, BrokerError> {
        match node {
            Some(node) if Some(node) != self.broker.node_id() => {
                self.broker.ack_for(node, conn, id).await
            }
            _ => self.acknowledge(conn, id).await,
        }
    }

    /// Connection `conn` acknowledges message `id`. Returns whether `conn`
    /// owed that ack; only then is it routed to the waiting sender.
    pub async fn acknowledge(&self, conn: ConnId, id: &str) -> Result<bool, BrokerError> {
        let Some(to) = self.directory.acknowledge(conn, id) else {
            return Ok(false);
        };
        if let Err(e) = self.broker.ack(&self.directory, id, conn, to.clone()).await {
            self.directory.owe_again(conn, id, to);
            return Err(e);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod ack_tests {
    use super::*;
    use crate::identity::{AckTo, Identity, TargetFormat};
    use crate::message::Raw;
    use bytes::Bytes;

    /// A single-node broker; `failing_acks` acks fail to pass on first.
    struct Memory(Arc<Hub>, std::sync::atomic::AtomicUsize);
    #[async_trait::async_trait]
    impl Broker for Memory {
        async fn publish(&self, c: &ChannelKey, p: Publication) -> Result<Published, BrokerError> {
            Ok(self.0.publish_local(c, p))
        }
        async fn ack(
            &self,
            local: &Directory,
            id: &str,
            conn: ConnId,
            to: AckTo,
        ) -> Result<bool, BrokerError> {
            let failing = &self.1;
            if failing.load(Ordering::Relaxed) > 0 {
                failing.fetch_sub(1, Ordering::Relaxed);
                return Err(BrokerError::Unavailable("ack not passed on".into()));
            }
            Ok(local.ack_here(id, conn, &to))
        }
        async fn subscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn unsubscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            Ok(())
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn name(&self) -> &'static str {
            "test"
        }
    }

    /// Targeted messages as their id, to show retries carry the same one.
    struct ById;
    impl TargetFormat for ById {
        fn encode_targeted(&self, msg: &Targeted) -> Bytes {
            Bytes::copy_from_slice(msg.id.as_bytes())
        }
    }

    fn engine_with(user: &str) -> (Engine, Arc<Outbox>) {
        let hub = Arc::new(Hub::new());
        let engine = Engine::new(hub.clone(), Arc::new(Memory(hub, 0.into())));
        let outbox = Arc::new(Outbox::new(7, Arc::new(Raw), 1 << 20));
        let _ = engine.directory().register(
            Identity::new([("user", user)]),
            outbox.clone(),
            Arc::new(ById),
            None,
        );
        (engine, outbox)
    }

    fn policy(attempts: u32) -> AckPolicy {
        AckPolicy {
            timeout: Duration::from_millis(200),
            attempts,
            backoff: Duration::from_millis(10),
        }
    }

    fn to(user: &str) -> Filter {
        Filter::new(Identity::new([("user", user)]))
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_send_is_retried_with_the_same_id_then_times_out() {
        let (engine, outbox) = engine_with("u");
        let msg = Targeted::new(Bytes::from_static(b"1"));
        let id = msg.id.clone();
        let out = engine.send_acked(&to("u"), msg, policy(3)).await.unwrap();
        assert!(matches!(out, AckOutcome::TimedOut { attempts: 3, .. }));
        let mut frames = Vec::new();
        outbox.drain(&mut frames);
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.bytes == id.as_bytes()));
        assert_eq!(policy(3).max_wait(), Duration::from_millis(630));
    }

    /// An ack that could not be passed on is still owed: the client's
    /// retry of it reaches the sender.
    #[tokio::test(start_paused = true)]
    async fn an_ack_that_failed_to_pass_on_can_be_sent_again() {
        let hub = Arc::new(Hub::new());
        let engine = Engine::new(hub.clone(), Arc::new(Memory(hub, 1.into())));
        let outbox = Arc::new(Outbox::new(7, Arc::new(Raw), 1 << 20));
        let _ = engine.directory().register(
            Identity::new([("user", "u")]),
            outbox.clone(),
            Arc::new(ById),
            None,
        );
        let msg = Targeted::new(Bytes::from_static(b"1"));
        let id = msg.id.clone();
        let e2 = engine.clone();
        let task = tokio::spawn(async move { e2.send_acked(&to("u"), msg, policy(1)).await });
        outbox.ready().await;
        assert!(engine.acknowledge(7, &id).await.is_err(), "not passed on");
        assert!(engine.acknowledge(7, &id).await.unwrap(), "still owed");
        let out = task.await.unwrap().unwrap();
        assert!(matches!(out, AckOutcome::Acked { conn: 7, .. }), "{out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ack_ends_the_send_and_nobody_means_not_connected() {
        let (engine, outbox) = engine_with("u");
        let msg = Targeted::new(Bytes::from_static(b"1"));
        let id = msg.id.clone();
        let e2 = engine.clone();
        let task = tokio::spawn(async move { e2.send_acked(&to("u"), msg, policy(3)).await });
        outbox.ready().await;
        assert!(
            !engine.acknowledge(8, &id).await.unwrap(),
            "not the receiver"
        );
        assert!(engine.acknowledge(7, &id).await.unwrap());
        let out = task.await.unwrap().unwrap();
        assert!(matches!(
            out,
            AckOutcome::Acked {
                conn: 7,
                attempts: 1,
                ..
            }
        ));

        let out = engine
            .send_acked(&to("nobody"), Targeted::new(Bytes::new()), policy(3))
            .await
            .unwrap();
        assert_eq!(out, AckOutcome::NotConnected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recovery;
    use crate::message::{Message, Raw};
    use async_trait::async_trait;
    use bytes::Bytes;
    use parking_lot::Mutex;

    /// A broker that keeps history itself, like Redis, and can publish in
    /// the middle of a history read to exercise the merge.
    struct StoringBroker {
        hub: Arc<Hub>,
        log: Mutex<Vec<Arc<Message>>>,
        publish_during_read: Mutex<Option<Publication>>,
        /// When set, a subscribe waits for one of its permits.
        subscribe_gate: Option<tokio::sync::Semaphore>,
        /// Subscribes asked for.
        subscribes: std::sync::atomic::AtomicUsize,
        /// Unsubscribes asked for.
        unsubscribes: std::sync::atomic::AtomicUsize,
        /// When set, history reads fail.
        history_fails: std::sync::atomic::AtomicBool,
    }

    impl StoringBroker {
        fn new(hub: &Arc<Hub>) -> Self {
            Self {
                hub: hub.clone(),
                log: Mutex::default(),
                publish_during_read: Mutex::default(),
                subscribe_gate: None,
                subscribes: Default::default(),
                unsubscribes: Default::default(),
                history_fails: Default::default(),
            }
        }

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
            self.subscribes.fetch_add(1, Ordering::Relaxed);
            if let Some(gate) = &self.subscribe_gate {
                gate.acquire().await.unwrap().forget();
            }
            Ok(())
        }
        async fn unsubscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            self.unsubscribes.fetch_add(1, Ordering::Relaxed);
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
            if self.history_fails.load(Ordering::Relaxed) {
                return Err(BrokerError::Unavailable("history read failed".into()));
            }
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

    fn text(p: &str) -> Publication {
        Publication::new(Bytes::from(p.to_owned()))
    }

    /// An engine over a broker that stores history, and its channel `c`.
    fn storing() -> (Engine, Arc<StoringBroker>, ChannelKey) {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(StoringBroker::new(&hub));
        let engine = Engine::new(hub, broker.clone());
        (
            engine,
            broker,
            ChannelKey::new(&Arc::from("app"), "c").unwrap(),
        )
    }

    /// A new connection (of `limit` bytes) resuming `key` after `offset`
    /// of epoch `E`.
    async fn resume(
        engine: &Engine,
        key: &ChannelKey,
        offset: u64,
        limit: usize,
    ) -> (Subscribed, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(offset, Arc::new(Raw), limit));
        let since = Position {
            offset,
            epoch: Arc::from("E"),
        };
        let s = engine
            .subscribe_with(key, &outbox, Replay::After(since))
            .await
            .unwrap();
        (s, outbox)
    }

    #[tokio::test]
    async fn resume_from_broker_history_merges_with_live_messages() {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(StoringBroker {
            publish_during_read: Mutex::new(Some(text("4"))),
            ..StoringBroker::new(&hub)
        });
        let engine = Engine::new(hub, broker.clone());
        let key = ChannelKey::new(&Arc::from("app"), "c").unwrap();
        for p in ["1", "2", "3"] {
            engine.publish(&key, text(p)).await.unwrap();
        }
        let (s, outbox) = resume(&engine, &key, 1, 1 << 20).await;
        assert_eq!((s.recovery, s.replayed), (Some(Recovery::Recovered), 2));
        engine.publish(&key, text("5")).await.unwrap();
        let mut frames = Vec::new();
        outbox.drain(&mut frames);
        let got: Vec<_> = frames.iter().map(|f| f.bytes.clone()).collect();
        assert_eq!(got, ["2", "3", "4", "5"].map(|s| Bytes::from(s.to_owned())));
    }

    /// A subscribe whose history read fails after the broker began to
    /// listen leaves nothing behind: not the subscriber, nor the broker's
    /// subscription, which nothing else would ever end.
    #[tokio::test]
    async fn a_failed_history_read_ends_the_brokers_subscription() {
        let (engine, broker, key) = storing();
        broker.history_fails.store(true, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(1, Arc::new(Raw), 1 << 20));
        let since = Position {
            offset: 0,
            epoch: Arc::from("E"),
        };
        let subscribed = engine
            .subscribe_with(&key, &outbox, Replay::After(since))
            .await;
        assert!(subscribed.is_err());
        assert_eq!(broker.subscribes.load(Ordering::Relaxed), 1);
        assert_eq!(broker.unsubscribes.load(Ordering::Relaxed), 1);
        assert_eq!(engine.hub().subscriber_count(&key), 0);
    }

    /// An engine whose broker's subscribes wait until the test lets them
    /// through, and a way to start subscribers (by connection id) to one
    /// channel on tasks of their own.
    fn gated() -> (
        Arc<StoringBroker>,
        impl Fn(u64) -> tokio::task::JoinHandle<Result<(), BrokerError>>,
    ) {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(StoringBroker {
            subscribe_gate: Some(tokio::sync::Semaphore::new(0)),
            ..StoringBroker::new(&hub)
        });
        let engine = Engine::new(hub, broker.clone());
        let key = ChannelKey::new(&Arc::from("app"), "c").unwrap();
        let subscriber = move |id| {
            let (engine, key) = (engine.clone(), key.clone());
            tokio::spawn(async move {
                let outbox = Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20));
                engine.subscribe(&key, &outbox).await.map(|_| ())
            })
        };
        (broker, subscriber)
    }

    #[tokio::test]
    async fn a_second_subscriber_waits_for_the_first_ones_broker_subscribe() {
        let (broker, subscriber) = gated();
        let first = subscriber(1);
        let second = subscriber(2);
        // Both ran as far as they can (one thread: each yield runs the others).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(broker.subscribes.load(Ordering::Relaxed), 1, "asked once");
        assert!(
            !second.is_finished(),
            "not subscribed before the node listens"
        );
        broker.subscribe_gate.as_ref().unwrap().add_permits(1);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(broker.subscribes.load(Ordering::Relaxed), 1);
        // Listening now: a third does not wait.
        subscriber(3).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_resume_further_behind_than_one_read_gets_everything() {
        let (engine, broker, key) = storing();
        let published = 2 * REPLAY_PAGE as u64 + 500;
        for i in 1..=published {
            broker.append(&key, text(&i.to_string()));
        }
        let (s, outbox) = resume(&engine, &key, 1, 1 << 30).await;
        assert_eq!(s.recovery, Some(Recovery::Recovered));
        assert_eq!(s.replayed as u64, published - 1);
        let mut frames = Vec::new();
        outbox.drain(&mut frames);
        let got: Vec<u64> = (frames.iter())
            .map(|f| std::str::from_utf8(&f.bytes).unwrap().parse().unwrap())
            .collect();
        assert_eq!(got, (2..=published).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_resume_past_the_brokers_head_is_told_the_epoch_changed() {
        let (engine, _broker, key) = storing();
        for p in ["1", "2", "3"] {
            engine.publish(&key, text(p)).await.unwrap();
        }
        let told = async |offset| {
            let (s, outbox) = resume(&engine, &key, offset, 1 << 20).await;
            (s.recovery, outbox.queued_bytes())
        };
        assert_eq!(told(3).await, (Some(Recovery::Recovered), 0));
        // Offset 5 was this epoch's once: the broker lost it, and its next
        // messages would take 4 and 5 again.
        assert_eq!(told(5).await, (Some(Recovery::EpochChanged), 0));
    }

    #[tokio::test]
    async fn a_first_subscriber_gone_midway_still_finishes_the_subscribe_others_wait_for() {
        let (broker, subscriber) = gated();
        let first = subscriber(1);
        let second = subscriber(2);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(broker.subscribes.load(Ordering::Relaxed), 1);
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            broker.subscribes.load(Ordering::Relaxed),
            1,
            "the second waits for the subscribe in flight, not asking again"
        );
        assert!(!second.is_finished());
        broker.subscribe_gate.as_ref().unwrap().add_permits(1);
        second.await.unwrap().unwrap();
        assert_eq!(broker.subscribes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_resume_further_behind_than_its_byte_budget_is_too_old() {
        let (engine, broker, key) = storing();
        let big = "x".repeat(1 << 20);
        for _ in 0..(MAX_REPLAY_BYTES >> 20) + 2 {
            broker.append(&key, text(&big));
        }
        let (s, outbox) = resume(&engine, &key, 1, 1 << 20).await;
        assert_eq!((s.recovery, s.replayed), (Some(Recovery::TooOld), 0));
        assert_eq!(outbox.queued_bytes(), 0, "nothing replayed");
    }
}
