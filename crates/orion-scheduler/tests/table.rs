//! Table tests: each filter, each strategy, the reason text, and a task that becomes placeable
//! once capacity frees. Every case is one line through `check`, written in a small notation:
//!
//! - nodes, comma-separated: `id mem=16G cpu=8 used=1G/0.5 port=8080 port=53/udp cool=20000
//!   @zone=a tasks=3 draining down` (defaults: 16 GiB, 8 cores, nothing used, ready; `cool` is a
//!   cooling port, freed so recently that a container may still hold it);
//! - tasks, comma-separated: `id mem=1G cpu=0.5 port=8080 port=* port=*/udp @zone=a
//!   c:node.labels.zone_in_(a|b) binpack` (`*` is a dynamic port; in a constraint `_` is a space
//!   and `|` a comma);
//! - the expected decisions, ` | `-separated: `t1->a`, `t1->a:8080,20000`, or `t1: reason`.
//!
//! The dynamic range is 20000..=20002, small enough to exhaust.

use orion_scheduler::{Decision, NodeView, Snapshot, TaskRequest, place};
use orion_types::{Constraint, PortSpec, Protocol, Resources, Strategy};
use std::collections::{BTreeMap, BTreeSet};

fn check(default: Strategy, nodes: &str, tasks: &str, want: &str) {
    let snapshot = Snapshot {
        nodes: split(nodes).map(node).collect(),
        dynamic_ports: 20000..=20002,
        default_strategy: default,
    };
    let tasks: Vec<TaskRequest> = split(tasks).map(task).collect();
    let decisions = place(&snapshot, &tasks);
    assert_eq!(decisions.len(), tasks.len());
    let got: Vec<String> = decisions.iter().map(render).collect();
    assert_eq!(got.join(" | "), want, "\nnodes: {nodes}\ntasks: {tasks:?}");
    // Determinism: the same input gives the same output.
    assert_eq!(place(&snapshot, &tasks), decisions);
}

use Strategy::{Binpack, Spread};

#[test]
#[rustfmt::skip]
fn filters() {
    check(Spread, "a down, b", "t", "t->b");
    check(Spread, "a draining, b", "t", "t->b");
    check(Spread, "a @zone=x, b @zone=y", "t @zone=y", "t->b");
    check(Spread, "a, b", "t c:node.id_!=_a", "t->b");
    check(Spread, "a @zone=x, b @zone=y, c", "t c:node.labels.zone_in_(x|z)", "t->a");
    check(Spread, "a mem=1G, b mem=4G", "t mem=2G", "t->b");
    check(Spread, "a cpu=1, b cpu=4", "t cpu=2", "t->b");
    check(Spread, "a port=8080, b", "t port=8080", "t->b:8080");
    check(Spread, "a port=53/udp", "t port=53", "t->a:53");
    check(Spread, "a port=20000", "t port=*", "t->a:20001");
    check(Spread, "a port=20000/udp", "t port=*/udp port=*", "t->a:20001,20000");
    check(Spread, "a", "t port=20000 port=*", "t->a:20000,20001");
    check(Spread, "a port=20000 port=20001 port=20002, b", "t port=*", "t->b:20000");
    // A dynamic port avoids a cooling one while the range has another; a static one takes it.
    check(Spread, "a cool=20000", "t1 port=*, t2 port=*", "t1->a:20001 | t2->a:20002");
    check(Spread, "a cool=20000 cool=20001 port=20002", "t port=*", "t->a:20000");
    check(Spread, "a cool=20000/udp", "t port=*", "t->a:20000");
    check(Spread, "a cool=8080", "t port=8080", "t->a:8080");
    // A zero reservation takes nothing, so it fits even a full (or over-committed) node.
    check(Spread, "a mem=1G used=2G/9", "t", "t->a");
    check(Spread, "a mem=1G used=1G/0", "t cpu=1", "t->a");
    check(Spread, "a mem=1G used=1G/0", "t mem=1K", "t: no node can place it: 1 node checked; 1 lacks memory (need 1.0 KiB, most free 0 B on a)");
}

#[test]
#[rustfmt::skip]
fn a_batch_counts_its_own_placements() {
    check(Spread, "a mem=2G", "t1 mem=1G, t2 mem=1G, t3 mem=1G", "t1->a | t2->a | t3: no node can place it: 1 node checked; 1 lacks memory (need 1.0 GiB, most free 0 B on a)");
    check(Spread, "a cpu=1", "t1 cpu=0.6, t2 cpu=0.4, t3 cpu=0.001", "t1->a | t2->a | t3: no node can place it: 1 node checked; 1 lacks CPU (need 0.001 cores, most free 0 on a)");
    check(Spread, "a, b", "t1 port=8080, t2 port=8080, t3 port=8080", "t1->a:8080 | t2->b:8080 | t3: no node can place it: 2 nodes checked; 2 have port 8080/tcp in use");
    check(Spread, "a", "t1 port=*, t2 port=* port=*, t3 port=*", "t1->a:20000 | t2->a:20001,20002 | t3: no node can place it: 1 node checked; 1 has no free tcp port in 20000-20002");
    check(Spread, "a, b", "t1 port=*, t2 port=20000", "t1->a:20000 | t2->b:20000");
    // A shape that fits nowhere is told why as the cluster is at its turn in the batch.
    check(Spread, "a mem=2G", "t1 mem=3G, t2 mem=1G, t3 mem=3G", "t1: no node can place it: 1 node checked; 1 lacks memory (need 3.0 GiB, most free 2.0 GiB on a) | t2->a | t3: no node can place it: 1 node checked; 1 lacks memory (need 3.0 GiB, most free 1.0 GiB on a)");
}

#[test]
#[rustfmt::skip]
fn strategies() {
    // Spread: six equal tasks land two per node.
    check(Spread, "a, b, c", "t1 mem=1G, t2 mem=1G, t3 mem=1G, t4 mem=1G, t5 mem=1G, t6 mem=1G", "t1->a | t2->b | t3->c | t4->a | t5->b | t6->c");
    // Even with no reservation, by task count.
    check(Spread, "a, b, c", "t1, t2, t3, t4, t5, t6", "t1->a | t2->b | t3->c | t4->a | t5->b | t6->c");
    // Binpack: fills one node first.
    check(Binpack, "a mem=4G, b mem=4G, c mem=4G", "t1 mem=1G, t2 mem=1G, t3 mem=1G, t4 mem=1G, t5 mem=1G, t6 mem=1G", "t1->a | t2->a | t3->a | t4->a | t5->b | t6->b");
    check(Spread, "a used=8G/0, b used=2G/0", "t mem=1G", "t->b");
    check(Binpack, "a used=8G/0, b used=2G/0", "t mem=1G", "t->a");
    // Binpack: the most loaded node that still fits.
    check(Binpack, "a used=15G/0, b used=8G/0, c", "t mem=2G", "t->b");
    // The dominant share counts: a is 3/4 used in CPU, b half in memory.
    check(Spread, "a used=0/6, b used=8G/0", "t", "t->b");
    check(Binpack, "a used=0/6, b used=8G/0", "t", "t->a");
    // The share after adding the task: on the small node, 1 GiB weighs more.
    check(Spread, "a mem=2G, b mem=16G used=4G/0", "t mem=1G", "t->b");
    // Ties: spread by fewer tasks, then by node id; binpack by node id.
    check(Spread, "a tasks=3, b tasks=1", "t", "t->b");
    check(Spread, "b, a", "t", "t->a");
    check(Binpack, "b tasks=0, a tasks=5", "t", "t->a");
    // A task's own strategy overrides the cluster's.
    check(Spread, "a used=8G/0, b used=2G/0", "t mem=1G binpack", "t->a");
    check(Binpack, "a used=8G/0, b used=2G/0", "t mem=1G spread", "t->b");
}

#[test]
#[rustfmt::skip]
fn reasons() {
    check(Spread, "", "t", "t: no node can place it: no ready nodes in the cluster");
    check(Spread, "node1 mem=1G, node2 port=8080, node3 mem=4G used=2944M/0", "t mem=2G port=8080", "t: no node can place it: 3 nodes checked; 2 lack memory (need 2.0 GiB, most free 1.1 GiB on node3); 1 has port 8080/tcp in use");
    check(Spread, "node1 cpu=1 used=0/1, node2 cpu=2 used=0/1.5", "t cpu=2", "t: no node can place it: 2 nodes checked; 2 lack CPU (need 2 cores, most free 0.5 on node2)");
    check(Spread, "node1 cpu=0.5", "t cpu=1", "t: no node can place it: 1 node checked; 1 lacks CPU (need 1 core, most free 0.5 on node1)");
    // Among equally free nodes, the lowest id is named.
    check(Spread, "b mem=1G, a mem=1G", "t mem=2G", "t: no node can place it: 2 nodes checked; 2 lack memory (need 2.0 GiB, most free 1.0 GiB on a)");
    // Each node counts once, under the first filter it fails, groups in filter order.
    check(Spread, "a down draining, b draining, c @zone=x, d @zone=y, e @zone=y mem=1G", "t @zone=y c:node.id_!=_d mem=2G", "t: no node can place it: 5 nodes checked; 1 is not ready; 1 is draining; 1 fails node selector zone=y; 1 fails constraint node.id != d; 1 lacks memory (need 2.0 GiB, most free 1.0 GiB on e)");
    check(Spread, "a down, b down", "t", "t: no node can place it: 2 nodes checked; 2 are not ready");
    check(Spread, "a draining, b draining", "t", "t: no node can place it: 2 nodes checked; 2 are draining");
    check(Spread, "a @zone=b, b @zone=c, c", "t c:node.labels.zone_==_a", "t: no node can place it: 3 nodes checked; 3 fail constraint node.labels.zone == a");
    check(Spread, "a @zone=b, b @zone=c, c", "t c:node.labels.zone_not_in_(b|c) c:node.id_==_a", "t: no node can place it: 3 nodes checked; 2 fail constraint node.labels.zone not in (b, c); 1 fails constraint node.id == a");
    check(Spread, "a @zone=b, b @disk=ssd", "t @disk=ssd @zone=b", "t: no node can place it: 2 nodes checked; 1 fails node selector disk=ssd; 1 fails node selector zone=b");
    check(Spread, "a port=8080 port=53/udp, b port=53/udp", "t port=8080 port=53/udp", "t: no node can place it: 2 nodes checked; 1 has port 8080/tcp in use; 1 has port 53/udp in use");
    check(Spread, "a port=20000/udp port=20001/udp port=20002/udp", "t port=*/udp", "t: no node can place it: 1 node checked; 1 has no free udp port in 20000-20002");
    check(Spread, "a", "t port=8080 port=8080", "t: no node can place it: it asks for host port 8080/tcp twice");
    check(Spread, "a mem=512M", "t mem=768M", "t: no node can place it: 1 node checked; 1 lacks memory (need 768.0 MiB, most free 512.0 MiB on a)");
}

#[test]
#[rustfmt::skip]
fn placeable_after_capacity_frees() {
    // Snapshot A: another allocation holds 3 GiB of the 4; snapshot B: it went away.
    check(Spread, "a mem=4G used=3G/0", "t mem=2G", "t: no node can place it: 1 node checked; 1 lacks memory (need 2.0 GiB, most free 1.0 GiB on a)");
    check(Spread, "a mem=4G used=1G/0", "t mem=2G", "t->a");
    // The same for a port released, and for a node that joins.
    check(Spread, "a port=8080", "t port=8080", "t: no node can place it: 1 node checked; 1 has port 8080/tcp in use");
    check(Spread, "a", "t port=8080", "t->a:8080");
    check(Spread, "a down", "t", "t: no node can place it: 1 node checked; 1 is not ready");
    check(Spread, "a down, b", "t", "t->b");
}

fn render(decision: &Decision) -> String {
    match decision {
        Decision::Placed {
            task_id,
            node,
            host_ports,
        } if host_ports.is_empty() => format!("{task_id}->{node}"),
        Decision::Placed {
            task_id,
            node,
            host_ports,
        } => {
            let ports: Vec<String> = host_ports.iter().map(u16::to_string).collect();
            format!("{task_id}->{node}:{}", ports.join(","))
        }
        Decision::Unplaced { task_id, reason } => format!("{task_id}: {reason}"),
    }
}

fn split(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn node(text: &str) -> NodeView {
    let mut words = text.split_whitespace();
    let mut node = NodeView {
        id: words.next().expect("a node id").to_string(),
        ready: true,
        draining: false,
        capacity: Resources {
            memory_bytes: 16 << 30,
            cpu_millis: 8000,
        },
        allocated: Resources::default(),
        used_ports: BTreeSet::new(),
        cooling_ports: BTreeSet::new(),
        labels: BTreeMap::new(),
        task_count: 0,
    };
    for word in words {
        match word.split_once('=') {
            _ if word == "down" => node.ready = false,
            _ if word == "draining" => node.draining = true,
            Some(("mem", v)) => node.capacity.memory_bytes = bytes(v),
            Some(("cpu", v)) => node.capacity.cpu_millis = millis(v),
            Some(("used", v)) => {
                let (mem, cpu) = v.split_once('/').expect("used=MEM/CPU");
                node.allocated = Resources {
                    memory_bytes: bytes(mem),
                    cpu_millis: millis(cpu),
                };
            }
            Some(("port", v)) => {
                let spec = port(v);
                node.used_ports.insert((
                    spec.protocol,
                    spec.host_port.expect("a used port is static"),
                ));
            }
            Some(("cool", v)) => {
                let spec = port(v);
                node.cooling_ports.insert((
                    spec.protocol,
                    spec.host_port.expect("a cooling port is static"),
                ));
            }
            Some(("tasks", v)) => node.task_count = v.parse().expect("tasks=N"),
            Some((k, v)) if k.starts_with('@') => {
                node.labels.insert(k[1..].to_string(), v.to_string());
            }
            _ => panic!("unknown node word {word:?}"),
        }
    }
    node
}

fn task(text: &str) -> TaskRequest {
    let mut words = text.split_whitespace();
    let mut task = TaskRequest {
        id: words.next().expect("a task id").to_string(),
        resources: Resources::default(),
        ports: Vec::new(),
        node_selectors: BTreeMap::new(),
        constraints: Vec::new(),
        strategy: None,
    };
    for word in words {
        if let Some(c) = word.strip_prefix("c:") {
            task.constraints.push(
                Constraint::parse(&c.replace('_', " ").replace('|', ",")).expect("a constraint"),
            );
            continue;
        }
        match word.split_once('=') {
            _ if Strategy::parse(word).is_some() => task.strategy = Strategy::parse(word),
            Some(("mem", v)) => task.resources.memory_bytes = bytes(v),
            Some(("cpu", v)) => task.resources.cpu_millis = millis(v),
            Some(("port", v)) => task.ports.push(port(v)),
            Some((k, v)) if k.starts_with('@') => {
                task.node_selectors
                    .insert(k[1..].to_string(), v.to_string());
            }
            _ => panic!("unknown task word {word:?}"),
        }
    }
    task
}

/// `8080`, `53/udp`, `*` (dynamic), `*/udp`.
fn port(text: &str) -> PortSpec {
    let (host, protocol) = match text.split_once('/') {
        None => (text, Protocol::Tcp),
        Some((host, "tcp")) => (host, Protocol::Tcp),
        Some((host, "udp")) => (host, Protocol::Udp),
        Some(_) => panic!("bad port {text:?}"),
    };
    PortSpec {
        container_port: 80,
        protocol,
        host_port: if host == "*" {
            None
        } else {
            Some(host.parse().expect("a port number"))
        },
    }
}

/// `16G`, `2944M`, `1K`, `100`.
fn bytes(text: &str) -> u64 {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'G') => (&text[..text.len() - 1], 30),
        Some(b'M') => (&text[..text.len() - 1], 20),
        Some(b'K') => (&text[..text.len() - 1], 10),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .expect("a whole number of bytes or units")
        << shift
}

/// Cores, exactly: `2`, `0.5`, `0.001`.
fn millis(text: &str) -> u64 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<3}");
    whole.parse::<u64>().expect("cores") * 1000 + frac.parse::<u64>().expect("fraction of a core")
}
