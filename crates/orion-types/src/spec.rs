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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The health check the task's executor runs (tasks of a service that defines one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::service::HealthCheck>,
    /// Between the stop signal and SIGKILL; `None`: the executor's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_ms: Option<u64>,
    /// Opt-in: a node cut off from the quorum this long stops the task's container (Nomad's
    /// `stop_after_client_disconnect`). `None`: the container keeps running while cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_disconnect_ms: Option<u64>,
    /// How the container is set up besides the fields above (entrypoint, user, mounts, files):
    /// what a compose file asks for. All empty for a plain task.
    #[serde(default, skip_serializing_if = "ContainerOptions::is_empty")]
    pub container: ContainerOptions,
}

/// Container settings a service can give (API.md "Services": `entrypoint`, `user`,
/// `workingDir`, `hostname`, `stopSignal`, `mounts`, `files`). Validated by
/// `TaskSpec::validate` with the rest of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerOptions {
    /// Overrides the image's ENTRYPOINT; `Some([])` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `user`, `user:group`, `uid` or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// An absolute path in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The container's hostname (a DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The signal that asks the container to stop, e.g. `SIGINT`; `None`: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Volumes and bind mounts, sorted by target; no two share a target.
    pub mounts: Vec<Mount>,
    /// Files written into the container before it starts (secrets and configs), sorted by
    /// target; no two share a target. Their content lives in the replicated state, so it is
    /// bounded (`limits::FILE_BYTES_MAX`, `limits::FILES_MAX`).
    pub files: Vec<FileMount>,
}

impl ContainerOptions {
    pub fn is_empty(&self) -> bool {
        *self == ContainerOptions::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum MountKind {
    /// A named Docker volume, local to the node (created on first use).
    Volume,
    /// An absolute path of the node's file system.
    Bind,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Volume => "volume",
            MountKind::Bind => "bind",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// The volume's name, or the host's absolute path.
    pub source: String,
    /// An absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

/// A file written into the container (a secret or a config).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileMount {
    /// An absolute path in the container, e.g. `/run/secrets/db_password`.
    pub target: String,
    /// UTF-8 text.
    pub content: String,
    /// Permission bits, e.g. 0o444.
    pub mode: u32,
}

impl TaskSpec {
    /// The host ports a placement binds, as (protocol, port), given its host port for each
    /// published port (in the order of `ports`).
    pub fn bound_ports<'a>(
        &'a self,
        host_ports: &'a [u16],
    ) -> impl Iterator<Item = (Protocol, u16)> + 'a {
        self.ports
            .iter()
            .zip(host_ports)
            .map(|(spec, host)| (spec.protocol, *host))
    }

    pub fn resources(&self) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes,
            cpu_millis: self.cpu_millis,
        }
    }
}
