//! This device among its peers: where it listens and tells the cloud it listens, which
//! peers there are (the user's other devices, and other users' devices sharing a folder,
//! refreshed from the cloud), the cloud's keys
//! that peer tickets are checked with (kept on disk for offline use), the live links, and
//! the order a missing block is asked for: each peer directly, then each through the relay.
//! A peer that sends a block with the wrong hash is dropped for a while.

use super::channel::{self, Channel};
use super::link::{Link, LinkError};
use super::{BoxIo, relay, server};
use crate::agent::cache::Cache;
use crate::agent::client::CloudClient;
use crate::agent::fetch::{BlockSource, SourceError, Want};
use crate::agent::status::Counters;
use crate::crypto::channel::{
    ChannelError, KeyLog, LocalPeer, PeerCheck, PeerInfo, TicketCheck, TicketRefusal,
};
use crate::crypto::ticket::KeySet;
use crate::proto::{BlockHash, Device, Jwks};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use lru::LruCache;
use rsa::PrivateKey;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How often the peer list, the cloud's keys and this device's presence are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How long a direct connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Incoming handshakes run at once; more connections wait.
const HANDSHAKES: usize = 32;
/// How long a path that failed to connect is left alone.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
/// A peer list older than this is read again before a block is given up on.
const RELIST_AFTER: Duration = Duration::from_secs(3);
/// How long a peer that sent a wrong block is not asked again.
const BAN: Duration = Duration::from_secs(600);
/// How long a stopping agent tries to tell the cloud it no longer listens.
const WITHDRAW_WITHIN: Duration = Duration::from_secs(2);

/// How this device takes part.
#[derive(Clone)]
pub struct PeerConfig {
    /// Where the listener binds; port 0 picks a free one.
    pub listen: SocketAddr,
    /// What to tell peers instead of the listener's address.
    pub advertise: Option<SocketAddr>,
    /// Where the device keeps the cloud's keys for checking peer tickets offline.
    pub jwks_file: PathBuf,
    /// The cloud's CA, which the relay's certificate is also signed by.
    pub ca_pem: Vec<u8>,
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

/// A link being made or made, one per peer and path.
type LinkSlot = Arc<tokio::sync::Mutex<Option<Arc<Link>>>>;

/// A device to ask, and the folder its ticket is limited to: `None` for the user's own
/// devices, the folder for another user's device that shares it.
#[derive(Clone)]
struct Candidate {
    dev: Device,
    scope: Option<String>,
}

/// A link's key: the peer, whether through the relay, and the scope of its ticket.
type LinkKey = (String, bool, Option<String>);

pub struct PeerNet {
    pub(super) cache: Arc<Cache>,
    pub(super) counters: Arc<Counters>,
    pub(super) client: Arc<CloudClient>,
    key: Arc<PrivateKey>,
    cfg: PeerConfig,
    check: RwLock<Option<Arc<TicketCheck>>>,
    peers: RwLock<Vec<Device>>,
    /// The user's devices the cloud lists as revoked: refused even with a ticket that is
    /// still in its time window.
    revoked: Arc<RwLock<HashSet<String>>>,
    relay_addr: RwLock<Option<String>>,
    links: Mutex<HashMap<LinkKey, LinkSlot>>,
    banned: Mutex<HashMap<String, Instant>>,
    /// Paths (peer, relayed) that just failed to connect: not tried again for a while, so
    /// a peer with no route costs one attempt, not one per block.
    failed: Mutex<HashMap<LinkKey, Instant>>,
    /// Other users' devices that mapped a folder, by folder, with when they were listed.
    folder_peers: Mutex<HashMap<String, (Instant, Vec<Device>)>>,
    /// Slots for incoming handshakes.
    pub(super) handshakes: tokio::sync::Semaphore,
    /// When the peer list was last read from the cloud (or a read of it started).
    listed_at: Mutex<Option<Instant>>,
    served_by: Mutex<LruCache<BlockHash, String>>,
    advertised: RwLock<Option<SocketAddr>>,
}

impl PeerNet {
    pub fn new(
        cache: Arc<Cache>,
        counters: Arc<Counters>,
        client: Arc<CloudClient>,
        key: PrivateKey,
        cfg: PeerConfig,
    ) -> Arc<Self> {
        let net = Arc::new(Self {
            cache,
            counters,
            client,
            key: Arc::new(key),
            cfg,
            check: RwLock::new(None),
            peers: RwLock::new(Vec::new()),
            revoked: Arc::default(),
            relay_addr: RwLock::new(None),
            links: Mutex::new(HashMap::new()),
            banned: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            folder_peers: Mutex::new(HashMap::new()),
            listed_at: Mutex::new(None),
            handshakes: tokio::sync::Semaphore::new(HANDSHAKES),
            served_by: Mutex::new(LruCache::new(
                NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            )),
            advertised: RwLock::new(None),
        });
        if let Ok(text) = std::fs::read(&net.cfg.jwks_file)
            && let Ok(jwks) = serde_json::from_slice::<Jwks>(&text)
        {
            net.set_keys(&jwks);
        }
        net
    }

    pub fn device(&self) -> &str {
        self.client.device_id()
    }

    /// Binds the listener and starts the tasks that accept peers and keep the peer list,
    /// keys, presence and the relay registration fresh.
    pub async fn start(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>, PeerError> {
        let bind = |source| PeerError::Bind {
            addr: self.cfg.listen,
            source,
        };
        let listener = TcpListener::bind(self.cfg.listen).await.map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        tracing::info!(addr = %local, "listening for peers");
        Ok(vec![
            tokio::spawn(server::listen(Arc::clone(self), listener)),
            tokio::spawn(Arc::clone(self).maintain(local)),
            tokio::spawn(relay::stay_reachable(Arc::clone(self))),
        ])
    }

    fn set_keys(&self, jwks: &Jwks) {
        let made = KeySet::from_jwks(jwks)
            .map_err(ChannelError::from)
            .and_then(|keys| TicketCheck::new(keys, self.device(), &self.key.to_public_key()));
        match made {
            Ok(check) => {
                *self.check.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(check));
            }
            Err(e) => tracing::warn!(error = %e, "the cloud's keys are unusable"),
        }
    }

    /// The check a peer's ticket must pass: the cloud's signature, and not revoked.
    fn check(&self) -> Result<Arc<dyn PeerCheck + Send + Sync>, ChannelError> {
        let tickets = self
            .check
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ChannelError::NoKeys)?;
        Ok(Arc::new(NotRevoked {
            tickets,
            revoked: Arc::clone(&self.revoked),
        }))
    }

    pub(super) fn relay_addr(&self) -> Option<String> {
        self.relay_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn ca_pem(&self) -> &[u8] {
        &self.cfg.ca_pem
    }

    /// Refreshes what the device knows of its peers and tells the cloud where it listens.
    async fn maintain(self: Arc<Self>, local: SocketAddr) {
        loop {
            if let Err(e) = self.refresh(local).await {
                tracing::debug!(error = %e, "refreshing the peer list");
            }
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    }

    async fn refresh(&self, local: SocketAddr) -> Result<(), crate::agent::client::ClientError> {
        let (info, jwks) = self.client.cloud_info().await?;
        self.set_keys(&jwks);
        if let Ok(text) = serde_json::to_vec(&jwks) {
            let _ = std::fs::write(&self.cfg.jwks_file, text);
        }
        *self.relay_addr.write().unwrap_or_else(|p| p.into_inner()) = info.relay;
        let advertise = self.advertised_addr(local).await;
        let known = *self.advertised.read().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = advertise
            && known != Some(addr)
        {
            self.client.set_presence(vec![addr.to_string()]).await?;
            *self.advertised.write().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        }
        self.list_peers().await
    }

    /// Tells the cloud this device no longer listens, so peers stop dialing it (a crash
    /// leaves the old address, which then refuses connections). Gives up after a moment:
    /// an agent stopping offline must not hang on it.
    pub async fn withdraw(&self) {
        let withdrawn = tokio::time::timeout(WITHDRAW_WITHIN, self.client.set_presence(Vec::new()));
        match withdrawn.await {
            Ok(Ok(_)) => tracing::debug!("peer address withdrawn"),
            Ok(Err(e)) => tracing::debug!(error = %e, "withdrawing the peer address"),
            Err(_) => tracing::debug!("withdrawing the peer address took too long"),
        }
    }

    fn list_is_stale(&self) -> bool {
        self.listed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() > RELIST_AFTER)
    }

    /// Reads the user's devices from the cloud: the peers, and those revoked.
    async fn list_peers(&self) -> Result<(), crate::agent::client::ClientError> {
        // Stamped first: connections arriving meanwhile do not ask the cloud again.
        *self.listed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let me = self.device().to_string();
        let (revoked, peers): (Vec<Device>, Vec<Device>) = self
            .client
            .devices()
            .await?
            .into_iter()
            .filter(|d| d.id != me)
            .partition(|d| d.revoked);
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) =
            revoked.into_iter().map(|d| d.id).collect();
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = peers;
        Ok(())
    }

    /// The address peers should dial: the listener's, with an unspecified IP replaced by
    /// the one this host uses to reach the cloud.
    async fn advertised_addr(&self, local: SocketAddr) -> Option<SocketAddr> {
        if let Some(addr) = self.cfg.advertise {
            return Some(addr);
        }
        if !local.ip().is_unspecified() {
            return Some(local);
        }
        let url = reqwest::Url::parse(self.client.base()).ok()?;
        let host = url.host_str()?.trim_matches(['[', ']']).to_string();
        let port = url.port_or_known_default()?;
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()?
            .next()?;
        let bind: SocketAddr = if target.is_ipv4() {
            (IpAddr::from([0, 0, 0, 0]), 0).into()
        } else {
            (IpAddr::from([0u16; 8]), 0).into()
        };
        let probe = tokio::net::UdpSocket::bind(bind).await.ok()?;
        probe.connect(target).await.ok()?;
        Some(SocketAddr::new(probe.local_addr().ok()?.ip(), local.port()))
    }

    /// This device's side of a handshake with `peer` (its ticket for the pair).
    async fn local_peer(
        &self,
        peer: &str,
        folder: Option<&str>,
    ) -> Result<LocalPeer, ChannelError> {
        let ticket =
            self.client
                .peer_ticket(peer, folder)
                .await
                .map_err(|e| ChannelError::NoTicket {
                    device: peer.to_string(),
                    source: Box::new(e),
                })?;
        Ok(LocalPeer {
            device: self.device().to_string(),
            key: Arc::clone(&self.key),
            ticket,
            key_log: self.cfg.key_log.clone(),
        })
    }

    /// The responder's handshake on an incoming stream.
    /// A device revoked since the peer list was read is refused at once: a list some
    /// seconds old is read again first (at most one cloud request per few seconds, however
    /// many connections arrive; offline, the list on hand decides).
    pub(super) async fn accept(
        self: &Arc<Self>,
        io: BoxIo,
    ) -> Result<Channel<BoxIo>, ChannelError> {
        if self.list_is_stale() {
            let _ = self.list_peers().await;
        }
        let check = self.check()?;
        let client = Arc::clone(&self.client);
        let ticket_for = move |peer: PeerInfo| async move {
            client
                .peer_ticket(&peer.device, peer.folder.as_deref())
                .await
        };
        channel::accept(
            io,
            self.device(),
            Arc::clone(&self.key),
            ticket_for,
            check,
            self.cfg.key_log.clone(),
        )
        .await
    }

    /// The initiator's handshake with `device` on `io`, with a ticket limited to `scope`.
    async fn handshake(
        &self,
        io: BoxIo,
        device: &str,
        scope: Option<&str>,
    ) -> Result<Channel<BoxIo>, ChannelError> {
        let check = self.check()?;
        let me = self.local_peer(device, scope).await?;
        channel::connect(io, me, device, check).await
    }

    /// A live link to a candidate, made if needed (one attempt at a time per key).
    async fn link(&self, c: &Candidate, relayed: bool) -> Result<Arc<Link>, String> {
        let key: LinkKey = (c.dev.id.clone(), relayed, c.scope.clone());
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
            return Err("failed moments ago".into());
        }
        match self.open_link(c, relayed).await {
            Ok(link) => {
                *slot = Some(Arc::clone(&link));
                Ok(link)
            }
            Err(why) => {
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Instant::now());
                Err(why)
            }
        }
    }

    async fn open_link(&self, c: &Candidate, relayed: bool) -> Result<Arc<Link>, String> {
        let (id, scope) = (c.dev.id.as_str(), c.scope.as_deref());
        let io = if relayed {
            relay::dial(self, id, scope)
                .await
                .map_err(|e| e.to_string())?
        } else {
            self.dial_direct(&c.dev).await?
        };
        let channel = self
            .handshake(io, id, scope)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Link::new(channel, relayed))
    }

    async fn dial_direct(&self, dev: &Device) -> Result<BoxIo, String> {
        let mut last = format!("device {} reports no address", dev.id);
        for addr in &dev.addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(Box::new(tcp));
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer in {CONNECT_TIMEOUT:?}"),
            }
        }
        Err(last)
    }

    fn is_banned(&self, device: &str) -> bool {
        let mut banned = self.banned.lock().unwrap_or_else(|p| p.into_inner());
        banned.retain(|_, until| *until > Instant::now());
        banned.contains_key(device)
    }

    /// Other users' devices that mapped `folder`, when this device mapped it too (else
    /// the cloud would sign no ticket for the pair); listed again every 30 s.
    async fn sharing(&self, folder: &str) -> Vec<Device> {
        let known = self
            .folder_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(folder)
            .filter(|(at, _)| at.elapsed() < REFRESH_EVERY)
            .map(|(_, list)| list.clone());
        if let Some(list) = known {
            return list;
        }
        let me = self.device().to_string();
        let list = match self.client.folder_devices(folder).await {
            Ok(all) if all.iter().any(|d| d.id == me) => all
                .into_iter()
                .filter(|d| d.user != self.client.user())
                .collect(),
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::debug!(%folder, error = %e, "listing the folder's devices");
                Vec::new()
            }
        };
        self.folder_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(folder.to_string(), (Instant::now(), list.clone()));
        list
    }

    /// The devices to ask for a block of `folder`: those the cloud names as holders of
    /// the file's content first, then those with a direct link made before; the user's
    /// own devices before other users' devices sharing the folder.
    async fn candidates(&self, folder: &str, holders: &[String]) -> Vec<Candidate> {
        let own: Vec<Candidate> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|d| Candidate {
                dev: d.clone(),
                scope: None,
            })
            .collect();
        let shared = self.sharing(folder).await.into_iter().map(|d| Candidate {
            dev: d,
            scope: Some(folder.to_string()),
        });
        let mut all: Vec<Candidate> = own
            .into_iter()
            .chain(shared)
            .filter(|c| !self.is_banned(&c.dev.id))
            .collect();
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        all.sort_by_key(|c| {
            let holds = holders.contains(&c.dev.id);
            let linked = links.contains_key(&(c.dev.id.clone(), false, c.scope.clone()));
            (!holds, !linked)
        });
        all
    }

    /// Asks the peers; when none had it and the peer list is some seconds old (a device may
    /// have come up since), reads the list again and asks once more.
    async fn fetch(&self, want: &Want) -> Result<Bytes, SourceError> {
        let first = self.fetch_from_peers(want).await;
        match first {
            Err(_) if self.list_is_stale() && self.list_peers().await.is_ok() => {
                self.fetch_from_peers(want).await
            }
            other => other,
        }
    }

    async fn fetch_from_peers(&self, want: &Want) -> Result<Bytes, SourceError> {
        let peers = self.candidates(&want.folder, &want.holders).await;
        let mut answered: Vec<&str> = Vec::new();
        let relay = self.relay_addr().is_some();
        for relayed in [false, true] {
            if relayed && !relay {
                break;
            }
            for c in &peers {
                let dev = &c.dev;
                if answered.contains(&dev.id.as_str()) || (!relayed && dev.addrs.is_empty()) {
                    continue;
                }
                let link = match self.link(c, relayed).await {
                    Ok(l) => l,
                    Err(why) => {
                        tracing::debug!(peer = %dev.id, relayed, %why, "peer not reached");
                        continue;
                    }
                };
                match link.get(want).await {
                    Ok(data) => {
                        self.served_by
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .put(want.hash, dev.id.clone());
                        Counters::add(&self.counters.blocks_from_peers, 1);
                        Counters::add(&self.counters.bytes_from_peers, data.len() as u64);
                        return Ok(data);
                    }
                    Err(LinkError::Missing | LinkError::Forbidden) => answered.push(&dev.id),
                    Err(LinkError::Closed(why)) => {
                        tracing::info!(peer = %dev.id, relayed, %why, "peer link lost");
                        self.failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((dev.id.clone(), relayed, c.scope.clone()), Instant::now());
                    }
                }
            }
        }
        if answered.is_empty() {
            Err(SourceError::Unreachable("no peer reached".into()))
        } else {
            Err(SourceError::Missing("no peer holds the block".into()))
        }
    }

    /// Drops the peer that sent a block with the wrong hash and bans it for a while.
    /// Returns whether one was dropped: then another peer may still have the block.
    fn reject(&self, want: &Want) -> bool {
        let Some(device) = self
            .served_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(&want.hash)
        else {
            return false;
        };
        tracing::warn!(peer = %device, hash = %want.hash, "peer sent a wrong block; dropping it");
        self.banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.clone(), Instant::now() + BAN);
        let slots: Vec<LinkSlot> = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<LinkKey> = links
                .keys()
                .filter(|(d, _, _)| *d == device)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| links.remove(k)).collect()
        };
        for slot in slots {
            if let Ok(slot) = slot.try_lock()
                && let Some(link) = slot.as_ref()
            {
                link.close("it sent a wrong block");
            }
        }
        true
    }
}

/// A ticket check that also refuses devices the cloud lists as revoked.
struct NotRevoked {
    tickets: Arc<TicketCheck>,
    revoked: Arc<RwLock<HashSet<String>>>,
}

impl PeerCheck for NotRevoked {
    fn check(&self, claimed_device: &str, ticket: &str) -> Result<PeerInfo, ChannelError> {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        if revoked.contains(claimed_device) {
            return Err(ChannelError::BadTicket(TicketRefusal::Revoked));
        }
        self.tickets.check(claimed_device, ticket)
    }
}

impl BlockSource for PeerNet {
    fn name(&self) -> &str {
        "peers"
    }

    fn get<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        self.fetch(want).boxed()
    }

    fn rejected(&self, want: &Want) -> bool {
        self.reject(want)
    }
}
