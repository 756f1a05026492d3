//! A node that comes back under create load: its stale containers are fenced while the new
//! allocations placed on it start at once (the serial-executor bug). Its own test binary, so
//! its burst of containers does not load the timing of the kill test in healing.rs.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Regression for the serial executor: a node killed (`kill -9`, containers left running)
/// under create load and restarted 2.5 s later removed its stale containers one by one and
/// started none of the allocations placed on it meanwhile; every acknowledged task ran only
/// 34 s later. Now fencing and starts run concurrently: every acknowledged task must run
/// within an absurd bound of the restart (30 s; the goal, printed, is 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_executor_returning_node_starts_new_tasks_promptly() {
    const INITIAL_TASKS: usize = 30;
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start("serial-n", 37, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(20))
        .await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let apis: Vec<String> = c.agents.iter().map(|a| a.api.clone()).collect();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for i in 0..INITIAL_TASKS {
        let id = create_task(&apis[i % apis.len()], &sleeper_body(&format!("s{i}")))
            .await
            .expect("create");
        acked.lock().unwrap().push(id);
    }
    let all_running = |api: String, ids: Vec<String>| async move {
        let (_, tasks) = get(&api, "/tasks").await.ok()?;
        let running: std::collections::BTreeSet<&str> = tasks
            .as_array()?
            .iter()
            .filter(|t| t["state"] == "running")
            .filter_map(|t| t["id"].as_str())
            .collect();
        ids.iter()
            .all(|id| running.contains(id.as_str()))
            .then_some(())
    };
    let ids = acked.lock().unwrap().clone();
    let leader_api = c.by_id(&leader).api.clone();
    wait_for(Duration::from_secs(120), "the initial tasks to run", || {
        all_running(leader_api.clone(), ids.clone())
    })
    .await;
    let victim = c
        .agents
        .iter()
        .find(|a| a.id != leader)
        .expect("a worker")
        .id
        .clone();

    // Clients create tasks through every node from now until a second after the restart.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (n, api) in apis.iter().enumerate() {
        let (api, acked, stop) = (api.clone(), acked.clone(), stop_load.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(id) = create_task(&api, &sleeper_body(&format!("l{n}-{i}"))).await {
                    acked.lock().unwrap().push(id);
                }
                i += 1;
                // About two creates a second per client: steady load, not an engine benchmark.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.by_id_mut(&victim).kill();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    c.by_id_mut(&victim).restart();
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        let _ = l.await;
    }
    let ids = acked.lock().unwrap().clone();
    // Every acknowledged task running, and, apart, those placed on the returning node (the
    // bug proper: they used to wait behind its serial fencing).
    let mut victims_running: Option<Duration> = None;
    let took = loop {
        if let Ok((_, tasks)) = get(&leader_api, "/tasks").await
            && let Some(tasks) = tasks.as_array()
        {
            let acked: &[String] = &ids;
            let of_ours = |t: &&Value| {
                t["id"]
                    .as_str()
                    .is_some_and(|id| acked.iter().any(|a| a == id))
            };
            let not_running = |t: &&Value| t["state"] != "running";
            let waiting: Vec<&Value> = tasks.iter().filter(of_ours).filter(not_running).collect();
            if victims_running.is_none() && !waiting.iter().any(|t| t["node"] == victim.as_str()) {
                victims_running = Some(restarted.elapsed());
            }
            if waiting.is_empty() && tasks.iter().filter(of_ours).count() == ids.len() {
                break restarted.elapsed();
            }
        }
        // An absurd bound (the goal is 5 s; the bug took 34 s). The engine's own throughput
        // on a shared 2-core host, not the executor, is most of what remains.
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "not every acknowledged task runs within 30 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "serial executor: {} acknowledged tasks all running {took:?} after {victim} restarted, \
         those placed on {victim} after {:?} (goal 5 s)",
        ids.len(),
        victims_running.unwrap_or(took)
    );
}
