//! Requeues tasks stuck in `scheduled` or `starting` past their deadline (their node made no
//! progress), at most one scan per `DEADLINE_SCAN_PERIOD_MS` and `PLACE_BATCH_MAX` tasks per
//! entry.

use crate::{
    Action, DEADLINE_SCAN_PERIOD_MS, PLACE_BATCH_MAX, SCHEDULED_DEADLINE_MS, STARTING_DEADLINE_MS,
};
use orion_state::ClusterState;
use orion_types::{Command, TaskState};

/// What a requeued task's reason says.
pub(crate) const REQUEUE_REASON: &str =
    "its node made no progress before the deadline; placing it again";

pub(crate) fn decide(state: &ClusterState, now: u64, checked: &mut Option<u64>) -> Vec<Action> {
    // A clock that went backwards scans at once rather than waiting for it to catch up.
    if checked.is_some_and(|t| t <= now && now - t < DEADLINE_SCAN_PERIOD_MS) {
        return Vec::new();
    }
    *checked = Some(now);
    let stuck: Vec<String> = state
        .tasks
        .values()
        .filter(|t| {
            let age = now.saturating_sub(t.state_since);
            (t.state == TaskState::Scheduled && age > SCHEDULED_DEADLINE_MS)
                || (t.state == TaskState::Starting && age > STARTING_DEADLINE_MS)
        })
        .map(|t| t.id.clone())
        .take(PLACE_BATCH_MAX)
        .collect();
    if stuck.is_empty() {
        return Vec::new();
    }
    vec![Action::Propose(Command::Requeue {
        task_ids: stuck,
        reason: REQUEUE_REASON.to_string(),
        at: now,
    })]
}
