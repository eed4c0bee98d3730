//! The agent's HTTPS client of the cloud: pins the cloud's CA, carries tickets and renews
//! them before they expire. Identity tickets are renewed with an assertion signed by the
//! device key; access tickets, one per folder, sit in an LRU.

use crate::crypto::ticket::Signer;
use crate::proto::{
    AUDIENCE_RENEW, AccessRequest, ApiError, BlockHash, ChangeBatch, CloudInfo, Device,
    DeviceAssertion, Entry, EntryList, EntryPut, Folder, FolderGrant, FolderPatch, JournalMark,
    Jwks, LoginRequest, LoginResponse, NewFolder, PeerRequest, Presence, RenewRequest, Right,
    StepResults, Steps, TicketResponse, Usage, now_secs,
};
use bytes::Bytes;
use lru::LruCache;
use reqwest::{Method, RequestBuilder, StatusCode};
use rsa::PrivateKey;
use serde::de::DeserializeOwned;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

/// Renew a ticket once less than this much of its life is left, or a quarter of its life
/// for short-lived tickets, so a request never leaves with a ticket about to expire.
const RENEW_BEFORE_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cloud at {url}; check that it runs and that this device is online")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the cloud answered {status}: {message}")]
    Api {
        status: u16,
        error: String,
        message: String,
    },
    #[error("could not read the cloud's CA at {path}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the HTTPS client")]
    Setup(#[source] reqwest::Error),
}

impl ClientError {
    /// The HTTP status of a refusal, if the cloud answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The cloud could not be reached (the request may be retried later).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Builds the HTTPS client that trusts only the cloud's CA.
pub fn https(ca_pem: &[u8]) -> Result<reqwest::Client, ClientError> {
    crate::crypto::install_tls_provider();
    let cert = reqwest::Certificate::from_pem(ca_pem).map_err(ClientError::Setup)?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .https_only(true)
        .connect_timeout(Duration::from_secs(5))
        // A cloud that accepts but never answers must not hang a request forever; long
        // polls and block transfers set their own, longer timeouts.
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(ClientError::Setup)
}

async fn send(url: &str, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
    let resp = req
        .send()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let (error, message) = match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => (e.error, e.message),
        Err(_) => (
            "http".into(),
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        ),
    };
    Err(ClientError::Api {
        status,
        error,
        message,
    })
}

async fn json<T: DeserializeOwned>(url: &str, resp: reqwest::Response) -> Result<T, ClientError> {
    resp.json()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        })
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
    base: String,
    user: String,
    device_id: String,
    assertion_signer: Signer,
    identity: tokio::sync::Mutex<Option<Held>>,
    access: Mutex<LruCache<String, Held>>,
    /// Peer tickets by the other device and the folder they go through.
    peer: Mutex<LruCache<(String, Option<String>), Held>>,
}

impl CloudClient {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        user: &str,
        device_id: &str,
        key: PrivateKey,
    ) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            user: user.to_string(),
            device_id: device_id.to_string(),
            assertion_signer: Signer::new(device_id, key),
            identity: tokio::sync::Mutex::new(None),
            access: Mutex::new(LruCache::new(
                NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            )),
            peer: Mutex::new(LruCache::new(
                NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The cloud's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A valid identity ticket, renewed with a device-signed assertion when near expiry.
    pub async fn identity(&self) -> Result<String, ClientError> {
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
        let url = self.url("/tickets/identity");
        let body = RenewRequest {
            device_id: self.device_id.clone(),
            assertion,
        };
        let resp = send(&url, self.http.post(&url).json(&body)).await?;
        let t: TicketResponse = json(&url, resp).await?;
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

    /// A valid access ticket for a folder (read and write where the user holds them).
    async fn access(&self, folder: &str) -> Result<String, ClientError> {
        if let Some(t) = self.cached_access(folder) {
            return Ok(t);
        }
        let id = self.identity().await?;
        let url = self.url("/tickets/access");
        let body = AccessRequest {
            resource: format!("/folders/{folder}"),
            rights: vec![Right::Read, Right::Write],
        };
        let resp = send(&url, self.http.post(&url).bearer_auth(id).json(&body)).await?;
        let t: TicketResponse = json(&url, resp).await?;
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
        let url = self.url(path);
        for attempt in 0..2 {
            let token = match folder {
                Some(f) => self.access(f).await?,
                None => self.identity().await?,
            };
            let req = build(self.http.request(method.clone(), &url).bearer_auth(token));
            match send(&url, req).await {
                Err(ClientError::Api {
                    status: 401,
                    ref error,
                    ..
                }) if attempt == 0 && error == "ticket_expired" => {
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

    pub async fn folders(&self) -> Result<Vec<FolderGrant>, ClientError> {
        let path = format!("/users/{}/folders", self.user);
        let resp = self.authed(None, Method::GET, &path, |r| r).await?;
        let grants: Vec<FolderGrant> = json(&path, resp).await?;
        for g in &grants {
            self.remember_access(&g.folder.id, g.ticket.clone());
        }
        Ok(grants)
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

    pub async fn devices(&self) -> Result<Vec<Device>, ClientError> {
        let path = format!("/users/{}/devices", self.user);
        let resp = self.authed(None, Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// A peer ticket naming this device and `device` (through `folder` for devices of
    /// another user), from the cache while it has some life left.
    pub async fn peer_ticket(
        &self,
        device: &str,
        folder: Option<&str>,
    ) -> Result<String, ClientError> {
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

    /// The devices, of any member, that have `folder` mapped.
    pub async fn folder_devices(&self, folder: &str) -> Result<Vec<Device>, ClientError> {
        let path = format!("/folders/{folder}/devices");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// Tells the cloud where this device's peer listener is reached.
    pub async fn set_presence(&self, addrs: Vec<String>) -> Result<Device, ClientError> {
        let path = format!("/users/{}/devices/{}/presence", self.user, self.device_id);
        let body = Presence { addrs };
        let resp = self
            .authed(None, Method::PUT, &path, |r| r.json(&body))
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

    /// Where the relay is, and the cloud's signing keys (both public, no ticket).
    pub async fn cloud_info(&self) -> Result<(CloudInfo, Jwks), ClientError> {
        let (info_url, jwks_url) = (
            self.url("/.well-known/meshfs"),
            self.url("/.well-known/jwks.json"),
        );
        let info = json(&info_url, send(&info_url, self.http.get(&info_url)).await?).await?;
        let jwks = json(&jwks_url, send(&jwks_url, self.http.get(&jwks_url)).await?).await?;
        Ok((info, jwks))
    }

    pub async fn revoke(&self, device: &str) -> Result<Device, ClientError> {
        let path = format!("/users/{}/devices/{device}", self.user);
        let resp = self.authed(None, Method::DELETE, &path, |r| r).await?;
        json(&path, resp).await
    }

    pub async fn usage(&self) -> Result<Usage, ClientError> {
        let path = format!("/users/{}/usage", self.user);
        let resp = self
            .authed(None, Method::GET, &path, |r| {
                r.timeout(Duration::from_secs(5))
            })
            .await?;
        json(&path, resp).await
    }

    pub async fn entries(&self, folder: &str) -> Result<EntryList, ClientError> {
        let path = format!("/folders/{folder}/entries");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    pub async fn entry(&self, folder: &str, id: &str) -> Result<Entry, ClientError> {
        let path = format!("/folders/{folder}/entries/{id}");
        let resp = self.authed(Some(folder), Method::GET, &path, |r| r).await?;
        json(&path, resp).await
    }

    /// Creates (`base` = None, `If-None-Match: *`) or updates (`If-Match: "base"`) an entry.
    pub async fn put_entry(
        &self,
        folder: &str,
        id: &str,
        base: Option<u64>,
        body: &EntryPut,
    ) -> Result<Entry, ClientError> {
        let path = format!("/folders/{folder}/entries/{id}");
        let resp = self
            .authed(Some(folder), Method::PUT, &path, |r| {
                let r = match base {
                    Some(v) => r.header("If-Match", format!("\"{v}\"")),
                    None => r.header("If-None-Match", "*"),
                };
                r.json(body)
            })
            .await?;
        json(&path, resp).await
    }

    pub async fn delete_entry(
        &self,
        folder: &str,
        id: &str,
        base: u64,
    ) -> Result<Entry, ClientError> {
        let path = format!("/folders/{folder}/entries/{id}");
        let resp = self
            .authed(Some(folder), Method::DELETE, &path, |r| {
                r.header("If-Match", format!("\"{base}\""))
            })
            .await?;
        json(&path, resp).await
    }

    /// Several puts and deletes in one request and one cloud transaction, applied in
    /// order up to the first refused (see [`Steps`]).
    pub async fn apply_steps(
        &self,
        folder: &str,
        steps: &Steps,
    ) -> Result<StepResults, ClientError> {
        let path = format!("/folders/{folder}/steps");
        let resp = self
            .authed(Some(folder), Method::POST, &path, |r| r.json(steps))
            .await?;
        json(&path, resp).await
    }

    /// How far the cloud applied this device's journal `journal`.
    pub async fn journal_mark(&self, journal: &str) -> Result<u64, ClientError> {
        let path = format!(
            "/users/{}/devices/{}/journals/{journal}",
            self.user, self.device_id
        );
        let resp = self.authed(None, Method::GET, &path, |r| r).await?;
        let mark: JournalMark = json(&path, resp).await?;
        Ok(mark.applied)
    }

    pub async fn changes(
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

    pub async fn has_block(&self, folder: &str, hash: &BlockHash) -> Result<bool, ClientError> {
        let path = format!("/folders/{folder}/blocks/{hash}");
        match self.authed(Some(folder), Method::HEAD, &path, |r| r).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn put_block(
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
    pub async fn get_block(&self, folder: &str, hash: &BlockHash) -> Result<Bytes, ClientError> {
        let path = format!("/folders/{folder}/blocks/{hash}");
        let resp = self
            .authed(Some(folder), Method::GET, &path, |r| {
                r.timeout(Duration::from_secs(60))
            })
            .await?;
        resp.bytes()
            .await
            .map_err(|source| ClientError::Unreachable { url: path, source })
    }
}
