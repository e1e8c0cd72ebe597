//! Section A's compression: how a batch's compressible bytes are shrunk on
//! the source and restored on the destination.
//!
//! Four methods, chosen by the encoder's level and options:
//! - **zstd context stream** (levels −7..=19, the default): one zstd frame
//!   that spans consecutive batches with a window of
//!   2^`context_window_log` bytes, flushed at every batch boundary so each
//!   batch decodes as soon as it arrives — but only in order, after every
//!   earlier stream batch. Each batch's matches reach back into what earlier
//!   batches carried (as QEMU's per-channel zstd stream does), instead of
//!   starting from an empty window every 128 KiB;
//! - **zstd long-distance stream** ([`LongDistance`]): the same stream with
//!   long-distance matching and a larger window. It also finds duplicates
//!   far back (content repeated at unaligned offsets, or pages that differ
//!   slightly from one sent long ago), for some CPU;
//! - **zstd, one frame per batch** (context window 0): each batch decodes
//!   on its own;
//! - **LZ4, one block per batch** ([`LZ4_LEVEL`]): the CPU-bound choice.
//!   zstd is sequence-bound on short-match text (the demo mix's text runs at
//!   ~250 MB/s at level 1 and barely faster at negative levels on this
//!   machine), LZ4 encodes the same text ~1.5× faster at a lower ratio.
//!
//! Both streams travel with [`FLAG_A_STREAM`]: long-distance matching is
//! the compressor's choice alone, the decoder needs only the window. A
//! stream batch with [`FLAG_A_STREAM_START`] starts a new stream (a new
//! frame, an empty window): the encoder restarts when its level or stream
//! settings change (zstd applies a new level only at a frame start) or
//! after an error. On the destination, a stream batch that fails to decode
//! leaves the stream's state unknown, so every later stream batch is
//! refused until a new stream starts; the session should be aborted anyway.

use serde::{Deserialize, Serialize};
use zstd::zstd_safe::{self, CParameter, DParameter, InBuffer, OutBuffer, ResetDirective};

use crate::error::CodecError;

/// The level value that selects LZ4 instead of zstd (below zstd's fastest).
pub const LZ4_LEVEL: i32 = -8;
/// Lowest (fastest) level the codec uses: LZ4, one step below zstd's
/// fastest mode (-7).
pub const MIN_LEVEL: i32 = LZ4_LEVEL;
/// Highest zstd level the codec uses.
pub const MAX_LEVEL: i32 = 19;

/// Section A is one zstd frame.
pub const FLAG_A_ZSTD: u8 = 1;
/// Section A is one LZ4 block.
pub const FLAG_A_LZ4: u8 = 2;
/// Section A continues the session's long-distance zstd stream.
pub const FLAG_A_STREAM: u8 = 4;
/// With [`FLAG_A_STREAM`]: a new stream starts with this batch.
pub const FLAG_A_STREAM_START: u8 = 8;
/// Every flag bit this version knows.
pub const KNOWN_FLAGS: u8 = FLAG_A_ZSTD | FLAG_A_LZ4 | FLAG_A_STREAM | FLAG_A_STREAM_START;

/// Long-distance matching across the whole migration stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongDistance {
    /// log2 of the match window in bytes (27 = 128 MiB). The source keeps
    /// this much recent stream history, and so must the destination: its
    /// `DecoderConfig::max_window_log` must be at least this.
    pub window_log: u32,
}

impl Default for LongDistance {
    fn default() -> Self {
        LongDistance { window_log: 27 }
    }
}

/// Default window of the context stream, log2 bytes (512 KiB: four default
/// batches of history, zstd's own window at levels 1-2 and QEMU's per
/// multifd channel). At low levels zstd's match tables keep only recent
/// positions, so a larger window finds no more and costs cache misses.
pub const DEFAULT_CONTEXT_WINDOW_LOG: u32 = 19;

/// Smallest and largest window the codec accepts (zstd's own limits are
/// 10..=31; above 30 the memory cost is not worth it).
pub const MIN_WINDOW_LOG: u32 = 10;
pub const MAX_WINDOW_LOG: u32 = 30;

/// zstd's error code (as its functions return it: the negated enum value)
/// for a frame whose window exceeds the decoder's `WindowLogMax`.
const WINDOW_TOO_LARGE: usize = 0usize.wrapping_sub(
    zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge as usize,
);

fn zstd_err(code: usize) -> CodecError {
    CodecError::Zstd(std::io::Error::other(zstd_safe::get_error_name(code)))
}

/// The source's section compressor: keeps the contexts across batches.
pub struct SectionEncoder {
    level: i32,
    bulk: zstd::bulk::Compressor<'static>,
    lz4_buf: Vec<u8>,
    long: Option<LongDistance>,
    /// Window of the context stream (log2 bytes); 0: one frame per batch.
    context: u32,
    stream: Option<zstd_safe::CCtx<'static>>,
    /// The next stream batch starts a new stream.
    restart: bool,
}

impl SectionEncoder {
    pub fn new(level: i32, long: Option<LongDistance>) -> Result<Self, CodecError> {
        let zstd_level = if level == LZ4_LEVEL { 1 } else { level };
        Ok(SectionEncoder {
            level,
            bulk: zstd::bulk::Compressor::new(zstd_level).map_err(CodecError::Zstd)?,
            lz4_buf: Vec::new(),
            long,
            context: 0,
            stream: None,
            restart: true,
        })
    }

    /// The context stream's window (log2 bytes; 0: one frame per batch).
    pub fn context_window_log(&self) -> u32 {
        self.context
    }

    /// Compresses consecutive batches as one stream with a window of
    /// 2^`window_log` bytes (0: each batch on its own), from the next
    /// section. Long-distance matching, when on, takes precedence.
    pub fn set_context(&mut self, window_log: u32) {
        if window_log != self.context {
            self.context = window_log;
            if self.long.is_none() {
                self.stream = None;
                self.restart = true;
            }
        }
    }

    /// The stream in force: its window (log2 bytes) and whether it does
    /// long-distance matching; `None` for one frame per batch.
    fn stream_params(&self) -> Option<(u32, bool)> {
        match (self.long, self.context) {
            (Some(ld), _) => Some((ld.window_log, true)),
            (None, 0) => None,
            (None, w) => Some((w, false)),
        }
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    pub fn long_distance(&self) -> Option<LongDistance> {
        self.long
    }

    /// Takes effect from the next section; a running long-distance stream
    /// restarts (zstd changes the level only at a frame start).
    pub fn set_level(&mut self, level: i32) -> Result<(), CodecError> {
        if level == self.level {
            return Ok(());
        }
        if level != LZ4_LEVEL {
            self.bulk
                .set_compression_level(level)
                .map_err(CodecError::Zstd)?;
        }
        self.level = level;
        self.restart = true;
        Ok(())
    }

    /// Turns long-distance matching on or off from the next section.
    pub fn set_long_distance(&mut self, long: Option<LongDistance>) {
        if long != self.long {
            self.long = long;
            self.stream = None;
            self.restart = true;
        }
    }

    /// Compresses section `a` into `out` (cleared first). Returns the batch
    /// flags; 0 means "stored": `out` is empty and `a` goes out as is
    /// because compression would not shrink it.
    pub fn compress(&mut self, a: &[u8], out: &mut Vec<u8>) -> u8 {
        out.clear();
        if a.is_empty() {
            return 0;
        }
        if self.level == LZ4_LEVEL {
            return self.lz4(a, out);
        }
        if let Some((window_log, ldm)) = self.stream_params() {
            match self.stream_compress(window_log, ldm, a, out) {
                Ok(flags) => return flags,
                Err(e) => {
                    // Start over with a fresh stream; this batch goes stored.
                    tracing::warn!(error = %e, "zstd stream failed; restarting it");
                    self.stream = None;
                    self.restart = true;
                    out.clear();
                    return 0;
                }
            }
        }
        // Capacity a.len() - 1: zstd reports "too small" for output that
        // would not shrink, and the section is stored as is.
        out.reserve(a.len());
        let mut limited = LimitedVec {
            v: out,
            cap: a.len() - 1,
        };
        match self.bulk.compress_to_buffer(a, &mut limited) {
            Ok(n) if n < a.len() => FLAG_A_ZSTD,
            _ => {
                out.clear();
                0
            }
        }
    }

    fn lz4(&mut self, a: &[u8], out: &mut Vec<u8>) -> u8 {
        if self.lz4_buf.len() < a.len() {
            self.lz4_buf.resize(a.len(), 0);
        }
        // One byte less than the input: LZ4 gives up when it cannot shrink.
        let dst = &mut self.lz4_buf[..a.len() - 1];
        match lz4::block::compress_to_buffer(
            a,
            Some(lz4::block::CompressionMode::DEFAULT),
            false,
            dst,
        ) {
            Ok(n) if n > 0 && n < a.len() => {
                out.extend_from_slice(&self.lz4_buf[..n]);
                FLAG_A_LZ4
            }
            _ => 0,
        }
    }

    fn stream_compress(
        &mut self,
        window_log: u32,
        ldm: bool,
        a: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u8, CodecError> {
        let mut flags = FLAG_A_STREAM;
        if self.restart || self.stream.is_none() {
            match self.stream.as_mut() {
                // A level change: end the frame, keep the context's memory
                // (window, match tables) and its other parameters.
                Some(c) => {
                    c.reset(ResetDirective::SessionOnly).map_err(zstd_err)?;
                    c.set_parameter(CParameter::CompressionLevel(self.level))
                        .map_err(zstd_err)?;
                }
                None => {
                    let mut c = zstd_safe::CCtx::create();
                    for p in [
                        CParameter::CompressionLevel(self.level),
                        CParameter::EnableLongDistanceMatching(ldm),
                        CParameter::WindowLog(window_log),
                    ] {
                        c.set_parameter(p).map_err(zstd_err)?;
                    }
                    self.stream = Some(c);
                }
            }
            self.restart = false;
            flags |= FLAG_A_STREAM_START;
        }
        let cctx = self.stream.as_mut().expect("created above");
        out.reserve(zstd_safe::compress_bound(a.len()) + 64);
        let mut input = InBuffer::around(a);
        loop {
            let mut output = OutBuffer::around_pos(out, out.len());
            let left = cctx
                .compress_stream2(
                    &mut output,
                    &mut input,
                    zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .map_err(zstd_err)?;
            if left == 0 && input.pos == a.len() {
                return Ok(flags);
            }
            out.reserve(left.max(4096));
        }
    }
}

/// The destination's section decompressor: keeps the contexts across
/// batches, including the long-distance stream's window.
pub struct SectionDecoder {
    bulk: zstd::bulk::Decompressor<'static>,
    stream: Option<zstd_safe::DCtx<'static>>,
    /// A stream batch failed: refuse the stream until it restarts.
    broken: bool,
    max_window_log: u32,
}

impl SectionDecoder {
    /// `max_window_log` bounds the memory a long-distance stream may make
    /// this side hold (2^max_window_log bytes).
    pub fn new(max_window_log: u32) -> Result<Self, CodecError> {
        Ok(SectionDecoder {
            bulk: zstd::bulk::Decompressor::new().map_err(CodecError::Zstd)?,
            stream: None,
            broken: false,
            max_window_log,
        })
    }

    /// Restores section A (`stored`, compressed as `flags` say) into `out`,
    /// which must come out exactly `raw_len` bytes long.
    pub fn decompress(
        &mut self,
        flags: u8,
        stored: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.clear();
        let methods = flags & (FLAG_A_ZSTD | FLAG_A_LZ4 | FLAG_A_STREAM);
        if flags & FLAG_A_STREAM_START != 0 && methods != FLAG_A_STREAM {
            return Err(CodecError::Invalid(
                "batch flags: stream start without stream",
            ));
        }
        let n = match methods {
            0 => {
                if stored.len() != raw_len {
                    return Err(CodecError::LengthMismatch {
                        what: "stored section A",
                        declared: raw_len as u64,
                        actual: stored.len() as u64,
                    });
                }
                out.extend_from_slice(stored);
                raw_len
            }
            FLAG_A_ZSTD => {
                out.reserve(raw_len);
                self.bulk
                    .decompress_to_buffer(stored, &mut *out)
                    .map_err(CodecError::Zstd)?
            }
            FLAG_A_LZ4 => {
                out.resize(raw_len, 0);
                let n = lz4::block::decompress_to_buffer(stored, Some(raw_len as i32), out)
                    .map_err(|e| CodecError::Lz4(e.to_string()))?;
                out.truncate(n);
                n
            }
            FLAG_A_STREAM => {
                let start = flags & FLAG_A_STREAM_START != 0;
                let r = self.stream_decompress(start, stored, raw_len, out);
                // A section that decoded to another length than declared
                // fails too: the source's stream and ours may be out of step
                // (zstd can hold back output of this batch), so the stream
                // is refused from here, as after a decode error.
                self.broken = !matches!(r, Ok(n) if n == raw_len);
                r?
            }
            _ => {
                return Err(CodecError::Invalid(
                    "batch flags name more than one compression method",
                ))
            }
        };
        if n != raw_len {
            return Err(CodecError::LengthMismatch {
                what: "decompressed section A",
                declared: raw_len as u64,
                actual: n as u64,
            });
        }
        Ok(())
    }

    fn stream_decompress(
        &mut self,
        start: bool,
        stored: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, CodecError> {
        if start {
            let mut d = zstd_safe::DCtx::create();
            d.set_parameter(DParameter::WindowLogMax(self.max_window_log))
                .map_err(zstd_err)?;
            self.stream = Some(d);
            self.broken = false;
        }
        if self.broken {
            return Err(CodecError::Invalid(
                "zstd stream batch after a failed one (the stream cannot continue; abort the session)",
            ));
        }
        let Some(dctx) = self.stream.as_mut() else {
            return Err(CodecError::Invalid(
                "zstd stream batch before the stream's start",
            ));
        };
        // One byte of room beyond raw_len, to notice a section that
        // decodes to more than it declares.
        out.reserve(raw_len + 1);
        let mut limited = LimitedVec {
            v: out,
            cap: raw_len + 1,
        };
        let mut input = InBuffer::around(stored);
        let mut output = OutBuffer::around(&mut limited);
        loop {
            let (in_before, out_before) = (input.pos, output.pos());
            dctx.decompress_stream(&mut output, &mut input)
                .map_err(|code| {
                    if code == WINDOW_TOO_LARGE {
                        CodecError::WindowTooLarge {
                            max_window_log: self.max_window_log,
                        }
                    } else {
                        zstd_err(code)
                    }
                })?;
            let progressed = input.pos != in_before || output.pos() != out_before;
            if !progressed || output.pos() > raw_len {
                break;
            }
        }
        if input.pos != stored.len() {
            return Err(CodecError::Invalid(
                "zstd stream section has bytes left after its content",
            ));
        }
        Ok(output.pos())
    }

    /// Forgets the stream (e.g. before reusing the decoder).
    pub fn reset_stream(&mut self) {
        if let Some(d) = self.stream.as_mut() {
            let _ = d.reset(ResetDirective::SessionOnly);
        }
        self.stream = None;
        self.broken = false;
    }
}

/// A `Vec` that zstd may fill only up to `cap` bytes, so that compressing
/// incompressible data fails fast instead of producing a larger output.
pub(crate) struct LimitedVec<'a> {
    pub(crate) v: &'a mut Vec<u8>,
    pub(crate) cap: usize,
}

// SAFETY: the pointer and capacity describe the Vec's own allocation, whose
// capacity is at least `cap` or is reported as smaller (`capacity()` takes
// the minimum); `filled_until` is only called by zstd with n <= capacity()
// after it wrote n initialised bytes.
unsafe impl zstd_safe::WriteBuf for LimitedVec<'_> {
    fn as_slice(&self) -> &[u8] {
        self.v.as_slice()
    }
    fn capacity(&self) -> usize {
        self.cap.min(self.v.capacity())
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.v.as_mut_ptr()
    }
    unsafe fn filled_until(&mut self, n: usize) {
        // SAFETY: zstd initialised the first n <= capacity() bytes.
        unsafe { self.v.set_len(n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words: [&[u8]; 6] = [
            b"alpha ", b"beta ", b"gamma ", b"delta\n", b"x = 1; ", b"fn ",
        ];
        let mut x = seed | 1;
        let mut v = Vec::new();
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(words[(x % 6) as usize]);
        }
        v.truncate(n);
        v
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn round_trip(enc: &mut SectionEncoder, dec: &mut SectionDecoder, a: &[u8]) -> (u8, usize) {
        let mut stored = Vec::new();
        let flags = enc.compress(a, &mut stored);
        let stored: &[u8] = if flags == 0 { a } else { &stored };
        let mut out = Vec::new();
        dec.decompress(flags, stored, a.len(), &mut out).unwrap();
        assert_eq!(out, a);
        (flags, stored.len())
    }

    #[test]
    fn every_method_round_trips() {
        let a = text(100_000, 3);
        let mut dec = SectionDecoder::new(27).unwrap();
        for (level, long, want) in [
            (1, None, FLAG_A_ZSTD),
            (-5, None, FLAG_A_ZSTD),
            (LZ4_LEVEL, None, FLAG_A_LZ4),
            (
                3,
                Some(LongDistance { window_log: 20 }),
                FLAG_A_STREAM | FLAG_A_STREAM_START,
            ),
        ] {
            let mut enc = SectionEncoder::new(level, long).unwrap();
            let (flags, len) = round_trip(&mut enc, &mut dec, &a);
            assert_eq!(flags, want, "level {level}");
            assert!(len < a.len() / 2, "level {level}: {len}");
        }
    }

    #[test]
    fn stream_matches_across_batches_and_restarts_on_level_change() {
        let mut enc = SectionEncoder::new(3, Some(LongDistance::default())).unwrap();
        let mut dec = SectionDecoder::new(27).unwrap();
        let a = text(64 << 10, 9);
        let (f1, first) = round_trip(&mut enc, &mut dec, &a);
        assert_eq!(f1, FLAG_A_STREAM | FLAG_A_STREAM_START);
        // The same content again, one byte shifted: found in the window.
        let (f2, again) = round_trip(&mut enc, &mut dec, &a[1..]);
        assert_eq!(f2, FLAG_A_STREAM);
        assert!(again * 20 < first, "repeat cost {again} vs first {first}");
        enc.set_level(5).unwrap();
        let (f3, restarted) = round_trip(&mut enc, &mut dec, &a[1..]);
        assert_eq!(f3, FLAG_A_STREAM | FLAG_A_STREAM_START);
        assert!(restarted > again * 5, "a restarted stream has no history");
    }

    #[test]
    fn context_stream_matches_the_previous_batch() {
        let mut dec = SectionDecoder::new(27).unwrap();
        // Random bytes: only a match into the earlier batch can shrink the
        // repeat.
        let a = noise(64 << 10, 11);
        // Per batch: the repeat costs as much as the first time.
        let mut alone = SectionEncoder::new(1, None).unwrap();
        assert_eq!(alone.context_window_log(), 0);
        let (f, first) = round_trip(&mut alone, &mut dec, &a);
        assert_eq!(f, 0, "stored: random bytes do not shrink alone");
        let (_, alone_again) = round_trip(&mut alone, &mut dec, &a[1..]);
        assert!(alone_again * 2 > first, "{alone_again} vs {first}");
        // Context stream: the next batch repeats the first at an unaligned
        // offset, and is found in the window.
        let mut ctx = SectionEncoder::new(1, None).unwrap();
        ctx.set_context(DEFAULT_CONTEXT_WINDOW_LOG);
        let (f1, _) = round_trip(&mut ctx, &mut dec, &a);
        assert_eq!(f1, FLAG_A_STREAM | FLAG_A_STREAM_START);
        let (f2, again) = round_trip(&mut ctx, &mut dec, &a[1..]);
        assert_eq!(f2, FLAG_A_STREAM);
        assert!(again * 5 < first, "repeat cost {again} vs first {first}");
        // Switching it off goes back to one frame per batch.
        ctx.set_context(0);
        let (f4, _) = round_trip(&mut ctx, &mut dec, &text(4096, 1));
        assert_eq!(f4, FLAG_A_ZSTD);
    }

    #[test]
    fn context_stream_needs_a_window_the_decoder_allows() {
        let mut enc = SectionEncoder::new(1, None).unwrap();
        enc.set_context(24);
        let mut dec = SectionDecoder::new(20).unwrap();
        let a = text(200_000, 13);
        let mut s = Vec::new();
        let f = enc.compress(&a, &mut s);
        let mut out = Vec::new();
        let err = dec.decompress(f, &s, a.len(), &mut out).unwrap_err();
        assert!(
            matches!(err, CodecError::WindowTooLarge { max_window_log: 20 }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("codec.context_window_log to at most 20"),
            "{err}"
        );
    }

    #[test]
    fn incompressible_section_is_stored_by_every_method() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let a: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for level in [1, LZ4_LEVEL] {
            let mut enc = SectionEncoder::new(level, None).unwrap();
            let mut out = Vec::new();
            assert_eq!(enc.compress(&a, &mut out), 0);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn broken_stream_is_refused_until_it_restarts() {
        let mut enc = SectionEncoder::new(1, Some(LongDistance { window_log: 20 })).unwrap();
        let mut dec = SectionDecoder::new(20).unwrap();
        let a = text(20_000, 4);
        let mut s1 = Vec::new();
        let f1 = enc.compress(&a, &mut s1);
        let mut s2 = Vec::new();
        let f2 = enc.compress(&a, &mut s2);
        let mut out = Vec::new();
        // A continuation before any start.
        assert!(dec.decompress(f2, &s2, a.len(), &mut out).is_err());
        dec.decompress(f1, &s1, a.len(), &mut out).unwrap();
        let mut bad = s2.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        bad.truncate(bad.len() - 2);
        assert!(dec.decompress(f2, &bad, a.len(), &mut out).is_err());
        assert!(
            dec.decompress(f2, &s2, a.len(), &mut out).is_err(),
            "a stream that failed must not continue"
        );
        // A fresh stream decodes again.
        let mut enc = SectionEncoder::new(1, Some(LongDistance { window_log: 20 })).unwrap();
        let (f, _) = round_trip(&mut enc, &mut dec, &a);
        assert_ne!(f & FLAG_A_STREAM_START, 0);
    }

    #[test]
    fn stream_batch_of_another_length_than_declared_breaks_the_stream() {
        for delta in [-1i64, 1] {
            let mut enc = SectionEncoder::new(1, Some(LongDistance { window_log: 20 })).unwrap();
            let mut dec = SectionDecoder::new(20).unwrap();
            let a = text(20_000, 6);
            let mut s1 = Vec::new();
            let f1 = enc.compress(&a, &mut s1);
            let mut s2 = Vec::new();
            let f2 = enc.compress(&a, &mut s2);
            let mut out = Vec::new();
            let lied = (a.len() as i64 + delta) as usize;
            assert!(matches!(
                dec.decompress(f1, &s1, lied, &mut out),
                Err(CodecError::LengthMismatch { .. })
            ));
            assert!(
                dec.decompress(f2, &s2, a.len(), &mut out).is_err(),
                "declared {lied}: a stream whose batch was refused must not continue"
            );
        }
    }

    #[test]
    fn window_larger_than_the_decoder_allows_is_an_error() {
        let mut enc = SectionEncoder::new(1, Some(LongDistance { window_log: 24 })).unwrap();
        let mut dec = SectionDecoder::new(20).unwrap();
        let a = text(200_000, 5);
        let mut s = Vec::new();
        let f = enc.compress(&a, &mut s);
        let mut out = Vec::new();
        let err = dec.decompress(f, &s, a.len(), &mut out).unwrap_err();
        assert!(
            matches!(err, CodecError::WindowTooLarge { max_window_log: 20 }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("codec.long_distance.window_log to at most 20"),
            "{err}"
        );
    }
}
