//! The durable log of local changes: a change to a node and its journal record go into
//! sled in one batch (`Journal::put`, `Journal::delete`), and the uploader (`uploader.rs`)
//! plays the records to the cloud, oldest first.
//!
//! A file committed again and again in a short spell (a database, a log, an editor's
//! autosave) *settles* before it uploads: its records wait until it has been quiet for a
//! moment, or until a bound passes while it keeps changing, and then only its latest state
//! goes (see [`Settle`]). Each commit is durable here at once, as always; settling only
//! spares the cloud (and the quota) the states in between.

use crate::agent::cache::{Cache, CacheError, JournalOp, Node, Snapshot, Txn};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a busy file's commits settle before they upload. A commit that follows the
/// last by less than `quiet` makes the file busy: its records then wait for `quiet` without
/// a commit, or for `bound` after the first of them, whichever comes first. A file saved
/// once uploads at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settle {
    /// The quiet after the last commit.
    pub quiet: Duration,
    /// The longest wait after the first commit not yet uploaded, however busy the file.
    pub bound: Duration,
}

impl Settle {
    pub const DEFAULT: Settle = Settle {
        quiet: Duration::from_secs(3),
        bound: Duration::from_secs(30),
    };
    /// Every commit uploads as soon as it can.
    pub const NONE: Settle = Settle {
        quiet: Duration::ZERO,
        bound: Duration::ZERO,
    };
}

/// The shortest time between the uploader's rounds while the front of the journal settles.
const SETTLING_PACE: Duration = Duration::from_millis(200);

/// Appends records and wakes the uploader.
pub struct Journal {
    wake: Notify,
    /// Records the cloud refused for good.
    pub failed: AtomicU64,
    settle: Settle,
    /// Files committed lately. In memory only: after a restart, what is in the journal
    /// uploads at once.
    commits: Mutex<HashMap<u64, Spell>>,
}

/// A file's recent commits.
#[derive(Clone, Copy, Debug)]
struct Spell {
    /// The first commit not yet uploaded.
    first_unsent: Option<Instant>,
    last: Instant,
    /// Whether a commit followed another within the quiet time.
    busy: bool,
}

impl Default for Journal {
    fn default() -> Self {
        Self::with_settle(Settle::DEFAULT)
    }
}

impl Journal {
    pub fn with_settle(settle: Settle) -> Self {
        Self {
            wake: Notify::new(),
            failed: AtomicU64::new(0),
            settle,
            commits: Mutex::new(HashMap::new()),
        }
    }

    fn commits(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Spell>> {
        self.commits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a commit of a new version of file `ino`.
    pub fn committed(&self, ino: u64) {
        if self.settle == Settle::NONE {
            return;
        }
        let now = Instant::now();
        let mut commits = self.commits();
        match commits.get_mut(&ino) {
            Some(s) if now.duration_since(s.last) < self.settle.quiet => {
                s.busy = true;
                s.last = now;
                s.first_unsent.get_or_insert(now);
            }
            _ => {
                commits.insert(
                    ino,
                    Spell {
                        first_unsent: Some(now),
                        last: now,
                        busy: false,
                    },
                );
            }
        }
    }

    /// When the records of `ino` may upload, if that is still to come.
    pub fn settling(&self, ino: u64) -> Option<Instant> {
        let s = *self.commits().get(&ino)?;
        if !s.busy {
            return None;
        }
        let ready = (s.last + self.settle.quiet).min(s.first_unsent? + self.settle.bound);
        (Instant::now() < ready).then_some(ready)
    }

    /// Notes that the records of `ino` up to now reached the cloud.
    pub fn uploaded(&self, ino: u64) {
        let now = Instant::now();
        let mut commits = self.commits();
        if let Some(s) = commits.get_mut(&ino) {
            s.first_unsent = None;
            if now.duration_since(s.last) >= self.settle.quiet {
                commits.remove(&ino);
            }
        }
    }

    /// Waits for a new record, or `limit` at most.
    pub async fn appended(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.wake.notified()).await;
    }

    /// Waits, while the front of the journal settles until `until`, for a new record or
    /// `until`; a record that comes within [`SETTLING_PACE`] wakes it only once that has
    /// passed. A busy file appends records many times a second, and each round reads the
    /// front of the journal again.
    pub async fn settling_wait(&self, until: Instant) {
        let left = || until.saturating_duration_since(Instant::now());
        tokio::time::sleep(SETTLING_PACE.min(left())).await;
        self.appended(left()).await;
    }

    fn append(&self, cache: &Cache, mut txn: Txn, op: JournalOp) -> Result<(), CacheError> {
        let seq = cache.next_id()?;
        txn.journal(seq, &op);
        cache.apply(txn)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Applies `txn` together with a record to upload `node` in the state it has now;
    /// `replaced` is the node it took the place of (see [`Snapshot::replaced`]).
    pub fn put(
        &self,
        cache: &Cache,
        txn: Txn,
        node: &Node,
        replaced: Option<u64>,
    ) -> Result<(), CacheError> {
        let snap = Snapshot::of(node, replaced);
        self.append(
            cache,
            txn,
            JournalOp::Put {
                ino: node.ino,
                snap,
            },
        )
    }

    /// Applies `txn` together with a record to delete the node's entry in the cloud.
    pub fn delete(&self, cache: &Cache, txn: Txn, ino: u64) -> Result<(), CacheError> {
        self.append(cache, txn, JournalOp::Delete { ino })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits as the uploader does while its front settles until `until`, and says how long.
    async fn waited(j: &Journal, until: Instant) -> Duration {
        let start = Instant::now();
        j.settling_wait(until).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn records_appended_while_settling_wake_the_uploader_at_most_once_a_pace() {
        let j = Journal::default();
        let until = Instant::now() + Duration::from_secs(3);
        // A busy writer: records come every few milliseconds.
        let writer = async {
            for _ in 0..100 {
                j.wake.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (took, ()) = tokio::join!(waited(&j, until), writer);
        assert_eq!(
            took, SETTLING_PACE,
            "the burst wakes it once, after the pace"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_after_the_pace_wakes_the_uploader_at_once() {
        let j = Journal::default();
        let until = Instant::now() + Duration::from_secs(3);
        let late = SETTLING_PACE + Duration::from_millis(300);
        let writer = async {
            tokio::time::sleep(late).await;
            j.wake.notify_one();
        };
        let (took, ()) = tokio::join!(waited(&j, until), writer);
        assert_eq!(took, late);
    }

    #[tokio::test(start_paused = true)]
    async fn without_records_the_uploader_waits_until_the_file_has_settled() {
        let j = Journal::default();
        let soon = SETTLING_PACE / 2;
        assert_eq!(
            waited(&j, Instant::now() + soon).await,
            soon,
            "within the pace"
        );
        let later = Duration::from_secs(3);
        assert_eq!(waited(&j, Instant::now() + later).await, later);
        assert_eq!(
            waited(&j, Instant::now()).await,
            Duration::ZERO,
            "settled already"
        );
    }
}
