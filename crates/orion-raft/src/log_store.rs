//! The Raft log on redb (`<data_dir>/raft-log.redb`): log entries, the vote, the committed log
//! id and the last purged log id.
//!
//! Durability contract with openraft: an append commits with `Durability::Immediate` (one
//! fsync) before its IO callback is called, and `save_vote` before it returns, so an
//! acknowledged entry or vote survives a crash; `truncate` does the same because it undoes
//! entries a restarted node must not resurrect. `purge` commits without fsync
//! (`Durability::None`): it is a hint that may roll back after a crash to a purge that had not
//! happened yet, and the next fsync'd commit of this database makes it durable along with it.
//!
//! `save_committed` writes no transaction of its own: openraft calls it once per commit, on
//! the leader between the quorum's acknowledgement and the apply, so a redb commit there sat on
//! every write's path. The value is kept in memory (`read_committed` answers from there) and
//! goes to disk inside the next write transaction of this database (normally the next
//! `append`), and at shutdown (`flush`). The committed index is a hint: after a crash an older,
//! still-true value comes back, or none, and openraft re-applies from the state machine's own
//! `last_applied` (it takes the larger of the two), so nothing committed is lost.
//!
//! The most recently appended entries are also kept in memory (`Tail`, bounded by count and
//! bytes), so replication reads them without a redb read transaction and a JSON decode per
//! entry; anything older is read from redb.
//!
//! Every write runs on one writer, in the order openraft asked for it: a thread of its own,
//! or in the simulator a task on its single-threaded runtime (its disk is memory). `append`
//! returns once its entries are queued and in the tail; the writer commits them and only then
//! calls the IO callback. Our patched openraft (`vendor/openraft`, ARCHITECTURE.md)
//! lets the leader's core replicate meanwhile, so the leader's fsync overlaps its followers'.
//! Appends queued behind each other share one transaction and one fsync. The other writes
//! (vote, truncate, purge, flush) wait for their turn in the same queue, so a truncate can
//! never be overtaken by an older append. A read that misses the tail waits for the queue to
//! drain before it reads redb. A crash loses what is still queued, and no callback of it runs.

use crate::error::StoreError;
use crate::types::{RaftId, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// Log index -> JSON of `Entry<TypeConfig>`.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Small named values: `vote`, `committed`, `last_purged` (JSON).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// At most this many recently appended entries are kept in memory for replication reads (a
/// follower in step needs the last few; one that trails further reads redb)...
const TAIL_ENTRIES_MAX: usize = 1024;
/// ... and at most this many bytes of them (their JSON size), so big commands cannot pin much.
/// Under a 64-client load the entries are batches of about ten creates (5 KiB), so 1 MiB keeps
/// the last couple of hundred: far more than a follower in step trails by. At 16 MiB the tail
/// kept about 5 MiB more resident on an agent holding 10,000 tasks, at 4 MiB about 3.
const TAIL_BYTES_MAX: usize = 1024 * 1024;

/// At most this many queued appends share one transaction (and one fsync).
const APPEND_GROUP_MAX: usize = 64;

type StResult<T> = Result<T, StorageError<RaftId>>;

/// The redb-backed Raft log. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DbSlot>,
    /// Index of the last committed log id as last saved, plus one (0: none). Read by
    /// `RaftNode::status`, since openraft's metrics do not carry the commit index.
    committed: Arc<AtomicU64>,
    /// The committed log id openraft last saved, and whether redb has yet to get it.
    pending_committed: Arc<Mutex<PendingCommitted>>,
    /// The latest appended entries, as they are in redb.
    tail: Arc<Mutex<Tail>>,
    /// The writer's queue (`run_writer`).
    writer: mpsc::UnboundedSender<Job>,
}

/// What the writer does, in the order it was queued.
enum Job {
    /// Commits these rows (log index, JSON) with an fsync, then calls `done`.
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        done: AppendDone,
    },
    /// Any other write; it reports its own result.
    Write(WriteFn),
}

/// A write other than an append, run by the writer in its turn.
type WriteFn = Box<dyn FnOnce(&DbSlot, &Mutex<PendingCommitted>) + Send>;
/// Told an append's outcome once it is committed and fsynced (or failed).
type AppendDone = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Default)]
struct PendingCommitted {
    value: Option<LogId<RaftId>>,
    dirty: bool,
}

/// Recently appended entries by index, each with its JSON size. Always a suffix of the log
/// as appended (in redb, or queued for the writer): filled when an append is queued, cut
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
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        LogStore::with_db(
            crate::redb_builder(crate::LOG_CACHE_BYTES).create(path)?,
            false,
        )
    }

    /// Opens (or creates) the log database on a simulated disk; its writer is a task on the
    /// calling (simulated) runtime.
    pub(crate) fn open_sim(disk: &crate::sim_disk::SimDisk) -> Result<LogStore, StoreError> {
        let db =
            crate::redb_builder(crate::LOG_CACHE_BYTES).create_with_backend(disk.log_backend())?;
        LogStore::with_db(db, true)
    }

    fn with_db(db: Database, writer_task: bool) -> Result<LogStore, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        let db = DbSlot::new(db);
        let pending_committed: Arc<Mutex<PendingCommitted>> = Arc::default();
        let (writer, mut rx) = mpsc::unbounded_channel();
        let (slot, pending) = (db.clone(), pending_committed.clone());
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
                    next = run_writer(job, &mut rx, &slot, &pending);
                }
            });
        } else {
            std::thread::Builder::new()
                .name("orion-log-writer".into())
                .spawn(move || {
                    let mut next = None;
                    while let Some(job) = next.take().or_else(|| rx.blocking_recv()) {
                        next = run_writer(job, &mut rx, &slot, &pending);
                    }
                })
                .map_err(|e| StoreError::Join(e.to_string()))?;
        }
        let store = LogStore {
            db,
            committed: Arc::new(AtomicU64::new(0)),
            pending_committed,
            tail: Arc::default(),
            writer,
        };
        let committed: Option<LogId<RaftId>> = store.read_meta(KEY_COMMITTED)?;
        store.set_committed_cache(committed.as_ref());
        store.lock_committed().value = committed;
        Ok(store)
    }

    /// Releases the database file (see `DbSlot`); later calls fail with `StoreError::Closed`.
    pub fn close(&self) {
        self.db.close();
    }

    /// Writes a committed log id that is still only in memory (fsync'd). Shutdown calls this
    /// before `close`; skipping it only costs a longer replay on the next start.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if !self.lock_committed().dirty {
            return Ok(());
        }
        self.write(|db, pending| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let wrote = write_pending_committed(&txn, pending)?;
            commit_or_redirty(txn, pending, wrote)
        })
        .await
    }

    /// Runs a write transaction on the writer, after every write queued before it, and
    /// returns its result.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Mutex<PendingCommitted>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Write(Box::new(move |slot, pending| {
            let _ = tx.send(slot.get().and_then(|db| f(&db, pending)));
        }));
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until every write queued so far is done.
    async fn drain(&self) -> Result<(), StoreError> {
        self.write(|_, _| Ok(())).await
    }

    /// Queues these entries for the writer, readable from the tail at once; `done` is called
    /// when they are committed and fsynced, or failed.
    fn submit_append(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        done: AppendDone,
    ) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(entries.len());
        let mut cached = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)?;
            let index = entry.log_id.index;
            cached.push((entry, bytes.len()));
            rows.push((index, bytes));
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

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.get()?.begin_read()?;
        let table = txn.open_table(META)?;
        match table.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        }
    }

    /// Writes one META value in its own transaction, in the writer's order.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        self.write(move |db, pending| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            let wrote = write_pending_committed(&txn, pending)?;
            commit_or_redirty(txn, pending, wrote)
        })
        .await
    }

    /// Entries in the range: from the tail if it holds them all, else from redb once every
    /// queued write is done (an entry that left the tail may still be in the queue).
    async fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        if let Some(hit) = self.read_tail(start, end) {
            return Ok(hit);
        }
        self.drain().await?;
        self.read_redb(start, end)
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

    fn read_redb(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let txn = self.db.get()?.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end))? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<RaftId>> = self.read_meta(KEY_LAST_PURGED)?;
        let txn = self.db.get()?.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let last = match table.last()? {
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())?;
                Some(*entry.get_log_id())
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }
}

/// A database that `close` releases even while clones of its store are still alive (openraft
/// keeps some until its tasks wind down), so the same files can be reopened at once.
pub(crate) struct DbSlot(RwLock<Option<Arc<Database>>>);

impl DbSlot {
    pub(crate) fn new(db: Database) -> Arc<DbSlot> {
        Arc::new(DbSlot(RwLock::new(Some(Arc::new(db)))))
    }

    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Drops this handle on the database; it closes when in-flight operations finish.
    pub(crate) fn close(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Puts the committed log id into `txn` if redb does not have it yet; true if it did. Runs
/// inside the write transaction, so of two transactions the later one writes the later value.
fn write_pending_committed(
    txn: &redb::WriteTransaction,
    pending: &Mutex<PendingCommitted>,
) -> Result<bool, StoreError> {
    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
    if !p.dirty {
        return Ok(false);
    }
    let bytes = serde_json::to_vec(&p.value)?;
    txn.open_table(META)?
        .insert(KEY_COMMITTED, bytes.as_slice())?;
    p.dirty = false;
    Ok(true)
}

/// Commits `txn`; if it carried the committed log id and failed, marks that unwritten again.
fn commit_or_redirty(
    txn: redb::WriteTransaction,
    pending: &Mutex<PendingCommitted>,
    wrote_committed: bool,
) -> Result<(), StoreError> {
    let res = txn.commit();
    if res.is_err() && wrote_committed {
        pending.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
    }
    Ok(res?)
}

/// Commits log rows with an fsync (and the pending committed log id with them).
fn write_rows(
    db: &Database,
    pending: &Mutex<PendingCommitted>,
    rows: &[(u64, Vec<u8>)],
) -> Result<(), StoreError> {
    // Observed for `/metrics`: the time of the durable (fsync'd) transaction, the cost that
    // bounds the write path.
    let started = std::time::Instant::now();
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(LOGS)?;
        for (index, bytes) in rows {
            table.insert(*index, bytes.as_slice())?;
        }
    }
    let wrote = write_pending_committed(&txn, pending)?;
    commit_or_redirty(txn, pending, wrote)?;
    metrics::histogram!("orion_raft_append_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// One step of the writer (thread or task; it runs until every `LogStore` clone is gone):
/// runs `job`, and if it is an append, every append queued right behind it too (up to
/// `APPEND_GROUP_MAX`) in the same transaction, one fsync, each reported after it. Returns the
/// job it took from the queue but did not run.
fn run_writer(
    job: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    slot: &DbSlot,
    pending: &Mutex<PendingCommitted>,
) -> Option<Job> {
    let (mut rows, done) = match job {
        Job::Write(f) => {
            f(slot, pending);
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
    let res = slot
        .get()
        .and_then(|db| write_rows(&db, pending, &rows))
        .map_err(|e| e.to_string());
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
            .and_then(|()| self.log_state())
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> StResult<()> {
        // A vote must be on disk before it is answered: Immediate.
        self.write_meta(KEY_VOTE, vote, Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<RaftId>>> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> StResult<()> {
        // Memory only; the next write transaction takes it to disk (see the module docs).
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
        // Before redb: a failed truncate then leaves reads to redb, which still has it all.
        self.lock_tail().truncate(log_id.index);
        self.write(move |db, pending| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOGS)?
                .retain_in::<u64, _>(log_id.index.., |_, _| false)?;
            let wrote = write_pending_committed(&txn, pending)?;
            commit_or_redirty(txn, pending, wrote)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StResult<()> {
        tracing::debug!(%log_id, "purge raft log");
        let bytes =
            serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        self.lock_tail().purge(log_id.index);
        self.write(move |db, pending| {
            let mut txn = db.begin_write()?;
            // Safe without fsync: after a crash the purge may be undone, leaving more log than
            // needed, never less.
            txn.set_durability(Durability::None)?;
            txn.open_table(META)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOGS)?
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
            let wrote = write_pending_committed(&txn, pending)?;
            commit_or_redirty(txn, pending, wrote)
        })
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
        let path = dir.path().join("raft-log.redb");
        let mut store = LogStore::open(&path).expect("open");
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
        let mut reopened = LogStore::open(&path).expect("reopen");
        let on_disk = reopened.try_get_log_entries(1..100).await.expect("read");
        let indexes: Vec<u64> = on_disk.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..31).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_entry_that_left_the_tail_is_read_once_the_queue_drains() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(&dir.path().join("raft-log.redb")).expect("open");
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
        let store = LogStore::open(&dir.path().join("raft-log.redb")).expect("open");
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
}
