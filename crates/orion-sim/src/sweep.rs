//! Runs many seeds on several threads at once. Each seed is still one whole run on one
//! thread with its own runtime, network, disks and generators, so a seed's trace does not
//! depend on what runs beside it (`a_seed_run_beside_others_gives_its_own_trace`); only the
//! wall time does. Reports come back in the order of the configs, each as soon as it and
//! every one before it are done.

use crate::sim::{Config, Report, run};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Stack of each sweep thread: a run's futures nest deeply (a node's whole agent in one
/// task tree), and the main thread's 8 MiB is what a single run has always had. Only the
/// pages touched are committed.
const STACK_BYTES: usize = 8 << 20;

/// How many threads a sweep uses by default: one per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every config on up to `jobs` threads and hands each report to `each`, in the order
/// of `cfgs`.
pub fn sweep(cfgs: &[Config], jobs: usize, mut each: impl FnMut(Report)) {
    let jobs = jobs.clamp(1, cfgs.len().max(1));
    if jobs == 1 {
        cfgs.iter().for_each(|cfg| each(run(cfg)));
        return;
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (tx, next) = (tx.clone(), &next);
            let worker = move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cfg) = cfgs.get(i) else { return };
                    if tx.send((i, run(cfg))).is_err() {
                        return;
                    }
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("orion-sim".to_string())
                .stack_size(STACK_BYTES)
                .spawn_scoped(scope, worker)
            {
                eprintln!("cannot start a sweep thread ({e}); fewer run at once");
            }
        }
        drop(tx);
        let mut done: BTreeMap<usize, Report> = BTreeMap::new();
        let mut due = 0;
        for (i, report) in rx {
            done.insert(i, report);
            while let Some(report) = done.remove(&due) {
                each(report);
                due += 1;
            }
        }
        // What no thread reported (none could start, or one died outside `run`, which
        // catches a run's panics) runs here, in order, beside what the others reported.
        for (i, cfg) in cfgs.iter().enumerate().skip(due) {
            each(done.remove(&i).unwrap_or_else(|| run(cfg)));
        }
    });
}
