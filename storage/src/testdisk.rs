//! Builds realistic sparse disk images for tests and benchmarks: a seeded
//! mix of holes, text, binary-like data, incompressible data and allocated
//! zeros, roughly like a filesystem image with free space.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::StorageError;

const CHUNK: usize = 64 * 1024;

/// Share of a test image's 64 KiB chunks of each kind, in percent; the
/// rest are holes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageMix {
    /// Text (logs, sources, configs): compresses well.
    pub text: u32,
    /// Binary-like (executables): partly compressible.
    pub binary: u32,
    /// Incompressible (compressed archives, media).
    pub random: u32,
    /// Allocated but zero-filled (preallocated files).
    pub zeros: u32,
    /// Chunks where only the first 4 KiB is written (small files).
    pub partial: u32,
}

impl Default for ImageMix {
    /// About 40% allocated, like a filesystem that is 40% full.
    fn default() -> Self {
        ImageMix {
            text: 14,
            binary: 12,
            random: 6,
            zeros: 4,
            partial: 4,
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "migration",
    "kernel",
    "block",
    "error",
    "info",
    "request",
    "disk",
    "page",
    "network",
    "gateway",
    "fn",
    "let",
    "return",
    "struct",
    "impl",
    "self",
    "config",
    "value",
    "timeout",
    "=",
    "{",
    "}",
    "0x1f",
    "2026-11-26T11:53:09Z",
    "INFO",
    "WARN",
    "user",
    "root",
    "/var/log",
];

fn fill_text(rng: &mut ChaCha8Rng, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let w = WORDS[rng.random_range(0..WORDS.len())].as_bytes();
        let sep: &[u8] = if rng.random_ratio(1, 9) { b"\n" } else { b" " };
        for &b in w.iter().chain(sep) {
            if i < buf.len() {
                buf[i] = b;
                i += 1;
            }
        }
    }
}

fn fill_binary(rng: &mut ChaCha8Rng, buf: &mut [u8]) {
    // Code-like: random bytes interleaved with recurring instruction
    // patterns and small integers.
    for chunk in buf.chunks_mut(16) {
        match rng.random_range(0..4) {
            0 => rng.fill_bytes(chunk),
            1 => chunk.copy_from_slice(
                &[
                    0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0x89, 0x7d, 0xfc, 0x8b, 0x45, 0xfc,
                    0x5d, 0xc3, 0x90,
                ][..chunk.len()],
            ),
            2 => {
                chunk.fill(0);
                chunk[0] = rng.random();
            }
            _ => {
                let v: u32 = rng.random_range(0..4096);
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = (v >> ((j % 4) * 8)) as u8;
                }
            }
        }
    }
}

/// Writes a sparse image of `len` bytes at `path` with `mix`, seeded.
/// Returns the number of bytes written (before the filesystem's rounding).
pub fn build_image(path: &Path, len: u64, mix: ImageMix, seed: u64) -> Result<u64, StorageError> {
    let io = |what, e| StorageError::io(what, path, e);
    let f = File::create(path).map_err(|e| io("create test image", e))?;
    f.set_len(len).map_err(|e| io("size test image", e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        let roll = rng.random_range(0..100u32);
        let weights = [mix.text, mix.binary, mix.random, mix.zeros, mix.partial];
        let mut edge = 0;
        let kind = weights
            .iter()
            .position(|&w| {
                edge += w;
                roll < edge
            })
            .unwrap_or(weights.len());
        let data = &mut buf[..n];
        let k = match kind {
            0 => {
                fill_text(&mut rng, data);
                n
            }
            1 => {
                fill_binary(&mut rng, data);
                n
            }
            2 => {
                rng.fill_bytes(data);
                n
            }
            3 => {
                data.fill(0);
                n
            }
            4 => {
                let k = n.min(4096);
                fill_text(&mut rng, &mut data[..k]);
                k
            }
            _ => 0,
        };
        if k > 0 {
            f.write_all_at(&buf[..k], off)
                .map_err(|e| io("write test image", e))?;
            written += k as u64;
        }
        off += n as u64;
    }
    f.sync_all().map_err(|e| io("fsync test image", e))?;
    Ok(written)
}
