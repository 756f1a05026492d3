//! The nemesis: a seeded fault schedule and the means to inflict it on real agent processes.
//!
//! Faults are crash (`kill -9`, containers left behind, so the node must fence them when it
//! comes back), machine death (`kill -9` and the node's containers removed, since a dead
//! machine's containers die with it), pause (`SIGSTOP`/`SIGCONT`), a partition isolating the
//! leader, a partition splitting the cluster in two, and a one-way drop. Partitions are
//! iptables rules on loopback addresses of this suite's nets only, tagged with a comment
//! naming this process, removed on heal, on drop, and swept at start and end.
//!
//! The schedule is a pure function of the seed and the profile, so a failing run is replayed
//! with `ORION_FAULT_SEED=<seed>`. Only "which node leads" is decided at run time.

use crate::common::Cluster;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

pub use orion_sim::rng::Rng;

/// Run length and fault density.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// About 100 s of faults: every kind once plus four more; CI's profile.
    Short,
    /// About 15 minutes of faults, longer outages.
    Long,
}

impl Profile {
    pub fn from_env() -> Profile {
        match std::env::var("ORION_FAULT_PROFILE").as_deref() {
            Ok("long") => Profile::Long,
            _ => Profile::Short,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Short => "short",
            Profile::Long => "long",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Crash,
    MachineDeath,
    Pause,
    IsolateLeader,
    Partition,
    OneWay,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Crash,
        FaultKind::MachineDeath,
        FaultKind::Pause,
        FaultKind::IsolateLeader,
        FaultKind::Partition,
        FaultKind::OneWay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::MachineDeath => "machine-death",
            FaultKind::Pause => "pause",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way-drop",
        }
    }
}

/// One planned fault. Node numbers are 0-based indices into the cluster.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// Start, from the start of the workload.
    pub at: Duration,
    pub hold: Duration,
    /// Crash, death, pause: the victim. Partition: the minority side. One-way: [from, to].
    /// Isolate-leader: empty (chosen at run time).
    pub nodes: Vec<usize>,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: Vec<String> = self.nodes.iter().map(|i| format!("n{}", i + 1)).collect();
        let target = match self.kind {
            FaultKind::IsolateLeader => "the leader".to_string(),
            FaultKind::Partition => format!("{{{}}} | rest", n.join(",")),
            FaultKind::OneWay => format!("{} -x-> {}", n[0], n[1]),
            _ => n.join(","),
        };
        write!(
            f,
            "t={:>6.1}s {:<14} {:<16} for {:.1}s",
            self.at.as_secs_f64(),
            self.kind.name(),
            target,
            self.hold.as_secs_f64()
        )
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    pub profile: Profile,
    pub faults: Vec<Fault>,
    /// Workload length: the last fault's end plus a quiet tail.
    pub workload: Duration,
}

impl Schedule {
    /// The plan for `seed`: each kind at least once in a shuffled order, then random kinds,
    /// one fault at a time with quiet gaps, on a cluster of `nodes` nodes.
    pub fn generate(seed: u64, profile: Profile, nodes: usize) -> Schedule {
        let mut rng = Rng::new(seed);
        let (extra, hold_ms, gap_ms) = match profile {
            Profile::Short => (4, (3_000, 8_000), (2_500, 4_500)),
            Profile::Long => (48, (3_000, 20_000), (2_000, 8_000)),
        };
        let mut kinds = FaultKind::ALL.to_vec();
        rng.shuffle(&mut kinds);
        for _ in 0..extra {
            kinds.push(FaultKind::ALL[rng.below(FaultKind::ALL.len() as u64) as usize]);
        }
        // Let the cluster settle and the workload create its first tasks.
        let mut t = Duration::from_millis(6_000);
        let mut faults = Vec::new();
        for kind in kinds {
            let hold = Duration::from_millis(rng.range(hold_ms.0, hold_ms.1));
            let n = nodes as u64;
            let nodes = match kind {
                FaultKind::IsolateLeader => vec![],
                FaultKind::Partition => {
                    let a = rng.below(n) as usize;
                    let mut b = rng.below(n) as usize;
                    if b == a {
                        b = (a + 1) % nodes;
                    }
                    let mut side = vec![a, b];
                    side.sort();
                    side
                }
                FaultKind::OneWay => {
                    let a = rng.below(n) as usize;
                    let b = (a + 1 + rng.below(n - 1) as usize) % nodes;
                    vec![a, b]
                }
                _ => vec![rng.below(n) as usize],
            };
            faults.push(Fault {
                kind,
                at: t,
                hold,
                nodes,
            });
            t += hold + Duration::from_millis(rng.range(gap_ms.0, gap_ms.1));
        }
        Schedule {
            seed,
            profile,
            faults,
            workload: t + Duration::from_secs(4),
        }
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "fault schedule: seed {} profile {} ({} faults, workload {:.0}s)\n",
            self.seed,
            self.profile.name(),
            self.faults.len(),
            self.workload.as_secs_f64()
        );
        for f in &self.faults {
            s.push_str(&format!("  {f}\n"));
        }
        s
    }
}

/// The tag of every rule this process installs.
/// The comment on every rule of one firewall: this process and the firewall's net. Two tests
/// of one process (the suite and its regression test, on two nets) each heal their own rules
/// only; with a tag per process, one test's heal swept the other's rules away
/// (`two_firewalls_of_one_process_heal_only_their_own_rules`).
pub fn rule_tag(net: u8) -> String {
    format!("orion-fault-{}-{net}", std::process::id())
}

/// iptables rules dropping packets between loopback addresses of one net, tagged, always
/// removed.
pub struct Firewall {
    net: u8,
    tag: String,
    rules: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl Firewall {
    /// Sweeps tagged rules left on `net` by an earlier run of this suite (killed before its
    /// guard ran), then starts empty.
    pub fn new(net: u8) -> Firewall {
        let fw = Firewall {
            net,
            tag: rule_tag(net),
            rules: Vec::new(),
        };
        fw.sweep(true);
        fw
    }

    fn check_addr(&self, ip: Ipv4Addr) {
        let o = ip.octets();
        assert!(
            o[0] == 127 && o[1] == 0 && o[2] == self.net,
            "refusing a rule on {ip}: only 127.0.{}.x",
            self.net
        );
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn drop_one_way(&mut self, from: Ipv4Addr, to: Ipv4Addr) {
        self.check_addr(from);
        self.check_addr(to);
        iptables(&["-I", "INPUT"], from, to, &self.tag);
        self.rules.push((from, to));
    }

    /// Cuts both directions between every address of `a` and every address of `b`.
    pub fn cut(&mut self, a: &[Ipv4Addr], b: &[Ipv4Addr]) {
        for &x in a {
            for &y in b {
                self.drop_one_way(x, y);
                self.drop_one_way(y, x);
            }
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Removes every rule this guard added, then sweeps anything else with its tag.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.rules) {
            iptables(&["-D", "INPUT"], from, to, &self.tag);
        }
        self.sweep(false);
    }

    /// Deletes tagged rules: ours (this process's tag), or with `stale`, any `orion-fault-`
    /// rule whose addresses are both on our net.
    fn sweep(&self, stale: bool) {
        let Ok(out) = Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .output()
        else {
            return;
        };
        let net_prefix = format!("127.0.{}.", self.net);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(pos) = words.iter().position(|w| *w == "--comment") else {
                continue;
            };
            let Some(comment) = words.get(pos + 1) else {
                continue;
            };
            let ours = *comment == self.tag;
            let addr_ok = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1))
                    .is_some_and(|a| a.starts_with(&net_prefix))
            };
            let stale_ours =
                stale && comment.starts_with("orion-fault-") && addr_ok("-s") && addr_ok("-d");
            if !(ours || stale_ours) || words.first() != Some(&"-A") {
                continue;
            }
            let mut args: Vec<&str> = vec!["-w", "-D"];
            args.extend(&words[1..]);
            let _ = Command::new("iptables").args(&args).output();
            eprintln!("nemesis: swept leftover rule: {line}");
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}

fn iptables(op: &[&str], from: Ipv4Addr, to: Ipv4Addr, tag: &str) {
    let (from, to) = (from.to_string(), to.to_string());
    let out = Command::new("iptables")
        .arg("-w")
        .args(op)
        .args(["-s", &from, "-d", &to, "-m", "comment", "--comment", tag])
        .args(["-j", "DROP"])
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "iptables {op:?} {from} -> {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether iptables is usable here (root, binary present).
pub fn iptables_available() -> bool {
    Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes every container of node `id` (any state), as a dead machine loses them.
pub fn remove_containers_of(id: &str) -> usize {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=orion.node={id}")])
        .output();
    let ids: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
    ids.len()
}

/// True if the process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            // The state follows the parenthesised command name.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

/// A fault in force, to be undone.
#[derive(Debug)]
pub enum Active {
    Down { node: usize },
    Paused { node: usize },
    Cut,
}

/// Applies `f` to the cluster; returns what to undo, and a description.
pub async fn inflict(c: &mut Cluster, fw: &mut Firewall, f: &Fault) -> (Active, String) {
    let ip = |i: usize| c.agents[i].ip;
    match f.kind {
        FaultKind::Crash => {
            let n = f.nodes[0];
            c.agents[n].kill();
            (
                Active::Down { node: n },
                format!("kill -9 {} (containers kept)", c.agents[n].id),
            )
        }
        FaultKind::MachineDeath => {
            let n = f.nodes[0];
            c.agents[n].kill();
            let removed = remove_containers_of(&c.agents[n].id);
            (
                Active::Down { node: n },
                format!(
                    "kill -9 {} and remove its {removed} containers",
                    c.agents[n].id
                ),
            )
        }
        FaultKind::Pause => {
            let n = f.nodes[0];
            c.agents[n].stop_signal();
            (
                Active::Paused { node: n },
                format!("SIGSTOP {}", c.agents[n].id),
            )
        }
        FaultKind::IsolateLeader => {
            let leader = current_leader(c).await;
            let n = leader.unwrap_or(0);
            let others: Vec<Ipv4Addr> = (0..c.agents.len())
                .filter(|&i| i != n)
                .map(|i| c.agents[i].ip)
                .collect();
            fw.cut(&[ip(n)], &others);
            (
                Active::Cut,
                format!(
                    "isolate {} ({})",
                    c.agents[n].id,
                    if leader.is_some() {
                        "the leader"
                    } else {
                        "no leader found; node 1"
                    }
                ),
            )
        }
        FaultKind::Partition => {
            let side: Vec<Ipv4Addr> = f.nodes.iter().map(|&i| ip(i)).collect();
            let rest: Vec<Ipv4Addr> = (0..c.agents.len())
                .filter(|i| !f.nodes.contains(i))
                .map(ip)
                .collect();
            fw.cut(&side, &rest);
            (
                Active::Cut,
                format!("partition {side:?} | {rest:?} ({} rules)", fw.rule_count()),
            )
        }
        FaultKind::OneWay => {
            let (a, b) = (f.nodes[0], f.nodes[1]);
            fw.drop_one_way(ip(a), ip(b));
            (
                Active::Cut,
                format!("drop {} -> {} only", c.agents[a].id, c.agents[b].id),
            )
        }
    }
}

/// Undoes one fault.
pub fn undo(c: &mut Cluster, fw: &mut Firewall, a: &Active) -> String {
    match a {
        Active::Down { node } => {
            c.agents[*node].restart();
            format!("restart {}", c.agents[*node].id)
        }
        Active::Paused { node } => {
            c.agents[*node].cont_signal();
            format!("SIGCONT {}", c.agents[*node].id)
        }
        Active::Cut => {
            let n = fw.rule_count();
            fw.heal();
            format!("heal ({n} rules removed)")
        }
    }
}

/// The index of the node some reachable agent names as leader.
pub async fn current_leader(c: &Cluster) -> Option<usize> {
    for a in &c.agents {
        if let Ok((_, s)) = crate::common::get(&a.api, "/status").await
            && let Some(l) = s["leader"].as_str()
        {
            return c.agents.iter().position(|x| x.id == l);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_present(from: &str, to: &str, tag: &str) -> bool {
        Command::new("iptables")
            .args(["-w", "-C", "INPUT", "-s", from, "-d", to])
            .args(["-m", "comment", "--comment", tag, "-j", "DROP"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Regression: the suite (net 20) failed with "iptables -D INPUT: Bad rule" because the
    /// regression test's heal (net 21) swept every rule of the process's tag, its own and the
    /// suite's.
    #[test]
    fn two_firewalls_of_one_process_heal_only_their_own_rules() {
        if !iptables_available() {
            return;
        }
        let (a, b) = (233u8, 234u8);
        let mut fa = Firewall::new(a);
        let mut fb = Firewall::new(b);
        let ip = |net: u8, host: u8| Ipv4Addr::new(127, 0, net, host);
        fa.drop_one_way(ip(a, 1), ip(a, 2));
        fb.drop_one_way(ip(b, 1), ip(b, 2));
        fb.heal();
        assert!(
            rule_present("127.0.233.1", "127.0.233.2", &rule_tag(a)),
            "healing one firewall removed another's rule"
        );
        assert!(!rule_present("127.0.234.1", "127.0.234.2", &rule_tag(b)));
        fa.heal();
        assert!(!rule_present("127.0.233.1", "127.0.233.2", &rule_tag(a)));
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let a = Schedule::generate(42, Profile::Short, 5).describe();
        let b = Schedule::generate(42, Profile::Short, 5).describe();
        let c = Schedule::generate(43, Profile::Short, 5).describe();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_short_profile_has_every_kind_and_fits() {
        for seed in 0..200 {
            let s = Schedule::generate(seed, Profile::Short, 5);
            for k in FaultKind::ALL {
                assert!(
                    s.faults.iter().any(|f| f.kind == k),
                    "seed {seed}: no {k:?}"
                );
            }
            assert!(s.workload < Duration::from_secs(150), "seed {seed}");
            for f in &s.faults {
                assert!(f.nodes.iter().all(|&n| n < 5));
                if f.kind == FaultKind::OneWay || f.kind == FaultKind::Partition {
                    assert_ne!(f.nodes[0], f.nodes[1], "seed {seed}: {f}");
                }
            }
        }
    }
}
