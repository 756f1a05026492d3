#!/usr/bin/env python3
"""Runs the whole-cluster figures of BENCHMARKS.md (1 to 6) and writes them as JSON.

    python3 scripts/bench/run.py --orion target/release/orion --tool target/release/orion-bench \
        --mode full|quick --out DIR [--only startup,write,running,failover,memory,gossip]

Each figure is independent: a figure that fails records its error and the others still run.
Results go to DIR/results.json after every figure. Loopback nets: 127.0.30.x (Orion) and
127.0.31.x (etcd, in-process gossip members)."""

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
from common import (BENCH_LABEL, Agent, Cluster, Docker, EtcdCluster, http_json, log, now, token_for,  # noqa: E402
                    port_answers, rss_kib)

BUSYBOX = "orion/busybox:latest"
ABSENT = "orion/absent-bench:none"

SIZES = {
    # figure 1: start-ups; figure 2: requests per load run; figure 3: samples per method;
    # figure 4: kills per case; figure 6: measurement window in seconds.
    "full": {"startups": 20, "commit1": 1000, "commit64": 5000, "placed1": 300, "placed64": 2000,
             "running": 20, "kills": 20, "gossip_window": 10.0, "pending": 1000},
    "quick": {"startups": 20, "commit1": 200, "commit64": 1000, "placed1": 100, "placed64": 500,
              "running": 5, "kills": 5, "gossip_window": 3.0, "pending": 1000},
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


class Bench:
    def __init__(self, args):
        self.a = args
        self.n = SIZES[args.mode]
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
        out = self.tool("startup", "--bin", self.a.orion, "--runs", self.n["startups"], "--ip", "127.0.30.1",
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
                    runs.append(self.tool("load", "--target", "orion", "--url", leader.url, "--clients", clients,
                                          "--requests", self.n[key], "--warmup", warm, "--body", path,
                                          "--label", f"orion-commit-{clients}")[0])
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
                runs.append(self.tool("load", "--target", "etcd", "--url", lead, "--clients", clients,
                                      "--requests", self.n[key], "--warmup", warm,
                                      "--value-bytes", size["command_bytes"], "--label", f"etcd-put-{clients}")[0])
            res["etcd_rss_kib_after"] = {f"e{i + 1}": rss_kib(p.pid)[0] for i, p in enumerate(e.procs)}
        finally:
            e.stop()
        res["runs"] = runs
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
        if case == "worker":
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
            watch = [leader] if case == "worker" else survivors
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
        res = {"worker": [], "leader": [], "skipped": [], "rebuilt": 0, "failures": []}
        gen = 0
        c = self.cluster(f"failover{gen}")
        try:
            c.start()
            for i in range(self.n["kills"]):
                for case in ("worker", "leader"):
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
        a = Agent(self.a.orion, f"b{self.run_id}-idle", "127.0.30.1", os.path.join(self.work, "idle"),
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
        return self.tool("gossip", "--sizes", "8,32,128", "--net", "127.0.31",
                         "--window-s", self.n["gossip_window"], "--converge-s", 60, timeout=900)

    # ------------------------------------------------------------

    def run(self, only):
        figures = [("startup", self.fig_startup), ("write", self.fig_write), ("running", self.fig_running),
                   ("memory", self.fig_memory), ("gossip", self.fig_gossip), ("failover", self.fig_failover)]
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
