//! The record of a workload, shared by the simulator and the fault suite: every operation a
//! client made, with its call and return times on one clock and its outcome.
//!
//! Outcomes: ok; failed (certainly without effect: connection refused, a 4xx); unknown (a
//! timeout, a reset, a 5xx on a write: it may have taken effect, now or later). Each create
//! carries a unique task name, the key of the checker's registers, so a create whose answer
//! was lost can still be matched to the task it made.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Create,
    Read,
    Delete,
    /// A consistent `GET /tasks`: one observation of every register at once.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// What a write's non-success status says about it (API.md): 503 is "surely not applied,
/// retry", so it counts as failed, and the checker calls it a violation if the write shows up
/// anyway; 504 and any other 5xx "may or may not have been applied"; 4xx was refused.
pub fn write_outcome(status: u16) -> Outcome {
    match status {
        503 => Outcome::Fail,
        s if s >= 500 => Outcome::Unknown,
        _ => Outcome::Fail,
    }
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub kind: OpKind,
    /// The task name (register key); empty for a list.
    pub name: String,
    pub node: usize,
    pub call_us: u64,
    pub return_us: u64,
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// The task state seen by a read or answered by a delete, "absent" for a 404 read; for a
    /// list, `name=state` pairs in `seen`.
    pub observed: Option<String>,
    pub seen: Vec<(String, String)>,
    /// Task id, when the answer gave one.
    pub id: Option<String>,
    pub error: Option<String>,
}
