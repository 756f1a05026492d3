//! A snapshot's JSON, written with the tasks that did not change since the last snapshot
//! copied from that snapshot's bytes instead of encoded again.
//!
//! Why: a snapshot of 10,000 tasks encoded every one of them, 36-42 ms of CPU on every member
//! each time, while between two snapshots only the tasks that the entries in between touched
//! changed. Now a snapshot encodes those and copies the rest from the previous snapshot's file:
//! 12-14 ms of CPU after 500-600 changes (BENCHMARKS.md, section 2j). The previous file's pages
//! are usually still in the kernel's cache; keeping every task's JSON in memory instead would
//! cost the agent 7-8 MB at 10,000 tasks.
//!
//! How a task is known to be unchanged: the state keeps each task behind an `Arc` and changes
//! one only through `Arc::make_mut` (or replaces it with a new `Arc`). `TaskSpans` keeps a
//! `Weak` to every task it wrote. While a `Weak` lives, its allocation is not freed, so no
//! other task can appear at that address; and `make_mut` on a task that has a `Weak` moves the
//! task to a new allocation before changing it. So a task at the same address as one written
//! before is that same task, unchanged, and its bytes are copied from the previous file.
//!
//! The spans are only used against the file they describe (its number and length are
//! checked); a snapshot installed from the leader, a start, or any error drops them, and the
//! next snapshot encodes every task.

use crate::error::StoreError;
use crate::wal::SegmentFile;
use orion_state::StateCopy;
use orion_types::Task;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Weak};

/// Where each task's entry in the task map (`"<id>":{...}`) lies in the bytes of one snapshot
/// file.
pub(crate) struct TaskSpans {
    /// The snapshot file the spans are in, and its length.
    pub(crate) file: u64,
    pub(crate) len: u64,
    /// By the address of the task written there: its `Weak` (which keeps that address from
    /// being reused) and its entry's offset and length.
    spans: HashMap<usize, (Weak<Task>, u64, u32), BuildHasherDefault<AddressHasher>>,
    /// What the encoding that wrote the file did.
    pub(crate) counts: EncodeCounts,
}

/// What `encode` did, for the `built snapshot` log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EncodeCounts {
    /// Tasks whose JSON was copied from the previous snapshot.
    pub(crate) copied: usize,
    /// Tasks encoded.
    pub(crate) encoded: usize,
    /// Reads of the previous file: each is a run of copied tasks that lay side by side there.
    pub(crate) reads: usize,
}

/// Writes the JSON of a snapshot, `{"last_applied":..,"last_membership":..,"state":..}` with
/// `head` the JSON of the first two fields as an object; `previous` are the spans of the
/// tasks in the previous snapshot's file and that file. Returns the bytes and their spans,
/// numbered `file`.
pub(crate) fn encode(
    head: &[u8],
    state: &StateCopy,
    previous: Option<(&TaskSpans, &dyn SegmentFile)>,
    file: u64,
) -> Result<(Vec<u8>, TaskSpans), StoreError> {
    // The previous file is only read where its spans say, and only if it is theirs.
    let previous = match previous {
        Some((spans, f)) if f.len()? == spans.len => Some((spans, f)),
        _ => None,
    };
    let mut out = Vec::with_capacity(previous.map_or(0, |(p, _)| p.len + p.len / 8) as usize);
    let mut spans = HashMap::with_capacity_and_hasher(state.tasks().len(), Default::default());
    let mut counts = EncodeCounts::default();
    // `{"last_applied":..,"last_membership":..}` loses its closing brace for `,"state":`.
    out.extend_from_slice(head.strip_suffix(b"}").unwrap_or(head));
    out.extend_from_slice(b",\"state\":");
    state.write_json(&mut out, |tasks, out| {
        // Copied entries that lay side by side in the previous file (one comma apart) are
        // read in one go: `run` is that range, not yet read, and `at` where `out` will end
        // once it is.
        let mut run: Option<(u64, u64)> = None;
        let mut at = out.len();
        for (i, task) in tasks.iter().enumerate() {
            let start;
            match previous.and_then(|(p, _)| p.span_of(task)) {
                Some((from, to)) => {
                    match &mut run {
                        Some((_, end)) if *end + 1 == from => {
                            *end = to;
                            at += 1;
                        }
                        _ => {
                            read_run(previous, run.take(), out, &mut counts)?;
                            if i > 0 {
                                out.push(b',');
                            }
                            run = Some((from, to));
                            at = out.len();
                        }
                    }
                    start = at;
                    at += (to - from) as usize;
                    counts.copied += 1;
                }
                None => {
                    read_run(previous, run.take(), out, &mut counts)?;
                    if i > 0 {
                        out.push(b',');
                    }
                    start = out.len();
                    StateCopy::write_task_entry(task, out)?;
                    at = out.len();
                    counts.encoded += 1;
                }
            }
            let len = u32::try_from(at - start)
                .map_err(|_| StoreError::Snapshot("a task's JSON is over 4 GiB".into()))?;
            spans.insert(address(task), (Arc::downgrade(task), start as u64, len));
        }
        read_run(previous, run, out, &mut counts)
    })?;
    out.push(b'}');
    let spans = TaskSpans {
        file,
        len: out.len() as u64,
        spans,
        counts,
    };
    Ok((out, spans))
}

/// Appends bytes `run` of the previous file to `out`.
fn read_run(
    previous: Option<(&TaskSpans, &dyn SegmentFile)>,
    run: Option<(u64, u64)>,
    out: &mut Vec<u8>,
    counts: &mut EncodeCounts,
) -> Result<(), StoreError> {
    let (Some((_, file)), Some((from, to))) = (previous, run) else {
        return Ok(());
    };
    let n = out.len();
    out.resize(n + (to - from) as usize, 0);
    file.read_at(from, &mut out[n..])?;
    counts.reads += 1;
    Ok(())
}

fn address(task: &Arc<Task>) -> usize {
    Arc::as_ptr(task) as usize
}

impl TaskSpans {
    /// The range of `task`'s entry in the file these spans describe, if it was written there
    /// and has not changed since.
    fn span_of(&self, task: &Arc<Task>) -> Option<(u64, u64)> {
        // An entry at this address is this task, unchanged: its `Weak` kept the address from
        // being reused (see the module's comment).
        let (_, start, len) = self.spans.get(&address(task))?;
        let end = start.checked_add(u64::from(*len))?;
        (end <= self.len).then_some((*start, end))
    }

    /// How many tasks the spans hold.
    #[cfg(test)]
    pub(crate) fn tasks(&self) -> usize {
        self.spans.len()
    }
}

/// Hashes a task's address: distinct, 8-byte aligned numbers, so a multiply spreads them
/// (SipHash, the map's default, cost more than the copy it guards).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64 >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orion_state::ClusterState;
    use orion_types::{Command, NodeMeta, Placement};

    /// A snapshot file in memory.
    struct File(Vec<u8>);

    impl SegmentFile for File {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let from = offset as usize;
            let bytes = self.0.get(from..from + out.len()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
            })?;
            out.copy_from_slice(bytes);
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("read only"))
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn create(id: &str) -> Command {
        Command::CreateTask {
            task_id: id.into(),
            spec: Box::new(
                orion_types::api::parse_task_request(
                    br#"{"image":"busybox","command":["sleep","1"]}"#,
                )
                .unwrap(),
            ),
            at: 1,
        }
    }

    fn head() -> Vec<u8> {
        br#"{"last_applied":null,"last_membership":{"log_id":null,"membership":{"configs":[],"nodes":{}}}}"#.to_vec()
    }

    /// What the snapshot's bytes were before: serde's encoding of the whole snapshot.
    fn serde_bytes(state: &ClusterState) -> Vec<u8> {
        let head: serde_json::Value = serde_json::from_slice(&head()).unwrap();
        let mut whole = head.as_object().unwrap().clone();
        whole.insert(
            "state".into(),
            serde_json::to_value(state.copy_for_encoding()).unwrap(),
        );
        serde_json::to_vec(&whole).unwrap()
    }

    /// The next snapshot of `state` (file 2) over `previous`'s spans in `bytes`.
    fn encode_over(
        state: &ClusterState,
        previous: &TaskSpans,
        bytes: Vec<u8>,
    ) -> (Vec<u8>, TaskSpans) {
        encode(
            &head(),
            &state.copy_for_encoding(),
            Some((previous, &File(bytes))),
            2,
        )
        .unwrap()
    }

    fn counts(copied: usize, encoded: usize, reads: usize) -> EncodeCounts {
        EncodeCounts {
            copied,
            encoded,
            reads,
        }
    }

    fn same_json(a: &[u8], b: &[u8]) {
        let a: serde_json::Value = serde_json::from_slice(a).expect("valid JSON");
        let b: serde_json::Value = serde_json::from_slice(b).expect("valid JSON");
        assert_eq!(a, b);
    }

    #[test]
    fn a_snapshot_copies_the_unchanged_tasks_and_encodes_the_changed_ones() {
        let mut state = ClusterState::default();
        state.apply(&Command::UpsertNode {
            meta: Box::new(NodeMeta::fixture("n1", 1)),
            at: 1,
        });
        for i in 0..5 {
            state.apply(&create(&format!("t{i}")));
        }
        let (first, spans) = encode(&head(), &state.copy_for_encoding(), None, 1).unwrap();
        assert_eq!(spans.counts, counts(0, 5, 0));
        assert_eq!(
            (spans.file, spans.len, spans.tasks()),
            (1, first.len() as u64, 5)
        );
        same_json(&first, &serde_bytes(&state));
        let decoded: crate::sm_store::SnapshotBlob = serde_json::from_slice(&first).unwrap();
        assert_eq!(decoded.state, state);

        // One task placed, one deleted (a pending task's delete ends it; it stays, as
        // history), one new: only those three are encoded.
        state.apply(&Command::Place {
            placements: vec![Placement {
                task_id: "t1".into(),
                node: "n1".into(),
                allocation: "a1".into(),
                host_ports: vec![],
            }],
            unplaced: vec![],
            at: 2,
        });
        state.apply(&Command::DeleteTask {
            task_id: "t3".into(),
            at: 2,
        });
        state.apply(&create("t9"));
        let (second, spans2) = encode_over(&state, &spans, first.clone());
        assert!(state.tasks.contains_key("t3"));
        assert_eq!(spans2.counts, counts(3, 3, 3));
        assert_eq!((spans2.file, spans2.tasks()), (2, 6));
        same_json(&second, &serde_bytes(&state));
        let decoded: crate::sm_store::SnapshotBlob = serde_json::from_slice(&second).unwrap();
        assert_eq!(decoded.state, state);
    }

    #[test]
    fn a_task_changed_in_place_after_a_snapshot_is_encoded_again() {
        let mut state = ClusterState::default();
        state.apply(&create("t1"));
        let (first, spans) = encode(&head(), &state.copy_for_encoding(), None, 1).unwrap();
        // Nothing else holds the task now (the copy is gone): `make_mut` could change it in
        // place, but the spans' `Weak` makes it move, so its address tells the change.
        let before = Arc::as_ptr(&state.tasks["t1"]);
        state.task_mut("t1").unwrap().reason = Some("changed".into());
        assert_ne!(Arc::as_ptr(&state.tasks["t1"]), before);
        let (second, spans) = encode_over(&state, &spans, first.clone());
        assert_eq!(spans.counts, counts(0, 1, 0));
        same_json(&second, &serde_bytes(&state));
    }

    #[test]
    fn spans_that_do_not_fit_the_bytes_are_not_used() {
        let mut state = ClusterState::default();
        state.apply(&create("t1"));
        let (first, spans) = encode(&head(), &state.copy_for_encoding(), None, 1).unwrap();
        // Bytes shorter than the spans say: the task is encoded, not copied out of range.
        let (second, spans) = encode_over(&state, &spans, first[..10].to_vec());
        assert_eq!(spans.counts, counts(0, 1, 0));
        assert_eq!(second, first);
    }

    /// Random changes between snapshots (creates, placements, deletes, changes made by hand),
    /// each snapshot built from the one before: always the bytes of a snapshot that encodes
    /// every task.
    #[test]
    fn snapshots_built_one_from_another_are_always_the_whole_encoding() {
        for seed in 0..40u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut state = ClusterState::default();
            state.apply(&Command::UpsertNode {
                meta: Box::new(NodeMeta::fixture("n1", 1)),
                at: 1,
            });
            let mut previous: Option<(Vec<u8>, TaskSpans)> = None;
            for round in 0..12u64 {
                for _ in 0..next(8) {
                    let id = format!("t{}", next(20));
                    match next(4) {
                        0 => {
                            state.apply(&create(&id));
                        }
                        1 => {
                            state.apply(&Command::Place {
                                placements: vec![Placement {
                                    task_id: id,
                                    node: "n1".into(),
                                    allocation: format!("a{round}"),
                                    host_ports: vec![],
                                }],
                                unplaced: vec![],
                                at: round,
                            });
                        }
                        2 => {
                            state.apply(&Command::DeleteTask {
                                task_id: id,
                                at: round,
                            });
                        }
                        _ => {
                            if let Some(t) = state.task_mut(&id) {
                                t.restarts += 1;
                            }
                        }
                    }
                }
                let copy = state.copy_for_encoding();
                let (whole, _) = encode(&head(), &copy, None, round).unwrap();
                let file = previous.as_ref().map(|(b, _)| File(b.clone()));
                let (bytes, spans) = encode(
                    &head(),
                    &copy,
                    previous
                        .as_ref()
                        .zip(file.as_ref())
                        .map(|((_, p), f)| (p, f as &dyn SegmentFile)),
                    round,
                )
                .unwrap();
                assert_eq!(bytes, whole, "seed {seed} round {round}");
                drop(copy);
                previous = Some((bytes, spans));
            }
        }
    }
}
