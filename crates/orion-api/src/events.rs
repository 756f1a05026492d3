//! `GET /events`: the event history of API.md, streamed as newline-delimited JSON (or
//! `text/event-stream` when the client asks for it), from `?index=N` onwards, then live.
//!
//! The stream is pulled by the client: each chunk is read from the node's bounded `EventLog`
//! only when the connection takes it, so a slow reader holds no buffer here. A reader that falls
//! so far behind that its next event has left the history gets a last line saying where to
//! resume, and the stream ends.

use crate::{ApiError, Backend};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orion_events::{Event, EventLog, Gone, Topic};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Events per chunk written to the connection.
const CHUNK_EVENTS_MAX: usize = 256;
/// An idle SSE stream sends a comment this often so proxies keep it open and a gone client is
/// noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Start at this event index (the last one seen plus one); default: the oldest kept.
    index: Option<u64>,
    /// Only these topics, comma separated: task, service, deployment, node.
    topic: Option<String>,
    /// `false`: what is held now, then the end (default: then live).
    follow: Option<bool>,
    /// Stop after this many events.
    limit: Option<usize>,
    /// Start with the last N events held (instead of `index`).
    tail: Option<usize>,
}

fn parse_topics(s: Option<&str>) -> Result<Vec<Topic>, ApiError> {
    let mut topics = Vec::new();
    for t in s
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let topic = Topic::parse(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "topic: {t:?} is not one of task, service, deployment, node"
            ))
        })?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    Ok(topics)
}

fn gone(g: Gone, from: u64) -> Response {
    (
        StatusCode::GONE,
        axum::Json(serde_json::json!({
            "error": format!(
                "index {from} is older than the history this node keeps; the oldest kept is {}: resume from there (or from 0)",
                g.oldest
            ),
            "oldest": g.oldest,
        })),
    )
        .into_response()
}

struct Cursor {
    log: Arc<EventLog>,
    rx: tokio::sync::watch::Receiver<u64>,
    next: u64,
    topics: Vec<Topic>,
    follow: bool,
    sse: bool,
    left: usize,
    done: bool,
}

fn encode(events: &[Event], sse: bool) -> Bytes {
    let mut out = Vec::with_capacity(events.len() * 256);
    for e in events {
        let json = serde_json::to_string(e).unwrap_or_default();
        if sse {
            out.extend_from_slice(
                format!(
                    "id: {}\nevent: {}\ndata: {json}\n\n",
                    e.index,
                    e.topic.as_str()
                )
                .as_bytes(),
            );
        } else {
            out.extend_from_slice(json.as_bytes());
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

async fn next_chunk(mut c: Cursor) -> Option<(Result<Bytes, std::io::Error>, Cursor)> {
    if c.done || c.left == 0 {
        return None;
    }
    loop {
        match c.log.since(c.next, &c.topics, CHUNK_EVENTS_MAX.min(c.left)) {
            Ok(batch) if !batch.is_empty() => {
                c.next = batch.last().map_or(c.next, |e| e.index + 1);
                c.left -= batch.len();
                let bytes = encode(&batch, c.sse);
                return Some((Ok(bytes), c));
            }
            Ok(_) if !c.follow => return None,
            Ok(_) => {
                // Nothing new for this reader (or only other topics): skip what it has seen.
                c.next = c.next.max(c.log.next_index());
                match tokio::time::timeout(KEEPALIVE, c.rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) if c.sse => {
                        return Some((Ok(Bytes::from_static(b": keepalive\n\n")), c));
                    }
                    Err(_) => continue,
                }
            }
            Err(g) => {
                c.done = true;
                let line = serde_json::json!({
                    "error": format!("this stream fell behind the history this node keeps; resume from index {}", g.oldest),
                    "oldest": g.oldest,
                })
                .to_string();
                let bytes = if c.sse {
                    format!("event: error\ndata: {line}\n\n")
                } else {
                    format!("{line}\n")
                };
                return Some((Ok(Bytes::from(bytes)), c));
            }
        }
    }
}

/// One thing that happened, as `GET /events` streams it (documentation of `Event`, which
/// lives in orion-events; a test checks both name the same fields).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct EventDoc {
    /// Grows in Raft order and is the same on every node; resume from the last seen plus one.
    pub index: u64,
    /// RFC 3339.
    pub at: String,
    /// task, service, deployment or node.
    pub topic: String,
    /// What happened, e.g. `placed`, `running`, `scaled`, `dead`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id of the task, service, deployment or node.
    pub key: String,
    /// Details of the change.
    pub payload: serde_json::Value,
}

/// The event history from an index, then live (`follow`, the default). Newline-delimited
/// JSON events, or Server-Sent Events with `Accept: text/event-stream`.
#[utoipa::path(get, path = "/events", tag = "events", params(EventsQuery),
    responses(
        (status = 200, description = "One JSON event per line (or SSE). A stream that falls behind the kept history ends with a line `{\"error\": ..., \"oldest\": N}`.",
            content((EventDoc = "application/x-ndjson"), (String = "text/event-stream"))),
        (status = 400, description = "A bad query (e.g. an unknown topic)", body = crate::ErrorBody),
        (status = 410, description = "The index is older than the history this node keeps", body = crate::openapi::GoneBody),
        (status = 503, description = "This node keeps no event history", body = crate::ErrorBody)))]
pub(crate) async fn events<B: Backend>(
    State(b): State<Arc<B>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let topics = parse_topics(q.topic.as_deref())?;
    let log = b
        .events()
        .ok_or_else(|| ApiError::unavailable("this node keeps no event history"))?;
    // No index: from the oldest event this node holds. An explicit index older than that
    // answers 410, so a client that resumes knows it missed something.
    let from = match (q.index, q.tail) {
        (_, Some(n)) => log.tail_start(n, &topics),
        (Some(i), None) => i,
        (None, None) => log.oldest(),
    };
    if let Err(g) = log.since(from, &topics, 0) {
        return Ok(gone(g, from));
    }
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let cursor = Cursor {
        rx: log.subscribe(),
        log,
        next: from,
        topics,
        follow: q.follow.unwrap_or(true),
        sse,
        left: q.limit.unwrap_or(usize::MAX),
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(cursor, next_chunk));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
