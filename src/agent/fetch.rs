//! Gets blocks that are not on the device: one request in flight per block however many
//! readers wait for it, every block checked against its hash before it is stored, sources
//! tried in order until one gives the right bytes.

use crate::agent::cache::Cache;
use crate::agent::status::Counters;
use crate::proto::BlockHash;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a source could not give a block.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source unreachable: {0}")]
    Unreachable(String),
    #[error("source does not have the block: {0}")]
    Missing(String),
}

/// A block a reader needs, and the file it belongs to (a peer that shares only one folder
/// serves only blocks of that folder's files, so the asker names the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub folder: String,
    /// The cloud entry of the file; empty for a file never committed.
    pub entry: String,
    pub hash: BlockHash,
    /// Devices the cloud says hold the file's content: asked before other peers. A hint
    /// for this device's sources, never sent to a peer.
    pub holders: Vec<String>,
}

/// Somewhere blocks come from: peers (direct or relayed) and the cloud.
pub trait BlockSource: Send + Sync {
    fn name(&self) -> &str;
    fn get<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>>;
    /// The block this source just gave for `want` did not match its hash. Returns whether
    /// to ask it again: a source made of several peers drops the one that lied and may
    /// have another that holds the block.
    fn rejected(&self, _want: &Want) -> bool {
        false
    }
    /// Several blocks at once (`None` for one it could not give): one request where the
    /// source can batch them, else one each, all in flight together.
    fn get_many<'a>(&'a self, wants: &'a [Want]) -> BoxFuture<'a, Vec<Option<Bytes>>> {
        async move {
            futures::future::join_all(wants.iter().map(|w| self.get(w)))
                .await
                .into_iter()
                .map(Result::ok)
                .collect()
        }
        .boxed()
    }
}

/// Times one source is asked for one block after it gave a wrong one.
const RETRIES_AFTER_A_LIE: usize = 3;

/// Why a block could not be had from any source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No source could be reached (the device is offline).
    #[error("no source of block {0} is reachable")]
    Unreachable(BlockHash),
    /// Sources answered, but none with the right bytes (or none had it).
    #[error("no source gave block {0} with the right content")]
    NotFound(BlockHash),
    #[error("the local block store failed")]
    Local,
}

pub type Pending = Shared<BoxFuture<'static, Result<(), FetchError>>>;

/// Blocks asked for at most in one [`Fetcher::ensure_many`].
pub const BATCH: usize = crate::proto::MAX_BATCH_BLOCKS;

pub struct Fetcher {
    cache: Arc<Cache>,
    sources: Vec<Arc<dyn BlockSource>>,
    inflight: Mutex<HashMap<BlockHash, Pending>>,
    counters: Arc<Counters>,
}

impl Fetcher {
    pub fn new(
        cache: Arc<Cache>,
        sources: Vec<Arc<dyn BlockSource>>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            cache,
            sources,
            inflight: Mutex::new(HashMap::new()),
            counters,
        }
    }

    /// Makes sure the block is in the local cache, fetching it if needed.
    pub async fn ensure(self: &Arc<Self>, want: Want) -> Result<(), FetchError> {
        match self.pending(want) {
            Some(p) => p.await,
            None => Ok(()),
        }
    }

    /// The fetch that brings the block, joined or started (counted as in flight from now
    /// on, before it is first polled); `None` if the block is here. Read-ahead spawns it,
    /// so that a read arriving first joins it rather than fetching the block again.
    pub fn pending(self: &Arc<Self>, want: Want) -> Option<Pending> {
        let hash = want.hash;
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock: a fetch finishing now stores the block before it
        // leaves the map, so the block is either seen here or joined there.
        if let Some(p) = map.get(&hash) {
            Some(p.clone())
        } else if self.cache.has_block(&hash) {
            None
        } else {
            let this = Arc::clone(self);
            let p = async move {
                let r = this.fetch(&want).await;
                this.inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&hash);
                r
            }
            .boxed()
            .shared();
            map.insert(hash, p.clone());
            Some(p)
        }
    }

    /// Whether the block is here or on its way.
    pub fn has_or_awaits(&self, hash: &BlockHash) -> bool {
        self.cache.has_block(hash)
            || self
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(hash)
    }

    /// Starts bringing all these blocks to the device, asking each source for all it still
    /// lacks in one go (a batch, where the source can) before the next, and the last ones
    /// one by one as [`Fetcher::ensure`] would. For read-ahead over many small files: one
    /// request instead of one per file. Blocks here or in flight already are left out; the
    /// rest count as in flight from now on, so a read of one of them joins the batch.
    /// Returns the batch to run (spawn it), if there is one; at most [`BATCH`] blocks.
    pub fn start_many(self: &Arc<Self>, wants: Vec<Want>) -> Option<Pending> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut mine = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for w in wants {
            if mine.len() == BATCH {
                break;
            }
            if !map.contains_key(&w.hash) && !self.cache.has_block(&w.hash) && seen.insert(w.hash) {
                mine.push(w);
            }
        }
        if mine.is_empty() {
            return None;
        }
        let this = Arc::clone(self);
        let hashes: Vec<BlockHash> = mine.iter().map(|w| w.hash).collect();
        let registered = hashes.clone();
        let batch: Pending = async move {
            this.fetch_many(mine).await;
            let mut map = this.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for h in &hashes {
                map.remove(h);
            }
            Ok(())
        }
        .boxed()
        .shared();
        for h in registered {
            map.insert(h, batch.clone());
        }
        Some(batch)
    }

    async fn fetch_many(&self, mut wants: Vec<Want>) {
        for source in &self.sources {
            if wants.is_empty() {
                return;
            }
            let got = source.get_many(&wants).await;
            let mut left = Vec::new();
            for (w, data) in wants
                .into_iter()
                .zip(got.into_iter().chain(std::iter::repeat(None)))
            {
                let kept = match data {
                    Some(d) => self.keep(&w, d).await.unwrap_or(false),
                    None => false,
                };
                if !kept {
                    left.push(w);
                }
            }
            wants = left;
        }
        // What no batch gave, each on its own, with every source's retries.
        for w in wants {
            let _ = self.fetch(&w).await;
        }
    }

    async fn fetch(&self, want: &Want) -> Result<(), FetchError> {
        let hash = want.hash;
        let mut reached_any = false;
        for source in &self.sources {
            for _ in 0..=RETRIES_AFTER_A_LIE {
                match source.get(want).await {
                    Ok(data) => {
                        if self.keep(want, data).await? {
                            return Ok(());
                        }
                        reached_any = true;
                        Counters::add(&self.counters.blocks_rejected, 1);
                        let again = source.rejected(want);
                        tracing::warn!(source = source.name(), %hash, again, "source sent a block that does not match its hash; trying another");
                        if again {
                            continue;
                        }
                    }
                    Err(SourceError::Missing(why)) => {
                        reached_any = true;
                        tracing::warn!(source = source.name(), %hash, %why, "source does not have the block");
                    }
                    Err(SourceError::Unreachable(why)) => {
                        tracing::debug!(source = source.name(), %hash, %why, "source unreachable");
                    }
                }
                break;
            }
        }
        Counters::add(&self.counters.blocks_unavailable, 1);
        Err(if reached_any {
            FetchError::NotFound(hash)
        } else {
            FetchError::Unreachable(hash)
        })
    }

    /// Stores `data` as the block `want` names, held for its folder, if it is that block;
    /// false if it is not. Checked and stored on the blocking pool: hashing 1 MiB takes a
    /// fraction of a millisecond, too long to hold a runtime worker.
    async fn keep(&self, want: &Want, data: Bytes) -> Result<bool, FetchError> {
        let (cache, len) = (Arc::clone(&self.cache), data.len() as u64);
        let (hash, folder) = (want.hash, want.folder.clone());
        let stored = tokio::task::spawn_blocking(move || {
            hash.matches(&data).then(|| {
                cache.store_block(&hash, data, false)?;
                cache.mark_held(&hash, &folder)
            })
        })
        .await
        .map_err(|_| FetchError::Local)?;
        match stored {
            None => Ok(false),
            Some(Ok(())) => {
                Counters::add(&self.counters.blocks_fetched, 1);
                Counters::add(&self.counters.bytes_fetched, len);
                Ok(true)
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "storing a fetched block");
                Err(FetchError::Local)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves fixed bytes for every hash and counts calls.
    struct Fixed {
        data: Bytes,
        calls: AtomicUsize,
    }

    impl BlockSource for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn get<'a>(&'a self, _: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let data = self.data.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(data)
            }
            .boxed()
        }
    }

    struct Down;
    impl BlockSource for Down {
        fn name(&self) -> &str {
            "down"
        }
        fn get<'a>(&'a self, _: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
            async { Err(SourceError::Unreachable("down".into())) }.boxed()
        }
    }

    fn want(hash: BlockHash) -> Want {
        Want {
            folder: "f".into(),
            entry: "e".into(),
            hash,
            holders: Vec::new(),
        }
    }

    fn fetcher(dir: &std::path::Path, sources: Vec<Arc<dyn BlockSource>>) -> Arc<Fetcher> {
        let cache = Arc::new(Cache::open(dir).unwrap());
        Arc::new(Fetcher::new(cache, sources, Arc::new(Counters::default())))
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let good = Arc::new(Fixed {
            data: Bytes::from_static(b"block"),
            calls: AtomicUsize::new(0),
        });
        let f = fetcher(dir.path(), vec![good.clone()]);
        let h = BlockHash::of(b"block");
        let all = futures::future::join_all((0..8).map(|_| f.ensure(want(h)))).await;
        assert!(all.iter().all(Result::is_ok));
        assert_eq!(good.calls.load(Ordering::SeqCst), 1);
        assert_eq!(f.cache.load_block(&h).unwrap().unwrap(), b"block");
    }

    #[tokio::test]
    async fn a_lying_source_is_skipped_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let liar = Arc::new(Fixed {
            data: Bytes::from_static(b"wrong"),
            calls: AtomicUsize::new(0),
        });
        let good = Arc::new(Fixed {
            data: Bytes::from_static(b"right"),
            calls: AtomicUsize::new(0),
        });
        let f = fetcher(dir.path(), vec![liar, good]);
        let h = BlockHash::of(b"right");
        f.ensure(want(h)).await.unwrap();
        assert_eq!(f.cache.load_block(&h).unwrap().unwrap(), b"right");
        assert_eq!(
            f.counters
                .blocks_rejected
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// Like several peers behind one source: the first answer lies, and once told, the
    /// source asks another peer, which has the right bytes.
    struct LiarThenHonest {
        calls: AtomicUsize,
        told: AtomicUsize,
    }

    impl BlockSource for LiarThenHonest {
        fn name(&self) -> &str {
            "peers"
        }
        fn get<'a>(&'a self, _: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
            let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move { Ok(Bytes::from_static(if first { b"wrong" } else { b"right" })) }.boxed()
        }
        fn rejected(&self, _: &Want) -> bool {
            self.told.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    #[tokio::test]
    async fn a_source_that_dropped_a_liar_is_asked_again_before_the_next_source() {
        let dir = tempfile::tempdir().unwrap();
        let peers = Arc::new(LiarThenHonest {
            calls: AtomicUsize::new(0),
            told: AtomicUsize::new(0),
        });
        let cloud = Arc::new(Fixed {
            data: Bytes::from_static(b"right"),
            calls: AtomicUsize::new(0),
        });
        let f = fetcher(dir.path(), vec![peers.clone(), cloud.clone()]);
        let h = BlockHash::of(b"right");
        f.ensure(want(h)).await.unwrap();
        assert_eq!(f.cache.load_block(&h).unwrap().unwrap(), b"right");
        assert_eq!(peers.told.load(Ordering::SeqCst), 1);
        assert_eq!(peers.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            cloud.calls.load(Ordering::SeqCst),
            0,
            "the cloud was not needed"
        );
    }

    /// A source that lies every time and always asks to be asked again gets a bounded
    /// number of tries, then the next source answers.
    struct AlwaysLying(AtomicUsize);

    impl BlockSource for AlwaysLying {
        fn name(&self) -> &str {
            "liars"
        }
        fn get<'a>(&'a self, _: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            async { Ok(Bytes::from_static(b"wrong")) }.boxed()
        }
        fn rejected(&self, _: &Want) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn retries_after_lies_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let liars = Arc::new(AlwaysLying(AtomicUsize::new(0)));
        let cloud = Arc::new(Fixed {
            data: Bytes::from_static(b"right"),
            calls: AtomicUsize::new(0),
        });
        let f = fetcher(dir.path(), vec![liars.clone(), cloud.clone()]);
        let h = BlockHash::of(b"right");
        f.ensure(want(h)).await.unwrap();
        assert_eq!(liars.0.load(Ordering::SeqCst), 1 + RETRIES_AFTER_A_LIE);
        assert_eq!(cloud.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn only_liars_give_not_found_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let liar = Arc::new(Fixed {
            data: Bytes::from_static(b"wrong"),
            calls: AtomicUsize::new(0),
        });
        let f = fetcher(dir.path(), vec![Arc::new(Down), liar]);
        let h = BlockHash::of(b"right");
        assert_eq!(f.ensure(want(h)).await, Err(FetchError::NotFound(h)));
        assert!(!f.cache.has_block(&h));
        let other = tempfile::tempdir().unwrap();
        let f = fetcher(other.path(), vec![Arc::new(Down)]);
        assert_eq!(f.ensure(want(h)).await, Err(FetchError::Unreachable(h)));
    }
}
