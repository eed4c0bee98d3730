//! Storage that stays bounded, through real mounts: a cache limit that a file four times its
//! size reads through whole, and blocks that must stay (changes not yet uploaded) that the
//! limit never touches.

mod common;

use common::{
    Cloud, Device, Mesh, eventually, files_under, output_ok, pseudo_random, sqlite, text,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// What a home may hold beyond its cache limit: the metadata store, logs, status.
const METADATA: u64 = 16 * MIB;

/// Bytes of every file in a device home.
fn home_bytes(home: &Path) -> u64 {
    files_under(home)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Runs `meshfs ARGS PATH` (commands that act on a path under a mount, with no home),
/// which must succeed.
fn meshfs_ok(args: &[&str], path: &Path) -> std::process::Output {
    let out = common::meshfs(None)
        .args(args)
        .arg(path)
        .output()
        .expect("run meshfs");
    assert!(
        out.status.success(),
        "meshfs {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Samples a home's size every few milliseconds until dropped; keeps the largest seen.
struct Sampler {
    most: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(home: &Path) -> Self {
        let (most, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (m, s, home) = (Arc::clone(&most), Arc::clone(&stop), home.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(home_bytes(&home), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            most,
            stop,
            thread: Some(thread),
        }
    }

    fn most(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.most.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_file_four_times_the_cache_reads_whole_and_both_homes_stay_within_the_limit() {
    let mesh = Mesh::on_with(Cloud::start(), &["--cache-size", "64M"]);
    let data = pseudo_random(256 * MIB as usize, 11);
    std::fs::write(mesh.ma.join("Docs/big.bin"), &data).expect("write on A");
    assert!(mesh.a.uploaded_within(Duration::from_secs(180)));
    // Uploaded, A's copy is one the cloud holds too: A evicts down to its limit.
    assert!(
        eventually(Duration::from_secs(30), || home_bytes(&mesh.a.home)
            <= 64 * MIB + METADATA),
        "A's home holds {} bytes",
        home_bytes(&mesh.a.home)
    );

    let on_b = mesh.mb.join("Docs/big.bin");
    assert!(eventually(Duration::from_secs(30), || std::fs::metadata(
        &on_b
    )
    .is_ok_and(|m| m.len() == data.len() as u64)));
    let sampler = Sampler::start(&mesh.b.home);
    let read = std::fs::read(&on_b).expect("read on B");
    let most = sampler.most();
    assert!(read == data, "B reads the file byte-identical");
    assert!(
        most <= 64 * MIB + METADATA,
        "B's home reached {most} bytes while reading"
    );
    assert!(
        mesh.b
            .reports(Duration::from_secs(10), |s| s.counters.blocks_evicted > 0
                && s.cache.used <= 64 * MIB),
        "{:?}",
        mesh.b.status()
    );
    let status = mesh.b.cli_ok(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("of 64.0 MiB used"), "{text}");
}

#[test]
fn changes_not_yet_uploaded_are_never_evicted() {
    let mut cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    a.create_folder("Docs");
    let ma = a.mount_with(&["--cache-size", "16M"]);
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Docs")
        .is_dir()));
    cloud.kill();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("Docs/offline{i}.bin"),
                pseudo_random(8 * MIB as usize, 2 * i + 1),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(ma.join(name), data).expect("write while the cloud is away");
    }
    // 48 MiB of changes that only this device has, against a 16 MiB limit: the agent
    // keeps them all and says so.
    assert!(
        a.reports(Duration::from_secs(60), |s| s.cache.kept >= 48 * MIB
            && s.cache.used >= 48 * MIB),
        "{:?}",
        a.status()
    );
    let status = a.cli_ok(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("exceeds the cache limit"), "{text}");
    for (name, data) in &files {
        assert!(&std::fs::read(ma.join(name)).expect("read back") == data);
    }

    cloud.restart();
    assert!(
        a.uploaded_within(Duration::from_secs(120)),
        "{:?}\n{}",
        a.status(),
        ma.log_text()
    );
    // Now the cloud holds them, the limit applies again.
    assert!(
        eventually(Duration::from_secs(30), || home_bytes(&a.home)
            <= 16 * MIB + METADATA),
        "A's home holds {} bytes",
        home_bytes(&a.home)
    );
    let b = Device::login(&cloud, "ann", "desktop");
    let mb = b.mount();
    for (name, data) in &files {
        let p = mb.join(name);
        assert!(eventually(Duration::from_secs(30), || p.exists()), "{name}");
        assert!(&std::fs::read(&p).expect("read on B") == data, "{name}");
    }
}

#[test]
fn a_pinned_folder_reads_whole_with_the_cloud_and_every_other_device_stopped() {
    let mut mesh = Mesh::on_with(Cloud::start(), &["--cache-size", "16M"]);
    std::fs::create_dir(mesh.ma.join("Docs/album")).expect("mkdir on A");
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let len = if i % 2 == 0 { 6 * MIB as usize } else { 3000 };
            (
                format!("Docs/album/photo{i}.raw"),
                pseudo_random(len, 40 + 2 * i + 1),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(mesh.ma.join(name), data).expect("write on A");
    }
    std::fs::write(mesh.ma.join("Docs/not-pinned.bin"), b"elsewhere").expect("write on A");
    assert!(mesh.a.uploaded_within(Duration::from_secs(120)));
    let album = mesh.mb.join("Docs/album");
    let last = mesh.mb.join(&files[5].0);
    assert!(eventually(Duration::from_secs(30), || last.exists()));

    // States are read from local metadata: listing them fetches nothing.
    let ls = meshfs_ok(&["ls"], &album);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.contains("remote-only") && !text.contains("pinned"),
        "{text}"
    );
    let dump = std::process::Command::new("getfattr")
        .args(["-d", "-m", "-", "-R"])
        .arg(&album)
        .output()
        .expect("getfattr");
    assert!(String::from_utf8_lossy(&dump.stdout).contains("user.meshfs.state=\"remote-only\""));
    assert_eq!(mesh.b.fresh_status().counters.blocks_fetched, 0);

    // 18 MiB pinned against a 16 MiB limit: pinned content stays whatever the limit.
    let out = meshfs_ok(&["pin"], &album);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned: 18.0 MiB"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = meshfs_ok(&["ls"], &album);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert_eq!(text.matches("pinned").count(), files.len(), "{text}");
    let attr = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.meshfs.state"])
        .arg(&last)
        .output()
        .expect("getfattr");
    assert_eq!(String::from_utf8_lossy(&attr.stdout), "pinned");
    assert!(
        mesh.b
            .reports(Duration::from_secs(60), |s| s.cache.kept >= 18 * MIB),
        "{:?}",
        mesh.b.status()
    );

    mesh.ma.stop();
    mesh.cloud.kill();
    for (name, data) in &files {
        let got = std::fs::read(mesh.mb.join(name)).expect("read a pinned file offline");
        assert!(&got == data, "{name}");
    }
    assert_eq!(mesh.b.counters().blocks_unavailable, 0);
    // What is not pinned, nor here, fails at once with the cloud away: no hang.
    let err = std::fs::read(mesh.mb.join("Docs/not-pinned.bin")).expect_err("nowhere to read from");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO | libc::ENOTCONN)),
        "{err}"
    );

    // Unpinned, the content is back under the limit's rule.
    meshfs_ok(&["unpin"], &album);
    let ls = meshfs_ok(&["ls"], &album);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(!text.contains("pinned") && text.contains("local"), "{text}");
}

#[test]
fn pin_and_ls_off_a_mount_say_what_to_give_instead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = common::meshfs(None)
        .args(["pin"])
        .arg(dir.path())
        .output()
        .expect("meshfs pin");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("is not on a meshfs mount"), "{text}");
}

/// What the cloud says the user's folders take (`meshfs status --json`).
fn quota_used(dev: &Device) -> u64 {
    let out = dev.cli_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["quota_used"].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn history_restores_versions_and_deleted_files_and_the_quota_counts_what_is_kept() {
    let cloud = Cloud::start_with(&[
        "--history-versions",
        "3",
        "--history-days",
        "0",
        "--collect-every",
        "1",
        "--collect-grace",
        "1",
    ]);
    let mesh = Mesh::on(cloud);
    let path = mesh.ma.join("Docs/report.bin");
    let states: Vec<Vec<u8>> = (0..5)
        .map(|i| pseudo_random(2 * MIB as usize, 60 + 2 * i + 1))
        .collect();
    for s in &states {
        std::fs::write(&path, s).expect("write on A");
        assert!(mesh.a.uploaded());
    }
    // The current content and the three newest earlier ones; the first was collected.
    let out = mesh.a.cli_ok(&["history", path.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(
        rows[0].contains("(current)") && rows[0].contains("laptop"),
        "{text}"
    );
    assert!(
        eventually(Duration::from_secs(20), || quota_used(&mesh.a) == 8 * MIB),
        "the quota counts what is kept: {} bytes",
        quota_used(&mesh.a)
    );
    // What was freed is gone from block storage too: four versions of two blocks.
    assert!(
        eventually(Duration::from_secs(10), || mesh.cloud.blocks().len() == 8),
        "{:?}",
        mesh.cloud.blocks()
    );

    // Restore the oldest kept version (the second written) from the other device: every
    // device reads it.
    let oldest: &str = rows[3].split_whitespace().next().expect("version");
    let on_b = mesh.mb.join("Docs/report.bin");
    mesh.b.cli_ok(&[
        "restore",
        on_b.to_str().expect("utf-8"),
        "--version",
        oldest,
    ]);
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read(&path)
            .is_ok_and(|d| d == states[1])),
        "A reads the restored version"
    );
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read(&on_b)
            .is_ok_and(|d| d == states[1])),
        "B reads the restored version"
    );

    // A deleted file comes back from the trash, under its name or another.
    std::fs::remove_file(&on_b).expect("delete on B");
    assert!(mesh.b.uploaded());
    assert!(eventually(Duration::from_secs(20), || !path.exists()));
    let out = mesh.a.cli_ok(&["history", path.to_str().expect("utf-8")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("was deleted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let back = mesh.ma.join("Docs/report (restored).bin");
    mesh.a.cli_ok(&[
        "restore",
        path.to_str().expect("utf-8"),
        "--to",
        back.to_str().expect("utf-8"),
    ]);
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read(&back)
            .is_ok_and(|d| d == states[1])),
        "the deleted file is back"
    );
    let out = mesh.a.cli(&[
        "restore",
        mesh.ma.join("Docs/never.bin").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither on the mount nor among the deleted")
    );
}

#[test]
fn past_the_quota_the_oldest_history_goes_first_and_current_content_still_uploads() {
    let cloud = Cloud::start_with(&["--collect-grace", "1"]);
    let mesh = Mesh::on(cloud);
    mesh.cloud.set_quota("ann", 7 * MIB);
    let path = mesh.ma.join("Docs/db.bin");
    for i in 0..5 {
        std::fs::write(&path, pseudo_random(2 * MIB as usize, 80 + 2 * i + 1)).expect("write");
        assert!(mesh.a.uploaded());
        // Long enough apart not to settle into one upload, and past the grace period.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let last = pseudo_random(2 * MIB as usize, 89);
    // Every version went to the cloud: B reads the last from there with A gone.
    let mut mesh = mesh;
    mesh.ma.stop();
    let on_b = mesh.mb.join("Docs/db.bin");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read(&on_b)
            .is_ok_and(|d| d == last)),
        "{}\n{}",
        mesh.cloud.log_text(),
        mesh.mb.log_text()
    );
    assert!(quota_used(&mesh.b) <= 7 * MIB);
    let out = mesh.b.cli_ok(&["history", on_b.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        (2..=4).contains(&text.lines().skip(1).count()),
        "history made room: {text}"
    );
}

/// Runs `sqlite3 -bail DB` on the statements in `sql`, which must succeed.
#[test]
fn a_hundred_megabyte_quota_holds_a_file_rewritten_ten_times_and_a_busy_database() {
    const QUOTA: u64 = 100_000_000;
    const ROWS: usize = 10_000;
    let cloud = Cloud::start_logging(
        "meshfs=debug,info",
        &["--collect-every", "1", "--collect-grace", "1"],
    );
    // No peers: B has everything from the cloud.
    let mesh = Mesh::on_with(cloud, &["--no-peers"]);
    mesh.cloud.set_quota("ann", QUOTA);
    let big = mesh.ma.join("Docs/big.bin");
    let mut last = Vec::new();
    for i in 0..10 {
        last = pseudo_random(30_000_000, 500 + 2 * i + 1);
        std::fs::write(&big, &last).expect("write on A");
        assert!(
            mesh.a.uploaded_within(Duration::from_secs(120)),
            "version {i}"
        );
        assert!(quota_used(&mesh.a) <= QUOTA);
    }
    assert_eq!(mesh.a.fresh_status().failed_uploads, 0);

    // One insert a transaction: SQLite writes and deletes its rollback journal each time.
    let db = mesh.ma.join("Docs/db.sqlite");
    let steps = |c: &Cloud| {
        c.requests_answered(&format!("/folders/{}/steps", mesh.a.folder_id("Docs")), 200)
    };
    let before = steps(&mesh.cloud);
    let mut sql = String::from("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\n");
    for i in 0..ROWS {
        sql.push_str(&format!("INSERT INTO t (v) VALUES ('row {i}');\n"));
    }
    output_ok("sqlite3", sqlite(&db, &sql));
    assert!(mesh.a.uploaded_within(Duration::from_secs(180)));
    let requests = steps(&mesh.cloud) - before;
    let sent = mesh.a.counters().bytes_uploaded;
    eprintln!("{ROWS} transactions: {requests} step requests; {sent} bytes uploaded in all");
    assert!(
        requests * 20 < ROWS,
        "{requests} step requests for {ROWS} transactions"
    );
    assert_eq!(mesh.a.fresh_status().failed_uploads, 0);

    // Everything on B, from the cloud.
    let on_b = mesh.mb.join("Docs/big.bin");
    assert!(
        eventually(Duration::from_secs(60), || std::fs::read(&on_b)
            .is_ok_and(|d| d == last)),
        "B reads the last version"
    );
    let db_b = mesh.mb.join("Docs/db.sqlite");
    assert!(
        eventually(Duration::from_secs(30), || db_b.exists()
            && text(&sqlite(&db_b, "SELECT count(*) FROM t;").stdout).trim()
                == ROWS.to_string()),
        "B reads every row"
    );
    assert!(!mesh.mb.join("Docs/db.sqlite-journal").exists());

    // Within the quota, and what the collector freed is gone from block storage.
    let stored = |c: &Cloud| -> u64 { c.blocks().iter().map(|b| b.len).sum() };
    let used = quota_used(&mesh.b);
    assert!(used <= QUOTA, "{used} bytes used");
    assert!(
        eventually(Duration::from_secs(30), || stored(&mesh.cloud) <= used),
        "{} bytes in block storage, {used} counted",
        stored(&mesh.cloud)
    );
}

#[test]
fn many_small_files_read_in_turn_come_from_the_cloud_in_batches() {
    let cloud = Cloud::start_logging("meshfs=debug,info", &[]);
    let mesh = Mesh::on_with(cloud, &["--no-peers"]);
    let dir = mesh.ma.join("Docs/many");
    std::fs::create_dir(&dir).expect("mkdir on A");
    let files: Vec<Vec<u8>> = (0..640)
        .map(|i| pseudo_random(4096, 1000 + 2 * i + 1))
        .collect();
    for (i, data) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i:04}")), data).expect("write on A");
    }
    assert!(mesh.a.uploaded_within(Duration::from_secs(120)));
    let folder = mesh.a.folder_id("Docs");
    let on_b = mesh.mb.join("Docs/many");
    let last = on_b.join("f0639");
    assert!(eventually(Duration::from_secs(30), || last.exists()));

    // One file alone: one block, no batch.
    let singles = |c: &Cloud| {
        c.log_text()
            .lines()
            .filter(|l| {
                l.contains(" request ")
                    && l.contains("method=GET")
                    && l.contains(&format!(" path=/folders/{folder}/blocks/"))
            })
            .count()
    };
    let batches = |c: &Cloud| c.requests_answered(&format!("/folders/{folder}/blocks"), 200);
    assert!(std::fs::read(on_b.join("f0300")).expect("read one") == files[300]);
    assert!(eventually(Duration::from_secs(5), || singles(&mesh.cloud) == 1));
    assert_eq!(batches(&mesh.cloud), 0);

    // All of them in name order, as `cat many/*` reads them.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cat f* | sha256sum")
        .current_dir(&on_b)
        .output()
        .expect("cat");
    let mut all = Vec::new();
    files.iter().for_each(|f| all.extend_from_slice(f));
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&all))
    };
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want));
    let (s, b) = (singles(&mesh.cloud), batches(&mesh.cloud));
    assert!(
        b >= 640 / 64 - 1 && s <= 1 + 2 * b,
        "{s} single GETs, {b} batches"
    );
    assert_eq!(mesh.b.fresh_status().counters.blocks_fetched, 640);
}

#[test]
fn uploads_racing_the_collector_lose_nothing() {
    // No grace at all: the collector may free a block between its upload and the step that
    // names it, every second, as often as the race allows.
    let cloud = Cloud::start_with(&["--collect-every", "1", "--collect-grace", "0"]);
    let mesh = Mesh::on_with(cloud, &["--no-peers"]);
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            (
                format!("Docs/race{i:02}.bin"),
                pseudo_random(MIB as usize + 4096 * i as usize, 300 + 2 * i + 1),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(mesh.ma.join(name), data).expect("write on A");
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(mesh.a.uploaded_within(Duration::from_secs(120)));
    for (name, data) in &files {
        let p = mesh.mb.join(name);
        assert!(
            eventually(Duration::from_secs(30), || std::fs::read(&p)
                .is_ok_and(|d| &d == data)),
            "{name} on B"
        );
    }
    let written: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    assert!(mesh.a.counters().bytes_uploaded >= written);
    assert_eq!(mesh.a.fresh_status().failed_uploads, 0);
}

/// Whether this kernel serves FUSE passthrough (Linux 6.9 and later).
fn kernel_has_passthrough() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (6, 9))
}

/// Reads the file at `path` on `dev`'s mount until an open of it is served by passthrough
/// (the release of an earlier open reaches the agent after `close` returns, and an open
/// beside it joins the way that one was served); the content then read.
fn read_by_passthrough(dev: &Device, path: &Path) -> Vec<u8> {
    let mut read = Vec::new();
    let served = eventually(Duration::from_secs(20), || {
        let before = dev.fresh_status().counters.passthrough_opens;
        read = std::fs::read(path).expect("read");
        dev.fresh_status().counters.passthrough_opens > before
    });
    assert!(
        served,
        "no read of {path:?} went by passthrough: {:?}",
        dev.status()
    );
    read
}

#[test]
fn files_on_the_device_are_read_by_passthrough_and_writers_beside_readers_stay_coherent() {
    if !kernel_has_passthrough() {
        eprintln!("skipped: this kernel has no FUSE passthrough");
        return;
    }
    let mesh = Mesh::new();
    let data = pseudo_random(3 * MIB as usize + 123, 21);
    let on_a = mesh.ma.join("Docs/clip.bin");
    std::fs::write(&on_a, &data).expect("write on A");

    // Wholly on A: the kernel reads it from a view, the agent serves no read.
    assert!(read_by_passthrough(&mesh.a, &on_a) == data);
    let before = mesh.a.fresh_status().counters;
    assert!(std::fs::read(&on_a).expect("read on A") == data);
    let after = mesh.a.fresh_status().counters;
    assert!(
        after.passthrough_opens > before.passthrough_opens,
        "{after:?}"
    );
    assert_eq!(
        after.reads_served, before.reads_served,
        "the agent read nothing"
    );
    let status = mesh.a.cli_ok(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("passthrough opens so far"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // A reader holds the file by passthrough while a writer appends: no EIO, and the
    // reader sees the appended bytes at once, as on a local disk.
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let reader = std::fs::File::open(&on_a).expect("open for reading");
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&on_a)
        .expect("open for appending beside a passthrough reader");
    writer.write_all(b"appended").expect("append");
    let mut tail = [0u8; 8];
    reader
        .read_exact_at(&mut tail, data.len() as u64)
        .expect("the reader reads past the old end");
    assert_eq!(&tail, b"appended");
    drop(writer);
    drop(reader);
    let mut whole = data.clone();
    whole.extend_from_slice(b"appended");
    assert!(std::fs::read(&on_a).expect("reread on A") == whole);

    // B gets the appended version; once wholly on B, B reads it by passthrough too.
    let on_b = mesh.mb.join("Docs/clip.bin");
    assert!(
        eventually(Duration::from_secs(60), || std::fs::read(&on_b)
            .is_ok_and(|b| b == whole)),
        "B reads the appended file"
    );
    assert!(read_by_passthrough(&mesh.b, &on_b) == whole);
    let before = mesh.b.fresh_status().counters;
    let held = std::fs::File::open(&on_b).expect("open on B");
    let after = mesh.b.fresh_status().counters;
    assert!(
        after.passthrough_opens > before.passthrough_opens,
        "{after:?}"
    );

    // A changes it while B's reader holds it by passthrough: the reader reads the new
    // version, as a reader through the page cache would.
    let next = pseudo_random(2 * MIB as usize + 7, 22);
    std::fs::write(&on_a, &next).expect("rewrite on A");
    let mut held = held;
    let fresh = eventually(Duration::from_secs(60), || {
        use std::io::{Read, Seek};
        let mut got = Vec::new();
        held.rewind().is_ok() && held.read_to_end(&mut got).is_ok() && got == next
    });
    assert!(fresh, "B's open descriptor kept the old version");
    drop(held);
    assert!(std::fs::read(&on_b).expect("reopen on B") == next);
}

#[test]
fn no_passthrough_leaves_every_read_to_the_agent() {
    let mesh = Mesh::on_with(Cloud::start(), &["--no-passthrough"]);
    let data = pseudo_random(2 * MIB as usize, 23);
    std::fs::write(mesh.ma.join("Docs/plain.bin"), &data).expect("write on A");
    let on_b = mesh.mb.join("Docs/plain.bin");
    // B fetches it through the agent, then has it wholly: still no passthrough open.
    assert!(
        eventually(Duration::from_secs(60), || std::fs::read(&on_b)
            .is_ok_and(|b| b == data)),
        "B reads the file"
    );
    for _ in 0..3 {
        assert!(std::fs::read(&on_b).expect("reread on B") == data);
    }
    let after = mesh.b.fresh_status().counters;
    assert_eq!(after.passthrough_opens, 0, "{after:?}");
    assert!(after.reads_served > 0, "{after:?}");
}
