//! Heightened security mode through real mounts: a protected home keeps no plain key and
//! no plain content, and opens only with its passphrase.

mod common;

use common::{Cloud, Device, files_under, pseudo_random};
use std::path::{Path, PathBuf};
use std::process::Stdio;

const MIB: usize = 1 << 20;

/// A 32-byte marker no file would hold by chance.
fn marker(i: usize) -> [u8; 32] {
    let mut m = [0u8; 32];
    let text = format!("~meshfs-marker-{i:04}-qzxjvwk7@!~~");
    m.copy_from_slice(&text.as_bytes()[..32]);
    m
}

/// Every file under `dir` (all of the device home: raw files, sled's, the sealed secrets)
/// that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap_or_default();
            memchr::memmem::find(&data, needle).is_some()
        })
        .collect()
}

fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes()).unwrap();
    path
}

/// `meshfs mount` of `dev`'s home with the passphrase in `passphrase_file`, expected to
/// refuse: its exit and what it printed.
fn mount_refused(dev: &Device, passphrase_file: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = common::meshfs(None)
        .arg("mount")
        .arg(dir.path())
        .arg("--home")
        .arg(&dev.home)
        .env("MESHFS_PASSPHRASE_FILE", passphrase_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a mount with a wrong passphrase ran");
    assert!(!common::is_mounted(dir.path()));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The files written, with their contents.
struct Written(Vec<(String, Vec<u8>)>);

impl Written {
    /// Small files and a 64 MiB one, each block of which carries a marker; files and a
    /// renamed directory whose names carry markers.
    fn make() -> Self {
        let mut files = Vec::new();
        for i in 0..16 {
            let mut data = format!("small file {i}: ").into_bytes();
            data.extend_from_slice(&marker(i));
            data.extend_from_slice(&pseudo_random(1000 + 37 * i, i as u64));
            files.push((format!("Docs/small-{i}.txt"), data));
        }
        let mut big = pseudo_random(64 * MIB, 99);
        for k in 0..64 {
            let at = k * MIB + 4096 + k;
            big[at..at + 32].copy_from_slice(&marker(100 + k));
        }
        files.push(("Docs/big.bin".into(), big));
        Self(files)
    }

    /// The markers in contents, and those in names (of files, and of a directory before
    /// and after a rename).
    fn markers() -> impl Iterator<Item = [u8; 32]> {
        (0..16).chain(100..164).chain(200..210).map(marker)
    }

    fn write_under(&self, root: &Path) {
        for (name, data) in &self.0 {
            std::fs::write(root.join(name), data).unwrap();
        }
        let text = |i| String::from_utf8(marker(i).to_vec()).unwrap();
        let dir = root.join(format!("Docs/dir-{}", text(200)));
        std::fs::create_dir(&dir).unwrap();
        for i in 201..209 {
            std::fs::write(dir.join(format!("named-{}.txt", text(i))), b"named").unwrap();
        }
        std::fs::rename(&dir, root.join(format!("Docs/moved-{}", text(209)))).unwrap();
    }

    fn check_under(&self, root: &Path) {
        for (name, data) in &self.0 {
            let got = std::fs::read(root.join(name)).unwrap();
            assert!(got == *data, "{name} reads back different");
        }
        let text = |i| String::from_utf8(marker(i).to_vec()).unwrap();
        let moved = root.join(format!("Docs/moved-{}", text(209)));
        let mut names = common::names(&moved);
        names.sort();
        let want: Vec<String> = (201..209)
            .map(|i| format!("named-{}.txt", text(i)))
            .collect();
        assert_eq!(names, want);
    }
}

/// A protected home, after files are written and uploaded and the agent is stopped, holds
/// no plain block and no plain key anywhere; it mounts only with its passphrase, reads
/// every byte back from its sealed cache, and a changed passphrase replaces the old one.
#[test]
fn a_protected_home_keeps_nothing_plain_and_opens_only_with_its_passphrase() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let secrets = tempfile::tempdir().unwrap();
    let right = write_secret(secrets.path(), "right", "correct horse battery staple");
    let wrong = write_secret(secrets.path(), "wrong", "incorrect horse");
    let newer = write_secret(secrets.path(), "newer", "a newer passphrase");
    let mut a = Device::login_protected(&cloud, "ann", "laptop", &right);
    a.create_folder("Docs");

    let home = a.home();
    assert!(!home.key().exists(), "no plain key file");
    let key = home.unlock().expect("unlock").key.clone();
    let der = meshfs::crypto::keys::private_der(&key).unwrap();
    let written = Written::make();
    {
        let mut m = a.mount();
        assert!(common::eventually(common::SOON, || m.join("Docs").is_dir()));
        written.write_under(&m.path);
        assert!(a.uploaded_within(std::time::Duration::from_secs(120)));
        written.check_under(&m.path);
        // A file open for writing keeps its staging file, sealed too.
        let mut open = std::fs::File::create(m.join("Docs/open.txt")).unwrap();
        std::io::Write::write_all(&mut open, &marker(300).repeat(100)).unwrap();
        open.sync_all().unwrap();
        let staging = files_under(&a.home.join("cache/staging"));
        assert!(!staging.is_empty(), "the open file has a staging file");
        let found = files_holding(&a.home.join("cache/staging"), &marker(300));
        assert!(found.is_empty(), "a write in plain in {found:?}");
        drop(open);
        m.stop();
    }

    let blocks = files_under(&a.home.join("cache/blocks"));
    assert!(
        blocks.len() >= 64,
        "the blocks are cached: {}",
        blocks.len()
    );
    for m in Written::markers() {
        let found = files_holding(&a.home, &m);
        assert!(found.is_empty(), "a marker in plain on disk: {found:?}");
    }
    assert!(
        files_holding(&a.home, &der[..64]).is_empty(),
        "the key in plain"
    );
    assert!(files_holding(&a.home, b"PRIVATE KEY").is_empty());

    let refused = mount_refused(&a, &wrong);
    assert!(refused.contains("passphrase is wrong"), "{refused}");

    let mut m = a.mount();
    written.check_under(&m.path);
    assert_eq!(
        a.fresh_status().counters.blocks_fetched,
        0,
        "every byte came from the sealed cache"
    );
    m.stop();

    a.cli_ok(&[
        "passphrase",
        "change",
        "--new-passphrase-file",
        newer.to_str().unwrap(),
    ]);
    let refused = mount_refused(&a, &right);
    assert!(
        refused.contains("passphrase is wrong"),
        "the old one: {refused}"
    );
    a.passphrase_file = Some(newer);
    let m = a.mount();
    written.check_under(&m.path);
}

/// `meshfs protect` on a home logged in plain, with files written and uploaded: nothing is
/// lost, and afterwards no marker, name or key is left plain anywhere under the home.
#[test]
fn protecting_a_home_with_data_loses_nothing_and_leaves_nothing_plain() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let secrets = tempfile::tempdir().unwrap();
    let right = write_secret(secrets.path(), "right", "correct horse battery staple");
    let mut a = Device::login(&cloud, "ann", "laptop");
    a.create_folder("Docs");
    let written = Written::make();
    {
        let mut m = a.mount();
        assert!(common::eventually(common::SOON, || m.join("Docs").is_dir()));
        written.write_under(&m.path);
        assert!(a.uploaded_within(std::time::Duration::from_secs(120)));
        m.stop();
    }
    assert!(
        !files_holding(&a.home, &marker(0)).is_empty(),
        "a plain home holds its markers, where the search finds them"
    );
    let out = a.cli(&["protect", "--passphrase-file", right.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    a.passphrase_file = Some(right);

    assert!(!a.home().key().exists(), "no plain key file");
    for m in Written::markers() {
        let found = files_holding(&a.home, &m);
        assert!(found.is_empty(), "a marker in plain on disk: {found:?}");
    }
    let m = a.mount();
    written.check_under(&m.path);
    assert_eq!(
        a.fresh_status().counters.blocks_fetched,
        0,
        "every byte came from the sealed cache"
    );
}
