//! Failed logins, by user and by source address, so that every cloud process on one
//! database counts them together (see `cloud/throttle.rs` for what is done with them).
//! Only failures within the throttle's window are kept: each new one clears out the old.

use super::{Store, StoreError};
use sqlx::Row;

impl Store {
    /// The times (ms) of the latest failures of each of `who` since `since_ms`, newest
    /// first, at most `limit` each.
    pub async fn login_failures(
        &self,
        who: &[&str],
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<Vec<i64>>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(who.len());
        for w in who {
            let rows = sqlx::query(
                "SELECT at_ms FROM login_failures WHERE who = $1 AND at_ms > $2
                 ORDER BY at_ms DESC LIMIT $3",
            )
            .bind(*w)
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            out.push(
                rows.iter()
                    .map(|r| r.try_get("at_ms"))
                    .collect::<Result<_, _>>()?,
            );
        }
        Ok(out)
    }

    /// Notes a failure of each of `who` at `at_ms`, and forgets every failure at or before
    /// `forget_ms`.
    pub async fn note_login_failure(
        &self,
        who: &[&str],
        at_ms: i64,
        forget_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM login_failures WHERE at_ms <= $1")
            .bind(forget_ms)
            .execute(&mut *tx)
            .await?;
        for w in who {
            sqlx::query("INSERT INTO login_failures (who, at_ms) VALUES ($1, $2)")
                .bind(*w)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Store;

    #[tokio::test]
    async fn failures_are_counted_per_name_newest_first_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await;
        for at in [10, 20, 30] {
            store
                .note_login_failure(&["u:ann", "a:10.0.0.1"], at, 0)
                .await
                .unwrap();
        }
        store
            .note_login_failure(&["u:bob", "a:10.0.0.1"], 40, 0)
            .await
            .unwrap();
        let found = store
            .login_failures(&["u:ann", "a:10.0.0.1", "u:eve"], 0, 3)
            .await
            .unwrap();
        assert_eq!(found, [vec![30, 20, 10], vec![40, 30, 20], vec![]]);
        let since = store.login_failures(&["u:ann"], 15, 5).await.unwrap();
        assert_eq!(since, [vec![30, 20]]);

        store.note_login_failure(&["u:eve"], 50, 30).await.unwrap();
        let left = store
            .login_failures(&["u:ann", "a:10.0.0.1", "u:eve"], 0, 5)
            .await
            .unwrap();
        assert_eq!(left, [vec![], vec![40], vec![50]], "30 and before are gone");
    }
}
