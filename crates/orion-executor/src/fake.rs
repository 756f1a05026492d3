//! `FakeRuntime`: an in-memory container engine for tests and the simulator. It keeps
//! containers with their state, exit codes, OOM kills and bound host ports, knows which
//! images are present, publishes events, answers `exec` with a scripted result, carries an
//! image health status a test sets, and takes injected faults (a call fails, hangs, or
//! is slow; a container ignores its stop signal).
//!
//! Deterministic: ids come from a counter, timestamps from the injected `Clock`, and every
//! wait (a slow stop, a delayed call) is a `tokio::time` sleep, so under paused tokio time the
//! same calls give the same results and the same call log. It never touches a real clock,
//! thread or socket.

use crate::runtime::{ContainerRuntime, EventStream, LogStream};
use bytes::Bytes;
use futures_util::StreamExt;
use orion_docker::{
    BoundPort, ContainerEvent, ContainerInfo, ContainerSpec, ContainerState, EngineHealth,
    ExecOutput, RuntimeError,
};
use orion_types::env::Clock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;

/// Events buffered per subscriber; one that falls further behind gets an error and its
/// stream ends (it reconnects and lists, as with the real engine).
const EVENTS_BUFFER: usize = 1024;
/// Calls remembered for `calls()`; older ones are dropped (a test looks at recent ones).
const CALL_LOG_MAX: usize = 10_000;
/// First host port handed out for a port request with host port 0 (Docker's default range).
const DYNAMIC_PORT_FIRST: u16 = 32_768;
/// Exit code of a process ended by SIGTERM (128 + 15) and by SIGKILL (128 + 9).
const EXIT_SIGTERM: i64 = 143;
const EXIT_SIGKILL: i64 = 137;

/// A runtime call, for fault injection and the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    EnsureImage,
    Create,
    Start,
    Stop,
    Inspect,
    List,
    Remove,
    Logs,
    Exec,
}

/// What an injected fault does to every call of its `Op` until cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call fails at once with this error.
    Fail(RuntimeError),
    /// The call never returns (the caller's own bound must end it).
    Hang,
    /// The call takes this much longer, then proceeds.
    Delay(Duration),
}

/// One recorded call: which, on what (container id, name or image), and the clock's time
/// when it began and ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub target: String,
    pub began_ms: u64,
    pub ended_ms: u64,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    info: ContainerInfo,
    spec: ContainerSpec,
    /// How long the process takes to exit on its stop signal; `None`: it ignores it and is
    /// killed when the grace runs out.
    exits_after: Option<Duration>,
    output: Vec<u8>,
}

#[derive(Debug)]
struct FakeState {
    images: BTreeSet<String>,
    containers: BTreeMap<String, FakeContainer>,
    next_id: u64,
    next_port: u16,
    faults: BTreeMap<Op, Fault>,
    stop_exits_after: Option<Duration>,
    /// What every `exec` answers.
    exec_result: ExecOutput,
    calls: Vec<Call>,
}

/// The in-memory engine. Clones share one engine (like several handles on one dockerd).
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<FakeState>>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<ContainerEvent>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime").finish_non_exhaustive()
    }
}

/// A clock reading tokio's time, plus a fixed start: under paused tokio time it moves only
/// when the runtime auto-advances, which makes a driver test with slow fakes deterministic.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_ms: u64,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Reads `start_ms` now; must be created inside a tokio runtime.
    pub fn new(start_ms: u64) -> TokioClock {
        TokioClock {
            start_ms,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.origin.elapsed().as_millis() as u64
    }
}

fn has_labels(info: &ContainerInfo, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(k, v)| info.labels.get(*k).map(String::as_str) == Some(*v))
}

impl FakeRuntime {
    /// An engine with no images and no containers; `clock` stamps start and finish times.
    pub fn new(clock: Arc<dyn Clock>) -> FakeRuntime {
        let (events, _) = broadcast::channel(EVENTS_BUFFER);
        FakeRuntime {
            state: Arc::new(Mutex::new(FakeState {
                images: BTreeSet::new(),
                containers: BTreeMap::new(),
                next_id: 1,
                next_port: DYNAMIC_PORT_FIRST,
                faults: BTreeMap::new(),
                // A well-behaved process exits promptly on SIGTERM.
                stop_exits_after: Some(Duration::from_millis(10)),
                exec_result: ExecOutput {
                    exit_code: 0,
                    output: Vec::new(),
                },
                calls: Vec::new(),
            })),
            clock,
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, ev: ContainerEvent) {
        // No subscriber is fine: events are news, not state.
        let _ = self.events.send(ev);
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_string());
    }

    /// Every later call of `op` suffers `fault` until `clear_fault`.
    pub fn set_fault(&self, op: Op, fault: Fault) {
        self.lock().faults.insert(op, fault);
    }

    pub fn clear_fault(&self, op: Op) {
        self.lock().faults.remove(&op);
    }

    /// How long processes of containers created from now on take to exit on their stop
    /// signal; `None`: they ignore it and are killed when the grace runs out.
    pub fn set_stop_behaviour(&self, exits_after: Option<Duration>) {
        self.lock().stop_exits_after = exits_after;
    }

    /// What every later `exec` in a running container answers (at first: exit 0, no output).
    pub fn set_exec_result(&self, exit_code: i64, output: &[u8]) {
        self.lock().exec_result = ExecOutput {
            exit_code,
            output: output.to_vec(),
        };
    }

    /// Sets the image health check status container `id` shows in inspect.
    pub fn set_health(&self, id: &str, health: Option<EngineHealth>) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.info.health = health;
        }
    }

    /// Every container, sorted by name.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let mut out: Vec<ContainerInfo> = self
            .lock()
            .containers
            .values()
            .map(|c| c.info.clone())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Recorded calls, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Sets what `logs` returns for container `id`.
    pub fn set_output(&self, id: &str, output: &[u8]) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.output = output.to_vec();
        }
    }

    /// The container's main process ends by itself with `code` (`oom`: the kernel's OOM
    /// killer ended it). Returns false if it was not running.
    pub fn exit(&self, id: &str, code: i64, oom: bool) -> bool {
        let labels = {
            let mut st = self.lock();
            let now = self.clock.now_ms();
            let Some(c) = st.containers.get_mut(id) else {
                return false;
            };
            if c.info.state != ContainerState::Running {
                return false;
            }
            c.info.state = ContainerState::Exited {
                code,
                oom_killed: oom,
            };
            c.info.finished_at = Some(now.to_string());
            c.info.ports.clear();
            c.info.labels.clone()
        };
        if oom {
            self.publish(ContainerEvent::Oom {
                id: id.to_string(),
                labels: labels.clone(),
            });
        }
        self.publish(ContainerEvent::Died {
            id: id.to_string(),
            labels,
            exit_code: Some(code),
        });
        true
    }

    /// Applies the fault injected for `op`, if any.
    async fn fault(&self, op: Op) -> Result<(), RuntimeError> {
        let fault = self.lock().faults.get(&op).cloned();
        match fault {
            None => Ok(()),
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }

    fn record(&self, op: Op, target: &str, began_ms: u64) {
        let ended_ms = self.clock.now_ms();
        let mut st = self.lock();
        if st.calls.len() >= CALL_LOG_MAX {
            st.calls.remove(0);
        }
        st.calls.push(Call {
            op,
            target: target.to_string(),
            began_ms,
            ended_ms,
        });
    }

    /// Runs `body` after the fault for `op`, recording the call.
    async fn call<T>(
        &self,
        op: Op,
        target: &str,
        body: impl AsyncFnOnce() -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let began = self.clock.now_ms();
        let out = match self.fault(op).await {
            Ok(()) => body().await,
            Err(e) => Err(e),
        };
        self.record(op, target, began);
        out
    }

    fn start_now(&self, id: &str) -> Result<(), RuntimeError> {
        let labels = {
            let mut st = self.lock();
            let now = self.clock.now_ms();
            let Some(c) = st.containers.get(id) else {
                return Err(RuntimeError::NotFound(format!("no such container: {id}")));
            };
            if c.info.state == ContainerState::Running {
                return Ok(());
            }
            let requests = c.spec.ports.clone();
            // Host ports held by other running containers.
            let taken: BTreeSet<(String, u16)> = st
                .containers
                .values()
                .filter(|o| o.info.id != id && o.info.state == ContainerState::Running)
                .flat_map(|o| {
                    o.info
                        .ports
                        .iter()
                        .map(|p| (p.protocol.clone(), p.host_port))
                })
                .collect();
            let mut bound = Vec::with_capacity(requests.len());
            for r in &requests {
                let host_port = if r.host_port == 0 {
                    let mut p = st.next_port;
                    while taken.contains(&(r.protocol.clone(), p)) {
                        p = p.checked_add(1).unwrap_or(DYNAMIC_PORT_FIRST);
                    }
                    st.next_port = p.checked_add(1).unwrap_or(DYNAMIC_PORT_FIRST);
                    p
                } else if taken.contains(&(r.protocol.clone(), r.host_port)) {
                    return Err(RuntimeError::Engine(format!(
                        "driver failed programming external connectivity: Bind for {}:{} failed: port is already allocated",
                        r.host_ip, r.host_port
                    )));
                } else {
                    r.host_port
                };
                bound.push(BoundPort {
                    container_port: r.container_port,
                    protocol: r.protocol.clone(),
                    host_ip: r.host_ip.clone(),
                    host_port,
                });
            }
            let c = st
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            c.info.state = ContainerState::Running;
            c.info.ports = bound;
            c.info.started_at = Some(now.to_string());
            c.info.finished_at = None;
            c.info.labels.clone()
        };
        self.publish(ContainerEvent::Started {
            id: id.to_string(),
            labels,
        });
        Ok(())
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.call(Op::EnsureImage, image, async || {
            if self.lock().images.contains(image) {
                Ok(())
            } else {
                Err(RuntimeError::ImageUnavailable {
                    image: image.to_string(),
                    cause: "pull access denied: no registry reachable (fake)".to_string(),
                })
            }
        })
        .await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.call(Op::Create, &spec.name, async || {
            let mut st = self.lock();
            if !st.images.contains(&spec.image) {
                return Err(RuntimeError::ImageUnavailable {
                    image: spec.image.clone(),
                    cause: format!("No such image: {}", spec.image),
                });
            }
            if st.containers.values().any(|c| c.info.name == spec.name) {
                return Err(RuntimeError::Conflict(format!(
                    "the container name \"/{}\" is already in use",
                    spec.name
                )));
            }
            let id = format!("{:064x}", st.next_id);
            st.next_id += 1;
            let exits_after = st.stop_exits_after;
            st.containers.insert(
                id.clone(),
                FakeContainer {
                    info: ContainerInfo {
                        id: id.clone(),
                        name: spec.name.clone(),
                        labels: spec.labels.clone(),
                        state: ContainerState::Created,
                        ports: Vec::new(),
                        started_at: None,
                        finished_at: None,
                        ip_address: None,
                        health: None,
                        pid: None,
                    },
                    spec: spec.clone(),
                    exits_after,
                    output: Vec::new(),
                },
            );
            Ok(id)
        })
        .await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(Op::Start, id, async || self.start_now(id)).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.call(Op::Stop, id, async || {
            let exits_after = {
                let st = self.lock();
                match st.containers.get(id) {
                    Some(c) if c.info.state == ContainerState::Running => c.exits_after,
                    _ => return Ok(()),
                }
            };
            let (wait, code) = match exits_after {
                Some(d) if d <= grace => (d, EXIT_SIGTERM),
                _ => (grace, EXIT_SIGKILL),
            };
            tokio::time::sleep(wait).await;
            self.exit(id, code, false);
            Ok(())
        })
        .await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.call(Op::Inspect, id, async || {
            let st = self.lock();
            st.containers
                .get(id)
                .or_else(|| st.containers.values().find(|c| c.info.name == id))
                .map(|c| c.info.clone())
                .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {id}")))
        })
        .await
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.call(Op::List, "", async || {
            Ok(self
                .containers()
                .into_iter()
                .filter(|c| has_labels(c, labels))
                .collect())
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(Op::Remove, id, async || {
            let running = self
                .lock()
                .containers
                .get(id)
                .is_some_and(|c| c.info.state == ContainerState::Running);
            if running {
                self.exit(id, EXIT_SIGKILL, false);
            }
            if let Some(c) = self.lock().containers.remove(id) {
                self.publish(ContainerEvent::Destroyed {
                    id: id.to_string(),
                    labels: c.info.labels,
                });
            }
            Ok(())
        })
        .await
    }

    async fn exec(
        &self,
        id: &str,
        _cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let work = self.call(Op::Exec, id, async || {
            let st = self.lock();
            match st.containers.get(id) {
                None => Err(RuntimeError::NotFound(format!("no such container: {id}"))),
                Some(c) if c.info.state != ContainerState::Running => Err(RuntimeError::Conflict(
                    format!("container {id} is not running"),
                )),
                Some(_) => Ok(st.exec_result.clone()),
            }
        });
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::Timeout {
                op: "exec",
                after: timeout,
            }),
        }
    }

    fn events(&self, labels: &[(&str, &str)]) -> EventStream {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let rx = self.events.subscribe();
        let stream = futures_util::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(RuntimeError::Unavailable(format!(
                        "event subscriber fell {n} events behind"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Box::pin(stream.filter(move |item| {
            let keep = match item {
                Ok(ev) => labels
                    .iter()
                    .all(|(k, v)| ev.labels().get(k).is_some_and(|x| x == v)),
                Err(_) => true,
            };
            async move { keep }
        }))
    }

    async fn logs(
        &self,
        id: &str,
        _follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        self.call(Op::Logs, id, async || {
            let st = self.lock();
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {id}")))?;
            let text = String::from_utf8_lossy(&c.output).to_string();
            let lines: Vec<&str> = text.lines().collect();
            let from = tail.map_or(0, |n| lines.len().saturating_sub(n));
            let chunks: Vec<Result<Bytes, RuntimeError>> = lines[from..]
                .iter()
                .map(|l| Ok(Bytes::from(format!("{l}\n"))))
                .collect();
            Ok(Box::pin(futures_util::stream::iter(chunks)) as LogStream)
        })
        .await
    }
}
