//! The stream hyper serves: a TCP stream with bytes already read from it put
//! back in front, so that hyper can serve a request whose first bytes the
//! WebSocket fast path ([`super::handshake`]) read and declined (or a TLS
//! stream, with nothing put back); and whose writes of hyper's own bare
//! answers to bad request heads go out as Herald's JSON errors
//! ([`super::head_errors`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::transport::head_errors;
use crate::transport::write_timeout::Progress;

pub(crate) struct Rewind<S = TcpStream> {
    /// Read from the socket before hyper took over; empty once hyper has
    /// read it (and then holds no allocation).
    prefix: Bytes,
    /// The connection itself: TCP, or TLS over it.
    stream: S,
    /// What of a JSON error written in place of hyper's answer the stream
    /// has not taken yet; it goes out before anything else.
    reply: Bytes,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Bytes, stream: S) -> Self {
        Self {
            prefix,
            stream,
            reply: Bytes::new(),
        }
    }

    /// The socket and whatever of the prefix hyper has not read.
    pub(crate) fn into_parts(self) -> (S, Bytes) {
        (self.stream, self.prefix)
    }
}

/// The replaced answers it finishes before a write are a few hundred bytes:
/// the socket takes them whole, or the client is not reading.
impl<S> Progress for Rewind<S> {}

impl<S: AsyncWrite + Unpin> Rewind<S> {
    /// Writes out the rest of a replaced answer; ready once there is none.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.reply.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.reply))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.reply.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_reply(cx))?;
        if let Some(reply) = head_errors::replacement(buf) {
            // Taken whole: the flush that follows writes the reply out.
            this.reply = reply;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_reply(cx))?;
        // hyper writes its answers flattened; were they not, one would be
        // a single slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && let Some(reply) = head_errors::replacement(only)
        {
            this.reply = reply;
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_reply(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_reply(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
