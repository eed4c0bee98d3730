//! Storage that stays bounded, through real mounts: a cache limit that a file four times its
//! size reads through whole, and blocks that must stay (changes not yet uploaded) that the
//! limit never touches.

mod common;

use common::{Cloud, Device, Mesh, eventually, files_under, pseudo_random};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// What a home may hold beyond its cache limit: the metadata store, logs, status.
const METADATA: u64 = 16 * MIB;

/// Bytes of every file in a device home.
fn home_bytes(home: &Path) -> u64 {
    files_under(home)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Samples a home's size every few milliseconds until dropped; keeps the largest seen.
struct Sampler {
    most: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(home: &Path) -> Self {
        let (most, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (m, s, home) = (Arc::clone(&most), Arc::clone(&stop), home.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(home_bytes(&home), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            most,
            stop,
            thread: Some(thread),
        }
    }

    fn most(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.most.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_file_four_times_the_cache_reads_whole_and_both_homes_stay_within_the_limit() {
    let mesh = Mesh::on_with(Cloud::start(), &["--cache-size", "64M"]);
    let data = pseudo_random(256 * MIB as usize, 11);
    std::fs::write(mesh.ma.join("Docs/big.bin"), &data).expect("write on A");
    assert!(mesh.a.uploaded_within(Duration::from_secs(180)));
    // Uploaded, A's copy is one the cloud holds too: A evicts down to its limit.
    assert!(
        eventually(Duration::from_secs(30), || home_bytes(&mesh.a.home)
            <= 64 * MIB + METADATA),
        "A's home holds {} bytes",
        home_bytes(&mesh.a.home)
    );

    let on_b = mesh.mb.join("Docs/big.bin");
    assert!(eventually(Duration::from_secs(30), || std::fs::metadata(
        &on_b
    )
    .is_ok_and(|m| m.len() == data.len() as u64)));
    let sampler = Sampler::start(&mesh.b.home);
    let read = std::fs::read(&on_b).expect("read on B");
    let most = sampler.most();
    assert!(read == data, "B reads the file byte-identical");
    assert!(
        most <= 64 * MIB + METADATA,
        "B's home reached {most} bytes while reading"
    );
    assert!(
        mesh.b
            .reports(Duration::from_secs(10), |s| s.counters.blocks_evicted > 0
                && s.cache.used <= 64 * MIB),
        "{:?}",
        mesh.b.status()
    );
    let status = mesh.b.cli_ok(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("of 64.0 MiB used"), "{text}");
}

#[test]
fn changes_not_yet_uploaded_are_never_evicted() {
    let mut cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    a.create_folder("Docs");
    let ma = a.mount_with(&["--cache-size", "16M"]);
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Docs")
        .is_dir()));
    cloud.kill();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("Docs/offline{i}.bin"),
                pseudo_random(8 * MIB as usize, 2 * i + 1),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(ma.join(name), data).expect("write while the cloud is away");
    }
    // 48 MiB of changes that only this device has, against a 16 MiB limit: the agent
    // keeps them all and says so.
    assert!(
        a.reports(Duration::from_secs(60), |s| s.cache.kept >= 48 * MIB
            && s.cache.used >= 48 * MIB),
        "{:?}",
        a.status()
    );
    let status = a.cli_ok(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("exceeds the cache limit"), "{text}");
    for (name, data) in &files {
        assert!(&std::fs::read(ma.join(name)).expect("read back") == data);
    }

    cloud.restart();
    assert!(
        a.uploaded_within(Duration::from_secs(120)),
        "{:?}\n{}",
        a.status(),
        ma.log_text()
    );
    // Now the cloud holds them, the limit applies again.
    assert!(
        eventually(Duration::from_secs(30), || home_bytes(&a.home)
            <= 16 * MIB + METADATA),
        "A's home holds {} bytes",
        home_bytes(&a.home)
    );
    let b = Device::login(&cloud, "ann", "desktop");
    let mb = b.mount();
    for (name, data) in &files {
        let p = mb.join(name);
        assert!(eventually(Duration::from_secs(30), || p.exists()), "{name}");
        assert!(&std::fs::read(&p).expect("read on B") == data, "{name}");
    }
}
