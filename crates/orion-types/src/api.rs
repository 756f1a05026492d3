//! Parsing and validating the task a user submits (`POST /tasks`, API.md) into a `TaskSpec`.
//!
//! The body is read as a JSON object and each field is checked by hand rather than by serde
//! derive, so that every error names its field (`{"error": "memory: must be ..."}`), and
//! unknown fields are refused rather than silently ignored.

use crate::limits::*;
use crate::{
    Constraint, ConstraintOp, NodeAttr, PortSpec, Protocol, RestartPolicy, Strategy, TaskSpec,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A field of the request and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

pub(crate) fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The fields of `POST /tasks`.
pub(crate) const FIELDS: &[&str] = &[
    "image",
    "name",
    "command",
    "env",
    "memory",
    "cpu",
    "portBindings",
    "restartPolicy",
    "labels",
    "nodeSelectors",
    "constraints",
    "strategy",
    "stopAfterDisconnect",
];

/// The body of `POST /tasks` as the OpenAPI description shows it. `parse_task_request` reads
/// the JSON by hand (so that every error names its field); this type only documents what it
/// accepts, and a test checks that it names exactly the fields of `FIELDS`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "image": "nginx:1.27", "name": "web", "memory": "128m", "cpu": 0.5,
    "portBindings": {"80/tcp": "8080"}, "restartPolicy": "on-failure",
    "constraints": ["node.labels.zone == a"]
}))]
pub struct TaskRequest {
    /// Image reference, e.g. `nginx:1.27`. The only required field.
    pub image: String,
    /// A name for people: letters, digits, `_`, `.` and `-`. Ids stay the key.
    pub name: Option<String>,
    /// Command and arguments; `[]` or absent: the image's own.
    pub command: Option<Vec<String>>,
    /// Environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// Memory limit: bytes, or a size like `"100m"`, `"1g"`; 0 or absent: no limit.
    pub memory: Option<OrText<u64>>,
    /// CPU share in cores, e.g. 0.5; 0 or absent: no limit.
    pub cpu: Option<OrText<f64>>,
    /// `{"CONTAINER_PORT[/tcp|udp]": "HOST_PORT"}`; host port `""` or `"0"`: Orion picks one
    /// from the dynamic range.
    pub port_bindings: Option<BTreeMap<String, OrText<u16>>>,
    /// Default `always`.
    pub restart_policy: Option<RestartPolicy>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Node labels a node must have, e.g. `{"zone": "a"}`.
    pub node_selectors: Option<BTreeMap<String, String>>,
    /// Placement rules like `node.labels.zone == a`, `node.id != n3`.
    pub constraints: Option<Vec<String>>,
    /// Placement strategy; absent: the cluster's (`GET /cluster/config`).
    pub strategy: Option<Strategy>,
    /// Stop the task this long after its node is cut off from the cluster, e.g. `"30s"`.
    pub stop_after_disconnect: Option<String>,
}

/// A value, or text that says the same (documentation only): a size in bytes or `"100m"`,
/// cores or `"0.5"`, a port or `"8080"`, seconds or `"1m30s"`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OrText<T> {
    Value(T),
    Text(String),
}

/// Parses a `POST /tasks` body into a valid `TaskSpec`.
pub fn parse_task_request(body: &[u8]) -> Result<TaskSpec, ValidationError> {
    validate_task(&parse_object(body)?)
}

/// Validates an already parsed JSON object.
pub fn validate_task(obj: &Map<String, Value>) -> Result<TaskSpec, ValidationError> {
    refuse_unknown(obj, FIELDS)?;
    task_fields(obj)
}

/// Refuses the first field of `obj` that is not in `known`, naming it.
pub(crate) fn refuse_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
) -> Result<(), ValidationError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(err(
            unknown,
            format!("unknown field; known fields are {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Parses a JSON body into an object, or an error that names no field.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ValidationError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(err(
            "",
            format!("request body is larger than {BODY_BYTES_MAX} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| err("", format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(err("", "request body must be a JSON object")),
    }
}

/// The fields a task and a service share (`FIELDS`), validated into a `TaskSpec`. The caller
/// has refused unknown fields already. Services use it too, so both are validated alike.
pub(crate) fn task_fields(obj: &Map<String, Value>) -> Result<TaskSpec, ValidationError> {
    let image = match obj.get("image") {
        None | Some(Value::Null) => return Err(err("image", "is required")),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(err("image", "must be a string")),
    };
    check_image(&image)?;
    let name = opt_string(obj, "name", NAME_BYTES_MAX)?;
    let command = match obj.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut args = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => args.push(s.clone()),
                    _ => return Err(err("command", "must be an array of strings")),
                }
            }
            // `[]` means no command, as if it were omitted; the bounds are `TaskSpec::validate`'s.
            if args.is_empty() { None } else { Some(args) }
        }
        Some(_) => {
            return Err(err(
                "command",
                "must be an array of strings, e.g. [\"sh\", \"-c\", \"exit 3\"]",
            ));
        }
    };
    let env = string_map(obj, "env")?;
    let memory_bytes = parse_memory(obj.get("memory"))?;
    let cpu_millis = parse_cpu(obj.get("cpu"))?;
    let ports = parse_ports(obj.get("portBindings"))?;
    let restart_policy = match obj.get("restartPolicy") {
        None | Some(Value::Null) => RestartPolicy::default(),
        Some(Value::String(s)) => RestartPolicy::parse(s).ok_or_else(|| {
            err(
                "restartPolicy",
                format!("{s:?} is not one of \"always\", \"on-failure\", \"never\""),
            )
        })?,
        Some(_) => {
            return Err(err(
                "restartPolicy",
                "must be one of \"always\", \"on-failure\", \"never\"",
            ));
        }
    };
    let labels = string_map(obj, "labels")?;
    let node_selectors = string_map(obj, "nodeSelectors")?;
    let constraints = match obj.get("constraints") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > CONSTRAINTS_MAX {
                return Err(err(
                    "constraints",
                    format!("has more than {CONSTRAINTS_MAX} entries"),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(text) = item else {
                    return Err(err("constraints", "must be an array of strings"));
                };
                out.push(Constraint::parse(text).map_err(|m| err("constraints", m))?);
            }
            out
        }
        Some(_) => {
            return Err(err(
                "constraints",
                "must be an array of strings like \"node.labels.zone == a\"",
            ));
        }
    };
    let strategy = match obj.get("strategy") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Strategy::parse(s).ok_or_else(|| {
            err(
                "strategy",
                format!("{s:?} is not one of \"spread\", \"binpack\""),
            )
        })?),
        Some(_) => return Err(err("strategy", "must be \"spread\" or \"binpack\"")),
    };
    let stop_after_disconnect_ms = match obj.get("stopAfterDisconnect") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let ms = parse_duration_ms(s).map_err(|m| err("stopAfterDisconnect", m))?;
            if !(STOP_AFTER_DISCONNECT_MIN_MS..=STOP_AFTER_DISCONNECT_MAX_MS).contains(&ms) {
                return Err(err(
                    "stopAfterDisconnect",
                    format!(
                        "{s:?} must be between {} and {}",
                        format_duration_ms(STOP_AFTER_DISCONNECT_MIN_MS),
                        format_duration_ms(STOP_AFTER_DISCONNECT_MAX_MS)
                    ),
                ));
            }
            Some(ms)
        }
        Some(_) => {
            return Err(err(
                "stopAfterDisconnect",
                "must be a duration string like \"30s\" or \"5m\"",
            ));
        }
    };
    let spec = TaskSpec {
        image,
        name,
        command,
        env,
        memory_bytes,
        cpu_millis,
        ports,
        restart_policy,
        labels,
        node_selectors,
        constraints,
        strategy,
        healthcheck: None,
        stop_grace_period_ms: None,
        stop_after_disconnect_ms,
        container: Default::default(),
    };
    // The value rules live in one function that every entry point calls: this parser and
    // the inter-node forward endpoint (through `Command::validate`).
    spec.validate()?;
    Ok(spec)
}

impl TaskSpec {
    /// Checks every value of the spec against the rules and `limits` of `POST /tasks`: the
    /// one place those rules are written. The API parser calls it on what it built; the
    /// inter-node forward endpoint calls it (through `Command::validate`) on what a peer sent,
    /// since a spec's fields are public and a deserialized one was checked by nobody.
    /// Errors name the API field (`memory`, `portBindings`, ...).
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_image(&self.image)?;
        if let Some(n) = &self.name {
            check_name(n)?;
        }
        if let Some(args) = &self.command {
            check_command(args)?;
        }
        check_map("env", &self.env)?;
        if let Some(k) = self.env.keys().find(|k| k.contains('=')) {
            return Err(err(
                "env",
                format!("variable name {k:?} must be non-empty and hold no '='"),
            ));
        }
        check_memory(self.memory_bytes)?;
        check_cpu_millis(self.cpu_millis)?;
        check_ports(&self.ports)?;
        check_map("labels", &self.labels)?;
        check_map("nodeSelectors", &self.node_selectors)?;
        if self.constraints.len() > CONSTRAINTS_MAX {
            return Err(err(
                "constraints",
                format!("has more than {CONSTRAINTS_MAX} entries"),
            ));
        }
        for c in &self.constraints {
            check_constraint(c)?;
        }
        if let Some(ms) = self.stop_after_disconnect_ms
            && !(STOP_AFTER_DISCONNECT_MIN_MS..=STOP_AFTER_DISCONNECT_MAX_MS).contains(&ms)
        {
            return Err(err(
                "stopAfterDisconnect",
                format!(
                    "must be between {} and {}",
                    format_duration_ms(STOP_AFTER_DISCONNECT_MIN_MS),
                    format_duration_ms(STOP_AFTER_DISCONNECT_MAX_MS)
                ),
            ));
        }
        check_container(&self.container)
    }
}

/// Bounds and rules of a service's container settings (`entrypoint`, `user`, `workingDir`,
/// `hostname`, `stopSignal`, `mounts`, `files`).
fn check_container(c: &crate::ContainerOptions) -> Result<(), ValidationError> {
    if let Some(args) = &c.entrypoint
        && (args.len() > COMMAND_ARGS_MAX || args.iter().any(|a| a.len() > ARG_BYTES_MAX))
    {
        return Err(err(
            "entrypoint",
            format!("at most {COMMAND_ARGS_MAX} arguments of {ARG_BYTES_MAX} bytes"),
        ));
    }
    let text = |field: &str, v: &Option<String>, ok: &dyn Fn(char) -> bool| match v {
        Some(s) if s.is_empty() || s.len() > PATH_BYTES_MAX || !s.chars().all(ok) => Err(err(
            field,
            format!("{s:?} must be 1 to {PATH_BYTES_MAX} bytes of allowed characters"),
        )),
        _ => Ok(()),
    };
    text("user", &c.user, &|ch| {
        ch.is_ascii_alphanumeric() || "_.-:".contains(ch)
    })?;
    text("hostname", &c.hostname, &|ch| {
        ch.is_ascii_alphanumeric() || ".-".contains(ch)
    })?;
    text("stopSignal", &c.stop_signal, &|ch| {
        ch.is_ascii_alphanumeric() || ch == '+'
    })?;
    if let Some(dir) = &c.working_dir {
        check_abs_path("workingDir", dir)?;
    }
    if c.mounts.len() > MOUNTS_MAX {
        return Err(err("mounts", format!("has more than {MOUNTS_MAX} entries")));
    }
    for m in &c.mounts {
        check_abs_path("mounts.target", &m.target)?;
        match m.kind {
            crate::MountKind::Bind => check_abs_path("mounts.source", &m.source)?,
            crate::MountKind::Volume => {
                let ok = !m.source.is_empty()
                    && m.source.len() <= NAME_BYTES_MAX
                    && m.source.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && m.source
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
                if !ok {
                    return Err(err(
                        "mounts.source",
                        format!(
                            "{:?} is not a volume name: 1 to {NAME_BYTES_MAX} of letters, digits, '_', '.', '-'",
                            m.source
                        ),
                    ));
                }
            }
        }
    }
    if c.files.len() > FILES_MAX {
        return Err(err("files", format!("has more than {FILES_MAX} entries")));
    }
    for f in &c.files {
        check_abs_path("files.target", &f.target)?;
        if f.content.len() > FILE_BYTES_MAX {
            return Err(err(
                "files.content",
                format!("{} is larger than {FILE_BYTES_MAX} bytes", f.target),
            ));
        }
        if f.mode > 0o777 {
            return Err(err(
                "files.mode",
                format!("{:o} is not a permission mode", f.mode),
            ));
        }
    }
    let mut targets: Vec<&str> = c
        .mounts
        .iter()
        .map(|m| m.target.as_str())
        .chain(c.files.iter().map(|f| f.target.as_str()))
        .collect();
    targets.sort_unstable();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(err("mounts.target", format!("{} is mounted twice", w[0])));
    }
    Ok(())
}

/// An absolute, normalized path: starts with '/', no `..` nor empty parts, no NUL.
pub fn check_abs_path(field: &str, p: &str) -> Result<(), ValidationError> {
    let ok = p.starts_with('/')
        && p.len() <= PATH_BYTES_MAX
        && !p.contains('\0')
        && (p == "/"
            || p[1..]
                .split('/')
                .all(|part| !part.is_empty() && part != ".." && part != "."));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{p:?} must be an absolute path without '..' (at most {PATH_BYTES_MAX} bytes)"),
        ))
    }
}

fn check_name(n: &str) -> Result<(), ValidationError> {
    if n.len() > NAME_BYTES_MAX {
        return Err(err(
            "name",
            format!("is longer than {NAME_BYTES_MAX} bytes"),
        ));
    }
    if n.is_empty()
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(err(
            "name",
            "may hold only letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(())
}

fn check_command(args: &[String]) -> Result<(), ValidationError> {
    if args.is_empty() {
        return Err(err("command", "an empty list is no command; omit it"));
    }
    if args.len() > COMMAND_ARGS_MAX {
        return Err(err(
            "command",
            format!("has more than {COMMAND_ARGS_MAX} arguments"),
        ));
    }
    if args.iter().any(|a| a.len() > ARG_BYTES_MAX) {
        return Err(err(
            "command",
            format!("an argument is longer than {ARG_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Bounds of a user's string map (`env`, `labels`, `nodeSelectors`), and of node labels.
pub fn check_map(field: &str, m: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if m.len() > MAP_ENTRIES_MAX {
        return Err(err(
            field,
            format!("has more than {MAP_ENTRIES_MAX} entries"),
        ));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > KEY_BYTES_MAX {
            return Err(err(
                field,
                format!("keys must be 1 to {KEY_BYTES_MAX} bytes"),
            ));
        }
        if v.len() > VALUE_BYTES_MAX {
            return Err(err(
                field,
                format!("value of {k:?} is longer than {VALUE_BYTES_MAX} bytes"),
            ));
        }
    }
    Ok(())
}

fn check_memory(bytes: u64) -> Result<(), ValidationError> {
    if bytes == 0 {
        return Ok(());
    }
    if bytes < TASK_MEMORY_MIN_BYTES {
        return Err(err(
            "memory",
            format!("{bytes} bytes is below Docker's minimum of {TASK_MEMORY_MIN_BYTES} (6 MiB)"),
        ));
    }
    if bytes > TASK_MEMORY_MAX_BYTES {
        return Err(err(
            "memory",
            format!("{bytes} bytes is absurd (more than 16 TiB)"),
        ));
    }
    Ok(())
}

fn check_cpu_millis(millis: u64) -> Result<(), ValidationError> {
    if millis == 0 {
        return Ok(());
    }
    if millis < TASK_CPU_MIN_MILLIS {
        return Err(err("cpu", "must be at least 0.01 cores"));
    }
    if millis > TASK_CPU_MAX_MILLIS {
        return Err(err(
            "cpu",
            format!(
                "{} cores is absurd (more than 1024)",
                millis as f64 / 1000.0
            ),
        ));
    }
    Ok(())
}

/// Sorted, at most `PORTS_MAX`, ports 1-65535, no container port and protocol twice, no
/// static host port and protocol twice.
fn check_ports(ports: &[PortSpec]) -> Result<(), ValidationError> {
    const F: &str = "portBindings";
    if ports.len() > PORTS_MAX {
        return Err(err(F, format!("has more than {PORTS_MAX} entries")));
    }
    for (i, p) in ports.iter().enumerate() {
        let key = format!("{}/{}", p.container_port, p.protocol.as_str());
        if p.container_port == 0 {
            return Err(err(F, format!("{key:?}: container port must be 1-65535")));
        }
        if p.host_port == Some(0) {
            return Err(err(
                F,
                format!("{key:?}: host port must be 1-65535, or none to pick one"),
            ));
        }
        let earlier = &ports[..i];
        if earlier
            .iter()
            .any(|q| q.container_port == p.container_port && q.protocol == p.protocol)
        {
            return Err(err(F, format!("{key:?} is given twice")));
        }
        if let Some(h) = p.host_port
            && earlier
                .iter()
                .any(|q| q.host_port == Some(h) && q.protocol == p.protocol)
        {
            return Err(err(
                F,
                format!("host port {h}/{} is bound twice", p.protocol.as_str()),
            ));
        }
    }
    if !ports.is_sorted() {
        return Err(err(F, "must be sorted by container port and protocol"));
    }
    Ok(())
}

/// What `Constraint::parse` could have produced, within the string bounds of a label.
fn check_constraint(c: &Constraint) -> Result<(), ValidationError> {
    const F: &str = "constraints";
    if let NodeAttr::Label(k) = &c.attr
        && (k.is_empty() || k.len() > KEY_BYTES_MAX || k.contains(char::is_whitespace))
    {
        return Err(err(
            F,
            format!("label names must be 1 to {KEY_BYTES_MAX} bytes without spaces"),
        ));
    }
    let one = matches!(c.op, ConstraintOp::Eq | ConstraintOp::Ne);
    if c.values.is_empty() || (one && c.values.len() != 1) || c.values.len() > MAP_ENTRIES_MAX {
        return Err(err(
            F,
            format!("== and != take one value, in and not in 1 to {MAP_ENTRIES_MAX} values"),
        ));
    }
    if c.values
        .iter()
        .any(|v| v.is_empty() || v.len() > VALUE_BYTES_MAX || v.contains(char::is_whitespace))
    {
        return Err(err(
            F,
            format!("values must be 1 to {VALUE_BYTES_MAX} bytes without spaces"),
        ));
    }
    Ok(())
}

/// Longest duration string accepted: a real duration is a handful of number-unit pairs.
const DURATION_BYTES_MAX: usize = 64;

/// Parses a duration in the Docker/Compose (Go) form: one or more `<number><unit>` pairs with
/// units `ns`, `us`, `ms`, `s`, `m`, `h` (`"500ms"`, `"30s"`, `"1m30s"`, `"1.5h"`), into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty; use a duration like \"30s\"".to_string());
    }
    if t.len() > DURATION_BYTES_MAX {
        return Err(format!("is longer than {DURATION_BYTES_MAX} bytes"));
    }
    let bad = || format!("{s:?} is not a duration; use e.g. \"500ms\", \"30s\", \"1m30s\"");
    if t == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let per_unit = match unit {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        total += value * per_unit;
        rest = next;
    }
    // 2^53 ms is 285,000 years: anything beyond is absurd and loses precision in f64.
    if !total.is_finite() || total > (1u64 << 53) as f64 {
        return Err(format!("{s:?} is absurd"));
    }
    Ok(total.round() as u64)
}

/// Renders milliseconds in the form `parse_duration_ms` reads back: `"1h30m"`, `"30s"`,
/// `"1500ms"` (whole units only, largest first).
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1_000;
    let mut out = String::new();
    for (unit, size) in [("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

fn check_image(image: &str) -> Result<(), ValidationError> {
    if image.is_empty() {
        return Err(err("image", "must not be empty"));
    }
    if image.len() > IMAGE_BYTES_MAX {
        return Err(err(
            "image",
            format!("is longer than {IMAGE_BYTES_MAX} bytes"),
        ));
    }
    let ok = image
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if !ok || image.starts_with(['-', '.', '/', ':']) {
        return Err(err(
            "image",
            format!("{image:?} is not a valid image reference"),
        ));
    }
    Ok(())
}

fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, ValidationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(err(field, format!("is longer than {max} bytes"))),
        Some(_) => Err(err(field, "must be a string")),
    }
}

pub(crate) fn string_map(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, ValidationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(err(field, format!("value of {k:?} must be a string"))),
                };
                out.insert(k.clone(), v);
            }
            check_map(field, &out)?;
            Ok(out)
        }
        Some(_) => Err(err(field, "must be an object of string values")),
    }
}

/// Memory in bytes: a non-negative integer, or a string with a unit ("100m", "1g", "512Mi").
fn parse_memory(v: Option<&Value>) -> Result<u64, ValidationError> {
    let bytes = match v {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(b), _, _) => b,
            (None, Some(_), _) => return Err(err("memory", "must not be negative")),
            (None, None, Some(f)) if f < 0.0 => return Err(err("memory", "must not be negative")),
            _ => return Err(err("memory", "must be a whole number of bytes")),
        },
        Some(Value::String(s)) => parse_size(s).map_err(|m| err("memory", m))?,
        Some(_) => {
            return Err(err(
                "memory",
                "must be a number of bytes, e.g. 100000000, or a size like \"100m\"",
            ));
        }
    };
    check_memory(bytes)?;
    Ok(bytes)
}

/// Parses "100m", "1g", "512Mi", "1024" (bytes) in the manner of `docker run -m`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    if t.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use bytes or a unit like 100m, 1g"))?;
    let mult: f64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s:?} has an unknown unit; use k, m, g or t")),
    };
    let bytes = num * mult;
    if !bytes.is_finite() || bytes > TASK_MEMORY_MAX_BYTES as f64 * 2.0 {
        return Err(format!("{s:?} is absurd"));
    }
    Ok(bytes.round() as u64)
}

fn parse_cpu(v: Option<&Value>) -> Result<u64, ValidationError> {
    let cores = match v {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| err("cpu", format!("{s:?} is not a number of cores")))?,
        Some(_) => return Err(err("cpu", "must be a number of cores, e.g. 0.5")),
    };
    if !cores.is_finite() || cores < 0.0 {
        return Err(err("cpu", "must be a non-negative number of cores"));
    }
    let millis = (cores * 1000.0).round();
    if millis == 0.0 && cores == 0.0 {
        return Ok(0);
    }
    // A share that rounds to 0 millicores is not "none": refuse it like any other too small.
    let millis = if millis < 1.0 {
        1
    } else {
        millis.min(u64::MAX as f64) as u64
    };
    check_cpu_millis(millis)?;
    Ok(millis)
}

/// `{"80/tcp": "8080", "53/udp": "", "9000": 0}`.
fn parse_ports(v: Option<&Value>) -> Result<Vec<PortSpec>, ValidationError> {
    const F: &str = "portBindings";
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(err(F, "must be an object like {\"80/tcp\": \"8080\"}")),
    };
    if map.len() > PORTS_MAX {
        return Err(err(F, format!("has more than {PORTS_MAX} entries")));
    }
    let mut out: Vec<PortSpec> = Vec::with_capacity(map.len());
    for (key, value) in map {
        let (port, proto) = match key.split_once('/') {
            Some((p, proto)) => (p, proto),
            None => (key.as_str(), "tcp"),
        };
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => {
                return Err(err(
                    F,
                    format!("{key:?}: protocol {proto:?} is not tcp or udp"),
                ));
            }
        };
        let container_port = parse_port_number(port)
            .ok_or_else(|| err(F, format!("{key:?}: container port must be 1-65535")))?;
        let host_port = match value {
            Value::String(s) if s.trim().is_empty() || s.trim() == "0" => None,
            Value::String(s) => Some(parse_port_number(s.trim()).ok_or_else(|| {
                err(
                    F,
                    format!("{key:?}: host port {s:?} must be 1-65535, or \"\"/\"0\" to pick one"),
                )
            })?),
            Value::Number(n) if n.as_u64() == Some(0) => None,
            Value::Number(n) => Some(
                n.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err(F, format!("{key:?}: host port {n} must be 1-65535")))?,
            ),
            Value::Null => None,
            _ => {
                return Err(err(
                    F,
                    format!("{key:?}: host port must be a string like \"8080\""),
                ));
            }
        };
        // Duplicates are `TaskSpec::validate`'s to refuse.
        out.push(PortSpec {
            container_port,
            protocol,
            host_port,
        });
    }
    out.sort();
    Ok(out)
}

pub(crate) fn parse_port_number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 5 {
        return None;
    }
    s.parse::<u32>()
        .ok()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// The property names of a schema, to check a hand-written parser against the type that
/// documents it.
#[cfg(test)]
pub(crate) fn schema_fields<T: utoipa::PartialSchema>() -> Vec<String> {
    let schema = serde_json::to_value(T::schema()).unwrap_or_default();
    let mut names: Vec<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `want` sorted, to compare with `schema_fields`.
#[cfg(test)]
pub(crate) fn sorted(want: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI schema of `POST /tasks` names exactly the fields the parser accepts.
    #[test]
    fn task_request_schema_names_every_parsed_field() {
        assert_eq!(schema_fields::<TaskRequest>(), sorted(FIELDS));
    }

    /// Parses `body` and checks the outcome: `Ok(())` for a valid spec, or the field the
    /// error must name.
    fn check(body: &str, want_field: Option<&str>) {
        let got = parse_task_request(body.as_bytes());
        match (got, want_field) {
            (Ok(_), None) => {}
            (Err(e), Some(f)) => {
                assert_eq!(e.field, f, "{body}: {e}");
                assert!(
                    e.to_string().starts_with(f),
                    "{body}: message must name the field: {e}"
                );
            }
            (Ok(spec), Some(f)) => panic!("{body}: accepted {spec:?}, wanted an error on {f}"),
            (Err(e), None) => panic!("{body}: refused: {e}"),
        }
    }

    #[test]
    fn seed_request_is_accepted_verbatim() {
        let spec = parse_task_request(
            br#"{"image": "nginx", "memory": 100000000, "portBindings": {"80/tcp": "8080"}}"#,
        )
        .expect("seed request");
        assert_eq!(spec.image, "nginx");
        assert_eq!(spec.memory_bytes, 100_000_000);
        assert_eq!(
            spec.ports,
            vec![PortSpec {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_port: Some(8080)
            }]
        );
        assert_eq!(spec.restart_policy, RestartPolicy::Always);
    }

    #[test]
    fn full_request_is_accepted() {
        check(
            r#"{"image":"orion/busybox","name":"web-1","command":["busybox","httpd","-f","-p","80"],
                "env":{"A":"1"},"memory":"64m","cpu":0.5,"portBindings":{"80/tcp":"","53/udp":0,"81":"0"},
                "restartPolicy":"on-failure","labels":{"app":"web"},"nodeSelectors":{"zone":"a"},
                "constraints":["node.id != node2","node.labels.zone in (a,b)"],"strategy":"binpack"}"#,
            None,
        );
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"memory": 100}"#, "image"),
            (r#"{"image": ""}"#, "image"),
            (r#"{"image": 3}"#, "image"),
            (r#"{"image": "a b"}"#, "image"),
            (r#"{"image": "x", "memory": -1}"#, "memory"),
            (r#"{"image": "x", "memory": 1.5}"#, "memory"),
            (r#"{"image": "x", "memory": 1000}"#, "memory"),
            (
                r#"{"image": "x", "memory": 99999999999999999999}"#,
                "memory",
            ),
            (r#"{"image": "x", "memory": "lots"}"#, "memory"),
            (r#"{"image": "x", "cpu": -0.5}"#, "cpu"),
            (r#"{"image": "x", "cpu": 5000}"#, "cpu"),
            (
                r#"{"image": "x", "portBindings": {"80/xyz": "8080"}}"#,
                "portBindings",
            ),
            (
                r#"{"image": "x", "portBindings": {"80/tcp": "99999"}}"#,
                "portBindings",
            ),
            (
                r#"{"image": "x", "portBindings": {"99999": "80"}}"#,
                "portBindings",
            ),
            (
                r#"{"image": "x", "portBindings": {"80/tcp": "abc"}}"#,
                "portBindings",
            ),
            (
                r#"{"image": "x", "portBindings": {"80": "8080", "81": "8080"}}"#,
                "portBindings",
            ),
            (r#"{"image": "x", "portBindings": ["80"]}"#, "portBindings"),
            (
                r#"{"image": "x", "restartPolicy": "sometimes"}"#,
                "restartPolicy",
            ),
            (r#"{"image": "x", "restartPolicy": 1}"#, "restartPolicy"),
            (r#"{"image": "x", "command": "sh -c"}"#, "command"),
            (r#"{"image": "x", "command": [1]}"#, "command"),
            (r#"{"image": "x", "env": {"A=B": "1"}}"#, "env"),
            (r#"{"image": "x", "env": []}"#, "env"),
            (
                r#"{"image": "x", "constraints": ["zone == a"]}"#,
                "constraints",
            ),
            (r#"{"image": "x", "strategy": "random"}"#, "strategy"),
            (r#"{"image": "x", "name": "a b"}"#, "name"),
            (r#"{"image": "x", "imagee": "y"}"#, "imagee"),
            (
                r#"{"image": "x", "stopAfterDisconnect": 30}"#,
                "stopAfterDisconnect",
            ),
            (
                r#"{"image": "x", "stopAfterDisconnect": "soon"}"#,
                "stopAfterDisconnect",
            ),
            (
                r#"{"image": "x", "stopAfterDisconnect": "10ms"}"#,
                "stopAfterDisconnect",
            ),
            (
                r#"{"image": "x", "stopAfterDisconnect": "9000h"}"#,
                "stopAfterDisconnect",
            ),
            (
                r#"{"image": "x", "stopAfterDisconnect": "30x"}"#,
                "stopAfterDisconnect",
            ),
        ];
        for (body, field) in cases {
            check(body, Some(field));
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in ["", "{", "[]", "null", "\"x\"", "{\"image\": \"x\",}"] {
            let e = parse_task_request(body.as_bytes()).expect_err(body);
            assert!(e.field.is_empty(), "{body}: {e}");
        }
    }

    /// One duration string and the milliseconds it must parse to (`None`: refused).
    fn check_duration(text: &str, want: Option<u64>) {
        let got = parse_duration_ms(text);
        assert_eq!(got.as_ref().ok().copied(), want, "{text:?}: {got:?}");
        if let Some(ms) = want {
            assert_eq!(
                parse_duration_ms(&format_duration_ms(ms)),
                Ok(ms),
                "{text:?} does not round-trip through {:?}",
                format_duration_ms(ms)
            );
        }
    }

    #[test]
    fn durations_parse_like_docker() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30_000)),
            ("500ms", Some(500)),
            ("1m30s", Some(90_000)),
            ("1.5h", Some(5_400_000)),
            (" 2m ", Some(120_000)),
            ("0s", Some(0)),
            ("", None),
            ("30", None),
            ("s", None),
            ("30x", None),
            ("-5s", None),
            ("1e400s", None),
            ("99999999999999999999h", None),
        ];
        for (text, want) in cases {
            check_duration(text, *want);
        }
    }

    #[test]
    fn stop_after_disconnect_is_kept_in_milliseconds() {
        let spec =
            parse_task_request(br#"{"image": "x", "stopAfterDisconnect": "1m30s"}"#).expect("ok");
        assert_eq!(spec.stop_after_disconnect_ms, Some(90_000));
        let spec = parse_task_request(br#"{"image": "x"}"#).expect("ok");
        assert_eq!(spec.stop_after_disconnect_ms, None);
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("100m"), Ok(100 * 1024 * 1024));
        assert_eq!(parse_size("1g"), Ok(1024 * 1024 * 1024));
        assert_eq!(parse_size("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert!(parse_size("-1m").is_err());
        assert!(parse_size("10q").is_err());
    }
}
