//! A small Wing–Gong/Lowe (WGL) linearizability checker over a per-task register.
//!
//! Each task is one register that moves `Absent -> Live -> Stopped` and never back: a create
//! makes it live, a delete stops it, a consistent read observes it. A history is linearizable
//! when every operation can be given one instant inside its call..return interval such that,
//! in that order, each operation is legal in the sequential model and returns what it did.
//!
//! Operations whose outcome is unknown (a timeout, a reset, a 5xx on a write) have no return:
//! they may take effect at any instant after their call, or never. Operations that failed for
//! sure (a refused connection, a 4xx) had no effect and are left out by the caller.
//!
//! The search is the classic one: repeatedly pick an operation that no remaining operation
//! must precede in real time, apply it to the model, and backtrack on a contradiction; a memo
//! of (operations done, model state) keeps it polynomial on the small histories per task.

use std::collections::HashSet;

/// The state of one task in the sequential model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    /// Never created (a read answers 404).
    Absent,
    /// Created and not deleted: any state but `stopped`.
    Live,
    /// Deleted: state `stopped`.
    Stopped,
}

/// What an operation did, with what it observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A create; legal only on an absent register.
    Create,
    /// A delete that answered (or would answer) with the stopped task; legal on an existing
    /// register.
    Delete,
    /// A read that observed this value.
    Read(Reg),
}

/// One operation of one register's history. Times are microseconds on one monotonic clock.
#[derive(Debug, Clone)]
pub struct Op {
    /// Index of the operation in the caller's full history, for reports.
    pub index: usize,
    pub kind: Kind,
    pub call_us: u64,
    /// `None` when the outcome is unknown: the effect may happen at any time after the call,
    /// or never.
    pub return_us: Option<u64>,
}

impl Op {
    pub fn ok(index: usize, kind: Kind, call_us: u64, return_us: u64) -> Op {
        Op {
            index,
            kind,
            call_us,
            return_us: Some(return_us),
        }
    }

    pub fn unknown(index: usize, kind: Kind, call_us: u64) -> Op {
        Op {
            index,
            kind,
            call_us,
            return_us: None,
        }
    }
}

/// The sequential specification: the next state, or `None` when the operation is illegal.
pub fn step(state: Reg, kind: Kind) -> Option<Reg> {
    match (kind, state) {
        (Kind::Create, Reg::Absent) => Some(Reg::Live),
        (Kind::Create, _) => None,
        (Kind::Delete, Reg::Live | Reg::Stopped) => Some(Reg::Stopped),
        (Kind::Delete, Reg::Absent) => None,
        (Kind::Read(seen), s) => (seen == s).then_some(s),
    }
}

/// Bound on the memo, so a pathological history fails loudly instead of eating the machine.
const MEMO_ENTRIES_MAX: usize = 2_000_000;

/// Result of checking one register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists; the ops are the whole history of the register, sorted by call time.
    Violation,
    /// The search gave up (memo bound); treated as a failure by the caller.
    TooLarge,
}

/// Checks one register's history, starting from `Absent`.
pub fn check(ops: &[Op]) -> Verdict {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| (o.call_us, o.return_us.unwrap_or(u64::MAX)));
    let mut search = Search {
        ops: &ops,
        done: vec![false; ops.len()],
        memo: HashSet::new(),
        gave_up: false,
    };
    if search.run(Reg::Absent) {
        Verdict::Linearizable
    } else if search.gave_up {
        Verdict::TooLarge
    } else {
        Verdict::Violation
    }
}

struct Search<'a> {
    ops: &'a [Op],
    done: Vec<bool>,
    memo: HashSet<(Vec<bool>, Reg)>,
    gave_up: bool,
}

impl Search<'_> {
    /// The earliest return among the operations not yet linearized.
    fn min_return(&self) -> u64 {
        self.ops
            .iter()
            .zip(&self.done)
            .filter(|(_, d)| !**d)
            .filter_map(|(o, _)| o.return_us)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn run(&mut self, state: Reg) -> bool {
        // A read that may go next and is legal now can always go next: it changes no state
        // and only lifts its own real-time bound, so any valid order can be rearranged to
        // start with it. Placing such reads greedily keeps the branching to writes.
        let mut forced = Vec::new();
        loop {
            let min_return = self.min_return();
            let next = (0..self.ops.len()).find(|&i| {
                !self.done[i]
                    && self.ops[i].call_us <= min_return
                    && matches!(self.ops[i].kind, Kind::Read(_))
                    && step(state, self.ops[i].kind).is_some()
            });
            match next {
                Some(i) => {
                    self.done[i] = true;
                    forced.push(i);
                }
                None => break,
            }
        }
        let found = self.branch(state);
        for i in forced {
            self.done[i] = false;
        }
        found
    }

    fn branch(&mut self, state: Reg) -> bool {
        // Every operation with a known return is placed: the unknown ones left over simply
        // never took effect.
        if self
            .ops
            .iter()
            .zip(&self.done)
            .all(|(o, d)| *d || o.return_us.is_none())
        {
            return true;
        }
        // An operation may go next only if no remaining operation returned before it was
        // called (that one must be linearized first).
        let min_return = self.min_return();
        for i in 0..self.ops.len() {
            if self.done[i] || self.ops[i].call_us > min_return {
                continue;
            }
            let Some(next) = step(state, self.ops[i].kind) else {
                continue;
            };
            self.done[i] = true;
            let key = (self.done.clone(), next);
            if !self.memo.contains(&key) {
                if self.memo.len() >= MEMO_ENTRIES_MAX {
                    self.gave_up = true;
                    self.done[i] = false;
                    return false;
                }
                self.memo.insert(key);
                if self.run(next) {
                    self.done[i] = false;
                    return true;
                }
            }
            self.done[i] = false;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::*;
    use Reg::*;

    fn ok(kind: Kind, call: u64, ret: u64) -> Op {
        Op::ok(0, kind, call, ret)
    }

    fn unknown(kind: Kind, call: u64) -> Op {
        Op::unknown(0, kind, call)
    }

    fn check_all(cases: &[(&str, Vec<Op>, Verdict)]) {
        for (name, ops, want) in cases {
            assert_eq!(&check(ops), want, "case {name}: {ops:?}");
        }
    }

    #[test]
    fn the_sequential_model() {
        assert_eq!(step(Absent, Create), Some(Live));
        assert_eq!(step(Live, Create), None);
        assert_eq!(step(Absent, Delete), None);
        assert_eq!(step(Live, Delete), Some(Stopped));
        assert_eq!(step(Stopped, Delete), Some(Stopped));
        assert_eq!(step(Stopped, Read(Live)), None);
        assert_eq!(step(Live, Read(Live)), Some(Live));
    }

    #[test]
    fn accepts_legal_histories() {
        use Verdict::Linearizable as L;
        check_all(&[
            (
                "sequential life",
                vec![
                    ok(Read(Absent), 0, 5),
                    ok(Create, 10, 20),
                    ok(Read(Live), 30, 40),
                    ok(Delete, 50, 60),
                    ok(Read(Stopped), 70, 80),
                ],
                L,
            ),
            (
                "a read overlapping the create may miss it",
                vec![ok(Create, 5, 10), ok(Read(Absent), 0, 15)],
                L,
            ),
            (
                "a read overlapping the create may see it",
                vec![ok(Create, 5, 20), ok(Read(Live), 0, 15)],
                L,
            ),
            (
                "a read overlapping the delete may see either side",
                vec![
                    ok(Create, 0, 1),
                    ok(Delete, 10, 30),
                    ok(Read(Stopped), 12, 14),
                    ok(Read(Live), 11, 40),
                ],
                L,
            ),
            (
                "an unknown create that took effect",
                vec![unknown(Create, 0), ok(Read(Live), 100, 110)],
                L,
            ),
            (
                "an unknown create that never took effect",
                vec![unknown(Create, 0), ok(Read(Absent), 100, 110)],
                L,
            ),
            (
                "an unknown create that took effect late",
                vec![
                    unknown(Create, 0),
                    ok(Read(Absent), 100, 110),
                    ok(Read(Live), 200, 210),
                ],
                L,
            ),
            (
                "an unknown delete, seen late",
                vec![
                    ok(Create, 0, 1),
                    unknown(Delete, 10),
                    ok(Read(Live), 20, 30),
                    ok(Read(Stopped), 40, 50),
                ],
                L,
            ),
            (
                "two deletes, both acknowledged",
                vec![ok(Create, 0, 1), ok(Delete, 10, 20), ok(Delete, 15, 25)],
                L,
            ),
        ]);
    }

    #[test]
    fn rejects_illegal_histories() {
        use Verdict::Violation as V;
        check_all(&[
            (
                "stale 404 after an acknowledged create",
                vec![ok(Create, 0, 10), ok(Read(Absent), 20, 30)],
                V,
            ),
            (
                "stopped without any delete",
                vec![ok(Create, 0, 10), ok(Read(Stopped), 20, 30)],
                V,
            ),
            (
                "live after an acknowledged delete",
                vec![
                    ok(Create, 0, 10),
                    ok(Delete, 20, 30),
                    ok(Read(Live), 40, 50),
                ],
                V,
            ),
            (
                "a lost acknowledged create (final read 404)",
                vec![
                    ok(Create, 0, 10),
                    ok(Read(Live), 20, 30),
                    ok(Read(Absent), 1000, 1010),
                ],
                V,
            ),
            (
                "reads go back in time: live, then absent, during an unknown create",
                vec![
                    unknown(Create, 0),
                    ok(Read(Live), 20, 30),
                    ok(Read(Absent), 40, 50),
                ],
                V,
            ),
            (
                "reads go back in time: stopped, then live, during an unknown delete",
                vec![
                    ok(Create, 0, 1),
                    unknown(Delete, 5),
                    ok(Read(Stopped), 10, 20),
                    ok(Read(Live), 30, 40),
                ],
                V,
            ),
            (
                "real-time order across two reads during a create",
                vec![
                    ok(Create, 0, 100),
                    ok(Read(Live), 10, 20),
                    ok(Read(Absent), 30, 40),
                ],
                V,
            ),
            (
                "a read after a stopped read sees live again",
                vec![
                    ok(Create, 0, 1),
                    ok(Delete, 10, 30),
                    ok(Read(Stopped), 12, 14),
                    ok(Read(Live), 15, 40),
                ],
                V,
            ),
            (
                "a task created twice",
                vec![ok(Create, 0, 10), ok(Create, 20, 30)],
                V,
            ),
            (
                "a read seeing a task that was never created",
                vec![ok(Read(Live), 0, 10)],
                V,
            ),
            (
                "a delete acknowledged before any create",
                vec![ok(Delete, 0, 10), ok(Create, 20, 30)],
                V,
            ),
        ]);
    }

    #[test]
    fn many_concurrent_reads_stay_cheap() {
        let mut ops = vec![ok(Create, 0, 1_000), ok(Delete, 2_000, 3_000)];
        for i in 0..200 {
            let seen = if i % 2 == 0 { Live } else { Stopped };
            ops.push(ok(Read(seen), 1_500 + i, 2_500 + i));
        }
        assert_eq!(check(&ops), Verdict::Linearizable);
        ops.push(ok(Read(Live), 4_000, 4_100));
        assert_eq!(check(&ops), Verdict::Violation);
    }
}
