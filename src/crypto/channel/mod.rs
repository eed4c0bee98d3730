//! The peer channel's cryptography (DESIGN §5), sans I/O: the caller moves bytes, these
//! types decide what they mean. Nothing else in the crate calls the primitives used here.
//!
//! ```text
//! initiator                                              responder
//!  Hello{v1, device, peer ticket, nonce, x25519 share} ─▶  check ticket (PeerCheck)
//!                                                     ◀─  Hello{…} + KeyTransport{OAEP(Ki, rs)}
//!  check ticket, decrypt rs                               (Ki: the initiator's key in the ticket)
//!  KeyTransport{OAEP(Kr, is)} + Finished{HMAC} ──────────▶ decrypt is, check Finished
//!  check Finished  ◀────────────────────────────────────  Finished{HMAC}
//! ```
//!
//! - Each side encrypts its secret to the RSA key the cloud recorded for the other device in
//!   the signed peer ticket, so only the holder of that private key can derive the keys.
//! - [`schedule`]: HKDF-SHA256 over `is ‖ rs ‖ X25519(shared)` salted with the hash of every
//!   handshake byte up to the key transports; per direction an AES-128 key, an HMAC-SHA256
//!   key, an IV and a Finished key. The X25519 shares give forward secrecy.
//! - A key transport that fails to decrypt is not reported: a random secret stands in and
//!   the handshake fails at Finished, so no padding oracle is offered (implicit rejection).
//! - [`record`]: frames `len ‖ AES-128-CTR(ciphertext) ‖ HMAC-SHA256(dir ‖ seq ‖ len ‖ ct)`,
//!   the tag checked in constant time before decryption; any failure closes the channel.

pub mod check;
pub mod handshake;
pub mod record;
pub mod schedule;

pub use check::{PeerCheck, PeerInfo, TicketCheck, TicketRefusal};
pub use handshake::{Established, Initiator, KeyLog, LocalPeer, Responder};
pub use record::{MAX_FRAME, Opener, Sealer};

use crate::crypto::ticket::TicketError;

/// Why the peer channel refused or closed. Each variant names one fault.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the peer's ticket was refused: {0}")]
    BadTicket(#[from] TicketRefusal),
    #[error("expected to reach device {expected}, reached {found}")]
    WrongPeer { expected: String, found: String },
    #[error("malformed handshake message: {0}")]
    BadMessage(&'static str),
    #[error("the peer speaks handshake version {0}, this device only version 1")]
    Version(u8),
    #[error("the peer did not prove the session keys (Finished MAC wrong)")]
    BadFinished,
    #[error("a frame failed its integrity check")]
    BadMac,
    #[error("a frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("2^32 frames sent or received under one key; the channel must be reopened")]
    SequenceExhausted,
    #[error("the channel is closed after an earlier error")]
    Closed,
    #[error("the stream ended in the middle of a message")]
    Truncated,
    #[error("RSA key transport failed: {0}")]
    KeyTransport(&'static str),
    #[error("no peer ticket of mine for device {device}")]
    NoTicket {
        device: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the peer's ticket expired, so the channel was closed (a new one needs a fresh ticket)"
    )]
    Expired,
    #[error("the cloud's signing keys are not known yet, so no peer ticket can be checked")]
    NoKeys,
    #[error("the handshake took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("a handshake task failed")]
    Task,
    #[error("reading or writing the peer connection")]
    Io(#[from] std::io::Error),
}

impl From<TicketError> for ChannelError {
    fn from(e: TicketError) -> Self {
        Self::BadTicket(TicketRefusal::Invalid(e))
    }
}
