//! `meshfs mount`: wires the cache, the cloud client, the fetcher, the journal's uploader,
//! the change feed, the peers and the FUSE session together, and takes them down cleanly on
//! SIGINT or SIGTERM.

mod watchdog;

pub use watchdog::watch;

use crate::agent::cache::{Cache, CacheError};
use crate::agent::client::{self, ConnectError};
use crate::agent::config::{self, ConfigError, Size};
use crate::agent::evictor;
use crate::agent::feed::Feed;
use crate::agent::fetch::{BlockSource, Fetcher, SourceError, Want};
use crate::agent::fs::fuse::{FuseAdapter, KernelInvalidator};
use crate::agent::fs::readahead;
use crate::agent::fs::{Fs, Owner};
use crate::agent::home::Home;
use crate::agent::invalidate::Invalidator;
use crate::agent::journal::Journal;
use crate::agent::peer::keylog::KeyLogFile;
use crate::agent::peer::{BlockRequest, PeerConfig, PeerMiss, PeerNet, Shelf};
use crate::agent::remote::{CloudBlocks, Remote};
use crate::agent::status::{AgentStatus, CacheReport, Counters};
use crate::agent::uploader::{KnownInCloud, Offered, Uploader};
use crate::crypto::channel::KeyLog;
use crate::proto::BlockHash;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use watchdog::{clear_stale_mount, start_watchdog, unmount};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "this device home is already mounted at {mountpoint} by meshfs process {pid}; stop it first (kill {pid}, or `systemctl --user stop meshfs-mount`)"
    )]
    AlreadyMounted { pid: u32, mountpoint: String },
    #[error(
        "another process holds this device's cache ({path}); is another `meshfs mount` of this home starting? Stop it first"
    )]
    CacheBusy { path: PathBuf },
    #[error("opening the local cache")]
    Cache(#[from] CacheError),
    #[error("serving metrics on {addr} (pick another address with --metrics-listen)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("device home {path} (`meshfs login --home` makes one)")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount point {path}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Peers(#[from] crate::agent::peer::net::PeerError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the peer key log {path} (MESHFS_PEER_KEYLOG)")]
    KeyLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting FUSE at {path}; is /dev/fuse there and are you allowed to use it?")]
    Fuse {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the agent runs on, built from a device home.
pub struct Agent {
    pub cache: Arc<Cache>,
    pub remote: Arc<dyn Remote>,
    pub counters: Arc<Counters>,
    pub journal: Arc<Journal>,
    pub fs: Arc<Fs>,
    /// The user's other devices, when peer to peer is on.
    pub peers: Option<Arc<PeerNet>>,
}

/// How the agent takes part in peer to peer transfers.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    /// A file to append every peer session's secrets to (tests and debugging only).
    pub key_log: Option<PathBuf>,
}

/// The key log `MESHFS_PEER_KEYLOG` names, with a warning: it holds what decrypts peer
/// traffic.
fn open_key_log(path: &Path) -> Result<Arc<dyn KeyLog>, MountError> {
    let log = KeyLogFile::open(path).map_err(|source| MountError::KeyLog {
        path: path.to_owned(),
        source,
    })?;
    tracing::warn!(
        path = %log.path().display(),
        "writing every peer session's secrets to this file (MESHFS_PEER_KEYLOG): whoever reads it can decrypt recorded peer traffic"
    );
    Ok(Arc::new(log))
}

/// The peers as a source of blocks, asked before the cloud.
struct PeerBlocks(Arc<PeerNet>);

impl BlockSource for PeerBlocks {
    fn name(&self) -> &str {
        "peers"
    }

    fn get<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move {
            let req = BlockRequest {
                folder: want.folder.clone(),
                entry: want.entry.clone(),
                hash: want.hash,
            };
            self.0.get(&req, &want.holders).await.map_err(|e| match e {
                PeerMiss::Unreachable => SourceError::Unreachable(e.to_string()),
                PeerMiss::Missing => SourceError::Missing(e.to_string()),
            })
        }
        .boxed()
    }

    fn rejected(&self, want: &Want) -> bool {
        self.0.reject(&want.hash)
    }
}

/// The block store as what this device serves its peers.
struct CacheShelf(Arc<Cache>);

impl Shelf for CacheShelf {
    fn in_file(&self, folder: &str, entry: &str, hash: &BlockHash) -> bool {
        let node = self
            .0
            .ino_of_entry(folder, entry)
            .ok()
            .flatten()
            .and_then(|ino| self.0.shared_node(ino).ok().flatten());
        node.is_some_and(|n| n.manifest.iter().any(|b| b.hash == *hash))
    }

    fn held_for(&self, folder: &str, hash: &BlockHash) -> bool {
        self.0.held_for(hash, folder)
    }

    fn append_block(&self, hash: &BlockHash, out: &mut Vec<u8>) -> std::io::Result<bool> {
        self.0
            .append_block(hash, out)
            .map_err(std::io::Error::other)
    }
}

/// Opens the device's cache, refusing clearly when another agent serves this home.
fn open_cache(home: &Home) -> Result<Cache, MountError> {
    if let Some(s) = AgentStatus::read_live(&home.status_file()) {
        return Err(MountError::AlreadyMounted {
            pid: s.pid,
            mountpoint: s.mountpoint,
        });
    }
    let dir = home.cache_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| MountError::Home {
            path: dir.clone(),
            source,
        })?;
    home.check_private().map_err(ConnectError::from)?;
    let seal = home.unlock().map_err(ConnectError::from)?.cache_key.clone();
    match Cache::open_with(&dir, seal) {
        Err(e) if e.is_busy() => Err(MountError::CacheBusy { path: dir }),
        other => Ok(other?),
    }
}

/// Opens the device's state and connects the parts (no mount yet). With `peers`, blocks
/// are asked of the user's other devices before the cloud. Files are shown as owned by the
/// owner of the device home.
pub fn open_agent(
    home: &Home,
    peers: Option<PeerOptions>,
    cache_size: Option<Size>,
) -> Result<Agent, MountError> {
    let home_meta = std::fs::metadata(home.root()).map_err(|source| MountError::Home {
        path: home.root().into(),
        source,
    })?;
    let owner = Owner {
        uid: home_meta.uid(),
        gid: home_meta.gid(),
    };
    let remote: Arc<dyn Remote> = Arc::new(client::connect(home)?);
    let limit = config::cache_limit(home, cache_size)?;
    let cache = Arc::new(open_cache(home)?);
    cache.set_limit(limit.0);
    tracing::info!(limit = %limit, used = %Size(cache.blocks_bytes()), "block store");
    // Staging files hold writes never committed by a close or fsync: nothing was promised
    // about them, and committed versions live in blocks and the journal.
    cache.clear_staging();
    let swept = cache.sweep_unlinked()?;
    tracing::debug!(swept, "removed unlinked nodes left from the last run");
    let counters = Arc::new(Counters::default());
    let peers = match peers {
        Some(opts) => Some(PeerNet::new(
            Arc::clone(&remote),
            home.unlock().map_err(ConnectError::from)?.key.clone(),
            Arc::new(CacheShelf(Arc::clone(&cache))),
            Arc::clone(&counters),
            PeerConfig {
                listen: opts.listen,
                advertise: opts.advertise,
                jwks_file: home.root().join("jwks.json"),
                key_log: match &opts.key_log {
                    Some(path) => Some(open_key_log(path)?),
                    None => None,
                },
            },
        )),
        None => None,
    };
    let mut sources: Vec<Arc<dyn BlockSource>> = Vec::new();
    if let Some(p) = &peers {
        sources.push(Arc::new(PeerBlocks(Arc::clone(p))));
    }
    sources.push(Arc::new(CloudBlocks(Arc::clone(&remote))));
    let fetcher = Arc::new(Fetcher::new(
        Arc::clone(&cache),
        sources,
        Arc::clone(&counters),
    ));
    let journal = Arc::new(Journal::default());
    let fs = Arc::new(Fs::new(
        Arc::clone(&cache),
        fetcher,
        Arc::clone(&journal),
        Arc::clone(&counters),
        owner,
    ));
    Ok(Agent {
        cache,
        remote,
        counters,
        journal,
        fs,
        peers,
    })
}

/// Who may use the mount besides the device's owner and root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The owner of the device home and root (the default).
    Owner,
    /// Every local user, with permissions checked against the mode bits.
    Everyone,
}

/// Mounts the mesh at `mountpoint` and serves it until SIGINT or SIGTERM, with Prometheus
/// metrics at `metrics` if given.
pub async fn run(
    home: &Home,
    mountpoint: &Path,
    peers: Option<PeerOptions>,
    access: Access,
    cache_size: Option<Size>,
    passthrough: Option<bool>,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(), MountError> {
    let agent = open_agent(home, peers, cache_size)?;
    let _metrics = match metrics {
        Some(addr) => {
            let mut registry = prometheus_client::registry::Registry::default();
            let collector = crate::agent::metrics::AgentCollector(Arc::clone(&agent.counters));
            registry.register_collector(Box::new(collector));
            let served = crate::net::metrics::serve(addr, registry).await;
            Some(served.map_err(|source| MountError::Metrics { addr, source })?)
        }
        None => None,
    };
    let passthrough = config::passthrough(home, passthrough)?;
    let peer_tasks = match &agent.peers {
        Some(p) => p.start().await?,
        None => Vec::new(),
    };
    clear_stale_mount(mountpoint);
    std::fs::metadata(mountpoint).map_err(|source| MountError::MountPoint {
        path: mountpoint.into(),
        source,
    })?;
    let adapter = FuseAdapter::new(
        Arc::clone(&agent.fs),
        tokio::runtime::Handle::current(),
        passthrough,
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("meshfs".into()),
        fuser::MountOption::Subtype("meshfs".into()),
        fuser::MountOption::AutoUnmount,
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    // Both need `allow_other` in the kernel, which auto-unmount needs too; fuser then lets
    // in only the owner and root, or everyone (the kernel checks the mode bits:
    // `DefaultPermissions`).
    config.acl = match access {
        Access::Owner => fuser::SessionACL::RootAndOwner,
        Access::Everyone => fuser::SessionACL::All,
    };
    config.n_threads = Some(2);
    let fuse_err = |source| MountError::Fuse {
        path: mountpoint.into(),
        source,
    };
    // Resolved before mounting: afterwards, a look at the path would ask the mount itself.
    let resolved = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.into());
    let views = adapter.views();
    let session = fuser::Session::new(adapter, mountpoint, &config).map_err(fuse_err)?;
    readahead::raise(&resolved);
    let inv: Arc<dyn Invalidator> =
        Arc::new(views.refreshing(KernelInvalidator::new(session.notifier()).map_err(fuse_err)?));
    let bg = session.spawn().map_err(fuse_err)?;
    let _watchdog = start_watchdog(mountpoint);
    tracing::info!(mountpoint = %mountpoint.display(), "mesh mounted");

    let tasks = [
        tokio::spawn(
            Uploader {
                cache: Arc::clone(&agent.cache),
                remote: Arc::clone(&agent.remote),
                journal: Arc::clone(&agent.journal),
                inv: Arc::clone(&inv),
                counters: Arc::clone(&agent.counters),
                in_cloud: KnownInCloud::default(),
                offered: Offered::default(),
            }
            .run(),
        ),
        tokio::spawn(
            Feed {
                cache: Arc::clone(&agent.cache),
                remote: Arc::clone(&agent.remote),
                inv,
                counters: Arc::clone(&agent.counters),
                members_changed: match &agent.peers {
                    Some(peers) => {
                        let peers = Arc::clone(peers);
                        Arc::new(move |folder: &str| peers.members_changed(folder))
                    }
                    None => Arc::new(|_: &str| {}),
                },
                relist: Arc::default(),
            }
            .run(),
        ),
        tokio::spawn(evictor::run(
            Arc::clone(&agent.cache),
            agent.remote.device_id().to_string(),
            Arc::clone(&agent.counters),
        )),
        tokio::spawn(keep_pinned(Arc::clone(&agent.fs), Arc::clone(&agent.cache))),
        tokio::spawn(follow_usage(
            Arc::clone(&agent.remote),
            Arc::clone(&agent.counters),
        )),
        tokio::spawn(report_status(
            home.status_file(),
            mountpoint.display().to_string(),
            Arc::clone(&agent.cache),
            Arc::clone(&agent.journal),
            Arc::clone(&agent.counters),
        )),
    ];

    wait_for_signal().await;
    tracing::info!("unmounting");
    for t in tasks {
        t.abort();
    }
    for t in peer_tasks {
        t.abort();
    }
    if let Some(peers) = &agent.peers {
        peers.withdraw().await;
    }
    // fusermount's auto-unmount only acts on a dead filesystem, so a live one is unmounted
    // here. Lazily: open files must not keep the agent from stopping.
    unmount(mountpoint);
    let joined = tokio::task::spawn_blocking(move || bg.umount_and_join());
    match tokio::time::timeout(Duration::from_secs(5), joined).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "FUSE session ended with an error"),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("files are still open on the mount; leaving them to the kernel")
        }
    }
    agent.cache.flush().await?;
    let _ = std::fs::remove_file(home.status_file());
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How often pinned files are checked for missing content when nothing says so; and how
/// soon a round that could not fetch everything is tried again.
const PINS_EVERY: Duration = Duration::from_secs(60);
const PINS_RETRY: Duration = Duration::from_secs(5);

/// Brings what pinned files lack to the device: after a pin, a new version of a pinned
/// file from elsewhere, and until a round fetched everything.
async fn keep_pinned(fs: Arc<Fs>, cache: Arc<Cache>) {
    loop {
        let wait = match fs.fetch_pinned().await {
            Ok(r) if r.failed == 0 => {
                if r.fetched > 0 {
                    tracing::info!(blocks = r.fetched, "fetched the content of pinned files");
                }
                PINS_EVERY
            }
            Ok(r) => {
                tracing::warn!(
                    fetched = r.fetched,
                    failed = r.failed,
                    "some content of pinned files could not be fetched; trying again"
                );
                PINS_RETRY
            }
            Err(e) => {
                tracing::error!(error = %e, "fetching the content of pinned files");
                PINS_RETRY
            }
        };
        let _ = tokio::time::timeout(wait, cache.pins_changed()).await;
    }
}

/// How often the user's cloud usage is read again, for `statfs`.
const USAGE_EVERY: Duration = Duration::from_secs(15);

/// Keeps the user's cloud quota and use, as `statfs` reports them, fresh.
async fn follow_usage(remote: Arc<dyn Remote>, counters: Arc<Counters>) {
    loop {
        match remote.usage().await {
            Ok(u) => {
                counters.cloud_quota.store(u.quota, Ordering::Relaxed);
                counters.cloud_used.store(u.bytes_stored, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "reading the cloud usage"),
        }
        tokio::time::sleep(USAGE_EVERY).await;
    }
}

/// Writes `status.json` every second, atomically.
async fn report_status(
    path: PathBuf,
    mountpoint: String,
    cache: Arc<Cache>,
    journal: Arc<Journal>,
    counters: Arc<Counters>,
) {
    loop {
        let status = AgentStatus {
            pid: std::process::id(),
            mountpoint: mountpoint.clone(),
            written_ms: crate::proto::now_ms(),
            cloud_reachable: counters.cloud_reachable.load(Ordering::Relaxed),
            pending_uploads: cache.journal_len(),
            failed_uploads: journal.failed.load(Ordering::Relaxed),
            cache: CacheReport {
                limit: cache.limit(),
                used: cache.blocks_bytes() + cache.views_bytes(),
                kept: counters.cache_kept.load(Ordering::Relaxed),
                views: cache.views_bytes(),
            },
            counters: counters.snapshot(),
        };
        let tmp = path.with_extension("json.tmp");
        if let Ok(text) = serde_json::to_vec_pretty(&status)
            && std::fs::write(&tmp, text).is_ok()
        {
            let _ = std::fs::rename(&tmp, &path);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
