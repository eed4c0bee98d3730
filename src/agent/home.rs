//! A device's home directory: who it is (`device.toml`), its private key, the pinned CA,
//! and the agent's cache. The layout:
//!
//! ```text
//! H/device.toml      cloud URL, user, device id and name
//! H/config.toml      the device's settings (see `agent::config`); optional
//! H/device-key.pem   the device's RSA private key (0600, never leaves the device)
//! H/secrets.sealed   instead, on a protected home: that key and the cache key, sealed
//!                    under a passphrase (see `agent::secrets`)
//! H/ca.pem           the cloud's CA, the only root the agent trusts
//! H/cache/db         sled: metadata, journal, cache index
//! H/cache/blocks     content blocks by hash
//! H/cache/staging    files being written, until committed
//! H/status.json      what the running agent last reported
//! ```

use super::secrets::{self, Passphrase, Secrets};
use crate::crypto::keys::KeyError;
use crate::crypto::seal::SealError;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid device file")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("this device is not logged in ({path} is missing): run `meshfs login` first")]
    NotLoggedIn { path: PathBuf },
    #[error(
        "{path} is open to other users (mode {mode:o}); run `chmod {fix:o} {path}` and start again"
    )]
    TooOpen { path: PathBuf, mode: u32, fix: u32 },
    #[error(
        "this device home is protected ({path}): give its passphrase at the terminal, with \
         --passphrase-stdin, or in a file named by --passphrase-file or MESHFS_PASSPHRASE_FILE"
    )]
    Locked { path: PathBuf },
    #[error("the passphrase is wrong; nothing was changed, try again")]
    WrongPassphrase,
    #[error("reading the passphrase: {0}")]
    Passphrase(String),
    #[error("the sealed secrets at {path} cannot be used")]
    Sealed {
        path: PathBuf,
        #[source]
        why: SealError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What `device.toml` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceFile {
    /// The cloud's URL.
    pub cloud: String,
    /// Other processes of the same cloud, tried in turn when one fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_clouds: Vec<String>,
    pub user: String,
    pub device_id: String,
    pub device_name: String,
}

impl DeviceFile {
    /// Every URL of the cloud, the first one first.
    pub fn clouds(&self) -> Vec<String> {
        std::iter::once(&self.cloud)
            .chain(&self.more_clouds)
            .cloned()
            .collect()
    }
}

/// Paths inside one device home, and its secrets once unlocked.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
    passphrase: Option<Passphrase>,
    unlocked: Arc<Mutex<Option<Arc<Secrets>>>>,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            passphrase: None,
            unlocked: Arc::default(),
        }
    }

    /// Where the passphrase comes from if this home is protected (asked once, when a
    /// secret is first needed).
    pub fn with_passphrase(mut self, p: Passphrase) -> Self {
        self.passphrase = Some(p);
        self
    }

    /// The device's secrets, unsealed at the first call (see `agent::secrets`).
    pub fn unlock(&self) -> Result<Arc<Secrets>, HomeError> {
        let mut held = self.unlocked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = &*held {
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(secrets::unlock(self, self.passphrase.as_ref())?);
        *held = Some(Arc::clone(&s));
        Ok(s)
    }

    /// Whether the home keeps its secrets sealed (heightened security mode).
    pub fn is_protected(&self) -> bool {
        self.sealed_secrets().exists()
    }

    /// The passphrase source given, if any.
    pub fn passphrase(&self) -> Option<&Passphrase> {
        self.passphrase.as_ref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn device_file(&self) -> PathBuf {
        self.root.join("device.toml")
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("device-key.pem")
    }
    pub fn sealed_secrets(&self) -> PathBuf {
        self.root.join("secrets.sealed")
    }
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn load_device(&self) -> Result<DeviceFile, HomeError> {
        let path = self.device_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NotLoggedIn { path });
            }
            Err(source) => return Err(HomeError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|source| HomeError::Parse { path, source })
    }

    /// Refuses a home whose directory, key or cache other users could read (the key signs
    /// for the device; the cache holds the user's files), naming the `chmod` that fixes it.
    pub fn check_private(&self) -> Result<(), HomeError> {
        for (path, fix) in [
            (self.root.clone(), 0o700),
            (self.key(), 0o600),
            (self.sealed_secrets(), 0o600),
            (self.cache_dir(), 0o700),
        ] {
            let mode = match std::fs::metadata(&path) {
                Ok(m) => m.permissions().mode() & 0o7777,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(HomeError::Read { path, source }),
            };
            if mode & 0o077 != 0 {
                return Err(HomeError::TooOpen { path, mode, fix });
            }
        }
        Ok(())
    }

    pub fn save_device(&self, dev: &DeviceFile) -> Result<(), HomeError> {
        let path = self.device_file();
        // Serializing a struct of strings to TOML cannot fail.
        let text = toml::to_string(dev).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| HomeError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_home_other_users_could_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        std::fs::create_dir(home.root()).unwrap();
        chmod(home.root(), 0o700);
        std::fs::write(home.key(), b"key").unwrap();
        chmod(&home.key(), 0o600);
        std::fs::create_dir(home.cache_dir()).unwrap();
        chmod(&home.cache_dir(), 0o700);
        home.check_private().unwrap();
        for (path, open, fix) in [
            (home.key(), 0o644, "chmod 600"),
            (home.cache_dir(), 0o755, "chmod 700"),
            (home.root().to_path_buf(), 0o750, "chmod 700"),
        ] {
            let before = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            chmod(&path, open);
            let e = home.check_private().unwrap_err().to_string();
            assert!(
                e.contains(fix) && e.contains(&path.display().to_string()),
                "{e}"
            );
            chmod(&path, before);
        }
        home.check_private().unwrap();
    }
}
