//! The cloud as the agent's parts see it: the metadata API (folders, entries, steps, the
//! change feed, devices), blocks, and tickets, behind one trait. `CloudClient` speaks it
//! over HTTPS; `memory::MemoryCloud` (tests only) keeps it in memory, with failures to
//! inject, so that the uploader, the feed and the peer directory are tested without a
//! network.

#[cfg(test)]
pub mod memory;

use crate::agent::fetch::{BlockSource, SourceError, Want};
use crate::proto::{
    BlockHash, ChangeBatch, CloudInfo, Device, Entry, EntryList, ErrorCode, FolderGrant, Jwks,
    StepResults, Steps, Usage,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;

/// Any error behind an unreachable cloud (a connection refused, a timeout).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cloud at {url}; check that it runs and that this device is online")]
    Unreachable {
        url: String,
        #[source]
        source: Cause,
    },
    #[error("the cloud answered {status} ({code}): {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("could not read the cloud's CA at {path}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the HTTPS client")]
    Setup(#[source] Cause),
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

    /// The request never reached the cloud (no connection was made), so sending it again
    /// cannot apply it twice.
    pub fn never_sent(&self) -> bool {
        match self {
            ClientError::Unreachable { source, .. } => source
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_connect),
            _ => false,
        }
    }

    /// Why the cloud refused, if it answered with a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the request may succeed later as it is: the cloud was unreachable, busy,
    /// timed out, or failed itself, or the ticket must be renewed first.
    pub fn is_transient(&self) -> bool {
        match self.status() {
            None => !matches!(self, ClientError::Ca { .. } | ClientError::Setup(_)),
            Some(s) => matches!(s, 401 | 408 | 429) || s >= 500,
        }
    }
}

/// The cloud's API as the agent uses it, for one device.
#[async_trait]
pub trait Remote: Send + Sync {
    /// The device this client speaks for.
    fn device_id(&self) -> &str;
    /// The user the device belongs to.
    fn user(&self) -> &str;
    /// The cloud's base URL, when it is reached over the network.
    fn base(&self) -> Option<&str>;

    // ---- the graph ----

    /// The user's folders (own and shared), each with an access ticket.
    async fn folders(&self) -> Result<Vec<FolderGrant>, ClientError>;
    /// The live entries of a folder and the feed position they reflect.
    async fn entries(&self, folder: &str) -> Result<EntryList, ClientError>;
    /// One entry as the cloud has it now (tombstones too).
    async fn entry(&self, folder: &str, id: &str) -> Result<Entry, ClientError>;
    /// Entries changed after `since`, waiting up to `wait_secs` for one.
    async fn changes(
        &self,
        folder: &str,
        since: u64,
        wait_secs: u64,
    ) -> Result<ChangeBatch, ClientError>;
    /// Several puts and deletes in one transaction, applied in order up to the first
    /// refused (see [`Steps`]).
    async fn apply_steps(&self, folder: &str, steps: &Steps) -> Result<StepResults, ClientError>;
    /// How far the cloud applied this device's journal `journal`.
    async fn journal_mark(&self, journal: &str) -> Result<u64, ClientError>;
    /// The user's cloud storage use and quota.
    async fn usage(&self) -> Result<Usage, ClientError>;

    // ---- blocks ----

    async fn has_block(&self, folder: &str, hash: &BlockHash) -> Result<bool, ClientError>;
    async fn put_block(
        &self,
        folder: &str,
        hash: &BlockHash,
        data: Bytes,
    ) -> Result<(), ClientError>;
    /// The block's bytes as the cloud sent them: the caller checks them against the hash.
    async fn get_block(&self, folder: &str, hash: &BlockHash) -> Result<Bytes, ClientError>;
    /// Up to [`crate::proto::MAX_BATCH_BLOCKS`] blocks in one request, `None` for one the
    /// cloud does not have; unchecked, as [`Remote::get_block`].
    async fn get_blocks(
        &self,
        folder: &str,
        hashes: &[BlockHash],
    ) -> Result<Vec<Option<Bytes>>, ClientError>;

    // ---- devices and tickets, for peers ----

    /// The user's devices, revoked ones included.
    async fn devices(&self) -> Result<Vec<Device>, ClientError>;
    /// The devices, of any member, that have `folder` mapped.
    async fn folder_devices(&self, folder: &str) -> Result<Vec<Device>, ClientError>;
    /// The relays devices meet at, and the cloud's signing keys.
    async fn cloud_info(&self) -> Result<(CloudInfo, Jwks), ClientError>;
    /// Tells the cloud where this device's peer listener is reached.
    async fn set_presence(&self, addrs: Vec<String>) -> Result<Device, ClientError>;
    /// A valid relay ticket for this device (shown only to relays).
    async fn relay_ticket(&self) -> Result<String, ClientError>;
    /// A peer ticket naming this device and `device` (through `folder` for a device of
    /// another user).
    async fn peer_ticket(&self, device: &str, folder: Option<&str>) -> Result<String, ClientError>;
}

/// The cloud as a source of blocks, asked after the peers.
pub struct CloudBlocks(pub Arc<dyn Remote>);

impl BlockSource for CloudBlocks {
    fn name(&self) -> &str {
        "cloud"
    }

    fn get<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move {
            self.0
                .get_block(&want.folder, &want.hash)
                .await
                .map_err(|e| match e.status() {
                    Some(_) => SourceError::Missing(e.to_string()),
                    None => SourceError::Unreachable(e.to_string()),
                })
        }
        .boxed()
    }

    /// One request per folder and [`crate::proto::MAX_BATCH_BLOCKS`] blocks.
    fn get_many<'a>(&'a self, wants: &'a [Want]) -> BoxFuture<'a, Vec<Option<Bytes>>> {
        async move {
            let mut out = vec![None; wants.len()];
            let mut at = 0;
            while at < wants.len() {
                let folder = &wants[at].folder;
                let end = (at + 1..wants.len())
                    .find(|&i| {
                        &wants[i].folder != folder || i - at >= crate::proto::MAX_BATCH_BLOCKS
                    })
                    .unwrap_or(wants.len());
                let hashes: Vec<BlockHash> = wants[at..end].iter().map(|w| w.hash).collect();
                match self.0.get_blocks(folder, &hashes).await {
                    Ok(got) => {
                        for (slot, data) in out[at..end].iter_mut().zip(got) {
                            *slot = data;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "fetching a batch of blocks"),
                }
                at = end;
            }
            out
        }
        .boxed()
    }
}
