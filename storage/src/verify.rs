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

/// Combines per-block hashes of every block not in `written` (`hashes` has
/// one entry per block of `geometry`, in order; entries for written blocks
/// are ignored).
pub fn combine(geometry: Geometry, hashes: &[BlockHash], written: &PresenceBitmap) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&geometry.disk_len().to_le_bytes());
    h.update(&geometry.block_size().to_le_bytes());
    for (block, hash) in hashes.iter().enumerate() {
        let block = block as u64;
        if written.is_present(block) {
            continue;
        }
        h.update(&block.to_le_bytes());
        h.update(hash);
    }
    *h.finalize().as_bytes()
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
}
