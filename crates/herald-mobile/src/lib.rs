//! Mobile push, the Pusher seed's job: notifications arrive on Kafka topics
//! (`push-<app>_<apns|gcm|webpush>…`) or over HTTP ([`http`]), go out
//! through a [`Provider`] (APNs, FCM, browsers' push services), and every
//! answer becomes a feedback record on Kafka, a stats count and, for tokens
//! the provider calls dead, a row deleted from PostgreSQL.

pub mod config;
pub mod feedback;
pub mod http;
pub mod message;
mod offsets;
mod pipeline;
pub mod provider;
mod stats;
mod subscription;
mod tokens;
pub mod topic;

pub use config::MobileConfig;
pub use pipeline::{Mobile, MobileError, MobileMetrics};
pub use provider::{Platform, Provider, Push, Rejection, Sent};
