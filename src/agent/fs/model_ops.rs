//! The operations of the filesystem model test, shared by the test of `Fs` itself
//! (`agent::fs::model`, thousands of sequences in milliseconds each) and the test through a
//! real mount (`tests/model.rs`, which includes this file): random sequences of them run
//! against the filesystem under test and against a plain directory on the native disk, and
//! must give the same results, errnos included.
//!
//! Only std and proptest here, so that both crates can compile it.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A runner of `MESHFS_MODEL_CASES` sequences (`default` without it), none saved on
/// failure.
pub fn runner(default: u32) -> proptest::test_runner::TestRunner {
    let cases = std::env::var("MESHFS_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })
}

/// Paths the operations pick from: a few names, one level of directories.
pub const NAMES: &[&str] = &["a", "b", "c", "d/a", "d/b", "e/a", "d", "e"];

#[derive(Clone, Debug)]
pub enum Op {
    Write {
        path: usize,
        data: Vec<u8>,
    },
    WriteAt {
        path: usize,
        offset: u16,
        data: Vec<u8>,
    },
    Append {
        path: usize,
        data: Vec<u8>,
    },
    Truncate {
        path: usize,
        len: u16,
    },
    Mkdir {
        path: usize,
    },
    Rmdir {
        path: usize,
    },
    Unlink {
        path: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Read {
        path: usize,
    },
    List {
        path: usize,
    },
}

pub fn op() -> impl Strategy<Value = Op> {
    let path = 0..NAMES.len();
    let data = proptest::collection::vec(any::<u8>(), 0..3000);
    prop_oneof![
        (path.clone(), data.clone()).prop_map(|(path, data)| Op::Write { path, data }),
        (path.clone(), any::<u16>(), data.clone()).prop_map(|(path, offset, data)| Op::WriteAt {
            path,
            offset,
            data
        }),
        (path.clone(), data).prop_map(|(path, data)| Op::Append { path, data }),
        (path.clone(), any::<u16>()).prop_map(|(path, len)| Op::Truncate { path, len }),
        path.clone().prop_map(|path| Op::Mkdir { path }),
        path.clone().prop_map(|path| Op::Rmdir { path }),
        path.clone().prop_map(|path| Op::Unlink { path }),
        (path.clone(), path.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        path.clone().prop_map(|path| Op::Read { path }),
        prop_oneof![Just(usize::MAX), path].prop_map(|path| Op::List { path }),
    ]
}

/// What an operation gave: its output, or the errno.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Ok(Vec<u8>),
    Err(Option<i32>),
}

pub fn outcome(r: std::io::Result<Vec<u8>>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(v),
        Err(e) => Outcome::Err(e.raw_os_error()),
    }
}

pub fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |i: usize| root.join(NAMES[i]);
    outcome(match op {
        Op::Write { path, data } => std::fs::write(p(*path), data).map(|()| vec![]),
        Op::WriteAt { path, offset, data } => std::fs::OpenOptions::new()
            .write(true)
            .open(p(*path))
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(u64::from(*offset)))?;
                f.write_all(data)?;
                Ok(vec![])
            }),
        Op::Append { path, data } => std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p(*path))
            .and_then(|mut f| f.write_all(data))
            .map(|()| vec![]),
        Op::Truncate { path, len } => std::fs::OpenOptions::new()
            .write(true)
            .open(p(*path))
            .and_then(|f| f.set_len(u64::from(*len)))
            .map(|()| vec![]),
        Op::Mkdir { path } => std::fs::create_dir(p(*path)).map(|()| vec![]),
        Op::Rmdir { path } => std::fs::remove_dir(p(*path)).map(|()| vec![]),
        Op::Unlink { path } => std::fs::remove_file(p(*path)).map(|()| vec![]),
        Op::Rename { from, to } => std::fs::rename(p(*from), p(*to)).map(|()| vec![]),
        Op::Read { path } => std::fs::File::open(p(*path)).and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            Ok(v)
        }),
        Op::List { path } => {
            let dir = if *path == usize::MAX {
                root.to_path_buf()
            } else {
                p(*path)
            };
            std::fs::read_dir(dir).and_then(|rd| {
                let mut names: Vec<String> = rd
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<_, _>>()?;
                names.sort();
                Ok(names.join("\n").into_bytes())
            })
        }
    })
}

/// The whole tree under `root`: path → Some(content) for files, None for directories.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).ok());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}
