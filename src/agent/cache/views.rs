//! Views: contiguous copies of files wholly on the device, the backing files a passthrough
//! open is served from by the kernel (the block store keeps one file per block).
//!
//! A view is made at a file's first passthrough open by copying its block files in order
//! (`copy_file_range`, which clones on file systems that can) and is kept for later opens
//! while the file's content is the same, least recently used out first, within a quarter
//! of the cache's limit. Views count in the limit: blocks may take what views leave
//! (`Cache::blocks_limit`). A file too large for that is read through the agent. Views
//! are never trusted across a restart: the directory is emptied at start.

use super::{Cache, CacheError, Node};
use crate::proto::{BlockHash, EntryKind};
use lru::LruCache;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The share of the cache's limit views may take: limit / `VIEW_SHARE`.
const VIEW_SHARE: u64 = 4;

/// Numbers view files apart.
static VIEW_SEQ: AtomicU64 = AtomicU64::new(1);

/// One file's content in one piece.
#[derive(Debug)]
pub struct View {
    /// Names this view among all (a new view of the same file is another).
    pub id: u64,
    /// Open for reading and writing: a writer of the file while passthrough readers have it
    /// open writes here (it becomes the staging file, see [`View::take_for_writing`]), and
    /// a newer version from elsewhere is written over it ([`View::rewrite`]).
    pub file: std::fs::File,
    path: PathBuf,
    /// What it holds; its lock orders writers joining against rewrites.
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    /// The content it copies.
    manifest: Vec<BlockHash>,
    len: u64,
    /// A writer has it: its content is the writer's, not a committed version.
    written: bool,
}

impl Held {
    fn is_of(&self, n: &Node) -> bool {
        !self.written
            && self.len == n.size
            && self
                .manifest
                .iter()
                .copied()
                .eq(n.manifest.iter().map(|b| b.hash))
    }
}

impl View {
    /// Whether it holds `n`'s committed content.
    pub fn is_of(&self, n: &Node) -> bool {
        self.held().is_of(n)
    }

    /// Hands it to a writer if it holds `n`'s content: from then on it holds what the
    /// writer writes, and is never rewritten.
    pub fn take_for_writing(&self, n: &Node) -> bool {
        let mut held = self.held();
        if !held.is_of(n) {
            return false;
        }
        held.written = true;
        true
    }

    /// Writes version `n` over it, its blocks' bytes in order as `block(i)` gives them,
    /// unless a writer has it (`false`). Readers see the new content as it lands, as they
    /// would a local file rewritten in place.
    pub fn rewrite(
        &self,
        n: &Node,
        mut block: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let mut held = self.held();
        if held.written {
            return Ok(false);
        }
        // Neither version until done: no writer may take it meanwhile.
        held.manifest.clear();
        held.len = u64::MAX;
        let mut at = 0u64;
        for i in 0..n.manifest.len() {
            let data = block(i)?;
            self.file.write_all_at(&data, at)?;
            at += data.len() as u64;
        }
        self.file.set_len(n.size)?;
        held.manifest = n.manifest.iter().map(|b| b.hash).collect();
        held.len = n.size;
        Ok(true)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The views kept, by inode, least recently used first out.
pub(super) struct Views {
    dir: PathBuf,
    kept: Mutex<Kept>,
}

struct Kept {
    /// Each view and the bytes it took when made.
    by_ino: LruCache<u64, (Arc<View>, u64)>,
    bytes: u64,
}

impl Views {
    /// The views under `dir`, emptied.
    pub(super) fn open(dir: PathBuf) -> Result<Self, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        for e in std::fs::read_dir(&dir).map_err(io)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(Self {
            dir,
            kept: Mutex::new(Kept {
                by_ino: LruCache::unbounded(),
                bytes: 0,
            }),
        })
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Kept {
    /// Lets go of `ino`'s view (its file stays readable by whoever has it open).
    fn forget(&mut self, ino: u64) {
        if let Some((v, len)) = self.by_ino.pop(&ino) {
            self.bytes -= len;
            let _ = std::fs::remove_file(&v.path);
        }
    }
}

impl Cache {
    /// The most bytes views may take: a share of the limit (no bound without one).
    fn views_budget(&self) -> u64 {
        match self.limit() {
            0 => u64::MAX,
            l => l / VIEW_SHARE,
        }
    }

    /// Bytes the views take now.
    pub fn views_bytes(&self) -> u64 {
        self.views.kept().bytes
    }

    /// Removes the view of `ino`, whose node leaves the device (its file stays readable by
    /// whoever has it open, until the last close).
    pub(super) fn drop_view(&self, ino: u64) {
        self.views.kept().forget(ino);
    }

    /// Stops keeping view `id` of `ino`, which a writer or a rewrite now changes (its file
    /// stays open for whoever holds it).
    pub fn retire_view(&self, ino: u64, id: u64) {
        let mut kept = self.views.kept();
        if kept.by_ino.peek(&ino).is_some_and(|(v, _)| v.id == id) {
            kept.forget(ino);
        }
    }

    /// `n`'s view, if one is kept and holds its committed content.
    fn current_view(&self, n: &Node) -> Option<Arc<View>> {
        let mut kept = self.views.kept();
        kept.by_ino
            .get(&n.ino)
            .filter(|(v, _)| v.is_of(n))
            .map(|(v, _)| Arc::clone(v))
    }

    /// A view of file `n`: the one kept, else one made now from its blocks. `None` when a
    /// block is not on the device or the file is larger than views may take.
    pub fn view(&self, n: &Node) -> Result<Option<Arc<View>>, CacheError> {
        if n.kind != EntryKind::File || n.size > self.views_budget() {
            return Ok(None);
        }
        if let Some(v) = self.current_view(n) {
            return Ok(Some(v));
        }
        let Some(view) = self.copy_into_view(n)? else {
            return Ok(None);
        };
        let view = Arc::new(view);
        let budget = self.views_budget();
        let mut kept = self.views.kept();
        kept.forget(n.ino);
        kept.bytes += n.size;
        kept.by_ino.put(n.ino, (Arc::clone(&view), n.size));
        while kept.bytes > budget {
            match kept.by_ino.peek_lru() {
                Some((&ino, _)) if ino != n.ino => kept.forget(ino),
                _ => break,
            }
        }
        drop(kept);
        self.check_limit(self.blocks_bytes());
        Ok(Some(view))
    }

    /// Copies `n`'s blocks into a new view file; `None` if one is missing (evicted).
    fn copy_into_view(&self, n: &Node) -> Result<Option<View>, CacheError> {
        let id = VIEW_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.views.dir.join(format!("{}-{id}", n.ino));
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        let copied = copy_blocks(self, n, &mut file);
        match copied {
            Ok(len) if len == n.size => Ok(Some(View {
                id,
                file,
                path,
                held: Mutex::new(Held {
                    manifest: n.manifest.iter().map(|b| b.hash).collect(),
                    len,
                    written: false,
                }),
            })),
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(None),
                    _ => Err(io(e)),
                }
            }
        }
    }
}

/// Appends `n`'s block files to `to`; the bytes copied.
fn copy_blocks(cache: &Cache, n: &Node, to: &mut std::fs::File) -> std::io::Result<u64> {
    if cache.sealed().is_some() {
        // A view is a plain copy: a protected home makes none (its mount has no passthrough).
        return Err(std::io::ErrorKind::Unsupported.into());
    }
    let mut len = 0;
    for b in &n.manifest {
        if !cache.has_block(&b.hash) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        let mut from = std::fs::File::open(cache.block_path(&b.hash))?;
        len += std::io::copy(&mut from, to)?;
    }
    Ok(len)
}
