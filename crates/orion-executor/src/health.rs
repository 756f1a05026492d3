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

/// How long a new container of a service task without a health check may take before its
/// published TCP ports accept a connection; past it, it is reported running anyway (a task
/// without a check counts as up when its container runs, as before; the wait only closes the
/// gap between the process starting and its server listening).
pub const READY_WAIT_MAX_MS: u64 = 30_000;
/// The first readiness connect is tried at once, then after this long, doubling...
pub const READY_RETRY_MIN_MS: u64 = 10;
/// ...up to this: a server that takes seconds to listen is seen within a quarter second.
pub const READY_RETRY_MAX_MS: u64 = 250;

/// Where the readiness wait of one container run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A connect has not succeeded yet, and the wait has time left.
    Waiting,
    /// Every port accepted a connection.
    Ready,
    /// `READY_WAIT_MAX_MS` passed without it: reported running anyway.
    GaveUp,
}

/// The readiness wait of one container run of a service task without a health check: its
/// ports (at the container's own address) are tried from when it was first seen running,
/// at once and then with a doubling pause, until they all accept a connection or the wait
/// is over. The driver runs the connects (IO) and feeds the outcomes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub started_ms: u64,
    pub verdict: Verdict,
    /// Failed connects so far.
    pub failures: u32,
    pub next_due_ms: u64,
    /// Why the last connect failed (bounded).
    pub output: String,
}

impl Readiness {
    /// A run first seen running at `started_ms`: the first connect is due at once.
    pub fn new(started_ms: u64) -> Readiness {
        Readiness {
            started_ms,
            verdict: Verdict::Waiting,
            failures: 0,
            next_due_ms: started_ms,
            output: String::new(),
        }
    }

    /// Whether a connect is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.verdict == Verdict::Waiting && now_ms >= self.next_due_ms
    }

    /// Books a connect that ended at `now_ms` (`passed`: every port accepted); returns the
    /// new verdict if it turned.
    pub fn record(&mut self, passed: bool, output: &str, now_ms: u64) -> Option<Verdict> {
        if self.verdict != Verdict::Waiting {
            return None;
        }
        self.output = bounded_output(output);
        if passed {
            self.verdict = Verdict::Ready;
        } else if now_ms >= self.started_ms.saturating_add(READY_WAIT_MAX_MS) {
            self.verdict = Verdict::GaveUp;
        } else {
            let pause = READY_RETRY_MIN_MS
                .saturating_mul(1u64 << self.failures.min(16))
                .min(READY_RETRY_MAX_MS);
            self.failures = self.failures.saturating_add(1);
            self.next_due_ms = now_ms
                .saturating_add(pause)
                .min(self.started_ms.saturating_add(READY_WAIT_MAX_MS));
            return None;
        }
        Some(self.verdict)
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

    /// The bug of issue 11 (a new task without a check joined the mesh before its server
    /// listened): a run waits for its ports, passes on the first accepted connect, retries with
    /// a doubling pause, and gives up (reported running anyway) after `READY_WAIT_MAX_MS`.
    #[test]
    fn a_new_task_without_a_check_joins_only_once_its_port_accepts() {
        // (connect ended at, passed) -> the verdict after it, and when the next is due.
        /// (name, connects, verdict after them, next connect due).
        type Row<'a> = (&'a str, &'a [(u64, bool)], Verdict, Option<u64>);
        let steps: &[Row] = &[
            ("listening at once", &[(1_000, true)], Verdict::Ready, None),
            (
                "refused twice, then accepted",
                &[(1_001, false), (1_012, false), (1_033, true)],
                Verdict::Ready,
                None,
            ),
            (
                "the pause doubles up to its cap",
                &[
                    (1_000, false),
                    (1_010, false),
                    (1_030, false),
                    (1_070, false),
                    (1_150, false),
                    (1_310, false),
                ],
                Verdict::Waiting,
                Some(1_310 + READY_RETRY_MAX_MS),
            ),
            (
                "never accepted: given up at the bound",
                &[(1_000, false), (1_000 + READY_WAIT_MAX_MS, false)],
                Verdict::GaveUp,
                None,
            ),
            (
                "the last pause ends at the bound",
                &[(1_000 + READY_WAIT_MAX_MS - 5, false)],
                Verdict::Waiting,
                Some(1_000 + READY_WAIT_MAX_MS),
            ),
        ];
        for (name, outcomes, want, want_due) in steps {
            let mut r = Readiness::new(1_000);
            assert!(r.due(1_000) && !r.due(999), "{name}: due at once");
            let mut turned = None;
            for (at, passed) in *outcomes {
                turned = r.record(*passed, "connect refused", *at).or(turned);
            }
            assert_eq!(r.verdict, *want, "{name}");
            assert_eq!(
                turned,
                (*want != Verdict::Waiting).then_some(*want),
                "{name}: turn"
            );
            match want_due {
                Some(d) => {
                    assert_eq!(r.next_due_ms, *d, "{name}: next");
                    assert!(r.due(*d) && !r.due(d - 1), "{name}: due");
                }
                None => {
                    assert!(!r.due(u64::MAX), "{name}: no connect after a verdict");
                    // A verdict is final: a later outcome changes nothing.
                    assert_eq!(r.clone().record(false, "", u64::MAX), None, "{name}");
                }
            }
        }
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
