//! Orion's container runtime on Docker: the only crate that imports bollard.
//! It turns a `ContainerSpec` into a labelled container on the engine and
//! reports back what the engine says (`ContainerInfo`, `ContainerEvent`),
//! every call bounded by a timeout and every failure a typed `RuntimeError`.
//! It knows nothing of tasks, allocations or the cluster: the executor decides
//! what should run and uses labels to find what does.
//!
//! Architecture invariant: nothing outside this crate sees a bollard type.

mod convert;
mod error;
mod runtime;
mod types;

pub use error::RuntimeError;
pub use runtime::DockerRuntime;
pub use types::{
    BoundPort, ContainerEvent, ContainerInfo, ContainerSetup, ContainerSpec, ContainerState,
    EXEC_OUTPUT_MAX, EngineHealth, EngineHealthStatus, ExecOutput, FileRequest, MountRequest,
    PortRequest,
};
