//! A relay on its own (`meshfs relay`), started with only the cloud's JWKS URL, the cloud's
//! CA certificate and a directory for a CA of its own, relays a real device's read: B reads
//! a device-only file that only A holds, and A can be reached only through that relay.

mod common;

use common::{Cloud, Device, bin, eventually, pseudo_random};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A `meshfs relay` process, stopped when dropped.
struct Relay {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start(cloud: &Cloud) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let log = dir.path().join("relay.log");
        let child = Command::new(bin())
            .args(["relay", "--jwks"])
            .arg(format!("{}/.well-known/jwks.json", cloud.url))
            .arg("--cloud-ca")
            .arg(cloud.ca())
            .arg("--dir")
            .arg(dir.path().join("state"))
            .args(["--listen", &addr.to_string()])
            .env("MESHFS_LOG", "meshfs::relay=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start meshfs relay");
        let relay = Self { child, addr, dir };
        assert!(
            eventually(Duration::from_secs(30), || relay
                .log_text()
                .contains("meshfs relay listening")),
            "the relay did not start: {}",
            relay.log_text()
        );
        relay
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_relay_with_only_the_jwks_and_its_own_certificate_relays_a_64_mib_read() {
    let cloud = Cloud::start_with(&["--no-relay"]);
    let relay = Relay::start(&cloud);
    assert_eq!(
        files_in(&relay.state()),
        ["ca-key.pem", "ca.pem"],
        "the relay made a CA of its own and holds nothing else"
    );
    let added = Command::new(bin())
        .args(["cloud", "add-relay", "--data-dir"])
        .arg(&cloud.data)
        .arg(relay.addr.to_string())
        .arg("--ca")
        .arg(relay.state().join("ca.pem"))
        .output()
        .expect("run meshfs cloud add-relay");
    assert!(
        added.status.success(),
        "add-relay: {}",
        String::from_utf8_lossy(&added.stderr)
    );

    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    let b = Device::login(&cloud, "ann", "desktop");
    a.cli_ok(&["folder", "create", "Private", "--device-only"]);
    // A tells peers an address where nothing listens: B reaches it only through the relay.
    let dead = free_addr().to_string();
    let ma = a.mount_with(&["--peer-advertise", &dead]);
    let mb = b.mount();
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Private")
        .is_dir()
        && mb.join("Private").is_dir()));
    let data = pseudo_random(64 * MIB, 13);
    std::fs::write(ma.join("Private/f.bin"), &data).expect("write on A");
    assert!(a.uploaded());
    let on_b = mb.join("Private/f.bin");
    assert!(
        eventually(Duration::from_secs(30), || std::fs::metadata(&on_b)
            .is_ok_and(|m| m.len() == data.len() as u64)),
        "the entry reached B"
    );
    let a_id = a.device_id();
    assert!(
        eventually(Duration::from_secs(30), || relay.log_text().lines().any(
            |l| l.contains("device listening at the relay") && l.contains(&a_id)
        )),
        "A listens at the relay it learned from the cloud: {}",
        relay.log_text()
    );

    let started = Instant::now();
    let got = std::fs::read(&on_b).expect("B's read completes");
    println!(
        "B read 64 MiB from A through the relay in {:?}",
        started.elapsed()
    );
    assert!(got == data, "B reads A's bytes");
    assert!(
        relay.log_text().contains("relay paired two devices"),
        "the blocks went through the relay: {}",
        relay.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || b.counters().blocks_from_peers
            >= 64),
        "the blocks came from A: {:?}",
        b.counters()
    );
}
