//! The `wanmig_migration_*` metrics: migrations by outcome, rounds, pages by
//! record kind, bytes before and after reduction, downtime, the page
//! store's size and hit rate, and the codec level in force. Counters are
//! fed per finished session from the codec's statistics.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use wanmig_codec::EncoderStats;

use super::stores::ScopeStore;

pub struct MigrationMetrics {
    pub outcomes: IntCounterVec,
    pub rounds: IntCounter,
    pub pages: IntCounterVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub downtime: Histogram,
    pub store_bytes: IntGauge,
    pub store_hit_rate: Gauge,
    pub codec_level: IntGauge,
    /// Incoming migrations held parked (confirmed, paused) until settled.
    pub parked: IntGauge,
}

impl MigrationMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "wanmig_migration_total",
                "Migrations this gateway relayed as the source, by outcome",
            ),
            &["outcome"],
        )?;
        let rounds = IntCounter::new(
            "wanmig_migration_rounds_total",
            "Pre-copy rounds relayed (as seen in the page order)",
        )?;
        let pages = IntCounterVec::new(
            Opts::new(
                "wanmig_migration_pages_total",
                "Pages relayed, by record kind (zero/ref/delta/compressed/raw)",
            ),
            &["kind"],
        )?;
        let bytes_in = IntCounter::new(
            "wanmig_migration_bytes_before_reduction_total",
            "Guest page bytes handed to the encoder",
        )?;
        let bytes_out = IntCounter::new(
            "wanmig_migration_bytes_after_reduction_total",
            "Encoded batch bytes sent over the WAN",
        )?;
        let downtime = Histogram::with_opts(
            HistogramOpts::new(
                "wanmig_migration_downtime_seconds",
                "Source pause until the destination reported the VM running",
            )
            .buckets(vec![
                0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
            ]),
        )?;
        let store_bytes = IntGauge::new(
            "wanmig_migration_page_store_bytes",
            "Bytes of page content held in this site's page stores",
        )?;
        let store_hit_rate = Gauge::new(
            "wanmig_migration_page_store_hit_rate",
            "Share of page-store lookups that found the content",
        )?;
        let codec_level = IntGauge::new(
            "wanmig_migration_codec_level",
            "Compression level the adaptive controller set for the latest outgoing migration batch (zstd level; -8 is LZ4)",
        )?;
        let parked = IntGauge::new(
            "wanmig_migration_parked",
            "Incoming VMs held paused after a lost link until the source or an operator settles them (`wanmig migration settle`)",
        )?;
        registry.register(Box::new(parked.clone()))?;
        registry.register(Box::new(codec_level.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(rounds.clone()))?;
        registry.register(Box::new(pages.clone()))?;
        registry.register(Box::new(bytes_in.clone()))?;
        registry.register(Box::new(bytes_out.clone()))?;
        registry.register(Box::new(downtime.clone()))?;
        registry.register(Box::new(store_bytes.clone()))?;
        registry.register(Box::new(store_hit_rate.clone()))?;
        Ok(MigrationMetrics {
            outcomes,
            rounds,
            pages,
            bytes_in,
            bytes_out,
            downtime,
            store_bytes,
            store_hit_rate,
            codec_level,
            parked,
        })
    }

    /// Adds a finished outgoing session's encoder statistics.
    pub fn observe_encoder(&self, s: &EncoderStats, last_round: u32) {
        self.rounds.inc_by(u64::from(last_round) + 1);
        for (kind, n) in s.by_kind().iter() {
            self.pages.with_label_values(&[kind.name()]).inc_by(n);
        }
        self.bytes_in.inc_by(s.bytes_in);
        self.bytes_out.inc_by(s.bytes_out);
    }

    /// Samples a page store's size and hit rate.
    pub fn observe_store(&self, store: &ScopeStore) {
        if let Some(s) = store.stats() {
            self.store_bytes.set(s.bytes() as i64);
            self.store_hit_rate.set(s.hit_rate());
        }
    }
}
