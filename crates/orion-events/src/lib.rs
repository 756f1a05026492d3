//! The cluster's event history: what changed, derived from the applied commands in Raft
//! order, so every node tells the same story.
//!
//! `Deriver` is pure: given the state after an entry was applied and the rows that entry
//! touched, it compares them with what it saw before and names the change (`task placed`,
//! `node dead`, ...). `EventLog` keeps the last `EVENTS_KEPT` events in memory, wakes
//! streamers when new ones arrive, and answers "everything from index N" or "gone: the oldest
//! kept is M" (the API's 410).
//!
//! Event indexes: `raft_index * 65536 + k` for the k-th event of that log entry. They grow in
//! Raft order, are the same on every node (they depend on the log alone), and need no counter
//! in the replicated state. A client resumes with the last index it saw plus one.
//!
//! Architecture invariants: no IO and no clock (event times come from the commands); memory is
//! bounded (ring of `EVENTS_KEPT`, at most `EVENTS_PER_ENTRY_MAX` per entry); a slow reader
//! never holds anything up, it just finds its index gone.

use orion_state::{ClusterState, Key, NodeStatus};
use orion_types::{Command, DeploymentState, Health, TaskState};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

/// Events kept in memory per node: about 10,000 x ~300 bytes = ~3 MB, a few minutes of a busy
/// cluster's history, which is what a reconnecting client needs.
pub const EVENTS_KEPT: usize = 10_000;
/// Events one log entry may produce; the index leaves room for this many per entry. A node
/// with more tasks than this that dies reports the first ones and a `truncated` event.
pub const EVENTS_PER_ENTRY_MAX: u64 = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    Task,
    Service,
    Deployment,
    Node,
}

impl Topic {
    pub const ALL: [Topic; 4] = [Topic::Task, Topic::Service, Topic::Deployment, Topic::Node];
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Task => "task",
            Topic::Service => "service",
            Topic::Deployment => "deployment",
            Topic::Node => "node",
        }
    }
    pub fn parse(s: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == s.trim())
    }
}

/// One thing that happened, as the API streams it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub index: u64,
    /// RFC 3339, from the command's own timestamp.
    pub at: String,
    pub topic: Topic,
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub payload: Payload,
}

/// An event's details, kept as the JSON text they are streamed as: a task's are written once,
/// straight from the task (`TaskPayload`), where a `Value` map was built, and later dropped,
/// on every member for every task created and placed (a tenth of a follower's CPU at 64
/// writing clients).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The JSON of `value`.
    pub fn of(value: &impl Serialize) -> Payload {
        // A `Value` or a struct of plain fields always encodes; `null` is a fallback never
        // reached.
        Payload(
            serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()),
        )
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.get() == other.0.get()
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Payload {
        Payload::of(&v)
    }
}

/// A task event's details. Fields in alphabetical order, as a `Value` map wrote them.
#[derive(Serialize)]
struct TaskPayload<'a> {
    allocation: &'a Option<String>,
    #[serde(rename = "exitCode", skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    name: &'a Option<String>,
    node: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    restarts: u32,
    state: &'a str,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// What the deriver remembers of a task, to tell what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskSeen {
    state: TaskState,
    health: Health,
    allocation: Option<String>,
    container: Option<String>,
    node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceSeen {
    version: u64,
    replicas: u32,
    /// The spec but for its count: a change here is an update, a change of count a scale.
    shape: orion_types::ServiceSpec,
    deployment: Option<(String, DeploymentState, u32)>,
}

fn service_seen(s: &orion_types::Service) -> ServiceSeen {
    let mut shape = s.spec.clone();
    shape.replicas = 0;
    ServiceSeen {
        version: s.version,
        replicas: s.spec.replicas,
        shape,
        deployment: s
            .deployment
            .as_ref()
            .map(|d| (d.id.clone(), d.state, d.updated)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSeen {
    up: bool,
    left: bool,
    draining: bool,
    generation: u64,
}

/// Names the changes of each applied entry. Pure: its only input is what it is given.
#[derive(Debug, Default)]
pub struct Deriver {
    tasks: HashMap<String, TaskSeen>,
    nodes: HashMap<String, NodeSeen>,
    services: HashMap<String, ServiceSeen>,
    /// The log entry last derived from and how many event indexes of it are used: the
    /// commands of one batched entry (`Command::Batch`) come one by one with the same index,
    /// and their events continue its numbering.
    entry: (u64, u64),
}

fn task_seen(t: &orion_types::Task) -> TaskSeen {
    TaskSeen {
        state: t.state,
        health: t.health,
        allocation: t.allocation.clone(),
        container: t.container_id.clone(),
        node: t.node.clone(),
    }
}

fn node_seen(r: &orion_state::NodeRecord) -> NodeSeen {
    NodeSeen {
        up: r.status == NodeStatus::Up,
        left: r.left,
        draining: r.draining,
        generation: r.meta.generation,
    }
}

impl Deriver {
    /// A deriver that has seen `state` (at open, or after a snapshot was installed).
    pub fn from_state(state: &ClusterState) -> Deriver {
        Deriver {
            entry: (0, 0),
            tasks: state
                .tasks
                .iter()
                .map(|(id, t)| (id.clone(), task_seen(t)))
                .collect(),
            nodes: state
                .nodes
                .iter()
                .map(|(id, r)| (id.clone(), node_seen(r)))
                .collect(),
            services: state
                .services
                .iter()
                .map(|(id, s)| (id.clone(), service_seen(s)))
                .collect(),
        }
    }

    /// The events of one applied entry. `cmd` is `None` for an entry without a command (a new
    /// leader's first entry, which names `leader`; a membership change). `now_ms` stamps
    /// entries without a command of their own.
    pub fn derive(
        &mut self,
        raft_index: u64,
        cmd: Option<&Command>,
        leader: Option<&str>,
        fallback_at_ms: u64,
        state: &ClusterState,
        touched: &[Key],
    ) -> Vec<Event> {
        let at_ms = cmd.map_or(fallback_at_ms, Command::at);
        let at = rfc3339(at_ms);
        let mut out: Vec<(Topic, String, String, Payload)> = Vec::new();
        if cmd.is_none()
            && let Some(l) = leader
        {
            out.push((
                Topic::Node,
                "leader".to_string(),
                l.to_string(),
                json!({"leader": l}).into(),
            ));
        }
        // Touched keys come sorted and deduplicated from apply; keep that order.
        let keys: BTreeSet<&Key> = touched.iter().collect();
        for key in keys {
            match key {
                Key::Task(id) => self.task_events(id, state, &mut out),
                Key::Node(id) => self.node_events(id, state, &mut out),
                Key::Service(id) => self.service_events(id, state, &mut out),
                // Cluster-wide settings are not one of the API's topics; tokens are secrets'
                // records, not events a read-only client should see.
                Key::Config
                | Key::Token(_)
                | Key::Ca
                | Key::PreviousCa
                | Key::GossipKey
                | Key::PreviousGossipKey => {}
                // A removed node: its record is gone, its id on the revocation list.
                Key::Revoked(id) => out.push((
                    Topic::Node,
                    "removed".to_string(),
                    id.clone(),
                    json!({"revoked": true}).into(),
                )),
            }
        }
        let base = raft_index.saturating_mul(EVENTS_PER_ENTRY_MAX);
        // Where this command's events start within its entry (after an earlier command of
        // the same batched entry); a full entry takes no more.
        let used = if self.entry.0 == raft_index {
            self.entry.1
        } else {
            0
        };
        if used >= EVENTS_PER_ENTRY_MAX {
            return Vec::new();
        }
        let room = EVENTS_PER_ENTRY_MAX - 1 - used;
        let total = out.len() as u64;
        self.entry = (
            raft_index,
            if total > room {
                EVENTS_PER_ENTRY_MAX
            } else {
                used + total
            },
        );
        let base = base + used;
        let mut events: Vec<Event> = out
            .into_iter()
            .take(room as usize)
            .enumerate()
            .map(|(k, (topic, kind, key, payload))| Event {
                index: base + k as u64,
                at: at.clone(),
                topic,
                kind,
                key,
                payload,
            })
            .collect();
        if total > room {
            events.push(Event {
                index: raft_index.saturating_mul(EVENTS_PER_ENTRY_MAX) + EVENTS_PER_ENTRY_MAX - 1,
                at,
                topic: Topic::Task,
                kind: "truncated".to_string(),
                key: String::new(),
                payload: json!({"dropped": total - room}).into(),
            });
        }
        events
    }

    fn task_events(
        &mut self,
        id: &str,
        state: &ClusterState,
        out: &mut Vec<(Topic, String, String, Payload)>,
    ) {
        let Some(t) = state.tasks.get(id) else {
            if self.tasks.remove(id).is_some() {
                out.push((
                    Topic::Task,
                    "removed".into(),
                    id.to_string(),
                    json!({}).into(),
                ));
            }
            return;
        };
        let now = task_seen(t);
        let before = self.tasks.insert(id.to_string(), now.clone());
        if before.as_ref() == Some(&now) {
            return;
        }
        // Written once, however many events this change makes (a new placed task: two).
        let written = std::cell::OnceCell::new();
        let payload = || {
            written
                .get_or_init(|| {
                    Payload::of(&TaskPayload {
                        allocation: &t.allocation,
                        exit_code: t.exit_code,
                        image: &t.spec.image,
                        message: t.events.last().map(|m| m.message.as_str()),
                        name: &t.spec.name,
                        node: &t.node,
                        reason: t.reason.as_deref(),
                        restarts: t.restarts,
                        state: t.state.as_str(),
                    })
                })
                .clone()
        };
        let mut push = |kind: &str| {
            out.push((Topic::Task, kind.to_string(), id.to_string(), payload()));
        };
        let Some(before) = before else {
            push("created");
            if now.state == TaskState::Scheduled {
                push("placed");
            }
            return;
        };
        if before.health != now.health {
            match now.health {
                Health::Healthy => push("healthy"),
                Health::Unhealthy => push("unhealthy"),
                Health::None | Health::Starting => {}
            }
        }
        if before.state == now.state && before.allocation == now.allocation {
            if before.container != now.container && now.state == TaskState::Running {
                push("running");
            }
            return;
        }
        let kind = match now.state {
            // Placed again after its node died, drained or stalled (it had a node before).
            TaskState::Scheduled if before.node.is_some() => "re-placed",
            TaskState::Scheduled => "placed",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Completed => "exited",
            TaskState::Failed if t.restart_at.is_some() => "exited",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
            TaskState::Stopped => "stopped",
            TaskState::Pending => "requeued",
        };
        push(kind);
    }

    fn service_events(
        &mut self,
        id: &str,
        state: &ClusterState,
        out: &mut Vec<(Topic, String, String, Payload)>,
    ) {
        let Some(svc) = state.services.get(id) else {
            if self.services.remove(id).is_some() {
                out.push((
                    Topic::Service,
                    "deleted".into(),
                    id.to_string(),
                    json!({}).into(),
                ));
            }
            return;
        };
        let now = service_seen(svc);
        let before = self.services.insert(id.to_string(), now.clone());
        let payload: Payload = json!({
            "version": svc.version,
            "replicas": svc.spec.replicas,
            "image": svc.spec.task.image,
        })
        .into();
        let mut push = |topic: Topic, kind: &str, payload: Payload| {
            out.push((topic, kind.to_string(), id.to_string(), payload));
        };
        match &before {
            None => push(Topic::Service, "created", payload.clone()),
            Some(b) => {
                if b.version != now.version && b.shape != now.shape {
                    push(Topic::Service, "updated", payload.clone());
                }
                if b.replicas != now.replicas {
                    push(Topic::Service, "scaled", payload.clone());
                }
            }
        }
        let Some(d) = &svc.deployment else {
            return;
        };
        let before_d = before.and_then(|b| b.deployment);
        let dpayload: Payload = json!({
            "id": d.id,
            "state": d.state.as_str(),
            "fromVersion": d.from_version,
            "toVersion": d.to_version,
            "updated": d.updated,
            "total": d.total,
            "message": d.message,
        })
        .into();
        let kind = match &before_d {
            Some((bid, bstate, bupdated)) if *bid == d.id => {
                if *bstate != d.state {
                    match d.state {
                        DeploymentState::Running => "resumed",
                        DeploymentState::Completed => "completed",
                        DeploymentState::Paused => "paused",
                        DeploymentState::RollingBack => "rolling-back",
                        DeploymentState::RolledBack => "rolled-back",
                        DeploymentState::Failed => "failed",
                    }
                } else if *bupdated != d.updated {
                    "progress"
                } else {
                    return;
                }
            }
            _ => "started",
        };
        push(Topic::Deployment, kind, dpayload);
    }

    fn node_events(
        &mut self,
        id: &str,
        state: &ClusterState,
        out: &mut Vec<(Topic, String, String, Payload)>,
    ) {
        let Some(r) = state.nodes.get(id) else {
            self.nodes.remove(id);
            return;
        };
        let now = node_seen(r);
        let before = self.nodes.insert(id.to_string(), now.clone());
        let payload: Payload = json!({
            "status": if now.up { "up" } else { "down" },
            "generation": now.generation,
            "address": r.meta.gossip_addr,
            "draining": now.draining,
            "left": now.left,
        })
        .into();
        let mut push = |kind: &str| {
            out.push((
                Topic::Node,
                kind.to_string(),
                id.to_string(),
                payload.clone(),
            ));
        };
        match before {
            None => push("joined"),
            Some(b) => {
                if !b.up && now.up {
                    push("joined");
                } else if b.up && !now.up {
                    push(if now.left { "left" } else { "dead" });
                } else if !b.left && now.left {
                    push("left");
                }
                if b.draining != now.draining {
                    push(if now.draining { "drained" } else { "undrained" });
                }
            }
        }
    }
}

/// Why events from an index cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// The oldest index this node still holds (or will hold next).
    pub oldest: u64,
}

#[derive(Debug)]
struct Inner {
    deriver: Deriver,
    kept: VecDeque<Event>,
    /// Indexes below this are not held here: evicted, or from before this process started.
    floor: u64,
}

/// The bounded event history of one node, fed by the state machine on every apply.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    latest: watch::Sender<u64>,
    kept_max: usize,
}

impl EventLog {
    /// A log that starts after `state`, the state as applied up to `last_applied`.
    pub fn new(state: &ClusterState, last_applied: u64) -> EventLog {
        EventLog::with_capacity(state, last_applied, EVENTS_KEPT)
    }

    pub fn with_capacity(state: &ClusterState, last_applied: u64, kept_max: usize) -> EventLog {
        let floor = if last_applied == 0 {
            0
        } else {
            (last_applied + 1).saturating_mul(EVENTS_PER_ENTRY_MAX)
        };
        let (latest, _) = watch::channel(0);
        EventLog {
            inner: Mutex::new(Inner {
                deriver: Deriver::from_state(state),
                kept: VecDeque::new(),
                floor,
            }),
            latest,
            kept_max: kept_max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the events of one applied entry.
    pub fn applied(
        &self,
        raft_index: u64,
        cmd: Option<&Command>,
        leader: Option<&str>,
        fallback_at_ms: u64,
        state: &ClusterState,
        touched: &[Key],
    ) {
        let mut inner = self.lock();
        let events = inner
            .deriver
            .derive(raft_index, cmd, leader, fallback_at_ms, state, touched);
        let Some(last) = events.last().map(|e| e.index) else {
            return;
        };
        for e in events {
            if inner.kept.len() == self.kept_max
                && let Some(old) = inner.kept.pop_front()
            {
                inner.floor = inner.floor.max(old.index + 1);
            }
            inner.kept.push_back(e);
        }
        drop(inner);
        self.latest.send_replace(last);
    }

    /// The state was replaced wholesale (a snapshot was installed): history before it is not
    /// known here.
    pub fn reset(&self, state: &ClusterState, last_applied: u64) {
        let mut inner = self.lock();
        inner.deriver = Deriver::from_state(state);
        if last_applied > 0 {
            inner.floor = inner
                .floor
                .max((last_applied + 1).saturating_mul(EVENTS_PER_ENTRY_MAX));
        }
    }

    /// Up to `max` events with index >= `from` and a topic in `topics` (all when empty), or
    /// `Gone` if events from `from` on are no longer all held here.
    pub fn since(&self, from: u64, topics: &[Topic], max: usize) -> Result<Vec<Event>, Gone> {
        let inner = self.lock();
        if from < inner.floor {
            let oldest = inner.kept.front().map_or(inner.floor, |e| e.index);
            return Err(Gone { oldest });
        }
        // The ring is sorted by index: skip to `from` by binary search.
        let start = inner.kept.partition_point(|e| e.index < from);
        Ok(inner
            .kept
            .range(start..)
            .filter(|e| topics.is_empty() || topics.contains(&e.topic))
            .take(max)
            .cloned()
            .collect())
    }

    /// The index of the `n`-th newest held event with a topic in `topics` (the oldest held if
    /// fewer match): where a reader that wants only the recent past starts.
    pub fn tail_start(&self, n: usize, topics: &[Topic]) -> u64 {
        let inner = self.lock();
        let next = inner.kept.back().map_or(inner.floor, |e| e.index + 1);
        if n == 0 {
            return next;
        }
        inner
            .kept
            .iter()
            .rev()
            .filter(|e| topics.is_empty() || topics.contains(&e.topic))
            .nth(n - 1)
            .map_or_else(
                || inner.kept.front().map_or(inner.floor, |e| e.index),
                |e| e.index,
            )
    }

    /// The oldest index a reader can start from.
    pub fn oldest(&self) -> u64 {
        let inner = self.lock();
        inner.kept.front().map_or(inner.floor, |e| e.index)
    }

    /// The index after the newest event held: where a reader that has everything goes on.
    pub fn next_index(&self) -> u64 {
        let inner = self.lock();
        inner.kept.back().map_or(inner.floor, |e| e.index + 1)
    }

    /// Changes whenever new events are recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

#[cfg(test)]
mod tests;
