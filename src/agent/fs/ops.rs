//! The namespace: lookups and attributes, directories and their listings, and the
//! operations that change names and metadata. Each touches only sled and returns at once
//! (none waits on the network); a change and its journal record go into one sled batch.
//!
//! The kernel's references to inodes are counted here ([`Fs::lookup`] and every operation
//! that answers with an entry count one; [`Fs::forget`] gives them back), so an unlinked
//! node stays while the kernel may still open it.

use super::attr::{Attr, NAME_MAX, Owner, SetAttr, StatFs, TimeSet};
use super::content::Staging;
use super::readahead::ReadAhead;
use crate::agent::cache::{Cache, Node, ROOT, Txn};
use crate::agent::fetch::Fetcher;
use crate::agent::fs::FsError;
use crate::agent::journal::Journal;
use crate::agent::status::Counters;
use crate::proto::{EntryKind, now_ns};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A name that is longer than a directory entry may be.
pub(super) fn check_len(name: &str) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// A name a new entry may have.
fn check_name(name: &str) -> Result<(), FsError> {
    check_len(name)?;
    if !crate::proto::valid_entry_name(name) {
        return Err(FsError::Invalid);
    }
    Ok(())
}

/// An open file.
pub(super) struct Handle {
    pub(super) ino: u64,
    pub(super) writable: bool,
    /// `Staging::commits` at this handle's last change of the file, if it made one.
    pub(super) changed_at: Option<u64>,
    /// It writes by passthrough, unseen by the agent (`Fs::open_over_view`).
    pub(super) kernel_writes: bool,
    pub(super) ahead: ReadAhead,
}

/// One entry of a directory listing, the dots included.
pub struct DirEntry<'a> {
    pub ino: u64,
    /// Where the next `readdir` goes on after this entry.
    pub next: u64,
    pub kind: EntryKind,
    pub name: &'a str,
}

/// The state behind the mount.
pub struct Fs {
    pub(super) cache: Arc<Cache>,
    pub(super) fetcher: Arc<Fetcher>,
    pub(super) journal: Arc<Journal>,
    pub(super) counters: Arc<Counters>,
    owner: Owner,
    pub(super) handles: Mutex<HashMap<u64, Handle>>,
    /// How many times the kernel was told of each inode and not yet told to forget it: an
    /// unlinked node stays until the kernel lets go, since it may still open it.
    lookups: Mutex<HashMap<u64, u64>>,
    pub(super) next_fh: AtomicU64,
    /// Open directory handles and the listing each read at its first `readdir`.
    dirs: Mutex<HashMap<u64, Option<Arc<Vec<Node>>>>>,
    pub(super) staging: Mutex<HashMap<u64, Arc<Staging>>>,
    /// One file is brought to the device for writing at a time.
    pub(super) materializing: tokio::sync::Mutex<()>,
    /// The last file opened for reading, (directory, name): files of a directory opened in
    /// turn get the next ones fetched ahead (see `content.rs`).
    pub(super) last_opened: Mutex<Option<(u64, String)>>,
}

impl Fs {
    pub fn new(
        cache: Arc<Cache>,
        fetcher: Arc<Fetcher>,
        journal: Arc<Journal>,
        counters: Arc<Counters>,
        owner: Owner,
    ) -> Self {
        Self {
            cache,
            fetcher,
            journal,
            counters,
            owner,
            handles: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            staging: Mutex::new(HashMap::new()),
            materializing: tokio::sync::Mutex::new(()),
            last_opened: Mutex::new(None),
        }
    }

    pub(super) fn lock_meta(&self) -> std::sync::MutexGuard<'_, ()> {
        self.cache.lock()
    }

    pub(super) fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.cache.node(ino)?.ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: u64) -> Result<Node, FsError> {
        let n = self.node(ino)?;
        if n.is_dir() {
            Ok(n)
        } else {
            Err(FsError::NotDir)
        }
    }

    /// The node at `name` in directory `parent` (no kernel reference is counted).
    fn find(&self, parent: u64, name: &str) -> Result<Node, FsError> {
        check_len(name)?;
        self.dir(parent)?;
        let ino = self.cache.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        self.node(ino)
    }

    // ---- attributes ----

    /// A node as the kernel should see it: a file being written shows its live size and
    /// times.
    pub(super) fn live(&self, mut n: Node) -> Node {
        if let Some(s) = self.staging_of(n.ino) {
            s.overlay(&mut n);
        }
        n
    }

    /// Refuses a change to `n` (or in directory `n`) when its folder is shared with this
    /// user read-only: at once, before anything is written or queued.
    pub(super) fn may_change(&self, n: &Node) -> Result<(), FsError> {
        match &n.folder {
            Some(f) if self.cache.is_read_only(f) => Err(FsError::ReadOnly),
            _ => Ok(()),
        }
    }

    /// The attributes of `n` as `stat` shows them. Files of a read-only folder keep their
    /// write bits: the kernel asks for them to set `user.meshfs.pinned`, and the agent
    /// refuses the changes themselves.
    fn attr(&self, n: Node) -> Result<Attr, FsError> {
        let n = self.live(n);
        let subdirs = if n.is_dir() {
            self.cache.subdirs(n.ino)?
        } else {
            0
        };
        Ok(Attr::of(&n, subdirs, self.owner))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.attr(self.node(ino)?)
    }

    /// `lookup`: the entry, which the kernel now holds a reference to.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let a = self.attr(self.find(parent, name)?)?;
        self.remember(a.ino);
        Ok(a)
    }

    pub fn readlink(&self, ino: u64) -> Result<String, FsError> {
        let n = self.node(ino)?;
        n.target
            .filter(|_| n.kind == EntryKind::Symlink)
            .ok_or(FsError::Invalid)
    }

    /// The mesh's size for `statfs`: the user's cloud quota and its use, as last heard.
    pub fn statfs(&self) -> StatFs {
        StatFs::of(
            self.counters.cloud_quota.load(Ordering::Relaxed),
            self.counters.cloud_used.load(Ordering::Relaxed),
        )
    }

    // ---- directories ----

    /// `opendir`: a handle whose listing is read once, at its first `readdir`, and kept for
    /// the calls that follow (the kernel reads a big directory in many small pieces; reading
    /// the whole listing for each would make listing a directory quadratic).
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        self.dir(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, None);
        Ok(fh)
    }

    /// The children of directory `ino` with their nodes, in name order.
    fn children(&self, ino: u64) -> Result<Vec<Node>, FsError> {
        let mut out = Vec::new();
        for (_, child) in self.cache.children(ino)? {
            if let Some(n) = self.cache.node(child)? {
                out.push(self.live(n));
            }
        }
        Ok(out)
    }

    /// The listing of directory handle `fh` for a `readdir` from `offset`: read now at the
    /// start (offset 0, or a handle that has none yet), else the one read then.
    fn listing(&self, fh: u64, ino: u64, offset: u64) -> Result<Arc<Vec<Node>>, FsError> {
        if offset > 0
            && let Some(Some(kept)) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(&fh)
        {
            return Ok(Arc::clone(kept));
        }
        self.dir(ino)?;
        let listed = Arc::new(self.children(ino)?);
        Counters::add(&self.counters.dirs_listed, 1);
        if let Some(slot) = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&fh)
        {
            *slot = Some(Arc::clone(&listed));
        }
        Ok(listed)
    }

    /// `readdir` of handle `fh` on directory `ino` from `offset`: gives `.`, `..` and the
    /// children to `add` in order until it returns true (the reply is full).
    pub fn readdir(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<(), FsError> {
        let children = self.listing(fh, ino, offset)?;
        let parent = self.node(ino).map_or(ino, |n| n.parent);
        let dots = [(ino, EntryKind::Dir, "."), (parent, EntryKind::Dir, "..")];
        let all = dots
            .into_iter()
            .chain(children.iter().map(|n| (n.ino, n.kind, n.name.as_str())));
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if add(DirEntry {
                ino: child,
                next,
                kind,
                name,
            }) {
                break;
            }
        }
        Ok(())
    }

    /// `readdirplus`: like [`Fs::readdir`] with each entry's attributes; every entry
    /// `add` takes but the dots counts as a kernel reference.
    pub fn readdirplus(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>, &Attr) -> bool,
    ) -> Result<(), FsError> {
        let this = self.node(ino)?;
        let children = self.listing(fh, ino, offset)?;
        let parent = self.node(this.parent).unwrap_or_else(|_| this.clone());
        let dots = [(".", this), ("..", parent)];
        let all = dots
            .into_iter()
            .chain(children.iter().map(|n| (n.name.as_str(), n.clone())));
        for (i, (name, n)) in all.enumerate().skip(offset as usize) {
            let a = self.attr(n)?;
            let entry = DirEntry {
                ino: a.ino,
                next: i as u64 + 1,
                kind: a.kind,
                name,
            };
            if add(entry, &a) {
                break;
            }
            if i >= 2 {
                self.remember(a.ino);
            }
        }
        Ok(())
    }

    /// `releasedir`: the handle's listing goes.
    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    // ---- changing names and metadata ----

    pub(super) fn new_child(
        &self,
        parent: u64,
        name: &str,
        kind: EntryKind,
        mode: u32,
        target: Option<String>,
    ) -> Result<Node, FsError> {
        check_name(name)?;
        let _g = self.lock_meta();
        let p = self.dir(parent)?;
        if parent == ROOT {
            return Err(FsError::NotPermitted(
                "the mount root holds Mesh Folders: use `meshfs folder create`",
            ));
        }
        self.may_change(&p)?;
        if self.cache.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let folder = p.folder.clone().ok_or(FsError::Invalid)?;
        let ino = self.cache.next_id()?;
        let entry = uuid::Uuid::new_v4().to_string();
        let size = target.as_ref().map_or(0, |t| t.len() as u64);
        let now = now_ns();
        let node = Node {
            ino,
            parent,
            name: name.to_string(),
            folder: Some(folder.clone()),
            entry: Some(entry.clone()),
            kind,
            mode: mode & 0o7777,
            size,
            mtime_ns: now,
            atime_ns: None,
            ctime_ns: None,
            version: 0,
            manifest: Vec::new(),
            target,
            pending: 1,
            linked: true,
            holders: Vec::new(),
            pinned: p.pinned,
        };
        let mut txn = Txn::default();
        txn.put_node(&node);
        txn.link(parent, name, &node);
        txn.index_entry(&folder, &entry, ino);
        txn.touch_dir(&self.cache, parent)?;
        self.journal.put(&self.cache, txn, &node, None)?;
        Ok(node)
    }

    /// `mkdir`: the new directory, which the kernel now holds a reference to.
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Attr, FsError> {
        let n = self.new_child(parent, name, EntryKind::Dir, mode, None)?;
        self.remember(n.ino);
        self.attr(n)
    }

    /// `symlink`: the new link, which the kernel now holds a reference to.
    pub fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<Attr, FsError> {
        let n = self.new_child(
            parent,
            name,
            EntryKind::Symlink,
            0o777,
            Some(target.to_string()),
        )?;
        self.remember(n.ino);
        self.attr(n)
    }

    /// `link`: a mesh entry has one parent, so hard links cannot be shown on other devices.
    pub fn link(&self, _ino: u64, _new_parent: u64, new_name: &str) -> Result<Attr, FsError> {
        check_len(new_name)?;
        Err(FsError::NotPermitted(
            "hard links cannot be shown on other devices",
        ))
    }

    /// Changes a node (and notes the change time) and journals the change in one batch.
    pub(super) fn update(&self, ino: u64, change: impl FnOnce(&mut Node)) -> Result<Node, FsError> {
        let mut n = self.node(ino)?;
        change(&mut n);
        n.pending += 1;
        let mut txn = Txn::default();
        txn.put_node(&n);
        self.journal.put(&self.cache, txn, &n, None)?;
        Ok(n)
    }

    pub fn unlink(&self, parent: u64, name: &str) -> Result<(), FsError> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> Result<(), FsError> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<(), FsError> {
        check_len(name)?;
        let _g = self.lock_meta();
        if parent == ROOT {
            return Err(FsError::NotPermitted(
                "Mesh Folders are removed through the cloud",
            ));
        }
        let n = self.find(parent, name)?;
        self.may_change(&n)?;
        match (dir, n.is_dir()) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            (true, true) if self.cache.has_children(n.ino)? => return Err(FsError::NotEmpty),
            _ => {}
        }
        let mut gone = n;
        gone.linked = false;
        gone.pending += 1;
        gone.touch(false);
        let mut txn = Txn::default();
        txn.unlink(parent, name);
        txn.put_node(&gone);
        txn.touch_dir(&self.cache, parent)?;
        self.journal.delete(&self.cache, txn, gone.ino)?;
        Ok(())
    }

    /// `rename(2)`, within one Mesh Folder. `noreplace` is `RENAME_NOREPLACE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        noreplace: bool,
    ) -> Result<(), FsError> {
        check_len(name)?;
        check_name(new_name)?;
        let _g = self.lock_meta();
        if parent == ROOT || new_parent == ROOT {
            return Err(FsError::NotPermitted(
                "Mesh Folders are renamed through the cloud",
            ));
        }
        let src = self.find(parent, name)?;
        let dst_dir = self.dir(new_parent)?;
        if dst_dir.folder != src.folder {
            return Err(FsError::CrossFolder);
        }
        self.may_change(&src)?;
        if src.is_dir() {
            // A directory may not move below itself.
            let mut at = dst_dir;
            loop {
                if at.ino == src.ino {
                    return Err(FsError::Invalid);
                }
                if at.entry.is_none() {
                    break;
                }
                at = self.node(at.parent)?;
            }
        }
        let target = self.cache.lookup(new_parent, new_name)?;
        if target == Some(src.ino) {
            return Ok(());
        }
        let mut txn = Txn::default();
        if let Some(t) = target {
            if noreplace {
                return Err(FsError::Exists);
            }
            // Renaming something over a directory it lies in: the VFS refuses that before
            // a filesystem hears of it, and `Fs` does the same.
            let mut up = src.parent;
            while let Some(n) = self.cache.node(up)?.filter(|n| n.entry.is_some()) {
                if n.ino == t {
                    return Err(FsError::NotEmpty);
                }
                up = n.parent;
            }
            let mut old = self.node(t)?;
            match (src.is_dir(), old.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if self.cache.has_children(t)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            // The cloud tombstones the replaced entry in the same step as the rename; until
            // that step is uploaded the old node stays, pending (see Snapshot::replaced).
            old.linked = false;
            old.pending += 1;
            old.touch(false);
            txn.put_node(&old);
        }
        let mut n = src;
        txn.unlink(n.parent, &n.name);
        txn.touch_dir(&self.cache, n.parent)?;
        if new_parent != n.parent {
            txn.touch_dir(&self.cache, new_parent)?;
        }
        n.parent = new_parent;
        n.name = new_name.to_string();
        n.pending += 1;
        n.touch(false);
        txn.link(new_parent, new_name, &n);
        txn.put_node(&n);
        self.journal.put(&self.cache, txn, &n, target)?;
        Ok(())
    }

    /// `setattr` without a size: mode and times (and ownership, which only the mounting
    /// user may keep). A time set on a file being written is kept by its next commit.
    /// Local only; answers at once.
    pub fn set_meta(&self, ino: u64, a: &SetAttr) -> Result<Attr, FsError> {
        if a.uid.is_some_and(|u| u != self.owner.uid) || a.gid.is_some_and(|g| g != self.owner.gid)
        {
            return Err(FsError::NotPermitted(
                "files belong to the user who mounted the mesh",
            ));
        }
        let _g = self.lock_meta();
        let n = self.node(ino)?;
        if a.mode.is_none() && a.atime.is_none() && a.mtime.is_none() {
            return self.attr(n);
        }
        if a.mode.is_some() || a.mtime.is_some() {
            self.may_change(&n)?;
        }
        if n.entry.is_none() {
            return Err(FsError::NotPermitted("the roots of the mount are fixed"));
        }
        let mtime = a.mtime.map(TimeSet::ns);
        let atime = a.atime.map(TimeSet::ns);
        if let (Some(s), Some(t)) = (self.staging_of(ino), mtime) {
            s.set_mtime(t);
        }
        let n = if a.mode.is_some() || mtime.is_some() {
            self.update(ino, |n| {
                if let Some(m) = a.mode {
                    n.mode = m & 0o7777;
                }
                if let Some(t) = mtime {
                    n.mtime_ns = t;
                }
                if atime.is_some() {
                    n.atime_ns = atime;
                }
                n.touch(false);
            })?
        } else {
            // The access time stays on this device: nothing to upload.
            let mut n = n;
            n.atime_ns = atime;
            n.touch(false);
            let mut txn = Txn::default();
            txn.put_node(&n);
            self.cache.apply(txn)?;
            n
        };
        self.attr(n)
    }

    /// `setattr`: a size change (which commits, see [`Fs::truncate`]), then mode and times,
    /// so that a time set in the same call wins over the truncation's.
    pub async fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr, FsError> {
        if let Some(size) = a.size {
            self.truncate(ino, size).await?;
        }
        self.set_meta(ino, &a)
    }

    // ---- the kernel's references ----

    /// The kernel now knows `ino` once more (an entry was replied for it).
    pub(super) fn remember(&self, ino: u64) {
        let mut lookups = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
        *lookups.entry(ino).or_insert(0) += 1;
    }

    /// The kernel forgot `n` of its references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) -> Result<(), FsError> {
        let gone = {
            let mut lookups = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
            let left = lookups.get(&ino).map_or(0, |c| c.saturating_sub(n));
            if left == 0 {
                lookups.remove(&ino);
            } else {
                lookups.insert(ino, left);
            }
            left == 0
        };
        if gone {
            self.drop_if_unlinked(ino)?;
        }
        Ok(())
    }

    /// Removes a node that was unlinked (here or elsewhere) once nothing needs it: no
    /// upload pending, no open handle, and the kernel holds no reference.
    pub(super) fn drop_if_unlinked(&self, ino: u64) -> Result<(), FsError> {
        let known = self
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&ino);
        let open = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| h.ino == ino);
        if known || open {
            return Ok(());
        }
        let _g = self.lock_meta();
        if let Some(n) = self.cache.node(ino)?
            && !n.linked
            && n.pending == 0
        {
            let mut txn = Txn::default();
            txn.remove_node(ino);
            self.cache.apply(txn)?;
        }
        Ok(())
    }
}
