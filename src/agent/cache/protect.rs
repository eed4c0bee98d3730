//! Protecting a plain cache in place (`meshfs protect`). sled keeps old values in its log,
//! so records are not sealed where they are: they are copied sealed into a new store that
//! then replaces the old one whole. Each block file is then sealed and replaced whole.
//! Stopped half way, it goes on where it stopped: a cache with the old store still beside
//! the new one does not open, and a sealed cache reads a plain block whose hash matches.

use super::{
    Cache, CacheError, JOURNAL_ID_KEY, Node, OFFERED_KEY, SEAL_CHECK_KEY, child_prefix, node_key,
    u64_of,
};
use crate::crypto::seal::CacheKey;
use crate::proto::BlockHash;
use std::path::Path;

/// Where the plain store waits while the sealed one takes its place.
pub(super) const PLAIN_DB: &str = "db.plain";
/// Where the sealed store is made.
const SEALING_DB: &str = "db.sealing";

/// Seals the records of the cache at `dir` with `key`: a sealed copy of its store replaces
/// the plain one. The count of records sealed; `None` when they were sealed already.
pub fn seal_store(dir: &Path, key: &CacheKey) -> Result<Option<usize>, CacheError> {
    let (db, plain, fresh) = (dir.join("db"), dir.join(PLAIN_DB), dir.join(SEALING_DB));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    if plain.exists() {
        if !db.exists() {
            std::fs::rename(&fresh, &db).map_err(io(&fresh))?;
        }
        std::fs::remove_dir_all(&plain).map_err(io(&plain))?;
        return Ok(None);
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io(&fresh))?;
    }
    let n = match Cache::open(dir) {
        Ok(cache) => cache.export_sealed(key, &fresh)?,
        // Sealed already (the mark opens only with the key).
        Err(CacheError::Seal(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    std::fs::rename(&db, &plain).map_err(io(&db))?;
    std::fs::rename(&fresh, &db).map_err(io(&fresh))?;
    std::fs::remove_dir_all(&plain).map_err(io(&plain))?;
    Ok(Some(n))
}

impl Cache {
    /// Writes every record of this plain cache, sealed with `key`, into a new store at
    /// `to`, marked sealed, with an id generator past this one's (inodes stay unique).
    fn export_sealed(&self, key: &CacheKey, to: &Path) -> Result<usize, CacheError> {
        let _g = self.lock();
        let db = sled::Config::new().path(to).open()?;
        let tree = db.open_tree("meshfs")?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if k == JOURNAL_ID_KEY || k == OFFERED_KEY || k.starts_with(b"h/") {
                batch.insert(k, v);
                continue;
            }
            match k
                .strip_prefix(b"c/".as_slice())
                .filter(|rest| rest.len() > 8)
            {
                Some(rest) => {
                    let (parent, name) = rest.split_at(8);
                    let parent = u64_of(parent).unwrap_or(0);
                    let mut link = v.to_vec();
                    if link.len() == 8 {
                        // A link from before the directory flag: the sealed form has it.
                        let child = u64_of(&link).unwrap_or(0);
                        let dir = match self.tree.get(node_key(child))? {
                            Some(node) => serde_json::from_slice::<Node>(&node)?.is_dir(),
                            None => false,
                        };
                        link.push(u8::from(dir));
                    }
                    link.truncate(9);
                    link.extend_from_slice(name);
                    let mut sealed_key = child_prefix(parent);
                    sealed_key.extend_from_slice(&key.name_tag(name));
                    batch.insert(sealed_key.clone(), key.seal(&sealed_key, &link));
                }
                None => batch.insert(k.clone(), key.seal(&k, &v)),
            }
            n += 1;
        }
        batch.insert(SEAL_CHECK_KEY, key.seal(SEAL_CHECK_KEY, b"meshfs"));
        tree.apply_batch(batch)?;
        let next = self.db.generate_id()?;
        while db.generate_id()? < next {}
        db.flush()?;
        Ok(n)
    }

    /// Seals the block files still plain (those whose content matches their hash), each
    /// written to a temporary name, synced and renamed over the plain one. The count sealed.
    pub fn seal_plain_blocks(&self) -> Result<usize, CacheError> {
        let Some(key) = self.sealed() else {
            return Err(CacheError::Seal("only a sealed cache seals its blocks"));
        };
        let hashes: Vec<BlockHash> = self.store().used.iter().map(|(h, _)| *h).collect();
        let mut n = 0;
        for hash in hashes {
            let path = self.block_path(&hash);
            let io = |source| CacheError::Io {
                path: path.clone(),
                source,
            };
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            let aad = hash.to_hex();
            if key.open(aad.as_bytes(), &data).is_ok() || !hash.matches(&data) {
                continue;
            }
            let dir = path.parent().unwrap_or(&self.blocks);
            let tmp = dir.join(format!(".{aad}.sealing"));
            let sealed = key.seal(aad.as_bytes(), &data);
            self.write_block_file(&tmp, &sealed, true).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cache::{ROOT, Txn};
    use crate::proto::EntryKind;
    use std::sync::Arc;

    /// Opens the cache at `dir` once sled's flusher let go of the last opening.
    fn reopen(dir: &Path, key: Option<Arc<CacheKey>>) -> Result<Cache, CacheError> {
        for _ in 0..100 {
            match Cache::open_with(dir, key.clone()) {
                Err(e) if e.is_busy() => std::thread::sleep(std::time::Duration::from_millis(20)),
                other => return other,
            }
        }
        Cache::open_with(dir, key)
    }

    #[test]
    fn protecting_stopped_half_way_goes_on_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"a block of plain content".to_vec();
        let hash = BlockHash::of(&data);
        let ino = {
            let c = Cache::open(dir.path()).unwrap();
            c.store_block(&hash, data.clone().into(), true).unwrap();
            let n = Node::fixed_dir(c.next_id().unwrap(), "dir-qmarkerq", Some("f".into()));
            assert_eq!(n.kind, EntryKind::Dir);
            let mut t = Txn::default();
            t.put_node(&n);
            t.link(ROOT, &n.name, &n);
            c.apply(t).unwrap();
            n.ino
        };
        let key = Arc::new(CacheKey::generate().0);
        assert!(seal_store(dir.path(), &key).unwrap().is_some());
        assert!(
            reopen(dir.path(), None).is_err(),
            "sealed: no plain opening"
        );

        // Stopped before the blocks: the sealed cache still reads the plain one.
        let c = reopen(dir.path(), Some(Arc::clone(&key))).unwrap();
        assert_eq!(c.lookup(ROOT, "dir-qmarkerq").unwrap(), Some(ino));
        assert_eq!(c.subdirs(ROOT).unwrap(), 1);
        assert!(c.next_id().unwrap() > ino, "inodes stay unique");
        assert_eq!(c.load_block(&hash).unwrap(), Some(data.clone()));
        assert_eq!(c.seal_plain_blocks().unwrap(), 1);
        assert_eq!(c.seal_plain_blocks().unwrap(), 0, "sealed ones are skipped");
        let on_disk = std::fs::read(c.block_path(&hash)).unwrap();
        assert!(memchr::memmem::find(&on_disk, b"plain content").is_none());
        c.hot().clear();
        assert_eq!(c.load_block(&hash).unwrap(), Some(data));
        drop(c);

        // Stopped between the two renames of the stores: the cache refuses to open until
        // a second run finishes the swap.
        let (db, plain) = (dir.path().join("db"), dir.path().join(PLAIN_DB));
        std::fs::rename(&db, dir.path().join(SEALING_DB)).unwrap();
        std::fs::create_dir(&plain).unwrap();
        assert!(matches!(
            reopen(dir.path(), Some(Arc::clone(&key))),
            Err(CacheError::Seal(_))
        ));
        assert_eq!(seal_store(dir.path(), &key).unwrap(), None);
        let c = reopen(dir.path(), Some(key)).unwrap();
        assert_eq!(c.lookup(ROOT, "dir-qmarkerq").unwrap(), Some(ino));
    }
}
