//! The FUSE adapter: decodes each kernel request, runs it against [`Fs`], and replies.
//! Operations that only touch local state (metadata in sled, writes into a staging file)
//! answer inline; those that may wait on the network or on hashing (open, create, read,
//! flush, fsync, release, truncate) move their reply into a tokio task, so the session
//! thread never blocks on the network (fuser's `TokioAdapter` habit).

use crate::agent::cache::Node;
use crate::agent::fs::ops::Opened;
use crate::agent::fs::{Fs, FsError};
use crate::agent::invalidate::Invalidator;
use crate::proto::{BLOCK_SIZE, EntryKind};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may trust names and attributes. Long, because the feed invalidates
/// what changes elsewhere and local changes pass through here.
const TTL: Duration = Duration::from_secs(300);

/// The owner shown for every file: the user who mounted.
#[derive(Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    owner: Owner,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle, owner: Owner) -> Self {
        Self { fs, rt, owner }
    }

    fn attr(&self, n: &Node) -> FileAttr {
        attr_of(n, self.owner)
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

fn errno(e: &FsError) -> Errno {
    match e {
        FsError::Fetch(_) | FsError::Cache(_) | FsError::Io(_) | FsError::Offline => {
            tracing::warn!(error = %e, "filesystem operation failed");
        }
        _ => tracing::debug!(error = %e, "filesystem operation refused"),
    }
    Errno::from_i32(e.errno())
}

fn attr_of(n: &Node, owner: Owner) -> FileAttr {
    let mtime = UNIX_EPOCH + Duration::from_nanos(u64::try_from(n.mtime_ns).unwrap_or(0));
    let (kind, nlink) = match n.kind {
        EntryKind::Dir => (FileType::Directory, 2),
        EntryKind::File => (FileType::RegularFile, 1),
        EntryKind::Symlink => (FileType::Symlink, 1),
    };
    FileAttr {
        ino: INodeNo(n.ino),
        size: n.size,
        blocks: n.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind,
        perm: (n.mode & 0o7777) as u16,
        nlink,
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

fn time_ns(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
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

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks a FUSE capability");
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
        match r {
            Ok(n) => {
                self.fs.remember(n.ino);
                reply.entry(&TTL, &self.attr(&n), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Err(e) = self.fs.forget(ino.0, nlookup) {
            tracing::warn!(error = %e, "forgetting an inode");
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(n) => reply.attr(&TTL, &self.attr(&n)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Ownership is the mounting user's; changing it is refused rather than ignored.
        if uid.is_some_and(|u| u != self.owner.uid) || gid.is_some_and(|g| g != self.owner.gid) {
            return reply.error(Errno::EPERM);
        }
        let _ = req;
        let meta = self.fs.set_meta(ino.0, mode, mtime.map(time_ns));
        let Some(size) = size else {
            return match meta {
                Ok(n) => reply.attr(&TTL, &self.attr(&n)),
                Err(e) => reply.error(errno(&e)),
            };
        };
        if let Err(e) = meta {
            return reply.error(errno(&e));
        }
        let (fs, owner) = (Arc::clone(&self.fs), self.owner);
        self.rt.spawn(async move {
            match fs.truncate(ino.0, size).await {
                Ok(n) => reply.attr(&TTL, &attr_of(&n, owner)),
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
        mode: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files, made through create(); device nodes, FIFOs and sockets have
        // no meaning on other devices.
        let _ = mode;
        reply.error(Errno::from_i32(libc::EPERM));
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
        match r {
            Ok(n) => {
                self.fs.remember(n.ino);
                reply.entry(&TTL, &self.attr(&n), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_of(name).and_then(|n| self.fs.unlink(parent.0, n).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_of(name).and_then(|n| self.fs.rmdir(parent.0, n).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        match r {
            Ok(n) => {
                self.fs.remember(n.ino);
                reply.entry(&TTL, &self.attr(&n), Generation(0));
            }
            Err(e) => reply.error(e),
        }
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
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        // A mesh entry has one parent; hard links cannot be shown on other devices.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        if !write {
            return match self.fs.open_read(ino.0) {
                Ok(o) => reply.opened(FileHandle(o.fh), open_flags(&o, false)),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let fs = Arc::clone(&self.fs);
        self.rt.spawn(async move {
            match fs.open(ino.0, write, truncate).await {
                Ok(o) => reply.opened(FileHandle(o.fh), open_flags(&o, true)),
                Err(e) => reply.error(errno(&e)),
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
        let (fs, owner) = (Arc::clone(&self.fs), self.owner);
        self.rt.spawn(async move {
            match fs.create(parent.0, &name, mode & !umask).await {
                Ok((n, o)) => {
                    fs.remember(n.ino);
                    reply.created(
                        &TTL,
                        &attr_of(&n, owner),
                        Generation(0),
                        FileHandle(o.fh),
                        open_flags(&o, true),
                    );
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
        let children = match self.fs.listing(fh.0, ino.0, offset) {
            Ok(c) => c,
            Err(e) => return reply.error(errno(&e)),
        };
        let parent = self.fs.getattr(ino.0).map_or(ino.0, |n| n.parent);
        let dots = [
            (ino.0, FileType::Directory, "."),
            (parent, FileType::Directory, ".."),
        ];
        let all = dots.into_iter().chain(
            children
                .iter()
                .map(|n| (n.ino, attr_of(n, self.owner).kind, n.name.as_str())),
        );
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (this, children) = match self
            .fs
            .getattr(ino.0)
            .and_then(|n| Ok((n, self.fs.listing(fh.0, ino.0, offset)?)))
        {
            Ok(c) => c,
            Err(e) => return reply.error(errno(&e)),
        };
        let parent = self
            .fs
            .getattr(this.parent)
            .unwrap_or_else(|_| this.clone());
        let dots = [(".", &this), ("..", &parent)];
        let all = dots
            .into_iter()
            .chain(children.iter().map(|n| (n.name.as_str(), n)));
        for (i, (name, n)) in all.enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(n.ino),
                i as u64 + 1,
                name,
                &TTL,
                &self.attr(n),
                Generation(0),
            ) {
                break;
            }
            // Each entry but the dots counts as a lookup in the kernel.
            if i >= 2 {
                self.fs.remember(n.ino);
            }
        }
        reply.ok();
    }

    // Extended attributes do not travel between devices. ENOSYS tells the kernel once and
    // for all, so `ls -l` stops asking for security labels and ACLs on every file, and
    // callers get EOPNOTSUPP.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
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
        // The mesh has no fixed size; report a large, honest-looking free space so that
        // programs which check before writing go ahead (the cloud enforces the quota).
        let blocks = 1u64 << 32;
        reply.statfs(blocks, blocks, blocks, 1 << 30, 1 << 30, 4096, 255, 4096);
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
