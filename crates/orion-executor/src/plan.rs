//! `plan`: the executor's decision, a pure function from what the local replica wants on this
//! node (`desired`), what the runtime has (`actual`), the time, and the executor's own
//! situation (jobs in flight, whether the replica is known fresh, leader contact) to the
//! actions that converge them. No IO, no clock, no randomness: the same input gives the same
//! actions in the same (sorted) order, so the simulator can replay it.
//!
//! Rules, in order:
//! - Fence: a container whose allocation is not a current allocation of this node, or that
//!   duplicates the container kept for its allocation, is stopped with a short grace
//!   (`FENCE_GRACE_MS`) and removed. The exception is a task stopped while this node
//!   watched (its allocation was current on an earlier pass since the replica was last known
//!   fresh: a delete, scale-down, update or drain seen live): it runs nowhere else, so its
//!   container gets the task's own `stopGracePeriod`. Stopping never waits for anything: it is always safe,
//!   since a replica never moves backwards. While starts are pending, a fenced container is
//!   only stopped (a stopped container is no duplicate and holds no port) and its removal,
//!   heavy work for the engine, waits until the starts are done.
//! - Drain before stop: a running container of a task stopped while this node watched that
//!   publishes ports is held before its stop signal. The stop is applied on every node at
//!   about the same time, and the task, no longer `running` in the state, leaves every
//!   node's endpoint view and so DNS and every proxy. The hold lasts at least
//!   `DRAIN_SETTLE_MS` (every node has dropped it), then while the driver still sees
//!   established connections on its ports, up to the task's stop grace; only then does the
//!   stop signal go out (with the full grace again).
//! - Adopt: a container of a current allocation is kept; the task is reported `Running` with
//!   the ports the runtime really bound, or `Exited` with its exit code and OOM flag.
//! - Join when listening: a new run of a service task without a health check is reported
//!   `Running` (and so enters DNS and every node's mesh, and counts as up for a rolling
//!   update) only once each TCP port it publishes accepts a connection at the container's own
//!   address (`readiness_targets`; the driver's connects, `health::Readiness`), or once
//!   `READY_WAIT_MAX_MS` passed without it. Until then it stays `starting`.
//! - Start only on a fresh replica: a task placed here without a container is created and
//!   started; a stopped one is started again only once `restart_at` is due. A start whose
//!   host ports are held by a container being removed waits for that removal.
//! - `stopAfterDisconnect`: once the node has been out of contact with the leader that long,
//!   the task's container is removed.
//! - Health: the driver probes the kept running container of a task with a check (see
//!   `health`); where the probe's health of that container differs from what the replica
//!   recorded, it is reported (`ReportHealth`: only transitions travel). Once the replica
//!   records `unhealthy` for the run the probe also calls unhealthy, the container is
//!   stopped with the task's grace: its exit is reported like any other and the restart
//!   policy brings it back (a new run, `starting` again).

use crate::health::Verdict;
use crate::{FENCE_GRACE_MS, LABEL_ALLOC, STARTS_IN_FLIGHT_MAX, STOP_GRACE_MS};
use orion_docker::{ContainerInfo, ContainerState};
use orion_types::{AllocId, AllocStatus, Health, PortMapping, Protocol, Task, TaskId, TaskState};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// Why a container is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoveReason {
    /// Its allocation is not current on this node (deleted, re-placed, or unknown): the fence.
    NotCurrent,
    /// Another container of the same allocation is kept.
    Duplicate,
    /// The node has been cut off from the quorum longer than the task's `stopAfterDisconnect`.
    Disconnected,
    /// Its task was stopped (deleted, scaled down, replaced, drained) while this node
    /// watched: a graceful stop, not a fence.
    Stopped,
    /// Its health check failed its retries (only stopped: the restart policy decides).
    Unhealthy,
}

/// One thing the driver does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecAction {
    /// Stop the container if it runs (its stop signal, `stop_grace_ms`, then SIGKILL) and
    /// remove it. `stop_grace_ms` is `None` for a container that does not run.
    Remove {
        container_id: String,
        /// The allocation label it carries (empty if none).
        alloc: String,
        stop_grace_ms: Option<u64>,
        why: RemoveReason,
    },
    /// Only stop the container: while starts are pending the engine's time goes to them, and
    /// a stopped container is no duplicate and holds no port; a later plan removes it.
    Stop {
        container_id: String,
        alloc: String,
        grace_ms: u64,
        why: RemoveReason,
    },
    /// Create (unless `existing`) and start the task's container, then report the outcome.
    Start {
        task: Box<Task>,
        existing: Option<String>,
    },
    /// Propose a report through Raft.
    Report {
        task_id: TaskId,
        alloc: AllocId,
        status: AllocStatus,
    },
    /// Propose a health transition through Raft, with the last probe's output.
    ReportHealth {
        task_id: TaskId,
        alloc: AllocId,
        health: Health,
        output: String,
    },
}

/// The health check of a kept container's current run, as the driver's probes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeView {
    /// The container probed: a view of another container says nothing of this one.
    pub container_id: String,
    pub health: Health,
    /// The last probe's output (bounded).
    pub output: String,
}

/// Work the driver already has in flight: the plan does not ask for it again.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// Allocations with a start job running.
    pub starting: BTreeSet<AllocId>,
    /// Containers with a remove job running.
    pub removing: BTreeSet<String>,
}

/// Everything `plan` decides from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Tasks the local replica places on this node.
    pub desired: &'a [&'a Task],
    /// This node's containers, as the runtime lists them.
    pub actual: &'a [ContainerInfo],
    pub now_ms: u64,
    /// The replica has caught up with the leader since the last gap in contact: starts are
    /// allowed. False: only fencing, reports and disconnect stops.
    pub fresh: bool,
    /// Milliseconds since this node last heard from a leader (or, on the leader, since a
    /// quorum last acknowledged it); `None` when unknown.
    pub leader_contact_age_ms: Option<u64>,
    pub in_flight: &'a InFlight,
    /// Allocations seen current on this node since the replica was last known fresh, with
    /// the stop grace of their task (`Plan::watched` of the previous pass).
    pub watched: &'a BTreeMap<AllocId, u64>,
    /// The health checks of running containers, by allocation.
    pub probes: &'a BTreeMap<AllocId, ProbeView>,
    /// Containers held for draining, with when the hold began (`Plan::draining` of the
    /// previous pass).
    pub draining: &'a BTreeMap<String, u64>,
    /// Established connections on the ports of draining containers, as the driver last
    /// counted them; absent: none seen (or not observable).
    pub connections: &'a BTreeMap<String, u32>,
    /// The readiness waits of new service-task containers without a health check, by
    /// allocation (see `readiness_targets`).
    pub readiness: &'a BTreeMap<AllocId, ReadyView>,
}

/// Where a new container's readiness wait stands, as the driver's connects see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyView {
    /// The container waited on: a view of another container says nothing of this one.
    pub container_id: String,
    pub verdict: Verdict,
}

/// The addresses a new run of `task` in container `c` must accept a connection on before it
/// is reported running (and so joins DNS and every node's mesh, and counts as up for a
/// rolling update): each TCP port the container publishes, at the container's own address.
/// Empty (no wait) for a one-off task (no endpoint), a task with a health check (its check
/// decides when it joins), a container without TCP ports, or one without an address of its
/// own. The container's address, not the published port: on loopback the engine's userland
/// proxy accepts on the published port whether or not anything listens behind it.
pub fn readiness_targets(task: &Task, c: &ContainerInfo) -> Vec<SocketAddr> {
    if task.service.is_none() || task.spec.healthcheck.is_some() {
        return Vec::new();
    }
    let Some(ip) = c
        .ip_address
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
    else {
        return Vec::new();
    };
    let ports: BTreeSet<u16> = c
        .ports
        .iter()
        .filter(|p| p.protocol == "tcp")
        .map(|p| p.container_port)
        .collect();
    ports.into_iter().map(|p| SocketAddr::new(ip, p)).collect()
}

/// Whether a new run may be reported running: it needs no readiness wait, or its wait
/// ended (ready, or given up at `READY_WAIT_MAX_MS`).
fn ready_to_join(
    task: &Task,
    alloc: &str,
    c: &ContainerInfo,
    readiness: &BTreeMap<AllocId, ReadyView>,
) -> bool {
    if readiness_targets(task, c).is_empty() {
        return true;
    }
    readiness
        .get(alloc)
        .is_some_and(|r| r.container_id == c.id && r.verdict != Verdict::Waiting)
}

/// How long a container stays out of every node's endpoint view before its stop signal, at
/// least: the stop is one Raft entry, applied on every node within a heartbeat or two, and
/// each node rebuilds its view and its proxies read it at once; a second covers a follower
/// that trails (the same bound as a failing endpoint leaving every view). Capped by the
/// task's stop grace.
pub const DRAIN_SETTLE_MS: u64 = 1_000;
/// While connections remain, the driver counts them again this often.
pub const DRAIN_POLL_MS: u64 = 200;

/// The actions, sorted (stops and removes by container, then per allocation its start or
/// reports), and
/// when the next restart falls due, if any: the driver plans again then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<ExecAction>,
    pub wake_at_ms: Option<u64>,
    /// How the next pass's `PlanInput::watched` differs from this one's: on a fresh
    /// replica, the allocations seen current so far that still have a task here or a
    /// container; otherwise nothing (a stale replica proves nothing, so what leaves next is
    /// fenced).
    pub watch: WatchChange,
    /// Containers held for draining, with when the hold began: the next pass's
    /// `PlanInput::draining`.
    pub draining: BTreeMap<String, u64>,
}

/// The grace of a deliberate stop of the task's container: its `stopGracePeriod`; a plain
/// task has none and keeps the short grace it always had.
pub fn stop_grace_ms(task: &Task) -> u64 {
    task.spec.stop_grace_period_ms.unwrap_or(FENCE_GRACE_MS)
}

/// Starts the plan may still ask for: the driver runs at most `STARTS_IN_FLIGHT_MAX` at once,
/// so a plan over thousands of placed tasks asks for only as many as can begin now (in
/// allocation order) instead of copying every one into an action the driver would drop.
struct Starts {
    room: usize,
    /// Some task wanted a start (asked for or not).
    wanted: bool,
}

fn push_start(out: &mut Vec<ExecAction>, starts: &mut Starts, make: impl FnOnce() -> ExecAction) {
    starts.wanted = true;
    if starts.room > 0 {
        starts.room -= 1;
        out.push(make());
    }
}

/// Decides what to do on this node now.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let desired = Desired::of(input.desired);
    let mut containers: Vec<&ContainerInfo> = input.actual.iter().collect();
    containers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));

    let mut out = Removals {
        fenced: Vec::new(),
        leaving_ports: BTreeSet::new(),
    };

    // Fence and de-duplicate: keep one container per current allocation, preferring a running
    // one, then the first by name.
    let mut kept: BTreeMap<&str, &ContainerInfo> = BTreeMap::new();
    for c in containers {
        let alloc = alloc_of(c);
        if !desired.contains(alloc) {
            match input.watched.get(alloc) {
                Some(grace) => out.add(c, *grace, RemoveReason::Stopped),
                None => out.add(c, FENCE_GRACE_MS, RemoveReason::NotCurrent),
            }
            continue;
        }
        match kept.get(alloc) {
            None => {
                kept.insert(alloc, c);
            }
            Some(k) if k.state != ContainerState::Running && c.state == ContainerState::Running => {
                let old = *k;
                kept.insert(alloc, c);
                out.add(old, FENCE_GRACE_MS, RemoveReason::Duplicate);
            }
            Some(_) => out.add(c, FENCE_GRACE_MS, RemoveReason::Duplicate),
        }
    }

    let disconnected = |t: &Task| {
        matches!(
            (t.spec.stop_after_disconnect_ms, input.leader_contact_age_ms),
            (Some(limit), Some(age)) if age >= limit
        )
    };
    let mut per_alloc: Vec<ExecAction> = Vec::new();
    let mut wake_at_ms: Option<u64> = None;
    let mut starts = Starts {
        room: STARTS_IN_FLIGHT_MAX.saturating_sub(input.in_flight.starting.len()),
        wanted: false,
    };
    for &(alloc, task) in &desired.0 {
        let container = kept.get(alloc).copied();
        if disconnected(task) {
            if let Some(c) = container {
                let grace = task.spec.stop_grace_period_ms.unwrap_or(STOP_GRACE_MS);
                out.add(c, grace, RemoveReason::Disconnected);
            }
            continue;
        }
        if input.in_flight.starting.contains(alloc) {
            continue;
        }
        let report = |status: AllocStatus| ExecAction::Report {
            task_id: task.id.clone(),
            alloc: alloc.to_string(),
            status,
        };
        let start = |existing: Option<&ContainerInfo>| ExecAction::Start {
            task: Box::new((*task).clone()),
            existing: existing.map(|c| c.id.clone()),
        };
        let may_start = input.fresh && !wants_leaving_port(task, &out.leaving_ports);
        match (task.state, container) {
            (TaskState::Scheduled | TaskState::Starting, None) if may_start => {
                push_start(&mut per_alloc, &mut starts, || start(None));
            }
            (TaskState::Scheduled | TaskState::Starting | TaskState::Running, Some(c))
                if c.state == ContainerState::Running =>
            {
                let ports = mappings(c);
                let new_run = task.state != TaskState::Running
                    || task.container_id.as_deref() != Some(c.id.as_str());
                if (new_run && ready_to_join(task, alloc, c, input.readiness))
                    || (!new_run && task.ports != ports)
                {
                    per_alloc.push(report(AllocStatus::Running {
                        container_id: c.id.clone(),
                        ports,
                    }));
                }
                if let Some(probe) = input.probes.get(alloc).filter(|p| p.container_id == c.id) {
                    health_actions(task, alloc, c, probe, input.in_flight, &mut per_alloc);
                }
            }
            (
                TaskState::Scheduled | TaskState::Starting | TaskState::Running,
                Some(
                    c @ ContainerInfo {
                        state: ContainerState::Exited { code, oom_killed },
                        ..
                    },
                ),
            ) => per_alloc.push(report(AllocStatus::Exited {
                container_id: c.id.clone(),
                exit_code: *code,
                oom_killed: *oom_killed,
            })),
            (TaskState::Scheduled | TaskState::Starting, Some(c)) if may_start => {
                // Created but never started (a crash mid-start): start it.
                push_start(&mut per_alloc, &mut starts, || start(Some(c)));
            }
            (TaskState::Running, None) => {
                // The container vanished (removed from outside): count it as a kill.
                per_alloc.push(report(AllocStatus::Exited {
                    container_id: task.container_id.clone().unwrap_or_default(),
                    exit_code: 137,
                    oom_killed: false,
                }));
            }
            (TaskState::Completed | TaskState::Failed, _) => {
                if let Some(due) = task.restart_at {
                    if due > input.now_ms {
                        wake_at_ms = Some(wake_at_ms.map_or(due, |w| w.min(due)));
                    } else if may_start {
                        push_start(&mut per_alloc, &mut starts, || start(container));
                    }
                }
            }
            _ => {}
        }
    }
    let starts_pending = !input.in_flight.starting.is_empty() || starts.wanted;
    let mut draining = BTreeMap::new();
    let mut actions: Vec<ExecAction> = out
        .fenced
        .into_iter()
        .filter(|(c, ..)| !input.in_flight.removing.contains(&c.id))
        .filter(|(c, grace_ms, why)| {
            let Some(wake) = drain_hold(c, *grace_ms, *why, input, &mut draining) else {
                return true;
            };
            wake_at_ms = Some(wake_at_ms.map_or(wake, |w| w.min(wake)));
            false
        })
        .filter_map(|(c, grace_ms, why)| {
            let container_id = c.id.clone();
            let alloc = alloc_of(c).to_string();
            let stopped = matches!(
                c.state,
                ContainerState::Exited { .. } | ContainerState::Created
            );
            match (stopped, starts_pending) {
                (true, true) => None,
                (true, false) => Some(ExecAction::Remove {
                    container_id,
                    alloc,
                    stop_grace_ms: None,
                    why,
                }),
                (false, true) => Some(ExecAction::Stop {
                    container_id,
                    alloc,
                    grace_ms,
                    why,
                }),
                (false, false) => Some(ExecAction::Remove {
                    container_id,
                    alloc,
                    stop_grace_ms: Some(grace_ms),
                    why,
                }),
            }
        })
        .collect();
    actions.sort_by(|a, b| remove_key(a).cmp(remove_key(b)));
    actions.dedup();
    actions.extend(per_alloc);
    let watch = if input.fresh {
        let present: BTreeSet<&str> = input.actual.iter().map(alloc_of).collect();
        desired.watch_change(input.watched, &present)
    } else {
        WatchChange {
            clear: true,
            ..WatchChange::default()
        }
    };
    Plan {
        actions,
        wake_at_ms,
        watch,
        draining,
    }
}

/// The tasks that want a container here, by allocation, sorted: built once a pass from the
/// share (a sorted list, not a map: a pass over thousands of waiting tasks built a B-tree of
/// them every time).
struct Desired<'a>(Vec<(&'a str, &'a Task)>);

impl<'a> Desired<'a> {
    fn of(tasks: &[&'a Task]) -> Desired<'a> {
        let mut v: Vec<(&str, &Task)> = tasks
            .iter()
            .filter(|t| t.wants_container())
            .filter_map(|t| t.allocation.as_deref().map(|a| (a, *t)))
            .collect();
        // Stable, and the later of two tasks with one allocation wins, as a map's insert
        // would (allocation ids are unique; this only keeps the rule total).
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                *kept = *later;
            }
            same
        });
        Desired(v)
    }

    fn contains(&self, alloc: &str) -> bool {
        self.0.binary_search_by(|(a, _)| (*a).cmp(alloc)).is_ok()
    }

    /// What changes in the watched allocations: each current one with its task's stop grace
    /// is set, and a watched one with neither a task nor a container here any more goes. One
    /// walk over both sorted lists; only what changed is copied.
    fn watch_change(
        &self,
        watched: &BTreeMap<AllocId, u64>,
        present: &BTreeSet<&str>,
    ) -> WatchChange {
        let mut change = WatchChange::default();
        let mut old = watched.iter().peekable();
        for &(alloc, task) in &self.0 {
            while let Some((a, _)) = old.next_if(|(a, _)| a.as_str() < alloc) {
                if !present.contains(a.as_str()) {
                    change.unset.push(a.clone());
                }
            }
            let grace = stop_grace_ms(task);
            match old.next_if(|(a, _)| a.as_str() == alloc) {
                Some((_, g)) if *g == grace => {}
                _ => change.set.push((alloc.to_string(), grace)),
            }
        }
        for (a, _) in old {
            if !present.contains(a.as_str()) {
                change.unset.push(a.clone());
            }
        }
        change
    }
}

/// How a pass changes the watched allocations (`PlanInput::watched` of the next pass): a
/// change rather than the whole map, which a pass over thousands of tasks copied each time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchChange {
    /// Forget every watched allocation first (a stale replica proves nothing).
    pub clear: bool,
    /// Watch these, with their stop grace.
    pub set: Vec<(AllocId, u64)>,
    /// Stop watching these.
    pub unset: Vec<AllocId>,
}

impl WatchChange {
    /// `watched` after this change.
    pub fn apply(self, watched: &mut BTreeMap<AllocId, u64>) {
        if self.clear {
            watched.clear();
        }
        for a in &self.unset {
            watched.remove(a);
        }
        watched.extend(self.set);
    }
}

/// Whether a container leaving for `why` is held to drain first; if so, when to look again.
/// Only a deliberate stop (`Stopped`) of a running container with published ports drains: a
/// fenced one may run elsewhere too, and one without ports has no traffic to finish.
fn drain_hold(
    c: &ContainerInfo,
    grace_ms: u64,
    why: RemoveReason,
    input: &PlanInput<'_>,
    draining: &mut BTreeMap<String, u64>,
) -> Option<u64> {
    if why != RemoveReason::Stopped || c.state != ContainerState::Running || c.ports.is_empty() {
        return None;
    }
    let now = input.now_ms;
    let since = input.draining.get(&c.id).copied().unwrap_or(now).min(now);
    let settled = since.saturating_add(DRAIN_SETTLE_MS.min(grace_ms));
    let deadline = since.saturating_add(grace_ms);
    let open = input.connections.get(&c.id).copied().unwrap_or(0);
    let wake = if now < settled {
        settled
    } else if open > 0 && now < deadline {
        now.saturating_add(DRAIN_POLL_MS).min(deadline)
    } else {
        return None;
    };
    draining.insert(c.id.clone(), since);
    Some(wake)
}

/// Established TCP connections whose local port is one of `ports`, from the text of a
/// `/proc/<pid>/net/tcp` or `tcp6` file (a container's own network namespace). Lines that do
/// not parse are skipped.
pub fn established_on(proc_net_tcp: &str, ports: &[u16]) -> u32 {
    let mut n = 0u32;
    for line in proc_net_tcp.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // "01" is TCP_ESTABLISHED.
        if state != "01" {
            continue;
        }
        let port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if port.is_some_and(|p| ports.contains(&p)) {
            n = n.saturating_add(1);
        }
    }
    n
}

/// A kept running container's health: report where the probe and the replica differ; stop
/// the container once both say unhealthy (the replica has the why before the exit).
fn health_actions(
    task: &Task,
    alloc: &str,
    c: &ContainerInfo,
    probe: &ProbeView,
    in_flight: &InFlight,
    out: &mut Vec<ExecAction>,
) {
    if task.spec.healthcheck.is_none() {
        return;
    }
    if probe.health != task.health {
        out.push(ExecAction::ReportHealth {
            task_id: task.id.clone(),
            alloc: alloc.to_string(),
            health: probe.health,
            output: probe.output.clone(),
        });
    } else if probe.health == Health::Unhealthy && !in_flight.removing.contains(&c.id) {
        out.push(ExecAction::Stop {
            container_id: c.id.clone(),
            alloc: alloc.to_string(),
            grace_ms: stop_grace_ms(task),
            why: RemoveReason::Unhealthy,
        });
    }
}

/// The containers a plan fences (with the grace of their stop and why), and the host ports
/// they hold, which a start needing one waits for.
struct Removals<'a> {
    fenced: Vec<(&'a ContainerInfo, u64, RemoveReason)>,
    leaving_ports: BTreeSet<(String, u16)>,
}

impl<'a> Removals<'a> {
    fn add(&mut self, c: &'a ContainerInfo, grace_ms: u64, why: RemoveReason) {
        self.leaving_ports
            .extend(c.ports.iter().map(|p| (p.protocol.clone(), p.host_port)));
        self.fenced.push((c, grace_ms, why));
    }
}

fn remove_key(a: &ExecAction) -> &str {
    match a {
        ExecAction::Remove { container_id, .. } | ExecAction::Stop { container_id, .. } => {
            container_id
        }
        _ => "",
    }
}

fn alloc_of(c: &ContainerInfo) -> &str {
    c.labels.get(LABEL_ALLOC).map_or("", String::as_str)
}

/// Whether the task asks for a fixed host port that a leaving container still holds.
fn wants_leaving_port(task: &Task, leaving: &BTreeSet<(String, u16)>) -> bool {
    if leaving.is_empty() {
        return false;
    }
    task.spec.ports.iter().enumerate().any(|(i, p)| {
        let host = task.host_ports.get(i).copied().or(p.host_port).unwrap_or(0);
        host != 0 && leaving.contains(&(p.protocol.as_str().to_string(), host))
    })
}

/// The ports a container really bound, in the task's terms, sorted.
pub fn mappings(c: &ContainerInfo) -> Vec<PortMapping> {
    let mut out: Vec<PortMapping> = c
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = match p.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            Some(PortMapping {
                container_port: p.container_port,
                protocol,
                host_ip: p.host_ip.clone(),
                host_port: p.host_port,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.container_port, a.protocol, a.host_port).cmp(&(
            b.container_port,
            b.protocol,
            b.host_port,
        ))
    });
    out.dedup();
    out
}
