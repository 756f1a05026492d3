//! Compose files into Orion services: what `orion deploy` plans. Pure: the files' text, the
//! variables and a reader for the files they name (`env_file`, secrets, configs) come in; the
//! planned services (each a `POST /services` body, already validated by orion-types' own
//! `validate_service`), their start order and the warnings go out.
//!
//! Architecture invariant: this crate never touches the network, the clock nor the process
//! environment; it reads files only through the caller's `Files`. Every key it does not
//! honour is an error that names the key, the service and the line (`Error`); nothing is
//! dropped silently.

mod convert;
pub mod interp;
pub mod yaml;

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The file names `docker compose` looks for, in its order.
pub const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// A file named by the compose file (`env_file`, a secret's or config's `file`), read
/// relative to the project's folder. `Err` is the sentence to show.
pub trait Files {
    fn read(&self, path: &str) -> Result<Vec<u8>, String>;
}

/// One compose file.
#[derive(Debug, Clone)]
pub struct Source {
    /// As the user named it (shown in errors).
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, Default)]
pub struct Input {
    /// In `-f` order; later files override earlier ones.
    pub files: Vec<Source>,
    /// `-p NAME`.
    pub project: Option<String>,
    /// The project folder's name: the project's name when neither `-p` nor a top-level
    /// `name:` gives one.
    pub folder: String,
    /// Interpolation variables: the `.env` file (or `--env-file`s) overlaid by the process
    /// environment, as `docker compose` does.
    pub vars: BTreeMap<String, String>,
}

/// A `depends_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Its tasks run.
    Started,
    /// Its tasks are healthy (it needs a healthcheck).
    Healthy,
    /// A task ran to completion with exit code 0.
    CompletedSuccessfully,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "service_started",
            Condition::Healthy => "service_healthy",
            Condition::CompletedSuccessfully => "service_completed_successfully",
        }
    }
}

/// One service as `orion deploy` will create or update it.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The compose name (also the Orion service name).
    pub name: String,
    /// The `POST /services` / `PUT /services/{id}` body.
    pub body: Map<String, Value>,
    /// The validated spec the server will build from `body`.
    pub spec: orion_types::ServiceSpec,
    /// Services to wait for before this one is created, and for what.
    pub depends_on: Vec<(String, Condition)>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// The stack's name.
    pub project: String,
    /// In start order: every service comes after those it depends on.
    pub services: Vec<Planned>,
    /// Things done that the user should know (e.g. `build:` skipped).
    pub warnings: Vec<String>,
}

impl Plan {
    /// What `--dry-run` prints.
    pub fn to_json(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| Value::Object(s.body.clone()))
            .collect();
        let depends: Map<String, Value> = self
            .services
            .iter()
            .filter(|s| !s.depends_on.is_empty())
            .map(|s| {
                let deps: Map<String, Value> = s
                    .depends_on
                    .iter()
                    .map(|(d, c)| (d.clone(), Value::String(c.as_str().into())))
                    .collect();
                (s.name.clone(), Value::Object(deps))
            })
            .collect();
        serde_json::json!({
            "stack": self.project,
            "order": self.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "dependsOn": depends,
            "services": services,
            "warnings": self.warnings,
        })
    }
}

/// What is wrong, and where: file, line, service and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The file's name as given; empty when not tied to a file.
    pub file: String,
    pub line: usize,
    pub service: Option<String>,
    /// The key, dotted below the service (`deploy.resources.limits.pids`).
    pub key: String,
    pub message: String,
    /// Index of the file, resolved to `file` by `load`.
    at_file: usize,
}

impl Error {
    pub(crate) fn at(at: yaml::At, key: &str, message: impl Into<String>) -> Error {
        Error {
            file: String::new(),
            line: at.line,
            service: None,
            key: key.to_string(),
            message: message.into(),
            at_file: at.file,
        }
    }
    pub(crate) fn in_service(mut self, service: &str) -> Error {
        if self.service.is_none() {
            self.service = Some(service.to_string());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}:{}: ", self.file, self.line)?;
        }
        if let Some(s) = &self.service {
            write!(f, "service {s:?}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

/// Reads, interpolates and merges the files, and plans the services.
pub fn load(input: &Input, files: &dyn Files) -> Result<Plan, Error> {
    let name_of = |e: Error| -> Error {
        let mut e = e;
        e.file = input
            .files
            .get(e.at_file)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        e
    };
    if input.files.is_empty() {
        return Err(Error::at(
            yaml::At::default(),
            "",
            format!(
                "no compose file: give -f FILE or create one of {}",
                DEFAULT_FILES.join(", ")
            ),
        ));
    }
    let mut root: Option<yaml::Node> = None;
    for (i, src) in input.files.iter().enumerate() {
        let node = yaml::load(i, &src.name, &src.text, &input.vars).map_err(name_of)?;
        root = Some(match root {
            None => node,
            Some(base) => yaml::merge(base, node, ""),
        });
    }
    let root = root.ok_or_else(|| Error::at(yaml::At::default(), "", "no compose file"))?;
    convert::plan(&root, input, files).map_err(name_of)
}

/// A project name as compose normalizes it: lower case, and here a DNS label (Orion's stack
/// rule): other characters become `-`.
pub fn normalize_project(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-');
    s.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

#[cfg(test)]
mod tests;
