//! Service discovery on a live cluster, real agents and the real Docker engine, asked with
//! real clients: `dig` (Debian's dnsutils) against every node, and busybox `nslookup` inside
//! a task's container.
//!
//! - names of API.md: `<service>.orion` (the VIP), `<service>.<stack>.orion`, `tasks.` A and
//!   SRV, `<node>.node.orion`, NXDOMAIN for an unknown name; the service object shows the VIP
//!   and its endpoints;
//! - a container on one node resolves services by short name (`web`, and `api` in its own
//!   stack), and `tasks.` names give the other node's address;
//! - an endpoint whose check starts failing leaves DNS on every node (the time is printed,
//!   for BENCHMARKS.md; the bound asserted is only a sanity bound);
//! - the same with Raft cut by iptables between all nodes (nothing can commit): health
//!   travels by gossip alone;
//! - with 2 of 3 voters killed, the survivor still answers for existing services.
//!
//! Loopback networks: 127.0.100.0/24 to 127.0.102.0/24.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

/// `dig +short` against `server`: the answer lines (empty on NXDOMAIN or no data).
fn dig_short(server: &str, qtype: &str, name: &str) -> Vec<String> {
    let out = std::process::Command::new("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=1",
            &format!("@{server}"),
            qtype,
            name,
        ])
        .output()
        .expect("dig (Debian package dnsutils)");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    v.sort();
    v
}

/// The status of `dig`'s answer (`NOERROR`, `NXDOMAIN`, ...).
fn dig_status(server: &str, name: &str) -> String {
    let out = std::process::Command::new("dig")
        .args(["+time=2", "+tries=1", &format!("@{server}"), "A", name])
        .output()
        .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string()
}

/// `dig +tcp`: the same server over TCP.
fn dig_tcp(server: &str, name: &str) -> Vec<String> {
    let out = std::process::Command::new("dig")
        .args([
            "+short",
            "+tcp",
            "+time=2",
            "+tries=1",
            &format!("@{server}"),
            "A",
            name,
        ])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The `orion` client's standard output against `api`.
fn orion_cli(api: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orion"))
        .args(args)
        .env("ORION_ADDR", api)
        .output()
        .expect("run orion");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `docker exec` of `cmd` in container `id`: (exit ok, output).
fn exec(id: &str, cmd: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("timeout")
        .args(["10", "docker", "exec", id])
        .args(cmd)
        .output()
        .expect("docker exec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The running tasks of `service` once `n` run, read from `api`.
async fn running_tasks(api: &str, service: &str, n: usize) -> Vec<Value> {
    let api = api.to_string();
    let service = service.to_string();
    wait_for(CONVERGE, &format!("{n} running tasks of {service}"), || {
        let api = api.clone();
        let service = service.clone();
        async move {
            let (_, tasks) = get(&api, &format!("/services/{service}/tasks"))
                .await
                .ok()?;
            let run: Vec<Value> = tasks
                .as_array()?
                .iter()
                .filter(|t| t["state"] == "running" && t["containerId"].is_string())
                .cloned()
                .collect();
            (run.len() == n).then_some(run)
        }
    })
    .await
}

fn web_body(extra: &str) -> String {
    format!(
        r#"{{"name": "web", "image": "{IMAGE}", "replicas": 3, "maxPerNode": 1, "memory": "16m",
            "stopGracePeriod": "1s",
            "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/ok && exec busybox httpd -f -p 80 -h /www"],
            "ports": [{{"target": 80}}] {extra}}}"#
    )
}

/// The sorted addresses `dig` gets for `tasks.web.orion` from `server`.
fn task_addrs(server: &str) -> Vec<String> {
    dig_short(server, "A", "tasks.web.orion")
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_answers_every_name_in_containers_too_and_without_quorum() {
    if docker_or_skip().await.is_none() {
        return;
    }
    let mut cluster = Cluster::start("disco-a", 100, 3, &[]);
    let a1 = cluster.agents[0].api.clone();
    cluster
        .wait_membership(&cluster.agents[0], 3, 0, CONVERGE)
        .await;

    let (status, web) = post(&a1, "/services", &web_body(""))
        .await
        .expect("create web");
    assert_eq!(status, 201, "{web}");
    assert_eq!(web["vip"], "10.200.0.1", "{web}");
    let api_body = format!(
        r#"{{"name": "api", "stack": "shop", "image": "{IMAGE}", "memory": "16m",
            "stopGracePeriod": "1s", "constraints": ["node.id == disco-a3"],
            "command": ["busybox", "httpd", "-f", "-p", "8080"], "ports": [{{"target": 8080}}]}}"#
    );
    let (status, api) = post(&a1, "/services", &api_body).await.expect("create api");
    assert_eq!(status, 201, "{api}");
    let front_body = format!(
        r#"{{"name": "front", "stack": "shop", "image": "{IMAGE}", "memory": "16m",
            "stopGracePeriod": "1s", "constraints": ["node.id == disco-a1"],
            "command": ["sleep", "3600"]}}"#
    );
    let (status, front) = post(&a1, "/services", &front_body).await.expect("front");
    assert_eq!(status, 201, "{front}");
    let api_vip = api["vip"].as_str().expect("api vip").to_string();
    let web_tasks = running_tasks(&a1, "web", 3).await;
    let api_tasks = running_tasks(&a1, "api.shop", 1).await;
    let front_tasks = running_tasks(&a1, "front.shop", 1).await;

    // Every node answers every name, once its view has the three endpoints.
    let all: Vec<String> = (1..=3).map(|i| format!("127.0.100.{i}")).collect();
    for server in &all {
        let s = server.clone();
        wait_for(
            CONVERGE,
            &format!("{server} to list 3 web endpoints"),
            || {
                let s = s.clone();
                async move { (task_addrs(&s) == all_addrs()).then_some(()) }
            },
        )
        .await;
        assert_eq!(dig_short(server, "A", "web.orion"), ["10.200.0.1"]);
        assert_eq!(dig_tcp(server, "web.orion"), ["10.200.0.1"], "over TCP");
        assert_eq!(
            dig_short(server, "A", "api.shop.orion"),
            std::slice::from_ref(&api_vip)
        );
        assert_eq!(
            dig_short(server, "A", "tasks.api.shop.orion"),
            ["127.0.100.3"]
        );
        let srv = dig_short(server, "SRV", "tasks.web.orion");
        let ports: BTreeSet<String> = web_tasks
            .iter()
            .map(|t| {
                published(t)
                    .expect("published")
                    .split(':')
                    .nth(1)
                    .unwrap()
                    .to_string()
            })
            .collect();
        let srv_ports: BTreeSet<String> = srv
            .iter()
            .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
            .collect();
        assert_eq!(srv_ports, ports, "SRV of {server}: {srv:?}");
        for i in 1..=3 {
            assert_eq!(
                dig_short(server, "A", &format!("disco-a{i}.node.orion")),
                [format!("127.0.100.{i}")]
            );
        }
        assert_eq!(dig_status(server, "nothing.orion"), "NXDOMAIN");
        assert_eq!(dig_status(server, "tasks.nothing.orion"), "NXDOMAIN");
        assert_eq!(dig_status(server, "web.orion"), "NOERROR");
    }

    // The service object: the VIP and three healthy endpoints.
    let (_, s) = get(&a1, "/services/web").await.expect("get web");
    let eps = s["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 3, "{s}");
    assert!(
        eps.iter()
            .all(|e| e["healthy"] == true && e["targetPort"] == 80),
        "{s}"
    );
    // The CLI shows the VIP, the ports and the endpoints with their health.
    let ls = orion_cli(&a1, &["service", "ls"]);
    assert!(ls.contains("10.200.0.1") && ls.contains("3/3"), "{ls}");
    let pretty = orion_cli(&a1, &["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("VIP:       10.200.0.1"), "{pretty}");
    assert_eq!(pretty.matches("  healthy\n").count(), 3, "{pretty}");

    // Inside front's container on disco-a1: `api` (its stack) and `web` by short name, and
    // api's task on disco-a3 by its tasks. name.
    let front_cid = front_tasks[0]["containerId"]
        .as_str()
        .expect("cid")
        .to_string();
    let (_, resolv) = exec(&front_cid, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("shop.orion") && resolv.contains("orion"),
        "{resolv}"
    );
    // busybox nslookup tries every search domain and prints each outcome (`api.orion` is
    // NXDOMAIN): the answer through the right one must be there.
    let (_, out) = exec(&front_cid, &["nslookup", "api"]);
    assert!(
        out.contains("api.shop.orion") && out.contains(&api_vip),
        "nslookup api: {out}"
    );
    let (_, out) = exec(&front_cid, &["nslookup", "web"]);
    assert!(
        out.contains("web.orion") && out.contains("10.200.0.1"),
        "nslookup web: {out}"
    );
    let (ok, out) = exec(&front_cid, &["nslookup", "tasks.api.shop.orion"]);
    assert!(
        ok && out.contains("127.0.100.3"),
        "nslookup tasks.api.shop.orion: {out}"
    );
    let (ok, out) = exec(&front_cid, &["nslookup", "nothing.orion"]);
    assert!(
        !ok || out.contains("NXDOMAIN"),
        "nslookup nothing.orion: {out}"
    );
    let _ = api_tasks;

    // Two of three voters die: the survivor keeps its last view and still answers.
    cluster.agents[1].kill();
    cluster.agents[2].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(dig_short("127.0.100.1", "A", "web.orion"), ["10.200.0.1"]);
    assert_eq!(dig_short("127.0.100.1", "A", "api.shop.orion"), [api_vip]);
    assert!(
        task_addrs("127.0.100.1").contains(&"127.0.100.1".to_string()),
        "the survivor's own endpoint is still listed"
    );
    assert_eq!(
        dig_short("127.0.100.1", "A", "disco-a1.node.orion"),
        ["127.0.100.1"]
    );
}

fn all_addrs() -> Vec<String> {
    (1..=3).map(|i| format!("127.0.100.{i}")).collect()
}

/// An endpoint whose health check starts failing leaves DNS on every node. Prints the time
/// from the failure (the check's file removed) to its absence everywhere, and that time less
/// the check's own detection (interval x retries), for BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_leaves_dns_everywhere() {
    if docker_or_skip().await.is_none() {
        return;
    }
    let cluster = Cluster::start("disco-b", 101, 3, &[]);
    let a1 = cluster.agents[0].api.clone();
    cluster
        .wait_membership(&cluster.agents[0], 3, 0, CONVERGE)
        .await;
    let check = r#", "healthcheck": {"http": "/ok", "interval": "200ms", "timeout": "150ms", "retries": 1}"#;
    let (status, web) = post(&a1, "/services", &web_body(check))
        .await
        .expect("create");
    assert_eq!(status, 201, "{web}");
    let servers: Vec<String> = (1..=3).map(|i| format!("127.0.101.{i}")).collect();
    let want: Vec<String> = servers.clone();
    for s in &servers {
        let s2 = s.clone();
        let want = want.clone();
        wait_for(
            CONVERGE,
            &format!("{s} to list 3 healthy endpoints"),
            || {
                let s2 = s2.clone();
                let want = want.clone();
                async move { (task_addrs(&s2) == want).then_some(()) }
            },
        )
        .await;
    }
    let tasks = running_tasks(&a1, "web", 3).await;
    let victim = tasks
        .iter()
        .find(|t| t["node"] == "disco-b3")
        .expect("a task on disco-b3");
    let cid = victim["containerId"].as_str().expect("cid").to_string();
    let (ok, out) = exec(&cid, &["rm", "/www/ok"]);
    assert!(ok, "rm: {out}");
    let broken = Instant::now();
    let mut gone_at = Vec::new();
    for s in &servers {
        loop {
            if !task_addrs(s).contains(&"127.0.101.3".to_string()) {
                gone_at.push(broken.elapsed());
                break;
            }
            assert!(
                broken.elapsed() < Duration::from_secs(10),
                "{s} still lists the failing endpoint after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let last = gone_at.iter().max().copied().unwrap_or_default();
    println!(
        "failing endpoint gone from DNS: per node {gone_at:?}; on every node after {last:?} \
         (check every 200 ms, 1 retry, so detection alone takes up to ~350 ms)"
    );
    // The others stay.
    let left = task_addrs("127.0.101.1");
    assert!(
        left.contains(&"127.0.101.1".to_string()) && left.contains(&"127.0.101.2".to_string()),
        "{left:?}"
    );
}

/// iptables rules cutting Raft (TCP port 7000) between the agents of one /24, tagged with a
/// comment and removed on drop (a panic included). Gossip (UDP 6000) still flows.
struct RaftCut {
    net: u8,
}

const CUT_TAG: &str = "orion-test-disco-raft-cut";

impl RaftCut {
    fn args(&self, op: &str) -> Vec<String> {
        let net = format!("127.0.{}.0/24", self.net);
        [
            op,
            "INPUT",
            "-s",
            &net,
            "-d",
            &net,
            "-p",
            "tcp",
            "--dport",
            "7000",
            "-m",
            "comment",
            "--comment",
            CUT_TAG,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn new(net: u8) -> RaftCut {
        let cut = RaftCut { net };
        let out = std::process::Command::new("iptables")
            .args(cut.args("-I"))
            .output()
            .expect("iptables");
        assert!(out.status.success(), "iptables: {out:?}");
        cut
    }
}

impl Drop for RaftCut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(self.args("-D"))
            .output();
    }
}

/// Health travels by gossip: with Raft cut between all three nodes (no entry can commit, so
/// the log cannot record the failure), an endpoint whose check starts failing still leaves
/// every node's DNS. Prints the time, for BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_leaves_dns_by_gossip_alone() {
    if docker_or_skip().await.is_none() {
        return;
    }
    let cluster = Cluster::start("disco-c", 102, 3, &[]);
    let a1 = cluster.agents[0].api.clone();
    cluster
        .wait_membership(&cluster.agents[0], 3, 0, CONVERGE)
        .await;
    let check = r#", "healthcheck": {"http": "/ok", "interval": "200ms", "timeout": "150ms", "retries": 1}"#;
    let (status, web) = post(&a1, "/services", &web_body(check))
        .await
        .expect("create");
    assert_eq!(status, 201, "{web}");
    let servers: Vec<String> = (1..=3).map(|i| format!("127.0.102.{i}")).collect();
    for s in &servers {
        let s2 = s.clone();
        let want = servers.clone();
        wait_for(
            CONVERGE,
            &format!("{s} to list 3 healthy endpoints"),
            || {
                let s2 = s2.clone();
                let want = want.clone();
                async move { (task_addrs(&s2) == want).then_some(()) }
            },
        )
        .await;
    }
    let tasks = running_tasks(&a1, "web", 3).await;
    let cid = tasks
        .iter()
        .find(|t| t["node"] == "disco-c3")
        .and_then(|t| t["containerId"].as_str())
        .expect("a task on disco-c3")
        .to_string();
    let _cut = RaftCut::new(102);
    let applied_before: Vec<Value> = {
        let mut v = Vec::new();
        for a in &cluster.agents {
            v.push(get(&a.api, "/status").await.expect("status").1["commitIndex"].clone());
        }
        v
    };
    let (ok, out) = exec(&cid, &["rm", "/www/ok"]);
    assert!(ok, "rm: {out}");
    let broken = Instant::now();
    let mut gone_at = Vec::new();
    for s in &servers {
        loop {
            if !task_addrs(s).contains(&"127.0.102.3".to_string()) {
                gone_at.push(broken.elapsed());
                break;
            }
            assert!(
                broken.elapsed() < Duration::from_secs(10),
                "{s} still lists the failing endpoint after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Nothing was committed meanwhile: the log did not carry it.
    for (a, before) in cluster.agents.iter().zip(&applied_before) {
        let (_, st) = get(&a.api, "/status").await.expect("status");
        assert_eq!(
            &st["commitIndex"], before,
            "{} committed during the cut",
            a.id
        );
    }
    let last = gone_at.iter().max().copied().unwrap_or_default();
    println!(
        "by gossip alone (Raft cut): failing endpoint gone from DNS per node {gone_at:?}; \
         on every node after {last:?} (check every 200 ms, 1 retry)"
    );
}
