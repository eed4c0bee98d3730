//! The command-line grammar: every subcommand and flag, with the help text users read.

use crate::agent::home::Home;
use crate::agent::secrets::Passphrase;
use crate::cli::secret::{self, Ask, Source};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// meshfs: all of your files, on every device, as one mounted drive.
///
/// Start a cloud (`meshfs cloud`), add a user (`meshfs user add`), log each device in
/// (`meshfs login`), create Mesh Folders (`meshfs folder create`) and mount the mesh
/// (`meshfs mount ~/Mesh`). Set MESHFS_LOG=debug for detailed logs.
#[derive(Parser, Debug)]
#[command(name = "meshfs", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the cloud: account service, mesh service and block storage over HTTPS, and the
    /// relay for devices that cannot reach each other.
    Cloud(CloudArgs),
    /// Run a relay on a machine of its own. It holds no secret of the cloud's: only the
    /// cloud's public keys (read from --jwks), the cloud's CA certificate, and a CA and
    /// certificate of its own, made in --dir on first start. Then tell the cloud of it
    /// with `meshfs cloud add-relay`.
    Relay(RelayArgs),
    /// Manage the cloud's built-in users (run on the cloud's machine).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Log this device in: make its key, claim it for the user, remember the cloud.
    Login(LoginArgs),
    /// Create, list, map and share Mesh Folders.
    Folder {
        #[command(subcommand)]
        command: FolderCommand,
    },
    /// List or revoke the user's devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Mount the mesh and serve it in the foreground until SIGINT or SIGTERM.
    Mount(MountArgs),
    /// Show this device's state: login, the running agent, pending uploads, transfers.
    Status(StatusArgs),
    /// Protect a home logged in without --protect: seal its key and everything its agent
    /// keeps under a passphrase (stop the agent first; run again if stopped half way).
    Protect {
        #[command(flatten)]
        home: HomeArg,
    },
    /// Change the passphrase of a protected home (`login --protect`); its data stays as
    /// it is.
    Passphrase {
        #[command(subcommand)]
        command: PassphraseCommand,
    },
    /// Keep files on this device whatever the cache limit, for use offline: fetches what
    /// is missing and returns when all of it is here. A folder pins everything in it, also
    /// what is added later.
    Pin {
        /// Files or folders under the mount point.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Let pinned files be evicted again when the cache needs room.
    Unpin {
        /// Files or folders under the mount point.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the versions of a file the cloud keeps (time, device, size), or of a deleted
    /// one.
    History {
        /// A file under the mount point (or where a deleted one was).
        path: PathBuf,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Bring back an earlier version of a file, or a deleted file.
    #[command(disable_version_flag = true)]
    Restore {
        /// A file under the mount point (or where a deleted one was).
        path: PathBuf,
        /// The version to restore (`meshfs history` lists them) [default: a deleted file's
        /// last].
        #[arg(long)]
        version: Option<u64>,
        /// Restore under this name in the same folder instead.
        #[arg(long, value_name = "NEWPATH")]
        to: Option<PathBuf>,
        #[command(flatten)]
        home: HomeArg,
    },
    /// List files with their state (remote-only, partial, local, pinned, dirty) and how
    /// much of each is on this device, without fetching content.
    Ls {
        /// A folder or file under the mount point [default: the current directory].
        path: Option<PathBuf>,
    },
    /// Started by `meshfs mount` itself: waits for the agent to end (its stdin closes) and
    /// then clears the mount if the agent died without unmounting it.
    #[command(hide = true)]
    WatchMount { mountpoint: PathBuf },
}

impl Command {
    /// Long-running commands log at info by default; one-shot commands stay quiet.
    pub fn is_service(&self) -> bool {
        matches!(
            self,
            Command::Cloud(_) | Command::Relay(_) | Command::Mount(_)
        )
    }
}

/// The cloud's data directory and the engines its metadata and blocks are kept in.
#[derive(Args, Debug, Clone)]
pub struct CloudDirArg {
    /// Where the cloud keeps its CA and cloud.toml, and by default its database and blocks
    /// (made on first start).
    // An Option only so that `meshfs cloud rotate-keys` (which has its own) parses: clap
    // still requires it wherever it is asked for.
    #[arg(long, env = "MESHFS_CLOUD_DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// Metadata database: sqlite://PATH or postgres://USER@HOST/NAME [default: cloud.toml's
    /// `database`, else DATA_DIR/meshfs.db].
    #[arg(long, env = "MESHFS_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// Block store: file://PATH or s3://BUCKET/PREFIX, with the endpoint and credentials of
    /// the AWS_* variables [default: cloud.toml's `blocks`, else DATA_DIR/blocks].
    #[arg(long, value_name = "URL")]
    pub blocks: Option<String>,
}

impl CloudDirArg {
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir
            .as_deref()
            .unwrap_or(std::path::Path::new("."))
    }

    pub fn engines(&self) -> Result<crate::cloud::Engines, crate::cloud::CloudError> {
        crate::cloud::Engines::resolve(
            self.data_dir(),
            self.database.as_deref(),
            self.blocks.as_deref(),
        )
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CloudArgs {
    #[command(subcommand)]
    pub command: Option<CloudCommand>,
    #[command(flatten)]
    pub dir: CloudDirArg,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long)]
    pub tls_name: Vec<String>,
    /// Lifetime of identity tickets, in seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(i64).range(5..=86_400))]
    pub identity_ttl: i64,
    /// Lifetime of access tickets, in seconds.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(i64).range(5..=86_400))]
    pub access_ttl: i64,
    /// Address for the relay this process runs [default: the next port after --listen].
    #[arg(long, conflicts_with = "no_relay")]
    pub relay_listen: Option<SocketAddr>,
    /// Run no relay here: devices meet at the relays added with `meshfs cloud add-relay`,
    /// or reach each other directly.
    #[arg(long)]
    pub no_relay: bool,
    /// Test mode: keep a transcript of every byte the relay forwards in this directory.
    #[arg(long, hide = true)]
    pub relay_transcript: Option<PathBuf>,
    /// Accept loopback and link-local addresses from devices for peers to dial (all
    /// devices on one machine, as in tests); refused by default.
    #[arg(long)]
    pub allow_local_peers: bool,
    /// The most folders one user may own.
    #[arg(long, default_value_t = 1000)]
    pub max_folders: u64,
    /// Serve Prometheus metrics (requests, latency, tickets, blocks, long polls) over plain
    /// HTTP at http://ADDR/metrics, e.g. 127.0.0.1:9463; keep it off public networks.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Earlier versions of each file kept however old they are.
    #[arg(long, default_value_t = 10)]
    pub history_versions: usize,
    /// Days every earlier version of a file stays restorable.
    #[arg(long, default_value_t = 30)]
    pub history_days: u64,
    /// Days a deleted file stays restorable.
    #[arg(long, default_value_t = 30)]
    pub trash_days: u64,
    /// Seconds between runs of the collector, which frees blocks nothing references.
    #[arg(long, default_value_t = 600, hide = true)]
    pub collect_every: u64,
    /// Seconds an upload that nothing references yet is kept (a device's step may follow).
    #[arg(long, default_value_t = 3600, hide = true)]
    pub collect_grace: u64,
}

#[derive(Subcommand, Debug)]
pub enum CloudCommand {
    /// Tell devices of a relay started with `meshfs relay` (every process of the cloud
    /// lists it, after the relay a process runs itself).
    AddRelay {
        #[command(flatten)]
        dir: CloudDirArg,
        /// Where devices reach the relay, host:port.
        addr: String,
        /// The relay's CA certificate (ca.pem in the relay's --dir).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
    },
    /// Stop telling devices of a relay added with add-relay.
    RemoveRelay {
        #[command(flatten)]
        dir: CloudDirArg,
        addr: String,
    },
    /// Add a new ticket-signing key, shared with every process of the cloud through its
    /// database. It signs once they have all read it; older keys stay published until the
    /// tickets they signed have expired.
    RotateKeys {
        #[command(flatten)]
        dir: CloudDirArg,
        /// Seconds until the new key signs (processes and devices read the keys every 30 s).
        #[arg(long, default_value_t = 120)]
        signs_in: u64,
    },
}

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// The cloud's published keys, e.g. https://cloud.example:8443/.well-known/jwks.json;
    /// the cloud at the same origin answers whether a device may still use the relay.
    #[arg(long, value_name = "URL")]
    pub jwks: reqwest::Url,
    /// The cloud's CA certificate (the cloud's ca.pem), to reach --jwks.
    #[arg(long, value_name = "FILE")]
    pub cloud_ca: PathBuf,
    /// Where the relay keeps its own CA (ca.pem, which `meshfs cloud add-relay` takes, and
    /// ca-key.pem), made on first start.
    #[arg(long, env = "MESHFS_RELAY_DIR")]
    pub dir: PathBuf,
    /// Address to accept devices on.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    /// Extra DNS name or IP address for the relay's certificate (repeatable); devices dial
    /// the relay by the name `meshfs cloud add-relay` is given, which must be among them.
    #[arg(long)]
    pub tls_name: Vec<String>,
    /// Test mode: keep a transcript of every byte forwarded in this directory.
    #[arg(long, hide = true)]
    pub transcript: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user; the password is asked at the terminal (twice), or given to a script.
    Add {
        name: String,
        #[command(flatten)]
        dir: CloudDirArg,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Set a user's cloud storage quota in bytes.
    Quota {
        name: String,
        bytes: u64,
        #[command(flatten)]
        dir: CloudDirArg,
    },
}

/// Where a password comes from: the terminal without echo unless a flag says otherwise.
#[derive(Args, Debug, Clone)]
pub struct PasswordArg {
    /// Read the password from the first line of standard input (for scripts).
    #[arg(long, conflicts_with = "password_file")]
    pub password_stdin: bool,
    /// Read the password from the first line of this file (for scripts).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PasswordArg {
    pub fn source(&self) -> Source {
        Source::from_flags(self.password_stdin, self.password_file.clone())
    }
}

#[derive(Subcommand, Debug)]
pub enum PassphraseCommand {
    /// Seal the home's secrets under a new passphrase (the current one is asked first).
    Change {
        /// Read the new passphrase from the first line of this file (for scripts).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        home: HomeArg,
    },
}

/// Where this device keeps its key and cache, and how a protected one is opened.
#[derive(Args, Debug, Clone)]
pub struct HomeArg {
    /// Device home [default: $MESHFS_HOME, else $XDG_DATA_HOME/meshfs]
    #[arg(long, env = "MESHFS_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// A protected home's passphrase from the first line of standard input [default: asked
    /// at the terminal]
    #[arg(long, global = true)]
    pub passphrase_stdin: bool,
    /// A protected home's passphrase from the first line of this file (e.g. a systemd
    /// credential)
    #[arg(
        long,
        env = "MESHFS_PASSPHRASE_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub passphrase_file: Option<PathBuf>,
}

impl HomeArg {
    /// The home, which asks for its passphrase only if it is protected and a secret is
    /// needed.
    pub fn resolve(&self) -> anyhow::Result<Home> {
        let root = match &self.home {
            Some(h) => h.clone(),
            None => directories::ProjectDirs::from("", "", "meshfs")
                .ok_or_else(|| {
                    anyhow::anyhow!("no home directory found; pass --home or set MESHFS_HOME")
                })?
                .data_dir()
                .to_path_buf(),
        };
        let source = self.passphrase_source();
        Ok(Home::new(root).with_passphrase(Passphrase::new(move || {
            secret::read("passphrase", &source, Ask::Once).map_err(|e| format!("{e:#}"))
        })))
    }

    pub fn passphrase_source(&self) -> Source {
        Source::from_flags(self.passphrase_stdin, self.passphrase_file.clone())
    }
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The cloud's URL, e.g. https://127.0.0.1:8443. Repeat it for each process of a
    /// cloud that runs several: the device moves to the next when one fails.
    #[arg(long, required = true)]
    pub cloud: Vec<String>,
    /// The cloud's CA certificate (`<data-dir>/ca.pem` on the cloud); it is pinned.
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub user: String,
    #[command(flatten)]
    pub password: PasswordArg,
    /// A name for this device [default: the host name]
    #[arg(long)]
    pub device_name: Option<String>,
    /// Heightened security: seal the device key and everything the agent keeps on disk
    /// under a passphrase, asked at every mount (and twice now, unless given with
    /// --passphrase-stdin or --passphrase-file).
    #[arg(long)]
    pub protect: bool,
    #[command(flatten)]
    pub home: HomeArg,
}

#[derive(Subcommand, Debug)]
pub enum FolderCommand {
    /// Create a Mesh Folder owned by you.
    Create {
        name: String,
        /// Keep the folder's content off the cloud (devices only).
        #[arg(long)]
        device_only: bool,
        #[command(flatten)]
        home: HomeArg,
    },
    /// List your Mesh Folders and those shared with you.
    List {
        #[command(flatten)]
        home: HomeArg,
    },
    /// Map a folder on this device: its content may then come from, and go to, devices of
    /// other users who share the folder and have mapped it too.
    Map {
        /// The folder's name or id.
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Switch a folder you own between cloud-synced and device-only; versions written from
    /// then on follow the new setting.
    Content {
        /// The folder's name or id.
        folder: String,
        /// `device-only`: content never goes to the cloud; `cloud`: it does, while the
        /// quota lasts.
        #[arg(value_parser = ["device-only", "cloud"])]
        mode: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Print an access ticket for a folder (valid for minutes), to call the cloud's REST
    /// API yourself: curl -H "Authorization: Bearer $(meshfs folder ticket Docs)" \
    /// https://CLOUD/folders/ID/entries
    Ticket {
        /// The folder's name or id.
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Unmap a folder from this device.
    Unmap {
        /// The folder's name or id.
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Share a folder you own with another user, who accepts with `meshfs folder accept`;
    /// for someone who is a member already, set their role and share instead.
    Share {
        /// The folder's name or id.
        folder: String,
        /// The user to share it with.
        #[arg(long = "with", value_name = "USER")]
        user: String,
        /// `reader`: sees the files, changes nothing; `writer`: edits like you.
        #[arg(long, value_parser = ["reader", "writer"], default_value = "reader")]
        role: String,
        /// The most bytes the member may store in the folder, counted against your quota
        /// [default: no limit but your quota].
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        #[command(flatten)]
        home: HomeArg,
    },
    /// List the invitations to other users' folders that wait for your answer.
    Invitations {
        #[command(flatten)]
        home: HomeArg,
    },
    /// Accept an invitation: the folder appears in your mount, and is mapped on this device.
    Accept {
        /// The folder's name (or `NAME (OWNER)`, or its id), as `meshfs folder
        /// invitations` shows it.
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Decline an invitation.
    Decline {
        /// The folder's name (or `NAME (OWNER)`, or its id).
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// List a folder's owner and members with their roles, and the invitations that wait
    /// (for the owner).
    Members {
        /// The folder's name or id.
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Stop sharing a folder you own with a user (or withdraw their invitation): their
    /// devices lose it at once, cached copies included.
    Unshare {
        /// The folder's name or id.
        folder: String,
        /// The member to remove.
        #[arg(long = "with", value_name = "USER")]
        user: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Leave a folder shared with you: it leaves your mount and this user's devices.
    Leave {
        /// The folder's name or id.
        folder: String,
        #[command(flatten)]
        home: HomeArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// List the user's devices.
    List {
        #[command(flatten)]
        home: HomeArg,
    },
    /// Revoke a device: its tickets stop working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        home: HomeArg,
    },
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty directory to mount the mesh on.
    pub mountpoint: PathBuf,
    /// Where to listen for the user's other devices (peer to peer transfers).
    #[arg(long, env = "MESHFS_PEER_LISTEN", default_value = "0.0.0.0:0")]
    pub peer_listen: SocketAddr,
    /// The address to tell peers instead of the listener's own (a port forwarded on a
    /// router, say) [default: the listener's, with a wildcard IP replaced by the one this
    /// host reaches the cloud from].
    #[arg(long, env = "MESHFS_PEER_ADVERTISE")]
    pub peer_advertise: Option<SocketAddr>,
    /// Neither serve blocks to peers nor fetch from them: the cloud only.
    #[arg(long, env = "MESHFS_NO_PEERS", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_peers: bool,
    /// Let every local user (and services running as other users) into the mount, with
    /// permissions checked against each file's mode bits. By default only the owner of the
    /// device home and root may use it. Needs root, or `user_allow_other` in
    /// /etc/fuse.conf.
    #[arg(long)]
    pub allow_other: bool,
    /// How much room content may take on this device (512M, 20G, ...); the least recently
    /// used blocks that are safe elsewhere are evicted past it [default: `cache_size` in
    /// config.toml in the device home, else 10% of the file system, at least 1G].
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<crate::agent::config::Size>,
    /// Serve every read through the agent, never by FUSE passthrough (by default the
    /// kernel reads files wholly on this device from a copy of each, where it allows;
    /// also `passthrough = false` in config.toml).
    #[arg(long, env = "MESHFS_NO_PASSTHROUGH", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_passthrough: bool,
    /// Append every peer session's secrets to this file, for tests and for debugging a
    /// capture; whoever reads it can decrypt the recorded traffic. Set through the
    /// environment only, like TLS's SSLKEYLOGFILE.
    #[arg(long, env = "MESHFS_PEER_KEYLOG", hide = true)]
    pub peer_keylog: Option<PathBuf>,
    /// Serve Prometheus metrics (the totals of `meshfs status`) over plain HTTP at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub home: HomeArg,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub home: HomeArg,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_password_comes_from_one_place() {
        let login = [
            "meshfs",
            "login",
            "--cloud",
            "https://x",
            "--ca",
            "c",
            "--user",
            "u",
        ];
        let parse = |extra: &[&str]| Cli::try_parse_from(login.iter().chain(extra));
        assert!(parse(&["--password-stdin", "--password-file", "f"]).is_err());
        let Command::Login(a) = parse(&[]).unwrap().command else {
            panic!("not a login");
        };
        assert_eq!(a.password.source(), Source::Terminal);
    }
}
