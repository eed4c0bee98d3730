//! Keeps the block store under the device's cache limit, in the background: wakes when a
//! stored block passes the limit, evicts on the blocking pool (reads and writes never wait
//! for it), and reports what the store holds for `meshfs status`. While what must stay
//! keeps the store over the limit, it tries again every few seconds: uploads free blocks
//! without storing any.

use crate::agent::cache::Cache;
use crate::agent::status::Counters;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How often what must stay is counted again when nothing passes the limit.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// The pause after a pass that could not get under the limit (what must stay fills it)
/// before the next: another pass right away would find the same.
const STUCK_GAP: Duration = Duration::from_secs(2);
/// The pause after a pass that ended over the limit only because blocks came in while it
/// ran (a fast read): short, so that the store stays near its limit.
const BEHIND_GAP: Duration = Duration::from_millis(20);

pub async fn run(cache: Arc<Cache>, me: String, counters: Arc<Counters>) {
    counters.cache_limit.store(cache.limit(), Relaxed);
    let (mut stuck, mut behind) = (false, false);
    loop {
        if stuck {
            tokio::time::sleep(STUCK_GAP).await;
        } else if behind {
            tokio::time::sleep(BEHIND_GAP).await;
        } else {
            let _ = tokio::time::timeout(REPORT_EVERY, cache.passed_limit()).await;
        }
        let (c, who) = (Arc::clone(&cache), me.clone());
        let pass = tokio::task::spawn_blocking(move || c.evict(&who)).await;
        let done = match pass {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "evicting blocks from the cache");
                stuck = true;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the eviction task failed");
                continue;
            }
        };
        Counters::add(&counters.blocks_evicted, done.blocks);
        Counters::add(&counters.bytes_evicted, done.bytes);
        counters.cache_used.store(done.used, Relaxed);
        counters.cache_kept.store(done.kept, Relaxed);
        if done.blocks > 0 {
            tracing::debug!(
                blocks = done.blocks,
                bytes = done.bytes,
                used = done.used,
                "evicted blocks"
            );
        }
        let was_stuck = stuck;
        let limit = cache.limit();
        let over = limit > 0 && done.used > limit;
        stuck = over && done.kept >= limit;
        behind = over && !stuck;
        if stuck && !was_stuck {
            tracing::warn!(
                kept = done.kept,
                limit,
                "what must stay on this device (changes not uploaded, pinned files, content held nowhere else) exceeds the cache limit"
            );
        }
    }
}
