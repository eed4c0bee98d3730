//! Which peer to ask for a block, and in what order: the devices the cloud names as holders
//! of the file's content first, then those with a direct link made before; the user's own
//! devices before other users' devices sharing the folder; each directly, then each through
//! the relay. A peer that sends a block with the wrong hash is dropped for a while.

use super::directory::Directory;
use super::link::LinkError;
use super::pool::{LinkKey, LinkPool};
use super::{BlockRequest, PeerMiss};
use crate::agent::status::Counters;
use crate::proto::{BlockHash, Device};
use bytes::Bytes;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a peer that sent a wrong block is not asked again.
const BAN: Duration = Duration::from_secs(600);
/// Blocks whose giver is remembered, to drop it if the block turns out wrong.
const GIVERS: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

/// A device to ask, and the folder its ticket is limited to: `None` for the user's own
/// devices, the folder for another user's device that shares it.
#[derive(Clone)]
struct Candidate {
    dev: Device,
    scope: Option<String>,
}

impl Candidate {
    fn key(&self, relayed: bool) -> LinkKey {
        (self.dev.id.clone(), relayed, self.scope.clone())
    }
}

pub struct SourceOrder {
    directory: Arc<Directory>,
    pool: Arc<LinkPool>,
    counters: Arc<Counters>,
    banned: Mutex<HashMap<String, Instant>>,
    /// Which peer gave each block lately.
    served_by: Mutex<LruCache<BlockHash, String>>,
}

impl SourceOrder {
    pub fn new(directory: Arc<Directory>, pool: Arc<LinkPool>, counters: Arc<Counters>) -> Self {
        Self {
            directory,
            pool,
            counters,
            banned: Mutex::new(HashMap::new()),
            served_by: Mutex::new(LruCache::new(GIVERS)),
        }
    }

    fn is_banned(&self, device: &str) -> bool {
        let mut banned = self.banned.lock().unwrap_or_else(|p| p.into_inner());
        banned.retain(|_, until| *until > Instant::now());
        banned.contains_key(device)
    }

    /// The devices to ask for a block of `folder`, in order.
    async fn candidates(&self, folder: &str, holders: &[String]) -> Vec<Candidate> {
        let own = self
            .directory
            .own_peers()
            .into_iter()
            .map(|dev| Candidate { dev, scope: None });
        let shared = self
            .directory
            .sharing(folder)
            .await
            .into_iter()
            .map(|dev| Candidate {
                dev,
                scope: Some(folder.to_string()),
            });
        let mut all: Vec<Candidate> = own
            .chain(shared)
            .filter(|c| !self.is_banned(&c.dev.id))
            .collect();
        all.sort_by_key(|c| {
            let holds = holders.contains(&c.dev.id);
            (!holds, !self.pool.has_link(&c.key(false)))
        });
        all
    }

    /// Asks the peers; when none had it and the peer list is some seconds old (a device may
    /// have come up since), reads the list again and asks once more. `holders` are the
    /// devices the cloud names as holding the file's content.
    pub async fn get(&self, req: &BlockRequest, holders: &[String]) -> Result<Bytes, PeerMiss> {
        let first = self.ask(req, holders).await;
        match first {
            Err(_) if self.directory.is_stale() && self.directory.list_peers().await.is_ok() => {
                self.ask(req, holders).await
            }
            other => other,
        }
    }

    async fn ask(&self, req: &BlockRequest, holders: &[String]) -> Result<Bytes, PeerMiss> {
        let peers = self.candidates(&req.folder, holders).await;
        let mut answered: Vec<&str> = Vec::new();
        let relay = !self.directory.relays().is_empty();
        for relayed in [false, true] {
            if relayed && !relay {
                break;
            }
            for c in &peers {
                let dev = &c.dev;
                if answered.contains(&dev.id.as_str()) || (!relayed && dev.addrs.is_empty()) {
                    continue;
                }
                let link = match self.pool.link(dev, c.key(relayed)).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(peer = %dev.id, relayed, error = %e, "peer not reached");
                        continue;
                    }
                };
                match link.get(req).await {
                    Ok(data) => {
                        self.served_by
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .put(req.hash, dev.id.clone());
                        Counters::add(&self.counters.blocks_from_peers, 1);
                        Counters::add(&self.counters.bytes_from_peers, data.len() as u64);
                        return Ok(data);
                    }
                    Err(LinkError::Missing | LinkError::Forbidden) => answered.push(&dev.id),
                    Err(LinkError::Closed(why)) => {
                        tracing::info!(peer = %dev.id, relayed, %why, "peer link lost");
                        self.pool.failed(c.key(relayed));
                    }
                }
            }
        }
        if answered.is_empty() {
            Err(PeerMiss::Unreachable)
        } else {
            Err(PeerMiss::Missing)
        }
    }

    /// Drops the peer that gave block `hash`, which did not match it, and bans it for a
    /// while. Returns whether one was dropped: then another peer may still have the block.
    pub fn reject(&self, hash: &BlockHash) -> bool {
        let Some(device) = self
            .served_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(hash)
        else {
            return false;
        };
        tracing::warn!(peer = %device, %hash, "peer sent a wrong block; dropping it");
        self.banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.clone(), Instant::now() + BAN);
        self.pool.close_device(&device, "it sent a wrong block");
        true
    }
}
