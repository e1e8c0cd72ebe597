//! Cross-site live migration through the gateways, between the VM hosts of
//! two sites ([`crate::vms`]): the tokio/QUIC edge of the gateway-to-gateway
//! session ([`relay`], around the sans-IO cores and frames of
//! `wanmig_migration::session`, taking its decisions from
//! `wanmig_migration::policy`), the site's page stores ([`stores`]), the
//! record of migrations ([`records`]), who owns a VM after a late link
//! failure and who may settle a parked one ([`settle`], sans-IO) and the
//! `wanmig_migration_*` metrics ([`metrics`]).
//!
//! [`MigrationService`] ties them together: it serves incoming migration
//! streams from peers and starts outgoing ones.

pub mod api;
pub mod metrics;
pub mod records;
pub mod relay;
pub mod settle;
pub mod stores;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wanmig_migration::policy::{DowntimeGoal, PlannerConfig};
use wanmig_migration::run::MigrateOptions;

use crate::config::MigrationSettings;
use crate::peering::{Peering, PeeringError, StreamKind};
use crate::vms::{HostError, VmHosting};
pub use records::{Direction, MigrationRecord, Outcome, Records};
use relay::RelayContext;
pub use settle::{Decision, SettleError};
use stores::SiteStores;
pub use wanmig_migration::session::{Phase, Progress};

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
            stores: SiteStores::new(settings.store_dir.clone(), settings.store_cap)
                .with_grants(settings.scope_grants.clone()),
            records: Records::default(),
            encoder: settings.encoder.clone(),
            open_timeout: settings.open_timeout,
            max_mem_size: crate::config::DEFAULT_MAX_VM_MEM_BYTES.into(),
            handover_wait: settings.handover_wait,
            metrics,
            parked: Default::default(),
        });
        let task = tokio::spawn(relay::serve_incoming(ctx.clone(), streams));
        Ok((MigrationService { ctx, settings }, task))
    }

    /// Caps the memory of VMs migrating here (`[vms] max_mem_mib`): a
    /// larger one is refused before anything is allocated for it.
    pub fn set_max_mem_size(&self, bytes: u64) {
        self.ctx
            .max_mem_size
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
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
        let goal = DowntimeGoal::new(req.downtime.unwrap_or(self.settings.downtime), rtt);
        let opts = MigrateOptions {
            planner: PlannerConfig {
                downtime_budget: goal.shim_budget(),
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
            relay::SourcePlan { opts, goal },
            bandwidth_bps,
        ));
        Ok((id, task))
    }

    /// Settles a migration this site holds parked (the operator's
    /// `wanmig migration settle`): resumes or discards the VM held here
    /// and returns the incoming record as it ends.
    pub async fn settle(
        &self,
        id: &str,
        decision: Decision,
    ) -> Result<MigrationRecord, SettleError> {
        relay::settle_by_operator(&self.ctx, id, decision).await?;
        self.ctx
            .records
            .all()
            .into_iter()
            .find(|r| r.id == id && r.direction == Direction::Incoming)
            .ok_or_else(|| SettleError::NotParked(id.to_string()))
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
