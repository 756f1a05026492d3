//! Orion's membership service: who is alive, suspect, down or gone, and what
//! each node says about itself, over UDP with SWIM (foca 2.0.0) and a Lifeguard
//! layer after HashiCorp memberlist. This is the only crate that imports foca;
//! it knows nothing else of Orion (metadata is any serde type `M`).
//!
//! # Shape
//! [`spawn`] binds one UDP socket to `config.bind` and starts three tasks: a
//! receiver that turns datagrams into `GossipInput::Data`, one that turns the
//! socket's refusals into `GossipInput::Refused`, and the engine
//! (`engine.rs`) that owns foca and is fed only by one bounded channel of the
//! closed enum `GossipInput::{Data, Refused, Timer, Command}`. All sends leave from the
//! bound socket, so a node's packets carry its own address (loopback
//! partitions with iptables cut the right traffic). [`Gossip`] is a cheap
//! handle: it sends commands and reads a shared view; it never touches foca.
//!
//! # Seams for a simulator
//! The socket is one implementation of [`Transport`] (send a datagram, receive
//! one); [`spawn_with_transport`] runs the engine over any other, such as an
//! in-memory network. Every timer and timestamp is tokio time (no
//! `std::time::Instant` or `SystemTime` in a decision), so engines run on a
//! paused single-threaded runtime. foca's RNG is seeded from
//! `GossipConfig::seed`, reported in [`GossipStats::seed`].
//!
//! # Metadata travels beside the identity
//! A foca identity here is `(node_id, generation, gossip addr)`, about 30 bytes
//! on the wire. A member's metadata is fixed for one generation, so the engine
//! fetches it once per identity, from the member itself: a metadata packet
//! (`ORM`: identity, JSON, "send me yours") goes to every member foca knows
//! and whose metadata we lack (at most 32 a turn, again after 1 s), and along
//! with every join announce; the answer comes straight back. A member shows in
//! the view, and its `MemberEvent::Up` is sent, only once its metadata has
//! come, so an `Up` always carries it. A metadata packet is accepted only from
//! the address its identity names.
//!
//! Why not in the identity (as before): every header names two identities and
//! every update one, so with the agent's ~260-byte `NodeMeta` an update cost
//! ~300 bytes and a 1,400-byte packet carried two; 128 members took 18-48 s to
//! converge and 1,000 could not (BENCHMARKS.md). Now an update is ~33 bytes
//! (about 40 a packet), and the metadata costs each member one packet per
//! other member, once. [`spawn`] refuses metadata whose packet would not fit
//! `max_packet_bytes` ([`GossipError::MetadataTooLarge`]). Metadata cannot
//! change within a generation.
//!
//! # The join's member-list pull (anti-entropy, once per join)
//! SWIM spreads a joiner's news by rumour: each member that learns it passes
//! it on `max_transmissions` times. A few (member, joiner) pairs miss it; such
//! a pair then waited for a round-robin probe (up to N probe periods) or foca's
//! periodic announce. Measured (`orion-bench gossip-sim`, `ORION_BENCH_TRACE`
//! prints where the missing pairs are): at 1,000 members every pair missing
//! after the first seconds was unknown to SWIM at the observer (metadata and
//! false suspicions played no part), a few dozen pairs at 5 s, and these made
//! the whole tail. So, once per [`Gossip::join`], when our member count has
//! not moved for 1 s (or 4 s after the join in any case), the engine asks one
//! random member for its member list
//! (a metadata packet with a second flag bit, `members wanted`; engines before
//! this flag read only the first bit and answer with their metadata alone, so
//! the wire stays compatible and no version changes). The answer is every
//! alive member in `ORL` packets (a count, then members as SWIM encodes them,
//! within `max_packet_bytes`; accepted only from the member we pulled from),
//! applied to our SWIM without broadcast: news to us, not to the cluster (as
//! gossip, each learned member would be queued for `max_transmissions` more
//! sends). A member it teaches us gets our metadata request, which teaches it
//! us. Another pull follows only if the count moved since (at most 3, all
//! within 12 s of the join), and an engine sends at most 8 lists a second.
//! Cost: one list per join (~33 bytes a member, ~25 datagrams at 1,000),
//! nothing in a steady cluster.
//!
//! # Identity rules
//! foca keys members on the gossip address. A process restarting on the same
//! address with a higher generation replaces its old self (foca's conflict
//! rule, `identity.rs`): peers emit `Up` for the new generation and keep one
//! entry. A process that claims a node id which a live member holds at another
//! address is refused before foca sees it: its packets are dropped, updates
//! naming it are removed from packets, a warning is logged (rate-limited) and
//! `stats().impostor_*` counts them. A node id may move to a new address only
//! once its old incarnation is Down or Left. If the cluster declares a node
//! down while it is in fact alive (a long stall), foca's auto-rejoin renews
//! its identity with `generation + 1` and it comes back `Up`.
//!
//! # Lifeguard, and what foca let us do
//! 1. Local health (awareness, 0..=`awareness_max`): +1 per helper that did
//!    not confirm our PingReq when a probe fails (+1 if there was no helper),
//!    +1 when we learn that someone suspects us (we refute), -1 per successful
//!    probe. foca has no nacks, so the engine adds a tiny out-of-band packet
//!    (`ORC` + probe number): a member that receives a PingReq sends this
//!    receipt back at once. memberlist's helper sends its nack only when the
//!    target stays silent; for the health score both say the same thing: "the
//!    helper heard you in time". The score multiplies our own probe period and
//!    probe timeout. foca's `set_config` refuses to change those, so we do it
//!    as foca's runtime: `ProbeRandomMember` and `SendIndirectProbe` timers are
//!    delivered `score + 1` times later than foca asked.
//! 2. Buddy system: when our probe fails and foca arms its suspect-to-down
//!    timer, we send the suspect one standard foca `Gossip` packet, framed by
//!    us, carrying "you are suspect" so it refutes at once. (foca also
//!    piggybacks the suspicion on later traffic, as before.)
//! 3. Suspicion timeout: foca arms `ChangeSuspectToDown` only on the member
//!    whose probe failed. We hold that timer and deliver it at memberlist's
//!    deadline: from `suspect_to_down_ms * suspicion_max_mult` down to
//!    `suspect_to_down_ms` as independent confirmations (other members'
//!    Suspect updates about the same incarnation) arrive, both scaled by the
//!    local health score. As in memberlist, with fewer than
//!    `suspicion_confirmations + 2` live members no confirmation is expected
//!    and the minimum applies. Not done: a member that only hears of a
//!    suspicion from others starts no timer of its own (foca does not, and
//!    memberlist does); it waits for the Down gossip.
//!
//! With `lifeguard.enabled = false` none of the three runs (receipts are still
//! answered, so mixed clusters work) and timing is foca's.
//!
//! # Detection bound of [`GossipConfig::lan_fast`]
//! probe period 200 ms, probe timeout 100 ms, suspect-to-down 600 ms. A dead
//! member is probed by each peer at least once per round of the shuffled
//! round-robin; in a 3-member cluster each peer probes it within 3 periods
//! (600 ms) at worst; the failure is known at the next period (+200 ms); the
//! suspicion expires (+600 ms); the Down spreads with the next message
//! (periodic gossip every 200 ms, usually less). Bound ~1.6 s, typical
//! ~1.1 s, with a healthy awareness score. Measured on loopback (debug build,
//! shared 2-core machine): ~1.0-1.2 s from kill to `Down` on both survivors.
//! That is the bound for a lost *host*. A process that dies on a live host is
//! found sooner: its host refuses the next datagram sent to it (ICMP port
//! unreachable, read from the socket's error queue by [`UdpTransport`]), and
//! the engine declares the member down on that refusal (`udp.rs` says why a
//! stalled process never causes one, and why a refusal cannot be forged from
//! off the path): ~170 ms on loopback. `GossipConfig::down_on_refusal`.
//!
//! # What the Lifeguard experiment shows
//! `orion-bench lifeguard` (simulated time, 48 members, 8 starved at random
//! with stalls of 100-900 ms, 4 members killed; BENCHMARKS.md has the figures).
//! How the starvation is simulated decides everything:
//! - Starving the whole engine ([`Gossip::starve`]: timers and datagrams stop
//!   together) never makes the starved member accuse anyone: when it wakes, the
//!   acks and refutations that arrived are in its queue next to its overdue
//!   timers and are handled within the same instant, so its probes succeed.
//!   Only the starved members themselves are declared down (they do not answer
//!   for up to 900 ms), and Lifeguard cuts those false `Down`s by about 2×.
//!   This is what the old stall test measured (it stalled the *suspect*).
//! - Starving the datagram path only ([`Gossip::starve_packets`]: timers fire on
//!   time, received datagrams wait), as in the paper, where timers ran on
//!   threads of their own: the starved member misses acks that did arrive,
//!   suspects healthy peers and, without Lifeguard, declares them down before it
//!   reads their refutation. Lifeguard stops that: its missed PingReq receipts
//!   raise its health score, which stretches its probe timeouts and suspicion
//!   timeouts, and the buddy notice makes the suspect refute at once.
//!
//! Why the effect is smaller than memberlist's: foca arms the suspect-to-down
//! timer only on the member whose probe failed, while memberlist arms it on
//! every member that hears the suspicion; so in foca a false accusation can
//! only turn into a `Down` on the slow accuser itself.

mod codec;
mod engine;
mod identity;
mod lifeguard;
#[cfg(any(test, feature = "sim"))]
pub mod memnet;
#[cfg(test)]
mod tests;
mod transport;
mod udp;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use codec::CodecError;
pub use lifeguard::LifeguardConfig;
pub use transport::Transport;
pub use udp::UdpTransport;

#[cfg(any(test, feature = "sim"))]
pub use engine::StallKind;
use engine::{Command, Engine, GossipInput, Shared};
use identity::NodeIdentity;

/// Engine input queue: datagrams, timers and commands. 1024 packets is about
/// one second of traffic for a 128-member cluster at `lan_fast` rates; when
/// full, datagrams are dropped (counted) rather than blocking the socket.
const INPUT_QUEUE_MAX: usize = 1024;
/// Per-subscriber event buffer; a subscriber that falls further behind lags
/// (tokio broadcast semantics) and never blocks the engine.
const EVENT_QUEUE_MAX: usize = 256;
/// How long a command may wait for room in the input queue.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Upper bound on a graceful leave (gossip rounds take ~100 ms).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Smallest packet budget that fits a PingReq with modest metadata.
const MAX_PACKET_MIN: usize = 512;
/// Largest UDP payload on IPv4.
const MAX_PACKET_MAX: usize = 65_507;
/// Node ids are encoded with a one-byte length.
const NODE_ID_BYTES_MAX: usize = 255;
/// foca removes a down member after this long so memory stays bounded by the
/// live cluster; long enough that stale gossip about it has died out.
const REMOVE_DOWN_AFTER: Duration = Duration::from_secs(300);

/// Membership configuration. Build it with [`GossipConfig::lan_fast`] and adjust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    pub node_id: String,
    /// UDP bind address; every packet is sent from it.
    pub bind: SocketAddr,
    /// Address peers dial (equal to `bind` unless behind NAT).
    pub advertise: SocketAddr,
    /// Identity generation; must grow on every process start (e.g. unix millis).
    pub generation: u64,
    pub probe_period_ms: u64,
    pub probe_rtt_ms: u64,
    pub suspect_to_down_ms: u64,
    pub num_indirect_probes: usize,
    pub max_packet_bytes: usize,
    /// Times each membership update is piggybacked before it is dropped.
    pub max_transmissions: u8,
    /// Periodic gossip of pending updates to 3 members (0 disables).
    pub periodic_gossip_ms: u64,
    pub lifeguard: LifeguardConfig,
    /// Declare a member down at once when its host refuses our datagram (ICMP port
    /// unreachable: its process is gone, not stalled; `udp.rs`). Off: timing alone decides.
    pub down_on_refusal: bool,
    /// Seeds foca's RNG (probe order, gossip targets, indirect helpers): the same seed, inputs
    /// and timing replay the same decisions. `lan_fast` draws one from the OS; an agent
    /// records it (`GossipStats::seed`) and a simulator sets its own.
    pub seed: u64,
}

impl GossipConfig {
    /// Defaults for a LAN or loopback: a member killed among 3 is declared
    /// Down in ~1.1 s typically and under ~1.6 s at worst (crate doc).
    pub fn lan_fast(
        node_id: impl Into<String>,
        bind: SocketAddr,
        advertise: SocketAddr,
        generation: u64,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            bind,
            advertise,
            generation,
            // 5x faster than foca's `new_lan` (1 s / 500 ms): loopback and LAN
            // round trips are well under a millisecond.
            probe_period_ms: 200,
            probe_rtt_ms: 100,
            // 3 probe periods: a stalled-but-alive member has that long to refute.
            suspect_to_down_ms: 600,
            // SWIM's k; foca and memberlist both default to 3.
            num_indirect_probes: 3,
            // Typical path MTU 1500 minus IP/UDP headers and slack (foca's 1400).
            max_packet_bytes: 1400,
            // foca's formula 4*log10(n+1) gives 6 for n = 32 and 12 for n = 1000. With 9,
            // 128 members took 20 s to converge in the simulated benchmark: the news of a few
            // joiners died out before reaching everyone, and waited for a probe or the
            // periodic announce (the join's member-list pull now heals that in ~3 s, crate
            // doc). With 15 they converge in 1.45 s, before any pull. An update is ~33 bytes
            // (the metadata is not in it), so the extra sends cost little and only while news
            // is fresh (BENCHMARKS.md, "Gossip in simulated time").
            max_transmissions: 15,
            // foca `new_lan`'s value.
            periodic_gossip_ms: 200,
            lifeguard: LifeguardConfig::default(),
            down_on_refusal: true,
            seed: rand::random(),
        }
    }

    fn validate(&self) -> Result<foca::Config, GossipError> {
        let bad = |why: &'static str| Err(GossipError::InvalidConfig(why));
        if self.node_id.is_empty() || self.node_id.len() > NODE_ID_BYTES_MAX {
            return bad("node_id must be 1..=255 bytes");
        }
        if self.probe_rtt_ms == 0 || self.probe_rtt_ms >= self.probe_period_ms {
            return bad("probe_rtt_ms must be > 0 and < probe_period_ms");
        }
        if self.suspect_to_down_ms == 0 {
            return bad("suspect_to_down_ms must be > 0");
        }
        if !(MAX_PACKET_MIN..=MAX_PACKET_MAX).contains(&self.max_packet_bytes) {
            return bad("max_packet_bytes must be within 512..=65507");
        }
        let (Some(indirect), Some(tx), Some(packet)) = (
            NonZeroUsize::new(self.num_indirect_probes),
            NonZeroU8::new(self.max_transmissions),
            NonZeroUsize::new(self.max_packet_bytes),
        ) else {
            return bad("num_indirect_probes and max_transmissions must be > 0");
        };
        let mut c = foca::Config::simple();
        c.probe_period = Duration::from_millis(self.probe_period_ms);
        c.probe_rtt = Duration::from_millis(self.probe_rtt_ms);
        c.num_indirect_probes = indirect;
        c.max_transmissions = tx;
        c.suspect_to_down_after = Duration::from_millis(self.suspect_to_down_ms);
        c.remove_down_after = Some(REMOVE_DOWN_AFTER);
        c.max_packet_size = packet;
        c.notify_down_members = true;
        let one = NonZeroUsize::MIN;
        // Announce to a random member now and then, so a healed partition
        // merges (foca `new_lan` uses 30 s; we want faster healing on a LAN).
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: one,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(15),
            num_members: one,
        });
        c.periodic_gossip = (self.periodic_gossip_ms > 0).then(|| foca::PeriodicParams {
            frequency: Duration::from_millis(self.periodic_gossip_ms),
            num_members: NonZeroUsize::new(3).unwrap_or(one),
        });
        Ok(c)
    }
}

/// Operating errors of the membership service.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("invalid gossip config: {0}")]
    InvalidConfig(&'static str),
    #[error("cannot bind gossip socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metadata cannot be serialized: {0}")]
    Metadata(String),
    #[error(
        "metadata too large: its packet would be {identity_bytes} bytes, at most {max_identity_bytes} fit max_packet_bytes"
    )]
    MetadataTooLarge {
        identity_bytes: usize,
        max_identity_bytes: usize,
    },
    #[error("note of {0} bytes is over the {NOTE_BYTES_MAX}-byte bound")]
    NoteTooLarge(usize),
    #[error("no seed address given")]
    NoSeeds,
    #[error("gossip engine has stopped")]
    Stopped,
    #[error("gossip engine is busy (input queue full)")]
    Busy,
}

/// What we know about a member's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum MemberStatus {
    Alive,
    Suspect,
    Down,
    Left,
}

impl MemberStatus {
    pub fn is_live(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member<M> {
    pub node_id: String,
    pub generation: u64,
    pub addr: SocketAddr,
    pub meta: M,
    pub status: MemberStatus,
    /// Last packet received from it (for ourselves: the last engine turn), in tokio time.
    pub last_contact: Instant,
}

/// A change of a member's status.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberEvent<M> {
    /// New member, a new generation of a known one, or a refuted suspicion.
    Up(Member<M>),
    Suspect(Member<M>),
    Down(Member<M>),
    Left(Member<M>),
}

impl<M> MemberEvent<M> {
    pub fn member(&self) -> &Member<M> {
        match self {
            Self::Up(m) | Self::Suspect(m) | Self::Down(m) | Self::Left(m) => m,
        }
    }
}

/// Traffic counters since spawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Undecodable, oversize or protocol-invalid packets, dropped.
    pub bad_packets_dropped: u64,
    /// Packets from a second claimant of a live node id, dropped.
    pub impostor_packets: u64,
    /// Updates about a second claimant, removed from otherwise good packets.
    pub impostor_updates: u64,
    /// Datagrams dropped because the engine queue was full.
    pub inbound_dropped: u64,
    pub send_errors: u64,
    /// Lifeguard direct notices sent to members we suspect.
    pub buddy_notices: u64,
    /// The largest datagram sent so far, in bytes.
    pub largest_packet_sent: u64,
    /// The seed of foca's RNG (`GossipConfig::seed`), so a run can be told apart and replayed.
    pub seed: u64,
    /// Members SWIM counts as active (ourselves not included), as of the last view sync.
    pub swim_members: u64,
    /// Of those, members not in the view yet because their metadata has not come.
    pub metas_missing: u64,
    /// Member lists we asked for (the join's anti-entropy pull).
    pub member_pulls: u64,
    /// Member lists we sent in answer to such a pull.
    pub member_lists_sent: u64,
    /// Refusals heard: a datagram of ours that the host at its address refused (port
    /// unreachable) while quoting it back.
    pub refusals: u64,
    /// Members declared down on a refusal, without waiting for the suspicion timeout.
    pub refused_down: u64,
}

#[derive(Default)]
pub(crate) struct StatsCounters {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) packets_received: AtomicU64,
    pub(crate) bad_packets: AtomicU64,
    pub(crate) impostor_packets: AtomicU64,
    pub(crate) impostor_updates: AtomicU64,
    pub(crate) inbound_dropped: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) buddy_notices: AtomicU64,
    pub(crate) largest_packet_sent: AtomicU64,
    pub(crate) swim_members: AtomicU64,
    pub(crate) metas_missing: AtomicU64,
    pub(crate) member_pulls: AtomicU64,
    pub(crate) member_lists_sent: AtomicU64,
    pub(crate) refusals: AtomicU64,
    pub(crate) refused_down: AtomicU64,
}

/// Largest note a node may announce about itself ([`Gossip::set_note`]): it rides in a gossip
/// packet (1,400 bytes by default) beside the header's two identities.
pub const NOTE_BYTES_MAX: usize = 512;
/// Most nodes whose notes are kept: far above any cluster Orion is meant for, and a bound on
/// what made-up node ids can cost.
pub const NOTES_MAX: usize = 4096;

struct Inner<M> {
    notes: Arc<engine::Notes>,
    advertise: SocketAddr,
    seed: u64,
    input: mpsc::Sender<GossipInput<M>>,
    shared: Arc<Shared<M>>,
    events: broadcast::Sender<MemberEvent<M>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<M> Inner<M> {
    fn abort(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
    }
}

impl<M> Drop for Inner<M> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Handle on a running membership service. Clone is cheap; the service stops
/// when the last handle is dropped (abruptly) or on [`Gossip::leave`].
pub struct Gossip<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Gossip<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Start the membership service: bind the UDP socket, start the engine.
pub async fn spawn<M>(config: GossipConfig, meta: M) -> Result<Gossip<M>, GossipError>
where
    M: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + PartialEq + 'static,
{
    config.validate()?;
    let socket = UdpTransport::bind(config.bind)
        .await
        .map_err(|source| GossipError::Bind {
            addr: config.bind,
            source,
        })?;
    spawn_with_transport(config, meta, Arc::new(socket))
}

/// Start the membership service over any [`Transport`] (the UDP socket in production, an
/// in-memory network in a simulator). `config.bind` is not used: the transport is already
/// bound. An `advertise` port of 0 advertises the transport's own port. Needs a tokio runtime
/// (a single-threaded one with paused time is fine: every timer is tokio time).
pub fn spawn_with_transport<M, T>(
    config: GossipConfig,
    meta: M,
    transport: Arc<T>,
) -> Result<Gossip<M>, GossipError>
where
    M: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + PartialEq + 'static,
    T: Transport,
{
    let mut config = config;
    let foca_config = config.validate()?;
    let meta_json = serde_json::to_vec(&meta).map_err(|e| GossipError::Metadata(e.to_string()))?;
    if config.advertise.port() == 0 {
        // Bound to port 0 (tests): advertise the port the kernel picked.
        let local = transport.local_addr().map_err(|source| GossipError::Bind {
            addr: config.bind,
            source,
        })?;
        config.advertise.set_port(local.port());
    }
    let me = NodeIdentity::new(
        Arc::from(config.node_id.as_str()),
        config.generation,
        config.advertise,
    );
    // The metadata travels in one metadata packet (identity and JSON).
    let identity_bytes = codec::meta_packet_len(&me, &meta_json);
    let max_identity_bytes = config.max_packet_bytes;
    if identity_bytes > max_identity_bytes || meta_json.len() > usize::from(u16::MAX) {
        return Err(GossipError::MetadataTooLarge {
            identity_bytes,
            max_identity_bytes,
        });
    }
    let shared = Arc::new(Shared {
        view: RwLock::new(Default::default()),
        stats: StatsCounters::default(),
        awareness: AtomicU32::new(0),
    });
    let (events, _) = broadcast::channel(EVENT_QUEUE_MAX);
    let (tx, rx) = mpsc::channel(INPUT_QUEUE_MAX);
    let max_packet = config.max_packet_bytes;
    let advertise = config.advertise;
    let seed = config.seed;
    let notes = Arc::new(engine::Notes::new());
    let engine = Engine::new(
        config,
        foca_config,
        me,
        Arc::new(meta),
        Arc::from(meta_json),
        Arc::clone(&transport),
        Arc::clone(&shared),
        events.clone(),
        seed,
        Arc::clone(&notes),
    );
    let engine_task = tokio::spawn(engine.run(rx));
    let refusal_task = tokio::spawn(refusal_loop(Arc::clone(&transport), tx.clone()));
    let recv_task = tokio::spawn(receive_loop(
        transport,
        tx.clone(),
        Arc::clone(&shared),
        max_packet,
    ));
    Ok(Gossip {
        inner: Arc::new(Inner {
            notes,
            advertise,
            seed,
            input: tx,
            shared,
            events,
            tasks: Mutex::new(vec![engine_task, recv_task, refusal_task]),
        }),
    })
}

/// Reads datagrams and queues them for the engine; never blocks on the engine.
async fn receive_loop<M, T: Transport>(
    transport: Arc<T>,
    tx: mpsc::Sender<GossipInput<M>>,
    shared: Arc<Shared<M>>,
    max_packet: usize,
) {
    // One byte more than allowed, so an oversize datagram is seen as such.
    let mut buf = vec![0u8; max_packet + 1];
    loop {
        let (n, from) = match transport.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some platforms; not fatal.
                tracing::debug!(error = %e, "gossip recv error");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        match tx.try_send(GossipInput::Data(buf[..n.min(buf.len())].to_vec(), from)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared.stats.inbound_dropped.fetch_add(1, Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Passes refusals (an address whose host said nothing listens there) to the engine.
async fn refusal_loop<M, T: Transport>(transport: Arc<T>, tx: mpsc::Sender<GossipInput<M>>) {
    loop {
        match transport.next_refusal().await {
            Ok(addr) => {
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    tx.try_send(GossipInput::Refused(addr))
                {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the gossip socket's error queue");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl<M> Gossip<M>
where
    M: Clone,
{
    async fn command(&self, c: Command) -> Result<(), GossipError> {
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.inner.input.send(GossipInput::Command(c)),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(GossipError::Stopped),
            Err(_) => Err(GossipError::Busy),
        }
    }

    /// Announce to the seeds. Retried in the background with backoff (200 ms
    /// doubling to 2 s, 14 rounds, ~20 s) until at least one member is seen.
    pub async fn join(&self, seeds: &[SocketAddr]) -> Result<(), GossipError> {
        if seeds.is_empty() {
            return Err(GossipError::NoSeeds);
        }
        self.command(Command::Join(seeds.to_vec())).await
    }

    /// Announce `data` as this node's note: it replaces our previous note on every member,
    /// spreads by gossip like membership news (piggybacked, and pushed at once to a few
    /// members), and is what [`Gossip::notes`] shows for us everywhere. A note is kept per
    /// node id and the newest (generation, version) wins. Announcing the same bytes again is
    /// how a caller makes sure late joiners and lossy links catch up.
    pub async fn set_note(&self, data: Vec<u8>) -> Result<(), GossipError> {
        if data.len() > NOTE_BYTES_MAX {
            return Err(GossipError::NoteTooLarge(data.len()));
        }
        self.command(Command::Note(data)).await
    }

    /// The latest note of every node heard of (ourselves included), by node id.
    pub fn notes(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        self.inner.notes.snapshot()
    }

    /// Bumped whenever a newer note arrives.
    pub fn notes_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.notes.subscribe()
    }

    /// Membership events. Bounded: a slow subscriber lags, never blocks gossip.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent<M>> {
        self.inner.events.subscribe()
    }

    /// The shared view, read-locked (a poisoned lock still holds a valid view).
    fn view(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<Arc<str>, Member<M>>> {
        self.inner
            .shared
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Current view, ourselves included, sorted by node id.
    pub fn members(&self) -> Vec<Member<M>> {
        let view = self.view();
        let mut out: Vec<Member<M>> = view.values().cloned().collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// How many members (ourselves included) are Alive or Suspect: `members()` counted,
    /// without copying the view.
    pub fn live_count(&self) -> usize {
        let view = self.view();
        view.values().filter(|m| m.status.is_live()).count()
    }

    /// The status of `node_id` in the current view (ourselves included), without copying the
    /// view; `None` if it is not in it.
    pub fn status_of(&self, node_id: &str) -> Option<MemberStatus> {
        let view = self.view();
        view.get(node_id).map(|m| m.status)
    }

    /// The address peers dial (the bound port if `bind` had port 0).
    pub fn advertise_addr(&self) -> SocketAddr {
        self.inner.advertise
    }

    /// Lifeguard local health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.inner.shared.awareness.load(Relaxed)
    }

    pub fn stats(&self) -> GossipStats {
        let s = &self.inner.shared.stats;
        GossipStats {
            bytes_sent: s.bytes_sent.load(Relaxed),
            bytes_received: s.bytes_received.load(Relaxed),
            packets_sent: s.packets_sent.load(Relaxed),
            packets_received: s.packets_received.load(Relaxed),
            bad_packets_dropped: s.bad_packets.load(Relaxed),
            impostor_packets: s.impostor_packets.load(Relaxed),
            impostor_updates: s.impostor_updates.load(Relaxed),
            inbound_dropped: s.inbound_dropped.load(Relaxed),
            send_errors: s.send_errors.load(Relaxed),
            buddy_notices: s.buddy_notices.load(Relaxed),
            largest_packet_sent: s.largest_packet_sent.load(Relaxed),
            seed: self.inner.seed,
            swim_members: s.swim_members.load(Relaxed),
            metas_missing: s.metas_missing.load(Relaxed),
            member_pulls: s.member_pulls.load(Relaxed),
            member_lists_sent: s.member_lists_sent.load(Relaxed),
            refusals: s.refusals.load(Relaxed),
            refused_down: s.refused_down.load(Relaxed),
        }
    }

    /// Leave gracefully: peers learn we left (not failed), then the engine
    /// stops. Bounded by 2 s; the tasks are stopped in any case.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, rx).await;
        }
        self.inner.abort();
    }

    /// Test hook: stop both tasks at once, as `kill -9` would.
    #[cfg(test)]
    pub(crate) fn kill(&self) {
        self.inner.abort();
    }

    /// Test hook: make the engine task sleep, as a stalled process.
    #[cfg(test)]
    pub(crate) async fn stall(&self, d: Duration) {
        self.starve(d).await;
    }

    /// Fault injection for simulators and benchmarks (feature `sim`): the engine's event loop
    /// sleeps for `d`, as a process starved of CPU. Datagrams queue meanwhile (and are lost
    /// beyond the input queue); timers that came due fire late, mixed with that backlog.
    #[cfg(any(test, feature = "sim"))]
    pub async fn starve(&self, d: Duration) {
        let _ = self.command(Command::Stall(d, StallKind::Whole)).await;
    }

    /// As [`Gossip::starve`], but only the datagram path starves: for `d`, timers fire on
    /// time (and send) while received datagrams wait in the queue. So the member misses
    /// acks and refutations that did arrive and accuses healthy peers: the slow member of
    /// the Lifeguard paper, whose timers ran on threads of their own.
    #[cfg(any(test, feature = "sim"))]
    pub async fn starve_packets(&self, d: Duration) {
        let _ = self.command(Command::Stall(d, StallKind::Packets)).await;
    }
}
