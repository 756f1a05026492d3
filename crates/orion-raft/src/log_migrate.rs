//! Moves a Raft log that an older version kept in redb (`raft-log.redb`: a `logs` table of log
//! index to the JSON of the entry, and a `meta` table holding `vote`, `committed` and
//! `last_purged` as JSON) into the segment files of `wal.rs`.
//!
//! The new log is built in `raft-log.migrating/`, synced, and renamed to `raft-log/` in one
//! step, so a crash at any point leaves either the old log (and a half-built directory that
//! the next start clears and builds again) or the complete new one. `LogStore::open` deletes
//! the old file once the new directory exists.

use crate::error::StoreError;
use crate::types::RaftId;
use crate::wal::{EntryHead, FsDir, Wal};
use openraft::{LogId, Vote};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Entries copied per write while migrating (each write is synced).
const ROWS_PER_WRITE: usize = 512;

/// Copies the redb log at `old` into a new log directory at `dir`, which must not exist.
pub(crate) fn from_redb(old: &Path, dir: &Path) -> Result<(), StoreError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let building = dir.with_extension("migrating");
    if building.exists() {
        std::fs::remove_dir_all(&building)?;
    }
    let db = crate::redb_builder(crate::LOG_CACHE_BYTES).open(old)?;
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
        match &meta {
            Some(t) => Ok(t.get(key)?.map(|v| v.value().to_vec())),
            None => Ok(None),
        }
    };
    let vote: Option<Vote<RaftId>> = decode(get("vote")?)?;
    let committed: Option<LogId<RaftId>> = decode(get("committed")?)?.flatten();
    let last_purged: Option<LogId<RaftId>> = decode(get("last_purged")?)?.flatten();

    let (mut wal, _) = Wal::open(Arc::new(FsDir::open(&building)?))?;
    if let Some(vote) = &vote {
        wal.save_vote(vote)?;
    }
    if let Some(purged) = last_purged {
        wal.purge(purged)?;
    }
    let mut copied = 0usize;
    match txn.open_table(LOGS) {
        Ok(logs) => {
            let mut rows = Vec::with_capacity(ROWS_PER_WRITE);
            for item in logs.iter()? {
                let (_, v) = item?;
                let bytes = v.value().to_vec();
                let head: EntryHead = serde_json::from_slice(&bytes)?;
                rows.push((head.log_id, bytes));
                if rows.len() == ROWS_PER_WRITE {
                    copied += rows.len();
                    wal.append(&std::mem::take(&mut rows), None)?;
                }
            }
            copied += rows.len();
            wal.append(&rows, None)?;
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Synced with the last write (`append` syncs, also when it carries no entry).
    wal.save_committed(committed)?;
    drop(wal);
    std::fs::rename(&building, dir)?;
    std::fs::File::open(parent)?.sync_all()?;
    tracing::info!(
        entries = copied,
        from = %old.display(),
        to = %dir.display(),
        "raft log moved from redb to the segment format"
    );
    Ok(())
}

fn decode<T: DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
    bytes
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .map_err(StoreError::from)
}
