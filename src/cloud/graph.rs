//! The mesh service's resource graph: folders, their entries (create, update, delete under
//! ETag conditions, with the tree's rules) and the change feed with long-poll.

use super::AppState;
use super::account::{grants, valid_display_name};
use super::auth::{Caller, EntryReader, require_folder, require_identity, require_self};
use super::error::AppError;
use super::store::Change;
use crate::proto::ErrorCode;
use crate::proto::Role;
use crate::proto::{
    BLOCK_SIZE, BlockHash, ChangeBatch, Entry, EntryKind, EntryList, EntryPut, FileVersion, Folder,
    FolderGrant, FolderPatch, JournalMark, NewFolder, Restore, Right, Step, StepRefusal,
    StepResults, Steps, now_ms,
};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;

/// Most entries one change batch holds.
const FEED_LIMIT: u32 = 1000;
/// Longest a change request waits for a change.
const MAX_WAIT_SECS: u64 = 30;
/// Deepest directory chain walked when checking a move for a cycle.
const MAX_DEPTH: usize = 4096;

/// What a write requires of the entry's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    /// `If-None-Match: *`: the id must not exist, not even as a tombstone.
    Create,
    /// `If-Match: "<version>"`: the entry must be at this version.
    Version(u64),
}

fn condition(headers: &HeaderMap) -> Result<Condition, AppError> {
    if let Some(v) = headers.get(IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Condition::Create),
            _ => Err(AppError::invalid(
                ErrorCode::BadPrecondition,
                "If-None-Match must be `*`",
            )),
        };
    }
    let Some(v) = headers.get(IF_MATCH) else {
        return Err(AppError::PreconditionRequired);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().strip_prefix('"')?.strip_suffix('"')?.parse().ok())
        .map(Condition::Version)
        .ok_or_else(|| {
            AppError::invalid(
                ErrorCode::BadPrecondition,
                "If-Match must be a quoted version, e.g. \"42\"",
            )
        })
}

fn etag(version: u64) -> Result<HeaderValue, AppError> {
    HeaderValue::from_str(&format!("\"{version}\"")).map_err(|e| AppError::internal("etag", e))
}

fn with_etag(status: StatusCode, entry: Entry) -> Result<Response, AppError> {
    let tag = etag(entry.version)?;
    Ok((status, [(ETAG, tag)], Json(entry)).into_response())
}

/// An entry name (`proto::valid_entry_name`).
fn check_name(name: &str) -> Result<(), AppError> {
    if !crate::proto::valid_entry_name(name) {
        return Err(AppError::invalid(
            ErrorCode::BadName,
            "an entry name is 1 to 255 bytes, without '/' or control characters, and not \".\" or \"..\"",
        ));
    }
    Ok(())
}

/// An entry id (chosen by the client): 1 to 128 of `A-Z a-z 0-9 - _`.
fn check_id(id: &str) -> Result<(), AppError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            ErrorCode::BadId,
            "an entry id is 1 to 128 of A-Z a-z 0-9 - _ (a UUID fits)",
        ))
    }
}

/// The content rules of a body, apart from the tree: a file's size is the sum of its blocks,
/// each at most a block long; a directory has no content; a symlink has a target.
fn check_content(put: &EntryPut) -> Result<(), AppError> {
    match put.kind {
        EntryKind::File => {
            if put
                .manifest
                .iter()
                .any(|b| b.len == 0 || u64::from(b.len) > BLOCK_SIZE)
            {
                return Err(AppError::invalid(
                    ErrorCode::BadManifest,
                    format!("every block of a manifest holds 1 to {BLOCK_SIZE} bytes"),
                ));
            }
            let sum: u64 = put.manifest.iter().map(|b| u64::from(b.len)).sum();
            if sum != put.size {
                return Err(AppError::invalid(
                    ErrorCode::SizeMismatch,
                    format!(
                        "size is {} but the manifest's blocks hold {sum} bytes",
                        put.size
                    ),
                ));
            }
        }
        EntryKind::Dir => {
            if !put.manifest.is_empty() || put.target.is_some() {
                return Err(AppError::invalid(
                    ErrorCode::BadManifest,
                    "a directory has no manifest or target",
                ));
            }
        }
        EntryKind::Symlink => {
            if put.target.as_deref().is_none_or(str::is_empty) || !put.manifest.is_empty() {
                return Err(AppError::invalid(
                    ErrorCode::BadTarget,
                    "a symlink needs a target and no manifest",
                ));
            }
        }
    }
    if i64::try_from(put.size).is_err() {
        return Err(AppError::invalid(
            ErrorCode::SizeMismatch,
            "size is too large",
        ));
    }
    Ok(())
}

/// Starts the change a write to `folder` makes, checking in its transaction that the
/// caller may still write there: a removal or a new role committed since the request's
/// `require_folder` is seen, and the write refused.
async fn begin_write(state: &AppState, caller: &Caller, folder: &str) -> Result<Change, AppError> {
    let mut change = state.store.begin_change().await?;
    match change.role(folder, &caller.claims.sub).await? {
        Some(Role::Owner | Role::Writer) => Ok(change),
        Some(Role::Reader) => Err(AppError::Forbidden),
        None => Err(AppError::NotAMember),
    }
}

/// `POST /folders`: a new folder owned by the caller, with an owner's access ticket.
pub async fn create_folder(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<NewFolder>, JsonRejection>,
) -> Result<(StatusCode, Json<FolderGrant>), AppError> {
    require_identity(&caller)?;
    let Json(req) = body?;
    if !valid_display_name(&req.name) {
        return Err(AppError::invalid(
            ErrorCode::BadName,
            "a folder name is 1 to 255 bytes without '/' or control characters, and not \".\" or \"..\"",
        ));
    }
    if state.store.folders_owned(&caller.claims.sub).await? >= state.max_folders {
        return Err(AppError::conflict(
            ErrorCode::TooManyFolders,
            format!(
                "you own {} folders, the most this cloud allows; remove one first",
                state.max_folders
            ),
        ));
    }
    let folder = Folder {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        owner: caller.claims.sub.clone(),
        device_only: req.device_only,
        created_ms: now_ms(),
        epoch: 0,
    };
    if !state.store.insert_folder(&folder).await? {
        return Err(AppError::conflict(
            ErrorCode::NameTaken,
            "you already have a folder of that name; pick another",
        ));
    }
    tracing::info!(owner = %folder.owner, folder = %folder.id, "folder created");
    let grant = grants(&state, &caller, vec![(folder, Role::Owner)])
        .await?
        .pop()
        .ok_or_else(|| AppError::internal("folder grant", "no grant made"))?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// `GET /folders/{folder}`.
pub async fn get_folder(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
) -> Result<Json<Folder>, AppError> {
    let path = format!("/folders/{folder}");
    Ok(Json(
        require_folder(&state, &caller, &folder, &path, Right::Read).await?,
    ))
}

/// `PATCH /folders/{folder}`: switches the folder between cloud-synced and device-only
/// (owner only). Versions written from then on follow the new setting; blocks already in
/// the cloud stay there.
pub async fn patch_folder(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
    body: Result<Json<FolderPatch>, JsonRejection>,
) -> Result<Json<Folder>, AppError> {
    let path = format!("/folders/{folder}");
    let mut folder = require_folder(&state, &caller, &folder, &path, Right::Admin).await?;
    let Json(patch) = body?;
    if let Some(device_only) = patch.device_only {
        state.store.set_device_only(&folder.id, device_only).await?;
        folder.device_only = device_only;
        tracing::info!(folder = %folder.id, device_only, "folder content setting changed");
    }
    Ok(Json(folder))
}

/// `GET /folders/{folder}/entries`: the live entries and the feed position they reflect.
pub async fn list_entries(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
) -> Result<Json<EntryList>, AppError> {
    let path = format!("/folders/{folder}/entries");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    let (entries, seq) = state.store.live_entries(&folder.id).await?;
    Ok(Json(EntryList { entries, seq }))
}

/// `GET /folders/{folder}/entries/{entry}`: the entry (tombstones too) with its ETag.
pub async fn get_entry(
    State(state): State<AppState>,
    EntryReader { caller, entry }: EntryReader,
    Path((folder, id)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let path = format!("/folders/{folder}/entries/{id}");
    require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    with_etag(StatusCode::OK, entry.ok_or(AppError::NotFound("entry"))?)
}

/// `GET /folders/{folder}/entries/{entry}/versions`: a file's current content and the
/// earlier ones the cloud keeps, newest first.
pub async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, id)): Path<(String, String)>,
) -> Result<Json<Vec<FileVersion>>, AppError> {
    let path = format!("/folders/{folder}/entries/{id}");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    let versions = state.store.versions(&folder.id, &id).await?;
    if versions.is_empty() {
        return Err(AppError::NotFound("file"));
    }
    Ok(Json(versions))
}

/// `GET /folders/{folder}/trash`: deleted files that can still be restored.
pub async fn list_trash(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
) -> Result<Json<Vec<Entry>>, AppError> {
    let path = format!("/folders/{folder}/entries");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    let since = crate::proto::now_ms()
        .saturating_sub(i64::try_from(state.retention.trash_for.as_millis()).unwrap_or(i64::MAX));
    Ok(Json(state.store.trash(&folder.id, since).await?))
}

/// `POST /folders/{folder}/entries/{entry}/restore`: makes a kept version the file's
/// content again (a new version, so every device gets it), or brings a deleted file back as
/// a new entry (a tombstoned id never lives again). Under another name or directory if
/// the body says so; a name taken is a 409, as for any put.
pub async fn restore_entry(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, id)): Path<(String, String)>,
    body: Result<Json<Restore>, JsonRejection>,
) -> Result<Response, AppError> {
    let path = format!("/folders/{folder}/entries/{id}");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Write).await?;
    let Json(r) = body?;
    let current = state
        .store
        .entry(&folder.id, &id)
        .await?
        .ok_or(AppError::NotFound("entry"))?;
    if current.kind != EntryKind::File {
        return Err(AppError::invalid(
            ErrorCode::KindMismatch,
            "only files have versions to restore",
        ));
    }
    let (size, mtime_ns, manifest) = match r.version {
        Some(v) if v == current.version => {
            (current.size, current.mtime_ns, current.manifest.clone())
        }
        Some(v) => state
            .store
            .version_content(&folder.id, &id, v)
            .await?
            .ok_or(AppError::NotFound("version"))?,
        None if current.deleted => (current.size, current.mtime_ns, current.manifest.clone()),
        None => {
            return Err(AppError::invalid(
                ErrorCode::BadBody,
                "name the version to restore (`meshfs history` lists them)",
            ));
        }
    };
    let put = EntryPut {
        parent: r.parent.or(current.parent.clone()),
        name: r.name.unwrap_or(current.name.clone()),
        kind: EntryKind::File,
        mode: current.mode,
        size,
        mtime_ns,
        manifest,
        target: None,
        replace: false,
        device_held: false,
    };
    check_name(&put.name)?;
    let (target, cond) = if current.deleted {
        (uuid::Uuid::new_v4().to_string(), Condition::Create)
    } else {
        (id, Condition::Version(current.version))
    };
    let mut change = begin_write(&state, &caller, &folder.id).await?;
    let (entry, _) = put_step(&mut change, &folder.id, &target, cond, put, &caller).await?;
    let version = change.commit().await?;
    state.feed_moved(version).await;
    with_etag(StatusCode::OK, entry)
}

/// Checks the entry's current state against the condition.
fn check_condition(cond: Condition, current: Option<&Entry>) -> Result<(), AppError> {
    match (cond, current) {
        (Condition::Create, Some(_)) => Err(AppError::PreconditionFailed),
        (Condition::Create, None) => Ok(()),
        (Condition::Version(_), None) => Err(AppError::NotFound("entry")),
        (Condition::Version(v), Some(e)) if e.version != v => Err(AppError::PreconditionFailed),
        (Condition::Version(_), Some(_)) => Ok(()),
    }
}

/// Checks that `parent` is a live directory of the folder and that placing `id` below it
/// makes no cycle.
async fn check_parent(
    change: &mut Change,
    folder: &str,
    id: &str,
    parent: Option<&str>,
) -> Result<(), AppError> {
    let Some(parent) = parent else {
        return Ok(());
    };
    let no_parent = || {
        AppError::conflict(
            ErrorCode::NoParent,
            "the parent is not a live directory of this folder",
        )
    };
    let p = change.entry(folder, parent).await?.ok_or_else(no_parent)?;
    if p.deleted || p.kind != EntryKind::Dir {
        return Err(no_parent());
    }
    let mut ancestor = Some(p);
    for _ in 0..MAX_DEPTH {
        let Some(a) = ancestor else {
            return Ok(());
        };
        if a.id == id {
            return Err(AppError::conflict(
                ErrorCode::Cycle,
                "a directory cannot move below itself",
            ));
        }
        ancestor = match a.parent {
            Some(up) => change.entry(folder, &up).await?,
            None => None,
        };
    }
    Err(AppError::conflict(
        ErrorCode::Cycle,
        "the directory chain is too deep",
    ))
}

/// `PUT /folders/{folder}/entries/{entry}`: create (`If-None-Match: *`) or update
/// (`If-Match`), as one transaction that either changes everything or nothing.
pub async fn put_entry(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<EntryPut>, JsonRejection>,
) -> Result<Response, AppError> {
    let path = format!("/folders/{folder}/entries/{id}");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Write).await?;
    let cond = condition(&headers)?;
    let Json(put) = body?;
    let mut change = begin_write(&state, &caller, &folder.id).await?;
    let (entry, created) = put_step(&mut change, &folder.id, &id, cond, put, &caller).await?;
    let version = entry.version;
    change.commit().await?;
    state.feed_moved(version).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    with_etag(status, entry)
}

/// A create or update of one entry inside `change`. Every refusal comes before the first
/// write, so a refused step changes nothing. Returns the entry and whether it is new.
async fn put_step(
    change: &mut Change,
    folder: &str,
    id: &str,
    cond: Condition,
    put: EntryPut,
    caller: &Caller,
) -> Result<(Entry, bool), AppError> {
    check_id(id)?;
    check_name(&put.name)?;
    check_content(&put)?;
    let version = change.version();
    let current = change.entry(folder, id).await?;
    check_condition(cond, current.as_ref())?;
    if let Some(cur) = current
        .as_ref()
        .filter(|c| !c.deleted && c.kind != put.kind)
    {
        return Err(AppError::conflict(
            ErrorCode::KindMismatch,
            format!(
                "this entry is a {:?}; delete it first to make another kind",
                cur.kind
            ),
        ));
    }
    check_parent(change, folder, id, put.parent.as_deref()).await?;
    let missing = if put.kind == EntryKind::File && !put.manifest.is_empty() {
        let hashes: Vec<BlockHash> = put.manifest.iter().map(|b| b.hash).collect();
        change.missing_blocks(folder, &hashes).await?
    } else {
        0
    };
    if missing > 0 && !put.device_held {
        return Err(AppError::conflict(
            ErrorCode::MissingBlocks,
            format!(
                "{missing} block(s) of the manifest are not in the cloud; upload them first, or say the device holds them (device_held)"
            ),
        ));
    }
    let occupant = change
        .live_at(folder, put.parent.as_deref(), &put.name)
        .await?;
    if let Some(mut other) = occupant.filter(|o| o.id != id) {
        if !put.replace {
            return Err(AppError::conflict(
                ErrorCode::NameTaken,
                "another entry has this name here; pick another name or set replace",
            ));
        }
        if (other.kind == EntryKind::Dir) != (put.kind == EntryKind::Dir) {
            return Err(AppError::conflict(
                ErrorCode::KindMismatch,
                "a directory and a non-directory cannot replace each other",
            ));
        }
        if other.kind == EntryKind::Dir && change.has_live_children(folder, &other.id).await? {
            return Err(AppError::conflict(
                ErrorCode::NotEmpty,
                "the directory to replace is not empty",
            ));
        }
        other.deleted = true;
        other.version = version;
        other.author = caller.claims.dev.clone();
        change.save(&other).await?;
    }
    let entry = Entry {
        id: id.to_string(),
        folder: folder.to_string(),
        parent: put.parent,
        name: put.name,
        kind: put.kind,
        mode: put.mode,
        size: put.size,
        mtime_ns: put.mtime_ns,
        version,
        deleted: false,
        manifest: put.manifest,
        target: put.target,
        in_cloud: missing == 0,
        holders: if missing == 0 {
            Vec::new()
        } else {
            vec![caller.claims.dev.clone()]
        },
        author: caller.claims.dev.clone(),
    };
    change.save(&entry).await?;
    Ok((entry, current.is_none()))
}

/// `DELETE /folders/{folder}/entries/{entry}` with `If-Match`: leaves a tombstone.
pub async fn delete_entry(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let path = format!("/folders/{folder}/entries/{id}");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Write).await?;
    let Condition::Version(v) = condition(&headers)? else {
        return Err(AppError::PreconditionRequired);
    };
    let mut change = begin_write(&state, &caller, &folder.id).await?;
    let entry = delete_step(&mut change, &folder.id, &id, v, &caller).await?;
    let version = entry.version;
    change.commit().await?;
    state.feed_moved(version).await;
    with_etag(StatusCode::OK, entry)
}

/// A delete of one entry at version `v` inside `change`; a refusal changes nothing.
async fn delete_step(
    change: &mut Change,
    folder: &str,
    id: &str,
    v: u64,
    caller: &Caller,
) -> Result<Entry, AppError> {
    let version = change.version();
    let mut entry = change
        .entry(folder, id)
        .await?
        .filter(|e| !e.deleted)
        .ok_or(AppError::NotFound("entry"))?;
    check_condition(Condition::Version(v), Some(&entry))?;
    if entry.kind == EntryKind::Dir && change.has_live_children(folder, id).await? {
        return Err(AppError::conflict(
            ErrorCode::NotEmpty,
            "the directory is not empty; delete its entries first",
        ));
    }
    entry.deleted = true;
    entry.version = version;
    entry.author = caller.claims.dev.clone();
    change.save(&entry).await?;
    Ok(entry)
}

/// Most steps one `POST …/steps` may carry.
const MAX_STEPS: usize = 512;

/// `POST /folders/{folder}/steps`: puts and deletes applied in order in one transaction,
/// up to the first one refused; what was applied before it is kept. A device uploading
/// many small changes (a `git clone`, say) pays one round trip and one commit for many.
/// A step of a named journal that the cloud applied before is reported, not applied again
/// (see [`Steps`]).
pub async fn apply_steps(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
    body: Result<Json<Steps>, JsonRejection>,
) -> Result<Json<StepResults>, AppError> {
    let path = format!("/folders/{folder}/steps");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Write).await?;
    let Json(Steps { journal, steps }) = body?;
    if steps.len() > MAX_STEPS {
        return Err(AppError::invalid(
            ErrorCode::TooManySteps,
            format!("send at most {MAX_STEPS} steps at once"),
        ));
    }
    check_journal(journal.as_deref(), &steps)?;
    let device = caller.claims.dev.clone();
    let mut change = begin_write(&state, &caller, &folder.id).await?;
    let mut mark = match &journal {
        Some(j) => change.journal_mark(&device, j).await?,
        None => 0,
    };
    let first_mark = mark;
    let mut done = Vec::with_capacity(steps.len());
    let (mut refused, mut changed) = (None, false);
    for (index, step) in steps.into_iter().enumerate() {
        let seq = step.seq().filter(|_| journal.is_some());
        if seq.is_some_and(|s| s <= mark)
            && let Some(now) = change.entry(&folder.id, step.id()).await?
        {
            done.push(now);
            continue;
        }
        let applied = match step {
            Step::Put {
                id,
                if_match,
                entry,
                ..
            } => {
                let cond = if_match.map_or(Condition::Create, Condition::Version);
                put_step(&mut change, &folder.id, &id, cond, entry, &caller)
                    .await
                    .map(|(e, _)| e)
            }
            Step::Delete { id, if_match, .. } => {
                delete_step(&mut change, &folder.id, &id, if_match, &caller).await
            }
        };
        match applied {
            Ok(e) => {
                done.push(e);
                changed = true;
                mark = mark.max(seq.unwrap_or(0));
            }
            // A fault of the cloud itself fails the whole batch, and nothing is kept.
            Err(e @ AppError::Internal(_)) => return Err(e),
            Err(e) => {
                let (status, error) = e.api();
                refused = Some(StepRefusal {
                    index,
                    status: status.as_u16(),
                    error,
                });
                break;
            }
        }
    }
    if changed {
        if let Some(j) = journal.as_deref().filter(|_| mark > first_mark) {
            change.set_journal_mark(&device, j, mark).await?;
        }
        let version = change.commit().await?;
        state.feed_moved(version).await;
    }
    Ok(Json(StepResults { done, refused }))
}

/// `GET /users/{user}/devices/{device}/journals/{journal}`: how far the cloud applied the
/// device's journal; the device itself asks, at start (see `Uploader::check_journal`).
pub async fn journal_mark(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, device, journal)): Path<(String, String, String)>,
) -> Result<Json<JournalMark>, AppError> {
    require_self(&caller, &user, &device)?;
    check_journal(Some(&journal), &[])?;
    let applied = state.store.journal_mark(&device, &journal).await?;
    Ok(Json(JournalMark { applied }))
}

/// A journal id is a short token, and its record numbers fit the store.
fn check_journal(journal: Option<&str>, steps: &[Step]) -> Result<(), AppError> {
    if let Some(j) = journal
        && (j.is_empty()
            || j.len() > 64
            || !j.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(AppError::invalid(
            ErrorCode::BadJournal,
            "a journal id is 1 to 64 letters, digits and dashes",
        ));
    }
    if steps
        .iter()
        .any(|s| s.seq().is_some_and(|n| i64::try_from(n).is_err()))
    {
        return Err(AppError::invalid(
            ErrorCode::BadSeq,
            "a step's seq must be below 2^63",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct ChangesQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait: u64,
}

/// `GET /folders/{folder}/changes?since=N&wait=S`: entries changed after `N`; with none and
/// `wait > 0`, waits up to `S` seconds (at most 30) for one.
pub async fn changes(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<ChangeBatch>, AppError> {
    let path = format!("/folders/{folder}/changes");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    let Query(q) = query?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(MAX_WAIT_SECS));
    let mut feed = state.feed.subscribe();
    let mut now = folder.clone();
    loop {
        feed.borrow_and_update();
        let (changes, seq) = state.store.changes(&folder.id, q.since, FEED_LIMIT).await?;
        let full = changes.len() >= FEED_LIMIT as usize;
        let expired = tokio::time::Instant::now() >= deadline;
        if !changes.is_empty() || expired || now.epoch != folder.epoch {
            let next = match changes.last() {
                Some(last) if full => last.version,
                _ => seq.max(q.since),
            };
            return Ok(Json(ChangeBatch {
                changes,
                next,
                epoch: now.epoch,
            }));
        }
        // Any commit wakes us; a change of another folder just means looking again.
        let waiting = state.metrics.feed_waiter();
        let woken = tokio::time::timeout_at(deadline, feed.changed()).await;
        drop(waiting);
        if !matches!(woken, Ok(Ok(()))) {
            return Ok(Json(ChangeBatch {
                changes,
                next: seq.max(q.since),
                epoch: now.epoch,
            }));
        }
        // Members change under a long poll too: a removed member's poll ends refused, and a
        // new epoch is told at once (the ticket was good when the poll began), so devices
        // look at the members again.
        now = match state
            .store
            .membership(&folder.id, &caller.claims.sub)
            .await?
        {
            Some((now, Some(_))) => now,
            _ => return Err(AppError::NotAMember),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::BlockRef;

    fn put(kind: EntryKind, size: u64, lens: &[u32]) -> EntryPut {
        EntryPut {
            parent: None,
            name: "n".into(),
            kind,
            mode: 0o644,
            size,
            mtime_ns: 0,
            manifest: lens
                .iter()
                .map(|&len| BlockRef {
                    hash: BlockHash::of(b"x"),
                    len,
                })
                .collect(),
            target: None,
            replace: false,
            device_held: false,
        }
    }

    #[test]
    fn names_must_be_single_path_components() {
        assert!(check_name("a.txt").is_ok());
        for bad in ["", ".", "..", "a/b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn file_size_must_equal_the_sum_of_its_blocks() {
        assert!(check_content(&put(EntryKind::File, 5, &[2, 3])).is_ok());
        assert!(check_content(&put(EntryKind::File, 6, &[2, 3])).is_err());
        assert!(check_content(&put(EntryKind::File, 0, &[])).is_ok());
        assert!(check_content(&put(EntryKind::Dir, 0, &[1])).is_err());
        assert!(check_content(&put(EntryKind::Symlink, 0, &[])).is_err());
    }

    #[test]
    fn preconditions_parse_from_headers() {
        let mut h = HeaderMap::new();
        assert!(matches!(condition(&h), Err(AppError::PreconditionRequired)));
        h.insert(IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(condition(&h).unwrap(), Condition::Version(7));
        h.insert(IF_MATCH, HeaderValue::from_static("7"));
        assert!(condition(&h).is_err());
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(condition(&h).unwrap(), Condition::Create);
    }

    #[test]
    fn create_fails_on_an_existing_id_and_update_on_a_stale_version() {
        let e = Entry {
            id: "e".into(),
            folder: "f".into(),
            parent: None,
            name: "n".into(),
            kind: EntryKind::File,
            mode: 0,
            size: 0,
            mtime_ns: 0,
            version: 3,
            deleted: true,
            manifest: vec![],
            target: None,
            author: "d".into(),
            in_cloud: true,
            holders: vec![],
        };
        assert!(matches!(
            check_condition(Condition::Create, Some(&e)),
            Err(AppError::PreconditionFailed)
        ));
        assert!(matches!(
            check_condition(Condition::Version(2), Some(&e)),
            Err(AppError::PreconditionFailed)
        ));
        assert!(check_condition(Condition::Version(3), Some(&e)).is_ok());
        assert!(matches!(
            check_condition(Condition::Version(3), None),
            Err(AppError::NotFound(_))
        ));
    }
}
