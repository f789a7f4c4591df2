//! An upgraded WebSocket's TCP socket, shared by the connection's task (reads,
//! replies and control frames, through tungstenite) and the threads that write
//! frames to it straight from a send or a small fan-out ([`DirectWrite`]).
//!
//! Frames never interleave: every write happens under one lock, and a write
//! the socket takes only in part leaves its rest in [`SharedSocket::rest`],
//! which goes out before anything else.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use herald_core::{Direct, DirectWrite, Frame};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The socket and the unsent rest of frames already started on it.
pub(crate) struct SharedSocket {
    stream: TcpStream,
    /// Bytes of started frames the socket has not taken yet. Only the
    /// connection's task waits for the socket, so only it drains this.
    rest: Mutex<BytesMut>,
}

impl SharedSocket {
    pub(crate) fn new(stream: TcpStream) -> Arc<Self> {
        Arc::new(Self {
            stream,
            rest: Mutex::new(BytesMut::new()),
        })
    }

    /// Resolves once the socket may take more bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// Writes `rest` out; ready once it is empty.
    fn poll_flush_rest(&self, cx: &mut Context<'_>, rest: &mut BytesMut) -> Poll<io::Result<()>> {
        while !rest.is_empty() {
            match self.stream.try_write(rest) {
                Ok(n) => rest.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl DirectWrite for SharedSocket {
    fn try_write(&self, frame: &Frame) -> Direct {
        let mut rest = self.rest.lock();
        if !rest.is_empty() {
            return Direct::Blocked;
        }
        let payload = &frame.bytes[..];
        let mut buf = [0u8; 10];
        let head = text_header(payload.len(), &mut buf);
        let total = head.len() + payload.len();
        match self
            .stream
            .try_write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])
        {
            Ok(n) if n == total => Direct::Written,
            Ok(0) => Direct::Blocked,
            Ok(n) => {
                if n < head.len() {
                    rest.extend_from_slice(&head[n..]);
                    rest.extend_from_slice(payload);
                } else {
                    rest.extend_from_slice(&payload[n - head.len()..]);
                }
                Direct::Partial
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Direct::Blocked,
            // The connection is broken: the frame is dropped like one the
            // peer never read, and the task's next read ends the connection.
            Err(_) => Direct::Written,
        }
    }
}

/// The header of an unmasked, final text frame of `len` bytes (RFC 6455 §5.2).
fn text_header(len: usize, buf: &mut [u8; 10]) -> &[u8] {
    buf[0] = 0x81;
    if len < 126 {
        buf[1] = len as u8;
        &buf[..2]
    } else if let Ok(short) = u16::try_from(len) {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&short.to_be_bytes());
        &buf[..4]
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        &buf[..10]
    }
}

/// The task's side of a [`SharedSocket`], for tungstenite.
pub(crate) struct SocketIo {
    socket: Arc<SharedSocket>,
    /// Bytes the HTTP server read past the upgrade request: the client's
    /// first frames, read before the socket.
    early: Bytes,
}

impl SocketIo {
    pub(crate) fn new(socket: Arc<SharedSocket>, early: Bytes) -> Self {
        let mut io = Self {
            socket,
            early: Bytes::new(),
        };
        io.keep_early(early);
        io
    }

    /// Keeps `early` only while it holds bytes: even an empty slice would pin
    /// the HTTP server's whole read buffer for the connection's life.
    fn keep_early(&mut self, early: Bytes) {
        self.early = if early.is_empty() {
            Bytes::new()
        } else {
            early
        };
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let mut early = std::mem::take(&mut this.early);
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early.split_to(n));
            this.keep_early(early);
            return Poll::Ready(Ok(()));
        }
        let stream = &this.socket.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    /// Takes all of `buf` or none of it: tungstenite hands over whole frames,
    /// and a frame the socket takes only in part must finish before a direct
    /// write may start, so its rest stays here rather than with tungstenite.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &*self.socket;
        let mut rest = socket.rest.lock();
        ready!(socket.poll_flush_rest(cx, &mut rest))?;
        loop {
            match socket.stream.try_write(buf) {
                Ok(n) => {
                    rest.extend_from_slice(&buf[n..]);
                    return Poll::Ready(Ok(buf.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(socket.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.socket;
        socket.poll_flush_rest(cx, &mut socket.rest.lock())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.socket.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    /// A frame the socket took in part blocks every other write until the
    /// task flushed its rest, even when the socket has room again.
    #[tokio::test]
    async fn a_partly_written_frame_finishes_before_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let mut peer = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let socket = SharedSocket::new(server);

        let big = vec![b'a'; 1 << 20];
        let first = Frame::from(Bytes::from(big.clone()));
        assert_eq!(socket.try_write(&first), Direct::Partial);
        // The peer makes room; the next frame must still wait for the rest.
        let mut some = vec![0u8; 1024];
        let n = peer.read(&mut some).await.unwrap();
        assert!(n > 0);
        let second = Frame::from(Bytes::from_static(b"next"));
        assert_eq!(socket.try_write(&second), Direct::Blocked);

        let reader = tokio::spawn(async move {
            let mut got = some[..n].to_vec();
            let want = 10 + big.len() + 2 + 4;
            got.resize(want, 0);
            peer.read_exact(&mut got[n..]).await.unwrap();
            got
        });
        let mut io = SocketIo::new(socket.clone(), Bytes::new());
        io.flush().await.unwrap();
        assert_eq!(socket.try_write(&second), Direct::Written);
        let got = reader.await.unwrap();
        let mut head = [0u8; 10];
        assert_eq!(&got[..10], text_header(1 << 20, &mut head));
        assert!(got[10..10 + (1 << 20)].iter().all(|&b| b == b'a'));
        assert_eq!(&got[10 + (1 << 20)..], b"\x81\x04next");
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut buf = [0u8; 10];
        assert_eq!(text_header(5, &mut buf), &[0x81, 5]);
        assert_eq!(text_header(125, &mut buf), &[0x81, 125]);
        assert_eq!(text_header(126, &mut buf), &[0x81, 126, 0, 126]);
        assert_eq!(text_header(65_535, &mut buf), &[0x81, 126, 0xff, 0xff]);
        assert_eq!(
            text_header(65_536, &mut buf),
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}
