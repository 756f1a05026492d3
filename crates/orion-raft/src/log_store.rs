//! The Raft log (`<data_dir>/raft-log/`, the format is `wal.rs`'s): log entries, the vote, the
//! committed log id and the last purged log id.
//!
//! Durability contract with openraft: an append is written and fsync'd (`fdatasync`) before
//! its IO callback is called, and `save_vote` before it returns, so an acknowledged entry or
//! vote survives a crash; `truncate` does the same because it undoes entries a restarted node
//! must not resurrect. `purge` writes without a sync of its own: it is a hint that may roll
//! back after a crash to a purge that had not happened yet, and the next sync makes it durable
//! along with it (a purge that deletes segments syncs first).
//!
//! `save_committed` writes nothing of its own: openraft calls it once per commit, on the
//! leader between the quorum's acknowledgement and the apply, so a write there sat on every
//! write's path. The value is kept in memory (`read_committed` answers from there) and goes
//! to disk with the next append, and at shutdown (`flush`). The committed index is a hint:
//! after a crash an older, still-true value comes back, or none, and openraft re-applies from
//! the state machine's own `last_applied` (it takes the larger of the two), so nothing
//! committed is lost.
//!
//! The most recently appended entries are also kept in memory (`Tail`, bounded by count and
//! bytes), so replication reads them without a file read and a JSON decode per entry; anything
//! older is read from its segment.
//!
//! Every write runs on one writer, in the order openraft asked for it: a thread of its own,
//! or in the simulator a task on its single-threaded runtime (its disk is memory). `append`
//! returns once its entries are queued and in the tail; the writer writes and syncs them and
//! only then calls the IO callback. Our patched openraft (`vendor/openraft`, ARCHITECTURE.md)
//! lets the leader's core replicate meanwhile, so the leader's fsync overlaps its followers'.
//! Appends queued behind each other share one write and one fsync. The other writes (vote,
//! truncate, purge, flush) wait for their turn in the same queue, so a truncate can never be
//! overtaken by an older append. A read that misses the tail waits for the queue to drain
//! before it reads the files. A crash loses what is still queued, and no callback of it runs.
//!
//! A data dir written before this format holds the log in `raft-log.redb`; `open` copies it
//! into a new `raft-log/` (built under another name, then renamed, so a crash midway leaves
//! the old log in charge) and then deletes the old file.

use crate::error::StoreError;
use crate::types::{RaftId, TypeConfig};
use crate::wal::{FsDir, SegmentDir, Wal, WalShared};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The log's directory in a data dir, and the redb file an older version kept it in.
pub(crate) const LOG_DIR: &str = "raft-log";
pub(crate) const OLD_LOG_FILE: &str = "raft-log.redb";

/// At most this many recently appended entries are kept in memory for replication reads (a
/// follower in step needs the last few; one that trails further reads the files)...
const TAIL_ENTRIES_MAX: usize = 1024;
/// ... and at most this many bytes of them (their JSON size), so big commands cannot pin much.
/// Under a 64-client load the entries are batches of about ten creates (3 KiB since a spec's
/// JSON leaves out its `null`s), so 640 KiB keeps the last couple of hundred: far more than a
/// follower in step trails by. A decoded entry takes several times its JSON in memory: at 16
/// MiB the tail kept about 5 MiB more resident on an agent holding 10,000 tasks, at 4 MiB about
/// 3, and 1 MiB of the slimmer JSON about 2.5 more than 1 MiB of the older.
const TAIL_BYTES_MAX: usize = 640 * 1024;

/// At most this many queued appends share one write (and one fsync).
const APPEND_GROUP_MAX: usize = 64;

type StResult<T> = Result<T, StorageError<RaftId>>;

/// The Raft log. Cheap to clone: clones share the files.
#[derive(Clone)]
pub struct LogStore {
    /// The files and the index of the entries in them (the writer owns the `Wal` itself).
    wal: Arc<WalShared>,
    /// Index of the last committed log id as last saved, plus one (0: none). Read by
    /// `RaftNode::status`, since openraft's metrics do not carry the commit index.
    committed: Arc<AtomicU64>,
    /// The committed log id openraft last saved, and whether the files have yet to get it.
    pending_committed: Arc<Mutex<PendingCommitted>>,
    /// The latest appended entries, as they are in the files.
    tail: Arc<Mutex<Tail>>,
    /// The writer's queue (`run_writer`).
    writer: mpsc::UnboundedSender<Job>,
}

/// What the writer does, in the order it was queued.
enum Job {
    /// Writes these entries (log id, JSON) with an fsync, then calls `done`.
    Append {
        rows: Vec<(LogId<RaftId>, Vec<u8>)>,
        done: AppendDone,
    },
    /// Any other write; it reports its own result.
    Write(WriteFn),
}

/// A write other than an append, run by the writer in its turn.
type WriteFn = Box<dyn FnOnce(&mut Wal, &Mutex<PendingCommitted>) + Send>;
/// Told an append's outcome once it is written and fsynced (or failed).
type AppendDone = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Default)]
struct PendingCommitted {
    value: Option<LogId<RaftId>>,
    dirty: bool,
}

/// Takes the committed log id if the files do not have it yet (put back by `redirty` if its
/// write fails).
fn take_pending(pending: &Mutex<PendingCommitted>) -> Option<Option<LogId<RaftId>>> {
    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut p.dirty).then_some(p.value)
}

fn redirty(pending: &Mutex<PendingCommitted>) {
    pending.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
}

/// Recently appended entries by index, each with its JSON size. Always a suffix of the log
/// as appended (in the files, or queued for the writer): filled when an append is queued, cut
/// before a truncate or purge is queued.
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}
impl Tail {
    fn insert(&mut self, entries: Vec<(Entry<TypeConfig>, usize)>) {
        for (entry, size) in entries {
            if let Some((_, old)) = self.entries.insert(entry.log_id.index, (entry, size)) {
                self.bytes -= old;
            }
            self.bytes += size;
        }
        while self.entries.len() > TAIL_ENTRIES_MAX || self.bytes > TAIL_BYTES_MAX {
            match self.entries.pop_first() {
                Some((_, (_, size))) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Drops every entry at or after `index`.
    fn truncate(&mut self, index: u64) {
        let removed = self.entries.split_off(&index);
        self.bytes -= removed.values().map(|(_, size)| size).sum::<usize>();
    }

    /// Drops every entry at or before `index`.
    fn purge(&mut self, index: u64) {
        let Some(after) = index.checked_add(1) else {
            self.entries.clear();
            self.bytes = 0;
            return;
        };
        let kept = self.entries.split_off(&after);
        self.bytes -= self.entries.values().map(|(_, size)| size).sum::<usize>();
        self.entries = kept;
    }

    /// The entries `[start, end)` if the tail holds every one of them.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        if start >= end {
            return Some(Vec::new());
        }
        let (first, _) = self.entries.first_key_value()?;
        let (last, _) = self.entries.last_key_value()?;
        if start < *first || end - 1 > *last {
            return None;
        }
        let out: Vec<_> = self
            .entries
            .range(start..end)
            .map(|(_, (e, _))| e.clone())
            .collect();
        // The tail is contiguous by construction; check rather than trust it.
        (out.len() as u64 == end - start).then_some(out)
    }
}

impl LogStore {
    /// Opens (or creates) the log of the data dir `data_dir`, first moving a log that an
    /// older version kept in `raft-log.redb` into the current format.
    pub fn open(data_dir: &Path) -> Result<LogStore, StoreError> {
        let dir = data_dir.join(LOG_DIR);
        let old = data_dir.join(OLD_LOG_FILE);
        if !dir.exists() && old.exists() {
            crate::log_migrate::from_redb(&old, &dir)?;
        }
        if old.exists() {
            // Its content is in `dir` (the rename that made `dir` was the last step).
            std::fs::remove_file(&old)?;
        }
        LogStore::with_dir(Arc::new(FsDir::open(&dir)?), false)
    }

    /// Opens (or creates) the log on a simulated disk; its writer is a task on the calling
    /// (simulated) runtime.
    pub(crate) fn open_sim(disk: &crate::sim_disk::SimDisk) -> Result<LogStore, StoreError> {
        LogStore::with_dir(disk.log_dir(), true)
    }

    pub(crate) fn with_dir(
        dir: Arc<dyn SegmentDir>,
        writer_task: bool,
    ) -> Result<LogStore, StoreError> {
        let (mut wal, committed) = Wal::open(dir)?;
        let shared = wal.shared();
        let pending_committed = Arc::new(Mutex::new(PendingCommitted {
            value: committed,
            dirty: false,
        }));
        let (writer, mut rx) = mpsc::unbounded_channel();
        let pending = pending_committed.clone();
        if writer_task {
            tokio::spawn(async move {
                let mut next = None;
                loop {
                    let job = match next.take() {
                        Some(job) => job,
                        None => match rx.recv().await {
                            Some(job) => job,
                            None => break,
                        },
                    };
                    next = run_writer(job, &mut rx, &mut wal, &pending);
                }
            });
        } else {
            std::thread::Builder::new()
                .name("orion-log-writer".into())
                .spawn(move || {
                    let mut next = None;
                    while let Some(job) = next.take().or_else(|| rx.blocking_recv()) {
                        next = run_writer(job, &mut rx, &mut wal, &pending);
                    }
                })
                .map_err(|e| StoreError::Join(e.to_string()))?;
        }
        let store = LogStore {
            wal: shared,
            committed: Arc::new(AtomicU64::new(0)),
            pending_committed,
            tail: Arc::default(),
            writer,
        };
        store.set_committed_cache(committed.as_ref());
        Ok(store)
    }

    /// Stops every later read and write and lets go of the files, so the same data dir can
    /// be opened again at once; later calls fail with `StoreError::Closed`.
    pub fn close(&self) {
        self.wal.close();
    }

    /// Writes a committed log id that is still only in memory (fsync'd). Shutdown calls this
    /// before `close`; skipping it only costs a longer replay on the next start.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|wal, pending| match take_pending(pending) {
            None => Ok(()),
            Some(committed) => wal
                .save_committed(committed)
                .inspect_err(|_| redirty(pending)),
        })
        .await
    }

    /// Runs a write on the writer, after every write queued before it, and returns its
    /// result.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Wal, &Mutex<PendingCommitted>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Write(Box::new(move |wal, pending| {
            let _ = tx.send(f(wal, pending));
        }));
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until every write queued so far is done.
    async fn drain(&self) -> Result<(), StoreError> {
        self.write(|_, _| Ok(())).await
    }

    /// Queues these entries for the writer, readable from the tail at once; `done` is called
    /// when they are written and fsynced, or failed.
    fn submit_append(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        done: AppendDone,
    ) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(entries.len());
        let mut cached = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)?;
            let log_id = entry.log_id;
            cached.push((entry, bytes.len()));
            rows.push((log_id, bytes));
        }
        metrics::histogram!("orion_raft_append_entries").record(rows.len() as f64);
        self.lock_tail().insert(cached);
        self.writer
            .send(Job::Append { rows, done })
            .map_err(|_| StoreError::Closed)
    }

    fn lock_committed(&self) -> std::sync::MutexGuard<'_, PendingCommitted> {
        self.pending_committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The commit index as last saved by openraft.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed.load(Ordering::Acquire).checked_sub(1)
    }

    fn set_committed_cache(&self, committed: Option<&LogId<RaftId>>) {
        let v = committed.map_or(0, |l| l.index.saturating_add(1));
        self.committed.store(v, Ordering::Release);
    }

    /// Entries in the range: from the tail if it holds them all, else from the files once
    /// every queued write is done (an entry that left the tail may still be in the queue).
    async fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        if let Some(hit) = self.read_tail(start, end) {
            return Ok(hit);
        }
        self.drain().await?;
        self.wal.read(start, end)
    }

    fn read_tail(&self, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let from = match start {
            Bound::Included(s) => Some(s),
            Bound::Excluded(s) => s.checked_add(1),
            Bound::Unbounded => None,
        };
        let to = match end {
            Bound::Included(e) => e.checked_add(1),
            Bound::Excluded(e) => Some(e),
            Bound::Unbounded => None,
        };
        self.lock_tail().get(from?, to?)
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let index = self.wal.index();
        let last_purged = index.last_purged;
        LogState {
            last_purged_log_id: last_purged,
            last_log_id: index
                .locs
                .last_key_value()
                .map(|(_, loc)| loc.log_id)
                .or(last_purged),
        }
    }
}

/// One step of the writer (thread or task; it runs until every `LogStore` clone is gone):
/// runs `job`, and if it is an append, every append queued right behind it too (up to
/// `APPEND_GROUP_MAX`) in the same write, one fsync, each reported after it. Returns the job
/// it took from the queue but did not run.
fn run_writer(
    job: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    wal: &mut Wal,
    pending: &Mutex<PendingCommitted>,
) -> Option<Job> {
    let (mut rows, done) = match job {
        Job::Write(f) => {
            f(wal, pending);
            return None;
        }
        Job::Append { rows, done } => (rows, done),
    };
    let mut dones = vec![done];
    let mut next = None;
    while dones.len() < APPEND_GROUP_MAX {
        match rx.try_recv() {
            Ok(Job::Append { rows: more, done }) => {
                rows.extend(more);
                dones.push(done);
            }
            Ok(other) => {
                next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    // Observed for `/metrics`: the time of the durable (fsync'd) write, the cost that bounds
    // the write path.
    let started = std::time::Instant::now();
    let committed = take_pending(pending);
    let res = wal.append(&rows, committed);
    if res.is_err() && committed.is_some() {
        redirty(pending);
    }
    if res.is_ok() {
        metrics::histogram!("orion_raft_append_seconds").record(started.elapsed().as_secs_f64());
    }
    let res = res.map_err(|e| e.to_string());
    for done in dones {
        done(res.clone());
    }
    next
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(range.start_bound().cloned(), range.end_bound().cloned())
            .await
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        self.drain()
            .await
            .map(|()| self.log_state())
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> StResult<()> {
        // A vote must be on disk before it is answered: synced.
        let vote = *vote;
        self.write(move |wal, _| wal.save_vote(&vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<RaftId>>> {
        Ok(self.wal.index().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> StResult<()> {
        // Memory only; the next append takes it to disk (see the module docs).
        {
            let mut p = self.lock_committed();
            p.value = committed;
            p.dirty = true;
        }
        self.set_committed_cache(committed.as_ref());
        Ok(())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<RaftId>>> {
        Ok(self.lock_committed().value)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        // Only once the batch is on disk is openraft told (see the module docs).
        let done = Box::new(move |res: Result<(), String>| {
            callback.log_io_completed(res.map_err(std::io::Error::other));
        });
        self.submit_append(entries, done)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> StResult<()> {
        tracing::debug!(%log_id, "truncate raft log");
        // Before the files: a failed truncate then leaves reads to the files, which still
        // have it all.
        self.lock_tail().truncate(log_id.index);
        self.write(move |wal, _| wal.truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StResult<()> {
        tracing::debug!(%log_id, "purge raft log");
        self.lock_tail().purge(log_id.index);
        self.write(move |wal, _| wal.purge(log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::blank_ent;

    fn entry(index: u64) -> Entry<TypeConfig> {
        blank_ent::<TypeConfig>(1, 1, index)
    }

    /// Queues `count` one-entry appends without waiting; each records its index when reported.
    fn queue_appends(store: &LogStore, range: std::ops::Range<u64>) -> Arc<Mutex<Vec<u64>>> {
        let reported = Arc::new(Mutex::new(Vec::new()));
        for index in range {
            let reported = reported.clone();
            let done = Box::new(move |res: Result<(), String>| {
                res.expect("append written");
                reported.lock().expect("lock").push(index);
            });
            store
                .submit_append(vec![entry(index)], done)
                .expect("queued");
        }
        reported
    }

    #[tokio::test]
    async fn queued_appends_are_reported_in_order_and_a_truncate_waits_behind_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        let mut store = LogStore::open(path).expect("open");
        let reported = queue_appends(&store, 1..41);
        // Readable at once, before any flush is reported: replication reads them from the tail.
        let early = store.try_get_log_entries(1..41).await.expect("read");
        assert_eq!(early.len(), 40);
        // The truncate is queued behind the 40 appends, so it cannot be overtaken by them.
        store.truncate(entry(31).log_id).await.expect("truncate");
        assert_eq!(*reported.lock().expect("lock"), (1..41).collect::<Vec<_>>());
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(30));
        store.close();
        drop(store);
        let mut reopened = LogStore::open(path).expect("reopen");
        let on_disk = reopened.try_get_log_entries(1..100).await.expect("read");
        let indexes: Vec<u64> = on_disk.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..31).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_entry_that_left_the_tail_is_read_once_the_queue_drains() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        let count = TAIL_ENTRIES_MAX as u64 + 200;
        let reported = queue_appends(&store, 1..count + 1);
        // Entry 1 left the tail when the later ones were queued; it may not be in redb yet.
        let first = store.try_get_log_entries(1..2).await.expect("read");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].log_id.index, 1);
        store.get_log_state().await.expect("drained");
        assert_eq!(reported.lock().expect("lock").len() as u64, count);
    }

    #[tokio::test]
    async fn a_failed_append_is_reported_to_its_callback() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::open(dir.path()).expect("open");
        store.close();
        let (tx, rx) = std::sync::mpsc::channel();
        let done = Box::new(move |res: Result<(), String>| {
            let _ = tx.send(res);
        });
        store.submit_append(vec![entry(1)], done).expect("queued");
        let res = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reported");
        assert!(res.is_err(), "an append to a closed log must fail: {res:?}");
    }

    /// An entry with a payload of about `bytes` (a blank entry is too small to fill segments).
    fn big_entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let mut e = entry(index);
        e.payload =
            openraft::EntryPayload::Normal(std::sync::Arc::new(orion_types::Command::Place {
                placements: Vec::new(),
                unplaced: vec![("t".to_string(), "x".repeat(bytes))],
                at: 0,
            }));
        e
    }

    async fn append_now(store: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Box::new(move |res: Result<(), String>| {
            let _ = tx.send(res);
        });
        store.submit_append(entries, done).expect("queued");
        rx.await.expect("reported").expect("written");
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(LOG_DIR))
            .expect("log dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn indexes(store: &mut LogStore, range: std::ops::Range<u64>) -> Vec<u64> {
        let entries = store.try_get_log_entries(range).await.expect("read");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn vote_committed_and_entries_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        let vote = Vote::new_committed(3, 7);
        store.save_vote(&vote).await.expect("vote");
        append_now(&mut store, (1..6).map(entry).collect()).await;
        store
            .save_committed(Some(entry(4).log_id))
            .await
            .expect("committed");
        store.flush().await.expect("flush");
        store.close();
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(
            store.read_committed().await.expect("committed"),
            Some(entry(4).log_id)
        );
        assert_eq!(store.committed_index(), Some(4));
        assert_eq!(indexes(&mut store, 0..100).await, vec![1, 2, 3, 4, 5]);
    }

    /// Regression guard for the torn tail: bytes after the last whole record (a write that
    /// was cut short and never acknowledged) are dropped on open and zeroed, so an append
    /// after them is not followed by stale bytes that could read as a record.
    #[tokio::test]
    async fn a_torn_tail_is_dropped_and_the_log_goes_on_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append_now(&mut store, (1..4).map(entry).collect()).await;
        store.close();
        drop(store);
        let seg = dir.path().join(LOG_DIR).join(&segments(dir.path())[0]);
        let bytes = std::fs::read(&seg).expect("segment");
        let end = bytes.iter().rposition(|b| *b != 0).expect("records") + 1;
        // A record head that promises more than was written, then part of its payload.
        let mut torn = 500u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0xAB; 40]);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open segment");
        std::os::unix::fs::FileExt::write_all_at(&file, &torn, end as u64).expect("tear");
        drop(file);

        let mut store = LogStore::open(dir.path()).expect("reopen past a torn tail");
        assert_eq!(indexes(&mut store, 0..100).await, vec![1, 2, 3]);
        append_now(&mut store, vec![entry(4)]).await;
        store.close();
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&mut store, 0..100).await, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_damaged_record_before_the_last_segment_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        // Two segments: 24 entries of 512 KiB fill more than one.
        for i in 1..25 {
            append_now(&mut store, vec![big_entry(i, 512 << 10)]).await;
        }
        store.close();
        drop(store);
        let names = segments(dir.path());
        assert!(names.len() >= 2, "{names:?}");
        let first = dir.path().join(LOG_DIR).join(&names[0]);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .expect("open segment");
        // Flip bytes in the middle of the first record after the checkpoint.
        std::os::unix::fs::FileExt::write_all_at(&file, &[0x55; 16], 100).expect("damage");
        drop(file);
        let err = LogStore::open(dir.path())
            .err()
            .expect("a damaged segment fails to open");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[tokio::test]
    async fn purged_segments_are_deleted_and_the_rest_replays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        let vote = Vote::new_committed(2, 1);
        store.save_vote(&vote).await.expect("vote");
        for i in 1..61 {
            append_now(&mut store, vec![big_entry(i, 512 << 10)]).await;
        }
        let before = segments(dir.path()).len();
        assert!(before >= 3, "60 entries of 512 KiB fill several segments");
        store.purge(entry(50).log_id).await.expect("purge");
        let after = segments(dir.path()).len();
        assert!(after < before, "purged segments stay: {before} -> {after}");
        // A truncate and a re-append after the purge, then a reopen replays all of it.
        store.truncate(entry(59).log_id).await.expect("truncate");
        append_now(&mut store, vec![entry(59)]).await;
        store.close();
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(50));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(59));
        assert_eq!(store.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(
            indexes(&mut store, 0..100).await,
            (51..60).collect::<Vec<_>>()
        );
    }

    /// A data dir of the older format: the redb log is copied into segments and deleted.
    #[tokio::test]
    async fn a_redb_log_of_the_older_format_is_moved_into_segments() {
        use redb::TableDefinition;
        const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
        const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
        let dir = tempfile::tempdir().expect("temp dir");
        let vote = Vote::new_committed(5, 2);
        {
            let db = redb::Database::create(dir.path().join(OLD_LOG_FILE)).expect("redb");
            let txn = db.begin_write().expect("txn");
            {
                let mut logs = txn.open_table(LOGS).expect("logs");
                for i in 11..21 {
                    let json = serde_json::to_vec(&entry(i)).expect("json");
                    logs.insert(i, json.as_slice()).expect("insert");
                }
                let mut meta = txn.open_table(META).expect("meta");
                let put = |m: &mut redb::Table<&str, &[u8]>, k: &str, v: Vec<u8>| {
                    m.insert(k, v.as_slice()).expect("meta insert");
                };
                put(&mut meta, "vote", serde_json::to_vec(&vote).expect("json"));
                let committed = Some(entry(18).log_id);
                put(
                    &mut meta,
                    "committed",
                    serde_json::to_vec(&committed).expect("json"),
                );
                let purged = Some(entry(10).log_id);
                put(
                    &mut meta,
                    "last_purged",
                    serde_json::to_vec(&purged).expect("json"),
                );
            }
            txn.commit().expect("commit");
        }
        let mut store = LogStore::open(dir.path()).expect("open and migrate");
        assert!(
            !dir.path().join(OLD_LOG_FILE).exists(),
            "the old file is gone"
        );
        assert!(!dir.path().join("raft-log.migrating").exists());
        assert_eq!(store.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(store.committed_index(), Some(18));
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(10));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(20));
        assert_eq!(
            indexes(&mut store, 0..100).await,
            (11..21).collect::<Vec<_>>()
        );
    }

    /// On the simulated disk: what was synced survives a crash, the unsynced purge may not,
    /// and the log is whole either way.
    #[tokio::test(flavor = "current_thread")]
    async fn a_simulated_crash_keeps_every_acknowledged_entry() {
        let disk = crate::sim_disk::SimDisk::new();
        let mut store = LogStore::open_sim(&disk).expect("open");
        for i in 1..41 {
            append_now(&mut store, vec![big_entry(i, 256 << 10)]).await;
        }
        store.purge(entry(3).log_id).await.expect("purge");
        assert!(disk.unsynced_pages() > 0, "a purge is not synced by itself");
        disk.crash();
        drop(store);
        let mut store = LogStore::open_sim(&disk).expect("reopen");
        let got = indexes(&mut store, 0..100).await;
        assert_eq!(got.last(), Some(&40));
        assert!(got.first().is_some_and(|f| *f <= 4), "{got:?}");
        assert_eq!(disk.unsynced_pages(), 0);
    }
}
