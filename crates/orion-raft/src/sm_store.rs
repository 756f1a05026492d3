//! The state machine on redb (`<data_dir>/state.redb`) plus its in-memory copy, and snapshots.
//!
//! Memory holds the whole `ClusterState` (every read is served from it); redb holds one row per
//! node and per task, written from `ClusterState::row` for exactly the keys a batch touched, in
//! the same write transaction as `last_applied` and `last_membership`, one transaction per
//! `apply` batch. On open the rows are loaded back with `ClusterState::from_rows`.
//!
//! Durability argument for the apply transactions (`Durability::None`, no fsync): redb keeps a
//! non-durable commit consistent and atomic, and after a crash the database returns to an
//! earlier commit: rows and `last_applied` roll back *together*. The Raft log, which is
//! fsync'd before anything is acknowledged, still holds every entry after that older
//! `last_applied`, because the log is only purged behind a snapshot and a snapshot is written
//! with `Durability::Immediate`, which makes every earlier non-durable commit durable too (the
//! `persist` gate orders the snapshot commit after the apply commits it covers). openraft then
//! re-applies the gap from the log (it reads the saved commit index on start), and `apply` is
//! deterministic, so the replayed state is the one that was lost. Every
//! `SYNC_EVERY_BATCHES`-th batch is fsync'd anyway, to bound that replay and let redb reclaim
//! pages, and shutdown syncs once more.
//!
//! A snapshot is the whole `ClusterState` with its `last_applied` and membership, as JSON; the
//! current one is stored in redb too, so it survives a restart and can be sent to a new learner.

use crate::error::StoreError;
use crate::log_store::{DbSlot, blocking};
use crate::types::{Peer, RaftId, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use orion_state::{ClusterState, Key};
use orion_types::Response;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// Row key (`Key::encode`) -> row bytes (`ClusterState::row`).
const ROWS: TableDefinition<&str, &[u8]> = TableDefinition::new("rows");
/// `last_applied`, `last_membership` (JSON).
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// `meta` (JSON `SnapshotMeta`) and `data` (the snapshot bytes) of the current snapshot.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_LAST_APPLIED: &str = "last_applied";
const KEY_LAST_MEMBERSHIP: &str = "last_membership";
const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";

/// One apply batch in this many is fsync'd. Each fsync costs about a millisecond on an SSD, so
/// 1 in 100 keeps the overhead near 1% while bounding the work replayed after a crash and the
/// pages redb cannot reuse before a durable commit.
const SYNC_EVERY_BATCHES: u64 = 100;

type StResult<T> = Result<T, StorageError<RaftId>>;
type Membership = StoredMembership<RaftId, Peer>;

/// The applied state, as one consistent unit.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId<RaftId>>,
    pub last_membership: Membership,
}

/// The bytes of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBlob {
    last_applied: Option<LogId<RaftId>>,
    last_membership: Membership,
    state: ClusterState,
}

struct Shared {
    db: Arc<DbSlot>,
    applied: RwLock<Applied>,
    /// Applied index (0 before the first entry); bumps after each apply batch or install.
    applied_tx: watch::Sender<u64>,
    /// Held from the in-memory change to the redb commit of an apply batch, and while a
    /// snapshot is taken or installed, so redb sees them in log order.
    persist: tokio::sync::Mutex<()>,
    batches: AtomicU64,
    snapshot_seq: AtomicU64,
}

/// The redb-backed state machine. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

fn applied_index(log_id: Option<&LogId<RaftId>>) -> u64 {
    log_id.map_or(0, |l| l.index)
}

impl StateMachineStore {
    /// Opens (or creates) the state database at `path` and loads it into memory.
    pub fn open(path: &Path) -> Result<StateMachineStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ROWS)?;
        txn.open_table(SM_META)?;
        txn.open_table(SNAPSHOT)?;
        txn.commit()?;

        let (mut applied, snapshot) = {
            let txn = db.begin_read()?;
            let rows = txn.open_table(ROWS)?;
            let mut loaded = Vec::new();
            for item in rows.range::<&str>(..)? {
                let (k, v) = item?;
                loaded.push((k.value().to_string(), v.value().to_vec()));
            }
            let state = ClusterState::from_rows(loaded)?;
            let meta = txn.open_table(SM_META)?;
            let last_applied = get_json(&meta, KEY_LAST_APPLIED)?.unwrap_or_default();
            let last_membership = get_json(&meta, KEY_LAST_MEMBERSHIP)?.unwrap_or_default();
            let snap = txn.open_table(SNAPSHOT)?;
            let snapshot = read_snapshot(&snap)?;
            (
                Applied {
                    state,
                    last_applied,
                    last_membership,
                },
                snapshot,
            )
        };

        // Never behind the stored snapshot (cannot happen with the persist gate; cheap to
        // guard): if it were, the log it would need may be purged, so start from the snapshot.
        if let Some((meta, data)) = snapshot
            && meta.last_log_id > applied.last_applied
        {
            tracing::warn!(snapshot = %meta, "state behind its snapshot; loading the snapshot");
            let blob: SnapshotBlob = serde_json::from_slice(&data)?;
            applied = Applied {
                state: blob.state,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership,
            };
            write_all_rows(&db, &applied, None)?;
        }

        let (applied_tx, _) = watch::channel(applied_index(applied.last_applied.as_ref()));
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                db: DbSlot::new(db),
                applied: RwLock::new(applied),
                applied_tx,
                persist: tokio::sync::Mutex::new(()),
                batches: AtomicU64::new(0),
                snapshot_seq: AtomicU64::new(RandomState::new().hash_one(path)),
            }),
        })
    }

    /// Read access to the applied state.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic inside `apply`, a programmer error; the data is still
        // the last consistent state, so keep serving it.
        self.shared
            .applied
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.shared
            .applied
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Applied index watch: 0 before anything was applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// Releases the database file (see `DbSlot`); the in-memory state stays readable.
    pub fn close(&self) {
        self.shared.db.close();
    }

    /// Makes every earlier non-durable commit durable (one fsync).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let _gate = self.shared.persist.lock().await;
        let db = self.shared.db.get()?;
        blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn apply_batch(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, StoreError> {
        crate::tmark("apply_in", entries.last().map_or(0, |e| e.log_id.index));
        let _gate = self.shared.persist.lock().await;
        let mut responses = Vec::with_capacity(entries.len());
        let (rows, last_applied, last_membership, index) = {
            let mut applied = self.write();
            let mut touched = BTreeSet::new();
            for entry in entries {
                assert!(
                    Some(&entry.log_id) > applied.last_applied.as_ref(),
                    "applied index must grow: {} after {:?}",
                    entry.log_id,
                    applied.last_applied
                );
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::default()),
                    EntryPayload::Normal(cmd) => {
                        let (resp, keys) = applied.state.apply(&cmd);
                        touched.extend(keys);
                        responses.push(resp);
                    }
                    EntryPayload::Membership(m) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        responses.push(Response::default());
                    }
                }
            }
            let rows: Vec<(String, Option<Vec<u8>>)> = touched
                .into_iter()
                .map(|k: Key| (k.encode(), applied.state.row(&k)))
                .collect();
            (
                rows,
                serde_json::to_vec(&applied.last_applied)?,
                serde_json::to_vec(&applied.last_membership)?,
                applied_index(applied.last_applied.as_ref()),
            )
        };
        let sync = self.shared.batches.fetch_add(1, Ordering::Relaxed) % SYNC_EVERY_BATCHES
            == SYNC_EVERY_BATCHES - 1;
        let db = self.shared.db.get()?;
        blocking(move || {
            let mut txn = db.begin_write()?;
            // See the module docs for why a non-durable commit is safe here.
            txn.set_durability(if sync {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            {
                let mut table = txn.open_table(ROWS)?;
                for (key, row) in &rows {
                    match row {
                        Some(bytes) => {
                            table.insert(key.as_str(), bytes.as_slice())?;
                        }
                        None => {
                            table.remove(key.as_str())?;
                        }
                    }
                }
                let mut meta = txn.open_table(SM_META)?;
                meta.insert(KEY_LAST_APPLIED, last_applied.as_slice())?;
                meta.insert(KEY_LAST_MEMBERSHIP, last_membership.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        crate::tmark("apply_done", index);
        self.shared.applied_tx.send_replace(index);
        Ok(responses)
    }

    async fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let _gate = self.shared.persist.lock().await;
        let (meta, data) = {
            let applied = self.read();
            let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &applied.last_applied {
                Some(l) => format!("{}-{}-{seq:x}", l.leader_id.term, l.index),
                None => format!("0-0-{seq:x}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            };
            let data = serde_json::to_vec(&SnapshotBlob {
                last_applied: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                state: applied.state.clone(),
            })?;
            (meta, data)
        };
        let meta_bytes = serde_json::to_vec(&meta)?;
        let db = self.shared.db.get()?;
        let data = blocking(move || {
            let mut txn = db.begin_write()?;
            // Immediate: also makes every earlier apply durable, which purging the log behind
            // this snapshot relies on.
            txn.set_durability(Durability::Immediate)?;
            {
                let mut snap = txn.open_table(SNAPSHOT)?;
                snap.insert(KEY_SNAP_META, meta_bytes.as_slice())?;
                snap.insert(KEY_SNAP_DATA, data.as_slice())?;
            }
            txn.commit()?;
            Ok(data)
        })
        .await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    async fn install(
        &self,
        meta: &SnapshotMeta<RaftId, Peer>,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let blob: SnapshotBlob = serde_json::from_slice(&data)?;
        let _gate = self.shared.persist.lock().await;
        let new = Applied {
            state: blob.state,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        let meta_bytes = serde_json::to_vec(meta)?;
        let db = self.shared.db.get()?;
        let new = blocking(move || {
            write_all_rows(&db, &new, Some((&meta_bytes, &data)))?;
            Ok(new)
        })
        .await?;
        let index = applied_index(new.last_applied.as_ref());
        *self.write() = new;
        self.shared.applied_tx.send_replace(index);
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let txn = self.shared.db.get()?.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        Ok(read_snapshot(&table)?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

fn get_json<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
    }
}

type StoredSnapshot = (SnapshotMeta<RaftId, Peer>, Vec<u8>);

fn read_snapshot(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<StoredSnapshot>, StoreError> {
    let Some(meta) = get_json(table, KEY_SNAP_META)? else {
        return Ok(None);
    };
    let data = table
        .get(KEY_SNAP_DATA)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    Ok(Some((meta, data)))
}

/// Replaces every row with those of `applied`, and the snapshot if given, in one fsync'd
/// transaction.
fn write_all_rows(
    db: &Database,
    applied: &Applied,
    snapshot: Option<(&[u8], &[u8])>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut rows = txn.open_table(ROWS)?;
        rows.retain(|_, _| false)?;
        for key in applied.state.keys() {
            if let Some(bytes) = applied.state.row(&key) {
                rows.insert(key.encode().as_str(), bytes.as_slice())?;
            }
        }
        let mut meta = txn.open_table(SM_META)?;
        meta.insert(
            KEY_LAST_APPLIED,
            serde_json::to_vec(&applied.last_applied)?.as_slice(),
        )?;
        meta.insert(
            KEY_LAST_MEMBERSHIP,
            serde_json::to_vec(&applied.last_membership)?.as_slice(),
        )?;
        if let Some((snap_meta, snap_data)) = snapshot {
            let mut snap = txn.open_table(SNAPSHOT)?;
            snap.insert(KEY_SNAP_META, snap_meta)?;
            snap.insert(KEY_SNAP_DATA, snap_data)?;
        }
    }
    txn.commit()?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        self.build()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> StResult<(Option<LogId<RaftId>>, Membership)> {
        let a = self.read();
        Ok((a.last_applied, a.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.apply_batch(entries)
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
