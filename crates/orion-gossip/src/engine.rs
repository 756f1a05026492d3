//! The gossip engine: one tokio task that owns the foca instance and is fed a
//! closed enum, [`GossipInput`], over one bounded channel. Datagrams come from
//! a receiver task, commands from the [`crate::Gossip`] handle, and timers from
//! a heap the engine keeps itself (each due timer becomes a
//! `GossipInput::Timer` turn, so timers and packets go through one dispatch).
//! Every turn is short and synchronous: decode, hand to foca, drain foca's
//! sends, timers and notifications, refresh the shared member view.
//!
//! Before foca sees a packet the engine inspects it: garbage is counted and
//! dropped, an identity claiming a node id that is live at another address is
//! refused (the packet if it is the sender, the update otherwise), and the
//! Lifeguard layer takes what it needs (suspicions about us, confirmations of
//! our suspicions, PingReq receipts).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::BufMut;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Codec, Foca, Header, Invalidates, Member as FocaMember,
    Message, OwnedNotification, State, Timer,
};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::{self, CodecError, WireCodec};
use crate::identity::NodeIdentity;
use crate::lifeguard::{self, Awareness, Suspicion};
use crate::transport::Transport;
use crate::{GossipConfig, Member, MemberEvent, MemberStatus, StatsCounters};

/// Magic of the engine's own out-of-band packet, the PingReq receipt (our
/// stand-in for memberlist's nack, see the crate doc).
const RECEIPT_MAGIC: [u8; 3] = *b"ORC";
/// Minimum interval between two log lines about bad packets from the network;
/// one line a second keeps a flood from becoming a log flood.
const BAD_PACKET_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Join announces: first retry after this, doubling each time.
const JOIN_BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Join backoff ceiling: a few probe periods, so a late seed is found quickly.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Join announces give up after this many rounds (about 20 s with the backoff
/// above); foca's periodic announce keeps trying to heal afterwards.
const JOIN_ROUNDS_MAX: u32 = 14;
/// Seeds kept for join retries; a cluster needs a handful, not hundreds.
const SEEDS_MAX: usize = 16;
/// Leave: extra gossip rounds after foca's own one, to survive a lost datagram.
const LEAVE_EXTRA_ROUNDS: u32 = 2;
/// Leave: pause between those rounds (well under a probe period).
const LEAVE_ROUND_GAP: Duration = Duration::from_millis(30);
/// Open Lifeguard suspicions kept; one per suspected member, so this is far
/// above any cluster Orion targets. Beyond it, suspicions use the plain timeout.
const SUSPICIONS_MAX: usize = 1024;
/// Remembered "left" announcements (node id, generation); oldest dropped first.
const LEFT_LOG_MAX: usize = 1024;
/// Metadata kept per identity. One per member, so far above any cluster Orion
/// targets (5,000 nodes); beyond it, entries of identities foca forgot are
/// dropped, and if none can be, new metadata is refused until some can.
const METAS_MAX: usize = 16_384;
/// A member whose metadata we lack is asked again after this long (a lost
/// datagram, a member busy joining).
const META_RETRY: Duration = Duration::from_millis(1000);
/// Metadata requests sent in one engine turn: bounds the burst of a member that
/// learns of a thousand others at once (each request is one small datagram).
const META_ASKS_PER_TURN: usize = 32;
/// How often the engine looks for members whose metadata is still missing.
const META_SWEEP: Duration = Duration::from_millis(250);
/// News (a member's state, its metadata) reaches the shared view and the event
/// stream at most this late: syncing the view walks the whole member table, so
/// a burst of news (a thousand members joining) costs one walk per 20 ms rather
/// than one per packet. Small beside the ~1 s it takes to declare a member down.
const VIEW_SYNC_DELAY: Duration = Duration::from_millis(20);
/// The join's member-list pull (anti-entropy, once per join): a member asks one random member
/// for its whole member list when its own count has not moved for this long, so the mass of a
/// join's gossip has passed and what is still missing will not come by rumour soon.
const PULL_QUIET: Duration = Duration::from_secs(1);
/// Pulls per join. After the first, another only if the count moved since (the last pull, or
/// gossip meanwhile, taught us something); a pull that taught nothing ends it.
const PULLS_MAX: u32 = 3;
/// The first pull happens at this check even if the count is still moving (a large cluster's
/// join trickles on for seconds, and the pull is what ends the trickle).
const PULL_FIRST_BY_CHECK: u32 = 4;
/// Checks per join: every pull happens within this many [`PULL_QUIET`]s of the join, so its
/// cost stays a join's cost, never a steady one.
const PULL_CHECKS_MAX: u32 = 12;
/// Member lists one engine sends per second, at most: a list is ~N/40 datagrams (about 25 at
/// 1,000 members), so this bounds what a burst of requests can make us send.
const MEMBER_LISTS_PER_S: u32 = 8;

/// Everything the engine reacts to. Closed: the engine has no other input.
pub(crate) enum GossipInput<M> {
    /// A datagram and the address it came from.
    Data(Vec<u8>, SocketAddr),
    /// A timer that came due (produced by the engine's own heap).
    Timer(LoopTimer<M>),
    /// A request from a [`crate::Gossip`] handle.
    Command(Command),
    /// The host at this address refused a datagram of ours: nothing listens there any more.
    Refused(SocketAddr),
}

pub(crate) enum Command {
    Join(Vec<SocketAddr>),
    /// Announce this node's note (bytes within `NOTE_BYTES_MAX`).
    Note(Vec<u8>),
    Leave(oneshot::Sender<()>),
    /// Test hook: block the engine task for this long, as a stalled process.
    #[cfg(any(test, feature = "sim"))]
    Stall(Duration, StallKind),
}

/// How a stall ends (fault injection, see [`crate::Gossip::starve`]).
#[cfg(any(test, feature = "sim"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallKind {
    /// Timers and datagrams that came due during the stall are handled in any order.
    Whole,
    /// Timers run on time; datagrams wait in the queue until the stall ends:
    /// the datagram path alone is starved, as in a process whose timers run on
    /// threads of their own (memberlist's design, the Lifeguard paper's setting).
    Packets,
}

pub(crate) enum LoopTimer<M> {
    Foca(Timer<NodeIdentity<M>>),
    /// A Lifeguard suspicion may have reached its deadline.
    Suspicion(SuspicionKey),
    JoinRetry(u32),
    LeaveRound(u32),
    /// Ask again for metadata that has not come.
    MetaSweep,
    /// Bring the shared view up to date with foca's table.
    SyncView,
    /// Time to look whether the member count is quiet, and pull a member list.
    MembersPull,
}

/// Progress of the join's member-list pull.
#[derive(Default)]
struct PullState {
    checks: u32,
    pulls: u32,
    last_count: usize,
    /// The last check pulled; if the count has not moved by the next, we are done.
    pulled_last: bool,
}

/// A suspicion is about one incarnation of one identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SuspicionKey {
    addr: SocketAddr,
    generation: u64,
    incarnation: u16,
}

struct Scheduled<M> {
    at: Instant,
    seq: u64,
    timer: LoopTimer<M>,
}
impl<M> PartialEq for Scheduled<M> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<M> Eq for Scheduled<M> {}
impl<M> PartialOrd for Scheduled<M> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<M> Ord for Scheduled<M> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Node ids (with generation) known to have left on purpose. Shared between
/// foca's broadcast handler and the engine (same task, so never contended).
#[derive(Default)]
pub(crate) struct LeftLog {
    order: VecDeque<(Arc<str>, u64)>,
}
impl LeftLog {
    fn contains(&self, node_id: &str, generation: u64) -> bool {
        self.order
            .iter()
            .any(|(n, g)| &**n == node_id && *g == generation)
    }
    fn insert(&mut self, node_id: Arc<str>, generation: u64) -> bool {
        if self.contains(&node_id, generation) {
            return false;
        }
        if self.order.len() >= LEFT_LOG_MAX {
            self.order.pop_front();
        }
        self.order.push_back((node_id, generation));
        true
    }
}

/// Key under which foca keeps a custom broadcast in its queue: one "left" note per node life,
/// and one note per node (a newer version replaces the older in the queue).
pub(crate) enum BroadcastKey {
    Leave(Arc<str>, u64),
    Note(Arc<str>, u64, u64),
}
impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (BroadcastKey::Leave(a, g), BroadcastKey::Leave(b, h)) => a == b && g >= h,
            (BroadcastKey::Note(a, g, v), BroadcastKey::Note(b, h, w)) => {
                a == b && (g, v) >= (h, w)
            }
            _ => false,
        }
    }
}

/// foca custom broadcast handler for "node left" notes and nodes' notes.
pub(crate) struct LeaveHandler(pub(crate) Arc<Mutex<LeftLog>>, pub(crate) Arc<Notes>);
impl<M> BroadcastHandler<NodeIdentity<M>> for LeaveHandler {
    type Key = BroadcastKey;
    type Error = CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity<M>>,
    ) -> Result<Option<BroadcastKey>, CodecError> {
        if codec::is_note(data) {
            let note = codec::decode_note(data, crate::NOTE_BYTES_MAX)?;
            let node_id: Arc<str> = note.node_id.as_str().into();
            let (generation, version) = (note.generation, note.version);
            // Only news is passed on, or the note would circulate forever.
            return Ok(self
                .1
                .insert(note)
                .then_some(BroadcastKey::Note(node_id, generation, version)));
        }
        let (node_id, generation) = codec::decode_leave(data)?;
        let node_id: Arc<str> = node_id.into();
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if log.insert(Arc::clone(&node_id), generation) {
            Ok(Some(BroadcastKey::Leave(node_id, generation)))
        } else {
            // Already known: do not re-queue, or the note would circulate forever.
            Ok(None)
        }
    }
}

type FocaT<M> = Foca<NodeIdentity<M>, WireCodec<M>, foca_rand::rngs::SmallRng, LeaveHandler>;

/// Logs one line per interval and counts what it kept quiet.
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}
impl RateLimitedLog {
    fn warn(&mut self, what: &str, from: SocketAddr, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < BAD_PACKET_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(%from, suppressed = self.suppressed, "gossip: {what}: {detail}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// The probe we are running, for Lifeguard bookkeeping.
struct ProbeTrack {
    number: u8,
    /// Helpers we sent a PingReq to, and whether their receipt came back.
    helpers: Vec<(SocketAddr, bool)>,
}

/// The latest note of every node (ourselves included), shared with the handles.
pub(crate) struct Notes {
    map: Mutex<HashMap<Arc<str>, codec::NoteWire>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Notes {
    pub(crate) fn new() -> Notes {
        Notes {
            map: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Keeps `note` if it is newer than what we hold of its node; true if so.
    fn insert(&self, note: codec::NoteWire) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = map.get(note.node_id.as_str()) {
            if (old.generation, old.version) >= (note.generation, note.version) {
                return false;
            }
        } else if map.len() >= crate::NOTES_MAX {
            // A flood of made-up node ids must not grow memory.
            return false;
        }
        map.insert(note.node_id.as_str().into(), note);
        drop(map);
        self.changed.send_modify(|n| *n += 1);
        true
    }

    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.to_string(), v.data.clone()))
            .collect()
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

pub(crate) struct Shared<M> {
    pub(crate) view: RwLock<HashMap<Arc<str>, Member<M>>>,
    pub(crate) stats: StatsCounters,
    pub(crate) awareness: std::sync::atomic::AtomicU32,
}

pub(crate) struct Engine<M, T> {
    foca: FocaT<M>,
    rt: AccumulatingRuntime<NodeIdentity<M>>,
    socket: Arc<T>,
    cfg: GossipConfig,
    me: NodeIdentity<M>,
    timers: BinaryHeap<Reverse<Scheduled<M>>>,
    seq: u64,
    awareness: Awareness,
    suspicions: HashMap<SuspicionKey, (Suspicion, Timer<NodeIdentity<M>>)>,
    shared: Arc<Shared<M>>,
    events: broadcast::Sender<MemberEvent<M>>,
    left: Arc<Mutex<LeftLog>>,
    my_incarnation: u16,
    /// Highest incarnation of ours someone suspected; refutations are counted once.
    refuted_incarnation: Option<u16>,
    probe: Option<ProbeTrack>,
    seeds: Vec<SocketAddr>,
    bad_log: RateLimitedLog,
    scratch: Vec<u8>,
    leave_reply: Option<oneshot::Sender<()>>,
    stopped: bool,
    /// Version of this node's latest note (grows within a generation).
    note_version: u64,
    /// Our own metadata and its JSON (what the metadata packet carries).
    my_meta: Arc<M>,
    my_meta_json: Arc<[u8]>,
    /// Metadata of other members, per identity, as each member sent it.
    metas: HashMap<NodeIdentity<M>, Arc<M>>,
    /// When we last asked a member for its metadata.
    meta_asked: HashMap<NodeIdentity<M>, Instant>,
    /// The shared view may be out of date with foca's table or `metas`.
    view_dirty: bool,
    /// A `SyncView` timer is pending.
    sync_scheduled: bool,
    /// Live members whose metadata was missing at the last sync.
    metas_missing: usize,
    pull: PullState,
    /// The member we last pulled a member list from: lists are accepted from it alone.
    pull_from: Option<SocketAddr>,
    /// Member lists sent in the current one-second window, and when it started.
    lists_sent: (Option<Instant>, u32),
}

impl<M, T> Engine<M, T>
where
    M: serde::Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static,
    T: Transport,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: GossipConfig,
        foca_config: foca::Config,
        me: NodeIdentity<M>,
        my_meta: Arc<M>,
        my_meta_json: Arc<[u8]>,
        socket: Arc<T>,
        shared: Arc<Shared<M>>,
        events: broadcast::Sender<MemberEvent<M>>,
        seed: u64,
        notes: Arc<Notes>,
    ) -> Self {
        use foca_rand::SeedableRng;
        let left = Arc::new(Mutex::new(LeftLog::default()));
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            foca_config,
            foca_rand::rngs::SmallRng::seed_from_u64(seed),
            WireCodec::new(),
            LeaveHandler(Arc::clone(&left), notes),
        );
        let awareness = Awareness::new(cfg.lifeguard.awareness_max);
        let mut engine = Self {
            foca,
            rt: AccumulatingRuntime::new(),
            socket,
            cfg,
            me,
            timers: BinaryHeap::new(),
            seq: 0,
            awareness,
            suspicions: HashMap::new(),
            shared,
            events,
            left,
            my_incarnation: 0,
            refuted_incarnation: None,
            probe: None,
            seeds: Vec::new(),
            bad_log: RateLimitedLog {
                last: None,
                suppressed: 0,
            },
            scratch: Vec::new(),
            leave_reply: None,
            stopped: false,
            note_version: 0,
            my_meta,
            my_meta_json,
            metas: HashMap::new(),
            meta_asked: HashMap::new(),
            view_dirty: true,
            sync_scheduled: false,
            metas_missing: 0,
            pull: PullState::default(),
            pull_from: None,
            lists_sent: (None, 0),
        };
        engine.sync_view();
        engine.schedule(META_SWEEP, LoopTimer::MetaSweep);
        engine
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<GossipInput<M>>) {
        while !self.stopped {
            let next_at = self.timers.peek().map(|Reverse(s)| s.at);
            let input = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(input) => input,
                    None => break,
                },
                () = sleep_until_opt(next_at) => match self.timers.pop() {
                    Some(Reverse(s)) => GossipInput::Timer(s.timer),
                    None => continue,
                },
            };
            #[cfg(any(test, feature = "sim"))]
            if let GossipInput::Command(Command::Stall(d, kind)) = input {
                let until = Instant::now() + d;
                if kind == StallKind::Packets {
                    // Timers run on time; datagrams wait in the queue.
                    while let Some(at) = self.timers.peek().map(|Reverse(s)| s.at)
                        && at <= until
                    {
                        tokio::time::sleep_until(at).await;
                        let Some(Reverse(s)) = self.timers.pop() else {
                            break;
                        };
                        self.turn(GossipInput::Timer(s.timer));
                    }
                }
                tokio::time::sleep_until(until).await;
                continue;
            }
            self.turn(input);
        }
        tracing::debug!(node = %self.me.node_id, "gossip engine stopped");
    }

    fn turn(&mut self, input: GossipInput<M>) {
        let mut sync_now = false;
        match input {
            GossipInput::Data(data, from) => self.on_data(&data, from),
            GossipInput::Refused(addr) => {
                self.on_refused(addr);
                // A member declared down shows at once: it is why refusals are read.
                sync_now = true;
            }
            GossipInput::Timer(LoopTimer::SyncView) => {
                self.sync_scheduled = false;
                sync_now = self.view_dirty;
            }
            GossipInput::Timer(LoopTimer::MetaSweep) => {
                self.schedule(META_SWEEP, LoopTimer::MetaSweep);
                // The sync asks for what is still missing.
                if self.metas_missing > 0 {
                    self.view_dirty = true;
                }
            }
            // A foca timer that changes a member's state says so in a
            // notification (`ProbeFailed` for a new suspect, `MemberDown`), which
            // `drain` sees.
            GossipInput::Timer(t) => self.on_timer(t),
            GossipInput::Command(c) => {
                self.on_command(c);
                self.drain();
                // A join or a leave shows at once.
                self.sync_view();
                self.view_dirty = false;
                self.shared.awareness.store(self.awareness.score(), Relaxed);
                return;
            }
        }
        self.drain();
        // Most packets of a converged cluster carry no news (a ping, an ack):
        // they leave foca's table as it was, so the O(members) sync is skipped;
        // news is synced once per `VIEW_SYNC_DELAY`, however much of it came.
        if sync_now {
            self.sync_view();
            self.view_dirty = false;
        } else if self.view_dirty && !self.sync_scheduled {
            self.sync_scheduled = true;
            self.schedule(VIEW_SYNC_DELAY, LoopTimer::SyncView);
        }
        self.shared.awareness.store(self.awareness.score(), Relaxed);
    }

    fn schedule(&mut self, after: Duration, timer: LoopTimer<M>) {
        self.seq += 1;
        self.timers.push(Reverse(Scheduled {
            at: Instant::now() + after,
            seq: self.seq,
            timer,
        }));
    }

    fn lifeguard(&self) -> bool {
        self.cfg.lifeguard.enabled
    }

    // ---- inputs -------------------------------------------------------------

    fn on_data(&mut self, data: &[u8], from: SocketAddr) {
        let stats = &self.shared.stats;
        stats.packets_received.fetch_add(1, Relaxed);
        stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
        if data.len() > self.cfg.max_packet_bytes {
            self.bad(from, "oversize packet", &data.len());
            return;
        }
        if data.starts_with(&RECEIPT_MAGIC) {
            self.on_receipt(data, from);
            return;
        }
        if data.starts_with(&codec::META_MAGIC) {
            self.on_meta(data, from);
            return;
        }
        if data.starts_with(&codec::LIST_MAGIC) {
            self.on_list(data, from);
            return;
        }
        let mut parsed = match codec::parse_packet::<M>(data) {
            Ok(p) => p,
            Err(e) => {
                self.bad(from, "undecodable packet", &e);
                return;
            }
        };
        let src = parsed.header.src.clone();
        if self.is_impostor(&src) {
            self.shared.stats.impostor_packets.fetch_add(1, Relaxed);
            self.bad(
                from,
                "refused packet from a second claimant of a live node id",
                &format_args!("{src:?}"),
            );
            return;
        }
        if let Some(m) = self
            .shared
            .view
            .write()
            .ok()
            .as_mut()
            .and_then(|v| v.get_mut(&*src.node_id))
            && m.addr == src.addr
        {
            m.last_contact = Instant::now();
        }
        // A helper we asked to ping someone for us answers with a receipt.
        if let Message::PingReq { probe_number, .. } = &parsed.header.message
            && parsed.header.dst == self.me
        {
            self.send_receipt(*probe_number, src.addr);
        }
        let before = parsed.updates.len();
        let mut impostors = Vec::new();
        parsed.updates.retain(|u| {
            let bad = self_is_impostor(&self.me, &self.shared.view, u.id());
            if bad {
                impostors.push(format!("{:?}", u.id()));
            }
            !bad
        });
        for i in impostors {
            self.shared.stats.impostor_updates.fetch_add(1, Relaxed);
            self.bad(
                from,
                "dropped update about a second claimant of a live node id",
                &i,
            );
        }
        if !parsed.updates.is_empty() || parsed.header.message == Message::Feed {
            self.view_dirty = true;
        }
        for u in &parsed.updates {
            self.observe_update(u, &src);
        }
        let result = if parsed.updates.len() != before {
            let mut out = std::mem::take(&mut self.scratch);
            let r = codec::reencode_packet(&parsed, &data[parsed.tail_at..], &mut out)
                .map_err(|e| foca::Error::Encode(Box::new(e)))
                .and_then(|()| self.foca.handle_data(&out, &mut self.rt));
            self.scratch = out;
            r
        } else {
            self.foca.handle_data(data, &mut self.rt)
        };
        if let Err(e) = result {
            self.bad(from, "packet rejected by SWIM", &e);
        }
    }

    /// The host at `addr` answered a datagram of ours with "port unreachable" (quoting it, so
    /// it is not forged by someone off the path): the member there has no process any more.
    /// A stalled process keeps its socket and never causes this, so the member is declared
    /// down now rather than after the suspicion timeout, and the news spreads as any `Down`.
    /// If the process comes back, it rejoins under a new generation as after any death.
    fn on_refused(&mut self, addr: SocketAddr) {
        let stats = &self.shared.stats;
        stats.refusals.fetch_add(1, Relaxed);
        if !self.cfg.down_on_refusal || addr == self.me.addr {
            return;
        }
        let Some(id) = self
            .foca
            .iter_members()
            .find(|m| m.id().addr == addr)
            .map(|m| m.id().clone())
        else {
            return;
        };
        tracing::info!(
            node = %id.node_id,
            %addr,
            "declared down: its host refused our gossip (port unreachable: the process is gone)"
        );
        stats.refused_down.fetch_add(1, Relaxed);
        if let Err(e) =
            self.foca
                .apply_many(std::iter::once(foca::Member::down(id)), true, &mut self.rt)
        {
            tracing::debug!(error = %e, "foca refused the down update");
        }
        self.view_dirty = true;
    }

    fn bad(&mut self, from: SocketAddr, what: &str, detail: &dyn std::fmt::Display) {
        self.shared.stats.bad_packets.fetch_add(1, Relaxed);
        self.bad_log.warn(what, from, detail);
    }

    /// A node id is claimed by `id` while a live member (or we) hold it at
    /// another address: the later claimant is refused.
    fn is_impostor(&self, id: &NodeIdentity<M>) -> bool {
        self_is_impostor(&self.me, &self.shared.view, id)
    }

    fn observe_update(&mut self, u: &FocaMember<NodeIdentity<M>>, src: &NodeIdentity<M>) {
        if u.state() != State::Suspect || !self.lifeguard() {
            return;
        }
        if *u.id() == self.me {
            // Someone suspects us: we will refute. memberlist counts that as a
            // sign of our own ill health (+1), once per suspected incarnation.
            if u.incarnation() >= self.my_incarnation
                && self.refuted_incarnation.is_none_or(|r| u.incarnation() > r)
            {
                self.refuted_incarnation = Some(u.incarnation());
                self.awareness.apply(1);
            }
            return;
        }
        let key = SuspicionKey {
            addr: u.id().addr,
            generation: u.id().generation,
            incarnation: u.incarnation(),
        };
        if let Some((s, _)) = self.suspicions.get_mut(&key)
            && s.confirm(&src.node_id)
        {
            let at = s.deadline();
            let after = at.saturating_duration_since(Instant::now());
            self.schedule(after, LoopTimer::Suspicion(key));
        }
    }

    /// A member's metadata (and perhaps a request for ours). Accepted only from
    /// the address the identity names, so a member speaks for itself alone.
    fn on_meta(&mut self, data: &[u8], from: SocketAddr) {
        let packet = match codec::decode_meta::<M>(data) {
            Ok(p) => p,
            Err(e) => {
                self.bad(from, "undecodable metadata packet", &e);
                return;
            }
        };
        if packet.id.addr != from || packet.id == self.me {
            self.bad(
                from,
                "metadata packet for another address",
                &format_args!("{:?}", packet.id),
            );
            return;
        }
        if packet.reply_wanted {
            let out = codec::encode_meta(&self.me, &self.my_meta_json, false);
            self.send_raw(&out, from);
        }
        if packet.members_wanted {
            self.send_member_list(&packet.id);
        }
        if self.metas.contains_key(&packet.id) {
            return;
        }
        if self.metas.len() >= METAS_MAX {
            let known: std::collections::HashSet<&NodeIdentity<M>> =
                self.foca.iter_members().map(|m| m.id()).collect();
            self.metas.retain(|id, _| known.contains(id));
            self.meta_asked.retain(|id, _| known.contains(id));
            if self.metas.len() >= METAS_MAX {
                return;
            }
        }
        self.meta_asked.remove(&packet.id);
        self.metas.insert(packet.id, Arc::new(packet.meta));
        self.view_dirty = true;
    }

    /// Ask members whose metadata we lack for it (our own goes along), at most
    /// [`META_ASKS_PER_TURN`] a turn, each member again after [`META_RETRY`].
    fn ask_metas(&mut self, missing: Vec<NodeIdentity<M>>) {
        let now = Instant::now();
        let mut asked = 0;
        for id in missing {
            if asked >= META_ASKS_PER_TURN {
                break;
            }
            if self
                .meta_asked
                .get(&id)
                .is_some_and(|t| now.duration_since(*t) < META_RETRY)
            {
                continue;
            }
            let out = codec::encode_meta(&self.me, &self.my_meta_json, true);
            self.send_raw(&out, id.addr);
            self.meta_asked.insert(id, now);
            asked += 1;
        }
    }

    /// The join's anti-entropy, once per join. SWIM spreads a joiner's news by rumour, each
    /// member passing it on `max_transmissions` times; at 1,000 members a few (member, joiner)
    /// pairs miss it, both ways at once (so the metadata request cannot teach either), and
    /// each such pair waited for a round-robin probe, up to N probe periods. Once our member
    /// count has been quiet for [`PULL_QUIET`] (or at the [`PULL_FIRST_BY_CHECK`]th check
    /// anyway), ask one random member for its whole list; a
    /// member it teaches us is asked for its metadata, which teaches it us in turn. The cost
    /// is one list (~33 bytes a member) per join, nothing in a steady cluster.
    fn members_pull_check(&mut self) {
        let n = self.foca.num_members();
        let p = &mut self.pull;
        p.checks += 1;
        if p.checks > PULL_CHECKS_MAX || p.pulls >= PULLS_MAX {
            return;
        }
        let moved = n != p.last_count;
        p.last_count = n;
        let overdue = p.pulls == 0 && p.checks >= PULL_FIRST_BY_CHECK;
        if n == 0 || (moved && !overdue) {
            p.pulled_last = false;
            self.schedule(PULL_QUIET, LoopTimer::MembersPull);
            return;
        }
        if p.pulled_last {
            return;
        }
        p.pulls += 1;
        p.pulled_last = true;
        // Our own seeded choice (not foca's RNG, whose draws the probe order depends on).
        let mut z = self.cfg.seed ^ u64::from(p.pulls).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let pick = (z ^ (z >> 31)) as usize % n;
        if let Some(target) = self.foca.iter_members().nth(pick).map(|m| m.id().clone()) {
            self.shared.stats.member_pulls.fetch_add(1, Relaxed);
            let reply_wanted = !self.metas.contains_key(&target);
            let out = codec::encode_meta_flags(&self.me, &self.my_meta_json, reply_wanted, true);
            self.send_raw(&out, target.addr);
            self.pull_from = Some(target.addr);
        }
        self.schedule(PULL_QUIET, LoopTimer::MembersPull);
    }

    /// Answer a member-list pull: every alive member we know, in `ORL` packets (members as
    /// SWIM encodes them) to the asker. At most [`MEMBER_LISTS_PER_S`] lists a second.
    fn send_member_list(&mut self, to: &NodeIdentity<M>) {
        let now = Instant::now();
        match self.lists_sent {
            (Some(start), sent) if now.duration_since(start) < Duration::from_secs(1) => {
                if sent >= MEMBER_LISTS_PER_S {
                    tracing::debug!(%to.addr, "member list not sent: over the per-second bound");
                    return;
                }
                self.lists_sent.1 = sent + 1;
            }
            _ => self.lists_sent = (Some(now), 1),
        }
        let mut codec = WireCodec::<M>::new();
        let head = codec::LIST_MAGIC.to_vec();
        let max = self.cfg.max_packet_bytes;
        let flush = |out: &mut Vec<u8>, count: &mut u16| {
            if *count > 0 {
                out[head.len()..head.len() + 2].copy_from_slice(&count.to_be_bytes());
                self.send_raw(out, to.addr);
            }
            out.truncate(head.len());
            out.put_u16(0);
            *count = 0;
        };
        let mut out = head.clone();
        out.put_u16(0);
        let mut count = 0u16;
        let mut one = Vec::new();
        for m in self.foca.iter_membership_state() {
            // Alive members only: the list is for learning members; a suspicion is the
            // prober's own judgement and spreads by gossip.
            if m.state() != State::Alive || m.id() == to {
                continue;
            }
            one.clear();
            if codec.encode_member(m, &mut one).is_err() || head.len() + 2 + one.len() > max {
                continue;
            }
            if out.len() + one.len() > max {
                flush(&mut out, &mut count);
            }
            out.extend_from_slice(&one);
            count += 1;
        }
        flush(&mut out, &mut count);
        self.shared.stats.member_lists_sent.fetch_add(1, Relaxed);
    }

    /// A member list, from the member we pulled from (from anyone else it is dropped). Its
    /// members are applied without broadcast: they are not news to the cluster (the sender
    /// knows them, and so does nearly everyone), only to us. Broadcasting them (as SWIM does
    /// with gossip) would queue each for `max_transmissions` sends at every puller.
    fn on_list(&mut self, data: &[u8], from: SocketAddr) {
        if self.pull_from != Some(from) {
            self.bad(from, "member list not asked for", &data.len());
            return;
        }
        let members = match codec::decode_list::<M>(data) {
            Ok(m) => m,
            Err(e) => {
                self.bad(from, "undecodable member list", &e);
                return;
            }
        };
        let alive = members.into_iter().filter(|m| {
            m.state() == State::Alive
                && *m.id() != self.me
                && !self_is_impostor(&self.me, &self.shared.view, m.id())
        });
        if let Err(e) = self.foca.apply_many(alive, false, &mut self.rt) {
            self.bad(from, "member list rejected by SWIM", &e);
        }
        self.view_dirty = true;
    }

    fn on_receipt(&mut self, data: &[u8], from: SocketAddr) {
        if data.len() != RECEIPT_MAGIC.len() + 1 {
            self.bad(from, "malformed receipt", &data.len());
            return;
        }
        let number = data[RECEIPT_MAGIC.len()];
        if let Some(p) = self.probe.as_mut()
            && p.number == number
        {
            for (addr, got) in &mut p.helpers {
                if *addr == from {
                    *got = true;
                }
            }
        }
    }

    fn send_receipt(&mut self, probe_number: u8, to: SocketAddr) {
        let mut pkt = [0u8; 4];
        pkt[..3].copy_from_slice(&RECEIPT_MAGIC);
        pkt[3] = probe_number;
        self.send_raw(&pkt, to);
    }

    fn on_timer(&mut self, t: LoopTimer<M>) {
        match t {
            LoopTimer::Foca(timer) => {
                if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                    tracing::debug!(node = %self.me.node_id, error = %e, "foca timer");
                }
            }
            LoopTimer::Suspicion(key) => {
                let due = self.suspicions.get(&key).is_some_and(|(s, _)| {
                    s.deadline() <= Instant::now() + Duration::from_millis(1)
                });
                if due
                    && let Some((_, timer)) = self.suspicions.remove(&key)
                    && let Err(e) = self.foca.handle_timer(timer, &mut self.rt)
                {
                    tracing::debug!(error = %e, "foca suspicion timer");
                }
            }
            // Handled in `turn`.
            LoopTimer::MetaSweep | LoopTimer::SyncView => {}
            LoopTimer::MembersPull => self.members_pull_check(),
            LoopTimer::JoinRetry(round) => {
                if self.foca.num_members() == 0 && round < JOIN_ROUNDS_MAX {
                    self.announce_to_seeds();
                    let backoff = JOIN_BACKOFF_FIRST
                        .saturating_mul(1 << round.min(16))
                        .min(JOIN_BACKOFF_MAX);
                    self.schedule(backoff, LoopTimer::JoinRetry(round + 1));
                } else if self.foca.num_members() == 0 {
                    tracing::warn!(node = %self.me.node_id, "gossip: no seed answered; giving up join retries");
                }
            }
            LoopTimer::LeaveRound(round) => {
                if round < LEAVE_EXTRA_ROUNDS {
                    let _ = self.foca.gossip(&mut self.rt);
                    self.schedule(LEAVE_ROUND_GAP, LoopTimer::LeaveRound(round + 1));
                } else {
                    self.stopped = true;
                    if let Some(tx) = self.leave_reply.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Join(seeds) => {
                self.seeds = seeds.into_iter().take(SEEDS_MAX).collect();
                self.announce_to_seeds();
                self.schedule(JOIN_BACKOFF_FIRST, LoopTimer::JoinRetry(1));
                self.pull = PullState::default();
                self.schedule(PULL_QUIET, LoopTimer::MembersPull);
            }
            Command::Leave(reply) => {
                let note = codec::encode_leave(&self.me.node_id, self.me.generation);
                if let Err(e) = self.foca.add_broadcast(&note) {
                    tracing::debug!(error = %e, "leave note not queued");
                }
                if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
                    tracing::debug!(error = %e, "leave_cluster");
                }
                self.leave_reply = Some(reply);
                self.schedule(LEAVE_ROUND_GAP, LoopTimer::LeaveRound(0));
                if let Some(me) = self
                    .shared
                    .view
                    .write()
                    .ok()
                    .as_mut()
                    .and_then(|v| v.get_mut(&*self.me.node_id))
                {
                    me.status = MemberStatus::Left;
                }
            }
            Command::Note(data) => {
                self.note_version += 1;
                let wire = codec::encode_note(
                    &self.me.node_id,
                    self.me.generation,
                    self.note_version,
                    &data,
                );
                if let Err(e) = self.foca.add_broadcast(&wire) {
                    tracing::debug!(error = %e, "note not queued");
                }
                // Out at once to a few members; periodic gossip carries it further.
                if let Err(e) = self.foca.broadcast(&mut self.rt) {
                    tracing::debug!(error = %e, "note broadcast");
                }
            }
            #[cfg(any(test, feature = "sim"))]
            Command::Stall(..) => {}
        }
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            if seed == self.me.addr {
                continue;
            }
            // foca accepts an Announce whose destination has the right address,
            // whatever the rest of the identity says; we do not know the
            // seed's node id yet.
            let dst = NodeIdentity::new(Arc::from("?"), 0, seed);
            if let Err(e) = self.foca.announce(dst, &mut self.rt) {
                tracing::debug!(error = %e, "announce");
            }
            // Our metadata goes along, and the seed's comes back, so the first
            // member we know shows in the view without another round trip.
            let out = codec::encode_meta(&self.me, &self.my_meta_json, true);
            self.send_raw(&out, seed);
        }
    }

    // ---- outputs ------------------------------------------------------------

    fn send_raw(&self, data: &[u8], to: SocketAddr) {
        let stats = &self.shared.stats;
        match self.socket.send_to(data, to) {
            Ok(n) => {
                stats.packets_sent.fetch_add(1, Relaxed);
                stats.bytes_sent.fetch_add(n as u64, Relaxed);
                stats.largest_packet_sent.fetch_max(n as u64, Relaxed);
            }
            Err(e) => {
                stats.send_errors.fetch_add(1, Relaxed);
                tracing::debug!(%to, error = %e, "gossip send failed");
            }
        }
    }

    /// Drain what foca asked for during the turn: datagrams, timers, events.
    fn drain(&mut self) {
        while let Some(n) = self.rt.to_notify() {
            if !matches!(
                n,
                OwnedNotification::DataSent(_) | OwnedNotification::DataReceived(_)
            ) {
                self.view_dirty = true;
            }
            match n {
                OwnedNotification::ProbeFailed(_, _) => self.close_probe(false),
                OwnedNotification::DataSent(h) => self.on_sent(&h),
                OwnedNotification::Defunct => {
                    tracing::warn!(node = %self.me.node_id, "gossip: declared down and cannot rejoin");
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(node = %self.me.node_id, new = ?id, "gossip: declared down while alive; rejoined under a new generation");
                    self.me = id;
                }
                OwnedNotification::Active => {
                    tracing::debug!(node = %self.me.node_id, "gossip: active");
                }
                OwnedNotification::Idle => {
                    tracing::debug!(node = %self.me.node_id, "gossip: no live peer");
                }
                _ => {}
            }
        }
        while let Some((to, data)) = self.rt.to_send() {
            self.send_raw(&data, to.addr);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.schedule_foca(after, timer);
        }
    }

    /// Close the open probe cycle and move the local health score, as
    /// memberlist's `probeNode`: success is -1; a failure is +1 per helper
    /// whose receipt did not come back, or +1 if we had no helper to ask.
    fn close_probe(&mut self, success: bool) {
        let probe = self.probe.take();
        if !self.lifeguard() {
            return;
        }
        let delta = if success {
            -1
        } else {
            match probe {
                Some(p) if !p.helpers.is_empty() => {
                    p.helpers.iter().filter(|(_, got)| !got).count() as i64
                }
                _ => 1,
            }
        };
        self.awareness.apply(delta);
    }

    fn on_sent(&mut self, h: &Header<NodeIdentity<M>>) {
        self.my_incarnation = h.src_incarnation;
        match &h.message {
            Message::Ping(n)
                // foca pings only to start a probe cycle. If the previous cycle
                // is still open here, foca did not report it failed: it succeeded.
                if self.probe.as_ref().is_none_or(|p| p.number != *n) => {
                    if self.probe.is_some() {
                        self.close_probe(true);
                    }
                    self.probe = Some(ProbeTrack {
                        number: *n,
                        helpers: Vec::new(),
                    });
                }
            Message::PingReq { probe_number, .. } => {
                if let Some(p) = self.probe.as_mut()
                    && p.number == *probe_number {
                        p.helpers.push((h.dst.addr, false));
                    }
            }
            _ => {}
        }
    }

    /// Hand a foca timer to the heap. With Lifeguard on, probe timing is
    /// stretched by the local health score and suspicions get their own
    /// shrinking deadline (plus an immediate note to the suspect).
    fn schedule_foca(&mut self, after: Duration, timer: Timer<NodeIdentity<M>>) {
        if !self.lifeguard() {
            self.schedule(after, LoopTimer::Foca(timer));
            return;
        }
        match timer {
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                let after = self.awareness.scale(after);
                self.schedule(after, LoopTimer::Foca(timer));
            }
            Timer::ChangeSuspectToDown {
                ref member_id,
                incarnation,
                ..
            } => {
                let key = SuspicionKey {
                    addr: member_id.addr,
                    generation: member_id.generation,
                    incarnation,
                };
                if let Some(entry) = self.suspicions.get_mut(&key) {
                    // foca re-arms when it probes the same suspect again; keep
                    // our deadline, take the newest timer (its token is current).
                    entry.1 = timer;
                    return;
                }
                if self.suspicions.len() >= SUSPICIONS_MAX {
                    self.schedule(after, LoopTimer::Foca(timer));
                    return;
                }
                self.buddy_notify(member_id, incarnation);
                let min = self.awareness.scale(after);
                let live = self.foca.num_members() + 1;
                let s = Suspicion {
                    started: Instant::now(),
                    min,
                    max: min.saturating_mul(self.cfg.lifeguard.suspicion_max_mult.max(1)),
                    k: lifeguard::expected_confirmations(
                        self.cfg.lifeguard.suspicion_confirmations,
                        live,
                    ),
                    confirmers: Vec::new(),
                };
                let wait = s.deadline().saturating_duration_since(Instant::now());
                self.suspicions.insert(key.clone(), (s, timer));
                self.schedule(wait, LoopTimer::Suspicion(key));
            }
            other => self.schedule(after, LoopTimer::Foca(other)),
        }
    }

    /// Lifeguard buddy system: tell the suspect directly, at once, that we
    /// suspect it, so it can refute before the timeout. foca has no call for a
    /// message to one chosen member with a chosen update, so we frame a
    /// standard foca `Gossip` packet ourselves: header from us (with our
    /// current incarnation) and one update, "you are suspect".
    fn buddy_notify(&mut self, suspect: &NodeIdentity<M>, incarnation: u16) {
        let header = Header {
            src: self.me.clone(),
            src_incarnation: self.my_incarnation,
            dst: suspect.clone(),
            message: Message::Gossip,
        };
        let update = FocaMember::new(suspect.clone(), incarnation, State::Suspect);
        let mut codec = WireCodec::<M>::new();
        let mut out = Vec::with_capacity(self.cfg.max_packet_bytes);
        let ok = codec.encode_header(&header, &mut out).is_ok() && {
            out.put_u16(1);
            codec.encode_member(&update, &mut out).is_ok()
        };
        if ok && out.len() <= self.cfg.max_packet_bytes {
            self.shared.stats.buddy_notices.fetch_add(1, Relaxed);
            self.send_raw(&out, suspect.addr);
        }
    }

    // ---- the member view ----------------------------------------------------

    /// Bring the shared view in line with foca's member table and emit events
    /// for every change of status. Keyed by node id: of several foca entries
    /// for one node id (an old address that is down, a new one), the live one,
    /// then the highest generation, is shown.
    fn sync_view(&mut self) {
        // Ordered by node id, so the events go out in an order that does not depend on
        // hashing (the simulator's trace, one seed one trace, relies on it).
        let mut best: BTreeMap<&str, &FocaMember<NodeIdentity<M>>> = BTreeMap::new();
        let mut missing = Vec::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            // A member shows in the view once its metadata has come, so an
            // `Up` always carries it.
            if !self.metas.contains_key(id) {
                if is_active(m) {
                    missing.push(id.clone());
                }
                continue;
            }
            match best.get(&*id.node_id) {
                Some(cur)
                    if (is_active(cur), cur.id().generation) >= (is_active(m), id.generation) => {}
                _ => {
                    best.insert(&id.node_id, m);
                }
            }
        }
        let Ok(mut view) = self.shared.view.write() else {
            return;
        };
        let now = Instant::now();
        let mut events = Vec::new();
        let left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        for (node_id, m) in &best {
            let id = m.id();
            let Some(meta) = self.metas.get(id) else {
                continue;
            };
            let status = match m.state() {
                State::Alive => MemberStatus::Alive,
                State::Suspect => MemberStatus::Suspect,
                State::Down if left.contains(node_id, id.generation) => MemberStatus::Left,
                State::Down => MemberStatus::Down,
            };
            match view.get_mut(*node_id) {
                None => {
                    let member = Member {
                        node_id: node_id.to_string(),
                        generation: id.generation,
                        addr: id.addr,
                        meta: (**meta).clone(),
                        status,
                        last_contact: now,
                    };
                    if member.status.is_live() {
                        events.push(MemberEvent::Up(member.clone()));
                        if member.status == MemberStatus::Suspect {
                            events.push(MemberEvent::Suspect(member.clone()));
                        }
                    }
                    view.insert(Arc::clone(&id.node_id), member);
                }
                Some(cur) => {
                    let renamed = cur.generation != id.generation || cur.addr != id.addr;
                    if !renamed && cur.status == status {
                        continue;
                    }
                    let was_live = cur.status.is_live();
                    if renamed {
                        cur.generation = id.generation;
                        cur.addr = id.addr;
                        cur.meta = (**meta).clone();
                        cur.last_contact = now;
                    }
                    cur.status = status;
                    let ev = match status {
                        MemberStatus::Alive => Some(MemberEvent::Up(cur.clone())),
                        MemberStatus::Suspect => {
                            if renamed || !was_live {
                                events.push(MemberEvent::Up(cur.clone()));
                            }
                            Some(MemberEvent::Suspect(cur.clone()))
                        }
                        MemberStatus::Down if was_live => Some(MemberEvent::Down(cur.clone())),
                        MemberStatus::Left => Some(MemberEvent::Left(cur.clone())),
                        MemberStatus::Down => None,
                    };
                    events.extend(ev);
                }
            }
        }
        drop(left);
        // foca forgot a down member (after `remove_down_after`): so do we.
        view.retain(|k, m| {
            **k == *self.me.node_id || best.contains_key(&**k) || m.status.is_live()
        });
        // Ourselves, always present.
        let me_status = if self.leave_reply.is_some() || self.stopped {
            MemberStatus::Left
        } else {
            MemberStatus::Alive
        };
        let me = view
            .entry(Arc::clone(&self.me.node_id))
            .or_insert_with(|| Member {
                node_id: self.me.node_id.to_string(),
                generation: self.me.generation,
                addr: self.me.addr,
                meta: (*self.my_meta).clone(),
                status: me_status,
                last_contact: now,
            });
        me.generation = self.me.generation;
        me.status = me_status;
        me.last_contact = now;
        drop(view);
        for e in events {
            // A send error only means nobody subscribes right now.
            let _ = self.events.send(e);
        }
        self.metas_missing = missing.len();
        let stats = &self.shared.stats;
        stats.metas_missing.store(missing.len() as u64, Relaxed);
        stats
            .swim_members
            .store(self.foca.num_members() as u64, Relaxed);
        if !missing.is_empty() {
            self.ask_metas(missing);
        }
    }
}

fn is_active<T>(m: &FocaMember<T>) -> bool {
    m.state() != State::Down
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn self_is_impostor<M>(
    me: &NodeIdentity<M>,
    view: &RwLock<HashMap<Arc<str>, Member<M>>>,
    id: &NodeIdentity<M>,
) -> bool {
    if id.node_id == me.node_id {
        return id.addr != me.addr;
    }
    let Ok(view) = view.read() else { return false };
    view.get(&*id.node_id).is_some_and(|m| {
        matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect) && m.addr != id.addr
    })
}
