//! Event derivation tests: each case applies commands to a real `ClusterState` and compares
//! the events with a one-line-per-event summary (`topic type key`), so a case is a few lines.

use super::*;
use orion_types::api::parse_task_request;
use orion_types::{AllocStatus, BackoffConfig, NodeMeta, Placement};

fn up(id: &str, generation: u64) -> Command {
    Command::UpsertNode {
        meta: Box::new(NodeMeta::fixture(id, generation)),
        at: 1,
    }
}

fn create(id: &str) -> Command {
    Command::CreateTask {
        task_id: id.into(),
        spec: Box::new(parse_task_request(br#"{"image": "x"}"#).expect("spec")),
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

fn report(id: &str, node: &str, alloc: &str, status: AllocStatus) -> Command {
    Command::Report {
        node: node.into(),
        task_id: id.into(),
        allocation: alloc.into(),
        status,
        backoff: BackoffConfig::default(),
        at: 30,
    }
}

fn running(c: &str) -> AllocStatus {
    AllocStatus::Running {
        container_id: c.into(),
        ports: vec![],
    }
}

/// Applies `cmds` in order (entry i has Raft index i+1) and returns every event as
/// `topic type key`, after checking the indexes grow.
fn check(cmds: &[Command], expected: &[&str]) {
    let mut state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    for (i, cmd) in cmds.iter().enumerate() {
        let (_, touched) = state.apply(cmd);
        log.applied(i as u64 + 1, Some(cmd), None, 0, &state, &touched);
    }
    let events = log.since(0, &[], usize::MAX).expect("all kept");
    for w in events.windows(2) {
        assert!(w[0].index < w[1].index, "indexes must grow: {w:?}");
    }
    let got: Vec<String> = events
        .iter()
        .map(|e| format!("{} {} {}", e.topic.as_str(), e.kind, e.key))
        .collect();
    assert_eq!(got, expected, "events: {events:#?}");
}

#[test]
fn a_task_lifecycle_in_order() {
    check(
        &[
            up("n1", 1),
            create("t1"),
            place("t1", "n1", "a1"),
            report("t1", "n1", "a1", AllocStatus::Starting),
            report("t1", "n1", "a1", running("c1")),
            report(
                "t1",
                "n1",
                "a1",
                AllocStatus::Exited {
                    container_id: "c1".into(),
                    exit_code: 3,
                    oom_killed: false,
                },
            ),
            Command::DeleteTask {
                task_id: "t1".into(),
                at: 40,
            },
        ],
        &[
            "node joined n1",
            "task created t1",
            "task placed t1",
            "task starting t1",
            "task running t1",
            "task exited t1",
            "task stopped t1",
        ],
    );
}

#[test]
fn a_node_death_loses_its_tasks_and_they_are_placed_again() {
    check(
        &[
            up("n1", 1),
            up("n2", 1),
            create("t1"),
            place("t1", "n1", "a1"),
            report("t1", "n1", "a1", running("c1")),
            Command::NodeDown {
                node: "n1".into(),
                generation: 1,
                reason: "declared dead by gossip".into(),
                at: 50,
            },
            place("t1", "n2", "a2"),
        ],
        &[
            "node joined n1",
            "node joined n2",
            "task created t1",
            "task placed t1",
            "task running t1",
            "node dead n1",
            "task lost t1",
            "task re-placed t1",
        ],
    );
}

#[test]
fn drain_undrain_leave_and_return() {
    check(
        &[
            up("n1", 1),
            Command::SetDrain {
                node: "n1".into(),
                drain: true,
                at: 5,
            },
            Command::SetDrain {
                node: "n1".into(),
                drain: false,
                at: 6,
            },
            Command::NodeLeave {
                node: "n1".into(),
                generation: 1,
                at: 7,
            },
            up("n1", 2),
        ],
        &[
            "node joined n1",
            "node drained n1",
            "node undrained n1",
            "node left n1",
            "node joined n1",
        ],
    );
}

#[test]
fn an_unchanged_report_makes_no_event() {
    check(
        &[
            up("n1", 1),
            create("t1"),
            place("t1", "n1", "a1"),
            report("t1", "n1", "a1", running("c1")),
            report("t1", "n1", "a1", running("c1")),
        ],
        &[
            "node joined n1",
            "task created t1",
            "task placed t1",
            "task running t1",
        ],
    );
}

#[test]
fn a_new_leaders_first_entry_names_the_leader() {
    let state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    log.applied(1, None, Some("n1"), 1_000, &state, &[]);
    let e = log.since(0, &[], 10).expect("kept");
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].topic, e[0].kind.as_str(), e[0].key.as_str()),
        (Topic::Node, "leader", "n1")
    );
    assert_eq!(e[0].at, "1970-01-01T00:00:01.000Z");
}

#[test]
fn resuming_from_the_last_index_plus_one_sees_no_gap_and_no_duplicate() {
    let mut state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    let cmds = [
        up("n1", 1),
        create("t1"),
        place("t1", "n1", "a1"),
        create("t2"),
    ];
    for (i, cmd) in cmds.iter().enumerate() {
        let (_, touched) = state.apply(cmd);
        log.applied(i as u64 + 1, Some(cmd), None, 0, &state, &touched);
    }
    let all = log.since(0, &[], usize::MAX).expect("kept");
    let first = log.since(0, &[], 2).expect("kept");
    let rest = log
        .since(first[1].index + 1, &[], usize::MAX)
        .expect("kept");
    let joined: Vec<Event> = first.into_iter().chain(rest).collect();
    assert_eq!(joined, all);
    assert_eq!(log.next_index(), all.last().expect("some").index + 1);
}

#[test]
fn topics_filter_the_stream() {
    let mut state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    for (i, cmd) in [up("n1", 1), create("t1")].iter().enumerate() {
        let (_, touched) = state.apply(cmd);
        log.applied(i as u64 + 1, Some(cmd), None, 0, &state, &touched);
    }
    let nodes = log.since(0, &[Topic::Node], 10).expect("kept");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].topic, Topic::Node);
}

#[test]
fn an_index_older_than_the_kept_history_is_gone() {
    let mut state = ClusterState::default();
    let log = EventLog::with_capacity(&state, 0, 3);
    for i in 0..5u64 {
        let cmd = create(&format!("t{i}"));
        let (_, touched) = state.apply(&cmd);
        log.applied(i + 1, Some(&cmd), None, 0, &state, &touched);
    }
    let kept = log.since(0, &[], 10);
    let Err(Gone { oldest }) = kept else {
        panic!("expected gone, got {kept:?}");
    };
    assert_eq!(oldest, 3 * EVENTS_PER_ENTRY_MAX);
    assert_eq!(log.since(oldest, &[], 10).expect("kept").len(), 3);
}

#[test]
fn a_restarted_node_holds_no_history_from_before_it_started() {
    let log = EventLog::new(&ClusterState::default(), 41);
    assert_eq!(
        log.since(5, &[], 10),
        Err(Gone {
            oldest: 42 * EVENTS_PER_ENTRY_MAX
        })
    );
    assert_eq!(log.since(42 * EVENTS_PER_ENTRY_MAX, &[], 10), Ok(vec![]));
    // A fresh cluster's node has everything from the start.
    let fresh = EventLog::new(&ClusterState::default(), 0);
    assert_eq!(fresh.since(0, &[], 10), Ok(vec![]));
    assert_eq!(fresh.since(1, &[], 10), Ok(vec![]));
}

#[test]
fn events_serialize_as_the_api_shows_them() {
    let e = Event {
        index: 7,
        at: "1970-01-01T00:00:00.000Z".into(),
        topic: Topic::Task,
        kind: "placed".into(),
        key: "t1".into(),
        payload: json!({"node": "n1"}).into(),
    };
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!(
        v,
        json!({"index": 7, "at": "1970-01-01T00:00:00.000Z", "topic": "task", "type": "placed", "key": "t1", "payload": {"node": "n1"}})
    );
}

#[test]
fn a_reset_at_index_zero_keeps_everything_from_the_start() {
    let log = EventLog::new(&ClusterState::default(), 0);
    log.reset(&ClusterState::default(), 0);
    assert_eq!(log.since(0, &[], 10), Ok(vec![]));
    log.reset(&ClusterState::default(), 9);
    assert_eq!(
        log.since(0, &[], 10),
        Err(Gone {
            oldest: 10 * EVENTS_PER_ENTRY_MAX
        })
    );
}

#[test]
fn tail_starts_at_the_nth_newest_event() {
    let mut state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    for (i, cmd) in [up("n1", 1), create("t1"), create("t2")].iter().enumerate() {
        let (_, touched) = state.apply(cmd);
        log.applied(i as u64 + 1, Some(cmd), None, 0, &state, &touched);
    }
    let all = log.since(0, &[], 10).expect("kept");
    assert_eq!(log.tail_start(1, &[]), all[2].index);
    assert_eq!(log.tail_start(2, &[Topic::Task]), all[1].index);
    assert_eq!(log.tail_start(99, &[]), all[0].index);
    assert_eq!(log.tail_start(0, &[]), log.next_index());
    assert_eq!(log.oldest(), all[0].index);
}

fn service(body: &str) -> Box<orion_types::ServiceSpec> {
    Box::new(orion_types::service::parse_service_request(body.as_bytes()).expect("service spec"))
}

#[test]
fn a_services_life_and_its_deployment() {
    check(
        &[
            Command::CreateService {
                spec: service(r#"{"name": "web", "image": "x", "replicas": 2}"#),
                at: 10,
            },
            Command::ScaleService {
                id: "web".into(),
                replicas: 3,
                at: 11,
            },
            Command::UpdateService {
                id: "web".into(),
                spec: service(r#"{"name": "web", "image": "y", "replicas": 3}"#),
                deployment_id: "d1".into(),
                at: 12,
            },
            Command::DeploymentProgress {
                id: "web".into(),
                deployment_id: "d1".into(),
                state: DeploymentState::Completed,
                updated: 3,
                failed: 0,
                message: "done".into(),
                at: 13,
            },
            Command::DeleteService {
                id: "web".into(),
                at: 14,
            },
        ],
        &[
            "service created web",
            "service scaled web",
            "service updated web",
            "deployment started web",
            "deployment completed web",
            "service deleted web",
        ],
    );
}

/// The commands of one batched entry come one by one with the entry's index (as the state
/// machine unrolls `Command::Batch`); their events continue one numbering, in order, with
/// no index given twice, and the next entry starts at its own base.
#[test]
fn commands_of_one_batched_entry_number_their_events_in_sequence() {
    let mut state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    let entry_5 = [
        up("n1", 1),
        create("t1"),
        create("t2"),
        place("t1", "n1", "a1"),
    ];
    for cmd in &entry_5 {
        let (_, touched) = state.apply(cmd);
        log.applied(5, Some(cmd), None, 0, &state, &touched);
    }
    let (_, touched) = state.apply(&create("t3"));
    log.applied(6, Some(&create("t3")), None, 0, &state, &touched);
    let events = log.since(0, &[], usize::MAX).expect("all kept");
    let indexes: Vec<u64> = events.iter().map(|e| e.index).collect();
    let base = 5 * EVENTS_PER_ENTRY_MAX;
    let in_entry_5: Vec<u64> = (0..indexes.len() as u64 - 1).map(|k| base + k).collect();
    assert_eq!(indexes[..indexes.len() - 1], in_entry_5[..], "{events:#?}");
    assert_eq!(indexes.last(), Some(&(6 * EVENTS_PER_ENTRY_MAX)));
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys[..3], ["n1", "t1", "t2"]);
}

/// A task event's payload, now written straight from the task, says what the `Value` map it
/// replaced said: the same fields, `null`s and values, in the same (alphabetical) order, and
/// `message`, `reason` and `exitCode` only when the task has them.
#[test]
fn a_task_events_payload_is_the_map_it_replaced() {
    let mut state = ClusterState::default();
    let log = EventLog::new(&state, 0);
    let exited = AllocStatus::Exited {
        container_id: "c1".into(),
        exit_code: 3,
        oom_killed: false,
    };
    let cmds = [
        up("n1", 1),
        create("t1"),
        place("t1", "n1", "a1"),
        report("t1", "n1", "a1", exited),
    ];
    for (i, cmd) in cmds.iter().enumerate() {
        let (_, touched) = state.apply(cmd);
        log.applied(i as u64 + 1, Some(cmd), None, 0, &state, &touched);
    }
    let events = log.since(0, &[Topic::Task], usize::MAX).expect("all kept");
    let created = &events[0];
    assert_eq!(created.kind, "created");
    assert_eq!(
        created.payload.json(),
        r#"{"allocation":null,"image":"x","message":"task accepted","name":null,"node":null,"reason":"waiting for the scheduler","restarts":0,"state":"pending"}"#
    );
    let last = events.last().expect("an event");
    let t = &state.tasks["t1"];
    let mut want = json!({
        "state": t.state.as_str(),
        "node": t.node,
        "allocation": t.allocation,
        "name": t.spec.name,
        "image": t.spec.image,
        "restarts": t.restarts,
        "message": t.events.last().map(|m| m.message.clone()),
        "exitCode": t.exit_code,
    });
    if let Some(r) = &t.reason {
        want["reason"] = json!(r);
    }
    assert_eq!(t.exit_code, Some(3), "{t:?}");
    let got: Value = serde_json::from_str(last.payload.json()).expect("JSON");
    assert_eq!(got, want);
    assert_eq!(last.payload.json(), want.to_string());
}
