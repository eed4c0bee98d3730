//! The answering side: every accepted channel (direct, or handed over by the relay) is
//! served by one task that reads requests and answers each from the [`Shelf`], a bounded
//! number at a time. A peer paired through one Mesh Folder gets only blocks of files in
//! that folder; anything malformed ends the channel.

use super::channel::{Channel, frame_buffer};
use super::net::PeerNet;
use super::wire::{self, Message, Status};
use super::{BlockRequest, BoxIo, Io, Shelf};
use crate::agent::status::Counters;
use crate::crypto::channel::{ChannelError, TicketRefusal};
use crate::proto::BLOCK_SIZE;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

/// Requests of one channel answered at once (as many as a reader's read-ahead asks for).
const IN_FLIGHT: usize = 32;

/// Accepts direct connections forever.
pub async fn listen(net: Arc<PeerNet>, listener: TcpListener) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let net = Arc::clone(&net);
        tokio::spawn(async move {
            if let Err(e) = accept_and_serve(net, Box::new(tcp), false).await {
                tracing::info!(%from, error = %e, "peer connection refused or ended");
            }
        });
    }
}

/// Runs the responder's handshake on `io` (a bounded number at once: each costs
/// milliseconds of RSA), then serves the channel until it ends.
pub async fn accept_and_serve(
    net: Arc<PeerNet>,
    io: BoxIo,
    relayed: bool,
) -> Result<(), ChannelError> {
    let channel = {
        let _slot = net
            .handshakes
            .acquire()
            .await
            .map_err(|_| ChannelError::Closed)?;
        net.accept(io).await?
    };
    tracing::debug!(peer = %channel.peer.device, relayed, "peer channel accepted");
    serve(net, channel).await
}

/// Answers requests until the peer closes the channel or breaks the protocol.
async fn serve<S: Io>(net: Arc<PeerNet>, channel: Channel<S>) -> Result<(), ChannelError> {
    // A peer of another user may only have what its ticket's folder holds; a ticket with
    // no folder is for the user's own devices only (the cloud signs no other).
    let scope = match &channel.peer.folder {
        None if channel.peer.user != net.remote.user() => {
            return Err(ChannelError::BadTicket(TicketRefusal::NotForMe));
        }
        folder => folder.clone(),
    };
    let deadline = super::ticket_deadline(channel.peer.expires);
    let (mut rd, mut wr) = channel.into_split();
    // Answers arrive as frame buffers (`channel::frame_buffer`), sealed where they lie.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let _ = wr.send_all(&mut rx, super::crypto_depth()).await;
    });
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let result = loop {
        let frame = tokio::select! {
            r = rd.recv() => match r {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            () = tokio::time::sleep_until(deadline) => break Err(ChannelError::Expired),
        };
        let Ok(Message::Request { id, want }) = wire::parse(&frame) else {
            break Err(ChannelError::BadMessage("not a block request"));
        };
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break Ok(());
        };
        let (net, tx, scope) = (Arc::clone(&net), tx.clone(), scope.clone());
        tokio::spawn(async move {
            let answer = answer(&net, scope.as_deref(), id, &want).await;
            let _ = tx.send(answer).await;
            drop(permit);
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// The answer to one request, as a frame buffer.
async fn answer(net: &PeerNet, scope: Option<&str>, id: u32, want: &BlockRequest) -> Vec<u8> {
    let refusal = |status| {
        let mut frame = frame_buffer(wire::ANSWER_HEADER);
        frame.extend_from_slice(&wire::answer_header(id, status));
        frame
    };
    if !allowed(net.shelf.as_ref(), scope, want) {
        return refusal(Status::Forbidden);
    }
    let shelf = Arc::clone(&net.shelf);
    let hash = want.hash;
    let block = tokio::task::spawn_blocking(move || {
        let mut frame = frame_buffer(wire::ANSWER_HEADER + BLOCK_SIZE as usize);
        frame.extend_from_slice(&wire::answer_header(id, Status::Found));
        let header = frame.len();
        shelf
            .append_block(&hash, &mut frame)
            .ok()
            .filter(|&found| found)
            .map(|_| (frame.len() - header, frame))
    })
    .await
    .ok()
    .flatten();
    match block {
        Some((len, frame)) => {
            Counters::add(&net.counters.blocks_served, 1);
            Counters::add(&net.counters.bytes_served, len as u64);
            frame
        }
        None => refusal(Status::Missing),
    }
}

/// Whether a peer limited to `scope` may have the block: only a block of a file of that
/// folder, as this device knows the file. A peer of the same user may have any block.
fn allowed(shelf: &dyn Shelf, scope: Option<&str>, want: &BlockRequest) -> bool {
    match scope {
        None => true,
        Some(folder) => want.folder == folder && shelf.in_file(folder, &want.entry, &want.hash),
    }
}
