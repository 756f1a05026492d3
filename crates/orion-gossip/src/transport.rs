//! The datagram transport the gossip engine talks through: a small trait with the UDP socket
//! as its one real implementation, so a simulator can run many engines over an in-memory
//! network in one thread (with delay, loss and partitions of its own making).
//!
//! Sending is synchronous and never waits, as UDP's `try_send_to`: the engine sends from
//! inside a short synchronous turn, and a datagram that cannot be queued is lost and counted
//! (`GossipStats::send_errors`), exactly as a full socket buffer loses it. Receiving is the one
//! await, in the receive task, which feeds the engine's bounded input queue.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use crate::udp::UdpTransport;

/// What the gossip engine needs from a network: send a datagram to an address, receive the
/// next datagram and its sender, and know its own address.
///
/// Implementations must keep datagram boundaries (one `send_to` is at most one `recv_from`,
/// whole or lost) and may lose, delay, duplicate or reorder datagrams: SWIM is built for that.
pub trait Transport: Send + Sync + 'static {
    /// The address this transport receives on (peers send to it).
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends one datagram to `to` without waiting; returns the bytes sent. An error means the
    /// datagram is lost.
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;

    /// Waits for the next datagram, copies it into `buf` (truncating one larger than `buf`)
    /// and returns its length and sender. Errors are logged and the engine keeps receiving.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;

    /// Waits for the next *refusal*: the host at an address we sent to answered that nothing
    /// listens there (ICMP port unreachable), which a dead process causes and a stalled one
    /// never does (`udp.rs`). Returns that address. A network that cannot tell never answers
    /// (the default), and detection is then by timing alone.
    fn next_refusal(&self) -> impl Future<Output = io::Result<SocketAddr>> + Send {
        std::future::pending()
    }
}

/// The real network: a bound UDP socket that hears refusals.
impl Transport for UdpTransport {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpTransport::local_addr(self)
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send_datagram(buf, to)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        self.recv_datagram(buf)
    }

    fn next_refusal(&self) -> impl Future<Output = io::Result<SocketAddr>> + Send {
        UdpTransport::next_refusal(self)
    }
}
