//! Filesystem operations over the local cache. Metadata operations touch only sled and
//! return at once (they never wait on the network); `read`, `open` for writing and the
//! commit on `flush`/`fsync` are async because they may fetch blocks or hash content.
//!
//! Writes go to a staging file per inode. A commit cuts it into blocks, stores them,
//! records the new manifest and a journal record in one sled batch, flushes sled, and only
//! then returns: from that moment the version survives a crash of the agent.

use crate::agent::cache::{Cache, Node, ROOT, Txn};
use crate::agent::fetch::{Fetcher, Want};
use crate::agent::fs::FsError;
use crate::agent::fs::readahead::ReadAhead;
use crate::agent::journal::Journal;
use crate::agent::status::Counters;
use crate::proto::{BLOCK_SIZE, BlockHash, BlockRef, EntryKind};
use bytes::Bytes;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Longest name a directory entry may have, in bytes.
const NAME_MAX: usize = 255;

fn now_ns() -> i64 {
    crate::proto::now_ms().saturating_mul(1_000_000)
}

/// What to ask the fetcher for block `hash` of file `n` in `folder`.
fn want(n: &Node, folder: &str, hash: BlockHash) -> Want {
    Want {
        folder: folder.to_string(),
        entry: n.entry.clone().unwrap_or_default(),
        hash,
        holders: n.holders.clone(),
    }
}

fn check_name(name: &str) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FsError::Invalid);
    }
    Ok(())
}

/// A file being written: its local copy and whether it holds uncommitted writes.
struct Staging {
    file: std::fs::File,
    /// Writes hold it shared; a commit holds it exclusively while it reads the file, so a
    /// committed version never mixes bytes from before and after a concurrent write.
    gate: RwLock<()>,
    dirty: AtomicBool,
    /// Commits so far; a handle remembers the count at its last write, so its release
    /// knows whether a commit has taken that write since.
    commits: AtomicU64,
    opens: AtomicU64,
    /// The live size and mtime while writes go on; the node gets them at commit, so a
    /// write costs no metadata update.
    size: AtomicU64,
    mtime_ns: AtomicI64,
}

impl Staging {
    /// Sets the length (`O_TRUNC`, `ftruncate`), as a write would.
    fn resize(&self, size: u64) -> Result<(), FsError> {
        let _w = self.gate.read().unwrap_or_else(|p| p.into_inner());
        self.file.set_len(size)?;
        self.dirty.store(true, Ordering::SeqCst);
        self.size.store(size, Ordering::SeqCst);
        self.mtime_ns.store(now_ns(), Ordering::SeqCst);
        Ok(())
    }

    fn new(file: std::fs::File, size: u64, dirty: bool) -> Arc<Self> {
        Arc::new(Self {
            file,
            gate: RwLock::new(()),
            dirty: AtomicBool::new(dirty),
            commits: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            size: AtomicU64::new(size),
            mtime_ns: AtomicI64::new(now_ns()),
        })
    }
}

struct Handle {
    ino: u64,
    writable: bool,
    /// `Staging::commits` at this handle's last change of the file, if it made one.
    changed_at: Option<u64>,
    ahead: ReadAhead,
}

/// The state behind the mount.
pub struct Fs {
    cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
    journal: Arc<Journal>,
    counters: Arc<Counters>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// How many times the kernel was told of each inode and not yet told to forget it: an
    /// unlinked node stays until the kernel lets go, since it may still open it.
    lookups: Mutex<HashMap<u64, u64>>,
    next_fh: AtomicU64,
    /// Open directory handles and the listing each read at its first `readdir`.
    dirs: Mutex<HashMap<u64, Option<Arc<Vec<Node>>>>>,
    staging: Mutex<HashMap<u64, Arc<Staging>>>,
    /// One file is brought to the device for writing at a time.
    materializing: tokio::sync::Mutex<()>,
}

/// A writing handle's release, for [`Fs::finish_write`].
pub struct Closing {
    ino: u64,
    /// It changed the file after the last commit.
    commit: bool,
}

/// What `open` tells the kernel.
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep cached pages from earlier opens (the feed invalidates them when
    /// the content changes elsewhere).
    pub keep_cache: bool,
}

impl Fs {
    pub fn new(
        cache: Arc<Cache>,
        fetcher: Arc<Fetcher>,
        journal: Arc<Journal>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            cache,
            fetcher,
            journal,
            counters,
            handles: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            staging: Mutex::new(HashMap::new()),
            materializing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_meta(&self) -> std::sync::MutexGuard<'_, ()> {
        self.cache.lock()
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
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

    // ---- reading metadata ----

    /// A node as the kernel should see it: a file being written shows its live size.
    fn live(&self, mut n: Node) -> Node {
        if let Some(s) = self.staging_of(n.ino) {
            n.size = s.size.load(Ordering::SeqCst);
            n.mtime_ns = s.mtime_ns.load(Ordering::SeqCst);
        }
        n
    }

    pub fn getattr(&self, ino: u64) -> Result<Node, FsError> {
        self.node(ino).map(|n| self.live(n))
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Node, FsError> {
        self.dir(parent)?;
        let ino = self.cache.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        self.node(ino).map(|n| self.live(n))
    }

    /// The entries of a directory with their nodes, in name order.
    pub fn readdir(&self, ino: u64) -> Result<Vec<Node>, FsError> {
        self.dir(ino)?;
        let mut out = Vec::new();
        for (_, child) in self.cache.children(ino)? {
            if let Some(n) = self.cache.node(child)? {
                out.push(self.live(n));
            }
        }
        Ok(out)
    }

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

    /// The listing of directory handle `fh` for a `readdir` from `offset`: read now at the
    /// start (offset 0, or a handle that has none yet), else the one read then.
    pub fn listing(&self, fh: u64, ino: u64, offset: u64) -> Result<Arc<Vec<Node>>, FsError> {
        if offset > 0
            && let Some(Some(kept)) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(&fh)
        {
            return Ok(Arc::clone(kept));
        }
        let listed = Arc::new(self.readdir(ino)?);
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

    /// `releasedir`: the handle's listing goes.
    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn readlink(&self, ino: u64) -> Result<String, FsError> {
        let n = self.node(ino)?;
        n.target
            .filter(|_| n.kind == EntryKind::Symlink)
            .ok_or(FsError::Invalid)
    }

    // ---- changing metadata ----

    fn new_child(
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
        if self.cache.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let folder = p.folder.clone().ok_or(FsError::Invalid)?;
        let ino = self.cache.next_id()?;
        let entry = uuid::Uuid::new_v4().to_string();
        let size = target.as_ref().map_or(0, |t| t.len() as u64);
        let node = Node {
            ino,
            parent,
            name: name.to_string(),
            folder: Some(folder.clone()),
            entry: Some(entry.clone()),
            kind,
            mode: mode & 0o7777,
            size,
            mtime_ns: now_ns(),
            version: 0,
            manifest: Vec::new(),
            target,
            pending: 1,
            linked: true,
            holders: Vec::new(),
        };
        let mut txn = Txn::default();
        txn.put_node(&node);
        txn.link(parent, name, ino);
        txn.index_entry(&folder, &entry, ino);
        self.journal.put(&self.cache, txn, &node, None)?;
        Ok(node)
    }

    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Node, FsError> {
        self.new_child(parent, name, EntryKind::Dir, mode, None)
    }

    pub fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<Node, FsError> {
        self.new_child(
            parent,
            name,
            EntryKind::Symlink,
            0o777,
            Some(target.to_string()),
        )
    }

    /// Creates an empty file and opens it for writing.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<(Node, Opened), FsError> {
        let node = self.new_child(parent, name, EntryKind::File, mode, None)?;
        let staging = self.staging_empty(node.ino)?;
        staging.opens.fetch_add(1, Ordering::SeqCst);
        let opened = self.new_handle(node.ino, true, false);
        self.changed_by(opened.fh, &staging);
        Ok((node.clone(), opened))
    }

    /// Changes a node and journals the change in one batch.
    fn update(&self, ino: u64, change: impl FnOnce(&mut Node)) -> Result<Node, FsError> {
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
        let _g = self.lock_meta();
        if parent == ROOT {
            return Err(FsError::NotPermitted(
                "Mesh Folders are removed through the cloud",
            ));
        }
        let n = self.lookup(parent, name)?;
        match (dir, n.is_dir()) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            (true, true) if self.cache.has_children(n.ino)? => return Err(FsError::NotEmpty),
            _ => {}
        }
        let mut gone = n;
        gone.linked = false;
        gone.pending += 1;
        let mut txn = Txn::default();
        txn.unlink(parent, name);
        txn.put_node(&gone);
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
        check_name(new_name)?;
        let _g = self.lock_meta();
        if parent == ROOT || new_parent == ROOT {
            return Err(FsError::NotPermitted(
                "Mesh Folders are renamed through the cloud",
            ));
        }
        let src = self.lookup(parent, name)?;
        let dst_dir = self.dir(new_parent)?;
        if dst_dir.folder != src.folder {
            return Err(FsError::CrossFolder);
        }
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
            txn.put_node(&old);
        }
        let mut n = src;
        txn.unlink(n.parent, &n.name);
        n.parent = new_parent;
        n.name = new_name.to_string();
        n.pending += 1;
        txn.link(new_parent, new_name, n.ino);
        txn.put_node(&n);
        self.journal.put(&self.cache, txn, &n, target)?;
        Ok(())
    }

    /// `chmod` and `utimens`; size changes go through [`Fs::truncate`].
    pub fn set_meta(
        &self,
        ino: u64,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Node, FsError> {
        let _g = self.lock_meta();
        let n = self.node(ino)?;
        if n.entry.is_none() {
            return Err(FsError::NotPermitted("the roots of the mount are fixed"));
        }
        if mode.is_none() && mtime_ns.is_none() {
            return Ok(n);
        }
        self.update(ino, |n| {
            if let Some(m) = mode {
                n.mode = m & 0o7777;
            }
            if let Some(t) = mtime_ns {
                n.mtime_ns = t;
            }
        })
    }

    // ---- content ----

    fn new_handle(&self, ino: u64, writable: bool, keep_cache: bool) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Handle {
            ino,
            writable,
            changed_at: None,
            ahead: ReadAhead::default(),
        };
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        Opened { fh, keep_cache }
    }

    fn staging_of(&self, ino: u64) -> Option<Arc<Staging>> {
        let map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ino).cloned()
    }

    fn create_staging_file(&self, ino: u64) -> Result<std::fs::File, FsError> {
        let path = self.cache.staging_path(ino);
        Ok(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?)
    }

    /// A new, empty staging file for `ino` (creation or `O_TRUNC`).
    fn staging_empty(&self, ino: u64) -> Result<Arc<Staging>, FsError> {
        let s = Staging::new(self.create_staging_file(ino)?, 0, true);
        let mut map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(ino, Arc::clone(&s));
        Ok(s)
    }

    /// The staging file of `ino`, made from its committed content if there is none yet.
    async fn staging_full(&self, ino: u64) -> Result<Arc<Staging>, FsError> {
        let _one = self.materializing.lock().await;
        if let Some(s) = self.staging_of(ino) {
            return Ok(s);
        }
        let n = self.node(ino)?;
        let folder = n.folder.clone().ok_or(FsError::Invalid)?;
        let file = self.create_staging_file(ino)?;
        let mut at = 0u64;
        for b in &n.manifest {
            self.fetcher.ensure(want(&n, &folder, b.hash)).await?;
            let data = self
                .cache
                .load_block(&b.hash)?
                .ok_or(FsError::Fetch(crate::agent::fetch::FetchError::Local))?;
            file.write_all_at(&data, at)?;
            at += data.len() as u64;
        }
        file.set_len(n.size)?;
        let s = Staging::new(file, n.size, false);
        s.mtime_ns.store(n.mtime_ns, Ordering::SeqCst);
        let mut map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(ino, Arc::clone(&s));
        Ok(s)
    }

    fn file(&self, ino: u64) -> Result<Node, FsError> {
        let n = self.node(ino)?;
        match n.kind {
            EntryKind::File => Ok(n),
            EntryKind::Dir => Err(FsError::IsDir),
            EntryKind::Symlink => Err(FsError::Invalid),
        }
    }

    /// `open(2)` for reading: local state only (blocks are fetched by `read`).
    pub fn open_read(&self, ino: u64) -> Result<Opened, FsError> {
        self.file(ino)?;
        let keep = self.staging_of(ino).is_none();
        Ok(self.new_handle(ino, false, keep))
    }

    /// `open(2)` of a file. Opening for writing brings the whole content to the device
    /// first (or none of it, with `O_TRUNC`).
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> Result<Opened, FsError> {
        if !write {
            return self.open_read(ino);
        }
        self.file(ino)?;
        let s = match (self.staging_of(ino), truncate) {
            (Some(s), _) => s,
            (None, true) => self.staging_empty(ino)?,
            (None, false) => self.staging_full(ino).await?,
        };
        if truncate {
            s.resize(0)?;
        }
        s.opens.fetch_add(1, Ordering::SeqCst);
        let opened = self.new_handle(ino, true, false);
        if truncate {
            self.changed_by(opened.fh, &s);
        }
        Ok(opened)
    }

    /// Reads from the staging file if the file is being written, else from blocks,
    /// fetching the ones not on the device.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let ino = self.handle_ino(fh)?;
        if let Some(s) = self.staging_of(ino) {
            let mut buf = vec![0u8; size as usize];
            let n = s.file.read_at(&mut buf, offset)?;
            buf.truncate(n);
            return Ok(buf.into());
        }
        let n = self.cache.shared_node(ino)?.ok_or(FsError::NotFound)?;
        let folder = n.folder.as_deref().ok_or(FsError::Invalid)?;
        let end = n.size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        self.read_ahead(fh, &n, folder, offset, end);
        if first == last {
            // Within one block: a block still in memory is answered without a copy.
            let b = n.manifest.get(first as usize).ok_or(FsError::Invalid)?;
            if !self.cache.has_block(&b.hash) {
                self.fetcher.ensure(want(&n, folder, b.hash)).await?;
            }
            let start = first * BLOCK_SIZE;
            if let Some(part) = self.cache.hot_slice(&b.hash, offset - start, end - start) {
                return Ok(part);
            }
        }
        let mut out = vec![0u8; (end - offset) as usize];
        for idx in first..=last {
            let b = n.manifest.get(idx as usize).ok_or(FsError::Invalid)?;
            self.fetcher.ensure(want(&n, folder, b.hash)).await?;
            let block_start = idx * BLOCK_SIZE;
            let from = offset.max(block_start);
            let to = end.min(block_start + u64::from(b.len));
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            let got = self.cache.read_block(&b.hash, from - block_start, dst)?;
            if got != dst.len() {
                return Err(FsError::Fetch(crate::agent::fetch::FetchError::Local));
            }
        }
        Ok(out.into())
    }

    /// Starts fetching in the background the blocks the handle's read-ahead asks for after
    /// a read of `offset..end` (see [`ReadAhead`]).
    fn read_ahead(&self, fh: u64, n: &Node, folder: &str, offset: u64, end: u64) {
        let ahead = {
            let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = handles.get_mut(&fh) else {
                return;
            };
            h.ahead.after_read(offset, end)
        };
        for idx in ahead {
            let Some(b) = n.manifest.get(idx as usize) else {
                break;
            };
            if self.cache.has_block(&b.hash) {
                continue;
            }
            let fetcher = Arc::clone(&self.fetcher);
            let want = want(n, folder, b.hash);
            tokio::spawn(async move {
                let _ = fetcher.ensure(want).await;
            });
        }
    }

    fn handle_ino(&self, fh: u64) -> Result<u64, FsError> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.get(&fh).map(|h| h.ino).ok_or(FsError::BadHandle)
    }

    /// Writes into the staging file. Local disk only.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let (ino, writable) = {
            let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            let h = handles.get(&fh).ok_or(FsError::BadHandle)?;
            (h.ino, h.writable)
        };
        if !writable {
            return Err(FsError::BadHandle);
        }
        let s = self.staging_of(ino).ok_or(FsError::BadHandle)?;
        let _w = s.gate.read().unwrap_or_else(|p| p.into_inner());
        s.file.write_all_at(data, offset)?;
        s.dirty.store(true, Ordering::SeqCst);
        s.size
            .fetch_max(offset + data.len() as u64, Ordering::SeqCst);
        s.mtime_ns.store(now_ns(), Ordering::SeqCst);
        self.changed_by(fh, &s);
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// Notes that handle `fh` changed the staging file `s`. Called with `s.gate` held
    /// shared, so no commit runs between the change and the note.
    fn changed_by(&self, fh: u64, s: &Staging) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handles.get_mut(&fh) {
            h.changed_at = Some(s.commits.load(Ordering::SeqCst));
        }
    }

    /// `truncate(2)`/`ftruncate(2)`: changes the size and commits.
    pub async fn truncate(&self, ino: u64, size: u64) -> Result<Node, FsError> {
        let n = self.node(ino)?;
        match n.kind {
            EntryKind::File => {}
            EntryKind::Dir => return Err(FsError::IsDir),
            EntryKind::Symlink => return Err(FsError::Invalid),
        }
        let s = match self.staging_of(ino) {
            Some(s) => s,
            None if size == 0 => self.staging_empty(ino)?,
            None => self.staging_full(ino).await?,
        };
        s.resize(size)?;
        self.commit(ino).await?;
        self.drop_staging_if_idle(ino);
        self.getattr(ino)
    }

    /// Commits the staging file of `ino` as a new version, durably, if it has uncommitted
    /// writes. Called on `flush`, `fsync` and `release`.
    pub async fn commit(&self, ino: u64) -> Result<(), FsError> {
        let Some(s) = self.staging_of(ino) else {
            return Ok(());
        };
        if !s.dirty.load(Ordering::SeqCst) {
            return Ok(());
        }
        let cache = Arc::clone(&self.cache);
        let (manifest, size, mtime_ns) = tokio::task::spawn_blocking(move || {
            let _x = s.gate.write().unwrap_or_else(|p| p.into_inner());
            s.dirty.store(false, Ordering::SeqCst);
            let (manifest, size) = chunk(&cache, &s.file)?;
            s.commits.fetch_add(1, Ordering::SeqCst);
            Ok::<_, FsError>((manifest, size, s.mtime_ns.load(Ordering::SeqCst)))
        })
        .await
        .map_err(|e| FsError::Io(std::io::Error::other(e)))??;
        {
            let _g = self.lock_meta();
            self.update(ino, |n| {
                n.size = size;
                n.manifest = manifest;
                n.mtime_ns = mtime_ns;
            })?;
        }
        self.cache.flush().await?;
        tracing::debug!(ino, size, "committed a version");
        Counters::add(&self.counters.commits, 1);
        Ok(())
    }

    /// `fsync`: commit, and make sure the journal is durable.
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let ino = self.handle_ino(fh)?;
        self.commit(ino).await?;
        self.cache.flush().await?;
        Ok(())
    }

    /// `fsyncdir`: directory changes are in the journal; make it durable.
    pub async fn sync_metadata(&self) -> Result<(), FsError> {
        self.cache.flush().await?;
        Ok(())
    }

    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let ino = self.handle_ino(fh)?;
        self.commit(ino).await
    }

    /// Whether a `flush` of this handle has writes to commit.
    pub fn has_uncommitted(&self, fh: u64) -> bool {
        self.handle_ino(fh)
            .ok()
            .and_then(|ino| self.staging_of(ino))
            .is_some_and(|s| s.dirty.load(Ordering::SeqCst))
    }

    /// The last close of a handle (`release`, which the kernel sends after `close` has
    /// returned). Returns what [`Fs::finish_write`] must do for a handle that could write,
    /// or `None` when it only read.
    pub fn close(&self, fh: u64) -> Result<Option<Closing>, FsError> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .ok_or(FsError::BadHandle)?;
        if !h.writable {
            self.drop_if_unlinked(h.ino)?;
            return Ok(None);
        }
        // Commit only this handle's own changes that no commit took yet (writes through
        // a mapping after `close`, say). Another descriptor may be writing the same file
        // right now: committing its half-done write would publish a state nobody closed.
        let commit = self
            .staging_of(h.ino)
            .is_some_and(|s| h.changed_at == Some(s.commits.load(Ordering::SeqCst)));
        Ok(Some(Closing { ino: h.ino, commit }))
    }

    /// The kernel now knows `ino` once more (an entry was replied for it).
    pub fn remember(&self, ino: u64) {
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
    fn drop_if_unlinked(&self, ino: u64) -> Result<(), FsError> {
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

    /// After the release of a writing handle: commit what it left, and let go of the
    /// staging file once no handle uses it and all of it is committed.
    pub async fn finish_write(&self, closing: Closing) -> Result<(), FsError> {
        let ino = closing.ino;
        let result = if closing.commit {
            self.commit(ino).await
        } else {
            Ok(())
        };
        if let Some(s) = self.staging_of(ino) {
            s.opens.fetch_sub(1, Ordering::SeqCst);
        }
        self.drop_staging_if_idle(ino);
        self.drop_if_unlinked(ino)?;
        result
    }

    fn drop_staging_if_idle(&self, ino: u64) {
        let mut map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.get(&ino).is_some_and(|s| {
            s.opens.load(Ordering::SeqCst) == 0 && !s.dirty.load(Ordering::SeqCst)
        });
        if idle {
            map.remove(&ino);
            let _ = std::fs::remove_file(self.cache.staging_path(ino));
        }
    }
}

/// Cuts a file into blocks, stores each, and returns the manifest and the size.
fn chunk(cache: &Cache, file: &std::fs::File) -> Result<(Vec<BlockRef>, u64), FsError> {
    let mut manifest = Vec::new();
    let mut total = 0u64;
    let mut at = 0u64;
    loop {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read_at(&mut buf[filled..], at + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        at += filled as u64;
        let hash = BlockHash::of(&buf);
        cache.store_block(&hash, buf.into(), true)?;
        manifest.push(BlockRef {
            hash,
            len: filled as u32,
        });
        total += filled as u64;
        if filled < BLOCK_SIZE as usize {
            break;
        }
    }
    Ok((manifest, total))
}
