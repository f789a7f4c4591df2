//! A stream whose writes fail once the client has taken nothing for a whole
//! timeout, so a client that stops reading cannot hold its connection (a
//! task, its buffers, a connection slot) forever. Slow clients are fine:
//! only a wait longer than the timeout, with not one byte taken, fails, as
//! nginx's `send_timeout` does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A stream that may write part of what it holds while a write stays
/// pending, because it finishes frames of its own first: it tells
/// [`WriteTimeout`] that the client is still taking them.
pub(crate) trait Progress {
    /// Whether the client took bytes of a pending write since the last
    /// call. Streams whose pending writes write nothing keep the default.
    fn progressed(&mut self) -> bool {
        false
    }
}

impl Progress for TcpStream {}

pub(crate) struct WriteTimeout<S> {
    /// The client's stream, written to and read from.
    inner: S,
    /// The longest a write may wait with nothing taken; `None`: forever.
    timeout: Option<Duration>,
    /// Armed only while a write waits for room: most writes never do.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S: Progress> WriteTimeout<S> {
    /// `inner`, whose writes wait at most `timeout`; zero waits forever,
    /// as in the configuration.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout: Some(timeout).filter(|t| !t.is_zero()),
            stall: None,
        }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    /// Passes on a write's result, or fails it once the write has waited
    /// the whole timeout since the last one that made progress.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall = None;
            return polled;
        }
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if self.inner.progressed() {
            stall.as_mut().reset(Instant::now() + timeout);
        }
        ready!(stall.as_mut().poll(cx));
        self.stall = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took nothing for {timeout:?}"),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Progress + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Its writes take what fits, so a pending one wrote nothing.
    impl Progress for tokio::io::DuplexStream {}

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(8);
        let mut io = WriteTimeout::new(near, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_resets_the_clock_with_every_byte_it_takes() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = WriteTimeout::new(near, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0; 8];
            // Slower than one timeout overall, faster than it per read.
            while got.len() < 64 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let n = far.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        io.write_all(&[7; 64]).await.unwrap();
        assert_eq!(reader.await.unwrap(), vec![7; 64]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_a_write_waits() {
        let (near, _far) = tokio::io::duplex(8);
        let mut io = WriteTimeout::new(near, Duration::ZERO);
        let waited = tokio::time::timeout(Duration::from_secs(3600), io.write_all(&[0; 64])).await;
        assert!(waited.is_err(), "the write should still be waiting");
    }
}
