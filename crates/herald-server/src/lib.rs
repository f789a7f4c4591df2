//! Herald's network side.
//!
//! - [`server`]: the listener and graceful shutdown.
//! - [`tls`]: the listener's certificate, and its reload.
//! - `transport`: WebSocket and SSE plumbing, shared by every dialect.
//! - `dialect`: wire protocols (native, the Push seed) over the core.
//! - [`http`]: the route table, health and metrics.
//! - [`config`]: every setting and its default.

pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod tls;

mod access;
mod auth;
mod cors;
mod cursor;
mod dialect;
mod error;
mod lifetime;
mod publisher_auth;
mod ratelimit;
mod receivers;
mod revocations;
mod session;
mod transport;

pub use config::Config;
pub use server::Server;
pub use shutdown::Shutdown;
pub use state::AppState;
pub use tls::TlsReloader;
