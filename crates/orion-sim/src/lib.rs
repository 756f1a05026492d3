//! `orion-sim`: the seeded whole-cluster simulator. N nodes (real openraft, real state
//! machine on real redb, the real API router, the real gossip engine, the controller's and
//! the executor's real drivers and decisions) run in one process, on one thread, on virtual
//! time; only IO is replaced: the network for RPC and gossip (`net`), the disks
//! (`orion_raft::SimDisk`), the container engines (`orion_executor::FakeRuntime`) and the
//! clock (tokio's paused time). A seeded workload and a seeded nemesis run against them, and
//! the run ends with the checks of `checker` (shared with the fault suite of
//! `crates/orion/tests/faults.rs`): no acknowledged write lost, consistent reads
//! linearizable, applied indexes never going back, no panic; and after healing, every live
//! task running exactly once and nothing else running.
//!
//! The same seed gives the same trace (`trace`), byte for byte, so a failing seed replays
//! exactly: `cargo run -p orion-sim --release -- --seed S --nodes N`. A sweep runs seeds on
//! one thread per core (`sweep`), each seed alone on its thread.

pub mod checker;
pub mod history;
pub mod linearizability;
pub mod net;
pub mod rng;
pub mod sim;
pub mod sweep;
pub mod trace;

pub use sim::{Config, Report, run};
pub use sweep::{default_jobs, sweep};
