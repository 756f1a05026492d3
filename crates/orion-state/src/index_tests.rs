//! Property tests of the task indexes: after every command of a random sequence (nodes coming
//! and going, tasks created, placed, reported, deleted, requeued, some in batches), the
//! indexed answers equal full scans; and a state decoded from its JSON (a snapshot) or loaded
//! from its rows indexes the same.

use super::*;
use orion_types::api::parse_task_request;
use proptest::prelude::*;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn task_id(i: u8) -> String {
    format!("t{i}")
}

fn spec(mem_mib: u64, port: Option<u16>) -> Box<orion_types::TaskSpec> {
    let ports = port.map_or(String::new(), |p| {
        format!(r#","portBindings":{{"80":"{p}"}}"#)
    });
    let json = format!(r#"{{"image":"x","memory":"{}m"{ports}}}"#, mem_mib.max(6));
    Box::new(parse_task_request(json.as_bytes()).expect("spec"))
}

fn command() -> impl Strategy<Value = Command> {
    let node = (0..NODES.len()).prop_map(|i| NODES[i].to_string());
    let id = (0u8..12).prop_map(task_id);
    let port = prop::option::of(prop_oneof![Just(8080u16), Just(8081u16)]);
    prop_oneof![
        (node.clone(), 1u64..4).prop_map(|(n, g)| Command::UpsertNode {
            meta: Box::new(NodeMeta::fixture(&n, g)),
            at: 1,
        }),
        (id.clone(), 0u64..700, port.clone()).prop_map(|(id, m, p)| Command::CreateTask {
            task_id: id,
            spec: spec(m, p),
            at: 2,
        }),
        // Placed at creation: indexed once, as placed (or pending if it no longer fits).
        (id.clone(), 0u64..700, node.clone(), 0u8..3, port.clone()).prop_map(|(id, m, n, a, p)| {
            Command::CreatePlacedTask {
                task_id: id.clone(),
                spec: spec(m, p),
                placement: Placement {
                    task_id: id,
                    node: n,
                    allocation: format!("a{a}"),
                    host_ports: p.into_iter().collect(),
                },
                at: 2,
            }
        }),
        (id.clone(), node.clone(), 0u8..3, port.clone()).prop_map(|(id, n, a, p)| {
            Command::Place {
                placements: vec![Placement {
                    task_id: id,
                    node: n,
                    allocation: format!("a{a}"),
                    host_ports: p.into_iter().collect(),
                }],
                unplaced: vec![],
                at: 3,
            }
        }),
        (id.clone(), node.clone(), 0u8..3, 0u8..4).prop_map(|(id, n, a, s)| {
            let status = match s {
                0 => AllocStatus::Starting,
                1 => AllocStatus::Running {
                    container_id: "c".into(),
                    ports: vec![],
                },
                2 => AllocStatus::Exited {
                    container_id: "c".into(),
                    exit_code: 1,
                    oom_killed: false,
                },
                _ => AllocStatus::Failed {
                    reason: "no image".into(),
                },
            };
            Command::Report {
                node: n,
                task_id: id,
                allocation: format!("a{a}"),
                status,
                backoff: BackoffConfig::default(),
                at: 4,
            }
        }),
        id.clone()
            .prop_map(|id| Command::DeleteTask { task_id: id, at: 5 }),
        (node.clone(), 1u64..4).prop_map(|(n, g)| Command::NodeDown {
            node: n,
            generation: g,
            reason: "gone".into(),
            at: 6,
        }),
        id.clone().prop_map(|id| Command::Requeue {
            task_ids: vec![id],
            reason: "late".into(),
            at: 7,
        }),
        prop::collection::vec(id.clone(), 1..4).prop_map(|ids| Command::ForgetTasks {
            task_ids: ids,
            at: 8,
        }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    // Some commands grouped into batches, as the proposer groups them.
    prop::collection::vec((command(), prop::collection::vec(command(), 0..3)), 1..60).prop_map(
        |v| {
            v.into_iter()
                .map(|(first, more)| {
                    if more.is_empty() {
                        first
                    } else {
                        let mut commands = vec![first];
                        commands.extend(more);
                        Command::Batch { commands }
                    }
                })
                .collect()
        },
    )
}

/// The indexed answers against full scans of the tasks.
fn check_index(s: &ClusterState) {
    for n in NODES {
        let indexed: Vec<&str> = s.tasks_on(n).map(|t| t.id.as_str()).collect();
        let scanned: Vec<&str> = s
            .tasks
            .values()
            .filter(|t| t.allocation.is_some() && t.node.as_deref() == Some(n))
            .map(|t| t.id.as_str())
            .collect();
        assert_eq!(indexed, scanned, "tasks on {n}");
        // The executor's share: the holding tasks, plus those named by containers that are
        // still placed here (a name of a task placed elsewhere, or unknown, adds nothing).
        let named = ["t0", "t3", "nope"];
        let mut share = s.executor_share(n, &named);
        ClusterState::order_share(&mut share);
        let share: Vec<String> = share.iter().map(|t| t.id.clone()).collect();
        // Each holder's reference that still upgrades is the task's current value (one left
        // behind by a move without a change no longer upgrades, or points at a copy of the
        // same value; the share then looks the task up).
        for (id, holder) in s.index.holding_on(n) {
            if let Some(task) = holder.task() {
                assert_eq!(*task, *s.tasks[id], "holder of {id} follows its task");
            }
        }
        let mut scanned: Vec<&Task> = s
            .tasks
            .values()
            .filter(|t| t.allocation.is_some() && t.node.as_deref() == Some(n))
            .filter(|t| t.holds_resources() || named.contains(&t.id.as_str()))
            .map(|t| &**t)
            .collect();
        // In allocation order, as `order_share` puts it.
        scanned.sort_by(|a, b| (&a.allocation, &a.id).cmp(&(&b.allocation, &b.id)));
        let scanned: Vec<String> = scanned.iter().map(|t| t.id.clone()).collect();
        assert_eq!(share, scanned, "executor share of {n}");
    }
    let pending: Vec<&str> = s.pending_tasks().map(|t| t.id.as_str()).collect();
    let scanned: Vec<&str> = s
        .tasks
        .values()
        .filter(|t| t.needs_placement())
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(pending, scanned, "pending");
    assert_eq!(s.has_pending(), !scanned.is_empty());
    assert_eq!(s.pending_count(), scanned.len());
    // The wait order holds exactly the waiting tasks.
    let mut by_wait: Vec<&str> = s.waiting_after(0).map(|t| t.id.as_str()).collect();
    by_wait.sort_unstable();
    assert_eq!(by_wait, scanned, "wait order");
    assert_eq!(s.usage(), s.usage_scan(), "usage");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn indexes_equal_full_scans_after_every_command(cmds in commands()) {
        let mut s = ClusterState::default();
        for (i, c) in cmds.iter().enumerate() {
            // Every other command applies while something else shares every task (as a
            // snapshot's copy or an executor's share does): a change then puts a new `Arc` in
            // place of the task, where otherwise `Arc::make_mut` moves it; the holders' references
            // must follow both (`check_index`).
            let shared: Vec<Arc<Task>> = if i % 2 == 0 {
                s.tasks.values().cloned().collect()
            } else {
                Vec::new()
            };
            let before: Vec<(u64, Vec<Task>)> = NODES
                .iter()
                .map(|n| (s.share_version(n), s.tasks_on(n).cloned().collect()))
                .collect();
            let (capacity, seq) = (s.capacity_version(), s.wait_seq());
            let waiting: Vec<String> = s.pending_tasks().map(|t| t.id.clone()).collect();
            s.apply(c);
            drop(shared);
            check_index(&s);
            prop_assert!(s.wait_seq() >= seq, "wait numbers only grow");
            // While the capacity version stays, every task that waits now either waited
            // before or began after `seq`: a pass from an idle mark misses none.
            if s.capacity_version() == capacity {
                let after: Vec<&str> = s.waiting_after(seq).map(|t| t.id.as_str()).collect();
                for t in s.pending_tasks() {
                    prop_assert!(
                        waiting.contains(&t.id) || after.contains(&t.id.as_str()),
                        "{} waits, did not before, and is not after {}",
                        t.id,
                        seq
                    );
                }
            }
            // An executor that saw the same share version would skip its pass: the share
            // must then be unchanged.
            for (n, (version, tasks)) in NODES.iter().zip(before) {
                if s.share_version(n) == version {
                    let now: Vec<Task> = s.tasks_on(n).cloned().collect();
                    prop_assert_eq!(now, tasks, "share of {} changed, its version did not", n);
                }
            }
        }
        // A snapshot's JSON decodes to the same indexes.
        let decoded: ClusterState =
            serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        check_index(&decoded);
        prop_assert_eq!(&decoded, &s);
    }
}
