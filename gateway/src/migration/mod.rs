//! Cross-site live migration through the gateways: VM hosting at this site
//! ([`vmhost`]), the tokio/QUIC edge of the gateway-to-gateway session
//! ([`relay`], around the sans-IO cores and frames of
//! `wanmig_migration::session`), the site's page stores ([`stores`]), the
//! record of migrations ([`records`]) and the `wanmig_migration_*`
//! metrics ([`metrics`]).
//!
//! [`MigrationService`] ties them together: it serves incoming migration
//! streams from peers and starts outgoing ones.

pub mod api;
pub mod metrics;
pub mod pacer;
pub mod processhost;
pub mod records;
pub mod relay;
pub mod stores;
pub mod vmhost;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wanmig_codec::EncoderConfig;
use wanmig_vmm::planner::PlannerConfig;
use wanmig_vmm::MigrateOptions;

use crate::peering::{Peering, PeeringError, StreamKind};
pub use processhost::ProcessHost;
pub use records::{Direction, MigrationRecord, Outcome, Records};
use relay::RelayContext;
use stores::SiteStores;
pub use vmhost::{DiskState, HostError, VmHost, VmHosting, VmInfo, VmState};
pub use wanmig_migration::session::{Phase, Progress};

/// Migration settings of a site (the `[migration]` config section).
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// Directory of the site's page stores (one subdirectory per scope);
    /// `None`: dedup only within each migration.
    pub store_dir: Option<PathBuf>,
    /// Cap of each scope's page store, bytes.
    pub store_cap: u64,
    /// Dedup scope used when a migration names none.
    pub scope: String,
    /// Downtime budget used when a migration names none.
    pub downtime: Duration,
    /// Longest wait for the destination to accept a migration.
    pub open_timeout: Duration,
    /// How long a migration whose link failed after the destination
    /// confirmed it stays unsettled: the destination holds the VM paused
    /// and the source keeps asking until then.
    pub handover_wait: Duration,
    /// The page codec's settings.
    pub encoder: EncoderConfig,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            store_dir: None,
            store_cap: 1 << 30,
            scope: "default".into(),
            downtime: Duration::from_millis(300),
            open_timeout: Duration::from_secs(10),
            handover_wait: Duration::from_secs(120),
            encoder: EncoderConfig::default(),
        }
    }
}

/// What an operator asks for (`POST /v1/migrations`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub vm: String,
    /// Destination site.
    pub to: String,
    /// Downtime budget (default: the site's `[migration] downtime`).
    #[serde(default, with = "humantime_serde")]
    pub downtime: Option<Duration>,
    /// Dedup scope at the destination (default: the site's).
    #[serde(default)]
    pub scope: Option<String>,
}

/// Why a migration could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Peering(#[from] PeeringError),
    #[error("'{0}' is this site; migrate to another site")]
    SameSite(String),
    #[error("invalid dedup scope '{0}': use 1-64 letters, digits, '-', '_' or '.'")]
    BadScope(String),
}

/// The stop-and-copy budget to give the source shim so the operator's
/// `downtime` holds across the WAN. The shim's pause lasts the final copy,
/// the later of its memory digest and the Complete→Confirmed round trip
/// (the two overlap), and the Handover→Resumed round trip; the issue's
/// target is `downtime` plus one RTT, so the shim's own part gets one RTT
/// less (never less than a tenth of the budget, so a long link still
/// converges).
pub fn shim_budget(downtime: Duration, rtt: Duration) -> Duration {
    downtime.saturating_sub(rtt).max(downtime / 10)
}

/// The migration subsystem of one gateway.
#[derive(Clone)]
pub struct MigrationService {
    ctx: Arc<RelayContext>,
    settings: MigrationSettings,
}

impl MigrationService {
    /// Registers the migration stream handler on `peering` and serves it.
    pub fn start(
        peering: Peering,
        host: Arc<dyn VmHosting>,
        settings: MigrationSettings,
        metrics: Option<Arc<metrics::MigrationMetrics>>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), PeeringError> {
        let streams = peering.subscribe_streams(StreamKind::Migration, 16)?;
        let ctx = Arc::new(RelayContext {
            peering,
            host,
            stores: SiteStores::new(settings.store_dir.clone(), settings.store_cap),
            records: Records::default(),
            encoder: settings.encoder.clone(),
            open_timeout: settings.open_timeout,
            handover_wait: settings.handover_wait,
            metrics,
            parked: Default::default(),
        });
        let task = tokio::spawn(relay::serve_incoming(ctx.clone(), streams));
        Ok((MigrationService { ctx, settings }, task))
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        self.ctx.peering.site()
    }

    pub fn peering(&self) -> &Peering {
        &self.ctx.peering
    }

    pub fn host(&self) -> &Arc<dyn VmHosting> {
        &self.ctx.host
    }

    /// This site's page stores (the storage relay dedups disk copies
    /// against them too).
    pub fn stores(&self) -> &SiteStores {
        &self.ctx.stores
    }

    /// The dedup scope used when a migration names none.
    pub fn default_scope(&self) -> &str {
        &self.settings.scope
    }

    pub fn records(&self) -> Vec<MigrationRecord> {
        self.ctx.records.all()
    }

    pub fn record(&self, id: &str) -> Option<MigrationRecord> {
        self.ctx.records.get(id)
    }

    /// Starts migrating `req.vm` to `req.to` in the background; returns the
    /// migration id (follow it with [`MigrationService::record`]).
    pub fn begin(
        &self,
        req: MigrateRequest,
    ) -> Result<(String, tokio::task::JoinHandle<Outcome>), StartError> {
        self.begin_paced(req, None)
    }

    /// [`MigrationService::begin`] with the WAN bytes of the migration
    /// capped at `bandwidth_bps` bits per second.
    pub fn begin_paced(
        &self,
        req: MigrateRequest,
        bandwidth_bps: Option<u64>,
    ) -> Result<(String, tokio::task::JoinHandle<Outcome>), StartError> {
        let site = self.ctx.peering.site().to_string();
        if req.to == site {
            return Err(StartError::SameSite(site));
        }
        // Fail fast on what can be checked here; the relay checks again.
        self.ctx.host.config(&req.vm)?;
        self.ctx.peering.live_connection(&req.to)?;
        let scope = req.scope.unwrap_or_else(|| self.settings.scope.clone());
        if wanmig_codec::store::validate_scope(&scope).is_err() {
            return Err(StartError::BadScope(scope));
        }
        let id = self.ctx.records.next_id(&site);
        self.ctx
            .records
            .insert(&id, &req.vm, &site, &req.to, Direction::Outgoing);
        let rtt = self
            .ctx
            .peering
            .peer_states()
            .into_iter()
            .find(|p| p.site == req.to)
            .and_then(|p| p.link)
            .map(|l| Duration::from_secs_f64(l.rtt_ms.max(0.0) / 1e3))
            .unwrap_or_default();
        let opts = MigrateOptions {
            planner: PlannerConfig {
                downtime_budget: shim_budget(req.downtime.unwrap_or(self.settings.downtime), rtt),
                ..PlannerConfig::default()
            },
            ..MigrateOptions::default()
        };
        let task = tokio::spawn(relay::run_source(
            self.ctx.clone(),
            id.clone(),
            req.vm,
            req.to,
            scope,
            opts,
            bandwidth_bps,
        ));
        Ok((id, task))
    }

    /// Migrates and waits for the end; returns the final record.
    pub async fn migrate(&self, req: MigrateRequest) -> Result<MigrationRecord, StartError> {
        let (id, task) = self.begin(req)?;
        let _ = task.await;
        Ok(self
            .ctx
            .records
            .get(&id)
            .expect("a started migration keeps its record"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_budget_leaves_room_for_one_round_trip() {
        let ms = Duration::from_millis;
        assert_eq!(shim_budget(ms(300), ms(60)), ms(240));
        assert_eq!(shim_budget(ms(300), Duration::ZERO), ms(300));
        assert_eq!(shim_budget(ms(300), ms(1000)), ms(30));
    }
}
