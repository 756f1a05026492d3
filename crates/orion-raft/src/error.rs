//! Typed errors of the consensus crate.
//!
//! `StoreError` is what the redb stores fail with; openraft gets it wrapped in its own
//! `StorageError`. `RaftError` is what starting, bootstrapping and membership changes return.
//! `WriteError` is what a proposal or a consistent read returns: one of three typed outcomes
//! (not proposed, unknown, rejected) that the API maps to 503, 504 and 400.

use crate::types::RaftId;

/// A failure of the on-disk stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The log's files hold something that cannot be what this code wrote.
    #[error("raft log damaged: {0}")]
    Corrupt(String),
    /// `state.redb` names a snapshot file that is not there, or cannot be read whole.
    #[error("snapshot damaged: {0}")]
    Snapshot(String),
    #[error("the store is closed")]
    Closed,
    /// A background write of the state machine failed earlier; the store takes no more.
    #[error("an earlier state write failed: {0}")]
    WriteFailed(String),
    #[error("storage task failed: {0}")]
    Join(String),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(redb::Error::from(e))
            }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Errors of starting the node and of membership changes.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cannot bind the raft port {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Membership changes are made by the leader only.
    #[error("this node is not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    #[error("node {0:?} is not a member")]
    UnknownNode(String),
    #[error("node id {new:?} hashes to the same raft id {raft_id} as member {existing:?}")]
    IdCollision {
        new: String,
        existing: String,
        raft_id: RaftId,
    },
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("raft has shut down")]
    Shutdown,
}

/// What became of a write (or a consistent read) that did not succeed: the three outcomes
/// a client must tell apart, since only the first may be retried blindly.
///
/// - `NotProposed`: surely never proposed (no leader to take it, this node shutting down, a
///   read that could not reach a quorum). Retrying is safe; the API answers 503.
/// - `Unknown`: the request left this node and its answer was lost (timeout, connection
///   dropped, bad status, undecodable reply, the leader shut down while holding it). It may or
///   may not have been applied; the API answers 504 and nothing here retries it.
/// - `Rejected`: the command is invalid and was refused before it was proposed; the API
///   answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    NotProposed(NotProposed),
    #[error("{0}; the write may or may not have been applied")]
    Unknown(Unknown),
    #[error("invalid command: {0}")]
    Rejected(orion_types::api::ValidationError),
}

impl WriteError {
    /// The HTTP status a client is answered with, the one place the rule lives: 503 when the
    /// write surely was not proposed (a retry is safe), 504 when it may or may not have been
    /// applied, 400 when it was refused as invalid.
    pub fn http_status(&self) -> u16 {
        match self {
            WriteError::NotProposed(_) => 503,
            WriteError::Unknown(_) => 504,
            WriteError::Rejected(_) => 400,
        }
    }

    /// What the client is told.
    pub fn client_message(&self) -> String {
        match self {
            WriteError::NotProposed(NotProposed::Shutdown) => {
                "this node is shutting down; ask another".to_string()
            }
            WriteError::Rejected(v) => v.to_string(),
            other => other.to_string(),
        }
    }
}

/// Why a write surely was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotProposed {
    /// No leader could be found or reached within `leader_wait_ms`.
    #[error("{}", NO_LEADER_MESSAGE)]
    NoLeader,
    /// This node is shutting down.
    #[error("raft has shut down")]
    Shutdown,
    /// A consistent read whose leader could not confirm its leadership with a quorum.
    #[error("no quorum: {0}")]
    NoQuorum(String),
}

/// Why the fate of a write is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    /// The leader took the request but gave no answer in time.
    #[error("no answer from the leader within {0} ms")]
    Timeout(u64),
    /// The request was sent and the answer was lost or garbled: the connection dropped, the
    /// leader answered a bad status, or its reply could not be decoded.
    #[error("the answer was lost: {0}")]
    AnswerLost(String),
    /// The leader shut down while it held the write.
    #[error("the leader shut down during the write")]
    LeaderShutdown,
    /// The leader reported an error of its own while committing.
    #[error("the leader failed: {0}")]
    Leader(String),
}

impl WriteError {
    /// Shorthand for the common no-leader failure.
    pub fn no_leader() -> WriteError {
        WriteError::NotProposed(NotProposed::NoLeader)
    }

    /// Whether the write surely was not proposed, so a retry cannot apply it twice.
    pub fn retry_is_safe(&self) -> bool {
        matches!(self, WriteError::NotProposed(_))
    }
}

/// The sentence the API shows while an election is under way.
pub const NO_LEADER_MESSAGE: &str = "no leader elected yet; retry";
