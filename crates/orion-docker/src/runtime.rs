//! `DockerRuntime`: the one handle on the Docker engine. Each method is one
//! engine operation wrapped in its own timeout and mapped to `RuntimeError`,
//! speaking API 1.41 (Debian's docker.io 20.10) and nothing newer. It keeps no
//! state of its own besides the connection: what runs is what the engine says.
//! Callers scope everything by label, because several nodes share one engine.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures_util::{Stream, StreamExt, TryStreamExt, stream};

use crate::convert;
use crate::error::RuntimeError;
use crate::types::{ContainerEvent, ContainerInfo, ContainerSpec, EXEC_OUTPUT_MAX, ExecOutput};

/// The API version spoken: Debian's docker.io 20.10 serves 1.41 and the
/// project relies on nothing newer. Negotiation may only lower it.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Socket used when `DOCKER_HOST` is unset (the engine's default).
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// bollard's own per-request bound, which covers only the wait for response
/// headers. It is a backstop above every bound below, which are the real ones
/// (bollard counts whole seconds, so this stays a round number).
pub(crate) const BOLLARD_TIMEOUT: Duration = Duration::from_secs(600);

/// `/_ping` and `/version`: a local engine answers in milliseconds; 5 s
/// tolerates a loaded 2-core machine while failing a node's startup quickly.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Inspect of one container or image: an in-memory read in the engine; 10 s
/// leaves room for an engine busy creating containers for other nodes.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Listing plus inspecting every listed container: `INSPECT_TIMEOUT` for the
/// list and a few rounds of concurrent inspects.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Inspects in flight at once during `list`, so a node with many containers
/// does not open hundreds of requests against a shared engine.
const LIST_INSPECT_CONCURRENCY_MAX: usize = 8;

/// Create prepares the container's writable layer (fuse-overlayfs here, which
/// takes seconds under load); 30 s is generous for that, short next to a
/// reconcile period a user would notice.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Start sets up namespaces, iptables rules and docker-proxy for each port and
/// runs runc: the slowest common call, seconds on a busy 2-core host.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Stop waits up to the caller's grace period, then kills; plus this much slack for the engine
/// delivering SIGKILL and tearing down the network (seconds on a busy 2-core host).
const STOP_SLACK: Duration = Duration::from_secs(15);

/// Longest grace a caller may ask for: the engine takes whole seconds as an `i32`, and a
/// drain longer than ten minutes is not a stop any more.
const STOP_GRACE_MAX: Duration = Duration::from_secs(600);

/// Force removal deletes the writable layer; same order as create.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A real pull of a large image over a slow link takes minutes; five bounds
/// it. With no registry (the test machines) the engine fails in milliseconds.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// Container events reported; everything else is filtered by the engine.
const EVENT_ACTIONS: [&str; 4] = ["start", "die", "oom", "destroy"];

/// An event stream ends (cleanly) after this long and the caller opens a new one: a
/// connection the engine silently stopped serving is thereby replaced within a minute, and a
/// caller that lists after reconnecting misses nothing for longer.
pub const EVENTS_MAX_DURATION: Duration = Duration::from_secs(60);

/// A log read that does not follow is a bounded copy of what the engine stored: it ends with
/// a `Timeout` error after this long.
const LOGS_TIMEOUT: Duration = Duration::from_secs(30);

/// A followed log stream ends with a `Timeout` error after this long (the client reconnects
/// with `tail` to continue), so no stream is held open for ever by a forgotten client.
const LOGS_FOLLOW_MAX: Duration = Duration::from_secs(3_600);

/// A handle on the Docker engine. Cheap to clone (the connection is shared).
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

/// Runs `fut` under `after`, mapping a bollard error and the elapsed bound.
async fn bounded<T, F>(op: &'static str, after: Duration, fut: F) -> Result<T, RuntimeError>
where
    F: Future<Output = Result<T, bollard::errors::Error>>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result.map_err(|e| match RuntimeError::from(e) {
            RuntimeError::Timeout { after, .. } => RuntimeError::Timeout { op, after },
            other => other,
        }),
        Err(_) => Err(RuntimeError::Timeout { op, after }),
    }
}

/// Splits an image reference into the `fromImage` and `tag` a pull needs.
/// Without a tag the engine would pull every tag of the repository.
fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last_component_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_component_start..].rfind(':') {
        Some(i) => {
            let split = last_component_start + i;
            (
                image[..split].to_string(),
                Some(image[split + 1..].to_string()),
            )
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

impl DockerRuntime {
    /// Connects to `DOCKER_HOST` (`unix://` or `tcp://`/`http://`), else to
    /// `/var/run/docker.sock`, then checks within `PING_TIMEOUT` that the
    /// engine answers and serves API 1.41.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_SOCKET.to_string());
        Self::connect_to(&host).await
    }

    /// Like [`connect`](Self::connect) with an explicit host URL.
    pub async fn connect_to(host: &str) -> Result<Self, RuntimeError> {
        let secs = BOLLARD_TIMEOUT.as_secs();
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, secs, &API_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, secs, &API_VERSION)
        } else {
            return Err(RuntimeError::Unavailable(format!(
                "unsupported DOCKER_HOST {host:?}: expected unix:// or tcp://"
            )));
        }
        .map_err(RuntimeError::from)?;

        // One round trip (it is on the agent's start-up path): `/version` proves the engine
        // answers and says which API versions it serves. Orion speaks API_VERSION, so
        // bollard's negotiation (a second `/version`) could only lower it below what Orion
        // needs, which is refused here instead.
        let version = bounded("version", PING_TIMEOUT, docker.version()).await?;
        if let Some(min) = version.min_api_version.as_deref()
            && api_newer_than_ours(min)
        {
            return Err(RuntimeError::Unavailable(format!(
                "engine at {host} requires API >= {min}; orion speaks {API_VERSION}"
            )));
        }
        let spoken = version.api_version.clone().unwrap_or_default();
        if api_older_than_ours(&spoken) {
            return Err(RuntimeError::Unavailable(format!(
                "engine at {host} serves API {spoken}; orion needs {API_VERSION}"
            )));
        }
        tracing::debug!(%host, api = %spoken, "connected to docker");
        Ok(Self { docker })
    }

    /// Makes sure `image` is present: inspect, and if absent pull it within
    /// `PULL_TIMEOUT`. Any failure to obtain it is `ImageUnavailable` with the
    /// engine's message; an unreachable engine stays `Unavailable`.
    pub async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match bounded(
            "inspect image",
            INSPECT_TIMEOUT,
            self.docker.inspect_image(image),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(RuntimeError::NotFound(_)) => {}
            Err(other) => return Err(other),
        }
        let (from_image, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        let pull = self
            .docker
            .create_image(Some(options.build()), None, None)
            .try_for_each(|_progress| async { Ok(()) });
        let unavailable = |cause: String| RuntimeError::ImageUnavailable {
            image: image.to_string(),
            cause,
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => {}
            // The engine refused (no registry, unknown repository, denied):
            // its own message, without our status prefix, is the cause.
            Ok(Err(
                bollard::errors::Error::DockerResponseServerError { message, .. }
                | bollard::errors::Error::DockerStreamError { error: message },
            )) => return Err(unavailable(message)),
            Ok(Err(other)) => {
                return Err(match RuntimeError::from(other) {
                    RuntimeError::Engine(m) => unavailable(m),
                    transient => transient,
                });
            }
            Err(_) => {
                return Err(unavailable(format!(
                    "pull did not finish within {PULL_TIMEOUT:?}"
                )));
            }
        }
        // A pull can end without error yet leave nothing (e.g. wrong platform).
        match bounded(
            "inspect image",
            INSPECT_TIMEOUT,
            self.docker.inspect_image(image),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(RuntimeError::NotFound(m)) => Err(unavailable(format!("absent after pull: {m}"))),
            Err(other) => Err(other),
        }
    }

    /// The gateway address of bridge network `name`, creating the network (labelled with
    /// `labels`) if it does not exist, on the first of `subnets` (`(subnet, gateway)`) that
    /// overlaps no other network. The gateway is the host's address on that bridge: what
    /// containers attached to it reach the host at.
    pub async fn ensure_network(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        subnets: &[(String, String)],
    ) -> Result<std::net::IpAddr, RuntimeError> {
        use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
        let inspect = || {
            bounded(
                "inspect network",
                INSPECT_TIMEOUT,
                self.docker.inspect_network(name, None),
            )
        };
        let net = match inspect().await {
            Ok(n) => n,
            Err(RuntimeError::NotFound(_)) => {
                let mut last = RuntimeError::Engine("no subnet to try".into());
                for (subnet, gateway) in subnets {
                    let req = NetworkCreateRequest {
                        name: name.to_string(),
                        driver: Some("bridge".into()),
                        labels: Some(
                            labels
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        ),
                        ipam: Some(Ipam {
                            config: Some(vec![IpamConfig {
                                subnet: Some(subnet.clone()),
                                gateway: Some(gateway.clone()),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    match bounded(
                        "create network",
                        CREATE_TIMEOUT,
                        self.docker.create_network(req),
                    )
                    .await
                    {
                        // Another agent of the same node id raced us: use theirs.
                        Ok(_) | Err(RuntimeError::Conflict(_)) => break,
                        // Most likely the subnet overlaps another network: try the next.
                        Err(e) => last = e,
                    }
                }
                match inspect().await {
                    Ok(n) => n,
                    Err(RuntimeError::NotFound(_)) => return Err(last),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        net.ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.gateway.as_deref()?.parse().ok())
            .next()
            .ok_or_else(|| RuntimeError::Engine(format!("network {name} has no gateway")))
    }

    /// Removes network `name`; an absent one is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match bounded(
            "remove network",
            CREATE_TIMEOUT,
            self.docker.remove_network(name),
        )
        .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates (does not start) a container and returns its id. A name in use
    /// is `Conflict`; an image not present locally is `ImageUnavailable`.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let body = convert::create_body(spec)?;
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = bounded(
            "create",
            CREATE_TIMEOUT,
            self.docker.create_container(Some(options), body),
        )
        .await
        .map_err(|e| match e {
            // The only object a create can miss is the image.
            RuntimeError::NotFound(cause) => RuntimeError::ImageUnavailable {
                image: spec.image.clone(),
                cause,
            },
            other => other,
        })?;
        for warning in &created.warnings {
            tracing::warn!(name = %spec.name, %warning, "docker create warning");
        }
        if !spec.setup.files.is_empty() {
            // Secrets and configs are written into the container's own file system before
            // it starts: nothing of them lands on the host's disk.
            let archive = convert::files_archive(&spec.setup.files, spec.setup.user.as_deref())?;
            let options = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
                .path("/")
                .build();
            let upload = bounded(
                "upload files",
                CREATE_TIMEOUT,
                self.docker.upload_to_container(
                    &created.id,
                    Some(options),
                    bollard::body_full(archive.into()),
                ),
            )
            .await;
            if let Err(e) = upload {
                let _ = self.remove(&created.id).await;
                return Err(e);
            }
        }
        Ok(created.id)
    }

    /// Starts a created container. Starting a running one is a no-op.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        bounded(
            "start",
            START_TIMEOUT,
            self.docker.start_container(id, None),
        )
        .await
    }

    /// Inspects one container; `NotFound` if it does not exist.
    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let resp = bounded(
            "inspect",
            INSPECT_TIMEOUT,
            self.docker.inspect_container(id, None),
        )
        .await?;
        convert::container_info(resp)
    }

    /// Every container, in any state, carrying all of `labels`, inspected.
    /// Containers removed between the list and their inspect are left out.
    pub async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), convert::label_filters(labels))]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let work = async {
            let summaries = self
                .docker
                .list_containers(Some(options))
                .await
                .map_err(RuntimeError::from)?;
            let ids: Vec<String> = summaries.into_iter().filter_map(|s| s.id).collect();
            let infos: Vec<Option<ContainerInfo>> = stream::iter(ids)
                .map(|id| async move {
                    match self.inspect(&id).await {
                        Ok(info) => Ok(Some(info)),
                        Err(RuntimeError::NotFound(_)) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .buffer_unordered(LIST_INSPECT_CONCURRENCY_MAX)
                .try_collect()
                .await?;
            let mut infos: Vec<ContainerInfo> = infos.into_iter().flatten().collect();
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(infos)
        };
        match tokio::time::timeout(LIST_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(RuntimeError::Timeout {
                op: "list",
                after: LIST_TIMEOUT,
            }),
        }
    }

    /// Stops a container: its stop signal (SIGTERM unless the image sets another), up to
    /// `grace` (whole seconds, at most `STOP_GRACE_MAX`), then SIGKILL. A container that is
    /// gone or not running is `Ok`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let grace = grace.min(STOP_GRACE_MAX);
        // The engine counts whole seconds: round up, so a grace is never cut to nothing.
        let secs = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let grace = Duration::from_secs(secs.unsigned_abs().into());
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        match bounded(
            "stop",
            grace + STOP_SLACK,
            self.docker.stop_container(id, Some(options)),
        )
        .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs `cmd` in the running container `id` (no TTY, no stdin) and waits for it up to
    /// `timeout`; returns its exit code and the first `EXEC_OUTPUT_MAX` bytes of its output.
    /// A container that is not running is `Conflict`, a gone one `NotFound`. On timeout the
    /// command may go on running in the container (the engine cannot kill an exec).
    pub async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let work = async {
            let created = self.docker.create_exec(id, config).await?;
            let mut output = Vec::new();
            if let StartExecResults::Attached {
                output: mut out, ..
            } = self.docker.start_exec(&created.id, None).await?
            {
                // Read to the end (the command's exit), keeping only the first bytes.
                while let Some(chunk) = out.next().await {
                    let bytes = chunk?.into_bytes();
                    let room = EXEC_OUTPUT_MAX.saturating_sub(output.len());
                    output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            let done = self.docker.inspect_exec(&created.id).await?;
            Ok((done.exit_code, output))
        };
        let (code, output) = bounded("exec", timeout, work).await?;
        let exit_code = code.ok_or_else(|| {
            RuntimeError::Engine(format!("exec in {id} ended without an exit code"))
        })?;
        Ok(ExecOutput { exit_code, output })
    }

    /// Force-removes a container (killing it if it still runs) with its anonymous volumes.
    /// A container that is already gone, or whose removal is already under way, is `Ok`.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match bounded(
            "remove",
            REMOVE_TIMEOUT,
            self.docker.remove_container(id, Some(options)),
        )
        .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(RuntimeError::Conflict(m)) if m.contains("already in progress") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Container `start`, `die`, `oom` and `destroy` events for containers
    /// carrying all of `labels`, from the moment of this call on (the engine
    /// replays any that happen before the stream is first polled). The stream
    /// has no end: if the connection breaks it yields one error and ends, and
    /// the caller reconnects (then lists, since events may have been missed).
    /// The engine compares `since` with its own clock, so a remote engine
    /// whose clock lags ours could drop the first moments of events.
    pub fn events(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_else(|_| "0".to_string());
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                EVENT_ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
            ("label".to_string(), convert::label_filters(labels)),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since)
            .filters(&filters)
            .build();
        let raw = self
            .docker
            .events(Some(options))
            .map_err(RuntimeError::from);
        let ended = stream::once(async {
            Err(RuntimeError::Unavailable(
                "docker event stream ended".to_string(),
            ))
        });
        let events = raw
            .chain(ended)
            // Stop after the first error: the stream is not resumable.
            .scan(false, |failed, item| {
                let out = if *failed {
                    None
                } else {
                    *failed = item.is_err();
                    Some(item)
                };
                async move { out }
            })
            .filter_map(|item| async move {
                match item {
                    Ok(msg) => convert::container_event(msg).map(Ok),
                    Err(e) => Some(Err(e)),
                }
            });
        within(events, EVENTS_MAX_DURATION, None)
    }

    /// The container's stdout and stderr, interleaved as the engine stores
    /// them; `tail` limits to the last lines, `follow` keeps the stream open
    /// while the container runs. The container's existence is checked within
    /// `INSPECT_TIMEOUT`; the stream is paced by the caller (nothing is buffered ahead of
    /// it) and ends with a `Timeout` error after `LOGS_TIMEOUT`, or `LOGS_FOLLOW_MAX` when
    /// following.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, RuntimeError>> + Send + 'static, RuntimeError>
    {
        // Fails with NotFound now rather than on the stream's first poll.
        self.inspect(id).await?;
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let max = if follow {
            LOGS_FOLLOW_MAX
        } else {
            LOGS_TIMEOUT
        };
        let raw = self
            .docker
            .logs(id, Some(options))
            .map_ok(|chunk| chunk.into_bytes())
            .map_err(RuntimeError::from);
        Ok(within(raw, max, Some("logs")))
    }
}

/// `inner` for at most `max`: then it ends, after one `Timeout` error naming `op` if given.
/// The deadline counts from the first poll.
fn within<T, S>(
    inner: S,
    max: Duration,
    op: Option<&'static str>,
) -> impl Stream<Item = Result<T, RuntimeError>> + Send + 'static
where
    T: Send + 'static,
    S: Stream<Item = Result<T, RuntimeError>> + Send + 'static,
{
    struct State<S> {
        inner: std::pin::Pin<Box<S>>,
        deadline: Option<tokio::time::Instant>,
        done: bool,
    }
    let state = State {
        inner: Box::pin(inner),
        deadline: None,
        done: false,
    };
    stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let deadline = *st
            .deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + max);
        tokio::select! {
            item = st.inner.next() => item.map(|i| (i, st)),
            _ = tokio::time::sleep_until(deadline) => {
                st.done = true;
                op.map(|op| (Err(RuntimeError::Timeout { op, after: max }), st))
            }
        }
    })
}

/// True when an engine's `MinAPIVersion` (e.g. `"1.12"`) is above ours.
/// True when `version` (`major.minor`) is below the API Orion speaks; unparseable is not.
fn api_older_than_ours(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<usize>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => {
            (major, minor) < (API_VERSION.major_version, API_VERSION.minor_version)
        }
        _ => false,
    }
}

fn api_newer_than_ours(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<usize>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => {
            (major, minor) > (API_VERSION.major_version, API_VERSION.minor_version)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_reference_adds_latest_and_keeps_registry_ports() {
        assert_eq!(
            pull_reference("nginx"),
            ("nginx".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_reference("orion/busybox:1.0"),
            ("orion/busybox".into(), Some("1.0".into()))
        );
        assert_eq!(
            pull_reference("registry:5000/app"),
            ("registry:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_reference("registry:5000/app:v2"),
            ("registry:5000/app".into(), Some("v2".into()))
        );
        assert_eq!(
            pull_reference("app@sha256:00"),
            ("app@sha256:00".into(), None)
        );
    }

    /// A stream that never yields, bounded by `within`: ends after the bound, with a timeout
    /// error only when an operation is named.
    async fn check_within(op: Option<&'static str>, want_error: bool) {
        let never = stream::pending::<Result<u8, RuntimeError>>();
        let items: Vec<_> = within(never, Duration::from_secs(5), op).collect().await;
        assert_eq!(items.len(), usize::from(want_error), "{op:?}: {items:?}");
        if want_error {
            assert!(matches!(items[0], Err(RuntimeError::Timeout { .. })));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unbounded_docker_calls_event_and_log_streams_end() {
        check_within(None, false).await;
        check_within(Some("logs"), true).await;
        let items: Vec<_> = within(
            stream::iter([Ok::<u8, RuntimeError>(1), Ok(2)]),
            Duration::from_secs(5),
            Some("logs"),
        )
        .collect()
        .await;
        assert_eq!(items, vec![Ok(1), Ok(2)]);
    }

    #[test]
    fn min_api_version_comparison() {
        assert!(!api_newer_than_ours("1.12"));
        assert!(!api_newer_than_ours("1.41"));
        assert!(api_newer_than_ours("1.44"));
        assert!(!api_newer_than_ours("garbage"));
        assert!(api_older_than_ours("1.40"));
        assert!(api_older_than_ours("0.99"));
        assert!(!api_older_than_ours("1.41"));
        assert!(!api_older_than_ours("1.47"));
        assert!(!api_older_than_ours("2.0"));
        assert!(!api_older_than_ours("garbage"));
    }
}
