//! What the agent counts, for `meshfs status` and for tests that check how many bytes moved.
//! The running agent writes a snapshot to `<home>/status.json` every second.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Live counters, shared by the parts of the agent.
#[derive(Default)]
pub struct Counters {
    pub blocks_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub blocks_rejected: AtomicU64,
    /// Blocks no source could give when they were wanted (a read or read-ahead failed).
    pub blocks_unavailable: AtomicU64,
    pub blocks_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub commits: AtomicU64,
    pub conflicts: AtomicU64,
    pub changes_applied: AtomicU64,
    /// Directory listings read from the metadata store (one per `opendir` read through).
    pub dirs_listed: AtomicU64,
    /// Blocks (and their bytes) that came from peers, part of `blocks_fetched`.
    pub blocks_from_peers: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    /// Blocks (and bytes) this device served to peers.
    pub blocks_served: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Whether the last request to the cloud (feed or upload) got an answer.
    pub cloud_reachable: AtomicBool,
    /// The user's cloud quota and what the cloud holds of it, as last heard (0: not yet).
    pub cloud_quota: AtomicU64,
    pub cloud_used: AtomicU64,
    /// The block store's limit, and what of it must stay, as the evictor last counted.
    pub cache_limit: AtomicU64,
    pub cache_used: AtomicU64,
    pub cache_kept: AtomicU64,
    /// Blocks (and bytes) evicted to keep the store under its limit.
    pub blocks_evicted: AtomicU64,
    pub bytes_evicted: AtomicU64,
    /// Reads of files the agent answered (a passthrough open's reads never reach it).
    pub reads_served: AtomicU64,
    /// Opens the kernel serves from a view, without the agent.
    pub passthrough_opens: AtomicU64,
    /// Changes the cloud accepted from this device (a version or a delete each).
    pub changes_sent: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            blocks_fetched: self.blocks_fetched.load(Relaxed),
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            blocks_rejected: self.blocks_rejected.load(Relaxed),
            blocks_unavailable: self.blocks_unavailable.load(Relaxed),
            blocks_uploaded: self.blocks_uploaded.load(Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Relaxed),
            commits: self.commits.load(Relaxed),
            conflicts: self.conflicts.load(Relaxed),
            changes_applied: self.changes_applied.load(Relaxed),
            dirs_listed: self.dirs_listed.load(Relaxed),
            blocks_from_peers: self.blocks_from_peers.load(Relaxed),
            bytes_from_peers: self.bytes_from_peers.load(Relaxed),
            blocks_served: self.blocks_served.load(Relaxed),
            bytes_served: self.bytes_served.load(Relaxed),
            blocks_evicted: self.blocks_evicted.load(Relaxed),
            bytes_evicted: self.bytes_evicted.load(Relaxed),
            reads_served: self.reads_served.load(Relaxed),
            passthrough_opens: self.passthrough_opens.load(Relaxed),
            changes_sent: self.changes_sent.load(Relaxed),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub blocks_fetched: u64,
    pub bytes_fetched: u64,
    pub blocks_rejected: u64,
    #[serde(default)]
    pub blocks_unavailable: u64,
    pub blocks_uploaded: u64,
    pub bytes_uploaded: u64,
    pub commits: u64,
    pub conflicts: u64,
    pub changes_applied: u64,
    #[serde(default)]
    pub dirs_listed: u64,
    #[serde(default)]
    pub blocks_from_peers: u64,
    #[serde(default)]
    pub bytes_from_peers: u64,
    #[serde(default)]
    pub blocks_served: u64,
    #[serde(default)]
    pub bytes_served: u64,
    #[serde(default)]
    pub blocks_evicted: u64,
    #[serde(default)]
    pub bytes_evicted: u64,
    #[serde(default)]
    pub reads_served: u64,
    #[serde(default)]
    pub passthrough_opens: u64,
    #[serde(default)]
    pub changes_sent: u64,
}

/// The device's block store against its limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The limit in bytes (0: none).
    pub limit: u64,
    /// Bytes the cache takes on the device: blocks and views, which the limit bounds.
    pub used: u64,
    /// Of those, bytes that must stay whatever the limit: changes not yet uploaded,
    /// pinned files, content that no other place holds.
    pub kept: u64,
    /// Bytes of `used` in views (contiguous copies for passthrough opens).
    #[serde(default)]
    pub views: u64,
}

/// The agent's report in `status.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub mountpoint: String,
    /// Milliseconds since the epoch when this report was written.
    pub written_ms: i64,
    pub cloud_reachable: bool,
    /// Local changes not yet in the cloud.
    pub pending_uploads: usize,
    /// Uploads the cloud refused for good (see the agent's log).
    pub failed_uploads: u64,
    #[serde(default)]
    pub cache: CacheReport,
    pub counters: CounterSnapshot,
}

/// A report older than this means the agent is not running any more.
const STALE_MS: i64 = 5_000;

impl AgentStatus {
    /// The report at `path`, if the agent that wrote it still runs and wrote it lately.
    pub fn read_live(path: &std::path::Path) -> Option<Self> {
        let s: Self = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let alive = std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
        (alive && crate::proto::now_ms() - s.written_ms < STALE_MS).then_some(s)
    }
}
