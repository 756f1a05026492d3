//! The controller's driver: the thin, impure shell around `orion_controller::decide`. It runs
//! on every node; each turn it builds the decision's input from this node's Raft status, its
//! gossip view and its clock, lets `decide` choose, and carries out the actions in order
//! (Raft proposals and Raft membership changes). `decide` returns nothing unless this node is
//! the leader, so a new leader finishes whatever the old one left half done, from the
//! replicated state alone.
//!
//! It takes its parts as handles (Raft, gossip, a `Clock`, an `IdSource`): it knows nothing of
//! the agent that wires it. It is a crate of its own so that the simulator (`orion-sim`) runs
//! this very loop over its simulated Raft and gossip.

mod create;

pub use create::{Booking, CreatePlacer};

use orion_controller::{Action, ControllerMemory, Input, Member, MemberStatus, RaftView, Settings};
use orion_gossip::Gossip;
use orion_raft::{Peer, RaftNode};
use orion_state::ClusterState;
use orion_types::env::{Clock, IdSource};
use orion_types::{Command, NodeId, NodeMeta};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How often the controller looks even when nothing told it to. Gossip events and applied
/// entries wake it at once; this only bounds how late a missed wake-up is noticed.
const TICK: Duration = Duration::from_millis(250);
/// A burst of placements logs at most this many lines, one per task; the rest are counted.
const PLACEMENT_LOG_LINES_MAX: usize = 20;
/// Up to this many waiting tasks to look at, the leader places them under the replica's read
/// lock (on three nodes 256 placements take well under a millisecond, the time of an apply);
/// beyond, it may decide on a copy of the state so applies are not held back.
const PLACE_IN_PLACE_MAX: usize = 256;
/// Copying one task costs about as much as weighing this many (task, node) pairs in the
/// scheduler (about 1 µs against 10 ns): the copy is chosen only when the pass weighs more
/// pairs than this many times the tasks it would copy. At 64 writing clients the leader had
/// copied 8,000 tasks to place a few hundred on three nodes, on almost every turn.
const COPY_PER_TASK_PLACEMENTS: usize = 64;

/// This node's membership view in the decision's terms.
pub fn members_view(gossip: &Gossip<NodeMeta>) -> BTreeMap<NodeId, Member> {
    gossip
        .members()
        .into_iter()
        .map(|m| {
            let status = match m.status {
                orion_gossip::MemberStatus::Alive => MemberStatus::Alive,
                orion_gossip::MemberStatus::Suspect => MemberStatus::Suspect,
                orion_gossip::MemberStatus::Down => MemberStatus::Dead,
                orion_gossip::MemberStatus::Left => MemberStatus::Left,
            };
            let member = Member {
                id: m.node_id.clone(),
                status,
                meta: m.meta,
            };
            (m.node_id, member)
        })
        .collect()
}

/// What the driver acts through.
pub struct Driver {
    pub raft: RaftNode,
    pub gossip: Gossip<NodeMeta>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub settings: Settings,
}

pub async fn run(driver: Driver, mut shutdown: watch::Receiver<bool>) {
    let mut events = driver.gossip.subscribe();
    let mut changes = driver.raft.subscribe();
    let mut memory = ControllerMemory::default();
    let mut epoch: u64 = 0;
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
                epoch = epoch.wrapping_add(1);
            }
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        driver.turn(&mut memory, epoch).await;
    }
}

impl Driver {
    async fn turn(&self, memory: &mut ControllerMemory, epoch: u64) {
        let status = self.raft.status();
        let raft = RaftView {
            is_leader: status.leader.as_deref() == Some(self.settings.node_id.as_str()),
            voters: status.voters.iter().cloned().collect(),
            learners: status.learners.iter().cloned().collect(),
            membership_changing: status.membership_changing,
            applied_index: status.applied_index,
        };
        let members = members_view(&self.gossip);
        let now_ms = self.clock.now_ms();
        let decide = |state: &ClusterState| {
            orion_controller::decide(&Input {
                state,
                members: &members,
                membership_epoch: epoch,
                raft: &raft,
                settings: &self.settings,
                now_ms,
                memory,
                ids: self.ids.as_ref(),
            })
        };
        // A turn whose placement pass looks at few waiting tasks (few wait, or only few began
        // to wait since a pass that placed nothing: `placement_work`) is a few scans and a
        // short pass: decided under the replica's read lock, on the state itself. A pass over
        // many waiting tasks must not hold applies back: decided on a copy (the same
        // decision). A follower's turn only books gone times, so it never needs the copy (a
        // copy of the whole state on every node for every applied entry was the simulator's
        // top cost), and neither does the leader's turn under a stream of creates (a copy of
        // every task per applied entry was the leader's top cost at 64 writing clients).
        let started = std::time::Instant::now();
        let outcome = self.raft.read(|state| {
            // A follower decides nothing from the state: never copy it there.
            let work = orion_controller::placement_work(memory, state, epoch);
            // The copy is taken under the lock too: it pays only when the pass would hold
            // the lock much longer than copying every task does (many nodes to weigh).
            let placing = work.saturating_mul(state.nodes.len().max(1));
            let copying = state.tasks.len().saturating_mul(COPY_PER_TASK_PLACEMENTS);
            if raft.is_leader && work > PLACE_IN_PLACE_MAX && placing > copying {
                Err(Box::new(state.clone()))
            } else {
                Ok(decide(state))
            }
        });
        let outcome = outcome.unwrap_or_else(|copy| decide(&copy));
        if raft.is_leader {
            metrics::histogram!("orion_controller_turn_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if memory.leader_since.is_none() && outcome.memory.leader_since.is_some() {
            info!("this node is the leader; controller active");
        }
        *memory = outcome.memory;
        self.execute(outcome.actions, &raft).await;
    }

    /// Carries out the actions in order (see `Action` for what a failure skips).
    async fn execute(&self, actions: Vec<Action>, raft: &RaftView) {
        let mut voters_failed = false;
        let mut placements_logged = 0;
        for action in actions {
            match action {
                Action::Propose(cmd) => {
                    log_proposal(&cmd, &mut placements_logged);
                    let kind = cmd.kind();
                    if let Err(e) = self.raft.write(cmd).await {
                        warn!(command = kind, error = %e, "controller proposal failed; will retry");
                        return;
                    }
                }
                Action::AddLearner {
                    node,
                    raft_addr,
                    api_addr,
                } => {
                    info!(node = %node, "adding node to Raft as a learner");
                    let peer = Peer {
                        node_id: node.clone(),
                        raft_addr,
                        api_addr,
                    };
                    if let Err(e) = self.raft.add_learner(peer).await {
                        warn!(node = %node, error = %e, "could not add learner");
                    }
                }
                Action::ChangeVoters(next) => {
                    info!(from = ?raft.voters, to = ?next, "changing Raft voters");
                    if let Err(e) = self.raft.change_voters(next).await {
                        warn!(error = %e, "could not change voters");
                        voters_failed = true;
                    }
                }
                Action::RemoveNode(node) => {
                    if voters_failed {
                        continue;
                    }
                    info!(node = %node, "removing dead learner from Raft");
                    if let Err(e) = self.raft.remove_node(&node).await {
                        warn!(node = %node, error = %e, "could not remove learner");
                    }
                }
            }
        }
    }
}

/// One line per meaningful proposal.
fn log_proposal(cmd: &Command, placements_logged: &mut usize) {
    match cmd {
        Command::UpsertNode { meta, .. } => {
            info!(node = %meta.id, generation = meta.generation, "recording node as up");
        }
        Command::NodeDown { node, reason, .. } => {
            info!(node = %node, reason = %reason, "recording node as down; its tasks will be placed again");
        }
        Command::Place {
            placements,
            unplaced,
            ..
        } => {
            debug!(
                placed = placements.len(),
                unplaced = unplaced.len(),
                "proposing placements"
            );
            for p in placements {
                if *placements_logged >= PLACEMENT_LOG_LINES_MAX {
                    break;
                }
                *placements_logged += 1;
                info!(task = %p.task_id, node = %p.node, "placing task");
            }
        }
        Command::Requeue { task_ids, .. } => {
            warn!(
                tasks = task_ids.len(),
                "requeueing tasks stuck in scheduled/starting"
            );
        }
        Command::SetClusterConfig { config, .. } => {
            info!(config = ?config, "seeding the cluster config from this node's flags");
        }
        Command::CreateServiceTasks { tasks, .. } => {
            for t in tasks.iter().take(PLACEMENT_LOG_LINES_MAX) {
                info!(service = %t.service, version = t.version, slot = ?t.slot, task = %t.task_id, "creating service task");
            }
        }
        Command::StopTasks {
            task_ids, reason, ..
        } => {
            info!(tasks = task_ids.len(), reason = %reason, "stopping service tasks");
        }
        Command::RollbackService {
            id,
            reason: Some(reason),
            ..
        } => {
            warn!(service = %id, reason = %reason, "update failed; rolling back");
        }
        Command::DeploymentProgress {
            id, state, message, ..
        } if !state.is_active() => {
            info!(service = %id, state = state.as_str(), message = %message, "deployment ended");
        }
        other => debug!(command = other.kind(), "controller proposal"),
    }
}
