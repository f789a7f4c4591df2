//! A request body that gives up when its client stalls, so a client that
//! announces a body and never sends it cannot hold a handler (and its memory)
//! forever. Slow clients are fine: only a pause longer than the timeout fails.
//!
//! Whatever a route answers to the failed body, the client gets one answer,
//! `408 body_timeout`: [`AnswerStalled`] replaces it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::error::ApiError;

thread_local! {
    /// Set by a body that times out, for the request being polled on this
    /// thread: a request's body is read inside its answer's poll. Not shared
    /// with the body, so the common request allocates nothing for it.
    static STALLED: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Error of a body whose client sent nothing for the whole timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of the request body for {0:?}")]
pub(crate) struct BodyTimedOut(Duration);

/// `B`, failing with [`BodyTimedOut`] when no frame arrives for `timeout`
/// (never without one).
#[derive(Debug)]
pub(crate) struct BodyTimeout<B> {
    /// The request's own body, whose frames pass through as they are.
    body: B,
    /// The longest the client may pause; `None`: no limit.
    timeout: Option<Duration>,
    /// Armed only while the body waits for its client: most bodies arrive
    /// with their headers and never need a timer.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<B> BodyTimeout<B> {
    pub(crate) fn new(body: B, timeout: Option<Duration>) -> Self {
        Self {
            body,
            timeout,
            stall: None,
        }
    }
}

impl<B> Body for BodyTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.stall = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        let stall = this
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(cx));
        this.stall = None;
        STALLED.set(Some(timeout));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A route's answer, replaced by `408 body_timeout` if the request's
    /// body timed out meanwhile, whichever error the route made of it.
    // (pin-project-lite takes no doc comments on fields.)
    pub(crate) struct AnswerStalled<F> {
        // The route's own answer.
        #[pin]
        answer: F,
        // The timeout, once the request's body timed out: the answer is then replaced.
        stalled: Option<Duration>,
    }
}

impl<F> AnswerStalled<F> {
    pub(crate) fn new(answer: F) -> Self {
        Self {
            answer,
            stalled: None,
        }
    }
}

impl<F, E> Future for AnswerStalled<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        STALLED.set(None);
        let polled = this.answer.poll(cx);
        if let Some(timeout) = STALLED.take() {
            *this.stalled = Some(timeout);
        }
        let response = ready!(polled)?;
        Poll::Ready(Ok(match *this.stalled {
            Some(timeout) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                BodyTimedOut(timeout).to_string(),
            )
            .into_response(),
            None => response,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;

    type Frames =
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_is_read_whole() {
        let frames: Frames = futures_util::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"he"))),
            Ok(Frame::data(Bytes::from_static(b"llo"))),
        ]);
        let body = BodyTimeout::new(StreamBody::new(frames), Some(Duration::from_secs(1)));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout_and_not_before() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let mut body = BodyTimeout::new(StreamBody::new(stream), Some(Duration::from_secs(30)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");

        let start = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyTimedOut>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_a_stalled_body_waits() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let mut body = BodyTimeout::new(StreamBody::new(tokio_stream_from(rx)), None);
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "the body gave up without a timeout");
    }

    /// An mpsc receiver as a stream, without pulling in tokio-stream.
    fn tokio_stream_from<T>(
        rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }
}
