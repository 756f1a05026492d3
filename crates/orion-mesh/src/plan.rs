//! What the mesh should be doing, as pure functions of the endpoint view: which addresses to
//! listen on (and for which service port), which VIPs this node must hold, and in which order
//! to try a service's endpoints for one new connection.

use orion_types::TaskId;
use orion_types::endpoint::EndpointView;
use orion_types::service::{PortMode, ServiceProtocol};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Bytes both ways, untouched.
    Tcp,
    /// TCP with a PROXY protocol v2 header first.
    ProxyV2,
    /// The first request head gets `X-Forwarded-For` and `Forwarded`.
    Http,
}

/// One listener's job: forward to `target_port` of service `service`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub service: String,
    pub target_port: u16,
    pub kind: Kind,
}

/// The addresses to listen on: every ingress-mode published TCP/HTTP port on `publish_ip`,
/// and, with `serve_vips`, each service's VIP on each of its TCP/HTTP target ports. UDP ports
/// are not proxied (see ARCHITECTURE.md). Two services claiming one address: the first by
/// service id keeps it, so every node decides the same.
pub fn listeners(
    view: &EndpointView,
    publish_ip: IpAddr,
    serve_vips: bool,
) -> BTreeMap<SocketAddr, Route> {
    let mut out = BTreeMap::new();
    for (id, svc) in &view.services {
        for port in &svc.ports {
            let kind = match (port.protocol, port.proxy_protocol) {
                (ServiceProtocol::Udp, _) => continue,
                (ServiceProtocol::Http, _) => Kind::Http,
                (ServiceProtocol::Tcp, true) => Kind::ProxyV2,
                (ServiceProtocol::Tcp, false) => Kind::Tcp,
            };
            let route = Route {
                service: id.clone(),
                target_port: port.target,
                kind,
            };
            if let (PortMode::Ingress, Some(published)) = (port.mode, port.published) {
                out.entry(SocketAddr::new(publish_ip, published))
                    .or_insert_with(|| route.clone());
            }
            if serve_vips && let Some(vip) = svc.vip {
                out.entry(SocketAddr::new(IpAddr::V4(vip), port.target))
                    .or_insert(route);
            }
        }
    }
    out
}

/// The VIPs this node must hold: every service's that has a proxied port.
pub fn vips(view: &EndpointView) -> BTreeSet<Ipv4Addr> {
    view.services
        .values()
        .filter(|s| s.ports.iter().any(|p| p.protocol != ServiceProtocol::Udp))
        .filter_map(|s| s.vip)
        .collect()
}

/// A local endpoint's address that skips its published host port: the container's own
/// address and target port, valid while the endpoint is still published at `published`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortcut {
    pub published: SocketAddr,
    pub direct: SocketAddr,
}

/// This node's shortcuts, by task and target port.
pub type Shortcuts = HashMap<(TaskId, u16), Shortcut>;

/// One address to connect to for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    pub addr: SocketAddr,
    /// The container's own address on this host (a shortcut): connect from any source
    /// address, not the node's advertise address (a loopback source cannot leave `lo`).
    pub direct: bool,
}

/// The endpoints to try, in order, for the `turn`-th connection of a route: the healthy,
/// non-draining ones, rotated by `turn` (round robin), at most `max`. An endpoint with a
/// shortcut that still matches its published address is tried at its container's address
/// first, then at the published one (the shortcut may be stale by one refresh).
pub fn candidates(
    view: &EndpointView,
    route: &Route,
    turn: usize,
    max: usize,
    shortcuts: &Shortcuts,
) -> Vec<Dial> {
    let Some(svc) = view.services.get(&route.service) else {
        return Vec::new();
    };
    let healthy: Vec<_> = svc.healthy(route.target_port).collect();
    if healthy.is_empty() {
        return Vec::new();
    }
    let start = turn % healthy.len();
    let mut out = Vec::new();
    for e in healthy[start..].iter().chain(&healthy[..start]).take(max) {
        let published = e.socket_addr();
        if let Some(s) = shortcuts.get(&(e.task.clone(), e.target_port))
            && s.published == published
        {
            out.push(Dial {
                addr: s.direct,
                direct: true,
            });
        }
        out.push(Dial {
            addr: published,
            direct: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use orion_types::endpoint::{Endpoint, ServiceEndpoints};
    use orion_types::service::ServicePort;

    fn port(
        target: u16,
        published: Option<u16>,
        protocol: ServiceProtocol,
        mode: PortMode,
        pp: bool,
    ) -> ServicePort {
        ServicePort {
            target,
            published,
            protocol,
            mode,
            proxy_protocol: pp,
        }
    }

    fn endpoint(task: &str, port: u16, target: u16, healthy: bool, draining: bool) -> Endpoint {
        Endpoint {
            task: task.into(),
            node: "n1".into(),
            address: "127.0.0.1".parse().unwrap(),
            port,
            target_port: target,
            healthy,
            draining,
        }
    }

    fn view(services: Vec<ServiceEndpoints>) -> EndpointView {
        EndpointView {
            services: services.into_iter().map(|s| (s.id.clone(), s)).collect(),
            nodes: BTreeMap::new(),
        }
    }

    fn svc(
        id: &str,
        vip: Option<&str>,
        ports: Vec<ServicePort>,
        endpoints: Vec<Endpoint>,
    ) -> ServiceEndpoints {
        ServiceEndpoints {
            id: id.into(),
            vip: vip.map(|v| v.parse().unwrap()),
            ports,
            endpoints,
        }
    }

    /// One row: a view, with and without VIPs, and the listeners expected as
    /// `addr -> (service, target, kind)`.
    fn check(v: &EndpointView, serve_vips: bool, want: &[(&str, &str, u16, Kind)]) {
        let got: Vec<(String, String, u16, Kind)> =
            listeners(v, "127.0.108.101".parse().unwrap(), serve_vips)
                .into_iter()
                .map(|(a, r)| (a.to_string(), r.service, r.target_port, r.kind))
                .collect();
        let want: Vec<(String, String, u16, Kind)> = want
            .iter()
            .map(|(a, s, t, k)| (a.to_string(), s.to_string(), *t, *k))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn listeners_follow_ports_and_modes() {
        use Kind::*;
        use PortMode::*;
        use ServiceProtocol as P;
        let v = view(vec![
            svc(
                "web",
                Some("10.0.0.2"),
                vec![
                    port(80, Some(8080), P::Http, Ingress, false),
                    port(81, Some(8081), P::Tcp, Host, false),
                    port(82, None, P::Tcp, Ingress, true),
                    port(53, Some(53), P::Udp, Ingress, false),
                ],
                vec![],
            ),
            // Claims the same published port as web: "db" sorts first, so it keeps it.
            svc(
                "db",
                None,
                vec![port(5432, Some(8080), P::Tcp, Ingress, false)],
                vec![],
            ),
        ]);
        check(&v, false, &[("127.0.108.101:8080", "db", 5432, Tcp)]);
        check(
            &v,
            true,
            &[
                ("10.0.0.2:80", "web", 80, Http),
                ("10.0.0.2:81", "web", 81, Tcp),
                ("10.0.0.2:82", "web", 82, ProxyV2),
                ("127.0.108.101:8080", "db", 5432, Tcp),
            ],
        );
        check(&EndpointView::default(), true, &[]);
        assert_eq!(
            vips(&v),
            ["10.0.0.2".parse().unwrap()].into_iter().collect()
        );
    }

    #[test]
    fn candidates_skip_unhealthy_and_draining_and_rotate() {
        let v = view(vec![svc(
            "web",
            None,
            vec![],
            vec![
                endpoint("a", 1001, 80, true, false),
                endpoint("b", 1002, 80, false, false),
                endpoint("c", 1003, 80, true, true),
                endpoint("d", 1004, 80, true, false),
                endpoint("e", 1005, 81, true, false),
                endpoint("f", 1006, 80, true, false),
            ],
        )]);
        let route = Route {
            service: "web".into(),
            target_port: 80,
            kind: Kind::Tcp,
        };
        let none = Shortcuts::new();
        let ports = |turn, max| -> Vec<u16> {
            candidates(&v, &route, turn, max, &none)
                .iter()
                .map(|d| d.addr.port())
                .collect()
        };
        assert_eq!(ports(0, 5), vec![1001, 1004, 1006]);
        assert_eq!(ports(1, 5), vec![1004, 1006, 1001]);
        assert_eq!(ports(5, 2), vec![1006, 1001]);
        // Shortcuts: d's matches its published address and goes first; f's is stale (the
        // task is published elsewhere now) and is not used.
        let cut = |task: &str, published: u16, direct: &str| {
            (
                (task.to_string(), 80),
                Shortcut {
                    published: SocketAddr::new("127.0.0.1".parse().unwrap(), published),
                    direct: direct.parse().unwrap(),
                },
            )
        };
        let cuts: Shortcuts = [
            cut("d", 1004, "10.201.0.4:80"),
            cut("f", 999, "10.201.0.6:80"),
        ]
        .into_iter()
        .collect();
        let dials: Vec<(String, bool)> = candidates(&v, &route, 1, 5, &cuts)
            .iter()
            .map(|d| (d.addr.to_string(), d.direct))
            .collect();
        let want = [
            ("10.201.0.4:80", true),
            ("127.0.0.1:1004", false),
            ("127.0.0.1:1006", false),
            ("127.0.0.1:1001", false),
        ];
        assert_eq!(dials, want.map(|(a, d)| (a.to_string(), d)).to_vec());
        let other = Route {
            service: "nope".into(),
            ..route.clone()
        };
        assert!(candidates(&v, &other, 0, 3, &none).is_empty());
    }
}
