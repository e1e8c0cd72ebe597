//! The `wanmig_storage_*` Prometheus metrics of one gateway's storage relay.
//!
//! Block and byte counters come from each imported disk's own counters
//! ([`wanmig_storage::metrics::StorageMetrics`]): [`RelayMetrics::add_growth`]
//! adds the growth between two snapshots of the same disk, so the gateway's
//! counters stay monotonic across imports. The on-demand fetch latency is
//! observed by the relay itself (request sent → block arrived), and copies
//! are counted by outcome when they end.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use wanmig_storage::metrics::MetricsSnapshot;

/// How a copy ended (label `outcome` of `wanmig_storage_copies_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
    /// Every block local, durable, verified by the source and released.
    Verified,
    /// The source refused or the end-of-copy check failed.
    Failed,
}

impl CopyOutcome {
    fn label(self) -> &'static str {
        match self {
            CopyOutcome::Verified => "verified",
            CopyOutcome::Failed => "failed",
        }
    }
}

/// The relay's metrics (registered into a registry by
/// [`RelayMetrics::register`]; counting works unregistered too).
#[derive(Clone)]
pub struct RelayMetrics {
    blocks: IntCounterVec,
    bytes_before: IntCounter,
    bytes_after: IntCounter,
    fetch_timeouts: IntCounter,
    demand_latency: Histogram,
    copies: IntCounterVec,
    served_bytes: IntCounter,
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayMetrics").finish_non_exhaustive()
    }
}

impl RelayMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(RelayMetrics {
            blocks: IntCounterVec::new(
                Opts::new(
                    "wanmig_storage_blocks_total",
                    "Blocks of imported disks made local, by how: copied (background), on_demand (a guest read waited), written (guest writes at this site), holes (skipped, a hole at the source), discarded (arrived twice)",
                ),
                &["how"],
            )?,
            bytes_before: IntCounter::new(
                "wanmig_storage_bytes_before_reduction_total",
                "Logical bytes of disk blocks received from source sites",
            )?,
            bytes_after: IntCounter::new(
                "wanmig_storage_bytes_after_reduction_total",
                "Payload bytes on the wire for those blocks (after zero elision and zstd)",
            )?,
            fetch_timeouts: IntCounter::new(
                "wanmig_storage_fetch_timeouts_total",
                "Guest disk requests that timed out waiting for blocks from the source site",
            )?,
            demand_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "wanmig_storage_on_demand_fetch_seconds",
                    "Time from an on-demand block request to the block's arrival",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            copies: IntCounterVec::new(
                Opts::new(
                    "wanmig_storage_copies_total",
                    "Storage copies into this site that ended, by outcome",
                ),
                &["outcome"],
            )?,
            served_bytes: IntCounter::new(
                "wanmig_storage_served_bytes_total",
                "Payload bytes of disk blocks this site served to destination sites",
            )?,
        })
    }

    /// Adds every metric to `registry` (once).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.blocks.clone()))?;
        registry.register(Box::new(self.bytes_before.clone()))?;
        registry.register(Box::new(self.bytes_after.clone()))?;
        registry.register(Box::new(self.fetch_timeouts.clone()))?;
        registry.register(Box::new(self.demand_latency.clone()))?;
        registry.register(Box::new(self.copies.clone()))?;
        registry.register(Box::new(self.served_bytes.clone()))?;
        Ok(())
    }

    /// Adds what one disk's counters grew by from `prev` to `now`.
    pub fn add_growth(&self, prev: &MetricsSnapshot, now: &MetricsSnapshot) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let by = |how: &str, n: u64| {
            if n > 0 {
                self.blocks.with_label_values(&[how]).inc_by(n);
            }
        };
        by("copied", d(prev.blocks_copied, now.blocks_copied));
        by(
            "on_demand",
            d(prev.blocks_fetched_on_demand, now.blocks_fetched_on_demand),
        );
        by(
            "written",
            d(prev.blocks_written_locally, now.blocks_written_locally),
        );
        by(
            "holes",
            d(prev.hole_blocks_skipped, now.hole_blocks_skipped),
        );
        by("discarded", d(prev.blocks_discarded, now.blocks_discarded));
        self.bytes_before
            .inc_by(d(prev.bytes_before_reduction, now.bytes_before_reduction));
        self.bytes_after
            .inc_by(d(prev.bytes_after_reduction, now.bytes_after_reduction));
        self.fetch_timeouts
            .inc_by(d(prev.fetch_timeouts, now.fetch_timeouts));
    }

    /// An on-demand block arrived `latency` after it was requested.
    pub fn on_demand_latency(&self, latency: Duration) {
        self.demand_latency.observe(latency.as_secs_f64());
    }

    /// A copy into this site ended.
    pub fn copy_ended(&self, outcome: CopyOutcome) {
        self.copies.with_label_values(&[outcome.label()]).inc();
    }

    /// This site served `bytes` of block payloads.
    pub fn served(&self, bytes: u64) {
        self.served_bytes.inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_added_per_kind_and_rendered() {
        let m = RelayMetrics::new().unwrap();
        let r = Registry::new();
        m.register(&r).unwrap();
        let a = MetricsSnapshot {
            blocks_copied: 10,
            bytes_before_reduction: 1000,
            bytes_after_reduction: 300,
            ..Default::default()
        };
        let b = MetricsSnapshot {
            blocks_copied: 15,
            blocks_written_locally: 2,
            bytes_before_reduction: 1500,
            bytes_after_reduction: 400,
            ..a
        };
        m.add_growth(&MetricsSnapshot::default(), &a);
        m.add_growth(&a, &b);
        m.on_demand_latency(Duration::from_millis(120));
        m.copy_ended(CopyOutcome::Verified);
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        for line in [
            "wanmig_storage_blocks_total{how=\"copied\"} 15",
            "wanmig_storage_blocks_total{how=\"written\"} 2",
            "wanmig_storage_bytes_before_reduction_total 1500",
            "wanmig_storage_bytes_after_reduction_total 400",
            "wanmig_storage_on_demand_fetch_seconds_count 1",
            "wanmig_storage_on_demand_fetch_seconds_bucket{le=\"0.15\"} 1",
            "wanmig_storage_on_demand_fetch_seconds_bucket{le=\"0.1\"} 0",
            "wanmig_storage_copies_total{outcome=\"verified\"} 1",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }
}
