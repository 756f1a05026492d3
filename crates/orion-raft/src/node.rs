//! `RaftNode`: the project's one handle on consensus. It owns the openraft instance, the log
//! and state stores, the RPC server on the raft port and the no-leader watchdog, and it hides
//! openraft's types behind Orion's: commands go in, responses and `RaftStatus` come out.
//!
//! Writes go to the leader: proposed locally when this node leads, otherwise forwarded over
//! the RPC. While no leader is known or reachable a write waits, polling at the heartbeat
//! interval, for at most `leader_wait_ms`, then fails with `NotProposed::NoLeader`. A write is
//! only retried when it surely was not proposed (the target said it is not the leader, or no
//! connection could be made); a write whose answer was lost (timeout, dropped connection, bad
//! status or reply, the leader shutting down) fails with `WriteError::Unknown`, and an invalid
//! command with `WriteError::Rejected` before anything is sent (`forward_outcome`).

use crate::error::{NotProposed, RaftError, StoreError, Unknown, WriteError};
use crate::log_store::LogStore;
use crate::network::RpcTransport;
use crate::network::{
    ForwardError, NetworkFactory, ReadIndexRequest, RpcClient, RpcFailure, paths,
};
use crate::proposer::Proposer;
use crate::server::{self, LeaderContact, RpcHandler, ServerState};
use crate::sim_disk::SimDisk;
use crate::sm_store::StateMachineStore;
use crate::types::{Peer, RaftId, TypeConfig, raft_id};
use openraft::error::{ClientWriteError, RaftError as OpenRaftError};
use openraft::{ChangeMembers, Config, Raft, RaftMetrics, ServerState as Role0, SnapshotPolicy};
use orion_state::ClusterState;
use orion_types::{Command, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Extra time a forwarding node gives the leader beyond the leader's own commit bound, for
/// the round trip and the JSON on both ends.
const FORWARD_MARGIN_MS: u64 = 500;

/// How long shutdown waits for Raft's core, then for the RPC server and the watchdog, before
/// giving up on or aborting them: in-flight RPCs end as soon as Raft stops, so this is only a
/// backstop.
const SHUTDOWN_JOIN_MS: u64 = 3_000;

/// The watchdog calls an election after this many `election_timeout_max` without a leader.
/// openraft's own path takes at most a leader lease (`election_timeout_max`) plus one election
/// timeout (`<= election_timeout_max`) plus a tick, so 3x never races a healthy election.
const WATCHDOG_STUCK_FACTOR: u64 = 3;

/// Where this node's files go and how its Raft is tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// The operator's `--id`.
    pub node_id: String,
    /// Holds the log (`raft-log/`) and the state's snapshot (meta in `state.redb`, bytes in
    /// `snapshots/`).
    pub data_dir: PathBuf,
    /// Where the RPC server listens.
    pub bind: SocketAddr,
    /// What peers dial, and the source address of every outgoing connection.
    pub advertise: SocketAddr,
    /// `ip:port` of this node's HTTP API, recorded in the membership.
    pub api_addr: String,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many new entries.
    pub snapshot_logs: u64,
    /// How long a write or consistent read waits for a reachable leader before failing.
    pub leader_wait_ms: u64,
    /// Bound on one RPC, on a leader's commit of a forwarded write, and on a read index.
    pub rpc_timeout_ms: u64,
    /// Seeds the no-leader watchdog's random delays (SplitMix64), so a simulated run replays
    /// them exactly. `new` draws it from the OS.
    pub watchdog_seed: u64,
    /// Mutual TLS on the RPC port (both directions); `None` serves plain HTTP (`--insecure`).
    pub tls: Option<crate::tls::RpcTls>,
}

impl RaftConfig {
    /// Defaults tuned for fast failover on a LAN.
    pub fn new(
        node_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        bind: SocketAddr,
        advertise: SocketAddr,
        api_addr: impl Into<String>,
    ) -> RaftConfig {
        RaftConfig {
            node_id: node_id.into(),
            data_dir: data_dir.into(),
            bind,
            advertise,
            api_addr: api_addr.into(),
            // openraft's default and etcd's LAN advice (heartbeat ~ a few RTTs, tens of ms).
            heartbeat_ms: 50,
            // 6x..12x the heartbeat: a follower tolerates 5 lost heartbeats before it elects,
            // and the 300 ms spread makes equal timeouts of two survivors unlikely. A leader
            // crash is noticed after the lease (max) plus one timeout: 0.6 s + 0.3..0.6 s.
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            // openraft's default: a snapshot of the whole state per 5,000 entries.
            snapshot_logs: 5_000,
            // Covers the slowest election the watchdog allows (3 x 600 ms + up to 600 ms of
            // jitter + one more round) with margin; then the API answers 503.
            leader_wait_ms: 4_000,
            // A LAN commit takes milliseconds; 2 s absorbs an fsync stall on a busy disk.
            rpc_timeout_ms: 2_000,
            watchdog_seed: orion_types::env::os_seed(),
            tls: None,
        }
    }

    fn validate(&self) -> Result<(), RaftError> {
        let bad = |m: &str| Err(RaftError::Config(m.to_string()));
        if self.node_id.is_empty() {
            return bad("node_id is empty");
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_min_ms {
            return bad("heartbeat_ms must be > 0 and below election_timeout_min_ms");
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return bad("election_timeout_min_ms must be below election_timeout_max_ms");
        }
        if self.snapshot_logs == 0 || self.leader_wait_ms == 0 || self.rpc_timeout_ms == 0 {
            return bad("snapshot_logs, leader_wait_ms and rpc_timeout_ms must be > 0");
        }
        Ok(())
    }

    /// Entries between this node's snapshots: `snapshot_logs` plus up to a quarter more,
    /// fixed per node by a hash of its id (two members may draw the same one). Members that
    /// all snapshot at the same index encode and fsync the whole state at once on machines
    /// that may share cores and a disk, and a commit then waits for a follower busy with its
    /// own; with intervals that differ they drift apart after the first.
    fn snapshot_interval(&self) -> u64 {
        let spread = self.snapshot_logs / 4 + 1;
        self.snapshot_logs + crate::raft_id(&self.node_id) % spread
    }

    fn openraft_config(&self) -> Result<Config, RaftError> {
        let config = Config {
            cluster_name: "orion".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // One snapshot chunk (about 4 MiB of JSON) must cross within this.
            install_snapshot_timeout: self.rpc_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_interval()),
            snapshot_max_chunk_size: crate::network::SNAPSHOT_CHUNK_BYTES,
            // Keep a fifth of a snapshot interval behind each snapshot (openraft: 1000 of
            // 5000), so a briefly lagging follower catches up from the log, not a snapshot.
            max_in_snapshot_log_to_keep: self.snapshot_logs / 5,
            replication_lag_threshold: self.snapshot_logs,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| RaftError::Config(e.to_string()))
    }
}

/// A node's role in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// What `GET /status` shows about consensus on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub node_id: String,
    pub role: Role,
    /// The leader this node follows (its string id), if a leader is known.
    pub leader: Option<String>,
    /// That leader's API address.
    pub leader_api_addr: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Last log index included in the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Last log index purged from the log.
    pub purged_index: Option<u64>,
    /// During a membership change (joint consensus) `voters` is the union of the old and new
    /// voter sets, and this is true.
    pub membership_changing: bool,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// Follower/learner: millis since an append-entries from an accepted leader.
    /// Leader: millis since a quorum last acknowledged it.
    pub last_leader_contact_ms: Option<u64>,
}

struct Inner {
    cfg: RaftConfig,
    id: RaftId,
    raft: Raft<TypeConfig>,
    log: LogStore,
    sm: StateMachineStore,
    rpc: RpcClient,
    contact: Arc<LeaderContact>,
    proposer: Proposer,
    started: Instant,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// The handle on this node's Raft. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

/// What a simulated node uses instead of sockets, files and thread-local randomness
/// (`RaftNode::start_sim`).
pub struct SimParts {
    /// Carries this node's outgoing RPC.
    pub transport: Arc<dyn RpcTransport>,
    /// Holds its log and state files; keep a clone to crash it.
    pub disk: SimDisk,
    /// Seeds the watchdog's jitter and the snapshot ids.
    pub seed: u64,
}

/// Where a leader-only call goes.
enum Target {
    Local,
    Remote(String),
}

impl RaftNode {
    /// Opens the stores in `cfg.data_dir`, binds the RPC port and starts Raft. The node takes
    /// part in no cluster until it is bootstrapped or added by a leader.
    ///
    /// A `bind` port of 0 takes any free port; an `advertise` port of 0 then advertises the
    /// port actually bound (tests use this).
    pub async fn start(mut cfg: RaftConfig) -> Result<RaftNode, RaftError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StoreError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
        let data_dir = cfg.data_dir.clone();
        let sm_path = cfg.data_dir.join("state.redb");
        let (log, sm) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((
                LogStore::open(&data_dir)?,
                StateMachineStore::open(&sm_path)?,
            ))
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))??;

        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| RaftError::Bind {
                addr: cfg.bind.to_string(),
                source,
            })?;
        if cfg.advertise.port() == 0 {
            let bound = listener.local_addr().map_err(|source| RaftError::Bind {
                addr: cfg.bind.to_string(),
                source,
            })?;
            cfg.advertise.set_port(bound.port());
        }
        let rpc_timeout = Duration::from_millis(cfg.rpc_timeout_ms);
        let rpc = match &cfg.tls {
            Some(tls) => RpcClient::over(
                Arc::new(crate::tls::TlsTransport::new(
                    cfg.advertise.ip(),
                    tls,
                    Duration::from_millis(crate::network::CONNECT_TIMEOUT_MS),
                    Duration::from_millis(crate::network::POOL_IDLE_TIMEOUT_MS),
                )),
                rpc_timeout,
            ),
            None => RpcClient::new(cfg.advertise.ip(), rpc_timeout)
                .map_err(|e| RaftError::Config(format!("http client: {e}")))?,
        };
        let tls = cfg.tls.clone();
        // Seeded from the config (random per start, logged) so a run can be told apart.
        let jitter = Jitter::new(cfg.watchdog_seed);
        let node = RaftNode::assemble(cfg, log, sm, rpc, jitter).await?;

        let app = server::router(node.server_state());
        let mut stop = node.inner.shutdown_tx.subscribe();
        let server = tokio::spawn(async move {
            if let Some(tls) = tls {
                crate::tls::serve(listener, app, tls, stop).await;
                return;
            }
            // Raft messages are small and latency-bound: never let Nagle hold a reply back.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "raft RPC server failed");
            }
        });
        node.tasks().push(server);
        Ok(node)
    }

    /// Starts a node for the deterministic simulator: its stores on `parts.disk`, its RPC
    /// through `parts.transport` (peers reach it through `rpc_handler`, no socket is bound),
    /// the state's writes inline on the calling task and the log's on a task of the same
    /// runtime (its writer), and the watchdog's jitter and the
    /// snapshot ids drawn from `parts.seed`. Run it on a current-thread runtime with paused
    /// time; everything else is the production code path.
    pub async fn start_sim(cfg: RaftConfig, parts: SimParts) -> Result<RaftNode, RaftError> {
        cfg.validate()?;
        let mut seeds = Jitter::new(parts.seed);
        let log = LogStore::open_sim(&parts.disk)?;
        let sm = StateMachineStore::open_sim(&parts.disk, seeds.next())?;
        let rpc = RpcClient::over(parts.transport, Duration::from_millis(cfg.rpc_timeout_ms));
        let jitter = Jitter::new(seeds.next());
        RaftNode::assemble(cfg, log, sm, rpc, jitter).await
    }

    /// Builds openraft over the opened stores and starts the watchdog.
    async fn assemble(
        cfg: RaftConfig,
        log: LogStore,
        sm: StateMachineStore,
        rpc: RpcClient,
        jitter: Jitter,
    ) -> Result<RaftNode, RaftError> {
        let config = Arc::new(cfg.openraft_config()?);
        let id = raft_id(&cfg.node_id);
        let raft = Raft::new(
            id,
            config,
            NetworkFactory { rpc: rpc.clone() },
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| RaftError::Raft(e.to_string()))?;
        let (shutdown_tx, _) = watch::channel(false);
        let (proposer, proposer_task) = Proposer::start(
            raft.clone(),
            Duration::from_millis(cfg.rpc_timeout_ms),
            shutdown_tx.subscribe(),
        );
        let node = RaftNode {
            inner: Arc::new(Inner {
                cfg,
                id,
                raft,
                log,
                sm,
                rpc,
                contact: Arc::new(LeaderContact::default()),
                proposer,
                started: Instant::now(),
                shutdown_tx,
                tasks: Mutex::new(Vec::new()),
                stopped: AtomicBool::new(false),
            }),
        };
        let watchdog = tokio::spawn(watchdog(
            node.inner.raft.clone(),
            node.inner.id,
            node.inner.cfg.clone(),
            node.inner.contact.clone(),
            node.inner.started,
            jitter,
            node.inner.shutdown_tx.subscribe(),
        ));
        node.tasks().push(watchdog);
        node.tasks().push(proposer_task);
        tracing::info!(
            node = %node.inner.cfg.node_id,
            raft_id = id,
            bind = %node.inner.cfg.bind,
            advertise = %node.inner.cfg.advertise,
            watchdog_seed = node.inner.cfg.watchdog_seed,
            "raft started"
        );
        Ok(node)
    }

    fn server_state(&self) -> ServerState {
        ServerState {
            raft: self.inner.raft.clone(),
            contact: self.inner.contact.clone(),
            rpc_timeout: Duration::from_millis(self.inner.cfg.rpc_timeout_ms),
            proposer: self.inner.proposer.clone(),
        }
    }

    /// What this node's RPC routes do, callable without a socket (the simulator's transport
    /// delivers peers' requests here).
    pub fn rpc_handler(&self) -> RpcHandler {
        RpcHandler(self.server_state())
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node as the membership records it.
    pub fn peer(&self) -> Peer {
        Peer {
            node_id: self.inner.cfg.node_id.clone(),
            raft_addr: self.inner.cfg.advertise.to_string(),
            api_addr: self.inner.cfg.api_addr.clone(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.inner.cfg.node_id
    }

    pub fn raft_id(&self) -> RaftId {
        self.inner.id
    }

    /// Makes this node a one-voter cluster, unless its store was ever initialised (a restart,
    /// or a node that was already added to a cluster): then it does nothing.
    pub async fn bootstrap(&self) -> Result<(), RaftError> {
        let raft = &self.inner.raft;
        let ms = self.inner.cfg.rpc_timeout_ms;
        let bound = Duration::from_millis(ms);
        let initialized = tokio::time::timeout(bound, raft.is_initialized())
            .await
            .map_err(|_| RaftError::Timeout(ms))?
            .map_err(|_| RaftError::Shutdown)?;
        if initialized {
            tracing::info!("raft store already initialised; not bootstrapping again");
            return Ok(());
        }
        let members = BTreeMap::from([(self.inner.id, self.peer())]);
        let res = tokio::time::timeout(bound, raft.initialize(members))
            .await
            .map_err(|_| RaftError::Timeout(ms))?;
        match res {
            Ok(()) => {
                tracing::info!(node = %self.inner.cfg.node_id, "bootstrapped a one-voter cluster");
                Ok(())
            }
            // Initialised between the check and the call (a leader reached us first).
            Err(OpenRaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(OpenRaftError::APIError(e)) => Err(RaftError::Raft(e.to_string())),
            Err(OpenRaftError::Fatal(_)) => Err(RaftError::Shutdown),
        }
    }

    fn metrics(&self) -> RaftMetrics<RaftId, Peer> {
        self.inner.raft.metrics().borrow().clone()
    }

    fn target(&self) -> Option<Target> {
        let m = self.metrics();
        let leader = m.current_leader?;
        if leader == self.inner.id {
            return (m.state == Role0::Leader).then_some(Target::Local);
        }
        let peer = m.membership_config.membership().get_node(&leader)?;
        Some(Target::Remote(peer.raft_addr.clone()))
    }

    /// Waits for a metrics change or one heartbeat, whichever is first; false once `deadline`
    /// has passed.
    async fn pause(&self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let step = Duration::from_millis(self.inner.cfg.heartbeat_ms).min(deadline - now);
        let mut rx = self.inner.raft.metrics();
        // `metrics()` clones a receiver that never marks anything seen: without this, every
        // `changed()` after the first metrics update answers at once and the caller spins
        // (found by the simulator, where a spin never lets virtual time reach the deadline).
        rx.borrow_and_update();
        if let Ok(Err(_)) = tokio::time::timeout(step, rx.changed()).await {
            // Raft's core has stopped (a storage failure): the channel answers at once
            // forever, so wait the step out instead of spinning until the deadline.
            tokio::time::sleep(step).await;
        }
        Instant::now() < deadline
    }

    fn leader_wait_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.inner.cfg.leader_wait_ms)
    }

    fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.rpc_timeout_ms + FORWARD_MARGIN_MS)
    }

    /// Proposes `cmd` through the leader and returns its response once committed and applied.
    /// An invalid command is refused before anything is sent (`WriteError::Rejected`).
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        cmd.validate().map_err(WriteError::Rejected)?;
        let deadline = self.leader_wait_deadline();
        let rpc_timeout = self.inner.rpc.rpc_timeout();
        loop {
            if self.inner.stopped.load(Ordering::Acquire) {
                return Err(WriteError::NotProposed(NotProposed::Shutdown));
            }
            let step = match self.target() {
                None => None,
                Some(Target::Local) => forward_outcome(Ok(self
                    .inner
                    .proposer
                    .write(cmd.clone(), rpc_timeout)
                    .await)),
                Some(Target::Remote(addr)) => forward_outcome(
                    self.inner
                        .rpc
                        .post::<_, Result<Response, ForwardError>>(
                            &addr,
                            paths::FORWARD,
                            &cmd,
                            self.forward_timeout(),
                        )
                        .await,
                ),
            };
            if let Some(done) = step {
                return done;
            }
            if !self.pause(deadline).await {
                return Err(WriteError::no_leader());
            }
        }
    }

    /// ReadIndex: learns the leader's linearizable read index (asking the leader over RPC
    /// unless this node leads), then waits until this replica has applied it. A `read` after
    /// this returns sees every write acknowledged before the call.
    pub async fn consistent_read(&self) -> Result<(), WriteError> {
        let deadline = self.leader_wait_deadline();
        let rpc_timeout = self.inner.rpc.rpc_timeout();
        let index = loop {
            if self.inner.stopped.load(Ordering::Acquire) {
                return Err(WriteError::NotProposed(NotProposed::Shutdown));
            }
            let res = match self.target() {
                None => None,
                Some(Target::Local) => {
                    Some(server::local_read_index(&self.inner.raft, rpc_timeout).await)
                }
                Some(Target::Remote(addr)) => match self
                    .inner
                    .rpc
                    .post::<_, Result<u64, ForwardError>>(
                        &addr,
                        paths::READ_INDEX,
                        &ReadIndexRequest {},
                        self.forward_timeout(),
                    )
                    .await
                {
                    Ok(r) => Some(r),
                    // A read has no side effect: any transport failure may be retried.
                    Err(e) => {
                        tracing::debug!(error = %e, "read index failed; retrying");
                        None
                    }
                },
            };
            match res {
                Some(Ok(index)) => break index,
                Some(Err(ForwardError::NotLeader { .. } | ForwardError::Shutdown)) | None => {}
                Some(Err(ForwardError::Timeout { ms })) => {
                    return Err(WriteError::Unknown(Unknown::Timeout(ms)));
                }
                Some(Err(ForwardError::Other(m))) => {
                    return Err(WriteError::NotProposed(NotProposed::NoQuorum(m)));
                }
                Some(Err(e @ ForwardError::Invalid { .. })) => {
                    return Err(WriteError::Unknown(Unknown::Leader(e.to_string())));
                }
            }
            if !self.pause(deadline).await {
                return Err(WriteError::no_leader());
            }
        };
        let mut rx = self.inner.sm.subscribe();
        match tokio::time::timeout(rpc_timeout, rx.wait_for(|applied| *applied >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(WriteError::NotProposed(NotProposed::Shutdown)),
            Err(_) => Err(WriteError::Unknown(Unknown::Timeout(
                rpc_timeout.as_millis() as u64,
            ))),
        }
    }

    /// Reads the local replica (possibly stale on a follower; see `consistent_read`). `f` runs
    /// under the state's read lock, which an apply waits for: keep it short, copy out what
    /// you need.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.inner.sm.read().state)
    }

    /// Also tells `observer` about every entry this node applies from now on (see
    /// `ApplyObserver`).
    pub fn add_apply_observer(&self, observer: Arc<dyn crate::ApplyObserver>) {
        self.inner.sm.add_observer(observer);
    }

    /// The applied index; changes after every applied batch or installed snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.sm.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == Role0::Leader
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let name = |id: &RaftId| {
            membership
                .get_node(id)
                .map_or_else(|| format!("#{id}"), |p| p.node_id.clone())
        };
        let role = match m.state {
            Role0::Leader => Role::Leader,
            Role0::Follower => Role::Follower,
            Role0::Candidate => Role::Candidate,
            Role0::Learner => Role::Learner,
            Role0::Shutdown => Role::Shutdown,
        };
        let last_leader_contact_ms = if role == Role::Leader {
            m.millis_since_quorum_ack
        } else {
            self.inner
                .contact
                .last()
                .map(|t| t.elapsed().as_millis() as u64)
        };
        RaftStatus {
            node_id: self.inner.cfg.node_id.clone(),
            role,
            leader: m.current_leader.as_ref().map(name),
            leader_api_addr: m
                .current_leader
                .and_then(|l| membership.get_node(&l).map(|p| p.api_addr.clone())),
            term: m.current_term,
            commit_index: self.inner.log.committed_index().unwrap_or(0),
            // The state machine's own index: bumped before a write's response is sent, where
            // openraft's metrics may trail it by a moment.
            applied_index: *self.inner.sm.subscribe().borrow(),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().map(|id| name(&id)).collect(),
            learners: membership.learner_ids().map(|id| name(&id)).collect(),
            membership_changing: membership.get_joint_config().len() > 1,
            last_leader_contact_ms,
        }
    }

    fn ensure_leader(&self) -> Result<RaftMetrics<RaftId, Peer>, RaftError> {
        let m = self.metrics();
        if m.state == Role0::Leader {
            return Ok(m);
        }
        let leader = m.current_leader.map(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map_or_else(|| format!("#{l}"), |p| p.node_id.clone())
        });
        Err(RaftError::NotLeader { leader })
    }

    async fn change(
        &self,
        changes: ChangeMembers<RaftId, Peer>,
        retain: bool,
    ) -> Result<(), RaftError> {
        let ms = self.inner.cfg.leader_wait_ms;
        let res = tokio::time::timeout(
            Duration::from_millis(ms),
            self.inner.raft.change_membership(changes, retain),
        )
        .await
        .map_err(|_| RaftError::Timeout(ms))?;
        map_membership_result(res)
    }

    /// Adds `peer` as a non-voting learner and returns at once (replication catches it up in
    /// the background). Leader only. Adding a member again is a no-op; a member whose
    /// addresses changed (a restart elsewhere) gets its record updated.
    pub async fn add_learner(&self, peer: Peer) -> Result<(), RaftError> {
        let m = self.ensure_leader()?;
        let id = raft_id(&peer.node_id);
        if let Some(existing) = m.membership_config.membership().get_node(&id) {
            if existing.node_id != peer.node_id {
                return Err(RaftError::IdCollision {
                    new: peer.node_id,
                    existing: existing.node_id.clone(),
                    raft_id: id,
                });
            }
            if *existing == peer {
                return Ok(());
            }
            tracing::info!(node = %peer.node_id, "updating a member's addresses");
            return self
                .change(ChangeMembers::SetNodes(BTreeMap::from([(id, peer)])), true)
                .await;
        }
        let ms = self.inner.cfg.leader_wait_ms;
        let res = tokio::time::timeout(
            Duration::from_millis(ms),
            self.inner.raft.add_learner(id, peer.clone(), false),
        )
        .await
        .map_err(|_| RaftError::Timeout(ms))?;
        map_membership_result(res)?;
        tracing::info!(node = %peer.node_id, "added learner");
        Ok(())
    }

    /// Makes exactly `voters` (string ids, each already a member) the voting set, through joint
    /// consensus. Leader only. Learners stay learners; voters left out become learners.
    pub async fn change_voters(&self, voters: BTreeSet<String>) -> Result<(), RaftError> {
        let m = self.ensure_leader()?;
        if voters.is_empty() {
            return Err(RaftError::Config(
                "the voter set cannot be empty".to_string(),
            ));
        }
        let membership = m.membership_config.membership();
        let mut ids = BTreeSet::new();
        for v in &voters {
            let id = raft_id(v);
            if membership.get_node(&id).is_none() {
                return Err(RaftError::UnknownNode(v.clone()));
            }
            ids.insert(id);
        }
        if membership.voter_ids().collect::<BTreeSet<_>>() == ids {
            return Ok(());
        }
        self.change(ChangeMembers::ReplaceAllVoters(ids), true)
            .await?;
        tracing::info!(?voters, "changed voters");
        Ok(())
    }

    /// Removes `node_id` from the voters and the learners. Leader only. Removing a node that
    /// is not a member is a no-op.
    pub async fn remove_node(&self, node_id: &str) -> Result<(), RaftError> {
        let m = self.ensure_leader()?;
        let id = raft_id(node_id);
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Ok(());
        }
        if membership.voter_ids().any(|v| v == id) {
            // retain=false: the removed voter leaves the node list too.
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await?;
        } else {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
        }
        tracing::info!(node = %node_id, "removed node from raft membership");
        Ok(())
    }

    /// Test hook: switches openraft's own election timer off (or on again), leaving the
    /// watchdog as the only thing that starts elections.
    #[doc(hidden)]
    pub fn set_builtin_elections(&self, enabled: bool) {
        self.inner.raft.runtime_config().elect(enabled);
    }

    /// Builds a snapshot now (the policy builds one every `snapshot_logs` entries anyway).
    pub async fn trigger_snapshot(&self) -> Result<(), RaftError> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|_| RaftError::Shutdown)
    }

    /// Stops the watchdog, the RPC server and Raft, syncs the state machine to disk and joins
    /// every task. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(node = %self.inner.cfg.node_id, "raft shutting down");
        self.inner.shutdown_tx.send_replace(true);
        let join = Duration::from_millis(SHUTDOWN_JOIN_MS);
        match tokio::time::timeout(join, self.inner.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft core did not stop cleanly"),
            Err(_) => tracing::warn!("raft core did not stop in time"),
        }
        let tasks: Vec<_> = self.tasks().drain(..).collect();
        for mut task in tasks {
            if tokio::time::timeout(join, &mut task).await.is_err() {
                tracing::warn!("a raft task did not stop in time; aborting it");
                task.abort();
                let _ = task.await;
            }
        }
        if let Err(e) = self.inner.log.flush().await {
            tracing::warn!(error = %e, "saving the commit index failed; the log will be replayed");
        }
        if tokio::time::timeout(join, self.inner.sm.close_when_idle())
            .await
            .is_err()
        {
            tracing::warn!("a snapshot was still being written; closing the state store under it");
            self.inner.sm.close();
        }
        self.inner.log.close();
    }
}

/// What one attempt at a write gave: `Some` to return it, `None` to wait for a leader and try
/// again. Only an attempt that surely proposed nothing gives `None`: the target said it is not
/// the leader, or no connection could be made. Once the request has left, every failure is
/// `Unknown`, since the leader may have taken it.
fn forward_outcome(
    attempt: Result<Result<Response, ForwardError>, RpcFailure>,
) -> Option<Result<Response, WriteError>> {
    let unknown = |u| Some(Err(WriteError::Unknown(u)));
    match attempt {
        Ok(Ok(resp)) => Some(Ok(resp)),
        Ok(Err(ForwardError::NotLeader { .. })) => None,
        Ok(Err(ForwardError::Timeout { ms })) => unknown(Unknown::Timeout(ms)),
        Ok(Err(ForwardError::Shutdown)) => unknown(Unknown::LeaderShutdown),
        Ok(Err(ForwardError::Other(m))) => unknown(Unknown::Leader(m)),
        Ok(Err(ForwardError::Invalid { field, message })) => Some(Err(WriteError::Rejected(
            orion_types::api::ValidationError { field, message },
        ))),
        Err(RpcFailure::Connect { addr, msg }) => {
            tracing::debug!(%addr, %msg, "leader unreachable; waiting");
            None
        }
        // Refused before sending: nothing was proposed, and a retry would be refused again.
        Err(RpcFailure::TooLarge(n)) => Some(Err(WriteError::Rejected(
            orion_types::api::ValidationError {
                field: String::new(),
                message: format!("the command is {n} bytes, over the inter-node limit"),
            },
        ))),
        Err(RpcFailure::Timeout { ms, .. }) => unknown(Unknown::Timeout(ms)),
        Err(
            e @ (RpcFailure::Status { .. }
            | RpcFailure::Transport { .. }
            | RpcFailure::Decode { .. }),
        ) => unknown(Unknown::AnswerLost(e.to_string())),
    }
}

fn map_membership_result<T>(
    res: Result<T, OpenRaftError<RaftId, ClientWriteError<RaftId, Peer>>>,
) -> Result<(), RaftError> {
    match res {
        Ok(_) => Ok(()),
        Err(OpenRaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(RaftError::NotLeader {
                leader: f.leader_node.map(|p| p.node_id),
            })
        }
        Err(OpenRaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(RaftError::Raft(e.to_string()))
        }
        Err(OpenRaftError::Fatal(_)) => Err(RaftError::Shutdown),
    }
}

/// The watchdog's jitter: SplitMix64 from a seed (random in production, the simulation's
/// seed under simulation), so a simulated run draws the same delays every time.
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        orion_types::env::splitmix64(&mut self.0)
    }

    /// A number below `bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// The no-leader watchdog; see the crate docs ("Elections that never stick").
async fn watchdog(
    raft: Raft<TypeConfig>,
    id: RaftId,
    cfg: RaftConfig,
    contact: Arc<LeaderContact>,
    started: Instant,
    mut jitter: Jitter,
    mut stop: watch::Receiver<bool>,
) {
    let stuck = Duration::from_millis(WATCHDOG_STUCK_FACTOR * cfg.election_timeout_max_ms);
    // Checking at the heartbeat is far finer than the 1.8 s threshold needs.
    let check = Duration::from_millis(cfg.heartbeat_ms);
    let mut last_kick: Option<Instant> = None;
    let leaderless_for = |last_kick: Option<Instant>| -> Option<Duration> {
        let m = raft.metrics().borrow().clone();
        if m.state == Role0::Leader || m.state == Role0::Shutdown {
            return None;
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
        {
            return None;
        }
        let since = [contact.last(), Some(started), last_kick]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(started);
        let gap = since.elapsed();
        (gap > stuck).then_some(gap)
    };
    loop {
        // Biased: the branch order must not depend on tokio's thread-local RNG (simulation).
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(check) => {}
        }
        if leaderless_for(last_kick).is_none() {
            continue;
        }
        // Jitter so two stuck survivors do not kick at the same instant again.
        let delay = Duration::from_millis(jitter.below(cfg.election_timeout_max_ms));
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(gap) = leaderless_for(last_kick) else {
            continue;
        };
        tracing::warn!(
            leaderless_ms = gap.as_millis() as u64,
            "no leader for too long; calling an election"
        );
        last_kick = Some(Instant::now());
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::NO_LEADER_MESSAGE;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::AsyncReadExt;

    /// One forward attempt as `forward_outcome` sees it.
    type Attempt = Result<Result<Response, ForwardError>, RpcFailure>;

    /// The step a forward attempt must give: `None` = retry (surely not proposed).
    fn check(what: &str, attempt: Attempt, want: Option<&str>) {
        let got = forward_outcome(attempt);
        let kind = match &got {
            None => None,
            Some(Ok(_)) => Some("ok"),
            Some(Err(WriteError::NotProposed(_))) => Some("not-proposed"),
            Some(Err(WriteError::Unknown(_))) => Some("unknown"),
            Some(Err(WriteError::Rejected(_))) => Some("rejected"),
        };
        assert_eq!(kind, want, "{what}: {got:?}");
    }

    /// Found by the 10,000-task benchmark: all three members snapshotted at the same index, so
    /// a commit waited for a follower busy with its own snapshot (worst write 102 ms). Each
    /// node's interval is now its own, within a quarter above `snapshot_logs`.
    #[test]
    fn members_snapshot_at_intervals_of_their_own() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let interval = |id: &str| {
            let mut cfg = RaftConfig::new(id, "/nonexistent", addr, addr, "127.0.0.1:2");
            cfg.snapshot_logs = 1_000;
            cfg.snapshot_interval()
        };
        // Drawn from the id's hash, so two members may draw the same interval (one chance in
        // 251 for a pair at 1,000); these three do not.
        let ids = ["n1", "n2", "n3"];
        let intervals: BTreeSet<u64> = ids.iter().map(|id| interval(id)).collect();
        assert_eq!(intervals.len(), ids.len(), "{intervals:?}");
        let more: Vec<u64> = (0..100).map(|i| interval(&format!("node-{i}"))).collect();
        assert!(more.iter().all(|i| (1_000..=1_250).contains(i)), "{more:?}");
        assert_eq!(interval("n1"), interval("n1"), "fixed per node");
    }

    #[test]
    fn each_forward_result_has_its_outcome() {
        let addr = || "127.0.0.1:1".to_string();
        let cases: Vec<(&str, Attempt, Option<&str>)> = vec![
            ("committed", Ok(Ok(Response::Ok)), Some("ok")),
            (
                "not the leader",
                Ok(Err(ForwardError::NotLeader { leader: None })),
                None,
            ),
            (
                "leader timed out",
                Ok(Err(ForwardError::Timeout { ms: 5 })),
                Some("unknown"),
            ),
            (
                "leader shut down",
                Ok(Err(ForwardError::Shutdown)),
                Some("unknown"),
            ),
            (
                "leader error",
                Ok(Err(ForwardError::Other("x".into()))),
                Some("unknown"),
            ),
            (
                "invalid command",
                Ok(Err(ForwardError::Invalid {
                    field: "memory".into(),
                    message: "x".into(),
                })),
                Some("rejected"),
            ),
            (
                "refused connection",
                Err(RpcFailure::Connect {
                    addr: addr(),
                    msg: "refused".into(),
                }),
                None,
            ),
            (
                "too large to send",
                Err(RpcFailure::TooLarge(1 << 30)),
                Some("rejected"),
            ),
            (
                "no reply in time",
                Err(RpcFailure::Timeout {
                    addr: addr(),
                    ms: 5,
                }),
                Some("unknown"),
            ),
            (
                "bad status",
                Err(RpcFailure::Status {
                    addr: addr(),
                    status: 500,
                    body: String::new(),
                }),
                Some("unknown"),
            ),
            (
                "dropped connection",
                Err(RpcFailure::Transport {
                    addr: addr(),
                    msg: "reset".into(),
                }),
                Some("unknown"),
            ),
            (
                "garbled reply",
                Err(RpcFailure::Decode {
                    addr: addr(),
                    msg: "eof".into(),
                }),
                Some("unknown"),
            ),
        ];
        for (what, attempt, want) in cases {
            check(what, attempt, want);
        }
        assert_eq!(WriteError::no_leader().to_string(), NO_LEADER_MESSAGE);
        assert!(WriteError::no_leader().retry_is_safe());
        assert!(!WriteError::Unknown(Unknown::LeaderShutdown).retry_is_safe());
    }

    async fn forward_to(addr: &str) -> Option<Result<Response, WriteError>> {
        let client = RpcClient::new(IpAddr::from([127, 0, 0, 74]), Duration::from_millis(2_000))
            .expect("client");
        let cmd = Command::DeleteTask {
            task_id: "a".repeat(32),
            at: 1,
        };
        let attempt = client
            .post::<_, Result<Response, ForwardError>>(
                addr,
                paths::FORWARD,
                &cmd,
                Duration::from_millis(2_000),
            )
            .await;
        forward_outcome(attempt)
    }

    /// Regression (issue 10, 503 versus 504): a forwarded write whose connection dropped after
    /// the request left answered 503 ("retry"), although the leader may have applied it.
    #[tokio::test]
    async fn forward_dropped_after_sending_is_unknown_not_503() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 74), 0))
            .await
            .expect("bind");
        let target = listener.local_addr().expect("addr").to_string();
        // Read the whole request, as a leader would before proposing it, then hang up.
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("\"DeleteTask\"") {
                let n = sock.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            drop(sock);
        });
        let got = forward_to(&target).await;
        server.await.expect("server");
        assert!(
            matches!(got, Some(Err(WriteError::Unknown(Unknown::AnswerLost(_))))),
            "{got:?}"
        );
    }

    /// The other side of the same rule: a connection that was never made proposed nothing, so
    /// the write waits for a leader and tries again.
    #[tokio::test]
    async fn forward_to_a_refused_connection_is_not_proposed() {
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 74), 0)).expect("bind");
            l.local_addr().expect("addr").port()
        };
        let got = forward_to(&format!("127.0.0.74:{port}")).await;
        assert!(got.is_none(), "{got:?}");
    }
}
