//! Gossip over sealed datagrams: a `orion_gossip::Transport` around the UDP socket that seals
//! every datagram it sends and opens every one it receives (`orion_security::seal`), so the
//! gossip crate itself never sees a key. A datagram that does not open (garbage, forged,
//! replayed, stale) is dropped and counted by reason (`orion_gossip_packets_dropped_total`),
//! and the first ones from an address are logged with what they likely mean.

use orion_gossip::UdpTransport;
use orion_security::seal::{Dropped, Keyring, OVERHEAD_BYTES, Opener};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// One warning per sender address at most this often: a stray node must not flood the log.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Sender addresses remembered for that rate limit; past this the memory starts over.
const WARNED_ADDRS_MAX: usize = 1024;

pub struct SealedUdp {
    socket: UdpTransport,
    keys: Mutex<Keyring>,
    opener: Mutex<Opener>,
    dropped: [AtomicU64; 4],
    warned: Mutex<HashMap<SocketAddr, Instant>>,
}

impl SealedUdp {
    pub fn new(socket: UdpTransport, keys: Keyring) -> SealedUdp {
        SealedUdp {
            socket,
            opener: Mutex::new(Opener::new(keys.clone())),
            keys: Mutex::new(keys),
            dropped: Default::default(),
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Seals and opens under `keys` from now on (a gossip key rotation); the replay memory
    /// is kept, so a rotation opens no window for replays.
    pub fn set_keys(&self, keys: Keyring) {
        self.opener.lock().unwrap_or_else(|p| p.into_inner()).keys = keys.clone();
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Dropped datagrams by reason, for `/metrics`.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        Dropped::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(d, n)| (d.as_str(), n.load(Relaxed)))
            .collect()
    }

    fn note_drop(&self, why: Dropped, from: SocketAddr) {
        self.dropped[Dropped::ALL.iter().position(|d| *d == why).unwrap_or(0)]
            .fetch_add(1, Relaxed);
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if warned
            .get(&from)
            .is_some_and(|t| now.duration_since(*t) < WARN_INTERVAL)
        {
            return;
        }
        if warned.len() >= WARNED_ADDRS_MAX {
            warned.clear();
        }
        warned.insert(from, now);
        let hint = match why {
            Dropped::Garbage => "not a sealed Orion gossip packet (an insecure node, or not Orion)",
            Dropped::Forged => {
                "not sealed with this cluster's key: a node with a wrong or missing join token, or another cluster"
            }
            Dropped::Replayed => "a copy of a packet already received (a replay)",
            Dropped::Stale => "sent too long ago: a replay, or a clock far off",
        };
        tracing::warn!(%from, reason = why.as_str(), "dropped a gossip packet: {hint}");
    }
}

fn now_ms() -> u64 {
    crate::agent::now_ms()
}

fn nonce() -> [u8; 12] {
    let r = orion_security::random_32();
    let mut n = [0u8; 12];
    n.copy_from_slice(&r[..12]);
    n
}

impl orion_gossip::Transport for SealedUdp {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let sealed =
            self.keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .seal(buf, now_ms(), nonce());
        // The sealed bytes are what a refusal quotes back (`UdpTransport` checks them).
        self.socket.send_datagram(&sealed, to).map(|_| buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // Room for the largest datagram the engine accepts, sealed, plus one byte so an
        // oversize one still shows as such after opening.
        let mut raw = vec![0u8; buf.len() + OVERHEAD_BYTES];
        loop {
            let (n, from) = self.socket.recv_datagram(&mut raw).await?;
            let opened = self
                .opener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open(&raw[..n], now_ms());
            match opened {
                Ok(plain) => {
                    let len = plain.len().min(buf.len());
                    buf[..len].copy_from_slice(&plain[..len]);
                    return Ok((len, from));
                }
                Err(why) => self.note_drop(why, from),
            }
        }
    }

    fn next_refusal(&self) -> impl std::future::Future<Output = io::Result<SocketAddr>> + Send {
        self.socket.next_refusal()
    }
}
