//! Cluster tests with real processes on loopback addresses: gossip finds members, the leader
//! adds them to Raft (voters capped and kept odd, then learners), any node serves the API,
//! a crashed leader is replaced, a dead voter is replaced by a learner.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_seed_flow() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start("two-n", 3, 1, &[]);
    wait_healthy(&c.agents[0]).await;
    wait_leader(&c.agents[0]).await;
    let started = Instant::now();
    c.agents.push(Agent::start(
        "two-n2",
        "127.0.3.2".parse().expect("ip"),
        &["--join", "127.0.3.1:6000"],
    ));
    let n1 = c.agents[0].api.clone();
    let a = n1.clone();
    wait_for(
        Duration::from_secs(10),
        "node2 alive in node1's /nodes",
        || {
            let a = a.clone();
            async move {
                let (_, nodes) = get(&a, "/nodes").await.ok()?;
                nodes
                    .as_array()?
                    .iter()
                    .any(|n| n["id"] == "two-n2" && n["status"] == "alive")
                    .then_some(())
            }
        },
    )
    .await;
    let seen = started.elapsed();
    println!("node2 alive in node1's /nodes {seen:?} after its process started");
    assert!(
        seen < Duration::from_secs(5),
        "node2 took {seen:?} to appear"
    );
    // Node 2 is a learner: one voter, so losing node 2 never costs quorum.
    let status = c
        .wait_membership(&c.agents[0], 1, 1, Duration::from_secs(10))
        .await;
    assert_eq!(status["leader"], "two-n1");
    // It replicates state.
    let id = create_task(&n1, &sleeper_body("rep"))
        .await
        .expect("create");
    let n2 = c.agents[1].api.clone();
    let idc = id.clone();
    wait_for(
        Duration::from_secs(5),
        "the task on node2's replica",
        || {
            let n2 = n2.clone();
            let idc = idc.clone();
            async move {
                get(&n2, &format!("/tasks/{idc}"))
                    .await
                    .ok()
                    .filter(|(s, _)| *s == 200)
            }
        },
    )
    .await;
    // A write through the learner is forwarded to the leader.
    create_task(&n2, &sleeper_body("via-learner"))
        .await
        .expect("create via node2");
    // kill -9 node2: node1 stays leader and keeps accepting writes.
    c.agents[1].kill();
    for i in 0..5 {
        create_task(&n1, &sleeper_body(&format!("after-{i}")))
            .await
            .expect("write after node2 died");
    }
    let (_, s) = get(&n1, "/status").await.expect("status");
    assert_eq!(s["leader"], "two-n1");
    assert_eq!(s["role"], "leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_write_through_a_follower_is_visible_everywhere() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = Cluster::start("three-n", 4, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    let status = c
        .wait_membership(&c.agents[0], 3, 0, Duration::from_secs(15))
        .await;
    let leader = status["leader"].as_str().expect("leader").to_string();
    let follower = c.agents.iter().find(|a| a.id != leader).expect("follower");
    let id = create_task(&follower.api, &sleeper_body("via-follower"))
        .await
        .expect("write via follower");
    for a in &c.agents {
        let api = a.api.clone();
        let idc = id.clone();
        wait_for(
            Duration::from_secs(5),
            &format!("the task on {}", a.id),
            || {
                let api = api.clone();
                let idc = idc.clone();
                async move {
                    get(&api, &format!("/tasks/{idc}"))
                        .await
                        .ok()
                        .filter(|(s, _)| *s == 200)
                }
            },
        )
        .await;
    }
    // A consistent read through a follower sees it at once.
    let (s, t) = get(&follower.api, &format!("/tasks/{id}?consistent=true"))
        .await
        .expect("get");
    assert_eq!((s, t["id"].as_str()), (200, Some(id.as_str())));
    // /nodes shows every node alive with a role and capacity.
    let (_, nodes) = get(&c.agents[2].api, "/nodes").await.expect("nodes");
    let nodes = nodes.as_array().expect("array");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for n in nodes {
        assert_eq!(n["status"], "alive", "{n}");
        assert!(n["role"] == "leader" || n["role"] == "voter", "{n}");
        assert!(n["capacity"]["memory"].as_u64().unwrap_or(0) > 0, "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_twenty_times_never_sticks() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let rounds: usize = std::env::var("ORION_FAILOVER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start("crash-n", 5, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(15))
        .await;
    let mut times = Vec::new();
    for round in 0..rounds {
        let leader = c.leader(Duration::from_secs(10)).await;
        let survivor = c
            .agents
            .iter()
            .find(|a| a.id != leader)
            .expect("survivor")
            .api
            .clone();
        let killed_at = Instant::now();
        c.by_id_mut(&leader).kill();
        // Time to the next committed write through a survivor.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match create_task(&survivor, &format!(r#"{{"image": "none/such", "name": "r{round}-{attempt}", "restartPolicy": "never"}}"#)).await {
                Ok(_) => break,
                Err(e) => {
                    let waited = killed_at.elapsed();
                    assert!(waited < Duration::from_secs(5), "round {round}: leaderless for {waited:?}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let t = killed_at.elapsed();
        println!("round {round}: killed leader {leader}; next committed write after {t:?}");
        times.push(t);
        // Bring it back and let it rejoin as a voter before the next round.
        c.by_id_mut(&leader).restart();
        wait_healthy(c.by_id(&leader)).await;
        let any = c.agents[0].api.clone();
        let back = leader.clone();
        wait_for(
            Duration::from_secs(20),
            "the restarted node to be a voter and caught up",
            || {
                let any = any.clone();
                let back = back.clone();
                async move {
                    let (_, s) = get(&any, "/status").await.ok()?;
                    let voters = s["voters"].as_array()?;
                    let (_, nodes) = get(&any, "/nodes").await.ok()?;
                    let alive = nodes
                        .as_array()?
                        .iter()
                        .filter(|n| n["status"] == "alive")
                        .count();
                    (voters.len() == 3 && voters.iter().any(|v| v == back.as_str()) && alive == 3)
                        .then_some(())
                }
            },
        )
        .await;
    }
    let worst = *times.iter().max().expect("rounds");
    let med = median(&mut times.clone());
    println!("leader failover over {rounds} rounds: median {med:?}, worst {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_voter_losses_one_after_another() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start(
        "five-n",
        6,
        5,
        &["--voters", "3", "--voter-grace-ms", "1000"],
    );
    for a in &c.agents {
        wait_healthy(a).await;
    }
    let s = c
        .wait_membership(&c.agents[0], 3, 2, Duration::from_secs(20))
        .await;
    let leader = s["leader"].as_str().expect("leader").to_string();
    for loss in 0..2 {
        // Kill a voter that is not the leader.
        let (_, s) = get(&c.by_id(&leader).api, "/status").await.expect("status");
        let victim = s["voters"]
            .as_array()
            .expect("voters")
            .iter()
            .filter_map(|v| v.as_str())
            .find(|v| *v != leader)
            .expect("a follower voter")
            .to_string();
        c.by_id_mut(&victim).kill();
        let api = c.by_id(&leader).api.clone();
        let gone = victim.clone();
        let s = wait_for(
            Duration::from_secs(15),
            "a learner to take the dead voter's seat",
            || {
                let api = api.clone();
                let gone = gone.clone();
                async move {
                    let (_, s) = get(&api, "/status").await.ok()?;
                    let voters = s["voters"].as_array()?;
                    (voters.len() == 3 && !voters.iter().any(|v| v == gone.as_str())).then_some(s)
                }
            },
        )
        .await;
        println!(
            "after losing voter {victim} (loss {}): voters {}",
            loss + 1,
            s["voters"]
        );
        create_task(&api, &sleeper_body(&format!("after-loss-{loss}")))
            .await
            .expect("write after voter loss");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_rejoins_under_the_same_id() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut c = Cluster::start("rejoin-n", 7, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(15))
        .await;
    let (_, before) = get(&c.agents[0].api, "/nodes").await.expect("nodes");
    let gen_before = before
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == "rejoin-n3")
        .expect("n3")["generation"]
        .as_u64()
        .expect("generation");
    c.agents[2].restart();
    wait_healthy(&c.agents[2]).await;
    let api = c.agents[0].api.clone();
    let nodes = wait_for(
        Duration::from_secs(15),
        "node3 back with a newer generation",
        || {
            let api = api.clone();
            async move {
                let (_, nodes) = get(&api, "/nodes").await.ok()?;
                let n3 = nodes
                    .as_array()?
                    .iter()
                    .find(|n| n["id"] == "rejoin-n3")?
                    .clone();
                (n3["status"] == "alive"
                    && n3["generation"].as_u64()? > gen_before
                    && n3["recorded"] == "up")
                    .then_some(nodes)
            }
        },
    )
    .await;
    let ids: Vec<&str> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["rejoin-n1", "rejoin-n2", "rejoin-n3"],
        "duplicate or missing members"
    );
    let s = c
        .wait_membership(&c.agents[0], 3, 0, Duration::from_secs(10))
        .await;
    assert!(
        s["voters"]
            .as_array()
            .expect("voters")
            .iter()
            .any(|v| v == "rejoin-n3")
    );
}
