//! The answering side: every accepted channel (direct, or handed over by the relay) is
//! served by one task that reads requests and answers each from the [`Shelf`], a bounded
//! number at a time. A peer of another user, paired through one Mesh Folder, gets only
//! blocks of files in that folder that are held here for it, and only while its user is a
//! member who has the folder mapped (checked before every request: a removal ends the
//! channel). Anything malformed ends the channel.
//!
//! The listener keeps a bounded number of connections per source address and in total,
//! and a caller waits for a handshake slot only once it has sent its whole first message:
//! connections that send nothing cannot starve real peers.

use super::channel::{self, Channel, frame_buffer};
use super::net::PeerNet;
use super::wire::{self, Message, Status};
use super::{BlockRequest, BoxIo, Io, Shelf};
use crate::agent::status::Counters;
use crate::crypto::channel::{ChannelError, TicketRefusal};
use crate::net::{Bounds, ConnectionLimits};
use crate::proto::BLOCK_SIZE;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc};

/// Requests of one channel answered at once (as many as a reader's read-ahead asks for).
const IN_FLIGHT: usize = 32;

/// Direct connections kept open at once: a device has a link per peer and ticket scope, so
/// one address (a peer, or a few behind one NAT) needs few.
pub const LISTENER_BOUNDS: Bounds = Bounds {
    per_source: 16,
    total: 256,
};

/// Accepts direct connections forever; one over [`LISTENER_BOUNDS`] is closed at once.
pub async fn listen(net: Arc<PeerNet>, listener: TcpListener) {
    let limits = ConnectionLimits::new(LISTENER_BOUNDS);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match limits.admit(from.ip()) {
            Ok(a) => a,
            Err(over) => {
                tracing::debug!(%from, %over, "peer connection closed unread");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let net = Arc::clone(&net);
        tokio::spawn(async move {
            if let Err(e) = accept_and_serve(net, Box::new(tcp), false).await {
                tracing::info!(%from, error = %e, "peer connection refused or ended");
            }
            drop(admitted);
        });
    }
}

/// Reads the caller's first message on `io` (within a short deadline), then runs the
/// responder's handshake (a bounded number at once: each costs milliseconds of RSA), then
/// serves the channel until it ends.
pub async fn accept_and_serve(
    net: Arc<PeerNet>,
    mut io: BoxIo,
    relayed: bool,
) -> Result<(), ChannelError> {
    let first = channel::read_first(&mut io).await?;
    let channel = {
        let _slot = net
            .handshakes
            .acquire()
            .await
            .map_err(|_| ChannelError::Closed)?;
        net.accept(io, first).await?
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
    // Whose membership each request needs: another user's, through a folder.
    let member = match &scope {
        Some(folder) if channel.peer.user != net.remote.user() => {
            Some((folder.clone(), channel.peer.device.clone()))
        }
        _ => None,
    };
    // An idle channel of a device whose user left the folder closes too, when told.
    let removed = Arc::new(Notify::new());
    let watcher = member.clone().map(|(folder, device)| {
        tokio::spawn(watch_member(
            Arc::clone(&net),
            folder,
            device,
            Arc::clone(&removed),
        ))
    });
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
            () = removed.notified() => {
                break Err(ChannelError::BadTicket(TicketRefusal::NotAMember));
            }
        };
        let Ok(Message::Request { id, want }) = wire::parse(&frame) else {
            break Err(ChannelError::BadMessage("not a block request"));
        };
        if let Some((folder, device)) = &member
            && !net.directory.shares(folder, device).await
        {
            break Err(ChannelError::BadTicket(TicketRefusal::NotAMember));
        }
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
    if let Some(w) = watcher {
        w.abort();
    }
    result
}

/// Tells `removed` once `device` no longer shares `folder`, looking again whenever the
/// directory hears that some folder's members changed.
async fn watch_member(net: Arc<PeerNet>, folder: String, device: String, removed: Arc<Notify>) {
    let mut changes = net.directory.members_changes();
    while changes.changed().await.is_ok() {
        if !net.directory.shares(&folder, &device).await {
            removed.notify_one();
            return;
        }
    }
}

/// The answer to one request, as a frame buffer.
async fn answer(net: &PeerNet, scope: Option<&str>, id: u32, want: &BlockRequest) -> Vec<u8> {
    let refusal = |status| {
        let mut frame = frame_buffer(wire::ANSWER_HEADER);
        frame.extend_from_slice(&wire::answer_header(id, status));
        frame
    };
    match allowed(net.shelf.as_ref(), scope, want) {
        Allowed::Yes => {}
        Allowed::OtherFolder => return refusal(Status::Forbidden),
        Allowed::NotHere => return refusal(Status::Missing),
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

/// Whether a peer may have a block.
#[derive(Debug, PartialEq, Eq)]
enum Allowed {
    Yes,
    /// It asked for a folder its ticket does not name.
    OtherFolder,
    /// Not a block held here for a file of its folder: answered as a block not stored at
    /// all, so it learns nothing of what this device holds for other folders.
    NotHere,
}

/// Whether a peer limited to `scope` may have the block: only a block of a file of that
/// folder, as this device knows the file, and held here for that folder. A peer of the
/// same user may have any block.
fn allowed(shelf: &dyn Shelf, scope: Option<&str>, want: &BlockRequest) -> Allowed {
    match scope {
        None => Allowed::Yes,
        Some(folder) if want.folder != folder => Allowed::OtherFolder,
        Some(folder)
            if shelf.held_for(folder, &want.hash)
                && shelf.in_file(folder, &want.entry, &want.hash) =>
        {
            Allowed::Yes
        }
        Some(_) => Allowed::NotHere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::BlockHash;

    /// A device holding one file per folder: `private` in "mine", `shared` in "ours"; an
    /// entry of "ours" that a member planted names the private block too.
    struct TwoFolders {
        private: BlockHash,
        shared: BlockHash,
    }

    impl Shelf for TwoFolders {
        fn in_file(&self, folder: &str, entry: &str, hash: &BlockHash) -> bool {
            match (folder, entry) {
                ("mine", "p") => *hash == self.private,
                ("ours", "s") => *hash == self.shared,
                ("ours", "planted") => true,
                _ => false,
            }
        }

        fn held_for(&self, folder: &str, hash: &BlockHash) -> bool {
            (folder, *hash) == ("mine", self.private) || (folder, *hash) == ("ours", self.shared)
        }

        fn append_block(&self, _: &BlockHash, _: &mut Vec<u8>) -> std::io::Result<bool> {
            Ok(true)
        }
    }

    fn want(folder: &str, entry: &str, hash: BlockHash) -> BlockRequest {
        BlockRequest {
            folder: folder.into(),
            entry: entry.into(),
            hash,
        }
    }

    #[test]
    fn a_block_held_for_another_folder_is_not_here_like_one_never_held() {
        let shelf = TwoFolders {
            private: BlockHash::of(b"private"),
            shared: BlockHash::of(b"shared"),
        };
        let ours = Some("ours");
        let random = BlockHash::of(b"random");
        assert_eq!(
            allowed(&shelf, ours, &want("ours", "s", shelf.shared)),
            Allowed::Yes
        );
        assert_eq!(
            allowed(&shelf, ours, &want("ours", "planted", shelf.private)),
            Allowed::NotHere
        );
        assert_eq!(
            allowed(&shelf, ours, &want("ours", "planted", random)),
            Allowed::NotHere
        );
        assert_eq!(
            allowed(&shelf, ours, &want("mine", "p", shelf.private)),
            Allowed::OtherFolder
        );
        assert_eq!(
            allowed(&shelf, None, &want("mine", "p", shelf.private)),
            Allowed::Yes,
            "the user's own devices have every block"
        );
    }
}
