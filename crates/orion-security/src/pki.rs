//! Node certificates: what the cluster CA signs, what a node keeps of its own
//! (`<data-dir>/node-cert.json`, 0600), and the join identity a holder of the join token
//! presents before it has a certificate.
//!
//! - A node certificate names its node id as the subject's common name, is valid for both
//!   ends of a TLS connection (server and client auth), and lives `ttl` (90 days by default,
//!   `--cert-ttl`). It is signed by the CA in the replicated state (its key sealed under the
//!   cluster secret), so any node can issue one: the member that admits a joiner, or a node
//!   renewing its own.
//! - The join identity is an Ed25519 key derived from the cluster secret, with a self-signed
//!   certificate. Presenting it in a TLS handshake proves knowledge of the secret without
//!   sending it; a member accepts it only on the join service, never on the RPC port.
//!
//! Pure: the time and the key material come in as arguments.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NODE_CERT_FILE: &str = "node-cert.json";

/// The HTTPS API's certificate and key (`--api-tls`), in the data dir beside the node's.
pub const API_CERT_FILE: &str = "api-cert.json";

/// Default lifetime of a node certificate, as Swarm's.
pub const DEFAULT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Shortest lifetime accepted (`--cert-ttl` refuses less; tests renew within seconds).
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// Certificates start this long before their issue time, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What a node keeps of its own identity.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCert {
    pub node_id: String,
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) of its private key.
    pub key_pem: String,
    /// PEM of the CA that signed it (sent with it in every handshake).
    pub ca_pem: String,
    /// `sha256:<hex>` of that CA.
    pub ca_fingerprint: String,
    /// Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
}

impl std::fmt::Debug for NodeCert {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("node_id", &self.node_id)
            .field("ca", &self.ca_fingerprint)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl NodeCert {
    pub fn load(dir: &Path) -> Result<Option<NodeCert>, PkiError> {
        Self::load_file(dir, NODE_CERT_FILE)
    }

    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        self.save_file(dir, NODE_CERT_FILE)
    }

    /// `file` in `dir` (`NODE_CERT_FILE`, `API_CERT_FILE`); `None` when it does not exist.
    pub fn load_file(dir: &Path, file: &str) -> Result<Option<NodeCert>, PkiError> {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| PkiError::Invalid(format!("{} is not valid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PkiError::Invalid(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes it to `file` in `dir`, mode 0600 (it holds the key).
    pub fn save_file(&self, dir: &Path, file: &str) -> Result<(), PkiError> {
        let path = dir.join(file);
        let bytes = serde_json::to_vec_pretty(self).expect("plain strings serialise");
        crate::material::write_private(&path, &bytes)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))
    }

    /// True once two thirds of its life have passed, or when it is not valid at `now`.
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        let now = unix_s(now);
        let life = self.not_after.saturating_sub(self.not_before);
        now >= self.not_before + life * 2 / 3 || now < self.not_before
    }

    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_der(&self.cert_pem)
    }

    pub fn ca_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_der(&self.ca_pem)
    }

    pub fn key_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_der(&self.key_pem)
    }
}

/// The DER inside one PEM block.
pub fn pem_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let b64: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    base64_decode(&b64).ok_or_else(|| PkiError::Invalid("not a PEM block".into()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in bytes {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// `sha256:<hex>`, as the join token and the state name a CA.
pub fn fingerprint_text(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(fingerprint(der)))
}

/// A new key pair for a node certificate (ECDSA P-256).
pub fn new_key() -> Result<rcgen::KeyPair, PkiError> {
    Ok(rcgen::KeyPair::generate()?)
}

/// The SubjectPublicKeyInfo (DER) of a key pair: what a joiner sends to be certified.
pub fn public_key_der(key: &rcgen::KeyPair) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(key)
}

/// Signs a certificate for `node_id` over the public key `spki_der` (X.509
/// SubjectPublicKeyInfo), with the CA of `ca_cert_pem`/`ca_key_pem`, valid from a little before
/// `now` for `ttl`.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_id: &str,
    spki_der: &[u8],
    ttl: Duration,
    now: SystemTime,
    serial: [u8; 16],
) -> Result<NodeCert, PkiError> {
    if node_id.is_empty() || node_id.len() > 64 {
        return Err(PkiError::Invalid(format!(
            "node id {node_id:?} is not valid"
        )));
    }
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, &ca_key)?;
    let public = rcgen::SubjectPublicKeyInfo::from_der(spki_der)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_id);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Orion node");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut serial = serial;
    serial[0] &= 0x7f; // a positive integer
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH);
    let not_after = now + ttl.max(MIN_TTL);
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    let cert = params.signed_by(&public, &issuer)?;
    let ca_der = pem_der(ca_cert_pem)?;
    Ok(NodeCert {
        node_id: node_id.to_string(),
        cert_pem: cert.pem(),
        key_pem: String::new(),
        ca_pem: ca_cert_pem.to_string(),
        ca_fingerprint: fingerprint_text(&ca_der),
        not_before: unix_s(not_before),
        not_after: unix_s(not_after),
    })
}

/// Issues a certificate for this node's own new key (a renewal, or the bootstrap's first).
pub fn issue_own(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_id: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<NodeCert, PkiError> {
    let key = new_key()?;
    let mut c = issue(
        ca_cert_pem,
        ca_key_pem,
        node_id,
        &public_key_der(&key),
        ttl,
        now,
        serial(),
    )?;
    c.key_pem = key.serialize_pem();
    Ok(c)
}

/// The `O=` of an API certificate (a node certificate says "Orion node").
pub const API_CERT_ORG: &str = "Orion API";

/// A certificate for this node's HTTPS API (`--api-tls`): a new key, signed by the cluster CA,
/// naming `node_id` and valid as a TLS server only (not a client: it cannot be used on the
/// RPC port) for `names` (IP addresses and DNS names, e.g. the bind and advertise addresses
/// and `localhost`), so `curl --cacert ca.pem` and the CLI check it like any HTTPS server.
pub fn issue_api(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_id: &str,
    names: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<NodeCert, PkiError> {
    if node_id.is_empty() || node_id.len() > 64 {
        return Err(PkiError::Invalid(format!(
            "node id {node_id:?} is not valid"
        )));
    }
    if names.is_empty() {
        return Err(PkiError::Invalid(
            "an API certificate needs at least one name".into(),
        ));
    }
    let key = new_key()?;
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, &ca_key)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| PkiError::Invalid(format!("API certificate names {names:?}: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_id);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, API_CERT_ORG);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let mut serial = serial();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH);
    let not_after = now + ttl.max(MIN_TTL);
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    let cert = params.signed_by(&key, &issuer)?;
    let ca_der = pem_der(ca_cert_pem)?;
    Ok(NodeCert {
        node_id: node_id.to_string(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert_pem.to_string(),
        ca_fingerprint: fingerprint_text(&ca_der),
        not_before: unix_s(not_before),
        not_after: unix_s(not_after),
    })
}

/// The subject alternative names of a certificate, as text (`127.0.0.1`, `localhost`).
pub fn names_of(cert_der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// 16 random bytes for a serial number.
pub fn serial() -> [u8; 16] {
    let r = crate::random_32();
    let mut s = [0u8; 16];
    s.copy_from_slice(&r[..16]);
    s
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_s(t) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The common name of a certificate's subject: the node id of a node certificate.
pub fn node_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn spki_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// The join identity of a cluster secret: a key only holders of the secret can derive, and a
/// self-signed certificate over it.
pub struct JoinIdentity {
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
    /// SubjectPublicKeyInfo: what members compare a joiner's certificate against.
    pub spki_der: Vec<u8>,
}

pub fn join_identity(secret: &[u8; 32]) -> Result<JoinIdentity, PkiError> {
    let seed = crate::keys::derive(secret, crate::keys::JOIN_IDENTITY_LABEL);
    // PKCS#8 v1 of an Ed25519 private key (RFC 8410): a fixed header and the 32-byte seed.
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.clone());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "orion join identity");
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key)?;
    Ok(JoinIdentity {
        cert_der: cert.der().to_vec(),
        key_der: pkcs8,
        spki_der: public_key_der(&key),
    })
}

/// A new CA (ECDSA P-256, self-signed): `(certificate PEM, key PEM)`.
pub fn new_ca() -> Result<(String, String), PkiError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Orion cluster CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_node_and_its_ca() {
        let (ca, key) = new_ca().expect("ca");
        let now = SystemTime::now();
        let c = issue_own(&ca, &key, "node-7", Duration::from_secs(3600), now).expect("issue");
        let der = c.cert_der().expect("der");
        assert_eq!(node_id_of(&der).as_deref(), Some("node-7"));
        assert_eq!(
            c.ca_fingerprint,
            fingerprint_text(&pem_der(&ca).expect("ca der"))
        );
        assert!(!c.due_for_renewal(now));
        assert!(c.due_for_renewal(now + Duration::from_secs(2500)));
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }

    #[test]
    fn the_join_identity_is_a_function_of_the_secret() {
        let a = join_identity(&[1; 32]).expect("a");
        let b = join_identity(&[1; 32]).expect("b");
        let c = join_identity(&[2; 32]).expect("c");
        assert_eq!(a.spki_der, b.spki_der);
        assert_ne!(a.spki_der, c.spki_der);
        assert_eq!(spki_of(&a.cert_der), Some(a.spki_der.clone()));
        assert_eq!(spki_of(&b.cert_der), Some(a.spki_der));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let (ca, key) = new_ca().expect("ca");
        let now = SystemTime::now();
        assert!(issue(&ca, &key, "n", b"not a key", DEFAULT_TTL, now, serial()).is_err());
        assert!(issue(&ca, "nonsense", "n", b"", DEFAULT_TTL, now, serial()).is_err());
        assert!(issue_own(&ca, &key, "", DEFAULT_TTL, now).is_err());
        assert_eq!(node_id_of(b"garbage"), None);
        assert_eq!(spki_of(&[0x30, 0x03, 0x02, 0x01]), None);
        assert!(pem_der("-----BEGIN X-----\n!!!!\n-----END X-----").is_err());
    }

    #[test]
    fn an_api_certificate_names_its_addresses_and_serves_only() {
        let (ca, key) = new_ca().expect("ca");
        let now = SystemTime::now();
        let names = vec![
            "127.0.220.5".to_string(),
            "localhost".to_string(),
            "::1".to_string(),
        ];
        let c =
            issue_api(&ca, &key, "node-7", &names, Duration::from_secs(3600), now).expect("issue");
        let der = c.cert_der().expect("der");
        assert_eq!(names_of(&der), names);
        assert_eq!(node_id_of(&der).as_deref(), Some("node-7"));
        assert!(c.key_pem.contains("PRIVATE KEY"));
        assert_eq!(
            c.ca_fingerprint,
            fingerprint_text(&pem_der(&ca).expect("ca"))
        );
        assert!(issue_api(&ca, &key, "n", &[], DEFAULT_TTL, now).is_err());
        assert!(issue_api(&ca, &key, "n", &["caf\u{e9}".into()], DEFAULT_TTL, now).is_err());
        assert!(issue_api(&ca, "nonsense", "n", &names, DEFAULT_TTL, now).is_err());
        assert!(names_of(b"garbage").is_empty());
    }
}
