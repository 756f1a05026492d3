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

/// Containers of this node attach to a bridge network of its own, named after it.
pub fn network_name(node: &str) -> String {
    format!("orion-{node}")
}

/// Candidate subnets of the node's network: /24s of 10.201.0.0/16, starting at one that
/// depends on the node id, so the agents of several test clusters on one engine rarely try
/// the same one first (the engine refuses an overlapping subnet and the next is tried). Not
/// Docker's own pools (172.17.0.0/12, 192.168.0.0/16): those are small (about 30 networks)
/// and other tools on the host need them.
pub fn container_subnets(node: &str) -> Vec<(String, String)> {
    let start = orion_discovery::health::alloc_hash(node) % 256;
    (0..CONTAINER_SUBNET_TRIES)
        .map(|i| (start + i) % 256)
        .map(|k| (format!("10.201.{k}.0/24"), format!("10.201.{k}.1")))
        .collect()
}

/// Subnets tried before giving up (and running containers on the default bridge).
const CONTAINER_SUBNET_TRIES: u64 = 32;

/// Creates (or finds) this node's container network; `None` with a warning if the engine
/// refuses, in which case containers use the default bridge and the host's DNS.
pub async fn container_network(
    docker: &orion_docker::DockerRuntime,
    node: &str,
) -> Option<orion_executor::ContainerNetwork> {
    let name = network_name(node);
    match docker
        .ensure_network(
            &name,
            &[(orion_executor::LABEL_NODE, node)],
            &container_subnets(node),
        )
        .await
    {
        Ok(gateway) => {
            tracing::info!(network = %name, %gateway, "containers attach to this node's network; its gateway serves DNS");
            Some(orion_executor::ContainerNetwork {
                name,
                dns: gateway.to_string(),
            })
        }
        Err(e) => {
            warn!(network = %name, error = %e, "cannot create this node's container network: containers use the default bridge and cannot resolve service names");
            None
        }
    }
}

/// Starts DNS on `listen` (`--bind`:`--dns-port`). A listener that cannot bind logs and
/// ends; the agent runs on.
pub fn spawn_dns(
    listen: Vec<std::net::SocketAddr>,
    advertise: std::net::IpAddr,
    endpoints: watch::Receiver<Arc<EndpointView>>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use orion_discovery::dns_server;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = dns_server::upstreams_from_resolv_conf(&resolv, &listen);
    if upstreams.is_empty() {
        warn!("no nameserver in /etc/resolv.conf: names outside orion. get SERVFAIL");
    }
    let shared = dns_server::Shared::new(endpoints, upstreams, Some(advertise));
    listen
        .into_iter()
        .map(|addr| tokio::spawn(dns_server::serve(addr, shared.clone(), stop.clone())))
        .collect()
}

/// Starts DNS on the container network's gateway, port 53 (Docker's `dns` option takes no
/// port), if there is a network.
pub fn spawn_gateway_dns(
    network: Option<&orion_executor::ContainerNetwork>,
    advertise: std::net::IpAddr,
    endpoints: watch::Receiver<Arc<EndpointView>>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    match network.and_then(|n| n.dns.parse::<std::net::IpAddr>().ok()) {
        Some(gw) => spawn_dns(
            vec![std::net::SocketAddr::new(gw, 53)],
            advertise,
            endpoints,
            stop,
        ),
        None => Vec::new(),
    }
}
