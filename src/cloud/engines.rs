//! Which engines hold the cloud's metadata and blocks. `cloud.toml` in the data directory
//! names them, `--database` and `--blocks` override it, and with neither the cloud keeps
//! SQLite and a block directory inside the data directory:
//!
//! ```toml
//! database = "postgres://meshfs@db.internal/meshfs"   # or "sqlite://PATH"
//! blocks = "s3://bucket/prefix"                       # or "file://PATH"
//! ```
//!
//! An S3 store takes its endpoint, region and credentials from the usual `AWS_*` variables.
//! Relative paths are inside the data directory.

use super::CloudError;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The file in the data directory that names the engines.
pub const CONFIG_FILE: &str = "cloud.toml";

/// Where the metadata and the blocks are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engines {
    pub database: Database,
    pub blocks: BlockStore,
}

/// Where the metadata is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (made if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Database {
    /// The URL sqlx connects to.
    pub fn url(&self) -> String {
        match self {
            Database::Sqlite(path) => sqlite_url(path),
            Database::Postgres(url) => url.clone(),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Database::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

/// `url` without its password, for messages and logs.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Where content blocks are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockStore {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl BlockStore {
    /// Opens it: a directory (made if missing) with fsync on every write, or an S3 bucket
    /// with the endpoint and credentials of the `AWS_*` variables.
    pub fn open(&self) -> Result<Box<dyn ObjectStore>, CloudError> {
        let failed = |source| CloudError::Blobs {
            at: self.to_string(),
            source,
        };
        Ok(match self {
            BlockStore::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| CloudError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
                let local = LocalFileSystem::new_with_prefix(dir).map_err(failed)?;
                Box::new(local.with_fsync(true))
            }
            BlockStore::S3 { bucket, prefix } => {
                crate::crypto::install_tls_provider();
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(failed)?;
                if prefix.is_empty() {
                    Box::new(s3)
                } else {
                    Box::new(PrefixStore::new(s3, prefix.as_str()))
                }
            }
        })
    }
}

impl fmt::Display for BlockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockStore::Dir(p) => write!(f, "file://{}", p.display()),
            BlockStore::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    database: Option<String>,
    blocks: Option<String>,
}

impl Engines {
    /// SQLite and a block directory inside `data_dir`.
    pub fn embedded(data_dir: &Path) -> Self {
        Self {
            database: Database::Sqlite(data_dir.join("meshfs.db")),
            blocks: BlockStore::Dir(data_dir.join("blocks")),
        }
    }

    /// The engines `data_dir/cloud.toml` names, with `database` and `blocks` (from the
    /// command line) taking precedence; the embedded ones for what neither names.
    pub fn resolve(
        data_dir: &Path,
        database: Option<&str>,
        blocks: Option<&str>,
    ) -> Result<Self, CloudError> {
        let path = data_dir.join(CONFIG_FILE);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| CloudError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(source) => {
                return Err(CloudError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let mut engines = Self::embedded(data_dir);
        if let Some(db) = database.or(file.database.as_deref()) {
            engines.database = parse_database(data_dir, db)?;
        }
        if let Some(b) = blocks.or(file.blocks.as_deref()) {
            engines.blocks = parse_block_store(data_dir, b)?;
        }
        Ok(engines)
    }
}

/// The sqlx URL of the SQLite file at `path` (made if missing).
fn sqlite_url(path: &Path) -> String {
    // A file URL escapes what sqlx would read as the query or a fragment; sqlx decodes it.
    match reqwest::Url::from_file_path(path) {
        Ok(u) => format!("sqlite://{}?mode=rwc", &u.as_str()["file://".len()..]),
        Err(()) => format!("sqlite://{}?mode=rwc", path.display()),
    }
}

fn bad(value: &str, reason: &str) -> CloudError {
    CloudError::Engine {
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_database(data_dir: &Path, value: &str) -> Result<Database, CloudError> {
    if let Some(path) = value.strip_prefix("sqlite://") {
        if path.is_empty() || path.contains('?') {
            return Err(bad(value, "name the file: sqlite://PATH"));
        }
        return Ok(Database::Sqlite(data_dir.join(path)));
    }
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        return Ok(Database::Postgres(value.to_owned()));
    }
    Err(bad(
        value,
        "use sqlite://PATH or postgres://USER@HOST/DATABASE",
    ))
}

fn parse_block_store(data_dir: &Path, value: &str) -> Result<BlockStore, CloudError> {
    if let Some(path) = value.strip_prefix("file://") {
        if path.is_empty() {
            return Err(bad(value, "name the directory: file://PATH"));
        }
        return Ok(BlockStore::Dir(data_dir.join(path)));
    }
    if let Some(rest) = value.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(value, "name the bucket: s3://BUCKET/PREFIX"));
        }
        return Ok(BlockStore::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    Err(bad(value, "use file://PATH or s3://BUCKET/PREFIX"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_config_file_the_engines_are_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engines::resolve(dir.path(), None, None).unwrap();
        assert_eq!(e, Engines::embedded(dir.path()));
        assert!(e.database.url().starts_with("sqlite:///"));
        assert_eq!(e.blocks, BlockStore::Dir(dir.path().join("blocks")));
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "database = \"postgres://meshfs@127.0.0.1:5433/meshfs\"\nblocks = \"s3://b/p/\"\n",
        )
        .unwrap();
        let e = Engines::resolve(dir.path(), None, None).unwrap();
        assert_eq!(
            e.database,
            Database::Postgres("postgres://meshfs@127.0.0.1:5433/meshfs".into())
        );
        assert_eq!(
            e.blocks,
            BlockStore::S3 {
                bucket: "b".into(),
                prefix: "p".into()
            }
        );
        let e =
            Engines::resolve(dir.path(), Some("sqlite://other.db"), Some("file://blk")).unwrap();
        assert_eq!(e.database, Database::Sqlite(dir.path().join("other.db")));
        assert_eq!(e.blocks, BlockStore::Dir(dir.path().join("blk")));
    }

    #[test]
    fn unknown_engines_and_keys_are_refused_with_what_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let err = Engines::resolve(dir.path(), Some("mysql://x"), None).unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        let err = Engines::resolve(dir.path(), None, Some("s3:///p")).unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
        std::fs::write(dir.path().join(CONFIG_FILE), "databse = \"x\"\n").unwrap();
        let err = Engines::resolve(dir.path(), None, None).unwrap_err();
        assert!(err.to_string().contains(CONFIG_FILE), "{err}");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let db = Database::Postgres("postgres://meshfs:hunter2@db/meshfs".into());
        assert_eq!(db.to_string(), "postgres://meshfs:***@db/meshfs");
    }

    #[test]
    fn sqlite_paths_with_url_characters_are_escaped() {
        let url = sqlite_url(Path::new("/tmp/a b?c#d%e/meshfs.db"));
        assert_eq!(url, "sqlite:///tmp/a%20b%3Fc%23d%25e/meshfs.db?mode=rwc");
    }
}
