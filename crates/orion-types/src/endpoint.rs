//! The endpoint view: for each service, where its tasks answer and whether they are fit to
//! receive traffic. Discovery (DNS) and the mesh (the VIP and ingress proxies) read the same
//! view, which every node builds for itself from the replicated state (which tasks exist, on
//! which node, on which host ports) and the health its peers announce by gossip.
//!
//! Only the shape lives here: no IO, no clock. The agent publishes a fresh `EndpointView`
//! whenever its inputs change; readers hold an `Arc` of the last one.

use crate::service::ServicePort;
use crate::{NodeId, TaskId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One task's answer to one of its service's target ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub task: TaskId,
    pub node: NodeId,
    /// Host address the task's port is published on (the node's publish address, or its
    /// advertise address when it publishes on every interface).
    pub address: IpAddr,
    /// Host port.
    pub port: u16,
    /// The service port (container side) it serves.
    pub target_port: u16,
    /// Fit to receive new connections: running, health not failing, and not draining.
    pub healthy: bool,
    /// Leaving: no new connections are sent to it, the ones it has may finish.
    pub draining: bool,
}

impl Endpoint {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// What one service offers: its virtual IP, its ports, and its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    /// The service's id (`web`, `db.shop`).
    pub id: String,
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
}

impl ServiceEndpoints {
    /// The endpoints that may take a new connection to `target_port`.
    pub fn healthy(&self, target_port: u16) -> impl Iterator<Item = &Endpoint> + '_ {
        self.endpoints
            .iter()
            .filter(move |e| e.target_port == target_port && e.healthy && !e.draining)
    }
}

/// Every service's endpoints, and every node's advertise address, as one node sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// By service id.
    pub services: BTreeMap<String, ServiceEndpoints>,
    /// Node id to its advertise address (`<node>.node.orion`).
    pub nodes: BTreeMap<NodeId, IpAddr>,
}
