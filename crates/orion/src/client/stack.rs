//! `orion deploy` and `orion stack ls|ps|rm`: compose files into services (orion-compose
//! plans, this module does the IO), deployed in `depends_on` order, and stacks as a
//! client-side grouping of `GET /services?stack=` (as `docker stack` groups by a label):
//! a stack is its services' `stack` field, nothing the server keeps apart.

use super::{Api, ClientArgs, age, ports_text, print_json, print_table, short};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use orion_compose::{Condition, Files, Input, Source};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a `depends_on` condition is polled: quick enough that a chain of a few services
/// starts in seconds, light on the API.
const CONDITION_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Compose file; repeat to merge overrides (default: compose.yaml, compose.yml,
    /// docker-compose.yaml or docker-compose.yml in this folder)
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Project (stack) name; default: the file's `name:`, else the project folder's name
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
    /// Variables for interpolation instead of the project folder's .env (repeatable)
    #[arg(long = "env-file")]
    env_files: Vec<PathBuf>,
    /// Print the planned services as JSON and deploy nothing
    #[arg(long)]
    dry_run: bool,
    /// Longest wait for one depends_on condition, e.g. 5m
    #[arg(long, default_value = "5m")]
    wait_timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// List stacks and how many services each has
    Ls {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List the tasks of every service of a stack
    Ps {
        #[command(flatten)]
        c: ClientArgs,
        stack: String,
        /// Show all tasks, also stopped ones
        #[arg(short, long)]
        all: bool,
    },
    /// Remove every service of a stack
    Rm {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

/// Reads the files a compose file names, relative to the project folder, bounded in size.
struct Folder(PathBuf);

impl Files for Folder {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        let full = self.0.join(path);
        read_bounded(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))
    }
}

/// A file's bytes, refusing more than `FILE_BYTES_MAX` of orion-compose's YAML bound.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let limit = orion_compose::yaml::FILE_BYTES_MAX as u64;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(buf)
}

/// The files of `-f`, or the first default name found in the current folder.
fn compose_files(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    orion_compose::DEFAULT_FILES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map(|p| vec![p])
        .ok_or_else(|| {
            anyhow!(
                "no compose file here: give -f FILE or create one of {}",
                orion_compose::DEFAULT_FILES.join(", ")
            )
        })
}

/// Interpolation variables as `docker compose` takes them: the project folder's `.env` (or
/// the `--env-file`s, later ones winning), overlaid by the process environment.
fn variables(folder: &Path, env_files: &[PathBuf]) -> Result<BTreeMap<String, String>> {
    let files: Vec<PathBuf> = if env_files.is_empty() {
        let dot = folder.join(".env");
        if dot.is_file() { vec![dot] } else { Vec::new() }
    } else {
        env_files.to_vec()
    };
    let mut vars = BTreeMap::new();
    for f in files {
        let bytes = read_bounded(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{} is not UTF-8", f.display()))?;
        for (k, v) in orion_compose::interp::parse_dotenv(&text)
            .map_err(|m| anyhow!("{}: {m}", f.display()))?
        {
            if let Some(v) = v {
                vars.insert(k, v);
            }
        }
    }
    vars.extend(std::env::vars());
    Ok(vars)
}

pub async fn deploy(a: DeployArgs) -> Result<()> {
    let paths = compose_files(&a.files)?;
    let first = std::fs::canonicalize(&paths[0])
        .with_context(|| format!("cannot read {}", paths[0].display()))?;
    let folder = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut files = Vec::with_capacity(paths.len());
    for p in &paths {
        let bytes = read_bounded(p).with_context(|| format!("cannot read {}", p.display()))?;
        files.push(Source {
            name: p.display().to_string(),
            text: String::from_utf8(bytes).map_err(|_| anyhow!("{} is not UTF-8", p.display()))?,
        });
    }
    let input = Input {
        files,
        project: a.project.clone(),
        folder: folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        vars: variables(&folder, &a.env_files)?,
    };
    let plan = orion_compose::load(&input, &Folder(folder)).map_err(|e| anyhow!("{e}"))?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if a.dry_run {
        return print_json(&plan.to_json());
    }
    let wait_limit: Duration = humantime::parse_duration(&a.wait_timeout)
        .map_err(|e| anyhow!("--wait-timeout {:?}: {e}", a.wait_timeout))?;
    let api = Api::new(&a.c)?;
    let existing = api
        .get(&format!("/services?stack={}", plan.project))
        .await?;
    let existing: BTreeMap<String, u64> = existing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["id"].as_str()?.to_string(), s["version"].as_u64()?)))
        .collect();
    for s in &plan.services {
        for (dep, cond) in &s.depends_on {
            let id = format!("{dep}.{}", plan.project);
            wait_for(&api, &id, *cond, wait_limit)
                .await
                .with_context(|| format!("{} waits for {dep} ({})", s.name, cond.as_str()))?;
        }
        let id = format!("{}.{}", s.name, plan.project);
        let body = Value::Object(s.body.clone());
        match existing.get(&id) {
            Some(before) => {
                let after = api
                    .call(reqwest::Method::PUT, &format!("/services/{id}"), Some(body))
                    .await
                    .with_context(|| format!("updating {id}"))?;
                match after["version"].as_u64() {
                    Some(v) if v == *before => println!("{id}: unchanged"),
                    Some(v) => println!("{id}: updated (version {before} -> {v})"),
                    None => println!("{id}: updated"),
                }
            }
            None => {
                api.call(reqwest::Method::POST, "/services", Some(body))
                    .await
                    .with_context(|| format!("creating {id}"))?;
                println!("{id}: created");
            }
        }
    }
    let gone: Vec<&String> = existing
        .keys()
        .filter(|id| {
            !plan
                .services
                .iter()
                .any(|s| **id == format!("{}.{}", s.name, plan.project))
        })
        .collect();
    for id in gone {
        eprintln!(
            "note: {id} is in stack {} but not in the files; remove it with `orion service rm {id}`",
            plan.project
        );
    }
    Ok(())
}

/// Waits until service `id` meets `cond`, or fails after `limit` saying where it stands. A
/// failed read (a leader change under way, a busy node) is retried until the limit.
async fn wait_for(api: &Api, id: &str, cond: Condition, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let last = match met(api, id, cond).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(state)) => state,
            Err(e) if e.to_string().contains("can never hold") => return Err(e),
            Err(e) => format!("cannot read it: {e:#}"),
        };
        if start.elapsed() > limit {
            bail!(
                "{id} did not reach {} within {} ({last})",
                cond.as_str(),
                humantime::format_duration(limit)
            );
        }
        tokio::time::sleep(CONDITION_POLL).await;
    }
}

/// Whether service `id` meets `cond` now: `Ok(Err(where it stands))` when not yet.
async fn met(api: &Api, id: &str, cond: Condition) -> Result<Result<(), String>> {
    let s = api.get(&format!("/services/{id}")).await?;
    let r = &s["replicas"];
    let (desired, running, healthy) = (
        r["desired"].as_u64().unwrap_or(0),
        r["running"].as_u64().unwrap_or(0),
        r["healthy"].as_u64().unwrap_or(0),
    );
    let ok = match cond {
        Condition::Started => running >= desired,
        Condition::Healthy => {
            if s["healthcheck"].is_null() {
                bail!("{id} has no healthcheck, so service_healthy can never hold: add one");
            }
            healthy >= desired
        }
        Condition::CompletedSuccessfully => {
            let tasks = api.get(&format!("/services/{id}/tasks")).await?;
            tasks.as_array().into_iter().flatten().any(|t| {
                t["state"].as_str() == Some("completed") && t["exitCode"].as_i64() == Some(0)
            })
        }
    };
    Ok(if ok {
        Ok(())
    } else {
        Err(format!(
            "desired {desired}, running {running}, healthy {healthy}"
        ))
    })
}

pub async fn run(cmd: StackCmd) -> Result<()> {
    match cmd {
        StackCmd::Ls { c } => {
            let api = Api::new(&c)?;
            let services = api.get("/services").await?;
            let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
            for s in services.as_array().into_iter().flatten() {
                if let Some(st) = s["stack"].as_str() {
                    *stacks.entry(st.to_string()).or_default() += 1;
                }
            }
            if c.json {
                let list: Vec<Value> = stacks
                    .iter()
                    .map(|(n, k)| serde_json::json!({"name": n, "services": k}))
                    .collect();
                return print_json(&Value::Array(list));
            }
            print_table(
                &["NAME", "SERVICES"],
                stacks.iter().map(|(n, k)| vec![n.clone(), k.to_string()]),
            );
            Ok(())
        }
        StackCmd::Ps { c, stack, all } => {
            let api = Api::new(&c)?;
            let services = stack_services(&api, &stack).await?;
            let mut list = Vec::new();
            for id in &services {
                let tasks = api.get(&format!("/services/{id}/tasks")).await?;
                list.extend(tasks.as_array().cloned().unwrap_or_default());
            }
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
                    t["service"].as_str().unwrap_or("").to_string(),
                    t["image"].as_str().unwrap_or("").to_string(),
                    t["node"].as_str().unwrap_or("-").to_string(),
                    t["state"].as_str().unwrap_or("").to_string(),
                    t["health"].as_str().unwrap_or("").to_string(),
                    ports_text(&t["ports"]),
                    age(t["createdAt"].as_str()),
                ]
            });
            print_table(
                &[
                    "ID", "NAME", "SERVICE", "IMAGE", "NODE", "STATE", "HEALTH", "PORTS", "CREATED",
                ],
                rows,
            );
            Ok(())
        }
        StackCmd::Rm { c, stacks } => {
            let api = Api::new(&c)?;
            for stack in &stacks {
                let services = stack_services(&api, stack).await?;
                for id in &services {
                    api.call(reqwest::Method::DELETE, &format!("/services/{id}"), None)
                        .await
                        .with_context(|| format!("removing {id}"))?;
                    println!("removed {id}");
                }
            }
            Ok(())
        }
    }
}

/// The ids of the services of `stack`; an error when it has none (a typo, or removed).
async fn stack_services(api: &Api, stack: &str) -> Result<Vec<String>> {
    let services = api.get(&format!("/services?stack={stack}")).await?;
    let ids: Vec<String> = services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["stack"].as_str() == Some(stack))
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect();
    if ids.is_empty() {
        bail!("no stack {stack:?}: `orion stack ls` lists them");
    }
    Ok(ids)
}
