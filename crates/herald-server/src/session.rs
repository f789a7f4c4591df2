//! A streaming connection's subscriptions, shared by every transport and
//! dialect. Dropping a session unsubscribes it everywhere.

use std::sync::Arc;

use herald_core::identity::USER;
use herald_core::{
    ChannelKey, Format, Identity, Outbox, Position, PresenceChange, Replay, Subscribed,
    TargetFormat, outbox::next_conn_id,
};

use crate::access::Grants;
use crate::error::ApiError;
use crate::state::AppState;

/// One connection's outbox and subscriptions.
pub(crate) struct Session {
    /// Shared server state.
    pub(crate) state: AppState,
    /// Where fan-out queues this connection's frames.
    pub(crate) outbox: Arc<Outbox>,
    /// Channels subscribed to, in subscription order; few per connection.
    /// A channel is listed before its subscription is awaited, so a session
    /// dropped meanwhile (its connection gone, the handler's future with it)
    /// still leaves it.
    channels: Vec<ChannelKey>,
    /// Whether the last of `channels` is still being subscribed: its join
    /// was not announced, so dropping the session announces no leave for it.
    joining: bool,
    /// Who the connection is, when a token said so; registered in the
    /// engine's directory for targeted delivery while the session lives.
    identity: Option<Identity>,
    /// The protected channels its token grants.
    grants: Grants,
}

impl Session {
    pub(crate) fn new(state: AppState, format: Arc<dyn Format>) -> Self {
        let outbox = Arc::new(Outbox::new(
            next_conn_id(),
            format,
            state.config.limits.outbox_bytes,
        ));
        Self {
            state,
            outbox,
            channels: Vec::new(),
            joining: false,
            identity: None,
            grants: Grants::default(),
        }
    }

    /// Gives the connection `identity`, making it reachable by targeted
    /// sends encoded with `format`; `issued_at` is its token's `iat`, which
    /// revocations compare.
    pub(crate) fn identify(
        &mut self,
        identity: Identity,
        format: Arc<dyn TargetFormat>,
        issued_at: Option<u64>,
    ) {
        tracing::debug!(conn = self.outbox.id(), identity = ?identity.dims(), "Identified.");
        let directory = self.state.engine.directory();
        self.identity = Some(directory.register(identity, self.outbox.clone(), format, issued_at));
    }

    /// Lets the connection read the protected channels `grants` names.
    pub(crate) fn grant(&mut self, grants: Grants) {
        self.grants = grants;
    }

    /// Whether the connection may read (or publish to) `keys`.
    pub(crate) fn may_use(&self, keys: &[ChannelKey]) -> Result<(), ApiError> {
        self.state.access.check_all(keys, &self.grants)
    }

    /// Subscribes to every channel in `keys` (already validated); all or none
    /// within the per-connection channel limit and the connection's grants.
    /// Returns each channel's position when subscribed, in `keys`' order:
    /// where a client resumes from if it drops before the first message.
    pub(crate) async fn subscribe(
        &mut self,
        keys: Vec<ChannelKey>,
    ) -> Result<Vec<Position>, ApiError> {
        self.may_use(&keys)?;
        self.check_room(&keys)?;
        let mut positions = Vec::with_capacity(keys.len());
        for key in keys {
            let subscribed = self.subscribe_one(key, Replay::None).await?;
            positions.push(subscribed.position);
        }
        Ok(positions)
    }

    /// Subscribes to one channel, first replaying what the client missed
    /// since `since` when the channel's history still has it.
    pub(crate) async fn subscribe_from(
        &mut self,
        key: ChannelKey,
        since: Option<Position>,
    ) -> Result<Subscribed, ApiError> {
        self.subscribe_replaying(key, since.map_or(Replay::None, Replay::After))
            .await
    }

    /// Subscribes with a dialect's own replay choice.
    pub(crate) async fn subscribe_replaying(
        &mut self,
        key: ChannelKey,
        replay: Replay<'_>,
    ) -> Result<Subscribed, ApiError> {
        self.may_use(std::slice::from_ref(&key))?;
        self.check_room(std::slice::from_ref(&key))?;
        self.subscribe_one(key, replay).await
    }

    /// Subscribes to `key` (checked), announcing the join the first time.
    async fn subscribe_one(
        &mut self,
        key: ChannelKey,
        replay: Replay<'_>,
    ) -> Result<Subscribed, ApiError> {
        let fresh = !self.channels.contains(&key);
        if fresh {
            self.channels.push(key.clone());
            self.joining = true;
        }
        // The hub is authoritative: subscribing again is harmless, and
        // re-registers a channel that was deleted meanwhile.
        let subscribed = self
            .state
            .engine
            .subscribe_with(&key, &self.outbox, replay)
            .await;
        let subscribed = match subscribed {
            Ok(subscribed) => subscribed,
            Err(e) => {
                // The engine left the channel already.
                self.channels.retain(|k| *k != key);
                self.joining = false;
                return Err(e.into());
            }
        };
        tracing::debug!(conn = self.outbox.id(), channel = %key, "Subscription added.");
        if fresh {
            self.joining = false;
            // Told locally before the first await, so a leave never comes
            // before its join.
            self.announce(&key, PresenceChange::Join).await;
        }
        Ok(subscribed)
    }

    /// The user whose joins and leaves of `key` its subscribers are told
    /// of: this connection's, where `presence.events` names the channel.
    fn announced_user(&self, key: &ChannelKey) -> Option<Arc<str>> {
        let user = self.identity.as_ref()?.get(USER)?;
        self.state
            .presence_events
            .matches(key.name())
            .then(|| Arc::from(user))
    }

    /// Tells `key`'s subscribers on every node that this connection's user
    /// joined or left it, when they are told of it. A broker that cannot
    /// pass it on costs the other nodes the event, not the subscription.
    async fn announce(&self, key: &ChannelKey, change: PresenceChange) {
        let Some(user) = self.announced_user(key) else {
            return;
        };
        if let Err(error) = self.state.engine.announce(key, change, &user).await {
            tracing::debug!(channel = %key, %error, "Presence event not passed on.");
        }
    }

    fn check_room(&mut self, keys: &[ChannelKey]) -> Result<(), ApiError> {
        let subscribed = self.channels().len();
        let fresh = keys.iter().filter(|k| !self.channels.contains(k)).count();
        let limit = self.state.config.limits.max_channels_per_connection;
        if subscribed + fresh > limit {
            return Err(too_many_channels(limit));
        }
        Ok(())
    }

    /// Unsubscribes from `keys`; unknown channels are ignored.
    pub(crate) async fn unsubscribe(&mut self, keys: &[ChannelKey]) {
        for key in keys {
            if let Some(i) = self.channels.iter().position(|k| k == key) {
                // In order: replies list the channels as they were subscribed.
                self.channels.remove(i);
                self.state.engine.unsubscribe(key, &self.outbox).await;
                self.announce(key, PresenceChange::Leave).await;
            }
        }
    }

    /// The channels subscribed, less any deleted since (the hub dropped
    /// their subscribers): they neither deliver nor count any more.
    pub(crate) fn channels(&mut self) -> &[ChannelKey] {
        let (hub, id) = (self.state.engine.hub(), self.outbox.id());
        self.channels.retain(|key| hub.is_subscribed(key, id));
        &self.channels
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.identity.is_some() {
            self.state.engine.directory().unregister(self.outbox.id());
        }
        let hub = self.state.engine.hub();
        let id = self.outbox.id();
        let announced = self.channels.len() - usize::from(self.joining);
        let left: Vec<(ChannelKey, Arc<str>)> = (self.channels[..announced].iter())
            .filter_map(|key| Some((key.clone(), self.announced_user(key)?)))
            .collect();
        let vacated: Vec<ChannelKey> = self
            .channels
            .drain(..)
            .filter(|key| hub.unsubscribe(key, id))
            .collect();
        for (key, user) in &left {
            hub.announce(key, PresenceChange::Leave, user);
        }
        if vacated.is_empty() && left.is_empty() {
            return;
        }
        let broker = self.state.engine.broker().clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for key in vacated {
                    let _ = broker.unsubscribe(&key).await;
                }
                for (key, user) in left {
                    let _ = broker.announce(&key, PresenceChange::Leave, &user).await;
                }
            });
        }
    }
}

/// Parses a comma-separated channel list into keys of the default app.
pub(crate) fn parse_channel_list(
    state: &AppState,
    list: &str,
) -> Result<Vec<ChannelKey>, ApiError> {
    channel_keys(state, list.split(',').filter(|s| !s.is_empty()))
}

/// The keys of `names` in the default app, each once, in first-named
/// order: a channel named twice would be replayed, or published, twice.
/// More than a connection may hold is refused as soon as it is seen, so a
/// long list costs no more than the limit's worth of work.
pub(crate) fn channel_keys<'a>(
    state: &AppState,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<ChannelKey>, ApiError> {
    let limit = state.config.limits.max_channels_per_connection;
    let mut keys: Vec<ChannelKey> = Vec::new();
    for name in names {
        let key = state.channel(name)?;
        if !keys.contains(&key) {
            if keys.len() == limit {
                return Err(too_many_channels(limit));
            }
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The error for more channels than one connection, or one publish, may
/// name.
pub(crate) fn too_many_channels(limit: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "too_many_channels",
        format!("at most {limit} channels at once"),
    )
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use futures_util::FutureExt;
    use herald_core::{Broker, BrokerError, Engine, Hub, Publication, Published};

    use super::*;
    use crate::dialect::native::WsFormat;

    /// A broker whose subscribe never finishes, as a Redis subscribe stuck
    /// behind a slow connection.
    struct StuckSubscribe(Arc<Hub>);

    #[async_trait::async_trait]
    impl Broker for StuckSubscribe {
        async fn publish(&self, c: &ChannelKey, p: Publication) -> Result<Published, BrokerError> {
            Ok(self.0.publish_local(c, p))
        }
        async fn subscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            std::future::pending().await
        }
        async fn unsubscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
            Ok(())
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn name(&self) -> &'static str {
            "stuck"
        }
    }

    fn state() -> AppState {
        let hub = Arc::new(Hub::with_policy(Default::default()));
        let engine = Engine::new(hub.clone(), Arc::new(StuckSubscribe(hub)));
        AppState::new(engine, crate::Config::default(), crate::Shutdown::default()).unwrap()
    }

    /// Polls `f` once and drops it, as hyper drops a handler whose
    /// connection closed.
    fn cancel_midway<T>(f: impl Future<Output = T>) {
        assert!(f.now_or_never().is_none(), "it waits for the broker");
    }

    #[tokio::test]
    async fn a_subscribe_cancelled_while_the_broker_works_leaves_nothing_behind() {
        let state = state();
        let key = state.channel("news").unwrap();
        let hub = state.engine.hub().clone();
        let mut session = Session::new(state.clone(), Arc::new(WsFormat));
        cancel_midway(session.subscribe(vec![key.clone()]));
        assert_eq!(hub.subscriber_count(&key), 1, "the hub has it meanwhile");
        drop(session);
        assert_eq!(hub.subscriber_count(&key), 0);

        let mut session = Session::new(state, Arc::new(WsFormat));
        cancel_midway(session.subscribe_from(key.clone(), None));
        drop(session);
        assert_eq!(hub.subscriber_count(&key), 0);
    }
}
