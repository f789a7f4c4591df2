//! Herald's protocol-agnostic core.
//!
//! - [`channel`]: channel names and app namespaces.
//! - [`message`]: publications, sequenced messages, per-format encodings.
//! - [`outbox`]: each connection's bounded outgoing queue.
//! - [`hub`]: local subscriptions and fan-out.
//! - [`identity`]: connection identities, filters, and the directory for
//!   targeted delivery and acknowledgements.
//! - [`broker`]: the trait that links nodes.
//! - [`engine`]: hub + broker, the API transports call.
//! - [`stats`]: counters for metrics.
//!
//! Nothing here opens a socket.

pub mod broker;
pub mod channel;
pub mod engine;
pub mod hub;
pub mod identity;
pub mod message;
pub mod outbox;
pub mod stats;

pub use broker::{Broker, BrokerError};
pub use channel::{ChannelKey, ChannelNameError};
pub use engine::{AckOutcome, AckPolicy, Engine};
pub use hub::{ChannelInfo, Hub, Published};
pub use identity::{Directory, Filter, Identity, SendOutcome, TargetFormat, Targeted};
pub use message::{Format, Message, Publication};
pub use outbox::{Closed, ConnId, Outbox, Pushed};
