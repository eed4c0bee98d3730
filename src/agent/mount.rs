//! `meshfs mount`: wires the cache, the cloud client, the fetcher, the journal's uploader,
//! the change feed and the FUSE session together, and takes them down cleanly on SIGINT or
//! SIGTERM.

use crate::agent::cache::{Cache, CacheError};
use crate::agent::client::{ClientError, CloudClient};
use crate::agent::feed::{self, Invalidator};
use crate::agent::fetch::{BlockSource, Fetcher};
use crate::agent::fs::Fs;
use crate::agent::fs::fuse::{FuseAdapter, KernelInvalidator, Owner};
use crate::agent::fs::readahead;
use crate::agent::home::{Home, HomeError};
use crate::agent::journal::{Journal, KnownInCloud, Uploader};
use crate::agent::peer::keylog::KeyLogFile;
use crate::agent::peer::{PeerConfig, PeerNet};
use crate::agent::status::{AgentStatus, Counters};
use crate::crypto::channel::KeyLog;
use crate::crypto::keys::{self, KeyError};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("opening the local cache")]
    Cache(#[from] CacheError),
    #[error("mount point {path}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Peers(#[from] crate::agent::peer::net::PeerError),
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
    pub client: Arc<CloudClient>,
    pub counters: Arc<Counters>,
    pub journal: Arc<Journal>,
    pub fs: Arc<Fs>,
    /// The user's other devices, when peer to peer is on.
    pub peers: Option<Arc<PeerNet>>,
}

fn read_ca(home: &Home) -> Result<Vec<u8>, ClientError> {
    std::fs::read(home.ca()).map_err(|source| ClientError::Ca {
        path: home.ca().display().to_string(),
        source,
    })
}

/// A client of the cloud for the device logged in at `home`.
pub fn connect(home: &Home) -> Result<CloudClient, MountError> {
    let dev = home.load_device()?;
    let key = keys::load_private(&home.key())?;
    let http = crate::agent::client::https(&read_ca(home)?)?;
    Ok(CloudClient::new(
        http,
        &dev.cloud,
        &dev.user,
        &dev.device_id,
        key,
    ))
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

/// Opens the device's state and connects the parts (no mount yet). With `peers`, blocks
/// are asked of the user's other devices before the cloud.
pub fn open_agent(home: &Home, peers: Option<PeerOptions>) -> Result<Agent, MountError> {
    let client = Arc::new(connect(home)?);
    let cache_dir = home.cache_dir();
    let cache = Arc::new(Cache::open(&cache_dir)?);
    // Staging files hold writes never committed by a close or fsync: nothing was promised
    // about them, and committed versions live in blocks and the journal.
    let staging = cache_dir.join("staging");
    if let Ok(rd) = std::fs::read_dir(&staging) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let swept = cache.sweep_unlinked()?;
    tracing::debug!(swept, "removed unlinked nodes left from the last run");
    let counters = Arc::new(Counters::default());
    let peers = match peers {
        Some(opts) => Some(PeerNet::new(
            Arc::clone(&cache),
            Arc::clone(&counters),
            Arc::clone(&client),
            keys::load_private(&home.key())?,
            PeerConfig {
                listen: opts.listen,
                advertise: opts.advertise,
                jwks_file: home.root().join("jwks.json"),
                ca_pem: read_ca(home)?,
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
        sources.push(p.clone());
    }
    sources.push(client.clone());
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
    ));
    Ok(Agent {
        cache,
        client,
        counters,
        journal,
        fs,
        peers,
    })
}

/// How long the watchdog waits for a dead agent's mount to answer ENOTCONN.
const WATCH_FOR_DEATH: Duration = Duration::from_secs(10);

/// Starts `meshfs watch-mount`, which outlives this process: when it dies (its end of the
/// pipe closes), the watchdog clears a mount it left. fusermount's own auto-unmount does
/// this too, but it first opens the mount point to check it, and when that open races the
/// dying agent's last descriptor of /dev/fuse it fails and gives up, leaving a dead mount
/// (about one SIGKILL in eight here). The returned pipe end must live as long as the agent.
fn start_watchdog(mountpoint: &Path) -> Option<std::process::ChildStdin> {
    let exe = std::env::current_exe().ok()?;
    let spawned = std::process::Command::new(exe)
        .arg("watch-mount")
        .arg(mountpoint)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => child.stdin.take(),
        Err(e) => {
            tracing::warn!(error = %e, "starting the mount watchdog; a crash may leave a dead mount");
            None
        }
    }
}

/// The watchdog's work (`meshfs watch-mount`): waits until stdin closes, which happens when
/// the agent ends however it ends, then clears the mount if it is a dead one. An agent that
/// stopped cleanly has unmounted already, and a live mount (a new agent's) is left alone.
pub async fn watch(mountpoint: &Path) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    let deadline = tokio::time::Instant::now() + WATCH_FOR_DEATH;
    while tokio::time::Instant::now() < deadline && is_meshfs_mount(mountpoint) {
        if is_dead(mountpoint) {
            tracing::warn!(path = %mountpoint.display(), "the agent died; clearing its mount");
            unmount(mountpoint);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a meshfs filesystem is mounted at `path`.
fn is_meshfs_mount(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (point, kind) = (f.nth(1), f.next());
        // /proc/self/mounts escapes spaces and a few others as octal.
        let point = point.map(|p| p.replace("\\040", " ").replace("\\011", "\t"));
        point.as_deref() == Some(&*want) && kind == Some("fuse.meshfs")
    })
}

/// Whether the filesystem at `path` has no agent behind it any more.
fn is_dead(path: &Path) -> bool {
    // Opening the directory always reaches the filesystem; a stat may be answered from
    // attributes the kernel still caches for the dead mount.
    std::fs::read_dir(path).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// A mount point left behind by an agent that died answers ENOTCONN; clear it.
fn clear_stale_mount(mountpoint: &Path) {
    if is_dead(mountpoint) {
        tracing::warn!(path = %mountpoint.display(), "clearing a stale mount left by an agent that died");
        unmount(mountpoint);
    }
}

/// Mounts the mesh at `mountpoint` and serves it until SIGINT or SIGTERM.
pub async fn run(
    home: &Home,
    mountpoint: &Path,
    peers: Option<PeerOptions>,
) -> Result<(), MountError> {
    let agent = open_agent(home, peers)?;
    let peer_tasks = match &agent.peers {
        Some(p) => p.start().await?,
        None => Vec::new(),
    };
    clear_stale_mount(mountpoint);
    std::fs::metadata(mountpoint).map_err(|source| MountError::MountPoint {
        path: mountpoint.into(),
        source,
    })?;
    let home_meta = std::fs::metadata(home.root()).map_err(|source| MountError::MountPoint {
        path: home.root().into(),
        source,
    })?;
    let owner = Owner {
        uid: home_meta.uid(),
        gid: home_meta.gid(),
    };

    let adapter = FuseAdapter::new(
        Arc::clone(&agent.fs),
        tokio::runtime::Handle::current(),
        owner,
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
    config.acl = fuser::SessionACL::RootAndOwner;
    config.n_threads = Some(2);
    let fuse_err = |source| MountError::Fuse {
        path: mountpoint.into(),
        source,
    };
    // Resolved before mounting: afterwards, a look at the path would ask the mount itself.
    let resolved = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.into());
    let session = fuser::Session::new(adapter, mountpoint, &config).map_err(fuse_err)?;
    readahead::raise(&resolved);
    let inv: Arc<dyn Invalidator> =
        Arc::new(KernelInvalidator::new(session.notifier()).map_err(fuse_err)?);
    let bg = session.spawn().map_err(fuse_err)?;
    let _watchdog = start_watchdog(mountpoint);
    tracing::info!(mountpoint = %mountpoint.display(), "mesh mounted");

    let tasks = [
        tokio::spawn(
            Uploader {
                cache: Arc::clone(&agent.cache),
                client: Arc::clone(&agent.client),
                journal: Arc::clone(&agent.journal),
                inv: Arc::clone(&inv),
                counters: Arc::clone(&agent.counters),
                in_cloud: KnownInCloud::default(),
            }
            .run(),
        ),
        tokio::spawn(feed::run(
            Arc::clone(&agent.cache),
            Arc::clone(&agent.client),
            inv,
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

/// Detaches the mount (`fusermount3 -u -z`, or `umount -l` where fusermount3 is absent).
fn unmount(mountpoint: &Path) {
    let done = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .status()
        .is_ok_and(|s| s.success());
    if !done {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(mountpoint)
            .status();
    }
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
