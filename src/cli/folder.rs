//! `meshfs folder create|list|map|unmap|content`.

use crate::agent::client::CloudClient;
use crate::agent::client::connect;
use crate::agent::remote::Remote;
use crate::cli::args::{FolderCommand, HomeArg};
use crate::proto::FolderGrant;
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
        FolderCommand::Content { folder, mode, home } => {
            let client = connect(&home.resolve()?)?;
            let id = find(&client, &folder).await?.folder.id;
            let f = client
                .set_device_only(&id, mode == "device-only")
                .await
                .with_context(|| format!("changing the content setting of {folder}"))?;
            let now = if f.device_only {
                "device-only: new versions stay on your devices"
            } else {
                "cloud-synced: new versions go to the cloud while the quota lasts"
            };
            println!("{} is {now}", f.name);
        }
    }
    Ok(())
}

/// The folder named `folder` (or with that id) among those the user can see.
async fn find(client: &CloudClient, folder: &str) -> anyhow::Result<FolderGrant> {
    let mut grants = client.folders().await.context("listing folders")?;
    let found = grants
        .iter()
        .position(|g| g.folder.id == folder)
        .or_else(|| grants.iter().position(|g| g.folder.name == folder))
        .with_context(|| format!("no folder {folder:?}: `meshfs folder list` shows yours"))?;
    Ok(grants.swap_remove(found))
}

/// Maps or unmaps the folder named (or with the id) `folder` on this device.
async fn set_mapped(folder: &str, home: HomeArg, on: bool) -> anyhow::Result<()> {
    let client = connect(&home.resolve()?)?;
    let found = find(&client, folder).await?;
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
