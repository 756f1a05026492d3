//! The vocabulary every other Orion crate speaks: ids, resources, node metadata, the validated
//! `TaskSpec`, and the `Command` enum that is the only way to change cluster state.
//!
//! No IO and no async here. Wire formats that users see (`api` module) are kept apart from the
//! internal types; a user's request is parsed, then converted into a `TaskSpec` and checked
//! by `TaskSpec::validate`, which the inter-node forward endpoint runs too
//! (`Command::validate`).

pub mod api;
pub mod command;
pub mod config;
pub mod constraint;
pub mod endpoint;
pub mod env;
pub mod service;
pub mod spec;
pub mod task;
pub mod token;

pub use command::{AllocStatus, BackoffConfig, Command, NewServiceTask, Placement, Response};
pub use config::{ClusterConfig, PortRange, VIP_RANGE_DEFAULT, VipRange};
pub use constraint::{Constraint, ConstraintOp, NodeAttr};
pub use service::{
    Deployment, DeploymentState, Health, HealthCheck, Service, ServiceMode, ServiceSpec,
};
pub use spec::{
    ContainerOptions, FileMount, Mount, MountKind, PortSpec, Protocol, RestartPolicy, Strategy,
    TaskSpec,
};
pub use task::Task;
pub use token::{ApiToken, ClusterCa, GossipKeyRecord, Role};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's id as the operator named it (`--id`). Unique among live members.
pub type NodeId = String;
/// A task's id: 32 lowercase hex digits, chosen by the node that accepted the request.
pub type TaskId = String;
/// An allocation id: names one placement of a task on a node. Changes on every re-placement,
/// and is the fence: a container may run only under its node's current allocation.
pub type AllocId = String;

/// Milliseconds since the Unix epoch. Commands carry the proposer's clock so that applying the
/// log is deterministic.
pub type UnixMillis = u64;

/// Memory and CPU, as reserved by a task or offered by a node. CPU is kept in millicores so
/// that scheduling arithmetic is exact integer arithmetic.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
}

impl Resources {
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
        }
    }
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
        }
    }
}

/// What a node tells the cluster about itself, through gossip and then through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub id: NodeId,
    /// Grows on every start of the process: a returning node is never its old self.
    pub generation: u64,
    /// `ip:port` of the HTTP API.
    pub api_addr: String,
    /// `ip:port` of the inter-node RPC (Raft and forwarding).
    pub raft_addr: String,
    /// `ip:port` of gossip.
    pub gossip_addr: String,
    /// Host address that published container ports bind to.
    pub publish_ip: String,
    /// Schedulable capacity: detected from the host and cgroup, minus the reserve.
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    pub version: String,
}

#[cfg(feature = "fixtures")]
impl NodeMeta {
    /// A node for tests and simulations (feature `fixtures`): addresses `<id>:8000` (API),
    /// `<id>:7000` (Raft), `<id>:6000` (gossip), 1 GiB and 2 cores, no labels.
    pub fn fixture(id: &str, generation: u64) -> NodeMeta {
        NodeMeta {
            id: id.to_string(),
            generation,
            api_addr: format!("{id}:8000"),
            raft_addr: format!("{id}:7000"),
            gossip_addr: format!("{id}:6000"),
            publish_ip: "127.0.0.1".into(),
            capacity: Resources {
                memory_bytes: 1 << 30,
                cpu_millis: 2000,
            },
            labels: BTreeMap::new(),
            version: "test".into(),
        }
    }
}

/// A state change as recorded in a task's recent history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub at: UnixMillis,
    pub state: TaskState,
    pub message: String,
}

/// The life of a task, as users see it (API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum TaskState {
    /// Accepted, waiting for a node.
    Pending,
    /// Placed on a node; the node has not yet started it.
    Scheduled,
    /// The node is creating and starting the container.
    Starting,
    Running,
    /// Exited with code 0.
    Completed,
    /// Exited with a non-zero code, or could not be started.
    Failed,
    /// Deleted by a user.
    Stopped,
    /// Its node died and no other node can take it yet.
    Lost,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Stopped => "stopped",
            TaskState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "pending" => TaskState::Pending,
            "scheduled" => TaskState::Scheduled,
            "starting" => TaskState::Starting,
            "running" => TaskState::Running,
            "completed" => TaskState::Completed,
            "failed" => TaskState::Failed,
            "stopped" => TaskState::Stopped,
            "lost" => TaskState::Lost,
            _ => return None,
        })
    }
}

/// A port as bound on the host, reported by the node that runs the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub struct PortMapping {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: String,
    pub host_port: u16,
}

/// Limits that bound what users may ask for. Each says where its value comes from.
pub mod limits {
    /// Docker refuses memory limits under 6 MiB.
    pub const TASK_MEMORY_MIN_BYTES: u64 = 6 * 1024 * 1024;
    /// No single machine we target has more than 16 TiB; larger is a typo.
    pub const TASK_MEMORY_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024 * 1024;
    /// Docker's NanoCPUs granularity makes 0.01 core the smallest useful share.
    pub const TASK_CPU_MIN_MILLIS: u64 = 10;
    /// 1024 cores: beyond any machine we target.
    pub const TASK_CPU_MAX_MILLIS: u64 = 1024 * 1000;
    /// Bounds on user strings, so one request cannot bloat every node's state.
    pub const IMAGE_BYTES_MAX: usize = 512;
    pub const NAME_BYTES_MAX: usize = 128;
    pub const COMMAND_ARGS_MAX: usize = 256;
    pub const ARG_BYTES_MAX: usize = 8 * 1024;
    pub const MAP_ENTRIES_MAX: usize = 256;
    pub const KEY_BYTES_MAX: usize = 256;
    pub const VALUE_BYTES_MAX: usize = 8 * 1024;
    pub const PORTS_MAX: usize = 64;
    pub const CONSTRAINTS_MAX: usize = 32;
    /// `stopAfterDisconnect` bounds: below a second it would fire on an ordinary missed
    /// heartbeat (the executor calls a second without leader contact a gap); above a week it
    /// is indistinguishable from "never", which is leaving the field out.
    pub const STOP_AFTER_DISCONNECT_MIN_MS: u64 = 1_000;
    pub const STOP_AFTER_DISCONNECT_MAX_MS: u64 = 7 * 24 * 3_600 * 1_000;
    /// A task keeps its last few state changes; older ones are dropped (API.md: "the last few").
    pub const TASK_EVENTS_MAX: usize = 10;
    /// Replicas of one service, and the parallelism of its updates: a documented limit (API.md
    /// "Services") so that a typo like 100000 is refused instead of flooding the scheduler.
    pub const SERVICE_REPLICAS_MAX: u32 = 1000;
    /// Health intervals, update delays, monitor windows and grace periods: more than a day is
    /// a typo.
    pub const SERVICE_DURATION_MAX_MS: u64 = 24 * 3600 * 1000;
    /// A deployment keeps its last few events, like a task.
    pub const DEPLOYMENT_EVENTS_MAX: usize = 20;
    /// Stopped tasks of a service kept per slot (or node) for history, as Docker's
    /// task-history-limit of 5; older ones are forgotten so the state stays bounded.
    pub const SERVICE_TASK_HISTORY_MAX: usize = 5;
    /// A health probe's output kept in the state (Docker keeps 4 KiB per probe).
    pub const HEALTH_OUTPUT_BYTES_MAX: usize = 4096;
    /// Ids of tasks, nodes, allocations and containers: a node id travels in gossip with a
    /// one-byte length, and Orion's own ids are 32 (task, allocation) or 64 (container) hex
    /// digits.
    pub const ID_BYTES_MAX: usize = 255;
    /// Reasons and other sentences in commands. A scheduler's reason quotes the task's failing
    /// selectors and constraints, whose text a valid request bounds by `BODY_BYTES_MAX`; twice
    /// that always fits, so a reason the controller wrote is never refused.
    pub const TEXT_BYTES_MAX: usize = 2 * BODY_BYTES_MAX;
    /// Placements, reasons and requeued ids in one command: ten times the controller's
    /// batch of 1,000, so a peer cannot make one entry arbitrarily large.
    pub const COMMAND_BATCH_MAX: usize = 10_000;
    /// Request bodies above this are refused before parsing: a full spec at the limits above
    /// stays well under it.
    pub const BODY_BYTES_MAX: usize = 1024 * 1024;
    /// Mounts of one task: more than Docker users put on one container in practice.
    pub const MOUNTS_MAX: usize = 32;
    /// Files (secrets, configs) of one task. Their content is replicated to every node's
    /// state, so a task holds at most `FILES_MAX * FILE_BYTES_MAX` = 512 KiB of them, under
    /// `BODY_BYTES_MAX`.
    pub const FILES_MAX: usize = 16;
    /// One secret or config: Docker's own limit is 500 KB; 32 KiB holds any key, certificate
    /// chain or small config file, and keeps the replicated state small.
    pub const FILE_BYTES_MAX: usize = 32 * 1024;
    /// Paths in the container or on the host, users, hostnames, signals.
    pub const PATH_BYTES_MAX: usize = 1024;
}
