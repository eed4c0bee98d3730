//! The cloud's ticket-signing keys, shared by its processes through the database. The key
//! that signs is the newest whose time to sign has come; every stored key is published in
//! the JWKS, so devices and the other processes know a new key before it signs, and an old
//! one stays until every ticket it signed has expired. `meshfs cloud rotate-keys` adds a
//! key. A key id (`kid`) is the first 16 hex digits of the SHA-256 of the SPKI PEM.
//!
//! A data directory's `signing-key.pem` (kept there by earlier versions) becomes the first
//! stored key.
//!
//! The cloud's TLS CA is shared through the database too ([`shared_ca`]), so that a process
//! on another machine, given only `cloud.toml`, serves a certificate the devices' pinned CA
//! signed.

use super::CloudError;
use super::store::{Store, StoredKey};
use crate::crypto::keys;
use crate::crypto::ticket::{KeySet, Signer};
use crate::net::tls::{CLOUD_CA_NAME, Ca};
use crate::proto::{Jwks, now_ms};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const SIGNING_KEY_FILE: &str = "signing-key.pem";

/// The longest a ticket lives (the longest lifetime `meshfs cloud` accepts): how long a key
/// stays published after a newer one took over.
pub const MAX_TICKET_SECS: i64 = 86_400;

/// How often each process reads the keys again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// How soon after `rotate-keys` the new key signs by default: after every process and
/// device has read it (they do every 30 s).
pub const DEFAULT_SIGNS_IN: Duration = Duration::from_secs(120);

/// How often a ticket with a key id this process does not know makes it read the keys.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(1);

/// The key id of an SPKI PEM public key.
pub fn kid_of(public_pem: &str) -> String {
    let digest = Sha256::digest(public_pem.as_bytes());
    hex::encode(&digest[..8])
}

/// The cloud's CA, as the database holds it, written into `data_dir` (`ca.pem`, which
/// devices pin, and `ca-key.pem`) if it is not there. On a new database the data
/// directory's CA (earlier versions kept it only there) or a new one is stored first, unless
/// another process stores one first. A data directory that holds another CA is refused.
pub async fn shared_ca(store: &Store, data_dir: &Path) -> Result<Ca, CloudError> {
    let ca = match store.ca().await? {
        Some(ca) => ca,
        None => {
            let offered = match Ca::read(data_dir)? {
                Some(ca) => ca,
                None => {
                    tracing::info!("creating the cloud's CA");
                    Ca::generate(CLOUD_CA_NAME)?
                }
            };
            store.add_ca(&offered).await?;
            store.ca().await?.unwrap_or(offered)
        }
    };
    ca.keep_in(data_dir)?;
    Ok(ca)
}

/// The keys as last read: the signer, and the published set.
struct Current {
    signer: Arc<Signer>,
    jwks: Jwks,
}

/// The cloud's signing keys, read again every [`REFRESH_EVERY`].
pub struct CloudKeys {
    store: Store,
    current: RwLock<Arc<Current>>,
    published: watch::Sender<Arc<KeySet>>,
    read_at: Mutex<Instant>,
}

impl CloudKeys {
    /// The stored keys; on a new database, the data directory's `signing-key.pem` or a new
    /// key becomes the first.
    pub async fn open(store: Store, data_dir: &Path) -> Result<Self, CloudError> {
        if store.signing_keys().await?.is_empty() {
            let path = data_dir.join(SIGNING_KEY_FILE);
            let key = tokio::task::spawn_blocking(move || {
                if path.exists() {
                    keys::load_private(&path)
                } else {
                    tracing::info!("generating the cloud's signing key");
                    Ok(keys::generate())
                }
            })
            .await
            .map_err(|e| CloudError::Task(e.to_string()))??;
            store.add_signing_key(&stored(&key, 0)?).await?;
        }
        let (current, keyset) = read(&store.signing_keys().await?, now_ms())?;
        Ok(Self {
            store,
            current: RwLock::new(Arc::new(current)),
            published: watch::Sender::new(Arc::new(keyset)),
            // As if read long ago: an unknown key id may make it read at once.
            read_at: Mutex::new(
                Instant::now()
                    .checked_sub(UNKNOWN_KID_REFRESH)
                    .unwrap_or_else(Instant::now),
            ),
        })
    }

    fn current(&self) -> Arc<Current> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.current().signer)
    }

    /// The keys tickets are checked against.
    pub fn keyset(&self) -> Arc<KeySet> {
        Arc::clone(&self.published.borrow())
    }

    /// The published keys as they change (for a relay in this process).
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.published.subscribe()
    }

    pub fn jwks(&self) -> Jwks {
        self.current().jwks.clone()
    }

    /// Reads the keys again: a key whose time has come signs, a new one is published, and
    /// one whose tickets have all expired is dropped.
    pub async fn refresh(&self) -> Result<(), CloudError> {
        *self.read_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let now = now_ms();
        let stored = self.store.signing_keys().await?;
        for kid in expired(&stored, now) {
            self.store.drop_signing_key(&kid).await?;
        }
        let (current, keyset) = read(&stored, now)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(current);
        self.published.send_replace(Arc::new(keyset));
        Ok(())
    }

    /// Reads the keys again for a ticket whose key id is unknown here (another process
    /// may sign with a key this one has not read yet), at most once a second; whether it
    /// did.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let due = self
            .read_at
            .lock()
            .map(|at| at.elapsed() >= UNKNOWN_KID_REFRESH)
            .unwrap_or(false);
        if !due {
            return false;
        }
        match self.refresh().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reading the signing keys");
                false
            }
        }
    }
}

/// Adds a new signing key that signs from `signs_in` on; returns its key id.
pub async fn rotate(store: &Store, signs_in: Duration) -> Result<String, CloudError> {
    let key = tokio::task::spawn_blocking(keys::generate)
        .await
        .map_err(|e| CloudError::Task(e.to_string()))?;
    let signs_from = now_ms().saturating_add(i64::try_from(signs_in.as_millis()).unwrap_or(0));
    let key = stored(&key, signs_from)?;
    store.add_signing_key(&key).await?;
    Ok(key.kid)
}

fn stored(key: &keys::PrivateKey, signs_from_ms: i64) -> Result<StoredKey, CloudError> {
    Ok(StoredKey {
        kid: kid_of(&keys::public_pem(&key.to_public_key())?),
        private_key: keys::private_pem(key)?,
        signs_from_ms,
    })
}

/// When each key stopped signing: when the next key whose time had come took over.
fn stopped_at(stored: &[StoredKey], now: i64) -> Vec<Option<i64>> {
    (0..stored.len())
        .map(|i| {
            stored[i + 1..]
                .iter()
                .map(|k| k.signs_from_ms)
                .find(|&from| from <= now)
        })
        .collect()
}

/// The keys (oldest first) whose every ticket has expired by `now`.
fn expired(stored: &[StoredKey], now: i64) -> Vec<String> {
    stored
        .iter()
        .zip(stopped_at(stored, now))
        .filter(|(_, stopped)| stopped.is_some_and(|t| t + MAX_TICKET_SECS * 1000 < now))
        .map(|(k, _)| k.kid.clone())
        .collect()
}

/// The signer and the published keys, from the stored keys (oldest first) at `now`.
fn read(stored: &[StoredKey], now: i64) -> Result<(Current, KeySet), CloudError> {
    let gone = expired(stored, now);
    let mut keyset = KeySet::default();
    let mut jwks = Jwks { keys: Vec::new() };
    let mut signer = None;
    for k in stored.iter().filter(|k| !gone.contains(&k.kid)) {
        let key = keys::private_from_pem(&k.private_key, &k.kid)?;
        let s = Signer::new(k.kid.clone(), key);
        keyset.insert(k.kid.clone(), s.public_key().clone());
        jwks.keys.push(s.jwk());
        if k.signs_from_ms <= now || signer.is_none() {
            signer = Some(s);
        }
    }
    let signer = signer.ok_or(CloudError::NoSigningKey)?;
    Ok((
        Current {
            signer: Arc::new(signer),
            jwks,
        },
        keyset,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_16_hex_digits_of_the_spki_hash() {
        let kid = kid_of("pem");
        assert_eq!(kid.len(), 16);
        assert_eq!(kid, hex::encode(&Sha256::digest(b"pem")[..8]));
    }

    fn key_at(signs_from_ms: i64) -> StoredKey {
        stored(&keys::generate(), signs_from_ms).unwrap()
    }

    #[test]
    fn the_newest_key_whose_time_has_come_signs_and_all_are_published() {
        let old = key_at(0);
        let next = key_at(1_000);
        let (now, _) = read(&[key_at(0)], 500).unwrap();
        assert_eq!(now.jwks.keys.len(), 1);
        let stored = [old, next];
        let (before, _) = read(&stored, 999).unwrap();
        assert_eq!(before.signer.kid(), stored[0].kid, "not yet the new key");
        assert_eq!(before.jwks.keys.len(), 2, "but it is published");
        let (after, keyset) = read(&stored, 1_000).unwrap();
        assert_eq!(after.signer.kid(), stored[1].kid);
        let ticket = before.signer.sign(&serde_json::json!({"x": 1}));
        assert!(
            keyset.verify::<serde_json::Value>(&ticket).is_ok(),
            "tickets of the old key still check"
        );
    }

    #[test]
    fn an_old_key_goes_once_every_ticket_it_signed_has_expired() {
        let stored = [key_at(0), key_at(1_000)];
        let day = MAX_TICKET_SECS * 1000;
        assert!(expired(&stored, 1_000 + day).is_empty());
        assert_eq!(expired(&stored, 1_001 + day), [stored[0].kid.clone()]);
        let (current, _) = read(&stored, 1_001 + day).unwrap();
        assert_eq!(current.jwks.keys.len(), 1);
        // A key published ahead that has not signed yet keeps the old one signing.
        assert!(expired(&[key_at(0), key_at(i64::MAX)], day * 2).is_empty());
    }

    #[tokio::test]
    async fn a_data_directorys_key_file_becomes_the_first_stored_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate();
        keys::save_private(&key, &dir.path().join(SIGNING_KEY_FILE)).unwrap();
        let store = Store::open_in(dir.path()).await;
        let a = CloudKeys::open(store.clone(), dir.path()).await.unwrap();
        let b = CloudKeys::open(store.clone(), dir.path()).await.unwrap();
        assert_eq!(a.signer().kid(), b.signer().kid());
        assert_eq!(
            a.signer().kid(),
            kid_of(&keys::public_pem(&key.to_public_key()).unwrap())
        );

        let kid = rotate(&store, Duration::ZERO).await.unwrap();
        b.refresh().await.unwrap();
        assert_eq!(b.signer().kid(), kid, "b signs with the new key");
        assert_eq!(a.jwks().keys.len(), 1, "a has not read it yet");
        let ticket = b.signer().sign(&serde_json::json!({"x": 1}));
        assert!(a.keyset().verify::<serde_json::Value>(&ticket).is_err());
        assert!(a.refresh_for_unknown_kid().await);
        assert!(a.keyset().verify::<serde_json::Value>(&ticket).is_ok());
        assert!(
            !a.refresh_for_unknown_kid().await,
            "not again within a second"
        );
    }
}
