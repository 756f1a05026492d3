//! `orion deploy` of compose files on a live 3-node cluster with the real Docker engine: a
//! shop (web + API + database + cache + a one-shot migration + a global agent) with
//! healthchecks, `depends_on` conditions, a named volume and a secret. The start order follows
//! the conditions (checked in the Raft-ordered event history, not by timing), a redeploy
//! changes nothing, a change to one service rolls only that one, and `orion stack rm` removes
//! everything. Each service is found by name from another's container (discovery's DNS), its
//! VIP answers through the mesh, and the published port answers on every node.
//! Unsupported keys fail `--dry-run` naming key, service and line.
//!
//! Loopback networks: 127.0.110.0/24 to 127.0.114.0/24.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Long enough for a few controller turns, placements, container starts and health checks
/// on a loaded machine; a healthy run takes seconds.
const CONVERGE: Duration = Duration::from_secs(90);

const PROJECT: &str = "compose-e2e";

/// In the style of the classic compose examples (voting app, wordpress): a database with a
/// volume and a password secret, a cache, a migration that must finish first, an API that
/// waits for all three, a web front that waits for a healthy API, and a global agent.
const SHOP: &str = r#"
name: compose-e2e
x-http: &http
  image: orion/busybox:latest
  command: httpd -f -p 80 -h /www
  expose: ["80"]
  stop_grace_period: 1s
services:
  migrate:
    image: orion/busybox:latest
    command: ["sh", "-c", "sleep 1; exit 0"]
    restart: "no"
  db:
    <<: *http
    volumes:
      - dbdata:/data
    secrets:
      - db_password
    environment:
      POSTGRES_PASSWORD_FILE: /run/secrets/db_password
    healthcheck:
      test: ["CMD-SHELL", "test -s /run/secrets/db_password && wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 1s
      retries: 3
  cache:
    <<: *http
    expose: ["80"]
  api:
    <<: *http
    deploy:
      replicas: 2
      resources:
        limits: {memory: 32M}
    depends_on:
      db: {condition: service_healthy}
      cache: {condition: service_started}
      migrate: {condition: service_completed_successfully}
    healthcheck:
      test: wget -q -O /dev/null http://127.0.0.1/
      interval: 1s
      retries: 3
  web:
    <<: *http
    environment:
      - API_URL=http://api
      - GREETING=${GREETING:-hello}
    depends_on:
      api:
        condition: service_healthy
    ports:
      - "18110:80"
  agent:
    image: orion/busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy:
      mode: global
volumes:
  dbdata:
secrets:
  db_password:
    file: ./db_password.txt
"#;

/// Runs `orion` in `dir` against `api`.
async fn orion_in(dir: &Path, api: &str, args: &[&str]) -> std::process::Output {
    let api = api.to_string();
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_orion"))
            .args(&args)
            .current_dir(dir)
            .env("ORION_ADDR", api)
            .env_remove("GREETING")
            .output()
            .expect("run orion")
    })
    .await
    .expect("join")
}

/// Runs `cmd` in container `id`; its output, stdout and stderr together.
fn docker_exec(id: &str, cmd: &[&str]) -> String {
    let out = std::process::Command::new("timeout")
        .args(["10", "docker", "exec", id])
        .args(cmd)
        .output()
        .expect("docker exec");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Each service of the stack and its version.
async fn versions(api: &str) -> BTreeMap<String, u64> {
    let (_, list) = get(api, &format!("/services?stack={PROJECT}"))
        .await
        .expect("services");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["version"].as_u64()?)))
        .collect()
}

/// The whole event history (tasks and services), in Raft order.
async fn history(api: &str) -> Vec<Value> {
    let resp = authed(
        client().get(format!(
            "{api}/events?follow=false&index=0&topic=task,service"
        )),
        api,
    )
    .send()
    .await
    .expect("events");
    let body = resp.text().await.expect("body");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Index of the first event matching `f`.
fn first(events: &[Value], what: &str, f: impl Fn(&Value) -> bool) -> u64 {
    events
        .iter()
        .find(|e| f(e))
        .and_then(|e| e["index"].as_u64())
        .unwrap_or_else(|| panic!("no event: {what}"))
}

/// Whether a task event is about a task of service `svc` of the stack.
fn of(e: &Value, svc: &str) -> bool {
    e["topic"] == "task"
        && e["payload"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{svc}.{PROJECT}.")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_stack_deploys_in_order_redeploys_idempotently_updates_one_and_is_removed() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = Cluster::start("cmp", 110, 3, &["--vip-range", "10.210.0.0/24"]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, CONVERGE).await;
    let api = c.agents[0].api.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("compose.yaml"), SHOP).expect("write");
    std::fs::write(dir.path().join("db_password.txt"), "s3cret\n").expect("write");
    std::fs::write(dir.path().join(".env"), "GREETING=from-dotenv\n").expect("write");

    // The dry run plans and creates nothing.
    let dry = orion_in(dir.path(), &api, &["deploy", "--dry-run"]).await;
    assert!(dry.status.success(), "{}", text(&dry));
    let planned: Value = serde_json::from_slice(&dry.stdout).expect("dry run JSON");
    assert_eq!(planned["stack"], PROJECT);
    assert_eq!(
        planned["order"],
        serde_json::json!(["migrate", "db", "cache", "api", "web", "agent"])
    );
    assert!(versions(&api).await.is_empty(), "a dry run deploys nothing");

    let out = orion_in(dir.path(), &api, &["deploy"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let first_versions = versions(&api).await;
    assert_eq!(first_versions.len(), 6, "{first_versions:?}");

    // Start order: each dependent was created only after its condition held.
    let events = history(&api).await;
    let created = |svc: &str| {
        first(&events, &format!("{svc} created"), |e| {
            e["topic"] == "service"
                && e["type"] == "created"
                && e["key"] == format!("{svc}.{PROJECT}")
        })
    };
    let running = |svc: &str| {
        first(&events, &format!("a task of {svc} running"), |e| {
            of(e, svc) && e["type"] == "running"
        })
    };
    let healthy = |svc: &str| {
        first(&events, &format!("a task of {svc} healthy"), |e| {
            of(e, svc) && e["type"] == "healthy"
        })
    };
    let completed = |svc: &str| {
        first(&events, &format!("a task of {svc} exited 0"), |e| {
            of(e, svc) && e["type"] == "exited" && e["payload"]["exitCode"] == 0
        })
    };
    let api_created = created("api");
    assert!(api_created > healthy("db"), "api waits for a healthy db");
    assert!(
        api_created > running("cache"),
        "api waits for cache to start"
    );
    assert!(
        api_created > completed("migrate"),
        "api waits for migrate to finish"
    );
    assert!(
        created("web") > healthy("api"),
        "web waits for a healthy api"
    );

    // The web service sees the .env value, the db its secret and its volume.
    let (_, web) = get(&api, &format!("/services/web.{PROJECT}"))
        .await
        .expect("web");
    assert_eq!(web["env"]["GREETING"], "from-dotenv");
    let (_, db) = get(&api, &format!("/services/db.{PROJECT}"))
        .await
        .expect("db");
    assert_eq!(db["files"][0]["target"], "/run/secrets/db_password");
    assert!(
        db["files"][0].get("content").is_none(),
        "a secret is never shown"
    );
    assert_eq!(db["mounts"][0]["source"], format!("{PROJECT}_dbdata"));
    let db_tasks = wait_for(CONVERGE, "a running db task", || {
        let api = api.clone();
        async move {
            let (_, t) = get(&api, &format!("/services/db.{PROJECT}/tasks"))
                .await
                .ok()?;
            t.as_array()?
                .iter()
                .find(|t| t["state"] == "running")
                .and_then(|t| t["containerId"].as_str().map(String::from))
        }
    })
    .await;
    let secret = std::process::Command::new("docker")
        .args(["exec", &db_tasks, "cat", "/run/secrets/db_password"])
        .output()
        .expect("docker exec");
    assert_eq!(String::from_utf8_lossy(&secret.stdout), "s3cret\n");
    let mounts = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Name}}:{{.Destination}}{{end}}",
            &db_tasks,
        ])
        .output()
        .expect("docker inspect");
    assert_eq!(
        String::from_utf8_lossy(&mounts.stdout).trim(),
        format!("{PROJECT}_dbdata:/data")
    );

    // By name: from web's container, each other service of the stack by its short name (its
    // VIP, which the mesh forwards to a healthy task on any node) and its tasks by
    // `tasks.NAME.STACK.orion` (their nodes' addresses).
    let web_cid = wait_for(CONVERGE, "a running web task", || {
        let api = api.clone();
        async move {
            let (_, t) = get(&api, &format!("/services/web.{PROJECT}/tasks"))
                .await
                .ok()?;
            t.as_array()?
                .iter()
                .find(|t| t["state"] == "running")
                .and_then(|t| t["containerId"].as_str().map(String::from))
        }
    })
    .await;
    for svc in ["db", "cache", "api"] {
        let (_, s) = get(&api, &format!("/services/{svc}.{PROJECT}"))
            .await
            .expect("service");
        let vip = s["vip"].as_str().expect("a VIP").to_string();
        let out = docker_exec(&web_cid, &["nslookup", svc]);
        assert!(
            out.contains(&format!("{svc}.{PROJECT}.orion")) && out.contains(&vip),
            "nslookup {svc} from web: {out}"
        );
        let addresses: Vec<String> = wait_for(CONVERGE, "healthy endpoints", || {
            let api = api.clone();
            async move {
                let (_, s) = get(&api, &format!("/services/{svc}.{PROJECT}"))
                    .await
                    .ok()?;
                let a: Vec<String> = s["endpoints"]
                    .as_array()?
                    .iter()
                    .filter(|e| e["healthy"] == true)
                    .filter_map(|e| e["address"].as_str().map(String::from))
                    .collect();
                (!a.is_empty()).then_some(a)
            }
        })
        .await;
        let out = docker_exec(
            &web_cid,
            &["nslookup", &format!("tasks.{svc}.{PROJECT}.orion")],
        );
        assert!(
            addresses.iter().all(|a| out.contains(a.as_str())),
            "tasks.{svc} from web: {out} (endpoints {addresses:?})"
        );
        // By its short name from inside web's container: the name is the VIP, which the
        // mesh on web's node answers and forwards to a healthy task on any node.
        wait_for(
            CONVERGE,
            &format!("{svc} to answer web by its short name"),
            || {
                let out = docker_exec(
                    &web_cid,
                    &["busybox", "wget", "-qO-", &format!("http://{svc}/")],
                );
                async move { out.contains("hello from orion").then_some(out) }
            },
        )
        .await;
    }
    // web's published port answers on every node (ingress through the mesh).
    for a in &c.agents {
        let addr = format!("{}:18110", a.ip);
        wait_for(CONVERGE, &format!("the web page on {addr}"), || {
            let addr = addr.clone();
            async move {
                http_page(&addr)
                    .await
                    .filter(|p| p.contains("hello from orion"))
            }
        })
        .await;
    }

    // A redeploy of the same files changes nothing.
    let again = orion_in(dir.path(), &api, &["deploy"]).await;
    assert!(again.status.success(), "{}", text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(stdout.matches(": unchanged").count(), 6, "{stdout}");
    assert_eq!(versions(&api).await, first_versions);

    // A change to one service rolls that one only.
    std::fs::write(
        dir.path().join("compose.yaml"),
        SHOP.replace("- API_URL=http://api", "- API_URL=http://api:80"),
    )
    .expect("write");
    let changed = orion_in(dir.path(), &api, &["deploy"]).await;
    assert!(changed.status.success(), "{}", text(&changed));
    let after = versions(&api).await;
    for (svc, v) in &first_versions {
        if svc == "web" {
            assert!(after[svc] > *v, "web rolled: {after:?}");
        } else {
            assert_eq!(after[svc], *v, "{svc} untouched: {after:?}");
        }
    }

    // The stack commands.
    let ls = orion_in(dir.path(), &api, &["stack", "ls"]).await;
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(PROJECT),
        "{}",
        text(&ls)
    );
    let ps = orion_in(dir.path(), &api, &["stack", "ps", PROJECT, "--json"]).await;
    let tasks: Value = serde_json::from_slice(&ps.stdout).expect("ps JSON");
    assert!(
        tasks.as_array().is_some_and(|t| t.len() >= 7),
        "2 api + 1 of each other + 3 agents: {tasks}"
    );
    let rm = orion_in(dir.path(), &api, &["stack", "rm", PROJECT]).await;
    assert!(rm.status.success(), "{}", text(&rm));
    wait_for(CONVERGE, "the stack's services gone", || {
        let api = api.clone();
        async move { versions(&api).await.is_empty().then_some(()) }
    })
    .await;
    let gone = orion_in(dir.path(), &api, &["stack", "ps", PROJECT]).await;
    assert!(!gone.status.success(), "{}", text(&gone));
    drop(c);
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", &format!("{PROJECT}_dbdata")])
        .output();
}

/// Each unsupported key fails the dry run (and so the deploy) naming file, line, service and
/// key; the table of every key is the unit tests' (orion-compose).
#[tokio::test]
async fn unsupported_keys_fail_the_deploy_naming_key_service_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str)] = &[
        (
            "    privileged: true\n",
            "compose.yaml:5: service \"app\": privileged:",
        ),
        (
            "    mem_limit: 1g\n",
            "compose.yaml:5: service \"app\": mem_limit: is not supported by Orion: use deploy.resources.limits.memory",
        ),
        (
            "    volumes: [\"./data:/data\"]\n",
            "compose.yaml:5: service \"app\": volumes:",
        ),
        (
            "    container_name: one\n    deploy: {replicas: 2}\n",
            "compose.yaml:5: service \"app\": container_name:",
        ),
    ];
    for (extra, want) in cases {
        let file = format!(
            "services:\n  app:\n    image: orion/busybox:latest\n    command: [\"true\"]\n{extra}"
        );
        std::fs::write(dir.path().join("compose.yaml"), file).expect("write");
        let out = orion_in(dir.path(), "http://127.0.0.1:1", &["deploy", "--dry-run"]).await;
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra}: {err}");
    }
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  app:\n    build: .\n",
    )
    .expect("write");
    let out = orion_in(dir.path(), "http://127.0.0.1:1", &["deploy", "--dry-run"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("service \"app\": build:"),
        "{}",
        text(&out)
    );
}

/// A named volume pins its service: both replicas run on the node chosen at the first
/// placement, `inspect` shows it, and when that node dies the tasks wait (`lost`, not placed
/// again) with the scheduler's reason instead of starting elsewhere without their data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_volume_pins_its_service_and_its_tasks_wait_when_the_node_dies() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start("cmpv", 111, 3, &["--vip-range", "10.211.0.0/24"]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, CONVERGE).await;
    let api = c.agents[0].api.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  store:\n    image: orion/busybox:latest\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    volumes: [\"data:/data\"]\n    deploy: {replicas: 2}\nvolumes:\n  data:\n",
    )
    .expect("write");
    let out = orion_in(dir.path(), &api, &["deploy", "-p", "pinned"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let nodes = wait_for(CONVERGE, "both replicas running", || {
        let api = api.clone();
        async move {
            let (_, t) = get(&api, "/services/store.pinned/tasks").await.ok()?;
            let nodes: Vec<String> = t
                .as_array()?
                .iter()
                .filter(|t| t["state"] == "running")
                .filter_map(|t| t["node"].as_str().map(String::from))
                .collect();
            (nodes.len() == 2).then_some(nodes)
        }
    })
    .await;
    assert_eq!(nodes[0], nodes[1], "both on the volume's node");
    let (_, svc) = get(&api, "/services/store.pinned").await.expect("inspect");
    assert_eq!(svc["volumeNode"], nodes[0].as_str());
    // The holder dies (not the first agent, whose API the test reads).
    let holder = nodes[0].clone();
    let reader = c
        .agents
        .iter()
        .find(|a| a.id != holder)
        .map(|a| a.api.clone())
        .expect("another node");
    c.by_id_mut(&holder).kill();
    let reason = wait_for(CONVERGE, "the tasks pending with a reason", || {
        let reader = reader.clone();
        async move {
            let (_, t) = get(&reader, "/services/store.pinned/tasks").await.ok()?;
            let live: Vec<&Value> = t
                .as_array()?
                .iter()
                .filter(|t| t["state"] != "stopped")
                .collect();
            let waiting = live.len() == 2
                && live.iter().all(|t| {
                    // `lost`: its node died and it waits to be placed again.
                    (t["state"] == "pending" || t["state"] == "lost")
                        && t["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("no node can place"))
                });
            waiting.then(|| live[0]["reason"].as_str().unwrap_or("").to_string())
        }
    })
    .await;
    assert!(
        reason.contains(&holder),
        "the reason names the node: {reason}"
    );
    drop(c);
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", "pinned_data"])
        .output();
}
