//! The control-API routes of QEMU migrations (mounted behind the bearer
//! token by [`crate::control::qemu_router`]): `POST /v1/qemu/accept`
//! registers a destination QEMU at this site (answering with the
//! request), `POST /v1/qemu/migrations`
//! starts moving a source QEMU, `GET /v1/qemu/migrations` and
//! `GET /v1/qemu/migrations/{name}` follow them.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{MoveRequest, MoveStatus, QemuError, QemuService};
use crate::api_error::respond as error;
use crate::peering::PeeringError;

/// `POST /v1/qemu/accept` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptRequest {
    pub name: String,
    /// The destination QEMU's QMP socket (it runs with `-incoming defer`).
    pub qmp: PathBuf,
}

/// `GET /v1/qemu/migrations` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveList {
    pub migrations: Vec<MoveStatus>,
}

async fn accept(State(svc): State<QemuService>, Json(req): Json<AcceptRequest>) -> Response {
    match svc.accept_qmp(&req.name, req.qmp.clone()).await {
        Ok(()) => Json(req).into_response(),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: {e} (is QEMU running with -qmp unix:PATH,server=on,wait=off?)",
                req.qmp.display()
            ),
        ),
    }
}

async fn start(State(svc): State<QemuService>, Json(req): Json<MoveRequest>) -> Response {
    let name = req.name.clone();
    match svc.migrate(req).await {
        Ok(_) => match svc.move_status(&name) {
            Some(s) => (StatusCode::ACCEPTED, Json(s)).into_response(),
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the migration has no record",
            ),
        },
        Err(e) => {
            let code = match &e {
                QemuError::Peering(PeeringError::UnknownPeer(_)) | QemuError::SameSite(_) => {
                    StatusCode::BAD_REQUEST
                }
                QemuError::Peering(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            error(code, e.to_string())
        }
    }
}

async fn list(State(svc): State<QemuService>) -> Json<MoveList> {
    Json(MoveList {
        migrations: svc.moves(),
    })
}

async fn one(State(svc): State<QemuService>, Path(name): Path<String>) -> Response {
    match svc.move_status(&name) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no QEMU migration '{name}' was started at this site"),
        ),
    }
}

/// The routes, with their state.
pub fn routes(svc: QemuService) -> Router {
    Router::new()
        .route("/v1/qemu/accept", post(accept))
        .route("/v1/qemu/migrations", get(list).post(start))
        .route("/v1/qemu/migrations/{name}", get(one))
        .with_state(svc)
}
