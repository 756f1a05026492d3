//! The mesh's wiring: every node runs `orion_mesh` over its endpoint view, with ingress
//! ports on its `--publish-ip`, connections to endpoints from its advertise address, and the
//! service VIPs held on this host (a dummy interface, else `lo`; see ARCHITECTURE.md).

use crate::config::AgentConfig;
use orion_types::endpoint::EndpointView;
use std::sync::Arc;
use tokio::sync::watch;

pub fn spawn(cfg: &AgentConfig, endpoints: watch::Receiver<Arc<EndpointView>>) -> orion_mesh::Mesh {
    let settings = orion_mesh::Settings {
        publish_ip: cfg.publish_ip,
        source_ip: Some(cfg.advertise),
        serve_vips: true,
        limits: orion_mesh::Limits::default(),
    };
    orion_mesh::Mesh::spawn(endpoints, settings, Box::new(orion_mesh::IpCommand::new()))
}
