//! The cloud's ticket-signing key: `<data-dir>/signing-key.pem` (made on first start, mode
//! 0600), its `kid` (the first 16 hex digits of the SHA-256 of its SPKI PEM), the signer and
//! the key set tickets are checked against.

use super::CloudError;
use crate::crypto::keys;
use crate::crypto::ticket::{KeySet, Signer};
use crate::proto::Jwks;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

pub const SIGNING_KEY_FILE: &str = "signing-key.pem";

/// The key id of an SPKI PEM public key.
pub fn kid_of(public_pem: &str) -> String {
    let digest = Sha256::digest(public_pem.as_bytes());
    hex::encode(&digest[..8])
}

/// The signer and the matching key set.
pub struct CloudKeys {
    signer: Arc<Signer>,
    keyset: KeySet,
}

impl CloudKeys {
    /// Loads `<dir>/signing-key.pem`, or makes and saves it if there is none.
    pub async fn load_or_create(dir: &Path) -> Result<Self, CloudError> {
        let path = dir.join(SIGNING_KEY_FILE);
        tokio::task::spawn_blocking(move || {
            let key = if path.exists() {
                keys::load_private(&path)?
            } else {
                tracing::info!(path = %path.display(), "generating the cloud signing key");
                let key = keys::generate();
                keys::save_private(&key, &path)?;
                key
            };
            let public = key.to_public_key();
            let kid = kid_of(&keys::public_pem(&public)?);
            let mut keyset = KeySet::default();
            keyset.insert(kid.clone(), public);
            Ok(Self {
                signer: Arc::new(Signer::new(kid, key)),
                keyset,
            })
        })
        .await
        .map_err(|e| CloudError::Task(e.to_string()))?
    }

    pub fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.signer)
    }

    pub fn keyset(&self) -> &KeySet {
        &self.keyset
    }

    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![self.signer.jwk()],
        }
    }
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

    #[tokio::test]
    async fn signing_key_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = CloudKeys::load_or_create(dir.path()).await.unwrap();
        let b = CloudKeys::load_or_create(dir.path()).await.unwrap();
        assert_eq!(a.signer().kid(), b.signer().kid());
        assert_eq!(a.jwks().keys[0].n, b.jwks().keys[0].n);
    }
}
