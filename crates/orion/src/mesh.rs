//! The mesh's wiring: every node runs `orion_mesh` over its endpoint view, with ingress
//! ports on its `--publish-ip`, connections to endpoints from its advertise address, and the
//! service VIPs held on this host (a dummy interface, else `lo`; see ARCHITECTURE.md).
//!
//! It also keeps the mesh's shortcuts: this node's own endpoints at their containers'
//! addresses, read from the engine (the containers labelled with this node), so a connection
//! to a local task skips the engine's port publishing (on loopback, Docker's userland proxy).

use crate::config::AgentConfig;
use orion_docker::{ContainerInfo, ContainerState, DockerRuntime};
use orion_mesh::{Shortcut, Shortcuts};
use orion_types::endpoint::EndpointView;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The shortcuts are read again at least this often (a container restarted in place keeps its
/// task but may change address)...
const SHORTCUTS_EVERY: Duration = Duration::from_secs(5);
/// ...and after every change of the view, at most this often (a list inspects every local
/// container; the view changes in bursts while tasks start).
const SHORTCUTS_GAP: Duration = Duration::from_millis(200);

pub fn spawn(
    cfg: &AgentConfig,
    endpoints: watch::Receiver<Arc<EndpointView>>,
    docker: DockerRuntime,
    stop: watch::Receiver<bool>,
) -> orion_mesh::Mesh {
    let (shortcuts_tx, shortcuts) = watch::channel(Arc::new(Shortcuts::new()));
    tokio::spawn(keep_shortcuts(
        docker,
        cfg.id.clone(),
        endpoints.clone(),
        shortcuts_tx,
        stop,
    ));
    let settings = orion_mesh::Settings {
        publish_ip: cfg.publish_ip,
        source_ip: Some(cfg.advertise),
        serve_vips: true,
        shortcuts: Some(shortcuts),
        limits: orion_mesh::Limits::default(),
    };
    orion_mesh::Mesh::spawn(endpoints, settings, Box::new(orion_mesh::IpCommand::new()))
}

/// Reads this node's containers from the engine after each view change (at most every
/// `SHORTCUTS_GAP`) and every `SHORTCUTS_EVERY`, and publishes their shortcuts. An engine
/// error keeps the last ones (a stale one fails its connect, and the published address is
/// tried next).
async fn keep_shortcuts(
    docker: DockerRuntime,
    node: String,
    mut view: watch::Receiver<Arc<EndpointView>>,
    tx: watch::Sender<Arc<Shortcuts>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match docker.list(&[(orion_executor::LABEL_NODE, &node)]).await {
            Ok(containers) => {
                let now = shortcuts(&containers);
                tx.send_if_modified(|cur| {
                    if **cur == now {
                        false
                    } else {
                        *cur = Arc::new(now);
                        true
                    }
                });
            }
            Err(e) => tracing::debug!(error = %e, "mesh: cannot list this node's containers"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = view.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(SHORTCUTS_EVERY) => {}
        }
        tokio::time::sleep(SHORTCUTS_GAP).await;
    }
}

/// The shortcuts of running containers: for each published TCP port, the task's (label) target
/// port at the container's own address, valid while the task is published at that host
/// address and port. A wildcard host address is where the endpoint view cannot name it, so it
/// gives no shortcut.
pub fn shortcuts(containers: &[ContainerInfo]) -> Shortcuts {
    let mut out = Shortcuts::new();
    for c in containers {
        if c.state != ContainerState::Running {
            continue;
        }
        let (Some(task), Some(ip)) = (
            c.labels.get(orion_executor::LABEL_TASK),
            c.ip_address
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        ) else {
            continue;
        };
        for p in c.ports.iter().filter(|p| p.protocol == "tcp") {
            let Ok(host) = p.host_ip.parse::<IpAddr>() else {
                continue;
            };
            if host.is_unspecified() {
                continue;
            }
            out.insert(
                (task.clone(), p.container_port),
                Shortcut {
                    published: SocketAddr::new(host, p.host_port),
                    direct: SocketAddr::new(ip, p.container_port),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use orion_docker::BoundPort;

    fn container(
        task: &str,
        state: ContainerState,
        ip: Option<&str>,
        ports: &[(u16, &str, &str, u16)],
    ) -> ContainerInfo {
        ContainerInfo {
            id: format!("c-{task}"),
            name: task.into(),
            labels: [(orion_executor::LABEL_TASK.to_string(), task.to_string())]
                .into_iter()
                .collect(),
            state,
            ports: ports
                .iter()
                .map(|(c, proto, ip, h)| BoundPort {
                    container_port: *c,
                    protocol: proto.to_string(),
                    host_ip: ip.to_string(),
                    host_port: *h,
                })
                .collect(),
            started_at: None,
            finished_at: None,
            ip_address: ip.map(str::to_string),
            health: None,
            pid: None,
        }
    }

    #[test]
    fn shortcuts_come_from_running_containers_published_tcp_ports() {
        let got = shortcuts(&[
            container(
                "t1",
                ContainerState::Running,
                Some("10.201.3.2"),
                &[
                    (80, "tcp", "127.0.140.1", 20001),
                    (53, "udp", "127.0.140.1", 20002),
                    (81, "tcp", "0.0.0.0", 20003),
                ],
            ),
            container(
                "t2",
                ContainerState::Exited {
                    code: 0,
                    oom_killed: false,
                },
                Some("10.201.3.3"),
                &[(80, "tcp", "127.0.140.1", 20004)],
            ),
            container(
                "t3",
                ContainerState::Running,
                None,
                &[(80, "tcp", "127.0.140.1", 20005)],
            ),
        ]);
        let want: Shortcuts = [(
            ("t1".to_string(), 80),
            Shortcut {
                published: "127.0.140.1:20001".parse().unwrap(),
                direct: "10.201.3.2:80".parse().unwrap(),
            },
        )]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }
}
