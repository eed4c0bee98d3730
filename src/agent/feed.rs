//! Follows each folder's change feed and applies it to the cache (`cache::merge`), then
//! tells the kernel what it touched, so a listing on this device shows a change made
//! elsewhere within seconds. The cursor of each folder is kept in the cache, so a restart
//! goes on where the last run stopped.

use crate::agent::cache::{Cache, CacheError, FolderInfo, ROOT, Txn, merge};
use crate::agent::invalidate::Invalidator;
use crate::agent::remote::{ClientError, Remote};
use crate::agent::status::Counters;
use crate::proto::{FolderGrant, Right};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long one long-poll waits on the cloud.
const POLL_WAIT_SECS: u64 = 20;
/// How often the list of folders is refreshed (at once when a feed says the members
/// changed, or refuses this user).
const FOLDER_REFRESH: Duration = Duration::from_secs(10);

/// What is told when a folder's members or roles change: the peers' view of who may have
/// its blocks (see `agent/mount`).
pub type MembersChanged = Arc<dyn Fn(&str) + Send + Sync>;

/// What the feed runs on.
#[derive(Clone)]
pub struct Feed {
    pub cache: Arc<Cache>,
    pub remote: Arc<dyn Remote>,
    pub inv: Arc<dyn Invalidator>,
    pub counters: Arc<Counters>,
    pub members_changed: MembersChanged,
    /// Wakes [`Feed::run`] to list the folders again now.
    pub relist: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Cloud(#[from] ClientError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The names the mount root shows for a user's folders: each folder's own name, with
/// ` (OWNER)` added to a folder shared by OWNER when another of the listed folders has
/// that name. The user's own folders keep their names.
pub fn mount_names(grants: &[FolderGrant], me: &str) -> Vec<String> {
    grants
        .iter()
        .map(|g| {
            let f = &g.folder;
            let clash = grants
                .iter()
                .any(|o| o.folder.id != f.id && o.folder.name == f.name);
            if f.owner != me && clash {
                format!("{} ({})", f.name, f.owner)
            } else {
                f.name.clone()
            }
        })
        .collect()
}

impl Feed {
    /// Follows the list of folders and each folder's feed, forever. A folder gone from the
    /// list (this user was removed from it, or left) leaves the mount and the device.
    pub async fn run(self) {
        let mut following: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            match self.list().await {
                Ok((folders, gone)) => {
                    // A feed task that ended (it panicked) starts again.
                    following.retain(|_, task| !task.is_finished());
                    for id in gone {
                        // Stopped first, so that nothing it applies outlives the folder.
                        if let Some(task) = following.remove(&id) {
                            task.abort();
                            let _ = task.await;
                        }
                        if let Err(e) = self.forget(&id) {
                            tracing::error!(error = %e, "removing a folder no longer shared");
                        }
                    }
                    for info in folders {
                        following
                            .entry(info.id.clone())
                            .or_insert_with(|| tokio::spawn(self.clone().follow(info)));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "listing folders"),
            }
            tokio::select! {
                () = tokio::time::sleep(FOLDER_REFRESH) => {}
                () = self.relist.notified() => {}
            }
        }
    }

    /// Reads the user's folders from the cloud, makes sure each has its root under the
    /// mount root (telling the kernel of new ones), drops those no longer listed, and
    /// returns the folders.
    pub async fn folders(&self) -> Result<Vec<FolderInfo>, FeedError> {
        let (folders, gone) = self.list().await?;
        for id in gone {
            self.forget(&id)?;
        }
        Ok(folders)
    }

    /// Reads the user's folders from the cloud and makes sure each has its root under the
    /// mount root (telling the kernel of new ones). Returns them, and the ids of folders
    /// this device has that are no longer listed.
    async fn list(&self) -> Result<(Vec<FolderInfo>, Vec<String>), FeedError> {
        let grants = self.remote.folders().await?;
        let names = mount_names(&grants, self.remote.user());
        let mut out = Vec::new();
        for (g, name) in grants.iter().zip(&names) {
            let known = self.cache.folder(&g.folder.id)?.is_some();
            let info = merge::ensure_folder(
                &self.cache,
                &merge::Listed {
                    id: &g.folder.id,
                    name,
                    device_only: g.folder.device_only,
                    writable: g.rights.contains(&Right::Write),
                    epoch: g.folder.epoch,
                },
            )?;
            if !known {
                self.inv.entry(ROOT, &info.name);
            }
            out.push(info);
        }
        let gone = self
            .cache
            .folders()?
            .into_iter()
            .filter(|f| !out.iter().any(|o| o.id == f.id))
            .map(|f| f.id)
            .collect();
        Ok((out, gone))
    }

    /// Removes a folder this user lost (removed from it, or left) from the mount and the
    /// device.
    fn forget(&self, id: &str) -> Result<(), CacheError> {
        if let Some(info) = merge::drop_folder(&self.cache, id, self.remote.device_id())? {
            tracing::info!(folder = %info.name, "no longer shared with this user: removed from the mount and this device");
            self.inv.entry(ROOT, &info.name);
            (self.members_changed)(id);
        }
        Ok(())
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
                    // Refused: this user may have lost the folder. The listing decides, and
                    // stops this task if so.
                    if matches!(&e, FeedError::Cloud(c) if matches!(c.status(), Some(403 | 404))) {
                        tracing::info!(folder = %folder.name, error = %e, "the folder's feed is refused");
                        self.relist.notify_one();
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
    /// after all of them are applied. Returns how many changed the cache. A new membership
    /// epoch is told to the peers and makes the folder list be read again.
    pub async fn step(&self, folder: &FolderInfo, wait_secs: u64) -> Result<usize, FeedError> {
        let (entries, next, epoch) = match self.cache.cursor(&folder.id)? {
            None => {
                let mut list = self.remote.entries(&folder.id).await?;
                list.entries.sort_by_key(|e| e.version);
                (list.entries, list.seq, None)
            }
            Some(since) => {
                let batch = self.remote.changes(&folder.id, since, wait_secs).await?;
                (batch.changes, batch.next, Some(batch.epoch))
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
        if let Some(epoch) = epoch
            && merge::note_epoch(&self.cache, &folder.id, epoch)?
        {
            tracing::info!(folder = %folder.name, epoch, "the folder's members changed");
            (self.members_changed)(&folder.id);
            self.relist.notify_one();
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use crate::agent::cache::ROOT;
    use crate::agent::fs::{FsError, SetAttr};
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

    /// bob's device, with ann's folder `folder` shared with him as writer or reader.
    async fn bobs_device(
        cloud: &std::sync::Arc<MemoryCloud>,
        folder: &str,
        writer: bool,
    ) -> TestDevice {
        cloud.add_user("bob", 1 << 30);
        cloud.share(folder, "bob", writer);
        let b = TestDevice::new(cloud, "bob", "bob-1");
        b.sync().await;
        b
    }

    #[test]
    fn a_shared_folder_takes_its_owners_name_only_beside_one_of_the_same_name() {
        use crate::proto::{Folder, FolderGrant, TicketResponse};
        let grant = |id: &str, name: &str, owner: &str| FolderGrant {
            folder: Folder {
                id: id.into(),
                name: name.into(),
                owner: owner.into(),
                device_only: false,
                created_ms: 0,
                epoch: 0,
            },
            rights: Vec::new(),
            ticket: TicketResponse {
                ticket: String::new(),
                expires_at: 0,
            },
        };
        let grants = [
            grant("1", "Docs", "bob"),
            grant("2", "Docs", "ann"),
            grant("3", "Photos", "ann"),
            grant("4", "Docs", "cat"),
        ];
        assert_eq!(
            super::mount_names(&grants, "bob"),
            ["Docs", "Docs (ann)", "Photos", "Docs (cat)"]
        );
    }

    /// A reader's changes fail at once with `EACCES`: nothing is journaled, nothing
    /// reaches the cloud, and the owner's files stay as they were.
    #[tokio::test]
    async fn a_reader_changes_nothing_and_nothing_is_queued() {
        let (cloud, folder, a) = one_device().await;
        a.mkdir("Docs/d").unwrap();
        a.write("Docs/f", b"ann's").await.unwrap();
        a.upload().await.unwrap();
        let b = bobs_device(&cloud, &folder, false).await;
        assert_eq!(b.read("Docs/f").await.unwrap(), b"ann's");
        let refused: Vec<(&str, Result<(), FsError>)> = vec![
            ("edit", b.write("Docs/f", b"bob's").await),
            ("create", b.write("Docs/new", b"bob's").await),
            ("mkdir", b.mkdir("Docs/e").map(drop)),
            ("rename", b.rename("Docs/f", "Docs/g")),
            ("unlink", b.unlink("Docs/f")),
            ("rmdir", b.rmdir("Docs/d")),
            ("chmod", {
                let set = SetAttr {
                    mode: Some(0o600),
                    ..SetAttr::default()
                };
                b.fs.set_meta(b.ino("Docs/f").unwrap(), &set).map(drop)
            }),
            (
                "truncate",
                b.fs.truncate(b.ino("Docs/f").unwrap(), 0).await.map(drop),
            ),
        ];
        for (what, r) in refused {
            match r {
                Err(e @ FsError::ReadOnly) => assert_eq!(e.errno(), libc::EACCES),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert_eq!(b.cache.journal_len(), 0, "nothing queued");
        b.upload().await.unwrap();
        assert_eq!(b.remote.calls(Call::Steps), 0, "nothing sent");
        assert_eq!(b.list("Docs").unwrap(), ["d", "f"]);
        assert_eq!(b.read("Docs/f").await.unwrap(), b"ann's");
        assert_eq!(cloud.tree(&folder).keys().collect::<Vec<_>>(), ["d", "f"]);
    }

    /// Made a writer, the member edits; the owner's device gets the edit.
    #[tokio::test]
    async fn a_reader_made_writer_edits_and_the_owner_gets_it() {
        let (cloud, folder, a) = one_device().await;
        a.write("Docs/f", b"ann's").await.unwrap();
        a.upload().await.unwrap();
        let b = bobs_device(&cloud, &folder, false).await;
        assert!(matches!(
            b.write("Docs/f", b"x").await,
            Err(FsError::ReadOnly)
        ));
        cloud.share(&folder, "bob", true);
        b.sync().await;
        b.write("Docs/f", b"bob's").await.unwrap();
        b.upload().await.unwrap();
        a.sync().await;
        assert_eq!(a.read("Docs/f").await.unwrap(), b"bob's");
    }

    /// Removed from a folder, the member's device drops it: the mount root no longer lists
    /// it (the kernel is told), its nodes are gone, and so are the blocks held for it
    /// alone; a block held for another folder too stays, and that folder reads as before.
    #[tokio::test]
    async fn a_folder_no_longer_shared_leaves_the_mount_and_the_device() {
        let (cloud, folder, a) = one_device().await;
        a.write("Docs/only-here", b"ann's alone").await.unwrap();
        a.write("Docs/both", b"the same bytes").await.unwrap();
        a.upload().await.unwrap();
        let b = bobs_device(&cloud, &folder, false).await;
        cloud.create_folder("bob", "Mine", false);
        b.sync().await;
        b.write("Mine/copy", b"the same bytes").await.unwrap();
        assert_eq!(b.read("Docs/only-here").await.unwrap(), b"ann's alone");
        assert_eq!(b.read("Docs/both").await.unwrap(), b"the same bytes");
        let alone = crate::proto::BlockHash::of(b"ann's alone");
        let both = crate::proto::BlockHash::of(b"the same bytes");
        assert!(b.cache.has_block(&alone) && b.cache.has_block(&both));
        b.inv.take();

        cloud.unshare(&folder, "bob");
        b.sync().await;
        assert_eq!(b.list("").unwrap(), ["Mine"]);
        assert!(b.inv.take().contains(&format!("entry {ROOT} Docs")));
        assert!(b.cache.nodes_of_folder(&folder).unwrap().is_empty());
        assert!(b.cache.folder(&folder).unwrap().is_none());
        assert!(b.cache.cursor(&folder).unwrap().is_none());
        assert!(!b.cache.has_block(&alone), "held for the lost folder alone");
        assert!(b.cache.has_block(&both), "held for bob's own folder too");
        assert_eq!(b.read("Mine/copy").await.unwrap(), b"the same bytes");
        // Shared again later, it comes back whole.
        cloud.share(&folder, "bob", false);
        b.sync().await;
        assert_eq!(b.read("Docs/only-here").await.unwrap(), b"ann's alone");
    }

    /// A change of members reaches the owner's devices through the feed: the peers are told
    /// at once, so they ask the cloud who may have the folder's blocks before serving more.
    #[tokio::test]
    async fn a_new_membership_epoch_is_told_to_the_peers() {
        let (cloud, folder, a) = one_device().await;
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut feed = a.feed.clone();
        let sink = std::sync::Arc::clone(&told);
        feed.members_changed = std::sync::Arc::new(move |f: &str| {
            sink.lock().unwrap().push(f.to_string());
        });
        let info = a.cache.folder(&folder).unwrap().unwrap();
        cloud.add_user("bob", 1 << 30);
        cloud.share(&folder, "bob", true);
        feed.step(&info, 0).await.unwrap();
        assert!(
            told.lock().unwrap().is_empty(),
            "a new member takes nothing away"
        );
        cloud.unshare(&folder, "bob");
        feed.step(&info, 0).await.unwrap();
        assert_eq!(*told.lock().unwrap(), [folder]);
        feed.step(&info, 0).await.unwrap();
        assert_eq!(told.lock().unwrap().len(), 1, "told once");
    }
}
