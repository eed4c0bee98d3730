//! What the listeners (a device's peer listener, the relay) share: bounds on the
//! connections open at once from one source address and in total, so that one address,
//! or many, cannot hold every socket a listener has. A connection is admitted before
//! anything is read from it, and counted until its [`Admitted`] is dropped. Also the
//! TLS every server and client of meshfs uses (`tls`), and the Prometheus endpoint
//! (`metrics`).

pub mod metrics;
pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The most connections a listener keeps open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// From one source address.
    pub per_source: usize,
    /// From all sources together.
    pub total: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    #[error("{0} connections from this address are open already")]
    Source(usize),
    #[error("{0} connections are open already")]
    Total(usize),
}

/// The connections a listener has open, by source address.
#[derive(Debug)]
pub struct ConnectionLimits {
    bounds: Bounds,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    by_source: HashMap<IpAddr, usize>,
    total: usize,
}

impl ConnectionLimits {
    pub fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            open: Mutex::new(Open::default()),
        })
    }

    /// Counts a connection from `source` if both bounds leave room for it. An IPv4
    /// address seen as IPv6 (`::ffff:a.b.c.d`) is the same source as the IPv4 one.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, OverLimit> {
        let source = source.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.bounds.total {
            return Err(OverLimit::Total(open.total));
        }
        let from_source = open.by_source.entry(source).or_default();
        if *from_source >= self.bounds.per_source {
            return Err(OverLimit::Source(*from_source));
        }
        *from_source += 1;
        open.total += 1;
        Ok(Admitted {
            limits: Arc::clone(self),
            source,
        })
    }

    /// The connections admitted and not yet let go.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One admitted connection; dropping it makes room for another.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(per_source: usize, total: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(Bounds { per_source, total })
    }

    #[test]
    fn one_source_gets_no_more_than_its_bound_and_others_still_get_in() {
        let limits = limits(2, 10);
        let held: Vec<_> = (0..2)
            .map(|_| limits.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            limits.admit(ip("10.0.0.1")).unwrap_err(),
            OverLimit::Source(2)
        );
        assert!(limits.admit(ip("10.0.0.2")).is_ok(), "another source");
        drop(held);
    }

    #[test]
    fn an_ipv4_address_seen_as_ipv6_is_the_same_source() {
        let limits = limits(1, 10);
        let _held = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limits.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            OverLimit::Source(1)
        );
    }

    #[test]
    fn all_sources_together_get_no_more_than_the_total() {
        let limits = limits(2, 3);
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .into_iter()
            .map(|s| limits.admit(ip(s)).unwrap())
            .collect();
        assert_eq!(
            limits.admit(ip("10.0.0.4")).unwrap_err(),
            OverLimit::Total(3)
        );
        drop(held);
        assert!(limits.admit(ip("10.0.0.4")).is_ok());
    }

    #[test]
    fn a_dropped_connection_makes_room_for_its_source_and_the_total() {
        let limits = limits(1, 1);
        let first = limits.admit(ip("10.0.0.1")).unwrap();
        assert!(limits.admit(ip("10.0.0.1")).is_err());
        assert!(limits.admit(ip("10.0.0.2")).is_err());
        drop(first);
        let second = limits.admit(ip("10.0.0.1")).unwrap();
        drop(second);
        assert!(limits.admit(ip("10.0.0.2")).is_ok());
        assert!(
            limits.open.lock().unwrap().by_source.is_empty(),
            "sources with nothing open are forgotten"
        );
    }
}
