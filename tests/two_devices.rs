//! Two devices of one user, each with its own agent process and real FUSE mount, sharing a
//! folder through a real cloud process.

mod common;

use common::{Mesh, eventually, pseudo_random};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn a_file_written_on_a_is_read_byte_identical_on_b_fetching_only_what_is_read() {
    let mesh = Mesh::new();
    let data = pseudo_random(64 * MIB, 7);
    std::fs::write(mesh.ma.join("Docs/big.bin"), &data).unwrap();
    assert!(
        mesh.a_uploaded(),
        "A did not upload: {}",
        mesh.ma.log_text()
    );

    let on_b = mesh.mb.join("Docs/big.bin");
    assert!(eventually(Duration::from_secs(20), || std::fs::metadata(
        &on_b
    )
    .is_ok_and(|m| m.len() == data.len() as u64)));

    // Random 4 KiB reads first: each needs just the block it touches.
    let mut f = std::fs::File::open(&on_b).unwrap();
    let mut offsets: Vec<u64> = pseudo_random(8 * 16, 99)
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()) % (data.len() as u64 - 4096))
        .collect();
    offsets.sort_unstable_by_key(|o| std::cmp::Reverse(*o));
    for &off in &offsets {
        let mut buf = vec![0u8; 4096];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(
            buf,
            &data[off as usize..off as usize + 4096],
            "bytes at {off}"
        );
    }
    // A report written after the reads: at most two blocks per read (a read may straddle a
    // block boundary), far below the file's 64 blocks.
    let fetched = mesh.b.fresh_status().counters.blocks_fetched;
    assert!(
        fetched >= 1 && fetched <= 2 * offsets.len() as u64,
        "fetched {fetched} blocks for {} random reads",
        offsets.len()
    );

    // Then the whole file, byte for byte.
    let mut all = Vec::new();
    std::fs::File::open(&on_b)
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert_eq!(Sha256::digest(&all), Sha256::digest(&data));
}

#[test]
fn mkdir_rename_and_unlink_on_a_show_on_b_within_seconds() {
    let mesh = Mesh::new();
    let (a, b) = (&mesh.ma, &mesh.mb);
    std::fs::create_dir(a.join("Docs/projects")).unwrap();
    std::fs::write(a.join("Docs/note.txt"), b"first draft").unwrap();
    let soon = Duration::from_secs(10);
    assert!(
        eventually(soon, || b.join("Docs/projects").is_dir()),
        "mkdir did not arrive"
    );
    assert!(eventually(soon, || std::fs::read(b.join("Docs/note.txt"))
        .is_ok_and(|d| d == b"first draft")));

    // Rename across directories.
    std::fs::rename(a.join("Docs/note.txt"), a.join("Docs/projects/plan.txt")).unwrap();
    assert!(
        eventually(soon, || !b.join("Docs/note.txt").exists()
            && b.join("Docs/projects/plan.txt").exists()),
        "rename did not arrive"
    );
    assert_eq!(
        std::fs::read(b.join("Docs/projects/plan.txt")).unwrap(),
        b"first draft"
    );

    // Change the content; B's kernel cache must not keep the old bytes.
    std::fs::write(a.join("Docs/projects/plan.txt"), b"second draft, longer").unwrap();
    assert!(eventually(soon, || std::fs::read(
        b.join("Docs/projects/plan.txt")
    )
    .is_ok_and(|d| d == b"second draft, longer")));

    std::fs::remove_file(a.join("Docs/projects/plan.txt")).unwrap();
    assert!(
        eventually(soon, || !b.join("Docs/projects/plan.txt").exists()),
        "unlink did not arrive"
    );
    std::fs::remove_dir(a.join("Docs/projects")).unwrap();
    assert!(
        eventually(soon, || !b.join("Docs/projects").exists()),
        "rmdir did not arrive"
    );
}

#[test]
fn a_directory_of_1000_files_lists_on_b() {
    let mesh = Mesh::new();
    let dir = mesh.ma.join("Docs/many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join(format!("file-{i:04}.txt")), format!("file {i}\n")).unwrap();
    }
    assert!(mesh.a_uploaded(), "A did not upload");
    let on_b = mesh.mb.join("Docs/many");
    let listed = || std::fs::read_dir(&on_b).map(|rd| rd.count()).unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(30), || listed() == 1000),
        "B lists {} of 1000",
        listed()
    );
    let names = common::names(&on_b);
    assert_eq!(names.first().map(String::as_str), Some("file-0000.txt"));
    assert_eq!(names.last().map(String::as_str), Some("file-0999.txt"));
    assert_eq!(
        std::fs::read_to_string(on_b.join("file-0500.txt")).unwrap(),
        "file 500\n"
    );
}
