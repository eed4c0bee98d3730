//! File content: opening, reading (fetching the blocks a read touches, and read-ahead),
//! writing into a staging file, and committing it as a new version.
//!
//! Writes go to a staging file per inode. A commit cuts it into blocks, stores them,
//! records the new manifest and a journal record in one sled batch, flushes sled, and only
//! then returns: from that moment the version survives a crash of the agent.

use super::attr::{Attr, MAX_FILE_SIZE};
use super::ops::{Fs, Handle};
use super::readahead::ReadAhead;
use crate::agent::cache::{Node, StagingFile, View, Writing};
use crate::agent::fetch::{FetchError, Want};
use crate::agent::fs::FsError;
use crate::agent::status::Counters;
use crate::proto::{BLOCK_SIZE, BlockHash, BlockRef, EntryKind, now_ns};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Times a read fetches one block before it gives up: a block can be evicted between its
/// fetch and its read only when the cache is much smaller than what is being read at once.
const FETCH_TRIES: usize = 3;
/// Files fetched ahead, at most, when a directory's files are opened in turn; and the
/// largest that counts as small.
const NEXT_FILES: usize = crate::agent::fetch::BATCH;
const SMALL_FILE: u64 = 128 << 10;

/// What to ask the fetcher for block `hash` of file `n` in `folder`.
fn want(n: &Node, folder: &str, hash: BlockHash) -> Want {
    Want {
        folder: folder.to_string(),
        entry: n.entry.clone().unwrap_or_default(),
        hash,
        holders: n.holders.clone(),
    }
}

/// A file being written: its local copy and whether it holds uncommitted writes.
pub(super) struct Staging {
    file: StagingFile,
    /// Writes hold it shared; a commit holds it exclusively while it reads the file, so a
    /// committed version never mixes bytes from before and after a concurrent write.
    gate: RwLock<()>,
    dirty: AtomicBool,
    /// The view this file is, when a writer joined passthrough readers of it: the kernel
    /// then writes into it without the agent, so its size and modification time are the
    /// file's own, and it counts as changed while such writers have it open.
    view: Option<u64>,
    kernel_writers: AtomicU64,
    /// Commits so far; a handle remembers the count at its last write, so its release
    /// knows whether a commit has taken that write since.
    commits: AtomicU64,
    opens: AtomicU64,
    /// The live size and times while writes go on; the node gets them at commit, so a
    /// write costs no metadata update.
    size: AtomicU64,
    mtime_ns: AtomicI64,
    ctime_ns: AtomicI64,
}

impl Staging {
    /// Whether it holds writes not yet committed.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst) || self.kernel_writers.load(Ordering::SeqCst) > 0
    }

    fn new(file: StagingFile, n: &Node, size: u64, dirty: bool) -> Arc<Self> {
        Self::over(file, n, size, dirty, None)
    }

    /// A staging file that is view `v` of `n`'s content, for writers that join its
    /// passthrough readers. The file takes `n`'s modification time, so a commit with no
    /// write since finds nothing new.
    fn of_view(v: &View, n: &Node) -> Result<Arc<Self>, FsError> {
        let file = v.file.try_clone()?;
        file.set_modified(time_of(n.mtime_ns))?;
        Ok(Self::over(
            StagingFile::Plain(file),
            n,
            n.size,
            false,
            Some(v.id),
        ))
    }

    fn over(file: StagingFile, n: &Node, size: u64, dirty: bool, view: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            file,
            gate: RwLock::new(()),
            dirty: AtomicBool::new(dirty),
            view,
            kernel_writers: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            size: AtomicU64::new(size),
            mtime_ns: AtomicI64::new(n.mtime_ns),
            ctime_ns: AtomicI64::new(n.ctime_ns.unwrap_or(n.mtime_ns)),
        })
    }

    /// Notes a change of the content now (called with `gate` held shared).
    fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        let now = now_ns();
        self.mtime_ns.store(now, Ordering::SeqCst);
        self.ctime_ns.store(now, Ordering::SeqCst);
    }

    /// Sets the length (`O_TRUNC`, `ftruncate`), as a write would.
    fn resize(&self, size: u64) -> Result<(), FsError> {
        let _w = self.gate.read().unwrap_or_else(|p| p.into_inner());
        self.file.set_len(size)?;
        self.size.store(size, Ordering::SeqCst);
        self.changed();
        Ok(())
    }

    /// A modification time set explicitly (`futimens`, `utimensat`): the next commit keeps
    /// it, unless a write comes after it.
    pub(super) fn set_mtime(&self, t: i64) {
        self.mtime_ns.store(t, Ordering::SeqCst);
        self.ctime_ns.store(now_ns(), Ordering::SeqCst);
        if let (Some(_), Some(f)) = (self.view, self.file.plain()) {
            let _ = f.set_modified(time_of(t));
        }
    }

    /// Puts the live size and times over the committed node's.
    pub(super) fn overlay(&self, n: &mut Node) {
        n.size = self.size.load(Ordering::SeqCst);
        n.mtime_ns = self.mtime_ns.load(Ordering::SeqCst);
        n.ctime_ns = Some(self.ctime_ns.load(Ordering::SeqCst));
        if let Some((size, mtime_ns)) = self.own_size_and_mtime() {
            n.size = size;
            n.mtime_ns = mtime_ns;
        }
    }

    /// The file's own size and modification time, for a view the kernel writes into.
    fn own_size_and_mtime(&self) -> Option<(u64, i64)> {
        self.view?;
        let meta = self.file.plain()?.metadata().ok()?;
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some((meta.len(), i64::try_from(mtime.as_nanos()).ok()?))
    }
}

fn time_of(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

/// Files smaller than this are read through the agent: a read or two, kept in the page cache,
/// cost less than copying them into a view.
pub const PASSTHROUGH_MIN: u64 = BLOCK_SIZE;

/// A writing handle's release, for [`Fs::finish_write`].
pub struct Closing {
    ino: u64,
    /// It changed the file after the last commit.
    commit: bool,
    /// It wrote by passthrough (see [`Fs::open_over_view`]).
    kernel_writer: bool,
}

/// What `open` tells the kernel.
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep cached pages from earlier opens (the feed invalidates them when
    /// the content changes elsewhere).
    pub keep_cache: bool,
}

/// How `fallocate` changes a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocate {
    /// Mode 0: reserve the range, and extend the file to its end.
    Extend,
    /// `FALLOC_FL_KEEP_SIZE`: reserve the range only.
    KeepSize,
}

impl Fs {
    fn new_handle(&self, ino: u64, writable: bool, keep_cache: bool) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Handle {
            ino,
            writable,
            changed_at: None,
            kernel_writes: false,
            ahead: ReadAhead::within(self.cache.limit()),
        };
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        Opened { fh, keep_cache }
    }

    pub(super) fn staging_of(&self, ino: u64) -> Option<Arc<Staging>> {
        let map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ino).cloned()
    }

    fn create_staging_file(&self, ino: u64) -> Result<StagingFile, FsError> {
        Ok(self.cache.create_staging(ino)?)
    }

    /// A new, empty staging file for `ino` (creation or `O_TRUNC`).
    fn staging_empty(&self, ino: u64) -> Result<Arc<Staging>, FsError> {
        let n = self.node(ino)?;
        let s = Staging::new(self.create_staging_file(ino)?, &n, 0, true);
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
            let data = self.whole_block(&n, &folder, b.hash).await?;
            file.write_all_at(&data, at)?;
            at += data.len() as u64;
        }
        file.set_len(n.size)?;
        let s = Staging::new(file, &n, n.size, false);
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

    /// Creates an empty file and opens it for writing; the kernel now holds a reference to
    /// it.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<(Attr, Opened), FsError> {
        let node = self.new_child(parent, name, EntryKind::File, mode, None)?;
        let staging = self.staging_empty(node.ino)?;
        staging.opens.fetch_add(1, Ordering::SeqCst);
        let opened = self.new_handle(node.ino, true, false);
        self.changed_by(opened.fh, &staging);
        self.remember(node.ino);
        Ok((self.getattr(node.ino)?, opened))
    }

    /// `open(2)` for reading: local state only (blocks are fetched by `read`, and those of
    /// the next small files when a directory's files are opened in turn).
    pub fn open_read(&self, ino: u64) -> Result<Opened, FsError> {
        let n = self.file(ino)?;
        self.fetch_next_small_files(&n)?;
        let keep = self.staging_of(ino).is_none();
        Ok(self.new_handle(ino, false, keep))
    }

    /// A view of file `ino` for a passthrough open: `None` while it is being written, while
    /// some of it is not on the device, or when it is smaller than [`PASSTHROUGH_MIN`]. It
    /// may copy the whole file (run it off the kernel's thread).
    pub fn open_view(&self, ino: u64) -> Result<Option<Arc<View>>, FsError> {
        let n = self.file(ino)?;
        if !self.passes_through(&n) {
            return Ok(None);
        }
        Ok(self.cache.view(&n)?)
    }

    /// Whether an open of `ino` for reading may be served by passthrough (whether it is
    /// wholly here, making its view tells).
    pub fn may_pass_through(&self, ino: u64) -> bool {
        self.node(ino).is_ok_and(|n| self.passes_through(&n))
    }

    /// A file of at least [`PASSTHROUGH_MIN`] bytes, not being written.
    fn passes_through(&self, n: &Node) -> bool {
        n.kind == EntryKind::File && n.size >= PASSTHROUGH_MIN && self.staging_of(n.ino).is_none()
    }

    /// Writes `ino`'s current version over view `v`, which passthrough opens read, after a
    /// change from elsewhere, so that they read it as they would a file rewritten in place
    /// (see `View::rewrite`). Its blocks are fetched first; nothing happens while a writer
    /// has the view.
    pub async fn refresh_view(self: Arc<Self>, ino: u64, v: Arc<View>) -> Result<(), FsError> {
        let n = self.file(ino)?;
        if v.is_of(&n) || self.staging_of(ino).is_some() {
            return Ok(());
        }
        let folder = n.folder.clone().ok_or(FsError::Invalid)?;
        for b in &n.manifest {
            self.fetcher.ensure(want(&n, &folder, b.hash)).await?;
        }
        self.cache.retire_view(ino, v.id);
        let rt = tokio::runtime::Handle::current();
        let rewritten = tokio::task::spawn_blocking(move || {
            v.rewrite(&n, |i| {
                // Stored a moment ago; fetched again should eviction have taken it since.
                rt.block_on(self.whole_block(&n, &folder, n.manifest[i].hash))
                    .map_err(std::io::Error::other)
            })
        })
        .await
        .map_err(|e| FsError::Io(std::io::Error::other(e)))??;
        tracing::debug!(
            ino,
            rewritten,
            "a passthrough view took a version from elsewhere"
        );
        Ok(())
    }

    /// Whether view `v` still holds `ino`'s content, with no writer at work on it.
    pub fn view_is_current(&self, ino: u64, v: &View) -> bool {
        self.staging_of(ino).is_none() && self.node(ino).is_ok_and(|n| v.is_of(&n))
    }

    /// When `n` is opened right after the file before it in its directory (`cat dir/*`, a
    /// build reading its sources), and the next file's content is not here, fetches the
    /// content of the next small files in one batch. A file opened on its own fetches
    /// nothing ahead.
    fn fetch_next_small_files(&self, n: &Node) -> Result<(), FsError> {
        let previous = self
            .last_opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((n.parent, n.name.clone()));
        let in_turn = match previous {
            Some((dir, name)) if dir == n.parent && name < n.name => {
                self.cache
                    .children_after(dir, &name, 1)?
                    .first()
                    .map(|(c, _)| c)
                    == Some(&n.name)
            }
            _ => false,
        };
        let Some(folder) = n.folder.clone().filter(|_| in_turn) else {
            return Ok(());
        };
        // A batch starts when the next file is not here, and another whenever the file half
        // a batch or a batch ahead is neither here nor on its way: up to two batches run
        // ahead of the program, so that it seldom waits for one.
        let next = self
            .cache
            .children_after(n.parent, &n.name, NEXT_FILES * 2)?;
        let wanted = |i: usize| -> Result<bool, FsError> {
            let Some((_, ino)) = next.get(i) else {
                return Ok(false);
            };
            Ok(self.cache.shared_node(*ino)?.is_some_and(|f| {
                f.kind == EntryKind::File
                    && f.size <= SMALL_FILE
                    && f.manifest
                        .first()
                        .is_some_and(|b| !self.fetcher.has_or_awaits(&b.hash))
            }))
        };
        if !(wanted(0)? || wanted(NEXT_FILES / 2)? || wanted(NEXT_FILES)?) {
            return Ok(());
        }
        let mut wants = Vec::new();
        for (_, ino) in &next {
            let Some(f) = self.cache.shared_node(*ino)? else {
                continue;
            };
            if f.kind != EntryKind::File || f.size > SMALL_FILE {
                continue;
            }
            wants.extend(
                f.manifest
                    .iter()
                    .filter(|b| !self.cache.has_block(&b.hash))
                    .map(|b| want(&f, &folder, b.hash)),
            );
        }
        if let Some(batch) = self.fetcher.start_many(wants) {
            tokio::spawn(batch);
        }
        Ok(())
    }

    /// `open(2)` of a file. Opening for writing brings the whole content to the device
    /// first (or none of it, with `O_TRUNC`).
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> Result<Opened, FsError> {
        if !write {
            return self.open_read(ino);
        }
        self.may_change(&self.file(ino)?)?;
        let s = loop {
            let s = match (self.staging_of(ino), truncate) {
                (Some(s), _) => s,
                (None, true) => self.staging_empty(ino)?,
                (None, false) => self.staging_full(ino).await?,
            };
            s.opens.fetch_add(1, Ordering::SeqCst);
            // The last release of another descriptor may have let go of this staging file
            // between the look-up and the count (`drop_staging_if_idle`): then make it anew.
            if self
                .staging_of(ino)
                .is_some_and(|now| Arc::ptr_eq(&now, &s))
            {
                break s;
            }
            s.opens.fetch_sub(1, Ordering::SeqCst);
        };
        if truncate {
            s.resize(0)?;
        }
        let opened = self.new_handle(ino, true, false);
        if truncate {
            self.changed_by(opened.fh, &s);
        }
        Ok(opened)
    }

    /// `open(2)` for writing of a file whose opens the kernel serves by passthrough from
    /// view `v` (see `fs/iomode.rs`): the view becomes the staging file, which the kernel
    /// writes into directly, so its readers read what is written. `Busy` if the file's
    /// content changed since the view was made (elsewhere, through the feed), as writing
    /// over the old content would undo that change.
    pub fn open_over_view(&self, ino: u64, truncate: bool, v: &View) -> Result<Opened, FsError> {
        let n = self.file(ino)?;
        self.may_change(&n)?;
        let s = {
            let mut map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&ino) {
                Some(s) if s.view == Some(v.id) => Arc::clone(s),
                Some(_) => return Err(FsError::Busy),
                None if v.take_for_writing(&n) => {
                    let s = Staging::of_view(v, &n)?;
                    self.cache.retire_view(ino, v.id);
                    map.insert(ino, Arc::clone(&s));
                    s
                }
                None => return Err(FsError::Busy),
            }
        };
        s.opens.fetch_add(1, Ordering::SeqCst);
        s.kernel_writers.fetch_add(1, Ordering::SeqCst);
        if truncate {
            s.resize(0)?;
        }
        let opened = self.new_handle(ino, true, false);
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handles.get_mut(&opened.fh) {
            h.kernel_writes = true;
        }
        Ok(opened)
    }

    /// Reads from the staging file if the file is being written, else from blocks,
    /// fetching the ones not on the device.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let ino = self.handle_ino(fh)?;
        Counters::add(&self.counters.reads_served, 1);
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
            let block_start = idx * BLOCK_SIZE;
            let from = offset.max(block_start);
            let to = end.min(block_start + u64::from(b.len));
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            self.read_block_into(&n, folder, b.hash, from - block_start, dst)
                .await?;
        }
        Ok(out.into())
    }

    /// Fills `dst` from `offset` in a block, fetching it if it is not on the device. A
    /// block evicted between its fetch and its read (the cache is smaller than what is
    /// being read) is fetched again.
    async fn read_block_into(
        &self,
        n: &Node,
        folder: &str,
        hash: BlockHash,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FsError> {
        for _ in 0..FETCH_TRIES {
            self.fetcher.ensure(want(n, folder, hash)).await?;
            match self.cache.read_block(&hash, offset, dst)? {
                Some(got) if got == dst.len() => return Ok(()),
                Some(_) => return Err(FsError::Fetch(FetchError::Local)),
                None => continue,
            }
        }
        Err(FsError::Fetch(FetchError::Local))
    }

    /// A whole block, fetched if it is not on the device (again if it was evicted before
    /// it could be read).
    async fn whole_block(
        &self,
        n: &Node,
        folder: &str,
        hash: BlockHash,
    ) -> Result<Vec<u8>, FsError> {
        for _ in 0..FETCH_TRIES {
            self.fetcher.ensure(want(n, folder, hash)).await?;
            if let Some(data) = self.cache.load_block(&hash)? {
                return Ok(data);
            }
        }
        Err(FsError::Fetch(FetchError::Local))
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
                if self.cache.sealed().is_some() {
                    let (cache, hash) = (Arc::clone(&self.cache), b.hash);
                    tokio::task::spawn_blocking(move || cache.warm(&hash));
                }
                continue;
            }
            if let Some(fetch) = self.fetcher.pending(want(n, folder, b.hash)) {
                tokio::spawn(async move {
                    let _ = fetch.await;
                });
            }
        }
    }

    fn handle_ino(&self, fh: u64) -> Result<u64, FsError> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.get(&fh).map(|h| h.ino).ok_or(FsError::BadHandle)
    }

    /// The staging file behind a handle open for writing.
    fn writing(&self, fh: u64) -> Result<Arc<Staging>, FsError> {
        let (ino, writable) = {
            let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            let h = handles.get(&fh).ok_or(FsError::BadHandle)?;
            (h.ino, h.writable)
        };
        if !writable {
            return Err(FsError::BadHandle);
        }
        self.staging_of(ino).ok_or(FsError::BadHandle)
    }

    /// Writes into the staging file. Local disk only.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let end = offset.saturating_add(data.len() as u64);
        if end > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let s = self.writing(fh)?;
        if data.is_empty() {
            // As pwrite(2) of nothing: no change, even past the end.
            return Ok(0);
        }
        let _w = s.gate.read().unwrap_or_else(|p| p.into_inner());
        s.file.write_all_at(data, offset)?;
        s.size.fetch_max(end, Ordering::SeqCst);
        s.changed();
        self.changed_by(fh, &s);
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// `fallocate(2)`: reserves space for `offset..offset + len` in the staging file, and
    /// for [`Allocate::Extend`] makes the file at least that long. Local disk only.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, how: Allocate) -> Result<(), FsError> {
        let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let s = self.writing(fh)?;
        let _w = s.gate.read().unwrap_or_else(|p| p.into_inner());
        s.file.allocate(offset, len, how == Allocate::KeepSize)?;
        if how == Allocate::Extend && s.size.fetch_max(end, Ordering::SeqCst) < end {
            s.changed();
            self.changed_by(fh, &s);
        }
        Ok(())
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
    pub async fn truncate(&self, ino: u64, size: u64) -> Result<Attr, FsError> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        self.may_change(&self.file(ino)?)?;
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
        if !s.is_dirty() {
            return Ok(());
        }
        // A writer by passthrough may have written nothing (the agent cannot tell).
        let by_kernel = s.view.is_some();
        let cache = Arc::clone(&self.cache);
        let folder = self.node(ino)?.folder.unwrap_or_default();
        let (manifest, size, mtime_ns, ctime_ns, writing) =
            tokio::task::spawn_blocking(move || {
                let _x = s.gate.write().unwrap_or_else(|p| p.into_inner());
                s.dirty.store(false, Ordering::SeqCst);
                let mut writing = Writing::new(cache, &folder);
                let (manifest, size) = chunk(&mut writing, &s.file)?;
                s.commits.fetch_add(1, Ordering::SeqCst);
                let mtime_ns = match s.own_size_and_mtime() {
                    Some((_, t)) => t,
                    None => s.mtime_ns.load(Ordering::SeqCst),
                };
                Ok::<_, FsError>((
                    manifest,
                    size,
                    mtime_ns,
                    s.ctime_ns.load(Ordering::SeqCst),
                    writing,
                ))
            })
            .await
            .map_err(|e| FsError::Io(std::io::Error::other(e)))??;
        {
            let _g = self.lock_meta();
            let n = self.node(ino)?;
            let same = by_kernel
                && n.size == size
                && n.mtime_ns == mtime_ns
                && n.manifest
                    .iter()
                    .map(|b| b.hash)
                    .eq(manifest.iter().map(|b| b.hash));
            if same {
                return Ok(());
            }
            self.update(ino, |n| {
                n.size = size;
                n.manifest = manifest;
                n.mtime_ns = mtime_ns;
                n.ctime_ns = Some(ctime_ns);
            })?;
        }
        // The node names the new blocks now, with its change pending: they stay.
        drop(writing);
        self.journal.committed(ino);
        self.cache.flush().await?;
        tracing::debug!(ino, size, "committed a version");
        crate::agent::status::Counters::add(&self.counters.commits, 1);
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
            .is_some_and(|s| s.is_dirty())
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
        let commit = h.kernel_writes
            || self
                .staging_of(h.ino)
                .is_some_and(|s| h.changed_at == Some(s.commits.load(Ordering::SeqCst)));
        Ok(Some(Closing {
            ino: h.ino,
            commit,
            kernel_writer: h.kernel_writes,
        }))
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
            if closing.kernel_writer {
                s.kernel_writers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.drop_staging_if_idle(ino);
        self.drop_if_unlinked(ino)?;
        result
    }

    fn drop_staging_if_idle(&self, ino: u64) {
        let mut map = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map
            .get(&ino)
            .is_some_and(|s| s.opens.load(Ordering::SeqCst) == 0 && !s.is_dirty());
        if idle {
            map.remove(&ino);
            let _ = std::fs::remove_file(self.cache.staging_path(ino));
        }
    }
}

/// Cuts a file into blocks, stores each, and returns the manifest and the size.
fn chunk(writing: &mut Writing, file: &StagingFile) -> Result<(Vec<BlockRef>, u64), FsError> {
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
        writing.store(&hash, buf.into())?;
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
