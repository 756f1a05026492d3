//! API tokens as the replicated state keeps them: an id, a human name, a role, and the
//! SHA-256 of the secret (never the secret itself). The hashing lives in `orion-security`;
//! this module only names the record and the roles, so `Command` can carry them.

use crate::UnixMillis;
use serde::{Deserialize, Serialize};

/// What a token may do (API.md "Security").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including tokens and the cluster configuration.
    Admin,
    /// Tasks, services, stacks and drain; not tokens nor the cluster configuration.
    Operator,
    /// `GET` only.
    ReadOnly,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::ReadOnly => "read-only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One API token as stored: `hash` is the lowercase hex SHA-256 of the whole secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub hash: String,
    pub created_at: UnixMillis,
}

/// Longest token name, in bytes: a label for people, not a document.
pub const TOKEN_NAME_BYTES_MAX: usize = 128;

/// Most tokens a cluster keeps: every request scans them (by hash), and a person manages them.
pub const TOKENS_MAX: usize = 1024;

/// The cluster CA as the replicated state keeps it: the certificate (PEM) and its private key
/// sealed (ChaCha20-Poly1305, hex) under a key derived from the cluster secret, so every node
/// that holds the secret can issue node certificates, and the state at rest (disk, snapshots)
/// does not give the key away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub sealed_key: String,
    /// `sha256:<hex>` of the certificate (DER).
    pub fingerprint: String,
}

/// A gossip key made by a rotation (`POST /gossip-key/rotate`): its id (the byte sealed
/// datagrams carry), the key sealed like the CA's, and when it was made. Nodes accept it at
/// once and seal with it from `since + GOSSIP_KEY_SWITCH_MS`, when every node has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeyRecord {
    pub id: u8,
    pub sealed_key: String,
    pub since: crate::UnixMillis,
}

/// How long after a gossip key rotation nodes start sealing with the new key.
pub const GOSSIP_KEY_SWITCH_MS: u64 = 2_000;

/// Largest CA record: a PEM certificate and a sealed key are a few KiB.
pub const CLUSTER_CA_BYTES_MAX: usize = 16 * 1024;
