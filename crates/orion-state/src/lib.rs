//! The applied cluster state and the one function that changes it: `ClusterState::apply`.
//!
//! Architecture invariant: `apply` is pure and deterministic. It reads nothing but its
//! arguments (no clock, no IO, no randomness: commands carry their ids and timestamps), so
//! every node that applies the same log holds the same state. It reports the objects it
//! touched (`Key`), so the indexes and the event history look only at those. Services and
//! their deployments are applied in `services`.

use orion_types::{
    AllocStatus, BackoffConfig, ClusterConfig, Command, NodeId, NodeMeta, Placement, Protocol,
    Resources, Response, Service, Task, TaskId, TaskState, UnixMillis,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod index;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Registered and, as far as the log knows, alive.
    Up,
    /// Gossip declared it dead; its tasks were released.
    Down,
}

/// A node as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub meta: NodeMeta,
    pub status: NodeStatus,
    pub draining: bool,
    /// It left on purpose (graceful shutdown) rather than failing.
    #[serde(default)]
    pub left: bool,
    pub updated_at: UnixMillis,
}

/// One object of the state that an applied command touched (what `apply` returns: the
/// indexes and the event history look only at these).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Node(NodeId),
    Task(TaskId),
    /// The cluster-wide settings.
    Config,
    Service(String),
    /// An API token: its hash, name and role.
    Token(String),
    /// The cluster CA, its key sealed.
    Ca,
    /// The CA a rotation replaced, still trusted.
    PreviousCa,
    /// A removed node's id on the revocation list: when it was removed.
    Revoked(NodeId),
    /// The gossip key of the last rotation, and the one it replaced.
    GossipKey,
    PreviousGossipKey,
}

/// Task `id` to change in place. Tasks are behind `Arc`s so that a snapshot's copy of the
/// state shares them; a task still shared is copied here first (copy-on-write), and one that
/// only `Weak`s point at is moved to a new allocation. A snapshot relies on that: a task at
/// the address it wrote is unchanged (orion-raft's `snapshot_json`). Change tasks only through
/// `Arc::make_mut` (here) or by putting a new `Arc` in the map; never through `Arc::get_mut`
/// or unsafe code.
fn task_mut<'a>(tasks: &'a mut BTreeMap<TaskId, Arc<Task>>, id: &str) -> Option<&'a mut Task> {
    tasks.get_mut(id).map(Arc::make_mut)
}

/// The replicated state. Its JSON (snapshots) is its fields; the task indexes are rebuilt
/// when it is decoded (`StateFields`), and kept up to date by `apply`. Code that changes
/// `tasks` directly (tests building a state by hand) calls `reindex` after. A field added here
/// goes into `StateFields` and `StateCopy` (or its `CopyRest`) too (the copy's tests compare
/// the encodings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateFields")]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub tasks: BTreeMap<TaskId, Arc<Task>>,
    /// The cluster-wide settings; `None` until the bootstrapping node (or an operator) sets
    /// them, and in snapshots from before they existed.
    #[serde(default)]
    pub config: Option<ClusterConfig>,
    /// Services by id (`web`, `db.shop`).
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// API tokens by id, hashed (`orion_types::ApiToken`).
    #[serde(default)]
    pub tokens: BTreeMap<String, orion_types::ApiToken>,
    /// The cluster CA (key sealed under the cluster secret); `None` on an insecure cluster.
    #[serde(default)]
    pub ca: Option<orion_types::ClusterCa>,
    /// The CA the last rotation replaced: still trusted, so no peer is refused while nodes
    /// move to the new one.
    #[serde(default)]
    pub previous_ca: Option<orion_types::ClusterCa>,
    /// Removed nodes (the revocation list): their certificates are refused everywhere.
    #[serde(default)]
    pub revoked_nodes: BTreeMap<NodeId, UnixMillis>,
    /// The gossip key of the last rotation; `None`: the key derived from the cluster secret.
    #[serde(default)]
    pub gossip_key: Option<orion_types::GossipKeyRecord>,
    /// The one it replaced (`None`: the derived key), still accepted.
    #[serde(default)]
    pub previous_gossip_key: Option<orion_types::GossipKeyRecord>,
    #[serde(skip)]
    index: index::Index,
    #[serde(skip)]
    capacity_version: CapacityVersion,
}

/// What `ClusterState::copy_for_encoding` gives: the state's fields, in its order, with the
/// tasks as a list in id order (each shared with the state). Encodes to the same JSON as the
/// state it was copied from; decode that JSON as a `ClusterState`. `write_json` writes the
/// same bytes with each task's JSON supplied by the caller (a snapshot copies the JSON of the
/// tasks that did not change since the last one).
#[derive(Debug, Serialize)]
pub struct StateCopy {
    nodes: BTreeMap<NodeId, NodeRecord>,
    #[serde(serialize_with = "tasks_by_id")]
    tasks: Vec<Arc<Task>>,
    #[serde(flatten)]
    rest: CopyRest,
}

/// The state's fields after `tasks`, in its order.
#[derive(Debug, Serialize)]
struct CopyRest {
    config: Option<ClusterConfig>,
    services: BTreeMap<String, Service>,
    tokens: BTreeMap<String, orion_types::ApiToken>,
    ca: Option<orion_types::ClusterCa>,
    previous_ca: Option<orion_types::ClusterCa>,
    revoked_nodes: BTreeMap<NodeId, UnixMillis>,
    gossip_key: Option<orion_types::GossipKeyRecord>,
    previous_gossip_key: Option<orion_types::GossipKeyRecord>,
}

impl StateCopy {
    /// The copied task `id` (a scan: for tests).
    pub fn task(&self, id: &str) -> Option<&Arc<Task>> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The copied tasks, in id order (the order `write_json` asks for their JSON).
    pub fn tasks(&self) -> &[Arc<Task>] {
        &self.tasks
    }

    /// Appends the copy's JSON to `out`: the bytes `serde_json::to_writer` writes, except that
    /// the entries of the task map (between its braces) are what `entries` appends, given the
    /// tasks in id order. It must append each task's entry (`write_task_entry`, or bytes it
    /// wrote before for the same unchanged task), separated by commas.
    pub fn write_json<E: From<serde_json::Error>>(
        &self,
        out: &mut Vec<u8>,
        entries: impl FnOnce(&[Arc<Task>], &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        out.extend_from_slice(b"{\"nodes\":");
        serde_json::to_writer(&mut *out, &self.nodes)?;
        out.extend_from_slice(b",\"tasks\":{");
        entries(&self.tasks, out)?;
        out.push(b'}');
        // `{"config":...}`: its fields go on after the tasks, in the same object.
        let rest = serde_json::to_vec(&self.rest)?;
        out.push(b',');
        out.extend_from_slice(rest.get(1..).unwrap_or_default());
        Ok(())
    }

    /// Appends `task`'s entry in the task map: `"<id>":{...}`.
    pub fn write_task_entry(task: &Task, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *out, &task.id)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, task)
    }
}

/// The tasks as the state's map encodes them: `{id: task}` in id order.
fn tasks_by_id<S: serde::Serializer>(tasks: &[Arc<Task>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(tasks.iter().map(|t| (&t.id, t)))
}

/// Changes whenever the state changes in a way that can make room for a task that waits (see
/// `ClusterState::capacity_version`). Drawn from one counter per process, so a state that
/// was replaced (a snapshot installed) never shows a version seen before. Derived, like the
/// indexes: not part of the state's equality.
#[derive(Debug, Clone, Copy, Eq)]
struct CapacityVersion(u64);

static CAPACITY_VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl CapacityVersion {
    fn fresh() -> CapacityVersion {
        CapacityVersion(CAPACITY_VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for CapacityVersion {
    fn default() -> CapacityVersion {
        CapacityVersion::fresh()
    }
}

impl PartialEq for CapacityVersion {
    fn eq(&self, _: &CapacityVersion) -> bool {
        true
    }
}

/// `ClusterState` as its JSON holds it, without the indexes.
#[derive(Deserialize)]
struct StateFields {
    nodes: BTreeMap<NodeId, NodeRecord>,
    tasks: BTreeMap<TaskId, Arc<Task>>,
    #[serde(default)]
    config: Option<ClusterConfig>,
    #[serde(default)]
    services: BTreeMap<String, Service>,
    #[serde(default)]
    tokens: BTreeMap<String, orion_types::ApiToken>,
    #[serde(default)]
    ca: Option<orion_types::ClusterCa>,
    #[serde(default)]
    previous_ca: Option<orion_types::ClusterCa>,
    #[serde(default)]
    revoked_nodes: BTreeMap<NodeId, UnixMillis>,
    #[serde(default)]
    gossip_key: Option<orion_types::GossipKeyRecord>,
    #[serde(default)]
    previous_gossip_key: Option<orion_types::GossipKeyRecord>,
}

impl From<StateFields> for ClusterState {
    fn from(f: StateFields) -> ClusterState {
        let index = index::Index::rebuild(&f.tasks);
        ClusterState {
            nodes: f.nodes,
            tasks: f.tasks,
            config: f.config,
            services: f.services,
            tokens: f.tokens,
            ca: f.ca,
            previous_ca: f.previous_ca,
            revoked_nodes: f.revoked_nodes,
            gossip_key: f.gossip_key,
            previous_gossip_key: f.previous_gossip_key,
            index,
            capacity_version: CapacityVersion::fresh(),
        }
    }
}

impl ClusterState {
    /// The cluster-wide settings in force: the stored ones, else the defaults.
    pub fn config(&self) -> ClusterConfig {
        self.config.unwrap_or_default()
    }

    /// Applies one command. Returns what to answer the proposer and the objects it touched.
    pub fn apply(&mut self, cmd: &Command) -> (Response, Vec<Key>) {
        let (response, touched) = self.apply_command(cmd);
        // A batch's commands updated the indexes one by one already.
        if !matches!(cmd, Command::Batch { .. }) {
            self.sync_index(&touched);
        }
        (response, touched)
    }

    /// Brings the indexes up to date for the tasks among `touched`, and the capacity version
    /// if what changed can make room for a waiting task.
    fn sync_index(&mut self, touched: &[Key]) {
        let mut relevant = false;
        for key in touched {
            relevant |= match key {
                Key::Task(id) => self.index.update(&self.tasks, id),
                // Nodes (capacity, labels, status, drain), services and settings feed the
                // scheduler too.
                Key::Node(_) | Key::Service(_) | Key::Config => true,
                // Tokens and the CA never change where a task fits.
                Key::Token(_)
                | Key::Ca
                | Key::PreviousCa
                | Key::Revoked(_)
                | Key::GossipKey
                | Key::PreviousGossipKey => false,
            };
        }
        if relevant {
            self.capacity_version = CapacityVersion::fresh();
        }
    }

    /// Rebuilds the indexes from the tasks (after changing `tasks` directly).
    pub fn reindex(&mut self) {
        self.index = index::Index::rebuild(&self.tasks);
        self.capacity_version = CapacityVersion::fresh();
    }

    /// A value that changes whenever something a task holds on a node is released or
    /// changed, or a node, service or setting changes: while it stays the same (and gossip's
    /// view too), a task that could not be placed still cannot (placing others only takes
    /// room), so a placement pass need only look at the tasks that began to wait since
    /// (`waiting_after`). Not replicated and not comparable across processes.
    pub fn capacity_version(&self) -> u64 {
        self.capacity_version.0
    }

    /// The last wait number given out: tasks that begin to wait from now on get larger ones.
    /// Local to this process's copy of the state, like `capacity_version` (a state that was
    /// decoded or rebuilt numbers afresh, and shows a new `capacity_version` too).
    pub fn wait_seq(&self) -> u64 {
        self.index.wait_seq()
    }

    /// A copy of the state to encode (a snapshot), taken under the state's lock: it shares
    /// every task with this state (`Arc`; a task changed later is copied then, by
    /// `task_mut`) in a list, so no key is copied and no map is built, and it has no indexes.
    /// It encodes to the same JSON as the state.
    pub fn copy_for_encoding(&self) -> StateCopy {
        StateCopy {
            nodes: self.nodes.clone(),
            tasks: self.tasks.values().cloned().collect(),
            rest: CopyRest {
                config: self.config,
                services: self.services.clone(),
                tokens: self.tokens.clone(),
                ca: self.ca.clone(),
                previous_ca: self.previous_ca.clone(),
                revoked_nodes: self.revoked_nodes.clone(),
                gossip_key: self.gossip_key.clone(),
                previous_gossip_key: self.previous_gossip_key.clone(),
            },
        }
    }

    /// Task `id` to change by hand (tests and tools; `apply` is the way in production): copied
    /// first if a snapshot still shares it. Call `reindex` after changing tasks this way.
    pub fn task_mut(&mut self, id: &str) -> Option<&mut Task> {
        task_mut(&mut self.tasks, id)
    }

    /// The waiting tasks that began to wait after wait number `seq`, in the order they began.
    pub fn waiting_after(&self, seq: u64) -> impl Iterator<Item = &Task> + '_ {
        self.index
            .waiting_after(seq)
            .filter_map(move |id| self.tasks.get(id).map(|t| &**t))
    }

    fn apply_command(&mut self, cmd: &Command) -> (Response, Vec<Key>) {
        let mut touched = Vec::new();
        // Restart back-off comes from the replicated config, so every node restarts alike.
        let backoff_now = self.config().backoff;
        let response = match cmd {
            Command::CreateTask { task_id, spec, at } => {
                self.create_task(task_id, spec, *at, &mut touched)
            }
            Command::CreatePlacedTask {
                task_id,
                spec,
                placement,
                at,
            } => {
                let fresh = !self.tasks.contains_key(task_id);
                let mut created = Vec::new();
                let response = self.create_task(task_id, spec, *at, &mut created);
                // The leader chose the node when it proposed; other proposals may have taken
                // the room since, so the placement stands only if it still fits. If not, the
                // task waits as pending and the controller places it.
                // The new task's key joins `touched` only after the placement, so it is
                // indexed once, after this command, as placed (or as pending if the placement
                // no longer fits), not first as pending and then again as placed: the fit
                // check needs no entry for it, since a task that is not placed holds nothing
                // (`fits` counts the others).
                let response = if fresh && placement.task_id == *task_id {
                    // The answer shares the task: dropped first, the placement changes the
                    // task in place instead of copying it.
                    drop(response);
                    self.try_place(placement, *at, true, &mut touched);
                    Response::Task(Arc::clone(&self.tasks[task_id]))
                } else {
                    response
                };
                touched.append(&mut created);
                response
            }
            Command::DeleteTask { task_id, at } => match self.tasks.get_mut(task_id) {
                None => Response::NotFound(format!("task {task_id} not found")),
                Some(shared) => {
                    if shared.state != TaskState::Stopped {
                        let task = Arc::make_mut(shared);
                        task.allocation = None;
                        task.restart_at = None;
                        task.reason = None;
                        task.transition(TaskState::Stopped, *at, "deleted by a user");
                        touched.push(Key::Task(task_id.clone()));
                    }
                    Response::Task(Arc::clone(shared))
                }
            },
            Command::Place {
                placements,
                unplaced,
                at,
            } => {
                for p in placements {
                    self.try_place(p, *at, false, &mut touched);
                }
                for (task_id, reason) in unplaced {
                    let Some(task) = task_mut(&mut self.tasks, task_id) else {
                        continue;
                    };
                    if task.needs_placement() && task.reason.as_deref() != Some(reason.as_str()) {
                        task.reason = Some(reason.clone());
                        task.updated_at = *at;
                        touched.push(Key::Task(task_id.clone()));
                    }
                }
                Response::Ok
            }
            Command::Report {
                node,
                task_id,
                allocation,
                status,
                // The reporter's back-off is ignored: the cluster's applies to every node.
                backoff: _,
                at,
            } => self.fenced(node, task_id, allocation, &mut touched, |task| {
                apply_report(task, status, &backoff_now, *at)
            }),
            Command::UpsertNode { meta, at } => {
                let id = meta.id.clone();
                if self.revoked_nodes.contains_key(&id) {
                    return (
                        Response::Ignored(format!(
                            "node {id} was removed from the cluster; a machine joins again under a new id"
                        )),
                        touched,
                    );
                }
                match self.nodes.get_mut(&id) {
                    Some(rec) if meta.generation < rec.meta.generation => {
                        Response::Ignored(format!(
                            "node {id}: generation {} is older than {}",
                            meta.generation, rec.meta.generation
                        ))
                    }
                    Some(rec) if rec.meta == **meta && rec.status == NodeStatus::Up => {
                        Response::Ignored("no change".to_string())
                    }
                    // A node that left comes back only as a new process (a newer generation).
                    Some(rec) if rec.left && meta.generation == rec.meta.generation => {
                        Response::Ignored(format!(
                            "node {id} left; it returns with a new generation"
                        ))
                    }
                    Some(rec) => {
                        rec.meta = (**meta).clone();
                        rec.status = NodeStatus::Up;
                        rec.left = false;
                        rec.updated_at = *at;
                        touched.push(Key::Node(id));
                        Response::Ok
                    }
                    None => {
                        self.nodes.insert(
                            id.clone(),
                            NodeRecord {
                                meta: (**meta).clone(),
                                status: NodeStatus::Up,
                                draining: false,
                                left: false,
                                updated_at: *at,
                            },
                        );
                        touched.push(Key::Node(id));
                        Response::Ok
                    }
                }
            }
            Command::NodeDown {
                node,
                generation,
                reason,
                at,
            } => self.node_down(node, *generation, reason, false, *at, &mut touched),
            Command::NodeLeave {
                node,
                generation,
                at,
            } => self.node_down(
                node,
                *generation,
                "left the cluster",
                true,
                *at,
                &mut touched,
            ),
            Command::SetDrain { node, drain, at } => match self.nodes.get_mut(node) {
                None => Response::NotFound(format!("node {node} not found")),
                Some(rec) => {
                    if rec.draining != *drain {
                        rec.draining = *drain;
                        rec.updated_at = *at;
                        touched.push(Key::Node(node.clone()));
                    }
                    if *drain {
                        let msg = format!("node {node} is draining; moving elsewhere");
                        self.release_tasks_of(node, TaskState::Pending, &msg, *at, &mut touched);
                    }
                    Response::Ok
                }
            },
            Command::Requeue {
                task_ids,
                reason,
                at,
            } => {
                for id in task_ids {
                    let Some(task) = task_mut(&mut self.tasks, id) else {
                        continue;
                    };
                    if matches!(task.state, TaskState::Scheduled | TaskState::Starting) {
                        task.allocation = None;
                        task.reason = Some(reason.clone());
                        task.transition(TaskState::Pending, *at, reason.clone());
                        touched.push(Key::Task(id.clone()));
                    }
                }
                Response::Ok
            }
            Command::SetClusterConfig {
                config,
                if_unset,
                at: _,
            } => {
                if *if_unset && self.config.is_some() {
                    Response::Ignored("the cluster already has a configuration".to_string())
                } else if let Err(e) = config.validate() {
                    // The API validates first; this keeps an invalid config out of the state
                    // whatever proposed it.
                    Response::Ignored(format!("invalid cluster configuration: {e}"))
                } else if self.config == Some(*config) {
                    Response::Ignored("no change".to_string())
                } else {
                    self.config = Some(*config);
                    touched.push(Key::Config);
                    Response::Ok
                }
            }
            Command::CreateService { spec, at } => self.create_service(spec, *at, &mut touched),
            Command::UpdateService {
                id,
                spec,
                deployment_id,
                at,
            } => self.update_service(id, spec, deployment_id, *at, &mut touched),
            Command::ScaleService { id, replicas, at } => {
                self.scale_service(id, *replicas, *at, &mut touched)
            }
            Command::DeleteService { id, at } => self.delete_service(id, *at, &mut touched),
            Command::RollbackService {
                id,
                deployment_id,
                reason,
                at,
            } => self.rollback_service(id, deployment_id, reason.as_deref(), *at, &mut touched),
            Command::CreateServiceTasks { tasks, at } => {
                self.create_service_tasks(tasks, *at, &mut touched)
            }
            Command::StopTasks {
                task_ids,
                reason,
                at,
            } => {
                self.stop_tasks(task_ids, reason, *at, &mut touched);
                Response::Ok
            }
            Command::ForgetTasks { task_ids, .. } => {
                for id in task_ids {
                    if self
                        .tasks
                        .get(id)
                        .is_some_and(|t| t.state == TaskState::Stopped)
                    {
                        self.tasks.remove(id);
                        touched.push(Key::Task(id.clone()));
                    }
                }
                Response::Ok
            }
            Command::DeploymentProgress {
                id,
                deployment_id,
                state,
                updated,
                failed,
                message,
                at,
            } => self.deployment_progress(
                id,
                deployment_id,
                *state,
                (*updated, *failed),
                message,
                *at,
                &mut touched,
            ),
            Command::ReportHealth {
                node,
                task_id,
                allocation,
                health,
                output,
                at,
            } => self.fenced(node, task_id, allocation, &mut touched, |task| {
                services::set_health(task, *health, output.as_deref(), *at)
            }),
            Command::Batch { commands } => Response::Batch(
                commands
                    .iter()
                    .map(|c| {
                        let (r, keys) = self.apply(c);
                        touched.extend(keys);
                        r
                    })
                    .collect(),
            ),
            Command::CreateToken { token, at: _ } => {
                if self.tokens.contains_key(&token.id) {
                    Response::Conflict(format!("token {} exists", token.id))
                } else if self.tokens.len() >= orion_types::token::TOKENS_MAX {
                    Response::Invalid(format!(
                        "the cluster keeps at most {} tokens; revoke one first",
                        orion_types::token::TOKENS_MAX
                    ))
                } else {
                    self.tokens.insert(token.id.clone(), token.clone());
                    touched.push(Key::Token(token.id.clone()));
                    Response::Ok
                }
            }
            Command::SetClusterCa { ca, at: _ } => {
                if self.ca.is_some() {
                    Response::Ignored("the cluster already has a CA".to_string())
                } else {
                    self.ca = Some(ca.clone());
                    touched.push(Key::Ca);
                    Response::Ok
                }
            }
            Command::RotateClusterCa { ca, at: _ } => match &self.ca {
                Some(cur) if cur.fingerprint == ca.fingerprint => {
                    Response::Ignored("that CA is already the cluster's".to_string())
                }
                Some(cur) => {
                    self.previous_ca = Some(cur.clone());
                    self.ca = Some(ca.clone());
                    touched.push(Key::Ca);
                    touched.push(Key::PreviousCa);
                    Response::Ok
                }
                None => Response::Invalid(
                    "the cluster has no CA to rotate (it runs with --insecure)".to_string(),
                ),
            },
            Command::RotateGossipKey { key, at: _ } => {
                if self.gossip_key.as_ref().is_some_and(|k| k.id == key.id) {
                    Response::Ignored(format!("gossip key {} is already current", key.id))
                } else {
                    self.previous_gossip_key = self.gossip_key.replace(key.clone());
                    touched.push(Key::GossipKey);
                    touched.push(Key::PreviousGossipKey);
                    Response::Ok
                }
            }
            Command::RemoveNode { node, at } => {
                if self.revoked_nodes.contains_key(node) {
                    return (
                        Response::Ignored(format!("node {node} was removed already")),
                        touched,
                    );
                }
                let Some(generation) = self.nodes.get(node).map(|r| r.meta.generation) else {
                    return (
                        Response::NotFound(format!("node {node} not found")),
                        touched,
                    );
                };
                self.node_down(node, generation, "removed", true, *at, &mut touched);
                self.nodes.remove(node);
                self.revoked_nodes.insert(node.clone(), *at);
                touched.push(Key::Node(node.clone()));
                touched.push(Key::Revoked(node.clone()));
                Response::Ok
            }
            Command::RevokeToken { id, at: _ } => {
                if self.tokens.remove(id).is_some() {
                    touched.push(Key::Token(id.clone()));
                    Response::Ok
                } else {
                    Response::NotFound(format!("token {id} not found"))
                }
            }
        };
        (response, touched)
    }

    /// Runs `change` on the task if `allocation` on `node` is still its current one (the
    /// fence against late reports), and records the row if it changed anything.
    fn fenced(
        &mut self,
        node: &str,
        task_id: &str,
        allocation: &str,
        touched: &mut Vec<Key>,
        change: impl FnOnce(&mut Task) -> bool,
    ) -> Response {
        // The fence is checked before `task_mut`, which may move or copy the task.
        match self.tasks.get(task_id) {
            None => return Response::Ignored(format!("task {task_id} is unknown")),
            Some(task)
                if task.allocation.as_deref() != Some(allocation)
                    || task.node.as_deref() != Some(node) =>
            {
                return Response::Ignored(format!(
                    "allocation {allocation} of task {task_id} on {node} is no longer current"
                ));
            }
            Some(_) => {}
        }
        let Some(task) = task_mut(&mut self.tasks, task_id) else {
            return Response::Ignored(format!("task {task_id} is unknown"));
        };
        if change(task) {
            touched.push(Key::Task(task_id.to_string()));
            Response::Ok
        } else {
            // Unchanged, perhaps moved: the index's reference follows it (a repeated report
            // is the common case).
            if let Some(t) = self.tasks.get(task_id) {
                self.index.follow(task_id, t);
            }
            Response::Ignored("no change".to_string())
        }
    }

    fn create_task(
        &mut self,
        task_id: &str,
        spec: &orion_types::TaskSpec,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        if let Some(existing) = self.tasks.get(task_id) {
            // A retried proposal of the same create: answer as the first time.
            return Response::Task(Arc::clone(existing));
        }
        let task = Arc::new(Task::new(task_id.to_string(), spec.clone(), at));
        self.tasks.insert(task_id.to_string(), Arc::clone(&task));
        touched.push(Key::Task(task_id.to_string()));
        Response::Task(task)
    }

    /// Places a task that needs it on `p.node`, if that node takes placements. With
    /// `check_fit`, also only if the node still has the memory, CPU and host ports free (for
    /// placements chosen before earlier entries were applied). Returns whether it placed.
    fn try_place(
        &mut self,
        p: &Placement,
        at: UnixMillis,
        check_fit: bool,
        touched: &mut Vec<Key>,
    ) -> bool {
        let Some(node) = self.nodes.get(&p.node) else {
            return false;
        };
        if node.status != NodeStatus::Up || node.draining {
            return false;
        }
        let capacity = node.meta.capacity;
        let Some(task) = self.tasks.get(&p.task_id) else {
            return false;
        };
        if !task.needs_placement() || p.host_ports.len() != task.spec.ports.len() {
            return false;
        }
        if check_fit {
            // What this command changed so far counts (an earlier placement of the same batch).
            self.sync_index(touched);
            let Some(task) = self.tasks.get(&p.task_id) else {
                return false;
            };
            if !self.fits(&p.node, capacity, task, &p.host_ports) {
                return false;
            }
        }
        let Some(task) = self.tasks.get(&p.task_id) else {
            return false;
        };
        // A service with named volumes runs where its volumes are: the first placement
        // chooses that node, later ones must keep to it.
        let pin = task
            .service
            .as_ref()
            .and_then(|id| self.services.get(id))
            .filter(|s| s.spec.pins_to_volume_node())
            .map(|s| (s.id.clone(), s.volume_node.clone()));
        if let Some((_, Some(held))) = &pin
            && *held != p.node
        {
            return false;
        }
        if let Some((id, None)) = &pin
            && let Some(svc) = self.services.get_mut(id)
        {
            svc.volume_node = Some(p.node.clone());
            touched.push(Key::Service(id.clone()));
        }
        let Some(task) = task_mut(&mut self.tasks, &p.task_id) else {
            return false;
        };
        if let Some((_, None)) = &pin
            && orion_types::service::pinned_node(&task.spec).is_none()
        {
            // Pinned like the tasks created from now on, so that a re-placement keeps it
            // with its volume (or pending, with the scheduler's reason, if that node is gone).
            task.spec.constraints.push(orion_types::Constraint {
                attr: orion_types::NodeAttr::Id,
                op: orion_types::ConstraintOp::Eq,
                values: vec![p.node.clone()],
            });
        }
        let replaced = task.node.is_some();
        if replaced {
            task.restarts = task.restarts.saturating_add(1);
        }
        task.node = Some(p.node.clone());
        task.allocation = Some(p.allocation.clone());
        task.host_ports = p.host_ports.clone();
        task.container_id = None;
        task.ports.clear();
        task.reason = None;
        task.restart_at = None;
        task.running_since = None;
        let msg = if replaced {
            format!("placed again, on node {}", p.node)
        } else {
            format!("placed on node {}", p.node)
        };
        task.transition(TaskState::Scheduled, at, msg);
        touched.push(Key::Task(p.task_id.clone()));
        true
    }

    /// Whether `task` with these host ports still fits on `node` beside what holds resources
    /// there now.
    fn fits(&self, node: &str, capacity: Resources, task: &Task, host_ports: &[u16]) -> bool {
        let (used, ports) = self.index.used_by_others(node, &task.id);
        let need = task.spec.resources();
        let mem_ok = need.memory_bytes == 0
            || used.memory_bytes.saturating_add(need.memory_bytes) <= capacity.memory_bytes;
        let cpu_ok = need.cpu_millis == 0
            || used.cpu_millis.saturating_add(need.cpu_millis) <= capacity.cpu_millis;
        let ports_ok = task
            .spec
            .ports
            .iter()
            .zip(host_ports)
            .all(|(spec, host)| *host != 0 && !ports.contains(&(spec.protocol, *host)));
        mem_ok && cpu_ok && ports_ok
    }

    fn node_down(
        &mut self,
        node: &str,
        generation: u64,
        reason: &str,
        left: bool,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) -> Response {
        match self.nodes.get_mut(node) {
            None => Response::NotFound(format!("node {node} not found")),
            Some(rec) if generation < rec.meta.generation => {
                Response::Ignored(format!("node {node} has come back since"))
            }
            Some(rec) if rec.status == NodeStatus::Down => {
                if left && !rec.left {
                    rec.left = true;
                    rec.updated_at = at;
                    touched.push(Key::Node(node.to_string()));
                }
                Response::Ignored(format!("node {node} is already down"))
            }
            Some(rec) => {
                rec.status = NodeStatus::Down;
                rec.left = left;
                rec.updated_at = at;
                touched.push(Key::Node(node.to_string()));
                let msg = format!("node {node} is down ({reason}); waiting for a new placement");
                self.release_tasks_of(node, TaskState::Lost, &msg, at, touched);
                Response::Ok
            }
        }
    }

    /// Takes every task that holds resources on `node` off it, into `state`.
    fn release_tasks_of(
        &mut self,
        node: &str,
        state: TaskState,
        msg: &str,
        at: UnixMillis,
        touched: &mut Vec<Key>,
    ) {
        for task in self.tasks.values_mut() {
            // Only the tasks that change are copied out of a snapshot that shares them.
            if task.node.as_deref() == Some(node) && task.holds_resources() {
                let task = Arc::make_mut(task);
                task.allocation = None;
                task.restart_at = None;
                task.running_since = None;
                task.reason = Some(msg.to_string());
                task.transition(state, at, msg);
                touched.push(Key::Task(task.id.clone()));
            }
        }
    }

    /// Tasks placed on `node` (current allocation there), in id order; from the index, so it
    /// costs the node's share, not a scan.
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.index
            .on_node(node)
            .filter_map(move |id| self.tasks.get(id).map(|t| &**t))
    }

    /// A value that changes whenever a task placed on `node` (or one that left it) was
    /// touched by an applied command, or the state was replaced: while it stays the same,
    /// `tasks_on(node)` returns the same tasks. Not replicated and not comparable across
    /// processes.
    pub fn share_version(&self, node: &str) -> u64 {
        self.index.share_version(node)
    }

    /// The executor's share of `node`, in no particular order and possibly with a task twice
    /// (`order_share` sorts it and drops repeats, after the caller let go of the
    /// state's lock): the tasks placed there that hold its resources (`Task::holds_resources`,
    /// from the index: they may need a start, a report or a restart), and those of
    /// `with_containers` (the task ids the node's containers carry) still placed there,
    /// whatever their state (a finished task keeps its container). A finished task without a
    /// container asks nothing of the executor, so a node that ran thousands of tasks costs a
    /// pass what it runs now, not a scan of them all. The tasks are shared, not copied, and
    /// reached through the index's references, not looked up by id: at 10,000 tasks on a node
    /// the look-ups and the sort held the read lock 7-9 ms, and the state's applies waited.
    /// A subset of `tasks_on(node)`, so `share_version` covers it.
    pub fn executor_share(&self, node: &str, with_containers: &[&str]) -> Vec<Arc<Task>> {
        let mut share: Vec<Arc<Task>> = Vec::new();
        for (id, holder) in self.index.holding_on(node) {
            // The index's reference follows the task through every apply; the look-up is
            // only a fallback.
            let task = holder.task().or_else(|| self.tasks.get(id).cloned());
            if let Some(t) = task.filter(|t| t.placed_on() == Some(node)) {
                share.push(t);
            }
        }
        for id in with_containers {
            if self.index.holds_on(node, id) {
                continue;
            }
            if let Some(t) = self.tasks.get(*id).filter(|t| t.placed_on() == Some(node)) {
                share.push(t.clone());
            }
        }
        share
    }

    /// Puts an executor share (`executor_share`) in allocation order (then id: a task with a
    /// container but no allocation any more), each task once. The plan walks its tasks by
    /// allocation, so a share in that order spares it a second sort.
    pub fn order_share(share: &mut Vec<Arc<Task>>) {
        share.sort_unstable_by(|a, b| (&a.allocation, &a.id).cmp(&(&b.allocation, &b.id)));
        share.dedup_by(|a, b| a.id == b.id);
    }

    /// Tasks waiting for a node (`Task::needs_placement`), in id order; from the index.
    pub fn pending_tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.index
            .pending()
            .iter()
            .filter_map(move |id| self.tasks.get(id).map(|t| &**t))
    }

    /// Whether any task waits for a node.
    pub fn has_pending(&self) -> bool {
        !self.index.pending().is_empty()
    }

    /// How many tasks wait for a node; from the index.
    pub fn pending_count(&self) -> usize {
        self.index.pending().len()
    }

    /// What the tasks holding resources on each node reserve, and the host ports they use;
    /// from the index (`usage_scan` is the same by a scan of every task).
    pub fn usage(&self) -> BTreeMap<NodeId, NodeUsage> {
        self.index.usage()
    }

    /// `usage` computed by scanning every task: what the index is checked against.
    pub fn usage_scan(&self) -> BTreeMap<NodeId, NodeUsage> {
        let mut out: BTreeMap<NodeId, NodeUsage> = BTreeMap::new();
        for task in self.tasks.values() {
            let Some(node) = task.node.as_ref() else {
                continue;
            };
            if !task.holds_resources() {
                continue;
            }
            let u = out.entry(node.clone()).or_default();
            u.allocated = u.allocated.saturating_add(task.spec.resources());
            u.tasks += 1;
            u.ports.extend(task.spec.bound_ports(&task.host_ports));
        }
        out
    }
}

/// Resources and ports held on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub allocated: Resources,
    pub ports: BTreeSet<(Protocol, u16)>,
    pub tasks: u32,
}

/// Applies an executor's report to its (current) task. Returns whether anything changed.
fn apply_report(
    task: &mut Task,
    status: &AllocStatus,
    backoff: &BackoffConfig,
    at: UnixMillis,
) -> bool {
    match status {
        AllocStatus::Starting => {
            let restarting = matches!(task.state, TaskState::Completed | TaskState::Failed)
                && task.restart_at.is_some();
            if task.state == TaskState::Scheduled || restarting {
                task.transition(TaskState::Starting, at, "starting the container");
                true
            } else {
                false
            }
        }
        AllocStatus::Running {
            container_id,
            ports,
        } => {
            if task.state == TaskState::Running
                && task.container_id.as_ref() == Some(container_id)
                && &task.ports == ports
            {
                return false;
            }
            if !matches!(
                task.state,
                TaskState::Scheduled | TaskState::Starting | TaskState::Running
            ) && task.restart_at.is_none()
            {
                // An exited task that is not due for restart: a late report of its old run.
                return false;
            }
            task.container_id = Some(container_id.clone());
            task.ports = ports.clone();
            task.reason = None;
            task.restart_at = None;
            task.running_since = Some(at);
            task.transition(
                TaskState::Running,
                at,
                format!("container {} running", short(container_id)),
            );
            true
        }
        AllocStatus::Exited {
            container_id,
            exit_code,
            oom_killed,
        } => {
            let already = matches!(task.state, TaskState::Completed | TaskState::Failed)
                && task.container_id.as_ref() == Some(container_id)
                && task.exit_code == Some(*exit_code);
            if already {
                return false;
            }
            if let Some(since) = task.running_since
                && at.saturating_sub(since) >= backoff.reset_after_ms
            {
                task.consecutive_restarts = 0;
            }
            task.container_id = Some(container_id.clone());
            task.exit_code = Some(*exit_code);
            task.running_since = None;
            let failed = *exit_code != 0 || *oom_killed;
            let mut reason = if *oom_killed {
                let limit = task.spec.memory_bytes;
                format!(
                    "out of memory: the container was OOM-killed at its limit of {limit} bytes (exit code {exit_code})"
                )
            } else if failed {
                format!("the container exited with code {exit_code}")
            } else {
                "the container exited with code 0".to_string()
            };
            let restart = task.spec.restart_policy.restarts_after(if failed {
                (*exit_code).max(1)
            } else {
                0
            });
            if restart {
                let delay = backoff.delay_ms(task.consecutive_restarts);
                task.restart_at = Some(at.saturating_add(delay));
                task.restarts = task.restarts.saturating_add(1);
                task.consecutive_restarts = task.consecutive_restarts.saturating_add(1);
                reason.push_str(&format!(
                    "; restarting in {:.1} s (policy {})",
                    delay as f64 / 1000.0,
                    task.spec.restart_policy.as_str()
                ));
            } else {
                task.restart_at = None;
            }
            task.reason = Some(reason.clone());
            let state = if failed {
                TaskState::Failed
            } else {
                TaskState::Completed
            };
            task.transition(state, at, reason);
            true
        }
        AllocStatus::Failed { reason } => {
            if task.state == TaskState::Failed && task.reason.as_ref() == Some(reason) {
                return false;
            }
            task.restart_at = None;
            task.running_since = None;
            task.reason = Some(reason.clone());
            task.transition(TaskState::Failed, at, reason.clone());
            true
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

mod services;
pub use services::ReplicaCounts;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod index_tests;
