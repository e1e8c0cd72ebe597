//! The tokio/QUIC edge of a relayed migration. The source side connects the
//! local shim's end of a unix stream pair (driven by [`VmHosting::migrate_out`]
//! on a blocking thread) to a QUIC stream to the destination gateway through
//! a [`SourceSession`]; the destination side does the reverse through a
//! [`DestSession`] and [`VmHosting::receive`].
//!
//! Exactly-one-place rests on the shims' protocol and on two rules here.
//! When the QUIC stream fails (the peering's idle timeout declares a cut
//! link dead) before the destination confirmed, the relay drops its end of
//! the unix stream at once, so the shim sees the stream close: the source
//! resumes the VM and the destination discards its copy. When it fails
//! after the destination confirmed, the destination parks its copy (paused,
//! never dropped on a timeout) and the source asks it, with backoff, until
//! it answers; [`super::settle`] has who owns the VM in each case and who
//! may settle a parked one.

use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use wanmig_codec::{ContentStore, EncoderConfig, Inventory};
use wanmig_migration::machine::VmConfig;
use wanmig_migration::policy::{
    ConfigError, CopyProgress, DowntimeGoal, DowntimeVerdict, Flight, PathEstimate, RelayConfig,
    RelayPolicy,
};
use wanmig_migration::run::{MigrateOptions, MigrationReport, ReceiveOptions};
use wanmig_migration::session::frame::{
    self, Decoder as FrameDecoder, Frame, OpenRequest, Resolution, SESSION,
};
use wanmig_migration::session::{
    shim_frame, DestSession, Phase, SessionError, SourceSession, Step,
};
use wanmig_migration::shim::{self, Message};

use super::metrics::{IncomingFigures, INCOMING, OUTGOING};
use super::records::{Direction, Outcome, Records};
use super::settle::{self, Answer, Decision, Known, RecordState, SettleError, Settler};
use super::stores::SiteStores;
use crate::backoff::Backoff;
use crate::peering::{IncomingStream, Peering, StreamKind};
use crate::vms::{HostError, VmHosting};

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
    #[error("reading the QUIC stream from the peer: {0}")]
    QuicRead(#[from] quinn::ReadError),
    #[error("writing the QUIC stream to the peer: {0}")]
    QuicWrite(#[from] quinn::WriteError),
    #[error("the {what} thread failed: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("local shim stream: {0}")]
    Local(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Policy(#[from] ConfigError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the peer closed the migration stream before it finished")]
    PeerClosed,
    #[error(transparent)]
    Settle(#[from] SettleError),
}

/// What the relay tasks share.
pub struct RelayContext {
    pub peering: Peering,
    pub host: Arc<dyn VmHosting>,
    pub stores: SiteStores,
    pub records: Records,
    pub encoder: EncoderConfig,
    pub open_timeout: Duration,
    /// The most memory an incoming VM may have, bytes (`[vms]
    /// max_mem_mib`).
    pub max_mem_size: std::sync::atomic::AtomicU64,
    /// How long a migration whose link failed after the destination
    /// confirmed it may stay unsettled before the gateways flag it for an
    /// operator (see [`Parked`]); it stays parked after that.
    pub handover_wait: Duration,
    pub metrics: Option<Arc<super::metrics::MigrationMetrics>>,
    /// Incoming migrations whose link failed after the destination shim
    /// confirmed complete state, by migration id.
    pub parked: std::sync::Mutex<HashMap<String, Parked>>,
}

/// A destination VM held paused (confirmed, not resumed) after its link
/// failed: only the source knows whether its shim handed the VM over, so
/// the destination neither runs nor discards it until the source says
/// (`Resolve`) or an operator settles it here.
pub struct Parked {
    /// The site that sent the migration (the mTLS identity of its stream):
    /// the only peer that may settle it.
    from: String,
    decide: oneshot::Sender<(Decision, oneshot::Sender<Resolution>)>,
}

/// Takes parked migration `id` out of the table if `settler` may settle it.
fn take_parked(
    ctx: &RelayContext,
    id: &str,
    settler: Settler<'_>,
) -> Result<Option<Parked>, SettleError> {
    let mut parked = lock(&ctx.parked);
    let Some(p) = parked.get(id) else {
        return Ok(None);
    };
    settle::authorize(id, &p.from, settler)?;
    Ok(parked.remove(id))
}

/// Hands `decision` to the relay task holding `p`; returns what became of
/// the VM (`None` if that task is gone).
async fn decide(p: Parked, decision: Decision) -> Option<Resolution> {
    let (tx, rx) = oneshot::channel();
    p.decide.send((decision, tx)).ok()?;
    rx.await.ok()
}

/// The operator's settlement of parked migration `id` (`wanmig migration
/// settle`): resumes or discards the VM held here.
pub async fn settle_by_operator(
    ctx: &RelayContext,
    id: &str,
    decision: Decision,
) -> Result<Resolution, SettleError> {
    let p = take_parked(ctx, id, Settler::Operator)?
        .ok_or_else(|| SettleError::NotParked(id.to_string()))?;
    tracing::warn!(id, ?decision, "an operator settles the parked migration");
    decide(p, decision)
        .await
        .ok_or_else(|| SettleError::NotParked(id.to_string()))
}

/// Writes frames to the QUIC stream.
async fn send_frames(send: &mut SendStream, frames: &[Frame]) -> Result<u64, RelayError> {
    let mut buf = Vec::new();
    for f in frames {
        frame::encode(f, &mut buf);
    }
    send.write_all(&buf).await?;
    Ok(buf.len() as u64)
}

/// Writes shim messages to the local shim stream.
async fn send_shim(local: &mut UnixStream, msgs: &[Message]) -> Result<(), RelayError> {
    let mut buf = Vec::new();
    for m in msgs {
        shim::encode(m, &mut buf);
    }
    local.write_all(&buf).await?;
    Ok(())
}

/// Either side's session, as the peer-reading loop drives it.
trait PeerSession {
    fn on_peer(&mut self, frame: Frame) -> Result<Step, SessionError>;
}

impl PeerSession for SourceSession {
    fn on_peer(&mut self, frame: Frame) -> Result<Step, SessionError> {
        SourceSession::on_peer(self, frame)
    }
}

impl<S: ContentStore> PeerSession for DestSession<S> {
    fn on_peer(&mut self, frame: Frame) -> Result<Step, SessionError> {
        DestSession::on_peer(self, frame)
    }
}

/// Applies every complete frame buffered in `dec` to `session` (calling
/// `after_step` after each), sending what each step asks for to the peer
/// and to the local shim, in order.
async fn apply_peer_frames<P: PeerSession>(
    dec: &mut FrameDecoder,
    session: &mut P,
    send: &mut SendStream,
    local: &mut UnixStream,
    mut after_step: impl FnMut(&P),
) -> Result<(), RelayError> {
    while let Some(frame) = dec.next().map_err(|e| RelayError::Session(e.into()))? {
        let step = session.on_peer(frame)?;
        after_step(session);
        send_frames(send, &step.to_peer).await?;
        send_shim(local, &step.to_shim).await?;
    }
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
            Err(e) => return Err(e.into()),
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

/// Batch bytes and guest bytes the source relay has in flight (sent, not
/// yet acknowledged by the destination).
fn in_flight(session: &SourceSession) -> Flight {
    Flight {
        wire: session.in_flight(),
        guest: session.guest_in_flight(),
    }
}

/// The QUIC path's congestion window and round trip, as its controller
/// keeps them.
fn path_estimate(c: &quinn::Connection) -> PathEstimate {
    let path = c.stats().path;
    PathEstimate {
        cwnd: path.cwnd,
        rtt: path.rtt,
    }
}

/// What an outgoing migration runs with: the source shim's options and
/// the operator's downtime goal its budget came from (the pause is judged
/// against the goal).
pub struct SourcePlan {
    pub opts: MigrateOptions,
    pub goal: DowntimeGoal,
}

/// Runs an outgoing migration of `vm` to `to` under record `id`; returns
/// once it has ended, with the outcome recorded.
pub async fn run_source(
    ctx: Arc<RelayContext>,
    id: String,
    vm: String,
    to: String,
    scope: String,
    plan: SourcePlan,
    bandwidth_bps: Option<u64>,
) -> Outcome {
    let SourcePlan { opts, goal } = plan;
    let records = ctx.records.clone();
    let result = source_inner(&ctx, &id, &vm, &to, scope, opts, bandwidth_bps).await;
    if let Some(r) = records.get(&id).and_then(|r| r.resolution) {
        tokio::spawn(resolve(
            ctx.clone(),
            id.clone(),
            vm.clone(),
            to.clone(),
            r == HANDED_OVER_UNSETTLED,
        ));
    }
    let (outcome, error) = match &result {
        Ok(report) => {
            let verdict =
                records.update(&id, Direction::Outgoing, |r| r.absorb_report(report, &goal));
            if let Some(DowntimeVerdict {
                met: false,
                miss,
                why,
                ..
            }) = verdict
            {
                tracing::warn!(
                    vm,
                    to,
                    id,
                    miss = miss.map_or("-", |m| m.label()),
                    "the migration missed its downtime goal: {}",
                    why.as_deref().unwrap_or("no breakdown reported")
                );
            }
            if let Some(m) = &ctx.metrics {
                m.downtime
                    .with_label_values(&[OUTGOING])
                    .observe(report.downtime.as_secs_f64());
            }
            (Outcome::Succeeded, None)
        }
        Err(RelayError::Host(HostError::Migration(e))) if !e.vm_kept_at_source() => {
            (Outcome::HandoverUnconfirmed, Some(e.to_string()))
        }
        Err(e) => (Outcome::FailedKeptAtSource, Some(e.to_string())),
    };
    if outcome == Outcome::FailedKeptAtSource {
        // No handover: the VM's disk stays here, and no site may copy it.
        ctx.host.withdraw_disk(&vm, &to);
    }
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
        m.observe_outcome(OUTGOING, outcome.label());
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
    bandwidth_bps: Option<u64>,
) -> Result<MigrationReport, RelayError> {
    let config = ctx.host.config(vm)?;
    ctx.host.export_disk(vm, to)?;
    let (mut send, mut recv) = ctx.peering.open_stream(to, StreamKind::Migration).await?;
    send_frames(
        &mut send,
        &[Frame::Open {
            version: SESSION.current,
            request: Box::new(OpenRequest {
                id: id.to_string(),
                vm: vm.to_string(),
                config: config.clone(),
                scope,
            }),
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
                other.name()
            ))
            .into())
        }
    };
    // The encoder answers NACKs from its copy of what it sent: make it big
    // enough to hold all of the VM's memory.
    let mut enc = ctx.encoder.clone();
    enc.cache_bytes = enc.cache_bytes.max(config.mem_size as usize + (1 << 20));
    let initial_level = enc.level;
    let mut session = SourceSession::new(enc, inventory, config.mem_size / 4096)?;
    let rtt = ctx
        .peering
        .peer_states()
        .into_iter()
        .find(|p| p.site == to)
        .and_then(|p| p.link)
        .map(|l| Duration::from_secs_f64(l.rtt_ms.max(0.0) / 1e3))
        .unwrap_or(Duration::from_millis(10));
    let mut policy = RelayPolicy::new(
        RelayConfig {
            bandwidth_cap_bps: bandwidth_bps,
            ..RelayConfig::new(rtt, initial_level)
        },
        std::time::Instant::now(),
    )?;
    let connection = ctx.peering.live_connection(to).ok();
    // Time spent encoding, and the copy's start: is one encoding thread
    // the bottleneck?
    let mut encode_busy = Duration::ZERO;
    let copy_started = std::time::Instant::now();

    let (shim_end, mut local) = local_pair()?;
    let host = ctx.host.clone();
    let (vm_name, to_site) = (vm.to_string(), to.to_string());
    let shim =
        tokio::task::spawn_blocking(move || host.migrate_out(&vm_name, &to_site, shim_end, &opts));

    let mut shim_dec = shim::Decoder::new();
    let mut lbuf = vec![0u8; READ_CHUNK];
    // The destination closes its side once the VM runs there; the shim may
    // still be reading `Resumed`, so keep relaying until it is done.
    let mut peer_done = false;
    let mut stalled_at: Option<std::time::Instant> = None;
    let mut last_phase = session.phase();
    let end = loop {
        if stalled_at.is_none() && !policy.has_room(in_flight(&session)) {
            stalled_at = Some(std::time::Instant::now());
        }
        policy.on_in_flight(in_flight(&session));
        if session.phase() != last_phase {
            last_phase = session.phase();
            tracing::debug!(phase = ?last_phase, in_flight = session.in_flight(), guest_in_flight = session.guest_in_flight(), window = policy.wire_window().window(), guest_window = policy.guest_window().window(), pages = session.progress().pages, "source relay phase");
        }
        tokio::select! {
            // Backpressure: the shim's writes block while a window's worth
            // of batches (or of the guest pages in them) is unacknowledged,
            // so its rounds run at the speed of the WAN or of the
            // destination, whichever is slower, and its planner sees it.
            r = local.read(&mut lbuf), if policy.has_room(in_flight(&session)) => {
                let n = match r {
                    Ok(0) | Err(_) => break LoopEnd::ShimDone,
                    Ok(n) => n,
                };
                shim_dec.feed(&lbuf[..n]);
                let mut frames = Vec::new();
                // No await inside: the wall time is the encoder's CPU time
                // plus whatever preempted this thread (an upper bound).
                let encoding = std::time::Instant::now();
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
                let spent = encoding.elapsed();
                encode_busy += spent;
                policy.on_encoded(session.level(), &session.encoder_stats(), spent);
                if let Some(c) = &connection {
                    policy.on_path(path_estimate(c));
                }
                let live = session.phase() == Phase::Copying;
                let setting = policy.codec(std::time::Instant::now(), session.codec_setting(), live);
                match session.apply_codec(setting) {
                    Ok(level) => {
                        if let Some(m) = &ctx.metrics {
                            m.codec_level.set(level.into());
                        }
                    }
                    Err(e) => tracing::warn!("changing the codec level: {e}"),
                }
                let phase = session.phase();
                let progress = session.progress().clone();
                policy.on_progress(CopyProgress {
                    memory_pages: progress.memory_pages,
                    round: progress.round,
                    round_pages: progress.round_pages,
                });
                ctx.records.update(id, Direction::Outgoing, |r| {
                    r.phase = phase;
                    r.progress = progress;
                });
                let bytes: u64 = frames.iter().map(frame::frame_len).sum();
                let wait = policy.pace(bytes, std::time::Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                if let Err(e) = send_frames(&mut send, &frames).await {
                    break LoopEnd::Failed(e);
                }
                // Handed to QUIC: the windows time the round trip from here.
                let sent = Flight {
                    wire: session.acked() + session.in_flight(),
                    guest: session.guest_acked() + session.guest_in_flight(),
                };
                policy.on_sent(sent, std::time::Instant::now());
            }
            r = recv.read(&mut buf), if !peer_done => {
                let n = match r {
                    Ok(Some(n)) => n,
                    Ok(None) if session.phase() == Phase::Resumed => {
                        peer_done = true;
                        continue;
                    }
                    Ok(None) => break LoopEnd::Failed(RelayError::PeerClosed),
                    Err(e) => break LoopEnd::Failed(e.into()),
                };
                dec.feed(&buf[..n]);
                let failed = apply_peer_frames(&mut dec, &mut session, &mut send, &mut local, |s| {
                    let acked = Flight {
                        wire: s.acked(),
                        guest: s.guest_acked(),
                    };
                    policy.on_acked(acked, std::time::Instant::now());
                })
                .await
                .err();
                if let Some(t) = stalled_at {
                    if policy.has_room(in_flight(&session)) {
                        stalled_at = None;
                        tracing::trace!(ms = t.elapsed().as_secs_f64() * 1e3, window = policy.wire_window().window(), guest_window = policy.guest_window().window(), "flow window stall ended");
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
    let copy_time = copy_started.elapsed();
    let p = session.progress();
    tracing::debug!(
        encode_busy_ms = encode_busy.as_millis() as u64,
        copy_ms = copy_time.as_millis() as u64,
        encode_share = encode_busy.as_secs_f64() / copy_time.as_secs_f64().max(1e-9),
        wire_mbit_s = p.bytes_out as f64 * 8.0 / 1e6 / copy_time.as_secs_f64().max(1e-9),
        guest_mbit_s = p.bytes_in as f64 * 8.0 / 1e6 / copy_time.as_secs_f64().max(1e-9),
        level = p.level,
        window = policy.wire_window().window(),
        ack_rtt_ms = policy
            .wire_window()
            .min_ack_rtt()
            .map(|d| d.as_secs_f64() * 1e3),
        guest_window = policy.guest_window().window(),
        "source relay: encoder load over the migration"
    );
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
            let _ = tokio::time::timeout(ABORT_WAIT, send_frames(&mut send, &[shim_frame(&abort)]))
                .await;
        }
    }
    // Closing our end ends the shim's migration if it still runs.
    drop(local);
    let result = shim.await.map_err(|source| RelayError::Thread {
        what: "migration",
        source,
    })?;
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
    // The link failed after the destination may have confirmed: it holds
    // the VM parked until it hears whether the shim here handed it over.
    if matches!(end, LoopEnd::Failed(_))
        && matches!(
            phase,
            Phase::Completing | Phase::Confirmed | Phase::HandedOver
        )
    {
        let handed_over = matches!(&result, Err(HostError::Migration(e)) if !e.vm_kept_at_source());
        pending_resolve(ctx, id, handed_over);
    }
    Ok(result?)
}

/// First and longest pause between a source's `Resolve` attempts.
const RESOLVE_RETRY_FIRST: Duration = Duration::from_millis(250);
const RESOLVE_RETRY_MAX: Duration = Duration::from_secs(5);

const HANDED_OVER_UNSETTLED: &str = "the VM was handed over but the link failed before the destination said it runs; asking it again when the link returns";

fn pending_resolve(ctx: &RelayContext, id: &str, handed_over: bool) {
    let what = if handed_over {
        HANDED_OVER_UNSETTLED
    } else {
        "the VM stays here; telling the destination to discard its copy when the link returns"
    };
    ctx.records.update(id, Direction::Outgoing, |r| {
        r.resolution = Some(what.into())
    });
}

/// Settles a migration whose link failed late (see [`Parked`]): asks the
/// destination, with backoff, until it answers. Past `handover_wait` the
/// record says an operator may settle it at the destination; the asking
/// goes on.
pub async fn resolve(
    ctx: Arc<RelayContext>,
    id: String,
    vm: String,
    to: String,
    handed_over: bool,
) {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(RESOLVE_RETRY_FIRST, RESOLVE_RETRY_MAX);
    let mut flagged = false;
    let answer = loop {
        match ask_resolution(&ctx, &id, &vm, &to, handed_over).await {
            Ok(r) => break r,
            Err(e) => tracing::debug!(id, "settling the migration with {to}: {e}"),
        }
        if !flagged && started.elapsed() >= ctx.handover_wait {
            flagged = true;
            let note = format!(
                "{to} has not answered for {:?}; still asking it, and will until the link returns. \
                 An operator at {to} can settle it with `wanmig migration settle {id}` (see docs/runbook.md)",
                ctx.handover_wait
            );
            tracing::warn!(id, vm, "{note}");
            ctx.records
                .update(&id, Direction::Outgoing, |r| r.resolution = Some(note));
        }
        let pause = backoff.next_delay(&mut rand::rng());
        tokio::time::sleep(pause).await;
    };
    let note = match (handed_over, answer) {
        (true, Resolution::Running) => {
            ctx.host.settle_handover(&vm, &to, true);
            ctx.records.update(&id, Direction::Outgoing, |r| {
                r.outcome = Some(Outcome::Succeeded);
            });
            format!("{to} confirmed that the VM runs there after the link returned")
        }
        (true, _) => {
            ctx.host.settle_handover(&vm, &to, false);
            format!("{to} discarded the VM after this site handed it over (an operator there decided so): it runs nowhere; start it again")
        }
        (false, Resolution::Running) => format!(
            "{to} runs the VM although this site kept it (an operator there resumed it): stop one copy now"
        ),
        (false, _) => format!("{to} discarded its copy; the VM runs here"),
    };
    tracing::info!(id, vm, "migration settled: {note}");
    ctx.records
        .update(&id, Direction::Outgoing, |r| r.resolution = Some(note));
}

async fn ask_resolution(
    ctx: &RelayContext,
    id: &str,
    vm: &str,
    to: &str,
    handed_over: bool,
) -> Result<Resolution, RelayError> {
    let (mut send, mut recv) = ctx.peering.open_stream(to, StreamKind::Migration).await?;
    send_frames(
        &mut send,
        &[Frame::Resolve {
            version: SESSION.current,
            id: id.to_string(),
            vm: Some(vm.to_string()),
            handed_over,
        }],
    )
    .await?;
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let wait = ctx.open_timeout + Duration::from_secs(30);
    let answer = tokio::time::timeout(wait, read_frame(&mut recv, &mut dec, &mut buf))
        .await
        .map_err(|_| RelayError::OpenTimeout(wait))??;
    let _ = send.finish();
    match answer {
        Frame::Resolved(Resolution::Unknown(r)) => Err(SessionError::Unexpected(format!(
            "resolution {r}, which this gateway does not know"
        ))
        .into()),
        Frame::Resolved(r) => Ok(r),
        Frame::Refuse(reason) => Err(RelayError::Refused(reason)),
        other => {
            Err(SessionError::Unexpected(format!("{} instead of resolved", other.name())).into())
        }
    }
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
            if let Err(e) = handle_stream(ctx, s).await {
                tracing::warn!(from = peer, "incoming migration stream: {e}");
            }
        });
    }
}

async fn refuse(send: &mut SendStream, reason: String) -> RelayError {
    let _ = send_frames(send, &[Frame::Refuse(reason.clone())]).await;
    let _ = send.finish();
    RelayError::Refused(reason)
}

/// Reads a stream's first frame: a new migration or a settlement.
async fn handle_stream(ctx: Arc<RelayContext>, s: IncomingStream) -> Result<(), RelayError> {
    let IncomingStream {
        peer,
        mut send,
        mut recv,
        ..
    } = s;
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let first = tokio::time::timeout(ctx.open_timeout, read_frame(&mut recv, &mut dec, &mut buf))
        .await
        .map_err(|_| RelayError::OpenTimeout(ctx.open_timeout))?;
    let first = match first {
        // A session version this gateway refuses, or a malformed opening:
        // the source's operator reads why.
        Err(RelayError::Session(SessionError::Wire(e))) => {
            return Err(refuse(&mut send, e.to_string()).await)
        }
        other => other?,
    };
    if let Frame::Resolve {
        id,
        vm,
        handed_over,
        ..
    } = first
    {
        return match settle_incoming(&ctx, &peer, &id, vm.as_deref(), handed_over).await {
            Ok(r) => {
                send_frames(&mut send, &[Frame::Resolved(r)]).await?;
                let _ = send.finish();
                Ok(())
            }
            Err(e) => {
                let _ = refuse(&mut send, e.to_string()).await;
                Err(e.into())
            }
        };
    }
    run_destination(ctx, peer, send, recv, dec, buf, first).await
}

/// Answers a source's `Resolve` for migration `id`, or refuses it (the
/// asking site did not send that migration; or it is still in flight here
/// after `handover_wait`, and the source asks again). The source may ask
/// before this side noticed the old link died; then the migration is still
/// in flight here, and the answer waits until it parks or ends. A
/// migration this side has no record of (its gateway restarted since) is
/// settled by whether VM `vm` runs here: a restarted gateway re-adopts the
/// VMs its shims still run.
async fn settle_incoming(
    ctx: &RelayContext,
    peer: &str,
    id: &str,
    vm: Option<&str>,
    handed_over: bool,
) -> Result<Resolution, SettleError> {
    let started = tokio::time::Instant::now();
    loop {
        if let Some(p) = take_parked(ctx, id, Settler::Peer(peer))? {
            if let Some(r) = decide(p, Decision::from_handed_over(handed_over)).await {
                return Ok(r);
            }
        }
        let record = ctx
            .records
            .all()
            .into_iter()
            .find(|r| r.id == id && r.direction == Direction::Incoming);
        let known = match &record {
            None => Known::Unrecorded,
            Some(r) => Known::Record {
                from: &r.from,
                state: match r.outcome {
                    None => RecordState::InFlight,
                    Some(Outcome::Succeeded) => RecordState::Succeeded,
                    Some(_) => RecordState::Ended,
                },
            },
        };
        match settle::answer(
            id,
            peer,
            known,
            handed_over,
            started.elapsed(),
            ctx.handover_wait,
        )? {
            Answer::Running => return Ok(Resolution::Running),
            Answer::Discarded => return Ok(Resolution::Discarded),
            Answer::AskHost => return Ok(unrecorded_resolution(ctx.host.as_ref(), vm)),
            Answer::Wait => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The answer for a migration without a record here: running when VM `vm`
/// runs here (it can only have come from that migration, since the source
/// handed it over and never runs it again), else discarded.
fn unrecorded_resolution(host: &dyn VmHosting, vm: Option<&str>) -> Resolution {
    let runs_here = vm.is_some_and(|vm| {
        host.list()
            .iter()
            .any(|v| v.name == vm && v.state == crate::vms::VmState::Running)
    });
    if runs_here {
        Resolution::Running
    } else {
        Resolution::Discarded
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[allow(clippy::too_many_arguments)]
async fn run_destination(
    ctx: Arc<RelayContext>,
    peer: String,
    mut send: SendStream,
    mut recv: RecvStream,
    mut dec: FrameDecoder,
    mut buf: Vec<u8>,
    open: Frame,
) -> Result<(), RelayError> {
    // The decoder has checked the open's version (see
    // `wanmig_migration::version`).
    let request = match open {
        Frame::Open { request, .. } => request,
        other => {
            return Err(refuse(&mut send, format!("expected open, got {}", other.name())).await)
        }
    };
    let OpenRequest {
        id,
        vm,
        config,
        scope,
    } = *request;
    if let Err(e) =
        crate::vms::validate_vm_name(&vm).and_then(|_| config.validate().map_err(HostError::Config))
    {
        return Err(refuse(&mut send, e.to_string()).await);
    }
    // Before the page store, the session's page table or the VM: nothing
    // of a VM this site will not hold is allocated.
    let max_mem = ctx.max_mem_size.load(std::sync::atomic::Ordering::Relaxed);
    if config.mem_size > max_mem {
        let reason = format!(
            "VM '{vm}' has {} MiB of memory, more than {} accepts ({} MiB); raise [vms] max_mem_mib in that gateway's config to take it",
            config.mem_size >> 20,
            ctx.peering.site(),
            max_mem >> 20
        );
        return Err(refuse(&mut send, reason).await);
    }
    if let Some(existing) = ctx.host.list().into_iter().find(|v| v.name == vm) {
        use crate::vms::VmState;
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
    let store = match ctx.stores.open_for(&peer, &scope) {
        Ok(s) => s,
        Err(e) => return Err(refuse(&mut send, e.to_string()).await),
    };
    let inventory = store.inventory_bytes();
    let mut session = DestSession::new(
        wanmig_codec::DecoderConfig::default(),
        store.clone(),
        config.mem_size / 4096,
    )?;
    ctx.records
        .insert(&id, &vm, &peer, ctx.peering.site(), Direction::Incoming);
    send_frames(&mut send, &[Frame::Accept { inventory }]).await?;
    tracing::info!(vm, from = peer, id, "receiving a VM");

    let (shim_end, mut local) = local_pair()?;
    let host = ctx.host.clone();
    let (vm_name, from) = (vm.clone(), peer.clone());
    // A parked shim waits for the handover until this relay settles it.
    let receive = ReceiveOptions {
        handover_timeout: None,
        ..ReceiveOptions::default()
    };
    let shim = tokio::task::spawn_blocking(move || {
        host.receive(&vm_name, &from, config_for_here(config), shim_end, &receive)
    });
    let mut shim_dec = shim::Decoder::new();
    let mut lbuf = vec![0u8; 64 << 10];
    // When the latest round's first pages arrived, and when the VM resumed
    // here: the pause as this end sees it.
    let mut round_began: Option<(u32, std::time::Instant)> = None;
    let mut resumed_at = None;
    let end = loop {
        tokio::select! {
            r = recv.read(&mut buf) => {
                let n = match r {
                    Ok(Some(n)) => n,
                    Ok(None) => break LoopEnd::Failed(RelayError::PeerClosed),
                    Err(e) => break LoopEnd::Failed(e.into()),
                };
                dec.feed(&buf[..n]);
                let before = session.phase();
                let t = std::time::Instant::now();
                let failed = apply_peer_frames(&mut dec, &mut session, &mut send, &mut local, |_| {})
                    .await
                    .err();
                // The final round's timeline (with the source shim's own
                // debug lines, it shows where a pause goes).
                if before != Phase::Copying || session.phase() != before {
                    tracing::debug!(phase = ?session.phase(), pending = session.pending(), ms = t.elapsed().as_secs_f64() * 1e3, bytes = n, pages = session.pages(), zero_skipped = session.zero_skipped(), "destination relay applied peer frames");
                }
                let (phase, pages, round) = (session.phase(), session.pages(), session.round());
                if pages > 0 && round_began.is_none_or(|(r, _)| r != round) {
                    round_began = Some((round, t));
                }
                let wire = session.decoder_stats().wire_bytes;
                ctx.records.update(&id, Direction::Incoming, |r| {
                    r.phase = phase;
                    r.progress.pages = pages;
                    r.progress.round = round;
                    r.progress.bytes_in = pages * wanmig_codec::PAGE_SIZE as u64;
                    r.progress.bytes_out = wire;
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
                if phase == Phase::Resumed && resumed_at.is_none() {
                    resumed_at = Some(std::time::Instant::now());
                }
                tracing::debug!(phase = ?phase, "destination relay: shim answered");
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
    let mut reply = None;
    if let (LoopEnd::Failed(e), Phase::Confirmed) = (&end, session.phase()) {
        tracing::warn!(
            vm,
            from = peer,
            "link lost after confirming the VM ({e}); holding it paused until {peer} says whether it handed it over"
        );
        let (tx, rx) = oneshot::channel();
        lock(&ctx.parked).insert(
            id.clone(),
            Parked {
                from: peer.clone(),
                decide: tx,
            },
        );
        if let Some(m) = &ctx.metrics {
            m.parked.inc();
        }
        ctx.records.update(&id, Direction::Incoming, |r| {
            r.parked = true;
            r.resolution = Some(format!(
                "link lost after confirming; the VM waits here, paused, for {peer} to settle"
            ))
        });
        let mut rx = rx;
        let decision = tokio::select! {
            d = &mut rx => d,
            _ = tokio::time::sleep(ctx.handover_wait) => {
                let note = format!(
                    "link lost after confirming; no word from {peer} for {:?}. The VM stays parked here, paused, until {peer} settles it or an operator does: `wanmig migration settle {id} --resume|--discard` (see docs/runbook.md)",
                    ctx.handover_wait
                );
                tracing::warn!(vm, id, "{note}");
                ctx.records
                    .update(&id, Direction::Incoming, |r| r.resolution = Some(note));
                rx.await
            }
        };
        if let Some(m) = &ctx.metrics {
            m.parked.dec();
        }
        ctx.records
            .update(&id, Direction::Incoming, |r| r.parked = false);
        let msg = match decision {
            Ok((Decision::Resume, r)) => {
                reply = Some(r);
                Message::Handover
            }
            Ok((Decision::Discard, r)) => {
                reply = Some(r);
                Message::Abort(format!(
                    "{peer} kept the VM after the link failed, or an operator discarded this copy"
                ))
            }
            // Only a gateway shutting down drops the parked table.
            Err(_) => Message::Abort("the gateway stopped while the VM was parked".into()),
        };
        let handover = msg == Message::Handover;
        let _ = tokio::time::timeout(ABORT_WAIT, send_shim(&mut local, &[msg])).await;
        if handover {
            // Let the shim resume the VM and say so before closing.
            let mut sink = vec![0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(30), local.read(&mut sink)).await
            {
                if n == 0 {
                    break;
                }
            }
        }
    } else if let LoopEnd::Failed(e) = &end {
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
    let result = shim.await.map_err(|source| RelayError::Thread {
        what: "receiving",
        source,
    })?;
    let _ = send.finish();
    // Saving the index takes a while (~0.1 s for a 512 MiB VM): off the
    // runtime's workers, or it holds up the QUIC driver that is still
    // sending `Resumed` to the source, which counts as downtime there.
    let synced = store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || synced.sync()).await {
        tracing::warn!("saving the page store index failed: {e}");
    }
    if let Some(m) = &ctx.metrics {
        m.observe_store(&store);
    }
    let phase = session.phase();
    let (outcome, error) = match &result {
        Ok(_) => (Outcome::Succeeded, None),
        Err(e) => (Outcome::FailedKeptAtSource, Some(e.to_string())),
    };
    let phase = if result.is_ok() {
        Phase::Resumed
    } else {
        phase
    };
    let figures = IncomingFigures {
        wire_bytes: session.decoder_stats().wire_bytes,
        page_bytes: session.pages() * wanmig_codec::PAGE_SIZE as u64,
        rounds: session.round() + 1,
        downtime: resumed_at
            .zip(round_began)
            .map(|(end, (_, began))| end.saturating_duration_since(began)),
    };
    ctx.records.update(&id, Direction::Incoming, |r| {
        r.phase = phase;
        r.outcome = Some(outcome);
        r.error = error;
        r.progress.bytes_in = figures.page_bytes;
        r.progress.bytes_out = figures.wire_bytes;
        if let Ok(rep) = &result {
            r.memory_digest = Some(rep.memory_digest.clone());
            // The live rounds, as the source counts them: the stop-and-copy
            // round's number.
            r.rounds = session.round();
            r.downtime_ms = figures.downtime.map(|d| d.as_secs_f64() * 1e3);
        }
    });
    if let Some(m) = &ctx.metrics {
        m.observe_outcome(INCOMING, outcome.label());
        if result.is_ok() {
            m.observe_incoming(&figures);
        }
    }
    // Whoever settled a parked VM learns the outcome once it is recorded.
    if let Some(r) = reply {
        let _ = r.send(match outcome {
            Outcome::Succeeded => Resolution::Running,
            _ => Resolution::Discarded,
        });
    }
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
