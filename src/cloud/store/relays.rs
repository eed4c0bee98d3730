//! The relays that run on their own machines (DESIGN §5), as the cloud's operator added
//! them: where each listens and the CA its certificate chains to. Every cloud process
//! tells devices of the same list.

use super::{Store, StoreError};
use crate::proto::{RelayInfo, now_ms};
use sqlx::Row;

impl Store {
    /// The relays added, oldest first (the order devices try them in).
    pub async fn relays(&self) -> Result<Vec<RelayInfo>, StoreError> {
        let rows = sqlx::query("SELECT addr, ca FROM relays ORDER BY added_ms, addr")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RelayInfo {
                    addr: row.try_get("addr")?,
                    ca: row.try_get("ca")?,
                })
            })
            .collect()
    }

    /// Adds a relay, or gives one already added a new CA.
    pub async fn add_relay(&self, relay: &RelayInfo) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relays (addr, ca, added_ms) VALUES ($1, $2, $3)
             ON CONFLICT (addr) DO UPDATE SET ca = excluded.ca",
        )
        .bind(&relay.addr)
        .bind(&relay.ca)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a relay; false if none was added at `addr`.
    pub async fn remove_relay(&self, addr: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM relays WHERE addr = $1")
            .bind(addr)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
