//! A worker's share of connections: one task per connection, counting what it receives.

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::adapters::pushca::wire::{self, Incoming, MsgId};
use crate::adapters::{Adapter, Target};
use crate::stats::Recorder;
use crate::token::{Token, now_ns};

/// Fan-out sequence numbers above this are treated as junk rather than sized into a bitmap.
const MAX_SEQ: u64 = 1 << 30;
/// Commands queued per connection for sending (pairs over WebSocket).
const SEND_QUEUE: usize = 64;

/// A channel name, `<prefix>c<index>`, written where it is needed without a String of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelName<'a> {
    /// The run's channel-name prefix (`--channel-prefix`).
    pub(crate) prefix: &'a str,
    /// The channel's number, written after the `c`.
    pub(crate) index: u32,
}

impl Display for ChannelName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}c{}", self.prefix, self.index)
    }
}

/// Channel names: `<prefix>c<index>`.
pub(crate) fn channel_name(prefix: &str, index: u32) -> String {
    ChannelName { prefix, index }.to_string()
}

/// Which connections this worker opens and how.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Run id: messages carrying another run's token are ignored.
    pub(crate) run: u32,
    /// Global indices of this worker's connections (global index g listens on channel g % channels).
    pub(crate) globals: Vec<u32>,
    /// Number of channels the connections are spread over.
    pub(crate) channels: u32,
    /// Prefix of the generated channel names (`<prefix>c<i>`).
    pub(crate) prefix: String,
    /// Source addresses to spread connections over; empty lets the kernel choose.
    pub(crate) sources: Vec<Ipv4Addr>,
    /// Connections being set up at once.
    pub(crate) connect_concurrency: usize,
    /// Give each connection a queue of frames to send (pairs over WebSocket).
    pub(crate) senders: bool,
    /// Size of the pairs message-id space, for exactly-once checking; 0 outside pairs.
    pub(crate) pair_ids: u64,
    /// This worker's number: Pushca message ids carry it, so they are unique across workers.
    pub(crate) index: u32,
    /// Pairs with acknowledgement: a message stays in flight until its sender hears the ack.
    pub(crate) ack: bool,
}

/// Counters shared by the connection tasks of one worker.
pub(crate) struct Shared {
    /// Run id: frames carrying another run's token are counted as stale.
    pub(crate) run: u32,
    /// Connections established (connected, handshaken, subscribed).
    pub(crate) connected: AtomicU64,
    /// Connections that failed to connect, handshake or subscribe.
    pub(crate) connect_errors: AtomicU64,
    /// Established connections that ended before the worker stopped them.
    pub(crate) disconnects: AtomicU64,
    /// Connections whose warm-up probe arrived: their subscription is known to work.
    pub(crate) confirmed: AtomicU64,
    /// First receipts of a measured message (fan-out: by an included connection, of this step).
    pub(crate) deliveries: AtomicU64,
    /// Receipts of a message already received once.
    pub(crate) duplicated: AtomicU64,
    /// Pairs messages received by a client that was not their receiver, and messages whose id
    /// or sequence number is out of range.
    pub(crate) misrouted: AtomicU64,
    /// Measured messages received by connections not included in the measurement.
    pub(crate) unexpected: AtomicU64,
    /// Frames with a token from another run (replayed history), ignored.
    pub(crate) stale: AtomicU64,
    /// Error replies to WebSocket publish commands.
    pub(crate) ws_publish_errors: AtomicU64,
    /// Frames are Pushca's: told apart by [`wire::classify`], acknowledged where asked.
    pushca: bool,
    /// In-flight pairs messages end at the sender's acknowledgement (with `--ack`), not at
    /// delivery, and error replies are failed acknowledgements rather than refused publishes.
    release_on_ack: bool,
    /// Sends the server acknowledged to their sender (Pushca `<id>@@ACKNOWLEDGE`, or a 200
    /// from the with-acknowledge REST route).
    pub(crate) acks: AtomicU64,
    /// With `--ack`: sends answered with an error (not acknowledged in time, not connected).
    pub(crate) ack_failures: AtomicU64,
    /// Sender's send → acknowledgement round trip (µs).
    pub(crate) ack_latency: Recorder,
    /// Fan-out search: the first sequence number of the current step; earlier messages
    /// arriving now are counted as `late`, not as deliveries of this step.
    step_first_seq: AtomicU64,
    /// Fan-out search: first receipts of an earlier step's messages during this step.
    pub(crate) late: AtomicU64,
    /// When the latest counted fan-out delivery came ([`now_ns`]): when a step's deliveries ended.
    pub(crate) last_delivery_ns: AtomicU64,
    /// Per connection: a warm-up probe arrived.
    pub(crate) confirmed_flags: Vec<AtomicBool>,
    /// Per connection: confirmed when measuring started, so its deliveries are expected.
    pub(crate) included: Vec<AtomicBool>,
    /// Per connection: it was lost (the server or the network closed it).
    pub(crate) dropped: Vec<AtomicBool>,
    /// Per connection, in a rate search: measured in the current step, i.e.
    /// included and not lost before the step began. A connection the server
    /// dropped in an overloaded step fails that step, and no later one.
    pub(crate) in_step: Vec<AtomicBool>,
    /// Send-to-receipt latency of counted deliveries (µs).
    pub(crate) latency: Recorder,
    /// Time from a connection's turn at the gate to its being established (µs).
    pub(crate) connect_latency: Recorder,
    /// Unix nanoseconds of the first established connection (0: none), for connect rates.
    pub(crate) first_connect_ns: AtomicU64,
    /// Unix nanoseconds of the latest established connection, for connect rates.
    pub(crate) last_connect_ns: AtomicU64,
    /// Pairs: one bit per message id, set on first delivery.
    pair_seen: Vec<AtomicU64>,
    /// Pairs: messages sent and neither delivered nor refused yet.
    pub(crate) inflight: AtomicU64,
    /// Woken when `inflight` drops.
    pub(crate) inflight_dropped: Notify,
}

impl Shared {
    fn new(plan: &Plan, pushca: bool) -> Self {
        let (run, connections, pair_ids) = (plan.run, plan.globals.len(), plan.pair_ids);
        let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
        Shared {
            run,
            connected: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            ws_publish_errors: AtomicU64::new(0),
            pushca,
            release_on_ack: plan.ack,
            acks: AtomicU64::new(0),
            ack_failures: AtomicU64::new(0),
            ack_latency: Recorder::new(shards),
            step_first_seq: AtomicU64::new(0),
            late: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            confirmed_flags: (0..connections).map(|_| AtomicBool::new(false)).collect(),
            included: (0..connections).map(|_| AtomicBool::new(false)).collect(),
            dropped: (0..connections).map(|_| AtomicBool::new(false)).collect(),
            in_step: (0..connections).map(|_| AtomicBool::new(false)).collect(),
            latency: Recorder::new(shards),
            connect_latency: Recorder::new(shards),
            first_connect_ns: AtomicU64::new(0),
            last_connect_ns: AtomicU64::new(0),
            pair_seen: (0..pair_ids.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            inflight: AtomicU64::new(0),
            inflight_dropped: Notify::new(),
        }
    }

    /// Marks pairs message `id` delivered; true the first time.
    fn first_pair_delivery(&self, id: u64) -> Option<bool> {
        let word = self.pair_seen.get(usize::try_from(id / 64).ok()?)?;
        let bit = 1u64 << (id % 64);
        Some(word.fetch_or(bit, Relaxed) & bit == 0)
    }

    pub(crate) fn release_inflight(&self) {
        // Saturating: a late duplicate never drives the count below zero.
        let _ = self
            .inflight
            .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
        self.inflight_dropped.notify_one();
    }

    /// A send was acknowledged to its sender (`key` picks a histogram shard).
    pub(crate) fn on_send_acked(&self, key: usize, sent_ns: u64) {
        self.acks.fetch_add(1, Relaxed);
        self.ack_latency.record(key, latency_us(now_ns(), sent_ns));
        if self.release_on_ack {
            self.release_inflight();
        }
    }

    /// A send was answered with an error.
    pub(crate) fn on_send_failed(&self) {
        if self.release_on_ack {
            self.ack_failures.fetch_add(1, Relaxed);
        } else {
            self.ws_publish_errors.fetch_add(1, Relaxed);
        }
        self.release_inflight();
    }

    /// Fan-out search: starts counting a new step, whose messages have sequence numbers from
    /// `first_seq` on. Step counters restart; a message of an earlier step racing with this
    /// reset can at most be counted once more (the reset is not atomic with the receipts).
    pub(crate) fn begin_step(&self, first_seq: u64) {
        self.step_first_seq.store(first_seq, Relaxed);
        for ((in_step, included), dropped) in
            self.in_step.iter().zip(&self.included).zip(&self.dropped)
        {
            in_step.store(included.load(Relaxed) && !dropped.load(Relaxed), Relaxed);
        }
        for counter in [
            &self.deliveries,
            &self.duplicated,
            &self.misrouted,
            &self.unexpected,
            &self.late,
            &self.last_delivery_ns,
        ] {
            counter.store(0, Relaxed);
        }
        self.latency.reset();
    }

    fn on_connected(&self, local: usize, took: Duration) {
        let now = now_ns();
        let _ = self
            .first_connect_ns
            .compare_exchange(0, now, Relaxed, Relaxed);
        self.last_connect_ns.fetch_max(now, Relaxed);
        self.connect_latency
            .record(local, u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        self.connected.fetch_add(1, Relaxed);
    }
}

/// What one connection task saw, collected when the worker stops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientResult {
    /// The connection's index in its worker, to tell whether it was included.
    pub(crate) local: usize,
    /// The channel it listened on, to tell how many messages it should have received.
    pub(crate) channel: u32,
    /// Distinct measured fan-out messages received.
    pub(crate) unique: u64,
    /// Still connected when stopped.
    pub(crate) alive: bool,
}

pub(crate) struct ClientSet {
    /// Which connections were opened and how, kept to map connections to channels.
    pub(crate) plan: Plan,
    /// The counters the connection tasks update, which the worker reads.
    pub(crate) shared: Arc<Shared>,
    /// Per connection, the queue of frames to send (when `plan.senders`).
    pub(crate) senders: Vec<Option<mpsc::Sender<String>>>,
    /// One task per connection, each returning what it saw once stopped.
    handles: Vec<JoinHandle<ClientResult>>,
    /// Set to true to make every connection task close its connection and return.
    stop: watch::Sender<bool>,
}

impl ClientSet {
    /// Starts one task per connection; they connect `connect_concurrency` at a time.
    pub(crate) fn start(plan: Plan, adapter: Arc<Adapter>) -> Self {
        let n = plan.globals.len();
        let shared = Arc::new(Shared::new(&plan, adapter.target == Target::Pushca));
        let gate = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
        let (stop, stop_rx) = watch::channel(false);
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for (local, &global) in plan.globals.iter().enumerate() {
            let (tx, rx) = if plan.senders {
                let (tx, rx) = mpsc::channel(SEND_QUEUE);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            senders.push(tx);
            let channel = global % plan.channels.max(1);
            let source = crate::net::source_for(&plan.sources, local);
            let task = ClientTask {
                local,
                global,
                channel,
                channel_name: channel_name(&plan.prefix, channel),
                source,
                adapter: adapter.clone(),
                gate: gate.clone(),
                shared: shared.clone(),
                stop: stop_rx.clone(),
                outgoing: rx,
            };
            handles.push(tokio::spawn(task.run()));
        }
        ClientSet {
            plan,
            shared,
            senders,
            handles,
            stop,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.plan.globals.len()
    }

    /// Channels that still have a connected, unconfirmed subscriber here (at most `limit`).
    pub(crate) fn unconfirmed_channels(&self, limit: usize) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .shared
            .confirmed_flags
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.load(Relaxed))
            .map(|(local, _)| self.plan.globals[local] % self.plan.channels.max(1))
            .collect();
        out.sort_unstable();
        out.dedup();
        out.truncate(limit);
        out
    }

    /// Freezes which connections are measured: those confirmed now.
    pub(crate) fn include_confirmed(&self) -> u64 {
        let mut n = 0;
        for (flag, inc) in self
            .shared
            .confirmed_flags
            .iter()
            .zip(&self.shared.included)
        {
            let yes = flag.load(Relaxed);
            inc.store(yes, Relaxed);
            n += u64::from(yes);
        }
        n
    }

    /// Stops every task (closing the connections) and collects their results.
    pub(crate) async fn stop(self) -> Vec<ClientResult> {
        let _ = self.stop.send(true);
        drop(self.senders);
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(r) = h.await {
                out.push(r);
            }
        }
        out
    }
}

struct ClientTask {
    /// Index within the worker: picks the histogram shard and the per-connection flags.
    local: usize,
    /// Index across workers: the receiver number pairs messages are addressed to.
    global: u32,
    /// Number of the channel subscribed to, reported in the result.
    channel: u32,
    /// The channel's name, as subscribed.
    channel_name: String,
    /// Source address and port to connect from; `None` lets the kernel choose.
    source: Option<(Ipv4Addr, u16)>,
    /// Opens the connection the target's way.
    adapter: Arc<Adapter>,
    /// Bounds how many connections are being set up at once.
    gate: Arc<Semaphore>,
    /// The worker's counters, updated for every frame received.
    shared: Arc<Shared>,
    /// Changes when the worker stops: the task then closes its connection and returns.
    stop: watch::Receiver<bool>,
    /// Frames to send over the connection (pairs over WebSocket); `None` when it only listens.
    outgoing: Option<mpsc::Receiver<String>>,
}

impl ClientTask {
    async fn run(mut self) -> ClientResult {
        let mut result = ClientResult {
            local: self.local,
            channel: self.channel,
            unique: 0,
            alive: false,
        };
        let shared = self.shared.clone();
        let channels = [self.channel_name.clone()];
        let conn = {
            let Ok(_permit) = self.gate.acquire().await else {
                return result;
            };
            let started = Instant::now();
            let conn = tokio::select! {
                c = self.adapter.subscribe(&channels, self.source) => c,
                _ = self.stop.changed() => return result,
            };
            if conn.is_ok() {
                shared.on_connected(self.local, started.elapsed());
            }
            conn
        };
        let Ok(mut conn) = conn else {
            shared.connect_errors.fetch_add(1, Relaxed);
            return result;
        };
        result.alive = true;
        let mut seen = SeqSet::default();
        let (local, global, channel) = (self.local, self.global, self.channel);
        // What a received frame asks this connection to answer (a Pushca acknowledgement).
        let mut answer = String::new();
        // One stop future for the whole loop: re-creating it per frame showed in profiles.
        let stopped = self.stop.changed();
        tokio::pin!(stopped);
        // Bounded by the stop signal, which the worker always sends, and by the connection's end.
        loop {
            let mut on_payload = |frame: &[u8]| {
                on_frame(
                    &shared,
                    local,
                    global,
                    channel,
                    &mut seen,
                    frame,
                    &mut answer,
                );
            };
            let frame = tokio::select! {
                biased;
                _ = &mut stopped => break,
                Some(frame) = next_outgoing(&mut self.outgoing) => frame,
                r = conn.recv(&mut on_payload) => {
                    if !matches!(r, Ok(true)) {
                        shared.disconnects.fetch_add(1, Relaxed);
                        shared.dropped[local].store(true, Relaxed);
                        result.alive = false;
                        break;
                    }
                    if answer.is_empty() {
                        continue;
                    }
                    std::mem::take(&mut answer)
                }
            };
            // A server that stopped reading must not keep the stop waiting.
            let sent = tokio::select! {
                biased;
                _ = &mut stopped => break,
                sent = conn.send_text(frame) => sent,
            };
            if sent.is_err() {
                shared.disconnects.fetch_add(1, Relaxed);
                shared.dropped[local].store(true, Relaxed);
                result.alive = false;
                break;
            }
        }
        result.unique = seen.count;
        result
    }
}

async fn next_outgoing(rx: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Handles one payload of connection `local` (global index `global`, subscribed to channel
/// `channel` in fan-out); a frame to send back is appended to `answer`.
fn on_frame(
    shared: &Shared,
    local: usize,
    global: u32,
    channel: u32,
    seen: &mut SeqSet,
    frame: &[u8],
    answer: &mut String,
) {
    if shared.pushca {
        match wire::classify(frame) {
            Incoming::SendAcked(MsgId { sent_ns, .. }) => {
                return shared.on_send_acked(local, sent_ns);
            }
            Incoming::SendFailed => return shared.on_send_failed(),
            Incoming::NeedsAck(id) => wire::write_receiver_ack(answer, id),
            Incoming::Other => {}
        }
    }
    let Some(token) = Token::find(frame) else {
        // Herald replies to WebSocket commands: {"id":n,"result":..} or {"id":n,"error":..}.
        if frame.starts_with(b"{\"id\":") && memchr::memmem::find(frame, b"\"error\"").is_some() {
            shared.on_send_failed();
        }
        return;
    };
    if token.run() != shared.run {
        shared.stale.fetch_add(1, Relaxed);
        return;
    }
    match token {
        Token::Probe { .. } => {
            if !shared.confirmed_flags[local].swap(true, Relaxed) {
                shared.confirmed.fetch_add(1, Relaxed);
            }
        }
        // Another channel's message: its sequence number says nothing about this one's.
        Token::Measured { channel: to, .. } if to != channel => {
            shared.misrouted.fetch_add(1, Relaxed);
        }
        Token::Measured { seq, sent_ns, .. } => match seen.insert(seq) {
            Some(true) if seq < shared.step_first_seq.load(Relaxed) => {
                shared.late.fetch_add(1, Relaxed);
            }
            Some(true) if shared.included[local].load(Relaxed) => {
                let now = now_ns();
                shared.deliveries.fetch_add(1, Relaxed);
                shared.last_delivery_ns.fetch_max(now, Relaxed);
                shared.latency.record(local, latency_us(now, sent_ns));
            }
            Some(true) => {
                shared.unexpected.fetch_add(1, Relaxed);
            }
            Some(false) => {
                shared.duplicated.fetch_add(1, Relaxed);
            }
            None => {
                shared.misrouted.fetch_add(1, Relaxed);
            }
        },
        Token::Pair {
            receiver,
            id,
            sent_ns,
            ..
        } => {
            if receiver != global {
                shared.misrouted.fetch_add(1, Relaxed);
                return;
            }
            match shared.first_pair_delivery(id) {
                Some(true) => {
                    shared.deliveries.fetch_add(1, Relaxed);
                    shared.latency.record(local, latency_us(now_ns(), sent_ns));
                    if !shared.release_on_ack {
                        shared.release_inflight();
                    }
                }
                Some(false) => {
                    shared.duplicated.fetch_add(1, Relaxed);
                }
                None => {
                    shared.misrouted.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

fn latency_us(now_ns: u64, sent_ns: u64) -> u64 {
    now_ns.saturating_sub(sent_ns) / 1000
}

/// The set of fan-out sequence numbers a connection has received: a growable bitmap.
#[derive(Debug, Default)]
pub(crate) struct SeqSet {
    /// Bit `seq % 64` of word `seq / 64` is set once `seq` has been received.
    words: Vec<u64>,
    /// Distinct members.
    pub(crate) count: u64,
}

impl SeqSet {
    /// `Some(true)` if newly added, `Some(false)` if already present, `None` if out of range.
    pub(crate) fn insert(&mut self, seq: u64) -> Option<bool> {
        if seq >= MAX_SEQ {
            return None;
        }
        let word = usize::try_from(seq / 64).ok()?;
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.count += u64::from(fresh);
        Some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_counts_distinct() {
        let mut s = SeqSet::default();
        assert_eq!(s.insert(0), Some(true));
        assert_eq!(s.insert(1000), Some(true));
        assert_eq!(s.insert(0), Some(false));
        assert_eq!(s.insert(MAX_SEQ), None);
        assert_eq!(s.count, 2);
    }

    fn plan(connections: u32, pair_ids: u64, ack: bool) -> Plan {
        Plan {
            run: 9,
            globals: (0..connections).collect(),
            channels: connections,
            prefix: String::new(),
            sources: Vec::new(),
            connect_concurrency: 1,
            senders: false,
            pair_ids,
            index: 0,
            ack,
        }
    }

    /// Feeds `frame` to connection `local` (= global), returning what it answers.
    fn feed(shared: &Shared, local: u32, seen: &mut SeqSet, frame: &str) -> String {
        let mut answer = String::new();
        on_frame(
            shared,
            local as usize,
            local,
            0,
            seen,
            frame.as_bytes(),
            &mut answer,
        );
        answer
    }

    /// In a rate search, a connection lost in one step is not expected to receive in the
    /// next: it failed the step it was lost in, and would fail every later one too.
    #[test]
    fn a_step_measures_the_connections_alive_when_it_began() {
        let shared = Shared::new(&plan(3, 128, false), false);
        for i in 0..2 {
            shared.included[i].store(true, Relaxed);
        }
        shared.begin_step(0);
        assert!(shared.in_step[0].load(Relaxed) && shared.in_step[1].load(Relaxed));
        assert!(!shared.in_step[2].load(Relaxed), "never included");
        shared.dropped[1].store(true, Relaxed);
        assert!(
            shared.in_step[1].load(Relaxed),
            "lost during the step: still expected"
        );
        shared.begin_step(10);
        assert!(shared.in_step[0].load(Relaxed));
        assert!(!shared.in_step[1].load(Relaxed), "lost before the step");
    }

    #[test]
    fn frames_are_counted_once_and_by_run() {
        let shared = Shared::new(&plan(2, 128, false), false);
        shared.included[0].store(true, Relaxed);
        let mut seen = SeqSet::default();
        let m = |run, seq| {
            Token::Measured {
                run,
                channel: 0,
                seq,
                sent_ns: now_ns(),
            }
            .payload(32)
        };
        for frame in [m(9, 0), m(9, 1), m(9, 1), m(8, 2)] {
            feed(&shared, 0, &mut seen, &frame);
        }
        assert_eq!(shared.deliveries.load(Relaxed), 2);
        assert_eq!(shared.duplicated.load(Relaxed), 1);
        assert_eq!(shared.stale.load(Relaxed), 1);
        // Another channel's message is misrouted, and takes no sequence number of this one's.
        let elsewhere = Token::Measured {
            run: 9,
            channel: 1,
            seq: 3,
            sent_ns: now_ns(),
        }
        .payload(32);
        feed(&shared, 0, &mut seen, &elsewhere);
        assert_eq!(shared.misrouted.load(Relaxed), 1);
        feed(&shared, 0, &mut seen, &m(9, 3));
        assert_eq!(shared.deliveries.load(Relaxed), 3);
        shared.misrouted.store(0, Relaxed);
        let probe = Token::Probe { run: 9, channel: 0 }.payload(0);
        feed(&shared, 1, &mut SeqSet::default(), &probe);
        feed(&shared, 1, &mut SeqSet::default(), &probe);
        assert_eq!(shared.confirmed.load(Relaxed), 1);
        // A new step: only its own messages (seq >= 5) count; an earlier one is late.
        shared.begin_step(5);
        assert_eq!(shared.deliveries.load(Relaxed), 0);
        for frame in [m(9, 4), m(9, 5), m(9, 6)] {
            feed(&shared, 0, &mut seen, &frame);
        }
        assert_eq!(shared.deliveries.load(Relaxed), 2);
        assert_eq!(shared.late.load(Relaxed), 1);
        assert!(shared.last_delivery_ns.load(Relaxed) > 0);
        assert_eq!(shared.latency.merged().len(), 2);
        shared.begin_step(0);
        // Pairs: the receiver check and exactly-once by id.
        shared.inflight.store(2, Relaxed);
        let p = |receiver, id| {
            Token::Pair {
                run: 9,
                receiver,
                id,
                sent_ns: now_ns(),
            }
            .payload(0)
        };
        feed(&shared, 1, &mut seen, &p(1, 5));
        feed(&shared, 1, &mut seen, &p(1, 5));
        feed(&shared, 1, &mut seen, &p(0, 6));
        assert_eq!(shared.deliveries.load(Relaxed), 1);
        assert_eq!(shared.duplicated.load(Relaxed), 1);
        assert_eq!(shared.misrouted.load(Relaxed), 1);
        assert_eq!(shared.inflight.load(Relaxed), 1);
        // A Herald error reply to a WebSocket publish refuses it.
        feed(
            &shared,
            0,
            &mut seen,
            r#"{"id":3,"error":{"code":"forbidden"}}"#,
        );
        assert_eq!(shared.ws_publish_errors.load(Relaxed), 1);
        assert_eq!(shared.inflight.load(Relaxed), 0);
    }

    #[test]
    fn pushca_acknowledgements_end_messages_in_ack_mode() {
        let shared = Shared::new(&plan(2, 128, true), true);
        shared.inflight.store(3, Relaxed);
        let sent_ns = now_ns();
        let id = MsgId {
            sent_ns,
            worker: 0,
            id: 7,
        };
        let body = Token::Pair {
            run: 9,
            receiver: 1,
            id: 7,
            sent_ns,
        }
        .payload(64);
        // The receiver gets `<id>@@<body>`: counted, and acknowledged, but still in flight.
        let answer = feed(&shared, 1, &mut SeqSet::default(), &format!("{id}@@{body}"));
        assert_eq!(
            answer,
            format!(r#"r{id}@@ACKNOWLEDGE@@{{"messageId":"{id}"}}"#)
        );
        assert_eq!(shared.deliveries.load(Relaxed), 1);
        assert_eq!(shared.inflight.load(Relaxed), 3);
        // The server's reply to that acknowledgement is ignored.
        assert_eq!(
            feed(
                &shared,
                1,
                &mut SeqSet::default(),
                &format!("r{id}@@ACKNOWLEDGE")
            ),
            ""
        );
        assert_eq!(shared.acks.load(Relaxed), 0);
        // The sender's acknowledgement ends it and times the round trip.
        feed(
            &shared,
            0,
            &mut SeqSet::default(),
            &format!("{id}@@ACKNOWLEDGE"),
        );
        assert_eq!(shared.acks.load(Relaxed), 1);
        assert_eq!(shared.ack_latency.merged().len(), 1);
        assert_eq!(shared.inflight.load(Relaxed), 2);
        // A timed-out send is a failed acknowledgement, not a refused publish.
        let timeout = format!(r#"{id}@@RESPONSE@@{{"body":null,"error":"acknowledge timeout"}}"#);
        feed(&shared, 0, &mut SeqSet::default(), &timeout);
        assert_eq!(shared.ack_failures.load(Relaxed), 1);
        assert_eq!(shared.ws_publish_errors.load(Relaxed), 0);
        assert_eq!(shared.inflight.load(Relaxed), 1);
        // PING replies and PONG are ignored.
        for other in ["p@@RESPONSE", "PONG"] {
            assert_eq!(feed(&shared, 0, &mut SeqSet::default(), other), "");
        }
        assert_eq!(shared.inflight.load(Relaxed), 1);
    }

    #[test]
    fn pushca_plain_sends_end_at_delivery() {
        let shared = Shared::new(&plan(2, 128, false), true);
        shared.inflight.store(2, Relaxed);
        let body = Token::Pair {
            run: 9,
            receiver: 1,
            id: 3,
            sent_ns: now_ns(),
        }
        .payload(64);
        // A plain message arrives as the raw body and needs no answer.
        assert_eq!(feed(&shared, 1, &mut SeqSet::default(), &body), "");
        assert_eq!(shared.deliveries.load(Relaxed), 1);
        assert_eq!(shared.inflight.load(Relaxed), 1);
        let id = MsgId {
            sent_ns: now_ns(),
            worker: 0,
            id: 3,
        };
        feed(
            &shared,
            0,
            &mut SeqSet::default(),
            &format!("{id}@@ACKNOWLEDGE"),
        );
        assert_eq!(shared.acks.load(Relaxed), 1);
        assert_eq!(shared.inflight.load(Relaxed), 1);
        // Without --ack an error reply is a refused publish.
        feed(
            &shared,
            0,
            &mut SeqSet::default(),
            r#"@@RESPONSE@@{"body":null,"error":"x"}"#,
        );
        assert_eq!(shared.ws_publish_errors.load(Relaxed), 1);
        assert_eq!(shared.inflight.load(Relaxed), 0);
    }
}
