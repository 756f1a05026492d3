//! API token secrets: `orion_<id>_<64 hex>`. The id is public (it names the token in
//! `GET /tokens` and `DELETE /tokens/{id}`); the state keeps only the SHA-256 of the whole
//! secret. The secret has 256 random bits, so a plain hash is enough: no password stretching
//! is needed against a guess.

use sha2::{Digest, Sha256};

/// Bytes of a token id (hex doubles them): 64 bits, unique among at most a thousand tokens.
const ID_BYTES: usize = 8;

/// A new token: its id and its secret (shown once).
pub fn new_token() -> (String, String) {
    let r = crate::random_32();
    let id = hex::encode(&r[..ID_BYTES]);
    let secret = format!("orion_{id}_{}", hex::encode(crate::random_32()));
    (id, secret)
}

/// Lowercase hex SHA-256 of a presented token: what the state stores and compares.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_id_and_hashes_to_64_hex_digits() {
        let (id, secret) = new_token();
        assert!(secret.starts_with(&format!("orion_{id}_")));
        assert_eq!(hash(&secret).len(), 64);
        assert_ne!(new_token().1, secret);
        assert_ne!(hash(&secret), hash(&format!("{secret}x")));
    }
}
