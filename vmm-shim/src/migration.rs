//! Live migration at the KVM edge: the source side ([`migrate_to`]) runs
//! pre-copy rounds driven by the sans-IO [`Planner`], pauses the VM, sends
//! the last pages and the state, and releases the VM only after the
//! destination has confirmed it holds complete state (matching memory
//! digest); the destination side ([`receive_from`]) rebuilds the VM and
//! resumes it only on the source's `Handover`. Any failure before the
//! handover leaves the VM running at the source.

use crate::memory::{self, BlockDigests, Page};
use crate::protocol_io::{self, StreamError};
use crate::serial::SerialSink;
use crate::state::{StateError, VmState};
use crate::vm::{Vm, VmError};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use wanmig_migration::machine::VmConfig;
use wanmig_migration::policy::{ConvergenceMode, Decision, PauseBreakdown, Planner, RoundResult};
pub use wanmig_migration::run::{
    IncomingReport, MigrateOptions, MigrationReport, ReceiveOptions, RoundReport,
};
use wanmig_migration::shim::{Decoder, Message, PageBatch, BATCH_PAGES, SHIM};

/// A byte stream a migration can run over.
pub trait MigrationStream: Read + Write + Send {
    /// Sets read and write timeouts (`None` = block forever).
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()>;
}

impl MigrationStream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

impl MigrationStream for std::net::TcpStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the peer aborted the migration: {0}")]
    PeerAborted(String),
    #[error("protocol violation: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("the destination cannot hold this VM: {0}")]
    ConfigMismatch(String),
    #[error("memory digest mismatch: source {source_digest}, destination {destination_digest}; the destination's copy is incomplete or corrupt")]
    DigestMismatch {
        source_digest: String,
        destination_digest: String,
    },
    #[error("the migration did not finish within its total timeout of {0:?}; the VM keeps running at the source")]
    Timeout(Duration),
    #[error("guest page {gfn} in the stream is outside the VM's {pages} pages")]
    BadPage { gfn: u64, pages: u64 },
    #[error("the stream ended before {0}")]
    Incomplete(&'static str),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the VM was handed over but the destination did not report it running: {0}; check the destination")]
    HandoverUnconfirmed(String),
}

impl MigrationError {
    /// Whether the VM is still at the source after this error (true for
    /// every failure before the handover).
    pub fn vm_kept_at_source(&self) -> bool {
        !matches!(self, MigrationError::HandoverUnconfirmed(_))
    }
}

struct Sender<'a, S> {
    stream: &'a mut S,
    dec: Decoder,
    scratch: Vec<u8>,
    bytes: u64,
}

impl<S: MigrationStream> Sender<'_, S> {
    fn send(&mut self, m: &Message) -> Result<(), MigrationError> {
        self.bytes += protocol_io::write_message(self.stream, m, &mut self.scratch)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Message, MigrationError> {
        match protocol_io::read_message(self.stream, &mut self.dec)? {
            Message::Abort(reason) => Err(MigrationError::PeerAborted(reason)),
            m => Ok(m),
        }
    }

    /// Sends `gfns` in batches as pages of pre-copy round `round`, and
    /// hashes the digest blocks they lie in into `hashes` if given (their
    /// content as sent: a later write shows up in the dirty log, whose
    /// pages invalidate their blocks); returns bytes written.
    fn send_pages(
        &mut self,
        vm: &Vm,
        gfns: &[u64],
        round: u32,
        mut hashes: Option<&mut BlockDigests>,
    ) -> Result<u64, MigrationError> {
        let before = self.bytes;
        let mut batch = PageBatch::new();
        for chunk in gfns.chunks(BATCH_PAGES) {
            batch.clear();
            for &gfn in chunk {
                let buf: &mut Page = batch
                    .push_zeroed(gfn)
                    .try_into()
                    .map_err(|_| MigrationError::Incomplete("a page buffer"))?;
                memory::read_page(vm.memory(), gfn, buf).map_err(VmError::from)?;
                if let Some(h) = hashes.as_deref_mut() {
                    h.hash_now(vm.memory(), gfn);
                }
            }
            let msg = Message::Pages {
                round,
                batch: std::mem::take(&mut batch),
            };
            self.send(&msg)?;
            if let Message::Pages { batch: b, .. } = msg {
                batch = b;
            }
        }
        Ok(self.bytes - before)
    }
}

/// Migrates `vm` over `stream`. On success the VM has been handed over and
/// is stopped here (drop it); on error before the handover it keeps
/// running here, unthrottled, with dirty logging off.
pub fn migrate_to<S: MigrationStream>(
    vm: &mut Vm,
    stream: &mut S,
    opts: &MigrateOptions,
) -> Result<MigrationReport, MigrationError> {
    stream
        .set_timeouts(Some(opts.answer_timeout), Some(opts.answer_timeout))
        .map_err(StreamError::from)?;
    let mut tx = Sender {
        stream,
        dec: Decoder::new(),
        scratch: Vec::new(),
        bytes: 0,
    };
    let mut handed_over = false;
    let result = run_source(vm, &mut tx, opts, &mut handed_over);
    if let Err(e) = &result {
        if !handed_over {
            tracing::warn!("migration failed, the VM keeps running here: {e}");
            let _ = tx.send(&Message::Abort(e.to_string()));
            let _ = vm.set_throttle(0);
            let _ = vm.set_dirty_logging(false);
            if let Err(re) = vm.resume() {
                tracing::error!("cannot resume the VM after the failed migration: {re}");
            }
        }
    }
    result
}

fn run_source<S: MigrationStream>(
    vm: &mut Vm,
    tx: &mut Sender<'_, S>,
    opts: &MigrateOptions,
    handed_over: &mut bool,
) -> Result<MigrationReport, MigrationError> {
    let started = Instant::now();
    let mut planner = Planner::new(opts.planner.clone(), started);
    tx.send(&Message::Hello {
        version: SHIM.current,
        machine: vm.config().machine(),
    })?;
    match tx.recv()? {
        Message::HelloAck => {}
        other => return Err(unexpected("hello-ack", &other)),
    }

    vm.set_dirty_logging(true)?;
    vm.take_dirty_pages()?;
    let memory_pages = memory::page_count(vm.memory());
    // The handover digest, kept as memory goes out: each block is hashed
    // when its pages are sent and again after the dirty log reports a
    // write to it, so at the pause only the final dirty set's blocks are
    // left to hash.
    let mut hashes = BlockDigests::unhashed(vm.memory());
    // The state, the destination's last blocks and the table digests.
    planner.set_stop_overhead(Duration::from_millis(5));
    let mut gfns: Vec<u64> = (0..memory_pages).collect();
    let mut rounds = Vec::new();
    let mut max_throttle = 0u8;
    let (stop_reason, predicted) = loop {
        let t0 = Instant::now();
        let bytes = tx.send_pages(vm, &gfns, rounds.len() as u32, Some(&mut hashes))?;
        let elapsed = t0.elapsed();
        if let Some(cost) = hashes.block_cost() {
            // A page left at the stop may cost its whole block.
            planner.set_per_page_overhead(cost);
        }
        let dirty = vm.take_dirty_pages()?;
        for &gfn in &dirty {
            hashes.invalidate(gfn);
        }
        let r = RoundResult {
            pages_sent: gfns.len() as u64,
            bytes_sent: bytes,
            elapsed,
            dirty_pages: dirty.len() as u64,
        };
        rounds.push(RoundReport {
            round: rounds.len() as u32,
            pages: r.pages_sent,
            bytes,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            dirty_after: r.dirty_pages,
            throttle: planner.throttle(),
        });
        gfns = dirty;
        match planner.on_round(r, Instant::now()) {
            Decision::NextRound => {}
            Decision::Throttle(p) => {
                tracing::info!(
                    "dirty set not shrinking; throttling the vCPU to {}%",
                    100 - p
                );
                vm.set_throttle(p)?;
                max_throttle = max_throttle.max(p);
            }
            Decision::StopAndCopy(reason) => break (reason, planner.predict(r.dirty_pages)),
            Decision::Cancel => {
                return Err(MigrationError::Timeout(planner.config().total_timeout))
            }
        }
    };

    // Stop and copy.
    let paused_at = Instant::now();
    vm.pause()?;
    let mut last = vm.take_dirty_pages()?;
    for &gfn in &last {
        hashes.invalidate(gfn);
    }
    last.extend_from_slice(&gfns);
    last.sort_unstable();
    last.dedup();
    let mut pause = PauseBreakdown {
        stop: paused_at.elapsed(),
        digest_blocks: hashes.stale_blocks() as u64,
        predicted,
        ..PauseBreakdown::default()
    };
    // Memory no longer changes. The last pages, the state and `Complete`
    // go out at once; the source hashes the blocks written since they
    // were sent while they travel and the destination digests what it
    // holds (see `memory::BlockDigests`), so the pause waits for the later
    // of the two instead of their sum.
    let (digest, state) = std::thread::scope(|scope| {
        let mem = vm.memory();
        let hashes = &mut hashes;
        let digesting = scope.spawn(move || {
            let t = Instant::now();
            (hashes.digest(mem), t.elapsed())
        });
        // The round sent while paused follows the live ones.
        let final_round = rounds.len() as u32;
        let t = Instant::now();
        let sent = tx.send_pages(vm, &last, final_round, None).and_then(|_| {
            pause.final_copy = t.elapsed();
            let t = Instant::now();
            let state = vm.save_state()?.encode();
            tx.send(&Message::State(state.clone()))?;
            tx.send(&Message::Complete)?;
            pause.device_state = t.elapsed();
            Ok(state)
        });
        // A panicked digest thread yields a digest nothing matches.
        let (digest, took) = digesting.join().unwrap_or(([0; 32], Duration::ZERO));
        pause.digest = took;
        sent.map(|state| (digest, state))
    })?;
    tracing::debug!(
        ms = paused_at.elapsed().as_secs_f64() * 1e3,
        pages = last.len(),
        blocks = pause.digest_blocks,
        "final pages, state and complete sent; memory digested"
    );
    let t = Instant::now();
    tx.send(&Message::Digest { digest })?;
    let confirmed = tx.recv()?;
    pause.confirm = t.elapsed();
    tracing::debug!(
        ms = paused_at.elapsed().as_secs_f64() * 1e3,
        "destination confirmed"
    );
    match confirmed {
        Message::Confirmed { digest: theirs } if theirs == digest => {}
        Message::Confirmed { digest: theirs } => {
            // The destination saw our digest too and aborts; prefer its
            // word (it names what it holds) when it comes.
            let mismatch = MigrationError::DigestMismatch {
                source_digest: memory::hex(&digest),
                destination_digest: memory::hex(&theirs),
            };
            return Err(match tx.recv() {
                Err(e @ MigrationError::PeerAborted(_)) => e,
                _ => mismatch,
            });
        }
        other => return Err(unexpected("confirmed", &other)),
    }
    if planner.timed_out(Instant::now()) {
        return Err(MigrationError::Timeout(planner.config().total_timeout));
    }
    // The point of no return: once Handover is written the destination may
    // run the VM, so it must never run here again.
    let t = Instant::now();
    tx.send(&Message::Handover)?;
    *handed_over = true;
    vm.release();
    tracing::debug!(
        ms = paused_at.elapsed().as_secs_f64() * 1e3,
        "handed over and released"
    );
    let resumed = tx.recv();
    pause.handover = t.elapsed();
    let downtime = paused_at.elapsed();
    tracing::debug!(ms = downtime.as_secs_f64() * 1e3, "destination resumed");
    match resumed {
        Ok(Message::Resumed) => {}
        Ok(other) => {
            return Err(MigrationError::HandoverUnconfirmed(format!(
                "got {}",
                describe(&other)
            )))
        }
        Err(e) => return Err(MigrationError::HandoverUnconfirmed(e.to_string())),
    }
    let total_pages_sent = rounds.iter().map(|r| r.pages).sum::<u64>() + last.len() as u64;
    let mode = ConvergenceMode::of(stop_reason, max_throttle);
    Ok(MigrationReport {
        memory_pages,
        rounds,
        final_pages: last.len() as u64,
        total_pages_sent,
        total_bytes_sent: tx.bytes,
        downtime,
        pause,
        total_time: started.elapsed(),
        stop_reason,
        mode,
        max_throttle,
        memory_digest: memory::hex(&digest),
        state_bytes: state.len() as u64,
    })
}

fn describe(m: &Message) -> String {
    match m {
        Message::Pages { round, batch } => {
            format!("a batch of {} pages of round {round}", batch.len())
        }
        Message::State(s) => format!("a {}-byte state blob", s.len()),
        other => format!("{other:?}"),
    }
}

fn unexpected(expected: &'static str, got: &Message) -> MigrationError {
    MigrationError::Unexpected {
        expected,
        got: describe(got),
    }
}

/// Receives a VM over `stream` into a new VM shaped like `config` and runs
/// it. Returns only once the VM is running here; on error no VM runs here.
pub fn receive_from<S: MigrationStream>(
    stream: &mut S,
    config: VmConfig,
    serial: SerialSink,
    opts: &ReceiveOptions,
) -> Result<(Vm, IncomingReport), MigrationError> {
    receive_from_with_disk(stream, config, serial, opts, None)
}

/// [`receive_from`] with `disk` (when given) behind the incoming VM's
/// virtio-block device instead of the file at `DiskConfig.path` — e.g. a
/// remote-backed disk that the storage migration is still copying.
pub fn receive_from_with_disk<S: MigrationStream>(
    stream: &mut S,
    config: VmConfig,
    serial: SerialSink,
    opts: &ReceiveOptions,
    disk: Option<crate::vm::DiskBackend>,
) -> Result<(Vm, IncomingReport), MigrationError> {
    stream
        .set_timeouts(Some(opts.idle_timeout), Some(opts.idle_timeout))
        .map_err(StreamError::from)?;
    let mut rx = Sender {
        stream,
        dec: Decoder::new(),
        scratch: Vec::new(),
        bytes: 0,
    };
    let result = run_destination(&mut rx, config, serial, disk, opts);
    if let Err(e) = &result {
        // Tell the source why, unless the stream itself failed; a protocol
        // error (a version this shim refuses, say) is told too.
        match e {
            MigrationError::PeerAborted(_)
            | MigrationError::Stream(
                StreamError::Io(_) | StreamError::Closed | StreamError::Truncated(_),
            ) => {}
            other => {
                let _ = rx.send(&Message::Abort(other.to_string()));
            }
        }
    }
    result
}

fn run_destination<S: MigrationStream>(
    rx: &mut Sender<'_, S>,
    config: VmConfig,
    serial: SerialSink,
    disk: Option<crate::vm::DiskBackend>,
    opts: &ReceiveOptions,
) -> Result<(Vm, IncomingReport), MigrationError> {
    let started = Instant::now();
    // The decoder has checked the hello's version (an unsupported one is
    // a protocol error, answered with an abort that says which site to
    // upgrade).
    let machine = match rx.recv()? {
        Message::Hello { machine, .. } => machine,
        other => return Err(unexpected("hello", &other)),
    };
    if let Some(why) = config.machine().mismatch(&machine) {
        return Err(MigrationError::ConfigMismatch(why));
    }
    let vm = Vm::create_empty_with_disk(config, serial, disk)?;
    rx.send(&Message::HelloAck)?;
    let pages = memory::page_count(vm.memory());
    // Kept current as pages arrive, so at `Complete` only the last few
    // blocks written need hashing, not all of memory (see `BlockDigests`).
    let mut hashes = memory::BlockDigests::zeroed(vm.memory());
    let mut pages_received = 0u64;
    let mut state: Option<VmState> = None;
    // The gateway may pass the source's digest on ahead of a `Complete` it
    // holds back while it fills missing pages.
    let mut source_digest: Option<[u8; 32]> = None;
    loop {
        let msg = match rx.recv() {
            Err(MigrationError::Stream(StreamError::Closed)) => {
                return Err(MigrationError::Incomplete("the source sent complete state"))
            }
            other => other?,
        };
        match msg {
            Message::Pages { batch, .. } => {
                for (gfn, data) in batch.pages() {
                    if gfn >= pages {
                        return Err(MigrationError::BadPage { gfn, pages });
                    }
                    memory::write_page(vm.memory(), gfn, data).map_err(VmError::from)?;
                    hashes.mark(vm.memory(), gfn);
                }
                pages_received += batch.len() as u64;
            }
            Message::State(blob) => state = Some(VmState::decode(&blob)?),
            Message::Digest { digest } => source_digest = Some(digest),
            Message::Complete => {
                let state = state
                    .take()
                    .ok_or(MigrationError::Incomplete("the VM state arrived"))?;
                let ours = hashes.digest(vm.memory());
                let check = |theirs: [u8; 32]| {
                    if theirs == ours {
                        Ok(())
                    } else {
                        Err(MigrationError::DigestMismatch {
                            source_digest: memory::hex(&theirs),
                            destination_digest: memory::hex(&ours),
                        })
                    }
                };
                if let Some(theirs) = source_digest {
                    check(theirs)?;
                }
                vm.restore_state(state)?;
                rx.send(&Message::Confirmed { digest: ours })?;
                rx.stream
                    .set_timeouts(opts.handover_timeout, Some(opts.idle_timeout))
                    .map_err(StreamError::from)?;
                // The source's digest (unless it came already), then the
                // handover. The source hands over only on equal digests;
                // this side aborts if the source's digest differs. (A
                // gateway that lost the link after this point passes on a
                // settled `Handover` that may overtake the digest: the
                // source compared before handing over, so it is accepted.)
                loop {
                    match rx.recv() {
                        Ok(Message::Digest { digest }) if source_digest.is_none() => {
                            check(digest)?;
                            source_digest = Some(digest);
                        }
                        Ok(Message::Handover) => break,
                        Ok(other) => return Err(unexpected("digest, then handover", &other)),
                        Err(MigrationError::Stream(StreamError::Closed)) => {
                            return Err(MigrationError::Incomplete("the source handed the VM over"))
                        }
                        Err(e) => return Err(e),
                    }
                }
                vm.announce();
                vm.resume()?;
                // The VM runs here now whatever happens to the stream.
                if let Err(e) = rx.send(&Message::Resumed) {
                    tracing::warn!("VM resumed, but telling the source failed: {e}");
                }
                let report = IncomingReport {
                    pages_received,
                    memory_digest: memory::hex(&ours),
                    total_time: started.elapsed(),
                };
                return Ok((vm, report));
            }
            other => return Err(unexpected("pages, state or complete", &other)),
        }
    }
}
