//! Content blocks by hash: `PUT/GET/HEAD /folders/{folder}/blocks/{hash}`, stored through
//! `object_store` at `{folder}/{hash}` in a local directory or an S3 bucket (see
//! `engines.rs`).
//!
//! Durability: a block is recorded in the database only after its put returned, so a
//! recorded block always exists. S3 answers a put once the object is stored.
//! `LocalFileSystem` writes a staging file and renames it into place, but by default does
//! not fsync (object_store 0.14 `with_fsync`, off by default); we turn it on, so its put
//! returns only after the file and its parent directories are on stable storage.

use super::AppState;
use super::auth::{Caller, require_folder};
use super::engines::BlockStore;
use super::error::AppError;
use super::store::{BlockRecord, Charge, Collected};
use crate::proto::ErrorCode;
use crate::proto::{
    BLOCK_SIZE, BlockBatch, BlockHash, MAX_BATCH_BLOCKS, Right, encode_block_batch,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

/// Where blocks are kept.
pub struct Blobs {
    store: Box<dyn ObjectStore>,
}

fn location(folder: &str, hash: &BlockHash) -> ObjectPath {
    ObjectPath::from_iter([folder.to_owned(), hash.to_hex()])
}

impl Blobs {
    /// Opens the block store (see [`BlockStore::open`]).
    pub fn open(at: &BlockStore) -> Result<Self, super::CloudError> {
        Ok(Self { store: at.open()? })
    }

    async fn put(&self, folder: &str, hash: &BlockHash, data: Bytes) -> Result<(), AppError> {
        self.store
            .put_opts(
                &location(folder, hash),
                PutPayload::from(data),
                PutOptions::default(),
            )
            .await
            .map_err(|e| AppError::internal("storing a block", e))?;
        Ok(())
    }

    async fn remove(&self, folder: &str, hash: &BlockHash) {
        if let Err(e) = self.store.delete(&location(folder, hash)).await {
            tracing::warn!(error = %e, %hash, "removing a block");
        }
    }

    /// The block's bytes, checked against its hash (a corrupt file is an internal error,
    /// never wrong data).
    async fn get(&self, folder: &str, hash: &BlockHash) -> Result<Bytes, AppError> {
        let data = self
            .store
            .get_opts(&location(folder, hash), GetOptions::default())
            .await
            .map_err(|e| AppError::internal("opening a block", e))?
            .bytes()
            .await
            .map_err(|e| AppError::internal("reading a block", e))?;
        if !hash.matches(&data) {
            return Err(AppError::internal(
                "reading a block",
                format!("{hash} is corrupt on disk"),
            ));
        }
        Ok(data)
    }
}

fn parse_hash(s: &str) -> Result<BlockHash, AppError> {
    s.parse().map_err(|_| {
        AppError::invalid(
            ErrorCode::BadHash,
            "a block is named by its hash: \"b3-\" and 64 hex digits (BLAKE3), or 64 hex digits (SHA-256)",
        )
    })
}

/// Checks the ticket and the folder, returning the hash and the folder.
async fn target(
    state: &AppState,
    caller: &Caller,
    folder: &str,
    hash: &str,
    right: Right,
) -> Result<(BlockHash, crate::proto::Folder), AppError> {
    let path = format!("/folders/{folder}/blocks/{hash}");
    let folder = require_folder(state, caller, folder, &path, right).await?;
    Ok((parse_hash(hash)?, folder))
}

/// `PUT /folders/{folder}/blocks/{hash}`: 201 when stored, 200 when it already was.
pub async fn put_block(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, hash)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, AppError> {
    let (hash, folder) = target(&state, &caller, &folder, &hash, Right::Write).await?;
    if folder.device_only {
        return Err(AppError::DeviceOnly);
    }
    let data = body?;
    let len = u64::try_from(data.len()).map_err(|_| AppError::TooLarge)?;
    if len > BLOCK_SIZE {
        return Err(AppError::TooLarge);
    }
    if !hash.matches(&data) {
        return Err(AppError::invalid(
            ErrorCode::HashMismatch,
            "the body does not hash to the hash in the URL; nothing was stored, send the block again",
        ));
    }
    if state.store.has_block(&folder.id, &hash).await? {
        // Offered again for a step to come: fresh for the collector's grace period.
        state.store.touch_block(&folder.id, &hash).await?;
        return Ok(StatusCode::OK);
    }
    if !room_for(&state, &folder.owner, len).await? {
        return Err(AppError::QuotaExceeded);
    }
    let charge = Charge {
        owner: &folder.owner,
        member: &caller.claims.sub,
        share: state.store.share_of(&folder.id, &caller.claims.sub).await?,
    };
    state.blobs.put(&folder.id, &hash, data).await?;
    loop {
        let got = state
            .store
            .record_block(&folder.id, &hash, len, &charge)
            .await?;
        match got {
            BlockRecord::Stored => {
                state.metrics.block_stored(len);
                return Ok(StatusCode::CREATED);
            }
            BlockRecord::AlreadyStored => return Ok(StatusCode::OK),
            // A racing upload took the room: history makes more if it can.
            BlockRecord::OverQuota if room_for(&state, &folder.owner, len).await? => {}
            // Full of current content: the file goes, so what stays stored is within the
            // quota (a failed delete leaves a file never served, overwritten by the next
            // put of the same block).
            BlockRecord::OverQuota | BlockRecord::OverShare => {
                // Unless a racing upload of the same block recorded it meanwhile.
                if !state.store.has_block(&folder.id, &hash).await? {
                    state.blobs.remove(&folder.id, &hash).await;
                }
                return Err(match (charge.share, got) {
                    (Some(max), BlockRecord::OverShare) => AppError::ShareExceeded { max },
                    _ => AppError::QuotaExceeded,
                });
            }
        }
    }
}

/// Whether `len` more bytes fit `owner`'s quota, once the oldest history has made room if
/// it must: only current content is refused for space.
async fn room_for(state: &AppState, owner: &str, len: u64) -> Result<bool, AppError> {
    let fits = || async {
        let usage = state
            .store
            .usage(owner)
            .await?
            .ok_or(AppError::NotFound("user"))?;
        Ok::<_, AppError>(usage.stored.saturating_add(len) <= usage.quota)
    };
    loop {
        if fits().await? {
            return Ok(true);
        }
        // Collected even when this call found no history left: a racing upload may have
        // let go of some that its pass has not freed yet.
        let freed = state.store.free_history(owner).await?;
        collect(state).await?;
        if !freed {
            return fits().await;
        }
    }
}

/// One pass of the collector (see `store/history.rs`): prunes history and frees blocks that
/// nothing references, from the database and then from block storage.
pub async fn collect(state: &AppState) -> Result<Collected, AppError> {
    let done = state
        .store
        .collect(crate::proto::now_ms(), &state.retention)
        .await?;
    for (folder, hash) in &done.blocks {
        match hash.parse::<BlockHash>() {
            Ok(h) => state.blobs.remove(folder, &h).await,
            Err(_) => tracing::warn!(folder, hash, "a freed block with a malformed name"),
        }
    }
    state.metrics.blocks_freed(done.blocks.len() as u64);
    if !done.blocks.is_empty() || done.versions > 0 {
        tracing::info!(
            blocks = done.blocks.len(),
            bytes = done.bytes,
            versions = done.versions,
            "collected what nothing references"
        );
    }
    Ok(done)
}

/// `GET /folders/{folder}/blocks/{hash}`.
pub async fn get_block(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, hash)): Path<(String, String)>,
) -> Result<impl IntoResponse, AppError> {
    let (hash, folder) = target(&state, &caller, &folder, &hash, Right::Read).await?;
    if !state.store.has_block(&folder.id, &hash).await? {
        return Err(AppError::NotFound("block"));
    }
    let data = state.blobs.get(&folder.id, &hash).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        data,
    ))
}

/// `POST /folders/{folder}/blocks`: several blocks in one answer (see [`BlockBatch`]).
pub async fn get_blocks(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
    body: Result<axum::Json<BlockBatch>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let path = format!("/folders/{folder}/blocks");
    let folder = require_folder(&state, &caller, &folder, &path, Right::Read).await?;
    let axum::Json(BlockBatch { hashes }) = body?;
    if hashes.len() > MAX_BATCH_BLOCKS {
        return Err(AppError::invalid(
            ErrorCode::TooLarge,
            format!("ask for at most {MAX_BATCH_BLOCKS} blocks at once"),
        ));
    }
    let mut blocks = Vec::with_capacity(hashes.len());
    for hash in &hashes {
        blocks.push(if state.store.has_block(&folder.id, hash).await? {
            Some(state.blobs.get(&folder.id, hash).await?)
        } else {
            None
        });
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        encode_block_batch(&blocks),
    ))
}

/// `HEAD /folders/{folder}/blocks/{hash}`: 200 if the cloud has the block, else 404.
pub async fn head_block(
    State(state): State<AppState>,
    caller: Caller,
    Path((folder, hash)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    let (hash, folder) = target(&state, &caller, &folder, &hash, Right::Read).await?;
    if state.store.has_block(&folder.id, &hash).await? {
        Ok(StatusCode::OK)
    } else {
        Err(AppError::NotFound("block"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_block_reads_back_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&BlockStore::Dir(dir.path().to_owned())).unwrap();
        let data = Bytes::from_static(b"hello block");
        let h = BlockHash::of(&data);
        blobs.put("f", &h, data.clone()).await.unwrap();
        assert_eq!(blobs.get("f", &h).await.unwrap(), data);
        std::fs::write(dir.path().join("f").join(h.to_hex()), b"evil").unwrap();
        assert!(matches!(
            blobs.get("f", &h).await,
            Err(AppError::Internal(_))
        ));
    }
}
