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

/// Its JSON (in snapshots) leaves out the `Option`s that are `None`, here and in its spec: a
/// third of a plain task's bytes were `null`s, encoded on every member for every snapshot. A
/// missing `Option` decodes as `None`, in this version and in older ones, and JSON with the
/// `null`s (older snapshots and log entries) decodes as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// The node it is placed on (kept after it stops, for history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The current placement; `None` while pending, lost, or after a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocId>,
    /// Host ports the scheduler chose, in the order of `spec.ports`.
    pub host_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Ports as actually bound, reported by the node.
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Restarts in place plus re-placements.
    pub restarts: u32,
    /// Restarts since the container last ran long enough to reset the back-off.
    pub consecutive_restarts: u32,
    /// When the container is due to be started again after an exit (restart policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<UnixMillis>,
    /// When the current container was reported running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<UnixMillis>,
    /// When the task entered its current state: deadlines for `scheduled`/`starting` count
    /// from here.
    pub state_since: UnixMillis,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub events: Vec<TaskEvent>,
    /// The service it belongs to (its id), `None` for a one-off task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The service's version it was created for; 0 for a one-off task.
    #[serde(default)]
    pub version: u64,
    /// Its slot (1-based) in a replicated service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// `none` unless a check is defined; then `starting` until the executor says otherwise.
    #[serde(default)]
    pub health: Health,
    /// When `health` last changed (the monitor window of an update counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_since: Option<UnixMillis>,
    /// The last probe's output, bounded by `limits::HEALTH_OUTPUT_BYTES_MAX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        crate::api::parse_task_request(br#"{"image":"busybox","command":["sleep","1"]}"#)
            .expect("spec")
    }

    /// A plain task's JSON has no `null`s and no empty container options, and reads back
    /// the same; JSON written with them (older snapshots and log entries) reads the same too.
    #[test]
    fn a_tasks_json_leaves_out_what_is_none_and_older_json_with_nulls_still_reads() {
        let task = Task::new("t1".to_string(), spec(), 7);
        let json = serde_json::to_string(&task).expect("encode");
        assert!(!json.contains("null"), "{json}");
        assert!(!json.contains("\"container\""), "{json}");
        assert!(!json.contains("\"node\""), "{json}");
        let back: Task = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, task);

        let mut older: serde_json::Value = serde_json::to_value(&task).expect("value");
        let o = older.as_object_mut().expect("object");
        for k in [
            "node",
            "allocation",
            "container_id",
            "exit_code",
            "restart_at",
        ] {
            o.insert(k.to_string(), serde_json::Value::Null);
        }
        let s = o["spec"].as_object_mut().expect("spec");
        for k in ["name", "strategy", "healthcheck", "stop_grace_period_ms"] {
            s.insert(k.to_string(), serde_json::Value::Null);
        }
        s.insert(
            "container".to_string(),
            serde_json::json!({"entrypoint": null, "user": null, "working_dir": null,
                "hostname": null, "stop_signal": null, "mounts": [], "files": []}),
        );
        let back: Task = serde_json::from_value(older).expect("decode the older JSON");
        assert_eq!(back, task);
    }
}
