//! The discovery driver: keeps this node's endpoint view up to date and announces the health
//! of its own endpoints by gossip. It decides nothing: the view is
//! `orion_discovery::build` of the replicated state, the announcements and the addresses.
//!
//! A node cut off from the quorum keeps its last replicated state, so it keeps serving the
//! view built from it; announcements still arrive by gossip and can take endpoints out.

use orion_discovery::{NodeAddrs, NodeHealth};
use orion_gossip::{Gossip, MemberStatus};
use orion_raft::RaftNode;
use orion_types::endpoint::EndpointView;
use orion_types::{AllocId, NodeId, NodeMeta};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The view is rebuilt at most this often under a stream of applied entries: a rebuild reads
/// every service's tasks, and DNS's TTLs are seconds.
const REBUILD_GAP: Duration = Duration::from_millis(20);
/// Rebuilt at least this often, whatever happens (membership changes without an event).
const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// The node announces its endpoints' health again this often even when nothing changed, so a
/// member that joined later or lost the broadcast catches up (gossip retransmits a note a
/// bounded number of times only).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);

/// The view as the replicated state, the nodes' notes and the membership give it now.
pub fn build_view(raft: &RaftNode, gossip: &Gossip<NodeMeta>) -> EndpointView {
    let mut health: BTreeMap<NodeId, NodeHealth> = BTreeMap::new();
    for (node, data) in gossip.notes() {
        match NodeHealth::decode(&data) {
            Ok(h) => {
                health.insert(node, h);
            }
            Err(e) => debug!(%node, error = %e, "ignoring a health announcement"),
        }
    }
    let members = gossip.members();
    raft.read(|state| {
        let mut nodes = orion_discovery::node_addrs(state);
        // A node that restarted with new addresses is known by gossip before the log says so.
        for m in &members {
            let newer = state
                .nodes
                .get(&m.node_id)
                .is_none_or(|r| m.meta.generation > r.meta.generation);
            if newer
                && m.status == MemberStatus::Alive
                && let Some(a) = NodeAddrs::of(&m.meta)
            {
                nodes.insert(m.node_id.clone(), a);
            }
        }
        orion_discovery::build(state, &health, &nodes)
    })
}

/// Rebuilds the view on every applied entry, note or membership change (at most every
/// `REBUILD_GAP`, at least every `REBUILD_EVERY`) and publishes it when it changed.
pub async fn run_view(
    raft: RaftNode,
    gossip: Gossip<NodeMeta>,
    tx: watch::Sender<Arc<EndpointView>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = raft.subscribe();
    let mut notes = gossip.notes_changed();
    let mut members = gossip.subscribe();
    loop {
        let view = build_view(&raft, &gossip);
        tx.send_if_modified(|cur| {
            if **cur == view {
                false
            } else {
                *cur = Arc::new(view);
                true
            }
        });
        tokio::time::sleep(REBUILD_GAP).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
            r = notes.changed() => if r.is_err() { return },
            _ = members.recv() => {}
            _ = tokio::time::sleep(REBUILD_EVERY) => {}
        }
    }
}

/// Announces the failing allocations of this node (from the executor) by gossip: at once
/// when the set changes, and again every `ANNOUNCE_EVERY`.
pub async fn run_announcer(
    gossip: Gossip<NodeMeta>,
    mut unhealthy: watch::Receiver<Vec<AllocId>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let note = NodeHealth::of(unhealthy.borrow_and_update().iter()).encode();
        if let Err(e) = gossip.set_note(note).await {
            warn!(error = %e, "cannot announce endpoint health");
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = unhealthy.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
    }
}
