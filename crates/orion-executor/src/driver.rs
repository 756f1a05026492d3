//! The driver: the executor's IO half. It gathers `plan`'s inputs (the local replica's tasks
//! for this node, the runtime's containers, the clock, leader contact), runs the actions as
//! concurrent jobs with bounds, and sends reports through the `Cluster`.
//!
//! Concurrency: starts, removals and reports each have their own bound of jobs in flight, so a
//! slow stop never delays a start; an action over its bound is left for a later pass (one
//! runs whenever a job ends). Actions are issued in the plan's sorted order. The loop itself
//! only awaits the list call of a pass; every runtime call is guarded by a backstop timeout.
//!
//! Freshness: nothing runs before the local replica has caught up with the leader
//! (`Cluster::ready`). After any gap in contact with the leader, or a stall of this process
//! (the loop's own clock samples jump), the replica is no longer known fresh: passes go on
//! fencing and reporting, but nothing starts until `ready` succeeds again.
//!
//! Health checks: for each running container of a task with a check, the driver keeps a
//! `health::Probe` per container run and runs its probes (`probe::run`) as jobs, one at a
//! time per container, at most `PROBES_IN_FLIGHT_MAX` at once, each within its timeout. A
//! probe that turns the health asks for a pass, whose plan reports the transition.
//!
//! No std threads, no real sleeps: waiting is `tokio::time`, time for decisions is the
//! injected `Clock`, so the simulator can run it on paused time.

use crate::health::{Outcome, Policy, Probe, Readiness, Verdict};
use crate::plan::{
    ExecAction, InFlight, PlanInput, ProbeView, ReadyView, RemoveReason, mappings, plan,
    readiness_targets,
};
use crate::runtime::ContainerRuntime;
use crate::{
    Cluster, ExecutorConfig, LABEL_ALLOC, LABEL_NODE, LABEL_TASK, container_spec, probe, short,
};
use futures_util::StreamExt;
use orion_docker::{ContainerInfo, ContainerState, RuntimeError};
use orion_state::ClusterState;
use orion_types::env::Clock;
use orion_types::service::{HealthCheck, HealthTest};
use orion_types::{AllocId, AllocStatus, Command, Health, Task, TaskState};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// A full pass also runs on this period, to repair anything no event told us about.
/// Five seconds bounds how long a silently vanished container goes unnoticed.
const RESYNC_PERIOD: Duration = Duration::from_secs(5);
/// Least time from the end of one pass to the start of the next. A pass costs what the node
/// holds (thousands of waiting tasks on a node the scheduler filled faster than its engine
/// starts them); under a write load every applied entry touches the share, and without a gap
/// the executor would plan once per entry. What asks for a pass inside the gap waits for its
/// end and is served by one pass; the first pass after a quiet spell runs at once, so a lone
/// placement starts without delay.
const PASS_GAP_MIN: Duration = Duration::from_millis(20);
/// The gap is also at least this many times the last pass's planning time, so planning takes
/// at most about a tenth of a core however much the node holds (about 3 ms a plan at 8,000
/// waiting tasks: a 30 ms gap).
const PASS_GAP_PER_PLAN: u32 = 10;
/// The gap never exceeds this: a process frozen in the middle of a plan (a stall the executor
/// must then answer: the `stale_replica_after_a_stall` tests) would otherwise measure the freeze as
/// planning time and hold every pass back ten times as long.
const PASS_GAP_MAX: Duration = Duration::from_millis(500);

/// The least time between the end of a pass and the start of the next, given how long the
/// last one planned (measured on tokio's clock: zero in the simulator's paused time, so its
/// runs stay deterministic).
pub(crate) fn pass_gap(last_plan: Duration) -> Duration {
    last_plan
        .saturating_mul(PASS_GAP_PER_PLAN)
        .clamp(PASS_GAP_MIN, PASS_GAP_MAX)
}
/// Container starts in flight at once: a burst of placements must not overload the engine
/// (dockerd serialises much of its work anyway), yet eight keep a returning node's new
/// allocations moving while it fences old ones.
pub const STARTS_IN_FLIGHT_MAX: usize = 8;
/// Stops and removals in flight at once, counted apart from starts so that slow stops never
/// hold a start back. Eight turn the 14 stale containers of the serial-executor bug into two
/// rounds of a one-second grace.
pub const REMOVES_IN_FLIGHT_MAX: usize = 8;
/// Health probes in flight at once on this node: each is a connection or an exec in the
/// engine; 32 keep a node with many checked tasks probing on time without a burst of execs
/// swamping dockerd. More wait for a slot (their probe is late, not lost).
pub const PROBES_IN_FLIGHT_MAX: usize = 32;
/// Reports proposed at once; each is one Raft write, and more wait for the next pass.
const REPORTS_IN_FLIGHT_MAX: usize = 64;
/// An identical report is not re-sent within this time while the first may still be in
/// flight through Raft; a lost report is re-sent after it.
const REPORT_REPEAT_AFTER_MS: u64 = 2_000;
/// Reconnecting to a broken event stream backs off from this, doubling to the max.
const EVENTS_RETRY_MIN: Duration = Duration::from_millis(200);
const EVENTS_RETRY_MAX: Duration = Duration::from_secs(5);
/// Retry period of the catch-up check while the replica is not known fresh.
const READY_RETRY: Duration = Duration::from_millis(200);
/// One catch-up check gives up after this long (a write without a leader waits up to 4 s).
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Leader contact is sampled this often, and the stall watch ticks this often (a stall of
/// this process shows as two ticks much further apart).
const CONTACT_CHECK_PERIOD: Duration = Duration::from_millis(200);
/// Longer than this without leader contact, or between two stall-watch ticks, is a gap: the
/// leader heartbeats every 50 ms and elects within 300-600 ms, so a second is never normal.
pub const CONTACT_GAP_MS: u64 = 1_000;
/// Backstop bound on every runtime call the driver makes, above the runtime's own bounds
/// (30 s for Docker's container calls): a runtime that breaks its contract cannot wedge a job.
const CALL_BACKSTOP: Duration = Duration::from_secs(60);
/// Backstop on making an image present: Docker bounds a pull at five minutes.
const IMAGE_BACKSTOP: Duration = Duration::from_secs(330);

/// What a finished job tells the loop.
enum Done {
    Started(AllocId),
    Removed(String),
    Reported,
    /// A catch-up check of the given epoch ended (true: the replica is current).
    Ready(u64, bool),
    /// A health probe of run `run` of allocation `alloc` ended.
    Probed {
        alloc: AllocId,
        run: u64,
        outcome: Outcome,
        output: String,
    },
    /// A readiness connect of run `run` of allocation `alloc` ended.
    Connected {
        alloc: AllocId,
        run: u64,
        passed: bool,
        output: String,
    },
}

/// The readiness wait of one new container run (`plan::readiness_targets`).
struct Waiter {
    run: u64,
    container_id: String,
    targets: Vec<SocketAddr>,
    readiness: Readiness,
    in_flight: bool,
}

/// One readiness connect to a port: a container on this host answers a connect in well
/// under a millisecond, or refuses it; a second is a container that does not answer at all.
const READY_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The health check of one container run of an allocation.
struct Prober {
    /// Distinguishes this run from a later one of the same allocation (a result of an
    /// earlier run is dropped).
    run: u64,
    container_id: String,
    /// The container's start time as the engine gives it: a restart is a new run.
    started_at: Option<String>,
    check: HealthCheck,
    addr: Option<SocketAddr>,
    probe: Probe,
    in_flight: bool,
}

/// Runs the executor until `shutdown` turns true.
pub async fn run<R: ContainerRuntime, C: Cluster>(
    cfg: ExecutorConfig,
    runtime: R,
    cluster: Arc<C>,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) {
    let mut ex = Executor {
        cfg,
        runtime,
        cluster,
        clock,
        in_flight: InFlight::default(),
        reports_in_flight: 0,
        jobs: JoinSet::new(),
        reported: BTreeMap::new(),
        reported_health: BTreeMap::new(),
        told_unhealthy: Vec::new(),
        fresh: false,
        ever_fresh: false,
        epoch: 0,
        ready_in_flight: false,
        ready_checks: 0,
        stall_watch: Arc::new(StallWatch::default()),
        watched: BTreeMap::new(),
        draining: BTreeMap::new(),
        probers: BTreeMap::new(),
        waiters: BTreeMap::new(),
        probes_in_flight: 0,
        runs: 0,
        last_plan: Duration::ZERO,
    };
    ex.run(shutdown).await;
}

struct Executor<R: ContainerRuntime, C: Cluster> {
    cfg: ExecutorConfig,
    runtime: R,
    cluster: Arc<C>,
    clock: Arc<dyn Clock>,
    in_flight: InFlight,
    reports_in_flight: usize,
    jobs: JoinSet<Done>,
    /// Last report sent per allocation and when, so Raft is not flooded with repeats.
    reported: BTreeMap<AllocId, (AllocStatus, u64)>,
    /// The same for health transitions.
    reported_health: BTreeMap<AllocId, (Health, u64)>,
    /// The replica caught up with the leader after the last gap in contact.
    fresh: bool,
    /// It has been fresh at least once in this process: before that no pass runs at all (a
    /// restarted node's replica may trail what it last acted on).
    ever_fresh: bool,
    /// Bumped on every gap: a catch-up check that began before it proves nothing.
    epoch: u64,
    ready_in_flight: bool,
    /// Catch-up checks begun; all but the first wait `READY_RETRY` before asking.
    ready_checks: u64,
    stall_watch: Arc<StallWatch>,
    /// Allocations seen current while fresh, with their stop grace (`Plan::watched`).
    watched: BTreeMap<AllocId, u64>,
    /// Containers held to drain before their stop, since when (`Plan::draining`).
    draining: BTreeMap<String, u64>,
    /// Health checks of running containers, by allocation.
    probers: BTreeMap<AllocId, Prober>,
    /// Readiness waits of new containers, by allocation.
    waiters: BTreeMap<AllocId, Waiter>,
    probes_in_flight: usize,
    /// The failing allocations last told to `Cluster::local_unhealthy`.
    told_unhealthy: Vec<AllocId>,
    /// Container runs probed so far (the next `Prober::run`).
    runs: u64,
    /// How long the last pass took to take its share and plan (CPU, not Docker): sets the
    /// gap before the next pass (`pass_gap`).
    last_plan: Duration,
}

/// What the stall watch saw: the largest gap between two of its ticks since the last contact
/// sample, and when it last ticked.
#[derive(Debug, Default)]
struct StallWatch {
    worst_gap_ms: AtomicU64,
    last_tick_ms: AtomicU64,
}

impl<R: ContainerRuntime, C: Cluster> Executor<R, C> {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        let wake_events = Arc::new(Notify::new());
        let watcher = tokio::spawn(watch_events(
            self.runtime.clone(),
            self.cfg.node_id.clone(),
            wake_events.clone(),
        ));
        self.stall_watch
            .last_tick_ms
            .store(self.clock.now_ms(), Ordering::SeqCst);
        let stalls = tokio::spawn(watch_stalls(self.clock.clone(), self.stall_watch.clone()));
        self.check_ready();
        let mut changes = self.cluster.changes();
        let mut resync = tokio::time::interval(RESYNC_PERIOD);
        let mut contact = tokio::time::interval(CONTACT_CHECK_PERIOD);
        contact.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_wake: Option<tokio::time::Instant> = None;
        let mut probe_wake: Option<tokio::time::Instant> = None;
        // Every applied entry anywhere in the cluster bumps `changes`; a pass (which lists this
        // node's containers) runs only when this node's share of the state moved, or when an
        // event, a finished job, the timer or a due restart asks for one.
        let mut seen: Option<u64> = None;
        let mut must_pass = true;
        let mut last_pass: Option<tokio::time::Instant> = None;
        let mut gap_wake: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.ever_fresh {
                let fingerprint = self.cluster.share_version(&self.cfg.node_id);
                if must_pass || seen != Some(fingerprint) {
                    let gap_end = last_pass
                        .map(|at| at + pass_gap(self.last_plan))
                        .filter(|end| *end > tokio::time::Instant::now());
                    match gap_end {
                        // Asked for inside the gap: kept (`must_pass`, `seen`) for its end.
                        Some(end) => gap_wake = Some(end),
                        None => {
                            self.sample_contact();
                            next_wake = self.pass().await;
                            seen = Some(fingerprint);
                            must_pass = false;
                            gap_wake = None;
                            last_pass = Some(tokio::time::Instant::now());
                        }
                    }
                }
                probe_wake = self.spawn_probes();
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                r = changes.changed() => if r.is_err() { break },
                _ = wake_events.notified() => must_pass = true,
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Ok(done) = done {
                        must_pass |= self.finished(done);
                    }
                }
                _ = resync.tick() => must_pass = true,
                _ = contact.tick() => self.sample_contact(),
                _ = sleep_until_opt(next_wake) => {
                    next_wake = None;
                    must_pass = true;
                }
                _ = sleep_until_opt(probe_wake) => probe_wake = None,
                _ = sleep_until_opt(gap_wake) => gap_wake = None,
            }
        }
        watcher.abort();
        stalls.abort();
        self.jobs.abort_all();
    }

    /// Books a finished job; true when a pass should follow.
    fn finished(&mut self, done: Done) -> bool {
        match done {
            Done::Started(alloc) => {
                self.in_flight.starting.remove(&alloc);
                true
            }
            Done::Removed(id) => {
                self.in_flight.removing.remove(&id);
                true
            }
            Done::Reported => {
                self.reports_in_flight = self.reports_in_flight.saturating_sub(1);
                false
            }
            Done::Probed {
                alloc,
                run,
                outcome,
                output,
            } => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                let now = self.clock.now_ms();
                match self.probers.get_mut(&alloc).filter(|p| p.run == run) {
                    Some(p) => {
                        p.in_flight = false;
                        let turned = p.probe.record(outcome, &output, now);
                        if let Some(h) = turned {
                            info!(alloc = %alloc, container = %short(&p.container_id), health = h.as_str(), output = %p.probe.output, "health changed");
                            self.tell_unhealthy();
                        }
                        turned.is_some()
                    }
                    None => false,
                }
            }
            Done::Connected {
                alloc,
                run,
                passed,
                output,
            } => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                let now = self.clock.now_ms();
                match self.waiters.get_mut(&alloc).filter(|w| w.run == run) {
                    Some(w) => {
                        w.in_flight = false;
                        let turned = w.readiness.record(passed, &output, now);
                        match turned {
                            Some(Verdict::Ready) => {
                                debug!(alloc = %alloc, container = %short(&w.container_id), waited_ms = now.saturating_sub(w.readiness.started_ms), "ports accept connections: reporting running")
                            }
                            Some(_) => {
                                warn!(alloc = %alloc, container = %short(&w.container_id), output = %w.readiness.output, "ports did not accept a connection in time: reporting running anyway")
                            }
                            None => {}
                        }
                        turned.is_some()
                    }
                    None => false,
                }
            }
            Done::Ready(epoch, ok) => {
                self.ready_in_flight = false;
                if epoch != self.epoch {
                    self.check_ready();
                    false
                } else if ok {
                    if !self.fresh {
                        info!(node = %self.cfg.node_id, "replica caught up with the leader; reconciling containers");
                    }
                    self.fresh = true;
                    self.ever_fresh = true;
                    true
                } else {
                    self.check_ready();
                    false
                }
            }
        }
    }

    /// Looks for a gap in leader contact or a stall of this process since the last sample.
    fn sample_contact(&mut self) {
        // A stall shows in the watch's ticks, or, just after one and before the watch ran
        // again, as a watch that has not ticked for too long.
        let since_tick = self
            .clock
            .now_ms()
            .saturating_sub(self.stall_watch.last_tick_ms.load(Ordering::SeqCst));
        let stalled = self.stall_watch.worst_gap_ms.swap(0, Ordering::SeqCst) > CONTACT_GAP_MS
            || since_tick > CONTACT_GAP_MS;
        let lost = self
            .cluster
            .leader_contact_age_ms()
            .is_some_and(|age| age > CONTACT_GAP_MS);
        if stalled || lost {
            self.epoch += 1;
            // What leaves during or right after a gap may have moved elsewhere: it is fenced.
            self.watched.clear();
            if self.fresh {
                info!(node = %self.cfg.node_id, stalled, "gap in contact with the leader; nothing starts until the replica catches up again");
                self.fresh = false;
            }
            self.check_ready();
        }
    }

    /// Starts a catch-up check unless one is running; a failed one retries after a pause.
    fn check_ready(&mut self) {
        if self.ready_in_flight {
            return;
        }
        self.ready_in_flight = true;
        let cluster = self.cluster.clone();
        let epoch = self.epoch;
        let first = self.ready_checks == 0;
        self.ready_checks += 1;
        self.jobs.spawn(async move {
            if !first {
                tokio::time::sleep(READY_RETRY).await;
            }
            let ok = matches!(
                tokio::time::timeout(READY_TIMEOUT, cluster.ready()).await,
                Ok(Ok(()))
            );
            if !ok {
                debug!("executor waiting for the replica to catch up");
            }
            Done::Ready(epoch, ok)
        });
    }

    /// One reconcile pass. Returns when the next restart falls due, if any.
    async fn pass(&mut self) -> Option<tokio::time::Instant> {
        let started = tokio::time::Instant::now();
        let next = self.pass_inner().await;
        metrics::counter!("orion_executor_passes_total").increment(1);
        metrics::histogram!("orion_executor_pass_seconds").record(started.elapsed().as_secs_f64());
        next
    }

    async fn pass_inner(&mut self) -> Option<tokio::time::Instant> {
        let node = self.cfg.node_id.clone();
        let actual = match guard(
            "list",
            CALL_BACKSTOP,
            self.runtime.list(&[(LABEL_NODE, &node)]),
        )
        .await
        {
            Ok(list) => list,
            Err(e) => {
                warn!(error = %e, "cannot list containers; will retry");
                return None;
            }
        };
        let now = self.clock.now_ms();
        let leader_contact_age_ms = self.cluster.leader_contact_age_ms();
        // The share is what holds the node plus the tasks of its containers: a finished task
        // without a container needs nothing, and a node that ran thousands keeps each pass
        // as short as what it runs now. Its tasks are shared with the replica, and planned
        // over without its lock; only the tasks to start are copied, into their actions.
        let with_containers: Vec<&str> = actual
            .iter()
            .filter_map(|c| c.labels.get(LABEL_TASK).map(String::as_str))
            .collect();
        let planning = tokio::time::Instant::now();
        let mut share = self.cluster.share(&node, &with_containers);
        ClusterState::order_share(&mut share);
        let desired: Vec<&Task> = share.iter().map(|t| &**t).collect();
        let decided = self.plan_over(&desired, &actual, now, leader_contact_age_ms);
        drop(desired);
        drop(share);
        self.last_plan = planning.elapsed();
        self.tell_unhealthy();
        decided.watch.apply(&mut self.watched);
        self.draining = decided.draining;
        for action in decided.actions {
            self.execute(action, now);
        }
        decided
            .wake_at_ms
            .map(|due| tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now)))
    }

    /// The pure part of a pass over this node's tasks: probers and readiness waits brought
    /// up to date, the plan, and the report books trimmed to current allocations.
    fn plan_over(
        &mut self,
        desired: &[&Task],
        actual: &[ContainerInfo],
        now: u64,
        leader_contact_age_ms: Option<u64>,
    ) -> crate::plan::Plan {
        let running = running_by_alloc(actual);
        self.sync_probers(desired, &running, now);
        self.sync_waiters(desired, &running, now);
        let readiness: BTreeMap<AllocId, ReadyView> = self
            .waiters
            .iter()
            .map(|(alloc, w)| {
                let view = ReadyView {
                    container_id: w.container_id.clone(),
                    verdict: w.readiness.verdict,
                };
                (alloc.clone(), view)
            })
            .collect();
        let views: BTreeMap<AllocId, ProbeView> = self
            .probers
            .iter()
            .map(|(alloc, p)| {
                let view = ProbeView {
                    container_id: p.container_id.clone(),
                    health: p.probe.health,
                    output: p.probe.output.clone(),
                };
                (alloc.clone(), view)
            })
            .collect();
        let connections = count_connections(actual, &self.draining);
        let decided = plan(&PlanInput {
            desired,
            actual,
            now_ms: now,
            fresh: self.fresh,
            leader_contact_age_ms,
            in_flight: &self.in_flight,
            watched: &self.watched,
            probes: &views,
            draining: &self.draining,
            connections: &connections,
            readiness: &readiness,
        });
        // The share comes in allocation order (`ClusterState::order_share`): whether a booked
        // allocation is still current is a binary search, for the few the books hold, not a
        // set built of every task's each pass.
        debug_assert!(desired.is_sorted_by_key(|t| t.allocation.as_deref()));
        let current = |alloc: &str| {
            desired
                .binary_search_by(|t| t.allocation.as_deref().cmp(&Some(alloc)))
                .is_ok()
        };
        self.reported.retain(|alloc, _| current(alloc));
        self.reported_health.retain(|alloc, _| current(alloc));
        decided
    }

    fn execute(&mut self, action: ExecAction, now: u64) {
        match action {
            ExecAction::Remove {
                container_id,
                alloc,
                stop_grace_ms,
                why,
            } => self.remove_job(container_id, alloc, stop_grace_ms, true, why),
            ExecAction::Stop {
                container_id,
                alloc,
                grace_ms,
                why,
            } => self.remove_job(container_id, alloc, Some(grace_ms), false, why),
            ExecAction::Start { task, existing } => {
                let Some(alloc) = task.allocation.clone() else {
                    return;
                };
                if self.in_flight.starting.len() >= STARTS_IN_FLIGHT_MAX {
                    return;
                }
                self.in_flight.starting.insert(alloc.clone());
                let runtime = self.runtime.clone();
                let cluster = self.cluster.clone();
                let clock = self.clock.clone();
                let cfg = self.cfg.clone();
                self.jobs.spawn(async move {
                    let restarting = matches!(task.state, TaskState::Completed | TaskState::Failed);
                    // `starting` is news, not a gate: it commits while the engine works.
                    let starting = async {
                        if !restarting {
                            send_report(&*cluster, &cfg, &*clock, &task, AllocStatus::Starting)
                                .await;
                        }
                    };
                    let (_, status) =
                        tokio::join!(starting, create_and_start(&runtime, &cfg, &task, existing));
                    // `starting` again: the container runs but its ports must accept first
                    // (a later pass reports it running); a first start said so already.
                    if status != AllocStatus::Starting || restarting {
                        send_report(&*cluster, &cfg, &*clock, &task, status).await;
                    }
                    Done::Started(alloc)
                });
            }
            ExecAction::Report {
                task_id,
                alloc,
                status,
            } => {
                if repeated(&self.reported, &alloc, &status, now)
                    || self.reports_in_flight >= REPORTS_IN_FLIGHT_MAX
                {
                    return;
                }
                if let AllocStatus::Exited {
                    exit_code,
                    oom_killed,
                    ..
                } = &status
                {
                    info!(task = %task_id, code = exit_code, oom_killed, "container exited");
                }
                self.reported.insert(alloc.clone(), (status.clone(), now));
                self.reports_in_flight += 1;
                let cmd = Command::Report {
                    node: self.cfg.node_id.clone(),
                    task_id,
                    allocation: alloc,
                    status,
                    backoff: self.cfg.backoff,
                    at: now,
                };
                self.propose(cmd);
            }
            ExecAction::ReportHealth {
                task_id,
                alloc,
                health,
                output,
            } => {
                if repeated(&self.reported_health, &alloc, &health, now)
                    || self.reports_in_flight >= REPORTS_IN_FLIGHT_MAX
                {
                    return;
                }
                self.reported_health.insert(alloc.clone(), (health, now));
                self.reports_in_flight += 1;
                let cmd = Command::ReportHealth {
                    node: self.cfg.node_id.clone(),
                    task_id,
                    allocation: alloc,
                    health,
                    output: (!output.is_empty()).then_some(output),
                    at: now,
                };
                self.propose(cmd);
            }
        }
    }

    /// Proposes a report as a job counted in `reports_in_flight`.
    fn propose(&mut self, cmd: Command) {
        let cluster = self.cluster.clone();
        self.jobs.spawn(async move {
            if let Err(e) = cluster.report(cmd).await {
                debug!(error = %e, "report not committed; the next pass repeats it");
            }
            Done::Reported
        });
    }

    /// Tells the cluster the allocations whose probe finds them unhealthy, when that changed.
    fn tell_unhealthy(&mut self) {
        let now: Vec<AllocId> = self
            .probers
            .iter()
            .filter(|(_, p)| p.probe.health == Health::Unhealthy)
            .map(|(a, _)| a.clone())
            .collect();
        if now != self.told_unhealthy {
            self.cluster.local_unhealthy(now.clone());
            self.told_unhealthy = now;
        }
    }

    /// Keeps one prober per running container of a task with a health check: a new
    /// container, or a restart of the same one, begins a new run (`starting`); a container
    /// that no longer runs, or a task that no longer wants one, drops its prober.
    fn sync_probers(&mut self, desired: &[&Task], running: &RunningByAlloc<'_>, now: u64) {
        let mut keep: BTreeMap<AllocId, Prober> = BTreeMap::new();
        for task in desired.iter().filter(|t| t.wants_container()) {
            let (Some(alloc), Some(check)) = (&task.allocation, &task.spec.healthcheck) else {
                continue;
            };
            let Some(c) = running.get(alloc.as_str()) else {
                continue;
            };
            let addr = probe::target(check, c);
            let same_run = |p: &Prober| p.container_id == c.id && p.started_at == c.started_at;
            let prober = match self.probers.remove(alloc).filter(same_run) {
                Some(mut p) => {
                    p.addr = addr;
                    p
                }
                None => {
                    self.runs += 1;
                    Prober {
                        run: self.runs,
                        container_id: c.id.clone(),
                        started_at: c.started_at.clone(),
                        check: check.clone(),
                        addr,
                        probe: Probe::new(Policy::of(check), now),
                        in_flight: false,
                    }
                }
            };
            keep.insert(alloc.clone(), prober);
        }
        self.probers = keep;
    }

    /// Keeps one readiness wait per new run that needs one (`plan::readiness_targets`): the
    /// kept running container of a task not yet recorded running in it. The wait ends with
    /// the record (or when the container stops running).
    fn sync_waiters(&mut self, desired: &[&Task], running: &RunningByAlloc<'_>, now: u64) {
        let mut keep: BTreeMap<AllocId, Waiter> = BTreeMap::new();
        for task in desired.iter().filter(|t| t.wants_container()) {
            let Some(alloc) = &task.allocation else {
                continue;
            };
            let Some(c) = running.get(alloc.as_str()) else {
                continue;
            };
            if task.state == TaskState::Running && task.container_id.as_deref() == Some(&c.id) {
                continue;
            }
            let targets = readiness_targets(task, c);
            if targets.is_empty() {
                continue;
            }
            let waiter = match self
                .waiters
                .remove(alloc)
                .filter(|w| w.container_id == c.id)
            {
                Some(mut w) => {
                    w.targets = targets;
                    w
                }
                None => {
                    self.runs += 1;
                    Waiter {
                        run: self.runs,
                        container_id: c.id.clone(),
                        targets,
                        readiness: Readiness::new(now),
                        in_flight: false,
                    }
                }
            };
            keep.insert(alloc.clone(), waiter);
        }
        self.waiters = keep;
    }

    /// Starts the probes and readiness connects that are due, within
    /// `PROBES_IN_FLIGHT_MAX`; returns when the next one falls due.
    fn spawn_probes(&mut self) -> Option<tokio::time::Instant> {
        let now = self.clock.now_ms();
        let mut next: Option<u64> = self.spawn_connects(now);
        for (alloc, p) in self.probers.iter_mut().filter(|(_, p)| !p.in_flight) {
            if !p.probe.due(now) || self.probes_in_flight >= PROBES_IN_FLIGHT_MAX {
                // A probe over the bound is due already: the next one that ends frees a slot
                // and the loop looks again at once.
                let due = p.probe.next_due_ms.max(now);
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            p.in_flight = true;
            self.probes_in_flight += 1;
            let runtime = self.runtime.clone();
            let (alloc, run, id, check, addr) = (
                alloc.clone(),
                p.run,
                p.container_id.clone(),
                p.check.clone(),
                p.addr,
            );
            self.jobs.spawn(async move {
                let (outcome, output) = probe::run(&runtime, &id, &check, addr).await;
                Done::Probed {
                    alloc,
                    run,
                    outcome,
                    output,
                }
            });
        }
        next.map(|due| tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now)))
    }

    /// Starts the readiness connects that are due; returns when the next one falls due.
    fn spawn_connects(&mut self, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        for (alloc, w) in self.waiters.iter_mut().filter(|(_, w)| !w.in_flight) {
            if w.readiness.verdict != Verdict::Waiting {
                continue;
            }
            if !w.readiness.due(now) || self.probes_in_flight >= PROBES_IN_FLIGHT_MAX {
                let due = w.readiness.next_due_ms.max(now);
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            w.in_flight = true;
            self.probes_in_flight += 1;
            let runtime = self.runtime.clone();
            let (alloc, run, id, targets) = (
                alloc.clone(),
                w.run,
                w.container_id.clone(),
                w.targets.clone(),
            );
            self.jobs.spawn(async move {
                let (passed, output) = connect_all(&runtime, &id, &targets).await;
                Done::Connected {
                    alloc,
                    run,
                    passed,
                    output,
                }
            });
        }
        next
    }
}

/// One readiness connect to each of `targets` (through the health probe's `tcp` test):
/// passed when every one accepted, else the first failure's output.
async fn connect_all<R: ContainerRuntime>(
    runtime: &R,
    id: &str,
    targets: &[SocketAddr],
) -> (bool, String) {
    let mut output = String::new();
    for addr in targets {
        let check = HealthCheck {
            test: HealthTest::Tcp,
            port: Some(addr.port()),
            interval_ms: 0,
            timeout_ms: READY_CONNECT_TIMEOUT_MS,
            retries: 0,
            start_period_ms: 0,
        };
        let (outcome, out) = probe::run(runtime, id, &check, Some(*addr)).await;
        if outcome != Outcome::Pass {
            return (false, out);
        }
        output = out;
    }
    (true, output)
}

/// Ticks every `CONTACT_CHECK_PERIOD` and keeps the largest gap seen between two ticks: a
/// gap far beyond the period means the whole process stood still (SIGSTOP, a VM pause). It
/// runs as its own task so that the loop waiting on a slow runtime call is not taken for one.
async fn watch_stalls(clock: Arc<dyn Clock>, watch: Arc<StallWatch>) {
    let mut tick = tokio::time::interval(CONTACT_CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now_ms();
        let last = watch.last_tick_ms.swap(now, Ordering::SeqCst);
        watch
            .worst_gap_ms
            .fetch_max(now.saturating_sub(last), Ordering::SeqCst);
    }
}

impl<R: ContainerRuntime, C: Cluster> Executor<R, C> {
    /// Stops (when `grace_ms` is given) and then, if `remove`, removes a container, as a job
    /// counted against `REMOVES_IN_FLIGHT_MAX`.
    fn remove_job(
        &mut self,
        container_id: String,
        alloc: String,
        grace_ms: Option<u64>,
        remove: bool,
        why: RemoveReason,
    ) {
        if self.in_flight.removing.len() >= REMOVES_IN_FLIGHT_MAX {
            return; // a later pass asks again
        }
        self.in_flight.removing.insert(container_id.clone());
        let what = match why {
            RemoveReason::NotCurrent => "its allocation is not current here",
            RemoveReason::Duplicate => "it duplicates its allocation's container",
            RemoveReason::Disconnected => "cut off from the quorum past stopAfterDisconnect",
            RemoveReason::Stopped => "its task was stopped",
            RemoveReason::Unhealthy => "its health check failed",
        };
        let verb = if remove { "removing" } else { "stopping" };
        info!(container = %short(&container_id), alloc = %alloc, grace_ms, "{verb} container: {what}");
        let runtime = self.runtime.clone();
        self.jobs.spawn(async move {
            if let Some(ms) = grace_ms {
                let grace = Duration::from_millis(ms);
                let stop = guard("stop", grace + CALL_BACKSTOP, runtime.stop(&container_id, grace));
                if let Err(e) = stop.await {
                    debug!(container = %short(&container_id), error = %e, "stop failed; removal kills it");
                }
            }
            if remove
                && let Err(e) = guard("remove", CALL_BACKSTOP, runtime.remove(&container_id)).await
            {
                warn!(container = %short(&container_id), error = %e, "could not remove container; will retry");
            }
            Done::Removed(container_id)
        });
    }
}

/// Whether `value` was reported for `alloc` so recently that it may still be on its way.
fn repeated<T: PartialEq>(
    sent: &BTreeMap<AllocId, (T, u64)>,
    alloc: &str,
    value: &T,
    now: u64,
) -> bool {
    sent.get(alloc)
        .is_some_and(|(last, at)| last == value && now.saturating_sub(*at) < REPORT_REPEAT_AFTER_MS)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a runtime call under the driver's backstop bound.
async fn guard<T>(
    op: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    let started = tokio::time::Instant::now();
    let result = match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::Timeout { op, after }),
    };
    // Observations only (no decision reads them); `op` is one of a few fixed names.
    metrics::histogram!("orion_docker_call_seconds", "call" => op)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("orion_docker_errors_total", "call" => op).increment(1);
    }
    result
}

async fn send_report<C: Cluster>(
    cluster: &C,
    cfg: &ExecutorConfig,
    clock: &dyn Clock,
    task: &Task,
    status: AllocStatus,
) {
    let Some(alloc) = task.allocation.clone() else {
        return;
    };
    let cmd = Command::Report {
        node: cfg.node_id.clone(),
        task_id: task.id.clone(),
        allocation: alloc,
        status,
        backoff: cfg.backoff,
        at: clock.now_ms(),
    };
    if let Err(e) = cluster.report(cmd).await {
        debug!(task = %task.id, error = %e, "report not committed; the next pass repeats it");
    }
}

/// Creates (unless `existing`) and starts the task's container; returns the status to report
/// (`Starting` for a running container that waits for its ports, `plan::readiness_targets`).
async fn create_and_start<R: ContainerRuntime>(
    runtime: &R,
    cfg: &ExecutorConfig,
    task: &Task,
    existing: Option<String>,
) -> AllocStatus {
    let id = match existing {
        Some(id) => id,
        None => {
            if let Err(e) = guard(
                "ensure image",
                IMAGE_BACKSTOP,
                runtime.ensure_image(&task.spec.image),
            )
            .await
            {
                return AllocStatus::Failed {
                    reason: image_reason(&task.spec.image, &cfg.node_id, &e),
                };
            }
            let spec = container_spec(cfg, task);
            match guard("create", CALL_BACKSTOP, runtime.create(&spec)).await {
                Ok(id) => id,
                Err(RuntimeError::Conflict(_)) => {
                    // A container of this allocation exists already (a crash mid-start): adopt it.
                    match guard("inspect", CALL_BACKSTOP, runtime.inspect(&spec.name)).await {
                        Ok(info) => info.id,
                        Err(e) => {
                            return AllocStatus::Failed {
                                reason: format!("could not create the container: {e}"),
                            };
                        }
                    }
                }
                Err(e @ RuntimeError::ImageUnavailable { .. }) => {
                    return AllocStatus::Failed {
                        reason: image_reason(&task.spec.image, &cfg.node_id, &e),
                    };
                }
                Err(e) => {
                    return AllocStatus::Failed {
                        reason: format!("could not create the container: {e}"),
                    };
                }
            }
        }
    };
    if let Err(e) = guard("start", CALL_BACKSTOP, runtime.start(&id)).await {
        let _ = guard("remove", CALL_BACKSTOP, runtime.remove(&id)).await;
        return AllocStatus::Failed {
            reason: format!("could not start the container: {e}"),
        };
    }
    match guard("inspect", CALL_BACKSTOP, runtime.inspect(&id)).await {
        Ok(info) => match info.state {
            ContainerState::Exited { code, oom_killed } => AllocStatus::Exited {
                container_id: id,
                exit_code: code,
                oom_killed,
            },
            _ if !readiness_targets(task, &info).is_empty() => {
                info!(task = %task.id, container = %short(&id), "container running; waiting for its ports to accept");
                AllocStatus::Starting
            }
            _ => {
                info!(task = %task.id, container = %short(&id), "container running");
                AllocStatus::Running {
                    ports: mappings(&info),
                    container_id: id,
                }
            }
        },
        Err(e) => AllocStatus::Failed {
            reason: format!("container started but cannot be inspected: {e}"),
        },
    }
}

/// Each allocation's running container, the first in the list (sorted by name): the one the
/// plan keeps. Built once a pass; each task's prober and readiness wait look theirs up here
/// instead of scanning every container, which made a pass quadratic in the containers a
/// node runs.
type RunningByAlloc<'a> = HashMap<&'a str, &'a ContainerInfo>;

fn running_by_alloc(actual: &[ContainerInfo]) -> RunningByAlloc<'_> {
    let mut running = HashMap::new();
    for c in actual.iter().filter(|c| c.state == ContainerState::Running) {
        if let Some(alloc) = c.labels.get(LABEL_ALLOC) {
            running.entry(alloc.as_str()).or_insert(c);
        }
    }
    running
}

fn image_reason(image: &str, node: &str, e: &RuntimeError) -> String {
    match e {
        RuntimeError::ImageUnavailable { cause, .. } => {
            format!("image {image:?} is not present on {node} and could not be pulled: {cause}")
        }
        other => format!("image {image:?} could not be made ready on {node}: {other}"),
    }
}

/// Wakes the loop on this node's container events, reconnecting with back-off. Events only
/// trigger a pass (which lists), so a burst coalesces into one and nothing queues up.
async fn watch_events<R: ContainerRuntime>(runtime: R, node: String, wake: Arc<Notify>) {
    let mut delay = EVENTS_RETRY_MIN;
    loop {
        let mut stream = runtime.events(&[(LABEL_NODE, &node)]);
        let mut broke = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    delay = EVENTS_RETRY_MIN;
                    wake.notify_one();
                }
                Err(e) => {
                    warn!(error = %e, "container event stream broke; reconnecting");
                    broke = true;
                    break;
                }
            }
        }
        if !broke {
            // Ended at the runtime's maximum duration: a routine reconnect.
            delay = EVENTS_RETRY_MIN;
        }
        // Events may have been missed between two streams: a pass lists everything.
        wake.notify_one();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(EVENTS_RETRY_MAX);
    }
}

/// Established connections on the container ports of each draining container, read from its
/// network namespace (`/proc/<pid>/net/tcp` and `tcp6`: a small file read, only for the few
/// containers being drained). A container without a pid, or whose files cannot be read (an
/// agent outside the host's pid namespace), counts none: it drains for the settle time only.
fn count_connections(
    actual: &[orion_docker::ContainerInfo],
    draining: &BTreeMap<String, u64>,
) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for c in actual.iter().filter(|c| draining.contains_key(&c.id)) {
        let Some(pid) = c.pid else { continue };
        let ports: Vec<u16> = c.ports.iter().map(|p| p.container_port).collect();
        let mut n = 0u32;
        for file in ["tcp", "tcp6"] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
                n = n.saturating_add(crate::plan::established_on(&text, &ports));
            }
        }
        if n > 0 {
            out.insert(c.id.clone(), n);
        }
    }
    out
}
