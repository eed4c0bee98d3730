//! Sharing a folder between people, through real mounts, a real cloud and real peer
//! channels: alice on devices A and C, bob on device B.

mod common;

use common::hand::{Hand, listener_of};
use common::{Cloud, Device, Mount, SOON, eventually, files_under, names, pseudo_random};
use meshfs::agent::peer::BlockRequest;
use meshfs::agent::peer::wire::{self, Message, Status};
use meshfs::agent::remote::Remote;
use meshfs::cloud::{Database, Engines};
use meshfs::proto::{BlockHash, BlockRef, Entry, EntryKind, EntryPut, ErrorCode, Step, Steps};
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// The files of a folder under `root`, by path, with their bytes.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = files_under(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, std::fs::read(&p).unwrap_or_default())
        })
        .collect();
    out.sort();
    out
}

/// Whether any file under `dir` is named like one of `hashes` (a block file).
fn holds_any(dir: &Path, hashes: &[BlockHash]) -> bool {
    let names: Vec<String> = hashes.iter().map(|h| h.to_hex()).collect();
    files_under(dir).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| names.iter().any(|h| n.to_string_lossy() == *h))
    })
}

/// Asks `to` at `addr` for `want` over a channel opened with `ticket`: the answer's status,
/// or `None` when the channel failed or closed before an answer.
async fn ask(
    bob: &Hand,
    addr: &str,
    to: &str,
    ticket: String,
    want: &BlockRequest,
) -> Option<Status> {
    let channel = bob.channel(addr, to, ticket).await.ok()?;
    let (mut rd, mut wr) = channel.into_split();
    wr.send(&wire::request(7, want).expect("request"))
        .await
        .ok()?;
    let frame = rd.recv().await.ok()??;
    match wire::parse(&frame[..wire::ANSWER_HEADER.min(frame.len())]) {
        Ok(Message::Answer { id: 7, status }) => Some(status),
        other => panic!("not an answer to the request: {other:?}"),
    }
}

fn alice_and_bob() -> (Cloud, Device, Device, Device) {
    let cloud = Cloud::start();
    cloud.add_user("alice");
    cloud.add_user("bob");
    let a = Device::login(&cloud, "alice", "laptop");
    let c = Device::login(&cloud, "alice", "phone");
    let b = Device::login(&cloud, "bob", "desktop");
    (cloud, a, c, b)
}

/// The whole life of a share: invited as reader, bob reads every file and changes nothing;
/// made writer, his changes reach both of alice's devices; concurrent edits keep both
/// versions; removed, bob loses the folder, its cached blocks, his tickets and his peer
/// access at once.
#[test]
fn a_folder_shared_read_then_written_then_taken_back() {
    let (cloud, a, c, b) = alice_and_bob();
    a.create_folder("Docs");
    let ma = a.mount();
    assert!(eventually(SOON, || ma.join("Docs").is_dir()));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"alice's notes\n".to_vec()),
        ("sub/plan.bin", pseudo_random(3 * MIB + 17, 5)),
        ("empty", Vec::new()),
    ];
    std::fs::create_dir(ma.join("Docs/sub")).unwrap();
    for (path, data) in &files {
        std::fs::write(ma.join("Docs").join(path), data).unwrap();
    }
    assert!(a.uploaded());

    let out = common::output_ok(
        "share",
        a.cli(&[
            "folder", "share", "Docs", "--with", "bob", "--role", "reader",
        ]),
    );
    assert!(out.contains("invited bob"), "{out}");
    let out = common::output_ok("invitations", b.cli(&["folder", "invitations"]));
    assert!(out.contains("Docs (from alice) as reader"), "{out}");
    b.cli_ok(&["folder", "accept", "Docs"]);
    for dev in [&a, &c] {
        dev.cli_ok(&["folder", "map", "Docs"]);
    }
    let out = common::output_ok("members", a.cli(&["folder", "members", "Docs"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("bob") && l.contains("reader")),
        "{out}"
    );
    let mc = c.mount();
    let mb = b.mount();

    // bob reads every file, byte-identical.
    let docs_b = mb.join("Docs");
    let expected: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = files
            .iter()
            .map(|(p, d)| (p.to_string(), d.clone()))
            .collect();
        v.sort();
        v
    };
    assert!(eventually(Duration::from_secs(30), || tree(&docs_b) == expected));

    // A reader changes nothing, anywhere: refused at once, nothing queued or sent.
    let (_, since) = a.cloud_changes("Docs", 0);
    let refused = [
        ("edit", std::fs::write(docs_b.join("notes.txt"), b"bob")),
        ("create", std::fs::write(docs_b.join("new.txt"), b"bob")),
        ("mkdir", std::fs::create_dir(docs_b.join("d"))),
        (
            "rename",
            std::fs::rename(docs_b.join("notes.txt"), docs_b.join("n.txt")),
        ),
        ("delete", std::fs::remove_file(docs_b.join("notes.txt"))),
        ("rmdir", std::fs::remove_dir_all(docs_b.join("sub"))),
    ];
    for (what, r) in refused {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{what}: {e}");
    }
    assert_eq!(b.fresh_status().pending_uploads, 0, "nothing queued on B");
    assert!(
        a.cloud_changes("Docs", since).0.is_empty(),
        "nothing reached the cloud"
    );
    assert_eq!(tree(&docs_b), expected);
    assert_eq!(tree(&ma.join("Docs")), expected);

    // Made a writer, bob's new file and edit reach A and C.
    let out = common::output_ok(
        "share",
        a.cli(&[
            "folder", "share", "Docs", "--with", "bob", "--role", "writer",
        ]),
    );
    assert!(out.contains("bob is now a writer"), "{out}");
    assert!(eventually(SOON, || std::fs::write(
        docs_b.join("bob.txt"),
        b"from bob"
    )
    .is_ok()));
    std::fs::write(docs_b.join("notes.txt"), b"bob's edit\n").unwrap();
    let reached = |m: &Mount| {
        std::fs::read(m.join("Docs/bob.txt")).is_ok_and(|d| d == b"from bob")
            && std::fs::read(m.join("Docs/notes.txt")).is_ok_and(|d| d == b"bob's edit\n")
    };
    assert!(eventually(SOON, || reached(&ma) && reached(&mc)));
    assert!(b.uploaded() && a.uploaded());

    // alice and bob edit notes.txt at once: both versions stay, one as a conflict copy.
    cloud.pause();
    std::fs::write(ma.join("Docs/notes.txt"), b"alice again\n").unwrap();
    std::fs::write(docs_b.join("notes.txt"), b"bob again\n").unwrap();
    cloud.resume();
    assert!(a.uploaded() && b.uploaded());
    let notes = |m: &Mount| -> Vec<(String, Vec<u8>)> {
        tree(&m.join("Docs"))
            .into_iter()
            .filter(|(p, _)| p.starts_with("notes"))
            .collect()
    };
    let settled = eventually(Duration::from_secs(30), || {
        let (na, nb, nc) = (notes(&ma), notes(&mb), notes(&mc));
        na.len() == 2 && na == nb && na == nc
    });
    let na = notes(&ma);
    assert!(
        settled,
        "devices disagree: {na:?} / {:?} / {:?}",
        notes(&mb),
        notes(&mc)
    );
    let bodies: Vec<&[u8]> = na.iter().map(|(_, d)| d.as_slice()).collect();
    assert!(bodies.contains(&&b"alice again\n"[..]) && bodies.contains(&&b"bob again\n"[..]));
    assert!(
        na.iter().any(|(p, _)| p.starts_with("notes (conflict ")),
        "{na:?}"
    );

    // What bob holds before he is removed: tickets, and the folder's blocks.
    let folder = a.folder_id("Docs");
    let entries: Vec<Entry> = a.cloud_changes("Docs", 0).0;
    let plan = entries
        .iter()
        .find(|e| e.name == "plan.bin")
        .expect("plan.bin");
    let hashes: Vec<BlockHash> = entries
        .iter()
        .flat_map(|e| e.manifest.iter().map(|b| b.hash))
        .collect();
    let cache_b = b.home.join("cache");
    assert!(holds_any(&cache_b, &hashes), "B cached the folder's blocks");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bob = Hand::of(&b);
    let a_id = a.device_id();
    let (old_access, old_peer, addr) = rt.block_on(async {
        let grants = bob.client.folders().await.expect("folders");
        let g = grants
            .iter()
            .find(|g| g.folder.id == folder)
            .expect("grant");
        let peer = bob
            .client
            .peer_ticket(&a_id, Some(&folder))
            .await
            .expect("peer ticket");
        let addr = listener_of(&bob, Some(&folder), &a_id).await;
        (g.ticket.ticket.clone(), peer, addr)
    });
    let want = BlockRequest {
        folder: folder.clone(),
        entry: plan.id.clone(),
        hash: plan.manifest[0].hash,
    };
    assert_eq!(
        rt.block_on(ask(&bob, &addr, &a_id, old_peer.clone(), &want)),
        Some(Status::Found),
        "A serves bob while he is a member"
    );

    // A channel bob opened while a member, left idle.
    let idle = rt
        .block_on(bob.channel(&addr, &a_id, old_peer.clone()))
        .expect("channel");
    let told = |m: &Mount| m.log_text().matches("the folder's members changed").count();
    let told_before = told(&ma);
    let unshared = std::time::Instant::now();
    common::output_ok(
        "unshare",
        a.cli(&["folder", "unshare", "Docs", "--with", "bob"]),
    );
    assert!(
        eventually(SOON, || !names(&mb.join("")).contains(&"Docs".to_string())
            && !mb.join("Docs").exists()),
        "the folder left B's mount"
    );
    eprintln!(
        "measured: the folder left B's mount {} ms after `unshare` started",
        unshared.elapsed().as_millis()
    );
    assert!(
        eventually(SOON, || !holds_any(&cache_b, &hashes)),
        "the folder's blocks left B's cache"
    );
    let http = meshfs::agent::client::https(&std::fs::read(cloud.ca()).unwrap()).unwrap();
    let status = rt.block_on(async {
        http.get(format!("{}/folders/{folder}/entries", cloud.url))
            .bearer_auth(&old_access)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 403, "B's old access ticket");
    // A new client: `bob.client` keeps the ticket it was given.
    let err = rt
        .block_on(Hand::of(&b).client.peer_ticket(&a_id, Some(&folder)))
        .expect_err("no new peer ticket");
    assert_eq!(err.status(), Some(403));
    // A hears of the removal through its feed; then its peer server refuses bob's old,
    // still unexpired peer ticket for the folder.
    assert!(eventually(SOON, || told(&ma) > told_before));
    let (mut idle_rd, _idle_wr) = idle.into_split();
    let closed = rt.block_on(async { tokio::time::timeout(SOON, idle_rd.recv()).await });
    assert!(
        matches!(closed, Ok(Ok(None)) | Ok(Err(_))),
        "A closes bob's idle channel for the folder: {closed:?}"
    );
    assert_eq!(
        rt.block_on(ask(&bob, &addr, &a_id, old_peer, &want)),
        None,
        "A answered bob after the removal"
    );
    assert!(
        eventually(SOON, || ma.log_text().contains("no longer a member")),
        "A says why it closed the channel"
    );
    // alice's devices keep everything.
    assert_eq!(notes(&ma), notes(&mc));
    assert_eq!(
        std::fs::read(ma.join("Docs/sub/plan.bin")).unwrap(),
        files[1].1
    );
}

/// bob, a writer of alice's shared folder, plants an entry naming the block of a file in
/// alice's private folder and asks A for it through the shared folder: A answers "not
/// here", exactly as for a random hash, though it holds the block.
#[test]
fn a_block_of_another_folder_is_not_here_for_a_member() {
    let (_cloud, a, _c, b) = alice_and_bob();
    a.create_folder("Private");
    a.create_folder("Shared");
    let ma = a.mount();
    assert!(eventually(SOON, || ma.join("Shared").is_dir()
        && ma.join("Private").is_dir()));
    let secret = pseudo_random(MIB + 3, 11);
    std::fs::write(ma.join("Private/secret.bin"), &secret).unwrap();
    std::fs::write(ma.join("Shared/open.txt"), b"for bob").unwrap();
    assert!(a.uploaded());
    a.cli_ok(&[
        "folder", "share", "Shared", "--with", "bob", "--role", "writer",
    ]);
    b.cli_ok(&["folder", "accept", "Shared"]);
    a.cli_ok(&["folder", "map", "Shared"]);
    let shared = a.folder_id("Shared");
    let secret_hash = BlockHash::of(&secret[..MIB]);
    let random_hash = BlockHash::of(b"no device holds this");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let bob = Hand::of(&b);
    let a_id = a.device_id();
    let open = a
        .cloud_changes("Shared", 0)
        .0
        .into_iter()
        .find(|e| e.name == "open.txt")
        .expect("open.txt");
    // bob publishes two entries in the shared folder, held on his device: one names the
    // secret's first block, one a hash nobody holds.
    let planted = |name: &str, hash: BlockHash| Step::Put {
        id: format!("planted-{name}"),
        if_match: None,
        entry: EntryPut {
            parent: None,
            name: name.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: MIB as u64,
            mtime_ns: 1,
            manifest: vec![BlockRef {
                hash,
                len: MIB as u32,
            }],
            target: None,
            replace: false,
            device_held: true,
        },
        seq: None,
    };
    let steps = Steps {
        journal: None,
        steps: vec![planted("a", secret_hash), planted("b", random_hash)],
    };
    let (ticket, addr) = rt.block_on(async {
        let done = bob
            .client
            .apply_steps(&shared, &steps)
            .await
            .expect("steps");
        assert!(done.refused.is_none(), "{:?}", done.refused);
        let ticket = bob
            .client
            .peer_ticket(&a_id, Some(&shared))
            .await
            .expect("ticket");
        (ticket, listener_of(&bob, Some(&shared), &a_id).await)
    });
    // A has applied bob's entries: they show in its mount.
    assert!(eventually(SOON, || ma.join("Shared/a").exists()
        && ma.join("Shared/b").exists()));

    let req = |entry: &str, hash: BlockHash| BlockRequest {
        folder: shared.clone(),
        entry: entry.into(),
        hash,
    };
    let asks = [
        req(&open.id, open.manifest[0].hash),
        req("planted-a", secret_hash),
        req("planted-b", random_hash),
    ];
    let answers: Vec<Option<Status>> = asks
        .iter()
        .map(|want| rt.block_on(ask(&bob, &addr, &a_id, ticket.clone(), want)))
        .collect();
    assert_eq!(
        answers,
        [
            Some(Status::Found),
            Some(Status::Missing),
            Some(Status::Missing)
        ],
        "the shared file is served; the private block is as absent as a random one"
    );
    // A does hold the secret's block, and serves it to alice's own reads.
    assert_eq!(
        std::fs::read(ma.join("Private/secret.bin")).unwrap(),
        secret
    );
}

/// bob, a writer, cannot give an entry a name no mount could show: the cloud refuses each
/// (400 `bad_name`) and nothing changes. Entries that a cloud let through anyway (planted
/// in its database, as an older or broken cloud would hold them) reach A's feed and are
/// skipped with a warning; the good change after them still applies.
#[test]
fn an_entry_no_mount_could_show_never_reaches_the_mount() {
    let (cloud, a, c, b) = alice_and_bob();
    a.create_folder("Shared");
    let ma = a.mount();
    assert!(eventually(SOON, || ma.join("Shared").is_dir()));
    std::fs::write(ma.join("Shared/before.txt"), b"before").unwrap();
    assert!(a.uploaded());
    a.cli_ok(&[
        "folder", "share", "Shared", "--with", "bob", "--role", "writer",
    ]);
    b.cli_ok(&["folder", "accept", "Shared"]);
    let shared = a.folder_id("Shared");
    let long = "x".repeat(256);
    let bad = ["a/b", "..", ".", "nul\0", "line\nbreak", long.as_str()];

    let rt = tokio::runtime::Runtime::new().unwrap();
    let bob = Hand::of(&b);
    let (_, seq_before) = a.cloud_changes("Shared", 0);
    for name in bad {
        let steps = Steps {
            journal: None,
            steps: vec![Step::Put {
                id: "bad".into(),
                if_match: None,
                entry: EntryPut {
                    parent: None,
                    name: name.into(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    size: 0,
                    mtime_ns: 1,
                    manifest: Vec::new(),
                    target: None,
                    replace: false,
                    device_held: false,
                },
                seq: None,
            }],
        };
        let done = rt
            .block_on(bob.client.apply_steps(&shared, &steps))
            .expect("steps");
        let refused = done.refused.expect("a bad name is refused");
        assert_eq!(
            (refused.status, refused.error.error),
            (400, ErrorCode::BadName),
            "{name:?}"
        );
    }
    assert_eq!(
        a.cloud_changes("Shared", 0).1,
        seq_before,
        "nothing changed"
    );

    rt.block_on(plant_entries(&cloud.engines, &shared, "before.txt", &bad));
    std::fs::write(ma.join("Shared/after.txt"), b"after").unwrap();
    assert!(a.uploaded());
    let mc = c.mount();
    assert!(eventually(SOON, || mc.join("Shared/after.txt").exists()));
    for m in [&ma, &mc] {
        assert_eq!(
            names(&m.join("Shared")),
            ["after.txt", "before.txt"],
            "only the good names show"
        );
        let log = m.log_text();
        assert!(
            log.contains("skipped a change from the cloud"),
            "a warning names the skipped change: {log}"
        );
    }
}

/// Copies the live entry `like` of `folder` under each of `names`, straight into the
/// cloud's database with a new sequence number, as a cloud without name checks would.
/// (PostgreSQL holds no NUL in text, so there that name cannot be planted.)
async fn plant_entries(engines: &Engines, folder: &str, like: &str, names: &[&str]) {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&engines.database.url())
        .await
        .expect("the cloud's database");
    if let Database::Sqlite(_) = engines.database {
        db.execute("PRAGMA busy_timeout = 30000").await.unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        if name.contains('\0') && !matches!(engines.database, Database::Sqlite(_)) {
            continue;
        }
        sqlx::query("UPDATE meta SET seq = seq + 1 WHERE id = 1")
            .execute(&mut db)
            .await
            .expect("next sequence");
        let planted = sqlx::query(
            "INSERT INTO entries (folder, id, parent, name, kind, mode, size, mtime_ns,
                 version, deleted, manifest, target, author, in_cloud, holders, changed_ms)
             SELECT folder, $3, parent, $4, kind, mode, size, mtime_ns,
                 (SELECT seq FROM meta WHERE id = 1), 0, manifest, target, author, in_cloud,
                 holders, changed_ms
             FROM entries WHERE folder = $1 AND name = $2 AND deleted = 0",
        )
        .bind(folder)
        .bind(like)
        .bind(format!("planted-{i}"))
        .bind(*name)
        .execute(&mut db)
        .await
        .expect("plant an entry");
        assert_eq!(planted.rows_affected(), 1, "{name:?}");
    }
}
