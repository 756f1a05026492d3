//! `GET /metrics`: Prometheus text format, on by default, every name prefixed `orion_`.
//!
//! Counters and histograms that code paths record as they happen (API requests, applied
//! entries, log appends and their fsync time, placements, leader changes, executor passes,
//! Docker calls) go through the `metrics` facade into one process-wide Prometheus recorder.
//! Figures that are a view of the state (Raft indexes, members by state, pending tasks,
//! service replicas) are set as gauges when scraped, so nothing has to keep them up to date.
//!
//! Label sets are bounded: routes are axum's route templates, never raw paths; commands are
//! named by their kind; service ids are bounded by the number of services; no task id is ever a
//! label.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orion_types::Command;
use std::sync::OnceLock;

/// Latency buckets in seconds: from half a millisecond (a local read) to ten seconds (a
/// Docker pull or an election), roughly 2.5x apart.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Entries per Raft log append; commands per proposal and per apply.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle. `None` if
/// another recorder was installed first (then `/metrics` says so).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("orion_raft_append_entries".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("orion_raft_proposal_commands".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("orion_raft_apply_commands".into()),
                        BATCH_BUCKETS,
                    )
                })
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "orion_api_requests_total",
        "HTTP API requests by route, method and status"
    );
    describe_histogram!(
        "orion_api_request_seconds",
        "HTTP API request latency by route"
    );
    describe_counter!(
        "orion_raft_applied_entries_total",
        "Raft entries applied by this node"
    );
    describe_counter!(
        "orion_raft_applied_commands_total",
        "Commands applied, by kind"
    );
    describe_counter!(
        "orion_raft_leader_changes_total",
        "New leaders seen in the log (one per term that elected one)"
    );
    describe_histogram!(
        "orion_raft_append_seconds",
        "Time of one durable (fsync'd) log write; appends queued together share one"
    );
    describe_histogram!(
        "orion_raft_append_entries",
        "Entries per log append asked for by Raft"
    );
    describe_histogram!(
        "orion_raft_proposal_commands",
        "Commands per proposal of the leader's batching proposer (one proposal, one entry)"
    );
    describe_histogram!(
        "orion_raft_apply_commands",
        "Commands per state machine apply (the entries Raft hands over at once; a batched entry counts each command)"
    );
    describe_gauge!("orion_raft_term", "Current Raft term");
    describe_gauge!("orion_raft_commit_index", "Raft commit index");
    describe_gauge!(
        "orion_raft_applied_index",
        "Raft index applied to the state"
    );
    describe_gauge!("orion_raft_is_leader", "1 on the leader");
    describe_gauge!("orion_raft_voters", "Raft voters");
    describe_gauge!("orion_raft_learners", "Raft learners");
    describe_counter!(
        "orion_scheduler_placements_total",
        "Placements proposed to the log"
    );
    describe_gauge!("orion_scheduler_pending_tasks", "Tasks waiting for a node");
    describe_histogram!(
        "orion_controller_turn_seconds",
        "Time of one controller decision (placement included)"
    );
    describe_gauge!(
        "orion_executor_tasks",
        "Tasks placed on this node, by state"
    );
    describe_counter!("orion_executor_passes_total", "Executor reconcile passes");
    describe_histogram!(
        "orion_executor_pass_seconds",
        "Executor reconcile pass time"
    );
    describe_histogram!(
        "orion_docker_call_seconds",
        "Docker engine call latency, by call"
    );
    describe_counter!(
        "orion_docker_errors_total",
        "Docker engine calls that failed, by call"
    );
    describe_gauge!(
        "orion_gossip_members",
        "Gossip members by state, as this node sees them"
    );
    describe_counter!("orion_gossip_sent_bytes_total", "Gossip bytes sent");
    describe_counter!("orion_gossip_received_bytes_total", "Gossip bytes received");
    describe_counter!("orion_gossip_sent_packets_total", "Gossip packets sent");
    describe_counter!(
        "orion_gossip_received_packets_total",
        "Gossip packets received"
    );
    describe_counter!(
        "orion_gossip_bad_packets_total",
        "Gossip packets dropped as garbage or impostors"
    );
    describe_counter!(
        "orion_gossip_packets_dropped_total",
        "Sealed gossip packets dropped before the gossip layer, by reason (forged, replayed, stale, garbage)"
    );
    describe_counter!(
        "orion_rpc_handshakes_refused_total",
        "TLS handshakes refused or timed out on the inter-node RPC port"
    );
    describe_counter!(
        "orion_node_certificates_issued_total",
        "Certificates this node issued for itself (first, renewals, after a CA rotation)"
    );
    describe_counter!(
        "orion_gossip_refusals_total",
        "Gossip datagrams of this node that a host refused (ICMP port unreachable), quoted back"
    );
    describe_counter!(
        "orion_gossip_refused_down_total",
        "Members this node declared dead at once because their host refused its gossip"
    );
    describe_counter!(
        "orion_gossip_suspicions_total",
        "Members this node saw become suspect"
    );
    describe_gauge!(
        "orion_gossip_health_score",
        "Lifeguard local health score (0 is healthy)"
    );
    describe_gauge!(
        "orion_service_replicas",
        "Service replicas: desired, running, healthy"
    );
    describe_gauge!("orion_events_next_index", "Index the next event will get");
}

/// Renders the current figures; the scrape-time gauges must be set just before.
pub fn render() -> String {
    match HANDLE.get().cloned().flatten() {
        Some(h) => h.render(),
        None => String::new(),
    }
}

/// Axum middleware: counts every request by route template, method and status, and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("orion_api_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("orion_api_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Counts what one applied command did (called from the state machine's observer, once per
/// command of a batched entry; the entries themselves are counted by orion-raft).
pub fn applied(cmd: Option<&Command>) {
    match cmd {
        None => {}
        Some(cmd) => {
            metrics::counter!("orion_raft_applied_commands_total", "kind" => cmd.kind())
                .increment(1);
            let placed = match cmd {
                Command::Place { placements, .. } => placements.len() as u64,
                Command::CreatePlacedTask { .. } => 1,
                _ => 0,
            };
            if placed > 0 {
                metrics::counter!("orion_scheduler_placements_total").increment(placed);
            }
        }
    }
}

/// A new leader's first entry was applied.
pub fn leader_changed() {
    metrics::counter!("orion_raft_leader_changes_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_figures_render_in_prometheus_text_with_the_orion_prefix() {
        let _ = install().expect("recorder");
        applied(Some(&Command::DeleteTask {
            task_id: "t".into(),
            at: 1,
        }));
        leader_changed();
        metrics::gauge!("orion_raft_term").set(7.0);
        metrics::histogram!("orion_api_request_seconds", "route" => "/tasks").record(0.003);
        let text = render();
        assert!(
            text.contains("orion_raft_applied_commands_total{kind=\"delete-task\"}"),
            "{text}"
        );
        assert!(text.contains("orion_raft_term 7"), "{text}");
        assert!(
            text.contains("# TYPE orion_api_request_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("orion_api_request_seconds_bucket{route=\"/tasks\",le=\"0.005\"}"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("orion_"), "{line}");
        }
    }
}
