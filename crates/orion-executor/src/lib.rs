//! The executor: converges this node's containers to the allocations that the replicated
//! state gives this node, and reports what happened back through Raft.
//!
//! It is split in two. `plan` (pure) decides from the desired tasks, the actual containers,
//! the time and the executor's situation what to do; the driver (`run`/`spawn`) gathers those
//! inputs and executes the actions against a `ContainerRuntime` (Docker, or `FakeRuntime` in
//! tests and the simulator). It is level-triggered: every pass compares the whole desired set
//! with the whole actual set, so a missed event or a failed report is repaired by the next
//! pass. Passes run on state changes, on container events, on a timer, when a job ends and
//! when a restart falls due.
//!
//! Architecture invariants:
//! - It touches only containers labelled `orion.node=<this node>`.
//! - A container may run only under its node's current allocation. Any container whose
//!   `orion.alloc` label is not a current allocation of this node is stopped (short grace) and
//!   removed: the fence against duplicates after a partition or a restart.
//! - Nothing starts unless the local replica is known to have caught up with the leader since
//!   the last gap in contact (`Cluster::ready`), so a node back from the dead, a stall or a
//!   partition fences before it starts anything.
//! - Independent actions run concurrently within bounds; a slow stop never delays a start.
//! - It never decides placement; it only reports `AllocStatus` and health transitions.
//! - A deliberate stop (delete, scale-down, update, drain seen while fresh) waits the task's
//!   `stopGracePeriod`; a fence keeps the short `FENCE_GRACE_MS`.

mod driver;
pub mod fake;
pub mod health;
pub mod plan;
mod probe;
pub mod runtime;

#[cfg(test)]
mod tests;

pub use driver::{
    CONTACT_GAP_MS, PROBES_IN_FLIGHT_MAX, REMOVES_IN_FLIGHT_MAX, STARTS_IN_FLIGHT_MAX, run,
};
pub use fake::{Call, FakeRuntime, Fault, Op, TokioClock};
pub use plan::{
    ExecAction, InFlight, Plan, PlanInput, ProbeView, ReadyView, RemoveReason, WatchChange, plan,
};
pub use runtime::{ContainerRuntime, EventStream, LogStream};

use orion_docker::{ContainerSpec, PortRequest};
use orion_types::env::Clock;
use orion_types::{BackoffConfig, Command, Task};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

pub const LABEL_NODE: &str = "orion.node";
pub const LABEL_TASK: &str = "orion.task";
pub const LABEL_ALLOC: &str = "orion.alloc";

/// Grace of a fenced container's stop (not current, duplicate): short, because the task runs
/// (or is about to run) elsewhere and a slow stop must not hold the node's resources; one
/// second still lets a well-behaved process flush.
pub const FENCE_GRACE_MS: u64 = 1_000;
/// Grace of a `stopAfterDisconnect` stop of a task without its own `stopGracePeriod`: the
/// engine's SIGTERM-to-SIGKILL wait.
pub const STOP_GRACE_MS: u64 = 2_000;

/// What the executor needs from the node it runs in.
use orion_types::AllocId;

pub trait Cluster: Send + Sync + 'static {
    /// The executor's share of `node` in the local replica, in no particular order and
    /// possibly with repeats (`ClusterState::executor_share`: the tasks placed there that hold
    /// its resources, and those of `with_containers`, the task ids its containers carry, still
    /// placed there). Shared, not copied, and taken under the replica's read lock only to
    /// follow the index's references: the pass orders it (`ClusterState::order_share`) and
    /// plans without holding the lock, so applies never wait for a sort or a plan.
    fn share(&self, node: &str, with_containers: &[&str]) -> Vec<Arc<Task>>;
    /// A value that changes whenever what `share(node, ..)` returns may have changed
    /// (`ClusterState::share_version`, O(1)): it is read after every applied entry, and a
    /// pass runs only when it moved.
    fn share_version(&self, node: &str) -> u64;
    /// Bumps whenever the local replica applies something.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Proposes a report through Raft.
    fn report(&self, cmd: Command) -> impl Future<Output = Result<(), String>> + Send;
    /// Resolves once the local replica has caught up with the leader's commit index.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Milliseconds since this node last heard from a leader it accepted (on the leader:
    /// since a quorum last acknowledged it); `None` if unknown.
    fn leader_contact_age_ms(&self) -> Option<u64>;
    /// The allocations on this node whose health check this executor finds failing now
    /// (sorted), told whenever the set changes: the agent announces it by gossip, so an
    /// endpoint leaves every node's view without waiting for the log.
    fn local_unhealthy(&self, _allocs: Vec<AllocId>) {}
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub node_id: String,
    /// Host address that published ports bind to.
    pub publish_ip: String,
    /// Carried in reports while the back-off still travels with them (see `Command::Report`).
    pub backoff: BackoffConfig,
    /// The node's own container network and the DNS server on it; `None`: the engine's
    /// default bridge and DNS.
    pub network: Option<ContainerNetwork>,
}

/// Where this node's containers are attached, and the DNS they use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNetwork {
    /// Docker network name.
    pub name: String,
    /// The node's DNS server address on that network (its gateway).
    pub dns: String,
}

/// The DNS search domains of a task's container: `<stack>.orion` for a service in a stack,
/// then `orion`, so `web` and `db` resolve by short name (API.md).
pub fn dns_search(task: &Task) -> Vec<String> {
    let stack = task
        .service
        .as_deref()
        .and_then(|id| id.split_once('.'))
        .map(|(_, stack)| format!("{stack}.orion"));
    stack.into_iter().chain(["orion".to_string()]).collect()
}

/// Starts the executor loop on the tokio runtime; it ends when `shutdown` turns true.
pub fn spawn<R: ContainerRuntime, C: Cluster>(
    cfg: ExecutorConfig,
    runtime: R,
    cluster: Arc<C>,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(cfg, runtime, cluster, clock, shutdown))
}

/// The Docker container for a task's current allocation.
pub fn container_spec(cfg: &ExecutorConfig, task: &Task) -> ContainerSpec {
    let alloc = task.allocation.clone().unwrap_or_default();
    let mut labels = task.spec.labels.clone();
    labels.insert(LABEL_NODE.to_string(), cfg.node_id.clone());
    labels.insert(LABEL_TASK.to_string(), task.id.clone());
    labels.insert(LABEL_ALLOC.to_string(), alloc.clone());
    let ports = task
        .spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| PortRequest {
            container_port: p.container_port,
            protocol: p.protocol.as_str().to_string(),
            host_ip: cfg.publish_ip.clone(),
            host_port: task.host_ports.get(i).copied().or(p.host_port).unwrap_or(0),
        })
        .collect();
    ContainerSpec {
        name: format!(
            "orion-{}-{}-{}",
            sanitize(&cfg.node_id),
            short(&task.id),
            short(&alloc)
        ),
        image: task.spec.image.clone(),
        command: task.spec.command.clone(),
        env: task.spec.env.clone(),
        labels,
        memory_bytes: (task.spec.memory_bytes > 0).then_some(task.spec.memory_bytes),
        nano_cpus: (task.spec.cpu_millis > 0).then_some(task.spec.cpu_millis * 1_000_000),
        ports,
        network: cfg.network.as_ref().map(|n| n.name.clone()),
        dns: cfg.network.iter().map(|n| n.dns.clone()).collect(),
        dns_search: if cfg.network.is_some() {
            dns_search(task)
        } else {
            Vec::new()
        },
        setup: container_setup(&task.spec.container),
    }
}

/// The container settings of a service's task, as the runtime takes them.
fn container_setup(c: &orion_types::ContainerOptions) -> orion_docker::ContainerSetup {
    orion_docker::ContainerSetup {
        entrypoint: c.entrypoint.clone(),
        user: c.user.clone(),
        working_dir: c.working_dir.clone(),
        hostname: c.hostname.clone(),
        stop_signal: c.stop_signal.clone(),
        mounts: c
            .mounts
            .iter()
            .map(|m| orion_docker::MountRequest {
                bind: m.kind == orion_types::MountKind::Bind,
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect(),
        files: c
            .files
            .iter()
            .map(|f| orion_docker::FileRequest {
                target: f.target.clone(),
                content: f.content.clone().into_bytes(),
                mode: f.mode,
            })
            .collect(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
