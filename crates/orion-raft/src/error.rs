//! Typed errors of the consensus crate.
//!
//! `StoreError` is what the redb stores fail with; openraft gets it wrapped in its own
//! `StorageError`. `RaftError` is what starting, bootstrapping and membership changes return.
//! `WriteError` is what a proposal or a consistent read returns; the API maps
//! `WriteError::NoLeader` to 503.

use crate::types::RaftId;

/// A failure of the on-disk stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored state: {0}")]
    State(#[from] orion_state::StateError),
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

/// Errors of `RaftNode::write` and `RaftNode::consistent_read`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No leader could be found or reached within `leader_wait_ms`. Safe to retry.
    #[error("{0}")]
    NoLeader(String),
    /// The leader took the request but gave no answer in time: it may or may not commit.
    #[error("no answer from the leader within {0} ms; the write may or may not have been applied")]
    Timeout(u64),
    /// This node is shutting down.
    #[error("raft has shut down")]
    Shutdown,
    /// Anything else the leader or the transport reported.
    #[error("{0}")]
    Other(String),
}

/// The sentence the API shows while an election is under way.
pub const NO_LEADER_MESSAGE: &str = "no leader elected yet; retry";
