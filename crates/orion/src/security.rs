//! The agent's side of "secure by default": which secrets this node runs with, where they
//! come from (made at bootstrap, or the join token from `--token`, `ORION_TOKEN` or the
//! credentials file), and the writes that register them (the bootstrap's admin token in the
//! replicated state, the credentials file). `--insecure` skips all of it, with a warning.

use crate::config::AgentConfig;
use anyhow::{Context, Result, bail};
use orion_security::credentials;
use orion_security::join::JoinToken;
use orion_security::material::NodeSecrets;
use orion_types::{ApiToken, Command, Role};
use std::time::Duration;
use tracing::{info, warn};

/// How long a node joining for the first time waits to hear a member: the seed may be
/// starting too (gossip's own join retries run ~20 s); past that the token is likely wrong.
pub const FIRST_JOIN_WAIT: Duration = Duration::from_secs(25);

pub const INSECURE_WARNING: &str = "running with --insecure: the API takes requests without a token and gossip is not encrypted; anyone who reaches this node's ports controls the cluster. Use it for trials only";

/// This node's secrets, and whether they are new from a join token (not saved yet: a first
/// join saves them only once a member answered, so a wrong token leaves nothing behind).
#[derive(Clone)]
pub struct Prepared {
    pub secrets: NodeSecrets,
    pub unsaved_join: bool,
    /// The join token came from the credentials file: while no member answers, the file is
    /// read again (a bootstrap on the same address may be replacing an old entry right now).
    pub from_file: bool,
}

/// This node's secrets as the running parts see them (the API's auth layer, `GET /join-token`).
#[derive(Clone)]
pub struct LiveSecrets {
    secrets: std::sync::Arc<std::sync::RwLock<NodeSecrets>>,
    /// The hash of the nodes' own API token, which the API's auth layer reads.
    pub node_token_hash: std::sync::Arc<std::sync::RwLock<String>>,
}

impl LiveSecrets {
    pub fn new(s: NodeSecrets) -> LiveSecrets {
        let hash = node_token_hash(&s);
        LiveSecrets {
            secrets: std::sync::Arc::new(std::sync::RwLock::new(s)),
            node_token_hash: std::sync::Arc::new(std::sync::RwLock::new(hash)),
        }
    }

    pub fn get(&self) -> NodeSecrets {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn node_token_hash(s: &NodeSecrets) -> String {
    orion_security::tokens::hash(&orion_security::keys::node_api_token(&s.secret_bytes()))
}

/// The `--join` addresses, for messages.
fn join_addrs(cfg: &AgentConfig) -> String {
    cfg.join
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The join token the credentials file holds for any of the `--join` addresses.
pub fn token_from_file(cfg: &AgentConfig) -> Option<(String, String)> {
    let path = credentials::default_path()?;
    let e = cfg
        .join
        .iter()
        .find_map(|a| credentials::find(&path, &a.to_string()).ok().flatten())?;
    Some((
        e.join_token,
        format!("the credentials file {}", path.display()),
    ))
}

/// The keyring of a cluster secret, before any gossip key rotation.
pub fn keyring(s: &NodeSecrets) -> orion_security::seal::Keyring {
    gossip_keyring(&s.secret_bytes(), None, None, 0)
}

/// The gossip keys at `now_ms`, from the state's rotation records (`None`: the key derived
/// from the secret, id 1). A rotated key is accepted at once and seals from
/// `since + GOSSIP_KEY_SWITCH_MS`, when every node has applied it; until then this node seals
/// with the key it replaces. Two keys are accepted at any time: the current and the other.
pub fn gossip_keyring(
    secret: &[u8; 32],
    current: Option<&orion_types::GossipKeyRecord>,
    previous: Option<&orion_types::GossipKeyRecord>,
    now_ms: u64,
) -> orion_security::seal::Keyring {
    use orion_security::seal::{GossipKey, Keyring};
    let base = GossipKey::new(
        1,
        &orion_security::keys::derive(secret, orion_security::keys::GOSSIP_KEY_LABEL),
    );
    let open = |r: &orion_types::GossipKeyRecord| -> Option<GossipKey> {
        let text = orion_security::material::open_ca_key(secret, &r.sealed_key)?;
        let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(GossipKey::new(r.id, &bytes))
    };
    let Some(new) = current.and_then(open) else {
        return Keyring::new(base);
    };
    let old = previous.and_then(open).unwrap_or(base);
    let since = current.map(|c| c.since).unwrap_or(0);
    if now_ms >= since.saturating_add(orion_types::token::GOSSIP_KEY_SWITCH_MS) {
        Keyring {
            current: new,
            previous: Some(old),
        }
    } else {
        Keyring {
            current: old,
            previous: Some(new),
        }
    }
}

/// A new gossip key record, sealed under the secret, with the id after `after`.
pub fn new_gossip_key(
    secret: &[u8; 32],
    after: Option<u8>,
    now_ms: u64,
) -> orion_types::GossipKeyRecord {
    let id = match after.unwrap_or(1).wrapping_add(1) {
        0 | 1 => 2,
        n => n,
    };
    orion_types::GossipKeyRecord {
        id,
        sealed_key: orion_security::material::seal_ca_key(
            secret,
            &hex::encode(orion_security::random_32()),
        ),
        since: now_ms,
    }
}

/// Keeps the gossip transport's keys in line with the state's rotation records until `stop`.
pub async fn run_gossip_keys(
    raft: orion_raft::RaftNode,
    sealed: std::sync::Arc<crate::sealed::SealedUdp>,
    secret: [u8; 32],
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut in_use: Option<(u8, Option<u8>)> = None;
    loop {
        let (cur, prev) = raft.read(|s| (s.gossip_key.clone(), s.previous_gossip_key.clone()));
        let ring = gossip_keyring(&secret, cur.as_ref(), prev.as_ref(), crate::agent::now_ms());
        let ids = (ring.current.id, ring.previous.as_ref().map(|k| k.id));
        if in_use != Some(ids) {
            if in_use.is_some() {
                info!(sealing_with = ids.0, also_accepted = ?ids.1, "gossip keys changed");
            }
            sealed.set_keys(ring);
            in_use = Some(ids);
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::pki::REFRESH) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

pub async fn prepare(cfg: &AgentConfig) -> Result<Option<Prepared>> {
    if cfg.insecure {
        warn!("{INSECURE_WARNING}");
        return Ok(None);
    }
    if let Some(s) = NodeSecrets::load(&cfg.data_dir)? {
        if cfg
            .join_token
            .as_deref()
            .is_some_and(|t| t.trim() != s.join_token().encode())
        {
            warn!(
                "ignoring the join token given: this node's data dir already belongs to a cluster"
            );
        }
        return Ok(Some(Prepared {
            secrets: s,
            unsaved_join: false,
            from_file: false,
        }));
    }
    if cfg.bootstrap {
        let s = NodeSecrets::create().context("cannot make the cluster's secrets")?;
        s.save(&cfg.data_dir)?;
        let token = s.join_token();
        info!(ca = %token.fingerprint_text(), "made the cluster CA and secret");
        // Shown once, unasked, through the log (so `--log-format json` stays one JSON object
        // per line); `orion join-token` prints it again.
        info!(
            "cluster created; join other nodes with: orion --join {} --token {} (the admin token and the join token are in {})",
            cfg.gossip_addr(),
            token.encode(),
            credentials::default_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the credentials file".into())
        );
        return Ok(Some(Prepared {
            secrets: s,
            unsaved_join: false,
            from_file: false,
        }));
    }
    let (text, source) = match &cfg.join_token {
        Some(t) => (t.clone(), "--token/ORION_TOKEN".to_string()),
        None => {
            // The bootstrap node may be starting at the same moment: wait for its entry.
            let deadline = tokio::time::Instant::now() + FIRST_JOIN_WAIT;
            loop {
                if let Some(found) = token_from_file(cfg) {
                    break found;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "cannot join: no join token. Pass --token (printed at bootstrap; `orion join-token` on a member prints it) or set ORION_TOKEN; on the host that bootstrapped the cluster it is read from the credentials file, which has no entry for {}. For a trial without security, start every node with --insecure",
                        join_addrs(cfg)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let token = JoinToken::parse(&text).with_context(|| format!("the join token from {source}"))?;
    info!(ca = %token.fingerprint_text(), "joining with the join token from {source}");
    Ok(Some(Prepared {
        secrets: NodeSecrets::from_join_token(&token),
        unsaved_join: true,
        from_file: cfg.join_token.is_none(),
    }))
}

/// After a start: the bootstrap node records the cluster in the credentials file (every
/// start, so a restart takes its addresses back), a joined node adds its addresses to it.
/// The join token names the cluster's current CA (after a rotation, not the bootstrap's).
pub fn register(cfg: &AgentConfig, s: &NodeSecrets, ca: Option<&orion_types::ClusterCa>) {
    let Some(path) = credentials::default_path() else {
        warn!("no HOME: the credentials file is not written");
        return;
    };
    let addrs = vec![cfg.api_addr().to_string(), cfg.gossip_addr().to_string()];
    let join = crate::pki::join_token_for(s, ca);
    let fingerprint = JoinToken::parse(&join)
        .map(|t| t.fingerprint_text())
        .unwrap_or_default();
    // A restart finds its entry as it left it: no write (and no fsync) on the start-up path.
    let wanted: Vec<String> = addrs.iter().map(|a| credentials::normalize(a)).collect();
    if let Ok(Some(e)) = credentials::find(&path, &addrs[0])
        && e.join_token == join
        && s.admin_token.as_ref().is_none_or(|t| *t == e.admin_token)
        && wanted.iter().all(|a| e.addrs.contains(a))
    {
        return;
    }
    let res = match &s.admin_token {
        Some(admin) => credentials::record_bootstrap(
            &path,
            credentials::Entry {
                addrs,
                admin_token: admin.clone(),
                join_token: join,
                ca_fingerprint: fingerprint,
                created_at: crate::agent::now_ms(),
            },
        ),
        None => credentials::add_addrs(&path, &join, &addrs).map(|_| ()),
    };
    match res {
        Ok(()) => info!(path = %path.display(), "credentials file updated"),
        Err(e) => warn!(path = %path.display(), error = %e, "cannot write the credentials file"),
    }
}

/// Puts the bootstrap's CA (key sealed) and admin token into the replicated state unless they
/// are there. Retried
/// while there is no leader yet; bounded, since a node may start without quorum.
pub async fn ensure_admin_token(raft: orion_raft::RaftNode, s: NodeSecrets) {
    let (Some(secret), Some(id)) = (s.admin_token.clone(), s.admin_token_id.clone()) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let (Some(cert), Some(key)) = (&s.ca_cert_pem, &s.ca_key_pem)
            && raft.read(|st| st.ca.is_none())
        {
            // The CA, its key sealed, for every node that holds the secret (the first write:
            // a CA must be in the state before any node is admitted under it).
            let cmd = Command::SetClusterCa {
                ca: orion_types::ClusterCa {
                    cert_pem: cert.clone(),
                    sealed_key: orion_security::material::seal_ca_key(&s.secret_bytes(), key),
                    fingerprint: s.join_token().fingerprint_text(),
                },
                at: crate::agent::now_ms(),
            };
            if let Err(e) = raft.write(cmd).await {
                if tokio::time::Instant::now() >= deadline {
                    warn!(error = %e, "could not write the cluster CA into the cluster state");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        if raft.read(|st| !st.tokens.is_empty()) {
            // Present, or revoked/replaced by an admin: either way not ours to add again.
            return;
        }
        let cmd = Command::CreateToken {
            token: ApiToken {
                id: id.clone(),
                name: "bootstrap admin".to_string(),
                role: Role::Admin,
                hash: orion_security::tokens::hash(&secret),
                created_at: crate::agent::now_ms(),
            },
            at: crate::agent::now_ms(),
        };
        match raft.write(cmd).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "admin token not written yet; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                warn!(error = %e, "could not write the admin token into the cluster state");
                return;
            }
        }
    }
}

/// A first join: gets this node's certificate from a member through the join service
/// (`join.rs`), retrying while the seed may still be starting. When the token came from the
/// credentials file, the file is read again between attempts (a bootstrap on the same address
/// may be replacing an old entry right now). Once a member admitted the node, its secrets are
/// saved and the credentials file names its addresses. A wrong token from `--token` or
/// `ORION_TOKEN` fails at once, with the member's reason.
pub async fn obtain_certificate(
    cfg: &AgentConfig,
    sec: &mut Prepared,
) -> Result<orion_security::pki::NodeCert> {
    use crate::join::JoinFailure;
    let deadline = tokio::time::Instant::now() + FIRST_JOIN_WAIT;
    let gossip_addr = cfg.gossip_addr().to_string();
    let mut last = String::new();
    loop {
        for addr in &cfg.join {
            match crate::join::request(*addr, &sec.secrets, &cfg.id, &gossip_addr).await {
                Ok(c) => {
                    info!(member = %addr, ca = %c.ca_fingerprint, "joined: a member verified the join token and issued this node's certificate");
                    if sec.unsaved_join {
                        if let Err(e) = sec.secrets.save(&cfg.data_dir) {
                            warn!(error = %e, "cannot save this node's secrets; a restart will need the join token again");
                        }
                        sec.unsaved_join = false;
                    }
                    return Ok(c);
                }
                Err(JoinFailure::WrongToken(m) | JoinFailure::Refused(m)) if !sec.from_file => {
                    bail!("cannot join: {m}");
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last {
                        warn!(
                            "join attempt failed, retrying for up to {} s: {msg}",
                            FIRST_JOIN_WAIT.as_secs()
                        );
                    }
                    last = msg;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "cannot join: no seed answered at {} within {} s ({last}). Either no node runs there, or the join token is not that cluster's",
                join_addrs(cfg),
                FIRST_JOIN_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if sec.from_file
            && let Some((text, _)) = token_from_file(cfg)
            && text != sec.secrets.join_token().encode()
            && let Ok(t) = JoinToken::parse(&text)
        {
            info!("the credentials file has a new entry for the --join address; using it");
            sec.secrets = NodeSecrets::from_join_token(&t);
        }
    }
}
