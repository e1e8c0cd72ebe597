//! QEMU live migrations carried through the gateways. The source QEMU's
//! `migrate` points at a loopback port of its site's gateway; the gateway
//! parses every channel (`wanmig-qemu-stream`), sends RAM pages through
//! the migration codec against the far site's page store, forwards
//! everything else verbatim and in order over one QUIC stream
//! ([`crate::peering::StreamKind::Qemu`]), and the far gateway re-emits
//! each channel byte for byte into the destination QEMU (started with
//! `-incoming defer`, its `migrate-incoming` on a loopback port).
//!
//! - [`frames`]: the gateway-to-gateway protocol, sans-IO.
//! - [`source`], [`dest`]: each side's relay state, sans-IO (parse →
//!   frames, frames → re-emitted channels).
//! - `relay`: the tokio/QUIC edges around them.
//!
//! [`QemuService`] is the subsystem: [`QemuService::accept`] registers a
//! destination at this site, [`QemuService::listen`] opens the port a
//! source QEMU migrates to and relays to a peer.

pub mod dest;
pub mod frames;
mod relay;
pub mod source;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wanmig_codec::{CodecError, EncoderConfig, EncoderStats};

use crate::migration::stores::SiteStores;
use crate::peering::{Peering, PeeringError, StreamKind};
pub use frames::DoneStats;
pub use source::SourceStats;

/// Why a QEMU relay failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(transparent)]
    Peering(#[from] PeeringError),
    #[error("the QUIC stream to the peer gateway: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("the QUIC stream from the peer gateway: {0}")]
    Read(#[from] quinn::ReadError),
    #[error(transparent)]
    Frame(#[from] frames::FrameError),
    #[error("the peer gateway did not answer within {0:?} (is it running this wanmig version?)")]
    OpenTimeout(Duration),
    #[error("the peer gateway refused the migration: {0}")]
    Refused(String),
    #[error("the peer gateway aborted the migration: {0}")]
    PeerAborted(String),
    #[error("the peer gateway closed the relay stream before the migration ended")]
    PeerClosed,
    #[error("the peer gateway broke the QEMU relay protocol: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Dest(#[from] dest::DestError),
    #[error("the migration codec: {0}")]
    Codec(#[from] CodecError),
    #[error("reading channel {ch} from the source QEMU: {source}")]
    SourceChannel {
        ch: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("writing channel {ch} to the destination QEMU: {source} (did it exit? see its log)")]
    DestinationChannel {
        ch: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the destination QEMU's incoming port {target}: {source} (did `migrate-incoming` run?)")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the loopback port for the source QEMU: {0}")]
    Listen(#[source] std::io::Error),
    #[error("'{0}' is this site; migrate to another site")]
    SameSite(String),
}

/// What a finished relay carried (source side).
#[derive(Debug, Clone)]
pub struct QemuReport {
    pub name: String,
    pub to: String,
    pub elapsed: Duration,
    /// Frame bytes sent to the peer gateway on the relay stream.
    pub wire_bytes: u64,
    pub source: SourceStats,
    pub encoder: EncoderStats,
    /// What the destination gateway wrote into its QEMU.
    pub destination: DoneStats,
}

/// Live counters of a source relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub qemu_bytes: u64,
    pub wire_bytes: u64,
    pub pages: u64,
    pub zero_pages: u64,
}

/// A relay's [`Progress`], shared with whoever watches it.
#[derive(Debug, Clone, Default)]
pub struct ProgressCell(Arc<Mutex<Progress>>);

impl ProgressCell {
    pub fn get(&self) -> Progress {
        *lock(&self.0)
    }
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut lock(&self.0))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Inner {
    peering: Peering,
    stores: SiteStores,
    encoder: EncoderConfig,
    scope: String,
    open_timeout: Duration,
    /// Registered destinations: migration name → the destination QEMU's
    /// incoming address.
    destinations: Mutex<HashMap<String, SocketAddr>>,
}

impl Inner {
    fn take_destination(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.destinations).remove(name)
    }
}

/// A source relay under way.
pub struct SourceHandle {
    /// Where the source QEMU must migrate to (`migrate tcp:ADDR`).
    pub addr: SocketAddr,
    pub progress: ProgressCell,
    pub task: JoinHandle<Result<QemuReport, QemuError>>,
}

/// The QEMU relay subsystem of one gateway.
#[derive(Clone)]
pub struct QemuService {
    inner: Arc<Inner>,
}

impl QemuService {
    /// Registers the QEMU stream handler on `peering` and serves it;
    /// pages are encoded with `encoder` and deduplicated against `stores`
    /// (the same stores as shim migrations, so one warms the other).
    pub fn start(
        peering: Peering,
        stores: SiteStores,
        encoder: EncoderConfig,
        scope: String,
        open_timeout: Duration,
    ) -> Result<(Self, JoinHandle<()>), PeeringError> {
        let streams = peering.subscribe_streams(StreamKind::Qemu, 16)?;
        let inner = Arc::new(Inner {
            peering,
            stores,
            encoder,
            scope,
            open_timeout,
            destinations: Mutex::default(),
        });
        let task = tokio::spawn(relay::serve_incoming(inner.clone(), streams));
        Ok((QemuService { inner }, task))
    }

    /// Registers a destination QEMU listening for migration `name` on
    /// `incoming` (its `migrate-incoming` address): the next relay of that
    /// name from a peer feeds it. Replaces an earlier registration.
    pub fn accept(&self, name: &str, incoming: SocketAddr) {
        lock(&self.inner.destinations).insert(name.to_string(), incoming);
    }

    /// Opens a loopback port for migration `name` to site `to` and relays
    /// what the source QEMU sends to it (point the QEMU's `migrate` at
    /// [`SourceHandle::addr`]). The dedup scope is `scope` or the site's.
    pub async fn listen(
        &self,
        name: &str,
        to: &str,
        scope: Option<&str>,
    ) -> Result<SourceHandle, QemuError> {
        if to == self.inner.peering.site() {
            return Err(QemuError::SameSite(to.to_string()));
        }
        self.inner.peering.live_connection(to)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(QemuError::Listen)?;
        let addr = listener.local_addr().map_err(QemuError::Listen)?;
        let progress = ProgressCell::default();
        let inner = self.inner.clone();
        let (name, to) = (name.to_string(), to.to_string());
        let scope = scope.unwrap_or(&self.inner.scope).to_string();
        let p = progress.clone();
        let task = tokio::spawn(async move {
            let r = relay::run_source(&inner, &name, &to, &scope, listener, &p).await;
            match &r {
                Ok(rep) => tracing::info!(%name, %to, "QEMU migration relayed: {rep:?}"),
                Err(e) => tracing::warn!(%name, %to, "QEMU migration relay failed: {e}"),
            }
            r
        });
        Ok(SourceHandle {
            addr,
            progress,
            task,
        })
    }
}

#[cfg(test)]
mod tests;
