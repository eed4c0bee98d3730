//! Keeping the block store under its limit: which blocks are on the device and how recently
//! each was used, which must stay, and the eviction of the rest, least recently used first.
//!
//! Invariant: a hash is in [`BlockStore::used`] exactly when its block file exists. Every
//! change to either (a block file renamed into place, a block file removed) happens under
//! the [`Cache::store`] lock together with the change to the other, so the count of bytes
//! on the device is what is on the disk, whatever runs at the same time.
//!
//! A block must stay while something needs it that the device could not get back: a
//! change not yet uploaded (a node with pending records, a snapshot in the journal), a
//! version only this device holds (the cloud was past the quota, or the folder is
//! device-only), a pinned file. [`Cache::kept_blocks`] finds those by a scan of the metadata
//! store; what becomes kept while a pass runs is noted in [`BlockStore::touched`] as its
//! transaction applies, and blocks that a commit is storing are held in
//! [`BlockStore::writing`] until the node that names them is applied. A pass never removes
//! a block in either.

use super::{Cache, CacheError, JournalOp, Node};
use crate::proto::BlockHash;
use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The blocks on the device, by recency of use, and what protects some from eviction.
pub(super) struct BlockStore {
    /// Every block file, least recently used last, with its size.
    pub(super) used: LruCache<BlockHash, u64>,
    /// The sum of the sizes in `used`.
    pub(super) bytes: u64,
    /// Blocks a commit stored that no applied node names yet, with how many commits.
    writing: HashMap<BlockHash, usize>,
    /// While a pass runs: blocks that transactions made kept since its scan began.
    touched: Option<HashSet<BlockHash>>,
}

impl BlockStore {
    /// The block files under `blocks`, oldest modification first (the best guess of use
    /// order after a restart). Leftover temporary files of an interrupted store are removed.
    pub(super) fn scan(blocks: &Path) -> std::io::Result<Self> {
        let mut found = Vec::new();
        for fan in std::fs::read_dir(blocks)? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(fan.path())? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let Ok(hash) = name.parse::<BlockHash>() else {
                    continue;
                };
                let meta = f.metadata()?;
                found.push((meta.modified().ok(), hash, meta.len()));
            }
        }
        found.sort_by_key(|(when, _, _)| *when);
        let mut store = Self {
            used: LruCache::unbounded(),
            bytes: 0,
            writing: HashMap::new(),
            touched: None,
        };
        for (_, hash, len) in found {
            store.add(hash, len);
        }
        Ok(store)
    }

    pub(super) fn add(&mut self, hash: BlockHash, len: u64) {
        if let Some(old) = self.used.put(hash, len) {
            self.bytes -= old;
        }
        self.bytes += len;
    }

    fn remove(&mut self, hash: &BlockHash) {
        if let Some(len) = self.used.pop(hash) {
            self.bytes -= len;
        }
    }
}

/// Holds the blocks a commit stores until the node naming them is applied (drop it then):
/// until that moment no scan of the metadata store would find them kept.
pub struct Writing {
    cache: Arc<Cache>,
    /// The folder the blocks are written in (see `cache/held.rs`).
    folder: String,
    hashes: Vec<BlockHash>,
}

impl Writing {
    pub fn new(cache: Arc<Cache>, folder: &str) -> Self {
        Self {
            cache,
            folder: folder.to_string(),
            hashes: Vec::new(),
        }
    }

    /// Stores a block written on this device (durably), held from eviction.
    pub fn store(&mut self, hash: &BlockHash, data: bytes::Bytes) -> Result<(), CacheError> {
        {
            let mut s = self.cache.store();
            *s.writing.entry(*hash).or_default() += 1;
        }
        self.hashes.push(*hash);
        self.cache.store_block(hash, data, true)?;
        self.cache.mark_held(hash, &self.folder)
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut s = self.cache.store();
        for h in &self.hashes {
            if let Some(n) = s.writing.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    s.writing.remove(h);
                }
            }
        }
    }
}

/// Whether the blocks of node `n` must stay on this device (`me`), in a folder that is
/// `device_only` or not.
pub fn keeps_blocks(n: &Node, me: &str, device_only: bool) -> bool {
    n.pending > 0
        || n.pinned
        || n.holders.iter().any(|h| h == me)
        // A device-only version with no holder named was written here.
        || (device_only && n.holders.is_empty() && n.version > 0)
}

/// What one pass of eviction did and found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub blocks: u64,
    pub bytes: u64,
    /// Bytes of blocks on the device after the pass.
    pub used: u64,
    /// Of those, the bytes that must stay.
    pub kept: u64,
}

/// A pass brings the store down to this share of the limit, so that it does not run again
/// after every block.
const LOW_WATER_PERCENT: u64 = 90;

impl Cache {
    pub(super) fn store(&self) -> std::sync::MutexGuard<'_, BlockStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of blocks on the device.
    pub fn blocks_bytes(&self) -> u64 {
        self.store().bytes
    }

    /// The limit on the block store's bytes (0: none).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
        self.check_limit(self.blocks_bytes());
    }

    /// What blocks may take: the limit less what views take (`cache/views.rs`), so that the
    /// two together stay within it (0: no limit).
    fn blocks_limit(&self) -> u64 {
        match self.limit() {
            0 => 0,
            l => l.saturating_sub(self.views_bytes()).max(1),
        }
    }

    /// Wakes the evictor when `bytes` of blocks pass what they may take.
    pub(super) fn check_limit(&self, bytes: u64) {
        let limit = self.blocks_limit();
        if limit > 0 && bytes > limit {
            self.over_limit.notify_one();
        }
    }

    /// Returns once the block store has passed its limit (at once if it did since the last
    /// call).
    pub async fn passed_limit(&self) {
        self.over_limit.notified().await
    }

    /// Notes blocks that a transaction just made kept, for a pass that is running.
    pub(super) fn note_kept(&self, hashes: &[BlockHash]) {
        if hashes.is_empty() {
            return;
        }
        if let Some(t) = self.store().touched.as_mut() {
            t.extend(hashes.iter().copied());
        }
    }

    /// The blocks that must stay on this device (`me`; see [`keeps_blocks`]), from the
    /// nodes and the journal.
    pub fn kept_blocks(&self, me: &str) -> Result<HashSet<BlockHash>, CacheError> {
        let device_only: HashSet<String> = self
            .folders()?
            .into_iter()
            .filter(|f| f.device_only)
            .map(|f| f.id)
            .collect();
        let mut kept = HashSet::new();
        for kv in self.scan(b"n/") {
            let n: Node = serde_json::from_slice(&kv?.1)?;
            let only = n.folder.as_ref().is_some_and(|f| device_only.contains(f));
            if keeps_blocks(&n, me, only) {
                kept.extend(n.manifest.iter().map(|b| b.hash));
            }
        }
        for kv in self.scan(b"j/") {
            if let JournalOp::Put { snap, .. } = serde_json::from_slice(&kv?.1)? {
                kept.extend(snap.manifest.iter().map(|b| b.hash));
            }
        }
        Ok(kept)
    }

    /// Removes one block from the device (a damaged one, say), whatever holds it.
    pub(super) fn drop_block(&self, hash: &BlockHash) {
        let mut s = self.store();
        self.hot().pop(hash);
        let _ = std::fs::remove_file(self.block_path(hash));
        s.remove(hash);
        self.forget_held(hash);
    }

    /// Removes least recently used blocks that need not stay until the store is under the
    /// low-water mark (a share of the limit); does nothing while it is under the limit.
    pub fn evict(&self, me: &str) -> Result<Evicted, CacheError> {
        let limit = self.blocks_limit();
        {
            let mut s = self.store();
            if limit > 0 && s.bytes > limit {
                s.touched = Some(HashSet::new());
            }
        }
        if self.store().touched.is_none() {
            return self.report(me);
        }
        let result = self.evict_past(limit, me);
        self.store().touched = None;
        result
    }

    /// What the store holds and what of it must stay, without evicting.
    pub fn report(&self, me: &str) -> Result<Evicted, CacheError> {
        let kept = self.kept_blocks(me)?;
        let s = self.store();
        Ok(Evicted {
            used: s.bytes,
            kept: kept.iter().filter_map(|h| s.used.peek(h)).sum(),
            ..Evicted::default()
        })
    }

    fn evict_past(&self, limit: u64, me: &str) -> Result<Evicted, CacheError> {
        let kept = self.kept_blocks(me)?;
        let low = limit / 100 * LOW_WATER_PERCENT;
        let victims: Vec<BlockHash> = {
            let s = self.store();
            let mut left = s.bytes;
            // Least recently used first.
            s.used
                .iter()
                .rev()
                .filter(|(h, _)| !kept.contains(h))
                .take_while(|(_, len)| {
                    let go = left > low;
                    left = left.saturating_sub(**len);
                    go
                })
                .map(|(h, _)| *h)
                .collect()
        };
        let mut done = Evicted::default();
        for hash in victims {
            let mut s = self.store();
            let held = s.writing.contains_key(&hash)
                || s.touched.as_ref().is_some_and(|t| t.contains(&hash));
            let Some(&len) = s.used.peek(&hash) else {
                continue;
            };
            if held {
                continue;
            }
            self.hot().pop(&hash);
            let path = self.block_path(&hash);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Io { path, source }),
            }
            s.remove(&hash);
            self.forget_held(&hash);
            done.blocks += 1;
            done.bytes += len;
        }
        let s = self.store();
        done.used = s.bytes;
        done.kept = kept.iter().filter_map(|h| s.used.peek(h)).sum();
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Snapshot, Txn};
    use super::*;
    use crate::proto::{BlockRef, EntryKind};

    fn block(i: u32) -> (BlockHash, bytes::Bytes) {
        let data = bytes::Bytes::from(vec![i as u8; 1000 + i as usize]);
        (BlockHash::of(&data), data)
    }

    fn file_node(ino: u64, hashes: &[BlockHash]) -> Node {
        let mut n = Node::fixed_dir(ino, &format!("f{ino}"), Some("fold".into()));
        n.kind = EntryKind::File;
        n.entry = Some(format!("e{ino}"));
        n.version = 1;
        n.manifest = hashes
            .iter()
            .map(|h| BlockRef { hash: *h, len: 1 })
            .collect();
        n
    }

    fn on_disk(c: &Cache) -> u64 {
        let mut total = 0;
        for fan in std::fs::read_dir(&c.blocks).unwrap() {
            for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
                total += f.unwrap().metadata().unwrap().len();
            }
        }
        total
    }

    #[test]
    fn eviction_takes_the_least_recently_used_down_to_the_low_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let blocks: Vec<_> = (0..10).map(block).collect();
        for (h, d) in &blocks {
            c.store_block(h, d.clone(), false).unwrap();
        }
        // Block 0 is read again: now the most recently used.
        let mut one = [0u8; 1];
        c.hot().clear();
        assert_eq!(c.read_block(&blocks[0].0, 0, &mut one).unwrap(), Some(1));
        let total: u64 = blocks.iter().map(|(_, d)| d.len() as u64).sum();
        assert_eq!(c.blocks_bytes(), total);
        assert_eq!(on_disk(&c), total);

        c.set_limit(total / 2);
        let done = c.evict("me").unwrap();
        assert!(done.used <= total / 2 / 100 * LOW_WATER_PERCENT, "{done:?}");
        assert_eq!(done.used, c.blocks_bytes());
        assert_eq!(
            on_disk(&c),
            c.blocks_bytes(),
            "the count is what is on disk"
        );
        assert!(c.has_block(&blocks[0].0), "used last, so kept");
        assert!(!c.has_block(&blocks[1].0), "least recently used, so gone");
        assert!(c.has_block(&blocks[9].0));
        assert_eq!(c.read_block(&blocks[1].0, 0, &mut one).unwrap(), None);
    }

    #[test]
    fn pending_pinned_and_only_copy_blocks_stay_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let blocks: Vec<_> = (0..6).map(block).collect();
        for (h, d) in &blocks {
            c.store_block(h, d.clone(), false).unwrap();
        }
        let mut pending = file_node(10, &[blocks[0].0]);
        pending.pending = 1;
        let mut pinned = file_node(11, &[blocks[1].0]);
        pinned.pinned = true;
        let mut only_here = file_node(12, &[blocks[2].0]);
        only_here.holders = vec!["me".into()];
        let mut elsewhere = file_node(13, &[blocks[3].0]);
        elsewhere.holders = vec!["other".into()];
        let mut t = Txn::default();
        for n in [&pending, &pinned, &only_here, &elsewhere] {
            t.put_node(n);
        }
        let mut snap = Snapshot::of(&file_node(14, &[blocks[4].0]), None);
        snap.parent = 1;
        t.journal(1, &JournalOp::Put { ino: 14, snap });
        c.apply(t).unwrap();

        c.set_limit(1);
        let done = c.evict("me").unwrap();
        for (i, (h, d)) in blocks.iter().enumerate() {
            assert_eq!(c.has_block(h), i <= 2 || i == 4, "block {i}");
            let _ = d;
        }
        let kept: u64 = [0, 1, 2, 4].iter().map(|&i| blocks[i].1.len() as u64).sum();
        assert_eq!(done.kept, kept);
        assert_eq!(done.used, kept);
        assert_eq!(on_disk(&c), kept);
    }

    #[test]
    fn device_only_versions_written_here_stay_and_cached_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let (a, da) = block(1);
        let (b, db) = block(2);
        c.store_block(&a, da, false).unwrap();
        c.store_block(&b, db, false).unwrap();
        let mut t = Txn::default();
        t.put_folder(&super::super::FolderInfo {
            id: "fold".into(),
            name: "F".into(),
            ino: 5,
            device_only: true,
            writable: true,
            epoch: 0,
        });
        t.put_node(&file_node(10, &[a]));
        let mut cached = file_node(11, &[b]);
        cached.holders = vec!["other".into()];
        t.put_node(&cached);
        c.apply(t).unwrap();
        c.set_limit(1);
        c.evict("me").unwrap();
        assert!(c.has_block(&a));
        assert!(!c.has_block(&b));
    }

    #[test]
    fn blocks_being_committed_or_made_kept_during_a_pass_stay() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(Cache::open(dir.path()).unwrap());
        let (a, da) = block(1);
        let (b, db) = block(2);
        let mut w = Writing::new(Arc::clone(&c), "f");
        w.store(&a, da).unwrap();
        c.store_block(&b, db, false).unwrap();
        c.set_limit(1);
        // A transaction applied while a pass runs (after its scan) marks `b` kept.
        c.store().touched = Some(HashSet::new());
        let mut pending = file_node(10, &[b]);
        pending.pending = 1;
        let mut t = Txn::default();
        t.put_node(&pending);
        let mut t2 = Txn::default();
        t2.put_node(&file_node(10, &[b]));
        c.apply(t).unwrap();
        c.apply(t2).unwrap();
        let done = c.evict_past(1, "me").unwrap();
        assert_eq!(done.blocks, 0);
        assert!(c.has_block(&a) && c.has_block(&b));
        c.store().touched = None;

        drop(w);
        c.evict("me").unwrap();
        assert!(!c.has_block(&a) && !c.has_block(&b));
        assert_eq!(c.blocks_bytes(), 0);
        assert_eq!(on_disk(&c), 0);
    }

    #[test]
    fn a_reopened_store_counts_what_is_on_disk_and_drops_leftover_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, da) = block(1);
        let (b, db) = block(2);
        let total = (da.len() + db.len()) as u64;
        let fan = {
            let c = Cache::open(dir.path()).unwrap();
            c.store_block(&a, da, false).unwrap();
            c.store_block(&b, db, true).unwrap();
            c.block_path(&a).parent().unwrap().to_owned()
        };
        std::fs::write(fan.join(".half-written.tmp1"), b"partial").unwrap();
        let c = (0..50)
            .find_map(|_| {
                Cache::open(dir.path())
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .ok()
            })
            .expect("reopen");
        assert_eq!(c.blocks_bytes(), total);
        assert_eq!(on_disk(&c), total);
    }
}
