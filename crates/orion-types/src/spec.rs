//! `TaskSpec`: a task as Orion keeps it after validation. Its fields are public, so it is
//! validated at every entry (the API and the inter-node forward endpoint) by one function,
//! `TaskSpec::validate` (in `api`, next to the parser that shares its rules).

use crate::{Constraint, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port: container port and protocol, and the host port (`None`: the scheduler
/// picks a free one from the dynamic range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[derive(utoipa::ToSchema)]
pub enum RestartPolicy {
    /// Restart whatever the exit code: the default, as tasks are long-running services.
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
    pub fn parse(s: &str) -> Option<RestartPolicy> {
        match s {
            "always" => Some(RestartPolicy::Always),
            "on-failure" | "on_failure" | "onfailure" => Some(RestartPolicy::OnFailure),
            "never" | "no" => Some(RestartPolicy::Never),
            _ => None,
        }
    }
    /// Whether a container that exited with `exit_code` is to be started again.
    pub fn restarts_after(self, exit_code: i64) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum Strategy {
    /// The least loaded node, by the dominant share of memory and CPU.
    #[default]
    Spread,
    /// The most loaded node that still fits.
    Binpack,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "spread" => Some(Strategy::Spread),
            "binpack" => Some(Strategy::Binpack),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Spread => "spread",
            Strategy::Binpack => "binpack",
        }
    }
}

/// A validated task specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub image: String,
    pub name: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Hard memory limit and scheduling reservation; 0 means neither.
    pub memory_bytes: u64,
    /// CPU limit and scheduling reservation in millicores; 0 means neither.
    pub cpu_millis: u64,
    /// Sorted by (container port, protocol); no two share a container port and protocol, and no
    /// two static host ports collide.
    pub ports: Vec<PortSpec>,
    pub restart_policy: RestartPolicy,
    pub labels: BTreeMap<String, String>,
    pub node_selectors: BTreeMap<String, String>,
    pub constraints: Vec<Constraint>,
    /// Overrides the cluster's scheduling strategy for this task.
    pub strategy: Option<Strategy>,
    /// The health check the task's executor runs (tasks of a service that defines one).
    #[serde(default)]
    pub healthcheck: Option<crate::service::HealthCheck>,
    /// Between the stop signal and SIGKILL; `None`: the executor's default.
    #[serde(default)]
    pub stop_grace_period_ms: Option<u64>,
    /// Opt-in: a node cut off from the quorum this long stops the task's container (Nomad's
    /// `stop_after_client_disconnect`). `None`: the container keeps running while cut off.
    #[serde(default)]
    pub stop_after_disconnect_ms: Option<u64>,
}

impl TaskSpec {
    pub fn resources(&self) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes,
            cpu_millis: self.cpu_millis,
        }
    }
}
