//! The device's own settings: `config.toml` in the device home, which flags on the command
//! line override.
//!
//! ```toml
//! cache_size = "20G"   # or a number of bytes
//! passthrough = false  # serve every read through the agent (default: true)
//! ```

use crate::agent::home::Home;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A size in bytes, written as people write them: `512M`, `20G`, `1.5GiB`, `4096`. The
/// units are binary (`M` is 2^20), as in `df -h` and rclone's `--vfs-cache-max-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size::Config::new()
            .with_binary()
            .parse_size(s.trim())
            .map(Size)
            .map_err(|e| {
                format!("{s:?} is not a size ({e}); write it as 512M, 20G or a number of bytes")
            })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid meshfs config")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("reading the size of the file system under {path}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `config.toml` in a device home may set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// How much room the block store may take on this device.
    pub cache_size: Option<Size>,
    /// Whether the kernel may read files wholly on the device directly (FUSE passthrough).
    pub passthrough: Option<bool>,
}

impl DeviceConfig {
    /// The home's config; the defaults when it has none.
    pub fn load(home: &Home) -> Result<Self, ConfigError> {
        let path = home.config_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })
    }
}

/// The smallest default cache: below it, a small disk would thrash.
const MIN_DEFAULT: u64 = 1 << 30;

/// The default cache size for a block store at `dir`: a tenth of its file system, and at
/// least [`MIN_DEFAULT`].
pub fn default_cache_size(dir: &Path) -> Result<Size, ConfigError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| ConfigError::Statfs {
        path: dir.into(),
        source: e.into(),
    })?;
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    Ok(Size((total / 10).max(MIN_DEFAULT)))
}

/// The cache limit for `home`: the flag if given, else `cache_size` in its config, else
/// the default for the file system the cache lives on.
pub fn cache_limit(home: &Home, flag: Option<Size>) -> Result<Size, ConfigError> {
    if let Some(s) = flag {
        return Ok(s);
    }
    if let Some(s) = DeviceConfig::load(home)?.cache_size {
        return Ok(s);
    }
    let dir = home.cache_dir();
    let existing = if dir.exists() {
        dir
    } else {
        home.root().into()
    };
    default_cache_size(&existing)
}

/// Whether to ask for passthrough reads: never on a protected home; else the flag if
/// given, else `passthrough` in the home's config, else yes.
pub fn passthrough(home: &Home, flag: Option<bool>) -> Result<bool, ConfigError> {
    // Passthrough serves plain copies of files, which a protected home never keeps.
    if home.is_protected() {
        return Ok(false);
    }
    match flag {
        Some(b) => Ok(b),
        None => Ok(DeviceConfig::load(home)?.passthrough.unwrap_or(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        let cases = [
            ("512M", 512 << 20),
            ("20G", 20 << 30),
            ("1.5GiB", 3 << 29),
            ("4096", 4096),
            (" 64 MiB ", 64 << 20),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Size>(), Ok(Size(want)), "{text}");
        }
        for bad in ["", "lots", "-1G", "12Q"] {
            let e = bad.parse::<Size>().unwrap_err();
            assert!(e.contains("512M"), "{bad}: {e}");
        }
        assert_eq!(Size(64 << 20).to_string(), "64.0 MiB");
        assert_eq!(Size(100).to_string(), "100 B");
    }

    #[test]
    fn the_flag_wins_over_the_config_which_wins_over_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let default = cache_limit(&home, None).unwrap();
        assert!(default.0 >= MIN_DEFAULT);

        std::fs::write(home.config_file(), "cache_size = \"512M\"\n").unwrap();
        assert_eq!(cache_limit(&home, None).unwrap(), Size(512 << 20));
        assert_eq!(
            cache_limit(&home, Some(Size(64 << 20))).unwrap(),
            Size(64 << 20)
        );

        std::fs::write(home.config_file(), "cache_size = 1048576\n").unwrap();
        assert_eq!(cache_limit(&home, None).unwrap(), Size(1 << 20));

        std::fs::write(home.config_file(), "cache_sise = \"1G\"\n").unwrap();
        let e = cache_limit(&home, None).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        std::fs::write(home.config_file(), "cache_size = \"big\"\n").unwrap();
        assert!(cache_limit(&home, None).is_err());
    }

    #[test]
    fn passthrough_is_on_unless_the_flag_or_the_config_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        assert!(passthrough(&home, None).unwrap());
        std::fs::write(home.config_file(), "passthrough = false\n").unwrap();
        assert!(!passthrough(&home, None).unwrap());
        assert!(passthrough(&home, Some(true)).unwrap());
        assert!(!passthrough(&home, Some(false)).unwrap());
    }
}
