//! The cloud process (`meshfs cloud`): the account service and the mesh service over HTTPS,
//! with metadata in SQLite or PostgreSQL and blocks in a directory or S3 (DESIGN §7;
//! `engines.rs`). This file holds the
//! configuration, the shared state, the router and the server's start and stop; the
//! admin operations (`add_user`, `set_quota`, `share_folder`) open the same store.

pub(crate) mod account;
pub(crate) mod auth;
pub(crate) mod blobs;
pub mod engines;
pub(crate) mod error;
pub(crate) mod graph;
pub(crate) mod issued;
pub mod keys;
pub(crate) mod members;
pub(crate) mod metrics;
pub(crate) mod peers;
pub(crate) mod relays;
pub(crate) mod store;
pub(crate) mod throttle;

pub use crate::proto::Role;
pub use engines::{BlockStore, Database, Engines};
pub use store::Retention;
pub use throttle::Rules as LoginRules;

use crate::net::tls;
use crate::proto::BLOCK_SIZE;
use auth::TicketCache;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use blobs::Blobs;
use keys::CloudKeys;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::{Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;

/// A new user's cloud storage quota: 5 GB.
pub const DEFAULT_QUOTA: u64 = 5_000_000_000;
/// How long a shutdown waits for requests in flight (long polls included).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the cloud could not start, serve or run an admin operation.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("file or directory {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("cloud signing key")]
    Key(#[from] crate::crypto::keys::KeyError),
    #[error("the database holds no signing key")]
    NoSigningKey,
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("engine {value:?}: {reason}")]
    Engine { value: String, reason: String },
    #[error("metadata store")]
    Store(#[from] StoreError),
    #[error("block store {at}")]
    Blobs {
        at: String,
        #[source]
        source: object_store::Error,
    },
    #[error("hashing the password")]
    Password,
    #[error(
        "user name {0:?} is not valid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit"
    )]
    BadUserName(String),
    #[error("user {0:?} exists already")]
    UserExists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("no relay was added at {0}")]
    NoSuchRelay(String),
    #[error("no folder {0:?}")]
    NoSuchFolder(String),
    #[error("serving HTTPS")]
    Serve(#[source] std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
}

/// How to run the cloud.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// The CA, and (unless `engines` says otherwise) the database and blocks.
    pub data_dir: PathBuf,
    pub engines: Engines,
    pub listen: SocketAddr,
    /// Names (DNS or IP) the server certificate is made for.
    pub tls_names: Vec<String>,
    pub identity_ttl_secs: i64,
    pub access_ttl_secs: i64,
    /// Where the relay listens (`None`: no relay). Devices are told its address.
    pub relay_listen: Option<SocketAddr>,
    /// Test mode: the relay keeps a transcript of every byte it forwards here.
    pub relay_transcript: Option<PathBuf>,
    /// What history and trash the cloud keeps, and how soon it frees what nothing needs.
    pub retention: store::Retention,
    /// How often the collector runs.
    pub collect_every: Duration,
    /// Accept loopback and link-local peer addresses (every device on one machine).
    pub allow_local_peers: bool,
    /// Bounds on failed logins and on password checks at once.
    pub logins: throttle::Rules,
    /// The most folders one user may own.
    pub max_folders: u64,
    /// Where to serve Prometheus metrics over plain HTTP (`None`: nowhere).
    pub metrics_listen: Option<SocketAddr>,
}

impl CloudConfig {
    /// The defaults: names for a local cloud, tickets of 30 and 15 minutes, and a relay on
    /// the next port (or any free port when the cloud's is picked by the system).
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        let relay_port = match listen.port() {
            0 => 0,
            p => p.saturating_add(1),
        };
        Self {
            engines: Engines::embedded(&data_dir),
            data_dir,
            listen,
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            identity_ttl_secs: 1800,
            access_ttl_secs: 900,
            relay_listen: Some(SocketAddr::new(listen.ip(), relay_port)),
            relay_transcript: None,
            allow_local_peers: false,
            logins: throttle::Rules::default(),
            max_folders: 1000,
            retention: store::Retention::default(),
            collect_every: Duration::from_secs(600),
            metrics_listen: None,
        }
    }
}

/// What every handler shares. Each part has its own lock or none.
pub struct Shared {
    store: Store,
    keys: Arc<CloudKeys>,
    blobs: Blobs,
    tickets: TicketCache,
    /// Access tickets handed out again while they last.
    issued: issued::Issued,
    /// The latest committed sequence number; long polls wait on it.
    feed: watch::Sender<u64>,
    identity_ttl_secs: i64,
    access_ttl_secs: i64,
    /// The relay this process runs, first of those told to clients by
    /// `/.well-known/meshfs`.
    relay: Option<crate::proto::RelayInfo>,
    retention: store::Retention,
    allow_local_peers: bool,
    logins: throttle::LoginThrottle,
    max_folders: u64,
    metrics: metrics::CloudMetrics,
}

pub type AppState = Arc<Shared>;

impl Shared {
    /// Wakes the long polls of this process and of the others on the same database: the
    /// feed moved to `version`, or (0) a folder's members changed and the polls look again.
    async fn feed_moved(&self, version: u64) {
        self.feed.send_modify(|seq| *seq = (*seq).max(version));
        if let Err(e) = self.store.announce(version).await {
            tracing::warn!(error = %e, "telling the other cloud processes of a change");
        }
    }
}

/// Wakes this process's long polls for what the other processes announce, and all of them
/// when announcements may have been missed (the listening connection was lost).
async fn hear_other_processes(state: AppState, mut heard: store::Announcements) {
    loop {
        match heard.next().await {
            Ok(Some(version)) => state.feed.send_modify(|seq| *seq = (*seq).max(version)),
            Ok(None) => state.feed.send_modify(|_| {}),
            Err(e) => {
                tracing::warn!(error = %e, "listening to the other cloud processes");
                state.feed.send_modify(|_| {});
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), CloudError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CloudError::Io {
            path: dir.display().to_string(),
            source,
        })
}

/// What every handler shares, over the store and keys opened, with the relay this process
/// runs (if any).
fn shared_state(
    cfg: &CloudConfig,
    store: Store,
    keys: Arc<CloudKeys>,
    relay: Option<crate::proto::RelayInfo>,
    metrics: metrics::CloudMetrics,
) -> Result<AppState, CloudError> {
    let blobs = Blobs::open(&cfg.engines.blocks)?;
    Ok(Arc::new(Shared {
        store,
        keys,
        blobs,
        tickets: TicketCache::default(),
        issued: issued::Issued::default(),
        feed: watch::Sender::new(0),
        identity_ttl_secs: cfg.identity_ttl_secs,
        access_ttl_secs: cfg.access_ttl_secs,
        relay,
        retention: cfg.retention,
        allow_local_peers: cfg.allow_local_peers,
        logins: throttle::LoginThrottle::new(cfg.logins),
        max_folders: cfg.max_folders,
        metrics,
    }))
}

/// Logs each request (at debug) and counts it by route, method and status.
async fn log_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let (status, took) = (res.status().as_u16(), started.elapsed());
    state.metrics.request(&route, method.as_str(), status, took);
    tracing::debug!(%method, %path, status, ms = took.as_millis() as u64, "request");
    res
}

/// The cloud's HTTP routes (the table in `proto::api`).
pub fn app(state: AppState) -> Router {
    let block_limit = usize::try_from(BLOCK_SIZE).unwrap_or(usize::MAX);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/.well-known/jwks.json", get(account::jwks))
        .route("/.well-known/meshfs", get(relays::info))
        .route("/login/challenge", post(account::challenge))
        .route("/login", post(account::login))
        .route("/tickets/identity", post(account::renew))
        .route("/tickets/access", post(account::access))
        .route("/tickets/peer", post(peers::ticket))
        .route("/tickets/relay", post(relays::ticket))
        .route("/relay/standing", post(relays::standing))
        .route("/users/{user}", get(account::user_node))
        .route("/users/{user}/devices", get(account::devices))
        .route("/users/{user}/devices/{device}", delete(account::revoke))
        .route(
            "/users/{user}/devices/{device}/presence",
            put(peers::presence),
        )
        .route(
            "/users/{user}/devices/{device}/folders/{folder}",
            put(peers::map).delete(peers::unmap),
        )
        .route(
            "/users/{user}/devices/{device}/journals/{journal}",
            get(graph::journal_mark),
        )
        .route("/users/{user}/folders", get(account::folders))
        .route("/users/{user}/usage", get(account::usage))
        .route("/users/{user}/invitations", get(members::invitations_for))
        .route("/folders", post(graph::create_folder))
        .route(
            "/folders/{folder}",
            get(graph::get_folder).patch(graph::patch_folder),
        )
        .route("/folders/{folder}/entries", get(graph::list_entries))
        .route("/folders/{folder}/devices", get(peers::folder_devices))
        .route(
            "/folders/{folder}/entries/{entry}",
            get(graph::get_entry)
                .put(graph::put_entry)
                .delete(graph::delete_entry),
        )
        .route(
            "/folders/{folder}/blocks/{hash}",
            get(blobs::get_block)
                .head(blobs::head_block)
                .put(blobs::put_block)
                .layer(DefaultBodyLimit::max(block_limit)),
        )
        .route("/folders/{folder}/blocks", post(blobs::get_blocks))
        .route(
            "/folders/{folder}/entries/{entry}/versions",
            get(graph::list_versions),
        )
        .route(
            "/folders/{folder}/entries/{entry}/restore",
            post(graph::restore_entry),
        )
        .route("/folders/{folder}/trash", get(graph::list_trash))
        .route("/folders/{folder}/changes", get(graph::changes))
        .route("/folders/{folder}/steps", post(graph::apply_steps))
        .route("/folders/{folder}/members", get(members::list_members))
        .route(
            "/folders/{folder}/members/{user}",
            put(members::update_member).delete(members::remove_member),
        )
        .route(
            "/folders/{folder}/invitations",
            get(members::list_invitations).post(members::invite),
        )
        .route(
            "/folders/{folder}/invitations/{user}",
            get(members::get_invitation).delete(members::drop_invitation),
        )
        .route(
            "/folders/{folder}/invitations/{user}/accept",
            post(members::accept),
        )
        .fallback(|| async { error::AppError::NotFound("resource") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            log_request,
        ))
        .with_state(state)
}

/// A cloud serving in the background.
pub struct RunningCloud {
    /// The address it listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// Where its relay listens, if it runs one.
    pub relay_addr: Option<SocketAddr>,
    /// Where its metrics are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    handle: axum_server::Handle<SocketAddr>,
    task: JoinHandle<std::io::Result<()>>,
    _relay: Option<crate::relay::RunningRelay>,
    _metrics: Option<crate::net::metrics::MetricsServer>,
    _collector: AbortOnDropHandle<()>,
    _listener: Option<AbortOnDropHandle<()>>,
    _keys: AbortOnDropHandle<()>,
}

impl RunningCloud {
    /// Stops accepting, lets requests in flight finish (a few seconds at most) and waits.
    pub async fn shutdown(self) -> Result<(), CloudError> {
        self.handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        self.wait().await
    }

    /// Serves until `stop` completes (then shuts down gracefully) or the server fails.
    pub async fn serve_until(mut self, stop: impl Future<Output = ()>) -> Result<(), CloudError> {
        tokio::select! {
            r = &mut self.task => return served(r),
            () = stop => {}
        }
        self.shutdown().await
    }

    async fn wait(self) -> Result<(), CloudError> {
        served(self.task.await)
    }
}

fn served(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), CloudError> {
    match r {
        Ok(res) => res.map_err(CloudError::Serve),
        Err(e) => Err(CloudError::Task(e.to_string())),
    }
}

/// Starts the cloud: creates the data directory, keys and CA on first start, binds
/// `cfg.listen` and serves HTTPS in the background.
pub async fn start(cfg: CloudConfig) -> Result<RunningCloud, CloudError> {
    create_dir(&cfg.data_dir)?;
    let store = open_store(&cfg.engines).await?;
    let ca = keys::shared_ca(&store, &cfg.data_dir).await?;
    let (https, relay_tls) = tls::server_configs(&ca, tls::CLOUD_CA_NAME, &cfg.tls_names)?;
    let keys = Arc::new(CloudKeys::open(store.clone(), &cfg.data_dir).await?);
    let relay = match cfg.relay_listen {
        Some(listen) => {
            let relay_cfg = crate::relay::RelayConfig {
                listen,
                transcript: cfg.relay_transcript.clone(),
            };
            let standings = Arc::new(relays::StoreStandings(store.clone()));
            let started = crate::relay::start(relay_cfg, relay_tls, keys.subscribe(), standings);
            Some(started.await.map_err(|e| match e {
                crate::relay::RelayError::Bind { addr, source } => {
                    CloudError::Bind { addr, source }
                }
                other => CloudError::Task(other.to_string()),
            })?)
        }
        None => None,
    };
    let relay_addr = relay.as_ref().map(|r| r.addr);
    let advertised = match relay_addr {
        Some(a) => {
            let own = crate::proto::RelayInfo {
                addr: advertised_relay(a, &cfg.tls_names),
                ca: ca.cert_pem.clone(),
            };
            // Recorded for the other processes on this database to list too: devices
            // attached to different processes must meet at the same relays.
            store.add_relay(&own).await?;
            Some(own)
        }
        None => None,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let counted = metrics::CloudMetrics::new(&mut registry);
    let state = shared_state(&cfg, store, keys, advertised, counted)?;
    let metrics = match cfg.metrics_listen {
        Some(listen) => Some(crate::net::metrics::serve(listen, registry).await.map_err(
            |source| CloudError::Bind {
                addr: listen,
                source,
            },
        )?),
        None => None,
    };
    let bind = |source| CloudError::Bind {
        addr: cfg.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let server = axum_server::tls_rustls::from_tcp_rustls(listener, https).map_err(bind)?;
    let handle = axum_server::Handle::new();
    let service = app(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(server.handle(handle.clone()).serve(service));
    let listener = state.store.announcements().await?.map(|heard| {
        AbortOnDropHandle::new(tokio::spawn(hear_other_processes(
            Arc::clone(&state),
            heard,
        )))
    });
    let keys = AbortOnDropHandle::new(tokio::spawn(read_keys_now_and_then(Arc::clone(
        &state.keys,
    ))));
    let collector = tokio::spawn(collect_now_and_then(state, cfg.collect_every));
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), database = %cfg.engines.database, blocks = %cfg.engines.blocks, "meshfs cloud listening");
    Ok(RunningCloud {
        addr,
        relay_addr,
        metrics_addr: metrics.as_ref().map(|m| m.addr),
        handle,
        task,
        _relay: relay,
        _metrics: metrics,
        _collector: AbortOnDropHandle::new(collector),
        _listener: listener,
        _keys: keys,
    })
}

/// Runs the collector every `every` (see `store/history.rs`).
async fn collect_now_and_then(state: AppState, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = blobs::collect(&state).await {
            tracing::error!(error = %e, "collecting unreferenced blocks");
        }
    }
}

/// Reads the signing keys again every [`keys::REFRESH_EVERY`] (another process or
/// `rotate-keys` may have added one).
async fn read_keys_now_and_then(keys: Arc<CloudKeys>) {
    loop {
        tokio::time::sleep(keys::REFRESH_EVERY).await;
        if let Err(e) = keys.refresh().await {
            tracing::warn!(error = %e, "reading the signing keys");
        }
    }
}

/// Adds a new ticket-signing key that signs from `signs_in` on (old keys stay published
/// until their tickets expire); returns its key id.
pub async fn rotate_keys(engines: &Engines, signs_in: Duration) -> Result<String, CloudError> {
    let store = open_store(engines).await?;
    keys::rotate(&store, signs_in).await
}

/// The relay address devices dial: the bound one, or for a wildcard bind the first name
/// the certificate is made for.
fn advertised_relay(bound: SocketAddr, names: &[String]) -> String {
    match names.first() {
        Some(name) if bound.ip().is_unspecified() => format!("{name}:{}", bound.port()),
        _ => bound.to_string(),
    }
}

/// Tells devices of a relay running on its own at `addr` (`host:port`), whose certificate
/// chains to the CA `ca` (PEM); a relay added before gets the new CA.
pub async fn add_relay(engines: &Engines, addr: &str, ca: &str) -> Result<(), CloudError> {
    let store = open_store(engines).await?;
    let relay = crate::proto::RelayInfo {
        addr: addr.into(),
        ca: ca.into(),
    };
    Ok(store.add_relay(&relay).await?)
}

/// Stops telling devices of the relay at `addr`.
pub async fn remove_relay(engines: &Engines, addr: &str) -> Result<(), CloudError> {
    let store = open_store(engines).await?;
    if store.remove_relay(addr).await? {
        Ok(())
    } else {
        Err(CloudError::NoSuchRelay(addr.into()))
    }
}

/// Adds a user of the built-in identity provider with the default quota.
pub async fn add_user(engines: &Engines, name: &str, password: &str) -> Result<(), CloudError> {
    if !account::valid_user_name(name) {
        return Err(CloudError::BadUserName(name.into()));
    }
    let store = open_store(engines).await?;
    let password = password.to_owned();
    let phc = tokio::task::spawn_blocking(move || account::hash_password(&password))
        .await
        .map_err(|e| CloudError::Task(e.to_string()))?
        .map_err(|_| CloudError::Password)?;
    let created = store
        .insert_user(name, &phc, DEFAULT_QUOTA, crate::proto::now_ms())
        .await?;
    if created {
        Ok(())
    } else {
        Err(CloudError::UserExists(name.into()))
    }
}

/// Sets a user's cloud storage quota in bytes.
pub async fn set_quota(engines: &Engines, user: &str, bytes: u64) -> Result<(), CloudError> {
    let store = open_store(engines).await?;
    if store.set_quota(user, bytes).await? {
        Ok(())
    } else {
        Err(CloudError::NoSuchUser(user.into()))
    }
}

/// Gives `user` a role (writer or reader) on folder `folder` at once, with no invitation:
/// an administrator's shortcut (`meshfs folder share` invites).
pub async fn share_folder(
    engines: &Engines,
    folder: &str,
    user: &str,
    role: Role,
) -> Result<(), CloudError> {
    let store = open_store(engines).await?;
    store
        .folder(folder)
        .await?
        .ok_or_else(|| CloudError::NoSuchFolder(folder.into()))?;
    if store.usage(user).await?.is_none() {
        return Err(CloudError::NoSuchUser(user.into()));
    }
    Ok(store.set_member(folder, user, role, None).await?)
}

/// The metadata store of an admin operation, which may run before the cloud's first start
/// (so an embedded database's directory may have to be made).
async fn open_store(engines: &Engines) -> Result<Store, CloudError> {
    if let engines::Database::Sqlite(file) = &engines.database
        && let Some(dir) = file.parent()
    {
        create_dir(dir)?;
    }
    Ok(Store::open(&engines.database).await?)
}
