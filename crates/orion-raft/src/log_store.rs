//! The Raft log on redb (`<data_dir>/raft-log.redb`): log entries, the vote, the committed log
//! id and the last purged log id.
//!
//! Durability contract with openraft: `append` and `save_vote` commit with
//! `Durability::Immediate` (one fsync) before they call the IO callback or return, so an
//! acknowledged entry or vote survives a crash; `truncate` does the same because it undoes
//! entries a restarted node must not resurrect. `save_committed` and `purge` commit without
//! fsync (`Durability::None`): both are hints that may roll back after a crash to an older,
//! still-true value (a committed index that was once committed; a purge that had not happened
//! yet), and the next fsync'd commit of this database makes them durable along with it.
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
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Log index -> JSON of `Entry<TypeConfig>`.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Small named values: `vote`, `committed`, `last_purged` (JSON).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

type StResult<T> = Result<T, StorageError<RaftId>>;

/// The redb-backed Raft log. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DbSlot>,
    /// Index of the last committed log id as last saved, plus one (0: none). Read by
    /// `RaftNode::status`, since openraft's metrics do not carry the commit index.
    committed: Arc<AtomicU64>,
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        let store = LogStore {
            db: DbSlot::new(db),
            committed: Arc::new(AtomicU64::new(0)),
        };
        let committed: Option<LogId<RaftId>> = store.read_meta(KEY_COMMITTED)?;
        store.set_committed_cache(committed.as_ref());
        Ok(store)
    }

    /// Releases the database file (see `DbSlot`); later calls fail with `StoreError::Closed`.
    pub fn close(&self) {
        self.db.close();
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
        blocking(move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    fn read_entries(
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

/// Runs a redb write on tokio's blocking pool and waits for it.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
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
        self.write_meta(KEY_COMMITTED, &committed, Durability::None)
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        self.set_committed_cache(committed.as_ref());
        Ok(())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<RaftId>>> {
        self.read_meta(KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(*entry.get_log_id(), &e))?;
            rows.push((entry.get_log_id().index, bytes));
        }
        let slot = self.db.clone();
        let res = blocking(move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
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
        let slot = self.db.clone();
        blocking(move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOGS)?
                .retain_in::<u64, _>(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StResult<()> {
        tracing::debug!(%log_id, "purge raft log");
        let bytes =
            serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        let slot = self.db.clone();
        blocking(move || {
            let db = slot.get()?;
            let mut txn = db.begin_write()?;
            // Safe without fsync: after a crash the purge may be undone, leaving more log than
            // needed, never less.
            txn.set_durability(Durability::None)?;
            txn.open_table(META)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOGS)?
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
