//! A synthetic cluster shared by the benchmarks and the latency test, so both measure the same
//! thing: nodes of 16 GiB and 8 cores, already partly used, in three zones.
#![allow(dead_code)]

use orion_scheduler::{NodeView, Snapshot, TaskRequest};
use orion_types::{PortSpec, Protocol, Resources, Strategy};
use std::collections::{BTreeMap, BTreeSet};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// `n` ready nodes with a spread of existing load (deterministic, not random, so every run
/// measures the same input). One node in fifty is draining.
pub fn cluster(n: usize, strategy: Strategy) -> Snapshot {
    let nodes = (0..n)
        .map(|i| NodeView {
            id: format!("node{i:05}"),
            ready: true,
            draining: i % 50 == 49,
            capacity: Resources {
                memory_bytes: 16 * GIB,
                cpu_millis: 8000,
            },
            allocated: Resources {
                memory_bytes: (i as u64 * 7919 % 64) * 128 * MIB,
                cpu_millis: (i as u64 * 104_729 % 32) * 125,
            },
            used_ports: (0..(i % 4) as u16)
                .map(|k| (Protocol::Tcp, 20000 + k))
                .chain([(Protocol::Tcp, 8080)])
                .collect::<BTreeSet<_>>(),
            cooling_ports: BTreeSet::new(),
            labels: BTreeMap::from([("zone".to_string(), ["a", "b", "c"][i % 3].to_string())]),
            task_count: (i % 7) as u32,
        })
        .collect();
    Snapshot {
        nodes,
        // The default dynamic range of Orion's agent configuration.
        dynamic_ports: 20000..=32767,
        default_strategy: strategy,
    }
}

/// A typical service: 256 MiB, a quarter core, one dynamic TCP port when `port` is set.
pub fn task(id: usize, port: bool) -> TaskRequest {
    TaskRequest {
        id: format!("task{id:05}"),
        resources: Resources {
            memory_bytes: 256 * MIB,
            cpu_millis: 250,
        },
        ports: if port {
            vec![PortSpec {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_port: None,
            }]
        } else {
            Vec::new()
        },
        node_selectors: BTreeMap::new(),
        constraints: Vec::new(),
        strategy: None,
    }
}
