//! The openraft type configuration for Orion: what a log entry carries (a `Command`, shared:
//! the log's in-memory tail, replication to each follower and the apply all hand an entry on
//! by cloning it, and a clone is then a count, not a copy of the task spec; serde writes an
//! `Arc` as what it holds, so the bytes on disk and on the wire are unchanged), what
//! applying it returns (`Response`), how a node is named inside Raft (`u64`, a stable hash of
//! the operator's string id) and what Raft remembers about each member (`Peer`: its addresses).
//!
//! Everything else in the crate is generic over nothing: it names `TypeConfig` directly.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Cursor;

/// Raft's numeric id of a node.
pub type RaftId = u64;

openraft::declare_raft_types!(
    /// Orion's Raft types.
    pub TypeConfig:
        D = std::sync::Arc<orion_types::Command>,
        R = orion_types::Response,
        NodeId = RaftId,
        Node = Peer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What the membership config records about a member: its string id and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The operator's `--id`.
    pub node_id: String,
    /// `ip:port` of the inter-node RPC (Raft and forwarding).
    pub raft_addr: String,
    /// `ip:port` of the HTTP API, so followers can tell clients where the leader answers.
    pub api_addr: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.raft_addr)
    }
}

/// The stable Raft id of a string node id: 64-bit FNV-1a.
///
/// FNV-1a because it is fixed by specification (offset basis and prime below), so the same
/// string gives the same id on every build, platform and release; std's hashers promise none of
/// that. A collision between two operator-chosen ids is possible in principle (birthday bound at
/// 2^32 names) and is refused when a learner is added (`RaftError::IdCollision`).
pub fn raft_id(node_id: &str) -> RaftId {
    // FNV-1a 64-bit parameters, from the FNV specification (draft-eastlake-fnv).
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for byte in node_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_id_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(raft_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raft_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raft_id("foobar"), 0x8594_4171_f739_67e8);
        assert_ne!(raft_id("node1"), raft_id("node2"));
    }
}
