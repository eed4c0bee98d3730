//! `meshfs device list|revoke`.

use crate::agent::mount::connect;
use crate::cli::args::DeviceCommand;
use anyhow::Context;

pub async fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::List { home } => {
            let home = home.resolve()?;
            let me = home.load_device()?.device_id;
            let client = connect(&home)?;
            let devices = client.devices().await.context("listing devices")?;
            println!("{:<36}  {:<20}  {:<8}  THIS", "ID", "NAME", "STATE");
            for d in devices {
                let state = if d.revoked { "revoked" } else { "active" };
                let this = if d.id == me { "*" } else { "" };
                println!("{:<36}  {:<20}  {:<8}  {this}", d.id, d.name, state);
            }
        }
        DeviceCommand::Revoke { id, home } => {
            let client = connect(&home.resolve()?)?;
            client
                .revoke(&id)
                .await
                .with_context(|| format!("revoking device {id}"))?;
            eprintln!("device {id} revoked; its tickets no longer work");
        }
    }
    Ok(())
}
