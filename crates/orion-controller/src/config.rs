//! Seeds the cluster config: while the state holds none, the bootstrapping node's leader turn
//! proposes its flags, as a seed that never overwrites a config set meanwhile. An invalid seed
//! is never proposed: `apply` would ignore it, and every applied entry would propose it again.

use crate::{Action, Settings};
use orion_state::ClusterState;
use orion_types::Command;

pub(crate) fn decide(state: &ClusterState, settings: &Settings, now: u64) -> Vec<Action> {
    match (state.config, settings.seed_config) {
        (None, Some(seed)) if seed.validate().is_ok() => {
            vec![Action::Propose(Command::SetClusterConfig {
                config: seed,
                if_unset: true,
                at: now,
            })]
        }
        _ => Vec::new(),
    }
}
