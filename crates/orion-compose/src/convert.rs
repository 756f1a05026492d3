//! The merged compose tree into planned services: each honoured key becomes a field of a
//! `POST /services` body, each other key an `Error` naming key, service and line, with the
//! key or flag to use instead where there is one (docs/API.md has the same table).

use crate::yaml::{At, Entry, Node, Value, list_to_map};
use crate::{Condition, Error, Files, Input, Plan, Planned, interp, normalize_project};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;

/// Service keys Orion does not honour, with what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("privileged", "Orion does not run privileged containers"),
    (
        "cap_add",
        "Orion runs containers with Docker's default capabilities",
    ),
    (
        "cap_drop",
        "Orion runs containers with Docker's default capabilities",
    ),
    ("devices", "Orion does not pass devices into containers"),
    ("gpus", "Orion does not schedule GPUs"),
    (
        "network_mode",
        "services of a stack reach each other by name through Orion's discovery; remove it",
    ),
    (
        "links",
        "use the service's name: Orion's DNS resolves it from every node; remove links",
    ),
    (
        "external_links",
        "use the service's name (`name.stack`): Orion's DNS resolves it; remove external_links",
    ),
    (
        "extra_hosts",
        "containers resolve names through Orion's DNS",
    ),
    (
        "dns",
        "containers use Orion's DNS, which forwards other names to the host's resolvers",
    ),
    (
        "dns_search",
        "containers search `<stack>.orion` and `orion`",
    ),
    ("dns_opt", "containers use Orion's DNS"),
    ("mem_limit", "use deploy.resources.limits.memory"),
    ("memswap_limit", "Orion caps swap at the memory limit"),
    (
        "mem_reservation",
        "use deploy.resources.reservations.memory",
    ),
    ("cpus", "use deploy.resources.limits.cpus"),
    ("cpu_count", "use deploy.resources.limits.cpus"),
    ("cpu_shares", "use deploy.resources.limits.cpus"),
    ("cpu_quota", "use deploy.resources.limits.cpus"),
    ("cpu_period", "use deploy.resources.limits.cpus"),
    ("cpuset", "use deploy.resources.limits.cpus"),
    ("scale", "use deploy.replicas"),
    ("extends", "give several -f files instead: they merge"),
    ("include", "give several -f files instead: they merge"),
    (
        "profiles",
        "list the services to deploy in the files you give with -f",
    ),
    (
        "logging",
        "Orion keeps the engine's log driver; read logs with `orion logs TASK`",
    ),
    ("tmpfs", "use a named volume"),
    ("ulimits", "Orion keeps the engine's default limits"),
    ("sysctls", "Orion keeps the engine's defaults"),
    (
        "security_opt",
        "Orion keeps the engine's default security options",
    ),
    ("shm_size", "Orion keeps the engine's default /dev/shm"),
    ("pid", "containers get their own PID namespace"),
    ("ipc", "containers get their own IPC namespace"),
    ("uts", "use hostname"),
    (
        "init",
        "use an image whose entrypoint reaps children (or entrypoint: [\"tini\", \"--\"])",
    ),
    (
        "platform",
        "images come from the nodes: load the right one on each",
    ),
    (
        "pull_policy",
        "orion deploy never pulls: each node uses the image its engine has or can pull",
    ),
    ("tty", "Orion runs services without a terminal"),
    ("stdin_open", "Orion runs services without standard input"),
    (
        "read_only",
        "Orion does not make the root file system read-only",
    ),
    ("volumes_from", "use a named volume in both services"),
    ("domainname", "use hostname"),
    ("mac_address", "Orion does not set MAC addresses"),
    ("runtime", "Orion uses the engine's default runtime"),
    ("isolation", "Orion uses the engine's default isolation"),
    ("group_add", "use user: \"uid:gid\""),
    (
        "userns_mode",
        "Orion uses the engine's user namespace setting",
    ),
    ("cgroup", "Orion uses the engine's cgroup setting"),
    ("cgroup_parent", "Orion uses the engine's cgroup setting"),
    ("oom_kill_disable", "Orion keeps the OOM killer on"),
    ("oom_score_adj", "Orion keeps the engine's default"),
    ("pids_limit", "Orion does not limit PIDs"),
    ("storage_opt", "Orion uses the engine's storage defaults"),
    ("blkio_config", "Orion does not limit block IO"),
    (
        "device_cgroup_rules",
        "Orion does not pass devices into containers",
    ),
    ("credential_spec", "Windows containers are not supported"),
    ("annotations", "use labels"),
    ("attach", "read logs with `orion logs TASK`"),
    (
        "develop",
        "Orion deploys images; watch and rebuild locally with docker compose",
    ),
    ("post_start", "put the command in the image's entrypoint"),
    ("pre_stop", "use stop_signal and stop_grace_period"),
    ("use_api_socket", "Orion does not mount the engine's socket"),
    ("models", "Orion does not run models"),
    ("provider", "Orion runs containers only"),
    ("label_file", "use labels"),
];

/// What each top-level key is for; others are errors.
const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "volumes", "networks", "secrets", "configs",
];

struct Ctx<'a> {
    input: &'a Input,
    files: &'a dyn Files,
    project: String,
    /// Compose volume name -> Docker volume name.
    volumes: BTreeMap<String, String>,
    /// Secret name -> content.
    secrets: BTreeMap<String, String>,
    configs: BTreeMap<String, String>,
    networks: Vec<String>,
    warnings: Vec<String>,
}

pub fn plan(root: &Node, input: &Input, files: &dyn Files) -> Result<Plan, Error> {
    let Value::Map(top) = &root.v else {
        return Err(Error::at(root.at, "", "must be a mapping"));
    };
    for e in top {
        if !TOP_KEYS.contains(&e.key.as_str()) && !e.key.starts_with("x-") {
            return Err(Error::at(
                e.at,
                &e.key,
                format!(
                    "is not a top-level key Orion honours; known: {}, and x-* extensions",
                    TOP_KEYS.join(", ")
                ),
            ));
        }
    }
    let project = match (&input.project, root.get("name")) {
        (Some(p), _) => p.clone(),
        (None, Some(e)) => text(&e.node, "name")?,
        (None, None) => input.folder.clone(),
    };
    let project = normalize_project(&project);
    if project.is_empty() {
        return Err(Error::at(
            root.at,
            "name",
            "the project has no usable name: give -p NAME (a DNS label)",
        ));
    }
    let mut cx = Ctx {
        input,
        files,
        project,
        volumes: BTreeMap::new(),
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
        networks: vec!["default".into()],
        warnings: Vec::new(),
    };
    if let Some(e) = root.get("volumes") {
        top_volumes(&mut cx, e)?;
    }
    if let Some(e) = root.get("networks") {
        top_networks(&mut cx, e)?;
    }
    if let Some(e) = root.get("secrets") {
        cx.secrets = top_files(&cx, e, "secrets")?;
    }
    if let Some(e) = root.get("configs") {
        cx.configs = top_files(&cx, e, "configs")?;
    }
    let services = match root.get("services") {
        Some(Entry {
            node: Node {
                v: Value::Map(m), ..
            },
            ..
        }) => m,
        Some(e) => return Err(Error::at(e.at, "services", "must be a mapping of services")),
        None => return Err(Error::at(root.at, "services", "is required")),
    };
    if services.is_empty() {
        return Err(Error::at(root.at, "services", "names no service"));
    }
    let mut planned = Vec::new();
    let mut optional = Vec::new();
    for e in services {
        let (p, opt) = service(&mut cx, e).map_err(|err| err.in_service(&e.key))?;
        optional.extend(opt.into_iter().map(|d| (p.name.clone(), d)));
        planned.push((e.at, p));
    }
    // `required: false`: a dependency that is not in the files is not waited for.
    let names: Vec<String> = planned.iter().map(|(_, p)| p.name.clone()).collect();
    for (_, p) in planned.iter_mut() {
        p.depends_on
            .retain(|(d, _)| names.contains(d) || !optional.contains(&(p.name.clone(), d.clone())));
    }
    let ordered = order(planned)?;
    Ok(Plan {
        project: cx.project,
        services: ordered,
        warnings: cx.warnings,
    })
}

/// Topological order by `depends_on`, stable in file order; a cycle or an unknown service is
/// an error.
fn order(planned: Vec<(At, Planned)>) -> Result<Vec<Planned>, Error> {
    let names: Vec<String> = planned.iter().map(|(_, p)| p.name.clone()).collect();
    for (at, p) in &planned {
        for (d, _) in &p.depends_on {
            if !names.contains(d) {
                return Err(Error::at(
                    *at,
                    "depends_on",
                    format!("names {d:?}, which is not a service of this file"),
                )
                .in_service(&p.name));
            }
        }
    }
    let mut done: Vec<Planned> = Vec::new();
    let mut left = planned;
    while !left.is_empty() {
        let ready = left.iter().position(|(_, p)| {
            p.depends_on
                .iter()
                .all(|(d, _)| done.iter().any(|x| &x.name == d))
        });
        match ready {
            Some(i) => done.push(left.remove(i).1),
            None => {
                let (at, p) = &left[0];
                let cycle: Vec<&str> = left.iter().map(|(_, p)| p.name.as_str()).collect();
                return Err(Error::at(
                    *at,
                    "depends_on",
                    format!(
                        "services depend on each other in a cycle: {}",
                        cycle.join(", ")
                    ),
                )
                .in_service(&p.name));
            }
        }
    }
    Ok(done)
}

fn top_volumes(cx: &mut Ctx, e: &Entry) -> Result<(), Error> {
    for v in map_entries(&e.node, "volumes")? {
        let mut docker_name = format!("{}_{}", cx.project, v.key);
        if let Value::Map(keys) = &v.node.v {
            let mut external = false;
            let mut given = None;
            for k in keys {
                let key = format!("volumes.{}.{}", v.key, k.key);
                match k.key.as_str() {
                    "driver" => {
                        let d = text(&k.node, &key)?;
                        if d != "local" {
                            return Err(Error::at(
                                k.at,
                                &key,
                                format!(
                                    "{d:?}: Orion's volumes are local named volumes; remove driver or set it to local"
                                ),
                            ));
                        }
                    }
                    "external" => external = boolean(&k.node, &key)?,
                    "name" => given = Some(text(&k.node, &key)?),
                    x if x.starts_with("x-") => {}
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not supported by Orion: volumes are local named volumes (driver, name and external are honoured)",
                        ));
                    }
                }
            }
            if let Some(n) = given {
                docker_name = n;
            } else if external {
                docker_name = v.key.clone();
            }
        } else if v.node.v != Value::Null {
            return Err(Error::at(
                v.at,
                &format!("volumes.{}", v.key),
                "must be a mapping or empty",
            ));
        }
        cx.volumes.insert(v.key.clone(), docker_name);
    }
    Ok(())
}

fn top_networks(cx: &mut Ctx, e: &Entry) -> Result<(), Error> {
    for n in map_entries(&e.node, "networks")? {
        if let Value::Map(keys) = &n.node.v {
            for k in keys {
                let key = format!("networks.{}.{}", n.key, k.key);
                match k.key.as_str() {
                    "driver" => {
                        let d = text(&k.node, &key)?;
                        if !matches!(d.as_str(), "bridge" | "overlay") {
                            return Err(Error::at(
                                k.at,
                                &key,
                                format!(
                                    "{d:?}: every service of a stack reaches the others through Orion's mesh; remove driver"
                                ),
                            ));
                        }
                    }
                    "external" | "name" | "attachable" => {}
                    x if x.starts_with("x-") => {}
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not supported by Orion: networks are accepted by name only (services reach each other by name through discovery)",
                        ));
                    }
                }
            }
        } else if n.node.v != Value::Null {
            return Err(Error::at(
                n.at,
                &format!("networks.{}", n.key),
                "must be a mapping or empty",
            ));
        }
        cx.networks.push(n.key.clone());
    }
    Ok(())
}

/// Top-level `secrets:` or `configs:`: name -> content, read from `file` (relative to the
/// project folder), `environment` (a variable) or, for configs, `content`.
fn top_files(cx: &Ctx, e: &Entry, what: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for s in map_entries(&e.node, what)? {
        let base = format!("{what}.{}", s.key);
        let mut content: Option<String> = None;
        for k in map_entries(&s.node, &base)? {
            let key = format!("{base}.{}", k.key);
            let got = match k.key.as_str() {
                "file" => {
                    let path = text(&k.node, &key)?;
                    let bytes = cx.files.read(&path).map_err(|m| Error::at(k.at, &key, m))?;
                    if bytes.len() > orion_types::limits::FILE_BYTES_MAX {
                        return Err(Error::at(
                            k.at,
                            &key,
                            format!(
                                "{path} is larger than {} bytes (Orion keeps secrets and configs in its replicated state)",
                                orion_types::limits::FILE_BYTES_MAX
                            ),
                        ));
                    }
                    String::from_utf8(bytes)
                        .map_err(|_| Error::at(k.at, &key, format!("{path} is not UTF-8 text")))?
                }
                "environment" => {
                    let var = text(&k.node, &key)?;
                    cx.input.vars.get(&var).cloned().ok_or_else(|| {
                        Error::at(k.at, &key, format!("variable {var} is not set"))
                    })?
                }
                "content" if what == "configs" => text(&k.node, &key)?,
                "external" => {
                    return Err(Error::at(
                        k.at,
                        &key,
                        format!("Orion has no {what} store outside the file: give file: PATH"),
                    ));
                }
                "name" => continue,
                x if x.starts_with("x-") => continue,
                _ => {
                    return Err(Error::at(
                        k.at,
                        &key,
                        format!(
                            "is not supported by Orion; give file: PATH{}",
                            if what == "configs" {
                                ", content or environment"
                            } else {
                                " or environment: VAR"
                            }
                        ),
                    ));
                }
            };
            content = Some(got);
        }
        let content = content
            .ok_or_else(|| Error::at(s.at, &base, "needs file: PATH (or environment: VAR)"))?;
        out.insert(s.key.clone(), content);
    }
    Ok(out)
}

/// One service: its body, the compose key and line of each body field (to place errors of
/// the validation), and its dependencies.
fn service(cx: &mut Ctx, e: &Entry) -> Result<(Planned, Vec<String>), Error> {
    let name = e.key.clone();
    orion_types::service::check_dns_label("name", &name).map_err(|_| {
        Error::at(
            e.at,
            "",
            "a service name must be a DNS label (a-z, 0-9, '-', at most 63): rename it",
        )
    })?;
    let keys = map_entries(&e.node, "")?;
    let mut body = Map::new();
    let mut from: BTreeMap<&'static str, (String, At)> = BTreeMap::new();
    macro_rules! put {
        ($body:expr, $field:expr, $v:expr, $key:expr, $at:expr) => {{
            let v = $v;
            $body.insert($field.to_string(), v);
            from.insert($field, ($key.to_string(), $at));
        }};
    }
    put!(&mut body, "name", json!(name), "", e.at);
    put!(&mut body, "stack", json!(cx.project), "", e.at);
    let mut depends = Vec::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut env_file: BTreeMap<String, String> = BTreeMap::new();
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut ports: Vec<Json> = Vec::new();
    let mut ports_at: Option<(String, At)> = None;
    let mut mounts: Vec<Json> = Vec::new();
    let mut files_out: Vec<Json> = Vec::new();
    let mut build: Option<At> = None;
    let mut container_name: Option<At> = None;
    let mut restart: Option<(String, At)> = None;
    let mut deploy: Option<&Entry> = None;
    for k in keys {
        let key = k.key.as_str();
        let n = &k.node;
        match key {
            "image" => put!(&mut body, "image", json!(text(n, key)?), key, k.at),
            "build" => build = Some(k.at),
            "command" => put!(&mut body, "command", json!(words(n, key)?), key, k.at),
            "entrypoint" => put!(&mut body, "entrypoint", json!(words(n, key)?), key, k.at),
            "environment" => {
                for (var, value, _) in pairs(n, key)? {
                    // `VAR` without a value takes it from the shell, as compose does; unset
                    // there, the variable is left out.
                    if let Some(v) = value.or_else(|| cx.input.vars.get(&var).cloned()) {
                        env.insert(var, v);
                    }
                }
                from.insert("env", (key.into(), k.at));
            }
            "env_file" => {
                env_file_into(cx, n, &mut env_file)?;
                from.entry("env").or_insert((key.into(), k.at));
            }
            "labels" => {
                for (l, value, _) in pairs(n, key)? {
                    labels.insert(l, value.unwrap_or_default());
                }
                from.insert("labels", (key.into(), k.at));
            }
            "ports" => {
                for item in seq(n, key)? {
                    ports.extend(port(item)?);
                }
                ports_at = Some((key.into(), k.at));
            }
            "expose" => {
                for item in seq(n, key)? {
                    let t = text(item, key)?;
                    let (p, proto) = t.split_once('/').unwrap_or((&t, "tcp"));
                    for target in range(p).map_err(|m| Error::at(item.at, key, m))? {
                        ports.push(json!({"target": target, "protocol": proto}));
                    }
                }
                ports_at.get_or_insert((key.into(), k.at));
            }
            "healthcheck" => {
                if let Some(h) = healthcheck(n)? {
                    put!(&mut body, "healthcheck", h, key, k.at);
                }
            }
            "restart" => restart = Some((text(n, key)?, k.at)),
            "deploy" => deploy = Some(k),
            "depends_on" => depends = depends_on(n)?,
            "volumes" => {
                for item in seq(n, key)? {
                    mounts.push(volume(cx, item)?);
                }
                from.insert("mounts", (key.into(), k.at));
            }
            "secrets" | "configs" => {
                for item in seq(n, key)? {
                    files_out.push(file_ref(cx, item, key)?);
                }
                from.insert("files", (key.into(), k.at));
            }
            "stop_grace_period" => {
                put!(
                    &mut body,
                    "stopGracePeriod",
                    json!(text(n, key)?),
                    key,
                    k.at
                )
            }
            "stop_signal" => put!(&mut body, "stopSignal", json!(text(n, key)?), key, k.at),
            "user" => put!(&mut body, "user", json!(text(n, key)?), key, k.at),
            "working_dir" => put!(&mut body, "workingDir", json!(text(n, key)?), key, k.at),
            "hostname" => put!(&mut body, "hostname", json!(text(n, key)?), key, k.at),
            "networks" => networks(cx, n)?,
            "container_name" => container_name = Some(k.at),
            x if x.starts_with("x-") => {}
            _ => {
                let hint = UNSUPPORTED
                    .iter()
                    .find(|(u, _)| *u == key)
                    .map(|(_, h)| format!("is not supported by Orion: {h}"))
                    .unwrap_or_else(|| {
                        "is not a compose key Orion knows (docs/API.md lists those it honours)"
                            .to_string()
                    });
                return Err(Error::at(k.at, key, hint));
            }
        }
    }
    if !body.contains_key("image") {
        return Err(match build {
            Some(at) => Error::at(
                at,
                "build",
                "Orion has no registry to push a build to: build the image, load it on the nodes (or push it to your registry) and give image:",
            ),
            None => Error::at(e.at, "image", "is required"),
        });
    }
    if build.is_some() {
        cx.warnings.push(format!(
            "service {name:?}: build skipped, the image {} is used as it is",
            body["image"]
        ));
    }
    // env_file first, environment over it: compose's precedence.
    env_file.extend(env);
    if !env_file.is_empty() {
        body.insert("env".into(), json!(env_file));
    }
    if let Some((policy, at)) = restart {
        let p = match policy.as_str() {
            "no" => "never",
            "always" | "unless-stopped" => "always",
            "on-failure" => "on-failure",
            p if p.starts_with("on-failure:") => {
                return Err(Error::at(
                    at,
                    "restart",
                    "on-failure:N is not supported: Orion retries with its own backoff; use on-failure",
                ));
            }
            p => {
                return Err(Error::at(
                    at,
                    "restart",
                    format!("{p:?} is not one of no, always, on-failure, unless-stopped"),
                ));
            }
        };
        put!(&mut body, "restartPolicy", json!(p), "restart", at);
    }
    // `expose` (or a port without `published`) next to a published entry of the same port
    // says nothing more: compose accepts both, so the unpublished one is dropped.
    let published: Vec<(Json, Json)> = ports
        .iter()
        .filter(|p| p.get("published").is_some())
        .map(|p| (p["target"].clone(), p["protocol"].clone()))
        .collect();
    ports.retain(|p| {
        p.get("published").is_some()
            || !published.contains(&(p["target"].clone(), p["protocol"].clone()))
    });
    let mut seen: Vec<Json> = Vec::new();
    ports.retain(|p| {
        if p.get("published").is_some() || !seen.contains(p) {
            seen.push(p.clone());
            true
        } else {
            false
        }
    });
    if !ports.is_empty() {
        body.insert("ports".into(), Json::Array(ports));
        if let Some(p) = ports_at {
            from.insert("ports", p);
        }
    }
    if !mounts.is_empty() {
        body.insert("mounts".into(), Json::Array(mounts));
    }
    if !files_out.is_empty() {
        body.insert("files".into(), Json::Array(files_out));
    }
    if let Some(d) = deploy {
        deploy_into(d, &mut body, &mut labels, &mut from)?;
    }
    if !labels.is_empty() {
        body.insert("labels".into(), json!(labels));
    }
    let replicas = body.get("replicas").and_then(Json::as_u64).unwrap_or(1);
    let global = body.get("mode").and_then(Json::as_str) == Some("global");
    if let Some(at) = container_name {
        if replicas > 1 || global {
            return Err(Error::at(
                at,
                "container_name",
                "a service with more than one replica cannot give its containers one name; remove container_name",
            ));
        }
        cx.warnings.push(format!(
            "service {name:?}: container_name is not used: Orion names containers itself; reach the service by its name"
        ));
    }
    let spec = orion_types::service::validate_service(&body).map_err(|v| {
        let top = v.field.split('.').next().unwrap_or("");
        let (key, at) = from
            .get(top)
            .cloned()
            .unwrap_or_else(|| (v.field.clone(), e.at));
        Error::at(at, &key, v.to_string())
    })?;
    if depends.iter().any(|(d, _, _)| d == &name) {
        return Err(Error::at(
            e.at,
            "depends_on",
            "a service cannot depend on itself",
        ));
    }
    let optional = depends
        .iter()
        .filter(|(_, _, required)| !required)
        .map(|(d, _, _)| d.clone())
        .collect();
    let depends = depends.into_iter().map(|(d, c, _)| (d, c)).collect();
    Ok((
        Planned {
            name,
            body,
            spec,
            depends_on: depends,
        },
        optional,
    ))
}

fn deploy_into(
    d: &Entry,
    body: &mut Map<String, Json>,
    labels: &mut BTreeMap<String, String>,
    from: &mut BTreeMap<&'static str, (String, At)>,
) -> Result<(), Error> {
    let mut update: Option<Map<String, Json>> = None;
    let mut rollback: Option<(Map<String, Json>, At)> = None;
    for k in map_entries(&d.node, "deploy")? {
        let key = format!("deploy.{}", k.key);
        let n = &k.node;
        let mut set = |field: &'static str, v: Json| {
            body.insert(field.into(), v);
            from.insert(field, (key.clone(), k.at));
        };
        match k.key.as_str() {
            "mode" => {
                let m = text(n, &key)?;
                match m.as_str() {
                    "replicated" | "global" => set("mode", json!(m)),
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            format!("{m:?} is not one of replicated, global"),
                        ));
                    }
                }
            }
            "replicas" => set("replicas", json!(number(n, &key)?)),
            "resources" => resources(n, body, from)?,
            "placement" => {
                for p in map_entries(n, &key)? {
                    let pkey = format!("{key}.{}", p.key);
                    match p.key.as_str() {
                        "constraints" => {
                            let list: Vec<String> = seq(&p.node, &pkey)?
                                .iter()
                                .map(|c| text(c, &pkey))
                                .collect::<Result<_, _>>()?;
                            body.insert("constraints".into(), json!(list));
                            from.insert("constraints", (pkey, p.at));
                        }
                        "max_replicas_per_node" => {
                            body.insert("maxPerNode".into(), json!(number(&p.node, &pkey)?));
                            from.insert("maxPerNode", (pkey, p.at));
                        }
                        _ => {
                            return Err(Error::at(
                                p.at,
                                &pkey,
                                "is not supported by Orion: placement honours constraints and max_replicas_per_node (spread is the cluster's strategy)",
                            ));
                        }
                    }
                }
            }
            "update_config" => update = Some(update_config(n, &key)?),
            "rollback_config" => rollback = Some((update_config(n, &key)?, k.at)),
            "restart_policy" => {
                for p in map_entries(n, &key)? {
                    let pkey = format!("{key}.{}", p.key);
                    match p.key.as_str() {
                        "condition" => {
                            let c = text(&p.node, &pkey)?;
                            let policy = match c.as_str() {
                                "none" => "never",
                                "on-failure" => "on-failure",
                                "any" => "always",
                                _ => {
                                    return Err(Error::at(
                                        p.at,
                                        &pkey,
                                        format!("{c:?} is not one of none, on-failure, any"),
                                    ));
                                }
                            };
                            body.insert("restartPolicy".into(), json!(policy));
                            from.insert("restartPolicy", (pkey, p.at));
                        }
                        _ => {
                            return Err(Error::at(
                                p.at,
                                &pkey,
                                "is not supported by Orion: it restarts with its own backoff (the cluster's); only condition is honoured",
                            ));
                        }
                    }
                }
            }
            "labels" => {
                for (l, v, _) in pairs(n, &key)? {
                    labels.insert(l, v.unwrap_or_default());
                }
                from.insert("labels", (key.clone(), k.at));
            }
            "endpoint_mode" => {
                let m = text(n, &key)?;
                if m != "vip" {
                    return Err(Error::at(
                        k.at,
                        &key,
                        format!(
                            "{m:?}: Orion gives every service a VIP, and tasks.NAME resolves to each task; remove endpoint_mode"
                        ),
                    ));
                }
            }
            x if x.starts_with("x-") => {}
            _ => {
                return Err(Error::at(
                    k.at,
                    &key,
                    "is not a deploy key Orion honours (mode, replicas, resources, placement, update_config, rollback_config, restart_policy, labels)",
                ));
            }
        }
    }
    let upd = update.clone().unwrap_or_default();
    if let Some(u) = update {
        body.insert("update".into(), Json::Object(u));
        from.insert("update", ("deploy.update_config".into(), d.at));
    }
    if let Some((r, at)) = rollback {
        // Orion rolls back with the update's settings: a rollback_config that asks for the
        // same is honoured, one that asks for other settings would be ignored, so it is an
        // error.
        let defaults = orion_types::service::validate_service(
            &serde_json::from_value(json!({"name": "x", "image": "x", "update": upd}))
                .unwrap_or_default(),
        )
        .map(|s| s.update)
        .ok();
        let wanted = orion_types::service::validate_service(
            &serde_json::from_value(json!({"name": "x", "image": "x", "update": r}))
                .unwrap_or_default(),
        )
        .map(|s| s.update)
        .map_err(|v| Error::at(at, "deploy.rollback_config", v.to_string()))?;
        if defaults != Some(wanted) {
            return Err(Error::at(
                at,
                "deploy.rollback_config",
                "Orion rolls back with update_config's settings: make rollback_config the same as update_config, or remove it",
            ));
        }
    }
    Ok(())
}

fn update_config(n: &Node, key: &str) -> Result<Map<String, Json>, Error> {
    let mut u = Map::new();
    for p in map_entries(n, key)? {
        let pkey = format!("{key}.{}", p.key);
        let (field, v) = match p.key.as_str() {
            "parallelism" => ("parallelism", json!(number(&p.node, &pkey)?)),
            "delay" => ("delay", json!(text(&p.node, &pkey)?)),
            "monitor" => ("monitor", json!(text(&p.node, &pkey)?)),
            "order" => ("order", json!(text(&p.node, &pkey)?)),
            "failure_action" => ("failureAction", json!(text(&p.node, &pkey)?)),
            "max_failure_ratio" => {
                let t = text(&p.node, &pkey)?;
                let r: f64 = t.parse().map_err(|_| {
                    Error::at(p.at, &pkey, format!("{t:?} must be a number from 0 to 1"))
                })?;
                ("maxFailureRatio", json!(r))
            }
            _ => {
                return Err(Error::at(
                    p.at,
                    &pkey,
                    "is not supported by Orion (parallelism, delay, monitor, order, failure_action, max_failure_ratio are)",
                ));
            }
        };
        u.insert(field.into(), v);
    }
    Ok(u)
}

fn resources(
    n: &Node,
    body: &mut Map<String, Json>,
    from: &mut BTreeMap<&'static str, (String, At)>,
) -> Result<(), Error> {
    // Orion's memory and cpu are a limit and a reservation at once: the limit wins when both
    // are given (the reservation is what the scheduler must find free, which the limit covers).
    let mut got: BTreeMap<(&str, &str), (Json, String, At)> = BTreeMap::new();
    for part in map_entries(n, "deploy.resources")? {
        let pkey = format!("deploy.resources.{}", part.key);
        let which = match part.key.as_str() {
            "limits" => "limits",
            "reservations" => "reservations",
            _ => {
                return Err(Error::at(
                    part.at,
                    &pkey,
                    "is not supported by Orion (limits and reservations are)",
                ));
            }
        };
        for r in map_entries(&part.node, &pkey)? {
            let rkey = format!("{pkey}.{}", r.key);
            match r.key.as_str() {
                "cpus" => {
                    let t = text(&r.node, &rkey)?;
                    let c: f64 = t.parse().map_err(|_| {
                        Error::at(r.at, &rkey, format!("{t:?} must be a number of cores"))
                    })?;
                    got.insert((which, "cpu"), (json!(c), rkey, r.at));
                }
                "memory" => {
                    let t = text(&r.node, &rkey)?;
                    let b = bytes(&t).map_err(|m| Error::at(r.at, &rkey, m))?;
                    got.insert((which, "memory"), (json!(b), rkey, r.at));
                }
                _ => {
                    return Err(Error::at(
                        r.at,
                        &rkey,
                        "is not supported by Orion (cpus and memory are)",
                    ));
                }
            }
        }
    }
    for (field, name) in [("cpu", "cpu"), ("memory", "memory")] {
        let v = got
            .remove(&("limits", name))
            .or_else(|| got.remove(&("reservations", name)));
        if let Some((v, key, at)) = v {
            body.insert(field.into(), v);
            from.insert(if field == "cpu" { "cpu" } else { "memory" }, (key, at));
        }
    }
    Ok(())
}

/// Compose's byte sizes: `512`, `512b`, `64k`/`64kb`, `100m`/`100mb`, `1g`/`1gb`, any case.
fn bytes(t: &str) -> Result<u64, String> {
    let s = t.trim().to_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'm')) => (&s[..i], 1 << 20),
        Some((i, 'g')) => (&s[..i], 1 << 30),
        Some((i, 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{t:?} is not a size like 512m or 1g"))?;
    if !(0.0..=1e15).contains(&n) {
        return Err(format!("{t:?} is out of range"));
    }
    Ok((n * mult as f64) as u64)
}

fn healthcheck(n: &Node) -> Result<Option<Json>, Error> {
    let mut h = Map::new();
    let mut disabled = false;
    for k in map_entries(n, "healthcheck")? {
        let key = format!("healthcheck.{}", k.key);
        match k.key.as_str() {
            "test" => match &k.node.v {
                Value::Str(s) => {
                    h.insert("exec".into(), json!(["/bin/sh", "-c", s]));
                }
                Value::Seq(items) => {
                    let args: Vec<String> = items
                        .iter()
                        .map(|i| text(i, &key))
                        .collect::<Result<_, _>>()?;
                    match args.first().map(String::as_str) {
                        Some("NONE") => disabled = true,
                        Some("CMD") if args.len() > 1 => {
                            h.insert("exec".into(), json!(args[1..]));
                        }
                        Some("CMD-SHELL") if args.len() == 2 => {
                            h.insert("exec".into(), json!(["/bin/sh", "-c", args[1]]));
                        }
                        _ => {
                            return Err(Error::at(
                                k.at,
                                &key,
                                "must be [\"CMD\", args...], [\"CMD-SHELL\", \"command\"], [\"NONE\"] or a shell command",
                            ));
                        }
                    }
                }
                _ => return Err(Error::at(k.at, &key, "must be a list or a command")),
            },
            "interval" | "timeout" => {
                h.insert(k.key.clone(), json!(text(&k.node, &key)?));
            }
            "start_period" => {
                h.insert("startPeriod".into(), json!(text(&k.node, &key)?));
            }
            "retries" => {
                h.insert("retries".into(), json!(number(&k.node, &key)?));
            }
            "disable" => disabled = boolean(&k.node, &key)?,
            "start_interval" => {
                return Err(Error::at(
                    k.at,
                    &key,
                    "is not supported by Orion: it probes at interval from the start (start_period still forgives failures)",
                ));
            }
            _ => {
                return Err(Error::at(
                    k.at,
                    &key,
                    "is not a healthcheck key (test, interval, timeout, retries, start_period, disable are)",
                ));
            }
        }
    }
    if disabled {
        return Ok(None);
    }
    if !h.contains_key("exec") {
        return Err(Error::at(n.at, "healthcheck.test", "is required"));
    }
    Ok(Some(Json::Object(h)))
}

fn depends_on(n: &Node) -> Result<Vec<(String, Condition, bool)>, Error> {
    let entries = match &n.v {
        Value::Seq(items) => list_to_map("depends_on", items.clone()),
        Value::Map(m) => m.clone(),
        _ => return Err(Error::at(n.at, "depends_on", "must be a list or a mapping")),
    };
    let mut out = Vec::new();
    for e in entries {
        if e.key.is_empty() {
            return Err(Error::at(
                e.at,
                "depends_on",
                "entries must be service names",
            ));
        }
        let key = format!("depends_on.{}", e.key);
        let mut cond = Condition::Started;
        let mut required = true;
        if e.node.v != Value::Null {
            for k in map_entries(&e.node, &key)? {
                let kkey = format!("{key}.{}", k.key);
                match k.key.as_str() {
                    "condition" => {
                        let c = text(&k.node, &kkey)?;
                        cond = match c.as_str() {
                            "service_started" => Condition::Started,
                            "service_healthy" => Condition::Healthy,
                            "service_completed_successfully" => Condition::CompletedSuccessfully,
                            _ => {
                                return Err(Error::at(
                                    k.at,
                                    &kkey,
                                    format!(
                                        "{c:?} is not one of service_started, service_healthy, service_completed_successfully"
                                    ),
                                ));
                            }
                        };
                    }
                    "required" => required = boolean(&k.node, &kkey)?,
                    "restart" => {
                        if boolean(&k.node, &kkey)? {
                            return Err(Error::at(
                                k.at,
                                &kkey,
                                "is not supported by Orion: a dependency's update does not restart its dependents; remove it",
                            ));
                        }
                    }
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &kkey,
                            "is not a depends_on key (condition, required are)",
                        ));
                    }
                }
            }
        }
        out.push((e.key, cond, required));
    }
    Ok(out)
}

/// One entry of `ports`: short (`"8080:80/udp"`, `"80"`, `"8000-8001:80-81"`) or long.
fn port(item: &Node) -> Result<Vec<Json>, Error> {
    const K: &str = "ports";
    match &item.v {
        Value::Str(s) => {
            let (spec, proto) = match s.rsplit_once('/') {
                Some((a, p)) => (a, p),
                None => (s.as_str(), "tcp"),
            };
            let parts: Vec<&str> = spec.split(':').collect();
            let (published, target) = match parts.as_slice() {
                [t] => (None, *t),
                [p, t] => (Some(*p), *t),
                _ => {
                    return Err(Error::at(
                        item.at,
                        K,
                        format!(
                            "{s:?}: a host IP is not supported: Orion publishes on each node's --publish-ip; write \"PUBLISHED:TARGET\""
                        ),
                    ));
                }
            };
            let targets = range(target).map_err(|m| Error::at(item.at, K, m))?;
            let published = match published {
                Some(p) if !p.is_empty() => {
                    let p = range(p).map_err(|m| Error::at(item.at, K, m))?;
                    if p.len() != targets.len() {
                        return Err(Error::at(
                            item.at,
                            K,
                            format!("{s:?}: the published and target ranges differ in length"),
                        ));
                    }
                    p.into_iter().map(Some).collect()
                }
                _ => vec![None; targets.len()],
            };
            Ok(targets
                .into_iter()
                .zip(published)
                .map(|(t, p)| {
                    let mut o = json!({"target": t, "protocol": proto});
                    if let Some(p) = p {
                        o["published"] = json!(p);
                    }
                    o
                })
                .collect())
        }
        Value::Map(_) => {
            let mut o = Map::new();
            let mut protocol = "tcp".to_string();
            let mut http = false;
            for k in map_entries(item, K)? {
                let key = format!("ports.{}", k.key);
                match k.key.as_str() {
                    "target" => {
                        o.insert("target".into(), json!(number(&k.node, &key)?));
                    }
                    "published" => {
                        o.insert("published".into(), json!(number(&k.node, &key)?));
                    }
                    "protocol" => protocol = text(&k.node, &key)?,
                    "mode" => {
                        o.insert("mode".into(), json!(text(&k.node, &key)?));
                    }
                    "app_protocol" => {
                        let a = text(&k.node, &key)?;
                        if a != "http" {
                            return Err(Error::at(
                                k.at,
                                &key,
                                format!(
                                    "{a:?}: Orion knows http (anything else is plain TCP); remove it"
                                ),
                            ));
                        }
                        http = true;
                    }
                    "name" => {}
                    "host_ip" => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not supported by Orion: it publishes on each node's --publish-ip",
                        ));
                    }
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not a port key (target, published, protocol, mode, app_protocol, name are)",
                        ));
                    }
                }
            }
            if http && protocol == "tcp" {
                protocol = "http".into();
            }
            o.insert("protocol".into(), json!(protocol));
            Ok(vec![Json::Object(o)])
        }
        _ => Err(Error::at(
            item.at,
            K,
            "entries must be \"PUBLISHED:TARGET\" or a mapping",
        )),
    }
}

/// `80` or `8000-8003`.
fn range(s: &str) -> Result<Vec<u64>, String> {
    let p = |x: &str| {
        x.trim()
            .parse::<u64>()
            .ok()
            .filter(|v| (1..=65535).contains(v))
            .ok_or_else(|| format!("{s:?} is not a port (1 to 65535) or range"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (p(a)?, p(b)?);
            if a > b || b - a >= orion_types::limits::PORTS_MAX as u64 {
                return Err(format!(
                    "{s:?} is not a range of at most {} ports",
                    orion_types::limits::PORTS_MAX
                ));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![p(s)?]),
    }
}

/// One entry of a service's `volumes`: short (`data:/var/lib/x:ro`, `/host:/c`) or long.
fn volume(cx: &Ctx, item: &Node) -> Result<Json, Error> {
    const K: &str = "volumes";
    let (kind, source, target, read_only) = match &item.v {
        Value::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (src, dst, mode) = match parts.as_slice() {
                [_] => {
                    return Err(Error::at(
                        item.at,
                        K,
                        format!(
                            "{s:?}: an anonymous volume is not supported: name it (NAME:{s}) and declare it under the top-level volumes"
                        ),
                    ));
                }
                [a, b] => (*a, *b, ""),
                [a, b, m] => (*a, *b, *m),
                _ => {
                    return Err(Error::at(
                        item.at,
                        K,
                        format!("{s:?} is not SOURCE:TARGET[:MODE]"),
                    ));
                }
            };
            let ro = match mode {
                "" | "rw" => false,
                "ro" => true,
                m => {
                    return Err(Error::at(
                        item.at,
                        K,
                        format!("{m:?}: only ro and rw are supported"),
                    ));
                }
            };
            let kind = if src.starts_with('/') {
                "bind"
            } else {
                "volume"
            };
            (kind.to_string(), src.to_string(), dst.to_string(), ro)
        }
        Value::Map(_) => {
            let mut kind = "volume".to_string();
            let (mut source, mut target, mut ro) = (String::new(), String::new(), false);
            for k in map_entries(item, K)? {
                let key = format!("volumes.{}", k.key);
                match k.key.as_str() {
                    "type" => kind = text(&k.node, &key)?,
                    "source" => source = text(&k.node, &key)?,
                    "target" => target = text(&k.node, &key)?,
                    "read_only" => ro = boolean(&k.node, &key)?,
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not supported by Orion (type, source, target, read_only are)",
                        ));
                    }
                }
            }
            if kind != "volume" && kind != "bind" {
                return Err(Error::at(
                    item.at,
                    "volumes.type",
                    format!(
                        "{kind:?}: Orion mounts named volumes and absolute host paths (volume, bind)"
                    ),
                ));
            }
            (kind, source, target, ro)
        }
        _ => {
            return Err(Error::at(
                item.at,
                K,
                "entries must be SOURCE:TARGET or a mapping",
            ));
        }
    };
    if source.starts_with('.')
        || source.starts_with('~')
        || (kind == "bind" && !source.starts_with('/'))
    {
        return Err(Error::at(
            item.at,
            K,
            format!(
                "{source:?}: a relative bind path is not supported: a service runs on any node, so give an absolute path that exists on every node (or use a named volume)"
            ),
        ));
    }
    let source = if kind == "volume" {
        cx.volumes.get(&source).cloned().ok_or_else(|| {
            Error::at(
                item.at,
                K,
                format!("volume {source:?} is not declared under the top-level volumes"),
            )
        })?
    } else {
        source
    };
    Ok(json!({"type": kind, "source": source, "target": target, "readOnly": read_only}))
}

/// One entry of a service's `secrets` or `configs`.
fn file_ref(cx: &Ctx, item: &Node, what: &str) -> Result<Json, Error> {
    let (source, mut target, mut mode) = match &item.v {
        Value::Str(s) => (s.clone(), None, None),
        Value::Map(_) => {
            let (mut source, mut target, mut mode) = (String::new(), None, None);
            for k in map_entries(item, what)? {
                let key = format!("{what}.{}", k.key);
                match k.key.as_str() {
                    "source" => source = text(&k.node, &key)?,
                    "target" => target = Some(text(&k.node, &key)?),
                    "mode" => {
                        let t = text(&k.node, &key)?;
                        mode = Some(octal(&t).map_err(|m| Error::at(k.at, &key, m))?);
                    }
                    "uid" | "gid" => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not supported by Orion: the file belongs to the service's user (a numeric user:) or root; use mode",
                        ));
                    }
                    _ => {
                        return Err(Error::at(
                            k.at,
                            &key,
                            "is not supported by Orion (source, target, mode are)",
                        ));
                    }
                }
            }
            (source, target, mode)
        }
        _ => {
            return Err(Error::at(
                item.at,
                what,
                "entries must be names or mappings",
            ));
        }
    };
    let store = if what == "secrets" {
        &cx.secrets
    } else {
        &cx.configs
    };
    let content = store.get(&source).ok_or_else(|| {
        Error::at(
            item.at,
            what,
            format!("{source:?} is not declared under the top-level {what}"),
        )
    })?;
    let t = target.take().unwrap_or_else(|| source.clone());
    let target = match (what, t.starts_with('/')) {
        (_, true) => t,
        ("secrets", false) => format!("/run/secrets/{t}"),
        _ => format!("/{t}"),
    };
    let mode = mode.take().unwrap_or(0o444);
    Ok(json!({"target": target, "content": content, "mode": mode}))
}

/// A file mode as compose writes it: `0440` and `0o440` are octal, `288` decimal.
fn octal(t: &str) -> Result<u32, String> {
    let r = if let Some(o) = t.strip_prefix("0o") {
        u32::from_str_radix(o, 8)
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<u32>()
    };
    r.ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{t:?} is not a file mode like 0440"))
}

fn networks(cx: &Ctx, n: &Node) -> Result<(), Error> {
    let names: Vec<(String, At, Option<&Node>)> = match &n.v {
        Value::Seq(items) => items
            .iter()
            .map(|i| Ok((text(i, "networks")?, i.at, None)))
            .collect::<Result<_, Error>>()?,
        Value::Map(m) => m
            .iter()
            .map(|e| (e.key.clone(), e.at, Some(&e.node)))
            .collect(),
        _ => return Err(Error::at(n.at, "networks", "must be a list or a mapping")),
    };
    for (name, at, opts) in names {
        if !cx.networks.contains(&name) {
            return Err(Error::at(
                at,
                "networks",
                format!("network {name:?} is not declared under the top-level networks"),
            ));
        }
        if let Some(o) = opts
            && o.v != Value::Null
            && let Some(k) = map_entries(o, "networks")?.first()
        {
            return Err(Error::at(
                k.at,
                &format!("networks.{name}.{}", k.key),
                "is not supported by Orion: a service is reached by its name (and name.stack) through discovery; aliases and addresses are not set",
            ));
        }
    }
    Ok(())
}

fn env_file_into(cx: &Ctx, n: &Node, env: &mut BTreeMap<String, String>) -> Result<(), Error> {
    const K: &str = "env_file";
    let items: Vec<(String, bool, At)> = match &n.v {
        Value::Str(s) => vec![(s.clone(), true, n.at)],
        Value::Seq(items) => {
            let mut out = Vec::new();
            for i in items {
                match &i.v {
                    Value::Str(s) => out.push((s.clone(), true, i.at)),
                    Value::Map(_) => {
                        let mut path = String::new();
                        let mut required = true;
                        for k in map_entries(i, K)? {
                            let key = format!("env_file.{}", k.key);
                            match k.key.as_str() {
                                "path" => path = text(&k.node, &key)?,
                                "required" => required = boolean(&k.node, &key)?,
                                "format" => {}
                                _ => {
                                    return Err(Error::at(
                                        k.at,
                                        &key,
                                        "is not an env_file key (path, required are)",
                                    ));
                                }
                            }
                        }
                        out.push((path, required, i.at));
                    }
                    _ => return Err(Error::at(i.at, K, "entries must be paths")),
                }
            }
            out
        }
        _ => return Err(Error::at(n.at, K, "must be a path or a list of paths")),
    };
    for (path, required, at) in items {
        let bytes = match cx.files.read(&path) {
            Ok(b) => b,
            Err(_) if !required => continue,
            Err(m) => return Err(Error::at(at, K, m)),
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::at(at, K, format!("{path} is not UTF-8 text")))?;
        for (k, v) in
            interp::parse_dotenv(&text).map_err(|m| Error::at(at, K, format!("{path}: {m}")))?
        {
            if let Some(v) = v.or_else(|| cx.input.vars.get(&k).cloned()) {
                env.insert(k, v);
            }
        }
    }
    Ok(())
}

// ---- small readers: each error names the key and the line ----

fn text(n: &Node, key: &str) -> Result<String, Error> {
    match &n.v {
        Value::Str(s) => Ok(s.clone()),
        Value::Null => Err(Error::at(n.at, key, "needs a value")),
        _ => Err(Error::at(
            n.at,
            key,
            "must be a single value, not a list or mapping",
        )),
    }
}

fn boolean(n: &Node, key: &str) -> Result<bool, Error> {
    match text(n, key)?.as_str() {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        t => Err(Error::at(n.at, key, format!("{t:?} must be true or false"))),
    }
}

fn number(n: &Node, key: &str) -> Result<u64, Error> {
    let t = text(n, key)?;
    t.parse()
        .map_err(|_| Error::at(n.at, key, format!("{t:?} must be a whole number")))
}

fn seq<'n>(n: &'n Node, key: &str) -> Result<&'n [Node], Error> {
    match &n.v {
        Value::Seq(items) => Ok(items),
        Value::Null => Ok(&[]),
        _ => Err(Error::at(n.at, key, "must be a list")),
    }
}

fn map_entries<'n>(n: &'n Node, key: &str) -> Result<&'n [Entry], Error> {
    match &n.v {
        Value::Map(m) => Ok(m),
        Value::Null => Ok(&[]),
        _ => Err(Error::at(n.at, key, "must be a mapping")),
    }
}

/// A command: a list, or a string split as a shell would (without running one).
fn words(n: &Node, key: &str) -> Result<Vec<String>, Error> {
    match &n.v {
        Value::Str(s) => shell_words::split(s)
            .map_err(|e| Error::at(n.at, key, format!("{s:?} cannot be split into words: {e}"))),
        Value::Seq(items) => items.iter().map(|i| text(i, key)).collect(),
        Value::Null => Ok(Vec::new()),
        Value::Map(_) => Err(Error::at(n.at, key, "must be a list or a string")),
    }
}

/// `environment`/`labels` in map or list (`K=V`) form.
fn pairs(n: &Node, key: &str) -> Result<Vec<(String, Option<String>, At)>, Error> {
    let entries = match &n.v {
        Value::Seq(items) => list_to_map(key, items.clone()),
        Value::Map(m) => m.clone(),
        Value::Null => Vec::new(),
        Value::Str(_) => return Err(Error::at(n.at, key, "must be a mapping or a list of K=V")),
    };
    entries
        .into_iter()
        .map(|e| {
            if e.key.is_empty() {
                return Err(Error::at(e.at, key, "entries must be K=V text"));
            }
            let v = match &e.node.v {
                Value::Null => None,
                Value::Str(s) => Some(s.clone()),
                _ => {
                    return Err(Error::at(
                        e.at,
                        key,
                        format!("{}: must be a single value", e.key),
                    ));
                }
            };
            Ok((e.key, v, e.at))
        })
        .collect()
}
