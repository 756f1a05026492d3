//! Orion's security material and the pure parts of its protocols: the cluster secret and CA
//! made at bootstrap (`material`), the join token that carries the CA's fingerprint and the
//! secret (`join`), API tokens and their hashes (`tokens`), keys derived from the secret
//! (`keys`), the sealing of gossip datagrams with ChaCha20-Poly1305 (`seal`), and the per-user
//! credentials file (`credentials`), node certificates and the join identity (`pki`), and
//! the TLS configurations and peer verification of the inter-node port (`tls`).
//!
//! Architecture invariant: no async and no network here. Time and randomness come in as
//! arguments where a decision depends on them (`seal::Opener::open` takes the time), so the
//! replay window is tested without a clock. Files are written 0600, atomically.

pub mod credentials;
pub mod join;
pub mod keys;
pub mod material;
pub mod pki;
pub mod seal;
pub mod tls;
pub mod tokens;

/// 32 bytes from the operating system's generator: key material, secrets, token bodies.
pub fn random_32() -> [u8; 32] {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the operating system's random source failed");
    b
}
