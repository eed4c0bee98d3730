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

#[cfg(test)]
mod tests {
    use crate::agent::cache::ROOT;
    use crate::agent::remote::memory::{Call, Failure, MemoryCloud};
    use crate::agent::testkit::{TestDevice, one_device, second_device};
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn the_first_sync_lists_the_folder_and_later_ones_follow_from_its_cursor() {
        let (cloud, folder, a) = one_device().await;
        a.mkdir("Docs/d").unwrap();
        a.write("Docs/d/f", b"content").await.unwrap();
        a.upload().await.unwrap();
        let b = second_device(&cloud).await;
        assert_eq!(b.remote.calls(Call::Entries), 1);
        assert_eq!(b.read("Docs/d/f").await.unwrap(), b"content");
        assert!(b.cache.cursor(&folder).unwrap().is_some());
        a.write("Docs/d/g", b"more").await.unwrap();
        a.upload().await.unwrap();
        assert_eq!(b.sync().await, 1);
        assert_eq!(b.remote.calls(Call::Entries), 1, "no second full listing");
        assert_eq!(b.list("Docs/d").unwrap(), ["f", "g"]);
    }

    #[tokio::test]
    async fn a_change_made_elsewhere_is_applied_and_the_kernel_is_told() {
        let (cloud, _f, a) = one_device().await;
        let b = second_device(&cloud).await;
        a.write("Docs/old", b"x").await.unwrap();
        a.upload().await.unwrap();
        b.sync().await;
        let docs = b.ino("Docs").unwrap();
        let ino = b.ino("Docs/old").unwrap();
        b.inv.take();
        a.rename("Docs/old", "Docs/new").unwrap();
        a.upload().await.unwrap();
        b.sync().await;
        let told = b.inv.take();
        assert!(told.contains(&format!("entry {docs} old")), "{told:?}");
        assert!(told.contains(&format!("entry {docs} new")), "{told:?}");
        assert!(told.contains(&format!("inode {ino}")), "{told:?}");
        assert_eq!(b.ino("Docs/new").unwrap(), ino, "the same inode, renamed");
    }

    #[tokio::test]
    async fn the_feed_never_overwrites_a_change_waiting_to_upload() {
        let (cloud, _f, a) = one_device().await;
        a.write("Docs/f", b"v1").await.unwrap();
        a.upload().await.unwrap();
        let b = second_device(&cloud).await;
        b.write("Docs/f", b"b's edit, not yet uploaded")
            .await
            .unwrap();
        a.write("Docs/f", b"a's edit").await.unwrap();
        a.upload().await.unwrap();
        b.sync().await;
        assert_eq!(
            b.read("Docs/f").await.unwrap(),
            b"b's edit, not yet uploaded"
        );
    }

    #[tokio::test]
    async fn this_devices_own_writes_coming_back_are_old_news() {
        let (_c, _f, a) = one_device().await;
        a.write("Docs/f", b"mine").await.unwrap();
        a.mkdir("Docs/d").unwrap();
        a.upload().await.unwrap();
        a.inv.take();
        assert_eq!(a.sync().await, 0);
        assert_eq!(a.counters.changes_applied.load(Ordering::Relaxed), 0);
        assert!(a.inv.take().is_empty(), "nothing to invalidate");
    }

    #[tokio::test]
    async fn a_new_folder_appears_under_the_mount_root_and_the_kernel_is_told() {
        let (cloud, _f, a) = one_device().await;
        a.inv.take();
        cloud.create_folder("ann", "Photos", false);
        a.sync().await;
        assert_eq!(a.list("").unwrap(), ["Docs", "Photos"]);
        assert!(a.inv.take().contains(&format!("entry {ROOT} Photos")));
        // A folder of someone else's, shared with ann, shows too; one of the same name
        // as hers gets the owner's id beside its name.
        cloud.add_user("bob", 1 << 30);
        let bobs = cloud.create_folder("bob", "Photos", false);
        cloud.share(&bobs, "ann", false);
        a.sync().await;
        let names = a.list("").unwrap();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[tokio::test]
    async fn an_unreachable_cloud_leaves_the_cursor_where_it_was() {
        let (cloud, folder, a) = one_device().await;
        let b = second_device(&cloud).await;
        let cursor = b.cache.cursor(&folder).unwrap();
        a.write("Docs/f", b"x").await.unwrap();
        a.upload().await.unwrap();
        b.remote.fail(Call::Changes, Failure::Unreachable);
        let info = b.cache.folder(&folder).unwrap().unwrap();
        assert!(b.feed.step(&info, 0).await.is_err());
        assert_eq!(b.cache.cursor(&folder).unwrap(), cursor);
        assert_eq!(b.sync().await, 1, "the change comes once the cloud answers");
    }

    #[tokio::test]
    async fn a_deletion_elsewhere_unlinks_here_and_an_open_reader_keeps_its_file() {
        let (cloud, _f, a) = one_device().await;
        a.write("Docs/f", b"still readable").await.unwrap();
        a.upload().await.unwrap();
        let b = second_device(&cloud).await;
        let ino = b.fs.lookup(b.ino("Docs").unwrap(), "f").unwrap().ino;
        let fh = b.fs.open_read(ino).unwrap().fh;
        a.unlink("Docs/f").unwrap();
        a.upload().await.unwrap();
        b.sync().await;
        assert!(b.list("Docs").unwrap().is_empty());
        assert_eq!(&b.fs.read(fh, 0, 100).await.unwrap()[..], b"still readable");
        b.fs.close(fh).unwrap();
    }

    /// Two devices write in turn, each uploading and then reading the other's changes:
    /// both end with the same tree and bytes, and the cloud holds it.
    #[tokio::test]
    async fn two_devices_converge_on_one_tree() {
        let cloud = MemoryCloud::new();
        cloud.add_user("ann", 1 << 30);
        let folder = cloud.create_folder("ann", "Docs", false);
        let a = TestDevice::new(&cloud, "ann", "dev-a");
        let b = TestDevice::new(&cloud, "ann", "dev-b");
        a.sync().await;
        b.sync().await;
        a.mkdir("Docs/x").unwrap();
        a.write("Docs/x/1", b"one").await.unwrap();
        a.upload().await.unwrap();
        b.sync().await;
        b.write("Docs/x/2", b"two").await.unwrap();
        b.rename("Docs/x/1", "Docs/uno").unwrap();
        b.upload().await.unwrap();
        a.sync().await;
        a.unlink("Docs/x/2").unwrap();
        a.upload().await.unwrap();
        b.sync().await;
        for d in [&a, &b] {
            assert_eq!(d.list("Docs").unwrap(), ["uno", "x"]);
            assert!(d.list("Docs/x").unwrap().is_empty());
            assert_eq!(d.read("Docs/uno").await.unwrap(), b"one");
        }
        let tree = cloud.tree(&folder);
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["uno", "x"]);
    }
}
