//! The local control API (HTTP + JSON on loopback, axum), guarded by a
//! bearer token kept in a 0600 token file: `GET /v1/status`,
//! `POST /v1/probe`.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::api_error::respond as api_error;
use crate::peering::{PeerSnapshot, Peering, Refusals};
use crate::probe::{self, ProbeError};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: cannot read the control token: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot create the control token: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the token file is empty; delete it and the gateway creates a new one", path.display())]
    Empty { path: PathBuf },
    #[error("{}: the token file is open to other users (mode {mode:04o}), so anyone on this host could drive the gateway; run `chmod 600 {}` (and replace the token if others may have read it)", path.display(), path.display())]
    NotPrivate { path: PathBuf, mode: u32 },
}

/// Reads the bearer token from `path`.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let t = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(t)
}

/// Reads the token at `path`, creating it (mode 0600, 256 random bits) if
/// it does not exist.
/// An existing file must be private to its owner (no group or other
/// permissions): the gateway refuses to start on a token others can read
/// or replace.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::NotPrivate {
                path: path.to_path_buf(),
                mode,
            });
        }
        return read_token(path);
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let create = |source| TokenError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    f.write_all(format!("{token}\n").as_bytes())
        .map_err(create)?;
    Ok(token)
}

/// Constant-time comparison, so response timing does not leak the token.
fn token_matches(given: &str, expected: &str) -> bool {
    let (g, e) = (given.as_bytes(), expected.as_bytes());
    if g.len() != e.len() {
        return false;
    }
    g.iter().zip(e).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub site: String,
    pub listen: Option<SocketAddr>,
    pub peers: Vec<PeerSnapshot>,
    pub refusals: Refusals,
}

impl StatusReport {
    pub fn of(peering: &Peering) -> Self {
        StatusReport {
            site: peering.site().to_string(),
            listen: peering.local_addr(),
            peers: peering.peer_states(),
            refusals: peering.refusals(),
        }
    }
}

/// `POST /v1/probe` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub peer: String,
    pub bytes: u64,
}

struct Ctx {
    peering: Peering,
    token: String,
}

async fn auth(State(ctx): State<Arc<Ctx>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if token_matches(t.trim(), &ctx.token) => next.run(req).await,
        Some(_) => api_error(StatusCode::UNAUTHORIZED, "wrong control token"),
        None => api_error(
            StatusCode::UNAUTHORIZED,
            "missing 'Authorization: Bearer <token>' header",
        ),
    }
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Json<StatusReport> {
    Json(StatusReport::of(&ctx.peering))
}

async fn run_probe(State(ctx): State<Arc<Ctx>>, Json(req): Json<ProbeRequest>) -> Response {
    match probe::run(&ctx.peering, &req.peer, req.bytes, |_| {}).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            let code = match &e {
                ProbeError::Peering(crate::peering::PeeringError::UnknownPeer(_))
                | ProbeError::TooLarge(_) => StatusCode::BAD_REQUEST,
                ProbeError::Peering(crate::peering::PeeringError::NotConnected(_)) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_GATEWAY,
            };
            api_error(code, e.to_string())
        }
    }
}

/// `GET /v1/overlay`: the overlay's peers, segments, ports and MAC tables.
pub fn overlay_router(
    peering: Peering,
    overlay: crate::overlay_service::OverlayHandle,
    token: String,
) -> Router {
    let ctx = Arc::new(Ctx { peering, token });
    Router::new()
        .route(
            "/v1/overlay",
            get(move || async move {
                match overlay.state().await {
                    Ok(s) => Json(s).into_response(),
                    Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                }
            }),
        )
        .layer(middleware::from_fn_with_state(ctx, auth))
}

/// The VM and migration routes ([`crate::migration::api`]), behind the
/// bearer-token check.
pub fn migration_router(migration: crate::migration::MigrationService, token: String) -> Router {
    let ctx = Arc::new(Ctx {
        peering: migration.peering().clone(),
        token,
    });
    crate::migration::api::routes(migration).layer(middleware::from_fn_with_state(ctx, auth))
}

/// The QEMU migration routes ([`crate::qemu::api`]), behind the
/// bearer-token check.
pub fn qemu_router(peering: Peering, qemu: crate::qemu::QemuService, token: String) -> Router {
    let ctx = Arc::new(Ctx { peering, token });
    crate::qemu::api::routes(qemu).layer(middleware::from_fn_with_state(ctx, auth))
}

/// The control API routes, all behind the bearer-token check.
pub fn router(peering: Peering, token: String) -> Router {
    let ctx = Arc::new(Ctx { peering, token });
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/probe", post(run_probe))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .with_state(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_private_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.token");
        let t1 = load_or_create_token(&p).unwrap();
        assert_eq!(t1.len(), 64);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&p).unwrap(), t1);
        let d2 = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_token(&d2.path().join("t")).unwrap(), t1);
    }

    #[test]
    fn a_token_file_others_can_read_or_write_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.token");
        std::fs::write(&p, "abc\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_or_create_token(&p).unwrap_err();
            assert!(
                matches!(err, TokenError::NotPrivate { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(load_or_create_token(&p).unwrap(), "abc", "{mode:o}");
        }
    }

    #[test]
    fn empty_token_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.token");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_token(&p), Err(TokenError::Empty { .. })));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
    }
}
