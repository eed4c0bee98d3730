//! The live links to peers, one per peer, path (direct or through the relay) and ticket
//! scope, made when first needed (one attempt at a time per key). A path that failed to
//! connect is left alone for a while, so a peer with no route costs one attempt, not one
//! per block.

use super::channel::{self, Channel};
use super::directory::Directory;
use super::link::Link;
use super::relay::{self, RelayClientError};
use super::{BoxIo, Me};
use crate::agent::remote::{ClientError, Remote};
use crate::crypto::channel::{ChannelError, LocalPeer};
use crate::proto::Device;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long a direct connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a path that failed to connect is left alone.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);

/// A link's key: the peer, whether through the relay, and the scope of its ticket (`None`
/// for the user's own devices, the folder for another user's device that shares it).
pub type LinkKey = (String, bool, Option<String>);

/// A link being made or made.
type LinkSlot = Arc<tokio::sync::Mutex<Option<Arc<Link>>>>;

/// Why a path to a peer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("this path failed moments ago")]
    FailedLately,
    #[error("the device reports no address")]
    NoAddress,
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} gave no answer in {CONNECT_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("through the relay")]
    Relay(#[from] RelayClientError),
    #[error("the handshake")]
    Handshake(#[from] ChannelError),
}

pub struct LinkPool {
    me: Arc<Me>,
    remote: Arc<dyn Remote>,
    directory: Arc<Directory>,
    links: Mutex<HashMap<LinkKey, LinkSlot>>,
    failed: Mutex<HashMap<LinkKey, Instant>>,
}

impl LinkPool {
    pub fn new(me: Arc<Me>, remote: Arc<dyn Remote>, directory: Arc<Directory>) -> Self {
        Self {
            me,
            remote,
            directory,
            links: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a link was made to `key` before (it may have ended since).
    pub fn has_link(&self, key: &LinkKey) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// A live link to `dev` over the path of `key`, made if needed.
    pub async fn link(&self, dev: &Device, key: LinkKey) -> Result<Arc<Link>, PathError> {
        let slot = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(links.entry(key.clone()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| l.is_alive()) {
            return Ok(Arc::clone(link));
        }
        if let Some(at) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < RETRY_FAILED_AFTER
        {
            return Err(PathError::FailedLately);
        }
        match self.open(dev, key.1, key.2.as_deref()).await {
            Ok(link) => {
                *slot = Some(Arc::clone(&link));
                Ok(link)
            }
            Err(e) => {
                self.failed(key);
                Err(e)
            }
        }
    }

    /// Leaves the path of `key` alone for a while (it failed, or its link was lost).
    pub fn failed(&self, key: LinkKey) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Instant::now());
    }

    /// Closes and forgets every link to `device`.
    pub fn close_device(&self, device: &str, why: &str) {
        let slots: Vec<LinkSlot> = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<LinkKey> = links
                .keys()
                .filter(|(d, _, _)| d == device)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| links.remove(k)).collect()
        };
        for slot in slots {
            if let Ok(slot) = slot.try_lock()
                && let Some(link) = slot.as_ref()
            {
                link.close(why);
            }
        }
    }

    async fn open(
        &self,
        dev: &Device,
        relayed: bool,
        scope: Option<&str>,
    ) -> Result<Arc<Link>, PathError> {
        let io = if relayed {
            let peer_ticket = self.ticket(&dev.id, scope).await?;
            let relay_ticket = self
                .remote
                .relay_ticket()
                .await
                .map_err(|e| RelayClientError::Ticket(Box::new(e)))?;
            relay::dial(&self.directory.relays(), relay_ticket, peer_ticket).await?
        } else {
            dial_direct(dev).await?
        };
        let channel = self.handshake(io, &dev.id, scope).await?;
        Ok(Link::new(channel, relayed))
    }

    async fn ticket(&self, device: &str, scope: Option<&str>) -> Result<String, ChannelError> {
        self.remote
            .peer_ticket(device, scope)
            .await
            .map_err(|e: ClientError| ChannelError::NoTicket {
                device: device.to_string(),
                source: Box::new(e),
            })
    }

    /// The initiator's handshake with `device` on `io`, with a ticket limited to `scope`.
    async fn handshake(
        &self,
        io: BoxIo,
        device: &str,
        scope: Option<&str>,
    ) -> Result<Channel<BoxIo>, ChannelError> {
        let check = self.directory.check()?;
        let me = LocalPeer {
            device: self.me.device.clone(),
            key: Arc::clone(&self.me.key),
            ticket: self.ticket(device, scope).await?,
            key_log: self.me.key_log.clone(),
        };
        channel::connect(io, me, device, check).await
    }
}

async fn dial_direct(dev: &Device) -> Result<BoxIo, PathError> {
    let mut last = PathError::NoAddress;
    for addr in &dev.addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(Box::new(tcp));
            }
            Ok(Err(source)) => {
                last = PathError::Connect {
                    addr: addr.clone(),
                    source,
                }
            }
            Err(_) => last = PathError::Timeout { addr: addr.clone() },
        }
    }
    Err(last)
}
