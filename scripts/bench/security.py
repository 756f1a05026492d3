#!/usr/bin/env python3
"""The cost of security (issue 13): the same figures with security on (the default) and with
--insecure, one run each, printed as JSON.

    python3 scripts/bench/security.py --orion target/release/orion --tool target/release/orion-bench

Per mode, a three-node cluster on its own loopback net (127.0.123.x secure, 127.0.124.x
insecure): write throughput and latency of POST /tasks (commit only, to the leader) at 1 and
64 clients; the start-up time of a node restarted on a data dir that has its secrets (spawn to
/health answering 200, then to its API answering an authenticated /status); the failover time
(SIGKILL of the leader to a new leader named by a survivor). Every process is stopped by pid,
every container it creates is labelled and removed."""

import argparse
import json
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from common import BENCH_LABEL, Cluster, http_json, log, now  # noqa: E402

ABSENT = "orion-bench/absent:never"


def run_mode(a, mode, net, work, run_id):
    extra = ("--insecure",) if mode == "insecure" else ()
    c = Cluster(a.orion, work, run_id, mode, n=3, extra=extra, net=net)
    res = {"mode": mode, "net": f"127.0.{net}.1-3"}
    try:
        c.start()
        lid = c.leader()
        leader = c.by_id(lid)
        # Gossip bytes per node on the wire: the engine's own count plus the seal's 38 bytes
        # a datagram when secure, over 10 s of an idle three-node cluster.
        def gossip_counts():
            st, _ = http_json("GET", leader.url + "/status")
            import urllib.request
            from common import token_for
            req = urllib.request.Request(leader.url + "/metrics")
            t = token_for(leader.url)
            if t:
                req.add_header("Authorization", "Bearer " + t)
            text = urllib.request.urlopen(req, timeout=5).read().decode()
            vals = {}
            for line in text.splitlines():
                for k in ("orion_gossip_sent_bytes_total", "orion_gossip_sent_packets_total"):
                    if line.startswith(k + " "):
                        vals[k] = float(line.split()[-1])
            return vals
        g0, t0 = gossip_counts(), now()
        time.sleep(10)
        g1, t1 = gossip_counts(), now()
        dt = t1 - t0
        packets = (g1["orion_gossip_sent_packets_total"] - g0["orion_gossip_sent_packets_total"]) / dt
        plain = (g1["orion_gossip_sent_bytes_total"] - g0["orion_gossip_sent_bytes_total"]) / dt
        overhead = 38 if mode == "secure" else 0
        res["gossip_sent_per_node"] = {"packets_per_s": round(packets, 1),
                                       "bytes_per_s_on_the_wire": round(plain + packets * overhead, 1)}
        body = {"image": ABSENT, "command": ["sleep", "3600"], "restartPolicy": "never",
                "labels": {BENCH_LABEL: run_id}}
        path = os.path.join(work, f"body-{mode}.json")
        with open(path, "w") as f:
            json.dump(body, f)
        for clients, n in ((1, a.requests1), (64, a.requests64)):
            log(f"{mode}: write, {clients} clients")
            env = dict(os.environ)
            from common import token_for
            t = token_for(leader.url)
            if t:
                env["ORION_TOKEN"] = t
            import subprocess
            out = subprocess.run([a.tool, "load", "--target", "orion", "--url", leader.url, "--clients",
                                  str(clients), "--requests", str(n), "--warmup", "20", "--body", path,
                                  "--label", f"{mode}-{clients}"], capture_output=True, text=True, env=env,
                                 timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            res[f"write{clients}"] = json.loads(out.stdout.splitlines()[-1])
        # Start-up of a node that has its secrets: restart a follower on its data dir.
        f = next(x for x in c.agents if x.id != lid)
        f.kill()
        t0 = now()
        f.start()
        f.wait_health(10)
        res["startup_health_ms"] = round((now() - t0) * 1000, 1)
        # Failover: kill the leader, time until a survivor names another leader.
        old = c.by_id(lid)
        survivors = [x for x in c.agents if x.id != lid]
        t0 = now()
        old.kill()
        new = None
        while now() - t0 < 30:
            for s in survivors:
                st, v = http_json("GET", s.url + "/status", timeout=0.5)
                if st == 200 and v.get("leader") and v["leader"] != lid:
                    new = v["leader"]
                    break
            if new:
                break
            time.sleep(0.01)
        res["failover_ms"] = round((now() - t0) * 1000, 1) if new else None
    finally:
        c.stop()
        c.wipe()
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--orion", required=True)
    p.add_argument("--tool", required=True)
    p.add_argument("--requests1", type=int, default=300)
    p.add_argument("--requests64", type=int, default=3000)
    a = p.parse_args()
    run_id = uuid.uuid4().hex[:6]
    out = []
    with tempfile.TemporaryDirectory(prefix="orion-bench-sec-") as work:
        for mode, net in (("secure", 123), ("insecure", 124)):
            out.append(run_mode(a, mode, net, work, run_id))
            print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main()
