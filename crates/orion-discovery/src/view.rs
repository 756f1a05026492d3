//! The endpoint view's builder: a pure function of the replicated state, the health each node
//! announces by gossip, and the nodes' addresses. The agent calls it whenever one of the three
//! changes and publishes the result to DNS and the mesh.
//!
//! Rules:
//! - an endpoint is a task of the service in state `running` on a node, for each service port
//!   whose target the task has a host port for (the task's reported `ports`);
//! - its address is the node's publish address, or its advertise address when the node
//!   publishes on every interface (`0.0.0.0`);
//! - it is healthy when the replicated health allows it (`none` or `healthy`: a new task
//!   enters only once its check passed and that was committed) AND its node's latest gossip
//!   announcement does not list its allocation as unhealthy. So a failing check takes an
//!   endpoint out as fast as gossip spreads (no Raft write needed, and it works on a node cut
//!   off from the quorum), while putting one in waits for the log.

use crate::health::NodeHealth;
use orion_state::{ClusterState, NodeStatus};
use orion_types::endpoint::{Endpoint, EndpointView, ServiceEndpoints};
use orion_types::{Health, NodeId, NodeMeta, TaskState};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Where a node can be reached: what peers dial, and where it publishes container ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddrs {
    pub advertise: IpAddr,
    pub publish: IpAddr,
}

impl NodeAddrs {
    /// From a node's gossip metadata; `None` when its addresses do not parse (never from an
    /// agent of this version; a peer's bad metadata must not break the view).
    pub fn of(meta: &NodeMeta) -> Option<NodeAddrs> {
        let advertise = meta.gossip_addr.parse::<SocketAddr>().ok()?.ip();
        let publish = meta.publish_ip.parse::<IpAddr>().ok()?;
        Some(NodeAddrs { advertise, publish })
    }

    /// The host address of a port published on this node.
    pub fn endpoint_address(&self) -> IpAddr {
        if self.publish.is_unspecified() {
            self.advertise
        } else {
            self.publish
        }
    }
}

/// The addresses of every node of the state that has not left, from its recorded metadata.
/// The agent overlays newer generations it heard of by gossip.
pub fn node_addrs(state: &ClusterState) -> BTreeMap<NodeId, NodeAddrs> {
    state
        .nodes
        .iter()
        .filter(|(_, r)| !r.left)
        .filter_map(|(id, r)| Some((id.clone(), NodeAddrs::of(&r.meta)?)))
        .collect()
}

/// Builds the view. `health` holds each node's latest announcement; `nodes` the addresses.
pub fn build(
    state: &ClusterState,
    health: &BTreeMap<NodeId, NodeHealth>,
    nodes: &BTreeMap<NodeId, NodeAddrs>,
) -> EndpointView {
    let mut view = EndpointView::default();
    for (id, addrs) in nodes {
        // A node recorded down has no endpoints, but its name still resolves (its address is
        // what an operator looks for when it is in trouble).
        view.nodes.insert(id.clone(), addrs.advertise);
    }
    // One pass over the tasks (not one per service): a rebuild runs on every applied entry.
    // None at all when there is no service: only service tasks are endpoints.
    let mut running: BTreeMap<&str, Vec<&orion_types::Task>> = BTreeMap::new();
    let tasks = if state.services.is_empty() {
        None
    } else {
        Some(state.tasks.values())
    };
    for task in tasks.into_iter().flatten() {
        if task.state == TaskState::Running
            && let Some(svc) = task.service.as_deref()
        {
            running.entry(svc).or_default().push(task);
        }
    }
    for svc in state.services.values() {
        let mut out = ServiceEndpoints {
            id: svc.id.clone(),
            vip: svc.vip,
            ports: svc.spec.ports.clone(),
            endpoints: Vec::new(),
        };
        for task in running.get(svc.id.as_str()).into_iter().flatten() {
            let (Some(node), Some(alloc)) = (&task.node, &task.allocation) else {
                continue;
            };
            let Some(addrs) = nodes.get(node) else {
                continue;
            };
            if state
                .nodes
                .get(node)
                .is_some_and(|r| r.status == NodeStatus::Down)
            {
                continue;
            }
            let announced_bad = health.get(node).is_some_and(|h| h.is_unhealthy(alloc));
            let healthy = matches!(task.health, Health::None | Health::Healthy) && !announced_bad;
            for port in &svc.spec.ports {
                let transport = port.protocol.transport();
                let Some(mapping) = task
                    .ports
                    .iter()
                    .find(|m| m.container_port == port.target && m.protocol == transport)
                else {
                    continue;
                };
                if out.endpoints.iter().any(|e| {
                    e.task == task.id && e.target_port == port.target && e.port == mapping.host_port
                }) {
                    // The same target listed twice (tcp and http): one endpoint.
                    continue;
                }
                out.endpoints.push(Endpoint {
                    task: task.id.clone(),
                    node: node.clone(),
                    address: addrs.endpoint_address(),
                    port: mapping.host_port,
                    target_port: port.target,
                    healthy,
                    draining: false,
                });
            }
        }
        view.services.insert(svc.id.clone(), out);
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use orion_types::service::parse_service_request;
    use orion_types::{Command, NewServiceTask, PortMapping, Protocol};

    fn addrs(advertise: &str, publish: &str) -> NodeAddrs {
        NodeAddrs {
            advertise: advertise.parse().unwrap(),
            publish: publish.parse().unwrap(),
        }
    }

    /// A state with service `web` (ports 80 and 443) and its tasks `t<i>` on `nodes[i]`, each
    /// running with host ports 2000+i (80) and 3000+i (443), with `health[i]`.
    fn state(nodes: &[&str], health: &[Health]) -> ClusterState {
        let mut s = ClusterState::default();
        for n in ["n1", "n2", "n3"] {
            s.apply(&Command::UpsertNode {
                meta: Box::new(orion_types::NodeMeta::fixture(n, 1)),
                at: 1,
            });
        }
        let spec = parse_service_request(
            br#"{"name":"web","image":"x","replicas":3,"ports":[{"target":80},{"target":443,"published":8443}]}"#,
        )
        .unwrap();
        s.apply(&Command::CreateService {
            spec: Box::new(spec.clone()),
            at: 2,
        });
        for (i, node) in nodes.iter().enumerate() {
            let id = format!("t{i}");
            let alloc = format!("a{i}");
            s.apply(&Command::CreateServiceTasks {
                tasks: vec![NewServiceTask {
                    task_id: id.clone(),
                    service: "web".into(),
                    version: 1,
                    slot: Some(i as u32 + 1),
                    spec: Box::new(spec.task_spec(format!("web.{i}"), None)),
                }],
                at: 3,
            });
            let t = s.task_mut(&id).unwrap();
            t.node = Some(node.to_string());
            t.allocation = Some(alloc);
            t.state = TaskState::Running;
            t.health = health[i];
            t.ports = vec![
                PortMapping {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: "0.0.0.0".into(),
                    host_port: 2000 + i as u16,
                },
                PortMapping {
                    container_port: 443,
                    protocol: Protocol::Tcp,
                    host_ip: "0.0.0.0".into(),
                    host_port: 3000 + i as u16,
                },
            ];
        }
        s
    }

    fn nodes() -> BTreeMap<NodeId, NodeAddrs> {
        [
            ("n1".to_string(), addrs("10.0.0.1", "0.0.0.0")),
            ("n2".to_string(), addrs("10.0.0.2", "192.168.1.2")),
            ("n3".to_string(), addrs("10.0.0.3", "0.0.0.0")),
        ]
        .into()
    }

    /// One line per endpoint: `task node address:port target healthy`.
    fn check(
        state: &ClusterState,
        health: &BTreeMap<NodeId, NodeHealth>,
        nodes: &BTreeMap<NodeId, NodeAddrs>,
        want: &[&str],
    ) -> EndpointView {
        let view = build(state, health, nodes);
        let got: Vec<String> = view.services["web"]
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {} {}",
                    e.task,
                    e.node,
                    e.socket_addr(),
                    e.target_port,
                    if e.healthy { "up" } else { "down" }
                )
            })
            .collect();
        assert_eq!(got, want);
        view
    }

    #[test]
    fn endpoints_come_from_running_tasks_and_their_nodes_addresses() {
        let s = state(&["n1", "n2"], &[Health::None, Health::Healthy]);
        let view = check(
            &s,
            &BTreeMap::new(),
            &nodes(),
            &[
                "t0 n1 10.0.0.1:2000 80 up",
                "t0 n1 10.0.0.1:3000 443 up",
                "t1 n2 192.168.1.2:2001 80 up",
                "t1 n2 192.168.1.2:3001 443 up",
            ],
        );
        assert_eq!(
            view.services["web"].vip,
            Some("10.200.0.1".parse().unwrap())
        );
        assert_eq!(view.services["web"].ports.len(), 2);
        assert_eq!(view.nodes["n3"], "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(view.services["web"].healthy(80).count(), 2);
    }

    #[test]
    fn health_from_the_log_and_from_gossip() {
        // Starting and unhealthy in the log: listed, not healthy.
        let s = state(
            &["n1", "n2", "n3"],
            &[Health::Starting, Health::Unhealthy, Health::Healthy],
        );
        let mut health = BTreeMap::new();
        check(
            &s,
            &health,
            &nodes(),
            &[
                "t0 n1 10.0.0.1:2000 80 down",
                "t0 n1 10.0.0.1:3000 443 down",
                "t1 n2 192.168.1.2:2001 80 down",
                "t1 n2 192.168.1.2:3001 443 down",
                "t2 n3 10.0.0.3:2002 80 up",
                "t2 n3 10.0.0.3:3002 443 up",
            ],
        );
        // n3 announces t2's allocation unhealthy: out at once, though the log says healthy.
        health.insert("n3".to_string(), NodeHealth::of(["a2"]));
        // Another node's word about a2 counts for nothing: only a task's own node probes it.
        health.insert("n1".to_string(), NodeHealth::of(["a0", "zz"]));
        let view = build(&s, &health, &nodes());
        assert_eq!(view.services["web"].healthy(80).count(), 0);
        // n3 announces it fine again.
        health.insert("n3".to_string(), NodeHealth::of(Vec::<&str>::new()));
        let view = build(&s, &health, &nodes());
        let up: Vec<_> = view.services["web"].healthy(80).map(|e| &e.task).collect();
        assert_eq!(up, ["t2"]);
    }

    #[test]
    fn tasks_not_running_on_down_or_unknown_nodes_are_not_endpoints() {
        let mut s = state(&["n1", "n2", "n3"], &[Health::None; 3]);
        s.task_mut("t0").unwrap().state = TaskState::Starting;
        s.nodes.get_mut("n2").unwrap().status = NodeStatus::Down;
        let mut known = nodes();
        known.remove("n3");
        let view = check(&s, &BTreeMap::new(), &known, &[]);
        assert!(view.nodes.contains_key("n2"));
    }

    #[test]
    fn a_deleted_service_leaves_the_view() {
        let mut s = state(&["n1"], &[Health::None]);
        s.apply(&Command::DeleteService {
            id: "web".into(),
            at: 9,
        });
        assert!(build(&s, &BTreeMap::new(), &nodes()).services.is_empty());
    }

    #[test]
    fn node_addresses_come_from_their_metadata() {
        let mut meta = orion_types::NodeMeta::fixture("n1", 1);
        meta.gossip_addr = "10.1.2.3:6000".into();
        meta.publish_ip = "0.0.0.0".into();
        let a = NodeAddrs::of(&meta).unwrap();
        assert_eq!(a.endpoint_address(), "10.1.2.3".parse::<IpAddr>().unwrap());
        meta.publish_ip = "bogus".into();
        assert_eq!(NodeAddrs::of(&meta), None);
        let s = state(&[], &[]);
        assert_eq!(
            node_addrs(&s).len(),
            0,
            "fixture addresses are names, not IPs"
        );
    }
}
