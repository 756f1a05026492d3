//! The run's trace: one line per delivered message, applied index, client result and fault,
//! stamped with virtual time and folded into a running hash. Two runs of one seed must give
//! the same hash; the lines themselves are kept only when asked for (to diff two runs).

use std::fmt::Display;
use std::sync::Mutex;
use tokio::time::Instant;

/// FNV-1a 64 (fixed by specification, so the hash means the same on every build).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Bound on kept lines, so a long run asked to keep its trace cannot exhaust memory; the hash
/// covers every line regardless.
const KEPT_LINES_MAX: usize = 2_000_000;

/// FNV-1a 64 of `bytes`, continuing from `hash`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a 64 of `bytes` from the offset basis.
pub fn fnv(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET_BASIS, bytes)
}

struct Inner {
    hash: u64,
    events: u64,
    lines: Option<Vec<String>>,
    /// Print every line to stderr as it happens (`ORION_SIM_TRACE_LIVE=1`): for a run that
    /// hangs before it can report.
    live: bool,
}

/// The trace of one run.
pub struct Trace {
    t0: Instant,
    inner: Mutex<Inner>,
}

impl Trace {
    /// A trace whose times count from now; `keep` keeps the lines as well as the hash.
    pub fn new(keep: bool) -> Trace {
        Trace {
            t0: Instant::now(),
            inner: Mutex::new(Inner {
                hash: FNV_OFFSET_BASIS,
                events: 0,
                lines: keep.then(Vec::new),
                live: std::env::var_os("ORION_SIM_TRACE_LIVE").is_some(),
            }),
        }
    }

    /// Virtual microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Records one event.
    pub fn record(&self, event: impl Display) {
        let line = format!("{} {event}", self.now_us());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.hash = fnv1a(inner.hash, line.as_bytes());
        inner.hash = fnv1a(inner.hash, b"\n");
        inner.events += 1;
        if inner.live {
            eprintln!("{line}");
        }
        if let Some(lines) = &mut inner.lines
            && lines.len() < KEPT_LINES_MAX
        {
            lines.push(line);
        }
    }

    pub fn hash(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).hash
    }

    pub fn events(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).events
    }

    /// The kept lines (empty unless the trace was made with `keep`).
    pub fn lines(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .clone()
            .unwrap_or_default()
    }
}
