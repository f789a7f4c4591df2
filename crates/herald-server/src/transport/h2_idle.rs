//! When an HTTP/2 connection is idle: no request in flight and no response
//! body (an SSE stream, say) still open.
//!
//! HTTP/1.1 keep-alive connections wait for their next request at most
//! `server.read_timeout` (hyper's header timeout). An HTTP/2 connection
//! answers pings however long it sits unused, so without this a client
//! could hold any number of them open for nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::Notify;

/// The streams open on one connection.
#[derive(Clone, Default)]
pub(crate) struct OpenStreams(Arc<Count>);

#[derive(Default)]
struct Count {
    /// Requests in flight, and responses whose bodies have not ended.
    open: AtomicUsize,
    /// Told whenever `open` changes, so the idle wait starts over.
    changed: Notify,
}

impl OpenStreams {
    /// `service`, counting each request until its response body ends.
    pub(crate) fn track<S>(&self, service: S) -> Tracked<S> {
        Tracked {
            inner: service,
            streams: self.clone(),
        }
    }

    /// Resolves once no stream has been open for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let count = &*self.0;
        loop {
            let changed = count.changed.notified();
            if count.open.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                () = changed => {}
            }
        }
    }

    fn open(&self) -> Open {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
        Open(self.clone())
    }
}

/// One open stream, closed when dropped.
struct Open(OpenStreams);

impl Drop for Open {
    fn drop(&mut self) {
        let count = &*(self.0).0;
        count.open.fetch_sub(1, Ordering::AcqRel);
        count.changed.notify_waiters();
    }
}

/// A service whose requests are counted as open streams.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    /// The connection's service, answering as before.
    inner: S,
    /// Where each request is counted.
    streams: OpenStreams,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let open = self.streams.open();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(Counted { body, _open: open })))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted open until it ends
    /// (or is dropped, as when the client resets the stream).
    // (pin-project-lite takes no doc comments on fields.)
    struct Counted {
        // The response's own body.
        #[pin]
        body: Body,
        // Closes the stream's count when the body goes.
        _open: Open,
    }
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_once_no_stream_was_open_for_the_whole_timeout() {
        let streams = OpenStreams::default();
        let timeout = Duration::from_secs(10);
        let start = tokio::time::Instant::now();
        let first = streams.open();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "idle while a stream is open");
        drop(first);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // A stream opened and closed again restarts the wait.
        drop(streams.open());
        idle.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(45));
    }
}
