//! The relay (DESIGN §5): pairs two devices that cannot reach each other and copies bytes
//! between them. It sees only the peer channel's ciphertext, and keeps no state beyond live
//! connections: the devices listening for rendezvous, and the rendezvous waiting to be
//! joined.
//!
//! A device that wants to be reachable keeps a *listen* connection, shown its relay
//! ticket. A device that wants to reach it *dials* with its relay ticket and a peer ticket
//! for the pair that the cloud signed; the relay announces a fresh rendezvous on the
//! listener's connection, the listener *accepts* it on a new connection, and the relay tells
//! each side a single-use token. Each then opens a plain *data leg* with its token, and the
//! relay copies bytes between the two legs until either side closes: the legs carry only
//! the end-to-end channel, so a second encryption would buy nothing (tickets go only over
//! TLS). The wire is `proto::relay`.
//!
//! A relay holds no secret of the cloud's (DESIGN §7a): it checks tickets with the cloud's
//! published keys, accepts only the relay audience (which the cloud refuses), and asks
//! whether a device is still in good standing ([`Standings`], remembered for
//! [`STANDING_FOR`]); a listening device is asked about anew as often, so a revoked one
//! loses the relay within that time. It runs inside a cloud process or on its own
//! (`standalone`).
//!
//! Connections are bounded per source address and in total ([`RELAY_BOUNDS`]); one over
//! the bounds is closed before TLS, and every connection has `HELLO_WITHIN` for its TLS
//! handshake (or its data leg preamble) and again for its first message.

mod splice;
mod standalone;
mod standing;

pub use standalone::{Standalone, StandaloneConfig, start_standalone};
pub use standing::{AskError, STANDING_FOR, Standings};

use crate::crypto::ticket::{KeySet, TicketError};
use crate::net::{Admitted, Bounds, ConnectionLimits};
use crate::proto::claims::{AUDIENCE_PEER, AUDIENCE_RELAY};
use crate::proto::relay::{self as wire, DATA_MAGIC, Hello, RelayWireError, Reply, Token};
use crate::proto::{Claims, TicketKind, now_secs};
use futures::FutureExt;
use rand::Rng;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::AbortOnDropHandle;

/// How long a dialer waits for the listener to accept, and paired devices have to open
/// their data legs.
const ACCEPT_WITHIN: Duration = Duration::from_secs(10);
/// How long a device has to send its first message.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// Most bytes gathered for one write, each way, in test mode.
const COPY_CHUNK: usize = 1 << 20;
/// Connections kept open at once. A device holds one listening connection and one per
/// relayed link, and several devices may share an address behind a NAT.
pub const RELAY_BOUNDS: Bounds = Bounds {
    per_source: 64,
    total: 4096,
};

/// How to run a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    /// Test mode: every byte forwarded is also written to a file per direction in this
    /// directory, so a test can show what the relay saw.
    pub transcript: Option<PathBuf>,
}

/// Why the relay refused a device; the text is what the device is told.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("send a relay hello first")]
    NoHello,
    #[error("relay ticket refused: {0}")]
    RelayTicket(TicketError),
    #[error("a relay ticket is needed")]
    NotRelayTicket,
    #[error("the device may no longer use relays")]
    NotInStanding,
    #[error("peer ticket refused: {0}")]
    PeerTicket(TicketError),
    #[error("the peer ticket is not the caller's ticket for a pair")]
    NotAPair,
    #[error("the device is not reachable through this relay")]
    NotListening,
    #[error("the device did not accept in time")]
    NotAccepted,
    #[error("this rendezvous is for another device")]
    OtherDevice,
    #[error("no such rendezvous (expired?)")]
    NoRendezvous,
}

/// Why a relay message could not be read or written.
#[derive(Debug, thiserror::Error)]
enum MessageError {
    #[error("relay connection")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] RelayWireError),
}

/// Reads one message.
async fn read<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<T, MessageError> {
    let mut header = [0u8; wire::HEADER_LEN];
    r.read_exact(&mut header).await?;
    let mut body = vec![0u8; wire::body_len(header)?];
    r.read_exact(&mut body).await?;
    Ok(wire::decode(&body)?)
}

/// Writes one message and flushes it.
async fn write<W: AsyncWrite + Unpin>(w: &mut W, msg: &Reply) -> Result<(), MessageError> {
    w.write_all(&wire::encode(msg)?).await?;
    w.flush().await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the relay's certificate")]
    Certificate(#[from] crate::net::tls::TlsError),
    #[error("the cloud's CA in {path}")]
    CloudCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the cloud's keys at {url}")]
    Keys {
        url: String,
        #[source]
        source: standing::AskError,
    },
}

/// A device's control connection.
type Stream = TlsStream<TcpStream>;

struct Waiting {
    /// The device that must accept.
    callee: String,
    /// Its connection, still counted against its address while the pair lasts.
    join: oneshot::Sender<(Stream, Admitted)>,
}

struct Relay {
    /// The cloud's published keys, as they change.
    keys: watch::Receiver<Arc<KeySet>>,
    standings: standing::Remembered,
    transcript: Option<PathBuf>,
    /// Listening devices: where to announce a rendezvous.
    listeners: Mutex<HashMap<String, mpsc::Sender<Reply>>>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Data legs expected, by token.
    legs: Mutex<HashMap<Token, oneshot::Sender<(TcpStream, Admitted)>>>,
    pairs: AtomicU64,
}

/// A relay serving in the background; it stops when dropped.
pub struct RunningRelay {
    pub addr: SocketAddr,
    limits: Arc<ConnectionLimits>,
    _task: AbortOnDropHandle<()>,
}

impl RunningRelay {
    /// The connections the relay holds open now: listening devices, control connections
    /// not yet paired, and data legs.
    pub fn open_connections(&self) -> usize {
        self.limits.open()
    }
}

/// Starts a relay that trusts relay tickets signed by `keys` (as they change) for devices
/// `standings` says are in good standing, and speaks TLS with `tls`.
pub async fn start(
    cfg: RelayConfig,
    tls: Arc<rustls::ServerConfig>,
    keys: watch::Receiver<Arc<KeySet>>,
    standings: Arc<dyn Standings>,
) -> Result<RunningRelay, RelayError> {
    let bind = |source| RelayError::Bind {
        addr: cfg.listen,
        source,
    };
    let listener = TcpListener::bind(cfg.listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let relay = Arc::new(Relay {
        keys,
        standings: standing::Remembered::new(standings),
        transcript: cfg.transcript,
        listeners: Mutex::new(HashMap::new()),
        waiting: Mutex::new(HashMap::new()),
        legs: Mutex::new(HashMap::new()),
        pairs: AtomicU64::new(0),
    });
    let acceptor = TlsAcceptor::from(tls);
    let limits = ConnectionLimits::new(RELAY_BOUNDS);
    tracing::info!(%addr, "meshfs relay listening");
    let admit = Arc::clone(&limits);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, from)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let admitted = match admit.admit(from.ip()) {
                Ok(a) => a,
                Err(over) => {
                    tracing::debug!(%from, %over, "relay connection closed unread");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (relay, acceptor) = (Arc::clone(&relay), acceptor.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(HELLO_WITHIN, tcp.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == DATA_MAGIC[0] => {
                        return relay.join_leg(tcp, from, admitted).await;
                    }
                    Ok(Ok(1)) => {}
                    _ => return tracing::debug!(%from, "relay connection sent nothing"),
                }
                match tokio::time::timeout(HELLO_WITHIN, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => relay.serve(tls, from, admitted).await,
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "relay TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "relay TLS handshake timed out"),
                }
            });
        }
    });
    Ok(RunningRelay {
        addr,
        limits,
        _task: AbortOnDropHandle::new(task),
    })
}

impl Relay {
    async fn serve(self: Arc<Self>, mut tls: Stream, from: SocketAddr, admitted: Admitted) {
        let hello = match tokio::time::timeout(HELLO_WITHIN, read::<_, Hello>(&mut tls)).await {
            Ok(Ok(h)) => h,
            _ => return refuse(tls, &Refusal::NoHello).await,
        };
        let outcome = match hello {
            Hello::Listen { relay_ticket } => match self.device(&relay_ticket).await {
                Ok(claims) => return self.listen(tls, claims, relay_ticket).await,
                Err(why) => Err(why),
            },
            Hello::Dial {
                relay_ticket,
                peer_ticket,
            } => match self.dial_target(&relay_ticket, &peer_ticket).await {
                Ok((caller, callee)) => return self.dial(tls, admitted, caller, callee).await,
                Err(why) => Err(why),
            },
            Hello::Accept {
                relay_ticket,
                rendezvous,
            } => self.accept(&relay_ticket, &rendezvous).await,
        };
        match outcome {
            Ok(join) => {
                let _ = join.send((tls, admitted));
            }
            Err(why) => {
                tracing::info!(%from, %why, "relay refused a device");
                refuse(tls, &why).await;
            }
        }
    }

    /// The claims of a relay ticket, if it is valid.
    fn relay_ticket(&self, relay_ticket: &str) -> Result<Claims, Refusal> {
        let keys = Arc::clone(&self.keys.borrow());
        let t = keys
            .check(relay_ticket, AUDIENCE_RELAY, now_secs())
            .map_err(Refusal::RelayTicket)?;
        if t.claims().kind != TicketKind::Relay {
            return Err(Refusal::NotRelayTicket);
        }
        Ok(t.claims().clone())
    }

    /// The device a relay ticket names, if the ticket is valid and the device in good
    /// standing.
    async fn device(&self, relay_ticket: &str) -> Result<Claims, Refusal> {
        let claims = self.relay_ticket(relay_ticket)?;
        if !self.standings.active(relay_ticket, &claims).await {
            return Err(Refusal::NotInStanding);
        }
        Ok(claims)
    }

    /// Who dials whom: the relay ticket's device must hold a peer ticket naming the other.
    async fn dial_target(
        &self,
        relay_ticket: &str,
        ticket: &str,
    ) -> Result<(String, String), Refusal> {
        let caller = self.device(relay_ticket).await?.dev;
        let keys = Arc::clone(&self.keys.borrow());
        let t = keys
            .check(ticket, AUDIENCE_PEER, now_secs())
            .map_err(Refusal::PeerTicket)?;
        let c = t.claims();
        let callee = c
            .peer
            .as_ref()
            .filter(|_| c.kind == TicketKind::Peer && c.dev == caller)
            .and_then(|g| g.other(&caller))
            .ok_or(Refusal::NotAPair)?;
        Ok((caller, callee.id.clone()))
    }

    async fn listen(self: Arc<Self>, mut tls: Stream, claims: Claims, relay_ticket: String) {
        let device = claims.dev.clone();
        let (tx, mut rx) = mpsc::channel(16);
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.clone(), tx.clone());
        tracing::debug!(%device, "device listening at the relay");
        let mut ok = write(&mut tls, &Reply::Ready).await.is_ok();
        let mut probe = [0u8; 1];
        let mut recheck = tokio::time::interval(STANDING_FOR);
        recheck.tick().await;
        while ok {
            tokio::select! {
                // A device revoked since listens no more. The cloud is asked anew: the
                // answer of a moment ago may be from before the revocation.
                _ = recheck.tick() => if !self.standings.ask_again(&relay_ticket, &claims).await {
                    let why = Refusal::NotInStanding;
                    tracing::info!(%device, %why, "relay dropped a listening device");
                    let refused = Reply::Refused { message: why.to_string() };
                    let _ = tokio::time::timeout(HELLO_WITHIN, write(&mut tls, &refused)).await;
                    ok = false;
                },
                msg = rx.recv() => match msg {
                    // A listener that stops reading is dropped, not waited on.
                    Some(m) => {
                        let wrote = tokio::time::timeout(HELLO_WITHIN, write(&mut tls, &m));
                        ok = matches!(wrote.await, Ok(Ok(())));
                    }
                    None => ok = false,
                },
                // The device sends nothing more; a read ending means it went away.
                r = tls.read(&mut probe) => ok = matches!(r, Ok(n) if n > 0),
            }
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if listeners.get(&device).is_some_and(|t| t.same_channel(&tx)) {
            listeners.remove(&device);
        }
    }

    /// Pairs a dialing device with the listening one it names. Once both have their data
    /// legs, the control connections close and count no more against their addresses.
    async fn dial(
        self: Arc<Self>,
        mut tls: Stream,
        admitted: Admitted,
        caller: String,
        callee: String,
    ) {
        let announce = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&callee)
            .cloned();
        let Some(announce) = announce else {
            return refuse(tls, &Refusal::NotListening).await;
        };
        let rendezvous = uuid::Uuid::new_v4().to_string();
        let (join, joined) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                rendezvous.clone(),
                Waiting {
                    callee: callee.clone(),
                    join,
                },
            );
        let incoming = Reply::Incoming {
            rendezvous: rendezvous.clone(),
            from: caller.clone(),
        };
        let told = tokio::time::timeout(ACCEPT_WITHIN, announce.send(incoming)).await;
        let other = match told {
            Ok(Ok(())) => tokio::time::timeout(ACCEPT_WITHIN, joined)
                .await
                .ok()
                .and_then(Result::ok),
            _ => None,
        };
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rendezvous);
        let Some((mut other, other_admitted)) = other else {
            return refuse(tls, &Refusal::NotAccepted).await;
        };
        let ((a_token, a_joins), (b_token, b_joins)) = (self.expect_leg(), self.expect_leg());
        let told = async {
            let paired = |token| Reply::Paired {
                token: wire::token_text(token),
            };
            write(&mut tls, &paired(&a_token)).await?;
            write(&mut other, &paired(&b_token)).await
        };
        let legs = match told.await {
            Ok(()) => tokio::time::timeout(ACCEPT_WITHIN, async { tokio::join!(a_joins, b_joins) })
                .await
                .ok(),
            Err(_) => None,
        };
        {
            let mut expected = self.legs.lock().unwrap_or_else(|p| p.into_inner());
            expected.remove(&a_token);
            expected.remove(&b_token);
        }
        drop((tls, admitted, other, other_admitted));
        let Some((Ok((a_leg, _a_admitted)), Ok((b_leg, _b_admitted)))) = legs else {
            return tracing::info!(%caller, %callee, "a paired device opened no data leg in time");
        };
        let n = self.pairs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%caller, %callee, "relay paired two devices");
        let copied = match &self.transcript {
            None => splice::forward(a_leg, b_leg).await,
            Some(dir) => {
                let create = |name: String| {
                    let path = dir.join(name);
                    std::fs::File::create(&path)
                        .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot write a relay transcript"))
                        .ok()
                };
                let ab = create(format!("{n}-{caller}-to-{callee}"));
                let ba = create(format!("{n}-{callee}-to-{caller}"));
                forward(a_leg, b_leg, ab, ba).await
            }
        };
        if let Err(e) = copied {
            tracing::debug!(%caller, %callee, error = %e, "relayed connection ended");
        }
    }

    /// A fresh token, and where its data leg will arrive.
    fn expect_leg(&self) -> (Token, oneshot::Receiver<(TcpStream, Admitted)>) {
        let mut token = Token::default();
        rand::rng().fill_bytes(&mut token);
        let (tx, rx) = oneshot::channel();
        self.legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, tx);
        (token, rx)
    }

    /// A data leg: its preamble names the token of a pairing, whose side it becomes. The
    /// token is spent on first use; a leg with any other preamble is closed.
    async fn join_leg(&self, mut tcp: TcpStream, from: SocketAddr, admitted: Admitted) {
        let mut preamble = [0u8; DATA_MAGIC.len() + wire::TOKEN_LEN];
        let read = tokio::time::timeout(HELLO_WITHIN, tcp.read_exact(&mut preamble)).await;
        if !matches!(read, Ok(Ok(_))) || preamble[..DATA_MAGIC.len()] != DATA_MAGIC {
            return tracing::debug!(%from, "relay data leg without a preamble closed");
        }
        let mut token = Token::default();
        token.copy_from_slice(&preamble[DATA_MAGIC.len()..]);
        let expected = self
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        match expected {
            Some(join) => {
                let _ = join.send((tcp, admitted));
            }
            None => tracing::info!(%from, "relay data leg with an unknown or spent token closed"),
        }
    }

    /// The dialer waiting on `rendezvous`, if `relay_ticket` names the device it waits for.
    async fn accept(
        &self,
        relay_ticket: &str,
        rendezvous: &str,
    ) -> Result<oneshot::Sender<(Stream, Admitted)>, Refusal> {
        let device = self.device(relay_ticket).await?.dev;
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match waiting.get(rendezvous) {
            Some(w) if w.callee == device => waiting
                .remove(rendezvous)
                .map(|w| w.join)
                .ok_or(Refusal::NoRendezvous),
            Some(_) => Err(Refusal::OtherDevice),
            None => Err(Refusal::NoRendezvous),
        }
    }
}

async fn refuse(mut tls: Stream, why: &Refusal) {
    let _ = write(
        &mut tls,
        &Reply::Refused {
            message: why.to_string(),
        },
    )
    .await;
    let _ = tls.shutdown().await;
}

/// Test mode's copy (else `splice::forward`): bytes both ways between two paired
/// connections until both ends close, each side's also written to its transcript file.
/// Returns the bytes each side sent.
async fn forward<A, B>(
    a: A,
    b: B,
    a_sent: Option<std::fs::File>,
    b_sent: Option<std::fs::File>,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_rd, a_wr) = tokio::io::split(Recorded::new(a, a_sent));
    let (b_rd, b_wr) = tokio::io::split(Recorded::new(b, b_sent));
    tokio::try_join!(pump(a_rd, b_wr), pump(b_rd, a_wr))
}

/// One direction of [`forward`]: reads what the sender has, writes it to the other side
/// and flushes, and shuts the other side's sending down when the sender's ends. Each write
/// first gathers whatever else is already there, up to [`COPY_CHUNK`]: a relayed block
/// then goes out in a few large writes rather than many small ones.
async fn pump<R, W>(mut from: R, mut to: W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total = 0u64;
    loop {
        let mut n = from.read(&mut buf).await?;
        let mut ended = n == 0;
        while !ended && n < buf.len() {
            let Some(read) = from.read(&mut buf[n..]).now_or_never() else {
                break;
            };
            match read? {
                0 => ended = true,
                m => n += m,
            }
        }
        if n > 0 {
            to.write_all(&buf[..n]).await?;
            to.flush().await?;
            total += n as u64;
        }
        if ended {
            to.shutdown().await?;
            return Ok(total);
        }
    }
}

/// A stream whose reads are also written to a transcript file (the test mode's record of
/// every byte forwarded; a plain stream when there is none). The file is written in place,
/// blocking, which only the test mode does.
struct Recorded<S> {
    inner: S,
    file: Option<std::fs::File>,
}

impl<S> Recorded<S> {
    fn new(inner: S, file: Option<std::fs::File>) -> Self {
        Self { inner, file }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(file) = this.file.as_mut() {
            file.write_all(buf.filled().get(before..).unwrap_or_default())?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, BufWriter, duplex};

    /// A write the far side holds in a buffer (as a TLS stream does) still arrives while
    /// the connection stays open: the last request of a burst must not wait for the next.
    #[tokio::test]
    async fn forwarded_bytes_arrive_without_waiting_for_more() {
        let (mut dev_a, relay_a) = duplex(1 << 16);
        let (relay_b, mut dev_b) = duplex(1 << 16);
        let relay = tokio::spawn(forward(relay_a, BufWriter::new(relay_b), None, None));
        dev_a.write_all(b"one request").await.unwrap();
        let mut got = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), dev_b.read_exact(&mut got))
            .await
            .expect("the bytes arrived while the connection stayed open")
            .unwrap();
        assert_eq!(&got, b"one request");
        dev_b.write_all(b"an answer").await.unwrap();
        let mut back = [0u8; 9];
        dev_a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"an answer");
        drop((dev_a, dev_b));
        assert_eq!(relay.await.unwrap().unwrap(), (11, 9));
    }

    #[tokio::test]
    async fn the_transcript_holds_every_byte_each_side_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (ab, ba) = (dir.path().join("ab"), dir.path().join("ba"));
        let (mut dev_a, relay_a) = duplex(1 << 16);
        let (relay_b, mut dev_b) = duplex(1 << 16);
        let files = (
            std::fs::File::create(&ab).unwrap(),
            std::fs::File::create(&ba).unwrap(),
        );
        let relay = tokio::spawn(forward(relay_a, relay_b, Some(files.0), Some(files.1)));
        let from_a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (send_a, send_b) = (from_a.clone(), b"from b".to_vec());
        let a = tokio::spawn(async move {
            dev_a.write_all(&send_a).await.unwrap();
            dev_a.shutdown().await.unwrap();
            let mut back = Vec::new();
            dev_a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = vec![0u8; from_a.len()];
        dev_b.read_exact(&mut got).await.unwrap();
        dev_b.write_all(&send_b).await.unwrap();
        dev_b.shutdown().await.unwrap();
        assert_eq!(a.await.unwrap(), b"from b");
        relay.await.unwrap().unwrap();
        assert_eq!(got, from_a);
        assert_eq!(std::fs::read(ab).unwrap(), from_a);
        assert_eq!(std::fs::read(ba).unwrap(), b"from b");
    }
}
