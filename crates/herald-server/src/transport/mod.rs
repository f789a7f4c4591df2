//! Transports: how bytes reach a client. Dialects decide what the bytes say.

pub(crate) mod deflate;
pub(crate) mod h2_idle;
pub(crate) mod handshake;
pub(crate) mod head_errors;
pub(crate) mod rewind;
pub(crate) mod shared_socket;
pub(crate) mod sse;
pub(crate) mod write_timeout;
pub(crate) mod ws;

/// Resolves after `timeout`; never without one.
pub(crate) async fn deadline(timeout: Option<std::time::Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}
