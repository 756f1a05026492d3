//! Services (API.md "Services"): the validated `ServiceSpec`, its parts (ports, health check,
//! update policy), the `Health` of a task, the records the state keeps (`Service`,
//! `Deployment`), and `parse_service_request`, which turns a user's JSON into a spec or an
//! error naming the field.
//!
//! The fields a service shares with a task (image, command, env, memory, cpu, labels,
//! nodeSelectors, constraints, restartPolicy, strategy) are validated by the task's own
//! function (`api::task_fields`), so the two can never drift apart. Durations are Docker's
//! strings ("500ms", "5s", "1m30s") or a whole number of seconds.

use crate::api::{
    OrText, ValidationError, err, parse_object, parse_port_number, refuse_unknown, task_fields,
};
use crate::limits::{PORTS_MAX, SERVICE_DURATION_MAX_MS, SERVICE_REPLICAS_MAX};
use crate::{Constraint, ConstraintOp, NodeAttr, PortSpec, Protocol, TaskSpec, UnixMillis};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum ServiceMode {
    /// `replicas` copies, each in a numbered slot.
    #[default]
    Replicated,
    /// One task on every eligible node.
    Global,
}

impl ServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::Replicated => "replicated",
            ServiceMode::Global => "global",
        }
    }
}

/// A service port's protocol: `http` is TCP that the mesh may treat as HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum ServiceProtocol {
    Tcp,
    Udp,
    Http,
}

impl ServiceProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceProtocol::Tcp => "tcp",
            ServiceProtocol::Udp => "udp",
            ServiceProtocol::Http => "http",
        }
    }
    /// The transport the container port is bound with.
    pub fn transport(self) -> Protocol {
        match self {
            ServiceProtocol::Udp => Protocol::Udp,
            ServiceProtocol::Tcp | ServiceProtocol::Http => Protocol::Tcp,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum PortMode {
    /// Published on every node through the mesh (the discovery issue); until the mesh
    /// exists, published on the task's node.
    #[default]
    Ingress,
    /// Published on the task's node only.
    Host,
}

impl PortMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PortMode::Ingress => "ingress",
            PortMode::Host => "host",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    pub target: u16,
    /// `None`: not published (reachable by name and VIP once discovery exists).
    pub published: Option<u16>,
    pub protocol: ServiceProtocol,
    pub mode: PortMode,
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTest {
    /// GET on the target port; 2xx or 3xx is healthy.
    Http(String),
    /// A TCP connect to the target port.
    Tcp,
    /// A command in the container; exit 0 is healthy.
    Exec(Vec<String>),
    /// The image's own Docker `HEALTHCHECK`.
    Image,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub test: HealthTest,
    /// Target (container) port for `http` and `tcp`.
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

/// A task's health as the executor of its node last saw it. Only transitions are replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check is defined.
    #[default]
    None,
    /// A check is defined and has not passed yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[derive(utoipa::ToSchema)]
pub enum UpdateOrder {
    /// The new task starts and turns ready before the old one stops: no gap in service.
    #[default]
    StartFirst,
    StopFirst,
}

impl UpdateOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StartFirst => "start-first",
            UpdateOrder::StopFirst => "stop-first",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum FailureAction {
    #[default]
    Rollback,
    Pause,
    Continue,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Rollback => "rollback",
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks updated at once; at least 1.
    pub parallelism: u32,
    /// Wait between batches.
    pub delay_ms: u64,
    pub order: UpdateOrder,
    /// How long a new task must stay ready before it counts as updated.
    pub monitor_ms: u64,
    pub failure_action: FailureAction,
    /// Failures tolerated, as thousandths of the tasks updated (0..=1000): an exact integer.
    pub max_failure_permille: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StartFirst,
            monitor_ms: 5_000,
            failure_action: FailureAction::Rollback,
            max_failure_permille: 0,
        }
    }
}

/// A validated service specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub stack: Option<String>,
    /// The shared fields, as a task: `name` is `None` and `ports` empty here; each task gets
    /// its own name and the ports of `ports` (`task_spec`).
    pub task: TaskSpec,
    pub mode: ServiceMode,
    /// Replicated mode; 0 in global mode.
    pub replicas: u32,
    /// Replicated mode; 0 = no limit.
    pub max_per_node: u32,
    /// Sorted; no two share a target port and protocol, no two share a published port.
    pub ports: Vec<ServicePort>,
    pub healthcheck: Option<HealthCheck>,
    pub update: UpdateConfig,
    pub stop_grace_period_ms: u64,
}

impl ServiceSpec {
    /// Checks a spec that did not come through `parse_service_request` (a command a peer
    /// forwarded): the same bounds, on the built value.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |field: &str, message: &str| ValidationError {
            field: field.to_string(),
            message: message.to_string(),
        };
        check_dns_label("name", &self.name)?;
        if let Some(stack) = &self.stack {
            check_dns_label("stack", stack)?;
        }
        self.task.validate()?;
        if self.replicas > crate::limits::SERVICE_REPLICAS_MAX {
            return Err(bad("replicas", "is over the limit"));
        }
        if self.ports.len() > crate::limits::PORTS_MAX {
            return Err(bad("ports", "has too many entries"));
        }
        if let Some(h) = &self.healthcheck
            && (h.interval_ms == 0
                || h.interval_ms > crate::limits::SERVICE_DURATION_MAX_MS
                || h.timeout_ms > crate::limits::SERVICE_DURATION_MAX_MS
                || h.start_period_ms > crate::limits::SERVICE_DURATION_MAX_MS)
        {
            return Err(bad("healthcheck.interval", "is out of range"));
        }
        if self.update.parallelism == 0 || self.update.max_failure_permille > 1000 {
            return Err(bad("update.parallelism", "must be at least 1"));
        }
        if self.stop_grace_period_ms > crate::limits::SERVICE_DURATION_MAX_MS {
            return Err(bad("stopGracePeriod", "is longer than a day"));
        }
        Ok(())
    }

    /// The service's id: its DNS name without `.orion` (`web`, or `db.shop` in stack `shop`).
    pub fn id(&self) -> String {
        match &self.stack {
            Some(stack) => format!("{}.{stack}", self.name),
            None => self.name.clone(),
        }
    }

    /// The spec of one task of this service, named `name`. In global mode `node` pins it to
    /// its node with a `node.id ==` constraint, so the ordinary scheduler places it.
    pub fn task_spec(&self, name: String, node: Option<&str>) -> TaskSpec {
        let mut spec = self.task.clone();
        spec.name = Some(name);
        let mut ports: Vec<PortSpec> = self
            .ports
            .iter()
            .map(|p| PortSpec {
                container_port: p.target,
                protocol: p.protocol.transport(),
                // Until the mesh exists an unpublished port gets a dynamic host port, so
                // that the service's endpoints can be reached at all.
                host_port: p.published,
            })
            .collect();
        ports.sort();
        ports.dedup_by(|a, b| a.container_port == b.container_port && a.protocol == b.protocol);
        spec.ports = ports;
        spec.healthcheck = self.healthcheck.clone();
        spec.stop_grace_period_ms = Some(self.stop_grace_period_ms);
        if let Some(node) = node {
            spec.constraints.push(pin(node));
        }
        spec
    }

    /// Whether a task with `spec` runs what this service asks for now: if not, a rolling
    /// update replaces it. Its name and the placement constraints the reconciler appends
    /// after the user's (the global pin, the `maxPerNode` exclusions) are not compared.
    pub fn runs_same(&self, spec: &TaskSpec) -> bool {
        let n = self.task.constraints.len();
        // What the reconciler appends: one `node.id ==` pin or one `node.id not in` exclusion.
        let appended = spec.constraints.get(n..).unwrap_or(&[]);
        let ours = |c: &Constraint| {
            c.attr == NodeAttr::Id && matches!(c.op, ConstraintOp::Eq | ConstraintOp::NotIn)
        };
        if spec.constraints.len() < n || appended.len() > 1 || !appended.iter().all(ours) {
            return false;
        }
        let mut want = self.task_spec(spec.name.clone().unwrap_or_default(), None);
        want.constraints
            .extend(spec.constraints[n..].iter().cloned());
        want == *spec
    }

    /// `spec` with a constraint keeping it off `nodes` (which hold `maxPerNode` tasks of
    /// this service already). Appended after the user's constraints, like the global pin.
    pub fn exclude_nodes(spec: &mut TaskSpec, nodes: Vec<String>) {
        if !nodes.is_empty() {
            spec.constraints.push(Constraint {
                attr: NodeAttr::Id,
                op: ConstraintOp::NotIn,
                values: nodes,
            });
        }
    }

    /// Whether the tasks of `other` would differ from this spec's (a rolling update is due),
    /// as opposed to a change of count or policy only.
    pub fn same_tasks(&self, other: &ServiceSpec) -> bool {
        self.task == other.task
            && self.ports == other.ports
            && self.healthcheck == other.healthcheck
            && self.stop_grace_period_ms == other.stop_grace_period_ms
    }

    /// The health a fresh task of this service starts with.
    pub fn initial_health(&self) -> Health {
        if self.healthcheck.is_some() {
            Health::Starting
        } else {
            Health::None
        }
    }
}

/// The constraint that pins a global service's task to its node.
fn pin(node: &str) -> Constraint {
    Constraint {
        attr: NodeAttr::Id,
        op: ConstraintOp::Eq,
        values: vec![node.to_string()],
    }
}

/// The node a global service's task is pinned to, if any (the last `node.id ==` constraint,
/// which `task_spec` appends).
pub fn pinned_node(spec: &TaskSpec) -> Option<String> {
    spec.constraints
        .last()
        .filter(|c| c.attr == NodeAttr::Id && c.op == ConstraintOp::Eq && c.values.len() == 1)
        .map(|c| c.values[0].clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    Running,
    Completed,
    Paused,
    RollingBack,
    RolledBack,
    Failed,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Running => "running",
            DeploymentState::Completed => "completed",
            DeploymentState::Paused => "paused",
            DeploymentState::RollingBack => "rolling-back",
            DeploymentState::RolledBack => "rolled-back",
            DeploymentState::Failed => "failed",
        }
    }
    /// Whether the reconciler still moves tasks for it.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DeploymentState::Running | DeploymentState::RollingBack
        )
    }
}

/// The latest rolling update of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub from_version: u64,
    pub to_version: u64,
    pub state: DeploymentState,
    /// Tasks that run the target spec and passed their monitor window.
    pub updated: u32,
    /// Tasks to update.
    pub total: u32,
    /// New tasks that failed during this deployment.
    #[serde(default)]
    pub failed: u32,
    pub message: String,
    pub started_at: UnixMillis,
    pub ended_at: Option<UnixMillis>,
    /// Recent state changes and reasons, bounded by `limits::DEPLOYMENT_EVENTS_MAX`.
    #[serde(default)]
    pub events: Vec<DeploymentEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub at: UnixMillis,
    pub state: DeploymentState,
    pub message: String,
}

impl Deployment {
    /// Moves to `state` with `message`, recording it in the bounded event list.
    pub fn transition(&mut self, state: DeploymentState, message: String, at: UnixMillis) {
        self.state = state;
        self.message = message.clone();
        if !state.is_active() {
            self.ended_at = Some(at);
        }
        self.events.push(DeploymentEvent { at, state, message });
        if self.events.len() > crate::limits::DEPLOYMENT_EVENTS_MAX {
            let excess = self.events.len() - crate::limits::DEPLOYMENT_EVENTS_MAX;
            self.events.drain(..excess);
        }
    }
}

/// A service as the replicated state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    /// Grows on every spec change.
    pub version: u64,
    /// The spec before the latest change, for a rollback.
    pub previous: Option<ServiceSpec>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub deployment: Option<Deployment>,
    /// Its virtual IP, allocated from the cluster's `vipRange` when it was created (`None`
    /// when the range was full, or for a service stored before VIPs existed).
    #[serde(default)]
    pub vip: Option<std::net::Ipv4Addr>,
}

/// The fields of `POST /services` and `PUT /services/{id}` besides those a task has too.
const SERVICE_ONLY_FIELDS: &[&str] = &[
    "name",
    "stack",
    "mode",
    "replicas",
    "maxPerNode",
    "ports",
    "healthcheck",
    "update",
    "stopGracePeriod",
];

/// The task fields a service does not take: a service names its tasks, and publishes `ports`.
const TASK_ONLY_FIELDS: &[&str] = &["name", "portBindings"];

/// The fields of an entry of `ports`.
const PORT_FIELDS: &[&str] = &["target", "published", "protocol", "mode", "proxyProtocol"];
/// The fields of a `healthcheck` object.
const HEALTHCHECK_FIELDS: &[&str] = &[
    "http",
    "tcp",
    "exec",
    "port",
    "interval",
    "timeout",
    "retries",
    "startPeriod",
];
/// The fields of `update`.
const UPDATE_FIELDS: &[&str] = &[
    "parallelism",
    "delay",
    "order",
    "monitor",
    "failureAction",
    "maxFailureRatio",
];

/// The body of `POST /services` and `PUT /services/{id}` as the OpenAPI description shows it.
/// `parse_service_request` reads the JSON by hand; this type only documents what it accepts,
/// and a test checks that it names exactly the fields the parser knows (nested ones too).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
#[schema(example = json!({
    "name": "web", "stack": "shop", "image": "nginx:1.27", "replicas": 3,
    "ports": [{"target": 80, "published": 8080}],
    "healthcheck": {"http": "/", "interval": "5s"},
    "update": {"parallelism": 1, "order": "start-first", "failureAction": "rollback"}
}))]
pub struct ServiceRequest {
    /// A DNS label (`[a-z0-9-]`, 1 to 63). Required on `POST`; on `PUT` it defaults to the
    /// path's. The service id is `name`, or `name.stack` with a stack.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: Option<String>,
    /// A DNS label grouping services.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub stack: Option<String>,
    /// Image reference. Required.
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    /// Per task: bytes, or a size like `"100m"`.
    pub memory: Option<OrText<u64>>,
    /// Per task, in cores.
    pub cpu: Option<OrText<f64>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub node_selectors: Option<BTreeMap<String, String>>,
    pub constraints: Option<Vec<String>>,
    pub restart_policy: Option<crate::RestartPolicy>,
    pub strategy: Option<crate::Strategy>,
    pub stop_after_disconnect: Option<String>,
    /// Default `replicated`.
    pub mode: Option<ServiceMode>,
    /// Replicated services only; default 1.
    #[schema(maximum = 1000)]
    pub replicas: Option<u32>,
    /// Most tasks of this service on one node; 0 or absent: no limit. Replicated only.
    #[schema(maximum = 1000)]
    pub max_per_node: Option<u32>,
    pub ports: Option<Vec<ServicePortRequest>>,
    pub healthcheck: Option<HealthcheckRequest>,
    pub update: Option<UpdateRequest>,
    /// Time between the stop signal and the kill, e.g. `"10s"` (the default).
    pub stop_grace_period: Option<OrText<u64>>,
}

/// An entry of a service's `ports` (documentation only).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct ServicePortRequest {
    /// The container's port. Required.
    pub target: OrText<u16>,
    /// The host port; absent: none published.
    pub published: Option<OrText<u16>>,
    /// Default `tcp`.
    pub protocol: Option<ServiceProtocol>,
    /// Default `ingress`.
    pub mode: Option<PortMode>,
    pub proxy_protocol: Option<bool>,
}

/// A service's `healthcheck`: `"image"` (the image's own HEALTHCHECK) or an object with
/// exactly one of `http`, `tcp`, `exec` (documentation only).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[derive(utoipa::ToSchema)]
pub enum HealthcheckRequest {
    /// `"image"`.
    Image(String),
    Probe(HealthProbeRequest),
}

/// A health probe (documentation only).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct HealthProbeRequest {
    /// An HTTP GET of this path must answer 2xx or 3xx.
    pub http: Option<String>,
    /// `true`: a TCP connect must succeed.
    pub tcp: Option<bool>,
    /// A command run in the container must exit 0.
    pub exec: Option<Vec<String>>,
    /// Target port probed by `http`/`tcp`; default the first of `ports`.
    pub port: Option<u16>,
    /// Default `"5s"`.
    pub interval: Option<OrText<u64>>,
    /// Default `"2s"`.
    pub timeout: Option<OrText<u64>>,
    /// Failures in a row before unhealthy; default 3.
    pub retries: Option<u32>,
    /// Failures during this time after start do not count; default `"0s"`.
    pub start_period: Option<OrText<u64>>,
}

/// A service's `update` policy (documentation only).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct UpdateRequest {
    /// Tasks replaced at a time; default 1.
    pub parallelism: Option<u32>,
    /// Pause between batches; default `"0s"`.
    pub delay: Option<OrText<u64>>,
    /// Default `start-first`.
    pub order: Option<UpdateOrder>,
    /// How long a new task is watched before it counts as updated; default `"5s"`.
    pub monitor: Option<OrText<u64>>,
    /// Default `rollback`.
    pub failure_action: Option<FailureAction>,
    /// Share of failed tasks tolerated, from 0 to 1; default 0.
    pub max_failure_ratio: Option<f64>,
}

/// Parses a `POST /services` or `PUT /services/{id}` body into a valid `ServiceSpec`.
pub fn parse_service_request(body: &[u8]) -> Result<ServiceSpec, ValidationError> {
    validate_service(&parse_object(body)?)
}

/// Validates an already parsed JSON object.
pub fn validate_service(obj: &Map<String, Value>) -> Result<ServiceSpec, ValidationError> {
    let shared_fields = crate::api::FIELDS
        .iter()
        .copied()
        .filter(|f| !TASK_ONLY_FIELDS.contains(f));
    let known: Vec<&str> = SERVICE_ONLY_FIELDS
        .iter()
        .copied()
        .chain(shared_fields.clone())
        .collect();
    refuse_unknown(obj, &known)?;
    let name = match obj.get("name") {
        None | Some(Value::Null) => return Err(err("name", "is required")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err("name", "must be a string")),
    };
    check_dns_label("name", &name)?;
    let stack = match obj.get("stack") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_dns_label("stack", s)?;
            Some(s.clone())
        }
        Some(_) => return Err(err("stack", "must be a string")),
    };
    let shared_fields: Vec<&str> = shared_fields.collect();
    let shared: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| shared_fields.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let task = task_fields(&shared)?;
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => ServiceMode::Replicated,
        Some(Value::String(s)) if s == "replicated" => ServiceMode::Replicated,
        Some(Value::String(s)) if s == "global" => ServiceMode::Global,
        Some(v) => {
            return Err(err(
                "mode",
                format!("{v} is not one of \"replicated\", \"global\""),
            ));
        }
    };
    let replicas_given = !matches!(obj.get("replicas"), None | Some(Value::Null));
    let replicas = count(obj, "replicas", SERVICE_REPLICAS_MAX)?.unwrap_or(1);
    let max_per_node = count(obj, "maxPerNode", SERVICE_REPLICAS_MAX)?.unwrap_or(0);
    let (replicas, max_per_node) = match mode {
        ServiceMode::Replicated => (replicas, max_per_node),
        ServiceMode::Global if replicas_given => {
            return Err(err(
                "replicas",
                "a global service runs one task per eligible node; omit replicas",
            ));
        }
        ServiceMode::Global if max_per_node != 0 => {
            return Err(err("maxPerNode", "applies to replicated services only"));
        }
        ServiceMode::Global => (0, 0),
    };
    let ports = parse_service_ports(obj.get("ports"))?;
    let healthcheck = parse_healthcheck(obj.get("healthcheck"), &ports)?;
    let update = parse_update(obj.get("update"))?;
    let stop_grace_period_ms =
        duration_field(obj.get("stopGracePeriod"), "stopGracePeriod")?.unwrap_or(10_000);
    Ok(ServiceSpec {
        name,
        stack,
        task,
        mode,
        replicas,
        max_per_node,
        ports,
        healthcheck,
        update,
        stop_grace_period_ms,
    })
}

/// `[a-z0-9-]`, 1 to 63 characters, not starting or ending with `-` (RFC 1123 label).
pub fn check_dns_label(field: &str, s: &str) -> Result<(), ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "{s:?} is not a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// A whole number from 0 to `max`, or `None` when absent.
fn count(obj: &Map<String, Value>, field: &str, max: u32) -> Result<Option<u32>, ValidationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= u64::from(max) => Ok(Some(v as u32)),
            Some(v) => Err(err(field, format!("{v} is over the limit of {max}"))),
            None => Err(err(
                field,
                format!("{n} must be a whole number from 0 to {max}"),
            )),
        },
        Some(_) => Err(err(
            field,
            format!("must be a whole number from 0 to {max}"),
        )),
    }
}

fn parse_service_ports(v: Option<&Value>) -> Result<Vec<ServicePort>, ValidationError> {
    const F: &str = "ports";
    const KNOWN: &[&str] = PORT_FIELDS;
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(err(
                F,
                "must be an array like [{\"target\": 80, \"published\": 8080}]",
            ));
        }
    };
    if items.len() > PORTS_MAX {
        return Err(err(F, format!("has more than {PORTS_MAX} entries")));
    }
    let mut out: Vec<ServicePort> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(p) = item else {
            return Err(err(F, format!("entry {i} must be an object")));
        };
        refuse_unknown(p, KNOWN).map_err(|e| err(&format!("ports.{}", e.field), e.message))?;
        let port = |key: &str| -> Result<Option<u16>, ValidationError> {
            let field = format!("ports.{key}");
            match p.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok())
                    .filter(|v| *v > 0)
                    .map(Some)
                    .ok_or_else(|| err(&field, format!("{n} must be a port from 1 to 65535"))),
                Some(Value::String(s)) => parse_port_number(s.trim())
                    .map(Some)
                    .ok_or_else(|| err(&field, format!("{s:?} must be a port from 1 to 65535"))),
                Some(_) => Err(err(&field, "must be a port from 1 to 65535")),
            }
        };
        let target = port("target")?.ok_or_else(|| err("ports.target", "is required"))?;
        let published = port("published")?;
        let protocol = match p.get("protocol") {
            None | Some(Value::Null) => ServiceProtocol::Tcp,
            Some(Value::String(s)) => match s.as_str() {
                "tcp" => ServiceProtocol::Tcp,
                "udp" => ServiceProtocol::Udp,
                "http" => ServiceProtocol::Http,
                _ => {
                    return Err(err(
                        "ports.protocol",
                        format!("{s:?} is not one of \"tcp\", \"udp\", \"http\""),
                    ));
                }
            },
            Some(_) => {
                return Err(err(
                    "ports.protocol",
                    "must be \"tcp\", \"udp\" or \"http\"",
                ));
            }
        };
        let mode = match p.get("mode") {
            None | Some(Value::Null) => PortMode::Ingress,
            Some(Value::String(s)) if s == "ingress" => PortMode::Ingress,
            Some(Value::String(s)) if s == "host" => PortMode::Host,
            Some(v) => {
                return Err(err(
                    "ports.mode",
                    format!("{v} is not one of \"ingress\", \"host\""),
                ));
            }
        };
        let proxy_protocol = match p.get("proxyProtocol") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("ports.proxyProtocol", "must be true or false")),
        };
        let transport = protocol.transport();
        if out
            .iter()
            .any(|o| o.target == target && o.protocol.transport() == transport)
        {
            return Err(err(
                "ports.target",
                format!("{target}/{} is given twice", transport.as_str()),
            ));
        }
        if let Some(pubp) = published
            && out
                .iter()
                .any(|o| o.published == Some(pubp) && o.protocol.transport() == transport)
        {
            return Err(err(
                "ports.published",
                format!("{pubp}/{} is published twice", transport.as_str()),
            ));
        }
        out.push(ServicePort {
            target,
            published,
            protocol,
            mode,
            proxy_protocol,
        });
    }
    out.sort();
    Ok(out)
}

fn parse_healthcheck(
    v: Option<&Value>,
    ports: &[ServicePort],
) -> Result<Option<HealthCheck>, ValidationError> {
    const F: &str = "healthcheck";
    const KNOWN: &[&str] = HEALTHCHECK_FIELDS;
    let defaults = |test| HealthCheck {
        test,
        port: None,
        interval_ms: 5_000,
        timeout_ms: 2_000,
        retries: 3,
        start_period_ms: 0,
    };
    let h = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "image" => return Ok(Some(defaults(HealthTest::Image))),
        Some(Value::Object(h)) => h,
        Some(_) => {
            return Err(err(
                F,
                "must be {\"http\": \"/path\"}, {\"tcp\": true}, {\"exec\": [...]} or \"image\"",
            ));
        }
    };
    refuse_unknown(h, KNOWN).map_err(|e| err(&format!("healthcheck.{}", e.field), e.message))?;
    let given: Vec<&str> = ["http", "tcp", "exec"]
        .into_iter()
        .filter(|k| !matches!(h.get(*k), None | Some(Value::Null)))
        .collect();
    if given.len() != 1 {
        return Err(err(F, "give exactly one of http, tcp, exec"));
    }
    let test = match given[0] {
        "http" => match &h["http"] {
            Value::String(path) if path.starts_with('/') && path.len() <= 1024 => {
                HealthTest::Http(path.clone())
            }
            _ => {
                return Err(err(
                    "healthcheck.http",
                    "must be a path starting with '/', at most 1024 bytes",
                ));
            }
        },
        "tcp" => match &h["tcp"] {
            Value::Bool(true) => HealthTest::Tcp,
            _ => return Err(err("healthcheck.tcp", "must be true")),
        },
        _ => match &h["exec"] {
            Value::Array(items)
                if !items.is_empty() && items.len() <= crate::limits::COMMAND_ARGS_MAX =>
            {
                let mut args = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if s.len() <= crate::limits::ARG_BYTES_MAX => {
                            args.push(s.clone())
                        }
                        _ => {
                            return Err(err(
                                "healthcheck.exec",
                                "must be an array of strings (each at most 8 KiB)",
                            ));
                        }
                    }
                }
                HealthTest::Exec(args)
            }
            _ => {
                return Err(err(
                    "healthcheck.exec",
                    "must be a non-empty array of strings, e.g. [\"pg_isready\"]",
                ));
            }
        },
    };
    let mut check = defaults(test);
    check.port = match h.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| err("healthcheck.port", format!("{n} is not a port")))?,
        ),
        Some(_) => return Err(err("healthcheck.port", "must be a port number")),
    };
    if matches!(check.test, HealthTest::Http(_) | HealthTest::Tcp) {
        match check.port {
            Some(p) if !ports.iter().any(|sp| sp.target == p) => {
                return Err(err(
                    "healthcheck.port",
                    format!("{p} is not one of the service's target ports"),
                ));
            }
            Some(_) => {}
            None => {
                let first = ports.first().ok_or_else(|| {
                    err(
                        "healthcheck.port",
                        "is required when the service has no ports",
                    )
                })?;
                check.port = Some(first.target);
            }
        }
    }
    if let Some(ms) = duration_field(h.get("interval"), "healthcheck.interval")? {
        if ms == 0 {
            return Err(err("healthcheck.interval", "must be more than 0"));
        }
        check.interval_ms = ms;
    }
    if let Some(ms) = duration_field(h.get("timeout"), "healthcheck.timeout")? {
        if ms == 0 {
            return Err(err("healthcheck.timeout", "must be more than 0"));
        }
        check.timeout_ms = ms;
    }
    if let Some(r) = count(h, "retries", HEALTH_RETRIES_MAX)
        .map_err(|e| err("healthcheck.retries", e.message))?
    {
        if r == 0 {
            return Err(err("healthcheck.retries", "must be at least 1"));
        }
        check.retries = r;
    }
    if let Some(ms) = duration_field(h.get("startPeriod"), "healthcheck.startPeriod")? {
        check.start_period_ms = ms;
    }
    Ok(Some(check))
}

/// More consecutive failures than this before calling a task unhealthy is a typo: with the
/// shortest interval it would still take minutes.
const HEALTH_RETRIES_MAX: u32 = 100;

fn parse_update(v: Option<&Value>) -> Result<UpdateConfig, ValidationError> {
    const KNOWN: &[&str] = UPDATE_FIELDS;
    let mut u = UpdateConfig::default();
    let h = match v {
        None | Some(Value::Null) => return Ok(u),
        Some(Value::Object(h)) => h,
        Some(_) => return Err(err("update", "must be an object like {\"parallelism\": 2}")),
    };
    refuse_unknown(h, KNOWN).map_err(|e| err(&format!("update.{}", e.field), e.message))?;
    if let Some(p) = count(h, "parallelism", SERVICE_REPLICAS_MAX)
        .map_err(|e| err("update.parallelism", e.message))?
    {
        if p == 0 {
            return Err(err("update.parallelism", "must be at least 1"));
        }
        u.parallelism = p;
    }
    if let Some(ms) = duration_field(h.get("delay"), "update.delay")? {
        u.delay_ms = ms;
    }
    if let Some(ms) = duration_field(h.get("monitor"), "update.monitor")? {
        u.monitor_ms = ms;
    }
    u.order = match h.get("order") {
        None | Some(Value::Null) => u.order,
        Some(Value::String(s)) if s == "start-first" => UpdateOrder::StartFirst,
        Some(Value::String(s)) if s == "stop-first" => UpdateOrder::StopFirst,
        Some(v) => {
            return Err(err(
                "update.order",
                format!("{v} is not one of \"start-first\", \"stop-first\""),
            ));
        }
    };
    u.failure_action = match h.get("failureAction") {
        None | Some(Value::Null) => u.failure_action,
        Some(Value::String(s)) if s == "rollback" => FailureAction::Rollback,
        Some(Value::String(s)) if s == "pause" => FailureAction::Pause,
        Some(Value::String(s)) if s == "continue" => FailureAction::Continue,
        Some(v) => {
            return Err(err(
                "update.failureAction",
                format!("{v} is not one of \"rollback\", \"pause\", \"continue\""),
            ));
        }
    };
    u.max_failure_permille = match h.get("maxFailureRatio") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => (r * 1000.0).round() as u32,
            _ => {
                return Err(err(
                    "update.maxFailureRatio",
                    format!("{n} must be from 0 to 1"),
                ));
            }
        },
        Some(_) => {
            return Err(err(
                "update.maxFailureRatio",
                "must be a number from 0 to 1",
            ));
        }
    };
    Ok(u)
}

fn duration_field(v: Option<&Value>, field: &str) -> Result<Option<u64>, ValidationError> {
    let ms = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => parse_duration(s).map_err(|m| err(field, m))?,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs) if secs <= SERVICE_DURATION_MAX_MS / 1000 => secs * 1000,
            _ => {
                return Err(err(
                    field,
                    format!("{n} must be a whole number of seconds up to a day, or \"5s\""),
                ));
            }
        },
        Some(_) => {
            return Err(err(
                field,
                "must be a duration like \"500ms\", \"5s\", \"1m30s\"",
            ));
        }
    };
    Ok(Some(ms))
}

/// Parses Docker's duration strings ("500ms", "5s", "1m30s", "1h", "0s", "1.5s") into
/// milliseconds, at most `SERVICE_DURATION_MAX_MS`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let ms = crate::api::parse_duration_ms(s)?;
    if ms > SERVICE_DURATION_MAX_MS {
        return Err(format!("{s:?} is longer than a day"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{schema_fields, sorted};

    /// The OpenAPI schemas of a service body name exactly the fields the parser accepts, at
    /// every level.
    #[test]
    fn service_request_schema_names_every_parsed_field() {
        let shared = crate::api::FIELDS
            .iter()
            .filter(|f| !TASK_ONLY_FIELDS.contains(f));
        let top: Vec<&str> = SERVICE_ONLY_FIELDS.iter().chain(shared).copied().collect();
        assert_eq!(schema_fields::<ServiceRequest>(), sorted(&top));
        assert_eq!(schema_fields::<ServicePortRequest>(), sorted(PORT_FIELDS));
        assert_eq!(
            schema_fields::<HealthProbeRequest>(),
            sorted(HEALTHCHECK_FIELDS)
        );
        assert_eq!(schema_fields::<UpdateRequest>(), sorted(UPDATE_FIELDS));
    }

    /// The bounds the schema states are the parser's: the literal in `#[schema(maximum)]`
    /// follows `SERVICE_REPLICAS_MAX`, and the name pattern accepts what `check_dns_label`
    /// accepts.
    #[test]
    fn service_request_schema_bounds_are_the_parsers() {
        let schema = serde_json::to_value(<ServiceRequest as utoipa::PartialSchema>::schema())
            .expect("schema");
        let props = &schema["properties"];
        for field in ["replicas", "maxPerNode"] {
            assert_eq!(
                props[field]["maximum"].as_f64(),
                Some(f64::from(SERVICE_REPLICAS_MAX)),
                "{field}"
            );
        }
        let pattern = props["name"]["pattern"].as_str().expect("pattern");
        assert_eq!(pattern, "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$");
        assert_eq!(props["stack"]["pattern"].as_str(), Some(pattern));
    }

    /// Parses `body` and checks the outcome: `Ok(())` for a valid spec, or the field the
    /// error must name.
    fn check(body: &str, want_field: Option<&str>) -> Option<ServiceSpec> {
        let got = parse_service_request(body.as_bytes());
        match (got, want_field) {
            (Ok(spec), None) => Some(spec),
            (Err(e), Some(f)) => {
                assert_eq!(e.field, f, "{body}: {e}");
                assert!(e.to_string().starts_with(f), "{body}: {e}");
                None
            }
            (Ok(spec), Some(f)) => panic!("{body}: accepted {spec:?}, wanted an error on {f}"),
            (Err(e), None) => panic!("{body}: refused: {e}"),
        }
    }

    #[test]
    fn defaults_are_those_of_api_md() {
        let s = check(r#"{"name":"web","image":"nginx"}"#, None).expect("valid");
        assert_eq!(s.id(), "web");
        assert_eq!(
            (s.mode, s.replicas, s.max_per_node),
            (ServiceMode::Replicated, 1, 0)
        );
        assert_eq!(s.update, UpdateConfig::default());
        assert_eq!(s.stop_grace_period_ms, 10_000);
        assert_eq!(s.healthcheck, None);
        assert_eq!(s.initial_health(), Health::None);
    }

    #[test]
    fn full_request_is_accepted() {
        let s = check(
            r#"{"name":"db","stack":"shop","image":"orion/busybox","command":["httpd","-f"],
                "env":{"A":"1"},"memory":"64m","cpu":0.5,"labels":{"a":"b"},
                "nodeSelectors":{"zone":"a"},"constraints":["node.id != n3"],
                "restartPolicy":"on-failure","replicas":3,"maxPerNode":2,
                "ports":[{"target":80,"published":8080,"protocol":"http","mode":"host","proxyProtocol":true},
                         {"target":53,"protocol":"udp"}],
                "healthcheck":{"http":"/health","interval":"1m30s","timeout":"500ms","retries":5,"startPeriod":10},
                "update":{"parallelism":2,"delay":"1s","order":"stop-first","monitor":"2s",
                          "failureAction":"pause","maxFailureRatio":0.25},
                "stopGracePeriod":"30s"}"#,
            None,
        )
        .expect("valid");
        assert_eq!(s.id(), "db.shop");
        let h = s.healthcheck.clone().expect("check");
        assert_eq!(
            (
                h.port,
                h.interval_ms,
                h.timeout_ms,
                h.retries,
                h.start_period_ms
            ),
            (Some(53), 90_000, 500, 5, 10_000),
            "the first target port (sorted) is the default"
        );
        assert_eq!(s.update.max_failure_permille, 250);
        assert_eq!(s.task.memory_bytes, 64 << 20);
        let t = s.task_spec("db.shop.1".into(), None);
        assert_eq!(t.ports.len(), 2);
        assert!(s.runs_same(&t));
        let g = s.task_spec("db.shop.n1".into(), Some("n1"));
        assert_eq!(pinned_node(&g).as_deref(), Some("n1"));
        assert!(s.runs_same(&g));
        let mut other = s.clone();
        other.task.image = "orion/busybox:2".into();
        assert!(!other.runs_same(&t));
        assert!(!other.same_tasks(&s));
        other = s.clone();
        other.replicas = 7;
        assert!(other.same_tasks(&s) && other.runs_same(&t));
        // Constraints the reconciler appends are not a change of spec; the user's are.
        let mut excluded = t.clone();
        ServiceSpec::exclude_nodes(&mut excluded, vec!["n1".into(), "n2".into()]);
        assert!(s.runs_same(&excluded));
        other = s.clone();
        other
            .task
            .constraints
            .push(Constraint::parse("node.id != n9").expect("valid"));
        assert!(!other.runs_same(&t) && !s.runs_same(&other.task_spec("x".into(), None)));
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"image":"x"}"#, "name"),
            (r#"{"name":"Web","image":"x"}"#, "name"),
            (r#"{"name":"-web","image":"x"}"#, "name"),
            (r#"{"name":"web-","image":"x"}"#, "name"),
            (r#"{"name":"a.b","image":"x"}"#, "name"),
            (r#"{"name":"","image":"x"}"#, "name"),
            (
                &format!(r#"{{"name":"{}","image":"x"}}"#, "a".repeat(64)),
                "name",
            ),
            (r#"{"name":"web","stack":"S","image":"x"}"#, "stack"),
            (r#"{"name":"web"}"#, "image"),
            (r#"{"name":"web","image":"x","memory":"lots"}"#, "memory"),
            (r#"{"name":"web","image":"x","mode":"daemon"}"#, "mode"),
            (r#"{"name":"web","image":"x","replicas":-1}"#, "replicas"),
            (r#"{"name":"web","image":"x","replicas":1001}"#, "replicas"),
            (r#"{"name":"web","image":"x","replicas":1.5}"#, "replicas"),
            (
                r#"{"name":"web","image":"x","mode":"global","replicas":2}"#,
                "replicas",
            ),
            (
                r#"{"name":"web","image":"x","mode":"global","maxPerNode":1}"#,
                "maxPerNode",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"published":80}]}"#,
                "ports.target",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":70000}]}"#,
                "ports.target",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80,"protocol":"sctp"}]}"#,
                "ports.protocol",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80,"mode":"mesh"}]}"#,
                "ports.mode",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80,"bogus":1}]}"#,
                "ports.bogus",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80},{"target":80,"protocol":"http"}]}"#,
                "ports.target",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80,"published":1},{"target":81,"published":1}]}"#,
                "ports.published",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80}],"healthcheck":{"http":"/","interval":"0s"}}"#,
                "healthcheck.interval",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80}],"healthcheck":{"http":"/","interval":0}}"#,
                "healthcheck.interval",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80}],"healthcheck":{"http":"/","timeout":"soon"}}"#,
                "healthcheck.timeout",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80}],"healthcheck":{"http":"x"}}"#,
                "healthcheck.http",
            ),
            (
                r#"{"name":"web","image":"x","healthcheck":{"tcp":true}}"#,
                "healthcheck.port",
            ),
            (
                r#"{"name":"web","image":"x","ports":[{"target":80}],"healthcheck":{"tcp":true,"port":81}}"#,
                "healthcheck.port",
            ),
            (
                r#"{"name":"web","image":"x","healthcheck":{"exec":[]}}"#,
                "healthcheck.exec",
            ),
            (
                r#"{"name":"web","image":"x","healthcheck":{"exec":["true"],"http":"/"}}"#,
                "healthcheck",
            ),
            (
                r#"{"name":"web","image":"x","healthcheck":{"exec":["true"],"retries":0}}"#,
                "healthcheck.retries",
            ),
            (
                r#"{"name":"web","image":"x","healthcheck":{"exec":["true"],"every":1}}"#,
                "healthcheck.every",
            ),
            (
                r#"{"name":"web","image":"x","healthcheck":"docker"}"#,
                "healthcheck",
            ),
            (
                r#"{"name":"web","image":"x","update":{"parallelism":0}}"#,
                "update.parallelism",
            ),
            (
                r#"{"name":"web","image":"x","update":{"order":"random"}}"#,
                "update.order",
            ),
            (
                r#"{"name":"web","image":"x","update":{"failureAction":"panic"}}"#,
                "update.failureAction",
            ),
            (
                r#"{"name":"web","image":"x","update":{"maxFailureRatio":2}}"#,
                "update.maxFailureRatio",
            ),
            (
                r#"{"name":"web","image":"x","update":{"monitor":"-1s"}}"#,
                "update.monitor",
            ),
            (
                r#"{"name":"web","image":"x","update":{"delay":"2d"}}"#,
                "update.delay",
            ),
            (
                r#"{"name":"web","image":"x","stopGracePeriod":"forever"}"#,
                "stopGracePeriod",
            ),
            (
                r#"{"name":"web","image":"x","portBindings":{"80":"80"}}"#,
                "portBindings",
            ),
            (r#"{"name":"web","image":"x","replica":3}"#, "replica"),
        ];
        for (body, field) in cases {
            check(body, Some(field));
        }
    }

    #[test]
    fn durations_parse_like_docker() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("500ms", Ok(500)),
            ("5s", Ok(5_000)),
            ("1m30s", Ok(90_000)),
            ("1.5s", Ok(1_500)),
            ("1h", Ok(3_600_000)),
            ("0s", Ok(0)),
            ("0", Ok(0)),
            ("25h", Err(())),
            ("5", Err(())),
            ("s", Err(())),
            ("-1s", Err(())),
            ("", Err(())),
            ("5x", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).map_err(|_| ()), *want, "{text}");
        }
    }
}
