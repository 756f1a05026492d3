//! The join service: how a new node gets its certificate before it enters gossip and Raft.
//!
//! Every secured node listens on its gossip port over TCP (gossip itself is UDP), so the
//! address a user passes to `--join` is the one that admits. The exchange is one TLS 1.3
//! connection:
//!
//! 1. The joiner connects and checks the member's certificate chain against the CA
//!    fingerprint in its join token. A member of another cluster (or a man in the middle)
//!    fails here, before the joiner has sent anything.
//! 2. The joiner presents the join identity, a key derived from the cluster secret
//!    (`pki::join_identity`): the handshake proves it holds the secret without sending it.
//!    The member refuses any other client certificate but a node's.
//! 3. The joiner sends one JSON line: its node id, its gossip address and the public key of a
//!    key pair it just made. The member refuses a revoked id, and an id a live member holds
//!    at another address; else it signs a node certificate with the cluster CA.
//! 4. The member answers one JSON line: the certificate (without key) or an error sentence.
//!
//! Lines are bounded (`LINE_BYTES_MAX`) and every step has a timeout.

use crate::pki::NodePki;
use anyhow::Result;
use orion_security::material::NodeSecrets;
use orion_security::pki::{self, NodeCert};
use orion_security::tls::{self, CertSlot, PeerVerifier, Trust, TrustStore};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Largest request or answer line.
pub const LINE_BYTES_MAX: u64 = 32 * 1024;
/// Bound on each step of the exchange (connect, handshake, request, answer).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JoinRequest {
    node_id: String,
    /// The joiner's gossip address (tells a restart of a node from an impostor).
    gossip_addr: String,
    /// The SubjectPublicKeyInfo of the joiner's new key, hex.
    public_key: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert: Option<NodeCert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Serves joins on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    pki: Arc<NodePki>,
    raft: orion_raft::RaftNode,
    gossip: orion_gossip::Gossip<orion_types::NodeMeta>,
    mut stop: watch::Receiver<bool>,
) {
    let config = match pki.join_server_config() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "the join service cannot start");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "join service accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let (acceptor, pki, raft, gossip) =
            (acceptor.clone(), pki.clone(), raft.clone(), gossip.clone());
        tokio::spawn(async move {
            match answer(tcp, acceptor, &pki, &raft, &gossip).await {
                Ok(id) => info!(%peer, node = %id, "admitted a node: issued its certificate"),
                Err(e) => warn!(%peer, "refused a join: {e}"),
            }
        });
    }
}

async fn answer(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    pki: &NodePki,
    raft: &orion_raft::RaftNode,
    gossip: &orion_gossip::Gossip<orion_types::NodeMeta>,
) -> Result<String, String> {
    let stream = tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(
        STEP_TIMEOUT,
        (&mut stream).take(LINE_BYTES_MAX).read_line(&mut line),
    )
    .await
    .map_err(|_| "no request within 5 s".to_string())?
    .map_err(|e| format!("reading the request: {e}"))?;
    let decision = decide(&line, pki, raft, gossip);
    let reply = match &decision {
        Ok(cert) => JoinAnswer {
            cert: Some(cert.clone()),
            error: None,
        },
        Err(e) => JoinAnswer {
            cert: None,
            error: Some(e.clone()),
        },
    };
    let mut bytes = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    let mut stream = stream.into_inner();
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    decision.map(|c| c.node_id)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether to admit the request, and with which certificate.
fn decide(
    line: &str,
    pki: &NodePki,
    raft: &orion_raft::RaftNode,
    gossip: &orion_gossip::Gossip<orion_types::NodeMeta>,
) -> Result<NodeCert, String> {
    let req: JoinRequest =
        serde_json::from_str(line.trim()).map_err(|e| format!("bad join request: {e}"))?;
    if !valid_id(&req.node_id) {
        return Err(format!(
            "node id {:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.'",
            req.node_id
        ));
    }
    let spki = hex::decode(&req.public_key).map_err(|_| "publicKey is not hex".to_string())?;
    let (ca, revoked) = raft.read(|s| (s.ca.clone(), s.revoked_nodes.contains_key(&req.node_id)));
    if revoked {
        return Err(format!(
            "node id {} was removed from this cluster; join under a new id",
            req.node_id
        ));
    }
    if let Some(m) = gossip.members().iter().find(|m| {
        m.node_id == req.node_id
            && m.status == orion_gossip::MemberStatus::Alive
            && m.addr.to_string() != req.gossip_addr
    }) {
        return Err(format!(
            "node id {} is in use by a live member at {}",
            req.node_id, m.addr
        ));
    }
    pki.issue_for(ca.as_ref(), &req.node_id, &spki)
}

/// Why a join attempt failed.
#[derive(Debug)]
pub enum JoinFailure {
    /// Nothing answered, or not Orion's join service: try again later or elsewhere.
    Unreachable(String),
    /// The member is not of the token's cluster, or refused the token: a wrong token.
    WrongToken(String),
    /// The member answered with a refusal (a removed id, an id in use).
    Refused(String),
}

impl std::fmt::Display for JoinFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinFailure::Unreachable(m) | JoinFailure::WrongToken(m) | JoinFailure::Refused(m) => {
                f.write_str(m)
            }
        }
    }
}

/// One attempt to get a node certificate from the member at `addr`.
pub async fn request(
    addr: SocketAddr,
    secrets: &NodeSecrets,
    node_id: &str,
    gossip_addr: &str,
) -> Result<NodeCert, JoinFailure> {
    let unreachable = |m: String| JoinFailure::Unreachable(format!("{addr}: {m}"));
    let secret = secrets.secret_bytes();
    let pinned = secrets.join_token().ca_fingerprint;
    let join = pki::join_identity(&secret)
        .map_err(|e| unreachable(format!("cannot derive the join identity: {e}")))?;
    let slot = CertSlot::new();
    slot.set(vec![join.cert_der], join.key_der)
        .map_err(|e| unreachable(format!("cannot load the join identity: {e}")))?;
    let store = TrustStore::new(Trust {
        ca_fingerprints: [pinned].into(),
        ..Trust::default()
    });
    let config = tls::client_config(slot, PeerVerifier::new(store, false))
        .map_err(|e| unreachable(e.to_string()))?;
    let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = match tokio::time::timeout(
        STEP_TIMEOUT,
        connector.connect(tls::server_name(), tcp),
    )
    .await
    {
        Err(_) => return Err(unreachable("the TLS handshake timed out".into())),
        Ok(Err(e)) => {
            let msg = e.to_string();
            // Our verifier's refusal (the only source of `General` in this configuration):
            // the member's CA is not the one the token pins.
            let refused_by_verifier = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::General(_)));
            return Err(if refused_by_verifier {
                JoinFailure::WrongToken(format!(
                    "{addr} is not a member of the join token's cluster: {msg}"
                ))
            } else {
                unreachable(format!(
                    "no Orion join service answered ({msg}); is this the node's gossip port?"
                ))
            });
        }
        Ok(Ok(s)) => s,
    };
    let key = pki::new_key().map_err(|e| unreachable(e.to_string()))?;
    let req = JoinRequest {
        node_id: node_id.to_string(),
        gossip_addr: gossip_addr.to_string(),
        public_key: hex::encode(pki::public_key_der(&key)),
    };
    let mut bytes = serde_json::to_vec(&req).map_err(|e| unreachable(e.to_string()))?;
    bytes.push(b'\n');
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let exchange = async {
        stream.get_mut().write_all(&bytes).await?;
        (&mut stream)
            .take(LINE_BYTES_MAX)
            .read_line(&mut line)
            .await
    };
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Err(_) => return Err(unreachable("no answer within 5 s".into())),
        Ok(Err(e)) => {
            // In TLS 1.3 the member checks the client's certificate after the client's
            // handshake is done: its refusal arrives here, as an alert.
            debug!(error = %e, "join exchange failed");
            return Err(JoinFailure::WrongToken(format!(
                "{addr} refused this node's join token ({e}): the token's secret is not that cluster's"
            )));
        }
        Ok(Ok(0)) => {
            return Err(JoinFailure::WrongToken(format!(
                "{addr} closed the connection without an answer: it refused this node's join token"
            )));
        }
        Ok(Ok(_)) => {}
    }
    let answer: JoinAnswer =
        serde_json::from_str(line.trim()).map_err(|e| unreachable(format!("bad answer: {e}")))?;
    match (answer.cert, answer.error) {
        (Some(mut c), None) => {
            if c.node_id != node_id || pki::fingerprint(&c.ca_der().unwrap_or_default()) != pinned {
                return Err(JoinFailure::WrongToken(format!(
                    "{addr} answered a certificate that is not for this node under the pinned CA"
                )));
            }
            c.key_pem = key.serialize_pem();
            Ok(c)
        }
        (_, Some(e)) => Err(JoinFailure::Refused(format!(
            "{addr} refused the join: {e}"
        ))),
        (None, None) => Err(unreachable("empty answer".into())),
    }
}
