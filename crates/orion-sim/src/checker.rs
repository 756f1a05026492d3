//! The checker: after the faults stop and the cluster heals, compares the recorded history
//! with the final replicated state and with Docker.
//!
//! - No acknowledged write is lost: an acknowledged create is present and not stopped unless
//!   a delete was sent; an acknowledged delete left the task stopped.
//! - Nothing the workload did not ask for exists (a create that failed for sure, a hostile
//!   body, a task created twice).
//! - Consistent reads, consistent lists, deletes answered 404 (an observation that the task is
//!   absent) and the final state are linearizable with the writes, register by register
//!   (`linearizability`).
//! - After convergence every live task runs in exactly one container, on the node and under
//!   the allocation the state names, and no container is left for anything else.

use crate::history::{Op, OpKind, Outcome};
use crate::linearizability::{self, Kind, Reg, Verdict};
use std::collections::{BTreeMap, BTreeSet};

/// A task as the final consistent list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub name: String,
    pub state: String,
    pub node: Option<String>,
    pub allocation: Option<String>,
}

impl TaskRow {
    pub fn from_json(v: &serde_json::Value) -> Option<TaskRow> {
        Some(TaskRow {
            id: v["id"].as_str()?.to_string(),
            name: v["name"].as_str().unwrap_or("").to_string(),
            state: v["state"].as_str()?.to_string(),
            node: v["node"].as_str().map(String::from),
            allocation: v["allocation"].as_str().map(String::from),
        })
    }
}

/// A container as Docker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: String,
    pub running: bool,
    pub node: String,
    pub task: String,
    pub alloc: String,
}

/// What the history says against the final state.
#[derive(Debug, Default)]
pub struct Analysis {
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    pub violations: Vec<String>,
    /// Writes answered 503 ("surely not applied") that were applied all the same; each is
    /// also in `violations`.
    pub applied_after_503: usize,
    /// Findings that do not fail the run but are worth a look.
    pub notes: Vec<String>,
    pub registers: usize,
}

pub fn reg_of(state: &str) -> Reg {
    match state {
        "absent" => Reg::Absent,
        "stopped" => Reg::Stopped,
        _ => Reg::Live,
    }
}

/// Checks the history against the final state, read by a consistent list between
/// `final_call_us` and `final_return_us`.
pub fn analyze(
    ops: &[Op],
    final_tasks: &[TaskRow],
    final_call_us: u64,
    final_return_us: u64,
) -> Analysis {
    let mut a = Analysis::default();
    let mut by_name: BTreeMap<&str, Vec<&TaskRow>> = BTreeMap::new();
    for t in final_tasks {
        by_name.entry(t.name.as_str()).or_default().push(t);
    }
    let names: BTreeSet<&str> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Create)
        .map(|o| o.name.as_str())
        .collect();
    for (name, rows) in &by_name {
        if !names.contains(name) {
            a.unexpected.push(format!(
                "task {:?} ({}) was never asked for",
                name, rows[0].id
            ));
        } else if rows.len() > 1 {
            a.unexpected
                .push(format!("task {name:?} exists {} times", rows.len()));
        }
    }
    for name in &names {
        let mine: Vec<(usize, &Op)> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.kind != OpKind::List && o.name == *name)
            .collect();
        let create = mine
            .iter()
            .find(|(_, o)| o.kind == OpKind::Create)
            .map(|(_, o)| *o)
            .expect("a create per name");
        let final_row = by_name.get(name).map(|r| r[0]);
        let final_state = final_row.map_or("absent", |r| r.state.as_str());
        let delete_sent = mine
            .iter()
            .any(|(_, o)| o.kind == OpKind::Delete && o.outcome != Outcome::Fail);
        let delete_acked = mine
            .iter()
            .any(|(_, o)| o.kind == OpKind::Delete && o.outcome == Outcome::Ok);
        // A delete answered 503 was sent all the same; if it shows up, it is reported below as
        // a 503 that was applied rather than as a lost create.
        let delete_503 = mine
            .iter()
            .any(|(_, o)| o.kind == OpKind::Delete && o.status == Some(503));
        match create.outcome {
            Outcome::Ok if final_row.is_none() => a
                .lost
                .push(format!("acknowledged create of {name} is gone")),
            Outcome::Ok if final_state == "stopped" && !delete_sent && !delete_503 => a.lost.push(
                format!("acknowledged create of {name} is stopped though no delete was sent"),
            ),
            Outcome::Fail if final_row.is_some() && create.status == Some(503) => {
                a.applied_after_503 += 1;
                a.violations.push(format!(
                    "create of {name} answered 503 (surely not applied) but the task exists"
                ));
            }
            Outcome::Fail if final_row.is_some() => a.unexpected.push(format!(
                "create of {name} failed for sure ({:?} {:?}) but the task exists",
                create.status, create.error
            )),
            _ => {}
        }
        if delete_503 && !delete_sent && final_state == "stopped" {
            a.applied_after_503 += 1;
            a.violations.push(format!(
                "delete of {name} answered 503 (surely not applied) but the task is stopped"
            ));
        }
        if delete_acked && final_state != "stopped" {
            a.lost.push(format!(
                "acknowledged delete of {name} undone: {final_state}"
            ));
        }
        for (_, o) in &mine {
            if o.kind == OpKind::Delete
                && o.outcome == Outcome::Ok
                && o.observed.as_deref() != Some("stopped")
            {
                a.violations
                    .push(format!("delete of {name} answered state {:?}", o.observed));
            }
        }
        // The register's history: writes that may have happened, reads that answered, the
        // projections of consistent lists, and the final state.
        let mut reg: Vec<linearizability::Op> = Vec::new();
        for (i, o) in &mine {
            // A delete answered 404 observed the task absent: a read, checked as one.
            if o.kind == OpKind::Delete && o.status == Some(404) {
                reg.push(linearizability::Op::ok(
                    *i,
                    Kind::Read(Reg::Absent),
                    o.call_us,
                    o.return_us,
                ));
                continue;
            }
            let kind = match o.kind {
                OpKind::Create => Kind::Create,
                OpKind::Delete => Kind::Delete,
                OpKind::Read => match &o.observed {
                    Some(s) => Kind::Read(reg_of(s)),
                    None => continue,
                },
                OpKind::List => continue,
            };
            match o.outcome {
                Outcome::Fail => continue,
                Outcome::Ok => reg.push(linearizability::Op::ok(*i, kind, o.call_us, o.return_us)),
                Outcome::Unknown => reg.push(linearizability::Op::unknown(*i, kind, o.call_us)),
            }
        }
        for (i, o) in ops.iter().enumerate() {
            if o.kind != OpKind::List || o.outcome != Outcome::Ok || o.return_us < create.call_us {
                continue;
            }
            let seen = o
                .seen
                .iter()
                .find(|(n, _)| n == name)
                .map_or("absent", |(_, s)| s.as_str());
            reg.push(linearizability::Op::ok(
                i,
                Kind::Read(reg_of(seen)),
                o.call_us,
                o.return_us,
            ));
        }
        reg.push(linearizability::Op::ok(
            usize::MAX,
            Kind::Read(reg_of(final_state)),
            final_call_us,
            final_return_us,
        ));
        a.registers += 1;
        match linearizability::check(&reg) {
            Verdict::Linearizable => {}
            v => a.violations.push(format!(
                "{name}: {v:?}; history:\n{}",
                describe_register(ops, &reg)
            )),
        }
    }
    a
}

fn describe_register(ops: &[Op], reg: &[linearizability::Op]) -> String {
    let mut reg = reg.to_vec();
    reg.sort_by_key(|o| o.call_us);
    reg.iter()
        .map(|r| {
            let who = ops.get(r.index).map_or("final".to_string(), |o| {
                format!(
                    "c{} {:?} via n{} {:?}",
                    o.client,
                    o.kind,
                    o.node + 1,
                    o.status
                )
            });
            format!(
                "    [{:>9.3}s .. {}] {:?}  ({who})",
                r.call_us as f64 / 1e6,
                r.return_us
                    .map_or("unknown".to_string(), |t| format!("{:.3}s", t as f64 / 1e6)),
                r.kind
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Differences between the state and Docker; empty when converged.
pub fn docker_problems(tasks: &[TaskRow], containers: &[ContainerRow]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_task: BTreeMap<&str, Vec<&ContainerRow>> = BTreeMap::new();
    for c in containers {
        by_task.entry(c.task.as_str()).or_default().push(c);
    }
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    for t in tasks {
        let cs = by_task.get(t.id.as_str()).cloned().unwrap_or_default();
        if t.state == "stopped" {
            if !cs.is_empty() {
                problems.push(format!(
                    "stopped task {} ({}) still has {} container(s)",
                    t.name,
                    t.id,
                    cs.len()
                ));
            }
            continue;
        }
        if t.state != "running" {
            problems.push(format!("task {} ({}) is {}", t.name, t.id, t.state));
        }
        match cs.as_slice() {
            [] => problems.push(format!("task {} ({}) has no container", t.name, t.id)),
            [c] => {
                if !c.running {
                    problems.push(format!("task {}: container {} not running", t.name, c.id));
                }
                if Some(&c.node) != t.node.as_ref() || Some(&c.alloc) != t.allocation.as_ref() {
                    problems.push(format!(
                        "task {}: container on {} alloc {}, state names {:?} alloc {:?}",
                        t.name, c.node, c.alloc, t.node, t.allocation
                    ));
                }
            }
            many => problems.push(format!(
                "task {} ({}) has {} containers: {:?}",
                t.name,
                t.id,
                many.len(),
                many.iter()
                    .map(|c| format!("{}@{} running={}", c.alloc, c.node, c.running))
                    .collect::<Vec<_>>()
            )),
        }
    }
    for c in containers {
        if !ids.contains(c.task.as_str()) {
            problems.push(format!(
                "container {} on {} for unknown task {}",
                c.id, c.node, c.task
            ));
        }
    }
    problems
}

/// Tasks with more than one running container.
pub fn duplicates(containers: &[ContainerRow]) -> usize {
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for c in containers.iter().filter(|c| c.running) {
        *running.entry(c.task.as_str()).or_default() += 1;
    }
    running.values().filter(|n| **n > 1).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, name: &str, call: u64, ret: u64, outcome: Outcome, seen: &str) -> Op {
        Op {
            client: 0,
            kind,
            name: name.into(),
            node: 0,
            call_us: call,
            return_us: ret,
            outcome,
            status: Some(200),
            observed: Some(seen.into()),
            seen: Vec::new(),
            id: None,
            error: None,
        }
    }

    fn row(name: &str, state: &str) -> TaskRow {
        TaskRow {
            id: format!("id-{name}"),
            name: name.into(),
            state: state.into(),
            node: Some("n1".into()),
            allocation: Some("a1".into()),
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            op(OpKind::Create, "a", 0, 10, Outcome::Ok, "pending"),
            op(OpKind::Read, "a", 20, 30, Outcome::Ok, "running"),
            op(OpKind::Create, "b", 0, 10, Outcome::Ok, "pending"),
            op(OpKind::Delete, "b", 40, 50, Outcome::Ok, "stopped"),
            op(OpKind::Create, "c", 0, 10, Outcome::Unknown, ""),
        ];
        let a = analyze(&ops, &[row("a", "running"), row("b", "stopped")], 100, 110);
        assert!(a.lost.is_empty() && a.unexpected.is_empty(), "{a:?}");
        assert!(a.violations.is_empty(), "{a:?}");
        assert_eq!(a.registers, 3);
    }

    #[test]
    fn lost_and_unexpected_writes_are_caught() {
        let ops = vec![
            op(OpKind::Create, "a", 0, 10, Outcome::Ok, "pending"),
            op(OpKind::Create, "b", 0, 10, Outcome::Ok, "pending"),
            op(OpKind::Delete, "b", 40, 50, Outcome::Ok, "stopped"),
            op(OpKind::Create, "c", 0, 10, Outcome::Ok, "pending"),
            op(OpKind::Create, "d", 0, 10, Outcome::Fail, ""),
        ];
        let finals = [
            row("b", "running"),
            row("c", "stopped"),
            row("d", "running"),
            row("evil", "running"),
        ];
        let a = analyze(&ops, &finals, 100, 110);
        assert_eq!(a.lost.len(), 3, "{a:?}");
        assert_eq!(a.unexpected.len(), 2, "{a:?}");
        // a is gone, b lives after its delete, c stopped by itself, d lives with no create
        // that may have happened: four registers fail.
        assert_eq!(a.violations.len(), 4, "{a:?}");
    }

    #[test]
    fn a_list_observation_is_part_of_the_register() {
        let mut list = op(OpKind::List, "", 20, 30, Outcome::Ok, "");
        list.seen = vec![("other".into(), "running".into())];
        let ops = vec![op(OpKind::Create, "a", 0, 10, Outcome::Ok, "pending"), list];
        let a = analyze(&ops, &[row("a", "running")], 100, 110);
        assert_eq!(
            a.violations.len(),
            1,
            "a list after the create missed it: {a:?}"
        );
    }

    /// The old bug: a DELETE through a lagging follower resolved the id on its stale replica
    /// and answered 404 for a task whose create had been acknowledged.
    #[test]
    fn delete_404_after_an_acknowledged_create_is_a_violation() {
        let mut gone = op(OpKind::Delete, "a", 20, 30, Outcome::Fail, "");
        gone.status = Some(404);
        let ops = vec![
            op(OpKind::Create, "a", 0, 10, Outcome::Ok, "pending"),
            gone.clone(),
        ];
        let a = analyze(&ops, &[row("a", "running")], 100, 110);
        assert_eq!(a.violations.len(), 1, "{a:?}");
        // Overlapping the create, the same 404 is legal: the task may not exist yet.
        gone.call_us = 5;
        let ops = vec![op(OpKind::Create, "a", 0, 10, Outcome::Ok, "pending"), gone];
        let a = analyze(&ops, &[row("a", "running")], 100, 110);
        assert!(a.violations.is_empty(), "{a:?}");
    }

    #[test]
    fn docker_must_match_the_state() {
        let c = |task: &str, node: &str, alloc: &str, running: bool| ContainerRow {
            id: format!("c-{task}-{node}"),
            running,
            node: node.into(),
            task: task.into(),
            alloc: alloc.into(),
        };
        let tasks = [row("a", "running"), row("b", "stopped")];
        assert!(docker_problems(&tasks, &[c("id-a", "n1", "a1", true)]).is_empty());
        let twice = [c("id-a", "n1", "a1", true), c("id-a", "n2", "a0", true)];
        assert_eq!(docker_problems(&tasks, &twice).len(), 1);
        assert_eq!(duplicates(&twice), 1);
        assert_eq!(docker_problems(&tasks, &[]).len(), 1);
        let wrong_node = [c("id-a", "n2", "a1", true)];
        assert_eq!(docker_problems(&tasks, &wrong_node).len(), 1);
        let leftovers = [
            c("id-a", "n1", "a1", true),
            c("id-b", "n1", "a9", false),
            c("id-zzz", "n3", "a7", true),
        ];
        assert_eq!(docker_problems(&tasks, &leftovers).len(), 2);
    }

    /// Issue 10, 503 versus 504 (moved here with the checker).
    #[test]
    fn a_503_write_that_was_applied_is_a_violation_and_a_504_stays_unknown() {
        use crate::history::write_outcome;
        let answered = |kind, name: &str, call, status: u16| {
            let mut o = op(kind, name, call, call + 10, write_outcome(status), "");
            o.status = Some(status);
            o.observed = None;
            o
        };
        assert_eq!(write_outcome(503), Outcome::Fail);
        assert_eq!(write_outcome(504), Outcome::Unknown);
        assert_eq!(write_outcome(500), Outcome::Unknown);
        assert_eq!(write_outcome(400), Outcome::Fail);
        let ops = vec![
            // Created though it answered 503: a violation.
            answered(OpKind::Create, "a", 0, 503),
            // Answered 504, then present or absent: both fine.
            answered(OpKind::Create, "b", 0, 504),
            answered(OpKind::Create, "c", 0, 504),
            // Answered 503 and truly not applied: fine.
            answered(OpKind::Create, "d", 0, 503),
            // A delete answered 503 that stopped the task anyway: a violation.
            op(OpKind::Create, "e", 0, 10, Outcome::Ok, "pending"),
            answered(OpKind::Delete, "e", 20, 503),
            // A delete answered 504 that did stop it: fine.
            op(OpKind::Create, "f", 0, 10, Outcome::Ok, "pending"),
            answered(OpKind::Delete, "f", 20, 504),
        ];
        let finals = [
            row("a", "running"),
            row("b", "running"),
            row("e", "stopped"),
            row("f", "stopped"),
        ];
        let a = analyze(&ops, &finals, 100, 110);
        assert_eq!(a.applied_after_503, 2, "{a:?}");
        assert!(a.lost.is_empty() && a.unexpected.is_empty(), "{a:?}");
        let of = |name: &str| {
            a.violations
                .iter()
                .filter(|v| v.contains(&format!(" of {name} answered 503")))
                .count()
        };
        assert_eq!((of("a"), of("e")), (1, 1), "{:#?}", a.violations);
        // Both also break their register (a task with no create, a stop with no delete, that
        // may have happened); nothing else is flagged.
        assert!(
            a.violations
                .iter()
                .all(|v| v.contains("answered 503") || v.starts_with("a:") || v.starts_with("e:")),
            "{:#?}",
            a.violations
        );
    }
}
