"""The rolling-update benchmark of issue 11 (BENCHMARKS.md, "Rolling update beside Swarm"): a
10-replica busybox httpd service rolled to a new version (an env var changed) by Orion and by
Docker Swarm on the same engine, with the same settings: parallelism 2, start-first, monitor
2 s, no delay, rollback on failure, no health check, 16 MiB, stop grace 10 s. For each: the
wall time from the update command until the update is seen completed (the service polled every
50 ms), the system's own start-to-end record, and the requests a prober saw fail.

The prober is one program for both: a container of the same image running
`timeout 2 wget -q -O /dev/null URL` in a loop with `usleep 20000` between requests, one line
per request (`ok`, or `fail` and wget's error), timed by `docker logs -t`.
- Orion: the prober runs with `--network host` and hits the service's ingress port on node 2,
  `http://127.0.160.2:18160/` (mesh -> the task's published port -> the container).
- Swarm: the routing mesh (the ingress network) and the service VIP need IPVS, which this
  engine's kernel does not give (the published port never answers; the VIP answers "No route
  to host"), so the service uses `--endpoint-mode dnsrr` on an attachable overlay network and
  the prober, a container on that network, hits `http://<service name>/`: Docker's embedded DNS
  answers with the running tasks' addresses, one lookup per request.

Usage: python3 scripts/bench/update.py --orion target/release/orion --out DIR [--runs N]
Loopback 127.0.160.1-3 (API 18100, gossip 16100, raft 17100, ingress 18160), VIP range
10.160.0.0/24. Every process it starts is stopped by its pid; every container carries
orion.bench=update-<run id> or orion.node=<a node started here> and is removed; Swarm is
initialised only if inactive (the file DIR/swarm-initialised says so, for the wrapper's trap)
and left again at the end. With --runs N each system makes N updates in a row, each after the
containers the previous one replaced have stopped."""

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from common import Docker, kill_pid  # noqa: E402

IMAGE = "orion/busybox:latest"
HTTPD = ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
NET = "127.0.160"
API_PORT, GOSSIP_PORT, RAFT_PORT, INGRESS = 18100, 16100, 17100, 18160
VIP_RANGE = "10.160.0.0/24"
REPLICAS = 10
POLL = 0.05
# After the update is seen complete the prober keeps going this long: old tasks may still be
# draining and stopping.
TAIL_S = 5.0
SETTINGS = {"parallelism": 2, "order": "start-first", "monitor": "2s", "delay": "0s",
            "failureAction": "rollback", "stopGracePeriod": "10s", "memory": "16m"}
PROBER = ("while :; do if e=$(timeout 2 wget -q -O /dev/null \"$URL\" 2>&1); then echo ok; "
          "else echo fail $e; fi; usleep 20000; done")


def log(*a):
    print("[update-bench]", *a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Stop(Exception):
    pass


def on_signal(signum, _frame):
    raise Stop(f"signal {signum}")


# ---------------------------------------------------------------- the prober


class Prober:
    """A busybox container hitting URL every 20 ms; its log lines carry Docker's timestamps."""

    def __init__(self, name, label, url, network):
        self.name = name
        r = sh(["docker", "run", "-d", "--name", name, "--label", label, "--network", network,
                "-e", f"URL={url}", "--memory", "32m", IMAGE, "sh", "-c", PROBER])
        if r.returncode != 0:
            raise RuntimeError(f"prober: {r.stderr.strip()}")

    def lines(self):
        """[(unix seconds, 'ok'|'fail')]."""
        out = sh(["docker", "logs", "-t", self.name]).stdout
        res = []
        for line in out.splitlines():
            try:
                ts, what = line.split(" ", 1)
            except ValueError:
                continue
            res.append((parse_ts(ts), what.strip()))
        return res

    def remove(self):
        sh(["docker", "rm", "-f", self.name])


def parse_ts(ts):
    """RFC 3339 in UTC (2026-11-27T15:20:01.123456789Z, any fraction or none) as Unix seconds."""
    main, _, frac = ts.rstrip("Z").partition(".")
    dt = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp() + float("0." + (frac or "0"))


def count(lines, t0, t1):
    sel = [w for t, w in lines if t0 <= t <= t1]
    failed = [w for w in sel if w != "ok"]
    return {"requests": len(sel), "failed": len(failed), "errors": sorted(set(failed))[:5]}


def wait(what, f, limit=90, step=0.1):
    end = time.time() + limit
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


def running_containers(labels):
    """How many running containers carry every one of `labels` (k=v)."""
    f = json.dumps({"label": labels, "status": ["running"]})
    st, cs = Docker().call("GET", "/containers/json?filters=" + urllib.request.quote(f))
    return len(cs) if st == 200 else -1


def wait_old_gone(labels_list, want):
    """Waits until the replaced containers are gone (their drain and 10 s grace), so that one
    update's stops do not load the engine during the next update."""
    wait("the old containers to stop", lambda: sum(running_containers(ls) for ls in labels_list) == want,
         60, 0.5)


def settle_prober(p, what):
    """Waits until the prober's last 10 requests all answered."""
    def ok():
        ls = p.lines()
        return len(ls) >= 10 and all(w == "ok" for _, w in ls[-10:])
    wait(f"the prober to see {what} answer", ok, 60, 0.5)


# ---------------------------------------------------------------- Orion


class Orion:
    def __init__(self, bin_path, work, run_id):
        self.bin = bin_path
        self.work = work
        self.run_id = run_id
        self.procs = []
        self.ids = [f"upd{run_id}n{i}" for i in (1, 2, 3)]
        self.env = dict(os.environ, ORION_CREDENTIALS=os.path.join(work, "credentials.json"))
        self.env.pop("ORION_TOKEN", None)
        self.addr = f"http://{NET}.1:{API_PORT}"

    def start(self):
        for i, nid in enumerate(self.ids, start=1):
            ip = f"{NET}.{i}"
            args = [self.bin, "--id", nid, "--bind", ip, "--publish-ip", ip, "--port", str(API_PORT),
                    "--gossip-port", str(GOSSIP_PORT), "--raft-port", str(RAFT_PORT),
                    "--data-dir", os.path.join(self.work, f"data-{nid}"), "--vip-range", VIP_RANGE]
            args += ["--bootstrap"] if i == 1 else ["--join", f"{NET}.1:{GOSSIP_PORT}"]
            logf = open(os.path.join(self.work, f"{nid}.log"), "ab")
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                               env=self.env))
            logf.close()
            wait(f"{nid} /health", lambda ip=ip: self.api("GET", "/health", base=f"http://{ip}:{API_PORT}")[0] == 200, 30)
        wait("three voters and a leader", self.formed, 60, 0.2)

    def formed(self):
        st, s = self.api("GET", "/status")
        return st == 200 and s.get("leader") and len(s.get("voters") or []) == 3 \
            and not s.get("membershipChanging")

    def token(self):
        try:
            with open(self.env["ORION_CREDENTIALS"]) as f:
                for e in json.load(f).get("clusters", []):
                    if f"{NET}.1:{API_PORT}" in e.get("addrs", []):
                        return e.get("adminToken")
        except (OSError, ValueError):
            pass
        return None

    def api(self, method, path, base=None):
        req = urllib.request.Request((base or self.addr) + path, method=method)
        t = self.token()
        if t:
            req.add_header("Authorization", "Bearer " + t)
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            return e.code, None
        except (OSError, ValueError) as e:
            return None, str(e)

    def cli(self, *args):
        return [self.bin, *args[:2], "--addr", self.addr, *args[2:]]

    def stop(self):
        for p in self.procs:
            kill_pid(p)
        d = Docker()
        for nid in self.ids:
            d.remove_labelled(f"orion.node={nid}")
            # Each agent made a bridge network of its own.
            sh(["docker", "network", "rm", f"orion-{nid}"])


def bench_orion(a, work, run_id, out):
    res = {"path": f"prober (--network host) -> http://{NET}.2:{INGRESS}/ (Orion ingress port on node 2)"}
    o = Orion(a.orion, work, run_id)
    label = f"orion.bench=update-{run_id}"
    prober = None
    try:
        o.start()
        create = o.cli("service", "create", "--name", "bench", "--replicas", str(REPLICAS),
                       "-p", f"{INGRESS}:80", "-m", SETTINGS["memory"], "-e", "V=1",
                       "--update-parallelism", "2", "--update-order", "start-first",
                       "--update-monitor", "2s", "--update-delay", "0s",
                       "--update-failure-action", "rollback",
                       "--stop-grace-period", SETTINGS["stopGracePeriod"], IMAGE, *HTTPD)
        r = sh(create, env=o.env, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"orion service create: {r.stdout} {r.stderr}")

        def all_running():
            st, s = o.api("GET", "/services/bench")
            return st == 200 and s["replicas"]["running"] == REPLICAS
        wait("10 Orion tasks running", all_running, 120)
        prober = Prober(f"upd-{run_id}-orion-prober", label, f"http://{NET}.2:{INGRESS}/", "host")
        settle_prober(prober, "Orion")
        wait_old_gone([[f"orion.node={nid}"] for nid in o.ids], REPLICAS)
        time.sleep(2)
        for run in range(a.runs):
            version = run + 2
            update = o.cli("service", "update", "-e", f"V={version}", "--update-parallelism", "2",
                           "--update-order", "start-first", "--update-monitor", "2s", "bench")
            seen = {}
            stop = threading.Event()

            def poll():
                while not stop.is_set():
                    st, s = o.api("GET", "/services/bench")
                    d = (s or {}).get("deployment") or {} if st == 200 else {}
                    if d.get("toVersion", 0) >= version and d.get("state") not in ("running", None):
                        seen["at"] = time.time()
                        seen["deployment"] = d
                        return
                    time.sleep(POLL)
            t0 = time.time()
            th = threading.Thread(target=poll)
            th.start()
            r = sh(update, env=o.env, timeout=600)
            t_cli = time.time()
            th.join(timeout=600)
            stop.set()
            if "at" not in seen:
                raise RuntimeError(f"orion update not seen complete: {r.stdout} {r.stderr}")
            time.sleep(TAIL_S)
            lines = prober.lines()
            d = seen["deployment"]
            run_res = {
                "state": d.get("state"), "message": d.get("message"),
                "cli_exit": r.returncode, "cli_output": (r.stdout + r.stderr)[-400:],
                "wall_s": round(seen["at"] - t0, 3), "cli_wall_s": round(t_cli - t0, 3),
                "own_record_s": round(parse_ts(d["endedAt"]) - parse_ts(d["startedAt"]), 3)
                if d.get("endedAt") and d.get("startedAt") else None,
                "window": count(lines, t0, seen["at"]),
                "window_plus_tail": count(lines, t0, seen["at"] + TAIL_S),
            }
            st, tasks = o.api("GET", "/services/bench/tasks")
            run_res["tasks_running_new"] = sum(1 for t in tasks or [] if t.get("state") == "running"
                                               and t.get("version") == d.get("toVersion"))
            log("orion", run_res)
            res.setdefault("runs", []).append(run_res)
            wait_old_gone([[f"orion.node={nid}"] for nid in o.ids], REPLICAS)
        res["prober_all"] = count(prober.lines(), 0, time.time() + 1)
        json.dump(prober.lines(), open(os.path.join(out, "orion-prober.json"), "w"))
        st, s = o.api("GET", "/services/bench")
        json.dump(s, open(os.path.join(out, "orion-service.json"), "w"), indent=1)
        o.api("DELETE", "/services/bench")
        time.sleep(2)
    finally:
        if prober:
            prober.remove()
        o.stop()
        for f in os.listdir(work):
            if f.endswith(".log"):
                shutil.copy(os.path.join(work, f), out)
    return res


# ---------------------------------------------------------------- Swarm


def swarm_state():
    return sh(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()


def bench_swarm(a, run_id, out):
    res = {"state_before": swarm_state()}
    if res["state_before"] != "inactive":
        res["skipped"] = f"Swarm is {res['state_before']!r}, not inactive: not touched"
        return res
    label = f"orion.bench=update-{run_id}"
    name, net = f"upd{run_id}", f"upd{run_id}net"
    res["path"] = f"prober container on overlay network {net} -> http://{name}/ (endpoint-mode dnsrr)"
    prober = None
    d = Docker()
    gwbridge_before = sh(["docker", "network", "inspect", "docker_gwbridge"]).returncode == 0
    r = sh(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"])
    if r.returncode != 0:
        res["skipped"] = f"docker swarm init: {r.stderr.strip()}"
        return res
    open(os.path.join(out, "swarm-initialised"), "w").write("1\n")
    try:
        r = sh(["docker", "network", "create", "-d", "overlay", "--attachable", "--label", label, net])
        if r.returncode != 0:
            raise RuntimeError(f"network: {r.stderr}")
        r = sh(["docker", "service", "create", "--detach", "--name", name, "--label", label,
                "--container-label", label, "--network", net, "--endpoint-mode", "dnsrr",
                "--replicas", str(REPLICAS), "--limit-memory", SETTINGS["memory"], "--env", "V=1",
                "--update-parallelism", "2", "--update-order", "start-first", "--update-monitor", "2s",
                "--update-delay", "0s", "--update-failure-action", "rollback",
                "--stop-grace-period", SETTINGS["stopGracePeriod"], IMAGE, *HTTPD])
        if r.returncode != 0:
            raise RuntimeError(f"docker service create: {r.stderr}")

        def running():
            f = json.dumps({"service": [name], "desired-state": ["running"]})
            st, tasks = d.call("GET", "/tasks?filters=" + urllib.request.quote(f))
            return st == 200 and sum(1 for t in tasks if t["Status"]["State"] == "running") == REPLICAS
        wait("10 Swarm tasks running", running, 120)
        prober = Prober(f"upd-{run_id}-swarm-prober", label, f"http://{name}/", net)
        settle_prober(prober, "Swarm")
        wait_old_gone([[label, f"com.docker.swarm.service.name={name}"]], REPLICAS)
        time.sleep(2)
        for run in range(a.runs):
            version = run + 2

            def status():
                st, s = d.call("GET", f"/services/{name}")
                return s.get("UpdateStatus") or {} if st == 200 else {}
            before = status().get("StartedAt")
            t0 = time.time()
            r = sh(["docker", "service", "update", "--detach", "--env-add", f"V={version}", name])
            if r.returncode != 0:
                raise RuntimeError(f"docker service update: {r.stderr}")
            t_cmd = time.time()

            def done():
                u = status()
                if u.get("StartedAt") != before and u.get("State") not in (None, "updating"):
                    return u
                return None
            u = wait("the Swarm update to end", done, 600, POLL)
            t_end = time.time()
            time.sleep(TAIL_S)
            lines = prober.lines()
            own = None
            if u.get("StartedAt") and u.get("CompletedAt"):
                own = round(parse_ts(u["CompletedAt"]) - parse_ts(u["StartedAt"]), 3)
            run_res = {"state": u.get("State"), "message": u.get("Message"),
                       "wall_s": round(t_end - t0, 3), "cli_wall_s": round(t_cmd - t0, 3),
                       "own_record_s": own, "window": count(lines, t0, t_end),
                       "window_plus_tail": count(lines, t0, t_end + TAIL_S)}
            log("swarm", run_res)
            res.setdefault("runs", []).append(run_res)
            wait_old_gone([[label, f"com.docker.swarm.service.name={name}"]], REPLICAS)
        res["prober_all"] = count(prober.lines(), 0, time.time() + 1)
        json.dump(prober.lines(), open(os.path.join(out, "swarm-prober.json"), "w"))
    finally:
        if prober:
            prober.remove()
        sh(["docker", "service", "rm", name])
        # The service's containers go away with it; wait before removing the network.
        wait_gone = time.time() + 30
        while time.time() < wait_gone and d.containers_with_label(label):
            time.sleep(0.5)
        d.remove_labelled(label)
        sh(["docker", "network", "rm", net])
        sh(["docker", "swarm", "leave", "--force"])
        if not gwbridge_before:
            # `swarm init` made it; `swarm leave` keeps it.
            sh(["docker", "network", "rm", "docker_gwbridge"])
        res["state_after"] = swarm_state()
        if res["state_after"] == "inactive":
            os.unlink(os.path.join(out, "swarm-initialised"))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orion", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=1, help="updates in a row on each system")
    ap.add_argument("--only", choices=["orion", "swarm"])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_id = uuid.uuid4().hex[:6]
    res = {"run_id": run_id, "settings": SETTINGS, "replicas": REPLICAS, "poll_s": POLL,
           "tail_s": TAIL_S, "prober": PROBER, "loadavg_start": open("/proc/loadavg").read().split()[:3],
           "commit": sh(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()}
    work = tempfile.mkdtemp(prefix="orion-update-bench-")
    try:
        if a.only in (None, "orion"):
            res["orion"] = bench_orion(a, work, run_id, a.out)
        if a.only in (None, "swarm"):
            res["swarm"] = bench_swarm(a, run_id, a.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        json.dump(res, open(os.path.join(a.out, "update.json"), "w"), indent=1)
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
