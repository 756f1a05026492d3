//! `Command`: every change to cluster state is one of these, proposed through Raft and applied
//! in log order by `orion-state`. Commands carry everything apply needs (ids, the proposer's
//! clock), so applying the log is deterministic on every node.

use crate::{
    AllocId, ClusterConfig, DeploymentState, Health, NodeId, NodeMeta, PortMapping, ServiceSpec,
    TaskId, TaskSpec, UnixMillis,
};
use serde::{Deserialize, Serialize};

/// One placement decided by the leader's scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub task_id: TaskId,
    pub node: NodeId,
    pub allocation: AllocId,
    /// Host port chosen for each published port, in the order of `TaskSpec::ports`.
    pub host_ports: Vec<u16>,
}

/// What a node's executor reports about one of its allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocStatus {
    /// Pulling the image, creating or starting the container.
    Starting,
    Running {
        container_id: String,
        ports: Vec<PortMapping>,
    },
    /// The container exited.
    Exited {
        container_id: String,
        exit_code: i64,
        oom_killed: bool,
    },
    /// The container could not be started (image missing, engine refused): terminal.
    Failed { reason: String },
}

/// Restart back-off: `base_ms * 2^n`, capped at `max_ms`; `n` goes back to zero after the
/// container ran for `reset_after_ms`. Part of the replicated `ClusterConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffConfig {
    pub base_ms: u64,
    pub max_ms: u64,
    pub reset_after_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        // Docker restarts after 100 ms doubling; Nomad waits 15 s. A second is quick enough
        // for a crash loop to recover and slow enough not to hammer the engine.
        BackoffConfig {
            base_ms: 1_000,
            max_ms: 60_000,
            reset_after_ms: 60_000,
        }
    }
}

impl BackoffConfig {
    /// Delay before restart number `consecutive` (0-based).
    pub fn delay_ms(&self, consecutive: u32) -> u64 {
        let factor = 1u64.checked_shl(consecutive.min(32)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Accept a new task; it waits as `pending` until placed.
    CreateTask {
        task_id: TaskId,
        spec: Box<TaskSpec>,
        at: UnixMillis,
    },
    /// Accept a new task already placed by the leader's scheduler when it proposed the
    /// command: one Raft entry instead of two. The placement stands only if it still fits when
    /// applied; otherwise the task waits as `pending` like any other.
    CreatePlacedTask {
        task_id: TaskId,
        spec: Box<TaskSpec>,
        placement: Placement,
        at: UnixMillis,
    },
    /// A user deleted the task: it ends `stopped` and its container is removed.
    DeleteTask { task_id: TaskId, at: UnixMillis },
    /// A batch of placements and of reasons why other tasks could not be placed.
    Place {
        placements: Vec<Placement>,
        unplaced: Vec<(TaskId, String)>,
        at: UnixMillis,
    },
    /// A node's executor reports on one of its allocations. Ignored unless the allocation is
    /// still the task's current one on that node.
    Report {
        node: NodeId,
        task_id: TaskId,
        allocation: AllocId,
        status: AllocStatus,
        /// The reporter's back-off, from before the cluster config held it. Kept so that old
        /// log entries decode; `apply` ignores it and uses the state's `ClusterConfig`.
        #[serde(default)]
        backoff: BackoffConfig,
        at: UnixMillis,
    },
    /// A node joined or came back (a newer generation), or its metadata changed.
    UpsertNode { meta: Box<NodeMeta>, at: UnixMillis },
    /// Gossip declared the node dead: its tasks must be placed again.
    NodeDown {
        node: NodeId,
        generation: u64,
        reason: String,
        at: UnixMillis,
    },
    /// The node is shutting down on purpose: like `NodeDown`, and it gives up its Raft seat.
    NodeLeave {
        node: NodeId,
        generation: u64,
        at: UnixMillis,
    },
    /// Drain (no new placements; its tasks move elsewhere) or undrain a node.
    SetDrain {
        node: NodeId,
        drain: bool,
        at: UnixMillis,
    },
    /// Requeue tasks stuck in `scheduled`/`starting` past their deadline.
    Requeue {
        task_ids: Vec<TaskId>,
        reason: String,
        at: UnixMillis,
    },
    /// Replace the cluster-wide settings (`PUT /cluster/config`). With `if_unset`, only if
    /// the state holds none yet: how the bootstrapping node seeds its flags, without ever
    /// overwriting an operator's change.
    SetClusterConfig {
        config: ClusterConfig,
        #[serde(default)]
        if_unset: bool,
        at: UnixMillis,
    },
    /// A user created a service (version 1). Refused (`Response::Conflict`) if the id exists.
    CreateService {
        spec: Box<ServiceSpec>,
        at: UnixMillis,
    },
    /// A user put a new spec (`PUT`). The same spec changes nothing; a changed one is a new
    /// version, and a rolling update (deployment `deployment_id`) if its tasks differ.
    UpdateService {
        id: String,
        spec: Box<ServiceSpec>,
        deployment_id: String,
        at: UnixMillis,
    },
    /// A user changed the count of a replicated service.
    ScaleService {
        id: String,
        replicas: u32,
        at: UnixMillis,
    },
    /// A user deleted the service: its tasks are stopped, then it is removed.
    DeleteService { id: String, at: UnixMillis },
    /// Back to the previous spec, as a new version: on demand (`reason` `None`) or because the
    /// deployment failed (the reconciler says why). An automatic rollback of deployment
    /// `deployment_id` keeps its record; an on-demand one starts a deployment of that id.
    RollbackService {
        id: String,
        deployment_id: String,
        reason: Option<String>,
        at: UnixMillis,
    },
    /// The reconciler creates tasks of services; they wait as `pending` for the scheduler.
    CreateServiceTasks {
        tasks: Vec<NewServiceTask>,
        at: UnixMillis,
    },
    /// The reconciler stops tasks (scale-down, replaced by an update, node left a global
    /// service's set): like a delete, with a reason.
    StopTasks {
        task_ids: Vec<TaskId>,
        reason: String,
        at: UnixMillis,
    },
    /// The reconciler forgets stopped tasks beyond the history limit.
    ForgetTasks {
        task_ids: Vec<TaskId>,
        at: UnixMillis,
    },
    /// The reconciler records a deployment's progress or outcome. Ignored unless
    /// `deployment_id` is still the service's latest.
    DeploymentProgress {
        id: String,
        deployment_id: String,
        state: DeploymentState,
        updated: u32,
        failed: u32,
        message: String,
        at: UnixMillis,
    },
    /// A node's executor saw a task's health change (only transitions are proposed). Fenced
    /// by the allocation like `Report`.
    ReportHealth {
        node: NodeId,
        task_id: TaskId,
        allocation: AllocId,
        health: Health,
        output: Option<String>,
        at: UnixMillis,
    },
}

/// One task the services reconciler asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewServiceTask {
    pub task_id: TaskId,
    pub service: String,
    pub version: u64,
    /// Replicated mode.
    pub slot: Option<u32>,
    pub spec: Box<TaskSpec>,
}

impl Command {
    /// The proposer's clock when it proposed the command.
    pub fn at(&self) -> UnixMillis {
        match self {
            Command::CreateTask { at, .. }
            | Command::CreatePlacedTask { at, .. }
            | Command::DeleteTask { at, .. }
            | Command::Place { at, .. }
            | Command::Report { at, .. }
            | Command::UpsertNode { at, .. }
            | Command::NodeDown { at, .. }
            | Command::NodeLeave { at, .. }
            | Command::SetDrain { at, .. }
            | Command::Requeue { at, .. }
            | Command::SetClusterConfig { at, .. }
            | Command::CreateService { at, .. }
            | Command::UpdateService { at, .. }
            | Command::ScaleService { at, .. }
            | Command::DeleteService { at, .. }
            | Command::RollbackService { at, .. }
            | Command::CreateServiceTasks { at, .. }
            | Command::StopTasks { at, .. }
            | Command::ForgetTasks { at, .. }
            | Command::DeploymentProgress { at, .. }
            | Command::ReportHealth { at, .. } => *at,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateTask { .. } => "create-task",
            Command::CreatePlacedTask { .. } => "create-placed-task",
            Command::DeleteTask { .. } => "delete-task",
            Command::Place { .. } => "place",
            Command::Report { .. } => "report",
            Command::UpsertNode { .. } => "upsert-node",
            Command::NodeDown { .. } => "node-down",
            Command::NodeLeave { .. } => "node-leave",
            Command::SetDrain { .. } => "set-drain",
            Command::Requeue { .. } => "requeue",
            Command::SetClusterConfig { .. } => "set-cluster-config",
            Command::CreateService { .. } => "create-service",
            Command::UpdateService { .. } => "update-service",
            Command::ScaleService { .. } => "scale-service",
            Command::DeleteService { .. } => "delete-service",
            Command::RollbackService { .. } => "rollback-service",
            Command::CreateServiceTasks { .. } => "create-service-tasks",
            Command::StopTasks { .. } => "stop-tasks",
            Command::ForgetTasks { .. } => "forget-tasks",
            Command::DeploymentProgress { .. } => "deployment-progress",
            Command::ReportHealth { .. } => "report-health",
        }
    }
}

/// What applying a command gave. Carried back to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    #[default]
    Ok,
    /// The task as it is after the command (create, delete).
    Task(Box<crate::Task>),
    NotFound(String),
    /// The command was valid but does not apply to the current state (stale report, drain of
    /// an unknown node). Carries a human sentence.
    Ignored(String),
    /// The service as it is after the command.
    Service(Box<crate::Service>),
    /// It clashes with the state (a service of that id exists): `409`.
    Conflict(String),
    /// It cannot apply to this object as it is (scale of a global service, rollback without a
    /// previous spec): `400` with the sentence.
    Invalid(String),
}
