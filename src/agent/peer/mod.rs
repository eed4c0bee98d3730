//! Device to device (DESIGN §5): the encrypted channel over any byte stream, the block
//! protocol inside it, this device's listener that serves blocks from its cache, and the
//! block source that asks the user's other devices, directly or through the relay, before
//! the cloud.
//!
//! - [`channel`]: the handshake and record layer of `crypto::channel` over tokio streams.
//! - [`wire`]: block requests and answers, one frame each.
//! - [`server`]: accepts channels (direct TCP or through the relay) and answers requests.
//! - [`link`]: one channel to one peer, with many requests in flight.
//! - [`net`]: who the peers are, the links to them, and the order sources are tried in.
//! - [`relay`]: reaching a peer through the relay, and being reached through it.
//! - [`keylog`]: session secrets written to a file, for tests and debugging only.

pub mod channel;
pub mod keylog;
pub mod link;
pub mod net;
pub mod relay;
pub mod server;
pub mod wire;

pub use net::{PeerConfig, PeerNet};

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a channel runs over: a TCP connection, or a TLS stream to the relay.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed stream, so direct and relayed links are one type.
pub type BoxIo = Box<dyn Io>;

/// When a channel must end: when the peer's ticket does (seconds since the epoch). A
/// channel outliving its ticket would keep serving a device revoked or unmapped since.
fn ticket_deadline(expires: i64) -> tokio::time::Instant {
    let left = expires.saturating_sub(crate::proto::now_secs()).max(0);
    tokio::time::Instant::now() + std::time::Duration::from_secs(left.unsigned_abs())
}

/// Block frames of one channel sealed, or opened, at once on the blocking pool: each is an
/// AES and an HMAC pass over up to 1 MiB (about 0.7 ms a core), and one core alone held a
/// channel under the speed of the network and the disk.
fn crypto_depth() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}
