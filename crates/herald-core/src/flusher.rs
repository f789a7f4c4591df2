//! Writes big fan-outs after the channel's lock is released, oldest first.
//!
//! A fan-out to many subscribers queues each frame without waking the
//! subscriber's task (see [`Outbox::push_message_deferred`]) and hands the
//! outboxes here. One task per shard writes them in the order they came,
//! a stride at a time, yielding in between so the runtime reads its sockets:
//! publishes that arrive meanwhile queue behind frames still waiting, and each
//! socket then gets everything in one write. Oldest first keeps the wait of
//! every subscriber close to one pass over all of them, as waking each task
//! did, where tasks taking turns a stride at a time would leave whoever is
//! last in a long fan-out waiting for every later one too.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::outbox::Outbox;

/// Writes between yields. Smaller strides let publishes in sooner.
const STRIDE: usize = 32;

/// The outboxes waiting to be written, sharded so that a machine with
/// several cores writes big fan-outs on several.
pub(crate) struct Flushers {
    /// One per core; a connection always goes to the same one, by its id.
    shards: Box<[Arc<Flusher>]>,
}

impl Flushers {
    /// One shard per core this process may run on.
    pub(crate) fn new() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        Self {
            shards: (0..n).map(|_| Arc::new(Flusher::default())).collect(),
        }
    }

    /// Writes what is queued in `unflushed`: soon, from a task, inside a
    /// runtime; here and now without one.
    pub(crate) fn flush(&self, unflushed: Vec<Arc<Outbox>>) {
        if unflushed.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            unflushed.iter().for_each(|outbox| outbox.flush());
            return;
        };
        if let [only] = &*self.shards {
            only.push(&runtime, unflushed);
            return;
        }
        let n = self.shards.len();
        let mut split: Vec<Vec<Arc<Outbox>>> = vec![Vec::new(); n];
        for outbox in unflushed {
            split[outbox.id() as usize % n].push(outbox);
        }
        for (shard, outboxes) in self.shards.iter().zip(split) {
            if !outboxes.is_empty() {
                shard.push(&runtime, outboxes);
            }
        }
    }
}

/// One shard: a queue and at most one task writing it.
#[derive(Default)]
struct Flusher {
    /// Held only to append or take a stride, never while writing.
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// Oldest first.
    outboxes: VecDeque<Arc<Outbox>>,
    /// A task is writing this queue; it stops once the queue is empty.
    running: bool,
}

impl Flusher {
    fn push(self: &Arc<Self>, runtime: &tokio::runtime::Handle, outboxes: Vec<Arc<Outbox>>) {
        let mut state = self.state.lock();
        state.outboxes.extend(outboxes);
        if state.running {
            return;
        }
        state.running = true;
        drop(state);
        let this = self.clone();
        runtime.spawn(async move { this.run().await });
    }

    async fn run(&self) {
        let mut stride = Vec::with_capacity(STRIDE);
        loop {
            tokio::task::yield_now().await;
            {
                let mut state = self.state.lock();
                if state.outboxes.is_empty() {
                    state.running = false;
                    return;
                }
                let n = state.outboxes.len().min(STRIDE);
                stride.extend(state.outboxes.drain(..n));
                if state.outboxes.capacity() > 4096 && state.outboxes.len() < 1024 {
                    state.outboxes.shrink_to(1024);
                }
            }
            stride.drain(..).for_each(|outbox| outbox.flush());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Raw;
    use crate::outbox::{DirectWrite, Frame, Taken};
    use bytes::Bytes;

    /// A socket that logs which connection each write was for.
    struct Logged(u64, Arc<Mutex<Vec<u64>>>);
    impl DirectWrite for Logged {
        fn try_write(&self, frames: &mut dyn Iterator<Item = &Frame>) -> Taken {
            self.1.lock().push(self.0);
            Taken {
                frames: frames.count(),
                partial: false,
            }
        }
    }

    #[tokio::test]
    async fn writes_oldest_first_across_fan_outs() {
        let flushers = Flushers {
            shards: vec![Arc::new(Flusher::default())].into(),
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let outboxes = |ids: std::ops::Range<u64>| -> Vec<Arc<Outbox>> {
            ids.map(|id| {
                let o = Arc::new(Outbox::new(id, Arc::new(Raw), 1 << 20));
                o.attach(Arc::new(Logged(id, log.clone())));
                o.push(Bytes::from_static(b"x"));
                o
            })
            .collect()
        };
        // Two fan-outs of more than a stride each, the second queued while
        // the first is still waiting: every write of the first comes first.
        flushers.flush(outboxes(0..100));
        flushers.flush(outboxes(100..200));
        for _ in 0..64 {
            if log.lock().len() == 200 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*log.lock(), (0..200).collect::<Vec<u64>>());
    }
}
