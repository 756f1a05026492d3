"""The mesh benchmark (issue 12): wrk requests/s and p99 through the Orion mesh (an ingress
port, tcp and http), against the task's published host port directly, and against Docker
Swarm's routing mesh on the same engine, same image and same server (busybox httpd); then the
resident memory of an agent holding 1,000 idle proxied connections. One run of --rounds rounds
(default 3) that interleave the paths; each path's median round; ratios.

Usage: python3 scripts/bench/mesh.py --orion target/release/orion --out DIR
Uses loopback 127.0.140.1 (API on port 18100, gossip 18101, Raft 18102; the agent runs with
--insecure: the data path is measured, not the API's authentication) and VIP range
10.209.0.0/24. Every process it starts is stopped by
its pid; the Swarm service it creates is removed, and Swarm is left as it was found (it is
initialised only when inactive, and left again afterwards)."""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

IP = "127.0.140.1"
API_PORT, GOSSIP_PORT, RAFT_PORT = 18100, 18101, 18102
MESH_TCP, MESH_HTTP, SWARM_PORT = 18090, 18092, 18091
IMAGE = "orion/busybox:latest"
HTTPD = ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
WRK = ["wrk", "-t2", "-c32", "-d10s", "--latency"]


def log(*a):
    print("[mesh-bench]", *a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{IP}:{API_PORT}{path}", data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - any network error means "not yet"
        return None, str(e)


def wait(what, f, limit=60):
    end = time.time() + limit
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def served(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


def parse_wrk(text):
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    errors = re.search(r"Socket errors: (.*)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "rps": float(rps.group(1)) if rps else None,
        "p99_ms": float(p99.group(1)) * unit[p99.group(2)] if p99 else None,
        "socket_errors": errors.group(1) if errors else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def wrk(url, out, name):
    sh(WRK[:3] + ["-d2s", url])  # warm-up, not measured
    r = sh(WRK + [url])
    open(os.path.join(out, f"wrk-{name}.txt"), "w").write(r.stdout + r.stderr)
    res = parse_wrk(r.stdout)
    log(name, res)
    return res


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def kernel_lacks_ipvs():
    """Swarm's routing mesh balances with IPVS in the ingress network's namespace; a kernel
    built without it (CONFIG_IP_VS unset) lets `docker service create --publish` succeed but
    the port never answers (dockerd logs "Could not get ipvs family information")."""
    import gzip
    try:
        config = gzip.open("/proc/config.gz", "rt").read()
    except OSError:
        return False  # unknown: try
    return not re.search(r"^CONFIG_IP_VS=[ym]$", config, re.M)


def swarm_bench(out, res):
    if kernel_lacks_ipvs():
        res["errors"].append("swarm: this kernel has no IPVS (CONFIG_IP_VS unset), which "
                             "Swarm's routing mesh needs; Swarm figure skipped")
        return
    state = sh(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()
    res["swarm_state_before"] = state
    we_init = False
    if state == "inactive":
        r = sh(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"])
        if r.returncode != 0:
            res["errors"].append(f"docker swarm init: {r.stderr.strip()}")
            return
        we_init = True
    elif state != "active":
        res["errors"].append(f"swarm is {state!r}; Swarm figure skipped")
        return
    name = f"orion-mesh-bench-{os.getpid()}"
    try:
        r = sh(["docker", "service", "create", "--detach", "--name", name, "--label", "orion.bench=mesh",
                "--publish", f"published={SWARM_PORT},target=80,mode=ingress", IMAGE] + HTTPD)
        if r.returncode != 0:
            res["errors"].append(f"docker service create: {r.stderr.strip()}")
            return
        try:
            wait("the Swarm service to serve", lambda: served(f"http://127.0.0.1:{SWARM_PORT}/"), 90)
        except RuntimeError as e:
            res["errors"].append(f"swarm: {e}")
            return
        res["swarm"] = wrk(f"http://127.0.0.1:{SWARM_PORT}/", out, "swarm")
    finally:
        sh(["docker", "service", "rm", name])
        if we_init:
            sh(["docker", "swarm", "leave", "--force"])
        res["swarm_state_after"] = sh(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orion", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    # 1,000 idle connections are 2,000 descriptors in the agent (client and endpoint side).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    res = {"errors": [], "wrk": " ".join(WRK)}
    data = tempfile.mkdtemp(prefix="orion-mesh-bench-")
    logf = open(os.path.join(a.out, "agent.log"), "w")
    agent = subprocess.Popen(
        [a.orion, "--id", "meshb1", "--bind", IP, "--publish-ip", IP, "--port", str(API_PORT),
         "--gossip-port", str(GOSSIP_PORT), "--raft-port", str(RAFT_PORT), "--bootstrap",
         "--data-dir", data, "--vip-range", "10.209.0.0/24", "--insecure"],
        stdout=logf, stderr=logf)
    try:
        wait("the agent", lambda: api("GET", "/health")[0] == 200)
        wait("a leader", lambda: (api("GET", "/status")[1] or {}).get("leader"))
        # One service per protocol: a target port takes one protocol.
        for name, port, proto in (("bench", MESH_TCP, "tcp"), ("benchh", MESH_HTTP, "http")):
            st, body = api("POST", "/services", {
                "name": name, "image": IMAGE, "command": HTTPD, "memory": "512m",
                "ports": [{"target": 80, "published": port, "protocol": proto}]})
            if st != 201:
                raise RuntimeError(f"service {name} create: {st} {body}")

        def host_port():
            st, tasks = api("GET", "/services/bench/tasks")
            if st != 200 or not tasks or tasks[0].get("state") != "running":
                return None
            ports = tasks[0].get("ports") or []
            return ports[0]["hostPort"] if ports else None
        direct = wait("the task running", host_port)
        wait("the mesh to serve", lambda: served(f"http://{IP}:{MESH_TCP}/") and served(f"http://{IP}:{MESH_HTTP}/"))
        # For reference: the container's own address, no proxy of any kind in the path.
        urls = {"direct": f"http://{IP}:{direct}/"}
        cid = sh(["docker", "ps", "-q", "--filter", "label=orion.node=meshb1",
                  "--filter", f"publish={direct}"]).stdout.split()
        if cid:
            cip = sh(["docker", "inspect", "--format",
                      "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid[0]]).stdout.split()
            if cip:
                urls["container"] = f"http://{cip[0]}:80/"
        urls["mesh_tcp"] = f"http://{IP}:{MESH_TCP}/"
        urls["mesh_http"] = f"http://{IP}:{MESH_HTTP}/"
        # Rounds interleave the paths, so a change in the machine's load hits all of them;
        # each path's figure is its median round (by requests/s).
        rounds = {k: [] for k in urls}
        for r in range(a.rounds):
            res.setdefault("load_avg", []).append(os.getloadavg())
            for k, url in urls.items():
                rounds[k].append(wrk(url, a.out, f"{k}-{r}"))
        res["load_avg"].append(os.getloadavg())
        for k, rs in rounds.items():
            rs = sorted(rs, key=lambda x: x["rps"] or 0)
            res[k] = dict(rs[len(rs) // 2], rounds_rps=[x["rps"] for x in rounds[k]])
            log(k, "median", res[k])
        swarm_bench(a.out, res)

        # Idle connections: opened through the mesh's tcp port, held without a byte sent.
        time.sleep(2)
        before = rss_kib(agent.pid)
        socks = []
        for _ in range(a.idle):
            s = socket.create_connection((IP, MESH_TCP), timeout=5)
            socks.append(s)
        time.sleep(3)
        during = rss_kib(agent.pid)
        # Each is proxied: the endpoint side is open too (the agent holds 2 sockets each).
        fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
        res["idle"] = {"connections": a.idle, "rss_before_kib": before, "rss_with_kib": during,
                       "agent_fds_with": fds}
        log("idle", res["idle"])
        for s in socks:
            s.close()
        api("DELETE", "/services/bench")
        api("DELETE", "/services/benchh")
        time.sleep(3)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        # The agent removes its containers on leave only with peers; remove ours by node label.
        ids = sh(["docker", "ps", "-aq", "--filter", "label=orion.node=meshb1"]).stdout.split()
        if ids:
            sh(["docker", "rm", "-f"] + ids)
        # And the node's container network (a lone agent keeps it on leave).
        sh(["docker", "network", "rm", "orion-meshb1"])
        shutil.rmtree(data, ignore_errors=True)
    json.dump(res, open(os.path.join(a.out, "mesh.json"), "w"), indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
