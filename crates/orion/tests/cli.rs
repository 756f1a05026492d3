//! The command-line client, run as a real binary against a real node.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Runs `orion ARGS` against `addr`; returns (success, stdout, stderr).
fn orion(addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orion"))
        .args(args)
        .env("ORION_ADDR", addr)
        .output()
        .expect("run orion");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_against_a_real_node() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let a = Agent::start(
        "cli-n1",
        "127.0.18.1".parse().expect("ip"),
        &["--label", "zone=a", "--scheduler", "binpack"],
    );
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let addr = a.api.clone();

    // run --wait: progress on stderr, the id on the last line of stdout.
    let (ok, out, err) = orion(
        &addr,
        &[
            "run",
            "-p",
            "80",
            "-m",
            "32m",
            "--cpus",
            "0.5",
            "-e",
            "GREETING=hi",
            "--name",
            "web",
            "--label",
            "app=web",
            "--constraint",
            "node.labels.zone==a",
            "--wait",
            IMAGE,
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    assert!(ok, "run failed: {out} {err}");
    let id = last_line(&out);
    assert_eq!(id.len(), 32, "{out}");
    assert!(
        err.contains("running"),
        "progress should show running: {err}"
    );
    let t = task(&addr, &id).await.expect("task");
    assert_eq!(
        (t["memory"].as_u64(), t["cpu"].as_f64()),
        (Some(32 << 20), Some(0.5))
    );
    assert_eq!(t["env"]["GREETING"], "hi");
    let page = http_page(&published(&t).expect("port"))
        .await
        .expect("page");
    assert!(page.contains("hello"));

    // ps shows it with a short id; --json is parseable.
    let (ok, out, _) = orion(&addr, &["ps"]);
    assert!(ok);
    assert!(
        out.contains(&id[..12]) && out.contains("running") && out.contains("web"),
        "{out}"
    );
    let (ok, out, _) = orion(&addr, &["ps", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ps --json");
    assert_eq!(v.as_array().map(Vec::len), Some(1));

    // inspect by a short prefix.
    let (ok, out, _) = orion(&addr, &["inspect", &id[..8]]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect json");
    assert_eq!(v["id"], id.as_str());

    // logs, from the node that runs the task.
    let (ok, out, _) = orion(
        &addr,
        &[
            "run",
            "--wait",
            IMAGE,
            "sh",
            "-c",
            "echo hello-from-logs; sleep 3600",
        ],
    );
    assert!(ok);
    let logger = last_line(&out);
    let logs = wait_for(Duration::from_secs(10), "logs", || {
        let addr = addr.clone();
        let logger = logger.clone();
        async move {
            let (ok, out, _) = orion(&addr, &["logs", &logger[..12]]);
            (ok && out.contains("hello-from-logs")).then_some(out)
        }
    })
    .await;
    assert!(logs.contains("hello-from-logs"));

    // nodes, status, drain, undrain.
    let (ok, out, _) = orion(&addr, &["nodes"]);
    assert!(
        ok && out.contains("cli-n1") && out.contains("leader") && out.contains("zone=a"),
        "{out}"
    );
    let (ok, out, _) = orion(&addr, &["status"]);
    assert!(ok && out.contains("leader:   cli-n1"), "{out}");
    let (ok, _, err) = orion(&addr, &["drain", "cli-n1"]);
    assert!(ok, "{err}");
    let (ok, out, _) = orion(&addr, &["nodes", "--json"]);
    assert!(ok && out.contains("\"draining\": true"), "{out}");
    let (ok, _, _) = orion(&addr, &["undrain", "cli-n1"]);
    assert!(ok);

    // cluster config: seeded from the bootstrapping node's flags, then changed by the CLI.
    let shown = wait_for(Duration::from_secs(10), "the seeded cluster config", || {
        let addr = addr.clone();
        async move {
            let (ok, out, _) = orion(&addr, &["cluster", "config"]);
            (ok && out.contains("binpack")).then_some(out)
        }
    })
    .await;
    assert!(shown.contains("20000-32767"), "{shown}");
    let (ok, out, err) = orion(
        &addr,
        &[
            "cluster",
            "config",
            "--voters",
            "5",
            "--restart-base-ms",
            "500",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("voters:          5"), "{out}");
    let (ok, out, _) = orion(&addr, &["cluster", "config", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("config json");
    assert_eq!(
        (
            v["strategy"].as_str(),
            v["voters"].as_u64(),
            v["restartBaseMs"].as_u64()
        ),
        (Some("binpack"), Some(5), Some(500))
    );

    // rm by prefix; then ps -a shows it stopped.
    let (ok, out, err) = orion(&addr, &["rm", &id[..10], &logger]);
    assert!(ok, "{err}");
    assert!(out.contains(&id), "{out}");
    let (_, out, _) = orion(&addr, &["ps", "-a"]);
    assert!(out.contains("stopped"), "{out}");

    // Errors are one clear line and a non-zero exit.
    for (args, want) in [
        (vec!["inspect", "doesnotexist"], "not found"),
        (vec!["run", "-p", "80/xyz", IMAGE], "portBindings"),
        (
            vec!["run", "--restart", "sometimes", IMAGE],
            "restartPolicy",
        ),
        (vec!["drain", "ghost"], "ghost"),
        (vec!["cluster", "config", "--voters", "0"], "voters"),
        (
            vec!["cluster", "config", "--dynamic-ports", "9-1"],
            "dynamicPorts",
        ),
    ] {
        let (ok, _, err) = orion(&addr, &args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (ok, _, err) = orion("http://127.0.18.99:1", &["ps"]);
    assert!(!ok && err.contains("cannot reach orion"), "{err}");
}

#[test]
fn version_prints_the_crate_version() {
    let (ok, out, err) = orion("http://127.0.18.99:1", &["version"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("orion {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let (ok, out, err) = orion("http://127.0.18.99:1", &["version", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn completion_scripts_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = orion("http://127.0.18.99:1", &["completion", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(out.contains("orion"), "{shell}: {out}");
        assert!(
            out.contains("drain"),
            "{shell} completion lacks subcommands"
        );
    }
    let (ok, _, err) = orion("http://127.0.18.99:1", &["completion", "cmd.exe"]);
    assert!(!ok);
    assert!(err.contains("cmd.exe"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_writes_json_log_lines_when_asked() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let a = Agent::start(
        "cli-json",
        "127.0.18.2".parse().expect("ip"),
        &["--log-format", "json"],
    );
    wait_healthy(&a).await;
    wait_leader(&a).await;
    let text = a.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("orion agent ready")),
        "{text}"
    );
}
