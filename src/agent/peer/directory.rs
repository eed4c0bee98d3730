//! Who this device's peers are, as the cloud says: the user's other devices (and which of
//! them are revoked), other users' devices that mapped a shared folder, the cloud's keys
//! that peer tickets are checked with (kept on disk for offline use), the relays, and
//! where this device itself tells peers it listens.

use crate::agent::remote::{ClientError, Remote};
use crate::crypto::channel::{ChannelError, PeerCheck, PeerInfo, TicketCheck, TicketRefusal};
use crate::crypto::ticket::KeySet;
use crate::proto::{Device, ErrorCode, Jwks, RelayInfo};
use rsa::PublicKey;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the peer list, the cloud's keys and this device's presence are refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// A peer list older than this is read again before a block is given up on, or before a
/// handshake is answered.
const RELIST_AFTER: Duration = Duration::from_secs(3);
/// How long a stopping agent tries to tell the cloud it no longer listens.
const WITHDRAW_WITHIN: Duration = Duration::from_secs(2);

/// A folder's devices of other users, and when they were listed.
type Listed = (Instant, Arc<Vec<Device>>);

pub struct Directory {
    remote: Arc<dyn Remote>,
    /// This device's public key: a peer ticket must name it.
    public: PublicKey,
    /// Where the cloud's keys are kept for checking peer tickets offline.
    jwks_file: PathBuf,
    check: RwLock<Option<Arc<TicketCheck>>>,
    /// The user's other devices that are not revoked.
    peers: RwLock<Vec<Device>>,
    /// The user's devices the cloud lists as revoked: refused even with a ticket that is
    /// still in its time window.
    revoked: Arc<RwLock<HashSet<String>>>,
    /// Other users' devices that mapped a folder, by folder, with when they were listed.
    folder_peers: Mutex<HashMap<String, Listed>>,
    /// Counts the changes of members told by [`Directory::forget_folder`], for channels
    /// that serve another user's device to look again.
    members: tokio::sync::watch::Sender<u64>,
    /// When the peer list was last read from the cloud (or a read of it started).
    listed_at: Mutex<Option<Instant>>,
    relays: tokio::sync::watch::Sender<Vec<RelayInfo>>,
    advertised: RwLock<Option<SocketAddr>>,
}

impl Directory {
    /// A directory for the device whose key is `public`, with the cloud's keys read from
    /// `jwks_file` when a previous run kept them there.
    pub fn new(remote: Arc<dyn Remote>, public: PublicKey, jwks_file: PathBuf) -> Self {
        let dir = Self {
            remote,
            public,
            jwks_file,
            check: RwLock::new(None),
            peers: RwLock::new(Vec::new()),
            revoked: Arc::default(),
            folder_peers: Mutex::new(HashMap::new()),
            members: tokio::sync::watch::Sender::new(0),
            listed_at: Mutex::new(None),
            relays: tokio::sync::watch::Sender::new(Vec::new()),
            advertised: RwLock::new(None),
        };
        if let Ok(text) = std::fs::read(&dir.jwks_file)
            && let Ok(jwks) = serde_json::from_slice::<Jwks>(&text)
        {
            dir.set_keys(&jwks);
        }
        dir
    }

    fn set_keys(&self, jwks: &Jwks) {
        let made = KeySet::from_jwks(jwks)
            .map_err(ChannelError::from)
            .and_then(|keys| TicketCheck::new(keys, self.remote.device_id(), &self.public));
        match made {
            Ok(check) => {
                *self.check.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(check));
            }
            Err(e) => tracing::warn!(error = %e, "the cloud's keys are unusable"),
        }
    }

    /// The check a peer's ticket must pass: the cloud's signature, and not revoked.
    pub fn check(&self) -> Result<Arc<dyn PeerCheck + Send + Sync>, ChannelError> {
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

    /// The relays the cloud names, in the order to try them.
    pub fn relays(&self) -> Vec<RelayInfo> {
        self.relays.borrow().clone()
    }

    /// The relays, as they change.
    pub fn watch_relays(&self) -> tokio::sync::watch::Receiver<Vec<RelayInfo>> {
        self.relays.subscribe()
    }

    /// The user's other devices that are not revoked.
    pub fn own_peers(&self) -> Vec<Device> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads what the cloud says (keys, relays, peers) and tells it where this device
    /// listens (`local`, the listener's address), if that changed.
    pub async fn refresh(
        &self,
        local: SocketAddr,
        advertise: Option<SocketAddr>,
    ) -> Result<(), ClientError> {
        let (info, jwks) = self.remote.cloud_info().await?;
        self.set_keys(&jwks);
        if let Ok(text) = serde_json::to_vec(&jwks) {
            let _ = std::fs::write(&self.jwks_file, text);
        }
        self.relays.send_if_modified(|known| {
            let changed = *known != info.relays;
            *known = info.relays;
            changed
        });
        let addr = match advertise {
            Some(a) => Some(a),
            None => self.advertised_addr(local).await,
        };
        let known = *self.advertised.read().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = addr
            && known != Some(addr)
        {
            match self.remote.set_presence(vec![addr.to_string()]).await {
                Ok(_) => {}
                // Asked again only when the address changes; the peers still list.
                Err(e) if e.code() == Some(ErrorCode::BadAddrs) => tracing::warn!(
                    %addr, error = %e,
                    "the cloud refused this device's peer address; peers reach it through the relay"
                ),
                Err(e) => return Err(e),
            }
            *self.advertised.write().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        }
        self.list_peers().await
    }

    /// Tells the cloud this device no longer listens, so peers stop dialing it (a crash
    /// leaves the old address, which then refuses connections). Gives up after a moment:
    /// an agent stopping offline must not hang on it.
    pub async fn withdraw(&self) {
        let withdrawn = tokio::time::timeout(WITHDRAW_WITHIN, self.remote.set_presence(Vec::new()));
        match withdrawn.await {
            Ok(Ok(_)) => tracing::debug!("peer address withdrawn"),
            Ok(Err(e)) => tracing::debug!(error = %e, "withdrawing the peer address"),
            Err(_) => tracing::debug!("withdrawing the peer address took too long"),
        }
    }

    /// Whether the peer list is old enough to read again before a decision that needs it.
    pub fn is_stale(&self) -> bool {
        self.listed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() > RELIST_AFTER)
    }

    /// Reads the user's devices from the cloud: the peers, and those revoked.
    pub async fn list_peers(&self) -> Result<(), ClientError> {
        // Stamped first: connections arriving meanwhile do not ask the cloud again.
        *self.listed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let me = self.remote.device_id().to_string();
        let (revoked, peers): (Vec<Device>, Vec<Device>) = self
            .remote
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
        if !local.ip().is_unspecified() {
            return Some(local);
        }
        let url = reqwest::Url::parse(self.remote.base()?).ok()?;
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

    /// Other users' devices that mapped `folder`, when this device mapped it too (else
    /// the cloud would sign no ticket for the pair); listed again every 30 s, and at once
    /// after [`Directory::forget_folder`].
    pub async fn sharing(&self, folder: &str) -> Vec<Device> {
        self.sharing_now(folder).await.as_ref().clone()
    }

    /// Whether `device`, of another user, may have `folder`'s blocks: it has the folder
    /// mapped and its user is a member, as the cloud last listed them (see `sharing`).
    pub async fn shares(&self, folder: &str, device: &str) -> bool {
        self.sharing_now(folder)
            .await
            .iter()
            .any(|d| d.id == device)
    }

    /// Drops what is known of `folder`'s devices (its members changed), so the next
    /// question asks the cloud.
    pub fn forget_folder(&self, folder: &str) {
        self.folder_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(folder);
        self.members.send_modify(|n| *n += 1);
    }

    /// Changes whenever some folder's members changed (see [`Directory::forget_folder`]).
    pub fn members_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.members.subscribe()
    }

    /// The list for `folder`, read again once it is old. A cloud out of reach leaves the
    /// last list in use (the peers' tickets still bound it in time).
    async fn sharing_now(&self, folder: &str) -> Arc<Vec<Device>> {
        let known = self
            .folder_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(folder)
            .map(|(at, list)| (at.elapsed() < REFRESH_EVERY, Arc::clone(list)));
        let last = match known {
            Some((true, list)) => return list,
            Some((false, list)) => Some(list),
            None => None,
        };
        let me = self.remote.device_id();
        let list = match self.remote.folder_devices(folder).await {
            Ok(all) if all.iter().any(|d| d.id == me) => Arc::new(
                all.into_iter()
                    .filter(|d| d.user != self.remote.user())
                    .collect(),
            ),
            Ok(_) => Arc::default(),
            Err(e) => {
                tracing::debug!(%folder, error = %e, "listing the folder's devices");
                last.unwrap_or_default()
            }
        };
        self.folder_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(folder.to_string(), (Instant::now(), Arc::clone(&list)));
        list
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
