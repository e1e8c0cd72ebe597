//! An in-process link that drives a whole storage copy between a source
//! file and a destination [`RemoteDisk`] without the gateway, for tests and
//! benchmarks.
//!
//! Two channels carry fetch requests (destination → source) and block
//! payloads (source → destination). The link models a WAN: a one-way delay,
//! an optional bottleneck rate at which the source transmits (on-demand
//! blocks before background ones, as the gateway's prioritised streams do),
//! and a cut switch: cutting loses everything in flight, fails new sends,
//! and reports link down to the disk; restoring reports link up. Real files
//! and the real [`RemoteDisk`] are used throughout; only the transport is
//! in-process.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::StorageError;
use crate::planner::{FetchRequest, Priority};
use crate::remote_disk::{Fetcher, LinkDown, RemoteDisk, RemoteDiskConfig};
use crate::source::SourceDisk;
use crate::wire::BlockEncoder;

/// How the in-process link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Delay each way.
    pub one_way_delay: Duration,
    /// Bottleneck rate in bits per second (`None`: unlimited).
    pub rate_bits_per_sec: Option<u64>,
    /// zstd level the source compresses blocks with.
    pub zstd_level: i32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            one_way_delay: Duration::ZERO,
            rate_bits_per_sec: None,
            zstd_level: 1,
        }
    }
}

/// Configuration of an in-process copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyConfig {
    /// The destination disk.
    pub disk: RemoteDiskConfig,
    /// The link.
    pub link: LinkConfig,
}

struct Timed<T> {
    epoch: u64,
    at: Instant,
    item: T,
}

struct Shared {
    cut: AtomicBool,
    epoch: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
    requests_sent: AtomicU64,
}

impl Shared {
    fn error(&self, e: String) {
        tracing::warn!("in-process copy: {e}");
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }
    fn live(&self, epoch: u64) -> bool {
        !self.cut.load(Ordering::Acquire) && self.epoch.load(Ordering::Acquire) == epoch
    }
}

struct LinkFetcher {
    tx: Sender<Timed<FetchRequest>>,
    shared: Arc<Shared>,
    delay: Duration,
}

impl Fetcher for LinkFetcher {
    fn fetch(&self, request: FetchRequest) -> Result<(), LinkDown> {
        if self.shared.cut.load(Ordering::Acquire) {
            return Err(LinkDown);
        }
        self.shared.requests_sent.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Timed {
                epoch: self.shared.epoch.load(Ordering::Acquire),
                at: Instant::now() + self.delay,
                item: request,
            })
            .map_err(|_| LinkDown)
    }
}

/// A running in-process copy. Dropping it stops the link threads without
/// persisting anything: that is how tests simulate a destination crash.
pub struct InProcessCopy {
    disk: Arc<RemoteDisk>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    allocated_bytes: u64,
}

impl std::fmt::Debug for InProcessCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessCopy")
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

impl InProcessCopy {
    /// Validates the source (a bad source is an error before anything is
    /// created at the destination), opens or resumes the destination at
    /// `dest`, and starts the background copy.
    pub fn start(
        source: &Path,
        dest: &Path,
        disk_len: u64,
        config: CopyConfig,
    ) -> Result<Self, StorageError> {
        let src = SourceDisk::open(source, disk_len, config.disk.block_size)?;
        let holes = src.hole_blocks();
        let allocated_bytes = src.allocated_bytes();
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            requests_sent: AtomicU64::new(0),
        });
        let (req_tx, req_rx) = mpsc::channel();
        let (blk_tx, blk_rx) = mpsc::channel();
        let fetcher = Arc::new(LinkFetcher {
            tx: req_tx,
            shared: Arc::clone(&shared),
            delay: config.link.one_way_delay,
        });
        let encoder = BlockEncoder::new(config.link.zstd_level)
            .map_err(|e| StorageError::io("create zstd encoder for", source, e))?;
        let disk = Arc::new(RemoteDisk::open(dest, disk_len, config.disk, fetcher)?);
        disk.apply_source_holes(&holes)?;

        let link = config.link;
        let s1 = Arc::clone(&shared);
        let source_thread = std::thread::Builder::new()
            .name("storage-src".into())
            .spawn(move || source_loop(src, encoder, req_rx, blk_tx, s1, link))
            .map_err(|e| StorageError::io("spawn source thread for", source, e))?;
        let s2 = Arc::clone(&shared);
        let d2 = Arc::clone(&disk);
        let dest_thread = std::thread::Builder::new()
            .name("storage-dst".into())
            .spawn(move || delivery_loop(d2, blk_rx, s2))
            .map_err(|e| StorageError::io("spawn delivery thread for", dest, e))?;
        let s3 = Arc::clone(&shared);
        let d3 = Arc::clone(&disk);
        let tick_thread = std::thread::Builder::new()
            .name("storage-tick".into())
            .spawn(move || tick_loop(d3, s3))
            .map_err(|e| StorageError::io("spawn tick thread for", dest, e))?;
        disk.start();
        Ok(InProcessCopy {
            disk,
            shared,
            threads: vec![source_thread, dest_thread, tick_thread],
            allocated_bytes,
        })
    }

    /// The destination disk (share it with guest I/O threads).
    pub fn disk(&self) -> &Arc<RemoteDisk> {
        &self.disk
    }

    /// Bytes allocated in the source file when the copy started.
    pub fn source_allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }

    /// Fetch requests sent over the link so far.
    pub fn requests_sent(&self) -> u64 {
        self.shared.requests_sent.load(Ordering::Relaxed)
    }

    /// Errors the link threads met (bad payloads, source read errors).
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Cuts the link: everything in flight is lost, sends fail.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        self.disk.link_down();
    }

    /// Restores the link; the disk re-issues what was outstanding.
    pub fn restore(&self) {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        self.shared.cut.store(false, Ordering::Release);
        self.disk.link_up();
    }

    /// Stops the link threads and persists the bitmap (a clean shutdown).
    pub fn shutdown(mut self) -> Result<(), StorageError> {
        self.stop_threads();
        self.disk.persist()
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("in-process copy thread panicked");
            }
        }
    }
}

impl Drop for InProcessCopy {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Sleeps until `at`, waking early if asked to stop; returns false on stop.
fn sleep_until(at: Instant, shared: &Shared) -> bool {
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(20)));
    }
}

fn source_loop(
    src: SourceDisk,
    mut encoder: BlockEncoder,
    rx: Receiver<Timed<FetchRequest>>,
    tx: Sender<Timed<(u64, Vec<u8>)>>,
    shared: Arc<Shared>,
    link: LinkConfig,
) {
    let mut pending: VecDeque<Timed<FetchRequest>> = VecDeque::new();
    let mut demand: VecDeque<(u64, u64)> = VecDeque::new();
    let mut background: VecDeque<(u64, u64)> = VecDeque::new();
    let mut link_free = Instant::now();
    let mut buf = Vec::new();
    let mut seen_epoch = shared.epoch.load(Ordering::Acquire);
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch != seen_epoch {
            // The cut lost whatever was queued at the bottleneck.
            demand.clear();
            background.clear();
            seen_epoch = epoch;
        }
        while let Ok(m) = rx.try_recv() {
            pending.push_back(m);
        }
        let now = Instant::now();
        while pending.front().is_some_and(|m| m.at <= now) {
            let Some(m) = pending.pop_front() else { break };
            if !shared.live(m.epoch) {
                continue;
            }
            let q = match m.item.priority {
                Priority::OnDemand => &mut demand,
                Priority::Background => &mut background,
            };
            q.extend(m.item.blocks().map(|b| (m.epoch, b)));
        }
        if now >= link_free {
            if let Some((e, block)) = demand.pop_front().or_else(|| background.pop_front()) {
                let payload = match src.read_block(block, &mut buf) {
                    Ok(content) => encoder.encode(content),
                    Err(err) => {
                        shared.error(format!("source: {err}"));
                        continue;
                    }
                };
                let start = link_free.max(now);
                link_free = match link.rate_bits_per_sec {
                    Some(rate) if rate > 0 => {
                        start + Duration::from_secs_f64(payload.len() as f64 * 8.0 / rate as f64)
                    }
                    _ => start,
                };
                let msg = Timed {
                    epoch: e,
                    at: link_free + link.one_way_delay,
                    item: (block, payload),
                };
                if tx.send(msg).is_err() {
                    return;
                }
                continue;
            }
        }
        // Nothing to send now: wait for a request or for the link to free.
        let mut wake = now + Duration::from_millis(20);
        if let Some(m) = pending.front() {
            wake = wake.min(m.at);
        }
        if !demand.is_empty() || !background.is_empty() {
            wake = wake.min(link_free);
        }
        let wait = wake.saturating_duration_since(now);
        if wait.is_zero() {
            continue;
        }
        match rx.recv_timeout(wait) {
            Ok(m) => pending.push_back(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if pending.is_empty() && demand.is_empty() && background.is_empty() {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
    }
}

/// Drives the disk's clock and bitmap saves, as the gateway's timer would.
fn tick_loop(disk: Arc<RemoteDisk>, shared: Arc<Shared>) {
    while sleep_until(Instant::now() + Duration::from_millis(50), &shared) {
        if let Err(e) = disk.tick() {
            shared.error(format!("tick: {e}"));
        }
    }
}

fn delivery_loop(disk: Arc<RemoteDisk>, rx: Receiver<Timed<(u64, Vec<u8>)>>, shared: Arc<Shared>) {
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(m) => {
                if !sleep_until(m.at, &shared) {
                    return;
                }
                if shared.live(m.epoch) {
                    let (block, payload) = m.item;
                    if let Err(e) = disk.on_block_arrived(block, &payload) {
                        shared.error(format!("destination: {e}"));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
