//! Secure by default (issue 13), with real processes on 127.0.120.* to 127.0.122.*: a node
//! joins only with its cluster's join token; every API route but /health needs a bearer token
//! whose role allows the call, and a revocation reaches every node within a second; gossip on
//! the wire names no node and a replayed packet changes nothing.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn credentials_entry(api: &str) -> orion_security::credentials::Entry {
    let path = orion_security::credentials::default_path().expect("credentials path");
    orion_security::credentials::find(&path, api)
        .expect("read credentials")
        .expect("an entry for the bootstrap node")
}

/// The ids in a node's `/nodes` and in its Raft membership (empty while it cannot answer).
async fn known_ids(api: &str) -> (Vec<String>, Vec<String>) {
    let nodes = get(api, "/nodes").await.map(|(_, v)| v).unwrap_or_default();
    let ids = nodes
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    let s = get(api, "/status")
        .await
        .map(|(_, v)| v)
        .unwrap_or_default();
    let raft = ["voters", "learners"]
        .iter()
        .flat_map(|k| s[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    (ids, raft)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_needs_the_clusters_join_token() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = Cluster::start("sec-j", 120, 1, &[]);
    wait_healthy(&c.agents[0]).await;
    wait_leader(&c.agents[0]).await;
    let api = c.agents[0].api.clone();
    let join_token = credentials_entry(&api).join_token;
    // The other nodes act as if on another host: a credentials file with no entry.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let cred = elsewhere.path().join("credentials.json");
    let cred = cred.to_str().expect("utf-8 path");
    let env = [("ORION_CREDENTIALS", cred)];
    let join = ["--join", "127.0.120.1:6000"];

    let none = Agent::start_env("sec-j-none", ip("127.0.120.2"), &join, &env);
    let wrong = format!("ORNTKN-1-{}-{}", "11".repeat(32), "22".repeat(32));
    let bad = Agent::start_env(
        "sec-j-bad",
        ip("127.0.120.3"),
        &["--join", "127.0.120.1:6000", "--token", &wrong],
        &env,
    );
    let good = Agent::start_env(
        "sec-j-good",
        ip("127.0.120.4"),
        &["--join", "127.0.120.1:6000", "--token", &join_token],
        &env,
    );

    // The right token joins: alive in /nodes and in the Raft membership.
    let a = api.clone();
    wait_for(Duration::from_secs(20), "sec-j-good to join", || {
        let a = a.clone();
        async move {
            let (ids, raft) = known_ids(&a).await;
            (ids.contains(&"sec-j-good".to_string()) && raft.contains(&"sec-j-good".to_string()))
                .then_some(())
        }
    })
    .await;
    // No token: refused at once, saying where a token comes from.
    wait_for(
        Duration::from_secs(40),
        "the tokenless node to give up",
        || {
            let log = none.log_text();
            async move { log.contains("cannot join: no join token").then_some(()) }
        },
    )
    .await;
    // A wrong token: no member answers it, and the seed says why it drops its packets.
    wait_for(
        Duration::from_secs(40),
        "the wrong-token node to give up",
        || {
            let log = bad.log_text();
            async move { log.contains("cannot join: no member at").then_some(()) }
        },
    )
    .await;
    let seed_log = c.agents[0].log_text();
    assert!(
        seed_log.contains("not sealed with this cluster's key"),
        "the seed logs the refused packets:\n{seed_log}"
    );
    let (ids, raft) = known_ids(&api).await;
    for refused in ["sec-j-none", "sec-j-bad"] {
        assert!(
            !ids.contains(&refused.to_string()),
            "{refused} in /nodes: {ids:?}"
        );
        assert!(
            !raft.contains(&refused.to_string()),
            "{refused} in Raft: {raft:?}"
        );
    }
    // The joined node keeps its secrets (0600) and restarts without a token.
    let sec = good.data_dir.join("security.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sec)
        .expect("security.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_have_roles_and_a_revocation_reaches_every_node_within_a_second() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = Cluster::start("sec-t", 121, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(30))
        .await;
    let api = c.agents[0].api.clone();
    let apis: Vec<String> = c.agents.iter().map(|a| a.api.clone()).collect();

    // No token: 401 with an error that says what to do; /health stays open.
    let r = client()
        .get(format!("{api}/tasks"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    let msg = body["error"].as_str().expect("error");
    assert!(msg.contains("Authorization: Bearer"), "{msg}");
    let r = client()
        .get(format!("{api}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status().as_u16(), 200);

    // A read-only token reads on every node and may not write: 403 naming the role needed.
    let (s, made) = post(&api, "/tokens", r#"{"role": "read-only", "name": "ro"}"#)
        .await
        .expect("create token");
    assert_eq!(s, 201, "{made}");
    let ro = made["token"].as_str().expect("secret").to_string();
    let id = made["id"].as_str().expect("id").to_string();
    let with = |api: &str, t: &str, m: reqwest::Method, path: &str| {
        client()
            .request(m, format!("{api}{path}"))
            .bearer_auth(t)
            .header("content-type", "application/json")
            .body(sleeper_body("ro"))
    };
    for a in &apis {
        let (a, ro) = (a.clone(), ro.clone());
        wait_for(Duration::from_secs(5), "the token on every node", || {
            let req = with(&a, &ro, reqwest::Method::GET, "/tasks");
            async move { (req.send().await.ok()?.status() == 200).then_some(()) }
        })
        .await;
    }
    let r = with(&apis[1], &ro, reqwest::Method::POST, "/tasks")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().expect("error").contains("operator"),
        "{body}"
    );
    // An operator writes tasks but not tokens.
    let (_, op) = post(&api, "/tokens", r#"{"role": "operator", "name": "ci"}"#)
        .await
        .expect("operator");
    let op = op["token"].as_str().expect("secret").to_string();
    let r = with(&api, &op, reqwest::Method::POST, "/tasks")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    let r = with(&api, &op, reqwest::Method::GET, "/tokens")
        .send()
        .await
        .expect("tokens");
    assert_eq!(r.status().as_u16(), 403);
    // The list shows no secret and no hash.
    let (_, list) = get(&api, "/tokens").await.expect("list");
    let text = list.to_string();
    assert!(!text.contains(&ro) && !text.contains(&orion_security::tokens::hash(&ro)));

    // Revoked on node 1: refused on every node within a second.
    let (s, _) = delete(&api, &format!("/tokens/{id}"))
        .await
        .expect("revoke");
    assert_eq!(s, 200);
    let revoked = Instant::now();
    let mut pending: Vec<String> = apis.clone();
    while !pending.is_empty() && revoked.elapsed() < Duration::from_secs(5) {
        let mut still = Vec::new();
        for a in pending {
            let r = with(&a, &ro, reqwest::Method::GET, "/tasks").send().await;
            if r.map(|r| r.status().as_u16()).ok() != Some(401) {
                still.push(a);
            }
        }
        pending = still;
    }
    let took = revoked.elapsed();
    println!("revocation refused on every node {took:?} after the DELETE answered");
    assert!(pending.is_empty(), "still accepted on {pending:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// The UDP payloads of a pcap file (Ethernet framing, as tcpdump writes for `lo`), with their
/// destination address.
fn udp_payloads(pcap: &[u8]) -> Vec<(std::net::SocketAddrV4, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4")) as usize;
        let frame = &pcap[at + 16..(at + 16 + incl).min(pcap.len())];
        at += 16 + incl;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let udp = &ip[ihl..];
        let port = u16::from_be_bytes([udp[2], udp[3]]);
        out.push((std::net::SocketAddrV4::new(dst, port), udp[8..].to_vec()));
    }
    out
}

async fn replayed_drops(api: &str) -> u64 {
    let r = authed(client().get(format!("{api}/metrics")), api)
        .send()
        .await
        .expect("metrics");
    let text = r.text().await.expect("text");
    text.lines()
        .find(|l| l.starts_with("orion_gossip_packets_dropped_total{reason=\"replayed\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_on_the_wire_names_no_node_and_a_replay_changes_nothing() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    if std::process::Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tcpdump is missing (scripts/test.sh installs it)"
        );
        eprintln!("skipping: no tcpdump");
        return;
    }
    let c = Cluster::start("sec-g", 122, 2, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 1, 1, Duration::from_secs(20))
        .await;
    let api = c.agents[0].api.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gossip.pcap");
    // 40 packets between the two nodes (gossip probes every few hundred ms), bounded in time.
    let mut dump = std::process::Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-c", "40", "-w"])
        .arg(&file)
        .args(["udp and net 127.0.122.0/24 and port 6000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    let deadline = Instant::now() + Duration::from_secs(30);
    while dump.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = dump.kill();
    let _ = dump.wait();
    let packets = udp_payloads(&std::fs::read(&file).expect("pcap"));
    assert!(packets.len() >= 10, "captured {} packets", packets.len());
    for (to, p) in &packets {
        for id in ["sec-g1", "sec-g2", "127.0.122"] {
            assert!(
                !p.windows(id.len()).any(|w| w == id.as_bytes()),
                "a packet to {to} shows {id:?} in plaintext"
            );
        }
        assert_eq!(p[0], orion_security::seal::VERSION, "sealed packet version");
    }

    // Replayed from elsewhere: each is dropped as a replay, and membership is unchanged.
    let before = replayed_drops(&api).await;
    let (ids_before, raft_before) = known_ids(&api).await;
    let sock = std::net::UdpSocket::bind("127.0.122.9:0").expect("udp");
    let to_n1: Vec<&Vec<u8>> = packets
        .iter()
        .filter(|(to, _)| *to.ip() == ip("127.0.122.1"))
        .map(|(_, p)| p)
        .collect();
    assert!(!to_n1.is_empty());
    for p in &to_n1 {
        sock.send_to(p, "127.0.122.1:6000").expect("send");
    }
    let a = api.clone();
    let want = before + to_n1.len() as u64;
    wait_for(Duration::from_secs(5), "the replays counted", || {
        let a = a.clone();
        async move { (replayed_drops(&a).await >= want).then_some(()) }
    })
    .await;
    let (ids_after, raft_after) = known_ids(&api).await;
    assert_eq!(ids_before, ids_after);
    assert_eq!(raft_before, raft_after);
    let (_, nodes) = get(&api, "/nodes").await.expect("nodes");
    assert!(
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["status"] == "alive"),
        "{nodes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_turns_it_off_and_warns_at_every_start() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut a = Agent::start("sec-i", ip("127.0.121.9"), &["--insecure"]);
    wait_healthy(&a).await;
    let plain = |api: String| async move {
        client()
            .get(format!("{api}/status"))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(plain(a.api.clone()).await, Some(200));
    let warning = "running with --insecure";
    assert_eq!(a.log_text().matches(warning).count(), 1, "{}", a.log_text());
    a.restart();
    wait_healthy(&a).await;
    assert_eq!(plain(a.api.clone()).await, Some(200));
    assert_eq!(a.log_text().matches(warning).count(), 2, "{}", a.log_text());
    assert!(!a.data_dir.join("security.json").exists());
}

/// Regression: a node that joined through a stale credentials-file entry (an older cluster on
/// the same address) switched its gossip key to the new entry's, but kept the old join token
/// and node token for its API (`GET /join-token`, the logs proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_a_stale_credentials_entry_follows_the_new_cluster() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let path = orion_security::credentials::default_path().expect("credentials path");
    let stale = format!("ORNTKN-1-{}-{}", "33".repeat(32), "44".repeat(32));
    orion_security::credentials::record_bootstrap(
        &path,
        orion_security::credentials::Entry {
            addrs: vec!["127.0.124.1:8000".into(), "127.0.124.1:6000".into()],
            admin_token: "stale".into(),
            join_token: stale.clone(),
            ca_fingerprint: "sha256:33".into(),
            created_at: 1,
        },
    )
    .expect("stale entry");
    // The joiner starts first and reads the stale entry; the bootstrap node replaces it.
    let n2 = Agent::start("sec-s2", ip("127.0.124.2"), &["--join", "127.0.124.1:6000"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n1 = Agent::start("sec-s1", ip("127.0.124.1"), &["--bootstrap"]);
    wait_healthy(&n1).await;
    let a = n1.api.clone();
    wait_for(Duration::from_secs(30), "sec-s2 to join", || {
        let a = a.clone();
        async move {
            let (ids, raft) = known_ids(&a).await;
            (ids.contains(&"sec-s2".to_string()) && raft.contains(&"sec-s2".to_string()))
                .then_some(())
        }
    })
    .await;
    let (_, t1) = get(&n1.api, "/join-token").await.expect("n1");
    assert_ne!(t1["token"], stale.as_str());
    // The joiner's own view, once its replica holds the tokens.
    let a2 = n2.api.clone();
    let t2 = wait_for(
        Duration::from_secs(10),
        "sec-s2 to answer /join-token",
        || {
            let a2 = a2.clone();
            async move {
                let (s, v) = get(&a2, "/join-token").await.ok()?;
                (s == 200).then_some(v)
            }
        },
    )
    .await;
    assert_eq!(t1["token"], t2["token"]);
}
