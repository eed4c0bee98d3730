//! The agent's HTTPS client of the cloud: pins the cloud's CA, carries tickets and renews
//! them before they expire. Identity tickets are renewed with an assertion signed by the
//! device key; access tickets, one per folder, sit in an LRU.

pub use crate::agent::remote::ClientError;

use crate::agent::home::{Home, HomeError};
use crate::agent::remote::Remote;
use crate::crypto::keys::KeyError;
use crate::crypto::ticket::Signer;
use crate::proto::{
    AUDIENCE_RENEW, AccessRequest, ApiError, BlockBatch, BlockHash, ChangeBatch, ClaimChallenge,
    CloudInfo, Device, DeviceAssertion, Entry, EntryList, ErrorCode, FileVersion, Folder,
    FolderGrant, FolderPatch, Invitation, JournalMark, Jwks, LoginRequest, LoginResponse, Member,
    MemberUpdate, NewFolder, NewInvitation, PeerRequest, Presence, RenewRequest, Restore, Right,
    StepResults, Steps, TicketResponse, Usage, decode_block_batch, now_secs,
};
use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use reqwest::{Method, RequestBuilder, StatusCode};
use rsa::PrivateKey;
use serde::de::DeserializeOwned;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Renew a ticket once less than this much of its life is left, or a quarter of its life
/// for short-lived tickets, so a request never leaves with a ticket about to expire.
const RENEW_BEFORE_SECS: i64 = 60;

/// Builds the HTTPS client that trusts only the cloud's CA.
pub fn https(ca_pem: &[u8]) -> Result<reqwest::Client, ClientError> {
    crate::net::tls::https_client(ca_pem).map_err(|e| ClientError::Setup(Box::new(e)))
}

/// What lies under `err`, outermost first: the refused connection, the failed handshake.
fn causes(err: &dyn std::error::Error) -> String {
    std::iter::successors(err.source(), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

async fn send(url: &str, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
    let resp = req
        .send()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_string(),
            source: Box::new(source),
        })?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => (e.error, e.message),
        Err(_) => (
            ErrorCode::Unknown,
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        ),
    };
    Err(ClientError::Api {
        status,
        code,
        message,
    })
}

async fn json<T: DeserializeOwned>(url: &str, resp: reqwest::Response) -> Result<T, ClientError> {
    resp.json()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_string(),
            source: Box::new(source),
        })
}

/// Whether the cloud at `cloud` answers.
pub async fn health(http: &reqwest::Client, cloud: &str) -> Result<(), ClientError> {
    let url = format!("{cloud}/health");
    send(&url, http.get(&url)).await?;
    Ok(())
}

/// A fresh challenge for a device claim.
pub async fn claim_challenge(
    http: &reqwest::Client,
    cloud: &str,
) -> Result<ClaimChallenge, ClientError> {
    let url = format!("{cloud}/login/challenge");
    let resp = send(&url, http.post(&url)).await?;
    json(&url, resp).await
}

/// Logs a device in with the user's password and claims it; returns the device id.
pub async fn login(
    http: &reqwest::Client,
    cloud: &str,
    req: &LoginRequest,
) -> Result<LoginResponse, ClientError> {
    let url = format!("{cloud}/login");
    let resp = send(&url, http.post(&url).json(req)).await?;
    json(&url, resp).await
}

#[derive(Clone)]
struct Held {
    token: String,
    expires_at: i64,
    /// Seconds before expiry at which the ticket counts as stale.
    margin: i64,
}

impl Held {
    fn fresh(&self) -> bool {
        now_secs() + self.margin < self.expires_at
    }
}

impl From<TicketResponse> for Held {
    fn from(t: TicketResponse) -> Self {
        let life = (t.expires_at - now_secs()).max(0);
        Held {
            token: t.ticket,
            expires_at: t.expires_at,
            margin: RENEW_BEFORE_SECS.min(life / 4),
        }
    }
}

/// An authenticated client for one device.
pub struct CloudClient {
    http: reqwest::Client,
    /// The URLs of the cloud's processes; requests go to `bases[at]` until it fails.
    bases: Vec<String>,
    at: AtomicUsize,
    user: String,
    device_id: String,
    assertion_signer: Signer,
    identity: tokio::sync::Mutex<Option<Held>>,
    relay: tokio::sync::Mutex<Option<Held>>,
    access: Mutex<LruCache<String, Held>>,
    /// Peer tickets by the other device and the folder they go through.
    peer: Mutex<LruCache<(String, Option<String>), Held>>,
}

/// The cloud's CA as the device pinned it at login.
pub fn read_ca(home: &Home) -> Result<Vec<u8>, ClientError> {
    std::fs::read(home.ca()).map_err(|source| ClientError::Ca {
        path: home.ca().display().to_string(),
        source,
    })
}

/// A client of the cloud for the device logged in at `home`.
pub fn connect(home: &Home) -> Result<CloudClient, ConnectError> {
    let dev = home.load_device()?;
    let key = home.unlock()?.key.clone();
    Ok(CloudClient::new(
        https(&read_ca(home)?)?,
        &dev.clouds(),
        &dev.user,
        &dev.device_id,
        key,
    ))
}

/// Why a device's client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CloudClient {
    /// A client of the cloud at `bases` (one URL or several of one cloud).
    pub fn new(
        http: reqwest::Client,
        bases: &[String],
        user: &str,
        device_id: &str,
        key: PrivateKey,
    ) -> Self {
        Self {
            http,
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            at: AtomicUsize::new(0),
            user: user.to_string(),
            device_id: device_id.to_string(),
            assertion_signer: Signer::new(device_id, key),
            identity: tokio::sync::Mutex::new(None),
            relay: tokio::sync::Mutex::new(None),
            access: Mutex::new(LruCache::new(
                NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            )),
            peer: Mutex::new(LruCache::new(
                NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The URL requests go to now.
    pub fn cloud_url(&self) -> &str {
        let at = self.at.load(Ordering::Relaxed);
        self.bases.get(at).map_or("", String::as_str)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cloud_url(), path)
    }

    /// After `err` from `url`: whether to send the request again at once to the cloud's
    /// next URL. Any failure to reach a URL moves later requests to the next one; a request
    /// is sent again at once only when it never left (no connection was made), so nothing
    /// is applied twice.
    fn fail_over(&self, url: &str, err: &ClientError) -> bool {
        if self.bases.len() < 2 || !err.is_unreachable() {
            return false;
        }
        let at = self.at.load(Ordering::Relaxed);
        if !url.starts_with(self.bases[at].as_str()) {
            // Another request moved on already.
            return err.never_sent();
        }
        let next = (at + 1) % self.bases.len();
        if self
            .at
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(from = %self.bases[at], to = %self.bases[next], error = %err, cause = %causes(err), "moving to another cloud process");
        }
        err.never_sent()
    }

    /// Sends the request `build` makes for `url` (on the current cloud URL), once more on
    /// each other URL while the cloud cannot be reached and the request never left.
    async fn send_failing_over(
        &self,
        path: &str,
        build: impl Fn(&str) -> RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let mut tries = self.bases.len().max(1);
        loop {
            let url = self.url(path);
            match send(&url, build(&url)).await {
                Err(e) if tries > 1 && self.fail_over(&url, &e) => tries -= 1,
                other => return other,
            }
        }
    }

    /// A valid identity ticket, renewed with a device-signed assertion when near expiry.
    async fn identity(&self) -> Result<String, ClientError> {
        let mut held = self.identity.lock().await;
        if let Some(h) = held.as_ref().filter(|h| h.fresh()) {
            return Ok(h.token.clone());
        }
        let now = now_secs();
        let assertion = self.assertion_signer.sign(&DeviceAssertion {
            iss: self.device_id.clone(),
            aud: AUDIENCE_RENEW.into(),
            iat: now,
            exp: now + 60,
            jti: uuid::Uuid::new_v4().to_string(),
        });
        let body = RenewRequest {
            device_id: self.device_id.clone(),
            assertion,
        };
        let path = "/tickets/identity";
        let resp = self
            .send_failing_over(path, |url| self.http.post(url).json(&body))
            .await?;
        let t: TicketResponse = json(path, resp).await?;
        let token = t.ticket.clone();
        *held = Some(t.into());
        Ok(token)
    }

    fn cached_access(&self, folder: &str) -> Option<String> {
        let mut lru = self.access.lock().unwrap_or_else(|p| p.into_inner());
        lru.get(folder)
            .filter(|h| h.fresh())
            .map(|h| h.token.clone())
    }

    fn remember_access(&self, folder: &str, t: TicketResponse) {
        let mut lru = self.access.lock().unwrap_or_else(|p| p.into_inner());
        lru.put(folder.to_string(), t.into());
    }

    /// A valid access ticket for a folder, with the rights the user holds there.
    async fn access(&self, folder: &str) -> Result<String, ClientError> {
        if let Some(t) = self.cached_access(folder) {
            return Ok(t);
        }
        let id = self.identity().await?;
        let body = AccessRequest {
            resource: format!("/folders/{folder}"),
            rights: vec![Right::Read, Right::Write, Right::Admin],
        };
        let path = "/tickets/access";
        let resp = self
            .send_failing_over(path, |url| self.http.post(url).bearer_auth(&id).json(&body))
            .await?;
        let t: TicketResponse = json(path, resp).await?;
        let token = t.ticket.clone();
        self.remember_access(folder, t);
        Ok(token)
    }

    /// Sends a request with a ticket; on a 401 for an expired ticket, renews once and retries.
    async fn authed(
        &self,
        folder: Option<&str>,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        for attempt in 0..2 {
            let token = match folder {
                Some(f) => self.access(f).await?,
                None => self.identity().await?,
            };
            let req = |url: &str| build(self.http.request(method.clone(), url).bearer_auth(&token));
            match self.send_failing_over(path, req).await {
                Err(ClientError::Api {
                    status: 401,
                    code: ErrorCode::TicketExpired,
                    ..
                }) if attempt == 0 => {
                    self.forget_tickets(folder).await;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn forget_tickets(&self, folder: Option<&str>) {
        match folder {
            Some(f) => {
                self.access.lock().unwrap_or_else(|p| p.into_inner()).pop(f);
            }
            None => *self.identity.lock().await = None,
        }
    }

    pub async fn create_folder(
        &self,
        name: &str,
        device_only: bool,
    ) -> Result<FolderGrant, ClientError> {
        let body = NewFolder {
            name: name.to_string(),
            device_only,
        };
        let resp = self
            .authed(None, Method::POST, "/folders", |r| r.json(&body))
            .await?;
        json("/folders", resp).await
    }

    /// Switches a folder between cloud-synced and device-only.
    pub async fn set_device_only(&self, folder: &str, on: bool) -> Result<Folder, ClientError> {
        let path = format!("/folders/{folder}");
        let body = FolderPatch {
            device_only: Some(on),
        };
        let resp = self
            .authed(Some(folder), Method::PATCH, &path, |r| r.json(&body))
            .await?;
        json(&path, resp).await
    }

    /// A file's current content and the earlier ones the cloud keeps, newest first.
    pub async fn versions(&self, folder: &str, id: &str) -> Result<Vec<FileVersion>, ClientError> {
        let path = format!("/folders/{folder}/entries/{id}/versions");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// Deleted files of a folder that can still be restored, newest first.
    pub async fn trash(&self, folder: &str) -> Result<Vec<Entry>, ClientError> {
        let path = format!("/folders/{folder}/trash");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// Restores a version of a file, or a deleted file; returns the entry as it now is.
    pub async fn restore(
        &self,
        folder: &str,
        id: &str,
        body: &Restore,
    ) -> Result<Entry, ClientError> {
        let path = format!("/folders/{folder}/entries/{id}/restore");
        let resp = self
            .authed(Some(folder), Method::POST, &path, |r| r.json(body))
            .await?;
        json(&path, resp).await
    }

    /// Maps (`on`) or unmaps a folder on one of the user's devices.
    pub async fn set_mapped(
        &self,
        device: &str,
        folder: &str,
        on: bool,
    ) -> Result<Device, ClientError> {
        let path = format!("/users/{}/devices/{device}/folders/{folder}", self.user);
        let method = if on { Method::PUT } else { Method::DELETE };
        let resp = self.authed(None, method, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// Sends `body` (if any) with the folder's access ticket (`Some`) or the identity
    /// ticket, and reads the JSON answer.
    async fn call<T: DeserializeOwned, B: serde::Serialize + Sync>(
        &self,
        folder: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let resp = self
            .authed(folder, method, path, |r| match body {
                Some(b) => r.json(b),
                None => r,
            })
            .await?;
        json(path, resp).await
    }

    /// Invites `user` to a folder this user owns.
    pub async fn invite(
        &self,
        folder: &str,
        invitation: &NewInvitation,
    ) -> Result<Invitation, ClientError> {
        let path = format!("/folders/{folder}/invitations");
        self.call(Some(folder), Method::POST, &path, Some(invitation))
            .await
    }

    /// Sets a member's role and share of a folder this user owns.
    pub async fn update_member(
        &self,
        folder: &str,
        user: &str,
        update: &MemberUpdate,
    ) -> Result<Member, ClientError> {
        let path = format!("/folders/{folder}/members/{user}");
        self.call(Some(folder), Method::PUT, &path, Some(update))
            .await
    }

    /// The folder's owner and members.
    pub async fn members(&self, folder: &str) -> Result<Vec<Member>, ClientError> {
        let path = format!("/folders/{folder}/members");
        self.call(Some(folder), Method::GET, &path, None::<&()>)
            .await
    }

    /// The invitations to a folder this user owns that wait for an answer.
    pub async fn invitations_to(&self, folder: &str) -> Result<Vec<Invitation>, ClientError> {
        let path = format!("/folders/{folder}/invitations");
        self.call(Some(folder), Method::GET, &path, None::<&()>)
            .await
    }

    /// The invitations waiting for this user.
    pub async fn invitations(&self) -> Result<Vec<Invitation>, ClientError> {
        let path = format!("/users/{}/invitations", self.user);
        self.call(None, Method::GET, &path, None::<&()>).await
    }

    /// Accepts the invitation to `folder`: this user becomes a member.
    pub async fn accept(&self, folder: &str) -> Result<FolderGrant, ClientError> {
        let path = format!("/folders/{folder}/invitations/{}/accept", self.user);
        let grant: FolderGrant = self.call(None, Method::POST, &path, None::<&()>).await?;
        self.remember_access(folder, grant.ticket.clone());
        Ok(grant)
    }

    /// Drops an invitation: this user's own (declining), or, as the folder's owner, one to
    /// `user` (withdrawing it).
    pub async fn drop_invitation(&self, folder: &str, user: &str) -> Result<(), ClientError> {
        let path = format!("/folders/{folder}/invitations/{user}");
        let ticket = (user != self.user).then_some(folder);
        self.authed(ticket, Method::DELETE, &path, |r| r).await?;
        Ok(())
    }

    /// Removes `user` from a folder this user owns, or (`user` is this user) leaves it.
    pub async fn remove_member(&self, folder: &str, user: &str) -> Result<(), ClientError> {
        let path = format!("/folders/{folder}/members/{user}");
        self.authed(Some(folder), Method::DELETE, &path, |r| r)
            .await?;
        Ok(())
    }

    pub async fn revoke(&self, device: &str) -> Result<Device, ClientError> {
        let path = format!("/users/{}/devices/{device}", self.user);
        let resp = self.authed(None, Method::DELETE, &path, |r| r).await?;
        json(&path, resp).await
    }
}

#[async_trait]
impl Remote for CloudClient {
    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn user(&self) -> &str {
        &self.user
    }

    fn base(&self) -> Option<&str> {
        Some(self.cloud_url())
    }

    async fn folders(&self) -> Result<Vec<FolderGrant>, ClientError> {
        let path = format!("/users/{}/folders", self.user);
        let resp = self.authed(None, Method::GET, &path, |r| r).await?;
        let grants: Vec<FolderGrant> = json(&path, resp).await?;
        for g in &grants {
            self.remember_access(&g.folder.id, g.ticket.clone());
        }
        Ok(grants)
    }

    async fn entries(&self, folder: &str) -> Result<EntryList, ClientError> {
        let path = format!("/folders/{folder}/entries");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    async fn entry(&self, folder: &str, id: &str) -> Result<Entry, ClientError> {
        let path = format!("/folders/{folder}/entries/{id}");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    async fn changes(
        &self,
        folder: &str,
        since: u64,
        wait_secs: u64,
    ) -> Result<ChangeBatch, ClientError> {
        let path = format!("/folders/{folder}/changes?since={since}&wait={wait_secs}");
        let timeout = Duration::from_secs(wait_secs + 15);
        let resp = self
            .authed(Some(folder), Method::GET, &path, |r| r.timeout(timeout))
            .await?;
        json(&path, resp).await
    }

    /// Several puts and deletes in one request and one cloud transaction, applied in
    /// order up to the first refused (see [`Steps`]).
    async fn apply_steps(&self, folder: &str, steps: &Steps) -> Result<StepResults, ClientError> {
        let path = format!("/folders/{folder}/steps");
        let resp = self
            .authed(Some(folder), Method::POST, &path, |r| r.json(steps))
            .await?;
        json(&path, resp).await
    }

    /// How far the cloud applied this device's journal `journal`.
    async fn journal_mark(&self, journal: &str) -> Result<u64, ClientError> {
        let path = format!(
            "/users/{}/devices/{}/journals/{journal}",
            self.user, self.device_id
        );
        let resp = self.authed(None, Method::GET, &path, |r| r).await?;
        let mark: JournalMark = json(&path, resp).await?;
        Ok(mark.applied)
    }

    async fn usage(&self) -> Result<Usage, ClientError> {
        let path = format!("/users/{}/usage", self.user);
        let resp = self
            .authed(None, Method::GET, &path, |r| {
                r.timeout(Duration::from_secs(5))
            })
            .await?;
        json(&path, resp).await
    }

    async fn has_block(&self, folder: &str, hash: &BlockHash) -> Result<bool, ClientError> {
        let path = format!("/folders/{folder}/blocks/{hash}");
        match self.authed(Some(folder), Method::HEAD, &path, |r| r).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn put_block(
        &self,
        folder: &str,
        hash: &BlockHash,
        data: Bytes,
    ) -> Result<(), ClientError> {
        let path = format!("/folders/{folder}/blocks/{hash}");
        self.authed(Some(folder), Method::PUT, &path, |r| r.body(data.clone()))
            .await?;
        Ok(())
    }

    /// The block's bytes as the cloud sent them: the caller checks them against the hash.
    async fn get_block(&self, folder: &str, hash: &BlockHash) -> Result<Bytes, ClientError> {
        let path = format!("/folders/{folder}/blocks/{hash}");
        let resp = self
            .authed(Some(folder), Method::GET, &path, |r| {
                r.timeout(Duration::from_secs(60))
            })
            .await?;
        resp.bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: path,
                source: Box::new(source),
            })
    }

    async fn get_blocks(
        &self,
        folder: &str,
        hashes: &[BlockHash],
    ) -> Result<Vec<Option<Bytes>>, ClientError> {
        let path = format!("/folders/{folder}/blocks");
        let body = BlockBatch {
            hashes: hashes.to_vec(),
        };
        let resp = self
            .authed(Some(folder), Method::POST, &path, |r| {
                r.json(&body).timeout(Duration::from_secs(60))
            })
            .await?;
        let data = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: path.clone(),
                source: Box::new(source),
            })?;
        decode_block_batch(&data, hashes.len()).ok_or_else(|| ClientError::Unreachable {
            url: path,
            source: "the answer to a batch of blocks is malformed".into(),
        })
    }

    async fn devices(&self) -> Result<Vec<Device>, ClientError> {
        let path = format!("/users/{}/devices", self.user);
        let resp = self.authed(None, Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// The devices, of any member, that have `folder` mapped.
    async fn folder_devices(&self, folder: &str) -> Result<Vec<Device>, ClientError> {
        let path = format!("/folders/{folder}/devices");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// The relays devices meet at, and the cloud's signing keys (both public, no ticket).
    async fn cloud_info(&self) -> Result<(CloudInfo, Jwks), ClientError> {
        let (info_path, jwks_path) = ("/.well-known/meshfs", "/.well-known/jwks.json");
        let get = |url: &str| self.http.get(url);
        let info = json(info_path, self.send_failing_over(info_path, get).await?).await?;
        let jwks = json(jwks_path, self.send_failing_over(jwks_path, get).await?).await?;
        Ok((info, jwks))
    }

    /// Tells the cloud where this device's peer listener is reached.
    async fn set_presence(&self, addrs: Vec<String>) -> Result<Device, ClientError> {
        let path = format!("/users/{}/devices/{}/presence", self.user, self.device_id);
        let body = Presence { addrs };
        let resp = self
            .authed(None, Method::PUT, &path, |r| r.json(&body))
            .await?;
        json(&path, resp).await
    }

    /// A relay ticket for this device, from the cache while it has some life left.
    async fn relay_ticket(&self) -> Result<String, ClientError> {
        let mut held = self.relay.lock().await;
        if let Some(h) = held.as_ref().filter(|h| h.fresh()) {
            return Ok(h.token.clone());
        }
        let path = "/tickets/relay";
        let resp = self.authed(None, Method::POST, path, |r| r).await?;
        let t: TicketResponse = json(path, resp).await?;
        let token = t.ticket.clone();
        *held = Some(t.into());
        Ok(token)
    }

    /// A peer ticket naming this device and `device` (through `folder` for devices of
    /// another user), from the cache while it has some life left.
    async fn peer_ticket(&self, device: &str, folder: Option<&str>) -> Result<String, ClientError> {
        let key = (device.to_string(), folder.map(str::to_string));
        {
            let mut lru = self.peer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = lru.get(&key).filter(|h| h.fresh()) {
                return Ok(h.token.clone());
            }
        }
        let body = PeerRequest {
            device: key.0.clone(),
            folder: key.1.clone(),
        };
        let resp = self
            .authed(None, Method::POST, "/tickets/peer", |r| r.json(&body))
            .await?;
        let t: TicketResponse = json("/tickets/peer", resp).await?;
        let token = t.ticket.clone();
        self.peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, t.into());
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_causes_of_an_unreachable_cloud_are_named_outermost_first() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(ClientError::Unreachable {
            url: "https://127.0.0.1:1".into(),
            source: Box::new(inner),
        });
        let err = ClientError::Unreachable {
            url: "https://127.0.0.1:2".into(),
            source: Box::new(outer),
        };
        assert_eq!(
            causes(&err),
            "cannot reach the cloud at https://127.0.0.1:1; check that it runs and that this \
             device is online: connection refused"
        );
    }
}
