//! The services sub-decider: from the applied state and the time, the commands that keep each
//! service at its count and move its rolling update along. Pure: the same state, time and id
//! source give the same commands.
//!
//! Each service's live (not stopped) tasks are grouped by *key*: the slot (1..=replicas) of a
//! replicated service, the node of a global one. Then, per key:
//! - a key that is not desired (slot over the count, node drained, down or not eligible) has
//!   its tasks stopped: scale-down removes exactly the highest slots;
//! - an empty key gets a task of the current spec (after a node loss the scheduler re-places
//!   the lost task itself; this fills what is missing);
//! - a key with a ready task of the current spec stops every other task in it (the end of a
//!   start-first replacement, once the new task stayed ready for `monitor`; or a duplicate).
//!
//! A deployment (`running` or `rolling-back`) replaces keys whose tasks run an older spec, at
//! most `parallelism` at a time, `delay` apart, start-first (the old task stops once the new
//! one has been ready, i.e. running and healthy if a check is defined, for the `monitor`
//! window; the next key starts as soon as it is ready) or stop-first. A new task has
//! failed if it exited, turned unhealthy, or was not ready in time; once failures exceed
//! `maxFailureRatio` of the total, `failureAction` applies: roll back (the previous spec is
//! put back and the same procedure replaces the new tasks), pause, or continue. It completes
//! when every key runs the current spec and each new task stayed ready for `monitor`.

use orion_state::{ClusterState, NodeStatus};
use orion_types::env::IdSource;
use orion_types::limits::SERVICE_TASK_HISTORY_MAX;
use orion_types::service::{FailureAction, UpdateOrder, pinned_node};
use orion_types::task::WAITING_FOR_SCHEDULER;
use orion_types::{
    Command, Deployment, DeploymentState, Health, NewServiceTask, Service, ServiceMode,
    ServiceSpec, Task, TaskState, UnixMillis,
};
use std::collections::{BTreeMap, BTreeSet};

/// At most this many tasks are created, and at most this many stopped, in one turn: one Raft
/// entry each, ~200 KB at most, like a batch of placements.
pub const SERVICE_BATCH_MAX: usize = 1000;
/// A new task that is not ready this long after its creation (plus its health check's own
/// allowance) has failed: an image pull and a start take seconds; a minute is generous.
pub const READY_GRACE_MS: u64 = 60_000;

/// Where a task sits in its service: a slot, or a node for a global service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey {
    Slot(u32),
    Node(String),
}

/// The commands for every service, in service id order.
pub fn decide(state: &ClusterState, now: UnixMillis, ids: &dyn IdSource) -> Vec<Command> {
    // Turns run on every applied entry: without services, do not scan the tasks at all. (The
    // stopped tasks of services deleted since are trimmed once a service exists again.)
    if state.services.is_empty() {
        return Vec::new();
    }
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        if let Some(s) = &t.service {
            by_service.entry(s.as_str()).or_default().push(t);
        }
    }
    let mut plan = Plan::default();
    let mut forget = Vec::new();
    for tasks in by_service.values() {
        forget.extend(history_to_forget(tasks));
    }
    for (id, svc) in &state.services {
        let tasks = by_service.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        decide_service(state, svc, tasks, now, ids, &mut plan);
    }
    let mut out = Vec::new();
    if !plan.creates.is_empty() {
        plan.creates.truncate(SERVICE_BATCH_MAX);
        out.push(Command::CreateServiceTasks {
            tasks: plan.creates,
            at: now,
        });
    }
    // One entry per reason keeps each task's history readable.
    for (reason, mut task_ids) in plan.stops {
        task_ids.truncate(SERVICE_BATCH_MAX);
        out.push(Command::StopTasks {
            task_ids,
            reason,
            at: now,
        });
    }
    out.extend(plan.other);
    if !forget.is_empty() {
        forget.truncate(SERVICE_BATCH_MAX);
        out.push(Command::ForgetTasks {
            task_ids: forget,
            at: now,
        });
    }
    out
}

#[derive(Default)]
struct Plan {
    creates: Vec<NewServiceTask>,
    stops: BTreeMap<String, Vec<String>>,
    other: Vec<Command>,
}

impl Plan {
    fn stop(&mut self, task: &Task, reason: String) {
        self.stops.entry(reason).or_default().push(task.id.clone());
    }
}

/// Stopped tasks beyond the history limit of their key, oldest first.
fn history_to_forget(tasks: &[&Task]) -> Vec<String> {
    let mut stopped: BTreeMap<Option<SlotKey>, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.state == TaskState::Stopped) {
        stopped.entry(key_of(t)).or_default().push(t);
    }
    let mut out = Vec::new();
    for (_, mut list) in stopped {
        if list.len() > SERVICE_TASK_HISTORY_MAX {
            list.sort_by_key(|t| (t.updated_at, t.id.clone()));
            let excess = list.len() - SERVICE_TASK_HISTORY_MAX;
            out.extend(list[..excess].iter().map(|t| t.id.clone()));
        }
    }
    out
}

fn key_of(t: &Task) -> Option<SlotKey> {
    match t.slot {
        Some(s) => Some(SlotKey::Slot(s)),
        None => pinned_node(&t.spec).map(SlotKey::Node),
    }
}

/// Nodes a global service runs on: up, not draining, and matching its selectors and
/// constraints.
fn eligible_nodes(state: &ClusterState, spec: &ServiceSpec) -> BTreeSet<String> {
    state
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Up && !n.draining && !n.left)
        .filter(|n| {
            spec.task
                .node_selectors
                .iter()
                .all(|(k, v)| n.meta.labels.get(k) == Some(v))
                && spec
                    .task
                    .constraints
                    .iter()
                    .all(|c| c.matches(&n.meta.id, &n.meta.labels))
        })
        .map(|n| n.meta.id.clone())
        .collect()
}

/// Whether the task is up: running, and healthy if it has a check.
fn ready(t: &Task) -> bool {
    t.state == TaskState::Running && (t.spec.healthcheck.is_none() || t.health == Health::Healthy)
}

/// When the task last became ready.
fn ready_at(t: &Task) -> UnixMillis {
    let running = t.running_since.unwrap_or(t.state_since);
    if t.spec.healthcheck.is_some() {
        running.max(t.health_since.unwrap_or(running))
    } else {
        running
    }
}

/// Why a task created for a deployment counts as failed, if it does.
fn failure(t: &Task, now: UnixMillis) -> Option<String> {
    let who = match t.slot {
        Some(s) => format!("task {} (slot {s})", short(&t.id)),
        None => format!(
            "task {} on {}",
            short(&t.id),
            t.node.as_deref().unwrap_or("-")
        ),
    };
    if t.exit_code.is_some() || matches!(t.state, TaskState::Failed | TaskState::Completed) {
        let why = t.reason.as_deref().unwrap_or("the container exited");
        return Some(format!("{who}: {why}"));
    }
    if t.health == Health::Unhealthy {
        let out = t.health_output.as_deref().unwrap_or("").trim();
        return Some(format!("{who} is unhealthy: {out}"));
    }
    let allowance = t.spec.healthcheck.as_ref().map_or(0, |h| {
        h.start_period_ms.saturating_add(
            h.interval_ms
                .saturating_add(h.timeout_ms)
                .saturating_mul(u64::from(h.retries) + 1),
        )
    });
    let deadline = t
        .created_at
        .saturating_add(READY_GRACE_MS)
        .saturating_add(allowance);
    if !ready(t) && now >= deadline {
        return Some(format!(
            "{who} was not ready {} s after it was created (still {})",
            (deadline - t.created_at) / 1000,
            t.state.as_str()
        ));
    }
    None
}

/// Why the scheduler found no node for a waiting task, if it looked.
fn no_room(t: &Task) -> Option<&str> {
    t.reason
        .as_deref()
        .filter(|r| t.needs_placement() && *r != WAITING_FOR_SCHEDULER)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One key's tasks, split by whether they run the current spec.
#[derive(Default)]
struct KeyTasks<'a> {
    current: Vec<&'a Task>,
    old: Vec<&'a Task>,
}

fn decide_service(
    state: &ClusterState,
    svc: &Service,
    tasks: &[&Task],
    now: UnixMillis,
    ids: &dyn IdSource,
    plan: &mut Plan,
) {
    let spec = &svc.spec;
    let desired: Vec<SlotKey> = match spec.mode {
        ServiceMode::Replicated => (1..=spec.replicas).map(SlotKey::Slot).collect(),
        ServiceMode::Global => eligible_nodes(state, spec)
            .into_iter()
            .map(SlotKey::Node)
            .collect(),
    };
    let desired_set: BTreeSet<&SlotKey> = desired.iter().collect();
    let mut keys: BTreeMap<SlotKey, KeyTasks<'_>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.state != TaskState::Stopped) {
        match key_of(t) {
            Some(k) if desired_set.contains(&k) => {
                let entry = keys.entry(k).or_default();
                if spec.runs_same(&t.spec) {
                    entry.current.push(t);
                } else {
                    entry.old.push(t);
                }
            }
            Some(SlotKey::Slot(s)) => plan.stop(t, format!("scaled down: slot {s} removed")),
            Some(SlotKey::Node(n)) => plan.stop(
                t,
                format!(
                    "node {n} no longer takes this global service (drained, down or not eligible)"
                ),
            ),
            None => plan.stop(t, "not in any slot of the service".to_string()),
        }
    }

    let deployment = svc.deployment.as_ref().filter(|d| d.state.is_active());
    let started = deployment.map_or(UnixMillis::MAX, |d| d.started_at);
    // Tasks created for this deployment that failed, and why (the first reason).
    let mut failures: Vec<String> = Vec::new();
    let mut in_flight = 0u32;
    let mut updated = 0u32;
    // Keys that run only older specs: (key, their tasks).
    let mut waiting: Vec<(&SlotKey, Vec<&Task>)> = Vec::new();
    let mut last_ready: UnixMillis = 0;
    let mut need_create: Vec<&SlotKey> = Vec::new();
    let monitor = spec.update.monitor_ms;

    for key in &desired {
        let kt = keys.remove(key).unwrap_or_default();
        // The best current task: ready first, then the oldest.
        let mut current = kt.current.clone();
        current.sort_by_key(|t| (!ready(t), t.created_at, t.id.clone()));
        let fresh = |t: &Task| t.created_at >= started;
        for t in current.iter().filter(|t| fresh(t)) {
            if let Some(why) = failure(t, now) {
                failures.push(why);
            }
        }
        match current.first() {
            None if kt.old.is_empty() => need_create.push(key),
            None => waiting.push((key, kt.old.clone())),
            Some(best) => {
                // Extra current tasks in one key are duplicates.
                for dup in current.iter().skip(1) {
                    plan.stop(dup, "a duplicate in its slot".to_string());
                }
                if ready(best) {
                    if fresh(best) {
                        last_ready = last_ready.max(ready_at(best));
                    }
                    // A new task replaces the old ones only once it stayed ready for the
                    // monitor window: one that dies soon after starting leaves the old
                    // version serving, and the rollback only has to stop it. The key no
                    // longer counts against `parallelism` meanwhile.
                    if !fresh(best) || now >= ready_at(best).saturating_add(monitor) {
                        for old in &kt.old {
                            plan.stop(old, format!("replaced by task {}", short(&best.id)));
                        }
                        updated += 1;
                    }
                } else if fresh(best) && failure(best, now).is_none() {
                    in_flight += 1;
                    // Start-first found no room for the new task (a fixed published port, a
                    // full node): make room by stopping the old one, as stop-first would.
                    if let Some(why) = no_room(best) {
                        for old in &kt.old {
                            plan.stop(
                                old,
                                format!("stopped to make room for task {}: {why}", short(&best.id)),
                            );
                        }
                    }
                }
            }
        }
    }

    for key in &need_create {
        create(svc, key, ids, state, plan);
    }

    let Some(d) = deployment else {
        return;
    };
    let total = d.total.max(1);
    let failed = failures.len() as u32;
    if d.state == DeploymentState::Running
        && u64::from(failed) * 1000 > u64::from(spec.update.max_failure_permille) * u64::from(total)
    {
        let reason = failures[0].clone();
        match spec.update.failure_action {
            FailureAction::Rollback if svc.previous.is_some() => {
                plan.other.push(Command::RollbackService {
                    id: svc.id.clone(),
                    deployment_id: d.id.clone(),
                    reason: Some(reason),
                    at: now,
                });
                return;
            }
            FailureAction::Rollback | FailureAction::Pause => {
                progress(
                    plan,
                    svc,
                    d,
                    DeploymentState::Paused,
                    (updated, failed),
                    format!("paused: {reason}"),
                    now,
                );
                return;
            }
            FailureAction::Continue => {}
        }
    }
    // Start the next keys, at most `parallelism` at once and `delay` after the last one.
    let delay = spec.update.delay_ms;
    let mut free = spec.update.parallelism.saturating_sub(in_flight) as usize;
    if delay > 0 && (in_flight > 0 || now < last_ready.saturating_add(delay)) {
        free = 0;
    }
    for (key, old) in waiting.iter().take(free) {
        if spec.update.order == UpdateOrder::StopFirst {
            for t in old {
                plan.stop(t, "stopped for a rolling update (stop-first)".to_string());
            }
        }
        create(svc, key, ids, state, plan);
    }
    let done = waiting.is_empty() && in_flight == 0 && updated + failed >= desired.len() as u32;
    if done {
        let (end, message) = if d.state == DeploymentState::RollingBack {
            (
                DeploymentState::RolledBack,
                // Keeps why: "rolling back: task …" becomes "rolled back: task …".
                format!(
                    "{}; version {} runs the previous spec",
                    d.message.replacen("rolling back", "rolled back", 1),
                    svc.version
                ),
            )
        } else if failed > 0 {
            (
                DeploymentState::Completed,
                format!(
                    "version {} deployed with {failed} failed task(s)",
                    d.to_version
                ),
            )
        } else {
            (
                DeploymentState::Completed,
                format!("version {} deployed", d.to_version),
            )
        };
        progress(plan, svc, d, end, (updated, failed), message, now);
    } else if d.updated != updated || (d.state == DeploymentState::Running && d.failed != failed) {
        progress(
            plan,
            svc,
            d,
            d.state,
            (updated, failed),
            d.message.clone(),
            now,
        );
    }
}

fn progress(
    plan: &mut Plan,
    svc: &Service,
    d: &Deployment,
    state: DeploymentState,
    (updated, failed): (u32, u32),
    message: String,
    now: UnixMillis,
) {
    plan.other.push(Command::DeploymentProgress {
        id: svc.id.clone(),
        deployment_id: d.id.clone(),
        state,
        updated,
        failed,
        message,
        at: now,
    });
}

/// A new task of the current spec in `key`. With `maxPerNode`, it avoids nodes that hold that
/// many tasks of the service already, and only one such task waits for placement at a time,
/// so two cannot both take a node's last place.
fn create(svc: &Service, key: &SlotKey, ids: &dyn IdSource, state: &ClusterState, plan: &mut Plan) {
    let spec = &svc.spec;
    let (name, node, slot) = match key {
        SlotKey::Slot(s) => (format!("{}.{s}", svc.id), None, Some(*s)),
        SlotKey::Node(n) => (format!("{}.{n}", svc.id), Some(n.as_str()), None),
    };
    if spec.pins_to_volume_node() && svc.volume_node.is_none() {
        // The first task chooses the node of the service's volumes: the others wait for it,
        // so they are not spread over nodes without the volumes.
        let waiting = state
            .tasks_of_service(&svc.id)
            .any(|t| t.state != TaskState::Stopped)
            || plan.creates.iter().any(|c| c.service == svc.id);
        if waiting {
            return;
        }
    }
    let node = node.or(svc.volume_node.as_deref());
    let mut task_spec = spec.task_spec(name, node);
    if spec.max_per_node > 0 && svc.volume_node.is_none() {
        let live: Vec<&Task> = state
            .tasks_of_service(&svc.id)
            .filter(|t| t.state != TaskState::Stopped)
            .collect();
        let waiting = live.iter().any(|t| t.needs_placement())
            || plan.creates.iter().any(|c| c.service == svc.id);
        if waiting {
            return;
        }
        let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
        for t in live.iter().filter(|t| t.allocation.is_some()) {
            if let Some(n) = t.node.as_deref() {
                *per_node.entry(n).or_default() += 1;
            }
        }
        let full: Vec<String> = per_node
            .into_iter()
            .filter(|(_, c)| *c >= spec.max_per_node)
            .map(|(n, _)| n.to_string())
            .collect();
        ServiceSpec::exclude_nodes(&mut task_spec, full);
    }
    plan.creates.push(NewServiceTask {
        task_id: ids.next_id(),
        service: svc.id.clone(),
        version: svc.version,
        slot,
        spec: Box::new(task_spec),
    });
}
