//! What a node keeps about its cluster, in `<data-dir>/security.json` (mode 0600): the cluster
//! secret and the CA's fingerprint; on the bootstrapping node also the CA certificate and key
//! and the first admin token. `create` makes a new cluster's; `from_join_token` a joiner's.

use crate::join::JoinToken;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "security.json";

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSecrets {
    /// The cluster secret, hex.
    pub secret: String,
    /// SHA-256 of the CA certificate (DER), hex.
    pub ca_fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_pem: Option<String>,
    /// The admin token made at bootstrap (also in the credentials file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Its id (`GET /tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("cannot make the cluster CA: {0}")]
    Ca(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {msg}")]
    Corrupt { path: PathBuf, msg: String },
}

impl NodeSecrets {
    /// A new cluster: a fresh secret, a self-signed CA (ECDSA P-256) and an admin token.
    pub fn create() -> Result<NodeSecrets, MaterialError> {
        let (cert, key) = crate::pki::new_ca().map_err(|e| MaterialError::Corrupt {
            path: PathBuf::from("(new CA)"),
            msg: e.to_string(),
        })?;
        let der = crate::pki::pem_der(&cert).map_err(|e| MaterialError::Corrupt {
            path: PathBuf::from("(new CA)"),
            msg: e.to_string(),
        })?;
        let (id, token) = crate::tokens::new_token();
        Ok(NodeSecrets {
            secret: hex::encode(crate::random_32()),
            ca_fingerprint: hex::encode(Sha256::digest(&der)),
            ca_cert_pem: Some(cert),
            ca_key_pem: Some(key),
            admin_token: Some(token),
            admin_token_id: Some(id),
        })
    }

    /// What a joining node keeps of its join token.
    pub fn from_join_token(t: &JoinToken) -> NodeSecrets {
        NodeSecrets {
            secret: hex::encode(t.secret),
            ca_fingerprint: hex::encode(t.ca_fingerprint),
            ca_cert_pem: None,
            ca_key_pem: None,
            admin_token: None,
            admin_token_id: None,
        }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        // `load` and the constructors guarantee 64 hex digits.
        let v = hex::decode(&self.secret).unwrap_or_default();
        v.try_into().unwrap_or([0; 32])
    }

    pub fn join_token(&self) -> JoinToken {
        let fp = hex::decode(&self.ca_fingerprint).unwrap_or_default();
        JoinToken {
            ca_fingerprint: fp.try_into().unwrap_or([0; 32]),
            secret: self.secret_bytes(),
        }
    }

    /// Reads `<dir>/security.json`; `Ok(None)` if there is none.
    pub fn load(dir: &Path) -> Result<Option<NodeSecrets>, MaterialError> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(MaterialError::Io { path, source }),
        };
        let s: NodeSecrets =
            serde_json::from_slice(&bytes).map_err(|e| MaterialError::Corrupt {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        for (what, h) in [("secret", &s.secret), ("caFingerprint", &s.ca_fingerprint)] {
            if h.len() != 64 || hex::decode(h).is_err() {
                return Err(MaterialError::Corrupt {
                    path,
                    msg: format!("{what} is not 64 hex digits"),
                });
            }
        }
        Ok(Some(s))
    }

    /// Writes `<dir>/security.json`, mode 0600, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), MaterialError> {
        let path = dir.join(FILE_NAME);
        let bytes = serde_json::to_vec_pretty(self).expect("plain strings serialize");
        write_private(&path, &bytes).map_err(|source| MaterialError::Io { path, source })
    }
}

/// The CA's private key (PEM) sealed with ChaCha20-Poly1305 under a key derived from the
/// cluster secret: hex of `nonce (12) || ciphertext+tag`. What the replicated state keeps, so
/// every node with the secret can open it, and a copy of the state alone does not give it away.
pub fn seal_ca_key(secret: &[u8; 32], key_pem: &str) -> String {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let key = crate::keys::derive(secret, crate::keys::CA_KEY_SEAL_LABEL);
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
    let r = crate::random_32();
    let nonce = &r[..12];
    let sealed = cipher
        .encrypt(
            chacha20poly1305::Nonce::from_slice(nonce),
            key_pem.as_bytes(),
        )
        .expect("a PEM key is far below ChaCha20-Poly1305's length limit");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    hex::encode(out)
}

/// Opens what `seal_ca_key` sealed; `None` if the secret is not the one it was sealed under or
/// the text was altered.
pub fn open_ca_key(secret: &[u8; 32], sealed_hex: &str) -> Option<String> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let bytes = hex::decode(sealed_hex).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let key = crate::keys::derive(secret, crate::keys::CA_KEY_SEAL_LABEL);
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
    let plain = cipher
        .decrypt(
            chacha20poly1305::Nonce::from_slice(&bytes[..12]),
            &bytes[12..],
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

/// Writes `bytes` to `path` through a temporary file in the same folder (mode 0600 from the
/// start, fsynced, renamed over): a reader sees the old file or the new one, never a part.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_cluster_saves_privately_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(NodeSecrets::load(dir.path()).unwrap().is_none());
        let s = NodeSecrets::create().unwrap();
        s.save(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = NodeSecrets::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.secret, s.secret);
        assert_eq!(back.join_token(), s.join_token());
        assert!(back.ca_key_pem.unwrap().contains("PRIVATE KEY"));
        let joiner = NodeSecrets::from_join_token(&s.join_token());
        assert_eq!(joiner.secret_bytes(), s.secret_bytes());
        assert!(joiner.ca_key_pem.is_none());
    }

    #[test]
    fn the_ca_key_opens_only_under_the_cluster_secret() {
        let s = NodeSecrets::create().unwrap();
        let pem = s.ca_key_pem.clone().unwrap();
        let sealed = seal_ca_key(&s.secret_bytes(), &pem);
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            open_ca_key(&s.secret_bytes(), &sealed).as_deref(),
            Some(pem.as_str())
        );
        assert_eq!(open_ca_key(&[9; 32], &sealed), None);
        let mut altered = sealed.clone().into_bytes();
        altered[40] = if altered[40] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            open_ca_key(&s.secret_bytes(), &String::from_utf8(altered).unwrap()),
            None
        );
        assert_eq!(open_ca_key(&s.secret_bytes(), "zz"), None);
    }
}
