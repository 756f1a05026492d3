//! A simulated disk for the deterministic simulator: files in memory that keep what was
//! `sync_data`'d apart from what was only written, so `SimDisk::crash` loses exactly the
//! unsynced writes, as a power cut loses the page cache.
//!
//! A `SimDisk` holds the files of one node: the log's segments (`wal::SegmentDir`; creating
//! and deleting one is durable at once, as the real directory is synced after each) and the
//! state's redb file (redb's `StorageBackend`). Bytes live in
//! pages of `PAGE_BYTES`, each behind an `Arc`: the current image (what the node sees) and the
//! durable one (what survives a crash) share every page that has not been written since the
//! last sync. A write copies only the pages it touches that are still shared
//! (`Arc::make_mut`) and marks them dirty; `sync_data` makes the durable image point at the
//! dirty pages; `crash` throws the current image away and starts again from the durable one.
//! Growing a file appends references to one shared zero page, so no operation copies or
//! zeroes a whole file (a single `Vec<u8>` per image did: its reallocations and zero fills,
//! in fresh memory the kernel had to clear, were a quarter of the simulator's time). Every
//! crash also bumps a generation: a backend handle opened before the crash (a database still
//! owned by a task of the crashed node that has not been dropped yet) fails every later call
//! instead of writing into the new life's file. Nothing here touches the real file system,
//! spawns a thread or reads a clock.

use crate::wal::{SegmentDir, SegmentFile};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// Unit of sharing and of dirty tracking: small enough that a sync and a first write after it
/// copy little more than redb wrote, large enough that the dirty set of a transaction stays a
/// handful of entries (redb's own page is 4 KiB).
const PAGE_BYTES: usize = 4096;

type Page = [u8; PAGE_BYTES];

/// The one page of zeros every file grows into until it is written.
fn zero_page() -> Arc<Page> {
    static ZERO: OnceLock<Arc<Page>> = OnceLock::new();
    ZERO.get_or_init(|| Arc::new([0; PAGE_BYTES])).clone()
}

/// The bytes of one file as shared pages. Bytes of the last page past `len` are always zero,
/// so a file that shrinks and grows again reads zeros there, as a real file does.
#[derive(Clone, Default)]
struct Pages {
    pages: Vec<Arc<Page>>,
    len: usize,
}

impl Pages {
    fn set_len(&mut self, len: usize) {
        if len < self.len {
            self.pages.truncate(len.div_ceil(PAGE_BYTES));
            let cut = len % PAGE_BYTES;
            if cut != 0
                && let Some(last) = self.pages.last_mut()
            {
                Arc::make_mut(last)[cut..].fill(0);
            }
        } else {
            self.pages.resize(len.div_ceil(PAGE_BYTES), zero_page());
        }
        self.len = len;
    }

    /// Copies `out.len()` bytes from `start`, which the caller has checked lie in the file.
    fn read(&self, start: usize, out: &mut [u8]) {
        for (page, within, at) in spans(start, out.len()) {
            out[at].copy_from_slice(&self.pages[page][within]);
        }
    }

    /// Writes `data` at `start` (the caller has grown the file to hold it) and returns the
    /// pages it touched.
    fn write(&mut self, start: usize, data: &[u8]) -> std::ops::Range<usize> {
        if data.is_empty() {
            return 0..0;
        }
        for (page, within, at) in spans(start, data.len()) {
            Arc::make_mut(&mut self.pages[page])[within].copy_from_slice(&data[at]);
        }
        start / PAGE_BYTES..(start + data.len()).div_ceil(PAGE_BYTES)
    }
}

/// The bytes `start..start + len` of a file, page by page: (page, range within the page,
/// range within the caller's buffer).
fn spans(
    start: usize,
    len: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>, std::ops::Range<usize>)> {
    let mut done = 0;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = start + done;
        let (page, within) = (at / PAGE_BYTES, at % PAGE_BYTES);
        let n = (PAGE_BYTES - within).min(len - done);
        let span = (page, within..within + n, done..done + n);
        done += n;
        Some(span)
    })
}

#[derive(Default)]
struct Image {
    /// What the node sees: every write, synced or not.
    current: Pages,
    /// What survives a crash: the image as of the last `sync_data`.
    durable: Pages,
    /// Pages of `current` written since the last sync.
    dirty: BTreeSet<usize>,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    syncs: u64,
}

impl Image {
    fn sync(&mut self) {
        let count = self.current.pages.len();
        self.durable.pages.truncate(count);
        self.durable.pages.resize(count, zero_page());
        self.durable.len = self.current.len;
        for page in std::mem::take(&mut self.dirty) {
            if page < count {
                self.durable.pages[page] = self.current.pages[page].clone();
            }
        }
        self.syncs += 1;
    }

    fn crash(&mut self) {
        self.current = self.durable.clone();
        self.dirty.clear();
        self.generation += 1;
    }

    fn set_len(&mut self, len: usize) {
        let old = self.current.len;
        self.current.set_len(len);
        // The changed tail is unsynced until the next sync, like any write.
        let (lo, hi) = (old.min(len), old.max(len));
        self.dirty.extend(lo / PAGE_BYTES..hi.div_ceil(PAGE_BYTES));
    }

    fn write(&mut self, start: usize, data: &[u8]) {
        let end = start + data.len();
        if end > self.current.len {
            self.set_len(end);
        }
        let touched = self.current.write(start, data);
        self.dirty.extend(touched);
    }
}

/// One simulated file, shared by the disk and the backend handles opened on it.
#[derive(Clone, Default)]
struct SimFile(Arc<Mutex<Image>>);

impl SimFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, Image> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The files of one simulated node. Cheap to clone: clones share the bytes.
#[derive(Clone, Default)]
pub struct SimDisk {
    log: SimLogDir,
    state: SimFile,
    /// The snapshot files (`snapshot_dir.rs`), by number.
    snapshots: SimLogDir,
}

/// The log's segments by id, and the generation of the directory (bumped by every crash).
#[derive(Clone, Default)]
pub(crate) struct SimLogDir(Arc<Mutex<(BTreeMap<u64, SimFile>, u64)>>);

impl SimLogDir {
    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<u64, SimFile>, u64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every file returns to what was last synced; handles of this generation die.
    fn crash(&self) {
        let mut dir = self.lock();
        for file in dir.0.values() {
            file.lock().crash();
        }
        dir.1 += 1;
    }

    /// Sums `f` over the segments.
    fn sum(&self, f: impl Fn(&Image) -> u64) -> u64 {
        self.lock().0.values().map(|file| f(&file.lock())).sum()
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        write!(
            f,
            "SimDisk(log {} segments, {} B, {} dirty pages; state {} B, {} dirty pages)",
            self.log.lock().0.len(),
            self.log.sum(|i| i.current.len as u64),
            self.log.sum(|i| i.dirty.len() as u64),
            s.current.len,
            s.dirty.len()
        )
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A power cut: every file returns to what was last synced, and every handle opened
    /// before now stops working.
    pub fn crash(&self) {
        self.log.crash();
        self.snapshots.crash();
        self.state.lock().crash();
    }

    /// Pages written but not yet synced, over every file (what a crash now would lose).
    pub fn unsynced_pages(&self) -> usize {
        (self.log.sum(|i| i.dirty.len() as u64) + self.snapshots.sum(|i| i.dirty.len() as u64))
            as usize
            + self.state.lock().dirty.len()
    }

    /// `sync_data` calls so far, over every file that still exists.
    pub fn syncs(&self) -> u64 {
        self.log.sum(|i| i.syncs) + self.snapshots.sum(|i| i.syncs) + self.state.lock().syncs
    }

    /// The log's directory as of now: after a crash, this handle fails every call (a writer
    /// task of the crashed life must not create or delete segments of the next one).
    pub(crate) fn log_dir(&self) -> Arc<dyn SegmentDir> {
        let generation = self.log.lock().1;
        Arc::new(SimLogHandle {
            dir: self.log.clone(),
            generation,
        })
    }

    /// The snapshot files' directory as of now (a handle like `log_dir`'s).
    pub(crate) fn snapshot_dir(&self) -> Arc<dyn SegmentDir> {
        let generation = self.snapshots.lock().1;
        Arc::new(SimLogHandle {
            dir: self.snapshots.clone(),
            generation,
        })
    }

    pub(crate) fn state_backend(&self) -> SimBackend {
        SimBackend::open(&self.state)
    }
}

/// A redb backend on one `SimFile`, valid for the generation it was opened in.
pub(crate) struct SimBackend {
    file: SimFile,
    generation: u64,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimBackend(generation {})", self.generation)
    }
}

impl SimBackend {
    fn open(file: &SimFile) -> SimBackend {
        let generation = file.lock().generation;
        SimBackend {
            file: file.clone(),
            generation,
        }
    }

    /// The image, unless a crash happened since this handle was opened.
    fn live(&self) -> Result<std::sync::MutexGuard<'_, Image>, std::io::Error> {
        let image = self.file.lock();
        if image.generation != self.generation {
            return Err(std::io::Error::other(
                "simulated disk: this handle predates a crash",
            ));
        }
        Ok(image)
    }
}

fn range(offset: u64, len: usize) -> Result<(usize, usize), std::io::Error> {
    let start = usize::try_from(offset).map_err(std::io::Error::other)?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| std::io::Error::other("simulated disk: offset overflows"))?;
    Ok((start, end))
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.live()?.current.len as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let image = self.live()?;
        let (start, end) = range(offset, out.len())?;
        if end > image.current.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "simulated disk: read past the end",
            ));
        }
        image.current.read(start, out);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut image = self.live()?;
        let (new_len, _) = range(len, 0)?;
        image.set_len(new_len);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.live()?.sync();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut image = self.live()?;
        let (start, _) = range(offset, data.len())?;
        image.write(start, data);
        Ok(())
    }
}

/// A handle on the log's directory, valid for the generation it was opened in.
struct SimLogHandle {
    dir: SimLogDir,
    generation: u64,
}

impl SimLogHandle {
    fn live(&self) -> std::io::Result<std::sync::MutexGuard<'_, (BTreeMap<u64, SimFile>, u64)>> {
        let dir = self.dir.lock();
        if dir.1 != self.generation {
            return Err(std::io::Error::other(
                "simulated disk: this directory handle predates a crash",
            ));
        }
        Ok(dir)
    }
}

impl SegmentDir for SimLogHandle {
    fn list(&self) -> std::io::Result<Vec<u64>> {
        Ok(self.live()?.0.keys().copied().collect())
    }

    fn open(&self, id: u64) -> std::io::Result<Arc<dyn SegmentFile>> {
        let dir = self.live()?;
        let file = dir.0.get(&id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "simulated disk: no segment")
        })?;
        Ok(Arc::new(SimBackend::open(file)))
    }

    fn create(&self, id: u64, len: u64, head: &[u8]) -> std::io::Result<Arc<dyn SegmentFile>> {
        let mut dir = self.live()?;
        let file = SimFile::default();
        {
            let mut image = file.lock();
            let (len, _) = range(len, 0)?;
            image.set_len(len);
            image.write(0, head);
            image.sync();
        }
        let handle = SimBackend::open(&file);
        dir.0.insert(id, file);
        Ok(Arc::new(handle))
    }

    fn remove(&self, id: u64) -> std::io::Result<()> {
        self.live()?.0.remove(&id);
        Ok(())
    }
}

impl SegmentFile for SimBackend {
    fn len(&self) -> std::io::Result<u64> {
        redb::StorageBackend::len(self)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        redb::StorageBackend::read(self, offset, out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        redb::StorageBackend::write(self, offset, data)
    }

    fn sync(&self) -> std::io::Result<()> {
        redb::StorageBackend::sync_data(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    fn bytes(b: &SimBackend) -> Vec<u8> {
        let mut out = vec![0; StorageBackend::len(b).unwrap() as usize];
        b.read(0, &mut out).unwrap();
        out
    }

    /// Regression guard: a log writer of a crashed life (a task not yet dropped) must not
    /// create or delete segments of the next life.
    #[test]
    fn a_log_directory_handle_from_before_a_crash_is_dead() {
        let disk = SimDisk::new();
        let old = disk.log_dir();
        old.create(1, 4096, b"head").unwrap();
        disk.crash();
        assert!(old.create(2, 4096, b"head").is_err());
        assert!(old.remove(1).is_err());
        let new = disk.log_dir();
        assert_eq!(new.list().unwrap(), vec![1]);
        let mut out = [0u8; 4];
        new.open(1).unwrap().read_at(0, &mut out).unwrap();
        assert_eq!(&out, b"head");
    }

    #[test]
    fn a_crash_keeps_synced_writes_and_loses_the_rest() {
        let disk = SimDisk::new();
        let b = disk.state_backend();
        b.write(0, b"synced").unwrap();
        b.sync_data().unwrap();
        b.write(0, b"SY").unwrap();
        b.write(10_000, b"tail").unwrap();
        assert!(disk.unsynced_pages() > 0);
        disk.crash();
        // The old handle is dead; a new one sees the synced image only.
        assert!(StorageBackend::len(&b).is_err());
        let b = disk.state_backend();
        assert_eq!(bytes(&b), b"synced");
        assert_eq!(disk.unsynced_pages(), 0);
    }

    /// The pages behave as one flat buffer per image: random writes, resizes, syncs and
    /// crashes, against a model that keeps each image as a plain `Vec<u8>`.
    #[test]
    fn shared_pages_read_as_a_flat_file_through_writes_resizes_syncs_and_crashes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let disk = SimDisk::new();
        let mut b = disk.state_backend();
        let (mut current, mut durable) = (Vec::<u8>::new(), Vec::<u8>::new());
        for step in 0..5_000 {
            match next(10) {
                0..=4 => {
                    let start = next(5 * PAGE_BYTES as u64) as usize;
                    let data: Vec<u8> = (0..next(3 * PAGE_BYTES as u64))
                        .map(|_| next(255) as u8 + 1)
                        .collect();
                    b.write(start as u64, &data).unwrap();
                    if start + data.len() > current.len() {
                        current.resize(start + data.len(), 0);
                    }
                    current[start..start + data.len()].copy_from_slice(&data);
                }
                5 | 6 => {
                    let len = next(6 * PAGE_BYTES as u64) as usize;
                    b.set_len(len as u64).unwrap();
                    current.resize(len, 0);
                }
                7 | 8 => {
                    b.sync_data().unwrap();
                    durable = current.clone();
                }
                _ => {
                    disk.crash();
                    b = disk.state_backend();
                    current = durable.clone();
                }
            }
            assert_eq!(bytes(&b), current, "step {step}");
        }
        assert!(b.read(current.len() as u64, &mut [0]).is_err());
    }

    #[test]
    fn a_real_database_survives_a_crash_after_a_durable_commit() {
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let disk = SimDisk::new();
        let db = redb::Database::builder()
            .create_with_backend(disk.state_backend())
            .unwrap();
        let put = |v: u64, durability: redb::Durability| {
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(durability).unwrap();
            txn.open_table(T).unwrap().insert(v, v).unwrap();
            txn.commit().unwrap();
        };
        put(1, redb::Durability::Immediate);
        put(2, redb::Durability::None);
        disk.crash();
        drop(db);
        let db = redb::Database::builder()
            .create_with_backend(disk.state_backend())
            .unwrap();
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert!(t.get(1).unwrap().is_some(), "a synced commit survives");
        assert!(t.get(2).unwrap().is_none(), "an unsynced commit is lost");
    }
}
