//! Access tickets already signed, handed out again while at least half their life is left:
//! a device that lists its folders or asks for a folder's ticket again gets the same ticket,
//! and the cloud signs (an RSA signature, milliseconds) only when something changed: the
//! rights, the folder's membership epoch, or the key that signs.

use crate::proto::{Claims, Right, TicketKind, TicketResponse};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// How many tickets are remembered (a few hundred bytes each).
const REMEMBERED: usize = 16_384;

/// What makes two access tickets interchangeable.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    dev: String,
    res: Option<String>,
    rights: Vec<Right>,
    epoch: Option<u64>,
    kid: String,
}

impl Grant {
    /// The grant of `claims` signed with key `kid`, if they are an access ticket's.
    pub fn of(claims: &Claims, kid: &str) -> Option<Self> {
        (claims.kind == TicketKind::Access).then(|| Self {
            dev: claims.dev.clone(),
            res: claims.res.clone(),
            rights: claims.rights.clone(),
            epoch: claims.epoch,
            kid: kid.to_owned(),
        })
    }
}

pub struct Issued {
    tickets: Mutex<LruCache<Grant, TicketResponse>>,
}

impl Default for Issued {
    fn default() -> Self {
        Self {
            tickets: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl Issued {
    /// A ticket for `grant` with at least `ttl / 2` seconds left at `now`.
    pub fn reuse(&self, grant: &Grant, now: i64, ttl: i64) -> Option<TicketResponse> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = tickets
            .get(grant)
            .filter(|t| t.expires_at - now >= ttl / 2)
            .cloned();
        if fresh.is_none() {
            tickets.pop(grant);
        }
        fresh
    }

    pub fn remember(&self, grant: Grant, ticket: &TicketResponse) {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        tickets.put(grant, ticket.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(epoch: u64) -> Claims {
        Claims {
            iss: "i".into(),
            sub: "ann".into(),
            aud: "a".into(),
            iat: 0,
            nbf: 0,
            exp: 100,
            jti: "j".into(),
            dev: "d".into(),
            kind: TicketKind::Access,
            res: Some("/folders/f".into()),
            rights: vec![Right::Read],
            epoch: Some(epoch),
            peer: None,
        }
    }

    #[test]
    fn a_ticket_is_reused_for_the_same_grant_while_half_its_life_is_left() {
        let issued = Issued::default();
        let grant = Grant::of(&claims(1), "k").unwrap();
        let t = TicketResponse {
            ticket: "t".into(),
            expires_at: 100,
        };
        issued.remember(grant.clone(), &t);
        assert_eq!(issued.reuse(&grant, 50, 100).unwrap().ticket, "t");
        assert!(
            issued.reuse(&grant, 51, 100).is_none(),
            "less than half left"
        );
        issued.remember(grant.clone(), &t);
        for other in [
            Grant::of(&claims(2), "k").unwrap(),
            Grant::of(&claims(1), "k2").unwrap(),
        ] {
            assert!(issued.reuse(&other, 0, 100).is_none());
        }
        let mut identity = claims(1);
        identity.kind = TicketKind::Identity;
        assert!(Grant::of(&identity, "k").is_none());
    }
}
