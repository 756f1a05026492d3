//! Services on a live cluster, real agents and the real Docker engine: exact scaling (3 → 5
//! → 2, the highest slots removed), a global service that follows joins and drains, and an
//! update to a crashing version that rolls back by itself while the old version keeps
//! running, with `orion service update` exiting non-zero and saying why.
//!
//! Health checks: a service checked over HTTP turns healthy, and an update whose check fails
//! rolls back by itself while the old version serves.
//!
//! Loopback networks: 127.0.41.0/24 to 127.0.44.0/24 and 127.0.46.0/24.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Long enough for a few controller turns, placements and container starts on a loaded
/// machine; a healthy run takes a few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

fn sleeper_service(name: &str, extra: &str) -> String {
    format!(
        r#"{{"name": "{name}", "image": "{IMAGE}", "command": ["sleep", "3600"], "memory": "16m",
            "stopGracePeriod": "1s" {extra}}}"#
    )
}

/// Runs the `orion` client against `api`.
async fn orion_cli(api: &str, args: &[&str]) -> std::process::Output {
    let api = api.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_orion"))
            .args(&args)
            .env("ORION_ADDR", api)
            .output()
            .expect("run orion")
    })
    .await
    .expect("join")
}

async fn put(api: &str, path: &str, body: &str) -> Result<(u16, Value), String> {
    let r = authed(client().put(format!("{api}{path}")), api)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.map_err(|e| e.to_string())?))
}

/// The service's running tasks as `(slot or node, node)`, when exactly `n` run and none
/// other waits to start.
async fn running(api: &str, service: &str) -> Option<Vec<Value>> {
    let (status, tasks) = get(api, &format!("/services/{service}/tasks")).await.ok()?;
    if status != 200 {
        return None;
    }
    let tasks = tasks.as_array()?.clone();
    let live: Vec<Value> = tasks
        .into_iter()
        .filter(|t| t["state"] != "stopped")
        .collect();
    live.iter().all(|t| t["state"] == "running").then_some(live)
}

/// Waits until exactly `n` tasks of `service` run (and no other is live); returns them.
async fn wait_running(api: &str, service: &str, n: usize) -> Vec<Value> {
    wait_for(
        CONVERGE,
        &format!("exactly {n} running tasks of {service}"),
        || async move { running(api, service).await.filter(|t| t.len() == n) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_is_exact_and_a_global_service_follows_joins_and_drains() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start("svc-n", 41, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, CONVERGE).await;
    let api = c.agents[0].api.clone();

    let (status, svc) = post(
        &api,
        "/services",
        &sleeper_service("web", r#", "replicas": 3"#),
    )
    .await
    .expect("create");
    assert_eq!(status, 201, "{svc}");
    let (status, dup) = post(&api, "/services", &sleeper_service("web", ""))
        .await
        .expect("duplicate");
    assert_eq!(status, 409, "{dup}");
    wait_running(&api, "web", 3).await;
    for (n, want_slots) in [(5u32, vec![1, 2, 3, 4, 5]), (2, vec![1, 2])] {
        let (status, s) = post(
            &api,
            "/services/web/scale",
            &format!(r#"{{"replicas": {n}}}"#),
        )
        .await
        .expect("scale");
        assert_eq!(status, 200, "{s}");
        let tasks = wait_running(&api, "web", n as usize).await;
        let slots: Vec<u64> = {
            let mut v: Vec<u64> = tasks.iter().filter_map(|t| t["slot"].as_u64()).collect();
            v.sort();
            v
        };
        assert_eq!(slots, want_slots, "scale-down removes the highest slots");
        assert!(
            tasks
                .iter()
                .all(|t| t["service"] == "web" && t["health"] == "none")
        );
    }
    let (_, s) = get(&api, "/services/web").await.expect("get");
    assert_eq!(s["replicas"]["running"], 2, "{s}");

    let (status, g) = post(
        &api,
        "/services",
        &sleeper_service("agent", r#", "mode": "global""#),
    )
    .await
    .expect("create global");
    assert_eq!(status, 201, "{g}");
    let nodes = |tasks: &[Value]| -> BTreeSet<String> {
        tasks
            .iter()
            .filter_map(|t| t["node"].as_str().map(String::from))
            .collect()
    };
    let tasks = wait_running(&api, "agent", 3).await;
    assert_eq!(nodes(&tasks).len(), 3, "one per node");

    let join = "127.0.41.1:6000".to_string();
    c.agents.push(Agent::start(
        "svc-n4",
        "127.0.41.4".parse().expect("ip"),
        &["--join", &join],
    ));
    wait_healthy(&c.agents[3]).await;
    let tasks = wait_running(&api, "agent", 4).await;
    assert!(
        nodes(&tasks).contains("svc-n4"),
        "a node that joins gets one"
    );

    let (status, _) = post(&api, "/nodes/svc-n2/drain", "").await.expect("drain");
    assert_eq!(status, 200);
    let tasks = wait_running(&api, "agent", 3).await;
    assert!(
        !nodes(&tasks).contains("svc-n2"),
        "a drained node leaves the set"
    );

    for id in ["web", "agent"] {
        let (status, _) = delete(&api, &format!("/services/{id}"))
            .await
            .expect("delete");
        assert_eq!(status, 200);
    }
    let (_, list) = get(&api, "/services").await.expect("list");
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_to_a_crashing_version_rolls_back_and_the_cli_says_why() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let ip = "127.0.42.1".parse().expect("ip");
    let agent = Agent::start("svc-rb-n1", ip, &["--bootstrap"]);
    wait_healthy(&agent).await;
    wait_leader(&agent).await;
    let api = agent.api.clone();
    // The default monitor window (5 s): a new task must stay up that long before the old one
    // it replaces is stopped.
    let spec = sleeper_service("web", r#", "replicas": 2"#);
    let (status, _) = post(&api, "/services", &spec).await.expect("create");
    assert_eq!(status, 201);
    let before: BTreeSet<String> = wait_running(&api, "web", 2)
        .await
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();

    // The same spec again changes nothing.
    let (status, same) = put(&api, "/services/web", &spec).await.expect("put");
    assert_eq!((status, &same["version"]), (200, &1.into()), "{same}");

    let ls = orion_cli(&api, &["service", "ls", "--json"]).await;
    let list: Value = serde_json::from_slice(&ls.stdout).expect("service ls --json");
    assert_eq!(list[0]["id"], "web", "{list}");
    assert_eq!(list[0]["replicas"]["running"], 2, "{list}");
    let ps = orion_cli(&api, &["service", "ps", "web"]).await;
    let text = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.status.success() && text.contains("web.1") && text.contains("web.2"),
        "{text}"
    );

    let out = orion_cli(&api, &["service", "update", "--args", "exit 3", "web"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the update must fail: {stderr}");
    assert!(
        stderr.contains("rolled back") && stderr.contains("exited with code 3"),
        "the reason is given: {stderr}"
    );
    let (_, s) = get(&api, "/services/web").await.expect("get");
    assert_eq!(s["deployment"]["state"], "rolled-back", "{s}");
    assert_eq!(s["version"], 3, "{s}");
    // The old tasks ran throughout: the same two are still running.
    let after: BTreeSet<String> = wait_running(&api, "web", 2)
        .await
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    assert_eq!(before, after);
}

/// `kill -9` of a node's agent plus the removal of its containers (a machine's death): the
/// service is back to its count and every endpoint answers. The time is printed (a benchmark,
/// with only an absurd bound here); loopback network 127.0.43.0/24.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_s_replicas_come_back_and_answer() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start("svc-kill-n", 43, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, CONVERGE).await;
    let leader = c.leader(CONVERGE).await;
    let api = c.by_id(&leader).api.clone();
    let body = format!(
        r#"{{"name": "web", "image": "{IMAGE}", "replicas": 3, "memory": "16m",
            "command": ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
            "ports": [{{"target": 80}}]}}"#
    );
    let (status, s) = post(&api, "/services", &body).await.expect("create");
    assert_eq!(status, 201, "{s}");
    let tasks = wait_running(&api, "web", 3).await;
    let victim = tasks
        .iter()
        .filter_map(|t| t["node"].as_str())
        .find(|n| *n != leader)
        .expect("a task off the leader")
        .to_string();

    let killed_at = std::time::Instant::now();
    c.by_id_mut(&victim).kill();
    remove_containers_of(&victim);
    let endpoints = wait_for(CONVERGE, "3 answering endpoints off the dead node", || {
        let api = api.clone();
        let victim = victim.clone();
        async move {
            let tasks = running(&api, "web").await.filter(|t| t.len() == 3)?;
            if tasks.iter().any(|t| t["node"] == victim.as_str()) {
                return None;
            }
            let (_, s) = get(&api, "/services/web").await.ok()?;
            let eps = s["endpoints"].as_array()?.clone();
            let mut up = 0;
            for e in &eps {
                let addr = format!("{}:{}", e["address"].as_str()?, e["port"]);
                if http_page(&addr).await.is_some() {
                    up += 1;
                }
            }
            (up == 3).then_some(eps)
        }
    })
    .await;
    let took = killed_at.elapsed();
    println!(
        "service back to 3 answering replicas {took:?} after node {victim} died: {endpoints:?}"
    );
    assert!(took < CONVERGE, "recovery took {took:?}");
}

/// One node and a published (ingress) port: the mesh holds the published port and the tasks
/// get dynamic host ports, so start-first runs the new task beside the old one, the update
/// completes, and the port answers. Loopback network 127.0.44.0/24.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_one_node_with_a_published_port_completes() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let agent = Agent::start(
        "svc-port-n1",
        "127.0.44.1".parse().expect("ip"),
        &["--bootstrap"],
    );
    wait_healthy(&agent).await;
    wait_leader(&agent).await;
    let api = agent.api.clone();
    let body = |page: &str| {
        format!(
            r#"{{"name": "web", "image": "{IMAGE}", "memory": "16m", "stopGracePeriod": "1s",
                "command": ["sh", "-c", "echo {page} > /tmp/index.html && busybox httpd -f -p 80 -h /tmp"],
                "ports": [{{"target": 80, "published": 18080}}], "update": {{"monitor": "1s"}}}}"#
        )
    };
    let (status, s) = post(&api, "/services", &body("one")).await.expect("create");
    assert_eq!(status, 201, "{s}");
    wait_running(&api, "web", 1).await;
    let page = || async { http_page("127.0.44.1:18080").await };
    wait_for(CONVERGE, "version one to answer", || async {
        page().await.filter(|p| p.contains("one"))
    })
    .await;
    let (status, s) = put(&api, "/services/web", &body("two")).await.expect("put");
    assert_eq!((status, &s["version"]), (200, &2.into()), "{s}");
    let s = wait_for(CONVERGE, "the deployment to end", || {
        let api = api.clone();
        async move {
            let (_, s) = get(&api, "/services/web").await.ok()?;
            (s["deployment"]["state"] != "running").then_some(s)
        }
    })
    .await;
    assert_eq!(s["deployment"]["state"], "completed", "{s}");
    wait_for(CONVERGE, "version two to answer", || async {
        page().await.filter(|p| p.contains("two"))
    })
    .await;
}

/// The service's task ids whose health is `health`, when every live task runs and says so.
async fn all_with_health(api: &str, service: &str, n: usize, health: &str) -> Option<Vec<Value>> {
    let tasks = running(api, service).await.filter(|t| t.len() == n)?;
    tasks.iter().all(|t| t["health"] == health).then_some(tasks)
}

/// busybox httpd behind an HTTP health check every 500 ms: both replicas turn healthy (the
/// service says so); an update whose check gets 404 turns its new task unhealthy, the update
/// rolls back by itself, and the old tasks serve throughout. Loopback network 127.0.46.0/24.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_service_turns_healthy_and_a_failing_check_rolls_back() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let agent = Agent::start(
        "svc-health-n1",
        "127.0.46.1".parse().expect("ip"),
        &["--bootstrap"],
    );
    wait_healthy(&agent).await;
    wait_leader(&agent).await;
    let api = agent.api.clone();
    let body = |path: &str| {
        format!(
            r#"{{"name": "web", "image": "{IMAGE}", "replicas": 2, "memory": "16m",
                "stopGracePeriod": "1s",
                "command": ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
                "ports": [{{"target": 80}}],
                "healthcheck": {{"http": "{path}", "interval": "500ms", "retries": 2}},
                "update": {{"monitor": "1s"}}}}"#
        )
    };
    let (status, s) = post(&api, "/services", &body("/")).await.expect("create");
    assert_eq!(status, 201, "{s}");
    let healthy = wait_for(CONVERGE, "2 healthy tasks", || {
        let api = api.clone();
        async move { all_with_health(&api, "web", 2, "healthy").await }
    })
    .await;
    let (_, s) = get(&api, "/services/web").await.expect("get");
    assert_eq!(s["replicas"]["healthy"], s["replicas"]["desired"], "{s}");
    assert_eq!(s["replicas"]["healthy"], 2, "{s}");
    let before: BTreeSet<String> = healthy
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    let serving = || {
        let api = api.clone();
        async move {
            let tasks = running(&api, "web").await?;
            let mut up = 0;
            for t in &tasks {
                if http_page(&published(t)?).await.is_some() {
                    up += 1;
                }
            }
            (up == tasks.len() && up > 0).then_some(up)
        }
    };
    wait_for(CONVERGE, "the replicas to serve", serving).await;

    let (status, s) = put(&api, "/services/web", &body("/missing"))
        .await
        .expect("put");
    assert_eq!((status, &s["version"]), (200, &2.into()), "{s}");
    let s = wait_for(CONVERGE, "the deployment to end", || {
        let api = api.clone();
        async move {
            let (_, s) = get(&api, "/services/web").await.ok()?;
            let state = s["deployment"]["state"].as_str()?.to_string();
            (state != "running" && state != "rolling-back").then_some(s)
        }
    })
    .await;
    assert_eq!(s["deployment"]["state"], "rolled-back", "{s}");
    let message = s["deployment"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("unhealthy") && message.contains("404"),
        "the reason is given: {s}"
    );
    // The old tasks served throughout: the same two, healthy, and they answer.
    let after: BTreeSet<String> = wait_for(CONVERGE, "the old tasks alone, healthy", || {
        let api = api.clone();
        async move { all_with_health(&api, "web", 2, "healthy").await }
    })
    .await
    .iter()
    .filter_map(|t| t["id"].as_str().map(String::from))
    .collect();
    assert_eq!(before, after);
    wait_for(CONVERGE, "the old replicas to serve", serving).await;
}
