//! The account service: users and their passwords (built-in IdP, Argon2id), devices and
//! their keys, and the decision who gets which ticket (login, renewal, access tickets).

use super::AppState;
use super::auth::{Caller, intersect, require_identity, require_user};
use super::error::AppError;
use super::issued::Grant;
use crate::crypto::{keys, ticket};
use crate::proto::ErrorCode;
use crate::proto::Role;
use crate::proto::claims::{AUDIENCE_CLOUD, ISSUER};
use crate::proto::{
    AUDIENCE_CLAIM, AUDIENCE_RENEW, AccessRequest, ChallengeClaims, ClaimChallenge, ClaimProof,
    Claims, Device, DeviceAssertion, Folder, FolderGrant, Jwks, LoginRequest, LoginResponse,
    RenewRequest, Right, TicketKind, TicketResponse, Usage, UserNode, now_ms, now_secs,
};
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use std::net::SocketAddr;
use std::sync::LazyLock;

/// Longest life of a device's renewal assertion, seconds.
const MAX_ASSERTION_SECS: i64 = 120;
/// Clock difference allowed on a renewal assertion's `iat`, seconds.
const ASSERTION_LEEWAY_SECS: i64 = 30;

/// Life of a claim challenge, seconds: long enough for a device to sign it.
const CHALLENGE_SECS: i64 = 120;

/// Hashes a password to an Argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

/// A hash checked when the user does not exist, so the answer takes as long either way.
static DUMMY_HASH: LazyLock<Option<String>> =
    LazyLock::new(|| hash_password("meshfs-no-such-user").ok());

fn password_matches(password: &str, phc: Option<&str>) -> bool {
    match phc {
        Some(phc) => Argon2::default()
            .verify_password(password.as_bytes(), phc)
            .is_ok(),
        None => {
            if let Some(dummy) = DUMMY_HASH.as_deref() {
                // The result is ignored: only the time spent matters here.
                let _ = Argon2::default().verify_password(password.as_bytes(), dummy);
            }
            false
        }
    }
}

/// A user name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit (it is a path
/// segment of `/users/{user}`).
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A display name for a device or folder: a folder's is a name in the mount root, so the
/// same rule as an entry's (`proto::valid_entry_name`).
pub fn valid_display_name(name: &str) -> bool {
    crate::proto::valid_entry_name(name)
}

/// The claims of a new ticket of `kind` for `user`'s device `dev`.
pub fn new_claims(
    state: &AppState,
    user: &str,
    dev: &str,
    kind: TicketKind,
    grant: Option<(String, Vec<Right>)>,
) -> Claims {
    let now = now_secs();
    let ttl = match kind {
        TicketKind::Identity => state.identity_ttl_secs,
        TicketKind::Access | TicketKind::Peer | TicketKind::Relay => state.access_ttl_secs,
    };
    let (res, rights) = match grant {
        Some((res, rights)) => (Some(res), rights),
        None => (None, Vec::new()),
    };
    Claims {
        iss: ISSUER.into(),
        sub: user.into(),
        aud: AUDIENCE_CLOUD.into(),
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti: uuid::Uuid::new_v4().to_string(),
        dev: dev.into(),
        kind,
        res,
        rights,
        epoch: None,
        peer: None,
    }
}

/// Signs tickets off the async workers (an RSA signature costs milliseconds); an access
/// ticket signed earlier for the same grant is handed out again while half its life is
/// left (`issued.rs`).
pub async fn sign(state: &AppState, claims: Vec<Claims>) -> Result<Vec<TicketResponse>, AppError> {
    let signer = state.keys.signer();
    let now = now_secs();
    let grants: Vec<Option<Grant>> = claims.iter().map(|c| Grant::of(c, signer.kid())).collect();
    let mut tickets: Vec<Option<TicketResponse>> = grants
        .iter()
        .map(|g| {
            g.as_ref()
                .and_then(|g| state.issued.reuse(g, now, state.access_ttl_secs))
        })
        .collect();
    let to_sign: Vec<(usize, Claims)> = claims
        .into_iter()
        .enumerate()
        .filter(|(i, _)| tickets[*i].is_none())
        .collect();
    if !to_sign.is_empty() {
        let signed = tokio::task::spawn_blocking(move || {
            to_sign
                .into_iter()
                .map(|(i, c)| {
                    let t = TicketResponse {
                        ticket: signer.sign(&c),
                        expires_at: c.exp,
                    };
                    (i, t, c.kind)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| AppError::internal("signing tickets", e))?;
        for (i, t, kind) in signed {
            state.metrics.ticket_signed(kind);
            if let Some(g) = grants[i].clone() {
                state.issued.remember(g, &t);
            }
            tickets[i] = Some(t);
        }
    }
    Ok(tickets.into_iter().flatten().collect())
}

pub(crate) async fn sign_one(state: &AppState, claims: Claims) -> Result<TicketResponse, AppError> {
    sign(state, vec![claims])
        .await?
        .pop()
        .ok_or_else(|| AppError::internal("signing tickets", "no ticket signed"))
}

/// Folder grants with one fresh access ticket each, for `caller`'s device.
pub async fn grants(
    state: &AppState,
    caller: &Caller,
    folders: Vec<(Folder, Role)>,
) -> Result<Vec<FolderGrant>, AppError> {
    let claims = folders
        .iter()
        .map(|(f, role)| {
            let grant = (format!("/folders/{}", f.id), role.rights().to_vec());
            let mut claims = new_claims(
                state,
                &caller.claims.sub,
                &caller.claims.dev,
                TicketKind::Access,
                Some(grant),
            );
            claims.epoch = Some(f.epoch);
            claims
        })
        .collect();
    let tickets = sign(state, claims).await?;
    Ok(folders
        .into_iter()
        .zip(tickets)
        .map(|((folder, role), ticket)| FolderGrant {
            folder,
            rights: role.rights().to_vec(),
            ticket,
        })
        .collect())
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(state): State<AppState>) -> Json<Jwks> {
    Json(state.keys.jwks())
}

/// `POST /login/challenge`: a fresh nonce signed by the cloud, which a device claiming
/// itself signs with its own key. Any cloud process that knows the keys can check it, so
/// nothing is stored.
pub async fn challenge(State(state): State<AppState>) -> Result<Json<ClaimChallenge>, AppError> {
    let claims = ChallengeClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE_CLAIM.into(),
        exp: now_secs() + CHALLENGE_SECS,
        nonce: uuid::Uuid::new_v4().to_string(),
    };
    let signer = state.keys.signer();
    let expires_at = claims.exp;
    let challenge = tokio::task::spawn_blocking(move || signer.sign(&claims))
        .await
        .map_err(|e| AppError::internal("signing a challenge", e))?;
    Ok(Json(ClaimChallenge {
        challenge,
        expires_at,
    }))
}

/// Whether `req` proves that its device holds the private half of `key`: a challenge of
/// this cloud's, still fresh at `now`, signed with `key` for this user and device name.
fn proof_ok(keys: &ticket::KeySet, req: &LoginRequest, key: &rsa::PublicKey, now: i64) -> bool {
    let Ok(c) = keys.verify::<ChallengeClaims>(&req.challenge) else {
        return false;
    };
    if c.iss != ISSUER || c.aud != AUDIENCE_CLAIM || now >= c.exp {
        return false;
    }
    let Ok(proof) = ticket::verify_with_key::<ClaimProof>(&req.proof, key) else {
        return false;
    };
    proof
        == ClaimProof {
            aud: AUDIENCE_CLAIM.into(),
            challenge: req.challenge.clone(),
            user: req.user.clone(),
            device_name: req.device_name.clone(),
        }
}

/// `POST /login`: checks the password, claims the device, returns an identity ticket.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<LoginResponse>, AppError> {
    let Json(req) = body?;
    let throttle = &state.logins;
    let refused = throttle
        .retry_after(&state.store, &req.user, from.ip(), now_ms())
        .await?;
    if let Some(retry_after) = refused {
        return Err(AppError::TooManyLogins { retry_after });
    }
    let phc = if valid_user_name(&req.user) {
        state.store.password_hash(&req.user).await?
    } else {
        None
    };
    let ok = {
        let _turn = throttle
            .turn()
            .await
            .map_err(|retry_after| AppError::TooManyLogins { retry_after })?;
        let password = req.password.clone();
        tokio::task::spawn_blocking(move || password_matches(&password, phc.as_deref()))
            .await
            .map_err(|e| AppError::internal("checking a password", e))?
    };
    if !ok {
        throttle
            .failed(&state.store, &req.user, from.ip(), now_ms())
            .await?;
        state.metrics.login_refused();
        return Err(AppError::BadCredentials);
    }
    if !valid_display_name(&req.device_name) {
        return Err(AppError::invalid(
            ErrorCode::BadName,
            "a device name is 1 to 255 bytes without '/' or control characters, and not \".\" or \"..\"",
        ));
    }
    let key = keys::parse_public_pem(&req.device_key).map_err(|_| {
        AppError::invalid(
            ErrorCode::BadKey,
            "device_key must be the device's RSA public key as SPKI PEM",
        )
    })?;
    // Kept in one spelling, so a key is found again whatever PEM it came in.
    let public_key =
        keys::public_pem(&key).map_err(|e| AppError::internal("encoding a device key", e))?;
    if state.store.key_revoked(&public_key).await? {
        return Err(AppError::conflict(
            ErrorCode::BadKey,
            "this key belongs to a revoked device; log in with a new key (`meshfs login` makes one)",
        ));
    }
    if !proof_ok(&state.keys.keyset(), &req, &key, now_secs()) {
        return Err(AppError::BadProof);
    }
    let now = now_ms();
    let device = Device {
        id: uuid::Uuid::new_v4().to_string(),
        user: req.user.clone(),
        name: req.device_name,
        public_key,
        created_ms: now,
        last_seen_ms: now,
        revoked: false,
        addrs: Vec::new(),
        folders: Vec::new(),
    };
    state.store.insert_device(&device).await?;
    tracing::info!(user = %device.user, device = %device.id, "device claimed");
    let identity = sign_one(
        &state,
        new_claims(&state, &device.user, &device.id, TicketKind::Identity, None),
    )
    .await?;
    Ok(Json(LoginResponse {
        user: device.user,
        device_id: device.id,
        identity,
    }))
}

/// Checks a renewal assertion's claims against the device and the time `now`.
fn assertion_ok(a: &DeviceAssertion, device_id: &str, now: i64) -> bool {
    a.iss == device_id
        && a.aud == AUDIENCE_RENEW
        && a.exp > a.iat
        && a.exp - a.iat <= MAX_ASSERTION_SECS
        && now >= a.iat - ASSERTION_LEEWAY_SECS
        && now < a.exp
}

/// `POST /tickets/identity`: a new identity ticket for an assertion signed by the device.
pub async fn renew(
    State(state): State<AppState>,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> Result<Json<TicketResponse>, AppError> {
    let Json(req) = body?;
    let device = state
        .store
        .device(&req.device_id)
        .await?
        .ok_or(AppError::BadAssertion)?;
    if device.revoked {
        return Err(AppError::DeviceRevoked);
    }
    let key = keys::parse_public_pem(&device.public_key)
        .map_err(|e| AppError::internal("a stored device key", e))?;
    let assertion: DeviceAssertion =
        ticket::verify_with_key(&req.assertion, &key).map_err(|_| AppError::BadAssertion)?;
    if !assertion_ok(&assertion, &device.id, now_secs()) {
        return Err(AppError::BadAssertion);
    }
    let claims = new_claims(&state, &device.user, &device.id, TicketKind::Identity, None);
    Ok(Json(sign_one(&state, claims).await?))
}

/// `POST /tickets/access`: rights on a folder or on the caller's user node, at most those
/// the user holds there.
pub async fn access(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<AccessRequest>, JsonRejection>,
) -> Result<Json<TicketResponse>, AppError> {
    require_identity(&caller)?;
    let Json(req) = body?;
    let user = &caller.claims.sub;
    let (held, epoch): (&[Right], _) = match req.resource.strip_prefix("/folders/") {
        Some(id) if !id.contains('/') => match state.store.membership(id, user).await? {
            Some((folder, Some(role))) => (role.rights(), Some(folder.epoch)),
            _ => (&[], None),
        },
        Some(_) => (&[], None),
        None if req.resource.strip_prefix("/users/") == Some(user.as_str()) => {
            (Role::Owner.rights(), None)
        }
        None => (&[], None),
    };
    let rights = intersect(&req.rights, held);
    if rights.is_empty() {
        return Err(AppError::Forbidden);
    }
    let mut claims = new_claims(
        &state,
        user,
        &caller.claims.dev,
        TicketKind::Access,
        Some((req.resource, rights)),
    );
    claims.epoch = epoch;
    Ok(Json(sign_one(&state, claims).await?))
}

/// `GET /users/{user}`.
pub async fn user_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<UserNode>, AppError> {
    require_user(&caller, &user, Right::Read)?;
    let devices = state.store.devices_of(&user).await?;
    let folders = state.store.folders_of(&user).await?;
    Ok(Json(UserNode {
        devices: devices
            .iter()
            .map(|d| format!("/users/{user}/devices/{}", d.id))
            .collect(),
        folders: folders
            .iter()
            .map(|(f, _)| format!("/folders/{}", f.id))
            .collect(),
        name: user,
    }))
}

/// `GET /users/{user}/devices`.
pub async fn devices(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<Device>>, AppError> {
    require_user(&caller, &user, Right::Read)?;
    Ok(Json(state.store.devices_of(&user).await?))
}

/// `DELETE /users/{user}/devices/{device}`: revokes the device; its tickets stop working
/// with the next request, since every request checks revocation.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<Device>, AppError> {
    require_user(&caller, &user, Right::Admin)?;
    let device = state
        .store
        .revoke_device(&user, &device)
        .await?
        .ok_or(AppError::NotFound("device"))?;
    tracing::info!(%user, device = %device.id, "device revoked");
    Ok(Json(device))
}

/// `GET /users/{user}/folders`: the folders the user owns or shares, a ticket for each.
pub async fn folders(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<FolderGrant>>, AppError> {
    require_user(&caller, &user, Right::Read)?;
    let folders = state.store.folders_of(&user).await?;
    Ok(Json(grants(&state, &caller, folders).await?))
}

/// `GET /users/{user}/usage`.
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Usage>, AppError> {
    require_user(&caller, &user, Right::Read)?;
    let u = state
        .store
        .usage(&user)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    Ok(Json(Usage {
        bytes_stored: u.stored,
        quota: u.quota,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assertion(iat: i64, exp: i64) -> DeviceAssertion {
        DeviceAssertion {
            iss: "d1".into(),
            aud: AUDIENCE_RENEW.into(),
            iat,
            exp,
            jti: "j".into(),
        }
    }

    #[test]
    fn renewal_assertion_must_be_short_lived_current_and_for_this_device() {
        assert!(assertion_ok(&assertion(1000, 1060), "d1", 1001));
        assert!(!assertion_ok(&assertion(1000, 1060), "d2", 1001));
        assert!(
            !assertion_ok(&assertion(1000, 1121), "d1", 1001),
            "lives too long"
        );
        assert!(!assertion_ok(&assertion(1000, 1060), "d1", 1060), "expired");
        assert!(
            !assertion_ok(&assertion(1000, 1060), "d1", 969),
            "from the future"
        );
        let mut a = assertion(1000, 1060);
        a.aud = AUDIENCE_CLOUD.into();
        assert!(!assertion_ok(&a, "d1", 1001));
    }

    #[test]
    fn user_names_are_safe_path_segments() {
        assert!(valid_user_name("ann"));
        assert!(valid_user_name("a.b-c_9"));
        for bad in ["", "Ann", "a/b", ".ann", "-x", &"a".repeat(65)] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn password_check_accepts_only_the_hashed_password() {
        let phc = hash_password("pw").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(password_matches("pw", Some(&phc)));
        assert!(!password_matches("pW", Some(&phc)));
        assert!(!password_matches("pw", None));
    }
}
