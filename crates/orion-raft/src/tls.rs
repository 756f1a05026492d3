//! The RPC port over mutual TLS: the client transport (`TlsTransport`) and the server's
//! accept loop (`serve`).
//!
//! The TLS configurations come from outside (orion-security builds them: TLS 1.3, ring, a
//! verifier that trusts the cluster CA by fingerprint and refuses revoked node ids). Both
//! ends require a node certificate, so a peer without one is refused during the handshake,
//! before a byte of any request is read. A handshake that does not finish within
//! `HANDSHAKE_TIMEOUT` is dropped. When the trust changes (`RpcTls::changed`), every open
//! server connection re-checks its peer and closes if the peer is no longer trusted, so a
//! revocation also ends connections made before it.
//!
//! The client is hyper's pooled client over a connector that binds each connection to the
//! node's advertise IP (as `HttpTransport` does) and then runs the TLS handshake; a failed
//! connect or handshake is `RpcFailure::Connect` (nothing was sent, a retry is safe).

use crate::network::{BoxFuture, RPC_BODY_BYTES_MAX, RpcFailure, RpcTransport};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// A TLS handshake on the RPC port must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a connected peer (its chain, own certificate first) is still trusted.
pub type TrustCheck = Arc<dyn Fn(&[CertificateDer<'static>]) -> bool + Send + Sync>;

/// How the RPC port is secured.
#[derive(Clone)]
pub struct RpcTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// Whether a connected peer is still trusted.
    pub still_trusted: TrustCheck,
    /// Bumped whenever the trust changes (a rotation, a revocation).
    pub changed: watch::Receiver<u64>,
    /// The name sent in SNI (certificates are checked by CA and node id, not by name).
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RpcTls")
    }
}

impl PartialEq for RpcTls {
    fn eq(&self, other: &RpcTls) -> bool {
        Arc::ptr_eq(&self.server, &other.server) && Arc::ptr_eq(&self.client, &other.client)
    }
}

impl Eq for RpcTls {}

type PooledClient = hyper_util::client::legacy::Client<TlsConnector, Full<Bytes>>;

/// The production transport under TLS. When the trust changes (a revocation, a rotation) the
/// connection pool is replaced, so no request rides a connection whose peer was verified
/// under the old trust.
pub struct TlsTransport {
    connector: TlsConnector,
    pool_idle: Duration,
    changed: watch::Receiver<u64>,
    /// The trust version the pool was made under, and the pool.
    client: std::sync::Mutex<(u64, PooledClient)>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl TlsTransport {
    pub fn new(
        local_ip: IpAddr,
        tls: &RpcTls,
        connect_timeout: Duration,
        pool_idle: Duration,
    ) -> TlsTransport {
        let connector = TlsConnector {
            local_ip,
            tls: tokio_rustls::TlsConnector::from(tls.client.clone()),
            server_name: tls.server_name.clone(),
            connect_timeout,
        };
        let version = *tls.changed.borrow();
        let client = pool(&connector, pool_idle);
        TlsTransport {
            connector,
            pool_idle,
            changed: tls.changed.clone(),
            client: std::sync::Mutex::new((version, client)),
        }
    }

    /// The pool for the current trust (a new one if the trust changed since the last call).
    fn client(&self) -> PooledClient {
        let version = *self.changed.borrow();
        let mut g = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != version {
            *g = (version, pool(&self.connector, self.pool_idle));
        }
        g.1.clone()
    }
}

fn pool(connector: &TlsConnector, pool_idle: Duration) -> PooledClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .build(connector.clone())
}

impl RpcTransport for TlsTransport {
    fn post(
        &self,
        addr: &str,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, RpcFailure>> {
        let client = self.client();
        let addr = addr.to_string();
        Box::pin(async move {
            let req = http::Request::post(format!("https://{addr}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| RpcFailure::Connect {
                    addr: addr.clone(),
                    msg: format!("bad address: {e}"),
                })?;
            let call = async {
                let resp = client.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        RpcFailure::Connect {
                            addr: addr.clone(),
                            msg: error_chain(&e),
                        }
                    } else {
                        RpcFailure::Transport {
                            addr: addr.clone(),
                            msg: error_chain(&e),
                        }
                    }
                })?;
                let status = resp.status();
                let buf = Limited::new(resp.into_body(), RPC_BODY_BYTES_MAX)
                    .collect()
                    .await
                    .map_err(|e| RpcFailure::Decode {
                        addr: addr.clone(),
                        msg: format!("reply body: {e}"),
                    })?
                    .to_bytes()
                    .to_vec();
                crate::network::reply(&addr, status.as_u16(), buf)
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(RpcFailure::Timeout {
                    addr: addr.clone(),
                    ms: timeout.as_millis() as u64,
                }),
            }
        })
    }
}

/// An error and its causes on one line (hyper's own message is only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(Clone)]
struct TlsConnector {
    local_ip: IpAddr,
    tls: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TlsConn;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<TlsConn>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {e}")))?;
            let sock = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if this.local_ip.is_ipv4() == addr.is_ipv4() {
                sock.bind(SocketAddr::new(this.local_ip, 0))?;
            }
            let tcp = tokio::time::timeout(this.connect_timeout, sock.connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                this.tls.connect(this.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TlsConn(TokioIo::new(tls)))
        })
    }
}

struct TlsConn(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` under TLS until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: RpcTls,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "raft RPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, tls, stop) = (acceptor.clone(), app.clone(), tls.clone(), stop.clone());
        tokio::spawn(connection(tcp, peer, acceptor, app, tls, stop));
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    tls: RpcTls,
    mut stop: watch::Receiver<bool>,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "refused a TLS handshake on the raft RPC port");
            metrics::counter!("orion_rpc_handshakes_refused_total").increment(1);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "a TLS handshake on the raft RPC port timed out");
            metrics::counter!("orion_rpc_handshakes_refused_total").increment(1);
            return;
        }
    };
    let chain: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut changed = tls.changed.clone();
    let stopping = loop {
        tokio::select! {
            _ = &mut conn => return,
            r = changed.changed() => {
                if r.is_err() {
                    // The trust is no longer updated (shutting down): serve on.
                    let _ = (&mut conn).await;
                    return;
                }
                if !(tls.still_trusted)(&chain) {
                    tracing::warn!(%peer, "closing a raft RPC connection: its peer's certificate is no longer trusted");
                    return;
                }
            }
            ok = async { stop.wait_for(|s| *s).await.is_ok() } => break ok,
        }
    };
    if stopping {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut conn).await;
    }
}
