//! Device to device, through real mounts: content that never goes to the cloud is read on
//! another device over the encrypted peer channel, directly or through the relay; past the
//! quota the cloud keeps only what fits; a tampered channel never yields wrong bytes.

mod common;

use common::hand::{Hand, listener_of};
use common::{Cloud, Device, Mesh, eventually, pseudo_random};
use meshfs::agent::remote::Remote;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MIB: usize = 1 << 20;

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// The bytes of the blocks the cloud holds for one folder.
fn cloud_bytes_of(cloud: &Cloud, folder: &str) -> u64 {
    cloud
        .blocks()
        .iter()
        .filter(|b| b.folder == folder)
        .map(|b| b.len)
        .sum()
}

/// Waits until `path` on a mount shows `len` bytes.
fn appears(path: &Path, len: u64) -> bool {
    eventually(Duration::from_secs(30), || {
        std::fs::metadata(path).is_ok_and(|m| m.len() == len)
    })
}

#[test]
fn a_device_only_file_is_read_byte_identical_on_b_from_a_over_a_direct_channel() {
    let mesh = Mesh::new();
    mesh.a
        .cli_ok(&["folder", "create", "Private", "--device-only"]);
    let private = mesh.a.folder_id("Private");
    assert!(eventually(Duration::from_secs(20), || mesh
        .mb
        .join("Private")
        .is_dir()));

    let data = pseudo_random(256 * MIB, 41);
    let want: [u8; 32] = Sha256::digest(&data).into();
    std::fs::write(mesh.ma.join("Private/big.bin"), &data).expect("write on A");
    drop(data);
    assert!(mesh.a.uploaded_within(Duration::from_secs(120)));

    let on_b = mesh.mb.join("Private/big.bin");
    assert!(appears(&on_b, 256 * MIB as u64), "the entry reached B");
    assert_eq!(sha256_file(&on_b), want, "B reads A's bytes");

    // Reports are written each second.
    assert!(
        eventually(Duration::from_secs(5), || mesh
            .b
            .counters()
            .blocks_from_peers
            >= 256
            && mesh.a.counters().blocks_served >= 256),
        "B's blocks came from A: B {:?}, A {:?}",
        mesh.b.counters(),
        mesh.a.counters()
    );
    assert!(
        cloud_bytes_of(&mesh.cloud, &private) == 0,
        "no block of a device-only folder is in the cloud"
    );

    // A stops cleanly and withdraws its address, so peers stop dialing it. `device list`
    // shows where peers reach a device: ID NAME STATE ADDRESS LAST SEEN.
    let a_id = mesh.a.device_id();
    let address = |mesh: &Mesh| {
        let out = mesh.b.cli_ok(&["device", "list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with(&a_id))
            .unwrap_or_default();
        line.split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        address(&mesh).starts_with("127.0.0.1:"),
        "{}",
        address(&mesh)
    );
    let mut mesh = mesh;
    mesh.ma.stop();
    assert_eq!(
        address(&mesh),
        "-",
        "a stopped agent withdraws its peer address"
    );
}

#[test]
fn past_the_quota_the_cloud_keeps_what_fits_and_b_reads_the_rest_from_a() {
    let mesh = Mesh::new();
    mesh.cloud.set_quota("ann", 10 * MIB as u64);
    let docs = mesh.a.folder_id("Docs");

    let mut files = Vec::new();
    for i in 0..3 {
        let data = pseudo_random(10 * MIB, 100 + i);
        let name = format!("Docs/part{i}.bin");
        std::fs::write(mesh.ma.join(&name), &data).expect("write on A");
        files.push((name, <[u8; 32]>::from(Sha256::digest(&data))));
    }
    assert!(mesh.a.uploaded_within(Duration::from_secs(120)));

    let stored = cloud_bytes_of(&mesh.cloud, &docs);
    assert!(
        stored <= 10 * MIB as u64,
        "the cloud stores {stored} bytes, over the 10 MiB quota"
    );
    assert!(stored > 0, "blocks are uploaded while the quota lasts");
    for (name, want) in &files {
        let on_b = mesh.mb.join(name);
        assert!(appears(&on_b, 10 * MIB as u64), "{name} listed on B");
        assert_eq!(&sha256_file(&on_b), want, "{name} reads right on B");
    }
    assert!(eventually(Duration::from_secs(5), || mesh
        .b
        .counters()
        .blocks_from_peers
        > 0));
    let status = mesh.a.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("of 10 MB used"),
        "status shows the quota: {text}"
    );
}

/// A TCP proxy in front of A's peer listener that, once `after` bytes went from A to B,
/// flips one bit (or, with `cut`, closes both sides). Each new connection is passed through
/// untouched once the fault was made.
struct Tamper {
    addr: SocketAddr,
    done: Arc<AtomicBool>,
}

impl Tamper {
    fn start(target: SocketAddr, after: usize, cut: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let done = Arc::new(AtomicBool::new(false));
        let faulted = Arc::clone(&done);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c2, &mut &s2);
                });
                let faulted = Arc::clone(&faulted);
                std::thread::spawn(move || {
                    let (mut from, mut to) = (server, client);
                    let mut seen = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if !faulted.load(Ordering::SeqCst) && seen + n > after {
                            faulted.store(true, Ordering::SeqCst);
                            if cut {
                                let _ = to.write_all(&buf[..after - seen]);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                            buf[after - seen] ^= 0x10;
                        }
                        seen += n;
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Tamper { addr, done }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A flipped bit or a cut stream between A and B: the channel closes, and B's read
/// completes from another source (here the cloud) with the right bytes, never wrong ones.
#[test]
fn a_flipped_bit_or_a_cut_stream_closes_the_channel_and_the_read_completes_elsewhere() {
    for cut in [false, true] {
        let cloud = Cloud::start_with(&["--no-relay"]);
        cloud.add_user("ann");
        let a = Device::login(&cloud, "ann", "laptop");
        let b = Device::login(&cloud, "ann", "desktop");
        a.create_folder("Docs");
        let port = free_port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tamper = Tamper::start(listen, 256 * 1024, cut);
        let ma = a.mount_with(&[
            "--peer-listen",
            &listen.to_string(),
            "--peer-advertise",
            &tamper.addr.to_string(),
        ]);
        let mb = b.mount();
        let data = pseudo_random(8 * MIB, 7);
        assert!(eventually(Duration::from_secs(20), || ma
            .join("Docs")
            .is_dir()));
        std::fs::write(ma.join("Docs/f.bin"), &data).expect("write on A");
        assert!(a.uploaded());
        let on_b = mb.join("Docs/f.bin");
        assert!(appears(&on_b, data.len() as u64));
        // The cloud lists A at its proxied address, so B, which reads its peer list again
        // before it gives up on peers, can go through the proxy.
        let proxied = tamper.addr.to_string();
        assert!(
            eventually(Duration::from_secs(10), || {
                let list = b.cli_ok(&["device", "list"]);
                String::from_utf8_lossy(&list.stdout).contains(&proxied)
            }),
            "A never advertised {proxied}"
        );
        let got = std::fs::read(&on_b).expect("B's read completes");
        assert!(got == data, "B never sees wrong bytes (cut: {cut})");
        assert!(
            tamper.done.load(Ordering::SeqCst) || b.counters().blocks_from_peers == 0,
            "the fault was injected, or B never went through A"
        );
        assert_eq!(
            b.counters().blocks_rejected,
            0,
            "no wrong block got past the channel"
        );
        drop((ma, mb));
    }
}

/// Whether any 64-byte run of `plain` occurs in `seen`. Every such run holds one whole
/// 32-byte chunk of `plain` at a multiple of 32, so it is enough to look for those chunks at
/// every offset of `seen` (a bitmap of their first 8 bytes screens, a map confirms).
fn shares_a_64_byte_run(plain: &[u8], seen: &[u8]) -> Option<usize> {
    const BITS: usize = 1 << 28;
    let key = |w: &[u8]| u64::from_le_bytes(w[..8].try_into().unwrap());
    let mut bitmap = vec![0u64; BITS / 64];
    let mut chunks: std::collections::HashMap<u64, Vec<usize>> = Default::default();
    for (i, c) in plain.chunks_exact(32).enumerate() {
        let k = key(c);
        let bit = (k as usize) % BITS;
        bitmap[bit / 64] |= 1 << (bit % 64);
        chunks.entry(k).or_default().push(i * 32);
    }
    (0..seen.len().saturating_sub(31)).find(|&j| {
        let k = key(&seen[j..]);
        let bit = (k as usize) % BITS;
        bitmap[bit / 64] & (1 << (bit % 64)) != 0
            && chunks
                .get(&k)
                .is_some_and(|at| at.iter().any(|&p| plain[p..p + 32] == seen[j..j + 32]))
    })
}

#[test]
fn the_scan_finds_a_planted_run_and_nothing_in_noise() {
    let plain = pseudo_random(MIB, 3);
    let mut noise = pseudo_random(MIB, 4);
    assert_eq!(shares_a_64_byte_run(&plain, &noise), None);
    noise[1000..1064].copy_from_slice(&plain[77..141]);
    assert!(shares_a_64_byte_run(&plain, &noise).is_some());
}

/// B has no route to A (separate network namespaces that reach only the cloud's): a
/// device-only file still reads byte-identical on B, through the relay. The relay's
/// transcript of every byte it forwarded holds no 64-byte run of the file, and no session
/// secret (nor half of one) from the agents' key logs, whose keys do open B's first frame.
#[test]
fn through_the_relay_when_b_has_no_route_to_a_and_the_relay_sees_only_ciphertext() {
    let net = common::Isolated::new();
    let transcripts = tempfile::tempdir().expect("tempdir");
    let ip = common::Isolated::CLOUD_IP;
    let cloud = Cloud::start_in(
        Some(&net.cloud),
        &format!("{ip}:0"),
        &[
            "--tls-name",
            ip,
            "--relay-transcript",
            transcripts.path().to_str().unwrap(),
        ],
    );
    cloud.add_user("ann");
    let a = Device::login_in(&cloud, "ann", "laptop", Some(&net.a));
    let b = Device::login_in(&cloud, "ann", "desktop", Some(&net.b));
    a.cli_ok(&["folder", "create", "Private", "--device-only"]);
    // Both agents write their sessions' secrets to key logs, to look for them below.
    let key_logs = tempfile::tempdir().expect("tempdir");
    let log_of = |name: &str| key_logs.path().join(name).to_string_lossy().into_owned();
    let ma = a.mount_with(&["--peer-keylog", &log_of("a")]);
    let mb = b.mount_with(&["--peer-keylog", &log_of("b")]);
    assert!(eventually(Duration::from_secs(20), || mb
        .join("Private")
        .is_dir()));

    let data = pseudo_random(256 * MIB, 43);
    let want: [u8; 32] = Sha256::digest(&data).into();
    std::fs::write(ma.join("Private/big.bin"), &data).expect("write on A");
    assert!(a.uploaded_within(Duration::from_secs(120)));
    let on_b = mb.join("Private/big.bin");
    assert!(appears(&on_b, data.len() as u64));
    assert_eq!(
        sha256_file(&on_b),
        want,
        "B reads A's bytes through the relay"
    );
    assert!(eventually(Duration::from_secs(5), || b
        .counters()
        .blocks_from_peers
        >= 256));

    let mut forwarded = Vec::new();
    for e in std::fs::read_dir(transcripts.path()).expect("transcripts") {
        forwarded.extend(std::fs::read(e.expect("entry").path()).expect("transcript"));
    }
    assert!(
        forwarded.len() >= data.len(),
        "the relay carried the file ({} bytes forwarded)",
        forwarded.len()
    );
    assert_eq!(
        shares_a_64_byte_run(&data, &forwarded),
        None,
        "plaintext of the file in what the relay forwarded"
    );

    // The key logs hold the sessions' secrets: they open the first frame B sent through
    // the relay, and none of them, nor either half of one, is in what the relay forwarded.
    let mut secrets = read_key_log(Path::new(&log_of("a")));
    secrets.extend(read_key_log(Path::new(&log_of("b"))));
    assert!(secrets.len() >= 11, "a session's secrets were logged");
    let b_id = b.device_id();
    let from_b: Vec<Vec<u8>> = std::fs::read_dir(transcripts.path())
        .expect("transcripts")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.contains(&format!("-{b_id}-to-"))
        })
        .map(|p| std::fs::read(p).expect("transcript"))
        .collect();
    assert!(!from_b.is_empty(), "a transcript of what B sent");
    for sent in &from_b {
        assert!(
            opens_first_request(sent, &secrets),
            "no logged key opens the first frame B sent"
        );
    }
    for (label, secret) in &secrets {
        let half = secret.len() / 2;
        for needle in [&secret[..], &secret[..half], &secret[half..]] {
            assert_eq!(
                memchr::memmem::find(&forwarded, needle),
                None,
                "{label} (or half of it) in what the relay forwarded"
            );
        }
    }
    drop((ma, mb));
}

/// A key log's secrets, by label (`LABEL session secret`, hex).
fn read_key_log(path: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_to_string(path)
        .expect("key log")
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let label = parts.next().expect("label").to_string();
            let _session = parts.next().expect("session");
            let secret = hex::decode(parts.next().expect("secret")).expect("hex");
            (label, secret)
        })
        .collect()
}

/// Whether one logged session's initiator-to-responder keys open the first frame after
/// the initiator's handshake messages (its Hello, then its key transport and Finished)
/// and find a block request in it.
fn opens_first_request(sent: &[u8], secrets: &[(String, Vec<u8>)]) -> bool {
    use meshfs::crypto::channel::handshake::message;
    use meshfs::crypto::channel::record::{Direction, HEADER_LEN, Opener, TAG_LEN};
    use meshfs::crypto::channel::schedule::DirectionKeys;
    let mut at = 0;
    for _ in 0..3 {
        let header: [u8; message::HEADER_LEN] =
            sent[at..at + message::HEADER_LEN].try_into().unwrap();
        at += message::HEADER_LEN + message::body_len(header).expect("a handshake message");
    }
    let len = u32::from_be_bytes(sent[at..at + HEADER_LEN].try_into().unwrap()) as usize;
    let frame = &sent[at..at + HEADER_LEN + len + TAG_LEN];
    // Secrets come in sessions of 11, I2R_KEY, I2R_MAC_KEY and I2R_IV among them.
    secrets.chunks(11).any(|session| {
        let get = |label: &str| {
            session
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        let keys = DirectionKeys {
            key: get("I2R_KEY").try_into().unwrap_or_default(),
            mac: get("I2R_MAC_KEY").try_into().unwrap_or_default(),
            iv: get("I2R_IV").try_into().unwrap_or_default(),
            finished: [0; 32],
        };
        let mut copy = frame.to_vec();
        let mut opener = Opener::new(&keys, Direction::InitiatorToResponder);
        opener.open_in_place(&mut copy).is_ok_and(|plain| {
            matches!(
                meshfs::agent::peer::wire::parse(plain),
                Ok(meshfs::agent::peer::wire::Message::Request { .. })
            )
        })
    })
}

/// Through A's real listener: another user's device gets no peer ticket naming A, and its
/// own valid ticket (for its own pair) is refused; a device of A's user connects, but once
/// revoked it is refused at once, with the very ticket that worked a moment before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_device_and_a_revoked_device_are_refused_a_channel() {
    let mesh = Mesh::new();
    mesh.cloud.add_user("bob");
    let bob1 = Device::login(&mesh.cloud, "bob", "bob-laptop");
    let bob2 = Device::login(&mesh.cloud, "bob", "bob-phone");
    let ann3 = Device::login(&mesh.cloud, "ann", "tablet");
    let a_id = mesh.a.device_id();

    let bob = Hand::of(&bob1);
    let err = bob
        .client
        .peer_ticket(&a_id, None)
        .await
        .expect_err("no ticket");
    assert_eq!(err.status(), Some(403), "{err}");
    let bobs_own = bob
        .client
        .peer_ticket(&bob2.device_id(), None)
        .await
        .expect("bob's ticket for his own pair");
    let ann = Hand::of(&ann3);
    let addr = listener_of(&ann, None, &a_id).await;
    let refused = bob.connect(&addr, &a_id, bobs_own).await;
    assert!(refused.is_err(), "A accepted bob's ticket for another pair");

    let ticket = ann.client.peer_ticket(&a_id, None).await.expect("ticket");
    ann.connect(&addr, &a_id, ticket.clone())
        .await
        .expect("a device of A's user connects");
    mesh.a.cli_ok(&["device", "revoke", &ann3.device_id()]);
    // A re-reads its peer list before it answers a handshake once the list is over 3 s old:
    // the same ticket is tried until A refuses it (a channel made meanwhile is dropped).
    let runtime = tokio::runtime::Handle::current();
    let refused = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(15), || {
            runtime
                .block_on(ann.connect(&addr, &a_id, ticket.clone()))
                .is_err()
        })
    });
    assert!(refused, "A accepted a revoked device");
    // A logs the refusal as it closes the connection, maybe after our side saw it close.
    assert!(
        eventually(Duration::from_secs(5), || mesh
            .ma
            .log_text()
            .contains("revoked")),
        "A says why: {}",
        mesh.ma.log_text()
    );
}

/// A peer that answers every block request with 1 MiB of wrong bytes, over a real channel
/// (its ticket is valid), listening on an address it reports to the cloud. Returns how many
/// requests it answered, and its task.
async fn lie_to_every_request(
    liar: Arc<Hand>,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use meshfs::agent::peer::wire::{self, Message, Status};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    liar.client
        .set_presence(vec![addr])
        .await
        .expect("presence");
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&asked);
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (liar, asked) = (Arc::clone(&liar), Arc::clone(&counted));
            tokio::spawn(async move {
                use meshfs::agent::peer::channel;
                let check = liar.ticket_check().await;
                let client = &liar.client;
                let ticket_for = |peer: meshfs::crypto::channel::PeerInfo| async move {
                    client.peer_ticket(&peer.device, None).await
                };
                let mut tcp = tcp;
                let Ok(first) = channel::read_first(&mut tcp).await else {
                    return;
                };
                let Ok(ch) = channel::accept(
                    tcp,
                    first,
                    &liar.id,
                    Arc::clone(&liar.key),
                    ticket_for,
                    check,
                    None,
                )
                .await
                else {
                    return;
                };
                let (mut rd, mut wr) = ch.into_split();
                while let Ok(Some(frame)) = rd.recv().await {
                    let Ok(Message::Request { id, .. }) = wire::parse(&frame) else {
                        return;
                    };
                    asked.fetch_add(1, Ordering::SeqCst);
                    let mut answer = wire::answer_header(id, Status::Found).to_vec();
                    answer.extend(std::iter::repeat_n(0x5a, MIB));
                    if wr.send(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (asked, server)
}

/// A peer of ann's that answers every block request with bytes of the right length and the
/// wrong content: B rejects the block (hash check), bans the peer and reads the right bytes
/// from the cloud; the liar is not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_serves_a_wrong_block_is_dropped_and_the_read_completes_from_the_cloud() {
    let cloud = Cloud::start_with(&["--no-relay"]);
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    let b = Device::login(&cloud, "ann", "desktop");
    let liar_dev = Device::login(&cloud, "ann", "liar");
    a.create_folder("Docs");
    let ma = a.mount_with(&["--no-peers"]);
    let data = pseudo_random(4 * MIB, 9);
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Docs")
        .is_dir()));
    std::fs::write(ma.join("Docs/f.bin"), &data).expect("write on A");
    assert!(a.uploaded());

    let (asked, server) = lie_to_every_request(Arc::new(Hand::of(&liar_dev))).await;

    let mb = b.mount();
    let on_b = mb.join("Docs/f.bin");
    assert!(appears(&on_b, data.len() as u64));
    let got = tokio::task::spawn_blocking(move || std::fs::read(on_b))
        .await
        .unwrap()
        .expect("B's read completes");
    assert!(got == data, "B never takes the liar's bytes");
    assert!(asked.load(Ordering::SeqCst) >= 1, "B asked the liar first");
    assert!(
        eventually(Duration::from_secs(5), || b.counters().blocks_rejected >= 1),
        "B rejected the wrong block: {:?}",
        b.counters()
    );
    let asked_before = asked.load(Ordering::SeqCst);
    let more = pseudo_random(2 * MIB, 10);
    std::fs::write(ma.join("Docs/g.bin"), &more).expect("write on A");
    assert!(a.uploaded());
    let on_b = mb.join("Docs/g.bin");
    assert!(appears(&on_b, more.len() as u64));
    let got = tokio::task::spawn_blocking(move || std::fs::read(on_b))
        .await
        .unwrap()
        .expect("read");
    assert!(got == more);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        asked_before,
        "a banned peer is not asked again"
    );
    server.abort();
    drop((ma, mb));
}

/// Device-only content, which the cloud does not have: a peer that lies is dropped and the
/// read goes on from the next peer, the honest holder (reached here only through the relay,
/// so the liar, reached directly, is asked before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lying_peer_the_next_peer_serves_device_only_content() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    let b = Device::login(&cloud, "ann", "desktop");
    let liar_dev = Device::login(&cloud, "ann", "liar");
    a.cli_ok(&["folder", "create", "Private", "--device-only"]);
    let ma = a.mount_with(&["--peer-advertise", "127.0.0.1:9"]);
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Private")
        .is_dir()));
    let data = pseudo_random(4 * MIB, 11);
    std::fs::write(ma.join("Private/f.bin"), &data).expect("write on A");
    assert!(a.uploaded());
    let (asked, server) = lie_to_every_request(Arc::new(Hand::of(&liar_dev))).await;

    let mb = b.mount();
    let on_b = mb.join("Private/f.bin");
    assert!(appears(&on_b, data.len() as u64));
    let got = tokio::task::spawn_blocking(move || std::fs::read(on_b))
        .await
        .unwrap()
        .expect("B's read completes, though the cloud has none of the file");
    assert!(got == data, "B never takes the liar's bytes");
    assert!(asked.load(Ordering::SeqCst) >= 1, "B asked the liar");
    assert!(
        eventually(Duration::from_secs(5), || {
            let c = b.counters();
            c.blocks_rejected >= 1 && c.bytes_from_peers >= data.len() as u64
        }),
        "B rejected the liar's block and took the file from A: {:?}",
        b.counters()
    );
    // Not even a read-ahead failed (the kernel would have asked again, hiding it).
    assert_eq!(b.counters().blocks_unavailable, 0, "{:?}", b.counters());
    server.abort();
    drop((ma, mb));
}

/// Two users share a device-only folder that both mapped: bob's device reads ann's file
/// from ann's device, over a channel whose tickets name the folder.
#[test]
fn another_users_device_reads_a_shared_device_only_folder_from_the_owners_device() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    cloud.add_user("bob");
    let a = Device::login(&cloud, "ann", "laptop");
    let b = Device::login(&cloud, "bob", "desktop");
    a.cli_ok(&["folder", "create", "Shared", "--device-only"]);
    let id = a.folder_id("Shared");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(meshfs::cloud::share_folder(
            &cloud.engines,
            &id,
            "bob",
            meshfs::cloud::Role::Writer,
        ))
        .expect("share");
    for dev in [&a, &b] {
        dev.cli_ok(&["folder", "map", "Shared"]);
    }
    let ma = a.mount();
    let mb = b.mount();
    assert!(eventually(Duration::from_secs(20), || ma
        .join("Shared")
        .is_dir()
        && mb.join("Shared").is_dir()));
    let data = pseudo_random(16 * MIB, 77);
    std::fs::write(ma.join("Shared/plan.bin"), &data).expect("write on A");
    assert!(a.uploaded());
    let on_b = mb.join("Shared/plan.bin");
    assert!(appears(&on_b, data.len() as u64));
    assert!(std::fs::read(&on_b).expect("bob reads") == data);
    assert!(eventually(Duration::from_secs(5), || b
        .counters()
        .blocks_from_peers
        >= 16));
}
