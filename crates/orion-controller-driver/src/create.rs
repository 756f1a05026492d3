//! The command a new task is created with, shared by the agent's API and the simulator's.
//!
//! On the leader a new task is placed in the entry that creates it (`CreatePlacedTask`, one
//! commit instead of two), by the controller's placement code (`place_at_creation`). Creates
//! run concurrently, and each one's entry applies only later: so that they see each other's
//! choices, the placements proposed at creation stay booked here (`Unapplied`) until their
//! create returns, however it returns (answered, failed, or dropped because the client went
//! away). With them counted, a burst of creates spreads as the controller's batches do and
//! two creates never pick the same dynamic port. `apply` checks the room again, so a booking
//! only steers choices; it never lets a node be overfilled.

use orion_controller::{Member, Unapplied, place_at_creation};
use orion_gossip::Gossip;
use orion_raft::RaftNode;
use orion_state::ClusterState;
use orion_types::env::IdSource;
use orion_types::{Command, NodeId, NodeMeta, TaskSpec, UnixMillis};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// The placements at creation this node proposed whose creates have not returned yet.
#[derive(Debug, Default)]
pub struct CreatePlacer {
    booked: Mutex<Vec<Unapplied>>,
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
    /// task waits and the task fits (booked until the returned `Booking` is dropped), else a
    /// plain `CreateTask`. The membership view is copied only when a placement is tried.
    pub fn command(
        &self,
        raft: &RaftNode,
        gossip: &Gossip<NodeMeta>,
        task_id: &str,
        spec: &TaskSpec,
        at: UnixMillis,
        ids: &dyn IdSource,
    ) -> (Command, Booking<'_>) {
        // Only a leader places, and only when no task waits (`place_at_creation` says so
        // again under the lock): otherwise the membership view is not worth its copy.
        let place = raft.is_leader() && !raft.read(ClusterState::has_pending);
        let members = if place {
            crate::members_view(gossip)
        } else {
            BTreeMap::new()
        };
        raft.read(|s| self.decide(place, s, &members, task_id, spec, at, ids))
    }

    /// `command` over a given replica `state` (under its read lock) and membership view;
    /// `place` false (a follower) gives a plain `CreateTask`.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        place: bool,
        state: &ClusterState,
        members: &BTreeMap<NodeId, Member>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use orion_controller::MemberStatus;
    use orion_types::api::parse_task_request;

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
        let placer = CreatePlacer::default();
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
        let placer = CreatePlacer::default();
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

    #[test]
    fn a_follower_or_a_task_that_fits_nowhere_is_created_plain() {
        let (state, members) = cluster(&["n1"]);
        let ids = Counter(0.into());
        let placer = CreatePlacer::default();
        let small = parse_task_request(br#"{"image":"x"}"#).expect("valid");
        let (cmd, _b) = placer.decide(false, &state, &members, "t1", &small, 5, &ids);
        assert!(matches!(cmd, Command::CreateTask { .. }), "{cmd:?}");
        let huge = parse_task_request(br#"{"image":"x","memory":"2g"}"#).expect("valid");
        let (cmd, _b) = placer.decide(true, &state, &members, "t2", &huge, 5, &ids);
        assert!(matches!(cmd, Command::CreateTask { .. }), "{cmd:?}");
        assert_eq!(placer.booked(), 0);
    }
}
