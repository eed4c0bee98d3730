//! The durable log of local changes: a change to a node and its journal record go into
//! sled in one batch (`Journal::put`, `Journal::delete`), and the uploader (`uploader.rs`)
//! plays the records to the cloud, oldest first.

use crate::agent::cache::{Cache, CacheError, JournalOp, Node, Snapshot, Txn};
use std::sync::atomic::AtomicU64;
use tokio::sync::Notify;

/// Appends records and wakes the uploader.
#[derive(Default)]
pub struct Journal {
    wake: Notify,
    /// Records the cloud refused for good.
    pub failed: AtomicU64,
}

impl Journal {
    /// Waits for a new record, or `limit` at most.
    pub async fn appended(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.wake.notified()).await;
    }

    fn append(&self, cache: &Cache, mut txn: Txn, op: JournalOp) -> Result<(), CacheError> {
        let seq = cache.next_id()?;
        txn.journal(seq, &op);
        cache.apply(txn)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Applies `txn` together with a record to upload `node` in the state it has now;
    /// `replaced` is the node it took the place of (see [`Snapshot::replaced`]).
    pub fn put(
        &self,
        cache: &Cache,
        txn: Txn,
        node: &Node,
        replaced: Option<u64>,
    ) -> Result<(), CacheError> {
        let snap = Snapshot::of(node, replaced);
        self.append(
            cache,
            txn,
            JournalOp::Put {
                ino: node.ino,
                snap,
            },
        )
    }

    /// Applies `txn` together with a record to delete the node's entry in the cloud.
    pub fn delete(&self, cache: &Cache, txn: Txn, ino: u64) -> Result<(), CacheError> {
        self.append(cache, txn, JournalOp::Delete { ino })
    }
}
