//! `meshfs folder create|list|map|unmap`.

use crate::agent::mount::connect;
use crate::cli::args::{FolderCommand, HomeArg};
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
        FolderCommand::Map { folder, home } => set_mapped(&folder, home, true).await?,
        FolderCommand::Unmap { folder, home } => set_mapped(&folder, home, false).await?,
    }
    Ok(())
}

/// Maps or unmaps the folder named (or with the id) `folder` on this device.
async fn set_mapped(folder: &str, home: HomeArg, on: bool) -> anyhow::Result<()> {
    let client = connect(&home.resolve()?)?;
    let grants = client.folders().await.context("listing folders")?;
    let found = grants
        .iter()
        .find(|g| g.folder.id == folder)
        .or_else(|| grants.iter().find(|g| g.folder.name == folder))
        .with_context(|| {
            format!("no folder {folder:?}: `meshfs folder list` shows the folders you can map")
        })?;
    let device = client.device_id().to_string();
    client
        .set_mapped(&device, &found.folder.id, on)
        .await
        .with_context(|| format!("recording the mapping of {folder}"))?;
    println!(
        "{} {} on this device",
        if on { "mapped" } else { "unmapped" },
        found.folder.name
    );
    Ok(())
}
