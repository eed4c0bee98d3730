//! The claims a meshfs ticket carries (DESIGN §2): the registered JWT claims plus the
//! device, the kind of ticket and, for access tickets, a resource prefix and rights.

use serde::{Deserialize, Serialize};

/// The issuer every cloud ticket names.
pub const ISSUER: &str = "meshfs-cloud";
/// The audience of tickets shown to the cloud's services.
pub const AUDIENCE_CLOUD: &str = "meshfs";
/// The audience of peer tickets, shown by one device to another in the peer handshake.
pub const AUDIENCE_PEER: &str = "meshfs-peer";
/// The audience of relay tickets, shown only to relays: the cloud refuses them.
pub const AUDIENCE_RELAY: &str = "meshfs-relay";

/// What a ticket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketKind {
    /// This device of this user, from login or renewal.
    Identity,
    /// Rights on a subtree of the resource graph.
    Access,
    /// "These two devices may sync" (DESIGN §2), shown to the other device.
    Peer,
    /// This device of this user, shown to a relay (DESIGN §7a): worth nothing at the cloud.
    Relay,
}

impl TicketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Access => "access",
            Self::Peer => "peer",
            Self::Relay => "relay",
        }
    }
}

/// A verb an access ticket grants on its subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    Read,
    Write,
    Admin,
}

/// A user's standing on a Mesh Folder: its owner, or a member who writes or only reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Writer,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Writer => "writer",
            Self::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "writer" => Some(Self::Writer),
            "reader" => Some(Self::Reader),
            _ => None,
        }
    }

    /// The rights the role holds on its folder.
    pub fn rights(self) -> &'static [Right] {
        match self {
            Self::Owner => &[Right::Read, Right::Write, Right::Admin],
            Self::Writer => &[Right::Read, Right::Write],
            Self::Reader => &[Right::Read],
        }
    }
}

/// A ticket's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user.
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// The device the ticket was issued to.
    pub dev: String,
    pub kind: TicketKind,
    /// For access tickets: the resource URL prefix the rights hold on, e.g. `/folders/ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub res: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rights: Vec<Right>,
    /// For access tickets to a Mesh Folder: its membership epoch when the ticket was
    /// issued. The cloud refuses a ticket from before the folder's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// For peer tickets: the pair of devices and what they may exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerGrant>,
}

/// The body of a peer ticket. `dev` (the holder) is one of `devices`; the other is the
/// device it may show the ticket to. Each device is named with the public key the cloud
/// recorded for it, so a peer can check the handshake against it with no network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerGrant {
    pub devices: [PeerDevice; 2],
    /// When the devices are paired only through a Mesh Folder both have mapped: that
    /// folder, and only its blocks may be asked for. `None` when one user claims both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// One side of a peer grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDevice {
    pub id: String,
    pub user: String,
    /// The device's RSA public key, SPKI DER in unpadded base64url.
    pub key: String,
}

impl PeerGrant {
    /// The side of the grant that is not `me`, if `me` is one of the two.
    pub fn other(&self, me: &str) -> Option<&PeerDevice> {
        match &self.devices {
            [a, b] if a.id == me && b.id != me => Some(b),
            [a, b] if b.id == me && a.id != me => Some(a),
            _ => None,
        }
    }

    /// The side named `id`.
    pub fn device(&self, id: &str) -> Option<&PeerDevice> {
        self.devices.iter().find(|d| d.id == id)
    }
}

impl Claims {
    /// Whether this ticket grants `right` on the resource at `path`. Identity tickets grant
    /// nothing on folders; a prefix covers itself and what lies below it, never a sibling
    /// that only shares a string prefix (`/folders/ab` does not cover `/folders/abc`).
    pub fn grants(&self, path: &str, right: Right) -> bool {
        let Some(prefix) = self.res.as_deref() else {
            return false;
        };
        let covers = path == prefix
            || (path.starts_with(prefix)
                && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')));
        covers && (self.rights.contains(&right) || self.rights.contains(&Right::Admin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(res: &str, rights: &[Right]) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "ann".into(),
            aud: AUDIENCE_CLOUD.into(),
            iat: 0,
            nbf: 0,
            exp: 60,
            jti: "j".into(),
            dev: "d".into(),
            kind: TicketKind::Access,
            res: Some(res.into()),
            rights: rights.to_vec(),
            epoch: None,
            peer: None,
        }
    }

    #[test]
    fn prefix_covers_subtree_not_siblings() {
        let c = access("/folders/ab", &[Right::Read]);
        assert!(c.grants("/folders/ab", Right::Read));
        assert!(c.grants("/folders/ab/entries/x", Right::Read));
        assert!(!c.grants("/folders/abc", Right::Read));
        assert!(!c.grants("/folders", Right::Read));
    }

    #[test]
    fn read_grant_does_not_allow_write_but_admin_does() {
        assert!(!access("/folders/a", &[Right::Read]).grants("/folders/a", Right::Write));
        assert!(access("/folders/a", &[Right::Admin]).grants("/folders/a/x", Right::Write));
    }
}
