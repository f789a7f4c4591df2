//! The events channel (`events_channel_id`): `{"type": "…", "channel": "…"}`
//! messages, with the type also as the message's `Event-Type`.

use herald_core::ChannelKey;

use super::PsState;

pub(crate) const CHANNEL_CREATED: &str = "channel_created";
pub(crate) const CHANNEL_DESTROYED: &str = "channel_destroyed";
pub(crate) const CLIENT_SUBSCRIBED: &str = "client_subscribed";
pub(crate) const CLIENT_UNSUBSCRIBED: &str = "client_unsubscribed";

/// Publishes one event about `channel`, unless the events channel is off or
/// `channel` is the events channel itself.
pub(crate) fn emit(state: &PsState, kind: &'static str, channel: &str) {
    if state.cfg.events_channel_id.is_empty() || state.is_events_channel(channel) {
        return;
    }
    let Ok(key) = state.channel(&state.cfg.events_channel_id) else {
        return;
    };
    let mut text = String::from("{\"type\": \"");
    text.push_str(kind);
    text.push_str("\", \"channel\": \"");
    text.push_str(channel);
    text.push_str("\"}");
    let publication = PsState::publication(&text, None, Some(kind));
    let engine = state.app.engine.clone();
    let publish = async move {
        if let Err(e) = engine.publish(&key, publication).await {
            tracing::warn!(error = %e, kind, "Push-stream event not published.");
        }
    };
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(publish);
    }
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
