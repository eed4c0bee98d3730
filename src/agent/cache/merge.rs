//! Applying an entry from the cloud to the cache: what the change feed brings, and what
//! the uploader learns when it loses a race. Idempotent and ordered by version: an entry
//! whose version is not newer than what the cache holds is old news (this device's own
//! writes come back this way), and a node with local changes not yet uploaded keeps its
//! local state (its upload's `If-Match` finds the race).

use super::{Cache, CacheError, FolderInfo, Node, ROOT, Txn};
use crate::agent::invalidate::Invalidator;
use crate::proto::Entry;

fn node_of(e: &Entry, ino: u64, parent: u64, folder: &str) -> Node {
    Node {
        ino,
        parent,
        name: e.name.clone(),
        folder: Some(folder.to_string()),
        entry: Some(e.id.clone()),
        kind: e.kind,
        mode: e.mode,
        size: e.size,
        mtime_ns: e.mtime_ns,
        atime_ns: None,
        ctime_ns: Some(crate::proto::now_ns()),
        version: e.version,
        manifest: e.manifest.clone(),
        target: e.target.clone(),
        pending: 0,
        linked: true,
        holders: e.holders.clone(),
        pinned: false,
    }
}

/// The inode for an entry id, allocated (and indexed) on first sight, so that a child can
/// arrive before its parent.
fn ino_for(cache: &Cache, txn: &mut Txn, folder: &str, entry: &str) -> Result<u64, CacheError> {
    if let Some(ino) = cache.ino_of_entry(folder, entry)? {
        return Ok(ino);
    }
    let ino = cache.next_id()?;
    txn.index_entry(folder, entry, ino);
    Ok(ino)
}

/// Applies one entry of `folder` to the cache, under the cache's lock (so a local change
/// made meanwhile is seen, and wins while it waits to upload). Returns whether anything
/// changed.
pub fn apply_entry(
    cache: &Cache,
    inv: &dyn Invalidator,
    folder: &FolderInfo,
    e: &Entry,
) -> Result<bool, CacheError> {
    if !e.deleted && !crate::proto::valid_entry_name(&e.name) {
        tracing::warn!(folder = %folder.name, entry = %e.id, name = ?e.name, "skipped a change from the cloud: its name cannot be a file name here");
        return Ok(false);
    }
    let _g = cache.lock();
    let existing = match cache.ino_of_entry(&folder.id, &e.id)? {
        Some(ino) => cache.node(ino)?.map(|n| (ino, n)),
        None => None,
    };
    if let Some((_, n)) = &existing
        && (n.pending > 0 || e.version <= n.version)
    {
        return Ok(false);
    }
    // An entry a step of ours tombstoned, in a batch fetched before that step.
    if existing.is_none() && cache.departed(&folder.id, &e.id, e.deleted) {
        return Ok(false);
    }
    let mut txn = Txn::default();
    if e.deleted {
        let Some((ino, n)) = existing else {
            return Ok(false);
        };
        // Only a name that still leads here goes; one taken over since (a rename over it)
        // stays, and the kernel keeps its entry: needless invalidations race with lookups.
        let linked_here = cache.lookup(n.parent, &n.name)? == Some(ino);
        if linked_here {
            txn.unlink(n.parent, &n.name);
            txn.touch_dir(cache, n.parent)?;
        }
        txn.unindex_entry(&folder.id, &e.id);
        // Kept, unlinked, for descriptors still open on it; removed at their last close or
        // at the next start.
        let mut gone = n.clone();
        gone.linked = false;
        txn.put_node(&gone);
        cache.apply(txn)?;
        if linked_here {
            inv.entry(n.parent, &n.name);
        }
        inv.inode(ino);
        return Ok(true);
    }
    let parent = match &e.parent {
        None => folder.ino,
        Some(p) => ino_for(cache, &mut txn, &folder.id, p)?,
    };
    let ino = match &existing {
        Some((ino, _)) => *ino,
        None => ino_for(cache, &mut txn, &folder.id, &e.id)?,
    };
    let mut new = node_of(e, ino, parent, &folder.id);
    new.atime_ns = existing.as_ref().and_then(|(_, old)| old.atime_ns);
    // A pin stays with its node, and a new node under a pinned folder is pinned.
    new.pinned = match &existing {
        Some((_, old)) => old.pinned,
        None => cache.node(parent)?.is_some_and(|p| p.pinned),
    };
    // Names whose meaning changes; the kernel forgets them once the change is applied.
    let mut renamed: Vec<(u64, &str)> = Vec::new();
    if let Some(occupant) = cache.lookup(parent, &e.name)?.filter(|&o| o != ino) {
        match cache.node(occupant)? {
            // A local file not yet uploaded holds the name: it keeps it, and its upload will
            // be renamed as a conflict copy. The remote entry shows up after that.
            Some(o) if o.pending > 0 => return Ok(false),
            // A clean node there was replaced remotely; its tombstone follows.
            _ => {
                txn.unlink(parent, &e.name);
                renamed.push((parent, &e.name));
            }
        }
    }
    let moved_from = existing
        .as_ref()
        .map(|(_, old)| (old.parent, old.name.as_str()))
        .filter(|&(p, n)| (p, n) != (parent, e.name.as_str()));
    if let Some((p, n)) = moved_from
        && cache.lookup(p, n)? == Some(ino)
    {
        txn.unlink(p, n);
        renamed.push((p, n));
    }
    if existing.is_none() || moved_from.is_some() {
        renamed.push((parent, &e.name));
    }
    let mut dirs: Vec<u64> = renamed.iter().map(|&(p, _)| p).collect();
    dirs.dedup();
    for dir in dirs {
        txn.touch_dir(cache, dir)?;
    }
    txn.link(parent, &e.name, &new);
    txn.put_node(&new);
    cache.apply(txn)?;
    for (p, n) in renamed {
        inv.entry(p, n);
    }
    // Attributes and cached pages of the node itself.
    inv.inode(ino);
    Ok(true)
}

/// What a folder listing says of one folder.
#[derive(Clone, Debug)]
pub struct Listed<'a> {
    pub id: &'a str,
    /// The name the mount root should show (see `feed::mount_names`).
    pub name: &'a str,
    pub device_only: bool,
    pub writable: bool,
    pub epoch: u64,
}

/// Makes sure the folder has its root under the mount root, under its name or, when that
/// is taken, with the start of its id added; keeps its settings as listed.
pub fn ensure_folder(cache: &Cache, l: &Listed<'_>) -> Result<FolderInfo, CacheError> {
    let _g = cache.lock();
    if let Some(mut f) = cache.folder(l.id)? {
        if (f.device_only, f.writable) != (l.device_only, l.writable) {
            f.device_only = l.device_only;
            f.writable = l.writable;
            let mut txn = Txn::default();
            txn.put_folder(&f);
            cache.apply(txn)?;
        }
        return Ok(f);
    }
    let ino = cache.next_id()?;
    let mut display = l.name.to_string();
    while cache.lookup(ROOT, &display)?.is_some() {
        display = format!("{display} ({})", &l.id[..l.id.len().min(8)]);
    }
    let info = FolderInfo {
        id: l.id.to_string(),
        name: display.clone(),
        ino,
        device_only: l.device_only,
        writable: l.writable,
        epoch: l.epoch,
    };
    let mut txn = Txn::default();
    let root = Node::fixed_dir(ino, &display, Some(l.id.to_string()));
    txn.put_node(&root);
    txn.link(ROOT, &display, &root);
    txn.put_folder(&info);
    cache.apply(txn)?;
    Ok(info)
}

/// Notes the folder's membership epoch `epoch`; true if it is newer than the one known
/// (its members or roles changed).
pub fn note_epoch(cache: &Cache, id: &str, epoch: u64) -> Result<bool, CacheError> {
    let _g = cache.lock();
    match cache.folder(id)? {
        Some(mut f) if epoch > f.epoch => {
            f.epoch = epoch;
            let mut txn = Txn::default();
            txn.put_folder(&f);
            cache.apply(txn)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Forgets a folder this user lost (removed from it, or left): its root leaves the mount
/// root, and its nodes, journal records, feed cursor, views and the blocks held only for
/// it (unless something else must keep them) leave the device. Returns what it was.
pub fn drop_folder(cache: &Cache, id: &str, me: &str) -> Result<Option<FolderInfo>, CacheError> {
    let info = {
        let _g = cache.lock();
        let Some(info) = cache.folder(id)? else {
            return Ok(None);
        };
        let nodes = cache.nodes_of_folder(id)?;
        let inos: std::collections::HashSet<u64> = nodes.iter().map(|n| n.ino).collect();
        let mut txn = Txn::default();
        for n in &nodes {
            if n.linked {
                txn.unlink(n.parent, &n.name);
            }
            if let Some(entry) = &n.entry {
                txn.unindex_entry(id, entry);
            }
            txn.remove_node(n.ino);
        }
        for (seq, op) in cache.journal(usize::MAX)? {
            if inos.contains(&op.ino()) {
                txn.unjournal(seq);
            }
        }
        txn.remove_folder(id);
        cache.apply(txn)?;
        for ino in &inos {
            cache.drop_view(*ino);
        }
        info
    };
    let freed = cache.forget_folder_marks(id)?;
    let kept = cache.kept_blocks(me)?;
    for hash in freed.iter().filter(|h| !kept.contains(h)) {
        cache.drop_block(hash);
    }
    Ok(Some(info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::invalidate::Recorder;
    use crate::proto::EntryKind;

    fn entry(id: &str, parent: Option<&str>, name: &str, kind: EntryKind, version: u64) -> Entry {
        Entry {
            id: id.into(),
            folder: "f".into(),
            parent: parent.map(Into::into),
            name: name.into(),
            kind,
            mode: 0o644,
            size: 0,
            mtime_ns: 0,
            version,
            deleted: false,
            manifest: vec![],
            target: None,
            author: "other".into(),
            in_cloud: true,
            holders: vec![],
        }
    }

    fn setup() -> (tempfile::TempDir, Cache, FolderInfo) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let listed = Listed {
            id: "f",
            name: "Docs",
            device_only: false,
            writable: true,
            epoch: 0,
        };
        let f = ensure_folder(&cache, &listed).unwrap();
        (dir, cache, f)
    }

    #[test]
    fn a_child_arriving_before_its_parent_is_linked_once_the_parent_comes() {
        let (_d, cache, f) = setup();
        let inv = Recorder::default();
        assert!(
            apply_entry(
                &cache,
                &inv,
                &f,
                &entry("c", Some("p"), "child", EntryKind::File, 2)
            )
            .unwrap()
        );
        assert!(cache.lookup(f.ino, "dir").unwrap().is_none());
        assert!(
            apply_entry(
                &cache,
                &inv,
                &f,
                &entry("p", None, "dir", EntryKind::Dir, 3)
            )
            .unwrap()
        );
        let p = cache.lookup(f.ino, "dir").unwrap().unwrap();
        let c = cache.lookup(p, "child").unwrap().unwrap();
        assert_eq!(cache.node(c).unwrap().unwrap().entry.as_deref(), Some("c"));
    }

    /// A name that cannot be a file name here (sent by a cloud that let it through) is
    /// skipped: nothing is linked, the kernel is told nothing, and a good one still applies.
    #[test]
    fn an_entry_with_a_bad_name_is_skipped() {
        let (_d, cache, f) = setup();
        let inv = Recorder::default();
        for (i, bad) in ["..", "a/b", "nul\0", "", &"x".repeat(256)]
            .iter()
            .enumerate()
        {
            let e = entry(&format!("e{i}"), None, bad, EntryKind::File, 1);
            assert!(!apply_entry(&cache, &inv, &f, &e).unwrap(), "{bad:?}");
        }
        assert!(cache.children(f.ino).unwrap().is_empty());
        assert!(inv.0.lock().unwrap().is_empty());
        let good = entry("g", None, "good", EntryKind::File, 2);
        assert!(apply_entry(&cache, &inv, &f, &good).unwrap());
        assert_eq!(cache.children(f.ino).unwrap().len(), 1);
    }

    #[test]
    fn rename_moves_the_link_and_invalidates_both_names() {
        let (_d, cache, f) = setup();
        let inv = Recorder::default();
        apply_entry(
            &cache,
            &inv,
            &f,
            &entry("a", None, "old", EntryKind::File, 1),
        )
        .unwrap();
        let ino = cache.lookup(f.ino, "old").unwrap().unwrap();
        inv.0.lock().unwrap().clear();
        apply_entry(
            &cache,
            &inv,
            &f,
            &entry("a", None, "new", EntryKind::File, 2),
        )
        .unwrap();
        assert_eq!(cache.lookup(f.ino, "new").unwrap(), Some(ino));
        assert!(cache.lookup(f.ino, "old").unwrap().is_none());
        let log = inv.0.lock().unwrap().clone();
        assert!(log.contains(&format!("entry {} old", f.ino)));
        assert!(log.contains(&format!("entry {} new", f.ino)));
    }

    #[test]
    fn old_versions_and_deletes_apply_idempotently() {
        let (_d, cache, f) = setup();
        let inv = Recorder::default();
        let e = entry("a", None, "x", EntryKind::File, 5);
        assert!(apply_entry(&cache, &inv, &f, &e).unwrap());
        assert!(!apply_entry(&cache, &inv, &f, &e).unwrap());
        assert!(
            !apply_entry(&cache, &inv, &f, &entry("a", None, "y", EntryKind::File, 4)).unwrap()
        );
        let mut gone = entry("a", None, "x", EntryKind::File, 6);
        gone.deleted = true;
        assert!(apply_entry(&cache, &inv, &f, &gone).unwrap());
        assert!(cache.lookup(f.ino, "x").unwrap().is_none());
        assert!(!apply_entry(&cache, &inv, &f, &gone).unwrap());
    }

    /// `mv j a` over `a` on this device: the step tombstoned `a`'s entry and the uploader
    /// let go of it. A feed batch fetched before that step still carries `a` alive; it
    /// must neither come back nor take its name from `j`, and its tombstone ends the note.
    #[test]
    fn an_entry_this_device_tombstoned_does_not_come_back_from_an_older_batch() {
        let (_d, cache, f) = setup();
        let inv = Recorder::default();
        apply_entry(&cache, &inv, &f, &entry("a", None, "a", EntryKind::File, 1)).unwrap();
        apply_entry(&cache, &inv, &f, &entry("j", None, "j", EntryKind::File, 2)).unwrap();
        let (a, j) = (
            cache.lookup(f.ino, "a").unwrap().unwrap(),
            cache.lookup(f.ino, "j").unwrap().unwrap(),
        );
        // The rename as the uploader leaves it: `j` at `a` with the step's version, `a`'s
        // node unlinked and its entry let go.
        let mut t = Txn::default();
        t.unlink(f.ino, "j");
        let mut jn = cache.node(j).unwrap().unwrap();
        t.link(f.ino, "a", &jn);
        (jn.name, jn.version) = ("a".into(), 4);
        t.put_node(&jn);
        let mut an = cache.node(a).unwrap().unwrap();
        an.linked = false;
        t.put_node(&an);
        t.unindex_entry("f", "a");
        cache.apply(t).unwrap();
        cache.note_departed("f", "a");

        let stale = entry("a", None, "a", EntryKind::File, 3);
        assert!(!apply_entry(&cache, &inv, &f, &stale).unwrap());
        assert_eq!(
            cache.lookup(f.ino, "a").unwrap(),
            Some(j),
            "j keeps the name"
        );
        let mut tomb = entry("a", None, "a", EntryKind::File, 4);
        tomb.deleted = true;
        assert!(!apply_entry(&cache, &inv, &f, &tomb).unwrap());
        assert!(
            !cache.departed("f", "a", false),
            "the tombstone ended the note"
        );
        assert_eq!(cache.lookup(f.ino, "a").unwrap(), Some(j));
    }

    #[test]
    fn local_changes_not_yet_uploaded_win_over_the_feed() {
        let (_d, cache, f) = setup();
        let inv = Recorder::default();
        apply_entry(&cache, &inv, &f, &entry("a", None, "x", EntryKind::File, 1)).unwrap();
        let ino = cache.lookup(f.ino, "x").unwrap().unwrap();
        let mut n = cache.node(ino).unwrap().unwrap();
        n.pending = 1;
        let mut t = Txn::default();
        t.put_node(&n);
        cache.apply(t).unwrap();
        assert!(
            !apply_entry(
                &cache,
                &inv,
                &f,
                &entry("a", None, "remote", EntryKind::File, 9)
            )
            .unwrap()
        );
        assert_eq!(cache.lookup(f.ino, "x").unwrap(), Some(ino));
    }
}
