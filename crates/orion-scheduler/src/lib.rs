//! The scheduler: a pure function from a snapshot of the cluster and a batch of tasks to one
//! decision per task, either a placement (node and host ports) or a reason a human can act on.
//!
//! Architecture invariant: this crate never calls Docker, the network or the clock, and keeps
//! no state between calls; it returns placements and the leader proposes them. The same snapshot
//! and tasks always give the same decisions: nodes are compared with exact integer arithmetic
//! (never floats) and ties are broken by node id, never by the iteration order of a hash map.
//!
//! A batch is placed in input order, and each placement counts against its node (memory, CPU,
//! ports, task count) for the tasks after it, so a batch never over-commits a node.

use orion_types::{Constraint, PortSpec, Protocol, Resources, Strategy, TaskSpec};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

mod reason;

/// One node as the scheduler sees it: what it offers and what is already placed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    /// Alive in membership and `Up` in the state: may take new tasks.
    pub ready: bool,
    /// Drained by an operator: takes no new tasks.
    pub draining: bool,
    /// Schedulable capacity (the host's, minus the reserve).
    pub capacity: Resources,
    /// Sum of the reservations of the allocations that hold resources on this node.
    pub allocated: Resources,
    /// Host ports bound by the allocations on this node.
    pub used_ports: BTreeSet<(Protocol, u16)>,
    /// Host ports freed so recently that a container may still hold them (a stopped task's
    /// container drains and stops within its grace). A dynamic port avoids them while the
    /// range has another free one; a static port may take them (its start waits for the
    /// old container's removal on the node).
    #[serde(default)]
    pub cooling_ports: BTreeSet<(Protocol, u16)>,
    pub labels: BTreeMap<String, String>,
    /// Allocations on this node; breaks ties under `spread`.
    pub task_count: u32,
}

/// The cluster at one applied index, as far as placement is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub nodes: Vec<NodeView>,
    /// Where dynamic host ports are chosen from, e.g. `20000..=32767`.
    pub dynamic_ports: RangeInclusive<u16>,
    /// The cluster's strategy (`--scheduler`), for tasks that do not name one.
    pub default_strategy: Strategy,
}

/// One task to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequest {
    pub id: String,
    /// A zero in either field reserves nothing of that resource.
    pub resources: Resources,
    /// `host_port: None` (or `Some(0)`) asks for a dynamic port from the snapshot's range.
    pub ports: Vec<PortSpec>,
    /// Each must equal the node's label of the same name.
    pub node_selectors: BTreeMap<String, String>,
    pub constraints: Vec<Constraint>,
    /// Overrides the snapshot's default strategy.
    pub strategy: Option<Strategy>,
}

impl TaskRequest {
    /// The request for a validated task spec.
    pub fn from_spec(id: impl Into<String>, spec: &TaskSpec) -> TaskRequest {
        TaskRequest {
            id: id.into(),
            resources: spec.resources(),
            ports: spec.ports.clone(),
            node_selectors: spec.node_selectors.clone(),
            constraints: spec.constraints.clone(),
            strategy: spec.strategy,
        }
    }
}

/// What became of one task of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Placed {
        task_id: String,
        node: String,
        /// One host port per entry of the task's `ports`, in the same order.
        host_ports: Vec<u16>,
    },
    Unplaced {
        task_id: String,
        /// Why no node fits, e.g. `no node can place it: 3 nodes checked; 2 lack memory (need
        /// 2.0 GiB, most free 1.1 GiB on node3); 1 has port 8080/tcp in use`.
        reason: String,
    },
}

impl Decision {
    pub fn task_id(&self) -> &str {
        match self {
            Decision::Placed { task_id, .. } | Decision::Unplaced { task_id, .. } => task_id,
        }
    }
}

/// Places `tasks` in order on the nodes of `snapshot`: one decision per task, in input order.
pub fn place(snapshot: &Snapshot, tasks: &[TaskRequest]) -> Vec<Decision> {
    let mut batch = Batch::new(snapshot);
    // Placements only ever take capacity away, so a shape of task that fits nowhere fits
    // nowhere for the rest of the batch: later tasks of that shape (replicas waiting in the
    // pending queue) skip the search. The reason is reused only while no placement has happened
    // since it was written, else rebuilt, so it is exactly what a fresh search would say.
    let mut unplaceable: BTreeMap<Shape, Unplaceable> = BTreeMap::new();
    tasks
        .iter()
        .map(|task| {
            let shape = Shape::of(task);
            if let Some(known) = unplaceable.get_mut(&shape) {
                if known.placements != batch.placements {
                    known.reason = batch.reason(task);
                    known.placements = batch.placements;
                }
                return Decision::Unplaced {
                    task_id: task.id.clone(),
                    reason: known.reason.clone(),
                };
            }
            let decision = batch.place_one(task);
            if let Decision::Unplaced { reason, .. } = &decision {
                let known = Unplaceable {
                    placements: batch.placements,
                    reason: reason.clone(),
                };
                unplaceable.insert(shape, known);
            }
            decision
        })
        .collect()
}

/// What decides whether a task fits a node, and the text of its reason: all of a task but its
/// id and strategy.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Shape<'t> {
    resources: Resources,
    ports: &'t [PortSpec],
    node_selectors: &'t BTreeMap<String, String>,
    constraints: &'t [Constraint],
}

impl<'t> Shape<'t> {
    fn of(task: &'t TaskRequest) -> Shape<'t> {
        Shape {
            resources: task.resources,
            ports: &task.ports,
            node_selectors: &task.node_selectors,
            constraints: &task.constraints,
        }
    }
}

/// A shape found to fit nowhere, and why, as of the batch's `placements`-th placement.
struct Unplaceable {
    placements: u64,
    reason: String,
}

/// The first filter a node fails for a task. Variants are in filter order, and the derived
/// order is the order of the groups in a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Failure {
    NotReady,
    Draining,
    /// The n-th entry of `node_selectors`, in the map's order.
    Selector(usize),
    /// The n-th entry of `constraints`.
    Constraint(usize),
    Memory,
    Cpu,
    /// The n-th entry of `ports`: its static host port is in use.
    Port(usize),
    /// No free port left in the dynamic range for this protocol.
    NoDynamicPort(Protocol),
}

/// A node during one batch: the snapshot's view plus what this batch has placed on it.
struct NodeState<'s> {
    view: &'s NodeView,
    /// Ready and not draining. This and `capacity` copy the view's fields so that the scan of
    /// all nodes for each task mostly reads this array, not each view behind its pointer.
    open: bool,
    capacity: Resources,
    allocated: Resources,
    task_count: u32,
    /// Borrowed from the snapshot until this batch binds a port on the node.
    ports: Cow<'s, BTreeSet<(Protocol, u16)>>,
    /// The view's `cooling_ports`.
    cooling: &'s BTreeSet<(Protocol, u16)>,
}

impl NodeState<'_> {
    fn free(&self) -> Resources {
        self.capacity.saturating_sub(self.allocated)
    }
}

struct Batch<'s> {
    nodes: Vec<NodeState<'s>>,
    dynamic_ports: RangeInclusive<u16>,
    /// How many ports the dynamic range holds (0 if empty).
    dynamic_len: usize,
    default_strategy: Strategy,
    /// How many tasks this batch has placed so far.
    placements: u64,
}

/// The best node found so far for a task.
#[derive(Clone, Copy)]
struct Candidate {
    index: usize,
    share: Share,
}

impl<'s> Batch<'s> {
    fn new(snapshot: &'s Snapshot) -> Batch<'s> {
        let range = snapshot.dynamic_ports.clone();
        let dynamic_len = if range.start() <= range.end() {
            usize::from(*range.end() - *range.start()) + 1
        } else {
            0
        };
        Batch {
            nodes: snapshot
                .nodes
                .iter()
                .map(|view| NodeState {
                    view,
                    open: view.ready && !view.draining,
                    capacity: view.capacity,
                    allocated: view.allocated,
                    task_count: view.task_count,
                    ports: Cow::Borrowed(&view.used_ports),
                    cooling: &view.cooling_ports,
                })
                .collect(),
            dynamic_ports: range,
            dynamic_len,
            default_strategy: snapshot.default_strategy,
            placements: 0,
        }
    }

    fn place_one(&mut self, task: &TaskRequest) -> Decision {
        let Some(best) = self.best_node(task) else {
            return Decision::Unplaced {
                task_id: task.id.clone(),
                reason: self.reason(task),
            };
        };
        let host_ports = match self.assign_ports(&self.nodes[best], task) {
            Ok(ports) => ports,
            // `check` passed on this node, so its ports can be assigned.
            Err(protocol) => {
                unreachable!("node passed the port check but has no free {protocol:?} port")
            }
        };
        self.placements += 1;
        let node = &mut self.nodes[best];
        node.allocated = node.allocated.saturating_add(task.resources);
        node.task_count = node.task_count.saturating_add(1);
        if !task.ports.is_empty() {
            let ports = node.ports.to_mut();
            for (spec, host) in task.ports.iter().zip(&host_ports) {
                ports.insert((spec.protocol, *host));
            }
        }
        Decision::Placed {
            task_id: task.id.clone(),
            node: node.view.id.clone(),
            host_ports,
        }
    }

    /// The index of the best node for the task under its strategy, if any fits.
    fn best_node(&self, task: &TaskRequest) -> Option<usize> {
        if duplicate_static_port(&task.ports).is_some() {
            return None;
        }
        let strategy = task.strategy.unwrap_or(self.default_strategy);
        let mut best: Option<Candidate> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            if self.check(node, task).is_err() {
                continue;
            }
            let candidate = Candidate {
                index,
                share: share_after(node, task.resources),
            };
            if best.is_none_or(|b| self.better(strategy, candidate, b)) {
                best = Some(candidate);
            }
        }
        best.map(|b| b.index)
    }

    /// Why the task fits nowhere (call only when it does not).
    fn reason(&self, task: &TaskRequest) -> String {
        if let Some((protocol, port)) = duplicate_static_port(&task.ports) {
            return format!(
                "no node can place it: it asks for host port {port}/{} twice",
                protocol.as_str()
            );
        }
        self.explain(task)
    }

    /// Runs the filters in order and names the first one the node fails.
    #[inline(always)]
    fn check(&self, node: &NodeState, task: &TaskRequest) -> Result<(), Failure> {
        let view = node.view;
        if !node.open {
            return Err(if view.ready {
                Failure::Draining
            } else {
                Failure::NotReady
            });
        }
        for (i, (key, want)) in task.node_selectors.iter().enumerate() {
            if view.labels.get(key) != Some(want) {
                return Err(Failure::Selector(i));
            }
        }
        for (i, constraint) in task.constraints.iter().enumerate() {
            if !constraint.matches(&view.id, &view.labels) {
                return Err(Failure::Constraint(i));
            }
        }
        let (have, want, cap) = (node.allocated, task.resources, node.capacity);
        if !fits(have.memory_bytes, want.memory_bytes, cap.memory_bytes) {
            return Err(Failure::Memory);
        }
        if !fits(have.cpu_millis, want.cpu_millis, cap.cpu_millis) {
            return Err(Failure::Cpu);
        }
        if task.ports.is_empty() {
            return Ok(());
        }
        let mut dynamic = false;
        for (i, spec) in task.ports.iter().enumerate() {
            match static_port(spec) {
                Some(host) if node.ports.contains(&(spec.protocol, host)) => {
                    return Err(Failure::Port(i));
                }
                Some(_) => {}
                None => dynamic = true,
            }
        }
        // Quick sufficient test: if the node's ports and the task's together are no more than
        // the range holds, a free one exists for every dynamic port; else find them for real.
        if dynamic && node.ports.len() + task.ports.len() > self.dynamic_len {
            self.assign_ports(node, task)
                .map_err(Failure::NoDynamicPort)?;
        }
        Ok(())
    }

    /// The host ports for the task on this node, in spec order: static ones as asked, dynamic
    /// ones the lowest free in the range that is not cooling, else the lowest free. `Err`
    /// names a protocol whose range is exhausted.
    fn assign_ports(&self, node: &NodeState, task: &TaskRequest) -> Result<Vec<u16>, Protocol> {
        let mut taken: Vec<(Protocol, u16)> = task
            .ports
            .iter()
            .filter_map(|spec| static_port(spec).map(|host| (spec.protocol, host)))
            .collect();
        let mut out = Vec::with_capacity(task.ports.len());
        for spec in &task.ports {
            let host = match static_port(spec) {
                Some(host) => host,
                None => {
                    let range = &self.dynamic_ports;
                    let host = lowest_free_port(&node.ports, spec.protocol, range, &taken, |p| {
                        node.cooling.contains(&(spec.protocol, p))
                    })
                    .or_else(|| {
                        lowest_free_port(&node.ports, spec.protocol, range, &taken, |_| false)
                    })
                    .ok_or(spec.protocol)?;
                    taken.push((spec.protocol, host));
                    host
                }
            };
            out.push(host);
        }
        Ok(out)
    }

    /// Whether `a` is a better node than `b` for a task under `strategy`.
    fn better(&self, strategy: Strategy, a: Candidate, b: Candidate) -> bool {
        let (na, nb) = (&self.nodes[a.index], &self.nodes[b.index]);
        let by_id = || na.view.id.cmp(&nb.view.id).then(a.index.cmp(&b.index));
        let order = match strategy {
            Strategy::Spread => a
                .share
                .cmp(&b.share)
                .then(na.task_count.cmp(&nb.task_count))
                .then_with(by_id),
            Strategy::Binpack => b.share.cmp(&a.share).then_with(by_id),
        };
        order == Ordering::Less
    }

    /// The reason a task fits nowhere: each node counted under the first filter it fails.
    fn explain(&self, task: &TaskRequest) -> String {
        let failures = self.nodes.iter().filter_map(|node| {
            self.check(node, task)
                .err()
                .map(|failure| (failure, node.free(), node.view.id.as_str()))
        });
        reason::explain(task, &self.dynamic_ports, self.nodes.len(), failures)
    }
}

/// Whether `want` more fits beside `have` within `cap`. Asking for nothing always fits, even on
/// a node that is already over its capacity.
fn fits(have: u64, want: u64, cap: u64) -> bool {
    want == 0 || have.checked_add(want).is_some_and(|total| total <= cap)
}

/// The static host port of a spec; `None` (and `Some(0)`, Docker's "any port") is dynamic.
fn static_port(spec: &PortSpec) -> Option<u16> {
    spec.host_port.filter(|&port| port != 0)
}

/// A static host port the task asks for twice, which no node could ever satisfy.
fn duplicate_static_port(ports: &[PortSpec]) -> Option<(Protocol, u16)> {
    let statics: Vec<(Protocol, u16)> = ports
        .iter()
        .filter_map(|spec| static_port(spec).map(|host| (spec.protocol, host)))
        .collect();
    statics
        .iter()
        .enumerate()
        .find(|(i, port)| statics[..*i].contains(port))
        .map(|(_, port)| *port)
}

/// The lowest port of `range` that is neither in `used` nor in `taken`, for `protocol`.
fn lowest_free_port(
    used: &BTreeSet<(Protocol, u16)>,
    protocol: Protocol,
    range: &RangeInclusive<u16>,
    taken: &[(Protocol, u16)],
    avoid: impl Fn(u16) -> bool,
) -> Option<u16> {
    let (low, high) = (*range.start(), *range.end());
    if low > high {
        return None;
    }
    let mut used = used
        .range((protocol, low)..=(protocol, high))
        .map(|&(_, port)| port)
        .peekable();
    let mut candidate = low;
    loop {
        while used.next_if(|&port| port < candidate).is_some() {}
        let busy = used.peek() == Some(&candidate)
            || taken.contains(&(protocol, candidate))
            || avoid(candidate);
        if !busy {
            return Some(candidate);
        }
        if candidate == high {
            return None;
        }
        candidate += 1;
    }
}

/// A node's dominant share once the task is added: the larger of its memory and CPU fractions.
fn share_after(node: &NodeState, want: Resources) -> Share {
    let (have, cap) = (node.allocated, node.capacity);
    let memory = Share::new(
        have.memory_bytes.saturating_add(want.memory_bytes),
        cap.memory_bytes,
    );
    let cpu = Share::new(
        have.cpu_millis.saturating_add(want.cpu_millis),
        cap.cpu_millis,
    );
    memory.max(cpu)
}

/// An exact fraction `num / den`, compared by cross-multiplication in `u128` (two `u64` factors
/// cannot overflow it). `0/0` (nothing used of nothing) is `0/1`; `n/0` is above every finite
/// share (something used of nothing, only possible on an over-committed snapshot).
#[derive(Debug, Clone, Copy)]
struct Share {
    num: u64,
    den: u64,
}

impl Share {
    fn new(num: u64, den: u64) -> Share {
        match (num, den) {
            (0, 0) => Share { num: 0, den: 1 },
            (_, 0) => Share { num: 1, den: 0 },
            _ => Share { num, den },
        }
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Share) -> Ordering {
        (u128::from(self.num) * u128::from(other.den))
            .cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Share) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Share {
    fn eq(&self, other: &Share) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Share {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_compare_exactly() {
        let s = Share::new;
        assert_eq!(s(1, 2), s(2, 4));
        assert!(s(1, 3) < s(1, 2));
        assert!(s(u64::MAX - 1, u64::MAX) < s(u64::MAX, u64::MAX));
        assert_eq!(s(0, 0), s(0, 7));
        assert!(s(5, 0) > s(u64::MAX, 1));
        assert_eq!(s(5, 0), s(9, 0));
    }

    #[test]
    fn lowest_free_port_skips_used_and_taken() {
        use Protocol::{Tcp, Udp};
        let used: BTreeSet<(Protocol, u16)> = [(Tcp, 100), (Tcp, 102), (Udp, 101)].into();
        let check = |protocol, range: RangeInclusive<u16>, taken: &[(Protocol, u16)], want| {
            let got = lowest_free_port(&used, protocol, &range, taken, |_| false);
            assert_eq!(got, want, "{protocol:?} {range:?} {taken:?}");
        };
        check(Tcp, 100..=105, &[], Some(101));
        check(Tcp, 100..=105, &[(Tcp, 101)], Some(103));
        check(Tcp, 100..=105, &[(Udp, 101)], Some(101));
        check(Udp, 100..=105, &[], Some(100));
        check(Udp, 101..=101, &[], None);
        check(Tcp, 100..=100, &[], None);
        check(Tcp, RangeInclusive::new(5, 4), &[], None);
        check(Tcp, 65535..=65535, &[], Some(65535));
        let avoid = |p: u16| p == 101 || p == 103;
        assert_eq!(
            lowest_free_port(&used, Tcp, &(100..=105), &[], avoid),
            Some(104)
        );
        assert_eq!(lowest_free_port(&used, Tcp, &(100..=103), &[], avoid), None);
    }
}
