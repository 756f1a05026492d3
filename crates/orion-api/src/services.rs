//! The `/services` routes (API.md "Services"): parse and validate, propose one command, and
//! render the service object. Validation happens before anything is proposed, so a bad field
//! writes nothing; a duplicate id is refused by `apply` (`409`), which is the only place that
//! can know it for sure.

use crate::openapi::{BodyErrors, ReadErrors, WriteErrors};
use crate::service_view::ServiceView;
use crate::{ApiError, Backend, ErrorBody, ReadQuery, TaskView, read_body, service_json};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orion_state::ClusterState;
use orion_types::api::parse_object;
use orion_types::endpoint::EndpointView as Endpoints;
use orion_types::limits::SERVICE_REPLICAS_MAX;
use orion_types::service::{parse_service_request, validate_service};
use orion_types::{Command, Response as CmdResponse, TaskState};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only the services of this stack.
    stack: Option<String>,
    /// `true`: first catch up with everything the leader has committed.
    consistent: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TasksQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<orion_types::TaskState>)]
    state: Option<String>,
    /// `true`: first catch up with everything the leader has committed.
    consistent: Option<bool>,
}

fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))
}

async fn maybe_consistent<B: Backend>(b: &B, consistent: Option<bool>) -> Result<(), ApiError> {
    if consistent.unwrap_or(false) {
        b.consistent_read().await?;
    }
    Ok(())
}

fn found(s: &ClusterState, view: &Endpoints, id: &str) -> Result<Value, ApiError> {
    s.services
        .get(id)
        .map(|svc| service_json(svc, s, view.services.get(id)))
        .ok_or_else(|| ApiError::not_found(format!("service {id} not found")))
}

/// Turns the answer to a service command into HTTP: the service object with `ok`, or the
/// error the state gave.
fn answer<B: Backend>(b: &B, resp: CmdResponse, ok: StatusCode) -> Result<Response, ApiError> {
    match resp {
        CmdResponse::Service(svc) => {
            let view = b.endpoints();
            let body = b.read(|s| service_json(&svc, s, view.services.get(&svc.id)));
            Ok((ok, Json(body)).into_response())
        }
        CmdResponse::NotFound(m) => Err(ApiError::not_found(m)),
        CmdResponse::Conflict(m) => Err(ApiError::conflict(m)),
        CmdResponse::Invalid(m) => Err(ApiError::bad_request(m)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a service command: {other:?}"
        ))),
    }
}

/// Creates a service; its tasks are placed by the reconciler.
#[utoipa::path(post, path = "/services", tag = "services",
    request_body = orion_types::service::ServiceRequest,
    responses(
        (status = 201, description = "The service", body = ServiceView),
        (status = 409, description = "A service with this id exists", body = ErrorBody),
        WriteErrors, BodyErrors))]
pub(crate) async fn create<B: Backend>(
    State(b): State<Arc<B>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let spec = parse_service_request(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cmd = Command::CreateService {
        spec: Box::new(spec),
        at: b.now_ms(),
    };
    let resp = b.write(cmd).await?;
    answer(&*b, resp, StatusCode::CREATED)
}

/// Every service, optionally of one stack.
#[utoipa::path(get, path = "/services", tag = "services", params(ListQuery),
    responses((status = 200, description = "The services", body = Vec<ServiceView>), ReadErrors))]
pub(crate) async fn list<B: Backend>(
    State(b): State<Arc<B>>,
    q: QueryResult<ListQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    maybe_consistent(&*b, q.consistent).await?;
    let view = b.endpoints();
    let list: Vec<Value> = b.read(|s| {
        s.services
            .values()
            .filter(|svc| q.stack.is_none() || svc.spec.stack == q.stack)
            .map(|svc| service_json(svc, s, view.services.get(&svc.id)))
            .collect()
    });
    Ok(Json(list).into_response())
}

/// One service, with its replica counts, latest deployment and endpoints.
#[utoipa::path(get, path = "/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id: `name` or `name.stack`"), ReadQuery),
    responses(
        (status = 200, description = "The service", body = ServiceView),
        (status = 404, description = "No such service", body = ErrorBody),
        ReadErrors))]
pub(crate) async fn get_one<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    q: QueryResult<ReadQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    maybe_consistent(&*b, q.consistent).await?;
    let view = b.endpoints();
    Ok(Json(b.read(|s| found(s, &view, &id))?).into_response())
}

/// The tasks of a service, by slot.
#[utoipa::path(get, path = "/services/{id}/tasks", tag = "services",
    params(("id" = String, Path, description = "Service id"), TasksQuery),
    responses(
        (status = 200, description = "Its tasks", body = Vec<TaskView>),
        (status = 404, description = "No such service", body = ErrorBody),
        ReadErrors))]
pub(crate) async fn tasks<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    q: QueryResult<TasksQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let state =
        match q.state.as_deref() {
            None => None,
            Some(st) => Some(TaskState::parse(st).ok_or_else(|| {
                ApiError::bad_request(format!("state: {st:?} is not a task state"))
            })?),
        };
    maybe_consistent(&*b, q.consistent).await?;
    let views = b.read(|s| {
        if !s.services.contains_key(&id) {
            return Err(ApiError::not_found(format!("service {id} not found")));
        }
        let mut tasks: Vec<_> = s
            .tasks_of_service(&id)
            .filter(|t| state.is_none_or(|st| t.state == st))
            .collect();
        tasks.sort_by(|a, b| {
            (a.slot, &a.node, a.created_at, &a.id).cmp(&(b.slot, &b.node, b.created_at, &b.id))
        });
        Ok(tasks.into_iter().map(TaskView::from).collect::<Vec<_>>())
    })?;
    Ok(Json(views).into_response())
}

/// Replaces a service's spec and starts a rolling update (a deployment).
#[utoipa::path(put, path = "/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    request_body = orion_types::service::ServiceRequest,
    responses(
        (status = 200, description = "The service, updating", body = ServiceView),
        (status = 404, description = "No such service", body = ErrorBody),
        WriteErrors, BodyErrors))]
pub(crate) async fn update<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let mut obj = parse_object(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // The path names the service: a body without a name means that one.
    if !obj.contains_key("name") {
        let (name, stack) = match id.split_once('.') {
            Some((n, s)) => (n.to_string(), Some(s.to_string())),
            None => (id.clone(), None),
        };
        obj.insert("name".into(), Value::String(name));
        if let Some(stack) = stack {
            obj.entry("stack").or_insert(Value::String(stack));
        }
    }
    let spec = validate_service(&obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cmd = Command::UpdateService {
        id,
        spec: Box::new(spec),
        deployment_id: b.new_id(),
        at: b.now_ms(),
    };
    let resp = b.write(cmd).await?;
    answer(&*b, resp, StatusCode::OK)
}

/// Changes the number of replicas, without a new version.
#[utoipa::path(post, path = "/services/{id}/scale", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    request_body = crate::openapi::ScaleRequest,
    responses(
        (status = 200, description = "The service", body = ServiceView),
        (status = 404, description = "No such service", body = ErrorBody),
        WriteErrors, BodyErrors))]
pub(crate) async fn scale<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let obj = parse_object(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(k) = obj.keys().find(|k| *k != "replicas") {
        return Err(ApiError::bad_request(format!(
            "{k}: unknown field; the body is {{\"replicas\": n}}"
        )));
    }
    let replicas = match obj.get("replicas").and_then(Value::as_u64) {
        Some(n) if n <= u64::from(SERVICE_REPLICAS_MAX) => n as u32,
        _ => {
            return Err(ApiError::bad_request(format!(
                "replicas: must be a whole number from 0 to {SERVICE_REPLICAS_MAX}"
            )));
        }
    };
    let cmd = Command::ScaleService {
        id,
        replicas,
        at: b.now_ms(),
    };
    let resp = b.write(cmd).await?;
    answer(&*b, resp, StatusCode::OK)
}

/// Rolls a service back to its previous spec.
#[utoipa::path(post, path = "/services/{id}/rollback", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses(
        (status = 200, description = "The service, rolling back", body = ServiceView),
        (status = 404, description = "No such service", body = ErrorBody),
        WriteErrors))]
pub(crate) async fn rollback<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let cmd = Command::RollbackService {
        id,
        deployment_id: b.new_id(),
        reason: None,
        at: b.now_ms(),
    };
    let resp = b.write(cmd).await?;
    answer(&*b, resp, StatusCode::OK)
}

/// Deletes a service and stops its tasks.
#[utoipa::path(delete, path = "/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses(
        (status = 200, description = "The service as it was", body = ServiceView),
        (status = 404, description = "No such service", body = ErrorBody),
        WriteErrors))]
pub(crate) async fn delete<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let cmd = Command::DeleteService { id, at: b.now_ms() };
    let resp = b.write(cmd).await?;
    answer(&*b, resp, StatusCode::OK)
}
