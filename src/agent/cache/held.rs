//! For which folders each block is held. The block store is shared by all folders, but a
//! peer of another user may have a block only for the one folder they share: a member who
//! knows a hash (or plants it in an entry of a folder they can write) must not learn that
//! this device holds that block for another folder. So a block is marked held for a folder
//! when it is written in that folder or fetched for it, and only then is it served for it.
//!
//! Keys: `h/<hash wire bytes><folder>`, empty values. Marks go with the block file when it
//! is evicted or dropped, and with the folder when this device loses it.

use super::{Cache, CacheError};
use crate::proto::BlockHash;

fn prefix(hash: &BlockHash) -> Vec<u8> {
    let mut k = b"h/".to_vec();
    k.extend_from_slice(&hash.to_wire());
    k
}

fn key(hash: &BlockHash, folder: &str) -> Vec<u8> {
    let mut k = prefix(hash);
    k.extend_from_slice(folder.as_bytes());
    k
}

impl Cache {
    /// Notes that `hash` is held for `folder` (written in it, or fetched for it).
    pub fn mark_held(&self, hash: &BlockHash, folder: &str) -> Result<(), CacheError> {
        self.tree.insert(key(hash, folder), &[])?;
        Ok(())
    }

    /// Whether `hash` was written in or fetched for `folder` (and is still here, or was
    /// until a moment ago: the caller reads the block next and finds out).
    pub fn held_for(&self, hash: &BlockHash, folder: &str) -> bool {
        self.tree.contains_key(key(hash, folder)).unwrap_or(false)
    }

    /// Drops every mark of `hash`, whose file is gone.
    pub(super) fn forget_held(&self, hash: &BlockHash) {
        let keys = self.tree.scan_prefix(prefix(hash)).keys();
        for k in keys.flatten() {
            let _ = self.tree.remove(k);
        }
    }

    /// Drops every mark for `folder`; answers the blocks held for no folder now.
    pub(super) fn forget_folder_marks(&self, folder: &str) -> Result<Vec<BlockHash>, CacheError> {
        let wire = BlockHash::of(&[]).to_wire().len();
        let mut freed = Vec::new();
        let mut last: Option<(BlockHash, bool)> = None;
        for k in self.tree.scan_prefix(b"h/").keys() {
            let k = k?;
            let Some(hash) = k
                .get(2..2 + wire)
                .and_then(|w| w.try_into().ok())
                .and_then(|w| BlockHash::from_wire(&w))
            else {
                continue;
            };
            let ours = &k[2 + wire..] == folder.as_bytes();
            if ours {
                self.tree.remove(&k)?;
            }
            // Keys of one hash are together: note, per hash, whether another folder holds it.
            match &mut last {
                Some((h, others)) if *h == hash => *others |= !ours,
                _ => {
                    if let Some((h, false)) = last.take() {
                        freed.push(h);
                    }
                    last = Some((hash, !ours));
                }
            }
        }
        if let Some((h, false)) = last {
            freed.push(h);
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_held_only_for_the_folders_it_was_marked_for() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let (a, b) = (BlockHash::of(b"a"), BlockHash::of(b"b"));
        c.mark_held(&a, "private").unwrap();
        c.mark_held(&b, "private").unwrap();
        c.mark_held(&b, "shared").unwrap();
        assert!(c.held_for(&a, "private"));
        assert!(!c.held_for(&a, "shared"));
        assert!(!c.held_for(&a, "privat"), "a folder id is matched whole");
        assert!(c.held_for(&b, "shared"));

        let freed = c.forget_folder_marks("private").unwrap();
        assert_eq!(freed, vec![a], "b is still held for the shared folder");
        assert!(!c.held_for(&b, "private"));
        assert!(c.held_for(&b, "shared"));
        c.forget_held(&b);
        assert!(!c.held_for(&b, "shared"));
    }
}
