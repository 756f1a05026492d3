//! The Raft log's files (`<data_dir>/raft-log/`): a write-ahead log of checksummed records in
//! preallocated segments, so that an append costs one sequential write and one `fdatasync`.
//!
//! Why not redb (the log lived in `raft-log.redb` until this format): each append was a redb
//! transaction of about 14 page writes at scattered offsets, and its `fdatasync` flushed them
//! all (BENCHMARKS.md section 2d). Here an append writes its records where the last one ended,
//! in a file whose blocks were written (zeroed) when it was created, so the sync carries no
//! metadata beyond the data itself.
//!
//! # Format
//!
//! A segment is a file named by its id (`0000000000000001.seg`, ids ascending). It starts with
//! a 16-byte header (`ORIONWAL`, a format version, four zero bytes), then records, then zeros
//! up to its preallocated length. A record is
//!
//! ```text
//! u32 payload length (LE) | u32 CRC-32 of kind and payload (LE) | u8 kind | payload
//! ```
//!
//! Kinds: an entry (its JSON, the encoding the redb log used), the vote, the committed log id,
//! a purge up to a log id (JSON), a truncation from an index (u64 LE). Replay applies them in
//! order. Every payload is non-empty, so a length of zero is where the records end.
//!
//! A new segment starts with a checkpoint: the vote, committed log id and last purge as they
//! stand, written and synced with its header when the file is created. So once every entry of
//! the oldest segments is purged, those segments can be deleted and replay starts at the first
//! one left.
//!
//! # Crashes
//!
//! A segment is synced before the next one is created, so only the last segment can end in a
//! torn record: replay stops at the first record whose length or checksum does not hold (it
//! was never acknowledged, since its sync had not returned) and zeroes the rest of the file, so
//! that nothing after it can be mistaken for a record later. A damaged record in any other
//! segment is corruption, reported as an error rather than skipped.
//!
//! IO comes in through `SegmentDir`/`SegmentFile`: the file system in production, the
//! simulator's disk (which loses unsynced writes on a simulated crash) in `orion-sim`.

use crate::error::StoreError;
use crate::types::{RaftId, TypeConfig};
use openraft::{Entry, LogId, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// A segment's preallocated size. A new one is zeroed when it is created (about 10 ms here),
/// once every 8 MiB of log; the log keeps about `snapshot_logs` entries, a few segments.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;
const MAGIC: &[u8; 8] = b"ORIONWAL";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;
const RECORD_HEAD: usize = 9;
/// No record is larger: an entry arrives in one RPC body, bounded well below this.
const RECORD_MAX: usize = 64 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_PURGED: u8 = 4;
const KIND_TRUNCATE: u8 = 5;

/// A directory of segments.
pub(crate) trait SegmentDir: Send + Sync + 'static {
    /// The ids of the segments present, ascending.
    fn list(&self) -> io::Result<Vec<u64>>;
    fn open(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>>;
    /// Creates segment `id`: `len` bytes, `head` at the start and zeros after it, all of it
    /// and its name durable on return.
    fn create(&self, id: u64, len: u64, head: &[u8]) -> io::Result<Arc<dyn SegmentFile>>;
    /// Deletes segment `id`, durably on return.
    fn remove(&self, id: u64) -> io::Result<()>;
}

/// One segment file.
pub(crate) trait SegmentFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Fills `out` from `offset`; the range lies in the file.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `fdatasync`.
    fn sync(&self) -> io::Result<()>;
}

/// A directory of files named by a number and a suffix (`0000000000000001.seg`): what the
/// log's segments and the snapshots' files (`snapshot_dir.rs`) have in common.
pub(crate) struct NumberedFiles {
    path: PathBuf,
    suffix: &'static str,
}

impl NumberedFiles {
    /// Opens (creating) the directory.
    pub(crate) fn open(path: &Path, suffix: &'static str) -> io::Result<NumberedFiles> {
        std::fs::create_dir_all(path)?;
        Ok(NumberedFiles {
            path: path.to_path_buf(),
            suffix,
        })
    }

    fn file(&self, id: u64) -> PathBuf {
        self.path.join(format!("{id:016x}{}", self.suffix))
    }

    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }

    /// The numbers present, ascending; other names (a `.tmp` left by a crash, a stranger)
    /// are skipped.
    pub(crate) fn list(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for item in std::fs::read_dir(&self.path)? {
            let name = item?.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(self.suffix)) else {
                continue;
            };
            if let Ok(id) = u64::from_str_radix(stem, 16) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    pub(crate) fn open_file(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.file(id))?;
        Ok(Arc::new(FsFile(file)))
    }

    fn tmp(&self, id: u64) -> PathBuf {
        self.path.join(format!("{id:016x}{}.tmp", self.suffix))
    }

    /// A new, empty file for `id` under a temporary name, to be filled and then `publish`ed:
    /// a crash midway leaves no half-made file under a number (`remove_strays` deletes it).
    pub(crate) fn create_tmp(&self, id: u64) -> io::Result<(PathBuf, std::fs::File)> {
        let tmp = self.tmp(id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok((tmp, file))
    }

    /// Syncs the filled temporary file and names it `id`, durably on return.
    pub(crate) fn publish(
        &self,
        tmp: &Path,
        file: std::fs::File,
        id: u64,
    ) -> io::Result<Arc<dyn SegmentFile>> {
        file.sync_all()?;
        std::fs::rename(tmp, self.file(id))?;
        self.sync_dir()?;
        Ok(Arc::new(FsFile(file)))
    }

    /// Deletes the temporary files a crash during `create_tmp`..`publish` left.
    pub(crate) fn remove_strays(&self) -> io::Result<()> {
        let stray = format!("{}.tmp", self.suffix);
        for item in std::fs::read_dir(&self.path)? {
            let item = item?;
            if item
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(&stray))
            {
                std::fs::remove_file(item.path())?;
            }
        }
        Ok(())
    }

    /// Deletes file `id`, durably on return.
    pub(crate) fn remove(&self, id: u64) -> io::Result<()> {
        std::fs::remove_file(self.file(id))?;
        self.sync_dir()
    }
}

/// Segments on the file system.
pub(crate) struct FsDir(NumberedFiles);

impl FsDir {
    /// Opens (creating) the directory.
    pub(crate) fn open(path: &Path) -> io::Result<FsDir> {
        Ok(FsDir(NumberedFiles::open(path, ".seg")?))
    }
}

impl SegmentDir for FsDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        self.0.list()
    }

    fn open(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
        self.0.open_file(id)
    }

    fn create(&self, id: u64, len: u64, head: &[u8]) -> io::Result<Arc<dyn SegmentFile>> {
        // Written in full (not sparse, not fallocated): writes into unwritten extents would make
        // each later sync carry metadata. Built under a temporary name, so a crash midway
        // leaves no half-made segment.
        let (tmp, file) = self.0.create_tmp(id)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&file, &zeros[..n], at)?;
            at += n as u64;
        }
        std::os::unix::fs::FileExt::write_all_at(&file, head, 0)?;
        self.0.publish(&tmp, file, id)
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        self.0.remove(id)
    }
}

/// A file of a `SegmentDir` on the file system (a segment, or a snapshot: `snapshot_dir.rs`).
struct FsFile(std::fs::File);

impl SegmentFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Where an entry's record is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loc {
    segment: u64,
    /// Offset of the record (its head).
    offset: u64,
    payload: u32,
    pub(crate) log_id: LogId<RaftId>,
}

/// What readers share with the writer: the files and where each live entry is.
#[derive(Default)]
pub(crate) struct WalIndex {
    files: BTreeMap<u64, Arc<dyn SegmentFile>>,
    pub(crate) locs: BTreeMap<u64, Loc>,
    pub(crate) vote: Option<Vote<RaftId>>,
    pub(crate) last_purged: Option<LogId<RaftId>>,
}

/// Shared by the writer and every reader.
#[derive(Default)]
pub(crate) struct WalShared {
    /// Set by `close`; the writer holds a read guard through each write and sync, so once
    /// `close` returns nothing more is written.
    closed: RwLock<bool>,
    index: Mutex<WalIndex>,
}

impl WalShared {
    pub(crate) fn index(&self) -> std::sync::MutexGuard<'_, WalIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every later write and read, and lets go of the files.
    pub(crate) fn close(&self) {
        *self.closed.write().unwrap_or_else(|p| p.into_inner()) = true;
        self.index().files.clear();
    }

    fn is_closed(&self) -> bool {
        *self.closed.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries in the range (their JSON), read from their segments.
    pub(crate) fn read(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        if is_empty(start, end) {
            // `BTreeMap::range` panics on these.
            return Ok(Vec::new());
        }
        let wanted: Vec<(Loc, Arc<dyn SegmentFile>)> = {
            let index = self.index();
            index
                .locs
                .range((start, end))
                .map(|(_, loc)| {
                    let file = index.files.get(&loc.segment).cloned().ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "entry {} is in segment {} which is gone",
                            loc.log_id.index, loc.segment
                        ))
                    })?;
                    Ok((*loc, file))
                })
                .collect::<Result<_, StoreError>>()?
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (loc, file) in wanted {
            let mut buf = vec![0u8; RECORD_HEAD + loc.payload as usize];
            file.read_at(loc.offset, &mut buf)?;
            match parse_record(&buf) {
                Parsed::Record {
                    kind: KIND_ENTRY,
                    payload,
                    ..
                } => out.push(serde_json::from_slice(payload)?),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "entry {} at offset {} of segment {} does not read back",
                        loc.log_id.index, loc.offset, loc.segment
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// True if no index lies between the bounds (start after end, or equal and not both included).
fn is_empty(start: Bound<u64>, end: Bound<u64>) -> bool {
    use Bound::{Excluded, Included, Unbounded};
    match (start, end) {
        (Unbounded, _) | (_, Unbounded) => false,
        (Included(s), Included(e)) => s > e,
        (Included(s) | Excluded(s), Included(e) | Excluded(e)) => s >= e,
    }
}

/// Appends one record to `buf`.
fn put_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) -> Result<(), StoreError> {
    if payload.is_empty() || payload.len() > RECORD_MAX {
        return Err(StoreError::Corrupt(format!(
            "a log record of {} bytes cannot be written (at most {RECORD_MAX})",
            payload.len()
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
    Ok(())
}

fn put_json<T: Serialize>(buf: &mut Vec<u8>, kind: u8, value: &T) -> Result<(), StoreError> {
    put_record(buf, kind, &serde_json::to_vec(value)?)
}

enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
    },
    /// Zeros: where the records end.
    End,
    /// A length past the end, or a checksum that does not hold.
    Torn,
}

fn parse_record(bytes: &[u8]) -> Parsed<'_> {
    let Some(head) = bytes.get(..RECORD_HEAD) else {
        return if bytes.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Torn
        };
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return if head.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Torn
        };
    }
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let Some(payload) = (len <= RECORD_MAX)
        .then(|| bytes.get(RECORD_HEAD..RECORD_HEAD + len))
        .flatten()
    else {
        return Parsed::Torn;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&head[8..9]);
    h.update(payload);
    if h.finalize() != crc {
        return Parsed::Torn;
    }
    Parsed::Record {
        kind: head[8],
        payload,
    }
}

/// Only the log id of an entry's JSON (serde skips the payload).
#[derive(serde::Deserialize)]
pub(crate) struct EntryHead {
    pub(crate) log_id: LogId<RaftId>,
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(payload)?)
}

/// The log as replay leaves it.
#[derive(Default)]
struct Replay {
    vote: Option<Vote<RaftId>>,
    committed: Option<LogId<RaftId>>,
    last_purged: Option<LogId<RaftId>>,
    locs: BTreeMap<u64, Loc>,
}

impl Replay {
    fn apply(
        &mut self,
        segment: u64,
        offset: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        match kind {
            KIND_ENTRY => {
                let log_id = decode::<EntryHead>(payload)?.log_id;
                if self.last_purged.is_some_and(|p| log_id.index <= p.index) {
                    return Ok(());
                }
                let loc = Loc {
                    segment,
                    offset,
                    payload: payload.len() as u32,
                    log_id,
                };
                self.locs.insert(log_id.index, loc);
            }
            KIND_VOTE => self.vote = Some(decode(payload)?),
            KIND_COMMITTED => self.committed = decode(payload)?,
            KIND_PURGED => {
                let purged: LogId<RaftId> = decode(payload)?;
                purge_locs(&mut self.locs, purged.index);
                if self.last_purged.is_none_or(|p| p.index < purged.index) {
                    self.last_purged = Some(purged);
                }
            }
            KIND_TRUNCATE => {
                let bytes: [u8; 8] = payload.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("a truncation of {} bytes", payload.len()))
                })?;
                self.locs.split_off(&u64::from_le_bytes(bytes));
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown record kind {other} at offset {offset} of segment {segment}"
                )));
            }
        }
        Ok(())
    }
}

/// Drops every location at or before `index`.
fn purge_locs(locs: &mut BTreeMap<u64, Loc>, index: u64) {
    *locs = match index.checked_add(1) {
        Some(after) => locs.split_off(&after),
        None => BTreeMap::new(),
    };
}

/// The writer's side of the log: it alone writes, in the order it is called.
pub(crate) struct Wal {
    dir: Arc<dyn SegmentDir>,
    shared: Arc<WalShared>,
    active_id: u64,
    active: Arc<dyn SegmentFile>,
    /// Where the next record goes in the active segment, and the segment's length.
    end: u64,
    size: u64,
    /// The active segment has writes not yet synced (a purge's record).
    unsynced: bool,
    /// A write or sync failed: what happened to the file is unknown, so nothing more is
    /// written (an fsync that failed once may report success the next time for lost pages).
    failed: Option<String>,
    /// As last written, for the checkpoint at the start of the next segment.
    vote: Option<Vote<RaftId>>,
    committed: Option<LogId<RaftId>>,
    last_purged: Option<LogId<RaftId>>,
}

impl Wal {
    /// Opens the log in `dir` (creating its first segment if there is none), replays it, and
    /// returns it with the committed log id it holds.
    pub(crate) fn open(
        dir: Arc<dyn SegmentDir>,
    ) -> Result<(Wal, Option<LogId<RaftId>>), StoreError> {
        let ids = dir.list()?;
        let mut replay = Replay::default();
        let mut files = BTreeMap::new();
        let mut active = None;
        for (n, &id) in ids.iter().enumerate() {
            let file = dir.open(id)?;
            let len = file.len()?;
            let mut bytes = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
            file.read_at(0, &mut bytes)?;
            if bytes.len() < HEADER_BYTES
                || &bytes[..8] != MAGIC
                || bytes[8..12] != VERSION.to_le_bytes()
            {
                return Err(StoreError::Corrupt(format!(
                    "segment {id} has no Orion log header (format version {VERSION})"
                )));
            }
            let mut at = HEADER_BYTES;
            let torn = loop {
                match parse_record(&bytes[at..]) {
                    Parsed::Record { kind, payload } => {
                        replay.apply(id, at as u64, kind, payload)?;
                        at += RECORD_HEAD + payload.len();
                    }
                    Parsed::End => break false,
                    Parsed::Torn => break true,
                }
            };
            let last = n + 1 == ids.len();
            if torn && !last {
                return Err(StoreError::Corrupt(format!(
                    "segment {id} has a damaged record at offset {at}, and later segments exist"
                )));
            }
            if last {
                if bytes[at..].iter().any(|b| *b != 0) {
                    // A torn record that was never acknowledged: cleared, so that no part of
                    // it is read as a record after the next append.
                    tracing::warn!(segment = id, offset = at, "raft log: dropping a torn tail");
                    file.write_at(at as u64, &vec![0u8; bytes.len() - at])?;
                    file.sync()?;
                }
                active = Some((id, file.clone(), at as u64, len));
            }
            files.insert(id, file);
        }
        let shared = Arc::new(WalShared::default());
        let (active_id, active, end, size) = match active {
            Some(a) => a,
            None => {
                let head = checkpoint(&None, &None, &None)?;
                let file = dir.create(1, SEGMENT_BYTES, &head)?;
                files.insert(1, file.clone());
                (1, file, head.len() as u64, SEGMENT_BYTES)
            }
        };
        {
            let mut index = shared.index();
            index.files = files;
            index.locs = replay.locs;
            index.vote = replay.vote;
            index.last_purged = replay.last_purged;
        }
        let wal = Wal {
            dir,
            shared,
            active_id,
            active,
            end,
            size,
            unsynced: false,
            failed: None,
            vote: replay.vote,
            committed: replay.committed,
            last_purged: replay.last_purged,
        };
        Ok((wal, replay.committed))
    }

    pub(crate) fn shared(&self) -> Arc<WalShared> {
        self.shared.clone()
    }

    /// Writes `buf` at the end of the log (in a new segment if it does not fit), synced if
    /// `sync`; returns the segment and offset it went to.
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(u64, u64), StoreError> {
        let shared = self.shared.clone();
        let closed = shared.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(StoreError::Closed);
        }
        if let Some(msg) = &self.failed {
            return Err(StoreError::WriteFailed(msg.clone()));
        }
        let res = self.write_inner(buf, sync);
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    fn write_inner(&mut self, buf: &[u8], sync: bool) -> Result<(u64, u64), StoreError> {
        if self.end + buf.len() as u64 > self.size {
            self.roll(buf.len() as u64)?;
        }
        let at = self.end;
        self.active.write_at(at, buf)?;
        self.end += buf.len() as u64;
        self.unsynced = true;
        if sync {
            self.sync()?;
        }
        Ok((self.active_id, at))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.active.sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Starts the next segment, large enough for `need` more bytes after its checkpoint. The
    /// active one is synced first, so only the last segment can ever end torn.
    fn roll(&mut self, need: u64) -> Result<(), StoreError> {
        self.sync()?;
        let id = self.active_id + 1;
        let head = checkpoint(&self.vote, &self.committed, &self.last_purged)?;
        let size = SEGMENT_BYTES.max((head.len() as u64 + need).next_multiple_of(4096));
        let file = self.dir.create(id, size, &head)?;
        self.shared.index().files.insert(id, file.clone());
        self.active_id = id;
        self.active = file;
        self.end = head.len() as u64;
        self.size = size;
        Ok(())
    }

    /// Appends entries (index, log id, JSON) and, if given, the committed log id, then syncs.
    pub(crate) fn append(
        &mut self,
        rows: &[(LogId<RaftId>, Vec<u8>)],
        committed: Option<Option<LogId<RaftId>>>,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(rows.iter().map(|(_, b)| b.len() + RECORD_HEAD).sum());
        let mut at = Vec::with_capacity(rows.len());
        for (_, bytes) in rows {
            at.push(buf.len() as u64);
            put_record(&mut buf, KIND_ENTRY, bytes)?;
        }
        if let Some(c) = &committed {
            put_json(&mut buf, KIND_COMMITTED, c)?;
        }
        let (segment, start) = self.write(&buf, true)?;
        if let Some(c) = committed {
            self.committed = c;
        }
        let mut index = self.shared.index();
        for ((log_id, bytes), rel) in rows.iter().zip(at) {
            let loc = Loc {
                segment,
                offset: start + rel,
                payload: bytes.len() as u32,
                log_id: *log_id,
            };
            index.locs.insert(log_id.index, loc);
        }
        Ok(())
    }

    pub(crate) fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        put_json(&mut buf, KIND_VOTE, vote)?;
        self.write(&buf, true)?;
        self.vote = Some(*vote);
        self.shared.index().vote = Some(*vote);
        Ok(())
    }

    pub(crate) fn save_committed(
        &mut self,
        committed: Option<LogId<RaftId>>,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        put_json(&mut buf, KIND_COMMITTED, &committed)?;
        self.write(&buf, true)?;
        self.committed = committed;
        Ok(())
    }

    /// Removes every entry at or after `index`, durably.
    pub(crate) fn truncate(&mut self, index: u64) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        put_record(&mut buf, KIND_TRUNCATE, &index.to_le_bytes())?;
        self.write(&buf, true)?;
        self.shared.index().locs.split_off(&index);
        Ok(())
    }

    /// Removes every entry up to `log_id`, without a sync of its own (a purge undone by a
    /// crash leaves more log than needed, never less); deletes the segments left holding no
    /// entry, after a sync that makes the purge durable first.
    pub(crate) fn purge(&mut self, log_id: LogId<RaftId>) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        put_json(&mut buf, KIND_PURGED, &log_id)?;
        self.write(&buf, false)?;
        if self.last_purged.is_none_or(|p| p.index < log_id.index) {
            self.last_purged = Some(log_id);
        }
        let doomed: Vec<u64> = {
            let mut index = self.shared.index();
            purge_locs(&mut index.locs, log_id.index);
            index.last_purged = self.last_purged;
            // Entries lie in segments in log order, so the first live one marks the oldest
            // segment still needed; every segment before it (never the active one) can go.
            let keep_from = index
                .locs
                .first_key_value()
                .map_or(self.active_id, |(_, l)| l.segment)
                .min(self.active_id);
            index.files.range(..keep_from).map(|(id, _)| *id).collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        self.write(&[], true)?;
        for id in doomed {
            // A segment that cannot be deleted only costs disk (and replay time) until the
            // next purge tries again.
            if let Err(e) = self.dir.remove(id) {
                tracing::warn!(segment = id, error = %e, "raft log: a purged segment stays");
                continue;
            }
            self.shared.index().files.remove(&id);
        }
        Ok(())
    }
}

/// A new segment's first bytes: the header, then the vote, committed log id and last purge.
fn checkpoint(
    vote: &Option<Vote<RaftId>>,
    committed: &Option<LogId<RaftId>>,
    last_purged: &Option<LogId<RaftId>>,
) -> Result<Vec<u8>, StoreError> {
    let mut head = Vec::with_capacity(HEADER_BYTES + 256);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&[0; 4]);
    if let Some(v) = vote {
        put_json(&mut head, KIND_VOTE, v)?;
    }
    if committed.is_some() {
        put_json(&mut head, KIND_COMMITTED, committed)?;
    }
    if let Some(p) = last_purged {
        put_json(&mut head, KIND_PURGED, p)?;
    }
    Ok(head)
}
