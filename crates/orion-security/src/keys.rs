//! Keys derived from the cluster secret with HKDF-SHA256, one label per use, so no key serves
//! two purposes and knowing one derived key reveals neither the secret nor another key.

use hkdf::Hkdf;
use sha2::Sha256;

/// The gossip AEAD key (`seal`).
pub const GOSSIP_KEY_LABEL: &str = "orion gossip key v1";
/// The key that seals the CA's private key in the replicated state (`material::seal_ca_key`).
pub const CA_KEY_SEAL_LABEL: &str = "orion ca key seal v1";
/// The bearer token nodes present to each other's API (the logs proxy): read-only.
pub const NODE_API_TOKEN_LABEL: &str = "orion node api token v1";
/// The join identity: the key a joiner proves knowledge of the secret with (`pki::join_identity`).
pub const JOIN_IDENTITY_LABEL: &str = "orion join identity v1";

/// A 32-byte key for `label` from the cluster `secret`.
pub fn derive(secret: &[u8; 32], label: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"orion cluster secret"), secret);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: this cannot fail.
    hk.expand(label.as_bytes(), &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The token a node sends to another node's API (read-only: the logs proxy reads).
pub fn node_api_token(secret: &[u8; 32]) -> String {
    format!(
        "orion-node.{}",
        hex::encode(derive(secret, NODE_API_TOKEN_LABEL))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_different_keys_and_the_same_input_the_same_key() {
        let s = [7u8; 32];
        assert_eq!(derive(&s, GOSSIP_KEY_LABEL), derive(&s, GOSSIP_KEY_LABEL));
        assert_ne!(
            derive(&s, GOSSIP_KEY_LABEL),
            derive(&s, NODE_API_TOKEN_LABEL)
        );
        assert_ne!(
            derive(&s, GOSSIP_KEY_LABEL),
            derive(&[8u8; 32], GOSSIP_KEY_LABEL)
        );
    }
}
