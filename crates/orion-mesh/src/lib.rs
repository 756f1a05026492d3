//! The mesh: every node's TCP proxy for service traffic. Each ingress-mode published port
//! (on the node's `--publish-ip`) and each service VIP's target ports get a listener; every
//! new connection goes to a healthy, non-draining endpoint of the service's target port
//! anywhere in the cluster (round robin), and to the next one when a connect fails. It reads
//! nothing but the endpoint view (`orion_types::endpoint`), which the agent publishes on a
//! `watch` channel; listeners come and go as the view's services and ports do.
//!
//! HTTP ports (`"protocol": "http"`) get the client's address in `X-Forwarded-For` and
//! `Forwarded` on every request of each connection (`http` follows the requests of a
//! keep-alive connection; one it cannot follow is closed after the answers it is owed); TCP
//! ports with `proxyProtocol` send a PROXY protocol v2 header first (`proxy_protocol`).
//! Everything a peer sends is bounded: connections per service, each request head's size and
//! the time to send it, and fixed copy buffers per connection (two for TCP, up to four for
//! HTTP).
//!
//! What to do is decided by pure functions (`plan`); this module does the IO.

pub mod http;
pub mod plan;
pub mod proxy_protocol;
pub mod vip;

use orion_types::endpoint::EndpointView;
use plan::{Kind, Route};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

pub use plan::{Shortcut, Shortcuts};
pub use vip::{IpCommand, NoAddresses, VipAddresses};

/// Bounds on what one node's mesh holds. Every field has a default with its reason.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections per service on this node; more are closed at once. 10,000 at two
    /// 8 KiB buffers each bounds a service's copy buffers at 160 MiB.
    pub connections_per_service_max: usize,
    /// Size of each of the two copy buffers of a connection (tokio's default).
    pub buffer_bytes: usize,
    /// An HTTP request head larger than this answers 431 (nginx's default is 8 KiB per line,
    /// 32 KiB in all).
    pub head_bytes_max: usize,
    /// Time a client has to send its first request head on an HTTP port, and each later head
    /// from its first byte (slow-loris bound).
    pub head_timeout_ms: u64,
    /// One connect attempt to an endpoint. Endpoints are in the cluster's own network, where
    /// a connect takes well under a millisecond; a second is a dead or filtered host.
    pub connect_timeout_ms: u64,
    /// Endpoints tried for one connection before giving up.
    pub connect_attempts_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_service_max: 10_000,
            buffer_bytes: 8 * 1024,
            head_bytes_max: 32 * 1024,
            head_timeout_ms: 30_000,
            connect_timeout_ms: 1_000,
            connect_attempts_max: 3,
        }
    }
}

/// Where this node's mesh listens and connects from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ingress-mode published ports listen here (the node's `--publish-ip`).
    pub publish_ip: IpAddr,
    /// Outgoing connections to endpoints bind this address first (the node's advertise
    /// address), so partition rules between loopback "hosts" cut the right traffic.
    pub source_ip: Option<IpAddr>,
    /// Whether to hold and serve each service's VIP.
    pub serve_vips: bool,
    /// This node's own endpoints at their containers' addresses (kept by the agent from the
    /// engine): a connection to one skips the engine's port publishing (on loopback, Docker's
    /// userland proxy: a whole process hop). `None`: always the published address.
    pub shortcuts: Option<watch::Receiver<Arc<Shortcuts>>>,
    pub limits: Limits,
}

/// Listener bind failures are retried this often (the address may be held by a container
/// that is being replaced, or a VIP being added).
const RETRY_MS: u64 = 2_000;

/// Counters a test or `/metrics` can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections being proxied now.
    pub active: AtomicUsize,
    /// Connections closed at once: no endpoint, all connects failed, over the service's limit.
    pub refused: AtomicUsize,
}

/// A running mesh. Dropping it stops the listeners (connections in flight finish);
/// `shutdown` also releases the VIPs it added.
pub struct Mesh {
    manager: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    stats: Arc<Stats>,
    listening: watch::Receiver<BTreeSet<SocketAddr>>,
}

impl Mesh {
    /// Starts the mesh on the current tokio runtime.
    pub fn spawn(
        view: watch::Receiver<Arc<EndpointView>>,
        settings: Settings,
        addresses: Box<dyn VipAddresses>,
    ) -> Mesh {
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = oneshot::channel();
        let (listening_tx, listening) = watch::channel(BTreeSet::new());
        let manager = Manager {
            settings: Arc::new(settings),
            stats: stats.clone(),
            addresses,
            listeners: BTreeMap::new(),
            services: HashMap::new(),
            vips: BTreeSet::new(),
            failed: BTreeMap::new(),
            listening: listening_tx,
        };
        let manager = tokio::spawn(manager.run(view, stop_rx));
        Mesh {
            manager: Some(manager),
            stop: Some(stop),
            stats,
            listening,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The addresses listened on now; changes after each reconcile.
    pub fn listening(&self) -> watch::Receiver<BTreeSet<SocketAddr>> {
        self.listening.clone()
    }

    /// Stops the listeners and removes the VIPs this mesh added.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(manager) = self.manager.take() {
            let _ = manager.await;
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(m) = &self.manager {
            m.abort();
        }
    }
}

/// Aborts a listener's accept loop when dropped.
struct Listener {
    route: Route,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Manager {
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    addresses: Box<dyn VipAddresses>,
    listeners: BTreeMap<SocketAddr, Listener>,
    /// One connection budget per service, shared by its listeners.
    services: HashMap<String, Arc<Semaphore>>,
    /// VIPs this mesh added.
    vips: BTreeSet<Ipv4Addr>,
    /// Addresses that failed to bind, with the last error (logged once per change).
    failed: BTreeMap<SocketAddr, String>,
    listening: watch::Sender<BTreeSet<SocketAddr>>,
}

impl Manager {
    async fn run(
        mut self,
        mut view: watch::Receiver<Arc<EndpointView>>,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let current = view.borrow_and_update().clone();
            self.reconcile(&current, &view);
            let retry = tokio::time::sleep(Duration::from_millis(RETRY_MS));
            tokio::select! {
                changed = view.changed() => if changed.is_err() { break },
                _ = retry, if !self.failed.is_empty() => {}
                _ = &mut stop => break,
            }
        }
        self.listeners.clear();
        for ip in std::mem::take(&mut self.vips) {
            if let Err(e) = self.addresses.remove(ip) {
                tracing::warn!(%ip, error = %e, "mesh: could not remove VIP");
            }
        }
        self.listening.send_replace(BTreeSet::new());
    }

    fn reconcile(&mut self, view: &EndpointView, rx: &watch::Receiver<Arc<EndpointView>>) {
        let s = self.settings.clone();
        let desired = plan::listeners(view, s.publish_ip, s.serve_vips);
        let want_vips = if s.serve_vips {
            plan::vips(view)
        } else {
            BTreeSet::new()
        };
        for ip in want_vips.difference(&self.vips.clone()) {
            match self.addresses.add(*ip) {
                Ok(()) => {
                    self.vips.insert(*ip);
                }
                Err(e) => tracing::warn!(%ip, error = %e, "mesh: could not add VIP"),
            }
        }
        // Gone or changed listeners stop first, so a changed one can bind again.
        self.listeners.retain(|addr, l| {
            let keep = desired.get(addr) == Some(&l.route);
            if !keep {
                tracing::info!(%addr, service = %l.route.service, "mesh: listener closed");
            }
            keep
        });
        self.failed.retain(|addr, _| desired.contains_key(addr));
        for (addr, route) in &desired {
            if self.listeners.contains_key(addr) {
                continue;
            }
            match bind(*addr) {
                Ok(listener) => {
                    let budget = self
                        .services
                        .entry(route.service.clone())
                        .or_insert_with(|| {
                            Arc::new(Semaphore::new(s.limits.connections_per_service_max))
                        })
                        .clone();
                    let ctx = Arc::new(Ctx {
                        route: route.clone(),
                        view: rx.clone(),
                        settings: s.clone(),
                        stats: self.stats.clone(),
                        turn: AtomicUsize::new(0),
                        budget,
                    });
                    tracing::info!(%addr, service = %route.service, target = route.target_port, "mesh: listening");
                    self.failed.remove(addr);
                    self.listeners.insert(
                        *addr,
                        Listener {
                            route: route.clone(),
                            task: tokio::spawn(accept_loop(listener, ctx)),
                        },
                    );
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.failed.get(addr) != Some(&e) {
                        tracing::warn!(%addr, service = %route.service, error = %e, "mesh: cannot listen");
                    }
                    self.failed.insert(*addr, e);
                }
            }
        }
        let live: BTreeSet<&String> = desired.values().map(|r| &r.service).collect();
        self.services.retain(|id, _| live.contains(id));
        for ip in self
            .vips
            .difference(&want_vips)
            .copied()
            .collect::<Vec<_>>()
        {
            match self.addresses.remove(ip) {
                Ok(()) => {
                    self.vips.remove(&ip);
                }
                Err(e) => tracing::warn!(%ip, error = %e, "mesh: could not remove VIP"),
            }
        }
        self.listening
            .send_replace(self.listeners.keys().copied().collect());
    }
}

/// A listening socket with SO_REUSEPORT: every agent on one kernel (the test clusters) can
/// serve the same VIP and port, and the kernel spreads connections among them.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What one listener's connections share.
struct Ctx {
    route: Route,
    view: watch::Receiver<Arc<EndpointView>>,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    /// Round robin position.
    turn: AtomicUsize,
    budget: Arc<Semaphore>,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "mesh: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.budget.clone().try_acquire_owned() else {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.stats.active.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = serve(client, peer, &ctx).await {
                tracing::debug!(%peer, service = %ctx.route.service, error = %e, "mesh: connection ended");
            }
            ctx.stats.active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("no healthy endpoint answered")]
    NoEndpoint,
    #[error("request head: {0}")]
    Head(&'static str),
}

async fn serve(mut client: TcpStream, peer: SocketAddr, ctx: &Ctx) -> Result<(), ServeError> {
    let limits = &ctx.settings.limits;
    let _ = client.set_nodelay(true);
    let local = client.local_addr()?;
    let turn = ctx.turn.fetch_add(1, Ordering::Relaxed);
    let candidates = {
        let none = Shortcuts::new();
        let shortcuts = ctx.settings.shortcuts.as_ref().map(|s| s.borrow());
        let view = ctx.view.borrow();
        plan::candidates(
            &view,
            &ctx.route,
            turn,
            limits.connect_attempts_max,
            shortcuts.as_deref().map_or(&none, |s| &**s),
        )
    };
    // What goes to the endpoint before the client's remaining bytes. An HTTP port reads the
    // first head while it dials (one wait instead of two on a new connection's path); a head
    // that cannot be followed is answered and the endpoint's connection dropped unused.
    let mut http = None;
    let (prefix, upstream) = match ctx.route.kind {
        Kind::Tcp => (Vec::new(), dial(candidates, ctx).await),
        Kind::ProxyV2 => (
            proxy_protocol::header(peer, local),
            dial(candidates, ctx).await,
        ),
        Kind::Http => {
            let mut requests = Requests {
                stream: http::RequestStream::new(peer),
                pending: Vec::new(),
                ended: false,
            };
            let (head, upstream) = tokio::join!(
                read_first_head(&mut client, &mut requests, limits),
                dial(candidates, ctx)
            );
            match head? {
                Ok(bytes) => {
                    http = Some(requests);
                    (bytes, upstream)
                }
                Err((status, why)) => {
                    respond(&mut client, status).await;
                    return Err(ServeError::Head(why));
                }
            }
        }
    };
    let Some(mut upstream) = upstream else {
        ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
        if ctx.route.kind == Kind::Http {
            respond(&mut client, "503 Service Unavailable").await;
        }
        return Err(ServeError::NoEndpoint);
    };
    let _ = upstream.set_nodelay(true);
    if !prefix.is_empty() {
        upstream.write_all(&prefix).await?;
    }
    match http {
        None => {
            tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                limits.buffer_bytes,
                limits.buffer_bytes,
            )
            .await?;
        }
        Some(mut requests) => {
            let ended = {
                let (client_r, mut client_w) = client.split();
                let (upstream_r, mut upstream_w) = upstream.split();
                let up = forward_requests(client_r, &mut upstream_w, &mut requests, limits);
                let down = async {
                    let mut from =
                        tokio::io::BufReader::with_capacity(limits.buffer_bytes, upstream_r);
                    tokio::io::copy_buf(&mut from, &mut client_w).await?;
                    client_w.shutdown().await
                };
                tokio::try_join!(up, down)?;
                requests.ended
            };
            if ended {
                // The client may still be sending: discard it before closing, so the close
                // does not reset the connection under the answers just sent.
                linger(&mut client).await;
                return Err(ServeError::Head("unparseable request after the first"));
            }
        }
    }
    Ok(())
}

/// Connects to the first of `candidates` that answers (each within the connect timeout).
async fn dial(candidates: Vec<plan::Dial>, ctx: &Ctx) -> Option<TcpStream> {
    let limits = &ctx.settings.limits;
    for plan::Dial { addr, direct } in candidates {
        let source = if direct { None } else { ctx.settings.source_ip };
        match timeout(
            Duration::from_millis(limits.connect_timeout_ms),
            connect(addr, source),
        )
        .await
        {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "mesh: connect failed, trying the next")
            }
            Err(_) => tracing::debug!(%addr, "mesh: connect timed out, trying the next"),
        }
    }
    None
}

/// An HTTP connection's requests: where the stream is, the client's bytes not taken yet, and
/// whether it ended on something unparseable.
struct Requests {
    stream: http::RequestStream,
    pending: Vec<u8>,
    ended: bool,
}

impl Requests {
    /// Feeds the pending bytes until the stream needs more; what goes to the endpoint is
    /// appended to `out`.
    fn drive(&mut self, out: &mut Vec<u8>) -> Result<(), http::HeadError> {
        let mut at = 0;
        let result = loop {
            match self.stream.feed(&self.pending[at..], out) {
                Ok(0) => break Ok(()),
                Ok(n) => at += n,
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..at);
        result
    }
}

/// Reads the first request head (bounded in size and time) and returns it rewritten, with
/// whatever the client sent after it that could be followed; or the status to answer.
async fn read_first_head(
    client: &mut TcpStream,
    requests: &mut Requests,
    limits: &Limits,
) -> Result<Result<Vec<u8>, (&'static str, &'static str)>, ServeError> {
    let deadline = Instant::now() + Duration::from_millis(limits.head_timeout_ms);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match requests.drive(&mut out) {
            // Pipelined bytes after a good first request that cannot be followed: the good
            // part goes, then the connection ends.
            Err(_) if !out.is_empty() => {
                requests.ended = true;
                return Ok(Ok(out));
            }
            Err(http::HeadError::Malformed) => return Ok(Err(("400 Bad Request", "malformed"))),
            Err(http::HeadError::TooManyHeaders) => {
                return Ok(Err((
                    "431 Request Header Fields Too Large",
                    "too many headers",
                )));
            }
            Ok(()) if !out.is_empty() => return Ok(Ok(out)),
            Ok(()) => {}
        }
        let buffered = requests.pending.len();
        if buffered >= limits.head_bytes_max {
            return Ok(Err((
                "431 Request Header Fields Too Large",
                "head too large",
            )));
        }
        let room = (limits.head_bytes_max - buffered).min(chunk.len());
        let n = match timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Ok(r) => r?,
            Err(_) => return Ok(Err(("408 Request Timeout", "head timed out"))),
        };
        if n == 0 {
            return Err(ServeError::Head("closed before a full head"));
        }
        requests.pending.extend_from_slice(&chunk[..n]);
    }
}

/// The client-to-endpoint half of an HTTP connection after its first head: every further
/// request head is rewritten too. A head is bounded in size and, from its first byte, in time
/// (an idle keep-alive connection waits as long as the endpoint keeps it). Anything that
/// cannot be followed (`http::HeadError`, an oversized or slow head) ends this half: the
/// endpoint sees the end of the requests and finishes the answers it owes.
async fn forward_requests(
    mut client: tokio::net::tcp::ReadHalf<'_>,
    upstream: &mut tokio::net::tcp::WriteHalf<'_>,
    requests: &mut Requests,
    limits: &Limits,
) -> io::Result<()> {
    let mut chunk = vec![0u8; limits.buffer_bytes];
    let mut out = Vec::with_capacity(limits.buffer_bytes);
    let mut head_deadline = None;
    while !requests.ended {
        let in_head = requests.stream.in_head();
        let room = if in_head {
            let buffered = requests.pending.len();
            if buffered >= limits.head_bytes_max {
                requests.ended = true;
                break;
            }
            (limits.head_bytes_max - buffered).min(chunk.len())
        } else {
            chunk.len()
        };
        // The head's clock starts with its first byte.
        if !in_head || requests.pending.is_empty() {
            head_deadline = None;
        } else if head_deadline.is_none() {
            head_deadline = Some(Instant::now() + Duration::from_millis(limits.head_timeout_ms));
        }
        let read = client.read(&mut chunk[..room]);
        let n = match head_deadline {
            Some(d) => match timeout_at(d, read).await {
                Ok(r) => r?,
                Err(_) => {
                    requests.ended = true;
                    break;
                }
            },
            None => read.await?,
        };
        if n == 0 {
            break;
        }
        requests.pending.extend_from_slice(&chunk[..n]);
        if requests.drive(&mut out).is_err() {
            requests.ended = true;
        }
        if !out.is_empty() {
            upstream.write_all(&out).await?;
            out.clear();
        }
    }
    upstream.shutdown().await
}

async fn respond(client: &mut TcpStream, status: &str) {
    let body = format!("{status}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(Duration::from_secs(1), client.write_all(msg.as_bytes())).await;
    // A lingering close: closing with unread bytes would reset the connection and the client
    // could lose the answer; discard what it still sends, bounded in bytes and time.
    let _ = client.shutdown().await;
    linger(client).await;
}

/// Reads and discards what the client still sends, bounded in bytes and time.
async fn linger(client: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = timeout(Duration::from_secs(1), async {
        let mut left = LINGER_BYTES_MAX;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What a lingering close discards at most before it closes anyway.
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// Connects from `source` when it is a specific address of the same family.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = source
        && !src.is_unspecified()
        && src.is_ipv4() == addr.is_ipv4()
    {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    socket.connect(addr).await
}

#[cfg(test)]
mod tests;
