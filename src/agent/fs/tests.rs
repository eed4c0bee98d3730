//! `Fs` without FUSE: every operation driven directly over a cache in a temporary
//! directory, with blocks from an in-memory cloud (and lying or absent sources).

use super::*;
use crate::agent::cache::ROOT;
use crate::agent::fetch::{BlockSource, SourceError, Want};
use crate::agent::fs::{FileState, OnDevice, PinRound};
use crate::agent::remote::memory::{Call, Failure};
use crate::agent::testkit::{OWNER, TestDevice, one_device, second_device};
use crate::proto::{BLOCK_SIZE, EntryKind, ErrorCode};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Pseudo-random bytes (xorshift), different for each seed.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A moment later than `t` (nanoseconds since the epoch), by the clock.
fn after(t: i64) {
    while crate::proto::now_ns() <= t {
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn a_written_file_reads_back_and_stats_its_size() {
    let (_c, _f, a) = one_device().await;
    let data = bytes(3 * BLOCK_SIZE as usize + 17, 1);
    a.write("Docs/f", &data).await.unwrap();
    assert_eq!(a.read("Docs/f").await.unwrap(), data);
    let st = a.stat("Docs/f").unwrap();
    assert_eq!(
        (st.size, st.kind, st.nlink),
        (data.len() as u64, EntryKind::File, 1)
    );
    assert_eq!((st.uid, st.gid), (OWNER.uid, OWNER.gid));
    assert_eq!(st.blocks, (data.len() as u64).div_ceil(512));
}

/// The model test's shrunk failure: pwrite(2) of nothing changes nothing, even past the
/// end, on a plain device and on a protected one (sealed staging files).
#[tokio::test]
async fn a_write_of_nothing_past_the_end_leaves_the_file_as_it_was() {
    let (cloud, _f, plain) = one_device().await;
    let sealed = TestDevice::sealed(&cloud, "ann", "dev-p");
    sealed.sync().await;
    for (d, name) in [(&plain, "Docs/plain"), (&sealed, "Docs/sealed")] {
        d.write(name, b"").await.unwrap();
        d.write_at(name, 1, b"").await.unwrap();
        assert_eq!(d.stat(name).unwrap().size, 0, "{name}");
        assert_eq!(d.read(name).await.unwrap(), b"", "{name}");
        d.write_at(name, 0, b"xy").await.unwrap();
        d.write_at(name, 9, b"").await.unwrap();
        assert_eq!(d.read(name).await.unwrap(), b"xy", "{name}");
    }
}

#[tokio::test]
async fn directories_list_their_entries_in_name_order_and_rmdir_wants_them_empty() {
    let (_c, _f, a) = one_device().await;
    a.mkdir("Docs/d").unwrap();
    a.write("Docs/d/b", b"b").await.unwrap();
    a.write("Docs/d/a", b"a").await.unwrap();
    assert_eq!(a.list("Docs/d").unwrap(), ["a", "b"]);
    assert!(matches!(a.rmdir("Docs/d"), Err(FsError::NotEmpty)));
    assert!(matches!(a.rmdir("Docs/d/a"), Err(FsError::NotDir)));
    assert!(matches!(a.unlink("Docs/d"), Err(FsError::IsDir)));
    a.unlink("Docs/d/a").unwrap();
    a.unlink("Docs/d/b").unwrap();
    a.rmdir("Docs/d").unwrap();
    assert!(matches!(a.ino("Docs/d"), Err(FsError::NotFound)));
}

#[tokio::test]
async fn names_longer_than_255_bytes_get_enametoolong_on_every_operation() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/short", b"x").await.unwrap();
    a.mkdir("Docs/dir").unwrap();
    let docs = a.ino("Docs").unwrap();
    let short = a.ino("Docs/short").unwrap();
    let long = "n".repeat(256);
    let fits = "n".repeat(255);
    let too_long =
        |r: Result<(), FsError>| assert!(matches!(r, Err(FsError::NameTooLong)), "{r:?}");
    too_long(a.fs.lookup(docs, &long).map(drop));
    too_long(a.fs.create(docs, &long, 0o644).await.map(drop));
    too_long(a.fs.mkdir(docs, &long, 0o755).map(drop));
    too_long(a.fs.symlink(docs, &long, "t").map(drop));
    too_long(a.fs.unlink(docs, &long));
    too_long(a.fs.rmdir(docs, &long));
    too_long(a.fs.rename(docs, &long, docs, "x", false));
    too_long(a.fs.rename(docs, "short", docs, &long, false));
    too_long(a.fs.link(short, docs, &long).map(drop));
    // 255 bytes is a name like any other.
    a.write(&format!("Docs/{fits}"), b"ok").await.unwrap();
    assert_eq!(a.read(&format!("Docs/{fits}")).await.unwrap(), b"ok");
}

#[tokio::test]
async fn names_that_are_not_one_path_component_are_refused() {
    let (_c, _f, a) = one_device().await;
    let docs = a.ino("Docs").unwrap();
    // Control characters too: the cloud refuses them, so such a file could never sync.
    for bad in ["", ".", "..", "a/b", "line\nbreak", "nul\0"] {
        assert!(
            matches!(a.fs.mkdir(docs, bad, 0o755), Err(FsError::Invalid)),
            "{bad:?}"
        );
        assert!(
            a.write(&format!("Docs/{bad}"), b"x").await.is_err(),
            "{bad:?}"
        );
    }
    assert!(a.list("Docs").unwrap().is_empty());
    assert_eq!(a.cache.journal_len(), 0);
}

#[tokio::test]
async fn the_mount_root_holds_only_mesh_folders() {
    let (_c, _f, a) = one_device().await;
    assert!(matches!(
        a.fs.mkdir(ROOT, "x", 0o755),
        Err(FsError::NotPermitted(_))
    ));
    assert!(matches!(
        a.fs.create(ROOT, "x", 0o644).await,
        Err(FsError::NotPermitted(_))
    ));
    assert!(matches!(
        a.fs.rmdir(ROOT, "Docs"),
        Err(FsError::NotPermitted(_))
    ));
    assert!(matches!(
        a.fs.rename(ROOT, "Docs", ROOT, "Other", false),
        Err(FsError::NotPermitted(_))
    ));
    assert_eq!(a.list("").unwrap(), ["Docs"]);
}

#[tokio::test]
async fn rename_over_a_file_replaces_it_and_the_old_node_waits_for_the_upload() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/new", b"new").await.unwrap();
    a.write("Docs/old", b"old").await.unwrap();
    let old = a.ino("Docs/old").unwrap();
    a.rename("Docs/new", "Docs/old").unwrap();
    assert_eq!(a.read("Docs/old").await.unwrap(), b"new");
    assert_eq!(a.list("Docs").unwrap(), ["old"]);
    let kept = a
        .cache
        .node(old)
        .unwrap()
        .expect("kept until the rename is uploaded");
    assert!(!kept.linked && kept.pending > 0);
    a.upload().await.unwrap();
    // Now nothing needs it: its last reference going removes it.
    a.fs.forget(old, 1).unwrap();
    assert!(a.cache.node(old).unwrap().is_none());
}

#[tokio::test]
async fn rename_refusals_follow_posix() {
    let (_c, _f, a) = one_device().await;
    a.mkdir("Docs/d").unwrap();
    a.mkdir("Docs/d/sub").unwrap();
    a.mkdir("Docs/full").unwrap();
    a.write("Docs/full/x", b"x").await.unwrap();
    a.mkdir("Docs/empty").unwrap();
    a.write("Docs/f", b"f").await.unwrap();
    let docs = a.ino("Docs").unwrap();
    assert!(matches!(
        a.fs.rename(docs, "f", docs, "d", false),
        Err(FsError::IsDir)
    ));
    assert!(matches!(
        a.fs.rename(docs, "d", docs, "f", false),
        Err(FsError::NotDir)
    ));
    assert!(matches!(
        a.fs.rename(docs, "d", docs, "full", false),
        Err(FsError::NotEmpty)
    ));
    assert!(matches!(
        a.fs.rename(docs, "empty", docs, "d", true),
        Err(FsError::Exists)
    ));
    let sub = a.ino("Docs/d/sub").unwrap();
    assert!(matches!(
        a.fs.rename(docs, "d", sub, "inside", false),
        Err(FsError::Invalid)
    ));
    // Onto an empty directory, a directory takes its place.
    a.rename("Docs/d", "Docs/empty").unwrap();
    assert_eq!(a.list("Docs/empty").unwrap(), ["sub"]);
    // Onto itself: nothing happens.
    a.rename("Docs/f", "Docs/f").unwrap();
}

#[tokio::test]
async fn moving_between_mesh_folders_is_a_copy_not_a_rename() {
    let (cloud, _f, a) = one_device().await;
    cloud.create_folder("ann", "Music", false);
    a.sync().await;
    a.write("Docs/song", b"la").await.unwrap();
    assert!(matches!(
        a.rename("Docs/song", "Music/song"),
        Err(FsError::CrossFolder)
    ));
}

#[tokio::test]
async fn a_directorys_link_count_is_two_plus_its_subdirectories() {
    let (_c, _f, a) = one_device().await;
    a.mkdir("Docs/d").unwrap();
    assert_eq!(a.stat("Docs/d").unwrap().nlink, 2);
    for s in ["x", "y", "z"] {
        a.mkdir(&format!("Docs/d/{s}")).unwrap();
    }
    a.write("Docs/d/file", b"f").await.unwrap();
    assert_eq!(a.stat("Docs/d").unwrap().nlink, 5);
    a.rmdir("Docs/d/y").unwrap();
    assert_eq!(a.stat("Docs/d").unwrap().nlink, 4);
    a.rename("Docs/d/z", "Docs/z").unwrap();
    assert_eq!(a.stat("Docs/d").unwrap().nlink, 3);
    assert_eq!(a.stat("Docs/z").unwrap().nlink, 2);
}

#[tokio::test]
async fn an_unlinked_file_still_open_reads_and_reports_no_links() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"still here").await.unwrap();
    let ino = a.fs.lookup(a.ino("Docs").unwrap(), "f").unwrap().ino;
    let fh = a.fs.open_read(ino).unwrap().fh;
    a.unlink("Docs/f").unwrap();
    assert_eq!(a.fs.getattr(ino).unwrap().nlink, 0);
    assert_eq!(&a.fs.read(fh, 0, 100).await.unwrap()[..], b"still here");
    a.fs.close(fh).unwrap();
    a.upload().await.unwrap();
    assert!(
        a.cache.node(ino).unwrap().is_some(),
        "the kernel still knows it"
    );
    a.fs.forget(ino, 1).unwrap();
    assert!(a.cache.node(ino).unwrap().is_none());
}

#[tokio::test]
async fn a_directorys_times_move_when_an_entry_is_made_removed_or_renamed_in_it() {
    let (_c, _f, a) = one_device().await;
    a.mkdir("Docs/d").unwrap();
    a.mkdir("Docs/e").unwrap();
    let d = a.ino("Docs/d").unwrap();
    let e = a.ino("Docs/e").unwrap();
    let old = SetAttr {
        mtime: Some(TimeSet::At(1_000_000_000)),
        ..SetAttr::default()
    };
    type Op<'a> = Box<dyn Fn() -> BoxFuture<'a, ()> + 'a>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "create",
            Box::new(|| async { a.write("Docs/d/f", b"f").await.unwrap() }.boxed()),
        ),
        (
            "mkdir",
            Box::new(|| async { a.mkdir("Docs/d/sub").map(drop).unwrap() }.boxed()),
        ),
        (
            "symlink",
            Box::new(|| async { a.fs.symlink(d, "ln", "f").map(drop).unwrap() }.boxed()),
        ),
        (
            "rename within",
            Box::new(|| async { a.rename("Docs/d/f", "Docs/d/g").unwrap() }.boxed()),
        ),
        (
            "unlink",
            Box::new(|| async { a.unlink("Docs/d/ln").unwrap() }.boxed()),
        ),
        (
            "rmdir",
            Box::new(|| async { a.rmdir("Docs/d/sub").unwrap() }.boxed()),
        ),
        (
            "rename out",
            Box::new(|| async { a.rename("Docs/d/g", "Docs/e/g").unwrap() }.boxed()),
        ),
    ];
    for (what, op) in ops {
        a.fs.set_meta(d, &old).unwrap();
        a.fs.set_meta(e, &old).unwrap();
        let before = crate::proto::now_ns();
        after(before);
        op().await;
        let st = a.fs.getattr(d).unwrap();
        assert!(
            st.mtime_ns >= before && st.ctime_ns >= before,
            "{what}: {st:?}"
        );
        if what == "rename out" {
            let st = a.fs.getattr(e).unwrap();
            assert!(st.mtime_ns >= before, "{what}, the other directory");
        }
    }
}

#[tokio::test]
async fn a_files_ctime_moves_on_chmod_truncate_and_rename_and_its_mtime_only_on_content() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"0123456789").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    let set_old = SetAttr {
        mtime: Some(TimeSet::At(1_000_000_000)),
        ..SetAttr::default()
    };
    a.fs.set_meta(ino, &set_old).unwrap();
    let t0 = crate::proto::now_ns();
    after(t0);
    let st =
        a.fs.set_meta(
            ino,
            &SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert!(st.ctime_ns >= t0, "chmod");
    assert_eq!(st.mtime_ns, 1_000_000_000, "chmod leaves the mtime");
    assert_eq!(st.perm, 0o600);
    let t1 = crate::proto::now_ns();
    after(t1);
    a.rename("Docs/f", "Docs/g").unwrap();
    let st = a.stat("Docs/g").unwrap();
    assert!(
        st.ctime_ns >= t1 && st.mtime_ns == 1_000_000_000,
        "rename: {st:?}"
    );
    let t2 = crate::proto::now_ns();
    after(t2);
    let st = a.fs.truncate(ino, 4).await.unwrap();
    assert!(st.ctime_ns >= t2 && st.mtime_ns >= t2, "truncate: {st:?}");
    assert_eq!(a.read("Docs/g").await.unwrap(), b"0123");
}

#[tokio::test]
async fn utimensat_sets_atime_and_mtime_independently_and_reads_them_back() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"x").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    let set = |atime, mtime| {
        a.fs.set_meta(
            ino,
            &SetAttr {
                atime,
                mtime,
                ..SetAttr::default()
            },
        )
        .unwrap()
    };
    let st = set(Some(TimeSet::At(111)), Some(TimeSet::At(222)));
    assert_eq!((st.atime_ns, st.mtime_ns), (111, 222));
    let st = set(Some(TimeSet::At(333)), None);
    assert_eq!((st.atime_ns, st.mtime_ns), (333, 222), "mtime omitted");
    let st = set(None, Some(TimeSet::At(444)));
    assert_eq!((st.atime_ns, st.mtime_ns), (333, 444), "atime omitted");
    let before = crate::proto::now_ns();
    let st = set(Some(TimeSet::Now), None);
    assert!(st.atime_ns >= before && st.mtime_ns == 444, "atime now");
    let st = set(None, Some(TimeSet::Now));
    assert!(st.mtime_ns >= before, "mtime now");
    // Read back through a fresh lookup, as `stat` would.
    let again = a.stat("Docs/f").unwrap();
    assert_eq!((again.atime_ns, again.mtime_ns), (st.atime_ns, st.mtime_ns));
}

/// `cp -p` and `tar x` write a file and set its time through the open descriptor before
/// closing it: the commit at close must keep that time.
#[tokio::test]
async fn a_time_set_through_an_open_file_survives_the_commit_at_close() {
    let (cloud, folder, a) = one_device().await;
    let docs = a.ino("Docs").unwrap();
    let (attr, o) = a.fs.create(docs, "copy", 0o644).await.unwrap();
    a.fs.write(o.fh, 0, b"copied content").unwrap();
    let set =
        a.fs.set_meta(
            attr.ino,
            &SetAttr {
                mtime: Some(TimeSet::At(1_234_000_000_000)),
                ..SetAttr::default()
            },
        )
        .unwrap();
    // What setattr answers is the live file, not the last committed one (`tar d` right
    // after `tar x` saw sizes of 0).
    assert_eq!(set.size, 14);
    assert_eq!(set.mtime_ns, 1_234_000_000_000);
    a.close(o.fh).await.unwrap();
    let st = a.stat("Docs/copy").unwrap();
    assert_eq!((st.size, st.mtime_ns), (14, 1_234_000_000_000));
    a.upload().await.unwrap();
    assert_eq!(cloud.tree(&folder)["copy"].mtime_ns, 1_234_000_000_000);
}

#[tokio::test]
async fn a_write_after_a_set_time_moves_the_mtime_again() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"x").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    let fh = a.fs.open(ino, true, false).await.unwrap().fh;
    a.fs.set_meta(
        ino,
        &SetAttr {
            mtime: Some(TimeSet::At(5)),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let before = crate::proto::now_ns();
    a.fs.write(fh, 1, b"y").unwrap();
    a.close(fh).await.unwrap();
    assert!(a.stat("Docs/f").unwrap().mtime_ns >= before);
}

#[tokio::test]
async fn a_file_being_written_shows_its_live_size() {
    let (_c, _f, a) = one_device().await;
    let docs = a.ino("Docs").unwrap();
    let (attr, o) = a.fs.create(docs, "f", 0o644).await.unwrap();
    a.fs.write(o.fh, 0, &[7; 5000]).unwrap();
    assert_eq!(a.fs.getattr(attr.ino).unwrap().size, 5000);
    a.fs.write(o.fh, 10_000, b"end").unwrap();
    assert_eq!(a.stat("Docs/f").unwrap().size, 10_003);
    a.close(o.fh).await.unwrap();
    assert_eq!(a.read("Docs/f").await.unwrap().len(), 10_003);
}

#[tokio::test]
async fn sizes_past_the_largest_file_fail_with_efbig() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"x").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    assert!(matches!(
        a.fs.truncate(ino, 1 << 62).await,
        Err(FsError::TooBig)
    ));
    let fh = a.fs.open(ino, true, false).await.unwrap().fh;
    assert!(matches!(
        a.fs.write(fh, attr::MAX_FILE_SIZE, b"x"),
        Err(FsError::TooBig)
    ));
    assert!(matches!(
        a.fs.fallocate(fh, 0, 1 << 62, Allocate::Extend),
        Err(FsError::TooBig)
    ));
    a.close(fh).await.unwrap();
    assert_eq!(FsError::TooBig.errno(), libc::EFBIG);
    assert_eq!(a.read("Docs/f").await.unwrap(), b"x");
}

#[tokio::test]
async fn fallocate_extends_like_a_disk_and_keeps_what_is_there() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"keep me").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    let fh = a.fs.open(ino, true, false).await.unwrap().fh;
    a.fs.fallocate(fh, 0, 3, Allocate::Extend).unwrap();
    assert_eq!(
        a.fs.getattr(ino).unwrap().size,
        7,
        "within the file: no change"
    );
    a.fs.fallocate(fh, 4, 100, Allocate::KeepSize).unwrap();
    assert_eq!(a.fs.getattr(ino).unwrap().size, 7, "keep size");
    a.fs.fallocate(fh, 0, 5 << 20, Allocate::Extend).unwrap();
    assert_eq!(a.fs.getattr(ino).unwrap().size, 5 << 20);
    a.close(fh).await.unwrap();
    let data = a.read("Docs/f").await.unwrap();
    assert_eq!(data.len(), 5 << 20);
    assert_eq!(&data[..7], b"keep me");
    assert!(data[7..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn statfs_reports_the_quota_and_what_the_cloud_holds() {
    let (_c, _f, a) = one_device().await;
    let unknown = a.fs.statfs();
    assert!(unknown.blocks > 0 && unknown.bfree == unknown.blocks);
    a.counters.cloud_quota.store(100_000_000, Ordering::Relaxed);
    a.counters.cloud_used.store(40_000_000, Ordering::Relaxed);
    let s = a.fs.statfs();
    let size = u64::from(s.frsize);
    assert_eq!(s.blocks, 100_000_000 / size);
    assert_eq!(s.bfree, 60_000_000 / size);
    assert_eq!(s.bavail, s.bfree);
    assert_eq!(s.namelen, 255);
}

#[tokio::test]
async fn readdir_in_small_pieces_gives_every_entry_once_with_the_dots_first() {
    let (_c, _f, a) = one_device().await;
    for i in 0..25 {
        a.write(&format!("Docs/f{i:02}"), b"x").await.unwrap();
    }
    let docs = a.ino("Docs").unwrap();
    let fh = a.fs.opendir(docs).unwrap();
    let (mut offset, mut names) = (0, Vec::new());
    loop {
        let mut got = 0;
        a.fs.readdir(fh, docs, offset, |e| {
            names.push(e.name.to_string());
            offset = e.next;
            got += 1;
            got == 4
        })
        .unwrap();
        if got == 0 {
            break;
        }
    }
    a.fs.releasedir(fh);
    assert_eq!(names.len(), 27);
    assert_eq!(&names[..2], [".", ".."]);
    let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names[2..], expected[..]);
    assert_eq!(
        a.counters.dirs_listed.load(Ordering::Relaxed),
        1,
        "one listing read for the whole handle"
    );
}

#[tokio::test]
async fn readdirplus_counts_a_reference_for_each_entry_taken_and_none_for_the_dots() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/a", b"a").await.unwrap();
    a.write("Docs/b", b"b").await.unwrap();
    let docs = a.ino("Docs").unwrap();
    let (ia, ib) = (a.ino("Docs/a").unwrap(), a.ino("Docs/b").unwrap());
    let fh = a.fs.opendir(docs).unwrap();
    let mut taken = 0;
    // The reply fills after ".", ".." and "a": "b" is not taken.
    a.fs.readdirplus(fh, docs, 0, |_, _| {
        taken += 1;
        taken == 4
    })
    .unwrap();
    a.fs.releasedir(fh);
    a.unlink("Docs/a").unwrap();
    a.unlink("Docs/b").unwrap();
    a.upload().await.unwrap();
    // Forgetting nothing drops what the kernel does not hold.
    a.fs.forget(ia, 0).unwrap();
    a.fs.forget(ib, 0).unwrap();
    assert!(a.cache.node(ia).unwrap().is_some(), "the kernel holds a");
    assert!(a.cache.node(ib).unwrap().is_none(), "nobody holds b");
    a.fs.forget(ia, 1).unwrap();
    assert!(a.cache.node(ia).unwrap().is_none());
}

#[tokio::test]
async fn symlinks_keep_their_target() {
    let (_c, _f, a) = one_device().await;
    let docs = a.ino("Docs").unwrap();
    let ln = a.fs.symlink(docs, "ln", "../elsewhere").unwrap();
    assert_eq!(ln.kind, EntryKind::Symlink);
    assert_eq!(ln.size, 12);
    assert_eq!(a.fs.readlink(ln.ino).unwrap(), "../elsewhere");
    a.write("Docs/f", b"x").await.unwrap();
    assert!(matches!(
        a.fs.readlink(a.ino("Docs/f").unwrap()),
        Err(FsError::Invalid)
    ));
}

#[tokio::test]
async fn files_belong_to_the_user_who_mounted() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"x").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    let chown = |uid| SetAttr {
        uid: Some(uid),
        ..SetAttr::default()
    };
    assert!(matches!(
        a.fs.set_meta(ino, &chown(0)),
        Err(FsError::NotPermitted(_))
    ));
    assert_eq!(
        a.fs.set_meta(ino, &chown(OWNER.uid)).unwrap().uid,
        OWNER.uid
    );
}

#[tokio::test]
async fn a_close_commits_one_version_durably_and_a_clean_close_commits_nothing() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"one").await.unwrap();
    let commits = a.counters.commits.load(Ordering::Relaxed);
    assert_eq!(commits, 1);
    assert_eq!(a.cache.journal_len(), 2, "the create and the version");
    let fh =
        a.fs.open(a.ino("Docs/f").unwrap(), true, false)
            .await
            .unwrap()
            .fh;
    a.close(fh).await.unwrap();
    assert_eq!(a.counters.commits.load(Ordering::Relaxed), commits);
    assert_eq!(a.cache.journal_len(), 2);
}

/// Two descriptors write one file; the first to close commits everything written so far
/// (`close` is close-to-open), but a release commits only writes of its own handle that no
/// commit took: another's half-done write must not be published by it.
#[tokio::test]
async fn a_release_commits_only_its_own_handles_changes() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"base").await.unwrap();
    let ino = a.ino("Docs/f").unwrap();
    let one = a.fs.open(ino, true, false).await.unwrap().fh;
    let two = a.fs.open(ino, true, false).await.unwrap().fh;
    a.fs.write(one, 0, b"ONE").unwrap();
    a.fs.flush(one).await.unwrap();
    let commits = a.counters.commits.load(Ordering::Relaxed);
    a.fs.write(two, 0, b"TW").unwrap();
    // `one` releases without a flush (its last close came earlier): it made no change
    // since the commit, so it commits nothing of `two`'s.
    let closing = a.fs.close(one).unwrap().expect("a writing handle");
    a.fs.finish_write(closing).await.unwrap();
    assert_eq!(a.counters.commits.load(Ordering::Relaxed), commits);
    a.close(two).await.unwrap();
    assert_eq!(a.read("Docs/f").await.unwrap(), b"TWEe");
}

/// A file written on another device: a read fetches the blocks it touches and no more.
#[tokio::test]
async fn reading_part_of_a_remote_file_fetches_only_the_blocks_read() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    let data = bytes(5 * BLOCK_SIZE as usize, 9);
    b.write("Docs/big", &data).await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let ino = a.ino("Docs/big").unwrap();
    assert_eq!(a.fs.getattr(ino).unwrap().size, data.len() as u64);
    assert_eq!(
        a.remote.calls(Call::GetBlock),
        0,
        "metadata fetches no content"
    );
    let fh = a.fs.open_read(ino).unwrap().fh;
    let at = 2 * BLOCK_SIZE + 100;
    let got = a.fs.read(fh, at, 4096).await.unwrap();
    assert_eq!(&got[..], &data[at as usize..at as usize + 4096]);
    assert_eq!(a.remote.calls(Call::GetBlock), 1);
    a.fs.close(fh).unwrap();
}

#[tokio::test]
async fn a_block_no_source_can_reach_fails_fast_with_enotconn() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    b.write("Docs/f", &bytes(1000, 3)).await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    a.remote.fail(Call::GetBlock, Failure::Unreachable);
    let err = a.read("Docs/f").await.unwrap_err();
    assert!(matches!(err, FsError::Offline), "{err:?}");
    assert_eq!(err.errno(), libc::ENOTCONN);
    // Back online, the same read works.
    assert_eq!(a.read("Docs/f").await.unwrap(), bytes(1000, 3));
}

/// Serves the wrong bytes for every block.
struct Liar;

impl BlockSource for Liar {
    fn name(&self) -> &str {
        "liar"
    }
    fn get<'a>(&'a self, _: &'a Want) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async { Ok(Bytes::from_static(b"not the block you want")) }.boxed()
    }
}

#[tokio::test]
async fn wrong_bytes_from_every_source_give_eio_never_wrong_data() {
    let cloud = crate::agent::remote::memory::MemoryCloud::new();
    cloud.add_user("ann", 1 << 30);
    cloud.create_folder("ann", "Docs", false);
    let b = second_device(&cloud).await;
    b.write("Docs/f", &bytes(2000, 5)).await.unwrap();
    b.upload().await.unwrap();
    let a = TestDevice::with_sources(&cloud, "ann", "dev-a", vec![Arc::new(Liar)]);
    a.sync().await;
    // The cloud has lost the block: the liar is the only one that answers.
    a.remote
        .fail(Call::GetBlock, Failure::Answer(404, ErrorCode::NotFound));
    let err = a.read("Docs/f").await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err:?}");
    assert!(a.counters.blocks_rejected.load(Ordering::Relaxed) >= 1);
    // With the cloud answering again, the right bytes come (after the liar's, checked).
    assert_eq!(a.read("Docs/f").await.unwrap(), bytes(2000, 5));
}

#[tokio::test]
async fn opening_to_overwrite_fetches_nothing_and_opening_to_edit_fetches_everything() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    b.write("Docs/f", &bytes(3 * BLOCK_SIZE as usize, 7))
        .await
        .unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let ino = a.ino("Docs/f").unwrap();
    let fh = a.fs.open(ino, true, true).await.unwrap().fh;
    assert_eq!(
        a.remote.calls(Call::GetBlock),
        0,
        "O_TRUNC needs no content"
    );
    a.close(fh).await.unwrap();
    assert_eq!(a.stat("Docs/f").unwrap().size, 0);
    b.write("Docs/g", &bytes(3 * BLOCK_SIZE as usize, 8))
        .await
        .unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    a.write_at("Docs/g", 10, b"edit").await.unwrap();
    assert_eq!(a.remote.calls(Call::GetBlock), 3);
    let mut want = bytes(3 * BLOCK_SIZE as usize, 8);
    want[10..14].copy_from_slice(b"edit");
    assert_eq!(a.read("Docs/g").await.unwrap(), want);
}

#[tokio::test]
async fn an_open_with_o_trunc_and_no_write_commits_an_empty_version() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"something").await.unwrap();
    let fh =
        a.fs.open(a.ino("Docs/f").unwrap(), true, true)
            .await
            .unwrap()
            .fh;
    a.close(fh).await.unwrap();
    assert_eq!(a.read("Docs/f").await.unwrap(), b"");
    assert_eq!(a.counters.commits.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_unknown_handle_is_ebadf_and_a_read_handle_cannot_write() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/f", b"x").await.unwrap();
    assert!(matches!(
        a.fs.read(999, 0, 10).await,
        Err(FsError::BadHandle)
    ));
    let fh = a.fs.open_read(a.ino("Docs/f").unwrap()).unwrap().fh;
    assert!(matches!(a.fs.write(fh, 0, b"y"), Err(FsError::BadHandle)));
    a.fs.close(fh).unwrap();
    assert!(matches!(a.fs.close(fh), Err(FsError::BadHandle)));
}

#[tokio::test]
async fn a_restart_keeps_inodes_and_what_was_committed_and_drops_what_was_not() {
    let (_c, _f, a) = one_device().await;
    a.write("Docs/kept", b"committed").await.unwrap();
    let ino = a.ino("Docs/kept").unwrap();
    let docs = a.ino("Docs").unwrap();
    let (_, o) = a.fs.create(docs, "half", 0o644).await.unwrap();
    a.fs.write(o.fh, 0, b"never closed").unwrap();
    let a = a.restart();
    assert_eq!(a.ino("Docs/kept").unwrap(), ino, "inode numbers are stable");
    assert_eq!(a.read("Docs/kept").await.unwrap(), b"committed");
    // The file was created (a metadata change), but its unclosed write is gone.
    assert_eq!(a.read("Docs/half").await.unwrap(), b"");
}

#[tokio::test]
async fn a_file_larger_than_the_cache_reads_whole_while_eviction_keeps_the_store_bounded() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    let data = bytes(12 * BLOCK_SIZE as usize + 77, 5);
    b.write("Docs/big", &data).await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let limit = 3 * BLOCK_SIZE;
    a.cache.set_limit(limit);
    let fh = a.fs.open_read(a.ino("Docs/big").unwrap()).unwrap().fh;
    let mut out = Vec::new();
    let mut most = 0;
    loop {
        let chunk = a.fs.read(fh, out.len() as u64, 128 << 10).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
        most = most.max(a.cache.blocks_bytes());
        a.cache.evict("dev-a").unwrap();
    }
    a.fs.close(fh).unwrap();
    assert!(out == data, "read back byte-identical");
    // The store, the block being read and the one read ahead.
    assert!(
        most <= limit + 2 * BLOCK_SIZE,
        "{most} bytes stored at most"
    );
    assert!(a.cache.blocks_bytes() <= limit);
    // A second read fetches what was evicted again.
    let fetched = a.remote.calls(Call::GetBlock);
    assert!(a.read("Docs/big").await.unwrap() == data);
    assert!(a.remote.calls(Call::GetBlock) > fetched);
}

#[tokio::test]
async fn changes_not_yet_uploaded_survive_eviction_and_a_restart() {
    let (cloud, _f, a) = one_device().await;
    let data = bytes(4 * BLOCK_SIZE as usize, 6);
    a.write("Docs/dirty", &data).await.unwrap();
    a.remote.fail(Call::Steps, Failure::Unreachable);
    assert!(a.upload().await.is_err(), "the cloud is away");
    a.cache.set_limit(1);
    let done = a.cache.evict("dev-a").unwrap();
    assert_eq!(done.blocks, 0);
    assert_eq!(done.kept, data.len() as u64);

    let a = a.restart();
    a.cache.set_limit(1);
    a.cache.evict("dev-a").unwrap();
    a.upload().await.unwrap();
    // Uploaded, the blocks may go; another device reads them from the cloud.
    a.cache.evict("dev-a").unwrap();
    assert_eq!(a.cache.blocks_bytes(), 0);
    let b = second_device(&cloud).await;
    assert!(b.read("Docs/dirty").await.unwrap() == data);
}

#[tokio::test]
async fn a_pinned_folder_is_fetched_whole_survives_eviction_and_reads_offline() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    b.mkdir("Docs/sub").unwrap();
    let one = bytes(2 * BLOCK_SIZE as usize, 21);
    let two = bytes(3000, 22);
    b.write("Docs/sub/one", &one).await.unwrap();
    b.write("Docs/two", &two).await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let docs = a.ino("Docs").unwrap();
    let one_ino = a.ino("Docs/sub/one").unwrap();
    assert_eq!(a.fs.state(one_ino).unwrap(), FileState::RemoteOnly);
    assert_eq!(
        a.fs.on_device(docs).unwrap(),
        OnDevice {
            local: 0,
            missing: (one.len() + two.len()) as u64
        }
    );

    a.fs.set_xattr(docs, "user.meshfs.pinned", b"1").unwrap();
    assert_eq!(a.fs.state(docs).unwrap(), FileState::Pinned);
    assert_eq!(
        a.fs.state(one_ino).unwrap(),
        FileState::RemoteOnly,
        "not yet here"
    );
    let round = a.fs.fetch_pinned().await.unwrap();
    assert_eq!(
        round,
        PinRound {
            fetched: 3,
            failed: 0
        }
    );
    assert_eq!(a.fs.state(one_ino).unwrap(), FileState::Pinned);
    assert_eq!(a.fs.on_device(docs).unwrap().missing, 0);
    assert_eq!(
        a.fs.xattr(one_ino, "user.meshfs.state").unwrap().unwrap(),
        b"pinned"
    );

    // Whatever the limit, pinned content stays, and reads without the cloud.
    a.cache.set_limit(1);
    assert_eq!(a.cache.evict("dev-a").unwrap().blocks, 0);
    let asked = a.remote.calls(Call::GetBlock);
    assert!(a.read("Docs/sub/one").await.unwrap() == one);
    assert!(a.read("Docs/two").await.unwrap() == two);
    assert_eq!(
        a.remote.calls(Call::GetBlock),
        asked,
        "nothing asked of the cloud"
    );

    // A file made under the pinned folder here, or arriving from elsewhere, is pinned.
    a.write("Docs/sub/mine", b"local").await.unwrap();
    assert!(
        a.fs.xattr(a.ino("Docs/sub/mine").unwrap(), "user.meshfs.pinned")
            .unwrap()
            == Some(b"1".to_vec())
    );
    let three = bytes(5000, 23);
    b.write("Docs/sub/three", &three).await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let three_ino = a.ino("Docs/sub/three").unwrap();
    assert_eq!(a.fs.state(three_ino).unwrap(), FileState::RemoteOnly);
    assert_eq!(a.fs.fetch_pinned().await.unwrap().fetched, 1);
    assert_eq!(a.fs.state(three_ino).unwrap(), FileState::Pinned);

    // Unpinned, the content may go.
    a.upload().await.unwrap();
    a.fs.remove_xattr(docs, "user.meshfs.pinned").unwrap();
    assert_eq!(a.fs.state(one_ino).unwrap(), FileState::Local);
    a.cache.evict("dev-a").unwrap();
    assert_eq!(a.fs.state(one_ino).unwrap(), FileState::RemoteOnly);
    assert_eq!(a.cache.blocks_bytes(), 0);
}

#[tokio::test]
async fn file_states_and_the_attributes_that_show_them() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    let data = bytes(3 * BLOCK_SIZE as usize, 31);
    b.write("Docs/f", &data).await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let ino = a.ino("Docs/f").unwrap();
    let fh = a.fs.open_read(ino).unwrap().fh;
    a.fs.read(fh, 0, 10).await.unwrap();
    a.fs.close(fh).unwrap();
    assert_eq!(a.fs.state(ino).unwrap(), FileState::Partial);
    assert_eq!(
        a.fs.xattr(ino, "user.meshfs.local").unwrap().unwrap(),
        BLOCK_SIZE.to_string().into_bytes()
    );
    assert_eq!(a.read("Docs/f").await.unwrap().len(), data.len());
    assert_eq!(a.fs.state(ino).unwrap(), FileState::Local);
    a.write("Docs/f", b"changed").await.unwrap();
    assert_eq!(a.fs.state(ino).unwrap(), FileState::Dirty);
    a.upload().await.unwrap();
    assert_eq!(a.fs.state(ino).unwrap(), FileState::Local);
    assert_eq!(
        a.fs.state(a.ino("Docs").unwrap()).unwrap(),
        FileState::Folder
    );

    assert!(a.fs.xattr(ino, "user.other").unwrap().is_none());
    let names = a.fs.xattr_names();
    assert!(names.split(|&c| c == 0).any(|n| n == b"user.meshfs.state"));
    let err = |r: Result<(), FsError>| r.unwrap_err().errno();
    assert_eq!(
        err(a.fs.set_xattr(ino, "user.meshfs.pinned", b"yes")),
        libc::EINVAL
    );
    assert_eq!(
        err(a.fs.set_xattr(ino, "user.meshfs.state", b"local")),
        libc::EPERM
    );
    assert_eq!(err(a.fs.set_xattr(ino, "user.tag", b"x")), libc::EOPNOTSUPP);
    assert_eq!(err(a.fs.remove_xattr(ino, "user.tag")), libc::ENODATA);
    // Other namespaces are not supported at all, which `ls -l` remembers for the mount
    // instead of asking every file for its SELinux label and ACLs.
    for name in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(
            a.fs.xattr(ino, name).unwrap_err().errno(),
            libc::EOPNOTSUPP,
            "{name}"
        );
        assert_eq!(
            err(a.fs.set_xattr(ino, name, b"x")),
            libc::EOPNOTSUPP,
            "{name}"
        );
        assert_eq!(
            err(a.fs.remove_xattr(ino, name)),
            libc::EOPNOTSUPP,
            "{name}"
        );
    }
}

#[tokio::test]
async fn small_files_opened_in_turn_come_in_batches_and_one_alone_brings_nothing_more() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    b.mkdir("Docs/many").unwrap();
    let files: Vec<Vec<u8>> = (0..200).map(|i| bytes(4096, 100 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        b.write(&format!("Docs/many/f{i:04}"), data).await.unwrap();
    }
    b.upload().await.unwrap();
    a.sync().await;

    // One file on its own: its block, nothing else.
    assert!(a.read("Docs/many/f0150").await.unwrap() == files[150]);
    assert_eq!(a.remote.calls(Call::GetBlock), 1);
    assert_eq!(a.remote.calls(Call::GetBlocks), 0);
    assert_eq!(a.counters.blocks_fetched.load(Ordering::Relaxed), 1);

    // All of them in turn, as `cat many/*` does.
    for (i, data) in files.iter().enumerate() {
        let got = a.read(&format!("Docs/many/f{i:04}")).await.unwrap();
        assert!(&got == data, "f{i:04}");
    }
    let (single, batches) = (
        a.remote.calls(Call::GetBlock),
        a.remote.calls(Call::GetBlocks),
    );
    assert!(
        batches >= 3 && single <= 1 + 2 * batches,
        "{single} single, {batches} batches"
    );
    assert_eq!(
        a.counters.blocks_fetched.load(Ordering::Relaxed),
        200,
        "each block once"
    );
}

/// The whole content of a view's file.
fn view_bytes(v: &crate::agent::cache::View) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let len = v.file.metadata().unwrap().len();
    let mut out = vec![0; len as usize];
    v.file.read_exact_at(&mut out, 0).unwrap();
    out
}

#[tokio::test]
async fn a_view_holds_the_file_byte_for_byte_and_is_made_once() {
    let (_cloud, _f, a) = one_device().await;
    let data = bytes(5 * BLOCK_SIZE as usize / 2, 31);
    a.write("Docs/movie", &data).await.unwrap();
    let ino = a.ino("Docs/movie").unwrap();
    let v = a.fs.open_view(ino).unwrap().expect("wholly on the device");
    assert!(view_bytes(&v) == data, "byte-identical");
    assert_eq!(a.cache.views_bytes(), data.len() as u64);
    let again = a.fs.open_view(ino).unwrap().unwrap();
    assert_eq!(again.id, v.id, "kept, not copied again");
    assert!(a.fs.view_is_current(ino, &v));
}

#[tokio::test]
async fn no_view_while_a_file_is_written_or_not_wholly_on_the_device() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    b.write("Docs/there", &bytes(3 * BLOCK_SIZE as usize, 2))
        .await
        .unwrap();
    b.upload().await.unwrap();
    a.sync().await;
    let there = a.ino("Docs/there").unwrap();
    assert!(a.fs.open_view(there).unwrap().is_none(), "remote-only");

    let mut data = bytes(BLOCK_SIZE as usize + 5, 4);
    a.write("Docs/here", &data).await.unwrap();
    let here = a.ino("Docs/here").unwrap();
    let fh = a.fs.open(here, true, false).await.unwrap().fh;
    a.fs.write(fh, 0, b"L").unwrap();
    assert!(a.fs.open_view(here).unwrap().is_none(), "being written");
    a.close(fh).await.unwrap();
    let v = a.fs.open_view(here).unwrap().expect("written and closed");
    data[0] = b'L';
    assert!(view_bytes(&v) == data);
}

#[tokio::test]
async fn files_smaller_than_a_block_are_read_through_the_agent() {
    let (_cloud, _f, a) = one_device().await;
    a.write(
        "Docs/note",
        &bytes(content::PASSTHROUGH_MIN as usize - 1, 6),
    )
    .await
    .unwrap();
    let ino = a.ino("Docs/note").unwrap();
    assert!(a.fs.open_view(ino).unwrap().is_none());
    assert_eq!(a.cache.views_bytes(), 0);
}

#[tokio::test]
async fn views_stay_within_a_quarter_of_the_cache_limit_least_recently_used_out() {
    let (_cloud, _f, a) = one_device().await;
    a.cache.set_limit(8 * BLOCK_SIZE);
    let half = BLOCK_SIZE as usize * 3 / 2;
    a.write("Docs/big", &bytes(3 * BLOCK_SIZE as usize, 1))
        .await
        .unwrap();
    a.write("Docs/one", &bytes(half, 2)).await.unwrap();
    a.write("Docs/two", &bytes(half, 3)).await.unwrap();
    let big = a.ino("Docs/big").unwrap();
    assert!(
        a.fs.open_view(big).unwrap().is_none(),
        "more than a quarter"
    );
    let one_ino = a.ino("Docs/one").unwrap();
    let one = a.fs.open_view(one_ino).unwrap().unwrap();
    let two = a.fs.open_view(a.ino("Docs/two").unwrap()).unwrap().unwrap();
    assert_eq!(a.cache.views_bytes(), half as u64, "the older view went");
    assert!(view_bytes(&two) == bytes(half, 3));
    assert!(
        view_bytes(&one) == bytes(half, 2),
        "a view let go of stays readable by whoever holds it"
    );
    let again = a.fs.open_view(one_ino).unwrap().unwrap();
    assert_ne!(again.id, one.id, "made anew");
    assert_eq!(a.cache.views_bytes(), half as u64);
}

#[tokio::test]
async fn a_writer_over_a_view_commits_what_the_kernel_wrote_into_it() {
    use std::os::unix::fs::FileExt;
    let (_cloud, _f, a) = one_device().await;
    let mut data = bytes(BLOCK_SIZE as usize, 7);
    a.write("Docs/log", &data).await.unwrap();
    let ino = a.ino("Docs/log").unwrap();
    let pending = a.cache.node(ino).unwrap().unwrap().pending;
    let v = a.fs.open_view(ino).unwrap().unwrap();
    let fh = a.fs.open_over_view(ino, false, &v).unwrap().fh;
    // The kernel writes into the view by passthrough; readers of it see it at once.
    v.file.write_all_at(b"second line\n", BLOCK_SIZE).unwrap();
    data.extend_from_slice(b"second line\n");
    assert_eq!(
        a.fs.getattr(ino).unwrap().size,
        data.len() as u64,
        "the size is the view's own"
    );
    assert!(a.fs.has_uncommitted(fh));
    assert!(
        a.fs.open_view(ino).unwrap().is_none(),
        "no new view while it is written"
    );
    a.close(fh).await.unwrap();
    assert!(a.read("Docs/log").await.unwrap() == data);
    assert_eq!(
        a.cache.node(ino).unwrap().unwrap().pending,
        pending + 1,
        "one version journaled"
    );
    let next = a.fs.open_view(ino).unwrap().unwrap();
    assert_ne!(
        next.id, v.id,
        "the written view is no longer kept as a copy"
    );
    assert!(view_bytes(&next) == data);
}

#[tokio::test]
async fn a_writer_over_a_view_that_wrote_nothing_commits_nothing() {
    let (_cloud, _f, a) = one_device().await;
    a.write("Docs/same", &bytes(BLOCK_SIZE as usize + 1, 8))
        .await
        .unwrap();
    let ino = a.ino("Docs/same").unwrap();
    let before = a.cache.node(ino).unwrap().unwrap();
    let commits = a.counters.snapshot().commits;
    let v = a.fs.open_view(ino).unwrap().unwrap();
    let fh = a.fs.open_over_view(ino, false, &v).unwrap().fh;
    a.close(fh).await.unwrap();
    assert_eq!(a.counters.snapshot().commits, commits);
    let after = a.cache.node(ino).unwrap().unwrap();
    assert_eq!((after.size, after.mtime_ns), (before.size, before.mtime_ns));
}

#[tokio::test]
async fn a_writer_over_a_view_of_content_changed_since_is_refused() {
    let (_cloud, _f, a) = one_device().await;
    a.write("Docs/doc", &bytes(BLOCK_SIZE as usize, 9))
        .await
        .unwrap();
    let ino = a.ino("Docs/doc").unwrap();
    let v = a.fs.open_view(ino).unwrap().unwrap();
    let new = bytes(BLOCK_SIZE as usize + 3, 10);
    a.write("Docs/doc", &new).await.unwrap();
    assert!(!a.fs.view_is_current(ino, &v));
    assert!(matches!(
        a.fs.open_over_view(ino, false, &v),
        Err(FsError::Busy)
    ));
    assert!(a.read("Docs/doc").await.unwrap() == new, "nothing lost");
}

#[tokio::test]
async fn a_view_takes_a_version_from_elsewhere_unless_a_writer_has_it() {
    let (cloud, _f, a) = one_device().await;
    let b = second_device(&cloud).await;
    a.write("Docs/shared", &bytes(2 * BLOCK_SIZE as usize, 11))
        .await
        .unwrap();
    a.write("Docs/held", &bytes(BLOCK_SIZE as usize + 1, 12))
        .await
        .unwrap();
    a.upload().await.unwrap();
    b.sync().await;
    let (shared, held) = (a.ino("Docs/shared").unwrap(), a.ino("Docs/held").unwrap());
    let v = a.fs.open_view(shared).unwrap().unwrap();
    let w = a.fs.open_view(held).unwrap().unwrap();
    let fh = a.fs.open_over_view(held, false, &w).unwrap().fh;

    let new = bytes(BLOCK_SIZE as usize + 99, 13);
    b.write("Docs/shared", &new).await.unwrap();
    b.write("Docs/held", b"from b").await.unwrap();
    b.upload().await.unwrap();
    a.sync().await;

    Arc::clone(&a.fs)
        .refresh_view(shared, Arc::clone(&v))
        .await
        .unwrap();
    assert!(view_bytes(&v) == new, "rewritten in place");
    assert!(a.fs.view_is_current(shared, &v));
    Arc::clone(&a.fs)
        .refresh_view(held, Arc::clone(&w))
        .await
        .unwrap();
    assert!(
        view_bytes(&w) == bytes(BLOCK_SIZE as usize + 1, 12),
        "a writer's file is its own"
    );
    a.close(fh).await.unwrap();
}
