//! The tokio/QUIC edge of a relayed migration. The source side connects the
//! local shim's end of a unix stream pair (driven by [`VmHosting::migrate_out`]
//! on a blocking thread) to a QUIC stream to the destination gateway through
//! a [`SourceSession`]; the destination side does the reverse through a
//! [`DestSession`] and [`VmHosting::receive`].
//!
//! Exactly-one-place rests on the shims' protocol and on one rule here: when
//! the QUIC stream fails (the peering's idle timeout declares a cut link
//! dead), the relay drops its end of the unix stream at once, so the shim
//! sees the stream close: before the handover the source resumes the VM and
//! the destination discards its copy; after it the destination runs the VM
//! and the source never does again.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wanmig_codec::{EncoderConfig, Inventory};
use wanmig_vmm::protocol::{self, Message};
use wanmig_vmm::{MigrateOptions, ReceiveOptions, VmConfig};

use super::records::{Direction, Outcome, Records};
use super::session::{DestSession, SessionError, SourceSession};
use super::stores::SiteStores;
use super::vmhost::{HostError, VmHosting};
use super::wire::{self, Frame, FrameDecoder, OpenRequest, SESSION_VERSION};
use crate::peering::{stream_kind, IncomingStream, Peering};

/// Read buffer size for both streams.
const READ_CHUNK: usize = 256 << 10;
/// How long a failing relay tries to tell the shim and the peer why.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Why a relayed migration failed at the gateway level.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Peering(#[from] crate::peering::PeeringError),
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    #[error("the destination did not answer the migration request within {0:?}")]
    OpenTimeout(Duration),
    #[error("QUIC stream to the peer: {0}")]
    Quic(String),
    #[error("local shim stream: {0}")]
    Local(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the peer closed the migration stream before it finished")]
    PeerClosed,
}

/// What the relay tasks share.
pub struct RelayContext {
    pub peering: Peering,
    pub host: Arc<dyn VmHosting>,
    pub stores: SiteStores,
    pub records: Records,
    pub encoder: EncoderConfig,
    pub open_timeout: Duration,
    pub metrics: Option<Arc<super::metrics::MigrationMetrics>>,
}

/// Writes frames to the QUIC stream.
async fn send_frames(send: &mut SendStream, frames: &[Frame]) -> Result<u64, RelayError> {
    let mut buf = Vec::new();
    for f in frames {
        wire::encode(f, &mut buf);
    }
    send.write_all(&buf)
        .await
        .map_err(|e| RelayError::Quic(e.to_string()))?;
    Ok(buf.len() as u64)
}

/// Writes shim messages to the local shim stream.
async fn send_shim(local: &mut UnixStream, msgs: &[Message]) -> Result<(), RelayError> {
    let mut buf = Vec::new();
    for m in msgs {
        protocol::encode(m, &mut buf);
    }
    local.write_all(&buf).await?;
    Ok(())
}

/// Reads frames until one arrives (for the session opening).
async fn read_frame(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Frame, RelayError> {
    loop {
        if let Some(f) = dec.next().map_err(SessionError::from)? {
            return Ok(f);
        }
        match recv.read(buf).await {
            Ok(Some(n)) => dec.feed(&buf[..n]),
            Ok(None) => return Err(RelayError::PeerClosed),
            Err(e) => return Err(RelayError::Quic(e.to_string())),
        }
    }
}

fn local_pair() -> Result<(StdUnixStream, UnixStream), RelayError> {
    let (shim, gw) = StdUnixStream::pair()?;
    gw.set_nonblocking(true)?;
    Ok((shim, UnixStream::from_std(gw)?))
}

/// Why the pump loop ended.
enum LoopEnd {
    /// The local shim closed its stream (it finished, either way).
    ShimDone,
    /// The peer or the session failed.
    Failed(RelayError),
}

/// Runs an outgoing migration of `vm` to `to` under record `id`; returns
/// once it has ended, with the outcome recorded.
pub async fn run_source(
    ctx: Arc<RelayContext>,
    id: String,
    vm: String,
    to: String,
    scope: String,
    opts: MigrateOptions,
) -> Outcome {
    let records = ctx.records.clone();
    let result = source_inner(&ctx, &id, &vm, &to, scope, opts).await;
    let (outcome, error) = match &result {
        Ok(report) => {
            let (downtime, rounds, digest) = (
                report.downtime.as_secs_f64() * 1e3,
                report.rounds.len() as u32,
                report.memory_digest.clone(),
            );
            records.update(&id, Direction::Outgoing, |r| {
                r.downtime_ms = Some(downtime);
                r.rounds = rounds;
                r.memory_digest = Some(digest);
            });
            if let Some(m) = &ctx.metrics {
                m.downtime.observe(report.downtime.as_secs_f64());
            }
            (Outcome::Succeeded, None)
        }
        Err(RelayError::Host(HostError::Migration(e))) if !e.vm_kept_at_source() => {
            (Outcome::HandoverUnconfirmed, Some(e.to_string()))
        }
        Err(e) => (Outcome::FailedKeptAtSource, Some(e.to_string())),
    };
    match &error {
        None => tracing::info!(vm, to, id, "migration succeeded"),
        Some(e) => tracing::warn!(
            vm,
            to,
            id,
            outcome = outcome.label(),
            "migration ended: {e}"
        ),
    }
    if let Some(m) = &ctx.metrics {
        m.outcomes.with_label_values(&[outcome.label()]).inc();
    }
    records.update(&id, Direction::Outgoing, |r| {
        r.outcome = Some(outcome);
        r.error = error;
    });
    outcome
}

async fn source_inner(
    ctx: &RelayContext,
    id: &str,
    vm: &str,
    to: &str,
    scope: String,
    opts: MigrateOptions,
) -> Result<wanmig_vmm::MigrationReport, RelayError> {
    let config = ctx.host.config(vm)?;
    let (mut send, mut recv) = ctx.peering.open_stream(to, stream_kind::MIGRATION).await?;
    send_frames(
        &mut send,
        &[Frame::Open {
            version: SESSION_VERSION,
            request: OpenRequest {
                id: id.to_string(),
                vm: vm.to_string(),
                config: config.clone(),
                scope,
            },
        }],
    )
    .await?;
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let answer = tokio::time::timeout(ctx.open_timeout, read_frame(&mut recv, &mut dec, &mut buf))
        .await
        .map_err(|_| RelayError::OpenTimeout(ctx.open_timeout))??;
    let inventory = match answer {
        Frame::Accept { inventory } => {
            Inventory::from_bytes(&inventory).map_err(SessionError::from)?
        }
        Frame::Refuse(reason) => return Err(RelayError::Refused(reason)),
        other => {
            return Err(SessionError::Unexpected(format!(
                "{} instead of accept or refuse",
                super::session::frame_name(&other)
            ))
            .into())
        }
    };
    // The encoder answers NACKs from its copy of what it sent: make it big
    // enough to hold all of the VM's memory.
    let mut enc = ctx.encoder.clone();
    enc.cache_bytes = enc.cache_bytes.max(config.mem_size as usize + (1 << 20));
    let mut session = SourceSession::new(enc, inventory, config.mem_size / 4096)?;

    let (shim_end, mut local) = local_pair()?;
    let host = ctx.host.clone();
    let (vm_name, to_site) = (vm.to_string(), to.to_string());
    let shim =
        tokio::task::spawn_blocking(move || host.migrate_out(&vm_name, &to_site, shim_end, &opts));

    let mut shim_dec = protocol::Decoder::new();
    let mut lbuf = vec![0u8; READ_CHUNK];
    // The destination closes its side once the VM runs there; the shim may
    // still be reading `Resumed`, so keep relaying until it is done.
    let mut peer_done = false;
    let end = loop {
        tokio::select! {
            r = local.read(&mut lbuf) => {
                let n = match r {
                    Ok(0) | Err(_) => break LoopEnd::ShimDone,
                    Ok(n) => n,
                };
                shim_dec.feed(&lbuf[..n]);
                let mut frames = Vec::new();
                loop {
                    match shim_dec.next() {
                        Ok(Some(msg)) => frames.extend(session.on_shim(msg)),
                        Ok(None) => break,
                        // The shim speaks the protocol it defines; a bad
                        // frame from it is a local bug: stop relaying.
                        Err(e) => {
                            tracing::error!("bad frame from the local shim: {e}");
                            break;
                        }
                    }
                }
                let phase = session.phase();
                let progress = session.progress().clone();
                ctx.records.update(id, Direction::Outgoing, |r| {
                    r.phase = phase;
                    r.progress = progress;
                });
                if let Err(e) = send_frames(&mut send, &frames).await {
                    break LoopEnd::Failed(e);
                }
            }
            r = recv.read(&mut buf), if !peer_done => {
                let n = match r {
                    Ok(Some(n)) => n,
                    Ok(None) if session.phase() == super::session::Phase::Resumed => {
                        peer_done = true;
                        continue;
                    }
                    Ok(None) => break LoopEnd::Failed(RelayError::PeerClosed),
                    Err(e) => break LoopEnd::Failed(RelayError::Quic(e.to_string())),
                };
                dec.feed(&buf[..n]);
                let mut failed = None;
                loop {
                    let frame = match dec.next() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => { failed = Some(RelayError::Session(e.into())); break; }
                    };
                    let step = match session.on_peer(frame) {
                        Ok(s) => s,
                        Err(e) => { failed = Some(e.into()); break; }
                    };
                    if let Err(e) = send_frames(&mut send, &step.to_peer).await {
                        failed = Some(e);
                        break;
                    }
                    if let Err(e) = send_shim(&mut local, &step.to_shim).await {
                        failed = Some(e);
                        break;
                    }
                }
                let phase = session.phase();
                ctx.records.update(id, Direction::Outgoing, |r| r.phase = phase);
                if let Some(e) = failed {
                    break LoopEnd::Failed(e);
                }
            }
        }
    };
    if let LoopEnd::Failed(e) = &end {
        tracing::warn!(vm, to, "migration relay stopped: {e}");
        // Tell the shim why (before the handover it then keeps the VM),
        // and the peer if it still listens.
        if !session.phase().past_handover() {
            let abort = Message::Abort(format!("gateway relay failed: {e}"));
            let _ = tokio::time::timeout(
                ABORT_WAIT,
                send_shim(&mut local, std::slice::from_ref(&abort)),
            )
            .await;
            let _ = tokio::time::timeout(
                ABORT_WAIT,
                send_frames(&mut send, &[super::session::shim_frame(&abort)]),
            )
            .await;
        }
    }
    // Closing our end ends the shim's migration if it still runs.
    drop(local);
    let result = shim
        .await
        .map_err(|e| RelayError::Quic(format!("the migration thread failed: {e}")))?;
    match &result {
        Ok(_) => {
            let _ = send.finish();
        }
        Err(_) => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
        }
    }
    let phase = session.phase();
    let stats = session.encoder_stats();
    if let Some(m) = &ctx.metrics {
        m.observe_encoder(&stats, session.progress().round);
    }
    ctx.records
        .update(id, Direction::Outgoing, |r| r.phase = phase);
    Ok(result?)
}

/// Serves incoming migration streams until the peering stops.
pub async fn serve_incoming(
    ctx: Arc<RelayContext>,
    mut streams: tokio::sync::mpsc::Receiver<IncomingStream>,
) {
    while let Some(s) = streams.recv().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let peer = s.peer.clone();
            if let Err(e) = run_destination(ctx, s).await {
                tracing::warn!(from = peer, "incoming migration failed: {e}");
            }
        });
    }
}

async fn refuse(send: &mut SendStream, reason: String) -> RelayError {
    let _ = send_frames(send, &[Frame::Refuse(reason.clone())]).await;
    let _ = send.finish();
    RelayError::Refused(reason)
}

async fn run_destination(ctx: Arc<RelayContext>, s: IncomingStream) -> Result<(), RelayError> {
    let IncomingStream {
        peer,
        mut send,
        mut recv,
        ..
    } = s;
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let open = tokio::time::timeout(ctx.open_timeout, read_frame(&mut recv, &mut dec, &mut buf))
        .await
        .map_err(|_| RelayError::OpenTimeout(ctx.open_timeout))??;
    let request = match open {
        Frame::Open { version, .. } if version != SESSION_VERSION => {
            return Err(refuse(
                &mut send,
                format!("migration session version {version} is not supported (this gateway speaks {SESSION_VERSION}); run the same wanmig version at both sites"),
            )
            .await)
        }
        Frame::Open { request, .. } => request,
        other => {
            return Err(refuse(
                &mut send,
                format!("expected open, got {}", super::session::frame_name(&other)),
            )
            .await)
        }
    };
    let OpenRequest {
        id,
        vm,
        config,
        scope,
    } = request;
    if let Err(e) = super::vmhost::validate_vm_name(&vm).and_then(|_| {
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))
    }) {
        return Err(refuse(&mut send, e.to_string()).await);
    }
    if let Some(existing) = ctx.host.list().into_iter().find(|v| v.name == vm) {
        use super::vmhost::VmState;
        if !matches!(
            existing.state,
            VmState::MigratedAway { .. }
                | VmState::HandoverUnconfirmed { .. }
                | VmState::Failed { .. }
        ) {
            return Err(refuse(
                &mut send,
                format!(
                    "a VM named '{vm}' is already {} at {}",
                    existing.state,
                    ctx.peering.site()
                ),
            )
            .await);
        }
    }
    let store = match ctx.stores.open(&scope) {
        Ok(s) => s,
        Err(e) => return Err(refuse(&mut send, e.to_string()).await),
    };
    let inventory = store.inventory_bytes();
    let mut session = DestSession::new(wanmig_codec::DecoderConfig::default(), store.clone())?;
    ctx.records
        .insert(&id, &vm, &peer, ctx.peering.site(), Direction::Incoming);
    send_frames(&mut send, &[Frame::Accept { inventory }]).await?;
    tracing::info!(vm, from = peer, id, "receiving a VM");

    let (shim_end, mut local) = local_pair()?;
    let host = ctx.host.clone();
    let (vm_name, from) = (vm.clone(), peer.clone());
    let shim = tokio::task::spawn_blocking(move || {
        host.receive(
            &vm_name,
            &from,
            config_for_here(config),
            shim_end,
            &ReceiveOptions::default(),
        )
    });
    let mut shim_dec = protocol::Decoder::new();
    let mut lbuf = vec![0u8; 64 << 10];
    let end = loop {
        tokio::select! {
            r = recv.read(&mut buf) => {
                let n = match r {
                    Ok(Some(n)) => n,
                    Ok(None) => break LoopEnd::Failed(RelayError::PeerClosed),
                    Err(e) => break LoopEnd::Failed(RelayError::Quic(e.to_string())),
                };
                dec.feed(&buf[..n]);
                let mut failed = None;
                loop {
                    let frame = match dec.next() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => { failed = Some(RelayError::Session(e.into())); break; }
                    };
                    let step = match session.on_peer(frame) {
                        Ok(s) => s,
                        Err(e) => { failed = Some(e.into()); break; }
                    };
                    if let Err(e) = send_frames(&mut send, &step.to_peer).await {
                        failed = Some(e);
                        break;
                    }
                    if let Err(e) = send_shim(&mut local, &step.to_shim).await {
                        failed = Some(e);
                        break;
                    }
                }
                let (phase, pages) = (session.phase(), session.pages());
                ctx.records.update(&id, Direction::Incoming, |r| {
                    r.phase = phase;
                    r.progress.pages = pages;
                });
                if let Some(e) = failed {
                    break LoopEnd::Failed(e);
                }
            }
            r = local.read(&mut lbuf) => {
                let n = match r {
                    Ok(0) | Err(_) => break LoopEnd::ShimDone,
                    Ok(n) => n,
                };
                shim_dec.feed(&lbuf[..n]);
                let mut frames = Vec::new();
                while let Ok(Some(msg)) = shim_dec.next() {
                    match session.on_shim(msg) {
                        Ok(f) => frames.push(f),
                        Err(e) => tracing::error!("local shim: {e}"),
                    }
                }
                let phase = session.phase();
                ctx.records.update(&id, Direction::Incoming, |r| r.phase = phase);
                if let Err(e) = send_frames(&mut send, &frames).await {
                    if phase.past_handover() {
                        // The VM runs here; the source learns it when it
                        // asks again.
                        tracing::warn!(vm, "VM resumed, but telling {peer} failed: {e}");
                    } else {
                        break LoopEnd::Failed(e);
                    }
                }
            }
        }
    };
    if let LoopEnd::Failed(e) = &end {
        tracing::warn!(vm, from = peer, "incoming migration relay stopped: {e}");
        if !session.phase().past_handover() {
            let abort = Message::Abort(format!("destination gateway relay failed: {e}"));
            let _ = tokio::time::timeout(
                ABORT_WAIT,
                send_shim(&mut local, std::slice::from_ref(&abort)),
            )
            .await;
        }
    }
    drop(local);
    let result = shim
        .await
        .map_err(|e| RelayError::Quic(format!("the receiving thread failed: {e}")))?;
    let _ = send.finish();
    store.sync();
    if let Some(m) = &ctx.metrics {
        m.observe_store(&store);
    }
    let phase = session.phase();
    let (outcome, error) = match &result {
        Ok(_) => (Outcome::Succeeded, None),
        Err(e) => (Outcome::FailedKeptAtSource, Some(e.to_string())),
    };
    ctx.records.update(&id, Direction::Incoming, |r| {
        r.phase = phase;
        r.outcome = Some(outcome);
        r.error = error;
        if let Ok(rep) = &result {
            r.memory_digest = Some(rep.memory_digest.clone());
        }
    });
    result.map(|_| ()).map_err(Into::into)
}

/// Site-specific parts of a VM's configuration do not travel: a TAP name
/// or disk path at the source means nothing here.
fn config_for_here(mut config: VmConfig) -> VmConfig {
    if let Some(net) = &mut config.net {
        net.tap = None;
    }
    config.mem_image = None;
    config
}
