//! Keeps the state's node records in line with the membership view: a live member that is
//! new, restarted (newer generation) or changed is recorded up (`UpsertNode`); a node recorded
//! up that the view declares dead or left, or that the view has not mentioned for
//! `UNSEEN_NODE_GRACE_MS` of this leadership, is recorded down (`NodeDown`), which releases its
//! tasks for placement elsewhere. A removed node is never recorded again.

use crate::{Action, Member, MemberStatus, UNSEEN_NODE_GRACE_MS};
use orion_state::{ClusterState, NodeStatus};
use orion_types::{Command, NodeId};
use std::collections::BTreeMap;

pub(crate) fn decide(
    state: &ClusterState,
    members: &BTreeMap<NodeId, Member>,
    now: u64,
    leader_since: u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    // A removed node (on the revocation list) may still speak gossip: it is never recorded again.
    for m in members
        .values()
        .filter(|m| m.status.is_live() && !state.revoked_nodes.contains_key(&m.id))
    {
        let stale = match state.nodes.get(&m.id) {
            None => true,
            Some(r) if r.left => m.meta.generation > r.meta.generation,
            Some(r) => {
                m.meta.generation >= r.meta.generation
                    && (r.meta != m.meta || r.status == NodeStatus::Down)
            }
        };
        if stale {
            actions.push(Action::Propose(Command::UpsertNode {
                meta: Box::new(m.meta.clone()),
                at: now,
            }));
        }
    }
    let unseen_long = now.saturating_sub(leader_since) > UNSEEN_NODE_GRACE_MS;
    for (id, r) in state
        .nodes
        .iter()
        .filter(|(_, r)| r.status == NodeStatus::Up)
    {
        let why = match members.get(id) {
            // Restarted: recorded up above with its new generation.
            Some(m) if m.meta.generation > r.meta.generation => None,
            Some(m) if m.status == MemberStatus::Dead => Some("declared dead by gossip"),
            Some(m) if m.status == MemberStatus::Left => Some("left the cluster"),
            Some(_) => None,
            None if unseen_long => Some("not seen in gossip"),
            None => None,
        };
        if let Some(why) = why {
            actions.push(Action::Propose(Command::NodeDown {
                node: id.clone(),
                generation: r.meta.generation,
                reason: why.to_string(),
                at: now,
            }));
        }
    }
    actions
}
