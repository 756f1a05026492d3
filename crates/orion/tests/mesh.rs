//! The mesh on a live cluster, real agents and the real Docker engine: an ingress port on a
//! node that holds no replica is served, with the client's address in `X-Forwarded-For`
//! (a busybox httpd CGI script echoes its environment); the service's VIP answers on every
//! node; and rolling updates seen by a prober through the mesh: start-first with 1 and 3
//! replicas drops nothing, stop-first's failures are reported, and a new task whose server
//! listens late joins only once it listens.
//!
//! Loopback networks: 127.0.107.0/24, 127.0.109.0/24, 127.0.210.0/24 and 127.0.108.0-99 (the mesh's unit
//! tests use 127.0.108.100-212 without agents). Each cluster has its own `--vip-range`, since
//! all agents share one kernel.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

/// A service whose tasks run busybox httpd with a CGI script (`/cgi-bin/echo`) that prints
/// the version (`V`) and the request's environment (headers as `HTTP_*`).
fn echo_service(name: &str, version: u32, extra: Value) -> String {
    let script = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho v=$V\\nenv\\n' > /www/cgi-bin/echo && chmod +x /www/cgi-bin/echo && exec busybox httpd -f -p 80 -h /www";
    let mut body = json!({
        "name": name,
        "image": IMAGE,
        "command": ["sh", "-c", script],
        "env": {"V": version.to_string()},
        "memory": "16m",
        "stopGracePeriod": "5s",
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body.to_string()
}

/// `curl` from `from` (a source address) to `url`; the body when it answers 200.
async fn curl(from: &str, url: &str) -> Option<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "3", "--interface", from, url])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn service(api: &str, id: &str) -> Option<Value> {
    match get(api, &format!("/services/{id}")).await {
        Ok((200, s)) => Some(s),
        _ => None,
    }
}

/// Waits until every task of the service runs `version`, `n` of them, and its deployment
/// (if any) ended; returns the service object.
async fn wait_settled(api: &str, id: &str, version: u64, n: usize) -> Value {
    wait_for(
        CONVERGE,
        &format!("{id}: {n} tasks of version {version}"),
        || async move {
            let s = service(api, id).await?;
            if s["deployment"]["state"] == "running" || s["deployment"]["state"] == "rolling-back" {
                return None;
            }
            let (_, tasks) = get(api, &format!("/services/{id}/tasks")).await.ok()?;
            let live: Vec<&Value> = tasks
                .as_array()?
                .iter()
                .filter(|t| t["state"] != "stopped")
                .collect();
            (live.len() == n
                && live
                    .iter()
                    .all(|t| t["state"] == "running" && t["version"] == version))
            .then_some(s)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_port_on_a_node_without_a_replica_is_served_with_the_client_address() {
    if docker_or_skip().await.is_none() {
        return;
    }
    let cluster = Cluster::start("ing", 107, 3, &["--vip-range", "10.207.0.0/24"]);
    let a1 = &cluster.agents[0];
    cluster
        .wait_membership(a1, 3, 0, Duration::from_secs(30))
        .await;
    let body = echo_service(
        "web",
        1,
        json!({"constraints": ["node.id == ing1"],
               "ports": [{"target": 80, "published": 18080, "protocol": "http"}]}),
    );
    let (status, created) = post(&a1.api, "/services", &body).await.expect("create");
    assert_eq!(status, 201, "{created}");
    let s = wait_settled(&a1.api, "web", 1, 1).await;

    // Node 3 holds no replica; its ingress port serves, and the script sees curl's address.
    let page = wait_for(CONVERGE, "node 3's ingress port to serve", || {
        curl("127.0.107.77", "http://127.0.107.3:18080/cgi-bin/echo")
    })
    .await;
    eprintln!("node 3's ingress port answered:\n{page}");
    assert!(page.contains("v=1"), "{page}");
    assert!(
        page.contains("HTTP_X_FORWARDED_FOR=127.0.107.77"),
        "the client's address reaches the task: {page}"
    );
    // Node 1 holds the replica: its mesh dials the container's own address (a shortcut),
    // and the client's address still arrives.
    let page = wait_for(CONVERGE, "node 1's ingress port to serve", || {
        curl("127.0.107.79", "http://127.0.107.1:18080/cgi-bin/echo")
    })
    .await;
    assert!(
        page.contains("HTTP_X_FORWARDED_FOR=127.0.107.79"),
        "the client's address reaches the task through the shortcut: {page}"
    );
    // The task itself publishes a dynamic port, not the ingress one.
    let (_, tasks) = get(&a1.api, "/services/web/tasks").await.expect("tasks");
    let host_port = tasks[0]["ports"][0]["hostPort"].as_u64().unwrap_or(0);
    assert!(host_port != 0 && host_port != 18080, "{tasks}");

    // The VIP answers the target port from the host (every node serves it).
    let vip = s["vip"]
        .as_str()
        .expect("the service has a VIP")
        .to_string();
    assert!(vip.starts_with("10.207.0."), "{s}");
    eprintln!("VIP {vip}");
    let page = wait_for(CONVERGE, "the VIP to serve", || {
        let url = format!("http://{vip}:80/cgi-bin/echo");
        async move { curl("127.0.107.78", &url).await }
    })
    .await;
    assert!(page.contains("v=1"), "{page}");

    // Deleted: the ingress port closes on every node.
    let (status, _) = delete(&a1.api, "/services/web").await.expect("delete");
    assert_eq!(status, 200);
    wait_for(CONVERGE, "the ingress port to close", || async {
        let refused = tokio::net::TcpStream::connect("127.0.107.2:18080")
            .await
            .is_err();
        refused.then_some(())
    })
    .await;
}

/// Sends a GET on a new connection every 20 ms until stopped; counts answers and failures
/// (anything but a 200, and connection errors), and remembers the first few failures.
struct Prober {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Prober {
    fn start(url: String) -> Prober {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            // No pooling: every request is a new connection through the mesh, as a new
            // client would make.
            // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let outcome = match client.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        r.text().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        if errors.len() < 5 {
                            errors.push(e);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            errors
        });
        Prober {
            ok,
            failed,
            stop,
            task,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap_or_default();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Rolls `web` to `version` with `order` while a prober hits node 2's ingress port;
/// returns (answered, failed, first errors).
async fn probed_update(
    api: &str,
    replicas: u32,
    version: u32,
    order: &str,
) -> (u64, u64, Vec<String>) {
    let prober = Prober::start("http://127.0.108.2:18081/cgi-bin/echo".into());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = echo_service(
        "web",
        version,
        json!({"replicas": replicas,
               "ports": [{"target": 80, "published": 18081, "protocol": "http"}],
               "update": {"order": order, "monitor": "1s", "parallelism": 1}}),
    );
    let (status, s) = put_json(api, "/services/web", &body).await.expect("put");
    assert_eq!(status, 200, "{s}");
    let version_now = s["version"].as_u64().expect("version");
    let s = wait_settled(api, "web", version_now, replicas as usize).await;
    assert_eq!(s["deployment"]["state"], "completed", "{s}");
    // Stopped tasks drain for a while after the deployment completes: keep probing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = prober.finish().await;
    let page = curl("127.0.108.79", "http://127.0.108.2:18081/cgi-bin/echo").await;
    assert!(page.unwrap_or_default().contains(&format!("v={version}")));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_through_the_mesh_drop_no_request_start_first() {
    if docker_or_skip().await.is_none() {
        return;
    }
    let cluster = Cluster::start("roll", 108, 2, &["--vip-range", "10.208.0.0/24"]);
    let a1 = &cluster.agents[0];
    cluster
        .wait_membership(a1, 1, 1, Duration::from_secs(30))
        .await;
    let body = echo_service(
        "web",
        1,
        json!({"replicas": 1, "ports": [{"target": 80, "published": 18081, "protocol": "http"}]}),
    );
    let (status, created) = post(&a1.api, "/services", &body).await.expect("create");
    assert_eq!(status, 201, "{created}");
    wait_settled(&a1.api, "web", 1, 1).await;
    wait_for(CONVERGE, "the ingress port to serve", || {
        curl("127.0.108.79", "http://127.0.108.2:18081/cgi-bin/echo")
    })
    .await;

    let (ok1, failed1, errors1) = probed_update(&a1.api, 1, 2, "start-first").await;
    eprintln!("start-first, 1 replica: {ok1} answered, {failed1} failed {errors1:?}");
    let (ok3, failed3, errors3) = probed_update(&a1.api, 3, 3, "start-first").await;
    eprintln!("start-first, 3 replicas: {ok3} answered, {failed3} failed {errors3:?}");
    let (oks, faileds, _) = probed_update(&a1.api, 1, 4, "stop-first").await;
    // Reported, not asserted: stop-first leaves a gap with no task by design.
    eprintln!("stop-first, 1 replica: {oks} answered, {faileds} failed");
    assert!(ok1 > 20 && ok3 > 20, "the prober ran: {ok1}, {ok3}");
    assert_eq!(failed1, 0, "start-first, 1 replica: {errors1:?}");
    assert_eq!(failed3, 0, "start-first, 3 replicas: {errors3:?}");
}

/// The bug of issue 11 (1 request in about 8 rolling updates failed): a new task without a
/// health check joined the mesh as soon as its container ran, which can be before its server
/// listens, and the engine's userland proxy accepted the mesh's connection and closed it
/// unanswered. Here the server listens a second after its container starts, so every request
/// sent to a new task in that second failed; now a new task joins once its port accepts a
/// connection, and start-first drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_health_check_joins_the_mesh_only_once_its_server_listens() {
    if docker_or_skip().await.is_none() {
        return;
    }
    let cluster = Cluster::start("slowlisten", 210, 2, &["--vip-range", "10.210.0.0/24"]);
    let a1 = &cluster.agents[0];
    cluster
        .wait_membership(a1, 1, 1, Duration::from_secs(30))
        .await;
    let body = |version: u32| {
        json!({
            "name": "late", "image": IMAGE, "memory": "16m", "stopGracePeriod": "2s",
            "command": ["sh", "-c", "sleep 1; exec busybox httpd -f -p 80 -h /www"],
            "env": {"V": version.to_string()}, "replicas": 2,
            "ports": [{"target": 80, "published": 18210}],
            "update": {"order": "start-first", "monitor": "1s", "parallelism": 1},
        })
        .to_string()
    };
    let (status, created) = post(&a1.api, "/services", &body(1)).await.expect("create");
    assert_eq!(status, 201, "{created}");
    wait_settled(&a1.api, "late", 1, 2).await;
    wait_for(CONVERGE, "the ingress port to serve", || {
        curl("127.0.210.79", "http://127.0.210.2:18210/")
    })
    .await;
    let prober = Prober::start("http://127.0.210.2:18210/".into());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, s) = put_json(&a1.api, "/services/late", &body(2))
        .await
        .expect("put");
    assert_eq!(status, 200, "{s}");
    let s = wait_settled(&a1.api, "late", 2, 2).await;
    assert_eq!(s["deployment"]["state"], "completed", "{s}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failed, errors) = prober.finish().await;
    eprintln!(
        "a server listening 1 s after its start, start-first: {ok} answered, {failed} failed {errors:?}"
    );
    assert!(ok > 20, "the prober ran: {ok}");
    assert_eq!(failed, 0, "{errors:?}");
}

/// Drain before stop: a request in flight through the mesh when its task is scaled away
/// still gets its answer (the container is held while the connection is open, up to its
/// grace), and only then does the container stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_survives_a_scale_down() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let agent = Agent::start(
        "drain1",
        "127.0.109.1".parse().expect("ip"),
        &["--bootstrap", "--vip-range", "10.209.1.0/24"],
    );
    wait_healthy(&agent).await;
    wait_leader(&agent).await;
    // A CGI script that answers after 3 s; the container ends at once on SIGTERM (its shell
    // traps it), so a stop signal sent too early loses the answer.
    let script = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\ntouch /tmp/started\\nsleep 3\\necho Content-Type: text/plain\\necho\\necho done\\n' > /www/cgi-bin/slow && chmod +x /www/cgi-bin/slow && busybox httpd -f -p 80 -h /www & trap 'exit 0' TERM; wait";
    let body = json!({
        "name": "slow", "image": IMAGE, "command": ["sh", "-c", script], "memory": "16m",
        "stopGracePeriod": "8s",
        "ports": [{"target": 80, "published": 18083, "protocol": "http"}],
    })
    .to_string();
    let (status, created) = post(&agent.api, "/services", &body).await.expect("create");
    assert_eq!(status, 201, "{created}");
    wait_settled(&agent.api, "slow", 1, 1).await;
    wait_for(CONVERGE, "the ingress port to serve", || {
        curl("127.0.109.77", "http://127.0.109.1:18083/")
    })
    .await;
    let slow = tokio::spawn(async {
        let started = std::time::Instant::now();
        let page = curl_slow("127.0.109.78", "http://127.0.109.1:18083/cgi-bin/slow").await;
        (page, started.elapsed())
    });
    // Scale down once the request is in the script (it left its mark).
    let cid = containers_of(&docker, "drain1").await[0].id.clone();
    wait_for(CONVERGE, "the slow request to reach the task", || {
        let cid = cid.clone();
        async move {
            let out = tokio::process::Command::new("docker")
                .args(["exec", &cid, "test", "-f", "/tmp/started"])
                .output()
                .await
                .ok()?;
            out.status.success().then_some(())
        }
    })
    .await;
    let (status, s) = post(&agent.api, "/services/slow/scale", r#"{"replicas": 0}"#)
        .await
        .expect("scale");
    assert_eq!(status, 200, "{s}");
    let (page, took) = slow.await.expect("join");
    assert_eq!(
        page.as_deref().map(str::trim),
        Some("done"),
        "took {took:?}"
    );
    // Then the container goes: its stop signal comes once the connection closed.
    wait_for(CONVERGE, "the drained container to be removed", || {
        let docker = docker.clone();
        async move {
            containers_of(&docker, "drain1")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
}

/// `curl` with a longer limit, for a slow answer.
async fn curl_slow(from: &str, url: &str) -> Option<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "15", "--interface", from, url])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
