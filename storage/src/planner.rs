//! The destination-side copy planner: a sans-IO state machine that decides
//! which blocks to fetch from the source and when guest I/O may proceed.
//!
//! Inputs: guest reads and writes of byte ranges, blocks arriving (from
//! on-demand or background fetches), link down/up, and clock readings (an
//! `Instant` passed in). Outputs: [`FetchRequest`]s from [`Planner::poll_fetch`]
//! and [`Event`]s from [`Planner::poll_event`] (a waiting guest request may
//! proceed, or timed out; the whole disk is local).
//!
//! Policies:
//! - **Priority.** Blocks a guest request waits for go to an on-demand queue
//!   served before any background block, with its own in-flight budget so a
//!   full background window never delays them. A block already requested by
//!   the background copy is requested again on demand (it may be queued
//!   behind a window of background bytes); the later copy is discarded.
//! - **Window.** Background fetches in flight are bounded in *wire* bytes,
//!   since the bandwidth-delay product is a wire quantity: `window_wire_bytes`
//!   divided by what a background block has recently cost on the wire (a
//!   moving average of arrivals), at least `window_blocks` and at most
//!   `max_window_blocks`. A block the far site already holds (page
//!   references, zero blocks) costs a few hundred bytes instead of tens of
//!   KiB, so a copy of content the destination holds would otherwise be
//!   bound by round trips (a fixed 16 MiB of logical data per RTT), not by
//!   bytes. The floor is the window before anything arrived; the cap bounds
//!   how much raw data can queue when the content turns expensive again
//!   (128 MiB: about 4 s at 250 Mbit/s, well inside `request_timeout`). A
//!   bigger window queues more background bytes at the bottleneck, so the
//!   transport must send on-demand blocks ahead of background ones (the
//!   in-process link in [`crate::copy`] does, and so does the gateway's
//!   relay, on a stream of higher priority). Contiguous blocks are coalesced
//!   into one request of up to `max_request_blocks`.
//! - **Write wins.** A guest write makes its blocks present; a block that
//!   arrives for a present block is discarded, so the copy never overwrites
//!   guest data. A write that covers only part of a missing block would need
//!   the rest of that block: we fetch it on demand first and then apply the
//!   write on top (read-modify-write). The alternative, per-sector presence,
//!   would make the bitmap 128× larger and the merge logic subtle; partial
//!   writes to not-yet-copied blocks are rare after the hot set is fetched.
//! - **Nothing lost.** On link down every in-flight block goes back to its
//!   queue (on-demand ones, and background ones a guest now waits for, to the
//!   on-demand queue) and is re-issued after link up. A request the
//!   transport could not send at all ([`Planner::request_not_sent`], e.g.
//!   asked for before the first session's streams exist) goes back the same
//!   way at once. A request unanswered for `request_timeout` is re-issued
//!   the same way. Duplicate arrivals are
//!   harmless: the source is immutable, and present blocks are discarded.
//! - **Timeouts are errors, not data.** A guest request waiting longer than
//!   `read_timeout` gets [`Event::TimedOut`]; its blocks stay queued.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::StorageError;
use crate::geometry::Geometry;
use crate::presence::PresenceBitmap;

/// Tunables of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannerConfig {
    /// Background blocks in flight before any arrived, and at least after.
    pub window_blocks: u32,
    /// Background bytes in flight on the wire the window aims at (about
    /// the bandwidth-delay product, with room for the link to speed up).
    pub window_wire_bytes: u64,
    /// Background blocks in flight at most, however cheap they are.
    pub max_window_blocks: u32,
    /// On-demand blocks in flight at most (a separate budget).
    pub demand_window_blocks: u32,
    /// Contiguous blocks coalesced into one request at most.
    pub max_request_blocks: u32,
    /// How long a guest request may wait for missing blocks.
    pub read_timeout: Duration,
    /// After how long an unanswered fetch is re-issued (link still up).
    /// Keep it at most half of `read_timeout` (the gateway's config refuses
    /// more): a guest read whose fetch was lost must see the re-issue, and
    /// its answer, before its own timeout turns into an I/O error.
    pub request_timeout: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            window_blocks: 256,
            window_wire_bytes: 8 << 20,
            max_window_blocks: 2048,
            demand_window_blocks: 64,
            max_request_blocks: 16,
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Why a block is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Priority {
    /// A guest request waits for it.
    OnDemand,
    /// The background copy.
    Background,
}

/// A request to send to the source: blocks `first_block..first_block+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchRequest {
    /// First block.
    pub first_block: u64,
    /// Number of contiguous blocks (at least 1).
    pub count: u32,
    /// Why they are fetched.
    pub priority: Priority,
}

impl FetchRequest {
    /// The requested blocks.
    pub fn blocks(&self) -> Range<u64> {
        self.first_block..self.first_block + u64::from(self.count)
    }
}

/// Identifies a guest request that waits for blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(u64);

/// What a guest request may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPlan {
    /// Every block it needs is local: go ahead.
    Ready,
    /// It must wait for [`Event::Ready`] (or [`Event::TimedOut`]) for this id,
    /// then plan again.
    Wait(WaiterId),
}

/// Something that happened, for the owner to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The waiter's blocks are all local.
    Ready(WaiterId),
    /// The waiter waited `read_timeout` with `missing` blocks still absent.
    TimedOut {
        /// Which waiter.
        waiter: WaiterId,
        /// Blocks still missing.
        missing: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// Every block is local: switch over to the local disk.
    AllLocal,
}

/// What to do with an arrived block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Write it to the local copy, then call [`Planner::block_stored`] (or
    /// [`Planner::block_store_failed`]). Until then the block is "landing":
    /// the caller must not let a guest write to it interleave.
    Store {
        /// Whether it answered an outstanding request, and how long that took.
        answered: Option<(Priority, Duration)>,
    },
    /// Already present (guest wrote it, or a duplicate): drop it.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    /// Missing and not scheduled (or present: the bitmap decides).
    Idle,
    /// In the on-demand queue.
    Queued,
    /// Requested and not yet arrived.
    InFlight,
    /// Arrived, being written locally.
    Landing,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    priority: Priority,
    sent_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    missing: usize,
    started: Instant,
    deadline: Instant,
}

/// Counters of what the planner decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlannerStats {
    /// Blocks requested on demand (including re-issues).
    pub demand_blocks_requested: u64,
    /// Blocks requested by the background copy (including re-issues).
    pub background_blocks_requested: u64,
    /// Blocks stored after arriving.
    pub blocks_stored: u64,
    /// Arrivals discarded because the block was already present.
    pub blocks_discarded: u64,
    /// Blocks made present by guest writes.
    pub blocks_written: u64,
    /// In-flight blocks put back after link down or request timeout.
    pub blocks_reissued: u64,
    /// Guest requests that timed out.
    pub waits_timed_out: u64,
}

/// The destination-side copy planner (see the module docs).
#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    presence: PresenceBitmap,
    state: Vec<BlockState>,
    demand_queue: VecDeque<u64>,
    in_flight: HashMap<u64, InFlight>,
    bg_in_flight: u32,
    demand_in_flight: u32,
    /// Moving average of the wire bytes of background arrivals per block
    /// (`None` until the first).
    bg_wire_per_block: Option<f64>,
    bg_cursor: u64,
    link_up: bool,
    background: bool,
    waiters: HashMap<WaiterId, Waiter>,
    block_waiters: HashMap<u64, Vec<WaiterId>>,
    next_waiter: u64,
    events: VecDeque<Event>,
    all_local_reported: bool,
    stats: PlannerStats,
}

impl Planner {
    /// A planner resuming from `presence` (empty for a fresh copy). The link
    /// starts up.
    pub fn new(presence: PresenceBitmap, config: PlannerConfig) -> Self {
        let n = presence.geometry().block_count() as usize;
        let mut p = Planner {
            config: PlannerConfig {
                window_blocks: config.window_blocks.max(1),
                max_window_blocks: config.max_window_blocks.max(config.window_blocks.max(1)),
                demand_window_blocks: config.demand_window_blocks.max(1),
                max_request_blocks: config.max_request_blocks.max(1),
                ..config
            },
            presence,
            state: vec![BlockState::Idle; n],
            demand_queue: VecDeque::new(),
            in_flight: HashMap::new(),
            bg_in_flight: 0,
            demand_in_flight: 0,
            bg_wire_per_block: None,
            bg_cursor: 0,
            link_up: true,
            background: true,
            waiters: HashMap::new(),
            block_waiters: HashMap::new(),
            next_waiter: 0,
            events: VecDeque::new(),
            all_local_reported: false,
            stats: PlannerStats::default(),
        };
        p.check_all_local();
        p
    }

    /// The disk geometry.
    pub fn geometry(&self) -> Geometry {
        self.presence.geometry()
    }

    /// The presence bitmap (snapshot it to persist).
    pub fn presence(&self) -> &PresenceBitmap {
        &self.presence
    }

    /// The effective configuration.
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> PlannerStats {
        self.stats
    }

    /// Whether every block is local.
    pub fn is_all_local(&self) -> bool {
        self.presence.is_complete()
    }

    /// Blocks currently requested and not yet arrived.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the link is up (as last reported).
    pub fn is_link_up(&self) -> bool {
        self.link_up
    }

    /// A guest read of `offset..offset+len`: ready, or wait for its missing
    /// blocks, which are queued on demand.
    pub fn guest_read(
        &mut self,
        now: Instant,
        offset: u64,
        len: u64,
    ) -> Result<IoPlan, StorageError> {
        self.geometry().check_range(offset, len)?;
        let missing: Vec<u64> = self
            .geometry()
            .blocks_touching(offset, len)
            .filter(|&b| !self.presence.is_present(b))
            .collect();
        Ok(self.wait_for(now, missing))
    }

    /// A guest write of `offset..offset+len`. Blocks it covers whole need
    /// nothing; a partly covered missing block must be fetched first (see
    /// module docs). On `Ready`, write the bytes locally, then call
    /// [`Planner::write_done`].
    pub fn guest_write(
        &mut self,
        now: Instant,
        offset: u64,
        len: u64,
    ) -> Result<IoPlan, StorageError> {
        let g = self.geometry();
        g.check_range(offset, len)?;
        let blocks = g.blocks_touching(offset, len);
        let mut partial = Vec::new();
        for b in [blocks.start, blocks.end.saturating_sub(1)] {
            if blocks.contains(&b)
                && !g.covers_block(offset, len, b)
                && !self.presence.is_present(b)
                && !partial.contains(&b)
            {
                partial.push(b);
            }
        }
        Ok(self.wait_for(now, partial))
    }

    /// The guest's bytes for `offset..offset+len` are in the local copy:
    /// every touched block is present from now on (write wins).
    pub fn write_done(&mut self, offset: u64, len: u64) {
        let g = self.geometry();
        if g.check_range(offset, len).is_err() {
            return;
        }
        for b in g.blocks_touching(offset, len) {
            if self.presence.is_present(b) {
                continue;
            }
            // A partly written missing block is only legal after it was
            // fetched (guest_write said Wait); if a caller skipped that, keep
            // the block missing rather than claim bytes we do not have.
            if !g.covers_block(offset, len, b) {
                tracing::warn!(
                    block = b,
                    "partial write to a missing block ignored by the planner"
                );
                continue;
            }
            self.stats.blocks_written += 1;
            self.make_present(b);
        }
    }

    /// Marks `block` present without a write or arrival, e.g. a block the
    /// source reported as a hole once the caller made it zero locally.
    pub fn mark_present(&mut self, block: u64) -> bool {
        if block >= self.geometry().block_count() || self.presence.is_present(block) {
            return false;
        }
        self.make_present(block);
        true
    }

    /// A block arrived from the source (on demand or background), having
    /// cost `wire_len` bytes on the wire.
    pub fn block_arrived(
        &mut self,
        now: Instant,
        block: u64,
        wire_len: u64,
    ) -> Result<Arrival, StorageError> {
        let count = self.geometry().block_count();
        if block >= count {
            return Err(StorageError::NoSuchBlock {
                block,
                block_count: count,
            });
        }
        let answered = self.in_flight.remove(&block).map(|f| {
            self.release_slot(f.priority);
            (f.priority, now.saturating_duration_since(f.sent_at))
        });
        if let Some((Priority::Background, _)) = answered {
            self.observe_background_cost(wire_len);
        }
        if self.presence.is_present(block) || self.state[block as usize] == BlockState::Landing {
            self.stats.blocks_discarded += 1;
            return Ok(Arrival::Discard);
        }
        self.state[block as usize] = BlockState::Landing;
        Ok(Arrival::Store { answered })
    }

    /// The arrived block's bytes are in the local copy.
    pub fn block_stored(&mut self, block: u64) {
        if block >= self.geometry().block_count() || self.presence.is_present(block) {
            return;
        }
        self.stats.blocks_stored += 1;
        self.make_present(block);
    }

    /// Writing the arrived block locally failed: fetch it again.
    pub fn block_store_failed(&mut self, block: u64) {
        if block >= self.geometry().block_count() || self.presence.is_present(block) {
            return;
        }
        self.requeue(block, Priority::Background);
    }

    /// The link to the source went down: in-flight blocks go back to the
    /// queues and nothing is requested until [`Planner::link_up`].
    pub fn link_down(&mut self) {
        self.link_up = false;
        let mut blocks: Vec<(u64, Priority)> = self
            .in_flight
            .drain()
            .map(|(b, f)| (b, f.priority))
            .collect();
        blocks.sort_unstable_by_key(|(b, _)| *b);
        // Push on-demand ones to the front in block order.
        for &(b, p) in blocks.iter().rev() {
            self.stats.blocks_reissued += 1;
            self.requeue_front(b, p);
        }
        self.bg_in_flight = 0;
        self.demand_in_flight = 0;
    }

    /// The transport could not send `request` (no session yet, or the
    /// session just ended): the request is lost, so its blocks that are
    /// still waiting for it go back to the queues now (on-demand ones, and
    /// any a guest waits for, to the front of the on-demand queue) instead
    /// of waiting out `request_timeout`. They are requested again by the
    /// next `poll_fetch`; the caller should not poll again at once (the
    /// transport just said it cannot send), but on its next input.
    pub fn request_not_sent(&mut self, request: &FetchRequest) {
        let n = self.geometry().block_count();
        let end = request.blocks().end.min(n);
        for b in (request.first_block.min(end)..end).rev() {
            if self.state[b as usize] != BlockState::InFlight || self.presence.is_present(b) {
                // Arrived, landing, re-queued by a link down, or written.
                continue;
            }
            let Some(f) = self.in_flight.remove(&b) else {
                continue;
            };
            self.release_slot(f.priority);
            self.stats.blocks_reissued += 1;
            self.requeue_front(b, f.priority);
        }
    }

    /// The link is back: queued blocks are requested again by `poll_fetch`.
    pub fn link_up(&mut self) {
        self.link_up = true;
    }

    /// Turns the background copy on or off (on by default). Off, only blocks
    /// a guest request waits for are fetched: the disk stays remote-backed
    /// (`wanmig migrate --no-storage`) until it is turned on again.
    pub fn set_background(&mut self, enabled: bool) {
        self.background = enabled;
    }

    /// Whether the background copy is on.
    pub fn is_background_enabled(&self) -> bool {
        self.background
    }

    /// The next fetch request to send, if the link is up and the windows
    /// allow. Call until `None` after every input.
    pub fn poll_fetch(&mut self, now: Instant) -> Option<FetchRequest> {
        if !self.link_up {
            return None;
        }
        self.poll_demand(now).or_else(|| self.poll_background(now))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Planner::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waits = self.waiters.values().map(|w| w.deadline);
        let fetches = self
            .in_flight
            .values()
            .map(|f| f.sent_at + self.config.request_timeout);
        waits.chain(fetches).min()
    }

    /// Applies the clock: times out waiters, re-issues stale requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired: Vec<(WaiterId, Waiter)> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&id, &w)| (id, w))
            .collect();
        expired.sort_unstable_by_key(|(id, _)| *id);
        for (id, w) in expired {
            self.waiters.remove(&id);
            self.stats.waits_timed_out += 1;
            self.events.push_back(Event::TimedOut {
                waiter: id,
                missing: w.missing,
                waited: now.saturating_duration_since(w.started),
            });
        }
        let mut stale: Vec<(u64, Priority)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.sent_at + self.config.request_timeout <= now)
            .map(|(&b, f)| (b, f.priority))
            .collect();
        stale.sort_unstable_by_key(|(b, _)| *b);
        for &(b, p) in stale.iter().rev() {
            self.in_flight.remove(&b);
            self.release_slot(p);
            self.stats.blocks_reissued += 1;
            self.requeue_front(b, p);
        }
    }

    /// Forgets a waiter (its guest request was abandoned).
    pub fn cancel_wait(&mut self, id: WaiterId) {
        self.waiters.remove(&id);
    }

    fn wait_for(&mut self, now: Instant, missing: Vec<u64>) -> IoPlan {
        if missing.is_empty() {
            return IoPlan::Ready;
        }
        let id = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        self.waiters.insert(
            id,
            Waiter {
                missing: missing.len(),
                started: now,
                deadline: now + self.config.read_timeout,
            },
        );
        for b in missing {
            self.block_waiters.entry(b).or_default().push(id);
            let promote = match self.state[b as usize] {
                BlockState::Idle => true,
                // Requested by the background copy: that copy may sit behind
                // a window's worth of background bytes at the bottleneck, so
                // ask again on demand (a duplicate arrival is discarded).
                BlockState::InFlight => self
                    .in_flight
                    .get(&b)
                    .is_some_and(|f| f.priority == Priority::Background),
                BlockState::Queued | BlockState::Landing => false,
            };
            if promote {
                self.state[b as usize] = BlockState::Queued;
                self.demand_queue.push_back(b);
            }
        }
        IoPlan::Wait(id)
    }

    fn make_present(&mut self, block: u64) {
        self.presence.set(block);
        self.state[block as usize] = BlockState::Idle;
        if let Some(ids) = self.block_waiters.remove(&block) {
            for id in ids {
                if let Some(w) = self.waiters.get_mut(&id) {
                    w.missing -= 1;
                    if w.missing == 0 {
                        self.waiters.remove(&id);
                        self.events.push_back(Event::Ready(id));
                    }
                }
            }
        }
        self.check_all_local();
    }

    fn check_all_local(&mut self) {
        if !self.all_local_reported && self.presence.is_complete() {
            self.all_local_reported = true;
            self.events.push_back(Event::AllLocal);
        }
    }

    /// Folds one background arrival's wire cost into the average the
    /// window is sized by (over about the last 32 arrivals: quick to follow
    /// a change of content, steady within it).
    fn observe_background_cost(&mut self, wire_len: u64) {
        let cost = wire_len as f64;
        self.bg_wire_per_block = Some(match self.bg_wire_per_block {
            None => cost,
            Some(avg) => avg + (cost - avg) / 32.0,
        });
    }

    /// Background blocks that may be in flight now (see the module docs).
    pub fn background_window(&self) -> u32 {
        let floor = self.config.window_blocks;
        match self.bg_wire_per_block {
            None => floor,
            Some(per_block) => {
                // A block costs at least its frame header on the wire; the
                // bound keeps the division meaningful. `as` saturates.
                let fit = self.config.window_wire_bytes as f64 / per_block.max(16.0);
                (fit as u32).clamp(floor, self.config.max_window_blocks)
            }
        }
    }

    fn release_slot(&mut self, p: Priority) {
        match p {
            Priority::OnDemand => self.demand_in_flight = self.demand_in_flight.saturating_sub(1),
            Priority::Background => self.bg_in_flight = self.bg_in_flight.saturating_sub(1),
        }
    }

    /// Puts a not-present block back: to the front of the on-demand queue if
    /// it was on demand or a guest waits for it, else to the background scan.
    fn requeue_front(&mut self, block: u64, p: Priority) {
        if self.state[block as usize] == BlockState::Queued {
            // Promoted while in flight: already in the on-demand queue.
            return;
        }
        if p == Priority::OnDemand || self.block_waiters.contains_key(&block) {
            self.state[block as usize] = BlockState::Queued;
            self.demand_queue.push_front(block);
        } else {
            self.state[block as usize] = BlockState::Idle;
            self.bg_cursor = self.bg_cursor.min(block);
        }
    }

    fn requeue(&mut self, block: u64, p: Priority) {
        if self.state[block as usize] == BlockState::Queued {
            return;
        }
        if p == Priority::OnDemand || self.block_waiters.contains_key(&block) {
            self.state[block as usize] = BlockState::Queued;
            self.demand_queue.push_back(block);
        } else {
            self.state[block as usize] = BlockState::Idle;
            self.bg_cursor = self.bg_cursor.min(block);
        }
    }

    fn send(&mut self, now: Instant, first: u64, count: u32, priority: Priority) -> FetchRequest {
        for b in first..first + u64::from(count) {
            self.state[b as usize] = BlockState::InFlight;
            let entry = InFlight {
                priority,
                sent_at: now,
            };
            if let Some(old) = self.in_flight.insert(b, entry) {
                // A promoted background block: its slot moves to on-demand.
                self.release_slot(old.priority);
            }
        }
        match priority {
            Priority::OnDemand => {
                self.demand_in_flight += count;
                self.stats.demand_blocks_requested += u64::from(count);
            }
            Priority::Background => {
                self.bg_in_flight += count;
                self.stats.background_blocks_requested += u64::from(count);
            }
        }
        FetchRequest {
            first_block: first,
            count,
            priority,
        }
    }

    fn poll_demand(&mut self, now: Instant) -> Option<FetchRequest> {
        let budget = self
            .config
            .demand_window_blocks
            .checked_sub(self.demand_in_flight)?;
        if budget == 0 {
            return None;
        }
        let first = loop {
            let b = self.demand_queue.pop_front()?;
            if self.state[b as usize] == BlockState::Queued && !self.presence.is_present(b) {
                break b;
            }
        };
        let limit = budget.min(self.config.max_request_blocks);
        let mut count = 1u32;
        while count < limit {
            let next = first + u64::from(count);
            match self.demand_queue.front() {
                Some(&b) if b == next && self.state[b as usize] == BlockState::Queued => {
                    self.demand_queue.pop_front();
                    count += 1;
                }
                _ => break,
            }
        }
        Some(self.send(now, first, count, Priority::OnDemand))
    }

    fn poll_background(&mut self, now: Instant) -> Option<FetchRequest> {
        if !self.background {
            return None;
        }
        let budget = self.background_window().checked_sub(self.bg_in_flight)?;
        if budget == 0 {
            return None;
        }
        let mut from = self.bg_cursor;
        let first = loop {
            let b = self.presence.next_missing(from)?;
            if self.state[b as usize] == BlockState::Idle {
                break b;
            }
            from = b + 1;
        };
        let limit = budget.min(self.config.max_request_blocks);
        let mut count = 1u32;
        let n = self.geometry().block_count();
        while count < limit {
            let next = first + u64::from(count);
            if next < n
                && !self.presence.is_present(next)
                && self.state[next as usize] == BlockState::Idle
            {
                count += 1;
            } else {
                break;
            }
        }
        self.bg_cursor = first + u64::from(count);
        Some(self.send(now, first, count, Priority::Background))
    }
}

#[cfg(test)]
mod tests;
