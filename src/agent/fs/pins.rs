//! Pins and file states. A pinned file stays whole on the device whatever the cache limit
//! (the evictor keeps its blocks; [`Fs::fetch_pinned`] brings what it lacks, also for new
//! versions from elsewhere); pinning a directory pins everything under it, and what is made
//! under it later. Each node has a state, which the mount shows as extended attributes
//! without fetching content:
//!
//! ```text
//! user.meshfs.state    remote-only | partial | local | pinned | dirty (a directory: folder | pinned)
//! user.meshfs.local    bytes of the file (or everything under the directory) on the device
//! user.meshfs.missing  bytes not on the device, likewise
//! user.meshfs.pinned   1 or 0; setting it pins or unpins (removing it unpins)
//! user.meshfs.entry    FOLDER/ENTRY: the cloud's ids of it (for `meshfs history`)
//! ```

use super::FsError;
use super::ops::Fs;
use crate::agent::cache::{Node, Txn};
use crate::agent::fetch::Want;
use crate::proto::EntryKind;
use futures::StreamExt;

/// Where a file's content is, as a person sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// None of it is on the device.
    RemoteOnly,
    /// Some blocks are on the device.
    Partial,
    /// All of it is on the device (and may be evicted).
    Local,
    /// Pinned, and all of it is on the device.
    Pinned,
    /// Changes not yet in the cloud (or with a peer).
    Dirty,
    /// A directory.
    Folder,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::RemoteOnly => "remote-only",
            FileState::Partial => "partial",
            FileState::Local => "local",
            FileState::Pinned => "pinned",
            FileState::Dirty => "dirty",
            FileState::Folder => "folder",
        }
    }
}

/// How much of a file or tree is on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnDevice {
    pub local: u64,
    pub missing: u64,
}

/// The extended attributes the mount answers; every other `user.` name has no value, and
/// other namespaces are not supported (see [`foreign_xattr`]).
pub const XATTR_STATE: &str = "user.meshfs.state";
pub const XATTR_LOCAL: &str = "user.meshfs.local";
pub const XATTR_MISSING: &str = "user.meshfs.missing";
pub const XATTR_PINNED: &str = "user.meshfs.pinned";
pub const XATTR_ENTRY: &str = "user.meshfs.entry";
const XATTRS: [&str; 5] = [
    XATTR_STATE,
    XATTR_LOCAL,
    XATTR_MISSING,
    XATTR_PINNED,
    XATTR_ENTRY,
];

/// Why `name` is none of the mount's own attributes, or `None` if it is one of them (or
/// could be: a `user.meshfs.` name). A `user.` name has no value (`ENODATA`); other
/// namespaces (`security.`, `system.`, `trusted.`) are not supported (`EOPNOTSUPP`), which
/// programs such as `ls -l` remember for the whole mount, rather than asking of every file
/// for a SELinux label or an ACL.
pub fn foreign_xattr(name: &str) -> Option<FsError> {
    if name.starts_with("user.meshfs.") {
        None
    } else if name.starts_with("user.") {
        Some(FsError::NoXattr)
    } else {
        Some(FsError::Unsupported)
    }
}

/// Blocks of pinned files fetched at once.
const PIN_FETCHES: usize = 8;

/// What one round of [`Fs::fetch_pinned`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinRound {
    pub fetched: u64,
    /// Blocks no source could give now (offline, say); the next round tries again.
    pub failed: u64,
}

impl Fs {
    /// The state of node `ino`.
    pub fn state(&self, ino: u64) -> Result<FileState, FsError> {
        let n = self.node(ino)?;
        if n.is_dir() {
            return Ok(if n.pinned {
                FileState::Pinned
            } else {
                FileState::Folder
            });
        }
        let dirty = self.staging_of(ino).is_some_and(|s| s.is_dirty());
        if n.pending > 0 || dirty {
            return Ok(FileState::Dirty);
        }
        let d = self.on_device_of(&n);
        Ok(match (d.local, d.missing) {
            (_, 0) if n.pinned => FileState::Pinned,
            (_, 0) => FileState::Local,
            (0, _) => FileState::RemoteOnly,
            _ => FileState::Partial,
        })
    }

    fn on_device_of(&self, n: &Node) -> OnDevice {
        let mut d = OnDevice::default();
        if n.kind == EntryKind::File {
            for b in &n.manifest {
                if self.cache.has_block(&b.hash) {
                    d.local += u64::from(b.len);
                } else {
                    d.missing += u64::from(b.len);
                }
            }
        }
        d
    }

    /// How much of `ino` (everything under it, for a directory) is on the device.
    pub fn on_device(&self, ino: u64) -> Result<OnDevice, FsError> {
        let mut total = OnDevice::default();
        let mut todo = vec![ino];
        while let Some(i) = todo.pop() {
            let Some(n) = self.cache.shared_node(i)? else {
                continue;
            };
            if n.is_dir() {
                todo.extend(self.cache.children(i)?.into_iter().map(|(_, c)| c));
            } else {
                let d = self.on_device_of(&n);
                total.local += d.local;
                total.missing += d.missing;
            }
        }
        Ok(total)
    }

    /// Pins (or unpins) `ino` and everything under it; returns how many nodes changed.
    /// Local metadata only: nothing goes to the cloud.
    pub fn pin(&self, ino: u64, on: bool) -> Result<u64, FsError> {
        let _g = self.lock_meta();
        self.node(ino)?;
        let mut changed = 0;
        let mut todo = vec![ino];
        while !todo.is_empty() {
            let mut txn = Txn::default();
            // In batches, so a huge tree is not one giant transaction.
            for _ in 0..1024 {
                let Some(i) = todo.pop() else { break };
                let Some(mut n) = self.cache.node(i)? else {
                    continue;
                };
                if n.is_dir() {
                    todo.extend(self.cache.children(i)?.into_iter().map(|(_, c)| c));
                }
                if n.pinned != on {
                    n.pinned = on;
                    txn.put_node(&n);
                    changed += 1;
                }
            }
            self.cache.apply(txn)?;
        }
        Ok(changed)
    }

    /// Fetches the blocks pinned files lack, a few at a time.
    pub async fn fetch_pinned(&self) -> Result<PinRound, FsError> {
        let mut wants = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for n in self.cache.pinned_files()? {
            let Some(folder) = &n.folder else { continue };
            for b in &n.manifest {
                if !self.cache.has_block(&b.hash) && seen.insert(b.hash) {
                    wants.push(Want {
                        folder: folder.clone(),
                        entry: n.entry.clone().unwrap_or_default(),
                        hash: b.hash,
                        holders: n.holders.clone(),
                    });
                }
            }
        }
        let mut round = PinRound::default();
        let mut fetches = futures::stream::iter(wants)
            .map(|w| {
                let fetcher = std::sync::Arc::clone(&self.fetcher);
                async move { fetcher.ensure(w).await }
            })
            .buffer_unordered(PIN_FETCHES);
        while let Some(r) = fetches.next().await {
            match r {
                Ok(()) => round.fetched += 1,
                Err(e) => {
                    round.failed += 1;
                    tracing::debug!(error = %e, "fetching a pinned block");
                }
            }
        }
        Ok(round)
    }

    /// The value of extended attribute `name` of `ino`, if it has one.
    pub fn xattr(&self, ino: u64, name: &str) -> Result<Option<Vec<u8>>, FsError> {
        match foreign_xattr(name) {
            Some(FsError::NoXattr) => return Ok(None),
            Some(e) => return Err(e),
            None => {}
        }
        let text = match name {
            XATTR_STATE => self.state(ino)?.as_str().to_string(),
            XATTR_LOCAL => self.on_device(ino)?.local.to_string(),
            XATTR_MISSING => self.on_device(ino)?.missing.to_string(),
            XATTR_PINNED => u8::from(self.node(ino)?.pinned).to_string(),
            XATTR_ENTRY => {
                let n = self.node(ino)?;
                match (n.folder, n.entry) {
                    (Some(f), Some(e)) => format!("{f}/{e}"),
                    // A Mesh Folder's root: the folder alone.
                    (Some(f), None) => f,
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(text.into_bytes()))
    }

    /// The names [`Fs::xattr`] answers, as `listxattr` gives them (each ends in NUL).
    pub fn xattr_names(&self) -> Vec<u8> {
        XATTRS.iter().flat_map(|n| n.bytes().chain([0])).collect()
    }

    /// Sets extended attribute `name`: only `user.meshfs.pinned` may be set (to 1 or 0).
    pub fn set_xattr(&self, ino: u64, name: &str, value: &[u8]) -> Result<(), FsError> {
        match (name, value.trim_ascii()) {
            (XATTR_PINNED, b"1") => self.pin(ino, true).map(drop),
            (XATTR_PINNED, b"0") => self.pin(ino, false).map(drop),
            (XATTR_PINNED, _) => Err(FsError::Invalid),
            (n, _) if XATTRS.contains(&n) => Err(FsError::NotPermitted("a read-only attribute")),
            // No other attribute can be stored, in any namespace.
            _ => Err(FsError::Unsupported),
        }
    }

    /// Removes extended attribute `name`: removing `user.meshfs.pinned` unpins.
    pub fn remove_xattr(&self, ino: u64, name: &str) -> Result<(), FsError> {
        match name {
            XATTR_PINNED => self.pin(ino, false).map(drop),
            n if XATTRS.contains(&n) => Err(FsError::NotPermitted("a read-only attribute")),
            n => Err(foreign_xattr(n).unwrap_or(FsError::NoXattr)),
        }
    }
}
