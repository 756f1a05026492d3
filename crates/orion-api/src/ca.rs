//! The cluster CA and node removal: `GET /ca`, `POST /ca/rotate`, `DELETE /nodes/{id}`.
//!
//! A rotation makes a new CA on the answering node (its key sealed under the cluster secret)
//! and records it through Raft; every node then trusts both CAs and re-issues its own
//! certificate under the new one within a second. The old CA stays trusted until the next
//! rotation. Removing a node puts its id on the revocation list: every node refuses its
//! certificate from then on, on new and open connections.

use crate::{ApiError, Backend, ErrorBody};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use orion_types::{Command, Response as CmdResponse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The cluster's CA, as `GET /ca` and `POST /ca/rotate` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaView {
    /// `sha256:<hex>` of the current CA certificate (DER): what join tokens pin.
    pub fingerprint: String,
    /// The current CA certificate (PEM).
    pub cert_pem: String,
    /// The CA the last rotation replaced, still trusted; `null` before any rotation.
    pub previous_fingerprint: Option<String>,
    /// Ids of removed nodes, whose certificates every node refuses.
    pub revoked_nodes: Vec<String>,
    /// The join token under the current CA (`POST /ca/rotate` only: admins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
}

fn view<B: Backend>(b: &B) -> Result<CaView, ApiError> {
    b.read(|s| {
        let ca = s.ca.as_ref()?;
        Some(CaView {
            fingerprint: ca.fingerprint.clone(),
            cert_pem: ca.cert_pem.clone(),
            previous_fingerprint: s.previous_ca.as_ref().map(|p| p.fingerprint.clone()),
            revoked_nodes: s.revoked_nodes.keys().cloned().collect(),
            join_token: None,
        })
    })
    .ok_or_else(|| {
        ApiError::not_found(
            "the cluster has no CA: it runs with --insecure (or its bootstrap has not recorded the CA yet)",
        )
    })
}

/// The cluster CA: its fingerprint and certificate, the previous CA, the revocation list.
#[utoipa::path(get, path = "/ca", tag = "security",
    responses(
        (status = 200, description = "The CA", body = CaView),
        (status = 404, description = "The cluster runs with --insecure", body = ErrorBody)))]
pub(crate) async fn get_ca<B: Backend>(State(b): State<Arc<B>>) -> Result<Response, ApiError> {
    Ok(Json(view(&*b)?).into_response())
}

/// Rotates the cluster CA (admin only): a new CA signs every node's next certificate; the old
/// one stays trusted until the next rotation. Answers the new CA and the new join token.
#[utoipa::path(post, path = "/ca/rotate", tag = "security",
    responses(
        (status = 200, description = "The new CA, with the join token that pins it", body = CaView),
        (status = 404, description = "The cluster runs with --insecure", body = ErrorBody),
        crate::openapi::WriteErrors))]
pub(crate) async fn rotate<B: Backend>(State(b): State<Arc<B>>) -> Result<Response, ApiError> {
    let ca = b.new_cluster_ca().ok_or_else(|| {
        ApiError::not_found("this node runs with --insecure: the cluster has no CA to rotate")
    })?;
    let ca = ca.map_err(ApiError::internal)?;
    let cmd = Command::RotateClusterCa { ca, at: b.now_ms() };
    match b.write(cmd).await? {
        CmdResponse::Invalid(m) => return Err(ApiError::bad_request(m)),
        CmdResponse::Conflict(m) => return Err(ApiError::conflict(m)),
        _ => {}
    }
    b.consistent_read().await?;
    let mut v = view(&*b)?;
    v.join_token = b.join_token();
    Ok(Json(v).into_response())
}

/// What `POST /gossip-key/rotate` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipKeyView {
    /// The new key's id (the byte each sealed datagram carries).
    pub key_id: u8,
    /// When nodes start sealing with it (RFC 3339); they accept it from now on.
    pub sealing_from: String,
}

/// Rotates the gossip key (admin only): a new random key, sealed under the cluster secret in
/// the replicated state. Every node accepts it at once and seals with it two seconds later;
/// the key it replaces is still accepted until the next rotation.
#[utoipa::path(post, path = "/gossip-key/rotate", tag = "security",
    responses(
        (status = 200, description = "The new key's id", body = GossipKeyView),
        (status = 404, description = "The cluster runs with --insecure", body = ErrorBody),
        crate::openapi::WriteErrors))]
pub(crate) async fn rotate_gossip_key<B: Backend>(
    State(b): State<Arc<B>>,
) -> Result<Response, ApiError> {
    let key = b.new_gossip_key().ok_or_else(|| {
        ApiError::not_found("this node runs with --insecure: gossip is not encrypted")
    })?;
    let view = GossipKeyView {
        key_id: key.id,
        sealing_from: crate::view::rfc3339(key.since + orion_types::token::GOSSIP_KEY_SWITCH_MS),
    };
    match b
        .write(Command::RotateGossipKey {
            key,
            at: b.now_ms(),
        })
        .await?
    {
        CmdResponse::Ignored(m) => Err(ApiError::conflict(format!("{m}; try again"))),
        _ => Ok(Json(view).into_response()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RemoveQuery {
    /// `true`: remove the node even though gossip says it is alive.
    force: Option<bool>,
}

/// What `DELETE /nodes/{id}` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemovedNode {
    pub id: String,
    /// Its certificate is now refused by every node.
    pub revoked: bool,
}

/// Removes a node (admin only), as `docker node rm`: it leaves the membership, its tasks are
/// placed elsewhere, and its certificate is revoked. A node that gossip sees alive needs
/// `?force=true` (stop it first). The id cannot join again.
#[utoipa::path(delete, path = "/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "Node id"), RemoveQuery),
    responses(
        (status = 200, description = "The node is removed and its certificate revoked", body = RemovedNode),
        (status = 400, description = "A bad query string", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "The node is alive (pass ?force=true), or it is the node answering", body = ErrorBody),
        crate::openapi::WriteErrors))]
pub(crate) async fn remove_node<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    if b.status().id == id {
        return Err(ApiError::conflict(format!(
            "node {id} is the node answering this request: remove it through another node"
        )));
    }
    let listed = b.nodes().into_iter().find(|n| n.id == id);
    let known = listed.is_some() || b.read(|s| s.nodes.contains_key(&id));
    if !known {
        return Err(ApiError::not_found(format!("node {id} not found")));
    }
    if let Some(n) = &listed
        && (n.status == "alive" || n.status == "suspect")
        && !q.force.unwrap_or(false)
    {
        return Err(ApiError::conflict(format!(
            "node {id} is {}: stop it first, or pass ?force=true to remove it while it runs",
            n.status
        )));
    }
    let cmd = Command::RemoveNode {
        node: id.clone(),
        at: b.now_ms(),
    };
    match b.write(cmd).await? {
        CmdResponse::NotFound(m) => Err(ApiError::not_found(m)),
        _ => Ok(Json(RemovedNode { id, revoked: true }).into_response()),
    }
}
