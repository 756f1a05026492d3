//! Placement: every task that waits (pending or lost) goes through the pure scheduler at once,
//! first come first placed, so a task that fits nowhere never blocks a later one that fits
//! (the scheduler places 10,000 tasks on 5,000 nodes in well under a second). The decisions
//! are proposed as `Place` entries of at most `PLACE_BATCH_MAX` placements; a task's reason for
//! waiting is proposed only when it changed. Placement at creation runs the same code for one
//! task.

use crate::{Action, Liveness, Member, PLACE_BATCH_MAX};
use orion_scheduler::{Decision, NodeView, Snapshot, TaskRequest};
use orion_state::{ClusterState, NodeStatus};
use orion_types::env::IdSource;
use orion_types::{
    Command, NodeId, Placement, Protocol, Resources, Task, TaskId, TaskSpec, TaskState, UnixMillis,
};
use std::collections::BTreeMap;

/// After its stop, a task's container may bind its host ports for this long plus twice its
/// stop grace: the executor holds it to drain (`DRAIN_SETTLE_MS`, 1 s, then while connections
/// stay open, up to the grace), then stops it (the grace again), then removes it.
pub const PORT_COOLING_BASE_MS: u64 = 3_000;
/// The stop grace of a task without its own `stopGracePeriod` (the executor's
/// `STOP_GRACE_MS`).
const DEFAULT_STOP_GRACE_MS: u64 = 2_000;

/// Until when a stopped task's container may still hold its host ports.
fn cooling_until(t: &Task) -> UnixMillis {
    let grace = t.spec.stop_grace_period_ms.unwrap_or(DEFAULT_STOP_GRACE_MS);
    t.state_since
        .saturating_add(PORT_COOLING_BASE_MS)
        .saturating_add(grace.saturating_mul(2))
}

/// Marks as cooling, on each node, the host ports of tasks stopped there so recently that
/// their container may still hold them. A dynamic port avoids them: given the lowest free
/// port, the replacement of a task (a rolling update, a scale-down then up) would often get
/// the port its predecessor's container still binds, and its start would wait for that
/// container's drain and stop, up to twice its grace. Scans every task, so only when a task
/// to place asks for a dynamic port.
fn cool_recently_freed_ports(snapshot: &mut Snapshot, state: &ClusterState, now: UnixMillis) {
    for t in state.tasks.values() {
        if t.state != TaskState::Stopped || t.host_ports.is_empty() || now >= cooling_until(t) {
            continue;
        }
        let Some(node) = t.node.as_deref() else {
            continue;
        };
        if let Some(view) = snapshot.nodes.iter_mut().find(|n| n.id == node) {
            view.cooling_ports.extend(t.spec.bound_ports(&t.host_ports));
        }
    }
}

fn wants_dynamic_port(spec: &TaskSpec) -> bool {
    spec.ports
        .iter()
        .any(|p| p.host_port.is_none_or(|h| h == 0))
}

/// What the scheduler sees: every recorded node, ready if it is up in the state and alive in
/// the membership view, with what is already placed on it, and the cluster config's strategy
/// and dynamic port range.
pub fn scheduler_snapshot(state: &ClusterState, members: &dyn Liveness) -> Snapshot {
    let mut usage = state.usage();
    let config = state.config();
    Snapshot {
        nodes: state
            .nodes
            .values()
            .map(|r| {
                let u = usage.remove(&r.meta.id).unwrap_or_default();
                NodeView {
                    id: r.meta.id.clone(),
                    ready: r.status == NodeStatus::Up && members.is_alive(&r.meta.id),
                    draining: r.draining,
                    capacity: r.meta.capacity,
                    allocated: u.allocated,
                    used_ports: u.ports,
                    cooling_ports: Default::default(),
                    labels: r.meta.labels.clone(),
                    task_count: u.tasks,
                }
            })
            .collect(),
        dynamic_ports: config.dynamic_ports.range(),
        default_strategy: config.strategy,
    }
}

fn placement(ids: &dyn IdSource, task_id: String, node: String, host_ports: Vec<u16>) -> Placement {
    Placement {
        task_id,
        node,
        allocation: ids.next_id(),
        host_ports,
    }
}

/// What a placement pass proposes.
pub(crate) struct Pass {
    pub(crate) actions: Vec<Action>,
    /// Whether any task was placed (not only reasons recorded).
    pub(crate) placed_any: bool,
}

/// Places `waiting` (every waiting task, or those that began to wait since an idle pass, see
/// `ControllerMemory::placement_idle`); no actions when there is nothing new to say.
pub(crate) fn decide(
    state: &ClusterState,
    mut waiting: Vec<&orion_types::Task>,
    members: &BTreeMap<NodeId, Member>,
    ids: &dyn IdSource,
    now: UnixMillis,
) -> Pass {
    if waiting.is_empty() {
        return Pass {
            actions: Vec::new(),
            placed_any: false,
        };
    }
    waiting.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut snapshot = scheduler_snapshot(state, members);
    if waiting.iter().any(|t| wants_dynamic_port(&t.spec)) {
        cool_recently_freed_ports(&mut snapshot, state, now);
    }
    let requests: Vec<TaskRequest> = waiting
        .iter()
        .map(|t| TaskRequest::from_spec(t.id.clone(), &t.spec))
        .collect();
    let mut placements = Vec::new();
    let mut unplaced = Vec::new();
    for (d, task) in orion_scheduler::place(&snapshot, &requests)
        .into_iter()
        .zip(&waiting)
    {
        match d {
            Decision::Placed {
                task_id,
                node,
                host_ports,
            } => placements.push(placement(ids, task_id, node, host_ports)),
            Decision::Unplaced { task_id, reason } => {
                if task.reason.as_ref() != Some(&reason) {
                    unplaced.push((task_id, reason));
                }
            }
        }
    }
    let placed_any = !placements.is_empty();
    let mut actions = Vec::new();
    let mut placements = placements.into_iter().peekable();
    let mut unplaced = unplaced.into_iter().peekable();
    while placements.peek().is_some() || unplaced.peek().is_some() {
        actions.push(Action::Propose(Command::Place {
            placements: placements.by_ref().take(PLACE_BATCH_MAX).collect(),
            unplaced: unplaced.by_ref().take(PLACE_BATCH_MAX).collect(),
            at: now,
        }));
    }
    Pass {
        actions,
        placed_any,
    }
}

/// A placement the leader proposed with a new task (`CreatePlacedTask`) whose entry has not
/// been applied yet: what placement at creation counts as taken, besides the state, so that
/// concurrent creates see each other's choices (spread stays even and two creates do not pick
/// the same dynamic port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapplied {
    pub task_id: TaskId,
    pub node: NodeId,
    pub resources: Resources,
    pub ports: Vec<(Protocol, u16)>,
}

impl Unapplied {
    /// What `cmd` takes if it is a `CreatePlacedTask`.
    pub fn of(cmd: &Command) -> Option<Unapplied> {
        match cmd {
            Command::CreatePlacedTask {
                spec, placement, ..
            } => Some(Unapplied {
                task_id: placement.task_id.clone(),
                node: placement.node.clone(),
                resources: spec.resources(),
                ports: spec.bound_ports(&placement.host_ports).collect(),
            }),
            _ => None,
        }
    }
}

/// On the leader, with no task waiting, places a new task in the entry that creates it:
/// `CreatePlacedTask` (one commit instead of two). `unapplied` are the placements at creation
/// this leader proposed whose entries have not been applied yet: they count as taken, besides
/// the state (the caller drops a booking when its entry applies, so none is counted twice:
/// `CreatePlacer`). `None` when tasks are waiting (they
/// go first, through the controller) or when it fits nowhere; the caller then proposes a plain
/// `CreateTask` and the task waits as pending.
pub fn place_at_creation(
    state: &ClusterState,
    members: &dyn Liveness,
    task_id: &str,
    spec: &TaskSpec,
    at: UnixMillis,
    ids: &dyn IdSource,
    unapplied: &[Unapplied],
) -> Option<Command> {
    if state.has_pending() {
        return None;
    }
    let mut snapshot = scheduler_snapshot(state, members);
    for u in unapplied {
        if let Some(view) = snapshot.nodes.iter_mut().find(|n| n.id == u.node) {
            view.allocated = view.allocated.saturating_add(u.resources);
            view.used_ports.extend(u.ports.iter().copied());
            view.task_count = view.task_count.saturating_add(1);
        }
    }
    if wants_dynamic_port(spec) {
        cool_recently_freed_ports(&mut snapshot, state, at);
    }
    let request = TaskRequest::from_spec(task_id, spec);
    match orion_scheduler::place(&snapshot, &[request]).pop()? {
        Decision::Placed {
            node, host_ports, ..
        } => Some(Command::CreatePlacedTask {
            task_id: task_id.to_string(),
            spec: Box::new(spec.clone()),
            placement: placement(ids, task_id.to_string(), node, host_ports),
            at,
        }),
        Decision::Unplaced { .. } => None,
    }
}
