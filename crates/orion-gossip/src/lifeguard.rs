//! Lifeguard arithmetic, after HashiCorp memberlist (`awareness.go`,
//! `suspicion.go`): the local health score and the shrinking suspicion timeout.
//! Pure functions and small state, no IO and no clock of its own, so the rules
//! can be tested directly; the engine feeds them events and instants.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Lifeguard switches and tuning. `enabled = false` gives plain SWIM as foca
/// implements it, for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifeguardConfig {
    pub enabled: bool,
    /// Highest local health score; probe period and timeout are multiplied by
    /// `score + 1`. memberlist's `AwarenessMaxMultiplier` is 8.
    pub awareness_max: u32,
    /// Suspicion starts at `suspect_to_down_ms * suspicion_max_mult` and shrinks
    /// to `suspect_to_down_ms` as confirmations arrive. memberlist's
    /// `SuspicionMaxTimeoutMult` is 6. We use 2: in the Lifeguard experiment
    /// (`orion-bench lifeguard`), the accuser's own health score does most of the
    /// protecting (its timeouts grow with it). In one 60 s run (seed 1), 4 gave
    /// zero false downs of healthy members but +28% detection time (p50) and 2 the
    /// same zero at +9%; over three 120 s runs, 2 gives -4% (BENCHMARKS.md).
    pub suspicion_max_mult: u32,
    /// Independent confirmations needed to reach the minimum timeout.
    /// memberlist uses `SuspicionMult - 2` = 2; with fewer than `k + 2` live
    /// members no confirmations are expected and the minimum applies at once.
    pub suspicion_confirmations: u32,
}

impl Default for LifeguardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            awareness_max: 8,
            suspicion_max_mult: 2,
            suspicion_confirmations: 2,
        }
    }
}

/// Local health score: 0 is healthy, `max` is as slow as we admit to being.
#[derive(Debug)]
pub(crate) struct Awareness {
    score: u32,
    max: u32,
}

impl Awareness {
    pub(crate) fn new(max: u32) -> Self {
        Self { score: 0, max }
    }

    pub(crate) fn apply(&mut self, delta: i64) {
        let next = i64::from(self.score).saturating_add(delta);
        self.score = next.clamp(0, i64::from(self.max)) as u32;
    }

    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    /// `d * (score + 1)`, as memberlist's `ScaleTimeout`.
    pub(crate) fn scale(&self, d: Duration) -> Duration {
        d.saturating_mul(self.score + 1)
    }
}

/// memberlist's formula: start at `max`, fall logarithmically with each
/// independent confirmation, never below `min`; with `k == 0`, `min` at once.
pub(crate) fn suspicion_timeout(
    min: Duration,
    max: Duration,
    k: u32,
    confirmations: u32,
) -> Duration {
    if k == 0 || max <= min {
        return min;
    }
    let frac = ((f64::from(confirmations) + 1.0).ln() / (f64::from(k) + 1.0).ln()).min(1.0);
    let span = (max - min).as_secs_f64();
    let t = max.as_secs_f64() - frac * span;
    Duration::from_secs_f64(t.max(min.as_secs_f64()))
}

/// One open suspicion that we raised ourselves (our probe failed).
pub(crate) struct Suspicion {
    pub(crate) started: Instant,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    pub(crate) k: u32,
    /// Node ids that independently told us the member is suspect. At most `k`
    /// are kept, since further ones cannot shorten the timeout.
    pub(crate) confirmers: Vec<Arc<str>>,
}

impl Suspicion {
    pub(crate) fn deadline(&self) -> Instant {
        self.started + suspicion_timeout(self.min, self.max, self.k, self.confirmers.len() as u32)
    }

    /// Record a confirmation; returns true if it was new and counted.
    pub(crate) fn confirm(&mut self, from: &Arc<str>) -> bool {
        if self.confirmers.len() as u32 >= self.k || self.confirmers.iter().any(|c| c == from) {
            return false;
        }
        self.confirmers.push(Arc::clone(from));
        true
    }
}

/// Confirmations expected for a cluster of `live` members (including us), as
/// memberlist: none if fewer than `k + 2` members could confirm.
pub(crate) fn expected_confirmations(k: u32, live: usize) -> u32 {
    if live.saturating_sub(2) < k as usize {
        0
    } else {
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awareness_is_clamped_and_scales() {
        let mut a = Awareness::new(8);
        a.apply(-3);
        assert_eq!(a.score(), 0);
        a.apply(20);
        assert_eq!(a.score(), 8);
        assert_eq!(
            a.scale(Duration::from_millis(100)),
            Duration::from_millis(900)
        );
    }

    #[test]
    fn suspicion_shrinks_with_confirmations() {
        let min = Duration::from_millis(600);
        let max = Duration::from_millis(2400);
        assert_eq!(suspicion_timeout(min, max, 2, 0), max);
        let one = suspicion_timeout(min, max, 2, 1);
        assert!(one < max && one > min, "{one:?}");
        assert_eq!(suspicion_timeout(min, max, 2, 2), min);
        assert_eq!(suspicion_timeout(min, max, 0, 0), min);
        assert_eq!(expected_confirmations(2, 3), 0);
        assert_eq!(expected_confirmations(2, 4), 2);
    }
}
