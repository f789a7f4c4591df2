//! The one error type of the generator; `anyhow` is used only at the CLI edge.

use tokio_tungstenite::tungstenite;

/// Why a connection, a publish or a worker exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(Box<tungstenite::Error>),
    #[error("http status {0}")]
    Status(u16),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("worker: {0}")]
    Worker(String),
}

impl From<tungstenite::Error> for BenchError {
    fn from(e: tungstenite::Error) -> Self {
        BenchError::Ws(Box::new(e))
    }
}

pub(crate) type Result<T, E = BenchError> = std::result::Result<T, E>;
