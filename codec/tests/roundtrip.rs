//! End-to-end behaviour of encoder + decoder through real batches: any page
//! mix round-trips exactly (with NACK → resend → exact) in every section
//! mode (zstd per batch, LZ4, long-distance stream, level changes between
//! batches), forged references never yield wrong data, malformed batches and
//! streams are rejected without panics.

use std::collections::HashMap;

use proptest::prelude::*;
use wanmig_codec::record::{BatchWriter, HEADER_LEN};
use wanmig_codec::{
    CodecError, ContentStore, Decoder, DecoderConfig, Encoder, EncoderConfig, Fingerprint, Gfn,
    Inventory, LongDistance, NoStore, PageBytes, PageStore, LZ4_LEVEL, PAGE_SIZE,
};

fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    x |= 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn random_page(seed: u64) -> PageBytes {
    let mut r = xorshift(seed);
    let mut p = [0u8; PAGE_SIZE];
    for c in p.chunks_exact_mut(8) {
        c.copy_from_slice(&r().to_le_bytes());
    }
    p
}

fn text_page(seed: u64) -> PageBytes {
    const WORDS: [&[u8]; 8] = [
        b"page ", b"zero ", b"delta ", b"ref ", b"batch ", b"wan ", b"kvm\n", b"0x1f ",
    ];
    let mut r = xorshift(seed);
    let mut p = [0u8; PAGE_SIZE];
    let mut i = 0;
    while i < PAGE_SIZE {
        let w = WORDS[(r() % 8) as usize];
        let n = w.len().min(PAGE_SIZE - i);
        p[i..i + n].copy_from_slice(&w[..n]);
        i += n;
    }
    p
}

#[derive(Debug, Clone)]
enum Op {
    Zero,
    /// One of a few shared contents (→ references).
    Pool(u8),
    Random(u64),
    Text(u64),
    /// Small edits of the page's current content (→ deltas).
    Edit(Vec<(u16, u8)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Zero),
        (0u8..4).prop_map(Op::Pool),
        any::<u64>().prop_map(Op::Random),
        any::<u64>().prop_map(Op::Text),
        proptest::collection::vec((0u16..PAGE_SIZE as u16, any::<u8>()), 1..40).prop_map(Op::Edit),
    ]
}

fn apply(op: &Op, current: Option<&PageBytes>) -> PageBytes {
    match op {
        Op::Zero => [0; PAGE_SIZE],
        Op::Pool(k) => text_page(1000 + *k as u64),
        Op::Random(s) => random_page(*s),
        Op::Text(s) => text_page(*s),
        Op::Edit(edits) => {
            let mut p = current.copied().unwrap_or_else(|| text_page(7));
            for &(i, v) in edits {
                p[i as usize] = v;
            }
            p
        }
    }
}

/// Drives a whole session the way the gateways will: rounds of pages go
/// source → destination; NACKs come back one round late (so resends race
/// with newer versions); pages the encoder no longer holds are re-read from
/// the source. Returns the destination's memory.
struct Session<S: ContentStore> {
    enc: Encoder,
    dec: Decoder<S>,
    source: HashMap<Gfn, PageBytes>,
    dest: HashMap<Gfn, PageBytes>,
    nacks: Vec<(Gfn, Fingerprint)>,
    wire: u64,
    /// Change the level before every round (cycling zstd and LZ4 levels).
    relevel: bool,
    rounds: usize,
}

impl<S: ContentStore> Session<S> {
    fn new(enc: Encoder, dec: Decoder<S>) -> Self {
        Session {
            enc,
            dec,
            source: HashMap::new(),
            dest: HashMap::new(),
            nacks: Vec::new(),
            wire: 0,
            relevel: false,
            rounds: 0,
        }
    }

    fn deliver(&mut self, batches: Vec<Vec<u8>>) {
        for b in batches {
            self.wire += b.len() as u64;
            let d = self.dec.decode(&b).expect("encoder output must decode");
            for (g, p) in d.pages {
                self.dest.insert(g, *p);
            }
            self.nacks.extend(d.nacks);
        }
    }

    fn answer_nacks(&mut self) {
        let nacks = std::mem::take(&mut self.nacks);
        if nacks.is_empty() {
            return;
        }
        let resp = self.enc.on_nack(&nacks);
        self.deliver(resp.batches);
        let refetch: Vec<(Gfn, PageBytes)> =
            resp.refetch.iter().map(|g| (*g, self.source[g])).collect();
        let batches = self.enc.encode(refetch.iter().map(|(g, p)| (*g, p)));
        self.deliver(batches);
    }

    fn round(&mut self, pages: &[(Gfn, PageBytes)]) {
        if self.relevel {
            const LEVELS: [i32; 4] = [LZ4_LEVEL, 3, -2, 1];
            self.enc.set_level(LEVELS[self.rounds % 4]).unwrap();
        }
        self.rounds += 1;
        for (g, p) in pages {
            self.source.insert(*g, *p);
        }
        let batches = self.enc.encode(pages.iter().map(|(g, p)| (*g, p)));
        self.deliver(batches);
    }

    fn finish(&mut self) {
        for _ in 0..20 {
            if self.nacks.is_empty() {
                break;
            }
            self.answer_nacks();
        }
        assert!(self.nacks.is_empty(), "NACK loop did not converge");
        assert_eq!(self.dec.pending_count(), 0, "decoder still waits for pages");
        assert_eq!(self.dest.len(), self.source.len());
        for (g, p) in &self.source {
            assert!(self.dest[g] == *p, "{g} differs at the destination");
        }
    }
}

fn run_rounds<S: ContentStore>(s: &mut Session<S>, rounds: &[Vec<(u8, Op)>]) {
    for round in rounds {
        // Answer the previous round's NACKs only now: their resends arrive
        // after this round's newer versions of the same pages were built.
        let mut pages: Vec<(Gfn, PageBytes)> = Vec::new();
        let mut cur = s.source.clone();
        for (g, op) in round {
            let gfn = Gfn(*g as u64);
            let p = apply(op, cur.get(&gfn));
            cur.insert(gfn, p);
            pages.push((gfn, p));
        }
        let pending_nacks = std::mem::take(&mut s.nacks);
        s.round(&pages);
        s.nacks.splice(0..0, pending_nacks);
        s.answer_nacks();
    }
    s.finish();
}

fn small_cfg(cache_pages: usize) -> EncoderConfig {
    EncoderConfig {
        batch_pages: 8,
        cache_bytes: cache_pages * PAGE_SIZE,
        ..EncoderConfig::default()
    }
}

/// Section mode: (initial level, long-distance, context window, change
/// the level before every round).
fn mode_strategy() -> impl Strategy<Value = (i32, Option<LongDistance>, u32, bool)> {
    let ld = Some(LongDistance { window_log: 20 });
    let ctx = EncoderConfig::default().context_window_log;
    prop_oneof![
        Just((1, None, 0, false)),
        Just((LZ4_LEVEL, None, 0, false)),
        Just((-3, None, 0, true)),
        Just((1, None, ctx, false)),
        Just((-3, None, ctx, true)),
        Just((3, ld, 0, false)),
        Just((1, ld, 0, true)),
        Just((LZ4_LEVEL, ld, 0, true)),
    ]
}

fn rounds_strategy() -> impl Strategy<Value = Vec<Vec<(u8, Op)>>> {
    proptest::collection::vec(proptest::collection::vec((0u8..24, op()), 1..40), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any mix of zero, shared, random, text and edited pages over several
    /// rounds arrives exactly, whatever the cache sizes (tiny caches force
    /// evictions, NACKs, fills and refetches).
    #[test]
    fn any_mix_round_trips_exactly(
        rounds in rounds_strategy(),
        enc_cache in prop_oneof![Just(0usize), Just(3), Just(1024)],
        dec_cache in prop_oneof![Just(0usize), Just(3), Just(1024)],
        store_pages in prop_oneof![Just(0u64), Just(2), Just(64)],
        mode in mode_strategy(),
    ) {
        let (level, long, context_window_log, relevel) = mode;
        let cfg = EncoderConfig { level, long_distance: long, context_window_log, ..small_cfg(enc_cache) };
        let enc = Encoder::new(cfg, Inventory::new()).unwrap();
        let dcfg = DecoderConfig { session_cache_bytes: dec_cache * PAGE_SIZE, ..DecoderConfig::default() };
        if store_pages == 0 {
            let mut s = Session::new(enc, Decoder::new(dcfg, NoStore).unwrap());
            s.relevel = relevel;
            run_rounds(&mut s, &rounds);
        } else {
            let dir = tempfile::tempdir().unwrap();
            let store = PageStore::open(dir.path(), store_pages * PAGE_SIZE as u64).unwrap();
            let mut s = Session::new(enc, Decoder::new(dcfg, store).unwrap());
            s.relevel = relevel;
            run_rounds(&mut s, &rounds);
        }
    }

    /// A long-distance stream cut short or corrupted anywhere: errors or
    /// (for corruption the stream cannot notice) wrong-but-bounded pages,
    /// never a panic; and a batch truncated in transit is refused without
    /// breaking the stream, so the intact batch still decodes exactly.
    #[test]
    fn long_distance_stream_damage_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        which in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cfg = EncoderConfig {
            batch_pages: 4,
            long_distance: Some(LongDistance { window_log: 20 }),
            ..EncoderConfig::default()
        };
        let mut enc = Encoder::new(cfg, Inventory::new()).unwrap();
        let pages: Vec<PageBytes> = (0..16).map(|i| if i % 3 == 0 { random_page(i) } else { text_page(i) }).collect();
        let batches = enc.encode(pages.iter().enumerate().map(|(i, p)| (Gfn(i as u64), p)));
        prop_assert!(batches.len() >= 3);
        let k = which.index(batches.len());
        // Truncated in transit: refused, stream intact.
        let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
        let mut got = HashMap::new();
        for (i, b) in batches.iter().enumerate() {
            if i == k {
                prop_assert!(dec.decode(&b[..cut.index(b.len())]).is_err());
            }
            for (g, p) in dec.decode(b).unwrap().pages {
                got.insert(g, *p);
            }
        }
        for (i, p) in pages.iter().enumerate() {
            prop_assert!(got[&Gfn(i as u64)] == *p);
        }
        // Corrupted: errors, or pages zstd cannot tell are wrong (batches
        // carry no checksum; QUIC/TLS protects them in transit), never a
        // panic.
        let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
        for (i, b) in batches.iter().enumerate() {
            let mut b = b.clone();
            if i == k {
                for (at, v) in &flips {
                    let at = at.index(b.len());
                    b[at] ^= v | 1;
                }
            }
            let _ = dec.decode(&b);
        }
    }

    /// Random bytes, and valid batches with random corruption, never panic
    /// the decoder.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
        let _ = dec.decode(&bytes);
        let mut with_magic = b"WMCB\x02\x00\x00\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = dec.decode(&with_magic);
    }

    #[test]
    fn corrupted_batches_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let pages = [text_page(1), random_page(2), [0; PAGE_SIZE], text_page(1)];
        let mut enc = Encoder::new(EncoderConfig::default(), Inventory::new()).unwrap();
        let mut batch = enc.encode(pages.iter().enumerate().map(|(i, p)| (Gfn(i as u64), p))).remove(0);
        // Then a delta batch to exercise delta validation too.
        let mut edited = text_page(1);
        edited[9] ^= 0xff;
        let mut delta = enc.encode([(Gfn(0), &edited)]).remove(0);
        for (i, v) in &flips {
            let at = i.index(batch.len());
            batch[at] ^= v | 1;
            let at = i.index(delta.len());
            delta[at] ^= v | 1;
        }
        let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
        let _ = dec.decode(&batch);
        let _ = dec.decode(&delta);
        let _ = dec.decode(&batch[..cut.index(batch.len())]);
    }
}

#[test]
fn kinds_are_chosen_as_specified() {
    let mut enc = Encoder::new(EncoderConfig::default(), Inventory::new()).unwrap();
    let text = text_page(5);
    let rnd = random_page(5);
    let zero = [0u8; PAGE_SIZE];
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let mut wire = 0;
    for b in enc.encode([
        (Gfn(0), &zero),
        (Gfn(1), &text),
        (Gfn(2), &rnd),
        (Gfn(3), &text),
    ]) {
        wire += b.len();
        dec.decode(&b).unwrap();
    }
    let s = enc.stats();
    assert_eq!((s.zero, s.compressed, s.raw, s.ref_session), (1, 1, 1, 1));
    assert_eq!(s.bytes_out as usize, wire);
    let mut edited = text;
    edited[100] ^= 1;
    let b = enc.encode([(Gfn(1), &edited)]);
    assert_eq!(enc.stats().delta, 1);
    assert!(
        b[0].len() < 200,
        "a one-byte change costs {} wire bytes",
        b[0].len()
    );
    let d = dec.decode(&b[0]).unwrap();
    assert_eq!(*d.pages[0].1, edited);
    let ds = dec.stats();
    assert_eq!(
        (ds.zero, ds.literal, ds.raw, ds.refs_resolved, ds.delta),
        (1, 1, 1, 1, 1)
    );
}

/// With reduction off every page goes raw (the plain pre-copy baseline) and
/// still round-trips exactly.
#[test]
fn reduction_off_sends_every_page_raw() {
    let cfg = EncoderConfig {
        reduce: false,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, Inventory::new()).unwrap();
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let (text, zero) = (text_page(9), [0u8; PAGE_SIZE]);
    let pages = [(Gfn(0), &zero), (Gfn(1), &text), (Gfn(2), &text)];
    let mut got = Vec::new();
    for b in enc.encode(pages) {
        got.extend(dec.decode(&b).unwrap().pages);
    }
    let s = enc.stats();
    assert_eq!((s.raw, s.zero, s.refs(), s.compressed), (3, 0, 0, 0));
    assert!(s.bytes_out >= 3 * PAGE_SIZE as u64);
    assert_eq!(got.len(), 3);
    for ((g, p), (eg, ep)) in got.iter().zip(pages) {
        assert_eq!((*g, &**p), (eg, ep));
    }
}

/// The inventory claims content the destination does not hold: the reference
/// is NACKed, never filled with something else, and the resend is exact.
#[test]
fn reference_absent_at_destination_is_nacked_and_resent() {
    let pages: Vec<PageBytes> = (0..10).map(|i| text_page(i + 50)).collect();
    let inv =
        Inventory::from_fingerprints(pages.iter().map(Fingerprint::of).collect::<Vec<_>>().iter());
    let enc = Encoder::new(EncoderConfig::default(), inv).unwrap();
    let dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let mut s = Session::new(enc, dec);
    let round: Vec<(Gfn, PageBytes)> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (Gfn(i as u64), *p))
        .collect();
    s.round(&round);
    assert_eq!(s.enc.stats().ref_inventory, 10);
    assert_eq!(s.nacks.len(), 10);
    assert!(
        s.dest.is_empty(),
        "no page may be delivered for an unresolved reference"
    );
    s.answer_nacks();
    assert_eq!(s.enc.stats().fill, 10);
    s.finish();
}

/// A NACK for a reference that a Zero record has since superseded needs
/// nothing: no fill (the zero page followed it) and no refetch (which a
/// relay can only treat as lost content and abort on).
#[test]
fn nack_of_content_superseded_by_a_zero_page_needs_nothing() {
    let page = text_page(60);
    let fp = Fingerprint::of(&page);
    let mut enc = Encoder::new(
        EncoderConfig::default(),
        Inventory::from_fingerprints([fp].iter()),
    )
    .unwrap();
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let gfn = Gfn(3);
    let mut nacks = Vec::new();
    for b in enc.encode([(gfn, &page)]) {
        nacks.extend(dec.decode(&b).unwrap().nacks);
    }
    assert_eq!(nacks, vec![(gfn, fp)]);
    let mut delivered = Vec::new();
    for b in enc.encode([(gfn, &[0u8; PAGE_SIZE])]) {
        delivered.extend(dec.decode(&b).unwrap().pages);
    }
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].1.iter().all(|&b| b == 0));
    assert_eq!(dec.pending_count(), 0);
    let resp = enc.on_nack(&nacks);
    assert!(resp.refetch.is_empty(), "{:?}", resp.refetch);
    assert!(resp.batches.is_empty());
    // The content was NACKed, so it is not referenced again: sent anew, it
    // goes in full and arrives.
    let mut again = Vec::new();
    for b in enc.encode([(gfn, &page)]) {
        let d = dec.decode(&b).unwrap();
        assert!(d.nacks.is_empty());
        again.extend(d.pages);
    }
    assert!(again.len() == 1 && *again[0].1 == page);
}

/// The store holds other content under a fingerprint the inventory lists
/// (a forged or corrupt entry): the read-time hash check catches it.
#[test]
fn store_holding_other_content_under_a_fingerprint_yields_nack_not_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = PageStore::open(dir.path(), 64 * PAGE_SIZE as u64).unwrap();
    let real = text_page(1);
    let forged = text_page(2);
    store.put(&Fingerprint::of(&real), &forged).unwrap();
    let inv = store.inventory();
    assert!(inv.contains(&Fingerprint::of(&real)));
    let enc = Encoder::new(EncoderConfig::default(), inv).unwrap();
    let dec = Decoder::new(DecoderConfig::default(), store).unwrap();
    let mut s = Session::new(enc, dec);
    s.round(&[(Gfn(9), real)]);
    assert_eq!(s.nacks, vec![(Gfn(9), Fingerprint::of(&real))]);
    assert!(s.dest.is_empty());
    assert_eq!(s.dec.store().stats().corrupt, 1);
    s.finish();
    assert_eq!(s.dest[&Gfn(9)], real);
}

/// A hand-forged batch referencing content nobody sent: NACK, no page.
#[test]
fn forged_reference_in_batch_is_nacked() {
    let mut w = BatchWriter::new();
    let fp = Fingerprint([0xab; 32]);
    w.push_ref(Gfn(3), &fp);
    let mut batch = Vec::new();
    w.finish(&mut zstd::bulk::Compressor::new(1).unwrap(), &mut batch);
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let d = dec.decode(&batch).unwrap();
    assert!(d.pages.is_empty());
    assert_eq!(d.nacks, vec![(Gfn(3), fp)]);
    assert_eq!(dec.pending_count(), 1);
}

/// A Fill whose content does not hash to its fingerprint is an error, and
/// the rejected batch changes nothing.
#[test]
fn fill_with_wrong_content_is_rejected() {
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let fp = Fingerprint::of(&text_page(1));
    let mut w = BatchWriter::new();
    w.push_ref(Gfn(1), &fp);
    let mut batch = Vec::new();
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    w.finish(&mut z, &mut batch);
    assert_eq!(dec.decode(&batch).unwrap().nacks.len(), 1);
    w.push_zero(Gfn(2));
    w.push_fill(Gfn(1), &fp, &text_page(2));
    w.finish(&mut z, &mut batch);
    assert!(matches!(
        dec.decode(&batch),
        Err(CodecError::FillMismatch { gfn: Gfn(1) })
    ));
    assert_eq!(dec.pending_count(), 1);
    assert_eq!(
        dec.stats().zero,
        0,
        "rejected batch must not be partly applied"
    );
    w.push_fill(Gfn(1), &fp, &text_page(1));
    w.finish(&mut z, &mut batch);
    let d = dec.decode(&batch).unwrap();
    assert_eq!(*d.pages[0].1, text_page(1));
    assert_eq!(dec.pending_count(), 0);
}

/// A delta whose result does not hash to the target it claims is NACKed.
#[test]
fn delta_not_rebuilding_its_target_is_nacked() {
    let base = text_page(1);
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let mut w = BatchWriter::new();
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    let mut batch = Vec::new();
    w.push_literal(Gfn(0), &base);
    let mut new = base;
    new[0] ^= 1;
    let claimed = Fingerprint::of(&text_page(3));
    w.try_push_delta(Gfn(0), &Fingerprint::of(&base), &claimed, &base, &new, 100)
        .unwrap();
    w.finish(&mut z, &mut batch);
    let d = dec.decode(&batch).unwrap();
    assert_eq!(d.pages.len(), 1);
    assert_eq!(d.nacks, vec![(Gfn(0), claimed)]);
}

#[test]
fn truncated_and_oversized_batches_are_errors() {
    let mut enc = Encoder::new(EncoderConfig::default(), Inventory::new()).unwrap();
    let b = enc
        .encode([(Gfn(0), &text_page(1)), (Gfn(1), &random_page(1))])
        .remove(0);
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    for n in 0..b.len() {
        assert!(
            dec.decode(&b[..n]).is_err(),
            "truncated to {n} bytes accepted"
        );
    }
    let mut longer = b.clone();
    longer.push(0);
    assert!(dec.decode(&longer).is_err());
    let mut huge = b.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        wanmig_codec::record::frame_len(&huge),
        Err(CodecError::TooLarge { .. })
    ));
    let mut huge_a = b.clone();
    huge_a[20..24].copy_from_slice(&(u32::MAX).to_le_bytes());
    assert!(dec.decode(&huge_a).is_err());
    assert!(b.len() > HEADER_LEN);
    dec.decode(&b).unwrap();
}

/// A second migration of the same memory into the same (persistent) store:
/// the source learns the inventory and sends references, exactly.
#[test]
fn warm_store_turns_second_migration_into_references() {
    let dir = tempfile::tempdir().unwrap();
    let memory: Vec<(Gfn, PageBytes)> = (0..64)
        .map(|i| {
            (
                Gfn(i),
                if i % 2 == 0 {
                    text_page(i)
                } else {
                    random_page(i)
                },
            )
        })
        .collect();
    let cold_wire;
    {
        let store = PageStore::open_scope(dir.path(), "tenant-a", 1 << 20).unwrap();
        let inv = store.inventory();
        let mut s = Session::new(
            Encoder::new(EncoderConfig::default(), inv).unwrap(),
            Decoder::new(DecoderConfig::default(), store).unwrap(),
        );
        s.round(&memory);
        s.finish();
        cold_wire = s.wire;
    }
    let store = PageStore::open_scope(dir.path(), "tenant-a", 1 << 20).unwrap();
    let inv = store.inventory();
    assert_eq!(inv.len(), 64);
    let mut s = Session::new(
        Encoder::new(EncoderConfig::default(), inv).unwrap(),
        Decoder::new(DecoderConfig::default(), store).unwrap(),
    );
    s.round(&memory);
    s.finish();
    assert_eq!(s.enc.stats().ref_inventory, 64);
    assert!(
        s.wire * 20 < cold_wire,
        "warm {} vs cold {}",
        s.wire,
        cold_wire
    );
    // Another scope shares nothing.
    let other = PageStore::open_scope(dir.path(), "tenant-b", 1 << 20).unwrap();
    assert!(other.inventory().is_empty());
}

/// A Fill that arrives after a newer version of its page must not overwrite
/// that newer version.
#[test]
fn late_fill_never_overwrites_a_newer_page() {
    let old = text_page(1);
    let newer = text_page(2);
    let fp = Fingerprint::of(&old);
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).unwrap();
    let mut w = BatchWriter::new();
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    let mut batch = Vec::new();
    w.push_ref(Gfn(4), &fp);
    w.finish(&mut z, &mut batch);
    assert_eq!(dec.decode(&batch).unwrap().nacks, vec![(Gfn(4), fp)]);
    w.push_literal(Gfn(4), &newer);
    w.finish(&mut z, &mut batch);
    assert_eq!(*dec.decode(&batch).unwrap().pages[0].1, newer);
    assert_eq!(
        dec.pending_count(),
        0,
        "a newer record resolves the pending page"
    );
    w.push_fill(Gfn(4), &fp, &old);
    w.finish(&mut z, &mut batch);
    let d = dec.decode(&batch).unwrap();
    assert!(d.pages.is_empty(), "stale fill delivered");
    assert_eq!(dec.stats().fill_stale, 1);
}
