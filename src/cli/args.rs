//! The command-line grammar: every subcommand and flag, with the help text users read.

use crate::agent::home::Home;
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
    /// Run the cloud: account service, mesh service and block storage over HTTPS.
    Cloud(CloudArgs),
    /// Manage the cloud's built-in users (run on the cloud's machine).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Log this device in: make its key, claim it for the user, remember the cloud.
    Login(LoginArgs),
    /// Create, list, map and unmap Mesh Folders.
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
}

impl Command {
    /// Long-running commands log at info by default; one-shot commands stay quiet.
    pub fn is_service(&self) -> bool {
        matches!(self, Command::Cloud(_) | Command::Mount(_))
    }
}

#[derive(Args, Debug)]
pub struct CloudArgs {
    /// Where the cloud keeps its database, keys, CA and blocks (made on first start).
    #[arg(long, env = "MESHFS_CLOUD_DIR")]
    pub data_dir: PathBuf,
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
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        name: String,
        #[arg(long, env = "MESHFS_CLOUD_DIR")]
        data_dir: PathBuf,
    },
    /// Set a user's cloud storage quota in bytes.
    Quota {
        name: String,
        bytes: u64,
        #[arg(long, env = "MESHFS_CLOUD_DIR")]
        data_dir: PathBuf,
    },
}

/// Where this device keeps its key and cache.
#[derive(Args, Debug, Clone)]
pub struct HomeArg {
    /// Device home [default: $MESHFS_HOME, else $XDG_DATA_HOME/meshfs]
    #[arg(long, env = "MESHFS_HOME", global = true)]
    pub home: Option<PathBuf>,
}

impl HomeArg {
    pub fn resolve(&self) -> anyhow::Result<Home> {
        if let Some(h) = &self.home {
            return Ok(Home::new(h));
        }
        let dirs = directories::ProjectDirs::from("", "", "meshfs").ok_or_else(|| {
            anyhow::anyhow!("no home directory found; pass --home or set MESHFS_HOME")
        })?;
        Ok(Home::new(dirs.data_dir()))
    }
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The cloud's URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    pub cloud: String,
    /// The cloud's CA certificate (`<data-dir>/ca.pem` on the cloud); it is pinned.
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub user: String,
    /// Read the password from standard input.
    #[arg(long, required = true)]
    pub password_stdin: bool,
    /// A name for this device [default: the host name]
    #[arg(long)]
    pub device_name: Option<String>,
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
    /// Unmap a folder from this device.
    Unmap {
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
    fn login_requires_password_stdin() {
        let r = Cli::try_parse_from([
            "meshfs",
            "login",
            "--cloud",
            "https://x",
            "--ca",
            "c",
            "--user",
            "u",
        ]);
        assert!(r.is_err());
    }
}
