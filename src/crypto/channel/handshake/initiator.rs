//! The initiator's states: it opens the connection and names the device it expects.

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
use x25519_dalek::EphemeralSecret;

/// The start of the initiator's side.
pub struct Initiator;

impl Initiator {
    /// Begins a handshake with device `expect`; returns the first state and this side's
    /// Hello to send.
    pub fn start(me: LocalPeer, expect: &str) -> Result<(ExpectHello, Vec<u8>), ChannelError> {
        let (share, public) = new_share();
        let nonce = random();
        let hello = Hello {
            device: me.device.clone(),
            ticket: me.ticket.clone(),
            nonce,
            share: public,
        }
        .encode()?;
        let mut transcript = Transcript::new();
        transcript.add(&hello);
        let state = ExpectHello {
            me,
            expect: expect.to_owned(),
            nonce,
            share,
            transcript,
        };
        Ok((state, hello))
    }
}

/// Waits for the responder's Hello.
pub struct ExpectHello {
    me: LocalPeer,
    expect: String,
    /// This side's Hello nonce, which names the session in a key log.
    nonce: [u8; 32],
    share: EphemeralSecret,
    transcript: Transcript,
}

impl ExpectHello {
    /// Checks that the responder is the expected device and that its ticket admits it.
    pub fn handle(
        self,
        msg: &[u8],
        check: &dyn PeerCheck,
    ) -> Result<ExpectKeyTransport, ChannelError> {
        let hello = Hello::decode(msg)?;
        if hello.device != self.expect {
            return Err(ChannelError::WrongPeer {
                expected: self.expect,
                found: hello.device,
            });
        }
        let peer = check.check(&hello.device, &hello.ticket)?;
        let shared = agree(self.share, hello.share)?;
        let mut transcript = self.transcript;
        transcript.add(msg);
        Ok(ExpectKeyTransport {
            me: self.me,
            nonce: self.nonce,
            peer,
            shared,
            transcript,
        })
    }
}

/// Waits for the responder's key transport.
pub struct ExpectKeyTransport {
    me: LocalPeer,
    nonce: [u8; 32],
    peer: PeerInfo,
    shared: Secret,
    transcript: Transcript,
}

impl ExpectKeyTransport {
    /// Takes the responder's secret (an RSA private-key operation: milliseconds), sends
    /// this side's secret to the key in the responder's ticket, and this side's Finished.
    pub fn handle(self, msg: &[u8]) -> Result<(ExpectFinished, Vec<u8>), ChannelError> {
        let responder_secret = decrypt_secret(&self.me.key, message::decode_key_transport(msg)?);
        let mut transcript = self.transcript;
        transcript.add(msg);

        let initiator_secret = random_secret();
        let mut send =
            message::encode_key_transport(&encrypt_secret(&self.peer.key, &initiator_secret)?)?;
        transcript.add(&send);
        let hash = transcript.hash();
        let keys = schedule::derive(&initiator_secret, &responder_secret, &self.shared, &hash);
        log_secrets(
            self.me.key_log.as_deref(),
            &self.nonce,
            [&initiator_secret, &responder_secret, &self.shared],
            &keys,
        );

        let finished =
            message::encode_finished(&schedule::finished_mac(&keys.i2r.finished, &hash))?;
        transcript.add(&finished);
        send.extend_from_slice(&finished);
        let state = ExpectFinished {
            peer: self.peer,
            keys,
            transcript,
        };
        Ok((state, send))
    }
}

/// Waits for the responder's Finished.
pub struct ExpectFinished {
    peer: PeerInfo,
    keys: Schedule,
    transcript: Transcript,
}

impl ExpectFinished {
    /// Checks that the responder derived the same keys from the same transcript.
    pub fn handle(self, msg: &[u8]) -> Result<Established, ChannelError> {
        let got = message::decode_finished(msg)?;
        let want = schedule::finished_mac(&self.keys.r2i.finished, &self.transcript.hash());
        if !bool::from(got.ct_eq(&want)) {
            return Err(ChannelError::BadFinished);
        }
        Ok(Established {
            peer: self.peer,
            sealer: Sealer::new(&self.keys.i2r, Direction::InitiatorToResponder),
            opener: Opener::new(&self.keys.r2i, Direction::ResponderToInitiator),
        })
    }
}
