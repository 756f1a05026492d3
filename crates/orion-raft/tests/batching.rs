//! The batching proposer over real loopback TCP (127.0.131.x): concurrent writes, some on the
//! leader and some forwarded by a follower, share entries, and each writer gets the answer of
//! its own command.

use orion_raft::{RaftConfig, RaftNode};
use orion_types::{Command, Response};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn config(name: &str, dir: &Path, host: u8) -> RaftConfig {
    let a = SocketAddr::from(([127, 0, 131, host], 0));
    RaftConfig::new(name, dir.join(name), a, a, format!("127.0.131.{host}:8000"))
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn create(n: u64) -> Command {
    let spec = orion_types::api::parse_task_request(br#"{"image":"busybox"}"#).expect("spec");
    Command::CreateTask {
        task_id: format!("{n:032x}"),
        spec: Box::new(spec),
        at: 1_700_000_000_000 + n,
    }
}

fn delete_missing(n: u64) -> Command {
    Command::DeleteTask {
        task_id: format!("missing{n}"),
        at: 1_700_000_000_000 + n,
    }
}

/// Each command's own answer: a create gets its task, a delete of an unknown task its
/// `NotFound` naming that task.
fn check_answer(n: u64, answer: &Response) {
    match answer {
        Response::Task(t) if n.is_multiple_of(2) => assert_eq!(t.id, format!("{n:032x}")),
        Response::NotFound(m) if n % 2 == 1 => {
            assert!(m.contains(&format!("missing{n}")), "{n}: {m}")
        }
        other => panic!("write {n} got another's answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
    let dir = TempDir::new().unwrap();
    let mut nodes = Vec::new();
    for (i, host) in [1u8, 2, 3].iter().enumerate() {
        let cfg = config(&format!("b{}", i + 1), dir.path(), *host);
        nodes.push(RaftNode::start(cfg).await.unwrap());
    }
    nodes[0].bootstrap().await.unwrap();
    wait_until("leadership", || nodes[0].is_leader()).await;
    for node in &nodes[1..] {
        nodes[0].add_learner(node.peer()).await.unwrap();
    }
    let voters: BTreeSet<String> = ["b1", "b2", "b3"].iter().map(|s| s.to_string()).collect();
    nodes[0].change_voters(voters).await.unwrap();

    const WRITES: u64 = 96;
    let before = nodes[0].status().applied_index;
    let writes = (0..WRITES).map(|n| {
        // Every third write is forwarded by a follower to the leader's proposer.
        let node = nodes[if n.is_multiple_of(3) { 1 } else { 0 }].clone();
        async move {
            let cmd = if n.is_multiple_of(2) {
                create(n)
            } else {
                delete_missing(n)
            };
            (n, node.write(cmd).await)
        }
    });
    for (n, res) in futures_util::future::join_all(writes).await {
        check_answer(n, &res.unwrap_or_else(|e| panic!("write {n}: {e}")));
    }
    let entries = nodes[0].status().applied_index - before;
    assert!(
        entries < WRITES,
        "{WRITES} concurrent writes took {entries} entries: nothing was batched"
    );
    let created = nodes[0].read(|s| s.tasks.len() as u64);
    assert_eq!(created, WRITES / 2);
    // The followers applied the batched entries to the same state.
    for node in &nodes[1..] {
        node.consistent_read().await.unwrap();
        assert_eq!(node.read(|s| s.tasks.len() as u64), created);
    }
    for node in nodes {
        node.shutdown().await;
    }
}
