//! The claims a meshfs ticket carries (DESIGN §2): the registered JWT claims plus the
//! device, the kind of ticket and, for access tickets, a resource prefix and rights.

use serde::{Deserialize, Serialize};

/// The issuer every cloud ticket names.
pub const ISSUER: &str = "meshfs-cloud";
/// The audience of tickets shown to the cloud's services.
pub const AUDIENCE_CLOUD: &str = "meshfs";

/// What a ticket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketKind {
    /// This device of this user, from login or renewal.
    Identity,
    /// Rights on a subtree of the resource graph.
    Access,
}

/// A verb an access ticket grants on its subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    Read,
    Write,
    Admin,
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
