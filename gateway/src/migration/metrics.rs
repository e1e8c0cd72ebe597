//! The `wanmig_migration_*` metrics: migrations by direction and outcome,
//! rounds, bytes before and after reduction and downtime by direction,
//! pages by record kind (outgoing), the page store's size and hit rate, and
//! the codec level in force. Both ends of a migration count it: the source
//! with `direction="outgoing"` from its encoder, the destination with
//! `direction="incoming"` from what it decoded. Counters are fed per
//! finished session.

use std::time::Duration;

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use wanmig_codec::EncoderStats;

use super::stores::ScopeStore;

/// The `direction` label of a migration this gateway was the source of.
pub const OUTGOING: &str = "outgoing";
/// The `direction` label of a migration this gateway was the destination
/// of.
pub const INCOMING: &str = "incoming";

/// What the destination saw of a finished incoming migration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IncomingFigures {
    /// Encoded batch bytes that arrived.
    pub wire_bytes: u64,
    /// Guest page bytes decoded from them.
    pub page_bytes: u64,
    /// Rounds pages arrived in (the last one's number + 1).
    pub rounds: u32,
    /// The pause as seen here (see `MigrationRecord::downtime_ms`).
    pub downtime: Option<Duration>,
}

pub struct MigrationMetrics {
    pub outcomes: IntCounterVec,
    pub rounds: IntCounterVec,
    pub pages: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub downtime: HistogramVec,
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
                "Migrations this gateway relayed, by direction (outgoing: as the source; incoming: as the destination) and outcome",
            ),
            &["direction", "outcome"],
        )?;
        let rounds = IntCounterVec::new(
            Opts::new(
                "wanmig_migration_rounds_total",
                "Pre-copy rounds relayed, the stop-and-copy round included (as seen in the page order), by direction",
            ),
            &["direction"],
        )?;
        let pages = IntCounterVec::new(
            Opts::new(
                "wanmig_migration_pages_total",
                "Pages this gateway relayed as the source, by record kind (zero/ref/delta/compressed/raw)",
            ),
            &["kind"],
        )?;
        let bytes_in = IntCounterVec::new(
            Opts::new(
                "wanmig_migration_bytes_before_reduction_total",
                "Guest page bytes handed to the encoder (outgoing) or decoded (incoming)",
            ),
            &["direction"],
        )?;
        let bytes_out = IntCounterVec::new(
            Opts::new(
                "wanmig_migration_bytes_after_reduction_total",
                "Encoded batch bytes sent (outgoing) or received (incoming) over the WAN",
            ),
            &["direction"],
        )?;
        let downtime = HistogramVec::new(
            HistogramOpts::new(
                "wanmig_migration_downtime_seconds",
                "Outgoing: source pause until the destination reported the VM running. Incoming: first page of the stop-and-copy round here until the VM resumed here (the source's figure adds the link's delay)",
            )
            .buckets(vec![
                0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
            ]),
            &["direction"],
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
        // Both directions are on the page from the start, at 0.
        for direction in [OUTGOING, INCOMING] {
            rounds.with_label_values(&[direction]);
            bytes_in.with_label_values(&[direction]);
            bytes_out.with_label_values(&[direction]);
            downtime.with_label_values(&[direction]);
        }
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
        self.rounds
            .with_label_values(&[OUTGOING])
            .inc_by(u64::from(last_round) + 1);
        for (kind, n) in s.by_kind().iter() {
            self.pages.with_label_values(&[kind.name()]).inc_by(n);
        }
        self.bytes_in
            .with_label_values(&[OUTGOING])
            .inc_by(s.bytes_in);
        self.bytes_out
            .with_label_values(&[OUTGOING])
            .inc_by(s.bytes_out);
    }

    /// Counts how a migration ended at this end (`direction` is
    /// [`OUTGOING`] or [`INCOMING`]).
    pub fn observe_outcome(&self, direction: &str, outcome: &str) {
        self.outcomes.with_label_values(&[direction, outcome]).inc();
    }

    /// Adds what the destination saw of a finished incoming session.
    pub fn observe_incoming(&self, f: &IncomingFigures) {
        self.rounds
            .with_label_values(&[INCOMING])
            .inc_by(u64::from(f.rounds));
        self.bytes_in
            .with_label_values(&[INCOMING])
            .inc_by(f.page_bytes);
        self.bytes_out
            .with_label_values(&[INCOMING])
            .inc_by(f.wire_bytes);
        if let Some(d) = f.downtime {
            self.downtime
                .with_label_values(&[INCOMING])
                .observe(d.as_secs_f64());
        }
    }

    /// Samples a page store's size and hit rate.
    pub fn observe_store(&self, store: &ScopeStore) {
        if let Some(s) = store.stats() {
            self.store_bytes.set(s.bytes() as i64);
            self.store_hit_rate.set(s.hit_rate());
        }
    }
}
