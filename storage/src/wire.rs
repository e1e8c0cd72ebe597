//! The payload of one block on the wire: zero (no bytes), raw, or
//! zstd-compressed; and the byte counts before and after that reduction.
//!
//! Layout: one kind byte (`0` zero, `1` raw, `2` zstd) followed by the bytes.
//! The gateway may wrap these payloads in its own records (and dedup them
//! against its page store); decoding never trusts the peer: lengths are
//! checked and decompression is capped at the block size.

use crate::error::StorageError;

const KIND_ZERO: u8 = 0;
const KIND_RAW: u8 = 1;
const KIND_ZSTD: u8 = 2;

/// A block's bytes as read at the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockContent<'a> {
    /// All zeros (a hole or a zero-filled block).
    Zero,
    /// The bytes (exactly the block's length).
    Data(&'a [u8]),
}

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // Compare 16 bytes at a time; the compiler vectorises this loop.
    let mut chunks = buf.chunks_exact(16);
    chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16-byte chunk")) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// Turns block contents into payloads, compressing when it pays.
pub struct BlockEncoder {
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for BlockEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockEncoder").finish_non_exhaustive()
    }
}

impl BlockEncoder {
    /// An encoder compressing at zstd `level` (1–3 suit a 250 Mbit/s WAN).
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(BlockEncoder {
            compressor: zstd::bulk::Compressor::new(level)?,
        })
    }

    /// Encodes `content`; a data block that is all zeros becomes a zero
    /// payload, a block zstd cannot shrink is sent raw.
    pub fn encode(&mut self, content: BlockContent<'_>) -> Vec<u8> {
        let data = match content {
            BlockContent::Data(d) if !is_zero(d) => d,
            _ => return vec![KIND_ZERO],
        };
        if let Ok(c) = self.compressor.compress(data) {
            if c.len() + 1 < data.len() {
                let mut out = Vec::with_capacity(c.len() + 1);
                out.push(KIND_ZSTD);
                out.extend_from_slice(&c);
                return out;
            }
        }
        let mut out = Vec::with_capacity(data.len() + 1);
        out.push(KIND_RAW);
        out.extend_from_slice(data);
        out
    }
}

/// A decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// The block is all zeros.
    Zero,
    /// The block's bytes are in the output buffer.
    Data,
}

/// Decodes payloads from the peer.
pub struct BlockDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for BlockDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDecoder").finish_non_exhaustive()
    }
}

impl BlockDecoder {
    /// A decoder.
    pub fn new() -> std::io::Result<Self> {
        Ok(BlockDecoder {
            decompressor: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decodes the payload of `block`, expected to be `expected_len` bytes,
    /// into `out` (replaced). Malformed input is an error, never a panic.
    pub fn decode(
        &mut self,
        block: u64,
        payload: &[u8],
        expected_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<Decoded, StorageError> {
        let bad_len = |got| StorageError::BadBlockLength {
            block,
            expected: expected_len,
            got,
        };
        match payload.split_first() {
            Some((&KIND_ZERO, [])) => Ok(Decoded::Zero),
            Some((&KIND_ZERO, rest)) => Err(bad_len(rest.len())),
            Some((&KIND_RAW, rest)) => {
                if rest.len() != expected_len {
                    return Err(bad_len(rest.len()));
                }
                out.clear();
                out.extend_from_slice(rest);
                Ok(Decoded::Data)
            }
            Some((&KIND_ZSTD, rest)) => {
                out.clear();
                out.reserve(expected_len);
                let n = self
                    .decompressor
                    .decompress_to_buffer(rest, out)
                    .map_err(|e| StorageError::BadCompressedBlock {
                        block,
                        reason: e.to_string(),
                    })?;
                if n != expected_len {
                    return Err(bad_len(n));
                }
                Ok(Decoded::Data)
            }
            Some((kind, _)) => Err(StorageError::BadCompressedBlock {
                block,
                reason: format!("unknown payload kind {kind}"),
            }),
            None => Err(bad_len(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_raw_and_zstd_round_trip() {
        let mut enc = BlockEncoder::new(1).unwrap();
        let mut dec = BlockDecoder::new().unwrap();
        let mut out = Vec::new();

        let zeros = vec![0u8; 65536];
        let p = enc.encode(BlockContent::Data(&zeros));
        assert_eq!(p, vec![0]);
        assert_eq!(dec.decode(0, &p, 65536, &mut out).unwrap(), Decoded::Zero);

        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
            .iter()
            .copied()
            .cycle()
            .take(65536)
            .collect();
        let p = enc.encode(BlockContent::Data(&text));
        assert_eq!(p[0], 2);
        assert!(p.len() < 2000, "text compresses: {}", p.len());
        assert_eq!(dec.decode(1, &p, 65536, &mut out).unwrap(), Decoded::Data);
        assert_eq!(out, text);

        use rand::{RngCore, SeedableRng};
        let mut noise = vec![0u8; 65536];
        rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut noise);
        let p = enc.encode(BlockContent::Data(&noise));
        assert_eq!(p[0], 1, "incompressible data goes raw");
        assert_eq!(p.len(), 65537);
        dec.decode(2, &p, 65536, &mut out).unwrap();
        assert_eq!(out, noise);
    }

    #[test]
    fn hostile_payloads_are_errors() {
        let mut enc = BlockEncoder::new(1).unwrap();
        let mut dec = BlockDecoder::new().unwrap();
        let mut out = Vec::new();
        assert!(dec.decode(0, &[], 4096, &mut out).is_err());
        assert!(dec.decode(0, &[9, 1, 2], 4096, &mut out).is_err());
        assert!(dec.decode(0, &[0, 1], 4096, &mut out).is_err());
        assert!(dec.decode(0, &[1; 100], 4096, &mut out).is_err());
        assert!(dec
            .decode(0, &[2, 0xff, 0xfe, 0x00], 4096, &mut out)
            .is_err());
        // A valid zstd frame that expands past the block size is refused.
        let big = vec![b'a'; 8192];
        let p = enc.encode(BlockContent::Data(&big));
        assert!(dec.decode(0, &p, 4096, &mut out).is_err());
        // And one that is shorter than the block is refused too.
        assert!(dec.decode(0, &p, 16384, &mut out).is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes from the wire decode to an error or to exactly
        /// `expected_len` bytes, never a panic.
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), len in 1usize..512) {
            let mut dec = BlockDecoder::new().unwrap();
            let mut out = Vec::new();
            if let Ok(Decoded::Data) = dec.decode(0, &payload, len, &mut out) {
                proptest::prop_assert_eq!(out.len(), len);
            }
        }
    }

    #[test]
    fn is_zero_checks_every_byte() {
        let mut b = vec![0u8; 100];
        assert!(is_zero(&b));
        for i in [0, 15, 16, 95, 99] {
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
            b[i] = 0;
        }
        assert!(is_zero(&[]));
    }
}
