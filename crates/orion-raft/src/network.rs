//! The client half of the inter-node RPC: JSON over a transport (HTTP via reqwest in
//! production) to the peer's raft port.
//!
//! One `reqwest::Client` (one connection pool) per node in production, shared by Raft replication, votes,
//! snapshots, write forwarding and read-index calls. Every outgoing connection is bound to this
//! node's advertise IP (`local_address`), so a firewall rule on the source address cuts exactly
//! this node's traffic, as a separate machine's would be cut. Every request has a timeout; a
//! body larger than `RPC_BODY_BYTES_MAX` is refused before it is sent (append-entries then asks
//! openraft for a smaller batch), and a response is read up to that size and no further.
//!
//! The bytes travel through an `RpcTransport`: `HttpTransport` in production, the simulator's
//! in-memory network under simulation. The routes and the wire types shared with the server
//! half live here too.

use crate::types::{Peer, RaftId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Routes on the raft port.
pub mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const FORWARD: &str = "/raft/forward";
    pub const READ_INDEX: &str = "/raft/read-index";
}

/// Largest request or response body on the raft port. A snapshot chunk is at most
/// `SNAPSHOT_CHUNK_BYTES` raw, up to 4 JSON bytes per raw byte (`[255,`), so 4 MiB; an
/// append-entries batch of commands each under `limits::BODY_BYTES_MAX` (1 MiB) is split by
/// openraft when it would exceed this. 16 MiB leaves room for both.
pub const RPC_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Raw bytes per snapshot chunk: keeps the JSON of one chunk near 4 MiB (see above), small
/// enough to cross a LAN well within `install_snapshot_timeout`.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// Connect timeout. A SYN on a LAN is answered within a millisecond or lost; Linux resends a
/// lost SYN after 1 s, so waiting longer than half of that only delays the retry loop above.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 500;

/// Idle pooled connections are dropped after this: longer than any heartbeat gap, short enough
/// that connections to departed peers do not linger.
pub(crate) const POOL_IDLE_TIMEOUT_MS: u64 = 30_000;

/// How long replication to an unreachable peer waits before trying again. openraft's default
/// is 500 ms; 200 ms picks a restarted peer up sooner at five connection attempts a second.
const UNREACHABLE_BACKOFF_MS: u64 = 200;

/// Why a forwarded write or a read-index call was not answered with a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; it names the leader it knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<RaftId> },
    /// The leader did not commit (or confirm its leadership) within the given time.
    #[error("leader gave no answer within {ms} ms")]
    Timeout { ms: u64 },
    #[error("the leader is shutting down")]
    Shutdown,
    #[error("{0}")]
    Other(String),
    /// The command failed `Command::validate`; nothing was proposed.
    #[error("invalid command: {field}: {message}")]
    Invalid { field: String, message: String },
}

/// Body of a read-index request (empty today; a struct so the route has a schema to refuse).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadIndexRequest {}

/// A failed call, before any reply was understood.
#[derive(Debug, thiserror::Error)]
pub enum RpcFailure {
    /// No connection could be made: nothing was sent, a retry is safe.
    #[error("cannot connect to {addr}: {msg}")]
    Connect { addr: String, msg: String },
    #[error("no reply from {addr} within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    #[error("request body of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("{addr} answered HTTP {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("transport error talking to {addr}: {msg}")]
    Transport { addr: String, msg: String },
    #[error("bad reply from {addr}: {msg}")]
    Decode { addr: String, msg: String },
}

/// How one node's RPC bytes reach a peer and its answer comes back: HTTP in production
/// (`HttpTransport`), memory with simulated faults in the simulator. Every inter-node call
/// (append entries, vote, snapshot, forwarded write, read index) goes through it.
///
/// `post` sends the JSON `body` to `path` on the node whose raft address is `addr` and yields
/// the JSON answer of a 2xx reply, or why there is none. Contract: `RpcFailure::Connect` only
/// when nothing was delivered (a retry is safe); a failure after delivery is any other variant.
pub trait RpcTransport: Send + Sync + 'static {
    fn post(
        &self,
        addr: &str,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, RpcFailure>>;
}

/// A boxed, sendable future (the transport is used as a trait object).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A rustls config that trusts no one: this transport speaks plain HTTP, and without a config
/// of its own reqwest would load the system's root certificates (milliseconds at start-up).
fn plain_http_tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// The production transport: one pooled HTTP client, every connection sourced from the
/// node's advertise IP.
#[derive(Clone, Debug)]
pub struct HttpTransport {
    http: reqwest::Client,
}

impl HttpTransport {
    /// A client whose every connection is sourced from `local_ip`.
    pub fn new(local_ip: IpAddr, rpc_timeout: Duration) -> Result<HttpTransport, reqwest::Error> {
        // reqwest's rustls needs a process-wide provider (ARCHITECTURE.md, "HTTPS API").
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .local_address(local_ip)
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(rpc_timeout)
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .tcp_nodelay(true)
            .no_proxy()
            .tls_backend_preconfigured(plain_http_tls())
            .build()?;
        Ok(HttpTransport { http })
    }
}

impl RpcTransport for HttpTransport {
    fn post(
        &self,
        addr: &str,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, RpcFailure>> {
        let http = self.http.clone();
        let addr = addr.to_string();
        Box::pin(async move {
            let fail = |e: reqwest::Error| {
                if e.is_connect() {
                    RpcFailure::Connect {
                        addr: addr.clone(),
                        msg: e.to_string(),
                    }
                } else if e.is_timeout() {
                    RpcFailure::Timeout {
                        addr: addr.clone(),
                        ms: timeout.as_millis() as u64,
                    }
                } else {
                    RpcFailure::Transport {
                        addr: addr.clone(),
                        msg: e.to_string(),
                    }
                }
            };
            let mut resp = http
                .post(format!("http://{addr}{path}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(timeout)
                .body(body)
                .send()
                .await
                .map_err(fail)?;
            let status = resp.status();
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(fail)? {
                if buf.len() + chunk.len() > RPC_BODY_BYTES_MAX {
                    return Err(RpcFailure::Decode {
                        addr: addr.clone(),
                        msg: "reply body over the limit".to_string(),
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            reply(&addr, status.as_u16(), buf)
        })
    }
}

/// A reply's body if its status is a success; else the status and the body's start.
pub(crate) fn reply(addr: &str, status: u16, buf: Vec<u8>) -> Result<Vec<u8>, RpcFailure> {
    if !(200..300).contains(&status) {
        return Err(RpcFailure::Status {
            addr: addr.to_string(),
            status,
            body: String::from_utf8_lossy(&buf[..buf.len().min(256)]).into_owned(),
        });
    }
    Ok(buf)
}

/// One node's RPC client: JSON encoding, the size bound and the timeout over a transport.
#[derive(Clone)]
pub struct RpcClient {
    transport: Arc<dyn RpcTransport>,
    rpc_timeout: Duration,
}

impl RpcClient {
    /// The production client: HTTP, every connection sourced from `local_ip`.
    pub fn new(local_ip: IpAddr, rpc_timeout: Duration) -> Result<RpcClient, reqwest::Error> {
        Ok(RpcClient::over(
            Arc::new(HttpTransport::new(local_ip, rpc_timeout)?),
            rpc_timeout,
        ))
    }

    /// A client over any transport (the simulator's).
    pub fn over(transport: Arc<dyn RpcTransport>, rpc_timeout: Duration) -> RpcClient {
        RpcClient {
            transport,
            rpc_timeout,
        }
    }

    /// The default per-request timeout.
    pub fn rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }

    /// POSTs `body` as JSON to `path` on `addr` and decodes the JSON reply.
    pub async fn post<Req, Resp>(
        &self,
        addr: &str,
        path: &'static str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcFailure>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let bytes = serde_json::to_vec(body).map_err(|e| RpcFailure::Decode {
            addr: addr.to_string(),
            msg: format!("cannot encode request: {e}"),
        })?;
        if bytes.len() > RPC_BODY_BYTES_MAX {
            return Err(RpcFailure::TooLarge(bytes.len()));
        }
        let buf = self.transport.post(addr, path, bytes, timeout).await?;
        serde_json::from_slice(&buf).map_err(|e| RpcFailure::Decode {
            addr: addr.to_string(),
            msg: e.to_string(),
        })
    }
}

/// Builds one `PeerNetwork` per replication target.
pub struct NetworkFactory {
    pub(crate) rpc: RpcClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: RaftId, node: &Peer) -> PeerNetwork {
        PeerNetwork {
            rpc: self.rpc.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub struct PeerNetwork {
    rpc: RpcClient,
    target: RaftId,
    addr: String,
}

impl PeerNetwork {
    fn timeout(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().min(self.rpc.rpc_timeout())
    }

    async fn call<Req, Resp, E>(
        &self,
        path: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<RaftId, Peer, RaftError<RaftId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = self.timeout(option);
        match self
            .rpc
            .post::<_, Result<Resp, RaftError<RaftId, E>>>(&self.addr, path, req, timeout)
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(failure @ RpcFailure::Connect { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&failure)))
            }
            Err(RpcFailure::TooLarge(_)) => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(1),
            )),
            Err(failure) => Err(RPCError::Network(NetworkError::new(&failure))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, Peer, RaftError<RaftId>>> {
        let entries = rpc.entries.len() as u64;
        match self.call(paths::APPEND, &rpc, &option).await {
            // Ask openraft to send half as many entries next time.
            Err(RPCError::PayloadTooLarge(_)) => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint((entries / 2).max(1)),
            )),
            other => other,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, Peer, RaftError<RaftId, InstallSnapshotError>>,
    > {
        self.call(paths::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, Peer, RaftError<RaftId>>> {
        self.call(paths::VOTE, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(
            UNREACHABLE_BACKOFF_MS,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// Firewall rules in the cluster tests match on the source address: every connection
    /// must come from the node's own advertise IP, not the kernel's default 127.0.0.1.
    #[tokio::test]
    async fn connections_are_sourced_from_the_advertise_ip() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 71), 0))
            .await
            .unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap().1 });
        let client =
            RpcClient::new(IpAddr::from([127, 0, 0, 72]), Duration::from_millis(300)).unwrap();
        // Nothing answers HTTP there; only the connection's source matters.
        let _ = client
            .post::<_, ()>(&target, paths::VOTE, &(), Duration::from_millis(300))
            .await;
        let peer = accept.await.unwrap();
        assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 72]));
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_failure() {
        // Bind then drop, so the port is (very likely) closed.
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 73), 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let client =
            RpcClient::new(IpAddr::from([127, 0, 0, 73]), Duration::from_millis(300)).unwrap();
        let err = client
            .post::<_, ()>(
                &format!("127.0.0.73:{port}"),
                paths::VOTE,
                &(),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RpcFailure::Connect { .. }), "{err}");
    }
}
