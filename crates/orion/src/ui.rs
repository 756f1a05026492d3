//! `orion ui`: a k9s-style terminal dashboard against any node's API.
//!
//! The core is `App`, a plain state machine: `App::on_key` turns a key into state changes and
//! a list of `Effect`s (fetch, delete, scale, follow logs), and `render` draws the state. Neither
//! does IO, so both are unit-tested with ratatui's `TestBackend`. The driver (`run`) owns the
//! terminal, a thread that reads keys, and tokio tasks that fetch; it feeds their results back
//! into the `App` as `Input`s.
//!
//! Views: nodes, services, tasks, deployments, events; one line per object, coloured by state.
//! A lost connection keeps the last data on screen, says so in the header and retries.

use crate::client::{Api, ClientArgs};
use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use ratatui::Frame;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// Lines of a followed log kept on screen; older lines scroll away.
const LOG_LINES_MAX: usize = 2_000;
/// Events kept for the events view.
const EVENTS_MAX: usize = 500;
/// Below this size the layout cannot show a table; the UI says so instead of drawing garbage.
const MIN_WIDTH: u16 = 24;
const MIN_HEIGHT: u16 = 6;
/// Inputs buffered between the fetchers, the key reader and the draw loop.
const INPUT_QUEUE_MAX: usize = 256;

#[derive(Debug, Args)]
pub struct UiArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Browse only: no scaling, no deleting
    #[arg(long)]
    readonly: bool,
    /// How often the current view is fetched again even without news, in ms (events from the
    /// cluster refresh it at once)
    #[arg(long, default_value_t = 5000)]
    refresh_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Nodes,
    Services,
    Tasks,
    Deployments,
    Events,
}

impl View {
    const ALL: [View; 5] = [
        View::Nodes,
        View::Services,
        View::Tasks,
        View::Deployments,
        View::Events,
    ];
    fn name(self) -> &'static str {
        match self {
            View::Nodes => "nodes",
            View::Services => "services",
            View::Tasks => "tasks",
            View::Deployments => "deployments",
            View::Events => "events",
        }
    }
    /// `:no`, `:node`, `:nodes` all name the nodes view; k9s accepts prefixes too.
    fn parse(s: &str) -> Option<View> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            return None;
        }
        let aliases: [(&str, View); 4] = [
            ("svc", View::Services),
            ("deploy", View::Deployments),
            ("ev", View::Events),
            ("po", View::Tasks),
        ];
        if let Some((_, v)) = aliases.iter().find(|(a, _)| *a == s) {
            return Some(*v);
        }
        View::ALL.into_iter().find(|v| v.name().starts_with(&s))
    }
    fn columns(self) -> &'static [&'static str] {
        match self {
            View::Nodes => &["ID", "STATUS", "ROLE", "ADDRESS", "TASKS", "MEMORY", "CPU"],
            View::Services => &["ID", "MODE", "REPLICAS", "IMAGE", "VERSION", "VIP", "PORTS"],
            View::Tasks => &["ID", "NAME", "STATE", "NODE", "IMAGE", "PORTS", "REASON"],
            View::Deployments => &["SERVICE", "STATE", "FROM", "TO", "PROGRESS", "MESSAGE"],
            View::Events => &["INDEX", "TOPIC", "TYPE", "KEY", "AT"],
        }
    }
}

/// Where a drill-down narrowed the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Node(String),
    Service(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Command(String),
    Filter(String),
    Confirm {
        what: String,
        path: String,
    },
    Scale {
        service: String,
        input: String,
    },
    Describe {
        title: String,
        text: String,
        scroll: u16,
    },
    Logs {
        task: String,
        lines: Vec<String>,
        scroll_back: usize,
    },
    Help,
}

/// What the driver must do for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Refresh,
    Delete { path: String },
    Scale { service: String, replicas: u64 },
    FollowLogs { task: String },
    StopLogs,
}

/// What the driver tells the app.
#[derive(Debug, Clone)]
pub enum Input {
    Key(KeyEvent),
    Data {
        view: View,
        items: Vec<Value>,
    },
    FetchFailed {
        view: View,
        error: String,
    },
    LogLine {
        task: String,
        line: String,
    },
    /// Something happened in the cluster (a line of the live event stream).
    Live,
    Done {
        message: String,
    },
}

/// One line of a table: the object's id, its cells, and the state that picks its colour.
#[derive(Debug, Clone, PartialEq)]
pub struct RowData {
    pub key: String,
    pub cells: Vec<String>,
    pub state: String,
    pub raw: Value,
}

#[derive(Debug)]
pub struct App {
    pub addr: String,
    pub view: View,
    pub scope: Scope,
    pub filter: String,
    pub selected: usize,
    pub mode: Mode,
    pub readonly: bool,
    /// Views visited before a drill-down, for `esc`.
    back: Vec<(View, Scope, String)>,
    nodes: Vec<Value>,
    services: Vec<Value>,
    tasks: Vec<Value>,
    events: Vec<Value>,
    /// Where the next read of the event history starts.
    events_next: Option<u64>,
    /// `None` while the last fetch succeeded; the error otherwise.
    pub connection_error: Option<String>,
    /// A one-line message for the footer (the result of the last action).
    pub message: Option<String>,
    pub quit: bool,
}

impl App {
    pub fn new(addr: &str, readonly: bool) -> App {
        App {
            addr: addr.to_string(),
            view: View::Nodes,
            scope: Scope::All,
            filter: String::new(),
            selected: 0,
            mode: Mode::Normal,
            readonly,
            back: Vec::new(),
            nodes: Vec::new(),
            services: Vec::new(),
            tasks: Vec::new(),
            events: Vec::new(),
            events_next: None,
            connection_error: None,
            message: None,
            quit: false,
        }
    }

    /// The API paths the current view needs. The events view reads only what is new since
    /// its last read (the last `EVENTS_MAX` the first time).
    pub fn fetches(&self) -> Vec<(View, String)> {
        match self.view {
            View::Nodes => vec![(View::Nodes, "/nodes".into())],
            View::Services | View::Deployments => vec![(View::Services, "/services".into())],
            View::Tasks => vec![(View::Tasks, "/tasks".into())],
            View::Events => vec![(
                View::Events,
                match self.events_next {
                    None => format!("/events?follow=false&tail={EVENTS_MAX}"),
                    Some(i) => format!("/events?follow=false&index={i}&limit={EVENTS_MAX}"),
                },
            )],
        }
    }

    pub fn handle(&mut self, input: Input) -> Vec<Effect> {
        match input {
            Input::Key(k) => self.on_key(k),
            Input::Data { view, items } => {
                self.connection_error = None;
                match view {
                    View::Nodes => self.nodes = items,
                    View::Services | View::Deployments => self.services = items,
                    View::Tasks => self.tasks = items,
                    View::Events => {
                        if let Some(last) = items.last().and_then(|e| e["index"].as_u64()) {
                            self.events_next = Some(last + 1);
                        }
                        self.events.extend(items);
                        let excess = self.events.len().saturating_sub(EVENTS_MAX);
                        self.events.drain(..excess);
                    }
                }
                self.clamp_selection();
                Vec::new()
            }
            Input::FetchFailed { view, error } => {
                if error.contains("404") || error.contains("no route") {
                    // An older node without this view: say so, the connection is fine.
                    self.message = Some(format!("{} are not served by this node", view.name()));
                } else {
                    self.connection_error = Some(error);
                }
                Vec::new()
            }
            Input::LogLine { task, line } => {
                if let Mode::Logs { task: t, lines, .. } = &mut self.mode
                    && *t == task
                {
                    lines.push(line);
                    let excess = lines.len().saturating_sub(LOG_LINES_MAX);
                    lines.drain(..excess);
                }
                Vec::new()
            }
            Input::Live => vec![Effect::Refresh],
            Input::Done { message } => {
                self.message = Some(message);
                vec![Effect::Refresh]
            }
        }
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        if k.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return Vec::new();
        }
        let mode = std::mem::replace(&mut self.mode, Mode::Normal);
        match mode {
            Mode::Normal => self.on_normal_key(k),
            Mode::Command(mut s) => match k.code {
                KeyCode::Esc => Vec::new(),
                KeyCode::Enter => match View::parse(&s) {
                    Some(v) => {
                        self.switch(v, Scope::All);
                        vec![Effect::Refresh]
                    }
                    None if s.trim() == "q" || s.trim() == "quit" => {
                        self.quit = true;
                        Vec::new()
                    }
                    None => {
                        self.message = Some(format!(
                            "no view {:?}; views: nodes, services, tasks, deployments, events",
                            s.trim()
                        ));
                        Vec::new()
                    }
                },
                KeyCode::Backspace => {
                    s.pop();
                    self.mode = Mode::Command(s);
                    Vec::new()
                }
                KeyCode::Char(c) => {
                    s.push(c);
                    self.mode = Mode::Command(s);
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Command(s);
                    Vec::new()
                }
            },
            Mode::Filter(mut s) => match k.code {
                KeyCode::Esc => {
                    self.filter.clear();
                    Vec::new()
                }
                KeyCode::Enter => {
                    self.filter = s;
                    self.selected = 0;
                    Vec::new()
                }
                KeyCode::Backspace => {
                    s.pop();
                    self.filter = s.clone();
                    self.mode = Mode::Filter(s);
                    Vec::new()
                }
                KeyCode::Char(c) => {
                    s.push(c);
                    self.filter = s.clone();
                    self.selected = 0;
                    self.mode = Mode::Filter(s);
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Filter(s);
                    Vec::new()
                }
            },
            Mode::Confirm { what, path } => match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.message = Some(format!("deleting {what}…"));
                    vec![Effect::Delete { path }]
                }
                _ => {
                    self.message = Some("delete cancelled".to_string());
                    Vec::new()
                }
            },
            Mode::Scale { service, mut input } => match k.code {
                KeyCode::Esc => Vec::new(),
                KeyCode::Enter => match input.trim().parse::<u64>() {
                    Ok(n) => {
                        self.message = Some(format!("scaling {service} to {n}…"));
                        vec![Effect::Scale {
                            service,
                            replicas: n,
                        }]
                    }
                    Err(_) => {
                        self.message = Some(format!("{input:?} is not a number of replicas"));
                        Vec::new()
                    }
                },
                KeyCode::Backspace => {
                    input.pop();
                    self.mode = Mode::Scale { service, input };
                    Vec::new()
                }
                KeyCode::Char(c) if c.is_ascii_digit() && input.len() < 6 => {
                    input.push(c);
                    self.mode = Mode::Scale { service, input };
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Scale { service, input };
                    Vec::new()
                }
            },
            Mode::Describe {
                title,
                text,
                mut scroll,
            } => match k.code {
                KeyCode::Esc | KeyCode::Char('q') => Vec::new(),
                KeyCode::Down | KeyCode::Char('j') => {
                    scroll = scroll.saturating_add(1);
                    self.mode = Mode::Describe {
                        title,
                        text,
                        scroll,
                    };
                    Vec::new()
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    scroll = scroll.saturating_sub(1);
                    self.mode = Mode::Describe {
                        title,
                        text,
                        scroll,
                    };
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Describe {
                        title,
                        text,
                        scroll,
                    };
                    Vec::new()
                }
            },
            Mode::Logs {
                task,
                lines,
                mut scroll_back,
            } => match k.code {
                KeyCode::Esc | KeyCode::Char('q') => vec![Effect::StopLogs],
                KeyCode::Up | KeyCode::Char('k') => {
                    scroll_back = (scroll_back + 1).min(lines.len());
                    self.mode = Mode::Logs {
                        task,
                        lines,
                        scroll_back,
                    };
                    Vec::new()
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    scroll_back = scroll_back.saturating_sub(1);
                    self.mode = Mode::Logs {
                        task,
                        lines,
                        scroll_back,
                    };
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Logs {
                        task,
                        lines,
                        scroll_back,
                    };
                    Vec::new()
                }
            },
            Mode::Help => Vec::new(),
        }
    }

    fn on_normal_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Char('/') => self.mode = Mode::Filter(self.filter.clone()),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = self.selected.saturating_add(1);
                self.clamp_selection();
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                } else if let Some((v, scope, filter)) = self.back.pop() {
                    self.view = v;
                    self.scope = scope;
                    self.filter = filter;
                    self.selected = 0;
                    return vec![Effect::Refresh];
                }
            }
            KeyCode::Enter => return self.drill_down(),
            KeyCode::Char('d') if ctrl => return self.ask_delete(),
            KeyCode::Char('d') => self.describe(),
            KeyCode::Char('l') => return self.follow_logs(),
            KeyCode::Char('s') => self.ask_scale(),
            _ => {}
        }
        Vec::new()
    }

    fn switch(&mut self, view: View, scope: Scope) {
        if self.view != view || self.scope != scope {
            self.back
                .push((self.view, self.scope.clone(), self.filter.clone()));
            // Bounded: a long session of drilling does not grow without end.
            if self.back.len() > 32 {
                self.back.remove(0);
            }
        }
        self.view = view;
        self.scope = scope;
        self.filter.clear();
        self.selected = 0;
    }

    fn drill_down(&mut self) -> Vec<Effect> {
        let Some(row) = self.selected_row() else {
            return Vec::new();
        };
        match self.view {
            View::Nodes => {
                self.switch(View::Tasks, Scope::Node(row.key));
                vec![Effect::Refresh]
            }
            View::Services | View::Deployments => {
                self.switch(View::Tasks, Scope::Service(row.key));
                vec![Effect::Refresh]
            }
            View::Tasks | View::Events => {
                self.describe();
                Vec::new()
            }
        }
    }

    fn describe(&mut self) {
        if let Some(row) = self.selected_row() {
            self.mode = Mode::Describe {
                title: format!("{} {}", self.view.name(), row.key),
                text: serde_json::to_string_pretty(&row.raw).unwrap_or_default(),
                scroll: 0,
            };
        }
    }

    fn follow_logs(&mut self) -> Vec<Effect> {
        if self.view != View::Tasks {
            self.message = Some("logs: select a task first (:tasks)".to_string());
            return Vec::new();
        }
        let Some(row) = self.selected_row() else {
            return Vec::new();
        };
        self.mode = Mode::Logs {
            task: row.key.clone(),
            lines: Vec::new(),
            scroll_back: 0,
        };
        vec![Effect::FollowLogs { task: row.key }]
    }

    fn ask_scale(&mut self) {
        if self.readonly {
            self.message = Some("read-only: scaling is off".to_string());
            return;
        }
        if self.view != View::Services {
            self.message = Some("scale: select a service first (:services)".to_string());
            return;
        }
        if let Some(row) = self.selected_row() {
            let current = row.raw["replicas"]["desired"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_default();
            self.mode = Mode::Scale {
                service: row.key,
                input: current,
            };
        }
    }

    fn ask_delete(&mut self) -> Vec<Effect> {
        if self.readonly {
            self.message = Some("read-only: deleting is off".to_string());
            return Vec::new();
        }
        let Some(row) = self.selected_row() else {
            return Vec::new();
        };
        let path = match self.view {
            View::Tasks => format!("/tasks/{}", row.key),
            View::Services => format!("/services/{}", row.key),
            _ => {
                self.message = Some(format!("cannot delete {}", self.view.name()));
                return Vec::new();
            }
        };
        self.mode = Mode::Confirm {
            what: format!("{} {}", self.view.name().trim_end_matches('s'), row.key),
            path,
        };
        Vec::new()
    }

    fn clamp_selection(&mut self) {
        let n = self.rows().len();
        if self.selected >= n {
            self.selected = n.saturating_sub(1);
        }
    }

    pub fn selected_row(&self) -> Option<RowData> {
        self.rows().into_iter().nth(self.selected)
    }

    /// The current view's lines, scoped and filtered.
    pub fn rows(&self) -> Vec<RowData> {
        let rows: Vec<RowData> = match self.view {
            View::Nodes => self.nodes.iter().map(node_row).collect(),
            View::Services => self.services.iter().map(service_row).collect(),
            View::Deployments => self.services.iter().filter_map(deployment_row).collect(),
            View::Tasks => self
                .tasks
                .iter()
                .filter(|t| match &self.scope {
                    Scope::All => true,
                    Scope::Node(n) => t["node"].as_str() == Some(n),
                    Scope::Service(s) => t["service"].as_str() == Some(s),
                })
                .map(task_row)
                .collect(),
            View::Events => self.events.iter().rev().map(event_row).collect(),
        };
        let f = self.filter.to_ascii_lowercase();
        rows.into_iter()
            .filter(|r| f.is_empty() || r.cells.iter().any(|c| c.to_ascii_lowercase().contains(&f)))
            .collect()
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn mib(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{}Mi", b / (1024 * 1024)))
        .unwrap_or_default()
}

fn ports(v: &Value) -> String {
    v.as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let host = p["hostPort"].as_u64().or(p["published"].as_u64());
                    let target = p["containerPort"].as_u64().or(p["target"].as_u64());
                    match (host, target) {
                        (Some(h), Some(t)) => format!("{h}->{t}"),
                        (None, Some(t)) => t.to_string(),
                        _ => String::new(),
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn node_row(n: &Value) -> RowData {
    let cap = &n["capacity"];
    let used = &n["allocated"];
    RowData {
        key: s(&n["id"]),
        cells: vec![
            s(&n["id"]),
            s(&n["status"]),
            s(&n["role"]),
            s(&n["address"]),
            s(&n["tasks"]),
            format!("{}/{}", mib(&used["memory"]), mib(&cap["memory"])),
            format!("{}/{}", s(&used["cpu"]), s(&cap["cpu"])),
        ],
        state: s(&n["status"]),
        raw: n.clone(),
    }
}

fn service_row(v: &Value) -> RowData {
    let r = &v["replicas"];
    let state = if r["desired"] == r["running"] {
        "running"
    } else {
        "pending"
    };
    RowData {
        key: s(&v["id"]).or_else_name(&v["name"]),
        cells: vec![
            s(&v["id"]).or_else_name(&v["name"]),
            s(&v["mode"]),
            format!(
                "{}/{} ({} healthy)",
                s(&r["running"]),
                s(&r["desired"]),
                s(&r["healthy"])
            ),
            s(&v["image"]),
            s(&v["version"]),
            s(&v["vip"]),
            ports(&v["ports"]),
        ],
        state: state.to_string(),
        raw: v.clone(),
    }
}

fn deployment_row(v: &Value) -> Option<RowData> {
    let d = &v["deployment"];
    if d.is_null() {
        return None;
    }
    let service = s(&v["id"]).or_else_name(&v["name"]);
    Some(RowData {
        key: service.clone(),
        cells: vec![
            service,
            s(&d["state"]),
            s(&d["fromVersion"]),
            s(&d["toVersion"]),
            format!("{}/{}", s(&d["updated"]), s(&d["total"])),
            s(&d["message"]),
        ],
        state: s(&d["state"]),
        raw: d.clone(),
    })
}

fn task_row(t: &Value) -> RowData {
    RowData {
        key: s(&t["id"]),
        cells: vec![
            short(&s(&t["id"])),
            s(&t["name"]),
            s(&t["state"]),
            s(&t["node"]),
            s(&t["image"]),
            ports(&t["ports"]),
            s(&t["reason"]),
        ],
        state: s(&t["state"]),
        raw: t.clone(),
    }
}

fn event_row(e: &Value) -> RowData {
    RowData {
        key: s(&e["index"]),
        cells: vec![
            s(&e["index"]),
            s(&e["topic"]),
            s(&e["type"]),
            s(&e["key"]),
            s(&e["at"]),
        ],
        state: s(&e["type"]),
        raw: e.clone(),
    }
}

trait OrElseName {
    fn or_else_name(self, name: &Value) -> String;
}

impl OrElseName for String {
    fn or_else_name(self, name: &Value) -> String {
        if self.is_empty() { s(name) } else { self }
    }
}

/// Green for what is well, yellow for what is on its way, red for what is broken, grey for
/// what is over.
pub fn state_color(state: &str) -> Color {
    match state {
        "running" | "alive" | "healthy" | "completed" | "leader" | "created" => Color::Green,
        "pending" | "scheduled" | "starting" | "suspect" | "rolling-back" | "paused" | "placed"
        | "updated" | "scaled" | "started" | "progress" => Color::Yellow,
        "failed" | "dead" | "lost" | "unhealthy" | "rolled-back" | "exited" => Color::Red,
        "stopped" | "left" | "deleted" => Color::DarkGray,
        _ => Color::Reset,
    }
}

pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(
            Paragraph::new("terminal too small for orion ui").wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);

    let conn = match &app.connection_error {
        None => Span::styled("connected", Style::default().fg(Color::Green)),
        Some(e) => Span::styled(
            format!("CONNECTION LOST, retrying: {e}"),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    let scope = match &app.scope {
        Scope::All => String::new(),
        Scope::Node(n) => format!(" node={n}"),
        Scope::Service(s) => format!(" service={s}"),
    };
    let mut head = vec![
        Span::styled(" orion ", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{} ", app.addr)),
        Span::styled(
            format!("[{}{}]", app.view.name(), scope),
            Style::default().fg(Color::Cyan),
        ),
        Span::raw(" "),
    ];
    if !app.filter.is_empty() {
        head.push(Span::raw(format!("/{} ", app.filter)));
    }
    if app.readonly {
        head.push(Span::raw("(read-only) "));
    }
    head.push(conn);
    f.render_widget(Paragraph::new(Line::from(head)), header);

    match &app.mode {
        Mode::Logs {
            task,
            lines,
            scroll_back,
        } => {
            let height = body.height.saturating_sub(2) as usize;
            let end = lines.len().saturating_sub(*scroll_back);
            let start = end.saturating_sub(height);
            let text: Vec<Line> = lines[start..end]
                .iter()
                .map(|l| Line::raw(l.clone()))
                .collect();
            f.render_widget(
                Paragraph::new(text).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" logs {} (esc to close) ", short(task))),
                ),
                body,
            );
        }
        Mode::Describe {
            title,
            text,
            scroll,
        } => {
            f.render_widget(
                Paragraph::new(text.as_str()).scroll((*scroll, 0)).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" {title} (esc to close) ")),
                ),
                body,
            );
        }
        _ => render_table(app, f, body),
    }

    if app.mode == Mode::Help {
        let help = [
            ":        switch view (nodes, services, tasks, deployments, events)",
            "/        filter the list",
            "enter    drill down (node or service -> its tasks; task -> describe)",
            "l        follow a task's logs",
            "d        describe",
            "s        scale a service",
            "ctrl-d   delete (asks first)",
            "j/k      move",
            "esc      back",
            "q        quit",
        ];
        let w = area.width.min(72);
        let h = (help.len() as u16 + 2).min(body.height);
        let popup = Rect::new(body.x + (body.width - w) / 2, body.y, w, h);
        f.render_widget(Clear, popup);
        f.render_widget(
            Paragraph::new(help.join("\n"))
                .block(Block::default().borders(Borders::ALL).title(" help ")),
            popup,
        );
    }

    let foot = match &app.mode {
        Mode::Command(s) => format!(":{s}"),
        Mode::Filter(s) => format!("/{s}"),
        Mode::Confirm { what, .. } => format!("delete {what}? (y/n)"),
        Mode::Scale { service, input } => format!("scale {service} to: {input}"),
        _ => app.message.clone().unwrap_or_else(|| {
            "? help  : view  / filter  enter drill  l logs  d describe  s scale  ctrl-d delete  q quit"
                .to_string()
        }),
    };
    f.render_widget(
        Paragraph::new(foot).style(Style::default().add_modifier(Modifier::DIM)),
        footer,
    );
}

fn render_table(app: &App, f: &mut Frame, area: Rect) {
    let rows = app.rows();
    let columns = app.view.columns();
    let header = Row::new(columns.iter().map(|c| Cell::from(*c)))
        .style(Style::default().add_modifier(Modifier::BOLD));
    let lines: Vec<Row> = rows
        .iter()
        .map(|r| {
            Row::new(r.cells.iter().map(|c| Cell::from(c.clone())))
                .style(Style::default().fg(state_color(&r.state)))
        })
        .collect();
    // The first columns are the ones that matter; later ones get what is left.
    let widths: Vec<Constraint> = columns
        .iter()
        .enumerate()
        .map(|(i, _)| match i {
            0 => Constraint::Min(8),
            1 | 2 => Constraint::Min(7),
            _ => Constraint::Fill(1),
        })
        .collect();
    let table = Table::new(lines, widths)
        .header(header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::default().borders(Borders::ALL).title(format!(
            " {} ({}) ",
            app.view.name(),
            rows.len()
        )));
    let mut state = TableState::default();
    if !rows.is_empty() {
        state.select(Some(app.selected.min(rows.len() - 1)));
    }
    f.render_stateful_widget(table, area, &mut state);
}

/// Runs the dashboard until `q`.
pub async fn run(args: UiArgs) -> Result<()> {
    use ratatui::crossterm::{execute, terminal};
    let api = std::sync::Arc::new(Api::new(&args.c)?);
    let mut app = App::new(&api.base, args.readonly);

    terminal::enable_raw_mode().context("the terminal cannot enter raw mode (is this a tty?)")?;
    let mut stdout = std::io::stdout();
    execute!(stdout, terminal::EnterAlternateScreen).context("entering the alternate screen")?;
    let restore = || {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen);
    };
    // A panic must not leave the user's terminal in raw mode.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen);
        hook(info);
    }));
    let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
    let mut term = match ratatui::Terminal::new(backend) {
        Ok(t) => t,
        Err(e) => {
            restore();
            return Err(e).context("cannot open the terminal");
        }
    };
    let result = drive(&mut app, &mut term, api, args.refresh_ms).await;
    restore();
    result
}

type Term = ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>;

async fn drive(
    app: &mut App,
    term: &mut Term,
    api: std::sync::Arc<Api>,
    refresh_ms: u64,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<Input>(INPUT_QUEUE_MAX);
    // Keys come from a blocking read: one thread, ended with the process.
    let keys = tx.clone();
    std::thread::spawn(move || {
        loop {
            match ratatui::crossterm::event::read() {
                Ok(Event::Key(k)) => {
                    if keys.blocking_send(Input::Key(k)).is_err() {
                        return;
                    }
                }
                Ok(_) => {
                    // A resize: redraw happens on the next tick.
                }
                Err(_) => return,
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(refresh_ms.clamp(200, 60_000)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logs: Option<tokio::task::JoinHandle<()>> = None;
    let mut fetch_in_flight: Option<tokio::task::JoinHandle<()>> = None;
    let mut refresh_pending = true;
    // Live: every event the cluster records asks for a fresh view, so the screen follows the
    // cluster without polling hard; the tick is only a safety net.
    let live = tokio::spawn(follow_events(api.clone(), tx.clone()));
    loop {
        term.draw(|f| render(app, f))?;
        if app.quit {
            break;
        }
        let effects = tokio::select! {
            Some(input) = rx.recv() => app.handle(input),
            _ = tick.tick() => vec![Effect::Refresh],
        };
        for e in effects {
            match e {
                Effect::Refresh => refresh_pending = true,
                Effect::Delete { path } => {
                    let api = api.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let message = match api.call(reqwest::Method::DELETE, &path, None).await {
                            Ok(_) => format!("deleted {path}"),
                            Err(e) => format!("delete failed: {e:#}"),
                        };
                        let _ = tx.send(Input::Done { message }).await;
                    });
                }
                Effect::Scale { service, replicas } => {
                    let api = api.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let body = serde_json::json!({ "replicas": replicas });
                        let path = format!("/services/{service}/scale");
                        let message = match api.call(reqwest::Method::POST, &path, Some(body)).await
                        {
                            Ok(_) => format!("{service} scaled to {replicas}"),
                            Err(e) => format!("scale failed: {e:#}"),
                        };
                        let _ = tx.send(Input::Done { message }).await;
                    });
                }
                Effect::FollowLogs { task } => {
                    if let Some(h) = logs.take() {
                        h.abort();
                    }
                    let api = api.clone();
                    let tx = tx.clone();
                    logs = Some(tokio::spawn(follow_logs(api, task, tx)));
                }
                Effect::StopLogs => {
                    if let Some(h) = logs.take() {
                        h.abort();
                    }
                }
            }
        }
        // One fetch at a time: a burst of events or a slow node makes one fetch, not many.
        if refresh_pending && fetch_in_flight.as_ref().is_none_or(|h| h.is_finished()) {
            refresh_pending = false;
            fetch_in_flight = Some(tokio::spawn(fetch(api.clone(), app.fetches(), tx.clone())));
        }
    }
    live.abort();
    if let Some(h) = logs.take() {
        h.abort();
    }
    Ok(())
}

/// Reads each wanted path and sends what came back.
async fn fetch(api: std::sync::Arc<Api>, wanted: Vec<(View, String)>, tx: mpsc::Sender<Input>) {
    for (view, path) in wanted {
        let input = if view == View::Events {
            match read_lines(&api, &path).await {
                Ok(items) => Input::Data { view, items },
                Err(error) => Input::FetchFailed { view, error },
            }
        } else {
            match api.get(&path).await {
                Ok(Value::Array(items)) => Input::Data { view, items },
                Ok(_) => Input::Data {
                    view,
                    items: Vec::new(),
                },
                Err(e) => Input::FetchFailed {
                    view,
                    error: format!("{e:#}"),
                },
            }
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}

/// A newline-delimited JSON answer, as values.
async fn read_lines(api: &Api, path: &str) -> Result<Vec<Value>, String> {
    let resp = api
        .http
        .get(format!("{}{path}", api.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("error").is_none())
        .collect())
}

/// Follows the live event stream and turns every event into `Input::Live`; reconnects with a
/// growing pause when the node goes away.
async fn follow_events(api: std::sync::Arc<Api>, tx: mpsc::Sender<Input>) {
    let mut pause = Duration::from_millis(250);
    loop {
        let url = format!("{}/events?tail=0&follow=true", api.base);
        if let Ok(resp) = api.http.get(url).send().await
            && resp.status().is_success()
        {
            pause = Duration::from_millis(250);
            let mut stream = resp.bytes_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                if chunk.contains(&b'\n') && tx.send(Input::Live).await.is_err() {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn follow_logs(api: std::sync::Arc<Api>, task: String, tx: mpsc::Sender<Input>) {
    let url = format!("{}/tasks/{task}/logs?follow=true&tail=200", api.base);
    let line = |l: String| Input::LogLine {
        task: task.clone(),
        line: l,
    };
    let resp = match api.http.get(url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let _ = tx
                .send(line(format!("[logs unavailable: {}]", r.status())))
                .await;
            return;
        }
        Err(e) => {
            let _ = tx.send(line(format!("[logs unavailable: {e}]"))).await;
            return;
        }
    };
    let mut stream = resp.bytes_stream();
    let mut partial = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            let _ = tx.send(line("[log stream ended]".to_string())).await;
            return;
        };
        partial.extend_from_slice(&chunk);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let rest = partial.split_off(pos + 1);
            let text = String::from_utf8_lossy(&partial).trim_end().to_string();
            partial = rest;
            if tx.send(line(text)).await.is_err() {
                return;
            }
        }
        // A line without an end is cut at a bound rather than buffered forever.
        if partial.len() > 64 * 1024 {
            let text = String::from_utf8_lossy(&partial).to_string();
            partial.clear();
            if tx.send(line(text)).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(line("[log stream ended]".to_string())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn key(c: KeyCode) -> Input {
        Input::Key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    fn ctrl(c: char) -> Input {
        Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    fn typed(s: &str) -> Vec<Input> {
        s.chars().map(|c| key(KeyCode::Char(c))).collect()
    }

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| render(app, f)).expect("draw");
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn app_with_data() -> App {
        let mut app = App::new("http://127.0.0.1:8000", false);
        app.handle(Input::Data {
            view: View::Nodes,
            items: vec![
                json!({"id": "node1", "status": "alive", "role": "leader", "address": "127.0.0.1:6000", "tasks": 1,
                       "capacity": {"memory": 1073741824u64, "cpu": 2.0}, "allocated": {"memory": 104857600, "cpu": 0.5}}),
                json!({"id": "node2", "status": "dead", "role": "learner", "address": "127.0.0.2:6000", "tasks": 0,
                       "capacity": {"memory": 1073741824u64, "cpu": 2.0}, "allocated": {"memory": 0, "cpu": 0.0}}),
            ],
        });
        app.handle(Input::Data {
            view: View::Tasks,
            items: vec![
                json!({"id": "aaaaaaaaaaaaaaaa1", "name": "web", "state": "running", "node": "node1", "image": "orion/busybox",
                       "ports": [{"containerPort": 80, "hostPort": 8080}]}),
                json!({"id": "bbbbbbbbbbbbbbbb2", "name": "db", "state": "pending", "node": null, "image": "orion/busybox",
                       "ports": [], "service": "db"}),
            ],
        });
        app.handle(Input::Data {
            view: View::Services,
            items: vec![json!({"id": "db", "name": "db", "mode": "replicated", "image": "orion/busybox", "version": 2,
                               "replicas": {"desired": 3, "running": 1, "healthy": 1},
                               "deployment": {"state": "rolling-back", "fromVersion": 2, "toVersion": 1, "updated": 1, "total": 3, "message": "task exited"}})],
        });
        app
    }

    /// Feeds inputs and returns the effects asked for along the way.
    fn check(app: &mut App, inputs: Vec<Input>) -> Vec<Effect> {
        inputs.into_iter().flat_map(|i| app.handle(i)).collect()
    }

    #[test]
    fn the_nodes_view_shows_one_line_per_node_with_its_state() {
        let app = app_with_data();
        let s = screen(&app, 100, 10);
        assert!(
            s.contains("node1") && s.contains("alive") && s.contains("leader"),
            "{s}"
        );
        assert!(s.contains("node2") && s.contains("dead"), "{s}");
        assert!(s.contains("connected"), "{s}");
    }

    #[test]
    fn colon_switches_views_by_name_or_prefix() {
        let mut app = app_with_data();
        let mut inputs = vec![key(KeyCode::Char(':'))];
        inputs.extend(typed("ta"));
        inputs.push(key(KeyCode::Enter));
        assert_eq!(check(&mut app, inputs), vec![Effect::Refresh]);
        assert_eq!(app.view, View::Tasks);
        let s = screen(&app, 100, 10);
        assert!(s.contains("web") && s.contains("running"), "{s}");

        let mut inputs = vec![key(KeyCode::Char(':'))];
        inputs.extend(typed("nope"));
        inputs.push(key(KeyCode::Enter));
        check(&mut app, inputs);
        assert_eq!(app.view, View::Tasks);
        assert!(app.message.as_deref().unwrap_or("").contains("no view"));
        for (name, view) in [
            ("svc", View::Services),
            ("deployments", View::Deployments),
            ("ev", View::Events),
            ("no", View::Nodes),
        ] {
            assert_eq!(View::parse(name), Some(view), "{name}");
        }
    }

    #[test]
    fn slash_filters_the_list_and_esc_clears_it() {
        let mut app = app_with_data();
        app.view = View::Tasks;
        let mut inputs = vec![key(KeyCode::Char('/'))];
        inputs.extend(typed("pend"));
        inputs.push(key(KeyCode::Enter));
        check(&mut app, inputs);
        let rows = app.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cells[1], "db");
        check(&mut app, vec![key(KeyCode::Esc)]);
        assert_eq!(app.rows().len(), 2);
    }

    #[test]
    fn enter_on_a_node_drills_into_its_tasks_and_esc_comes_back() {
        let mut app = app_with_data();
        let fx = check(&mut app, vec![key(KeyCode::Enter)]);
        assert_eq!(fx, vec![Effect::Refresh]);
        assert_eq!(app.view, View::Tasks);
        assert_eq!(app.scope, Scope::Node("node1".into()));
        assert_eq!(app.rows().len(), 1);
        check(&mut app, vec![key(KeyCode::Esc)]);
        assert_eq!(app.view, View::Nodes);
        assert_eq!(app.scope, Scope::All);
    }

    #[test]
    fn ctrl_d_deletes_only_after_a_yes() {
        let mut app = app_with_data();
        app.view = View::Tasks;
        let fx = check(&mut app, vec![ctrl('d')]);
        assert!(fx.is_empty());
        assert!(screen(&app, 100, 10).contains("(y/n)"));
        let fx = check(&mut app, vec![key(KeyCode::Char('n'))]);
        assert!(fx.is_empty());
        check(&mut app, vec![ctrl('d')]);
        let fx = check(&mut app, vec![key(KeyCode::Char('y'))]);
        assert_eq!(
            fx,
            vec![Effect::Delete {
                path: "/tasks/aaaaaaaaaaaaaaaa1".into()
            }]
        );
    }

    #[test]
    fn readonly_refuses_delete_and_scale() {
        let mut app = app_with_data();
        app.readonly = true;
        app.view = View::Tasks;
        assert!(check(&mut app, vec![ctrl('d'), key(KeyCode::Char('y'))]).is_empty());
        assert_eq!(app.mode, Mode::Normal);
        app.view = View::Services;
        check(&mut app, vec![key(KeyCode::Char('s'))]);
        assert_eq!(app.mode, Mode::Normal);
        assert!(app.message.as_deref().unwrap_or("").contains("read-only"));
    }

    #[test]
    fn s_scales_the_selected_service() {
        let mut app = app_with_data();
        app.view = View::Services;
        let mut inputs = vec![key(KeyCode::Char('s')), key(KeyCode::Backspace)];
        inputs.extend(typed("5"));
        inputs.push(key(KeyCode::Enter));
        assert_eq!(
            check(&mut app, inputs),
            vec![Effect::Scale {
                service: "db".into(),
                replicas: 5
            }]
        );
    }

    #[test]
    fn l_follows_logs_and_esc_stops_them() {
        let mut app = app_with_data();
        app.view = View::Tasks;
        let fx = check(&mut app, vec![key(KeyCode::Char('l'))]);
        assert_eq!(
            fx,
            vec![Effect::FollowLogs {
                task: "aaaaaaaaaaaaaaaa1".into()
            }]
        );
        check(
            &mut app,
            vec![Input::LogLine {
                task: "aaaaaaaaaaaaaaaa1".into(),
                line: "hello from orion".into(),
            }],
        );
        assert!(screen(&app, 80, 10).contains("hello from orion"));
        assert_eq!(
            check(&mut app, vec![key(KeyCode::Esc)]),
            vec![Effect::StopLogs]
        );
    }

    #[test]
    fn d_describes_the_selection_as_json() {
        let mut app = app_with_data();
        check(&mut app, vec![key(KeyCode::Char('d'))]);
        let s = screen(&app, 80, 20);
        assert!(s.contains("\"role\": \"leader\""), "{s}");
    }

    #[test]
    fn the_deployments_view_shows_rollouts() {
        let mut app = app_with_data();
        app.view = View::Deployments;
        let s = screen(&app, 100, 10);
        assert!(s.contains("rolling-back") && s.contains("1/3"), "{s}");
    }

    #[test]
    fn a_lost_connection_keeps_the_data_and_says_so() {
        let mut app = app_with_data();
        app.handle(Input::FetchFailed {
            view: View::Nodes,
            error: "cannot reach orion".into(),
        });
        let s = screen(&app, 120, 10);
        assert!(s.contains("CONNECTION LOST"), "{s}");
        assert!(s.contains("node1"), "{s}");
        app.handle(Input::Data {
            view: View::Nodes,
            items: vec![],
        });
        assert!(screen(&app, 120, 10).contains("connected"));
    }

    #[test]
    fn a_narrow_terminal_gets_a_message_not_a_panic() {
        let app = app_with_data();
        for (w, h) in [(1, 1), (10, 3), (23, 40), (24, 6), (30, 6), (200, 6)] {
            let s = screen(&app, w, h);
            assert!(!s.is_empty());
        }
        assert!(screen(&app, 20, 10).contains("too small"));
    }

    #[test]
    fn help_and_quit() {
        let mut app = app_with_data();
        check(&mut app, vec![key(KeyCode::Char('?'))]);
        assert!(screen(&app, 100, 20).contains("drill down"));
        check(&mut app, vec![key(KeyCode::Esc)]);
        assert_eq!(app.mode, Mode::Normal);
        check(&mut app, vec![key(KeyCode::Char('q'))]);
        assert!(app.quit);
    }

    #[test]
    fn state_colours() {
        assert_eq!(state_color("running"), Color::Green);
        assert_eq!(state_color("pending"), Color::Yellow);
        assert_eq!(state_color("dead"), Color::Red);
        assert_eq!(state_color("stopped"), Color::DarkGray);
    }
}
