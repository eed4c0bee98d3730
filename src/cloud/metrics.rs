//! What a cloud process counts for Prometheus (`--metrics-listen`): requests by route,
//! method and status with their latency, tickets signed by kind, blocks stored and freed,
//! logins refused, and the long polls waiting on the change feed. Each process counts its
//! own; a scraper sums them.

use crate::proto::TicketKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    /// The route's template, e.g. `/folders/{folder}/entries/{entry}`.
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

type Latency = Family<Route, Histogram, fn() -> Histogram>;

/// The cloud's metrics; cheap to update from any handler.
#[derive(Debug)]
pub struct CloudMetrics {
    requests: Family<Request, Counter>,
    latency: Latency,
    tickets: Family<Kind, Counter>,
    blocks_stored: Counter,
    block_bytes_stored: Counter,
    blocks_freed: Counter,
    logins_refused: Counter,
    feed_waiters: Gauge,
}

/// 0.25 ms to about 8 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl CloudMetrics {
    /// Metrics registered in `registry` under `meshfs_cloud_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            tickets: Family::default(),
            blocks_stored: Counter::default(),
            block_bytes_stored: Counter::default(),
            blocks_freed: Counter::default(),
            logins_refused: Counter::default(),
            feed_waiters: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("meshfs_cloud");
        r.register("requests", "HTTP requests answered", m.requests.clone());
        r.register_with_unit(
            "request_duration",
            "Time to answer an HTTP request (long polls included)",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register("tickets_signed", "Tickets signed", m.tickets.clone());
        r.register(
            "blocks_stored",
            "New blocks stored",
            m.blocks_stored.clone(),
        );
        r.register_with_unit(
            "block_stored",
            "Bytes of new blocks stored",
            Unit::Bytes,
            m.block_bytes_stored.clone(),
        );
        r.register(
            "blocks_freed",
            "Blocks freed by the collector",
            m.blocks_freed.clone(),
        );
        r.register(
            "logins_refused",
            "Logins refused for a wrong user or password (those refused for too many failures answer 429)",
            m.logins_refused.clone(),
        );
        r.register(
            "feed_waiters",
            "Long polls waiting on the change feed",
            m.feed_waiters.clone(),
        );
        m
    }

    /// One request answered.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let (route, method) = (route.to_string(), method.to_string());
        self.requests
            .get_or_create(&Request {
                route: route.clone(),
                method: method.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route { route, method })
            .observe(took.as_secs_f64());
    }

    pub fn ticket_signed(&self, kind: TicketKind) {
        let kind = kind.as_str().to_string();
        self.tickets.get_or_create(&Kind { kind }).inc();
    }

    pub fn block_stored(&self, bytes: u64) {
        self.blocks_stored.inc();
        self.block_bytes_stored.inc_by(bytes);
    }

    pub fn blocks_freed(&self, n: u64) {
        self.blocks_freed.inc_by(n);
    }

    pub fn login_refused(&self) {
        self.logins_refused.inc();
    }

    /// Counts a long poll as waiting until the guard is dropped.
    pub fn feed_waiter(&self) -> FeedWaiter {
        self.feed_waiters.inc();
        FeedWaiter(self.feed_waiters.clone())
    }
}

/// A long poll waiting on the feed (see [`CloudMetrics::feed_waiter`]).
pub struct FeedWaiter(Gauge);

impl Drop for FeedWaiter {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn requests_tickets_blocks_and_waiters_show_in_the_text() {
        let mut registry = Registry::default();
        let m = CloudMetrics::new(&mut registry);
        m.request("/folders/{folder}", "GET", 200, Duration::from_millis(3));
        m.request("/folders/{folder}", "GET", 200, Duration::from_millis(5));
        m.ticket_signed(TicketKind::Access);
        m.block_stored(1 << 20);
        m.blocks_freed(2);
        let waiting = m.feed_waiter();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"meshfs_cloud_requests_total{route="/folders/{folder}",method="GET",status="200"} 2"#,
            r#"meshfs_cloud_request_duration_seconds_count{route="/folders/{folder}",method="GET"} 2"#,
            r#"meshfs_cloud_tickets_signed_total{kind="access"} 1"#,
            "meshfs_cloud_blocks_stored_total 1",
            "meshfs_cloud_block_stored_bytes_total 1048576",
            "meshfs_cloud_blocks_freed_total 2",
            "meshfs_cloud_feed_waiters 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop(waiting);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("meshfs_cloud_feed_waiters 0"), "{text}");
    }
}
