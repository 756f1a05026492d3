//! The command-line client: Docker-like subcommands that talk to any node's HTTP API
//! (`--addr`, `ORION_ADDR`). Human tables by default, `--json` for scripts; an error is one
//! line on stderr and a non-zero exit.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::time::{Duration, SystemTime};

mod progress;
mod service;
mod stack;

/// How long `run --wait` waits for a task to run or fail.
const WAIT_LIMIT: Duration = Duration::from_secs(300);
/// Every request but a followed log stream is bounded by this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Address of any Orion node's API
    #[arg(long, env = "ORION_ADDR", default_value = "http://127.0.0.1:8000")]
    pub addr: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// API token [default: ORION_TOKEN, else the credentials file's entry for --addr]
    #[arg(long)]
    pub token: Option<String>,
    /// For an https:// --addr (a node with --api-tls): trust the CA in this PEM file
    /// (`orion ca show --pem` prints it)
    #[arg(long, env = "ORION_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// For an https:// --addr: trust the CA with this fingerprint (sha256:<hex>, as `orion ca
    /// show` and the join token name it) [default: the credentials file's entry for --addr]
    #[arg(long, env = "ORION_CA_FINGERPRINT", value_name = "SHA256")]
    pub ca_fingerprint: Option<String>,
}

/// `sha256:<64 hex digits>` (the prefix may be left out).
fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let h = s.trim();
    let h = h.strip_prefix("sha256:").unwrap_or(h);
    hex::decode(h).ok()?.try_into().ok()
}

impl ClientArgs {
    /// How the CLI checks an https:// API: the CA of `--ca-cert`, and the fingerprint of
    /// `--ca-fingerprint` or else the one the credentials file keeps for `--addr`.
    pub fn api_tls(&self) -> Result<rustls::ClientConfig> {
        let mut cas = Vec::new();
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--ca-cert {}", path.display()))?;
            for block in pem.split_inclusive("-----END CERTIFICATE-----") {
                if block.contains("-----BEGIN CERTIFICATE-----") {
                    cas.push(
                        orion_security::pki::pem_der(block)
                            .map_err(|e| anyhow!("--ca-cert {}: {e}", path.display()))?,
                    );
                }
            }
            if cas.is_empty() {
                bail!("--ca-cert {}: no PEM certificate in it", path.display());
            }
        }
        let mut pins = std::collections::BTreeSet::new();
        match &self.ca_fingerprint {
            Some(f) => {
                pins.insert(parse_fingerprint(f).ok_or_else(|| {
                    anyhow!("--ca-fingerprint {f:?}: expected sha256:<64 hex digits>")
                })?);
            }
            None => {
                if let Some(e) = orion_security::credentials::default_path().and_then(|p| {
                    orion_security::credentials::find(&p, &self.addr)
                        .ok()
                        .flatten()
                }) && let Some(f) = parse_fingerprint(&e.ca_fingerprint)
                {
                    pins.insert(f);
                }
            }
        }
        if pins.is_empty() && cas.is_empty() {
            bail!(
                "{}: no CA to check the API's certificate against: pass --ca-cert FILE (`orion ca show --pem` on a member prints it) or --ca-fingerprint sha256:... (`orion ca show`)",
                self.addr
            );
        }
        orion_security::tls::api_client_config(orion_security::tls::ApiVerifier::new(pins, cas))
            .context("TLS client configuration")
    }

    /// The API token to send: `--token`, then `ORION_TOKEN` (unless it holds a join token),
    /// then the credentials file's entry for `--addr`.
    pub fn api_token(&self) -> Option<String> {
        if let Some(t) = self.token.clone().filter(|t| !t.trim().is_empty()) {
            return Some(t.trim().to_string());
        }
        if let Ok(t) = std::env::var("ORION_TOKEN")
            && !t.trim().is_empty()
            && !t.trim().starts_with("ORNTKN-")
        {
            return Some(t.trim().to_string());
        }
        let path = orion_security::credentials::default_path()?;
        orion_security::credentials::find(&path, &self.addr)
            .ok()
            .flatten()
            .map(|e| e.admin_token)
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// A live terminal dashboard of nodes, services, tasks, deployments and events
    Ui(crate::ui::UiArgs),
    /// Print this binary's version
    Version {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: orion completion bash > /etc/bash_completion.d/orion
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Run a task: orion run [-p 8080:80] [-m 100m] IMAGE [CMD...]
    Run(Box<RunArgs>),
    /// List tasks (running and waiting; -a for all)
    Ps {
        #[command(flatten)]
        c: ClientArgs,
        /// Show all tasks, also stopped, completed and failed
        #[arg(short, long)]
        all: bool,
        /// Only tasks on this node
        #[arg(long)]
        node: Option<String>,
    },
    /// Show a task in full (JSON)
    Inspect {
        #[command(flatten)]
        c: ClientArgs,
        id: String,
    },
    /// Stop and remove tasks
    Rm {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List the cluster's nodes
    Nodes {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show the answering node's Raft status
    Status {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Stop placing tasks on a node and move its tasks elsewhere
    Drain {
        #[command(flatten)]
        c: ClientArgs,
        node: String,
    },
    /// Let a drained node take tasks again
    Undrain {
        #[command(flatten)]
        c: ClientArgs,
        node: String,
    },
    /// Print the cluster's events (tasks, services, deployments, nodes) in Raft order
    Events {
        #[command(flatten)]
        c: ClientArgs,
        /// Keep streaming new events
        #[arg(short, long)]
        follow: bool,
        /// Start at this event index (the last one seen plus one, to resume) [default: the
        /// oldest this node holds]
        #[arg(long)]
        since: Option<u64>,
        /// Only these topics: task, service, deployment, node (repeatable or comma separated)
        #[arg(long, value_delimiter = ',')]
        topic: Vec<String>,
    },
    /// Cluster-wide settings
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Manage services: create, ls, ps, inspect, update, scale, rollback, rm
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Deploy a compose file as a stack: orion deploy [-f FILE]... [-p NAME] [--dry-run]
    Deploy(Box<stack::DeployArgs>),
    /// Manage stacks (the services of a compose file): ls, ps, rm
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// API tokens: create, ls, rm (admin)
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print the join token a new node passes to --token
    JoinToken {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// The cluster CA: show, rotate (admin)
    #[command(subcommand)]
    Ca(CaCmd),
    /// The gossip encryption key: rotate (admin)
    #[command(subcommand)]
    GossipKey(GossipKeyCmd),
    /// Nodes: ls, rm (admin; revokes the node's certificate)
    #[command(subcommand)]
    Node(NodeCmd),
    /// Print a task's container logs, from whichever node runs it
    Logs {
        #[command(flatten)]
        c: ClientArgs,
        id: String,
        /// Keep streaming new output
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines
        #[arg(long)]
        tail: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Print the CA's fingerprint, the previous CA's and the revoked node ids
    Show {
        #[command(flatten)]
        c: ClientArgs,
        /// Print only the CA certificate (PEM), e.g. for `curl --cacert`
        #[arg(long)]
        pem: bool,
    },
    /// Make a new CA: every node re-issues its certificate under it, the old one stays trusted
    /// until the next rotation. Prints the new join token (the credentials file is updated)
    Rotate {
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum GossipKeyCmd {
    /// Make a new gossip key: every node accepts it at once and seals with it a moment later;
    /// the old key is still accepted until the next rotation
    Rotate {
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the cluster's nodes (as `orion nodes`)
    Ls {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Remove nodes: their tasks move, their Raft seats go, their certificates are revoked
    Rm {
        #[command(flatten)]
        c: ClientArgs,
        /// Remove a node gossip still sees alive
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token; its secret is printed this once
    Create {
        #[command(flatten)]
        c: ClientArgs,
        /// admin, operator or read-only
        #[arg(long, default_value = "read-only")]
        role: String,
        /// A name for people
        name: Option<String>,
        /// The same, as a flag
        #[arg(long = "name", conflicts_with = "name")]
        name_flag: Option<String>,
    },
    /// Print the token this CLI sends to --addr (from --token, ORION_TOKEN or the
    /// credentials file), for scripts: curl -H "Authorization: Bearer $(orion token show)"
    Show {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List the tokens (never their secrets)
    Ls {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Revoke tokens by id
    Rm {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Show the cluster-wide settings, or change the ones given
    Config(Box<ConfigArgs>),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Placement strategy for tasks that do not name one: spread or binpack
    #[arg(long)]
    strategy: Option<String>,
    /// Host ports chosen for "0"/"" port bindings, FIRST-LAST
    #[arg(long)]
    dynamic_ports: Option<String>,
    /// Most Raft voters (the leader keeps an odd count up to this)
    #[arg(long)]
    voters: Option<u64>,
    /// First restart delay after a container exits, in ms
    #[arg(long)]
    restart_base_ms: Option<u64>,
    /// Longest restart delay, in ms
    #[arg(long)]
    restart_max_ms: Option<u64>,
    /// A container that ran this long resets its restart back-off, in ms
    #[arg(long)]
    restart_reset_ms: Option<u64>,
    /// Block service VIPs are allocated from, A.B.C.D/N (for services created afterwards)
    #[arg(long)]
    vip_range: Option<String>,
}

impl ConfigArgs {
    /// The `PUT /cluster/config` body of the flags given; `None` when none is (a plain show).
    fn patch(&self) -> Option<Value> {
        let mut body = Map::new();
        if let Some(s) = &self.strategy {
            body.insert("strategy".into(), json!(s));
        }
        if let Some(p) = &self.dynamic_ports {
            body.insert("dynamicPorts".into(), json!(p));
        }
        if let Some(r) = &self.vip_range {
            body.insert("vipRange".into(), json!(r));
        }
        let numbers = [
            ("voters", self.voters),
            ("restartBaseMs", self.restart_base_ms),
            ("restartMaxMs", self.restart_max_ms),
            ("restartResetAfterMs", self.restart_reset_ms),
        ];
        for (field, n) in numbers {
            if let Some(n) = n {
                body.insert(field.into(), json!(n));
            }
        }
        (!body.is_empty()).then_some(Value::Object(body))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Publish a port: HOST:CONTAINER[/udp], or CONTAINER alone for a free host port
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Memory limit, e.g. 100m, 1g
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPU limit in cores, e.g. 0.5
    #[arg(long)]
    cpus: Option<f64>,
    /// Environment variable K=V
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// A name for the task
    #[arg(long)]
    name: Option<String>,
    /// always, on-failure or never
    #[arg(long)]
    restart: Option<String>,
    /// Task label k=v
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Placement constraint, e.g. 'node.labels.zone==a'
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Placement strategy: spread or binpack
    #[arg(long)]
    strategy: Option<String>,
    /// Stop the container when its node is cut off from the quorum this long, e.g. 30s
    #[arg(long)]
    stop_after_disconnect: Option<String>,
    /// Wait until the task runs or fails, showing progress
    #[arg(long)]
    wait: bool,
    /// Image to run
    image: String,
    /// Command and arguments for the container
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The typed edge of the HTTP API that the CLI and the terminal UI share.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) fn with_token(c: &ClientArgs, token: Option<String>) -> Result<Api> {
        let mut base = c.addr.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            base = format!("http://{base}");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("--token: not a valid header value")?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(3));
        if base.starts_with("https://") {
            builder = builder.tls_backend_preconfigured(c.api_tls()?);
        }
        let http = builder.build().context("cannot build an HTTP client")?;
        Ok(Api { base, http })
    }

    /// What the CLI does: with the token `c` finds by itself.
    pub(crate) fn new(c: &ClientArgs) -> Result<Api> {
        Api::with_token(c, c.api_token())
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            let cause = root_cause(&e);
            // rustls's wording around the API verifier's one line.
            let cause = cause
                .strip_prefix("unexpected error: ")
                .map(str::to_string)
                .unwrap_or(cause);
            // A TLS server answers a plain request with an alert, which hyper reads as a
            // bad status line.
            let hint = if self.base.starts_with("http://") && cause.contains("invalid HTTP") {
                " (does the node serve HTTPS, --api-tls? then use --addr https://...)"
            } else {
                ""
            };
            anyhow!("cannot reach orion at {}: {cause}{hint}", self.base)
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = value["error"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| value.to_string());
            bail!("{msg}");
        }
        Ok(value)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub async fn run(cmd: ClientCmd) -> Result<()> {
    match cmd {
        ClientCmd::Version { .. } | ClientCmd::Completion { .. } => {
            // main answers these before it starts a runtime.
            Ok(())
        }
        ClientCmd::Ui(args) => crate::ui::run(args).await,
        ClientCmd::Run(args) => run_task(*args).await,
        ClientCmd::Service(cmd) => service::run(cmd).await,
        ClientCmd::Deploy(args) => stack::deploy(*args).await,
        ClientCmd::Stack(cmd) => stack::run(cmd).await,
        ClientCmd::Ps { c, all, node } => {
            let api = Api::new(&c)?;
            let mut path = "/tasks".to_string();
            if let Some(n) = &node {
                path.push_str(&format!("?node={n}"));
            }
            let tasks = api.get(&path).await?;
            let mut list: Vec<Value> = tasks.as_array().cloned().unwrap_or_default();
            if !all {
                list.retain(|t| {
                    !matches!(
                        t["state"].as_str(),
                        Some("stopped" | "completed" | "failed")
                    )
                });
            }
            if c.json {
                return print_json(&Value::Array(list));
            }
            let rows = list.iter().map(|t| {
                vec![
                    short(t["id"].as_str().unwrap_or("")),
                    t["name"].as_str().unwrap_or("").to_string(),
                    t["image"].as_str().unwrap_or("").to_string(),
                    t["state"].as_str().unwrap_or("").to_string(),
                    t["node"].as_str().unwrap_or("-").to_string(),
                    ports_text(&t["ports"]),
                    t["restarts"].to_string(),
                    age(t["createdAt"].as_str()),
                ]
            });
            print_table(
                &[
                    "ID", "NAME", "IMAGE", "STATE", "NODE", "PORTS", "RESTARTS", "CREATED",
                ],
                rows,
            );
            Ok(())
        }
        ClientCmd::Inspect { c, id } => {
            let api = Api::new(&c)?;
            print_json(&api.get(&format!("/tasks/{id}")).await?)
        }
        ClientCmd::Rm { c, ids } => delete_each(&Api::new(&c)?, "tasks", "task", "", ids).await,
        ClientCmd::Nodes { c } => {
            let api = Api::new(&c)?;
            let nodes = api.get("/nodes").await?;
            if c.json {
                return print_json(&nodes);
            }
            let rows = nodes
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|n| {
                    let mut status = n["status"].as_str().unwrap_or("").to_string();
                    if n["draining"].as_bool() == Some(true) {
                        status.push_str(",draining");
                    }
                    vec![
                        n["id"].as_str().unwrap_or("").to_string(),
                        status,
                        n["role"].as_str().unwrap_or("").to_string(),
                        n["apiAddr"].as_str().unwrap_or("").to_string(),
                        format!(
                            "{} / {}",
                            bytes(n["allocated"]["memory"].as_u64().unwrap_or(0)),
                            bytes(n["capacity"]["memory"].as_u64().unwrap_or(0))
                        ),
                        format!(
                            "{} / {}",
                            n["allocated"]["cpu"].as_f64().unwrap_or(0.0),
                            n["capacity"]["cpu"].as_f64().unwrap_or(0.0)
                        ),
                        n["tasks"].to_string(),
                        labels_text(&n["labels"]),
                    ]
                });
            print_table(
                &[
                    "ID", "STATUS", "ROLE", "API", "MEMORY", "CPU", "TASKS", "LABELS",
                ],
                rows,
            );
            Ok(())
        }
        ClientCmd::Status { c } => {
            let api = Api::new(&c)?;
            let s = api.get("/status").await?;
            if c.json {
                return print_json(&s);
            }
            println!("node:     {}", s["id"].as_str().unwrap_or(""));
            println!("role:     {}", s["role"].as_str().unwrap_or(""));
            println!("leader:   {}", s["leader"].as_str().unwrap_or("none"));
            println!("term:     {}", s["term"]);
            println!("commit:   {}", s["commitIndex"]);
            println!("applied:  {}", s["appliedIndex"]);
            println!("voters:   {}", join(&s["voters"]));
            println!("learners: {}", join(&s["learners"]));
            Ok(())
        }
        ClientCmd::Cluster {
            cmd: ClusterCmd::Config(a),
        } => cluster_config(*a).await,
        ClientCmd::Token(cmd) => token_cmd(cmd).await,
        ClientCmd::JoinToken { c } => {
            let api = Api::new(&c)?;
            let v = api.get("/join-token").await?;
            if c.json {
                return print_json(&v);
            }
            println!("{}", v["token"].as_str().unwrap_or(""));
            Ok(())
        }
        ClientCmd::Ca(cmd) => ca_cmd(cmd).await,
        ClientCmd::GossipKey(GossipKeyCmd::Rotate { c }) => {
            let api = Api::new(&c)?;
            let v = api
                .call(reqwest::Method::POST, "/gossip-key/rotate", None)
                .await?;
            if c.json {
                return print_json(&v);
            }
            println!("gossip key {} in use", v["keyId"]);
            Ok(())
        }
        ClientCmd::Node(NodeCmd::Ls { c }) => Box::pin(run(ClientCmd::Nodes { c })).await,
        ClientCmd::Node(NodeCmd::Rm { c, force, ids }) => {
            let query = format!("?force={force}");
            delete_each(&Api::new(&c)?, "nodes", "node", &query, ids).await
        }
        ClientCmd::Drain { c, node } => set_drain(c, node, "drain").await,
        ClientCmd::Undrain { c, node } => set_drain(c, node, "undrain").await,
        ClientCmd::Logs {
            c,
            id,
            follow,
            tail,
        } => {
            let api = Api::new(&c)?;
            let mut url = format!("{}/tasks/{id}/logs?follow={follow}", api.base);
            if let Some(t) = tail {
                url.push_str(&format!("&tail={t}"));
            }
            let resp = open_stream(&api, url, follow, "logs are not available").await?;
            let mut stream = resp.bytes_stream();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.context("log stream broke")?;
                out.write_all(&chunk)?;
                out.flush()?;
            }
            Ok(())
        }
        ClientCmd::Events {
            c,
            follow,
            since,
            topic,
        } => print_events(c, follow, since, topic).await,
    }
}

/// Opens a streamed answer (logs, events): bounded in time unless followed; a refusal is the
/// node's JSON error, or `otherwise`.
async fn open_stream(
    api: &Api,
    url: String,
    follow: bool,
    otherwise: &str,
) -> Result<reqwest::Response> {
    let mut req = api.http.get(url);
    if !follow {
        req = req.timeout(REQUEST_TIMEOUT);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach orion at {}: {}", api.base, root_cause(&e)))?;
    if !resp.status().is_success() {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("{}", v["error"].as_str().unwrap_or(otherwise));
    }
    Ok(resp)
}

/// `orion events`: one line per event (`--json`: the API's JSON lines as they come).
async fn print_events(
    c: ClientArgs,
    follow: bool,
    since: Option<u64>,
    topics: Vec<String>,
) -> Result<()> {
    let api = Api::new(&c)?;
    let mut url = format!("{}/events?follow={follow}", api.base);
    if let Some(i) = since {
        url.push_str(&format!("&index={i}"));
    }
    if !topics.is_empty() {
        url.push_str(&format!("&topic={}", topics.join(",")));
    }
    let resp = open_stream(&api, url, follow, "events are not available").await?;
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        partial.extend_from_slice(&chunk.context("event stream broke")?);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let rest = partial.split_off(pos + 1);
            let line = std::mem::replace(&mut partial, rest);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if c.json {
                writeln!(out, "{text}")?;
            } else {
                let e: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if let Some(err) = e["error"].as_str() {
                    bail!("{err}");
                }
                let p = &e["payload"];
                let detail = ["state", "node", "status", "message", "reason", "leader"]
                    .iter()
                    .filter_map(|k| p[*k].as_str().map(|v| format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join(" ");
                writeln!(
                    out,
                    "{:<12} {}  {:<10} {:<10} {:<34} {detail}",
                    e["index"],
                    e["at"].as_str().unwrap_or(""),
                    e["topic"].as_str().unwrap_or(""),
                    e["type"].as_str().unwrap_or(""),
                    e["key"].as_str().unwrap_or(""),
                )?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

async fn cluster_config(a: ConfigArgs) -> Result<()> {
    let api = Api::new(&a.c)?;
    let config = match a.patch() {
        Some(body) => {
            api.call(reqwest::Method::PUT, "/cluster/config", Some(body))
                .await?
        }
        None => api.get("/cluster/config").await?,
    };
    if a.c.json {
        return print_json(&config);
    }
    let text = |f: &str| match &config[f] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("strategy:        {}", text("strategy"));
    println!("dynamic ports:   {}", text("dynamicPorts"));
    println!("voters:          {}", text("voters"));
    println!("restart base:    {} ms", text("restartBaseMs"));
    println!("restart max:     {} ms", text("restartMaxMs"));
    println!("restart reset:   {} ms", text("restartResetAfterMs"));
    Ok(())
}

/// `DELETE /{collection}/{id}` for each id, printing each id removed; one line on stderr for
/// each that could not be, and an error if any could not.
/// DELETEs `/{collection}/{id}{query}` for each id, printing the ids removed and going on past
/// a failure; fails at the end if any did.
async fn delete_each(
    api: &Api,
    collection: &str,
    noun: &str,
    query: &str,
    ids: Vec<String>,
) -> Result<()> {
    let mut failed = 0;
    for id in ids {
        match api
            .call(
                reqwest::Method::DELETE,
                &format!("/{collection}/{id}{query}"),
                None,
            )
            .await
        {
            Ok(t) => println!("{}", t["id"].as_str().unwrap_or(&id)),
            Err(e) => {
                eprintln!("orion: {id}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} {noun}(s) could not be removed");
    }
    Ok(())
}

async fn set_drain(c: ClientArgs, node: String, what: &str) -> Result<()> {
    let api = Api::new(&c)?;
    let n = api
        .call(
            reqwest::Method::POST,
            &format!("/nodes/{node}/{what}"),
            None,
        )
        .await?;
    if c.json {
        return print_json(&n);
    }
    println!("{node}");
    Ok(())
}

/// The JSON body of `POST /tasks` for `orion run`'s flags.
fn run_body(a: &RunArgs) -> Result<Value> {
    let mut body = Map::new();
    body.insert("image".into(), json!(a.image));
    if !a.command.is_empty() {
        body.insert("command".into(), json!(a.command));
    }
    if let Some(m) = &a.memory {
        body.insert("memory".into(), json!(m));
    }
    if let Some(c) = a.cpus {
        body.insert("cpu".into(), json!(c));
    }
    if let Some(n) = &a.name {
        body.insert("name".into(), json!(n));
    }
    if let Some(r) = &a.restart {
        body.insert("restartPolicy".into(), json!(r));
    }
    if let Some(s) = &a.strategy {
        body.insert("strategy".into(), json!(s));
    }
    if let Some(d) = &a.stop_after_disconnect {
        body.insert("stopAfterDisconnect".into(), json!(d));
    }
    if !a.env.is_empty() {
        body.insert("env".into(), Value::Object(pairs(&a.env, "-e")?));
    }
    if !a.labels.is_empty() {
        body.insert("labels".into(), Value::Object(pairs(&a.labels, "--label")?));
    }
    if !a.constraints.is_empty() {
        body.insert("constraints".into(), json!(a.constraints));
    }
    if !a.publish.is_empty() {
        let mut ports = Map::new();
        for p in &a.publish {
            let (spec, proto) = match p.rsplit_once('/') {
                Some((s, proto)) => (s, proto),
                None => (p.as_str(), "tcp"),
            };
            let parts: Vec<&str> = spec.split(':').collect();
            let (host, container) = match parts.as_slice() {
                [c] => ("", *c),
                [h, c] => (*h, *c),
                _ => bail!("-p {p:?}: expected HOST:CONTAINER or CONTAINER, e.g. 8080:80"),
            };
            ports.insert(format!("{container}/{proto}"), json!(host));
        }
        body.insert("portBindings".into(), Value::Object(ports));
    }
    Ok(Value::Object(body))
}

fn pairs(items: &[String], flag: &str) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for kv in items {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("{flag} {kv:?}: expected KEY=VALUE"))?;
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

async fn run_task(a: RunArgs) -> Result<()> {
    let api = Api::new(&a.c)?;
    let body = run_body(&a)?;
    let task = api
        .call(reqwest::Method::POST, "/tasks", Some(body))
        .await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    if a.wait {
        let mut progress = progress::Progress::spinner();
        loop {
            let t = api.get(&format!("/tasks/{id}")).await?;
            let state = t["state"].as_str().unwrap_or("").to_string();
            let mut line = state.clone();
            if let Some(n) = t["node"].as_str() {
                line.push_str(&format!(" on {n}"));
            }
            if let Some(r) = t["reason"].as_str() {
                line.push_str(&format!(": {r}"));
            }
            if state == "running" && !ports_text(&t["ports"]).is_empty() {
                line.push_str(&format!(" ({})", ports_text(&t["ports"])));
            }
            progress.update(None, &line);
            match state.as_str() {
                "running" | "completed" => {
                    progress.finish();
                    break;
                }
                "failed" | "stopped" => {
                    println!("{id}");
                    bail!(
                        "task {} {state}: {}",
                        short(&id),
                        t["reason"].as_str().unwrap_or("no reason given")
                    );
                }
                _ => {}
            }
            if progress.elapsed() > WAIT_LIMIT {
                println!("{id}");
                bail!("task {} still {state} after {:?}", short(&id), WAIT_LIMIT);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if a.c.json {
        let t = api.get(&format!("/tasks/{id}")).await?;
        let text = serde_json::to_string_pretty(&t)?;
        println!("{text}");
    }
    println!("{id}");
    Ok(())
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn ca_cmd(cmd: CaCmd) -> Result<()> {
    match cmd {
        CaCmd::Show { c, pem } => {
            let api = Api::new(&c)?;
            let v = api.get("/ca").await?;
            if pem {
                print!("{}", v["certPem"].as_str().unwrap_or(""));
                return Ok(());
            }
            if c.json {
                return print_json(&v);
            }
            println!("CA           {}", v["fingerprint"].as_str().unwrap_or(""));
            println!(
                "previous CA  {}",
                v["previousFingerprint"].as_str().unwrap_or("-")
            );
            let revoked: Vec<&str> = v["revokedNodes"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!(
                "revoked      {}",
                if revoked.is_empty() {
                    "-".to_string()
                } else {
                    revoked.join(", ")
                }
            );
            Ok(())
        }
        CaCmd::Rotate { c } => {
            let api = Api::new(&c)?;
            let v = api.call(reqwest::Method::POST, "/ca/rotate", None).await?;
            let token = v["joinToken"].as_str().unwrap_or("").to_string();
            let fp = v["fingerprint"].as_str().unwrap_or("").to_string();
            // The entry for --addr in the credentials file now pins the new CA.
            if let Some(path) = orion_security::credentials::default_path()
                && let Ok(Some(e)) = orion_security::credentials::find(&path, &c.addr)
                && !token.is_empty()
                && let Err(err) = orion_security::credentials::replace_join_token(
                    &path,
                    &e.join_token,
                    &token,
                    &fp,
                )
            {
                eprintln!("warning: cannot update {}: {err}", path.display());
            }
            if c.json {
                return print_json(&v);
            }
            println!("new CA {fp}");
            println!("join token: {token}");
            Ok(())
        }
    }
}

async fn token_cmd(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            c,
            role,
            name,
            name_flag,
        } => {
            let name = name.or(name_flag);
            let api = Api::new(&c)?;
            let v = api
                .call(
                    reqwest::Method::POST,
                    "/tokens",
                    Some(json!({"role": role, "name": name.unwrap_or_default()})),
                )
                .await?;
            if c.json {
                return print_json(&v);
            }
            println!("{}", v["token"].as_str().unwrap_or(""));
            Ok(())
        }
        TokenCmd::Show { c } => {
            let t = c.api_token().ok_or_else(|| {
                anyhow!(
                    "no token for {}: pass --token or set ORION_TOKEN (the credentials file has no entry for that address)",
                    c.addr
                )
            })?;
            println!("{t}");
            Ok(())
        }
        TokenCmd::Ls { c } => {
            let api = Api::new(&c)?;
            let v = api.get("/tokens").await?;
            if c.json {
                return print_json(&v);
            }
            let rows = v
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    vec![
                        t["id"].as_str().unwrap_or("").to_string(),
                        t["name"].as_str().unwrap_or("").to_string(),
                        t["role"].as_str().unwrap_or("").to_string(),
                        age(t["createdAt"].as_str()),
                    ]
                });
            print_table(&["ID", "NAME", "ROLE", "CREATED"], rows);
            Ok(())
        }
        TokenCmd::Rm { c, ids } => delete_each(&Api::new(&c)?, "tokens", "token", "", ids).await,
    }
}

fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn ports_text(ports: &Value) -> String {
    ports
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}:{}->{}/{}",
                        p["hostIp"].as_str().unwrap_or(""),
                        p["hostPort"],
                        p["containerPort"],
                        p["protocol"].as_str().unwrap_or("tcp")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn labels_text(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Humanised bytes: 1.5 GiB, 100 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Humanised age of an RFC 3339 time: 5s, 3m, 2h, 4d.
fn age(at: Option<&str>) -> String {
    let Some(t) = at.and_then(|s| humantime::parse_rfc3339_weak(s).ok()) else {
        return String::new();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: ClientCmd,
    }

    fn body(args: &[&str]) -> Value {
        let t =
            T::try_parse_from(std::iter::once("orion").chain(args.iter().copied())).expect("parse");
        match t.cmd {
            ClientCmd::Run(a) => run_body(&a).expect("body"),
            _ => panic!("not run"),
        }
    }

    /// The PUT body of `orion cluster config ARGS`, `None` for a plain show.
    fn check_config(args: &[&str], want: Option<Value>) {
        let t = T::try_parse_from(
            ["orion", "cluster", "config"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .expect("parse");
        match t.cmd {
            ClientCmd::Cluster {
                cmd: ClusterCmd::Config(a),
            } => assert_eq!(a.patch(), want, "{args:?}"),
            _ => panic!("not cluster config"),
        }
    }

    #[test]
    fn cluster_config_flags_become_a_partial_change() {
        check_config(&[], None);
        check_config(&["--json"], None);
        check_config(
            &["--strategy", "binpack", "--voters", "5"],
            Some(json!({"strategy": "binpack", "voters": 5})),
        );
        check_config(
            &[
                "--dynamic-ports",
                "30000-31000",
                "--restart-base-ms",
                "200",
                "--restart-max-ms",
                "3200",
                "--restart-reset-ms",
                "0",
            ],
            Some(json!({
                "dynamicPorts": "30000-31000", "restartBaseMs": 200, "restartMaxMs": 3200,
                "restartResetAfterMs": 0
            })),
        );
    }

    #[test]
    fn run_flags_become_the_task_body() {
        let b = body(&[
            "run",
            "-p",
            "8080:80",
            "-p",
            "53/udp",
            "-m",
            "100m",
            "--cpus",
            "0.5",
            "-e",
            "A=1",
            "--name",
            "web",
            "--restart",
            "never",
            "--label",
            "app=x",
            "--constraint",
            "node.labels.zone==a",
            "--stop-after-disconnect",
            "30s",
            "orion/busybox",
            "sh",
            "-c",
            "exit 3",
        ]);
        assert_eq!(
            b,
            json!({
                "image": "orion/busybox", "command": ["sh", "-c", "exit 3"], "memory": "100m", "cpu": 0.5,
                "name": "web", "restartPolicy": "never", "env": {"A": "1"}, "labels": {"app": "x"},
                "constraints": ["node.labels.zone==a"], "portBindings": {"80/tcp": "8080", "53/udp": ""},
                "stopAfterDisconnect": "30s"
            })
        );
    }

    #[test]
    fn sizes_are_humanised() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(100 * 1024 * 1024), "100.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
