//! The leader's controller: the only place that turns observations (gossip membership, the
//! applied state, the clock) into commands. It runs on every node and acts only while that
//! node is the Raft leader, so a new leader finishes whatever the old one left half done,
//! from the replicated state alone.
//!
//! Each turn it:
//! 1. records nodes that gossip sees alive (`UpsertNode`) and nodes it declared dead
//!    (`NodeDown`, which releases their tasks);
//! 2. keeps Raft membership right: new nodes join as learners; voters are kept at an odd count
//!    up to `--voters`; a voter dead longer than the grace period is replaced by a learner;
//! 3. places pending and lost tasks with the pure scheduler, in batches of one Raft entry;
//! 4. requeues tasks stuck in `scheduled`/`starting` past their deadline.

use crate::agent::{Node, now_ms};
use orion_gossip::MemberStatus;
use orion_raft::Peer;
use orion_scheduler::{Decision, NodeView, Snapshot, TaskRequest};
use orion_state::NodeStatus;
use orion_types::{Command, NodeMeta, Placement, TaskState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How often the controller looks even when nothing told it to. Gossip events and applied
/// entries wake it at once; this only bounds how late a missed wake-up is noticed.
const TICK: Duration = Duration::from_millis(250);
/// At most this many tasks are placed in one Raft entry: 1,000 placements are ~200 KB of JSON,
/// small enough for one append, large enough that a burst of 10,000 is 10 entries.
const PLACE_BATCH_MAX: usize = 1000;
/// A burst of placements logs at most this many lines, one per task; the rest are counted.
const PLACEMENT_LOG_LINES_MAX: usize = 20;
/// A task placed on a node that has not started working on it within this time is placed
/// again: a live executor reports `starting` within a second.
const SCHEDULED_DEADLINE: Duration = Duration::from_secs(30);
/// How often the controller scans for tasks past their deadline.
const DEADLINE_SCAN_PERIOD: Duration = Duration::from_secs(1);
/// A task stuck in `starting` (e.g. a hung image pull) is placed again after this; the
/// executor's own pull timeout is shorter, so this fires only if the node itself is stuck.
const STARTING_DEADLINE: Duration = Duration::from_secs(600);
/// A node that gossip never mentions, seen from a leader that has been leader this long, is
/// declared down: gossip has had ample time to tell us about it.
const UNSEEN_NODE_GRACE: Duration = Duration::from_secs(10);

/// What the scheduler sees: every recorded node, ready if it is up in the state and alive in
/// this node's gossip view, with what is already placed on it.
pub(crate) fn scheduler_snapshot(
    cfg: &crate::config::AgentConfig,
    members: &BTreeMap<String, orion_gossip::Member<NodeMeta>>,
    nodes: &BTreeMap<String, orion_state::NodeRecord>,
    mut usage: BTreeMap<String, orion_state::NodeUsage>,
) -> Snapshot {
    Snapshot {
        nodes: nodes
            .values()
            .map(|r| {
                let u = usage.remove(&r.meta.id).unwrap_or_default();
                NodeView {
                    id: r.meta.id.clone(),
                    ready: r.status == NodeStatus::Up
                        && members
                            .get(&r.meta.id)
                            .is_some_and(|m| m.status == MemberStatus::Alive),
                    draining: r.draining,
                    capacity: r.meta.capacity,
                    allocated: u.allocated,
                    used_ports: u.ports,
                    labels: r.meta.labels.clone(),
                    task_count: u.tasks,
                }
            })
            .collect(),
        dynamic_ports: cfg.dynamic_ports.clone(),
        default_strategy: cfg.strategy,
    }
}

struct Controller {
    node: Arc<Node>,
    leader_since: Option<Instant>,
    /// When each member was first seen dead or gone, for the voter grace period.
    gone_since: HashMap<String, Instant>,
    /// The inputs of the last scheduling turn that found nothing to do.
    last_schedule_key: Option<(u64, u64)>,
    gossip_epoch: u64,
    /// When `deadlines` last scanned the tasks.
    deadlines_checked: Option<Instant>,
}

pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut events = node.gossip.subscribe();
    let mut changes = node.raft.subscribe();
    let mut ctl = Controller {
        node,
        leader_since: None,
        gone_since: HashMap::new(),
        last_schedule_key: None,
        gossip_epoch: 0,
        deadlines_checked: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            ev = events.recv() => {
                match ev {
                    Ok(ev) => debug!(event = ?ev.member().node_id, "membership event"),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => debug!(missed = n, "membership events lagged"),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                ctl.gossip_epoch += 1;
            }
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        ctl.turn().await;
    }
}

impl Controller {
    async fn turn(&mut self) {
        let status = self.node.raft.status();
        if status.leader.as_deref() != Some(self.node.cfg.id.as_str()) {
            self.leader_since = None;
            self.last_schedule_key = None;
            return;
        }
        let leader_since = *self.leader_since.get_or_insert_with(|| {
            info!("this node is the leader; controller active");
            Instant::now()
        });
        let members: BTreeMap<String, orion_gossip::Member<NodeMeta>> = self
            .node
            .gossip
            .members()
            .into_iter()
            .map(|m| (m.node_id.clone(), m))
            .collect();
        let now = Instant::now();
        for (id, m) in &members {
            if m.status.is_live() {
                self.gone_since.remove(id);
            } else {
                self.gone_since.entry(id.clone()).or_insert(now);
            }
        }
        self.sync_nodes(&members, leader_since).await;
        self.sync_raft_membership(&members, &status, leader_since)
            .await;
        self.schedule(&members).await;
        self.deadlines().await;
    }

    async fn propose(&self, cmd: Command) -> bool {
        let kind = cmd.kind();
        match self.node.raft.write(cmd).await {
            Ok(_) => true,
            Err(e) => {
                warn!(command = kind, error = %e, "controller proposal failed; will retry");
                false
            }
        }
    }

    async fn sync_nodes(
        &mut self,
        members: &BTreeMap<String, orion_gossip::Member<NodeMeta>>,
        leader_since: Instant,
    ) {
        let records = self.node.raft.read(|s| s.nodes.clone());
        for m in members.values().filter(|m| m.status.is_live()) {
            let stale = match records.get(&m.node_id) {
                None => true,
                Some(r) if r.left => m.meta.generation > r.meta.generation,
                Some(r) => {
                    m.meta.generation >= r.meta.generation
                        && (r.meta != m.meta || r.status == NodeStatus::Down)
                }
            };
            if stale {
                info!(node = %m.node_id, generation = m.meta.generation, "recording node as up");
                self.propose(Command::UpsertNode {
                    meta: Box::new(m.meta.clone()),
                    at: now_ms(),
                })
                .await;
            }
        }
        for (id, r) in records.iter().filter(|(_, r)| r.status == NodeStatus::Up) {
            let why = match members.get(id) {
                Some(m) if m.meta.generation > r.meta.generation => None, // restarted: upsert above
                Some(m) if m.status == MemberStatus::Down => Some("declared dead by gossip"),
                Some(m) if m.status == MemberStatus::Left => Some("left the cluster"),
                Some(_) => None,
                None if leader_since.elapsed() > UNSEEN_NODE_GRACE => Some("not seen in gossip"),
                None => None,
            };
            if let Some(why) = why {
                info!(node = %id, reason = why, "recording node as down; its tasks will be placed again");
                self.propose(Command::NodeDown {
                    node: id.clone(),
                    generation: r.meta.generation,
                    reason: why.to_string(),
                    at: now_ms(),
                })
                .await;
            }
        }
    }

    async fn sync_raft_membership(
        &mut self,
        members: &BTreeMap<String, orion_gossip::Member<NodeMeta>>,
        status: &orion_raft::RaftStatus,
        leader_since: Instant,
    ) {
        let grace = Duration::from_millis(self.node.cfg.voter_grace_ms);
        // Nodes that left on purpose, by gossip or by their own word in the log.
        let left_on_purpose: BTreeSet<String> = self.node.raft.read(|s| {
            s.nodes
                .values()
                .filter(|r| r.left)
                .map(|r| r.meta.id.clone())
                .collect()
        });
        let left = |id: &str| {
            left_on_purpose.contains(id)
                || members
                    .get(id)
                    .is_some_and(|m| m.status == MemberStatus::Left)
        };
        let alive = |id: &str| {
            members
                .get(id)
                .is_some_and(|m| m.status == MemberStatus::Alive)
        };
        let gone_long = |id: &str, gone: &HashMap<String, Instant>| match members.get(id) {
            _ if left(id) => true,
            Some(_) => gone.get(id).is_some_and(|t| t.elapsed() > grace),
            None => leader_since.elapsed() > grace.max(UNSEEN_NODE_GRACE),
        };
        // New live members join as learners.
        for m in members.values().filter(|m| m.status == MemberStatus::Alive) {
            if m.node_id == self.node.cfg.id
                || status.voters.contains(&m.node_id)
                || status.learners.contains(&m.node_id)
            {
                continue;
            }
            info!(node = %m.node_id, "adding node to Raft as a learner");
            let peer = Peer {
                node_id: m.node_id.clone(),
                raft_addr: m.meta.raft_addr.clone(),
                api_addr: m.meta.api_addr.clone(),
            };
            if let Err(e) = self.node.raft.add_learner(peer).await {
                warn!(node = %m.node_id, error = %e, "could not add learner");
            }
        }
        let voters: BTreeSet<String> = status.voters.iter().cloned().collect();
        let dead: BTreeSet<String> = voters
            .iter()
            .filter(|v| **v != self.node.cfg.id && gone_long(v, &self.gone_since))
            .cloned()
            .collect();
        let mut candidates: Vec<String> = status
            .learners
            .iter()
            .filter(|l| alive(l))
            .cloned()
            .collect();
        candidates.sort();
        let mut next: BTreeSet<String> = voters.difference(&dead).cloned().collect();
        let cap = self.node.cfg.voters;
        // Replace dead voters one for one while healthy learners last. A crashed voter with no
        // one to take its seat keeps it (it may come back, and a smaller voter set would not
        // survive more failures); a voter that left on purpose gives its seat up.
        for d in &dead {
            if !candidates.is_empty() {
                next.insert(candidates.remove(0));
            } else if !left(d) {
                next.insert(d.clone());
            }
        }
        // Grow towards the cap, keeping the count odd so a lost node never costs quorum.
        while next.len() < cap && !candidates.is_empty() {
            if next.len().is_multiple_of(2) {
                next.insert(candidates.remove(0));
            } else if next.len() + 2 <= cap && candidates.len() >= 2 {
                next.insert(candidates.remove(0));
                next.insert(candidates.remove(0));
            } else {
                break;
            }
        }
        if next != voters && !next.is_empty() {
            info!(from = ?voters, to = ?next, "changing Raft voters");
            if let Err(e) = self.node.raft.change_voters(next.clone()).await {
                warn!(error = %e, "could not change voters");
                return;
            }
        }
        // Learners that left or stayed dead past the grace period are dropped.
        for l in &status.learners {
            if !next.contains(l) && gone_long(l, &self.gone_since) {
                info!(node = %l, "removing dead learner from Raft");
                if let Err(e) = self.node.raft.remove_node(l).await {
                    warn!(node = %l, error = %e, "could not remove learner");
                }
            }
        }
    }

    async fn schedule(&mut self, members: &BTreeMap<String, orion_gossip::Member<NodeMeta>>) {
        let applied = self.node.raft.status().applied_index;
        let key = (applied, self.gossip_epoch);
        if self.last_schedule_key == Some(key) {
            return;
        }
        let (mut pending, nodes, usage) = self.node.raft.read(|s| {
            let pending: Vec<(u64, String, orion_types::TaskSpec, Option<String>)> = s
                .tasks
                .values()
                .filter(|t| t.needs_placement())
                .map(|t| (t.created_at, t.id.clone(), t.spec.clone(), t.reason.clone()))
                .collect();
            (pending, s.nodes.clone(), s.usage())
        });
        if pending.is_empty() {
            self.last_schedule_key = Some(key);
            return;
        }
        // First come, first placed. The scheduler sees every waiting task (it places 10,000
        // tasks on 5,000 nodes in well under a second), so a task that fits nowhere never
        // blocks a later one that fits; proposals are cut into entries of bounded size.
        pending.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let snapshot = scheduler_snapshot(&self.node.cfg, members, &nodes, usage);
        let requests: Vec<TaskRequest> = pending
            .iter()
            .map(|(_, id, spec, _)| TaskRequest::from_spec(id.clone(), spec))
            .collect();
        let reasons: HashMap<&str, Option<&String>> = pending
            .iter()
            .map(|(_, id, _, r)| (id.as_str(), r.as_ref()))
            .collect();
        let mut placements = Vec::new();
        let mut unplaced = Vec::new();
        for d in orion_scheduler::place(&snapshot, &requests) {
            match d {
                Decision::Placed {
                    task_id,
                    node,
                    host_ports,
                } => placements.push(Placement {
                    task_id,
                    node,
                    allocation: uuid::Uuid::new_v4().simple().to_string(),
                    host_ports,
                }),
                Decision::Unplaced { task_id, reason } => {
                    if reasons.get(task_id.as_str()).copied().flatten() != Some(&reason) {
                        unplaced.push((task_id, reason));
                    }
                }
            }
        }
        if placements.is_empty() && unplaced.is_empty() {
            self.last_schedule_key = Some(key);
            return;
        }
        debug!(
            placed = placements.len(),
            unplaced = unplaced.len(),
            "proposing placements"
        );
        for p in placements.iter().take(PLACEMENT_LOG_LINES_MAX) {
            info!(task = %p.task_id, node = %p.node, "placing task");
        }
        let mut placements = placements.into_iter().peekable();
        let mut unplaced = unplaced.into_iter().peekable();
        while placements.peek().is_some() || unplaced.peek().is_some() {
            let p: Vec<Placement> = placements.by_ref().take(PLACE_BATCH_MAX).collect();
            let u: Vec<(String, String)> = unplaced.by_ref().take(PLACE_BATCH_MAX).collect();
            if !self
                .propose(Command::Place {
                    placements: p,
                    unplaced: u,
                    at: now_ms(),
                })
                .await
            {
                return;
            }
        }
    }

    async fn deadlines(&mut self) {
        // Turns run on every applied entry; the deadlines are tens of seconds long, so one
        // scan of all tasks per second is plenty and keeps it off the write path.
        if self
            .deadlines_checked
            .is_some_and(|t| t.elapsed() < DEADLINE_SCAN_PERIOD)
        {
            return;
        }
        self.deadlines_checked = Some(Instant::now());
        let now = now_ms();
        let stuck: Vec<String> = self.node.raft.read(|s| {
            s.tasks
                .values()
                .filter(|t| {
                    let age = Duration::from_millis(now.saturating_sub(t.state_since));
                    (t.state == TaskState::Scheduled && age > SCHEDULED_DEADLINE)
                        || (t.state == TaskState::Starting && age > STARTING_DEADLINE)
                })
                .map(|t| t.id.clone())
                .take(PLACE_BATCH_MAX)
                .collect()
        });
        if !stuck.is_empty() {
            warn!(
                tasks = stuck.len(),
                "requeueing tasks stuck in scheduled/starting"
            );
            self.propose(Command::Requeue {
                task_ids: stuck,
                reason: "its node made no progress before the deadline; placing it again"
                    .to_string(),
                at: now,
            })
            .await;
        }
    }
}
