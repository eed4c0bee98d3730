//! Checking the other side's peer ticket in the handshake: signed by the cloud, a peer
//! ticket held by the device that claims it, naming this device with this device's key.

use super::ChannelError;
use crate::crypto::ticket::{KeySet, TicketError};
use crate::proto::TicketKind;
use crate::proto::claims::AUDIENCE_PEER;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::PublicKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};

/// Why a peer ticket was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    #[error("{0}")]
    Invalid(TicketError),
    #[error("not a peer ticket")]
    NotPeer,
    #[error("issued to another device than the one that shows it")]
    NotHolder,
    #[error("does not pair the holder with this device")]
    NotForMe,
    #[error("records another key for this device than its own")]
    NotMyKey,
    #[error("records a key for the holder that is not an RSA SPKI")]
    BadHolderKey,
    #[error("names a device the cloud has revoked since")]
    Revoked,
    #[error("names a folder the peer's user is no longer a member of (or that it unmapped)")]
    NotAMember,
}

/// What a checked ticket tells about the other device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its device id.
    pub device: String,
    /// The user who claimed it.
    pub user: String,
    /// The RSA key the cloud recorded for it; the handshake encrypts to this key.
    pub key: PublicKey,
    /// For devices paired through a Mesh Folder: the only folder they may exchange.
    pub folder: Option<String>,
    /// When the ticket expires (seconds since the epoch); the channel should not outlive it.
    pub expires: i64,
}

/// Decides whether `ticket`, shown by a peer claiming to be `claimed_device`, admits it.
pub trait PeerCheck {
    /// The peer's identity and key if the ticket admits it.
    fn check(&self, claimed_device: &str, ticket: &str) -> Result<PeerInfo, ChannelError>;
}

/// The real check: the ticket against the cloud's published keys, offline.
pub struct TicketCheck {
    keys: KeySet,
    me: String,
    my_spki: Vec<u8>,
    now: fn() -> i64,
}

impl TicketCheck {
    /// Checks tickets for device `me`, whose public key is `my_key`, at the system time.
    pub fn new(
        keys: KeySet,
        me: impl Into<String>,
        my_key: &PublicKey,
    ) -> Result<Self, ChannelError> {
        let my_spki = my_key
            .to_public_key_der()
            .map_err(|_| ChannelError::KeyTransport("encoding this device's public key"))?
            .into_vec();
        Ok(Self {
            keys,
            me: me.into(),
            my_spki,
            now: crate::proto::now_secs,
        })
    }

    /// The same check with another clock (seconds since the epoch), for tests.
    pub fn with_clock(mut self, now: fn() -> i64) -> Self {
        self.now = now;
        self
    }
}

impl PeerCheck for TicketCheck {
    fn check(&self, claimed_device: &str, ticket: &str) -> Result<PeerInfo, ChannelError> {
        let verified = self.keys.check(ticket, AUDIENCE_PEER, (self.now)())?;
        let claims = verified.claims();
        if claims.kind != TicketKind::Peer {
            return Err(TicketRefusal::NotPeer.into());
        }
        let grant = claims.peer.as_ref().ok_or(TicketRefusal::NotPeer)?;
        if claims.dev != claimed_device {
            return Err(TicketRefusal::NotHolder.into());
        }
        let other = grant
            .other(&self.me)
            .filter(|d| d.id == claimed_device)
            .ok_or(TicketRefusal::NotForMe)?;
        let mine = grant.device(&self.me).ok_or(TicketRefusal::NotForMe)?;
        match B64.decode(&mine.key) {
            Ok(der) if der == self.my_spki => {}
            _ => return Err(TicketRefusal::NotMyKey.into()),
        }
        let key = B64
            .decode(&other.key)
            .ok()
            .and_then(|der| PublicKey::from_public_key_der(&der).ok())
            .ok_or(TicketRefusal::BadHolderKey)?;
        Ok(PeerInfo {
            device: other.id.clone(),
            user: other.user.clone(),
            key,
            folder: grant.folder.clone(),
            expires: claims.exp,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Ticket fixtures shared with the handshake tests.
    use super::*;
    use crate::crypto::ticket::Signer;
    use crate::proto::Claims;
    use crate::proto::claims::{ISSUER, PeerDevice, PeerGrant};
    use rsa::PrivateKey;
    use std::sync::LazyLock;

    pub static CLOUD: LazyLock<PrivateKey> = LazyLock::new(crate::crypto::keys::generate);
    pub static ALICE: LazyLock<PrivateKey> = LazyLock::new(crate::crypto::keys::generate);
    pub static BOB: LazyLock<PrivateKey> = LazyLock::new(crate::crypto::keys::generate);
    pub static MALLORY: LazyLock<PrivateKey> = LazyLock::new(crate::crypto::keys::generate);

    pub const NOW: i64 = 1_000_000;
    pub fn now() -> i64 {
        NOW
    }

    pub fn spki(key: &PrivateKey) -> String {
        B64.encode(key.to_public_key().to_public_key_der().unwrap().as_bytes())
    }

    pub fn signer() -> Signer {
        Signer::new("cloud1", CLOUD.clone())
    }

    /// Claims of a peer ticket for `holder` pairing `a` (alice) and `b` (bob).
    pub fn claims(holder: &str) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "ann".into(),
            aud: AUDIENCE_PEER.into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 600,
            jti: format!("p-{holder}"),
            dev: holder.into(),
            kind: TicketKind::Peer,
            res: None,
            rights: vec![],
            epoch: None,
            peer: Some(PeerGrant {
                devices: [
                    PeerDevice {
                        id: "alice".into(),
                        user: "ann".into(),
                        key: spki(&ALICE),
                    },
                    PeerDevice {
                        id: "bob".into(),
                        user: "ann".into(),
                        key: spki(&BOB),
                    },
                ],
                folder: None,
            }),
        }
    }

    pub fn ticket(holder: &str) -> String {
        signer().sign(&claims(holder))
    }

    pub fn keyset() -> KeySet {
        let mut keys = KeySet::default();
        keys.insert("cloud1", CLOUD.to_public_key());
        keys
    }

    /// How device `me` (with key `key`) checks tickets.
    pub fn checker(me: &str, key: &PrivateKey) -> TicketCheck {
        TicketCheck::new(keyset(), me, &key.to_public_key())
            .unwrap()
            .with_clock(now)
    }

    fn refusal(r: Result<PeerInfo, ChannelError>) -> TicketRefusal {
        match r {
            Err(ChannelError::BadTicket(r)) => r,
            other => panic!("expected a ticket refusal, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_peer_ticket_and_reports_the_holder_and_its_key() {
        let info = checker("bob", &BOB)
            .check("alice", &ticket("alice"))
            .unwrap();
        assert_eq!(info.device, "alice");
        assert_eq!(info.user, "ann");
        assert_eq!(info.key, ALICE.to_public_key());
        assert_eq!(info.folder, None);
        assert_eq!(info.expires, NOW + 600);
    }

    #[test]
    fn refuses_a_ticket_from_an_unknown_signer() {
        let t = Signer::new("cloud1", MALLORY.clone()).sign(&claims("alice"));
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::Invalid(TicketError::BadSignature)
        );
        let t = Signer::new("other", CLOUD.clone()).sign(&claims("alice"));
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::Invalid(TicketError::UnknownKid)
        );
    }

    #[test]
    fn refuses_an_expired_ticket() {
        let mut c = claims("alice");
        c.exp = NOW;
        let t = signer().sign(&c);
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::Invalid(TicketError::Expired)
        );
    }

    #[test]
    fn refuses_a_ticket_for_the_cloud_audience() {
        let mut c = claims("alice");
        c.aud = crate::proto::claims::AUDIENCE_CLOUD.into();
        let t = signer().sign(&c);
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::Invalid(TicketError::WrongAudience)
        );
    }

    #[test]
    fn refuses_a_ticket_of_another_kind() {
        let mut c = claims("alice");
        c.kind = TicketKind::Identity;
        let t = signer().sign(&c);
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::NotPeer
        );
    }

    #[test]
    fn refuses_a_ticket_naming_other_devices() {
        let mut c = claims("alice");
        if let Some(g) = c.peer.as_mut() {
            g.devices[1].id = "carol".into();
        }
        let t = signer().sign(&c);
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::NotForMe
        );
        // A ticket pairing a device with itself names no other device.
        let mut c = claims("alice");
        if let Some(g) = c.peer.as_mut() {
            g.devices[1].id = "alice".into();
        }
        let t = signer().sign(&c);
        assert_eq!(
            refusal(checker("alice", &ALICE).check("alice", &t)),
            TicketRefusal::NotForMe
        );
    }

    #[test]
    fn refuses_a_ticket_shown_by_another_device_than_its_holder() {
        // Carol replays alice's ticket under her own name, and alice's under bob's.
        assert_eq!(
            refusal(checker("bob", &BOB).check("carol", &ticket("alice"))),
            TicketRefusal::NotHolder
        );
        assert_eq!(
            refusal(checker("alice", &ALICE).check("bob", &ticket("alice"))),
            TicketRefusal::NotHolder
        );
        // Bob's own ticket shown back to bob: the holder is bob, the other side is not him.
        assert_eq!(
            refusal(checker("bob", &BOB).check("bob", &ticket("bob"))),
            TicketRefusal::NotForMe
        );
    }

    #[test]
    fn refuses_a_ticket_recording_another_key_for_me() {
        assert_eq!(
            refusal(checker("bob", &MALLORY).check("alice", &ticket("alice"))),
            TicketRefusal::NotMyKey
        );
    }

    #[test]
    fn refuses_a_ticket_with_an_unreadable_holder_key() {
        let mut c = claims("alice");
        if let Some(g) = c.peer.as_mut() {
            g.devices[0].key = "AAAA".into();
        }
        let t = signer().sign(&c);
        assert_eq!(
            refusal(checker("bob", &BOB).check("alice", &t)),
            TicketRefusal::BadHolderKey
        );
    }

    #[test]
    fn reports_the_folder_of_a_folder_grant() {
        let mut c = claims("alice");
        if let Some(g) = c.peer.as_mut() {
            g.folder = Some("f1".into());
        }
        let t = signer().sign(&c);
        let info = checker("bob", &BOB).check("alice", &t).unwrap();
        assert_eq!(info.folder.as_deref(), Some("f1"));
    }
}
