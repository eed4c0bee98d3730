//! The responder's states: it accepted the connection and learns from the initiator's Hello
//! who is calling, before it needs its own ticket for that pair.

use super::message::{self, Hello};
use super::{
    Established, LocalPeer, Transcript, agree, decrypt_secret, encrypt_secret, log_secrets,
    new_share, random, random_secret,
};
use crate::crypto::channel::ChannelError;
use crate::crypto::channel::check::{PeerCheck, PeerInfo};
use crate::crypto::channel::record::{Direction, Opener, Sealer};
use crate::crypto::channel::schedule::{self, Schedule, Secret};
use subtle::ConstantTimeEq;

/// The initiator's Hello, read and its ticket checked; waits for this side's own ticket.
pub struct Responder {
    peer: PeerInfo,
    /// The initiator's Hello nonce, which names the session in a key log.
    nonce: [u8; 32],
    their_share: [u8; 32],
    transcript: Transcript,
}

impl Responder {
    /// Reads the initiator's Hello and checks its ticket.
    pub fn read_hello(msg: &[u8], check: &dyn PeerCheck) -> Result<Self, ChannelError> {
        let hello = Hello::decode(msg)?;
        let peer = check.check(&hello.device, &hello.ticket)?;
        let mut transcript = Transcript::new();
        transcript.add(msg);
        Ok(Self {
            peer,
            nonce: hello.nonce,
            their_share: hello.share,
            transcript,
        })
    }

    /// The calling device, as its ticket describes it.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Answers with this side's Hello and its secret encrypted to the key in the
    /// initiator's ticket.
    pub fn respond(self, me: LocalPeer) -> Result<(ExpectKeyTransport, Vec<u8>), ChannelError> {
        let (share, public) = new_share();
        let shared = agree(share, self.their_share)?;
        let mut send = Hello {
            device: me.device.clone(),
            ticket: me.ticket.clone(),
            nonce: random(),
            share: public,
        }
        .encode()?;
        let responder_secret = random_secret();
        let transport =
            message::encode_key_transport(&encrypt_secret(&self.peer.key, &responder_secret)?)?;
        send.extend_from_slice(&transport);
        let mut transcript = self.transcript;
        transcript.add(&send);
        let state = ExpectKeyTransport {
            me,
            nonce: self.nonce,
            peer: self.peer,
            shared,
            responder_secret,
            transcript,
        };
        Ok((state, send))
    }
}

/// Waits for the initiator's key transport.
pub struct ExpectKeyTransport {
    me: LocalPeer,
    nonce: [u8; 32],
    peer: PeerInfo,
    shared: Secret,
    responder_secret: Secret,
    transcript: Transcript,
}

impl ExpectKeyTransport {
    /// Takes the initiator's secret (an RSA private-key operation: milliseconds) and
    /// derives the keys.
    pub fn handle(self, msg: &[u8]) -> Result<ExpectFinished, ChannelError> {
        let initiator_secret = decrypt_secret(&self.me.key, message::decode_key_transport(msg)?);
        let mut transcript = self.transcript;
        transcript.add(msg);
        let hash = transcript.hash();
        let keys = schedule::derive(
            &initiator_secret,
            &self.responder_secret,
            &self.shared,
            &hash,
        );
        log_secrets(
            self.me.key_log.as_deref(),
            &self.nonce,
            [&initiator_secret, &self.responder_secret, &self.shared],
            &keys,
        );
        Ok(ExpectFinished {
            peer: self.peer,
            keys,
            transcript,
        })
    }
}

/// Waits for the initiator's Finished.
pub struct ExpectFinished {
    peer: PeerInfo,
    keys: Schedule,
    transcript: Transcript,
}

impl ExpectFinished {
    /// Checks that the initiator derived the same keys from the same transcript, and
    /// answers with this side's Finished.
    pub fn handle(self, msg: &[u8]) -> Result<(Established, Vec<u8>), ChannelError> {
        let got = message::decode_finished(msg)?;
        let mut transcript = self.transcript;
        let want = schedule::finished_mac(&self.keys.i2r.finished, &transcript.hash());
        if !bool::from(got.ct_eq(&want)) {
            return Err(ChannelError::BadFinished);
        }
        transcript.add(msg);
        let finished = message::encode_finished(&schedule::finished_mac(
            &self.keys.r2i.finished,
            &transcript.hash(),
        ))?;
        let established = Established {
            peer: self.peer,
            sealer: Sealer::new(&self.keys.r2i, Direction::ResponderToInitiator),
            opener: Opener::new(&self.keys.i2r, Direction::InitiatorToResponder),
        };
        Ok((established, finished))
    }
}
