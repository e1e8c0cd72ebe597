//! Target `codec_batch`: a sequence of batches into one
//! [`wanmig_codec::Decoder`] backed by a small real [`PageStore`] that
//! already holds a few known pages (so references and delta bases from
//! the seeds resolve, and the fuzzer can bend them).
//!
//! Checked, besides "no panic, no abort":
//! - every page the decoder delivers is what its record says: zeros for
//!   Zero, section A's bytes for Literal and Fill, section B's for Raw,
//!   and content that hashes to the named fingerprint for Ref and Delta;
//!   the batch is parsed independently (same parser, its own section
//!   decoder fed the same batches) to know what the records say;
//! - NACKed gfns are pending, a delivered gfn is not (unless NACKed later
//!   in the same batch);
//! - a rejected batch changes no page state (the pending set is unchanged);
//! - the store is only ever given content under its own fingerprint.

use std::collections::HashMap;

use wanmig_codec::compress::SectionDecoder;
use wanmig_codec::mix::{fill_page, MixSpec};
use wanmig_codec::record::{self, Record};
use wanmig_codec::{
    CodecError, ContentStore, Decoder, DecoderConfig, Encoder, EncoderConfig, Fingerprint, Gfn,
    Inventory, LongDistance, PageBytes, PageStore, PAGE_SIZE,
};

use crate::input::{Input, Script};

/// Pages the store holds before the first batch (demo-mix pages).
pub const KNOWN_PAGES: u64 = 8;
/// The store's capacity in pages: small, so inserts evict.
const STORE_PAGES: u64 = 16;
/// The session cache's capacity in pages: small, so it evicts too.
const SESSION_PAGES: usize = 32;
/// The window a long-distance stream may use here (the default).
const WINDOW_LOG: u32 = 27;

/// Known page `i`: what the destination's store holds at the start.
pub fn known_page(i: u64) -> Box<PageBytes> {
    let mut p = Box::new([0u8; PAGE_SIZE]);
    fill_page(0x5eed, i, &MixSpec::demo(), &mut p);
    p
}

/// The known pages the store starts with and their fingerprints, made once
/// per process (generating them costs more than most inputs).
fn known_pages() -> &'static [(Fingerprint, Box<PageBytes>)] {
    static PAGES: std::sync::OnceLock<Vec<(Fingerprint, Box<PageBytes>)>> =
        std::sync::OnceLock::new();
    PAGES.get_or_init(|| {
        (0..KNOWN_PAGES)
            .map(|i| {
                let p = known_page(i);
                (Fingerprint::of(&p), p)
            })
            .collect()
    })
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let store_received = input.bool();
    let dir = crate::scratch_dir();
    let mut store = PageStore::open(dir.path(), STORE_PAGES * PAGE_SIZE as u64)
        .expect("a fresh page store opens");
    for (fp, p) in known_pages() {
        store.put(fp, p).expect("the store takes a page");
    }
    let cfg = DecoderConfig {
        session_cache_bytes: SESSION_PAGES * PAGE_SIZE,
        store_received,
        max_window_log: WINDOW_LOG,
    };
    let mut dec = Decoder::new(cfg, Checked(store)).expect("decoder config is valid");
    let mut mirror = SectionDecoder::new(WINDOW_LOG).expect("section decoder");
    let mut a = Vec::new();

    while !input.is_empty() {
        let batch = input.big_blob();
        let before: HashMap<Gfn, Fingerprint> = dec.pending().collect();
        let expected =
            record::parse(batch, &mut mirror, &mut a).map(|p| (p.records, a.clone(), p.b.to_vec()));
        match dec.decode(batch) {
            Ok(out) => {
                let (records, a, b) =
                    expected.expect("the decoder took a batch the parser refuses");
                let after: HashMap<Gfn, Fingerprint> = dec.pending().collect();
                if let Some(want) = check_pages(&records, &a, &b, &out.pages, &out.nacks, &before) {
                    assert_eq!(after, want, "pending set differs from what the records say");
                }
            }
            Err(_) => {
                let after: HashMap<Gfn, Fingerprint> = dec.pending().collect();
                assert_eq!(before, after, "a rejected batch changed the pending set");
            }
        }
    }
}

/// Checks the delivered pages and NACKs against the records and the
/// pending set before the batch; returns the pending set the decoder must
/// have after it.
///
/// A Ref or Delta record either delivers a page (which must hash to the
/// named content) or NACKs exactly (gfn, content), and a Fill delivers
/// only when it answers the NACK still pending. The outputs do not say
/// which record a NACK came from when several name the same (gfn,
/// content) and the store evicted in between, so the check searches for
/// an assignment of outputs to records, depth first within a step and
/// depth budget; a batch that exhausts it (thousands of such records) is
/// decoded but not checked.
fn check_pages(
    records: &[Record],
    a: &[u8],
    b: &[u8],
    pages: &[(Gfn, Box<PageBytes>)],
    nacks: &[(Gfn, Fingerprint)],
    before: &HashMap<Gfn, Fingerprint>,
) -> Option<HashMap<Gfn, Fingerprint>> {
    // Section offsets of each record's payload.
    let mut spans = Vec::with_capacity(records.len());
    let (mut a_at, mut b_at) = (0usize, 0usize);
    for r in records {
        spans.push((a_at, b_at));
        match *r {
            Record::Literal { .. } | Record::Fill { .. } => a_at += PAGE_SIZE,
            Record::Delta { len, .. } => a_at += usize::from(len),
            Record::Raw { .. } => b_at += PAGE_SIZE,
            Record::Zero { .. } | Record::Ref { .. } => {}
        }
    }
    let mut search = Search {
        records,
        spans: &spans,
        a,
        b,
        pages,
        nacks,
        steps: 0,
        depth: 0,
    };
    let mut pending = before.clone();
    match search.walk(0, 0, 0, &mut pending) {
        Walk::Found => Some(pending),
        Walk::Mismatch(why) => panic!("decoder output does not match the batch: {why}"),
        Walk::OutOfSteps => None,
    }
}

/// The budgets of [`check_pages`]' search: steps, and open alternatives.
const SEARCH_STEPS: usize = 100_000;
const SEARCH_DEPTH: usize = 64;

enum Walk {
    Found,
    Mismatch(&'static str),
    OutOfSteps,
}

struct Search<'a> {
    records: &'a [Record],
    spans: &'a [(usize, usize)],
    a: &'a [u8],
    b: &'a [u8],
    pages: &'a [(Gfn, Box<PageBytes>)],
    nacks: &'a [(Gfn, Fingerprint)],
    steps: usize,
    depth: usize,
}

impl Search<'_> {
    /// Assigns outputs from page `pi` and NACK `ni` on to records from
    /// `i` on, updating `pending`.
    fn walk(
        &mut self,
        mut i: usize,
        mut pi: usize,
        mut ni: usize,
        pending: &mut HashMap<Gfn, Fingerprint>,
    ) -> Walk {
        while i < self.records.len() {
            self.steps += 1;
            if self.steps > SEARCH_STEPS {
                return Walk::OutOfSteps;
            }
            let (a_at, b_at) = self.spans[i];
            let page_is = |pi: usize, gfn: Gfn| self.pages.get(pi).filter(|(g, _)| *g == gfn);
            match self.records[i] {
                Record::Zero { gfn } => match page_is(pi, gfn) {
                    Some((_, p)) if p.iter().all(|&x| x == 0) => {
                        pending.remove(&gfn);
                        pi += 1;
                    }
                    _ => return Walk::Mismatch("a Zero record did not give a zero page"),
                },
                Record::Literal { gfn } | Record::Raw { gfn } => {
                    let want = match self.records[i] {
                        Record::Literal { .. } => &self.a[a_at..a_at + PAGE_SIZE],
                        _ => &self.b[b_at..b_at + PAGE_SIZE],
                    };
                    match page_is(pi, gfn) {
                        Some((_, p)) if &p[..] == want => {
                            pending.remove(&gfn);
                            pi += 1;
                        }
                        _ => {
                            return Walk::Mismatch("a Literal or Raw page differs from its section")
                        }
                    }
                }
                Record::Ref { gfn, fp: want }
                | Record::Delta {
                    gfn, target: want, ..
                } => {
                    let can_nack = self.nacks.get(ni) == Some(&(gfn, want));
                    let can_deliver =
                        page_is(pi, gfn).is_some_and(|(_, p)| Fingerprint::of(p) == want);
                    match (can_deliver, can_nack) {
                        (true, false) => {
                            pending.remove(&gfn);
                            pi += 1;
                        }
                        (false, true) => {
                            pending.insert(gfn, want);
                            ni += 1;
                        }
                        (true, true) => {
                            if self.depth == SEARCH_DEPTH {
                                return Walk::OutOfSteps;
                            }
                            let mut alt = pending.clone();
                            alt.insert(gfn, want);
                            self.depth += 1;
                            let tried = self.walk(i + 1, pi, ni + 1, &mut alt);
                            self.depth -= 1;
                            match tried {
                                Walk::Found => {
                                    *pending = alt;
                                    return Walk::Found;
                                }
                                Walk::OutOfSteps => return Walk::OutOfSteps,
                                Walk::Mismatch(_) => {
                                    pending.remove(&gfn);
                                    pi += 1;
                                }
                            }
                        }
                        (false, false) => {
                            return Walk::Mismatch(
                                "a reference neither delivered its content nor was NACKed",
                            )
                        }
                    }
                }
                Record::Fill { gfn, fp } => {
                    let want = &self.a[a_at..a_at + PAGE_SIZE];
                    if Fingerprint::of(want.try_into().expect("page")) != fp {
                        return Walk::Mismatch("a Fill with other content was accepted");
                    }
                    if pending.get(&gfn) == Some(&fp) {
                        match page_is(pi, gfn) {
                            Some((_, p)) if &p[..] == want => {
                                pending.remove(&gfn);
                                pi += 1;
                            }
                            _ => return Walk::Mismatch("a Fill answering a NACK was not applied"),
                        }
                    }
                }
            }
            i += 1;
        }
        if pi != self.pages.len() {
            return Walk::Mismatch("more pages delivered than records say");
        }
        if ni != self.nacks.len() {
            return Walk::Mismatch("more NACKs than unresolved records");
        }
        Walk::Found
    }
}

/// A store wrapper that holds the decoder to storing content under its
/// own fingerprint, and the store to returning only verified content.
struct Checked<S>(S);

impl<S: ContentStore> ContentStore for Checked<S> {
    fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
        let found = self.0.get(fp, out)?;
        if found {
            assert_eq!(
                Fingerprint::of(out),
                *fp,
                "the store returned other content"
            );
        }
        Ok(found)
    }

    fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
        assert_eq!(
            Fingerprint::of(page),
            *fp,
            "content stored under another fingerprint"
        );
        self.0.put(fp, page)
    }
}

/// One page of a seed: demo-mix page `i`, or a known page, or zeros.
fn mix_page(i: u64) -> Box<PageBytes> {
    let mut p = Box::new([0u8; PAGE_SIZE]);
    fill_page(7, i, &MixSpec::demo(), &mut p);
    p
}

/// Seeds: real sessions of the encoder at several levels (zstd per batch,
/// LZ4, a long-distance stream, the context stream), against an inventory
/// of the known pages: a round of demo-mix pages with copies of known
/// pages, then a second round with pages changed a little (deltas) and
/// copied (references), then the answer to a NACK (Fill); and a batch
/// sequence that is cut short.
pub fn seeds() -> Vec<Vec<u8>> {
    let known: Vec<Fingerprint> = (0..KNOWN_PAGES)
        .map(|i| Fingerprint::of(&known_page(i)))
        .collect();
    // (level, long-distance, context window): one zstd frame per batch,
    // LZ4, a long-distance stream and the default context stream.
    let settings: [(i32, Option<LongDistance>, u32); 5] = [
        (1, None, 0),
        (3, None, 0),
        (wanmig_codec::LZ4_LEVEL, None, 0),
        (1, Some(LongDistance { window_log: 20 }), 0),
        (1, None, EncoderConfig::default().context_window_log),
    ];
    let mut out = Vec::new();
    for (n, (level, long_distance, context_window_log)) in settings.into_iter().enumerate() {
        let cfg = EncoderConfig {
            batch_pages: 3,
            level,
            long_distance,
            context_window_log,
            ..EncoderConfig::default()
        };
        let mut enc =
            Encoder::new(cfg, Inventory::from_fingerprints(&known)).expect("seed encoder");
        // Round 1: mix pages, two known pages, a repeated page.
        let mut round1: Vec<(Gfn, Box<PageBytes>)> = (0..10)
            .map(|i| (Gfn(i), mix_page(i + 10 * n as u64)))
            .collect();
        round1.push((Gfn(20), known_page(1)));
        round1.push((Gfn(21), known_page(5)));
        round1.push((Gfn(22), mix_page(3 + 10 * n as u64)));
        let mut batches = enc.encode(round1.iter().map(|(g, p)| (*g, &**p)));
        // Round 2: some pages changed by a few bytes.
        let round2: Vec<(Gfn, Box<PageBytes>)> = [0u64, 2, 4]
            .iter()
            .map(|&g| {
                let mut p = round1[g as usize].1.clone();
                p[100] ^= 0x55;
                p[2000] = p[2000].wrapping_add(1);
                (Gfn(g), p)
            })
            .collect();
        batches.extend(enc.encode(round2.iter().map(|(g, p)| (*g, &**p))));
        // The destination lost known page 1: it NACKs, the source fills.
        let nack = enc.on_nack(&[(Gfn(20), known[1])]);
        batches.extend(nack.batches);

        let mut s = Script::new();
        s.bool(n % 2 == 0);
        for b in &batches {
            s.big_blob(b);
        }
        out.push(s.finish());
        // The same session with its last batch cut short.
        let mut s = Script::new();
        s.bool(true);
        for (i, b) in batches.iter().enumerate() {
            let keep = if i + 1 == batches.len() {
                b.len() / 2
            } else {
                b.len()
            };
            s.big_blob(&b[..keep]);
        }
        out.push(s.finish());
    }
    out
}
