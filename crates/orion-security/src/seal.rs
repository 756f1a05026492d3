//! Sealed gossip datagrams: every packet is encrypted and authenticated with
//! ChaCha20-Poly1305 under a key derived from the cluster secret, so an outsider can neither
//! read who is in the cluster nor forge, alter or replay a membership message.
//!
//! Wire form: `[version=1][key id][sent-at ms, u64 BE][nonce, 12][ciphertext + 16-byte tag]`.
//! The first ten bytes are the associated data: authenticated, not secret. The nonce is random
//! (96 bits; a key seals far fewer than the 2^32 packets where random nonces start to risk a
//! repeat). A packet is accepted once, and only within `REPLAY_WINDOW_MS` of the receiver's
//! clock: the opener remembers every nonce it accepted in that window (at most
//! `SEEN_NONCES_MAX`; past that, the oldest are forgotten and the window's floor rises past
//! them, so a forgotten packet is refused as stale rather than accepted twice).
//!
//! Key rotation holds two keys: packets are sealed under the current key and opened under the
//! current or the previous one (the key id picks it), so nodes can switch one by one.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use std::collections::{HashSet, VecDeque};

pub const VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 1 + 8 + 12;
const TAG_BYTES: usize = 16;
/// Bytes a sealed packet adds to its plaintext.
pub const OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;

/// How far a packet's send time may be from the receiver's clock: gossip answers within a
/// second, and hosts kept by NTP agree within milliseconds; 30 s leaves room for a paused
/// process and a sloppy clock without keeping much replay history.
pub const REPLAY_WINDOW_MS: u64 = 30_000;

/// Nonces remembered for the replay check: a busy node receives a few hundred gossip packets a
/// second, so 65,536 covers the whole window at over 2,000 packets a second.
pub const SEEN_NONCES_MAX: usize = 65_536;

/// Why a packet was dropped; `as_str` is the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Too short, or not a sealed packet of a version this node speaks.
    Garbage,
    /// Sealed under a key this node does not hold, or altered on the way.
    Forged,
    /// Accepted once already.
    Replayed,
    /// Sent too long ago (or too far ahead) for the replay window.
    Stale,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Garbage => "garbage",
            Dropped::Forged => "forged",
            Dropped::Replayed => "replayed",
            Dropped::Stale => "stale",
        }
    }
    pub const ALL: [Dropped; 4] = [
        Dropped::Garbage,
        Dropped::Forged,
        Dropped::Replayed,
        Dropped::Stale,
    ];
}

/// One gossip key and its id (a byte that lets the receiver pick the key).
#[derive(Clone)]
pub struct GossipKey {
    pub id: u8,
    cipher: ChaCha20Poly1305,
}

impl GossipKey {
    pub fn new(id: u8, key: &[u8; 32]) -> GossipKey {
        GossipKey {
            id,
            cipher: ChaCha20Poly1305::new(key.into()),
        }
    }
}

/// The keys a node holds: the one it seals with and, during a rotation, the previous one.
#[derive(Clone)]
pub struct Keyring {
    pub current: GossipKey,
    pub previous: Option<GossipKey>,
}

impl Keyring {
    pub fn new(current: GossipKey) -> Keyring {
        Keyring {
            current,
            previous: None,
        }
    }

    /// Makes `next` the sealing key; the old one still opens packets until the next rotation.
    pub fn rotate(&mut self, next: GossipKey) {
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some(old);
    }

    /// Seals `plain` as sent at `now_ms` with `nonce` (12 random bytes from the caller).
    pub fn seal(&self, plain: &[u8], now_ms: u64, nonce: [u8; 12]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD_BYTES);
        out.push(VERSION);
        out.push(self.current.id);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = out[..10].to_vec();
        let sealed = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            // ChaCha20-Poly1305 fails only for a plaintext over 256 GiB; a datagram is < 64 KiB.
            .expect("a datagram is far below ChaCha20-Poly1305's length limit");
        out.extend_from_slice(&sealed);
        out
    }

    fn key(&self, id: u8) -> Option<&GossipKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id == id)
    }
}

/// The receiving side: the keyring plus the replay memory.
pub struct Opener {
    pub keys: Keyring,
    seen: HashSet<[u8; 12]>,
    order: VecDeque<(u64, [u8; 12])>,
    /// Packets sent at or before this are refused: their nonces may have been forgotten.
    floor_ms: u64,
    /// Nonces remembered at most (`SEEN_NONCES_MAX`; smaller in tests).
    memory_max: usize,
}

impl Opener {
    pub fn new(keys: Keyring) -> Opener {
        Opener::with_memory(keys, SEEN_NONCES_MAX)
    }

    /// An opener that remembers at most `memory_max` nonces.
    pub fn with_memory(keys: Keyring, memory_max: usize) -> Opener {
        Opener {
            keys,
            seen: HashSet::new(),
            order: VecDeque::new(),
            floor_ms: 0,
            memory_max: memory_max.max(1),
        }
    }

    /// Opens one packet received at `now_ms`: its plaintext, or why it was dropped.
    pub fn open(&mut self, packet: &[u8], now_ms: u64) -> Result<Vec<u8>, Dropped> {
        if packet.len() < OVERHEAD_BYTES || packet[0] != VERSION {
            return Err(Dropped::Garbage);
        }
        let key = self.keys.key(packet[1]).ok_or(Dropped::Forged)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&packet[2..10]);
        let sent_ms = u64::from_be_bytes(ts);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&packet[10..HEADER_BYTES]);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &packet[HEADER_BYTES..],
                    aad: &packet[..10],
                },
            )
            .map_err(|_| Dropped::Forged)?;
        // Only authentic packets reach the replay memory: forgeries cannot flush it.
        self.expire(now_ms);
        if sent_ms.abs_diff(now_ms) > REPLAY_WINDOW_MS || sent_ms <= self.floor_ms {
            return Err(Dropped::Stale);
        }
        if !self.seen.insert(nonce) {
            return Err(Dropped::Replayed);
        }
        self.order.push_back((sent_ms, nonce));
        if self.order.len() > self.memory_max
            && let Some((t, n)) = self.order.pop_front()
        {
            self.seen.remove(&n);
            self.floor_ms = self.floor_ms.max(t);
        }
        Ok(plain)
    }

    /// Forgets nonces of packets that are out of the window anyway.
    fn expire(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(REPLAY_WINDOW_MS);
        while let Some(&(t, n)) = self.order.front() {
            if t >= oldest {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: u8, k: u8) -> Keyring {
        Keyring::new(GossipKey::new(id, &[k; 32]))
    }

    fn nonce(i: u32) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn a_sealed_packet_opens_once_and_hides_its_plaintext() {
        let keys = ring(1, 9);
        let p = keys.seal(b"node-a is alive", 1_000_000, nonce(1));
        assert!(!p.windows(6).any(|w| w == b"node-a"));
        let mut o = Opener::new(keys);
        assert_eq!(o.open(&p, 1_000_010).unwrap(), b"node-a is alive");
        assert_eq!(o.open(&p, 1_000_020), Err(Dropped::Replayed));
    }

    #[test]
    fn garbage_forgeries_and_stale_packets_are_dropped_by_reason() {
        let keys = ring(1, 9);
        let mut o = Opener::new(keys.clone());
        assert_eq!(o.open(b"hello", 0), Err(Dropped::Garbage));
        assert_eq!(o.open(&[0u8; 100], 0), Err(Dropped::Garbage));
        let mut p = keys.seal(b"x", 5_000_000, nonce(2));
        let last = p.len() - 1;
        p[last] ^= 1;
        assert_eq!(o.open(&p, 5_000_000), Err(Dropped::Forged));
        // The header is authenticated too: moving the send time forges the packet.
        let mut q = keys.seal(b"x", 5_000_000, nonce(3));
        q[9] ^= 1;
        assert_eq!(o.open(&q, 5_000_000), Err(Dropped::Forged));
        let other = ring(1, 8).seal(b"x", 5_000_000, nonce(4));
        assert_eq!(o.open(&other, 5_000_000), Err(Dropped::Forged));
        let old = keys.seal(b"x", 5_000_000, nonce(5));
        assert_eq!(
            o.open(&old, 5_000_000 + REPLAY_WINDOW_MS + 1),
            Err(Dropped::Stale)
        );
    }

    #[test]
    fn rotation_opens_both_keys_and_seals_with_the_new_one() {
        let mut keys = ring(1, 9);
        let before = keys.seal(b"old", 1_000_000, nonce(1));
        keys.rotate(GossipKey::new(2, &[10; 32]));
        let after = keys.seal(b"new", 1_000_000, nonce(2));
        assert_eq!(after[1], 2);
        let mut o = Opener::new(keys.clone());
        assert_eq!(o.open(&before, 1_000_000).unwrap(), b"old");
        assert_eq!(o.open(&after, 1_000_000).unwrap(), b"new");
        // A node that has not rotated yet still opens the new packets? No: it lacks key 2.
        let mut behind = Opener::new(ring(1, 9));
        assert_eq!(behind.open(&after, 1_000_000), Err(Dropped::Forged));
    }

    #[test]
    fn a_full_replay_memory_refuses_what_it_forgot_instead_of_accepting_it_twice() {
        let keys = ring(1, 9);
        let mut o = Opener::with_memory(keys.clone(), 100);
        let first = keys.seal(b"x", 1_000_000, nonce(0));
        assert!(o.open(&first, 1_000_000).is_ok());
        for i in 1..=100 {
            let p = keys.seal(b"x", 1_000_001, nonce(i));
            assert!(o.open(&p, 1_000_001).is_ok());
        }
        assert_eq!(o.open(&first, 1_000_001), Err(Dropped::Stale));
    }
}
