//! The error body every control-API route answers with on failure, and the
//! one way routes build it. The routes ([`crate::control`],
//! [`crate::migration::api`]) and the client ([`crate::control_client`])
//! share it; it imports none of them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// A response with `status` and `msg` as its [`ApiError`] body.
pub fn respond(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}
