//! `meshfs protect` seals a plain home in place; `meshfs passphrase change` seals a
//! protected home's secrets under a new passphrase (the cache key stays, so nothing the
//! agent keeps is encrypted again).

use crate::agent::cache::{Cache, seal_store};
use crate::agent::secrets;
use crate::agent::status::AgentStatus;
use crate::cli::args::HomeArg;
use crate::cli::secret::{self, Ask, Source};
use crate::crypto::keys;
use crate::crypto::seal::CacheKey;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Seals the device key and a new cache key under a passphrase first (so no key is lost
/// if it stops half way), then the cache's records, then its blocks. On a home protected
/// already it unlocks it and finishes what is left.
pub fn protect(home_arg: &HomeArg) -> anyhow::Result<()> {
    let home = home_arg.resolve()?;
    home.load_device()?;
    if let Some(s) = AgentStatus::read_live(&home.status_file()) {
        anyhow::bail!(
            "the agent (pid {}) serves this home at {}; stop it, then run `meshfs protect` again",
            s.pid,
            s.mountpoint
        );
    }
    let cache_key = if home.is_protected() {
        let s = home.unlock()?;
        let bytes = s
            .cache_key_bytes
            .as_ref()
            .context("the sealed secrets hold no cache key")?;
        CacheKey::from_bytes(bytes)
    } else {
        let key = keys::load_private(&home.key())?;
        let passphrase = secret::read("passphrase", &home_arg.passphrase_source(), Ask::Twice)?;
        let (cache_key, bytes) = CacheKey::generate();
        secrets::seal(&home, &key, &bytes, &passphrase)
            .context("sealing the device key under the passphrase")?;
        cache_key
    };
    let dir = home.cache_dir();
    if dir.exists() {
        if let Some(n) = seal_store(&dir, &cache_key).context("sealing the metadata store")? {
            eprintln!("Sealed {n} records of the metadata store.");
        }
        let sealed = open_when_free(&dir, Arc::new(cache_key))?;
        // Writes a stopped agent never committed, plain: nothing was promised about them.
        sealed.clear_staging();
        let n = sealed
            .seal_plain_blocks()
            .context("sealing the block files")?;
        eprintln!("Sealed {n} block files.");
    }
    eprintln!(
        "{} is protected; `meshfs mount` asks for its passphrase.",
        home.root().display()
    );
    Ok(())
}

/// The cache at `dir` opened sealed, once sled let go of its last opening (its flusher
/// holds the lock a moment after a drop).
fn open_when_free(dir: &Path, key: Arc<CacheKey>) -> anyhow::Result<Cache> {
    let mut tries = 0;
    loop {
        match Cache::open_with(dir, Some(Arc::clone(&key))) {
            Err(e) if e.is_busy() && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.context("opening the sealed cache"),
        }
    }
}

pub fn change(home: &HomeArg, new_file: Option<PathBuf>) -> anyhow::Result<()> {
    let home = home.resolve()?;
    anyhow::ensure!(
        home.is_protected(),
        "{} is not protected; it has no passphrase to change",
        home.root().display()
    );
    let old = home.unlock()?;
    let bytes = old
        .cache_key_bytes
        .as_ref()
        .context("the sealed secrets hold no cache key")?;
    let source = new_file.map_or(Source::Terminal, Source::File);
    let new = secret::read("new passphrase", &source, Ask::Twice)?;
    secrets::seal(&home, &old.key, bytes, &new).context("sealing under the new passphrase")?;
    eprintln!("The passphrase of {} is changed.", home.root().display());
    Ok(())
}
