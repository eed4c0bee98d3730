//! Sharing a folder between people (DESIGN §10). The owner invites a user with a role and a
//! share of the owner's quota; the invitee accepts or declines; the owner changes roles or
//! removes members, and a member may leave. An invitation is a node seen only by its
//! invitee (with their identity ticket) and the owner (with an admin access ticket).
//!
//! Anything that takes rights away bumps the folder's membership epoch (`store/members.rs`)
//! and wakes the change feeds, so a removed member's long poll ends refused and the other
//! members' devices hear of the new epoch at once.

use super::AppState;
use super::account::{grants, valid_user_name};
use super::auth::{Caller, require_folder, require_identity, require_user};
use super::error::AppError;
use crate::proto::{
    ErrorCode, Folder, FolderGrant, Invitation, Member, MemberUpdate, NewInvitation, Right, Role,
    TicketKind, now_ms,
};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

fn member_role(role: Role) -> Result<Role, AppError> {
    match role {
        Role::Owner => Err(AppError::invalid(
            ErrorCode::BadBody,
            "a member is a reader or a writer; a folder has one owner",
        )),
        r => Ok(r),
    }
}

/// The owner's standing on the folder, with an admin access ticket.
async fn as_owner(state: &AppState, caller: &Caller, folder: &str) -> Result<Folder, AppError> {
    require_folder(
        state,
        caller,
        folder,
        &format!("/folders/{folder}"),
        Right::Admin,
    )
    .await
}

/// Whether the caller is `user` speaking for themself with their identity ticket.
fn is_invitee(caller: &Caller, user: &str) -> bool {
    caller.claims.kind == TicketKind::Identity && caller.claims.sub == user
}

/// `POST /folders/{folder}/invitations` (owner): invites a user, or changes the invitation
/// that waits for them.
pub async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
    body: Result<Json<NewInvitation>, JsonRejection>,
) -> Result<(StatusCode, Json<Invitation>), AppError> {
    let on = as_owner(&state, &caller, &folder).await?;
    let Json(req) = body?;
    let role = member_role(req.role)?;
    if req.user == on.owner {
        return Err(AppError::conflict(
            ErrorCode::AlreadyMember,
            "you own this folder; invite someone else",
        ));
    }
    if !valid_user_name(&req.user) || state.store.usage(&req.user).await?.is_none() {
        return Err(AppError::NotFound("user"));
    }
    if state.store.role(&folder, &req.user).await?.is_some() {
        return Err(AppError::conflict(
            ErrorCode::AlreadyMember,
            format!(
                "{} is a member already; change their role with PUT /folders/{folder}/members/{}",
                req.user, req.user
            ),
        ));
    }
    state
        .store
        .invite(&folder, &req.user, role, req.max_bytes, now_ms())
        .await?;
    tracing::info!(%folder, user = %req.user, role = role.as_str(), "invited");
    let inv = state
        .store
        .invitation(&folder, &req.user)
        .await?
        .ok_or_else(|| AppError::internal("an invitation", "not found just after it was made"))?;
    Ok((StatusCode::CREATED, Json(inv)))
}

/// `GET /folders/{folder}/invitations` (owner): the invitations that wait for an answer.
pub async fn list_invitations(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
) -> Result<Json<Vec<Invitation>>, AppError> {
    as_owner(&state, &caller, &folder).await?;
    Ok(Json(state.store.invitations_to(&folder).await?))
}

/// `GET /folders/{folder}/invitations/{user}` (the invitee or the owner).
pub async fn get_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, user)): Path<(String, String)>,
) -> Result<Json<Invitation>, AppError> {
    if !is_invitee(&caller, &user) {
        as_owner(&state, &caller, &folder).await?;
    }
    let inv = state.store.invitation(&folder, &user).await?;
    Ok(Json(inv.ok_or(AppError::NotFound("invitation"))?))
}

/// `DELETE /folders/{folder}/invitations/{user}`: the owner withdraws it, or the invitee
/// declines it.
pub async fn drop_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, user)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    if !is_invitee(&caller, &user) {
        as_owner(&state, &caller, &folder).await?;
    }
    if !state.store.drop_invitation(&folder, &user).await? {
        return Err(AppError::NotFound("invitation"));
    }
    tracing::info!(%folder, %user, "invitation dropped");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /folders/{folder}/invitations/{user}/accept` (the invitee): makes them a member;
/// answers the folder with an access ticket, as a folder listing would.
pub async fn accept(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, user)): Path<(String, String)>,
) -> Result<Json<FolderGrant>, AppError> {
    require_identity(&caller)?;
    if caller.claims.sub != user {
        return Err(AppError::Forbidden);
    }
    let accepted = state
        .store
        .accept(&folder, &user)
        .await?
        .ok_or(AppError::NotFound("invitation"))?;
    tracing::info!(%folder, %user, role = accepted.role.as_str(), "invitation accepted");
    let grant = grants(&state, &caller, vec![(accepted.folder, accepted.role)])
        .await?
        .pop()
        .ok_or_else(|| AppError::internal("folder grant", "no grant made"))?;
    Ok(Json(grant))
}

/// `GET /users/{user}/invitations`: the invitations waiting for the user.
pub async fn invitations_for(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<Invitation>>, AppError> {
    require_user(&caller, &user, Right::Read)?;
    Ok(Json(state.store.invitations_for(&user).await?))
}

/// `GET /folders/{folder}/members` (any member): who has which role.
pub async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
) -> Result<Json<Vec<Member>>, AppError> {
    let path = format!("/folders/{folder}/members");
    let on = require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    Ok(Json(state.store.members(&on).await?))
}

/// `PUT /folders/{folder}/members/{user}` (owner): a member's new role and share.
pub async fn update_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, user)): Path<(String, String)>,
    body: Result<Json<MemberUpdate>, JsonRejection>,
) -> Result<Json<Member>, AppError> {
    let on = as_owner(&state, &caller, &folder).await?;
    let Json(req) = body?;
    let role = member_role(req.role)?;
    match state.store.role(&folder, &user).await? {
        Some(Role::Owner) => {
            return Err(AppError::invalid(
                ErrorCode::BadBody,
                "the owner's role does not change",
            ));
        }
        Some(_) => {}
        None => return Err(AppError::NotFound("member")),
    }
    state
        .store
        .set_member(&folder, &user, role, req.max_bytes)
        .await?;
    state.feed_moved(0).await;
    tracing::info!(%folder, %user, role = role.as_str(), "member's role set");
    let members = state.store.members(&on).await?;
    let member = members.into_iter().find(|m| m.user == user);
    Ok(Json(member.ok_or(AppError::NotFound("member"))?))
}

/// `DELETE /folders/{folder}/members/{user}`: the owner removes a member, or a member
/// leaves. It takes effect at once: their tickets for the folder are refused, their devices
/// unmap it, and the feeds tell every device.
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, user)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    let on = if caller.claims.sub == user {
        let path = format!("/folders/{folder}/members/{user}");
        require_folder(&state, &caller, &folder, &path, Right::Read).await?
    } else {
        as_owner(&state, &caller, &folder).await?
    };
    if on.owner == user {
        return Err(AppError::invalid(
            ErrorCode::BadBody,
            "the owner cannot leave their own folder",
        ));
    }
    if !state.store.remove_member(&folder, &user).await? {
        return Err(AppError::NotFound("member"));
    }
    state.feed_moved(0).await;
    tracing::info!(%folder, %user, by = %caller.claims.sub, "member removed");
    Ok(StatusCode::NO_CONTENT)
}
