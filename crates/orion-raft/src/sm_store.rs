//! The state machine on redb (`<data_dir>/state.redb`) plus its in-memory copy, and snapshots.
//!
//! Memory holds the whole `ClusterState` (every read is served from it); redb holds one row per
//! node, per task and per service (`Key`), written from `ClusterState::row` for exactly the keys a batch touched, in
//! the same write transaction as `last_applied` and `last_membership`. On open the rows are
//! loaded back with `ClusterState::from_rows`.
//!
//! Every redb write of this store runs on one writer thread, strictly in the order it was
//! queued (`Job`). `apply` changes memory, queues the touched rows (under the state lock, so
//! the queue order is the apply order) and returns without waiting for redb: the commit of a
//! batch is off the path of the write that proposed it. The writer merges apply batches queued
//! behind each other into one transaction. Snapshots, installs and `sync` are queued as
//! barriers and waited for, so each runs after every apply queued before it.
//!
//! Durability argument for the apply transactions (`Durability::None`, no fsync, written after
//! `apply` returned): redb keeps a non-durable commit consistent and atomic, and after a crash
//! the database returns to an earlier commit: rows and `last_applied` roll back *together*.
//! The Raft log, which is fsync'd before anything is acknowledged, still holds every entry
//! after that older `last_applied`, because the log is only purged behind a snapshot and a
//! snapshot is written with `Durability::Immediate` behind the applies it covers, which makes
//! them durable too. openraft then re-applies the gap from the log (it reads the saved commit
//! index on start), and `apply` is deterministic, so the replayed state is the one that was
//! lost. A write that fails leaves redb at the last good commit and stops the writer: later
//! applies and barriers fail with `StoreError::WriteFailed`, which stops Raft. Every
//! `SYNC_EVERY_BATCHES`-th batch is fsync'd anyway, to bound that replay and let redb reclaim
//! pages, and shutdown syncs once more.
//!
//! In the simulator (`open_sim`) there is no writer thread: jobs run inline, on the task that
//! queued them, in the same order, with the same transactions and durabilities. Apply batches
//! wait in a queue until `INLINE_MERGE_BATCHES` of them are there or a barrier comes, and are
//! then written as one merged transaction, as the writer thread merges what queued behind it:
//! the simulated writer always lags that much, so a simulated crash loses up to that many
//! batches before their commit, as a real crash can, and openraft replays them from the log.
//!
//! A snapshot is the whole `ClusterState` with its `last_applied` and membership, as JSON; the
//! current one is stored in redb too, so it survives a restart and can be sent to a new learner.
//! It is encoded outside the state lock, from a clone taken under it (`build`), so writes go on
//! while a large state is encoded.

use crate::error::StoreError;
use crate::types::{Peer, RaftId, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use orion_state::{ClusterState, Key};
use orion_types::{Command, Response};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
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

/// The simulator's writer merges this many apply batches into one transaction (fewer if a
/// barrier comes first); see the module docs.
const INLINE_MERGE_BATCHES: usize = 8;

type StResult<T> = Result<T, StorageError<RaftId>>;
type Membership = StoredMembership<RaftId, Peer>;

/// Told about every applied entry, in log order, under the state lock (so keep it short: it
/// must not block). The event history is one: it derives events from each entry.
pub trait ApplyObserver: Send + Sync {
    /// Entry `index` was applied: `cmd` is its command (`None` for a new leader's blank entry,
    /// which names `leader`, and for membership changes); `touched` are the rows it changed.
    fn applied(
        &self,
        index: u64,
        cmd: Option<&orion_types::Command>,
        leader: Option<&str>,
        state: &ClusterState,
        touched: &[Key],
    );
    /// The state was loaded or replaced wholesale (a snapshot was installed).
    fn reset(&self, state: &ClusterState, last_applied: u64);
}

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

/// `SnapshotBlob` by reference, for encoding without a clone (the same JSON).
#[derive(Serialize)]
struct SnapshotBlobRef<'a> {
    last_applied: &'a Option<LogId<RaftId>>,
    last_membership: &'a Membership,
    state: &'a ClusterState,
}

struct Shared {
    db: Arc<DbSlot>,
    applied: RwLock<Applied>,
    /// Applied index (0 before the first entry); bumps after each apply batch or install.
    applied_tx: watch::Sender<u64>,
    /// To the writer. Sent to under the `applied` lock, so jobs queue in apply order.
    writer: Writer,
    /// Set by the writer when a write failed; nothing is written after that.
    failed: Arc<Mutex<Option<String>>>,
    /// Held while a snapshot is taken or installed, or a sync runs: one at a time.
    persist: tokio::sync::Mutex<()>,
    snapshot_seq: AtomicU64,
    observer: RwLock<Option<Arc<dyn ApplyObserver>>>,
}

/// Where jobs go: the writer thread, or (simulator) run at once on the caller.
enum Writer {
    Thread(mpsc::Sender<Job>),
    Inline {
        slot: Arc<DbSlot>,
        queue: Mutex<InlineQueue>,
    },
}

/// The simulator's writer: batches written so far (for `SYNC_EVERY_BATCHES`) and the apply
/// batches not yet written.
#[derive(Default)]
struct InlineQueue {
    batches: u64,
    pending: Vec<ApplyRows>,
}

/// What the writer thread does, in the order queued.
enum Job {
    /// The rows one apply batch touched, as they are after it, and the markers after it.
    Apply(ApplyRows),
    /// Runs once every earlier job is written; gets the database or why not.
    Barrier(Box<dyn FnOnce(Result<Arc<Database>, StoreError>) + Send>),
}

struct ApplyRows {
    rows: Vec<(String, Option<Vec<u8>>)>,
    last_applied: Vec<u8>,
    last_membership: Vec<u8>,
}

fn failed_message(failed: &Mutex<Option<String>>) -> Option<String> {
    failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The writer thread: runs jobs in order, merging apply batches queued behind each other into
/// one transaction. Ends when every store handle is gone.
fn run_writer(slot: Arc<DbSlot>, rx: mpsc::Receiver<Job>, failed: Arc<Mutex<Option<String>>>) {
    let mut batches: u64 = 0;
    let mut held: Option<Job> = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Barrier(f) => run_barrier(&slot, f, &failed),
            Job::Apply(first) => {
                let mut queued = vec![first];
                loop {
                    match rx.try_recv() {
                        Ok(Job::Apply(next)) => queued.push(next),
                        Ok(barrier) => {
                            held = Some(barrier);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                write_queued(&slot, queued, &mut batches, &failed);
            }
        }
    }
}

/// Runs one job inline (the simulator's writer): queues an apply batch, writing the queue
/// once it holds `INLINE_MERGE_BATCHES`; writes the queue, then runs a barrier.
fn run_inline(slot: &DbSlot, queue: &Mutex<InlineQueue>, job: Job, failed: &Mutex<Option<String>>) {
    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
    let barrier = match job {
        Job::Apply(rows) => {
            q.pending.push(rows);
            if q.pending.len() < INLINE_MERGE_BATCHES {
                return;
            }
            None
        }
        Job::Barrier(f) => Some(f),
    };
    let queued = std::mem::take(&mut q.pending);
    write_queued(slot, queued, &mut q.batches, failed);
    drop(q);
    if let Some(f) = barrier {
        run_barrier(slot, f, failed);
    }
}

/// Runs a barrier job: it gets the database, or why nothing is written any more.
fn run_barrier(
    slot: &DbSlot,
    f: Box<dyn FnOnce(Result<Arc<Database>, StoreError>) + Send>,
    failed: &Mutex<Option<String>>,
) {
    match failed_message(failed) {
        Some(msg) => f(Err(StoreError::WriteFailed(msg))),
        None => f(slot.get()),
    }
}

/// Writes apply batches queued behind each other (in apply order) as one transaction: each
/// row as the last of them left it, and the markers of the last.
fn write_queued(
    slot: &DbSlot,
    queued: Vec<ApplyRows>,
    batches: &mut u64,
    failed: &Mutex<Option<String>>,
) {
    let merged = queued.len() as u64;
    let mut rows: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut last = None;
    for mut batch in queued {
        rows.extend(std::mem::take(&mut batch.rows));
        last = Some(batch);
    }
    if let Some(last) = last {
        write_merged(slot, &rows, &last, merged, batches, failed);
    }
}

/// Writes `merged` apply batches as one transaction, fsync'd when the count crosses a
/// multiple of `SYNC_EVERY_BATCHES`; a failure stops every later write.
fn write_merged(
    slot: &DbSlot,
    rows: &BTreeMap<String, Option<Vec<u8>>>,
    last: &ApplyRows,
    merged: u64,
    batches: &mut u64,
    failed: &Mutex<Option<String>>,
) {
    if failed_message(failed).is_some() {
        return;
    }
    let sync = (*batches + merged) / SYNC_EVERY_BATCHES > *batches / SYNC_EVERY_BATCHES;
    *batches += merged;
    if let Err(e) = write_apply(slot, rows, last, sync) {
        tracing::error!(error = %e, "writing the state machine failed");
        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

fn write_apply(
    slot: &DbSlot,
    rows: &BTreeMap<String, Option<Vec<u8>>>,
    last: &ApplyRows,
    sync: bool,
) -> Result<(), StoreError> {
    let db = slot.get()?;
    let mut txn = db.begin_write()?;
    // See the module docs for why a non-durable commit is safe here.
    txn.set_durability(if sync {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    {
        let mut table = txn.open_table(ROWS)?;
        for (key, row) in rows {
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
        meta.insert(KEY_LAST_APPLIED, last.last_applied.as_slice())?;
        meta.insert(KEY_LAST_MEMBERSHIP, last.last_membership.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// The redb-backed state machine. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

/// Returns the heap's free pages to the kernel. glibc keeps freed memory in its arenas, so
/// after a snapshot (a copy of the whole state, then its JSON) an agent holding 10,000 tasks
/// stayed tens of MiB larger for good.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer from us; it only walks glibc's own allocator
    // state, under that allocator's locks, and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn applied_index(log_id: Option<&LogId<RaftId>>) -> u64 {
    log_id.map_or(0, |l| l.index)
}

impl StateMachineStore {
    /// Opens (or creates) the state database at `path` and loads it into memory.
    pub fn open(path: &Path) -> Result<StateMachineStore, StoreError> {
        let seq = RandomState::new().hash_one(path);
        StateMachineStore::load(
            crate::redb_builder(crate::STATE_CACHE_BYTES).create(path)?,
            false,
            seq,
        )
    }

    /// Opens (or creates) the state database on a simulated disk, with no writer thread;
    /// snapshot ids count from `snapshot_seq` (drawn from the simulation's seed).
    pub(crate) fn open_sim(
        disk: &crate::sim_disk::SimDisk,
        snapshot_seq: u64,
    ) -> Result<StateMachineStore, StoreError> {
        let db = crate::redb_builder(crate::STATE_CACHE_BYTES)
            .create_with_backend(disk.state_backend())?;
        StateMachineStore::load(db, true, snapshot_seq)
    }

    fn load(
        db: Database,
        inline: bool,
        snapshot_seq: u64,
    ) -> Result<StateMachineStore, StoreError> {
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
        let slot = DbSlot::new(db);
        let failed = Arc::new(Mutex::new(None));
        let writer = if inline {
            Writer::Inline {
                slot: slot.clone(),
                queue: Mutex::default(),
            }
        } else {
            let (writer, rx) = mpsc::channel();
            let slot = slot.clone();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("orion-sm-writer".to_string())
                .spawn(move || run_writer(slot, rx, failed))
                .map_err(|e| StoreError::Join(format!("cannot start the state writer: {e}")))?;
            Writer::Thread(writer)
        };
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                db: slot,
                applied: RwLock::new(applied),
                applied_tx,
                writer,
                failed,
                persist: tokio::sync::Mutex::new(()),
                snapshot_seq: AtomicU64::new(snapshot_seq),
                observer: RwLock::new(None),
            }),
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        match &self.shared.writer {
            Writer::Thread(tx) => tx
                .send(job)
                .map_err(|_| StoreError::Join("the state writer stopped".to_string())),
            Writer::Inline { slot, queue } => {
                run_inline(slot, queue, job, &self.shared.failed);
                Ok(())
            }
        }
    }

    /// Queues `f` behind every job queued so far; the receiver gets its result.
    fn barrier<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Database>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Barrier(Box::new(move |db| {
            let _ = tx.send(db.and_then(f));
        })))?;
        Ok(rx)
    }

    async fn wait<T>(
        rx: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        rx.await
            .map_err(|_| StoreError::Join("the state writer stopped".to_string()))?
    }

    /// Tells `observer` about every entry applied from now on, after a `reset` with the state
    /// as it is now (under the state lock, so nothing is missed or told twice).
    pub fn set_observer(&self, observer: Arc<dyn ApplyObserver>) {
        let applied = self.write();
        observer.reset(&applied.state, applied_index(applied.last_applied.as_ref()));
        *self
            .shared
            .observer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    fn observer(&self) -> Option<Arc<dyn ApplyObserver>> {
        self.shared
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Writes every apply queued so far and makes it durable (one fsync).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let _gate = self.shared.persist.lock().await;
        let rx = self.barrier(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })?;
        Self::wait(rx).await
    }

    fn apply_batch(&self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<Response>, StoreError> {
        if let Some(msg) = failed_message(&self.shared.failed) {
            return Err(StoreError::WriteFailed(msg));
        }
        let mut responses = Vec::with_capacity(entries.len());
        let observer = self.observer();
        let mut commands_applied: u64 = 0;
        let entries_applied = entries.len() as u64;
        let index = {
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
                    EntryPayload::Blank => {
                        // A new leader's first entry: it names the leader of its term.
                        if let Some(o) = &observer {
                            let leader = applied
                                .last_membership
                                .membership()
                                .get_node(&entry.log_id.leader_id.node_id)
                                .map(|p| p.node_id.clone());
                            o.applied(
                                entry.log_id.index,
                                None,
                                leader.as_deref(),
                                &applied.state,
                                &[],
                            );
                        }
                        responses.push(Response::default())
                    }
                    // A batch applies command by command, each told to the observer with
                    // the state right after it, as if each were an entry of its own.
                    EntryPayload::Normal(Command::Batch { commands }) => {
                        let mut answers = Vec::with_capacity(commands.len());
                        for cmd in &commands {
                            let (resp, keys) = applied.state.apply(cmd);
                            if let Some(o) = &observer {
                                o.applied(
                                    entry.log_id.index,
                                    Some(cmd),
                                    None,
                                    &applied.state,
                                    &keys,
                                );
                            }
                            touched.extend(keys);
                            answers.push(resp);
                        }
                        commands_applied += commands.len() as u64;
                        responses.push(Response::Batch(answers));
                    }
                    EntryPayload::Normal(cmd) => {
                        let (resp, keys) = applied.state.apply(&cmd);
                        if let Some(o) = &observer {
                            o.applied(entry.log_id.index, Some(&cmd), None, &applied.state, &keys);
                        }
                        touched.extend(keys);
                        commands_applied += 1;
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
            // Queued under the state lock: the writer sees batches, snapshots and installs in
            // the order memory did. Not waited for (see the module docs).
            self.send(Job::Apply(ApplyRows {
                rows,
                last_applied: serde_json::to_vec(&applied.last_applied)?,
                last_membership: serde_json::to_vec(&applied.last_membership)?,
            }))?;
            applied_index(applied.last_applied.as_ref())
        };
        self.shared.applied_tx.send_replace(index);
        // Commands are counted by kind by the observer (`orion_raft_applied_commands_total`);
        // entries here, so commands per entry is the ratio of the two.
        metrics::counter!("orion_raft_applied_entries_total").increment(entries_applied);
        metrics::histogram!("orion_raft_apply_commands").record(commands_applied as f64);
        Ok(responses)
    }

    async fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let _gate = self.shared.persist.lock().await;
        let started = std::time::Instant::now();
        // Under the state lock only a clone and the queueing of the write (so the write lands
        // behind every apply it covers); the JSON encoding, the costly part at 10,000 tasks,
        // runs after the lock is released, so applies (and writes) go on meanwhile. The writer
        // thread waits for the bytes at the barrier; applies queued behind it wait for redb
        // only, not memory.
        let (meta, blob, data_tx, rx) = {
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
            let meta_bytes = serde_json::to_vec(&meta)?;
            let (data_tx, data_rx) = mpsc::channel::<Vec<u8>>();
            let blob = match &self.shared.writer {
                Writer::Thread(_) => Some(SnapshotBlob {
                    last_applied: applied.last_applied,
                    last_membership: applied.last_membership.clone(),
                    // Shares the tasks (`Arc`) and leaves the indexes out: with 10,000
                    // tasks the lock is held 4-9 ms, where a deep clone held it 58-93 ms.
                    state: applied.state.copy_for_encoding(),
                }),
                // The simulator's writer runs the barrier inline, as it is queued: the bytes
                // must be there before, so they are encoded here (virtual time: no cost).
                Writer::Inline { .. } => {
                    let _ = data_tx.send(serde_json::to_vec(&SnapshotBlobRef {
                        last_applied: &applied.last_applied,
                        last_membership: &applied.last_membership,
                        state: &applied.state,
                    })?);
                    None
                }
            };
            // Queued under the state lock, behind every apply this snapshot covers.
            let rx = self.barrier(move |db| {
                let data = data_rx
                    .recv()
                    .map_err(|_| StoreError::Join("the snapshot was not encoded".to_string()))?;
                let mut txn = db.begin_write()?;
                // Immediate: also makes every earlier apply durable, which purging the log
                // behind this snapshot relies on.
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut snap = txn.open_table(SNAPSHOT)?;
                    snap.insert(KEY_SNAP_META, meta_bytes.as_slice())?;
                    snap.insert(KEY_SNAP_DATA, data.as_slice())?;
                }
                txn.commit()?;
                Ok(data)
            })?;
            (meta, blob, data_tx, rx)
        };
        let locked = started.elapsed();
        if let Some(blob) = blob {
            // Encoded on a blocking thread: tens of milliseconds of CPU for a large state,
            // which on an async worker would stall every request that worker serves.
            let encoded = tokio::task::spawn_blocking(move || {
                let data = serde_json::to_vec(&blob);
                drop(blob);
                // The copies of the tasks changed since the copy was made were just freed:
                // give those pages back.
                release_freed_memory();
                data
            })
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?;
            // If encoding fails the sender is dropped and the barrier fails with it.
            let _ = data_tx.send(encoded?);
        }
        let encoded = started.elapsed();
        let data = Self::wait(rx).await?;
        // Where a snapshot's time goes: under the state lock (applies wait), encoding (off
        // the lock), and the write of the bytes with its fsync (at the writer's barrier).
        tracing::info!(
            snapshot = %meta,
            bytes = data.len(),
            locked_ms = locked.as_secs_f64() * 1e3,
            encoded_ms = (encoded - locked).as_secs_f64() * 1e3,
            written_ms = (started.elapsed() - encoded).as_secs_f64() * 1e3,
            "built snapshot"
        );
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
        // Behind every apply queued so far, so none of them can overwrite these rows.
        let rx = self.barrier(move |db| {
            write_all_rows(&db, &new, Some((&meta_bytes, &data)))?;
            Ok(new)
        })?;
        let new = Self::wait(rx).await?;
        let index = applied_index(new.last_applied.as_ref());
        if let Some(o) = self.observer() {
            o.reset(&new.state, index);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim_disk::SimDisk;
    use openraft::CommittedLeaderId;

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn apply_one_by_one(
        store: &mut StateMachineStore,
        indexes: std::ops::RangeInclusive<u64>,
    ) {
        for i in indexes {
            store.apply([blank(i)]).await.expect("apply");
        }
    }

    async fn applied_after_crash(disk: &SimDisk) -> Option<u64> {
        disk.crash();
        let mut store = StateMachineStore::open_sim(disk, 0).expect("reopen");
        let (applied, _) = store.applied_state().await.expect("applied state");
        applied.map(|l| l.index)
    }

    /// The simulator's writer queues apply batches: a crash loses the queued ones (openraft
    /// replays them from the log), and a barrier writes the queue before it runs.
    #[tokio::test]
    async fn the_simulated_writer_queues_applies_until_a_barrier() {
        let disk = SimDisk::new();
        let mut store = StateMachineStore::open_sim(&disk, 0).expect("open");
        apply_one_by_one(&mut store, 1..=3).await;
        assert_eq!(store.read().last_applied.map(|l| l.index), Some(3));
        assert_eq!(
            applied_after_crash(&disk).await,
            None,
            "queued, never written"
        );

        let mut store = StateMachineStore::open_sim(&disk, 0).expect("open");
        apply_one_by_one(&mut store, 1..=3).await;
        store.sync().await.expect("sync");
        assert_eq!(
            applied_after_crash(&disk).await,
            Some(3),
            "the barrier wrote the queue, then synced it"
        );
    }

    /// At most `INLINE_MERGE_BATCHES` wait: the next one writes them all as one transaction.
    #[tokio::test]
    async fn the_simulated_writer_merges_a_full_queue_into_one_transaction() {
        let queued = |store: &StateMachineStore| match &store.shared.writer {
            Writer::Inline { queue, .. } => queue.lock().expect("queue").pending.len(),
            Writer::Thread(_) => unreachable!("open_sim writes inline"),
        };
        let disk = SimDisk::new();
        let mut store = StateMachineStore::open_sim(&disk, 0).expect("open");
        let n = INLINE_MERGE_BATCHES as u64;
        apply_one_by_one(&mut store, 1..=n - 1).await;
        assert_eq!(queued(&store), INLINE_MERGE_BATCHES - 1);
        apply_one_by_one(&mut store, n..=n).await;
        assert_eq!(queued(&store), 0, "the {n}th batch wrote the queue");
        // Written, not synced: what redb holds now is the merged transaction.
        let db = store.shared.db.get().expect("db");
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(SM_META).expect("meta");
        let applied: Option<LogId<RaftId>> =
            get_json(&meta, KEY_LAST_APPLIED).expect("last_applied");
        assert_eq!(applied.map(|l| l.index), Some(n));
    }
}
