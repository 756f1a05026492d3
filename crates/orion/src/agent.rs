//! The agent: wires consensus, membership, the executor, the leader's controller and the API
//! into one process, and takes them down again in order on SIGTERM/SIGINT.
//!
//! `Node` is the one object that knows all the parts; it implements the narrow traits the
//! API (`orion_api::Backend`) and the executor (`orion_executor::Cluster`) need, so neither
//! of them depends on Raft or gossip.

use crate::config::AgentConfig;
use crate::controller;
use anyhow::{Context, Result};
use axum::body::Body;
use futures_util::StreamExt;
use orion_api::{ApiError, Backend, NodeView, StatusView};
use orion_docker::DockerRuntime;
use orion_gossip::{Gossip, GossipConfig, MemberStatus};
use orion_raft::{NotProposed, RaftConfig, RaftNode, WriteError};
use orion_state::ClusterState;
use orion_types::env::{IdSource, RandomIds, SystemClock};
use orion_types::{Command, NodeMeta, Response, Task};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{info, warn};

/// Logs proxied from another node stream for at most this long without `follow`, and a
/// followed stream ends when the client goes away.
const LOGS_PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// A leaving node waits at most this long for its leave to commit: a shutdown must not hang
/// on a cluster without quorum.
const LEAVE_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Feeds every applied entry to the node's event history.
struct EventsObserver {
    log: Arc<orion_events::EventLog>,
}

impl orion_raft::ApplyObserver for EventsObserver {
    fn applied(
        &self,
        index: u64,
        cmd: Option<&Command>,
        leader: Option<&str>,
        state: &ClusterState,
        touched: &[orion_state::Key],
    ) {
        // Only a new leader's blank entry has no time of its own; it gets this node's clock.
        self.log
            .applied(index, cmd, leader, now_ms(), state, touched);
        crate::metrics::applied(cmd);
        if cmd.is_none() && leader.is_some() {
            crate::metrics::leader_changed();
        }
    }
    fn reset(&self, state: &ClusterState, last_applied: u64) {
        self.log.reset(state, last_applied);
    }
}

pub struct Node {
    pub cfg: AgentConfig,
    pub events: Arc<orion_events::EventLog>,
    pub raft: RaftNode,
    pub gossip: Gossip<NodeMeta>,
    pub docker: DockerRuntime,
    http: reqwest::Client,
    /// For other nodes' HTTPS APIs (`--api-tls`): trusts the cluster's CAs. `None` with
    /// `--insecure`.
    https: Option<reqwest::Client>,
    /// Allocation ids of placements at creation (the controller shares it).
    ids: Arc<dyn IdSource>,
    /// Placements at creation proposed and not yet returned (see `Node::create`).
    placer: Arc<controller::CreatePlacer>,
    /// The sealed gossip transport (its drop counters), unless `--insecure`.
    sealed: Option<Arc<crate::sealed::SealedUdp>>,
    /// This node's secrets, unless `--insecure` (a first join may still replace them).
    secrets: Option<crate::security::LiveSecrets>,
    /// This node's endpoint view (DNS, the mesh and the service object read it).
    pub endpoints: watch::Receiver<Arc<orion_types::endpoint::EndpointView>>,
    /// The failing allocations the executor's probes see, for the health announcer.
    local_unhealthy: watch::Sender<Vec<orion_types::AllocId>>,
}

/// The three write outcomes as HTTP: surely not proposed is 503 (retry), unknown is 504
/// ("may or may not have been applied"), invalid is 400.
fn write_error(e: WriteError) -> ApiError {
    let status = axum::http::StatusCode::from_u16(e.http_status())
        .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    ApiError::new(status, e.client_message())
}

impl Node {
    /// On the leader, with no task waiting, a new task is placed in the same Raft entry that
    /// creates it (one commit instead of two), by the controller's placement code; creates in
    /// flight count each other's placements (`CreatePlacer`), so a burst spreads as the
    /// controller's batches do. Otherwise (a follower, tasks waiting, no room) it is created
    /// pending and the controller places it with the others, first come, first placed.
    async fn create(
        &self,
        task_id: String,
        spec: Box<orion_types::TaskSpec>,
        at: u64,
    ) -> Result<Response, ApiError> {
        let (cmd, _booking) = self.placer.command(
            &self.raft,
            &self.gossip,
            &task_id,
            &spec,
            at,
            self.ids.as_ref(),
        );
        self.raft.write(cmd).await.map_err(write_error)
    }
}

impl Node {
    /// The figures that are a view of the state, set just before a scrape.
    fn set_scrape_gauges(&self) {
        use metrics::gauge;
        let s = self.raft.status();
        gauge!("orion_raft_term").set(s.term as f64);
        gauge!("orion_raft_commit_index").set(s.commit_index as f64);
        gauge!("orion_raft_applied_index").set(s.applied_index as f64);
        gauge!("orion_raft_is_leader").set(f64::from(u8::from(
            s.leader.as_deref() == Some(self.cfg.id.as_str()),
        )));
        gauge!("orion_raft_voters").set(s.voters.len() as f64);
        gauge!("orion_raft_learners").set(s.learners.len() as f64);
        gauge!("orion_events_next_index").set(self.events.next_index() as f64);

        let mut members: BTreeMap<&'static str, u64> =
            [("alive", 0), ("suspect", 0), ("dead", 0), ("left", 0)].into();
        for m in self.gossip.members() {
            let state = match m.status {
                MemberStatus::Alive => "alive",
                MemberStatus::Suspect => "suspect",
                MemberStatus::Down => "dead",
                MemberStatus::Left => "left",
            };
            *members.entry(state).or_default() += 1;
        }
        for (state, n) in members {
            gauge!("orion_gossip_members", "state" => state).set(n as f64);
        }
        let g = self.gossip.stats();
        metrics::counter!("orion_gossip_sent_bytes_total").absolute(g.bytes_sent);
        metrics::counter!("orion_gossip_received_bytes_total").absolute(g.bytes_received);
        metrics::counter!("orion_gossip_sent_packets_total").absolute(g.packets_sent);
        metrics::counter!("orion_gossip_received_packets_total").absolute(g.packets_received);
        metrics::counter!("orion_gossip_bad_packets_total")
            .absolute(g.bad_packets_dropped + g.impostor_packets);
        metrics::counter!("orion_gossip_refusals_total").absolute(g.refusals);
        metrics::counter!("orion_gossip_refused_down_total").absolute(g.refused_down);
        gauge!("orion_gossip_health_score").set(f64::from(self.gossip.local_health()));
        if let Some(sealed) = &self.sealed {
            for (reason, n) in sealed.dropped() {
                metrics::counter!("orion_gossip_packets_dropped_total", "reason" => reason)
                    .absolute(n);
            }
        }

        let (pending, mine, services) = self.raft.read(|st| {
            let pending = st.pending_tasks().count();
            let mut mine: BTreeMap<&'static str, u64> = BTreeMap::new();
            for t in st.tasks_on(&self.cfg.id) {
                *mine.entry(t.state.as_str()).or_default() += 1;
            }
            let services: Vec<(String, orion_state::ReplicaCounts)> = st
                .services
                .values()
                .map(|svc| (svc.id.clone(), st.replica_counts(svc)))
                .collect();
            (pending, mine, services)
        });
        gauge!("orion_scheduler_pending_tasks").set(pending as f64);
        for state in [
            "scheduled",
            "starting",
            "running",
            "completed",
            "failed",
            "stopped",
            "lost",
            "pending",
        ] {
            gauge!("orion_executor_tasks", "state" => state)
                .set(mine.get(state).copied().unwrap_or(0) as f64);
        }
        for (id, c) in services {
            for (kind, n) in [
                ("desired", c.desired),
                ("running", c.running),
                ("healthy", c.healthy),
            ] {
                gauge!("orion_service_replicas", "service" => id.clone(), "kind" => kind)
                    .set(f64::from(n));
            }
        }
    }
}

impl Backend for Node {
    async fn write(&self, cmd: Command) -> Result<Response, ApiError> {
        match cmd {
            Command::CreateTask { task_id, spec, at } => self.create(task_id, spec, at).await,
            cmd => self.raft.write(cmd).await.map_err(write_error),
        }
    }

    async fn consistent_read(&self) -> Result<(), ApiError> {
        // A read changes nothing, so unlike a write a timeout here is not ambiguous: every
        // failure to confirm with the leader is a plain 503.
        self.raft.consistent_read().await.map_err(|e| match e {
            WriteError::NotProposed(NotProposed::Shutdown) => write_error(e),
            other => {
                tracing::debug!(error = %other, "consistent read failed");
                ApiError::unavailable(
                    "cannot confirm with a quorum of voters right now (a partition or an election); retry",
                )
            }
        })
    }

    fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        self.raft.read(f)
    }

    fn nodes(&self) -> Vec<NodeView> {
        let status = self.raft.status();
        let members: BTreeMap<String, orion_gossip::Member<NodeMeta>> = self
            .gossip
            .members()
            .into_iter()
            .map(|m| (m.node_id.clone(), m))
            .collect();
        let (records, usage, revoked) = self.raft.read(|s| {
            (
                s.nodes.clone(),
                s.usage(),
                s.revoked_nodes
                    .keys()
                    .cloned()
                    .collect::<BTreeSet<String>>(),
            )
        });
        // A removed node may still speak gossip (it holds the secret); it is not listed.
        let mut ids: Vec<String> = records
            .keys()
            .chain(members.keys())
            .filter(|id| !revoked.contains(*id))
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let rec = records.get(&id);
                let member = members.get(&id);
                let meta = match (rec, member) {
                    (Some(r), Some(m)) if m.meta.generation > r.meta.generation => m.meta.clone(),
                    (Some(r), _) => r.meta.clone(),
                    (None, Some(m)) => m.meta.clone(),
                    (None, None) => unreachable!("id comes from one of the two maps"),
                };
                let left = rec.is_some_and(|r| r.left && r.meta.generation >= meta.generation);
                let gossip_status = match member.map(|m| m.status) {
                    // It said goodbye in the log, whatever gossip made of its silence.
                    Some(MemberStatus::Down) | None if left => "left",
                    Some(MemberStatus::Alive) => "alive",
                    Some(MemberStatus::Suspect) => "suspect",
                    Some(MemberStatus::Down) => "dead",
                    Some(MemberStatus::Left) => "left",
                    None => "dead",
                };
                let role = if status.leader.as_deref() == Some(id.as_str()) {
                    "leader"
                } else if status.voters.contains(&id) {
                    "voter"
                } else if status.learners.contains(&id) {
                    "learner"
                } else {
                    "none"
                };
                let u = usage.get(&id).cloned().unwrap_or_default();
                NodeView {
                    id: id.clone(),
                    address: meta.gossip_addr.clone(),
                    api_addr: meta.api_addr.clone(),
                    raft_addr: meta.raft_addr.clone(),
                    status: gossip_status.to_string(),
                    role: role.to_string(),
                    recorded: rec
                        .map_or("unregistered", |r| match r.status {
                            orion_state::NodeStatus::Up => "up",
                            orion_state::NodeStatus::Down => "down",
                        })
                        .to_string(),
                    draining: rec.is_some_and(|r| r.draining),
                    generation: meta.generation,
                    labels: meta.labels.clone(),
                    capacity: meta.capacity.into(),
                    allocated: u.allocated.into(),
                    tasks: u.tasks,
                    last_contact_ms: if id == self.cfg.id {
                        Some(0)
                    } else {
                        member.map(|m| m.last_contact.elapsed().as_millis() as u64)
                    },
                    version: meta.version.clone(),
                }
            })
            .collect()
    }

    fn status(&self) -> StatusView {
        let s = self.raft.status();
        StatusView {
            id: self.cfg.id.clone(),
            role: s.role.as_str().to_string(),
            leader: s.leader.clone(),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters.clone(),
            learners: s.learners.clone(),
            membership_changing: s.membership_changing,
            version: env!("CARGO_PKG_VERSION").to_string(),
            gossip_seed: self.gossip.stats().seed,
        }
    }

    fn events(&self) -> Option<Arc<orion_events::EventLog>> {
        Some(self.events.clone())
    }

    fn metrics(&self) -> Option<String> {
        self.set_scrape_gauges();
        Some(crate::metrics::render())
    }

    fn join_token(&self) -> Option<String> {
        let ca = self.raft.read(|s| s.ca.clone());
        self.secrets
            .as_ref()
            .map(|s| crate::pki::join_token_for(&s.get(), ca.as_ref()))
    }

    fn endpoints(&self) -> Arc<orion_types::endpoint::EndpointView> {
        self.endpoints.borrow().clone()
    }

    fn new_gossip_key(&self) -> Option<orion_types::GossipKeyRecord> {
        let secrets = self.secrets.as_ref()?.get();
        let after = self.raft.read(|s| s.gossip_key.as_ref().map(|k| k.id));
        Some(crate::security::new_gossip_key(
            &secrets.secret_bytes(),
            after,
            now_ms(),
        ))
    }

    fn new_cluster_ca(&self) -> Option<Result<orion_types::ClusterCa, String>> {
        let secrets = self.secrets.as_ref()?.get();
        Some(
            orion_security::pki::new_ca()
                .map_err(|e| format!("cannot make a new CA: {e}"))
                .and_then(|(cert, key)| {
                    let der = orion_security::pki::pem_der(&cert).map_err(|e| e.to_string())?;
                    Ok(orion_types::ClusterCa {
                        sealed_key: orion_security::material::seal_ca_key(
                            &secrets.secret_bytes(),
                            &key,
                        ),
                        fingerprint: orion_security::pki::fingerprint_text(&der),
                        cert_pem: cert,
                    })
                }),
        )
    }

    fn new_id(&self) -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    async fn logs(&self, task: Task, follow: bool, tail: Option<usize>) -> Result<Body, ApiError> {
        let Some(node) = task.node.clone() else {
            return Err(ApiError::bad_request(format!(
                "task {} has not been placed on a node",
                task.id
            )));
        };
        if node == self.cfg.id {
            let Some(cid) = task.container_id.clone() else {
                return Err(ApiError::not_found(format!(
                    "task {} has no container yet",
                    task.id
                )));
            };
            let stream = self
                .docker
                .logs(&cid, follow, tail)
                .await
                .map_err(|e| ApiError::not_found(format!("logs of task {}: {e}", task.id)))?;
            return Ok(Body::from_stream(
                stream.map(|r| r.map_err(std::io::Error::other)),
            ));
        }
        // Another node runs it: ask that node's API and pass its stream through.
        let api = self
            .raft
            .read(|s| s.nodes.get(&node).map(|n| n.meta.api_addr.clone()))
            .ok_or_else(|| {
                ApiError::not_found(format!("node {node} of task {} is unknown", task.id))
            })?;
        // A node's API is HTTPS or not by its own --api-tls: try this node's kind first, then
        // the other (a plain request to a TLS port, or the reverse, fails at once).
        let mut tries = vec![("http", &self.http)];
        if let Some(https) = &self.https {
            tries.push(("https", https));
            if self.cfg.api_tls.is_some() {
                tries.reverse();
            }
        }
        let mut failed = None;
        let mut answered = None;
        for (scheme, client) in tries {
            let mut url = format!("{scheme}://{api}/tasks/{}/logs?follow={follow}", task.id);
            if let Some(t) = tail {
                url.push_str(&format!("&tail={t}"));
            }
            let mut req = client.get(url);
            if let Some(s) = &self.secrets {
                // The nodes' own read-only token: this proxy reads another node's API.
                req = req.bearer_auth(orion_security::keys::node_api_token(
                    &s.get().secret_bytes(),
                ));
            }
            if !follow {
                req = req.timeout(LOGS_PROXY_TIMEOUT);
            }
            match req.send().await {
                Ok(r) => {
                    answered = Some(r);
                    break;
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        let resp = answered.ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node} runs task {} but cannot be reached: {}",
                task.id,
                failed.map(|e| e.to_string()).unwrap_or_default()
            ))
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(ApiError::new(status, msg));
        }
        Ok(Body::from_stream(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        ))
    }
}

impl orion_executor::Cluster for Node {
    fn share(&self, node: &str, with_containers: &[&str]) -> Vec<Arc<Task>> {
        self.raft.read(|s| s.executor_share(node, with_containers))
    }
    fn share_version(&self, node: &str) -> u64 {
        self.raft.read(|s| s.share_version(node))
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.raft.subscribe()
    }
    async fn report(&self, cmd: Command) -> Result<(), String> {
        self.raft
            .write(cmd)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn ready(&self) -> Result<(), String> {
        self.raft.consistent_read().await.map_err(|e| e.to_string())
    }
    fn leader_contact_age_ms(&self) -> Option<u64> {
        self.raft.status().last_leader_contact_ms
    }
    fn local_unhealthy(&self, allocs: Vec<orion_types::AllocId>) {
        self.local_unhealthy.send_replace(allocs);
    }
}

/// Runs an agent until SIGTERM/SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    if crate::metrics::install().is_none() {
        warn!("metrics recorder could not be installed; /metrics will be empty");
    }
    let generation = now_ms();
    if cfg.advertise.is_loopback() && cfg.api_bind.ip().is_unspecified() {
        warn!(advertise = %cfg.advertise, "advertising a loopback address: nodes on other hosts cannot reach this one; pass --advertise for a multi-host cluster");
    }
    info!(id = %cfg.id, api = %cfg.api_addr(), api_tls = cfg.api_tls.is_some(), raft = %cfg.raft_addr(), gossip = %cfg.gossip_addr(), data_dir = %cfg.data_dir.display(), "starting orion agent");
    let mut security = crate::security::prepare(&cfg).await?;
    // This node's certificate: from the data dir, issued by the bootstrap's new CA, or for a
    // first join from a member (before this node enters gossip or Raft).
    let pki = match security.as_mut() {
        None => None,
        Some(sec) => {
            let mut pki = crate::pki::NodePki::new(
                cfg.data_dir.clone(),
                &cfg.id,
                cfg.cert_ttl,
                &sec.secrets,
                cfg.api_tls.clone(),
            )?;
            if !pki.has_cert() && !cfg.join.is_empty() {
                let cert = crate::security::obtain_certificate(&cfg, sec).await?;
                cert.save(&cfg.data_dir)
                    .context("cannot save this node's certificate")?;
                // Again, under the token that worked (a credentials-file entry may have
                // replaced the first one meanwhile): it pins the CA this node trusts.
                pki = crate::pki::NodePki::new(
                    cfg.data_dir.clone(),
                    &cfg.id,
                    cfg.cert_ttl,
                    &sec.secrets,
                    cfg.api_tls.clone(),
                )?;
            }
            Some(pki)
        }
    };

    let api_listener = tokio::net::TcpListener::bind(cfg.api_bind)
        .await
        .with_context(|| format!("cannot listen on the API port {}", cfg.api_bind))?;

    let mut raft_cfg = RaftConfig::new(
        cfg.id.clone(),
        cfg.data_dir.clone(),
        cfg.raft_bind,
        cfg.raft_addr(),
        cfg.api_addr().to_string(),
    );
    raft_cfg.snapshot_logs = cfg.snapshot_logs;
    raft_cfg.tls = pki.as_ref().map(|p| p.rpc_tls()).transpose()?;
    // The join service shares the gossip port number, over TCP.
    let join_listener = match &pki {
        Some(_) => Some(
            tokio::net::TcpListener::bind(cfg.gossip_bind)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on the gossip port {} (TCP, for joins)",
                        cfg.gossip_bind
                    )
                })?,
        ),
        None => None,
    };
    // The engine's ping and opening the stores are independent: do both at once, start-up
    // time is the sum of what is left.
    let (docker, raft) = tokio::join!(DockerRuntime::connect(), RaftNode::start(raft_cfg));
    let docker =
        docker.context("cannot reach the Docker engine (DOCKER_HOST or /var/run/docker.sock)")?;
    let raft = raft.context("cannot start consensus")?;
    let events = Arc::new(orion_events::EventLog::new(&ClusterState::default(), 0));
    raft.add_apply_observer(Arc::new(EventsObserver {
        log: events.clone(),
    }));
    // Bootstrapping (two fsyncs and a one-voter election) runs while gossip and the API come
    // up; writes that arrive first wait for the leader like any write during an election.
    let bootstrap = cfg.bootstrap.then(|| {
        let raft = raft.clone();
        tokio::spawn(async move { raft.bootstrap().await })
    });

    let meta = NodeMeta {
        id: cfg.id.clone(),
        generation,
        api_addr: cfg.api_addr().to_string(),
        raft_addr: cfg.raft_addr().to_string(),
        gossip_addr: cfg.gossip_addr().to_string(),
        publish_ip: cfg.publish_ip.to_string(),
        capacity: cfg.capacity,
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut gcfg = GossipConfig::lan_fast(
        cfg.id.clone(),
        cfg.gossip_bind,
        cfg.gossip_addr(),
        generation,
    );
    gcfg.lifeguard.enabled = cfg.lifeguard;
    gcfg.down_on_refusal = cfg.refusal_detection;
    // Drawn here and logged, so a run's gossip decisions can be told apart and replayed.
    gcfg.seed = orion_types::env::os_seed();
    info!(gossip_seed = gcfg.seed, "gossip RNG seeded");
    let (gossip, sealed) = match &security {
        None => (
            orion_gossip::spawn(gcfg, meta)
                .await
                .context("cannot start gossip")?,
            None,
        ),
        Some(sec) => {
            let socket = orion_gossip::UdpTransport::bind(cfg.gossip_bind)
                .await
                .with_context(|| format!("cannot listen on the gossip port {}", cfg.gossip_bind))?;
            let sealed = Arc::new(crate::sealed::SealedUdp::new(
                socket,
                crate::security::keyring(&sec.secrets),
            ));
            let gossip = orion_gossip::spawn_with_transport(gcfg, meta, sealed.clone())
                .context("cannot start gossip")?;
            (gossip, Some(sealed))
        }
    };
    if !cfg.join.is_empty() {
        gossip
            .join(&cfg.join)
            .await
            .context("cannot join the cluster")?;
    }
    let live = security
        .as_ref()
        .map(|s| crate::security::LiveSecrets::new(s.secrets.clone()));
    if let Some(sec) = &security {
        let ca = raft.read(|s| s.ca.clone());
        crate::security::register(&cfg, &sec.secrets, ca.as_ref());
        // Right after a restart the local state may not yet hold a CA rotation it had applied
        // before (the state rows are written behind; the log replays them), so the entry just
        // written can name the old CA. Once a consistent read says this replica has caught up,
        // the entry is written again if the CA differs (found by the security test
        // `the_api_serves_https_under_the_cluster_ca_and_the_cli_checks_it`: a restart right
        // after `orion ca rotate` left the CLI trusting the old CA).
        let (raft, cfg, secrets) = (raft.clone(), cfg.clone(), sec.secrets.clone());
        tokio::spawn(async move {
            for _ in 0..50 {
                if raft.consistent_read().await.is_ok() {
                    let ca = raft.read(|s| s.ca.clone());
                    crate::security::register(&cfg, &secrets, ca.as_ref());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            warn!(
                "no consistent read within 10 s of the start: the credentials file keeps the \
                 CA this node knew at start (`orion ca show` gives the cluster's)"
            );
        });
    }

    orion_security::tls::install_default_provider();
    let http = reqwest::Client::builder()
        .local_address(cfg.advertise)
        .connect_timeout(Duration::from_secs(2))
        .tls_backend_preconfigured(orion_security::tls::plain_http_client_config())
        .build()
        .context("cannot build the HTTP client")?;
    let https = match &pki {
        Some(p) => Some(
            reqwest::Client::builder()
                .local_address(cfg.advertise)
                .connect_timeout(Duration::from_secs(2))
                .tls_backend_preconfigured(
                    orion_security::tls::api_client_config(
                        orion_security::tls::ApiVerifier::of_cluster(p.store.clone()),
                    )
                    .context("TLS client configuration")?,
                )
                .build()
                .context("cannot build the HTTPS client")?,
        ),
        None => None,
    };
    let ids: Arc<dyn IdSource> = Arc::new(RandomIds::default());
    // endpoint view: read by DNS and the mesh
    let (endpoints_tx, endpoints) =
        watch::channel(Arc::new(crate::discovery::build_view(&raft, &gossip)));
    let (local_unhealthy, unhealthy_rx) = watch::channel(Vec::new());
    let placer = controller::CreatePlacer::observing(&raft);
    let node = Arc::new(Node {
        cfg: cfg.clone(),
        events,
        raft,
        gossip,
        docker: docker.clone(),
        http,
        https,
        ids: ids.clone(),
        placer,
        sealed,
        secrets: live.clone(),
        endpoints: endpoints.clone(),
        local_unhealthy,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // The routing mesh: ingress ports and VIPs, forwarding by the endpoint view.
    let mesh = crate::mesh::spawn(&cfg, endpoints.clone(), docker.clone(), stop_rx.clone());
    let dns = crate::discovery::spawn_dns(
        vec![std::net::SocketAddr::new(cfg.api_bind.ip(), cfg.dns_port)],
        cfg.advertise,
        endpoints.clone(),
        stop_rx.clone(),
    );
    // The node's container network is made (or found) in the background, so the API never
    // waits for the engine; the executor and DNS on the network's gateway start once it is.
    let executor = {
        let (docker, node, cfg) = (docker.clone(), node.clone(), cfg.clone());
        let (endpoints, stop) = (endpoints.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let network = crate::discovery::container_network(&docker, &cfg.id).await;
            let gateway_dns = crate::discovery::spawn_gateway_dns(
                network.as_ref(),
                cfg.advertise,
                endpoints,
                stop.clone(),
            );
            let executor = orion_executor::spawn(
                orion_executor::ExecutorConfig {
                    node_id: cfg.id.clone(),
                    publish_ip: cfg.publish_ip.to_string(),
                    backoff: cfg.backoff,
                    network,
                },
                docker,
                node,
                Arc::new(orion_types::env::SystemClock),
                stop,
            );
            let _ = executor.await;
            for d in gateway_dns {
                let _ = d.await;
            }
        })
    };
    let driver = controller::Driver {
        raft: node.raft.clone(),
        gossip: node.gossip.clone(),
        clock: Arc::new(SystemClock),
        ids,
        settings: orion_controller::Settings {
            node_id: cfg.id.clone(),
            voter_grace_ms: cfg.voter_grace_ms,
            // Only the bootstrapping node's flags seed the cluster config.
            seed_config: cfg.bootstrap.then(|| cfg.cluster_config()),
        },
    };
    let controller = tokio::spawn(controller::run(driver, stop_rx.clone()));
    let view_task = tokio::spawn(crate::discovery::run_view(
        node.raft.clone(),
        node.gossip.clone(),
        endpoints_tx,
        stop_rx.clone(),
    ));
    let announcer = tokio::spawn(crate::discovery::run_announcer(
        node.gossip.clone(),
        unhealthy_rx,
        stop_rx.clone(),
    ));
    let membership_log = tokio::spawn(log_membership(node.gossip.subscribe()));
    if let (Some(sec), Some(sealed)) = (&security, &node.sealed) {
        tokio::spawn(crate::security::run_gossip_keys(
            node.raft.clone(),
            sealed.clone(),
            sec.secrets.secret_bytes(),
            stop_rx.clone(),
        ));
    }
    if let (Some(pki), Some(listener)) = (&pki, join_listener) {
        tokio::spawn(pki.clone().run(node.raft.clone(), stop_rx.clone()));
        tokio::spawn(crate::join::serve(
            listener,
            pki.clone(),
            node.raft.clone(),
            node.gossip.clone(),
            stop_rx.clone(),
        ));
    }

    let mut app = orion_api::router(node.clone())
        .route_layer(axum::middleware::from_fn(crate::metrics::track));
    if let (Some(sec), Some(live)) = (&security, &live) {
        app = orion_api::authenticate(
            app,
            node.clone(),
            orion_api::AuthConfig {
                node_token_hash: live.node_token_hash.clone(),
            },
        );
        if sec.secrets.admin_token.is_some() {
            tokio::spawn(crate::security::ensure_admin_token(
                node.raft.clone(),
                sec.secrets.clone(),
            ));
        }
    }
    let mut api_stop = stop_rx.clone();
    let api_tls = pki
        .as_ref()
        .map(|p| p.api_server_config())
        .transpose()?
        .flatten();
    let api = tokio::spawn(async move {
        let shutdown = async move {
            let _ = api_stop.wait_for(|s| *s).await;
        };
        let served = match api_tls {
            Some(tls) => match crate::https::TlsListener::new(api_listener, tls) {
                Ok(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
                Err(e) => Err(e),
            },
            None => {
                // Answers are small and clients wait on them: no Nagle delay.
                let api_listener = axum::serve::ListenerExt::tap_io(api_listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(api_listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            warn!(error = %e, "API server ended");
        }
    });
    if let Some(b) = bootstrap {
        let res = b
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap task failed: {e}"))
            .and_then(|r| r.context("cannot bootstrap the cluster"));
        if let Err(e) = res {
            let _ = stop_tx.send(true);
            node.raft.shutdown().await;
            return Err(e);
        }
    }
    info!(id = %cfg.id, "orion agent ready");

    shutdown_signal().await;
    info!("shutting down: leaving gossip and Raft");
    let _ = stop_tx.send(true);
    let others_alive = node
        .gossip
        .members()
        .iter()
        .any(|m| m.node_id != cfg.id && m.status == MemberStatus::Alive);
    let _ = controller.await;
    let _ = executor.await;
    let _ = view_task.await;
    let _ = announcer.await;
    for d in dns {
        let _ = d.await;
    }
    membership_log.abort();
    if others_alive {
        // Say so in the log first: the leader then re-places our tasks at once and takes our
        // Raft seat away, rather than waiting for gossip to call us dead.
        let cmd = Command::NodeLeave {
            node: cfg.id.clone(),
            generation,
            at: now_ms(),
        };
        match tokio::time::timeout(LEAVE_WRITE_TIMEOUT, node.raft.write(cmd)).await {
            Ok(Ok(_)) => info!("recorded our leave in the cluster state"),
            Ok(Err(e)) => warn!(error = %e, "could not record our leave; gossip will tell"),
            Err(_) => warn!("recording our leave timed out; gossip will tell"),
        }
    }
    node.gossip.leave().await;
    if others_alive {
        // Our tasks will be placed elsewhere: do not leave them running here as duplicates.
        remove_own_containers(&docker, &cfg.id).await;
        let network = crate::discovery::network_name(&cfg.id);
        if let Err(e) = docker.remove_network(&network).await {
            warn!(%network, error = %e, "could not remove this node's network on leave");
        }
    }
    mesh.shutdown().await;
    node.raft.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    info!("stopped");
    Ok(())
}

/// One log line per membership change, as this node's gossip sees it.
async fn log_membership(
    mut events: tokio::sync::broadcast::Receiver<orion_gossip::MemberEvent<NodeMeta>>,
) {
    use orion_gossip::MemberEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(ev) => {
                let m = ev.member();
                let what = match &ev {
                    MemberEvent::Up(_) => "up",
                    MemberEvent::Suspect(_) => {
                        metrics::counter!("orion_gossip_suspicions_total").increment(1);
                        "suspect"
                    }
                    MemberEvent::Down(_) => "down",
                    MemberEvent::Left(_) => "left",
                };
                info!(member = %m.node_id, generation = m.generation, addr = %m.addr, "member is {what}");
            }
            Err(RecvError::Lagged(n)) => warn!(missed = n, "membership log lagged"),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Containers stopped at once on leave: like the executor's own bound on removals.
const LEAVE_REMOVES_IN_FLIGHT_MAX: usize = orion_executor::REMOVES_IN_FLIGHT_MAX;

async fn remove_own_containers(docker: &DockerRuntime, node: &str) {
    match docker.list(&[(orion_executor::LABEL_NODE, node)]).await {
        Ok(list) => {
            let grace = Duration::from_millis(orion_executor::STOP_GRACE_MS);
            futures_util::stream::iter(list)
                .for_each_concurrent(LEAVE_REMOVES_IN_FLIGHT_MAX, |c| async move {
                    let _ = docker.stop(&c.id, grace).await;
                    if let Err(e) = docker.remove(&c.id).await {
                        warn!(container = %c.id, error = %e, "could not remove container on leave");
                    }
                })
                .await;
        }
        Err(e) => warn!(error = %e, "could not list containers on leave"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use orion_raft::Unknown;

    #[test]
    fn each_write_outcome_has_its_status() {
        let cases = [
            (WriteError::no_leader(), StatusCode::SERVICE_UNAVAILABLE),
            (
                WriteError::NotProposed(NotProposed::Shutdown),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                WriteError::Unknown(Unknown::AnswerLost("reset".into())),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                WriteError::Unknown(Unknown::LeaderShutdown),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                WriteError::Rejected(orion_types::api::ValidationError {
                    field: "memory".into(),
                    message: "too small".into(),
                }),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (e, want) in cases {
            let what = e.to_string();
            assert_eq!(write_error(e).status, want, "{what}");
        }
    }
}
