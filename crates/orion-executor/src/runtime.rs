//! `ContainerRuntime`: the narrow seam between the executor and a container engine, holding
//! exactly the calls the executor (and the agent's log proxy) make. `orion_docker::DockerRuntime`
//! implements it for the real engine, `FakeRuntime` in memory for tests and the simulator.
//!
//! The contract every implementation keeps: each call returns within a bound of its own (the
//! executor also guards each call with a backstop, so a runtime that hangs cannot wedge it),
//! failures are typed `RuntimeError`s, and containers are found by label, never by memory.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use orion_docker::{
    ContainerEvent, ContainerInfo, ContainerSpec, DockerRuntime, ExecOutput, RuntimeError,
};
use std::future::Future;
use std::time::Duration;

/// Container events for the labels watched; ends on a broken connection or after the
/// runtime's own maximum duration, and the caller opens a new one.
pub type EventStream = BoxStream<'static, Result<ContainerEvent, RuntimeError>>;
/// A container's output as the engine stores it.
pub type LogStream = BoxStream<'static, Result<Bytes, RuntimeError>>;

/// What the executor needs from a container engine. Cheap to clone (a handle).
pub trait ContainerRuntime: Clone + Send + Sync + 'static {
    /// Makes sure `image` is present (pulling it if the runtime can); `ImageUnavailable`
    /// when it cannot be had.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates (does not start) a container; returns its id. A name in use is `Conflict`.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Starts a created or exited container; starting a running one is a no-op.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The container's stop signal, up to `grace`, then SIGKILL. Gone or not running is `Ok`.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// One container; `NotFound` if it does not exist.
    fn inspect(&self, id: &str)
    -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;
    /// Every container carrying all of `labels`, in any state, sorted by name.
    fn list(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
    /// Force-removes a container (killing it if it runs). Already gone is `Ok`.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Runs `cmd` in the running container and waits for its exit up to `timeout` (then a
    /// `Timeout`); its output is bounded (`orion_docker::EXEC_OUTPUT_MAX`).
    fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
    /// Container events for containers carrying all of `labels`, from now on.
    fn events(&self, labels: &[(&str, &str)]) -> EventStream;
    /// The container's output; `follow` keeps the stream open while it runs.
    fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Future<Output = Result<LogStream, RuntimeError>> + Send;
}

impl ContainerRuntime for DockerRuntime {
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        DockerRuntime::ensure_image(self, image)
    }
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        DockerRuntime::create(self, spec)
    }
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        DockerRuntime::start(self, id)
    }
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        DockerRuntime::stop(self, id, grace)
    }
    fn inspect(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send {
        DockerRuntime::inspect(self, id)
    }
    fn list(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send {
        DockerRuntime::list(self, labels)
    }
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        DockerRuntime::remove(self, id)
    }
    fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send {
        DockerRuntime::exec(self, id, cmd, timeout)
    }
    fn events(&self, labels: &[(&str, &str)]) -> EventStream {
        Box::pin(DockerRuntime::events(self, labels))
    }
    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        let stream = DockerRuntime::logs(self, id, follow, tail).await?;
        Ok(Box::pin(stream) as LogStream)
    }
}
