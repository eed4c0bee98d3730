//! What `stat` and `statfs` show, as plain values the FUSE adapter copies into its replies:
//! a node's attributes (times, link count, owner), the changes `setattr` asks for, and the
//! filesystem's size.

use crate::agent::cache::Node;
use crate::proto::{BLOCK_SIZE, EntryKind};

/// Largest file size the mesh takes (as ext4 with 4 KiB blocks): a `truncate` or `write`
/// past it fails with `EFBIG`.
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// Longest name a directory entry may have, in bytes.
pub const NAME_MAX: usize = 255;

/// The owner shown for every file: the user who mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A node's attributes, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    /// 512-byte units, as `st_blocks`.
    pub blocks: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Permission bits (and setuid, setgid, sticky).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

impl Attr {
    /// The attributes of `n`, which has `subdirs` directories below it when it is one
    /// (a directory's link count is two plus its subdirectories; an unlinked node has 0).
    pub fn of(n: &Node, subdirs: u64, owner: Owner) -> Self {
        let nlink = match (n.linked, n.kind) {
            (false, _) => 0,
            (true, EntryKind::Dir) => u32::try_from(subdirs.saturating_add(2)).unwrap_or(u32::MAX),
            (true, _) => 1,
        };
        Attr {
            ino: n.ino,
            kind: n.kind,
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime_ns: n.atime_ns.unwrap_or(n.mtime_ns),
            mtime_ns: n.mtime_ns,
            ctime_ns: n.ctime_ns.unwrap_or(n.mtime_ns),
            perm: (n.mode & 0o7777) as u16,
            nlink,
            uid: owner.uid,
            gid: owner.gid,
            blksize: BLOCK_SIZE as u32,
        }
    }
}

/// A time `utimensat` sets: now, or a given one. A time it leaves alone (`UTIME_OMIT`) is
/// no `TimeSet` at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(i64),
}

impl TimeSet {
    pub fn ns(self) -> i64 {
        match self {
            TimeSet::Now => crate::proto::now_ns(),
            TimeSet::At(ns) => ns,
        }
    }
}

/// What a `setattr` asks to change; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// What `statfs` reports: the user's cloud quota as the size, what the cloud holds of it as
/// used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The unit `statfs` counts in.
const STATFS_BLOCK: u64 = 4096;

impl StatFs {
    /// A filesystem of `quota` bytes with `used` of them taken; with no quota known yet
    /// (the cloud not reached since the start), a large, honest-looking one.
    pub fn of(quota: u64, used: u64) -> Self {
        let (blocks, free) = if quota == 0 {
            (1 << 32, 1 << 32)
        } else {
            (
                quota / STATFS_BLOCK,
                quota.saturating_sub(used) / STATFS_BLOCK,
            )
        };
        StatFs {
            blocks,
            bfree: free,
            bavail: free,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: STATFS_BLOCK as u32,
            namelen: NAME_MAX as u32,
            frsize: STATFS_BLOCK as u32,
        }
    }
}
