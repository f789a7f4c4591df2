//! A TCP stream with bytes already read from it put back in front, so that
//! hyper can serve a request whose first bytes the WebSocket fast path
//! ([`super::handshake`]) read and declined.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct Rewind {
    /// Read from the socket before hyper took over; empty once hyper has
    /// read it (and then holds no allocation).
    prefix: Bytes,
    stream: TcpStream,
}

impl Rewind {
    pub(crate) fn new(prefix: Bytes, stream: TcpStream) -> Self {
        Self { prefix, stream }
    }

    /// The socket and whatever of the prefix hyper has not read.
    pub(crate) fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.prefix)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if read_prefix(&mut this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

/// Moves what fits of `prefix` into `buf`; false when `prefix` is empty.
/// A prefix read to its end lets go of its buffer: even an empty slice
/// would pin the whole buffer it was cut from.
pub(crate) fn read_prefix(prefix: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let n = prefix.len().min(buf.remaining());
    buf.put_slice(&prefix.split_to(n));
    if prefix.is_empty() {
        *prefix = Bytes::new();
    }
    true
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
