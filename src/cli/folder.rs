//! `meshfs folder create|list|ticket|map|unmap|content`, and sharing with other users:
//! `share|invitations|accept|decline|members|unshare|leave`.

use crate::agent::client::CloudClient;
use crate::agent::client::connect;
use crate::agent::feed::mount_names;
use crate::agent::remote::{ClientError, Remote};
use crate::cli::args::{FolderCommand, HomeArg};
use crate::proto::{ErrorCode, FolderGrant, Invitation, MemberUpdate, NewInvitation, Right, Role};
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
        FolderCommand::Share {
            folder,
            user,
            role,
            max_bytes,
            home,
        } => {
            let role = Role::parse(&role).context("a role is reader or writer")?;
            share(&connect(&home.resolve()?)?, &folder, &user, role, max_bytes).await?;
        }
        FolderCommand::Invitations { home } => {
            let client = connect(&home.resolve()?)?;
            let waiting = client.invitations().await.context("listing invitations")?;
            if waiting.is_empty() {
                println!("no invitations wait for you");
            }
            for i in waiting {
                println!(
                    "{} (from {}) as {}{}: `meshfs folder accept {}` or `meshfs folder decline {}`",
                    i.folder_name,
                    i.owner,
                    i.role.as_str(),
                    share_text(i.max_bytes),
                    i.folder_name,
                    i.folder_name
                );
            }
        }
        FolderCommand::Accept { folder, home } => {
            let client = connect(&home.resolve()?)?;
            let inv = invitation(&client, &folder).await?;
            let grant = client
                .accept(&inv.folder)
                .await
                .with_context(|| format!("accepting {folder}"))?;
            let device = client.device_id().to_string();
            client
                .set_mapped(&device, &inv.folder, true)
                .await
                .with_context(|| format!("mapping {folder} on this device"))?;
            println!(
                "{} (from {}) is shared with you as {}; it appears in the mount within seconds",
                grant.folder.name,
                grant.folder.owner,
                inv.role.as_str()
            );
        }
        FolderCommand::Decline { folder, home } => {
            let client = connect(&home.resolve()?)?;
            let inv = invitation(&client, &folder).await?;
            let me = client.user().to_string();
            client
                .drop_invitation(&inv.folder, &me)
                .await
                .with_context(|| format!("declining {folder}"))?;
            println!("declined {} (from {})", inv.folder_name, inv.owner);
        }
        FolderCommand::Members { folder, home } => {
            let client = connect(&home.resolve()?)?;
            let found = find(&client, &folder).await?;
            let id = &found.folder.id;
            let members = client.members(id).await.context("listing members")?;
            println!("{:<24}  {:<7}  {:>14}  SHARE", "USER", "ROLE", "STORED");
            for m in members {
                println!(
                    "{:<24}  {:<7}  {:>14}  {}",
                    m.user,
                    m.role.as_str(),
                    m.stored_bytes,
                    m.max_bytes.map_or("-".into(), |b| b.to_string())
                );
            }
            if found.rights.contains(&Right::Admin) {
                for i in client
                    .invitations_to(id)
                    .await
                    .context("listing invitations")?
                {
                    println!(
                        "{:<24}  {:<7}  {:>14}  invited",
                        i.user,
                        i.role.as_str(),
                        "-"
                    );
                }
            }
        }
        FolderCommand::Unshare { folder, user, home } => {
            let client = connect(&home.resolve()?)?;
            let id = find(&client, &folder).await?.folder.id;
            match client.remove_member(&id, &user).await {
                Ok(()) => println!("{user} is no longer a member of {folder}"),
                Err(e) if e.status() == Some(404) => {
                    client.drop_invitation(&id, &user).await.with_context(|| {
                        format!("{user} is neither a member of {folder} nor invited")
                    })?;
                    println!("withdrew {user}'s invitation to {folder}");
                }
                Err(e) => return Err(e).with_context(|| format!("removing {user} from {folder}")),
            }
        }
        FolderCommand::Leave { folder, home } => {
            let client = connect(&home.resolve()?)?;
            let found = find(&client, &folder).await?;
            let me = client.user().to_string();
            client
                .remove_member(&found.folder.id, &me)
                .await
                .with_context(|| format!("leaving {folder}"))?;
            println!("you left {folder}; it leaves your mount within seconds");
        }
        FolderCommand::Ticket { folder, home } => {
            let client = connect(&home.resolve()?)?;
            println!("{}", find(&client, &folder).await?.ticket.ticket);
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

/// The folder with id `folder`, or named `folder` as the mount shows it (a shared folder
/// may be `NAME (OWNER)`), or by its own name, among those the user can see.
async fn find(client: &CloudClient, folder: &str) -> anyhow::Result<FolderGrant> {
    let mut grants = client.folders().await.context("listing folders")?;
    let names = mount_names(&grants, client.user());
    let found = grants
        .iter()
        .position(|g| g.folder.id == folder)
        .or_else(|| names.iter().position(|n| n == folder))
        .or_else(|| grants.iter().position(|g| g.folder.name == folder))
        .with_context(|| format!("no folder {folder:?}: `meshfs folder list` shows yours"))?;
    Ok(grants.swap_remove(found))
}

/// The invitation waiting for this user to the folder with id `folder`, or named `folder`,
/// or `NAME (OWNER)`.
async fn invitation(client: &CloudClient, folder: &str) -> anyhow::Result<Invitation> {
    let waiting = client.invitations().await.context("listing invitations")?;
    let matches: Vec<&Invitation> = waiting
        .iter()
        .filter(|i| {
            i.folder == folder
                || i.folder_name == folder
                || format!("{} ({})", i.folder_name, i.owner) == folder
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => anyhow::bail!(
            "no invitation to {folder:?} waits for you: `meshfs folder invitations` lists them"
        ),
        _ => anyhow::bail!(
            "several invitations to folders named {folder:?}: name one as `NAME (OWNER)`"
        ),
    }
}

fn share_text(max_bytes: Option<u64>) -> String {
    max_bytes.map_or(String::new(), |b| format!(", storing at most {b} bytes"))
}

/// Invites `user`, or, for a member, sets their role and share.
async fn share(
    client: &CloudClient,
    folder: &str,
    user: &str,
    role: Role,
    max_bytes: Option<u64>,
) -> anyhow::Result<()> {
    let id = find(client, folder).await?.folder.id;
    let invitation = NewInvitation {
        user: user.to_string(),
        role,
        max_bytes,
    };
    match client.invite(&id, &invitation).await {
        Ok(_) => println!(
            "invited {user} to {folder} as {}{}; they accept with `meshfs folder accept {folder}`",
            role.as_str(),
            share_text(max_bytes)
        ),
        Err(ClientError::Api {
            code: ErrorCode::AlreadyMember,
            ..
        }) if user != client.user() => {
            let update = MemberUpdate { role, max_bytes };
            client
                .update_member(&id, user, &update)
                .await
                .with_context(|| format!("changing {user}'s role on {folder}"))?;
            println!(
                "{user} is now a {} of {folder}{}",
                role.as_str(),
                share_text(max_bytes)
            );
        }
        Err(e) => return Err(e).with_context(|| format!("sharing {folder} with {user}")),
    }
    Ok(())
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
