//! What every handler and connection shares.

use std::sync::Arc;

use axum::http::StatusCode;
use herald_core::channel::DEFAULT_APP;
use herald_core::{ChannelKey, ChannelNameError, Engine};

use crate::access::{Access, Patterns};
use crate::auth::Verifier;
use crate::config::{Config, ConfigError};
use crate::cors::Origins;
use crate::dialect::pushca::Pushca;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::receivers::ReceiverKeys;
use crate::revocations::Revocations;
use crate::shutdown::Shutdown;

/// Shared state, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    /// Hub + broker.
    pub engine: Engine,
    /// The configuration the server was started with.
    pub config: Config,
    /// Connection counters.
    pub metrics: Arc<Metrics>,
    /// The shutdown signal and connection tracker.
    pub shutdown: Shutdown,
    /// The app that unauthenticated routes and the seeds' APIs use.
    pub default_app: Arc<str>,
    /// Verifies native connection tokens; `None` without an `[auth]` key.
    pub(crate) auth: Option<Verifier>,
    /// The Pushca dialect's token issuer, rate limit and instance id.
    pub(crate) pushca: Pushca,
    /// Keys that let SSE connections acknowledge over HTTP.
    pub(crate) receivers: ReceiverKeys,
    /// Which web origins browsers may call Herald from.
    pub(crate) origins: Arc<Origins>,
    /// Which channels only a token's grant may read.
    pub(crate) access: Access,
    /// Which channels announce joins and leaves (`presence.events`).
    pub(crate) presence_events: Patterns,
    /// Users whose older tokens are refused.
    pub(crate) revocations: Revocations,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Fails when a configured key cannot be loaded.
    pub fn new(engine: Engine, config: Config, shutdown: Shutdown) -> Result<Self, ConfigError> {
        let auth = Verifier::from_config(&config.auth)?;
        let pushca = Pushca::from_config(&config.pushca);
        let receivers = ReceiverKeys::new(
            config.auth.receiver_secret.as_deref(),
            engine.broker().node_id(),
        );
        let origins = Origins::parse(&config.server.allowed_origins).map_err(ConfigError)?;
        let protected = Patterns::new(config.auth.protected_channels.clone())
            .map_err(|e| ConfigError(format!("auth.protected_channels: {e}")))?;
        let presence_events = Patterns::new(config.presence.events.clone())
            .map_err(|e| ConfigError(format!("presence.events: {e}")))?;
        Ok(Self(Arc::new(Inner {
            engine,
            config,
            metrics: Arc::default(),
            shutdown,
            default_app: Arc::from(herald_core::channel::DEFAULT_APP),
            auth,
            pushca,
            receivers,
            origins: Arc::new(origins),
            access: Access::new(protected),
            presence_events,
            revocations: Revocations::default(),
        })))
    }

    /// A channel of the default app.
    pub(crate) fn channel(&self, name: &str) -> Result<ChannelKey, ChannelNameError> {
        ChannelKey::new(&self.default_app, name)
    }

    /// Refuses publishing to or deleting push-stream's events channel
    /// through the native and Push-seed APIs: only Herald writes it, as
    /// push-stream's own publisher says, and subscribers trust what it tells.
    pub(crate) fn check_writable(&self, key: &ChannelKey) -> Result<(), ApiError> {
        let ps = &self.config.pushstream;
        if ps.enabled && key.app() == DEFAULT_APP && ps.is_events_channel(key.name()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("only Herald writes the events channel {}", key.name()),
            ));
        }
        Ok(())
    }
}
