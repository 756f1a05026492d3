//! Apply tests: each case is a list of commands and the expected one-line summary of every task
//! afterwards, so adding a case is a few lines.

use super::*;
use orion_types::api::parse_task_request;
use orion_types::{Placement, TaskSpec};

fn spec(json: &str) -> Box<TaskSpec> {
    Box::new(parse_task_request(json.as_bytes()).expect("valid spec"))
}

/// The state as a snapshot carries it (how a restarted node gets it back).
fn json_round_trip(state: &ClusterState) -> ClusterState {
    serde_json::from_slice(&serde_json::to_vec(state).expect("encode")).expect("decode")
}

fn node(id: &str, generation: u64) -> Command {
    Command::UpsertNode {
        meta: Box::new(NodeMeta::fixture(id, generation)),
        at: 1,
    }
}

fn create(id: &str, json: &str) -> Command {
    Command::CreateTask {
        task_id: id.into(),
        spec: spec(json),
        at: 10,
    }
}

fn place(id: &str, node: &str, alloc: &str) -> Command {
    Command::Place {
        placements: vec![Placement {
            task_id: id.into(),
            node: node.into(),
            allocation: alloc.into(),
            host_ports: vec![],
        }],
        unplaced: vec![],
        at: 20,
    }
}

fn report(id: &str, node: &str, alloc: &str, status: AllocStatus, at: u64) -> Command {
    Command::Report {
        node: node.into(),
        task_id: id.into(),
        allocation: alloc.into(),
        status,
        // Ignored by apply, which uses the cluster's back-off: an absurd value shows it.
        backoff: BackoffConfig {
            base_ms: 7,
            max_ms: 7,
            reset_after_ms: 7,
        },
        at,
    }
}

fn running(cid: &str) -> AllocStatus {
    AllocStatus::Running {
        container_id: cid.into(),
        ports: vec![],
    }
}

fn exited(cid: &str, code: i64) -> AllocStatus {
    AllocStatus::Exited {
        container_id: cid.into(),
        exit_code: code,
        oom_killed: false,
    }
}

/// Applies `cmds` to a fresh state and compares each task's summary
/// `id state node alloc restarts restart_at exit` with `want`.
fn check(cmds: &[Command], want: &[&str]) -> ClusterState {
    let mut state = ClusterState::default();
    for c in cmds {
        state.apply(c);
    }
    let got: Vec<String> = state
        .tasks
        .values()
        .map(|t| {
            format!(
                "{} {} {} {} r{} {} {}",
                t.id,
                t.state.as_str(),
                t.node.as_deref().unwrap_or("-"),
                t.allocation.as_deref().unwrap_or("-"),
                t.restarts,
                t.restart_at.map_or("-".to_string(), |r| format!("at{r}")),
                t.exit_code.map_or("-".to_string(), |c| format!("x{c}")),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Every state survives a round trip through its snapshot's JSON.
    assert_eq!(json_round_trip(&state), state);
    state
}

const NEVER: &str = r#"{"image":"x","restartPolicy":"never"}"#;
const ONFAIL: &str = r#"{"image":"x","restartPolicy":"on-failure"}"#;

#[test]
fn create_place_run() {
    check(
        &[
            node("n1", 1),
            create("t1", NEVER),
            place("t1", "n1", "a1"),
            report("t1", "n1", "a1", running("c1"), 30),
        ],
        &["t1 running n1 a1 r0 - -"],
    );
}

#[test]
fn create_is_idempotent() {
    let s = check(
        &[create("t1", NEVER), create("t1", ONFAIL)],
        &["t1 pending - - r0 - -"],
    );
    assert_eq!(
        s.tasks["t1"].spec.restart_policy,
        orion_types::RestartPolicy::Never
    );
}

#[test]
fn place_refuses_unknown_down_or_draining_nodes_and_placed_tasks() {
    check(
        &[create("t1", NEVER), place("t1", "n9", "a1")],
        &["t1 pending - - r0 - -"],
    );
    check(
        &[
            node("n1", 1),
            create("t1", NEVER),
            Command::SetDrain {
                node: "n1".into(),
                drain: true,
                at: 2,
            },
            place("t1", "n1", "a1"),
        ],
        &["t1 pending - - r0 - -"],
    );
    check(
        &[
            node("n1", 1),
            node("n2", 1),
            create("t1", NEVER),
            place("t1", "n1", "a1"),
            place("t1", "n2", "a2"),
        ],
        &["t1 scheduled n1 a1 r0 - -"],
    );
}

#[test]
fn stale_reports_are_ignored() {
    let mut s = ClusterState::default();
    for c in [node("n1", 1), create("t1", NEVER), place("t1", "n1", "a1")] {
        s.apply(&c);
    }
    let (resp, touched) = s.apply(&report("t1", "n1", "old", running("c0"), 30));
    assert!(matches!(resp, Response::Ignored(_)));
    assert!(touched.is_empty());
    let (resp, _) = s.apply(&report("t1", "n2", "a1", running("c0"), 30));
    assert!(matches!(resp, Response::Ignored(_)));
}

#[test]
fn exits_follow_the_restart_policy() {
    let base = |p: &str| {
        vec![
            node("n1", 1),
            create("t1", p),
            place("t1", "n1", "a1"),
            report("t1", "n1", "a1", running("c1"), 30),
        ]
    };
    let mut never = base(NEVER);
    never.push(report("t1", "n1", "a1", exited("c1", 3), 40));
    check(&never, &["t1 failed n1 a1 r0 - x3"]);

    let mut onfail_ok = base(ONFAIL);
    onfail_ok.push(report("t1", "n1", "a1", exited("c1", 0), 40));
    check(&onfail_ok, &["t1 completed n1 a1 r0 - x0"]);

    // on-failure after exit 1: restart due after 1 s, then 2 s, then 4 s.
    let mut onfail = base(ONFAIL);
    onfail.push(report("t1", "n1", "a1", exited("c1", 1), 40));
    check(&onfail, &["t1 failed n1 a1 r1 at1040 x1"]);
    onfail.push(report("t1", "n1", "a1", running("c1"), 1100));
    onfail.push(report("t1", "n1", "a1", exited("c1", 1), 1200));
    check(&onfail, &["t1 failed n1 a1 r2 at3200 x1"]);
    onfail.push(report("t1", "n1", "a1", running("c1"), 3300));
    onfail.push(report("t1", "n1", "a1", exited("c1", 1), 3400));
    check(&onfail, &["t1 failed n1 a1 r3 at7400 x1"]);
    // Running for longer than reset_after resets the back-off to the base.
    onfail.push(report("t1", "n1", "a1", running("c1"), 8000));
    onfail.push(report("t1", "n1", "a1", exited("c1", 1), 100_000));
    check(&onfail, &["t1 failed n1 a1 r4 at101000 x1"]);

    let mut always = base(r#"{"image":"x"}"#);
    always.push(report("t1", "n1", "a1", exited("c1", 0), 40));
    check(&always, &["t1 completed n1 a1 r1 at1040 x0"]);
}

#[test]
fn oom_is_reported_as_such() {
    let s = check(
        &[
            node("n1", 1),
            create(
                "t1",
                r#"{"image":"x","restartPolicy":"never","memory":"8m"}"#,
            ),
            place("t1", "n1", "a1"),
            report(
                "t1",
                "n1",
                "a1",
                AllocStatus::Exited {
                    container_id: "c1".into(),
                    exit_code: 137,
                    oom_killed: true,
                },
                40,
            ),
        ],
        &["t1 failed n1 a1 r0 - x137"],
    );
    assert!(
        s.tasks["t1"]
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("out of memory")
    );
}

#[test]
fn node_down_loses_its_tasks_and_they_are_placed_again() {
    let cmds = vec![
        node("n1", 1),
        node("n2", 1),
        create("t1", NEVER),
        place("t1", "n1", "a1"),
        report("t1", "n1", "a1", running("c1"), 30),
        Command::NodeDown {
            node: "n1".into(),
            generation: 1,
            reason: "declared dead by gossip".into(),
            at: 50,
        },
    ];
    let s = check(&cmds, &["t1 lost n1 - r0 - -"]);
    assert_eq!(s.nodes["n1"].status, NodeStatus::Down);
    let mut more = cmds.clone();
    more.push(place("t1", "n2", "a2"));
    check(&more, &["t1 scheduled n2 a2 r1 - -"]);
    // A report from the dead node's old allocation changes nothing.
    more.push(report("t1", "n1", "a1", exited("c1", 137), 60));
    check(&more, &["t1 scheduled n2 a2 r1 - -"]);
    // The node comes back with a new generation: Up again; an old-generation NodeDown is ignored.
    more.push(node("n1", 2));
    more.push(Command::NodeDown {
        node: "n1".into(),
        generation: 1,
        reason: "late".into(),
        at: 70,
    });
    let s = check(&more, &["t1 scheduled n2 a2 r1 - -"]);
    assert_eq!(s.nodes["n1"].status, NodeStatus::Up);
}

#[test]
fn delete_stops_and_releases() {
    let s = check(
        &[
            node("n1", 1),
            create("t1", NEVER),
            place("t1", "n1", "a1"),
            Command::DeleteTask {
                task_id: "t1".into(),
                at: 40,
            },
        ],
        &["t1 stopped n1 - r0 - -"],
    );
    assert!(s.usage().is_empty());
    let mut s2 = ClusterState::default();
    assert!(matches!(
        s2.apply(&Command::DeleteTask {
            task_id: "nope".into(),
            at: 1
        })
        .0,
        Response::NotFound(_)
    ));
}

#[test]
fn drain_moves_tasks_back_to_pending() {
    check(
        &[
            node("n1", 1),
            create("t1", NEVER),
            place("t1", "n1", "a1"),
            Command::SetDrain {
                node: "n1".into(),
                drain: true,
                at: 40,
            },
        ],
        &["t1 pending n1 - r0 - -"],
    );
}

#[test]
fn requeue_only_touches_stuck_states() {
    check(
        &[
            node("n1", 1),
            create("t1", NEVER),
            create("t2", NEVER),
            place("t1", "n1", "a1"),
            place("t2", "n1", "a2"),
            report("t2", "n1", "a2", running("c2"), 30),
            Command::Requeue {
                task_ids: vec!["t1".into(), "t2".into()],
                reason: "no progress".into(),
                at: 40,
            },
        ],
        &["t1 pending n1 - r0 - -", "t2 running n1 a2 r0 - -"],
    );
}

#[test]
fn usage_counts_resources_and_ports() {
    let mut s = ClusterState::default();
    for c in [
        node("n1", 1),
        create(
            "t1",
            r#"{"image":"x","memory":"64m","cpu":0.5,"portBindings":{"80":"8080"}}"#,
        ),
        Command::Place {
            placements: vec![Placement {
                task_id: "t1".into(),
                node: "n1".into(),
                allocation: "a1".into(),
                host_ports: vec![8080],
            }],
            unplaced: vec![],
            at: 20,
        },
    ] {
        s.apply(&c);
    }
    let u = &s.usage()["n1"];
    assert_eq!(
        u.allocated,
        Resources {
            memory_bytes: 64 << 20,
            cpu_millis: 500
        }
    );
    assert!(u.ports.contains(&(Protocol::Tcp, 8080)));
    assert_eq!(u.tasks, 1);
}

#[test]
fn a_node_that_left_returns_only_as_a_new_generation() {
    let mut cmds = vec![
        node("n1", 1),
        node("n2", 1),
        create("t1", NEVER),
        place("t1", "n2", "a1"),
        Command::NodeLeave {
            node: "n2".into(),
            generation: 1,
            at: 30,
        },
    ];
    let s = check(&cmds, &["t1 lost n2 - r0 - -"]);
    assert!(s.nodes["n2"].left);
    // Gossip still seeing the old process alive must not bring it back.
    cmds.push(node("n2", 1));
    let s = check(&cmds, &["t1 lost n2 - r0 - -"]);
    assert_eq!(
        (s.nodes["n2"].status, s.nodes["n2"].left),
        (NodeStatus::Down, true)
    );
    cmds.push(node("n2", 2));
    let s = check(&cmds, &["t1 lost n2 - r0 - -"]);
    assert_eq!(
        (s.nodes["n2"].status, s.nodes["n2"].left),
        (NodeStatus::Up, false)
    );
}

fn create_placed(id: &str, json: &str, node: &str, alloc: &str, host_ports: Vec<u16>) -> Command {
    Command::CreatePlacedTask {
        task_id: id.into(),
        spec: spec(json),
        placement: Placement {
            task_id: id.into(),
            node: node.into(),
            allocation: alloc.into(),
            host_ports,
        },
        at: 10,
    }
}

#[test]
fn a_task_placed_at_creation_keeps_its_place_only_if_it_still_fits() {
    // Nodes have 1 GiB and 2 cores (see `node`).
    let big = r#"{"image":"x","memory":"600m","restartPolicy":"never"}"#;
    check(
        &[node("n1", 1), create_placed("t1", big, "n1", "a1", vec![])],
        &["t1 scheduled n1 a1 r0 - -"],
    );
    // Two proposals chosen against the same state: the second no longer fits and waits.
    check(
        &[
            node("n1", 1),
            create_placed("t1", big, "n1", "a1", vec![]),
            create_placed("t2", big, "n1", "a2", vec![]),
        ],
        &["t1 scheduled n1 a1 r0 - -", "t2 pending - - r0 - -"],
    );
    // The same for a host port.
    let web = r#"{"image":"x","portBindings":{"80":"8080"},"restartPolicy":"never"}"#;
    check(
        &[
            node("n1", 1),
            create_placed("t1", web, "n1", "a1", vec![8080]),
            create_placed("t2", web, "n1", "a2", vec![8080]),
        ],
        &["t1 scheduled n1 a1 r0 - -", "t2 pending - - r0 - -"],
    );
    // A node that went down meanwhile takes nothing.
    check(
        &[
            node("n1", 1),
            Command::NodeDown {
                node: "n1".into(),
                generation: 1,
                reason: "dead".into(),
                at: 5,
            },
            create_placed("t1", NEVER, "n1", "a1", vec![]),
        ],
        &["t1 pending - - r0 - -"],
    );
}

fn set_config(config: ClusterConfig, if_unset: bool) -> Command {
    Command::SetClusterConfig {
        config,
        if_unset,
        at: 5,
    }
}

/// Applies `cmds` and compares the stored config (and that it survives its rows).
fn check_config(cmds: &[Command], want: Option<ClusterConfig>) {
    let state = check(cmds, &[]);
    assert_eq!(state.config, want, "{cmds:?}");
}

#[test]
fn set_cluster_config_applies_validated_and_seeds_only_once() {
    let d = ClusterConfig::default();
    let binpack = ClusterConfig {
        strategy: orion_types::Strategy::Binpack,
        ..d
    };
    let five = ClusterConfig { voters: 5, ..d };
    check_config(&[], None);
    check_config(&[set_config(binpack, false)], Some(binpack));
    // A seed applies to a state without a config, never over one.
    check_config(&[set_config(binpack, true)], Some(binpack));
    check_config(
        &[set_config(five, false), set_config(binpack, true)],
        Some(five),
    );
    check_config(
        &[set_config(binpack, true), set_config(five, false)],
        Some(five),
    );
    // An invalid config never reaches the state, whoever proposed it.
    let zero_voters = ClusterConfig { voters: 0, ..d };
    check_config(&[set_config(zero_voters, false)], None);
    check_config(
        &[set_config(five, false), set_config(zero_voters, false)],
        Some(five),
    );
}

#[test]
fn report_uses_the_cluster_backoff_not_the_reporters() {
    let fast = ClusterConfig {
        backoff: BackoffConfig {
            base_ms: 200,
            max_ms: 400,
            reset_after_ms: 60_000,
        },
        ..ClusterConfig::default()
    };
    let mut cmds = vec![
        set_config(fast, false),
        node("n1", 1),
        create("t1", ONFAIL),
        place("t1", "n1", "a1"),
    ];
    // Each crash: running at `run`, exit 1 at `exit`; then the task as expected. The delay
    // doubles from the cluster's 200 ms and is capped at its 400 ms.
    let crashes = [
        (30, 40, "t1 failed n1 a1 r1 at240 x1"),
        (300, 400, "t1 failed n1 a1 r2 at800 x1"),
        (900, 1000, "t1 failed n1 a1 r3 at1400 x1"),
    ];
    for (run, exit, want) in crashes {
        cmds.push(report("t1", "n1", "a1", running("c1"), run));
        cmds.push(report("t1", "n1", "a1", exited("c1", 1), exit));
        check(&cmds, &[want]);
    }
}

#[test]
fn an_old_report_entry_without_backoff_still_decodes() {
    let json =
        r#"{"Report":{"node":"n1","task_id":"t1","allocation":"a1","status":"Starting","at":3}}"#;
    let cmd: Command = serde_json::from_str(json).expect("old report decodes");
    assert!(matches!(cmd, Command::Report { at: 3, .. }));
    // A snapshot from before the config existed loads with none.
    let old: ClusterState = serde_json::from_str(r#"{"nodes":{},"tasks":{}}"#).expect("decodes");
    assert_eq!(old.config, None);
}
mod services {
    //! Service commands: each case applies commands and compares a one-line summary of the
    //! service (`version state updated/total`) and of each of its tasks.

    use super::*;
    use orion_types::service::parse_service_request;
    use orion_types::{DeploymentState, Health, NewServiceTask, ServiceSpec};

    fn svc(json: &str) -> Box<ServiceSpec> {
        Box::new(parse_service_request(json.as_bytes()).expect("valid service"))
    }

    const WEB: &str = r#"{"name":"web","image":"x","replicas":2}"#;
    const WEB2: &str = r#"{"name":"web","image":"x:2","replicas":2}"#;

    fn create_svc(json: &str) -> Command {
        Command::CreateService {
            spec: svc(json),
            at: 5,
        }
    }

    fn update(json: &str, dep: &str, at: u64) -> Command {
        Command::UpdateService {
            id: "web".into(),
            spec: svc(json),
            deployment_id: dep.into(),
            at,
        }
    }

    fn new_task(id: &str, version: u64, slot: u32, json: &str) -> Command {
        let spec = svc(json);
        Command::CreateServiceTasks {
            tasks: vec![NewServiceTask {
                task_id: id.into(),
                service: spec.id(),
                version,
                slot: Some(slot),
                spec: Box::new(spec.task_spec(format!("web.{slot}"), None)),
            }],
            at: 15,
        }
    }

    /// Applies `cmds`, checks the last response's kind, and compares the summary of service
    /// `web` (or "-" when gone) and of its tasks.
    fn check(cmds: &[Command], last: &str, want_service: &str, want_tasks: &[&str]) {
        let mut state = ClusterState::default();
        let mut resp = Response::Ok;
        for c in cmds {
            resp = state.apply(c).0;
        }
        let kind = match &resp {
            Response::Ok => "ok",
            Response::Service(_) => "service",
            Response::Conflict(_) => "conflict",
            Response::Invalid(_) => "invalid",
            Response::NotFound(_) => "not-found",
            Response::Ignored(_) => "ignored",
            Response::Task(_) => "task",
            Response::Batch(_) => "batch",
        };
        assert_eq!(kind, last, "{resp:?}");
        let got = state.services.get("web").map_or("-".to_string(), |s| {
            let d = s.deployment.as_ref().map_or("-".to_string(), |d| {
                format!(
                    "{} {}->{} {}/{}",
                    d.state.as_str(),
                    d.from_version,
                    d.to_version,
                    d.updated,
                    d.total
                )
            });
            format!("v{} r{} {d}", s.version, s.spec.replicas)
        });
        assert_eq!(got, want_service);
        let tasks: Vec<String> = state
            .tasks_of_service("web")
            .map(|t| {
                format!(
                    "{} {} v{} s{} {}",
                    t.id,
                    t.state.as_str(),
                    t.version,
                    t.slot.unwrap_or(0),
                    t.health.as_str()
                )
            })
            .collect();
        assert_eq!(tasks, want_tasks);
        assert_eq!(json_round_trip(&state), state);
    }

    #[test]
    fn create_is_refused_when_the_id_exists() {
        check(&[create_svc(WEB)], "service", "v1 r2 -", &[]);
        check(
            &[create_svc(WEB), create_svc(WEB2)],
            "conflict",
            "v1 r2 -",
            &[],
        );
    }

    #[test]
    fn an_unchanged_put_changes_nothing_and_a_changed_one_deploys() {
        check(
            &[create_svc(WEB), update(WEB, "d1", 20)],
            "service",
            "v1 r2 -",
            &[],
        );
        check(
            &[create_svc(WEB), update(WEB2, "d1", 20)],
            "service",
            "v2 r2 running 1->2 0/2",
            &[],
        );
        // A change of count only is a new version without a deployment.
        check(
            &[
                create_svc(WEB),
                update(r#"{"name":"web","image":"x","replicas":3}"#, "d1", 20),
            ],
            "service",
            "v2 r3 -",
            &[],
        );
        check(
            &[
                create_svc(WEB),
                update(r#"{"name":"api","image":"x"}"#, "d1", 20),
            ],
            "invalid",
            "v1 r2 -",
            &[],
        );
    }

    #[test]
    fn scale_changes_the_count_not_the_tasks() {
        let scale = |n| Command::ScaleService {
            id: "web".into(),
            replicas: n,
            at: 30,
        };
        check(&[create_svc(WEB), scale(5)], "service", "v2 r5 -", &[]);
        check(&[create_svc(WEB), scale(2)], "service", "v1 r2 -", &[]);
        check(
            &[
                create_svc(r#"{"name":"web","image":"x","mode":"global"}"#),
                scale(2),
            ],
            "invalid",
            "v1 r0 -",
            &[],
        );
    }

    #[test]
    fn service_tasks_carry_service_version_slot_and_health() {
        let checked = r#"{"name":"web","image":"x","replicas":2,"ports":[{"target":80}],"healthcheck":{"http":"/"}}"#;
        check(
            &[create_svc(checked), new_task("t1", 1, 1, checked)],
            "ok",
            "v1 r2 -",
            &["t1 pending v1 s1 starting"],
        );
        // Stale proposals: an old version, a slot over the count.
        check(
            &[
                create_svc(WEB),
                update(WEB2, "d1", 20),
                new_task("t1", 1, 1, WEB),
                new_task("t2", 2, 3, WEB2),
                new_task("t3", 2, 2, WEB2),
            ],
            "ok",
            "v2 r2 running 1->2 0/2",
            &["t3 pending v2 s2 none"],
        );
    }

    #[test]
    fn delete_stops_the_tasks_then_removes_the_service() {
        check(
            &[
                create_svc(WEB),
                new_task("t1", 1, 1, WEB),
                Command::DeleteService {
                    id: "web".into(),
                    at: 40,
                },
            ],
            "service",
            "-",
            &["t1 stopped v1 s1 none"],
        );
        check(
            &[Command::DeleteService {
                id: "web".into(),
                at: 40,
            }],
            "not-found",
            "-",
            &[],
        );
    }

    #[test]
    fn rollback_returns_to_the_previous_spec_as_a_new_version() {
        let rollback = |reason: Option<&str>, dep: &str| Command::RollbackService {
            id: "web".into(),
            deployment_id: dep.into(),
            reason: reason.map(String::from),
            at: 50,
        };
        check(
            &[create_svc(WEB), rollback(None, "d9")],
            "invalid",
            "v1 r2 -",
            &[],
        );
        check(
            &[
                create_svc(WEB),
                update(WEB2, "d1", 20),
                rollback(None, "d2"),
            ],
            "service",
            "v3 r2 rolling-back 2->3 0/2",
            &[],
        );
        // Automatic: keeps the failed deployment's record, once.
        check(
            &[
                create_svc(WEB),
                update(WEB2, "d1", 20),
                rollback(Some("task exited"), "d1"),
            ],
            "service",
            "v3 r2 rolling-back 1->2 0/2",
            &[],
        );
        check(
            &[
                create_svc(WEB),
                update(WEB2, "d1", 20),
                rollback(Some("task exited"), "d1"),
                rollback(Some("again"), "d1"),
            ],
            "ignored",
            "v3 r2 rolling-back 1->2 0/2",
            &[],
        );
    }

    #[test]
    fn progress_applies_only_to_the_latest_deployment() {
        let progress = |dep: &str, state, updated| Command::DeploymentProgress {
            id: "web".into(),
            deployment_id: dep.into(),
            state,
            updated,
            failed: 0,
            message: "m".into(),
            at: 60,
        };
        check(
            &[
                create_svc(WEB),
                update(WEB2, "d1", 20),
                progress("d1", DeploymentState::Completed, 2),
            ],
            "ok",
            "v2 r2 completed 1->2 2/2",
            &[],
        );
        check(
            &[
                create_svc(WEB),
                update(WEB2, "d1", 20),
                progress("d0", DeploymentState::Completed, 2),
            ],
            "ignored",
            "v2 r2 running 1->2 0/2",
            &[],
        );
    }

    #[test]
    fn health_transitions_are_fenced_and_recorded_once() {
        let health = |alloc: &str, h| Command::ReportHealth {
            node: "n1".into(),
            task_id: "t1".into(),
            allocation: alloc.into(),
            health: h,
            output: Some("x".repeat(10_000)),
            at: 70,
        };
        let base = vec![
            node("n1", 1),
            create_svc(WEB),
            new_task("t1", 1, 1, WEB),
            place("t1", "n1", "a1"),
        ];
        let mut cmds = base.clone();
        cmds.push(health("a1", Health::Healthy));
        check(&cmds, "ok", "v1 r2 -", &["t1 scheduled v1 s1 healthy"]);
        cmds.push(health("a1", Health::Healthy));
        check(&cmds, "ignored", "v1 r2 -", &["t1 scheduled v1 s1 healthy"]);
        let mut stale = base;
        stale.push(health("a0", Health::Unhealthy));
        check(&stale, "ignored", "v1 r2 -", &["t1 scheduled v1 s1 none"]);
        let mut s = ClusterState::default();
        for c in &cmds {
            s.apply(c);
        }
        assert_eq!(
            s.tasks["t1"].health_output.as_ref().map(String::len),
            Some(limits_output())
        );
    }

    fn limits_output() -> usize {
        orion_types::limits::HEALTH_OUTPUT_BYTES_MAX
    }

    #[test]
    fn stop_and_forget_bound_the_history() {
        check(
            &[
                create_svc(WEB),
                new_task("t1", 1, 1, WEB),
                new_task("t2", 1, 2, WEB),
                Command::StopTasks {
                    task_ids: vec!["t1".into(), "t2".into()],
                    reason: "scaled down".into(),
                    at: 80,
                },
                Command::ForgetTasks {
                    task_ids: vec!["t1".into()],
                    at: 90,
                },
            ],
            "ok",
            "v1 r2 -",
            &["t2 stopped v1 s2 none"],
        );
    }

    /// VIPs: the lowest free address of the cluster's range at create, the same on every
    /// replica, freed on delete, kept through a snapshot; a full range refuses the create.
    #[test]
    fn vips_are_allocated_lowest_free_and_freed_on_delete() {
        use orion_types::VipRange;
        let named = |n: &str| create_svc(&format!(r#"{{"name":"{n}","image":"x"}}"#));
        let vip = |s: &ClusterState, id: &str| s.services[id].vip.map(|v| v.to_string());
        let mut state = ClusterState::default();
        for n in ["a", "b", "c"] {
            state.apply(&named(n));
        }
        assert_eq!(vip(&state, "a").as_deref(), Some("10.200.0.1"));
        assert_eq!(vip(&state, "c").as_deref(), Some("10.200.0.3"));
        state.apply(&Command::DeleteService {
            id: "b".into(),
            at: 9,
        });
        state.apply(&named("d"));
        assert_eq!(
            vip(&state, "d").as_deref(),
            Some("10.200.0.2"),
            "b's address is free again"
        );
        // A snapshot (the state's JSON) keeps them, and a replica applying the same log agrees.
        let back: ClusterState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(vip(&back, "d").as_deref(), Some("10.200.0.2"));
        // A range of two usable addresses: the third create is refused and creates nothing.
        let mut small = ClusterState::default();
        let config = ClusterConfig {
            vip_range: VipRange::parse("10.9.0.0/30").unwrap(),
            ..ClusterConfig::default()
        };
        small.apply(&set_config(config, false));
        small.apply(&named("a"));
        small.apply(&named("b"));
        let (resp, touched) = small.apply(&named("c"));
        assert!(
            matches!(resp, Response::Conflict(ref m) if m.contains("vipRange")),
            "{resp:?}"
        );
        assert!(touched.is_empty());
        assert!(!small.services.contains_key("c"));
        // A service stored before VIPs existed decodes without one.
        let mut v = serde_json::to_value(&state.services["a"]).unwrap();
        v.as_object_mut().unwrap().remove("vip");
        let old: orion_types::Service = serde_json::from_value(v).unwrap();
        assert_eq!(old.vip, None);
    }

    /// A replicated service with a named volume: its first placement chooses the node that
    /// holds the volume, kept in the service; the task is pinned there, and a placement of
    /// another task on another node is refused.
    #[test]
    fn named_volume_pins_the_service_to_its_first_node() {
        const VOL: &str = r#"{"name":"web","image":"x","replicas":2,
            "mounts":[{"source":"data","target":"/data"}]}"#;
        let mut state = ClusterState::default();
        for c in [
            node("n1", 1),
            node("n2", 1),
            create_svc(VOL),
            new_task("t1", 1, 1, VOL),
            new_task("t2", 1, 2, VOL),
            place("t1", "n2", "a1"),
            place("t2", "n1", "a2"),
        ] {
            state.apply(&c);
        }
        let svc = &state.services["web"];
        assert_eq!(svc.volume_node.as_deref(), Some("n2"));
        let t1 = &state.tasks["t1"];
        assert_eq!(
            orion_types::service::pinned_node(&t1.spec).as_deref(),
            Some("n2")
        );
        assert!(svc.spec.runs_same(&t1.spec), "the pin is no change of spec");
        assert!(state.tasks["t2"].node.is_none(), "another node is refused");
        state.apply(&place("t2", "n2", "a2"));
        assert_eq!(state.tasks["t2"].node.as_deref(), Some("n2"));
        // Without a volume nothing is pinned.
        let mut plain = ClusterState::default();
        for c in [
            node("n1", 1),
            create_svc(WEB),
            new_task("t1", 1, 1, WEB),
            place("t1", "n1", "a1"),
        ] {
            plain.apply(&c);
        }
        assert_eq!(plain.services["web"].volume_node, None);
    }
}

#[test]
fn tokens_are_created_once_revoked_and_kept_as_rows() {
    let token = |id: &str| orion_types::ApiToken {
        id: id.to_string(),
        name: "ci".to_string(),
        role: orion_types::Role::ReadOnly,
        hash: "ab".repeat(32),
        created_at: 1,
    };
    let mut s = ClusterState::default();
    let create = Command::CreateToken {
        token: token("t1"),
        at: 1,
    };
    assert_eq!(s.apply(&create).0, Response::Ok);
    assert!(matches!(s.apply(&create).0, Response::Conflict(_)));
    // The snapshot's JSON round-trips, so a restart keeps the tokens.
    assert_eq!(json_round_trip(&s), s);
    let revoke = Command::RevokeToken {
        id: "t1".to_string(),
        at: 2,
    };
    let (resp, touched) = s.apply(&revoke);
    assert_eq!(resp, Response::Ok);
    assert_eq!(touched, vec![Key::Token("t1".to_string())]);
    assert!(s.tokens.is_empty());
    assert!(matches!(s.apply(&revoke).0, Response::NotFound(_)));
}

#[test]
fn the_cluster_ca_is_recorded_once_and_kept_as_a_row() {
    let ca = |fp: &str| orion_types::ClusterCa {
        cert_pem: "-----BEGIN CERTIFICATE-----".to_string(),
        sealed_key: "00".repeat(40),
        fingerprint: fp.to_string(),
    };
    let mut s = ClusterState::default();
    let first = Command::SetClusterCa {
        ca: ca("sha256:aa"),
        at: 1,
    };
    assert_eq!(s.apply(&first), (Response::Ok, vec![Key::Ca]));
    let second = Command::SetClusterCa {
        ca: ca("sha256:bb"),
        at: 2,
    };
    assert!(matches!(s.apply(&second).0, Response::Ignored(_)));
    assert_eq!(
        s.ca.as_ref().map(|c| c.fingerprint.as_str()),
        Some("sha256:aa")
    );
    assert_eq!(json_round_trip(&s), s);
}

#[test]
fn a_rotation_keeps_the_old_ca_trusted_and_survives_a_reload() {
    let ca = |fp: &str| orion_types::ClusterCa {
        cert_pem: "-----BEGIN CERTIFICATE-----".to_string(),
        sealed_key: "00".repeat(40),
        fingerprint: fp.to_string(),
    };
    let mut s = ClusterState::default();
    let rotate = |fp: &str| Command::RotateClusterCa { ca: ca(fp), at: 3 };
    assert!(
        matches!(s.apply(&rotate("sha256:bb")).0, Response::Invalid(_)),
        "no CA to rotate on an insecure cluster"
    );
    s.apply(&Command::SetClusterCa {
        ca: ca("sha256:aa"),
        at: 1,
    });
    assert_eq!(
        s.apply(&rotate("sha256:bb")),
        (Response::Ok, vec![Key::Ca, Key::PreviousCa])
    );
    assert!(matches!(
        s.apply(&rotate("sha256:bb")).0,
        Response::Ignored(_)
    ));
    assert_eq!(
        s.ca.as_ref().map(|c| c.fingerprint.as_str()),
        Some("sha256:bb")
    );
    assert_eq!(
        s.previous_ca.as_ref().map(|c| c.fingerprint.as_str()),
        Some("sha256:aa")
    );
    // The gossip key: the first rotation replaces the derived key (no previous record).
    let key = |id: u8| Command::RotateGossipKey {
        key: orion_types::GossipKeyRecord {
            id,
            sealed_key: "ab".repeat(30),
            since: 5,
        },
        at: 5,
    };
    assert_eq!(s.apply(&key(2)).0, Response::Ok);
    assert_eq!(s.previous_gossip_key, None);
    assert!(matches!(s.apply(&key(2)).0, Response::Ignored(_)));
    assert_eq!(s.apply(&key(3)).0, Response::Ok);
    assert_eq!(s.previous_gossip_key.as_ref().map(|k| k.id), Some(2));
    assert_eq!(json_round_trip(&s), s);
}

#[test]
fn a_removed_node_loses_its_tasks_joins_the_revocation_list_and_is_never_recorded_again() {
    let s = check(
        &[
            node("n1", 1),
            node("n2", 1),
            create("t1", r#"{"image":"i","memory":"16m"}"#),
            place("t1", "n2", "a1"),
            Command::RemoveNode {
                node: "n2".into(),
                at: 9,
            },
        ],
        &["t1 lost n2 - r0 - -"],
    );
    assert!(!s.nodes.contains_key("n2"));
    assert_eq!(s.revoked_nodes.get("n2"), Some(&9));
    assert!(s.tasks["t1"].needs_placement(), "{:?}", s.tasks["t1"]);
    let mut s = s;
    assert!(matches!(s.apply(&node("n2", 5)).0, Response::Ignored(_)));
    assert!(!s.nodes.contains_key("n2"));
    assert!(matches!(
        s.apply(&Command::RemoveNode {
            node: "n2".into(),
            at: 10
        })
        .0,
        Response::Ignored(_)
    ));
    assert!(matches!(
        s.apply(&Command::RemoveNode {
            node: "ghost".into(),
            at: 10
        })
        .0,
        Response::NotFound(_)
    ));
    assert_eq!(json_round_trip(&s), s);
}

/// Node `n1`, task `t1` placed on it and `t2` waiting.
fn node_with_two_tasks() -> ClusterState {
    let mut state = ClusterState::default();
    for c in [
        node("n1", 1),
        create("t1", NEVER),
        create("t2", ONFAIL),
        place("t1", "n1", "a1"),
    ] {
        state.apply(&c);
    }
    state
}

#[test]
fn a_copy_for_encoding_shares_tasks_encodes_the_same_and_keeps_its_values_when_tasks_change() {
    let mut state = node_with_two_tasks();
    let copy = state.copy_for_encoding();
    assert!(Arc::ptr_eq(copy.task("t1").unwrap(), &state.tasks["t1"]));
    let before = serde_json::to_vec(&state).expect("encode");
    assert_eq!(serde_json::to_vec(&copy).expect("encode"), before);
    // The copy decodes to the state, indexes rebuilt.
    let decoded: ClusterState = serde_json::from_slice(&before).expect("decode");
    assert_eq!(decoded, state);
    assert_eq!(decoded.tasks_on("n1").count(), 1);

    // Changing the state afterwards copies the changed task out; the copy keeps the old one.
    state.apply(&report("t1", "n1", "a1", running("c1"), 30));
    state.apply(&place("t2", "n1", "a2"));
    assert_eq!(state.tasks["t1"].state, TaskState::Running);
    assert_eq!(copy.task("t1").unwrap().state, TaskState::Scheduled);
    assert_eq!(copy.task("t2").unwrap().node, None);
    assert!(!Arc::ptr_eq(copy.task("t1").unwrap(), &state.tasks["t1"]));
    assert_eq!(serde_json::to_vec(&copy).expect("encode"), before);
}

#[test]
fn a_copy_written_with_its_tasks_json_supplied_is_the_copy_serde_writes() {
    let mut state = node_with_two_tasks();
    state.apply(&set_config(ClusterConfig::default(), false));
    // Every field after `tasks` holds something, so each is checked in its place.
    state.revoked_nodes.insert("gone".into(), 7);
    let copy = state.copy_for_encoding();
    let serde = serde_json::to_vec(&copy).expect("encode");
    assert_eq!(serde, serde_json::to_vec(&state).expect("encode"));

    let mut asked = Vec::new();
    let mut out = b"prefix".to_vec();
    copy.write_json(&mut out, |tasks, out| {
        for (i, t) in tasks.iter().enumerate() {
            asked.push(t.id.clone());
            if i > 0 {
                out.push(b',');
            }
            StateCopy::write_task_entry(t, out)?;
        }
        Ok::<(), serde_json::Error>(())
    })
    .expect("write");
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(out[6..], serde[..]);
    assert_eq!(asked, ["t1", "t2"]);
    assert_eq!(copy.tasks().len(), 2);

    // No tasks at all.
    let empty = ClusterState::default().copy_for_encoding();
    let mut out = Vec::new();
    empty
        .write_json(&mut out, |tasks, _| {
            assert!(tasks.is_empty());
            Ok::<(), serde_json::Error>(())
        })
        .expect("write");
    assert_eq!(out, serde_json::to_vec(&empty).expect("encode"));
}

#[test]
fn a_create_or_delete_answers_with_the_states_own_task() {
    let mut state = ClusterState::default();
    state.apply(&node("n1", 1));
    let shared = |state: &ClusterState, response: Response, id: &str| match response {
        Response::Task(t) => assert!(Arc::ptr_eq(&t, &state.tasks[id]), "{id}: a copy"),
        other => panic!("{id}: {other:?}"),
    };
    let (r, _) = state.apply(&create("t1", NEVER));
    shared(&state, r, "t1");
    // Placed in the same command: the answer is the placed task.
    let (r, _) = state.apply(&create_placed("t2", NEVER, "n1", "a2", vec![]));
    assert_eq!(state.tasks["t2"].node.as_deref(), Some("n1"));
    shared(&state, r, "t2");
    // A retried create answers the task as it is.
    let (r, _) = state.apply(&create("t1", NEVER));
    shared(&state, r, "t1");
    let (r, _) = state.apply(&Command::DeleteTask {
        task_id: "t2".into(),
        at: 20,
    });
    assert_eq!(state.tasks["t2"].state, TaskState::Stopped);
    shared(&state, r, "t2");
}

/// The executor's share is read through the index's references to the tasks: they must follow
/// each task through changes made in place (`Arc::make_mut` moves a task that has weak
/// references), through copies (while a snapshot shares the task), and through a repeated
/// report that changes nothing.
#[test]
fn the_executor_share_follows_tasks_through_moves_and_copies() {
    fn follows(state: &ClusterState) {
        let share = state.executor_share("n1", &[]);
        assert_eq!(share.len(), 2);
        for t in &share {
            assert!(
                Arc::ptr_eq(t, &state.tasks[&t.id]),
                "{} is the state's own",
                t.id
            );
        }
        // Reached through the references, not by the look-up that backs them up.
        for (id, holder) in state.index.holding_on("n1") {
            let task = holder.task().expect("the reference upgrades");
            assert!(
                Arc::ptr_eq(&task, &state.tasks[id]),
                "{id}'s reference follows it"
            );
        }
    }
    let mut state = node_with_two_tasks();
    state.apply(&place("t2", "n1", "a2"));
    follows(&state);
    state.apply(&report("t1", "n1", "a1", running("c1"), 30));
    follows(&state);
    let copy = state.copy_for_encoding();
    state.apply(&report("t2", "n1", "a2", running("c2"), 31));
    follows(&state);
    // The same report again changes nothing; the task may move all the same.
    let (answer, _) = state.apply(&report("t2", "n1", "a2", running("c2"), 32));
    assert!(matches!(answer, Response::Ignored(_)), "{answer:?}");
    follows(&state);
    drop(copy);
    state.apply(&report("t1", "n1", "a1", running("c1"), 33));
    follows(&state);
}
