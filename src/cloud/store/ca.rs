//! The cloud's CA, in the database so that every cloud process serves a certificate the
//! devices' pinned CA signed, whichever machine it runs on (`cloud/keys.rs` decides which
//! CA is stored first).

use super::{Store, StoreError};
use crate::net::tls::Ca;
use sqlx::Row;
use zeroize::Zeroizing;

impl Store {
    /// The cloud's CA, once a process stored one.
    pub async fn ca(&self) -> Result<Option<Ca>, StoreError> {
        let row = sqlx::query("SELECT cert, private_key FROM cloud_ca WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Ca {
                cert_pem: row.try_get("cert")?,
                key_pem: Zeroizing::new(row.try_get("private_key")?),
            })
        })
        .transpose()
    }

    /// Stores `ca` as the cloud's CA, unless one is stored already: the first stays.
    pub async fn add_ca(&self, ca: &Ca) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cloud_ca (id, cert, private_key) VALUES (1, $1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_pem)
        .bind(ca.key_pem.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::CLOUD_CA_NAME;

    #[tokio::test]
    async fn the_first_ca_stored_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await;
        assert!(store.ca().await.unwrap().is_none());
        let first = Ca::generate(CLOUD_CA_NAME).unwrap();
        store.add_ca(&first).await.unwrap();
        store
            .add_ca(&Ca::generate(CLOUD_CA_NAME).unwrap())
            .await
            .unwrap();
        drop(store);
        let stored = Store::open_in(dir.path())
            .await
            .ca()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.cert_pem, first.cert_pem);
        assert_eq!(stored.key_pem, first.key_pem);
    }
}
