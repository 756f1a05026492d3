//! TLS between nodes (rustls, TLS 1.3 only, ring): who is trusted, and the client and server
//! configurations of the RPC port and of the join service.
//!
//! Trust is a set of CA fingerprints, not a fixed root store: a joiner knows only the
//! fingerprint its join token pins, and a cluster whose CA rotates trusts the old and the new
//! CA at once. Every node sends its CA certificate after its own in each handshake, so the
//! verifier takes the CA from the chain, checks its fingerprint against the set, then checks
//! the node certificate against it with webpki (signature, validity, key usage). Host names
//! are not checked: a node certificate names a node id, and any trusted node may answer at
//! an address. A node id on the revocation list (`revoked`) is refused.
//!
//! `Trust` is swapped whole when the replicated state changes (`TrustStore::set`); the
//! node's own certificate is swapped the same way (`CertSlot::set`), so a rotation never
//! restarts a listener. New handshakes see the change at once; the RPC server also re-checks
//! its open connections (`TrustStore::still_trusted`).

use crate::pki;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// The ring provider: no C build (aws-lc) in the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node trusts right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// SHA-256 of each trusted CA certificate.
    pub ca_fingerprints: BTreeSet<[u8; 32]>,
    /// CA certificates known locally (DER); a peer's chain supplies the CA otherwise.
    pub cas: Vec<Vec<u8>>,
    /// Node ids whose certificates are refused (removed nodes).
    pub revoked: BTreeSet<String>,
    /// SubjectPublicKeyInfo of the join identity, accepted only where joins are served.
    pub join_spki: Option<Vec<u8>>,
}

/// The trust a node's verifiers read; the agent replaces it when the state changes.
#[derive(Debug, Default)]
pub struct TrustStore {
    trust: RwLock<Arc<Trust>>,
}

impl TrustStore {
    pub fn new(t: Trust) -> Arc<TrustStore> {
        Arc::new(TrustStore {
            trust: RwLock::new(Arc::new(t)),
        })
    }

    pub fn get(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the trust; answers whether it changed.
    pub fn set(&self, t: Trust) -> bool {
        let mut g = self.trust.write().unwrap_or_else(|p| p.into_inner());
        if **g == t {
            return false;
        }
        *g = Arc::new(t);
        true
    }

    /// Whether a peer whose chain is `chain` (its own certificate first) would still be
    /// accepted as a node (the RPC server drops connections that would not).
    pub fn still_trusted(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((ee, rest)) = chain.split_first() else {
            return false;
        };
        let algs = provider().signature_verification_algorithms;
        check_node(
            &self.get(),
            &algs,
            ee,
            rest,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .is_ok()
    }
}

/// Why a peer was refused, in words for the log (rustls carries it as `Error::General`).
fn refuse(msg: String) -> rustls::Error {
    rustls::Error::General(msg)
}

/// Checks that `ee` is a node certificate of a trusted CA and not revoked; answers its node id.
fn check_node(
    trust: &Trust,
    algs: &WebPkiSupportedAlgorithms,
    ee: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<String, rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(ee)
        .map_err(|e| refuse(format!("the peer's certificate does not parse: {e}")))?;
    let mut seen = Vec::new();
    let candidates = trust
        .cas
        .iter()
        .map(|d| d.as_slice())
        .chain(intermediates.iter().map(|c| c.as_ref()));
    let mut last_err = None;
    for ca in candidates {
        let fp = pki::fingerprint(ca);
        if !trust.ca_fingerprints.contains(&fp) {
            seen.push(fp);
            continue;
        }
        let ca_der = CertificateDer::from(ca);
        let anchor = match webpki::anchor_from_trusted_cert(&ca_der) {
            Ok(a) => a,
            Err(e) => {
                last_err = Some(format!("the trusted CA does not parse: {e}"));
                continue;
            }
        };
        match cert.verify_for_usage(algs.all, &[anchor], &[], now, usage, None, None) {
            Ok(_) => {
                let id = pki::node_id_of(ee.as_ref())
                    .ok_or_else(|| refuse("the peer's certificate names no node".into()))?;
                if trust.revoked.contains(&id) {
                    return Err(refuse(format!(
                        "the certificate of node {id} is revoked (the node was removed)"
                    )));
                }
                return Ok(id);
            }
            Err(e) => last_err = Some(format!("the peer's certificate is not valid: {e:?}")),
        }
    }
    Err(refuse(last_err.unwrap_or_else(|| {
        let want: Vec<String> = trust
            .ca_fingerprints
            .iter()
            .map(|f| format!("sha256:{}", hex::encode(f)))
            .collect();
        let got: Vec<String> = seen
            .iter()
            .map(|f| format!("sha256:{}", hex::encode(f)))
            .collect();
        if got.is_empty() {
            format!(
                "the peer sent no CA certificate and none is trusted locally (trusted: {})",
                want.join(", ")
            )
        } else {
            format!(
                "the peer's CA is {}, but this node trusts {} (a join token of another cluster?)",
                got.join(", "),
                want.join(", ")
            )
        }
    })))
}

/// Verifies peers, as a TLS client (the server's certificate) and as a TLS server (the
/// client's). `joiners`: a client may also present the join identity (the join service).
#[derive(Debug)]
pub struct PeerVerifier {
    store: Arc<TrustStore>,
    algs: WebPkiSupportedAlgorithms,
    joiners: bool,
}

impl PeerVerifier {
    pub fn new(store: Arc<TrustStore>, joiners: bool) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier {
            store,
            algs: provider().signature_verification_algorithms,
            joiners,
        })
    }
}

/// The three signature methods of rustls's verifier traits, which every verifier here
/// delegates alike to its `algs` (rustls's server and client verifier traits both ask them).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_node(
            &self.store.get(),
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )
        .map(|_| ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.store.get();
        if self.joiners
            && let Some(join) = &trust.join_spki
            && pki::spki_of(end_entity.as_ref()).as_ref() == Some(join)
        {
            // The handshake's signature, checked by rustls with this certificate's key,
            // proves the client holds the key derived from the cluster secret.
            return Ok(ClientCertVerified::assertion());
        }
        check_node(
            &trust,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )
        .map(|_| ClientCertVerified::assertion())
        .map_err(|e| match e {
            rustls::Error::General(m) if self.joiners => refuse(format!(
                "{m}; nor is it the join identity of this cluster's join token (wrong join token?)"
            )),
            e => e,
        })
    }

    signature_checks!();
}

/// The certificate a node presents, swappable while listeners run.
#[derive(Debug, Default)]
pub struct CertSlot {
    key: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertSlot {
    pub fn new() -> Arc<CertSlot> {
        Arc::new(CertSlot::default())
    }

    /// Presents `chain` (its own certificate, then its CA) with the PKCS#8 `key_der`.
    pub fn set(&self, chain: Vec<Vec<u8>>, key_der: Vec<u8>) -> Result<(), rustls::Error> {
        let key = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key_der.into()))?;
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        *self.key.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, key)));
        Ok(())
    }

    /// Presents a node certificate.
    pub fn set_node(&self, c: &pki::NodeCert) -> Result<(), String> {
        let (cert, ca, key) = (
            c.cert_der().map_err(|e| e.to_string())?,
            c.ca_der().map_err(|e| e.to_string())?,
            c.key_der().map_err(|e| e.to_string())?,
        );
        self.set(vec![cert, ca], key).map_err(|e| e.to_string())
    }

    pub fn is_set(&self) -> bool {
        self.key.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS 1.3 server that requires a client certificate its verifier accepts.
pub fn server_config(
    slot: Arc<CertSlot>,
    verifier: Arc<PeerVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot))
}

/// A TLS 1.3 client that presents `slot`'s certificate and verifies the server as a node.
pub fn client_config(
    slot: Arc<CertSlot>,
    verifier: Arc<PeerVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(slot))
}

/// The name every node presents in SNI: certificates are checked by CA and node id, not name.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("orion-node").expect("a valid DNS name")
}

/// How the CLI checks an HTTPS API (`--api-tls`): the server's certificate must be signed by
/// a CA it trusts and name the address it dialled. It trusts a CA found by its fingerprint
/// in the server's own chain (`pins`: from `--ca-fingerprint`, or the credentials file, as
/// `docker swarm join` pins the CA digest), or a CA it was given as a file (`cas`,
/// `--ca-cert`).
/// A node that reads another node's HTTPS API (the logs proxy) trusts its cluster's CAs
/// (`cluster`, read at each handshake, so a rotation needs no rebuild).
#[derive(Debug)]
pub struct ApiVerifier {
    pins: BTreeSet<[u8; 32]>,
    cas: Vec<Vec<u8>>,
    cluster: Option<Arc<TrustStore>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ApiVerifier {
    pub fn new(pins: BTreeSet<[u8; 32]>, cas: Vec<Vec<u8>>) -> Arc<ApiVerifier> {
        Arc::new(ApiVerifier {
            pins,
            cas,
            cluster: None,
            algs: provider().signature_verification_algorithms,
        })
    }

    /// Trusts the CAs a node trusts now (its `TrustStore`).
    pub fn of_cluster(store: Arc<TrustStore>) -> Arc<ApiVerifier> {
        Arc::new(ApiVerifier {
            pins: BTreeSet::new(),
            cas: vec![],
            cluster: Some(store),
            algs: provider().signature_verification_algorithms,
        })
    }

    /// The check, apart from the handshake's signature: `Err` is one line for the user.
    pub fn check(
        &self,
        ee: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        let cert = webpki::EndEntityCert::try_from(ee)
            .map_err(|e| format!("the API's certificate does not parse: {e}"))?;
        let cluster = self.cluster.as_ref().map(|s| s.get()).unwrap_or_default();
        let pinned = intermediates.iter().map(|c| c.as_ref()).filter(|c| {
            let fp = pki::fingerprint(c);
            self.pins.contains(&fp) || cluster.ca_fingerprints.contains(&fp)
        });
        let candidates: Vec<&[u8]> = self
            .cas
            .iter()
            .chain(cluster.cas.iter())
            .map(|c| c.as_slice())
            .chain(pinned)
            .collect();
        let mut last_err = None;
        for ca in candidates {
            let ca_der = CertificateDer::from(ca);
            let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca_der) else {
                last_err = Some("the trusted CA certificate does not parse".to_string());
                continue;
            };
            match cert.verify_for_usage(
                self.algs.all,
                &[anchor],
                &[],
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            ) {
                Ok(_) => {
                    return cert.verify_is_valid_for_subject_name(name).map_err(|_| {
                        format!(
                            "the API's certificate is not valid for {} (it names {}); use an address it names, or restart the node with --api-tls-name",
                            name.to_str(),
                            pki::names_of(ee.as_ref()).join(", ")
                        )
                    });
                }
                Err(e) => last_err = Some(format!("the API's certificate is not valid: {e:?}")),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            let sent: Vec<String> = intermediates
                .iter()
                .map(|c| pki::fingerprint_text(c.as_ref()))
                .collect();
            let trusted: Vec<String> = self
                .pins
                .iter()
                .chain(cluster.ca_fingerprints.iter())
                .map(|f| format!("sha256:{}", hex::encode(f)))
                .chain(self.cas.iter().map(|c| pki::fingerprint_text(c)))
                .collect();
            format!(
                "the API's certificate is not from a trusted CA: it sent CA {}, this CLI trusts {} (another cluster, or a stale --ca-cert/--ca-fingerprint?)",
                if sent.is_empty() { "-".to_string() } else { sent.join(", ") },
                if trusted.is_empty() { "-".to_string() } else { trusted.join(", ") }
            )
        }))
    }
}

impl ServerCertVerifier for ApiVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, server_name, now)
            .map(|_| ServerCertVerified::assertion())
            // rustls shows it as "unexpected error: <why>" (CertificateError::Other would
            // show its Debug form); the CLI drops the prefix.
            .map_err(refuse)
    }

    signature_checks!();
}

/// The HTTPS API's server (`--api-tls`): TLS 1.2 and 1.3, the certificate in `slot` (swapped
/// on renewal), no client certificate (API clients authenticate with bearer tokens), HTTP/1.1.
pub fn api_server_config(slot: Arc<CertSlot>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// The CLI's client for an HTTPS API: ring, TLS 1.2 and 1.3, the server checked by `verifier`.
pub fn api_client_config(
    verifier: Arc<ApiVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// A client config that trusts no one, for reqwest clients that only speak plain HTTP: handed
/// over with `tls_backend_preconfigured`, it spares reqwest loading the system's root
/// certificates (about 3 ms, on the agent's start-up path).
pub fn plain_http_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Installs ring as the process's default rustls provider, once. A reqwest client built
/// without a preconfigured TLS config asks for it (reqwest's `rustls-no-provider` feature,
/// which the CLI's HTTPS needs, is on for the whole workspace) and panics when there is none.
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn trust_of(ca_pem: &str) -> Trust {
        let der = pki::pem_der(ca_pem).expect("der");
        Trust {
            ca_fingerprints: [pki::fingerprint(&der)].into(),
            cas: vec![],
            revoked: BTreeSet::new(),
            join_spki: None,
        }
    }

    fn chain(c: &pki::NodeCert) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(c.cert_der().expect("cert")),
            CertificateDer::from(c.ca_der().expect("ca")),
        ]
    }

    fn check(t: &Trust, c: &[CertificateDer<'static>], at: SystemTime) -> Result<String, String> {
        let algs = provider().signature_verification_algorithms;
        let now = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        check_node(
            t,
            &algs,
            &c[0],
            &c[1..],
            now,
            webpki::KeyUsage::client_auth(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_node_certificate_is_checked_by_its_ca_fingerprint_its_dates_and_the_revocation_list() {
        let (ca, key) = pki::new_ca().expect("ca");
        let (other_ca, other_key) = pki::new_ca().expect("other");
        let now = SystemTime::now();
        let ttl = Duration::from_secs(600);
        let good = pki::issue_own(&ca, &key, "n1", ttl, now).expect("n1");
        let foreign = pki::issue_own(&other_ca, &other_key, "n1", ttl, now).expect("foreign");
        let t = trust_of(&ca);
        assert_eq!(check(&t, &chain(&good), now), Ok("n1".into()));
        // Another cluster's CA: the message names both fingerprints.
        let e = check(&t, &chain(&foreign), now).expect_err("foreign");
        assert!(e.contains("another cluster"), "{e}");
        // Expired.
        assert!(check(&t, &chain(&good), now + Duration::from_secs(3600)).is_err());
        // Revoked.
        let mut r = t.clone();
        r.revoked.insert("n1".into());
        assert!(
            check(&r, &chain(&good), now)
                .unwrap_err()
                .contains("revoked")
        );
        // Only the leaf, CA known locally.
        let mut local = t.clone();
        local.cas.push(pki::pem_der(&ca).expect("der"));
        assert!(check(&local, &chain(&good)[..1], now).is_ok());
        assert!(check(&t, &chain(&good)[..1], now).is_err());
        // A self-signed leaf pretending to be its own CA is not trusted.
        let (fake_ca, fake_key) = pki::new_ca().expect("fake");
        let fake = pki::issue_own(&fake_ca, &fake_key, "n1", ttl, now).expect("fake");
        let mut c = chain(&fake);
        c[1] = CertificateDer::from(pki::pem_der(&ca).expect("real ca"));
        assert!(check(&t, &c, now).is_err());
    }

    #[test]
    fn two_cas_are_trusted_during_a_rotation() {
        let (old, old_key) = pki::new_ca().expect("old");
        let (new, new_key) = pki::new_ca().expect("new");
        let now = SystemTime::now();
        let ttl = Duration::from_secs(600);
        let mut t = trust_of(&old);
        t.ca_fingerprints
            .insert(pki::fingerprint(&pki::pem_der(&new).expect("der")));
        for (ca, key) in [(&old, &old_key), (&new, &new_key)] {
            let c = pki::issue_own(ca, key, "n", ttl, now).expect("cert");
            assert!(check(&t, &chain(&c), now).is_ok());
        }
    }

    #[test]
    fn configs_build_and_a_slot_takes_a_node_certificate() {
        let (ca, key) = pki::new_ca().expect("ca");
        let c = pki::issue_own(&ca, &key, "n1", pki::DEFAULT_TTL, SystemTime::now()).expect("c");
        let slot = CertSlot::new();
        assert!(!slot.is_set());
        slot.set_node(&c).expect("set");
        assert!(slot.is_set());
        let store = TrustStore::new(trust_of(&ca));
        assert!(store.still_trusted(&chain(&c)));
        server_config(slot.clone(), PeerVerifier::new(store.clone(), false)).expect("server");
        client_config(slot, PeerVerifier::new(store.clone(), false)).expect("client");
        let join = pki::join_identity(&[3; 32]).expect("join");
        CertSlot::new()
            .set(vec![join.cert_der], join.key_der)
            .expect("join key loads");
        assert!(CertSlot::new().set(vec![], vec![1, 2, 3]).is_err());
    }

    fn api_check(
        v: &ApiVerifier,
        c: &pki::NodeCert,
        name: &str,
        at: SystemTime,
    ) -> Result<(), String> {
        let now = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        let name = ServerName::try_from(name.to_string()).expect("name");
        v.check(&chain(c)[0], &chain(c)[1..], &name, now)
    }

    #[test]
    fn the_api_verifier_wants_the_pinned_ca_and_a_name_the_certificate_holds() {
        let (ca, key) = pki::new_ca().expect("ca");
        let (other, other_key) = pki::new_ca().expect("other");
        let now = SystemTime::now();
        let ttl = Duration::from_secs(600);
        let names = vec!["127.0.220.9".to_string(), "localhost".to_string()];
        let api = pki::issue_api(&ca, &key, "n1", &names, ttl, now).expect("api");
        let ca_der = pki::pem_der(&ca).expect("der");
        let pinned = ApiVerifier::new([pki::fingerprint(&ca_der)].into(), vec![]);
        let from_file = ApiVerifier::new(BTreeSet::new(), vec![ca_der.clone()]);
        for v in [&pinned, &from_file] {
            assert_eq!(api_check(v, &api, "127.0.220.9", now), Ok(()));
            assert_eq!(api_check(v, &api, "localhost", now), Ok(()));
            // A name the certificate does not hold: the message lists the names it does.
            let e = api_check(v, &api, "127.0.220.10", now).expect_err("name");
            assert!(
                e.contains("not valid for 127.0.220.10") && e.contains("localhost"),
                "{e}"
            );
            // Expired.
            assert!(api_check(v, &api, "localhost", now + Duration::from_secs(3600)).is_err());
        }
        // Another cluster's CA: one line that names both fingerprints.
        let foreign = pki::issue_api(&other, &other_key, "n1", &names, ttl, now).expect("f");
        let e = api_check(&pinned, &foreign, "localhost", now).expect_err("foreign");
        assert!(
            e.contains("not from a trusted CA") && !e.contains('\n'),
            "{e}"
        );
        assert!(e.contains(&pki::fingerprint_text(&ca_der)), "{e}");
        // A certificate forged under another CA that carries the pinned CA in its chain.
        let mut c = chain(&foreign);
        c[1] = CertificateDer::from(ca_der.clone());
        let name = ServerName::try_from("localhost").expect("name");
        assert!(
            pinned
                .check(&c[0], &c[1..], &name, UnixTime::now())
                .is_err()
        );
        // A node certificate (no name) is not an API certificate.
        let node = pki::issue_own(&ca, &key, "n1", ttl, now).expect("node");
        assert!(api_check(&pinned, &node, "localhost", now).is_err());
        api_server_config(CertSlot::new()).expect("server");
        api_client_config(pinned).expect("client");
    }
}
