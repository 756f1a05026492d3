"""Shared helpers of the benchmark driver: HTTP, the Docker engine API, Orion clusters and etcd
clusters on loopback. Every process is started here and stopped by its pid; every container and
service carries the label orion.bench=<run id> or an orion.node=<id of a node started here>."""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

BENCH_LABEL = "orion.bench"


def log(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


def now():
    return time.perf_counter()


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    i = max(1, min(len(xs), int(-(-len(xs) * q // 1))))
    return xs[i - 1]


def summary(xs):
    if not xs:
        return None
    return {"n": len(xs), "median": median(xs), "p90": pct(xs, 0.9), "max": max(xs), "min": min(xs)}


def credentials_path():
    """The per-user credentials file the bootstrap node writes (see orion-security)."""
    if os.environ.get("ORION_CREDENTIALS"):
        return os.environ["ORION_CREDENTIALS"]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.environ.get("HOME", "/"), ".config")
    return os.path.join(base, "orion", "credentials.json")


def token_for(url):
    """The admin token of the cluster serving `url` (http://ip:port/...), or None (insecure)."""
    hostport = url.split("//", 1)[-1].split("/", 1)[0].replace("localhost:", "127.0.0.1:")
    try:
        with open(credentials_path()) as f:
            for e in json.load(f).get("clusters", []):
                if hostport in e.get("addrs", []):
                    return e.get("adminToken")
    except (OSError, ValueError):
        pass
    return None


def http_json(method, url, body=None, timeout=5.0):
    """(status, parsed JSON or None). Network errors give (None, str)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    token = token_for(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)


def port_answers(ip, port, timeout=0.2):
    """True when an HTTP GET / on ip:port answers 200."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            head = s.recv(16)
            return head.startswith(b"HTTP/1.") and b" 200" in head
    except OSError:
        return False


def rss_kib(pid):
    """(VmRSS, VmHWM) in KiB from /proc/<pid>/status."""
    rss = hwm = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def kill_pid(proc):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------- Docker engine API


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Docker:
    """The engine API over /var/run/docker.sock, one connection kept open."""

    def __init__(self, sock="/var/run/docker.sock"):
        self.sock = sock
        self.conn = None

    def call(self, method, path, body=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = UnixHTTPConnection(self.sock)
            try:
                data = None if body is None else json.dumps(body).encode()
                headers = {"content-type": "application/json"} if data is not None else {}
                self.conn.request(method, "/v1.41" + path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw.decode(errors="replace")
                return r.status, parsed
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")

    def containers_with_label(self, label):
        f = json.dumps({"label": [label]})
        st, cs = self.call("GET", "/containers/json?all=1&filters=" + urllib.request.quote(f))
        return [c["Id"] for c in cs] if st == 200 else []

    def remove_labelled(self, label):
        ids = self.containers_with_label(label)
        for cid in ids:
            self.call("DELETE", f"/containers/{cid}?force=1")
        return len(ids)


# ---------------------------------------------------------------- Orion agents


# Loopback nets: the defaults, or others (ORION_BENCH_NET, ORION_BENCH_ETCD_NET) when several
# people benchmark on one machine.
ORION_NET = os.environ.get("ORION_BENCH_NET", "127.0.30")
ETCD_NET = os.environ.get("ORION_BENCH_ETCD_NET", "127.0.31")


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (/proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def scrape(url):
    """A Prometheus text page as {name{labels}: value}, or {} if it cannot be read."""
    req = urllib.request.Request(url + "/metrics")
    token = token_for(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(m, prefix):
    """Sum of every series whose name (before labels) is `prefix`."""
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


class Agent:
    def __init__(self, bin_path, node_id, ip, data_dir, log_dir, join=None, bootstrap=False, extra=()):
        self.bin = bin_path
        self.id = node_id
        self.ip = ip
        self.port = 8000
        self.data_dir = data_dir
        self.log_path = os.path.join(log_dir, f"{node_id}.log")
        self.join = join
        self.bootstrap = bootstrap
        self.extra = list(extra)
        self.proc = None

    @property
    def url(self):
        return f"http://{self.ip}:{self.port}"

    def start(self):
        args = [self.bin, "--id", self.id, "--bind", self.ip, "--publish-ip", self.ip,
                "--port", "8000", "--gossip-port", "6000", "--raft-port", "7000",
                "--data-dir", self.data_dir] + self.extra
        if self.bootstrap:
            args.append("--bootstrap")
        if self.join:
            args += ["--join", self.join]
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        logf.close()
        return self

    def wait_health(self, within=10.0):
        end = now() + within
        while now() < end:
            st, _ = http_json("GET", self.url + "/health", timeout=0.5)
            if st == 200:
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.id} exited: see {self.log_path}")
            time.sleep(0.01)
        raise RuntimeError(f"{self.id}: /health did not answer in {within} s")

    def kill(self):
        kill_pid(self.proc)

    @property
    def pid(self):
        return self.proc.pid


class Cluster:
    """n agents on 127.0.<net>.1..n (default: ORION_NET), node 1 bootstraps, the others join it."""

    def __init__(self, bin_path, workdir, run_id, name, n=3, extra=(), net=None):
        prefix = f"127.0.{net}" if net is not None else ORION_NET
        self.bin = bin_path
        self.run_id = run_id
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.agents = []
        for i in range(1, n + 1):
            nid = f"b{run_id}-{name}-n{i}"
            self.agents.append(Agent(bin_path, nid, f"{prefix}.{i}", os.path.join(self.dir, f"data-n{i}"),
                                     self.dir, join=None if i == 1 else f"{prefix}.1:6000",
                                     bootstrap=(i == 1), extra=extra))
        self.docker = Docker()

    def start(self, within=30.0):
        for a in self.agents:
            a.start()
            a.wait_health()
        self.wait_formed(within)
        return self

    def by_id(self, nid):
        return next(a for a in self.agents if a.id == nid)

    def live(self):
        return [a for a in self.agents if a.proc is not None and a.proc.poll() is None]

    def leader(self, via=None):
        for a in ([via] if via else self.live()):
            st, s = http_json("GET", a.url + "/status", timeout=1)
            if st == 200 and s.get("leader"):
                return s["leader"]
        return None

    def wait_formed(self, within=30.0):
        """Every agent alive in the leader's /nodes, one leader, voters in place."""
        end = now() + within
        last = None
        while now() < end:
            lid = self.leader()
            if lid:
                st, nodes = http_json("GET", self.by_id(lid).url + "/nodes", timeout=1)
                if st == 200:
                    last = nodes
                    alive = {n["id"] for n in nodes if n.get("status") == "alive"}
                    roles_ok = all(n.get("role") in ("leader", "voter", "learner") for n in nodes
                                   if n["id"] in alive)
                    if all(a.id in alive for a in self.agents) and roles_ok:
                        return lid
            time.sleep(0.05)
        raise RuntimeError(f"cluster did not form within {within} s; last /nodes: {last}")

    def stop(self):
        for a in self.agents:
            a.kill()
        for a in self.agents:
            self.docker.remove_labelled(f"orion.node={a.id}")

    def wipe(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- etcd


class EtcdCluster:
    """Three etcd members on 127.0.31.1-3 (client 2379, peer 2380), no TLS."""

    def __init__(self, workdir, n=3):
        self.dir = os.path.join(workdir, "etcd")
        os.makedirs(self.dir, exist_ok=True)
        self.members = [(f"e{i}", f"{ETCD_NET}.{i}") for i in range(1, n + 1)]
        self.procs = []

    def start(self, within=30.0):
        initial = ",".join(f"{name}=http://{ip}:2380" for name, ip in self.members)
        for name, ip in self.members:
            args = ["etcd", "--name", name, "--data-dir", os.path.join(self.dir, name),
                    "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
                    "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "orion-bench", "--log-level", "warn"]
            logf = open(os.path.join(self.dir, f"{name}.log"), "ab")
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf))
            logf.close()
        end = now() + within
        while now() < end:
            lead = self.leader_url()
            if lead:
                # One write to be sure the cluster commits.
                st, _ = http_json("POST", lead + "/v3/kv/put",
                                  {"key": base64.b64encode(b"bench/ready").decode(), "value": ""}, timeout=2)
                if st == 200:
                    return lead
            time.sleep(0.1)
        raise RuntimeError("etcd cluster did not elect a leader")

    def leader_url(self):
        for _, ip in self.members:
            url = f"http://{ip}:2379"
            st, s = http_json("POST", url + "/v3/maintenance/status", {}, timeout=1)
            if st == 200 and isinstance(s, dict) and s.get("leader") and s.get("header", {}).get("member_id") == s.get("leader"):
                return url
        return None

    def version(self):
        try:
            out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=10).stdout
            return out.splitlines()[0].split(":", 1)[1].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    def stop(self):
        for p in self.procs:
            kill_pid(p)
        shutil.rmtree(self.dir, ignore_errors=True)
