//! What relays need of the cloud (DESIGN §5, §7a), and what devices need to use them: the
//! list of relays, relay tickets (the audience only relays accept, so a relay never holds
//! a ticket the cloud would take), and the standing of the device a relay ticket names,
//! which a relay asks for so that a revoked device loses the relay too.

use super::AppState;
use super::account::{new_claims, sign_one};
use super::auth::{Caller, require_identity};
use super::error::AppError;
use crate::crypto::ticket::{KeySet, TicketError};
use crate::proto::claims::{AUDIENCE_RELAY, ISSUER};
use crate::proto::{Claims, CloudInfo, Standing, StandingRequest, TicketKind, TicketResponse};
use crate::relay::{AskError, Standings};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;

/// `GET /.well-known/meshfs`: the relay this process runs, if any, then the others
/// recorded (those `meshfs cloud add-relay` added, and those other processes run).
pub async fn info(State(state): State<AppState>) -> Result<Json<CloudInfo>, AppError> {
    let own = state.relay.clone();
    let others = state.store.relays().await?.into_iter();
    let relays = own
        .iter()
        .cloned()
        .chain(others.filter(|r| own.as_ref() != Some(r)))
        .collect();
    Ok(Json(CloudInfo { relays }))
}

/// `POST /tickets/relay`: a ticket naming the caller's device, for relays only.
pub async fn ticket(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TicketResponse>, AppError> {
    require_identity(&caller)?;
    let c = &caller.claims;
    let mut claims = new_claims(&state, &c.sub, &c.dev, TicketKind::Relay, None);
    claims.aud = AUDIENCE_RELAY.into();
    Ok(Json(sign_one(&state, claims).await?))
}

/// `POST /relay/standing`: whether the device a relay ticket names may still use relays.
/// Needs no ticket of its own: the relay ticket it asks about is the proof, and the answer
/// tells nothing its holder does not know. The ticket's signature and audience are
/// checked, not its time window: a relay asks again about a device that listens past its
/// ticket's life, and the question is the device's standing, not the ticket's.
pub async fn standing(
    State(state): State<AppState>,
    body: Result<Json<StandingRequest>, JsonRejection>,
) -> Result<Json<Standing>, AppError> {
    let Json(req) = body?;
    let verify = |keys: &KeySet| keys.verify::<Claims>(&req.relay_ticket);
    let c = match verify(&state.keys.keyset()) {
        Err(TicketError::UnknownKid) if state.keys.refresh_for_unknown_kid().await => {
            verify(&state.keys.keyset())
        }
        other => other,
    }?;
    if c.iss != ISSUER || c.aud != AUDIENCE_RELAY {
        return Err(TicketError::WrongAudience.into());
    }
    if c.kind != TicketKind::Relay {
        return Err(AppError::Forbidden);
    }
    let active = state
        .store
        .device(&c.dev)
        .await?
        .is_some_and(|d| d.user == c.sub && !d.revoked);
    Ok(Json(Standing {
        device: c.dev.clone(),
        active,
    }))
}

/// The standing of devices for the relay a cloud process runs: read from its own store.
pub struct StoreStandings(pub super::Store);

#[async_trait::async_trait]
impl Standings for StoreStandings {
    async fn active(&self, _relay_ticket: &str, claims: &Claims) -> Result<bool, AskError> {
        let device = self
            .0
            .device(&claims.dev)
            .await
            .map_err(|e| AskError::Store(Box::new(e)))?;
        Ok(device.is_some_and(|d| d.user == claims.sub && !d.revoked))
    }
}
