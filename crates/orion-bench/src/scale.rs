//! Scale of the control plane, in process: the leader's controller (`orion_controller::decide`,
//! the agent's own pure decision function) and the replicated state (`orion_state`) with N
//! nodes and T tasks. Commands are applied as Raft would apply them, one after the other, and
//! serialized as the Raft log stores them (JSON), so the bytes every replica must receive are
//! counted. Then one node dies and its tasks are placed again. No network, no Docker: this
//! measures the decision and state path, and the log volume that full replication implies.

use crate::BoxError;
use crate::gossip::bench_meta;
use clap::Args;
use orion_controller::{
    Action, ControllerMemory, Input, Member, MemberStatus, RaftView, Settings, decide,
};
use orion_state::ClusterState;
use orion_types::api::parse_task_request;
use orion_types::env::SeededIds;
use orion_types::{AllocStatus, Command, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Nodes in the cluster
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Tasks to place
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Controller turns allowed before giving up
    #[arg(long, default_value_t = 10_000)]
    turns_max: usize,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The state, the log it was built from, and what the leader's controller remembers.
struct Leader {
    state: ClusterState,
    memory: ControllerMemory,
    applied: u64,
    log_bytes: u64,
    log_entries: u64,
}

impl Leader {
    fn apply(&mut self, cmd: &Command) -> Result<(), BoxError> {
        self.log_bytes += serde_json::to_vec(cmd)?.len() as u64;
        self.log_entries += 1;
        self.applied += 1;
        self.state.apply(cmd);
        Ok(())
    }

    /// Controller turns until one proposes nothing; every placed allocation is reported
    /// running by its node, as executors do. Returns the turns taken.
    fn settle(
        &mut self,
        members: &BTreeMap<NodeId, Member>,
        raft: &mut RaftView,
        settings: &Settings,
        now_ms: u64,
        ids: &SeededIds,
        turns_max: usize,
    ) -> Result<usize, BoxError> {
        for turn in 0..turns_max {
            raft.applied_index = self.applied;
            let out = decide(&Input {
                state: &self.state,
                members,
                membership_epoch: 1,
                raft,
                settings,
                now_ms,
                memory: &self.memory,
                ids,
            });
            self.memory = out.memory;
            let mut proposed = false;
            for a in out.actions {
                if let Action::Propose(cmd) = a {
                    proposed = true;
                    self.apply(&cmd)?;
                    if let Command::Place { placements, .. } = &cmd {
                        for p in placements {
                            self.apply(&Command::Report {
                                node: p.node.clone(),
                                task_id: p.task_id.clone(),
                                allocation: p.allocation.clone(),
                                status: AllocStatus::Running {
                                    container_id: format!("c-{}", p.allocation),
                                    ports: vec![],
                                },
                                backoff: Default::default(),
                                at: now_ms,
                            })?;
                        }
                    }
                }
            }
            if !proposed {
                return Ok(turn);
            }
        }
        Err(format!("controller still proposing after {turns_max} turns").into())
    }
}

pub fn run(a: ScaleArgs) -> Result<(), BoxError> {
    if a.nodes < 4 || a.nodes > 65_000 {
        return Err("--nodes: 4 to 65000".into());
    }
    let rss0 = rss_kib();
    let ids = SeededIds::new(1);
    let now0 = 1_000_000u64;
    let mut leader = Leader {
        state: ClusterState::default(),
        memory: ControllerMemory::default(),
        applied: 0,
        log_bytes: 0,
        log_entries: 0,
    };
    let mut members = BTreeMap::new();
    for i in 0..a.nodes {
        let ip = Ipv4Addr::from(0x0a00_0001u32 + i as u32);
        let meta = bench_meta(i, ip, 1);
        members.insert(
            meta.id.clone(),
            Member {
                id: meta.id.clone(),
                status: MemberStatus::Alive,
                meta: meta.clone(),
            },
        );
        leader.apply(&Command::UpsertNode {
            meta: Box::new(meta),
            at: now0,
        })?;
    }
    let ids_sorted: Vec<NodeId> = members.keys().cloned().collect();
    let leader_id = ids_sorted[0].clone();
    // Today's shape: three voters, every other node a learner that replicates the whole log.
    let mut raft = RaftView {
        is_leader: true,
        voters: ids_sorted[..3].iter().cloned().collect(),
        learners: ids_sorted[3..].iter().cloned().collect::<BTreeSet<_>>(),
        membership_changing: false,
        applied_index: 0,
    };
    let settings = Settings {
        node_id: leader_id.clone(),
        voter_grace_ms: 10_000,
        seed_config: None,
    };
    let spec = parse_task_request(
        br#"{"image":"orion/busybox:latest","command":["sleep","3600"],"memory":"64m","cpu":0.1}"#,
    )?;
    let t_create = Instant::now();
    for t in 0..a.tasks {
        leader.apply(&Command::CreateTask {
            task_id: format!("task-{t:05}"),
            spec: Box::new(spec.clone()),
            at: now0,
        })?;
    }
    let create_s = t_create.elapsed().as_secs_f64();
    let t_place = Instant::now();
    let turns = leader.settle(&members, &mut raft, &settings, now0, &ids, a.turns_max)?;
    let place_s = t_place.elapsed().as_secs_f64();
    let placed = leader
        .state
        .tasks
        .values()
        .filter(|t| t.allocation.is_some())
        .count();
    let rss_placed = rss_kib();
    let log_bytes_placed = leader.log_bytes;
    let log_entries_placed = leader.log_entries;
    let state_json_bytes = serde_json::to_vec(&leader.state)?.len();

    // A node dies (not the leader): gossip says Dead; the controller marks it down and its
    // tasks are placed again elsewhere.
    let victim = ids_sorted[a.nodes / 2].clone();
    let on_victim: BTreeSet<String> = leader
        .state
        .tasks
        .values()
        .filter(|t| t.node.as_deref() == Some(victim.as_str()) && t.allocation.is_some())
        .map(|t| t.id.clone())
        .collect();
    if let Some(m) = members.get_mut(&victim) {
        m.status = MemberStatus::Dead;
    }
    let before_bytes = leader.log_bytes;
    let t_heal = Instant::now();
    let heal_turns = leader.settle(
        &members,
        &mut raft,
        &settings,
        now0 + 2_000,
        &ids,
        a.turns_max,
    )?;
    let heal_s = t_heal.elapsed().as_secs_f64();
    let replaced = on_victim
        .iter()
        .filter(|id| {
            leader.state.tasks.get(*id).is_some_and(|t| {
                t.allocation.is_some() && t.node.as_deref() != Some(victim.as_str())
            })
        })
        .count();
    let followers = (a.nodes - 1) as u64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "scale",
            "nodes": a.nodes,
            "tasks": a.tasks,
            "create_s": create_s,
            "place_s": place_s,
            "place_turns": turns,
            "placed": placed,
            "rss_mib_start": rss0 as f64 / 1024.0,
            "rss_mib_placed": rss_placed as f64 / 1024.0,
            "state_json_bytes": state_json_bytes,
            "log_entries": log_entries_placed,
            "log_bytes": log_bytes_placed,
            "leader_egress_bytes_full_replication": log_bytes_placed * followers,
            "victim_tasks": on_victim.len(),
            "replaced": replaced,
            "heal_s": heal_s,
            "heal_turns": heal_turns,
            "heal_log_bytes": leader.log_bytes - before_bytes,
            "heal_leader_egress_bytes": (leader.log_bytes - before_bytes) * (followers - 1),
        })
    );
    Ok(())
}
