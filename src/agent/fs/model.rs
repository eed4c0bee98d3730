//! The filesystem model test against `Fs` itself: the random operation sequences of
//! `tests/model.rs` (shared through `model_ops`), each run on device A's `Fs` and on a
//! plain directory on the native disk, with the same result or errno expected from every
//! operation; then A uploads, device B reads the feed, and B must show the same tree and
//! bytes. No FUSE and no network (an in-memory cloud), so thousands of sequences run in
//! well under a minute. `MESHFS_MODEL_CASES` sets how many (2,000 by default).

use super::FsError;
use super::model_ops::{NAMES, Op, Outcome, apply, op, runner, snapshot};
use crate::agent::remote::memory::MemoryCloud;
use crate::agent::testkit::TestDevice;
use proptest::prop_assert_eq;
use proptest::test_runner::TestCaseError;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn outcome(r: Result<Vec<u8>, FsError>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(v),
        Err(e) => Outcome::Err(Some(e.errno())),
    }
}

/// What `model_ops::apply` does on the native disk, done on `d`'s `Fs` under `root`, as
/// the kernel would call it.
async fn apply_fs(d: &TestDevice, root: &str, op: &Op) -> Outcome {
    let p = |i: usize| format!("{root}/{}", NAMES[i]);
    let none = |r: Result<(), FsError>| r.map(|()| Vec::new());
    outcome(match op {
        Op::Write { path, data } => none(d.write(&p(*path), data).await),
        Op::WriteAt { path, offset, data } => {
            none(d.write_at(&p(*path), u64::from(*offset), data).await)
        }
        Op::Append { path, data } => none(d.append(&p(*path), data).await),
        Op::Truncate { path, len } => none(d.truncate(&p(*path), u64::from(*len)).await),
        Op::Mkdir { path } => none(d.mkdir(&p(*path)).map(drop)),
        Op::Rmdir { path } => none(d.rmdir(&p(*path))),
        Op::Unlink { path } => none(d.unlink(&p(*path))),
        Op::Rename { from, to } => none(d.rename(&p(*from), &p(*to))),
        Op::Read { path } => d.read(&p(*path)).await,
        Op::List { path } => {
            let dir = if *path == usize::MAX {
                root.to_string()
            } else {
                p(*path)
            };
            d.list(&dir).map(|mut names| {
                names.sort();
                names.join("\n").into_bytes()
            })
        }
    })
}

/// The whole tree under `root` on `d`: path → Some(content) for files, None for
/// directories (as `model_ops::snapshot` gives it for a native directory).
async fn snapshot_fs(d: &TestDevice, root: &str) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let here = if rel.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{rel}")
        };
        for name in d.list(&here).unwrap_or_default() {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let path = format!("{root}/{child}");
            if d.stat(&path)
                .is_ok_and(|a| a.kind == crate::proto::EntryKind::Dir)
            {
                out.insert(PathBuf::from(&child), None);
                dirs.push(child);
            } else {
                out.insert(PathBuf::from(&child), d.read(&path).await.ok());
            }
        }
    }
    out
}

#[test]
fn random_operation_sequences_on_fs_match_a_native_directory_and_reach_the_other_device() {
    model_run(2000, false);
}

/// The same on a protected home, whose records and links are sealed: A's cache is.
#[test]
fn random_operation_sequences_on_a_sealed_cache_match_too() {
    model_run(300, true);
}

fn model_run(cases: u32, sealed: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cloud = MemoryCloud::new();
    cloud.add_user("ann", 1 << 40);
    cloud.create_folder("ann", "Docs", false);
    let a = match sealed {
        true => TestDevice::sealed(&cloud, "ann", "dev-a"),
        false => TestDevice::new(&cloud, "ann", "dev-a"),
    };
    let b = TestDevice::new(&cloud, "ann", "dev-b");
    rt.block_on(async {
        a.sync().await;
        b.sync().await;
    });
    let reference = tempfile::tempdir().expect("tempdir");
    let mut runner = runner(cases);
    let cases = runner.config().cases;
    let (case, succeeded) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        let name = format!("case-{}", case.get());
        case.set(case.get() + 1);
        let root = format!("Docs/{name}");
        let native = reference.path().join(&name);
        a.mkdir(&root)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        std::fs::create_dir(&native).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (i, op) in ops.iter().enumerate() {
            let want = apply(&native, op);
            let got = rt.block_on(apply_fs(&a, &root, op));
            prop_assert_eq!(&got, &want, "op {} of {}: {:?}", i, name, op);
            succeeded.set(succeeded.get() + u32::from(matches!(want, Outcome::Ok(_))));
        }
        let want = snapshot(&native);
        let (on_a, on_b) = rt
            .block_on(async {
                let on_a = snapshot_fs(&a, &root).await;
                a.upload().await.map_err(|e| e.to_string())?;
                b.sync().await;
                Ok::<_, String>((on_a, snapshot_fs(&b, &root).await))
            })
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(&on_a, &want, "{} on A", name);
        prop_assert_eq!(&on_b, &want, "{} on B", name);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The sequences did real work, not only refusals.
    let succeeded = succeeded.get();
    assert!(succeeded >= cases, "only {succeeded} operations succeeded");
}
