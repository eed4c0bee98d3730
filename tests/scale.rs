//! Several cloud processes on one PostgreSQL database and one S3 bucket: the devices of one
//! user on different processes see each other's writes at once, and when a process dies
//! mid-upload, nothing committed is lost and the devices carry on through the other.
//!
//! These run in `scripts/test.sh`'s second pass, which starts the servers and sets
//! `MESHFS_TEST_POSTGRES` and `MESHFS_TEST_S3`; on the embedded engines (one SQLite file,
//! one process) they say so and end.

mod common;

use common::{
    Cloud, Device, Mount, PASSWORD, SOON, engines, eventually, login_command, pseudo_random,
    resolve_from, run_with_stdin,
};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn on_shared_engines() -> bool {
    let on = engines::on_postgres();
    if !on {
        eprintln!("skipped: needs MESHFS_TEST_POSTGRES and MESHFS_TEST_S3 (scripts/test.sh)");
    }
    on
}

fn reads(path: &Path, want: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|d| d == want)
}

/// Writes 48 MiB at `name` on `writer`'s mount `mw`, kills the cloud process `dying` once
/// the upload has begun, and waits until the file is uploaded (through the other process)
/// and reads the same on `other`; returns what was written.
fn upload_while_dying(
    writer: &Device,
    mw: &Mount,
    other: &Mount,
    dying: &mut Cloud,
    name: &str,
    seed: u64,
) -> Vec<u8> {
    let data = pseudo_random(48 * MIB, seed);
    let before = writer.counters().blocks_uploaded;
    std::fs::write(mw.join(name), &data).unwrap();
    assert!(eventually(SOON, || writer.counters().blocks_uploaded > before));
    dying.kill();
    assert!(
        writer.uploaded_within(Duration::from_secs(120)),
        "{}",
        mw.log_text()
    );
    assert!(
        eventually(Duration::from_secs(60), || reads(&other.join(name), &data)),
        "{name} did not reach the other device through the other process"
    );
    data
}

#[test]
fn two_cloud_processes_serve_one_user_and_each_carries_on_when_the_other_dies() {
    if !on_shared_engines() {
        return;
    }
    let mut first = Cloud::start();
    first.add_user("ann");
    let mut second = first.another_process();
    // The second has a data directory of its own, as on another machine: the CA the devices
    // pin comes to it from the database.
    assert_ne!(first.data, second.data);
    assert_eq!(
        std::fs::read(first.data.join("ca.pem")).unwrap(),
        std::fs::read(second.data.join("ca.pem")).unwrap()
    );
    let (one, two) = (first.url.clone(), second.url.clone());
    let a = Device::login_to(&first, &[&one, &two], "ann", "laptop");
    let b = Device::login_to(&first, &[&two, &one], "ann", "desktop");
    a.create_folder("Docs");
    let ma = a.mount();
    let mb = b.mount();
    assert!(eventually(SOON, || ma.join("Docs").is_dir()
        && mb.join("Docs").is_dir()));

    // A write on A (through the first process) shows on B (long-polling the second).
    std::fs::write(ma.join("Docs/hello.txt"), b"from A").unwrap();
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || reads(
            &mb.join("Docs/hello.txt"),
            b"from A"
        )),
        "A's write did not reach B within 5 s"
    );
    println!("A's write reached B in {:?}", started.elapsed());

    // The first process dies while A uploads: A moves to the second, and nothing is lost.
    let big_a = upload_while_dying(&a, &ma, &mb, &mut first, "Docs/a.bin", 1);
    std::fs::write(mb.join("Docs/while-one-is-down.txt"), b"B").unwrap();
    assert!(eventually(SOON, || reads(
        &ma.join("Docs/while-one-is-down.txt"),
        b"B"
    )));

    // The first comes back and the second dies while B uploads: B moves to the first.
    first.restart();
    let big_b = upload_while_dying(&b, &mb, &ma, &mut second, "Docs/b.bin", 2);

    // Both devices see every committed write, and the cloud holds them all.
    for m in [&ma, &mb] {
        assert!(reads(&m.join("Docs/hello.txt"), b"from A"));
        assert!(reads(&m.join("Docs/a.bin"), &big_a));
        assert!(reads(&m.join("Docs/b.bin"), &big_b));
        assert!(reads(&m.join("Docs/while-one-is-down.txt"), b"B"));
    }
    let (entries, _) = a.cloud_changes("Docs", 0);
    let mut names: Vec<_> = entries
        .iter()
        .filter(|e| !e.deleted)
        .map(|e| e.name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["a.bin", "b.bin", "hello.txt", "while-one-is-down.txt"]
    );
}

/// A cloud name with two addresses, a process on each (as round-robin DNS spreads a cloud
/// over machines): devices logged in with that one URL carry on through the other address
/// while the process at one is down, first one and then the other, and lose nothing.
#[test]
fn a_cloud_name_with_two_addresses_serves_on_while_the_process_at_one_is_down() {
    if !on_shared_engines() {
        return;
    }
    let mut first = Cloud::start_in(None, "127.0.0.1:0", &["--tls-name", "mesh.test"]);
    first.add_user("ann");
    let port = first.url.rsplit(':').next().unwrap().to_string();
    let mut second = first.another_process_at(&format!("127.0.0.2:{port}"));
    let names = tempfile::tempdir().unwrap();
    let hosts = names.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 mesh.test\n127.0.0.2 mesh.test\n").unwrap();
    let mut lookup = std::process::Command::new("getent");
    resolve_from(&mut lookup, Some(&hosts));
    let found = lookup.args(["ahostsv4", "mesh.test"]).output().unwrap();
    let found = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.contains("127.0.0.1") && found.contains("127.0.0.2"),
        "mesh.test did not resolve to both addresses (install Debian's libnss-wrapper): {found}"
    );
    let url = format!("https://mesh.test:{port}");
    let a = Device::login_resolving(&first, &url, "ann", "laptop", &hosts);
    let b = Device::login_resolving(&first, &url, "ann", "desktop", &hosts);
    a.create_folder("Docs");
    let ma = a.mount();
    let mb = b.mount();
    assert!(eventually(SOON, || ma.join("Docs").is_dir()
        && mb.join("Docs").is_dir()));

    // Whichever address the devices use, one of the two deaths is of their process.
    let big_a = upload_while_dying(&a, &ma, &mb, &mut first, "Docs/a.bin", 3);
    first.restart();
    let big_b = upload_while_dying(&b, &mb, &ma, &mut second, "Docs/b.bin", 4);
    for m in [&ma, &mb] {
        assert!(reads(&m.join("Docs/a.bin"), &big_a));
        assert!(reads(&m.join("Docs/b.bin"), &big_b));
    }
}

/// `meshfs login` as ann at `url` with `password`; its output.
fn login_at(cloud: &Cloud, url: &str, password: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    run_with_stdin(
        &mut login_command(None, cloud, &[url], "ann", "guess", &home),
        password,
    )
}

#[test]
fn failed_logins_at_one_cloud_process_count_at_the_other() {
    if !on_shared_engines() {
        return;
    }
    let first = Cloud::start();
    first.add_user("ann");
    let second = first.another_process();
    for _ in 0..5 {
        let out = login_at(&first, &first.url, "not the password");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401"), "{err}");
    }
    let out = login_at(&first, &second.url, PASSWORD);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("429") && err.contains("too many failed logins"),
        "the second process counts the first's failures: {err}"
    );
}
