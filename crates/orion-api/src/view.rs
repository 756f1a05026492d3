//! The JSON shapes users see (API.md), kept apart from the internal records.

use orion_types::{PortMapping, Task, UnixMillis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};
use utoipa::ToSchema;

pub(crate) fn rfc3339(ms: UnixMillis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub at: String,
    pub state: String,
    pub message: String,
}

/// A task as API.md shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub id: String,
    pub image: String,
    pub name: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub memory: u64,
    pub cpu: f64,
    pub port_bindings: BTreeMap<String, String>,
    pub restart_policy: String,
    pub labels: BTreeMap<String, String>,
    pub node_selectors: BTreeMap<String, String>,
    pub constraints: Vec<String>,
    pub strategy: Option<String>,
    /// `stopAfterDisconnect` as a duration string; absent when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_disconnect: Option<String>,
    #[schema(value_type = orion_types::TaskState)]
    pub state: String,
    pub node: Option<String>,
    pub allocation: Option<String>,
    pub container_id: Option<String>,
    pub ports: Vec<PortMapping>,
    pub reason: Option<String>,
    pub exit_code: Option<i64>,
    pub restarts: u32,
    pub restart_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub events: Vec<EventView>,
    /// The service it belongs to; `None` for a one-off task.
    pub service: Option<String>,
    /// The service's version it runs; `None` for a one-off task.
    pub version: Option<u64>,
    /// Its slot in a replicated service.
    pub slot: Option<u32>,
    /// none, starting, healthy or unhealthy.
    pub health: String,
    /// The last health probe's output (bounded).
    pub health_output: Option<String>,
}

impl From<&Task> for TaskView {
    fn from(t: &Task) -> TaskView {
        let s = &t.spec;
        TaskView {
            id: t.id.clone(),
            image: s.image.clone(),
            name: s.name.clone(),
            command: s.command.clone(),
            env: s.env.clone(),
            memory: s.memory_bytes,
            cpu: s.cpu_millis as f64 / 1000.0,
            port_bindings: s
                .ports
                .iter()
                .map(|p| {
                    let host = p.host_port.map(|h| h.to_string()).unwrap_or_default();
                    (
                        format!("{}/{}", p.container_port, p.protocol.as_str()),
                        host,
                    )
                })
                .collect(),
            restart_policy: s.restart_policy.as_str().to_string(),
            labels: s.labels.clone(),
            node_selectors: s.node_selectors.clone(),
            constraints: s.constraints.iter().map(ToString::to_string).collect(),
            strategy: s.strategy.map(|st| st.as_str().to_string()),
            stop_after_disconnect: s
                .stop_after_disconnect_ms
                .map(orion_types::api::format_duration_ms),
            state: t.state.as_str().to_string(),
            node: t.node.clone(),
            allocation: t.allocation.clone(),
            container_id: t.container_id.clone(),
            ports: t.ports.clone(),
            reason: t.reason.clone(),
            exit_code: t.exit_code,
            restarts: t.restarts,
            restart_at: t.restart_at.map(rfc3339),
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            events: t
                .events
                .iter()
                .map(|e| EventView {
                    at: rfc3339(e.at),
                    state: e.state.as_str().to_string(),
                    message: e.message.clone(),
                })
                .collect(),
            service: t.service.clone(),
            version: t.service.as_ref().map(|_| t.version),
            slot: t.slot,
            health: t.health.as_str().to_string(),
            health_output: t.health_output.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourcesView {
    /// Bytes.
    pub memory: u64,
    /// Cores.
    pub cpu: f64,
}

impl From<orion_types::Resources> for ResourcesView {
    fn from(r: orion_types::Resources) -> Self {
        ResourcesView {
            memory: r.memory_bytes,
            cpu: r.cpu_millis as f64 / 1000.0,
        }
    }
}

/// A node as API.md shows it: gossip status, Raft role, addresses, capacity and use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub id: String,
    /// Gossip address.
    pub address: String,
    pub api_addr: String,
    pub raft_addr: String,
    /// alive, suspect, dead or left (gossip's view from the answering node).
    pub status: String,
    /// leader, voter, learner, or none (not (yet) a Raft member).
    pub role: String,
    /// Up or down as recorded in the replicated state.
    pub recorded: String,
    pub draining: bool,
    pub generation: u64,
    pub labels: BTreeMap<String, String>,
    pub capacity: ResourcesView,
    pub allocated: ResourcesView,
    pub tasks: u32,
    /// Milliseconds since the answering node last heard of it through gossip.
    pub last_contact_ms: Option<u64>,
    pub version: String,
}

/// `GET /status`: the answering node's own view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub id: String,
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// A voter change is under way (joint consensus): `voters` lists old and new together.
    pub membership_changing: bool,
    pub version: String,
    /// The seed of this node's gossip RNG, drawn at start and logged, so a run can be replayed.
    #[serde(default)]
    pub gossip_seed: u64,
}
