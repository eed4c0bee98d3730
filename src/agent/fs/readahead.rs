//! Read-ahead: the agent's, per open file, and the kernel's, for the mount.
//!
//! The agent fetches blocks ahead of a sequential reader ([`ReadAhead`]). The kernel reads
//! ahead through the page cache too, but caps a FUSE mount at the smaller of what the
//! filesystem asks for at `init` (a block) and its default for a new backing device
//! (128 KiB), so a sequential read reached the agent 128 KiB at a time: eight requests,
//! eight tasks and eight replies per block. [`raise`] lifts the mount's `read_ahead_kb` to a
//! block through sysfs, so a sequential reader costs one request per block. Only root may
//! write it; anyone else keeps the default.

use crate::proto::BLOCK_SIZE;
use std::path::Path;

/// Largest read-ahead window, in blocks: 32 MiB asked for ahead of a sequential reader. A
/// block from a peer through the relay crosses two processes and three sockets, so enough
/// must be in flight to cover that latency.
pub const MAX_WINDOW: u64 = 32;

/// One open file's read-ahead. A read that starts where the last one ended doubles the
/// window (1, 2, 4 … [`MAX_WINDOW`] blocks past the read, or less in a small cache: see
/// [`ReadAhead::within`]); any other read is a seek and resets it. Each block is asked for
/// once per sequential run, however many reads (of 128 KiB, say) it takes to get through it.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// The largest window, in blocks; [`MAX_WINDOW`] when 0.
    cap: u64,
    /// Where the next sequential read would start.
    next_offset: u64,
    /// The window, in blocks.
    window: u64,
    /// Blocks before this index were asked for already in this run.
    asked_until: u64,
}

impl ReadAhead {
    /// Read-ahead for a device whose cache holds `limit` bytes (0: no limit): the window
    /// stays within an eighth of it, so that what is fetched ahead is not evicted before
    /// it is read.
    pub fn within(limit: u64) -> Self {
        let cap = match limit {
            0 => MAX_WINDOW,
            l => (l / BLOCK_SIZE / 8).clamp(1, MAX_WINDOW),
        };
        Self {
            cap,
            ..Self::default()
        }
    }

    /// After a read of bytes `offset..end` (not empty): the indexes of the blocks to fetch.
    pub fn after_read(&mut self, offset: u64, end: u64) -> std::ops::Range<u64> {
        if offset == self.next_offset && offset != 0 {
            let cap = if self.cap == 0 { MAX_WINDOW } else { self.cap };
            self.window = (self.window * 2).clamp(1, cap);
        } else {
            self.window = 0;
            self.asked_until = 0;
        }
        self.next_offset = end;
        let after = (end.saturating_sub(1) / BLOCK_SIZE) + 1;
        let from = self.asked_until.max(after);
        let to = after + self.window;
        self.asked_until = self.asked_until.max(to);
        from..to.max(from)
    }
}

/// Raises the read-ahead of the FUSE mount at `mountpoint` (as it appears in
/// `/proc/self/mountinfo`: absolute, symlinks resolved) to one block, if this process may.
/// Reads no file of the mount, so it is safe to call before the session serves requests.
pub fn raise(mountpoint: &Path) {
    let bdi = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| backing_device(&info, mountpoint));
    let Some(bdi) = bdi else {
        tracing::debug!(mountpoint = %mountpoint.display(), "the mount is not in /proc/self/mountinfo; read-ahead left as it is");
        return;
    };
    let knob = format!("/sys/class/bdi/{bdi}/read_ahead_kb");
    match std::fs::write(&knob, (BLOCK_SIZE / 1024).to_string()) {
        Ok(()) => tracing::debug!(%knob, "kernel read-ahead raised to a block"),
        Err(e) => {
            tracing::debug!(%knob, error = %e, "kernel read-ahead left at its default (needs root)")
        }
    }
}

/// The `major:minor` of the last meshfs mount on `mountpoint` in a mountinfo text (the last
/// one is on top, should there be several).
fn backing_device(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    mountinfo.lines().rev().find_map(|line| {
        // id parent major:minor root mountpoint options [optional...] - fstype source ...
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let at = fields.nth(1)?;
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
        (fstype == "fuse.meshfs" && Path::new(&unescape(at)) == mountpoint).then(|| dev.to_string())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = BLOCK_SIZE;

    /// Reads `size` bytes at a time from `start` for `count` reads; every block fetched.
    fn sequential(ra: &mut ReadAhead, start: u64, size: u64, count: u64) -> Vec<u64> {
        (0..count)
            .flat_map(|i| {
                let at = start + i * size;
                ra.after_read(at, at + size)
            })
            .collect()
    }

    #[test]
    fn a_sequential_reader_gets_a_growing_window_and_each_block_once() {
        let mut ra = ReadAhead::default();
        let asked = sequential(&mut ra, 0, MIB, 40);
        // The first read is not yet sequential; then 1, 2, 4, 8, 16, 32 blocks past each.
        assert_eq!(&asked[..3], &[2, 3, 4]);
        let mut sorted = asked.clone();
        sorted.dedup();
        assert_eq!(sorted, asked, "no block asked twice");
        assert!(asked.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(asked.last(), Some(&(40 + MAX_WINDOW - 1)));
    }

    #[test]
    fn a_small_cache_keeps_the_window_small() {
        let mut ra = ReadAhead::within(64 * MIB);
        let asked = sequential(&mut ra, 0, MIB, 40);
        assert_eq!(asked.last(), Some(&(40 + 8 - 1)), "an eighth of the cache");
        let mut tiny = ReadAhead::within(MIB);
        assert_eq!(sequential(&mut tiny, 0, MIB, 5).last(), Some(&5));
        let mut big = ReadAhead::within(1 << 40);
        let asked = sequential(&mut big, 0, MIB, 40);
        assert_eq!(asked.last(), Some(&(40 + MAX_WINDOW - 1)));
    }

    #[test]
    fn small_reads_ask_for_the_same_blocks_as_block_sized_ones() {
        let (mut big, mut small) = (ReadAhead::default(), ReadAhead::default());
        let by_block = sequential(&mut big, 0, MIB, 64);
        let by_128k = sequential(&mut small, 0, MIB / 8, 64 * 8);
        assert!(by_128k.windows(2).all(|w| w[0] < w[1]), "each block once");
        assert_eq!(by_128k.last(), by_block.last());
        assert!(by_block.iter().all(|b| by_128k.contains(b)));
    }

    #[test]
    fn a_seek_resets_the_window_and_a_new_run_starts_afresh() {
        let mut ra = ReadAhead::default();
        sequential(&mut ra, 0, MIB, 10);
        // A read elsewhere asks for nothing; reading on from there grows a window again.
        assert!(ra.after_read(500 * MIB, 501 * MIB).is_empty());
        assert_eq!(ra.after_read(501 * MIB, 502 * MIB), 502..503);
        assert_eq!(ra.after_read(502 * MIB, 503 * MIB), 503..505);
        // Back to the start: the blocks asked for in the first run may be asked again.
        assert!(ra.after_read(3, 4).is_empty());
        assert_eq!(ra.after_read(4, MIB + 1), 2..3);
    }

    const INFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
41 22 0:41 / /tmp/m rw,nosuid,nodev,relatime shared:20 - fuse.meshfs meshfs rw,user_id=0
42 22 0:42 / /tmp/my\\040mesh rw,nosuid,nodev - fuse.meshfs meshfs rw,user_id=0
43 22 0:43 / /tmp/other rw - fuse.sshfs host: rw
44 41 0:44 / /tmp/m rw,nosuid,nodev,relatime shared:21 - fuse.meshfs meshfs rw,user_id=0
";

    #[test]
    fn finds_the_top_meshfs_mount_on_a_path_and_nothing_else() {
        assert_eq!(
            backing_device(INFO, Path::new("/tmp/m")).as_deref(),
            Some("0:44")
        );
        assert_eq!(
            backing_device(INFO, Path::new("/tmp/my mesh")).as_deref(),
            Some("0:42")
        );
        assert_eq!(backing_device(INFO, Path::new("/tmp/other")), None);
        assert_eq!(backing_device(INFO, Path::new("/")), None);
        assert_eq!(backing_device("garbage\n\n- -", Path::new("/tmp/m")), None);
    }

    #[test]
    fn unescapes_octal_and_keeps_the_rest() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/plain\09"), r"/plain\09");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
