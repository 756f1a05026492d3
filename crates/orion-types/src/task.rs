//! `Task`: the record the replicated state keeps for each task, desired spec and last known
//! actual state together. The API renders it to the JSON of API.md.

use crate::{
    AllocId, Health, NodeId, PortMapping, TaskEvent, TaskId, TaskSpec, TaskState, UnixMillis,
    limits,
};
use serde::{Deserialize, Serialize};

/// The reason of a task the scheduler has not looked at yet; once it has and found no room,
/// the reason is its explanation instead.
pub const WAITING_FOR_SCHEDULER: &str = "waiting for the scheduler";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// The node it is placed on (kept after it stops, for history).
    pub node: Option<NodeId>,
    /// The current placement; `None` while pending, lost, or after a delete.
    pub allocation: Option<AllocId>,
    /// Host ports the scheduler chose, in the order of `spec.ports`.
    pub host_ports: Vec<u16>,
    pub container_id: Option<String>,
    /// Ports as actually bound, reported by the node.
    pub ports: Vec<PortMapping>,
    pub reason: Option<String>,
    pub exit_code: Option<i64>,
    /// Restarts in place plus re-placements.
    pub restarts: u32,
    /// Restarts since the container last ran long enough to reset the back-off.
    pub consecutive_restarts: u32,
    /// When the container is due to be started again after an exit (restart policy).
    pub restart_at: Option<UnixMillis>,
    /// When the current container was reported running.
    pub running_since: Option<UnixMillis>,
    /// When the task entered its current state: deadlines for `scheduled`/`starting` count
    /// from here.
    pub state_since: UnixMillis,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub events: Vec<TaskEvent>,
    /// The service it belongs to (its id), `None` for a one-off task.
    #[serde(default)]
    pub service: Option<String>,
    /// The service's version it was created for; 0 for a one-off task.
    #[serde(default)]
    pub version: u64,
    /// Its slot (1-based) in a replicated service.
    #[serde(default)]
    pub slot: Option<u32>,
    /// `none` unless a check is defined; then `starting` until the executor says otherwise.
    #[serde(default)]
    pub health: Health,
    /// When `health` last changed (the monitor window of an update counts from here).
    #[serde(default)]
    pub health_since: Option<UnixMillis>,
    /// The last probe's output, bounded by `limits::HEALTH_OUTPUT_BYTES_MAX`.
    #[serde(default)]
    pub health_output: Option<String>,
}

impl Task {
    pub fn new(id: TaskId, spec: TaskSpec, at: UnixMillis) -> Task {
        let mut t = Task {
            id,
            spec,
            state: TaskState::Pending,
            node: None,
            allocation: None,
            host_ports: Vec::new(),
            container_id: None,
            ports: Vec::new(),
            reason: Some(WAITING_FOR_SCHEDULER.to_string()),
            exit_code: None,
            restarts: 0,
            consecutive_restarts: 0,
            restart_at: None,
            running_since: None,
            state_since: at,
            created_at: at,
            updated_at: at,
            events: Vec::new(),
            service: None,
            version: 0,
            slot: None,
            health: Health::None,
            health_since: None,
            health_output: None,
        };
        t.record(at, "task accepted");
        t
    }

    /// Moves to `state` and records the change in the bounded event list.
    pub fn transition(&mut self, state: TaskState, at: UnixMillis, message: impl Into<String>) {
        if self.state != state {
            self.state_since = at;
        }
        self.state = state;
        self.record(at, message);
    }

    fn record(&mut self, at: UnixMillis, message: impl Into<String>) {
        self.updated_at = at;
        self.events.push(TaskEvent {
            at,
            state: self.state,
            message: message.into(),
        });
        if self.events.len() > limits::TASK_EVENTS_MAX {
            let excess = self.events.len() - limits::TASK_EVENTS_MAX;
            self.events.drain(..excess);
        }
    }

    /// Whether the task should have a container on its node: placed and not deleted, and not
    /// finished for good.
    pub fn wants_container(&self) -> bool {
        self.allocation.is_some()
            && matches!(
                self.state,
                TaskState::Scheduled
                    | TaskState::Starting
                    | TaskState::Running
                    | TaskState::Completed
                    | TaskState::Failed
            )
    }

    /// Whether the task holds its node's resources (counts against capacity).
    pub fn holds_resources(&self) -> bool {
        self.allocation.is_some()
            && match self.state {
                TaskState::Scheduled | TaskState::Starting | TaskState::Running => true,
                // An exited container due for restart keeps its place.
                TaskState::Completed | TaskState::Failed => self.restart_at.is_some(),
                TaskState::Pending | TaskState::Stopped | TaskState::Lost => false,
            }
    }

    /// The node the task's current allocation is on, if it has one.
    pub fn placed_on(&self) -> Option<&str> {
        match (&self.allocation, &self.node) {
            (Some(_), Some(n)) => Some(n),
            _ => None,
        }
    }

    /// Whether the scheduler should look for a node for it.
    pub fn needs_placement(&self) -> bool {
        self.allocation.is_none() && matches!(self.state, TaskState::Pending | TaskState::Lost)
    }
}
