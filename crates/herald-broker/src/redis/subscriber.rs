//! Which channels this node listens to, and the tasks that keep Redis in line
//! with that: ordered, batched SUBSCRIBE/UNSUBSCRIBE; lazy unsubscribes; and
//! the reader that turns pub/sub pushes into hub deliveries.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use herald_core::{BrokerError, ChannelKey, Delivery, Message, Missing, Position};
use parking_lot::Mutex;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

use super::Inner;
use super::codec;

/// Most channels named in one SUBSCRIBE/UNSUBSCRIBE.
const BATCH: usize = 256;

/// Whether a channel is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Local subscribers exist (or are arriving).
    Active,
    /// The last local subscriber left at this instant; unsubscribed from Redis
    /// once the delay passes, unless a subscriber returns first.
    Leaving(Instant),
    /// A subscribe failed, so Redis may not deliver the channel. Kept while
    /// the hub has subscribers (others may have joined while it was in
    /// flight): reconnects resubscribe it and the sweep retries it.
    Unconfirmed,
    /// Unconfirmed, with the sweep's SUBSCRIBE in flight: not retried again
    /// before it answers, however slow Redis is.
    Retrying,
}

/// A request to the subscriber task. Requests run in the order sent, so an
/// UNSUBSCRIBE queued before a SUBSCRIBE of the same channel never wins.
pub(crate) enum Op {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    /// Subscribe everything wanted, on a fresh connection.
    Resync(oneshot::Sender<Result<(), BrokerError>>),
}

/// The channels this node wants from Redis.
pub(crate) struct Subscriptions {
    /// Wanted channels; the source of truth that reconnects restore.
    pub(crate) channels: Mutex<HashMap<ChannelKey, Want>>,
    /// Feeds the subscriber task.
    pub(crate) ops: mpsc::UnboundedSender<Op>,
}

impl Subscriptions {
    /// The last local subscriber of `channel` left: leave it lazily. An
    /// unconfirmed channel stays unconfirmed: Redis may not deliver it, so a
    /// subscriber that returns before the sweep drops it subscribes again
    /// rather than finding it "still subscribed". Whether it was scheduled.
    pub(crate) fn left(&self, channel: &ChannelKey) -> bool {
        match self.channels.lock().get_mut(channel) {
            Some(want @ (Want::Active | Want::Leaving(_))) => {
                *want = Want::Leaving(Instant::now());
                true
            }
            Some(Want::Unconfirmed | Want::Retrying) | None => false,
        }
    }

    /// `channel` was deleted: the hub dropped its local subscribers at once,
    /// so no last unsubscribe will ever come for them. Leave it lazily, as
    /// after one; the sweep keeps it if a subscriber arrived meanwhile.
    pub(crate) fn deleted(&self, channel: &ChannelKey) {
        if let Some(want @ Want::Active) = self.channels.lock().get_mut(channel) {
            *want = Want::Leaving(Instant::now());
            debug!(%channel, "Unsubscribe scheduled: channel deleted.");
        }
    }
}

/// Runs subscription requests one batch at a time, in order.
pub(crate) async fn run_ops(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut held: Option<Op> = None;
    loop {
        let op = match held.take() {
            Some(op) => op,
            None => match rx.recv().await {
                Some(op) => op,
                None => return,
            },
        };
        match op {
            Op::Resync(done) => {
                let _ = done.send(resync(&inner).await);
            }
            Op::Subscribe(name, done) => {
                let (mut names, mut waiters) = (vec![name], vec![done]);
                while names.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Op::Subscribe(name, done)) => {
                            names.push(name);
                            waiters.push(done);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = subscribe(&inner, &names).await;
                for w in waiters {
                    let _ = w.send(result.as_ref().map(|_| ()).map_err(clone_error));
                }
            }
            Op::Unsubscribe(name) => {
                let mut names = vec![name];
                while names.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Op::Unsubscribe(name)) => names.push(name),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = unsubscribe(&inner, &names).await {
                    // Only costs unwanted traffic, which the hub drops; the
                    // next reconnect starts from the wanted set anyway.
                    debug!(error = %e, count = names.len(), "Unsubscribe failed.");
                }
            }
        }
    }
}

fn clone_error(e: &BrokerError) -> BrokerError {
    match e {
        BrokerError::Unavailable(s) => BrokerError::Unavailable(s.clone()),
        BrokerError::OutcomeUnknown(s) => BrokerError::OutcomeUnknown(s.clone()),
        BrokerError::Protocol(s) => BrokerError::Protocol(s.clone()),
    }
}

async fn subscribe(inner: &Inner, names: &[String]) -> Result<(), BrokerError> {
    let mut conn = inner.subscriber_conn()?;
    let result = super::conn::bounded(inner.config.timeout(), conn.subscribe(names)).await;
    result.map_err(|e| inner.failed(e))?;
    trace!(count = names.len(), "Subscribed batch.");
    Ok(())
}

async fn unsubscribe(inner: &Inner, names: &[String]) -> Result<(), BrokerError> {
    let mut conn = inner.subscriber_conn()?;
    let result = super::conn::bounded(inner.config.timeout(), conn.unsubscribe(names)).await;
    result.map_err(|e| inner.failed(e))?;
    trace!(count = names.len(), "Unsubscribed batch.");
    Ok(())
}

/// Subscribes every wanted channel, the node's direct channel and the
/// session's echo channels.
async fn resync(inner: &Inner) -> Result<(), BrokerError> {
    let echoes = inner.session().map(|s| s.echo_channels).unwrap_or_default();
    let mut names: Vec<String> = inner
        .subs
        .channels
        .lock()
        .keys()
        .map(|k| inner.keys.pubsub(k))
        .collect();
    names.push(inner.keys.node_direct(&inner.config.node_id));
    names.extend(echoes.iter().cloned());
    for chunk in names.chunks(BATCH) {
        subscribe(inner, chunk).await?;
    }
    debug!(count = names.len(), "Resubscribed.");
    Ok(())
}

/// Unsubscribes channels whose last subscriber left more than the delay ago,
/// and unconfirmed ones nobody here wants any more; retries the others.
/// Returns the channels left, so their subscriber counts can be cleared.
pub(crate) fn sweep(inner: &Arc<Inner>) -> Vec<ChannelKey> {
    let delay = inner.config.unsubscribe_delay();
    let ready = inner.ready.load(Ordering::Acquire);
    let mut gone = Vec::new();
    let mut channels = inner.subs.channels.lock();
    channels.retain(|key, want| {
        match swept(want, || inner.hub.subscriber_count(key), ready, delay) {
            Swept::Keep => return true,
            Swept::Retry => {
                retry(inner, key);
                return true;
            }
            Swept::Leave => {}
        }
        // Queued under the lock, so a later subscribe's SUBSCRIBE follows it.
        let _ = inner.subs.ops.send(Op::Unsubscribe(inner.keys.pubsub(key)));
        debug!(channel = %key, "Unsubscribed.");
        gone.push(key.clone());
        false
    });
    gone
}

/// What the sweep does with a wanted channel.
#[derive(Debug, PartialEq, Eq)]
enum Swept {
    Keep,
    /// Subscribe it again (it is now [`Want::Retrying`]).
    Retry,
    /// Unsubscribe it and forget it.
    Leave,
}

/// Decides the sweep's [`Swept`] for `want` (updating it), given its local
/// `subscribers`, whether Redis is `ready`, and the unsubscribe `delay`.
fn swept(
    want: &mut Want,
    subscribers: impl FnOnce() -> usize,
    ready: bool,
    delay: std::time::Duration,
) -> Swept {
    match *want {
        Want::Active => return Swept::Keep,
        Want::Leaving(since) if since.elapsed() < delay => return Swept::Keep,
        _ => {}
    }
    if subscribers() == 0 {
        // A SUBSCRIBE that timed out may still land: unsubscribe too.
        return Swept::Leave;
    }
    match *want {
        Want::Leaving(_) => {
            // A subscriber came back without the engine telling us; keep it.
            *want = Want::Active;
            Swept::Keep
        }
        Want::Unconfirmed if ready => {
            *want = Want::Retrying;
            Swept::Retry
        }
        _ => Swept::Keep,
    }
}

/// Subscribes unconfirmed `key` again; confirms it once Redis answered.
fn retry(inner: &Arc<Inner>, key: &ChannelKey) {
    let (tx, rx) = oneshot::channel();
    let _ = inner
        .subs
        .ops
        .send(Op::Subscribe(inner.keys.pubsub(key), tx));
    let (inner, key) = (inner.clone(), key.clone());
    tokio::spawn(async move {
        let ok = matches!(rx.await, Ok(Ok(())));
        let subscribers = inner.hub.subscriber_count(&key);
        let Some(want) = inner.subs.channels.lock().get_mut(&key).map(|w| {
            retried(w, ok, subscribers);
            *w
        }) else {
            return;
        };
        if want == Want::Active {
            debug!(channel = %key, "Subscribe retried.");
            inner.counts_dirty.notify_one();
        }
    });
}

/// The sweep's retried SUBSCRIBE of a [`Want::Retrying`] channel answered:
/// `ok`, or not (the next sweep retries). Confirmed while the channel has
/// local `subscribers`, else left lazily as the last one would have.
fn retried(want: &mut Want, ok: bool, subscribers: usize) {
    if *want != Want::Retrying {
        // A subscribe of the engine's took over meanwhile.
        return;
    }
    *want = match (ok, subscribers) {
        (false, _) => Want::Unconfirmed,
        (true, 0) => Want::Leaving(Instant::now()),
        (true, _) => Want::Active,
    };
}

/// Hands received messages to fan-out workers, one per channel hash, so a
/// channel with many local subscribers never delays the others for long and
/// each channel keeps its order.
pub(crate) struct Fanout {
    /// One queue per worker task.
    workers: Vec<mpsc::UnboundedSender<Work>>,
    /// Picks a channel's worker.
    hasher: RandomState,
}

impl Fanout {
    /// Starts `n` workers feeding the hub; they end when the `Fanout` drops.
    /// A worker that finds a gap in a channel with history (messages lost
    /// while a connection was down) reads the missing range from Redis.
    pub(crate) fn start(inner: &Arc<Inner>, n: usize) -> Self {
        let workers = (0..n.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
                let inner = inner.clone();
                tokio::spawn(async move {
                    while let Some(work) = rx.recv().await {
                        work.run(&inner);
                    }
                });
                tx
            })
            .collect();
        Self {
            workers,
            hasher: RandomState::new(),
        }
    }

    /// Queues `work` behind everything before it on its channel.
    fn dispatch(&self, work: Work) {
        let i = self.hasher.hash_one(work.channel()) as usize % self.workers.len();
        let _ = self.workers[i].send(work);
    }
}

/// What arrives on a channel's pub/sub, in the order it must take effect:
/// a delete or a presence notice published after a message must not
/// overtake it, so all three take the channel's worker.
enum Work {
    Message(Arc<Message>),
    Deleted(ChannelKey),
    Presence(codec::PresenceNotice),
}

impl Work {
    fn channel(&self) -> &ChannelKey {
        match self {
            Work::Message(msg) => &msg.channel,
            Work::Deleted(channel) => channel,
            Work::Presence(notice) => &notice.channel,
        }
    }

    fn run(self, inner: &Arc<Inner>) {
        match self {
            Work::Message(msg) => {
                if let Delivery::Gap(missing) = inner.hub.deliver(&msg) {
                    tokio::spawn(recover_gap(inner.clone(), msg.channel.clone(), missing));
                }
            }
            Work::Deleted(channel) => {
                if inner.hub.delete(&channel).is_some() {
                    debug!(%channel, "Channel deleted by another node.");
                }
                inner.subs.deleted(&channel);
            }
            Work::Presence(notice) => {
                // The node it came from told its own subscribers; a node
                // taken for dead had its users told to leave already.
                if notice.node != inner.config.node_id && !inner.presence.is_dead(&notice.node) {
                    (inner.hub).announce(&notice.channel, notice.change, &notice.user);
                }
            }
        }
    }
}

/// After a reconnect, finds channels with history whose messages were
/// published while this node was not listening, and recovers them; and
/// channels (with history or not) whose writes Redis lost (a restart from a snapshot or an AOF
/// synced each second, a failover to a replica that lagged), which start
/// over in a new epoch.
pub(crate) async fn catch_up(inner: Arc<Inner>) {
    let channels: Vec<ChannelKey> = inner.subs.channels.lock().keys().cloned().collect();
    for channel in channels {
        let keeps = inner.config.history.limits(&channel).is_some();
        // Read the position, and the last message delivered here with it.
        let last = inner.hub.last_delivered(&channel);
        // Without history nothing is recovered: only a counter Redis rolled
        // back (it would reuse offsets) is looked for.
        if !keeps && last.is_none() {
            continue;
        }
        let since = last
            .as_ref()
            .filter(|_| keeps)
            .map(|(seen, _)| seen.offset - 1);
        let Ok(page) = inner
            .history(&channel, since, usize::from(since.is_some()))
            .await
        else {
            continue;
        };
        if let Some((seen, time_ms)) = &last
            && lost_writes(seen, *time_ms, &page)
        {
            // Its offsets now name other messages (or will): only a new
            // epoch tells clients holding them that their position is void.
            warn!(
                %channel,
                delivered = seen.offset,
                stored = page.offset,
                "Redis lost messages this node delivered; the channel starts a new epoch."
            );
            if let Err(e) = inner.renew_epoch(&channel, &seen.epoch).await {
                warn!(%channel, error = %e, "Renewing the epoch failed.");
            }
            continue;
        }
        if !keeps {
            continue;
        }
        let position = Position {
            offset: page.offset,
            epoch: page.epoch,
        };
        if let Some(missing) = inner.hub.catch_up(&channel, &position) {
            recover_gap(inner.clone(), channel, missing).await;
        }
    }
}

/// Whether Redis lost writes this node delivered, judged from `page` (read
/// after the offset before `seen`'s): in `seen`'s epoch its counter is
/// behind `seen`, or the message it holds at that offset was published at
/// another time than `time_ms` (the offset was reused after the loss).
fn lost_writes(seen: &Position, time_ms: u64, page: &super::History) -> bool {
    if *page.epoch != *seen.epoch {
        return false;
    }
    page.offset < seen.offset
        || page
            .messages
            .first()
            .is_some_and(|m| m.offset == seen.offset && m.publication.time_ms != time_ms)
}

/// Reads what is `missing` from `channel` in history and hands it to the
/// hub, which then releases the messages it held back.
async fn recover_gap(inner: Arc<Inner>, channel: ChannelKey, missing: Missing) {
    let Missing { after, before, id } = missing;
    let count = (before - after - 1) as usize;
    for attempt in 0..3u32 {
        match inner.history(&channel, Some(after), count).await {
            Ok(page) => {
                let recovered = page.messages.into_iter().map(Arc::new).collect();
                debug!(%channel, after, before, "Gap recovered from history.");
                inner.hub.fill(&channel, id, recovered);
                return;
            }
            Err(e) => {
                debug!(%channel, attempt, error = %e, "Gap recovery failed.");
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    warn!(%channel, after, before, "Messages lost: gap not in history.");
    inner.hub.fill(&channel, id, Vec::new());
}

/// What the reader calls for a message on this node's direct channel.
pub type NodeHandler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Reads pushes from the subscriber connections: messages go to fan-out, a
/// lost current connection wakes the supervisor.
pub(crate) async fn run_reader(
    inner: Arc<Inner>,
    fanout: Fanout,
    mut rx: mpsc::UnboundedReceiver<(u64, PushInfo)>,
) {
    let direct = inner.keys.node_direct(&inner.config.node_id);
    while let Some((generation, push)) = rx.recv().await {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let kind = push.kind;
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    warn!(?kind, "Pub/sub push without channel and payload.");
                    continue;
                };
                if inner.keys.is_echo(&name) {
                    inner.echoes.received(&payload);
                    continue;
                }
                let payload = Bytes::from(payload);
                if name == direct.as_bytes() {
                    let handler = inner.node_handler.read().clone();
                    if let Some(handler) = handler {
                        handler(payload);
                    }
                    continue;
                }
                let work = if let Some(notice) = codec::decode_presence(&payload) {
                    Work::Presence(notice)
                } else if let Some(channel) = codec::decode_deleted(&payload) {
                    Work::Deleted(channel)
                } else {
                    match codec::decode(payload) {
                        Ok(msg) => Work::Message(Arc::new(msg)),
                        Err(error) => {
                            warn!(%error, "Undecodable message dropped.");
                            continue;
                        }
                    }
                };
                fanout.dispatch(work);
            }
            PushKind::Disconnection => inner.connection_lost(generation),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriptions(channel: &ChannelKey, want: Want) -> Subscriptions {
        let (ops, _) = mpsc::unbounded_channel();
        let subs = Subscriptions {
            channels: Mutex::default(),
            ops,
        };
        subs.channels.lock().insert(channel.clone(), want);
        subs
    }

    #[test]
    fn an_unconfirmed_channel_left_stays_unconfirmed() {
        let key = ChannelKey::new(&Arc::from("app"), "c").unwrap();
        let subs = subscriptions(&key, Want::Unconfirmed);
        assert!(!subs.left(&key));
        // So the next subscribe finds it unconfirmed and sends SUBSCRIBE,
        // where "leaving" would have read as still subscribed in Redis.
        assert_eq!(subs.channels.lock()[&key], Want::Unconfirmed);

        let subs = subscriptions(&key, Want::Active);
        assert!(subs.left(&key));
        assert!(matches!(subs.channels.lock()[&key], Want::Leaving(_)));
        let unknown = ChannelKey::new(&Arc::from("app"), "other").unwrap();
        assert!(!subs.left(&unknown));
    }

    #[test]
    fn lost_writes_are_a_counter_behind_or_an_offset_reused() {
        let key = ChannelKey::new(&Arc::from("app"), "c").unwrap();
        let at = |offset, epoch: &str| Position {
            offset,
            epoch: Arc::from(epoch),
        };
        let page = |offset, epoch: &str, stored: Option<(u64, u64)>| super::super::History {
            messages: stored
                .map(|(offset, time_ms)| {
                    let mut publication = herald_core::Publication::new(Bytes::new());
                    publication.time_ms = time_ms;
                    Message::new(key.clone(), publication, offset, Arc::from(epoch))
                })
                .into_iter()
                .collect(),
            epoch: Arc::from(epoch),
            offset,
        };
        let seen = at(5, "e");
        assert!(
            !lost_writes(&seen, 50, &page(5, "e", Some((5, 50)))),
            "intact"
        );
        assert!(
            !lost_writes(&seen, 50, &page(9, "e", Some((5, 50)))),
            "moved on"
        );
        assert!(
            !lost_writes(&seen, 50, &page(9, "e", Some((7, 70)))),
            "trimmed"
        );
        assert!(!lost_writes(&seen, 50, &page(2, "f", None)), "a new epoch");
        assert!(
            lost_writes(&seen, 50, &page(3, "e", None)),
            "counter behind"
        );
        assert!(
            lost_writes(&seen, 50, &page(6, "e", Some((5, 61)))),
            "reused"
        );
    }

    #[test]
    fn an_unconfirmed_channel_is_retried_once_at_a_time() {
        let delay = std::time::Duration::from_secs(1);
        let mut want = Want::Unconfirmed;
        assert_eq!(
            swept(&mut want, || 2, false, delay),
            Swept::Keep,
            "not ready"
        );
        assert_eq!(want, Want::Unconfirmed);
        assert_eq!(swept(&mut want, || 2, true, delay), Swept::Retry);
        assert_eq!(want, Want::Retrying);
        // Redis is slow: later sweeps wait for the answer.
        assert_eq!(swept(&mut want, || 2, true, delay), Swept::Keep);
        assert_eq!(swept(&mut want, || 2, true, delay), Swept::Keep);
        retried(&mut want, false, 2);
        assert_eq!(want, Want::Unconfirmed, "failed: the next sweep retries");
        assert_eq!(swept(&mut want, || 2, true, delay), Swept::Retry);
        retried(&mut want, true, 2);
        assert_eq!(want, Want::Active);

        // Confirmed after the last subscriber left: left lazily, not kept.
        let mut want = Want::Retrying;
        retried(&mut want, true, 0);
        assert!(matches!(want, Want::Leaving(_)));
        // Nobody wants it any more: dropped, retry in flight or not.
        for mut want in [Want::Unconfirmed, Want::Retrying] {
            assert_eq!(swept(&mut want, || 0, true, delay), Swept::Leave);
        }
        // An engine subscribe made it active meanwhile: the answer is moot.
        let mut want = Want::Active;
        retried(&mut want, false, 2);
        assert_eq!(want, Want::Active);
    }
}
