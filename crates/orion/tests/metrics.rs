//! `GET /metrics` on a real node: Prometheus text that `promtool check metrics` accepts, with
//! the key counters moving as work is done.

mod common;

use common::*;
use std::time::Duration;

async fn scrape(api: &str) -> String {
    let resp = authed(client().get(format!("{api}/metrics")), api)
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    resp.text().await.expect("text")
}

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn promtool_or_skip() -> bool {
    let ok = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but promtool is missing (scripts/test.sh installs Debian's prometheus)"
        );
        eprintln!("skipping the promtool check: promtool is not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_with_work() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let a = Agent::start("met-n1", "127.0.61.1".parse().expect("ip"), &[]);
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let before = scrape(&a.api).await;
    let applied_before = value(&before, "orion_raft_applied_entries_total").unwrap_or(0.0);

    let id = create_task(&a.api, &sleeper_body("met-web"))
        .await
        .expect("create");
    wait_task_state(&a.api, &id, "running", Duration::from_secs(30)).await;
    let after = scrape(&a.api).await;

    for name in [
        "orion_raft_term",
        "orion_raft_commit_index",
        "orion_raft_leader_changes_total",
        "orion_scheduler_pending_tasks",
        "orion_gossip_health_score",
        "orion_executor_passes_total",
        "orion_controller_turn_seconds_bucket",
        "orion_docker_call_seconds_bucket",
        "orion_api_request_seconds_bucket",
        "orion_raft_append_seconds_bucket",
        "orion_raft_append_entries_bucket",
    ] {
        assert!(after.contains(name), "{name} missing:\n{after}");
    }
    assert!(
        value(&after, "orion_raft_applied_entries_total").unwrap_or(0.0) > applied_before,
        "applied entries did not move"
    );
    assert!(
        value(
            &after,
            "orion_api_requests_total{route=\"/tasks\",method=\"POST\",status=\"201\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the POST is not counted:\n{after}"
    );
    assert!(value(&after, "orion_scheduler_placements_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        value(&after, "orion_gossip_members{state=\"alive\"}"),
        Some(1.0)
    );
    assert!(
        value(&after, "orion_executor_tasks{state=\"running\"}").unwrap_or(0.0) >= 1.0,
        "{after}"
    );
    // No task id is ever a label.
    assert!(!after.contains(&id), "a task id leaked into a label");

    if promtool_or_skip() {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(after.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
