#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the outputs of one scripts/bench.sh run.

    python3 scripts/bench/report.py DIR > BENCHMARKS.md

DIR holds results.json (scripts/bench/run.py), criterion.txt (cargo bench of the scheduler) and
latency.txt (the scheduler's latency test). Every figure is printed as measured; a figure that
failed is printed with its error."""

import json
import os
import re
import sys


def load(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def dur_ms(s):
    """A Rust Duration's Debug text (850ns, 1.2µs, 3.4ms, 1.05s) in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)\s*(ns|µs|us|ms|s)", s.strip())
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def fmt_ms(ms, unit=None):
    if ms is None:
        return "n/a"
    if unit == "s" or (unit is None and ms >= 1000):
        return f"{ms / 1000:.2f} s"
    if unit == "us" or (unit is None and ms < 1):
        return f"{ms * 1000:.1f} µs"
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def ratio(a, b):
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.2f}×"


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    import math
    return xs[max(1, min(len(xs), math.ceil(len(xs) * q))) - 1]


def parse_criterion(text):
    out = {}
    prev = ""
    for line in text.splitlines():
        if "time:" in line:
            name = line.split("time:")[0].strip() or prev
            m = re.search(r"time:\s*\[([^\]]+)\]", line)
            if m:
                parts = m.group(1).split()
                # [low unit mid unit high unit]
                if len(parts) == 6:
                    out[name] = tuple(dur_ms(parts[i] + parts[i + 1]) for i in (0, 2, 4))
        elif line.strip() and not line.startswith(" "):
            prev = line.strip()
    return out


def parse_latency(text):
    singles, batches = {}, {}
    for line in text.splitlines():
        m = re.match(r"one task among\s+(\d+) nodes: p50 (\S+)\s+p99 (\S+)\s+max (\S+)", line.strip())
        if m:
            singles[int(m.group(1))] = tuple(dur_ms(x) for x in m.groups()[1:])
            continue
        m = re.match(r"(10,000 tasks.*?):\s+(\S+)$", line.strip())
        if m:
            batches[m.group(1)] = dur_ms(m.group(2))
    return singles, batches


class Report:
    def __init__(self, d):
        self.dir = d
        self.r = json.loads(load(os.path.join(d, "results.json")) or "{}")
        self.fig = self.r.get("figures", {})
        self.targets = []
        self.lines = []

    def p(self, s=""):
        self.lines.append(s)

    def target(self, what, target, got, ok):
        self.targets.append((what, target, got, verdict(ok)))

    def data(self, name):
        f = self.fig.get(name)
        if not f:
            self.p("*Not run in this pass.*")
            self.p()
            return None
        if not f.get("ok"):
            self.p(f"*This figure failed:* `{f.get('error')}`")
            self.p()
            return None
        return f["data"]

    def startup(self):
        self.p("## 1. Start-up")
        self.p()
        self.p("Process start (`spawn`) until `GET /health` answers 200, on a fresh data dir each time, a "
               "single bootstrapping agent on 127.0.30.1; the agent is killed (SIGKILL) after each start. "
               "Polled with a raw TCP `GET /health` every 0.1 ms (`orion-bench startup`).")
        self.p()
        d = self.data("startup")
        if not d:
            return
        s = d["startup"]
        self.p(f"| starts | median | p90 | min | max | target |")
        self.p("|---|---|---|---|---|---|")
        self.p(f"| {s['n']} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p90_ms'])} | {fmt_ms(min(d['samples_ms']))} | "
               f"{fmt_ms(s['max_ms'])} | under 20 ms (seed claim 50 ms) |")
        self.p()
        self.target("start-up, median of 20", "< 20 ms", fmt_ms(s["p50_ms"]), s["p50_ms"] < 20)

    def write(self):
        self.p("## 2. Write path: Orion `POST /tasks` and etcd `put`, three members each on loopback")
        self.p()
        d = self.data("write")
        if not d:
            return
        runs = {x["label"]: x for x in d["runs"]}
        pl = d["payload"]
        self.p(f"What was measured. Orion: three agents on 127.0.30.1-3 (node 1 `--bootstrap`, the others "
               f"`--join 127.0.30.1:6000`); every request goes to the leader, {d['orion_target'].split()[0]}. The task "
               f"body ({pl['request_bytes']} bytes of JSON) names an image that does not exist locally "
               f"(`orion/absent-bench:none`, `restartPolicy: never`): the task is committed, placed by the "
               f"leader's scheduler, and its executor then fails fast at the pull, so no container is started. "
               f"*Commit* is `POST /tasks` until its `201` (the `CreateTask` command is committed by Raft and "
               f"applied). *Commit + placed* is the time until the task has a node: on the leader, with no task "
               f"waiting, a new task is placed in the entry that creates it (`CreatePlacedTask`, the creates in "
               f"flight counting each other's placements), and the `201`'s task object names its node; "
               f"otherwise the load polls `GET /tasks/{{id}}` on the leader every 1 ms until the controller has "
               f"placed it in a following `Place` entry. Order of the runs: commit + placed at 1 client first, on the fresh cluster; then "
               f"commit at 1 and 64 clients; then commit + placed at 64. The follow-on work (placements, the "
               f"executors' failed pulls and their `Report` commands) runs behind later runs on the same "
               f"two cores.")
        self.p()
        self.p(f"etcd {d.get('etcd_version', '?')}: three members on 127.0.31.1-3, no TLS, default settings, "
               f"data dirs in a temp dir, every request to the leader, {str(d.get('etcd_target')).split()[0]}. Each request is a "
               f"`POST /v3/kv/put` to etcd's HTTP/JSON gateway (base64 key and value), with a value of "
               f"{pl['command_bytes']} bytes: the size of the JSON of the Orion `CreateTask` command the task "
               f"body becomes. Both are driven by the same load generator (`orion-bench load`, tokio + reqwest, "
               f"HTTP/1.1 keep-alive, closed loop: each client sends its next request when the previous one is "
               f"answered), so both are measured the same way, over HTTP.")
        self.p()
        self.p("| run | clients | requests | throughput | p50 | p99 | max |")
        self.p("|---|---|---|---|---|---|---|")
        for label, name in (("orion-commit-1", "Orion commit"), ("etcd-put-1", "etcd put"),
                            ("orion-commit-64", "Orion commit"), ("etcd-put-64", "etcd put")):
            x = runs.get(label)
            if x and x["commit"]:
                c = x["commit"]
                err = f" ({x['errors']} errors)" if x["errors"] else ""
                self.p(f"| {name} | {x['clients']} | {x['ok']}{err} | {x['throughput_per_s']:.0f}/s | "
                       f"{fmt_ms(c['p50_ms'])} | {fmt_ms(c['p99_ms'])} | {fmt_ms(c['max_ms'])} |")
        for label in ("orion-placed-1", "orion-placed-64"):
            x = runs.get(label)
            if x and x["placed"]:
                c = x["placed"]
                err = f" ({x['errors']} errors)" if x["errors"] else ""
                self.p(f"| Orion commit + placed | {x['clients']} | {x['ok']}{err} | {x['throughput_per_s']:.0f}/s | "
                       f"{fmt_ms(c['p50_ms'])} | {fmt_ms(c['p99_ms'])} | {fmt_ms(c['max_ms'])} |")
        self.p()
        o1, e1 = runs.get("orion-commit-1"), runs.get("etcd-put-1")
        o64, e64 = runs.get("orion-commit-64"), runs.get("etcd-put-64")
        if o1 and e1 and o64 and e64:
            self.p("Ratios Orion/etcd, same run, same machine:")
            self.p()
            self.p("| clients | throughput | p50 latency | p99 latency |")
            self.p("|---|---|---|---|")
            for o, e in ((o1, e1), (o64, e64)):
                self.p(f"| {o['clients']} | {ratio(o['throughput_per_s'], e['throughput_per_s'])} | "
                       f"{ratio(o['commit']['p50_ms'], e['commit']['p50_ms'])} | "
                       f"{ratio(o['commit']['p99_ms'], e['commit']['p99_ms'])} |")
            self.p()
            self.target("Raft write throughput at 64 clients", "≥ 1.5× etcd's",
                        f"{o64['throughput_per_s']:.0f}/s vs etcd {e64['throughput_per_s']:.0f}/s = "
                        f"{ratio(o64['throughput_per_s'], e64['throughput_per_s'])}",
                        o64["throughput_per_s"] >= 1.5 * e64["throughput_per_s"])
            self.target("commit p50 at 1 client", "≤ 1.2× etcd's",
                        f"{fmt_ms(o1['commit']['p50_ms'])} vs etcd {fmt_ms(e1['commit']['p50_ms'])} = "
                        f"{ratio(o1['commit']['p50_ms'], e1['commit']['p50_ms'])}",
                        o1["commit"]["p50_ms"] <= 1.2 * e1["commit"]["p50_ms"])
            p64 = runs.get("orion-placed-64")
            if p64 and p64.get("placed"):
                self.target("commit + placed at 64 clients vs etcd put", "≥ 1.0× etcd's",
                            f"{p64['throughput_per_s']:.0f}/s vs {e64['throughput_per_s']:.0f}/s = "
                            f"{ratio(p64['throughput_per_s'], e64['throughput_per_s'])}",
                            p64["throughput_per_s"] >= e64["throughput_per_s"])
        self.counters(d)
        p1 = runs.get("orion-placed-1")
        if p1 and p1["placed"]:
            self.target("committed placement p50, one client", "< 2 ms",
                        f"{fmt_ms(p1['placed']['p50_ms'])} (commit alone: "
                        f"{fmt_ms(o1['commit']['p50_ms']) if o1 else 'n/a'})", p1["placed"]["p50_ms"] < 2)
        states = d.get("orion_task_states_after")
        if states:
            self.p(f"Task states on the leader right after the Orion runs (the executors work through the "
                   f"failed pulls behind the writes): `{json.dumps(states)}`. Resident memory after the runs: "
                   f"Orion {kib_list(d.get('orion_rss_kib_after'))}; etcd {kib_list(d.get('etcd_rss_kib_after'))}.")
            self.p()

    def running(self):
        self.p("## 3. Submit until the container runs: Orion beside `docker run -d` and Docker Swarm")
        self.p()
        d = self.data("running")
        if not d:
            return
        self.p("Same image (`orion/busybox:latest`, built locally by `scripts/test-image.sh`) and command "
               "(`sleep 3600`), same Docker engine, interleaved round by round so drift hits all alike, after "
               "one unmeasured warm-up of each. Orion: three-node cluster on 127.0.30.1-3, `POST /tasks` to the "
               "leader, then `GET /tasks/{id}` every 10 ms until `state` is `running` (the executor reports "
               "`running` after the engine started the container). `docker run -d`: the CLI, timed from "
               "process start to exit (it returns once the container has started). Engine API: "
               "`POST /containers/create` + `POST /containers/{id}/start` over the UNIX socket, what the CLI "
               "does without its process start. Swarm: `docker swarm init --advertise-addr 127.0.0.1` on this "
               "engine (only when it was inactive; `docker swarm leave --force` afterwards), `POST "
               "/services/create` (1 replica, same image and command), then `GET /tasks?filters=service` every "
               "10 ms until the task's state is `running`. Every container and service is removed afterwards.")
        self.p()
        orion = [x["total"] * 1e3 for x in d["orion"]]
        cli = [x * 1e3 for x in d["docker_cli"]]
        api = [x * 1e3 for x in d["docker_api"]]
        swarm = [x * 1e3 for x in d["swarm"]]
        self.p("| method | samples | median | p90 | max |")
        self.p("|---|---|---|---|---|")
        for name, xs in (("Orion `POST /tasks` → running", orion), ("`docker run -d` (CLI)", cli),
                         ("engine API create + start", api), ("Docker Swarm service → task running", swarm)):
            if xs:
                self.p(f"| {name} | {len(xs)} | {fmt_ms(median(xs))} | {fmt_ms(pct(xs, 0.9))} | {fmt_ms(max(xs))} |")
            else:
                self.p(f"| {name} | 0 | n/a | n/a | n/a |")
        self.p()
        if d["orion"]:
            com = [x["committed"] * 1e3 for x in d["orion"]]
            plc = [x["placed"] * 1e3 for x in d["orion"] if x["placed"] is not None]
            self.p(f"Orion's median split: committed {fmt_ms(median(com))}, placed (first poll that sees a node) "
                   f"{fmt_ms(median(plc))}, running {fmt_ms(median(orion))}. The 10 ms polling adds up to 10 ms "
                   f"(5 ms on average) to the Orion and Swarm figures.")
            self.p()
        self.p(f"Ratios of medians: Orion / `docker run -d` = **{ratio(median(orion), median(cli))}**; "
               f"Orion / engine API = {ratio(median(orion), median(api))}; Orion / Swarm = "
               f"**{ratio(median(orion), median(swarm))}**.")
        self.p()
        if d.get("errors"):
            self.p("Errors: " + "; ".join(f"`{e}`" for e in d["errors"]))
            self.p()
        if orion and cli:
            self.target("POST-to-running vs `docker run -d`", "≤ 1.2×",
                        f"{ratio(median(orion), median(cli))} ({fmt_ms(median(orion))} vs {fmt_ms(median(cli))})",
                        median(orion) <= 1.2 * median(cli))
        if orion and swarm:
            self.target("POST-to-running vs Swarm", "faster (ratio < 1)",
                        f"{ratio(median(orion), median(swarm))} ({fmt_ms(median(orion))} vs {fmt_ms(median(swarm))})",
                        median(orion) < median(swarm))
        elif orion:
            self.target("POST-to-running vs Swarm", "faster", "Swarm not measured", None)

    def failover(self):
        self.p("## 4. Failover: the kill test")
        self.p()
        d = self.data("failover")
        if not d:
            return
        self.p("Three agents on 127.0.30.1-3. Each round places a task with a published port (`busybox httpd`, "
               "host port 18080 on the node's own address, `restartPolicy: always`) on the node to be killed: "
               "a constraint excludes the third node and a filler task on the other allowed node makes spread "
               "choose the victim. Then the machine dies: `kill -9` of the agent and `docker rm -f` of its "
               "containers (label `orion.node=<id>`), timed from the kill. *Detected*: the victim shows "
               "`dead` in `/nodes` (of the leader when a worker dies; of either survivor when the leader dies). "
               "*Decided*: the task has a new node and state `scheduled`/`starting`/`running`. *Running*: state "
               "`running` on the new node and `GET /` on its published port answers 200. Polled every 10 ms. "
               "After each round the victim is restarted on its data dir and the cluster must be whole again "
               "before the next kill. Case *host*: a worker's whole host is lost rather than its process: "
               "iptables drops every packet to and from its address first, so its host cannot refuse "
               "gossip (no ICMP port unreachable) and the survivors wait out the suspicion timeout; in "
               "the *worker* and *leader* cases the host lives on and refuses the dead process's port "
               "(ARCHITECTURE.md, refusals).")
        self.p()
        self.p("| case | kills measured | part | median | p90 | worst |")
        self.p("|---|---|---|---|---|---|")
        worst_all, med_all = [], []
        for case in ("worker", "leader", "host"):
            xs = [x for x in d.get(case, []) if x.get("running") is not None]
            for part in ("detect", "decide", "running"):
                v = [x[part] * 1e3 for x in xs if x.get(part) is not None]
                self.p(f"| {case} | {len(xs)}/{len(d[case])} | {part} | {fmt_ms(median(v))} | "
                       f"{fmt_ms(pct(v, 0.9))} | {fmt_ms(max(v) if v else None)} |")
                if part == "running" and v:
                    med_all.append((case, median(v)))
                    worst_all.append((case, max(v)))
        self.p()
        fails = d.get("failures", [])
        if fails:
            self.p(f"{len(fails)} round(s) did not complete:")
            self.p()
            for f in fails[:10]:
                self.p(f"- {f.get('case')}: {f.get('failed') or f.get('error')}")
            self.p()
        if d.get("skipped"):
            self.p(f"{len(d['skipped'])} round(s) skipped because the task landed elsewhere: {d['skipped'][:3]}")
            self.p()
        if d.get("aborted"):
            self.p(f"Stopped early: {d['aborted']}.")
            self.p()
        for case in ("worker", "leader", "host"):
            if case not in d:
                continue
            measured = [x for x in d[case] if x.get("running") is not None]
            total = len(d[case]) + sum(1 for f in fails if f.get("case") == case and "error" in f)
            v = [x["running"] * 1e3 for x in measured]
            if v and len(measured) == total:
                self.target(f"failover ({case} killed), median / worst", "< 2 s / < 3 s",
                            f"{fmt_ms(median(v))} / {fmt_ms(max(v))} over {len(v)} kills",
                            median(v) < 2000 and max(v) < 3000)
                if case == "worker":
                    self.target("failover (worker killed), median (issue 17)", "< 1.0 s",
                                f"{fmt_ms(median(v))} over {len(v)} kills", median(v) < 1000)
            else:
                self.target(f"failover ({case} killed), median / worst", "< 2 s / < 3 s",
                            f"{len(measured)} of {total} kills recovered"
                            + (f"; of those {fmt_ms(median(v))} / {fmt_ms(max(v))}" if v else ""), False)

    def memory(self):
        self.p("## 5. Memory")
        self.p()
        d = self.data("memory")
        if not d:
            return
        idle = d["idle"]
        self.p(f"Resident set (`VmRSS` of `/proc/<pid>/status`; `VmHWM` is the peak). Idle: one bootstrapped "
               f"agent, {idle['after_s']} s after `/health` answered. Cluster: three agents, then "
               f"{d['submit']['ok']} tasks submitted to the leader that no node can place (constraint "
               f"`node.labels.none == x`), so they stay `pending` and start no container; measured 5 s after "
               f"every agent lists them all.")
        self.p()
        self.p("| agent | VmRSS | VmHWM |")
        self.p("|---|---|---|")
        self.p(f"| single agent, idle | {mib(idle['rss_kib'])} | {mib(idle['hwm_kib'])} |")
        for nid, v in d.get("cluster_idle", {}).items():
            self.p(f"| three-node cluster, empty: {nid} | {mib(v)} | |")
        for nid, v in d.get("cluster_1000", {}).items():
            lead = " (leader)" if nid == d.get("leader") else ""
            self.p(f"| three-node cluster, {d['submit']['ok']} pending tasks: {nid}{lead} | {mib(v['rss_kib'])} | "
                   f"{mib(v['hwm_kib'])} |")
        self.p()
        s = d["submit"]
        self.p(f"Submitting those {s['ok']} pending tasks at {s['clients']} clients: {s['throughput_per_s']:.0f}/s, "
               f"p50 {fmt_ms(s['commit']['p50_ms'])}, p99 {fmt_ms(s['commit']['p99_ms'])}. Pending counts seen "
               f"per agent: `{json.dumps(d.get('pending_seen'))}`. Example reason: "
               f"\"{d.get('example_reason')}\".")
        self.p()
        self.target("idle agent resident memory", "< 20 MB", f"{mib(idle['rss_kib'])}",
                    idle["rss_kib"] * 1024 < 20e6)

    def gossip(self):
        self.p("## 6. Gossip")
        self.p()
        d = self.data("gossip")
        if not d:
            return
        self.p("In-process members of the agent's own gossip crate (`orion-gossip`, `GossipConfig::lan_fast`: "
               "probe every 200 ms, periodic gossip to 3 members every 200 ms, Lifeguard on) carrying the "
               "agent's own `NodeMeta`, on UDP over 127.0.31.1 and up, all in one process "
               "(`orion-bench gossip`). After every member sees every other as alive, bytes sent are counted "
               "over a window.")
        self.p()
        self.p("| members | converged | time to converge | bytes/s sent per node (mean) | worst node | packets/s per node |")
        self.p("|---|---|---|---|---|---|")
        for x in d:
            conv = "yes" if x["converged"] else f"**no** (fewest live seen: {x['live_seen_min']})"
            self.p(f"| {x['members']} | {conv} | {x['converge_s']:.1f} s | {x['bytes_per_s_per_node_mean']:.0f} | "
                   f"{x['bytes_per_s_per_node_max']:.0f} | {x['packets_per_s_per_node']:.1f} |")
        self.p()
        if len(d) >= 2:
            self.p(f"Per-node cost at {d[-1]['members']} members / at {d[0]['members']}: "
                   f"{ratio(d[-1]['bytes_per_s_per_node_mean'], d[0]['bytes_per_s_per_node_mean'])}.")
            self.p()

    def gossip_sim(self):
        self.p("### Gossip in simulated time")
        self.p()
        d = self.data("gossip_sim")
        if not d:
            return
        self.p("The same members (`lan_fast`, the agent's `NodeMeta`) on the crate's in-memory network "
               "(`orion_gossip::memnet`), all on one thread on tokio's paused clock "
               "(`orion-bench gossip-sim --sizes ... --settle-s 5 --window-s 5`): times are protocol time, so "
               "the machine's load changes the wall time of a run, not its figures. Every member joins member 0 "
               "at the same instant; converged = every member sees every other as alive (metadata included). "
               "Steady bytes/s are counted over a window after a settling time; joining bytes/s are all bytes "
               "sent until convergence over the convergence time.")
        self.p()
        self.p("| members | converged | time to converge | joining: bytes/s per node | steady: bytes/s per node (mean) "
               "| worst node | packets/s per node | largest packet | wall time of the run |")
        self.p("|---|---|---|---|---|---|---|---|---|")
        for x in d:
            conv = "yes" if x["converged"] else f"**no** (fewest live seen: {x['live_seen_min']})"
            self.p(f"| {x['members']} | {conv} | {x['converge_s']:.2f} s | "
                   f"{x['bytes_per_s_per_node_while_joining']:.0f} | {x['bytes_per_s_per_node_mean']:.0f} | "
                   f"{x['bytes_per_s_per_node_max']:.0f} | {x['packets_per_s_per_node']:.1f} | "
                   f"{x['largest_packet_bytes']} B | {x['wall_s']:.0f} s |")
        self.p()
        by = {x["members"]: x for x in d}
        if len(d) >= 2:
            lo, hi = d[0], d[-1]
            r = hi["bytes_per_s_per_node_mean"] / lo["bytes_per_s_per_node_mean"]
            self.p(f"Steady per-node cost at {hi['members']} members / at {lo['members']}: {r:.2f}×.")
            self.p()
            self.target(f"gossip bytes/s per node, {hi['members']} vs {lo['members']} members", "within 1.3×",
                        f"{r:.2f}×", r <= 1.3)
        for n, bound in ((128, 5.0), (1000, 15.0)):
            if n in by:
                x = by[n]
                self.target(f"{n} gossip members converge (simulated time)", f"< {bound:.0f} s",
                            f"{x['converge_s']:.2f} s", x["converged"] and x["converge_s"] < bound)
        largest = max(x["largest_packet_bytes"] for x in d)
        self.target("largest gossip packet", "≤ 1,400 B", f"{largest} B", largest <= 1400)

    def lifeguard(self):
        self.p("### Lifeguard: starved members accusing healthy ones")
        self.p()
        d = self.data("lifeguard")
        if not d:
            return
        tot = {x["lifeguard"]: x for x in d if x["bench"] == "lifeguard-total"}
        if True not in tot or False not in tot:
            return
        on, off = tot[True], tot[False]
        self.p(f"`orion-bench lifeguard --seeds {','.join(str(s) for s in on['seeds'])} --run-s {on['run_s']:.0f}`, "
               f"in simulated time: {on['members']} members, {on['starved']} of them starved at random (stalls of "
               "100-900 ms, awake 100-1,500 ms between) for the run; the datagram path of a starved member stops "
               "while its timers fire on time (`Gossip::starve_packets`: the paper's slow member, which misses acks "
               "and refutations that did arrive). Four never-starved members are killed during the run, evenly "
               "spaced. Same seeds, Lifeguard on and off. A false `Down` is a `Down` event, at any observer, of a "
               "member that was alive; detection is kill to `Down` at every surviving observer.")
        self.p()
        self.p("| Lifeguard | accusations of healthy members by starved ones (`Suspect` events) | false `Down` events "
               "of healthy members | false `Down` events of starved members | distinct false declarations | "
               "detection p50 | p90 | max | never detected |")
        self.p("|---|---|---|---|---|---|---|---|---|")
        for name, x in (("on", on), ("off", off)):
            det = x.get("detection") or {}
            self.p(f"| {name} | {x['suspicions_by_starved']} | {x['false_down_events_healthy']} | "
                   f"{x['false_down_events_starved']} | {x['false_declarations']} | "
                   f"{det.get('p50_ms', 0):.0f} ms | {det.get('p90_ms', 0):.0f} ms | {det.get('max_ms', 0):.0f} ms | "
                   f"{x['undetected']} |")
        self.p()
        fp_on, fp_off = on["false_down_events_healthy"], off["false_down_events_healthy"]
        fewer = (fp_off / fp_on) if fp_on else None
        got = (f"{fp_off} → {fp_on}" + (f" ({fewer:.0f}× fewer)" if fewer else " (none with Lifeguard)"))
        self.target("false Down of healthy members, Lifeguard on vs off", "≥ 10× fewer", got,
                    fp_off > 0 and (fp_on == 0 or fewer >= 10))
        p_on = (on.get("detection") or {}).get("p50_ms")
        p_off = (off.get("detection") or {}).get("p50_ms")
        if p_on and p_off:
            self.target("detection time with Lifeguard (p50)", "≤ +20%", f"{p_on:.0f} ms vs {p_off:.0f} ms "
                        f"({(p_on / p_off - 1) * 100:+.0f}%)", p_on <= 1.2 * p_off)

    def scale(self):
        self.p("### Control plane at 1,000 and 5,000 nodes (in process)")
        self.p()
        d = self.data("scale")
        if not d:
            return
        self.p("`orion-bench scale --nodes N --tasks T`: the leader's controller (`orion_controller::decide`) and the "
               "replicated state (`orion_state`) in one process, no network: N `UpsertNode`, T `CreateTask` "
               "(64 MiB, 0.1 CPU each), controller turns until nothing is proposed (every placement reported "
               "running, as executors do), then one node dies (gossip `Dead`) and its tasks are placed again. "
               "Every command is serialized as the Raft log stores it (JSON), so the bytes every replica must "
               "receive are counted; today every node is a voter or learner and receives all of them.")
        self.p()
        self.p("| nodes | tasks | placed | placement wall time | state RSS | Raft log | leader egress to replicate it to every node "
               "| a node dies: tasks re-placed | its wall time | its log bytes |")
        self.p("|---|---|---|---|---|---|---|---|---|---|")
        for x in d:
            self.p(f"| {x['nodes']} | {x['tasks']} | {x['placed']} | {x['place_s']:.2f} s | "
                   f"{x['rss_mib_placed'] - x['rss_mib_start']:.0f} MiB | {x['log_bytes'] / 1e6:.1f} MB "
                   f"({x['log_entries']} entries) | {x['leader_egress_bytes_full_replication'] / 1e9:.1f} GB | "
                   f"{x['replaced']} of {x['victim_tasks']} | {x['heal_s']:.2f} s | {x['heal_log_bytes']} B |")
        self.p()

    def scheduler(self):
        self.p("## 7. Scheduler (pure placement, in process)")
        self.p()
        crit = parse_criterion(load(os.path.join(self.dir, "criterion.txt")))
        singles, batches = parse_latency(load(os.path.join(self.dir, "latency.txt")))
        if not crit and not singles:
            self.p("*Not run in this pass.*")
            self.p()
            return
        self.p("Criterion (`cargo bench -p orion-scheduler --bench place -- --measurement-time 3 "
               "--warm-up-time 1`), mean time per call with its confidence interval:")
        self.p()
        self.p("| benchmark | low | estimate | high |")
        self.p("|---|---|---|---|")
        for name, (lo, mid, hi) in crit.items():
            self.p(f"| `{name}` | {fmt_ms(lo)} | {fmt_ms(mid)} | {fmt_ms(hi)} |")
        self.p()
        self.p("Percentiles over 10,000 single placements, and one-shot batches (`cargo test -p orion-scheduler "
               "--release --test latency -- --ignored --nocapture`):")
        self.p()
        self.p("| nodes | p50 | p99 | max |")
        self.p("|---|---|---|---|")
        for n, (p50, p99, mx) in sorted(singles.items()):
            self.p(f"| {n} | {fmt_ms(p50)} | {fmt_ms(p99)} | {fmt_ms(mx)} |")
        self.p()
        for name, v in batches.items():
            self.p(f"- {name}: {fmt_ms(v)}")
        self.p()
        self.p("For reference, Nomad's published C1M placed about 3,750 containers per second across 5,000 hosts; "
               "the batch figures above are placement decisions only (no Raft, no Docker).")
        self.p()
        if 1000 in singles:
            self.target("one placement at 1,000 nodes, p99", "< 100 µs", fmt_ms(singles[1000][1], "us"),
                        singles[1000][1] < 0.1)
        key = next((k for k in batches if "dynamic port: false" in k), None)
        crit_batch = crit.get("batch_10000_tasks_5000_nodes/spread")
        if key:
            got = fmt_ms(batches[key])
            if crit_batch:
                got += f" (criterion: {fmt_ms(crit_batch[1])})"
            self.target("10,000 tasks onto 5,000 nodes", "< 1 s", got, batches[key] < 1000)

    def counters(self, d):
        rows = [(k, d.get(f"orion_counters_{k}")) for k in (1, 64)]
        if not any(v for _, v in rows):
            return
        self.p("Counters on the Orion leader over each commit run (deltas of its `/metrics`; CPU from "
               "`/proc/<pid>/stat`, as a share of one core, over the run's wall time, warm-up included):")
        self.p()
        self.p("| clients | fsync per append | appends | entries per append | commands per proposal | "
               "commands per entry | applied commands/s | executor passes | executor pass time |")
        self.p("|---|---|---|---|---|---|---|---|---|")
        for k, v in rows:
            if not v:
                continue
            fs = v.get("fsync_ms_per_append")
            ep = v.get("executor_pass_ms")
            self.p(f"| {k} | {fmt_ms(fs) if fs is not None else 'n/a'} | {v.get('appends'):.0f} | "
                   f"{v.get('entries_per_append')} | {v.get('commands_per_proposal')} | {v.get('commands_per_entry')} | "
                   f"{v.get('applied_commands_per_s')} | {v.get('executor_passes'):.0f} | "
                   f"{fmt_ms(ep) if ep is not None else 'n/a'} |")
        self.p()
        cpu = {}
        for k, v in rows:
            if v:
                cpu[f"Orion, {k} client(s)"] = v.get("cpu_share", {})
        for k in (1, 64):
            if d.get(f"etcd_cpu_{k}"):
                cpu[f"etcd, {k} client(s)"] = d[f"etcd_cpu_{k}"]
        if cpu:
            self.p("| CPU per process (cores) | member 1 | member 2 | member 3 |")
            self.p("|---|---|---|---|")
            for name, m in cpu.items():
                vals = list(m.values()) + [None] * 3
                self.p(f"| {name} | " + " | ".join("n/a" if x is None else f"{x:.2f}" for x in vals[:3]) + " |")
            self.p()

    def tasks10k(self):
        self.p("## 2b. 10,000 tasks: memory beside etcd, and writes during a snapshot")
        self.p()
        d = self.data("tasks10k")
        if not d:
            return
        self.p(f"Orion: three agents (`--snapshot-logs {d.get('snapshot_logs')}`, a snapshot of the whole "
               f"state every {d.get('snapshot_logs')} entries), filled with {d['tasks']} tasks that no node can "
               f"place (constraint `node.labels.none == x`, so they stay `pending` and start nothing), submitted "
               f"at 64 clients; resident memory 5 s after every agent applied the same index. etcd: three "
               f"members, {d['tasks']} keys put at 64 clients, each value {d.get('task_json_bytes')} bytes, the "
               f"size of one such task's JSON in `GET /tasks`; resident memory 5 s after.")
        self.p()
        self.p("| process | VmRSS | VmHWM |")
        self.p("|---|---|---|")
        for name, v in (d.get("orion_rss") or {}).items():
            lead = " (leader)" if name == d.get("leader") else ""
            self.p(f"| Orion {name}{lead} | {mib(v['rss_kib'])} | {mib(v['hwm_kib'])} |")
        for name, v in (d.get("etcd_rss") or {}).items():
            self.p(f"| etcd {name} | {mib(v['rss_kib'])} | {mib(v['hwm_kib'])} |")
        self.p()
        fill, efill = d.get("fill") or {}, d.get("etcd_fill") or {}
        if fill and efill:
            self.p(f"Filling: Orion {fill.get('throughput_per_s', 0):.0f}/s ({fill.get('errors')} errors), etcd "
                   f"{efill.get('throughput_per_s', 0):.0f}/s ({efill.get('errors')} errors); pending on the "
                   f"leader: {d.get('pending_on_leader')}.")
            self.p()
        o = [v["rss_kib"] for v in (d.get("orion_rss") or {}).values() if v.get("rss_kib")]
        e = [v["rss_kib"] for v in (d.get("etcd_rss") or {}).values() if v.get("rss_kib")]
        if o and e:
            self.target("resident memory, 10,000 tasks vs etcd with 10,000 keys", "≤ etcd's (max vs max)",
                        f"{mib(max(o))} vs {mib(max(e))} = {ratio(max(o), max(e))}", max(o) <= max(e))
        sl = d.get("slices") or []
        if sl:
            snap = [x for x in sl if x["snapshot"] and x["p99_ms"] is not None]
            calm = [x for x in sl if not x["snapshot"] and x["p99_ms"] is not None]
            self.p(f"Writes over that state: {len(sl)} slices of one-client `POST /tasks` on the leader, one after "
                   f"the other; a slice is *during a snapshot* if the leader logged a new `built snapshot` line "
                   f"while it ran. With {d['tasks']}+ tasks each snapshot encodes the whole state.")
            self.p()
            self.p("| slices | count | p50 (median of slices) | p99 (median of slices) | p99 (worst slice) |")
            self.p("|---|---|---|---|---|")
            for name, xs in (("without a snapshot", calm), ("during a snapshot", snap)):
                if xs:
                    self.p(f"| {name} | {len(xs)} | {fmt_ms(median([x['p50_ms'] for x in xs]))} | "
                           f"{fmt_ms(median([x['p99_ms'] for x in xs]))} | {fmt_ms(max(x['p99_ms'] for x in xs))} |")
            self.p()
            if snap and calm:
                normal = median([x["p99_ms"] for x in calm])
                worst = max(x["p99_ms"] for x in snap)
                self.target("write p99 during a snapshot of 10,000 tasks", "≤ 2× normal",
                            f"{fmt_ms(worst)} (worst slice) vs {fmt_ms(normal)} = {ratio(worst, normal)}",
                            worst <= 2 * normal)

    def render(self):
        m = self.r.get("machine", {})
        body_start = len(self.lines)
        self.startup()
        self.write()
        self.tasks10k()
        self.running()
        self.failover()
        self.memory()
        self.gossip()
        self.gossip_sim()
        self.lifeguard()
        self.scale()
        self.scheduler()
        body = self.lines[body_start:]
        self.lines = []
        mode = self.r.get("mode", "?")
        self.p("# Orion benchmarks")
        self.p()
        self.p(f"Written by `scripts/bench.sh{' --quick' if mode == 'quick' else ''}` on {self.r.get('date')} "
               f"({mode} mode); rerun it to refresh this page. Every comparison below was measured in the same "
               f"run on the same machine and is quoted as a ratio.")
        self.p()
        self.p("**Read the absolute numbers with care.** The machine has 2 cores shared with other engineers' "
               "builds and tests, so absolute times drift from run to run and tails are noisy; the same-run "
               "ratios are the figures to rely on. All processes of a comparison (the agents or etcd members, "
               "the load generator, the Docker engine) share those 2 cores.")
        self.p()
        self.p("## Machine")
        self.p()
        self.p(f"- CPU: {m.get('nproc')} × {m.get('cpu')}; memory {m.get('memory_gib')} GiB; kernel {m.get('kernel')}")
        self.p(f"- Docker engine {m.get('docker')}; {m.get('etcd')}; {m.get('rustc')}; Python {m.get('python')}")
        self.p(f"- Orion at commit `{m.get('commit')}`{' with uncommitted changes' if m.get('dirty') else ''}, "
               f"release build; load average at start {' '.join(m.get('loadavg_start', []))}, at end "
               f"{' '.join(m.get('loadavg_end', []))}")
        self.p()
        self.p("## Targets")
        self.p()
        self.p("| figure | target | measured | verdict |")
        self.p("|---|---|---|---|")
        for t in self.targets:
            self.p("| " + " | ".join(t) + " |")
        self.p()
        self.lines += body
        self.p("## How to reproduce")
        self.p()
        self.p("```")
        self.p("scripts/bench.sh            # full: 20 start-ups, 20 rounds of submit-to-running, 20 kills per case")
        self.p("scripts/bench.sh --quick    # CI-sized: fewer requests, 5 rounds, 5 kills per case")
        self.p("```")
        self.p()
        self.p("It runs, in order:")
        self.p()
        self.p("```")
        for c in self.commands():
            self.p(c)
        self.p("```")
        self.p()
        self.p("Raw results of the run: `results.json`, `criterion.txt`, `latency.txt` in the output directory the "
               "script prints (agent logs of the failover figure under `logs/`).")
        return "\n".join(self.lines) + "\n"

    def commands(self):
        mode = self.r.get("mode", "full")
        return [
            "apt-get install -y etcd-server etcd-client        # only if etcd is missing",
            "scripts/test-image.sh                               # orion/busybox:latest, if missing",
            "cargo build --release -p orion -p orion-bench",
            f"python3 scripts/bench/run.py --orion target/release/orion --tool target/release/orion-bench "
            f"--mode {mode} --out $OUT",
            "  #  1: orion-bench startup --bin target/release/orion --runs 20 --ip 127.0.30.1 --dir $TMP",
            "  #  2: orion-bench load --target orion --url http://<leader>:8000 --clients 1|64 --requests N "
            "--body write-body.json [--placed --poll-ms 1]",
            "  #     orion-bench load --target etcd --url http://<etcd leader>:2379 --clients 1|64 --requests N "
            "--value-bytes <CreateTask JSON size>",
            "  #  3: POST /tasks + GET every 10 ms; docker run -d; engine API create+start; swarm service create",
            "  #  4: kill -9 + docker rm -f of the victim's containers; poll /nodes and /tasks/{id} every 10 ms",
            "  #  5: VmRSS of /proc/<pid>/status; orion-bench load of 1,000 unplaceable tasks",
            "  #  6: orion-bench gossip --sizes 8,32,128 --net 127.0.31",
            "  #     orion-bench gossip-sim --sizes 8,32,128,1000 --converge-s 30 --settle-s 5 --window-s 5",
            "  #     orion-bench lifeguard --seeds 1,2,3 --run-s 120",
            "  #     orion-bench scale --nodes 1000 --tasks 10000; orion-bench scale --nodes 5000 --tasks 50000",
            "cargo bench -p orion-scheduler --bench place -- --measurement-time 3 --warm-up-time 1",
            "cargo test -p orion-scheduler --release --test latency -- --ignored --nocapture",
            "python3 scripts/bench/report.py $OUT > BENCHMARKS.md",
        ]


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def kib_list(d):
    if not d:
        return "n/a"
    return ", ".join(f"{mib(v)}" for v in d.values())


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(Report(sys.argv[1]).render())


if __name__ == "__main__":
    main()
