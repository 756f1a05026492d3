//! `Command`: every change to cluster state is one of these, proposed through Raft and applied
//! in log order by `orion-state`. Commands carry everything apply needs (ids, the proposer's
//! clock), so applying the log is deterministic on every node.

use crate::api::ValidationError;
use crate::{
    AllocId, ClusterConfig, DeploymentState, Health, NodeId, NodeMeta, PortMapping, ServiceSpec,
    TaskId, TaskSpec, UnixMillis, limits,
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
    /// Several commands that one leader's batching proposer put into a single Raft entry:
    /// applied in order exactly as if each were an entry of its own, each with its own answer
    /// (`Response::Batch`, in the same order). Built only by the leader's proposer from
    /// commands that were validated one by one, so never empty and never nested; `validate`
    /// refuses one from outside. Entries written before batching hold one command each and
    /// still decode: this variant is only added.
    Batch { commands: Vec<Command> },
    /// An admin created an API token (`POST /tokens`); the record holds its hash only.
    /// Refused (`Response::Conflict`) if the id exists.
    CreateToken {
        token: crate::ApiToken,
        at: UnixMillis,
    },
    /// An admin revoked a token (`DELETE /tokens/{id}`): every node refuses it once applied.
    RevokeToken { id: String, at: UnixMillis },
    /// The bootstrap node records the cluster CA (key sealed). Kept only if the state holds
    /// none: a CA is replaced by a rotation, never by a second bootstrap's record.
    SetClusterCa {
        ca: crate::ClusterCa,
        at: UnixMillis,
    },
    /// An admin rotated the CA (`POST /ca/rotate`): `ca` becomes the current CA and the one
    /// it replaces stays trusted as the previous CA, so nodes re-issue their certificates
    /// under the new one without a moment in which a peer is refused.
    RotateClusterCa {
        ca: crate::ClusterCa,
        at: UnixMillis,
    },
    /// An admin removed a node (`DELETE /nodes/{id}`): it is gone from the membership, its
    /// tasks are placed elsewhere, and its id joins the revocation list, so every node
    /// refuses its certificate and no certificate is issued to that id again.
    RemoveNode { node: NodeId, at: UnixMillis },
    /// An admin rotated the gossip key (`POST /gossip-key/rotate`): `key` becomes the current
    /// one, the one it replaces is still accepted until the next rotation.
    RotateGossipKey {
        key: crate::GossipKeyRecord,
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
            | Command::ReportHealth { at, .. }
            | Command::CreateToken { at, .. }
            | Command::RevokeToken { at, .. }
            | Command::SetClusterCa { at, .. }
            | Command::RotateClusterCa { at, .. }
            | Command::RemoveNode { at, .. }
            | Command::RotateGossipKey { at, .. } => *at,
            Command::Batch { commands } => commands.last().map_or(0, Command::at),
        }
    }

    /// Checks a command that arrived from outside this process: every id, string and list
    /// within `limits`, and every `TaskSpec` by the same rules as `POST /tasks`
    /// (`TaskSpec::validate`). The inter-node forward endpoint calls it before it proposes what
    /// a peer sent, and `RaftNode::write` before anything is proposed. `apply` never calls it:
    /// entries already in the log are applied as they are.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Command::CreateTask { task_id, spec, .. } => {
                check_id("task_id", task_id)?;
                spec.validate()
            }
            Command::CreatePlacedTask {
                task_id,
                spec,
                placement,
                ..
            } => {
                check_id("task_id", task_id)?;
                spec.validate()?;
                check_placement(placement)?;
                if placement.task_id != *task_id {
                    return Err(invalid(
                        "placement.task_id",
                        "must be the task being created",
                    ));
                }
                if placement.host_ports.len() != spec.ports.len() {
                    return Err(invalid(
                        "placement.host_ports",
                        "must hold one host port per published port",
                    ));
                }
                Ok(())
            }
            Command::DeleteTask { task_id, .. } => check_id("task_id", task_id),
            Command::Place {
                placements,
                unplaced,
                ..
            } => {
                check_len("placements", placements.len())?;
                check_len("unplaced", unplaced.len())?;
                placements.iter().try_for_each(check_placement)?;
                for (task_id, reason) in unplaced {
                    check_id("unplaced.task_id", task_id)?;
                    check_text("unplaced.reason", reason)?;
                }
                Ok(())
            }
            Command::Report {
                node,
                task_id,
                allocation,
                status,
                ..
            } => {
                check_id("node", node)?;
                check_id("task_id", task_id)?;
                check_id("allocation", allocation)?;
                match status {
                    AllocStatus::Starting => Ok(()),
                    AllocStatus::Running {
                        container_id,
                        ports,
                    } => {
                        check_short("container_id", container_id)?;
                        if ports.len() > limits::PORTS_MAX {
                            return Err(invalid(
                                "ports",
                                format!("has more than {} entries", limits::PORTS_MAX),
                            ));
                        }
                        ports
                            .iter()
                            .try_for_each(|p| check_short("ports.host_ip", &p.host_ip))
                    }
                    // Empty when the container vanished before its id was known.
                    AllocStatus::Exited { container_id, .. } => {
                        check_short("container_id", container_id)
                    }
                    AllocStatus::Failed { reason } => check_text("reason", reason),
                }
            }
            Command::UpsertNode { meta, .. } => {
                check_id("meta.id", &meta.id)?;
                for (field, value) in [
                    ("meta.api_addr", &meta.api_addr),
                    ("meta.raft_addr", &meta.raft_addr),
                    ("meta.gossip_addr", &meta.gossip_addr),
                    ("meta.publish_ip", &meta.publish_ip),
                    ("meta.version", &meta.version),
                ] {
                    check_short(field, value)?;
                }
                crate::api::check_map("meta.labels", &meta.labels)
            }
            Command::NodeDown { node, reason, .. } => {
                check_id("node", node)?;
                check_text("reason", reason)
            }
            Command::NodeLeave { node, .. } | Command::SetDrain { node, .. } => {
                check_id("node", node)
            }
            Command::Requeue {
                task_ids, reason, ..
            } => {
                check_len("task_ids", task_ids.len())?;
                task_ids.iter().try_for_each(|t| check_id("task_ids", t))?;
                check_text("reason", reason)
            }
            Command::SetClusterConfig { config, .. } => config.validate(),
            Command::CreateService { spec, .. } => spec.validate(),
            Command::UpdateService {
                id,
                spec,
                deployment_id,
                ..
            } => {
                check_id("id", id)?;
                check_id("deployment_id", deployment_id)?;
                spec.validate()
            }
            Command::ScaleService { id, replicas, .. } => {
                check_id("id", id)?;
                if *replicas > limits::SERVICE_REPLICAS_MAX {
                    return Err(invalid(
                        "replicas",
                        format!("must be at most {}", limits::SERVICE_REPLICAS_MAX),
                    ));
                }
                Ok(())
            }
            Command::DeleteService { id, .. } => check_id("id", id),
            Command::RollbackService {
                id,
                deployment_id,
                reason,
                ..
            } => {
                check_id("id", id)?;
                check_id("deployment_id", deployment_id)?;
                reason
                    .as_deref()
                    .map_or(Ok(()), |r| check_text("reason", r))
            }
            Command::CreateServiceTasks { tasks, .. } => {
                check_len("tasks", tasks.len())?;
                for t in tasks {
                    check_id("tasks.task_id", &t.task_id)?;
                    check_id("tasks.service", &t.service)?;
                    t.spec.validate()?;
                }
                Ok(())
            }
            Command::StopTasks {
                task_ids, reason, ..
            } => {
                check_len("task_ids", task_ids.len())?;
                task_ids.iter().try_for_each(|t| check_id("task_ids", t))?;
                check_text("reason", reason)
            }
            Command::ForgetTasks { task_ids, .. } => {
                check_len("task_ids", task_ids.len())?;
                task_ids.iter().try_for_each(|t| check_id("task_ids", t))
            }
            Command::DeploymentProgress {
                id,
                deployment_id,
                message,
                ..
            } => {
                check_id("id", id)?;
                check_id("deployment_id", deployment_id)?;
                check_text("message", message)
            }
            Command::ReportHealth {
                node,
                task_id,
                allocation,
                output,
                ..
            } => {
                check_id("node", node)?;
                check_id("task_id", task_id)?;
                check_id("allocation", allocation)?;
                output
                    .as_deref()
                    .map_or(Ok(()), |o| check_text("output", o))
            }
            Command::Batch { .. } => Err(invalid(
                "commands",
                "a batch is built by the leader's proposer and is never proposed from outside",
            )),
            Command::CreateToken { token, .. } => {
                check_id("id", &token.id)?;
                if token.name.len() > crate::token::TOKEN_NAME_BYTES_MAX
                    || token.name.chars().any(char::is_control)
                {
                    return Err(invalid(
                        "name",
                        format!(
                            "must be at most {} bytes without control characters",
                            crate::token::TOKEN_NAME_BYTES_MAX
                        ),
                    ));
                }
                if token.hash.len() != 64 || !token.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("hash", "must be 64 hex digits (SHA-256)"));
                }
                Ok(())
            }
            Command::RevokeToken { id, .. } => check_id("id", id),
            Command::RemoveNode { node, .. } => check_id("node", node),
            Command::RotateGossipKey { key, .. } => {
                if key.sealed_key.len() > 1024 {
                    return Err(invalid("key", "is over 1024 bytes"));
                }
                if key.id < 2 {
                    return Err(invalid("key.id", "ids 0 and 1 are reserved"));
                }
                Ok(())
            }
            Command::SetClusterCa { ca, .. } | Command::RotateClusterCa { ca, .. } => {
                let size = ca.cert_pem.len() + ca.sealed_key.len() + ca.fingerprint.len();
                if size > crate::token::CLUSTER_CA_BYTES_MAX {
                    return Err(invalid(
                        "ca",
                        format!("is over {} bytes", crate::token::CLUSTER_CA_BYTES_MAX),
                    ));
                }
                Ok(())
            }
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
            Command::Batch { .. } => "batch",
            Command::CreateToken { .. } => "create-token",
            Command::RevokeToken { .. } => "revoke-token",
            Command::SetClusterCa { .. } => "set-cluster-ca",
            Command::RotateClusterCa { .. } => "rotate-cluster-ca",
            Command::RemoveNode { .. } => "remove-node",
            Command::RotateGossipKey { .. } => "rotate-gossip-key",
        }
    }
}

/// What applying a command gave. Carried back to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    #[default]
    Ok,
    /// The task as it is after the command (create, delete): the state's own `Arc`, so an
    /// answer copies nothing (JSON as the task itself).
    Task(std::sync::Arc<crate::Task>),
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
    /// The answers to a `Command::Batch`, one per command, in order. The proposer hands each
    /// to the writer of its command; no client ever sees this variant.
    Batch(Vec<Response>),
}

fn invalid(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Ids (task, node, allocation): 1 to `ID_BYTES_MAX` bytes, no control characters
/// and no spaces.
fn check_id(field: &str, id: &str) -> Result<(), ValidationError> {
    if id.is_empty()
        || id.len() > limits::ID_BYTES_MAX
        || id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            field,
            format!(
                "must be 1 to {} bytes without spaces or control characters",
                limits::ID_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

/// Addresses, container ids and versions: at most `ID_BYTES_MAX` bytes.
fn check_short(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.len() > limits::ID_BYTES_MAX {
        return Err(invalid(
            field,
            format!("is longer than {} bytes", limits::ID_BYTES_MAX),
        ));
    }
    Ok(())
}

/// Reasons and other sentences: at most `TEXT_BYTES_MAX` bytes.
fn check_text(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.len() > limits::TEXT_BYTES_MAX {
        return Err(invalid(
            field,
            format!("is longer than {} bytes", limits::TEXT_BYTES_MAX),
        ));
    }
    Ok(())
}

fn check_len(field: &str, len: usize) -> Result<(), ValidationError> {
    if len > limits::COMMAND_BATCH_MAX {
        return Err(invalid(
            field,
            format!("has more than {} entries", limits::COMMAND_BATCH_MAX),
        ));
    }
    Ok(())
}

fn check_placement(p: &Placement) -> Result<(), ValidationError> {
    check_id("placement.task_id", &p.task_id)?;
    check_id("placement.node", &p.node)?;
    check_id("placement.allocation", &p.allocation)?;
    if p.host_ports.len() > limits::PORTS_MAX || p.host_ports.contains(&0) {
        return Err(invalid(
            "placement.host_ports",
            format!("must be at most {} ports, each 1-65535", limits::PORTS_MAX),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Constraint, PortSpec, Protocol};

    fn spec() -> TaskSpec {
        crate::api::parse_task_request(
            br#"{"image":"orion/busybox","portBindings":{"80/tcp":"8080","53/udp":""}}"#,
        )
        .expect("spec")
    }

    fn create(f: impl FnOnce(&mut TaskSpec)) -> Command {
        let mut s = spec();
        f(&mut s);
        Command::CreateTask {
            task_id: "a".repeat(32),
            spec: Box::new(s),
            at: 1,
        }
    }

    fn placement() -> Placement {
        Placement {
            task_id: "a".repeat(32),
            node: "node1".to_string(),
            allocation: "b".repeat(32),
            host_ports: vec![8080, 30000],
        }
    }

    /// Validates `cmd` and checks the outcome: `None` for valid, or the field the error must
    /// name.
    fn check(name: &str, cmd: &Command, want_field: Option<&str>) {
        match (cmd.validate(), want_field) {
            (Ok(()), None) => {}
            (Err(e), Some(f)) => assert_eq!(e.field, f, "{name}: {e}"),
            (Ok(()), Some(f)) => panic!("{name}: accepted, wanted an error on {f}"),
            (Err(e), None) => panic!("{name}: refused: {e}"),
        }
    }

    #[test]
    fn forwarded_commands_are_checked_like_api_requests() {
        let long = "x".repeat(limits::TEXT_BYTES_MAX + 1);
        let cases: Vec<(&str, Command, Option<&str>)> = vec![
            ("a spec the API built", create(|_| {}), None),
            (
                "memory below Docker's minimum",
                create(|s| s.memory_bytes = 1000),
                Some("memory"),
            ),
            (
                "absurd cpu",
                create(|s| s.cpu_millis = u64::MAX),
                Some("cpu"),
            ),
            ("empty image", create(|s| s.image.clear()), Some("image")),
            (
                "image with a space",
                create(|s| s.image = "a b".into()),
                Some("image"),
            ),
            (
                "name with a slash",
                create(|s| s.name = Some("a/b".into())),
                Some("name"),
            ),
            (
                "an empty command list",
                create(|s| s.command = Some(vec![])),
                Some("command"),
            ),
            (
                "too many arguments",
                create(|s| s.command = Some(vec!["a".into(); limits::COMMAND_ARGS_MAX + 1])),
                Some("command"),
            ),
            (
                "env name with '='",
                create(|s| {
                    s.env.insert("A=B".into(), "1".into());
                }),
                Some("env"),
            ),
            (
                "label value too long",
                create(|s| {
                    s.labels
                        .insert("k".into(), "v".repeat(limits::VALUE_BYTES_MAX + 1));
                }),
                Some("labels"),
            ),
            (
                "unsorted ports",
                create(|s| s.ports.reverse()),
                Some("portBindings"),
            ),
            (
                "a container port twice",
                create(|s| {
                    let p = s.ports[0];
                    s.ports.push(p);
                }),
                Some("portBindings"),
            ),
            (
                "host port zero",
                create(|s| {
                    s.ports = vec![PortSpec {
                        container_port: 80,
                        protocol: Protocol::Tcp,
                        host_port: Some(0),
                    }]
                }),
                Some("portBindings"),
            ),
            (
                "a constraint value with a space",
                create(|s| {
                    let mut c = Constraint::parse("node.id == n1").expect("constraint");
                    c.values = vec!["a b".into()];
                    s.constraints.push(c);
                }),
                Some("constraints"),
            ),
            (
                "== with two values",
                create(|s| {
                    let mut c = Constraint::parse("node.id == n1").expect("constraint");
                    c.values.push("n2".into());
                    s.constraints.push(c);
                }),
                Some("constraints"),
            ),
            (
                "empty task id",
                Command::DeleteTask {
                    task_id: String::new(),
                    at: 1,
                },
                Some("task_id"),
            ),
            (
                "task id with a newline",
                Command::DeleteTask {
                    task_id: "a\nb".into(),
                    at: 1,
                },
                Some("task_id"),
            ),
            (
                "a placed create",
                Command::CreatePlacedTask {
                    task_id: "a".repeat(32),
                    spec: Box::new(spec()),
                    placement: placement(),
                    at: 1,
                },
                None,
            ),
            (
                "a placement of another task",
                Command::CreatePlacedTask {
                    task_id: "c".repeat(32),
                    spec: Box::new(spec()),
                    placement: placement(),
                    at: 1,
                },
                Some("placement.task_id"),
            ),
            (
                "too many placements",
                Command::Place {
                    placements: vec![placement(); limits::COMMAND_BATCH_MAX + 1],
                    unplaced: vec![],
                    at: 1,
                },
                Some("placements"),
            ),
            (
                "an overlong reason",
                Command::Place {
                    placements: vec![placement()],
                    unplaced: vec![("a".repeat(32), long.clone())],
                    at: 1,
                },
                Some("unplaced.reason"),
            ),
            (
                "a report of a vanished container",
                Command::Report {
                    node: "node1".into(),
                    task_id: "a".repeat(32),
                    allocation: "b".repeat(32),
                    status: AllocStatus::Exited {
                        container_id: String::new(),
                        exit_code: 137,
                        oom_killed: false,
                    },
                    backoff: BackoffConfig::default(),
                    at: 1,
                },
                None,
            ),
            (
                "a failure with an overlong reason",
                Command::Report {
                    node: "node1".into(),
                    task_id: "a".repeat(32),
                    allocation: "b".repeat(32),
                    status: AllocStatus::Failed { reason: long },
                    backoff: BackoffConfig::default(),
                    at: 1,
                },
                Some("reason"),
            ),
            (
                "a node id too long",
                Command::SetDrain {
                    node: "n".repeat(limits::ID_BYTES_MAX + 1),
                    drain: true,
                    at: 1,
                },
                Some("node"),
            ),
        ];
        for (name, cmd, field) in &cases {
            check(name, cmd, *field);
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_batch_is_refused_from_outside_and_entries_of_one_command_still_decode() {
        let one = Command::DeleteTask {
            task_id: "t1".into(),
            at: 5,
        };
        let batch = Command::Batch {
            commands: vec![one.clone()],
        };
        assert_eq!(batch.validate().unwrap_err().field, "commands");
        assert_eq!(batch.at(), 5);
        // The JSON of a single command, as logs before batching hold it, is unchanged.
        let old = r#"{"DeleteTask":{"task_id":"t1","at":5}}"#;
        assert_eq!(serde_json::from_str::<Command>(old).unwrap(), one);
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), batch);
    }
}
