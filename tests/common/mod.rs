//! Test harness: a real `meshfs cloud` process on 127.0.0.1, devices logged in with the real
//! CLI, and real FUSE mounts served by `meshfs mount` processes. Every guard cleans up in
//! `Drop`, also when a test fails: processes are killed and mounts detached.
#![allow(dead_code)]

pub mod engines;
pub mod hand;

use meshfs::agent::status::{AgentStatus, CounterSnapshot};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

/// How long a change made on one device may take to show on the other.
pub const SOON: Duration = Duration::from_secs(10);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshfs")
}

/// `meshfs`, run in network namespace `netns` when one is given (through `nsenter`, which
/// enters only the network namespace: a FUSE mount made there is seen by the test).
pub fn meshfs(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(bin());
            c
        }
        None => Command::new(bin()),
    }
}

/// Makes `cmd` resolve host names from `hosts` (a file in /etc/hosts' format) before the
/// system's files, through nss_wrapper (Debian's libnss-wrapper): a name with several
/// addresses, as DNS would give, without touching /etc/hosts.
pub fn resolve_from(cmd: &mut Command, hosts: Option<&Path>) {
    if let Some(hosts) = hosts {
        cmd.env("LD_PRELOAD", "libnss_wrapper.so")
            .env("NSS_WRAPPER_HOSTS", hosts);
    }
}

/// The address a process's log announced on the line that starts with `start`.
fn announced(log: &str, start: &str) -> Option<String> {
    log.lines()
        .find_map(|l| l.strip_prefix(start))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// Polls `f` every 100 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

/// A `meshfs cloud` process with its own data directory.
pub struct Cloud {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    /// Where its metadata and blocks are (see `engines.rs`).
    pub engines: meshfs::cloud::Engines,
    pub dir: tempfile::TempDir,
    netns: Option<String>,
    /// `MESHFS_LOG` of the process (and of its restarts).
    log_filter: String,
    /// The `meshfs cloud` flags it was started with, given again to its restarts.
    flags: Vec<String>,
    /// On PostgreSQL and S3, a second process on the same database and bucket, also
    /// paused, killed and restarted with this one: devices log in to the two in turn
    /// ([`Cloud::urls_for_a_device`]), so that the suite runs across processes.
    twin: Option<Box<Cloud>>,
    /// Devices logged in so far.
    devices: std::sync::atomic::AtomicUsize,
}

impl Cloud {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a cloud with extra `meshfs cloud` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(None, "127.0.0.1:0", extra)
    }

    /// Starts a cloud that logs at `filter` (a `MESHFS_LOG` value): `meshfs=debug,info`
    /// logs every request it answers, with its path and status.
    pub fn start_logging(filter: &str, extra: &[&str]) -> Self {
        Self::start_as(None, "127.0.0.1:0", extra, filter)
    }

    /// Starts a cloud in network namespace `netns`, listening on `listen`.
    pub fn start_in(netns: Option<&str>, listen: &str, extra: &[&str]) -> Self {
        Self::start_as(netns, listen, extra, "info")
    }

    fn start_as(netns: Option<&str>, listen: &str, extra: &[&str], log_filter: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("cloud");
        let log = dir.path().join("cloud.log");
        // A cloud in a network namespace cannot reach servers on this host's loopback.
        let engines = match netns {
            None => engines::for_test(&data),
            Some(_) => meshfs::cloud::Engines::embedded(&data),
        };
        if engines != meshfs::cloud::Engines::embedded(&data) {
            engines::write_config(&data, &engines);
        }
        let mut cloud = Cloud {
            child: None,
            url: String::new(),
            data,
            engines,
            dir,
            netns: netns.map(str::to_string),
            log_filter: log_filter.to_string(),
            flags: extra.iter().map(|f| f.to_string()).collect(),
            twin: None,
            devices: Default::default(),
        };
        cloud.spawn(listen, &log, extra);
        if netns.is_none() && engines::on_postgres() {
            cloud.twin = Some(Box::new(cloud.another_process()));
        }
        cloud
    }

    /// This process's flags for another on the same engines: no relay of its own (it lists
    /// this process's relay).
    fn flags_without_relay(&self) -> Vec<String> {
        let mut flags = vec!["--no-relay".to_string()];
        let mut given = self.flags.iter();
        while let Some(f) = given.next() {
            match f.as_str() {
                "--relay-listen" | "--relay-transcript" => {
                    given.next();
                }
                "--no-relay" => {}
                other => flags.push(other.to_string()),
            }
        }
        flags
    }

    /// The cloud URLs for the next device to log in with, the process it starts on first:
    /// with a twin, devices start on the two processes in turn.
    pub fn urls_for_a_device(&self) -> Vec<String> {
        let n = self
            .devices
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.twin {
            Some(twin) if n % 2 == 1 => vec![twin.url.clone(), self.url.clone()],
            Some(twin) => vec![self.url.clone(), twin.url.clone()],
            None => vec![self.url.clone()],
        }
    }

    /// The log of the process (and of its twin, after it).
    pub fn log_text(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.dir.path().join("cloud.log")).unwrap_or_default();
        if let Some(twin) = &self.twin {
            text.push_str(&twin.log_text());
        }
        text
    }

    /// Another `meshfs cloud` process (with no relay, otherwise with this one's flags) on
    /// this cloud's engines: on a PostgreSQL database and an S3 bucket both serve the same
    /// users.
    pub fn another_process(&self) -> Cloud {
        self.another_process_at("127.0.0.1:0")
    }

    /// [`Cloud::another_process`], listening on `listen`.
    pub fn another_process_at(&self, listen: &str) -> Cloud {
        let flags = self.flags_without_relay();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("cloud.log");
        // On engines outside the data directory, a data directory of its own with only
        // `cloud.toml` in it, as on another machine: the CA and keys come from the database.
        let data = if self.engines == meshfs::cloud::Engines::embedded(&self.data) {
            self.data.clone()
        } else {
            let data = dir.path().join("cloud");
            engines::write_config(&data, &self.engines);
            data
        };
        let mut other = Cloud {
            child: None,
            url: String::new(),
            data,
            engines: self.engines.clone(),
            dir,
            netns: None,
            log_filter: self.log_filter.clone(),
            flags: flags.clone(),
            twin: None,
            devices: Default::default(),
        };
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        other.spawn(listen, &log, &flags);
        other
    }

    /// How many requests for `path` the cloud answered with `status`, by its log (a cloud
    /// started with [`Cloud::start_logging`] at `meshfs=debug`; restarts log elsewhere).
    pub fn requests_answered(&self, path: &str, status: u16) -> usize {
        let (path, status) = (format!(" path={path} "), format!(" status={status} "));
        self.log_text()
            .lines()
            .filter(|l| l.contains(" request ") && l.contains(&path) && l.contains(&status))
            .count()
    }

    fn spawn(&mut self, listen: &str, log: &Path, extra: &[&str]) {
        let out = std::fs::File::create(log).expect("log file");
        let child = meshfs(self.netns.as_deref())
            .args(["cloud", "--allow-local-peers", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", listen])
            .args(extra)
            .env("MESHFS_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start meshfs cloud");
        self.child = Some(child);
        let mut url = None;
        let ok = eventually(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            url = announced(&text, "meshfs cloud listening on ");
            url.is_some()
        });
        assert!(
            ok,
            "cloud did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        self.url = url.unwrap_or_default();
    }

    pub fn ca(&self) -> PathBuf {
        self.data.join("ca.pem")
    }

    /// Sets `user`'s cloud storage quota with `meshfs user quota`.
    pub fn set_quota(&self, user: &str, bytes: u64) {
        let out = Command::new(bin())
            .args(["user", "quota", user, &bytes.to_string(), "--data-dir"])
            .arg(&self.data)
            .output()
            .expect("run meshfs user quota");
        assert!(
            out.status.success(),
            "user quota: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn add_user(&self, name: &str) {
        let out = run_with_stdin(
            Command::new(bin())
                .args(["user", "add", name, "--password-stdin", "--data-dir"])
                .arg(&self.data),
            PASSWORD,
        );
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the cloud again on the same address and data (after [`Cloud::kill`]), with the
    /// flags it was started with.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.url.trim_start_matches("https://").to_string();
        let mut flags = self.flags.clone();
        // The relay listens where it did: by default it would take the port after the
        // cloud's, which another socket may hold by now.
        if let Some(relay) = self.relay_addr()
            && !flags
                .iter()
                .any(|f| f == "--relay-listen" || f == "--no-relay")
        {
            flags.extend(["--relay-listen".to_string(), relay]);
        }
        let log = self.dir.path().join("cloud-restart.log");
        let _ = std::fs::remove_file(&log);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.spawn(&listen, &log, &flags);
        if let Some(twin) = &mut self.twin {
            twin.restart();
        }
    }

    /// Where the relay of this process's last start listened, by its log.
    fn relay_addr(&self) -> Option<String> {
        let restarted = self.dir.path().join("cloud-restart.log");
        let log = if restarted.exists() {
            restarted
        } else {
            self.dir.path().join("cloud.log")
        };
        announced(
            &std::fs::read_to_string(log).ok()?,
            "meshfs relay listening on ",
        )
    }

    /// Stops the cloud process (and its twin) for good.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(twin) = &mut self.twin {
            twin.kill();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Freezes the cloud (SIGSTOP), and its twin: connections hang as with a network outage.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
        if let Some(twin) = &self.twin {
            twin.pause();
        }
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
        if let Some(twin) = &self.twin {
            twin.resume();
        }
    }

    /// Every block in the cloud's block store.
    #[allow(dead_code)]
    pub fn blocks(&self) -> Vec<engines::StoredBlock> {
        engines::blocks(&self.engines)
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: the end of each log of this process, beside the test's output.
            for name in ["cloud.log", "cloud-restart.log"] {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                if !tail.is_empty() {
                    eprintln!("----- {name} of the cloud at {}\n{tail}", self.url);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshfs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{input}\n").as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait meshfs")
}

/// `meshfs login` of `user` at `urls` (checked with `cloud`'s CA) as device `name` into
/// `home`, in network namespace `netns` if given; the password goes on its stdin.
pub fn login_command(
    netns: Option<&str>,
    cloud: &Cloud,
    urls: &[&str],
    user: &str,
    name: &str,
    home: &Path,
) -> Command {
    let mut login = meshfs(netns);
    login.arg("login");
    for url in urls {
        login.args(["--cloud", url]);
    }
    login
        .arg("--ca")
        .arg(cloud.ca())
        .args(["--user", user, "--password-stdin", "--device-name", name])
        .arg("--home")
        .arg(home);
    login
}

/// A device logged in to a cloud, with its own home.
pub struct Device {
    pub home: PathBuf,
    pub name: String,
    /// The network namespace the device's commands and agent run in.
    pub netns: Option<String>,
    /// A protected home's passphrase file, given to every command and mount.
    pub passphrase_file: Option<PathBuf>,
    /// Where the device's commands and agent resolve host names first (see [`resolve_from`]).
    hosts: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Device {
    pub fn login(cloud: &Cloud, user: &str, name: &str) -> Self {
        Self::login_in(cloud, user, name, None)
    }

    /// Logs a device in to a cloud that runs several processes, at `urls` in that order.
    #[allow(dead_code)]
    pub fn login_to(cloud: &Cloud, urls: &[&str], user: &str, name: &str) -> Self {
        Self::login_as(cloud, urls, user, name, None, None, None)
    }

    /// Logs a device in at `url`, its commands and agent resolving host names from `hosts`
    /// first (a file in /etc/hosts' format).
    #[allow(dead_code)]
    pub fn login_resolving(cloud: &Cloud, url: &str, user: &str, name: &str, hosts: &Path) -> Self {
        Self::login_as(cloud, &[url], user, name, None, None, Some(hosts))
    }

    /// Logs a device in from network namespace `netns`.
    pub fn login_in(cloud: &Cloud, user: &str, name: &str, netns: Option<&str>) -> Self {
        let urls = cloud.urls_for_a_device();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        Self::login_as(cloud, &urls, user, name, netns, None, None)
    }

    /// Logs a device in with heightened security, under the passphrase in `passphrase_file`.
    pub fn login_protected(cloud: &Cloud, user: &str, name: &str, passphrase_file: &Path) -> Self {
        let urls = cloud.urls_for_a_device();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        Self::login_as(cloud, &urls, user, name, None, Some(passphrase_file), None)
    }

    fn login_as(
        cloud: &Cloud,
        urls: &[&str],
        user: &str,
        name: &str,
        netns: Option<&str>,
        passphrase_file: Option<&Path>,
        hosts: Option<&Path>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let mut login = login_command(netns, cloud, urls, user, name, &home);
        resolve_from(&mut login, hosts);
        if let Some(p) = passphrase_file {
            login.arg("--protect").arg("--passphrase-file").arg(p);
        }
        let out = run_with_stdin(&mut login, PASSWORD);
        assert!(
            out.status.success(),
            "login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Device {
            home,
            name: name.into(),
            netns: netns.map(str::to_string),
            passphrase_file: passphrase_file.map(Path::to_path_buf),
            hosts: hosts.map(Path::to_path_buf),
            _dir: dir,
        }
    }

    /// Runs `meshfs ARGS --home HOME` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = meshfs(self.netns.as_deref());
        resolve_from(&mut c, self.hosts.as_deref());
        c.args(args).arg("--home").arg(&self.home);
        if let Some(p) = &self.passphrase_file {
            c.env("MESHFS_PASSPHRASE_FILE", p);
        }
        c.output().expect("run meshfs")
    }

    /// This device's home, opened as its agent would (with its passphrase if protected).
    pub fn home(&self) -> meshfs::agent::home::Home {
        let home = meshfs::agent::home::Home::new(&self.home);
        match &self.passphrase_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).expect("passphrase file");
                let given = meshfs::agent::secrets::Passphrase::given(text.trim_end());
                home.with_passphrase(given)
            }
            None => home,
        }
    }

    /// Runs `meshfs ARGS --home HOME`, which must succeed.
    pub fn cli_ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "meshfs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn create_folder(&self, name: &str) {
        self.cli_ok(&["folder", "create", name]);
    }

    pub fn device_id(&self) -> String {
        let text = std::fs::read_to_string(self.home.join("device.toml")).expect("device.toml");
        let v: toml::Value = toml::from_str(&text).expect("toml");
        v["device_id"].as_str().unwrap_or_default().to_string()
    }

    /// The running agent's last report.
    pub fn status(&self) -> Option<AgentStatus> {
        serde_json::from_slice(&std::fs::read(self.home.join("status.json")).ok()?).ok()
    }

    /// The counters of the agent's last report.
    pub fn counters(&self) -> CounterSnapshot {
        self.status().expect("agent status").counters
    }

    /// The first report the agent writes after `since` (milliseconds since the epoch, as
    /// [`meshfs::proto::now_ms`] gives them). The agent takes `written_ms` before it reads
    /// its counters, so the report counts everything done before `since`.
    pub fn report_after(&self, since: i64) -> AgentStatus {
        let mut report = None;
        eventually(Duration::from_secs(10), || {
            report = self.status().filter(|s| s.written_ms > since);
            report.is_some()
        });
        report.unwrap_or_else(|| {
            panic!(
                "the agent of {} wrote no report after {since}: {:?}",
                self.name,
                self.status()
            )
        })
    }

    /// A report written after this call: what the agent counted up to now, with no sleep
    /// to wait for work that is still to come (show that first).
    pub fn fresh_status(&self) -> AgentStatus {
        self.report_after(meshfs::proto::now_ms())
    }

    /// Waits at most `limit` until a report written after this call satisfies `f`.
    pub fn reports(&self, limit: Duration, f: impl Fn(&AgentStatus) -> bool) -> bool {
        let since = meshfs::proto::now_ms();
        eventually(limit, || {
            self.status().is_some_and(|s| s.written_ms > since && f(&s))
        })
    }

    /// Waits until a report written after this call shows nothing left to upload.
    pub fn uploaded(&self) -> bool {
        self.uploaded_within(Duration::from_secs(60))
    }

    /// Like [`Device::uploaded`], for work that takes longer to upload.
    pub fn uploaded_within(&self, limit: Duration) -> bool {
        self.reports(limit, |s| s.pending_uploads == 0)
    }

    /// The id of folder `name`, by `meshfs folder list` (ID NAME ...).
    pub fn folder_id(&self, name: &str) -> String {
        let out = self.cli_ok(&["folder", "list"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("folder {name} is not listed"))
            .to_string()
    }

    /// The entries of folder `name` the cloud changed after feed position `since` (0: all
    /// of them), each in its latest state, and the position to ask from next; asked as
    /// this device, without waiting.
    pub fn cloud_changes(&self, name: &str, since: u64) -> (Vec<meshfs::proto::Entry>, u64) {
        let folder = self.folder_id(name);
        let client = meshfs::agent::client::connect(&self.home()).expect("cloud client");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut changes, mut next) = (Vec::new(), since);
        loop {
            let batch = rt
                .block_on(meshfs::agent::remote::Remote::changes(
                    &client, &folder, next, 0,
                ))
                .expect("change feed");
            if batch.changes.is_empty() {
                return (changes, batch.next.max(next));
            }
            next = batch.next;
            changes.extend(batch.changes);
        }
    }

    pub fn mount(&self) -> Mount {
        Mount::start(self)
    }

    /// Mounts with extra `meshfs mount` flags.
    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        Mount::start_with(self, extra)
    }

    /// Mounts with extra flags on a mount point in `parent` that every user may reach
    /// (mode 0755), such as a [`public_dir`].
    pub fn mount_in(&self, parent: &Path, extra: &[&str]) -> Mount {
        Mount::start_in(self, parent, extra)
    }
}

/// A `meshfs mount` process serving a real FUSE mount.
pub struct Mount {
    child: Option<Child>,
    pub path: PathBuf,
    home: PathBuf,
    log: PathBuf,
    netns: Option<String>,
    passphrase_file: Option<PathBuf>,
    hosts: Option<PathBuf>,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Mount {
    pub fn start(dev: &Device) -> Self {
        Self::start_with(dev, &[])
    }

    /// Mounts with extra `meshfs mount` flags. Outside a network namespace the peer
    /// listener binds 127.0.0.1 unless the flags say otherwise.
    pub fn start_with(dev: &Device, extra: &[&str]) -> Self {
        Self::start_at(dev, tempfile::tempdir().expect("tempdir"), extra)
    }

    /// Mounts with extra flags on a mount point in `parent`, in a directory of mode 0755.
    pub fn start_in(dev: &Device, parent: &Path, extra: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Self::start_at(dev, dir, extra)
    }

    fn start_at(dev: &Device, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let log = dir.path().join("agent.log");
        let mut m = Mount {
            child: None,
            path,
            home: dev.home.clone(),
            log,
            netns: dev.netns.clone(),
            passphrase_file: dev.passphrase_file.clone(),
            hosts: dev.hosts.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let peer_listen = if self.netns.is_some() {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        let mut mount = meshfs(self.netns.as_deref());
        resolve_from(&mut mount, self.hosts.as_deref());
        if let Some(p) = &self.passphrase_file {
            mount.env("MESHFS_PASSPHRASE_FILE", p);
        }
        let child = mount
            .arg("mount")
            .arg(&self.path)
            .arg("--home")
            .arg(&self.home)
            .args(&self.extra)
            .env("MESHFS_PEER_LISTEN", peer_listen)
            .env(
                "MESHFS_LOG",
                std::env::var("MESHFS_TEST_LOG").unwrap_or_else(|_| "info,fuser=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start meshfs mount");
        self.child = Some(child);
        // Mounted and answering: a stale mount left by a killed agent is listed too, but
        // answers ENOTCONN until the new agent has replaced it.
        let ok = eventually(Duration::from_secs(20), || {
            is_mounted(&self.path) && std::fs::read_dir(&self.path).is_ok()
        });
        assert!(ok, "mount did not come up: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of `rel` inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL: the agent dies with no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same mount point and home.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait: the clean way down.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.path)
                .status();
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// The names in `dir`, sorted (none when it cannot be read).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file (and symlink) below `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The command's stdout; fails the test with all its output unless it succeeded.
pub fn output_ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs the SQL script `sql` with the `sqlite3` CLI on database `db` (`-bail`: it stops at
/// the first error). The script comes from a file, so a sqlite3 that stops early cannot
/// break a pipe.
pub fn sqlite(db: &Path, sql: &str) -> Output {
    let mut script = tempfile::tempfile().expect("tempfile");
    script.write_all(sql.as_bytes()).expect("write the script");
    std::io::Seek::rewind(&mut script).expect("rewind the script");
    Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(script)
        .output()
        .expect("sqlite3 (Debian package sqlite3)")
}

/// A directory of mode 0755 that every local user can reach (for tests that act as another
/// user): in the temporary directory when others may search all of its ancestors
/// (scripts/test.sh makes its run's directory so), else in /tmp. Removed in `Drop`; a mount
/// in it must be dropped first.
pub fn public_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = std::env::temp_dir();
    let searchable = tmp
        .ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    let parent = if searchable {
        tmp
    } else {
        PathBuf::from("/tmp")
    };
    let dir = tempfile::Builder::new()
        .prefix("meshfs-public-")
        .tempdir_in(parent)
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A cloud with one user and two logged-in, mounted devices sharing folder "Docs".
/// Fields drop in order: mounts first, then the homes, then the cloud.
pub struct Mesh {
    pub ma: Mount,
    pub mb: Mount,
    pub a: Device,
    pub b: Device,
    pub cloud: Cloud,
}

impl Mesh {
    pub fn new() -> Self {
        Self::on(Cloud::start())
    }

    /// Two devices on a cloud started by the caller.
    pub fn on(cloud: Cloud) -> Self {
        Self::on_with(cloud, &[])
    }

    /// Two devices on a cloud started by the caller, mounted with extra flags.
    pub fn on_with(cloud: Cloud, mount_flags: &[&str]) -> Self {
        cloud.add_user("ann");
        let a = Device::login(&cloud, "ann", "laptop");
        let b = Device::login(&cloud, "ann", "desktop");
        a.create_folder("Docs");
        let ma = a.mount_with(mount_flags);
        let mb = b.mount_with(mount_flags);
        assert!(
            eventually(Duration::from_secs(20), || ma.join("Docs").is_dir()
                && mb.join("Docs").is_dir()),
            "folder did not appear"
        );
        Mesh {
            ma,
            mb,
            a,
            b,
            cloud,
        }
    }

    /// Waits until device A has uploaded everything.
    pub fn a_uploaded(&self) -> bool {
        self.a.uploaded()
    }
}

/// Three network namespaces made for one test: the cloud's, and one for each of two
/// devices, each joined to the cloud's by a veth pair. The cloud's namespace does not
/// forward, so the devices reach the cloud and the relay at [`Isolated::CLOUD_IP`] but
/// have no route to each other. Removed in `Drop`.
pub struct Isolated {
    pub cloud: String,
    pub a: String,
    pub b: String,
}

impl Isolated {
    pub const CLOUD_IP: &'static str = "10.77.0.1";

    pub fn new() -> Self {
        let tag = std::process::id() % 100_000;
        let net = Isolated {
            cloud: format!("mfs{tag}c"),
            a: format!("mfs{tag}a"),
            b: format!("mfs{tag}b"),
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ns in [&net.cloud, &net.a, &net.b] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &net.cloud,
            "addr",
            "add",
            &format!("{}/32", Self::CLOUD_IP),
            "dev",
            "lo",
        ]);
        for (ns, subnet) in [(&net.a, 1), (&net.b, 2)] {
            let (dev, peer) = (format!("{ns}d"), format!("{ns}p"));
            ip(&["link", "add", &dev, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &dev, "netns", ns]);
            ip(&["link", "set", &peer, "netns", &net.cloud]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.78.{subnet}.2/24"),
                "dev",
                &dev,
            ]);
            ip(&[
                "-n",
                &net.cloud,
                "addr",
                "add",
                &format!("10.78.{subnet}.1/24"),
                "dev",
                &peer,
            ]);
            ip(&["-n", ns, "link", "set", &dev, "up"]);
            ip(&["-n", &net.cloud, "link", "set", &peer, "up"]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("{}/32", Self::CLOUD_IP),
                "via",
                &format!("10.78.{subnet}.1"),
            ]);
        }
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward");
        assert!(forward.is_ok(), "no /proc/sys/net/ipv4/ip_forward");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.cloud,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=0",
            ])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        net
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.cloud] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
