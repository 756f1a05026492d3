//! Table tests of `decide` and `place_at_creation`. A `World` is built in a few chained calls
//! (recorded nodes, members, Raft voters and learners, tasks, time), and each family has one
//! `check` that runs a turn and compares its actions, one line each, with the expected lines.

use super::*;
use orion_types::api::parse_task_request;
use orion_types::env::SeededIds;
use orion_types::{Placement, Strategy};

/// The leader's clock in every world: far from zero so that "gone for 5 s" is easy to write.
const NOW: u64 = 1_000_000;

#[derive(Clone)]
struct World {
    state: ClusterState,
    members: BTreeMap<NodeId, Member>,
    raft: RaftView,
    settings: Settings,
    memory: ControllerMemory,
    epoch: u64,
    now: u64,
    /// Creation time of the next task: tasks are created in the order written.
    next_at: u64,
}

/// A leader `n1` (voter, alive, recorded up) that has led for a minute.
fn world() -> World {
    World {
        state: ClusterState::default(),
        members: BTreeMap::new(),
        raft: RaftView {
            is_leader: true,
            voters: BTreeSet::from(["n1".to_string()]),
            learners: BTreeSet::new(),
            membership_changing: false,
            applied_index: 1,
        },
        settings: Settings {
            node_id: "n1".into(),
            voter_grace_ms: 3_000,
            seed_config: None,
        },
        memory: ControllerMemory {
            leader_since: Some(NOW - 60_000),
            ..ControllerMemory::default()
        },
        epoch: 0,
        now: NOW,
        next_at: 1,
    }
    .node("n1", 1)
}

impl World {
    fn apply(mut self, cmd: Command) -> World {
        self.state.apply(&cmd);
        self.raft.applied_index += 1;
        self
    }
    /// Recorded up in the state, alive in the view and a Raft learner, generation `g`.
    fn node(mut self, id: &str, g: u64) -> World {
        if !self.raft.voters.contains(id) {
            self.raft.learners.insert(id.to_string());
        }
        self.recorded(id, g).member(id, g, MemberStatus::Alive)
    }
    /// Alive in the view only: new to the cluster.
    fn newcomer(self, id: &str, g: u64) -> World {
        self.member(id, g, MemberStatus::Alive)
    }
    /// Recorded up in the state only.
    fn recorded(self, id: &str, g: u64) -> World {
        self.apply(Command::UpsertNode {
            meta: Box::new(NodeMeta::fixture(id, g)),
            at: 1,
        })
    }
    fn member(mut self, id: &str, g: u64, status: MemberStatus) -> World {
        let m = Member {
            id: id.into(),
            status,
            meta: NodeMeta::fixture(id, g),
        };
        self.members.insert(id.into(), m);
        self.epoch += 1;
        self
    }
    fn no_member(mut self, id: &str) -> World {
        self.members.remove(id);
        self.epoch += 1;
        self
    }
    /// These are the voters (and no longer learners).
    fn voters(mut self, ids: &[&str]) -> World {
        self.raft.voters = ids.iter().map(|s| s.to_string()).collect();
        let voters = self.raft.voters.clone();
        self.raft.learners.retain(|l| !voters.contains(l));
        self
    }
    fn learners(mut self, ids: &[&str]) -> World {
        self.raft.learners = ids.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Declared dead by the view `ms` ago.
    fn dead_for(self, id: &str, ms: u64) -> World {
        let g = self.members.get(id).map_or(1, |m| m.meta.generation);
        self.member(id, g, MemberStatus::Dead).gone_for(id, ms)
    }
    fn gone_for(mut self, id: &str, ms: u64) -> World {
        self.memory.gone_since.insert(id.into(), self.now - ms);
        self
    }
    /// A joint-consensus change is under way.
    fn joint_change(mut self) -> World {
        self.raft.membership_changing = true;
        self
    }
    fn leader_for(mut self, ms: u64) -> World {
        self.memory.leader_since = Some(self.now - ms);
        self
    }
    fn config(self, config: ClusterConfig) -> World {
        self.apply(Command::SetClusterConfig {
            config,
            if_unset: false,
            at: 1,
        })
    }
    fn task(mut self, id: &str, json: &str) -> World {
        let at = self.next_at;
        self.next_at += 1;
        self.apply(Command::CreateTask {
            task_id: id.into(),
            spec: Box::new(parse_task_request(json.as_bytes()).expect("valid spec")),
            at,
        })
    }
    fn placed(self, id: &str, node: &str, at: u64) -> World {
        self.placed_ports(id, node, at, &[])
    }
    fn placed_ports(self, id: &str, node: &str, at: u64, host_ports: &[u16]) -> World {
        self.apply(Command::Place {
            placements: vec![Placement {
                task_id: id.into(),
                node: node.into(),
                allocation: format!("a-{id}"),
                host_ports: host_ports.to_vec(),
            }],
            unplaced: vec![],
            at,
        })
    }
    /// Stopped (deleted, replaced, scaled away) `ago` ms before now.
    fn stopped(self, id: &str, ago: u64) -> World {
        let at = self.now - ago;
        self.apply(Command::StopTasks {
            task_ids: vec![id.into()],
            reason: "stopped".into(),
            at,
        })
    }
    fn turn(&self) -> Outcome {
        let ids = SeededIds::new(1);
        decide(&Input {
            state: &self.state,
            members: &self.members,
            membership_epoch: self.epoch,
            raft: &self.raft,
            settings: &self.settings,
            now_ms: self.now,
            memory: &self.memory,
            ids: &ids,
        })
    }
}

/// One line per action, short enough to read in a table.
fn line(a: &Action) -> String {
    match a {
        Action::Propose(Command::UpsertNode { meta, .. }) => {
            format!("up {} g{}", meta.id, meta.generation)
        }
        Action::Propose(Command::NodeDown { node, reason, .. }) => {
            format!("down {node}: {reason}")
        }
        Action::Propose(Command::Place {
            placements,
            unplaced,
            ..
        }) => {
            let mut s = "place".to_string();
            for p in placements {
                s.push_str(&format!(" {}@{}", p.task_id, p.node));
                for hp in &p.host_ports {
                    s.push_str(&format!(":{hp}"));
                }
            }
            for (t, _) in unplaced {
                s.push_str(&format!(" {t}@-"));
            }
            s
        }
        Action::Propose(Command::Requeue { task_ids, .. }) => {
            format!("requeue {}", task_ids.join(" "))
        }
        Action::Propose(Command::SetClusterConfig {
            config, if_unset, ..
        }) => format!(
            "config {} voters={} seed={if_unset}",
            config.strategy.as_str(),
            config.voters
        ),
        Action::Propose(other) => format!("propose {}", other.kind()),
        Action::AddLearner { node, .. } => format!("learner {node}"),
        Action::ChangeVoters(v) => {
            format!("voters {}", v.iter().cloned().collect::<Vec<_>>().join(","))
        }
        Action::RemoveNode(n) => format!("remove {n}"),
    }
}

/// Every placement a turn proposes.
fn placements_of(o: &Outcome) -> impl Iterator<Item = &Placement> {
    o.actions
        .iter()
        .filter_map(|a| match a {
            Action::Propose(Command::Place { placements, .. }) => Some(placements),
            _ => None,
        })
        .flatten()
}

fn lines(o: &Outcome) -> Vec<String> {
    o.actions.iter().map(line).collect()
}

/// Runs one turn of `w` and compares its actions; returns the outcome for further checks.
fn check(name: &str, w: &World, want: &[&str]) -> Outcome {
    let o = w.turn();
    assert_eq!(lines(&o), want, "case {name}");
    // Same input, same output: the decision is deterministic.
    assert_eq!(w.turn(), o, "case {name}: not deterministic");
    o
}

#[test]
fn node_sync() {
    check("all in line", &world().node("n2", 1), &[]);
    check(
        "new member",
        &world()
            .member("n2", 1, MemberStatus::Alive)
            .learners(&["n2"]),
        &["up n2 g1"],
    );
    check(
        "a suspect member is live too",
        &world().member("n2", 1, MemberStatus::Suspect),
        &["up n2 g1"],
    );
    check(
        "restart with a newer generation",
        &world()
            .node("n2", 1)
            .member("n2", 2, MemberStatus::Alive)
            .learners(&["n2"]),
        &["up n2 g2"],
    );
    check(
        "an older generation is not recorded",
        &world()
            .node("n2", 2)
            .member("n2", 1, MemberStatus::Alive)
            .learners(&["n2"]),
        &[],
    );
    check(
        "dead",
        &world().node("n2", 1).member("n2", 1, MemberStatus::Dead),
        &["down n2: declared dead by gossip"],
    );
    check(
        "left",
        &world().node("n2", 1).member("n2", 1, MemberStatus::Left),
        &["down n2: left the cluster", "remove n2"],
    );
    check(
        "unseen, within the grace of a new leadership",
        &world().recorded("n2", 1).leader_for(5_000),
        &[],
    );
    check(
        "unseen past the grace",
        &world()
            .recorded("n2", 1)
            .leader_for(UNSEEN_NODE_GRACE_MS + 1),
        &["down n2: not seen in gossip"],
    );
    check(
        "back alive after being recorded down",
        &world()
            .node("n2", 1)
            .apply(Command::NodeDown {
                node: "n2".into(),
                generation: 1,
                reason: "dead".into(),
                at: 2,
            })
            .learners(&["n2"]),
        &["up n2 g1"],
    );
    let left = world()
        .node("n2", 1)
        .apply(Command::NodeLeave {
            node: "n2".into(),
            generation: 1,
            at: 2,
        })
        .learners(&["n2"]);
    check(
        "a node that left is not recorded again as the same generation",
        &left,
        &["remove n2"],
    );
    check(
        "a removed node is never recorded again, even as a newer generation",
        &world()
            .node("n2", 1)
            .apply(Command::RemoveNode {
                node: "n2".into(),
                at: 2,
            })
            .member("n2", 2, MemberStatus::Alive),
        &["remove n2"],
    );
    check(
        "a node that left returns as a newer generation",
        &left.member("n2", 2, MemberStatus::Alive),
        &["up n2 g2"],
    );
}

#[test]
fn voters() {
    let five = ClusterConfig {
        voters: 5,
        ..ClusterConfig::default()
    };
    let four = ClusterConfig {
        voters: 4,
        ..ClusterConfig::default()
    };
    // Three voters, n4 a live learner.
    let three = || {
        world()
            .node("n2", 1)
            .node("n3", 1)
            .voters(&["n1", "n2", "n3"])
    };
    let three_and_a_learner = || three().node("n4", 1);
    let cases: Vec<(&str, World, &[&str])> = vec![
        (
            "a new member joins as a learner",
            world().recorded("n2", 1).newcomer("n2", 1),
            &["learner n2"],
        ),
        (
            "two nodes keep one voter (odd count)",
            world().node("n2", 1),
            &[],
        ),
        (
            "1 -> 3 growth",
            world().node("n2", 1).node("n3", 1),
            &["voters n1,n2,n3"],
        ),
        (
            "no growth past the config's count",
            three_and_a_learner().node("n5", 1),
            &[],
        ),
        (
            "growth to the config's five",
            three_and_a_learner().node("n5", 1).config(five),
            &["voters n1,n2,n3,n4,n5"],
        ),
        (
            "a cap of 4 stays at 3 (odd)",
            three_and_a_learner().config(four),
            &[],
        ),
        (
            "a dead voter within the grace keeps its seat",
            three_and_a_learner().dead_for("n3", 1_000),
            &["down n3: declared dead by gossip"],
        ),
        (
            "replace a dead voter with a live learner",
            three_and_a_learner().dead_for("n3", 5_000),
            &["down n3: declared dead by gossip", "voters n1,n2,n4"],
        ),
        (
            "keep a crashed voter's seat with no learner",
            three().dead_for("n3", 5_000),
            &["down n3: declared dead by gossip"],
        ),
        (
            "a removed voter gives its seat up though gossip sees it alive",
            three().apply(Command::RemoveNode {
                node: "n3".into(),
                at: 2,
            }),
            &["voters n1,n2"],
        ),
        (
            "a removed node is not added back as a learner",
            world()
                .recorded("n2", 1)
                .newcomer("n2", 1)
                .apply(Command::RemoveNode {
                    node: "n2".into(),
                    at: 2,
                }),
            &[],
        ),
        (
            "a voter that left gives its seat up even with no learner",
            three().member("n3", 1, MemberStatus::Left),
            &["down n3: left the cluster", "voters n1,n2"],
        ),
        (
            "drop dead learners past the grace",
            three_and_a_learner().dead_for("n4", 5_000),
            &["down n4: declared dead by gossip", "remove n4"],
        ),
        (
            "keep a dead learner within the grace",
            three_and_a_learner().dead_for("n4", 1_000),
            &["down n4: declared dead by gossip"],
        ),
        (
            "a learner unseen by a new leader is dropped only after the unseen grace",
            three_and_a_learner()
                .no_member("n4")
                .leader_for(UNSEEN_NODE_GRACE_MS + 1),
            &["down n4: not seen in gossip", "remove n4"],
        ),
        (
            "nothing changes during a joint-consensus change",
            three_and_a_learner()
                .node("n5", 1)
                .dead_for("n3", 5_000)
                .joint_change(),
            &["down n3: declared dead by gossip"],
        ),
    ];
    for (name, w, want) in &cases {
        check(name, w, want);
    }
}

const SMALL: &str = r#"{"image":"x","memory":"100m"}"#;
const BIG: &str = r#"{"image":"x","memory":"600m"}"#;
const HUGE: &str = r#"{"image":"x","memory":"2g"}"#;

#[test]
fn placement() {
    check(
        "places pending tasks, first come first placed, spread",
        &world()
            .node("n2", 1)
            .learners(&["n2"])
            .task("t2", SMALL)
            .task("t1", SMALL),
        &["place t2@n1 t1@n2"],
    );
    check(
        "a task that fits nowhere does not block a later one",
        &world().task("t1", HUGE).task("t2", SMALL),
        &["place t2@n1 t1@-"],
    );
    let waiting = world().task("t1", HUGE);
    let o = check("the reason is proposed", &waiting, &["place t1@-"]);
    let Some(Action::Propose(cmd)) = o.actions.first() else {
        panic!("a proposal");
    };
    let told = waiting.clone().apply(cmd.clone());
    check("unplaced reason only when it changed", &told, &[]);
    check(
        "a node down or not alive takes nothing",
        &world()
            .node("n2", 1)
            .learners(&["n2"])
            .member("n2", 1, MemberStatus::Suspect)
            .task("t1", BIG)
            .task("t2", BIG),
        &["place t1@n1 t2@-"],
    );
    check(
        "respects the config's strategy",
        &world()
            .config(ClusterConfig {
                strategy: Strategy::Binpack,
                ..ClusterConfig::default()
            })
            .node("n2", 1)
            .learners(&["n2"])
            .task("t1", SMALL)
            .task("t2", SMALL),
        &["place t1@n1 t2@n1"],
    );
    check(
        "dynamic ports come from the config's range",
        &world()
            .config(ClusterConfig {
                dynamic_ports: orion_types::PortRange {
                    first: 30_000,
                    last: 30_001,
                },
                ..ClusterConfig::default()
            })
            .task("t1", r#"{"image":"x","portBindings":{"80":"0"}}"#),
        &["place t1@n1:30000"],
    );
    // A dynamic port avoids one whose task stopped so recently that its container may still
    // bind it (start-first replacements would wait for the old container's drain and stop).
    let range = |first, last| ClusterConfig {
        dynamic_ports: orion_types::PortRange { first, last },
        ..ClusterConfig::default()
    };
    const DYN: &str = r#"{"image":"x","portBindings":{"80":"0"}}"#;
    let freed = |ago| {
        world()
            .config(range(30_000, 30_001))
            .task("t0", DYN)
            .placed_ports("t0", "n1", 2, &[30_000])
            .stopped("t0", ago)
            .task("t1", DYN)
    };
    check(
        "a port freed 1 s ago is cooling: the next one",
        &freed(1_000),
        &["place t1@n1:30001"],
    );
    check(
        "cooling lasts 3 s plus twice the grace (2 s without a stopGracePeriod)",
        &freed(PORT_COOLING_BASE_MS + 4_000 - 1),
        &["place t1@n1:30001"],
    );
    check(
        "a port freed long ago is free again",
        &freed(PORT_COOLING_BASE_MS + 4_000),
        &["place t1@n1:30000"],
    );
    check(
        "a cooling port is still taken when the range has no other",
        &world()
            .config(range(30_000, 30_000))
            .task("t0", DYN)
            .placed_ports("t0", "n1", 2, &[30_000])
            .stopped("t0", 1_000)
            .task("t1", DYN),
        &["place t1@n1:30000"],
    );
    check(
        "cooling is per node",
        &world()
            .node("n2", 1)
            .learners(&["n2"])
            .config(range(30_000, 30_001))
            .task("t0", DYN)
            .placed_ports("t0", "n2", 2, &[30_000])
            .stopped("t0", 1_000)
            .task("t1", DYN),
        &["place t1@n1:30000"],
    );
    check(
        "tasks of a node just declared dead are placed in the same turn",
        &world()
            .node("n2", 1)
            .learners(&["n2"])
            .task("t1", SMALL)
            .placed("t1", "n2", 5)
            .member("n2", 1, MemberStatus::Dead),
        &["down n2: declared dead by gossip", "place t1@n1"],
    );
    // The batch is cut at the bound: tiny tasks, a big node.
    let mut many = world();
    for i in 0..PLACE_BATCH_MAX + 5 {
        many = many.task(&format!("t{i:05}"), r#"{"image":"x"}"#);
    }
    let o = many.turn();
    let sizes: Vec<usize> = o
        .actions
        .iter()
        .map(|a| match a {
            Action::Propose(Command::Place { placements, .. }) => placements.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sizes, [PLACE_BATCH_MAX, 5], "batch cut at the bound");
}

#[test]
fn placement_is_skipped_while_nothing_changed() {
    let w = world().task("t1", HUGE);
    let first = w.turn();
    let w = w.apply(match &first.actions[0] {
        Action::Propose(c) => c.clone(),
        other => panic!("{other:?}"),
    });
    let mut w = w;
    w.memory = first.memory;
    let idle = w.turn();
    assert_eq!(lines(&idle), Vec::<String>::new());
    assert_eq!(idle.memory.placement_idle, Some(mark_of(&w)));
    // A membership event makes placement look again (and here still find nothing new).
    let w = World {
        memory: idle.memory,
        epoch: w.epoch + 1,
        ..w
    };
    let again = w.turn();
    assert_eq!(lines(&again), Vec::<String>::new());
    assert_eq!(again.memory.placement_idle, Some(mark_of(&w)));
}

/// The idle mark a pass that placed nothing leaves on this world's state.
fn mark_of(w: &World) -> IdleMark {
    IdleMark {
        capacity: w.state.capacity_version(),
        epoch: w.epoch,
        waits_upto: w.state.wait_seq(),
    }
}

/// The reason for `ControllerMemory::placement_idle`: with thousands of tasks that fit
/// nowhere, every new task cost a scheduler pass over all of them (on a copy of the state)
/// on the leader. After a pass that placed nothing, a new task is placed alone; only room
/// made (a task that held some stops) brings back a pass over every waiting task.
#[test]
fn placement_after_an_idle_pass_looks_only_at_tasks_that_began_to_wait_since() {
    let w = world().task("t1", HUGE);
    let first = w.turn();
    assert_eq!(lines(&first), ["place t1@-"]);
    assert_eq!(
        first.memory.placement_idle,
        Some(mark_of(&w)),
        "reasons only: idle"
    );
    let mut w = w.apply(match &first.actions[0] {
        Action::Propose(c) => c.clone(),
        other => panic!("{other:?}"),
    });
    w.memory = first.memory;
    // t2 fits: placed alone (t1, which fits nowhere, is not looked at again).
    let mut w = w.task("t2", BIG);
    let o = w.turn();
    assert_eq!(lines(&o), ["place t2@n1"]);
    assert_eq!(
        crate::placement_work(&w.memory, &w.state, w.epoch),
        1,
        "one task to look at, not two"
    );
    // Placing t2 takes room and makes none: the mark still holds (a pass that placed a task
    // does not move it: its proposal may yet fail), and t3 (which would fit where t2 went) is
    // looked at alone and told why it waits. The bound counts t2's number too.
    w = w.apply(match &o.actions[0] {
        Action::Propose(c) => c.clone(),
        other => panic!("{other:?}"),
    });
    w.memory = o.memory;
    let mut w = w.task("t3", BIG);
    assert_eq!(crate::placement_work(&w.memory, &w.state, w.epoch), 2);
    assert_eq!(w.state.pending_count(), 2, "t1 and t3");
    let o = w.turn();
    assert_eq!(lines(&o), ["place t3@-"]);
    w.memory = o.memory;
    // t2 deleted: its room is released, so the next pass looks at every waiting task again
    // (t1 and t3) and places t3.
    let mut w = w.apply(Command::DeleteTask {
        task_id: "t2".into(),
        at: 50,
    });
    assert_eq!(crate::placement_work(&w.memory, &w.state, w.epoch), 2);
    assert_eq!(w.state.pending_count(), 2);
    let o = w.turn();
    assert!(
        lines(&o).iter().any(|l| l.contains("t3@n1")),
        "{:?}",
        lines(&o)
    );
    w.memory = o.memory;
}

/// The idle mark follows what can let a task be placed, not every applied entry: a recorded
/// reason (or any entry that frees nothing and adds no waiting task) keeps placement idle; a
/// new waiting task makes it look again and place that task.
#[test]
fn placement_stays_idle_across_entries_that_cannot_place_anything() {
    let w = world().task("t1", HUGE);
    let first = w.turn();
    let mut w = w.apply(match &first.actions[0] {
        Action::Propose(c) => c.clone(),
        other => panic!("{other:?}"),
    });
    w.memory = first.memory;
    let idle = w.turn();
    assert_eq!(lines(&idle), Vec::<String>::new());
    // An entry that changes no node, no holding and no waiting set: still idle.
    let mut w = w.apply(Command::DeleteTask {
        task_id: "missing".into(),
        at: 99,
    });
    w.memory = idle.memory.clone();
    assert_eq!(w.turn().memory.placement_idle, idle.memory.placement_idle);
    // A new task that fits: placement looks again and places it.
    let mut w = w.task("t2", SMALL);
    w.memory = idle.memory;
    let placed = w.turn();
    assert!(
        lines(&placed).iter().any(|l| l.contains("t2")),
        "{:?}",
        lines(&placed)
    );
}

#[test]
fn deadlines() {
    let scheduled_at = |ms_ago: u64| world().task("t1", SMALL).placed("t1", "n1", NOW - ms_ago);
    check("scheduled within the deadline", &scheduled_at(5_000), &[]);
    check(
        "scheduled past the deadline",
        &scheduled_at(SCHEDULED_DEADLINE_MS + 1),
        &["requeue t1"],
    );
    let starting = |ms_ago: u64| {
        world()
            .task("t1", SMALL)
            .placed("t1", "n1", 1)
            .apply(Command::Report {
                node: "n1".into(),
                task_id: "t1".into(),
                allocation: "a-t1".into(),
                status: orion_types::AllocStatus::Starting,
                backoff: Default::default(),
                at: NOW - ms_ago,
            })
    };
    check("starting for a while", &starting(60_000), &[]);
    check(
        "starting past its deadline",
        &starting(STARTING_DEADLINE_MS + 1),
        &["requeue t1"],
    );
    let mut scanned = scheduled_at(SCHEDULED_DEADLINE_MS + 1);
    scanned.memory.deadlines_checked = Some(NOW - 10);
    check("scanned less than a period ago", &scanned, &[]);
    scanned.memory.deadlines_checked = Some(NOW + 60_000);
    check(
        "a clock that went backwards scans at once",
        &scanned,
        &["requeue t1"],
    );
    let o = scheduled_at(1).turn();
    assert_eq!(o.memory.deadlines_checked, Some(NOW));
}

#[test]
fn config_seed_and_leadership() {
    let mut seeded = world();
    seeded.settings.seed_config = Some(ClusterConfig {
        strategy: Strategy::Binpack,
        ..ClusterConfig::default()
    });
    seeded = seeded.node("n2", 1).learners(&["n2"]);
    check(
        "the bootstrapping leader seeds its flags, and places with them at once",
        &seeded.clone().task("t1", SMALL).task("t2", SMALL),
        &["config binpack voters=3 seed=true", "place t1@n1 t2@n1"],
    );
    check(
        "never over a stored config",
        &seeded.config(ClusterConfig::default()),
        &[],
    );
    check("a node without flags to seed proposes none", &world(), &[]);
    let mut invalid = world();
    invalid.settings.seed_config = Some(ClusterConfig {
        voters: 0,
        ..ClusterConfig::default()
    });
    check(
        "an invalid seed is never proposed (apply would ignore it, again and again)",
        &invalid,
        &[],
    );
    let mut follower = world()
        .task("t1", SMALL)
        .member("n2", 1, MemberStatus::Dead);
    follower.raft.is_leader = false;
    let o = check("a follower does nothing", &follower, &[]);
    assert_eq!(o.memory.leader_since, None);
    assert_eq!(
        o.memory.gone_since.get("n2"),
        Some(&NOW),
        "gone times are kept by followers too"
    );
    let mut fresh = world();
    fresh.memory = ControllerMemory::default();
    let o = fresh.turn();
    assert_eq!(o.memory.leader_since, Some(NOW), "leadership starts now");
    let back = world()
        .member("n2", 1, MemberStatus::Alive)
        .gone_for("n2", 100);
    assert!(
        back.turn().memory.gone_since.is_empty(),
        "a member alive again is no longer gone"
    );
}

#[test]
fn place_at_creation() {
    /// The command a new task `spec` is created with, given the placements at creation still
    /// unapplied.
    fn create(w: &World, spec: &str, unapplied: &[super::Unapplied]) -> Option<Command> {
        let spec = parse_task_request(spec.as_bytes()).expect("valid spec");
        let ids = SeededIds::new(1);
        super::place_at_creation(&w.state, &w.members, "new", &spec, 7, &ids, unapplied)
    }
    /// Which node a new task `spec` is placed on at creation, or None.
    fn check_with(
        name: &str,
        w: &World,
        spec: &str,
        unapplied: &[super::Unapplied],
        want: Option<&str>,
    ) {
        let got = create(w, spec, unapplied);
        let node = got.as_ref().map(|c| match c {
            Command::CreatePlacedTask {
                placement, task_id, ..
            } => {
                assert_eq!(task_id, "new");
                assert_eq!(placement.task_id, "new");
                placement.node.clone()
            }
            other => panic!("{name}: unexpected {other:?}"),
        });
        assert_eq!(node.as_deref(), want, "case {name}");
    }
    fn check(name: &str, w: &World, spec: &str, want: Option<&str>) {
        check_with(name, w, spec, &[], want);
    }
    let unapplied = |task: &str, node: &str, memory: u64, ports: &[u16]| super::Unapplied {
        task_id: task.into(),
        node: node.into(),
        resources: orion_types::Resources {
            memory_bytes: memory,
            cpu_millis: 0,
        },
        ports: ports
            .iter()
            .map(|p| (orion_types::Protocol::Tcp, *p))
            .collect(),
    };
    let two = world().node("n2", 1).learners(&["n2"]);
    check("alone: placed", &two, SMALL, Some("n1"));
    check(
        "spread like the controller",
        &two.clone().task("t1", SMALL).placed("t1", "n1", 2),
        SMALL,
        Some("n2"),
    );
    check(
        "binpack from the config",
        &two.clone()
            .config(ClusterConfig {
                strategy: Strategy::Binpack,
                ..ClusterConfig::default()
            })
            .task("t1", SMALL)
            .placed("t1", "n1", 2),
        SMALL,
        Some("n1"),
    );
    check(
        "a task waiting goes first: no placement at creation",
        &two.clone().task("t1", HUGE),
        SMALL,
        None,
    );
    check("fits nowhere", &two, HUGE, None);
    check_with(
        "a create in flight counts: spread goes to the other node",
        &two,
        SMALL,
        &[unapplied("t1", "n1", 100 << 20, &[])],
        Some("n2"),
    );
    check_with(
        "a create in flight counts against the room",
        &world(),
        BIG,
        &[unapplied("t1", "n1", 600 << 20, &[])],
        None,
    );
    // Two creates in flight at once asking for a dynamic port get different ones.
    let dynamic = r#"{"image":"x","memory":"100m","portBindings":{"80/tcp":""}}"#;
    let port_of = |c: Option<Command>| match c {
        Some(Command::CreatePlacedTask { placement, .. }) => placement.host_ports[0],
        other => panic!("unexpected {other:?}"),
    };
    let first = port_of(create(&world(), dynamic, &[]));
    let second = port_of(create(
        &world(),
        dynamic,
        &[unapplied("t1", "n1", 100 << 20, &[first])],
    ));
    assert_ne!(
        first, second,
        "a dynamic port taken in flight is not given again"
    );
}

#[test]
fn a_decision_is_the_same_for_the_same_seed() {
    let w = world()
        .node("n2", 1)
        .node("n3", 1)
        .learners(&["n2", "n3"])
        .task("t1", SMALL)
        .task("t2", SMALL);
    let alloc_ids =
        |o: &Outcome| -> Vec<String> { placements_of(o).map(|p| p.allocation.clone()).collect() };
    let a = alloc_ids(&w.turn());
    assert_eq!(a.len(), 2);
    assert_eq!(a, alloc_ids(&w.turn()));
    assert_ne!(a[0], a[1]);
}

/// Placement from an idle mark is the full pass's placement: over random sequences of new
/// tasks of random sizes on two nodes, deletes (which make room) and turns, a turn with the
/// memory places exactly what a turn without it (a pass over every waiting task) places. The
/// full pass may also restate the reasons of tasks that waited before; nothing else differs.
#[test]
fn placement_from_an_idle_mark_equals_a_pass_over_every_waiting_task() {
    fn placements(o: &Outcome) -> Vec<(String, String, String)> {
        placements_of(o)
            .map(|p| (p.task_id.clone(), p.node.clone(), p.allocation.clone()))
            .collect()
    }
    const SIZES: [&str; 3] = [SMALL, BIG, HUGE];
    // Turns that placed a task while looking at fewer than every waiting task.
    let mut from_a_mark = 0;
    for seed in 0..200u64 {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut w = world().node("n2", 1).learners(&["n2"]);
        let mut created = 0u32;
        for _ in 0..40 {
            match next(4) {
                0 | 1 => {
                    created += 1;
                    w = w.task(&format!("t{created:02}"), SIZES[next(3) as usize]);
                }
                2 if created > 0 => {
                    let id = format!("t{:02}", 1 + next(u64::from(created)));
                    w = w.apply(Command::DeleteTask { task_id: id, at: 9 });
                }
                _ => {
                    let with_memory = w.turn();
                    if crate::placement_work(&w.memory, &w.state, w.epoch) < w.state.pending_count()
                        && !placements(&with_memory).is_empty()
                    {
                        from_a_mark += 1;
                    }
                    let mut full = w.clone();
                    full.memory.placement_idle = None;
                    assert_eq!(
                        placements(&with_memory),
                        placements(&full.turn()),
                        "seed {seed}"
                    );
                    for a in &with_memory.actions {
                        if let Action::Propose(c) = a {
                            w = w.apply(c.clone());
                        }
                    }
                    w.memory = with_memory.memory;
                }
            }
        }
    }
    assert!(
        from_a_mark > 50,
        "only {from_a_mark} turns placed from a mark"
    );
}
