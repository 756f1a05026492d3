//! The Raft log on redb (`<data_dir>/raft-log.redb`): log entries, the vote, the committed log
//! id and the last purged log id.
//!
//! Durability contract with openraft: `append` and `save_vote` commit with
//! `Durability::Immediate` (one fsync) before they call the IO callback or return, so an
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
//! redb is synchronous, so every write transaction runs on tokio's blocking pool.

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
    /// Run redb writes on the calling task instead of a blocking thread (the simulator's
    /// single-threaded runtime, whose disk is memory).
    inline: bool,
}

#[derive(Default)]
struct PendingCommitted {
    value: Option<LogId<RaftId>>,
    dirty: bool,
}

/// Recently appended entries by index, each with its JSON size. Always a suffix of the log
/// as redb holds it: filled after an append commits, cut before a truncate or purge runs.
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

    /// Opens (or creates) the log database on a simulated disk; writes run inline.
    pub(crate) fn open_sim(disk: &crate::sim_disk::SimDisk) -> Result<LogStore, StoreError> {
        let db =
            crate::redb_builder(crate::LOG_CACHE_BYTES).create_with_backend(disk.log_backend())?;
        LogStore::with_db(db, true)
    }

    fn with_db(db: Database, inline: bool) -> Result<LogStore, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        let store = LogStore {
            db: DbSlot::new(db),
            committed: Arc::new(AtomicU64::new(0)),
            pending_committed: Arc::default(),
            tail: Arc::default(),
            inline,
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
        let slot = self.db.clone();
        let pending = self.pending_committed.clone();
        blocking(self.inline, move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let wrote = write_pending_committed(&txn, &pending)?;
            commit_or_redirty(txn, &pending, wrote)
        })
        .await
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

    /// Writes one META value in its own transaction on the blocking pool.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        let slot = self.db.clone();
        let pending = self.pending_committed.clone();
        blocking(self.inline, move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            let wrote = write_pending_committed(&txn, &pending)?;
            commit_or_redirty(txn, &pending, wrote)
        })
        .await
    }

    fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
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
        if let (Some(from), Some(to)) = (from, to)
            && let Some(hit) = self.lock_tail().get(from, to)
        {
            return Ok(hit);
        }
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

/// Runs a redb write (which may fsync) off the async workers and waits for it.
///
/// On a multi-threaded runtime this is `block_in_place`: the calling task, which waits for the
/// write anyway (openraft's core awaits every log write), runs it on its own thread while the
/// runtime moves the other tasks to another worker. That saves the two thread hand-offs of
/// `spawn_blocking`, tens of microseconds each, on every append. Elsewhere (a current-thread
/// runtime, as in unit tests) it falls back to the blocking pool. `inline` (the simulator, whose
/// disk is memory and whose runtime must stay on one thread) runs it right here.
pub(crate) async fn blocking<T, F>(inline: bool, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    if inline {
        return f();
    }
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        return tokio::task::block_in_place(f);
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        self.log_state()
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
        let mut rows = Vec::new();
        let mut cached = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(*entry.get_log_id(), &e))?;
            rows.push((entry.get_log_id().index, bytes));
            cached.push(entry);
        }
        let slot = self.db.clone();
        let pending = self.pending_committed.clone();
        // Observed for `/metrics` only: entries per append and the time of the durable
        // (fsync'd) transaction, the cost that bounds the write path.
        metrics::histogram!("orion_raft_append_entries").record(rows.len() as f64);
        let res = blocking(self.inline, move || {
            let started = std::time::Instant::now();
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            let wrote = write_pending_committed(&txn, &pending)?;
            commit_or_redirty(txn, &pending, wrote)?;
            metrics::histogram!("orion_raft_append_seconds")
                .record(started.elapsed().as_secs_f64());
            Ok(rows.into_iter().map(|(_, bytes)| bytes.len()))
        })
        .await;
        match res {
            Ok(sizes) => {
                // Readable from memory from now on, as it is from redb.
                self.lock_tail()
                    .insert(cached.into_iter().zip(sizes).collect());
                // Only now is the batch on disk: tell openraft.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> StResult<()> {
        tracing::debug!(%log_id, "truncate raft log");
        // Before redb: a failed truncate then leaves reads to redb, which still has it all.
        self.lock_tail().truncate(log_id.index);
        let slot = self.db.clone();
        let pending = self.pending_committed.clone();
        blocking(self.inline, move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOGS)?
                .retain_in::<u64, _>(log_id.index.., |_, _| false)?;
            let wrote = write_pending_committed(&txn, &pending)?;
            commit_or_redirty(txn, &pending, wrote)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StResult<()> {
        tracing::debug!(%log_id, "purge raft log");
        let bytes =
            serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        self.lock_tail().purge(log_id.index);
        let slot = self.db.clone();
        let pending = self.pending_committed.clone();
        blocking(self.inline, move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            // Safe without fsync: after a crash the purge may be undone, leaving more log than
            // needed, never less.
            txn.set_durability(Durability::None)?;
            txn.open_table(META)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOGS)?
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
            let wrote = write_pending_committed(&txn, &pending)?;
            commit_or_redirty(txn, &pending, wrote)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
