//! Bounds on logins, so that guessing passwords is slow and a flood of logins cannot starve
//! the cloud: failures are counted per user and per source address within a window, and
//! past the bound a login is refused with 429 and the seconds until it may try again;
//! password checks (Argon2id, tens of milliseconds and 19 MiB each) run a few at a time,
//! and only a bounded number wait for a turn. Counts live in this process's memory.

use lru::LruCache;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
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

/// Users and addresses whose failures are remembered; the least recently failed go first,
/// so the memory stays bounded however many names an attacker tries.
const REMEMBERED: usize = 65_536;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Who {
    User(String),
    Source(IpAddr),
}

pub struct LoginThrottle {
    rules: Rules,
    failures: Mutex<LruCache<Who, VecDeque<Instant>>>,
    checks: Semaphore,
    waiting: AtomicUsize,
}

impl LoginThrottle {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            failures: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
            checks: Semaphore::new(rules.checks.max(1)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// `Err(seconds)` when `user` or `source` failed too often lately: how long until the
    /// oldest of those failures leaves the window.
    pub fn check(&self, user: &str, source: IpAddr, now: Instant) -> Result<(), u64> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for who in [Who::User(user.into()), Who::Source(source.to_canonical())] {
            let Some(times) = failures.get_mut(&who) else {
                continue;
            };
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.rules.window)
            {
                times.pop_front();
            }
            if times.len() >= self.rules.failures
                && let Some(oldest) = times.front()
            {
                let left = self
                    .rules
                    .window
                    .saturating_sub(now.duration_since(*oldest));
                wait = wait.max(Some(left.as_secs().max(1)));
            }
        }
        wait.map_or(Ok(()), Err)
    }

    /// Notes a failed login of `user` from `source` at `now`.
    pub fn failed(&self, user: &str, source: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for who in [Who::User(user.into()), Who::Source(source.to_canonical())] {
            let times = failures.get_or_insert_mut(who, VecDeque::new);
            times.push_back(now);
            // Only the last `failures` matter.
            while times.len() > self.rules.failures {
                times.pop_front();
            }
        }
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

    #[test]
    fn a_user_is_refused_past_its_failures_until_the_window_moves_on() {
        let t = LoginThrottle::new(Rules::default());
        let start = Instant::now();
        for i in 0..5 {
            assert_eq!(t.check("ann", ip("10.0.0.1"), start), Ok(()), "{i}");
            t.failed("ann", ip(&format!("10.0.0.{}", i + 1)), start);
        }
        assert_eq!(
            t.check("ann", ip("10.9.9.9"), start),
            Err(60),
            "any address"
        );
        assert_eq!(
            t.check("bob", ip("10.9.9.9"), start),
            Ok(()),
            "another user"
        );
        let later = start + Duration::from_secs(45);
        assert_eq!(t.check("ann", ip("10.9.9.9"), later), Err(15));
        let after = start + Duration::from_secs(60);
        assert_eq!(t.check("ann", ip("10.9.9.9"), after), Ok(()));
    }

    #[test]
    fn an_address_is_refused_past_its_failures_whatever_the_user() {
        let t = LoginThrottle::new(Rules::default());
        let now = Instant::now();
        for i in 0..5 {
            t.failed(&format!("user{i}"), ip("10.0.0.1"), now);
        }
        assert!(t.check("someone", ip("10.0.0.1"), now).is_err());
        assert!(t.check("someone", ip("::ffff:10.0.0.1"), now).is_err());
        assert_eq!(t.check("someone", ip("10.0.0.2"), now), Ok(()));
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
