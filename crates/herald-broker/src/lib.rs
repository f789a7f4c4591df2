//! Implementations of [`herald_core::Broker`].

mod memory;

pub use memory::MemoryBroker;
