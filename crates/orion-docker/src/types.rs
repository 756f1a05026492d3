//! The plain data this crate speaks: what to run (`ContainerSpec`), what the
//! engine reports (`ContainerInfo`, `ContainerEvent`). None of these types
//! mention bollard, so the executor can build them, compare them and fake
//! them in a simulation without knowing Docker's wire format.

use std::collections::BTreeMap;

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerSpec {
    /// Container name; the caller makes it unique per node and allocation.
    pub name: String,
    /// Image reference, e.g. `orion/busybox:latest`.
    pub image: String,
    /// Overrides the image's CMD when set.
    pub command: Option<Vec<String>>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Labels; the caller puts `orion.node`, `orion.task`, `orion.alloc` here.
    pub labels: BTreeMap<String, String>,
    /// Hard memory limit; swap is capped at the same value so the limit holds.
    pub memory_bytes: Option<u64>,
    /// CPU limit in units of 1e-9 CPUs.
    pub nano_cpus: Option<u64>,
    /// Ports to publish.
    pub ports: Vec<PortRequest>,
    /// Network to attach to (the engine's default bridge when `None`).
    #[serde(default)]
    pub network: Option<String>,
    /// DNS servers of the container (the engine's when empty).
    #[serde(default)]
    pub dns: Vec<String>,
    /// DNS search domains of the container.
    #[serde(default)]
    pub dns_search: Vec<String>,
}

/// One port to publish.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRequest {
    /// Port inside the container.
    pub container_port: u16,
    /// `"tcp"` or `"udp"`.
    pub protocol: String,
    /// Host address to bind, e.g. the node's own `127.0.0.N`.
    pub host_ip: String,
    /// Host port; 0 lets the engine pick a free one.
    pub host_port: u16,
}

/// A port the engine actually bound, read back from inspect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoundPort {
    /// Port inside the container.
    pub container_port: u16,
    /// `"tcp"`, `"udp"` or `"sctp"`.
    pub protocol: String,
    /// Host address the port is bound on.
    pub host_ip: String,
    /// Host port the engine bound (never 0).
    pub host_port: u16,
}

/// Lifecycle state of a container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running (includes a container whose process is still starting).
    Running,
    /// The main process ended.
    Exited {
        /// Exit code of the main process (137 after SIGKILL, e.g. an OOM kill).
        code: i64,
        /// True when the kernel's OOM killer ended a process of the container.
        oom_killed: bool,
    },
    /// Any other engine state: `paused`, `restarting`, `removing`, `dead`.
    Other(String),
}

/// What inspect says about one container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without the engine's leading `/`.
    pub name: String,
    /// The container's labels.
    pub labels: BTreeMap<String, String>,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Ports actually bound on the host.
    pub ports: Vec<BoundPort>,
    /// RFC 3339 start time, `None` if never started.
    pub started_at: Option<String>,
    /// RFC 3339 end time, `None` if it has not ended.
    pub finished_at: Option<String>,
    /// The container's address on its first network (by name), if it has one: where a
    /// health probe reaches a port that is not published.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// The image's own `HEALTHCHECK` as the engine last ran it; `None` when the image
    /// defines none (or the container never ran).
    #[serde(default)]
    pub health: Option<EngineHealth>,
}

/// What the engine says of a container's own health check (`State.Health`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineHealth {
    pub status: EngineHealthStatus,
    /// Output of the check's latest run, as the engine keeps it (at most 4 KiB).
    pub last_output: Option<String>,
}

/// The engine's verdict on a container's own health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EngineHealthStatus {
    /// Inside its start period, or not probed yet.
    Starting,
    Healthy,
    /// Failed its retries in a row.
    Unhealthy,
}

/// What a command run in a container (`exec`) ended with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecOutput {
    /// The command's exit code (126/127 when it could not be run).
    pub exit_code: i64,
    /// Its stdout and stderr interleaved, the first `EXEC_OUTPUT_MAX` bytes only.
    pub output: Vec<u8>,
}

/// Output kept from an `exec`: what Docker keeps of a health check's run. The rest is read
/// and dropped, so a chatty command cannot fill memory nor block on a full pipe.
pub const EXEC_OUTPUT_MAX: usize = 4096;

/// A container lifecycle event for the labels the caller watches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerEvent {
    /// The container's process started.
    Started {
        /// Container id.
        id: String,
        /// The container's labels.
        labels: BTreeMap<String, String>,
    },
    /// The container's process ended.
    Died {
        /// Container id.
        id: String,
        /// The container's labels.
        labels: BTreeMap<String, String>,
        /// Exit code, when the engine reported one.
        exit_code: Option<i64>,
    },
    /// The kernel OOM killer hit a process of the container (a `Died` follows).
    Oom {
        /// Container id.
        id: String,
        /// The container's labels.
        labels: BTreeMap<String, String>,
    },
    /// The container was removed.
    Destroyed {
        /// Container id.
        id: String,
        /// The container's labels.
        labels: BTreeMap<String, String>,
    },
}

impl ContainerEvent {
    /// The container id the event is about.
    pub fn id(&self) -> &str {
        match self {
            ContainerEvent::Started { id, .. }
            | ContainerEvent::Died { id, .. }
            | ContainerEvent::Oom { id, .. }
            | ContainerEvent::Destroyed { id, .. } => id,
        }
    }

    /// The labels of the container the event is about.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            ContainerEvent::Started { labels, .. }
            | ContainerEvent::Died { labels, .. }
            | ContainerEvent::Oom { labels, .. }
            | ContainerEvent::Destroyed { labels, .. } => labels,
        }
    }
}
