//! Errors at the HTTP edge: a status and a JSON body, never a panic.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::{BrokerError, ChannelNameError};
use serde_json::json;

/// A native API error: `{"error": {"code", "message"}}` with an HTTP status.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The response's HTTP status.
    pub(crate) status: StatusCode,
    /// Stable, machine-readable code (documented in docs/api.md).
    pub(crate) code: &'static str,
    /// What went wrong, for people; clients match on `code`.
    pub(crate) message: String,
    /// A header the answer must carry (a 426's `Upgrade`), if any.
    pub(crate) header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            header: None,
        }
    }

    /// The same error, answered with `name: value`.
    pub(crate) fn with_header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.header = Some((name, HeaderValue::from_static(value)));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The response's body: `{"error": {"code", "message"}}`.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<ChannelNameError> for ApiError {
    fn from(e: ChannelNameError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_channel", e.to_string())
    }
}

impl From<BrokerError> for ApiError {
    /// The client learns what happened, not the broker's own words (its
    /// addresses, its scripts' errors): those go to the log.
    fn from(e: BrokerError) -> Self {
        tracing::debug!(error = %e, "Broker error answered.");
        match e {
            // Not "unavailable": a retry may publish a second copy.
            BrokerError::OutcomeUnknown(_) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "outcome_unknown",
                "the broker did not answer in time; it may still take effect",
            ),
            BrokerError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the broker is unavailable; try again later",
            ),
            BrokerError::Protocol(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the broker answered something this server cannot use",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        if let Some((name, value)) = self.header {
            res.headers_mut().insert(name, value);
        }
        res
    }
}
