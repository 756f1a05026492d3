//! The leader's controller as a pure decision: `decide` turns what the leader observes (the
//! applied state, the membership view, the Raft status, the time) into the actions that move
//! the cluster towards what the state asks for: Raft commands and Raft membership changes.
//!
//! Architecture invariant: `decide` and `place_at_creation` are pure functions of their
//! inputs. No clock (the time is `Input::now_ms`), no randomness (allocation ids come from the
//! `IdSource` passed in), no IO, and no hash-map iteration order in any output: the same input
//! gives the same actions, so a test or the simulator can replay a run exactly. The little the
//! controller remembers between turns (`ControllerMemory`) goes in with the input and comes
//! back updated in the `Outcome`; the driver (`orion-controller-driver`) keeps it and executes
//! the actions.
//!
//! A turn is a sequence of small sub-deciders, each returning actions: `config` (seed the
//! cluster config), `nodes` (record members as up or down), `membership` (Raft voters and
//! learners), `services` (keep each service's count, move its rolling update along),
//! `placement` (place waiting tasks) and `deadlines` (requeue stuck tasks). The
//! commands of the first two are applied to a copy of the state before the later ones look at
//! it, as if they had committed, so one turn places the tasks of a node it just declared down.
//! Placement at creation (`place_at_creation`) runs the same placement code.

mod config;
mod deadlines;
mod membership;
mod nodes;
mod placement;
pub mod services;

#[cfg(test)]
mod services_tests;
#[cfg(test)]
mod tests;

pub use placement::{PORT_COOLING_BASE_MS, Unapplied, place_at_creation, scheduler_snapshot};

use orion_state::ClusterState;
use orion_types::env::IdSource;
use orion_types::{ClusterConfig, Command, NodeId, NodeMeta};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// At most this many tasks are placed in one Raft entry, and at most this many are requeued in
/// one: 1,000 placements are ~200 KB of JSON, small enough for one append, large enough that a
/// burst of 10,000 is 10 entries.
pub const PLACE_BATCH_MAX: usize = 1000;
/// A task placed on a node that has not started working on it within this time is placed
/// again: a live executor reports `starting` within a second.
pub const SCHEDULED_DEADLINE_MS: u64 = 30_000;
/// A task stuck in `starting` (e.g. a hung image pull) is placed again after this; the
/// executor's own pull timeout is shorter, so this fires only if the node itself is stuck.
pub const STARTING_DEADLINE_MS: u64 = 600_000;
/// How often the deadlines are scanned. Turns run on every applied entry; the deadlines are
/// tens of seconds long, so one scan of all tasks per second is plenty and keeps it off the
/// write path.
pub const DEADLINE_SCAN_PERIOD_MS: u64 = 1_000;
/// A node that gossip never mentions, seen from a leader that has been leader this long, is
/// declared down: gossip has had ample time to tell us about it.
pub const UNSEEN_NODE_GRACE_MS: u64 = 10_000;

/// A member's status in this node's membership view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberStatus {
    Alive,
    /// Not answering probes; not yet declared dead.
    Suspect,
    /// Declared dead.
    Dead,
    /// Left on purpose.
    Left,
}

impl MemberStatus {
    /// Alive or suspect: not (yet) gone.
    pub fn is_live(self) -> bool {
        matches!(self, MemberStatus::Alive | MemberStatus::Suspect)
    }
}

/// What placement asks of the membership view: whether a node is alive in it. The copy of the
/// view the controller's turn takes answers it, and so does the gossip view itself, read in
/// place by a create on the leader (a copy per create cost more than the placement).
pub trait Liveness {
    fn is_alive(&self, node: &str) -> bool;
}

impl Liveness for BTreeMap<NodeId, Member> {
    fn is_alive(&self, node: &str) -> bool {
        self.get(node)
            .is_some_and(|m| m.status == MemberStatus::Alive)
    }
}

/// One member of the membership view. The driver converts gossip's members into these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub status: MemberStatus,
    /// What the member announces: its generation (grows on every start), addresses, capacity
    /// and labels.
    pub meta: NodeMeta,
}

/// What the controller needs of the Raft status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    /// This node is the leader (the controller acts only then).
    pub is_leader: bool,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// A joint-consensus change is under way: no other membership change is possible now.
    pub membership_changing: bool,
    /// The applied index; with the membership epoch it tells whether anything changed since
    /// placement last found nothing to do.
    pub applied_index: u64,
}

/// This node's own settings (not the cluster's, which are in the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's id.
    pub node_id: NodeId,
    /// How long a member must have been gone before its Raft seat is given away.
    pub voter_grace_ms: u64,
    /// The bootstrapping node's flags: proposed once as the cluster config while the state
    /// holds none. `None` on every other node.
    pub seed_config: Option<ClusterConfig>,
}

/// What the controller remembers from one turn to the next. Starts as `default()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerMemory {
    /// When this node was first seen as leader, in this stretch of leadership.
    pub leader_since: Option<u64>,
    /// When each member of the view was first seen dead or gone (for the voter grace period).
    /// Holds only members of the view, so it is bounded by it.
    pub gone_since: BTreeMap<NodeId, u64>,
    /// Where the last placement pass that placed nothing left off (it may have recorded
    /// reasons): while the state's capacity version and the membership epoch stay the same,
    /// no task it saw can be placed, so the next pass looks only at the tasks that began to
    /// wait since; an entry that makes no room (a report, a reason, a new task that does not
    /// fit) costs no scheduler pass over every waiting task.
    pub placement_idle: Option<IdleMark>,
    /// When the deadlines were last scanned.
    pub deadlines_checked: Option<u64>,
}

/// See `ControllerMemory::placement_idle`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleMark {
    /// `ClusterState::capacity_version` then.
    pub capacity: u64,
    /// The membership epoch then.
    pub epoch: u64,
    /// `ClusterState::wait_seq` then: the tasks numbered up to it were looked at.
    pub waits_upto: u64,
}

impl IdleMark {
    /// No room was made and gossip's view did not change since the mark was set.
    fn holds(&self, state: &ClusterState, epoch: u64) -> bool {
        self.capacity == state.capacity_version() && self.epoch == epoch
    }
}

/// How many waiting tasks the next placement pass looks at, at most: all of them, or with an
/// idle mark that still holds only those that began to wait since (0: placement is idle). The
/// driver decides on a copy of the state when this is large, so the pass never holds applies
/// back for long.
pub fn placement_work(memory: &ControllerMemory, state: &ClusterState, epoch: u64) -> usize {
    match memory.placement_idle {
        Some(m) if m.holds(state, epoch) => {
            let began = state.wait_seq().saturating_sub(m.waits_upto);
            usize::try_from(began)
                .unwrap_or(usize::MAX)
                .min(state.pending_count())
        }
        _ => state.pending_count(),
    }
}

/// Everything one turn of the controller looks at.
pub struct Input<'a> {
    pub state: &'a ClusterState,
    /// The membership view, by member id.
    pub members: &'a BTreeMap<NodeId, Member>,
    /// Bumped by the driver on every membership event.
    pub membership_epoch: u64,
    pub raft: &'a RaftView,
    pub settings: &'a Settings,
    pub now_ms: u64,
    pub memory: &'a ControllerMemory,
    /// Fresh allocation ids.
    pub ids: &'a dyn IdSource,
}

/// What the driver does, in order.
///
/// Execution rule: a failed `Propose` ends the turn (the next turn decides again from the
/// state); a failed `AddLearner` or `RemoveNode` is logged and the turn goes on; after a failed
/// `ChangeVoters` the `RemoveNode`s of the same turn are skipped, since they assumed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Propose a command through Raft.
    Propose(Command),
    /// Add a node to Raft as a learner.
    AddLearner {
        node: NodeId,
        raft_addr: String,
        api_addr: String,
    },
    /// Make exactly these nodes the voters (learners not named stay learners).
    ChangeVoters(BTreeSet<NodeId>),
    /// Remove a learner from Raft.
    RemoveNode(NodeId),
}

/// The result of one turn: the actions and the memory for the next turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub memory: ControllerMemory,
}

/// One turn of the controller.
pub fn decide(input: &Input<'_>) -> Outcome {
    let now = input.now_ms;
    let mut memory = input.memory.clone();
    // Gone times are kept whether or not this node leads, so a new leader knows how long a
    // member has been gone as far as it has seen.
    memory
        .gone_since
        .retain(|id, _| input.members.get(id).is_some_and(|m| !m.status.is_live()));
    for (id, m) in input.members {
        if !m.status.is_live() {
            memory.gone_since.entry(id.clone()).or_insert(now);
        }
    }
    if !input.raft.is_leader {
        memory.leader_since = None;
        memory.placement_idle = None;
        return Outcome {
            actions: Vec::new(),
            memory,
        };
    }
    let leader_since = *memory.leader_since.get_or_insert(now);

    let mut actions = config::decide(input.state, input.settings, now);
    actions.extend(nodes::decide(input.state, input.members, now, leader_since));
    // Later sub-deciders see the state as it will be once these commands commit.
    let state: Cow<'_, ClusterState> = if actions.is_empty() {
        Cow::Borrowed(input.state)
    } else {
        let mut s = input.state.clone();
        for a in &actions {
            if let Action::Propose(cmd) = a {
                s.apply(cmd);
            }
        }
        Cow::Owned(s)
    };
    let settled = matches!(state, Cow::Borrowed(_));
    actions.extend(membership::decide(&membership::Input {
        state: &state,
        members: input.members,
        raft: input.raft,
        settings: input.settings,
        gone_since: &memory.gone_since,
        now,
        leader_since,
    }));
    actions.extend(
        services::decide(&state, now, input.ids)
            .into_iter()
            .map(Action::Propose),
    );
    // Only a settled turn (the state as it is, not as it will be) uses or sets the mark.
    let mark = memory
        .placement_idle
        .filter(|m| settled && m.holds(input.state, input.membership_epoch));
    let waiting: Option<Vec<&orion_types::Task>> = match mark {
        // Nothing began to wait since a pass that placed nothing: idle.
        Some(m) if m.waits_upto >= input.state.wait_seq() => None,
        Some(m) => Some(state.waiting_after(m.waits_upto).collect()),
        // From the pending index: no scan of every task.
        None => Some(state.pending_tasks().collect()),
    };
    if let Some(waiting) = waiting {
        let pass = placement::decide(&state, waiting, input.members, input.ids, now);
        // A pass that placed nothing leaves every task it saw unplaceable until room is made
        // (its reasons, if any, are proposed now).
        if !pass.placed_any && settled {
            memory.placement_idle = Some(IdleMark {
                capacity: input.state.capacity_version(),
                epoch: input.membership_epoch,
                waits_upto: input.state.wait_seq(),
            });
        }
        actions.extend(pass.actions);
    }
    actions.extend(deadlines::decide(
        &state,
        now,
        &mut memory.deadlines_checked,
    ));
    Outcome { actions, memory }
}
