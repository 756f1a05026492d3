//! The seams through which time and fresh ids enter a decision. Decisions (`apply`, the
//! controller's `decide`, the executor's `plan`) never read the system clock or a random
//! source themselves: the caller passes a `Clock` and an `IdSource`, so a test or the
//! simulator can pass deterministic ones and replay a run exactly.
//!
//! Only the traits and the deterministic implementations live here (this crate has no IO);
//! the real clock and the random id source are thin and live here too because they need
//! nothing but `std`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the caller's world sees them.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// Fresh unique ids (task and allocation ids): 32 lowercase hex digits.
pub trait IdSource: Send + Sync {
    fn next_id(&self) -> String;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests and the simulator.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start_ms))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ids from a seeded generator (SplitMix64): the same seed gives the same sequence, so a
/// simulated run names its tasks and allocations identically every time.
#[derive(Debug)]
pub struct SeededIds(Mutex<u64>);

impl SeededIds {
    pub fn new(seed: u64) -> SeededIds {
        SeededIds(Mutex::new(seed))
    }
}

/// One step of SplitMix64: a small, well-mixed, seedable generator.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl IdSource for SeededIds {
    fn next_id(&self) -> String {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let hi = splitmix64(&mut s);
        let lo = splitmix64(&mut s);
        format!("{hi:016x}{lo:016x}")
    }
}

/// Ids from the operating system's randomness, for a real agent.
#[derive(Debug, Default)]
pub struct RandomIds {
    state: Mutex<Option<u64>>,
}

impl IdSource for RandomIds {
    fn next_id(&self) -> String {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = s.get_or_insert_with(os_seed);
        // Reseed from the OS now and then is unnecessary: SplitMix64 over a 64-bit random
        // start never repeats within 2^64 ids, and ids need uniqueness, not secrecy.
        let hi = splitmix64(state);
        let lo = splitmix64(state);
        format!("{hi:016x}{lo:016x}")
    }
}

/// 64 bits from the OS: std's `RandomState` is seeded from the OS's randomness per process.
/// For seeds that a real agent draws once at start and records (gossip, election watchdog).
pub fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_for_the_same_seed_and_differ_across_seeds() {
        let a = SeededIds::new(7);
        let b = SeededIds::new(7);
        let c = SeededIds::new(8);
        let xs: Vec<String> = (0..3).map(|_| a.next_id()).collect();
        let ys: Vec<String> = (0..3).map(|_| b.next_id()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_id());
        assert!(xs.iter().all(|x| x.len() == 32));
        assert_ne!(xs[0], xs[1]);
    }

    #[test]
    fn random_ids_are_32_hex_digits_and_distinct() {
        let r = RandomIds::default();
        let a = r.next_id();
        let b = r.next_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(10);
        assert_eq!(c.now_ms(), 10);
        c.advance(5);
        assert_eq!(c.now_ms(), 15);
        c.set(3);
        assert_eq!(c.now_ms(), 3);
    }
}
