//! The README run exactly as a new user types it, in two steps that share the well-known ports
//! and so run one after the other: the first command of "## Set-up" (`cargo run --release`, a
//! node on the default ports until `/health` answers), and the ```sh block under
//! "## Quick start", executed line by line with bash from the repository root.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Both steps listen on 8000/6000/7000 (and the quick start on 8080): one step at a time.
static WELL_KNOWN_PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the first command may take to answer `/health`: it includes a release build of
/// the agent on a fresh checkout, many minutes on a busy 2-core machine. An absurd bound, not
/// a timing target.
const FIRST_COMMAND_HEALTH_WITHIN: Duration = Duration::from_secs(40 * 60);

/// A SIGTERM'd agent leaves gossip and Raft within a few seconds.
const STOP_WITHIN: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// False (and a note) when another process holds one of the well-known ports; under CI=true
/// that is a failure.
fn well_known_ports_free(step: &str) -> bool {
    let busy: Vec<u16> = [8000u16, 7000, 8080]
        .into_iter()
        .filter(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_err())
        .chain(
            [6000u16]
                .into_iter()
                .filter(|p| std::net::UdpSocket::bind(("0.0.0.0", *p)).is_err()),
        )
        .collect();
    if busy.is_empty() {
        return true;
    }
    let msg = format!("ports {busy:?} are in use by another process");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("skipping {step}: {msg}");
    false
}

/// The first fenced block after `heading` in the README.
fn first_block_after(readme: &str, heading: &str) -> String {
    readme
        .split(heading)
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .map(|b| b.trim_start_matches("sh").trim().to_string())
        .unwrap_or_else(|| panic!("a fenced block under {heading:?}"))
}

/// Regression (issue 10): in a fresh clone the README's first command, `cargo run --release`,
/// failed with "could not determine which binary to run" once orion-bench added a second
/// binary. Run it as typed, in the background, from a fresh directory inside the workspace (so
/// its default data dir `./data-<host>` is fresh), until `/health` answers on the default
/// port 8000; then stop it by pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_first_command_starts_a_node() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let _ports = WELL_KNOWN_PORTS.lock().await;
    if !well_known_ports_free("the README's first command") {
        return;
    }
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let first = first_block_after(&readme, "## Set-up");
    assert_eq!(
        first, "cargo run --release",
        "the README's first command changed; update this test"
    );
    let dir = root.join("target/readme-first-command");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fresh dir");
    let log = dir.join("output.log");
    let out = std::fs::File::create(&log).expect("log file");
    // `exec`: the pid is the command's own (and cargo runs the agent with exec on Unix too).
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("exec {first}"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("bash");
    let started = Instant::now();
    let healthy = loop {
        if let Ok((200, _)) = get("http://127.0.0.1:8000", "/health").await {
            break true;
        }
        if child.try_wait().expect("try_wait").is_some()
            || started.elapsed() > FIRST_COMMAND_HEALTH_WITHIN
        {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = started.elapsed();
    // The gossip seed is drawn at start, logged, and shown in /status (issue 10, seams).
    let status = get("http://127.0.0.1:8000", "/status").await;
    let stopped = stop(&mut child);
    // The node's id is the host's name.
    if let Some(id) = status.as_ref().ok().and_then(|(_, v)| v["id"].as_str()) {
        remove_node_leftovers(id);
    }
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        healthy,
        "`{first}` did not answer /health on port 8000:\n{output}"
    );
    let seed = status
        .ok()
        .and_then(|(_, v)| v["gossipSeed"].as_u64())
        .expect("GET /status shows gossipSeed");
    assert!(
        output.contains(&format!("gossip_seed={seed}")),
        "the log names gossip seed {seed}:\n{output}"
    );
    println!(
        "`{first}` answered /health after {:.1} s",
        took.as_secs_f64()
    );
    assert!(stopped, "the node did not stop on SIGTERM:\n{output}");
}

/// SIGTERM by pid, wait for the exit (bounded), else SIGKILL. True on a clean stop.
fn stop(child: &mut std::process::Child) -> bool {
    signal(child.id(), "TERM");
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quick_start_works_as_typed() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    // The quick start uses the well-known ports on every address; another cluster test running
    // at the same time (e.g. under a parallel runner) would hold them.
    let _ports = WELL_KNOWN_PORTS.lock().await;
    if !well_known_ports_free("the README quick start") {
        return;
    }
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("a Quick start section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```sh block");
    let _ = std::fs::remove_dir_all("/tmp/orion-quickstart");
    // Background jobs the block starts are ours: stop them by pid when the block ends.
    let script = format!(
        "set -euo pipefail\ntrap 'for p in $(jobs -p); do kill -TERM $p; done; wait' EXIT\n{block}"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    remove_node_leftovers("node1");
    let _ = std::fs::remove_dir_all("/tmp/orion-quickstart");
    assert!(
        out.status.success(),
        "the quick start failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("\"image\":\"orion/busybox\""),
        "POST /tasks did not answer the task:\n{stdout}"
    );
    assert!(
        stdout.contains("hello from orion"),
        "the published port did not serve the page:\n{stdout}"
    );
    assert!(
        stdout.contains("\"state\":\"running\""),
        "GET /tasks did not list it running:\n{stdout}"
    );
}
