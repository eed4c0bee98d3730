//! Follows each folder's change feed and applies it to the cache (`cache::merge`), then
//! tells the kernel what it touched, so a listing on this device shows a change made
//! elsewhere within seconds. The cursor of each folder is kept in the cache, so a restart
//! goes on where the last run stopped.

use crate::agent::cache::{Cache, CacheError, FolderInfo, ROOT, Txn, merge};
use crate::agent::invalidate::Invalidator;
use crate::agent::remote::{ClientError, Remote};
use crate::agent::status::Counters;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long one long-poll waits on the cloud.
const POLL_WAIT_SECS: u64 = 20;
/// How often the list of folders is refreshed.
const FOLDER_REFRESH: Duration = Duration::from_secs(10);

/// What the feed runs on.
#[derive(Clone)]
pub struct Feed {
    pub cache: Arc<Cache>,
    pub remote: Arc<dyn Remote>,
    pub inv: Arc<dyn Invalidator>,
    pub counters: Arc<Counters>,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Cloud(#[from] ClientError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl Feed {
    /// Follows the list of folders and each folder's feed, forever.
    pub async fn run(self) {
        let mut following = HashSet::new();
        loop {
            match self.folders().await {
                Ok(folders) => {
                    for info in folders {
                        if following.insert(info.id.clone()) {
                            tokio::spawn(self.clone().follow(info));
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "listing folders"),
            }
            tokio::time::sleep(FOLDER_REFRESH).await;
        }
    }

    /// Reads the user's folders from the cloud and makes sure each has its root under the
    /// mount root (telling the kernel of new ones); returns them.
    pub async fn folders(&self) -> Result<Vec<FolderInfo>, FeedError> {
        let mut out = Vec::new();
        for g in self.remote.folders().await? {
            let known = self.cache.folder(&g.folder.id)?.is_some();
            let info = merge::ensure_folder(
                &self.cache,
                &g.folder.id,
                &g.folder.name,
                g.folder.device_only,
            )?;
            if !known {
                self.inv.entry(ROOT, &info.name);
            }
            out.push(info);
        }
        Ok(out)
    }

    async fn follow(self, folder: FolderInfo) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.step(&folder, POLL_WAIT_SECS).await {
                Ok(_) => {
                    self.counters.cloud_reachable.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    if matches!(&e, FeedError::Cloud(c) if c.is_unreachable()) {
                        self.counters
                            .cloud_reachable
                            .store(false, Ordering::Relaxed);
                    }
                    tracing::debug!(folder = %folder.name, error = %e, "change feed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// One round: the folder's whole listing the first time, then the changes after the
    /// cursor (waiting up to `wait_secs` for one), applied in order; the cursor moves only
    /// after all of them are applied. Returns how many changed the cache.
    pub async fn step(&self, folder: &FolderInfo, wait_secs: u64) -> Result<usize, FeedError> {
        let (entries, next) = match self.cache.cursor(&folder.id)? {
            None => {
                let mut list = self.remote.entries(&folder.id).await?;
                list.entries.sort_by_key(|e| e.version);
                (list.entries, list.seq)
            }
            Some(since) => {
                let batch = self.remote.changes(&folder.id, since, wait_secs).await?;
                (batch.changes, batch.next)
            }
        };
        let mut applied = 0;
        for e in &entries {
            let changed = merge::apply_entry(&self.cache, self.inv.as_ref(), folder, e)?;
            tracing::debug!(entry = %e.id, name = %e.name, version = e.version, deleted = e.deleted, changed, "change from the feed");
            if changed {
                applied += 1;
                Counters::add(&self.counters.changes_applied, 1);
            }
        }
        let mut txn = Txn::default();
        txn.set_cursor(&folder.id, next);
        self.cache.apply(txn)?;
        Ok(applied)
    }
}
