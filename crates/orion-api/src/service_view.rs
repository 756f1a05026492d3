//! The service object of API.md: the spec in the very shape a user sends it (so that a
//! client can read a service, change a field and `PUT` it back), plus what Orion adds:
//! `id`, `version`, `createdAt`, `updatedAt`, `vip`, `replicas: {desired, running, healthy}`,
//! `deployment` and `endpoints`.

use crate::view::rfc3339;
use orion_state::ClusterState;
use orion_types::endpoint::ServiceEndpoints;
use orion_types::service::{HealthTest, ServiceMode};
use orion_types::{Deployment, Service, ServiceSpec};
use serde_json::{Map, Value, json};

/// The fields of the service object that are not part of the spec: a client removes these
/// (and turns `replicas` back into a number) to `PUT` a service it has read.
pub const SERVICE_VIEW_ONLY_FIELDS: &[&str] = &[
    "id",
    "version",
    "createdAt",
    "updatedAt",
    "vip",
    "deployment",
    "endpoints",
];

/// A duration in Docker's notation: "0s", "500ms", "5s", "1m30s", "1h".
pub fn format_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    if milli > 0 {
        out.push_str(&format!("{milli}ms"));
    }
    out
}

/// The spec as a `POST /services` body: parsing it back gives the same spec.
pub fn spec_json(spec: &ServiceSpec) -> Map<String, Value> {
    let t = &spec.task;
    let mut o = Map::new();
    o.insert("name".into(), json!(spec.name));
    o.insert("stack".into(), json!(spec.stack));
    o.insert("image".into(), json!(t.image));
    o.insert("command".into(), json!(t.command));
    o.insert("env".into(), json!(t.env));
    o.insert("memory".into(), json!(t.memory_bytes));
    o.insert("cpu".into(), json!(t.cpu_millis as f64 / 1000.0));
    o.insert("labels".into(), json!(t.labels));
    o.insert("nodeSelectors".into(), json!(t.node_selectors));
    let constraints: Vec<String> = t.constraints.iter().map(ToString::to_string).collect();
    o.insert("constraints".into(), json!(constraints));
    o.insert("restartPolicy".into(), json!(t.restart_policy.as_str()));
    o.insert("strategy".into(), json!(t.strategy.map(|s| s.as_str())));
    if let Some(ms) = t.stop_after_disconnect_ms {
        o.insert(
            "stopAfterDisconnect".into(),
            json!(orion_types::api::format_duration_ms(ms)),
        );
    }
    o.insert("mode".into(), json!(spec.mode.as_str()));
    if spec.mode == ServiceMode::Replicated {
        o.insert("replicas".into(), json!(spec.replicas));
        o.insert("maxPerNode".into(), json!(spec.max_per_node));
    }
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .map(|p| {
            json!({
                "target": p.target,
                "published": p.published,
                "protocol": p.protocol.as_str(),
                "mode": p.mode.as_str(),
                "proxyProtocol": p.proxy_protocol,
            })
        })
        .collect();
    o.insert("ports".into(), json!(ports));
    let health = spec.healthcheck.as_ref().map(|h| {
        let mut v = match &h.test {
            HealthTest::Image => return json!("image"),
            HealthTest::Http(path) => json!({"http": path}),
            HealthTest::Tcp => json!({"tcp": true}),
            HealthTest::Exec(cmd) => json!({"exec": cmd}),
        };
        v["port"] = json!(h.port);
        v["interval"] = json!(format_duration(h.interval_ms));
        v["timeout"] = json!(format_duration(h.timeout_ms));
        v["retries"] = json!(h.retries);
        v["startPeriod"] = json!(format_duration(h.start_period_ms));
        v
    });
    o.insert("healthcheck".into(), health.unwrap_or(Value::Null));
    let u = &spec.update;
    o.insert(
        "update".into(),
        json!({
            "parallelism": u.parallelism,
            "delay": format_duration(u.delay_ms),
            "order": u.order.as_str(),
            "monitor": format_duration(u.monitor_ms),
            "failureAction": u.failure_action.as_str(),
            "maxFailureRatio": f64::from(u.max_failure_permille) / 1000.0,
        }),
    );
    o.insert(
        "stopGracePeriod".into(),
        json!(format_duration(spec.stop_grace_period_ms)),
    );
    o
}

fn deployment_json(d: &Deployment) -> Value {
    let events: Vec<Value> = d
        .events
        .iter()
        .map(|e| json!({"at": rfc3339(e.at), "state": e.state.as_str(), "message": e.message}))
        .collect();
    json!({
        "id": d.id,
        "fromVersion": d.from_version,
        "toVersion": d.to_version,
        "state": d.state.as_str(),
        "updated": d.updated,
        "total": d.total,
        "failed": d.failed,
        "message": d.message,
        "startedAt": rfc3339(d.started_at),
        "endedAt": d.ended_at.map(rfc3339),
        "events": events,
    })
}

/// The service object of API.md. `eps` is the service's entry in this node's endpoint view
/// (its endpoints with their health as this node routes to them).
pub fn service_json(svc: &Service, state: &ClusterState, eps: Option<&ServiceEndpoints>) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(svc.id));
    o.extend(spec_json(&svc.spec));
    let counts = state.replica_counts(svc);
    let endpoints: Vec<Value> = eps
        .map(|e| e.endpoints.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let protocol = svc
                .spec
                .ports
                .iter()
                .find(|p| p.target == e.target_port)
                .map_or("tcp", |p| p.protocol.transport().as_str());
            json!({
                "task": e.task,
                "node": e.node,
                "address": e.address.to_string(),
                "port": e.port,
                "targetPort": e.target_port,
                "protocol": protocol,
                "healthy": e.healthy && !e.draining,
            })
        })
        .collect();
    o.insert("version".into(), json!(svc.version));
    o.insert("createdAt".into(), json!(rfc3339(svc.created_at)));
    o.insert("updatedAt".into(), json!(rfc3339(svc.updated_at)));
    o.insert("vip".into(), json!(svc.vip.map(|v| v.to_string())));
    o.insert(
        "replicas".into(),
        json!({"desired": counts.desired, "running": counts.running, "healthy": counts.healthy}),
    );
    o.insert(
        "deployment".into(),
        svc.deployment
            .as_ref()
            .map(deployment_json)
            .unwrap_or(Value::Null),
    );
    o.insert("endpoints".into(), Value::Array(endpoints));
    Value::Object(o)
}

/// The service object as the OpenAPI description shows it (`service_json` writes it by hand);
/// a test checks the JSON it writes against this schema.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// `name`, or `name.stack`.
    pub id: String,
    pub name: String,
    pub stack: Option<String>,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: std::collections::BTreeMap<String, String>,
    /// Per task, in bytes; 0: no limit.
    pub memory: u64,
    /// Per task, in cores; 0: no limit.
    pub cpu: f64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub node_selectors: std::collections::BTreeMap<String, String>,
    pub constraints: Vec<String>,
    pub restart_policy: orion_types::RestartPolicy,
    pub strategy: Option<orion_types::Strategy>,
    /// Absent when not set.
    #[serde(default)]
    pub stop_after_disconnect: Option<String>,
    pub mode: ServiceMode,
    /// Replicated services only.
    #[serde(default)]
    pub max_per_node: Option<u32>,
    pub ports: Vec<ServicePortView>,
    pub healthcheck: Option<HealthcheckView>,
    pub update: UpdateView,
    pub stop_grace_period: String,
    /// Grows on every spec change.
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The virtual IP, from the cluster's `vipRange`; `null` only for a service created
    /// before VIPs existed.
    pub vip: Option<String>,
    pub replicas: ReplicasView,
    /// The latest rollout, if any.
    pub deployment: Option<DeploymentView>,
    /// Where the running tasks answer, as this node's endpoint view has them.
    pub endpoints: Vec<EndpointView>,
}

/// A port of a service (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortView {
    pub target: u16,
    pub published: Option<u16>,
    pub protocol: orion_types::service::ServiceProtocol,
    pub mode: orion_types::service::PortMode,
    pub proxy_protocol: bool,
}

/// A service's health check: `"image"` or a probe (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum HealthcheckView {
    /// `"image"`: the image's own HEALTHCHECK.
    Image(String),
    Probe(HealthProbeView),
}

/// A health probe with its defaults filled in (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthProbeView {
    /// One of `http`, `tcp`, `exec` is present.
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub tcp: Option<bool>,
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    pub port: Option<u16>,
    pub interval: String,
    pub timeout: String,
    pub retries: u32,
    pub start_period: String,
}

/// A service's update policy with its defaults filled in (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateView {
    pub parallelism: u32,
    pub delay: String,
    pub order: orion_types::service::UpdateOrder,
    pub monitor: String,
    pub failure_action: orion_types::service::FailureAction,
    pub max_failure_ratio: f64,
}

/// Replica counts (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
pub struct ReplicasView {
    /// What the spec asks for (global: one per eligible node).
    pub desired: u32,
    pub running: u32,
    /// Running and healthy (or with no health check).
    pub healthy: u32,
}

/// A rollout (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    pub id: String,
    pub from_version: u64,
    pub to_version: u64,
    /// running, completed, paused, rolling-back, rolled-back or failed.
    pub state: String,
    /// Tasks already on the new version.
    pub updated: u32,
    pub total: u32,
    pub failed: u32,
    pub message: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub events: Vec<crate::view::EventView>,
}

/// Where a running task of the service answers (documentation only).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub task: String,
    pub node: Option<String>,
    pub address: String,
    pub port: u16,
    pub target_port: u16,
    pub protocol: orion_types::Protocol,
    pub healthy: bool,
}
