//! Indexes over the tasks, kept up to date as commands apply, so the questions asked after
//! every applied entry cost what changed instead of a scan of every task: which tasks are
//! placed on a node (the executor's share), which wait for a node (the scheduler's work), and
//! what the tasks holding resources on each node use (the scheduler's and `apply`'s fit).
//!
//! Each task's contribution is recorded (`Held`), so a change is undone and redone from the
//! task's new value: `ClusterState::apply` calls `update` for every task key it touched, the
//! same keys the store persists. A state that was loaded (rows, snapshot JSON) is indexed in
//! full (`rebuild`). Architecture invariant: the index is derived data only; it is never
//! serialized, and equals a rebuild from the tasks after every apply (the property tests in
//! `tests.rs` check it against full scans).

use crate::NodeUsage;
use orion_types::{NodeId, Protocol, Resources, Task, TaskId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};

/// A node, what a task holds there, and its host ports.
type Holds = (NodeId, Resources, Vec<(Protocol, u16)>);

/// What one task counts for in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// The node its current allocation is on.
    placed_on: Option<NodeId>,
    pending: bool,
    /// The node it holds resources on, what it holds there, and its host ports.
    holds: Option<Holds>,
}

impl Held {
    fn of(t: &Task) -> Held {
        Held {
            placed_on: t.placed_on().map(str::to_string),
            pending: t.needs_placement(),
            holds: match (&t.node, t.holds_resources()) {
                (Some(n), true) => Some((
                    n.clone(),
                    t.spec.resources(),
                    t.spec.bound_ports(&t.host_ports).collect(),
                )),
                _ => None,
            },
        }
    }
}

/// Resources held on one node, with host ports counted (two tasks may briefly name the same
/// port in a state built by hand; the count keeps removal exact).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Use {
    allocated: Resources,
    /// The tasks holding: the executor's working set on the node (`holding_on`). Hashed,
    /// not ordered: an insert into a B-tree of thousands of random ids cost a cache miss per
    /// comparison, on every member for every task placed; who asks sorts.
    holders: HashMap<TaskId, Holder>,
    ports: BTreeMap<(Protocol, u16), u32>,
}

/// A holding task's current value, as a weak reference that follows it: `update` points it at
/// the task's `Arc` after every change (`Arc::make_mut` moves a task that has weak references
/// before changing it, and a task replaced by a new `Arc` is pointed at anew). The executor's
/// share is read through these, one pointer each, under the state's read lock: looking each
/// id up in the tasks' B-tree held that lock 7-9 ms for a node of 10,000 tasks (every apply,
/// and every API read queued behind the waiting apply, waited). Not part of what makes two
/// states equal (a state decoded from JSON holds other allocations). The property tests check
/// that a reference that upgrades holds its task's current value, and
/// `the_executor_share_follows_tasks_through_moves_and_copies` that applies keep it pointing
/// at the current `Arc`.
#[derive(Debug, Clone)]
pub(crate) struct Holder(Weak<Task>);

impl Holder {
    fn of(task: &Arc<Task>) -> Holder {
        Holder(Arc::downgrade(task))
    }

    /// The task, if it is still where this points.
    pub(crate) fn task(&self) -> Option<Arc<Task>> {
        self.0.upgrade()
    }
}

impl PartialEq for Holder {
    fn eq(&self, _: &Holder) -> bool {
        true
    }
}

impl Eq for Holder {}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Index {
    held: HashMap<TaskId, Held>,
    /// Hashed for the same reason as `Use::holders`.
    by_node: HashMap<NodeId, HashSet<TaskId>>,
    pending: BTreeSet<TaskId>,
    usage: BTreeMap<NodeId, Use>,
    shares: ShareVersions,
    waits: WaitOrder,
}

/// The waiting tasks in the order they began to wait, by a sequence number this index gives
/// (from 1): what lets the controller place only the tasks that began waiting since its last
/// pass. Numbers are local to one index (a rebuilt index numbers afresh, in id order); not part
/// of equality.
#[derive(Debug, Clone, Default)]
struct WaitOrder {
    /// The last number given (0: none yet).
    last: u64,
    by_seq: BTreeMap<u64, TaskId>,
    seq_of: HashMap<TaskId, u64>,
}

impl PartialEq for WaitOrder {
    fn eq(&self, _: &WaitOrder) -> bool {
        true
    }
}

impl Eq for WaitOrder {}

/// Per node, a value that changes whenever a task placed there (or leaving it) is touched by
/// an applied command: what the node's executor compares instead of hashing its whole share
/// after every applied entry. Drawn from one counter per process, so a rebuilt index (a
/// snapshot installed) never shows a value seen before. Derived data: not part of equality.
#[derive(Debug, Clone)]
struct ShareVersions {
    /// What a node that nothing touched since the index was built shows.
    born: u64,
    by_node: HashMap<NodeId, u64>,
}

static SHARE_VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_share_version() -> u64 {
    SHARE_VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for ShareVersions {
    fn default() -> ShareVersions {
        ShareVersions {
            born: next_share_version(),
            by_node: HashMap::new(),
        }
    }
}

impl PartialEq for ShareVersions {
    fn eq(&self, _: &ShareVersions) -> bool {
        true
    }
}

impl Eq for ShareVersions {}

impl ShareVersions {
    fn touch(&mut self, node: &str) {
        let v = next_share_version();
        match self.by_node.get_mut(node) {
            Some(slot) => *slot = v,
            None => {
                self.by_node.insert(node.to_string(), v);
            }
        }
    }

    fn get(&self, node: &str) -> u64 {
        self.by_node.get(node).copied().unwrap_or(self.born)
    }
}

impl Index {
    /// The index of `tasks`, from scratch.
    pub(crate) fn rebuild(tasks: &BTreeMap<TaskId, Arc<Task>>) -> Index {
        let mut index = Index::default();
        for (id, t) in tasks {
            index.add(id, Held::of(t), t);
        }
        index
    }

    /// Brings task `id` up to date with its value in `tasks` (gone if absent). True if what
    /// the task held on a node was released or changed: room a waiting task may fit into. A
    /// task that begins to wait, or to hold, makes no room.
    pub(crate) fn update(&mut self, tasks: &BTreeMap<TaskId, Arc<Task>>, id: &str) -> bool {
        let current = tasks.get(id);
        let now = current.map(|t| Held::of(t));
        let old = self.held.get(id);
        // Any touch of a task placed on a node (or leaving it) is news for that node's
        // executor, even when nothing indexed here changed (its state, a report, health).
        let nodes = [
            old.and_then(|h| h.placed_on.as_ref()),
            now.as_ref().and_then(|h| h.placed_on.as_ref()),
        ];
        for node in nodes.into_iter().flatten() {
            self.shares.touch(node);
        }
        if old == now.as_ref() {
            // Nothing indexed changed, but the task may have moved.
            if let Some(t) = current {
                self.follow(id, t);
            }
            return false;
        }
        let old_holds = old.and_then(|h| h.holds.as_ref());
        let released =
            old_holds.is_some() && now.as_ref().and_then(|h| h.holds.as_ref()) != old_holds;
        if let Some(old) = self.held.remove(id) {
            self.remove(id, &old);
        }
        if let (Some(now), Some(t)) = (now, current) {
            self.add(id, now, t);
        }
        released
    }

    /// Points task `id`'s holder, if it holds, at `task`, its current `Arc`: after a change
    /// (`update`), or after `Arc::make_mut` moved or copied a task that did not change. A
    /// holder left behind by a move without a change is no error: it no longer upgrades (the
    /// share looks the task up instead) or still points at a copy of the same value.
    pub(crate) fn follow(&mut self, id: &str, task: &Arc<Task>) {
        if let Some(Held {
            holds: Some((n, _, _)),
            ..
        }) = self.held.get(id)
            && let Some(holder) = self.usage.get_mut(n).and_then(|u| u.holders.get_mut(id))
            && !std::ptr::eq(holder.0.as_ptr(), Arc::as_ptr(task))
        {
            *holder = Holder::of(task);
        }
    }

    fn add(&mut self, id: &str, h: Held, task: &Arc<Task>) {
        if let Some(n) = &h.placed_on {
            self.by_node
                .entry(n.clone())
                .or_default()
                .insert(id.to_string());
        }
        if h.pending {
            self.pending.insert(id.to_string());
            let w = &mut self.waits;
            w.last += 1;
            w.by_seq.insert(w.last, id.to_string());
            w.seq_of.insert(id.to_string(), w.last);
        }
        if let Some((n, res, ports)) = &h.holds {
            let u = self.usage.entry(n.clone()).or_default();
            u.allocated = u.allocated.saturating_add(*res);
            u.holders.insert(id.to_string(), Holder::of(task));
            for p in ports {
                *u.ports.entry(*p).or_default() += 1;
            }
        }
        self.held.insert(id.to_string(), h);
    }

    fn remove(&mut self, id: &str, h: &Held) {
        if let Some(n) = &h.placed_on
            && let Some(set) = self.by_node.get_mut(n)
        {
            set.remove(id);
            if set.is_empty() {
                self.by_node.remove(n);
            }
        }
        if h.pending {
            self.pending.remove(id);
            if let Some(seq) = self.waits.seq_of.remove(id) {
                self.waits.by_seq.remove(&seq);
            }
        }
        if let Some((n, res, ports)) = &h.holds
            && let Some(u) = self.usage.get_mut(n)
        {
            u.allocated = u.allocated.saturating_sub(*res);
            u.holders.remove(id);
            for p in ports {
                if let Some(c) = u.ports.get_mut(p) {
                    *c -= 1;
                    if *c == 0 {
                        u.ports.remove(p);
                    }
                }
            }
            if u.holders.is_empty() {
                self.usage.remove(n);
            }
        }
    }

    /// Ids of the tasks placed on `node`, in id order (sorted here, for the metrics and the
    /// tests that ask).
    pub(crate) fn on_node(&self, node: &str) -> impl Iterator<Item = &TaskId> + '_ {
        let mut ids: Vec<&TaskId> = self.by_node.get(node).into_iter().flatten().collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    /// The tasks holding resources on `node` (`Task::holds_resources`), by id with a reference
    /// to each, in no particular order.
    pub(crate) fn holding_on(&self, node: &str) -> impl Iterator<Item = (&TaskId, &Holder)> + '_ {
        self.usage
            .get(node)
            .into_iter()
            .flat_map(|u| u.holders.iter())
    }

    /// Whether task `id` holds resources on `node`.
    pub(crate) fn holds_on(&self, node: &str, id: &str) -> bool {
        self.usage
            .get(node)
            .is_some_and(|u| u.holders.contains_key(id))
    }

    /// Changes whenever a task placed on `node` was touched (see `ShareVersions`).
    pub(crate) fn share_version(&self, node: &str) -> u64 {
        self.shares.get(node)
    }

    /// The last wait number given: every task that begins to wait from now on gets a larger
    /// one.
    pub(crate) fn wait_seq(&self) -> u64 {
        self.waits.last
    }

    /// Ids of the tasks waiting for a node that began to wait after number `seq`, in the
    /// order they began.
    pub(crate) fn waiting_after(&self, seq: u64) -> impl Iterator<Item = &TaskId> + '_ {
        self.waits
            .by_seq
            .range(seq.saturating_add(1)..)
            .map(|(_, id)| id)
    }

    /// Ids of the tasks waiting for a node, in id order.
    pub(crate) fn pending(&self) -> &BTreeSet<TaskId> {
        &self.pending
    }

    /// What holds resources on each node.
    pub(crate) fn usage(&self) -> BTreeMap<NodeId, NodeUsage> {
        self.usage
            .iter()
            .map(|(n, u)| {
                (
                    n.clone(),
                    NodeUsage {
                        allocated: u.allocated,
                        ports: u.ports.keys().copied().collect(),
                        tasks: u32::try_from(u.holders.len()).unwrap_or(u32::MAX),
                    },
                )
            })
            .collect()
    }

    /// What others than `task` hold on `node`: resources and host ports.
    pub(crate) fn used_by_others(
        &self,
        node: &str,
        task: &str,
    ) -> (Resources, BTreeSet<(Protocol, u16)>) {
        let Some(u) = self.usage.get(node) else {
            return (Resources::default(), BTreeSet::new());
        };
        let mut used = u.allocated;
        let mut ports = u.ports.clone();
        if let Some(Held {
            holds: Some((n, res, own)),
            ..
        }) = self.held.get(task)
            && n == node
        {
            used = used.saturating_sub(*res);
            for p in own {
                if let Some(c) = ports.get_mut(p) {
                    *c -= 1;
                    if *c == 0 {
                        ports.remove(p);
                    }
                }
            }
        }
        (used, ports.into_keys().collect())
    }
}
