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

use tokio::net::UdpSocket;

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
}

/// The real network: a bound UDP socket.
impl Transport for UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.try_send_to(buf, to)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        UdpSocket::recv_from(self, buf)
    }
}
