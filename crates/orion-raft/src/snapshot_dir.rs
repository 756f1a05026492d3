//! Where a snapshot's bytes live: one file per snapshot in `<data_dir>/snapshots/`, named by a
//! number that only grows (`0000000000000003.snap`). `state.redb` holds the current one's meta
//! and number (`sm_store.rs`); the files of older snapshots are deleted once a newer one is
//! named there.
//!
//! Why not in redb, where the bytes were until this file: a snapshot of 10,000 tasks is 11-13
//! MB, and one redb commit wrote it all and then synced it. Every member's log shares the
//! disk, so each log `fdatasync` behind it waited for the whole snapshot to reach the disk:
//! writes committed while any member wrote its snapshot took 5-25 ms against a p50 under 2 ms
//! (BENCHMARKS.md, section 2h). Here the file is written in steps of `WRITE_STEP` bytes and each
//! step is flushed (`sync_file_range`) before the next is written, so a log sync waits for at
//! most one step.
//!
//! A file is written under a temporary name (`.tmp`), synced, renamed and its directory synced:
//! a crash leaves either no file or a whole one. A file that `state.redb` does not name (a
//! crash between the rename and the commit, or before the older file's deletion) is deleted at
//! open.
//!
//! It is a `SegmentDir` (the log's directory interface), so the simulator runs the same code on
//! its disk (`SimDisk::snapshot_dir`), which loses unsynced writes on a simulated crash.

use crate::wal::{NumberedFiles, SegmentDir, SegmentFile};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// The bytes written and flushed at a time: at the 150-350 MB/s this disk writes, about a
/// millisecond of IO that a log sync may have to wait behind.
const WRITE_STEP: usize = 256 << 10;
const SUFFIX: &str = ".snap";

/// Snapshot files on the file system.
pub(crate) struct FsSnapshotDir(NumberedFiles);

impl FsSnapshotDir {
    /// Opens (creating) the directory and deletes the temporary files a crash left there.
    pub(crate) fn open(path: &Path) -> io::Result<FsSnapshotDir> {
        let files = NumberedFiles::open(path, SUFFIX)?;
        files.remove_strays()?;
        Ok(FsSnapshotDir(files))
    }
}

/// Starts writing `len` bytes at `offset` of `file` to the disk and waits until they are
/// there (not their metadata: the final `sync_all` covers that).
#[cfg(target_os = "linux")]
fn flush_range(file: &std::fs::File, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::other("snapshot file range out of bounds"));
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor belongs to `file`, which outlives the call; `sync_file_range`
    // reads no memory of ours and only starts and waits for writeback of that range.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the final sync writes it all.
#[cfg(not(target_os = "linux"))]
fn flush_range(_file: &std::fs::File, _offset: u64, _len: usize) -> io::Result<()> {
    Ok(())
}

impl SegmentDir for FsSnapshotDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        self.0.list()
    }

    fn open(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
        self.0.open_file(id)
    }

    /// Writes `head` (the snapshot's bytes; `len` is their length) in flushed steps.
    fn create(&self, id: u64, len: u64, head: &[u8]) -> io::Result<Arc<dyn SegmentFile>> {
        let (tmp, file) = self.0.create_tmp(id)?;
        let mut at = 0u64;
        for step in head.chunks(WRITE_STEP) {
            std::os::unix::fs::FileExt::write_all_at(&file, step, at)?;
            flush_range(&file, at, step.len())?;
            at += step.len() as u64;
        }
        if len > at {
            file.set_len(len)?;
        }
        self.0.publish(&tmp, file, id)
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        self.0.remove(id)
    }
}

/// The whole of file `id` of `dir`.
pub(crate) fn read_all(dir: &dyn SegmentDir, id: u64) -> io::Result<Vec<u8>> {
    let file = dir.open(id)?;
    let len = usize::try_from(file.len()?)
        .map_err(|_| io::Error::other("snapshot file larger than memory"))?;
    let mut data = vec![0; len];
    file.read_at(0, &mut data)?;
    Ok(data)
}

/// Deletes every file of `dir` but `keep` (all of them for `None`); returns the largest number
/// it found, kept or deleted.
pub(crate) fn remove_all_but(dir: &dyn SegmentDir, keep: Option<u64>) -> io::Result<Option<u64>> {
    let ids = dir.list()?;
    for &id in &ids {
        if Some(id) != keep {
            dir.remove(id)?;
        }
    }
    Ok(ids.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_in_steps_reads_back_whole_and_strays_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = FsSnapshotDir::open(&tmp.path().join("snapshots")).expect("open");
        let data: Vec<u8> = (0..(3 * WRITE_STEP + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        dir.create(7, data.len() as u64, &data).expect("create");
        dir.create(9, 3, b"abc").expect("create");
        std::fs::write(
            tmp.path().join("snapshots/000000000000000a.snap.tmp"),
            b"torn",
        )
        .expect("stray");
        std::fs::write(tmp.path().join("snapshots/README"), b"not ours").expect("stranger");
        assert_eq!(dir.list().expect("list"), [7, 9]);
        assert_eq!(read_all(&dir, 7).expect("read"), data);
        assert_eq!(read_all(&dir, 9).expect("read"), b"abc");

        let dir = FsSnapshotDir::open(&tmp.path().join("snapshots")).expect("reopen");
        assert_eq!(remove_all_but(&dir, Some(9)).expect("remove"), Some(9));
        assert_eq!(dir.list().expect("list"), [9]);
        let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("snapshots"))
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["0000000000000009.snap", "README"]);
    }
}
