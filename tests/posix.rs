//! File operations through a real mount arrive on the other device with the same meaning,
//! and operations the mesh cannot represent fail with a clear errno instead of a false
//! success.

mod common;

use common::{Mesh, SOON, eventually, names};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

#[test]
fn truncate_chmod_utimens_and_symlinks_arrive_on_the_other_device() {
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    let path = a.join("Docs/t.bin");
    std::fs::write(&path, vec![7u8; 3 << 20]).unwrap();

    // Shrink through an open descriptor, then grow sparse by path.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    assert!(eventually(SOON, || std::fs::read(b.join("Docs/t.bin"))
        .is_ok_and(|d| d == vec![7u8; 1000])));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(5000)
        .unwrap();
    let mut want = vec![7u8; 1000];
    want.resize(5000, 0);
    assert!(
        eventually(SOON, || std::fs::read(b.join("Docs/t.bin"))
            .is_ok_and(|d| d == want)),
        "grown file"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o751)).unwrap();
    assert!(
        eventually(SOON, || std::fs::metadata(b.join("Docs/t.bin"))
            .is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o751)),
        "chmod"
    );

    let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert!(
        eventually(SOON, || std::fs::metadata(b.join("Docs/t.bin"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t == when)),
        "utimens"
    );

    std::os::unix::fs::symlink("t.bin", a.join("Docs/link")).unwrap();
    assert!(
        eventually(SOON, || std::fs::read_link(b.join("Docs/link"))
            .is_ok_and(|t| t.to_str() == Some("t.bin"))),
        "symlink"
    );
    assert_eq!(std::fs::read(b.join("Docs/link")).unwrap(), want);
}

#[test]
fn rename_over_an_existing_file_replaces_it_everywhere() {
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    std::fs::write(a.join("Docs/doc.txt"), b"old").unwrap();
    std::fs::write(a.join("Docs/doc.txt.tmp"), b"new content").unwrap();
    std::fs::rename(a.join("Docs/doc.txt.tmp"), a.join("Docs/doc.txt")).unwrap();
    assert_eq!(
        std::fs::read(a.join("Docs/doc.txt")).unwrap(),
        b"new content"
    );
    assert!(eventually(SOON, || std::fs::read(b.join("Docs/doc.txt"))
        .is_ok_and(|d| d == b"new content")));
    assert!(!b.join("Docs/doc.txt.tmp").exists());
    assert_eq!(names(&b.join("Docs")), ["doc.txt"]);
}

#[test]
fn swapping_two_names_through_a_temporary_replays_in_order() {
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    std::fs::write(a.join("Docs/left"), b"L").unwrap();
    std::fs::write(a.join("Docs/right"), b"R").unwrap();
    std::fs::rename(a.join("Docs/left"), a.join("Docs/tmp")).unwrap();
    std::fs::rename(a.join("Docs/right"), a.join("Docs/left")).unwrap();
    std::fs::rename(a.join("Docs/tmp"), a.join("Docs/right")).unwrap();
    assert!(mesh.a_uploaded());
    let swapped = || {
        std::fs::read(b.join("Docs/left")).is_ok_and(|d| d == b"R")
            && std::fs::read(b.join("Docs/right")).is_ok_and(|d| d == b"L")
            && !b.join("Docs/tmp").exists()
    };
    assert!(eventually(SOON, swapped), "{}", a.log_text());
    assert_eq!(mesh.a.status().unwrap().counters.conflicts, 0);
}

#[test]
fn an_unlinked_file_stays_readable_through_an_open_descriptor() {
    use std::io::{Read, Seek, SeekFrom};
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    let data = common::pseudo_random(2 << 20, 3);
    std::fs::write(a.join("Docs/doomed.bin"), &data).unwrap();
    assert!(eventually(SOON, || b.join("Docs/doomed.bin").exists()));

    let mut on_a = std::fs::File::open(a.join("Docs/doomed.bin")).unwrap();
    let mut on_b = std::fs::File::open(b.join("Docs/doomed.bin")).unwrap();
    std::fs::remove_file(a.join("Docs/doomed.bin")).unwrap();
    assert!(mesh.a_uploaded());
    assert!(
        eventually(SOON, || !b.join("Docs/doomed.bin").exists()),
        "the unlink did not arrive"
    );

    for (device, f) in [("A", &mut on_a), ("B", &mut on_b)] {
        let mut got = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut got).unwrap();
        assert!(
            got == data,
            "an open descriptor on {device} lost the unlinked file's content: {} of {} bytes, first difference at {:?}",
            got.len(),
            data.len(),
            got.iter().zip(&data).position(|(x, y)| x != y)
        );
    }
}

#[test]
fn renameat2_noreplace_refuses_and_exchange_is_refused_cleanly() {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    let mesh = Mesh::new();
    let a = &mesh.ma;
    std::fs::write(a.join("Docs/x"), b"x").unwrap();
    std::fs::write(a.join("Docs/y"), b"y").unwrap();
    let e = renameat_with(
        CWD,
        a.join("Docs/x"),
        CWD,
        a.join("Docs/y"),
        RenameFlags::NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), libc::EEXIST);
    renameat_with(
        CWD,
        a.join("Docs/x"),
        CWD,
        a.join("Docs/z"),
        RenameFlags::NOREPLACE,
    )
    .unwrap();
    match renameat_with(
        CWD,
        a.join("Docs/z"),
        CWD,
        a.join("Docs/y"),
        RenameFlags::EXCHANGE,
    ) {
        Ok(()) => {
            assert_eq!(std::fs::read(a.join("Docs/z")).unwrap(), b"y");
            assert_eq!(std::fs::read(a.join("Docs/y")).unwrap(), b"x");
        }
        Err(e) => {
            assert_eq!(e.raw_os_error(), libc::EINVAL);
            assert_eq!(std::fs::read(a.join("Docs/z")).unwrap(), b"x");
            assert_eq!(std::fs::read(a.join("Docs/y")).unwrap(), b"y");
        }
    }
    std::fs::create_dir_all(a.join("Docs/full/inner")).unwrap();
    std::fs::create_dir(a.join("Docs/empty")).unwrap();
    let e = std::fs::rename(a.join("Docs/empty"), a.join("Docs/full")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
}

#[test]
fn a_rename_over_a_file_is_atomic_for_a_concurrent_reader() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mesh = Mesh::new();
    let target = mesh.ma.join("Docs/current");
    let (old, new) = (vec![b'o'; 64 * 1024], vec![b'n'; 64 * 1024]);
    std::fs::write(&target, &old).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, target, old, new) = (stop.clone(), target.clone(), old.clone(), new.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = match std::fs::read(&target) {
                    Ok(g) => g,
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        panic!("a reader saw the name missing: {e}");
                    }
                };
                assert!(
                    got == old || got == new,
                    "a reader saw a mix of {} bytes",
                    got.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..50 {
        let tmp = mesh.ma.join(&format!("Docs/tmp-{i}"));
        std::fs::write(&tmp, if i % 2 == 0 { &new } else { &old }).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join();
    let log = mesh.ma.log_text();
    let tail: Vec<&str> = log.lines().rev().take(200).collect();
    assert!(
        reads.is_ok_and(|n| n > 0),
        "agent log (newest first):\n{}",
        tail.join("\n")
    );
}

#[test]
fn seek_writes_appends_sparse_files_and_editor_saves_keep_their_bytes() {
    use std::io::{Seek, SeekFrom, Write};
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);

    // O_RDWR with seek-and-write, then O_APPEND.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(a.join("Docs/rw"))
        .unwrap();
    f.write_all(b"hello world").unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD").unwrap();
    drop(f);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("Docs/rw"))
        .unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    assert_eq!(std::fs::read(a.join("Docs/rw")).unwrap(), b"hello WORLD!!");

    // A sparse file: a hole reads as zeros, on both devices.
    let f = std::fs::File::create(a.join("Docs/sparse")).unwrap();
    f.write_all_at(b"end", 5 * 1024 * 1024).unwrap();
    drop(f);
    let mut want = vec![0u8; 5 * 1024 * 1024];
    want.extend_from_slice(b"end");

    // Save as an editor does: write a temporary, fsync it, rename it over the original.
    std::fs::write(a.join("Docs/doc.txt"), b"draft 1").unwrap();
    let mut tmp = std::fs::File::create(a.join("Docs/.doc.txt.swp")).unwrap();
    tmp.write_all(b"draft 2").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    std::fs::rename(a.join("Docs/.doc.txt.swp"), a.join("Docs/doc.txt")).unwrap();
    // vim with backupcopy=yes: copy to a backup, then overwrite the original in place.
    std::fs::copy(a.join("Docs/doc.txt"), a.join("Docs/doc.txt~")).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(a.join("Docs/doc.txt"))
        .unwrap();
    f.write_all(b"draft 3").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::remove_file(a.join("Docs/doc.txt~")).unwrap();
    // vim with backupcopy=no: rename the original to a backup, write a new file.
    std::fs::rename(a.join("Docs/doc.txt"), a.join("Docs/doc.txt~")).unwrap();
    std::fs::write(a.join("Docs/doc.txt"), b"draft 4").unwrap();
    std::fs::remove_file(a.join("Docs/doc.txt~")).unwrap();
    assert_eq!(std::fs::read(a.join("Docs/doc.txt")).unwrap(), b"draft 4");

    assert!(mesh.a_uploaded());
    let arrived = eventually(SOON, || {
        std::fs::read(b.join("Docs/rw")).is_ok_and(|d| d == b"hello WORLD!!")
            && std::fs::read(b.join("Docs/sparse")).is_ok_and(|d| d == want)
            && std::fs::read(b.join("Docs/doc.txt")).is_ok_and(|d| d == b"draft 4")
    });
    assert!(arrived, "B sees: {:?}", names(&b.join("Docs")));
    assert!(!b.join("Docs/doc.txt~").exists() && !b.join("Docs/.doc.txt.swp").exists());
}

#[test]
fn a_lock_file_uploaded_then_renamed_and_replaced_offline_leaves_no_stale_lock() {
    // git's pattern: write index.lock, rename it over index. Here the first lock reaches the
    // cloud under its lock name, and both renames happen before the cloud hears of them.
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    std::fs::write(a.join("Docs/index"), b"index 0").unwrap();
    std::fs::write(a.join("Docs/index.lock"), b"index 1").unwrap();
    assert!(mesh.a_uploaded());
    mesh.cloud.pause();
    std::fs::rename(a.join("Docs/index.lock"), a.join("Docs/index")).unwrap();
    std::fs::write(a.join("Docs/index.lock"), b"index 2").unwrap();
    std::fs::rename(a.join("Docs/index.lock"), a.join("Docs/index")).unwrap();
    mesh.cloud.resume();
    assert!(mesh.a_uploaded());
    let settled = eventually(SOON, || {
        std::fs::read(b.join("Docs/index")).is_ok_and(|d| d == b"index 2")
            && !b.join("Docs/index.lock").exists()
    });
    assert!(settled, "B shows {:?}", names(&b.join("Docs")));
}

#[test]
fn unsupported_and_invalid_operations_fail_with_clear_errnos() {
    let mesh = Mesh::new();
    let a = &mesh.ma;
    std::fs::write(a.join("Docs/f"), b"x").unwrap();
    std::fs::create_dir(a.join("Docs/d")).unwrap();
    std::fs::write(a.join("Docs/d/inner"), b"y").unwrap();

    let e = std::fs::hard_link(a.join("Docs/f"), a.join("Docs/f2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "hard link: {e}");
    let fifo = std::process::Command::new("mkfifo")
        .arg(a.join("Docs/pipe"))
        .output()
        .unwrap();
    assert!(!fifo.status.success(), "mkfifo must fail");
    assert!(!a.join("Docs/pipe").exists());

    let e = std::fs::remove_dir(a.join("Docs/d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
    let e = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(a.join("Docs/f"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    let e = std::fs::rename(a.join("Docs/d"), a.join("Docs/d/inner/x")).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTDIR)),
        "{e}"
    );
    let e = std::fs::create_dir(a.join("NotAFolder")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    // Nothing of the refused operations reached the other device.
    assert!(mesh.a_uploaded());
    assert_eq!(names(&mesh.mb.join("Docs")), ["d", "f"]);
}

#[test]
fn concurrent_edits_of_one_file_keep_both_versions_as_a_conflict_copy() {
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    std::fs::write(a.join("Docs/shared.txt"), b"base").unwrap();
    assert!(eventually(SOON, || std::fs::read(
        b.join("Docs/shared.txt")
    )
    .is_ok_and(|d| d == b"base")));
    assert!(mesh.b.uploaded());

    // Both devices edit while the cloud is unreachable; then it comes back.
    mesh.cloud.pause();
    std::fs::write(a.join("Docs/shared.txt"), b"from laptop").unwrap();
    std::fs::write(b.join("Docs/shared.txt"), b"from desktop").unwrap();
    mesh.cloud.resume();
    assert!(mesh.a_uploaded() && mesh.b.uploaded());

    let contents = |m: &common::Mount| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(m.join("Docs"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        (
                            e.file_name().into_string().unwrap(),
                            std::fs::read(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let settled = eventually(Duration::from_secs(20), || {
        let (ca, cb) = (contents(a), contents(b));
        ca.len() == 2 && ca == cb
    });
    let (ca, cb) = (contents(a), contents(b));
    assert!(settled, "devices disagree: {ca:?} vs {cb:?}");
    let bodies: Vec<&[u8]> = ca.iter().map(|(_, d)| d.as_slice()).collect();
    assert!(
        bodies.contains(&&b"from laptop"[..]) && bodies.contains(&&b"from desktop"[..]),
        "{ca:?}"
    );
    assert!(ca.iter().any(|(n, _)| n == "shared.txt"));
    assert!(
        ca.iter()
            .any(|(n, _)| n.starts_with("shared (conflict ") && n.ends_with(".txt")),
        "{ca:?}"
    );
}
