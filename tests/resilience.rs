//! The mount holds up when things go wrong or get big: a lost cache is not a mass deletion,
//! metadata never pulls content, the cloud can vanish and come back, a killed agent leaves
//! no dead mount, and renames or small edits of big files move almost nothing.

mod common;

use common::{Mesh, SOON, eventually, is_mounted, names, pseudo_random};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Whether thread `tid` of this process is blocked in a system call that opens, reads or
/// looks up a file (`/proc` names the call a thread waits in, or says `running`).
fn blocked_on_a_file(tid: u32) -> bool {
    let call =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    let number = call
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok());
    number.is_some_and(|n| {
        [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_statx,
            libc::SYS_newfstatat,
        ]
        .contains(&n)
    })
}

/// The calling thread's id, from `/proc/thread-self` (`PID/task/TID`).
fn thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|t| t.to_str())
        .and_then(|t| t.parse().ok())
        .expect("a thread id")
}

#[test]
fn losing_the_local_cache_deletes_nothing_and_rebuilds_from_the_cloud() {
    let mut mesh = Mesh::new();
    std::fs::create_dir(mesh.ma.join("Docs/keep")).unwrap();
    for i in 0..20 {
        std::fs::write(
            mesh.ma.join(&format!("Docs/keep/f{i}")),
            format!("file {i}"),
        )
        .unwrap();
    }
    assert!(mesh.a_uploaded());
    assert!(eventually(SOON, || names(&mesh.mb.join("Docs/keep")).len() == 20));
    let (_, cursor) = mesh.a.cloud_changes("Docs", 0);

    // A's agent stops, its cache and metadata vanish, and it starts again.
    mesh.ma.stop();
    std::fs::remove_dir_all(mesh.a.home.join("cache")).unwrap();
    mesh.ma.restart();
    assert!(
        eventually(SOON, || names(&mesh.ma.join("Docs/keep")).len() == 20),
        "A did not rebuild"
    );
    assert_eq!(
        std::fs::read_to_string(mesh.ma.join("Docs/keep/f7")).unwrap(),
        "file 7"
    );
    // Nothing was deleted anywhere: once a report after the rebuild shows A with nothing
    // left to send, the cloud holds no deletion since, and B still lists every file.
    assert!(mesh.a_uploaded(), "{}", mesh.ma.log_text());
    let (changes, _) = mesh.a.cloud_changes("Docs", cursor);
    let deleted: Vec<&str> = changes
        .iter()
        .filter(|e| e.deleted)
        .map(|e| e.name.as_str())
        .collect();
    assert!(deleted.is_empty(), "A's restart deleted {deleted:?}");
    assert_eq!(names(&mesh.mb.join("Docs/keep")).len(), 20);
}

#[test]
fn a_device_back_from_a_long_absence_merges_and_never_wipes_newer_work() {
    let mut mesh = Mesh::new();
    std::fs::write(mesh.ma.join("Docs/shared.txt"), b"v1").unwrap();
    std::fs::write(mesh.ma.join("Docs/old.txt"), b"old").unwrap();
    assert!(eventually(SOON, || std::fs::read(
        mesh.mb.join("Docs/shared.txt")
    )
    .is_ok_and(|d| d == b"v1")));
    assert!(mesh.b.uploaded());

    // B goes away with its old view; A keeps working.
    mesh.mb.stop();
    std::fs::write(mesh.ma.join("Docs/shared.txt"), b"v2 from A").unwrap();
    std::fs::write(mesh.ma.join("Docs/new-on-a.txt"), b"new").unwrap();
    std::fs::remove_file(mesh.ma.join("Docs/old.txt")).unwrap();
    assert!(mesh.a_uploaded());
    let (_, cursor) = mesh.a.cloud_changes("Docs", 0);

    // B comes back: it catches up from its cursor; A's newer work stays.
    mesh.mb.restart();
    let want = vec!["new-on-a.txt".to_string(), "shared.txt".to_string()];
    assert!(
        eventually(SOON, || names(&mesh.mb.join("Docs")) == want),
        "{:?}",
        names(&mesh.mb.join("Docs"))
    );
    assert_eq!(
        std::fs::read(mesh.mb.join("Docs/shared.txt")).unwrap(),
        b"v2 from A"
    );
    // Once a report shows B with nothing left to send, the cloud holds no change of B's
    // since A's work, so nothing can undo it on A.
    assert!(mesh.b.uploaded(), "{}", mesh.mb.log_text());
    let b_id = mesh.b.device_id();
    let (changes, _) = mesh.b.cloud_changes("Docs", cursor);
    let from_b: Vec<&str> = changes
        .iter()
        .filter(|e| e.author == b_id)
        .map(|e| e.name.as_str())
        .collect();
    assert!(from_b.is_empty(), "B's return changed {from_b:?}");
    assert_eq!(names(&mesh.ma.join("Docs")), want);
    assert_eq!(
        std::fs::read(mesh.ma.join("Docs/shared.txt")).unwrap(),
        b"v2 from A"
    );
}

#[test]
fn metadata_access_fetches_no_content_and_random_reads_fetch_one_block_each() {
    let mesh = Mesh::new();
    let dir = mesh.ma.join("Docs/many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join(format!("f{i:04}.txt")), pseudo_random(4096, i)).unwrap();
    }
    let big = pseudo_random(1024 * MIB, 42);
    std::fs::write(mesh.ma.join("Docs/big.bin"), &big).unwrap();
    assert!(mesh.a.uploaded_within(Duration::from_secs(180)));
    let on_b = mesh.mb.join("Docs/many");
    assert!(eventually(Duration::from_secs(30), || names(&on_b).len() == 1000));

    for cmd in [
        vec!["ls", "-lR"],
        vec!["find", ".", "-type", "f", "-size", "+1k"],
        vec!["du", "-s", "."],
        vec!["stat", "f0001.txt", "f0999.txt"],
        // What a GIO file manager (Nautilus) asks of each file of a folder it opens.
        vec![
            "gio",
            "list",
            "-a",
            "standard::*,access::*,mountable::*,time::*,unix::*,owner::*,selinux::*,\
             thumbnail::*,id::filesystem,trash::orig-path,trash::deletion-date,metadata::*",
            ".",
        ],
    ] {
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .current_dir(&on_b)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Extended attributes other than the mount's own have no value.
    let out = Command::new("python3")
        .args(["-c", "import os,sys\ntry:\n os.getxattr(sys.argv[1], 'user.x')\nexcept OSError as e:\n print(e.errno)"])
        .arg(on_b.join("f0001.txt"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        libc::ENODATA.to_string()
    );
    // getfattr over every file shows each one's state, and fetches nothing.
    let out = Command::new("getfattr")
        .args(["-d", "-m", "-", "-R", "."])
        .current_dir(&on_b)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.matches("user.meshfs.state=\"remote-only\"").count() >= 1000,
        "getfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mesh.b.fresh_status().counters.bytes_fetched,
        0,
        "metadata access pulled content"
    );

    // 1,000 random 4 KiB reads of a 1 GiB file not on the device.
    let f = std::fs::File::open(mesh.mb.join("Docs/big.bin")).unwrap();
    let mut blocks = std::collections::BTreeSet::new();
    for (i, chunk) in pseudo_random(1000 * 8, 9).chunks(8).enumerate() {
        let off =
            (u64::from_le_bytes(chunk.try_into().unwrap()) % (big.len() as u64 - 4096)) & !4095;
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == big[off as usize..off as usize + 4096],
            "read {i} at {off}"
        );
        blocks.insert(off / MIB as u64);
    }
    let fetched = mesh.b.fresh_status().counters.blocks_fetched;
    assert!(
        fetched <= blocks.len() as u64,
        "{fetched} blocks fetched for {} distinct blocks read",
        blocks.len()
    );

    // A read-only mmap of a file not on the device sees the right bytes.
    std::fs::write(mesh.ma.join("Docs/mapped.bin"), &big[..8 * MIB]).unwrap();
    assert!(mesh.a_uploaded());
    let path = mesh.mb.join("Docs/mapped.bin");
    assert!(eventually(SOON, || path.exists()));
    let out = Command::new("python3")
        .args(["-c", "import hashlib,mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)\nprint(hashlib.sha256(m).hexdigest())"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(&big[..8 * MIB]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
}

#[test]
fn offline_the_agent_starts_reads_what_it_has_fails_fast_and_queues_writes() {
    let mut mesh = Mesh::new();
    let here = pseudo_random(3 * MIB, 1);
    let away = pseudo_random(3 * MIB, 2);
    std::fs::write(mesh.ma.join("Docs/here.bin"), &here).unwrap();
    std::fs::write(mesh.ma.join("Docs/away.bin"), &away).unwrap();
    assert!(mesh.a_uploaded());
    assert!(eventually(SOON, || std::fs::read(
        mesh.mb.join("Docs/here.bin")
    )
    .is_ok_and(|d| d == here)));

    // The cloud goes away; B's agent restarts without it.
    mesh.cloud.kill();
    mesh.mb.stop();
    let started = Instant::now();
    mesh.mb.restart();
    let mount_time = started.elapsed();
    assert!(
        // The bound is 5 s; the test allows for a loaded CI machine and only rules
        // out waiting on the network. The measured time is printed.
        mount_time < Duration::from_secs(20),
        "mounting offline took {mount_time:?}"
    );
    assert_eq!(std::fs::read(mesh.mb.join("Docs/here.bin")).unwrap(), here);

    let started = Instant::now();
    let err =
        std::fs::read(mesh.mb.join("Docs/away.bin")).expect_err("no one has these blocks now");
    let failed_after = started.elapsed();
    println!("offline: mounted in {mount_time:?}, a missing block failed in {failed_after:?}");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO | libc::ENOTCONN)),
        "{err}"
    );
    assert!(
        // 2 s in the issue; see above.
        failed_after < Duration::from_secs(10),
        "an offline read took {failed_after:?} to fail"
    );

    std::fs::write(mesh.mb.join("Docs/written-offline.txt"), b"queued").unwrap();
    assert!(
        mesh.b.reports(SOON, |s| s.pending_uploads > 0),
        "the write offline is not queued: {:?}",
        mesh.b.status()
    );

    mesh.cloud.restart();
    let arrived = eventually(Duration::from_secs(60), || {
        std::fs::read(mesh.ma.join("Docs/written-offline.txt")).is_ok_and(|d| d == b"queued")
    });
    assert!(
        arrived,
        "the queued write did not reach A: {}",
        mesh.mb.log_text()
    );
}

#[test]
fn a_killed_agent_leaves_no_dead_mount_and_blocked_readers_get_an_error() {
    let mut mesh = Mesh::new();
    let data = pseudo_random(8 * MIB, 4);
    std::fs::write(mesh.ma.join("Docs/slow.bin"), &data).unwrap();
    assert!(mesh.a_uploaded());
    let path = mesh.mb.join("Docs/slow.bin");
    assert!(eventually(SOON, || path.exists()));

    // A reader blocks on a fetch from a frozen cloud; then B's agent is killed.
    mesh.cloud.pause();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tid_tx.send(thread_id());
        std::fs::read(path)
    });
    let tid = tid_rx.recv().expect("the reader's thread id");
    assert!(
        eventually(SOON, || blocked_on_a_file(tid)),
        "the reader never blocked"
    );
    mesh.mb.kill9();
    let started = Instant::now();
    let result = reader.join().unwrap();
    assert!(result.is_err(), "a read through a dead agent returned data");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the blocked reader waited {:?}",
        started.elapsed()
    );
    mesh.cloud.resume();
    assert!(
        eventually(SOON, || !is_mounted(&mesh.mb.path)),
        "a dead mount was left behind"
    );

    // Even when both watchers die too (fusermount's and the agent's own, `meshfs
    // watch-mount`), a new agent clears the stale mount itself.
    mesh.mb.restart();
    for watcher in ["fusermount3", "meshfs watch-mount"] {
        let pattern = format!("{watcher}.*{}", mesh.mb.path.display());
        let killed = Command::new("pkill")
            .args(["-KILL", "-f", &pattern])
            .status()
            .unwrap();
        assert!(killed.success(), "no watcher for {pattern}");
    }
    mesh.mb.kill9();
    // Attributes may still answer from the kernel's cache; opening the directory must ask.
    let stale = || {
        std::fs::read_dir(&mesh.mb.path)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    };
    assert!(
        eventually(SOON, stale),
        "with no watcher left, the mount should be a stale one"
    );
    mesh.mb.restart();
    assert_eq!(std::fs::read(mesh.mb.join("Docs/slow.bin")).unwrap(), data);

    // SIGTERM with a file open still unmounts cleanly.
    let open = std::fs::File::open(mesh.mb.join("Docs/slow.bin")).unwrap();
    let status = mesh.mb.stop().expect("the agent was running");
    assert!(status.success(), "agent exit: {status:?}");
    assert!(!is_mounted(&mesh.mb.path));
    drop(open);
}

#[test]
fn a_reader_holding_a_file_open_sees_changes_made_on_the_other_device() {
    let mesh = Mesh::new();
    std::fs::write(mesh.ma.join("Docs/live.txt"), b"first version").unwrap();
    let path = mesh.mb.join("Docs/live.txt");
    assert!(eventually(SOON, || std::fs::read(&path)
        .is_ok_and(|d| d == b"first version")));
    let mut held = std::fs::File::open(&path).unwrap();
    let mut buf = String::new();
    held.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "first version");

    std::fs::write(mesh.ma.join("Docs/live.txt"), b"second version!").unwrap();
    let fresh = eventually(Duration::from_secs(5), || {
        let mut buf = String::new();
        held.seek(SeekFrom::Start(0)).is_ok()
            && held.read_to_string(&mut buf).is_ok()
            && buf == "second version!"
    });
    assert!(fresh, "the open file kept stale pages");
}

#[test]
/// Renaming a 1 GiB file and a folder of 10,000 files moves no content; changing 1 MiB in
/// the middle of the 1 GiB file uploads at most two blocks.
fn renames_and_small_edits_of_big_files_move_almost_nothing() {
    let mesh = Mesh::new();
    let big = pseudo_random(1024 * MIB, 77);
    std::fs::write(mesh.ma.join("Docs/huge.bin"), &big).unwrap();
    std::fs::create_dir(mesh.ma.join("Docs/tree")).unwrap();
    for i in 0..10_000 {
        std::fs::write(
            mesh.ma.join(&format!("Docs/tree/f{i}")),
            pseudo_random(1000, i % 16),
        )
        .unwrap();
    }
    assert!(mesh.a.uploaded_within(Duration::from_secs(300)));
    assert!(eventually(Duration::from_secs(120), || names(
        &mesh.mb.join("Docs/tree")
    )
    .len()
        == 10_000));
    let counters = |d: &common::Device| d.fresh_status().counters;
    let (a0, b0) = (counters(&mesh.a), counters(&mesh.b));

    std::fs::rename(
        mesh.ma.join("Docs/huge.bin"),
        mesh.ma.join("Docs/renamed.bin"),
    )
    .unwrap();
    std::fs::rename(mesh.ma.join("Docs/tree"), mesh.ma.join("Docs/moved-tree")).unwrap();
    assert!(mesh.a_uploaded());
    assert!(eventually(SOON, || mesh
        .mb
        .join("Docs/renamed.bin")
        .exists()
        && mesh.mb.join("Docs/moved-tree/f9999").exists()));
    let (a1, b1) = (counters(&mesh.a), counters(&mesh.b));
    assert_eq!(
        a1.bytes_uploaded, a0.bytes_uploaded,
        "renames uploaded content"
    );
    assert_eq!(
        b1.bytes_fetched, b0.bytes_fetched,
        "renames fetched content"
    );

    // 1 MiB changed in the middle of the 1 GiB file: at most two blocks go up.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(mesh.ma.join("Docs/renamed.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(512 * MIB as u64 + 4096)).unwrap();
    f.write_all(&pseudo_random(MIB, 5)).unwrap();
    drop(f);
    assert!(mesh.a_uploaded());
    let a2 = counters(&mesh.a);
    let sent = a2.blocks_uploaded - a1.blocks_uploaded;
    assert!(
        (1..=2).contains(&sent),
        "a 1 MiB change uploaded {sent} blocks"
    );
    println!(
        "agent A peak RSS after 1 GiB written, renamed, edited: {} KiB",
        mesh.ma.peak_rss_kib().unwrap_or(0)
    );
}

/// A tree of 100,000 entries (a folder of 10,000 files, and 90 folders of 1,000 symlinks
/// each) lists on the other device: `ls -l` of the 10,000-file folder and `find` of all.
/// After B's agent restarts with the cloud frozen (any request to it would hang), it
/// mounts and `find` lists everything from the persisted metadata, and `stat` of one path
/// lists no directory.
#[test]
fn a_hundred_thousand_entries_list_on_the_other_device_and_after_a_restart_with_the_cloud_frozen() {
    let mut mesh = Mesh::new();
    let root = mesh.ma.join("Docs/big-dir");
    std::fs::create_dir(&root).unwrap();
    let started = Instant::now();
    let flat = root.join("flat");
    std::fs::create_dir(&flat).unwrap();
    for i in 0..10_000 {
        std::fs::write(flat.join(format!("f{i:05}")), b"x").unwrap();
    }
    for d in 0..90 {
        let dir = root.join(format!("links{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            std::os::unix::fs::symlink("../flat/f00000", dir.join(format!("l{i:04}"))).unwrap();
        }
    }
    let written = started.elapsed();
    assert!(
        mesh.a.uploaded_within(Duration::from_secs(600)),
        "A did not upload 100,000 entries"
    );
    println!(
        "100,091 entries: written on A in {written:?}, uploaded {:?} after the start",
        started.elapsed()
    );
    let on_b = mesh.mb.join("Docs/big-dir");
    let count = |dir: &std::path::Path| {
        let out = Command::new("find")
            .arg(dir)
            .arg("-mindepth")
            .arg("1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        eventually(Duration::from_secs(300), || count(&on_b) == 100_091),
        "B lists {}",
        count(&on_b)
    );
    println!("B lists them {:?} after the start", started.elapsed());
    let out = Command::new("ls")
        .arg("-l")
        .arg(on_b.join("flat"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('-'))
            .count(),
        10_000
    );

    // With the cloud frozen, a restarted agent mounts and serves the whole tree from its
    // own metadata: a blocking request to the cloud would hang this.
    mesh.mb.stop();
    mesh.cloud.pause();
    let restarted = Instant::now();
    mesh.mb.restart();
    // First one path, while the kernel knows nothing of the tree: its attributes come from
    // its own keys in the metadata, and no directory is listed on the way.
    let before = mesh.b.fresh_status().counters.dirs_listed;
    assert!(std::fs::symlink_metadata(mesh.mb.join("Docs/big-dir/links44/l0777")).is_ok());
    assert!(std::fs::metadata(mesh.mb.join("Docs/big-dir/flat/f05000")).is_ok());
    let after = mesh.b.fresh_status().counters.dirs_listed;
    assert_eq!(after, before, "a stat listed a directory");
    let counted = count(&mesh.mb.join("Docs/big-dir"));
    let listed_in = restarted.elapsed();
    assert_eq!(counted, 100_091);
    println!("with the cloud frozen: mounted, stat, and listed 100,091 entries in {listed_in:?}");
    // The agent writes its status file once a second.
    let listed = || mesh.b.status().expect("status").counters.dirs_listed;
    assert!(
        eventually(Duration::from_secs(5), || listed() >= after + 92),
        "find's listings are counted ({})",
        listed()
    );
    mesh.cloud.resume();
}

/// A 4 GiB file written on A and read on B (a device-only folder: B reads it from A) keeps
/// both agents' memory bounded: neither holds the file, only blocks in flight.
#[test]
#[ignore = "five minutes here; run with --ignored (peak RSS figures in the output)"]
fn writing_and_reading_four_gib_keeps_both_agents_memory_bounded() {
    use sha2::Digest;
    const SIZE: usize = 4096 * MIB;
    let cloud = common::Cloud::start();
    cloud.add_user("ann");
    let a = common::Device::login(&cloud, "ann", "laptop");
    let b = common::Device::login(&cloud, "ann", "desktop");
    a.cli_ok(&["folder", "create", "Private", "--device-only"]);
    let (ma, mb) = (a.mount(), b.mount());
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Private")
        .is_dir()
        && mb.join("Private").is_dir()));
    let started = Instant::now();
    let mut want = sha2::Sha256::new();
    {
        let mut f = std::fs::File::create(ma.join("Private/four.bin")).unwrap();
        for i in 0..(SIZE / (64 * MIB)) {
            let chunk = pseudo_random(64 * MIB, 1000 + i as u64);
            want.update(&chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    let want: [u8; 32] = want.finalize().into();
    let written = started.elapsed();
    let on_b = mb.join("Private/four.bin");
    assert!(eventually(Duration::from_secs(60), || std::fs::metadata(
        &on_b
    )
    .is_ok_and(|m| m.len() == SIZE as u64)));
    let mut got = sha2::Sha256::new();
    let mut f = std::fs::File::open(&on_b).unwrap();
    let mut buf = vec![0u8; 4 * MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
    }
    let got: [u8; 32] = got.finalize().into();
    assert_eq!(got, want, "B read A's 4 GiB");
    let (rss_a, rss_b) = (
        ma.peak_rss_kib().unwrap_or(0),
        mb.peak_rss_kib().unwrap_or(0),
    );
    println!(
        "4 GiB: written on A in {written:?}, read on B after {:?}; peak RSS A {} MiB, B {} MiB",
        started.elapsed(),
        rss_a / 1024,
        rss_b / 1024
    );
    // Bounded, and far below the file: blocks in flight, the 32 hot blocks, caches.
    for (who, kib) in [("A", rss_a), ("B", rss_b)] {
        assert!(
            kib > 0 && kib < 512 * 1024,
            "agent {who} peaked at {kib} KiB"
        );
    }
    drop((ma, mb));
}
