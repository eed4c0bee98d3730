//! The FUSE adapter: decodes each kernel request, runs it against [`Fs`], and replies.
//! Operations that only touch local state (metadata in sled, writes into a staging file)
//! answer inline; those that may wait on the network or on hashing (open for writing,
//! create, read, flush and release with writes to commit, fsync, size changes) move their
//! reply into a tokio task, so the session thread never blocks on the network (fuser's
//! `TokioAdapter` habit). Nothing here decides anything a test of `Fs` would not see, but
//! which opens the kernel serves by passthrough from a view: that follows the kernel's rule
//! as `fs/iomode.rs` keeps it.

use crate::agent::cache::View;
use crate::agent::fs::iomode::{IoModes, Serve};
use crate::agent::fs::pins::foreign_xattr;
use crate::agent::fs::{Allocate, Attr, DirEntry, Fs, FsError, Opened, SetAttr, TimeSet};
use crate::agent::invalidate::Invalidator;
use crate::agent::status::Counters;
use crate::proto::{BLOCK_SIZE, EntryKind};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may trust names and attributes. Long, because the feed invalidates
/// what changes elsewhere and local changes pass through here.
const TTL: Duration = Duration::from_secs(300);

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    /// Whether reads of files wholly on the device may be served by passthrough: asked for,
    /// and until the kernel refuses it.
    passthrough: Arc<AtomicBool>,
    modes: Arc<Mutex<IoModes<Passing>>>,
}

impl FuseAdapter {
    /// An adapter for `fs`; `passthrough` asks for passthrough reads where the kernel
    /// allows them.
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle, passthrough: bool) -> Self {
        Self {
            fs,
            rt,
            passthrough: Arc::new(AtomicBool::new(passthrough)),
            modes: Arc::default(),
        }
    }

    fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Runs `op` on the runtime and answers the kernel from there.
    fn reply_later<F>(&self, reply: ReplyEmpty, op: F)
    where
        F: std::future::Future<Output = Result<(), FsError>> + Send + 'static,
    {
        self.rt.spawn(async move {
            match op.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

impl FuseAdapter {
    /// `open` for reading when passthrough is on: a file wholly on the device, not being
    /// written, with no other open, is served by the kernel from a view (made off the
    /// runtime's workers, as it may copy the whole file); other opens join the inode's mode.
    fn open_for_passthrough(&self, ino: u64, reply: ReplyOpen) {
        let (fs, modes) = (Arc::clone(&self.fs), Arc::clone(&self.modes));
        let on = Arc::clone(&self.passthrough);
        self.rt.spawn(async move {
            let o = match fs.open_read(ino) {
                Ok(o) => o,
                Err(e) => return reply.error(errno(&e)),
            };
            let view = if lock(&modes).is_free(ino) {
                let fs = Arc::clone(&fs);
                match tokio::task::spawn_blocking(move || fs.open_view(ino)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => {
                        tracing::debug!(ino, error = %e, "no view; the agent serves the reads");
                        None
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            let serve = lock(&modes).open_reader(ino, o.fh, || {
                // Writers count themselves under this lock before they change anything, so
                // a view still current here stays so until this open is counted.
                let v = view.filter(|v| fs.view_is_current(ino, v))?;
                match reply.open_backing(&v.file) {
                    Ok(id) => Some(Passing { id, view: v }),
                    Err(e) => {
                        tracing::warn!(error = %e, "the kernel refused a passthrough file; the agent serves every read from now on");
                        on.store(false, Ordering::Relaxed);
                        None
                    }
                }
            });
            reply_reader(&fs, reply, &o, serve);
        });
    }
}

/// Answers an open for reading as `serve` says.
fn reply_reader(fs: &Fs, reply: ReplyOpen, o: &Opened, serve: Serve<Passing>) {
    match serve {
        Serve::Cached => reply.opened(FileHandle(o.fh), open_flags(o, false)),
        Serve::Passthrough(p) => {
            Counters::add(&fs.counters.passthrough_opens, 1);
            reply.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &p.id);
        }
    }
}

impl FuseAdapter {
    /// What the kernel invalidator needs to keep passthrough views current (the adapter
    /// itself goes to the FUSE session).
    pub fn views(&self) -> PassingViews {
        PassingViews {
            fs: Arc::clone(&self.fs),
            modes: Arc::clone(&self.modes),
            rt: self.rt.clone(),
        }
    }
}

/// The views that passthrough opens read now, by inode.
pub struct PassingViews {
    fs: Arc<Fs>,
    modes: Arc<Mutex<IoModes<Passing>>>,
    rt: tokio::runtime::Handle,
}

impl PassingViews {
    /// `kernel`, which also rewrites the view of a file in passthrough when its content
    /// changes, so that open descriptors read the new version as the page cache's readers
    /// do.
    pub fn refreshing(self, kernel: KernelInvalidator) -> ViewRefresher {
        ViewRefresher {
            views: self,
            kernel,
        }
    }
}

/// The kernel's invalidator, with views kept current (see [`PassingViews::refreshing`]).
pub struct ViewRefresher {
    views: PassingViews,
    kernel: KernelInvalidator,
}

impl Invalidator for ViewRefresher {
    fn entry(&self, parent: u64, name: &str) {
        self.kernel.entry(parent, name);
    }

    fn inode(&self, ino: u64) {
        let passing = lock(&self.views.modes).passthrough_of(ino);
        if let Some(p) = passing {
            let fs = Arc::clone(&self.views.fs);
            let view = Arc::clone(&p.view);
            self.views.rt.spawn(async move {
                if let Err(e) = fs.refresh_view(ino, view).await {
                    tracing::warn!(ino, error = %e, "could not bring a passthrough view up to date; its readers see the version they opened");
                }
            });
        }
        self.kernel.inode(ino);
    }
}

/// A backing file registered with the kernel, and the view it is.
struct Passing {
    id: BackingId,
    view: Arc<View>,
}

/// Answers an extended attribute request: its size when asked with no room, else the
/// value if it fits.
fn reply_xattr(reply: fuser::ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

fn errno(e: &FsError) -> Errno {
    match e {
        FsError::Fetch(_) | FsError::Cache(_) | FsError::Io(_) | FsError::Offline => {
            tracing::warn!(error = %e, "filesystem operation failed");
        }
        _ => tracing::debug!(error = %e, "filesystem operation refused"),
    }
    Errno::from_i32(e.errno())
}

fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.mtime_ns),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        }),
    }
}

/// Flags for a file handle. A read-only handle has nothing to commit, so the kernel need not
/// send a FLUSH when it is closed (`FOPEN_NOFLUSH`): one round trip less per `cat`.
fn open_flags(o: &Opened, write: bool) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if o.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if !write {
        flags |= FopenFlags::FOPEN_NOFLUSH;
    }
    flags
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn entry(reply: ReplyEntry, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // `open` sees O_TRUNC, so opening a file to overwrite it fetches nothing.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks a FUSE capability");
            }
        }
        if self.passthrough() {
            let granted = config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .and_then(|()| {
                    config
                        .set_max_stack_depth(1)
                        .map_err(|_| InitFlags::empty())
                });
            if granted.is_err() {
                tracing::info!(
                    "the kernel offers no FUSE passthrough: the agent serves every read"
                );
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        // A block at a time (the kernel lowers read-ahead to its default unless
        // `readahead::raise` could raise it).
        let _ = config.set_max_readahead(BLOCK_SIZE as u32);
        let _ = config.set_max_write(BLOCK_SIZE as u32);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = name_of(name).and_then(|n| self.fs.lookup(parent.0, n).map_err(|e| errno(&e)));
        entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Err(e) = self.fs.forget(ino.0, nlookup) {
            tracing::warn!(error = %e, "forgetting an inode");
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        if size.is_none() {
            return match self.fs.set_meta(ino.0, &change) {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let fs = Arc::clone(&self.fs);
        self.rt.spawn(async move {
            match fs.setattr(ino.0, change).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _mode: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files, made through create(); device nodes, FIFOs and sockets have
        // no meaning on other devices.
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = name_of(name).and_then(|n| {
            self.fs
                .mkdir(parent.0, n, mode & !umask)
                .map_err(|e| errno(&e))
        });
        entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = name_of(name).and_then(|n| self.fs.unlink(parent.0, n).map_err(|e| errno(&e)));
        empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = name_of(name).and_then(|n| self.fs.rmdir(parent.0, n).map_err(|e| errno(&e)));
        empty(reply, r);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = name_of(name).and_then(|n| {
            let t = target.to_str().ok_or(Errno::EINVAL)?;
            self.fs.symlink(parent.0, n, t).map_err(|e| errno(&e))
        });
        entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = name_of(name).and_then(|a| {
            let b = name_of(newname)?;
            self.fs
                .rename(parent.0, a, newparent.0, b, noreplace)
                .map_err(|e| errno(&e))
        });
        empty(reply, r);
    }

    fn link(&self, _req: &Request, ino: INodeNo, np: INodeNo, nn: &OsStr, reply: ReplyEntry) {
        let r = name_of(nn).and_then(|n| self.fs.link(ino.0, np.0, n).map_err(|e| errno(&e)));
        entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        if !write
            && self.passthrough()
            && self.fs.may_pass_through(ino.0)
            && lock(&self.modes).is_free(ino.0)
        {
            return self.open_for_passthrough(ino.0, reply);
        }
        if !write {
            // Inline (local state only), in the runtime's context: it may start fetching the
            // next small files in the background. Every open counts in `modes`, so that none
            // through the page cache is missed when another would enter passthrough.
            let _rt = self.rt.enter();
            let o = match self.fs.open_read(ino.0) {
                Ok(o) => o,
                Err(e) => return reply.error(errno(&e)),
            };
            let serve = lock(&self.modes).open_reader(ino.0, o.fh, || None);
            return reply_reader(&self.fs, reply, &o, serve);
        }
        let (fs, modes) = (Arc::clone(&self.fs), Arc::clone(&self.modes));
        // Counted before anything changes, so no reader enters passthrough meanwhile.
        let serve = lock(&modes).open_writer(ino.0);
        self.rt.spawn(async move {
            let opened = match &serve {
                Serve::Passthrough(p) => fs.open_over_view(ino.0, truncate, &p.view),
                Serve::Cached => fs.open(ino.0, write, truncate).await,
            };
            let o = match opened {
                Ok(o) => o,
                Err(e) => {
                    lock(&modes).cancel(ino.0);
                    return reply.error(errno(&e));
                }
            };
            lock(&modes).bind(ino.0, o.fh);
            match serve {
                Serve::Passthrough(p) => {
                    reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &p.id)
                }
                Serve::Cached => reply.opened(FileHandle(o.fh), open_flags(&o, true)),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let (fs, modes) = (Arc::clone(&self.fs), Arc::clone(&self.modes));
        self.rt.spawn(async move {
            match fs.create(parent.0, &name, mode & !umask).await {
                Ok((a, o)) => {
                    // A new inode: nobody else has it, so it enters the page cache's mode.
                    let mut m = lock(&modes);
                    m.open_writer(a.ino);
                    m.bind(a.ino, o.fh);
                    drop(m);
                    reply.created(
                        &TTL,
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(o.fh),
                        open_flags(&o, true),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = Arc::clone(&self.fs);
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Local disk only: answered here, without a task.
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let how = match mode {
            0 => Allocate::Extend,
            libc::FALLOC_FL_KEEP_SIZE => Allocate::KeepSize,
            // Punching holes, zeroing and collapsing ranges are not offered.
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        // Local disk only.
        let r = self.fs.fallocate(fh.0, offset, length, how);
        empty(reply, r.map_err(|e| errno(&e)));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        if !self.fs.has_uncommitted(fh.0) {
            return reply.ok();
        }
        let fs = Arc::clone(&self.fs);
        self.reply_later(reply, async move { fs.flush(fh.0).await });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.modes).release(fh.0);
        let closing = match self.fs.close(fh.0) {
            Ok(Some(closing)) => closing,
            Ok(None) => return reply.ok(),
            Err(e) => return reply.error(errno(&e)),
        };
        let fs = Arc::clone(&self.fs);
        self.reply_later(reply, async move { fs.finish_write(closing).await });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = Arc::clone(&self.fs);
        self.reply_later(reply, async move { fs.fsync(fh.0).await });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are journaled in sled; making the journal durable is the sync.
        let fs = Arc::clone(&self.fs);
        self.reply_later(reply, async move { fs.sync_metadata().await });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(fh.0, ino.0, offset, |e: DirEntry<'_>| {
            reply.add(INodeNo(e.ino), e.next, file_type(e.kind), e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.fs.readdirplus(fh.0, ino.0, offset, |e, a| {
            reply.add(
                INodeNo(e.ino),
                e.next,
                e.name,
                &TTL,
                &file_attr(a),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Extended attributes do not travel between devices; the mount answers only its own
    // (`user.meshfs.*`: a file's state, see `fs/pins.rs`), from local state, on the
    // blocking pool (a directory's walks its tree).
    fn getxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        let Some(name) = name.to_str() else {
            reply.error(Errno::EOPNOTSUPP);
            return;
        };
        // Answered here: programs ask this of every file (`ls -l`: a SELinux label, ACLs).
        if let Some(e) = foreign_xattr(name) {
            reply.error(errno(&e));
            return;
        }
        let (fs, name) = (Arc::clone(&self.fs), name.to_string());
        self.rt
            .spawn_blocking(move || match fs.xattr(ino.0, &name) {
                Ok(Some(v)) => reply_xattr(reply, size, &v),
                Ok(None) => reply.error(Errno::ENODATA),
                Err(e) => reply.error(errno(&e)),
            });
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        reply_xattr(reply, size, &self.fs.xattr_names());
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = name.to_str() else {
            reply.error(Errno::EOPNOTSUPP);
            return;
        };
        let (fs, name, value) = (Arc::clone(&self.fs), name.to_string(), value.to_vec());
        self.rt
            .spawn_blocking(move || match fs.set_xattr(ino.0, &name, &value) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str() else {
            reply.error(Errno::ENODATA);
            return;
        };
        let (fs, name) = (Arc::clone(&self.fs), name.to_string());
        self.rt
            .spawn_blocking(move || match fs.remove_xattr(ino.0, &name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel may cache listings: local changes go through it, and the feed
        // invalidates a directory whose children change elsewhere.
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }
}

/// One thing for the kernel to forget.
enum Inval {
    Entry(u64, String),
    Inode(u64),
}

/// Sends the feed's invalidations to the kernel through the session's notifier, from a
/// thread of its own. Invalidating an inode waits for the kernel to lock its cached pages,
/// and a page stays locked while a read of it waits for this filesystem's reply: were the
/// notifier called from a tokio worker, that worker could be the one the reply needs.
pub struct KernelInvalidator {
    tx: std::sync::mpsc::Sender<Inval>,
}

impl KernelInvalidator {
    pub fn new(notifier: Notifier) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Inval>();
        std::thread::Builder::new()
            .name("meshfs-inval".into())
            .spawn(move || {
                // Errors (ENOENT: nothing cached) need no action. The thread ends with the
                // last sender.
                for msg in rx {
                    match msg {
                        Inval::Entry(parent, name) => {
                            let _ = notifier.inval_entry(INodeNo(parent), OsStr::new(&name));
                            // The parent's cached listing (FOPEN_CACHE_DIR) goes too.
                            let _ = notifier.inval_inode(INodeNo(parent), 0, -1);
                        }
                        Inval::Inode(ino) => {
                            let _ = notifier.inval_inode(INodeNo(ino), 0, -1);
                        }
                    }
                }
            })?;
        Ok(Self { tx })
    }
}

impl Invalidator for KernelInvalidator {
    fn entry(&self, parent: u64, name: &str) {
        let _ = self.tx.send(Inval::Entry(parent, name.to_string()));
    }
    fn inode(&self, ino: u64) {
        let _ = self.tx.send(Inval::Inode(ino));
    }
}
