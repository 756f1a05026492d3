//! The join token: `ORNTKN-1-<CA fingerprint, 64 hex>-<cluster secret, 64 hex>`, after
//! Swarm's `SWMTKN-1-<CA digest>-<secret>`. The fingerprint is the SHA-256 of the CA
//! certificate (DER); the secret keys gossip (`keys`) and proves the holder may join.

use std::fmt;

const PREFIX: &str = "ORNTKN-1-";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: [u8; 32],
    pub secret: [u8; 32],
}

impl fmt::Debug for JoinToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken(ca sha256:{})",
            hex::encode(self.ca_fingerprint)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("a join token starts with {PREFIX} (print one with `orion join-token` on a member)")]
    Prefix,
    #[error("a join token has two parts of 64 hex digits after {PREFIX}")]
    Shape,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}{}-{}",
            hex::encode(self.ca_fingerprint),
            hex::encode(self.secret)
        )
    }

    pub fn parse(s: &str) -> Result<JoinToken, JoinTokenError> {
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(JoinTokenError::Prefix)?;
        let (fp, secret) = rest.split_once('-').ok_or(JoinTokenError::Shape)?;
        let decode = |h: &str| -> Result<[u8; 32], JoinTokenError> {
            let v = hex::decode(h).map_err(|_| JoinTokenError::Shape)?;
            v.try_into().map_err(|_| JoinTokenError::Shape)
        };
        Ok(JoinToken {
            ca_fingerprint: decode(fp)?,
            secret: decode(secret)?,
        })
    }

    /// `sha256:<hex>`, as printed for people.
    pub fn fingerprint_text(&self) -> String {
        format!("sha256:{}", hex::encode(self.ca_fingerprint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_bad_ones_are_named() {
        let t = JoinToken {
            ca_fingerprint: [1; 32],
            secret: [2; 32],
        };
        assert_eq!(JoinToken::parse(&t.encode()), Ok(t.clone()));
        assert!(!format!("{t:?}").contains(&hex::encode([2u8; 32])));
        assert_eq!(
            JoinToken::parse("SWMTKN-1-aa-bb"),
            Err(JoinTokenError::Prefix)
        );
        assert_eq!(
            JoinToken::parse("ORNTKN-1-aa-bb"),
            Err(JoinTokenError::Shape)
        );
        assert_eq!(JoinToken::parse("ORNTKN-1-"), Err(JoinTokenError::Shape));
        let long = format!("ORNTKN-1-{}-{}00", "11".repeat(32), "22".repeat(32));
        assert_eq!(JoinToken::parse(&long), Err(JoinTokenError::Shape));
    }
}
