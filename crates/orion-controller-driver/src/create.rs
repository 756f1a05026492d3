//! The command a new task is created with, shared by the agent's API and the simulator's.
//!
//! On the leader a new task is placed in the entry that creates it (`CreatePlacedTask`, one
//! commit instead of two), by the controller's placement code (`place_at_creation`). Creates
//! run concurrently, and each one's entry applies only later: so that they see each other's
//! choices, the placements proposed at creation stay booked here (`Unapplied`) until their
//! entry applies (the placer observes applies, under the state's lock: from then on the state
//! counts the task) or their create returns, however it returns (answered, failed, or dropped
//! because the client went away). With them counted, a burst of creates spreads as the
//! controller's batches do and two creates never pick the same dynamic port. `apply` checks
//! the room again, so a booking only steers choices; it never lets a node be overfilled.

use orion_controller::{Liveness, Unapplied, place_at_creation};
use orion_gossip::Gossip;
use orion_raft::{ApplyObserver, RaftNode};
use orion_state::{ClusterState, Key};
use orion_types::env::IdSource;
use orion_types::{Command, NodeMeta, TaskSpec, UnixMillis};
use std::sync::{Arc, Mutex, MutexGuard};

/// The placements at creation this node proposed whose entries have not applied and whose
/// creates have not returned.
#[derive(Debug)]
pub struct CreatePlacer {
    booked: Mutex<Vec<Unapplied>>,
}

/// The gossip view as placement asks of it.
struct GossipView<'a>(&'a Gossip<NodeMeta>);

impl Liveness for GossipView<'_> {
    fn is_alive(&self, node: &str) -> bool {
        self.0.status_of(node) == Some(orion_gossip::MemberStatus::Alive)
    }
}

/// Keeps a create's placement booked while it lives; dropping it (the create returned, or its
/// future was dropped) releases the booking.
#[must_use = "the booking is released when this is dropped"]
#[derive(Debug)]
pub struct Booking<'a> {
    placer: &'a CreatePlacer,
    task_id: Option<String>,
}

impl Drop for Booking<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.task_id.take() {
            let mut booked = self.placer.lock();
            if let Some(i) = booked.iter().position(|u| u.task_id == id) {
                booked.swap_remove(i);
            }
        }
    }
}

impl CreatePlacer {
    /// A placer for `raft`'s creates, told by `raft` of every apply (see `ApplyObserver`).
    pub fn observing(raft: &RaftNode) -> Arc<CreatePlacer> {
        let placer = Arc::new(CreatePlacer::unregistered());
        raft.add_apply_observer(placer.clone());
        placer
    }

    /// A placer no store tells of applies: a booking then lasts until its create returns.
    fn unregistered() -> CreatePlacer {
        CreatePlacer {
            booked: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Unapplied>> {
        // A panic while holding the lock leaves a valid list: keep using it.
        self.booked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many placements are booked.
    #[cfg(test)]
    fn booked(&self) -> usize {
        self.lock().len()
    }

    /// The command that creates `task_id` on this node: placed at creation when it leads, no
    /// task waits and the task fits (booked until its entry applies or the returned `Booking`
    /// is dropped), else a plain `CreateTask`. The membership view is read in place.
    pub fn command(
        &self,
        raft: &RaftNode,
        gossip: &Gossip<NodeMeta>,
        task_id: &str,
        spec: &TaskSpec,
        at: UnixMillis,
        ids: &dyn IdSource,
    ) -> (Command, Booking<'_>) {
        let place = raft.is_leader();
        raft.read(|s| self.decide(place, s, &GossipView(gossip), task_id, spec, at, ids))
    }

    /// `command` over a given replica `state` (under its read lock) and membership view;
    /// `place` false (a follower) gives a plain `CreateTask`.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        place: bool,
        state: &ClusterState,
        members: &dyn Liveness,
        task_id: &str,
        spec: &TaskSpec,
        at: UnixMillis,
        ids: &dyn IdSource,
    ) -> (Command, Booking<'_>) {
        let mut booking = Booking {
            placer: self,
            task_id: None,
        };
        if place {
            // Deciding and booking under one hold of the lock: two creates never decide on
            // the same view.
            let mut booked = self.lock();
            if let Some(cmd) = place_at_creation(state, members, task_id, spec, at, ids, &booked)
                && let Some(u) = Unapplied::of(&cmd)
            {
                booking.task_id = Some(u.task_id.clone());
                booked.push(u);
                return (cmd, booking);
            }
        }
        let plain = Command::CreateTask {
            task_id: task_id.to_string(),
            spec: Box::new(spec.clone()),
            at,
        };
        (plain, booking)
    }
}

/// An applied create ends its booking: the state holds the task now, placed or not (and if
/// it was deleted since, its room is free), so counting the booking too would count it twice.
/// Under the state's write lock, so a `decide` (under its read lock) sees the task either in
/// the state or booked, never both and never neither.
impl ApplyObserver for CreatePlacer {
    fn applied(
        &self,
        _index: u64,
        cmd: Option<&Command>,
        _leader: Option<&str>,
        _state: &ClusterState,
        _touched: &[Key],
    ) {
        if let Some(Command::CreatePlacedTask { placement, .. }) = cmd {
            let mut booked = self.lock();
            if let Some(i) = booked.iter().position(|u| u.task_id == placement.task_id) {
                booked.swap_remove(i);
            }
        }
    }

    fn reset(&self, state: &ClusterState, _last_applied: u64) {
        self.lock()
            .retain(|u| !state.tasks.contains_key(&u.task_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orion_controller::{Member, MemberStatus};
    use orion_types::NodeId;
    use orion_types::api::parse_task_request;
    use std::collections::BTreeMap;

    struct Counter(std::sync::atomic::AtomicU64);

    impl IdSource for Counter {
        fn next_id(&self) -> String {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!("alloc{n}")
        }
    }

    fn cluster(nodes: &[&str]) -> (ClusterState, BTreeMap<NodeId, Member>) {
        let mut state = ClusterState::default();
        let mut members = BTreeMap::new();
        for id in nodes {
            state.apply(&Command::UpsertNode {
                meta: Box::new(NodeMeta::fixture(id, 1)),
                at: 1,
            });
            let member = Member {
                id: id.to_string(),
                status: MemberStatus::Alive,
                meta: NodeMeta::fixture(id, 1),
            };
            members.insert(id.to_string(), member);
        }
        (state, members)
    }

    fn node_of(cmd: &Command) -> Option<&str> {
        match cmd {
            Command::CreatePlacedTask { placement, .. } => Some(&placement.node),
            _ => None,
        }
    }

    #[test]
    fn concurrent_creates_spread_and_their_bookings_go_when_they_return() {
        let (state, members) = cluster(&["n1", "n2", "n3"]);
        let spec = parse_task_request(br#"{"image":"x","memory":"100m"}"#).expect("valid");
        let ids = Counter(0.into());
        let placer = CreatePlacer::unregistered();
        let creates: Vec<_> = (0..6)
            .map(|i| placer.decide(true, &state, &members, &format!("t{i}"), &spec, 5, &ids))
            .collect();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for (cmd, _) in &creates {
            *per_node.entry(node_of(cmd).expect("placed")).or_default() += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(placer.booked(), 6);
        drop(creates);
        assert_eq!(placer.booked(), 0);
    }

    /// Regression (issue 10, cancel safety), carried over from the count of creates in
    /// flight that this booking replaced: a create whose client went away mid-await must not
    /// leave its booking behind, or later creates would count a placement that never comes.
    #[test]
    fn a_booking_is_released_when_the_client_goes_away() {
        let (state, members) = cluster(&["n1"]);
        let spec = parse_task_request(br#"{"image":"x"}"#).expect("valid");
        let ids = Counter(0.into());
        let placer = CreatePlacer::unregistered();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let create = async {
                let (_cmd, _booking) = placer.decide(true, &state, &members, "t1", &spec, 5, &ids);
                std::future::pending::<()>().await;
            };
            // The client goes away: the create's future is dropped mid-await.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(5), create).await;
        });
        assert_eq!(placer.booked(), 0);
    }

    /// Tells `placer` that `cmd` applied to `state`, as the store does.
    fn apply(placer: &CreatePlacer, state: &mut ClusterState, cmd: &Command) {
        let (_, touched) = state.apply(cmd);
        placer.applied(1, Some(cmd), None, state, &touched);
    }

    /// A create whose entry applied is counted once, from the state, even while its create
    /// has not returned: counted twice, the next create's spread would lean away from it.
    #[test]
    fn an_applied_create_is_counted_once_from_the_state() {
        let (mut state, members) = cluster(&["n1", "n2"]);
        let spec = parse_task_request(br#"{"image":"x","memory":"100m"}"#).expect("valid");
        let ids = Counter(0.into());
        let placer = CreatePlacer::unregistered();
        // One task already runs on n2, so the first create goes to n1.
        state.apply(&Command::CreatePlacedTask {
            task_id: "t0".into(),
            spec: Box::new(spec.clone()),
            placement: orion_types::Placement {
                task_id: "t0".into(),
                node: "n2".into(),
                allocation: "a0".into(),
                host_ports: vec![],
            },
            at: 4,
        });
        let (first, _b1) = placer.decide(true, &state, &members, "t1", &spec, 5, &ids);
        assert_eq!(node_of(&first), Some("n1"));
        apply(&placer, &mut state, &first);
        assert_eq!(
            placer.booked(),
            0,
            "applied, though its create has not returned"
        );
        // One each now, a tie, which spread breaks towards n1; with t1 counted twice (booked
        // and in the state), n2 would look emptier.
        let (second, _b2) = placer.decide(true, &state, &members, "t2", &spec, 5, &ids);
        assert_eq!(node_of(&second), Some("n1"));
        assert_eq!(placer.booked(), 1);
        drop(_b1);
        assert_eq!(
            placer.booked(),
            1,
            "the first create's return finds nothing to release"
        );
        drop(_b2);
        assert_eq!(placer.booked(), 0);
    }

    /// A snapshot installed under bookings ends those whose tasks it holds.
    #[test]
    fn a_reset_ends_the_bookings_whose_tasks_the_state_holds() {
        let (mut state, members) = cluster(&["n1", "n2"]);
        let spec = parse_task_request(br#"{"image":"x"}"#).expect("valid");
        let ids = Counter(0.into());
        let placer = CreatePlacer::unregistered();
        let (first, _b1) = placer.decide(true, &state, &members, "t1", &spec, 5, &ids);
        let (_second, _b2) = placer.decide(true, &state, &members, "t2", &spec, 5, &ids);
        state.apply(&first);
        placer.reset(&state, 9);
        assert_eq!(placer.booked(), 1);
    }

    #[test]
    fn a_follower_or_a_task_that_fits_nowhere_is_created_plain() {
        let (state, members) = cluster(&["n1"]);
        let ids = Counter(0.into());
        let placer = CreatePlacer::unregistered();
        let small = parse_task_request(br#"{"image":"x"}"#).expect("valid");
        let (cmd, _b) = placer.decide(false, &state, &members, "t1", &small, 5, &ids);
        assert!(matches!(cmd, Command::CreateTask { .. }), "{cmd:?}");
        let huge = parse_task_request(br#"{"image":"x","memory":"2g"}"#).expect("valid");
        let (cmd, _b) = placer.decide(true, &state, &members, "t2", &huge, 5, &ids);
        assert!(matches!(cmd, Command::CreateTask { .. }), "{cmd:?}");
        assert_eq!(placer.booked(), 0);
    }
}
