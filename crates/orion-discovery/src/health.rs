//! What a node announces by gossip about its own endpoints: the allocations whose health
//! check its executor currently finds failing. The announcement is bounded (at most
//! `UNHEALTHY_MAX` entries, `ANNOUNCE_BYTES_MAX` bytes), so per-node gossip data stays small
//! whatever the node runs: allocation ids travel as 64-bit FNV-1a hashes. Beyond the bound
//! the further failing endpoints still leave the view, through the health the executor
//! records in the log (one Raft write per transition, not per probe).
//!
//! Only failures are announced. A node's silence about an allocation means "no objection":
//! the replicated health then decides (see `view`).

use std::collections::BTreeSet;

/// Most failing allocations one announcement lists. 60 x 8 bytes keeps the announcement
/// under 500 bytes, so it rides in a gossip packet (1,400 bytes) beside two identities.
pub const UNHEALTHY_MAX: usize = 60;
/// Encoded size bound: a format byte, a count, the hashes.
pub const ANNOUNCE_BYTES_MAX: usize = 3 + 8 * UNHEALTHY_MAX;
/// Format of the announcement; bumped on an incompatible change.
const FORMAT: u8 = 1;

/// One node's latest announcement, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealth {
    unhealthy: BTreeSet<u64>,
}

/// The 64-bit FNV-1a hash of an allocation id (stable across builds and machines).
pub fn alloc_hash(alloc: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in alloc.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl NodeHealth {
    /// The announcement of these failing allocations (the first `UNHEALTHY_MAX` in order).
    pub fn of<S: AsRef<str>>(unhealthy: impl IntoIterator<Item = S>) -> NodeHealth {
        NodeHealth {
            unhealthy: unhealthy
                .into_iter()
                .map(|a| alloc_hash(a.as_ref()))
                .take(UNHEALTHY_MAX)
                .collect(),
        }
    }

    pub fn is_unhealthy(&self, alloc: &str) -> bool {
        self.unhealthy.contains(&alloc_hash(alloc))
    }

    pub fn len(&self) -> usize {
        self.unhealthy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.unhealthy.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = self.unhealthy.len().min(UNHEALTHY_MAX);
        let mut out = Vec::with_capacity(3 + 8 * n);
        out.push(FORMAT);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        for h in self.unhealthy.iter().take(n) {
            out.extend_from_slice(&h.to_be_bytes());
        }
        out
    }

    /// Decodes bytes a peer sent: anything malformed is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<NodeHealth, DecodeError> {
        let [format, a, b, rest @ ..] = data else {
            return Err(DecodeError::Truncated);
        };
        if *format != FORMAT {
            return Err(DecodeError::Format(*format));
        }
        let n = usize::from(u16::from_be_bytes([*a, *b]));
        if n > UNHEALTHY_MAX {
            return Err(DecodeError::TooMany(n));
        }
        if rest.len() != 8 * n {
            return Err(DecodeError::Truncated);
        }
        let unhealthy = rest
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_be_bytes(b)
            })
            .collect();
        Ok(NodeHealth { unhealthy })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("health announcement truncated or with trailing bytes")]
    Truncated,
    #[error("health announcement of unknown format {0}")]
    Format(u8),
    #[error("health announcement lists {0} entries, more than {UNHEALTHY_MAX}")]
    TooMany(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_stay_bounded() {
        let h = NodeHealth::of(["a1", "a2"]);
        assert!(h.is_unhealthy("a1") && !h.is_unhealthy("a3"));
        assert_eq!(NodeHealth::decode(&h.encode()), Ok(h.clone()));
        let many: Vec<String> = (0..500).map(|i| format!("alloc-{i}")).collect();
        let big = NodeHealth::of(&many);
        assert_eq!(big.len(), UNHEALTHY_MAX);
        assert!(big.encode().len() <= ANNOUNCE_BYTES_MAX);
        assert_eq!(NodeHealth::decode(&big.encode()), Ok(big));
    }

    #[test]
    fn malformed_announcements_are_errors() {
        let good = NodeHealth::of(["a1"]).encode();
        for cut in 0..good.len() {
            assert!(NodeHealth::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(NodeHealth::decode(&long), Err(DecodeError::Truncated));
        assert_eq!(NodeHealth::decode(&[9, 0, 0]), Err(DecodeError::Format(9)));
        assert_eq!(
            NodeHealth::decode(&[1, 0xff, 0xff]),
            Err(DecodeError::TooMany(65535))
        );
        assert_eq!(alloc_hash(""), 0xcbf2_9ce4_8422_2325);
    }
}
