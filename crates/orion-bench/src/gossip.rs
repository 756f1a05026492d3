//! Gossip cost: N in-process members of the agent's gossip crate, each with the agent's own
//! metadata (`NodeMeta`), on loopback UDP; bytes each member sends per second once the
//! membership has converged.

use crate::BoxError;
use clap::Args;
use orion_gossip::{Gossip, GossipConfig};
use orion_types::{NodeMeta, Resources};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct GossipArgs {
    /// Member counts to measure, comma separated (at most 250 each)
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    sizes: Vec<usize>,
    /// First three octets of the loopback addresses the members use: A.B.C.1 and up
    #[arg(long, default_value = "127.0.31")]
    net: String,
    /// Measurement window after convergence, in seconds
    #[arg(long, default_value_t = 5.0)]
    window_s: f64,
    /// How long to wait for every member to see every other as alive, in seconds
    #[arg(long, default_value_t = 30.0)]
    converge_s: f64,
}

pub async fn run(a: GossipArgs) -> Result<(), BoxError> {
    let octets: Vec<u8> = a
        .net
        .split('.')
        .map(|o| o.parse::<u8>())
        .collect::<Result<_, _>>()?;
    let [o1, o2, o3] = octets[..] else {
        return Err("--net wants three octets, e.g. 127.0.31".into());
    };
    for &n in &a.sizes {
        if n == 0 || n > 250 {
            return Err(format!("size {n}: use 1 to 250 members").into());
        }
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let mut nodes: Vec<Gossip<NodeMeta>> = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(o1, o2, o3, (i + 1) as u8);
            let bind = SocketAddr::from((ip, 0));
            let id = format!("bench-node-{i}");
            let cfg = GossipConfig::lan_fast(id.clone(), bind, bind, generation);
            let meta = bench_meta(i, ip, generation);
            nodes.push(orion_gossip::spawn(cfg, meta).await?);
        }
        let seed = nodes[0].advertise_addr();
        let t0 = Instant::now();
        for g in &nodes[1..] {
            g.join(&[seed]).await?;
        }
        let converge_deadline = t0 + Duration::from_secs_f64(a.converge_s);
        let converged = loop {
            let done = nodes
                .iter()
                .all(|g| g.members().iter().filter(|m| m.status.is_live()).count() >= n);
            if done {
                break true;
            }
            if Instant::now() > converge_deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let converge_s = t0.elapsed().as_secs_f64();
        let live_min = nodes
            .iter()
            .map(|g| g.members().iter().filter(|m| m.status.is_live()).count())
            .min()
            .unwrap_or(0);
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
        let dropped: u64 = after.iter().map(|s| s.inbound_dropped).sum();
        let mean = per_node.iter().sum::<f64>() / n as f64;
        let max = per_node.iter().cloned().fold(0.0, f64::max);
        println!(
            "{}",
            serde_json::json!({
                "members": n,
                "converged": converged,
                "converge_s": converge_s,
                "live_seen_min": live_min,
                "bytes_per_s_per_node_mean": mean,
                "bytes_per_s_per_node_max": max,
                "packets_per_s_per_node": packets as f64 / secs / n as f64,
                "inbound_dropped": dropped,
            })
        );
        eprintln!("gossip {n} members: converged {converged}, {mean:.0} B/s per node");
        drop(nodes);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// The agent's metadata for bench member `i` at `ip` (about 260 bytes of JSON, as an agent's).
pub(crate) fn bench_meta(i: usize, ip: Ipv4Addr, generation: u64) -> NodeMeta {
    NodeMeta {
        id: format!("bench-node-{i}"),
        generation,
        api_addr: format!("{ip}:8000"),
        raft_addr: format!("{ip}:7000"),
        gossip_addr: format!("{ip}:6000"),
        publish_ip: ip.to_string(),
        capacity: Resources {
            memory_bytes: 16 << 30,
            cpu_millis: 8000,
        },
        labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
        version: "0.1.0".to_string(),
    }
}
