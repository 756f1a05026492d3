//! `orion service create|ls|ps|inspect|update|scale|rollback|rm`: the flags of
//! `docker service`, turned into the JSON of API.md's "Services". `update` reads the service,
//! changes the fields its flags name, puts the whole spec back, and follows the deployment
//! until it ends, exiting non-zero if it rolled back, paused or failed.

use super::{Api, ClientArgs, age, pairs, ports_text, print_json, print_table, short};
use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A deployment is followed at most this long: a 1000-replica service updated one task at a
/// time with a 5 s monitor window takes well under it; past it the command says where the
/// deployment stands and the deployment itself goes on.
const FOLLOW_LIMIT: Duration = Duration::from_secs(3600);
/// `service create` shows its tasks starting for at most this long (an image pull and a start
/// take seconds); a service that cannot converge yet is not an error of the create.
const CREATE_WAIT_LIMIT: Duration = Duration::from_secs(60);
/// How often a followed deployment is polled: fast enough for a progress display, light on
/// the API.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service: orion service create --name web [--replicas 3] [-p 8080:80] IMAGE [CMD...]
    Create(Box<CreateArgs>),
    /// List services
    Ls {
        #[command(flatten)]
        c: ClientArgs,
        /// Only the services of this stack
        #[arg(long)]
        stack: Option<String>,
    },
    /// List the tasks of a service (running and waiting; -a for all)
    Ps {
        #[command(flatten)]
        c: ClientArgs,
        service: String,
        /// Show all tasks, also stopped ones
        #[arg(short, long)]
        all: bool,
    },
    /// Show a service in full (JSON), or with --pretty its VIP, ports and endpoints
    Inspect {
        #[command(flatten)]
        c: ClientArgs,
        /// A human summary: the VIP, published ports and every endpoint with its health
        #[arg(long)]
        pretty: bool,
        service: String,
    },
    /// Change a service and follow the rolling update
    Update(Box<UpdateArgs>),
    /// Set the replica count: orion service scale web=5 [api=2 ...]
    Scale {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Go back to the previous spec and follow the rollback
    Rollback {
        #[command(flatten)]
        c: ClientArgs,
        service: String,
        /// Do not follow the rollback
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove services: their tasks are stopped
    Rm {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Flags shared by `create` and `update`: each sets one field of the spec.
#[derive(Debug, Default, Args)]
pub struct ServiceFlags {
    /// Number of tasks (replicated mode)
    #[arg(long)]
    replicas: Option<u32>,
    /// replicated or global
    #[arg(long)]
    mode: Option<String>,
    /// Most tasks of this service on one node (0: no limit)
    #[arg(long = "max-per-node", alias = "replicas-max-per-node")]
    max_per_node: Option<u32>,
    /// Publish a port: PUBLISHED:TARGET[/PROTO], TARGET[/PROTO], or
    /// published=8080,target=80,protocol=tcp,mode=host
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Memory limit, e.g. 100m, 1g
    #[arg(short = 'm', long, alias = "limit-memory")]
    memory: Option<String>,
    /// CPU limit in cores, e.g. 0.5
    #[arg(long, alias = "limit-cpu")]
    cpus: Option<f64>,
    /// Environment variable K=V (added to or replacing those of the spec)
    #[arg(short = 'e', long = "env", alias = "env-add")]
    env: Vec<String>,
    /// Label k=v
    #[arg(long = "label", alias = "label-add")]
    labels: Vec<String>,
    /// Placement constraint, e.g. 'node.labels.zone==a'
    #[arg(long = "constraint", alias = "constraint-add")]
    constraints: Vec<String>,
    /// always, on-failure or never
    #[arg(long, alias = "restart-condition")]
    restart: Option<String>,
    /// Placement strategy: spread or binpack
    #[arg(long)]
    strategy: Option<String>,
    /// Health check: HTTP GET of this path on the target port
    #[arg(long = "health-http")]
    health_http: Option<String>,
    /// Health check: a TCP connect to the target port
    #[arg(long = "health-tcp")]
    health_tcp: bool,
    /// Health check: a shell command in the container, exit 0 is healthy
    #[arg(long = "health-cmd")]
    health_cmd: Option<String>,
    /// Health check: use the image's HEALTHCHECK
    #[arg(long = "health-image")]
    health_image: bool,
    /// Remove the health check
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// Target port the check probes (default the first)
    #[arg(long = "health-port")]
    health_port: Option<u16>,
    #[arg(long = "health-interval")]
    health_interval: Option<String>,
    #[arg(long = "health-timeout")]
    health_timeout: Option<String>,
    #[arg(long = "health-retries")]
    health_retries: Option<u32>,
    #[arg(long = "health-start-period")]
    health_start_period: Option<String>,
    /// Tasks updated at once
    #[arg(long = "update-parallelism")]
    update_parallelism: Option<u32>,
    /// Wait between batches, e.g. 10s
    #[arg(long = "update-delay")]
    update_delay: Option<String>,
    /// start-first or stop-first
    #[arg(long = "update-order")]
    update_order: Option<String>,
    /// How long a new task must stay healthy, e.g. 5s
    #[arg(long = "update-monitor")]
    update_monitor: Option<String>,
    /// rollback, pause or continue
    #[arg(long = "update-failure-action")]
    update_failure_action: Option<String>,
    /// Failures tolerated, 0 to 1
    #[arg(long = "update-max-failure-ratio")]
    update_max_failure_ratio: Option<f64>,
    /// Between the stop signal and SIGKILL, e.g. 10s
    #[arg(long = "stop-grace-period")]
    stop_grace_period: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// The service's name (a DNS label)
    #[arg(long)]
    name: String,
    /// The stack it belongs to
    #[arg(long)]
    stack: Option<String>,
    #[command(flatten)]
    flags: ServiceFlags,
    /// Do not wait for the tasks to run
    #[arg(short, long)]
    detach: bool,
    /// Image to run
    image: String,
    /// Command and arguments for the container
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    c: ClientArgs,
    #[command(flatten)]
    flags: ServiceFlags,
    /// A new image
    #[arg(long)]
    image: Option<String>,
    /// A new command (a shell string, run as sh -c)
    #[arg(long)]
    args: Option<String>,
    /// Do not follow the rolling update
    #[arg(short, long)]
    detach: bool,
    service: String,
}

pub async fn run(cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create(a) => create(*a).await,
        ServiceCmd::Ls { c, stack } => {
            let api = Api::new(&c)?;
            let path = match &stack {
                Some(s) => format!("/services?stack={s}"),
                None => "/services".to_string(),
            };
            let list = api.get(&path).await?;
            if c.json {
                return print_json(&list);
            }
            let rows = list
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    vec![
                        s["id"].as_str().unwrap_or("").to_string(),
                        s["mode"].as_str().unwrap_or("").to_string(),
                        format!("{}/{}", s["replicas"]["running"], s["replicas"]["desired"]),
                        s["image"].as_str().unwrap_or("").to_string(),
                        s["version"].to_string(),
                        s["deployment"]["state"].as_str().unwrap_or("-").to_string(),
                        s["vip"].as_str().unwrap_or("-").to_string(),
                        service_ports_text(&s["ports"]),
                        endpoints_count(&s["endpoints"]),
                    ]
                });
            print_table(
                &[
                    "ID",
                    "MODE",
                    "REPLICAS",
                    "IMAGE",
                    "VERSION",
                    "UPDATE",
                    "VIP",
                    "PORTS",
                    "ENDPOINTS",
                ],
                rows,
            );
            Ok(())
        }
        ServiceCmd::Ps { c, service, all } => {
            let api = Api::new(&c)?;
            let tasks = api.get(&format!("/services/{service}/tasks")).await?;
            let mut list = tasks.as_array().cloned().unwrap_or_default();
            if !all {
                list.retain(|t| t["state"].as_str() != Some("stopped"));
            }
            if c.json {
                return print_json(&Value::Array(list));
            }
            let rows = list.iter().map(|t| {
                vec![
                    short(t["id"].as_str().unwrap_or("")),
                    t["name"].as_str().unwrap_or("").to_string(),
                    t["image"].as_str().unwrap_or("").to_string(),
                    t["version"].to_string(),
                    t["node"].as_str().unwrap_or("-").to_string(),
                    t["state"].as_str().unwrap_or("").to_string(),
                    t["health"].as_str().unwrap_or("").to_string(),
                    ports_text(&t["ports"]),
                    age(t["createdAt"].as_str()),
                ]
            });
            print_table(
                &[
                    "ID", "NAME", "IMAGE", "VERSION", "NODE", "STATE", "HEALTH", "PORTS", "CREATED",
                ],
                rows,
            );
            Ok(())
        }
        ServiceCmd::Inspect { c, pretty, service } => {
            let api = Api::new(&c)?;
            let s = api.get(&format!("/services/{service}")).await?;
            if !pretty || c.json {
                return print_json(&s);
            }
            print!("{}", pretty_service(&s));
            Ok(())
        }
        ServiceCmd::Update(a) => update(*a).await,
        ServiceCmd::Scale { c, targets } => {
            let api = Api::new(&c)?;
            for t in &targets {
                let (id, n) = t
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{t:?}: expected SERVICE=REPLICAS, e.g. web=5"))?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| anyhow!("{t:?}: replicas must be a whole number"))?;
                let s = api
                    .call(
                        reqwest::Method::POST,
                        &format!("/services/{id}/scale"),
                        Some(json!({"replicas": n})),
                    )
                    .await?;
                if c.json {
                    print_json(&s)?;
                } else {
                    println!("{id} scaled to {n}");
                }
            }
            Ok(())
        }
        ServiceCmd::Rollback { c, service, detach } => {
            let api = Api::new(&c)?;
            let s = api
                .call(
                    reqwest::Method::POST,
                    &format!("/services/{service}/rollback"),
                    None,
                )
                .await?;
            if detach {
                println!("{service}");
                return Ok(());
            }
            follow(&api, &service, &s, true).await
        }
        ServiceCmd::Rm { c, services } => {
            super::delete_each(&Api::new(&c)?, "services", "service", "", services).await
        }
    }
}

async fn create(a: CreateArgs) -> Result<()> {
    let api = Api::new(&a.c)?;
    let mut body = Map::new();
    body.insert("name".into(), json!(a.name));
    if let Some(s) = &a.stack {
        body.insert("stack".into(), json!(s));
    }
    body.insert("image".into(), json!(a.image));
    if !a.command.is_empty() {
        body.insert("command".into(), json!(a.command));
    }
    apply_flags(&mut body, &a.flags)?;
    let s = api
        .call(
            reqwest::Method::POST,
            "/services",
            Some(Value::Object(body)),
        )
        .await?;
    let id = s["id"].as_str().unwrap_or(&a.name).to_string();
    if a.c.json {
        print_json(&s)?;
    } else {
        println!("{id}");
    }
    if !a.detach && !a.c.json {
        wait_converged(&api, &id).await?;
    }
    Ok(())
}

/// Waits until every desired task runs, showing the count as it changes.
async fn wait_converged(api: &Api, id: &str) -> Result<()> {
    let mut progress = super::progress::Progress::bar(0);
    loop {
        let s = api.get(&format!("/services/{id}")).await?;
        let (running, desired) = (
            s["replicas"]["running"].as_u64().unwrap_or(0),
            s["replicas"]["desired"].as_u64().unwrap_or(0),
        );
        let line = format!("{running}/{desired} running");
        progress.update(Some((running.min(desired), desired)), &line);
        if running >= desired {
            progress.finish();
            return Ok(());
        }
        if progress.elapsed() > CREATE_WAIT_LIMIT {
            // The service exists; its tasks may be waiting for room. Say so and return.
            drop(progress);
            eprintln!(
                "service {id}: {line} after {CREATE_WAIT_LIMIT:?}; still converging (orion service ps {id})"
            );
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

async fn update(a: UpdateArgs) -> Result<()> {
    let api = Api::new(&a.c)?;
    let current = api.get(&format!("/services/{}", a.service)).await?;
    let mut body = editable_spec(&current)?;
    if let Some(image) = &a.image {
        body.insert("image".into(), json!(image));
    }
    if let Some(args) = &a.args {
        body.insert("command".into(), json!(["sh", "-c", args]));
    }
    apply_flags(&mut body, &a.flags)?;
    let s = api
        .call(
            reqwest::Method::PUT,
            &format!("/services/{}", a.service),
            Some(Value::Object(body)),
        )
        .await?;
    if s["version"] == current["version"] {
        println!("{}: no change (version {})", a.service, s["version"]);
        return Ok(());
    }
    if a.detach || s["deployment"].is_null() || s["deployment"] == current["deployment"] {
        println!("{}: version {}", a.service, s["version"]);
        return Ok(());
    }
    follow(&api, &a.service, &s, false).await
}

/// The spec part of a service object, as a body for `PUT`.
fn editable_spec(service: &Value) -> Result<Map<String, Value>> {
    let mut body = service
        .as_object()
        .cloned()
        .ok_or_else(|| anyhow!("the API answered something that is not a service"))?;
    for k in orion_api::SERVICE_VIEW_ONLY_FIELDS {
        body.remove(*k);
    }
    if body.get("mode").and_then(Value::as_str) == Some("global") {
        body.remove("replicas");
    } else {
        let desired = service["replicas"]["desired"].clone();
        body.insert("replicas".into(), desired);
    }
    Ok(body)
}

/// Sets the fields the flags name.
fn apply_flags(body: &mut Map<String, Value>, f: &ServiceFlags) -> Result<()> {
    if let Some(mode) = &f.mode {
        body.insert("mode".into(), json!(mode));
        if mode == "global" {
            body.remove("replicas");
            body.remove("maxPerNode");
        }
    }
    let fields = [
        ("replicas", f.replicas.map(|v| json!(v))),
        ("maxPerNode", f.max_per_node.map(|v| json!(v))),
        ("memory", f.memory.as_ref().map(|v| json!(v))),
        ("cpu", f.cpus.map(|v| json!(v))),
        ("restartPolicy", f.restart.as_ref().map(|v| json!(v))),
        ("strategy", f.strategy.as_ref().map(|v| json!(v))),
        (
            "stopGracePeriod",
            f.stop_grace_period.as_ref().map(|v| json!(v)),
        ),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    }
    merge_pairs(body, "env", &f.env, "-e")?;
    merge_pairs(body, "labels", &f.labels, "--label")?;
    if !f.constraints.is_empty() {
        let mut list: Vec<Value> = body
            .get("constraints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        list.extend(f.constraints.iter().map(|c| json!(c)));
        body.insert("constraints".into(), Value::Array(list));
    }
    if !f.publish.is_empty() {
        let mut ports: Vec<Value> = body
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in &f.publish {
            let port = parse_publish(p)?;
            // A port given again for the same target replaces the old one.
            ports.retain(|o| o["target"] != port["target"]);
            ports.push(port);
        }
        body.insert("ports".into(), Value::Array(ports));
    }
    apply_health(body, f)?;
    let mut update = body
        .get("update")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            update.insert(k.into(), v);
        }
    };
    set("parallelism", f.update_parallelism.map(|v| json!(v)));
    set("delay", f.update_delay.as_ref().map(|v| json!(v)));
    set("order", f.update_order.as_ref().map(|v| json!(v)));
    set("monitor", f.update_monitor.as_ref().map(|v| json!(v)));
    set(
        "failureAction",
        f.update_failure_action.as_ref().map(|v| json!(v)),
    );
    set(
        "maxFailureRatio",
        f.update_max_failure_ratio.map(|v| json!(v)),
    );
    if !update.is_empty() {
        body.insert("update".into(), Value::Object(update));
    }
    Ok(())
}

fn apply_health(body: &mut Map<String, Value>, f: &ServiceFlags) -> Result<()> {
    let tests = [
        f.health_http.is_some(),
        f.health_tcp,
        f.health_cmd.is_some(),
        f.health_image,
        f.no_healthcheck,
    ];
    if tests.iter().filter(|t| **t).count() > 1 {
        bail!(
            "give one of --health-http, --health-tcp, --health-cmd, --health-image, --no-healthcheck"
        );
    }
    if f.no_healthcheck {
        body.insert("healthcheck".into(), Value::Null);
        return Ok(());
    }
    if f.health_image {
        body.insert("healthcheck".into(), json!("image"));
        return Ok(());
    }
    let mut h = match body.get("healthcheck") {
        Some(Value::Object(h)) => h.clone(),
        _ => Map::new(),
    };
    let new_test = if let Some(path) = &f.health_http {
        Some(("http", json!(path)))
    } else if f.health_tcp {
        Some(("tcp", json!(true)))
    } else {
        f.health_cmd
            .as_ref()
            .map(|cmd| ("exec", json!(["sh", "-c", cmd])))
    };
    let has_test = new_test.is_some();
    if let Some((k, v)) = new_test {
        for old in ["http", "tcp", "exec"] {
            h.remove(old);
        }
        h.insert(k.into(), v);
    }
    let tuning = [
        ("port", f.health_port.map(|v| json!(v))),
        ("interval", f.health_interval.as_ref().map(|v| json!(v))),
        ("timeout", f.health_timeout.as_ref().map(|v| json!(v))),
        ("retries", f.health_retries.map(|v| json!(v))),
        (
            "startPeriod",
            f.health_start_period.as_ref().map(|v| json!(v)),
        ),
    ];
    let mut tuned = false;
    for (k, v) in tuning {
        if let Some(v) = v {
            h.insert(k.into(), v);
            tuned = true;
        }
    }
    if has_test || tuned {
        if !["http", "tcp", "exec"].iter().any(|k| h.contains_key(*k)) {
            bail!("--health-* settings need a check: --health-http, --health-tcp or --health-cmd");
        }
        body.insert("healthcheck".into(), Value::Object(h));
    }
    Ok(())
}

fn merge_pairs(
    body: &mut Map<String, Value>,
    field: &str,
    items: &[String],
    flag: &str,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut m = body
        .get(field)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    m.extend(pairs(items, flag)?);
    body.insert(field.into(), Value::Object(m));
    Ok(())
}

/// `8080:80`, `80`, `8080:80/udp`, or `published=8080,target=80,protocol=tcp,mode=host`.
fn parse_publish(p: &str) -> Result<Value> {
    let number = |s: &str, what: &str| -> Result<u16> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| anyhow!("-p {p:?}: {what} {s:?} is not a port from 1 to 65535"))
    };
    if p.contains('=') {
        let mut port = Map::new();
        for kv in p.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("-p {p:?}: expected key=value pairs"))?;
            match k.trim() {
                "published" => port.insert("published".into(), json!(number(v, "published")?)),
                "target" => port.insert("target".into(), json!(number(v, "target")?)),
                "protocol" => port.insert("protocol".into(), json!(v.trim())),
                "mode" => port.insert("mode".into(), json!(v.trim())),
                other => bail!("-p {p:?}: unknown key {other:?}"),
            };
        }
        if !port.contains_key("target") {
            bail!("-p {p:?}: target=PORT is required");
        }
        return Ok(Value::Object(port));
    }
    let (spec, proto) = match p.rsplit_once('/') {
        Some((s, proto)) => (s, Some(proto)),
        None => (p, None),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let mut port = match parts.as_slice() {
        [t] => json!({"target": number(t, "target")?}),
        [h, t] => json!({"published": number(h, "published")?, "target": number(t, "target")?}),
        _ => bail!("-p {p:?}: expected PUBLISHED:TARGET or TARGET, e.g. 8080:80"),
    };
    if let Some(proto) = proto {
        port["protocol"] = json!(proto);
    }
    Ok(port)
}

/// `healthy/total` of a service's endpoints.
fn endpoints_count(eps: &Value) -> String {
    let list = eps.as_array().map(Vec::as_slice).unwrap_or_default();
    let healthy = list.iter().filter(|e| e["healthy"] == true).count();
    format!("{healthy}/{}", list.len())
}

/// `orion service inspect --pretty`: the service's name, VIP, ports and endpoints.
fn pretty_service(s: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    out.push_str(&format!("ID:        {}\n", text(&s["id"])));
    out.push_str(&format!("Image:     {}\n", text(&s["image"])));
    out.push_str(&format!(
        "Replicas:  {} running, {} healthy, {} desired\n",
        s["replicas"]["running"], s["replicas"]["healthy"], s["replicas"]["desired"]
    ));
    out.push_str(&format!("VIP:       {}\n", text(&s["vip"])));
    out.push_str(&format!("Ports:     {}\n", service_ports_text(&s["ports"])));
    out.push_str("Endpoints:\n");
    let eps = s["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if eps.is_empty() {
        out.push_str("  (none)\n");
    }
    for e in eps {
        out.push_str(&format!(
            "  {}  {}  {}:{} -> {}/{}  {}\n",
            short(e["task"].as_str().unwrap_or("")),
            text(&e["node"]),
            text(&e["address"]),
            e["port"],
            e["targetPort"],
            e["protocol"].as_str().unwrap_or("tcp"),
            if e["healthy"] == true {
                "healthy"
            } else {
                "unhealthy"
            }
        ));
    }
    out
}

fn service_ports_text(ports: &Value) -> String {
    ports
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| match p["published"].as_u64() {
                    Some(published) => format!(
                        "*:{published}->{}/{}",
                        p["target"],
                        p["protocol"].as_str().unwrap_or("tcp")
                    ),
                    None => format!(
                        "{}/{}",
                        p["target"],
                        p["protocol"].as_str().unwrap_or("tcp")
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Follows the service's latest deployment until it ends, printing progress. A rollback the
/// user asked for succeeds when it rolled back; an update fails if it did not complete.
async fn follow(api: &Api, id: &str, first: &Value, rollback: bool) -> Result<()> {
    let dep_id = first["deployment"]["id"].clone();
    let mut progress = super::progress::Progress::bar(0);
    let mut s = first.clone();
    loop {
        let d = &s["deployment"];
        if d["id"] != dep_id {
            bail!("service {id}: another update replaced this one");
        }
        let state = d["state"].as_str().unwrap_or("").to_string();
        let line = format!(
            "{state} {}/{} updated: {}",
            d["updated"],
            d["total"],
            d["message"].as_str().unwrap_or("")
        );
        let (updated, total) = (
            d["updated"].as_u64().unwrap_or(0),
            d["total"].as_u64().unwrap_or(0),
        );
        progress.update(Some((updated.min(total), total)), &line);
        let message = d["message"].as_str().unwrap_or("no reason given");
        if matches!(
            state.as_str(),
            "completed" | "rolled-back" | "paused" | "failed"
        ) {
            progress.finish();
        }
        match state.as_str() {
            "completed" => {
                println!("{id}: version {} deployed", s["version"]);
                return Ok(());
            }
            "rolled-back" if rollback => {
                println!("{id}: rolled back to version {}", s["version"]);
                return Ok(());
            }
            // The message starts with what happened: "rolled back: task … exited …".
            "rolled-back" | "paused" | "failed" => bail!("service {id}: the update {message}"),
            _ => {}
        }
        if progress.elapsed() > FOLLOW_LIMIT {
            bail!(
                "service {id}: still {state} after {FOLLOW_LIMIT:?}; the update goes on (orion service inspect {id})"
            );
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        s = api.get(&format!("/services/{id}")).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: ServiceCmd,
    }

    fn parse(args: &[&str]) -> ServiceCmd {
        T::try_parse_from(std::iter::once("service").chain(args.iter().copied()))
            .expect("parse")
            .cmd
    }

    /// The body `create` sends for `args`, or the body `update` puts for `args` over
    /// `current`.
    fn check(args: &[&str], current: Option<Value>, want: Value) {
        let body = match (parse(args), current) {
            (ServiceCmd::Create(a), None) => {
                let mut b = Map::new();
                b.insert("name".into(), json!(a.name));
                b.insert("image".into(), json!(a.image));
                if !a.command.is_empty() {
                    b.insert("command".into(), json!(a.command));
                }
                apply_flags(&mut b, &a.flags).expect("flags");
                b
            }
            (ServiceCmd::Update(a), Some(cur)) => {
                let mut b = editable_spec(&cur).expect("spec");
                if let Some(i) = &a.image {
                    b.insert("image".into(), json!(i));
                }
                apply_flags(&mut b, &a.flags).expect("flags");
                b
            }
            _ => panic!("unexpected command"),
        };
        assert_eq!(Value::Object(body), want, "{args:?}");
    }

    #[test]
    fn create_flags_become_the_service_body() {
        check(
            &[
                "create",
                "--name",
                "web",
                "--replicas",
                "3",
                "-p",
                "8080:80",
                "-p",
                "53/udp",
                "--health-http",
                "/",
                "--health-interval",
                "2s",
                "--update-parallelism",
                "2",
                "--update-order",
                "stop-first",
                "--update-failure-action",
                "pause",
                "--update-monitor",
                "1s",
                "--stop-grace-period",
                "3s",
                "-e",
                "A=1",
                "-m",
                "64m",
                "orion/busybox",
                "httpd",
                "-f",
            ],
            None,
            json!({
                "name": "web", "image": "orion/busybox", "command": ["httpd", "-f"],
                "replicas": 3, "memory": "64m", "env": {"A": "1"},
                "ports": [{"published": 8080, "target": 80}, {"target": 53, "protocol": "udp"}],
                "healthcheck": {"http": "/", "interval": "2s"},
                "update": {"parallelism": 2, "order": "stop-first", "failureAction": "pause", "monitor": "1s"},
                "stopGracePeriod": "3s",
            }),
        );
        check(
            &[
                "create",
                "--name",
                "agent",
                "--mode",
                "global",
                "--health-cmd",
                "true",
                "x",
            ],
            None,
            json!({"name": "agent", "image": "x", "mode": "global",
                   "healthcheck": {"exec": ["sh", "-c", "true"]}}),
        );
        check(
            &[
                "create",
                "--name",
                "w",
                "-p",
                "published=80,target=8080,mode=host",
                "x",
            ],
            None,
            json!({"name": "w", "image": "x",
                   "ports": [{"published": 80, "target": 8080, "mode": "host"}]}),
        );
    }

    #[test]
    fn update_changes_only_what_its_flags_name() {
        let current = json!({
            "id": "web", "name": "web", "image": "a", "mode": "replicated", "version": 4,
            "replicas": {"desired": 3, "running": 3, "healthy": 3}, "vip": null,
            "deployment": null, "endpoints": [], "createdAt": "t", "updatedAt": "t",
            "env": {"A": "1"}, "update": {"parallelism": 1, "order": "start-first"},
            "healthcheck": {"http": "/", "interval": "5s"},
        });
        check(
            &[
                "update",
                "--image",
                "b",
                "-e",
                "B=2",
                "--update-parallelism",
                "2",
                "--health-interval",
                "1s",
                "web",
            ],
            Some(current.clone()),
            json!({
                "name": "web", "image": "b", "mode": "replicated", "replicas": 3,
                "env": {"A": "1", "B": "2"}, "update": {"parallelism": 2, "order": "start-first"},
                "healthcheck": {"http": "/", "interval": "1s"},
            }),
        );
        check(
            &["update", "--no-healthcheck", "--replicas", "5", "web"],
            Some(current),
            json!({
                "name": "web", "image": "a", "mode": "replicated", "replicas": 5,
                "env": {"A": "1"}, "update": {"parallelism": 1, "order": "start-first"},
                "healthcheck": null,
            }),
        );
    }

    #[test]
    fn bad_publish_flags_are_refused() {
        for p in [
            "8080:80:1",
            "x:80",
            "0",
            "published=80",
            "target=80,speed=1",
        ] {
            assert!(parse_publish(p).is_err(), "{p}");
        }
    }

    #[test]
    fn inspect_pretty_shows_the_vip_ports_and_endpoints_with_health() {
        let s = json!({
            "id": "web", "image": "img", "vip": "10.200.0.1",
            "replicas": {"running": 2, "healthy": 1, "desired": 2},
            "ports": [{"target": 80, "published": 8080, "protocol": "tcp"}],
            "endpoints": [
                {"task": "0123456789abcdef", "node": "n1", "address": "10.0.0.1", "port": 8080,
                 "targetPort": 80, "protocol": "tcp", "healthy": true},
                {"task": "fedcba9876543210", "node": "n2", "address": "10.0.0.2", "port": 8080,
                 "targetPort": 80, "protocol": "tcp", "healthy": false}
            ]
        });
        let text = pretty_service(&s);
        assert!(text.contains("VIP:       10.200.0.1"), "{text}");
        assert!(text.contains("*:8080->80/tcp"), "{text}");
        assert!(
            text.contains("n1  10.0.0.1:8080 -> 80/tcp  healthy"),
            "{text}"
        );
        assert!(
            text.contains("n2  10.0.0.2:8080 -> 80/tcp  unhealthy"),
            "{text}"
        );
        assert_eq!(endpoints_count(&s["endpoints"]), "1/2");
        assert!(matches!(
            parse(&["inspect", "--pretty", "web"]),
            ServiceCmd::Inspect { pretty: true, .. }
        ));
    }
}
