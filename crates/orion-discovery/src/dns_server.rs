//! The DNS server's IO: UDP and TCP listeners on one address each, answering with
//! `dns::answer` from the latest endpoint view, and forwarding other names to the host's
//! resolvers (`/etc/resolv.conf`) with a timeout.
//!
//! Bounds: a UDP datagram is read into a buffer of `dns::UDP_PAYLOAD_MAX` + 1 bytes (longer
//! ones are cut and answered FORMERR or dropped); at most `FORWARDS_IN_FLIGHT_MAX` forwards at
//! once (more get SERVFAIL at once); at most `TCP_CONNECTIONS_MAX` TCP connections, each idle
//! at most `TCP_IDLE`, each message at most 65,535 bytes (its length prefix).
//!
//! Sockets are opened with SO_REUSEPORT, so agents of one cluster on one host (the quick
//! start's two nodes on 0.0.0.0) can all serve port 53: their answers are the same.

use crate::dns::{self, Answer};
use orion_types::endpoint::EndpointView;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// A forwarded query waits at most this long for all upstreams together: glibc's resolver
/// gives up after 5 s, so the client still hears SERVFAIL rather than nothing.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwards in flight at once (each holds a socket and a task).
pub const FORWARDS_IN_FLIGHT_MAX: usize = 256;
/// TCP connections at once, per listener.
pub const TCP_CONNECTIONS_MAX: usize = 64;
/// A TCP connection with no complete query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most upstream resolvers used (resolv.conf allows three).
pub const UPSTREAMS_MAX: usize = 3;

/// The nameservers of a resolv.conf text, port 53, at most `UPSTREAMS_MAX`, without those in
/// `exclude` (our own listen addresses: forwarding to ourselves would loop).
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[SocketAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| !exclude.contains(a))
        .take(UPSTREAMS_MAX)
        .collect()
}

/// Opens the UDP socket and the TCP listener of one address (SO_REUSEADDR, SO_REUSEPORT).
pub fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(addr);
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    udp.set_reuse_address(true)?;
    udp.set_reuse_port(true)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_reuse_port(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(128)?;
    Ok((
        UdpSocket::from_std(udp.into())?,
        TcpListener::from_std(tcp.into())?,
    ))
}

/// What every listener shares.
#[derive(Clone)]
pub struct Shared {
    pub view: watch::Receiver<Arc<EndpointView>>,
    pub upstreams: Arc<Vec<SocketAddr>>,
    /// Address outgoing forwards bind (the node's own, so loopback partitions cut the right
    /// traffic); `None`: any.
    pub local: Option<std::net::IpAddr>,
    forwards: Arc<Semaphore>,
}

impl Shared {
    pub fn new(
        view: watch::Receiver<Arc<EndpointView>>,
        upstreams: Vec<SocketAddr>,
        local: Option<std::net::IpAddr>,
    ) -> Shared {
        Shared {
            view,
            upstreams: Arc::new(upstreams),
            local,
            forwards: Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT_MAX)),
        }
    }
}

/// Serves one address until `stop` turns true. Logs and returns if it cannot bind.
pub async fn serve(addr: SocketAddr, shared: Shared, mut stop: watch::Receiver<bool>) {
    let (udp, tcp) = match bind(addr) {
        Ok(s) => s,
        Err(e) => {
            warn!(%addr, error = %e, "cannot serve DNS here");
            return;
        }
    };
    info!(%addr, "serving DNS (UDP and TCP)");
    let udp = Arc::new(udp);
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = serve_udp(udp, shared.clone()) => {}
        _ = serve_tcp(tcp, shared) => {}
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Shared) {
    let mut buf = vec![0u8; dns::UDP_PAYLOAD_MAX + 1];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "DNS recv");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let query = &buf[..n];
        let view = shared.view.borrow().clone();
        match dns::answer(query, &view, true) {
            Answer::Reply(b) => {
                let _ = sock.send_to(&b, from).await;
            }
            Answer::Drop => {}
            Answer::Forward => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    if let Some(b) = servfail(query) {
                        let _ = sock.send_to(&b, from).await;
                    }
                    continue;
                };
                let query = query.to_vec();
                let sock = sock.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let reply = forward(&query, &shared, false).await;
                    if let Some(b) = reply.or_else(|| servfail(&query)) {
                        let _ = sock.send_to(&b, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Shared) {
    let conns = Arc::new(Semaphore::new(TCP_CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = serve_conn(stream, shared).await;
            drop(permit);
        });
    }
}

async fn serve_conn(mut stream: TcpStream, shared: Shared) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let len = usize::from(len?);
        let mut query = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let view = shared.view.borrow().clone();
        let reply = match dns::answer(&query, &view, false) {
            Answer::Reply(b) => Some(b),
            Answer::Drop => None,
            Answer::Forward => match shared.forwards.clone().try_acquire_owned() {
                Ok(_permit) => forward(&query, &shared, true)
                    .await
                    .or_else(|| servfail(&query)),
                Err(_) => servfail(&query),
            },
        };
        let Some(b) = reply else { return Ok(()) };
        let Ok(n) = u16::try_from(b.len()) else {
            return Ok(());
        };
        stream.write_u16(n).await?;
        stream.write_all(&b).await?;
    }
}

/// SERVFAIL for a query we could not forward, if it has a header.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    let m = Message::from_vec(query).ok()?;
    let mut out = Message::error_msg(m.id(), m.op_code(), ResponseCode::ServFail);
    out.set_message_type(MessageType::Response)
        .set_recursion_desired(m.recursion_desired())
        .set_recursion_available(true);
    out.add_queries(m.queries().iter().cloned());
    out.to_vec().ok()
}

/// Asks the upstreams in turn within `FORWARD_TIMEOUT` altogether; the first reply that
/// parses and carries the query's id is passed back as it came.
async fn forward(query: &[u8], shared: &Shared, tcp: bool) -> Option<Vec<u8>> {
    let id = query.get(..2)?.to_vec();
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    for up in shared.upstreams.iter() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let res = tokio::time::timeout(left, async {
            if tcp {
                forward_tcp(query, *up, shared.local).await
            } else {
                forward_udp(query, *up, shared.local).await
            }
        })
        .await;
        match res {
            Ok(Ok(b)) if b.get(..2) == Some(&id[..]) => return Some(b),
            Ok(Ok(_)) => debug!(upstream = %up, "upstream reply with another id"),
            Ok(Err(e)) => debug!(upstream = %up, error = %e, "upstream failed"),
            Err(_) => debug!(upstream = %up, "upstream timed out"),
        }
    }
    None
}

fn local_for(up: SocketAddr, local: Option<std::net::IpAddr>) -> SocketAddr {
    // Bind our own address only when it can reach the upstream (loopback to loopback).
    match local {
        Some(ip) if ip.is_loopback() == up.ip().is_loopback() && ip.is_ipv4() == up.is_ipv4() => {
            SocketAddr::new(ip, 0)
        }
        _ if up.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
        _ => SocketAddr::from(([0u16; 8], 0)),
    }
}

async fn forward_udp(
    query: &[u8],
    up: SocketAddr,
    local: Option<std::net::IpAddr>,
) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(local_for(up, local)).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; dns::UDP_PAYLOAD_MAX];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn forward_tcp(
    query: &[u8],
    up: SocketAddr,
    local: Option<std::net::IpAddr>,
) -> std::io::Result<Vec<u8>> {
    let sock = if up.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(local_for(up, local))?;
    let mut stream = sock.connect(up).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    stream.write_u16(len).await?;
    stream.write_all(query).await?;
    let n = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver  10.0.0.2 \nnameserver bogus\nnameserver ::1\nnameserver 10.0.0.3\noptions edns0\n";
        let me: SocketAddr = "10.0.0.2:53".parse().unwrap();
        let got = upstreams_from_resolv_conf(text, &[me]);
        let want: Vec<SocketAddr> = ["127.0.0.53:53", "[::1]:53", "10.0.0.3:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    /// A real round trip over UDP and TCP on loopback: our names answered, others forwarded
    /// to an upstream (a second instance of the server standing in for the host's resolver).
    #[tokio::test]
    async fn serves_udp_and_tcp_and_forwards() {
        use hickory_proto::op::{Message, Query};
        use hickory_proto::rr::{Name, RecordType};
        let mut view = EndpointView::default();
        view.nodes
            .insert("n1".into(), "192.168.7.1".parse().unwrap());
        let (_tx, rx) = watch::channel(Arc::new(view));
        let (_stop_tx, stop) = watch::channel(false);
        // The "upstream" knows n1 too; the front one forwards `n1.node.orion.x` nowhere but
        // asks it for `example.` names.
        let up: SocketAddr = "127.0.104.20:5353".parse().unwrap();
        let front: SocketAddr = "127.0.104.21:5353".parse().unwrap();
        tokio::spawn(serve(
            up,
            Shared::new(rx.clone(), vec![], None),
            stop.clone(),
        ));
        tokio::spawn(serve(
            front,
            Shared::new(rx, vec![up], Some(front.ip())),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let q = |name: &str| {
            let mut m = Message::new();
            m.set_id(99);
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            m.to_vec().unwrap()
        };
        let udp = UdpSocket::bind("127.0.104.22:0").await.unwrap();
        udp.send_to(&q("n1.node.orion."), front).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), udp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.answers().len(), 1);
        // Forwarded: the upstream has no upstream of its own, so it answers SERVFAIL, which
        // comes back through the front one with the query's id.
        udp.send_to(&q("example."), front).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.id(), 99);
        assert_eq!(m.response_code(), hickory_proto::op::ResponseCode::ServFail);
        // TCP.
        let mut s = TcpStream::connect(front).await.unwrap();
        let query = q("n1.node.orion.");
        s.write_u16(query.len() as u16).await.unwrap();
        s.write_all(&query).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut b = vec![0u8; usize::from(n)];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(Message::from_vec(&b).unwrap().answers().len(), 1);
    }
}
