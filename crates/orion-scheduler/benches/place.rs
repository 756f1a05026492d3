//! Criterion benchmarks for issue 4: one task among 10 to 5,000 nodes, and 10,000 tasks onto
//! 5,000 nodes in one batch. Targets: under 100 µs per placement at 1,000 nodes (p99; see
//! `tests/latency.rs` for the percentile), and the 10,000-task batch under 1 s.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use orion_scheduler::place;
use orion_types::Strategy;
use std::hint::black_box;
use std::time::Duration;

fn one_task(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_task");
    for nodes in [10, 100, 1_000, 5_000] {
        let snapshot = common::cluster(nodes, Strategy::Spread);
        let tasks = [common::task(0, true)];
        group.bench_with_input(BenchmarkId::new("spread", nodes), &nodes, |b, _| {
            b.iter(|| place(black_box(&snapshot), black_box(&tasks)))
        });
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_10000_tasks_5000_nodes");
    // One iteration takes about half a second: the fewest samples criterion allows, with one
    // iteration each.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5));
    for (name, strategy, port) in [
        ("spread", Strategy::Spread, false),
        ("spread_dynamic_port", Strategy::Spread, true),
        ("binpack", Strategy::Binpack, false),
    ] {
        let snapshot = common::cluster(5_000, strategy);
        let tasks: Vec<_> = (0..10_000).map(|i| common::task(i, port)).collect();
        group.bench_function(name, |b| {
            b.iter(|| place(black_box(&snapshot), black_box(&tasks)))
        });
    }
    group.finish();
}

criterion_group!(benches, one_task, batch);
criterion_main!(benches);
