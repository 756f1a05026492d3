//! Placement on a live cluster: labels and constraints, spread, a pending queue that explains
//! itself and drains by itself when capacity appears, node drain, and an API that keeps
//! answering while thousands of tasks wait.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn zone_cluster() -> Cluster {
    let mut agents = Vec::new();
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let n = i + 1;
        let ip = format!("127.0.16.{n}").parse().expect("ip");
        let label = format!("zone={zone}");
        let mut args = vec![
            "--label",
            &label,
            "--capacity-memory",
            "1g",
            "--capacity-cpu",
            "2",
            "--reserve-memory",
            "0",
        ];
        let join;
        if n == 1 {
            args.push("--bootstrap");
        } else {
            join = "127.0.16.1:6000".to_string();
            args.extend(["--join", &join]);
        }
        agents.push(Agent::start(&format!("sched-n{n}"), ip, &args));
    }
    Cluster {
        agents,
        prefix: "sched-n".into(),
    }
}

async fn node_of(api: &str, id: &str) -> String {
    let t = wait_task_state(api, id, "running", Duration::from_secs(30)).await;
    t["node"].as_str().expect("node").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_constraints_spread_pending_and_drain() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = zone_cluster();
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(20))
        .await;
    let api = c.agents[0].api.clone();
    // Wait until all three are recorded up, so spread sees all of them.
    let a = api.clone();
    wait_for(Duration::from_secs(20), "three nodes recorded up", || {
        let a = a.clone();
        async move {
            let (_, n) = get(&a, "/nodes").await.ok()?;
            (n.as_array()?
                .iter()
                .filter(|n| n["recorded"] == "up" && n["status"] == "alive")
                .count()
                == 3)
                .then_some(())
        }
    })
    .await;

    // Six equal tasks under spread land two per node.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            create_task(&api, &sleeper_body(&format!("spread-{i}")))
                .await
                .expect("create"),
        );
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        *per_node.entry(node_of(&api, id).await).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );

    // Constraints and selectors land only where allowed.
    let body = format!(
        r#"{{"image": "{IMAGE}", "command": ["sleep", "3600"], "memory": "16m", "constraints": ["node.labels.zone == b"]}}"#
    );
    let id = create_task(&api, &body).await.expect("create");
    assert_eq!(node_of(&api, &id).await, "sched-n2");
    let body = format!(
        r#"{{"image": "{IMAGE}", "command": ["sleep", "3600"], "memory": "16m", "nodeSelectors": {{"zone": "c"}}}}"#
    );
    let id = create_task(&api, &body).await.expect("create");
    assert_eq!(node_of(&api, &id).await, "sched-n3");
    let body = format!(
        r#"{{"image": "{IMAGE}", "command": ["sleep", "3600"], "memory": "16m", "constraints": ["node.labels.zone not in (a, b)", "node.id != sched-n3"]}}"#
    );
    let id = create_task(&api, &body).await.expect("create");
    let t = wait_for(
        Duration::from_secs(10),
        "a reason for the unplaceable task",
        || {
            let api = api.clone();
            let id = id.clone();
            async move {
                task(&api, &id).await.filter(|t| {
                    t["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("no node can place it"))
                })
            }
        },
    )
    .await;
    assert_eq!(t["state"], "pending");
    println!("reason: {}", t["reason"]);
    let _ = delete(&api, &format!("/tasks/{id}")).await;

    // A task too big for the free memory waits with a reason, and is placed by itself when a
    // task stops. Each node has 1 GiB; fill each with 700 MiB.
    let big = |n: &str| {
        format!(
            r#"{{"image": "{IMAGE}", "name": "{n}", "command": ["sleep", "3600"], "memory": "700m"}}"#
        )
    };
    let mut bigs = Vec::new();
    for i in 0..3 {
        bigs.push(
            create_task(&api, &big(&format!("big-{i}")))
                .await
                .expect("create"),
        );
    }
    for id in &bigs {
        node_of(&api, id).await;
    }
    let waiting = create_task(&api, &big("big-waiting"))
        .await
        .expect("create");
    let t = wait_for(Duration::from_secs(10), "the big task's reason", || {
        let api = api.clone();
        let id = waiting.clone();
        async move {
            task(&api, &id).await.filter(|t| {
                t["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("lack memory"))
            })
        }
    })
    .await;
    println!("reason: {}", t["reason"]);
    assert_eq!(t["state"], "pending");
    assert!(
        t["reason"]
            .as_str()
            .unwrap_or("")
            .contains("3 nodes checked"),
        "{t}"
    );
    let freed_node = node_of(&api, &bigs[0]).await;
    delete(&api, &format!("/tasks/{}", bigs[0]))
        .await
        .expect("delete");
    assert_eq!(
        node_of(&api, &waiting).await,
        freed_node,
        "the waiting task should take the freed space"
    );

    // Drain: sched-n1's tasks move elsewhere and nothing new lands there; undrain lets it back.
    let (s, v) = post(&api, "/nodes/sched-n1/drain", "")
        .await
        .expect("drain");
    assert_eq!(s, 200, "{v}");
    let a = api.clone();
    wait_for(
        Duration::from_secs(30),
        "sched-n1 to be empty after drain",
        || {
            let a = a.clone();
            async move {
                let (_, tasks) = get(&a, "/tasks?node=sched-n1").await.ok()?;
                let active = tasks
                    .as_array()?
                    .iter()
                    .filter(|t| t["state"] != "stopped" && t["allocation"].is_string())
                    .count();
                (active == 0).then_some(())
            }
        },
    )
    .await;
    let id = create_task(&api, &sleeper_body("after-drain"))
        .await
        .expect("create");
    assert_ne!(node_of(&api, &id).await, "sched-n1");
    let (s, _) = post(&api, "/nodes/sched-n1/undrain", "")
        .await
        .expect("undrain");
    assert_eq!(s, 200);
    let (_, nodes) = get(&api, "/nodes").await.expect("nodes");
    assert!(
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["draining"] == false),
        "{nodes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_while_thousands_of_tasks_wait() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let count: usize = std::env::var("ORION_PENDING_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let a = Agent::start("wait-n1", "127.0.17.1".parse().expect("ip"), &[]);
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let api = a.api.clone();
    let body = format!(r#"{{"image": "{IMAGE}", "constraints": ["node.labels.zone == nowhere"]}}"#);
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..32 {
        let api = api.clone();
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (w..count).step_by(32) {
                ids.push(create_task(&api, &body).await.expect("create"));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.expect("join"));
    }
    println!(
        "{count} unplaceable tasks created in {:?}",
        started.elapsed()
    );
    // Health, a single read and a write each answer promptly while they all wait.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        let (s, _) = get(&api, "/health").await.expect("health");
        assert_eq!(s, 200);
        let t = task(&api, &ids[i * 37 % ids.len()]).await.expect("task");
        assert_eq!(t["state"], "pending");
        worst = worst.max(t0.elapsed());
    }
    let t0 = Instant::now();
    create_task(&api, &sleeper_body("still-writable"))
        .await
        .expect("write");
    println!(
        "with {count} pending: worst health+read {worst:?}, a write {:?}",
        t0.elapsed()
    );
    assert!(worst < Duration::from_secs(2), "reads took {worst:?}");
    let (_, pending) = get(&api, "/tasks?state=pending").await.expect("list");
    assert!(pending.as_array().expect("list").len() >= count);
}
