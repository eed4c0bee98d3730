//! Wire types shared by the cloud and the agent: REST bodies, ids, tickets' claims, hashes.
//! No I/O and no crypto here.

pub mod api;
pub mod claims;
pub mod hash;
pub mod relay;

pub use api::*;
pub use claims::{Claims, Right, Role, TicketKind};
pub use hash::BlockHash;

/// Size of a content block. Files are cut into fixed blocks of this size; the last may be
/// shorter. Fixed blocks keep a random read at offset `o` to exactly one block
/// (`o / BLOCK_SIZE`) without a manifest search, and an in-place change of 1 MiB to at most
/// two uploaded blocks.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}
