//! The control-API routes of VMs, migrations and their storage copies
//! (mounted behind the bearer token by [`crate::control::migration_router`]):
//! `GET/POST /v1/vms`, `GET/POST /v1/migrations`, `GET /v1/migrations/{id}`,
//! `POST /v1/migrations/{id}/settle`,
//! `GET /v1/storage`, `GET /v1/storage/{vm}`, `POST /v1/storage/{vm}/migrate`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use wanmig_migration::machine::VmConfig;

use super::{Decision, MigrateRequest, MigrationRecord, MigrationService, SettleError, StartError};
use crate::api_error::respond as error;
use crate::peering::PeeringError;
use crate::vms::{DiskState, HostError, VmInfo};

/// `POST /v1/vms` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartVmRequest {
    pub name: String,
    pub config: VmConfig,
}

/// `GET /v1/vms` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmList {
    pub site: String,
    pub vms: Vec<VmInfo>,
}

/// `POST /v1/migrations` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateBody {
    #[serde(flatten)]
    pub request: MigrateRequest,
    /// Cap on the migration's WAN rate, bits per second.
    #[serde(default)]
    pub bandwidth_bps: Option<u64>,
}

/// `POST /v1/migrations` query: `?no_storage=true` moves compute only — the
/// disk stays authoritative here and the destination reads missing blocks
/// on demand until `POST /v1/storage/{vm}/migrate` at the destination
/// starts the copy. (A query parameter, so existing bodies stay valid.)
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MigrateQuery {
    #[serde(default)]
    pub no_storage: bool,
}

/// `GET /v1/storage/{vm}` and `POST /v1/storage/{vm}/migrate` answer: the
/// VM's disk copy as this site sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageStatus {
    pub site: String,
    pub vm: String,
    /// This site is the destination: the VM runs here on this disk.
    #[serde(default)]
    pub disk: Option<DiskState>,
    /// This site is the source: it exports the VM's disk.
    #[serde(default)]
    pub export: Option<crate::storage_relay::ExportStatus>,
}

/// `GET /v1/storage` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageList {
    pub site: String,
    /// Disks of VMs that run here, by VM.
    pub disks: Vec<(String, DiskState)>,
    /// Disks this site exports (VMs that left with their disk).
    pub exports: Vec<crate::storage_relay::ExportStatus>,
}

/// `POST /v1/migrations/{id}/settle` body: what to do with the VM this
/// site holds parked. The answer is the incoming migration's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettleBody {
    pub decision: Decision,
}

/// `POST /v1/migrations` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationStarted {
    pub id: String,
}

/// `GET /v1/migrations` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationList {
    pub site: String,
    pub migrations: Vec<MigrationRecord>,
}

fn host_status(e: &HostError) -> StatusCode {
    use HostError as H;
    match e {
        H::Unknown(_) => StatusCode::NOT_FOUND,
        // A disk still copying, or missing/wrong: the VM's disk state
        // conflicts with the request.
        H::Busy { .. } | H::Storage { .. } | H::DiskIo { .. } | H::DiskRelay { .. } => {
            StatusCode::CONFLICT
        }
        H::BadName(_)
        | H::Config(_)
        | H::Unsupported { .. }
        | H::UnknownSegment { .. }
        | H::FileRefused { .. } => StatusCode::BAD_REQUEST,
        H::Start { .. }
        | H::Vm { .. }
        | H::StartIo { .. }
        | H::VmmBinary { .. }
        | H::StateDir { .. }
        | H::Migration(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn list_vms(State(m): State<MigrationService>) -> Json<VmList> {
    Json(VmList {
        site: m.site().to_string(),
        vms: m.host().list(),
    })
}

async fn start_vm(State(m): State<MigrationService>, Json(req): Json<StartVmRequest>) -> Response {
    let host = m.host().clone();
    let name = req.name.clone();
    let r = tokio::task::spawn_blocking(move || host.start(&req.name, req.config)).await;
    match r {
        Ok(Ok(())) => {
            let info = m.host().list().into_iter().find(|v| v.name == name);
            (StatusCode::CREATED, Json(info)).into_response()
        }
        Ok(Err(e)) => error(host_status(&e), e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("starting the VM: {e}"),
        ),
    }
}

async fn list_migrations(State(m): State<MigrationService>) -> Json<MigrationList> {
    Json(MigrationList {
        site: m.site().to_string(),
        migrations: m.records(),
    })
}

async fn get_migration(State(m): State<MigrationService>, Path(id): Path<String>) -> Response {
    match m.record(&id) {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no migration '{id}' at this gateway (see `wanmig status`)"),
        ),
    }
}

async fn settle_migration(
    State(m): State<MigrationService>,
    Path(id): Path<String>,
    Json(body): Json<SettleBody>,
) -> Response {
    match m.settle(&id, body.decision).await {
        Ok(r) => Json(r).into_response(),
        Err(e @ SettleError::NotParked(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

fn storage_status(m: &MigrationService, vm: &str) -> StorageStatus {
    StorageStatus {
        site: m.site().to_string(),
        vm: vm.to_string(),
        disk: m
            .host()
            .list()
            .into_iter()
            .find(|v| v.name == vm)
            .and_then(|v| v.storage),
        export: m
            .host()
            .storage_exports()
            .into_iter()
            .find(|e| e.name == vm),
    }
}

async fn get_storage(State(m): State<MigrationService>, Path(vm): Path<String>) -> Response {
    let s = storage_status(&m, &vm);
    if s.disk.is_none() && s.export.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no disk of VM '{vm}' is copied to or from {} (see `wanmig vm list`)",
                m.site()
            ),
        );
    }
    Json(s).into_response()
}

async fn list_storage(State(m): State<MigrationService>) -> Json<StorageList> {
    Json(StorageList {
        site: m.site().to_string(),
        disks: m
            .host()
            .list()
            .into_iter()
            .filter_map(|v| v.storage.map(|s| (v.name, s)))
            .collect(),
        exports: m.host().storage_exports(),
    })
}

async fn migrate_storage(State(m): State<MigrationService>, Path(vm): Path<String>) -> Response {
    match m.host().storage_migrate(&vm) {
        Ok(disk) => Json(StorageStatus {
            disk: Some(disk),
            ..storage_status(&m, &vm)
        })
        .into_response(),
        Err(HostError::Unknown(_)) => error(
            StatusCode::NOT_FOUND,
            format!(
                "VM '{vm}' does not run at {}: run `wanmig storage migrate {vm}` against the gateway of the site where it runs now (`wanmig vm list` there shows it)",
                m.site()
            ),
        ),
        Err(e @ HostError::Storage { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(host_status(&e), e.to_string()),
    }
}

async fn start_migration(
    State(m): State<MigrationService>,
    Query(q): Query<MigrateQuery>,
    Json(body): Json<MigrateBody>,
) -> Response {
    if let Err(e) = m
        .host()
        .set_storage_background(&body.request.vm, !q.no_storage)
    {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match m.begin_paced(body.request, body.bandwidth_bps) {
        Ok((id, _task)) => (StatusCode::ACCEPTED, Json(MigrationStarted { id })).into_response(),
        Err(e) => {
            let code = match &e {
                StartError::Host(h) => host_status(h),
                StartError::Peering(PeeringError::UnknownPeer(_))
                | StartError::SameSite(_)
                | StartError::BadScope(_) => StatusCode::BAD_REQUEST,
                StartError::Peering(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(code, e.to_string())
        }
    }
}

/// The routes, with their state applied.
pub fn routes(m: MigrationService) -> Router {
    Router::new()
        .route("/v1/vms", get(list_vms).post(start_vm))
        .route("/v1/migrations", get(list_migrations).post(start_migration))
        .route("/v1/migrations/{id}", get(get_migration))
        .route(
            "/v1/migrations/{id}/settle",
            axum::routing::post(settle_migration),
        )
        .route("/v1/storage", get(list_storage))
        .route("/v1/storage/{vm}", get(get_storage))
        .route(
            "/v1/storage/{vm}/migrate",
            axum::routing::post(migrate_storage),
        )
        .with_state(m)
}
