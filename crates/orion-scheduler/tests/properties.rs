//! Property tests: random clusters and batches, and a plain model of the rules that replays
//! every decision. Whatever the input: no node is over-committed in memory, CPU or ports; every
//! placement satisfies its task's filters and is the best node under its strategy; a task left
//! unplaced fits on no node given the placements before it; the same input gives the same output.

use orion_scheduler::{Decision, NodeView, Snapshot, TaskRequest, place};
use orion_types::Strategy as Policy;
use orion_types::{Constraint, PortSpec, Protocol, Resources};
use proptest::prelude::*;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

const MIB: u64 = 1 << 20;
/// Few distinct ports, so that collisions and an exhausted dynamic range are common.
const STATIC_PORTS: [u16; 4] = [80, 443, 8080, 30001];
/// Start of the dynamic range; the range is 1 to 4 ports wide, so it is often exhausted.
const DYNAMIC_LOW: u16 = 30000;
/// One of each operator on labels and ids, over the labels and ids the nodes are given.
const CONSTRAINTS: [&str; 6] = [
    "node.labels.zone == a",
    "node.labels.zone != b",
    "node.labels.disk in (ssd, nvme)",
    "node.labels.zone not in (c)",
    "node.id != n1",
    "node.id in (n0, n2, n4)",
];

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![3 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp)]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["ssd", "hdd", "nvme"])),
    )
        .prop_map(|(zone, disk)| {
            let mut labels = BTreeMap::new();
            if let Some(zone) = zone {
                labels.insert("zone".to_string(), zone.to_string());
            }
            if let Some(disk) = disk {
                labels.insert("disk".to_string(), disk.to_string());
            }
            labels
        })
}

fn node(index: usize) -> impl Strategy<Value = NodeView> {
    (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.15),
        (0u64..=16, 0u64..=16, 0u64..=18, 0u64..=18),
        prop::collection::btree_set(
            (
                protocol(),
                prop_oneof![
                    prop::sample::select(STATIC_PORTS.to_vec()),
                    DYNAMIC_LOW..=DYNAMIC_LOW + 4
                ],
            ),
            0..5,
        ),
        labels(),
        0u32..6,
        0u8..3,
    )
        .prop_map(
            move |(
                ready,
                draining,
                (mem, cpu, mem_used, cpu_used),
                used_ports,
                labels,
                task_count,
                tag,
            )| {
                NodeView {
                    // Ids are unique, and their order differs from the input order.
                    id: format!("n{index}{}", ["", "x", "a"][tag as usize]),
                    ready,
                    draining,
                    // Capacities and loads on a coarse grid, so that ties are frequent; a load may
                    // exceed the capacity (an over-committed snapshot must not get worse).
                    capacity: Resources {
                        memory_bytes: mem * 256 * MIB,
                        cpu_millis: cpu * 250,
                    },
                    allocated: Resources {
                        memory_bytes: mem_used * 256 * MIB,
                        cpu_millis: cpu_used * 250,
                    },
                    used_ports,
                    cooling_ports: BTreeSet::new(),
                    labels,
                    task_count,
                }
            },
        )
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        1usize..30,
        0u16..4,
        prop_oneof![Just(Policy::Spread), Just(Policy::Binpack)],
    )
        .prop_flat_map(|(n, width, default_strategy)| {
            (0..n)
                .map(node)
                .collect::<Vec<_>>()
                .prop_map(move |nodes| Snapshot {
                    nodes,
                    dynamic_ports: DYNAMIC_LOW..=DYNAMIC_LOW + width,
                    default_strategy,
                })
        })
}

fn task(index: usize) -> impl Strategy<Value = TaskRequest> {
    (
        (0u64..=8, 0u64..=8),
        prop::collection::vec(
            (
                protocol(),
                prop::option::of(prop::sample::select(STATIC_PORTS.to_vec())),
                1u16..100,
            ),
            0..3,
        ),
        prop::option::weighted(0.2, prop::sample::select(vec!["a", "b", "c"])),
        prop::collection::vec(prop::sample::select(CONSTRAINTS.to_vec()), 0..3),
        prop::option::weighted(
            0.3,
            prop_oneof![Just(Policy::Spread), Just(Policy::Binpack)],
        ),
    )
        .prop_map(
            move |((mem, cpu), ports, zone, constraints, strategy)| TaskRequest {
                id: format!("t{index}"),
                resources: Resources {
                    memory_bytes: mem * 128 * MIB,
                    cpu_millis: cpu * 250,
                },
                ports: ports
                    .into_iter()
                    .map(|(protocol, host_port, container_port)| PortSpec {
                        container_port,
                        protocol,
                        host_port,
                    })
                    .collect(),
                node_selectors: zone
                    .map(|z| ("zone".to_string(), z.to_string()))
                    .into_iter()
                    .collect(),
                constraints: constraints
                    .iter()
                    .map(|c| Constraint::parse(c).expect("a valid constraint"))
                    .collect(),
                strategy,
            },
        )
}

/// A batch; four tasks in ten copy the shape of an earlier one (replicas), as the pending
/// queue holds many alike.
fn tasks() -> impl Strategy<Value = Vec<TaskRequest>> {
    (1usize..60).prop_flat_map(|n| {
        let copies =
            prop::collection::vec(prop::option::weighted(0.4, any::<prop::sample::Index>()), n);
        ((0..n).map(task).collect::<Vec<_>>(), copies).prop_map(|(mut tasks, copies)| {
            for (i, copy) in copies.into_iter().enumerate() {
                if let Some(from) = copy.filter(|_| i > 0) {
                    let original = tasks[from.index(i)].clone();
                    let (id, strategy) = (tasks[i].id.clone(), tasks[i].strategy);
                    tasks[i] = TaskRequest {
                        id,
                        strategy,
                        ..original
                    };
                }
            }
            tasks
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn placements_obey_the_model(snapshot in snapshot(), tasks in tasks()) {
        let decisions = place(&snapshot, &tasks);
        prop_assert_eq!(decisions.len(), tasks.len());
        // The same input gives the same output, also from a copy of the input.
        prop_assert_eq!(&place(&snapshot.clone(), &tasks.clone()), &decisions);
        replay(&snapshot, &tasks, &decisions)?;
    }
}

/// Replays the decisions on a model of the nodes and checks each one against the rules.
fn replay(
    snapshot: &Snapshot,
    tasks: &[TaskRequest],
    decisions: &[Decision],
) -> Result<(), TestCaseError> {
    let mut nodes = snapshot.nodes.clone();
    let range = &snapshot.dynamic_ports;
    for (task, decision) in tasks.iter().zip(decisions) {
        prop_assert_eq!(decision.task_id(), task.id.as_str());
        let strategy = task.strategy.unwrap_or(snapshot.default_strategy);
        match decision {
            Decision::Placed {
                node, host_ports, ..
            } => {
                let i = nodes
                    .iter()
                    .position(|n| &n.id == node)
                    .expect("placed on a known node");
                let chosen = &nodes[i];
                prop_assert!(
                    feasible(chosen, task, range),
                    "{} placed on {} where it does not fit",
                    task.id,
                    node
                );
                // Ports: one per spec; static as asked; dynamic in the range and the lowest free;
                // none in use on the node or twice in the task.
                prop_assert_eq!(host_ports.len(), task.ports.len());
                let mut bound: BTreeSet<(Protocol, u16)> = BTreeSet::new();
                for (spec, &host) in task.ports.iter().zip(host_ports) {
                    match spec.host_port {
                        Some(p) if p != 0 => prop_assert_eq!(host, p),
                        _ => {
                            prop_assert!(
                                range.contains(&host),
                                "dynamic port {} outside {:?}",
                                host,
                                range
                            );
                            let statics = static_ports(task);
                            let lowest = range.clone().find(|p| {
                                let key = (spec.protocol, *p);
                                !chosen.used_ports.contains(&key)
                                    && !bound.contains(&key)
                                    && !statics.contains(&key)
                            });
                            prop_assert_eq!(Some(host), lowest, "not the lowest free dynamic port");
                        }
                    }
                    prop_assert!(
                        !chosen.used_ports.contains(&(spec.protocol, host)),
                        "port {} in use on {}",
                        host,
                        node
                    );
                    prop_assert!(
                        bound.insert((spec.protocol, host)),
                        "port {} bound twice by {}",
                        host,
                        task.id
                    );
                }
                // The best feasible node under the task's strategy.
                for other in nodes.iter().filter(|n| feasible(n, task, range)) {
                    prop_assert_ne!(
                        rank(strategy, other, chosen, task.resources),
                        Ordering::Less,
                        "{} is better than {} for {}",
                        &other.id,
                        node,
                        &task.id
                    );
                }
                let n = &mut nodes[i];
                n.allocated = n.allocated.saturating_add(task.resources);
                n.task_count += 1;
                n.used_ports.extend(bound);
                // No over-commitment of what the task reserved.
                prop_assert!(
                    task.resources.memory_bytes == 0
                        || n.allocated.memory_bytes <= n.capacity.memory_bytes
                );
                prop_assert!(
                    task.resources.cpu_millis == 0
                        || n.allocated.cpu_millis <= n.capacity.cpu_millis
                );
            }
            Decision::Unplaced { reason, .. } => {
                prop_assert!(reason.starts_with("no node can place it: "), "{}", reason);
                // The reason is the one this task alone would get on the cluster as it now is.
                let now = Snapshot {
                    nodes: nodes.clone(),
                    ..snapshot.clone()
                };
                prop_assert_eq!(
                    &place(&now, std::slice::from_ref(task)),
                    std::slice::from_ref(decision)
                );
                for n in &nodes {
                    prop_assert!(
                        !feasible(n, task, range),
                        "{} unplaced ({}) but fits {}",
                        task.id,
                        reason,
                        n.id
                    );
                }
            }
        }
    }
    Ok(())
}

fn static_ports(task: &TaskRequest) -> Vec<(Protocol, u16)> {
    task.ports
        .iter()
        .filter_map(|s| s.host_port.filter(|&p| p != 0).map(|p| (s.protocol, p)))
        .collect()
}

/// The filters, written plainly: whether the task may go on the node in this model state.
fn feasible(node: &NodeView, task: &TaskRequest, range: &RangeInclusive<u16>) -> bool {
    let fits =
        |have: u64, want: u64, cap: u64| want == 0 || have as u128 + want as u128 <= cap as u128;
    let statics = static_ports(task);
    let statics_distinct = statics.iter().collect::<BTreeSet<_>>().len() == statics.len();
    let free_dynamic = |protocol: Protocol| {
        range
            .clone()
            .filter(|p| {
                !node.used_ports.contains(&(protocol, *p)) && !statics.contains(&(protocol, *p))
            })
            .count()
    };
    let wanted_dynamic = |protocol: Protocol| {
        task.ports
            .iter()
            .filter(|s| s.protocol == protocol && s.host_port.filter(|&p| p != 0).is_none())
            .count()
    };
    node.ready
        && !node.draining
        && task
            .node_selectors
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        && task
            .constraints
            .iter()
            .all(|c| c.matches(&node.id, &node.labels))
        && fits(
            node.allocated.memory_bytes,
            task.resources.memory_bytes,
            node.capacity.memory_bytes,
        )
        && fits(
            node.allocated.cpu_millis,
            task.resources.cpu_millis,
            node.capacity.cpu_millis,
        )
        && statics_distinct
        && statics.iter().all(|p| !node.used_ports.contains(p))
        && [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .all(|p| free_dynamic(p) >= wanted_dynamic(p))
}

/// How `a` ranks against `b` for a task (`Less`: `a` is better).
fn rank(strategy: Policy, a: &NodeView, b: &NodeView, want: Resources) -> Ordering {
    let (sa, sb) = (dominant_share(a, want), dominant_share(b, want));
    match strategy {
        Policy::Spread => sa
            .cmp(&sb)
            .then(a.task_count.cmp(&b.task_count))
            .then(a.id.cmp(&b.id)),
        Policy::Binpack => sb.cmp(&sa).then(a.id.cmp(&b.id)),
    }
}

/// A share as a fraction; `None` stands for "used something of nothing", above every fraction.
#[derive(PartialEq, Eq)]
struct Fraction(Option<(u128, u128)>);

impl Ord for Fraction {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.0, other.0) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some((a, b)), Some((c, d))) => (a * d).cmp(&(c * b)),
        }
    }
}

impl PartialOrd for Fraction {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn dominant_share(node: &NodeView, want: Resources) -> Fraction {
    let share = |have: u64, want: u64, cap: u64| {
        let used = have as u128 + want as u128;
        match (used, cap) {
            (0, _) => Fraction(Some((0, 1))),
            (_, 0) => Fraction(None),
            _ => Fraction(Some((used, cap as u128))),
        }
    };
    let memory = share(
        node.allocated.memory_bytes,
        want.memory_bytes,
        node.capacity.memory_bytes,
    );
    let cpu = share(
        node.allocated.cpu_millis,
        want.cpu_millis,
        node.capacity.cpu_millis,
    );
    memory.max(cpu)
}
