//! A device's secrets: its private key and, on a protected home, the cache key. A plain
//! home keeps the key in `device-key.pem`. A protected one (heightened security mode)
//! keeps no plain key: both are sealed under a passphrase in `secrets.sealed`
//! (`crypto::seal`), and the cache key seals what the agent writes to the cache.

use super::home::{Home, HomeError};
use crate::crypto::keys;
use crate::crypto::seal::{CacheKey, KEY_LEN, SealError, Sealed};
use rsa::PrivateKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The device's key, and the cache key if the home is protected.
pub struct Secrets {
    pub key: PrivateKey,
    pub cache_key: Option<Arc<CacheKey>>,
    /// The cache key's bytes, to seal again under another passphrase.
    pub cache_key_bytes: Option<Zeroizing<[u8; KEY_LEN]>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("protected", &self.cache_key.is_some())
            .finish_non_exhaustive()
    }
}

/// Asks for a protected home's passphrase, when one is opened.
#[derive(Clone)]
pub struct Passphrase(Arc<dyn Fn() -> Result<Zeroizing<String>, String> + Send + Sync>);

impl Passphrase {
    pub fn new(
        ask: impl Fn() -> Result<Zeroizing<String>, String> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(ask))
    }

    /// A passphrase known already (tests, and a command that just asked for it).
    pub fn given(p: &str) -> Self {
        let p = Zeroizing::new(p.to_string());
        Self::new(move || Ok(p.clone()))
    }

    pub fn ask(&self) -> Result<Zeroizing<String>, HomeError> {
        (self.0)().map_err(HomeError::Passphrase)
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Reads `home`'s secrets, asking `passphrase` when they are sealed.
pub fn unlock(home: &Home, passphrase: Option<&Passphrase>) -> Result<Secrets, HomeError> {
    let path = home.sealed_secrets();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = keys::load_private(&home.key())?;
            return Ok(Secrets {
                key,
                cache_key: None,
                cache_key_bytes: None,
            });
        }
        Err(source) => return Err(HomeError::Read { path, source }),
    };
    let sealed: Sealed = toml::from_str(&text).map_err(|source| HomeError::Parse {
        path: path.clone(),
        source,
    })?;
    let passphrase = passphrase
        .ok_or(HomeError::Locked { path: path.clone() })?
        .ask()?;
    let plain = sealed.open(passphrase.as_bytes()).map_err(|e| match e {
        SealError::WrongPassphrase => HomeError::WrongPassphrase,
        other => HomeError::Sealed {
            path: path.clone(),
            why: other,
        },
    })?;
    let (cache_key, der) = plain.split_at_checked(KEY_LEN).ok_or(HomeError::Sealed {
        path: path.clone(),
        why: SealError::Damaged,
    })?;
    let cache_key: &[u8; KEY_LEN] = cache_key.try_into().map_err(|_| HomeError::Sealed {
        path: path.clone(),
        why: SealError::Damaged,
    })?;
    Ok(Secrets {
        key: keys::private_from_der(der, &path)?,
        cache_key: Some(Arc::new(CacheKey::from_bytes(cache_key))),
        cache_key_bytes: Some(Zeroizing::new(*cache_key)),
    })
}

/// Seals `key` and the cache key `cache_key` under `passphrase` as `home`'s secrets: the
/// file is replaced whole (0600), and any plain key file is removed after.
pub fn seal(
    home: &Home,
    key: &PrivateKey,
    cache_key: &[u8; KEY_LEN],
    passphrase: &str,
) -> Result<(), HomeError> {
    let mut plain = Zeroizing::new(cache_key.to_vec());
    plain.extend_from_slice(&keys::private_der(key)?);
    let path = home.sealed_secrets();
    let sealed = Sealed::seal(passphrase.as_bytes(), &plain).map_err(|why| HomeError::Sealed {
        path: path.clone(),
        why,
    })?;
    // Serializing a struct of strings and integers to TOML cannot fail.
    let text = toml::to_string(&sealed).unwrap_or_default();
    let fresh = path.with_extension("new");
    let write = |source| HomeError::Write {
        path: fresh.clone(),
        source,
    };
    let _ = std::fs::remove_file(&fresh);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&fresh)
        .map_err(write)?;
    f.write_all(text.as_bytes()).map_err(write)?;
    f.sync_all().map_err(write)?;
    std::fs::rename(&fresh, &path).map_err(|source| HomeError::Write {
        path: path.clone(),
        source,
    })?;
    match std::fs::remove_file(home.key()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HomeError::Write {
            path: home.key(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal::CacheKey;
    use std::sync::LazyLock;

    static KEY: LazyLock<PrivateKey> = LazyLock::new(keys::generate);

    #[test]
    fn a_sealed_home_opens_with_its_passphrase_and_keeps_no_plain_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        keys::save_private(&KEY, &home.key()).unwrap();
        let (_, bytes) = CacheKey::generate();
        seal(&home, &KEY, &bytes, "correct horse").unwrap();
        assert!(!home.key().exists(), "the plain key is gone");
        let text = std::fs::read_to_string(home.sealed_secrets()).unwrap();
        assert!(!text.contains("PRIVATE KEY"));

        assert!(matches!(unlock(&home, None), Err(HomeError::Locked { .. })));
        let wrong = Passphrase::given("wrong horse");
        assert!(matches!(
            unlock(&home, Some(&wrong)),
            Err(HomeError::WrongPassphrase)
        ));
        let right = Passphrase::given("correct horse");
        let s = unlock(&home, Some(&right)).unwrap();
        assert_eq!(s.key, *KEY);
        let sealed = CacheKey::from_bytes(&bytes).seal(b"x", b"data");
        assert_eq!(s.cache_key.unwrap().open(b"x", &sealed).unwrap(), b"data");
    }

    #[test]
    fn a_plain_home_needs_no_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        keys::save_private(&KEY, &home.key()).unwrap();
        let s = unlock(&home, None).unwrap();
        assert_eq!(s.key, *KEY);
        assert!(s.cache_key.is_none());
    }
}
