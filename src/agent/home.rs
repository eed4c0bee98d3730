//! A device's home directory: who it is (`device.toml`), its private key, the pinned CA,
//! and the agent's cache. The layout:
//!
//! ```text
//! H/device.toml      cloud URL, user, device id and name
//! H/config.toml      the device's settings (see `agent::config`); optional
//! H/device-key.pem   the device's RSA private key (0600, never leaves the device)
//! H/ca.pem           the cloud's CA, the only root the agent trusts
//! H/cache/db         sled: metadata, journal, cache index
//! H/cache/blocks     content blocks by hash
//! H/cache/staging    files being written, until committed
//! H/status.json      what the running agent last reported
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
}

/// What `device.toml` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceFile {
    pub cloud: String,
    pub user: String,
    pub device_id: String,
    pub device_name: String,
}

/// Paths inside one device home.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
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

    pub fn save_device(&self, dev: &DeviceFile) -> Result<(), HomeError> {
        let path = self.device_file();
        // Serializing a struct of strings to TOML cannot fail.
        let text = toml::to_string(dev).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| HomeError::Write { path, source })
    }
}
