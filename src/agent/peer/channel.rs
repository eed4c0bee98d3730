//! Runs the peer handshake and the record layer of `crypto::channel` over an async byte
//! stream. RSA private-key operations (milliseconds each) run on the blocking pool. The
//! responder reads the caller's whole Hello first ([`read_first`], within
//! [`FIRST_MESSAGE_WITHIN`]); the rest of the handshake has [`HANDSHAKE_TIMEOUT`]. After
//! it, each direction is a stream of frames: [`FrameWriter::send`] seals one,
//! [`FrameReader::recv`] opens one, and for block answers [`FrameWriter::send_all`] and
//! [`FrameReader::open_ahead`] work on several at once on the blocking pool, still in
//! order.

use crate::agent::aligned::aligned_buffer;
use crate::crypto::channel::handshake::message::{self, Hello};
use crate::crypto::channel::record::FrameOpen;
use crate::crypto::channel::record::{HEADER_LEN, TAG_LEN};
use crate::crypto::channel::{
    ChannelError, Established, Initiator, KeyLog, LocalPeer, Opener, PeerCheck, PeerInfo,
    Responder, Sealer,
};
use bytes::{Buf, Bytes, BytesMut};
use rsa::PrivateKey;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::sync::mpsc;

/// How long a handshake may take, from the first byte to an established channel.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller has to send its whole first message. A listener reads it before the
/// caller may wait for a handshake slot, so connections that send nothing hold none.
pub const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(5);

/// A caller's first handshake message, read whole and well formed: a Hello within its
/// bounds (its ticket not checked yet). Only [`read_first`] makes one; [`accept`] takes it.
pub struct FirstMessage(Vec<u8>);

/// Reads the caller's first message on `io` within [`FIRST_MESSAGE_WITHIN`], its length
/// bounded by its header before the body is read.
pub async fn read_first<S: AsyncRead + Unpin>(io: &mut S) -> Result<FirstMessage, ChannelError> {
    let msg = within(FIRST_MESSAGE_WITHIN, read_message(io)).await?;
    Hello::decode(&msg)?;
    Ok(FirstMessage(msg))
}

/// An established channel to one peer.
pub struct Channel<S> {
    /// The other device, as its ticket describes it.
    pub peer: PeerInfo,
    io: S,
    sealer: Sealer,
    opener: Opener,
}

impl<S: AsyncRead + AsyncWrite> Channel<S> {
    fn new(io: S, e: Established) -> Self {
        Self {
            peer: e.peer,
            io,
            sealer: e.sealer,
            opener: e.opener,
        }
    }

    /// The two directions, to be used from different tasks.
    pub fn into_split(self) -> (FrameReader<ReadHalf<S>>, FrameWriter<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        let reader = FrameReader {
            io: BufReader::new(r),
            opener: self.opener,
            closed: false,
            payload_at: 0,
        };
        let writer = FrameWriter {
            io: w,
            sealer: self.sealer,
            buf: Vec::new(),
            closed: false,
        };
        (reader, writer)
    }
}

/// Opens a channel to `expect_device` over `io`, as the initiator.
pub async fn connect<S>(
    io: S,
    me: LocalPeer,
    expect_device: &str,
    check: Arc<dyn PeerCheck + Send + Sync>,
) -> Result<Channel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    within(HANDSHAKE_TIMEOUT, initiate(io, me, expect_device, check)).await
}

/// Accepts a channel on `io`, as the responder, the caller's `first` message already read
/// from it. `ticket_for` gets this device's peer ticket for the calling device (and the
/// folder its ticket names, if any), once that device's own ticket has been checked.
pub async fn accept<S, F, Fut, E>(
    io: S,
    first: FirstMessage,
    device: &str,
    key: Arc<PrivateKey>,
    ticket_for: F,
    check: Arc<dyn PeerCheck + Send + Sync>,
    key_log: Option<Arc<dyn KeyLog>>,
) -> Result<Channel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnOnce(PeerInfo) -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    within(
        HANDSHAKE_TIMEOUT,
        respond(io, first, device, key, ticket_for, check, key_log),
    )
    .await
}

async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, ChannelError>>,
) -> Result<T, ChannelError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ChannelError::Timeout(limit))?
}

async fn initiate<S>(
    mut io: S,
    me: LocalPeer,
    expect: &str,
    check: Arc<dyn PeerCheck + Send + Sync>,
) -> Result<Channel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (state, hello) = Initiator::start(me, expect)?;
    send(&mut io, &hello).await?;
    let msg = read_message(&mut io).await?;
    let state = blocking(move || state.handle(&msg, &*check)).await?;
    let msg = read_message(&mut io).await?;
    let (state, out) = blocking(move || state.handle(&msg)).await?;
    send(&mut io, &out).await?;
    let established = state.handle(&read_message(&mut io).await?)?;
    Ok(Channel::new(io, established))
}

async fn respond<S, F, Fut, E>(
    mut io: S,
    first: FirstMessage,
    device: &str,
    key: Arc<PrivateKey>,
    ticket_for: F,
    check: Arc<dyn PeerCheck + Send + Sync>,
    key_log: Option<Arc<dyn KeyLog>>,
) -> Result<Channel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnOnce(PeerInfo) -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = blocking(move || Responder::read_hello(&first.0, &*check)).await?;
    let caller = state.peer().clone();
    let ticket = ticket_for(caller.clone())
        .await
        .map_err(|e| ChannelError::NoTicket {
            device: caller.device,
            source: e.into(),
        })?;
    let me = LocalPeer {
        device: device.to_owned(),
        key,
        ticket,
        key_log,
    };
    let (state, out) = blocking(move || state.respond(me)).await?;
    send(&mut io, &out).await?;
    let msg = read_message(&mut io).await?;
    let state = blocking(move || state.handle(&msg)).await?;
    let (established, out) = state.handle(&read_message(&mut io).await?)?;
    send(&mut io, &out).await?;
    Ok(Channel::new(io, established))
}

/// Runs a handshake step on the blocking pool.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, ChannelError> + Send + 'static,
) -> Result<T, ChannelError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|_| ChannelError::Task)?
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> Result<(), ChannelError> {
    io.write_all(bytes).await?;
    io.flush().await?;
    Ok(())
}

/// One whole handshake message (header and body), its length bounded by its type.
async fn read_message<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, ChannelError> {
    let mut header = [0; message::HEADER_LEN];
    io.read_exact(&mut header)
        .await
        .map_err(eof_is_truncation)?;
    let len = message::body_len(header)?;
    let mut msg = Vec::with_capacity(message::HEADER_LEN + len);
    msg.extend_from_slice(&header);
    msg.resize(message::HEADER_LEN + len, 0);
    if let Some(body) = msg.get_mut(message::HEADER_LEN..) {
        io.read_exact(body).await.map_err(eof_is_truncation)?;
    }
    Ok(msg)
}

fn eof_is_truncation(e: std::io::Error) -> ChannelError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ChannelError::Truncated
    } else {
        ChannelError::Io(e)
    }
}

/// Receives the peer's frames, in order; any failure closes it for good.
pub struct FrameReader<R> {
    io: BufReader<R>,
    opener: Opener,
    closed: bool,
    /// Where in each frame's plaintext the payload starts, to be placed for direct I/O.
    payload_at: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Places byte `at` of every frame's plaintext on a
    /// [`DIRECT_ALIGN`](crate::agent::aligned::DIRECT_ALIGN) boundary in memory, so that a
    /// block carried from there can be written straight to the disk.
    pub fn align_payload_at(&mut self, at: usize) {
        self.payload_at = at;
    }

    /// The next frame's plaintext; `Ok(None)` when the peer closed the stream between
    /// frames. A stream that ends inside a frame is [`ChannelError::Truncated`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ChannelError> {
        match self.recv_sealed().await? {
            Some(frame) => frame.open().map(Some),
            None => Ok(None),
        }
    }

    /// The next frame as it came, its number taken but not yet checked; see [`recv`].
    ///
    /// [`recv`]: Self::recv
    async fn recv_sealed(&mut self) -> Result<Option<SealedFrame>, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let frame = self.next().await;
        if frame.is_err() {
            self.closed = true;
        }
        frame
    }

    async fn next(&mut self) -> Result<Option<SealedFrame>, ChannelError> {
        let mut header = [0; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let rest = header.get_mut(got..).unwrap_or_default();
            match self.io.read(rest).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(ChannelError::Truncated),
                n => got += n,
            }
        }
        let (body, key) = self.opener.next_frame(header)?;
        // At most MAX_FRAME + 36 bytes, bounded before anything is read.
        let mut frame = aligned_buffer(HEADER_LEN + body, HEADER_LEN + self.payload_at);
        frame.extend_from_slice(&header);
        let mut rest = (&mut self.io).take(body as u64);
        while frame.len() < HEADER_LEN + body {
            if rest.read_buf(&mut frame).await? == 0 {
                return Err(ChannelError::Truncated);
            }
        }
        Ok(Some(SealedFrame { frame, key }))
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameReader<R> {
    /// Reads frames in a task of their own and checks and decrypts up to `depth` of them at
    /// once on the blocking pool (each is two passes over up to 1 MiB), while the next ones
    /// arrive. The receiver gets them in the order they came: await each [`Opening`] for its
    /// plaintext. It ends after the peer's clean close, or with the first error; dropping it
    /// stops the reading. An opening awaited after one that failed is refused, whatever it
    /// holds: frames read ahead of a bad one are never delivered.
    pub fn open_ahead(mut self, depth: usize) -> mpsc::Receiver<Opening> {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = self.recv_sealed() => next,
                    () = tx.closed() => return,
                };
                let job = match next {
                    Ok(Some(frame)) => Ok(tokio::task::spawn_blocking(move || frame.open())),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                let last = job.is_err();
                let opening = Opening {
                    job,
                    failed: Arc::clone(&failed),
                };
                if tx.send(opening).await.is_err() || last {
                    return;
                }
            }
        });
        rx
    }
}

/// A frame read but not yet checked: its bytes and the keys of its number.
struct SealedFrame {
    frame: BytesMut,
    key: FrameOpen,
}

impl SealedFrame {
    /// Checks and decrypts the frame; a failure closes the reader it came from.
    fn open(self) -> Result<Bytes, ChannelError> {
        let Self { mut frame, key } = self;
        let len = key.open_in_place(&mut frame)?.len();
        frame.advance(HEADER_LEN);
        frame.truncate(len);
        Ok(frame.freeze())
    }
}

/// A frame from [`FrameReader::open_ahead`], being checked and decrypted.
pub struct Opening {
    job: Result<tokio::task::JoinHandle<Result<Bytes, ChannelError>>, ChannelError>,
    /// Set by the first of the reader's openings that fails.
    failed: Arc<AtomicBool>,
}

impl Opening {
    /// The frame's plaintext, or why the channel ended here: `Closed` once an opening of
    /// the same reader failed.
    pub async fn plaintext(self) -> Result<Bytes, ChannelError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(ChannelError::Closed);
        }
        let opened = match self.job {
            Ok(job) => job.await.unwrap_or(Err(ChannelError::Task)),
            Err(e) => Err(e),
        };
        if opened.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        opened
    }
}

/// A buffer for [`FrameWriter::send_all`] with room for `plaintext` bytes: it starts with
/// the record header's room, and the caller appends the plaintext, which is then sealed
/// where it lies (for 1 MiB blocks, one copy less per block).
pub fn frame_buffer(plaintext: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + plaintext + TAG_LEN);
    frame.resize(HEADER_LEN, 0);
    frame
}

/// Sends frames to the peer; any failure closes it for good.
pub struct FrameWriter<W> {
    io: W,
    sealer: Sealer,
    buf: Vec<u8>,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Seals `plaintext` (at most [`MAX_FRAME`](crate::crypto::channel::MAX_FRAME) bytes)
    /// as one frame, writes it and flushes.
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let sent = self.write(plaintext).await;
        if sent.is_err() {
            self.closed = true;
        }
        sent
    }

    async fn write(&mut self, plaintext: &[u8]) -> Result<(), ChannelError> {
        self.buf.clear();
        self.sealer.seal(plaintext, &mut self.buf)?;
        send(&mut self.io, &self.buf).await
    }

    /// Sends every frame built with [`frame_buffer`] that comes from `frames`, in order,
    /// sealing up to `depth` of them at once on the blocking pool while earlier ones are
    /// written. Returns when `frames` ends and all are sent, or at the first failure.
    pub async fn send_all(
        &mut self,
        frames: &mut mpsc::Receiver<Vec<u8>>,
        depth: usize,
    ) -> Result<(), ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let sent = self.pipeline(frames, depth.max(1)).await;
        if sent.is_err() {
            self.closed = true;
        }
        sent
    }

    async fn pipeline(
        &mut self,
        frames: &mut mpsc::Receiver<Vec<u8>>,
        depth: usize,
    ) -> Result<(), ChannelError> {
        let mut sealing = std::collections::VecDeque::with_capacity(depth);
        loop {
            // Start on what is waiting; wait for a frame only with none in hand.
            while sealing.len() < depth {
                let next = if sealing.is_empty() {
                    frames.recv().await
                } else {
                    frames.try_recv().ok()
                };
                let Some(mut frame) = next else {
                    break;
                };
                let seal = self.sealer.next_frame()?;
                sealing.push_back(tokio::task::spawn_blocking(move || {
                    seal.seal_in_place(&mut frame).map(|()| frame)
                }));
            }
            let Some(oldest) = sealing.pop_front() else {
                return Ok(());
            };
            let frame = oldest.await.map_err(|_| ChannelError::Task)??;
            send(&mut self.io, &frame).await?;
        }
    }

    /// Flushes and shuts the sending direction down; the peer then sees a clean end.
    pub async fn close(mut self) -> Result<(), ChannelError> {
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
