//! `health`: the decision half of a task's health check, pure. A `Probe` is the state of
//! one container run's check (its health so far, the failures in a row, when the next
//! probe is due, the last probe's output); `Probe::record` takes one probe's outcome and the
//! time, and says whether the health turned. The driver runs the probes (IO) and feeds the
//! outcomes in; the plan compares the probe's health with what the replica recorded and
//! proposes only the differences.
//!
//! Rules (Docker's): a run starts `starting`; the first probe is due one interval after the
//! container started, and each next one an interval after the previous ended. A pass makes
//! it `healthy` (from any state) and clears the failure count. A failure inside the start
//! period, while still `starting`, does not count; after it, `retries` failures in a row
//! make it `unhealthy`. An `Undecided` outcome (the image's own check is still starting)
//! changes nothing.

use orion_types::Health;
use orion_types::service::{HealthCheck, HealthTest};

/// Bytes of a probe's output kept and reported: the end of an error message or the status
/// line of an answer tells why; a page or a stack trace does not belong in the state.
pub const PROBE_OUTPUT_MAX: usize = 256;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Nothing to count (the image's own check has not decided yet).
    Undecided,
}

/// The timing of a check, as the probe state machine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub interval_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

impl Policy {
    /// The policy of `check`. The image's own check counts its retries and start period in
    /// the engine, so for it one `Fail` (the engine said unhealthy) is enough.
    pub fn of(check: &HealthCheck) -> Policy {
        match check.test {
            HealthTest::Image => Policy {
                interval_ms: check.interval_ms,
                retries: 1,
                start_period_ms: 0,
            },
            _ => Policy {
                interval_ms: check.interval_ms,
                retries: check.retries,
                start_period_ms: check.start_period_ms,
            },
        }
    }
}

/// The check of one container run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub policy: Policy,
    /// When the run began (as the executor first saw it running).
    pub started_ms: u64,
    pub health: Health,
    /// Failures in a row that count.
    pub failures: u32,
    /// When the next probe is due.
    pub next_due_ms: u64,
    /// The last probe's output, at most `PROBE_OUTPUT_MAX` bytes.
    pub output: String,
}

impl Probe {
    /// A run that began at `started_ms`: starting, first probe one interval later.
    pub fn new(policy: Policy, started_ms: u64) -> Probe {
        Probe {
            policy,
            started_ms,
            health: Health::Starting,
            failures: 0,
            next_due_ms: started_ms.saturating_add(policy.interval_ms),
            output: String::new(),
        }
    }

    /// Whether a probe is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_due_ms
    }

    /// Books a probe that ended at `now_ms`; returns the new health if it turned.
    pub fn record(&mut self, outcome: Outcome, output: &str, now_ms: u64) -> Option<Health> {
        self.next_due_ms = now_ms.saturating_add(self.policy.interval_ms);
        self.output = bounded_output(output);
        let before = self.health;
        match outcome {
            Outcome::Undecided => {}
            Outcome::Pass => {
                self.failures = 0;
                self.health = Health::Healthy;
            }
            Outcome::Fail => {
                let in_start_period = self.health == Health::Starting
                    && now_ms < self.started_ms.saturating_add(self.policy.start_period_ms);
                if !in_start_period {
                    self.failures = self.failures.saturating_add(1);
                    // Zero retries would mean "never unhealthy": the first failure counts.
                    if self.failures >= self.policy.retries.max(1) {
                        self.health = Health::Unhealthy;
                    }
                }
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// The last `PROBE_OUTPUT_MAX` bytes of `output` (cut at a character boundary), trimmed:
/// the end of an output is where the error is.
pub fn bounded_output(output: &str) -> String {
    let output = output.trim();
    let mut start = output.len().saturating_sub(PROBE_OUTPUT_MAX);
    while !output.is_char_boundary(start) {
        start += 1;
    }
    output[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        interval_ms: 1_000,
        retries: 3,
        start_period_ms: 5_000,
    };

    /// Feeds `(time, outcome)` into a run that started at 0 and checks the health after each
    /// step ('s' starting, 'h' healthy, 'u' unhealthy) and which steps turned it ('*').
    fn check(policy: Policy, steps: &[(u64, Outcome)], want: &str) {
        let mut p = Probe::new(policy, 0);
        let mut got = String::new();
        for (at, outcome) in steps {
            let turned = p.record(*outcome, "out", *at);
            got.push(match p.health {
                Health::Starting => 's',
                Health::Healthy => 'h',
                Health::Unhealthy => 'u',
                Health::None => '?',
            });
            if turned.is_some() {
                got.push('*');
            }
            assert_eq!(
                p.next_due_ms,
                at + policy.interval_ms,
                "next probe after {at}"
            );
        }
        assert_eq!(got, want, "{policy:?} {steps:?}");
    }

    use Outcome::{Fail, Pass, Undecided};

    #[test]
    fn a_pass_makes_it_healthy_and_only_turns_are_reported() {
        check(POLICY, &[(1_000, Pass), (2_000, Pass)], "h*h");
        check(POLICY, &[(1_000, Undecided), (2_000, Pass)], "sh*");
    }

    #[test]
    fn failures_inside_the_start_period_do_not_count() {
        let fails: Vec<(u64, Outcome)> = (1..=4).map(|i| (i * 1_000, Fail)).collect();
        check(POLICY, &fails, "ssss");
        // After it, three in a row turn it unhealthy.
        check(
            POLICY,
            &[(4_000, Fail), (5_000, Fail), (6_000, Fail), (7_000, Fail)],
            "sssu*",
        );
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_and_a_pass_resets_them() {
        let p = Policy {
            start_period_ms: 0,
            ..POLICY
        };
        check(p, &[(1, Fail), (2, Fail), (3, Fail)], "ssu*");
        check(
            p,
            &[(1, Fail), (2, Fail), (3, Pass), (4, Fail), (5, Fail)],
            "ssh*hh",
        );
        check(
            p,
            &[(1, Pass), (2, Fail), (3, Fail), (4, Fail), (5, Pass)],
            "h*hhu*h*",
        );
        // Once healthy, the start period no longer shields a failure.
        check(
            POLICY,
            &[(1, Pass), (2, Fail), (3, Fail), (4, Fail)],
            "h*hhu*",
        );
    }

    #[test]
    fn zero_retries_counts_the_first_failure() {
        let p = Policy {
            retries: 0,
            start_period_ms: 0,
            ..POLICY
        };
        check(p, &[(1, Fail)], "u*");
    }

    #[test]
    fn the_first_probe_is_due_one_interval_after_the_start() {
        let p = Probe::new(POLICY, 10_000);
        assert!(!p.due(10_999));
        assert!(p.due(11_000));
    }

    #[test]
    fn the_images_own_check_turns_on_its_first_verdict() {
        let check_of = |test| HealthCheck {
            test,
            port: None,
            interval_ms: 500,
            timeout_ms: 100,
            retries: 5,
            start_period_ms: 9_000,
        };
        let image = Policy::of(&check_of(HealthTest::Image));
        assert_eq!((image.retries, image.start_period_ms), (1, 0));
        check(image, &[(1, Undecided), (2, Fail)], "su*");
        let tcp = Policy::of(&check_of(HealthTest::Tcp));
        assert_eq!(
            (tcp.retries, tcp.start_period_ms, tcp.interval_ms),
            (5, 9_000, 500)
        );
    }

    #[test]
    fn output_keeps_the_last_bytes_on_a_char_boundary() {
        assert_eq!(bounded_output("  ok \n"), "ok");
        let long = format!("{}é{}", "a".repeat(300), "b".repeat(255));
        let out = bounded_output(&long);
        assert!(out.len() <= PROBE_OUTPUT_MAX);
        assert!(out.ends_with('b') && out.starts_with('b'), "{out}");
    }
}
