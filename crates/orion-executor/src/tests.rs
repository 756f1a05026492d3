//! Tests of the plan (table tests, one `check` per family) and of the driver over the
//! `FakeRuntime` and a fake cluster that applies reports to a real `ClusterState`, all on
//! paused tokio time so that slow stops and back-off cost no wall time and replay exactly.

use super::*;
use crate::plan::{DRAIN_POLL_MS, DRAIN_SETTLE_MS, mappings};
use orion_docker::{BoundPort, ContainerInfo, ContainerState};
use orion_state::ClusterState;
use orion_types::api::parse_task_request;
use orion_types::service::{HealthCheck, HealthTest};
use orion_types::{AllocId, AllocStatus, Health, NodeMeta, Placement, Resources, TaskState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const NODE: &str = "n1";
const IMAGE: &str = "orion/busybox:latest";

// ---------------------------------------------------------------------------------------
// Plan: inputs built from a few lines, actions rendered as one line each.

fn task(id: &str, state: TaskState, extra: &str) -> Task {
    let spec = parse_task_request(format!(r#"{{"image": "{IMAGE}"{extra}}}"#).as_bytes())
        .expect("valid spec");
    let mut t = Task::new(id.to_string(), spec, 1);
    t.state = state;
    t.node = Some(NODE.to_string());
    t.allocation = Some(format!("a-{id}"));
    t
}

fn container(
    id: &str,
    alloc: &str,
    state: ContainerState,
    host_port: Option<u16>,
) -> ContainerInfo {
    ContainerInfo {
        id: id.to_string(),
        name: format!("orion-{id}"),
        labels: BTreeMap::from([
            (LABEL_NODE.to_string(), NODE.to_string()),
            (LABEL_ALLOC.to_string(), alloc.to_string()),
        ]),
        state,
        ports: host_port
            .map(|p| BoundPort {
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "127.0.0.1".into(),
                host_port: p,
            })
            .into_iter()
            .collect(),
        started_at: None,
        finished_at: None,
        ip_address: None,
        health: None,
        pid: None,
    }
}

fn exited(code: i64, oom: bool) -> ContainerState {
    ContainerState::Exited {
        code,
        oom_killed: oom,
    }
}

fn describe(a: &ExecAction) -> String {
    match a {
        ExecAction::Remove {
            container_id,
            stop_grace_ms,
            why,
            ..
        } => match stop_grace_ms {
            Some(ms) => format!("remove {container_id} {why:?} {ms}ms"),
            None => format!("remove {container_id} {why:?} at once"),
        },
        ExecAction::Stop {
            container_id,
            grace_ms,
            why,
            ..
        } => format!("stop {container_id} {why:?} {grace_ms}ms"),
        ExecAction::Start { task, existing } => match existing {
            Some(c) => format!("start {} in {c}", task.id),
            None => format!("start {}", task.id),
        },
        ExecAction::Report {
            task_id, status, ..
        } => match status {
            AllocStatus::Starting => format!("report {task_id} starting"),
            AllocStatus::Running {
                container_id,
                ports,
            } => {
                let ports: Vec<String> = ports.iter().map(|p| p.host_port.to_string()).collect();
                format!(
                    "report {task_id} running {container_id} [{}]",
                    ports.join(",")
                )
            }
            AllocStatus::Exited {
                container_id,
                exit_code,
                oom_killed,
            } => format!(
                "report {task_id} exited {container_id} {exit_code}{}",
                if *oom_killed { " oom" } else { "" }
            ),
            AllocStatus::Failed { reason } => format!("report {task_id} failed {reason}"),
        },
        ExecAction::ReportHealth {
            task_id,
            health,
            output,
            ..
        } => format!("health {task_id} {} {output}", health.as_str()),
    }
}

/// One plan case: the situation and the actions (and wake-up) it must give.
struct Case {
    name: &'static str,
    desired: Vec<Task>,
    actual: Vec<ContainerInfo>,
    now_ms: u64,
    fresh: bool,
    contact_age_ms: Option<u64>,
    in_flight: InFlight,
    watched: BTreeMap<AllocId, u64>,
    probes: BTreeMap<AllocId, ProbeView>,
    draining: BTreeMap<String, u64>,
    connections: BTreeMap<String, u32>,
    readiness: BTreeMap<AllocId, ReadyView>,
    want: &'static [&'static str],
    want_wake: Option<u64>,
    /// Containers held to drain after this pass, with since when.
    want_draining: &'static [(&'static str, u64)],
}

impl Default for Case {
    fn default() -> Case {
        Case {
            name: "",
            desired: Vec::new(),
            actual: Vec::new(),
            now_ms: 10_000,
            fresh: true,
            contact_age_ms: Some(0),
            in_flight: InFlight::default(),
            watched: BTreeMap::new(),
            probes: BTreeMap::new(),
            draining: BTreeMap::new(),
            connections: BTreeMap::new(),
            readiness: BTreeMap::new(),
            want: &[],
            want_wake: None,
            want_draining: &[],
        }
    }
}

fn check(case: Case) {
    let desired: Vec<&Task> = case.desired.iter().collect();
    let input = PlanInput {
        desired: &desired,
        actual: &case.actual,
        now_ms: case.now_ms,
        fresh: case.fresh,
        leader_contact_age_ms: case.contact_age_ms,
        in_flight: &case.in_flight,
        watched: &case.watched,
        probes: &case.probes,
        draining: &case.draining,
        connections: &case.connections,
        readiness: &case.readiness,
    };
    let got = plan(&input);
    let lines: Vec<String> = got.actions.iter().map(describe).collect();
    assert_eq!(lines, case.want, "case {:?}", case.name);
    assert_eq!(got.wake_at_ms, case.want_wake, "case {:?}: wake", case.name);
    let draining: Vec<(&str, u64)> = got.draining.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    assert_eq!(
        draining, case.want_draining,
        "case {:?}: draining",
        case.name
    );
    // Same input, same plan: the decision is a function.
    assert_eq!(plan(&input), got, "case {:?}: not deterministic", case.name);
}

fn running_task(id: &str, cid: &str) -> Task {
    let mut t = task(id, TaskState::Running, "");
    t.container_id = Some(cid.to_string());
    t
}

#[test]
fn plan_adopts_containers_of_current_allocations() {
    let mut with_ports = running_task("t1", "c1");
    with_ports.ports = mappings(&container(
        "c1",
        "a-t1",
        ContainerState::Running,
        Some(8080),
    ));
    check(Case {
        name: "a scheduled task whose container runs is reported running with its bound port",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        actual: vec![container(
            "c1",
            "a-t1",
            ContainerState::Running,
            Some(31000),
        )],
        want: &["report t1 running c1 [31000]"],
        ..Case::default()
    });
    check(Case {
        name: "a running task whose record matches needs nothing",
        desired: vec![with_ports.clone()],
        actual: vec![container("c1", "a-t1", ContainerState::Running, Some(8080))],
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "ports reported are the ones really bound",
        desired: vec![with_ports],
        actual: vec![container("c1", "a-t1", ContainerState::Running, Some(8081))],
        want: &["report t1 running c1 [8081]"],
        ..Case::default()
    });
    check(Case {
        name: "a created, never started container is started in place",
        desired: vec![task("t1", TaskState::Starting, "")],
        actual: vec![container("c1", "a-t1", ContainerState::Created, None)],
        want: &["start t1 in c1"],
        ..Case::default()
    });
    check(Case {
        name: "a placed task without a container is started",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        want: &["start t1"],
        ..Case::default()
    });
}

#[test]
fn plan_fences_containers_not_current_here() {
    check(Case {
        name: "an unknown allocation is removed with the short fence grace (also a deleted task)",
        actual: vec![container("c9", "a-gone", ContainerState::Running, None)],
        want: &["remove c9 NotCurrent 1000ms"],
        ..Case::default()
    });
    check(Case {
        name: "a stopped container without an allocation label is removed at once",
        actual: vec![container("c9", "", exited(0, false), None)],
        want: &["remove c9 NotCurrent at once"],
        ..Case::default()
    });
    check(Case {
        name: "a re-placed task: the old allocation's container stops, the new one starts",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        actual: vec![container("c0", "a-old", ContainerState::Running, None)],
        want: &["stop c0 NotCurrent 1000ms", "start t1"],
        ..Case::default()
    });
    check(Case {
        name: "of two containers of one allocation the running one stays",
        desired: vec![running_task("t1", "c2")],
        actual: vec![
            container("c1", "a-t1", exited(1, false), None),
            container("c2", "a-t1", ContainerState::Running, None),
        ],
        want: &["remove c1 Duplicate at once"],
        ..Case::default()
    });
    check(Case {
        name: "fencing goes on while the replica is not known fresh; starts do not",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        actual: vec![container("c0", "a-old", ContainerState::Running, None)],
        fresh: false,
        want: &["remove c0 NotCurrent 1000ms"],
        ..Case::default()
    });
    check(Case {
        name: "while starts are pending a stopped fenced container waits for its removal",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        actual: vec![container("c0", "a-old", exited(137, false), None)],
        want: &["start t1"],
        ..Case::default()
    });
    check(Case {
        name: "a start in flight also holds removals back; stops go ahead",
        actual: vec![
            container("c0", "a-old", exited(137, false), None),
            container("c1", "a-old2", ContainerState::Running, None),
        ],
        in_flight: InFlight {
            starting: BTreeSet::from(["a-t9".to_string()]),
            ..InFlight::default()
        },
        want: &["stop c1 NotCurrent 1000ms"],
        ..Case::default()
    });
    check(Case {
        name: "a removal in flight is not asked for again",
        actual: vec![container("c9", "a-gone", ContainerState::Running, None)],
        in_flight: InFlight {
            removing: BTreeSet::from(["c9".to_string()]),
            ..InFlight::default()
        },
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "a start whose fixed host port a leaving container holds waits for the removal",
        desired: vec![task(
            "t1",
            TaskState::Scheduled,
            r#", "portBindings": {"80/tcp": "8080"}"#,
        )],
        actual: vec![container(
            "c0",
            "a-old",
            ContainerState::Running,
            Some(8080),
        )],
        want: &["remove c0 NotCurrent 1000ms"],
        ..Case::default()
    });
    check(Case {
        name: "a start on other ports does not wait for removals",
        desired: vec![task(
            "t1",
            TaskState::Scheduled,
            r#", "portBindings": {"80/tcp": "8081"}"#,
        )],
        actual: vec![container(
            "c0",
            "a-old",
            ContainerState::Running,
            Some(8080),
        )],
        want: &["stop c0 NotCurrent 1000ms", "start t1"],
        ..Case::default()
    });
    check(Case {
        name: "actions come sorted whatever the input order",
        desired: vec![
            task("t2", TaskState::Scheduled, ""),
            task("t1", TaskState::Scheduled, ""),
        ],
        actual: vec![
            container("cb", "a-x", ContainerState::Running, None),
            container("ca", "a-y", ContainerState::Running, None),
        ],
        want: &[
            "stop ca NotCurrent 1000ms",
            "stop cb NotCurrent 1000ms",
            "start t1",
            "start t2",
        ],
        ..Case::default()
    });
}

#[test]
fn plan_reports_exits_oom_and_vanished_containers() {
    check(Case {
        name: "an exit is reported with its code",
        desired: vec![running_task("t1", "c1")],
        actual: vec![container("c1", "a-t1", exited(3, false), None)],
        want: &["report t1 exited c1 3"],
        ..Case::default()
    });
    check(Case {
        name: "an OOM kill is reported as such",
        desired: vec![running_task("t1", "c1")],
        actual: vec![container("c1", "a-t1", exited(137, true), None)],
        want: &["report t1 exited c1 137 oom"],
        ..Case::default()
    });
    check(Case {
        name: "a running task whose container vanished is reported killed",
        desired: vec![running_task("t1", "c1")],
        want: &["report t1 exited c1 137"],
        ..Case::default()
    });
}

#[test]
fn plan_restarts_only_when_the_back_off_is_due() {
    let failed_due = |due: u64| {
        let mut t = task("t1", TaskState::Failed, "");
        t.restart_at = Some(due);
        t
    };
    check(Case {
        name: "not due yet: nothing, wake at the due time",
        desired: vec![failed_due(12_000)],
        actual: vec![container("c1", "a-t1", exited(1, false), None)],
        want: &[],
        want_wake: Some(12_000),
        ..Case::default()
    });
    check(Case {
        name: "due: start the exited container again",
        desired: vec![failed_due(10_000)],
        actual: vec![container("c1", "a-t1", exited(1, false), None)],
        want: &["start t1 in c1"],
        ..Case::default()
    });
    check(Case {
        name: "due but not fresh: wait",
        desired: vec![failed_due(9_000)],
        actual: vec![container("c1", "a-t1", exited(1, false), None)],
        fresh: false,
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "no restart_at (policy never): the exited container stays for its logs",
        desired: vec![task("t1", TaskState::Completed, "")],
        actual: vec![container("c1", "a-t1", exited(0, false), None)],
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "a start in flight is not asked for again",
        desired: vec![failed_due(9_000)],
        in_flight: InFlight {
            starting: BTreeSet::from(["a-t1".to_string()]),
            ..InFlight::default()
        },
        want: &[],
        ..Case::default()
    });
}

#[test]
fn stale_replica_after_a_stall_stop_after_disconnect() {
    let opted = || running_task("t1", "c1");
    let mut t = opted();
    t.spec.stop_after_disconnect_ms = Some(30_000);
    check(Case {
        name: "cut off past the limit: the container is removed with the stop grace",
        desired: vec![t.clone()],
        actual: vec![container("c1", "a-t1", ContainerState::Running, None)],
        fresh: false,
        contact_age_ms: Some(30_000),
        want: &["remove c1 Disconnected 2000ms"],
        ..Case::default()
    });
    check(Case {
        name: "cut off, not yet the limit: nothing",
        desired: vec![t.clone()],
        actual: vec![container("c1", "a-t1", ContainerState::Running, None)],
        fresh: false,
        contact_age_ms: Some(29_999),
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "cut off past the limit and no container: nothing starts or is reported",
        desired: vec![t.clone()],
        fresh: false,
        contact_age_ms: Some(60_000),
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "a task without the option keeps running however long the cut",
        desired: vec![opted()],
        actual: vec![container("c1", "a-t1", ContainerState::Running, None)],
        fresh: false,
        contact_age_ms: Some(3_600_000),
        want: &[],
        ..Case::default()
    });
    check(Case {
        name: "unknown contact age never stops anything",
        desired: vec![t],
        actual: vec![container("c1", "a-t1", ContainerState::Running, None)],
        contact_age_ms: None,
        want: &[],
        ..Case::default()
    });
}

/// A running task with a TCP health check and a 5 s stop grace, its health as recorded.
fn checked_task(id: &str, cid: &str, health: Health) -> Task {
    let mut t = running_task(id, cid);
    t.spec.healthcheck = Some(HealthCheck {
        test: HealthTest::Tcp,
        port: Some(80),
        interval_ms: 1_000,
        timeout_ms: 500,
        retries: 2,
        start_period_ms: 0,
    });
    t.spec.stop_grace_period_ms = Some(5_000);
    t.health = health;
    t
}

/// The probe of allocation `a-t1`'s container `cid`.
fn probe_of(cid: &str, health: Health, output: &str) -> BTreeMap<AllocId, ProbeView> {
    BTreeMap::from([(
        "a-t1".to_string(),
        ProbeView {
            container_id: cid.to_string(),
            health,
            output: output.to_string(),
        },
    )])
}

/// (case, health the replica recorded, probed container, its health and output, whether a
/// stop of c1 is in flight, the actions).
type HealthRow = (
    &'static str,
    Health,
    &'static str,
    Health,
    &'static str,
    bool,
    &'static [&'static str],
);

#[test]
fn plan_reports_health_transitions_and_stops_an_unhealthy_container() {
    use Health::{Healthy, Starting, Unhealthy};
    let cases: &[HealthRow] = &[
        (
            "a probe that passed is news to a replica that says starting",
            Starting,
            "c1",
            Healthy,
            "ok",
            false,
            &["health t1 healthy ok"],
        ),
        (
            "probe and replica agree: nothing (only transitions travel)",
            Healthy,
            "c1",
            Healthy,
            "ok",
            false,
            &[],
        ),
        (
            "unhealthy is reported first; the container stays until the replica has it",
            Healthy,
            "c1",
            Unhealthy,
            "refused",
            false,
            &["health t1 unhealthy refused"],
        ),
        (
            "recorded unhealthy: the container stops with the task's grace",
            Unhealthy,
            "c1",
            Unhealthy,
            "refused",
            false,
            &["stop c1 Unhealthy 5000ms"],
        ),
        (
            "its stop in flight is not asked for again",
            Unhealthy,
            "c1",
            Unhealthy,
            "refused",
            true,
            &[],
        ),
        (
            "a restarted run starts over: reported starting, not stopped",
            Unhealthy,
            "c1",
            Starting,
            "",
            false,
            &["health t1 starting "],
        ),
        (
            "a probe of another container says nothing of this one",
            Unhealthy,
            "c0",
            Unhealthy,
            "refused",
            false,
            &[],
        ),
    ];
    for (name, recorded, cid, probed, output, stopping, want) in cases {
        let removing = if *stopping {
            BTreeSet::from(["c1".to_string()])
        } else {
            BTreeSet::new()
        };
        check(Case {
            name,
            desired: vec![checked_task("t1", "c1", *recorded)],
            actual: vec![container("c1", "a-t1", ContainerState::Running, None)],
            probes: probe_of(cid, *probed, output),
            in_flight: InFlight {
                removing,
                ..InFlight::default()
            },
            want,
            ..Case::default()
        });
    }
    check(Case {
        name: "a task without a check ignores probes",
        desired: vec![running_task("t1", "c1")],
        actual: vec![container("c1", "a-t1", ContainerState::Running, None)],
        probes: probe_of("c1", Unhealthy, "refused"),
        want: &[],
        ..Case::default()
    });
}

#[test]
fn plan_stops_a_task_stopped_while_watched_with_its_grace() {
    let watched = || BTreeMap::from([("a-gone".to_string(), 5_000)]);
    check(Case {
        name: "deleted, scaled down or replaced while this node watched: its own grace",
        actual: vec![container("c9", "a-gone", ContainerState::Running, None)],
        watched: watched(),
        want: &["remove c9 Stopped 5000ms"],
        ..Case::default()
    });
    check(Case {
        name: "while starts are pending it is only stopped, still with its grace",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        actual: vec![container("c9", "a-gone", ContainerState::Running, None)],
        watched: watched(),
        want: &["stop c9 Stopped 5000ms", "start t1"],
        ..Case::default()
    });
    check(Case {
        name: "never seen current (back from a partition or a restart): the fence",
        actual: vec![container("c9", "a-other", ContainerState::Running, None)],
        watched: watched(),
        want: &["remove c9 NotCurrent 1000ms"],
        ..Case::default()
    });
}

#[test]
fn plan_drains_a_stopped_task_before_its_stop_signal() {
    // A task stopped while watched (grace 5 s) whose container publishes port 8080; now is
    // 10_000 in every row.
    let watched = |grace: u64| BTreeMap::from([("a-gone".to_string(), grace)]);
    let leaving = || {
        vec![container(
            "c9",
            "a-gone",
            ContainerState::Running,
            Some(8080),
        )]
    };
    let since = |ms: u64| BTreeMap::from([("c9".to_string(), ms)]);
    check(Case {
        name: "first seen stopped: held, out of every view for the settle time",
        actual: leaving(),
        watched: watched(5_000),
        want_wake: Some(10_000 + DRAIN_SETTLE_MS),
        want_draining: &[("c9", 10_000)],
        ..Case::default()
    });
    check(Case {
        name: "still settling: held until the settle time",
        actual: leaving(),
        watched: watched(5_000),
        draining: since(9_500),
        want_wake: Some(9_500 + DRAIN_SETTLE_MS),
        want_draining: &[("c9", 9_500)],
        ..Case::default()
    });
    check(Case {
        name: "settled with no connection left: the stop signal, with the full grace",
        actual: leaving(),
        watched: watched(5_000),
        draining: since(8_000),
        want: &["remove c9 Stopped 5000ms"],
        ..Case::default()
    });
    check(Case {
        name: "settled but connections in flight: held, counted again soon",
        actual: leaving(),
        watched: watched(5_000),
        draining: since(8_000),
        connections: BTreeMap::from([("c9".to_string(), 2)]),
        want_wake: Some(10_000 + DRAIN_POLL_MS),
        want_draining: &[("c9", 8_000)],
        ..Case::default()
    });
    check(Case {
        name: "connections still open at the end of the grace: stopped anyway",
        actual: leaving(),
        watched: watched(5_000),
        draining: since(5_000),
        connections: BTreeMap::from([("c9".to_string(), 2)]),
        want: &["remove c9 Stopped 5000ms"],
        ..Case::default()
    });
    check(Case {
        name: "a grace shorter than the settle time caps it",
        actual: leaving(),
        watched: watched(300),
        draining: since(9_800),
        want_wake: Some(10_100),
        want_draining: &[("c9", 9_800)],
        ..Case::default()
    });
    check(Case {
        name: "while starts are pending the held container is still held",
        desired: vec![task("t1", TaskState::Scheduled, "")],
        actual: leaving(),
        watched: watched(5_000),
        want: &["start t1"],
        want_wake: Some(10_000 + DRAIN_SETTLE_MS),
        want_draining: &[("c9", 10_000)],
        ..Case::default()
    });
    check(Case {
        name: "fenced (never seen current): no drain, it may run elsewhere",
        actual: vec![container(
            "c9",
            "a-other",
            ContainerState::Running,
            Some(8080),
        )],
        watched: watched(5_000),
        want: &["remove c9 NotCurrent 1000ms"],
        ..Case::default()
    });
    check(Case {
        name: "already exited: nothing to drain",
        actual: vec![container("c9", "a-gone", exited(0, false), Some(8080))],
        watched: watched(5_000),
        want: &["remove c9 Stopped at once"],
        ..Case::default()
    });
}

#[test]
fn established_connections_are_counted_on_the_given_ports() {
    let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 020011AC:0050 010011AC:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 020011AC:0050 010011AC:A1B3 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 020011AC:0050 010011AC:A1B4 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0 0 0 0 0 0
   4: 020011AC:C350 0A0000AC:0050 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   garbage line
";
    // Port 80 (0x0050): two established (a listener and a TIME_WAIT do not count); the
    // container's own outgoing connection to a remote port 80 does not either.
    assert_eq!(crate::plan::established_on(text, &[80]), 2);
    assert_eq!(crate::plan::established_on(text, &[443]), 0);
    assert_eq!(crate::plan::established_on("", &[80]), 0);
}

/// The watched allocations after one plan over `desired` and `actual`, given the last pass's.
fn watched_after(
    desired: &[&Task],
    actual: &[ContainerInfo],
    fresh: bool,
    watched: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let got = plan(&PlanInput {
        desired,
        actual,
        now_ms: 10_000,
        fresh,
        leader_contact_age_ms: Some(0),
        in_flight: &InFlight::default(),
        watched,
        probes: &BTreeMap::new(),
        draining: &BTreeMap::new(),
        connections: &BTreeMap::new(),
        readiness: &BTreeMap::new(),
    });
    let mut next = watched.clone();
    got.watch.apply(&mut next);
    next
}

#[test]
fn plan_watches_current_allocations_only_while_fresh() {
    let check = |fresh: bool, want: &[(&str, u64)]| {
        let mut checked = checked_task("t1", "c1", Health::Healthy);
        checked.allocation = Some("a-t1".into());
        let desired = [checked, task("t2", TaskState::Scheduled, "")];
        let actual = vec![container("c8", "a-left", exited(0, false), None)];
        let watched =
            BTreeMap::from([("a-left".to_string(), 7_000), ("a-gone".to_string(), 7_000)]);
        let desired: Vec<&Task> = desired.iter().collect();
        let want: BTreeMap<String, u64> = want.iter().map(|(a, g)| (a.to_string(), *g)).collect();
        let next = watched_after(&desired, &actual, fresh, &watched);
        assert_eq!(next, want, "fresh {fresh}");
    };
    // Current ones with their grace (a plain task: the short one); a watched allocation
    // whose container is still there stays; one with neither task nor container goes.
    check(
        true,
        &[("a-left", 7_000), ("a-t1", 5_000), ("a-t2", FENCE_GRACE_MS)],
    );
    check(false, &[]);
}

/// The watched allocations a pass hands on are now a change to the last pass's, walked over
/// both sorted lists; applied, it must give what rebuilding the whole map gave: the watched
/// ones that still have a task or a container, then every current one with its grace.
#[test]
fn plan_watch_change_equals_rebuilding_the_watched_map() {
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for case in 0..500 {
        let allocs: Vec<String> = (0..12).map(|i| format!("a-{i:02}")).collect();
        let mut desired_tasks = Vec::new();
        for (i, a) in allocs.iter().enumerate() {
            if next(2) == 0 {
                let mut t = task(&format!("t{i}"), TaskState::Scheduled, "");
                t.allocation = Some(a.clone());
                t.spec.stop_grace_period_ms = [None, Some(1_000), Some(9_000)][next(3) as usize];
                desired_tasks.push(t);
            }
        }
        let mut watched: BTreeMap<String, u64> = BTreeMap::new();
        let mut actual: Vec<ContainerInfo> = Vec::new();
        for (i, a) in allocs.iter().enumerate() {
            if next(2) == 0 {
                let grace = [1_000, 9_000, FENCE_GRACE_MS][next(3) as usize];
                watched.insert(a.clone(), grace);
            }
            if next(3) == 0 {
                actual.push(container(&format!("c{i}"), a, exited(0, false), None));
            }
        }
        let desired: Vec<&Task> = desired_tasks.iter().collect();
        let applied = watched_after(&desired, &actual, true, &watched);
        let present: BTreeSet<&str> = actual
            .iter()
            .map(|c| c.labels[LABEL_ALLOC].as_str())
            .collect();
        let current: BTreeMap<&str, &Task> = desired
            .iter()
            .map(|t| (t.allocation.as_deref().unwrap(), *t))
            .collect();
        let mut want = watched.clone();
        want.retain(|a, _| current.contains_key(a.as_str()) || present.contains(a.as_str()));
        for (a, t) in &current {
            want.insert(a.to_string(), crate::plan::stop_grace_ms(t));
        }
        assert_eq!(applied, want, "case {case}");
    }
}

// ---------------------------------------------------------------------------------------
// Driver: the real loop over the fake runtime and a fake cluster.

/// A cluster of one replica: reports are applied to a real `ClusterState` at once.
struct FakeCluster {
    state: Mutex<ClusterState>,
    changes: watch::Sender<u64>,
    ready: AtomicBool,
    ready_calls: AtomicU64,
    /// `u64::MAX`: unknown.
    contact_age_ms: AtomicU64,
    reports: Mutex<Vec<Command>>,
    /// Every set of failing allocations told to `local_unhealthy`, in order.
    told_unhealthy: Mutex<Vec<Vec<AllocId>>>,
    /// The task ids of every share a pass planned over, in order.
    shares: Mutex<Vec<Vec<String>>>,
}

impl FakeCluster {
    fn new() -> Arc<FakeCluster> {
        let c = Arc::new(FakeCluster {
            state: Mutex::new(ClusterState::default()),
            changes: watch::channel(0).0,
            ready: AtomicBool::new(true),
            ready_calls: AtomicU64::new(0),
            contact_age_ms: AtomicU64::new(0),
            reports: Mutex::new(Vec::new()),
            told_unhealthy: Mutex::new(Vec::new()),
            shares: Mutex::new(Vec::new()),
        });
        c.apply(&Command::UpsertNode {
            meta: Box::new(NodeMeta {
                id: NODE.into(),
                generation: 1,
                api_addr: "127.0.0.1:8000".into(),
                raft_addr: "127.0.0.1:7000".into(),
                gossip_addr: "127.0.0.1:6000".into(),
                publish_ip: "127.0.0.1".into(),
                capacity: Resources {
                    memory_bytes: 1 << 40,
                    cpu_millis: 1 << 20,
                },
                labels: BTreeMap::new(),
                version: "test".into(),
            }),
            at: 1,
        });
        c
    }

    fn apply(&self, cmd: &Command) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(cmd);
        self.changes.send_modify(|v| *v += 1);
    }

    /// Creates a task placed on this node with allocation `a-<id>`.
    fn place(&self, id: &str, extra: &str, host_ports: Vec<u16>) {
        let spec = parse_task_request(format!(r#"{{"image": "{IMAGE}"{extra}}}"#).as_bytes())
            .expect("valid spec");
        self.place_spec(id, spec, host_ports);
    }

    fn place_spec(&self, id: &str, spec: orion_types::TaskSpec, host_ports: Vec<u16>) {
        self.apply(&Command::CreatePlacedTask {
            task_id: id.into(),
            spec: Box::new(spec),
            placement: Placement {
                task_id: id.into(),
                node: NODE.into(),
                allocation: format!("a-{id}"),
                host_ports,
            },
            at: 2,
        });
    }

    fn task(&self, id: &str) -> Task {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).tasks[id]
            .as_ref()
            .clone()
    }
}

impl Cluster for FakeCluster {
    fn share(&self, node: &str, with_containers: &[&str]) -> Vec<Arc<Task>> {
        let share = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .executor_share(node, with_containers);
        let mut ordered = share.clone();
        ClusterState::order_share(&mut ordered);
        self.shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ordered.iter().map(|t| t.id.clone()).collect());
        share
    }
    fn share_version(&self, node: &str) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .share_version(node)
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    async fn report(&self, cmd: Command) -> Result<(), String> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd.clone());
        self.apply(&cmd);
        Ok(())
    }
    async fn ready(&self) -> Result<(), String> {
        self.ready_calls.fetch_add(1, Ordering::SeqCst);
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("no leader".into())
        }
    }
    fn leader_contact_age_ms(&self) -> Option<u64> {
        match self.contact_age_ms.load(Ordering::SeqCst) {
            u64::MAX => None,
            age => Some(age),
        }
    }
    fn local_unhealthy(&self, allocs: Vec<AllocId>) {
        self.told_unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(allocs);
    }
}

struct Rig {
    cluster: Arc<FakeCluster>,
    runtime: FakeRuntime,
    clock: Arc<TokioClock>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Starts a driver on node `NODE` over a fresh fake runtime holding `IMAGE`; `prepare` may
/// set the cluster and runtime up before the driver's first look.
fn rig(prepare: impl FnOnce(&FakeCluster, &FakeRuntime)) -> Rig {
    let clock = Arc::new(TokioClock::new(1_000_000));
    let runtime = FakeRuntime::new(clock.clone());
    runtime.add_image(IMAGE);
    let cluster = FakeCluster::new();
    prepare(&cluster, &runtime);
    let (stop, stop_rx) = watch::channel(false);
    let handle = spawn(
        ExecutorConfig {
            node_id: NODE.into(),
            publish_ip: "127.0.0.1".into(),
            backoff: BackoffConfig::default(),
            network: None,
        },
        runtime.clone(),
        cluster.clone(),
        clock.clone(),
        stop_rx,
    );
    Rig {
        cluster,
        runtime,
        clock,
        stop,
        handle,
    }
}

impl Rig {
    /// Polls `cond` every 10 ms of (paused) time until it holds, failing after `limit`.
    async fn until(&self, limit: Duration, what: &str, mut cond: impl FnMut(&Rig) -> bool) -> u64 {
        let start = self.clock.now_ms();
        loop {
            if cond(self) {
                return self.clock.now_ms() - start;
            }
            assert!(
                self.clock.now_ms() - start < limit.as_millis() as u64,
                "{what}: not within {limit:?}; containers {:?}",
                self.runtime.containers()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until task `id` is recorded running.
    async fn until_running(&self, id: &str, limit: Duration) {
        self.until(limit, &format!("{id} running"), |r| {
            r.state_of(id) == TaskState::Running
        })
        .await;
    }

    fn state_of(&self, id: &str) -> TaskState {
        self.cluster.task(id).state
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// A container for `alloc` left from before (a node back from the dead), running.
fn leftover(rt: &FakeRuntime, name: &str, alloc: &str, host_port: u16) -> String {
    let id = futures_util::FutureExt::now_or_never(rt.create(&orion_docker::ContainerSpec {
        name: name.into(),
        image: IMAGE.into(),
        command: None,
        env: BTreeMap::new(),
        labels: BTreeMap::from([
            (LABEL_NODE.to_string(), NODE.to_string()),
            (LABEL_ALLOC.to_string(), alloc.to_string()),
        ]),
        memory_bytes: None,
        nano_cpus: None,
        ports: vec![orion_docker::PortRequest {
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: "127.0.0.1".into(),
            host_port,
        }],
        network: None,
        dns: Vec::new(),
        dns_search: Vec::new(),
        setup: Default::default(),
    }))
    .expect("fake create is immediate")
    .expect("create");
    futures_util::FutureExt::now_or_never(rt.start(&id))
        .expect("fake start is immediate")
        .expect("start");
    id
}

#[tokio::test(start_paused = true)]
async fn driver_starts_reports_ports_and_removes_on_delete() {
    // The scheduler chose host port 31000 for the dynamic port.
    let r = rig(|c, _| c.place("t1", r#", "portBindings": {"80/tcp": ""}"#, vec![31_000]));
    r.until_running("t1", Duration::from_secs(5)).await;
    let t = r.cluster.task("t1");
    let c = &r.runtime.containers()[0];
    assert_eq!(t.container_id.as_deref(), Some(c.id.as_str()));
    assert_eq!(t.ports, mappings(c), "reported ports are the bound ones");
    assert_eq!(t.ports[0].host_port, 31_000, "{:?}", t.ports);

    r.cluster.apply(&Command::DeleteTask {
        task_id: "t1".into(),
        at: 3,
    });
    r.until(Duration::from_secs(5), "container removed", |r| {
        r.runtime.containers().is_empty()
    })
    .await;
    r.shutdown().await;
}

/// A task spec with an exec health check every second, `retries`, and a stop grace.
fn checked_spec(retries: u32, grace_ms: u64) -> orion_types::TaskSpec {
    let mut spec =
        parse_task_request(format!(r#"{{"image": "{IMAGE}"}}"#).as_bytes()).expect("valid spec");
    spec.healthcheck = Some(HealthCheck {
        test: HealthTest::Exec(vec!["check".into()]),
        port: None,
        interval_ms: 1_000,
        timeout_ms: 500,
        retries,
        start_period_ms: 0,
    });
    spec.stop_grace_period_ms = Some(grace_ms);
    spec
}

impl Rig {
    /// How long each stop call took, in order.
    fn stop_durations(&self) -> Vec<u64> {
        self.runtime
            .calls()
            .iter()
            .filter(|c| c.op == Op::Stop)
            .map(|c| c.ended_ms - c.began_ms)
            .collect()
    }

    /// The health transitions proposed so far: (health, output, at).
    fn health_reports(&self) -> Vec<(Health, String, u64)> {
        self.cluster
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|c| match c {
                Command::ReportHealth {
                    health, output, at, ..
                } => Some((*health, output.clone().unwrap_or_default(), *at)),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn unprobed_health_a_task_turns_healthy_then_unhealthy_after_retries_and_restarts() {
    let r = rig(|c, _| c.place_spec("t1", checked_spec(2, 3_000), vec![]));
    r.until(Duration::from_secs(10), "healthy", |r| {
        r.cluster.task("t1").health == Health::Healthy
    })
    .await;
    let cid = r.cluster.task("t1").container_id.expect("container");

    let fail_from = r.clock.now_ms();
    r.runtime.set_exec_result(1, b"boom");
    r.until(Duration::from_secs(10), "unhealthy", |r| {
        r.cluster.task("t1").health == Health::Unhealthy
    })
    .await;
    let (_, output, unhealthy_at) = r.health_reports().pop().expect("a report");
    assert_eq!(output, "exit code 1: boom");
    // The failure was told for the gossip announcement too (once, when it turned).
    assert_eq!(
        r.cluster
            .told_unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        vec![vec!["a-t1".to_string()]]
    );
    let failed_probes = r
        .runtime
        .calls()
        .iter()
        .filter(|c| c.op == Op::Exec && c.began_ms >= fail_from && c.ended_ms <= unhealthy_at)
        .count();
    assert_eq!(
        failed_probes, 2,
        "unhealthy after `retries` failures in a row"
    );

    // The container is stopped, its exit reported, and the restart policy (always) starts
    // it again: a new run, starting, then healthy once the check passes.
    r.runtime.set_exec_result(0, b"");
    r.until(Duration::from_secs(30), "restarted and healthy", |r| {
        let t = r.cluster.task("t1");
        t.restarts >= 1 && t.state == TaskState::Running && t.health == Health::Healthy
    })
    .await;
    // The new run is no longer failing: the announcement is cleared.
    assert_eq!(
        r.cluster
            .told_unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned(),
        Some(vec![])
    );
    assert!(
        r.runtime
            .calls()
            .iter()
            .any(|c| c.op == Op::Stop && c.target == cid),
        "the unhealthy container was stopped"
    );
    assert_eq!(
        r.cluster.task("t1").container_id.as_deref(),
        Some(cid.as_str())
    );
    let healths: Vec<&str> = r
        .health_reports()
        .iter()
        .map(|(h, ..)| h.as_str())
        .collect();
    assert_eq!(
        healths,
        ["starting", "healthy", "unhealthy", "starting", "healthy"],
        "only transitions are proposed"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn driver_a_hanging_probe_fails_at_its_timeout() {
    let r = rig(|c, rt| {
        rt.set_fault(Op::Exec, Fault::Hang);
        c.place_spec("t1", checked_spec(2, 1_000), vec![]);
    });
    r.until_running("t1", Duration::from_secs(5)).await;
    let took = r
        .until(Duration::from_secs(10), "unhealthy", |r| {
            r.cluster.task("t1").health == Health::Unhealthy
        })
        .await;
    let (_, output, _) = r.health_reports().pop().expect("a report");
    assert!(output.contains("timed out after 500ms"), "{output}");
    // Two probes, each one interval after the last ended plus its timeout.
    assert!(took <= 2 * (1_000 + 500) + 100, "unhealthy after {took} ms");
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn driver_stops_a_deleted_task_with_its_stop_grace() {
    let r = rig(|c, rt| {
        // The process ignores its stop signal: only the grace ends it.
        rt.set_stop_behaviour(None);
        c.place_spec("t1", checked_spec(3, 4_000), vec![]);
    });
    r.until_running("t1", Duration::from_secs(5)).await;
    r.cluster.apply(&Command::DeleteTask {
        task_id: "t1".into(),
        at: 3,
    });
    let took = r
        .until(Duration::from_secs(20), "container removed", |r| {
            r.runtime.containers().is_empty()
        })
        .await;
    assert!(took >= 4_000, "removed after {took} ms, before its grace");
    let stops = r.stop_durations();
    assert_eq!(stops, [4_000], "one stop that waited the task's grace");
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_replica_after_a_stall_what_leaves_after_a_gap_is_fenced_not_graced() {
    let r = rig(|c, rt| {
        rt.set_stop_behaviour(None);
        c.place_spec("t1", checked_spec(3, 4_000), vec![]);
    });
    r.until_running("t1", Duration::from_secs(5)).await;
    // A gap in leader contact: the task may have moved elsewhere meanwhile.
    r.cluster
        .contact_age_ms
        .store(CONTACT_GAP_MS + 500, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.cluster.apply(&Command::DeleteTask {
        task_id: "t1".into(),
        at: 3,
    });
    r.until(Duration::from_secs(10), "container removed", |r| {
        r.runtime.containers().is_empty()
    })
    .await;
    let stops = r.stop_durations();
    assert_eq!(stops, [FENCE_GRACE_MS], "the fence's short grace");
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn driver_adopts_the_container_of_the_current_allocation() {
    let mut cid = String::new();
    let r = rig(|c, rt| {
        c.place("t1", "", vec![]);
        cid = leftover(rt, "orion-kept", "a-t1", 0);
    });
    r.until_running("t1", Duration::from_secs(5)).await;
    assert_eq!(
        r.cluster.task("t1").container_id.as_deref(),
        Some(cid.as_str())
    );
    assert_eq!(r.runtime.containers().len(), 1, "adopted, not duplicated");
    assert!(
        !r.runtime
            .calls()
            .iter()
            .any(|c| c.op == Op::Create && c.target != "orion-kept"),
        "nothing created"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn driver_reports_oom_and_restarts_after_the_back_off() {
    let r = rig(|c, _| c.place("t1", "", vec![]));
    r.until_running("t1", Duration::from_secs(5)).await;
    let cid = r.cluster.task("t1").container_id.expect("container");
    assert!(r.runtime.exit(&cid, 137, true));
    r.until(Duration::from_secs(5), "exit recorded", |r| {
        r.cluster.task("t1").restart_at.is_some()
    })
    .await;
    let t = r.cluster.task("t1");
    assert_eq!(t.exit_code, Some(137));
    assert!(
        r.cluster.reports.lock().unwrap().iter().any(|c| matches!(
            c,
            Command::Report {
                status: AllocStatus::Exited {
                    oom_killed: true,
                    ..
                },
                ..
            }
        )),
        "the OOM kill is reported"
    );
    let due = t.restart_at.expect("due");
    let waited_from = r.clock.now_ms();
    r.until_running("t1", Duration::from_secs(10)).await;
    let starts: Vec<u64> = r
        .runtime
        .calls()
        .iter()
        .filter(|c| c.op == Op::Start)
        .map(|c| c.began_ms)
        .collect();
    assert_eq!(starts.len(), 2, "one start, one restart: {starts:?}");
    assert!(
        starts[1] >= due,
        "restarted at {} before due {due}",
        starts[1]
    );
    assert!(due > waited_from, "the back-off made it wait");
    r.shutdown().await;
}

#[test]
fn passes_are_spaced_by_at_least_ten_times_their_planning() {
    use crate::driver::pass_gap;
    assert_eq!(pass_gap(Duration::ZERO), Duration::from_millis(20));
    assert_eq!(
        pass_gap(Duration::from_millis(1)),
        Duration::from_millis(20)
    );
    assert_eq!(
        pass_gap(Duration::from_millis(3)),
        Duration::from_millis(30)
    );
    // Regression (found in review): a process frozen mid-plan measured the freeze as planning
    // and would have held every pass back ten times as long; the gap is capped.
    assert_eq!(pass_gap(Duration::from_secs(5)), Duration::from_millis(500));
    assert_eq!(
        pass_gap(Duration::MAX),
        Duration::from_millis(500),
        "saturates, no overflow"
    );
}

/// Regression (issue 16, found by `perf` on a 64-client run): a pass planned over every task
/// ever placed on its node, so each new task cost the executor a pass over thousands of
/// finished ones, under the replica's read lock. A pass now plans over the tasks that hold
/// the node and those that still have a container, and keeps a finished task's container.
#[tokio::test(start_paused = true)]
async fn driver_plans_over_live_tasks_and_keeps_a_finished_tasks_container() {
    let never = r#", "restartPolicy": "never""#;
    let r = rig(|c, _| c.place("t1", never, vec![]));
    r.until_running("t1", Duration::from_secs(5)).await;
    // Twenty tasks whose image is absent: they fail at the start and never leave a container.
    for i in 0..20 {
        let id = format!("f{i:02}");
        r.cluster.place(&id, never, vec![]);
        r.cluster
            .state
            .lock()
            .unwrap()
            .task_mut(&id)
            .unwrap()
            .spec
            .image = "ghost/app:1".into();
    }
    r.cluster.changes.send_modify(|v| *v += 1);
    r.until(Duration::from_secs(5), "the absent images failed", |r| {
        (0..20).all(|i| r.state_of(&format!("f{i:02}")) == TaskState::Failed)
    })
    .await;
    // t1 exits for good: failed, no restart, its container left exited.
    let cid = r.cluster.task("t1").container_id.expect("container");
    assert!(r.runtime.exit(&cid, 1, false));
    r.until(Duration::from_secs(5), "t1 failed", |r| {
        r.state_of("t1") == TaskState::Failed
    })
    .await;
    assert_eq!(r.cluster.task("t1").restart_at, None);
    r.cluster.shares.lock().unwrap().clear();
    r.cluster.place("t2", never, vec![]);
    r.until_running("t2", Duration::from_secs(5)).await;
    let shares = r.cluster.shares.lock().unwrap().clone();
    let last = shares.last().expect("a pass ran after t2 was placed");
    assert_eq!(
        last,
        &vec!["t1".to_string(), "t2".to_string()],
        "the finished tasks without a container are not planned over: {shares:?}"
    );
    assert!(
        r.runtime.containers().iter().any(|c| c.id == cid),
        "the finished task's exited container is kept"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn driver_fails_a_task_whose_image_is_absent_naming_the_image() {
    let r = rig(|c, _| c.place("t1", "", vec![]));
    r.until_running("t1", Duration::from_secs(5)).await;
    r.cluster.place("t2", "", vec![]);
    // Same helper, another image: the spec is patched in the state for brevity.
    {
        let mut st = r.cluster.state.lock().unwrap();
        st.task_mut("t2").unwrap().spec.image = "ghost/app:1".into();
    }
    r.cluster.changes.send_modify(|v| *v += 1);
    r.until(Duration::from_secs(5), "t2 failed", |r| {
        r.state_of("t2") == TaskState::Failed
    })
    .await;
    let reason = r.cluster.task("t2").reason.unwrap_or_default();
    assert!(
        reason.contains("ghost/app:1"),
        "reason names the image: {reason}"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn serial_executor_slow_stops_do_not_delay_starts() {
    // A node back from the dead: 14 stale containers whose processes ignore SIGTERM (each
    // stop takes the whole grace), and 5 new allocations placed on it meanwhile.
    let r = rig(|c, rt| {
        rt.set_stop_behaviour(None);
        for i in 0..14 {
            leftover(
                rt,
                &format!("orion-stale-{i:02}"),
                &format!("a-stale-{i}"),
                0,
            );
        }
        rt.set_stop_behaviour(Some(Duration::from_millis(10)));
        for i in 0..5 {
            c.place(&format!("new{i}"), "", vec![]);
        }
    });
    let all_running = r
        .until(Duration::from_secs(20), "new allocations running", |r| {
            (0..5).all(|i| r.state_of(&format!("new{i}")) == TaskState::Running)
        })
        .await;
    let all_fenced = r
        .until(Duration::from_secs(20), "stale containers removed", |r| {
            r.runtime.containers().len() == 5
        })
        .await
        + all_running;
    println!(
        "serial executor: new allocations running after {all_running} ms, stale containers gone after {all_fenced} ms (simulated)"
    );
    // Starts do not queue behind the 14 one-second stops.
    assert!(
        all_running < FENCE_GRACE_MS,
        "starts waited {all_running} ms"
    );
    // Stops run concurrently: two rounds of the grace, not fourteen.
    assert!(
        all_fenced <= 3 * FENCE_GRACE_MS,
        "fencing took {all_fenced} ms"
    );
    let stops: Vec<_> = r
        .runtime
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Stop)
        .collect();
    assert_eq!(stops.len(), 14);
    assert!(
        stops
            .iter()
            .all(|c| c.ended_ms - c.began_ms <= FENCE_GRACE_MS),
        "grace bounded"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn serial_executor_start_waits_for_the_port_it_needs() {
    // The stale container holds host port 8080, which the new allocation asks for.
    let r = rig(|c, rt| {
        rt.set_stop_behaviour(None);
        leftover(rt, "orion-stale", "a-stale", 8080);
        c.place("t1", r#", "portBindings": {"80/tcp": "8080"}"#, vec![8080]);
    });
    r.until_running("t1", Duration::from_secs(10)).await;
    assert_eq!(r.cluster.task("t1").ports[0].host_port, 8080);
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_replica_after_a_stall_nothing_starts_until_caught_up() {
    let r = rig(|c, _| {
        c.ready.store(false, Ordering::SeqCst);
        c.place("t1", "", vec![]);
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        r.runtime.containers().is_empty(),
        "started before catching up"
    );
    r.cluster.ready.store(true, Ordering::SeqCst);
    r.until_running("t1", Duration::from_secs(5)).await;

    // A gap in leader contact: the replica is stale again until `ready` succeeds.
    r.cluster.ready.store(false, Ordering::SeqCst);
    r.cluster
        .contact_age_ms
        .store(CONTACT_GAP_MS + 500, Ordering::SeqCst);
    let calls_before = r.cluster.ready_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        r.cluster.ready_calls.load(Ordering::SeqCst) > calls_before,
        "the gap triggers a new catch-up check"
    );
    r.cluster.place("t2", "", vec![]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(
        r.state_of("t2"),
        TaskState::Running,
        "started on a stale replica"
    );
    r.cluster.contact_age_ms.store(0, Ordering::SeqCst);
    r.cluster.ready.store(true, Ordering::SeqCst);
    r.until_running("t2", Duration::from_secs(5)).await;
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_replica_after_a_stall_a_frozen_process_checks_again() {
    let r = rig(|c, _| c.place("t1", "", vec![]));
    r.until_running("t1", Duration::from_secs(5)).await;
    // The whole process stands still for three seconds (SIGSTOP): leader contact looks fine
    // afterwards, yet the replica may have missed anything meanwhile.
    r.cluster.ready.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(3)).await;
    r.cluster.place("t2", "", vec![]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(
        r.state_of("t2"),
        TaskState::Running,
        "started on a stale replica"
    );
    r.cluster.ready.store(true, Ordering::SeqCst);
    r.until_running("t2", Duration::from_secs(5)).await;
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_replica_after_a_stall_stop_after_disconnect_stops_the_container() {
    let r = rig(|c, _| {
        c.place("keep", "", vec![]);
        c.place("stop", r#", "stopAfterDisconnect": "30s""#, vec![]);
    });
    r.until(Duration::from_secs(5), "both running", |r| {
        r.runtime
            .containers()
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .count()
            == 2
    })
    .await;
    r.cluster.ready.store(false, Ordering::SeqCst);
    r.cluster.contact_age_ms.store(10_000, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(r.runtime.containers().len(), 2, "stopped before the limit");
    r.cluster.contact_age_ms.store(31_000, Ordering::SeqCst);
    r.until(
        Duration::from_secs(10),
        "the opted-in container stopped",
        |r| r.runtime.containers().len() == 1,
    )
    .await;
    let left = &r.runtime.containers()[0];
    assert_eq!(left.labels[LABEL_ALLOC], "a-keep");
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unbounded_docker_calls_a_hanging_runtime_does_not_wedge_the_driver() {
    let r = rig(|c, rt| {
        rt.set_fault(Op::Stop, Fault::Hang);
        leftover(rt, "orion-stale", "a-stale", 0);
        c.place("t1", "", vec![]);
    });
    // The stop hangs for ever: the start goes ahead, and the backstop ends the stop job so
    // the removal is retried and, once the engine behaves, done.
    r.until_running("t1", Duration::from_secs(5)).await;
    r.runtime.clear_fault(Op::Stop);
    r.until(Duration::from_secs(180), "stale removed", |r| {
        r.runtime.containers().len() == 1
    })
    .await;
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn driver_survives_failing_calls_and_repairs_on_the_next_pass() {
    let r = rig(|c, rt| {
        rt.set_fault(
            Op::List,
            Fault::Fail(orion_docker::RuntimeError::Unavailable(
                "engine restarting".into(),
            )),
        );
        c.place("t1", "", vec![]);
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(r.runtime.containers().is_empty());
    r.runtime.clear_fault(Op::List);
    r.until_running("t1", Duration::from_secs(10)).await;
    r.shutdown().await;
}

/// With the node's own network, a container joins it and resolves through the node's DNS
/// with the search domains of API.md: its stack's, then `orion`.
#[test]
fn containers_join_the_node_network_with_its_dns_and_search_domains() {
    let mut cfg = ExecutorConfig {
        node_id: NODE.into(),
        publish_ip: "127.0.0.1".into(),
        backoff: BackoffConfig::default(),
        network: Some(ContainerNetwork {
            name: "orion-n1".into(),
            dns: "10.201.7.1".into(),
        }),
    };
    let mut t = task("t1", TaskState::Scheduled, "");
    t.service = Some("db.shop".into());
    let spec = container_spec(&cfg, &t);
    assert_eq!(spec.network.as_deref(), Some("orion-n1"));
    assert_eq!(spec.dns, ["10.201.7.1"]);
    assert_eq!(spec.dns_search, ["shop.orion", "orion"]);
    t.service = Some("web".into());
    assert_eq!(container_spec(&cfg, &t).dns_search, ["orion"]);
    t.service = None;
    assert_eq!(container_spec(&cfg, &t).dns_search, ["orion"]);
    cfg.network = None;
    let spec = container_spec(&cfg, &t);
    assert!(spec.network.is_none() && spec.dns.is_empty() && spec.dns_search.is_empty());
}

/// The bug of issue 11: a new task without a health check was reported running, and so
/// joined DNS and every node's mesh, as soon as its container ran, which can be before the
/// server in it listens; the engine's userland proxy then accepted a connection for it and
/// closed it unanswered. A new run of a service task now waits for its ports.
#[test]
fn plan_reports_a_new_service_task_running_only_once_its_ports_accept() {
    use crate::health::Verdict::{GaveUp, Ready, Waiting};
    let service_task = |state: TaskState| {
        let mut t = task("t1", state, "");
        t.service = Some("web".into());
        t
    };
    let with_address = |ip: Option<&str>| {
        let mut c = container("c1", "a-t1", ContainerState::Running, Some(31000));
        c.ip_address = ip.map(str::to_string);
        c
    };
    let wait = |cid: &str, verdict| {
        BTreeMap::from([(
            "a-t1".to_string(),
            ReadyView {
                container_id: cid.to_string(),
                verdict,
            },
        )])
    };
    let mut checked = service_task(TaskState::Starting);
    checked.spec.healthcheck = checked_task("x", "c1", Health::None).spec.healthcheck;
    let mut running_here = service_task(TaskState::Running);
    running_here.container_id = Some("c1".into());
    let mut running_before = running_here.clone();
    running_before.container_id = Some("c0".into());
    /// (name, task, container address, readiness waits, actions).
    type Row<'a> = (
        &'a str,
        Task,
        Option<&'a str>,
        BTreeMap<AllocId, ReadyView>,
        &'a [&'a str],
    );
    let rows: Vec<Row> = vec![
        (
            "no wait seen yet: stays starting",
            service_task(TaskState::Starting),
            Some("10.201.0.2"),
            BTreeMap::new(),
            &[],
        ),
        (
            "its ports do not accept yet: stays starting",
            service_task(TaskState::Scheduled),
            Some("10.201.0.2"),
            wait("c1", Waiting),
            &[],
        ),
        (
            "its ports accept: reported running",
            service_task(TaskState::Starting),
            Some("10.201.0.2"),
            wait("c1", Ready),
            &["report t1 running c1 [31000]"],
        ),
        (
            "the wait gave up: reported running anyway",
            service_task(TaskState::Starting),
            Some("10.201.0.2"),
            wait("c1", GaveUp),
            &["report t1 running c1 [31000]"],
        ),
        (
            "a wait on another container says nothing of this one",
            service_task(TaskState::Starting),
            Some("10.201.0.2"),
            wait("c0", Ready),
            &[],
        ),
        (
            "a new container of a running task waits too",
            running_before,
            Some("10.201.0.2"),
            wait("c1", Waiting),
            &[],
        ),
        (
            "a task recorded running in it does not wait again",
            running_here,
            Some("10.201.0.2"),
            BTreeMap::new(),
            &["report t1 running c1 [31000]"],
        ),
        (
            "a one-off task has no endpoint: no wait",
            task("t1", TaskState::Starting, ""),
            Some("10.201.0.2"),
            BTreeMap::new(),
            &["report t1 running c1 [31000]"],
        ),
        (
            "a task with a health check: the check decides when it joins",
            checked,
            Some("10.201.0.2"),
            BTreeMap::new(),
            &["report t1 running c1 [31000]"],
        ),
        (
            "a container without an address of its own: no wait",
            service_task(TaskState::Starting),
            None,
            BTreeMap::new(),
            &["report t1 running c1 [31000]"],
        ),
    ];
    for (name, task, ip, readiness, want) in rows {
        check(Case {
            name,
            desired: vec![task],
            actual: vec![with_address(ip)],
            readiness,
            want,
            ..Case::default()
        });
    }
    // What is waited on: each TCP port at the container's own address, not the published one.
    let mut c = with_address(Some("10.201.0.2"));
    c.ports.push(BoundPort {
        container_port: 53,
        protocol: "udp".into(),
        host_ip: "127.0.0.1".into(),
        host_port: 31001,
    });
    c.ports.push(BoundPort {
        container_port: 443,
        protocol: "tcp".into(),
        host_ip: "127.0.0.1".into(),
        host_port: 31002,
    });
    let targets: Vec<String> =
        crate::plan::readiness_targets(&service_task(TaskState::Starting), &c)
            .iter()
            .map(|a| a.to_string())
            .collect();
    assert_eq!(targets, ["10.201.0.2:80", "10.201.0.2:443"]);
}

/// Found by the write benchmark: with thousands of tasks placed on a node and not yet started,
/// every pass copied each one into a `Start` action, and the driver then dropped all but
/// `STARTS_IN_FLIGHT_MAX` of them (a pass took 25 ms at 2,800 tasks). The plan now asks for
/// only the starts that can begin, in allocation order, counting those in flight.
#[test]
fn plan_asks_only_for_the_starts_that_can_begin() {
    assert_eq!(STARTS_IN_FLIGHT_MAX, 8, "the cases below are written for 8");
    let desired: Vec<Task> = (0..20)
        .map(|i| task(&format!("t{i:02}"), TaskState::Scheduled, ""))
        .collect();
    check(Case {
        name: "twenty to start, none in flight",
        desired: desired.clone(),
        want: &[
            "start t00",
            "start t01",
            "start t02",
            "start t03",
            "start t04",
            "start t05",
            "start t06",
            "start t07",
        ],
        ..Case::default()
    });
    // Three in flight (t00..t02): room for the rest of the bound, from t03 on.
    let in_flight = InFlight {
        starting: (0..3).map(|i| format!("a-t{i:02}")).collect(),
        ..InFlight::default()
    };
    check(Case {
        name: "three in flight",
        desired: desired.clone(),
        in_flight,
        want: &[
            "start t03",
            "start t04",
            "start t05",
            "start t06",
            "start t07",
        ],
        ..Case::default()
    });
    // The bound reached: nothing asked for, and fenced containers are still only stopped
    // (starts are pending).
    let full = InFlight {
        starting: (0..STARTS_IN_FLIGHT_MAX)
            .map(|i| format!("a-t{i:02}"))
            .collect(),
        ..InFlight::default()
    };
    check(Case {
        name: "bound reached",
        desired,
        actual: vec![container("c9", "a-gone", ContainerState::Running, None)],
        in_flight: full,
        want: &["stop c9 NotCurrent 1000ms"],
        ..Case::default()
    });
}
