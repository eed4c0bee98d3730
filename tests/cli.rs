//! The command line as a user meets it: help, status that tells the truth, device
//! revocation, and tickets renewed before they expire.

mod common;

use common::{Cloud, Device, Mesh, eventually};
use std::process::Command;
use std::time::Duration;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

#[test]
fn help_names_every_command() {
    let out = Command::new(common::bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "cloud", "user", "login", "folder", "device", "mount", "status",
    ] {
        assert!(help.contains(cmd), "--help does not mention {cmd}:\n{help}");
    }
}

#[test]
fn status_tells_whether_the_agent_runs_and_the_cloud_answers() {
    let mut cloud = Cloud::start();
    cloud.add_user("ann");
    let dev = Device::login(&cloud, "ann", "laptop");
    dev.create_folder("Docs");

    let s = json(&dev.cli(&["status", "--json"]));
    assert_eq!(
        s["agent"],
        serde_json::Value::Null,
        "no agent runs yet: {s}"
    );
    assert_eq!(s["cloud_reachable"], true);

    let mut m = dev.mount();
    assert!(eventually(Duration::from_secs(10), || m
        .join("Docs")
        .is_dir()));
    std::fs::write(m.join("Docs/a.txt"), b"hello").unwrap();
    assert!(dev.uploaded());
    let s = json(&dev.cli(&["status", "--json"]));
    assert_eq!(s["agent"]["pending_uploads"], 0, "{s}");
    assert!(
        s["agent"]["counters"]["bytes_uploaded"].as_u64() >= Some(5),
        "{s}"
    );
    assert!(s["quota_used"].as_u64() >= Some(5), "{s}");
    let text = String::from_utf8(dev.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("running"), "{text}");

    m.stop();
    cloud.kill();
    let out = dev.cli(&["status", "--json"]);
    let s = json(&out);
    assert_eq!(
        s["agent"],
        serde_json::Value::Null,
        "a stopped agent is not running: {s}"
    );
    assert_eq!(s["cloud_reachable"], false, "{s}");
}

#[test]
fn a_revoked_device_is_refused_at_once_and_others_go_on() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    let b = Device::login(&cloud, "ann", "stolen-phone");
    a.create_folder("Docs");
    assert!(b.cli(&["folder", "list"]).status.success());

    let out = a.cli(&["device", "revoke", &b.device_id()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = b.cli(&["folder", "list"]);
    assert!(
        !out.status.success(),
        "a revoked device still lists folders"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked"), "the error should say why: {err}");

    let list = String::from_utf8(a.cli(&["device", "list"]).stdout).unwrap();
    let line = list.lines().find(|l| l.contains("stolen-phone")).unwrap();
    assert!(line.contains("revoked"), "{list}");
    assert!(a.cli(&["folder", "list"]).status.success());
}

#[test]
fn tickets_are_renewed_before_they_expire() {
    // Tickets live 8 seconds; the mesh keeps working for several lifetimes. The cloud logs
    // each request, so each round starts after an agent has renewed a ticket: the one it
    // held before had grown stale (the agents list their folders every 10 s).
    let mesh = Mesh::on(Cloud::start_logging(
        "meshfs=debug,info",
        &["--identity-ttl", "8", "--access-ttl", "8"],
    ));
    let renewals = || mesh.cloud.requests_answered("/tickets/identity", 200);
    for round in 0..4 {
        let before = renewals();
        let name = format!("Docs/round-{round}.txt");
        std::fs::write(mesh.ma.join(&name), format!("round {round}")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || std::fs::read_to_string(
                mesh.mb.join(&name)
            )
            .is_ok_and(|s| s == format!("round {round}"))),
            "round {round} did not arrive: {}",
            mesh.ma.log_text()
        );
        assert!(
            eventually(Duration::from_secs(30), || renewals() > before),
            "no identity ticket was renewed in round {round}"
        );
    }
}

/// A second `meshfs mount` of a home an agent already serves says which process and mount
/// point hold it, and leaves the first mount alone.
#[test]
fn a_second_mount_of_a_home_names_the_agent_that_holds_it() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let dev = Device::login(&cloud, "ann", "laptop");
    dev.create_folder("Docs");
    let first = dev.mount();
    let pid = first.pid().expect("agent");
    // The first agent serves the folder and has written its report, as a second one
    // would find it.
    assert!(eventually(Duration::from_secs(20), || dev
        .status()
        .is_some()
        && first.join("Docs").is_dir()));
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("mount")
        .arg(other.path())
        .arg("--home")
        .arg(&dev.home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already mounted"), "{err}");
    assert!(err.contains(&pid.to_string()), "{err}");
    assert!(err.contains(&first.path.display().to_string()), "{err}");
    assert!(!common::is_mounted(other.path()));
    assert!(first.join("Docs").is_dir(), "the first mount still serves");
}

/// Logs written to a file (or read by journald) carry no colour codes.
#[test]
fn logs_that_go_to_a_file_are_plain_text() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let dev = Device::login(&cloud, "ann", "laptop");
    dev.create_folder("Docs");
    let m = dev.mount();
    assert!(eventually(Duration::from_secs(20), || m
        .log_text()
        .contains("mesh mounted")));
    for (who, log) in [("cloud", cloud.log_text()), ("agent", m.log_text())] {
        assert!(!log.is_empty(), "{who} logged nothing");
        assert!(
            !log.contains('\x1b'),
            "{who}'s log has escape codes:\n{log}"
        );
    }
}

/// Sharing from the command line: an invitation declined leaves nothing, one accepted
/// lists the folder with read rights, a member who leaves loses it, and the owner's
/// `members` shows who is left and who is invited; refusals name what to do.
#[test]
fn folders_are_shared_declined_accepted_and_left_from_the_command_line() {
    let cloud = Cloud::start();
    cloud.add_user("alice");
    cloud.add_user("bob");
    let a = Device::login(&cloud, "alice", "laptop");
    let b = Device::login(&cloud, "bob", "desktop");
    a.create_folder("Docs");
    a.create_folder("Photos");
    let text = |out: std::process::Output| common::output_ok("meshfs", out);
    for f in ["Docs", "Photos"] {
        text(a.cli(&[
            "folder",
            "share",
            f,
            "--with",
            "bob",
            "--max-bytes",
            "1000000",
        ]));
    }
    let waiting = text(b.cli(&["folder", "invitations"]));
    assert!(
        waiting.contains("Docs (from alice) as reader, storing at most 1000000 bytes"),
        "{waiting}"
    );
    assert!(waiting.contains("Photos (from alice)"), "{waiting}");
    text(b.cli(&["folder", "decline", "Photos"]));
    let out = b.cli(&["folder", "accept", "Photos"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("meshfs folder invitations"),
        "says what to do"
    );
    text(b.cli(&["folder", "accept", "Docs"]));
    let list = text(b.cli(&["folder", "list"]));
    let docs = list
        .lines()
        .find(|l| l.contains("Docs"))
        .expect("Docs listed");
    assert!(
        docs.contains("alice") && docs.trim_end().ends_with("read"),
        "{list}"
    );
    assert!(!list.contains("Photos"), "{list}");
    // Only the owner shares; bob is told so.
    let out = b.cli(&["folder", "share", "Docs", "--with", "alice"]);
    assert!(!out.status.success());
    let members = text(a.cli(&["folder", "members", "Docs"]));
    assert!(
        members
            .lines()
            .any(|l| l.starts_with("bob") && l.contains("reader")),
        "{members}"
    );

    text(b.cli(&["folder", "leave", "Docs"]));
    assert!(!text(b.cli(&["folder", "list"])).contains("Docs"));
    let members = text(a.cli(&["folder", "members", "Docs"]));
    assert!(!members.contains("bob"), "{members}");
    text(a.cli(&["folder", "share", "Photos", "--with", "bob"]));
    assert!(
        text(a.cli(&["folder", "members", "Photos"]))
            .lines()
            .any(|l| l.starts_with("bob") && l.contains("invited"))
    );
    let out = text(a.cli(&["folder", "unshare", "Photos", "--with", "bob"]));
    assert!(out.contains("withdrew bob's invitation"), "{out}");
    assert!(text(b.cli(&["folder", "invitations"])).contains("no invitations"));
}

/// Logging in again in a home makes a new key and a new device, also after the old one
/// was revoked: the old key is not claimed again.
#[test]
fn a_second_login_in_a_home_makes_a_new_key() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    let key_file = meshfs::agent::home::Home::new(&a.home).key();
    let (key1, id1) = (std::fs::read(&key_file).unwrap(), a.device_id());
    a.cli_ok(&["device", "revoke", &id1]);
    let out = common::run_with_stdin(
        &mut common::login_command(None, &cloud, &[&cloud.url], "ann", "laptop", &a.home),
        common::PASSWORD,
    );
    common::output_ok("second login", out);
    assert_ne!(std::fs::read(&key_file).unwrap(), key1, "a new key");
    assert_ne!(a.device_id(), id1, "a new device");
    common::output_ok("folder list", a.cli(&["folder", "list"]));
    assert!(!key_file.with_extension("new").exists());
}

/// `meshfs folder ticket` prints an access ticket that calls the REST API as the folder's
/// owner: the entries of the folder, and no other folder.
#[test]
fn a_folder_ticket_calls_the_rest_api_for_that_folder() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    a.cli_ok(&["folder", "create", "Docs"]);
    a.cli_ok(&["folder", "create", "Other"]);
    let text = |out: std::process::Output| common::output_ok("meshfs", out);
    let list = text(a.cli(&["folder", "list"]));
    let id_of = |name: &str| {
        list.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} in {list}"))
            .to_string()
    };
    let ticket = text(a.cli(&["folder", "ticket", "Docs"]))
        .trim()
        .to_string();
    let get = |path: String| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(cloud.ca())
            .args(["-H", &format!("Authorization: Bearer {ticket}")])
            .arg(format!("{}{path}", cloud.url))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get(format!("/folders/{}/entries", id_of("Docs"))), "200");
    assert_eq!(get(format!("/folders/{}/entries", id_of("Other"))), "403");
}

/// `meshfs mount --metrics-listen` serves the totals `meshfs status` shows to Prometheus.
#[test]
fn a_mount_serves_its_counters_to_prometheus() {
    let cloud = Cloud::start();
    cloud.add_user("ann");
    let a = Device::login(&cloud, "ann", "laptop");
    a.cli_ok(&["folder", "create", "Docs"]);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let m = a.mount_with(&["--metrics-listen", &addr.to_string()]);
    assert!(eventually(Duration::from_secs(20), || m
        .join("Docs")
        .is_dir()));
    std::fs::write(m.join("Docs/a.txt"), b"hello").expect("write");
    assert!(a.uploaded());
    let scrape = || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{addr}/metrics")])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        eventually(Duration::from_secs(10), || scrape()
            .contains("meshfs_agent_blocks_uploaded_total 1")),
        "{}",
        scrape()
    );
    let text = scrape();
    assert!(text.contains("meshfs_agent_cloud_reachable 1"), "{text}");
    assert!(
        text.contains("# TYPE meshfs_agent_cache_used_bytes gauge"),
        "{text}"
    );
}
