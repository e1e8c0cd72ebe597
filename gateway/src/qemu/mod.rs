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
//! - [`drive`]: setting both QEMUs up over QMP; [`api`]: the control-API
//!   routes under `/v1/qemu`.
//!
//! [`QemuService`] is the subsystem: [`QemuService::accept_qmp`] (or
//! [`QemuService::accept`] with an incoming port) registers a destination
//! at this site; [`QemuService::migrate`] drives a source QEMU through the
//! whole move; [`QemuService::listen`] only opens the port a source QEMU
//! migrates to and relays to a peer.

pub mod api;
pub mod dest;
pub mod drive;
pub mod frames;
mod relay;
pub mod source;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    #[error(transparent)]
    Drive(#[from] drive::DriveError),
    #[error("the source QEMU's migration ended '{0}' and the relay had not ended {1:?} later; it was stopped")]
    Abandoned(String, Duration),
}

/// How long a relay may go on after its source QEMU's migration failed.
const RELAY_GRACE: Duration = Duration::from_secs(30);

/// What an operator asks for (`POST /v1/qemu/migrations`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The migration's name; the destination registered the same name.
    pub name: String,
    /// The source QEMU's QMP socket at this site.
    pub qmp: PathBuf,
    /// Destination site.
    pub to: String,
    /// The source QEMU's downtime limit.
    #[serde(with = "humantime_serde")]
    pub downtime: Duration,
    /// Dedup scope at the destination (default: the site's).
    #[serde(default)]
    pub scope: Option<String>,
}

/// Where a QEMU migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    Running,
    Completed,
    Failed,
}

/// A QEMU migration as this site sees it (`GET /v1/qemu/migrations/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveStatus {
    pub name: String,
    pub to: String,
    pub state: MoveState,
    /// The source QEMU's `query-migrate`, last read.
    pub qemu: drive::QemuStatus,
    /// The relay's counters.
    pub relay: Progress,
    pub report: Option<MoveReport>,
    /// What failed and what to do.
    pub error: Option<String>,
    #[serde(skip)]
    progress_cell: Option<ProgressCell>,
}

/// The end of a QEMU migration: QEMU's figures and the relay's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    /// From the relay's start until the destination QEMU had every byte
    /// (QEMU's own `total-time` ends when it has written its last byte to
    /// this gateway: see [`MoveStatus::qemu`]).
    pub total_ms: u64,
    /// The guest's pause as the source QEMU reports it.
    pub downtime_ms: Option<u64>,
    /// Bytes the source QEMU sent on all channels.
    pub qemu_bytes: u64,
    /// Bytes of the relay stream to the peer gateway.
    pub wire_bytes: u64,
    /// Pages reduced by the codec (zero, references, deltas, zstd) and
    /// zero-page records.
    pub pages_reduced: u64,
    pub zero_pages: u64,
    /// Bytes forwarded as they came: stream structure, device state and
    /// whatever was relayed unreduced.
    pub verbatim_bytes: u64,
    /// Channels relayed unreduced from some point, with the reason.
    pub unreduced: Vec<String>,
    /// Pages by codec record kind.
    pub references: u64,
    pub deltas: u64,
    pub compressed: u64,
    pub raw: u64,
}

impl MoveReport {
    fn of(r: &QemuReport, q: &drive::QemuStatus) -> Self {
        MoveReport {
            total_ms: r.elapsed.as_millis() as u64,
            downtime_ms: q.downtime_ms,
            qemu_bytes: r.source.qemu_bytes,
            wire_bytes: r.wire_bytes,
            pages_reduced: r.source.pages,
            zero_pages: r.source.zero_pages,
            verbatim_bytes: r.source.verbatim_bytes,
            unreduced: r
                .source
                .passthrough
                .iter()
                .map(|(ch, why)| format!("channel {ch}: relayed unreduced: {why}"))
                .collect(),
            references: r.encoder.refs(),
            deltas: r.encoder.delta,
            compressed: r.encoder.compressed,
            raw: r.encoder.raw,
        }
    }
}

/// Follows a started move to its end, updating its status.
async fn follow(
    inner: Arc<Inner>,
    name: String,
    q: wanmig_qemu_stream::qmp::Qmp,
    h: SourceHandle,
) -> MoveStatus {
    let addr = h.addr;
    let set = |f: &dyn Fn(&mut MoveStatus)| {
        if let Some(s) = lock(&inner.migrations).get_mut(&name) {
            f(s);
            s.relay = h.progress.get();
        }
    };
    // QMP is blocking: the source QEMU is driven from one blocking thread
    // that reports each `query-migrate` back.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<drive::QemuStatus, String>>(4);
    let (cancel_tx, cancel_rx) = std::sync::mpsc::channel::<()>();
    let driver = tokio::task::spawn_blocking(move || {
        let mut q = q;
        if let Err(e) = drive::start_migration(&mut q, addr) {
            let _ = tx.blocking_send(Err(e.to_string()));
            return;
        }
        loop {
            if cancel_rx.try_recv().is_ok() {
                drive::cancel(&mut q);
            }
            match drive::query(&mut q) {
                Ok(s) => {
                    let over = s.is_over();
                    if tx.blocking_send(Ok(s)).is_err() || over {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut task = h.task;
    let mut relay: Option<Result<QemuReport, QemuError>> = None;
    let mut qemu = drive::QemuStatus::default();
    let mut qemu_error = None;
    let mut qemu_over = false;
    while relay.is_none() || !qemu_over {
        tokio::select! {
            r = &mut task, if relay.is_none() => {
                let r = r.unwrap_or_else(|e| Err(QemuError::Protocol(if e.is_panic() { "the relay task panicked" } else { "the relay task was cancelled" })));
                if r.is_err() {
                    // The source QEMU's connections are closed; make sure
                    // its migration ends (its guest goes on running).
                    let _ = cancel_tx.send(());
                }
                relay = Some(r);
            }
            // A source QEMU that failed may never have connected or closed
            // all its channels: the relay gets a grace period, then stops.
            _ = tokio::time::sleep(RELAY_GRACE), if qemu_over && relay.is_none() && qemu.status != "completed" => {
                task.abort();
                relay = Some(Err(QemuError::Abandoned(qemu.status.clone(), RELAY_GRACE)));
            }
            s = rx.recv(), if !qemu_over => match s {
                Some(Ok(s)) => {
                    qemu_over = s.is_over();
                    qemu = s.clone();
                    set(&|m| m.qemu = s.clone());
                }
                Some(Err(e)) => {
                    qemu_error = Some(e);
                    qemu_over = true;
                }
                None => qemu_over = true,
            },
        }
    }
    let _ = driver.await;
    let relay = relay.unwrap_or(Err(QemuError::PeerClosed));
    let report = match &relay {
        Ok(r) => Some(MoveReport::of(r, &qemu)),
        Err(_) => None,
    };
    let (state, error) = match (&relay, qemu.status.as_str(), qemu_error) {
        (_, _, Some(e)) => (MoveState::Failed, Some(format!("the source QEMU: {e}"))),
        (Ok(_), "completed", None) => (MoveState::Completed, None),
        (Ok(_), s, None) => (
            MoveState::Failed,
            Some(format!(
                "the source QEMU's migration ended {s}: {}; its guest runs at this site, and the destination QEMU did not load a complete stream (restart it with -incoming defer before trying again)",
                qemu.error.clone().unwrap_or_default()
            )),
        ),
        (Err(e), _, None) => (
            MoveState::Failed,
            Some(format!(
                "{e}; the source QEMU's migration was cancelled and its guest runs at this site; the destination QEMU did not receive the whole stream (restart it with -incoming defer before trying again)"
            )),
        ),
    };
    set(&|m| {
        m.state = state;
        m.report = report.clone();
        m.error = error.clone();
        m.progress_cell = None;
    });
    lock(&inner.migrations)
        .get(&name)
        .cloned()
        .unwrap_or_else(|| MoveStatus {
            name: name.clone(),
            to: String::new(),
            state,
            qemu,
            relay: h.progress.get(),
            report,
            error,
            progress_cell: None,
        })
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Registered destinations by migration name.
    destinations: Mutex<HashMap<String, Destination>>,
    /// Migrations this site started with [`QemuService::migrate`].
    migrations: Mutex<HashMap<String, MoveStatus>>,
}

impl Inner {
    fn take_destination(&self, name: &str) -> Option<Destination> {
        lock(&self.destinations).remove(name)
    }
}

/// Where a destination QEMU takes its incoming migration.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Already listening (its `migrate-incoming` ran) on this address.
    Incoming(SocketAddr),
    /// Started with `-incoming defer`, controlled over this QMP socket: the
    /// gateway sets it up as the source's settings require and runs
    /// `migrate-incoming` when the migration arrives.
    Qmp(PathBuf),
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
            migrations: Mutex::default(),
        });
        let task = tokio::spawn(relay::serve_incoming(inner.clone(), streams));
        Ok((QemuService { inner }, task))
    }

    /// Registers a destination QEMU listening for migration `name` on
    /// `incoming` (its `migrate-incoming` address): the next relay of that
    /// name from a peer feeds it. Replaces an earlier registration.
    pub fn accept(&self, name: &str, incoming: SocketAddr) {
        lock(&self.inner.destinations).insert(name.to_string(), Destination::Incoming(incoming));
    }

    /// Registers a destination QEMU (started with `-incoming defer`)
    /// controlled over the QMP socket `qmp` for migration `name`; checks
    /// that the socket answers.
    pub async fn accept_qmp(&self, name: &str, qmp: PathBuf) -> Result<(), drive::DriveError> {
        let path = qmp.clone();
        let who = format!("destination QEMU '{name}'");
        tokio::task::spawn_blocking(move || drive::connect(&path, &who).map(|_| ()))
            .await
            .unwrap_or_else(|e| Err(drive::DriveError::Port(std::io::Error::other(e))))?;
        lock(&self.inner.destinations).insert(name.to_string(), Destination::Qmp(qmp));
        Ok(())
    }

    /// The QEMU migrations this site started, newest state of each.
    pub fn moves(&self) -> Vec<MoveStatus> {
        let mut v: Vec<_> = lock(&self.inner.migrations).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One QEMU migration this site started.
    pub fn move_status(&self, name: &str) -> Option<MoveStatus> {
        let mut s = lock(&self.inner.migrations).get(name).cloned()?;
        if let Some(p) = &s.progress_cell {
            s.relay = p.get();
        }
        Some(s)
    }

    /// Moves the QEMU behind the QMP socket `req.qmp` to site `req.to`:
    /// sets its downtime limit, tells the destination gateway the settings
    /// the destination QEMU needs, points the source's `migrate` at this
    /// gateway, and follows it to the end. Returns at once; follow it with
    /// [`QemuService::move_status`].
    pub async fn migrate(&self, req: MoveRequest) -> Result<JoinHandle<MoveStatus>, QemuError> {
        if req.to == self.inner.peering.site() {
            return Err(QemuError::SameSite(req.to));
        }
        self.inner.peering.live_connection(&req.to)?;
        let (path, downtime) = (req.qmp.clone(), req.downtime);
        let who = format!("source QEMU '{}'", req.name);
        let (q, setup) = tokio::task::spawn_blocking(move || {
            let mut q = drive::connect(&path, &who)?;
            let setup = drive::prepare_source(&mut q, downtime)?;
            Ok::<_, drive::DriveError>((q, setup))
        })
        .await
        .map_err(|e| QemuError::Drive(drive::DriveError::Port(std::io::Error::other(e))))??;
        let h = self
            .listen_with(&req.name, &req.to, req.scope.as_deref(), setup)
            .await?;
        let status = MoveStatus {
            name: req.name.clone(),
            to: req.to.clone(),
            state: MoveState::Running,
            qemu: drive::QemuStatus::default(),
            relay: Progress::default(),
            report: None,
            error: None,
            progress_cell: Some(h.progress.clone()),
        };
        lock(&self.inner.migrations).insert(req.name.clone(), status);
        let inner = self.inner.clone();
        Ok(tokio::spawn(follow(inner, req.name, q, h)))
    }

    /// Opens a loopback port for migration `name` to site `to` and relays
    /// what the source QEMU sends to it (point the QEMU's `migrate` at
    /// [`SourceHandle::addr`]); the destination QEMU must have been set up
    /// as the source (see [`QemuService::migrate`], which does that). The
    /// dedup scope is `scope` or the site's.
    pub async fn listen(
        &self,
        name: &str,
        to: &str,
        scope: Option<&str>,
    ) -> Result<SourceHandle, QemuError> {
        self.listen_with(name, to, scope, drive::Setup::default())
            .await
    }

    /// Opens a loopback port for migration `name` to site `to` and relays
    /// what the source QEMU sends to it (point the QEMU's `migrate` at
    /// [`SourceHandle::addr`]). The dedup scope is `scope` or the site's.
    async fn listen_with(
        &self,
        name: &str,
        to: &str,
        scope: Option<&str>,
        setup: drive::Setup,
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
            let r = relay::run_source(&inner, &name, &to, &scope, &setup, listener, &p).await;
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
