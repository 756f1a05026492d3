//! `orion-bench`: the measuring helpers of `scripts/bench.sh`. Not part of the product.
//!
//! - `load`: an HTTP load generator (tokio + reqwest) that drives Orion's `POST /tasks` or
//!   etcd's JSON gateway `POST /v3/kv/put` the same way, at N concurrent clients, and prints
//!   one JSON line with throughput and latency percentiles.
//! - `startup`: spawns the agent on a fresh data dir and times process start until `/health`
//!   answers 200, N times.
//! - `gossip`: in-process SWIM members (the agent's own gossip crate and metadata) and the bytes
//!   each sends per second at 8, 32 and 128 members.
//! - `gossip-sim`: the same members on an in-memory network in simulated time (paused tokio
//!   clock), up to thousands of members: convergence time, bytes per node, largest packet.
//! - `lifeguard`: the Lifeguard experiment in simulated time: members starved at random,
//!   false `Down` declarations and detection time of killed members, Lifeguard on and off.
//! - `scale`: the leader's controller and the replicated state with 1,000 nodes and 10,000
//!   tasks in process: placement, a node's death and re-placement, memory, Raft log bytes.
//! - `payload-size`: the JSON size of the `CreateTask` command a request body becomes, so the
//!   etcd comparison stores values of the same size.
//!
//! Every result goes to stdout as one JSON object per line; progress goes to stderr.

mod gossip;
mod gossip_sim;
mod load;
mod scale;
mod startup;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "orion-bench",
    about = "Measurement helpers for scripts/bench.sh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Load(load::LoadArgs),
    Startup(startup::StartupArgs),
    Gossip(gossip::GossipArgs),
    GossipSim(gossip_sim::SimArgs),
    Lifeguard(gossip_sim::LifeguardArgs),
    Scale(scale::ScaleArgs),
    PayloadSize(load::PayloadArgs),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let cli = Cli::parse();
    let result: Result<(), BoxError> = match cli.cmd {
        Cmd::Startup(a) => startup::run(a),
        Cmd::PayloadSize(a) => load::payload_size(a),
        Cmd::Load(a) => runtime().and_then(|rt| rt.block_on(load::run(a))),
        Cmd::Gossip(a) => runtime().and_then(|rt| rt.block_on(gossip::run(a))),
        Cmd::GossipSim(a) => gossip_sim::run_sim(a),
        Cmd::Lifeguard(a) => gossip_sim::run_lifeguard(a),
        Cmd::Scale(a) => scale::run(a),
    };
    if let Err(e) = result {
        eprintln!("orion-bench: {e}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Latency summary in milliseconds of sorted samples.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    pub fn of(mut samples: Vec<std::time::Duration>) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let n = samples.len();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| ms(samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]);
        Some(Summary {
            n,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: ms(samples[n - 1]),
            mean_ms: samples.iter().map(|d| ms(*d)).sum::<f64>() / n as f64,
        })
    }
}
