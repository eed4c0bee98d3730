//! Reaching peers through the relay, and being reached through it. The relay only pairs
//! connections and copies bytes: the peer channel runs end to end inside, so the relay sees
//! ciphertext only.

use super::net::PeerNet;
use super::{BoxIo, server};
use crate::proto::relay::{self as wire, Hello, Reply};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

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
    #[error("the cloud's CA is unusable for the relay's TLS")]
    Ca,
    #[error("connecting to the relay at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the relay took too long")]
    Timeout,
    #[error("getting a ticket: {0}")]
    Ticket(String),
    #[error(transparent)]
    Wire(#[from] wire::RelayWireError),
    #[error("the relay refused: {0}")]
    Refused(String),
    #[error("the relay answered out of turn")]
    Unexpected,
}

fn connector(ca_pem: &[u8]) -> Result<TlsConnector, RelayClientError> {
    crate::crypto::install_tls_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|_| RelayClientError::Ca)?)
            .map_err(|_| RelayClientError::Ca)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS connection to the relay, over a socket read through a buffer of
/// [`wire::SOCKET_READ`] bytes.
type RelayStream = TlsStream<BufReader<TcpStream>>;

/// A TLS connection to the relay, its first message sent.
async fn open(net: &PeerNet, hello: &Hello) -> Result<RelayStream, RelayClientError> {
    let addr = net.relay_addr().ok_or(RelayClientError::NoRelay)?;
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .ok_or_else(|| RelayClientError::BadAddr(addr.clone()))?;
    let name = ServerName::try_from(host).map_err(|_| RelayClientError::BadAddr(addr.clone()))?;
    let connect = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| RelayClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        connector(net.ca_pem())?
            .connect(name, BufReader::with_capacity(wire::SOCKET_READ, tcp))
            .await
            .map_err(|source| RelayClientError::Connect {
                addr: addr.clone(),
                source,
            })
    };
    let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| RelayClientError::Timeout)??;
    tls.get_mut()
        .1
        .set_buffer_limit(Some(wire::TLS_SEND_BUFFER));
    wire::write(&mut tls, hello).await?;
    Ok(tls)
}

async fn identity(net: &PeerNet) -> Result<String, RelayClientError> {
    net.client
        .identity()
        .await
        .map_err(|e| RelayClientError::Ticket(e.to_string()))
}

/// Waits for the relay's `Ready`.
async fn ready(tls: &mut RelayStream) -> Result<(), RelayClientError> {
    let reply = tokio::time::timeout(PAIR_TIMEOUT, wire::read::<_, Reply>(tls))
        .await
        .map_err(|_| RelayClientError::Timeout)??;
    match reply {
        Reply::Ready => Ok(()),
        Reply::Refused { message } => Err(RelayClientError::Refused(message)),
        Reply::Incoming { .. } => Err(RelayClientError::Unexpected),
    }
}

/// A stream to `device` through the relay, on which the caller runs the channel handshake;
/// `scope` is the folder the pair's ticket goes through, for another user's device.
pub async fn dial(
    net: &PeerNet,
    device: &str,
    scope: Option<&str>,
) -> Result<BoxIo, RelayClientError> {
    let ticket = net
        .client
        .peer_ticket(device, scope)
        .await
        .map_err(|e| RelayClientError::Ticket(e.to_string()))?;
    let hello = Hello::Dial {
        identity: identity(net).await?,
        ticket,
    };
    let mut tls = open(net, &hello).await?;
    ready(&mut tls).await?;
    Ok(Box::new(tls))
}

/// Keeps a listening connection to the relay while one is known, and serves each
/// rendezvous it announces like a direct connection.
pub async fn stay_reachable(net: Arc<PeerNet>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if net.relay_addr().is_some() {
            let started = std::time::Instant::now();
            if let Err(e) = listen_once(&net).await {
                tracing::debug!(error = %e, "relay listening connection ended");
            }
            // A connection that held a while was fine: the next try comes quickly.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_secs(1);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn listen_once(net: &Arc<PeerNet>) -> Result<(), RelayClientError> {
    let hello = Hello::Listen {
        identity: identity(net).await?,
    };
    let mut tls = open(net, &hello).await?;
    ready(&mut tls).await?;
    tracing::debug!("reachable through the relay");
    loop {
        match wire::read::<_, Reply>(&mut tls).await? {
            Reply::Incoming { rendezvous, from } => {
                let net = Arc::clone(net);
                tokio::spawn(async move {
                    if let Err(e) = accept(&net, rendezvous).await {
                        tracing::info!(peer = %from, error = %e, "relayed peer connection failed");
                    }
                });
            }
            Reply::Refused { message } => return Err(RelayClientError::Refused(message)),
            Reply::Ready => return Err(RelayClientError::Unexpected),
        }
    }
}

async fn accept(net: &Arc<PeerNet>, rendezvous: String) -> Result<(), String> {
    let hello = Hello::Accept {
        identity: identity(net).await.map_err(|e| e.to_string())?,
        rendezvous,
    };
    let mut tls = open(net, &hello).await.map_err(|e| e.to_string())?;
    ready(&mut tls).await.map_err(|e| e.to_string())?;
    server::accept_and_serve(Arc::clone(net), Box::new(tls), true)
        .await
        .map_err(|e| e.to_string())
}
