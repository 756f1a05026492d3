//! The foundation end to end: one real agent process, a real Raft log on disk, the real
//! Docker engine. The seed's flow: post a task that serves HTTP on a published port, fetch the
//! page, see failures reported with exit codes and reasons, restart the agent and find
//! everything as it was, with no duplicate container.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const IP: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_on_one_node_survives_a_restart() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let mut agent = Agent::start("single-n1", IP, &["--bootstrap"]);
    let started = Instant::now();
    wait_healthy(&agent).await;
    println!("agent answered /health {:?} after spawn", started.elapsed());
    assert_eq!(wait_leader(&agent).await, "single-n1");
    let api = agent.api.clone();

    // A web server on a dynamic host port.
    let (status, web) = post(
        &api,
        "/tasks",
        &format!(r#"{{"image": "{IMAGE}", "memory": 100000000, "command": ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"], "portBindings": {{"80/tcp": "0"}}}}"#),
    )
    .await
    .expect("post");
    assert_eq!(status, 201, "{web}");
    let web_id = web["id"].as_str().expect("id").to_string();
    let t0 = Instant::now();
    let running = wait_task_state(&api, &web_id, "running", Duration::from_secs(30)).await;
    println!("POST to running: {:?}", t0.elapsed());
    let port = running["ports"][0]["hostPort"]
        .as_u64()
        .expect("host port reported");
    assert_eq!(running["ports"][0]["hostIp"], IP.to_string());
    assert_eq!(running["node"], "single-n1");
    let page = wait_for(
        Duration::from_secs(10),
        "the published port to serve the page",
        || async move { http_page(&format!("{IP}:{port}")).await },
    )
    .await;
    assert!(page.contains("hello from orion"), "{page}");

    // A command that exits 3 under `never` ends failed with its exit code.
    let (_, exits) = post(
        &api,
        "/tasks",
        &format!(
            r#"{{"image": "{IMAGE}", "command": ["sh", "-c", "exit 3"], "restartPolicy": "never"}}"#
        ),
    )
    .await
    .expect("post");
    let exits_id = exits["id"].as_str().expect("id").to_string();
    let failed = wait_task_state(&api, &exits_id, "failed", Duration::from_secs(30)).await;
    assert_eq!(failed["exitCode"], 3, "{failed}");

    // An image absent locally, with no registry: failed with a reason a human understands.
    let (_, nginx) = post(
        &api,
        "/tasks",
        r#"{"image": "nginx", "memory": 100000000, "portBindings": {"80/tcp": "8080"}}"#,
    )
    .await
    .expect("post");
    let nginx_id = nginx["id"].as_str().expect("id").to_string();
    let t0 = Instant::now();
    let failed = wait_task_state(&api, &nginx_id, "failed", Duration::from_secs(30)).await;
    println!("absent image failed after {:?}", t0.elapsed());
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("image \"nginx\" is not present on single-n1 and could not be pulled"),
        "{reason}"
    );

    // Restart on the same data dir with the same command line.
    let web_container = running["containerId"]
        .as_str()
        .expect("container id")
        .to_string();
    agent.restart();
    wait_healthy(&agent).await;
    wait_leader(&agent).await;
    let (_, list) = get(&api, "/tasks").await.expect("list");
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    for id in [&web_id, &exits_id, &nginx_id] {
        assert!(
            ids.contains(&id.as_str()),
            "task {id} lost across restart: {list}"
        );
    }
    let again = wait_task_state(&api, &web_id, "running", Duration::from_secs(30)).await;
    assert_eq!(
        again["containerId"],
        web_container.as_str(),
        "the running container was replaced, not resumed"
    );
    // Give the executor a few passes, then count: exactly one container per task.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let web_containers = containers_of_task(&docker, &web_id).await;
    assert_eq!(
        web_containers.len(),
        1,
        "duplicate containers: {web_containers:?}"
    );
    assert_eq!(containers_of_task(&docker, &exits_id).await.len(), 1);
    assert_eq!(
        http_page(&format!("{IP}:{port}"))
            .await
            .map(|p| p.contains("hello")),
        Some(true)
    );

    // DELETE stops and removes the container.
    let (status, deleted) = delete(&api, &format!("/tasks/{web_id}"))
        .await
        .expect("delete");
    assert_eq!(status, 200);
    assert_eq!(deleted["state"], "stopped");
    let d = docker.clone();
    let id = web_id.clone();
    wait_for(
        Duration::from_secs(20),
        "the deleted task's container to be removed",
        || {
            let d = d.clone();
            let id = id.clone();
            async move { containers_of_task(&d, &id).await.is_empty().then_some(()) }
        },
    )
    .await;
    let (_, t) = get(&api, &format!("/tasks/{web_id}")).await.expect("get");
    assert_eq!(t["state"], "stopped");

    // Graceful stop exits cleanly.
    let status = agent.terminate().expect("exit status");
    assert!(status.success(), "agent exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_real_http_writes_nothing() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let agent = Agent::start("single-n2", Ipv4Addr::new(127, 0, 2, 2), &[]);
    wait_healthy(&agent).await;
    wait_leader(&agent).await;
    let api = agent.api.clone();
    // Let the controller record the node first, so the log is quiet while we measure it.
    let a = api.clone();
    wait_for(
        Duration::from_secs(20),
        "the node to be recorded up",
        || {
            let a = a.clone();
            async move {
                get(&a, "/nodes")
                    .await
                    .ok()
                    .filter(|(_, n)| n[0]["recorded"] == "up")
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, before) = get(&api, "/status").await.expect("status");
    for (body, field) in [
        ("{", "JSON"),
        (r#"{"memory": 5}"#, "image"),
        (r#"{"image": "x", "memory": -100}"#, "memory"),
        (
            r#"{"image": "x", "portBindings": {"80/xyz": "8080"}}"#,
            "portBindings",
        ),
        (
            r#"{"image": "x", "portBindings": {"80/tcp": "99999"}}"#,
            "portBindings",
        ),
        (
            r#"{"image": "x", "restartPolicy": "maybe"}"#,
            "restartPolicy",
        ),
    ] {
        let (status, err) = post(&api, "/tasks", body).await.expect("post");
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap_or_default().contains(field),
            "{body}: {err}"
        );
    }
    let (status, err) = get(&api, "/tasks/doesnotexist").await.expect("get");
    assert_eq!((status, err["error"].is_string()), (404, true));
    let (status, err) = get(&api, "/no/such/route").await.expect("get");
    assert_eq!((status, err["error"].is_string()), (404, true));
    let (_, list) = get(&api, "/tasks").await.expect("list");
    assert_eq!(list.as_array().map(Vec::len), Some(0));
    let (_, after) = get(&api, "/status").await.expect("status");
    assert_eq!(
        before["commitIndex"], after["commitIndex"],
        "a refused request wrote to the log"
    );
}
