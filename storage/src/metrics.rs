//! Counters of a storage migration and the on-demand fetch latency, exported
//! by the gateway as `wanmig_storage_*` (names in [`MetricsSnapshot::samples`]).
//!
//! Plain atomics and an HDR histogram keep this crate free of a metrics
//! registry; the gateway owns the Prometheus registry and copies these in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Live counters of one disk's migration.
#[derive(Debug)]
pub struct StorageMetrics {
    blocks_copied: AtomicU64,
    blocks_fetched_on_demand: AtomicU64,
    blocks_written_locally: AtomicU64,
    blocks_discarded: AtomicU64,
    hole_blocks_skipped: AtomicU64,
    bytes_before_reduction: AtomicU64,
    bytes_after_reduction: AtomicU64,
    fetch_timeouts: AtomicU64,
    demand_latency_us: Mutex<Histogram<u64>>,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            blocks_copied: AtomicU64::new(0),
            blocks_fetched_on_demand: AtomicU64::new(0),
            blocks_written_locally: AtomicU64::new(0),
            blocks_discarded: AtomicU64::new(0),
            hole_blocks_skipped: AtomicU64::new(0),
            bytes_before_reduction: AtomicU64::new(0),
            bytes_after_reduction: AtomicU64::new(0),
            fetch_timeouts: AtomicU64::new(0),
            // 1 µs .. 1 h, 3 significant digits: fixed bounds, cannot fail.
            demand_latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }
}

impl StorageMetrics {
    pub(crate) fn block_copied(&self) {
        self.blocks_copied.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn block_fetched_on_demand(&self, latency: Duration) {
        self.blocks_fetched_on_demand
            .fetch_add(1, Ordering::Relaxed);
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut h) = self.demand_latency_us.lock() {
            h.saturating_record(us);
        }
    }
    pub(crate) fn blocks_written(&self, n: u64) {
        self.blocks_written_locally.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn block_discarded(&self) {
        self.blocks_discarded.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn holes_skipped(&self, n: u64) {
        self.hole_blocks_skipped.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn wire_bytes(&self, before: u64, after: u64) {
        self.bytes_before_reduction
            .fetch_add(before, Ordering::Relaxed);
        self.bytes_after_reduction
            .fetch_add(after, Ordering::Relaxed);
    }
    pub(crate) fn fetch_timeout(&self) {
        self.fetch_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let (p50, p99, n) = match self.demand_latency_us.lock() {
            Ok(h) if !h.is_empty() => (
                Duration::from_micros(h.value_at_quantile(0.5)),
                Duration::from_micros(h.value_at_quantile(0.99)),
                h.len(),
            ),
            _ => (Duration::ZERO, Duration::ZERO, 0),
        };
        MetricsSnapshot {
            blocks_copied: self.blocks_copied.load(Ordering::Relaxed),
            blocks_fetched_on_demand: self.blocks_fetched_on_demand.load(Ordering::Relaxed),
            blocks_written_locally: self.blocks_written_locally.load(Ordering::Relaxed),
            blocks_discarded: self.blocks_discarded.load(Ordering::Relaxed),
            hole_blocks_skipped: self.hole_blocks_skipped.load(Ordering::Relaxed),
            bytes_before_reduction: self.bytes_before_reduction.load(Ordering::Relaxed),
            bytes_after_reduction: self.bytes_after_reduction.load(Ordering::Relaxed),
            fetch_timeouts: self.fetch_timeouts.load(Ordering::Relaxed),
            demand_latency_p50: p50,
            demand_latency_p99: p99,
            demand_latency_count: n,
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Blocks stored by the background copy.
    pub blocks_copied: u64,
    /// Blocks stored because a guest request waited for them.
    pub blocks_fetched_on_demand: u64,
    /// Blocks made local by guest writes at the destination.
    pub blocks_written_locally: u64,
    /// Arrivals dropped because the block was already local.
    pub blocks_discarded: u64,
    /// Blocks never fetched because they are holes at the source.
    pub hole_blocks_skipped: u64,
    /// Logical bytes of blocks that crossed the wire.
    pub bytes_before_reduction: u64,
    /// Payload bytes that crossed the wire for them.
    pub bytes_after_reduction: u64,
    /// Guest requests that timed out waiting for the source.
    pub fetch_timeouts: u64,
    /// Median on-demand fetch latency (request sent → block arrived).
    pub demand_latency_p50: Duration,
    /// 99th percentile on-demand fetch latency.
    pub demand_latency_p99: Duration,
    /// Number of on-demand latency samples.
    pub demand_latency_count: u64,
}

impl MetricsSnapshot {
    /// `(name, help, value)` triples under the `wanmig_storage_` prefix, for
    /// the gateway's exporter. Latencies are in seconds.
    pub fn samples(&self) -> Vec<(&'static str, &'static str, f64)> {
        vec![
            (
                "wanmig_storage_blocks_copied_total",
                "Blocks stored by the background copy",
                self.blocks_copied as f64,
            ),
            (
                "wanmig_storage_blocks_fetched_on_demand_total",
                "Blocks fetched because guest I/O waited for them",
                self.blocks_fetched_on_demand as f64,
            ),
            (
                "wanmig_storage_blocks_written_locally_total",
                "Blocks made local by guest writes at the destination",
                self.blocks_written_locally as f64,
            ),
            (
                "wanmig_storage_blocks_discarded_total",
                "Arrived blocks dropped because they were already local",
                self.blocks_discarded as f64,
            ),
            (
                "wanmig_storage_hole_blocks_skipped_total",
                "Blocks never sent because they are holes at the source",
                self.hole_blocks_skipped as f64,
            ),
            (
                "wanmig_storage_bytes_before_reduction_total",
                "Logical bytes of blocks sent",
                self.bytes_before_reduction as f64,
            ),
            (
                "wanmig_storage_bytes_after_reduction_total",
                "Wire bytes of blocks sent after zero/zstd reduction",
                self.bytes_after_reduction as f64,
            ),
            (
                "wanmig_storage_fetch_timeouts_total",
                "Guest I/O requests that timed out waiting for the source",
                self.fetch_timeouts as f64,
            ),
            (
                "wanmig_storage_on_demand_fetch_latency_p50_seconds",
                "Median on-demand fetch latency",
                self.demand_latency_p50.as_secs_f64(),
            ),
            (
                "wanmig_storage_on_demand_fetch_latency_p99_seconds",
                "99th percentile on-demand fetch latency",
                self.demand_latency_p99.as_secs_f64(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latency_quantiles() {
        let m = StorageMetrics::default();
        m.block_copied();
        m.blocks_written(3);
        for ms in 1..=100 {
            m.block_fetched_on_demand(Duration::from_millis(ms));
        }
        m.wire_bytes(65536, 1000);
        let s = m.snapshot();
        assert_eq!(
            (
                s.blocks_copied,
                s.blocks_written_locally,
                s.blocks_fetched_on_demand
            ),
            (1, 3, 100)
        );
        assert_eq!(s.demand_latency_count, 100);
        let p50 = s.demand_latency_p50.as_millis();
        let p99 = s.demand_latency_p99.as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert!((98..=100).contains(&p99), "{p99}");
        let names: Vec<_> = s.samples().iter().map(|x| x.0).collect();
        assert!(names.iter().all(|n| n.starts_with("wanmig_storage_")));
        assert_eq!(s.samples()[5].2, 65536.0);
    }
}
