//! The executor: converges this node's Docker containers to the allocations that the
//! replicated state gives this node, and reports what happened back through Raft.
//!
//! It is level-triggered: every pass compares the whole desired set (tasks placed here) with
//! the whole actual set (containers labelled with this node's id) and acts on the difference,
//! so a missed event or a failed report is repaired by the next pass. Passes run on state
//! changes, on Docker events, on a timer, and when a restart falls due.
//!
//! Architecture invariants:
//! - It touches only containers labelled `orion.node=<this node>`.
//! - A container may run only under its node's current allocation. Any container whose
//!   `orion.alloc` label is not a current allocation of this node is stopped and removed: this
//!   is the fence against duplicates after a partition or a restart.
//! - Nothing runs before the local replica has caught up with the leader (`Cluster::ready`),
//!   so a node returning from the dead fences its stale containers before starting anything.
//! - It never decides placement; it only reports `AllocStatus`.

use futures_util::StreamExt;
use orion_docker::{
    ContainerEvent, ContainerInfo, ContainerSpec, ContainerState, DockerRuntime, PortRequest,
    RuntimeError,
};
use orion_types::{AllocStatus, BackoffConfig, Command, PortMapping, Protocol, Task, TaskState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub const LABEL_NODE: &str = "orion.node";
pub const LABEL_TASK: &str = "orion.task";
pub const LABEL_ALLOC: &str = "orion.alloc";

/// A full pass also runs on this period, to repair anything no event told us about.
/// Five seconds bounds how long a silently vanished container goes unnoticed.
const RESYNC_PERIOD: Duration = Duration::from_secs(5);
/// At most this many container starts run at once, so a burst of placements does not
/// overload the engine (dockerd serialises much of its work anyway).
const STARTS_IN_FLIGHT_MAX: usize = 8;
/// An identical report is not re-sent within this time while the first may still be in
/// flight through Raft; a lost report is re-sent after it.
const REPORT_REPEAT_AFTER: Duration = Duration::from_secs(2);
/// Docker events are buffered this deep between the event stream and the loop.
const EVENTS_QUEUE_MAX: usize = 1024;
/// Reconnecting to a broken event stream backs off from this, doubling to the max.
const EVENTS_RETRY_MIN: Duration = Duration::from_millis(200);
const EVENTS_RETRY_MAX: Duration = Duration::from_secs(5);
/// Retry period while waiting for the local replica to catch up before the first pass.
const READY_RETRY: Duration = Duration::from_millis(200);

/// What the executor needs from the node it runs in.
pub trait Cluster: Send + Sync + 'static {
    /// Tasks that the local replica places on `node` (allocation set).
    fn tasks_on(&self, node: &str) -> Vec<Task>;
    /// A digest of what `tasks_on(node)` would return (see `digest_tasks`), computed without
    /// copying the tasks: it runs on every applied entry.
    fn tasks_digest(&self, node: &str) -> u64;
    /// Bumps whenever the local replica applies something.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Proposes a report through Raft.
    fn report(&self, cmd: Command) -> impl Future<Output = Result<(), String>> + Send;
    /// Resolves once the local replica has caught up with the leader's commit index.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub node_id: String,
    /// Host address that published ports bind to.
    pub publish_ip: String,
    pub backoff: BackoffConfig,
}

/// Starts the executor loop; it ends when `shutdown` turns true.
pub fn spawn<C: Cluster>(
    cfg: ExecutorConfig,
    runtime: DockerRuntime,
    cluster: Arc<C>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ex = Executor {
            cfg,
            runtime,
            cluster,
            starting: HashSet::new(),
            jobs: JoinSet::new(),
            reported: HashMap::new(),
        };
        ex.run(shutdown).await;
    })
}

struct Executor<C: Cluster> {
    cfg: ExecutorConfig,
    runtime: DockerRuntime,
    cluster: Arc<C>,
    /// Allocations with a start job in flight.
    starting: HashSet<String>,
    jobs: JoinSet<String>,
    /// Last report sent per allocation, to avoid flooding Raft with repeats.
    reported: HashMap<String, (AllocStatus, Instant)>,
}

impl<C: Cluster> Executor<C> {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        // Fence first: nothing starts until the local replica is current.
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.cluster.ready().await {
                Ok(()) => break,
                Err(e) => debug!(error = %e, "executor waiting for the replica to catch up"),
            }
            tokio::select! {
                _ = tokio::time::sleep(READY_RETRY) => {}
                _ = shutdown.changed() => {}
            }
        }
        info!(node = %self.cfg.node_id, "executor ready; reconciling containers");
        let (events_tx, mut events) = mpsc::channel(EVENTS_QUEUE_MAX);
        let watcher = tokio::spawn(watch_events(
            self.runtime.clone(),
            self.cfg.node_id.clone(),
            events_tx,
        ));
        let mut changes = self.cluster.changes();
        let mut next_wake: Option<tokio::time::Instant> = None;
        let mut resync = tokio::time::interval(RESYNC_PERIOD);
        // Every applied entry anywhere in the cluster bumps `changes`; a pass (which lists and
        // inspects this node's containers) runs only when this node's share of the state moved,
        // or when an event, a finished job, the timer or a due restart asks for one.
        let mut seen: Option<u64> = None;
        let mut must_pass = true;
        loop {
            let fingerprint = self.fingerprint();
            if must_pass || seen != Some(fingerprint) {
                next_wake = self.pass().await;
                seen = Some(fingerprint);
            }
            must_pass = false;
            let wake = next_wake.unwrap_or_else(|| tokio::time::Instant::now() + RESYNC_PERIOD);
            tokio::select! {
                _ = shutdown.changed() => break,
                r = changes.changed() => if r.is_err() { break },
                Some(ev) = events.recv() => {
                    self.on_event(ev).await;
                    must_pass = true;
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Ok(alloc) = done { self.starting.remove(&alloc); }
                    must_pass = true;
                }
                _ = resync.tick() => must_pass = true,
                _ = tokio::time::sleep_until(wake), if next_wake.is_some() => {
                    next_wake = None;
                    must_pass = true;
                }
            }
        }
        watcher.abort();
        self.jobs.abort_all();
    }

    /// A digest of what the local replica wants on this node.
    fn fingerprint(&self) -> u64 {
        self.cluster.tasks_digest(&self.cfg.node_id)
    }

    /// One reconcile pass. Returns when the next restart falls due, if any.
    async fn pass(&mut self) -> Option<tokio::time::Instant> {
        let node = self.cfg.node_id.clone();
        let desired: BTreeMap<String, Task> = self
            .cluster
            .tasks_on(&node)
            .into_iter()
            .filter(|t| t.wants_container())
            .filter_map(|t| t.allocation.clone().map(|a| (a, t)))
            .collect();
        let actual = match self.runtime.list(&[(LABEL_NODE, &node)]).await {
            Ok(list) => list,
            Err(e) => {
                warn!(error = %e, "cannot list containers; will retry");
                return None;
            }
        };
        // Group containers by allocation; remove those not current (the fence) and duplicates.
        let mut by_alloc: BTreeMap<String, ContainerInfo> = BTreeMap::new();
        for c in actual {
            let alloc = c.labels.get(LABEL_ALLOC).cloned().unwrap_or_default();
            if !desired.contains_key(&alloc) {
                info!(container = %short(&c.id), alloc = %alloc, "removing container whose allocation is not current here");
                self.remove(&c.id).await;
                continue;
            }
            match by_alloc.get(&alloc) {
                Some(kept)
                    if kept.state == ContainerState::Running
                        || c.state != ContainerState::Running =>
                {
                    info!(container = %short(&c.id), alloc = %alloc, "removing duplicate container");
                    self.remove(&c.id).await;
                }
                Some(kept) => {
                    let old = kept.id.clone();
                    info!(container = %short(&old), alloc = %alloc, "removing duplicate container");
                    self.remove(&old).await;
                    by_alloc.insert(alloc, c);
                }
                None => {
                    by_alloc.insert(alloc, c);
                }
            }
        }
        self.reported.retain(|alloc, _| desired.contains_key(alloc));
        let now = self.cluster.now_ms();
        let mut next_due: Option<u64> = None;
        for (alloc, task) in &desired {
            if self.starting.contains(alloc) {
                continue;
            }
            let container = by_alloc.get(alloc);
            match (task.state, container) {
                (TaskState::Scheduled | TaskState::Starting, None) => {
                    self.start_job(task.clone(), None)
                }
                (TaskState::Scheduled | TaskState::Starting | TaskState::Running, Some(c))
                    if c.state == ContainerState::Running =>
                {
                    let ports = mappings(c);
                    if task.state != TaskState::Running
                        || task.container_id.as_deref() != Some(c.id.as_str())
                        || task.ports != ports
                    {
                        self.report(
                            task,
                            AllocStatus::Running {
                                container_id: c.id.clone(),
                                ports,
                            },
                        )
                        .await;
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
                ) => {
                    self.report(
                        task,
                        AllocStatus::Exited {
                            container_id: c.id.clone(),
                            exit_code: *code,
                            oom_killed: *oom_killed,
                        },
                    )
                    .await;
                }
                (TaskState::Scheduled | TaskState::Starting, Some(_)) => {
                    // Created but never started (we crashed mid-start): start it.
                    self.start_job(task.clone(), container.map(|c| c.id.clone()));
                }
                (TaskState::Running, None) => {
                    // The container vanished (removed from outside): count it as an exit.
                    let cid = task.container_id.clone().unwrap_or_default();
                    self.report(
                        task,
                        AllocStatus::Exited {
                            container_id: cid,
                            exit_code: 137,
                            oom_killed: false,
                        },
                    )
                    .await;
                }
                (TaskState::Completed | TaskState::Failed, _) => {
                    if let Some(due) = task.restart_at {
                        if due <= now {
                            self.start_job(task.clone(), container.map(|c| c.id.clone()));
                        } else {
                            next_due = Some(next_due.map_or(due, |d| d.min(due)));
                        }
                    }
                }
                _ => {}
            }
        }
        next_due
            .map(|due| tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now)))
    }

    /// Starts (or restarts) a task's container in the background.
    fn start_job(&mut self, task: Task, existing: Option<String>) {
        let Some(alloc) = task.allocation.clone() else {
            return;
        };
        if self.starting.len() >= STARTS_IN_FLIGHT_MAX {
            return; // picked up by a later pass
        }
        self.starting.insert(alloc.clone());
        let runtime = self.runtime.clone();
        let cluster = self.cluster.clone();
        let cfg = self.cfg.clone();
        self.jobs.spawn(async move {
            let status = start_container(&runtime, &cfg, &task, existing, &*cluster).await;
            send_report(&*cluster, &cfg, &task, status).await;
            alloc
        });
    }

    async fn on_event(&mut self, ev: ContainerEvent) {
        // Exits are reported from the event at once rather than on the next pass.
        let (id, labels) = match &ev {
            ContainerEvent::Died { id, labels, .. } => (id.clone(), labels.clone()),
            _ => return,
        };
        let Some(alloc) = labels.get(LABEL_ALLOC) else {
            return;
        };
        if self.starting.contains(alloc) {
            return;
        }
        let Some(task) = self
            .cluster
            .tasks_on(&self.cfg.node_id)
            .into_iter()
            .find(|t| t.allocation.as_deref() == Some(alloc.as_str()))
        else {
            return;
        };
        if !matches!(
            task.state,
            TaskState::Running | TaskState::Starting | TaskState::Scheduled
        ) {
            return;
        }
        match self.runtime.inspect(&id).await {
            Ok(info) => {
                if let ContainerState::Exited { code, oom_killed } = info.state {
                    info!(task = %task.id, code, oom_killed, "container exited");
                    self.report(
                        &task,
                        AllocStatus::Exited {
                            container_id: id,
                            exit_code: code,
                            oom_killed,
                        },
                    )
                    .await;
                }
            }
            Err(e) => debug!(error = %e, "inspect after exit failed; the next pass repairs it"),
        }
    }

    async fn report(&mut self, task: &Task, status: AllocStatus) {
        let Some(alloc) = task.allocation.clone() else {
            return;
        };
        if let Some((last, at)) = self.reported.get(&alloc)
            && *last == status
            && at.elapsed() < REPORT_REPEAT_AFTER
        {
            return;
        }
        self.reported
            .insert(alloc, (status.clone(), Instant::now()));
        // Reports go through Raft; do not hold the loop while they commit.
        let cluster = self.cluster.clone();
        let cfg = self.cfg.clone();
        let task = task.clone();
        tokio::spawn(async move { send_report(&*cluster, &cfg, &task, status).await });
    }

    async fn remove(&self, id: &str) {
        if let Err(e) = self.runtime.remove(id).await {
            warn!(container = %short(id), error = %e, "could not remove container; will retry");
        }
    }
}

/// The digest `Cluster::tasks_digest` returns: what a reconcile pass acts on.
pub fn digest_tasks<'a>(tasks: impl Iterator<Item = &'a Task>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in tasks {
        (
            &t.id,
            &t.allocation,
            t.state.as_str(),
            t.restart_at,
            &t.container_id,
            t.ports.len(),
        )
            .hash(&mut h);
    }
    h.finish()
}

async fn send_report<C: Cluster>(
    cluster: &C,
    cfg: &ExecutorConfig,
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
        at: cluster.now_ms(),
    };
    if let Err(e) = cluster.report(cmd).await {
        debug!(task = %task.id, error = %e, "report not committed; the next pass repeats it");
    }
}

/// Creates and starts the container of `task` (or starts `existing` again). Returns the
/// status to report.
async fn start_container<C: Cluster>(
    runtime: &DockerRuntime,
    cfg: &ExecutorConfig,
    task: &Task,
    existing: Option<String>,
    cluster: &C,
) -> AllocStatus {
    let restarting = matches!(task.state, TaskState::Completed | TaskState::Failed);
    // `starting` is news, not a gate: it commits while the engine creates the container.
    let starting = async {
        if !restarting {
            send_report(cluster, cfg, task, AllocStatus::Starting).await;
        }
    };
    let (_, status) = tokio::join!(starting, create_and_start(runtime, cfg, task, existing));
    status
}

async fn create_and_start(
    runtime: &DockerRuntime,
    cfg: &ExecutorConfig,
    task: &Task,
    existing: Option<String>,
) -> AllocStatus {
    let id = match existing {
        Some(id) => id,
        None => {
            if let Err(e) = runtime.ensure_image(&task.spec.image).await {
                return AllocStatus::Failed {
                    reason: image_reason(&task.spec.image, &cfg.node_id, &e),
                };
            }
            let spec = container_spec(cfg, task);
            match runtime.create(&spec).await {
                Ok(id) => id,
                Err(RuntimeError::Conflict(_)) => {
                    // A container of this allocation exists already (a crash mid-start): adopt it.
                    match runtime.inspect(&spec.name).await {
                        Ok(info) => info.id,
                        Err(e) => {
                            return AllocStatus::Failed {
                                reason: format!("could not create the container: {e}"),
                            };
                        }
                    }
                }
                Err(RuntimeError::ImageUnavailable { cause, .. }) => {
                    return AllocStatus::Failed {
                        reason: format!(
                            "image {:?} is not present on {} and could not be pulled: {cause}",
                            task.spec.image, cfg.node_id
                        ),
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
    if let Err(e) = runtime.start(&id).await {
        let _ = runtime.remove(&id).await;
        return AllocStatus::Failed {
            reason: format!("could not start the container: {e}"),
        };
    }
    match runtime.inspect(&id).await {
        Ok(info) => match info.state {
            ContainerState::Exited { code, oom_killed } => AllocStatus::Exited {
                container_id: id,
                exit_code: code,
                oom_killed,
            },
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

fn image_reason(image: &str, node: &str, e: &RuntimeError) -> String {
    match e {
        RuntimeError::ImageUnavailable { cause, .. } => {
            format!("image {image:?} is not present on {node} and could not be pulled: {cause}")
        }
        other => format!("image {image:?} could not be made ready on {node}: {other}"),
    }
}

/// The Docker container for a task's current allocation.
pub fn container_spec(cfg: &ExecutorConfig, task: &Task) -> ContainerSpec {
    let alloc = task.allocation.clone().unwrap_or_default();
    let mut labels = task.spec.labels.clone();
    labels.insert(LABEL_NODE.to_string(), cfg.node_id.clone());
    labels.insert(LABEL_TASK.to_string(), task.id.clone());
    labels.insert(LABEL_ALLOC.to_string(), alloc.clone());
    let ports = task
        .spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| PortRequest {
            container_port: p.container_port,
            protocol: p.protocol.as_str().to_string(),
            host_ip: cfg.publish_ip.clone(),
            host_port: task.host_ports.get(i).copied().or(p.host_port).unwrap_or(0),
        })
        .collect();
    ContainerSpec {
        name: format!(
            "orion-{}-{}-{}",
            sanitize(&cfg.node_id),
            short(&task.id),
            short(&alloc)
        ),
        image: task.spec.image.clone(),
        command: task.spec.command.clone(),
        env: task.spec.env.clone(),
        labels,
        memory_bytes: (task.spec.memory_bytes > 0).then_some(task.spec.memory_bytes),
        nano_cpus: (task.spec.cpu_millis > 0).then_some(task.spec.cpu_millis * 1_000_000),
        ports,
    }
}

fn mappings(c: &ContainerInfo) -> Vec<PortMapping> {
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

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Forwards this node's container events into the loop, reconnecting with back-off.
async fn watch_events(runtime: DockerRuntime, node: String, tx: mpsc::Sender<ContainerEvent>) {
    let mut delay = EVENTS_RETRY_MIN;
    loop {
        let stream = runtime.events(&[(LABEL_NODE, &node)]);
        futures_util::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    delay = EVENTS_RETRY_MIN;
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "docker event stream broke; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(EVENTS_RETRY_MAX);
    }
}
