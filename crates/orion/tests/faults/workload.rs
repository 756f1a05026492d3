//! The workload: concurrent clients creating, reading and deleting tasks through different
//! nodes while the nemesis acts, and a hostile client sending bad input at the same time.
//!
//! Every operation is recorded with its call and return times on one monotonic clock and an
//! outcome: ok, failed (certainly without effect: connection refused, 4xx) or unknown (a
//! timeout, a reset, a 5xx on a write: it may have taken effect, now or later). Each create
//! carries a unique task name, the key of the checker's registers, so a create whose answer
//! was lost can still be matched to the task it made.

use crate::nemesis::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on one workload request: above the API's own write bound (Raft RPC timeout plus the
/// forwarding margin), so a timeout here means the cluster did not answer at all.
const OP_TIMEOUT: Duration = Duration::from_secs(6);

pub use orion_sim::history::{Op, OpKind, Outcome, write_outcome};

/// The shared record of the run.
pub struct History {
    pub t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn new() -> Arc<History> {
        Arc::new(History {
            t0: Instant::now(),
            ops: Mutex::new(Vec::new()),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().expect("history").push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history").clone()
    }
}

/// What the clients know of the tasks they made, to pick reads and deletes and to keep the
/// number of live tasks small.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub id: Option<String>,
    pub create: Option<Outcome>,
    pub delete_acked: bool,
    pub delete_tried: bool,
}

pub struct Shared {
    pub tasks: Mutex<BTreeMap<String, Known>>,
    pub stop: AtomicBool,
    /// Cap on tasks that are, or may be, live.
    pub live_max: usize,
}

impl Shared {
    fn maybe_live(&self) -> usize {
        self.tasks
            .lock()
            .expect("tasks")
            .values()
            .filter(|k| k.create != Some(Outcome::Fail) && !k.delete_acked)
            .count()
    }
}

/// One HTTP answer, or a transport error classified.
enum Answer {
    Status(u16, Value),
    /// The request certainly never reached the server.
    Refused(String),
    /// It may have: timeout, reset, broken body.
    Lost(String),
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.timeout(OP_TIMEOUT).send().await {
        Err(e) if e.is_connect() => Answer::Refused(e.to_string()),
        Err(e) => Answer::Lost(e.to_string()),
        Ok(r) => {
            let status = r.status().as_u16();
            match r.json::<Value>().await {
                Ok(v) => Answer::Status(status, v),
                Err(e) => Answer::Lost(format!("status {status}, body: {e}")),
            }
        }
    }
}

pub fn task_body(name: &str) -> String {
    format!(
        r#"{{"image":"{}","name":"{name}","command":["sleep","3600"],"memory":"16m"}}"#,
        crate::common::IMAGE
    )
}

/// One client: a loop of random operations through random nodes until `stop`.
pub async fn client(
    idx: usize,
    seed: u64,
    apis: Vec<String>,
    history: Arc<History>,
    shared: Arc<Shared>,
) {
    // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .default_headers(admin_header(&apis))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut rng = Rng::new(seed ^ (0xC11E_0000 + idx as u64));
    let mut seq = 0u64;
    let mut last_list = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let node = rng.below(apis.len() as u64) as usize;
        let api = &apis[node];
        let unresolved = shared
            .tasks
            .lock()
            .expect("tasks")
            .values()
            .any(|k| k.id.is_none() && k.create == Some(Outcome::Unknown));
        let roll = rng.below(100);
        if (unresolved || idx == 0) && last_list.elapsed() > Duration::from_secs(4) {
            last_list = Instant::now();
            list(idx, node, api, &http, &history, &shared).await;
        } else if roll < 30 && shared.maybe_live() < shared.live_max {
            seq += 1;
            let name = format!("fw-c{idx}-{seq}");
            create(idx, node, api, &name, &http, &history, &shared).await;
        } else if roll < 50 {
            let pick = pick_task(&shared, &mut rng, true);
            if let Some((name, id)) = pick {
                delete(idx, node, api, &name, &id, &http, &history, &shared).await;
            }
        } else {
            let pick = pick_task(&shared, &mut rng, false);
            if let Some((name, id)) = pick {
                read(idx, node, api, &name, &id, &http, &history).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(100, 300))).await;
    }
}

/// A random task with a known id: for a delete, one not yet deleted; for a read, any.
fn pick_task(shared: &Shared, rng: &mut Rng, for_delete: bool) -> Option<(String, String)> {
    let tasks = shared.tasks.lock().expect("tasks");
    let candidates: Vec<(&String, &Known)> = tasks
        .iter()
        .filter(|(_, k)| k.id.is_some())
        .filter(|(_, k)| !for_delete || !k.delete_acked)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    // Reads favour recent tasks, so that reads race creates and deletes.
    let n = candidates.len() as u64;
    let i = if !for_delete && rng.below(2) == 0 {
        n - 1 - rng.below(n.min(4))
    } else {
        rng.below(n)
    };
    let (name, k) = candidates[i as usize];
    Some((name.clone(), k.id.clone().expect("id")))
}

fn op(client: usize, kind: OpKind, name: &str, node: usize, call_us: u64, history: &History) -> Op {
    Op {
        client,
        kind,
        name: name.to_string(),
        node,
        call_us,
        return_us: history.now_us(),
        outcome: Outcome::Fail,
        status: None,
        observed: None,
        seen: Vec::new(),
        id: None,
        error: None,
    }
}

async fn create(
    idx: usize,
    node: usize,
    api: &str,
    name: &str,
    http: &reqwest::Client,
    history: &History,
    shared: &Shared,
) {
    shared
        .tasks
        .lock()
        .expect("tasks")
        .insert(name.to_string(), Known::default());
    let call = history.now_us();
    let ans = send(
        http.post(format!("{api}/tasks"))
            .header("content-type", "application/json")
            .body(task_body(name)),
    )
    .await;
    let mut o = op(idx, OpKind::Create, name, node, call, history);
    match ans {
        Answer::Status(201, v) => {
            o.outcome = Outcome::Ok;
            o.id = v["id"].as_str().map(String::from);
            o.observed = v["state"].as_str().map(String::from);
        }
        Answer::Status(s, v) => {
            o.status = Some(s);
            o.outcome = write_outcome(s);
            o.error = Some(v.to_string());
        }
        Answer::Refused(e) => o.error = Some(e),
        Answer::Lost(e) => {
            o.outcome = Outcome::Unknown;
            o.error = Some(e);
        }
    }
    if o.status.is_none() && o.outcome == Outcome::Ok {
        o.status = Some(201);
    }
    let mut tasks = shared.tasks.lock().expect("tasks");
    let k = tasks.entry(name.to_string()).or_default();
    k.create = Some(o.outcome);
    if k.id.is_none() {
        k.id = o.id.clone();
    }
    drop(tasks);
    history.push(o);
}

#[allow(clippy::too_many_arguments)]
async fn delete(
    idx: usize,
    node: usize,
    api: &str,
    name: &str,
    id: &str,
    http: &reqwest::Client,
    history: &History,
    shared: &Shared,
) {
    let call = history.now_us();
    let ans = send(http.delete(format!("{api}/tasks/{id}"))).await;
    let mut o = op(idx, OpKind::Delete, name, node, call, history);
    o.id = Some(id.to_string());
    match ans {
        Answer::Status(200, v) => {
            o.status = Some(200);
            o.outcome = Outcome::Ok;
            o.observed = v["state"].as_str().map(String::from);
        }
        Answer::Status(s, v) => {
            o.status = Some(s);
            o.outcome = write_outcome(s);
            o.error = Some(v.to_string());
        }
        Answer::Refused(e) => o.error = Some(e),
        Answer::Lost(e) => {
            o.outcome = Outcome::Unknown;
            o.error = Some(e);
        }
    }
    {
        let mut tasks = shared.tasks.lock().expect("tasks");
        let k = tasks.entry(name.to_string()).or_default();
        k.delete_tried = true;
        if o.outcome == Outcome::Ok {
            k.delete_acked = true;
        }
    }
    history.push(o);
}

#[allow(clippy::too_many_arguments)]
async fn read(
    idx: usize,
    node: usize,
    api: &str,
    name: &str,
    id: &str,
    http: &reqwest::Client,
    history: &History,
) {
    let call = history.now_us();
    let ans = send(http.get(format!("{api}/tasks/{id}?consistent=true"))).await;
    let mut o = op(idx, OpKind::Read, name, node, call, history);
    o.id = Some(id.to_string());
    match ans {
        Answer::Status(200, v) => {
            o.status = Some(200);
            o.outcome = Outcome::Ok;
            o.observed = v["state"].as_str().map(String::from);
        }
        Answer::Status(404, _) => {
            o.status = Some(404);
            o.outcome = Outcome::Ok;
            o.observed = Some("absent".into());
        }
        Answer::Status(s, v) => {
            o.status = Some(s);
            o.error = Some(v.to_string());
        }
        Answer::Refused(e) | Answer::Lost(e) => o.error = Some(e),
    }
    history.push(o);
}

/// A consistent list: resolves the ids of creates whose answer was lost, and observes every
/// register at once.
async fn list(
    idx: usize,
    node: usize,
    api: &str,
    http: &reqwest::Client,
    history: &History,
    shared: &Shared,
) {
    let call = history.now_us();
    let ans = send(http.get(format!("{api}/tasks?consistent=true"))).await;
    let mut o = op(idx, OpKind::List, "", node, call, history);
    match ans {
        Answer::Status(200, Value::Array(tasks)) => {
            o.status = Some(200);
            o.outcome = Outcome::Ok;
            let mut known = shared.tasks.lock().expect("tasks");
            for t in &tasks {
                let (Some(name), Some(id), Some(state)) =
                    (t["name"].as_str(), t["id"].as_str(), t["state"].as_str())
                else {
                    continue;
                };
                o.seen.push((name.to_string(), state.to_string()));
                if let Some(k) = known.get_mut(name)
                    && k.id.is_none()
                {
                    k.id = Some(id.to_string());
                }
            }
        }
        Answer::Status(s, v) => {
            o.status = Some(s);
            o.error = Some(v.to_string());
        }
        Answer::Refused(e) | Answer::Lost(e) => o.error = Some(e),
    }
    history.push(o);
}

/// Tallies of the hostile client: case -> (answered as required, transport failures during a
/// fault, wrong answers with details).
#[derive(Debug, Default)]
pub struct HostileTally {
    pub expected: BTreeMap<&'static str, usize>,
    pub transport: BTreeMap<&'static str, usize>,
    pub wrong: Vec<String>,
    pub slow_cutoff_secs: Vec<f64>,
}

/// Sends malformed and hostile requests until `stop`: each must get a 4xx or be cut off.
pub async fn hostile(seed: u64, apis: Vec<String>, shared: Arc<Shared>) -> HostileTally {
    // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .default_headers(admin_header(&apis))
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(8))
        .build()
        .expect("client");
    let mut rng = Rng::new(seed ^ 0xBAD_1200);
    let mut tally = HostileTally::default();
    // The slow clients run beside the fast cases; two per run. They send the token, so that
    // the body bound is what answers them, not the 401 of the authentication layer.
    let auth = admin_header(&apis)
        .get(reqwest::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("Authorization: {v}\r\n"))
        .unwrap_or_default();
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let api = apis[(i * 2 + 1) % apis.len()].clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5 + 20 * i as u64)).await;
                slow_client(&api, &auth).await
            })
        })
        .collect();
    let huge = format!(
        r#"{{"image":"{}","name":"{}"}}"#,
        crate::common::IMAGE,
        "x".repeat(1024 * 1024 + 512)
    );
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let api = &apis[rng.below(apis.len() as u64) as usize];
        let case = i % 7;
        i += 1;
        let (name, req, allowed): (&'static str, reqwest::RequestBuilder, &[u16]) = match case {
            0 => (
                "invalid-json",
                http.post(format!("{api}/tasks"))
                    .header("content-type", "application/json")
                    .body(r#"{"image": "orion/busybox:latest", "command": ["#),
                &[400],
            ),
            1 => (
                "body-over-1MiB",
                http.post(format!("{api}/tasks"))
                    .header("content-type", "application/json")
                    .body(huge.clone()),
                &[413, 400],
            ),
            2 => (
                "unknown-field",
                http.post(format!("{api}/tasks"))
                    .header("content-type", "application/json")
                    .body(r#"{"image":"orion/busybox:latest","name":"fw-hostile","replicas":3}"#),
                &[400],
            ),
            3 => (
                "wrong-type",
                http.post(format!("{api}/tasks"))
                    .header("content-type", "application/json")
                    .body(r#"{"image":["x"],"name":"fw-hostile","memory":"lots"}"#),
                &[400],
            ),
            4 => (
                "get-missing-id",
                http.get(format!("{api}/tasks/no-such-task-{}", rng.next_u64())),
                &[404],
            ),
            5 => (
                "delete-missing-id",
                http.delete(format!("{api}/tasks/no-such-task-{}", rng.next_u64())),
                // A delete must not act on a stale replica: on a miss the node confirms with
                // the leader first, so a node cut off from the quorum answers 503, not 404.
                &[404, 503],
            ),
            _ => (
                "not-json-at-all",
                http.post(format!("{api}/tasks"))
                    .header("content-type", "application/json")
                    .body(vec![0xff_u8, 0xfe, 0x00, 0x7b]),
                &[400],
            ),
        };
        match req.send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                let json_error = serde_json::from_str::<Value>(&body)
                    .ok()
                    .is_some_and(|v| v["error"].is_string());
                if allowed.contains(&s) && json_error {
                    *tally.expected.entry(name).or_default() += 1;
                } else {
                    tally
                        .wrong
                        .push(format!("{name} on {api}: {s} {}", truncate(&body, 200)));
                }
            }
            // A huge body may be cut off mid-send; that is an allowed answer for it.
            Err(_) if name == "body-over-1MiB" => {
                *tally.expected.entry(name).or_default() += 1;
            }
            // A node the nemesis paused or killed does not answer anything.
            Err(_) => *tally.transport.entry(name).or_default() += 1,
        }
        tokio::time::sleep(Duration::from_millis(rng.range(200, 600))).await;
    }
    for h in slow {
        match h.await.expect("slow client task") {
            Ok(secs) => {
                *tally.expected.entry("slow-body").or_default() += 1;
                tally.slow_cutoff_secs.push(secs);
            }
            Err(SlowError::Transport) => *tally.transport.entry("slow-body").or_default() += 1,
            Err(SlowError::Wrong(e)) => tally.wrong.push(format!("slow-body: {e}")),
        }
    }
    tally
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[derive(Debug)]
enum SlowError {
    Transport,
    Wrong(String),
}

/// Opens a connection, sends headers announcing a body and only part of it, and waits: the
/// API must answer 408 or close within its 10 s body bound (plus slack for a busy machine).
async fn slow_client(api: &str, auth: &str) -> Result<f64, SlowError> {
    let addr = api.trim_start_matches("http://");
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| SlowError::Transport)?
        .map_err(|_| SlowError::Transport)?;
    let head = format!(
        "POST /tasks HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"image\": \"orion/bus"
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|_| SlowError::Transport)?;
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(25), s.read_to_end(&mut buf)).await;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&buf).to_string();
    match read {
        Err(_) => Err(SlowError::Wrong(format!(
            "connection still open after {secs:.1}s"
        ))),
        Ok(_) if text.starts_with("HTTP/1.1 408") || text.is_empty() => Ok(secs),
        Ok(_) => Err(SlowError::Wrong(format!(
            "after {secs:.1}s: {}",
            truncate(&text, 200)
        ))),
    }
}

/// The cluster's admin token as a default header (the hostile cases then reach the handlers
/// rather than stopping at the 401 of the authentication layer).
fn admin_header(apis: &[String]) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    let token = orion_security::credentials::default_path().and_then(|p| {
        apis.iter()
            .find_map(|a| orion_security::credentials::find(&p, a).ok().flatten())
    });
    if let Some(e) = token
        && let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", e.admin_token))
    {
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    h
}
