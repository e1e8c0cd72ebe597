//! Destination side of the storage relay: a [`RemoteDisk`] fed over two
//! `STORAGE` streams (on-demand and background), a session loop that
//! reports outages as link down and reconnects, and the completion
//! handshake (complete + fsync locally, then `Done` carrying the end-of-copy
//! digest, then the source's `Released` once its check passed). `Done` is
//! sent again in every new session until `Released` arrives, and an `Open`
//! answered with `Released` ends an all-local import successfully: a lost
//! `Released` never fails a copy that succeeded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wanmig_storage::{FetchRequest, Fetcher, LinkDown, Priority, RemoteDisk, RemoteDiskConfig};

use wanmig_storage::wire::{BlockDecoder, Decoded};

use super::dedup;
use super::metrics::{CopyOutcome, RelayMetrics};
use super::stream::{read_frame, write_frame, StreamError};
use super::{lock, StorageRelayError};
use crate::migration::stores::ScopeStore;
use crate::peering::{Peering, StreamKind};
use wanmig_migration::storage::{Frame, Lane, STORAGE};

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub disk_bytes: u64,
    /// Block payload bytes received (after zero elision and zstd).
    pub wire_bytes: u64,
    pub total_ms: u64,
    /// How many times the session was re-established after a link loss.
    pub reconnects: u64,
    /// The source checked this copy's digest over every block the guest
    /// did not write here against its own disk before releasing it
    /// ([`wanmig_storage::verify`]).
    pub verified: bool,
    /// Blocks the guest wrote here (excluded from the check).
    pub written_blocks: u64,
}

type Lanes = (mpsc::UnboundedSender<Frame>, mpsc::UnboundedSender<Frame>);

/// Sends the disk's fetch requests into the current session's lanes.
#[derive(Default)]
struct LaneFetcher {
    lanes: Mutex<Option<Lanes>>,
    /// When each on-demand block was last requested (for the latency
    /// histogram).
    demand_sent: Mutex<HashMap<u64, Instant>>,
    /// Blocks whose page references did not resolve here: asked for again
    /// without references.
    plain: Mutex<std::collections::HashSet<u64>>,
}

impl Fetcher for LaneFetcher {
    fn fetch(&self, request: FetchRequest) -> Result<(), LinkDown> {
        let lanes = lock(&self.lanes);
        let Some((demand, background)) = lanes.as_ref() else {
            return Err(LinkDown);
        };
        let lane = match request.priority {
            Priority::OnDemand => {
                let now = Instant::now();
                let mut sent = lock(&self.demand_sent);
                for b in request.blocks() {
                    sent.insert(b, now);
                }
                demand
            }
            Priority::Background => background,
        };
        let plain = {
            // Remove every block of the request (no short-circuit).
            let mut p = lock(&self.plain);
            let mut hit = false;
            for b in request.blocks() {
                hit |= p.remove(&b);
            }
            hit
        };
        let frame = if plain {
            Frame::RequestPlain {
                first_block: request.first_block,
                count: request.count,
            }
        } else {
            Frame::Request {
                first_block: request.first_block,
                count: request.count,
            }
        };
        lane.send(frame).map_err(|_| LinkDown)
    }
}

/// A running import. Dropping it (or [`StorageImport::abort`]) stops the
/// transfer without saving anything, as a crash would; the copy resumes from
/// the last saved bitmap on the next import of the same path.
pub struct StorageImport {
    disk: Arc<RemoteDisk>,
    task: Option<JoinHandle<Result<ImportReport, StorageRelayError>>>,
}

impl std::fmt::Debug for StorageImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageImport")
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

impl StorageImport {
    /// The remote-backed disk (put it behind the VM's virtio-block device).
    pub fn disk(&self) -> &Arc<RemoteDisk> {
        &self.disk
    }

    /// Waits until every block is local, durable, confirmed to the source
    /// and the source copy released.
    pub async fn finish(mut self) -> Result<ImportReport, StorageRelayError> {
        let task = self.task.take().ok_or(StorageRelayError::Finished)?;
        task.await.map_err(|source| StorageRelayError::Task {
            what: "the import task",
            source,
        })?
    }

    /// Stops the transfer at once, saving nothing (a destination crash).
    pub fn abort(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for StorageImport {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct Target {
    peering: Peering,
    peer: String,
    name: String,
    disk_len: u64,
    block_size: u32,
    /// The page store to dedup against (persistent stores only).
    store: Option<ScopeStore>,
}

struct Session {
    holes: Vec<std::ops::Range<u64>>,
    demand: (SendStream, RecvStream),
    background: (SendStream, RecvStream),
}

enum Failure {
    /// The source refused: retrying will not help.
    Refused(String),
    /// The source already released the disk after checking this copy.
    Released,
    /// The link broke: reconnect and resume.
    Link(StreamError),
}

async fn open_lane(
    t: &Target,
    lane: Lane,
) -> Result<(SendStream, RecvStream, Vec<std::ops::Range<u64>>), Failure> {
    let (mut send, mut recv) = t
        .peering
        .open_stream(&t.peer, StreamKind::Storage)
        .await
        .map_err(|e| Failure::Link(e.into()))?;
    let inventory = match (&t.store, lane) {
        (Some(store), Lane::Background) => Some(store.inventory_bytes()),
        _ => None,
    };
    let open = Frame::Open {
        version: STORAGE.current,
        lane,
        name: t.name.clone(),
        disk_len: t.disk_len,
        block_size: t.block_size,
        inventory,
    };
    write_frame(&mut send, &open).await.map_err(Failure::Link)?;
    match read_frame(&mut recv).await {
        Ok(Frame::Holes(h)) => Ok((send, recv, h)),
        Ok(Frame::Released) => Err(Failure::Released),
        Ok(Frame::Error(m)) => Err(Failure::Refused(m)),
        Ok(other) => Err(Failure::Refused(format!("unexpected answer {other:?}"))),
        Err(e) => Err(Failure::Link(e)),
    }
}

async fn connect(t: &Target) -> Result<Session, Failure> {
    let (ds, dr, holes) = open_lane(t, Lane::OnDemand).await?;
    let (bs, br, _) = open_lane(t, Lane::Background).await?;
    Ok(Session {
        holes,
        demand: (ds, dr),
        background: (bs, br),
    })
}

/// What to import, from where, into where.
pub(crate) struct ImportTarget<'a> {
    pub peer: &'a str,
    pub name: &'a str,
    pub local_path: &'a Path,
    pub disk_len: u64,
    pub config: RemoteDiskConfig,
    /// Run the background copy from the start.
    pub background: bool,
}

pub(crate) async fn start_import(
    peering: Peering,
    metrics: RelayMetrics,
    store: Option<ScopeStore>,
    it: ImportTarget<'_>,
) -> Result<StorageImport, StorageRelayError> {
    let (peer, name) = (it.peer, it.name);
    let target = Target {
        peering,
        peer: peer.to_string(),
        name: name.to_string(),
        disk_len: it.disk_len,
        block_size: it.config.block_size,
        store,
    };
    // The source validates its disk before anything is created here.
    let released = || {
        StorageRelayError::Refused {
        peer: peer.to_string(),
        name: name.to_string(),
        message: "the source already released the disk after a verified copy, but this copy is not complete; it cannot be resumed from there".into(),
    }
    };
    let session = match connect(&target).await {
        Ok(s) => Some(s),
        // A copy that completed here, whose `Released` was lost before
        // this site restarted: the import succeeds below if the local copy
        // is complete.
        Err(Failure::Released) if it.local_path.exists() => None,
        Err(Failure::Released) => return Err(released()),
        Err(Failure::Refused(message)) => {
            return Err(StorageRelayError::Refused {
                peer: peer.to_string(),
                name: name.to_string(),
                message,
            })
        }
        Err(Failure::Link(source)) => {
            return Err(StorageRelayError::Link {
                peer: peer.to_string(),
                source: Box::new(source),
            })
        }
    };
    let fetcher = Arc::new(LaneFetcher::default());
    let path: PathBuf = it.local_path.to_owned();
    let f2: Arc<dyn Fetcher> = fetcher.clone();
    let (disk_len, config, background) = (it.disk_len, it.config, it.background);
    let disk = tokio::task::spawn_blocking(move || {
        let d = RemoteDisk::open(&path, disk_len, config, f2)?;
        // Off before `start` (on is the default: nothing is fetched before
        // the session's lanes exist).
        if !background {
            d.set_background(false);
        }
        Ok::<_, wanmig_storage::StorageError>(d)
    })
    .await
    .map_err(|source| StorageRelayError::Task {
        what: "opening the local copy",
        source,
    })??;
    let disk = Arc::new(disk);
    let Some(session) = session else {
        if !disk.is_all_local() {
            return Err(released());
        }
        tracing::info!(
            peer,
            disk = name,
            "the source had already verified and released this complete copy"
        );
        let report = ImportReport {
            disk_bytes: disk.len(),
            wire_bytes: 0,
            total_ms: 0,
            reconnects: 0,
            verified: true,
            written_blocks: disk.written_blocks(),
        };
        return Ok(StorageImport {
            disk,
            task: Some(tokio::spawn(async move { Ok(report) })),
        });
    };
    let task = tokio::spawn(run(target, Arc::clone(&disk), fetcher, session, metrics));
    Ok(StorageImport {
        disk,
        task: Some(task),
    })
}

async fn run(
    t: Target,
    disk: Arc<RemoteDisk>,
    fetcher: Arc<LaneFetcher>,
    first: Session,
    metrics: RelayMetrics,
) -> Result<ImportReport, StorageRelayError> {
    let seen = Mutex::new(wanmig_storage::metrics::MetricsSnapshot::default());
    let r = run_sessions(&t, &disk, &fetcher, first, &metrics, &seen).await;
    // Count what the last ticks did not.
    let now = disk.metrics().snapshot();
    metrics.add_growth(&lock(&seen), &now);
    metrics.copy_ended(match r {
        Ok(_) => CopyOutcome::Verified,
        Err(_) => CopyOutcome::Failed,
    });
    r
}

async fn run_sessions(
    t: &Target,
    disk: &Arc<RemoteDisk>,
    fetcher: &Arc<LaneFetcher>,
    first: Session,
    metrics: &RelayMetrics,
    seen: &Mutex<wanmig_storage::metrics::MetricsSnapshot>,
) -> Result<ImportReport, StorageRelayError> {
    let started = Instant::now();
    let mut reconnects = 0u64;
    let mut session = Some(first);
    let mut first_session = true;
    loop {
        let s = match session.take() {
            Some(s) => s,
            None => match connect(t).await {
                Ok(s) => {
                    reconnects += 1;
                    s
                }
                Err(Failure::Released) if disk.is_all_local() => {
                    // Our `Done` got through; its `Released` did not.
                    tracing::info!(peer = %t.peer, disk = %t.name, "the source had already verified and released the disk");
                    break;
                }
                Err(Failure::Released) => return Err(StorageRelayError::Refused {
                    peer: t.peer.clone(),
                    name: t.name.clone(),
                    message:
                        "the source released the disk but this copy is incomplete; start a new copy"
                            .into(),
                }),
                Err(Failure::Refused(message)) => {
                    return Err(StorageRelayError::Refused {
                        peer: t.peer.clone(),
                        name: t.name.clone(),
                        message,
                    })
                }
                Err(Failure::Link(m)) => {
                    tracing::debug!(peer = %t.peer, "storage reconnect failed: {m}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        match drive(t, disk, fetcher, s, first_session, metrics, seen).await {
            Ok(()) => break,
            Err(Failure::Released) => break,
            Err(Failure::Refused(message)) => {
                *lock(&fetcher.lanes) = None;
                return Err(StorageRelayError::Refused {
                    peer: t.peer.clone(),
                    name: t.name.clone(),
                    message,
                });
            }
            Err(Failure::Link(m)) => {
                *lock(&fetcher.lanes) = None;
                disk.link_down();
                tracing::warn!(peer = %t.peer, disk = %t.name, "storage link lost: {m}; resuming when it returns");
                first_session = false;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let m = disk.metrics().snapshot();
    Ok(ImportReport {
        disk_bytes: disk.len(),
        wire_bytes: m.bytes_after_reduction,
        total_ms: started.elapsed().as_millis() as u64,
        reconnects,
        verified: true,
        written_blocks: disk.written_blocks(),
    })
}

/// Runs one session until the source confirms the release (`Ok`) or it fails.
async fn drive(
    t: &Target,
    disk: &Arc<RemoteDisk>,
    fetcher: &Arc<LaneFetcher>,
    s: Session,
    first: bool,
    metrics: &RelayMetrics,
    seen: &Mutex<wanmig_storage::metrics::MetricsSnapshot>,
) -> Result<(), Failure> {
    lock(&fetcher.demand_sent).clear();
    let (dtx, drx) = mpsc::unbounded_channel();
    let (btx, brx) = mpsc::unbounded_channel();
    *lock(&fetcher.lanes) = Some((dtx.clone(), btx));
    {
        let d = Arc::clone(disk);
        let holes = s.holes;
        tokio::task::spawn_blocking(move || {
            if first {
                d.apply_source_holes(&holes)?;
                d.start();
            } else {
                d.link_up();
            }
            Ok::<(), wanmig_storage::StorageError>(())
        })
        .await
        .map_err(|e| Failure::Link(e.into()))?
        .map_err(|e| Failure::Refused(e.to_string()))?;
    }
    let (dsend, drecv) = s.demand;
    let (bsend, brecv) = s.background;
    let demand_reader = read_lane(
        drecv,
        Arc::clone(disk),
        fetcher,
        t.store.clone(),
        Some(metrics),
    );
    tokio::select! {
        r = demand_reader => r,
        r = read_lane(brecv, Arc::clone(disk), fetcher, t.store.clone(), None) => match r {
            Ok(()) => Err(Failure::Link(StreamError::Closed)),
            Err(e) => Err(e),
        },
        r = write_lane(dsend, drx) => r,
        r = write_lane(bsend, brx) => r,
        r = ticker(Arc::clone(disk), dtx, t.name.clone(), metrics, seen) => r,
    }
}

/// Stores one arrived block: through the page store when there is one
/// (resolving references, adding the block's pages), else directly.
fn take_block(
    disk: &RemoteDisk,
    fetcher: &LaneFetcher,
    store: Option<&mut ScopeStore>,
    decoder: &mut BlockDecoder,
    buf: &mut Vec<u8>,
    block: u64,
    payload: &[u8],
) -> Result<(), String> {
    let Some(store) = store else {
        return disk
            .on_block_arrived(block, payload)
            .map_err(|e| e.to_string());
    };
    if block >= disk.geometry().block_count() {
        return Err(format!("block {block} is past the end of the disk"));
    }
    let len = disk.geometry().block_len(block);
    let decoded = if dedup::is_paged(payload) {
        match dedup::decode_paged(payload, len, store, buf) {
            Ok(()) => Ok(()),
            Err(e @ dedup::DedupError::UnknownRef(_)) => {
                lock(&fetcher.plain).insert(block);
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    } else {
        match decoder.decode(block, payload, len, buf) {
            Ok(Decoded::Zero) => {
                buf.clear();
                buf.resize(len, 0);
                Ok(())
            }
            Ok(Decoded::Data) => dedup::store_pages(buf, store).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    match decoded {
        Ok(()) => disk
            .on_block_data(block, buf, payload.len() as u64)
            .map_err(|e| e.to_string()),
        Err(why) => {
            let _ = disk.on_block_unusable(
                block,
                payload.len() as u64,
                wanmig_storage::StorageError::BadCompressedBlock {
                    block,
                    reason: why.clone(),
                },
            );
            Err(why)
        }
    }
}

/// Feeds arriving blocks to the disk; `Ok` when the source says `Released`.
/// `demand`: this is the on-demand lane; observe each block's latency.
async fn read_lane(
    mut recv: RecvStream,
    disk: Arc<RemoteDisk>,
    fetcher: &LaneFetcher,
    mut store: Option<ScopeStore>,
    demand: Option<&RelayMetrics>,
) -> Result<(), Failure> {
    let mut decoder = BlockDecoder::new().map_err(|e| Failure::Refused(e.to_string()))?;
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut recv).await {
            Ok(Frame::Block { block, payload }) => {
                if let Some(metrics) = demand {
                    if let Some(t) = lock(&fetcher.demand_sent).remove(&block) {
                        metrics.on_demand_latency(t.elapsed());
                    }
                }
                // A 64 KiB local write per block (and its pages into the
                // page store): brief enough to do inline on this task.
                if let Err(e) = take_block(
                    &disk,
                    fetcher,
                    store.as_mut(),
                    &mut decoder,
                    &mut buf,
                    block,
                    &payload,
                ) {
                    tracing::warn!("storage block {block} rejected: {e}; it will be fetched again");
                }
            }
            Ok(Frame::Released) => return Ok(()),
            Ok(Frame::Error(m)) => return Err(Failure::Refused(m)),
            Ok(other) => return Err(Failure::Refused(format!("unexpected frame {other:?}"))),
            Err(e) => return Err(Failure::Link(e)),
        }
    }
}

async fn write_lane(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) -> Result<(), Failure> {
    while let Some(f) = rx.recv().await {
        write_frame(&mut send, &f).await.map_err(Failure::Link)?;
    }
    Err(Failure::Link(StreamError::LaneClosed("request")))
}

/// Drives the disk's timers, reports progress to the source and adds the
/// disk's counter growth to the metrics; when every block is local, sends
/// `Done` once per session with the disk's confirmation (completed, digest
/// computed and saved durably the first time:
/// [`RemoteDisk::confirmation`]). Never returns `Ok`: the demand reader ends
/// the session on `Released`.
async fn ticker(
    disk: Arc<RemoteDisk>,
    demand: mpsc::UnboundedSender<Frame>,
    name: String,
    metrics: &RelayMetrics,
    seen: &Mutex<wanmig_storage::metrics::MetricsSnapshot>,
) -> Result<(), Failure> {
    let mut done_sent = false;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut last_progress: Option<Instant> = None;
    let closed = || Failure::Link(StreamError::LaneClosed("request"));
    loop {
        every.tick().await;
        let now = disk.metrics().snapshot();
        {
            let mut seen = lock(seen);
            metrics.add_growth(&seen, &now);
            *seen = now;
        }
        if last_progress.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            let (local_blocks, total_blocks) = disk.progress();
            demand
                .send(Frame::Progress {
                    local_blocks,
                    total_blocks,
                })
                .map_err(|_| closed())?;
            last_progress = Some(Instant::now());
        }
        let d = Arc::clone(&disk);
        let check_now = !done_sent;
        let r = tokio::task::spawn_blocking(move || {
            d.tick()?;
            if check_now && d.is_all_local() {
                // The first time: complete, digest, and save the record
                // before it is sent; after that (a new session, or a
                // restart after a crash) the same record again, so guest
                // writes since do not fail the source's check.
                d.confirmation().map(Some)
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(|e| Failure::Link(e.into()))?;
        match r {
            Ok(Some(done)) => {
                tracing::info!(disk = %name, written_blocks = done.written.present_count(), "storage copy complete locally; confirming to the source");
                demand
                    .send(Frame::Done {
                        digest: done.digest,
                        written: done.written.to_bytes(),
                    })
                    .map_err(|_| closed())?;
                done_sent = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(disk = %name, "storage tick: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
