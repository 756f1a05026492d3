//! Logs written before commands were batched still load: `fixtures/data-dir-unbatched.tar.gz`
//! is the data dir of a one-node cluster written by the binary of commit 478316c (one command
//! per Raft entry): three tasks created through `POST /tasks`, a service `oldsvc`, the
//! executor's reports, then `kill -9` (so the log, not only the state rows, must be replayed
//! up to the commit index). This node opens it, replays it, answers a linearizable read, takes
//! new writes (batched entries) beside the old ones and reopens the mix.
//!
//! Snapshots kept in redb still load: `fixtures/data-dir-snapshot-in-redb.tar.gz` is the data
//! dir of a one-node cluster written by the binary of commit f2f02b7 (`--snapshot-logs 10`, the
//! snapshot's bytes in `state.redb`): 30 tasks `snap0`..`snap29` created through `POST /tasks`,
//! five snapshots, then `kill -9`. The agent's key files were left out.

use orion_raft::{RaftConfig, RaftNode};
use orion_types::Command;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/data-dir-unbatched.tar.gz"
);

const SNAPSHOT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/data-dir-snapshot-in-redb.tar.gz"
);

fn unpack_fixture(fixture: &str, into: &Path, dir: &str) -> std::path::PathBuf {
    let status = std::process::Command::new("tar")
        .args(["xzf", fixture, "-C"])
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar xzf {fixture}");
    into.join(dir)
}

fn unpack(into: &Path) -> std::path::PathBuf {
    unpack_fixture(FIXTURE, into, "orion-old-fixture")
}

fn config(dir: &Path) -> RaftConfig {
    // The node id recorded in the fixture's membership; this net is the write path's own.
    let a = SocketAddr::from(([127, 0, 130, 9], 0));
    RaftConfig::new("fixture1", dir, a, a, "127.0.130.9:8000")
}

async fn wait_leader(node: &RaftNode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        assert!(Instant::now() < deadline, "the fixture's node never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(node: &RaftNode) -> Vec<String> {
    node.read(|s| {
        let mut v: Vec<String> = s
            .tasks
            .values()
            .filter_map(|t| t.spec.name.clone())
            .collect();
        v.sort();
        v
    })
}

/// Creates task `{prefix}{n}` (id `id_base + n`).
async fn create(
    node: &RaftNode,
    prefix: &str,
    id_base: u64,
    n: u64,
) -> Result<orion_types::Response, orion_raft::WriteError> {
    let spec = orion_types::api::parse_task_request(
        format!(r#"{{"image":"busybox","name":"{prefix}{n}"}}"#).as_bytes(),
    )
    .expect("spec");
    node.write(Command::CreateTask {
        task_id: format!("{:032x}", id_base + n),
        spec: Box::new(spec),
        at: 1_800_000_000_000 + n,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_single_command_entries_still_loads() {
    let tmp = TempDir::new().unwrap();
    let dir = unpack(tmp.path());
    let node = RaftNode::start(config(&dir)).await.unwrap();
    wait_leader(&node).await;
    node.consistent_read().await.unwrap();
    let before = names(&node);
    for n in ["old1", "old2", "old3"] {
        assert!(before.iter().any(|x| x == n), "{n} missing: {before:?}");
    }
    assert!(node.read(|s| s.services.contains_key("oldsvc")));
    let status = node.status();
    assert!(
        status.applied_index >= 17,
        "replayed up to {}",
        status.applied_index
    );

    // New entries (several concurrent writes share one) after the old ones.
    let writes = (0..8u64).map(|n| create(&node, "new", 0xbeef_0000, n));
    for r in futures_util::future::join_all(writes).await {
        r.expect("write after the old entries");
    }
    let with_new = names(&node);
    node.shutdown().await;
    drop(node);

    let node = RaftNode::start(config(&dir)).await.unwrap();
    wait_leader(&node).await;
    node.consistent_read().await.unwrap();
    assert_eq!(names(&node), with_new);
    assert_eq!(with_new.len(), before.len() + 8);
    node.shutdown().await;
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .map(|rd| {
            rd.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_whose_snapshot_is_in_redb_still_loads_and_the_next_goes_to_a_file() {
    let tmp = TempDir::new().unwrap();
    let dir = unpack_fixture(SNAPSHOT_FIXTURE, tmp.path(), "orion-snapshot-in-redb");
    let config = || {
        let a = SocketAddr::from(([127, 0, 130, 10], 0));
        let mut c = RaftConfig::new("fixture2", &dir, a, a, "127.0.130.10:8000");
        c.snapshot_logs = 10;
        c
    };
    let node = RaftNode::start(config()).await.unwrap();
    wait_leader(&node).await;
    node.consistent_read().await.unwrap();
    // The log behind the fixture's last snapshot is purged: these come from the snapshot.
    let before = names(&node);
    let old: Vec<String> = (0..30).map(|i| format!("snap{i}")).collect();
    for n in &old {
        assert!(before.contains(n), "{n} missing: {before:?}");
    }
    // Enough entries for the next snapshot, which goes to a file of its own.
    for n in 0..30u64 {
        create(&node, "after", 0xfeed_0000, n)
            .await
            .expect("write after the old entries");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshot_files(&dir).is_empty() {
        assert!(Instant::now() < deadline, "no snapshot file was written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let with_new = names(&node);
    node.shutdown().await;
    drop(node);
    // A build may still be under way at the shutdown (a `.tmp`, deleted at the next open);
    // that only the current file stays is `sm_store`'s unit test.
    let files = snapshot_files(&dir);
    assert!(files.iter().any(|f| f.ends_with(".snap")), "{files:?}");

    let node = RaftNode::start(config()).await.unwrap();
    wait_leader(&node).await;
    node.consistent_read().await.unwrap();
    assert_eq!(names(&node), with_new);
    assert_eq!(with_new.len(), before.len() + 30);
    node.shutdown().await;
}
