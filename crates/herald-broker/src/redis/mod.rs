//! The Redis broker: many Herald nodes acting as one.
//!
//! - Messages travel over Redis pub/sub, sharded pub/sub on a cluster; a node
//!   subscribes only to channels with local subscribers ([`subscriber`]).
//! - One Lua script per publish assigns the offset and the publish time,
//!   keeps the epoch, appends to history and broadcasts, atomically
//!   ([`script`]), in a compact frame ([`codec`]) under per-channel
//!   hash-tagged names ([`keys`]).
//! - Publishes report the cluster-wide subscriber count ([`counts`]).
//! - Presence events outlive a node that dies: its joins are kept in a
//!   ledger, and the others tell its users' leaves ([`presence`]).
//! - A supervisor checks both connections (a PING, and a message sent to
//!   itself through every server: [`echo`]), rebuilds them when Redis goes
//!   away or a connection dies silently, and resubscribes every wanted
//!   channel ([`session`]).
// The overview above names the private modules for readers of the source.
#![allow(rustdoc::private_intra_doc_links)]

mod codec;
mod config;
mod conn;
mod counts;
mod echo;
mod identity;
mod keys;
mod presence;
mod records;
mod script;
mod session;
mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::identity::{AckTo, Directory, Filter, Presence, SendOutcome, Targeted};
use herald_core::{
    Broker, BrokerError, ChannelKey, ChannelStats, ConnId, Hub, Message, Position, PresenceChange,
    Publication, Published, Record, StoredPage,
};
use parking_lot::{Mutex, RwLock};
use redis::{RedisError, Value};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info};

pub use config::{HistoryLimits, HistoryPolicy, RedisConfig, random_node_id};
pub use keys::slot;
pub use subscriber::NodeHandler;

use conn::{Conn, bounded};
use keys::Keys;
use session::Session;
use subscriber::{Op, Subscriptions, Want};

/// Most channels a listing reads from Redis.
const MAX_LISTED: usize = 100_000;

/// A [`Broker`] over Redis or Redis Cluster.
pub struct RedisBroker {
    /// State shared with the background tasks.
    inner: Arc<Inner>,
    /// Supervisor, subscriber, reader, sweeper and count tasks; aborted on
    /// drop, or by [`Broker::leave`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Cross-node targeting, once enabled.
    router: OnceLock<Arc<identity::Router>>,
    /// The identity registry sync task, once targeting is enabled.
    sync_task: Mutex<Option<JoinHandle<()>>>,
}

/// Channel history as read by [`RedisBroker::history`].
#[derive(Debug)]
pub struct History {
    /// Messages in offset order. When reading `since` an offset and the first
    /// message is past `since + 1`, the messages between were trimmed.
    pub messages: Vec<Message>,
    /// The channel's current epoch; empty if the channel has no state in Redis.
    pub epoch: Arc<str>,
    /// The channel's last assigned offset (0 if none).
    pub offset: u64,
}

pub(crate) struct Inner {
    /// Settings, fixed after connect.
    config: RedisConfig,
    /// Whether Redis is a cluster (sharded pub/sub, per-node routing).
    cluster: bool,
    /// Receives messages for local subscribers.
    hub: Arc<Hub>,
    /// Names of keys and pub/sub channels.
    keys: Keys,
    /// The live connections, or `None` while Redis is unreachable.
    session: RwLock<Option<Session>>,
    /// Set once a session is established and resubscribed; cleared on any
    /// sign of a dead connection. Publishes fail fast while it is false.
    ready: AtomicBool,
    /// Numbers sessions, so a late disconnect of an old one is ignored.
    generation: AtomicU64,
    /// Wakes the supervisor to probe (or rebuild) now.
    wake: Notify,
    /// Wakes the count task after a subscribe.
    counts_dirty: Notify,
    /// Channels wanted from Redis and the queue of subscription requests.
    subs: Subscriptions,
    /// Where direct node-to-node messages go.
    node_handler: RwLock<Option<NodeHandler>>,
    /// Where the supervisor sends pushes of new subscriber connections.
    push_tx: conn::PushTx,
    /// Echo round trips in flight.
    echoes: echo::Echoes,
    /// This node's presence ledger, and which other nodes are dead.
    presence: presence::Presence,
}

impl RedisBroker {
    /// Connects to Redis, starts the background tasks and returns once the
    /// broker is ready. Fails if Redis cannot be reached now.
    pub async fn connect(config: RedisConfig, hub: Arc<Hub>) -> Result<Arc<Self>, BrokerError> {
        config.validate().map_err(BrokerError::Protocol)?;
        let cluster = match config.cluster {
            Some(c) => c,
            None => bounded(config.timeout(), conn::detect_cluster(&config))
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?,
        };
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cluster,
            hub: hub.clone(),
            keys: Keys::new(&config.key_prefix),
            session: RwLock::new(None),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            wake: Notify::new(),
            counts_dirty: Notify::new(),
            subs: Subscriptions {
                channels: Mutex::default(),
                ops: ops_tx,
            },
            node_handler: RwLock::new(None),
            push_tx,
            echoes: echo::Echoes::default(),
            presence: presence::Presence::default(),
            config,
        });
        let fanout = subscriber::Fanout::start(&inner, inner.config.fanout_workers);
        let mut tasks = vec![
            tokio::spawn(subscriber::run_ops(inner.clone(), ops_rx)),
            tokio::spawn(subscriber::run_reader(inner.clone(), fanout, push_rx)),
        ];
        // Abort the tasks started so far if the first session fails.
        let guard = Self {
            inner: inner.clone(),
            tasks: Mutex::new(std::mem::take(&mut tasks)),
            router: OnceLock::new(),
            sync_task: Mutex::new(None),
        };
        session::establish(&inner).await?;
        let mut broker = guard;
        broker.tasks.get_mut().extend([
            tokio::spawn(session::run_supervisor(inner.clone())),
            tokio::spawn(session::run_sweeper(inner.clone())),
            tokio::spawn(counts::run_counts(inner.clone())),
            tokio::spawn(presence::run_watch(inner.clone())),
        ]);
        info!(cluster, node_id = %inner.config.node_id, "Redis broker connected.");
        Ok(Arc::new(broker))
    }

    /// This node's id in Redis.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// How many times the connections were replaced since connect (after
    /// Redis went away, or a probe found a connection dead). For metrics.
    pub fn reconnects(&self) -> u64 {
        self.inner
            .generation
            .load(Ordering::Acquire)
            .saturating_sub(1)
    }

    /// Whether Redis is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// Reads `channel`'s history: with `since`, up to `limit` messages after
    /// that offset, oldest first; without, the newest `limit` messages, in
    /// offset order. Messages older than the channel's history TTL are left out.
    pub async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner.history(channel, since, limit).await
    }

    /// Sends `bytes` to node `node_id`'s direct channel. Returns whether a
    /// node received it.
    pub async fn send_to_node(&self, node_id: &str, bytes: Bytes) -> Result<bool, BrokerError> {
        send_to_node(&self.inner, node_id, bytes).await
    }

    /// Routes targeted sends and acks to every node through `directory`
    /// (this node's identified connections) and a registry in Redis. Takes
    /// over the node-message handler.
    pub fn enable_targeting(&self, directory: Arc<Directory>) {
        let router = Arc::new(identity::Router::new(directory));
        if self.router.set(router.clone()).is_err() {
            return;
        }
        let inner = self.inner.clone();
        let handler_router = router.clone();
        self.on_node_message(move |bytes| identity::on_message(&inner, &handler_router, bytes));
        self.sync_task
            .lock()
            .replace(tokio::spawn(identity::run_sync(self.inner.clone(), router)));
    }

    /// Calls `handler` with every message sent to this node by
    /// [`RedisBroker::send_to_node`]. Replaces any earlier handler.
    pub fn on_node_message(&self, handler: impl Fn(Bytes) + Send + Sync + 'static) {
        *self.inner.node_handler.write() = Some(Arc::new(handler));
    }

    /// Whether node `node_id` refreshed its liveness key recently.
    pub async fn node_alive(&self, node_id: &str) -> Result<bool, BrokerError> {
        node_alive(&self.inner, node_id).await
    }

    /// The Redis pub/sub channel carrying `channel` (for diagnostics).
    pub fn pubsub_channel(&self, channel: &ChannelKey) -> String {
        self.inner.keys.pubsub(channel)
    }

    /// Whether this node is currently subscribed in Redis to `channel`
    /// (including a pending lazy unsubscribe).
    pub fn is_subscribed(&self, channel: &ChannelKey) -> bool {
        self.inner.subs.channels.lock().contains_key(channel)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .iter()
            .chain(self.sync_task.get_mut().as_ref())
        {
            task.abort();
        }
    }
}

/// Publishes `bytes` on node `node_id`'s direct channel; whether a node heard.
/// Unanswered in time, it is [`BrokerError::OutcomeUnknown`]: Redis may
/// still deliver it, and that node act on it.
pub(crate) async fn send_to_node(
    inner: &Inner,
    node_id: &str,
    bytes: Bytes,
) -> Result<bool, BrokerError> {
    let mut conn = inner.ready_publisher()?;
    let cmd = conn.publish_command();
    let receivers: u64 = bounded(
        inner.config.timeout(),
        redis::cmd(cmd)
            .arg(inner.keys.node_direct(node_id))
            .arg(bytes.as_ref())
            .query_async(&mut conn),
    )
    .await
    .map_err(|e| inner.unanswered(e))?;
    Ok(receivers > 0)
}

/// Removes what this node keeps in Redis for the others: its subscriber
/// count in every channel it listens to, its identity registry entries and
/// its liveness key.
async fn leave_cluster(
    inner: &Inner,
    router: Option<&Arc<identity::Router>>,
) -> Result<(), BrokerError> {
    let conn = inner.publisher_conn()?;
    let me = inner.config.node_id.as_str();
    let channels: Vec<ChannelKey> = inner.subs.channels.lock().keys().cloned().collect();
    // One command per channel: on a cluster each lives in its own slot.
    for chunk in channels.chunks(512) {
        let removals = chunk.iter().map(|key| {
            let mut conn = conn.clone();
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(inner.keys.subscribers(key)).arg(me);
            async move { hdel.query_async::<()>(&mut conn).await }
        });
        for removed in futures_util::future::join_all(removals).await {
            removed.map_err(|e| inner.failed(e))?;
        }
    }
    if let Some(router) = router {
        identity::unregister(inner, router, conn.clone()).await?;
    }
    let mut conn = conn;
    redis::cmd("DEL")
        .arg(inner.keys.node(me))
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| inner.failed(e))
}

/// Whether node `node_id` refreshed its liveness key recently.
pub(crate) async fn node_alive(inner: &Inner, node_id: &str) -> Result<bool, BrokerError> {
    let mut conn = inner.publisher_conn()?;
    bounded(
        inner.config.timeout(),
        redis::cmd("EXISTS")
            .arg(inner.keys.node(node_id))
            .query_async::<bool>(&mut conn),
    )
    .await
    .map_err(|e| inner.failed(e))
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.ready_publisher()?;
        let body = codec::encode_body(channel, &publication)
            .map_err(|e| BrokerError::Protocol(e.to_string()))?;
        let limits = inner.config.history.limits(channel);
        let (max_len, history_ttl) = limits.map_or((0, 0), |l| (l.max_len, l.ttl.as_secs().max(1)));
        let meta_ttl = inner.meta_ttl(history_ttl);
        let mut call = script::PUBLISH.prepare_invoke();
        call.key(inner.keys.meta(channel))
            .key(inner.keys.history(channel))
            .key(inner.keys.subscribers(channel))
            .arg(body.as_ref())
            .arg(inner.keys.pubsub(channel))
            .arg(conn.publish_command())
            .arg(new_epoch())
            .arg(meta_ttl)
            .arg(max_len)
            .arg(history_ttl)
            .arg(script::EXACT_TRIM_BELOW);
        let (offset, epoch, subscribers): (u64, String, u64) =
            bounded(inner.config.timeout(), call.invoke_async(&mut conn))
                .await
                .map_err(|e| inner.unanswered(e))?;
        Ok(Published {
            id: publication.id,
            offset,
            epoch: Arc::from(epoch),
            subscribers: subscribers as usize,
        })
    }

    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if !inner.ready.load(Ordering::Acquire) {
            // Subscribers may join the hub before the engine drops this
            // one (they wait for it, then ask for themselves): keep the
            // channel wanted (the sweep forgets it if none stays).
            inner
                .subs
                .channels
                .lock()
                .entry(channel.clone())
                .or_insert(Want::Unconfirmed);
            return Err(BrokerError::Unavailable("redis: not connected".into()));
        }
        {
            let mut channels = inner.subs.channels.lock();
            match channels.get_mut(channel) {
                Some(want @ (Want::Active | Want::Leaving(_))) => {
                    // Still subscribed in Redis: a pending unsubscribe is cancelled.
                    *want = Want::Active;
                    debug!(%channel, "Unsubscribe cancelled.");
                    return Ok(());
                }
                Some(want @ (Want::Unconfirmed | Want::Retrying)) => *want = Want::Active,
                None => {
                    channels.insert(channel.clone(), Want::Active);
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let _ = inner
            .subs
            .ops
            .send(Op::Subscribe(inner.keys.pubsub(channel), tx));
        // The request may queue behind a batch; allow for one ahead of it.
        let result = match tokio::time::timeout(inner.config.timeout() * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Unavailable("redis: broker stopped".into())),
            Err(_) => Err(BrokerError::Unavailable(
                "redis: subscribe timed out".into(),
            )),
        };
        match result {
            Ok(()) => {
                debug!(%channel, "Subscribed.");
                inner.counts_dirty.notify_one();
                Ok(())
            }
            Err(e) => {
                // Not removed: a subscriber that joined the hub while this
                // was in flight asks again, and needs the channel. The
                // sweep drops it once the hub has none.
                if let Some(want @ Want::Active) = inner.subs.channels.lock().get_mut(channel) {
                    *want = Want::Unconfirmed;
                }
                debug!(%channel, error = %e, "Subscribe failed.");
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        if self.inner.subs.left(channel) {
            debug!(%channel, "Unsubscribe scheduled.");
        }
        Ok(())
    }

    async fn send(
        &self,
        local: &Directory,
        filter: &Filter,
        msg: Targeted,
    ) -> Result<SendOutcome, BrokerError> {
        match self.router.get() {
            Some(router) => identity::send(&self.inner, router, filter, msg).await,
            None => Ok(local.deliver(filter, &msg)),
        }
    }

    async fn presence(&self, local: Presence, key: &ChannelKey) -> Result<Presence, BrokerError> {
        match self.router.get() {
            Some(router) => identity::presence(&self.inner, router, local, key).await,
            None => Ok(local),
        }
    }

    async fn disconnect(
        &self,
        local: &Directory,
        filter: &Filter,
    ) -> Result<SendOutcome, BrokerError> {
        match self.router.get() {
            Some(router) => identity::disconnect(&self.inner, router, filter).await,
            None => Ok(local.disconnect(filter)),
        }
    }

    async fn ack(
        &self,
        local: &Directory,
        id: &str,
        conn: ConnId,
        to: AckTo,
    ) -> Result<bool, BrokerError> {
        match self.router.get() {
            Some(router) => identity::ack(&self.inner, router, id, conn, to).await,
            None => Ok(local.ack_here(id, conn, &to)),
        }
    }

    fn node_id(&self) -> Option<&str> {
        Some(&self.inner.config.node_id)
    }

    async fn ack_for(&self, node: &str, conn: ConnId, id: &str) -> Result<bool, BrokerError> {
        match self.router.get() {
            Some(router) => identity::ack_for(&self.inner, router, node, conn, id).await,
            None => Ok(false),
        }
    }

    async fn leave(&self) {
        // What is still being announced goes out; what is not, the other
        // nodes tell from the ledger once this one's liveness key is gone.
        self.inner.presence.close(self.inner.config.timeout()).await;
        // Stopped first, and awaited: nothing may write an entry again
        // after it was removed.
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .drain(..)
            .chain(self.sync_task.lock().take())
            .collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let inner = &self.inner;
        let removed = tokio::time::timeout(
            inner.config.timeout(),
            leave_cluster(inner, self.router.get()),
        )
        .await;
        match removed {
            Ok(Ok(())) => info!("Left the cluster: counts and registrations removed."),
            Ok(Err(error)) => info!(%error, "Left the cluster; Redis entries left to expire."),
            Err(_) => info!("Left the cluster; Redis did not answer, entries left to expire."),
        }
    }

    fn keeps_history(&self) -> bool {
        true
    }

    async fn delete(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let inner = &self.inner;
        // The engine emptied the local channel already, even if Redis fails.
        inner.subs.deleted(channel);
        let mut conn = inner.ready_publisher()?;
        let notice =
            codec::encode_deleted(channel).map_err(|e| BrokerError::Protocol(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(inner.keys.meta(channel))
            .arg(inner.keys.history(channel))
            .arg(inner.keys.subscribers(channel))
            .ignore()
            .cmd(conn.publish_command())
            .arg(inner.keys.pubsub(channel))
            .arg(notice.as_ref())
            .ignore();
        // Unanswered, the delete may still run when Redis resumes.
        bounded(inner.config.timeout(), pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|e| inner.unanswered(e))
    }

    async fn announce(
        &self,
        channel: &ChannelKey,
        change: PresenceChange,
        user: &str,
    ) -> Result<(), BrokerError> {
        presence::announce(&self.inner, channel, change, user).await
    }

    async fn channel_stats(
        &self,
        channel: &ChannelKey,
    ) -> Result<Option<ChannelStats>, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.publisher_conn()?;
        let mut call = script::STATS.prepare_invoke();
        call.key(inner.keys.meta(channel))
            .key(inner.keys.history(channel))
            .key(inner.keys.subscribers(channel));
        let (epoch, offset, stored, subscribers): (String, u64, u64, u64) =
            bounded(inner.config.timeout(), call.invoke_async(&mut conn))
                .await
                .map_err(|e| inner.failed(e))?;
        if epoch.is_empty() && subscribers == 0 {
            return Ok(None);
        }
        Ok(Some(ChannelStats {
            subscribers: subscribers as usize,
            stored: stored as usize,
            position: Position {
                offset,
                epoch: Arc::from(epoch),
            },
        }))
    }

    async fn channels(
        &self,
        app: &str,
    ) -> Result<Option<Vec<(ChannelKey, ChannelStats)>>, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.publisher_conn()?;
        let keys = bounded(
            inner.config.timeout() * 4,
            conn.scan(&inner.keys.channel_pattern(app), MAX_LISTED),
        )
        .await
        .map_err(|e| inner.failed(e))?;
        let app: Arc<str> = Arc::from(app);
        let mut channels: Vec<ChannelKey> = keys
            .iter()
            .filter_map(|k| inner.keys.channel_of(k, &app))
            .collect();
        channels.sort();
        channels.dedup();
        let mut listed = Vec::with_capacity(channels.len());
        for chunk in channels.chunks(256) {
            let stats = futures_util::future::join_all(chunk.iter().map(|k| self.channel_stats(k)));
            for (key, stats) in chunk.iter().zip(stats.await) {
                if let Some(stats) = stats? {
                    listed.push((key.clone(), stats));
                }
            }
        }
        Ok(Some(listed))
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> Result<StoredPage, BrokerError> {
        let page = RedisBroker::history(self, channel, since, limit).await?;
        Ok(StoredPage {
            messages: page.messages.into_iter().map(Arc::new).collect(),
            position: Position {
                offset: page.offset,
                epoch: page.epoch,
            },
        })
    }

    async fn create_record(
        &self,
        kind: &str,
        record: Record,
        ttl: Option<Duration>,
    ) -> Result<bool, BrokerError> {
        records::create(&self.inner, kind, record, ttl).await
    }

    async fn record(&self, kind: &str, id: &str) -> Result<Option<Record>, BrokerError> {
        records::get(&self.inner, kind, id).await
    }

    async fn records(&self, kind: &str) -> Result<Vec<Record>, BrokerError> {
        records::list(&self.inner, kind).await
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, BrokerError> {
        records::delete(&self.inner, kind, id).await
    }

    async fn lease(&self, name: &str, ttl: Duration) -> Result<bool, BrokerError> {
        records::lease(&self.inner, name, ttl).await
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

impl Inner {
    /// See [`RedisBroker::history`].
    pub(crate) async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let inner = self;
        let mut conn = inner.publisher_conn()?;
        let mut call = script::HISTORY.prepare_invoke();
        call.key(inner.keys.meta(channel))
            .key(inner.keys.history(channel))
            .arg(since.map(|s| s.to_string()).unwrap_or_default())
            .arg(limit);
        let reply: Value = bounded(inner.config.timeout(), call.invoke_async(&mut conn))
            .await
            .map_err(|e| inner.failed(e))?;
        let (epoch, offset, entries) = parse_history(reply)?;
        let min_time = inner
            .config
            .history
            .limits(channel)
            .map(|l| herald_core::message::now_ms().saturating_sub(l.ttl.as_millis() as u64));
        let mut messages = Vec::with_capacity(entries.len());
        for frame in entries {
            let msg = codec::decode(frame).map_err(|e| BrokerError::Protocol(e.to_string()))?;
            if min_time.is_none_or(|t| msg.publication.time_ms >= t) {
                messages.push(msg);
            }
        }
        if since.is_none() {
            messages.reverse();
        }
        Ok(History {
            messages,
            epoch: Arc::from(epoch),
            offset,
        })
    }

    /// How long `channel`'s offset and epoch outlive its last write: at
    /// least as long as its history (`history_ttl`, seconds).
    fn meta_ttl(&self, history_ttl: u64) -> u64 {
        self.config.meta_ttl_secs.max(history_ttl).max(1)
    }

    /// Starts `channel` over in a new epoch if it is still in `epoch`, whose
    /// writes Redis lost (see [`script::RENEW_EPOCH`]). Whether it renewed
    /// it (false: another node did, or the channel moved on).
    pub(crate) async fn renew_epoch(
        &self,
        channel: &ChannelKey,
        epoch: &str,
    ) -> Result<bool, BrokerError> {
        let mut conn = self.publisher_conn()?;
        let history_ttl = self
            .config
            .history
            .limits(channel)
            .map_or(0, |l| l.ttl.as_secs().max(1));
        let mut call = script::RENEW_EPOCH.prepare_invoke();
        call.key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(epoch)
            .arg(new_epoch())
            .arg(self.meta_ttl(history_ttl));
        bounded(self.config.timeout(), call.invoke_async(&mut conn))
            .await
            .map_err(|e| self.failed(e))
    }

    /// The current session, if any.
    fn session(&self) -> Option<Session> {
        self.session.read().clone()
    }

    fn publisher_conn(&self) -> Result<Conn, BrokerError> {
        self.session()
            .map(|s| s.publisher)
            .ok_or_else(|| BrokerError::Unavailable("redis: not connected".into()))
    }

    /// The publishing connection, failing fast unless the broker is ready.
    fn ready_publisher(&self) -> Result<Conn, BrokerError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable("redis: not connected".into()));
        }
        self.publisher_conn()
    }

    fn subscriber_conn(&self) -> Result<Conn, BrokerError> {
        self.session()
            .map(|s| s.subscriber)
            .ok_or_else(|| BrokerError::Unavailable("redis: not connected".into()))
    }

    /// Maps a failed operation to a broker error; a connection problem also
    /// wakes the supervisor to probe at once.
    fn failed(&self, e: RedisError) -> BrokerError {
        if conn::is_unavailable(&e) {
            self.wake.notify_one();
            BrokerError::Unavailable(e.to_string())
        } else {
            BrokerError::Protocol(e.to_string())
        }
    }

    /// As [`Inner::failed`], for a write already sent: a timeout abandons
    /// only the wait, and Redis runs the command if it resumes, so its
    /// outcome is unknown rather than failed.
    fn unanswered(&self, e: RedisError) -> BrokerError {
        if e.is_timeout() {
            self.wake.notify_one();
            return BrokerError::OutcomeUnknown(e.to_string());
        }
        self.failed(e)
    }

    /// The subscriber connection of `generation` closed.
    fn connection_lost(&self, generation: u64) {
        if self.generation.load(Ordering::Acquire) == generation {
            session::drop_session(self, "subscriber connection closed");
            self.wake.notify_one();
        }
    }
}

/// A fresh channel epoch: 8 hex digits.
fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Splits the history script's reply into epoch, last offset and frames.
fn parse_history(reply: Value) -> Result<(String, u64, Vec<Bytes>), BrokerError> {
    let bad = |what: &str| BrokerError::Protocol(format!("history reply: {what}"));
    let Value::Array(parts) = reply else {
        return Err(bad("not an array"));
    };
    let mut parts = parts.into_iter();
    let (Some(epoch), Some(offset), Some(Value::Array(entries))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("wrong shape"));
    };
    let epoch: String = redis::from_redis_value(epoch).map_err(|_| bad("epoch"))?;
    let offset: u64 = redis::from_redis_value(offset).map_err(|_| bad("offset"))?;
    let frames = entries
        .into_iter()
        .map(|entry| {
            // [id, [field, value]]
            let Value::Array(entry) = entry else {
                return Err(bad("entry"));
            };
            match entry.into_iter().nth(1) {
                Some(Value::Array(fields)) => match fields.into_iter().nth(1) {
                    Some(Value::BulkString(frame)) => Ok(Bytes::from(frame)),
                    _ => Err(bad("entry value")),
                },
                _ => Err(bad("entry fields")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((epoch, offset, frames))
}
