//! Graceful shutdown: one signal handed to every connection, and a tracker
//! that knows when the last one is gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Shared by the listener and every connection task.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the server starts shutting down.
    token: CancellationToken,
    /// Set just before the token is cancelled: a load, where asking the
    /// token takes its lock.
    begun: Arc<AtomicBool>,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
}

impl Shutdown {
    /// Resolves when shutdown begins.
    pub fn signalled(&self) -> Signalled<'_> {
        Signalled {
            begun: &self.begun,
            cancelled: self.token.cancelled(),
            registered: None,
        }
    }

    pub fn is_signalled(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Begins shutdown: every connection sends its reconnect hint and closes.
    pub fn trigger(&self) {
        self.begun.store(true, Ordering::Release);
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

pin_project_lite::pin_project! {
    /// [`Shutdown::signalled`]. A connection's loop polls it at every wake-up
    /// of its task; once registered with that task's waker it only reads a
    /// flag, where the token's own future takes two locks per poll.
    // (pin-project-lite takes no doc comments on fields.)
    pub struct Signalled<'a> {
        // The shutdown's flag, read at every poll.
        begun: &'a AtomicBool,
        // What wakes the task: polled until it holds the task's waker.
        #[pin]
        cancelled: WaitForCancellationFuture<'a>,
        // The waker `cancelled` holds, once it is pending.
        registered: Option<Waker>,
    }
}

impl Future for Signalled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.begun.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        // The flag is set before the token wakes this waker, so a poll after
        // that wake sees it.
        if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let polled = this.cancelled.poll(cx);
        if polled.is_pending() {
            *this.registered = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One poll of `f`, from inside a task.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn a_waiting_connection_sees_the_signal_once_registered() {
        let shutdown = Shutdown::default();
        let waiter = shutdown.clone();
        let (polled_tx, polled_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let signalled = waiter.signalled();
            tokio::pin!(signalled);
            // Polled twice with one waker before the signal: the second poll
            // takes the flag-only path.
            for _ in 0..2 {
                assert!(poll_once(&mut signalled.as_mut()).await.is_pending());
            }
            polled_tx.send(()).unwrap();
            signalled.await;
        });
        polled_rx.await.unwrap();
        assert!(!shutdown.is_signalled());
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the signal reached the waiting task")
            .unwrap();
        assert!(shutdown.is_signalled());
        assert!(
            poll_once(&mut Box::pin(shutdown.signalled()))
                .await
                .is_ready()
        );
    }
}
