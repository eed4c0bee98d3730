//! Bounds on logins, so that guessing passwords is slow and a flood of logins cannot starve
//! the cloud: failures are counted per user and per source address within a window, and
//! past the bound a login is refused with 429 and the seconds until it may try again;
//! password checks (Argon2id, tens of milliseconds and 19 MiB each) run a few at a time,
//! and only a bounded number wait for a turn. Failures are counted in the database, by
//! every process together; the turns are each process's own (they bound its CPU and
//! memory).

use super::account::valid_user_name;
use super::store::{Store, StoreError};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The bounds.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Failures allowed per user, and per source address, within `window`.
    pub failures: usize,
    pub window: Duration,
    /// Password checks at once.
    pub checks: usize,
    /// Logins waiting for a check; more are refused at once.
    pub waiting: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(60),
            checks: 2,
            waiting: 16,
        }
    }
}

pub struct LoginThrottle {
    rules: Rules,
    checks: Semaphore,
    waiting: AtomicUsize,
}

/// The names a login's failures are counted under: its user (when it could be one) and
/// its source address.
fn counted_as(user: &str, source: IpAddr) -> Vec<String> {
    let mut who = vec![format!("a:{}", source.to_canonical())];
    if valid_user_name(user) {
        who.push(format!("u:{user}"));
    }
    who
}

impl LoginThrottle {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            checks: Semaphore::new(rules.checks.max(1)),
            waiting: AtomicUsize::new(0),
        }
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.rules.window.as_millis()).unwrap_or(i64::MAX)
    }

    /// `Some(seconds)` when `user` or `source` failed too often lately: how long until the
    /// oldest of those failures leaves the window.
    pub async fn retry_after(
        &self,
        store: &Store,
        user: &str,
        source: IpAddr,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let who = counted_as(user, source);
        let who: Vec<&str> = who.iter().map(String::as_str).collect();
        let window = self.window_ms();
        let since = now_ms.saturating_sub(window);
        let failures = store
            .login_failures(&who, since, self.rules.failures)
            .await?;
        Ok(failures
            .iter()
            .filter(|times| times.len() >= self.rules.failures)
            .filter_map(|times| times.last())
            .map(|oldest| {
                let left = window.saturating_sub(now_ms.saturating_sub(*oldest));
                u64::try_from(left / 1000).unwrap_or(0).max(1)
            })
            .max())
    }

    /// Notes a failed login of `user` from `source` at `now_ms`.
    pub async fn failed(
        &self,
        store: &Store,
        user: &str,
        source: IpAddr,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let who = counted_as(user, source);
        let who: Vec<&str> = who.iter().map(String::as_str).collect();
        let forget = now_ms.saturating_sub(self.window_ms());
        store.note_login_failure(&who, now_ms, forget).await
    }

    /// A turn to check a password, or `Err(seconds)` when too many wait already.
    pub async fn turn(&self) -> Result<SemaphorePermit<'_>, u64> {
        if let Ok(permit) = self.checks.try_acquire() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.rules.waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(1);
        }
        let permit = self.checks.acquire().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await;
        (dir, store)
    }

    #[tokio::test]
    async fn a_user_is_refused_past_its_failures_until_the_window_moves_on() {
        let (_dir, store) = store().await;
        let t = LoginThrottle::new(Rules::default());
        let start = 1_000_000;
        for i in 0..5 {
            let at = ip(&format!("10.0.0.{}", i + 1));
            assert_eq!(t.retry_after(&store, "ann", at, start).await.unwrap(), None);
            t.failed(&store, "ann", at, start).await.unwrap();
        }
        let elsewhere = ip("10.9.9.9");
        assert_eq!(
            t.retry_after(&store, "ann", elsewhere, start)
                .await
                .unwrap(),
            Some(60),
            "any address"
        );
        assert_eq!(
            t.retry_after(&store, "bob", elsewhere, start)
                .await
                .unwrap(),
            None,
            "another user"
        );
        let later = start + 45_000;
        assert_eq!(
            t.retry_after(&store, "ann", elsewhere, later)
                .await
                .unwrap(),
            Some(15)
        );
        let after = start + 60_000;
        assert_eq!(
            t.retry_after(&store, "ann", elsewhere, after)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_address_is_refused_past_its_failures_whatever_the_user() {
        let (_dir, store) = store().await;
        let t = LoginThrottle::new(Rules::default());
        let now = 1_000_000;
        for i in 0..5 {
            let user = format!("user{i}");
            t.failed(&store, &user, ip("10.0.0.1"), now).await.unwrap();
        }
        for (user, at, refused) in [
            ("someone", "10.0.0.1", true),
            ("someone", "::ffff:10.0.0.1", true),
            ("someone", "10.0.0.2", false),
            // Not a user name: counted by its address alone.
            ("../x", "10.0.0.2", false),
        ] {
            let found = t.retry_after(&store, user, ip(at), now).await.unwrap();
            assert_eq!(found.is_some(), refused, "{user} from {at}");
        }
    }

    #[tokio::test]
    async fn failures_noted_by_one_process_count_in_another() {
        let (_dir, store) = store().await;
        let (one, two) = (
            LoginThrottle::new(Rules::default()),
            LoginThrottle::new(Rules::default()),
        );
        let now = 1_000_000;
        for i in 0..5 {
            let by = if i % 2 == 0 { &one } else { &two };
            by.failed(&store, "ann", ip("10.0.0.1"), now).await.unwrap();
        }
        for t in [&one, &two] {
            let found = t.retry_after(&store, "ann", ip("10.0.0.7"), now).await;
            assert_eq!(found.unwrap(), Some(60));
        }
    }

    #[tokio::test]
    async fn only_a_bounded_number_wait_for_a_check() {
        let t = LoginThrottle::new(Rules {
            checks: 1,
            waiting: 2,
            ..Rules::default()
        });
        let first = t.turn().await.unwrap();
        let waiters: Vec<_> = (0..2).map(|_| Box::pin(t.turn())).collect();
        let mut waiters = waiters;
        for w in &mut waiters {
            assert!(futures::poll!(w.as_mut()).is_pending());
        }
        assert_eq!(t.turn().await.unwrap_err(), 1, "a third waiter is refused");
        drop(first);
        let second = waiters.remove(0).await.unwrap();
        drop(second);
        assert!(waiters.remove(0).await.is_ok());
    }
}
