//! Consensus for Orion: openraft 0.9 with its log and state machine on redb, the inter-node
//! RPC on the raft port, and `RaftNode`, the one handle the rest of the project uses.
//!
//! Architecture invariant: this is the only crate that imports openraft or redb. Other crates
//! see `RaftNode`, `RaftConfig`, `RaftStatus`, `Peer`, `raft_id` and the error enums; they
//! propose `orion_types::Command`s and read `orion_state::ClusterState`, and never see a log
//! id, a vote or a redb table. An openraft upgrade touches this crate alone.
//!
//! # Layout
//!
//! - `types`: the openraft type configuration; `Peer`; `raft_id` (FNV-1a of the string id).
//! - `log_store`: the Raft log, fsync'd before acknowledging; `wal`: its segment files;
//!   `log_migrate`: moves a log of the older redb format into them.
//! - `sm_store`: the state machine (in memory) and its snapshots (meta in redb, bytes in
//!   `snapshot_dir` files); `snapshot_json`: a snapshot's JSON, unchanged tasks copied from the
//!   previous one.
//! - `proposer`: the batching proposer; concurrent writes on the leader share one entry.
//! - `network`: the RPC client (reqwest, sourced from the advertise IP) and wire types.
//! - `server`: the RPC server (axum) on the raft port.
//! - `node`: `RaftNode`, write forwarding, ReadIndex, membership changes, the watchdog;
//!   `start_sim` builds one for the simulator (`orion-sim`).
//! - `sim_disk`: the simulator's disk, files in memory (log segments, the state's redb file)
//!   that lose unsynced writes on a simulated crash.
//!
//! # Seams for simulation
//!
//! Three seams let `orion-sim` run real nodes in one process on virtual time: every RPC goes
//! through `RpcTransport` (HTTP in production) and arrives at `RpcHandler::handle` (what the
//! axum routes call too); the stores open on a `SimDisk` with their writes inline instead of on
//! threads; and the watchdog's jitter and snapshot ids come from a seed. openraft's own
//! election timeout is drawn from `rand::thread_rng()`, which the simulator neutralises by
//! giving each node a one-value range (`election_timeout_max = min + 1`) that it draws from
//! its seed.
//!
//! # Elections that never stick
//!
//! openraft 0.9 draws each node's election timeout once, when the `Raft` is built, and reuses
//! it for every later campaign; elections fire on a tick of 1.5 heartbeats. Two survivors whose
//! draws fall in the same tick and whose first campaigns coincide split the vote, time out
//! together and split again, term after term: a fixed point, not bad luck (fixed upstream in
//! 0.10 by re-drawing per campaign, databendlabs/openraft#1838). Orion guards it twice:
//!
//! 1. Wide randomised timeouts (300..600 ms at a 50 ms heartbeat: a 300 ms spread, four
//!    ticks), so equal draws are unlikely in the first place.
//! 2. A no-leader watchdog task per node: if this node is a voter, is not the leader, and has
//!    not heard from a leader (an accepted append-entries or snapshot) for more than
//!    3 x `election_timeout_max` (1.8 s by default; openraft's own path needs at most a lease
//!    plus one timeout plus a tick, about 1.3 s), it waits a random 0..`election_timeout_max`
//!    (drawn from SplitMix64 seeded by `RaftConfig::watchdog_seed`, so a simulated run
//!    replays it; openraft's own timeout draw is internal to openraft) and, if still leaderless, calls `trigger().elect()`. The random wait shifts the phase
//!    of one survivor, which breaks the tie; the next campaign wins. The watchdog never
//!    triggers on a leader (an election triggered on a leader is another livelock,
//!    openraft#1839; 0.9.25 also ignores such a trigger) and waits another 3 x max after
//!    each kick. A test switches openraft's own election timer off and shows the watchdog
//!    alone elects a new leader after the old one stops.
//!
//! Upgrading to openraft 0.10 was the alternative; the workspace pins `=0.9.25`, and the guard
//! is a few dozen lines that can go when the pin moves.

mod error;
mod log_migrate;
mod log_store;
mod network;
mod node;
mod proposer;
mod server;
mod sim_disk;
mod sm_store;
mod snapshot_dir;
mod snapshot_json;
mod tls;
mod types;
mod wal;

/// redb's page cache for one database. redb's default is a 1 GiB ceiling, which a long-lived
/// agent fills with pages it never reads again: the state lives in memory and only its
/// snapshots are written (read at start and when a learner needs one), and replication reads
/// recent entries from the log store's own cache. With the default, an agent holding 10,000
/// tasks kept about 60 MiB more resident than with these.
pub(crate) fn redb_builder(cache_bytes: usize) -> redb::Builder {
    let mut b = redb::Database::builder();
    b.set_cache_size(cache_bytes);
    b
}
/// The cache of an older version's log database, read once when it is moved to the segment
/// format (`log_migrate`).
pub(crate) const LOG_CACHE_BYTES: usize = 1 << 20;
/// The state database's cache: it holds only the current snapshot.
pub(crate) const STATE_CACHE_BYTES: usize = 2 << 20;

pub use error::{NO_LEADER_MESSAGE, NotProposed, RaftError, StoreError, Unknown, WriteError};
pub use network::{BoxFuture, HttpTransport, RPC_BODY_BYTES_MAX, RpcFailure, RpcTransport, paths};
pub use node::{RaftConfig, RaftNode, RaftStatus, Role, SimParts};
pub use server::{Rejected, RpcHandler};
pub use sim_disk::SimDisk;
pub use sm_store::ApplyObserver;
pub use tls::{HANDSHAKE_TIMEOUT, RpcTls, TlsTransport};
pub use types::{Peer, RaftId, raft_id};

/// Storage internals, public only so the conformance test can run openraft's suite on them.
#[doc(hidden)]
pub mod testing {
    pub use crate::log_store::LogStore;
    pub use crate::sm_store::StateMachineStore;
    pub use crate::types::TypeConfig;
}
