//! The README's quick start, run exactly as a new user types it: the ```sh block under
//! "## Quick start" is executed line by line with bash from the repository root.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quick_start_works_as_typed() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    // The quick start uses the well-known ports on every address; another cluster test running
    // at the same time (e.g. under a parallel runner) would hold them.
    let busy: Vec<u16> = [8000u16, 7000, 8080]
        .into_iter()
        .filter(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_err())
        .chain(
            [6000u16]
                .into_iter()
                .filter(|p| std::net::UdpSocket::bind(("0.0.0.0", *p)).is_err()),
        )
        .collect();
    if !busy.is_empty() {
        let msg = format!("ports {busy:?} are in use by another process");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("skipping the README quick start: {msg}");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
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
    remove_containers_of("node1");
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
