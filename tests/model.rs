//! Model-based check: random sequences of file operations run against a real meshfs mount
//! and against a plain directory on the native disk. Every operation must give the same
//! result (or the same errno) on both, and afterwards the second device must show the same
//! tree with the same bytes. The operations are the ones `agent::fs::model` runs against
//! `Fs` itself.

mod common;

#[path = "../src/agent/fs/model_ops.rs"]
mod model_ops;

use common::{Mesh, eventually};
use model_ops::{Outcome, apply, op, runner, snapshot};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::time::Duration;

#[test]
fn random_operation_sequences_match_a_native_directory_and_reach_the_other_device() {
    let mesh = Mesh::new();
    let reference = tempfile::tempdir().unwrap();
    let case = std::sync::atomic::AtomicU32::new(0);
    let succeeded = std::sync::atomic::AtomicU32::new(0);
    let mut runner = runner(64);
    let cases = runner.config().cases;
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        let name = format!(
            "case-{}",
            case.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let on_mesh = mesh.ma.join(&format!("Docs/{name}"));
        let native = reference.path().join(&name);
        std::fs::create_dir(&on_mesh).map_err(|e| TestCaseError::fail(e.to_string()))?;
        std::fs::create_dir(&native).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (i, op) in ops.iter().enumerate() {
            let (want, got) = (apply(&native, op), apply(&on_mesh, op));
            prop_assert_eq!(&got, &want, "op {} of {}: {:?}", i, name, op);
            if matches!(want, Outcome::Ok(_)) {
                succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        prop_assert_eq!(snapshot(&on_mesh), snapshot(&native), "{} on A", name);
        // The other device converges on the same tree.
        let on_b = mesh.mb.join(&format!("Docs/{name}"));
        let want = snapshot(&native);
        let converged = eventually(Duration::from_secs(20), || snapshot(&on_b) == want);
        prop_assert!(
            converged,
            "{} on B: {:?} != {:?}",
            name,
            snapshot(&on_b).keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nagent A log:\n{}", mesh.ma.log_text());
    }
    // The sequences did real work, not only refusals.
    let ok = succeeded.into_inner();
    println!(
        "{ok} operations succeeded over {} sequences",
        case.into_inner()
    );
    assert!(ok >= cases, "only {ok} operations succeeded");
}
