//! The server half of the inter-node RPC: an axum router on the raft port.
//!
//! Five POST routes with JSON bodies (`network::paths`): the three Raft RPCs, handed to
//! openraft as they are; `forward`, a client write validated like an API request
//! (`Command::validate`) and executed by this node if it leads; and
//! `read-index`, the leader's linearizable read index. Bodies over `RPC_BODY_BYTES_MAX` get
//! 413, bodies that are not the expected JSON get 400, and an append-entries
//! request whose entries do not follow `prev_log_id` one by one, or a snapshot chunk beyond
//! `SNAPSHOT_BYTES_MAX`, or a term or index above `TERM_OR_INDEX_MAX`, gets 400 before it can reach openraft's internal assertions or
//! allocations. Nothing a peer sends can panic this node.
//!
//! The routes are thin: each decodes its JSON and calls a plain async fn (`on_append`, ...),
//! which `RpcHandler::handle` also calls for a transport that delivers bytes itself (the
//! simulator), so both paths run the same checks and the same openraft calls.
//!
//! Every accepted append-entries or snapshot chunk stamps `LeaderContact`, which the status
//! and the no-leader watchdog read.

use crate::network::{ForwardError, RPC_BODY_BYTES_MAX, ReadIndexRequest, paths};
use crate::types::{RaftId, TypeConfig};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::{LogId, Raft, Vote};
use orion_types::{Command, Response};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// When this node last heard from a leader it accepted.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Instant>>,
}

impl LeaderContact {
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Largest snapshot this node accepts: 1 GiB, well above the JSON of any state Orion targets
/// (10^5 tasks at a few KiB each is a few hundred MiB).
pub const SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct ServerState {
    pub raft: Raft<TypeConfig>,
    pub contact: Arc<LeaderContact>,
    /// Bound on a forwarded write's commit and on a read-index call.
    pub rpc_timeout: Duration,
    /// Where forwarded writes are queued to be batched.
    pub proposer: crate::proposer::Proposer,
}

pub(crate) fn router(state: ServerState) -> Router {
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::FORWARD, post(forward))
        .route(paths::READ_INDEX, post(read_index))
        .layer(DefaultBodyLimit::max(RPC_BODY_BYTES_MAX))
        .with_state(state)
}

fn bad_request(msg: String) -> HttpResponse {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

/// Terms and log indexes above this are refused: openraft adds one to them unchecked, and
/// 2^48 is a new term every millisecond, or a million entries a second, for 8,900 years.
pub const TERM_OR_INDEX_MAX: u64 = 1 << 48;

fn check_vote(vote: &Vote<RaftId>) -> Result<(), String> {
    if vote.leader_id.term > TERM_OR_INDEX_MAX {
        return Err(format!("term {} is out of range", vote.leader_id.term));
    }
    Ok(())
}

fn check_log_id(what: &str, log_id: Option<&LogId<RaftId>>) -> Result<(), String> {
    match log_id {
        Some(l) if l.index > TERM_OR_INDEX_MAX || l.leader_id.term > TERM_OR_INDEX_MAX => {
            Err(format!("{what} {l} is out of range"))
        }
        _ => Ok(()),
    }
}

/// Entries must be consecutive and follow `prev_log_id`; openraft asserts this internally.
fn check_append(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    check_vote(&req.vote)?;
    check_log_id("prev_log_id", req.prev_log_id.as_ref())?;
    check_log_id("leader_commit", req.leader_commit.as_ref())?;
    let first = match req.prev_log_id {
        None => 0,
        Some(l) => l
            .index
            .checked_add(1)
            .ok_or("prev_log_id index overflows")?,
    };
    for (i, entry) in req.entries.iter().enumerate() {
        let expect = first.checked_add(i as u64).ok_or("entry index overflows")?;
        check_log_id("entry", Some(&entry.log_id))?;
        if entry.log_id.index != expect {
            return Err(format!(
                "entry index {} where {expect} was expected",
                entry.log_id.index
            ));
        }
    }
    Ok(())
}

/// What a route answers: the JSON reply, or a 400 with the reason.
type Handled = Result<Vec<u8>, String>;

fn reply<T: serde::Serialize>(value: &T) -> Handled {
    serde_json::to_vec(value).map_err(|e| format!("cannot encode the reply: {e}"))
}

/// Append entries, checked, then handed to openraft; stamps `LeaderContact` when accepted.
pub(crate) async fn on_append(s: &ServerState, req: AppendEntriesRequest<TypeConfig>) -> Handled {
    if let Err(msg) = check_append(&req) {
        tracing::warn!(%msg, "refused a malformed append-entries request");
        return Err(msg);
    }
    let res = s.raft.append_entries(req).await;
    if let Ok(resp) = &res
        && !matches!(resp, AppendEntriesResponse::HigherVote(_))
    {
        s.contact.touch();
    }
    reply(&res)
}

pub(crate) async fn on_vote(s: &ServerState, req: VoteRequest<RaftId>) -> Handled {
    if let Err(msg) =
        check_vote(&req.vote).and(check_log_id("last_log_id", req.last_log_id.as_ref()))
    {
        tracing::warn!(%msg, "refused a malformed vote request");
        return Err(msg);
    }
    reply(&s.raft.vote(req).await)
}

pub(crate) async fn on_snapshot(
    s: &ServerState,
    req: InstallSnapshotRequest<TypeConfig>,
) -> Handled {
    // openraft seeks its in-memory buffer to `offset` and writes there: an absurd offset
    // would allocate that much. Refuse chunks beyond any snapshot this node would accept.
    let meta_ok = check_vote(&req.vote)
        .and(check_log_id("last_log_id", req.meta.last_log_id.as_ref()))
        .and(check_log_id(
            "membership log id",
            req.meta.last_membership.log_id().as_ref(),
        ));
    if let Err(msg) = meta_ok {
        tracing::warn!(%msg, "refused a malformed snapshot chunk");
        return Err(msg);
    }
    let end = req.offset.saturating_add(req.data.len() as u64);
    if end > SNAPSHOT_BYTES_MAX {
        return Err(format!(
            "snapshot chunk ends at byte {end}, beyond the {SNAPSHOT_BYTES_MAX}-byte limit"
        ));
    }
    let res = s.raft.install_snapshot(req).await;
    if res.is_ok() {
        s.contact.touch();
    }
    reply(&res)
}

/// A peer's write. The peer is not trusted to have validated it: the command is checked by
/// the same rules as the API's (`Command::validate`) and refused, unproposed, if invalid.
pub(crate) async fn on_forward(s: &ServerState, cmd: Command) -> Handled {
    if let Err(e) = cmd.validate() {
        tracing::warn!(kind = cmd.kind(), error = %e, "refused an invalid forwarded command");
        let refused: Result<Response, ForwardError> = Err(ForwardError::Invalid {
            field: e.field,
            message: e.message,
        });
        return reply(&refused);
    }
    reply(&s.proposer.write(cmd, s.rpc_timeout).await)
}

pub(crate) async fn on_read_index(s: &ServerState, _req: ReadIndexRequest) -> Handled {
    reply(&local_read_index(&s.raft, s.rpc_timeout).await)
}

fn respond(res: Handled) -> HttpResponse {
    match res {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(msg) => bad_request(msg),
    }
}

/// Serves one route: its JSON body decoded by serde_json directly (axum's `Json` decodes
/// through serde_path_to_error, which cost a follower a tenth of its CPU on appends of many
/// entries), then `handle`. As `Json` did: a body not declared `application/json` is a 415,
/// one that is not the route's JSON a 400 with serde's message.
async fn serve<T, F, Fut>(headers: &HeaderMap, body: &[u8], handle: F) -> HttpResponse
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Handled>,
{
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(serde_json::json!({ "error": "expected Content-Type: application/json" })),
        )
            .into_response();
    }
    match serde_json::from_slice(body) {
        Ok(req) => respond(handle(req).await),
        Err(e) => bad_request(format!("invalid request body: {e}")),
    }
}

async fn append(State(s): State<ServerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    serve(&headers, &body, |req| on_append(&s, req)).await
}

async fn vote(State(s): State<ServerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    serve(&headers, &body, |req| on_vote(&s, req)).await
}

async fn snapshot(State(s): State<ServerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    serve(&headers, &body, |req| on_snapshot(&s, req)).await
}

async fn forward(State(s): State<ServerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    serve(&headers, &body, |cmd| on_forward(&s, cmd)).await
}

async fn read_index(State(s): State<ServerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    serve(&headers, &body, |req| on_read_index(&s, req)).await
}

/// The server half without a socket: what the routes do, for a transport that delivers
/// bytes itself (the simulator). Cheap to clone.
#[derive(Clone)]
pub struct RpcHandler(pub(crate) ServerState);

/// Why `RpcHandler::handle` gave no JSON reply: the HTTP status and body a route would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub status: u16,
    pub body: String,
}

impl RpcHandler {
    /// Handles one request to `path` with JSON `body`, exactly as the route would: a body
    /// that is not the route's JSON gets 400, an unknown path 404.
    pub async fn handle(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, Rejected> {
        fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejected> {
            serde_json::from_slice(body).map_err(|e| Rejected {
                status: 400,
                body: e.to_string(),
            })
        }
        if body.len() > RPC_BODY_BYTES_MAX {
            return Err(Rejected {
                status: 413,
                body: "request body over the limit".to_string(),
            });
        }
        let s = &self.0;
        let res = match path {
            paths::APPEND => on_append(s, decode(body)?).await,
            paths::VOTE => on_vote(s, decode(body)?).await,
            paths::SNAPSHOT => on_snapshot(s, decode(body)?).await,
            paths::FORWARD => on_forward(s, decode(body)?).await,
            paths::READ_INDEX => on_read_index(s, decode(body)?).await,
            other => {
                return Err(Rejected {
                    status: 404,
                    body: format!("no route {other}"),
                });
            }
        };
        res.map_err(|msg| Rejected {
            status: 400,
            body: serde_json::json!({ "error": msg }).to_string(),
        })
    }
}

/// This node's linearizable read index, if it leads: confirms leadership with a quorum and
/// waits until its own state machine has applied up to that index.
pub(crate) async fn local_read_index(
    raft: &Raft<TypeConfig>,
    timeout: Duration,
) -> Result<u64, ForwardError> {
    match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
        Err(_) => Err(ForwardError::Timeout {
            ms: timeout.as_millis() as u64,
        }),
        Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
            Err(ForwardError::Other(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(_))) => Err(ForwardError::Shutdown),
    }
}
