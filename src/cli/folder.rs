//! `meshfs folder create|list`.

use crate::agent::mount::connect;
use crate::cli::args::FolderCommand;
use crate::proto::Right;
use anyhow::Context;

pub async fn run(cmd: FolderCommand) -> anyhow::Result<()> {
    match cmd {
        FolderCommand::Create {
            name,
            device_only,
            home,
        } => {
            let client = connect(&home.resolve()?)?;
            let g = client
                .create_folder(&name, device_only)
                .await
                .with_context(|| format!("creating folder {name}"))?;
            println!("{}\t{}", g.folder.id, g.folder.name);
        }
        FolderCommand::List { home } => {
            let client = connect(&home.resolve()?)?;
            let grants = client.folders().await.context("listing folders")?;
            println!(
                "{:<36}  {:<24}  {:<10}  {:<12}  RIGHTS",
                "ID", "NAME", "OWNER", "CONTENT"
            );
            for g in grants {
                let rights: Vec<&str> = g
                    .rights
                    .iter()
                    .map(|r| match r {
                        Right::Read => "read",
                        Right::Write => "write",
                        Right::Admin => "admin",
                    })
                    .collect();
                let content = if g.folder.device_only {
                    "device-only"
                } else {
                    "cloud"
                };
                println!(
                    "{:<36}  {:<24}  {:<10}  {:<12}  {}",
                    g.folder.id,
                    g.folder.name,
                    g.folder.owner,
                    content,
                    rights.join(",")
                );
            }
        }
    }
    Ok(())
}
