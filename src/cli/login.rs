//! `meshfs login`: makes a new device key (kept on the device, mode 0600, or sealed under
//! a passphrase with `--protect`), claims the device for the user with the password, pins
//! the cloud's CA, and writes `device.toml`.

use crate::agent::client;
use crate::agent::home::DeviceFile;
use crate::agent::secrets::{self, Passphrase};
use crate::cli::args::LoginArgs;
use crate::cli::secret::{self, Ask, Source};
use crate::crypto::keys;
use crate::crypto::seal::CacheKey;
use crate::crypto::ticket::Signer;
use crate::proto::{AUDIENCE_CLAIM, ClaimProof, LoginRequest};
use anyhow::Context;
use std::os::unix::fs::DirBuilderExt;

pub async fn run(a: LoginArgs) -> anyhow::Result<()> {
    let passphrase = a.home.passphrase_source();
    let password = a.password.source();
    anyhow::ensure!(
        !(password == Source::Stdin && passphrase == Source::Stdin),
        "standard input can carry the password or the passphrase, not both; give one in a file"
    );
    let home = a.home.resolve()?;
    // The cache key of a protected home, kept across logins; a new one for a new home.
    let cache_key = match (a.protect, home.is_protected()) {
        (false, false) => None,
        (false, true) => anyhow::bail!(
            "{} is protected; log in with --protect to keep it so",
            home.root().display()
        ),
        (true, false) => {
            anyhow::ensure!(
                !home.cache_dir().exists(),
                "{} holds a plain cache; protect a new home (an empty --home)",
                home.root().display()
            );
            let passphrase = secret::read("passphrase", &passphrase, Ask::Twice)?;
            Some((CacheKey::generate().1, passphrase))
        }
        (true, true) => {
            let passphrase = secret::read("passphrase", &passphrase, Ask::Once)?;
            let old = secrets::unlock(&home, Some(&Passphrase::given(&passphrase)))?;
            let bytes = old
                .cache_key_bytes
                .clone()
                .context("the sealed secrets hold no cache key")?;
            Some((bytes, passphrase))
        }
    };
    let password = secret::read("password", &password, Ask::Once)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home.root())
        .with_context(|| format!("creating the device home {}", home.root().display()))?;
    let ca = std::fs::read(&a.ca)
        .with_context(|| format!("reading the cloud's CA {}", a.ca.display()))?;

    // A fresh key at every login, also in a home logged in before: a key copied off a
    // device since revoked must not be claimed again. It replaces the old one only once
    // the claim succeeded.
    eprintln!("Making this device's RSA key…");
    let key = tokio::task::spawn_blocking(keys::generate)
        .await
        .context("generating the device key")?;
    let fresh = home.key().with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    if cache_key.is_none() {
        keys::save_private(&key, &fresh)?;
    }
    let http = client::https(&ca)?;
    let device_name = match a.device_name {
        Some(n) => n,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "device".into()),
    };
    let clouds: Vec<String> = a
        .cloud
        .iter()
        .map(|c| c.trim_end_matches('/').to_string())
        .collect();
    let cloud = first_answering(&http, &clouds).await?;
    let claim = async {
        let challenge = client::claim_challenge(&http, &cloud).await?.challenge;
        let proof = Signer::new("device", key.clone()).sign(&ClaimProof {
            aud: AUDIENCE_CLAIM.into(),
            challenge: challenge.clone(),
            user: a.user.clone(),
            device_name: device_name.clone(),
        });
        let req = LoginRequest {
            user: a.user.clone(),
            password: password.to_string(),
            device_name: device_name.clone(),
            device_key: keys::public_pem(&key.to_public_key())?,
            challenge,
            proof,
        };
        anyhow::Ok(client::login(&http, &cloud, &req).await?)
    };
    let resp = match claim.await {
        Ok(resp) => resp,
        Err(e) => {
            let _ = std::fs::remove_file(&fresh);
            return Err(e).with_context(|| format!("logging in to {cloud} as {}", a.user));
        }
    };
    match &cache_key {
        Some((bytes, passphrase)) => secrets::seal(&home, &key, bytes, passphrase)
            .context("sealing the device key under the passphrase")?,
        None => std::fs::rename(&fresh, home.key())
            .with_context(|| format!("putting the new key at {}", home.key().display()))?,
    }
    std::fs::write(home.ca(), &ca).with_context(|| format!("writing {}", home.ca().display()))?;
    home.save_device(&DeviceFile {
        more_clouds: clouds.into_iter().filter(|c| *c != cloud).collect(),
        cloud,
        user: resp.user.clone(),
        device_id: resp.device_id.clone(),
        device_name,
    })?;
    eprintln!(
        "Logged in as {}; this device is {}.",
        resp.user, resp.device_id
    );
    Ok(())
}

/// The first of `clouds` that answers, so that a login goes through while one is down.
async fn first_answering(http: &reqwest::Client, clouds: &[String]) -> anyhow::Result<String> {
    let mut last = None;
    for cloud in clouds {
        match client::health(http, cloud).await {
            Ok(()) => return Ok(cloud.clone()),
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("{cloud} did not answer"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no cloud URL given")))
}
