//! The versioned wire format of records and batches.
//!
//! A batch is self-delimiting, and self-contained unless it is part of a
//! long-distance stream (flag bit 2: it then decodes only after every
//! earlier batch of its stream, see [`crate::compress`]):
//!
//! ```text
//! header (32 bytes, little-endian)
//!   0  magic "WMCB"          4  version (2)
//!   5  flags: how section A is stored — bit 0 zstd frame, bit 1 LZ4 block,
//!      bit 2 long-distance zstd stream, bit 3 (with bit 2) a new stream
//!      starts here; none: stored as is
//!   6  level i8 (the level the source encoded at; informational)
//!   7  reserved u8 = 0       8  total_len u32 (whole batch incl. header)
//!  12  record_count u32     16  table_len u32
//!  20  a_raw_len u32        24  a_stored_len u32  28  b_len u32
//! record table (table_len bytes): per record `kind u8, gfn u64`, then
//!   0 Zero    —
//!   1 Ref     fingerprint[32]                 content the destination holds
//!   2 Delta   base[32] target[32] len u16     `len` delta bytes in section A
//!   3 Literal —                               4096 bytes in section A
//!   4 Raw     —                               4096 bytes in section B
//!   5 Fill    fingerprint[32]                 4096 bytes in section A (a NACK answer)
//! section A (a_stored_len bytes): a_raw_len bytes, compressed as the flags say
//! section B (b_len bytes): incompressible pages, stored as is
//! ```
//!
//! Version 1 (one zstd frame per batch, no level byte) is refused with
//! [`CodecError::UnsupportedVersion`]: both gateways must run the same build.
//!
//! Parsing checks every length and count against the header, the limits
//! below and the record table before anything is allocated or decompressed,
//! and returns [`CodecError`] — never panics — on any inconsistency.

use crate::compress::{self, LimitedVec, SectionDecoder, SectionEncoder, KNOWN_FLAGS};
use crate::delta;
use crate::error::CodecError;
use crate::fingerprint::{Fingerprint, FINGERPRINT_LEN};
use crate::page::{Gfn, PageBytes, PAGE_SIZE};

/// Magic at the start of every batch.
pub const BATCH_MAGIC: [u8; 4] = *b"WMCB";
/// Batch format version this build writes and reads.
pub const BATCH_VERSION: u8 = 2;
/// Bytes of batch header.
pub const HEADER_LEN: usize = 32;
/// Most records in one batch.
pub const MAX_RECORDS: usize = 65_536;
/// Largest section A (decompressed) or section B.
pub const MAX_SECTION_LEN: usize = 32 << 20;
/// Largest whole batch on the wire.
pub const MAX_BATCH_LEN: usize = 80 << 20;
/// Largest delta the decoder accepts (the encoder emits far smaller ones).
pub const MAX_DELTA_LEN: usize = 2 * PAGE_SIZE;

/// Record kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Zero = 0,
    Ref = 1,
    Delta = 2,
    Literal = 3,
    Raw = 4,
    Fill = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Kind, CodecError> {
        Ok(match b {
            0 => Kind::Zero,
            1 => Kind::Ref,
            2 => Kind::Delta,
            3 => Kind::Literal,
            4 => Kind::Raw,
            5 => Kind::Fill,
            other => return Err(CodecError::UnknownRecordKind(other)),
        })
    }
}

/// One parsed record of the table. Payload bytes live in the sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The page is all zeros.
    Zero { gfn: Gfn },
    /// The page's content is the one with this fingerprint.
    Ref { gfn: Gfn, fp: Fingerprint },
    /// XOR delta (`len` bytes, section A) from content `base` to `target`.
    Delta {
        gfn: Gfn,
        base: Fingerprint,
        target: Fingerprint,
        len: u16,
    },
    /// Full page in section A (compressed).
    Literal { gfn: Gfn },
    /// Full page in section B (stored raw).
    Raw { gfn: Gfn },
    /// Full page in section A answering a NACK of (`gfn`, `fp`).
    Fill { gfn: Gfn, fp: Fingerprint },
}

/// Assembles one batch; reused across batches to keep its buffers.
#[derive(Default)]
pub struct BatchWriter {
    table: Vec<u8>,
    a: Vec<u8>,
    b: Vec<u8>,
    records: usize,
    payload_pages: usize,
    scratch: Vec<u8>,
}

/// What [`BatchWriter::finish`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Whether section A went out zstd-compressed (else stored: incompressible).
    pub a_compressed: bool,
    /// Section A bytes before compression.
    pub a_raw_len: usize,
    /// Total wire bytes of the batch.
    pub wire_len: usize,
}

impl BatchWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records pushed since the last finish.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Full pages (and page-sized equivalents of delta bytes) in the sections.
    pub fn payload_pages(&self) -> usize {
        self.payload_pages
    }

    /// Bytes currently in section A.
    pub fn a_len(&self) -> usize {
        self.a.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn head(&mut self, kind: Kind, gfn: Gfn) {
        self.records += 1;
        self.table.push(kind as u8);
        self.table.extend_from_slice(&gfn.0.to_le_bytes());
    }

    pub fn push_zero(&mut self, gfn: Gfn) {
        self.head(Kind::Zero, gfn);
    }

    pub fn push_ref(&mut self, gfn: Gfn, fp: &Fingerprint) {
        self.head(Kind::Ref, gfn);
        self.table.extend_from_slice(fp.as_bytes());
    }

    pub fn push_literal(&mut self, gfn: Gfn, page: &PageBytes) {
        self.head(Kind::Literal, gfn);
        self.a.extend_from_slice(page);
        self.payload_pages += 1;
    }

    pub fn push_raw(&mut self, gfn: Gfn, page: &PageBytes) {
        self.head(Kind::Raw, gfn);
        self.b.extend_from_slice(page);
        self.payload_pages += 1;
    }

    pub fn push_fill(&mut self, gfn: Gfn, fp: &Fingerprint, page: &PageBytes) {
        self.head(Kind::Fill, gfn);
        self.table.extend_from_slice(fp.as_bytes());
        self.a.extend_from_slice(page);
        self.payload_pages += 1;
    }

    /// Pushes a delta record from content `base` to content `target` whose
    /// delta bytes (from [`delta::encode`], at most [`MAX_DELTA_LEN`]) are
    /// `delta`.
    pub fn push_delta(&mut self, gfn: Gfn, base: &Fingerprint, target: &Fingerprint, delta: &[u8]) {
        debug_assert!(delta.len() <= MAX_DELTA_LEN);
        let len = delta.len();
        self.a.extend_from_slice(delta);
        self.head(Kind::Delta, gfn);
        self.table.extend_from_slice(base.as_bytes());
        self.table.extend_from_slice(target.as_bytes());
        self.table.extend_from_slice(&(len as u16).to_le_bytes());
        self.payload_pages += usize::from(len * 4 >= PAGE_SIZE);
    }

    /// Pushes a delta record from `old` (content `base`) to `new` (content
    /// `target`) if the delta fits in `limit` bytes; returns its length.
    pub fn try_push_delta(
        &mut self,
        gfn: Gfn,
        base: &Fingerprint,
        target: &Fingerprint,
        old: &PageBytes,
        new: &PageBytes,
        limit: usize,
    ) -> Option<usize> {
        let len = delta::encode(old, new, limit.min(MAX_DELTA_LEN), &mut self.a)?;
        self.head(Kind::Delta, gfn);
        self.table.extend_from_slice(base.as_bytes());
        self.table.extend_from_slice(target.as_bytes());
        self.table.extend_from_slice(&(len as u16).to_le_bytes());
        // Count deltas as a fraction of a page for batch sizing.
        self.payload_pages += usize::from(len * 4 >= PAGE_SIZE);
        Some(len)
    }

    /// Emits the batch into `out` (replacing its content) and resets the
    /// writer. Section A is zstd-compressed with `zstd` unless that does not
    /// make it smaller, in which case it is stored as is.
    pub fn finish(
        &mut self,
        zstd: &mut zstd::bulk::Compressor<'static>,
        out: &mut Vec<u8>,
    ) -> BatchSummary {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut flags = 0;
        if !self.a.is_empty() {
            scratch.reserve(self.a.len());
            let mut limited = LimitedVec {
                v: &mut scratch,
                cap: self.a.len() - 1,
            };
            if matches!(zstd.compress_to_buffer(&self.a, &mut limited), Ok(n) if n < self.a.len()) {
                flags = compress::FLAG_A_ZSTD;
            }
        }
        let s = self.emit(flags, 0, &scratch, out);
        self.scratch = scratch;
        s
    }

    /// Emits the batch into `out` (replacing its content) and resets the
    /// writer, compressing section A with `sections` (its method and level).
    pub fn finish_with(
        &mut self,
        sections: &mut SectionEncoder,
        out: &mut Vec<u8>,
    ) -> BatchSummary {
        let mut scratch = std::mem::take(&mut self.scratch);
        let flags = sections.compress(&self.a, &mut scratch);
        let level = sections.level().clamp(i8::MIN as i32, i8::MAX as i32) as i8;
        let s = self.emit(flags, level, &scratch, out);
        self.scratch = scratch;
        s
    }

    /// Writes the batch: `stored` is section A as compressed per `flags`
    /// (ignored when `flags` is 0: section A goes as is).
    fn emit(&mut self, flags: u8, level: i8, stored: &[u8], out: &mut Vec<u8>) -> BatchSummary {
        let a_stored: &[u8] = if flags == 0 { &self.a } else { stored };
        let total = HEADER_LEN + self.table.len() + a_stored.len() + self.b.len();
        out.clear();
        out.reserve(total);
        out.extend_from_slice(&BATCH_MAGIC);
        out.push(BATCH_VERSION);
        out.push(flags);
        out.extend_from_slice(&[level as u8, 0]);
        for v in [
            total,
            self.records,
            self.table.len(),
            self.a.len(),
            a_stored.len(),
            self.b.len(),
        ] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        out.extend_from_slice(&self.table);
        out.extend_from_slice(a_stored);
        out.extend_from_slice(&self.b);
        let summary = BatchSummary {
            a_compressed: flags != 0,
            a_raw_len: self.a.len(),
            wire_len: total,
        };
        self.table.clear();
        self.a.clear();
        self.b.clear();
        self.records = 0;
        self.payload_pages = 0;
        summary
    }
}

/// Length of the batch that starts `buf`, once enough of its header is
/// present (`Ok(None)` means "read more bytes"). For stream framing.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if buf.len() < 12 {
        return Ok(None);
    }
    check_magic_version(buf)?;
    let total = le32(buf, 8) as usize;
    if total < HEADER_LEN {
        return Err(CodecError::Invalid(
            "batch total_len smaller than its header",
        ));
    }
    if total > MAX_BATCH_LEN {
        return Err(CodecError::TooLarge {
            what: "batch total_len",
            value: total as u64,
            max: MAX_BATCH_LEN as u64,
        });
    }
    Ok(Some(total))
}

fn check_magic_version(buf: &[u8]) -> Result<(), CodecError> {
    let magic: [u8; 4] = buf[..4].try_into().expect("4 bytes");
    if magic != BATCH_MAGIC {
        return Err(CodecError::BadMagic {
            what: "batch",
            found: magic,
        });
    }
    if buf[4] != BATCH_VERSION {
        return Err(CodecError::UnsupportedVersion {
            what: "batch",
            found: buf[4],
            supported: BATCH_VERSION,
        });
    }
    Ok(())
}

fn le32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// A batch whose structure has been fully checked.
pub struct ParsedBatch<'a> {
    pub records: Vec<Record>,
    /// Section B (raw pages), borrowed from the input.
    pub b: &'a [u8],
}

/// Parses and checks one batch, which must be exactly `buf`. Section A is
/// decompressed (or copied) into `a_out` by `sections`; its delta encodings
/// are validated.
pub fn parse<'a>(
    buf: &'a [u8],
    sections: &mut SectionDecoder,
    a_out: &mut Vec<u8>,
) -> Result<ParsedBatch<'a>, CodecError> {
    if buf.len() < HEADER_LEN {
        return Err(CodecError::Truncated {
            what: "batch header",
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    check_magic_version(buf)?;
    let flags = buf[5];
    if flags & !KNOWN_FLAGS != 0 || buf[7] != 0 {
        return Err(CodecError::Invalid(
            "unknown batch flags or reserved bits set",
        ));
    }
    let [total, count, table_len, a_raw_len, a_stored_len, b_len] =
        [8, 12, 16, 20, 24, 28].map(|at| le32(buf, at) as usize);
    if total != buf.len() {
        return Err(CodecError::LengthMismatch {
            what: "batch total_len vs bytes given",
            declared: total as u64,
            actual: buf.len() as u64,
        });
    }
    if count > MAX_RECORDS {
        return Err(CodecError::TooLarge {
            what: "batch record_count",
            value: count as u64,
            max: MAX_RECORDS as u64,
        });
    }
    for (what, v) in [
        ("batch section A length", a_raw_len),
        ("batch stored section A length", a_stored_len),
        ("batch section B length", b_len),
    ] {
        if v > MAX_SECTION_LEN {
            return Err(CodecError::TooLarge {
                what,
                value: v as u64,
                max: MAX_SECTION_LEN as u64,
            });
        }
    }
    let parts = HEADER_LEN as u64 + table_len as u64 + a_stored_len as u64 + b_len as u64;
    if parts != total as u64 {
        return Err(CodecError::LengthMismatch {
            what: "batch total_len vs header+table+sections",
            declared: total as u64,
            actual: parts,
        });
    }
    let table = &buf[HEADER_LEN..HEADER_LEN + table_len];
    let a_stored = &buf[HEADER_LEN + table_len..HEADER_LEN + table_len + a_stored_len];
    let b = &buf[HEADER_LEN + table_len + a_stored_len..];

    // The table: every record, and the section bytes they need.
    let mut records = Vec::with_capacity(count);
    let mut rest = table;
    let mut a_need = 0u64;
    let mut b_need = 0u64;
    let mut deltas: Vec<(usize, u16, Gfn)> = Vec::new();
    for _ in 0..count {
        let (kind, gfn) = match rest {
            [k, g @ ..] if g.len() >= 8 => (
                Kind::from_u8(*k)?,
                Gfn(u64::from_le_bytes(g[..8].try_into().expect("8 bytes"))),
            ),
            _ => {
                return Err(CodecError::Truncated {
                    what: "record header in batch table",
                    need: 9,
                    have: rest.len(),
                })
            }
        };
        rest = &rest[9..];
        let extra = match kind {
            Kind::Ref | Kind::Fill => FINGERPRINT_LEN,
            Kind::Delta => 2 * FINGERPRINT_LEN + 2,
            _ => 0,
        };
        if rest.len() < extra {
            return Err(CodecError::Truncated {
                what: "record body in batch table",
                need: extra,
                have: rest.len(),
            });
        }
        let (body, tail) = rest.split_at(extra);
        rest = tail;
        let fp_at = |at: usize| Fingerprint(body[at..at + 32].try_into().expect("32 bytes"));
        let rec = match kind {
            Kind::Zero => Record::Zero { gfn },
            Kind::Ref => Record::Ref { gfn, fp: fp_at(0) },
            Kind::Literal => {
                a_need += PAGE_SIZE as u64;
                Record::Literal { gfn }
            }
            Kind::Raw => {
                b_need += PAGE_SIZE as u64;
                Record::Raw { gfn }
            }
            Kind::Fill => {
                a_need += PAGE_SIZE as u64;
                Record::Fill { gfn, fp: fp_at(0) }
            }
            Kind::Delta => {
                let len = u16::from_le_bytes([body[64], body[65]]);
                if len as usize > MAX_DELTA_LEN {
                    return Err(CodecError::TooLarge {
                        what: "delta length",
                        value: len as u64,
                        max: MAX_DELTA_LEN as u64,
                    });
                }
                deltas.push((a_need as usize, len, gfn));
                a_need += len as u64;
                Record::Delta {
                    gfn,
                    base: fp_at(0),
                    target: fp_at(32),
                    len,
                }
            }
        };
        records.push(rec);
    }
    if !rest.is_empty() {
        return Err(CodecError::LengthMismatch {
            what: "batch table_len vs its records",
            declared: table_len as u64,
            actual: (table_len - rest.len()) as u64,
        });
    }
    if a_need != a_raw_len as u64 {
        return Err(CodecError::LengthMismatch {
            what: "batch section A length vs its records",
            declared: a_raw_len as u64,
            actual: a_need,
        });
    }
    if b_need != b_len as u64 {
        return Err(CodecError::LengthMismatch {
            what: "batch section B length vs its records",
            declared: b_len as u64,
            actual: b_need,
        });
    }

    // Section A: decompress into exactly a_raw_len bytes (never more).
    sections.decompress(flags, a_stored, a_raw_len, a_out)?;
    for (at, len, gfn) in deltas {
        delta::validate(&a_out[at..at + len as usize])
            .map_err(|why| CodecError::BadDelta { gfn, why })?;
    }
    Ok(ParsedBatch { records, b })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_literal_batch() -> Vec<u8> {
        let mut w = BatchWriter::new();
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        w.push_zero(Gfn(1));
        w.push_literal(Gfn(2), &[b'a'; PAGE_SIZE]);
        let mut out = Vec::new();
        let s = w.finish(&mut z, &mut out);
        assert!(s.a_compressed);
        out
    }

    #[test]
    fn batch_parses_back() {
        let out = one_literal_batch();
        assert_eq!(frame_len(&out).unwrap(), Some(out.len()));
        let mut d = SectionDecoder::new(27).unwrap();
        let mut a = Vec::new();
        let p = parse(&out, &mut d, &mut a).unwrap();
        assert_eq!(
            p.records,
            vec![
                Record::Zero { gfn: Gfn(1) },
                Record::Literal { gfn: Gfn(2) }
            ]
        );
        assert_eq!(a, vec![b'a'; PAGE_SIZE]);
    }

    #[test]
    fn incompressible_section_is_stored() {
        let mut w = BatchWriter::new();
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        let mut page = [0u8; PAGE_SIZE];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in page.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        w.push_literal(Gfn(0), &page);
        let mut out = Vec::new();
        let s = w.finish(&mut z, &mut out);
        assert!(!s.a_compressed);
        let mut d = SectionDecoder::new(27).unwrap();
        let mut a = Vec::new();
        parse(&out, &mut d, &mut a).unwrap();
        assert_eq!(&a[..], &page[..]);
    }

    #[test]
    fn header_lies_are_rejected() {
        let good = one_literal_batch();
        let mut d = SectionDecoder::new(27).unwrap();
        let mut a = Vec::new();
        // Declared section A larger than its records need.
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&(PAGE_SIZE as u32 + 1).to_le_bytes());
        assert!(matches!(
            parse(&bad, &mut d, &mut a),
            Err(CodecError::LengthMismatch { .. })
        ));
        // Huge record count.
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&bad, &mut d, &mut a),
            Err(CodecError::TooLarge { .. })
        ));
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(parse(&good[..n], &mut d, &mut a).is_err());
        }
        // Version 1 (before LZ4 and long-distance streams): refused by name.
        let mut bad = good.clone();
        bad[4] = 1;
        let Err(e) = parse(&bad, &mut d, &mut a) else {
            panic!("version 1 accepted")
        };
        assert!(matches!(
            e,
            CodecError::UnsupportedVersion {
                found: 1,
                supported: 2,
                ..
            }
        ));
        assert!(e.to_string().contains("same wanmig version"), "{e}");
        assert!(frame_len(&bad).is_err());
        // Unknown flag bits.
        let mut bad = good.clone();
        bad[5] |= 0x80;
        assert!(matches!(
            parse(&bad, &mut d, &mut a),
            Err(CodecError::Invalid(_))
        ));
        // Unknown kind.
        let mut bad = good.clone();
        bad[HEADER_LEN] = 77;
        assert!(matches!(
            parse(&bad, &mut d, &mut a),
            Err(CodecError::UnknownRecordKind(77))
        ));
    }
}
