//! A device for the agent's tests: a cache in a temporary directory, with its filesystem,
//! uploader and feed, over a [`MemoryCloud`]. No FUSE, no network: each test drives the
//! parts itself, and what would run in the background runs when the test says so.

use crate::agent::cache::Cache;
use crate::agent::feed::Feed;
use crate::agent::fetch::{BlockSource, Fetcher};
use crate::agent::fs::{Attr, Fs, FsError, Owner};
use crate::agent::invalidate::Recorder;
use crate::agent::journal::{Journal, Settle};
use crate::agent::remote::memory::{MemoryCloud, MemoryRemote};
use crate::agent::remote::{ClientError, CloudBlocks, Remote};
use crate::agent::status::Counters;
use crate::agent::uploader::{KnownInCloud, Offered, Played, Uploader};
use crate::crypto::seal::CacheKey;
use std::sync::Arc;

/// A directory for a test device's cache, in memory where there is a tmpfs: a test's
/// syncs then cost nothing.
fn temp_home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("meshfs-test-device")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

/// The owner every test file shows.
pub const OWNER: Owner = Owner {
    uid: 1000,
    gid: 1000,
};

pub struct TestDevice {
    pub cache: Arc<Cache>,
    pub remote: Arc<MemoryRemote>,
    pub fs: Arc<Fs>,
    pub inv: Arc<Recorder>,
    pub counters: Arc<Counters>,
    pub uploader: Uploader,
    pub feed: Feed,
    dir: tempfile::TempDir,
    /// The cache key of a device whose cache is sealed (a protected home).
    seal: Option<Arc<CacheKey>>,
}

impl TestDevice {
    /// Device `id` of `user`, fetching blocks from the cloud only.
    pub fn new(cloud: &Arc<MemoryCloud>, user: &str, id: &str) -> Self {
        Self::with_sources(cloud, user, id, Vec::new())
    }

    /// Device `id` of `user`, asking `peers` for blocks before the cloud.
    pub fn with_sources(
        cloud: &Arc<MemoryCloud>,
        user: &str,
        id: &str,
        peers: Vec<Arc<dyn BlockSource>>,
    ) -> Self {
        Self::open(
            temp_home(),
            cloud.device(user, id),
            peers,
            Settle::NONE,
            None,
        )
    }

    /// Device `id` of `user` on a protected home: its cache is sealed.
    pub fn sealed(cloud: &Arc<MemoryCloud>, user: &str, id: &str) -> Self {
        let seal = Some(Arc::new(CacheKey::generate().0));
        Self::open(
            temp_home(),
            cloud.device(user, id),
            Vec::new(),
            Settle::NONE,
            seal,
        )
    }

    /// Device `id` of `user` whose files' commits settle before they upload.
    pub fn settling(cloud: &Arc<MemoryCloud>, user: &str, id: &str, settle: Settle) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::open(dir, cloud.device(user, id), Vec::new(), settle, None)
    }

    fn open(
        dir: tempfile::TempDir,
        remote: Arc<MemoryRemote>,
        mut sources: Vec<Arc<dyn BlockSource>>,
        settle: Settle,
        seal: Option<Arc<CacheKey>>,
    ) -> Self {
        let cache = Arc::new(Cache::open_with(dir.path(), seal.clone()).expect("cache"));
        let counters = Arc::new(Counters::default());
        let inv = Arc::new(Recorder::default());
        let journal = Arc::new(Journal::with_settle(settle));
        let dyn_remote: Arc<dyn Remote> = remote.clone();
        sources.push(Arc::new(CloudBlocks(Arc::clone(&dyn_remote))));
        let fetcher = Arc::new(Fetcher::new(
            Arc::clone(&cache),
            sources,
            Arc::clone(&counters),
        ));
        let fs = Arc::new(Fs::new(
            Arc::clone(&cache),
            fetcher,
            Arc::clone(&journal),
            Arc::clone(&counters),
            OWNER,
        ));
        let uploader = Uploader {
            cache: Arc::clone(&cache),
            remote: Arc::clone(&dyn_remote),
            journal,
            inv: inv.clone(),
            counters: Arc::clone(&counters),
            in_cloud: KnownInCloud::default(),
            offered: Offered::default(),
        };
        let feed = Feed {
            cache: Arc::clone(&cache),
            remote: dyn_remote,
            inv: inv.clone(),
            counters: Arc::clone(&counters),
            members_changed: Arc::new(|_| {}),
            relist: Arc::default(),
        };
        TestDevice {
            cache,
            remote,
            fs,
            inv,
            counters,
            uploader,
            feed,
            dir,
            seal,
        }
    }

    /// The same device after its agent stopped (or crashed: nothing is flushed first) and
    /// started again on the same cache.
    pub fn restart(self) -> Self {
        let TestDevice {
            cache,
            remote,
            fs,
            inv,
            counters,
            uploader,
            feed,
            dir,
            seal,
        } = self;
        drop((fs, uploader, feed, inv, counters, cache));
        // sled's flusher thread lets go of the database a moment after the drop.
        for _ in 0..100 {
            match Cache::open_with(dir.path(), seal.clone()) {
                Ok(c) => {
                    drop(c);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        let d = Self::open(dir, remote, Vec::new(), Settle::NONE, seal);
        d.cache.clear_staging();
        d.cache.sweep_unlinked().expect("sweep");
        d
    }

    /// Plays the journal until it is empty (but for files still settling), or until the
    /// cloud makes it wait: then that error. Rounds that must be played again at once are, a bounded number of times.
    pub async fn upload(&self) -> Result<(), ClientError> {
        self.uploader.check_journal().await;
        for _ in 0..64 {
            match self.uploader.round().await.expect("local store") {
                None => return Ok(()),
                Some(Played::Wait(e)) => return Err(e),
                Some(Played::Settling(_)) => return Ok(()),
                Some(Played::Again | Played::Done) => {}
            }
        }
        panic!("the journal did not drain in 64 rounds");
    }

    /// Reads the folder list and every folder's feed once, without waiting.
    pub async fn sync(&self) -> usize {
        let mut applied = 0;
        for f in self.feed.folders().await.expect("folders") {
            applied += self.feed.step(&f, 0).await.expect("feed");
        }
        applied
    }

    /// The inode at `path` ("Docs/a/b"), as a lookup chain from the mount root; lookups
    /// are given back to the filesystem as the kernel would.
    pub fn ino(&self, path: &str) -> Result<u64, FsError> {
        let mut ino = crate::agent::cache::ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.fs.lookup(ino, part)?.ino;
            self.fs.forget(ino, 1)?;
        }
        Ok(ino)
    }

    /// The parent's inode and the last name of `path`. Like the kernel's path walk, it
    /// wants the parent to be a directory before the filesystem hears of the name.
    pub fn parent(&self, path: &str) -> Result<(u64, String), FsError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let ino = self.ino(dir)?;
        if self.fs.getattr(ino)?.kind != crate::proto::EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok((ino, name.to_string()))
    }

    pub fn stat(&self, path: &str) -> Result<Attr, FsError> {
        self.fs.getattr(self.ino(path)?)
    }

    /// Creates or replaces the file at `path` with `data`, as `echo > path` does: open
    /// with `O_TRUNC` (or create), write, close.
    pub async fn write(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let fh = self.open_or_create(path, true).await?;
        self.fs.write(fh, 0, data)?;
        self.close(fh).await
    }

    /// Opens the file at `path` for writing (emptied when `truncate`), made if missing.
    async fn open_or_create(&self, path: &str, truncate: bool) -> Result<u64, FsError> {
        let (parent, name) = self.parent(path)?;
        match self.fs.lookup(parent, &name) {
            Ok(a) => {
                self.fs.forget(a.ino, 1)?;
                Ok(self.fs.open(a.ino, true, truncate).await?.fh)
            }
            Err(FsError::NotFound) => {
                let (a, o) = self.fs.create(parent, &name, 0o644).await?;
                self.fs.forget(a.ino, 1)?;
                Ok(o.fh)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `data` at `offset` into the existing file at `path`, then closes it.
    pub async fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let fh = self.fs.open(self.ino(path)?, true, false).await?.fh;
        self.fs.write(fh, offset, data)?;
        self.close(fh).await
    }

    /// `close(2)` of a handle: the flush, then the release.
    pub async fn close(&self, fh: u64) -> Result<(), FsError> {
        let flushed = self.fs.flush(fh).await;
        if let Some(closing) = self.fs.close(fh)? {
            self.fs.finish_write(closing).await?;
        }
        flushed
    }

    /// The whole content of the file at `path`.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let fh = self.fs.open_read(self.ino(path)?)?.fh;
        let mut out = Vec::new();
        loop {
            let chunk = self.fs.read(fh, out.len() as u64, 128 << 10).await?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.fs.close(fh)?;
        Ok(out)
    }

    /// Appends `data` to the file at `path`, made if missing (`O_APPEND | O_CREAT`).
    pub async fn append(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let fh = self.open_or_create(path, false).await?;
        let size = self.fs.getattr(self.ino(path)?)?.size;
        self.fs.write(fh, size, data)?;
        self.close(fh).await
    }

    /// Opens the existing file at `path` for writing, sets its length, and closes it.
    pub async fn truncate(&self, path: &str, len: u64) -> Result<(), FsError> {
        let ino = self.ino(path)?;
        let fh = self.fs.open(ino, true, false).await?.fh;
        let set = self.fs.truncate(ino, len).await.map(drop);
        let closed = self.close(fh).await;
        set.and(closed)
    }

    /// The names in the directory at `path`, without the dots.
    pub fn list(&self, path: &str) -> Result<Vec<String>, FsError> {
        let ino = self.ino(path)?;
        let fh = self.fs.opendir(ino)?;
        let mut names = Vec::new();
        self.fs.readdir(fh, ino, 0, |e| {
            if e.name != "." && e.name != ".." {
                names.push(e.name.to_string());
            }
            false
        })?;
        self.fs.releasedir(fh);
        Ok(names)
    }

    pub fn mkdir(&self, path: &str) -> Result<Attr, FsError> {
        let (parent, name) = self.parent(path)?;
        let a = self.fs.mkdir(parent, &name, 0o755)?;
        self.fs.forget(a.ino, 1)?;
        Ok(a)
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (p, n) = self.parent(from)?;
        let (q, m) = self.parent(to)?;
        self.fs.rename(p, &n, q, &m, false)
    }

    pub fn unlink(&self, path: &str) -> Result<(), FsError> {
        let (p, n) = self.parent(path)?;
        self.fs.unlink(p, &n)
    }

    pub fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let (p, n) = self.parent(path)?;
        self.fs.rmdir(p, &n)
    }
}

/// Ann's second device (`dev-b`), which knows the folder.
pub async fn second_device(cloud: &Arc<MemoryCloud>) -> TestDevice {
    let b = TestDevice::new(cloud, "ann", "dev-b");
    b.sync().await;
    b
}

/// A cloud with user `ann` (quota 1 GB) owning folder "Docs", and one device of hers that
/// knows the folder.
pub async fn one_device() -> (Arc<MemoryCloud>, String, TestDevice) {
    let cloud = MemoryCloud::new();
    cloud.add_user("ann", 1_000_000_000);
    let folder = cloud.create_folder("ann", "Docs", false);
    let a = TestDevice::new(&cloud, "ann", "dev-a");
    a.sync().await;
    (cloud, folder, a)
}
