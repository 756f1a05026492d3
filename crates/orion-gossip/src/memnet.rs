//! An in-memory datagram network (feature `sim`, and the crate's own tests): one bounded
//! inbox per address, delivery at once, loss when an inbox is full or an address is unbound.
//! With it, hundreds of engines run in one thread on tokio's paused clock, so a benchmark
//! measures the protocol in simulated time, whatever else loads the machine.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::Transport;

/// Datagrams queued per inbox; beyond it they are lost, as a full socket buffer loses them.
const INBOX_MAX: usize = 1024;

type Datagram = (Vec<u8>, SocketAddr);

/// The network: addresses bound to inboxes.
#[derive(Default)]
pub struct Net {
    inboxes: Mutex<HashMap<SocketAddr, mpsc::Sender<Datagram>>>,
}

/// One bound address: the [`Transport`] an engine runs over.
pub struct Socket {
    addr: SocketAddr,
    net: Arc<Net>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Datagram>>,
}

impl Net {
    /// Binds `addr` (replacing an earlier binding of it) and returns its socket.
    pub fn bind(self: &Arc<Self>, addr: SocketAddr) -> Arc<Socket> {
        let (tx, rx) = mpsc::channel(INBOX_MAX);
        self.inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, tx);
        Arc::new(Socket {
            addr,
            net: Arc::clone(self),
            rx: tokio::sync::Mutex::new(rx),
        })
    }
}

impl Transport for Socket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let inboxes = self.net.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        let inbox = inboxes
            .get(&to)
            .ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        inbox
            .try_send((buf.to_vec(), self.addr))
            .map_err(|_| io::Error::from(io::ErrorKind::WouldBlock))?;
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (data, from) = self
            .rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }
}
