//! The mount's safety net: `meshfs watch-mount`, a small process that outlives the agent
//! and clears its mount if the agent died without unmounting, and the unmount itself.

use std::path::Path;
use std::time::Duration;

/// How long the watchdog waits for a dead agent's mount to answer ENOTCONN.
const WATCH_FOR_DEATH: Duration = Duration::from_secs(10);

/// Starts `meshfs watch-mount`, which outlives this process: when it dies (its end of the
/// pipe closes), the watchdog clears a mount it left. fusermount's own auto-unmount does
/// this too, but it first opens the mount point to check it, and when that open races the
/// dying agent's last descriptor of /dev/fuse it fails and gives up, leaving a dead mount
/// (about one SIGKILL in eight here). The returned pipe end must live as long as the agent.
pub(super) fn start_watchdog(mountpoint: &Path) -> Option<std::process::ChildStdin> {
    let exe = std::env::current_exe().ok()?;
    let spawned = std::process::Command::new(exe)
        .arg("watch-mount")
        .arg(mountpoint)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => child.stdin.take(),
        Err(e) => {
            tracing::warn!(error = %e, "starting the mount watchdog; a crash may leave a dead mount");
            None
        }
    }
}

/// The watchdog's work (`meshfs watch-mount`): waits until stdin closes, which happens when
/// the agent ends however it ends, then clears the mount if it is a dead one. An agent that
/// stopped cleanly has unmounted already, and a live mount (a new agent's) is left alone.
pub async fn watch(mountpoint: &Path) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    let deadline = tokio::time::Instant::now() + WATCH_FOR_DEATH;
    while tokio::time::Instant::now() < deadline && is_meshfs_mount(mountpoint) {
        if is_dead(mountpoint) {
            tracing::warn!(path = %mountpoint.display(), "the agent died; clearing its mount");
            unmount(mountpoint);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a meshfs filesystem is mounted at `path`.
fn is_meshfs_mount(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (point, kind) = (f.nth(1), f.next());
        // /proc/self/mounts escapes spaces and a few others as octal.
        let point = point.map(|p| p.replace("\\040", " ").replace("\\011", "\t"));
        point.as_deref() == Some(&*want) && kind == Some("fuse.meshfs")
    })
}

/// Whether the filesystem at `path` has no agent behind it any more.
fn is_dead(path: &Path) -> bool {
    // Opening the directory always reaches the filesystem; a stat may be answered from
    // attributes the kernel still caches for the dead mount.
    std::fs::read_dir(path).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// A mount point left behind by an agent that died answers ENOTCONN; clear it.
pub(super) fn clear_stale_mount(mountpoint: &Path) {
    if is_dead(mountpoint) {
        tracing::warn!(path = %mountpoint.display(), "clearing a stale mount left by an agent that died");
        unmount(mountpoint);
    }
}

/// Detaches the mount (`fusermount3 -u -z`, or `umount -l` where fusermount3 is absent).
pub(super) fn unmount(mountpoint: &Path) {
    let done = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .status()
        .is_ok_and(|s| s.success());
    if !done {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(mountpoint)
            .status();
    }
}
