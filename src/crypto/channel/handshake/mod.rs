//! The handshake as explicit states (rustls' `hs.rs` habit): each state is a type whose
//! `handle` consumes it and one message from the peer, and returns the next state and the
//! bytes to send. Only a verified Finished builds an [`Established`] channel.
//!
//! ```text
//! initiator: Initiator::start ─▶ ExpectHello ─▶ ExpectKeyTransport ─▶ ExpectFinished ─▶ Established
//! responder: Responder::read_hello ─▶ Responder::respond ─▶ ExpectKeyTransport
//!                                                         ─▶ ExpectFinished ─▶ Established
//! ```
//!
//! The transcript is every message as sent, in order: initiator Hello, responder Hello,
//! responder KeyTransport, initiator KeyTransport (the key schedule's salt, and what the
//! initiator's Finished covers), initiator Finished (then also covered by the responder's).

pub mod initiator;
pub mod message;
pub mod responder;

pub use initiator::Initiator;
pub use responder::Responder;

use super::ChannelError;
use super::check::PeerInfo;
use super::record::{Opener, Sealer};
use super::schedule::{SECRET_LEN, Schedule, Secret};
use rand::Rng;
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use x25519_dalek::{EphemeralSecret, PublicKey as Share};
use zeroize::Zeroizing;

/// This device, as it presents itself in a handshake.
#[derive(Clone)]
pub struct LocalPeer {
    /// Its device id.
    pub device: String,
    /// Its RSA private key, the one the cloud recorded the public half of.
    pub key: Arc<PrivateKey>,
    /// Its peer ticket for the pair it is about to join.
    pub ticket: String,
    /// Where to write the session's secrets, if anywhere (see [`KeyLog`]).
    pub key_log: Option<Arc<dyn KeyLog>>,
}

/// Receives a session's secrets as the handshake derives them, for a test or a debugging
/// session that must see inside the channel (the habit of TLS's `SSLKEYLOGFILE`). A side
/// given none writes nothing anywhere.
pub trait KeyLog: Send + Sync {
    /// One secret of the session that the initiator's Hello nonce names.
    fn log(&self, label: &'static str, session: &[u8; 32], secret: &[u8]);
}

/// Hands every secret of a session to `log`: both key-transport secrets, the X25519 shared
/// secret, and each direction's record and Finished keys.
fn log_secrets(
    log: Option<&dyn KeyLog>,
    session: &[u8; 32],
    secrets: [&Secret; 3],
    keys: &Schedule,
) {
    let Some(log) = log else {
        return;
    };
    let [initiator, responder, shared] = secrets;
    for (label, secret) in [
        ("INITIATOR_SECRET", &initiator[..]),
        ("RESPONDER_SECRET", &responder[..]),
        ("X25519_SHARED_SECRET", &shared[..]),
        ("I2R_KEY", &keys.i2r.key[..]),
        ("I2R_MAC_KEY", &keys.i2r.mac[..]),
        ("I2R_IV", &keys.i2r.iv[..]),
        ("I2R_FINISHED_KEY", &keys.i2r.finished[..]),
        ("R2I_KEY", &keys.r2i.key[..]),
        ("R2I_MAC_KEY", &keys.r2i.mac[..]),
        ("R2I_IV", &keys.r2i.iv[..]),
        ("R2I_FINISHED_KEY", &keys.r2i.finished[..]),
    ] {
        log.log(label, session, secret);
    }
}

/// The outcome of a handshake: who the peer is and the record layer for each direction.
pub struct Established {
    /// The other device, as its ticket describes it.
    pub peer: PeerInfo,
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what the peer sends.
    pub opener: Opener,
}

/// The running hash of the transcript.
#[derive(Clone)]
struct Transcript(Sha256);

impl Transcript {
    fn new() -> Self {
        Self(Sha256::new())
    }

    fn add(&mut self, msg: &[u8]) {
        self.0.update(msg);
    }

    fn hash(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0; N];
    rand::rng().fill_bytes(&mut out);
    out
}

fn random_secret() -> Secret {
    let mut s = Zeroizing::new([0; SECRET_LEN]);
    rand::rng().fill_bytes(&mut s[..]);
    s
}

/// A fresh X25519 key pair for one handshake.
fn new_share() -> (EphemeralSecret, [u8; 32]) {
    let secret = EphemeralSecret::random_from_rng(&mut rand::rng());
    let public = Share::from(&secret).to_bytes();
    (secret, public)
}

/// The X25519 shared secret; refuses a peer share of small order, which would fix it.
fn agree(mine: EphemeralSecret, theirs: [u8; 32]) -> Result<Secret, ChannelError> {
    let shared = mine.diffie_hellman(&Share::from(theirs));
    if !shared.was_contributory() {
        return Err(ChannelError::BadMessage("x25519 share of small order"));
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// `secret` under RSA-OAEP-SHA256 to `key`.
fn encrypt_secret(key: &PublicKey, secret: &Secret) -> Result<Vec<u8>, ChannelError> {
    key.oaep_encrypt_with_rng::<Sha256, _>(&mut rand::rng(), &secret[..])
        .map_err(|_| ChannelError::KeyTransport("encrypting to the peer's key"))
}

/// The secret in a key transport. A ciphertext that does not decrypt to 32 bytes yields a
/// random secret instead of an error (implicit rejection): the handshake then fails at
/// Finished, and no one learns why, so the private key serves no padding oracle.
fn decrypt_secret(key: &PrivateKey, ciphertext: &[u8]) -> Secret {
    let plain = Zeroizing::new(key.oaep_decrypt::<Sha256>(ciphertext).unwrap_or_default());
    match <[u8; SECRET_LEN]>::try_from(&plain[..]) {
        Ok(secret) => Zeroizing::new(secret),
        Err(_) => random_secret(),
    }
}

#[cfg(test)]
mod tests;
