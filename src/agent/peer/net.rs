//! `PeerNet`: this device among its peers, as the agent uses it. It binds the listener and
//! keeps the [`Directory`] fresh, answers incoming channels from the [`Shelf`], and asks
//! peers for blocks through the [`SourceOrder`] over the [`LinkPool`].

use super::channel::{self, Channel, FirstMessage};
use super::directory::{self, Directory};
use super::order::SourceOrder;
use super::pool::LinkPool;
use super::{BlockRequest, BoxIo, Me, PeerMiss, Shelf, relay, server};
use crate::agent::remote::Remote;
use crate::agent::status::Counters;
use crate::crypto::channel::{ChannelError, KeyLog, PeerInfo};
use crate::proto::BlockHash;
use bytes::Bytes;
use rsa::PrivateKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Incoming handshakes run at once; more connections wait.
const HANDSHAKES: usize = 32;

/// How this device takes part.
#[derive(Clone)]
pub struct PeerConfig {
    /// Where the listener binds; port 0 picks a free one.
    pub listen: SocketAddr,
    /// What to tell peers instead of the listener's address.
    pub advertise: Option<SocketAddr>,
    /// Where the device keeps the cloud's keys for checking peer tickets offline.
    pub jwks_file: PathBuf,
    /// Where every session's secrets are written, for tests and debugging (see `keylog`).
    pub key_log: Option<Arc<dyn KeyLog>>,
}

/// Why the peer network could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "listening for peers on {addr} (pick another address with --peer-listen, or run with --no-peers)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct PeerNet {
    pub(super) me: Arc<Me>,
    pub(super) remote: Arc<dyn Remote>,
    pub(super) directory: Arc<Directory>,
    order: SourceOrder,
    pub(super) shelf: Arc<dyn Shelf>,
    pub(super) counters: Arc<Counters>,
    /// Slots for incoming handshakes.
    pub(super) handshakes: tokio::sync::Semaphore,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
}

impl PeerNet {
    pub fn new(
        remote: Arc<dyn Remote>,
        key: PrivateKey,
        shelf: Arc<dyn Shelf>,
        counters: Arc<Counters>,
        cfg: PeerConfig,
    ) -> Arc<Self> {
        let directory = Arc::new(Directory::new(
            Arc::clone(&remote),
            key.to_public_key(),
            cfg.jwks_file,
        ));
        let me = Arc::new(Me {
            device: remote.device_id().to_string(),
            key: Arc::new(key),
            key_log: cfg.key_log,
        });
        let pool = Arc::new(LinkPool::new(
            Arc::clone(&me),
            Arc::clone(&remote),
            Arc::clone(&directory),
        ));
        Arc::new(Self {
            order: SourceOrder::new(Arc::clone(&directory), pool, Arc::clone(&counters)),
            me,
            remote,
            directory,
            shelf,
            counters,
            handshakes: tokio::sync::Semaphore::new(HANDSHAKES),
            listen: cfg.listen,
            advertise: cfg.advertise,
        })
    }

    /// Binds the listener and starts the tasks that accept peers and keep the directory
    /// and the relay registration fresh.
    pub async fn start(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>, PeerError> {
        let bind = |source| PeerError::Bind {
            addr: self.listen,
            source,
        };
        let listener = TcpListener::bind(self.listen).await.map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        tracing::info!(addr = %local, "listening for peers");
        Ok(vec![
            tokio::spawn(server::listen(Arc::clone(self), listener)),
            tokio::spawn(Arc::clone(self).maintain(local)),
            tokio::spawn(relay::stay_reachable(Arc::clone(self))),
        ])
    }

    async fn maintain(self: Arc<Self>, local: SocketAddr) {
        loop {
            if let Err(e) = self.directory.refresh(local, self.advertise).await {
                tracing::debug!(error = %e, "refreshing the peer list");
            }
            tokio::time::sleep(directory::REFRESH_EVERY).await;
        }
    }

    /// Tells the cloud this device no longer listens (see [`Directory::withdraw`]).
    pub async fn withdraw(&self) {
        self.directory.withdraw().await;
    }

    /// A block from the peers (see [`SourceOrder::get`]).
    pub async fn get(&self, req: &BlockRequest, holders: &[String]) -> Result<Bytes, PeerMiss> {
        self.order.get(req, holders).await
    }

    /// A folder's members or roles changed (or this user lost it): who may have its blocks
    /// is asked of the cloud again before the next request of a peer of another user.
    pub fn members_changed(&self, folder: &str) {
        self.directory.forget_folder(folder);
    }

    /// The block `hash` a peer just gave was wrong (see [`SourceOrder::reject`]).
    pub fn reject(&self, hash: &BlockHash) -> bool {
        self.order.reject(hash)
    }

    /// The responder's handshake on an incoming stream, whose `first` message was read.
    /// A device revoked since the peer list was read is refused at once: a list some
    /// seconds old is read again first (at most one cloud request per few seconds, however
    /// many connections arrive; offline, the list on hand decides).
    pub(super) async fn accept(
        self: &Arc<Self>,
        io: BoxIo,
        first: FirstMessage,
    ) -> Result<Channel<BoxIo>, ChannelError> {
        if self.directory.is_stale() {
            let _ = self.directory.list_peers().await;
        }
        let check = self.directory.check()?;
        let remote = Arc::clone(&self.remote);
        let ticket_for = move |peer: PeerInfo| async move {
            remote
                .peer_ticket(&peer.device, peer.folder.as_deref())
                .await
        };
        channel::accept(
            io,
            first,
            &self.me.device,
            Arc::clone(&self.me.key),
            ticket_for,
            check,
            self.me.key_log.clone(),
        )
        .await
    }
}
