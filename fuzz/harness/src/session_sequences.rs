//! Target `session_sequences`: hostile sequences of frames and messages
//! into the two sans-IO relay cores of a gateway-to-gateway migration,
//! [`SourceSession`] and [`DestSession`], wired to each other.
//!
//! Input: whether the inventory the source is given is true (the
//! destination's store holds the pages it lists) or a lie (every reference
//! NACKs), then operations: the source shim sends pages (zero, stored,
//! near-stored or fresh content, at any frame number) or another message;
//! the destination shim sends a message; a queued frame is delivered,
//! dropped, duplicated or delivered with a byte flipped, either way; raw
//! bytes arrive on either side's stream. A side that returns an error is
//! where the relay aborts, so the run ends there.
//!
//! Checked, besides "no panic":
//! - the destination passes its shim only pages inside the VM's memory,
//!   and holds the source's `Complete` back while NACKed pages are
//!   outstanding;
//! - its acks never exceed the batch bytes it received, and the source's
//!   acknowledged counts never run backwards or past what it sent;
//! - while the channel has been honest (every frame delivered once, in
//!   order, unchanged; no raw bytes; source pages inside memory), once both
//!   queues drain and nothing is pending, the destination shim's memory —
//!   zeroes plus every `Pages` it was given — equals the source's, page for
//!   page: the codec, the NACK fills and the zero-page skipping lose
//!   nothing.

use std::collections::{HashMap, VecDeque};

use wanmig_codec::{
    CodecError, ContentStore, DecoderConfig, EncoderConfig, Fingerprint, Inventory, PageBytes,
    PAGE_SIZE,
};
use wanmig_migration::machine::VmConfig;
use wanmig_migration::session::frame::{self, Frame};
use wanmig_migration::session::{DestSession, SourceSession};
use wanmig_migration::shim::{self, Message, PageBatch};

use crate::input::{Input, Script};

/// The VM's memory in pages: small, so frame numbers past it are easy to
/// reach.
const MEMORY_PAGES: u64 = 48;
/// Distinct stored contents.
const STORED: u64 = 6;

const OP_PAGES: u8 = 0;
const OP_SOURCE_SHIM: u8 = 1;
const OP_DEST_SHIM: u8 = 2;
const OP_TO_DEST: u8 = 3;
const OP_TO_SOURCE: u8 = 4;
const OP_RAW_TO_DEST: u8 = 5;
const OP_RAW_TO_SOURCE: u8 = 6;
const OPS: u8 = 7;

/// What happens to a delivered frame.
const DELIVER: u8 = 0;
const DROP: u8 = 1;
const DUPLICATE: u8 = 2;
const FLIP: u8 = 3;
const FATES: u8 = 4;

/// The stored contents and their fingerprints, made once per process.
fn stored() -> &'static [(Fingerprint, Box<PageBytes>)] {
    static PAGES: std::sync::OnceLock<Vec<(Fingerprint, Box<PageBytes>)>> =
        std::sync::OnceLock::new();
    PAGES.get_or_init(|| {
        (0..STORED)
            .map(|i| {
                // Compressible, never zero, distinct per `i`.
                let mut p = Box::new([0u8; PAGE_SIZE]);
                for (j, b) in p.iter_mut().enumerate() {
                    *b = ((j as u64 * (i + 3)) >> 4) as u8 | 0x80;
                }
                (Fingerprint::of(&p), p)
            })
            .collect()
    })
}

/// The destination's page store, in memory.
#[derive(Default)]
struct MapStore(HashMap<Fingerprint, Box<PageBytes>>);

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
        assert_eq!(
            Fingerprint::of(page),
            *fp,
            "the store was given content under another fingerprint"
        );
        self.0.insert(*fp, Box::new(*page));
        Ok(())
    }
}

struct World {
    src: SourceSession,
    dst: DestSession<MapStore>,
    to_dest: VecDeque<Frame>,
    to_source: VecDeque<Frame>,
    /// Guest memory as the source shim sent it, and as the destination
    /// shim received it (absent = zeroes).
    src_mem: HashMap<u64, Box<PageBytes>>,
    dst_mem: HashMap<u64, Box<PageBytes>>,
    /// Batch bytes the destination received.
    received: u64,
    /// The source's acknowledged counts so far.
    acked: u64,
    guest_acked: u64,
    /// The source shim sent `Complete`, and the destination shim got it.
    complete_sent: bool,
    complete_passed: bool,
    honest: bool,
}

/// Why a run stops: one side failed, as a relay would abort there.
struct Aborted;

pub fn run(data: &[u8]) {
    play(data);
}

/// How far a run got: whether it ended comparing memories, how many pages
/// the destination shim was given and how many the destination NACKed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub compared: bool,
    pub pages: usize,
    pub nacked: u64,
}

fn play(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let truthful = input.bool();
    let listed: Vec<Fingerprint> = stored().iter().map(|(fp, _)| *fp).collect();
    let mut store = MapStore::default();
    if truthful {
        for (fp, p) in stored() {
            store.0.insert(*fp, p.clone());
        }
    }
    let enc = EncoderConfig {
        batch_pages: 4,
        batch_records: 16,
        cache_bytes: 64 * PAGE_SIZE,
        ..EncoderConfig::default()
    };
    let dec = DecoderConfig {
        session_cache_bytes: 16 * PAGE_SIZE,
        ..DecoderConfig::default()
    };
    let mut w = World {
        src: SourceSession::new(enc, Inventory::from_fingerprints(&listed), MEMORY_PAGES)
            .expect("the encoder config is valid"),
        dst: DestSession::new(dec, store, MEMORY_PAGES).expect("the decoder config is valid"),
        to_dest: VecDeque::new(),
        to_source: VecDeque::new(),
        src_mem: HashMap::new(),
        dst_mem: HashMap::new(),
        received: 0,
        acked: 0,
        guest_acked: 0,
        complete_sent: false,
        complete_passed: false,
        honest: true,
    };
    while !input.is_empty() {
        if w.op(&mut input).is_err() {
            return w.outcome(false);
        }
    }
    let compared = w.honest && w.drain().is_ok() && w.check_memory();
    w.outcome(compared)
}

impl World {
    fn op(&mut self, input: &mut Input) -> Result<(), Aborted> {
        match input.u8() % OPS {
            OP_PAGES => {
                let round = u32::from(input.u8() % 4);
                let n = usize::from(input.u8() % 12) + 1;
                let mut batch = PageBatch::new();
                for _ in 0..n {
                    let gfn = u64::from(input.u8());
                    if gfn >= MEMORY_PAGES {
                        self.honest = false;
                    }
                    let page = content(input);
                    batch.push(gfn, &page[..]);
                    self.src_mem.insert(gfn, page);
                }
                let frames = self.src.on_shim(Message::Pages { round, batch });
                self.to_dest.extend(frames);
                self.check_source();
            }
            OP_SOURCE_SHIM => {
                let msg = message(input);
                if matches!(msg, Message::Complete) {
                    self.complete_sent = true;
                }
                let frames = self.src.on_shim(msg);
                self.to_dest.extend(frames);
            }
            OP_DEST_SHIM => {
                let msg = message(input);
                let f = self.dst.on_shim(msg).map_err(|_| Aborted)?;
                self.to_source.push_back(f);
            }
            OP_TO_DEST => {
                if let Some(f) = self.fate(input, true) {
                    self.deliver_to_dest(f)?;
                }
            }
            OP_TO_SOURCE => {
                if let Some(f) = self.fate(input, false) {
                    self.deliver_to_source(f)?;
                }
            }
            op @ (OP_RAW_TO_DEST | OP_RAW_TO_SOURCE) => {
                self.honest = false;
                let mut d = frame::Decoder::new();
                d.feed(input.blob());
                while let Some(f) = d.next().map_err(|_| Aborted)? {
                    if op == OP_RAW_TO_DEST {
                        self.deliver_to_dest(f)?;
                    } else {
                        self.deliver_to_source(f)?;
                    }
                }
            }
            _ => unreachable!("ops are taken modulo OPS"),
        }
        Ok(())
    }

    /// Takes the next frame off a queue and decides its fate: delivered
    /// (returned), dropped, duplicated (returned and left queued) or
    /// returned with one byte of its encoding flipped.
    fn fate(&mut self, input: &mut Input, to_dest: bool) -> Option<Frame> {
        let fate = input.u8() % FATES;
        let at = usize::from(input.u16());
        let queue = if to_dest {
            &mut self.to_dest
        } else {
            &mut self.to_source
        };
        let f = queue.pop_front()?;
        match fate {
            DELIVER => Some(f),
            DROP => {
                self.honest = false;
                None
            }
            DUPLICATE => {
                self.honest = false;
                queue.push_front(f.clone());
                Some(f)
            }
            FLIP => {
                self.honest = false;
                let mut bytes = frame::to_bytes(&f);
                let i = at % bytes.len();
                bytes[i] ^= 1 << (at % 8);
                let mut d = frame::Decoder::new();
                d.feed(&bytes);
                d.next().ok().flatten()
            }
            _ => unreachable!("fates are taken modulo FATES"),
        }
    }

    fn deliver_to_dest(&mut self, f: Frame) -> Result<(), Aborted> {
        if let Frame::Batch { batch, .. } = &f {
            self.received += batch.len() as u64;
        }
        let step = self.dst.on_peer(f).map_err(|_| Aborted)?;
        for out in &step.to_peer {
            if let Frame::Ack(n) = out {
                assert!(
                    *n <= self.received,
                    "the destination acked {n} batch bytes of {}",
                    self.received
                );
            }
        }
        self.to_source.extend(step.to_peer);
        for msg in step.to_shim {
            match msg {
                Message::Pages { batch, .. } => {
                    for (gfn, page) in batch.pages() {
                        assert!(
                            gfn < MEMORY_PAGES,
                            "the destination passed page {gfn} beyond the VM's memory"
                        );
                        let page: &PageBytes = page.try_into().expect("pages are 4 KiB");
                        self.dst_mem.insert(gfn, Box::new(*page));
                    }
                }
                Message::Complete => {
                    assert_eq!(
                        self.dst.pending(),
                        0,
                        "Complete passed with NACKed pages outstanding"
                    );
                    self.complete_passed = true;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn deliver_to_source(&mut self, f: Frame) -> Result<(), Aborted> {
        let step = self.src.on_peer(f).map_err(|_| Aborted)?;
        self.to_dest.extend(step.to_peer);
        self.check_source();
        Ok(())
    }

    fn check_source(&mut self) {
        let (acked, guest_acked) = (self.src.acked(), self.src.guest_acked());
        assert!(
            acked >= self.acked,
            "the source's acked bytes ran backwards"
        );
        assert!(
            guest_acked >= self.guest_acked,
            "the source's acked guest bytes ran backwards"
        );
        // Both subtract acknowledged from sent; they must not underflow.
        let _ = (self.src.in_flight(), self.src.guest_in_flight());
        self.acked = acked;
        self.guest_acked = guest_acked;
    }

    /// Delivers everything queued, both ways, until both queues are empty.
    fn drain(&mut self) -> Result<(), Aborted> {
        loop {
            if let Some(f) = self.to_dest.pop_front() {
                self.deliver_to_dest(f)?;
            } else if let Some(f) = self.to_source.pop_front() {
                self.deliver_to_source(f)?;
            } else {
                return Ok(());
            }
        }
    }

    fn outcome(&self, compared: bool) -> Outcome {
        Outcome {
            compared,
            pages: self.dst_mem.len(),
            nacked: self.src.progress().nacked,
        }
    }

    /// Compares the two shims' memories once nothing is pending; returns
    /// whether it did.
    fn check_memory(&self) -> bool {
        if self.dst.pending() != 0 {
            return false;
        }
        if self.complete_sent {
            assert!(
                self.complete_passed,
                "Complete was held although nothing is pending"
            );
        }
        for gfn in 0..MEMORY_PAGES {
            let zero = [0u8; PAGE_SIZE];
            let want = self.src_mem.get(&gfn).map_or(&zero, |p| &**p);
            let got = self.dst_mem.get(&gfn).map_or(&zero, |p| &**p);
            assert!(
                want == got,
                "page {gfn} differs between the source and the destination shim"
            );
        }
        true
    }
}

/// Page content from the input: zeroes, a stored page, a stored page with
/// a few bytes changed (a delta candidate), or bytes of the input.
fn content(input: &mut Input) -> Box<PageBytes> {
    let kind = input.u8();
    let mut p = Box::new([0u8; PAGE_SIZE]);
    match kind % 4 {
        0 => {}
        1 => *p = *stored()[usize::from(kind / 4) % stored().len()].1,
        2 => {
            *p = *stored()[usize::from(kind / 4) % stored().len()].1;
            let at = usize::from(input.u16()) % PAGE_SIZE;
            p[at] ^= input.u8() | 1;
        }
        _ => {
            let b = input.bytes(8);
            for (i, x) in p.iter_mut().enumerate() {
                *x = b.get(i % 8).copied().unwrap_or(0) ^ (i / 8) as u8;
            }
        }
    }
    p
}

/// A shim message other than `Pages` (those travel as codec batches).
fn message(input: &mut Input) -> Message {
    match input.u8() % 9 {
        0 => Message::Hello {
            version: shim::SHIM.current,
            machine: VmConfig {
                mem_size: MEMORY_PAGES * PAGE_SIZE as u64,
                ..VmConfig::default()
            }
            .machine(),
        },
        1 => Message::HelloAck,
        2 => Message::State(input.blob().to_vec()),
        3 => Message::Complete,
        4 => Message::Digest { digest: [3; 32] },
        5 => Message::Confirmed { digest: [3; 32] },
        6 => Message::Handover,
        7 => Message::Resumed,
        _ => Message::Abort("given up".into()),
    }
}

/// Seeds: honest migrations (with a true and a lying inventory, so the
/// second NACKs and fills), and one of each hostile fate.
pub fn seeds() -> Vec<Vec<u8>> {
    fn pages(s: &mut Script, round: u8, pages: &[(u8, u8)]) {
        s.u8(OP_PAGES).u8(round).u8(pages.len() as u8 - 1);
        for &(gfn, kind) in pages {
            s.u8(gfn).u8(kind);
            match kind % 4 {
                2 => {
                    s.u16(100).u8(7);
                }
                3 => {
                    s.bytes(&[1, 2, 3, 4, 5, 6, 7, 8]);
                }
                _ => {}
            }
        }
    }
    fn migration(truthful: bool, fate: u8) -> Vec<u8> {
        let mut s = Script::new();
        s.bool(truthful);
        s.u8(OP_SOURCE_SHIM).u8(0);
        s.u8(OP_TO_DEST).u8(DELIVER).u16(0);
        s.u8(OP_DEST_SHIM).u8(1);
        s.u8(OP_TO_SOURCE).u8(DELIVER).u16(0);
        pages(&mut s, 0, &[(0, 1), (1, 5), (2, 0), (3, 2), (4, 3), (5, 9)]);
        pages(&mut s, 0, &[(6, 13), (7, 17), (8, 3), (47, 6)]);
        for _ in 0..4 {
            s.u8(OP_TO_DEST).u8(fate).u16(77);
        }
        pages(&mut s, 1, &[(1, 0), (3, 6)]);
        s.u8(OP_SOURCE_SHIM).u8(2).blob(b"{\"vcpu\":{}}");
        s.u8(OP_SOURCE_SHIM).u8(3);
        for _ in 0..8 {
            s.u8(OP_TO_DEST).u8(DELIVER).u16(0);
            s.u8(OP_TO_SOURCE).u8(DELIVER).u16(0);
        }
        s.u8(OP_DEST_SHIM).u8(5);
        s.u8(OP_SOURCE_SHIM).u8(6);
        s.u8(OP_DEST_SHIM).u8(7);
        s.finish()
    }
    let mut out = vec![
        migration(true, DELIVER),
        migration(false, DELIVER),
        migration(false, DROP),
        migration(true, DUPLICATE),
        migration(false, FLIP),
    ];
    // Raw frames either way: an ack past what was sent, a NACK for content
    // the source never sent, a refusal mid-migration.
    for (to, f) in [
        (OP_RAW_TO_SOURCE, Frame::Ack(1 << 40)),
        (
            OP_RAW_TO_SOURCE,
            Frame::Nack(vec![(wanmig_codec::Gfn(3), stored()[0].0)]),
        ),
        (OP_RAW_TO_DEST, Frame::Refuse("no".into())),
    ] {
        let mut s = Script::new();
        s.bool(false);
        pages(&mut s, 0, &[(0, 1), (1, 2)]);
        s.u8(to).blob(&frame::to_bytes(&f));
        out.push(s.finish());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The honest seeds run a whole migration to the memory comparison;
    /// the one with a lying inventory gets there through NACKs and fills.
    #[test]
    fn honest_seeds_reach_the_memory_comparison() {
        let seeds = seeds();
        let truthful = play(&seeds[0]);
        assert!(truthful.compared, "{truthful:?}");
        assert!(truthful.pages >= 8, "{truthful:?}");
        let lying = play(&seeds[1]);
        assert!(lying.compared, "{lying:?}");
        assert!(lying.nacked > 0, "{lying:?}");
    }
}
