//! wanmig-gateway: the site daemon. It peers with the other sites' gateways
//! over QUIC with mutual TLS (a full mesh, tuned for long fat links), serves
//! a local control API and Prometheus metrics, and lets the subsystems above
//! the peering (overlay, migration, storage) share the peer connections
//! through stream-kind handlers and datagrams. The VMs of the site live in
//! [`vms`] (registry and hosts), which the migration relay moves between
//! sites.
//!
//! Layering: [`config`] owns every subsystem's settings types and imports
//! none of them; the peering sits on the config; the subsystems sit on the
//! peering. `tests/layering.rs` keeps the files free of import circles.
//!
//! Entry point: [`Gateway::start`] with a [`GatewayConfig`] loaded by
//! [`GatewayConfig::load`]; the returned [`GatewayHandle`] exposes the
//! [`Peering`].

#![forbid(unsafe_code)]

pub mod api_error;
pub mod backoff;
pub mod certs;
pub mod config;
pub mod control;
pub mod control_client;
pub mod demo;
pub mod gateway;
pub mod lab;
pub mod metrics;
pub mod migration;
pub mod overlay_service;
pub mod peering;
pub mod probe;
pub mod qemu;
pub mod storage_relay;
pub mod tls;
pub mod transport_tuning;
pub mod vms;

use std::net::SocketAddr;

pub use config::{ConfigError, GatewayConfig};
pub use gateway::{Gateway, GatewayHandle};
pub use overlay_service::{OverlayError, OverlayHandle, OverlayState};
pub use peering::{
    IncomingStream, LinkState, PeerDatagram, PeerSnapshot, Peering, PeeringError, Role,
};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind the QUIC socket on {addr}: {source} (is another gateway using it? change `listen`)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{key}: cannot listen on {addr}: {source} (is the port in use?)")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] control::TokenError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Overlay(#[from] overlay_service::OverlayError),
    #[error(transparent)]
    Peering(#[from] PeeringError),
    #[error(transparent)]
    Storage(#[from] storage_relay::StorageRelayError),
    /// The process VM host could not take over its state directory.
    #[error("{}: vms.dir: {source}", path.display())]
    VmHost {
        path: std::path::PathBuf,
        source: Box<vms::HostError>,
    },
    /// `[migration] store_dir` cannot hold page stores.
    #[error("{}: migration.store_dir: {}: {source} (make it a directory only this gateway's user writes, point migration.store_dir elsewhere, or set migration.store = false for deduplication within each migration only)", config.display(), path.display())]
    StoreDir {
        config: std::path::PathBuf,
        path: std::path::PathBuf,
        source: crate::migration::stores::RootError,
    },
    #[error("runtime: a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("runtime: no tokio runtime is running (start the gateway inside one)")]
    NoRuntime,
}
