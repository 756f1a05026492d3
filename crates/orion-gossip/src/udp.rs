//! The real network: a UDP socket that also hears the kernel say "nothing listens there".
//!
//! When a member's process dies and its host stays up (a crash, an OOM kill, `kill -9`), the
//! host answers every datagram sent to the dead port with an ICMP port-unreachable. With
//! `IP_RECVERR` (`IPV6_RECVERR`) on, Linux queues that answer on our socket's error queue, with
//! the destination of the refused datagram and the first bytes of it, quoted back. A *stalled*
//! process never causes one: its socket stays open and the kernel queues (or silently drops)
//! what arrives. So a refusal tells a dead process from a slow one, which timing alone cannot,
//! and the engine may declare the member down at once instead of after the suspicion timeout
//! (ARCHITECTURE.md, "Refusals: telling a dead process from a stalled one").
//!
//! A refusal counts only if the bytes it quotes are the head of a datagram we really sent to
//! that address recently (the last [`RECENT_SENDS_MAX`] sends). With sealed gossip those bytes
//! hold a random nonce, so someone off the path cannot forge a refusal; someone on the path
//! could as well drop the member's packets, which also gets it declared dead. A host gone
//! entirely (power, network) sends no refusal: then the timing path decides, as before.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Bytes of each sent datagram remembered to check a quote against: the sealed header's
/// version, key id, time and 12 random nonce bytes, and the start of the ciphertext.
const QUOTE_BYTES: usize = 32;
/// A quote shorter than this proves nothing (ICMP must quote at least 8 bytes).
const QUOTE_MIN: usize = 8;
/// Sends remembered; a refusal arrives within a round trip, so this covers far more than the
/// window even for a member gossiping with a thousand others.
pub const RECENT_SENDS_MAX: usize = 1024;

struct Sent {
    to: SocketAddr,
    len: usize,
    head: [u8; QUOTE_BYTES],
}

/// The datagrams sent last, to check a refusal's quote against. Pure: no IO, no clock.
#[derive(Default)]
pub struct RecentSends {
    sent: VecDeque<Sent>,
}

impl RecentSends {
    pub fn record(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.sent.len() >= RECENT_SENDS_MAX {
            self.sent.pop_front();
        }
        let mut head = [0u8; QUOTE_BYTES];
        let n = datagram.len().min(QUOTE_BYTES);
        head[..n].copy_from_slice(&datagram[..n]);
        self.sent.push_back(Sent {
            to,
            len: datagram.len(),
            head,
        });
    }

    /// Whether `quote` (the start of a refused datagram, as the ICMP answer quotes it) is the
    /// head of a datagram recently sent to `to`.
    pub fn quotes_a_send(&self, to: SocketAddr, quote: &[u8]) -> bool {
        self.sent.iter().rev().any(|s| {
            // The quote must cover the first 8 bytes (or the whole of a shorter datagram).
            let need = s.len.min(QUOTE_MIN);
            let n = s.len.min(QUOTE_BYTES).min(quote.len());
            s.to == to && n > 0 && n >= need && s.head[..n] == quote[..n]
        })
    }
}

/// A bound UDP socket that reports refusals ([`UdpTransport::next_refusal`]).
pub struct UdpTransport {
    socket: UdpSocket,
    recent: Mutex<RecentSends>,
    /// The kernel queues refusals for us (`IP_RECVERR` could be set).
    refusals: bool,
}

impl UdpTransport {
    pub async fn bind(addr: SocketAddr) -> io::Result<UdpTransport> {
        Ok(UdpTransport::from_socket(UdpSocket::bind(addr).await?))
    }

    /// Wraps a bound socket and asks the kernel to queue refusals on it (Linux); elsewhere, or
    /// if that fails, [`UdpTransport::next_refusal`] never answers and timing alone decides.
    pub fn from_socket(socket: UdpSocket) -> UdpTransport {
        let refusals = match enable_refusals(&socket) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "refusals off: the kernel will not report them");
                false
            }
        };
        UdpTransport {
            socket,
            recent: Mutex::new(RecentSends::default()),
            refusals,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends without waiting, as `try_send_to`. A refusal of an earlier datagram may surface
    /// as this send's error (the socket's pending error); the datagram is then sent again.
    pub fn send_datagram(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let sent = match self.socket.try_send_to(buf, to) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.socket.try_send_to(buf, to)
            }
            r => r,
        };
        if sent.is_ok() && self.refusals {
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(to, buf);
        }
        sent
    }

    /// Receives the next datagram; a pending refusal surfacing here is skipped (it is read
    /// from the error queue by [`UdpTransport::next_refusal`]).
    pub async fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            match self.socket.recv_from(buf).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                r => return r,
            }
        }
    }

    /// Waits for the next refusal that quotes a datagram we sent, and returns the address
    /// that refused it. Never answers where refusals are not reported.
    pub async fn next_refusal(&self) -> io::Result<SocketAddr> {
        if !self.refusals {
            return std::future::pending().await;
        }
        loop {
            let refused = self
                .socket
                .async_io(Interest::ERROR, || read_error_queue(&self.socket))
                .await?;
            let Some((to, quote)) = refused else {
                continue;
            };
            let ours = self
                .recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .quotes_a_send(to, &quote);
            if ours {
                return Ok(to);
            }
            tracing::debug!(%to, "a refusal that quotes no datagram we sent: ignored");
        }
    }
}

/// Sets `IP_RECVERR` (or `IPV6_RECVERR`): ICMP errors about our datagrams are queued on the
/// socket's error queue instead of being dropped (unconnected UDP sockets).
#[cfg(target_os = "linux")]
fn enable_refusals(socket: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name) = if socket.local_addr()?.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open for the call (the socket is borrowed), and the option
    // value points to a c_int that lives across the call, with its size as the length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn enable_refusals(_: &UdpSocket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "refusals are read on Linux only",
    ))
}

/// Reads one entry of the error queue: `Some((destination, quoted bytes))` for a port
/// unreachable, `None` for another error; `WouldBlock` when the queue is empty.
#[cfg(target_os = "linux")]
fn read_error_queue(socket: &UdpSocket) -> io::Result<Option<(SocketAddr, Vec<u8>)>> {
    use socket2::{MaybeUninitSlice, MsgHdrMut, SockAddr, SockRef};
    use std::mem::MaybeUninit;
    let sock = SockRef::from(socket);
    let mut data = [MaybeUninit::<u8>::uninit(); QUOTE_BYTES];
    let mut control = [MaybeUninit::<u8>::uninit(); 256];
    // Room for either family; the kernel writes the refused datagram's destination here.
    let mut name = SockAddr::from(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)));
    let (n, control_len) = {
        let mut bufs = [MaybeUninitSlice::new(&mut data)];
        let mut msg = MsgHdrMut::new()
            .with_addr(&mut name)
            .with_buffers(&mut bufs)
            .with_control(&mut control);
        let n = sock.recvmsg(&mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT)?;
        (n, msg.control_len())
    };
    let init = |b: &[MaybeUninit<u8>]| -> Vec<u8> {
        // recvmsg initialised the first bytes it reported; copy them out bytewise.
        b.iter()
            .map(|x| {
                // SAFETY: only the reported prefix is passed in, which the kernel wrote.
                unsafe { x.assume_init() }
            })
            .collect()
    };
    let quote = init(&data[..n.min(QUOTE_BYTES)]);
    let control = init(&control[..control_len.min(control.len())]);
    let Some(to) = name.as_socket() else {
        return Ok(None);
    };
    Ok(is_port_unreachable(&control).then_some((to, quote)))
}

#[cfg(not(target_os = "linux"))]
fn read_error_queue(_: &UdpSocket) -> io::Result<Option<(SocketAddr, Vec<u8>)>> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// Whether the control messages of an error-queue read carry a `sock_extended_err` saying
/// "connection refused" from ICMP or ICMPv6 (a port unreachable). Parsed from the bytes as
/// Linux lays them out: `cmsghdr { len: usize, level: i32, type: i32 }`, data aligned to usize.
#[cfg(target_os = "linux")]
fn is_port_unreachable(control: &[u8]) -> bool {
    const WORD: usize = std::mem::size_of::<usize>();
    const HDR: usize = WORD + 8;
    let align = |n: usize| n.div_ceil(WORD) * WORD;
    let mut at = 0;
    while at + HDR <= control.len() {
        let word = |i: usize| {
            control[at + i..at + i + 4]
                .try_into()
                .map(i32::from_ne_bytes)
        };
        let len = control[at..at + WORD]
            .try_into()
            .map(usize::from_ne_bytes)
            .unwrap_or(0);
        let (Ok(level), Ok(kind)) = (word(WORD), word(WORD + 4)) else {
            return false;
        };
        if len < HDR || at + len > control.len() {
            return false;
        }
        let data = &control[at + align(HDR)..at + len];
        let ours = (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
            || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR);
        if ours && data.len() >= 8 {
            let errno = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            let origin = data[4];
            return errno == libc::ECONNREFUSED as u32
                && (origin == libc::SO_EE_ORIGIN_ICMP || origin == libc::SO_EE_ORIGIN_ICMP6);
        }
        at += align(len);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_refusal_counts_only_if_it_quotes_a_datagram_we_sent_there() {
        let mut r = RecentSends::default();
        let sent: Vec<u8> = (0..100).collect();
        r.record(addr(1), &sent);
        r.record(addr(2), b"short");
        let check = |to, quote: &[u8], want: bool, why: &str| {
            assert_eq!(r.quotes_a_send(to, quote), want, "{why}");
        };
        check(addr(1), &sent[..32], true, "the head of what we sent");
        check(addr(1), &sent[..64], true, "a longer quote");
        check(addr(1), &sent[..8], true, "the 8 bytes ICMP must quote");
        check(addr(1), &sent[..7], false, "too short to prove anything");
        check(addr(2), b"short", true, "a datagram shorter than the check");
        check(addr(3), &sent[..32], false, "sent elsewhere");
        let mut forged = sent[..32].to_vec();
        forged[20] ^= 1;
        check(addr(1), &forged, false, "one byte off (a forged quote)");
        check(addr(1), b"", false, "no quote");
    }

    #[test]
    fn only_the_last_sends_are_remembered() {
        let mut r = RecentSends::default();
        r.record(addr(1), b"the first datagram");
        for i in 0..RECENT_SENDS_MAX {
            r.record(addr(2), &i.to_be_bytes());
        }
        assert!(!r.quotes_a_send(addr(1), b"the first datagram"));
        assert!(r.quotes_a_send(addr(2), &(RECENT_SENDS_MAX - 1).to_be_bytes()));
    }

    /// Sends as the engine does (without waiting), retrying while a fresh socket's readiness
    /// is not known to tokio yet.
    async fn send(t: &UdpTransport, buf: &[u8], to: SocketAddr) {
        for _ in 0..1000 {
            match t.send_datagram(buf, to) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await
                }
                r => {
                    r.expect("send");
                    return;
                }
            }
        }
        panic!("the socket never became writable");
    }

    /// The real kernel: a datagram to a port nobody holds is refused, and the refusal names
    /// the port; one to a bound but idle socket (a stalled process) is not.
    #[tokio::test]
    async fn the_kernel_refuses_a_closed_port_and_not_an_idle_one() {
        let me = UdpTransport::bind(addr(0)).await.expect("bind");
        let idle = std::net::UdpSocket::bind(addr(0)).expect("bind idle");
        let closed = {
            let s = std::net::UdpSocket::bind(addr(0)).expect("bind");
            s.local_addr().expect("addr")
        };
        let idle_addr = idle.local_addr().expect("addr");
        send(&me, b"to a live but silent socket", idle_addr).await;
        send(&me, b"to a port nobody holds any more", closed).await;
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), me.next_refusal())
            .await
            .expect("a refusal within 5 s")
            .expect("read the error queue");
        assert_eq!(refused, closed);
        // Nothing more: the idle socket refused nothing.
        let more =
            tokio::time::timeout(std::time::Duration::from_millis(200), me.next_refusal()).await;
        assert!(more.is_err(), "an idle socket is not a dead one: {more:?}");
        // The socket still sends and receives after the refusal.
        let peer = UdpTransport::bind(addr(0)).await.expect("bind");
        send(&me, b"hello", peer.local_addr().expect("addr")).await;
        let mut buf = [0u8; 16];
        let (n, _) = peer.recv_datagram(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"hello");
    }
}
