//! A streaming connection's TCP socket, shared by the connection's task
//! (reads, replies, heartbeats) and the threads that write frames to it
//! straight from a send or a fan-out ([`DirectWrite`]). A [`Framing`] lays
//! the frames out as its transport wants them: WebSocket text frames, or
//! Server-Sent Events with a per-connection `id:`.
//!
//! Frames never interleave: every write happens under one lock, and a write
//! the socket takes only in part leaves its rest in [`SharedSocket::rest`],
//! which goes out before anything else.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use herald_core::{Closed, DirectWrite, Frame, Outbox, Queue, Taken};
use parking_lot::Mutex;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::transport::deflate::Deflate;
use crate::transport::rewind::read_prefix;
use crate::transport::write_timeout::Progress;

/// How a transport lays frames out on the wire.
pub(crate) trait Framing: Send + 'static {
    /// Appends `frame` to `out`, as it goes on the wire.
    fn lay_out(&mut self, frame: &Frame, out: &mut Vec<u8>);

    /// Of the frames laid out since the last call, the socket took only the
    /// first `taken`; the others will be laid out again.
    fn keep(&mut self, _taken: usize) {}
}

/// The connection task's writer over a [`SharedSocket`], which may hold
/// bytes of its own in front of the socket's rest.
pub(crate) trait Flush {
    /// Writes out everything the task and the socket hold.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<F: Framing> Flush for SocketIo<F> {
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(self), cx)
    }
}

/// WebSocket: each frame is one unmasked, final text frame, compressed
/// when the client agreed to permessage-deflate and it gains.
#[derive(Default)]
pub(crate) struct WsText {
    /// The agreed permessage-deflate, if any: frames that shrink go out compressed.
    pub(crate) deflate: Option<Deflate>,
}

impl Framing for WsText {
    fn lay_out(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        let mut head = [0u8; 10];
        match self.deflate.and_then(|d| d.compress(&frame.bytes)) {
            Some(compressed) => {
                out.extend_from_slice(text_header(COMPRESSED, compressed.len(), &mut head));
                out.extend_from_slice(&compressed);
            }
            None => {
                out.extend_from_slice(text_header(PLAIN, frame.bytes.len(), &mut head));
                out.extend_from_slice(&frame.bytes);
            }
        }
    }
}

/// The first byte of a final text frame: FIN and the text opcode...
const PLAIN: u8 = 0x81;
/// ...and of a compressed one, with RSV1 (RFC 7692 §6).
const COMPRESSED: u8 = 0xc1;

/// How far [`SharedSocket::write_queued`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// The queue is written; `Some` when the outbox closed.
    Written(Option<Closed>),
    /// The socket is full and something else is due first.
    Stalled,
}

/// The socket and the unsent rest of frames already started on it.
pub(crate) struct SharedSocket<F = WsText> {
    /// The client's socket: the task reads it; every write happens under the `rest` lock.
    stream: TcpStream,
    /// Bytes of started frames the socket has not taken yet, and the framing
    /// (which may keep per-connection state); one lock, so that frames are
    /// laid out in the order they go out. Only the connection's task waits
    /// for the socket, so only it drains the rest.
    rest: Mutex<Rest<F>>,
}

struct Rest<F> {
    /// Bytes of started frames the socket has not taken yet; they go out first.
    bytes: BytesMut,
    /// Set when the socket took some of `bytes`, until [`Progress`] reads it.
    progressed: bool,
    /// Lays frames out for the transport, with any per-connection state it keeps.
    framing: F,
}

impl<F: Framing> SharedSocket<F> {
    pub(crate) fn new(stream: TcpStream, framing: F) -> Arc<Self> {
        Arc::new(Self {
            stream,
            rest: Mutex::new(Rest {
                bytes: BytesMut::new(),
                progressed: false,
                framing,
            }),
        })
    }

    /// Writes the outbox's queue here: the connection task's half of
    /// [`herald_core::Outbox::push_direct`]. Also finishes a frame a direct
    /// write left part of, flushing `task` (whatever the task itself holds,
    /// then [`SharedSocket::rest`]). Returns once the queue is written, at
    /// once when the outbox closes (a client that stopped reading overflows
    /// it, and must not keep the task waiting for room), or, while the
    /// socket is full, when `due` completes: something else comes first (a
    /// heartbeat, the lifetime, shutdown), and the caller calls again once
    /// the socket is [`writable`](SharedSocket::writable).
    pub(crate) async fn write_queued(
        &self,
        outbox: &Outbox,
        task: &mut impl Flush,
        due: impl Future<Output = ()>,
    ) -> io::Result<Queued> {
        let mut due = std::pin::pin!(due);
        loop {
            match outbox.write_queued() {
                Queue::Written(Some(closed)) => return Ok(Queued::Written(Some(closed))),
                Queue::Written(None) => {
                    if self.has_rest() {
                        tokio::select! {
                            flushed = std::future::poll_fn(|cx| task.poll_flush(cx)) => flushed?,
                            () = outbox.ready() => continue,
                            () = &mut due => return Ok(Queued::Stalled),
                        }
                    }
                    return Ok(Queued::Written(None));
                }
                Queue::Blocked => {
                    let room = async {
                        std::future::poll_fn(|cx| task.poll_flush(cx)).await?;
                        self.writable().await
                    };
                    // New frames wake this too; the loop writes them, or
                    // waits again.
                    tokio::select! {
                        room = room => room?,
                        () = outbox.ready() => {}
                        () = &mut due => return Ok(Queued::Stalled),
                    }
                }
            }
        }
    }

    /// Resolves once the socket may take more bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// Whether a frame taken in part still has bytes to go.
    fn has_rest(&self) -> bool {
        !self.rest.lock().bytes.is_empty()
    }

    /// Writes the rest out, noting when the socket takes some; ready once
    /// it is empty.
    fn poll_flush_rest(&self, cx: &mut Context<'_>, rest: &mut Rest<F>) -> Poll<io::Result<()>> {
        while !rest.bytes.is_empty() {
            match self.stream.try_write(&rest.bytes) {
                Ok(n) => {
                    rest.bytes.advance(n);
                    rest.progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Frames written in one system call, at most.
const BATCH: usize = 64;

/// Bytes gathered for one system call before a batch stops taking frames.
/// One frame of any size is always taken.
const GATHER: usize = 64 * 1024;

thread_local! {
    /// Where a batch of frames is laid out, headers included, for one `send`:
    /// on sockets it costs less than `writev`, and frames are small.
    static GATHERED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(GATHER));
}

impl<F: Framing> DirectWrite for SharedSocket<F> {
    fn try_write(&self, frames: &mut dyn Iterator<Item = &Frame>) -> Taken {
        let mut guard = self.rest.lock();
        let Rest {
            bytes: rest,
            framing,
            ..
        } = &mut *guard;
        if !rest.is_empty() {
            return Taken::NONE;
        }
        GATHERED.with_borrow_mut(|buf| {
            buf.clear();
            // Where each frame ends in `buf`.
            let mut ends = [0usize; BATCH];
            let mut n = 0;
            for frame in frames.take(BATCH) {
                if n > 0 && buf.len() + frame.bytes.len() > GATHER {
                    break;
                }
                framing.lay_out(frame, buf);
                ends[n] = buf.len();
                n += 1;
            }
            let taken = match self.stream.try_write(buf) {
                Ok(written) => {
                    let whole = ends[..n].iter().take_while(|&&end| end <= written).count();
                    let start = if whole == 0 { 0 } else { ends[whole - 1] };
                    if whole == n || written == start {
                        Taken {
                            frames: whole,
                            partial: false,
                        }
                    } else {
                        rest.extend_from_slice(&buf[written..ends[whole]]);
                        Taken {
                            frames: whole + 1,
                            partial: true,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Taken::NONE,
                // The connection is broken: the frames are dropped like ones
                // the peer never read, and the task's next read ends it.
                Err(_) => Taken {
                    frames: n,
                    partial: false,
                },
            };
            framing.keep(taken.frames);
            if buf.capacity() > 4 * GATHER {
                *buf = Vec::with_capacity(GATHER);
            }
            taken
        })
    }
}

/// The header of an unmasked, final text frame of `len` bytes (RFC 6455
/// §5.2), starting with `first`.
fn text_header(first: u8, len: usize, buf: &mut [u8; 10]) -> &[u8] {
    buf[0] = first;
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

/// The task's side of a [`SharedSocket`]: tungstenite's, or the SSE task's.
pub(crate) struct SocketIo<F = WsText> {
    /// Shared with the threads that write frames straight from a send or a fan-out.
    socket: Arc<SharedSocket<F>>,
    /// Bytes the HTTP server read past the upgrade request: the client's
    /// first frames, read before the socket.
    early: Bytes,
}

impl<F: Framing> SocketIo<F> {
    pub(crate) fn new(socket: Arc<SharedSocket<F>>, early: Bytes) -> Self {
        // Even an empty slice would pin the HTTP server's whole read buffer
        // for the connection's life.
        let early = if early.is_empty() {
            Bytes::new()
        } else {
            early
        };
        Self { socket, early }
    }
}

/// A flush stays pending until the socket's whole rest is out: a client
/// taking a large frame slowly is still making progress.
impl<F> Progress for SocketIo<F> {
    fn progressed(&mut self) -> bool {
        std::mem::take(&mut self.socket.rest.lock().progressed)
    }
}

impl<F: Framing> AsyncRead for SocketIo<F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if read_prefix(&mut this.early, buf) {
            return Poll::Ready(Ok(()));
        }
        let stream = &this.socket.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match read_draining(stream, room, || (&*SockRef::from(stream)).read(unfilled)) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Runs `read`, a non-blocking read of at most `room` bytes from `stream`,
/// as `TcpStream::try_read` would; but a read that did not fill `room`
/// emptied the socket: saying so clears its readiness now, instead of one
/// more `recv` failing with EAGAIN before the task sleeps. (Edge-triggered
/// epoll reports the next bytes anew; tokio's own `poll_read` does the same,
/// and likewise not on Windows, where readiness is not edge-triggered.)
pub(crate) fn read_draining(
    stream: &TcpStream,
    room: usize,
    mut read: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut got = 0;
    let result = stream.try_io(Interest::READABLE, || {
        got = read()?;
        if got > 0 && got < room && !cfg!(windows) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
        Ok(()) => Ok(got),
    }
}

impl<F: Framing> AsyncWrite for SocketIo<F> {
    /// Takes all of `buf` or none of it: tungstenite hands over whole frames,
    /// and a frame the socket takes only in part must finish before a direct
    /// write may start, so its rest stays here rather than with tungstenite.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &*self.socket;
        let rest = &mut *socket.rest.lock();
        ready!(socket.poll_flush_rest(cx, rest))?;
        loop {
            match socket.stream.try_write(buf) {
                Ok(n) => {
                    rest.bytes.extend_from_slice(&buf[n..]);
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

    /// A client's socket and the server's end of it.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (peer, server)
    }

    #[tokio::test]
    async fn queued_frames_go_out_in_one_write() {
        let (mut peer, server) = connected().await;
        let socket = SharedSocket::new(server, WsText::default());
        let frames: Vec<Frame> = ["a", "bb", "ccc"]
            .into_iter()
            .map(|s| Frame::from(Bytes::from(s)))
            .collect();
        let taken = socket.try_write(&mut frames.iter());
        assert_eq!(
            taken,
            Taken {
                frames: 3,
                partial: false
            }
        );
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x81\x01a\x81\x02bb\x81\x03ccc");
    }

    /// A read that empties the socket stops there, and the next bytes still
    /// wake the reader; a read that fills the buffer leaves the rest for the
    /// next one; the peer closing reads as the end.
    #[tokio::test]
    async fn reads_wake_for_the_next_bytes_after_emptying_the_socket() {
        let (mut peer, server) = connected().await;
        let mut io = SocketIo::new(
            SharedSocket::new(server, WsText::default()),
            Bytes::from_static(b"ea"),
        );
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 2, "early bytes first");
        peer.write_all(b"abc").await.unwrap();
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"abc");
        // The peer stays open: only readiness, not a close, can wake the
        // reads after the buffer-filling ones.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let mut got = Vec::new();
            while got.len() < 10 {
                let n = io.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            (io, got)
        });
        peer.write_all(b"0123456789").await.unwrap();
        let (mut io, got) = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the reader was woken for every byte")
            .unwrap();
        assert_eq!(got, b"0123456789");
        drop(peer);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "closed");
    }

    /// A client's socket and the server's shared one over it, both with
    /// small buffers, so that a large frame goes out in part.
    async fn small_buffered() -> (TcpStream, Arc<SharedSocket>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let peer = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (peer, SharedSocket::new(server, WsText::default()))
    }

    /// A frame the socket took in part blocks every other write until the
    /// task flushed its rest, even when the socket has room again.
    #[tokio::test]
    async fn a_partly_written_frame_finishes_before_the_next() {
        let (mut peer, socket) = small_buffered().await;

        let big = vec![b'a'; 1 << 20];
        let first = Frame::from(Bytes::from(big.clone()));
        let one = |frame: &Frame| socket.try_write(&mut std::iter::once(frame));
        let (partial, blocked, whole) = (
            Taken {
                frames: 1,
                partial: true,
            },
            Taken {
                frames: 0,
                partial: false,
            },
            Taken {
                frames: 1,
                partial: false,
            },
        );
        assert_eq!(one(&first), partial);
        // The peer makes room; the next frame must still wait for the rest.
        let mut some = vec![0u8; 1024];
        let n = peer.read(&mut some).await.unwrap();
        assert!(n > 0);
        let second = Frame::from(Bytes::from_static(b"next"));
        assert_eq!(one(&second), blocked);

        let reader = tokio::spawn(async move {
            let mut got = some[..n].to_vec();
            let want = 10 + big.len() + 2 + 4;
            got.resize(want, 0);
            peer.read_exact(&mut got[n..]).await.unwrap();
            got
        });
        let mut io = SocketIo::new(socket.clone(), Bytes::new());
        io.flush().await.unwrap();
        assert_eq!(one(&second), whole);
        let got = reader.await.unwrap();
        let mut head = [0u8; 10];
        assert_eq!(&got[..10], text_header(PLAIN, 1 << 20, &mut head));
        assert!(got[10..10 + (1 << 20)].iter().all(|&b| b == b'a'));
        assert_eq!(&got[10 + (1 << 20)..], b"\x81\x04next");
    }

    /// A client that takes a large frame's rest slowly, but a little at a
    /// time, keeps its connection: the write timeout counts from the last
    /// bytes it took, not from the start of the flush.
    #[tokio::test]
    async fn a_slow_reader_of_a_large_rest_is_not_timed_out() {
        use crate::transport::write_timeout::WriteTimeout;
        use std::time::Duration;

        let (mut peer, socket) = small_buffered().await;
        let size = 256 << 10;
        let frame = Frame::from(Bytes::from(vec![b'a'; size]));
        assert!(socket.try_write(&mut std::iter::once(&frame)).partial);

        // 4 KiB every 20 ms: the flush takes over a second, several timeouts,
        // with the client never idle for one.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            while got.len() < 10 + size {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let n = peer.read(&mut buf).await.unwrap();
                assert!(n > 0, "the server closed the connection");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let timeout = Duration::from_millis(250);
        let mut io = WriteTimeout::new(SocketIo::new(socket, Bytes::new()), timeout);
        let started = std::time::Instant::now();
        io.flush().await.expect("the client kept taking bytes");
        let got = reader.await.unwrap();
        assert!(started.elapsed() > 2 * timeout, "the flush was not slow");
        assert_eq!(got.len(), 10 + size);
        assert!(got[10..].iter().all(|&b| b == b'a'));
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut buf = [0u8; 10];
        assert_eq!(text_header(PLAIN, 5, &mut buf), &[0x81, 5]);
        assert_eq!(text_header(PLAIN, 125, &mut buf), &[0x81, 125]);
        assert_eq!(text_header(PLAIN, 126, &mut buf), &[0x81, 126, 0, 126]);
        assert_eq!(
            text_header(PLAIN, 65_535, &mut buf),
            &[0x81, 126, 0xff, 0xff]
        );
        assert_eq!(
            text_header(PLAIN, 65_536, &mut buf),
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}
