//! The sans-IO cores of a migration relayed between two gateways.
//!
//! [`SourceSession`] sits between the source shim and the WAN: it turns the
//! shim's `Pages` messages into codec batches (zero pages, references to
//! content the destination holds, deltas, zstd), passes the shim's other
//! messages through, and answers the destination's NACKs from the encoder's
//! copy of what it last sent. [`DestSession`] does the reverse at the
//! destination: it decodes batches in order into plain `Pages` for the
//! destination shim, NACKs what it cannot resolve, and holds the source's
//! `Complete` back until every NACKed page has been filled, so the shim's
//! digest check sees complete memory.
//!
//! Both track the migration's [`Phase`] from the shim messages that pass
//! through them; the relay uses it to say what happened when a link dies.
//! The source counts pre-copy [`Progress`] by the round number each
//! `Pages` message carries, and each `Batch` frame carries it on to the
//! destination, whose `Pages` name the same round. No sockets, no clocks:
//! the relay passes messages and frames in and writes out what comes back.
//! The frames themselves are in [`frame`].

pub mod frame;

use crate::policy::window::{MIN_GUEST_WINDOW, MIN_WINDOW};
use crate::policy::CodecSetting;
use serde::{Deserialize, Serialize};
use wanmig_codec::{
    CodecError, ContentStore, Decoder, DecoderConfig, DecoderStats, Encoder, EncoderConfig,
    EncoderStats, Gfn, Inventory, PageBytes, PerKind,
};

use crate::shim::{self, Message, PageBatch, ProtocolError, BATCH_PAGES};
use frame::{Frame, WireError};

/// Bytes of one guest page.
const PAGE_BYTES: u64 = 4096;
/// A page of zeroes, to compare decoded pages against.
const ZERO_PAGE: PageBytes = [0; 4096];

/// How far a migration got, as seen by a gateway relaying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Session opened, waiting for the shims' hello.
    Opening,
    /// Pre-copy rounds: pages are flowing.
    Copying,
    /// The VM state went out (the source VM is paused).
    StateSent,
    /// The source sent `Complete`; waiting for the destination's check.
    Completing,
    /// The destination holds and has applied complete state.
    Confirmed,
    /// The source released the VM; the destination may run it.
    HandedOver,
    /// The destination runs the VM.
    Resumed,
    /// One side aborted; the VM stays at the source.
    Aborted,
}

impl Phase {
    /// Whether the source has given the VM up (the destination may run it).
    pub fn past_handover(self) -> bool {
        matches!(self, Phase::HandedOver | Phase::Resumed)
    }

    fn after(self, msg: &Message) -> Phase {
        match msg {
            Message::Hello { .. } | Message::HelloAck | Message::Pages { .. } => {
                if self == Phase::Opening {
                    Phase::Copying
                } else {
                    self
                }
            }
            Message::State(_) => Phase::StateSent,
            Message::Complete => Phase::Completing,
            // Follows `Complete`, possibly after the destination confirmed.
            Message::Digest { .. } => self,
            Message::Confirmed { .. } => Phase::Confirmed,
            Message::Handover => Phase::HandedOver,
            Message::Resumed => Phase::Resumed,
            Message::Abort(_) => {
                if self.past_handover() {
                    self
                } else {
                    Phase::Aborted
                }
            }
        }
    }
}

/// Errors of a relayed session: the relay aborts the migration with them.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("page codec: {0}")]
    Codec(#[from] CodecError),
    #[error("shim protocol frame from the peer gateway: {0}")]
    Shim(#[from] ProtocolError),
    #[error("protocol violation by the peer gateway: {0}")]
    Unexpected(String),
    #[error("the destination asked again for {0} pages the source gateway no longer holds; raise [migration] encoder cache_bytes above the VM's memory size")]
    Refetch(usize),
}

/// Encodes one shim message as a `Shim` frame.
pub fn shim_frame(msg: &Message) -> Frame {
    let mut v = Vec::new();
    shim::encode(msg, &mut v);
    Frame::Shim(v)
}

/// Decodes a `Shim` frame's payload: exactly one shim message, never pages
/// (pages travel as codec batches).
pub fn parse_shim(bytes: &[u8]) -> Result<Message, SessionError> {
    let mut d = shim::Decoder::new();
    d.feed(bytes);
    let msg = d
        .next()?
        .ok_or_else(|| SessionError::Unexpected("a truncated shim frame".into()))?;
    if d.buffered() != 0 {
        return Err(SessionError::Unexpected(format!(
            "{} bytes after the shim frame",
            d.buffered()
        )));
    }
    if let Message::Pages { .. } = msg {
        return Err(SessionError::Unexpected(
            "plain pages in a shim frame (pages travel as codec batches)".into(),
        ));
    }
    Ok(msg)
}

/// What a relay does after one input.
#[derive(Debug, Default)]
pub struct Step {
    /// Frames for the peer gateway, in order.
    pub to_peer: Vec<Frame>,
    /// Messages for the local shim, in order.
    pub to_shim: Vec<Message>,
}

/// Pre-copy progress as the source gateway sees it. The round is the one
/// the shim's `Pages` messages name, not a guess from the page order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Guest memory in pages.
    pub memory_pages: u64,
    /// Current round (0 = all of memory).
    pub round: u32,
    /// Pages relayed in the current round.
    pub round_pages: u64,
    /// Pages relayed in the previous round (what was dirty after the one
    /// before).
    pub last_round_pages: u64,
    /// All pages relayed (re-sent pages count each time).
    pub pages: u64,
    /// Page bytes before reduction.
    pub bytes_in: u64,
    /// Batch bytes on the WAN.
    pub bytes_out: u64,
    /// NACKed pages answered.
    pub nacked: u64,
    /// Pages by what the encoder made of them.
    #[serde(default)]
    pub by_kind: PerKind,
    /// The compression level in force (zstd level; -8 is LZ4), as the
    /// level controller set it.
    #[serde(default)]
    pub level: i32,
    /// Whether long-distance matching is on.
    #[serde(default)]
    pub long_distance: bool,
}

impl Progress {
    /// Page bytes in per wire byte out (1.0 before anything was sent).
    pub fn reduction_ratio(&self) -> f64 {
        if self.bytes_out == 0 {
            1.0
        } else {
            self.bytes_in as f64 / self.bytes_out as f64
        }
    }

    /// `pages` pages of round `round` were relayed. A round that sent
    /// nothing (no page was dirty) leaves the previous round at 0 pages.
    fn on_pages(&mut self, round: u32, pages: u64) {
        if round != self.round {
            self.last_round_pages = if self.round.checked_add(1) == Some(round) {
                self.round_pages
            } else {
                0
            };
            self.round = round;
            self.round_pages = 0;
        }
        self.round_pages += pages;
        self.pages += pages;
    }

    fn absorb(&mut self, s: &EncoderStats) {
        self.bytes_in = s.bytes_in;
        self.bytes_out = s.bytes_out;
        self.by_kind = s.by_kind();
    }
}

/// The destination acknowledges batch bytes at least this often.
pub const ACK_EVERY: u64 = 128 << 10;
/// ... and at least every this many pages received (so a stream of
/// references, a few bytes a page, still gets acked well inside the guest
/// window: see [`MIN_GUEST_WINDOW`]).
pub const ACK_EVERY_PAGES: u64 = 1024;
// The source relay's smallest windows must exceed what the destination
// leaves unacknowledged, or the source would wait for an ack that never
// comes: ACK_EVERY batch bytes, and ACK_EVERY_PAGES plus one shim message
// of BATCH_PAGES pages.
const _: () = assert!(MIN_GUEST_WINDOW > 2 * (ACK_EVERY_PAGES + BATCH_PAGES as u64) * PAGE_BYTES);
const _: () = assert!(MIN_WINDOW > 2 * ACK_EVERY);

/// The source gateway's side of one migration.
///
/// Its encoder's level and long-distance matching are the relay's to set
/// ([`SourceSession::apply_codec`]), as the migration policy decides.
pub struct SourceSession {
    encoder: Encoder,
    phase: Phase,
    progress: Progress,
    /// Batch bytes sent and acknowledged.
    batch_sent: u64,
    batch_acked: u64,
    /// Guest pages sent and acknowledged (a page counts as acknowledged
    /// once every batch byte of the shim message that carried it is).
    pages_sent: u64,
    pages_acked: u64,
    /// (batch bytes sent, pages sent) after each shim `Pages` message not
    /// yet fully acknowledged.
    page_marks: std::collections::VecDeque<(u64, u64)>,
}

impl SourceSession {
    /// A session whose destination reported holding `inventory`.
    pub fn new(
        cfg: EncoderConfig,
        inventory: Inventory,
        memory_pages: u64,
    ) -> Result<Self, SessionError> {
        let encoder = Encoder::new(cfg, inventory)?;
        Ok(SourceSession {
            progress: Progress {
                memory_pages,
                level: encoder.level(),
                long_distance: encoder.long_distance().is_some(),
                ..Progress::default()
            },
            encoder,
            phase: Phase::Opening,
            batch_sent: 0,
            batch_acked: 0,
            pages_sent: 0,
            pages_acked: 0,
            page_marks: Default::default(),
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn encoder_stats(&self) -> EncoderStats {
        self.encoder.stats()
    }

    /// Batch bytes sent and not yet acknowledged by the destination.
    pub fn in_flight(&self) -> u64 {
        self.batch_sent - self.batch_acked
    }

    /// Batch bytes the destination acknowledged.
    pub fn acked(&self) -> u64 {
        self.batch_acked
    }

    /// Guest bytes (pages × 4 KiB) sent and not yet acknowledged.
    pub fn guest_in_flight(&self) -> u64 {
        (self.pages_sent - self.pages_acked) * PAGE_BYTES
    }

    /// Guest bytes the destination acknowledged.
    pub fn guest_acked(&self) -> u64 {
        self.pages_acked * PAGE_BYTES
    }

    fn count_sent(&mut self, frames: &[Frame]) {
        for f in frames {
            if let Frame::Batch { batch, .. } = f {
                self.batch_sent += batch.len() as u64;
            }
        }
    }

    /// The compression level in force.
    pub fn level(&self) -> i32 {
        self.encoder.level()
    }

    /// The codec settings in force.
    pub fn codec_setting(&self) -> CodecSetting {
        CodecSetting {
            level: self.encoder.level(),
            long_distance: self.encoder.long_distance(),
        }
    }

    /// Applies `setting` from the next batch on; returns the level in
    /// force.
    pub fn apply_codec(&mut self, setting: CodecSetting) -> Result<i32, SessionError> {
        if setting.level != self.encoder.level() {
            self.encoder.set_level(setting.level)?;
        }
        if setting.long_distance != self.encoder.long_distance() {
            self.encoder.set_long_distance(setting.long_distance)?;
        }
        self.progress.level = self.encoder.level();
        self.progress.long_distance = self.encoder.long_distance().is_some();
        Ok(self.progress.level)
    }

    /// A message from the source shim: frames for the destination gateway.
    pub fn on_shim(&mut self, msg: Message) -> Vec<Frame> {
        self.phase = self.phase.after(&msg);
        match msg {
            Message::Pages { round, batch } => {
                self.progress.on_pages(round, batch.len() as u64);
                let pages = batch.pages().filter_map(|(gfn, data)| {
                    let page: &PageBytes = data.try_into().ok()?;
                    Some((Gfn(gfn), page))
                });
                let frames: Vec<Frame> = self
                    .encoder
                    .encode(pages)
                    .into_iter()
                    .map(|batch| Frame::Batch { round, batch })
                    .collect();
                self.progress.absorb(&self.encoder.stats());
                self.count_sent(&frames);
                self.pages_sent += batch.len() as u64;
                self.page_marks
                    .push_back((self.batch_sent, self.pages_sent));
                frames
            }
            other => vec![shim_frame(&other)],
        }
    }

    /// A frame from the destination gateway.
    pub fn on_peer(&mut self, frame: Frame) -> Result<Step, SessionError> {
        let mut step = Step::default();
        match frame {
            Frame::Nack(nacks) => {
                let resp = self.encoder.on_nack(&nacks);
                if !resp.refetch.is_empty() {
                    return Err(SessionError::Refetch(resp.refetch.len()));
                }
                self.progress.nacked += nacks.len() as u64;
                let round = self.progress.round;
                step.to_peer = resp
                    .batches
                    .into_iter()
                    .map(|batch| Frame::Batch { round, batch })
                    .collect();
                self.progress.absorb(&self.encoder.stats());
                self.count_sent(&step.to_peer);
            }
            Frame::Ack(acked) => {
                if acked > self.batch_sent || acked < self.batch_acked {
                    return Err(SessionError::Unexpected(format!(
                        "an ack of {acked} batch bytes (sent {}, acknowledged {})",
                        self.batch_sent, self.batch_acked
                    )));
                }
                self.batch_acked = acked;
                while let Some(&(end, pages)) = self.page_marks.front() {
                    if end > acked {
                        break;
                    }
                    self.pages_acked = pages;
                    self.page_marks.pop_front();
                }
            }
            Frame::Shim(bytes) => {
                let msg = parse_shim(&bytes)?;
                self.phase = self.phase.after(&msg);
                step.to_shim.push(msg);
            }
            other => {
                return Err(SessionError::Unexpected(format!(
                    "{} during a migration",
                    other.name()
                )))
            }
        }
        Ok(step)
    }
}

/// The destination gateway's side of one migration.
///
/// The destination shim builds the VM in fresh, zeroed memory, so a zero
/// page for a frame it was never sent is already in place: such pages are
/// not passed on. (Each would cost the shim a write to an untouched page —
/// a page fault, ~10 µs under nested KVM — and a rehash of its digest
/// block, for nothing; 40% of the demo's memory is zero.) A zero page for
/// a frame that was sent before still goes through.
pub struct DestSession<S: ContentStore> {
    decoder: Decoder<S>,
    phase: Phase,
    /// The source's `Complete`, held while NACKed pages are outstanding.
    held_complete: Option<Message>,
    pages: u64,
    /// The pre-copy round of the latest batch.
    round: u32,
    /// Guest memory in pages; pages beyond it are a protocol violation.
    memory_pages: u64,
    /// One bit per frame: content other than the initial zeroes was passed
    /// to the shim.
    written: Vec<u64>,
    /// Zero pages not passed on (see above).
    zero_skipped: u64,
    /// Batch bytes received and acknowledged.
    batch_received: u64,
    batch_acked: u64,
    /// Pages received since the last ack.
    pages_unacked: u64,
}

impl<S: ContentStore> DestSession<S> {
    /// A session for a VM of `memory_pages` pages.
    pub fn new(cfg: DecoderConfig, store: S, memory_pages: u64) -> Result<Self, SessionError> {
        Ok(DestSession {
            decoder: Decoder::new(cfg, store)?,
            phase: Phase::Opening,
            held_complete: None,
            pages: 0,
            round: 0,
            memory_pages,
            written: vec![0; memory_pages.div_ceil(64) as usize],
            zero_skipped: 0,
            batch_received: 0,
            batch_acked: 0,
            pages_unacked: 0,
        })
    }

    /// Zero pages for never-written frames that were not passed to the shim.
    pub fn zero_skipped(&self) -> u64 {
        self.zero_skipped
    }

    /// Whether `page` for `gfn` must reach the shim; marks the frame written.
    fn needs_write(&mut self, gfn: u64, page: &PageBytes) -> Result<bool, SessionError> {
        if gfn >= self.memory_pages {
            return Err(SessionError::Unexpected(format!(
                "page {gfn} beyond the VM's {} pages",
                self.memory_pages
            )));
        }
        let (word, bit) = ((gfn / 64) as usize, 1u64 << (gfn % 64));
        if self.written[word] & bit != 0 {
            return Ok(true);
        }
        if *page == ZERO_PAGE {
            self.zero_skipped += 1;
            return Ok(false);
        }
        self.written[word] |= bit;
        Ok(true)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Pages delivered to the shim.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The pre-copy round of the latest batch (as the source shim numbered
    /// it).
    pub fn round(&self) -> u32 {
        self.round
    }

    pub fn decoder_stats(&self) -> DecoderStats {
        self.decoder.stats()
    }

    /// Pages NACKed and not yet filled.
    pub fn pending(&self) -> usize {
        self.decoder.pending_count()
    }

    /// A frame from the source gateway.
    pub fn on_peer(&mut self, frame: Frame) -> Result<Step, SessionError> {
        let mut step = Step::default();
        match frame {
            Frame::Batch {
                round,
                batch: bytes,
            } => {
                self.round = round;
                self.batch_received += bytes.len() as u64;
                let decoded = self.decoder.decode(&bytes)?;
                self.pages += decoded.pages.len() as u64;
                self.pages_unacked += decoded.pages.len() as u64;
                if self.batch_received - self.batch_acked >= ACK_EVERY
                    || self.pages_unacked >= ACK_EVERY_PAGES
                {
                    self.batch_acked = self.batch_received;
                    self.pages_unacked = 0;
                    step.to_peer.push(Frame::Ack(self.batch_received));
                }
                let mut batch = PageBatch::new();
                for (gfn, page) in &decoded.pages {
                    if !self.needs_write(gfn.0, page)? {
                        continue;
                    }
                    batch.push(gfn.0, &page[..]);
                    if batch.len() == BATCH_PAGES {
                        step.to_shim.push(Message::Pages {
                            round,
                            batch: std::mem::take(&mut batch),
                        });
                    }
                }
                if !batch.is_empty() {
                    step.to_shim.push(Message::Pages { round, batch });
                }
                if !decoded.nacks.is_empty() {
                    step.to_peer.push(Frame::Nack(decoded.nacks));
                }
                if self.decoder.pending_count() == 0 {
                    if let Some(c) = self.held_complete.take() {
                        step.to_shim.push(c);
                    }
                }
                if self.phase == Phase::Opening {
                    self.phase = Phase::Copying;
                }
            }
            Frame::Shim(bytes) => {
                let msg = parse_shim(&bytes)?;
                self.phase = self.phase.after(&msg);
                match msg {
                    Message::Complete if self.decoder.pending_count() > 0 => {
                        self.held_complete = Some(msg);
                    }
                    msg => step.to_shim.push(msg),
                }
            }
            other => {
                return Err(SessionError::Unexpected(format!(
                    "{} during a migration",
                    other.name()
                )))
            }
        }
        Ok(step)
    }

    /// A message from the destination shim: the frame for the source.
    pub fn on_shim(&mut self, msg: Message) -> Result<Frame, SessionError> {
        if let Message::Pages { .. } = msg {
            return Err(SessionError::Unexpected(
                "the destination shim sent pages".into(),
            ));
        }
        self.phase = self.phase.after(&msg);
        Ok(shim_frame(&msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Bottleneck, LevelConfig, PathEstimate, RelayConfig, RelayPolicy};
    use wanmig_codec::store::NoStore;
    use wanmig_codec::{Fingerprint, LongDistance, PageKind, PAGE_SIZE};

    /// Content store backed by a map (a site that already holds pages).
    #[derive(Default)]
    struct MapStore(std::collections::HashMap<Fingerprint, Box<PageBytes>>);
    impl ContentStore for MapStore {
        fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
            Ok(match self.0.get(fp) {
                Some(p) => {
                    *out = **p;
                    true
                }
                None => false,
            })
        }
        fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
            self.0.insert(*fp, Box::new(*page));
            Ok(())
        }
    }

    fn page(seed: u8) -> Vec<u8> {
        (0..PAGE_SIZE)
            .map(|i| seed.wrapping_mul(31).wrapping_add((i / 64) as u8))
            .collect()
    }

    fn batch(round: u32, pages: &[(u64, Vec<u8>)]) -> Message {
        let mut b = PageBatch::new();
        for (g, p) in pages {
            b.push(*g, p);
        }
        Message::Pages { round, batch: b }
    }

    /// Runs frames from source to destination and returns the destination's
    /// shim messages, answering NACKs.
    fn pump<S: ContentStore>(
        src: &mut SourceSession,
        dst: &mut DestSession<S>,
        frames: Vec<Frame>,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        let mut queue: std::collections::VecDeque<Frame> = frames.into();
        while let Some(f) = queue.pop_front() {
            let step = dst.on_peer(f).unwrap();
            out.extend(step.to_shim);
            for back in step.to_peer {
                let s = src.on_peer(back).unwrap();
                queue.extend(s.to_peer);
                assert!(s.to_shim.is_empty());
            }
        }
        out
    }

    fn pages_of(msgs: &[Message]) -> Vec<(u64, Vec<u8>)> {
        msgs.iter()
            .filter_map(|m| match m {
                Message::Pages { batch, .. } => Some(
                    batch
                        .pages()
                        .map(|(g, d)| (g, d.to_vec()))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn pages_cross_reduced_and_arrive_identical_in_order() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 64).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 64).unwrap();
        let mut round0: Vec<(u64, Vec<u8>)> = (0..64).map(|g| (g, vec![0u8; PAGE_SIZE])).collect();
        round0[3].1 = page(1);
        round0[4].1 = page(1); // duplicate content: a reference
        round0[9].1 = page(2);
        let frames = src.on_shim(batch(0, &round0));
        assert!(frames
            .iter()
            .all(|f| matches!(f, Frame::Batch { round: 0, .. })));
        let got = pump(&mut src, &mut dst, frames);
        // Applied to fresh (zeroed) memory, the delivered pages rebuild
        // round 0 exactly, in gfn order; the zero pages stayed behind.
        let mut mem = vec![vec![0u8; PAGE_SIZE]; 64];
        let delivered = pages_of(&got);
        assert!(delivered.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(delivered.len(), 3);
        for (gfn, data) in delivered {
            mem[gfn as usize] = data;
        }
        assert!(mem.iter().enumerate().all(|(g, d)| *d == round0[g].1));
        let p = src.progress().clone();
        assert_eq!((p.round, p.round_pages, p.pages), (0, 64, 64));
        assert_eq!(p.by_kind[PageKind::Zero], 61);
        assert_eq!(p.by_kind[PageKind::Ref], 1);
        assert!(p.bytes_out < p.bytes_in / 8, "{p:?}");

        // Round 1 re-sends a page with a small change: a delta.
        let mut changed = page(2);
        changed[100] ^= 0xff;
        let round1 = vec![(9u64, changed.clone())];
        let frames = src.on_shim(batch(1, &round1));
        let got = pump(&mut src, &mut dst, frames);
        assert_eq!(pages_of(&got), round1);
        assert_eq!(src.progress().round, 1);
        assert_eq!(src.progress().by_kind[PageKind::Delta], 1);
        assert_eq!(src.progress().last_round_pages, 64);
    }

    #[test]
    fn the_destination_acks_batch_bytes_and_the_source_counts_them() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 64).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 64).unwrap();
        // Incompressible pages, so the batches exceed one ack interval.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let pages: Vec<(u64, Vec<u8>)> = (0..64)
            .map(|g| {
                let data = (0..PAGE_SIZE)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                (g, data)
            })
            .collect();
        let frames = src.on_shim(batch(0, &pages));
        let sent = src.in_flight();
        assert!(sent > 2 * ACK_EVERY, "{sent}");
        assert_eq!(src.acked(), 0);
        let got = pump(&mut src, &mut dst, frames);
        assert_eq!(pages_of(&got), pages);
        assert!(src.acked() > sent - ACK_EVERY, "{} of {sent}", src.acked());
        assert!(src.in_flight() < ACK_EVERY);
        // Acks beyond what was sent, or going backwards, are violations.
        assert!(src.on_peer(Frame::Ack(sent + 1)).is_err());
        assert!(src.on_peer(Frame::Ack(0)).is_err());
    }

    #[test]
    fn acks_count_guest_pages_once_their_whole_message_is_acknowledged() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 256).unwrap();
        // Zero pages: a few wire bytes carry many guest bytes.
        let zeros: Vec<(u64, Vec<u8>)> = (0..128).map(|g| (g, vec![0u8; PAGE_SIZE])).collect();
        let first = src.on_shim(batch(0, &zeros));
        let first_end = src.in_flight();
        let second = src.on_shim(batch(0, &[(200, page(3)), (201, page(4))]));
        let end = src.in_flight();
        assert!(!first.is_empty() && !second.is_empty());
        assert!(first_end < 4096, "zero pages cost {first_end} wire bytes");
        assert_eq!(src.guest_in_flight(), 130 * 4096);
        // Part of the second message acknowledged: only the first counts.
        src.on_peer(Frame::Ack(end - 1)).unwrap();
        assert_eq!(src.guest_acked(), 128 * 4096);
        assert_eq!(src.guest_in_flight(), 2 * 4096);
        src.on_peer(Frame::Ack(end)).unwrap();
        assert_eq!(src.guest_acked(), 130 * 4096);
        assert_eq!(src.guest_in_flight(), 0);
        assert_eq!(src.in_flight(), 0);
    }

    #[test]
    fn a_stream_of_tiny_records_keeps_getting_acked_inside_the_windows() {
        // Zero pages cost a few wire bytes each: without acks by page count
        // the source would fill its guest window long before the
        // destination saw an ack's worth of batch bytes, and wait forever.
        let n = 32 * 1024u64;
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), n).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, n).unwrap();
        let mut next = 0u64;
        let mut queue = std::collections::VecDeque::new();
        loop {
            while next < n
                && src.guest_in_flight() < MIN_GUEST_WINDOW
                && src.in_flight() < MIN_WINDOW
            {
                let pages: Vec<(u64, Vec<u8>)> = (next..next + BATCH_PAGES as u64)
                    .map(|g| (g, vec![0u8; PAGE_SIZE]))
                    .collect();
                queue.extend(src.on_shim(batch(0, &pages)));
                next += BATCH_PAGES as u64;
            }
            if queue.is_empty() {
                break;
            }
            while let Some(f) = queue.pop_front() {
                for back in dst.on_peer(f).unwrap().to_peer {
                    assert!(src.on_peer(back).unwrap().to_peer.is_empty());
                }
            }
        }
        assert_eq!((next, dst.pages()), (n, n), "the source stalled");
        assert!(src.guest_in_flight() < MIN_GUEST_WINDOW / 2);
    }

    /// Text-like pages that compress (different per seed and round).
    fn text_page(seed: u64) -> Vec<u8> {
        let words = [&b"migrate "[..], b"gateway ", b"page ", b"round ", b"quic "];
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::with_capacity(PAGE_SIZE);
        while out.len() < PAGE_SIZE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % 5) as usize]);
        }
        out.truncate(PAGE_SIZE);
        out
    }

    /// A session at `cfg`, past the shim's hello, and a destination.
    fn adaptive_pair(cfg: EncoderConfig, n: u64) -> (SourceSession, DestSession<NoStore>) {
        let mut src = SourceSession::new(cfg, Inventory::new(), n).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, n).unwrap();
        let hello = Message::Hello {
            version: shim::SHIM.current,
            machine: crate::machine::VmConfig::default().machine(),
        };
        let frames = src.on_shim(hello);
        pump(&mut src, &mut dst, frames);
        (src, dst)
    }

    /// Sends round `round` of `n` text pages; checks they arrive intact.
    fn text_round(src: &mut SourceSession, dst: &mut DestSession<NoStore>, n: u64, round: u64) {
        let pages: Vec<(u64, Vec<u8>)> = (0..n).map(|g| (g, text_page(g + 1000 * round))).collect();
        let frames = src.on_shim(batch(round as u32, &pages));
        let got = pump(src, dst, frames);
        assert_eq!(pages_of(&got), pages, "round {round} arrives intact");
    }

    /// The relay's part in adapting the codec: the policy gets the
    /// encoder's statistics and the encode's CPU time...
    fn encoded(src: &SourceSession, policy: &mut RelayPolicy, cpu: std::time::Duration) {
        policy.on_encoded(src.level(), &src.encoder_stats(), cpu);
    }

    /// ...and the session applies the settings it picks. Returns the level
    /// in force.
    fn decide(src: &mut SourceSession, policy: &mut RelayPolicy, now: std::time::Instant) -> i32 {
        let live = src.phase() == Phase::Copying;
        let setting = policy.codec(now, src.codec_setting(), live);
        src.apply_codec(setting).unwrap()
    }

    /// A QUIC path estimate of `bytes_per_sec`.
    fn path(bytes_per_sec: f64) -> PathEstimate {
        PathEstimate {
            cwnd: (bytes_per_sec / 10.0) as u64,
            rtt: std::time::Duration::from_millis(100),
        }
    }

    #[test]
    fn a_link_bound_session_at_the_top_level_turns_long_distance_on() {
        let top = LevelConfig::default().max_level;
        let cfg = EncoderConfig {
            level: top,
            ..EncoderConfig::default()
        };
        let (mut src, mut dst) = adaptive_pair(cfg, 64);
        assert_eq!((src.level(), src.progress().level), (top, top));
        assert!(!src.progress().long_distance);
        let t0 = std::time::Instant::now();
        let rtt = std::time::Duration::from_millis(100);
        let mut policy = RelayPolicy::new(RelayConfig::new(rtt, top), t0).unwrap();
        // A slow link (1 MB/s) and a fast codec: spare CPU.
        policy.on_path(path(1e6));
        for i in 0..3u32 {
            text_round(&mut src, &mut dst, 64, i.into());
            let now = t0 + std::time::Duration::from_secs(i.into());
            encoded(&src, &mut policy, std::time::Duration::from_micros(50));
            decide(&mut src, &mut policy, now);
        }
        assert_eq!(policy.bottleneck(), Bottleneck::Link);
        assert_eq!(src.level(), top);
        assert!(src.progress().long_distance);
        // The long-distance stream decodes in order across later rounds.
        for i in 3..6 {
            text_round(&mut src, &mut dst, 64, i);
        }
    }

    #[test]
    fn a_codec_bound_session_steps_the_level_down_and_long_distance_off() {
        let cfg = EncoderConfig {
            level: 6,
            long_distance: Some(LongDistance::default()),
            ..EncoderConfig::default()
        };
        let (mut src, mut dst) = adaptive_pair(cfg, 64);
        assert!(src.progress().long_distance);
        let t0 = std::time::Instant::now();
        let rtt = std::time::Duration::from_millis(100);
        let mut policy = RelayPolicy::new(RelayConfig::new(rtt, 6), t0).unwrap();
        // A link far faster than the codec, whose CPU time grows with the
        // level: one step down per dwell (500 ms).
        policy.on_path(path(1e12));
        for i in 0..8u32 {
            text_round(&mut src, &mut dst, 64, i.into());
            let cost = (src.level() + 10) as u64 * 5;
            let now = t0 + std::time::Duration::from_secs(i.into());
            encoded(&src, &mut policy, std::time::Duration::from_millis(cost));
            // (The link rate reaches the controller with the first
            // decision.)
            if i > 0 {
                assert_eq!(policy.bottleneck(), Bottleneck::Cpu);
            }
            decide(&mut src, &mut policy, now);
        }
        assert!(!src.progress().long_distance);
        let low = src.level();
        assert!(low < 3, "level fell from 6 to {low}");
        assert_eq!(src.progress().level, low);
        // Paused (the state went out): the level no longer moves.
        let frames = src.on_shim(Message::State(vec![1]));
        pump(&mut src, &mut dst, frames);
        policy.on_path(path(1e3));
        for i in 8..12u32 {
            let now = t0 + std::time::Duration::from_secs(i.into());
            encoded(&src, &mut policy, std::time::Duration::from_micros(1));
            assert_eq!(decide(&mut src, &mut policy, now), low);
        }
    }

    #[test]
    fn zero_pages_for_never_written_frames_stay_behind() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 64).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 64).unwrap();
        let mut round0: Vec<(u64, Vec<u8>)> = (0..8).map(|g| (g, vec![0u8; PAGE_SIZE])).collect();
        round0[2].1 = page(9);
        round0[5].1 = page(10);
        let frames = src.on_shim(batch(0, &round0));
        let got = pump(&mut src, &mut dst, frames);
        assert_eq!(
            pages_of(&got),
            vec![(2, page(9)), (5, page(10))],
            "only content the fresh memory lacks"
        );
        assert_eq!((dst.pages(), dst.zero_skipped()), (8, 6));
        // A frame written before must be zeroed explicitly; one never
        // written stays skipped.
        let round1 = vec![(2u64, vec![0u8; PAGE_SIZE]), (3, vec![0u8; PAGE_SIZE])];
        let frames = src.on_shim(batch(1, &round1));
        let got = pump(&mut src, &mut dst, frames);
        assert_eq!(pages_of(&got), vec![(2, vec![0u8; PAGE_SIZE])]);
        // And after being zeroed, frame 2 still counts as written.
        let frames = src.on_shim(batch(2, &[(2u64, vec![0u8; PAGE_SIZE])]));
        let got = pump(&mut src, &mut dst, frames);
        assert_eq!(pages_of(&got), vec![(2, vec![0u8; PAGE_SIZE])]);
    }

    #[test]
    fn pages_beyond_the_vm_are_rejected() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 64).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 4).unwrap();
        let frames = src.on_shim(batch(0, &[(4u64, page(1))]));
        let r = dst.on_peer(frames.into_iter().next().unwrap());
        assert!(matches!(r, Err(SessionError::Unexpected(_))), "{r:?}");
    }

    #[test]
    fn unresolved_references_are_nacked_and_complete_waits_for_the_fill() {
        // The source believes the destination holds page(7) (inventory), but
        // the destination's store lost it.
        let content = page(7);
        let fp = Fingerprint::of((&content[..]).try_into().unwrap());
        let inv = Inventory::from_fingerprints([&fp]);
        let mut src = SourceSession::new(EncoderConfig::default(), inv, 8).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), MapStore::default(), 64).unwrap();

        let frames = src.on_shim(batch(0, &[(5, content.clone())]));
        let step = dst.on_peer(frames.into_iter().next().unwrap()).unwrap();
        assert!(pages_of(&step.to_shim).is_empty(), "nothing to deliver yet");
        let [Frame::Nack(n)] = &step.to_peer[..] else {
            panic!("expected one nack, got {:?}", step.to_peer)
        };
        assert_eq!(n[..], [(Gfn(5), fp)]);
        assert_eq!(dst.pending(), 1);

        // The source's Complete overtakes the fill: it must be held.
        let complete = Message::Complete;
        let step = dst
            .on_peer(src.on_shim(complete.clone()).remove(0))
            .unwrap();
        assert!(
            step.to_shim.is_empty(),
            "complete held while a page is missing"
        );
        assert_eq!(dst.phase(), Phase::Completing);

        // The NACK answer fills the page and releases Complete behind it.
        let fill = src.on_peer(step_nack(n)).unwrap();
        assert_eq!(fill.to_peer.len(), 1);
        let step = dst
            .on_peer(fill.to_peer.into_iter().next().unwrap())
            .unwrap();
        assert_eq!(pages_of(&step.to_shim), vec![(5, content)]);
        assert_eq!(step.to_shim.last(), Some(&complete));
        assert_eq!(dst.pending(), 0);
    }

    fn step_nack(n: &[(Gfn, Fingerprint)]) -> Frame {
        Frame::Nack(n.to_vec())
    }

    #[test]
    fn shim_messages_pass_through_and_track_the_phase() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 8).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 64).unwrap();
        let hello = Message::Hello {
            version: shim::SHIM.current,
            machine: crate::machine::VmConfig::default().machine(),
        };
        for (msg, src_phase) in [
            (hello, Phase::Copying),
            (Message::State(vec![1, 2, 3]), Phase::StateSent),
            (Message::Complete, Phase::Completing),
        ] {
            let f = src.on_shim(msg.clone());
            let step = dst.on_peer(f.into_iter().next().unwrap()).unwrap();
            assert_eq!(step.to_shim, vec![msg]);
            assert_eq!(src.phase(), src_phase);
            assert_eq!(dst.phase(), src_phase);
        }
        let back = dst.on_shim(Message::Confirmed { digest: [1; 32] }).unwrap();
        let step = src.on_peer(back).unwrap();
        assert_eq!(step.to_shim, vec![Message::Confirmed { digest: [1; 32] }]);
        assert_eq!(src.phase(), Phase::Confirmed);
        dst.on_peer(src.on_shim(Message::Handover).remove(0))
            .unwrap();
        assert!(src.phase().past_handover() && dst.phase().past_handover());
        // An abort after the handover does not undo it.
        src.on_shim(Message::Abort("late".into()));
        assert_eq!(src.phase(), Phase::HandedOver);
        let back = dst.on_shim(Message::Resumed).unwrap();
        src.on_peer(back).unwrap();
        assert_eq!(src.phase(), Phase::Resumed);
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 8).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 64).unwrap();
        assert!(dst
            .on_peer(Frame::Batch {
                round: 0,
                batch: vec![0xab; 64]
            })
            .is_err());
        assert!(dst.on_peer(Frame::Shim(vec![1, 2])).is_err());
        assert!(dst.on_peer(Frame::Refuse("x".into())).is_err());
        // Plain pages must not sneak through as a shim frame.
        let pages = shim_frame(&batch(0, &[(0, vec![1; PAGE_SIZE])]));
        assert!(dst.on_peer(pages).is_err());
        assert!(src
            .on_peer(Frame::Batch {
                round: 0,
                batch: vec![]
            })
            .is_err());
        assert!(src.on_peer(Frame::Shim(vec![99, 0, 0, 0, 0])).is_err());
        // Two messages in one shim frame.
        let mut two = Vec::new();
        shim::encode(&Message::Resumed, &mut two);
        shim::encode(&Message::Resumed, &mut two);
        assert!(src.on_peer(Frame::Shim(two)).is_err());
        // A NACK for content the source never sent needs no answer... but a
        // NACK for a page it no longer holds is an error, not wrong data.
        let r = src.on_peer(Frame::Nack(vec![(Gfn(3), Fingerprint([5; 32]))]));
        assert!(matches!(r, Err(SessionError::Refetch(1))), "{r:?}");
    }

    #[test]
    fn the_round_is_the_one_the_shim_names_even_when_its_first_page_is_above_the_last() {
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 64).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 64).unwrap();
        let round0: Vec<(u64, Vec<u8>)> = (0..8).map(|g| (g, page(g as u8))).collect();
        let got = {
            let frames = src.on_shim(batch(0, &round0));
            pump(&mut src, &mut dst, frames)
        };
        assert!(got
            .iter()
            .all(|m| matches!(m, Message::Pages { round: 0, .. })));
        // Round 1 dirtied only pages above round 0's last (gfn 7): page
        // order alone would take them for more of round 0.
        let round1 = vec![(10u64, page(30)), (11, page(31))];
        let frames = src.on_shim(batch(1, &round1));
        assert!(frames
            .iter()
            .all(|f| matches!(f, Frame::Batch { round: 1, .. })));
        let got = pump(&mut src, &mut dst, frames);
        let p = src.progress();
        assert_eq!(
            (p.round, p.round_pages, p.last_round_pages, p.pages),
            (1, 2, 8, 10)
        );
        assert_eq!(dst.round(), 1);
        assert_eq!(pages_of(&got), round1);
        assert!(got
            .iter()
            .all(|m| matches!(m, Message::Pages { round: 1, .. })));
        // A round with no dirty page sends nothing: the one after it
        // follows an empty round.
        let frames = src.on_shim(batch(3, &[(2, page(40))]));
        pump(&mut src, &mut dst, frames);
        let p = src.progress();
        assert_eq!((p.round, p.round_pages, p.last_round_pages), (3, 1, 0));
    }

    #[test]
    fn round_numbers_cross_from_shim_bytes_to_progress_and_on_to_the_destination_shim() {
        // The source shim's bytes, as the source relay reads them.
        let rounds: [(u32, &[u64]); 3] = [(0, &[0, 1, 2, 3]), (1, &[5, 6]), (2, &[9])];
        let mut shim_stream = Vec::new();
        for (round, gfns) in rounds {
            let pages: Vec<(u64, Vec<u8>)> = gfns.iter().map(|&g| (g, page(g as u8 + 1))).collect();
            shim::encode(&batch(round, &pages), &mut shim_stream);
        }
        let mut src = SourceSession::new(EncoderConfig::default(), Inventory::new(), 16).unwrap();
        let mut dst = DestSession::new(DecoderConfig::default(), NoStore, 16).unwrap();
        let mut from_shim = shim::Decoder::new();
        from_shim.feed(&shim_stream);
        // The WAN: session frames as bytes.
        let mut wan = Vec::new();
        let mut progress = Vec::new();
        while let Some(msg) = from_shim.next().unwrap() {
            for f in src.on_shim(msg) {
                frame::encode(&f, &mut wan);
            }
            progress.push((src.progress().round, src.progress().round_pages));
        }
        assert_eq!(progress, [(0, 4), (1, 2), (2, 1)]);
        let mut from_wan = frame::Decoder::new();
        from_wan.feed(&wan);
        let mut to_dest_shim = Vec::new();
        while let Some(f) = from_wan.next().unwrap() {
            for m in dst.on_peer(f).unwrap().to_shim {
                shim::encode(&m, &mut to_dest_shim);
            }
        }
        let mut at_dest = shim::Decoder::new();
        at_dest.feed(&to_dest_shim);
        let mut seen = Vec::new();
        while let Some(m) = at_dest.next().unwrap() {
            let Message::Pages { round, batch } = m else {
                panic!("only pages were sent")
            };
            seen.extend(batch.pages().map(|(g, _)| (round, g)));
        }
        assert_eq!(
            seen,
            [(0, 0), (0, 1), (0, 2), (0, 3), (1, 5), (1, 6), (2, 9)]
        );
    }
}
