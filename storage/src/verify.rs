//! The end-of-copy check: a digest over the blocks the guest did not write at
//! the destination, computed at both sites and compared by the source before
//! it releases its copy.
//!
//! What "verified" means: every block of the destination's durable local
//! copy that the guest did not write at the destination holds exactly the
//! bytes of the source disk (holes and zero blocks read as zeros). The
//! destination sends its digest together with the set of blocks the guest
//! wrote there; the source recomputes the digest over its own disk for the
//! same blocks. Blocks the guest wrote legitimately differ and are excluded.
//! It costs one sequential read of each disk (zero blocks and holes are not
//! hashed), which is small beside the copy itself.
//!
//! The check covers only blocks the destination says the guest did not
//! write, so the source refuses a written set that leaves too little to
//! check ([`check_coverage`]).
//!
//! The digest is BLAKE3 over `(block index, block hash)` of the included
//! blocks in block order, where a block hash is BLAKE3 of the block's bytes,
//! or 32 zero bytes for an all-zero block.

use crate::geometry::Geometry;
use crate::presence::PresenceBitmap;
use crate::wire::{is_zero, BlockContent};

/// One block's hash (32 zero bytes for an all-zero block).
pub type BlockHash = [u8; 32];

/// The hash of one block's content.
pub fn block_hash(content: BlockContent<'_>) -> BlockHash {
    match content {
        BlockContent::Data(d) if !is_zero(d) => *blake3::hash(d).as_bytes(),
        _ => [0; 32],
    }
}

/// Builds the digest block by block, in block order, so the source can
/// check a disk of any size without holding every block's hash.
#[derive(Debug, Clone)]
pub struct Combiner {
    hasher: blake3::Hasher,
}

impl Combiner {
    /// A digest over a disk of `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&geometry.disk_len().to_le_bytes());
        hasher.update(&geometry.block_size().to_le_bytes());
        Combiner { hasher }
    }

    /// Adds `block` (one the guest did not write), in increasing order.
    pub fn add(&mut self, block: u64, hash: &BlockHash) {
        self.hasher.update(&block.to_le_bytes());
        self.hasher.update(hash);
    }

    pub fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// Combines per-block hashes of every block not in `written` (`hashes` has
/// one entry per block of `geometry`, in order; entries for written blocks
/// are ignored).
pub fn combine(geometry: Geometry, hashes: &[BlockHash], written: &PresenceBitmap) -> [u8; 32] {
    let mut c = Combiner::new(geometry);
    for (block, hash) in hashes.iter().enumerate() {
        let block = block as u64;
        if !written.is_present(block) {
            c.add(block, hash);
        }
    }
    c.finish()
}

/// The source's plausibility rule for a destination's written-block set.
///
/// The check vouches only for blocks the guest did not write at the
/// destination, and the destination alone says which those are. A set that
/// covers every block leaves nothing to check; a set that covers most of
/// the disk leaves a check that proves little. So when the check would
/// cover less than half of the disk's blocks ([`MIN_CHECKED_FRACTION`]), or
/// no block at all, the source still checks what it can and, if that
/// matches, lets the destination finish, but keeps its own copy whatever
/// the release policy says ([`ThinCheck`] says why). A small disk whose
/// guest rewrites most of it while it follows is the honest case; a
/// destination that marks every block written to get the source deleted is
/// the other.
pub fn check_coverage(geometry: Geometry, written: &PresenceBitmap) -> Result<u64, ThinCheck> {
    let blocks = geometry.block_count();
    let written = written.present_count().min(blocks);
    let checked = blocks - written;
    let needed = min_checked(blocks);
    if checked >= needed {
        Ok(checked)
    } else {
        Err(ThinCheck {
            blocks,
            written,
            checked,
            needed,
        })
    }
}

/// The least share of a disk's blocks the end-of-copy check must cover
/// before the source releases its copy, as a fraction (1/2).
pub const MIN_CHECKED_FRACTION: (u64, u64) = (1, 2);

/// Blocks the check must cover on a disk of `blocks` blocks (at least one).
fn min_checked(blocks: u64) -> u64 {
    let (num, den) = MIN_CHECKED_FRACTION;
    (blocks.saturating_mul(num).div_ceil(den)).max(1)
}

/// The destination's written-block set leaves too little for the
/// end-of-copy check to vouch for the copy, so the source keeps its copy
/// ([`check_coverage`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the destination reports {written} of the disk's {blocks} blocks written by the guest there, so the end-of-copy check covers only {checked} blocks (at least {needed}, half the disk, are needed to release the source copy): the source copy is kept whatever [storage] release says; once the destination's copy is known good, remove the source copy by hand")]
pub struct ThinCheck {
    pub blocks: u64,
    pub written: u64,
    pub checked: u64,
    pub needed: u64,
}

/// Hex form of a digest, for reports and logs.
pub fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_blocks_are_excluded_and_everything_else_counts() {
        let g = Geometry::new(4 * 4096, 4096).unwrap();
        let a = vec![7u8; 4096];
        let b = vec![9u8; 4096];
        let zero = vec![0u8; 4096];
        let src = [
            block_hash(BlockContent::Data(&a)),
            block_hash(BlockContent::Zero),
            block_hash(BlockContent::Data(&a)),
            block_hash(BlockContent::Data(&zero)),
        ];
        assert_eq!(src[1], src[3], "a zero block and a hole hash alike");
        let mut dst = src;
        dst[2] = block_hash(BlockContent::Data(&b));
        let none = PresenceBitmap::new(g);
        assert_ne!(combine(g, &src, &none), combine(g, &dst, &none));
        let mut written = PresenceBitmap::new(g);
        written.set(2);
        assert_eq!(combine(g, &src, &written), combine(g, &dst, &written));
        // Excluding a block that did not change still changes the digest:
        // both sides must agree on the set.
        let mut other = PresenceBitmap::new(g);
        other.set(0);
        assert_ne!(combine(g, &src, &none), combine(g, &src, &other));
        assert_eq!(hex(&[0xab; 32]).len(), 64);
    }

    #[test]
    fn a_written_set_that_leaves_less_than_half_the_disk_to_check_is_refused() {
        let g = Geometry::new(10 * 4096, 4096).unwrap();
        let mut written = PresenceBitmap::new(g);
        assert_eq!(check_coverage(g, &written), Ok(10));
        for b in 0..5 {
            written.set(b);
        }
        assert_eq!(check_coverage(g, &written), Ok(5), "half is enough");
        written.set(5);
        let e = check_coverage(g, &written).unwrap_err();
        assert_eq!((e.written, e.checked, e.needed), (6, 4, 5));
        assert!(e.to_string().contains("source copy is kept"), "{e}");
        for b in 0..10 {
            written.set(b);
        }
        assert_eq!(check_coverage(g, &written).unwrap_err().checked, 0);
        // A one-block disk written by the guest leaves nothing to check.
        let one = Geometry::new(4096, 4096).unwrap();
        let mut w = PresenceBitmap::new(one);
        assert_eq!(check_coverage(one, &w), Ok(1));
        w.set(0);
        assert!(check_coverage(one, &w).is_err());
    }
}
