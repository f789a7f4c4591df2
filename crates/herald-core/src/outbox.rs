//! A connection's outgoing queue: bounded in bytes, filled by fan-out without
//! ever waiting, drained by the connection's own task, or written straight to
//! its socket by whoever queues (see [`DirectWrite`]) or by a flusher.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::message::{Format, Message};

/// Identifies a connection within this process.
pub type ConnId = u64;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id.
pub fn next_conn_id() -> ConnId {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// What happened to a frame handed to [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the writer.
    Queued,
    /// The queue was over its byte bound: the frame was dropped and the outbox
    /// closed as a slow consumer. Returned once, on the frame that overflowed.
    Overflowed,
    /// The outbox was already closed; the frame was dropped.
    Closed,
}

/// Why an outbox stopped accepting frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client fell behind by more than the byte bound.
    SlowConsumer,
    /// The server disconnected the client on purpose
    /// ([`crate::Directory::disconnect`]): it should not come back.
    Evicted,
}

/// A connection's socket, written straight from the queueing thread while the
/// queue is empty: a frame for a few receivers then costs one write, not a
/// wake-up of each receiver's task. Transports that can share their socket
/// implement it; the rest use the queue only.
pub trait DirectWrite: Send + Sync {
    /// Writes `frames`, oldest first, as far as the socket takes them now
    /// (in one system call where it can), without waiting for it.
    fn try_write(&self, frames: &mut dyn Iterator<Item = &Frame>) -> Taken;
}

/// How many frames [`DirectWrite::try_write`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Frames taken, counting one taken in part. Zero when the socket is full
    /// or the writer still holds the rest of an earlier frame.
    pub frames: usize,
    /// The last frame taken went in part: the writer keeps its rest, and the
    /// connection's task must flush it before anything else is written.
    pub partial: bool,
}

impl Taken {
    /// Nothing taken.
    pub const NONE: Taken = Taken {
        frames: 0,
        partial: false,
    };
}

/// What the connection's task should do after [`Outbox::write_queued`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Everything queued is written; carries why the outbox closed, if it did.
    Written(Option<Closed>),
    /// The socket is full, or took a frame in part: flush the writer's rest,
    /// wait until the socket is writable, then call again.
    Blocked,
}

/// The outgoing queue of one connection.
pub struct Outbox {
    /// The connection this queue belongs to.
    id: ConnId,
    /// The wire format the connection's subscribers are encoded in.
    format: Arc<dyn Format>,
    /// Queued bytes allowed before the client counts as slow.
    limit: usize,
    /// Frames and their byte total; held only for O(1) pushes and drains.
    state: Mutex<State>,
    /// Wakes the writer when frames arrive or the outbox closes.
    wakeup: Wakeup,
}

/// Wakes the one task that writes an outbox. A flag and that task's waker:
/// tokio's `Notify` would lock its list of waiters on every poll, and an
/// outbox never has more than one waiting task.
#[derive(Default)]
struct Wakeup {
    /// Set by a wake, cleared by the wait that sees it: a wake with nobody
    /// waiting is kept for the next wait, so none is lost.
    set: AtomicBool,
    /// The waiting task, as its last poll left it.
    waker: AtomicWaker,
}

impl Wakeup {
    fn wake(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the check and the registration found no waker.
        if self.set.swap(false, Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One queued write.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The encoded bytes, shared with every subscriber of the same format.
    pub bytes: Bytes,
    /// The message, for formats that add per-connection framing (SSE ids).
    pub message: Option<Arc<Message>>,
}

impl From<Bytes> for Frame {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            message: None,
        }
    }
}

#[derive(Default)]
struct State {
    /// Frames waiting for the connection's task, oldest first.
    frames: VecDeque<Frame>,
    /// Bytes in `frames`, held to the outbox's limit (raised by `replayed`).
    bytes: usize,
    /// Bytes of replayed history queued since the queue was last empty: they
    /// raise the bound until then. A resume may replay more than the bound
    /// holds; history bounds it, and its bytes are shared with history.
    replayed: usize,
    /// Why the outbox closed, once it has: frames pushed after are dropped.
    closed: Option<Closed>,
    /// The socket, once the transport attached it; writes skip the queue
    /// only while it is empty, which keeps frames in order.
    writer: Option<Arc<dyn DirectWrite>>,
    /// When [`Outbox::push_direct`] was last called: frames closer together
    /// than [`DIRECT_GAP`] go through the queue, where they coalesce.
    last_direct: Option<Instant>,
    /// Set by [`Outbox::hold`]: nothing is written but by the task.
    held: bool,
}

/// Frames for one connection closer together than this (more than ~10,000 a
/// second) are queued for its task even when they could be written directly:
/// the task writes everything that queued meanwhile in one `send`, where
/// direct writes would pay one each.
const DIRECT_GAP: Duration = Duration::from_micros(100);

impl Outbox {
    pub fn new(id: ConnId, format: Arc<dyn Format>, limit: usize) -> Self {
        Self {
            id,
            format,
            limit,
            state: Mutex::new(State::default()),
            wakeup: Wakeup::default(),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn format(&self) -> &dyn Format {
        &*self.format
    }

    /// Queues `msg` in this connection's format. Never waits.
    pub fn push_message(&self, msg: &Arc<Message>) -> Pushed {
        self.push(self.frame(msg))
    }

    /// `msg` in this connection's format.
    fn frame(&self, msg: &Arc<Message>) -> Frame {
        let bytes = msg.encoded(&*self.format);
        let message = self.format.wants_message().then(|| msg.clone());
        Frame { bytes, message }
    }

    /// Queues stored `msg` replayed to a resuming client, beyond the byte
    /// bound: being behind by the history it asked for is not being slow.
    /// The bound counts again once the queue has emptied.
    pub fn push_replayed(&self, msg: &Arc<Message>) -> Pushed {
        let frame = self.frame(msg);
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        state.replayed += frame.bytes.len();
        self.enqueue(state, frame)
    }

    /// Like [`Outbox::push_message`], writing to the socket directly when it can.
    pub fn push_message_direct(&self, msg: &Arc<Message>) -> Pushed {
        self.push_direct(self.frame(msg))
    }

    /// Like [`Outbox::push`], but while nothing is queued and a socket is
    /// attached, writes `frame` to it here instead of waking the connection's
    /// task, unless the previous frame came less than `DIRECT_GAP` ago.
    /// Costs this thread a system call: for a few receivers, not for a
    /// fan-out to thousands (see [`Outbox::push_message_deferred`]).
    pub fn push_direct(&self, frame: impl Into<Frame>) -> Pushed {
        let frame = frame.into();
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        let now = Instant::now();
        let sparse = state
            .last_direct
            .replace(now)
            .is_none_or(|last| now.duration_since(last) >= DIRECT_GAP);
        if sparse
            && state.frames.is_empty()
            && !state.held
            && let Some(writer) = &state.writer
        {
            let taken = writer.try_write(&mut std::iter::once(&frame));
            if taken.frames == 1 {
                if taken.partial {
                    drop(state);
                    self.wakeup.wake();
                }
                return Pushed::Queued;
            }
        }
        self.enqueue(state, frame)
    }

    /// Queues `frame` unless that would exceed the byte bound. Never waits.
    pub fn push(&self, frame: impl Into<Frame>) -> Pushed {
        let frame = frame.into();
        let state = self.state.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        self.enqueue(state, frame)
    }

    /// Queues `msg` for a fan-out too big to write under the channel's lock.
    /// With a socket attached the task is not woken: `true` asks the caller to
    /// [`Outbox::flush`] this outbox once it let go of the lock. Without one
    /// the task is woken as by [`Outbox::push_message`].
    pub fn push_message_deferred(&self, msg: &Arc<Message>) -> (Pushed, bool) {
        let frame = self.frame(msg);
        let state = self.state.lock();
        if state.closed.is_some() {
            return (Pushed::Closed, false);
        }
        if state.writer.is_none() {
            return (self.enqueue(state, frame), false);
        }
        self.enqueue_quietly(state, frame)
    }

    /// Writes what is queued to the attached socket, as the connection's task
    /// would, and wakes the task for whatever the socket did not take.
    pub fn flush(&self) {
        let mut state = self.state.lock();
        if state.held {
            // The task writes it after what it holds it for.
            return;
        }
        if Self::write_out(&mut state) == Some(true) {
            return;
        }
        drop(state);
        self.wakeup.wake();
    }

    fn enqueue(&self, state: parking_lot::MutexGuard<'_, State>, frame: Frame) -> Pushed {
        let (pushed, first) = self.enqueue_quietly(state, frame);
        if first {
            self.wakeup.wake();
        }
        pushed
    }

    /// Queues `frame`; `true` when it is the only one queued, so whoever
    /// writes must be told. Wakes the writer itself only on an overflow.
    fn enqueue_quietly(
        &self,
        mut state: parking_lot::MutexGuard<'_, State>,
        frame: Frame,
    ) -> (Pushed, bool) {
        // A single frame larger than the bound still goes through to an empty
        // queue: the bound is about falling behind, not about message size.
        let len = frame.bytes.len();
        if state.held {
            // Kept back by the server (see `hold`), not left unread.
            state.replayed += len;
        }
        if state.bytes + len > self.limit + state.replayed && !state.frames.is_empty() {
            state.closed = Some(Closed::SlowConsumer);
            state.frames.clear();
            state.bytes = 0;
            state.replayed = 0;
            drop(state);
            self.wakeup.wake();
            return (Pushed::Overflowed, false);
        }
        state.bytes += len;
        state.frames.push_back(frame);
        (Pushed::Queued, state.frames.len() == 1)
    }

    /// Until [`Outbox::release`], frames wait in the queue for the
    /// connection's task, neither written by their publishers nor by a
    /// flusher: what a command queues (a resume's replay) and live messages
    /// after it go out behind its reply, which the task writes first.
    pub fn hold(&self) {
        self.state.lock().held = true;
    }

    /// Ends a [`Outbox::hold`], waking the task for what queued meanwhile.
    pub fn release(&self) {
        let mut state = self.state.lock();
        if !std::mem::take(&mut state.held) || state.frames.is_empty() {
            return;
        }
        drop(state);
        self.wakeup.wake();
    }

    /// Moves every queued frame into `out`; returns why the outbox closed, if
    /// it did. Frames queued before a close are still handed out.
    pub fn drain(&self, out: &mut Vec<Frame>) -> Option<Closed> {
        let mut state = self.state.lock();
        out.extend(state.frames.drain(..));
        state.bytes = 0;
        state.replayed = 0;
        if state.frames.capacity() > 64 {
            state.frames.shrink_to(8);
        }
        state.closed
    }

    /// Lets frames skip the queue and go straight to `writer` (see
    /// [`Outbox::push_direct`]). The connection's task then writes queued
    /// frames with [`Outbox::write_queued`] instead of draining them.
    pub fn attach(&self, writer: Arc<dyn DirectWrite>) {
        self.state.lock().writer = Some(writer);
    }

    /// Stops direct writes; the socket is going away.
    pub fn detach(&self) {
        self.state.lock().writer = None;
    }

    /// Writes queued frames to the attached socket, oldest first, until it is
    /// full. Frames written here and by [`Outbox::push_direct`] never
    /// interleave: both run under the queue's lock.
    pub fn write_queued(&self) -> Queue {
        let mut state = self.state.lock();
        match Self::write_out(&mut state) {
            Some(false) => Queue::Blocked,
            None | Some(true) => Queue::Written(state.closed),
        }
    }

    /// Writes queued frames to the attached socket: `None` without one,
    /// `Some(true)` once all went whole, `Some(false)` when the socket is full
    /// or took a frame in part.
    fn write_out(state: &mut State) -> Option<bool> {
        let writer = state.writer.as_ref()?;
        while !state.frames.is_empty() {
            let taken = writer.try_write(&mut state.frames.iter());
            for frame in state.frames.drain(..taken.frames) {
                state.bytes -= frame.bytes.len();
            }
            if taken.frames == 0 || taken.partial {
                return Some(false);
            }
        }
        state.replayed = 0;
        if state.frames.capacity() > 64 {
            state.frames.shrink_to(8);
        }
        Some(true)
    }

    /// Stops accepting frames and wakes the writer. Returns whether this
    /// call closed it (it was open).
    pub fn close(&self, why: Closed) -> bool {
        let mut state = self.state.lock();
        let open = state.closed.is_none();
        if open {
            state.closed = Some(why);
        }
        drop(state);
        self.wakeup.wake();
        open
    }

    /// Resolves once frames are queued or the outbox closed since the last
    /// drain. Only the connection's own task waits: of two tasks waiting at
    /// once, one would not be woken.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.wakeup.poll(cx)).await;
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// A socket for tests: takes frames only while `open`, recording each call's
/// frames as one batch.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct TestSocket {
    pub(crate) open: std::sync::atomic::AtomicBool,
    pub(crate) batches: Mutex<Vec<Vec<Bytes>>>,
}

#[cfg(test)]
impl TestSocket {
    pub(crate) fn opened() -> Arc<Self> {
        let socket = Self::default();
        socket.open.store(true, Ordering::Relaxed);
        Arc::new(socket)
    }

    /// Every frame written, in order.
    pub(crate) fn written(&self) -> Vec<Bytes> {
        self.batches.lock().concat()
    }
}

#[cfg(test)]
impl DirectWrite for TestSocket {
    fn try_write(&self, frames: &mut dyn Iterator<Item = &Frame>) -> Taken {
        if !self.open.load(Ordering::Relaxed) {
            return Taken::NONE;
        }
        let batch: Vec<Bytes> = frames.map(|f| f.bytes.clone()).collect();
        let taken = Taken {
            frames: batch.len(),
            partial: false,
        };
        self.batches.lock().push(batch);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Raw;

    #[test]
    fn overflow_closes_as_slow_consumer_once() {
        let o = Outbox::new(1, Arc::new(Raw), 10);
        assert_eq!(o.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"1")), Pushed::Overflowed);
        assert_eq!(o.push(Bytes::from_static(b"1")), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(Closed::SlowConsumer));
        assert!(out.is_empty(), "a slow consumer's backlog is discarded");
    }

    #[test]
    fn replayed_history_raises_the_bound_until_the_queue_empties() {
        use crate::channel::ChannelKey;
        use crate::message::Publication;
        let stored = |data: &'static [u8]| {
            Arc::new(Message::new(
                ChannelKey::new(&Arc::from("app"), "ch").unwrap(),
                Publication::new(Bytes::from_static(data)),
                1,
                Arc::from("e"),
            ))
        };
        let o = Outbox::new(1, Arc::new(Raw), 10);
        // Twice the bound of history, then live frames up to the bound.
        for _ in 0..4 {
            assert_eq!(o.push_replayed(&stored(b"12345")), Pushed::Queued);
        }
        assert_eq!(o.push(Bytes::from_static(b"1234567890")), Pushed::Queued);
        // Past the bound beyond the replay: slow after all.
        assert_eq!(o.push(Bytes::from_static(b"1")), Pushed::Overflowed);

        let o = Outbox::new(1, Arc::new(Raw), 10);
        o.push_replayed(&stored(b"123456789012"));
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), None);
        assert_eq!(out.len(), 1);
        // Emptied: the bound is the bound again.
        assert_eq!(o.push(Bytes::from_static(b"123456")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"123456")), Pushed::Overflowed);
    }

    #[test]
    fn drain_empties_the_byte_count() {
        let o = Outbox::new(1, Arc::new(Raw), 10);
        o.push(Bytes::from_static(b"123456"));
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, Bytes::from_static(b"123456"));
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.push(Bytes::from_static(b"123456")), Pushed::Queued);
    }

    #[test]
    fn oversize_frame_passes_an_empty_queue() {
        let o = Outbox::new(1, Arc::new(Raw), 4);
        assert_eq!(o.push(Bytes::from_static(b"123456")), Pushed::Queued);
    }

    #[tokio::test(start_paused = true)]
    async fn direct_writes_never_overtake_queued_frames() {
        let o = Outbox::new(1, Arc::new(Raw), 100);
        let socket = Arc::new(TestSocket::default());
        o.attach(socket.clone());
        let apart = || tokio::time::advance(DIRECT_GAP);
        assert_eq!(o.push_direct(Bytes::from_static(b"1")), Pushed::Queued);
        assert_eq!(o.queued_bytes(), 1, "blocked: queued");
        socket.open.store(true, Ordering::Relaxed);
        apart().await;
        o.push_direct(Bytes::from_static(b"2"));
        assert_eq!(o.queued_bytes(), 2, "queued behind the first, not written");
        assert!(socket.written().is_empty());
        assert_eq!(o.write_queued(), Queue::Written(None));
        apart().await;
        o.push_direct(Bytes::from_static(b"3"));
        assert_eq!(o.queued_bytes(), 0, "written straight away");
        assert_eq!(socket.written(), [&b"1"[..], b"2", b"3"]);
        o.detach();
        apart().await;
        o.push_direct(Bytes::from_static(b"4"));
        assert_eq!(o.queued_bytes(), 1, "detached: queued");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_outbox_leaves_every_write_to_its_task() {
        let o = Outbox::new(1, Arc::new(Raw), 100);
        let socket = TestSocket::opened();
        o.attach(socket.clone());
        o.hold();
        assert_eq!(o.push_direct(Bytes::from_static(b"1")), Pushed::Queued);
        o.flush();
        assert!(
            socket.written().is_empty(),
            "neither the publisher nor a flusher"
        );
        assert_eq!(o.queued_bytes(), 1);
        o.release();
        tokio::time::timeout(Duration::from_secs(1), o.ready())
            .await
            .expect("released: the task is woken");
        assert_eq!(o.write_queued(), Queue::Written(None));
        assert_eq!(socket.written(), [&b"1"[..]]);
        tokio::time::advance(DIRECT_GAP).await;
        o.push_direct(Bytes::from_static(b"2"));
        assert_eq!(socket.written(), [&b"1"[..], b"2"], "direct again");
    }

    #[test]
    fn frames_queued_while_held_do_not_count_as_slow() {
        let o = Outbox::new(1, Arc::new(Raw), 4);
        o.attach(TestSocket::opened());
        o.hold();
        for _ in 0..5 {
            assert_eq!(o.push_direct(Bytes::from_static(b"123")), Pushed::Queued);
        }
        o.release();
        assert_eq!(o.write_queued(), Queue::Written(None));
    }

    #[tokio::test(start_paused = true)]
    async fn frames_in_quick_succession_queue_to_coalesce() {
        let o = Outbox::new(1, Arc::new(Raw), 100);
        let socket = TestSocket::opened();
        o.attach(socket.clone());
        o.push_direct(Bytes::from_static(b"1"));
        tokio::time::advance(DIRECT_GAP / 2).await;
        o.push_direct(Bytes::from_static(b"2"));
        assert_eq!(socket.written(), [&b"1"[..]], "the second is too soon");
        assert_eq!(o.queued_bytes(), 1);
        assert_eq!(o.write_queued(), Queue::Written(None));
        tokio::time::advance(DIRECT_GAP).await;
        o.push_direct(Bytes::from_static(b"3"));
        assert_eq!(o.queued_bytes(), 0, "sparse again: written straight away");
        assert_eq!(socket.written(), [&b"1"[..], b"2", b"3"]);
    }

    #[tokio::test]
    async fn ready_is_not_lost_when_push_comes_first() {
        let o = Outbox::new(1, Arc::new(Raw), 10);
        o.push(Bytes::from_static(b"x"));
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .expect("a wake before the wait is kept");
    }
}
