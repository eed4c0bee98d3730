//! `meshfs passphrase change`: seals a protected home's secrets under a new passphrase.
//! The cache key stays the same, so nothing the agent keeps is encrypted again.

use crate::agent::secrets;
use crate::cli::args::HomeArg;
use crate::cli::secret::{self, Ask, Source};
use anyhow::Context;
use std::path::PathBuf;

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
