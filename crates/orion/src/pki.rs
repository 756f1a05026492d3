//! This node's certificate and what it trusts, kept current from the replicated state.
//!
//! - **The certificate.** Loaded from `<data-dir>/node-cert.json` at start. A bootstrapping
//!   node issues its first one from the CA it just made; a joiner gets its first one from a
//!   member through the join service (`join.rs`). After that the node renews its own: when
//!   two thirds of its life have passed (`--cert-ttl`, 90 days by default), and when the
//!   cluster's CA is not the one that signed it (after `orion ca rotate`). It signs with the
//!   CA in the replicated state, whose key it unseals with the cluster secret. The new
//!   certificate is swapped into the listeners' `CertSlot`: nothing restarts, open
//!   connections finish on the old one.
//! - **The trust.** Once the state holds a CA: that CA and the one a rotation replaced, and
//!   the revocation list of removed nodes. Before (a joiner that has not replicated yet):
//!   the CA its join token pins. Recomputed every `REFRESH` from the local replica; when it
//!   changes, `changed` is bumped and the RPC server re-checks its open connections.
//! - **The API's certificate** (`--api-tls`). Another certificate of the same CA, for TLS
//!   servers only, naming the API's addresses (`ApiCert::names`). Kept in
//!   `<data-dir>/api-cert.json` and renewed like the node's: at two thirds of its life and when
//!   the cluster's CA changes; swapped into the API listener's own `CertSlot`.

use anyhow::{Context, Result};
use orion_security::material::NodeSecrets;
use orion_security::pki::{self, NodeCert};
use orion_security::tls::{self, CertSlot, PeerVerifier, Trust, TrustStore};
use orion_types::ClusterCa;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the trust and the certificate's age are checked against the local replica.
pub const REFRESH: Duration = Duration::from_millis(250);

/// The HTTPS API's certificate (`--api-tls`).
pub struct ApiCert {
    /// The subject alternative names it must hold.
    pub names: Vec<String>,
    pub slot: Arc<CertSlot>,
    cert: Mutex<Option<NodeCert>>,
}

pub struct NodePki {
    pub slot: Arc<CertSlot>,
    /// `Some` with `--api-tls`.
    pub api: Option<ApiCert>,
    pub store: Arc<TrustStore>,
    changed_tx: watch::Sender<u64>,
    changed_rx: watch::Receiver<u64>,
    data_dir: PathBuf,
    node_id: String,
    ttl: Duration,
    secret: [u8; 32],
    /// The CA fingerprint this node's join token (or bootstrap) pinned.
    pinned: [u8; 32],
    /// The bootstrap's own CA (certificate, key) from `security.json`, before the state has it.
    local_ca: Option<(String, String)>,
    join_spki: Vec<u8>,
    cert: Mutex<Option<NodeCert>>,
    /// When a failed renewal was last logged (one line per 30 s, not per refresh).
    last_failure_log: Mutex<Option<std::time::Instant>>,
}

impl NodePki {
    /// This node's PKI from its data dir and secrets; a bootstrapping node without a
    /// certificate issues its first one here.
    pub fn new(
        data_dir: PathBuf,
        node_id: &str,
        ttl: Duration,
        secrets: &NodeSecrets,
        api_names: Option<Vec<String>>,
    ) -> Result<Arc<NodePki>> {
        let secret = secrets.secret_bytes();
        let pinned = secrets.join_token().ca_fingerprint;
        let join_spki = pki::join_identity(&secret)
            .context("cannot derive the join identity")?
            .spki_der;
        let cert = match NodeCert::load(&data_dir) {
            Ok(Some(c)) if c.node_id == node_id => Some(c),
            Ok(Some(c)) => {
                warn!(cert_node = %c.node_id, "the node certificate in the data dir names another node; issuing a new one");
                None
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot read this node's certificate; issuing a new one");
                None
            }
        };
        let (changed_tx, changed_rx) = watch::channel(0);
        let local_ca = secrets.ca_cert_pem.clone().zip(secrets.ca_key_pem.clone());
        let api = api_names.map(|names| {
            // A saved API certificate serves again if it still names these addresses; the
            // first refresh renews it if it is due or from a CA that is no longer the cluster's.
            let saved = match NodeCert::load_file(&data_dir, pki::API_CERT_FILE) {
                Ok(Some(c))
                    if c.node_id == node_id
                        && c.cert_der()
                            .map(|d| pki::names_of(&d) == names)
                            .unwrap_or(false) =>
                {
                    Some(c)
                }
                Ok(_) => None,
                Err(e) => {
                    warn!(error = %e, "cannot read the API's certificate; issuing a new one");
                    None
                }
            };
            let slot = CertSlot::new();
            let saved = saved.filter(|c| slot.set_node(c).is_ok());
            ApiCert {
                names,
                slot,
                cert: Mutex::new(saved),
            }
        });
        let pki = Arc::new(NodePki {
            slot: CertSlot::new(),
            api,
            store: TrustStore::new(Trust::default()),
            changed_tx,
            changed_rx,
            data_dir,
            node_id: node_id.to_string(),
            ttl,
            secret,
            pinned,
            local_ca,
            join_spki,
            cert: Mutex::new(None),
            last_failure_log: Mutex::new(None),
        });
        if let Some(c) = cert {
            pki.install(c, false)?;
        } else if let Some((ca, key)) = pki.local_ca.clone() {
            let c = pki::issue_own(&ca, &key, node_id, ttl, SystemTime::now())
                .context("cannot issue this node's certificate")?;
            pki.install(c, true)?;
        }
        pki.refresh(None, None, BTreeSet::new());
        Ok(pki)
    }

    pub fn has_cert(&self) -> bool {
        self.slot.is_set()
    }

    /// Presents `c` from now on; `save` writes it to the data dir first.
    pub fn install(&self, c: NodeCert, save: bool) -> Result<()> {
        if save {
            c.save(&self.data_dir)
                .context("cannot save this node's certificate")?;
        }
        self.slot
            .set_node(&c)
            .map_err(|e| anyhow::anyhow!("cannot use this node's certificate: {e}"))?;
        *self.cert.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        Ok(())
    }

    /// The RPC port's TLS: this node's certificate, node certificates only from peers.
    pub fn rpc_tls(&self) -> Result<orion_raft::RpcTls> {
        let server = tls::server_config(
            self.slot.clone(),
            PeerVerifier::new(self.store.clone(), false),
        )
        .context("TLS server configuration")?;
        let client = tls::client_config(
            self.slot.clone(),
            PeerVerifier::new(self.store.clone(), false),
        )
        .context("TLS client configuration")?;
        let store = self.store.clone();
        Ok(orion_raft::RpcTls {
            server: Arc::new(server),
            client: Arc::new(client),
            still_trusted: Arc::new(move |chain| store.still_trusted(chain)),
            changed: self.changed_rx.clone(),
            server_name: tls::server_name(),
        })
    }

    /// The join service's TLS: like the RPC port's, and a client may present the join identity.
    pub fn join_server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        Ok(Arc::new(
            tls::server_config(
                self.slot.clone(),
                PeerVerifier::new(self.store.clone(), true),
            )
            .context("TLS server configuration")?,
        ))
    }

    /// The CA that signs now: the state's (key unsealed), else the bootstrap's own.
    fn signing_ca(&self, state_ca: Option<&ClusterCa>) -> Result<(String, String), String> {
        match state_ca {
            Some(ca) => {
                let key = orion_security::material::open_ca_key(&self.secret, &ca.sealed_key)
                    .ok_or(
                        "the CA key in the cluster state does not open with this node's secret",
                    )?;
                Ok((ca.cert_pem.clone(), key))
            }
            None => self
                .local_ca
                .clone()
                .ok_or_else(|| "this node has not replicated the cluster's CA yet".to_string()),
        }
    }

    /// A certificate for another node (the join service), signed by the current CA.
    pub fn issue_for(
        &self,
        state_ca: Option<&ClusterCa>,
        node_id: &str,
        spki_der: &[u8],
    ) -> Result<NodeCert, String> {
        let (ca, key) = self.signing_ca(state_ca)?;
        pki::issue(
            &ca,
            &key,
            node_id,
            spki_der,
            self.ttl,
            SystemTime::now(),
            pki::serial(),
        )
        .map_err(|e| e.to_string())
    }

    /// Recomputes the trust from the state's CAs and revocation list, and renews this node's
    /// certificate if it is due or signed by a CA that is no longer the cluster's.
    pub fn refresh(
        &self,
        ca: Option<&ClusterCa>,
        previous: Option<&ClusterCa>,
        revoked: BTreeSet<String>,
    ) {
        let der_of = |c: &ClusterCa| pki::pem_der(&c.cert_pem).ok();
        let mut trust = Trust {
            revoked,
            join_spki: Some(self.join_spki.clone()),
            ..Trust::default()
        };
        match ca.and_then(der_of) {
            Some(cur) => {
                for der in std::iter::once(cur).chain(previous.and_then(der_of)) {
                    trust.ca_fingerprints.insert(pki::fingerprint(&der));
                    trust.cas.push(der);
                }
            }
            None => {
                trust.ca_fingerprints.insert(self.pinned);
                let own_ca = self
                    .cert
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(|c| c.ca_der().ok());
                if let Some(der) = own_ca.filter(|d| pki::fingerprint(d) == self.pinned) {
                    trust.cas.push(der);
                }
            }
        }
        if self.store.set(trust) {
            self.changed_tx.send_modify(|v| *v += 1);
        }
        self.renew_if_due(ca);
        self.renew_api_if_due(ca);
    }

    /// Issues the API's certificate when it has none, when it is due, or when the cluster's
    /// CA is not the one that signed it.
    fn renew_api_if_due(&self, ca: Option<&ClusterCa>) {
        let Some(api) = &self.api else {
            return;
        };
        let now = SystemTime::now();
        let due = renewal_due(
            api.cert.lock().unwrap_or_else(|p| p.into_inner()).as_ref(),
            ca,
            now,
        );
        if !due || (ca.is_none() && self.local_ca.is_none()) {
            // Without the CA (a joiner before it replicated the state) it waits a refresh.
            return;
        }
        let issued = self.signing_ca(ca).and_then(|(ca, key)| {
            pki::issue_api(&ca, &key, &self.node_id, &api.names, self.ttl, now)
                .map_err(|e| e.to_string())
        });
        let installed = issued.and_then(|c| {
            c.save_file(&self.data_dir, pki::API_CERT_FILE)
                .map_err(|e| format!("cannot save the API's certificate: {e}"))?;
            api.slot.set_node(&c)?;
            let done = (c.ca_fingerprint.clone(), c.not_after);
            *api.cert.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
            Ok(done)
        });
        match installed {
            Ok((fp, until)) => {
                info!(ca = %fp, not_after = until, names = ?api.names, "issued the API's certificate");
            }
            Err(e) => self.warn_throttled(&e, "cannot issue the API's certificate yet"),
        }
    }

    /// The HTTPS API's TLS (`--api-tls`): its certificate, swapped on renewal.
    pub fn api_server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>> {
        self.api
            .as_ref()
            .map(|a| {
                tls::api_server_config(a.slot.clone())
                    .map(Arc::new)
                    .context("API TLS server configuration")
            })
            .transpose()
    }

    fn renew_if_due(&self, ca: Option<&ClusterCa>) {
        let now = SystemTime::now();
        let due = renewal_due(
            self.cert.lock().unwrap_or_else(|p| p.into_inner()).as_ref(),
            ca,
            now,
        );
        if !due {
            return;
        }
        let had_cert = self
            .cert
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !had_cert && ca.is_none() && self.local_ca.is_none() {
            // A joiner before its join: the join service brings the first certificate.
            return;
        }
        let issued = self.signing_ca(ca).and_then(|(ca, key)| {
            pki::issue_own(&ca, &key, &self.node_id, self.ttl, now).map_err(|e| e.to_string())
        });
        match issued.map_err(anyhow::Error::msg).and_then(|c| {
            let (fp, until) = (c.ca_fingerprint.clone(), c.not_after);
            self.install(c, true).map(|_| (fp, until))
        }) {
            Ok((fp, until)) => {
                info!(ca = %fp, not_after = until, "issued this node's certificate");
                metrics::counter!("orion_node_certificates_issued_total").increment(1);
            }
            Err(e) => self.warn_throttled(&e, "cannot renew this node's certificate yet"),
        }
    }

    /// Logs a failed issue at most every 30 s: the refresh loop retries every 250 ms.
    fn warn_throttled(&self, e: &dyn std::fmt::Display, what: &str) {
        let mut last = self
            .last_failure_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            *last = Some(std::time::Instant::now());
            warn!(error = %e, "{what}");
        }
    }

    /// Keeps the trust and the certificate current until `stop`.
    pub async fn run(self: Arc<Self>, raft: orion_raft::RaftNode, mut stop: watch::Receiver<bool>) {
        loop {
            let (ca, previous, revoked) = raft.read(|s| {
                (
                    s.ca.clone(),
                    s.previous_ca.clone(),
                    s.revoked_nodes.keys().cloned().collect::<BTreeSet<_>>(),
                )
            });
            self.refresh(ca.as_ref(), previous.as_ref(), revoked);
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }
}

/// The join token of the cluster's current CA (after a rotation the pinned fingerprint is
/// the new CA's).
/// Whether a certificate must be (re)issued: there is none, it is at two thirds of its life,
/// or the cluster's CA is not the one that signed it (a rotation).
fn renewal_due(cert: Option<&NodeCert>, ca: Option<&ClusterCa>, now: SystemTime) -> bool {
    match cert {
        None => true,
        Some(c) => {
            c.due_for_renewal(now)
                || ca.is_some_and(|ca| {
                    pki::pem_der(&ca.cert_pem)
                        .map(|d| pki::fingerprint_text(&d) != c.ca_fingerprint)
                        .unwrap_or(false)
                })
        }
    }
}

pub fn join_token_for(secrets: &NodeSecrets, ca: Option<&ClusterCa>) -> String {
    let mut t = secrets.join_token();
    if let Some(der) = ca.and_then(|c| pki::pem_der(&c.cert_pem).ok()) {
        t.ca_fingerprint = pki::fingerprint(&der);
    }
    t.encode()
}
