#!/usr/bin/env python3
"""Runs the whole-cluster figures of BENCHMARKS.md (1 to 6) and writes them as JSON.

    python3 scripts/bench/run.py --orion target/release/orion --tool target/release/orion-bench \
        --mode full|quick --out DIR [--only startup,write,tasks10k,running,failover,memory,gossip,gossip_sim,lifeguard,scale]

Each figure is independent: a figure that fails records its error and the others still run.
Results go to DIR/results.json after every figure. Loopback nets: 127.0.30.x (Orion) and
127.0.31.x (etcd, in-process gossip members), or ORION_BENCH_NET and ORION_BENCH_ETCD_NET."""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (BENCH_LABEL, CLOCK_TICKS, ETCD_NET, ORION_NET, Agent, Cluster, Docker,  # noqa: E402
                    EtcdCluster, cpu_ticks, http_json, log, metric_sum, now, token_for, port_answers, rss_kib,
                    scrape)

BUSYBOX = "orion/busybox:latest"
ABSENT = "orion/absent-bench:none"

SIZES = {
    # figure 1: start-ups; figure 2: requests per load run; figure 3: samples per method;
    # figure 4: kills per case; figure 6: measurement window in seconds.
    "full": {"startups": 20, "commit1": 1000, "commit64": 20000, "placed1": 300, "placed64": 10000,
             "running": 20, "kills": 20, "gossip_window": 10.0, "pending": 1000, "tasks10k": 10000,
             "slices": 20, "slice": 100, "sim_sizes": "8,32,128,1000", "lifeguard_seeds": "1,2,3", "lifeguard_run_s": 120},
    "quick": {"startups": 20, "commit1": 200, "commit64": 1000, "placed1": 100, "placed64": 500,
              "running": 5, "kills": 5, "gossip_window": 3.0, "pending": 1000, "tasks10k": 10000,
              "slices": 10, "slice": 100, "sim_sizes": "8,32,128", "lifeguard_seeds": "1", "lifeguard_run_s": 60},
}


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)


def machine():
    def first(cmd):
        try:
            return sh(cmd).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "docker": first(["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"]),
        "etcd": first(["sh", "-c", "etcd --version | head -1"]),
        "rustc": first(["rustc", "--version"]),
        "python": platform.python_version(),
        "commit": first(["git", "-C", repo, "rev-parse", "--short", "HEAD"]),
        "dirty": bool(first(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }



def _iptables_host(op, ip):
    for chain, flag in (("INPUT", "-d"), ("OUTPUT", "-s")):
        subprocess.run(["iptables", op, chain, flag, ip, "-j", "DROP"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=(op == "-I"))


def cut_host(ip):
    """Drops every packet to and from `ip` (a loopback address of the bench's own)."""
    _iptables_host("-I", ip)


def heal_host(ip):
    while subprocess.run(["iptables", "-C", "INPUT", "-d", ip, "-j", "DROP"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        _iptables_host("-D", ip)

class Bench:
    def __init__(self, args):
        self.a = args
        self.n = dict(SIZES[args.mode])
        if args.kills:
            self.n["kills"] = args.kills
        self.run_id = uuid.uuid4().hex[:6]
        self.work = tempfile.mkdtemp(prefix="orion-bench-")
        self.docker = Docker()
        self.results = {"mode": args.mode, "run_id": self.run_id, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                        "machine": machine(), "figures": {}}
        os.makedirs(args.out, exist_ok=True)

    def save(self):
        with open(os.path.join(self.a.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)

    def cluster(self, name):
        return Cluster(self.a.orion, self.work, self.run_id, name)

    def tool(self, *args, timeout=600):
        cmd = [self.a.tool] + [str(x) for x in args]
        env = dict(os.environ)
        if "--url" in cmd and args[:1] == ("load",) and "orion" in cmd:
            token = token_for(cmd[cmd.index("--url") + 1])
            if token:
                env["ORION_TOKEN"] = token
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-2000:]}")
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def body_file(self, name, body):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            json.dump(body, f, separators=(",", ":"))
        return path

    # ------------------------------------------------------------ figure 1

    def fig_startup(self):
        out = self.tool("startup", "--bin", self.a.orion, "--runs", self.n["startups"], "--ip", f"{ORION_NET}.1",
                        "--dir", self.work)[0]
        return out

    # ------------------------------------------------------------ figure 2

    def fig_write(self):
        res = {}
        body = {"image": ABSENT, "command": ["sleep", "3600"], "restartPolicy": "never",
                "labels": {BENCH_LABEL: self.run_id}}
        path = self.body_file("write-body.json", body)
        size = self.tool("payload-size", "--body", path)[0]
        res["payload"] = size
        c = self.cluster("write")
        try:
            c.start()
            lid = c.leader()
            leader = c.by_id(lid)
            res["orion_target"] = f"{leader.url} (the leader)"
            runs = []
            # The one-client placement run goes first, on the fresh cluster: the 64-client
            # runs leave thousands of tasks whose failed pulls the executors work through
            # behind later runs.
            plan = (("placed", 1, "placed1"), ("commit", 1, "commit1"), ("commit", 64, "commit64"),
                    ("placed", 64, "placed64"))
            for kind, clients, key in plan:
                if kind == "commit":
                    warm = 20 if clients == 1 else 200
                    log(f"write: orion commit, {clients} clients")
                    before = self.counters(c, leader)
                    runs.append(self.tool("load", "--target", "orion", "--url", leader.url, "--clients", clients,
                                          "--requests", self.n[key], "--warmup", warm, "--body", path,
                                          "--label", f"orion-commit-{clients}")[0])
                    res[f"orion_counters_{clients}"] = self.counter_delta(before, self.counters(c, leader))
                else:
                    log(f"write: orion commit+placed, {clients} clients")
                    runs.append(self.tool("load", "--target", "orion", "--url", leader.url, "--clients", clients,
                                          "--requests", self.n[key], "--warmup", 10, "--body", path, "--placed",
                                          "--poll-ms", 1, "--label", f"orion-placed-{clients}")[0])
            res["orion_rss_kib_after"] = {a.id: rss_kib(a.pid)[0] for a in c.agents}
            st, tasks = http_json("GET", leader.url + "/tasks", timeout=30)
            if st == 200:
                states = {}
                for t in tasks:
                    states[t["state"]] = states.get(t["state"], 0) + 1
                res["orion_task_states_after"] = states
        finally:
            c.stop()
            c.wipe()
        e = EtcdCluster(self.work)
        try:
            lead = e.start()
            res["etcd_version"] = e.version()
            res["etcd_target"] = f"{lead} (the leader)"
            for clients, key in ((1, "commit1"), (64, "commit64")):
                warm = 20 if clients == 1 else 200
                log(f"write: etcd put, {clients} clients")
                cpu0 = {f"e{i + 1}": cpu_ticks(p.pid) for i, p in enumerate(e.procs)}
                t0 = now()
                runs.append(self.tool("load", "--target", "etcd", "--url", lead, "--clients", clients,
                                      "--requests", self.n[key], "--warmup", warm,
                                      "--value-bytes", size["command_bytes"], "--label", f"etcd-put-{clients}")[0])
                wall = now() - t0
                res[f"etcd_cpu_{clients}"] = {k: cpu_share(v, cpu_ticks(e.procs[i].pid), wall)
                                              for i, (k, v) in enumerate(cpu0.items())}
            res["etcd_rss_kib_after"] = {f"e{i + 1}": rss_kib(p.pid)[0] for i, p in enumerate(e.procs)}
        finally:
            e.stop()
        res["runs"] = runs
        return res

    def counters(self, c, leader):
        """What the 64-client figures are read from: the leader's /metrics and every agent's
        CPU time, at one instant."""
        return {"t": now(), "metrics": scrape(leader.url), "cpu": {a.id: cpu_ticks(a.pid) for a in c.agents}}

    @staticmethod
    def counter_delta(a, b):
        wall = b["t"] - a["t"]
        ma, mb = a["metrics"], b["metrics"]

        def d(name):
            return metric_sum(mb, name) - metric_sum(ma, name)

        def ratio(num, den):
            return round(num / den, 3) if den else None

        return {
            "wall_s": round(wall, 2),
            "fsync_ms_per_append": ratio(1000 * d("orion_raft_append_seconds_sum"), d("orion_raft_append_seconds_count")),
            "appends": d("orion_raft_append_seconds_count"),
            "entries_per_append": ratio(d("orion_raft_append_entries_sum"), d("orion_raft_append_entries_count")),
            "commands_per_proposal": ratio(d("orion_raft_proposal_commands_sum"),
                                           d("orion_raft_proposal_commands_count")),
            "commands_per_entry": ratio(d("orion_raft_applied_commands_total"), d("orion_raft_applied_entries_total")),
            "applied_commands_per_s": ratio(d("orion_raft_applied_commands_total"), wall),
            "applied_entries_per_s": ratio(d("orion_raft_applied_entries_total"), wall),
            "executor_passes": d("orion_executor_passes_total"),
            "executor_pass_ms": ratio(1000 * d("orion_executor_pass_seconds_sum"), d("orion_executor_pass_seconds_count")),
            "cpu_share": {k: cpu_share(v, b["cpu"].get(k), wall) for k, v in a["cpu"].items()},
        }

    # ------------------------------------------------------------ figure: 10,000 tasks

    def fig_tasks10k(self):
        """An agent holding 10,000 tasks beside an etcd member holding 10,000 keys of the same
        JSON size, and write latency while a snapshot of that state is built."""
        res = {"tasks": self.n["tasks10k"]}
        snapshot_logs = 1000
        res["snapshot_logs"] = snapshot_logs
        c = Cluster(self.a.orion, self.work, self.run_id, "scale", extra=("--snapshot-logs", str(snapshot_logs)))
        body = {"image": BUSYBOX, "command": ["sleep", "3600"], "constraints": ["node.labels.none == x"],
                "labels": {BENCH_LABEL: self.run_id}}
        path = self.body_file("scale-body.json", body)
        try:
            c.start()
            lid = c.leader()
            leader = c.by_id(lid)
            log(f"scale: {self.n['tasks10k']} pending tasks, 64 clients")
            res["fill"] = self.tool("load", "--target", "orion", "--url", leader.url, "--clients", 64,
                                    "--requests", self.n["tasks10k"], "--warmup", 0, "--body", path,
                                    "--label", "scale-fill")[0]
            # Every agent applied everything (same applied index as the leader's commit).
            end = now() + 120
            while now() < end:
                sts = [http_json("GET", a.url + "/status", timeout=5)[1] for a in c.agents]
                if all(isinstance(x, dict) for x in sts) and len({x.get("appliedIndex") for x in sts}) == 1:
                    break
                time.sleep(0.5)
            time.sleep(5)
            st, tasks = http_json("GET", leader.url + "/tasks?state=pending", timeout=60)
            res["pending_on_leader"] = len(tasks) if st == 200 else None
            one = tasks[0] if st == 200 and tasks else {}
            res["task_json_bytes"] = len(json.dumps(one, separators=(",", ":")))
            res["orion_rss"] = {a.id: dict(zip(("rss_kib", "hwm_kib"), rss_kib(a.pid))) for a in c.agents}
            res["leader"] = lid
            # Writes in slices of `slice` requests at one client; a slice during which the
            # leader logged a new "built snapshot" ran beside a snapshot of the whole state
            # (`GET /status` does not show the snapshot index).
            slices = []
            for i in range(self.n["slices"]):
                s0 = snapshots_built(leader.log_path)
                out = self.tool("load", "--target", "orion", "--url", leader.url, "--clients", 1,
                                "--requests", self.n["slice"], "--warmup", 0, "--body", path,
                                "--label", f"scale-slice-{i}")[0]
                s1 = snapshots_built(leader.log_path)
                slices.append({"snapshot": s0 != s1, "p50_ms": (out.get("commit") or {}).get("p50_ms"),
                               "p99_ms": (out.get("commit") or {}).get("p99_ms"),
                               "max_ms": (out.get("commit") or {}).get("max_ms")})
            res["slices"] = slices
        finally:
            c.stop()
            c.wipe()
        e = EtcdCluster(self.work)
        try:
            lead = e.start()
            log(f"scale: etcd, {self.n['tasks10k']} keys of {res.get('task_json_bytes')} bytes")
            res["etcd_fill"] = self.tool("load", "--target", "etcd", "--url", lead, "--clients", 64,
                                         "--requests", self.n["tasks10k"], "--warmup", 0,
                                         "--value-bytes", res.get("task_json_bytes") or 1000,
                                         "--label", "etcd-scale-fill")[0]
            time.sleep(5)
            res["etcd_rss"] = {f"e{i + 1}": dict(zip(("rss_kib", "hwm_kib"), rss_kib(p.pid)))
                               for i, p in enumerate(e.procs)}
        finally:
            e.stop()
        return res

    # ------------------------------------------------------------ figure 3

    def orion_to_running(self, c, leader):
        body = {"image": BUSYBOX, "command": ["sleep", "3600"], "restartPolicy": "never",
                "labels": {BENCH_LABEL: self.run_id}}
        t0 = now()
        st, task = http_json("POST", leader.url + "/tasks", body)
        if st != 201:
            raise RuntimeError(f"POST /tasks: {st} {task}")
        tid = task["id"]
        committed = now() - t0
        placed = None
        while True:
            st, t = http_json("GET", f"{leader.url}/tasks/{tid}")
            el = now() - t0
            if st == 200 and t.get("node") and placed is None:
                placed = el
            if st == 200 and t["state"] == "running":
                break
            if st == 200 and t["state"] in ("failed", "lost", "stopped", "completed"):
                raise RuntimeError(f"task {tid} ended {t['state']}: {t.get('reason')}")
            if el > 30:
                raise RuntimeError(f"task {tid} not running after 30 s: {t}")
            time.sleep(0.010)
        total = now() - t0
        http_json("DELETE", f"{leader.url}/tasks/{tid}")
        end = now() + 10
        while now() < end and self.docker.containers_with_label(f"orion.task={tid}"):
            time.sleep(0.05)
        return {"total": total, "committed": committed, "placed": placed, "node": t.get("node")}

    def docker_cli_run(self):
        t0 = now()
        r = sh(["docker", "run", "-d", "--label", f"{BENCH_LABEL}={self.run_id}", BUSYBOX, "sleep", "3600"])
        el = now() - t0
        if r.returncode != 0:
            raise RuntimeError(f"docker run: {r.stderr.strip()}")
        self.docker.call("DELETE", f"/containers/{r.stdout.strip()}?force=1")
        return el

    def docker_api_run(self):
        t0 = now()
        st, c = self.docker.call("POST", "/containers/create", {
            "Image": BUSYBOX, "Cmd": ["sleep", "3600"], "Labels": {BENCH_LABEL: self.run_id}})
        if st != 201:
            raise RuntimeError(f"create: {st} {c}")
        st, e = self.docker.call("POST", f"/containers/{c['Id']}/start")
        el = now() - t0
        if st != 204:
            raise RuntimeError(f"start: {st} {e}")
        self.docker.call("DELETE", f"/containers/{c['Id']}?force=1")
        return el

    def swarm_run(self, i):
        name = f"orion-bench-{self.run_id}-{i}"
        spec = {"Name": name, "Labels": {BENCH_LABEL: self.run_id},
                "TaskTemplate": {"ContainerSpec": {"Image": BUSYBOX, "Command": ["sleep", "3600"],
                                                   "Labels": {BENCH_LABEL: self.run_id}},
                                 "RestartPolicy": {"Condition": "none"}},
                "Mode": {"Replicated": {"Replicas": 1}}}
        t0 = now()
        st, s = self.docker.call("POST", "/services/create", spec)
        if st != 201:
            raise RuntimeError(f"service create: {st} {s}")
        f = json.dumps({"service": [name]})
        state = None
        try:
            while True:
                st, tasks = self.docker.call("GET", "/tasks?filters=" + urllib_quote(f))
                el = now() - t0
                if st == 200 and tasks:
                    state = tasks[0]["Status"]["State"]
                    if any(t["Status"]["State"] == "running" for t in tasks):
                        return el
                    if state in ("failed", "rejected"):
                        raise RuntimeError(f"swarm task {state}: {tasks[0]['Status'].get('Err')}")
                if el > 60:
                    raise RuntimeError(f"swarm task not running after 60 s (last state {state})")
                time.sleep(0.010)
        finally:
            self.docker.call("DELETE", f"/services/{s['ID']}")
            # Force-remove its container at once (a plain stop waits 10 s: sleep ignores SIGTERM).
            end = now() + 15
            while now() < end and self.docker.remove_labelled(f"com.docker.swarm.service.id={s['ID']}"):
                time.sleep(0.1)

    def fig_running(self):
        res = {"orion": [], "docker_cli": [], "docker_api": [], "swarm": [], "errors": []}
        swarm_state = sh(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()
        res["swarm_state_before"] = swarm_state
        we_init = False
        if swarm_state == "inactive":
            r = sh(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"])
            if r.returncode == 0:
                we_init = True
            else:
                res["errors"].append(f"docker swarm init: {r.stderr.strip()}")
        elif swarm_state != "active":
            res["errors"].append(f"swarm is {swarm_state!r}; Swarm figure skipped")
        swarm_ok = we_init or swarm_state == "active"
        c = self.cluster("running")
        try:
            c.start()
            leader = c.by_id(c.leader())
            # One of each first, unmeasured: warms the image and engine caches for all alike.
            self.orion_to_running(c, leader)
            self.docker_cli_run()
            self.docker_api_run()
            if swarm_ok:
                try:
                    self.swarm_run("warm")
                except RuntimeError as e:
                    res["errors"].append(f"swarm: {e}")
                    swarm_ok = False
            for i in range(self.n["running"]):
                log(f"running: round {i + 1}/{self.n['running']}")
                res["orion"].append(self.orion_to_running(c, leader))
                res["docker_cli"].append(self.docker_cli_run())
                res["docker_api"].append(self.docker_api_run())
                if swarm_ok:
                    try:
                        res["swarm"].append(self.swarm_run(i))
                    except RuntimeError as e:
                        res["errors"].append(f"swarm: {e}")
                        swarm_ok = False
        finally:
            c.stop()
            c.wipe()
            self.docker.remove_labelled(f"{BENCH_LABEL}={self.run_id}")
            if we_init:
                r = sh(["docker", "swarm", "leave", "--force"])
                res["swarm_left"] = r.returncode == 0
        res["swarm_initialised_by_bench"] = we_init
        return res

    # ------------------------------------------------------------ figure 4

    def one_kill(self, c, case, i):
        """One kill of the node that runs the task; returns the split timings or a failure."""
        lid = c.wait_formed(30)
        leader = c.by_id(lid)
        workers = sorted((a for a in c.agents if a.id != lid), key=lambda a: a.id)
        if case in ("worker", "host"):
            victim, fallback, excluded = workers[0], workers[1], leader
        else:
            victim, fallback, excluded = leader, workers[0], workers[1]
        port = 18080
        # A filler on the fallback makes it the more loaded node, so spread picks the victim;
        # the measured task may run on the victim or the fallback only.
        filler = {"image": BUSYBOX, "command": ["sleep", "3600"], "restartPolicy": "never",
                  "constraints": [f"node.id == {fallback.id}"], "labels": {BENCH_LABEL: self.run_id}}
        st, f = http_json("POST", leader.url + "/tasks", filler)
        if st != 201:
            raise RuntimeError(f"filler: {st} {f}")
        task = {"image": BUSYBOX, "command": ["httpd", "-f", "-p", "80", "-h", "/www"],
                "portBindings": {"80/tcp": str(port)}, "restartPolicy": "always",
                "constraints": [f"node.id != {excluded.id}"], "labels": {BENCH_LABEL: self.run_id}}
        ids = [f["id"]]
        try:
            end = now() + 20
            while now() < end:
                st, ft = http_json("GET", f"{leader.url}/tasks/{f['id']}")
                if st == 200 and ft["state"] == "running":
                    break
                time.sleep(0.02)
            st, t = http_json("POST", leader.url + "/tasks", task)
            if st != 201:
                raise RuntimeError(f"task: {st} {t}")
            tid = t["id"]
            ids.append(tid)
            end = now() + 20
            while True:
                st, t = http_json("GET", f"{leader.url}/tasks/{tid}")
                if st == 200 and t["state"] == "running" and port_answers(c.by_id(t["node"]).ip, port):
                    break
                if now() > end:
                    raise RuntimeError(f"measured task not running before the kill: {t}")
                time.sleep(0.02)
            if t["node"] != victim.id:
                return {"skipped": f"task landed on {t['node']}, not on the intended victim {victim.id}"}
            survivors = [a for a in c.agents if a is not victim]
            watch = survivors if case == "leader" else [leader]
            if case == "host":
                # The whole host is lost, not just the process: nothing reaches its address
                # any more, so it cannot refuse gossip (no ICMP port unreachable) and the
                # survivors must wait out the suspicion timeout.
                cut_host(victim.ip)
            # The machine dies: the process and its containers.
            t0 = now()
            victim.kill()
            c.docker.remove_labelled(f"orion.node={victim.id}")
            removed = now() - t0
            detect = decide = running = None
            new_node = None
            last = None
            while now() - t0 < 20:
                if detect is None:
                    for a in watch:
                        st, nodes = http_json("GET", a.url + "/nodes", timeout=1)
                        if st == 200 and any(n["id"] == victim.id and n["status"] == "dead" for n in nodes):
                            detect = now() - t0
                            break
                st, tt = http_json("GET", f"{fallback.url}/tasks/{tid}", timeout=1)
                if st == 200:
                    last = tt
                    moved = tt.get("node") and tt["node"] != victim.id
                    if decide is None and moved and tt["state"] in ("scheduled", "starting", "running"):
                        decide = now() - t0
                        new_node = tt["node"]
                    if moved and tt["state"] == "running" and port_answers(c.by_id(tt["node"]).ip, port, 0.1):
                        running = now() - t0
                        new_node = tt["node"]
                        if decide is None:
                            decide = running
                        break
                time.sleep(0.010)
            out = {"case": case, "victim": victim.id, "new_node": new_node, "detect": detect,
                   "decide": decide, "running": running, "containers_removed_after": removed}
            if running is None:
                out["failed"] = (f"not running elsewhere within 20 s; detect={detect} decide={decide}; "
                                 f"last task view: state={last and last.get('state')} node={last and last.get('node')} "
                                 f"reason={last and last.get('reason')}")
            return out
        finally:
            if case == "host":
                heal_host(victim.ip)
            for a in c.live():
                st, _ = http_json("GET", a.url + "/health", timeout=1)
                if st == 200:
                    for x in ids:
                        http_json("DELETE", f"{a.url}/tasks/{x}", timeout=5)
                    break
            for a in c.agents:
                if a.proc.poll() is not None:
                    a.start()
                    a.wait_health()

    def fig_failover(self):
        """Kills of a worker's process, of the leader's process, and of a worker's whole host
        (its address cut off first, so its host refuses nothing), in turn."""
        res = {"worker": [], "leader": [], "host": [], "skipped": [], "rebuilt": 0, "failures": []}
        gen = 0
        c = self.cluster(f"failover{gen}")
        try:
            c.start()
            for i in range(self.n["kills"]):
                for case in ("worker", "leader", "host"):
                    for attempt in range(3):
                        log(f"failover: {case} kill {i + 1}/{self.n['kills']}")
                        try:
                            r = self.one_kill(c, case, i)
                        except RuntimeError as e:
                            r = {"error": str(e)}
                        if "skipped" in r:
                            res["skipped"].append(r["skipped"])
                            continue
                        if "error" in r or "failed" in r:
                            res["failures"].append({"case": case, **r})
                        if "error" not in r:
                            res[case].append(r)
                        break
                    # The cluster must be whole again before the next kill; else start afresh.
                    try:
                        c.wait_formed(30)
                    except RuntimeError as e:
                        res["failures"].append({"case": case, "error": f"cluster did not recover: {e}"})
                        c.stop()
                        gen += 1
                        res["rebuilt"] += 1
                        c = self.cluster(f"failover{gen}")
                        c.start()
                if len(res["failures"]) >= 6:
                    res["aborted"] = "six failures; stopped early"
                    return res
        finally:
            self.keep_logs(c)
            c.stop()
        return res

    def keep_logs(self, c):
        dest = os.path.join(self.a.out, "logs")
        os.makedirs(dest, exist_ok=True)
        for a in c.agents:
            try:
                os.replace(a.log_path, os.path.join(dest, os.path.basename(a.log_path)))
            except OSError:
                pass

    # ------------------------------------------------------------ figure 5

    def fig_memory(self):
        res = {}
        a = Agent(self.a.orion, f"b{self.run_id}-idle", f"{ORION_NET}.1", os.path.join(self.work, "idle"),
                  self.work, bootstrap=True)
        try:
            a.start()
            a.wait_health()
            time.sleep(5)
            rss, hwm = rss_kib(a.pid)
            res["idle"] = {"rss_kib": rss, "hwm_kib": hwm, "after_s": 5}
        finally:
            a.kill()
            self.docker.remove_labelled(f"orion.node={a.id}")
        c = self.cluster("memory")
        try:
            c.start()
            time.sleep(3)
            res["cluster_idle"] = {x.id: rss_kib(x.pid)[0] for x in c.agents}
            lid = c.leader()
            body = {"image": BUSYBOX, "command": ["sleep", "3600"], "constraints": ["node.labels.none == x"],
                    "labels": {BENCH_LABEL: self.run_id}}
            path = self.body_file("pending-body.json", body)
            load = self.tool("load", "--target", "orion", "--url", c.by_id(lid).url, "--clients", 8,
                             "--requests", self.n["pending"], "--warmup", 0, "--body", path,
                             "--label", "pending-1000")[0]
            res["submit"] = load
            end = now() + 60
            counts = {}
            while now() < end:
                counts = {}
                for x in c.agents:
                    st, ts = http_json("GET", x.url + "/tasks?state=pending", timeout=30)
                    counts[x.id] = len(ts) if st == 200 else None
                if all(v == self.n["pending"] for v in counts.values()):
                    break
                time.sleep(0.5)
            res["pending_seen"] = counts
            time.sleep(5)
            res["cluster_1000"] = {x.id: dict(zip(("rss_kib", "hwm_kib"), rss_kib(x.pid))) for x in c.agents}
            res["leader"] = lid
            st, one = http_json("GET", c.by_id(lid).url + "/tasks?state=pending", timeout=30)
            if st == 200 and one:
                res["example_reason"] = one[0].get("reason")
        finally:
            c.stop()
            c.wipe()
        return res

    # ------------------------------------------------------------ figure 6

    def fig_gossip(self):
        return self.tool("gossip", "--sizes", "8,32,128", "--net", ETCD_NET,
                         "--window-s", self.n["gossip_window"], "--converge-s", 60, timeout=900)

    # ------------------------------------------------------------ figure 6b, 6c (simulated time)

    def fig_gossip_sim(self):
        # 1,000 members take ~20-40 min of wall time on 2 shared cores (the figures are
        # simulated time and do not depend on it).
        return self.tool("gossip-sim", "--sizes", self.n["sim_sizes"], "--converge-s", 30,
                         "--settle-s", 5, "--window-s", 5, timeout=3600)

    def fig_lifeguard(self):
        return self.tool("lifeguard", "--seeds", self.n["lifeguard_seeds"], "--run-s", self.n["lifeguard_run_s"],
                         timeout=1800)

    def fig_scale(self):
        return [self.tool("scale", "--nodes", 1000, "--tasks", 10000, timeout=600)[0],
                self.tool("scale", "--nodes", 5000, "--tasks", 50000, timeout=1800)[0]]

    # ------------------------------------------------------------

    def run(self, only):
        figures = [("startup", self.fig_startup), ("write", self.fig_write), ("tasks10k", self.fig_tasks10k),
                   ("running", self.fig_running), ("memory", self.fig_memory), ("gossip", self.fig_gossip),
                   ("gossip_sim", self.fig_gossip_sim), ("lifeguard", self.fig_lifeguard), ("scale", self.fig_scale),
                   ("failover", self.fig_failover)]
        for name, f in figures:
            if only and name not in only:
                continue
            log(f"figure {name} ...")
            t0 = now()
            try:
                self.results["figures"][name] = {"ok": True, "data": f()}
            except Exception as e:  # a figure's failure is a result too
                traceback.print_exc()
                self.results["figures"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.results["figures"][name]["wall_s"] = round(now() - t0, 1)
            log(f"figure {name}: done in {now() - t0:.0f} s")
            self.save()
        self.results["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        self.save()


def snapshots_built(log_path):
    """How many snapshots an agent's log says it built."""
    try:
        with open(log_path, errors="replace") as f:
            return sum(1 for line in f if "built snapshot" in line)
    except OSError:
        return None


def cpu_share(t0, t1, wall):
    """CPU time a process used over `wall` seconds, as a share of one core."""
    if t0 is None or t1 is None or wall <= 0:
        return None
    return round((t1 - t0) / CLOCK_TICKS / wall, 3)


def urllib_quote(s):
    import urllib.parse
    return urllib.parse.quote(s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--orion", required=True)
    p.add_argument("--tool", required=True)
    p.add_argument("--mode", choices=["full", "quick"], default="full")
    p.add_argument("--out", required=True)
    p.add_argument("--only", default="")
    p.add_argument("--kills", type=int, default=0, help="failover rounds per case (default: the mode's)")
    a = p.parse_args()
    a.orion = os.path.abspath(a.orion)
    a.tool = os.path.abspath(a.tool)
    b = Bench(a)
    try:
        b.run([x for x in a.only.split(",") if x])
    finally:
        b.docker.remove_labelled(f"{BENCH_LABEL}={b.run_id}")
        import shutil
        shutil.rmtree(b.work, ignore_errors=True)
    print(os.path.join(a.out, "results.json"))


if __name__ == "__main__":
    main()
