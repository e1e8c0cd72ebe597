//! The destination's remote-backed disk: a synchronous block device over a
//! local sparse copy, the presence bitmap and the copy planner.
//!
//! Guest reads of local blocks go straight to the local file; reads of
//! missing blocks block the calling thread (a `Condvar`) until the blocks
//! arrive or the planner's read timeout fires, which surfaces as an
//! `io::Error` of kind `TimedOut` with a message for the operator — never as
//! made-up data. Writes land locally and win over the copy. The transport
//! (the gateway) implements [`Fetcher`] to send requests, feeds arriving
//! payloads to [`RemoteDisk::on_block_arrived`], reports
//! [`RemoteDisk::link_down`]/[`RemoteDisk::link_up`] and calls
//! [`RemoteDisk::tick`] now and then (every 100 ms to 1 s) so unanswered
//! requests are re-issued and the bitmap is saved.
//!
//! Durability ordering: a block's bytes are written before its bit is set
//! (both under the state lock); [`RemoteDisk::persist`] snapshots the bitmap,
//! then fsyncs the local file, then saves the snapshot atomically. So the
//! sidecar never claims a block whose bytes are not durable, and after a
//! crash the copy resumes from the last saved bitmap. Guest writes are
//! durable (data and bit) once `flush()` returns, as with any disk. The set
//! of blocks the guest wrote (excluded from the end-of-copy check) must not
//! lag the data either: a first write to a block the saved sidecar holds
//! saves the set before its bytes go to the file, until the copy is
//! confirmed ([`crate::done`]); blocks the sidecar does not hold are simply
//! fetched again after a crash.
//!
//! Methods take `&self` (share it in an `Arc`): the guest's I/O thread calls
//! `read_at`/`write_at` while the transport's thread delivers blocks.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};

use crate::done::{done_path, DoneRecord};
use crate::error::StorageError;
use crate::geometry::{Geometry, DEFAULT_BLOCK_SIZE};
use crate::metrics::StorageMetrics;
use crate::planner::{
    Arrival, Event, FetchRequest, IoPlan, Planner, PlannerConfig, PlannerStats, Priority, WaiterId,
};
use crate::presence::{sidecar_path, suffixed, PresenceBitmap};
use crate::wire::{BlockContent, BlockDecoder, Decoded};

/// Where the set of blocks the guest wrote at the destination is saved.
pub fn written_path(disk: &Path) -> PathBuf {
    suffixed(disk, ".written")
}

/// The link to the source is down; the request was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("link to the source site is down")]
pub struct LinkDown;

/// Sends fetch requests to the source site. Implemented by the gateway (and
/// by [`crate::copy`]'s in-process link). The answers come back through
/// [`RemoteDisk::on_block_arrived`].
pub trait Fetcher: Send + Sync {
    /// Sends `request`. Must not call back into the disk synchronously. A
    /// failed send is queued again at once and re-issued with the next
    /// requests (on-demand first); the transport should also report an
    /// outage with [`RemoteDisk::link_down`].
    fn fetch(&self, request: FetchRequest) -> Result<(), LinkDown>;
}

/// Tunables of a remote-backed disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteDiskConfig {
    /// Block size in bytes (a power of two, 4 KiB..16 MiB).
    pub block_size: u32,
    /// The planner's windows and timeouts.
    pub planner: PlannerConfig,
    /// Persist the bitmap after this many blocks arrived (bounds the work
    /// redone after a crash; each persist costs an fsync).
    pub persist_every_blocks: u64,
}

impl Default for RemoteDiskConfig {
    fn default() -> Self {
        RemoteDiskConfig {
            block_size: DEFAULT_BLOCK_SIZE,
            planner: PlannerConfig::default(),
            persist_every_blocks: 256,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ready,
    TimedOut { missing: usize, waited: Duration },
}

#[derive(Debug)]
struct State {
    planner: Planner,
    outcomes: HashMap<WaiterId, Outcome>,
    since_persist: u64,
    persist_due: bool,
    /// At least the blocks the saved presence sidecar holds (updated when
    /// a save starts): after a crash these stay present, so a guest write
    /// to one must have its written bit saved first.
    saved: PresenceBitmap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// A disk whose blocks come from the source site until they are local.
pub struct RemoteDisk {
    path: PathBuf,
    sidecar: PathBuf,
    file: File,
    geometry: Geometry,
    config: RemoteDiskConfig,
    state: Mutex<State>,
    changed: Condvar,
    persist_lock: Mutex<()>,
    decoder: Mutex<BlockDecoder>,
    fetcher: Arc<dyn Fetcher>,
    metrics: Arc<StorageMetrics>,
    all_local: AtomicBool,
    /// Blocks the guest wrote here (for the end-of-copy check,
    /// [`crate::verify`]); marked before the bytes are written.
    written: Mutex<PresenceBitmap>,
    /// `<path>.written`: the written set, saved with the presence bitmap.
    written_path: PathBuf,
    /// How many written blocks the saved written set holds.
    written_saved: AtomicU64,
    /// What this copy confirmed (or will) in `Done`, once it did; saved
    /// durably as `<path>.done` before it is first sent ([`crate::done`]).
    done: Mutex<Option<DoneRecord>>,
    done_path: PathBuf,
    /// `done` is set (read without its lock on the write path).
    confirmed: AtomicBool,
}

impl std::fmt::Debug for RemoteDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDisk")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .field("all_local", &self.all_local)
            .finish_non_exhaustive()
    }
}

impl RemoteDisk {
    /// Opens the local copy at `path` for a disk of `disk_len` bytes,
    /// creating a sparse file if there is none, and resuming from its
    /// presence sidecar (`<path>.presence`) if there is one. Nothing is
    /// fetched until [`RemoteDisk::start`].
    pub fn open(
        path: &Path,
        disk_len: u64,
        config: RemoteDiskConfig,
        fetcher: Arc<dyn Fetcher>,
    ) -> Result<Self, StorageError> {
        let geometry = Geometry::new(disk_len, config.block_size)?;
        let sidecar = sidecar_path(path);
        let presence = PresenceBitmap::load(&sidecar, geometry)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StorageError::io("open local disk copy", path, e))?;
        let actual = file
            .metadata()
            .map_err(|e| StorageError::io("stat local disk copy", path, e))?
            .len();
        let fresh = actual == 0 && presence.is_none();
        if fresh {
            file.set_len(disk_len)
                .map_err(|e| StorageError::io("size local disk copy", path, e))?;
        } else if actual != disk_len {
            return Err(StorageError::LocalSizeMismatch {
                path: path.to_owned(),
                expected: disk_len,
                actual,
            });
        }
        let resumed = presence.is_some();
        let presence = presence.unwrap_or_else(|| PresenceBitmap::new(geometry));
        tracing::info!(
            path = %path.display(),
            resumed,
            present = presence.present_count(),
            blocks = geometry.block_count(),
            "remote-backed disk opened"
        );
        let all_local = presence.is_complete();
        let saved = presence.clone();
        let planner = Planner::new(presence, config.planner);
        let written_path = written_path(path);
        let written = PresenceBitmap::load(&written_path, geometry)?
            .unwrap_or_else(|| PresenceBitmap::new(geometry));
        let done_path = done_path(path);
        let done = Self::load_done(&done_path, geometry, all_local && !fresh)?;
        Ok(RemoteDisk {
            path: path.to_owned(),
            sidecar,
            file,
            geometry,
            config,
            state: Mutex::new(State {
                planner,
                outcomes: HashMap::new(),
                since_persist: 0,
                persist_due: false,
                saved,
            }),
            changed: Condvar::new(),
            persist_lock: Mutex::new(()),
            decoder: Mutex::new(
                BlockDecoder::new()
                    .map_err(|e| StorageError::io("create zstd decoder for", path, e))?,
            ),
            fetcher,
            metrics: Arc::new(StorageMetrics::default()),
            all_local: AtomicBool::new(all_local),
            written_saved: AtomicU64::new(written.present_count()),
            confirmed: AtomicBool::new(done.is_some()),
            written: Mutex::new(written),
            written_path,
            done: Mutex::new(done),
            done_path,
        })
    }

    /// The saved `Done` record of a complete copy being resumed. One that
    /// cannot belong to this copy (it is not complete, or was created
    /// afresh) or that is damaged is removed: the confirmation is then
    /// computed again, which at worst reports a mismatch (the source keeps
    /// its copy), never a false success.
    fn load_done(
        path: &Path,
        geometry: Geometry,
        complete: bool,
    ) -> Result<Option<DoneRecord>, StorageError> {
        let loaded = if complete {
            match DoneRecord::load(path, geometry) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}; confirming the copy anew");
                    None
                }
            }
        } else {
            None
        };
        if loaded.is_none() {
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a done record that does not belong to this copy")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove stale done record", path, e)),
            }
        }
        Ok(loaded)
    }

    /// What to confirm to the source in `Done`: the end-of-copy digest
    /// ([`crate::verify`]) and the written set it excludes. The first call
    /// (every block must be local) completes the disk
    /// ([`RemoteDisk::complete`]), computes the digest and saves the record
    /// durably as `<path>.done` before returning it; every later call, and
    /// every call after a restart, returns that same record. So guest
    /// writes after the first `Done` (whose written bits a crash may have
    /// lost) never turn a resent `Done` into a false mismatch, while a copy
    /// that differed from the source when it completed still fails the
    /// check.
    pub fn confirmation(&self) -> Result<DoneRecord, StorageError> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = done.as_ref() {
            return Ok(r.clone());
        }
        self.complete()?;
        let (digest, written) = self.verification_digest()?;
        let record = DoneRecord { digest, written };
        record.save(&self.done_path)?;
        *done = Some(record.clone());
        self.confirmed.store(true, Ordering::Release);
        Ok(record)
    }

    /// The saved `Done` record, once [`RemoteDisk::confirmation`] made one
    /// (here or before a restart).
    pub fn confirmed(&self) -> Option<DoneRecord> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `Done` record's path (`<disk>.done`).
    pub fn done_path(&self) -> &Path {
        &self.done_path
    }

    /// Turns the background copy on or off (see
    /// [`Planner::set_background`]); on, missing blocks are requested now.
    pub fn set_background(&self, enabled: bool) {
        let mut st = self.lock();
        if st.planner.is_background_enabled() == enabled {
            return;
        }
        st.planner.set_background(enabled);
        let reqs = self.settle(&mut st, Instant::now());
        drop(st);
        self.send(reqs);
    }

    /// Whether the background copy is on.
    pub fn is_background_enabled(&self) -> bool {
        self.lock().planner.is_background_enabled()
    }

    /// How many blocks the guest wrote at this site.
    pub fn written_blocks(&self) -> u64 {
        self.written_set().present_count()
    }

    /// The blocks the guest wrote at this site so far.
    pub fn written_set(&self) -> PresenceBitmap {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The end-of-copy check's digest of this copy ([`crate::verify`]) and
    /// the written set it excludes. Every block must be local. Reads the
    /// whole local copy (holes are not read); the guest may keep writing
    /// meanwhile: a block written while it is hashed is in the returned set.
    pub fn verification_digest(&self) -> Result<([u8; 32], PresenceBitmap), StorageError> {
        let missing = self.lock().planner.presence().missing_count();
        if missing > 0 {
            return Err(StorageError::NotComplete { missing });
        }
        let extents = crate::extents::allocated_extents(&self.file, self.len())
            .map_err(|e| StorageError::io("map extents of local disk copy", &self.path, e))?;
        let g = self.geometry;
        let mut buf = Vec::new();
        let mut hashes = Vec::with_capacity(g.block_count() as usize);
        for b in 0..g.block_count() {
            let off = g.block_offset(b);
            let len = g.block_len(b);
            if !crate::extents::overlaps(&extents, off..off + len as u64) {
                hashes.push(crate::verify::block_hash(BlockContent::Zero));
                continue;
            }
            buf.resize(len, 0);
            self.file
                .read_exact_at(&mut buf, off)
                .map_err(|e| StorageError::io("read local disk copy", &self.path, e))?;
            hashes.push(crate::verify::block_hash(BlockContent::Data(&buf)));
        }
        let written = self.written_set();
        Ok((crate::verify::combine(g, &hashes, &written), written))
    }

    /// Marks the blocks of a guest write as written, before its bytes go
    /// to the file. A block the saved sidecar already holds stays present
    /// after a crash with whatever bytes reached the file, so until the
    /// copy is confirmed ([`RemoteDisk::confirmation`]) its written bit is
    /// saved (durably) first: otherwise a crash before the next save would
    /// leave the guest's bytes in a block the end-of-copy check includes,
    /// a false mismatch. Other blocks need no save: after a crash they are
    /// missing again and fetched anew. `saved` is the state's, held by the
    /// caller across this call and the write, so a persist cannot add a
    /// block to the sidecar in between.
    fn mark_written(
        &self,
        saved: &PresenceBitmap,
        offset: u64,
        len: u64,
    ) -> Result<(), StorageError> {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let mut save = false;
        for b in self.geometry.blocks_touching(offset, len) {
            save |= w.set(b) && saved.is_present(b);
        }
        if save && !self.confirmed.load(Ordering::Acquire) {
            w.save(&self.written_path)?;
            self.written_saved
                .store(w.present_count(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Disk size in bytes.
    pub fn len(&self) -> u64 {
        self.geometry.disk_len()
    }

    /// Whether the disk has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The local copy's path (the disk to use after switch-over).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The presence sidecar's path.
    pub fn sidecar_path(&self) -> &Path {
        &self.sidecar
    }

    /// The live counters.
    pub fn metrics(&self) -> Arc<StorageMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The planner's counters.
    pub fn planner_stats(&self) -> PlannerStats {
        self.lock().planner.stats()
    }

    /// `(present, total)` blocks.
    pub fn progress(&self) -> (u64, u64) {
        let st = self.lock();
        (
            st.planner.presence().present_count(),
            self.geometry.block_count(),
        )
    }

    /// Whether `block` is local now.
    pub fn is_block_local(&self, block: u64) -> bool {
        self.is_all_local() || self.lock().planner.presence().is_present(block)
    }

    /// Whether every block is local.
    pub fn is_all_local(&self) -> bool {
        self.all_local.load(Ordering::Acquire)
    }

    /// Marks blocks that are wholly holes at the source as present, making
    /// them zero locally first (a punched hole). Returns how many blocks
    /// that skipped. Call before [`RemoteDisk::start`].
    pub fn apply_source_holes(&self, holes: &[Range<u64>]) -> Result<u64, StorageError> {
        let mut st = self.lock();
        let mut skipped = 0;
        let n = self.geometry.block_count();
        for r in holes {
            let mut b = r.start.min(n);
            let end = r.end.min(n);
            while b < end {
                if st.planner.presence().is_present(b) {
                    b += 1;
                    continue;
                }
                let run_start = b;
                while b < end && !st.planner.presence().is_present(b) {
                    b += 1;
                }
                let off = self.geometry.block_offset(run_start);
                let len = self.geometry.block_offset(b).min(self.len()) - off;
                self.zero_local(off, len)?;
                for blk in run_start..b {
                    st.planner.mark_present(blk);
                }
                skipped += b - run_start;
            }
        }
        self.metrics.holes_skipped(skipped);
        st.since_persist += skipped;
        let reqs = self.settle(&mut st, Instant::now());
        drop(st);
        self.send(reqs);
        Ok(skipped)
    }

    /// Starts (or resumes) the background copy.
    pub fn start(&self) {
        let mut st = self.lock();
        let reqs = self.settle(&mut st, Instant::now());
        drop(st);
        self.send(reqs);
    }

    /// Fills `buf` with the bytes at `offset`, waiting for missing blocks.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if !self.is_all_local() {
            let st = self.wait_ready(Op::Read, offset, buf.len() as u64)?;
            // The blocks are present and stay so: read without the lock.
            drop(st);
        } else {
            self.geometry.check_range(offset, buf.len() as u64)?;
        }
        self.file.read_exact_at(buf, offset)
    }

    /// Stores `buf` at `offset`; a partly covered missing block is fetched
    /// first (see [`crate::planner`]).
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        if self.is_all_local() {
            self.geometry.check_range(offset, len)?;
            let st = self.lock();
            self.mark_written(&st.saved, offset, len)?;
            return self.file.write_all_at(buf, offset);
        }
        let mut st = self.wait_ready(Op::Write, offset, len)?;
        self.mark_written(&st.saved, offset, len)?;
        // Under the lock, so no arriving block can land between our write
        // and marking the blocks present.
        self.file.write_all_at(buf, offset)?;
        let before = st.planner.presence().present_count();
        st.planner.write_done(offset, len);
        let added = st.planner.presence().present_count() - before;
        self.metrics.blocks_written(added);
        st.since_persist += added;
        let reqs = self.settle(&mut st, Instant::now());
        drop(st);
        self.send(reqs);
        Ok(())
    }

    /// Makes earlier writes durable, together with the presence bitmap.
    pub fn flush(&self) -> io::Result<()> {
        self.persist().map_err(io::Error::from)
    }

    /// Saves the presence bitmap durably (snapshot, fsync data, save).
    pub fn persist(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.persist_lock.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = {
            let mut st = self.lock();
            st.since_persist = 0;
            st.persist_due = false;
            let snapshot = st.planner.presence().clone();
            // From now on the sidecar may hold these blocks.
            st.saved = snapshot.clone();
            snapshot
        };
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync local disk copy", &self.path, e))?;
        // The written set only grows; save it when it did (it excludes
        // blocks from the end-of-copy check, so it must survive a restart).
        // Under its lock: a write-ahead save in `mark_written` and this one
        // never overwrite a newer set with an older one.
        {
            let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if w.present_count() != self.written_saved.load(Ordering::Relaxed) {
                w.save(&self.written_path)?;
                self.written_saved
                    .store(w.present_count(), Ordering::Relaxed);
            }
        }
        snapshot.save(&self.sidecar)
    }

    /// A payload for `block` arrived from the source (see [`crate::wire`]).
    /// Blocks already local are dropped; malformed payloads are errors and
    /// the block is requested again.
    pub fn on_block_arrived(&self, block: u64, payload: &[u8]) -> Result<(), StorageError> {
        let count = self.geometry.block_count();
        if block >= count {
            return Err(StorageError::NoSuchBlock {
                block,
                block_count: count,
            });
        }
        let expected = self.geometry.block_len(block);
        let mut data = Vec::new();
        let decoded = self
            .decoder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decode(block, payload, expected, &mut data);
        self.arrived(block, decoded, &data, payload.len() as u64)
    }

    /// A block the transport decoded itself (e.g. from page references, see
    /// the gateway's storage relay) arrived: `data` is its bytes and
    /// `wire_len` what it cost on the wire. Wrong lengths are errors and the
    /// block is requested again.
    pub fn on_block_data(
        &self,
        block: u64,
        data: &[u8],
        wire_len: u64,
    ) -> Result<(), StorageError> {
        let count = self.geometry.block_count();
        if block >= count {
            return Err(StorageError::NoSuchBlock {
                block,
                block_count: count,
            });
        }
        let expected = self.geometry.block_len(block);
        let decoded = if data.len() != expected {
            Err(StorageError::BadBlockLength {
                block,
                expected,
                got: data.len(),
            })
        } else if crate::wire::is_zero(data) {
            Ok(Decoded::Zero)
        } else {
            Ok(Decoded::Data)
        };
        self.arrived(block, decoded, data, wire_len)
    }

    /// The transport could not use what arrived for `block` (`wire_len`
    /// bytes; e.g. it referenced content no longer held here): it is
    /// requested again.
    pub fn on_block_unusable(&self, block: u64, wire_len: u64, why: StorageError) -> StorageError {
        let now = Instant::now();
        let mut st = self.lock();
        if let Ok(Arrival::Store { .. }) = st.planner.block_arrived(now, block, wire_len) {
            st.planner.block_store_failed(block);
        }
        let reqs = self.settle(&mut st, now);
        drop(st);
        self.send(reqs);
        why
    }

    fn arrived(
        &self,
        block: u64,
        decoded: Result<Decoded, StorageError>,
        data: &[u8],
        wire_len: u64,
    ) -> Result<(), StorageError> {
        let expected = self.geometry.block_len(block);
        let now = Instant::now();
        let mut st = self.lock();
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                if let Arrival::Store { .. } = st.planner.block_arrived(now, block, wire_len)? {
                    st.planner.block_store_failed(block);
                }
                let reqs = self.settle(&mut st, now);
                drop(st);
                self.send(reqs);
                return Err(e);
            }
        };
        self.metrics.wire_bytes(expected as u64, wire_len);
        match st.planner.block_arrived(now, block, wire_len)? {
            Arrival::Discard => self.metrics.block_discarded(),
            Arrival::Store { answered } => {
                let off = self.geometry.block_offset(block);
                let stored = match decoded {
                    Decoded::Zero => self.zero_local(off, expected as u64),
                    Decoded::Data => self.file.write_all_at(data, off).map_err(|e| {
                        StorageError::io("write block to local disk copy", &self.path, e)
                    }),
                };
                if let Err(e) = stored {
                    st.planner.block_store_failed(block);
                    let reqs = self.settle(&mut st, now);
                    drop(st);
                    self.send(reqs);
                    return Err(e);
                }
                st.planner.block_stored(block);
                match answered {
                    Some((Priority::OnDemand, latency)) => {
                        self.metrics.block_fetched_on_demand(latency)
                    }
                    _ => self.metrics.block_copied(),
                }
                st.since_persist += 1;
            }
        }
        let reqs = self.settle(&mut st, now);
        if st.since_persist >= self.config.persist_every_blocks.max(1) || self.is_all_local() {
            // Saved by the next tick(), off this (transport) thread: an
            // fsync must not stall arriving blocks.
            st.persist_due = true;
        }
        drop(st);
        self.send(reqs);
        Ok(())
    }

    /// The link to the source is down: outstanding requests will be
    /// re-issued after [`RemoteDisk::link_up`]. Guest I/O to missing blocks
    /// waits (up to the read timeout).
    pub fn link_down(&self) {
        let mut st = self.lock();
        st.planner.link_down();
        tracing::warn!(path = %self.path.display(), "storage copy: link to the source is down; guest I/O to missing blocks waits");
        let _ = self.settle(&mut st, Instant::now());
    }

    /// The link is back: re-issues what was outstanding, on-demand first.
    pub fn link_up(&self) {
        let mut st = self.lock();
        st.planner.link_up();
        tracing::info!(path = %self.path.display(), "storage copy: link to the source is back; resuming");
        let reqs = self.settle(&mut st, Instant::now());
        drop(st);
        self.send(reqs);
    }

    /// Applies the clock: times out waiting guest I/O, re-issues unanswered
    /// requests, and saves the bitmap when enough blocks arrived since the
    /// last save (every `persist_every_blocks`, and once all is local). Call
    /// every 100 ms to 1 s from a thread that may block on an fsync (in
    /// tokio: `spawn_blocking`). The interval bounds the work redone after a
    /// crash.
    pub fn tick(&self) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut st = self.lock();
        st.planner.handle_timeout(now);
        let reqs = self.settle(&mut st, now);
        let persist = st.persist_due;
        drop(st);
        self.send(reqs);
        if persist {
            self.persist()?;
        }
        Ok(())
    }

    /// Waits until every block is local or `timeout` passes; returns whether
    /// the disk is all local.
    pub fn wait_all_local(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while !self.is_all_local() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Switch-over: every block must be local; makes the local copy and its
    /// bitmap durable. When this returns `Ok`, confirm to the source, which
    /// may then release its copy. Until then the source stays authoritative.
    pub fn complete(&self) -> Result<(), StorageError> {
        let missing = self.lock().planner.presence().missing_count();
        if missing > 0 {
            return Err(StorageError::NotComplete { missing });
        }
        self.persist()?;
        tracing::info!(path = %self.path.display(), "storage copy complete and durable; the source copy may be released");
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns planner events into outcomes for waiting threads and collects
    /// the fetch requests to send (after the lock is dropped).
    fn settle(&self, st: &mut State, now: Instant) -> Vec<FetchRequest> {
        let mut woke = false;
        while let Some(ev) = st.planner.poll_event() {
            woke = true;
            match ev {
                Event::Ready(id) => {
                    st.outcomes.insert(id, Outcome::Ready);
                }
                Event::TimedOut {
                    waiter,
                    missing,
                    waited,
                } => {
                    self.metrics.fetch_timeout();
                    tracing::error!(
                        path = %self.path.display(),
                        ?waited,
                        missing,
                        link_up = st.planner.is_link_up(),
                        "guest I/O timed out waiting for blocks from the source site; the guest gets an I/O error, no data is made up; restore the link (the copy resumes by itself)"
                    );
                    st.outcomes
                        .insert(waiter, Outcome::TimedOut { missing, waited });
                }
                Event::AllLocal => {
                    self.all_local.store(true, Ordering::Release);
                    tracing::info!(path = %self.path.display(), "every block of the disk is local");
                }
            }
        }
        if woke {
            self.changed.notify_all();
        }
        std::iter::from_fn(|| st.planner.poll_fetch(now)).collect()
    }

    fn send(&self, reqs: Vec<FetchRequest>) {
        let mut lost = Vec::new();
        for r in reqs {
            if let Err(LinkDown) = self.fetcher.fetch(r) {
                tracing::debug!(
                    first = r.first_block,
                    count = r.count,
                    "fetch not sent: link down"
                );
                lost.push(r);
            }
        }
        if lost.is_empty() {
            return;
        }
        // Not left in flight (it would wait out the request timeout, as long
        // as a guest read may wait): queued again, on-demand first, and sent
        // with the next requests — the transport's `start`/`link_up` when its
        // session exists, or the next arrival, guest I/O or tick. Not polled
        // again here: the transport just said it cannot send.
        let mut st = self.lock();
        for r in &lost {
            st.planner.request_not_sent(r);
        }
    }

    /// Waits until the planner lets `op` on the range proceed; returns the
    /// state lock held.
    fn wait_ready(&self, op: Op, offset: u64, len: u64) -> io::Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let plan = match op {
                Op::Read => st.planner.guest_read(now, offset, len),
                Op::Write => st.planner.guest_write(now, offset, len),
            }?;
            let id = match plan {
                IoPlan::Ready => return Ok(st),
                IoPlan::Wait(id) => id,
            };
            let reqs = self.settle(&mut st, now);
            if !reqs.is_empty() {
                drop(st);
                self.send(reqs);
                st = self.lock();
            }
            loop {
                match st.outcomes.remove(&id) {
                    Some(Outcome::Ready) => break,
                    Some(Outcome::TimedOut { missing, waited }) => {
                        return Err(StorageError::FetchTimeout {
                            offset,
                            len,
                            waited,
                            missing,
                        }
                        .into())
                    }
                    None => {}
                }
                let now = Instant::now();
                let wake = st
                    .planner
                    .poll_timeout()
                    .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
                    .clamp(Duration::from_millis(1), Duration::from_secs(1));
                st = self
                    .changed
                    .wait_timeout(st, wake)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                let now = Instant::now();
                if st.planner.poll_timeout().is_some_and(|t| t <= now) {
                    st.planner.handle_timeout(now);
                    let reqs = self.settle(&mut st, now);
                    if !reqs.is_empty() {
                        drop(st);
                        self.send(reqs);
                        st = self.lock();
                    }
                }
            }
        }
    }

    /// Makes `offset..offset+len` read as zeros locally: punch a hole, or
    /// write zeros where the filesystem cannot punch.
    fn zero_local(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, flags, offset as i64, len as i64) {
            Ok(()) => Ok(()),
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                let zeros = vec![0u8; len.min(1 << 20) as usize];
                let mut off = offset;
                while off < offset + len {
                    let k = (offset + len - off).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..k], off).map_err(|e| {
                        StorageError::io("zero a block of local disk copy", &self.path, e)
                    })?;
                    off += k as u64;
                }
                Ok(())
            }
            Err(e) => Err(StorageError::io(
                "punch a hole in local disk copy",
                &self.path,
                e.into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
