//! One simulated run: N simulated nodes, each the agent's parts as the agent wires them (a
//! real `RaftNode` with the real state machine, the real API router, the real gossip engine
//! over a simulated socket, the controller's real driver and `decide`, the executor's real
//! driver and `plan` over a `FakeRuntime` engine), on one current-thread tokio runtime with
//! paused (virtual) time, the simulated network and disks, a seeded workload of clients, a
//! seeded nemesis, and the checks at the end.
//!
//! Phases: bootstrap (node 0 bootstraps Raft alone; every node joins gossip, and node 0's
//! controller adds the others as learners and makes voters of them up to the cluster config's
//! count, as in a real cluster; no faults); faults (clients and nemesis run together for
//! `fault_s` simulated seconds); heal (every link up, every crashed node restarted, clients
//! finish their last call); converge (every node applies up to the leader's commit, bounded);
//! check (a final consistent list through the leader, then the history checker, the
//! applied-index watchers and the panic count); settle (every live task runs exactly once,
//! in the engine of the node the state names, and no other container runs anywhere).
//!
//! A crash is a kill of the agent: its disk loses unsynced writes and its tasks stop at once;
//! its engine keeps the containers running (as dockerd does), unless the nemesis draws a power
//! cut of the whole machine, which empties the engine too.
//!
//! Every random choice comes from the run's seed: one generator for the nemesis, one per
//! client, one for the network, one per node life (watchdog jitter, snapshot ids, its election
//! timeout, its gossip RNG). openraft draws its election timeout from a thread-local RNG; each
//! node's range is one value wide (`max = min + 1`), the value drawn here.

use crate::checker::{self, TaskRow};
use crate::history::{Op, OpKind, Outcome};
use crate::net::{SimNet, Weather};
use crate::rng::Rng;
use crate::trace::Trace;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use orion_api::{ApiError, Backend, NodeView, StatusView};
use orion_docker::ContainerState;
use orion_executor::{FakeRuntime, TokioClock};
use orion_gossip::{Gossip, GossipConfig, MemberEvent};
use orion_raft::{RaftConfig, RaftNode, SimDisk, SimParts, WriteError};
use orion_state::ClusterState;
use orion_types::env::{Clock, IdSource, SeededIds};
use orion_types::{ClusterConfig, Command, NodeMeta, Resources, Response, Task};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tower::ServiceExt;

/// A client gives up on one call after this and records it as unknown: above the API's own
/// write bound (leader wait 4 s, or RPC timeout 2 s plus forwarding margin), as in the fault
/// suite.
const OP_TIMEOUT: Duration = Duration::from_secs(6);

/// After healing, the cluster must elect and catch every node up within this (the watchdog's
/// worst election is about 2.4 s; a restarted node replays its log in well under a second).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on the final consistent list's retries.
const FINAL_LIST_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on bootstrap: a one-voter cluster, N-1 learners and one voter change.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// Clients keep at most this many of their own tasks alive, so reads and deletes find targets
/// and the state stays small.
const LIVE_PER_CLIENT_MAX: usize = 8;

/// Wall-clock epoch of simulated time, for the timestamps commands carry (2026-01-01).
const EPOCH_MS: u64 = 1_767_225_600_000;

/// After converging, every live task must run exactly once (and nothing else run) within
/// this: a returning node fences within a second of catching up, a task placed on a node
/// that never starts it is placed again after the controller's 30 s scheduled deadline.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);

/// A snapshot (and a purge of the log behind it, keeping a fifth) every this many entries,
/// instead of the agent's 5,000: the workload commits tens of entries a second, so a node
/// crashed or cut off for a few seconds falls behind the purged log and must catch up by
/// snapshot install (`/raft/snapshot`), which the run counts.
const SNAPSHOT_LOGS: u64 = 100;

/// The image every simulated task runs; present in every node's engine.
const IMAGE: &str = "orion/busybox";

/// What each node announces it can hold: ample for the workload (at most 8 live tasks of
/// 16 MiB per client), so placement never runs out of room.
const NODE_CAPACITY: Resources = Resources {
    memory_bytes: 64 << 30,
    cpu_millis: 64_000,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    /// Simulated seconds of workload under faults.
    pub fault_s: u64,
    pub clients: usize,
    /// Keep the trace's lines (to diff two runs), not only its hash.
    pub keep_trace: bool,
}

impl Config {
    pub fn new(seed: u64, nodes: usize) -> Config {
        Config {
            seed,
            nodes,
            fault_s: 60,
            clients: 4,
            keep_trace: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub sim_s: f64,
    pub wall_s: f64,
    /// Acknowledged writes (creates and deletes answered 2xx).
    pub writes: usize,
    pub ops: usize,
    pub faults: usize,
    pub violations: Vec<String>,
    pub trace: u64,
    pub events: u64,
    pub messages: (u64, u64, u64),
    /// Snapshot chunks delivered (`/raft/snapshot`): how often a node caught up by snapshot.
    pub snapshots: u64,
    /// Gossip datagrams (delivered, lost).
    pub datagrams: (u64, u64),
    /// Containers running across every engine when the run ended.
    pub containers: usize,
    /// Times a node's gossip declared another node dead.
    pub downs: u64,
    pub lines: Vec<String>,
}

impl Report {
    /// What the run exercised, beside the summary line.
    pub fn details(&self) -> String {
        format!(
            "seed={} ops={} faults={} events={} rpc delivered/lost/duplicated={:?} snapshot_chunks={} gossip delivered/lost={:?} containers={} downs={}",
            self.seed,
            self.ops,
            self.faults,
            self.events,
            self.messages,
            self.snapshots,
            self.datagrams,
            self.containers,
            self.downs
        )
    }

    /// The one-line summary the command line prints last.
    pub fn line(&self) -> String {
        format!(
            "seed={} nodes={} sim_s={:.1} wall_s={:.2} writes={} violations={} trace={:016x}",
            self.seed,
            self.nodes,
            self.sim_s,
            self.wall_s,
            self.writes,
            self.violations.len(),
            self.trace
        )
    }
}

thread_local! {
    /// Panics on this thread since the hook was installed (the run is single-threaded).
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Runs one seed to the end and checks it. Never panics on a finding: a panic inside the run
/// (in any node's task or the harness) is itself a violation.
pub fn run(cfg: &Config) -> Report {
    install_panic_counter();
    let panics_before = PANICS.with(Cell::get);
    let wall = std::time::Instant::now();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    // tokio's own RNG (the branch order of an unbiased `select!`) is seedable only under
    // `--cfg tokio_unstable`; see ARCHITECTURE.md for what determinism holds without it.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&cfg.seed.to_le_bytes()));
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => return failed(cfg, format!("cannot build the runtime: {e}")),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let trace = Arc::new(Trace::new(cfg.keep_trace));
            let mut report = simulate(cfg, trace.clone()).await;
            report.sim_s = trace.now_us() as f64 / 1e6;
            report.trace = trace.hash();
            report.events = trace.events();
            report.lines = trace.lines();
            report
        })
    }));
    drop(rt);
    let mut report = match outcome {
        Ok(r) => r,
        Err(_) => failed(cfg, "the run panicked".to_string()),
    };
    let panics = PANICS.with(Cell::get) - panics_before;
    if panics > 0 {
        report
            .violations
            .push(format!("{panics} panic(s) during the run"));
    }
    report.wall_s = wall.elapsed().as_secs_f64();
    report
}

fn failed(cfg: &Config, why: String) -> Report {
    Report {
        seed: cfg.seed,
        nodes: cfg.nodes,
        sim_s: 0.0,
        wall_s: 0.0,
        writes: 0,
        ops: 0,
        faults: 0,
        violations: vec![why],
        trace: 0,
        events: 0,
        messages: (0, 0, 0),
        snapshots: 0,
        datagrams: (0, 0),
        containers: 0,
        downs: 0,
        lines: Vec::new(),
    }
}

/// The API's backend on a simulated node: the real router runs over it.
struct SimApi {
    raft: RaftNode,
    gossip: Gossip<NodeMeta>,
    ids: Arc<SeededIds>,
    /// Placements at creation proposed and not yet returned (as the agent's `Node::create`).
    placer: Arc<orion_controller_driver::CreatePlacer>,
}

/// As the agent answers (`WriteError::http_status` holds the rule).
fn write_error(e: WriteError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    ApiError::new(status, e.client_message())
}

impl Backend for SimApi {
    async fn write(&self, cmd: Command) -> Result<Response, ApiError> {
        // As the agent: on the leader, a new task is placed in the entry that creates it, by
        // the controller's placement code, counting the other creates in flight.
        let _booking;
        let cmd = match cmd {
            Command::CreateTask { task_id, spec, at } => {
                let (cmd, booking) = self.placer.command(
                    &self.raft,
                    &self.gossip,
                    &task_id,
                    &spec,
                    at,
                    self.ids.as_ref(),
                );
                _booking = booking;
                cmd
            }
            other => other,
        };
        self.raft.write(cmd).await.map_err(write_error)
    }

    async fn consistent_read(&self) -> Result<(), ApiError> {
        // As the agent: a read that cannot be confirmed is a plain 503, never ambiguous.
        self.raft
            .consistent_read()
            .await
            .map_err(|_| ApiError::unavailable("cannot confirm with a quorum of voters"))
    }

    fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        self.raft.read(f)
    }

    fn nodes(&self) -> Vec<NodeView> {
        Vec::new()
    }

    fn status(&self) -> StatusView {
        let s = self.raft.status();
        StatusView {
            id: s.node_id,
            role: s.role.as_str().to_string(),
            leader: s.leader,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters,
            learners: s.learners,
            membership_changing: s.membership_changing,
            version: "sim".to_string(),
            gossip_seed: self.gossip.stats().seed,
        }
    }

    fn new_id(&self) -> String {
        self.ids.next_id()
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS + virtual_ms()
    }

    async fn logs(
        &self,
        _task: Task,
        _follow: bool,
        _tail: Option<usize>,
    ) -> Result<Body, ApiError> {
        Err(ApiError::not_found("the simulator runs no containers"))
    }
}

thread_local! {
    /// The virtual instant the current run started (one run per thread at a time).
    static RUN_START: Cell<Option<Instant>> = const { Cell::new(None) };
}

fn virtual_ms() -> u64 {
    RUN_START
        .with(Cell::get)
        .map_or(0, |t0| t0.elapsed().as_millis() as u64)
}

/// One node slot: its disk and its container engine survive crashes (the engine not a power
/// cut); its Raft, gossip, router, executor and controller do not.
struct Slot {
    id: String,
    addr: String,
    gossip_addr: SocketAddr,
    disk: SimDisk,
    engine: FakeRuntime,
    raft: Option<RaftNode>,
    router: Option<axum::Router>,
    /// Stops the watcher of the current life.
    stop: Option<watch::Sender<bool>>,
    /// The executor and the controller of the current life, aborted by a crash.
    tasks: Vec<JoinHandle<()>>,
    life: u64,
}

/// The executor's view of its node, as the agent's `Node` gives it.
struct SimNode {
    raft: RaftNode,
}

impl orion_executor::Cluster for SimNode {
    fn share(&self, node: &str, with_containers: &[&str]) -> Vec<Arc<Task>> {
        self.raft.read(|s| s.executor_share(node, with_containers))
    }
    fn share_version(&self, node: &str) -> u64 {
        self.raft.read(|s| s.share_version(node))
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.raft.subscribe()
    }
    async fn report(&self, cmd: Command) -> Result<(), String> {
        self.raft
            .write(cmd)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn ready(&self) -> Result<(), String> {
        self.raft.consistent_read().await.map_err(|e| e.to_string())
    }
    fn leader_contact_age_ms(&self) -> Option<u64> {
        self.raft.status().last_leader_contact_ms
    }
}

struct Cluster {
    slots: Mutex<Vec<Slot>>,
    net: SimNet,
    trace: Arc<Trace>,
    ids: Arc<SeededIds>,
    /// Every node's clock: virtual time from the epoch (the clocks agree).
    clock: Arc<TokioClock>,
    violations: Mutex<Vec<String>>,
    rng: Mutex<Rng>,
    /// Times a node's gossip declared another node dead.
    downs: std::sync::atomic::AtomicU64,
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn violation(&self, v: String) {
        self.trace.record(format_args!("violation {v}"));
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(v);
    }

    fn draw(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_u64()
    }

    fn raft(&self, i: usize) -> Option<RaftNode> {
        self.lock().get(i).and_then(|s| s.raft.clone())
    }

    fn router(&self, i: usize) -> Option<axum::Router> {
        self.lock().get(i).and_then(|s| s.router.clone())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Starts node `i` on its disk (a fresh one, or what survived its last crash).
    async fn start(self: &Arc<Self>, i: usize) -> Result<(), String> {
        let (id, addr, gossip_addr, disk, engine, life) = {
            let mut slots = self.lock();
            let s = &mut slots[i];
            s.life += 1;
            (
                s.id.clone(),
                s.addr.clone(),
                s.gossip_addr,
                s.disk.clone(),
                s.engine.clone(),
                s.life,
            )
        };
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| format!("node address {addr}: {e}"))?;
        let mut cfg = RaftConfig::new(id.clone(), "/nonexistent", sock, sock, addr.clone());
        // openraft draws from min..max with a thread-local RNG: one value, drawn here.
        let timeout = 300 + self.draw() % 300;
        cfg.election_timeout_min_ms = timeout;
        cfg.election_timeout_max_ms = timeout + 1;
        cfg.snapshot_logs = SNAPSHOT_LOGS;
        let parts = SimParts {
            transport: self.net.transport(i, life),
            disk,
            seed: self.draw(),
        };
        let raft = RaftNode::start_sim(cfg, parts)
            .await
            .map_err(|e| format!("n{i} did not start: {e}"))?;
        self.net.up(i, life, &addr, raft.rpc_handler());

        // Gossip as the agent starts it: a generation that grows on every start, the node's
        // addresses and capacity as metadata, and every other node as a seed to join.
        let generation = self.clock.now_ms();
        let meta = NodeMeta {
            id: id.clone(),
            generation,
            api_addr: format!("{}:8080", sock.ip()),
            raft_addr: addr.clone(),
            gossip_addr: gossip_addr.to_string(),
            publish_ip: sock.ip().to_string(),
            capacity: NODE_CAPACITY,
            labels: BTreeMap::new(),
            version: "sim".to_string(),
        };
        let mut gcfg = GossipConfig::lan_fast(id.clone(), gossip_addr, gossip_addr, generation);
        gcfg.seed = self.draw();
        let socket = self.net.gossip_socket(i, life, gossip_addr);
        let gossip = orion_gossip::spawn_with_transport(gcfg, meta, socket)
            .map_err(|e| format!("n{i} gossip did not start: {e}"))?;
        let seeds: Vec<SocketAddr> = {
            let slots = self.lock();
            slots
                .iter()
                .filter(|s| s.gossip_addr != gossip_addr)
                .map(|s| s.gossip_addr)
                .collect()
        };
        if !seeds.is_empty() {
            gossip
                .join(&seeds)
                .await
                .map_err(|e| format!("n{i} cannot join gossip: {e}"))?;
        }

        let router = orion_api::router(Arc::new(SimApi {
            raft: raft.clone(),
            gossip: gossip.clone(),
            ids: self.ids.clone(),
            placer: orion_controller_driver::CreatePlacer::observing(&raft),
        }));
        let (stop_tx, stop_rx) = watch::channel(false);
        let clock: Arc<dyn Clock> = self.clock.clone();
        let executor = orion_executor::spawn(
            orion_executor::ExecutorConfig {
                node_id: id.clone(),
                publish_ip: sock.ip().to_string(),
                backoff: orion_types::BackoffConfig::default(),
                network: None,
            },
            engine,
            Arc::new(SimNode { raft: raft.clone() }),
            clock.clone(),
            stop_rx.clone(),
        );
        let driver = orion_controller_driver::Driver {
            raft: raft.clone(),
            gossip: gossip.clone(),
            clock,
            ids: self.ids.clone(),
            settings: orion_controller::Settings {
                node_id: id.clone(),
                // The agent's default (`--voter-grace-ms`).
                voter_grace_ms: 3_000,
                // Only the bootstrapping node's flags seed the cluster config.
                seed_config: (i == 0).then(ClusterConfig::default),
            },
        };
        let controller = tokio::spawn(orion_controller_driver::run(driver, stop_rx.clone()));
        tokio::spawn(watch_node(
            self.clone(),
            i,
            life,
            raft.clone(),
            gossip,
            stop_rx,
        ));
        let mut slots = self.lock();
        slots[i].raft = Some(raft);
        slots[i].router = Some(router);
        slots[i].stop = Some(stop_tx);
        slots[i].tasks = vec![executor, controller];
        drop(slots);
        self.trace.record(format_args!(
            "start n{i} life {life} election_timeout {timeout}"
        ));
        Ok(())
    }

    /// A crash of node `i`'s agent: unsynced writes are lost, nothing it does afterwards
    /// counts. With `power_cut` the machine goes down too: its engine's containers are gone.
    async fn crash(&self, i: usize, power_cut: bool) {
        let (raft, addr, disk, stop, tasks) = {
            let mut slots = self.lock();
            let s = &mut slots[i];
            (
                s.raft.take(),
                s.addr.clone(),
                s.disk.clone(),
                s.stop.take(),
                std::mem::take(&mut s.tasks),
            )
        };
        self.net.down(i, &addr, power_cut);
        disk.crash();
        for t in tasks {
            t.abort();
        }
        if let Some(stop) = stop {
            let _ = stop.send(true);
        }
        {
            let mut slots = self.lock();
            slots[i].router = None;
            if power_cut {
                slots[i].engine = new_engine(&self.clock);
            }
        }
        if let Some(raft) = raft {
            // Stops the old life's tasks; its stores now fail every write (the disk crashed).
            raft.shutdown().await;
        }
        self.trace
            .record(format_args!("crash n{i} power_cut {power_cut}"));
    }
}

/// A node's container engine: the task image present, containers that exit on their stop
/// signal after the fake's default.
fn new_engine(clock: &Arc<TokioClock>) -> FakeRuntime {
    let clock: Arc<dyn Clock> = clock.clone();
    let engine = FakeRuntime::new(clock);
    engine.add_image(IMAGE);
    engine
}

/// Checks that node `i`'s applied index never goes backwards within one life, and writes its
/// applied indexes and its gossip view's changes into the trace.
async fn watch_node(
    c: Arc<Cluster>,
    i: usize,
    life: u64,
    raft: RaftNode,
    gossip: Gossip<NodeMeta>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = raft.subscribe();
    drop(raft);
    let mut events = gossip.subscribe();
    drop(gossip);
    let mut last = *rx.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            ev = events.recv() => {
                match ev {
                    Ok(ev) => {
                        let (what, m) = match &ev {
                            MemberEvent::Up(m) => ("up", m),
                            MemberEvent::Suspect(m) => ("suspect", m),
                            MemberEvent::Down(m) => {
                                c.downs.fetch_add(1, Ordering::Relaxed);
                                ("down", m)
                            }
                            MemberEvent::Left(m) => ("left", m),
                        };
                        c.trace.record(format_args!(
                            "member n{i} sees {} {what} generation {}",
                            m.node_id, m.generation
                        ));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        c.trace.record(format_args!("member n{i} lagged {n}"));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                continue;
            }
            changed = rx.changed() => if changed.is_err() { return },
        }
        let now = *rx.borrow_and_update();
        if now < last {
            c.violation(format!(
                "n{i} life {life}: applied index went back from {last} to {now}"
            ));
        }
        c.trace.record(format_args!("applied n{i} {now}"));
        last = now;
    }
}

async fn simulate(cfg: &Config, trace: Arc<Trace>) -> Report {
    RUN_START.with(|s| s.set(Some(Instant::now())));
    let mut master = Rng::new(cfg.seed);
    let nodes = cfg.nodes.max(1);
    let clock = Arc::new(TokioClock::new(EPOCH_MS));
    let c = Arc::new(Cluster {
        slots: Mutex::new(
            (0..nodes)
                .map(|i| Slot {
                    id: format!("n{i}"),
                    addr: format!("10.0.0.{}:7000", i + 1),
                    gossip_addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946)),
                    disk: SimDisk::new(),
                    engine: new_engine(&clock),
                    raft: None,
                    router: None,
                    stop: None,
                    tasks: Vec::new(),
                    life: 0,
                })
                .collect(),
        ),
        net: SimNet::new(master.next_u64(), trace.clone()),
        trace: trace.clone(),
        ids: Arc::new(SeededIds::new(master.next_u64())),
        clock: clock.clone(),
        downs: Default::default(),
        violations: Mutex::new(Vec::new()),
        rng: Mutex::new(Rng::new(master.next_u64())),
    });
    trace.record(format_args!("seed {} nodes {nodes}", cfg.seed));
    let mut report = failed(cfg, String::new());
    report.violations.clear();
    if let Err(e) = bootstrap(&c).await {
        report.violations.push(e);
        return report;
    }

    // Faults and workload.
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = Vec::new();
    for k in 0..cfg.clients {
        clients.push(tokio::spawn(client(
            c.clone(),
            k,
            Rng::new(master.next_u64()),
            history.clone(),
            stop_rx.clone(),
        )));
    }
    let fault_phase = Duration::from_secs(cfg.fault_s);
    report.faults = nemesis(&c, Rng::new(master.next_u64()), fault_phase).await;

    // Heal: every link up, every crashed node back, clients finish.
    c.net.heal();
    for i in 0..nodes {
        if c.raft(i).is_none()
            && let Err(e) = c.start(i).await
        {
            c.violation(e);
        }
    }
    trace.record("heal");
    let _ = stop_tx.send(true);
    for h in clients {
        if h.await.is_err() {
            c.violation("a client task failed".to_string());
        }
    }

    if let Err(e) = converge(&c).await {
        c.violation(e);
    }
    match final_list(&c).await {
        Err(e) => c.violation(e),
        Ok((rows, call, ret)) => {
            let ops = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let a = checker::analyze(&ops, &rows, call, ret);
            for v in a.lost.iter().chain(&a.unexpected).chain(&a.violations) {
                c.violation(v.clone());
            }
            report.writes = ops
                .iter()
                .filter(|o| {
                    matches!(o.kind, OpKind::Create | OpKind::Delete) && o.outcome == Outcome::Ok
                })
                .count();
            report.ops = ops.len();
        }
    }
    match settle(&c).await {
        Ok(n) => report.containers = n,
        Err(e) => c.violation(e),
    }
    report.messages = c.net.counts();
    report.snapshots = c.net.delivered_to("/raft/snapshot");
    report.datagrams = c.net.datagrams();
    report.downs = c.downs.load(Ordering::Relaxed);
    report.violations = c
        .violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report
}

/// Node 0 bootstraps Raft alone; every node joins gossip; node 0's controller then adds the
/// others as learners, makes voters up to the cluster config's count and records every node
/// as up, exactly as in a real cluster. Done when all of that has happened.
async fn bootstrap(c: &Arc<Cluster>) -> Result<(), String> {
    for i in 0..c.len() {
        c.start(i).await?;
    }
    let n0 = c.raft(0).ok_or("n0 is not running")?;
    n0.bootstrap()
        .await
        .map_err(|e| format!("bootstrap: {e}"))?;
    let deadline = Instant::now() + BOOTSTRAP_TIMEOUT;
    // The controller keeps an odd count of voters up to the config's.
    let capped = ClusterConfig::default().voters.min(c.len()).max(1);
    let want_voters = capped - (1 - capped % 2);
    loop {
        let st = n0.status();
        let up = n0.read(|s| {
            s.nodes
                .values()
                .filter(|r| r.status == orion_state::NodeStatus::Up)
                .count()
        });
        let members = st.voters.len() + st.learners.len();
        if st.leader.as_deref() == Some("n0")
            && !st.membership_changing
            && members == c.len()
            && st.voters.len() == want_voters
            && up == c.len()
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the controller did not form the cluster within {} s: {} voters, {} learners, {up} nodes up",
                BOOTSTRAP_TIMEOUT.as_secs(),
                st.voters.len(),
                st.learners.len()
            ));
        }
        sleep(Duration::from_millis(50)).await;
    }
    c.trace.record("bootstrapped");
    Ok(())
}

/// The nemesis: faults one after another (sometimes bad weather on top), each held for a
/// while, then undone. Returns how many it inflicted.
async fn nemesis(c: &Arc<Cluster>, mut rng: Rng, phase: Duration) -> usize {
    let n = c.len() as u64;
    let end = Instant::now() + phase;
    let mut count = 0;
    loop {
        sleep(Duration::from_millis(rng.range(200, 3_000))).await;
        let hold = Duration::from_millis(rng.range(300, 6_000));
        if Instant::now() + hold > end {
            return count;
        }
        count += 1;
        if rng.chance(300) {
            let w = Weather {
                delay_min_ms: rng.range(0, 5),
                delay_max_ms: rng.range(5, 80),
                loss_per_mille: rng.range(0, 150),
                dup_per_mille: rng.range(0, 150),
            };
            c.trace.record(format_args!("fault weather {w:?}"));
            c.net.set_weather(w);
        }
        match rng.below(4) {
            0 => {
                let i = rng.below(n) as usize;
                c.crash(i, rng.chance(300)).await;
                sleep(hold).await;
                if let Err(e) = c.start(i).await {
                    c.violation(e);
                }
            }
            1 => {
                // A partition into two sides, each side cut off from the other both ways.
                let mut members: Vec<usize> = (0..n as usize).collect();
                rng.shuffle(&mut members);
                let split = rng.range(1, n.saturating_sub(1).max(1)) as usize;
                let (a, b) = members.split_at(split.min(members.len()));
                c.trace
                    .record(format_args!("fault partition {a:?} | {b:?}"));
                for x in a {
                    for y in b {
                        c.net.cut(*x, *y);
                        c.net.cut(*y, *x);
                    }
                }
                sleep(hold).await;
            }
            2 => {
                let from = rng.below(n) as usize;
                let to = (from + 1 + rng.below(n.saturating_sub(1).max(1)) as usize) % n as usize;
                c.trace.record(format_args!("fault one-way n{from}->n{to}"));
                c.net.cut(from, to);
                sleep(hold).await;
            }
            _ => {
                // Only the weather, or nothing: quiet time.
                c.trace.record("fault quiet");
                sleep(hold).await;
            }
        }
        c.net.heal();
        c.trace.record("fault healed");
    }
}

/// After healing: a leader, and every node applied up to its commit.
async fn converge(c: &Arc<Cluster>) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let statuses: Vec<_> = (0..c.len())
            .filter_map(|i| c.raft(i).map(|r| r.status()))
            .collect();
        let leader = statuses.iter().find(|s| s.role == orion_raft::Role::Leader);
        if let Some(l) = leader
            && statuses
                .iter()
                .all(|s| s.applied_index >= l.commit_index && s.leader == l.leader)
        {
            c.trace.record(format_args!(
                "converged leader {} applied {}",
                l.node_id, l.applied_index
            ));
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no convergence within {} s after healing: {:?}",
                CONVERGE_TIMEOUT.as_secs(),
                statuses
                    .iter()
                    .map(|s| format!(
                        "{} {} term {} applied {} commit {}",
                        s.node_id,
                        s.role.as_str(),
                        s.term,
                        s.applied_index,
                        s.commit_index
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// After converging: every live task (placed, not stopped) runs exactly once, in the engine
/// of the node the state names, under its current allocation, and is recorded as running;
/// no other container runs in any engine (a stopped, deleted or re-placed task's container
/// left behind would be a task running twice). Waits up to `SETTLE_TIMEOUT` for it, since the
/// executors fence and start, and the controller places, after healing. Returns how many
/// containers run.
async fn settle(c: &Arc<Cluster>) -> Result<usize, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let problems = container_problems(c);
        match problems {
            Ok(running) => {
                c.trace
                    .record(format_args!("settled {running} containers running"));
                return Ok(running);
            }
            Err(p) if Instant::now() > deadline => {
                return Err(format!(
                    "{} s after converging, containers do not match the state: {}",
                    SETTLE_TIMEOUT.as_secs(),
                    p.join("; ")
                ));
            }
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What is wrong with the containers now, against the leader's state; or how many run.
fn container_problems(c: &Arc<Cluster>) -> Result<usize, Vec<String>> {
    let leader = (0..c.len())
        .filter_map(|i| c.raft(i))
        .find(|r| r.is_leader());
    let Some(leader) = leader else {
        return Err(vec!["no leader".to_string()]);
    };
    // task id -> (node, allocation, running in the state) of every live task.
    let (live, waiting) = leader.read(|s| {
        let live: BTreeMap<String, (String, String, bool)> = s
            .tasks
            .values()
            .filter(|t| t.wants_container())
            .map(|t| {
                (
                    t.id.clone(),
                    (
                        t.node.clone().unwrap_or_default(),
                        t.allocation.clone().unwrap_or_default(),
                        t.state == orion_types::TaskState::Running,
                    ),
                )
            })
            .collect();
        let waiting: Vec<String> = s
            .tasks
            .values()
            .filter(|t| t.needs_placement())
            .map(|t| t.id.clone())
            .collect();
        (live, waiting)
    });
    let mut problems = Vec::new();
    for id in waiting {
        problems.push(format!("task {id} is live but not placed"));
    }
    // task id -> where its running containers are: (node, allocation).
    let mut running: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut count = 0;
    let engines: Vec<(String, FakeRuntime)> = c
        .lock()
        .iter()
        .map(|s| (s.id.clone(), s.engine.clone()))
        .collect();
    for (node, engine) in &engines {
        for ct in engine.containers() {
            if ct.state != ContainerState::Running {
                continue;
            }
            count += 1;
            let label = |k: &str| ct.labels.get(k).cloned().unwrap_or_default();
            running
                .entry(label(orion_executor::LABEL_TASK))
                .or_default()
                .push((node.clone(), label(orion_executor::LABEL_ALLOC)));
        }
    }
    for (task, (node, alloc, recorded)) in &live {
        match running.get(task).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!("task {task} on {node} runs nowhere")),
            Some([(n, a)]) if n == node && a == alloc => {
                if !recorded {
                    problems.push(format!(
                        "task {task} runs on {node} but the state does not say so"
                    ));
                }
            }
            Some(places) => problems.push(format!(
                "task {task} (allocation {alloc} on {node}) runs as {places:?}"
            )),
        }
    }
    for (task, places) in &running {
        if !live.contains_key(task) {
            problems.push(format!("task {task}, not live, still runs as {places:?}"));
        }
    }
    if problems.is_empty() {
        Ok(count)
    } else {
        Err(problems)
    }
}

/// A consistent list through a running node, retried until it answers.
async fn final_list(c: &Arc<Cluster>) -> Result<(Vec<TaskRow>, u64, u64), String> {
    let deadline = Instant::now() + FINAL_LIST_TIMEOUT;
    let mut last = String::new();
    let mut i = 0;
    while Instant::now() < deadline {
        i = (i + 1) % c.len();
        let call = c.trace.now_us();
        let answer = match c.router(i) {
            Some(router) => request(router, Method::GET, "/tasks?consistent=true", None).await,
            None => None,
        };
        match answer {
            Some((200, bytes)) => match serde_json::from_slice::<Vec<ViewRow>>(&bytes) {
                Ok(rows) => {
                    let ret = c.trace.now_us();
                    let rows = rows.into_iter().filter_map(ViewRow::task_row).collect();
                    return Ok((rows, call, ret));
                }
                Err(e) => last = format!("200 {e}: {}", String::from_utf8_lossy(&bytes)),
            },
            Some((status, bytes)) => {
                last = format!("{status} {}", String::from_utf8_lossy(&bytes));
            }
            None => last = "no answer".to_string(),
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the final consistent list never answered: {last}"))
}

/// The fields of the API's task view that the clients and the checker read. Decoded straight
/// from the answer's bytes (the other fields are skipped, not built): decoding every answer
/// into a `serde_json::Value` was a seventh of a run's instructions, as lists grow with the
/// run.
#[derive(serde::Deserialize)]
struct ViewRow {
    id: Option<String>,
    name: Option<String>,
    state: Option<String>,
    node: Option<String>,
    allocation: Option<String>,
}

impl ViewRow {
    /// As `TaskRow::from_json`: a row without an id or a state is skipped.
    fn task_row(self) -> Option<TaskRow> {
        Some(TaskRow {
            id: self.id?,
            name: self.name.unwrap_or_default(),
            state: self.state?,
            node: self.node,
            allocation: self.allocation,
        })
    }
}

/// One call to the real API router of a node: its status and body; `None` when it gave no
/// answer in time.
async fn request(
    router: axum::Router,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> Option<(u16, axum::body::Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .ok()?;
    let resp = tokio::time::timeout(OP_TIMEOUT, router.oneshot(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, bytes))
}

/// The task a client creates: tiny, valid, named for the checker's registers.
fn task_body(name: &str) -> String {
    format!(
        r#"{{"image":"orion/busybox","name":"{name}","command":["sleep","3600"],"memory":"16m"}}"#
    )
}

/// One client: random operations through random nodes until told to stop.
async fn client(
    c: Arc<Cluster>,
    k: usize,
    mut rng: Rng,
    history: Arc<Mutex<Vec<Op>>>,
    stop: watch::Receiver<bool>,
) {
    // name -> (id if known, deleted)
    let mut mine: BTreeMap<String, (Option<String>, bool)> = BTreeMap::new();
    let mut made = 0usize;
    let n = c.len() as u64;
    while !*stop.borrow() {
        sleep(Duration::from_millis(rng.range(10, 300))).await;
        let node = rng.below(n) as usize;
        let live: Vec<(String, String)> = mine
            .iter()
            .filter(|(_, (id, deleted))| id.is_some() && !deleted)
            .map(|(name, (id, _))| (name.clone(), id.clone().unwrap_or_default()))
            .collect();
        let roll = rng.below(10);
        let kind = if live.len() < LIVE_PER_CLIENT_MAX && roll < 4 || live.is_empty() && roll < 8 {
            OpKind::Create
        } else if roll < 6 {
            OpKind::Delete
        } else if roll < 9 {
            OpKind::Read
        } else {
            OpKind::List
        };
        let (name, id) = match kind {
            OpKind::Create => {
                made += 1;
                (format!("c{k}-t{made}"), None)
            }
            OpKind::List => (String::new(), None),
            _ => {
                if live.is_empty() {
                    continue;
                }
                let (name, id) = live[rng.below(live.len() as u64) as usize].clone();
                (name, Some(id))
            }
        };
        let (method, uri, body) = match kind {
            OpKind::Create => (Method::POST, "/tasks".to_string(), Some(task_body(&name))),
            OpKind::Delete => (
                Method::DELETE,
                format!("/tasks/{}", id.clone().unwrap_or_default()),
                None,
            ),
            OpKind::Read => (
                Method::GET,
                format!("/tasks/{}?consistent=true", id.clone().unwrap_or_default()),
                None,
            ),
            OpKind::List => (Method::GET, "/tasks?consistent=true".to_string(), None),
        };
        let call_us = c.trace.now_us();
        let answer = match c.router(node) {
            None => Err("refused: node down"),
            Some(router) => request(router, method, &uri, body).await.ok_or("no answer"),
        };
        let mut o = Op {
            client: k,
            kind,
            name: name.clone(),
            node,
            call_us,
            return_us: c.trace.now_us(),
            outcome: Outcome::Fail,
            status: None,
            observed: None,
            seen: Vec::new(),
            id: id.clone(),
            error: None,
        };
        match answer {
            Err(e) => {
                o.error = Some(e.to_string());
                // A refused connection had no effect; a call without an answer may have.
                if e == "no answer" && matches!(kind, OpKind::Create | OpKind::Delete) {
                    o.outcome = Outcome::Unknown;
                }
            }
            Ok((status, bytes)) => {
                o.status = Some(status);
                let ok = matches!((kind, status), (OpKind::Create, 201) | (_, 200))
                    || (kind == OpKind::Read && status == 404);
                o.outcome = if ok {
                    Outcome::Ok
                } else if matches!(kind, OpKind::Create | OpKind::Delete) {
                    // 503 is "surely not applied" (the checker holds it to that), 504 unknown.
                    crate::history::write_outcome(status)
                } else {
                    Outcome::Fail
                };
                if ok {
                    match kind {
                        OpKind::Read if status == 404 => o.observed = Some("absent".to_string()),
                        OpKind::List => {
                            let rows: Vec<ViewRow> =
                                serde_json::from_slice(&bytes).unwrap_or_default();
                            for t in rows {
                                let (Some(tn), Some(tid), Some(st)) = (t.name, t.id, t.state)
                                else {
                                    continue;
                                };
                                if let Some((known @ None, _)) = mine.get_mut(&tn) {
                                    *known = Some(tid);
                                }
                                o.seen.push((tn, st));
                            }
                        }
                        _ => {
                            if let Ok(t) = serde_json::from_slice::<ViewRow>(&bytes) {
                                o.observed = t.state;
                                o.id = t.id.or(o.id);
                            }
                        }
                    }
                } else {
                    o.error = Some(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
        match kind {
            OpKind::Create => {
                mine.insert(
                    name.clone(),
                    (o.id.clone().filter(|_| o.outcome == Outcome::Ok), false),
                );
            }
            OpKind::Delete if o.outcome != Outcome::Fail || o.status == Some(404) => {
                if let Some(entry) = mine.get_mut(&name) {
                    entry.1 = true;
                }
            }
            _ => {}
        }
        c.trace.record(format_args!(
            "op c{k} {:?} {name} via n{node} -> {} {:?}",
            kind,
            o.outcome.name(),
            o.status
        ));
        history.lock().unwrap_or_else(|p| p.into_inner()).push(o);
    }
}
