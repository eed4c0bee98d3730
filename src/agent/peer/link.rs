//! One established channel to one peer, used by many readers at once: each request gets an
//! id and waits for its own answer, which a reader task hands over as it arrives. The first
//! error of the channel ends the link and fails every request still waiting on it.

use super::BlockRequest;
use super::BoxIo;
use super::channel::{Channel, FrameReader};
use super::wire::{self, ANSWER_HEADER, Message, Status};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::ReadHalf;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;

/// How long one block may take to arrive once asked for.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a request on a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the peer does not hold the block")]
    Missing,
    #[error("the peer's ticket does not let it serve this folder")]
    Forbidden,
    #[error("the link is closed: {0}")]
    Closed(String),
}

type Waiters = Mutex<HashMap<u32, oneshot::Sender<Result<Bytes, LinkError>>>>;

/// A live channel to a peer.
pub struct Link {
    /// The peer's device id.
    pub device: String,
    /// Whether the bytes go through the relay.
    pub relayed: bool,
    writer: tokio::sync::Mutex<super::channel::FrameWriter<tokio::io::WriteHalf<BoxIo>>>,
    waiters: Arc<Waiters>,
    next_id: AtomicU32,
    alive: Arc<AtomicBool>,
    reader: AbortOnDropHandle<()>,
}

impl Link {
    /// Starts the reader task of an established channel.
    pub fn new(channel: Channel<BoxIo>, relayed: bool) -> Arc<Self> {
        let device = channel.peer.device.clone();
        let deadline = super::ticket_deadline(channel.peer.expires);
        let (mut rd, wr) = channel.into_split();
        // Blocks arrive where the block store can write them to the disk directly.
        rd.align_payload_at(ANSWER_HEADER);
        let waiters: Arc<Waiters> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = AbortOnDropHandle::new(tokio::spawn(read_answers(
            rd,
            Arc::clone(&waiters),
            Arc::clone(&alive),
            device.clone(),
            deadline,
        )));
        Arc::new(Self {
            device,
            relayed,
            writer: tokio::sync::Mutex::new(wr),
            waiters,
            next_id: AtomicU32::new(0),
            alive,
            reader,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Ends the link: every waiting request fails and no new one is sent.
    pub fn close(&self, why: &str) {
        self.alive.store(false, Ordering::Release);
        self.reader.abort();
        fail_all(&self.waiters, why);
    }

    /// Asks the peer for one block and waits for the answer.
    pub async fn get(&self, want: &BlockRequest) -> Result<Bytes, LinkError> {
        if !self.is_alive() {
            return Err(LinkError::Closed("closed earlier".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::request(id, want).map_err(|e| LinkError::Closed(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        // The reader may have ended between the check above and the insert: then nobody
        // would answer this waiter.
        if !self.is_alive() {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(LinkError::Closed("closed meanwhile".into()));
        }
        let sent = self.writer.lock().await.send(&frame).await;
        if let Err(e) = sent {
            self.close(&e.to_string());
            return Err(LinkError::Closed(e.to_string()));
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(LinkError::Closed("the reader stopped".into())),
            Err(_) => {
                self.close("a block took too long");
                Err(LinkError::Closed("a block took too long".into()))
            }
        }
    }
}

fn fail_all(waiters: &Waiters, why: &str) {
    let drained: Vec<_> = waiters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    for (_, tx) in drained {
        let _ = tx.send(Err(LinkError::Closed(why.to_string())));
    }
}

async fn read_answers(
    rd: FrameReader<ReadHalf<BoxIo>>,
    waiters: Arc<Waiters>,
    alive: Arc<AtomicBool>,
    device: String,
    deadline: tokio::time::Instant,
) {
    let mut frames = rd.open_ahead(super::crypto_depth());
    let why = loop {
        let opening = tokio::select! {
            next = frames.recv() => match next {
                Some(opening) => opening,
                None => break "the peer closed the channel".to_string(),
            },
            () = tokio::time::sleep_until(deadline) => break "the peer's ticket expired".to_string(),
        };
        let frame = match opening.plaintext().await {
            Ok(f) => f,
            Err(e) => break e.to_string(),
        };
        let (id, status) = match wire::parse(&frame) {
            Ok(Message::Answer { id, status }) => (id, status),
            _ => break "the peer sent something that is not an answer".to_string(),
        };
        let Some(tx) = waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        else {
            break format!("the peer answered request {id}, which is not waiting");
        };
        let answer = match status {
            Status::Found => Ok(frame.slice(ANSWER_HEADER..)),
            Status::Missing => Err(LinkError::Missing),
            Status::Forbidden => Err(LinkError::Forbidden),
        };
        let _ = tx.send(answer);
    };
    tracing::debug!(%device, %why, "peer link closed");
    alive.store(false, Ordering::Release);
    fail_all(&waiters, &why);
}
