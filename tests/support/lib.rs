//! Shared helpers for the end-to-end tests. The multi-site mesh on loopback
//! (fresh PKI in a tempdir, a WAN emulator relay on every peer link) lives
//! in the gateway library as [`wanmig_gateway::lab`], because `wanmig demo`
//! and the benchmarks build their sites the same way; it is re-exported
//! here under the names the tests use.

pub use wanmig_gateway::lab::{Link, Mesh, MeshBuilder, PreparedMesh};

/// Installs a tracing subscriber once (honours RUST_LOG; quiet otherwise).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
