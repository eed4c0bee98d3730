//! `meshfs pin`, `meshfs unpin` and `meshfs ls`: they act on paths under a mount, through
//! the extended attributes the agent answers (`user.meshfs.*`, see `agent::fs::pins`), so
//! they need no device home and reach whichever agent serves the path.

use crate::agent::config::Size;
use crate::agent::fs::pins::{XATTR_LOCAL, XATTR_MISSING, XATTR_PINNED, XATTR_STATE};
use anyhow::{Context, bail};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `pin` waits with nothing arriving before it says why it stops waiting.
const STALL: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// How often a plain progress line is printed when standard error is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

fn get(path: &Path, name: &str) -> anyhow::Result<String> {
    let mut buf = [0u8; 64];
    match rustix::fs::getxattr(path, name, &mut buf[..]) {
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => bail!(
            "{} is not on a meshfs mount (give a path under the mount point, such as ~/Mesh/Docs)",
            path.display()
        ),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("reading the state of {}", path.display())),
    }
}

fn get_u64(path: &Path, name: &str) -> anyhow::Result<u64> {
    let text = get(path, name)?;
    text.parse()
        .with_context(|| format!("{name} of {} is {text:?}", path.display()))
}

/// Bytes on the device and missing, over all `paths`.
fn on_device(paths: &[PathBuf]) -> anyhow::Result<(u64, u64)> {
    let (mut local, mut missing) = (0, 0);
    for p in paths {
        local += get_u64(p, XATTR_LOCAL)?;
        missing += get_u64(p, XATTR_MISSING)?;
    }
    Ok((local, missing))
}

fn set_pinned(paths: &[PathBuf], on: bool) -> anyhow::Result<()> {
    for p in paths {
        // Checked first, for a clear error off the mount.
        get(p, XATTR_STATE)?;
        let value: &[u8] = if on { b"1" } else { b"0" };
        rustix::fs::setxattr(p, XATTR_PINNED, value, rustix::fs::XattrFlags::empty())
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "{} {}",
                    if on { "pinning" } else { "unpinning" },
                    p.display()
                )
            })?;
    }
    Ok(())
}

/// `meshfs pin PATH...`: pins, then waits until everything pinned is on the device.
pub fn pin(paths: &[PathBuf]) -> anyhow::Result<()> {
    set_pinned(paths, true)?;
    let (local, missing) = on_device(paths)?;
    let total = local + missing;
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "pinning {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let (mut last_missing, mut last_change, mut last_line) = (missing, Instant::now(), None);
    let mut missing = missing;
    while missing > 0 {
        let done = total.saturating_sub(missing);
        match &bar {
            Some(b) => b.set_position(done),
            None if last_line.is_none_or(|t: Instant| t.elapsed() >= PLAIN_EVERY) => {
                eprintln!("pinning: {} of {} on this device", Size(done), Size(total));
                last_line = Some(Instant::now());
            }
            None => {}
        }
        if missing < last_missing {
            (last_missing, last_change) = (missing, Instant::now());
        } else if last_change.elapsed() >= STALL {
            if let Some(b) = &bar {
                b.abandon();
            }
            bail!(
                "{} of what is pinned is not on this device yet, and nothing arrived for {} s: is the cloud (or another device holding it) reachable? The files stay pinned and the agent keeps fetching; run `meshfs pin` again to wait",
                Size(missing),
                STALL.as_secs()
            );
        }
        std::thread::sleep(POLL);
        missing = on_device(paths)?.1;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!("pinned: {} on this device", Size(total));
    Ok(())
}

/// `meshfs unpin PATH...`: the content may be evicted again (it stays until it is).
pub fn unpin(paths: &[PathBuf]) -> anyhow::Result<()> {
    set_pinned(paths, false)
}

/// `meshfs ls [PATH]`: a directory's entries (or one file) with state, bytes on this device
/// and size, read from local state without fetching content.
pub fn ls(path: Option<&Path>) -> anyhow::Result<()> {
    let path = path.unwrap_or(Path::new("."));
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut rows = Vec::new();
    if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        get(path, XATTR_STATE)?;
        for name in names {
            rows.push((path.join(&name), name.to_string_lossy().into_owned()));
        }
    } else {
        rows.push((path.to_owned(), path.display().to_string()));
    }
    println!("{:<12} {:>12} {:>12}  NAME", "STATE", "ON DEVICE", "SIZE");
    for (p, name) in rows {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.file_type().is_symlink() {
            println!("{:<12} {:>12} {:>12}  {name}", "link", "-", "-");
            continue;
        }
        let state = get(&p, XATTR_STATE)?;
        let local = get_u64(&p, XATTR_LOCAL)?;
        let size = if meta.is_dir() {
            "-".to_string()
        } else {
            Size(meta.len()).to_string()
        };
        let name = if meta.is_dir() {
            format!("{name}/")
        } else {
            name
        };
        println!(
            "{state:<12} {:>12} {size:>12}  {name}",
            Size(local).to_string()
        );
    }
    Ok(())
}
