//! The source side: turns guest pages into batches of records.
//!
//! Per page, in this order: an all-zero page becomes a Zero record; content
//! the destination holds (its inventory, or what this session already sent)
//! becomes a Ref by fingerprint — verified byte-for-byte against the cached
//! copy when the encoder still holds it; a re-sent page becomes an XOR delta
//! against the version last sent, when the delta is small; the rest goes into
//! the batch's zstd section, or its raw section when it looks incompressible.
//!
//! Hashing: BLAKE3 over every page was ~15% of the encoder's instructions on
//! the demo mix, yet most pages (text, incompressible) are sent in full and
//! never referenced. So "sent this session" is keyed by a cheap *keyed*
//! 64-bit xxh3 of the content (a random key per session, so a guest cannot
//! aim collisions), and BLAKE3 is computed only when a record needs it: a
//! Ref (on a pre-filter hit), a Delta (base and target), the inventory check
//! (only when the destination holds anything; it comes first then, so an
//! inventory hit costs no xxh3), or a NACK answer. A pre-filter
//! hit is verified byte-for-byte when the cached copy is at hand; otherwise
//! the Ref carries the page's own BLAKE3, so the destination either resolves
//! exactly that content or NACKs — correctness never rests on xxh3.
//!
//! Sans-IO: [`Encoder::encode`] takes pages and returns the batches to put
//! on the wire; [`Encoder::on_nack`] takes the destination's NACKs and returns
//! resend batches plus the pages it must be given again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::compress::{
    LongDistance, SectionEncoder, DEFAULT_CONTEXT_WINDOW_LOG, MAX_LEVEL, MAX_WINDOW_LOG, MIN_LEVEL,
    MIN_WINDOW_LOG,
};
use crate::error::CodecError;
use crate::fingerprint::Fingerprint;
use crate::inventory::Inventory;
use crate::page::{is_zero, looks_incompressible, Gfn, PageBytes, PAGE_SIZE};
use crate::page_cache::PageCache;
use crate::record::{BatchWriter, MAX_DELTA_LEN, MAX_RECORDS};

/// What the encoder's page cache keeps beside each page: its keyed xxh3 and
/// its BLAKE3, each once something needed it.
#[derive(Clone, Copy)]
struct Meta {
    quick: Option<u64>,
    fp: Option<Fingerprint>,
}

impl Meta {
    /// The BLAKE3 of `data` (the page this describes), computed once.
    fn fingerprint(&mut self, data: &PageBytes) -> Fingerprint {
        *self.fp.get_or_insert_with(|| Fingerprint::of(data))
    }

    /// The keyed xxh3 of `data`, computed once.
    fn quick(&mut self, data: &PageBytes, seed: u64) -> u64 {
        *self.quick.get_or_insert_with(|| quick_hash(data, seed))
    }
}

/// Hashes the `sent` map's keys, which are already keyed xxh3 values
/// (uniform, and unpredictable to the guest), by passing them through:
/// SipHash on top cost ~1.5% of the encoder's instructions. Ten lines
/// rather than a crate (nohash-hasher does the same).
#[derive(Default)]
struct KeyedHashHasher(u64);

impl Hasher for KeyedHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The keyed 64-bit pre-filter hash of a page.
fn quick_hash(page: &PageBytes, seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(page, seed)
}

/// Encoder settings (a `[codec]` table in the gateway config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderConfig {
    /// Full pages per batch before it is compressed and emitted (tens).
    pub batch_pages: usize,
    /// Records (of any kind) per batch before it is emitted.
    pub batch_records: usize,
    /// Initial level (the level controller changes it at run time): a zstd
    /// level -7..=19, or -8 for LZ4 (fastest, for CPU-bound links).
    pub level: i32,
    /// Memory for last-sent page copies (delta bases, NACK answers), bytes.
    pub cache_bytes: usize,
    /// A delta is used only when it is at most this many bytes.
    pub delta_max_bytes: usize,
    /// Most fingerprints remembered as "sent this session".
    pub max_session_fingerprints: usize,
    /// Send pages that look incompressible raw instead of through zstd.
    pub detect_incompressible: bool,
    /// `false`: send every page raw — the plain pre-copy baseline that the
    /// benchmarks measure beside the reduced stream (no zero detection,
    /// references, deltas or compression).
    pub reduce: bool,
    /// Compress all batches through one zstd stream with long-distance
    /// matching (`[codec.long_distance] window_log = 27`); for links slower
    /// than the codec. Batches then decode only in order. Off by default.
    pub long_distance: Option<LongDistance>,
    /// Compress consecutive batches as one zstd stream with a window of
    /// 2^`context_window_log` bytes, so a batch's matches reach into what
    /// earlier batches carried; 0 compresses each batch on its own (LZ4
    /// always does). Batches then decode only in order, and the
    /// destination's `max_window_log` must be at least this.
    pub context_window_log: u32,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            batch_pages: 32,
            batch_records: 4096,
            level: 1,
            cache_bytes: 256 << 20,
            delta_max_bytes: 1024,
            max_session_fingerprints: 16 << 20,
            detect_incompressible: true,
            reduce: true,
            long_distance: None,
            context_window_log: DEFAULT_CONTEXT_WINDOW_LOG,
        }
    }
}

impl EncoderConfig {
    /// Checks every field; the error names the bad key.
    pub fn validate(&self) -> Result<(), CodecError> {
        let bad = |key, why: &str| {
            Err(CodecError::Config {
                key,
                why: why.to_string(),
            })
        };
        if self.batch_pages == 0
            || self.batch_pages * PAGE_SIZE > crate::record::MAX_SECTION_LEN / 2
        {
            return bad("codec.batch_pages", "must be between 1 and 4096");
        }
        if self.batch_records == 0 || self.batch_records > MAX_RECORDS {
            return bad("codec.batch_records", "must be between 1 and 65536");
        }
        if !(MIN_LEVEL..=MAX_LEVEL).contains(&self.level) {
            return bad(
                "codec.level",
                "must be a zstd level between -7 and 19, or -8 for LZ4",
            );
        }
        if let Some(ld) = self.long_distance {
            if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&ld.window_log) {
                return bad(
                    "codec.long_distance.window_log",
                    "must be between 10 and 30 (log2 of the window in bytes)",
                );
            }
        }
        if self.context_window_log != 0
            && !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&self.context_window_log)
        {
            return bad(
                "codec.context_window_log",
                "must be 0 (each batch compressed on its own) or between 10 and 30 (log2 of the window in bytes)",
            );
        }
        if self.delta_max_bytes > MAX_DELTA_LEN {
            return bad("codec.delta_max_bytes", "must be at most 8192");
        }
        Ok(())
    }
}

/// Pages and bytes by what the encoder did with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderStats {
    pub pages_in: u64,
    pub zero: u64,
    /// References to content in the destination's inventory.
    pub ref_inventory: u64,
    /// References to content sent earlier in this session.
    pub ref_session: u64,
    pub delta: u64,
    /// Pages that went through zstd and came out smaller.
    pub compressed: u64,
    /// Pages stored raw (looked incompressible, or zstd did not help).
    pub raw: u64,
    /// Pages resent to answer NACKs.
    pub fill: u64,
    /// Fingerprint matches whose bytes differed (a BLAKE3 collision).
    pub collisions: u64,
    /// Guest bytes given to `encode` (pages × 4096).
    pub bytes_in: u64,
    /// Wire bytes of all batches produced (incl. NACK answers).
    pub bytes_out: u64,
    pub batches: u64,
}

impl EncoderStats {
    pub fn refs(&self) -> u64 {
        self.ref_inventory + self.ref_session
    }

    /// What happened between `earlier` (a snapshot of the same encoder's
    /// stats) and `self`: one sample of the codec's work (the migration
    /// policy tunes the level from such samples).
    pub fn since(&self, earlier: &EncoderStats) -> EncoderStats {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        EncoderStats {
            pages_in: d(self.pages_in, earlier.pages_in),
            zero: d(self.zero, earlier.zero),
            ref_inventory: d(self.ref_inventory, earlier.ref_inventory),
            ref_session: d(self.ref_session, earlier.ref_session),
            delta: d(self.delta, earlier.delta),
            compressed: d(self.compressed, earlier.compressed),
            raw: d(self.raw, earlier.raw),
            fill: d(self.fill, earlier.fill),
            collisions: d(self.collisions, earlier.collisions),
            bytes_in: d(self.bytes_in, earlier.bytes_in),
            bytes_out: d(self.bytes_out, earlier.bytes_out),
            batches: d(self.batches, earlier.batches),
        }
    }
}

/// What to do about a set of NACKs.
#[derive(Debug, Default)]
pub struct NackResponse {
    /// Batches carrying the content the destination lacked.
    pub batches: Vec<Vec<u8>>,
    /// Pages whose content the encoder no longer holds: read them from the
    /// VM again and pass them to [`Encoder::encode`] (their fingerprints have
    /// been forgotten, so they go out in full).
    pub refetch: Vec<Gfn>,
}

/// The source-side codec state for one migration session.
pub struct Encoder {
    cfg: EncoderConfig,
    inventory: Inventory,
    /// Keyed xxh3 of content sent this session → a gfn it was sent as (to
    /// verify against).
    sent: HashMap<u64, Gfn, BuildHasherDefault<KeyedHashHasher>>,
    /// The xxh3 key of this session.
    quick_seed: u64,
    /// Content the destination NACKed whose `sent` entry could not be found
    /// (its cached copy was gone): never referenced again until resent.
    forgotten: HashSet<Fingerprint>,
    cache: PageCache<Gfn, Meta>,
    /// Pages whose latest record is Zero and whose earlier content was
    /// cached when it went: a NACK of that earlier content needs nothing
    /// (the Zero record followed it), though the cache no longer says so.
    zeroed: HashSet<Gfn>,
    writer: BatchWriter,
    /// Delta bytes being tried before their fingerprints are computed.
    delta_scratch: Vec<u8>,
    sections: SectionEncoder,
    /// Literal pages in the batch being built (for stats at finish).
    literals_in_batch: u64,
    stats: EncoderStats,
}

impl Encoder {
    /// A new session. `inventory` is what the destination reported holding.
    pub fn new(cfg: EncoderConfig, inventory: Inventory) -> Result<Self, CodecError> {
        cfg.validate()?;
        let level = if cfg.level == 0 { 1 } else { cfg.level };
        let mut sections = SectionEncoder::new(level, cfg.long_distance)?;
        sections.set_context(cfg.context_window_log);
        Ok(Encoder {
            sections,
            cache: PageCache::new(cfg.cache_bytes / PAGE_SIZE),
            cfg,
            inventory,
            sent: HashMap::default(),
            quick_seed: rand::random(),
            forgotten: HashSet::new(),
            zeroed: HashSet::new(),
            writer: BatchWriter::new(),
            delta_scratch: Vec::new(),
            literals_in_batch: 0,
            stats: EncoderStats::default(),
        })
    }

    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    /// The level in force (a zstd level, or [`crate::LZ4_LEVEL`]).
    pub fn level(&self) -> i32 {
        self.sections.level()
    }

    /// Sets the level for the following batches (clamped to -8..=19; -8 is
    /// LZ4, 0 means 1). With long-distance matching on, a change restarts
    /// the stream (zstd changes levels only at a frame start), so change it
    /// no more often than every few seconds.
    pub fn set_level(&mut self, level: i32) -> Result<(), CodecError> {
        // zstd reads 0 as "default" (3); treat it as 1.
        let level = match level.clamp(MIN_LEVEL, MAX_LEVEL) {
            0 => 1,
            l => l,
        };
        self.sections.set_level(level)
    }

    /// Long-distance matching in force.
    pub fn long_distance(&self) -> Option<LongDistance> {
        self.sections.long_distance()
    }

    /// Turns long-distance matching on (a new stream starts with the next
    /// batch) or off, from the next batch. The destination must allow the
    /// window (`DecoderConfig::max_window_log`).
    pub fn set_long_distance(&mut self, long: Option<LongDistance>) -> Result<(), CodecError> {
        if let Some(ld) = long {
            if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&ld.window_log) {
                return Err(CodecError::Config {
                    key: "codec.long_distance.window_log",
                    why: "must be between 10 and 30 (log2 of the window in bytes)".into(),
                });
            }
        }
        self.cfg.long_distance = long;
        self.sections.set_long_distance(long);
        Ok(())
    }

    /// Encodes `pages` (in order; a later page for the same gfn supersedes an
    /// earlier one) into complete batches. Nothing is held back: every page
    /// given is in the returned batches.
    pub fn encode<'p>(
        &mut self,
        pages: impl IntoIterator<Item = (Gfn, &'p PageBytes)>,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (gfn, page) in pages {
            self.encode_page(gfn, page);
            if self.writer.payload_pages() >= self.cfg.batch_pages
                || self.writer.records() >= self.cfg.batch_records
            {
                out.push(self.finish_batch());
            }
        }
        if !self.writer.is_empty() {
            out.push(self.finish_batch());
        }
        out
    }

    fn encode_page(&mut self, gfn: Gfn, page: &PageBytes) {
        self.stats.pages_in += 1;
        self.stats.bytes_in += PAGE_SIZE as u64;
        if !self.cfg.reduce {
            self.writer.push_raw(gfn, page);
            self.stats.raw += 1;
            return;
        }
        if is_zero(page) {
            self.writer.push_zero(gfn);
            if self.cache.remove(gfn) {
                self.zeroed.insert(gfn);
            }
            self.stats.zero += 1;
            return;
        }
        if !self.zeroed.is_empty() {
            self.zeroed.remove(&gfn);
        }
        // BLAKE3 of `page`, computed when first needed.
        let mut fp: Option<Fingerprint> = None;
        if !self.inventory.is_empty() {
            // Checked first: a hit needs the BLAKE3 anyway, and no xxh3.
            let full = *fp.get_or_insert_with(|| Fingerprint::of(page));
            if self.inventory.contains(&full) {
                self.writer.push_ref(gfn, &full);
                self.cache.put(gfn, Meta { quick: None, fp }, page);
                self.stats.ref_inventory += 1;
                return;
            }
        }
        let seed = self.quick_seed;
        let quick = quick_hash(page, seed);
        if let Some(&holder) = self.sent.get(&quick) {
            let full = *fp.get_or_insert_with(|| Fingerprint::of(page));
            // Verify when we still hold the content: never trust a hash
            // match alone when the bytes are at hand.
            let verified = !self.forgotten.contains(&full)
                && match self.cache.get_mut(holder) {
                    Some((m, data)) => m.quick(data, seed) != quick || data == page,
                    None => true,
                };
            let meta = Meta {
                quick: Some(quick),
                fp,
            };
            if verified {
                self.writer.push_ref(gfn, &full);
                self.cache.put(gfn, meta, page);
                self.stats.ref_session += 1;
                return;
            }
            if !self.forgotten.contains(&full) {
                self.stats.collisions += 1;
                tracing::warn!(%gfn, "content hash matched different content; sending in full");
            }
        }
        let mut done = false;
        if let Some((meta, old)) = self.cache.get_mut(gfn) {
            self.delta_scratch.clear();
            let limit = self.cfg.delta_max_bytes.min(MAX_DELTA_LEN);
            if crate::delta::encode(old, page, limit, &mut self.delta_scratch).is_some() {
                let base = meta.fingerprint(old);
                let target = *fp.get_or_insert_with(|| Fingerprint::of(page));
                self.writer
                    .push_delta(gfn, &base, &target, &self.delta_scratch);
                self.stats.delta += 1;
                done = true;
            }
        }
        if !done {
            if self.cfg.detect_incompressible && looks_incompressible(page) {
                self.writer.push_raw(gfn, page);
                self.stats.raw += 1;
            } else {
                self.writer.push_literal(gfn, page);
                self.literals_in_batch += 1;
            }
        }
        if !self.forgotten.is_empty() {
            // Sent in full again: the destination will hold it.
            let full = *fp.get_or_insert_with(|| Fingerprint::of(page));
            self.forgotten.remove(&full);
        }
        if self.sent.len() < self.cfg.max_session_fingerprints {
            self.sent.insert(quick, gfn);
        }
        let meta = Meta {
            quick: Some(quick),
            fp,
        };
        self.cache.put(gfn, meta, page);
    }

    fn finish_batch(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let s = self.writer.finish_with(&mut self.sections, &mut out);
        if s.a_compressed {
            self.stats.compressed += self.literals_in_batch;
        } else {
            self.stats.raw += self.literals_in_batch;
        }
        self.literals_in_batch = 0;
        self.stats.bytes_out += s.wire_len as u64;
        self.stats.batches += 1;
        out
    }

    /// Handles NACKs from the destination: each names a gfn and the content
    /// it could not resolve. That content is forgotten as "held by the
    /// destination", and resent as a Fill record when the encoder still holds
    /// it. A NACK for a version of the page that has since been superseded
    /// needs nothing: the newer record already followed it on the stream.
    pub fn on_nack(&mut self, nacks: &[(Gfn, Fingerprint)]) -> NackResponse {
        let mut resp = NackResponse::default();
        for &(gfn, fp) in nacks {
            self.inventory.remove(&fp);
            let seed = self.quick_seed;
            let held = self.cache.get_mut(gfn).map(|(meta, data)| {
                (meta.fingerprint(data) == fp).then(|| (meta.quick(data, seed), Box::new(*data)))
            });
            match held {
                Some(Some((quick, data))) => {
                    self.writer.push_fill(gfn, &fp, &data);
                    self.stats.fill += 1;
                    // The destination will hold it once the fill arrives.
                    self.forgotten.remove(&fp);
                    self.sent.insert(quick, gfn);
                }
                Some(None) => {
                    self.forgotten.insert(fp);
                }
                None if self.zeroed.contains(&gfn) => {
                    self.forgotten.insert(fp);
                }
                None => {
                    self.forgotten.insert(fp);
                    resp.refetch.push(gfn);
                }
            }
            if self.writer.payload_pages() >= self.cfg.batch_pages
                || self.writer.records() >= self.cfg.batch_records
            {
                resp.batches.push(self.finish_batch());
            }
        }
        if !self.writer.is_empty() {
            resp.batches.push(self.finish_batch());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        for (cfg, key) in [
            (
                EncoderConfig {
                    batch_pages: 0,
                    ..EncoderConfig::default()
                },
                "codec.batch_pages",
            ),
            (
                EncoderConfig {
                    level: 40,
                    ..EncoderConfig::default()
                },
                "codec.level",
            ),
            (
                EncoderConfig {
                    delta_max_bytes: 1 << 20,
                    ..EncoderConfig::default()
                },
                "codec.delta_max_bytes",
            ),
            (
                EncoderConfig {
                    context_window_log: 5,
                    ..EncoderConfig::default()
                },
                "codec.context_window_log",
            ),
        ] {
            let e = Encoder::new(cfg, Inventory::new()).err().expect("accepted");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn level_can_change_between_batches() {
        let mut enc = Encoder::new(EncoderConfig::default(), Inventory::new()).unwrap();
        enc.set_level(0).unwrap();
        assert_eq!(enc.level(), 1, "0 means zstd's default, not a level");
        enc.set_level(-100).unwrap();
        assert_eq!(enc.level(), MIN_LEVEL);
        let page = [b'x'; PAGE_SIZE];
        assert_eq!(enc.encode([(Gfn(0), &page)]).len(), 1);
    }
}
