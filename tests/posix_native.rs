//! POSIX details the mesh must share with a native disk, each checked side by side: the
//! same operations run in a directory on the native file system (a tempdir) and in device
//! A's mount (folder "Docs"), and what each shows is compared. Where the change must reach
//! the other device too, device B's mount is checked once A has uploaded.

mod common;

use common::{Cloud, Device, Mesh, Mount, SOON, eventually, output_ok, pseudo_random, text};
use rustix::fs::{AtFlags, CWD, FallocateFlags, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as `stat` gives it: seconds and nanoseconds since the epoch.
type Time = (i64, i64);

fn mtime(m: &std::fs::Metadata) -> Time {
    (m.mtime(), m.mtime_nsec())
}

fn atime(m: &std::fs::Metadata) -> Time {
    (m.atime(), m.atime_nsec())
}

fn ctime(m: &std::fs::Metadata) -> Time {
    (m.ctime(), m.ctime_nsec())
}

fn lstat(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

fn now() -> Time {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

fn plus(t: Time, ms: i64) -> Time {
    let ns = t.0 * 1_000_000_000 + t.1 + ms * 1_000_000;
    (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// Waits until the clock is past `t` by more than the kernel's timestamp granularity (file
/// times come from a clock that may lag the precise one by a tick), so that a time set now
/// differs from `t`. Polls the clock through `eventually`.
fn clock_past(t: Time) {
    let past = plus(t, 20);
    assert!(eventually(SOON, || now() > past), "the clock stands still");
}

fn spec((tv_sec, tv_nsec): Time) -> Timespec {
    Timespec { tv_sec, tv_nsec }
}

/// `utimensat(2)` on `path`, following a symlink.
fn set_times(path: &Path, atime: Timespec, mtime: Timespec) -> std::io::Result<()> {
    let times = Timestamps {
        last_access: atime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::empty()).map_err(std::io::Error::from)
}

const OMIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: UTIME_OMIT,
};
const NOW: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: UTIME_NOW,
};

/// An operation's result as the caller sees it: success, or the errno.
fn errno<T>(r: std::io::Result<T>) -> Result<(), i32> {
    r.map(drop).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// The native side: a directory on the local disk, next to the mesh's folder.
struct Sides {
    mesh: Mesh,
    native: tempfile::TempDir,
}

impl Sides {
    fn new() -> Self {
        Sides {
            mesh: Mesh::new(),
            native: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `dir` on the native disk and in A's folder, made on both.
    fn dirs(&self, dir: &str) -> [(&'static str, PathBuf); 2] {
        let both = [
            ("native", self.native.path().join(dir)),
            ("mesh", self.mesh.ma.join(&format!("Docs/{dir}"))),
        ];
        for (_, d) in &both {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        both
    }
}

/// Runs `cmd`, returning its output.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()))
}

/// The first lines of `s`, for a failure message.
fn head(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let more = lines.len().saturating_sub(n);
    let mut out = lines[..lines.len().min(n)].join("\n");
    if more > 0 {
        out += &format!("\n... and {more} more lines");
    }
    out
}

/// Each regular file and symlink below `root`: its size and mtime (one that goes away
/// meanwhile is left out).
fn file_times(root: &Path) -> BTreeMap<PathBuf, (u64, Time)> {
    common::files_under(root)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            Some((rel, (m.len(), mtime(&m))))
        })
        .collect()
}

/// Where two maps of files differ, at most a few lines of it.
fn differences(
    want: &BTreeMap<PathBuf, (u64, Time)>,
    got: &BTreeMap<PathBuf, (u64, Time)>,
) -> String {
    let mut out = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            Some(g) if g == w => {}
            Some(g) => out.push(format!("{}: (size, mtime) {g:?}, want {w:?}", p.display())),
            None => out.push(format!("{}: missing", p.display())),
        }
    }
    out.extend(
        got.keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| format!("{}: not in the source", p.display())),
    );
    head(&out.join("\n"), 10)
}

// ---- 1. times that programs set are kept ----

/// `cp -p` sets each copy's times through its open descriptor (`futimens`) before it
/// closes it: the commit at close must keep them, on A and on B.
#[test]
fn cp_p_into_the_mount_keeps_the_mtimes_on_both_devices() {
    let sides = Sides::new();
    let src = sides.native.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut files = Vec::new();
    for i in 0..5u64 {
        let path = src.join(format!("old-{i}.dat"));
        std::fs::write(&path, pseudo_random(1000 + 3000 * i as usize, i)).unwrap();
        let when = (
            1_300_000_000 + 86_400 * 97 * i as i64,
            123_456_789 * i as i64 % 1_000_000_000,
        );
        set_times(&path, spec(when), spec(when)).unwrap();
        files.push(path);
    }
    let want = file_times(&src);
    for (side, dest) in sides.dirs("copy") {
        output_ok(
            "cp -p",
            run(Command::new("cp").arg("-p").args(&files).arg(&dest)),
        );
        let got = file_times(&dest);
        assert!(
            got == want,
            "cp -p on {side}:\n{}",
            differences(&want, &got)
        );
    }
    assert!(sides.mesh.a_uploaded(), "{}", sides.mesh.ma.log_text());
    let on_b = sides.mesh.mb.join("Docs/copy");
    let same = eventually(SOON, || file_times(&on_b) == want);
    assert!(
        same,
        "cp -p on B:\n{}",
        differences(&want, &file_times(&on_b))
    );
}

/// A tar archive (`ROOT/archive.tar`) of a native tree (`ROOT/tree`) of a few hundred
/// files with varied old mtimes, in subdirectories, with a symlink.
fn tar_source(root: &Path) -> PathBuf {
    let tree = root.join("tree");
    for i in 0..300u64 {
        let dir = tree
            .join(format!("d{}", i % 7))
            .join(if i % 3 == 0 { "sub" } else { "" });
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{i:03}.txt"));
        std::fs::write(&path, pseudo_random(100 + (i as usize * 37) % 5000, i)).unwrap();
        let when = (1_100_000_000 + 1_000_003 * i as i64, 0);
        set_times(&path, spec(when), spec(when)).unwrap();
    }
    std::os::unix::fs::symlink("d0/f000.txt", tree.join("link")).unwrap();
    let archive = root.join("archive.tar");
    output_ok(
        "tar c",
        run(Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&tree)
            .arg(".")),
    );
    archive
}

/// `tar --compare` of `archive` against `dir`: its exit status and what it printed.
fn tar_compare(archive: &Path, dir: &Path) -> (bool, String) {
    let out = run(Command::new("tar")
        .arg("-df")
        .arg(archive)
        .arg("-C")
        .arg(dir));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.success() && said.is_empty(), said)
}

/// `tar x` sets each file's mtime after writing it; `tar d` at once finds no difference,
/// on A, and on B once it has the files.
#[test]
fn tar_x_into_the_mount_then_tar_d_at_once_finds_no_difference_on_both_devices() {
    let sides = Sides::new();
    let archive = tar_source(sides.native.path());
    for (side, dest) in sides.dirs("x") {
        output_ok(
            "tar x",
            run(Command::new("tar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&dest)),
        );
        let (same, said) = tar_compare(&archive, &dest);
        assert!(
            same,
            "tar d on {side} right after tar x:\n{}",
            head(&said, 20)
        );
    }
    assert!(sides.mesh.a_uploaded(), "{}", sides.mesh.ma.log_text());
    let on_b = sides.mesh.mb.join("Docs/x");
    let mut said = String::new();
    let same = eventually(Duration::from_secs(30), || {
        let (same, s) = tar_compare(&archive, &on_b);
        said = s;
        same
    });
    assert!(same, "tar d on B:\n{}", head(&said, 20));
}

/// `rsync -a --stats --itemize-changes SRC/ DEST/`: how many regular files it transferred,
/// and the files it itemized.
fn rsync(src: &Path, dest: &Path) -> (u64, String) {
    let out = run(Command::new("rsync")
        .args(["-a", "--stats", "--itemize-changes"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dest.display())));
    let stdout = output_ok("rsync -a", out);
    let transferred = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Number of regular files transferred: "))
        .and_then(|n| n.replace(',', "").trim().parse().ok())
        .unwrap_or_else(|| panic!("rsync printed no count of files transferred:\n{stdout}"));
    let itemized: Vec<&str> = stdout.lines().filter(|l| l.starts_with(">f")).collect();
    (transferred, head(&itemized.join("\n"), 10))
}

/// rsync skips a file whose size and mtime match: after `rsync -a` of 3,000 small files
/// into the mount, a second run transfers nothing, on A, and on B once it has them.
#[test]
fn rsync_a_run_twice_into_the_mount_transfers_nothing_the_second_time_on_both_devices() {
    let sides = Sides::new();
    let src = sides.native.path().join("src");
    for i in 0..3000u64 {
        let dir = src
            .join(format!("a{}", i % 10))
            .join(format!("b{}", (i / 10) % 10));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{i:04}"));
        std::fs::write(&path, format!("file {i}\n").repeat(1 + i as usize % 20)).unwrap();
        let when = (1_000_000_000 + 97_003 * i as i64, 0);
        set_times(&path, spec(when), spec(when)).unwrap();
    }
    for (side, dest) in sides.dirs("r") {
        let (first, _) = rsync(&src, &dest);
        assert_eq!(first, 3000, "the first rsync on {side} copies every file");
        let (again, itemized) = rsync(&src, &dest);
        assert_eq!(
            again, 0,
            "the second rsync on {side} transferred:\n{itemized}"
        );
    }
    assert!(
        sides.mesh.a.uploaded_within(Duration::from_secs(300)),
        "{}",
        sides.mesh.ma.log_text()
    );
    // B has every file at its size (a file's entry brings its mtime with its name).
    let sizes = |root: &Path| -> BTreeMap<PathBuf, u64> {
        file_times(root)
            .into_iter()
            .map(|(p, (len, _))| (p, len))
            .collect()
    };
    let want = sizes(&src);
    let on_b = sides.mesh.mb.join("Docs/r");
    assert!(
        eventually(Duration::from_secs(120), || sizes(&on_b) == want),
        "B has {} of the 3,000 files",
        sizes(&on_b).len()
    );
    let (on_b_transferred, itemized) = rsync(&src, &on_b);
    assert_eq!(
        on_b_transferred, 0,
        "rsync into B's mount transferred:\n{itemized}"
    );
}

// ---- 2. names longer than 255 bytes ----

/// Each operation on a name of 256 bytes: ENAMETOOLONG from every one, as on ext4. A name
/// of 255 bytes works.
#[test]
fn a_name_longer_than_255_bytes_gets_enametoolong_from_every_operation() {
    let sides = Sides::new();
    let long = "n".repeat(256);
    type Op = Box<dyn Fn(&Path, &Path) -> Result<(), i32>>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "open(O_CREAT)",
            Box::new(|_, l| errno(std::fs::File::create(l))),
        ),
        ("open", Box::new(|_, l| errno(std::fs::File::open(l)))),
        ("mkdir", Box::new(|_, l| errno(std::fs::create_dir(l)))),
        ("stat", Box::new(|_, l| errno(std::fs::metadata(l)))),
        (
            "lstat",
            Box::new(|_, l| errno(std::fs::symlink_metadata(l))),
        ),
        ("unlink", Box::new(|_, l| errno(std::fs::remove_file(l)))),
        ("rmdir", Box::new(|_, l| errno(std::fs::remove_dir(l)))),
        (
            "rename from",
            Box::new(|d, l| errno(std::fs::rename(l, d.join("short")))),
        ),
        (
            "rename to",
            Box::new(|d, l| errno(std::fs::rename(d.join("to-rename"), l))),
        ),
        (
            "symlink",
            Box::new(|_, l| errno(std::os::unix::fs::symlink("target", l))),
        ),
        (
            "link",
            Box::new(|d, l| errno(std::fs::hard_link(d.join("to-link"), l))),
        ),
    ];
    let mut results = Vec::new();
    for (side, dir) in sides.dirs("names") {
        for f in ["to-rename", "to-link"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let got: Vec<Result<(), i32>> = ops
            .iter()
            .map(|(_, op)| op(&dir, &dir.join(&long)))
            .collect();
        let boundary = errno(std::fs::write(dir.join("m".repeat(255)), b"255"));
        results.push((side, got, boundary));
    }
    let [(_, native, native_255), (_, mesh, mesh_255)] = &results[..] else {
        unreachable!("two sides")
    };
    assert!(
        native.iter().all(|r| *r == Err(libc::ENAMETOOLONG)) && native_255.is_ok(),
        "native: {native:?}, 255 bytes: {native_255:?}"
    );
    let wrong: Vec<String> = ops
        .iter()
        .zip(mesh)
        .filter(|(_, got)| **got != Err(libc::ENAMETOOLONG))
        .map(|((name, _), got)| format!("{name}: {}", describe(*got)))
        .collect();
    assert!(
        wrong.is_empty(),
        "on the mesh, with a name of 256 bytes (want ENAMETOOLONG):\n{}",
        wrong.join("\n")
    );
    assert_eq!(*mesh_255, Ok(()), "a name of 255 bytes on the mesh");
}

fn describe(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "succeeded".into(),
        Err(e) => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

// ---- 3. directory and file ctimes ----

/// An operation that changes an entry of a directory.
type Change = Box<dyn FnOnce() -> std::io::Result<()>>;

/// Sets `dir`'s mtime to an old value, waits for the clock to pass its ctime, runs `op`,
/// and says what did not move: both times must have.
fn check_dir_times(dir: &Path, op: impl FnOnce() -> std::io::Result<()>) -> Result<(), String> {
    const OLD: Time = (1_000_000_000, 0);
    set_times(dir, OMIT, spec(OLD)).map_err(|e| format!("utimensat: {e}"))?;
    let before = ctime(&lstat(dir));
    clock_past(before);
    op().map_err(|e| format!("the operation failed: {e}"))?;
    let after = lstat(dir);
    let mut stayed = Vec::new();
    if mtime(&after) <= OLD {
        stayed.push(format!("mtime stayed {:?}", mtime(&after)));
    }
    if ctime(&after) <= before {
        stayed.push(format!("ctime stayed {:?}", ctime(&after)));
    }
    if stayed.is_empty() {
        Ok(())
    } else {
        Err(stayed.join(", "))
    }
}

/// Creating, removing or renaming an entry changes its directory: the directory's mtime and
/// ctime both move.
#[test]
fn a_directorys_mtime_and_ctime_move_when_an_entry_is_created_removed_or_renamed() {
    let sides = Sides::new();
    let mut wrong = Vec::new();
    for (side, root) in sides.dirs("dirs") {
        let d = |name: &str| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let cases: Vec<(&str, PathBuf, Change)> = vec![
            ("create", d("create"), {
                let p = root.join("create/new");
                Box::new(move || std::fs::File::create(p).map(drop))
            }),
            ("mkdir", d("mkdir"), {
                let p = root.join("mkdir/sub");
                Box::new(move || std::fs::create_dir(p))
            }),
            ("unlink", d("unlink"), {
                let p = root.join("unlink/f");
                std::fs::write(&p, b"x").unwrap();
                Box::new(move || std::fs::remove_file(p))
            }),
            ("rmdir", d("rmdir"), {
                let p = root.join("rmdir/sub");
                std::fs::create_dir(&p).unwrap();
                Box::new(move || std::fs::remove_dir(p))
            }),
            ("rename within", d("within"), {
                let (from, to) = (root.join("within/a"), root.join("within/b"));
                std::fs::write(&from, b"x").unwrap();
                Box::new(move || std::fs::rename(from, to))
            }),
            ("rename out of", d("out"), {
                let (from, to) = (root.join("out/a"), d("out-elsewhere").join("a"));
                std::fs::write(&from, b"x").unwrap();
                Box::new(move || std::fs::rename(from, to))
            }),
            ("rename into", d("into"), {
                let (from, to) = (d("into-elsewhere").join("a"), root.join("into/a"));
                std::fs::write(&from, b"x").unwrap();
                Box::new(move || std::fs::rename(from, to))
            }),
            ("symlink", d("symlink"), {
                let p = root.join("symlink/l");
                Box::new(move || std::os::unix::fs::symlink("target", p))
            }),
        ];
        for (what, dir, op) in cases {
            if let Err(e) = check_dir_times(&dir, op) {
                wrong.push(format!("{side}: {what}: {e}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a directory whose entries changed:\n{}",
        wrong.join("\n")
    );
}

/// chmod, truncate and rename change a file's inode: its ctime moves past what it was.
#[test]
fn a_files_ctime_moves_on_chmod_truncate_and_rename() {
    let sides = Sides::new();
    let mut wrong = Vec::new();
    for (side, dir) in sides.dirs("ctime") {
        let f = dir.join("f");
        std::fs::write(&f, vec![7u8; 5000]).unwrap();
        let cases: [(&str, &dyn Fn() -> std::io::Result<PathBuf>); 3] = [
            ("chmod", &|| {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640))
                    .map(|()| f.clone())
            }),
            ("truncate", &|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)?
                    .set_len(100)
                    .map(|()| f.clone())
            }),
            ("rename", &|| {
                let g = dir.join("g");
                std::fs::rename(&f, &g).map(|()| g)
            }),
        ];
        for (what, op) in cases {
            let before = ctime(&lstat(&f));
            clock_past(before);
            match op() {
                Ok(now_at) => {
                    let after = ctime(&lstat(&now_at));
                    if after <= before {
                        wrong.push(format!("{side}: {what}: ctime stayed {after:?}"));
                    }
                }
                Err(e) => wrong.push(format!("{side}: {what} failed: {e}")),
            }
        }
    }
    assert!(wrong.is_empty(), "a file's ctime:\n{}", wrong.join("\n"));
}

// ---- 4. utimensat ----

/// `utimensat` with each of UTIME_NOW and UTIME_OMIT for either time, and with explicit
/// times: each time does what it was told, independently of the other, and the atime set
/// is the atime read back.
#[test]
fn utimensat_honours_utime_now_and_utime_omit_for_each_time_and_keeps_the_atime_set() {
    const A1: Time = (1_111_111_111, 111_000_000);
    const M1: Time = (1_222_222_222, 222_000_000);
    const A2: Time = (1_333_333_333, 333_000_000);
    const M2: Time = (1_444_444_444, 444_000_000);
    /// What a time should read after the call.
    #[derive(Clone, Copy, Debug)]
    enum Want {
        Is(Time),
        Now,
    }
    use Want::{Is, Now};
    let cases: [(&str, Timespec, Timespec, Want, Want); 7] = [
        ("explicit both", spec(A1), spec(M1), Is(A1), Is(M1)),
        ("atime NOW, mtime OMIT", NOW, OMIT, Now, Is(M1)),
        ("atime OMIT, mtime NOW", OMIT, NOW, Is(A1), Now),
        ("both NOW", NOW, NOW, Now, Now),
        ("both OMIT", OMIT, OMIT, Is(A1), Is(M1)),
        ("atime explicit, mtime OMIT", spec(A2), OMIT, Is(A2), Is(M1)),
        ("atime OMIT, mtime explicit", OMIT, spec(M2), Is(A1), Is(M2)),
    ];
    let sides = Sides::new();
    let mut wrong = Vec::new();
    for (side, dir) in sides.dirs("utimens") {
        let f = dir.join("t");
        std::fs::write(&f, b"times").unwrap();
        for (what, a, m, want_a, want_m) in cases {
            // Each case starts from the explicit times A1 and M1.
            set_times(&f, spec(A1), spec(M1)).unwrap();
            let before = now();
            if let Err(e) = set_times(&f, a, m) {
                wrong.push(format!("{side}: {what}: {e}"));
                continue;
            }
            let after = now();
            let st = lstat(&f);
            // "Now" is a time read from the clock during the call, allowing for the
            // kernel's coarse clock (a tick behind) and for a clock of its own.
            let fits = |got: Time, want: Want| match want {
                Is(t) => got == t,
                Now => plus(before, -1000) <= got && got <= plus(after, 1000),
            };
            for (name, got, want) in [("atime", atime(&st), want_a), ("mtime", mtime(&st), want_m)]
            {
                if !fits(got, want) {
                    wrong.push(format!(
                        "{side}: {what}: {name} reads {got:?}, want {want:?}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "utimensat:\n{}", wrong.join("\n"));
}

// ---- 5. link counts ----

/// A directory's link count is 2 plus its subdirectories; a file unlinked while open has
/// no links left, as `fstat` on the descriptor shows.
#[test]
fn link_counts_are_two_plus_subdirectories_and_zero_for_an_open_unlinked_file() {
    let sides = Sides::new();
    let mut seen = Vec::new();
    for (side, dir) in sides.dirs("links") {
        let parent = dir.join("parent");
        std::fs::create_dir(&parent).unwrap();
        let empty = lstat(&parent).nlink();
        for s in ["one", "two", "three"] {
            std::fs::create_dir(parent.join(s)).unwrap();
        }
        std::fs::write(parent.join("file"), b"not a directory").unwrap();
        let three = lstat(&parent).nlink();
        std::fs::remove_dir(parent.join("two")).unwrap();
        let two = lstat(&parent).nlink();

        let path = dir.join("open-then-unlinked");
        std::fs::write(&path, b"still open").unwrap();
        let open = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let unlinked = open.metadata().unwrap().nlink();
        seen.push((side, [empty, three, two, unlinked]));
    }
    let want = [2, 5, 4, 0];
    for (side, got) in seen {
        assert_eq!(
            got, want,
            "{side}: links of [an empty directory, with 3 subdirectories and a file, after \
             rmdir of one, an open file after unlink]"
        );
    }
}

// ---- 6. file size limit ----

/// `ftruncate` past the largest size the file system takes fails with EFBIG and leaves
/// the file as it was.
#[test]
fn truncate_past_the_largest_file_size_fails_with_efbig() {
    let sides = Sides::new();
    for (side, dir) in sides.dirs("big") {
        let path = dir.join("f");
        std::fs::write(&path, b"12345").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let got = errno(f.set_len(1 << 62));
        assert_eq!(
            got.map_err(|e| std::io::Error::from_raw_os_error(e).to_string()),
            Err(std::io::Error::from_raw_os_error(libc::EFBIG).to_string()),
            "{side}: ftruncate to 2^62 bytes"
        );
        drop(f);
        assert_eq!(lstat(&path).len(), 5, "{side}: the size after the refusal");
    }
}

// ---- 7. statfs ----

/// What `statvfs` says of the mount and what the cloud says of the user's storage.
#[derive(Debug)]
struct Figures {
    frsize: u64,
    blocks: u64,
    bfree: u64,
    quota: u64,
    quota_used: u64,
}

impl Figures {
    fn of(mesh: &Mesh) -> Self {
        let st = rustix::fs::statvfs(mesh.ma.join("Docs")).expect("statvfs");
        let out = mesh.a.cli_ok(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let figure = |k: &str| {
            status[k]
                .as_u64()
                .unwrap_or_else(|| panic!("status has no {k}: {status}"))
        };
        Figures {
            frsize: st.f_frsize,
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            quota: figure("quota"),
            quota_used: figure("quota_used"),
        }
    }

    /// The total is the quota and the blocks in use are the bytes the cloud counts as
    /// used, each to the nearest whole fragment (f_frsize).
    fn agree(&self) -> bool {
        let near = |bytes: u64, want: u64| bytes.abs_diff(want) < self.frsize.max(1);
        self.frsize > 0
            && self.bfree <= self.blocks
            && near(self.blocks * self.frsize, self.quota)
            && near((self.blocks - self.bfree) * self.frsize, self.quota_used)
    }
}

/// `statfs` on the mount reports the user's quota as its size and the bytes the cloud
/// holds for the user as used, not constants.
#[test]
fn statfs_reports_the_quota_and_the_bytes_used_in_the_cloud() {
    let mesh = Mesh::new();
    mesh.cloud.set_quota("ann", 100_000_000);
    for i in 0..3 {
        std::fs::write(
            mesh.ma.join(&format!("Docs/part{i}.bin")),
            pseudo_random(1 << 20, 50 + 2 * i),
        )
        .unwrap();
    }
    assert!(mesh.a_uploaded(), "{}", mesh.ma.log_text());
    let used = Figures::of(&mesh).quota_used;
    assert!(used > 0, "the cloud counts no bytes used");
    // The agent may take a while to learn new figures from the cloud.
    let agree = eventually(Duration::from_secs(30), || Figures::of(&mesh).agree());
    let f = Figures::of(&mesh);
    assert!(
        agree,
        "statvfs: f_blocks {} × f_frsize {} = {} (quota {}); in use (f_blocks - f_bfree) × \
         f_frsize = {} (used in the cloud {})",
        f.blocks,
        f.frsize,
        f.blocks * f.frsize,
        f.quota,
        f.blocks.saturating_sub(f.bfree) * f.frsize,
        f.quota_used
    );
}

// ---- 8. fallocate ----

/// What `fallocate` did on one side: for each call, its result, then the file's size and
/// whether its bytes are the ones wanted.
#[derive(Debug, PartialEq)]
struct Allocated {
    /// `fallocate -l 5M` making a new file (wanted: 5 MiB of zeros).
    command: (Result<(), String>, u64, bool),
    /// fallocate(2), mode 0, over bytes [0, 64 KiB) of a 100,000-byte file (wanted: its
    /// bytes as they were).
    inside: (Result<(), String>, u64, bool),
    /// The same over [90,000, 190,000) (wanted: the old bytes, then zeros).
    across: (Result<(), String>, u64, bool),
}

/// `fallocate` (mode 0) reserves and extends as on a native disk: `fallocate -l 5M` makes a
/// 5 MiB file of zeros, and within or past an existing file's end it keeps the content.
#[test]
fn fallocate_reserves_and_extends_like_a_native_disk() {
    let old = pseudo_random(100_000, 8);
    let mut extended = old.clone();
    extended.resize(190_000, 0);
    let sides = Sides::new();
    let mut seen = Vec::new();
    for (side, dir) in sides.dirs("alloc") {
        let fresh = dir.join("fresh");
        let out = run(Command::new("fallocate").args(["-l", "5M"]).arg(&fresh));
        let made = std::fs::read(&fresh).unwrap_or_default();
        let command = (
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out.stderr))
            },
            made.len() as u64,
            made.len() == 5 << 20 && made.iter().all(|&b| b == 0),
        );

        let existing = dir.join("existing");
        std::fs::write(&existing, &old).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&existing)
            .unwrap();
        // fallocate(2) with mode 0, which posix_fallocate asks first.
        let allocate = |offset, len| {
            rustix::fs::fallocate(&f, FallocateFlags::empty(), offset, len)
                .map_err(|e| std::io::Error::from(e).to_string())
        };
        let after = |want: &[u8]| {
            let data = std::fs::read(&existing).unwrap();
            (data.len() as u64, data == want)
        };
        let r = allocate(0, 65_536);
        let ((len, kept), r2) = (after(&old), allocate(90_000, 100_000));
        drop(f);
        let (len2, right) = after(&extended);
        seen.push((
            side,
            Allocated {
                command,
                inside: (r, len, kept),
                across: (r2, len2, right),
            },
        ));
    }
    let want = Allocated {
        command: (Ok(()), 5 << 20, true),
        inside: (Ok(()), 100_000, true),
        across: (Ok(()), 190_000, true),
    };
    for (side, got) in seen {
        assert_eq!(got, want, "{side}: fallocate");
    }
}

// ---- 9. allow-other ----

/// Runs `args` as user `nobody` (uid and gid 65534, no supplementary groups).
fn as_nobody(args: &[&str], path: &Path) -> Output {
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .arg(path))
}

/// Whether the command failed with "Permission denied".
fn denied(out: &Output) -> bool {
    !out.status.success() && text(&out.stderr).contains("Permission denied")
}

/// One device of its own cloud with folder "Docs", mounted with `flags` on a mount point
/// every local user can reach. Fields drop in order: the mount first, then its directory.
struct Alone {
    m: Mount,
    _public: tempfile::TempDir,
    _dev: Device,
    _cloud: Cloud,
}

impl Alone {
    fn mount(flags: &[&str]) -> Self {
        let cloud = Cloud::start();
        cloud.add_user("ann");
        let dev = Device::login(&cloud, "ann", "laptop");
        dev.create_folder("Docs");
        let public = common::public_dir();
        let m = dev.mount_in(public.path(), flags);
        assert!(eventually(SOON, || m.join("Docs").is_dir()));
        Alone {
            m,
            _public: public,
            _dev: dev,
            _cloud: cloud,
        }
    }
}

/// Without `--allow-other`, only the device's owner and root reach the mount: another
/// local user cannot even list it (though it can list the directory the mount is in).
#[test]
fn by_default_another_user_cannot_list_the_mount() {
    let alone = Alone::mount(&[]);
    let parent = alone.m.path.parent().expect("the mount point's directory");
    let beside = as_nobody(&["ls"], parent);
    assert!(
        beside.status.success(),
        "nobody cannot even list the mount point's directory: {}",
        text(&beside.stderr)
    );
    let out = as_nobody(&["ls"], &alone.m.path);
    assert!(
        denied(&out),
        "nobody listing the mount: {:?} {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// What user nobody gets in `dir` (which must be open to all) after root wrote a file of
/// mode 0644 and one of mode 0600 there: [`ls`, `cat` of the first, `cat` of the second
/// (refused with "Permission denied"?)], each with whether it succeeded.
fn what_nobody_gets(dir: &Path) -> [(bool, String); 3] {
    for (name, mode) in [("open.txt", 0o644), ("secret.txt", 0o600)] {
        std::fs::write(dir.join(name), name).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let list = as_nobody(&["ls"], dir);
    let open = as_nobody(&["cat"], &dir.join("open.txt"));
    let secret = as_nobody(&["cat"], &dir.join("secret.txt"));
    [
        (list.status.success(), text(&list.stdout)),
        (open.status.success(), text(&open.stdout)),
        (secret.status.success(), denied(&secret).to_string()),
    ]
}

/// With `--allow-other`, other local users get in, and the mode bits decide what they may
/// read, as on a native disk: a file of mode 0644 reads, one of mode 0600 is refused.
#[test]
fn with_allow_other_another_user_gets_in_and_mode_bits_decide() {
    let want = [
        (true, "open.txt\nsecret.txt\n".to_string()),
        (true, "open.txt".to_string()),
        (false, "true".to_string()),
    ];
    let what = "nobody's [ls, cat of a 0644 file, cat of a 0600 file (denied?)]";
    let native = common::public_dir();
    assert_eq!(what_nobody_gets(native.path()), want, "native: {what}");

    let alone = Alone::mount(&["--allow-other"]);
    let docs = alone.m.join("Docs");
    // The folder itself is open to all (a folder root may not take a chmod).
    let _ = std::fs::set_permissions(&docs, std::fs::Permissions::from_mode(0o755));
    assert_eq!(what_nobody_gets(&docs), want, "mesh: {what}");
}
