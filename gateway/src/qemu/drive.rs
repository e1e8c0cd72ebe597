//! Driving the two QEMUs of a relayed migration over QMP: at the source,
//! the downtime limit (bandwidth is left unlimited: the gateway's QUIC
//! pacing decides it) and which capabilities and parameters the
//! destination must share; at the destination, the same settings and
//! `migrate-incoming` on a loopback port. Blocking (QMP is a blocking
//! client): call from a blocking thread.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wanmig_qemu_stream::qmp::{Qmp, QmpError};

/// Capabilities the destination QEMU must have as the source has them
/// (QEMU checks them, or they change the stream's format).
const SHARED_CAPABILITIES: &[&str] = &[
    "multifd",
    "x-ignore-shared",
    "postcopy-ram",
    "return-path",
    "validate-uuid",
];
/// Parameters the destination QEMU must have as the source has them.
const SHARED_PARAMETERS: &[&str] = &["multifd-channels", "multifd-compression"];

/// What the destination QEMU must be set to before `migrate-incoming`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Capabilities enabled at the source among [`SHARED_CAPABILITIES`].
    pub capabilities: Vec<String>,
    /// Values of [`SHARED_PARAMETERS`] at the source.
    pub parameters: serde_json::Map<String, Value>,
}

/// Why a QEMU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("the QMP socket path {0} is not valid UTF-8")]
    Path(String),
    #[error("finding a free loopback port for the destination QEMU: {0}")]
    Port(#[source] std::io::Error),
}

/// Connects to the QMP socket at `path` (`who` names the QEMU in errors).
pub fn connect(path: &Path, who: &str) -> Result<Qmp, DriveError> {
    Ok(Qmp::connect(path, who, Duration::from_secs(10))?)
}

/// Sets the source QEMU's downtime limit and lifts its bandwidth limit;
/// returns the settings the destination needs.
pub fn prepare_source(q: &mut Qmp, downtime: Duration) -> Result<Setup, DriveError> {
    q.execute(
        "migrate-set-parameters",
        json!({
            "downtime-limit": downtime.as_millis() as u64,
            "max-bandwidth": 1u64 << 40,
        }),
    )?;
    let caps = q.execute("query-migrate-capabilities", json!({}))?;
    let capabilities = caps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == true)
        .filter_map(|c| c["capability"].as_str())
        .filter(|c| SHARED_CAPABILITIES.contains(c))
        .map(str::to_string)
        .collect();
    let params = q.execute("query-migrate-parameters", json!({}))?;
    let parameters = SHARED_PARAMETERS
        .iter()
        .filter_map(|k| Some((k.to_string(), params.get(*k)?.clone())))
        .collect();
    Ok(Setup {
        capabilities,
        parameters,
    })
}

/// Applies `setup` to the destination QEMU and starts its incoming
/// migration on a free loopback port; returns that port's address.
pub fn prepare_destination(q: &mut Qmp, setup: &Setup) -> Result<SocketAddr, DriveError> {
    if !setup.capabilities.is_empty() {
        let caps: Vec<Value> = setup
            .capabilities
            .iter()
            .map(|c| json!({"capability": c, "state": true}))
            .collect();
        q.execute("migrate-set-capabilities", json!({ "capabilities": caps }))?;
    }
    if !setup.parameters.is_empty() {
        q.execute(
            "migrate-set-parameters",
            Value::Object(setup.parameters.clone()),
        )?;
    }
    // QEMU 7.2 does not report the port it bound for `tcp:...:0`: pick one.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(DriveError::Port)?
        .port();
    q.execute(
        "migrate-incoming",
        json!({"uri": format!("tcp:127.0.0.1:{port}")}),
    )?;
    Ok((Ipv4Addr::LOCALHOST, port).into())
}

/// What `query-migrate` said, the fields a report needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuStatus {
    pub status: String,
    /// RAM bytes QEMU sent.
    pub transferred: u64,
    pub remaining: u64,
    pub total_ms: Option<u64>,
    /// The guest's pause as the source QEMU measured it.
    pub downtime_ms: Option<u64>,
    pub error: Option<String>,
}

impl QemuStatus {
    pub fn of(v: &Value) -> Self {
        QemuStatus {
            status: v["status"].as_str().unwrap_or("none").to_string(),
            transferred: v["ram"]["transferred"].as_u64().unwrap_or(0),
            remaining: v["ram"]["remaining"].as_u64().unwrap_or(0),
            total_ms: v["total-time"].as_u64(),
            downtime_ms: v["downtime"].as_u64(),
            error: v["error-desc"].as_str().map(str::to_string),
        }
    }

    pub fn is_over(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// Starts the source QEMU's migration to the gateway's port `to`.
pub fn start_migration(q: &mut Qmp, to: SocketAddr) -> Result<(), DriveError> {
    q.execute("migrate", json!({"uri": format!("tcp:{to}")}))?;
    Ok(())
}

/// The source QEMU's migration status now.
pub fn query(q: &mut Qmp) -> Result<QemuStatus, DriveError> {
    Ok(QemuStatus::of(&q.execute("query-migrate", json!({}))?))
}

/// Cancels the source QEMU's migration (its guest goes on running).
pub fn cancel(q: &mut Qmp) {
    if let Err(e) = q.execute("migrate_cancel", json!({})) {
        tracing::warn!("cancelling the source QEMU's migration: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_migrate_is_read_into_a_status() {
        let s = QemuStatus::of(&json!({
            "status": "completed", "total-time": 377, "downtime": 255,
            "ram": {"transferred": 40434902, "remaining": 0}
        }));
        assert!(s.is_over());
        assert_eq!(
            (s.transferred, s.total_ms, s.downtime_ms),
            (40434902, Some(377), Some(255))
        );
        let s = QemuStatus::of(&json!({"status": "failed", "error-desc": "Broken pipe"}));
        assert_eq!(s.error.as_deref(), Some("Broken pipe"));
        assert!(!QemuStatus::of(&json!({"status": "active"})).is_over());
    }
}
