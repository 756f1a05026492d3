//! `GET /events` and `orion events` against a real node: a task's whole life appears in Raft
//! order, a resumed stream sees no gap and no duplicate, the live stream delivers new events,
//! and an index from before the node's kept history answers 410.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// The events of `/events?QUERY` (not followed), as JSON values.
async fn events(api: &str, query: &str) -> (u16, Vec<Value>) {
    let resp = authed(
        client().get(format!("{api}/events?follow=false&{query}")),
        api,
    )
    .send()
    .await
    .expect("events");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    if status != 200 {
        return (
            status,
            vec![serde_json::from_str(&text).expect("json error")],
        );
    }
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (status, lines)
}

fn types_of(events: &[Value], key: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["key"] == key)
        .map(|e| e["type"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_life_streams_in_order_and_resumes_without_gap_or_duplicate() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut a = Agent::start("ev-n1", "127.0.60.1".parse().expect("ip"), &[]);
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let api = a.api.clone();

    // A live follower started before anything happens.
    let live = tokio::spawn({
        let api = api.clone();
        async move {
            let resp = authed(client().get(format!("{api}/events?topic=task")), &api)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("stream");
            assert_eq!(
                resp.headers()["content-type"],
                "application/x-ndjson",
                "content type"
            );
            let mut stream = resp.bytes_stream();
            let mut text = String::new();
            use futures_util::StreamExt;
            while let Some(chunk) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
                if text.contains("\"stopped\"") {
                    return text;
                }
            }
            text
        }
    });

    let id = create_task(&api, &sleeper_body("ev-web"))
        .await
        .expect("create");
    wait_task_state(&api, &id, "running", Duration::from_secs(30)).await;
    let (status, _) = delete(&api, &format!("/tasks/{id}")).await.expect("delete");
    assert_eq!(status, 200);
    wait_task_state(&api, &id, "stopped", Duration::from_secs(10)).await;

    let (status, all) = events(&api, "").await;
    assert_eq!(status, 200);
    let indexes: Vec<u64> = all
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "indexes grow: {indexes:?}"
    );
    for e in &all {
        for field in ["index", "at", "topic", "type", "key", "payload"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    let life = types_of(&all, &id);
    let expected = ["created", "placed", "starting", "running", "stopped"];
    let mut at = 0;
    for want in expected {
        let pos = life[at..]
            .iter()
            .position(|t| t == want)
            .unwrap_or_else(|| panic!("{want} missing or out of order in {life:?}"));
        at += pos + 1;
    }
    assert!(
        all.iter()
            .any(|e| e["topic"] == "node" && e["type"] == "joined" && e["key"] == "ev-n1"),
        "the node's join is an event"
    );
    assert!(
        all.iter()
            .any(|e| e["topic"] == "node" && e["type"] == "leader"),
        "the leader's election is an event"
    );

    // Resume: read 3, then from the last index + 1: together exactly the whole.
    let (_, first) = events(&api, "limit=3").await;
    assert_eq!(first.len(), 3);
    let last = first[2]["index"].as_u64().expect("index");
    let (_, rest) = events(&api, &format!("index={}", last + 1)).await;
    let joined: Vec<Value> = first.into_iter().chain(rest).collect();
    assert_eq!(joined, all, "resumed stream differs from the whole");

    // Topics filter; a bad topic is a 400 naming the field.
    let (_, nodes) = events(&api, "topic=node").await;
    assert!(!nodes.is_empty() && nodes.iter().all(|e| e["topic"] == "node"));
    let (status, err) = events(&api, "topic=weather").await;
    assert_eq!(status, 400);
    assert!(
        err[0]["error"].as_str().unwrap_or("").contains("topic"),
        "{err:?}"
    );

    // The live follower saw the same task events as they happened.
    let streamed = tokio::time::timeout(Duration::from_secs(30), live)
        .await
        .expect("live stream in time")
        .expect("live task");
    let streamed: Vec<Value> = streamed
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(streamed.iter().all(|e| e["topic"] == "task"));
    assert_eq!(types_of(&streamed, &id), life);

    // SSE when asked for.
    let resp = authed(
        client().get(format!("{api}/events?follow=false&limit=1")),
        &api,
    )
    .header("accept", "text/event-stream")
    .send()
    .await
    .expect("sse");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("text");
    assert!(
        text.starts_with("id: ") && text.contains("\ndata: {"),
        "{text}"
    );

    // The CLI prints them too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orion"))
        .args(["events", "--topic", "task"])
        .env("ORION_ADDR", &api)
        .output()
        .expect("orion events");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&id) && text.contains("running") && text.contains("stopped"),
        "{text}"
    );

    // After a restart the node holds only what it applied since: an older index is gone.
    a.terminate();
    a.restart();
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let (status, body) = events(&api, "index=1").await;
    assert_eq!(status, 410, "{body:?}");
    let oldest = body[0]["oldest"].as_u64().expect("oldest");
    assert!(oldest > last, "{body:?}");
    let (status, _) = events(&api, &format!("index={oldest}")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_life_and_its_rollout_stream_in_order() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let a = Agent::start("ev-s1", "127.0.60.2".parse().expect("ip"), &[]);
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let api = a.api.clone();
    let body = |env: &str| {
        format!(
            r#"{{"name": "evweb", "image": "{IMAGE}", "command": ["sleep", "3600"], "memory": "16m",
                "stopGracePeriod": "1s", "env": {{"V": "{env}"}}, "update": {{"monitor": "500ms"}}}}"#
        )
    };
    let (status, _) = post(&api, "/services", &body("1")).await.expect("create");
    assert_eq!(status, 201);
    let (status, _) = post(&api, "/services/evweb/scale", r#"{"replicas": 2}"#)
        .await
        .expect("scale");
    assert_eq!(status, 200);
    let resp = authed(client().put(format!("{api}/services/evweb")), &api)
        .header("content-type", "application/json")
        .body(body("2"))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    wait_for(Duration::from_secs(60), "the rollout to complete", || {
        let api = api.clone();
        async move {
            let (_, s) = get(&api, "/services/evweb").await.ok()?;
            (s["deployment"]["state"] == "completed").then_some(())
        }
    })
    .await;
    let (status, _) = delete(&api, "/services/evweb").await.expect("delete");
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(30), "the service to go", || {
        let api = api.clone();
        async move {
            let (status, _) = get(&api, "/services/evweb").await.ok()?;
            (status == 404).then_some(())
        }
    })
    .await;

    let (_, all) = events(&api, "topic=service,deployment").await;
    let seen: Vec<String> = all
        .iter()
        .filter(|e| e["key"] == "evweb")
        .map(|e| {
            format!(
                "{} {}",
                e["topic"].as_str().unwrap_or(""),
                e["type"].as_str().unwrap_or("")
            )
        })
        .collect();
    let expected = [
        "service created",
        "service scaled",
        "service updated",
        "deployment started",
        "deployment completed",
        "service deleted",
    ];
    let mut at = 0;
    for want in expected {
        let pos = seen[at..]
            .iter()
            .position(|t| t == want)
            .unwrap_or_else(|| panic!("{want} missing or out of order in {seen:?}"));
        at += pos + 1;
    }
    // Its tasks' lives are there too, under the task topic.
    let (_, tasks) = events(&api, "topic=task").await;
    assert!(
        tasks.iter().any(|e| e["type"] == "running"
            && e["payload"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("evweb"))),
        "no running event of the service's tasks"
    );
}
