//! Graceful shutdown: one signal handed to every connection, and a tracker
//! that knows when the last one is gone.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Shared by the listener and every connection task.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the server starts shutting down.
    token: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
}

impl Shutdown {
    /// Resolves when shutdown begins.
    pub fn signalled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_signalled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begins shutdown: every connection sends its reconnect hint and closes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Runs `fut` as a tracked task.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }

    /// Waits up to `timeout` for every tracked task; returns false on timeout.
    pub(crate) async fn drain(&self, timeout: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tracked tasks still running.
    pub(crate) fn active(&self) -> usize {
        self.tracker.len()
    }
}
