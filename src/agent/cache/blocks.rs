//! The block store: one file per block under `blocks/`, named by its hash and written to a
//! temporary name then renamed, so a block file is either whole or absent; the last blocks
//! stored are also kept in memory (`hot`).
//!
//! On a protected home each block file is sealed with the cache key, bound to the block's
//! hash, and opened whole when read; a file that does not open counts as absent, unless it
//! is a plain block whose hash matches (left by `meshfs protect` stopped half way).
//!
//! Blocks fetched from elsewhere are written past the page cache (`O_DIRECT`) when their
//! buffer allows it (see `agent::aligned`): the kernel already caches what the mount
//! served, and a second cached copy of every fetched byte cost the reader more CPU than
//! checking the block's hash. This device's own blocks, which are fsynced and uploaded
//! next, go through the page cache.

use super::{Cache, CacheError};
use crate::agent::aligned::DIRECT_ALIGN;
use crate::proto::BlockHash;
use bytes::Bytes;
use lru::LruCache;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers temporary block files apart.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether `data` can be written with `O_DIRECT` from where it lies, as a whole file.
fn suits_direct_io(data: &[u8]) -> bool {
    !data.is_empty()
        && data.len().is_multiple_of(DIRECT_ALIGN)
        && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
}

/// How a block file was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Straight to the disk, past the page cache.
    Direct,
    /// Through the page cache (and fsynced, for a durable block).
    Cached,
}

/// A new file at `path`, for writing, emptied if it was there.
fn create(path: &Path, direct: bool) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path)
}

fn is_einval(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

impl Cache {
    pub(super) fn block_path(&self, hash: &BlockHash) -> PathBuf {
        let fan_out = &hash.digest_hex()[..2];
        self.blocks.join(fan_out).join(hash.to_hex())
    }

    pub fn has_block(&self, hash: &BlockHash) -> bool {
        self.store().used.contains(hash)
    }

    /// Notes a use of the block, for eviction's order.
    fn used(&self, hash: &BlockHash) {
        self.store().used.promote(hash);
    }

    pub(super) fn hot(&self) -> std::sync::MutexGuard<'_, LruCache<BlockHash, Bytes>> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a block whose hash the caller has checked. Whole or absent after a crash;
    /// `durable` blocks (written here, maybe nowhere else yet) are fsynced first, while a
    /// fetched block can be fetched again and skips the cost.
    pub fn store_block(
        &self,
        hash: &BlockHash,
        data: Bytes,
        durable: bool,
    ) -> Result<(), CacheError> {
        {
            let mut s = self.store();
            if s.used.promote(hash) {
                self.hot().put(*hash, data);
                return Ok(());
            }
        }
        let path = self.block_path(hash);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.blocks);
        std::fs::create_dir_all(dir).map_err(io)?;
        // Unique per store: two stores of one block may run at once (a fetch and a commit).
        let tmp = dir.join(format!(
            ".{}.tmp{}-{}",
            hash.to_hex(),
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let sealed = self
            .sealed()
            .map(|k| k.seal(hash.to_hex().as_bytes(), &data));
        let on_disk = sealed.as_deref().unwrap_or(&data);
        if let Err(e) = self.write_block_file(&tmp, on_disk, durable) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        let bytes = {
            let mut s = self.store();
            std::fs::rename(&tmp, &path).map_err(io)?;
            s.add(*hash, data.len() as u64);
            self.hot().put(*hash, data);
            s.bytes
        };
        self.check_limit(bytes);
        Ok(())
    }

    /// Writes `data` as the new file `path`: directly to the disk when it is a fetched
    /// block in a buffer that allows it, else through the page cache. A file system that
    /// refuses direct I/O (tmpfs before Linux 6.6, say) is asked once.
    pub(crate) fn write_block_file(
        &self,
        path: &Path,
        data: &[u8],
        durable: bool,
    ) -> std::io::Result<Written> {
        if !durable && suits_direct_io(data) && self.direct_io.load(Ordering::Relaxed) {
            match create(path, true) {
                Ok(mut f) => match f.write_all(data) {
                    Ok(()) => return Ok(Written::Direct),
                    // Stricter alignment than ours: write it the usual way below.
                    Err(e) if is_einval(&e) => {}
                    Err(e) => return Err(e),
                },
                Err(e) if is_einval(&e) => {
                    self.direct_io.store(false, Ordering::Relaxed);
                    tracing::debug!(
                        "the block store's file system refuses direct I/O; blocks go through the page cache"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let mut f = create(path, false)?;
        f.write_all(data)?;
        if durable {
            f.sync_data()?;
        }
        Ok(Written::Cached)
    }

    /// Bytes `from..to` of a block if it is still in memory, shared rather than copied.
    /// On a sealed cache, opens a stored block into memory ahead of its reads (read-ahead
    /// asks): opening a whole block costs more than a plain read of a part of it.
    pub fn warm(&self, hash: &BlockHash) -> Result<(), CacheError> {
        if self.sealed().is_none() || self.hot().contains(hash) {
            return Ok(());
        }
        if let Some(data) = self.load_block(hash)? {
            // Only while its file is there: `hot` holds blocks that are also on disk.
            let s = self.store();
            if s.used.contains(hash) {
                self.hot().put(*hash, Bytes::from(data));
            }
        }
        Ok(())
    }

    pub fn hot_slice(&self, hash: &BlockHash, from: u64, to: u64) -> Option<Bytes> {
        let data = self.hot().get(hash)?.clone();
        self.used(hash);
        let (from, to) = (usize::try_from(from).ok()?, usize::try_from(to).ok()?);
        (from <= to && to <= data.len()).then(|| data.slice(from..to))
    }

    /// Reads `len` bytes at `offset` of a stored block into `out`; returns how many, or
    /// `None` when the block is not here (evicted since it was looked for, say).
    pub fn read_block(
        &self,
        hash: &BlockHash,
        offset: u64,
        out: &mut [u8],
    ) -> Result<Option<usize>, CacheError> {
        self.used(hash);
        if let Some(data) = self.hot().get(hash) {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let n = out.len().min(data.len() - from);
            out[..n].copy_from_slice(&data[from..from + n]);
            return Ok(Some(n));
        }
        if self.sealed().is_some() {
            let Some(data) = self.load_block(hash)? else {
                return Ok(None);
            };
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let n = out.len().min(data.len() - from);
            out[..n].copy_from_slice(&data[from..from + n]);
            self.hot().put(*hash, Bytes::from(data));
            return Ok(Some(n));
        }
        let path = self.block_path(hash);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut done = 0;
        while done < out.len() {
            let n = f
                .read_at(&mut out[done..], offset + done as u64)
                .map_err(io)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(Some(done))
    }

    /// Appends the stored block to `out` as it is on disk, without checking its hash (for
    /// sending it to a peer, which checks every block it gets); false if it is not here.
    pub fn append_block(&self, hash: &BlockHash, out: &mut Vec<u8>) -> Result<bool, CacheError> {
        use std::io::Read;
        if self.sealed().is_some() {
            let Some(data) = self.load_block(hash)? else {
                return Ok(false);
            };
            out.extend_from_slice(&data);
            return Ok(true);
        }
        let path = self.block_path(hash);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        self.used(hash);
        let len = f.metadata().map_err(io)?.len();
        out.reserve(usize::try_from(len).unwrap_or(0));
        f.read_to_end(out).map_err(io)?;
        Ok(true)
    }

    /// The whole stored block, checked again against its hash (a block file damaged on disk
    /// is dropped and reported missing rather than served).
    pub fn load_block(&self, hash: &BlockHash) -> Result<Option<Vec<u8>>, CacheError> {
        self.used(hash);
        if let Some(data) = self.hot().get(hash) {
            return Ok(Some(data.to_vec()));
        }
        let path = self.block_path(hash);
        // A sealed block that opens is the one stored under this hash, checked then: the
        // seal is bound to the hash. A block still plain (a cache being protected) or a
        // plain cache's block is checked against its hash.
        let read = std::fs::read(&path).map(|d| match self.sealed() {
            Some(k) => match k.open(hash.to_hex().as_bytes(), &d) {
                Ok(plain) => (plain, true),
                Err(_) => (d, false),
            },
            None => (d, false),
        });
        match read {
            Ok((data, opened)) if opened || hash.matches(&data) => Ok(Some(data)),
            Ok(_) => {
                tracing::warn!(%hash, "cached block is damaged; dropping it");
                self.drop_block(hash);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::aligned::aligned_buffer;
    use std::sync::Arc;

    #[test]
    fn a_damaged_block_file_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let data = b"hello block".to_vec();
        let h = BlockHash::of(&data);
        c.store_block(&h, data.clone().into(), true).unwrap();
        c.hot().clear();
        assert_eq!(c.load_block(&h).unwrap(), Some(data));
        std::fs::write(c.block_path(&h), b"evil").unwrap();
        assert_eq!(c.load_block(&h).unwrap(), None);
        assert!(!c.has_block(&h));
    }

    /// A sealed cache keeps no block in plain; every read opens it, and a block file
    /// swapped for another's or changed by a bit counts as absent.
    #[test]
    fn a_sealed_cache_keeps_blocks_sealed_and_reads_them_back() {
        use crate::crypto::seal::CacheKey;
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(CacheKey::generate().0);
        let c = Cache::open_with(dir.path(), Some(Arc::clone(&key))).unwrap();
        let (one, two) = (b"the first block".to_vec(), b"the second one".to_vec());
        let (h1, h2) = (BlockHash::of(&one), BlockHash::of(&two));
        c.store_block(&h1, one.clone().into(), true).unwrap();
        c.store_block(&h2, two.clone().into(), false).unwrap();
        c.hot().clear();
        let on_disk = std::fs::read(c.block_path(&h1)).unwrap();
        assert!(memchr::memmem::find(&on_disk, b"first").is_none());
        let mut out = [0u8; 5];
        assert_eq!(c.read_block(&h1, 4, &mut out).unwrap(), Some(5));
        assert_eq!(&out, b"first");
        let mut all = Vec::new();
        assert!(c.append_block(&h2, &mut all).unwrap());
        assert_eq!(all, two);
        c.hot().clear();
        std::fs::copy(c.block_path(&h2), c.block_path(&h1)).unwrap();
        assert_eq!(c.load_block(&h1).unwrap(), None, "another block's file");
        let mut bad = std::fs::read(c.block_path(&h2)).unwrap();
        bad[20] ^= 1;
        std::fs::write(c.block_path(&h2), bad).unwrap();
        assert_eq!(
            c.read_block(&h2, 0, &mut out).unwrap(),
            None,
            "a flipped bit"
        );
    }

    /// Warming opens a sealed block into memory once; a plain cache's blocks are read in
    /// parts and are not warmed; a block whose file is gone is not.
    #[test]
    fn warming_opens_a_sealed_block_ahead_of_its_read() {
        use crate::crypto::seal::CacheKey;
        let (sealed, plain) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = Arc::new(CacheKey::generate().0);
        let data = b"a block read soon".to_vec();
        let h = BlockHash::of(&data);
        for (dir, seal, warmed) in [(&sealed, Some(key), true), (&plain, None, false)] {
            let c = Cache::open_with(dir.path(), seal).unwrap();
            c.store_block(&h, data.clone().into(), true).unwrap();
            c.hot().clear();
            c.warm(&h).unwrap();
            assert_eq!(c.hot().contains(&h), warmed);
            assert_eq!(c.hot_slice(&h, 2, 7).is_some(), warmed);
            c.drop_block(&h);
            c.warm(&h).unwrap();
            assert!(!c.hot().contains(&h), "a block no longer stored");
        }
    }

    /// A cache is sealed from its start or never: it opens only as it was made.
    #[test]
    fn a_cache_opens_only_as_sealed_as_it_was_made() {
        use crate::crypto::seal::CacheKey;
        let (sealed, plain) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = Arc::new(CacheKey::generate().0);
        drop(Cache::open_with(sealed.path(), Some(Arc::clone(&key))).unwrap());
        assert!(
            Cache::open(sealed.path()).is_err(),
            "a sealed cache opened plain"
        );
        let other = Arc::new(CacheKey::generate().0);
        assert!(Cache::open_with(sealed.path(), Some(other)).is_err());
        assert!(Cache::open_with(sealed.path(), Some(key.clone())).is_ok());
        let c = Cache::open(plain.path()).unwrap();
        let data = b"plain".to_vec();
        c.store_block(&BlockHash::of(&data), data.into(), true)
            .unwrap();
        drop(c);
        assert!(Cache::open_with(plain.path(), Some(key)).is_err());
    }

    /// A fetched block in an aligned buffer goes to the disk directly; a short block, an
    /// unaligned buffer or a durable block goes through the page cache; all read back the
    /// same, from memory and from their files.
    #[test]
    fn fetched_blocks_in_aligned_buffers_are_written_directly_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let page_multiple: Vec<u8> = (0..4 * DIRECT_ALIGN).map(|i| (i % 251) as u8).collect();
        let mut aligned = aligned_buffer(page_multiple.len() + 1, 1);
        aligned.extend_from_slice(b"h");
        aligned.extend_from_slice(&page_multiple);
        let aligned = aligned.freeze().slice(1..);
        let mut unaligned = aligned_buffer(page_multiple.len() + 1, 0);
        unaligned.extend_from_slice(b"h");
        unaligned.extend_from_slice(&page_multiple);
        let unaligned = unaligned.freeze().slice(1..);
        let short = Bytes::from_static(b"a short last block");

        let cases = [
            (aligned.clone(), false, Written::Direct),
            (unaligned, false, Written::Cached),
            (short.clone(), false, Written::Cached),
            (aligned, true, Written::Cached),
        ];
        for (i, (data, durable, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("case-{i}"));
            let written = c.write_block_file(&path, &data, durable).unwrap();
            // A file system without direct I/O (tmpfs on older kernels) writes it cached.
            let want = if c.direct_io.load(Ordering::Relaxed) {
                want
            } else {
                Written::Cached
            };
            assert_eq!(written, want, "case {i}");
            assert_eq!(std::fs::read(&path).unwrap(), &data[..], "case {i}");
        }

        let mut block = aligned_buffer(page_multiple.len(), 0);
        block.extend_from_slice(&page_multiple);
        let h = BlockHash::of(&page_multiple);
        c.store_block(&h, block.freeze(), false).unwrap();
        assert_eq!(
            c.load_block(&h).unwrap().as_deref(),
            Some(&page_multiple[..])
        );
        c.hot().clear();
        assert_eq!(
            c.load_block(&h).unwrap().as_deref(),
            Some(&page_multiple[..])
        );
        let mut part = vec![0; 100];
        assert_eq!(c.read_block(&h, 5000, &mut part).unwrap(), Some(100));
        assert_eq!(part, page_multiple[5000..5100]);
    }
}
