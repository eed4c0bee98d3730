//! The cloud's ticket-signing keys, in the database so that every cloud process signs and
//! checks with the same ones (`cloud/keys.rs` decides which key signs and which are
//! published).

use super::{AnyRow, Store, StoreError};
use sqlx::Row;
use zeroize::Zeroizing;

/// A signing key as stored: its key id, PKCS#8 PEM, and from when it signs (ms).
pub struct StoredKey {
    pub kid: String,
    pub private_key: Zeroizing<String>,
    pub signs_from_ms: i64,
}

fn key_from(row: &AnyRow) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        kid: row.try_get("kid")?,
        private_key: Zeroizing::new(row.try_get("private_key")?),
        signs_from_ms: row.try_get("signs_from_ms")?,
    })
}

impl Store {
    /// Every stored signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, private_key, signs_from_ms FROM signing_keys ORDER BY signs_from_ms, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from).collect()
    }

    /// Adds a signing key (nothing if its kid is stored already).
    pub async fn add_signing_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_key, signs_from_ms) VALUES ($1, $2, $3)
             ON CONFLICT (kid) DO NOTHING",
        )
        .bind(&key.kid)
        .bind(key.private_key.as_str())
        .bind(key.signs_from_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the keys signed with no longer (their tickets have all expired).
    pub async fn drop_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
