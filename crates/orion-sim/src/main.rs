//! The simulator's command line: one seed (`--seed S`) or a sweep (`--seeds A..B`), one line
//! per seed, a summary after a sweep, and a non-zero exit when any seed found a violation.

use clap::Parser;
use orion_sim::{Config, default_jobs, sweep};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a run allocates and frees small buffers (RPC bytes,
/// state rows, task copies) at a high rate, and glibc's `malloc`/`free` with their
/// consolidation were about a sixth of the CPU (`perf`, BENCHMARKS.md section 8). The
/// allocator changes no decision: nothing in a run depends on addresses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Seeded deterministic simulation of an Orion cluster")]
struct Args {
    /// One seed to run.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A half-open range of seeds to sweep, `A..B`.
    #[arg(long)]
    seeds: Option<String>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=15))]
    nodes: u64,
    /// Simulated seconds of workload under faults.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    fault_secs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Seeds run at once in a sweep, each on a thread of its own (default: one per core).
    /// A seed's trace does not depend on it; its wall time does.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: Option<u64>,
    /// Write every trace line of a single-seed run to this file (to diff two runs).
    #[arg(long)]
    trace_out: Option<std::path::PathBuf>,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--seeds: {s:?} is not of the form A..B"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|e| format!("--seeds: start {a:?}: {e}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|e| format!("--seeds: end {b:?}: {e}"))?;
    if b <= a {
        return Err(format!("--seeds: {s:?} is empty"));
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match (&args.seeds, args.seed) {
        (Some(r), _) => match parse_range(r) {
            Ok((a, b)) => a..b,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(s)) => s..s.saturating_add(1),
        (None, None) => 0..1,
    };
    let is_sweep = args.seeds.is_some();
    let jobs = args.jobs.map_or_else(default_jobs, |j| j as usize);
    let cfgs: Vec<Config> = seeds
        .map(|seed| {
            let mut cfg = Config::new(seed, args.nodes as usize);
            cfg.fault_s = args.fault_secs;
            cfg.clients = args.clients as usize;
            cfg.keep_trace = args.trace_out.is_some() && !is_sweep;
            cfg
        })
        .collect();
    let mut failing = Vec::new();
    let (mut sim_s, mut seed_wall_s, mut runs) = (0.0, 0.0, 0u64);
    let started = std::time::Instant::now();
    sweep(&cfgs, jobs, |report| {
        let seed = report.seed;
        for v in &report.violations {
            eprintln!("seed {seed}: VIOLATION {v}");
        }
        if let Some(path) = &args.trace_out
            && !is_sweep
            && let Err(e) = std::fs::write(path, report.lines.join("\n") + "\n")
        {
            eprintln!("cannot write {}: {e}", path.display());
        }
        if !report.violations.is_empty() {
            eprintln!(
                "seed {seed} failed; rerun: cargo run -p orion-sim --release -- --seed {seed} --nodes {} --fault-secs {} --clients {} --trace-out trace-{seed}.txt",
                args.nodes, args.fault_secs, args.clients
            );
            failing.push(seed);
        }
        if !is_sweep {
            eprintln!("{}", report.details());
        }
        sim_s += report.sim_s;
        seed_wall_s += report.wall_s;
        runs += 1;
        println!("{}", report.line());
    });
    if is_sweep {
        // wall_s and speed: the whole sweep, as the clock on the wall saw it; per_seed_speed:
        // simulated seconds over the sum of the seeds' own wall times (one thread each).
        let wall_s = started.elapsed().as_secs_f64();
        println!(
            "summary: seeds={runs} failing={} {:?} sim_s={sim_s:.1} wall_s={wall_s:.2} speed={:.0}x jobs={} per_seed_speed={:.0}x",
            failing.len(),
            failing,
            sim_s / wall_s.max(1e-9),
            jobs.min(cfgs.len()),
            sim_s / seed_wall_s.max(1e-9)
        );
    }
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
