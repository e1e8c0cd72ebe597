//! Guest pages: the 4 KiB unit the codec works on, its guest frame number,
//! and the fast zero-page test.

use serde::{Deserialize, Serialize};

/// Size of a guest page in bytes.
pub const PAGE_SIZE: usize = 4096;

/// The bytes of one guest page.
pub type PageBytes = [u8; PAGE_SIZE];

/// A guest frame number: the guest-physical address divided by [`PAGE_SIZE`].
/// Storage migration reuses it as "4 KiB block number within the disk".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gfn(pub u64);

impl std::fmt::Display for Gfn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gfn {:#x}", self.0)
    }
}

/// Size of a disk block in storage migration (16 pages).
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Pages per disk block.
pub const PAGES_PER_BLOCK: u64 = (BLOCK_SIZE / PAGE_SIZE) as u64;

/// The pages of disk block `block`, numbered `block * 16 + i`, so storage
/// migration can run disk blocks through the same encoder as guest memory.
pub fn block_pages(block: u64, data: &[u8; BLOCK_SIZE]) -> impl Iterator<Item = (Gfn, &PageBytes)> {
    data.chunks_exact(PAGE_SIZE).enumerate().map(move |(i, p)| {
        (
            Gfn(block * PAGES_PER_BLOCK + i as u64),
            p.try_into().expect("page-sized chunk"),
        )
    })
}

/// A heap-allocated all-zero page.
pub fn zero_page() -> Box<PageBytes> {
    Box::new([0u8; PAGE_SIZE])
}

/// Copies a page onto the heap.
pub fn boxed(page: &PageBytes) -> Box<PageBytes> {
    Box::new(*page)
}

/// Whether every byte of `page` is zero.
///
/// Checks 256 bytes at a time by OR-ing 64-bit words (which the compiler
/// vectorises) and stops at the first non-zero block, so non-zero pages —
/// which usually differ from zero in their first bytes — cost almost nothing.
#[inline]
pub fn is_zero(page: &PageBytes) -> bool {
    page.chunks_exact(256).all(|block| {
        block
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8-byte chunk")))
            .fold(0u64, |acc, w| acc | w)
            == 0
    })
}

/// A cheap guess whether zstd would fail to shrink `page`: counts distinct
/// byte values in a 512-byte stride sample. Uniformly random (encrypted,
/// already-compressed) pages show ~221 of 256; text and code far fewer.
/// Guessing wrong only costs a little speed or ratio, never correctness.
#[inline]
pub fn looks_incompressible(page: &PageBytes) -> bool {
    let mut seen = [0u64; 4];
    for i in (0..PAGE_SIZE).step_by(8) {
        let b = page[i];
        seen[(b >> 6) as usize] |= 1u64 << (b & 63);
    }
    seen.iter().map(|w| w.count_ones()).sum::<u32>() > 200
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_every_byte() {
        let mut p = [0u8; PAGE_SIZE];
        assert!(is_zero(&p));
        for i in [0, 1, 7, 255, 256, 2048, 4095] {
            p[i] = 1;
            assert!(!is_zero(&p), "byte {i} set but page reported zero");
            p[i] = 0;
        }
        assert!(is_zero(&p));
    }

    #[test]
    fn blocks_split_into_numbered_pages() {
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        block[PAGE_SIZE * 3] = 9;
        let pages: Vec<_> = block_pages(2, &block).collect();
        assert_eq!(pages.len(), 16);
        assert_eq!(pages[0].0, Gfn(32));
        assert_eq!(pages[15].0, Gfn(47));
        assert_eq!(pages[3].1[0], 9);
    }

    #[test]
    fn incompressibility_guess_tells_random_from_text() {
        let mut x = 0x2545f4914f6cdd1du64;
        let mut random = [0u8; PAGE_SIZE];
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        assert!(looks_incompressible(&random));
        let text: Vec<u8> = b"fn main() { println!(\"hello\"); }\n"
            .iter()
            .copied()
            .cycle()
            .take(PAGE_SIZE)
            .collect();
        assert!(!looks_incompressible(text.as_slice().try_into().unwrap()));
        assert!(!looks_incompressible(&[0u8; PAGE_SIZE]));
    }
}
