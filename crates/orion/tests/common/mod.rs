//! Test kit for end-to-end tests: runs the real `orion` binary as separate processes on
//! loopback addresses, talks to them over HTTP, and reads Docker through orion-docker.
//!
//! Each test names its nodes uniquely (containers are labelled with the node id, and all test
//! nodes share one engine) and uses its own loopback addresses, so tests can run in parallel.
//! Processes are killed by pid on drop; their containers are removed.

#![allow(dead_code)]

use orion_docker::DockerRuntime;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "orion/busybox:latest";

/// Connects to Docker, or skips the test (returns None) when it is absent outside CI.
/// Under CI=true a missing engine is a failure.
pub async fn docker_or_skip() -> Option<DockerRuntime> {
    match DockerRuntime::connect().await {
        Ok(d) => {
            build_test_image();
            Some(d)
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but the Docker engine is unreachable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: Docker engine unreachable: {e}");
            None
        }
    }
}

fn build_test_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-image.sh");
        let out = Command::new("bash")
            .arg(script)
            .output()
            .expect("run scripts/test-image.sh");
        assert!(
            out.status.success(),
            "scripts/test-image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// One agent process.
pub struct Agent {
    pub id: String,
    pub ip: Ipv4Addr,
    pub api: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    /// Environment variables for the process (e.g. `ORION_CREDENTIALS`, `ORION_TOKEN`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Agent {
    /// Starts `orion` for node `id` on address `ip` with the standard ports and `extra` args.
    pub fn start(id: &str, ip: Ipv4Addr, extra: &[&str]) -> Agent {
        Agent::start_env(id, ip, extra, &[])
    }

    /// `start` with extra environment variables for the process.
    pub fn start_env(id: &str, ip: Ipv4Addr, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let log = dir.path().join("agent.log");
        let mut a = Agent {
            id: id.to_string(),
            ip,
            api: format!("http://{ip}:8000"),
            data_dir,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            _dir: Some(dir),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let ip = self.ip.to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orion"));
        cmd.args(["--id", &self.id, "--bind", &ip, "--publish-ip", &ip])
            .args([
                "--port",
                "8000",
                "--gossip-port",
                "6000",
                "--raft-port",
                "7000",
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn orion"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`: the machine dies (its containers stay unless the test removes them).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (bounded).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn stop_signal(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    pub fn cont_signal(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// Starts the process again on the same data dir and arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn gossip_addr(&self) -> String {
        format!("{}:6000", self.ip)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // The engine is shared by every test.
        remove_node_leftovers(&self.id);
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.id,
                tail(&self.log_text(), 120)
            );
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// HTTP client bound to nothing in particular; short timeouts so a dead node fails fast.
pub fn client() -> reqwest::Client {
    // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

/// The admin token of the cluster that serves `api` (`http://ip:port`), from the per-user
/// credentials file its bootstrap node wrote; `None` for an `--insecure` cluster.
pub fn token_for(api: &str) -> Option<String> {
    let path = orion_security::credentials::default_path()?;
    orion_security::credentials::find(&path, api)
        .ok()
        .flatten()
        .map(|e| e.admin_token)
}

/// `req` to the node at `api`, with its cluster's admin token when there is one.
pub fn authed(req: reqwest::RequestBuilder, api: &str) -> reqwest::RequestBuilder {
    match token_for(api) {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// Sends one request and returns its status and JSON body.
async fn call(req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.map_err(|e| e.to_string())?;
    Ok((status, v))
}

pub async fn get(api: &str, path: &str) -> Result<(u16, Value), String> {
    call(authed(client().get(format!("{api}{path}")), api)).await
}

pub async fn post(api: &str, path: &str, body: &str) -> Result<(u16, Value), String> {
    call(authed(
        client()
            .post(format!("{api}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string()),
        api,
    ))
    .await
}

pub async fn put_json(api: &str, path: &str, body: &str) -> Result<(u16, Value), String> {
    call(authed(
        client()
            .put(format!("{api}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string()),
        api,
    ))
    .await
}

pub async fn delete(api: &str, path: &str) -> Result<(u16, Value), String> {
    call(authed(client().delete(format!("{api}{path}")), api)).await
}

/// Polls `f` every 50 ms until it gives `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent answers /health.
pub async fn wait_healthy(a: &Agent) {
    let api = a.api.clone();
    wait_for(
        Duration::from_secs(20),
        &format!("{} to answer /health", a.id),
        || {
            let api = api.clone();
            async move { get(&api, "/health").await.ok().filter(|(s, _)| *s == 200) }
        },
    )
    .await;
}

/// Waits until the agent's /status names a leader.
pub async fn wait_leader(a: &Agent) -> String {
    let api = a.api.clone();
    wait_for(
        Duration::from_secs(20),
        &format!("{} to see a leader", a.id),
        || {
            let api = api.clone();
            async move {
                let (_, s) = get(&api, "/status").await.ok()?;
                s["leader"].as_str().map(String::from)
            }
        },
    )
    .await
}

/// Waits until task `id` is in `state` (read from `api`) and returns it.
pub async fn wait_task_state(api: &str, id: &str, state: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    let start = Instant::now();
    loop {
        if let Ok((200, t)) = get(api, &format!("/tasks/{id}")).await {
            if t["state"] == state {
                return t;
            }
            last = t;
        }
        if start.elapsed() > limit {
            panic!("task {id} did not reach {state} within {limit:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Containers of node `node` (any state), via the Docker API.
pub async fn containers_of(docker: &DockerRuntime, node: &str) -> Vec<orion_docker::ContainerInfo> {
    docker
        .list(&[("orion.node", node)])
        .await
        .expect("docker list")
}

/// Containers of a task across all nodes.
pub async fn containers_of_task(
    docker: &DockerRuntime,
    task: &str,
) -> Vec<orion_docker::ContainerInfo> {
    docker
        .list(&[("orion.task", task)])
        .await
        .expect("docker list")
}

/// A plain HTTP GET over TCP; returns the body if the answer is 200.
pub async fn http_page(addr: &str) -> Option<String> {
    let r = client()
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    r.text().await.ok()
}

/// A cluster of agents on 127.0.<net>.1..=n: node 1 bootstraps, the others join it.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub prefix: String,
}

impl Cluster {
    pub fn start(prefix: &str, net: u8, n: usize, extra: &[&str]) -> Cluster {
        let mut agents = Vec::new();
        for i in 1..=n {
            let ip = Ipv4Addr::new(127, 0, net, i as u8);
            let id = format!("{prefix}{i}");
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            if i == 1 {
                args.push("--bootstrap".into());
            } else {
                args.push("--join".into());
                args.push(format!("127.0.{net}.1:6000"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            agents.push(Agent::start(&id, ip, &args));
        }
        Cluster {
            agents,
            prefix: prefix.to_string(),
        }
    }

    pub fn by_id(&self, id: &str) -> &Agent {
        self.agents.iter().find(|a| a.id == id).expect("agent")
    }

    pub fn by_id_mut(&mut self, id: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.id == id).expect("agent")
    }

    /// Waits until every live agent sees `voters` voters, `learners` learners, a leader, and
    /// no voter change under way (a change from one voter is fatal if that voter dies before
    /// it completes); returns `a`'s status.
    pub async fn wait_membership(
        &self,
        a: &Agent,
        voters: usize,
        learners: usize,
        limit: Duration,
    ) -> Value {
        let api = a.api.clone();
        let all: Vec<String> = self
            .agents
            .iter()
            .filter(|x| x.pid().is_some())
            .map(|x| x.api.clone())
            .collect();
        wait_for(
            limit,
            &format!("{} to see {voters} voters and {learners} learners", a.id),
            || {
                let api = api.clone();
                let all = all.clone();
                async move {
                    let settled = |s: &Value| {
                        s["voters"].as_array().map(Vec::len) == Some(voters)
                            && s["learners"].as_array().map(Vec::len) == Some(learners)
                            && s["leader"].is_string()
                            && s["membershipChanging"] == false
                    };
                    for other in &all {
                        let (_, s) = get(other, "/status").await.ok()?;
                        if !settled(&s) {
                            return None;
                        }
                    }
                    let (_, s) = get(&api, "/status").await.ok()?;
                    settled(&s).then_some(s)
                }
            },
        )
        .await
    }

    /// The leader as seen by any live agent.
    pub async fn leader(&self, limit: Duration) -> String {
        let apis: Vec<String> = self
            .agents
            .iter()
            .filter(|a| a.pid().is_some())
            .map(|a| a.api.clone())
            .collect();
        wait_for(limit, "a leader", || {
            let apis = apis.clone();
            async move {
                for api in apis {
                    if let Ok((_, s)) = get(&api, "/status").await
                        && let Some(l) = s["leader"].as_str()
                    {
                        return Some(l.to_string());
                    }
                }
                None
            }
        })
        .await
    }
}

/// A small task that runs until deleted.
pub fn sleeper_body(name: &str) -> String {
    format!(
        r#"{{"image": "{IMAGE}", "name": "{name}", "command": ["sleep", "3600"], "memory": "16m"}}"#
    )
}

/// Creates a task through `api`; returns its id.
pub async fn create_task(api: &str, body: &str) -> Result<String, String> {
    let (status, v) = post(api, "/tasks", body).await?;
    if status != 201 {
        return Err(format!("{status}: {v}"));
    }
    v["id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("no id in {v}"))
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Removes every container of node `id`: with the process killed, this is a machine's death.
/// Removes what node `id` leaves in the shared engine once it is gone: its containers and the
/// network it made for them (`orion-<id>`).
pub fn remove_node_leftovers(id: &str) {
    remove_containers_of(id);
    let net = format!("orion-{id}");
    let removed = |net: &str| {
        Command::new("docker")
            .args(["network", "rm", net])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // A network that was not there yet may be on its way: the engine finishes a create the
    // killed agent had sent. Seen once: `orion-cli-json`, whose test stops its agent within
    // a second of its start, was left after a whole run. One more try once that has landed.
    if !removed(&net) {
        std::thread::sleep(Duration::from_millis(500));
        removed(&net);
    }
}

pub fn remove_containers_of(id: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=orion.node={id}")])
        .output()
        .expect("docker ps");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// The task as `api` sees it, if it answers.
pub async fn task(api: &str, id: &str) -> Option<Value> {
    get(api, &format!("/tasks/{id}"))
        .await
        .ok()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| t)
}

/// `hostIp:hostPort` of a running task's first published port.
pub fn published(t: &Value) -> Option<String> {
    let p = &t["ports"][0];
    Some(format!(
        "{}:{}",
        p["hostIp"].as_str()?,
        p["hostPort"].as_u64()?
    ))
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
