//! The HTTP load generator: N clients share one connection pool, each sends its next request
//! as soon as its previous one is answered (a closed loop), until the request budget is spent.

use crate::{BoxError, Summary};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// `POST {url}/tasks` with the body of `--body`; success is 201 (the command is committed).
    Orion,
    /// `POST {url}/v3/kv/put` of etcd's JSON gateway, base64 key and a value of `--value-bytes`.
    Etcd,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[arg(long, value_enum)]
    target: Target,
    /// Base URL, e.g. http://127.0.30.1:8000; repeat to spread clients round-robin
    #[arg(long, required = true)]
    url: Vec<String>,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Orion API token (Authorization: Bearer) [default: ORION_TOKEN]
    #[arg(long, env = "ORION_TOKEN")]
    token: Option<String>,
    /// Measured requests (all clients together)
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests sent first and not measured
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Orion: the JSON request body of POST /tasks
    #[arg(long)]
    body: Option<PathBuf>,
    /// Orion: after the 201, unless its task object already has a node, poll GET /tasks/{id}
    /// every --poll-ms until the task has a node
    #[arg(long)]
    placed: bool,
    #[arg(long, default_value_t = 1)]
    poll_ms: u64,
    /// etcd: bytes of each value
    #[arg(long, default_value_t = 512)]
    value_bytes: usize,
    /// A label copied into the JSON result
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, Args)]
pub struct PayloadArgs {
    /// The JSON request body of POST /tasks
    #[arg(long)]
    body: PathBuf,
}

/// Prints the size in bytes of the JSON of the `CreateTask` command that the body becomes.
pub fn payload_size(a: PayloadArgs) -> Result<(), BoxError> {
    let body = std::fs::read(&a.body)?;
    let spec = orion_types::api::parse_task_request(&body).map_err(|e| e.to_string())?;
    let cmd = orion_types::Command::CreateTask {
        task_id: uuid::Uuid::new_v4().simple().to_string(),
        spec: Box::new(spec),
        at: 1_700_000_000_000,
    };
    let size = serde_json::to_vec(&cmd)?.len();
    println!(
        "{}",
        serde_json::json!({"request_bytes": body.len(), "command_bytes": size})
    );
    Ok(())
}

struct Shared {
    args: LoadArgs,
    http: reqwest::Client,
    body: Vec<u8>,
    value_b64: String,
    next: AtomicUsize,
    run_id: String,
}

#[derive(Default)]
struct ClientResult {
    commit: Vec<Duration>,
    placed: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

pub async fn run(args: LoadArgs) -> Result<(), BoxError> {
    if args.clients == 0 || args.requests == 0 {
        return Err("--clients and --requests must be at least 1".into());
    }
    let body = match (&args.body, args.target) {
        (Some(p), _) => std::fs::read(p)?,
        (None, Target::Orion) => return Err("--body is required with --target orion".into()),
        (None, Target::Etcd) => Vec::new(),
    };
    let value: Vec<u8> = (0..args.value_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &args.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?,
        );
    }
    // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let shared = Arc::new(Shared {
        value_b64: base64(&value),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        args,
        http,
        body,
        next: AtomicUsize::new(0),
    });

    // Warm-up: opens the connections and fills caches; not measured.
    let warm = shared.args.warmup;
    if warm > 0 {
        phase(&shared, warm, false).await;
    }
    let total = shared.args.requests;
    let started = Instant::now();
    let results = phase(&shared, total, true).await;
    let elapsed = started.elapsed();

    let mut all = ClientResult::default();
    for r in results {
        all.commit.extend(r.commit);
        all.placed.extend(r.placed);
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    let ok = all.commit.len();
    let a = &shared.args;
    let out = serde_json::json!({
        "label": a.label,
        "target": format!("{:?}", a.target).to_lowercase(),
        "clients": a.clients,
        "requests": total,
        "ok": ok,
        "errors": all.errors,
        "first_error": all.first_error,
        "seconds": elapsed.as_secs_f64(),
        "throughput_per_s": ok as f64 / elapsed.as_secs_f64(),
        "commit": Summary::of(all.commit),
        "placed": Summary::of(all.placed),
        "request_bytes": if a.target == Target::Orion { shared.body.len() } else { a.value_bytes },
    });
    println!("{out}");
    Ok(())
}

/// Runs `count` requests over the clients; returns each client's samples.
async fn phase(shared: &Arc<Shared>, count: usize, measured: bool) -> Vec<ClientResult> {
    shared.next.store(0, Ordering::SeqCst);
    let mut handles = Vec::new();
    for c in 0..shared.args.clients {
        let s = shared.clone();
        handles.push(tokio::spawn(async move {
            let url = &s.args.url[c % s.args.url.len()];
            let mut r = ClientResult::default();
            loop {
                let i = s.next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t0 = Instant::now();
                match one(&s, url, c, i, measured).await {
                    Ok(created) => {
                        r.commit.push(t0.elapsed());
                        if let (true, Some(Created { id, placed })) = (s.args.placed, created) {
                            if placed {
                                // The 201's task object already names its node.
                                r.placed.push(t0.elapsed());
                                continue;
                            }
                            match wait_placed(&s, url, &id).await {
                                Ok(()) => r.placed.push(t0.elapsed()),
                                Err(e) => {
                                    r.errors += 1;
                                    r.first_error.get_or_insert(e.to_string());
                                }
                            }
                        }
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e.to_string());
                    }
                }
            }
            r
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        if let Ok(r) = h.await {
            out.push(r);
        }
    }
    out
}

/// What the 201 of `POST /tasks` says of the new task.
struct Created {
    id: String,
    /// The answer's task object has a node: it was placed in the entry that created it.
    placed: bool,
}

/// The part of the task object the load reads (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct TaskIdNode {
    id: Option<String>,
    node: Option<String>,
}

/// The part of etcd's put answer the load checks (its header is there).
#[derive(serde::Deserialize)]
struct EtcdPut {
    header: Option<serde::de::IgnoredAny>,
}

/// One request; for Orion, returns what the answer says of the new task.
async fn one(
    s: &Shared,
    url: &str,
    client: usize,
    i: usize,
    measured: bool,
) -> Result<Option<Created>, BoxError> {
    match s.args.target {
        Target::Orion => {
            let resp = s
                .http
                .post(format!("{url}/tasks"))
                .header("content-type", "application/json")
                .body(s.body.clone())
                .send()
                .await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            if status.as_u16() != 201 {
                return Err(
                    format!("POST /tasks: {status}: {}", String::from_utf8_lossy(&bytes)).into(),
                );
            }
            let t: TaskIdNode = serde_json::from_slice(&bytes)?;
            Ok(t.id.map(|id| Created {
                id,
                placed: t.node.is_some(),
            }))
        }
        Target::Etcd => {
            let key = format!("bench/{}/{}/{client}/{i}", s.run_id, u8::from(measured));
            let body = format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                base64(key.as_bytes()),
                s.value_b64
            );
            let resp = s
                .http
                .post(format!("{url}/v3/kv/put"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            if !status.is_success() {
                return Err(
                    format!("etcd put: {status}: {}", String::from_utf8_lossy(&bytes)).into(),
                );
            }
            let answer: EtcdPut = serde_json::from_slice(&bytes)?;
            if answer.header.is_none() {
                return Err(format!(
                    "etcd put: unexpected answer {}",
                    String::from_utf8_lossy(&bytes)
                )
                .into());
            }
            Ok(None)
        }
    }
}

async fn wait_placed(s: &Shared, url: &str, id: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = s
            .http
            .get(format!("{url}/tasks/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if v.get("node").is_some_and(|n| !n.is_null()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("task {id} not placed within 30 s: {v}").into());
        }
        tokio::time::sleep(Duration::from_millis(s.args.poll_ms)).await;
    }
}

/// Standard base64 with padding (etcd's gateway wants bytes fields so encoded).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
