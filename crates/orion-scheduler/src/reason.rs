//! The text of an unplaced task's reason: how many nodes were checked and, per filter in filter
//! order, how many nodes failed it first, with the figures an operator needs to act (how much
//! memory the task needs and the most any node has free, which port is in use).
//!
//! Built only for tasks that fit nowhere, so placing stays cheap.

use crate::{Failure, TaskRequest};
use orion_types::Resources;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::RangeInclusive;

/// Nodes that failed one filter, and the one with the most free of the resource it lacks.
struct Group<'a> {
    count: usize,
    most_free: Option<(u64, &'a str)>,
}

pub(crate) fn explain<'a>(
    task: &TaskRequest,
    dynamic_ports: &RangeInclusive<u16>,
    checked: usize,
    failures: impl Iterator<Item = (Failure, Resources, &'a str)>,
) -> String {
    if checked == 0 {
        return "no node can place it: no ready nodes in the cluster".to_string();
    }
    let mut groups: BTreeMap<Failure, Group<'a>> = BTreeMap::new();
    for (failure, free, node) in failures {
        let group = groups.entry(failure).or_insert(Group {
            count: 0,
            most_free: None,
        });
        group.count += 1;
        let amount = match failure {
            Failure::Memory => free.memory_bytes,
            Failure::Cpu => free.cpu_millis,
            _ => continue,
        };
        // The most free wins; among equals, the lowest node id, so the text is deterministic.
        let better = match group.most_free {
            None => true,
            Some((best, best_node)) => amount > best || (amount == best && node < best_node),
        };
        if better {
            group.most_free = Some((amount, node));
        }
    }
    let mut out = format!(
        "no node can place it: {checked} {} checked",
        plural(checked, "node", "nodes")
    );
    for (failure, group) in &groups {
        let n = group.count;
        out.push_str("; ");
        // Writing to a String cannot fail.
        let _ = match *failure {
            Failure::NotReady => write!(out, "{n} {} not ready", plural(n, "is", "are")),
            Failure::Draining => write!(out, "{n} {} draining", plural(n, "is", "are")),
            Failure::Selector(i) => {
                let (key, value) = task
                    .node_selectors
                    .iter()
                    .nth(i)
                    .expect("selector index from this task");
                write!(
                    out,
                    "{n} {} node selector {key}={value}",
                    plural(n, "fails", "fail")
                )
            }
            Failure::Constraint(i) => {
                write!(
                    out,
                    "{n} {} constraint {}",
                    plural(n, "fails", "fail"),
                    task.constraints[i]
                )
            }
            Failure::Memory => {
                let (free, node) = group.most_free.expect("a memory group has a node");
                write!(
                    out,
                    "{n} {} memory (need {}, most free {} on {node})",
                    plural(n, "lacks", "lack"),
                    bytes(task.resources.memory_bytes, Round::Up),
                    bytes(free, Round::Down),
                )
            }
            Failure::Cpu => {
                let (free, node) = group.most_free.expect("a CPU group has a node");
                let need = task.resources.cpu_millis;
                write!(
                    out,
                    "{n} {} CPU (need {} {}, most free {} on {node})",
                    plural(n, "lacks", "lack"),
                    cores(need),
                    if need == 1000 { "core" } else { "cores" },
                    cores(free),
                )
            }
            Failure::Port(i) => {
                let spec = task.ports[i];
                let host = spec.host_port.unwrap_or_default();
                write!(
                    out,
                    "{n} {} port {host}/{} in use",
                    plural(n, "has", "have"),
                    spec.protocol.as_str()
                )
            }
            Failure::NoDynamicPort(protocol) => write!(
                out,
                "{n} {} no free {} port in {}-{}",
                plural(n, "has", "have"),
                protocol.as_str(),
                dynamic_ports.start(),
                dynamic_ports.end()
            ),
        };
    }
    out
}

fn plural<'s>(n: usize, one: &'s str, many: &'s str) -> &'s str {
    if n == 1 { one } else { many }
}

#[derive(Clone, Copy)]
pub(crate) enum Round {
    Up,
    Down,
}

/// Bytes in the largest binary unit they reach, with one decimal. A need is rounded up and a
/// free amount down, so a need that does not fit never reads as equal to what is free.
pub(crate) fn bytes(n: u64, round: Round) -> String {
    // Binary units, as Docker and the kernel report memory.
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if n >= unit {
            let tenths = u128::from(n) * 10;
            let unit = u128::from(unit);
            let tenths = match round {
                Round::Up => tenths.div_ceil(unit),
                Round::Down => tenths / unit,
            };
            return format!("{}.{} {name}", tenths / 10, tenths % 10);
        }
    }
    format!("{n} B")
}

/// Millicores as cores, exactly: 2000 -> "2", 500 -> "0.5", 1250 -> "1.25".
pub(crate) fn cores(millis: u64) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanises_bytes_and_cores() {
        const GIB: u64 = 1 << 30;
        let cases: &[(u64, Round, &str)] = &[
            (0, Round::Up, "0 B"),
            (1023, Round::Down, "1023 B"),
            (1024, Round::Up, "1.0 KiB"),
            (1536, Round::Down, "1.5 KiB"),
            (2 * GIB, Round::Up, "2.0 GiB"),
            (2 * GIB + 1, Round::Up, "2.1 GiB"),
            (2 * GIB - 1, Round::Down, "1.9 GiB"),
            (GIB + GIB / 10 + 1, Round::Down, "1.1 GiB"),
            (256 << 20, Round::Up, "256.0 MiB"),
            (3 << 40, Round::Down, "3.0 TiB"),
            (u64::MAX, Round::Up, "16777216.0 TiB"),
        ];
        for (n, round, want) in cases {
            assert_eq!(bytes(*n, *round), *want, "{n}");
        }
        for (millis, want) in [
            (0, "0"),
            (500, "0.5"),
            (2000, "2"),
            (1250, "1.25"),
            (1, "0.001"),
            (10, "0.01"),
        ] {
            assert_eq!(cores(millis), want, "{millis}");
        }
    }
}
