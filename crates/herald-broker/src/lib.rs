//! Implementations of [`herald_core::Broker`].
//!
//! - [`MemoryBroker`]: one node; the hub sequences every channel.
//! - [`RedisBroker`]: many nodes linked through Redis or Redis Cluster.

mod memory;
pub mod redis;

pub use memory::MemoryBroker;
pub use redis::{HistoryLimits, HistoryPolicy, RedisBroker, RedisConfig};
