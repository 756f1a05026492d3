//! The state machine: the whole `ClusterState` in memory, and its snapshots in redb
//! (`<data_dir>/state.redb`).
//!
//! Memory holds the applied state; every read is served from it. Nothing is written to disk
//! per apply: what the disk holds of the state is the current snapshot, and the Raft log holds
//! every entry after it. On open the store loads that snapshot and reports its `last_applied`;
//! openraft then re-applies the committed entries after it from the log (it reads the saved
//! commit index on start), and `apply` is deterministic, so the replay rebuilds the state that
//! was there before the stop or crash. Entries committed after the saved commit index are
//! applied once a leader commits them again, as for any follower that falls behind.
//!
//! Why nothing is lost: the log is fsync'd before anything is acknowledged, and openraft purges
//! it only behind a snapshot that `build_snapshot` or `install_snapshot` has already returned,
//! and both write the snapshot with `Durability::Immediate` before they return. So the stored
//! snapshot plus the log always cover every committed entry. A start replays at most about one
//! snapshot interval of entries (`RaftConfig::snapshot_logs`, 5,000 by default).
//!
//! Versions before this one also wrote one redb row per node, task and service behind every
//! apply (a table `rows` and the markers in `sm_meta`). That cost the leader about a sixth of
//! its CPU at 64 clients (BENCHMARKS.md, section 2f). An older data dir's two tables are
//! dropped at open; its snapshot and log are read as always.
//!
//! A snapshot is the whole `ClusterState` with its `last_applied` and membership, as JSON. The
//! current one's meta is stored in redb and its bytes in a file of `<data_dir>/snapshots/` that
//! redb names (`snapshot_dir.rs`: written in flushed steps, so the logs' syncs on the same disk
//! do not wait behind a whole snapshot), so it survives a restart and can be sent to a new
//! learner. Versions before kept the bytes in redb too (the row `data`); such a snapshot still
//! loads, and the next one moves to a file. It is encoded outside the state lock, from a copy
//! taken under it (`build`), so applies go on while a large state is encoded; encoding and write run on a thread of their own at a lower
//! CPU priority (`lower_priority`). Builds and installs run one at a time (`persist`). In the
//! simulator (`open_sim`) the encoding and the write run on the calling task, in virtual time.

use crate::error::StoreError;
use crate::snapshot_dir::{self, FsSnapshotDir};
use crate::snapshot_json::{self, TaskSpans};
use crate::types::{Peer, RaftId, TypeConfig};
use crate::wal::SegmentDir;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use orion_state::{ClusterState, Key};
use orion_types::{Command, Response};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, RandomState};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// `meta` (JSON `SnapshotMeta`) and `file` (the number of its file in `snapshots/`, u64 LE) of
/// the current snapshot; versions before held its bytes here (`data`).
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// Tables of older versions (a row per object, and `last_applied`), dropped at open.
const LEGACY_ROWS: TableDefinition<&str, &[u8]> = TableDefinition::new("rows");
const LEGACY_SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";
const KEY_SNAP_FILE: &str = "file";

type StResult<T> = Result<T, StorageError<RaftId>>;
type Membership = StoredMembership<RaftId, Peer>;

/// Told about every applied entry, in log order, under the state lock (so keep it short: it
/// must not block). The event history is one (it derives events from each entry); the leader's
/// placer of new tasks is another (an applied create ends its booking).
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

/// Every observer, told in the order they were added.
#[derive(Clone, Default)]
struct Observers(Arc<[Arc<dyn ApplyObserver>]>);

impl Observers {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ApplyObserver for Observers {
    fn applied(
        &self,
        index: u64,
        cmd: Option<&orion_types::Command>,
        leader: Option<&str>,
        state: &ClusterState,
        touched: &[Key],
    ) {
        for o in self.0.iter() {
            o.applied(index, cmd, leader, state, touched);
        }
    }

    fn reset(&self, state: &ClusterState, last_applied: u64) {
        for o in self.0.iter() {
            o.reset(state, last_applied);
        }
    }
}

/// The applied state, as one consistent unit.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId<RaftId>>,
    pub last_membership: Membership,
}

/// The bytes of a snapshot, decoded: only the state is read back (`SnapshotMeta` carries the
/// log id and membership).
#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotBlob {
    pub(crate) state: ClusterState,
}

/// The fields of a snapshot's bytes before the state (`snapshot_json::encode` writes the
/// state after them). They repeat the snapshot's meta: older versions read them from the
/// bytes, so a cluster in the middle of an upgrade can still send its snapshots both ways.
#[derive(Serialize)]
struct SnapshotHead {
    last_applied: Option<LogId<RaftId>>,
    last_membership: Membership,
}

struct Shared {
    db: Arc<DbSlot>,
    applied: RwLock<Applied>,
    /// Applied index (0 before the first entry); bumps after each apply batch or install.
    applied_tx: watch::Sender<u64>,
    /// The simulator's store: snapshots are encoded and written on the calling task.
    inline: bool,
    /// Held while a snapshot is built or installed: one at a time.
    persist: tokio::sync::Mutex<()>,
    /// The snapshot files.
    snapshots: Arc<dyn SegmentDir>,
    /// The number of the next snapshot file.
    next_file: AtomicU64,
    snapshot_seq: AtomicU64,
    observers: RwLock<Observers>,
    /// Where each task's JSON lies in the current snapshot's file, if this store wrote it
    /// (`snapshot_json`): the next build copies the unchanged tasks' bytes from there.
    task_spans: Mutex<Option<TaskSpans>>,
}

/// The state machine. Cheap to clone: clones share everything.
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

/// How much lower than the agent's other threads a snapshot's thread runs (added to its nice
/// value).
const SNAPSHOT_NICE: i32 = 10;

/// The CPU time the calling thread has used, where the platform tells it.
fn thread_cpu() -> Option<std::time::Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` writes one `timespec` to the pointer, which points to a
        // local of that type.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        if r == 0 {
            return Some(std::time::Duration::new(
                u64::try_from(t.tv_sec).ok()?,
                u32::try_from(t.tv_nsec).ok()?,
            ));
        }
    }
    None
}

/// Lowers the calling thread's CPU priority by `SNAPSHOT_NICE`. A snapshot of 10,000 tasks was
/// 60-90 ms of JSON encoding and a 12 MB write (now, after the first, 12-14 ms of CPU and 7-8
/// MB: `snapshot_json`); at the same priority it took a core from the applies, the log writer
/// and the API that the writes made meanwhile wait on.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `nice` takes an integer and touches no memory of ours. On Linux it changes the
    // calling thread only (a thread is a task of its own to the scheduler).
    unsafe {
        libc::nice(SNAPSHOT_NICE);
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn applied_index(log_id: Option<&LogId<RaftId>>) -> u64 {
    log_id.map_or(0, |l| l.index)
}

/// Makes `data` with `meta` the current snapshot, durably before it returns: the bytes go to
/// a new file (`file`, a number not used before), then redb names it, then the files of older
/// snapshots are deleted. A crash before redb names the file leaves the snapshot before; the
/// next open deletes the file.
fn write_snapshot(
    db: &Database,
    dir: &dyn SegmentDir,
    file: u64,
    meta: &[u8],
    data: &[u8],
) -> Result<(), StoreError> {
    dir.create(file, data.len() as u64, data)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut snap = txn.open_table(SNAPSHOT)?;
        snap.insert(KEY_SNAP_META, meta)?;
        snap.insert(KEY_SNAP_FILE, file.to_le_bytes().as_slice())?;
        snap.remove(KEY_SNAP_DATA)?;
    }
    txn.commit()?;
    if let Err(e) = snapshot_dir::remove_all_but(dir, Some(file)) {
        // Only disk space: the next snapshot or open deletes them.
        tracing::warn!(error = %e, "could not delete older snapshot files");
    }
    Ok(())
}

impl StateMachineStore {
    /// Opens (or creates) the state database at `path` and loads its snapshot into memory.
    /// Its snapshot files are in `snapshots/` beside it.
    pub fn open(path: &Path) -> Result<StateMachineStore, StoreError> {
        let seq = RandomState::new().hash_one(path);
        let snapshots = FsSnapshotDir::open(&path.with_file_name("snapshots"))?;
        StateMachineStore::load(
            crate::redb_builder(crate::STATE_CACHE_BYTES).create(path)?,
            Arc::new(snapshots),
            false,
            seq,
        )
    }

    /// Opens (or creates) the state database on a simulated disk; snapshot ids count from
    /// `snapshot_seq` (drawn from the simulation's seed).
    pub(crate) fn open_sim(
        disk: &crate::sim_disk::SimDisk,
        snapshot_seq: u64,
    ) -> Result<StateMachineStore, StoreError> {
        let db = crate::redb_builder(crate::STATE_CACHE_BYTES)
            .create_with_backend(disk.state_backend())?;
        StateMachineStore::load(db, disk.snapshot_dir(), true, snapshot_seq)
    }

    fn load(
        db: Database,
        snapshots: Arc<dyn SegmentDir>,
        inline: bool,
        snapshot_seq: u64,
    ) -> Result<StateMachineStore, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(SNAPSHOT)?;
        let dropped_rows = txn.delete_table(LEGACY_ROWS)?;
        let dropped_meta = txn.delete_table(LEGACY_SM_META)?;
        txn.commit()?;
        if dropped_rows || dropped_meta {
            tracing::info!(
                "dropped the state rows of an older version; replaying from the snapshot"
            );
        }

        let snapshot = {
            let txn = db.begin_read()?;
            let snap = txn.open_table(SNAPSHOT)?;
            read_snapshot(&snap)?
        };
        // Files redb does not name are what a crash left behind. Numbers go on past every
        // file found, so a new one never takes the name of one a crash left.
        let current = snapshot.as_ref().and_then(|(_, stored)| stored.file());
        let next_file = snapshot_dir::remove_all_but(snapshots.as_ref(), current)?
            .map_or(1, |largest| largest.saturating_add(1));
        let applied = match snapshot {
            None => Applied::default(),
            Some((meta, stored)) => {
                let data = stored.bytes(snapshots.as_ref())?;
                let blob: SnapshotBlob = serde_json::from_slice(&data)?;
                Applied {
                    state: blob.state,
                    last_applied: meta.last_log_id,
                    last_membership: meta.last_membership,
                }
            }
        };

        let (applied_tx, _) = watch::channel(applied_index(applied.last_applied.as_ref()));
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                db: DbSlot::new(db),
                applied: RwLock::new(applied),
                applied_tx,
                inline,
                persist: tokio::sync::Mutex::new(()),
                snapshots,
                next_file: AtomicU64::new(next_file),
                snapshot_seq: AtomicU64::new(snapshot_seq),
                observers: RwLock::new(Observers::default()),
                task_spans: Mutex::new(None),
            }),
        })
    }

    /// Runs `f` on a thread of its own at a lower CPU priority (`lower_priority`), or on the
    /// calling task in the simulator, where it costs no virtual time.
    async fn background<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.shared.inline {
            return f();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("orion-snapshot".to_string())
            .spawn(move || {
                lower_priority();
                let _ = tx.send(f());
            })
            .map_err(|e| StoreError::Join(format!("cannot start a snapshot thread: {e}")))?;
        rx.await
            .map_err(|_| StoreError::Join("a snapshot thread stopped".to_string()))?
    }

    fn task_spans(&self) -> std::sync::MutexGuard<'_, Option<TaskSpans>> {
        self.shared
            .task_spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn take_task_spans(&self) -> Option<TaskSpans> {
        self.task_spans().take()
    }

    /// Also tells `observer` about every entry applied from now on, after a `reset` with the
    /// state as it is now (under the state lock, so nothing is missed or told twice).
    pub fn add_observer(&self, observer: Arc<dyn ApplyObserver>) {
        let applied = self.write();
        observer.reset(&applied.state, applied_index(applied.last_applied.as_ref()));
        let mut observers = self
            .shared
            .observers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut all = observers.0.to_vec();
        all.push(observer);
        *observers = Observers(all.into());
    }

    fn observers(&self) -> Observers {
        self.shared
            .observers
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

    /// `close`, once no snapshot is being built or installed: a build's thread holds the
    /// database until it ends, so closing under it left the file open and a reopen in the
    /// same process failed (`DatabaseAlreadyOpen`). A build that starts later finds the store
    /// closed.
    pub async fn close_when_idle(&self) {
        let _gate = self.shared.persist.lock().await;
        self.close();
    }

    fn apply_batch(&self, entries: Vec<Entry<TypeConfig>>) -> Vec<Response> {
        let mut responses = Vec::with_capacity(entries.len());
        let observers = self.observers();
        let mut commands_applied: u64 = 0;
        let entries_applied = entries.len() as u64;
        let index = {
            let mut applied = self.write();
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
                        if !observers.is_empty() {
                            let leader = applied
                                .last_membership
                                .membership()
                                .get_node(&entry.log_id.leader_id.node_id)
                                .map(|p| p.node_id.clone());
                            observers.applied(
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
                    EntryPayload::Normal(shared) => match &*shared {
                        Command::Batch { commands } => {
                            let mut answers = Vec::with_capacity(commands.len());
                            for cmd in commands {
                                let (resp, keys) = applied.state.apply(cmd);
                                observers.applied(
                                    entry.log_id.index,
                                    Some(cmd),
                                    None,
                                    &applied.state,
                                    &keys,
                                );
                                answers.push(resp);
                            }
                            commands_applied += commands.len() as u64;
                            responses.push(Response::Batch(answers));
                        }
                        cmd => {
                            let (resp, keys) = applied.state.apply(cmd);
                            observers.applied(
                                entry.log_id.index,
                                Some(cmd),
                                None,
                                &applied.state,
                                &keys,
                            );
                            commands_applied += 1;
                            responses.push(resp);
                        }
                    },
                    EntryPayload::Membership(m) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        responses.push(Response::default());
                    }
                }
            }
            applied_index(applied.last_applied.as_ref())
        };
        self.shared.applied_tx.send_replace(index);
        // Commands are counted by kind by the observer (`orion_raft_applied_commands_total`);
        // entries here, so commands per entry is the ratio of the two.
        metrics::counter!("orion_raft_applied_entries_total").increment(entries_applied);
        metrics::histogram!("orion_raft_apply_commands").record(commands_applied as f64);
        responses
    }

    async fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let _gate = self.shared.persist.lock().await;
        let started = std::time::Instant::now();
        // Under the state lock only a copy: with 10,000 tasks it shares the tasks (`Arc`) in
        // a list and leaves the indexes out, 0.9-2.6 ms where a deep clone held the lock 58-93
        // ms. The JSON encoding, the costly part, runs after the lock is released, so applies
        // go on.
        let (meta, head, copy) = {
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
            let head = SnapshotHead {
                last_applied: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            (meta, head, applied.state.copy_for_encoding())
        };
        let locked = started.elapsed();
        let meta_bytes = serde_json::to_vec(&meta)?;
        let head = serde_json::to_vec(&head)?;
        let db = self.shared.db.get()?;
        let dir = self.shared.snapshots.clone();
        let file = self.shared.next_file.fetch_add(1, Ordering::Relaxed);
        // Taken, so that an error below leaves none: the next build then encodes every task.
        let previous = self.take_task_spans();
        let (data, spans, [opened, encoded, trimmed], encode_cpu) = self
            .background(move || {
                let cpu_before = thread_cpu();
                // The previous snapshot's file, which the spans describe (`encode` checks).
                // Unreadable, every task is encoded, as after a start: slower, not wrong.
                let unread = |e: &dyn std::fmt::Display, file: u64| {
                    tracing::warn!(error = %e, file, "cannot copy from the previous snapshot's file; encoding every task");
                };
                let previous = previous.and_then(|p| match dir.open(p.file) {
                    Ok(f) => Some((f, p)),
                    Err(e) => {
                        unread(&e, p.file);
                        None
                    }
                });
                let opened = started.elapsed();
                let encoding = match &previous {
                    Some((f, p)) => {
                        snapshot_json::encode(&head, &copy, Some((p, f.as_ref())), file)
                            .or_else(|e| {
                                unread(&e, p.file);
                                snapshot_json::encode(&head, &copy, None, file)
                            })
                    }
                    None => snapshot_json::encode(&head, &copy, None, file),
                };
                let encoded = started.elapsed();
                drop((copy, previous));
                // The copies of the tasks changed since the copy was made were just freed:
                // give those pages back.
                release_freed_memory();
                let (data, spans) = encoding?;
                let trimmed = started.elapsed();
                let encode_cpu = thread_cpu()
                    .zip(cpu_before)
                    .map(|(after, before)| ms(after.saturating_sub(before)));
                // Durable before openraft hears of it: it purges the log behind this snapshot.
                write_snapshot(&db, dir.as_ref(), file, &meta_bytes, &data)?;
                Ok((data, spans, [opened, encoded, trimmed], encode_cpu))
            })
            .await?;
        let counts = spans.counts;
        *self.task_spans() = Some(spans);
        // Where a snapshot's time goes: under the state lock (applies wait); off the lock,
        // opening the previous snapshot's file, encoding (with reads of that file), freeing
        // and trimming the heap (the CPU those three took: `encode_cpu_ms`); and the write of
        // the bytes with its fsync.
        tracing::info!(
            snapshot = %meta,
            bytes = data.len(),
            tasks_copied = counts.copied,
            tasks_encoded = counts.encoded,
            file_reads = counts.reads,
            locked_ms = ms(locked),
            opened_ms = ms(opened - locked),
            encoded_ms = ms(encoded - opened),
            trimmed_ms = ms(trimmed - encoded),
            encode_cpu_ms = encode_cpu,
            written_ms = ms(started.elapsed() - trimmed),
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
        let meta_bytes = serde_json::to_vec(meta)?;
        // Durable before the state is replaced and openraft purges the log behind it.
        let db = self.shared.db.get()?;
        let dir = self.shared.snapshots.clone();
        let file = self.shared.next_file.fetch_add(1, Ordering::Relaxed);
        // The spans describe the file this replaces; the next build encodes every task.
        drop(self.take_task_spans());
        self.background(move || write_snapshot(&db, dir.as_ref(), file, &meta_bytes, &data))
            .await?;
        let new = Applied {
            state: blob.state,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        let index = applied_index(new.last_applied.as_ref());
        {
            let mut applied = self.write();
            self.observers().reset(&new.state, index);
            *applied = new;
        }
        self.shared.applied_tx.send_replace(index);
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    /// Runs on openraft's state machine worker, so it takes no lock a build holds for its
    /// whole length (applies would wait): a build or install that ends between reading the
    /// file's number and opening the file deletes that file, and then redb names a newer one,
    /// which is read instead.
    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let read = || -> Result<Option<StoredSnapshot>, StoreError> {
            let txn = self.shared.db.get()?.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            read_snapshot(&table)
        };
        let mut stored = read()?;
        let mut attempts = 0;
        loop {
            let Some((meta, place)) = stored else {
                return Ok(None);
            };
            let tried = place.file();
            match place.bytes(self.shared.snapshots.as_ref()) {
                Ok(data) => {
                    return Ok(Some(Snapshot {
                        meta,
                        snapshot: Box::new(Cursor::new(data)),
                    }));
                }
                Err(e) => {
                    stored = read()?;
                    attempts += 1;
                    let moved = stored.as_ref().and_then(|(_, p)| p.file()) != tried;
                    if !moved || attempts > 3 {
                        return Err(e);
                    }
                }
            }
        }
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

/// Where the current snapshot's bytes are.
enum Stored {
    /// In its file, by number.
    File(u64),
    /// In redb, as versions before this one kept them.
    Inline(Vec<u8>),
}

impl Stored {
    fn file(&self) -> Option<u64> {
        match self {
            Stored::File(id) => Some(*id),
            Stored::Inline(_) => None,
        }
    }

    fn bytes(self, dir: &dyn SegmentDir) -> Result<Vec<u8>, StoreError> {
        match self {
            Stored::Inline(data) => Ok(data),
            Stored::File(id) => snapshot_dir::read_all(dir, id).map_err(|e| {
                StoreError::Snapshot(format!(
                    "state.redb names snapshot file {id:016x}, which cannot be read ({e}): this \
                     node's data dir is damaged; the cluster's other members still hold the state"
                ))
            }),
        }
    }
}

type StoredSnapshot = (SnapshotMeta<RaftId, Peer>, Stored);

fn read_snapshot(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<StoredSnapshot>, StoreError> {
    let Some(meta) = get_json(table, KEY_SNAP_META)? else {
        return Ok(None);
    };
    if let Some(file) = table.get(KEY_SNAP_FILE)? {
        let id = <[u8; 8]>::try_from(file.value()).map_err(|_| {
            StoreError::Snapshot("the snapshot's file number is not 8 bytes".into())
        })?;
        return Ok(Some((meta, Stored::File(u64::from_le_bytes(id)))));
    }
    let data = table
        .get(KEY_SNAP_DATA)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    Ok(Some((meta, Stored::Inline(data))))
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
        Ok(self.apply_batch(entries))
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
    use orion_types::NodeMeta;
    use redb::TableHandle;

    fn upsert(index: u64, node: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Arc::new(Command::UpsertNode {
                meta: Box::new(NodeMeta::fixture(node, 1)),
                at: 1,
            })),
        }
    }

    fn nodes(store: &StateMachineStore) -> Vec<String> {
        store.read().state.nodes.keys().cloned().collect()
    }

    async fn reopened(disk: &SimDisk) -> (StateMachineStore, Option<u64>) {
        disk.crash();
        let mut store = StateMachineStore::open_sim(disk, 0).expect("reopen");
        let (applied, _) = store.applied_state().await.expect("applied state");
        (store, applied.map(|l| l.index))
    }

    /// Applies write nothing: a store starts from its last snapshot (or empty), and openraft
    /// replays the entries after it from the log.
    #[tokio::test]
    async fn a_reopened_store_starts_from_its_snapshot_and_takes_the_replay() {
        let disk = SimDisk::new();
        let mut store = StateMachineStore::open_sim(&disk, 0).expect("open");
        store.apply([upsert(1, "n1")]).await.expect("apply");
        let (store, applied) = reopened(&disk).await;
        assert_eq!(applied, None, "no snapshot yet: starts empty");
        assert!(nodes(&store).is_empty());

        let mut store = store;
        store
            .apply([upsert(1, "n1"), upsert(2, "n2")])
            .await
            .expect("apply");
        let snap = store
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
        store.apply([upsert(3, "n3")]).await.expect("apply");
        assert_eq!(nodes(&store), ["n1", "n2", "n3"]);

        let (mut store, applied) = reopened(&disk).await;
        assert_eq!(applied, Some(2), "the snapshot's index");
        assert_eq!(nodes(&store), ["n1", "n2"]);
        // What openraft does next: re-apply the committed entries after it.
        store.apply([upsert(3, "n3")]).await.expect("replay");
        assert_eq!(nodes(&store), ["n1", "n2", "n3"]);
        let current = store.get_current_snapshot().await.expect("read");
        assert_eq!(
            current.and_then(|s| s.meta.last_log_id).map(|l| l.index),
            Some(2)
        );
    }

    /// A data dir of an older version holds a row per object and a `last_applied` ahead of its
    /// snapshot: both tables are dropped, and the state is the snapshot's (the log holds the
    /// rest, since it is purged only behind a snapshot).
    #[tokio::test]
    async fn an_older_data_dirs_rows_are_dropped_and_its_snapshot_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let mut store = StateMachineStore::open(&path).expect("open");
            store.apply([upsert(1, "n1")]).await.expect("apply");
            store
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("snapshot");
            store.close();
        }
        {
            let db = redb::Database::create(&path).expect("reopen by hand");
            let txn = db.begin_write().expect("write");
            {
                let mut rows = txn.open_table(LEGACY_ROWS).expect("rows");
                rows.insert("node/n1", b"{}".as_slice()).expect("row");
                rows.insert("node/n9", b"{}".as_slice()).expect("row");
                let mut meta = txn.open_table(LEGACY_SM_META).expect("meta");
                let ahead = serde_json::to_vec(&Some(LogId::new(CommittedLeaderId::new(1, 1), 9)))
                    .expect("json");
                meta.insert("last_applied", ahead.as_slice()).expect("meta");
            }
            txn.commit().expect("commit");
        }
        let mut store = StateMachineStore::open(&path).expect("open the older dir");
        let (applied, _) = store.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(1));
        assert_eq!(nodes(&store), ["n1"]);
        let db = store.shared.db.get().expect("db");
        let txn = db.begin_read().expect("read");
        let tables: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(tables, ["snapshot"]);
    }

    async fn build(store: &mut StateMachineStore) -> Snapshot<TypeConfig> {
        store
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot")
    }

    fn snapshot_rows(store: &StateMachineStore) -> Vec<String> {
        let db = store.shared.db.get().expect("db");
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(SNAPSHOT).expect("table");
        table
            .iter()
            .expect("iter")
            .map(|r| r.expect("row").0.value().to_string())
            .collect()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
            .expect("snapshots dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A snapshot's bytes are a file of `snapshots/` that redb names; each new one replaces
    /// the one before, and the current one is what a reopen loads and a follower is sent.
    #[tokio::test]
    async fn each_snapshot_is_a_file_and_only_the_current_one_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let mut store = StateMachineStore::open(&path).expect("open");
        store.apply([upsert(1, "n1")]).await.expect("apply");
        build(&mut store).await;
        assert_eq!(files_in(dir.path()), ["0000000000000001.snap"]);
        store.apply([upsert(2, "n2")]).await.expect("apply");
        let built = build(&mut store).await;
        assert_eq!(files_in(dir.path()), ["0000000000000002.snap"]);
        assert_eq!(snapshot_rows(&store), ["file", "meta"]);

        let current = store
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        assert_eq!(
            current.snapshot.into_inner(),
            std::fs::read(dir.path().join("snapshots/0000000000000002.snap")).expect("file")
        );
        store.close();
        drop(store);

        let mut store = StateMachineStore::open(&path).expect("reopen");
        let (applied, _) = store.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert_eq!(nodes(&store), ["n1", "n2"]);
        store.apply([upsert(3, "n3")]).await.expect("apply");
        build(&mut store).await;
        assert_eq!(files_in(dir.path()), ["0000000000000003.snap"]);
    }

    fn create(index: u64, task: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Arc::new(Command::CreateTask {
                task_id: task.into(),
                spec: Box::new(
                    orion_types::api::parse_task_request(br#"{"image":"busybox"}"#).expect("spec"),
                ),
                at: 1,
            })),
        }
    }

    /// The bytes a snapshot had when serde encoded it whole, field by field.
    fn serde_encoded(store: &StateMachineStore) -> Vec<u8> {
        #[derive(Serialize)]
        struct Whole {
            last_applied: Option<LogId<RaftId>>,
            last_membership: Membership,
            state: orion_state::StateCopy,
        }
        let applied = store.read();
        serde_json::to_vec(&Whole {
            last_applied: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            state: applied.state.copy_for_encoding(),
        })
        .expect("encode")
    }

    fn spans_file(store: &StateMachineStore) -> Option<u64> {
        store.task_spans().as_ref().map(|s| s.file)
    }

    fn tasks_copied(store: &StateMachineStore) -> Option<usize> {
        store.task_spans().as_ref().map(|s| s.counts.copied)
    }

    /// A snapshot after the first copies the unchanged tasks' JSON from the one before
    /// (`snapshot_json`); its bytes are still exactly what serde wrote for the whole state,
    /// and a reopen loads them. An installed snapshot drops the spans: the file it replaced
    /// is gone.
    #[tokio::test]
    async fn a_snapshot_built_from_the_one_before_is_the_same_bytes_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let mut store = StateMachineStore::open(&path).expect("open");
        store
            .apply([upsert(1, "n1"), create(2, "t1"), create(3, "t2")])
            .await
            .expect("apply");
        let first = build(&mut store).await;
        assert_eq!(first.snapshot.into_inner(), serde_encoded(&store));
        assert_eq!(spans_file(&store), Some(1));

        store
            .apply([create(4, "t3"), upsert(5, "n2")])
            .await
            .expect("apply");
        let second = build(&mut store).await;
        assert_eq!(second.snapshot.get_ref(), &serde_encoded(&store));
        assert_eq!(spans_file(&store), Some(2));
        assert_eq!(tasks_copied(&store), Some(2), "t1 and t2, unchanged");
        let state = store.read().state.clone();
        store.close();
        drop(store);

        let mut store = StateMachineStore::open(&path).expect("reopen");
        assert_eq!(store.read().state, state);
        assert_eq!(spans_file(&store), None, "a start encodes every task");
        store
            .install_snapshot(&second.meta, second.snapshot)
            .await
            .expect("install");
        assert_eq!(spans_file(&store), None);
        store.apply([create(6, "t4")]).await.expect("apply");
        let third = build(&mut store).await;
        assert_eq!(third.snapshot.into_inner(), serde_encoded(&store));
        assert_eq!(tasks_copied(&store), Some(0));
    }

    /// Versions before kept a snapshot's bytes in redb (`data`): such a snapshot loads, and
    /// the next one goes to a file and drops the row.
    #[tokio::test]
    async fn an_older_snapshot_in_redb_loads_and_the_next_one_drops_its_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let mut store = StateMachineStore::open(&path).expect("open");
            store.apply([upsert(1, "n1")]).await.expect("apply");
            let snap = build(&mut store).await;
            let meta = serde_json::to_vec(&snap.meta).expect("meta");
            let data = snap.snapshot.into_inner();
            let db = store.shared.db.get().expect("db");
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(SNAPSHOT).expect("table");
                table.insert(KEY_SNAP_META, meta.as_slice()).expect("meta");
                table.insert(KEY_SNAP_DATA, data.as_slice()).expect("data");
                table.remove(KEY_SNAP_FILE).expect("file row");
            }
            txn.commit().expect("commit");
            store.close();
        }
        let mut store = StateMachineStore::open(&path).expect("open the older dir");
        assert_eq!(snapshot_rows(&store), ["data", "meta"]);
        assert!(files_in(dir.path()).is_empty(), "a file no row names goes");
        let (applied, _) = store.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(1));
        assert_eq!(nodes(&store), ["n1"]);
        store.apply([upsert(2, "n2")]).await.expect("apply");
        build(&mut store).await;
        assert_eq!(snapshot_rows(&store), ["file", "meta"]);
        assert_eq!(files_in(dir.path()).len(), 1);
    }

    /// A crash after a snapshot's file is whole but before redb names it leaves a file no one
    /// names: the next open deletes it and loads the snapshot before, and numbers go on past it.
    #[tokio::test]
    async fn a_snapshot_file_redb_does_not_name_is_deleted_at_open() {
        let disk = SimDisk::new();
        let mut store = StateMachineStore::open_sim(&disk, 0).expect("open");
        store.apply([upsert(1, "n1")]).await.expect("apply");
        build(&mut store).await;
        disk.snapshot_dir().create(5, 3, b"{}x").expect("a stray");
        assert_eq!(disk.snapshot_dir().list().expect("list"), [1, 5]);

        let (mut store, applied) = reopened(&disk).await;
        assert_eq!(applied, Some(1));
        assert_eq!(nodes(&store), ["n1"]);
        assert_eq!(disk.snapshot_dir().list().expect("list"), [1]);
        store.apply([upsert(2, "n2")]).await.expect("apply");
        build(&mut store).await;
        assert_eq!(disk.snapshot_dir().list().expect("list"), [6]);
    }

    /// Sending a snapshot whose file is gone (and not replaced by a newer one) fails with an
    /// error naming it; it does not loop or send empty bytes.
    #[tokio::test]
    async fn a_current_snapshot_whose_file_is_gone_is_an_error() {
        let disk = SimDisk::new();
        let mut store = StateMachineStore::open_sim(&disk, 0).expect("open");
        store.apply([upsert(1, "n1")]).await.expect("apply");
        build(&mut store).await;
        disk.snapshot_dir().remove(1).expect("remove");
        match store.get_current_snapshot().await {
            Err(e) => assert!(e.to_string().contains("0000000000000001"), "{e}"),
            Ok(s) => panic!("read a snapshot without its file: {:?}", s.map(|s| s.meta)),
        }
    }

    /// Regression (found by `old_format`'s snapshot test): `close` while a build's thread
    /// still held the database left the file open, and a reopen in the same process failed
    /// with `DatabaseAlreadyOpen`. A node's shutdown now closes with `close_when_idle`, which
    /// waits for the build.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_closed_while_a_snapshot_is_written_reopens_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let mut store = StateMachineStore::open(&path).expect("open");
        let entries: Vec<_> = (1..=10_000).map(|i| upsert(i, &format!("n{i}"))).collect();
        store.apply(entries).await.expect("apply");
        let mut builder = store.get_snapshot_builder().await;
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        // Until its thread writes the file (it holds the database from before that on).
        let writing = || {
            std::fs::read_dir(dir.path().join("snapshots"))
                .expect("snapshots dir")
                .any(|e| {
                    e.expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".tmp")
                })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !writing() && !build.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the build never wrote"
            );
            tokio::task::yield_now().await;
        }
        store.close_when_idle().await;
        drop(store);
        let mut store = StateMachineStore::open(&path).expect("reopen at once");
        let built = build.await.expect("join");
        let (applied, _) = store.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), built.ok().map(|_| 10_000));
    }

    /// A file redb names that is gone is an error that says which, not a panic or an empty
    /// state (which would lose every entry the log no longer holds).
    #[tokio::test]
    async fn a_missing_snapshot_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let mut store = StateMachineStore::open(&path).expect("open");
        store.apply([upsert(1, "n1")]).await.expect("apply");
        build(&mut store).await;
        store.close();
        drop(store);
        std::fs::remove_file(dir.path().join("snapshots/0000000000000001.snap")).expect("rm");
        match StateMachineStore::open(&path) {
            Err(StoreError::Snapshot(m)) => assert!(m.contains("0000000000000001"), "{m}"),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("opened without its snapshot"),
        }
    }
}
