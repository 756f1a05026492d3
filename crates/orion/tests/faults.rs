//! Jepsen-style fault injection: five real agents on 127.0.20.1-5, a seeded nemesis (crashes,
//! machine deaths, pauses, partitions including one isolating the leader, a one-way drop),
//! concurrent clients and a hostile client, then a checker that proves nothing acknowledged
//! was lost, consistent reads were linearizable, and after convergence each live task runs in
//! exactly one container.
//!
//! Run: `cargo test -p orion --test faults -- --nocapture`. Replay: `ORION_FAULT_SEED=<seed>`.
//! Each run draws a new seed, except under `CI=true`, which replays `CI_SEED`.
//! Longer: `ORION_FAULT_PROFILE=long` (about 15 minutes of faults). Needs Docker and root
//! (iptables). Results go to `target/fault-results.json` and `target/fault-results.md`.

#[path = "faults/checker.rs"]
mod checker;
mod common;
#[path = "faults/nemesis.rs"]
mod nemesis;
#[path = "faults/workload.rs"]
mod workload;

use checker::TaskRow;
use common::*;
use nemesis::{Firewall, Profile, Schedule};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{History, OpKind, Outcome, Shared};

/// This suite's loopback net (127.0.20.x) and node ids; no other test uses them.
/// `ORION_FAULT_NET` moves it (and the regression test's, to the net after it), so that people
/// sharing one machine can run the suite at once.
const NET_DEFAULT: u8 = 20;

fn net() -> u8 {
    std::env::var("ORION_FAULT_NET")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NET_DEFAULT)
}
const NODES: usize = 5;
const PREFIX: &str = "fault-n";
/// Concurrent workload clients.
const CLIENTS: usize = 3;
/// Tasks that are, or may be, live at once: small enough for Docker on two cores.
const LIVE_TASKS_MAX: usize = 18;
/// Bound on convergence after the last heal: detection (a few seconds), re-placement, and
/// container starts and removals on a loaded two-core machine.
const CONVERGENCE_MAX: Duration = Duration::from_secs(90);

/// The schedule CI replays unless told otherwise: a landing should not hinge on which
/// schedule the clock picked. Elsewhere every run draws a new seed.
const CI_SEED: u64 = 603_372_068;

fn seed_from_env() -> u64 {
    match std::env::var("ORION_FAULT_SEED") {
        Ok(s) => s.trim().parse().expect("ORION_FAULT_SEED must be a u64"),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => CI_SEED,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1),
    }
}

/// A consistent list of every task from the first node that answers; with its call and
/// return times on the history's clock.
async fn final_list(apis: &[String], history: &History) -> Option<(Vec<TaskRow>, u64, u64)> {
    for api in apis {
        let call = history.now_us();
        if let Ok((200, Value::Array(v))) = get(api, "/tasks?consistent=true").await {
            let rows = v.iter().filter_map(TaskRow::from_json).collect();
            return Some((rows, call, history.now_us()));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_lose_nothing_and_run_nothing_twice() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    if !nemesis::iptables_available() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but iptables is unusable (root and the iptables package are needed)"
        );
        eprintln!("skipping: iptables unusable (needs root and the iptables package)");
        return;
    }
    let seed = seed_from_env();
    let profile = Profile::from_env();
    let schedule = Schedule::generate(seed, profile, NODES);
    println!(
        "{}replay with ORION_FAULT_SEED={seed}{}",
        schedule.describe(),
        if profile == Profile::Long {
            " ORION_FAULT_PROFILE=long"
        } else {
            ""
        }
    );
    let run_started = Instant::now();
    let net = net();
    let mut fw = Firewall::new(net);
    for i in 1..=NODES {
        nemesis::remove_containers_of(&format!("{PREFIX}{i}"));
    }
    let mut c = Cluster::start(PREFIX, net, NODES, &["--voters", "3"]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.wait_membership(&c.agents[0], 3, 2, Duration::from_secs(30))
        .await;
    let cluster_start = run_started.elapsed();
    println!("cluster of {NODES} up in {cluster_start:?}");
    let apis: Vec<String> = c.agents.iter().map(|a| a.api.clone()).collect();

    // Workload, hostile client, and a sampler of transient duplicates.
    let history = History::new();
    let shared = Arc::new(Shared {
        tasks: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
        live_max: LIVE_TASKS_MAX,
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(workload::client(
                i,
                seed,
                apis.clone(),
                history.clone(),
                shared.clone(),
            ))
        })
        .collect();
    let hostile = tokio::spawn(workload::hostile(seed, apis.clone(), shared.clone()));
    let max_dup_during = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let shared = shared.clone();
        let max = max_dup_during.clone();
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                let rows = tokio::task::spawn_blocking(|| checker::list_containers(PREFIX))
                    .await
                    .unwrap_or_default();
                max.fetch_max(checker::duplicates(&rows), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    // The nemesis, one fault at a time.
    let t0 = Instant::now();
    let mut fault_log: Vec<String> = Vec::new();
    let mut faults_by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut self_deaths: Vec<String> = Vec::new();
    let mut log = |line: String| {
        let line = format!("[{:>7.2}s] {line}", t0.elapsed().as_secs_f64());
        println!("nemesis {line}");
        fault_log.push(line);
    };
    for f in &schedule.faults {
        tokio::time::sleep_until((t0 + f.at).into()).await;
        for a in c.agents.iter_mut() {
            if let Some(pid) = a.pid()
                && !nemesis::process_alive(pid)
            {
                self_deaths.push(format!(
                    "{} (pid {pid}) found dead at {:.1}s, not by the nemesis",
                    a.id,
                    t0.elapsed().as_secs_f64()
                ));
                a.restart();
            }
        }
        let (active, text) = nemesis::inflict(&mut c, &mut fw, f).await;
        *faults_by_kind.entry(f.kind.name()).or_default() += 1;
        log(format!("{}: {text}", f.kind.name()));
        tokio::time::sleep(f.hold).await;
        let text = nemesis::undo(&mut c, &mut fw, &active);
        log(format!("  undo: {text}"));
    }
    tokio::time::sleep_until((t0 + schedule.workload).into()).await;
    shared.stop.store(true, Ordering::Relaxed);
    for h in clients {
        h.await.expect("client task");
    }
    let hostile = hostile.await.expect("hostile task");
    sampler.await.expect("sampler");
    let workload_time = t0.elapsed();

    // Heal everything: no rule left, every process running.
    fw.heal();
    for a in c.agents.iter_mut() {
        a.cont_signal();
        if let Some(pid) = a.pid()
            && !nemesis::process_alive(pid)
        {
            self_deaths.push(format!("{} (pid {pid}) found dead after the run", a.id));
            a.restart();
        }
    }
    let healed = Instant::now();
    for a in &c.agents {
        wait_healthy(a).await;
    }
    c.leader(Duration::from_secs(30)).await;

    // Convergence: the state and Docker agree.
    let mut last_problems = Vec::new();
    let mut converged = None;
    let mut final_state = None;
    let mut containers = Vec::new();
    while healed.elapsed() < CONVERGENCE_MAX {
        if let Some(fin) = final_list(&apis, &history).await {
            containers = tokio::task::spawn_blocking(|| checker::list_containers(PREFIX))
                .await
                .expect("docker ps");
            last_problems = checker::docker_problems(&fin.0, &containers);
            final_state = Some(fin);
            if last_problems.is_empty() {
                converged = Some(healed.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let duplicates_after = checker::duplicates(&containers);
    let (final_tasks, final_call, final_return) =
        final_state.expect("no node answered a consistent list after the heal");

    // The history against the final state.
    let ops = history.ops();
    let analysis = checker::analyze(&ops, &final_tasks, final_call, final_return);
    let panics: Vec<String> = c
        .agents
        .iter()
        .filter_map(|a| {
            let log = a.log_text();
            log.lines()
                .find(|l| l.contains("panicked"))
                .map(|l| format!("{}: {l}", a.id))
        })
        .collect();

    // Figures.
    let mut by_kind: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    for o in &ops {
        *by_kind
            .entry(format!("{:?}", o.kind).to_lowercase())
            .or_default()
            .entry(o.outcome.name())
            .or_default() += 1;
    }
    // Why operations did not succeed, by kind and status or transport error.
    let mut not_ok: BTreeMap<String, usize> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.outcome != Outcome::Ok) {
        let why = match (o.status, o.error.as_deref()) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) if e.contains("timed out") => "timeout".into(),
            (None, Some(e)) if e.contains("error sending request") => "connect/send".into(),
            (None, Some(e)) => e.chars().take(40).collect(),
            (None, None) => "?".into(),
        };
        let key = format!("{:?} {} {why}", o.kind, o.outcome.name()).to_lowercase();
        *not_ok.entry(key).or_default() += 1;
    }
    let history_lines: Vec<String> = ops
        .iter()
        .map(|o| {
            json!({"client": o.client, "kind": format!("{:?}", o.kind), "name": o.name,
                "node": o.node + 1, "call_us": o.call_us, "return_us": o.return_us,
                "outcome": o.outcome.name(), "status": o.status, "observed": o.observed,
                "id": o.id, "error": o.error, "seen": o.seen.len()})
            .to_string()
        })
        .collect();
    let acked = |k: OpKind| {
        ops.iter()
            .filter(|o| o.kind == k && o.outcome == Outcome::Ok)
            .count()
    };
    let live_at_end = final_tasks.iter().filter(|t| t.state != "stopped").count();
    let passed = analysis.lost.is_empty()
        && analysis.unexpected.is_empty()
        && analysis.violations.is_empty()
        && duplicates_after == 0
        && converged.is_some()
        && panics.is_empty()
        && self_deaths.is_empty()
        && hostile.wrong.is_empty();
    let results = json!({
        "seed": seed,
        "profile": profile.name(),
        "nodes": NODES,
        "passed": passed,
        "cluster_start_s": secs(cluster_start),
        "workload_s": secs(workload_time),
        "total_s": secs(run_started.elapsed()),
        "operations": by_kind,
        "operations_total": ops.len(),
        "not_ok_by_cause": not_ok,
        "acknowledged": {"creates": acked(OpKind::Create), "deletes": acked(OpKind::Delete),
            "reads": acked(OpKind::Read), "lists": acked(OpKind::List)},
        "faults": faults_by_kind,
        "faults_total": schedule.faults.len(),
        "fault_log": fault_log,
        "tasks_at_end": {"total": final_tasks.len(), "live": live_at_end},
        "acknowledged_writes_lost": analysis.lost.len(),
        "answered_503_but_applied": analysis.applied_after_503,
        "lost": analysis.lost,
        "unexpected_tasks": analysis.unexpected,
        "linearizability": {"registers": analysis.registers,
            "violations": analysis.violations.len(), "detail": analysis.violations},
        "duplicates_after_convergence": duplicates_after,
        "max_duplicates_during_faults": max_dup_during.load(Ordering::Relaxed),
        "convergence_s": converged.map(secs),
        "convergence_bound_s": CONVERGENCE_MAX.as_secs(),
        "unconverged": last_problems,
        "hostile": {"answered_as_required": hostile.expected,
            "unanswered_during_faults": hostile.transport,
            "wrong": hostile.wrong, "slow_client_cut_off_after_s": hostile.slow_cutoff_secs},
        "agent_deaths_not_by_nemesis": self_deaths,
        "panics": panics,
        "notes": analysis.notes,
    });
    let text = serde_json::to_string_pretty(&results).expect("json");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let _ = std::fs::write(dir.join("fault-results.json"), &text);
    let _ = std::fs::write(dir.join("fault-results.md"), markdown(&results));
    let _ = std::fs::write(dir.join("fault-history.jsonl"), history_lines.join("\n"));
    println!("{text}");
    println!(
        "results written to {}",
        dir.join("fault-results.json").display()
    );
    drop(fw);
    assert!(
        passed,
        "the fault suite found problems (seed {seed}); see above"
    );
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

fn markdown(r: &Value) -> String {
    let ops = &r["operations"];
    let cell = |k: &str, o: &str| ops[k][o].as_u64().unwrap_or(0);
    let mut s = format!(
        "# Fault-injection run\n\nseed {} · profile {} · {} nodes · passed: {}\n\n\
         | operation | ok | fail | unknown |\n|---|---|---|---|\n",
        r["seed"],
        r["profile"].as_str().unwrap_or("?"),
        r["nodes"],
        r["passed"]
    );
    for k in ["create", "read", "delete", "list"] {
        s.push_str(&format!(
            "| {k} | {} | {} | {} |\n",
            cell(k, "ok"),
            cell(k, "fail"),
            cell(k, "unknown")
        ));
    }
    s.push_str(&format!(
        "\nfaults: {}\n\nacknowledged writes lost: {} · writes answered 503 but applied: {} · \
         duplicates after convergence: {} · linearizability violations: {} · convergence: {} s\n",
        r["faults"],
        r["acknowledged_writes_lost"],
        r["answered_503_but_applied"],
        r["duplicates_after_convergence"],
        r["linearizability"]["violations"],
        r["convergence_s"]
    ));
    s
}

/// Regression test for a finding of the suite (seed 451617385 showed four such deletes): a
/// `DELETE /tasks/{id}` resolves the id on the local replica before proposing the write, so a
/// follower that lags (cut off, or just restarted) answers 404 for a task that exists and
/// keeps running. A write must not answer from a stale replica: the right answers here are
/// the deleted task, or 503/504 while the leader is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_through_a_lagging_follower_never_answers_404_for_an_existing_task() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    if !nemesis::iptables_available() {
        return;
    }
    let net_regression: u8 = net().wrapping_add(1);
    let mut fw = Firewall::new(net_regression);
    let c = Cluster::start("fault-r", net_regression, 3, &[]);
    for a in &c.agents {
        wait_healthy(a).await;
    }
    let s = c
        .wait_membership(&c.agents[0], 3, 0, Duration::from_secs(20))
        .await;
    let leader = c.by_id(s["leader"].as_str().expect("leader"));
    let lagging = c
        .agents
        .iter()
        .find(|a| a.id != leader.id)
        .expect("follower");
    let others: Vec<_> = c
        .agents
        .iter()
        .filter(|a| a.id != lagging.id)
        .map(|a| a.ip)
        .collect();
    fw.cut(&[lagging.ip], &others);
    let id = create_task(&leader.api, &sleeper_body("lagging-delete"))
        .await
        .expect("create through the leader");
    let answer = delete(&lagging.api, &format!("/tasks/{id}")).await;
    fw.heal();
    let (status, body) = answer.expect("the cut-off follower still answers its API");
    assert_ne!(
        status, 404,
        "DELETE of existing task {id} through a lagging follower answered 404: {body}"
    );
}
