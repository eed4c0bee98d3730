//! History, trash and the collector. A file's content that a new version replaces is kept
//! in `versions`; a deleted entry keeps its manifest and stays in the trash while its
//! `changed_ms` is recent. [`Store::collect`] prunes both by [`Retention`] and frees the
//! blocks that no live entry, kept version or trash entry references, unless they were
//! stored (or offered again) within the grace period: an upload in flight has put its
//! blocks but not yet the step that names them. The collector runs as one write
//! transaction, so no step commits while it marks and sweeps; a step that names a block
//! freed before it finds the block missing (409) and its device uploads it again.
//!
//! What a user is charged is then what their folders' blocks take: referenced content, and
//! uploads still in their grace period.

use super::{Store, StoreError, to_i64, to_u64};
use crate::proto::{BlockRef, Entry, EntryKind, FileVersion};
use sqlx::{Any, Row, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long history and the trash are kept, and how long an unreferenced upload waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Earlier versions of a file kept whatever their age.
    pub versions_per_file: usize,
    /// Versions younger than this are kept however many there are.
    pub keep_for: Duration,
    /// Deleted files stay restorable this long.
    pub trash_for: Duration,
    /// A block nothing references is freed once it is this old.
    pub grace: Duration,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Default for Retention {
    fn default() -> Self {
        Self {
            versions_per_file: 10,
            keep_for: DAY * 30,
            trash_for: DAY * 30,
            grace: Duration::from_secs(3600),
        }
    }
}

/// What one pass of [`Store::collect`] freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub versions: u64,
    /// The blocks freed, by folder, for the caller to remove from block storage.
    pub blocks: Vec<(String, String)>,
    pub bytes: u64,
}

/// Keeps `old`'s content as a version when `new` replaces it with other content.
pub(super) async fn keep_replaced(
    tx: &mut Transaction<'static, Any>,
    old: &Entry,
    new: &Entry,
) -> Result<(), StoreError> {
    if old.kind != EntryKind::File
        || old.deleted
        || !old.in_cloud
        || old.manifest.is_empty()
        || old.manifest == new.manifest
    {
        return Ok(());
    }
    let manifest =
        serde_json::to_string(&old.manifest).map_err(|_| StoreError::Corrupt("entry manifest"))?;
    sqlx::query(
        "INSERT INTO versions (folder, id, version, size, mtime_ns, manifest, author, saved_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (folder, id, version) DO NOTHING",
    )
    .bind(&old.folder)
    .bind(&old.id)
    .bind(to_i64(old.version, "entry version")?)
    .bind(to_i64(old.size, "entry size")?)
    .bind(old.mtime_ns)
    .bind(manifest)
    .bind(&old.author)
    .bind(crate::proto::now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn hashes(manifest: &str) -> Result<Vec<String>, StoreError> {
    let refs: Vec<BlockRef> =
        serde_json::from_str(manifest).map_err(|_| StoreError::Corrupt("entry manifest"))?;
    Ok(refs.into_iter().map(|b| b.hash.to_hex()).collect())
}

impl Store {
    /// The kept versions of a file, newest first, after its current content.
    pub async fn versions(&self, folder: &str, id: &str) -> Result<Vec<FileVersion>, StoreError> {
        let mut out = Vec::new();
        if let Some(e) = self.entry(folder, id).await?
            && e.kind == EntryKind::File
        {
            let row = sqlx::query("SELECT changed_ms FROM entries WHERE folder = $1 AND id = $2")
                .bind(folder)
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
            out.push(FileVersion {
                version: e.version,
                size: e.size,
                mtime_ns: e.mtime_ns,
                author: e.author,
                saved_ms: row.try_get("changed_ms")?,
                current: !e.deleted,
            });
        }
        let rows = sqlx::query(
            "SELECT version, size, mtime_ns, author, saved_ms FROM versions
             WHERE folder = $1 AND id = $2 ORDER BY version DESC",
        )
        .bind(folder)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            out.push(FileVersion {
                version: to_u64(r.try_get("version")?, "version")?,
                size: to_u64(r.try_get("size")?, "version size")?,
                mtime_ns: r.try_get("mtime_ns")?,
                author: r.try_get("author")?,
                saved_ms: r.try_get("saved_ms")?,
                current: false,
            });
        }
        Ok(out)
    }

    /// Deleted files of `folder` still in the trash (deleted at `since` or later), newest
    /// first.
    pub async fn trash(&self, folder: &str, since: i64) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM entries WHERE folder = $1 AND deleted = 1 AND kind = 'file'
             AND changed_ms >= $2 ORDER BY changed_ms DESC",
        )
        .bind(folder)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::entry_from).collect()
    }

    /// The size, mtime and manifest of a kept version.
    pub async fn version_content(
        &self,
        folder: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<(u64, i64, Vec<BlockRef>)>, StoreError> {
        let row = sqlx::query(
            "SELECT size, mtime_ns, manifest FROM versions
             WHERE folder = $1 AND id = $2 AND version = $3",
        )
        .bind(folder)
        .bind(id)
        .bind(to_i64(version, "version")?)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let manifest: String = r.try_get("manifest")?;
        Ok(Some((
            to_u64(r.try_get("size")?, "version size")?,
            r.try_get("mtime_ns")?,
            serde_json::from_str(&manifest).map_err(|_| StoreError::Corrupt("version manifest"))?,
        )))
    }

    /// Lets go of the oldest history of `owner`'s folders (a few versions, else a few trash
    /// entries), for room under the quota; false when there is none left. The blocks go at
    /// the next [`Store::collect`].
    pub async fn free_history(&self, owner: &str) -> Result<bool, StoreError> {
        const AT_ONCE: i64 = 8;
        let gone = sqlx::query(
            "DELETE FROM versions WHERE (folder, id, version) IN (
               SELECT v.folder, v.id, v.version FROM versions v JOIN folders f ON v.folder = f.id
               WHERE f.owner = $1 ORDER BY v.saved_ms LIMIT $2)",
        )
        .bind(owner)
        .bind(AT_ONCE)
        .execute(&self.pool)
        .await?;
        if gone.rows_affected() > 0 {
            return Ok(true);
        }
        let expired = sqlx::query(
            "UPDATE entries SET changed_ms = 0 WHERE (folder, id) IN (
               SELECT e.folder, e.id FROM entries e JOIN folders f ON e.folder = f.id
               WHERE f.owner = $1 AND e.deleted = 1 AND e.kind = 'file' AND e.changed_ms > 0
               ORDER BY e.changed_ms LIMIT $2)",
        )
        .bind(owner)
        .bind(AT_ONCE)
        .execute(&self.pool)
        .await?;
        Ok(expired.rows_affected() > 0)
    }

    /// Prunes history and the trash by `r` and frees the blocks nothing references (see the
    /// module's comment), as of `now_ms`; sets every user's stored bytes to what their
    /// folders' blocks take.
    pub async fn collect(&self, now_ms: i64, r: &Retention) -> Result<Collected, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The write lock first (see the module comment of `store.rs`): nothing commits
        // between the mark and the sweep.
        sqlx::query("UPDATE meta SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let mut done = Collected::default();

        // History: the newest `versions_per_file` of each file, and anything recent.
        let rows = sqlx::query(
            "SELECT folder, id, version, saved_ms FROM versions ORDER BY folder, id, version DESC",
        )
        .fetch_all(&mut *tx)
        .await?;
        let (mut rank, mut last) = (0usize, None::<(String, String)>);
        let keep_after = now_ms.saturating_sub(ms(r.keep_for));
        for row in rows {
            let key: (String, String) = (row.try_get("folder")?, row.try_get("id")?);
            let version: i64 = row.try_get("version")?;
            rank = if last.as_ref() == Some(&key) {
                rank + 1
            } else {
                0
            };
            let saved: i64 = row.try_get("saved_ms")?;
            if rank >= r.versions_per_file && saved < keep_after {
                sqlx::query("DELETE FROM versions WHERE folder = $1 AND id = $2 AND version = $3")
                    .bind(&key.0)
                    .bind(&key.1)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                done.versions += 1;
            }
            last = Some(key);
        }

        // Mark: what live files, kept versions and the trash reference.
        let trash_after = now_ms.saturating_sub(ms(r.trash_for));
        let mut referenced: HashMap<String, HashSet<String>> = HashMap::new();
        let live = sqlx::query(
            "SELECT folder, manifest FROM entries
             WHERE kind = 'file' AND (deleted = 0 OR changed_ms >= $1)",
        )
        .bind(trash_after)
        .fetch_all(&mut *tx)
        .await?;
        let kept = sqlx::query("SELECT folder, manifest FROM versions")
            .fetch_all(&mut *tx)
            .await?;
        for row in live.iter().chain(&kept) {
            let folder: String = row.try_get("folder")?;
            let manifest: String = row.try_get("manifest")?;
            referenced
                .entry(folder)
                .or_default()
                .extend(hashes(&manifest)?);
        }

        // Sweep: what nothing references, past its grace.
        let fresh_after = now_ms.saturating_sub(ms(r.grace));
        let blocks = sqlx::query("SELECT folder, hash, len, stored_ms FROM blocks")
            .fetch_all(&mut *tx)
            .await?;
        for row in blocks {
            let (folder, hash): (String, String) = (row.try_get("folder")?, row.try_get("hash")?);
            let stored: i64 = row.try_get("stored_ms")?;
            if stored >= fresh_after || referenced.get(&folder).is_some_and(|s| s.contains(&hash)) {
                continue;
            }
            sqlx::query("DELETE FROM blocks WHERE folder = $1 AND hash = $2")
                .bind(&folder)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            done.bytes += to_u64(row.try_get("len")?, "block length")?;
            done.blocks.push((folder, hash));
        }
        sqlx::query(
            "UPDATE users SET stored_bytes = (
               SELECT CAST(COALESCE(SUM(b.len), 0) AS BIGINT) FROM blocks b JOIN folders f ON b.folder = f.id
               WHERE f.owner = users.name)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::store::Charge;
    use crate::proto::{BlockHash, Folder};

    const ANN: Charge<'static> = Charge {
        owner: "ann",
        member: "ann",
        share: None,
    };

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await;
        assert!(store.insert_user("ann", "x", 1 << 30, 0).await.unwrap());
        let f = Folder {
            id: "f".into(),
            name: "docs".into(),
            owner: "ann".into(),
            device_only: false,
            created_ms: 0,
            epoch: 0,
        };
        assert!(store.insert_folder(&f).await.unwrap());
        (dir, store)
    }

    fn file(manifest: &[BlockHash], version: u64) -> Entry {
        Entry {
            id: "e".into(),
            folder: "f".into(),
            parent: None,
            name: "db".into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 10 * manifest.len() as u64,
            mtime_ns: 1,
            version,
            deleted: false,
            manifest: manifest
                .iter()
                .map(|h| BlockRef { hash: *h, len: 10 })
                .collect(),
            target: None,
            author: "d".into(),
            in_cloud: true,
            holders: vec![],
        }
    }

    async fn save(store: &Store, e: &Entry) {
        let mut c = store.begin_change().await.unwrap();
        c.save(e).await.unwrap();
        c.commit().await.unwrap();
    }

    #[tokio::test]
    async fn the_collector_frees_what_nothing_references_and_keeps_history_by_retention() {
        let (_dir, store) = store().await;
        let [a, b, c, d] = [b"a", b"b", b"c", b"d"].map(|x| BlockHash::of(x));
        for h in [a, b, c] {
            store.record_block("f", &h, 10, &ANN).await.unwrap();
        }
        save(&store, &file(&[a], 1)).await;
        save(&store, &file(&[b], 2)).await;
        let later = crate::proto::now_ms() + 10_000;
        let keep = Retention {
            grace: Duration::from_secs(5),
            ..Retention::default()
        };
        // `c` was uploaded long ago and nothing named it; `d` arrives just before the
        // pass: an upload whose step is still to come.
        sqlx::query("UPDATE blocks SET stored_ms = 0")
            .execute(&store.pool)
            .await
            .unwrap();
        store.record_block("f", &d, 10, &ANN).await.unwrap();
        let done = store
            .collect(crate::proto::now_ms() + 1000, &keep)
            .await
            .unwrap();
        assert_eq!(done.blocks, [("f".to_string(), c.to_hex())]);
        assert!(store.has_block("f", &a).await.unwrap(), "a kept version");
        assert!(store.has_block("f", &b).await.unwrap(), "the live file");
        assert!(
            store.has_block("f", &d).await.unwrap(),
            "in its grace period"
        );
        assert_eq!(store.usage("ann").await.unwrap().unwrap().stored, 30);
        let versions = store.versions("f", "e").await.unwrap();
        assert_eq!(versions.len(), 2);
        assert!(versions[0].current && versions[0].version == 2);
        assert_eq!(versions[1].version, 1);

        // No history kept: the old version and the stale upload go.
        let none = Retention {
            versions_per_file: 0,
            keep_for: Duration::ZERO,
            ..keep
        };
        let done = store.collect(later, &none).await.unwrap();
        assert_eq!(done.versions, 1);
        assert_eq!(done.blocks.len(), 2);
        assert!(store.has_block("f", &b).await.unwrap());
        assert_eq!(store.usage("ann").await.unwrap().unwrap().stored, 10);

        // A deleted file stays in the trash, then goes.
        let mut gone = file(&[b], 3);
        gone.deleted = true;
        save(&store, &gone).await;
        assert_eq!(store.trash("f", 0).await.unwrap().len(), 1);
        store.collect(later, &none).await.unwrap();
        assert!(store.has_block("f", &b).await.unwrap(), "in the trash");
        let no_trash = Retention {
            trash_for: Duration::ZERO,
            ..none
        };
        store.collect(later + 1, &no_trash).await.unwrap();
        assert!(!store.has_block("f", &b).await.unwrap());
        assert_eq!(store.usage("ann").await.unwrap().unwrap().stored, 0);
    }
}
