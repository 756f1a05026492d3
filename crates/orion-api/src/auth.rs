//! Authentication and roles (API.md "Security"), and the `/tokens` routes.
//!
//! `authenticate` wraps the router in a layer that lets `GET /health` through and asks every
//! other request for `Authorization: Bearer <token>`. The token's SHA-256 is looked up in
//! this node's replica of the state (`ClusterState::tokens`), so a revocation applies on a
//! node as soon as that node applies the entry; nothing is cached. The one token not in the
//! state is the nodes' own (derived from the cluster secret), which is read-only: nodes use it
//! to proxy `GET /tasks/{id}/logs`.
//!
//! Roles: `admin` may do anything; `operator` anything but `/tokens` and writing
//! `/cluster/config`; `read-only` only `GET`/`HEAD`.

use crate::openapi::{BodyErrors, WriteErrors};
use crate::{ApiError, Backend, ErrorBody, read_body};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orion_types::api::parse_object;
use orion_types::{ApiToken, Command, Response as CmdResponse, Role};
use serde::Serialize;
use std::sync::Arc;

/// What the layer needs besides the state: the hash of the nodes' own token (shared, since a
/// first join may switch to a newer join token while the API already serves).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub node_token_hash: Arc<std::sync::RwLock<String>>,
}

/// A token as `GET /tokens` shows it: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub id: String,
    pub name: String,
    /// `admin`, `operator` or `read-only`.
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /tokens`'s answer: the view plus the secret, shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    pub view: TokenView,
    /// The bearer token. Only its hash is kept: it cannot be shown again.
    pub token: String,
}

/// The body of `POST /tokens` (documentation; the handler parses it by hand).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "read-only", "name": "dashboard"}))]
pub struct TokenRequest {
    /// `admin`, `operator` or `read-only`.
    pub role: String,
    /// A label for people (at most 128 bytes).
    pub name: Option<String>,
}

impl From<&ApiToken> for TokenView {
    fn from(t: &ApiToken) -> TokenView {
        TokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.as_str().to_string(),
            created_at: crate::view::rfc3339(t.created_at),
        }
    }
}

const HOW_TO_GET_ONE: &str = "send `Authorization: Bearer <token>`. On the host that bootstrapped the cluster the admin token is in the credentials file (~/.config/orion/credentials.json, which the orion CLI reads by itself); elsewhere ask an admin for one (`orion token create --role operator NAME`)";

/// Whether `role` may call `method` on `path`.
pub fn allowed(role: Role, method: &Method, path: &str) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    match role {
        Role::Admin => true,
        Role::ReadOnly => read && path != "/join-token",
        Role::Operator => {
            let tokens = path == "/tokens" || path.starts_with("/tokens/") || path == "/join-token";
            // Rotating the CA and removing a node change who the cluster trusts: admins only.
            let trust = path == "/ca/rotate"
                || path == "/gossip-key/rotate"
                || (method == Method::DELETE && path.starts_with("/nodes/"));
            !tokens && !trust && (read || path != "/cluster/config")
        }
    }
}

/// Wraps `router` so that every route but `GET /health` needs a token with the right role.
pub fn authenticate<B: Backend>(
    router: axum::Router,
    backend: Arc<B>,
    cfg: AuthConfig,
) -> axum::Router {
    let state = Arc::new((backend, cfg));
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let state = state.clone();
            async move {
                match check(state.0.as_ref(), &state.1, &req) {
                    Ok(()) => next.run(req).await,
                    Err(e) => e.into_response(),
                }
            }
        },
    ))
}

fn check<B: Backend>(b: &B, cfg: &AuthConfig, req: &Request) -> Result<(), ApiError> {
    let path = req.uri().path();
    if path == "/health" {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("no token: {HOW_TO_GET_ONE}"),
        ));
    };
    let hash = orion_security::tokens::hash(token);
    let node_hash = cfg
        .node_token_hash
        .read()
        .map(|h| h.clone())
        .unwrap_or_default();
    let role = if hash == node_hash {
        Some(Role::ReadOnly)
    } else {
        b.read(|s| {
            if s.tokens.is_empty() {
                None
            } else {
                Some(s.tokens.values().find(|t| t.hash == hash).map(|t| t.role))
            }
        })
        .ok_or_else(|| {
            // Only before the bootstrap's admin token has reached this replica.
            ApiError::unavailable("this node has not received the cluster's tokens yet; retry")
        })?
    };
    let Some(role) = role else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "this token is not valid in this cluster (revoked, or from another cluster): {HOW_TO_GET_ONE}"
            ),
        ));
    };
    if !allowed(role, req.method(), path) {
        let need = if role == Role::Operator || path.starts_with("/tokens") {
            "admin"
        } else {
            "operator or admin"
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token may not {} {path}: use a token with the {need} role (an admin makes one with `orion token create --role ROLE NAME`)",
                role.as_str(),
                req.method()
            ),
        ));
    }
    Ok(())
}

/// `GET /join-token`'s answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenView {
    /// `ORNTKN-1-<CA fingerprint>-<cluster secret>`: pass it to a new node's `--token`.
    pub token: String,
}

/// The cluster's join token (admin only): what a new node passes to `--token`.
#[utoipa::path(get, path = "/join-token", tag = "tokens",
    responses(
        (status = 200, description = "The join token", body = JoinTokenView),
        (status = 404, description = "This node runs with --insecure", body = ErrorBody)))]
pub(crate) async fn join_token<B: Backend>(State(b): State<Arc<B>>) -> Result<Response, ApiError> {
    let token = b.join_token().ok_or_else(|| {
        ApiError::not_found("this node runs with --insecure: it has no join token")
    })?;
    Ok(Json(JoinTokenView { token }).into_response())
}

/// Makes an API token; its secret is in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "tokens",
    request_body = TokenRequest,
    responses(
        (status = 201, description = "The token, with its secret (shown once)", body = CreatedToken),
        WriteErrors, BodyErrors))]
pub(crate) async fn create<B: Backend>(
    State(b): State<Arc<B>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let obj = parse_object(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for k in obj.keys() {
        if k != "role" && k != "name" {
            return Err(ApiError::bad_request(format!(
                "{k}: unknown field (expected role, name)"
            )));
        }
    }
    let role = match obj.get("role") {
        Some(serde_json::Value::String(r)) => Role::parse(r).ok_or_else(|| {
            ApiError::bad_request(format!(
                "role: {r:?} is not a role (admin, operator, read-only)"
            ))
        })?,
        Some(_) => return Err(ApiError::bad_request("role: must be a string")),
        None => {
            return Err(ApiError::bad_request(
                "role: required (admin, operator, read-only)",
            ));
        }
    };
    let name = match obj.get("name") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(n)) => n.clone(),
        Some(_) => return Err(ApiError::bad_request("name: must be a string")),
    };
    let (id, secret) = orion_security::tokens::new_token();
    let token = ApiToken {
        id,
        name,
        role,
        hash: orion_security::tokens::hash(&secret),
        created_at: b.now_ms(),
    };
    let cmd = Command::CreateToken {
        token: token.clone(),
        at: token.created_at,
    };
    if let Err(e) = cmd.validate() {
        return Err(ApiError::bad_request(format!("{}: {}", e.field, e.message)));
    }
    match b.write(cmd).await? {
        CmdResponse::Ok => Ok((
            StatusCode::CREATED,
            Json(CreatedToken {
                view: TokenView::from(&token),
                token: secret,
            }),
        )
            .into_response()),
        CmdResponse::Conflict(m) => Err(ApiError::conflict(m)),
        CmdResponse::Invalid(m) => Err(ApiError::bad_request(m)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a token create: {other:?}"
        ))),
    }
}

/// The cluster's API tokens (never their secrets).
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses((status = 200, description = "The tokens", body = Vec<TokenView>)))]
pub(crate) async fn list<B: Backend>(State(b): State<Arc<B>>) -> Response {
    let v: Vec<TokenView> = b.read(|s| s.tokens.values().map(TokenView::from).collect());
    Json(v).into_response()
}

/// Revokes a token: every node refuses it once it applies the revocation.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "The revoked token", body = TokenView),
        (status = 404, description = "No such token", body = ErrorBody),
        WriteErrors))]
pub(crate) async fn delete<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = match b.read(|s| s.tokens.get(&id).map(TokenView::from)) {
        Some(v) => v,
        None => {
            b.consistent_read().await?;
            b.read(|s| s.tokens.get(&id).map(TokenView::from))
                .ok_or_else(|| ApiError::not_found(format!("token {id} not found")))?
        }
    };
    let cmd = Command::RevokeToken { id, at: b.now_ms() };
    if let Err(e) = cmd.validate() {
        return Err(ApiError::bad_request(format!("{}: {}", e.field, e.message)));
    }
    match b.write(cmd).await? {
        CmdResponse::Ok => Ok(Json(view).into_response()),
        CmdResponse::NotFound(m) => Err(ApiError::not_found(m)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a token revoke: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_api_md_says() {
        let cases = [
            (Role::ReadOnly, Method::GET, "/tasks", true),
            (Role::ReadOnly, Method::POST, "/tasks", false),
            (Role::ReadOnly, Method::DELETE, "/tasks/x", false),
            (Role::Operator, Method::POST, "/tasks", true),
            (Role::Operator, Method::POST, "/services/web/scale", true),
            (Role::Operator, Method::POST, "/nodes/n1/drain", true),
            (Role::Operator, Method::GET, "/cluster/config", true),
            (Role::Operator, Method::PUT, "/cluster/config", false),
            (Role::Operator, Method::POST, "/tokens", false),
            (Role::Operator, Method::GET, "/tokens", false),
            (Role::Admin, Method::DELETE, "/tokens/abc", true),
            (Role::Admin, Method::PUT, "/cluster/config", true),
            (Role::Admin, Method::GET, "/join-token", true),
            (Role::Admin, Method::POST, "/ca/rotate", true),
            (Role::Operator, Method::POST, "/ca/rotate", false),
            (Role::Operator, Method::POST, "/gossip-key/rotate", false),
            (Role::Operator, Method::GET, "/ca", true),
            (Role::ReadOnly, Method::GET, "/ca", true),
            (Role::Admin, Method::DELETE, "/nodes/n1", true),
            (Role::Operator, Method::DELETE, "/nodes/n1", false),
            (Role::ReadOnly, Method::DELETE, "/nodes/n1", false),
            (Role::Operator, Method::GET, "/join-token", false),
            (Role::ReadOnly, Method::GET, "/join-token", false),
        ];
        for (role, method, path, want) in cases {
            assert_eq!(
                allowed(role, &method, path),
                want,
                "{role:?} {method} {path}"
            );
        }
    }
}
