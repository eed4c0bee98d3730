//! What devices need to reach each other (DESIGN §2, §5): where each one listens, which
//! folders each has mapped, and peer tickets, which the cloud signs only for a pair that
//! one user claims, or that shares a Mesh Folder mapped on both.

use super::AppState;
use super::account::{new_claims, sign_one};
use super::auth::{Caller, require_folder, require_identity, require_self, require_user};
use super::error::AppError;
use crate::crypto::keys;
use crate::proto::ErrorCode;
use crate::proto::claims::{AUDIENCE_PEER, PeerDevice, PeerGrant};
use crate::proto::{Device, MAX_ADDRS, PeerRequest, Presence, Right, TicketKind, TicketResponse};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use std::net::{IpAddr, SocketAddr};

/// `PUT /users/{user}/devices/{device}/presence`: the device says where it listens.
pub async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, device)): Path<(String, String)>,
    body: Result<Json<Presence>, JsonRejection>,
) -> Result<Json<Device>, AppError> {
    require_self(&caller, &user, &device)?;
    let Json(p) = body?;
    if p.addrs.len() > MAX_ADDRS {
        return Err(AppError::invalid(
            ErrorCode::BadAddrs,
            format!("give at most {MAX_ADDRS} addresses"),
        ));
    }
    if let Some(bad) = p
        .addrs
        .iter()
        .find(|a| !dialable(a, state.allow_local_peers))
    {
        return Err(AppError::invalid(
            ErrorCode::BadAddrs,
            format!(
                "{bad:?} is not an ip:port peers could dial: it needs a port and a unicast IP, \
                 not loopback or link-local unless the cloud runs with --allow-local-peers"
            ),
        ));
    }
    state.store.set_addrs(&device, &p.addrs).await?;
    device_node(&state, &device).await
}

/// Whether other devices could dial `addr`: an `ip:port` with a port, and an IP that
/// names one host (not 0.0.0.0, a broadcast or a multicast group), so that a device
/// cannot point its peers at a whole network; nor, unless `allow_local`, one that means
/// the dialer itself or its own link (loopback, link-local), where a device could aim
/// its peers at their own services.
fn dialable(addr: &str, allow_local: bool) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let (one_host, local) = match addr.ip().to_canonical() {
        IpAddr::V4(ip) => (
            !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast()),
            ip.is_loopback() || ip.is_link_local(),
        ),
        IpAddr::V6(ip) => (
            !(ip.is_unspecified() || ip.is_multicast()),
            ip.is_loopback() || ip.is_unicast_link_local(),
        ),
    };
    addr.port() != 0 && one_host && (allow_local || !local)
}

async fn device_node(state: &AppState, device: &str) -> Result<Json<Device>, AppError> {
    let d = state
        .store
        .device_node(device)
        .await?
        .ok_or(AppError::NotFound("device"))?;
    Ok(Json(d))
}

/// `PUT /users/{user}/devices/{device}/folders/{folder}`: maps a folder on the device.
pub async fn map(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, device, folder)): Path<(String, String, String)>,
) -> Result<Json<Device>, AppError> {
    set_mapped(&state, &caller, &user, &device, &folder, true).await
}

/// `DELETE /users/{user}/devices/{device}/folders/{folder}`: unmaps it.
pub async fn unmap(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, device, folder)): Path<(String, String, String)>,
) -> Result<Json<Device>, AppError> {
    set_mapped(&state, &caller, &user, &device, &folder, false).await
}

async fn set_mapped(
    state: &AppState,
    caller: &Caller,
    user: &str,
    device: &str,
    folder: &str,
    on: bool,
) -> Result<Json<Device>, AppError> {
    require_user(caller, user, Right::Write)?;
    let d = state
        .store
        .device(device)
        .await?
        .filter(|d| d.user == user)
        .ok_or(AppError::NotFound("device"))?;
    if d.revoked {
        return Err(AppError::DeviceRevoked);
    }
    if on && state.store.role(folder, user).await?.is_none() {
        return Err(AppError::NotFound("folder"));
    }
    state.store.set_mapped(device, folder, on).await?;
    device_node(state, device).await
}

/// `GET /folders/{folder}/devices`: the devices, of any member, that have the folder
/// mapped — where a member's device may ask for the folder's content. Other users'
/// devices show only what that needs: no name, no other folders, no last-seen time.
pub async fn folder_devices(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
) -> Result<Json<Vec<Device>>, AppError> {
    require_folder(
        &state,
        &caller,
        &folder,
        &format!("/folders/{folder}"),
        Right::Read,
    )
    .await?;
    let mut devices = state.store.devices_mapping(&folder).await?;
    for d in devices.iter_mut().filter(|d| d.user != caller.claims.sub) {
        d.name = String::new();
        d.created_ms = 0;
        d.last_seen_ms = 0;
        d.folders = vec![folder.clone()];
    }
    Ok(Json(devices))
}

/// `POST /tickets/peer`: a ticket naming the caller's device and `device`, with both keys.
pub async fn ticket(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<PeerRequest>, JsonRejection>,
) -> Result<Json<TicketResponse>, AppError> {
    require_identity(&caller)?;
    let Json(req) = body?;
    let me = state
        .store
        .device(&caller.claims.dev)
        .await?
        .ok_or(AppError::UnknownDevice)?;
    let other = state
        .store
        .device(&req.device)
        .await?
        .filter(|d| !d.revoked && d.id != me.id)
        .ok_or(AppError::NotFound("device"))?;
    let folder = match req.folder {
        None if other.user == me.user => None,
        None => return Err(AppError::Forbidden),
        Some(folder) => {
            let both_members = state.store.role(&folder, &me.user).await?.is_some()
                && state.store.role(&folder, &other.user).await?.is_some();
            if !both_members || !state.store.both_mapped(&me.id, &other.id, &folder).await? {
                return Err(AppError::Forbidden);
            }
            Some(folder)
        }
    };
    let side = |d: &Device| -> Result<PeerDevice, AppError> {
        let key = keys::parse_public_pem(&d.public_key)
            .and_then(|k| keys::spki_b64(&k))
            .map_err(|e| AppError::internal("a recorded device key", e))?;
        Ok(PeerDevice {
            id: d.id.clone(),
            user: d.user.clone(),
            key,
        })
    };
    let mut claims = new_claims(&state, &me.user, &me.id, TicketKind::Peer, None);
    claims.aud = AUDIENCE_PEER.into();
    claims.peer = Some(PeerGrant {
        devices: [side(&me)?, side(&other)?],
        folder,
    });
    Ok(Json(sign_one(&state, claims).await?))
}

#[cfg(test)]
mod tests {
    use super::dialable;

    #[test]
    fn an_address_names_one_host_with_a_port() {
        for ok in ["192.0.2.7:4000", "[2001:db8::7]:4000"] {
            assert!(dialable(ok, false), "{ok}");
        }
        for bad in [
            "192.0.2.7",
            "192.0.2.7:0",
            "0.0.0.0:1",
            "224.0.0.1:1",
            "[::]:1",
        ] {
            assert!(!dialable(bad, true), "{bad}");
        }
    }

    #[test]
    fn loopback_and_link_local_only_where_the_cloud_allows_them() {
        for local in [
            "127.0.0.1:4000",
            "[::1]:4000",
            "[::ffff:127.0.0.1]:4000",
            "169.254.169.254:80",
            "[fe80::1]:4000",
        ] {
            assert!(!dialable(local, false), "{local}");
            assert!(dialable(local, true), "{local}");
        }
    }
}
