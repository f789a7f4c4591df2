//! The boundary between nodes: a broker carries messages to every node that
//! has subscribers, and sequences each channel.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::channel::ChannelKey;
use crate::history::Position;
use crate::hub::Published;
use crate::identity::{AckTo, Directory, Filter, Presence, PresenceChange, SendOutcome, Targeted};
use crate::message::{Message, Publication};
use crate::outbox::ConnId;
use crate::records::Record;

/// One channel's counts across every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    /// Connections subscribed on any node.
    pub subscribers: usize,
    /// Messages in the shared history.
    pub stored: usize,
    /// The last offset and the epoch; the offset counts every publish of
    /// this epoch.
    pub position: Position,
}

/// Stored messages read from a broker that keeps history itself.
#[derive(Debug, Clone)]
pub struct StoredPage {
    /// Oldest first.
    pub messages: Vec<Arc<Message>>,
    /// The channel's last offset and epoch when the page was read.
    pub position: Position,
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached; callers answer 503 and retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request was sent but no answer came in time: it may still take
    /// effect (a publish may be delivered and stored), so a blind retry may
    /// duplicate it. Callers answer 504.
    #[error("broker outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The broker answered with something this node cannot use.
    #[error("broker protocol error: {0}")]
    Protocol(String),
}

/// Carries messages between nodes.
///
/// `publish` assigns the message its channel offset (atomically with storing
/// it, for brokers that keep history) and gets it to every node that
/// subscribed to the channel, this one included, which feeds it to the
/// [`Hub`](crate::hub::Hub). `subscribe`/`unsubscribe` tell the broker which
/// channels have local subscribers, so a node only receives what it needs.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes to one channel. Resolves once the broker accepted it.
    async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
    ) -> Result<Published, BrokerError>;

    /// This node gained its first local subscriber on `channel`.
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// This node lost its last local subscriber on `channel`. Brokers may
    /// defer the actual unsubscribe so that channel churn stays cheap.
    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Delivers a targeted message to the connections `filter` selects. One
    /// call is one delivery attempt; the engine retries and waits for acks.
    ///
    /// The default delivers on this node only, through `local`. A cluster
    /// broker overrides it to reach matching connections on every node
    /// (and must then keep `find_any` to exactly one match cluster-wide).
    async fn send(
        &self,
        local: &Directory,
        filter: &Filter,
        msg: Targeted,
    ) -> Result<SendOutcome, BrokerError> {
        Ok(local.deliver(filter, &msg))
    }

    /// Who is in channel `key` across the cluster, given `local`: this
    /// node's own count. The default has no other node to ask.
    async fn presence(&self, local: Presence, _key: &ChannelKey) -> Result<Presence, BrokerError> {
        Ok(local)
    }

    /// Tells the subscribers of `channel` on every other node that a
    /// connection of `user` joined or left it; this node's were told
    /// already. The default has no other node.
    async fn announce(
        &self,
        _channel: &ChannelKey,
        _change: PresenceChange,
        _user: &str,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Disconnects every connection `filter` selects, on every node.
    ///
    /// The default disconnects this node's, through `local`.
    async fn disconnect(
        &self,
        local: &Directory,
        filter: &Filter,
    ) -> Result<SendOutcome, BrokerError> {
        Ok(local.disconnect(filter))
    }

    /// Carries a receiver's ack of message `id` (already checked against the
    /// receiving connection `conn`) to the send it answers, `to`, as
    /// [`Directory::acknowledge`] named it. Returns whether a sender was
    /// waiting (for a send on another node: whether that node heard).
    ///
    /// The default resolves a send on this node only, through `local`.
    async fn ack(
        &self,
        local: &Directory,
        id: &str,
        conn: ConnId,
        to: AckTo,
    ) -> Result<bool, BrokerError> {
        Ok(local.ack_here(id, conn, &to))
    }

    /// This node's name among the broker's nodes; `None` for a broker that
    /// links no other nodes.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// Acknowledges `id` for connection `conn` of another node, as if that
    /// connection had acked itself (see [`Broker::ack`]); returns whether it
    /// owed the ack. Only called for `node` other than this one.
    async fn ack_for(&self, node: &str, conn: ConnId, id: &str) -> Result<bool, BrokerError> {
        let _ = (node, conn, id);
        Ok(false)
    }

    /// This node is shutting down: removes at once what it keeps in the
    /// broker for other nodes (subscriber counts, liveness, registrations),
    /// rather than leaving it to expire, and stops its background work.
    /// Called once, last. Bounded in time; never fails.
    async fn leave(&self) {}

    /// Whether history lives in the broker (shared by every node) rather than
    /// in the local hub.
    fn keeps_history(&self) -> bool {
        false
    }

    /// Reads stored messages of `channel`: after offset `since` (up to
    /// `limit`), or the newest `limit`. Only called when
    /// [`keeps_history`](Broker::keeps_history) is true.
    async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> Result<StoredPage, BrokerError> {
        let _ = (channel, since, limit);
        Err(BrokerError::Protocol("this broker keeps no history".into()))
    }

    /// Counts of `channel` across every node, for brokers that know them;
    /// `None` leaves the answer to the local hub.
    async fn channel_stats(
        &self,
        channel: &ChannelKey,
    ) -> Result<Option<ChannelStats>, BrokerError> {
        let _ = channel;
        Ok(None)
    }

    /// Every channel of `app` known across the cluster (subscribed on some
    /// node, or with a position in the broker) with its counts, for brokers
    /// that know them; `None` leaves the answer to the local hub.
    async fn channels(
        &self,
        app: &str,
    ) -> Result<Option<Vec<(ChannelKey, ChannelStats)>>, BrokerError> {
        let _ = app;
        Ok(None)
    }

    /// Forgets `channel` on every other node too: its stored history and
    /// position, and its subscribers there (who are told, as by
    /// [`Hub::delete`](crate::hub::Hub::delete)). The local hub is handled by
    /// the caller.
    async fn delete(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let _ = channel;
        Ok(())
    }

    /// Stores `record` under `kind` unless a live record has its id, to expire
    /// after `ttl` (`None`: never). Returns whether it was stored.
    async fn create_record(
        &self,
        kind: &str,
        record: Record,
        ttl: Option<Duration>,
    ) -> Result<bool, BrokerError> {
        let _ = (kind, record, ttl);
        Err(no_records())
    }

    /// The live record `id` of `kind`.
    async fn record(&self, kind: &str, id: &str) -> Result<Option<Record>, BrokerError> {
        let _ = (kind, id);
        Err(no_records())
    }

    /// Every live record of `kind`, oldest first.
    async fn records(&self, kind: &str) -> Result<Vec<Record>, BrokerError> {
        let _ = kind;
        Err(no_records())
    }

    /// Removes the live record `id` of `kind`. Returns whether there was one.
    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, BrokerError> {
        let _ = (kind, id);
        Err(no_records())
    }

    /// Takes the cluster-wide lease `name` for `ttl` unless another holder
    /// has it: lets one node of many run a periodic job. Returns whether
    /// this node took it.
    async fn lease(&self, name: &str, ttl: Duration) -> Result<bool, BrokerError> {
        let _ = (name, ttl);
        Err(no_records())
    }

    /// Whether the broker can take publishes right now (readiness probe).
    fn is_ready(&self) -> bool;

    /// A short name for logs and metrics ("memory", "redis").
    fn name(&self) -> &'static str;
}

fn no_records() -> BrokerError {
    BrokerError::Protocol("this broker keeps no records".into())
}
