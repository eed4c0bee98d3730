//! Device to device (DESIGN §5): the encrypted channel over any byte stream, the block
//! protocol inside it, this device's listener that serves blocks, and the asking side that
//! tries the user's other devices, directly or through the relay, before the cloud.
//!
//! - [`channel`]: the handshake and record layer of `crypto::channel` over tokio streams.
//! - [`wire`]: block requests and answers, one frame each.
//! - [`server`]: accepts channels (direct TCP or through the relay) and answers requests
//!   from the [`Shelf`] of blocks this device serves.
//! - [`link`]: one channel to one peer, with many requests in flight.
//! - [`directory`]: who the peers are (from the cloud), which are revoked, the cloud's keys
//!   that check their tickets, where the relay is, and this device's own presence.
//! - [`pool`]: the live links, made on demand (direct or relayed), and paths that failed.
//! - [`order`]: which peer to ask for a block, in what order, and who lied.
//! - [`net`]: `PeerNet`, the three above and the listener, as the agent uses them.
//! - [`relay`]: reaching a peer through the relay, and being reached through it.
//! - [`keylog`]: session secrets written to a file, for tests and debugging only.

pub mod channel;
pub mod directory;
pub mod keylog;
pub mod link;
pub mod net;
pub mod order;
pub mod pool;
pub mod relay;
pub mod server;
pub mod wire;

pub use net::{PeerConfig, PeerNet};

use crate::crypto::channel::KeyLog;
use crate::proto::BlockHash;
use rsa::PrivateKey;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a channel runs over: a TCP connection, or a TLS stream to the relay.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed stream, so direct and relayed links are one type.
pub type BoxIo = Box<dyn Io>;

/// A block asked of a peer, and the file it belongs to: a peer paired through one Mesh
/// Folder serves only blocks of that folder's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    pub folder: String,
    /// The cloud entry of the file.
    pub entry: String,
    pub hash: BlockHash,
}

/// The blocks this device serves to its peers.
pub trait Shelf: Send + Sync + 'static {
    /// Whether `hash` is a block of file `entry` of `folder`, as this device knows the file.
    fn in_file(&self, folder: &str, entry: &str, hash: &BlockHash) -> bool;
    /// Whether `hash` is held here for `folder`: written in it or fetched for it, not only
    /// for another folder (see `cache/held.rs`).
    fn held_for(&self, folder: &str, hash: &BlockHash) -> bool;
    /// Appends the stored block to `out` as it is on disk, unchecked (the asker checks
    /// every block it gets); false if it is not here.
    fn append_block(&self, hash: &BlockHash, out: &mut Vec<u8>) -> std::io::Result<bool>;
}

/// What this device brings to a channel: its id, its key, and where session secrets go in
/// tests.
pub struct Me {
    pub device: String,
    pub key: Arc<PrivateKey>,
    pub key_log: Option<Arc<dyn KeyLog>>,
}

/// Why no peer gave a block.
#[derive(Debug, thiserror::Error)]
pub enum PeerMiss {
    #[error("no peer could be reached")]
    Unreachable,
    #[error("no peer holds the block")]
    Missing,
}

/// When a channel must end: when the peer's ticket does (seconds since the epoch). A
/// channel outliving its ticket would keep serving a device revoked or unmapped since.
fn ticket_deadline(expires: i64) -> tokio::time::Instant {
    let left = expires.saturating_sub(crate::proto::now_secs()).max(0);
    tokio::time::Instant::now() + std::time::Duration::from_secs(left.unsigned_abs())
}

/// Block frames of one channel sealed, or opened, at once on the blocking pool: each is an
/// AES and an HMAC pass over up to 1 MiB, and one core alone held a channel under the
/// speed of the network and the disk.
fn crypto_depth() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}
