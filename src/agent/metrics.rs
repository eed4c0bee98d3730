//! The agent's counters for Prometheus (`meshfs mount --metrics-listen`), read from the
//! live [`Counters`] at each scrape: the totals `meshfs status` shows, as counters, and the
//! cache's and the cloud's usage, as gauges.

use super::status::Counters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Encodes an agent's counters under `meshfs_agent_`.
pub struct AgentCollector(pub Arc<Counters>);

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCollector")
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let totals = serde_json::to_value(self.0.snapshot()).map_err(|_| std::fmt::Error)?;
        for (name, value) in totals.as_object().into_iter().flatten() {
            let counter = ConstCounter::new(value.as_u64().unwrap_or(0));
            let help = format!("The agent's {} since it started", name.replace('_', " "));
            let name = format!("meshfs_agent_{name}");
            let metric = encoder.encode_descriptor(&name, &help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let c = &self.0;
        let gauges = [
            (
                "cache_limit_bytes",
                "The block cache's limit",
                &c.cache_limit,
            ),
            (
                "cache_used_bytes",
                "Bytes of blocks in the cache",
                &c.cache_used,
            ),
            (
                "cache_kept_bytes",
                "Bytes the cache must keep",
                &c.cache_kept,
            ),
            (
                "cloud_quota_bytes",
                "The user's cloud quota",
                &c.cloud_quota,
            ),
            (
                "cloud_used_bytes",
                "Bytes the user stores in the cloud",
                &c.cloud_used,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value.load(Relaxed)).unwrap_or(i64::MAX));
            let name = format!("meshfs_agent_{name}");
            let metric = encoder.encode_descriptor(&name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let reachable = ConstGauge::new(i64::from(c.cloud_reachable.load(Relaxed)));
        let metric = encoder.encode_descriptor(
            "meshfs_agent_cloud_reachable",
            "1 while the cloud answers",
            None,
            reachable.metric_type(),
        )?;
        reachable.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_counters_and_gauges_show_in_the_text() {
        let counters = Arc::new(Counters::default());
        Counters::add(&counters.blocks_fetched, 3);
        counters.cache_used.store(4096, Relaxed);
        counters.cloud_reachable.store(true, Relaxed);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AgentCollector(Arc::clone(&counters))));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "meshfs_agent_blocks_fetched_total 3",
            "meshfs_agent_bytes_uploaded_total 0",
            "meshfs_agent_cache_used_bytes 4096",
            "meshfs_agent_cloud_reachable 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
