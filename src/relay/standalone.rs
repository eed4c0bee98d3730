//! A relay on a machine of its own (`meshfs relay`): it holds the cloud's published keys,
//! read from the JWKS URL and read again every [`KEYS_EVERY`], the cloud's CA certificate
//! to reach that URL, and a CA and certificate of its own, made in its directory on first
//! start. Nothing it holds signs a ticket or is accepted by the cloud (DESIGN §7a).

use super::standing::{AskError, CloudStandings};
use super::{RelayConfig, RelayError, RunningRelay, start};
use crate::crypto::ticket::KeySet;
use crate::net::tls;
use crate::proto::Jwks;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// How often the cloud's keys are read again: as often as devices read them, so a key
/// the cloud adds (published before it signs) is known here before it signs.
pub const KEYS_EVERY: Duration = Duration::from_secs(30);
/// The subject of the relay's own CA.
const CA_NAME: &str = "meshfs relay CA";

/// How to run a relay on its own.
#[derive(Clone, Debug)]
pub struct StandaloneConfig {
    /// Where the relay keeps its CA (`ca.pem`, `ca-key.pem`), made on first start.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Names and addresses for its certificate.
    pub names: Vec<String>,
    /// The cloud's JWKS, `https://cloud/.well-known/jwks.json`; the cloud at the same
    /// origin answers questions about devices' standing.
    pub jwks: reqwest::Url,
    /// The cloud's CA certificate (PEM), which its HTTPS chains to.
    pub cloud_ca: PathBuf,
    pub transcript: Option<PathBuf>,
}

/// A relay running on its own, and the task that keeps its keys current.
pub struct Standalone {
    pub relay: RunningRelay,
    _keys: AbortOnDropHandle<()>,
}

/// Starts a relay on its own: reads the cloud's keys once (failing if it cannot), makes or
/// loads its certificate and listens.
pub async fn start_standalone(cfg: StandaloneConfig) -> Result<Standalone, RelayError> {
    let ca = std::fs::read(&cfg.cloud_ca).map_err(|source| RelayError::CloudCa {
        path: cfg.cloud_ca.display().to_string(),
        source,
    })?;
    let http = tls::https_client(&ca).map_err(|e| RelayError::CloudCa {
        path: cfg.cloud_ca.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let keys_err = |source| RelayError::Keys {
        url: cfg.jwks.to_string(),
        source,
    };
    let keys = read_keys(&http, &cfg.jwks).await.map_err(keys_err)?;
    let (publish, keys) = watch::channel(Arc::new(keys));
    let refresher = AbortOnDropHandle::new(tokio::spawn(read_keys_now_and_then(
        http.clone(),
        cfg.jwks.clone(),
        publish,
    )));
    let mut url = cfg.jwks.clone();
    url.set_path("/relay/standing");
    url.set_query(None);
    let standings = CloudStandings { http, url };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.dir)
        .map_err(|source| {
            RelayError::Certificate(tls::TlsError::Io {
                path: cfg.dir.display().to_string(),
                source,
            })
        })?;
    let ca = tls::Ca::in_dir(&cfg.dir, CA_NAME)?;
    let (_, relay_tls) = tls::server_configs(&ca, CA_NAME, &cfg.names)?;
    let relay_cfg = RelayConfig {
        listen: cfg.listen,
        transcript: cfg.transcript,
    };
    let relay = start(relay_cfg, relay_tls, keys, Arc::new(standings)).await?;
    Ok(Standalone {
        relay,
        _keys: refresher,
    })
}

async fn read_keys(http: &reqwest::Client, url: &reqwest::Url) -> Result<KeySet, AskError> {
    let res = http
        .get(url.clone())
        .send()
        .await
        .map_err(AskError::Unreachable)?;
    if !res.status().is_success() {
        return Err(AskError::Status {
            status: res.status().as_u16(),
        });
    }
    let jwks: Jwks = res.json().await.map_err(AskError::Malformed)?;
    KeySet::from_jwks(&jwks).map_err(AskError::UnusableKeys)
}

/// Reads the cloud's keys every [`KEYS_EVERY`]; a failed read keeps the keys known.
async fn read_keys_now_and_then(
    http: reqwest::Client,
    url: reqwest::Url,
    publish: watch::Sender<Arc<KeySet>>,
) {
    loop {
        tokio::time::sleep(KEYS_EVERY).await;
        match read_keys(&http, &url).await {
            Ok(keys) => {
                publish.send_replace(Arc::new(keys));
            }
            Err(e) => tracing::warn!(%url, error = %e, "reading the cloud's keys"),
        }
    }
}
