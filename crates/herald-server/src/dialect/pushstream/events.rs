//! The events channel (`events_channel_id`): `{"type": "…", "channel": "…"}`
//! messages, with the type also as the message's `Event-Type`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::{ChannelKey, Engine};
use tokio::sync::{Mutex, MutexGuard, mpsc};

use super::PsState;

pub(crate) const CHANNEL_CREATED: &str = "channel_created";
pub(crate) const CHANNEL_DESTROYED: &str = "channel_destroyed";
pub(crate) const CLIENT_SUBSCRIBED: &str = "client_subscribed";
pub(crate) const CLIENT_UNSUBSCRIBED: &str = "client_unsubscribed";

/// Events waiting to be published, at most: while the broker is slow or
/// away they would otherwise pile up without bound, to be told minutes late.
const QUEUE: usize = 10_000;

/// Events dropped for a full queue, since the start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Publishes one event about `channel`, unless the events channel is off or
/// `channel` is the events channel itself. Events queue up for one task
/// that publishes them in order, so `channel_created` comes before the
/// `client_subscribed` that follows it (callers may be in `Drop`, so this
/// cannot wait for the publish itself).
pub(crate) fn emit(state: &PsState, kind: &'static str, channel: &str) {
    if state.cfg.events_channel_id.is_empty() || state.is_events_channel(channel) {
        return;
    }
    let Ok(key) = state.channel(&state.cfg.events_channel_id) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let queue = state.events.get_or_init(|| {
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(publish_events(state.app.engine.clone(), key, rx));
        tx
    });
    let mut text = String::from("{\"type\": \"");
    text.push_str(kind);
    text.push_str("\", \"channel\": \"");
    text.push_str(channel);
    text.push_str("\"}");
    // Closed only once the task is gone, with the server.
    if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send((kind, text)) {
        let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
        // The first, then at each power of two: a backlog must not flood the log too.
        if dropped.is_power_of_two() {
            tracing::warn!(
                dropped,
                kind,
                "Push-stream events queue full; event dropped."
            );
        }
    }
}

/// The events channel's publisher: one event at a time. Ends when the
/// mount's state (the sender) is dropped.
async fn publish_events(
    engine: Engine,
    key: ChannelKey,
    mut queue: mpsc::Receiver<(&'static str, String)>,
) {
    while let Some((kind, text)) = queue.recv().await {
        let publication = PsState::publication(&text, None, Some(kind));
        if let Err(e) = engine.publish(&key, publication).await {
            tracing::warn!(error = %e, kind, "Push-stream event not published.");
        }
    }
}

/// Locks shared by hash between channels: enough that unrelated channels
/// seldom wait on each other, few enough to allocate once.
static CREATING: LazyLock<Box<[Mutex<()>]>> =
    LazyLock::new(|| (0..256).map(|_| Mutex::new(())).collect());

/// With the events channel on, waits until no other publish or subscription
/// on this node is between asking whether `key` [`is_new`] and making it
/// exist (publishing to it, subscribing to it): hold it across both, so that
/// of first publishers and subscribers racing on one node only one
/// announces the channel. `None` when there is nothing to announce.
pub(crate) async fn creating(state: &PsState, key: &ChannelKey) -> Option<MutexGuard<'static, ()>> {
    if state.cfg.events_channel_id.is_empty() {
        return None;
    }
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    Some(CREATING[h.finish() as usize % CREATING.len()].lock().await)
}

/// Whether `key` does not exist yet, so that using it creates it: on any
/// node of a cluster, so one `channel_created` is told, not one per node.
/// When the broker cannot tell, this node's view decides.
pub(crate) async fn is_new(state: &PsState, key: &ChannelKey) -> bool {
    if state.cfg.events_channel_id.is_empty() {
        return false;
    }
    let engine = &state.app.engine;
    match engine.channel_info(key).await {
        Ok(info) => info.is_none(),
        Err(_) => engine.hub().channel_info(key).is_none(),
    }
}

/// Held by a subscriber connection: tells the events channel when it leaves.
pub(crate) struct Presence {
    /// Shared state, to publish with.
    state: PsState,
    /// The channels the connection subscribed to.
    channels: Vec<String>,
}

impl Presence {
    pub(crate) fn new(state: &PsState) -> Self {
        Self {
            state: state.clone(),
            channels: Vec::new(),
        }
    }

    /// Records a subscription (after announcing a new channel).
    pub(crate) fn joined(&mut self, key: &ChannelKey, created: bool) {
        if created {
            emit(&self.state, CHANNEL_CREATED, key.name());
        }
        emit(&self.state, CLIENT_SUBSCRIBED, key.name());
        self.channels.push(key.name().to_owned());
    }

    /// Forgets a subscription whose channel was deleted (the module reports
    /// the unsubscription at that point).
    pub(crate) fn left(&mut self, key: &ChannelKey) {
        if let Some(i) = self.channels.iter().position(|c| c == key.name()) {
            self.channels.swap_remove(i);
            emit(&self.state, CLIENT_UNSUBSCRIBED, key.name());
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        for channel in self.channels.drain(..) {
            emit(&self.state, CLIENT_UNSUBSCRIBED, &channel);
        }
    }
}
