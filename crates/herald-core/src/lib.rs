//! Herald's protocol-agnostic core.
//!
//! - [`channel`]: channel names and app namespaces.
//! - [`message`]: publications, sequenced messages, per-format encodings.
//! - [`outbox`]: each connection's bounded outgoing queue.
//! - [`hub`]: local subscriptions and fan-out.
//! - [`identity`]: connection identities, filters, and the directory for
//!   targeted delivery and acknowledgements.
//! - [`history`]: stored messages per channel and resume points.
//! - [`broker`]: the trait that links nodes.
//! - [`records`]: small shared records with an expiry (compatibility APIs'
//!   state).
//! - [`engine`]: hub + broker, the API transports call.
//! - [`stats`]: counters for metrics.
//!
//! Nothing here opens a socket.

pub mod broker;
pub mod channel;
mod channel_map;
pub mod engine;
mod flusher;
pub mod history;
pub mod hub;
pub mod identity;
mod joins;
pub mod message;
pub mod outbox;
pub mod records;
pub mod stats;

pub use broker::{Broker, BrokerError, ChannelStats, StoredPage};
pub use channel::{ChannelKey, ChannelNameError};
pub use engine::{AckOutcome, AckPolicy, Engine};
pub use history::{History, HistoryPolicy, Position, Recovery, Replay, Retention};
pub use hub::{ChannelInfo, Delivery, Hub, Missing, Published, Subscribed};
pub use identity::{
    Directory, Filter, Identity, Presence, PresenceChange, SendOutcome, TargetFormat, Targeted,
};
pub use message::{Format, Message, Publication};
pub use outbox::{Closed, ConnId, DirectWrite, Frame, Outbox, Pushed, Queue, Taken};
pub use records::Record;
