//! Transports: how bytes reach a client. Dialects decide what the bytes say.

pub(crate) mod handshake;
pub(crate) mod rewind;
pub(crate) mod shared_socket;
pub(crate) mod sse;
pub(crate) mod ws;
