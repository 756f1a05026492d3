//! Secure by default (issue 13), with real processes on 127.0.120.* to 127.0.126.* and
//! 127.0.220.*: a node joins only with its cluster's join token, and gets a node certificate;
//! the RPC port talks only to peers with one; a removed node's certificate is refused; certificates, the CA and
//! the gossip key rotate while clients write; every API route but /health needs a bearer token
//! whose role allows the call, and a revocation reaches every node within a second; gossip on
//! the wire names no node and a replayed packet changes nothing; `--api-tls` serves the API
//! over HTTPS under the cluster CA.

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
    // Another cluster's token: the CA it pins is not the seed's.
    let wrong = format!("ORNTKN-1-{}-{}", "11".repeat(32), "22".repeat(32));
    let bad = Agent::start_env(
        "sec-j-bad",
        ip("127.0.120.3"),
        &["--join", "127.0.120.1:6000", "--token", &wrong],
        &env,
    );
    // The right CA but a wrong secret: the seed refuses the joiner's identity.
    let fingerprint = join_token
        .strip_prefix("ORNTKN-1-")
        .and_then(|r| r.split('-').next())
        .expect("fingerprint")
        .to_string();
    let forged = format!("ORNTKN-1-{fingerprint}-{}", "22".repeat(32));
    let forger = Agent::start_env(
        "sec-j-forged",
        ip("127.0.120.5"),
        &["--join", "127.0.120.1:6000", "--token", &forged],
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
    // Another cluster's token: the joiner checks the seed's CA against the token's
    // fingerprint and refuses before it sends anything.
    wait_for(
        Duration::from_secs(40),
        "the wrong-token node to give up",
        || {
            let log = bad.log_text();
            async move {
                (log.contains("cannot join:")
                    && log.contains("is not a member of the join token's cluster"))
                .then_some(())
            }
        },
    )
    .await;
    // A forged secret: the seed refuses the TLS handshake, and both sides say why.
    wait_for(
        Duration::from_secs(40),
        "the forged-token node to give up",
        || {
            let log = forger.log_text();
            async move {
                (log.contains("cannot join:") && log.contains("refused this node's join token"))
                    .then_some(())
            }
        },
    )
    .await;
    let seed_log = c.agents[0].log_text();
    assert!(
        seed_log.contains("refused a join") && seed_log.contains("wrong join token"),
        "the seed logs the refused join:\n{seed_log}"
    );
    let (ids, raft) = known_ids(&api).await;
    for refused in ["sec-j-none", "sec-j-bad", "sec-j-forged"] {
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
    // So does its node certificate, which names it and the cluster's CA.
    let cert = good.data_dir.join("node-cert.json");
    let mode = std::fs::metadata(&cert)
        .expect("node-cert.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let c = orion_security::pki::NodeCert::load(&good.data_dir)
        .expect("readable")
        .expect("present");
    assert_eq!(c.node_id, "sec-j-good");
    assert_eq!(
        c.ca_fingerprint,
        credentials_entry(&api).ca_fingerprint,
        "signed by the cluster's CA"
    );
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

/// Sealed gossip datagrams a node dropped for `reason` (its `/metrics`).
async fn gossip_drops(api: &str, reason: &str) -> u64 {
    let r = authed(client().get(format!("{api}/metrics")), api)
        .send()
        .await
        .expect("metrics");
    let text = r.text().await.expect("text");
    let series = format!("orion_gossip_packets_dropped_total{{reason=\"{reason}\"}}");
    text.lines()
        .find(|l| l.starts_with(&series))
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
    let before = gossip_drops(&api, "replayed").await;
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
        async move { (gossip_drops(&a, "replayed").await >= want).then_some(()) }
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

/// Runs `openssl s_client` against `addr` with `stdin` as the request; answers what it printed
/// on stdout (application data) and on stderr (the handshake's fate).
fn s_client(addr: &str, extra: &[&str], stdin: &[u8]) -> (String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, "-quiet", "-no_ign_eof"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (Debian's openssl package; scripts/test.sh installs it)");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin);
    // Keep stdin open a moment, so an answer has time to come back before s_client quits.
    std::thread::sleep(Duration::from_millis(1500));
    drop(input);
    let out = child.wait_with_output().expect("openssl output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A forwarded write, as a peer would send it: it must never be read from a client without a
/// node certificate.
fn forward_request() -> Vec<u8> {
    let body = r#"{"CreateTask":{"task_id":"forged","spec":{"image":"x"},"at":1}}"#;
    format!(
        "POST /raft/forward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpc_port_talks_only_to_peers_with_a_node_certificate() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = Cluster::start("sec-r", 123, 1, &[]);
    wait_healthy(&c.agents[0]).await;
    wait_leader(&c.agents[0]).await;
    let rpc = "127.0.123.1:7000";
    let req = forward_request();

    // No client certificate: the handshake ends in an alert, no application data.
    let (out, err) = s_client(rpc, &[], &req);
    assert!(
        !out.contains("HTTP/"),
        "answered without a certificate: {out}"
    );
    assert!(err.contains("alert"), "no TLS alert: {err}");

    // A certificate from another CA (a node of another cluster): refused alike.
    let dir = tempfile::tempdir().expect("tempdir");
    let (other_ca, other_key) = orion_security::pki::new_ca().expect("ca");
    let other = orion_security::pki::issue_own(
        &other_ca,
        &other_key,
        "sec-r1",
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
    .expect("cert");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_str().expect("utf-8").to_string()
    };
    let (cert, key) = (
        write("other.crt", &format!("{}{}", other.cert_pem, other.ca_pem)),
        write("other.key", &other.key_pem),
    );
    let (out, err) = s_client(rpc, &["-cert", &cert, "-key", &key], &req);
    assert!(!out.contains("HTTP/"), "answered another CA's node: {out}");
    assert!(err.contains("alert"), "no TLS alert: {err}");

    // Raw TCP, no TLS at all: nothing but a TLS alert comes back.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(rpc).await.expect("tcp");
        let _ = s.write_all(&req).await;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
        assert!(
            !String::from_utf8_lossy(&buf[..n]).contains("HTTP/"),
            "plain HTTP answered: {:?}",
            &buf[..n]
        );
    }

    // The control: the node's own certificate gets an answer, so the refusals above are the
    // certificate check and not a dead port.
    let own = orion_security::pki::NodeCert::load(&c.agents[0].data_dir)
        .expect("readable")
        .expect("present");
    let (cert, key) = (
        write("own.crt", &format!("{}{}", own.cert_pem, own.ca_pem)),
        write("own.key", &own.key_pem),
    );
    let read_index = b"POST /raft/read-index HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let (out, err) = s_client(rpc, &["-cert", &cert, "-key", &key], read_index);
    assert!(
        out.contains("HTTP/1.1 200"),
        "a node certificate is served: {out}\n{err}"
    );

    // None of the refused requests reached the log.
    let (_, t) = get(&c.agents[0].api, "/tasks/forged").await.expect("get");
    assert!(t.get("id").is_none(), "a forged write was applied: {t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_everywhere_and_gives_up_its_seat() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let c = Cluster::start("sec-x", 125, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(30))
        .await;
    let api = c.agents[0].api.clone();
    // Alive: refused without force.
    let (status, body) = delete(&api, "/nodes/sec-x3").await.expect("delete");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("force"),
        "{body}"
    );
    let (status, body) = delete(&api, "/nodes/sec-x3?force=true")
        .await
        .expect("delete");
    assert_eq!(status, 200, "{body}");

    // Its seat goes, it leaves /nodes, its id is on the revocation list.
    let a = api.clone();
    wait_for(Duration::from_secs(15), "sec-x3 to lose its seat", || {
        let a = a.clone();
        async move {
            let (ids, raft) = known_ids(&a).await;
            (!ids.contains(&"sec-x3".to_string()) && !raft.contains(&"sec-x3".to_string()))
                .then_some(())
        }
    })
    .await;
    let (_, ca) = get(&api, "/ca").await.expect("ca");
    assert_eq!(ca["revokedNodes"], serde_json::json!(["sec-x3"]), "{ca}");

    // It no longer takes part: new writes do not reach its replica.
    for i in 0..3 {
        create_task(&api, &format!(r#"{{"image": "{IMAGE}", "name": "after-rm-{i}", "command": ["sleep", "3600"], "memory": "1000g"}}"#))
            .await
            .expect("write");
    }
    let leader_commit = get(&api, "/status").await.expect("status").1["commitIndex"]
        .as_u64()
        .expect("commit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let x3 = get(&c.agents[2].api, "/status").await.expect("x3 status").1;
    assert!(
        x3["appliedIndex"].as_u64().unwrap_or(0) < leader_commit,
        "the removed node still replicates: {x3}"
    );

    // Its id cannot join again, even from a fresh machine with the right token.
    let again = Agent::start("sec-x3", ip("127.0.125.4"), &["--join", "127.0.125.1:6000"]);
    wait_for(
        Duration::from_secs(20),
        "the removed id to be refused",
        || {
            let log = again.log_text();
            async move { log.contains("was removed from this cluster").then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_the_ca_and_the_gossip_key_rotate_while_clients_write() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    // Certificates live 12 s: each node renews its own about every 8 s.
    let c = Cluster::start("sec-o", 126, 3, &["--cert-ttl", "12s"]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 0, Duration::from_secs(30))
        .await;
    let apis: Vec<String> = c.agents.iter().map(|a| a.api.clone()).collect();
    let before: Vec<usize> = c
        .agents
        .iter()
        .map(|a| {
            a.log_text()
                .matches("issued this node's certificate")
                .count()
        })
        .collect();
    let forged_before = {
        let mut v = Vec::new();
        for a in &apis {
            v.push(gossip_drops(a, "forged").await);
        }
        v
    };

    // Clients write through every node for 20 s; the CA rotates at 5 s, the gossip key at 10 s.
    // The tasks ask for more memory than any node has: writes, without containers.
    let start = Instant::now();
    let mut acked = Vec::new();
    let (mut ca_rotated, mut key_rotated) = (None, None);
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(20) {
        let api = &apis[i % apis.len()];
        let body = format!(
            r#"{{"image": "{IMAGE}", "name": "rot-{i}", "command": ["sleep", "1"], "memory": "1000g"}}"#
        );
        if let Ok(id) = create_task(api, &body).await {
            acked.push(id);
        }
        i += 1;
        if ca_rotated.is_none() && start.elapsed() > Duration::from_secs(5) {
            let (s, v) = post(&apis[1], "/ca/rotate", "").await.expect("rotate");
            assert_eq!(s, 200, "{v}");
            ca_rotated = Some(v);
        }
        if key_rotated.is_none() && start.elapsed() > Duration::from_secs(10) {
            let (s, v) = post(&apis[2], "/gossip-key/rotate", "")
                .await
                .expect("rotate key");
            assert_eq!(s, 200, "{v}");
            key_rotated = Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        acked.len() > 50,
        "too few writes acknowledged: {}",
        acked.len()
    );

    // No acknowledged write is lost.
    for id in &acked {
        let (s, t) = get(&apis[0], &format!("/tasks/{id}")).await.expect("get");
        assert_eq!(s, 200, "acknowledged task {id} is gone: {t}");
    }
    // Every node re-issued its certificate (the CA rotation, and renewals at 2/3 of 12 s).
    let ca = ca_rotated.expect("rotated");
    for (a, b) in c.agents.iter().zip(&before) {
        let log = a.log_text();
        let n = log.matches("issued this node's certificate").count();
        assert!(
            n >= b + 2,
            "{} issued {} certificates during the run",
            a.id,
            n - b
        );
        let own = orion_security::pki::NodeCert::load(&a.data_dir)
            .expect("readable")
            .expect("present");
        assert_eq!(
            own.ca_fingerprint,
            ca["fingerprint"].as_str().unwrap_or(""),
            "{}",
            a.id
        );
    }
    // The join token pins the new CA.
    let (_, jt) = get(&apis[0], "/join-token").await.expect("join token");
    assert_eq!(jt["token"], ca["joinToken"]);
    // No node was declared dead, and no gossip packet was refused for its key.
    let events = authed(
        client().get(format!(
            "{}/events?follow=false&index=0&topic=node",
            apis[0]
        )),
        &apis[0],
    )
    .send()
    .await
    .expect("events")
    .text()
    .await
    .expect("events body");
    assert!(
        !events.contains(r#""kind":"dead""#),
        "a node was declared dead:\n{events}"
    );
    for (a, b) in apis.iter().zip(&forged_before) {
        let forged = gossip_drops(a, "forged").await;
        assert_eq!(
            forged, *b,
            "{a} refused gossip packets during the key rotation"
        );
    }
    for a in &c.agents {
        let log = a.log_text();
        assert!(
            log.contains("gossip keys changed"),
            "{}: the new gossip key is not in use",
            a.id
        );
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", a.id);
    }
}

/// Runs `orion ARGS` (a CLI command); returns (success, stdout, stderr).
fn orion(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orion"))
        .args(args)
        .env_remove("ORION_ADDR")
        .env_remove("ORION_TOKEN")
        .env_remove("ORION_CA_CERT")
        .env_remove("ORION_CA_FINGERPRINT")
        .output()
        .expect("run orion");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `curl ARGS`; returns the HTTP status (`None`: no HTTP answer, e.g. a refused certificate).
fn curl(args: &[&str]) -> Option<u16> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|s| *s != 0)
}

/// `--api-tls`: the API (and `/health`) is HTTPS with a certificate of the cluster CA naming
/// the node's address; `curl --cacert` with `orion ca show --pem` and the CLI (which pins the
/// CA by the fingerprint of the credentials file) accept it, a CLI that pins another CA and a
/// plain HTTP client do not. The certificate follows `orion ca rotate`, survives a restart,
/// and a node reads another node's HTTPS API for `orion logs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_under_the_cluster_ca_and_the_cli_checks_it() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut a = Agent::start("sec-tls1", ip("127.0.220.11"), &["--api-tls"]);
    let https = "https://127.0.220.11:8000".to_string();
    // The CLI finds the CA's fingerprint in the credentials file the bootstrap wrote.
    let ca_pem = wait_for(Duration::from_secs(20), "orion ca show --pem", || {
        let https = https.clone();
        async move {
            let (ok, out, _) = orion(&["ca", "show", "--pem", "--addr", &https]);
            (ok && out.contains("BEGIN CERTIFICATE")).then_some(out)
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("write ca.pem");
    let ca = ca_file.to_str().expect("utf-8 path");
    let token = credentials_entry(&https).admin_token;
    let auth = format!("Authorization: Bearer {token}");

    // curl with the CA: /health and an authenticated GET answer; without a token 401.
    assert_eq!(
        curl(&["--cacert", ca, &format!("{https}/health")]),
        Some(200)
    );
    assert_eq!(
        curl(&["--cacert", ca, "-H", &auth, &format!("{https}/nodes")]),
        Some(200)
    );
    assert_eq!(
        curl(&["--cacert", ca, &format!("{https}/nodes")]),
        Some(401)
    );
    // Without the CA curl refuses the certificate; plain HTTP gets no HTTP answer.
    assert_eq!(curl(&[&format!("{https}/health")]), None);
    assert_eq!(curl(&["http://127.0.220.11:8000/health"]), None);
    assert!(
        client()
            .get("http://127.0.220.11:8000/health")
            .send()
            .await
            .is_err()
    );

    // The CLI: by the pinned fingerprint, and by --ca-cert alone.
    let (ok, out, err) = orion(&["nodes", "--addr", &https]);
    assert!(ok && out.contains("sec-tls1"), "{out}{err}");
    let (ok, out, err) = orion(&[
        "nodes",
        "--addr",
        &https,
        "--ca-cert",
        ca,
        "--token",
        &token,
    ]);
    assert!(ok && out.contains("sec-tls1"), "{out}{err}");
    // A CLI that pins another CA is refused, in one line that names both CAs.
    let other = format!("sha256:{}", "ab".repeat(32));
    let (ok, _, err) = orion(&["nodes", "--addr", &https, "--ca-fingerprint", &other]);
    assert!(!ok, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not from a trusted CA") && err.contains(&other),
        "{err}"
    );
    // Plain HTTP to the HTTPS port: a hint to use https.
    let (ok, _, err) = orion(&["nodes", "--addr", "http://127.0.220.11:8000"]);
    assert!(!ok && err.contains("--api-tls"), "{err}");

    // A second node with --api-tls; node 1 proxies its task's logs over HTTPS.
    let b = Agent::start(
        "sec-tls2",
        ip("127.0.220.12"),
        &["--api-tls", "--join", "127.0.220.11:6000"],
    );
    let b_https = "https://127.0.220.12:8000".to_string();
    wait_for(Duration::from_secs(30), "sec-tls2 to join", || {
        let https = https.clone();
        async move {
            let (ok, out, _) = orion(&["nodes", "--addr", &https]);
            (ok && out.contains("sec-tls2") && out.contains("alive")).then_some(())
        }
    })
    .await;
    // A joiner issues its API certificate once it has replicated the CA (its key sealed in
    // the state).
    wait_for(
        Duration::from_secs(10),
        "sec-tls2's API certificate",
        || {
            let url = format!("{b_https}/health");
            let ca = ca.to_string();
            async move { (curl(&["--cacert", &ca, &url]) == Some(200)).then_some(()) }
        },
    )
    .await;
    let (ok, out, err) = orion(&[
        "run",
        "--addr",
        &https,
        "--wait",
        "--constraint",
        "node.id==sec-tls2",
        common::IMAGE,
        "sh",
        "-c",
        "echo hello-over-tls; sleep 3600",
    ]);
    assert!(ok, "{out}{err}");
    let task = out.lines().last().unwrap_or_default().trim().to_string();
    wait_for(Duration::from_secs(15), "logs through node 1", || {
        let (https, task) = (https.clone(), task.clone());
        async move {
            let (ok, out, _) = orion(&["logs", "--addr", &https, &task]);
            (ok && out.contains("hello-over-tls")).then_some(())
        }
    })
    .await;

    // After `orion ca rotate` the API's certificate is re-issued under the new CA: the old
    // CA's file no longer verifies it, the CLI (its pin updated by the rotate) does.
    let (ok, out, err) = orion(&["ca", "rotate", "--addr", &https]);
    assert!(ok, "{out}{err}");
    wait_for(
        Duration::from_secs(10),
        "the API certificate of the new CA",
        || async {
            (curl(&["--cacert", ca, "https://127.0.220.11:8000/health"]).is_none()).then_some(())
        },
    )
    .await;
    let (ok, out, err) = orion(&["nodes", "--addr", &https]);
    assert!(ok && out.contains("sec-tls1"), "{out}{err}");
    assert!(a.log_text().matches("issued the API's certificate").count() >= 2);

    // A restart serves the saved certificate at once.
    a.restart();
    wait_for(Duration::from_secs(20), "sec-tls1 over HTTPS again", || {
        let https = https.clone();
        async move { orion(&["nodes", "--addr", &https]).0.then_some(()) }
    })
    .await;
    drop(b);
}
