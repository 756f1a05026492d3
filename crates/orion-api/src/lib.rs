//! The HTTP/JSON API that users, scripts and the CLI speak (API.md), served by every node.
//!
//! Architecture invariant: handlers parse and validate, then hand a `Command` to the
//! `Backend`; they never touch Docker, Raft internals or gossip. Every answer, errors
//! included, is JSON. The agent implements `Backend` on top of Raft, gossip and the executor.

mod auth;
mod ca;
mod events;
mod openapi;
mod service_view;
mod services;
mod view;

pub use auth::{
    AuthConfig, CreatedToken, JoinTokenView, TokenRequest, TokenView, allowed, authenticate,
};
pub use events::EventDoc;
pub use openapi::{ErrorBody, GoneBody, HealthBody, ScaleRequest, openapi, openapi_json};
pub use service_view::{
    DeploymentView, EndpointView, HealthProbeView, HealthcheckView, ReplicasView,
    SERVICE_VIEW_ONLY_FIELDS, ServicePortView, ServiceView, UpdateView, format_duration,
    service_json, spec_json,
};
pub use view::{EventView, NodeView, ResourcesView, StatusView, TaskView};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orion_state::ClusterState;
use orion_types::api::parse_task_request;
use orion_types::config::parse_config_patch;
use orion_types::{Command, Response as CmdResponse, Task, TaskState, limits};
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A client that does not finish sending its body in this time is cut off: a slow or stalled
/// client must not hold a connection and a buffer forever. Ten seconds is generous for a body
/// of at most `BODY_BYTES_MAX` on any network a cluster runs on.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A short id prefix must be at least this long to be accepted, as with Docker.
const ID_PREFIX_MIN_CHARS: usize = 4;

/// An error with its HTTP status, rendered as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// What the API needs from the node it runs in.
pub trait Backend: Send + Sync + 'static {
    /// Proposes a command through Raft (forwarded to the leader when needed) and answers after
    /// commit.
    fn write(&self, cmd: Command) -> impl Future<Output = Result<CmdResponse, ApiError>> + Send;
    /// Waits until the local replica has applied everything committed before this call.
    fn consistent_read(&self) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Reads the local replica.
    fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T;
    fn nodes(&self) -> Vec<NodeView>;
    fn status(&self) -> StatusView;
    /// A fresh unique id for a task or allocation.
    fn new_id(&self) -> String;
    /// Milliseconds since the Unix epoch, for the timestamps commands carry.
    fn now_ms(&self) -> u64;
    /// This node's figures in Prometheus text format (`GET /metrics`), if it keeps them.
    fn metrics(&self) -> Option<String> {
        None
    }
    /// This node's event history (`GET /events`), if it keeps one.
    /// This node's endpoint view (the `endpoints` of a service object). The default builds
    /// it from the replicated state alone, with no health announced by gossip.
    fn endpoints(&self) -> Arc<orion_types::endpoint::EndpointView> {
        Arc::new(self.read(|s| {
            orion_discovery::build(
                s,
                &std::collections::BTreeMap::new(),
                &orion_discovery::node_addrs(s),
            )
        }))
    }
    fn events(&self) -> Option<Arc<orion_events::EventLog>> {
        None
    }
    /// The cluster's join token (`GET /join-token`), if this node runs secured.
    fn join_token(&self) -> Option<String> {
        None
    }
    /// A new cluster CA, its key sealed under the cluster secret, for `POST /ca/rotate`;
    /// `None` if this node runs with `--insecure`.
    fn new_cluster_ca(&self) -> Option<Result<orion_types::ClusterCa, String>> {
        None
    }
    /// A new gossip key record (sealed under the cluster secret) for
    /// `POST /gossip-key/rotate`; `None` if this node runs with `--insecure`.
    fn new_gossip_key(&self) -> Option<orion_types::GossipKeyRecord> {
        None
    }
    /// Container logs of a task that runs on this node, or an error saying where it runs.
    fn logs(
        &self,
        task: Task,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Future<Output = Result<Body, ApiError>> + Send;
}

/// The router with every route of API.md.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status::<B>))
        .route("/nodes", get(nodes::<B>))
        .route("/nodes/{id}", axum::routing::delete(ca::remove_node::<B>))
        .route("/nodes/{id}/drain", post(drain::<B>))
        .route("/nodes/{id}/undrain", post(undrain::<B>))
        .route("/tasks", get(list_tasks::<B>).post(create_task::<B>))
        .route("/tasks/{id}", get(get_task::<B>).delete(delete_task::<B>))
        .route("/tasks/{id}/logs", get(task_logs::<B>))
        .route("/events", get(events::events::<B>))
        .route("/metrics", get(metrics::<B>))
        .route(
            "/cluster/config",
            get(get_cluster_config::<B>).put(put_cluster_config::<B>),
        )
        .route(
            "/services",
            get(services::list::<B>).post(services::create::<B>),
        )
        .route(
            "/services/{id}",
            get(services::get_one::<B>)
                .put(services::update::<B>)
                .delete(services::delete::<B>),
        )
        .route("/services/{id}/tasks", get(services::tasks::<B>))
        .route("/services/{id}/scale", post(services::scale::<B>))
        .route("/services/{id}/rollback", post(services::rollback::<B>))
        .route("/tokens", get(auth::list::<B>).post(auth::create::<B>))
        .route("/tokens/{id}", axum::routing::delete(auth::delete::<B>))
        .route("/join-token", get(auth::join_token::<B>))
        .route("/ca", get(ca::get_ca::<B>))
        .route("/ca/rotate", post(ca::rotate::<B>))
        .route("/gossip-key/rotate", post(ca::rotate_gossip_key::<B>))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async { ApiError::not_found("no such route; see API.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .with_state(backend)
}

/// This node's figures in Prometheus text format (names prefixed `orion_`).
#[utoipa::path(get, path = "/metrics", tag = "node",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 404, description = "This node keeps no metrics", body = ErrorBody)))]
async fn metrics<B: Backend>(State(b): State<Arc<B>>) -> Response {
    match b.metrics() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => ApiError::not_found("this node keeps no metrics").into_response(),
    }
}

/// Whether the node's API answers.
#[utoipa::path(get, path = "/health", tag = "node",
    responses((status = 200, description = "The API answers", body = openapi::HealthBody)))]
async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// The answering node's own view: its Raft role, term, indexes and the members.
#[utoipa::path(get, path = "/status", tag = "node",
    responses((status = 200, description = "This node's view", body = StatusView)))]
async fn status<B: Backend>(State(b): State<Arc<B>>) -> Response {
    Json(b.status()).into_response()
}

/// Every node: gossip status, Raft role, capacity and what is allocated on it.
#[utoipa::path(get, path = "/nodes", tag = "nodes",
    responses((status = 200, description = "The nodes", body = Vec<NodeView>)))]
async fn nodes<B: Backend>(State(b): State<Arc<B>>) -> Response {
    Json(b.nodes()).into_response()
}

/// Drains a node: no new placements on it, and its tasks move elsewhere.
#[utoipa::path(post, path = "/nodes/{id}/drain", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "The node, now draining (`null` if it is no longer listed)", body = Option<NodeView>),
        (status = 404, description = "No such node", body = ErrorBody),
        openapi::WriteErrors))]
async fn drain<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_drain(b, id, true).await
}

/// Undrains a node: it takes placements again.
#[utoipa::path(post, path = "/nodes/{id}/undrain", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "The node, no longer draining (`null` if it is no longer listed)", body = Option<NodeView>),
        (status = 404, description = "No such node", body = ErrorBody),
        openapi::WriteErrors))]
async fn undrain<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_drain(b, id, false).await
}

async fn set_drain<B: Backend>(b: Arc<B>, id: String, drain: bool) -> Result<Response, ApiError> {
    let cmd = Command::SetDrain {
        node: id.clone(),
        drain,
        at: b.now_ms(),
    };
    match b.write(cmd).await? {
        CmdResponse::NotFound(m) => Err(ApiError::not_found(m)),
        _ => {
            let node = b.nodes().into_iter().find(|n| n.id == id);
            Ok(Json(node).into_response())
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<orion_types::TaskState>)]
    state: Option<String>,
    /// Only tasks placed on this node.
    node: Option<String>,
    /// `true`: first catch up with everything the leader has committed.
    consistent: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// `true`: first catch up with everything the leader has committed.
    pub(crate) consistent: Option<bool>,
}

/// The tasks this node's replica knows, optionally filtered.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, description = "The tasks", body = Vec<TaskView>), openapi::ReadErrors))]
async fn list_tasks<B: Backend>(
    State(b): State<Arc<B>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: {s:?} is not one of pending, scheduled, starting, running, completed, failed, stopped, lost"
            ))
        })?),
    };
    if q.consistent.unwrap_or(false) {
        b.consistent_read().await?;
    }
    let keep = |t: &&Task| {
        state.is_none_or(|st| t.state == st)
            && q.node.as_ref().is_none_or(|n| t.node.as_ref() == Some(n))
    };
    let body = b.read(|s| {
        let tasks = || s.tasks.values().map(|t| &**t).filter(keep);
        json_array(tasks().count(), tasks().map(TaskView::from))
    });
    match body {
        Ok(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        Err(e) => Err(ApiError::internal(format!("encoding the answer: {e}"))),
    }
}

/// About what one task's JSON takes (a plain task with a few events is 600-900 bytes).
const TASK_JSON_BYTES_HINT: usize = 768;

/// `count` items as one JSON array (the bytes `serde_json` gives for a `Vec` of them), each
/// item made, written and dropped in turn: no list of views is ever whole in memory. Building
/// the 10,000 views of a large list first left about 12 MiB resident in the agent after the
/// answer (glibc keeps the small chunks they were made of), and axum's `Json` grew its buffer
/// from 128 bytes by doubling; this buffer is sized for the list up front.
fn json_array<T: serde::Serialize>(
    count: usize,
    items: impl Iterator<Item = T>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = Vec::with_capacity(count.saturating_mul(TASK_JSON_BYTES_HINT) + 2);
    body.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &item)?;
    }
    body.push(b']');
    Ok(body)
}

/// Finds a task by id or by a unique id prefix.
fn find_task(s: &ClusterState, id: &str) -> Result<Task, ApiError> {
    if let Some(t) = s.tasks.get(id) {
        return Ok(Task::clone(t));
    }
    if id.len() >= ID_PREFIX_MIN_CHARS {
        let mut matches = s
            .tasks
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id));
        if let Some((_, first)) = matches.next() {
            if matches.next().is_some() {
                return Err(ApiError::bad_request(format!(
                    "id prefix {id:?} matches more than one task"
                )));
            }
            return Ok(Task::clone(first));
        }
    }
    // Task names are a convenience for people; ids stay the key.
    let mut by_name = s
        .tasks
        .values()
        .filter(|t| t.spec.name.as_deref() == Some(id) && t.state != TaskState::Stopped);
    if let Some(t) = by_name.next()
        && by_name.next().is_none()
    {
        return Ok(Task::clone(t));
    }
    Err(ApiError::not_found(format!("task {id} not found")))
}

/// One task, by id, unique id prefix (4 characters or more) or name.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id, unique id prefix, or name"), ReadQuery),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        openapi::ReadErrors))]
async fn get_task<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    if q.consistent.unwrap_or(false) {
        b.consistent_read().await?;
    }
    let task = b.read(|s| find_task(s, &id))?;
    Ok(Json(TaskView::from(&task)).into_response())
}

/// `value` as a JSON answer, written into a buffer sized for a task's JSON: axum's `Json`
/// starts at 128 bytes and grew a task's answer by reallocations and copies (2% of the
/// leader's CPU at 64 writing clients).
fn sized_json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let mut buf = Vec::with_capacity(2048);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("cannot encode the answer: {e}")).into_response(),
    }
}

/// Runs a one-off task: validated, then placed by the leader's scheduler.
#[utoipa::path(post, path = "/tasks", tag = "tasks",
    request_body = orion_types::api::TaskRequest,
    responses(
        (status = 201, description = "The task: `scheduled` on its node when the leader placed it in the entry that created it, else `pending`", body = TaskView),
        openapi::WriteErrors, openapi::BodyErrors))]
async fn create_task<B: Backend>(
    State(b): State<Arc<B>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let spec = parse_task_request(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cmd = Command::CreateTask {
        task_id: b.new_id(),
        spec: Box::new(spec),
        at: b.now_ms(),
    };
    match b.write(cmd).await? {
        CmdResponse::Task(task) => Ok(sized_json(StatusCode::CREATED, &TaskView::from(&*task))),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a create: {other:?}"
        ))),
    }
}

/// Stops a task and removes it.
#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id, unique id prefix, or name")),
    responses(
        (status = 200, description = "The task, stopped", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        openapi::WriteErrors))]
async fn delete_task<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // A write must not act on a stale read: if this replica does not know the task (yet),
    // catch up with the leader and look again before answering 404.
    let task = match b.read(|s| find_task(s, &id)) {
        Ok(t) => t,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            b.consistent_read().await?;
            b.read(|s| find_task(s, &id))?
        }
        Err(e) => return Err(e),
    };
    let cmd = Command::DeleteTask {
        task_id: task.id,
        at: b.now_ms(),
    };
    match b.write(cmd).await? {
        CmdResponse::Task(task) => Ok(Json(TaskView::from(&*task)).into_response()),
        CmdResponse::NotFound(m) => Err(ApiError::not_found(m)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a delete: {other:?}"
        ))),
    }
}

/// The cluster-wide settings.
#[utoipa::path(get, path = "/cluster/config", tag = "cluster", params(ReadQuery),
    responses(
        (status = 200, description = "The settings", body = orion_types::config::ClusterConfigJson),
        openapi::ReadErrors))]
async fn get_cluster_config<B: Backend>(
    State(b): State<Arc<B>>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    if q.consistent.unwrap_or(false) {
        b.consistent_read().await?;
    }
    Ok(Json(b.read(|s| s.config()).to_json()).into_response())
}

/// Merges the fields of the body over the current config (as this replica knows it) and
/// proposes the result. Two concurrent changes of different fields can undo each other: the
/// later one carries the earlier value of the other's field.
/// Changes some of the cluster-wide settings; the fields not given keep their value.
#[utoipa::path(put, path = "/cluster/config", tag = "cluster",
    request_body = orion_types::config::ClusterConfigJson,
    responses(
        (status = 200, description = "The settings now", body = orion_types::config::ClusterConfigJson),
        openapi::WriteErrors, openapi::BodyErrors))]
async fn put_cluster_config<B: Backend>(
    State(b): State<Arc<B>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let current = b.read(|s| s.config());
    let config =
        parse_config_patch(&bytes, &current).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cmd = Command::SetClusterConfig {
        config,
        if_unset: false,
        at: b.now_ms(),
    };
    match b.write(cmd).await? {
        CmdResponse::Ok | CmdResponse::Ignored(_) => Ok(Json(config.to_json()).into_response()),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a config change: {other:?}"
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// `true`: keep the stream open and send new lines as they come.
    follow: Option<bool>,
    /// Only the last N lines.
    tail: Option<usize>,
}

/// The container's output (stdout and stderr), from whichever node runs it.
#[utoipa::path(get, path = "/tasks/{id}/logs", tag = "tasks",
    params(("id" = String, Path, description = "Task id, unique id prefix, or name"), LogsQuery),
    responses(
        (status = 200, description = "The log lines", body = String, content_type = "text/plain"),
        (status = 400, description = "A bad query, or the task is not placed yet", body = ErrorBody),
        (status = 404, description = "No such task, or it has no container (yet)", body = ErrorBody),
        (status = 503, description = "The node that runs the task cannot be reached", body = ErrorBody)))]
async fn task_logs<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let task = b.read(|s| find_task(s, &id))?;
    let body = b.logs(task, q.follow.unwrap_or(false), q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Reads a request body within the size limit and the time limit.
pub(crate) async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, limits::BODY_BYTES_MAX),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request body was not received in time",
        )),
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit");
            if too_big {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "request body is larger than {} bytes",
                        limits::BODY_BYTES_MAX
                    ),
                ))
            } else {
                Err(ApiError::bad_request(format!(
                    "could not read the request body: {e}"
                )))
            }
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests;
