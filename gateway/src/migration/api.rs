//! The control-API routes of VMs and migrations (mounted behind the bearer
//! token by [`crate::control::migration_router`]): `GET/POST /v1/vms`,
//! `GET/POST /v1/migrations`, `GET /v1/migrations/{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use wanmig_vmm::VmConfig;

use super::{MigrateRequest, MigrationRecord, MigrationService, StartError, VmInfo};
use crate::control::ApiError;
use crate::peering::PeeringError;

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

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

fn host_status(e: &super::HostError) -> StatusCode {
    use super::HostError as H;
    match e {
        H::Unknown(_) => StatusCode::NOT_FOUND,
        H::Busy { .. } => StatusCode::CONFLICT,
        H::BadName(_) | H::Config(_) => StatusCode::BAD_REQUEST,
        H::Start { .. } | H::Migration(_) | H::Storage { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

async fn start_migration(
    State(m): State<MigrationService>,
    Json(body): Json<MigrateBody>,
) -> Response {
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
        .with_state(m)
}
