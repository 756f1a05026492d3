//! openraft's own storage conformance suite, run against the log (segment files) and the
//! state machine (redb), each
//! case on fresh files in its own temporary directory.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use orion_raft::testing::{LogStore, StateMachineStore, TypeConfig};
use tempfile::TempDir;

struct FileBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FileBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(dir.path()).expect("open log");
        let sm = StateMachineStore::open(&dir.path().join("state.redb")).expect("open state");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(FileBuilder).expect("storage suite");
}
