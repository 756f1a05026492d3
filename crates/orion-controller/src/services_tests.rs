//! The services sub-decider, driven through a tiny world: the real `apply`, the decider, and
//! a stand-in for the scheduler and the executors (a task is placed on the least loaded node
//! its constraints allow, then runs; image `crash` exits at once, image `sick` never turns
//! healthy). Each case drives the world and compares one line per live task, `slot version
//! state node`, so adding a case is a few lines.

use crate::services::decide;
use orion_state::ClusterState;
use orion_types::env::SeededIds;
use orion_types::service::parse_service_request;
use orion_types::{
    AllocStatus, BackoffConfig, Command, Health, NodeMeta, Placement, Resources, TaskState,
};
use std::collections::BTreeMap;

struct World {
    state: ClusterState,
    now: u64,
    ids: SeededIds,
    /// Fewest running tasks of service `web` seen after any turn.
    min_running: usize,
}

const STEP_MS: u64 = 1_000;

impl World {
    fn new(nodes: &[&str]) -> World {
        let mut w = World {
            state: ClusterState::default(),
            now: 1_000_000,
            ids: SeededIds::new(7),
            min_running: usize::MAX,
        };
        for n in nodes {
            w.add_node(n);
        }
        w
    }

    fn apply(&mut self, cmd: Command) {
        self.state.apply(&cmd);
    }

    fn add_node(&mut self, id: &str) {
        self.apply(Command::UpsertNode {
            meta: Box::new(NodeMeta {
                id: id.to_string(),
                generation: 1,
                api_addr: String::new(),
                raft_addr: String::new(),
                gossip_addr: String::new(),
                publish_ip: "127.0.0.1".into(),
                capacity: Resources {
                    memory_bytes: 1 << 34,
                    cpu_millis: 64_000,
                },
                labels: BTreeMap::new(),
                version: "test".into(),
            }),
            at: self.now,
        });
    }

    fn service(&mut self, json: &str) {
        let spec = parse_service_request(json.as_bytes()).expect("valid service");
        let cmd = if self.state.services.contains_key(&spec.id()) {
            Command::UpdateService {
                id: spec.id(),
                spec: Box::new(spec),
                deployment_id: format!("d{}", self.now),
                at: self.now,
            }
        } else {
            Command::CreateService {
                spec: Box::new(spec),
                at: self.now,
            }
        };
        self.apply(cmd);
    }

    /// `rounds` turns of: the decider, then placement, then the executors; a second apart.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for cmd in decide(&self.state, self.now, &self.ids) {
                self.state.apply(&cmd);
            }
            // Counted before the new tasks are placed: a gap shows here.
            let running = self
                .state
                .tasks_of_service("web")
                .filter(|t| t.state == TaskState::Running && t.spec.image != "crash")
                .count();
            if self.state.services.contains_key("web") {
                self.min_running = self.min_running.min(running);
            }
            self.place();
            self.execute();
            self.now += STEP_MS;
        }
    }

    fn place(&mut self) {
        let mut pending: Vec<_> = self
            .state
            .tasks
            .values()
            .filter(|t| t.needs_placement())
            .cloned()
            .collect();
        // In slot order, so that the expected placements read naturally.
        pending.sort_by_key(|t| (t.slot, t.spec.name.clone()));
        for t in pending {
            let usage = self.state.usage();
            let fixed: Vec<_> = t
                .spec
                .ports
                .iter()
                .filter_map(|p| p.host_port.map(|h| (p.protocol, h)))
                .collect();
            let node = self
                .state
                .nodes
                .values()
                .filter(|n| n.status == orion_state::NodeStatus::Up && !n.draining)
                .filter(|n| {
                    let used = usage.get(&n.meta.id);
                    fixed
                        .iter()
                        .all(|p| used.is_none_or(|u| !u.ports.contains(p)))
                })
                .filter(|n| {
                    t.spec
                        .constraints
                        .iter()
                        .all(|c| c.matches(&n.meta.id, &n.meta.labels))
                })
                .min_by_key(|n| {
                    (
                        usage.get(&n.meta.id).map_or(0, |u| u.tasks),
                        n.meta.id.clone(),
                    )
                });
            if let Some(n) = node {
                let cmd = Command::Place {
                    placements: vec![Placement {
                        task_id: t.id.clone(),
                        node: n.meta.id.clone(),
                        allocation: format!("a-{}", t.id),
                        host_ports: t
                            .spec
                            .ports
                            .iter()
                            .map(|p| p.host_port.unwrap_or(0))
                            .collect(),
                    }],
                    unplaced: vec![],
                    at: self.now,
                };
                self.state.apply(&cmd);
            } else {
                self.state.apply(&Command::Place {
                    placements: vec![],
                    unplaced: vec![(t.id.clone(), "no node has the port free".into())],
                    at: self.now,
                });
            }
        }
    }

    fn execute(&mut self) {
        // Image `dies` runs for two seconds, then exits.
        let dying: Vec<_> = self
            .state
            .tasks
            .values()
            .filter(|t| t.spec.image == "dies" && t.state == TaskState::Running)
            .filter(|t| t.running_since.is_some_and(|r| self.now >= r + 2_000))
            .cloned()
            .collect();
        for t in dying {
            self.state.apply(&Command::Report {
                node: t.node.clone().unwrap_or_default(),
                task_id: t.id.clone(),
                allocation: t.allocation.clone().unwrap_or_default(),
                status: AllocStatus::Exited {
                    container_id: format!("c-{}", t.id),
                    exit_code: 2,
                    oom_killed: false,
                },
                backoff: BackoffConfig::default(),
                at: self.now,
            });
        }
        let placed: Vec<_> = self
            .state
            .tasks
            .values()
            .filter(|t| t.allocation.is_some() && t.state == TaskState::Scheduled)
            .cloned()
            .collect();
        for t in placed {
            let report = |status| Command::Report {
                node: t.node.clone().unwrap_or_default(),
                task_id: t.id.clone(),
                allocation: t.allocation.clone().unwrap_or_default(),
                status,
                backoff: BackoffConfig::default(),
                at: self.now,
            };
            let status = AllocStatus::Running {
                container_id: format!("c-{}", t.id),
                ports: vec![],
            };
            self.state.apply(&report(status));
            if t.spec.image == "crash" {
                self.state.apply(&report(AllocStatus::Exited {
                    container_id: format!("c-{}", t.id),
                    exit_code: 1,
                    oom_killed: false,
                }));
            } else if t.spec.healthcheck.is_some() && t.spec.image != "sick" {
                self.state.apply(&Command::ReportHealth {
                    node: t.node.clone().unwrap_or_default(),
                    task_id: t.id.clone(),
                    allocation: t.allocation.clone().unwrap_or_default(),
                    health: Health::Healthy,
                    output: None,
                    at: self.now,
                });
            }
        }
    }

    /// One line per live task of `web`: `slot version state node`, sorted.
    fn summary(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .state
            .tasks_of_service("web")
            .filter(|t| t.state != TaskState::Stopped)
            .map(|t| {
                let key = t
                    .slot
                    .map_or_else(|| t.node.clone().unwrap_or_default(), |s| format!("s{s}"));
                format!(
                    "{key} {} {} {}",
                    t.spec.image,
                    t.state.as_str(),
                    t.node.as_deref().unwrap_or("-")
                )
            })
            .collect();
        out.sort();
        out
    }

    fn deployment(&self) -> String {
        let svc = &self.state.services["web"];
        svc.deployment.as_ref().map_or("-".into(), |d| {
            format!(
                "{} {}/{} {}",
                d.state.as_str(),
                d.updated,
                d.total,
                d.message
            )
        })
    }
}

/// Compares the live tasks of `web` with `want`.
fn check(w: &World, want: &[&str]) {
    assert_eq!(w.summary(), want, "deployment: {}", w.deployment());
}

/// How many live tasks' summary lines hold `needle`.
fn count(w: &World, needle: &str) -> usize {
    w.summary().iter().filter(|l| l.contains(needle)).count()
}

/// Checks that the deployment's summary (`state updated/total message`) starts with `want`.
fn check_deployment(w: &World, want: &str) {
    let got = w.deployment();
    assert!(got.starts_with(want), "deployment: {got}, wanted {want}…");
}

/// Like `check`, without the nodes (where an update's new tasks land is the scheduler's
/// business).
fn check_versions(w: &World, want: &[&str]) {
    let got: Vec<String> = w
        .summary()
        .iter()
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l.clone(), |(head, _)| head.to_string())
        })
        .collect();
    assert_eq!(got, want, "deployment: {}", w.deployment());
}

const WEB: &str = r#"{"name":"web","image":"v1","replicas":3,"update":{"monitor":"2s"}}"#;

#[test]
fn scale_up_and_down_is_exact_and_removes_the_highest_slots() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(WEB);
    w.run(2);
    check(
        &w,
        &["s1 v1 running n1", "s2 v1 running n2", "s3 v1 running n3"],
    );
    w.service(&WEB.replace(r#""replicas":3"#, r#""replicas":5"#));
    w.run(2);
    check(
        &w,
        &[
            "s1 v1 running n1",
            "s2 v1 running n2",
            "s3 v1 running n3",
            "s4 v1 running n1",
            "s5 v1 running n2",
        ],
    );
    w.apply(Command::ScaleService {
        id: "web".into(),
        replicas: 2,
        at: w.now,
    });
    w.run(2);
    check(&w, &["s1 v1 running n1", "s2 v1 running n2"]);
    assert!(
        w.state.services["web"].deployment.is_none(),
        "a count is not a deployment"
    );
}

#[test]
fn a_lost_task_is_placed_again_and_the_count_holds() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(WEB);
    w.run(2);
    w.apply(Command::NodeDown {
        node: "n2".into(),
        generation: 1,
        reason: "dead".into(),
        at: w.now,
    });
    w.run(2);
    check(
        &w,
        &["s1 v1 running n1", "s2 v1 running n1", "s3 v1 running n3"],
    );
}

#[test]
fn a_global_service_follows_the_eligible_nodes() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(r#"{"name":"web","image":"v1","mode":"global"}"#);
    w.run(2);
    check(
        &w,
        &["n1 v1 running n1", "n2 v1 running n2", "n3 v1 running n3"],
    );
    w.add_node("n4");
    w.run(2);
    check(
        &w,
        &[
            "n1 v1 running n1",
            "n2 v1 running n2",
            "n3 v1 running n3",
            "n4 v1 running n4",
        ],
    );
    w.apply(Command::SetDrain {
        node: "n2".into(),
        drain: true,
        at: w.now,
    });
    w.run(2);
    check(
        &w,
        &["n1 v1 running n1", "n3 v1 running n3", "n4 v1 running n4"],
    );
    w.apply(Command::SetDrain {
        node: "n2".into(),
        drain: false,
        at: w.now,
    });
    w.run(2);
    assert_eq!(w.summary().len(), 4);
}

#[test]
fn a_start_first_update_never_drops_below_the_count_and_completes() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(WEB);
    w.run(2);
    w.min_running = usize::MAX;
    w.service(&WEB.replace(r#""image":"v1""#, r#""image":"v2""#));
    w.run(20);
    check_versions(&w, &["s1 v2 running", "s2 v2 running", "s3 v2 running"]);
    check_deployment(&w, "completed 3/3");
    assert_eq!(w.min_running, 3, "start-first keeps every replica up");
    assert_eq!(w.state.services["web"].version, 2);
}

#[test]
fn a_stop_first_update_goes_below_the_count_and_completes() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    let stop_first = r#"{"name":"web","image":"v1","replicas":3,"update":{"monitor":"2s","order":"stop-first","parallelism":3}}"#;
    w.service(stop_first);
    w.run(2);
    w.min_running = usize::MAX;
    w.service(&stop_first.replace(r#""image":"v1""#, r#""image":"v2""#));
    w.run(10);
    check_versions(&w, &["s1 v2 running", "s2 v2 running", "s3 v2 running"]);
    check_deployment(&w, "completed");
    assert_eq!(w.min_running, 0);
}

#[test]
fn parallelism_bounds_the_tasks_in_flight() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    let spec = r#"{"name":"web","image":"v1","replicas":4,"update":{"monitor":"0s","parallelism":2,"delay":"3s"}}"#;
    w.service(spec);
    w.run(2);
    w.service(&spec.replace(r#""image":"v1""#, r#""image":"v2""#));
    // Turn 1 starts two new tasks; they run; their old ones stop the next turn.
    w.run(2);
    let v2 = |w: &World| w.summary().iter().filter(|l| l.contains(" v2 ")).count();
    assert_eq!(v2(&w), 2, "{:?}", w.summary());
    // The delay holds the next batch back three seconds after the first one was ready.
    w.run(1);
    assert_eq!(v2(&w), 2, "{:?}", w.summary());
    w.run(6);
    assert_eq!(v2(&w), 4, "{:?}", w.summary());
    check_deployment(&w, "completed 4/4");
}

#[test]
fn an_update_to_a_crashing_version_rolls_back_by_itself() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(WEB);
    w.run(2);
    w.min_running = usize::MAX;
    w.service(&WEB.replace(r#""image":"v1""#, r#""image":"crash""#));
    w.run(10);
    check(
        &w,
        &["s1 v1 running n1", "s2 v1 running n2", "s3 v1 running n3"],
    );
    let d = w.deployment();
    assert!(d.starts_with("rolled-back"), "{d}");
    assert!(
        d.contains("rolled back: task") && d.contains("exited with code 1"),
        "the outcome says why: {d}"
    );
    let svc = &w.state.services["web"];
    let events: Vec<&str> = svc
        .deployment
        .as_ref()
        .map(|d| d.events.iter().map(|e| e.message.as_str()).collect())
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|m| m.contains("rolling back") && m.contains("exited")),
        "the reason is kept: {events:?}"
    );
    assert_eq!(w.min_running, 3, "the old version serves throughout");
    assert_eq!(svc.spec.task.image, "v1");
    assert_eq!(svc.version, 3, "the rollback is a new version");
}

#[test]
fn an_update_that_never_turns_healthy_rolls_back_after_its_allowance() {
    let mut w = World::new(&["n1"]);
    let checked = r#"{"name":"web","image":"v1","replicas":1,"ports":[{"target":80}],
        "healthcheck":{"http":"/","interval":"1s","timeout":"1s","retries":1}}"#;
    w.service(checked);
    w.run(2);
    check(&w, &["s1 v1 running n1"]);
    w.service(&checked.replace(r#""image":"v1""#, r#""image":"sick""#));
    // 60 s of grace plus (1 s + 1 s) x 2 of the check's own allowance.
    w.run(62);
    check_deployment(&w, "running");
    w.run(5);
    check_deployment(&w, "rolled-back");
    check(&w, &["s1 v1 running n1"]);
}

#[test]
fn the_pause_failure_action_stops_the_update_where_it_is() {
    let mut w = World::new(&["n1", "n2"]);
    let spec = r#"{"name":"web","image":"v1","replicas":2,"update":{"failureAction":"pause"}}"#;
    w.service(spec);
    w.run(2);
    w.service(&spec.replace(r#""image":"v1""#, r#""image":"crash""#));
    w.run(5);
    check_deployment(&w, "paused 0/2 paused: task");
    assert_eq!(count(&w, " v1 running"), 2, "{:?}", w.summary());
}

#[test]
fn a_tolerated_failure_ratio_lets_the_update_continue() {
    let mut w = World::new(&["n1", "n2"]);
    let spec = r#"{"name":"web","image":"v1","replicas":2,"update":{"failureAction":"continue","monitor":"0s"}}"#;
    w.service(spec);
    w.run(2);
    w.service(&spec.replace(r#""image":"v1""#, r#""image":"crash""#));
    w.run(6);
    assert!(
        w.deployment()
            .starts_with("completed 0/2 version 2 deployed with 2 failed"),
        "{}",
        w.deployment()
    );
}

#[test]
fn a_rollback_on_request_returns_to_the_previous_spec() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(WEB);
    w.run(2);
    w.service(&WEB.replace(r#""image":"v1""#, r#""image":"v2""#));
    w.run(20);
    w.apply(Command::RollbackService {
        id: "web".into(),
        deployment_id: "back".into(),
        reason: None,
        at: w.now,
    });
    w.run(20);
    check_versions(&w, &["s1 v1 running", "s2 v1 running", "s3 v1 running"]);
    check_deployment(&w, "rolled-back 3/3");
}

#[test]
fn max_per_node_leaves_a_task_waiting_rather_than_crowd_a_node() {
    let mut w = World::new(&["n1", "n2"]);
    w.service(r#"{"name":"web","image":"v1","replicas":3,"maxPerNode":1}"#);
    w.run(6);
    check(
        &w,
        &["s1 v1 running n1", "s2 v1 running n2", "s3 v1 pending -"],
    );
    w.add_node("n3");
    w.run(3);
    // The waiting task was created before n3 existed, so it excluded n1 and n2 only.
    assert_eq!(count(&w, "running"), 3, "{:?}", w.summary());
}

#[test]
fn deleting_a_service_stops_its_tasks_and_history_stays_bounded() {
    let mut w = World::new(&["n1"]);
    let spec = r#"{"name":"web","image":"v0","replicas":1,"update":{"monitor":"0s"}}"#;
    w.service(spec);
    w.run(2);
    for v in 1..10 {
        w.service(&spec.replace("v0", &format!("v{v}")));
        w.run(3);
    }
    let kept = w.state.tasks_of_service("web").count();
    assert_eq!(kept, 1 + orion_types::limits::SERVICE_TASK_HISTORY_MAX);
    w.apply(Command::DeleteService {
        id: "web".into(),
        at: w.now,
    });
    w.run(1);
    assert!(w.summary().is_empty());
}

#[test]
fn the_same_state_time_and_seed_give_the_same_commands() {
    let run = || {
        let mut w = World::new(&["n1", "n2"]);
        w.service(WEB);
        decide(&w.state, w.now, &SeededIds::new(3))
    };
    assert_eq!(run(), run());
    assert!(!run().is_empty());
}

#[test]
fn a_paused_or_finished_deployment_is_left_alone() {
    let mut w = World::new(&["n1"]);
    w.service(WEB);
    w.run(3);
    let before = w.state.clone();
    assert!(
        decide(&w.state, w.now, &SeededIds::new(1)).is_empty(),
        "steady state: nothing to do"
    );
    assert_eq!(w.state, before);
}

#[test]
fn a_new_leader_continues_an_update_from_the_replicated_state() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(WEB);
    w.run(2);
    w.service(&WEB.replace(r#""image":"v1""#, r#""image":"v2""#));
    w.run(2);
    check_deployment(&w, "running");
    // The state as another node loads it from a snapshot; the decider keeps no memory of its
    // own.
    w.state =
        serde_json::from_slice(&serde_json::to_vec(&w.state).expect("encode")).expect("decode");
    w.ids = SeededIds::new(99);
    w.run(20);
    check_versions(&w, &["s1 v2 running", "s2 v2 running", "s3 v2 running"]);
    check_deployment(&w, "completed 3/3");
}

/// Regression (`sh -c "exit 3"` reported running for two seconds before its exit): the old
/// task was stopped as soon as the new one ran, so the old version did not serve throughout.
#[test]
fn an_update_whose_tasks_die_after_starting_keeps_the_old_tasks_running() {
    // Its tasks die two seconds after starting: inside the five-second monitor window.
    let spec = WEB.replace(r#""monitor":"2s""#, r#""monitor":"5s""#);
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(&spec);
    w.run(2);
    let old_ids: Vec<String> = w.state.tasks.keys().cloned().collect();
    w.service(&spec.replace(r#""image":"v1""#, r#""image":"dies""#));
    w.run(10);
    check_deployment(&w, "rolled-back");
    for id in &old_ids {
        let t = &w.state.tasks[id];
        assert_eq!(t.state, TaskState::Running, "{id}: {:?}", t.events);
    }
    check(
        &w,
        &["s1 v1 running n1", "s2 v1 running n2", "s3 v1 running n3"],
    );
}

/// Regression: on one node with a fixed published port, start-first could never place the new
/// task beside the old one, and the update rolled back after its allowance. Now the old task
/// makes room, as stop-first would.
#[test]
fn start_first_without_room_makes_room_instead_of_failing() {
    let mut w = World::new(&["n1"]);
    let spec = r#"{"name":"web","image":"v1","replicas":1,"update":{"monitor":"1s"},
        "ports":[{"target":80,"published":8080}]}"#;
    w.service(spec);
    w.run(2);
    check(&w, &["s1 v1 running n1"]);
    w.service(&spec.replace(r#""image":"v1""#, r#""image":"v2""#));
    w.run(6);
    check(&w, &["s1 v2 running n1"]);
    check_deployment(&w, "completed 1/1");
}

/// A replicated service with a named volume: the first task chooses the node, the others
/// follow it there (not spread); when that node dies they wait rather than move away from
/// the volume.
#[test]
fn a_named_volume_keeps_every_replica_on_its_node_and_waits_when_it_dies() {
    let mut w = World::new(&["n1", "n2", "n3"]);
    w.service(
        r#"{"name":"web","image":"v1","replicas":3,
            "mounts":[{"source":"data","target":"/data"}]}"#,
    );
    w.run(8);
    check(
        &w,
        &["s1 v1 running n1", "s2 v1 running n1", "s3 v1 running n1"],
    );
    assert_eq!(w.state.services["web"].volume_node.as_deref(), Some("n1"));
    w.apply(Command::NodeDown {
        node: "n1".into(),
        generation: 1,
        reason: "dead".into(),
        at: w.now,
    });
    w.run(4);
    assert_eq!(count(&w, "running"), 0, "{:?}", w.summary());
    assert_eq!(w.state.services["web"].volume_node.as_deref(), Some("n1"));
}
