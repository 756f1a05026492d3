//! Gossip in simulated time: N members of the agent's gossip crate (`lan_fast`, the agent's
//! own `NodeMeta`) over the crate's in-memory network (`orion_gossip::memnet`), all on one
//! thread on tokio's paused clock. Times are protocol time: the clock only moves when every
//! engine is idle, so a loaded machine makes a run slower in wall time, not in its figures.
//!
//! - `gossip-sim`: convergence time of N members that all join one seed at once, then bytes
//!   and packets each sends per second once converged, and the largest datagram.
//! - `lifeguard`: the Lifeguard experiment (after the paper, Dadgar et al. 2018): several
//!   members have their event loop starved at random (stalls of 100-900 ms), so they miss
//!   acks and accuse healthy peers; with the same seeds, Lifeguard on and off, count false
//!   `Down` declarations of live members and time the detection of members really killed.

use crate::BoxError;
use crate::gossip::bench_meta;
use clap::Args;
use orion_gossip::memnet::Net;
use orion_gossip::{Gossip, GossipConfig, MemberEvent};
use orion_types::NodeMeta;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Members a run may have: the in-memory network has no address limit; this keeps a typo
/// from asking for a million engines.
const MEMBERS_MAX: usize = 10_000;
/// Gossip port of every simulated member (addresses differ).
const PORT: u16 = 7000;

fn sim_addr(i: usize) -> SocketAddr {
    // 10.0.0.1 and up: any distinct addresses do on the in-memory network.
    SocketAddr::from((Ipv4Addr::from(0x0a00_0001u32 + i as u32), PORT))
}

/// A paused single-threaded runtime: protocol time, whatever the machine's load.
pub fn sim_runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?)
}

/// splitmix64: the experiment's own seeded randomness (stall times, victims).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn spawn_member(
    net: &Arc<Net>,
    i: usize,
    seed: u64,
    lifeguard: bool,
    tune: impl Fn(&mut GossipConfig),
) -> Result<Gossip<NodeMeta>, BoxError> {
    let addr = sim_addr(i);
    let mut cfg = GossipConfig::lan_fast(format!("bench-node-{i}"), addr, addr, 1);
    tune(&mut cfg);
    cfg.seed = seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    cfg.lifeguard.enabled = lifeguard;
    let ip = match addr {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => Ipv4Addr::LOCALHOST,
    };
    Ok(orion_gossip::spawn_with_transport(
        cfg,
        bench_meta(i, ip, 1),
        net.bind(addr),
    )?)
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Member counts to measure, comma separated
    #[arg(long, value_delimiter = ',', default_value = "8,32,128,1000")]
    sizes: Vec<usize>,
    /// Wait after convergence before measuring, in simulated seconds: the join's updates
    /// drain from the piggyback queues, so the window sees the steady state
    #[arg(long, default_value_t = 10.0)]
    settle_s: f64,
    /// Measurement window after convergence and settling, in simulated seconds
    #[arg(long, default_value_t = 10.0)]
    window_s: f64,
    /// Give up on convergence after this many simulated seconds
    #[arg(long, default_value_t = 60.0)]
    converge_s: f64,
    /// Seed of the members' RNGs
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Override `max_transmissions` of `lan_fast` (to compare settings)
    #[arg(long)]
    max_transmissions: Option<u8>,
}

/// Where the missing (observer, member) pairs are, for `ORION_BENCH_TRACE`: members SWIM does
/// not count as active at the observer, members SWIM knows whose metadata has not come, and
/// members the view holds as down; then the members missed most, and how many observers
/// miss them.
fn trace_missing(nodes: &[Gossip<NodeMeta>], n: usize) {
    let (mut missing, mut swim_unknown, mut no_meta, mut down) = (0, 0, 0, 0);
    let mut missed: HashMap<String, usize> = HashMap::new();
    let mut generations = 0;
    for g in nodes {
        let live = g.live_count();
        if live >= n {
            continue;
        }
        let s = g.stats();
        missing += n - live;
        swim_unknown += (n as u64 - 1).saturating_sub(s.swim_members);
        no_meta += s.metas_missing;
        let members = g.members();
        down += members.iter().filter(|m| !m.status.is_live()).count();
        generations += members.iter().filter(|m| m.generation > 1).count();
        let seen: BTreeSet<&str> = members
            .iter()
            .filter(|m| m.status.is_live())
            .map(|m| m.node_id.as_str())
            .collect();
        for i in 0..n {
            let id = format!("bench-node-{i}");
            if !seen.contains(id.as_str()) {
                *missed.entry(id).or_default() += 1;
            }
        }
    }
    if missing == 0 {
        return;
    }
    let mut top: Vec<(String, usize)> = missed.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let members_missed = top.len();
    top.truncate(6);
    eprintln!(
        "  missing pairs {missing}: not active in SWIM {swim_unknown}, metadata not come {no_meta}, \
         down in view {down}; rejoined generations seen {generations}; {members_missed} members missed, \
         most: {top:?}"
    );
}

pub fn run_sim(a: SimArgs) -> Result<(), BoxError> {
    for &n in &a.sizes {
        if !(2..=MEMBERS_MAX).contains(&n) {
            return Err(format!("size {n}: use 2 to {MEMBERS_MAX} members").into());
        }
        let wall = std::time::Instant::now();
        let line = sim_runtime()?.block_on(converge_once(n, &a))?;
        let wall_s = wall.elapsed().as_secs_f64();
        let mut line = line;
        line["wall_s"] = serde_json::json!(wall_s);
        println!("{line}");
        eprintln!(
            "gossip-sim {n} members: converged in {:.2} s (simulated), {:.0} B/s per node, wall {wall_s:.1} s",
            line["converge_s"].as_f64().unwrap_or(f64::NAN),
            line["bytes_per_s_per_node_mean"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

async fn converge_once(n: usize, a: &SimArgs) -> Result<serde_json::Value, BoxError> {
    let net = Arc::new(Net::default());
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(spawn_member(&net, i, a.seed, true, |c| {
            if let Some(t) = a.max_transmissions {
                c.max_transmissions = t;
            }
        })?);
    }
    let seed = [nodes[0].advertise_addr()];
    let t0 = Instant::now();
    for g in &nodes[1..] {
        g.join(&seed).await?;
    }
    let deadline = t0 + Duration::from_secs_f64(a.converge_s);
    let trace = std::env::var_os("ORION_BENCH_TRACE").is_some();
    let mut ticks = 0u64;
    let converged = loop {
        if nodes.iter().all(|g| g.live_count() >= n) {
            break true;
        }
        ticks += 1;
        if trace && ticks.is_multiple_of(10) {
            let mut live: Vec<usize> = nodes.iter().map(|g| g.live_count()).collect();
            live.sort_unstable();
            let sent: u64 = nodes.iter().map(|g| g.stats().packets_sent).sum();
            eprintln!(
                "t={:.1}s live min {} median {} max {}; packets sent {sent}",
                t0.elapsed().as_secs_f64(),
                live[0],
                live[n / 2],
                live[n - 1]
            );
            trace_missing(&nodes, n);
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let converge_s = t0.elapsed().as_secs_f64();
    let live_min = nodes.iter().map(|g| g.live_count()).min().unwrap_or(0);
    let at_converged: Vec<_> = nodes.iter().map(|g| g.stats()).collect();
    let join_bytes_mean =
        at_converged.iter().map(|s| s.bytes_sent).sum::<u64>() as f64 / n as f64 / converge_s;
    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let before: Vec<_> = nodes.iter().map(|g| g.stats()).collect();
    let window = Duration::from_secs_f64(a.window_s);
    tokio::time::sleep(window).await;
    let after: Vec<_> = nodes.iter().map(|g| g.stats()).collect();
    let secs = window.as_secs_f64();
    let per_node: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.bytes_sent - b.bytes_sent) as f64 / secs)
        .collect();
    let packets: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.packets_sent - b.packets_sent)
        .sum();
    let mean = per_node.iter().sum::<f64>() / n as f64;
    let max = per_node.iter().cloned().fold(0.0, f64::max);
    let largest = after
        .iter()
        .map(|s| s.largest_packet_sent)
        .max()
        .unwrap_or(0);
    let dropped: u64 = after
        .iter()
        .map(|s| s.inbound_dropped + s.send_errors)
        .sum();
    Ok(serde_json::json!({
        "bench": "gossip-sim",
        "members": n,
        "seed": a.seed,
        "converged": converged,
        "converge_s": converge_s,
        "live_seen_min": live_min,
        "bytes_per_s_per_node_while_joining": join_bytes_mean,
        "bytes_per_s_per_node_mean": mean,
        "bytes_per_s_per_node_max": max,
        "packets_per_s_per_node": packets as f64 / secs / n as f64,
        "largest_packet_bytes": largest,
        "datagrams_lost": dropped,
        "member_pulls": after.iter().map(|s| s.member_pulls).sum::<u64>(),
        "member_lists_sent": after.iter().map(|s| s.member_lists_sent).sum::<u64>(),
        "member_lists_sent_in_window": after.iter().map(|s| s.member_lists_sent).sum::<u64>()
            - before.iter().map(|s| s.member_lists_sent).sum::<u64>(),
    }))
}

#[derive(Debug, Args)]
pub struct LifeguardArgs {
    /// Members in the cluster
    #[arg(long, default_value_t = 48)]
    members: usize,
    /// Members whose event loop is starved at random
    #[arg(long, default_value_t = 8)]
    starved: usize,
    /// Shortest and longest stall, in milliseconds
    #[arg(long, default_value_t = 100)]
    stall_min_ms: u64,
    #[arg(long, default_value_t = 900)]
    stall_max_ms: u64,
    /// Shortest and longest awake time of a starved member between two stalls, in milliseconds
    #[arg(long, default_value_t = 100)]
    awake_min_ms: u64,
    #[arg(long, default_value_t = 1500)]
    awake_max_ms: u64,
    /// Length of the starvation phase, in simulated seconds
    #[arg(long, default_value_t = 120.0)]
    run_s: f64,
    /// Healthy members killed during the run (evenly spaced), whose detection is timed
    #[arg(long, default_value_t = 4)]
    kills: usize,
    /// What starves: `whole` (timers and datagrams alike) or `packets` (timers fire on
    /// time, datagrams wait: the Lifeguard paper's slow member)
    #[arg(long, default_value = "packets")]
    starve: String,
    /// Override Lifeguard's `suspicion_confirmations` (k)
    #[arg(long)]
    suspicion_confirmations: Option<u32>,
    /// Override Lifeguard's `suspicion_max_mult`
    #[arg(long)]
    suspicion_max_mult: Option<u32>,
    /// Seeds: each runs once with Lifeguard on and once off
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
}

/// What one run counted.
#[derive(Default)]
struct LifeguardOutcome {
    /// `Down` events (summed over observers) of members that were alive: never starved / starved.
    false_down_events_healthy: usize,
    false_down_events_starved: usize,
    /// Distinct (member, generation) pairs wrongly declared down by anyone.
    false_declarations: usize,
    /// `Suspect` events of never-starved members seen by starved observers: accusations.
    suspicions_by_starved: usize,
    /// Per killed member and observer: kill to `Down`, in milliseconds.
    detection_ms: Vec<f64>,
    /// Killed members that some live observer never saw `Down`.
    undetected: usize,
}

pub fn run_lifeguard(a: LifeguardArgs) -> Result<(), BoxError> {
    if a.members < 8 || a.members > MEMBERS_MAX || a.starved + a.kills + 1 > a.members {
        return Err("want at least 8 members, and more than starved + kills".into());
    }
    if a.starve != "packets" && a.starve != "whole" {
        return Err("--starve wants packets or whole".into());
    }
    if a.stall_min_ms > a.stall_max_ms || a.awake_min_ms > a.awake_max_ms {
        return Err("min above max".into());
    }
    let mut totals: HashMap<bool, LifeguardOutcome> = HashMap::new();
    for &seed in &a.seeds {
        for lifeguard in [true, false] {
            let o = sim_runtime()?.block_on(lifeguard_once(&a, seed, lifeguard))?;
            println!(
                "{}",
                serde_json::json!({
                    "bench": "lifeguard",
                    "seed": seed,
                    "lifeguard": lifeguard,
                    "members": a.members,
                    "starved": a.starved,
                    "starve": a.starve,
                    "false_down_events_healthy": o.false_down_events_healthy,
                    "false_down_events_starved": o.false_down_events_starved,
                    "false_declarations": o.false_declarations,
                    "suspicions_by_starved": o.suspicions_by_starved,
                    "detection": crate::Summary::of(o.detection_ms.iter().map(|ms| Duration::from_secs_f64(ms / 1e3)).collect()),
                    "undetected": o.undetected,
                })
            );
            let t = totals.entry(lifeguard).or_default();
            t.false_down_events_healthy += o.false_down_events_healthy;
            t.false_down_events_starved += o.false_down_events_starved;
            t.false_declarations += o.false_declarations;
            t.suspicions_by_starved += o.suspicions_by_starved;
            t.detection_ms.extend(o.detection_ms);
            t.undetected += o.undetected;
        }
    }
    for lifeguard in [true, false] {
        let t = totals.remove(&lifeguard).unwrap_or_default();
        let det = crate::Summary::of(
            t.detection_ms
                .iter()
                .map(|ms| Duration::from_secs_f64(ms / 1e3))
                .collect(),
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "lifeguard-total",
                "lifeguard": lifeguard,
                "seeds": a.seeds,
                "members": a.members,
                "starved": a.starved,
                "starve": a.starve,
                "run_s": a.run_s,
                "false_down_events_healthy": t.false_down_events_healthy,
                "false_down_events_starved": t.false_down_events_starved,
                "false_declarations": t.false_declarations,
                "suspicions_by_starved": t.suspicions_by_starved,
                "detection": det,
                "undetected": t.undetected,
            })
        );
    }
    Ok(())
}

/// One member's `Down` (or `Suspect`) seen by one observer.
struct DownSeen {
    suspect: bool,
    at: Instant,
    observer: usize,
    node_id: String,
    generation: u64,
}

async fn lifeguard_once(
    a: &LifeguardArgs,
    seed: u64,
    lifeguard: bool,
) -> Result<LifeguardOutcome, BoxError> {
    let n = a.members;
    let net = Arc::new(Net::default());
    let mut nodes: Vec<Option<Gossip<NodeMeta>>> = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(Some(spawn_member(&net, i, seed, lifeguard, |c| {
            if let Some(k) = a.suspicion_confirmations {
                c.lifeguard.suspicion_confirmations = k;
            }
            if let Some(m) = a.suspicion_max_mult {
                c.lifeguard.suspicion_max_mult = m;
            }
        })?));
    }
    let seed_addr = [sim_addr(0)];
    for g in nodes.iter().skip(1).flatten() {
        g.join(&seed_addr).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().flatten().all(|g| g.live_count() >= n) {
        if Instant::now() > deadline {
            return Err(format!("{n} members did not converge in 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the join traffic settle before the experiment starts.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let downs: Arc<Mutex<Vec<DownSeen>>> = Arc::default();
    let mut tasks = Vec::new();
    for (observer, g) in nodes.iter().enumerate() {
        let Some(g) = g else { continue };
        let mut rx = g.subscribe();
        let downs = Arc::clone(&downs);
        tasks.push(tokio::spawn(async move {
            loop {
                let (suspect, m) = match rx.recv().await {
                    Ok(MemberEvent::Down(m)) => (false, m),
                    Ok(MemberEvent::Suspect(m)) => (true, m),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                downs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(DownSeen {
                        suspect,
                        at: Instant::now(),
                        observer,
                        node_id: m.node_id,
                        generation: m.generation,
                    });
            }
        }));
    }

    // The same seed picks the same starved members, stalls and victims in both modes.
    let mut rng = Rng(seed);
    let mut order: Vec<usize> = (1..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i as u64) as usize);
    }
    let starved: BTreeSet<usize> = order[..a.starved].iter().copied().collect();
    let victims: Vec<usize> = order[a.starved..a.starved + a.kills].to_vec();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.run_s);
    let packets_only = a.starve == "packets";
    for &i in &starved {
        let Some(g) = nodes[i].clone() else { continue };
        let mut r = Rng(seed ^ (i as u64) << 32);
        let (smin, smax, amin, amax) = (
            a.stall_min_ms,
            a.stall_max_ms,
            a.awake_min_ms,
            a.awake_max_ms,
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(r.range(amin, amax))).await;
                let stall = Duration::from_millis(r.range(smin, smax));
                if packets_only {
                    g.starve_packets(stall).await;
                } else {
                    g.starve(stall).await;
                }
                tokio::time::sleep(stall).await;
            }
        }));
    }
    let mut killed_at: HashMap<String, (usize, Instant)> = HashMap::new();
    for (k, &v) in victims.iter().enumerate() {
        let at = start + Duration::from_secs_f64(a.run_s * (k + 1) as f64 / (a.kills + 1) as f64);
        tokio::time::sleep_until(at).await;
        if let Some(g) = nodes[v].take() {
            killed_at.insert(format!("bench-node-{v}"), (v, Instant::now()));
            drop(g);
        }
    }
    tokio::time::sleep_until(end + Duration::from_secs(10)).await;
    for t in &tasks {
        t.abort();
    }
    drop(nodes);

    let downs = std::mem::take(&mut *downs.lock().unwrap_or_else(|p| p.into_inner()));
    let mut out = LifeguardOutcome::default();
    let mut false_ids = BTreeSet::new();
    let mut first_seen: HashMap<(String, usize), Instant> = HashMap::new();
    let index_of = |node_id: &str| -> usize {
        node_id
            .strip_prefix("bench-node-")
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX)
    };
    for d in &downs {
        if d.suspect {
            let i = index_of(&d.node_id);
            if starved.contains(&d.observer)
                && !starved.contains(&i)
                && !killed_at.contains_key(&d.node_id)
            {
                out.suspicions_by_starved += 1;
            }
            continue;
        }
        match killed_at.get(&d.node_id) {
            Some((_, at)) if d.at >= *at => {
                first_seen
                    .entry((d.node_id.clone(), d.observer))
                    .or_insert(d.at);
            }
            _ => {
                let i = index_of(&d.node_id);
                if starved.contains(&i) {
                    out.false_down_events_starved += 1;
                } else {
                    out.false_down_events_healthy += 1;
                }
                false_ids.insert((d.node_id.clone(), d.generation));
            }
        }
    }
    out.false_declarations = false_ids.len();
    for (node_id, (_, at)) in &killed_at {
        // Observers: members alive at the end (not killed).
        for observer in (0..n).filter(|o| !killed_at.values().any(|(v, _)| v == o)) {
            match first_seen.get(&(node_id.clone(), observer)) {
                Some(seen) => {
                    let ms = seen.duration_since(*at).as_secs_f64() * 1e3;
                    if ms > 10_000.0 {
                        eprintln!(
                            "lifeguard seed {seed}: {node_id} detected by member {observer} \
                             (starved: {}) only after {ms:.0} ms",
                            starved.contains(&observer)
                        );
                    }
                    out.detection_ms.push(ms);
                }
                None => out.undetected += 1,
            }
        }
    }
    Ok(out)
}
