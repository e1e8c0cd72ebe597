//! The destination side: rebuilds pages from batches.
//!
//! References and delta bases are resolved by fingerprint, first from the
//! content received this session (a bounded in-memory cache), then from the
//! site's [`ContentStore`], which verifies content against its fingerprint on
//! read. Whatever cannot be resolved — absent, evicted, corrupt on disk, or a
//! delta that does not rebuild the content it claims — becomes a NACK and the
//! gfn stays *pending* until a Fill for exactly that content, or any newer
//! record for the gfn, arrives. So a forged or stale reference never yields
//! wrong data, and a late Fill never overwrites a newer version of a page.
//!
//! A batch is checked completely (structure, lengths, decompression, delta
//! encodings, Fill hashes) before any page state changes, so a rejected
//! batch leaves the decoder's pages as they were. (A rejected batch of a
//! long-distance stream does end that stream: later batches of it are
//! refused, see [`crate::compress`].) Batches must be decoded in the order
//! the encoder produced them.

use std::collections::HashMap;

use crate::compress::{LongDistance, SectionDecoder, MAX_WINDOW_LOG, MIN_WINDOW_LOG};
use crate::error::CodecError;
use crate::fingerprint::Fingerprint;
use crate::page::{zero_page, Gfn, PageBytes, PAGE_SIZE};
use crate::page_cache::PageCache;
use crate::record::{self, Record};
use crate::store::ContentStore;

/// Decoder settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderConfig {
    /// Memory for content received this session, bytes.
    pub session_cache_bytes: usize,
    /// Also record every received page in the content store.
    pub store_received: bool,
    /// log2 of the largest long-distance window a source may use (memory
    /// this side holds for the stream): at least the source's
    /// `codec.long_distance.window_log`.
    pub max_window_log: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            session_cache_bytes: 256 << 20,
            store_received: true,
            max_window_log: LongDistance::default().window_log,
        }
    }
}

/// The result of decoding one batch.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Rebuilt pages in stream order (a later entry for a gfn supersedes an
    /// earlier one).
    pub pages: Vec<(Gfn, Box<PageBytes>)>,
    /// (gfn, content) the decoder could not resolve: send to the source.
    pub nacks: Vec<(Gfn, Fingerprint)>,
}

/// Pages by record kind, and NACK counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    pub batches: u64,
    pub wire_bytes: u64,
    pub zero: u64,
    pub refs_resolved: u64,
    pub delta: u64,
    pub literal: u64,
    pub raw: u64,
    /// Fills that resolved a pending page.
    pub fill_applied: u64,
    /// Fills for a page already superseded (ignored).
    pub fill_stale: u64,
    pub nacks: u64,
    /// Content store errors (logged; the page was still delivered).
    pub store_errors: u64,
}

/// The destination-side codec state for one migration session.
pub struct Decoder<S: ContentStore> {
    cfg: DecoderConfig,
    store: S,
    session: PageCache<Fingerprint>,
    pending: HashMap<Gfn, Fingerprint>,
    sections: SectionDecoder,
    a: Vec<u8>,
    stats: DecoderStats,
}

impl<S: ContentStore> Decoder<S> {
    pub fn new(cfg: DecoderConfig, store: S) -> Result<Self, CodecError> {
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&cfg.max_window_log) {
            return Err(CodecError::Config {
                key: "decoder.max_window_log",
                why: format!("must be between {MIN_WINDOW_LOG} and {MAX_WINDOW_LOG}"),
            });
        }
        Ok(Decoder {
            sections: SectionDecoder::new(cfg.max_window_log)?,
            session: PageCache::new(cfg.session_cache_bytes / PAGE_SIZE),
            cfg,
            store,
            pending: HashMap::new(),
            a: Vec::new(),
            stats: DecoderStats::default(),
        })
    }

    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// Gfns still waiting for content (NACKed, not yet filled). The session
    /// is complete only when this is empty.
    pub fn pending(&self) -> impl Iterator<Item = (Gfn, Fingerprint)> + '_ {
        self.pending.iter().map(|(g, f)| (*g, *f))
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Resolves content `fp`: session cache, then the store.
    fn lookup(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> bool {
        if let Some((_, data)) = self.session.get(*fp) {
            *out = *data;
            return true;
        }
        match self.store.get(fp, out) {
            Ok(found) => found,
            Err(e) => {
                self.stats.store_errors += 1;
                tracing::warn!(error = %e, "page store lookup failed; treating as a miss");
                false
            }
        }
    }

    fn remember(&mut self, fp: Fingerprint, page: &PageBytes) {
        self.session.put(fp, fp, page);
        if self.cfg.store_received {
            if let Err(e) = self.store.put(&fp, page) {
                self.stats.store_errors += 1;
                tracing::warn!(error = %e, "page store insert failed; continuing without it");
            }
        }
    }

    fn deliver(&mut self, out: &mut Decoded, gfn: Gfn, page: Box<PageBytes>) {
        self.pending.remove(&gfn);
        out.pages.push((gfn, page));
    }

    fn nack(&mut self, out: &mut Decoded, gfn: Gfn, fp: Fingerprint) {
        self.pending.insert(gfn, fp);
        self.stats.nacks += 1;
        out.nacks.push((gfn, fp));
    }

    /// Decodes one whole batch (see [`record::frame_len`] to cut a stream).
    pub fn decode(&mut self, batch: &[u8]) -> Result<Decoded, CodecError> {
        let mut a = std::mem::take(&mut self.a);
        let result = self.decode_with(batch, &mut a);
        self.a = a;
        result
    }

    fn decode_with(&mut self, batch: &[u8], a: &mut Vec<u8>) -> Result<Decoded, CodecError> {
        let parsed = record::parse(batch, &mut self.sections, a)?;

        // Check every Fill's content before changing any state.
        let mut a_at = 0usize;
        let mut fill_fps = Vec::new();
        for r in &parsed.records {
            match *r {
                Record::Literal { .. } => a_at += PAGE_SIZE,
                Record::Delta { len, .. } => a_at += len as usize,
                Record::Fill { gfn, fp } => {
                    let page: &PageBytes = a[a_at..a_at + PAGE_SIZE].try_into().expect("page");
                    if Fingerprint::of(page) != fp {
                        return Err(CodecError::FillMismatch { gfn });
                    }
                    fill_fps.push(fp);
                    a_at += PAGE_SIZE;
                }
                _ => {}
            }
        }

        self.stats.batches += 1;
        self.stats.wire_bytes += batch.len() as u64;
        let mut out = Decoded {
            pages: Vec::with_capacity(parsed.records.len()),
            nacks: Vec::new(),
        };
        let mut a_at = 0usize;
        let mut b_at = 0usize;
        let mut fills = fill_fps.into_iter();
        for r in parsed.records {
            match r {
                Record::Zero { gfn } => {
                    self.stats.zero += 1;
                    self.deliver(&mut out, gfn, zero_page());
                }
                Record::Ref { gfn, fp } => {
                    let mut page = zero_page();
                    if self.lookup(&fp, &mut page) {
                        self.stats.refs_resolved += 1;
                        self.deliver(&mut out, gfn, page);
                    } else {
                        self.nack(&mut out, gfn, fp);
                    }
                }
                Record::Literal { gfn } | Record::Raw { gfn } => {
                    let page: Box<PageBytes> = if matches!(r, Record::Literal { .. }) {
                        self.stats.literal += 1;
                        a_at += PAGE_SIZE;
                        Box::new(a[a_at - PAGE_SIZE..a_at].try_into().expect("page"))
                    } else {
                        self.stats.raw += 1;
                        b_at += PAGE_SIZE;
                        Box::new(parsed.b[b_at - PAGE_SIZE..b_at].try_into().expect("page"))
                    };
                    let fp = Fingerprint::of(&page);
                    self.remember(fp, &page);
                    self.deliver(&mut out, gfn, page);
                }
                Record::Delta {
                    gfn,
                    base,
                    target,
                    len,
                } => {
                    let d = &a[a_at..a_at + len as usize];
                    a_at += len as usize;
                    let mut page = zero_page();
                    let rebuilt = self.lookup(&base, &mut page)
                        && crate::delta::apply(&mut page, d).is_ok()
                        && Fingerprint::of(&page) == target;
                    if rebuilt {
                        self.stats.delta += 1;
                        self.remember(target, &page);
                        self.deliver(&mut out, gfn, page);
                    } else {
                        self.nack(&mut out, gfn, target);
                    }
                }
                Record::Fill { gfn, fp } => {
                    let page: Box<PageBytes> =
                        Box::new(a[a_at..a_at + PAGE_SIZE].try_into().expect("page"));
                    a_at += PAGE_SIZE;
                    let checked = fills.next();
                    debug_assert_eq!(checked, Some(fp));
                    self.remember(fp, &page);
                    if self.pending.get(&gfn) == Some(&fp) {
                        self.stats.fill_applied += 1;
                        self.deliver(&mut out, gfn, page);
                    } else {
                        self.stats.fill_stale += 1;
                    }
                }
            }
        }
        Ok(out)
    }
}
