//! Crash consistency through a real mount: a random workload (create, write at offsets,
//! truncate, fsync, rename, unlink) runs on device A while A's agent is killed with SIGKILL
//! at random moments, often in the middle of an operation, and restarted each time.
//!
//! The promise checked after every restart: A's tree is the state after some prefix of the
//! operations, and that prefix holds every operation up to the last `close`, `fsync` or
//! `truncate` that returned (each makes the journal durable). Operations after it may be
//! lost (a rename not yet flushed) but never half-applied, and a staged write is never
//! lost once its `close` or `fsync` returned. At the end the cloud's copy, read through
//! device B's mount (with peers off, so from the cloud), is the same tree, and no version
//! the cloud ever published mixes the content of two committed versions.

mod common;

use common::{Cloud, Mesh, eventually, is_mounted, pseudo_random};
use meshfs::agent::remote::Remote;
use meshfs::proto::BlockHash;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const OPS: usize = 1000;
const KILLS: usize = 20;
const NAMES: [&str; 10] = [
    "a.bin",
    "b.txt",
    "c",
    "d.db",
    "e.log",
    "f.bin",
    "sub/g.bin",
    "sub/h",
    "sub/i.txt",
    "sub/j.db",
];

/// A small deterministic generator (xorshift), so a failing seed can be run again with
/// `MESHFS_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// What the mount holds: each file's path under the folder, its size and the SHA-256 of
/// its bytes.
type Tree = BTreeMap<String, (usize, [u8; 32])>;

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[derive(Clone, Debug)]
enum Op {
    /// `open(O_CREAT | O_WRONLY [| O_TRUNC])`, one `pwrite`, optionally `fsync`, `close`.
    Write {
        path: String,
        offset: u64,
        len: usize,
        seed: u64,
        trunc: bool,
        fsync: bool,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    /// `fsync` of a file opened for reading: makes the journal durable.
    Fsync {
        path: String,
    },
}

impl Op {
    /// Whether the operation, once it returned, makes everything before it durable.
    fn is_barrier(&self) -> bool {
        matches!(
            self,
            Op::Write { .. } | Op::Truncate { .. } | Op::Fsync { .. }
        )
    }

    fn random(rng: &mut Rng, files: &BTreeMap<String, Vec<u8>>) -> Op {
        let existing: Vec<&str> = files.keys().map(String::as_str).collect();
        let roll = rng.below(100);
        if existing.is_empty() || roll < 45 {
            let path = rng.pick(&NAMES).to_string();
            let size = files.get(&path).map_or(0, |c| c.len() as u64);
            // Small writes mostly; some span blocks (1 MiB) or grow the file past them.
            let len = match rng.below(10) {
                0 => 1 + rng.below(3 << 20) as usize,
                1..=3 => 1 + rng.below(256 << 10) as usize,
                _ => 1 + rng.below(8 << 10) as usize,
            };
            return Op::Write {
                offset: rng.below(size + (64 << 10)),
                len,
                seed: rng.next(),
                trunc: rng.below(8) == 0,
                fsync: rng.below(3) == 0,
                path,
            };
        }
        let path = rng.pick(&existing).to_string();
        match roll {
            45..=59 => Op::Truncate {
                len: rng.below(files[&path].len() as u64 * 2 + 1),
                path,
            },
            60..=79 => Op::Rename {
                from: path,
                to: rng.pick(&NAMES).to_string(),
            },
            80..=89 => Op::Unlink { path },
            _ => Op::Fsync { path },
        }
    }

    /// Runs the operation on the mount.
    fn run(&self, root: &Path) -> std::io::Result<()> {
        match self {
            Op::Write {
                path,
                offset,
                len,
                seed,
                trunc,
                fsync,
            } => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(*trunc)
                    .open(root.join(path))?;
                f.write_all_at(&pseudo_random(*len, *seed), *offset)?;
                if *fsync {
                    f.sync_all()?;
                }
                close(f)
            }
            Op::Truncate { path, len } => std::fs::OpenOptions::new()
                .write(true)
                .open(root.join(path))?
                .set_len(*len),
            Op::Rename { from, to } => std::fs::rename(root.join(from), root.join(to)),
            Op::Unlink { path } => std::fs::remove_file(root.join(path)),
            Op::Fsync { path } => std::fs::File::open(root.join(path))?.sync_all(),
        }
    }

    /// The model after the operation; also the states it may leave when interrupted (a
    /// file created but not yet written, or truncated by the kernel's `O_TRUNC` before the
    /// write).
    fn apply(&self, files: &mut BTreeMap<String, Vec<u8>>) -> Vec<Tree> {
        let mut partial = Vec::new();
        match self {
            Op::Write {
                path,
                offset,
                len,
                seed,
                trunc,
                ..
            } => {
                let content = files.entry(path.clone()).or_default();
                if *trunc || content.is_empty() {
                    content.clear();
                    partial.push(tree_of(files));
                }
                let content = files.entry(path.clone()).or_default();
                let end = *offset as usize + len;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*offset as usize..end].copy_from_slice(&pseudo_random(*len, *seed));
            }
            Op::Truncate { path, len } => {
                if let Some(c) = files.get_mut(path) {
                    c.resize(*len as usize, 0);
                }
            }
            Op::Rename { from, to } => {
                if let Some(c) = files.remove(from) {
                    files.insert(to.clone(), c);
                }
            }
            Op::Unlink { path } => {
                files.remove(path);
            }
            Op::Fsync { .. } => {}
        }
        partial
    }
}

/// `close(2)`, whose result (the commit's: meshfs commits a written file when it is
/// closed) `File`'s drop would throw away.
fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken out of an owned `File`, so it is open and closed once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn tree_of(files: &BTreeMap<String, Vec<u8>>) -> Tree {
    files
        .iter()
        .map(|(p, c)| (p.clone(), (c.len(), sha(c))))
        .collect()
}

/// Every file under `root` (the folder), with its bytes.
fn read_files(root: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for dir in ["", "sub"] {
        for e in std::fs::read_dir(root.join(dir))? {
            let e = e?;
            if e.file_type()?.is_file() {
                let rel = Path::new(dir).join(e.file_name());
                out.insert(rel.to_string_lossy().into_owned(), std::fs::read(e.path())?);
            }
        }
    }
    Ok(out)
}

fn describe(t: &Tree) -> String {
    t.iter()
        .map(|(p, (len, h))| format!("{p}:{len}:{}", hex::encode(&h[..4])))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Watches the cloud's change feed of the folder and keeps every version it publishes.
fn watch_published(
    home: &Path,
    folder: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<meshfs::proto::Entry>> {
    let home = meshfs::agent::home::Home::new(home);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let client = meshfs::agent::client::connect(&home).expect("client");
            let (mut seen, mut since) = (Vec::new(), 0);
            while !stop.load(Ordering::SeqCst) {
                match client.changes(&folder, since, 1).await {
                    Ok(batch) => {
                        since = batch.next;
                        seen.extend(batch.changes);
                    }
                    // A polling loop: the cloud did not answer (it may be busy); ask again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            seen
        })
    })
}

#[test]
fn a_random_workload_survives_twenty_sigkills_and_reaches_the_cloud_and_the_other_device() {
    let seed = std::env::var("MESHFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_u64);
    eprintln!("crash workload seed {seed} (rerun with MESHFS_CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);
    // MESHFS_CRASH_TRACE=1 prints every operation and its result.
    let trace = std::env::var_os("MESHFS_CRASH_TRACE").is_some();
    let mut mesh = Mesh::on_with(Cloud::start(), &["--no-peers"]);
    let root = mesh.ma.join("Docs");
    std::fs::create_dir(root.join("sub")).expect("mkdir");
    let folder = mesh.a.folder_id("Docs");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_published(&mesh.a.home, folder.clone(), Arc::clone(&stop));

    let mut kills: Vec<usize> = (0..KILLS)
        .map(|_| 1 + rng.below(OPS as u64 - 1) as usize)
        .collect();
    kills.sort_unstable();
    kills.dedup();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // States the mount may show after a crash: from the last barrier on.
    let mut since_barrier: Vec<Tree> = vec![tree_of(&files)];
    // Contents some committed version had (a published version must be one of them).
    let mut committed: HashSet<[u8; 32]> = HashSet::from([sha(b"")]);
    let (mut failed_ops, mut lost_ops) = (0, 0);

    for i in 0..OPS {
        let op = Op::random(&mut rng, &files);
        let kill = kills.binary_search(&i).is_ok();
        let killer = kill.then(|| {
            let pid = mesh.ma.pid().expect("agent pid");
            let delay = Duration::from_micros(rng.below(15_000));
            // The signal is sent with kill(2) itself: a forked `kill` command would inherit
            // the descriptor the workload is writing through, and its exec would close it,
            // which is a `close` of that file (and commits it) in the middle of the write.
            std::thread::spawn(move || {
                // Part of the workload: the kill lands at a random moment of the operation.
                std::thread::sleep(delay);
                let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            })
        });
        let ran = op.run(&root);
        if trace {
            eprintln!(
                "op {i}{}: {op:?} -> {ran:?}",
                if kill { " (killed)" } else { "" }
            );
        }
        let mut after = files.clone();
        let partial = op.apply(&mut after);
        for t in partial.iter().chain([&tree_of(&after)]) {
            committed.extend(t.values().map(|(_, h)| *h));
        }
        match (&ran, kill) {
            (Ok(()), _) => {
                files = after.clone();
                if op.is_barrier() {
                    since_barrier.clear();
                }
                since_barrier.push(tree_of(&files));
            }
            (Err(e), false) => panic!(
                "op {i} {op:?} failed without a crash (seed {seed}): {e}\nA's log:\n{}",
                mesh.ma.log_text()
            ),
            (Err(_), true) => failed_ops += 1,
        }
        let Some(killer) = killer else {
            continue;
        };
        killer.join().expect("killer");
        if !eventually(Duration::from_secs(10), || !is_mounted(&mesh.ma.path)) {
            let out = std::process::Command::new("sh")
                .args(["-c", "for p in $(pgrep -f 'meshfs mount'); do echo \"== $p $(cat /proc/$p/status | grep State)\"; for t in /proc/$p/task/*; do echo \"$t $(cat $t/wchan) $(head -3 $t/stack 2>/dev/null | tr '\\n' ' ')\"; done; done; ps -ef | grep -E 'fusermount|meshfs' | grep -v grep"])
                .output()
                .expect("diagnostics");
            panic!(
                "a dead mount was left behind after kill {i} ({op:?}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        mesh.ma.restart();
        let found = read_files(&root).unwrap_or_else(|e| {
            panic!(
                "reading A's tree after the restart at op {i} (seed {seed}): {e}\nA's log:\n{}",
                mesh.ma.log_text()
            )
        });
        let actual = tree_of(&found);
        let mut allowed = since_barrier.clone();
        if ran.is_err() {
            allowed.extend(partial);
            allowed.push(tree_of(&after));
        }
        let at = allowed.iter().position(|t| *t == actual);
        if at.is_none() {
            eprintln!("A's log:\n{}", mesh.ma.log_text());
        }
        assert!(
            at.is_some(),
            "after the kill at op {i} ({op:?}, {}), A shows a state no prefix of the workload \
             since the last barrier explains (seed {seed}):\n  found   {}\n  allowed {}",
            if ran.is_ok() {
                "it had returned"
            } else {
                "it was cut"
            },
            describe(&actual),
            allowed
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n          ")
        );
        if ran.is_ok() && at != Some(since_barrier.len() - 1) {
            lost_ops += 1;
        }
        files = found;
        since_barrier = vec![actual];
    }
    eprintln!(
        "{OPS} ops, {} kills; {failed_ops} cut in flight, {lost_ops} restarts dropped \
         operations that had returned after the last barrier",
        kills.len()
    );

    // The cloud's copy, seen through B (peers off: every byte from the cloud), is A's.
    assert!(
        mesh.a.uploaded_within(Duration::from_secs(120)),
        "A did not finish uploading: {}",
        mesh.ma.log_text()
    );
    let final_tree = tree_of(&files);
    assert_eq!(tree_of(&read_files(&root).expect("A's tree")), final_tree);
    let on_b = mesh.mb.join("Docs");
    let same = eventually(Duration::from_secs(30), || {
        read_files(&on_b).is_ok_and(|f| tree_of(&f) == final_tree)
    });
    assert!(
        same,
        "B's copy differs (seed {seed}):\n  B {}\n  A {}\nA's log:\n{}",
        describe(&tree_of(&read_files(&on_b).unwrap_or_default())),
        describe(&final_tree),
        mesh.ma.log_text()
    );

    // Every version the cloud published is some committed content, never a mix.
    stop.store(true, Ordering::SeqCst);
    let published = watcher.join().expect("watcher");
    let files_published: Vec<_> = published
        .iter()
        .filter(|e| !e.deleted && e.kind == meshfs::proto::EntryKind::File)
        .collect();
    assert!(
        files_published.len() > 50,
        "the watcher saw {} versions",
        files_published.len()
    );
    let client = meshfs::agent::client::connect(&meshfs::agent::home::Home::new(&mesh.a.home))
        .expect("client");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut blocks: HashMap<BlockHash, bytes::Bytes> = HashMap::new();
    for e in files_published {
        let mut content = Vec::with_capacity(e.size as usize);
        for b in &e.manifest {
            let data = blocks.entry(b.hash).or_insert_with(|| {
                let data = rt
                    .block_on(client.get_block(&folder, &b.hash))
                    .expect("a published block is in the cloud");
                assert!(b.hash.matches(&data));
                data
            });
            content.extend_from_slice(data);
        }
        assert_eq!(content.len() as u64, e.size, "{} v{}", e.name, e.version);
        assert!(
            committed.contains(&sha(&content)),
            "the cloud published {} v{} with content no committed version had",
            e.name,
            e.version
        );
    }
    drop(mesh);
}
