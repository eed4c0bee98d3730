//! The agent's durable local state: metadata, the journal and the block store. This is the
//! only module that names sled.
//!
//! One sled tree holds everything, under typed key prefixes, so that one `sled::Batch`
//! changes a node, its directory link and its journal record atomically:
//!
//! ```text
//! n/<ino:u64 BE>                     Node (JSON)
//! c/<parent:u64 BE><name bytes>      child ino (u64 BE), then 1 if it is a directory
//! e/<folder>/<entry>                 ino of a cloud entry (u64 BE)
//! f/<folder>                         FolderInfo (JSON)
//! j/<seq:u64 BE>                     JournalRecord (JSON)
//! m/<name>                           small values (feed cursors)
//! h/<hash><folder>                   the block is held for the folder (`cache/held.rs`)
//! ```
//!
//! Blocks live as files named by their hash under `blocks/` (see `cache/blocks.rs`), kept
//! under the device's limit by `cache/evict.rs`; `views/` holds contiguous copies of files
//! for passthrough opens (`cache/views.rs`).

mod blocks;
mod evict;
mod held;
pub mod merge;
mod protect;
pub use protect::seal_store;
mod staging;
pub use staging::StagingFile;
mod views;

pub use evict::{Evicted, Writing, keeps_blocks};
pub use views::View;

use crate::crypto::seal::CacheKey;
use crate::proto::{BlockHash, BlockRef, EntryKind};
use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The mount root's inode.
pub const ROOT: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("metadata store")]
    Db(#[from] sled::Error),
    #[error("block store at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in the metadata store")]
    Corrupt(#[from] serde_json::Error),
    #[error("{0}")]
    Seal(&'static str),
    #[error("flushing the metadata store")]
    Flush(#[from] tokio::task::JoinError),
}

impl CacheError {
    /// Whether another process (a running agent) holds the store.
    pub fn is_busy(&self) -> bool {
        matches!(self, CacheError::Db(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// One file, directory or symlink as this device knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    /// The Mesh Folder this node belongs to; `None` only for the mount root.
    pub folder: Option<String>,
    /// The cloud entry id; `None` for the mount root and for a folder's root.
    pub entry: Option<String>,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    /// Set by `utimensat`, kept on this device only; the mtime when never set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_ns: Option<i64>,
    /// When this device last changed the node's metadata or content (or applied a change
    /// to it); the mtime when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
    /// The cloud version this node last agreed with; 0 when never uploaded.
    pub version: u64,
    pub manifest: Vec<BlockRef>,
    pub target: Option<String>,
    /// Journal records not yet uploaded for this node. While above zero, local state wins
    /// over the feed, and the upload's `If-Match` finds any race.
    pub pending: u32,
    /// False once unlinked or replaced here; kept for open handles and the upload.
    pub linked: bool,
    /// Devices the cloud names as holding this version's content (where a reader asks
    /// first); empty when the cloud has it all, or the version was written here.
    #[serde(default)]
    pub holders: Vec<String>,
    /// Kept on this device whatever the cache limit: `meshfs pin`, on the file or on a
    /// folder above it when it was made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

impl Node {
    /// A directory that is not a cloud entry: the mount root or a Mesh Folder's root. Its
    /// mtime is when this device first saw it.
    pub fn fixed_dir(ino: u64, name: &str, folder: Option<String>) -> Self {
        Node {
            ino,
            parent: ROOT,
            name: name.to_string(),
            folder,
            entry: None,
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            mtime_ns: crate::proto::now_ns(),
            atime_ns: None,
            ctime_ns: None,
            version: 0,
            manifest: Vec::new(),
            target: None,
            pending: 0,
            linked: true,
            holders: Vec::new(),
            pinned: false,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    /// Marks the node changed now (its ctime), and its content too (its mtime) when
    /// `content`: what a directory gets when an entry is made, removed or renamed in it.
    pub fn touch(&mut self, content: bool) {
        let now = crate::proto::now_ns();
        if content {
            self.mtime_ns = now;
        }
        self.ctime_ns = Some(now);
    }
}

/// A Mesh Folder as this device knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FolderInfo {
    pub id: String,
    pub name: String,
    pub ino: u64,
    pub device_only: bool,
    /// Whether this user may change the folder (owner or writer); a reader's mount refuses
    /// every change at once.
    #[serde(default = "writable_by_default")]
    pub writable: bool,
    /// The folder's membership epoch as last seen (see `proto::Folder::epoch`).
    #[serde(default)]
    pub epoch: u64,
}

fn writable_by_default() -> bool {
    true
}

/// A node's state as one local operation left it: where it is, its metadata and its
/// content manifest (blocks are immutable and stored locally, so the snapshot stays whole).
/// Replaying snapshots in order replays the device's history step by step, so a swap of two
/// names or a rename over a file reaches the cloud as the same valid sequence of states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The parent's inode; its cloud entry id is looked up at upload time.
    pub parent: u64,
    pub name: String,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub manifest: Vec<BlockRef>,
    pub target: Option<String>,
    /// This step replaced what was at (parent, name): `rename` over an existing file.
    pub replace: bool,
    /// The node it replaced here. It stays, unlinked and counted as pending, until this
    /// step reached the cloud (which then tombstones its entry): otherwise a replay of the
    /// feed after a crash could bring its entry back as a live file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<u64>,
}

impl Snapshot {
    pub fn of(n: &Node, replaced: Option<u64>) -> Self {
        Self {
            parent: n.parent,
            name: n.name.clone(),
            mode: n.mode,
            size: n.size,
            mtime_ns: n.mtime_ns,
            manifest: n.manifest.clone(),
            target: n.target.clone(),
            replace: replaced.is_some(),
            replaced,
        }
    }
}

/// A local change waiting to reach the cloud. Replaying a record twice is harmless: the
/// cloud names our device as the author of what it already has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JournalOp {
    /// Create or update the node's entry to this state.
    Put { ino: u64, snap: Snapshot },
    /// Delete the node's entry.
    Delete { ino: u64 },
}

impl JournalOp {
    pub fn ino(&self) -> u64 {
        match self {
            JournalOp::Put { ino, .. } | JournalOp::Delete { ino } => *ino,
        }
    }
}

const JOURNAL_ID_KEY: &[u8] = b"journal-id";
/// The highest journal record that a `steps` request of any run may have carried.
const OFFERED_KEY: &[u8] = b"offered";
/// On a sealed cache: a record sealed with its key, which a wrong key does not open.
const SEAL_CHECK_KEY: &[u8] = b"seal-check";

fn node_key(ino: u64) -> Vec<u8> {
    let mut k = b"n/".to_vec();
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

fn child_prefix(parent: u64) -> Vec<u8> {
    let mut k = b"c/".to_vec();
    k.extend_from_slice(&parent.to_be_bytes());
    k
}

fn child_key(parent: u64, name: &str) -> Vec<u8> {
    let mut k = child_prefix(parent);
    k.extend_from_slice(name.as_bytes());
    k
}

fn entry_key(folder: &str, entry: &str) -> Vec<u8> {
    format!("e/{folder}/{entry}").into_bytes()
}

fn journal_key(seq: u64) -> Vec<u8> {
    let mut k = b"j/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn u64_of(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// A directory link's value: the child's inode, then whether it is a directory (links
/// written before that byte existed have only the inode).
fn link_value(child: &Node) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&child.ino.to_be_bytes());
    v[8] = u8::from(child.is_dir());
    v
}

fn linked_ino(v: &[u8]) -> Option<u64> {
    u64_of(v.get(..8)?)
}

/// A set of changes applied atomically by [`Cache::apply`].
#[derive(Default)]
pub struct Txn {
    /// Records written (a value) or removed (none), by key.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Links made (a link value) or removed (none), by directory and name: the cache
    /// makes their keys (a sealed one tags the names).
    links: Vec<(u64, String, Option<[u8; 9]>)>,
    /// The nodes the batch writes or removes, to drop from the decoded-node cache.
    nodes: Vec<u64>,
    /// The highest journal record the batch appends.
    journal_seq: Option<u64>,
    /// The directories whose links the batch changes.
    parents: Vec<u64>,
    /// Blocks the batch may make kept (see `cache/evict.rs`): those of nodes with changes
    /// pending, pinned or held elsewhere, and of journal snapshots.
    kept: Vec<BlockHash>,
    /// Whether the batch writes a pinned node (whose content may now be missing).
    pins: bool,
    /// Folders the batch writes, and whether each may be changed (removed: true).
    folders: Vec<(String, bool)>,
}

impl Txn {
    pub fn put_node(&mut self, node: &Node) {
        // A Node of plain fields always serializes.
        let v = serde_json::to_vec(node).unwrap_or_default();
        self.writes.push((node_key(node.ino), Some(v)));
        self.nodes.push(node.ino);
        if node.pending > 0 || node.pinned || !node.holders.is_empty() {
            self.kept.extend(node.manifest.iter().map(|b| b.hash));
        }
        self.pins |= node.pinned;
    }
    pub fn remove_node(&mut self, ino: u64) {
        self.writes.push((node_key(ino), None));
        self.nodes.push(ino);
    }
    /// Links `child` into `parent` as `name`.
    pub fn link(&mut self, parent: u64, name: &str, child: &Node) {
        self.links
            .push((parent, name.to_string(), Some(link_value(child))));
        self.parents.push(parent);
    }
    pub fn unlink(&mut self, parent: u64, name: &str) {
        self.links.push((parent, name.to_string(), None));
        self.parents.push(parent);
    }
    pub fn index_entry(&mut self, folder: &str, entry: &str, ino: u64) {
        self.writes
            .push((entry_key(folder, entry), Some(ino.to_be_bytes().to_vec())));
    }
    pub fn unindex_entry(&mut self, folder: &str, entry: &str) {
        self.writes.push((entry_key(folder, entry), None));
    }
    pub fn put_folder(&mut self, f: &FolderInfo) {
        let v = serde_json::to_vec(f).unwrap_or_default();
        self.writes
            .push((format!("f/{}", f.id).into_bytes(), Some(v)));
        self.folders.push((f.id.clone(), f.writable));
    }
    pub fn remove_folder(&mut self, id: &str) {
        self.writes.push((format!("f/{id}").into_bytes(), None));
        self.writes
            .push((format!("m/cursor/{id}").into_bytes(), None));
        self.folders.push((id.to_string(), true));
    }
    pub fn journal(&mut self, seq: u64, op: &JournalOp) {
        if let JournalOp::Put { snap, .. } = op {
            self.kept.extend(snap.manifest.iter().map(|b| b.hash));
        }
        let v = serde_json::to_vec(op).unwrap_or_default();
        self.writes.push((journal_key(seq), Some(v)));
        self.journal_seq = self.journal_seq.max(Some(seq));
    }
    pub fn unjournal(&mut self, seq: u64) {
        self.writes.push((journal_key(seq), None));
    }
    /// Marks directory `dir` changed now: an entry was made, removed or renamed in it.
    /// Kept on this device (a directory's times travel only when set explicitly).
    pub fn touch_dir(&mut self, cache: &Cache, dir: u64) -> Result<(), CacheError> {
        if let Some(mut d) = cache.node(dir)? {
            d.touch(true);
            self.put_node(&d);
        }
        Ok(())
    }
    pub fn set_cursor(&mut self, folder: &str, seq: u64) {
        self.writes.push((
            format!("m/cursor/{folder}").into_bytes(),
            Some(seq.to_be_bytes().to_vec()),
        ));
    }
}

/// Decoded nodes kept in memory: a big file's node holds its whole manifest, and decoding
/// it on every `read` would cost more than the read.
const DECODED_NODES: usize = 256;
/// Blocks just stored, kept in memory as well (64 MiB at most): a block fetched by
/// read-ahead is read moments later, and serving it from here saves reading its file back
/// from the disk (fetched blocks are written past the page cache). Twice the largest
/// read-ahead window, so that what read-ahead brings is still here when it is read.
const HOT_BLOCKS: usize = 64;
/// Entries remembered as tombstoned by this device until the feed confirms it.
const DEPARTED: usize = 65_536;
/// Directories whose count of subdirectories is remembered.
const SUBDIR_COUNTS: usize = 4096;
/// Directories whose children are kept sorted by name, on a sealed cache.
const SORTED_DIRS: usize = 64;

/// A directory's children as (name, inode), in name order.
type Listing = Arc<Vec<(String, u64)>>;

/// The metadata store and the block store of one device.
pub struct Cache {
    db: sled::Db,
    tree: sled::Tree,
    blocks: PathBuf,
    staging: PathBuf,
    /// Contiguous copies of files, for passthrough opens (see `cache/views.rs`).
    views: views::Views,
    /// Held across every read-modify-write of nodes and links, by whoever does it: the
    /// filesystem's operations, the uploader's bookkeeping and the feed's applying. Without
    /// it, one of them could write back a node it read before another changed it, and the
    /// other's change (a new version's manifest, say) would be lost.
    meta: Mutex<()>,
    /// Nodes as last read from or written to `tree`. Its lock is held across a miss's read
    /// of the tree and across every [`Cache::apply`], so it never keeps a stale node.
    decoded: Mutex<LruCache<u64, Arc<Node>>>,
    /// The last blocks stored, each also on disk (it enters after its file is written and
    /// leaves before its file is removed).
    hot: Mutex<LruCache<BlockHash, Bytes>>,
    /// Which blocks are on disk, by use; see `cache/evict.rs`. Taken before `hot`.
    store: Mutex<evict::BlockStore>,
    /// The limit on the block store's bytes (0: none), and the evictor's wake-up call.
    limit: AtomicU64,
    over_limit: tokio::sync::Notify,
    /// Told when a pinned node changes, for whoever fetches what pinned files lack.
    pins_changed: tokio::sync::Notify,
    /// Whether the block store's file system takes direct writes (until it refuses one).
    direct_io: AtomicBool,
    /// The highest journal record applied, and the highest known to be on disk.
    applied_seq: AtomicU64,
    durable_seq: AtomicU64,
    /// Names this journal to the cloud, which applies each of its records once (made with
    /// the store: a new store, after the old one was lost, is a new journal).
    journal_id: std::sync::RwLock<String>,
    /// Entries this device's own steps tombstoned lately, until the feed brings the
    /// tombstone (see [`Cache::note_departed`]).
    departed: Mutex<LruCache<(String, String), ()>>,
    /// Subdirectories per directory, for its link count; an entry goes when a batch
    /// changes the directory's links.
    subdirs: Mutex<LruCache<u64, u64>>,
    /// On a sealed cache, children by name per directory (see [`Cache::sorted_children`]);
    /// an entry goes like one of `subdirs`.
    sorted: Mutex<LruCache<u64, Listing>>,
    /// The folders this user may only read, as the folder records say (kept in step by
    /// [`Cache::apply`]): asked on every change and `stat`.
    read_only: std::sync::RwLock<std::collections::HashSet<String>>,
    /// The cache key of a protected home: every record, block and staging file is
    /// sealed with it.
    seal: Option<Arc<CacheKey>>,
}

impl Cache {
    /// Opens (or creates) the cache under `dir`; makes the mount root if it is new.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        Self::open_with(dir, None)
    }

    /// Opens the cache under `dir`, sealed with `seal` if given (a protected home). A cache
    /// is sealed from its start or never: a sealed one does not open plain, nor with
    /// another key, nor does a plain one holding blocks open sealed.
    pub fn open_with(dir: &Path, seal: Option<Arc<CacheKey>>) -> Result<Self, CacheError> {
        if dir.join(protect::PLAIN_DB).exists() {
            return Err(CacheError::Seal(
                "`meshfs protect` stopped half way; run it again to finish",
            ));
        }
        let blocks = dir.join("blocks");
        let staging = dir.join("staging");
        for d in [&blocks, &staging] {
            std::fs::create_dir_all(d).map_err(|source| CacheError::Io {
                path: d.clone(),
                source,
            })?;
        }
        let db = sled::Config::new().path(dir.join("db")).open()?;
        let store = evict::BlockStore::scan(&blocks).map_err(|source| CacheError::Io {
            path: blocks.clone(),
            source,
        })?;
        let tree = db.open_tree("meshfs")?;
        let journal_id = match tree.get(JOURNAL_ID_KEY)? {
            Some(id) => String::from_utf8(id.to_vec())
                .map_err(|_| CacheError::Corrupt(serde::de::Error::custom("journal id")))?,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                tree.insert(JOURNAL_ID_KEY, id.as_bytes())?;
                id
            }
        };
        let views = views::Views::open(dir.join("views"))?;
        let cache = Self {
            db,
            tree,
            blocks,
            staging,
            views,
            meta: Mutex::new(()),
            decoded: Mutex::new(LruCache::new(
                NonZeroUsize::new(DECODED_NODES).unwrap_or(NonZeroUsize::MIN),
            )),
            hot: Mutex::new(LruCache::new(
                NonZeroUsize::new(HOT_BLOCKS).unwrap_or(NonZeroUsize::MIN),
            )),
            store: Mutex::new(store),
            limit: AtomicU64::new(0),
            over_limit: tokio::sync::Notify::new(),
            pins_changed: tokio::sync::Notify::new(),
            direct_io: AtomicBool::new(true),
            applied_seq: AtomicU64::new(0),
            durable_seq: AtomicU64::new(0),
            journal_id: std::sync::RwLock::new(journal_id),
            departed: Mutex::new(LruCache::new(
                NonZeroUsize::new(DEPARTED).unwrap_or(NonZeroUsize::MIN),
            )),
            subdirs: Mutex::new(LruCache::new(
                NonZeroUsize::new(SUBDIR_COUNTS).unwrap_or(NonZeroUsize::MIN),
            )),
            sorted: Mutex::new(LruCache::new(
                NonZeroUsize::new(SORTED_DIRS).unwrap_or(NonZeroUsize::MIN),
            )),
            read_only: std::sync::RwLock::default(),
            seal,
        };
        cache.check_seal()?;
        for f in cache.folders()? {
            cache.note_folder(&f.id, f.writable);
        }
        // Records found at start were read from disk; later ones get higher numbers.
        let found = cache.last_journal_seq()?;
        cache.applied_seq.store(found, Ordering::SeqCst);
        cache.durable_seq.store(found, Ordering::SeqCst);
        if cache.node(ROOT)?.is_none() {
            let mut t = Txn::default();
            t.put_node(&Node::fixed_dir(ROOT, "", None));
            cache.apply(t)?;
        }
        Ok(cache)
    }

    /// Checks that the cache is sealed with this key, or plain when there is none; a new
    /// sealed cache is marked as such.
    fn check_seal(&self) -> Result<(), CacheError> {
        let mark = self.tree.get(SEAL_CHECK_KEY)?;
        match (&self.seal, mark) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(CacheError::Seal(
                "this cache is sealed, but the home's secrets are not: log in again with --protect",
            )),
            (Some(key), Some(mark)) => key.open(SEAL_CHECK_KEY, &mark).map(drop).map_err(|_| {
                CacheError::Seal("this cache was sealed with another key than the home's")
            }),
            (Some(key), None) if self.blocks_bytes() == 0 => {
                self.tree
                    .insert(SEAL_CHECK_KEY, key.seal(SEAL_CHECK_KEY, b"meshfs"))?;
                self.tree.flush()?;
                Ok(())
            }
            (Some(_), None) => Err(CacheError::Seal(
                "this cache is plain: run `meshfs protect` to seal it",
            )),
        }
    }

    /// The cache key, if blocks and records are sealed.
    pub(crate) fn sealed(&self) -> Option<&CacheKey> {
        self.seal.as_deref()
    }

    /// The sled batch of a transaction's writes and links, sealed on a sealed cache: each
    /// value is bound to its key, and a link's name moves from its key into its value.
    fn batch_of(
        &self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        links: Vec<(u64, String, Option<[u8; 9]>)>,
    ) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => {
                    let v = match self.sealed() {
                        Some(key) => key.seal(&k, &v),
                        None => v,
                    };
                    batch.insert(k, v);
                }
                None => batch.remove(k),
            }
        }
        for (parent, name, link) in links {
            let k = self.child_key(parent, &name);
            match (link, self.sealed()) {
                (Some(link), Some(key)) => {
                    let mut v = link.to_vec();
                    v.extend_from_slice(name.as_bytes());
                    batch.insert(k.clone(), key.seal(&k, &v));
                }
                (Some(link), None) => batch.insert(k, &link),
                (None, _) => batch.remove(k),
            }
        }
        batch
    }

    /// The key of `parent`'s link named `name`: the name itself, or its tag when sealed.
    fn child_key(&self, parent: u64, name: &str) -> Vec<u8> {
        match self.sealed() {
            Some(key) => {
                let mut k = child_prefix(parent);
                k.extend_from_slice(&key.name_tag(name.as_bytes()));
                k
            }
            None => child_key(parent, name),
        }
    }

    /// The value `v` read at `key`, opened on a sealed cache.
    fn opened(&self, key: &[u8], v: sled::IVec) -> Result<sled::IVec, CacheError> {
        match self.sealed() {
            Some(seal) => seal
                .open(key, &v)
                .map(sled::IVec::from)
                .map_err(|_| CacheError::Seal("a record of the metadata store failed its check")),
            None => Ok(v),
        }
    }

    /// The record at `key`, opened.
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, CacheError> {
        self.tree.get(key)?.map(|v| self.opened(key, v)).transpose()
    }

    /// The records under `prefix` in key order, opened.
    fn scan(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(sled::IVec, sled::IVec), CacheError>> + '_ {
        self.tree.scan_prefix(prefix).map(move |kv| {
            let (k, v) = kv?;
            let v = self.opened(&k, v)?;
            Ok((k, v))
        })
    }

    /// A link's name and value (child inode, then maybe a directory flag) from its record
    /// under `prefix`: the name is the key's rest, or follows the value when sealed.
    fn link_of(&self, prefix: &[u8], k: &[u8], v: &[u8]) -> (String, Vec<u8>) {
        match self.sealed() {
            Some(_) => {
                let (link, name) = v.split_at(v.len().min(9));
                (String::from_utf8_lossy(name).into_owned(), link.to_vec())
            }
            None => (
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                v.to_vec(),
            ),
        }
    }

    /// Removes nodes that are unlinked and have nothing left to upload; run at start, when no
    /// descriptor can refer to them. Returns how many went.
    pub fn sweep_unlinked(&self) -> Result<usize, CacheError> {
        let mut txn = Txn::default();
        let mut n = 0;
        for kv in self.scan(b"n/") {
            let node: Node = serde_json::from_slice(&kv?.1)?;
            if !node.linked && node.pending == 0 {
                txn.remove_node(node.ino);
                n += 1;
            }
        }
        self.apply(txn)?;
        Ok(n)
    }

    /// The lock for a read-modify-write of nodes (see the `meta` field). Not reentrant:
    /// take it once per change, and never across an `.await`.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, txn: Txn) -> Result<(), CacheError> {
        let mut decoded = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        for ino in &txn.nodes {
            decoded.pop(ino);
        }
        {
            let mut subdirs = self.subdirs.lock().unwrap_or_else(|p| p.into_inner());
            let mut sorted = self.sorted.lock().unwrap_or_else(|p| p.into_inner());
            for parent in &txn.parents {
                subdirs.pop(parent);
                sorted.pop(parent);
            }
            self.tree
                .apply_batch(self.batch_of(txn.writes, txn.links))?;
        }
        if let Some(seq) = txn.journal_seq {
            self.applied_seq.fetch_max(seq, Ordering::SeqCst);
        }
        for (id, writable) in &txn.folders {
            self.note_folder(id, *writable);
        }
        // After the batch: a pass whose scan began before it is told here.
        self.note_kept(&txn.kept);
        if txn.pins {
            self.pins_changed.notify_one();
        }
        Ok(())
    }

    /// Makes everything applied so far durable.
    pub async fn flush(&self) -> Result<(), CacheError> {
        // Read before the flush: every record applied by now is in what it writes.
        let applied = self.applied_seq.load(Ordering::SeqCst);
        // Not sled's `flush_async`: it flushes on sled's own few I/O threads, and flushes
        // that overlap can take all of them, each waiting for a write only they would do
        // (spacejam/sled#1241). A blocking flush on tokio's pool leaves them free.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush()).await??;
        self.durable_seq.fetch_max(applied, Ordering::SeqCst);
        Ok(())
    }

    /// Makes sure journal record `seq` is on disk, flushing unless a flush since it was
    /// applied covered it.
    async fn make_durable(&self, seq: u64) -> Result<(), CacheError> {
        if self.durable_seq.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        self.flush().await
    }

    /// Journal records up to `seq` are about to go to the cloud: makes them durable (the
    /// cloud must never have a change that a crash here could still undo) and notes, also
    /// durably, that they may have gone: after a crash, records above the note certainly
    /// never did, not even in a request of the last run still on its way.
    pub async fn offer(&self, seq: u64) -> Result<(), CacheError> {
        if self.offered()? >= seq {
            return self.make_durable(seq).await;
        }
        self.tree.insert(OFFERED_KEY, &seq.to_be_bytes())?;
        self.flush().await
    }

    /// The highest journal record that may have gone to the cloud, in this run or an
    /// earlier one (0: none).
    pub fn offered(&self) -> Result<u64, CacheError> {
        Ok(self
            .tree
            .get(OFFERED_KEY)?
            .and_then(|v| u64_of(&v))
            .unwrap_or(0))
    }

    /// A fresh number, never given out before on this device (inodes, journal order).
    pub fn next_id(&self) -> Result<u64, CacheError> {
        // Start above ROOT.
        Ok(self.db.generate_id()? + ROOT + 1)
    }

    /// The node, to change or keep (a copy; see [`Cache::shared_node`] to only look).
    pub fn node(&self, ino: u64) -> Result<Option<Node>, CacheError> {
        Ok(self.shared_node(ino)?.map(Arc::unwrap_or_clone))
    }

    /// The node as decoded in memory, shared rather than copied: a big file's manifest is
    /// tens of kilobytes, and `read` looks at it for every 128 KiB.
    pub fn shared_node(&self, ino: u64) -> Result<Option<Arc<Node>>, CacheError> {
        let mut decoded = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = decoded.get(&ino) {
            return Ok(Some(Arc::clone(n)));
        }
        match self.get(&node_key(ino))? {
            Some(v) => {
                let n = Arc::new(serde_json::from_slice::<Node>(&v)?);
                decoded.put(ino, Arc::clone(&n));
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    /// Returns once a pinned node changed (at once if one did since the last call).
    pub async fn pins_changed(&self) {
        self.pins_changed.notified().await
    }

    /// The linked files that are pinned.
    pub fn pinned_files(&self) -> Result<Vec<Node>, CacheError> {
        let mut out = Vec::new();
        for kv in self.scan(b"n/") {
            let n: Node = serde_json::from_slice(&kv?.1)?;
            if n.pinned && n.linked && n.kind == EntryKind::File {
                out.push(n);
            }
        }
        Ok(out)
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Option<u64>, CacheError> {
        Ok(self
            .get(&self.child_key(parent, name))?
            .and_then(|v| linked_ino(&v)))
    }

    /// How many directories `parent` holds (a directory's link count is two more).
    pub fn subdirs(&self, parent: u64) -> Result<u64, CacheError> {
        let mut memo = self.subdirs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = memo.get(&parent) {
            return Ok(*n);
        }
        let mut n = 0;
        for kv in self.scan(&child_prefix(parent)) {
            let (_, v) = kv?;
            let dir = match v.get(8) {
                Some(flag) => *flag == 1,
                // Read from the tree, not through `decoded`: `apply` takes that lock
                // before this one.
                None => match linked_ino(&v).map(node_key) {
                    Some(key) => match self.get(&key)? {
                        Some(n) => serde_json::from_slice::<Node>(&n)?.is_dir(),
                        None => false,
                    },
                    None => false,
                },
            };
            n += u64::from(dir);
        }
        memo.put(parent, n);
        Ok(n)
    }

    /// The children of `parent` as (name, ino), in name order.
    pub fn children(&self, parent: u64) -> Result<Vec<(String, u64)>, CacheError> {
        if self.sealed().is_some() {
            return Ok(self.sorted_children(parent)?.to_vec());
        }
        self.links_in_key_order(parent)
    }

    /// `parent`'s links in the order of their keys: of their names on a plain cache.
    fn links_in_key_order(&self, parent: u64) -> Result<Vec<(String, u64)>, CacheError> {
        let prefix = child_prefix(parent);
        let mut out = Vec::new();
        for kv in self.scan(&prefix) {
            let (k, v) = kv?;
            let (name, link) = self.link_of(&prefix, &k, &v);
            if let Some(ino) = linked_ino(&link) {
                out.push((name, ino));
            }
        }
        Ok(out)
    }

    /// On a sealed cache, whose keys hold tags: `parent`'s children sorted by name, kept
    /// until its links change (`read`'s look-ahead asks on every open).
    fn sorted_children(&self, parent: u64) -> Result<Listing, CacheError> {
        let mut sorted = self.sorted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kids) = sorted.get(&parent) {
            return Ok(Arc::clone(kids));
        }
        let mut kids = self.links_in_key_order(parent)?;
        kids.sort_unstable();
        let kids = Arc::new(kids);
        sorted.put(parent, Arc::clone(&kids));
        Ok(kids)
    }

    /// Up to `limit` children of `parent` after the name `after`, in name order.
    pub fn children_after(
        &self,
        parent: u64,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, CacheError> {
        if self.sealed().is_some() {
            let kids = self.sorted_children(parent)?;
            let from = kids.partition_point(|(name, _)| name.as_str() <= after);
            return Ok(kids[from..].iter().take(limit).cloned().collect());
        }
        let prefix = child_prefix(parent);
        let from = child_key(parent, after);
        let mut out = Vec::new();
        let range = (std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded);
        for kv in self.tree.range::<Vec<u8>, _>(range) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            if let Some(ino) = linked_ino(&v) {
                out.push((
                    String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    ino,
                ));
            }
        }
        Ok(out)
    }

    pub fn has_children(&self, parent: u64) -> Result<bool, CacheError> {
        Ok(self
            .tree
            .scan_prefix(child_prefix(parent))
            .next()
            .transpose()?
            .is_some())
    }

    pub fn ino_of_entry(&self, folder: &str, entry: &str) -> Result<Option<u64>, CacheError> {
        Ok(self
            .get(&entry_key(folder, entry))?
            .and_then(|v| u64_of(&v)))
    }

    pub fn folders(&self) -> Result<Vec<FolderInfo>, CacheError> {
        self.scan(b"f/")
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    fn note_folder(&self, id: &str, writable: bool) {
        let mut ro = self.read_only.write().unwrap_or_else(|p| p.into_inner());
        if writable {
            ro.remove(id);
        } else {
            ro.insert(id.to_string());
        }
    }

    /// Whether this user may only read folder `id` (a reader of another user's folder).
    pub fn is_read_only(&self, id: &str) -> bool {
        self.read_only
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// The nodes of folder `id`, its root included.
    pub fn nodes_of_folder(&self, id: &str) -> Result<Vec<Node>, CacheError> {
        let mut out = Vec::new();
        for kv in self.scan(b"n/") {
            let n: Node = serde_json::from_slice(&kv?.1)?;
            if n.folder.as_deref() == Some(id) {
                out.push(n);
            }
        }
        Ok(out)
    }

    pub fn folder(&self, id: &str) -> Result<Option<FolderInfo>, CacheError> {
        match self.get(format!("f/{id}").as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn cursor(&self, folder: &str) -> Result<Option<u64>, CacheError> {
        Ok(self
            .get(format!("m/cursor/{folder}").as_bytes())?
            .and_then(|v| u64_of(&v)))
    }

    /// The oldest `limit` journal records, oldest first.
    pub fn journal(&self, limit: usize) -> Result<Vec<(u64, JournalOp)>, CacheError> {
        let mut out = Vec::new();
        for kv in self.scan(b"j/").take(limit) {
            let (k, v) = kv?;
            let seq = u64_of(&k[2..])
                .ok_or_else(|| CacheError::Corrupt(serde::de::Error::custom("journal key")))?;
            out.push((seq, serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    fn last_journal_seq(&self) -> Result<u64, CacheError> {
        let last = self
            .tree
            .scan_prefix(b"j/")
            .keys()
            .next_back()
            .transpose()?;
        Ok(last.and_then(|k| u64_of(&k[2..])).unwrap_or(0))
    }

    /// Records that a step of this device tombstoned `entry` (a delete, or a rename over
    /// it), as its node lets go of the entry. A feed batch fetched before that step may
    /// still carry the entry's last live state; without this note it would look like a new
    /// entry and come back (and take its old name from whoever holds it now). A tombstoned
    /// id never lives again, so any live state of it is old news. Kept in memory only:
    /// whatever the feed fetches after a restart is newer than the step.
    pub fn note_departed(&self, folder: &str, entry: &str) {
        let mut d = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        d.put((folder.to_string(), entry.to_string()), ());
    }

    /// Whether the feed's `entry` (a `tombstone` or a live state) is old news of an entry
    /// this device tombstoned; the tombstone itself ends the note.
    pub fn departed(&self, folder: &str, entry: &str, tombstone: bool) -> bool {
        let mut d = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        let key = (folder.to_string(), entry.to_string());
        match d.get(&key) {
            Some(_) if tombstone => {
                d.pop(&key);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The id the cloud knows this journal by (see [`crate::proto::Steps`]).
    pub fn journal_id(&self) -> String {
        let id = self.journal_id.read().unwrap_or_else(|p| p.into_inner());
        id.clone()
    }

    /// Gives the journal a new id, for when its record numbers went back (the store was
    /// restored from a copy): the cloud would take new records for old ones.
    pub fn renew_journal_id(&self) -> Result<String, CacheError> {
        let fresh = uuid::Uuid::new_v4().to_string();
        self.tree.insert(JOURNAL_ID_KEY, fresh.as_bytes())?;
        let mut id = self.journal_id.write().unwrap_or_else(|p| p.into_inner());
        *id = fresh.clone();
        Ok(fresh)
    }

    pub fn journal_len(&self) -> usize {
        self.tree.scan_prefix(b"j/").count()
    }

    /// The staging file of a node being written.
    pub fn staging_path(&self, ino: u64) -> PathBuf {
        self.staging.join(ino.to_string())
    }

    /// Removes every staging file: at start, they hold writes never committed by a close
    /// or fsync, so nothing was promised about them (committed versions live in blocks and
    /// the journal).
    pub fn clear_staging(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.staging) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed cache's files hold no name: not a link's, a node's, a folder's or a
    /// journal record's; lookups, listings in name order and listings after a name work
    /// as on a plain cache.
    #[test]
    fn a_sealed_cache_keeps_no_name_in_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(CacheKey::generate().0);
        let c = Cache::open_with(dir.path(), Some(key)).unwrap();
        let names = ["zz-qmarkerq-3", "aa-qmarkerq-1", "mm-qmarkerq-2"];
        let mut t = Txn::default();
        t.put_folder(&FolderInfo {
            id: "f".into(),
            name: "Folder-qmarkerq".into(),
            ino: 9,
            device_only: false,
            writable: true,
            epoch: 0,
        });
        for (i, name) in names.iter().enumerate() {
            let n = file(10 + i as u64, ROOT, name);
            t.put_node(&n);
            t.link(ROOT, name, &n);
            t.journal(i as u64 + 1, &JournalOp::Delete { ino: n.ino });
        }
        c.apply(t).unwrap();
        c.db.flush().unwrap();
        let mut sorted = names.map(String::from).to_vec();
        sorted.sort();
        let children: Vec<String> = c
            .children(ROOT)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(children, sorted);
        assert_eq!(c.lookup(ROOT, "mm-qmarkerq-2").unwrap(), Some(12));
        let after = c.children_after(ROOT, "aa-qmarkerq-1", 5).unwrap();
        assert_eq!(
            after,
            [("mm-qmarkerq-2".into(), 12), ("zz-qmarkerq-3".into(), 10)]
        );
        assert_eq!(c.folders().unwrap()[0].name, "Folder-qmarkerq");
        let mut t = Txn::default();
        t.unlink(ROOT, "mm-qmarkerq-2");
        c.apply(t).unwrap();
        assert_eq!(c.lookup(ROOT, "mm-qmarkerq-2").unwrap(), None);
        assert_eq!(c.children(ROOT).unwrap().len(), 2);
        drop(c);
        let mut files = vec![dir.path().to_path_buf()];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else {
                let data = std::fs::read(&p).unwrap();
                assert!(
                    memchr::memmem::find(&data, b"qmarkerq").is_none(),
                    "a name in plain in {}",
                    p.display()
                );
            }
        }
    }

    fn file(ino: u64, parent: u64, name: &str) -> Node {
        Node {
            ino,
            parent,
            name: name.into(),
            folder: Some("f".into()),
            entry: Some(format!("e{ino}")),
            kind: EntryKind::File,
            mode: 0o644,
            size: 0,
            mtime_ns: 0,
            atime_ns: None,
            ctime_ns: None,
            version: 0,
            manifest: vec![],
            target: None,
            pending: 0,
            linked: true,
            holders: vec![],
            pinned: false,
        }
    }

    #[test]
    fn a_record_offered_is_flushed_first_and_a_reopen_finds_it_and_the_note() {
        let dir = tempfile::tempdir().unwrap();
        let seq = {
            let c = Cache::open(dir.path()).unwrap();
            assert_eq!(c.offered().unwrap(), 0);
            let seq = c.next_id().unwrap();
            let mut t = Txn::default();
            t.journal(seq, &JournalOp::Delete { ino: 7 });
            c.apply(t).unwrap();
            assert!(c.durable_seq.load(Ordering::SeqCst) < seq);
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(c.offer(seq)).unwrap();
            assert!(c.durable_seq.load(Ordering::SeqCst) >= seq);
            rt.block_on(c.offer(seq - 1)).unwrap();
            assert_eq!(c.offered().unwrap(), seq, "the note never goes back");
            seq
        };
        // sled's flusher thread lets go of the database a moment after the drop.
        let c = (0..50)
            .find_map(|_| {
                Cache::open(dir.path())
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .ok()
            })
            .expect("reopen");
        assert_eq!(c.journal(usize::MAX).unwrap().len(), 1);
        assert_eq!(c.offered().unwrap(), seq);
        assert_eq!(
            c.durable_seq.load(Ordering::SeqCst),
            seq,
            "found at start, so on disk"
        );
    }

    #[test]
    fn a_txn_links_and_indexes_together_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Cache::open(dir.path()).unwrap();
            let ino = c.next_id().unwrap();
            assert!(ino > ROOT);
            let mut t = Txn::default();
            t.put_node(&file(ino, ROOT, "a"));
            t.link(ROOT, "a", &file(ino, ROOT, "a"));
            t.index_entry("f", "e1", ino);
            t.journal(7, &JournalOp::Delete { ino });
            c.apply(t).unwrap();
            c.db.flush().unwrap();
        }
        let c = Cache::open(dir.path()).unwrap();
        let ino = c.lookup(ROOT, "a").unwrap().unwrap();
        assert_eq!(c.node(ino).unwrap().unwrap().name, "a");
        assert_eq!(c.ino_of_entry("f", "e1").unwrap(), Some(ino));
        assert_eq!(c.children(ROOT).unwrap(), vec![("a".to_string(), ino)]);
        assert_eq!(
            c.journal(usize::MAX).unwrap(),
            vec![(7, JournalOp::Delete { ino })]
        );
        // Children of another parent do not leak into this listing.
        assert!(c.children(ino).unwrap().is_empty());
    }

    /// Flushes from many tasks at once all finish: sled 0.34's own `flush_async` leaves
    /// them all waiting when they overlap (spacejam/sled#1241), which stalled the uploader
    /// behind two SQLite writers' fsyncs. The rounds run on a thread of their own, so that
    /// a hang fails the test instead of hanging it.
    #[test]
    fn overlapping_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(Cache::open(dir.path()).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .build()
                .unwrap();
            rt.block_on(async {
                for round in 0..200u64 {
                    let flushes: Vec<_> = (0..16u64)
                        .map(|i| {
                            let c = Arc::clone(&c);
                            tokio::spawn(async move {
                                let mut t = Txn::default();
                                t.journal(round * 16 + i + 1, &JournalOp::Delete { ino: i });
                                c.apply(t).unwrap();
                                c.flush().await.unwrap();
                            })
                        })
                        .collect();
                    for f in flushes {
                        f.await.unwrap();
                    }
                }
            });
            let _ = done.send(());
        });
        // A bound far past the rounds' time (a second or two): only a hang reaches it.
        let r = finished.recv_timeout(std::time::Duration::from_secs(120));
        assert!(r.is_ok(), "overlapping flushes never finished");
    }
}
