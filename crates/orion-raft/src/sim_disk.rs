//! A simulated disk for the deterministic simulator: redb's `StorageBackend` over memory that
//! keeps what was `sync_data`'d apart from what was only written, so `SimDisk::crash` loses
//! exactly the unsynced writes, as a power cut loses the page cache.
//!
//! A `SimDisk` holds the two files of one node (`raft-log.redb`, `state.redb`). Bytes live in
//! pages of `PAGE_BYTES`: a write changes the current image and marks its pages dirty;
//! `sync_data` copies the dirty pages into the durable image; `crash` throws the current image
//! away and starts again from the durable one. Every crash also bumps a generation: a backend
//! handle opened before the crash (a database still owned by a task of the crashed node that
//! has not been dropped yet) fails every later call instead of writing into the new life's
//! file. Nothing here touches the real file system, spawns a thread or reads a clock.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Unit of dirty tracking: small enough that a sync copies little more than redb wrote, large
/// enough that the dirty set of a transaction stays a handful of entries (redb's own page is
/// 4 KiB).
const PAGE_BYTES: u64 = 4096;

#[derive(Default)]
struct Image {
    /// What the node sees: every write, synced or not.
    current: Vec<u8>,
    /// What survives a crash: the image as of the last `sync_data`.
    durable: Vec<u8>,
    /// Pages of `current` written since the last sync.
    dirty: BTreeSet<u64>,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    syncs: u64,
}

impl Image {
    fn sync(&mut self) {
        let len = self.current.len();
        self.durable.resize(len, 0);
        for page in std::mem::take(&mut self.dirty) {
            let start = (page * PAGE_BYTES) as usize;
            if start >= len {
                continue;
            }
            let end = (start + PAGE_BYTES as usize).min(len);
            self.durable[start..end].copy_from_slice(&self.current[start..end]);
        }
        self.syncs += 1;
    }

    fn crash(&mut self) {
        self.current = self.durable.clone();
        self.dirty.clear();
        self.generation += 1;
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

/// The two redb files of one simulated node. Cheap to clone: clones share the bytes.
#[derive(Clone, Default)]
pub struct SimDisk {
    log: SimFile,
    state: SimFile,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, s) = (self.log.lock(), self.state.lock());
        write!(
            f,
            "SimDisk(log {} B, {} dirty pages; state {} B, {} dirty pages)",
            l.current.len(),
            l.dirty.len(),
            s.current.len(),
            s.dirty.len()
        )
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A power cut: both files return to what was last synced, and every handle opened
    /// before now stops working.
    pub fn crash(&self) {
        self.log.lock().crash();
        self.state.lock().crash();
    }

    /// Pages written but not yet synced, over both files (what a crash now would lose).
    pub fn unsynced_pages(&self) -> usize {
        self.log.lock().dirty.len() + self.state.lock().dirty.len()
    }

    /// `sync_data` calls so far, over both files.
    pub fn syncs(&self) -> u64 {
        self.log.lock().syncs + self.state.lock().syncs
    }

    pub(crate) fn log_backend(&self) -> SimBackend {
        SimBackend::open(&self.log)
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
        Ok(self.live()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let image = self.live()?;
        let (start, end) = range(offset, out.len())?;
        let src = image.current.get(start..end).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "simulated disk: read past the end",
            )
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut image = self.live()?;
        let (new_len, _) = range(len, 0)?;
        let old_len = image.current.len();
        image.current.resize(new_len, 0);
        // The changed tail is unsynced until the next sync, like any write.
        let (lo, hi) = (old_len.min(new_len) as u64, old_len.max(new_len) as u64);
        let mut page = lo / PAGE_BYTES;
        while page * PAGE_BYTES < hi {
            image.dirty.insert(page);
            page += 1;
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.live()?.sync();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut image = self.live()?;
        let (start, end) = range(offset, data.len())?;
        if end > image.current.len() {
            image.current.resize(end, 0);
        }
        image.current[start..end].copy_from_slice(data);
        if start < end {
            let mut page = start as u64 / PAGE_BYTES;
            while page * PAGE_BYTES < end as u64 {
                image.dirty.insert(page);
                page += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    fn bytes(b: &SimBackend) -> Vec<u8> {
        let mut out = vec![0; b.len().unwrap() as usize];
        b.read(0, &mut out).unwrap();
        out
    }

    #[test]
    fn a_crash_keeps_synced_writes_and_loses_the_rest() {
        let disk = SimDisk::new();
        let b = disk.log_backend();
        b.write(0, b"synced").unwrap();
        b.sync_data().unwrap();
        b.write(0, b"SY").unwrap();
        b.write(10_000, b"tail").unwrap();
        assert!(disk.unsynced_pages() > 0);
        disk.crash();
        // The old handle is dead; a new one sees the synced image only.
        assert!(b.len().is_err());
        let b = disk.log_backend();
        assert_eq!(bytes(&b), b"synced");
        assert_eq!(disk.unsynced_pages(), 0);
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
