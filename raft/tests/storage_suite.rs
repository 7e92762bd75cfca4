//! openraft's storage conformance suite against the sled store: run before any cluster test.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use st2kv_raft::store::{self, LogStore, StateMachine};
use st2kv_raft::{NodeId, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = store::open(dir.path(), true).expect("open store");
        Ok((dir, s.log, s.state_machine))
    }
}

#[test]
fn sled_store_passes_openraft_conformance_suite() {
    Suite::test_all(SledBuilder).expect("conformance suite");
}
