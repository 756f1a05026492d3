//! The simulator in CI: one seed twice gives one trace, a fixed budget of seeds finds no
//! violation, and the bug it found in `RaftNode` stays fixed.
//!
//! A long sweep: `ORION_SIM_SEEDS=0..500 cargo test -p orion-sim --release --test sim -- --nocapture`.

use orion_raft::{RaftConfig, RaftNode, SimDisk, SimParts, WriteError};
use orion_sim::{Config, default_jobs, run, sweep};
use std::time::Duration;

/// Seeds CI runs on every change: each is a 5-node run with 30 simulated seconds of faults,
/// about 13 s of user CPU in a debug build since gossip, the controllers and the executors run
/// too (each create is now three or four Raft entries: create, place, starting, running): 10
/// seeds and the other tests took 146 s of user CPU on the loaded 2-core machine, so 8 seeds
/// keep the budget near two minutes. Among them some catch up by snapshot and all see nodes
/// declared dead (asserted below). They run as a sweep, one seed per core at once: 8 seeds
/// took 50 s of wall time one after the other and 28 s as a sweep on the 2-core machine, so
/// the budget now holds 12.
const CI_SEEDS: std::ops::Range<u64> = 1..13;
const CI_FAULT_SECS: u64 = 30;

fn seeds_from_env() -> Option<std::ops::Range<u64>> {
    let s = std::env::var("ORION_SIM_SEEDS").ok()?;
    let (a, b) = s.split_once("..")?;
    Some(a.trim().parse().ok()?..b.trim().parse().ok()?)
}

fn check(cfg: &Config, report: &orion_sim::Report) {
    println!("{}", report.line());
    println!("{}", report.details());
    assert!(
        report.violations.is_empty(),
        "seed {} found violations (rerun: cargo run -p orion-sim --release -- --seed {} --nodes {} --fault-secs {} --clients {}):\n{}",
        cfg.seed,
        cfg.seed,
        cfg.nodes,
        cfg.fault_s,
        cfg.clients,
        report.violations.join("\n")
    );
    assert!(
        report.writes > 0,
        "seed {}: no write was acknowledged",
        report.seed
    );
    assert!(
        report.containers > 0,
        "seed {}: no container ran at the end: the executors did nothing",
        report.seed
    );
}

/// The second run of the seed runs in a sweep, on a thread of its own beside another seed:
/// what runs beside a seed must not change its trace either.
#[test]
fn one_seed_twice_gives_the_same_trace() {
    let mut cfg = Config::new(42, 3);
    cfg.fault_s = 15;
    let a = run(&cfg);
    let mut other = cfg.clone();
    other.seed = 43;
    let mut reports = Vec::new();
    sweep(&[cfg.clone(), other], 2, |r| reports.push(r));
    let [b, c] = <[_; 2]>::try_from(reports).expect("two reports");
    assert!(
        a.events > 100,
        "a trivial trace proves nothing: {}",
        a.events
    );
    assert_eq!(a.trace, b.trace, "{}\n{}", a.line(), b.line());
    assert_eq!(a.writes, b.writes);
    assert_eq!(c.seed, 43, "reports come back in the order of the configs");
    assert_ne!(c.trace, a.trace, "another seed, another run");
}

#[test]
fn seeds_find_no_violation() {
    let seeds = seeds_from_env().unwrap_or(CI_SEEDS);
    let cfgs: Vec<Config> = seeds
        .map(|seed| {
            let mut cfg = Config::new(seed, 5);
            if seeds_from_env().is_none() {
                cfg.fault_s = CI_FAULT_SECS;
            }
            cfg
        })
        .collect();
    let (mut snapshots, mut downs) = (0, 0);
    let mut cfg = cfgs.iter();
    sweep(&cfgs, default_jobs(), |report| {
        check(cfg.next().expect("one report per config"), &report);
        snapshots += report.snapshots;
        downs += report.downs;
    });
    // The checks must have covered a node catching up by snapshot install, and gossip
    // declaring nodes dead (which the controller turns into `NodeDown` and re-placement).
    assert!(snapshots > 0, "no seed installed a snapshot");
    assert!(downs > 0, "no seed saw gossip declare a node dead");
}

/// The bug: `RaftNode::pause` waited on a clone of openraft's metrics receiver that never
/// marked a value seen, so after the first metrics change every wait returned at once and a
/// write or consistent read waiting for a leader spun for `leader_wait_ms`. On virtual time the
/// spin never lets the clock reach the deadline: the call would never return.
#[test]
fn write_waiting_for_a_leader_pauses_instead_of_spinning() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let res = rt.block_on(async {
            let addr = "10.0.0.1:7000".parse().expect("addr");
            let mut cfg = RaftConfig::new("n0", "/nonexistent", addr, addr, "10.0.0.1:8080");
            cfg.leader_wait_ms = 1_000;
            let net = orion_sim::net::SimNet::new(
                1,
                std::sync::Arc::new(orion_sim::trace::Trace::new(false)),
            );
            let disk = SimDisk::new();
            let node = RaftNode::start_sim(
                cfg,
                SimParts {
                    transport: net.transport(0, 1),
                    disk,
                    seed: 1,
                },
            )
            .await
            .expect("start");
            // Not bootstrapped: there is no leader, metrics have changed since the start.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let res = node
                .write(orion_types::Command::DeleteTask {
                    task_id: "t".into(),
                    at: 0,
                })
                .await;
            node.shutdown().await;
            res
        });
        let _ = tx.send(res);
    });
    let res = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the write never returned: it spins instead of waiting");
    assert!(
        matches!(
            res,
            Err(WriteError::NotProposed(orion_raft::NotProposed::NoLeader))
        ),
        "{res:?}"
    );
}
