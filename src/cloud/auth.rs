//! Who is calling: the `Authorization: Bearer` extractor and the checks on what a ticket
//! grants. Verified tickets sit in an LRU keyed by the SHA-256 of the token, so a busy
//! client costs one RSA verification per ticket; the time window and the device (exists,
//! belongs to the ticket's user, not revoked) are checked against the database on every
//! request, so a revocation takes effect at once. On a folder's route the same query reads
//! the caller's membership of that folder, which [`require_folder`] then checks.

use super::AppState;
use super::error::AppError;
use super::store::Membership;
use crate::crypto::ticket::{KeySet, TicketError, VerifiedTicket};
use crate::proto::claims::AUDIENCE_CLOUD;
use crate::proto::{Claims, Entry, Folder, Right, TicketKind, now_ms, now_secs};
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use lru::LruCache;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Verified tickets kept in memory.
const TICKET_CACHE_ENTRIES: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// A device's `last_seen_ms` is written at most this often.
const LAST_SEEN_EVERY_MS: i64 = 60_000;

/// The rights of `wanted` that `held` covers, sorted and without repeats.
pub fn intersect(wanted: &[Right], held: &[Right]) -> Vec<Right> {
    let mut out: Vec<Right> = wanted
        .iter()
        .copied()
        .filter(|r| held.contains(r))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The server's memory of verified tickets and of when each device was last recorded.
pub struct TicketCache {
    verified: Mutex<LruCache<[u8; 32], VerifiedTicket>>,
    seen: Mutex<LruCache<String, i64>>,
}

impl Default for TicketCache {
    fn default() -> Self {
        Self {
            verified: Mutex::new(LruCache::new(TICKET_CACHE_ENTRIES)),
            seen: Mutex::new(LruCache::new(TICKET_CACHE_ENTRIES)),
        }
    }
}

impl TicketCache {
    /// Checks `token` at `now`: from the cache (time window only) or in full (then cached).
    pub fn verify(&self, keys: &KeySet, token: &str, now: i64) -> Result<Claims, AppError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|mut c| c.get(&key).cloned());
        let ticket = match cached {
            Some(t) => t,
            None => {
                let t = keys.check(token, AUDIENCE_CLOUD, now)?;
                if let Ok(mut c) = self.verified.lock() {
                    c.put(key, t.clone());
                }
                t
            }
        };
        if let Err(e) = ticket.still_valid(now) {
            if let Ok(mut c) = self.verified.lock() {
                c.pop(&key);
            }
            return Err(e.into());
        }
        Ok(ticket.claims().clone())
    }

    /// Whether `device`'s last-seen time is due for a write at `now_ms`; if so, notes it.
    fn seen_due(&self, device: &str, now_ms: i64) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        match seen.get(device) {
            Some(&last) if now_ms - last < LAST_SEEN_EVERY_MS => false,
            _ => {
                seen.put(device.to_owned(), now_ms);
                true
            }
        }
    }
}

/// A caller whose ticket verified and whose device is live. Handlers that take one cannot
/// run on an unchecked token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub claims: Claims,
    /// On a folder's route: the folder's id in the path and the membership read with the
    /// device (`None`: no such folder).
    read_with_device: Option<(String, Option<Membership>)>,
}

fn bearer(parts: &Parts) -> Result<&str, AppError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or(AppError::NoTicket)?;
    let value = value.to_str().map_err(|_| AppError::NoTicket)?;
    let (scheme, token) = value.split_once(' ').ok_or(AppError::NoTicket)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AppError::NoTicket);
    }
    Ok(token.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Ok(authenticate(parts, state, false).await?.0)
    }
}

/// The caller of a route that reads one entry (`{folder}` and `{entry}` in its path), with
/// that entry read in the same query as the caller's device (`None`: no such entry). The
/// handler must still check the caller's right to the folder before answering it.
pub struct EntryReader {
    pub caller: Caller,
    pub entry: Option<Entry>,
}

impl FromRequestParts<AppState> for EntryReader {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let (caller, entry) = authenticate(parts, state, true).await?;
        Ok(Self { caller, entry })
    }
}

/// Verifies the request's ticket and reads its device (and, on a folder's route, the
/// folder's membership and, if `with_entry`, the entry in the path) in one query.
async fn authenticate(
    parts: &mut Parts,
    state: &AppState,
    with_entry: bool,
) -> Result<(Caller, Option<Entry>), AppError> {
    let token = bearer(parts)?;
    let claims = match state
        .tickets
        .verify(&state.keys.keyset(), token, now_secs())
    {
        // Signed with a key another process started with before this one read it.
        Err(AppError::Ticket(TicketError::UnknownKid))
            if state.keys.refresh_for_unknown_kid().await =>
        {
            state
                .tickets
                .verify(&state.keys.keyset(), token, now_secs())?
        }
        other => other?,
    };
    let params = RawPathParams::from_request_parts(parts, state).await.ok();
    let param = |name: &str| {
        params.as_ref().and_then(|p| {
            p.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        })
    };
    let folder = param("folder");
    let entry = with_entry.then(|| param("entry")).flatten();
    let record = state
        .store
        .caller_record(
            &claims.dev,
            folder.as_deref(),
            &claims.sub,
            entry.as_deref(),
        )
        .await?
        .ok_or(AppError::UnknownDevice)?;
    if record.device_user != claims.sub {
        return Err(AppError::UnknownDevice);
    }
    if record.revoked {
        return Err(AppError::DeviceRevoked);
    }
    let now = now_ms();
    if state.tickets.seen_due(&claims.dev, now) {
        state.store.touch_device(&claims.dev, now).await?;
    }
    let caller = Caller {
        claims,
        read_with_device: folder.map(|f| (f, record.membership)),
    };
    Ok((caller, record.entry))
}

/// Requires an access ticket granting `right` on `path`.
pub fn require(caller: &Caller, path: &str, right: Right) -> Result<(), AppError> {
    if caller.claims.kind == TicketKind::Access && caller.claims.grants(path, right) {
        Ok(())
    } else {
        Err(AppError::Forbidden)
    }
}

/// Requires an access ticket granting `right` on `path` (within folder `folder`), and that
/// the caller's user holds that right on the folder **now**: a removed member gets 403, a
/// ticket from before the folder's membership epoch 401 (renew it), and the rights used
/// are at most the current role's. Answers the folder as it is now.
pub async fn require_folder(
    state: &AppState,
    caller: &Caller,
    folder: &str,
    path: &str,
    right: Right,
) -> Result<Folder, AppError> {
    require(caller, path, right)?;
    let membership = match &caller.read_with_device {
        Some((id, membership)) if id == folder => membership.clone(),
        _ => state.store.membership(folder, &caller.claims.sub).await?,
    };
    let (folder, role) = membership.ok_or(AppError::NotFound("folder"))?;
    let role = role.ok_or(AppError::NotAMember)?;
    if caller.claims.epoch.unwrap_or(0) < folder.epoch {
        return Err(AppError::MembershipChanged);
    }
    let held = role.rights();
    if !(held.contains(&right) || held.contains(&Right::Admin)) {
        return Err(AppError::Forbidden);
    }
    Ok(folder)
}

/// Requires an identity ticket (the device acting for its user), not an access ticket.
pub fn require_identity(caller: &Caller) -> Result<(), AppError> {
    if caller.claims.kind == TicketKind::Identity {
        Ok(())
    } else {
        Err(AppError::Forbidden)
    }
}

/// The caller must be `device` itself, of `user`, with its identity ticket.
pub fn require_self(caller: &Caller, user: &str, device: &str) -> Result<(), AppError> {
    require_identity(caller)?;
    require_user(caller, user, Right::Write)?;
    if caller.claims.dev == device {
        Ok(())
    } else {
        Err(AppError::Forbidden)
    }
}

/// Requires a ticket of `user` itself: its identity ticket, or its access ticket granting
/// `right` on `/users/{user}`.
pub fn require_user(caller: &Caller, user: &str, right: Right) -> Result<(), AppError> {
    let c = &caller.claims;
    let ok = c.sub == user
        && match c.kind {
            TicketKind::Identity => true,
            TicketKind::Access => c.grants(&format!("/users/{user}"), right),
            TicketKind::Peer | TicketKind::Relay => false,
        };
    if ok { Ok(()) } else { Err(AppError::Forbidden) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Role;

    #[test]
    fn granted_rights_are_the_intersection_of_wanted_and_held() {
        let held = Role::Writer.rights();
        assert_eq!(
            intersect(&[Right::Admin, Right::Read, Right::Read], held),
            vec![Right::Read]
        );
        assert!(intersect(&[Right::Write], Role::Reader.rights()).is_empty());
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in [Role::Owner, Role::Writer, Role::Reader] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn last_seen_is_written_at_most_once_a_minute() {
        let cache = TicketCache::default();
        assert!(cache.seen_due("d", 0));
        assert!(!cache.seen_due("d", LAST_SEEN_EVERY_MS - 1));
        assert!(cache.seen_due("d", LAST_SEEN_EVERY_MS));
    }
}
