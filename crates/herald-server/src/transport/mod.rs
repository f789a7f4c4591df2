//! Transports: how bytes reach a client. Dialects decide what the bytes say.

pub(crate) mod sse;
pub(crate) mod ws;
