//! Keeps Raft membership right. New live members join as learners. Voters are kept at an odd
//! count up to the cluster config's `voters` (so a lost node never costs quorum, and the
//! two-node quick start keeps one voter). A voter gone longer than the grace period is
//! replaced one for one by a live learner; a crashed voter with no learner to take its seat
//! keeps it (it may come back, and a smaller voter set would survive fewer failures), while
//! one that left on purpose gives it up. Learners that left or stayed gone past the grace
//! period are removed. Nothing changes while a joint-consensus change is under way.

use crate::{Action, Member, MemberStatus, RaftView, Settings, UNSEEN_NODE_GRACE_MS};
use orion_state::ClusterState;
use orion_types::NodeId;
use std::collections::{BTreeMap, BTreeSet};

pub(crate) struct Input<'a> {
    pub state: &'a ClusterState,
    pub members: &'a BTreeMap<NodeId, Member>,
    pub raft: &'a RaftView,
    pub settings: &'a Settings,
    pub gone_since: &'a BTreeMap<NodeId, u64>,
    pub now: u64,
    pub leader_since: u64,
}

impl Input<'_> {
    /// Left on purpose: by its own word in the log, or by gossip, or removed by an admin
    /// (on the revocation list: it keeps no seat, whatever gossip says).
    fn left(&self, id: &str) -> bool {
        self.state.revoked_nodes.contains_key(id)
            || self.state.nodes.get(id).is_some_and(|r| r.left)
            || self
                .members
                .get(id)
                .is_some_and(|m| m.status == MemberStatus::Left)
    }

    fn alive(&self, id: &str) -> bool {
        !self.state.revoked_nodes.contains_key(id)
            && self
                .members
                .get(id)
                .is_some_and(|m| m.status == MemberStatus::Alive)
    }

    /// Left, or gone (dead, or never seen by this leader) for longer than the grace period.
    fn gone_long(&self, id: &str) -> bool {
        let grace = self.settings.voter_grace_ms;
        let longer = |since: u64| self.now.saturating_sub(since) > grace;
        if self.left(id) {
            return true;
        }
        match self.members.get(id) {
            Some(_) => self.gone_since.get(id).is_some_and(|t| longer(*t)),
            None => self.now.saturating_sub(self.leader_since) > grace.max(UNSEEN_NODE_GRACE_MS),
        }
    }
}

pub(crate) fn decide(input: &Input<'_>) -> Vec<Action> {
    let raft = input.raft;
    if raft.membership_changing {
        return Vec::new();
    }
    let me = input.settings.node_id.as_str();
    let mut actions = Vec::new();
    // New live members join as learners.
    for m in input.members.values() {
        if !input.alive(&m.id)
            || m.id == me
            || raft.voters.contains(&m.id)
            || raft.learners.contains(&m.id)
        {
            continue;
        }
        actions.push(Action::AddLearner {
            node: m.id.clone(),
            raft_addr: m.meta.raft_addr.clone(),
            api_addr: m.meta.api_addr.clone(),
        });
    }
    let voters = &raft.voters;
    let dead: BTreeSet<&NodeId> = voters
        .iter()
        .filter(|v| v.as_str() != me && input.gone_long(v))
        .collect();
    // Live learners, by id: the seats go to them in that order.
    let mut candidates = raft
        .learners
        .iter()
        .filter(|l| input.alive(l))
        .cloned()
        .collect::<Vec<NodeId>>()
        .into_iter();
    let mut next: BTreeSet<NodeId> = voters
        .iter()
        .filter(|v| !dead.contains(v))
        .cloned()
        .collect();
    for d in &dead {
        match candidates.next() {
            Some(c) => {
                next.insert(c);
            }
            None if !input.left(d) => {
                next.insert((*d).clone());
            }
            None => {}
        }
    }
    // Grow towards the cap, keeping the count odd.
    let cap = input.state.config().voters;
    let mut rest: Vec<NodeId> = candidates.collect();
    rest.reverse();
    while next.len() < cap && !rest.is_empty() {
        if next.len().is_multiple_of(2) {
            next.extend(rest.pop());
        } else if next.len() + 2 <= cap && rest.len() >= 2 {
            next.extend(rest.pop());
            next.extend(rest.pop());
        } else {
            break;
        }
    }
    if next != *voters && !next.is_empty() {
        actions.push(Action::ChangeVoters(next.clone()));
    }
    // Learners that left or stayed gone past the grace period are dropped.
    for l in &raft.learners {
        if !next.contains(l) && input.gone_long(l) {
            actions.push(Action::RemoveNode(l.clone()));
        }
    }
    actions
}
