//! The mount holds up when things go wrong or get big: a lost cache is not a mass deletion,
//! metadata never pulls content, the cloud can vanish and come back, a killed agent leaves
//! no dead mount, and renames or small edits of big files move almost nothing.

mod common;

use common::{Mesh, eventually, is_mounted, pseudo_random};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().into_string().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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
    // Nothing was deleted anywhere.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&mesh.mb.join("Docs/keep")).len(), 20);
    assert_eq!(mesh.a.status().unwrap().pending_uploads, 0);
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
    std::thread::sleep(Duration::from_secs(2));
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
    let big = pseudo_random(256 * MIB, 42);
    std::fs::write(mesh.ma.join("Docs/big.bin"), &big).unwrap();
    assert!(mesh.a_uploaded());
    let on_b = mesh.mb.join("Docs/many");
    assert!(eventually(Duration::from_secs(30), || names(&on_b).len() == 1000));

    for cmd in [
        vec!["ls", "-lR"],
        vec!["find", ".", "-type", "f", "-size", "+1k"],
        vec!["du", "-s", "."],
        vec!["stat", "f0001.txt", "f0999.txt"],
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
    // getxattr answers at once that the mesh keeps no extended attributes.
    let out = Command::new("python3")
        .args(["-c", "import os,sys\ntry:\n os.getxattr(sys.argv[1], 'user.x')\nexcept OSError as e:\n print(e.errno)"])
        .arg(on_b.join("f0001.txt"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        libc::EOPNOTSUPP.to_string()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mesh.b.status().unwrap().counters.bytes_fetched,
        0,
        "metadata access pulled content"
    );

    // 200 random 4 KiB reads of a file not on the device.
    let f = std::fs::File::open(mesh.mb.join("Docs/big.bin")).unwrap();
    let mut blocks = std::collections::BTreeSet::new();
    for (i, chunk) in pseudo_random(200 * 8, 9).chunks(8).enumerate() {
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
    std::thread::sleep(Duration::from_millis(1500));
    let fetched = mesh.b.status().unwrap().counters.blocks_fetched;
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
    std::thread::sleep(Duration::from_secs(1));
    assert!(mesh.b.status().unwrap().pending_uploads > 0);

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
    let reader = std::thread::spawn(move || std::fs::read(path));
    std::thread::sleep(Duration::from_millis(500));
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

    // Even when fusermount's watcher dies too, a new agent clears the stale mount itself.
    mesh.mb.restart();
    let pattern = format!("fusermount3.*{}", mesh.mb.path.display());
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", &pattern])
        .status()
        .unwrap();
    assert!(killed.success(), "no fusermount3 watcher for {pattern}");
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
fn renames_and_small_edits_of_big_files_move_almost_nothing() {
    let mesh = Mesh::new();
    let big = pseudo_random(1024 * MIB, 77);
    std::fs::write(mesh.ma.join("Docs/huge.bin"), &big).unwrap();
    std::fs::create_dir(mesh.ma.join("Docs/tree")).unwrap();
    for i in 0..2000 {
        std::fs::write(
            mesh.ma.join(&format!("Docs/tree/f{i}")),
            pseudo_random(1000, i),
        )
        .unwrap();
    }
    assert!(mesh.a_uploaded());
    assert!(eventually(Duration::from_secs(60), || names(
        &mesh.mb.join("Docs/tree")
    )
    .len()
        == 2000));
    let counters = |d: &common::Device| {
        std::thread::sleep(Duration::from_millis(1200));
        d.status().unwrap().counters
    };
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
        && mesh.mb.join("Docs/moved-tree/f1999").exists()));
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

#[test]
fn ten_thousand_entries_list_on_the_other_device_and_after_a_restart_without_the_cloud() {
    let mut mesh = Mesh::new();
    let root = mesh.ma.join("Docs/big-dir");
    std::fs::create_dir(&root).unwrap();
    for d in 0..10 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            std::fs::write(dir.join(format!("f{i:04}")), b"x").unwrap();
        }
    }
    assert!(
        mesh.a.uploaded_within(Duration::from_secs(300)),
        "A did not upload 10,000 files"
    );
    let on_b = mesh.mb.join("Docs/big-dir");
    let count = |dir: &std::path::Path| {
        let out = Command::new("find")
            .arg(dir)
            .args(["-type", "f"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        eventually(Duration::from_secs(60), || count(&on_b) == 10_000),
        "B lists {}",
        count(&on_b)
    );
    let out = Command::new("ls")
        .arg("-l")
        .arg(on_b.join("d7"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('-'))
            .count(),
        1000
    );

    // With the cloud gone, a restarted agent serves the whole tree from its own metadata.
    mesh.cloud.kill();
    mesh.mb.stop();
    mesh.mb.restart();
    assert_eq!(count(&mesh.mb.join("Docs/big-dir")), 10_000);
    // One path's attributes come from the persisted metadata too.
    assert!(std::fs::metadata(mesh.mb.join("Docs/big-dir/d3/f0999")).is_ok());
}
