//! `meshfs history` and `meshfs restore`: the versions the cloud keeps of a file under the
//! mount (found by the ids the mount gives as `user.meshfs.entry`), and bringing one back;
//! for a deleted file, by where it was.

use crate::agent::client::connect;
use crate::agent::config::Size;
use crate::agent::fs::pins::XATTR_ENTRY;
use crate::agent::home::Home;
use crate::agent::remote::Remote;
use crate::proto::{Entry, Restore};
use anyhow::{Context, bail};
use std::path::Path;

/// What a path names in the cloud.
enum Target {
    /// A file on the mount.
    Live { folder: String, entry: String },
    /// Nothing on the mount: a deleted file may have been `name` in directory `parent`.
    Gone {
        folder: String,
        parent: Option<String>,
        name: String,
    },
}

impl Target {
    fn folder(&self) -> &str {
        match self {
            Target::Live { folder, .. } | Target::Gone { folder, .. } => folder,
        }
    }
}

/// The cloud's ids of a node of the mount: (folder, entry), the entry `None` for a Mesh
/// Folder's root.
fn ids(path: &Path) -> anyhow::Result<(String, Option<String>)> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::getxattr(path, XATTR_ENTRY, &mut buf[..]).map_err(|_| {
        anyhow::anyhow!(
            "{} is not on a meshfs mount (give a path under the mount point, such as ~/Mesh/Docs/report.txt)",
            path.display()
        )
    })?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(match text.split_once('/') {
        Some((f, e)) => (f.to_string(), Some(e.to_string())),
        None => (text, None),
    })
}

fn target_of(path: &Path) -> anyhow::Result<Target> {
    if path.symlink_metadata().is_ok() {
        return match ids(path)? {
            (folder, Some(entry)) => Ok(Target::Live { folder, entry }),
            (_, None) => bail!("{} is a Mesh Folder, which has no versions", path.display()),
        };
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("{} names no file", path.display());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let (folder, parent) = ids(dir)?;
    Ok(Target::Gone {
        folder,
        parent,
        name: name.to_string_lossy().into_owned(),
    })
}

/// The newest deleted file that was `name` in `parent`.
async fn deleted(
    client: &crate::agent::client::CloudClient,
    folder: &str,
    parent: &Option<String>,
    name: &str,
    path: &Path,
) -> anyhow::Result<Entry> {
    let trash = client.trash(folder).await.context("reading the trash")?;
    trash
        .into_iter()
        .find(|e| &e.parent == parent && e.name == name)
        .with_context(|| {
            format!(
                "{} is neither on the mount nor among the deleted files the cloud keeps",
                path.display()
            )
        })
}

/// The folder and entry ids a path names in the cloud (a deleted file's, from the trash),
/// and whether it was deleted.
async fn ids_in_cloud(
    client: &crate::agent::client::CloudClient,
    target: Target,
    path: &Path,
) -> anyhow::Result<(String, String, bool)> {
    Ok(match target {
        Target::Live { folder, entry } => (folder, entry, false),
        Target::Gone {
            folder,
            parent,
            name,
        } => {
            let e = deleted(client, &folder, &parent, &name, path).await?;
            (folder, e.id, true)
        }
    })
}

fn stamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::agent::uploader::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `meshfs history PATH`.
pub async fn list(home: &Home, path: &Path) -> anyhow::Result<()> {
    let target = target_of(path)?;
    let client = connect(home)?;
    let (folder, entry, was_deleted) = ids_in_cloud(&client, target, path).await?;
    if was_deleted {
        println!(
            "{} was deleted; restore it with `meshfs restore`",
            path.display()
        );
    }
    let versions = client
        .versions(&folder, &entry)
        .await
        .context("reading the file's versions")?;
    let names: std::collections::HashMap<String, String> = client
        .devices()
        .await
        .map(|ds| ds.into_iter().map(|d| (d.id, d.name)).collect())
        .unwrap_or_default();
    println!(
        "{:>10}  {:<23}  {:<16}  {:>10}",
        "VERSION", "TIME", "DEVICE", "SIZE"
    );
    for v in versions {
        let device = names.get(&v.author).cloned().unwrap_or(v.author);
        let mark = if v.current { "  (current)" } else { "" };
        println!(
            "{:>10}  {:<23}  {:<16}  {:>10}{mark}",
            v.version,
            stamp(v.saved_ms),
            device,
            Size(v.size).to_string()
        );
    }
    Ok(())
}

/// `meshfs restore PATH [--version V] [--to NEWPATH]`.
pub async fn restore(
    home: &Home,
    path: &Path,
    version: Option<u64>,
    to: Option<&Path>,
) -> anyhow::Result<()> {
    let target = target_of(path)?;
    let client = connect(home)?;
    let mut body = Restore {
        version,
        name: None,
        parent: None,
    };
    if let Some(to) = to {
        if to.symlink_metadata().is_ok() {
            bail!("{} exists; pick a name that is free", to.display());
        }
        let Target::Gone {
            folder,
            parent,
            name,
        } = target_of(to)?
        else {
            bail!("{} exists; pick a name that is free", to.display());
        };
        if folder != target.folder() {
            bail!("restore within the same Mesh Folder; copy the file across afterwards");
        }
        body.name = Some(name);
        body.parent = parent;
    }
    let (folder, entry, _) = ids_in_cloud(&client, target, path).await?;
    let e = client
        .restore(&folder, &entry, &body)
        .await
        .context("restoring")?;
    eprintln!(
        "restored {} ({}, as version {}); every device shows it in a moment",
        to.unwrap_or(path).display(),
        Size(e.size),
        e.version
    );
    Ok(())
}
