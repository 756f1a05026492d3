//! Percentiles of single placements, which criterion does not report. Ignored by default: run
//! with `cargo test -p orion-scheduler --release --test latency -- --ignored --nocapture`.

mod common;

use orion_scheduler::place;
use orion_types::Strategy;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Issue 4's sample: 10,000 single placements per cluster size.
const SAMPLES: usize = 10_000;

fn percentiles(nodes: usize) -> (Duration, Duration, Duration) {
    let snapshot = common::cluster(nodes, Strategy::Spread);
    let tasks = [common::task(0, true)];
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            black_box(place(black_box(&snapshot), black_box(&tasks)));
            start.elapsed()
        })
        .collect();
    times.sort();
    (
        times[SAMPLES / 2],
        times[SAMPLES * 99 / 100],
        times[SAMPLES - 1],
    )
}

#[test]
#[ignore = "a measurement, run in release"]
fn single_placement_percentiles() {
    for nodes in [10, 100, 1_000, 5_000] {
        let (p50, p99, max) = percentiles(nodes);
        println!("one task among {nodes:>5} nodes: p50 {p50:?}  p99 {p99:?}  max {max:?}");
    }
    let snapshot = common::cluster(5_000, Strategy::Spread);
    for port in [false, true] {
        let tasks: Vec<_> = (0..10_000).map(|i| common::task(i, port)).collect();
        let start = Instant::now();
        black_box(place(&snapshot, &tasks));
        println!(
            "10,000 tasks onto 5,000 nodes (dynamic port: {port}): {:?}",
            start.elapsed()
        );
    }
    // The pending queue's worst case: every task fits nowhere, so each also builds its reason.
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let mut task = common::task(i, false);
            task.resources.memory_bytes = 1 << 40;
            task
        })
        .collect();
    let start = Instant::now();
    let decisions = black_box(place(&snapshot, &tasks));
    println!(
        "10,000 tasks that fit nowhere, 5,000 nodes: {:?}",
        start.elapsed()
    );
    println!("  e.g. {:?}", decisions[0]);
}
