//! Reaching peers through the relays, and being reached through them. A relay only pairs
//! connections and copies bytes: the peer channel runs end to end inside, so the relay sees
//! ciphertext only, and the device names itself there with a relay ticket, which no cloud
//! accepts. A device listens at every relay the cloud names and dials through the first
//! that pairs it. Tickets go over TLS; once paired, the channel runs on a plain data leg
//! opened with the token the relay gave.

use super::BoxIo;
use super::net::PeerNet;
use super::server;
use crate::agent::remote::ClientError;
use crate::crypto::channel::ChannelError;
use crate::proto::RelayInfo;
use crate::proto::relay::{self as wire, Hello, RelayWireError, Reply, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::task::AbortOnDropHandle;

/// How long connecting to the relay may take, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dial waits for the relay to pair it.
const PAIR_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the relay could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RelayClientError {
    #[error("no relay is known")]
    NoRelay,
    #[error("the relay address {0:?} is not host:port")]
    BadAddr(String),
    #[error("the CA the cloud gives for the relay at {0} is unusable")]
    Ca(String),
    #[error("connecting to the relay at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the relay took too long")]
    Timeout,
    #[error("getting a ticket")]
    Ticket(#[source] Box<ClientError>),
    #[error("the relay connection")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] RelayWireError),
    #[error("the relay refused: {0}")]
    Refused(String),
    #[error("the relay answered out of turn")]
    Unexpected,
    #[error("the relayed channel")]
    Channel(#[from] ChannelError),
}

impl From<ClientError> for RelayClientError {
    fn from(e: ClientError) -> Self {
        Self::Ticket(Box::new(e))
    }
}

/// TLS to `relay`, trusting only the CA the cloud gives for it.
fn connector(relay: &RelayInfo) -> Result<TlsConnector, RelayClientError> {
    crate::crypto::install_tls_provider();
    let bad_ca = || RelayClientError::Ca(relay.addr.clone());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(relay.ca.as_bytes()) {
        roots
            .add(cert.map_err(|_| bad_ca())?)
            .map_err(|_| bad_ca())?;
    }
    if roots.is_empty() {
        return Err(bad_ca());
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A control connection to the relay.
type RelayStream = TlsStream<TcpStream>;

/// Reads one message from the relay.
async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Reply, RelayClientError> {
    let mut header = [0u8; wire::HEADER_LEN];
    r.read_exact(&mut header).await?;
    let mut body = vec![0u8; wire::body_len(header)?];
    r.read_exact(&mut body).await?;
    Ok(wire::decode(&body)?)
}

/// Writes one message to the relay and flushes it.
async fn write<W: AsyncWrite + Unpin>(w: &mut W, msg: &Hello) -> Result<(), RelayClientError> {
    w.write_all(&wire::encode(msg)?).await?;
    w.flush().await?;
    Ok(())
}

/// A TCP connection to the relay at `addr`.
async fn connect_tcp(addr: &str) -> Result<TcpStream, RelayClientError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| RelayClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A TLS connection to `relay`, its first message sent.
async fn open(relay: &RelayInfo, hello: &Hello) -> Result<RelayStream, RelayClientError> {
    let addr = relay.addr.as_str();
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .ok_or_else(|| RelayClientError::BadAddr(addr.to_string()))?;
    let name =
        ServerName::try_from(host).map_err(|_| RelayClientError::BadAddr(addr.to_string()))?;
    let connect = async {
        let tcp = connect_tcp(addr).await?;
        connector(relay)?
            .connect(name, tcp)
            .await
            .map_err(|source| RelayClientError::Connect {
                addr: addr.to_string(),
                source,
            })
    };
    let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| RelayClientError::Timeout)??;
    write(&mut tls, hello).await?;
    Ok(tls)
}

/// The data leg of a pairing: a plain connection to `relay` that presents `token`, on which
/// the caller runs the end-to-end channel.
async fn data_leg(relay: &RelayInfo, token: &Token) -> Result<BoxIo, RelayClientError> {
    let open = async {
        let mut tcp = connect_tcp(&relay.addr).await?;
        tcp.write_all(&wire::data_preamble(token)).await?;
        Ok::<_, RelayClientError>(tcp)
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| RelayClientError::Timeout)??;
    Ok(Box::new(tcp))
}

/// Waits for the relay's first answer: `Ready` for a listener, `Paired` (with its data
/// leg's token) for a dial or an accept.
async fn answer(tls: &mut RelayStream) -> Result<Option<Token>, RelayClientError> {
    let reply = tokio::time::timeout(PAIR_TIMEOUT, read(tls))
        .await
        .map_err(|_| RelayClientError::Timeout)??;
    match reply {
        Reply::Ready => Ok(None),
        Reply::Paired { token } => Ok(Some(wire::parse_token(&token)?)),
        Reply::Refused { message } => Err(RelayClientError::Refused(message)),
        Reply::Incoming { .. } => Err(RelayClientError::Unexpected),
    }
}

/// Sends `hello` to `relay` and, once paired, opens the data leg.
async fn pair(relay: &RelayInfo, hello: &Hello) -> Result<BoxIo, RelayClientError> {
    let mut tls = open(relay, hello).await?;
    let token = answer(&mut tls)
        .await?
        .ok_or(RelayClientError::Unexpected)?;
    drop(tls);
    data_leg(relay, &token).await
}

/// A stream to the other device of `peer_ticket` through the first of `relays` that pairs
/// the two, on which the caller runs the channel handshake.
pub async fn dial(
    relays: &[RelayInfo],
    relay_ticket: String,
    peer_ticket: String,
) -> Result<BoxIo, RelayClientError> {
    let hello = Hello::Dial {
        relay_ticket,
        peer_ticket,
    };
    let mut last = RelayClientError::NoRelay;
    for relay in relays {
        match pair(relay, &hello).await {
            Ok(leg) => return Ok(leg),
            Err(e) => {
                tracing::debug!(relay = %relay.addr, error = %e, "not paired through this relay");
                last = e;
            }
        }
    }
    Err(last)
}

/// Keeps a listening connection at every relay the cloud names, as the list changes, and
/// serves each rendezvous one announces like a direct connection.
pub async fn stay_reachable(net: Arc<PeerNet>) {
    let mut relays = net.directory.watch_relays();
    // A listening task ends when its relay leaves the list.
    let mut listening: HashMap<RelayInfo, AbortOnDropHandle<()>> = HashMap::new();
    loop {
        let now = relays.borrow_and_update().clone();
        listening.retain(|relay, _| now.contains(relay));
        for relay in now {
            listening.entry(relay.clone()).or_insert_with(|| {
                AbortOnDropHandle::new(tokio::spawn(listen_at(Arc::clone(&net), relay)))
            });
        }
        if relays.changed().await.is_err() {
            return;
        }
    }
}

/// Listens at one relay, again after each failure (sooner after one that held a while).
async fn listen_at(net: Arc<PeerNet>, relay: RelayInfo) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = listen_once(&net, &relay).await {
            tracing::debug!(relay = %relay.addr, error = %e, "relay listening connection ended");
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn listen_once(net: &Arc<PeerNet>, relay: &RelayInfo) -> Result<(), RelayClientError> {
    let hello = Hello::Listen {
        relay_ticket: net.remote.relay_ticket().await?,
    };
    let mut tls = open(relay, &hello).await?;
    if answer(&mut tls).await?.is_some() {
        return Err(RelayClientError::Unexpected);
    }
    tracing::debug!(relay = %relay.addr, "reachable through the relay");
    loop {
        match read(&mut tls).await? {
            Reply::Incoming { rendezvous, from } => {
                let (net, relay) = (Arc::clone(net), relay.clone());
                tokio::spawn(async move {
                    if let Err(e) = accept(&net, &relay, rendezvous).await {
                        tracing::info!(peer = %from, error = %e, "relayed peer connection failed");
                    }
                });
            }
            Reply::Refused { message } => return Err(RelayClientError::Refused(message)),
            Reply::Ready | Reply::Paired { .. } => return Err(RelayClientError::Unexpected),
        }
    }
}

async fn accept(
    net: &Arc<PeerNet>,
    relay: &RelayInfo,
    rendezvous: String,
) -> Result<(), RelayClientError> {
    let hello = Hello::Accept {
        relay_ticket: net.remote.relay_ticket().await?,
        rendezvous,
    };
    let leg = pair(relay, &hello).await?;
    server::accept_and_serve(Arc::clone(net), leg, true).await?;
    Ok(())
}
