//! The command line: parses arguments with clap and runs one subcommand. Each subcommand
//! lives in its own file and turns its arguments into the calls of `cloud` or `agent`.

mod args;
mod device;
mod folder;
mod history;
mod login;
mod passphrase;
mod pin;
mod secret;
mod status;

use anyhow::Context;
use args::{Cli, CloudArgs, CloudCommand, Command, UserCommand};
use clap::Parser;
use std::io::IsTerminal;

/// Parses the process arguments and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.command.is_service());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(dispatch(cli.command));
    // Do not wait on a blocking task stuck in the kernel (e.g. a FUSE session with files
    // still open after unmount).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn init_logging(service: bool) {
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a person at a terminal: a log redirected to a file or read by
    // journald gets plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Cloud(CloudArgs {
            command: Some(CloudCommand::RotateKeys { dir, signs_in }),
            ..
        }) => {
            let kid = crate::cloud::rotate_keys(
                &dir.engines()?,
                std::time::Duration::from_secs(signs_in),
            )
            .await
            .context("adding a signing key")?;
            eprintln!("signing key {kid} added; it signs in {signs_in} s");
            Ok(())
        }
        Command::Cloud(CloudArgs {
            command: Some(CloudCommand::AddRelay { dir, addr, ca }),
            ..
        }) => {
            let pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading the relay's CA {}", ca.display()))?;
            crate::cloud::add_relay(&dir.engines()?, &addr, &pem)
                .await
                .with_context(|| format!("adding the relay at {addr}"))?;
            eprintln!("relay {addr} added; devices learn of it within a minute");
            Ok(())
        }
        Command::Cloud(CloudArgs {
            command: Some(CloudCommand::RemoveRelay { dir, addr }),
            ..
        }) => {
            crate::cloud::remove_relay(&dir.engines()?, &addr)
                .await
                .with_context(|| format!("removing the relay at {addr}"))?;
            eprintln!("relay {addr} removed");
            Ok(())
        }
        Command::Cloud(a) => {
            let mut cfg = crate::cloud::CloudConfig::new(a.dir.data_dir().to_owned(), a.listen);
            cfg.engines = a.dir.engines()?;
            cfg.tls_names.extend(a.tls_name);
            cfg.identity_ttl_secs = a.identity_ttl;
            cfg.access_ttl_secs = a.access_ttl;
            if a.no_relay {
                cfg.relay_listen = None;
            } else if let Some(listen) = a.relay_listen {
                cfg.relay_listen = Some(listen);
            }
            cfg.relay_transcript = a.relay_transcript;
            cfg.allow_local_peers = a.allow_local_peers;
            cfg.max_folders = a.max_folders;
            cfg.metrics_listen = a.metrics_listen;
            let days = |n: u64| std::time::Duration::from_secs(n.saturating_mul(86_400));
            cfg.retention = crate::cloud::Retention {
                versions_per_file: a.history_versions,
                keep_for: days(a.history_days),
                trash_for: days(a.trash_days),
                grace: std::time::Duration::from_secs(a.collect_grace),
            };
            cfg.collect_every = std::time::Duration::from_secs(a.collect_every.max(1));
            let running = crate::cloud::start(cfg)
                .await
                .context("starting the cloud")?;
            eprintln!(
                "meshfs cloud listening on https://{} (CA for clients: {})",
                running.addr,
                a.dir.data_dir().join("ca.pem").display()
            );
            if let Some(relay) = running.relay_addr {
                eprintln!("meshfs relay listening on {relay}");
            }
            running
                .serve_until(shutdown_signal())
                .await
                .context("the cloud stopped")
        }
        Command::Relay(a) => {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            names.extend(a.tls_name);
            let cfg = crate::relay::StandaloneConfig {
                dir: a.dir,
                listen: a.listen,
                names,
                jwks: a.jwks,
                cloud_ca: a.cloud_ca,
                transcript: a.transcript,
            };
            let ca_file = cfg.dir.join("ca.pem");
            let running = crate::relay::start_standalone(cfg)
                .await
                .context("starting the relay")?;
            eprintln!(
                "meshfs relay listening on {} (its CA, for `meshfs cloud add-relay --ca`: {})",
                running.relay.addr,
                ca_file.display()
            );
            shutdown_signal().await;
            Ok(())
        }
        Command::User { command } => match command {
            UserCommand::Add {
                name,
                dir,
                password,
            } => {
                let engines = dir.engines()?;
                let password = secret::read("password", &password.source(), secret::Ask::Twice)?;
                crate::cloud::add_user(&engines, &name, &password)
                    .await
                    .with_context(|| format!("adding user {name}"))?;
                eprintln!("user {name} added");
                Ok(())
            }
            UserCommand::Quota { name, bytes, dir } => {
                crate::cloud::set_quota(&dir.engines()?, &name, bytes)
                    .await
                    .with_context(|| format!("setting the quota of {name}"))?;
                Ok(())
            }
        },
        Command::Login(a) => login::run(a).await,
        Command::Folder { command } => folder::run(command).await,
        Command::Device { command } => device::run(command).await,
        Command::Mount(a) => {
            let home = a.home.resolve()?;
            let peers = (!a.no_peers).then_some(crate::agent::mount::PeerOptions {
                listen: a.peer_listen,
                advertise: a.peer_advertise,
                key_log: a.peer_keylog.clone(),
            });
            let access = if a.allow_other {
                crate::agent::mount::Access::Everyone
            } else {
                crate::agent::mount::Access::Owner
            };
            let passthrough = a.no_passthrough.then_some(false);
            crate::agent::mount::run(
                &home,
                &a.mountpoint,
                peers,
                access,
                a.cache_size,
                passthrough,
                a.metrics_listen,
            )
            .await
            .with_context(|| format!("mounting the mesh at {}", a.mountpoint.display()))
        }
        Command::Status(a) => status::run(a).await,
        Command::Protect { home } => passphrase::protect(&home),
        Command::Passphrase {
            command:
                args::PassphraseCommand::Change {
                    new_passphrase_file,
                    home,
                },
        } => passphrase::change(&home, new_passphrase_file),
        Command::Pin { paths } => pin::pin(&paths),
        Command::Unpin { paths } => pin::unpin(&paths),
        Command::Ls { path } => pin::ls(path.as_deref()),
        Command::History { path, home } => history::list(&home.resolve()?, &path).await,
        Command::Restore {
            path,
            version,
            to,
            home,
        } => history::restore(&home.resolve()?, &path, version, to.as_deref()).await,
        Command::WatchMount { mountpoint } => {
            crate::agent::mount::watch(&mountpoint).await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    if let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
}
