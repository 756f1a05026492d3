//! RaftNodes over real loopback TCP, in one process: bootstrap and restart, snapshots to a new
//! learner, a three-voter cluster with forwarding and ReadIndex, repeated leader failover, and
//! garbage on every RPC route.
//!
//! Each test uses its own 127.0.0.x addresses and port 0, so tests run in parallel safely.

use orion_raft::{NotProposed, RaftConfig, RaftNode, Role, WriteError, paths};
use orion_types::{Command, Response};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, host], port))
}

fn config(name: &str, dir: &Path, host: u8, port: u16) -> RaftConfig {
    let a = addr(host, port);
    RaftConfig::new(name, dir.join(name), a, a, format!("127.0.0.{host}:8000"))
}

fn create_task(n: u64) -> Command {
    let spec = orion_types::api::parse_task_request(br#"{"image":"busybox"}"#).expect("spec");
    Command::CreateTask {
        task_id: format!("{n:032x}"),
        spec: Box::new(spec),
        at: 1_700_000_000_000 + n,
    }
}

fn has_task(node: &RaftNode, n: u64) -> bool {
    let id = format!("{n:032x}");
    node.read(|s| s.tasks.contains_key(&id))
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_leader(node: &RaftNode) {
    wait_until("leadership", Duration::from_secs(5), || node.is_leader()).await;
}

fn port_of(node: &RaftNode) -> u16 {
    node.peer()
        .raft_addr
        .parse::<SocketAddr>()
        .expect("raft addr")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_bootstraps_commits_and_restarts() {
    let dir = TempDir::new().unwrap();
    let cfg = config("solo", dir.path(), 11, 0);
    let node = RaftNode::start(cfg.clone()).await.unwrap();
    node.bootstrap().await.unwrap();
    wait_leader(&node).await;

    let resp = node.write(create_task(1)).await.unwrap();
    assert!(matches!(resp, Response::Task(_)), "got {resp:?}");
    assert!(has_task(&node, 1));
    let cluster_config = orion_types::ClusterConfig {
        voters: 5,
        ..Default::default()
    };
    let set = Command::SetClusterConfig {
        config: cluster_config,
        if_unset: false,
        at: 2,
    };
    assert_eq!(node.write(set).await.unwrap(), Response::Ok);
    node.consistent_read().await.unwrap();
    let before = node.status();
    assert_eq!(before.role, Role::Leader);
    assert_eq!(before.voters, vec!["solo".to_string()]);
    assert!(before.applied_index >= 2, "{before:?}");
    let port = port_of(&node);
    node.shutdown().await;
    node.shutdown().await; // idempotent
    assert_eq!(
        node.write(create_task(2)).await,
        Err(WriteError::NotProposed(NotProposed::Shutdown)),
        "a stopped node refuses writes"
    );

    // Same data dir, same address, bootstrap again: nothing is re-initialised.
    let node = RaftNode::start(config("solo", dir.path(), 11, port))
        .await
        .unwrap();
    assert!(
        has_task(&node, 1),
        "task survives the restart before any replay"
    );
    assert_eq!(
        node.read(|s| s.config),
        Some(cluster_config),
        "the cluster config is a row too"
    );
    assert!(node.status().applied_index >= before.applied_index);
    node.bootstrap().await.unwrap();
    wait_leader(&node).await;
    let after = node.status();
    assert!(
        after.applied_index >= before.applied_index,
        "{after:?} vs {before:?}"
    );
    assert!(after.term >= before.term);
    node.write(create_task(2)).await.unwrap();
    assert!(has_task(&node, 1) && has_task(&node, 2));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_built_purges_the_log_and_reaches_a_new_learner() {
    let dir = TempDir::new().unwrap();
    let mut cfg = config("snap1", dir.path(), 21, 0);
    cfg.snapshot_logs = 20;
    let leader = RaftNode::start(cfg).await.unwrap();
    leader.bootstrap().await.unwrap();
    wait_leader(&leader).await;
    for n in 0..60 {
        leader.write(create_task(n)).await.unwrap();
    }
    leader.trigger_snapshot().await.unwrap();
    wait_until("snapshot and purge", Duration::from_secs(5), || {
        let s = leader.status();
        s.snapshot_index.is_some() && s.purged_index.is_some()
    })
    .await;
    let st = leader.status();
    assert!(
        st.purged_index.unwrap() > 0,
        "log purged behind the snapshot: {st:?}"
    );

    // The new learner needs entries that are purged: it can only catch up by snapshot.
    let learner = RaftNode::start(config("snap2", dir.path(), 22, 0))
        .await
        .unwrap();
    leader.add_learner(learner.peer()).await.unwrap();
    wait_until("learner catch-up", Duration::from_secs(10), || {
        (0..60).all(|n| has_task(&learner, n)) && learner.status().learners == ["snap2"]
    })
    .await;
    let ls = learner.status();
    assert_eq!(ls.role, Role::Learner);
    assert!(
        ls.snapshot_index.is_some(),
        "learner installed a snapshot: {ls:?}"
    );
    assert_eq!(ls.learners, vec!["snap2".to_string()]);
    assert_eq!(ls.leader.as_deref(), Some("snap1"));

    // A write through the learner is forwarded to the leader.
    learner.write(create_task(100)).await.unwrap();
    learner.consistent_read().await.unwrap();
    assert!(has_task(&learner, 100));

    // The learner restarts from its own stores (snapshot + rows) with everything.
    let port = port_of(&learner);
    learner.shutdown().await;
    let learner = RaftNode::start(config("snap2", dir.path(), 22, port))
        .await
        .unwrap();
    assert!((0..60).all(|n| has_task(&learner, n)) && has_task(&learner, 100));
    learner.shutdown().await;
    leader.shutdown().await;
}

struct Cluster {
    dir: TempDir,
    hosts: Vec<u8>,
    ports: Vec<u16>,
    nodes: Vec<Option<RaftNode>>,
}

impl Cluster {
    fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    async fn start(hosts: &[u8]) -> Cluster {
        let dir = TempDir::new().unwrap();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let node = RaftNode::start(config(&Self::name(i), dir.path(), *host, 0))
                .await
                .unwrap();
            ports.push(port_of(&node));
            nodes.push(Some(node));
        }
        Cluster {
            dir,
            hosts: hosts.to_vec(),
            ports,
            nodes,
        }
    }

    fn node(&self, i: usize) -> &RaftNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|i| self.nodes[*i].as_ref().is_some_and(|n| n.is_leader()))
    }

    /// Starts three nodes, bootstraps the first and makes all three voters.
    async fn three_voters(hosts: &[u8]) -> Cluster {
        let c = Cluster::start(hosts).await;
        c.node(0).bootstrap().await.unwrap();
        wait_leader(c.node(0)).await;
        for i in 1..3 {
            c.node(0).add_learner(c.node(i).peer()).await.unwrap();
        }
        let voters: BTreeSet<String> = (0..3).map(Cluster::name).collect();
        c.node(0).change_voters(voters.clone()).await.unwrap();
        let st = c.node(0).status();
        assert_eq!(st.voters.iter().cloned().collect::<BTreeSet<_>>(), voters);
        assert!(st.learners.is_empty(), "{st:?}");
        c
    }

    async fn restart(&mut self, i: usize) {
        let cfg = config(
            &Self::name(i),
            self.dir.path(),
            self.hosts[i],
            self.ports[i],
        );
        self.nodes[i] = Some(RaftNode::start(cfg).await.unwrap());
    }

    async fn shutdown(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_forward_read_index_and_survive_repeated_leader_loss() {
    let mut c = Cluster::three_voters(&[31, 32, 33]).await;

    // A follower forwards; the write shows up everywhere.
    wait_until("followers see the leader", Duration::from_secs(5), || {
        (1..3).all(|i| c.node(i).status().leader.as_deref() == Some("n1"))
    })
    .await;
    let resp = c.node(1).write(create_task(1)).await.unwrap();
    assert!(matches!(resp, Response::Task(_)));
    wait_until("replication to all", Duration::from_secs(5), || {
        (0..3).all(|i| has_task(c.node(i), 1))
    })
    .await;
    // ReadIndex on a follower: after it returns, a write acknowledged before is visible.
    c.node(0).write(create_task(2)).await.unwrap();
    c.node(2).consistent_read().await.unwrap();
    assert!(
        has_task(c.node(2), 2),
        "consistent read on a follower sees the write"
    );
    let f = c.node(2).status();
    assert_eq!(f.role, Role::Follower);
    assert_eq!(f.leader_api_addr.as_deref(), Some("127.0.0.31:8000"));
    assert!(
        f.last_leader_contact_ms.is_some_and(|ms| ms < 1_000),
        "{f:?}"
    );

    // Leader loss, over and over: stop the leader, time until a write through a survivor
    // commits, restart the stopped node and let it catch up.
    const ROUNDS: u64 = 6;
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let old = c.leader().expect("a leader before the kill");
        let killed_at = Instant::now();
        c.nodes[old].take().unwrap().shutdown().await;
        let stop_ms = killed_at.elapsed().as_millis();
        let survivor = (old + 1) % 3;
        let task = 1_000 + round;
        loop {
            match c.node(survivor).write(create_task(task)).await {
                Ok(_) => break,
                Err(WriteError::NotProposed(NotProposed::NoLeader)) => {}
                Err(e) => panic!("round {round}: write failed: {e}"),
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(5),
                "round {round}: leaderless for more than 5 s"
            );
        }
        let took = killed_at.elapsed();
        assert!(took < Duration::from_secs(5), "round {round}: {took:?}");
        let new = c.leader().map(Cluster::name);
        println!(
            "failover round {round}: stopped {} (shutdown {stop_ms} ms), new leader {new:?}, \
             write committed after {} ms",
            Cluster::name(old),
            took.as_millis()
        );
        times.push(took);
        c.restart(old).await;
        let restarted = c.node(old).clone();
        let target = c.node(survivor).status().commit_index;
        wait_until("restarted node catches up", Duration::from_secs(10), || {
            let s = restarted.status();
            s.applied_index >= target && s.leader.is_some() && has_task(&restarted, task)
        })
        .await;
    }
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!(
        "failover over {ROUNDS} rounds: median {} ms, worst {} ms",
        median.as_millis(),
        worst.as_millis()
    );
    // Every node ends with every write.
    let all: Vec<u64> = [1, 2].into_iter().chain(1_000..1_000 + ROUNDS).collect();
    wait_until("all writes everywhere", Duration::from_secs(5), || {
        (0..3).all(|i| all.iter().all(|n| has_task(c.node(i), *n)))
    })
    .await;

    // Membership: remove a follower; it disappears from voters and learners.
    let leader = c.leader().expect("leader");
    let follower = (leader + 1) % 3;
    c.node(leader)
        .remove_node(&Cluster::name(follower))
        .await
        .unwrap();
    let st = c.node(leader).status();
    assert!(!st.voters.contains(&Cluster::name(follower)), "{st:?}");
    assert!(!st.learners.contains(&Cluster::name(follower)), "{st:?}");
    assert!(
        c.node(follower)
            .add_learner(c.node(leader).peer())
            .await
            .is_err(),
        "membership changes are leader-only"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_write_fails_after_the_bounded_wait() {
    let dir = TempDir::new().unwrap();
    let mut cfg = config("lonely", dir.path(), 51, 0);
    cfg.leader_wait_ms = 300;
    let node = RaftNode::start(cfg).await.unwrap(); // never bootstrapped: no cluster
    let t = Instant::now();
    let err = node.write(create_task(1)).await.unwrap_err();
    assert_eq!(err, WriteError::NotProposed(NotProposed::NoLeader));
    assert_eq!(err.to_string(), "no leader elected yet; retry");
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        node.consistent_read().await,
        Err(WriteError::NotProposed(NotProposed::NoLeader))
    ));
    assert!(node.add_learner(node.peer()).await.is_err());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_rpc_route_gets_4xx() {
    let dir = TempDir::new().unwrap();
    let node = RaftNode::start(config("target", dir.path(), 41, 0))
        .await
        .unwrap();
    node.bootstrap().await.unwrap();
    wait_leader(&node).await;
    let base = format!("http://{}", node.peer().raft_addr);
    // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let routes = [
        paths::APPEND,
        paths::VOTE,
        paths::SNAPSHOT,
        paths::FORWARD,
        paths::READ_INDEX,
    ];
    let too_big = vec![b'['; orion_raft::RPC_BODY_BYTES_MAX + 1];
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xffnot json at all{{{".to_vec()),
        ("truncated", br#"{"vote":{"leader_id":{"term":1,"#.to_vec()),
        ("wrong shape", br#"{"hello":"world"}"#.to_vec()),
        ("wrong type", b"[1,2,3]".to_vec()),
        ("empty", Vec::new()),
        ("too big", too_big),
    ];
    for route in routes {
        for (what, body) in &bodies {
            let resp = http
                .post(format!("{base}{route}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert!(status.is_client_error(), "{route} {what}: got {status}");
        }
        // No content type at all.
        let resp = http
            .post(format!("{base}{route}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_client_error(),
            "{route} without content type"
        );
    }
    // Well-formed JSON whose entries do not follow prev_log_id.
    let bad_append = serde_json::json!({
        "vote": {"leader_id": {"term": 1, "node_id": 7}, "committed": true},
        "prev_log_id": null,
        "entries": [{"log_id": {"leader_id": {"term": 1, "node_id": 7}, "index": 5}, "payload": "Blank"}],
        "leader_commit": null
    });
    let resp = http
        .post(format!("{base}{}", paths::APPEND))
        .json(&bad_append)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A term openraft would overflow on.
    let huge_vote = serde_json::json!({
        "vote": {"leader_id": {"term": u64::MAX, "node_id": 7}, "committed": false},
        "last_log_id": null
    });
    let resp = http
        .post(format!("{base}{}", paths::VOTE))
        .json(&huge_vote)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Unknown route.
    let resp = http.post(format!("{base}/raft/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Still healthy.
    assert!(node.is_leader());
    node.write(create_task(1)).await.unwrap();
    node.shutdown().await;
}

/// With openraft's own election timer off, only the no-leader watchdog can start an election:
/// a new leader after the old one stops shows the watchdog works on its own (the two-survivor
/// livelock it guards against cannot be produced on demand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_alone_elects_a_new_leader() {
    let mut c = Cluster::three_voters(&[61, 62, 63]).await;
    c.node(0).write(create_task(1)).await.unwrap();
    for i in 0..3 {
        c.node(i).set_builtin_elections(false);
    }
    let killed_at = Instant::now();
    c.nodes[0].take().unwrap().shutdown().await;
    // Threshold 3 x 600 ms, jitter up to 600 ms, one vote round; a split vote (both kick in
    // the same few ms) costs one more period.
    wait_until(
        "a leader elected by the watchdog",
        Duration::from_secs(8),
        || c.leader().is_some(),
    )
    .await;
    let took = killed_at.elapsed();
    println!("watchdog-only election after {} ms", took.as_millis());
    assert!(
        took >= Duration::from_millis(1_800),
        "not the watchdog: {took:?}"
    );
    c.node(1).write(create_task(2)).await.unwrap();
    c.shutdown().await;
}

/// Regression (issue 10, unchecked forwards): the inter-node `forward` route proposed whatever
/// `Command` a peer sent. An invalid one must be refused as invalid and leave the log alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_invalid_command_is_refused_and_nothing_is_written() {
    let dir = TempDir::new().unwrap();
    let node = RaftNode::start(config("fwd", dir.path(), 45, 0))
        .await
        .unwrap();
    node.bootstrap().await.unwrap();
    wait_leader(&node).await;
    node.write(create_task(1)).await.unwrap();
    let before = node.status();
    let url = format!("http://{}{}", node.peer().raft_addr, paths::FORWARD);
    // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    let Command::CreateTask { spec, .. } = create_task(2) else {
        unreachable!()
    };
    let mut tiny = spec.clone();
    tiny.memory_bytes = 1_000; // below Docker's minimum: the API answers 400
    let mut bad_name = spec.clone();
    bad_name.name = Some("no spaces allowed".into());
    let cases: Vec<(&str, Command, &str)> = vec![
        (
            "memory below the minimum",
            Command::CreateTask {
                task_id: format!("{:032x}", 2),
                spec: tiny,
                at: 1,
            },
            "memory",
        ),
        (
            "a name the API refuses",
            Command::CreateTask {
                task_id: format!("{:032x}", 3),
                spec: bad_name,
                at: 1,
            },
            "name",
        ),
        (
            "an empty task id",
            Command::CreateTask {
                task_id: String::new(),
                spec,
                at: 1,
            },
            "task_id",
        ),
    ];
    for (what, cmd, field) in cases {
        let reply: serde_json::Value = http
            .post(&url)
            .json(&cmd)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            reply["Err"]["Invalid"]["field"], field,
            "{what}: got {reply}"
        );
        // The same command through the handle is refused before it is sent.
        assert!(
            matches!(node.write(cmd).await, Err(WriteError::Rejected(e)) if e.field == field),
            "{what}"
        );
    }
    let after = node.status();
    assert_eq!(
        after.commit_index, before.commit_index,
        "nothing was proposed"
    );
    assert!(!has_task(&node, 2) && !has_task(&node, 3));
    node.shutdown().await;
}
