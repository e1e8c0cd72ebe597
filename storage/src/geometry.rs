//! Disk geometry: how a disk of `len` bytes splits into fixed-size blocks,
//! the unit of presence, fetching and copying. The last block may be short.

use std::ops::Range;

use crate::error::StorageError;

/// Default copy/presence block size: 64 KiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;

/// Smallest accepted block size (one page; also the sector alignment bound).
pub const MIN_BLOCK_SIZE: u32 = 4096;

/// Largest accepted block size (16 MiB); bigger blocks make on-demand reads
/// fetch far more than the guest asked for.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;

/// Most blocks a disk may be split into for a copy between sites: the
/// block size is the destination's choice, and the source keeps per-block
/// state and receives the destination's written-block set (one bit per
/// block) in a single frame, so the count is bounded: 2^26 blocks is an
/// 8 MiB set, and 4 TiB at the default 64 KiB block size.
pub const MAX_TRANSFER_BLOCKS: u64 = 1 << 26;

/// A disk's size and block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    disk_len: u64,
    block_size: u32,
}

impl Geometry {
    /// A geometry for a disk of `disk_len` bytes cut into `block_size` blocks.
    /// The block size must be a power of two between 4 KiB and 16 MiB.
    pub fn new(disk_len: u64, block_size: u32) -> Result<Self, StorageError> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(StorageError::BadBlockSize { block_size });
        }
        Ok(Geometry {
            disk_len,
            block_size,
        })
    }

    /// [`Geometry::new`] for a copy between sites, whose block size the
    /// destination picks: also refuses more than [`MAX_TRANSFER_BLOCKS`]
    /// blocks, naming the smallest block size that fits.
    pub fn for_transfer(disk_len: u64, block_size: u32) -> Result<Self, StorageError> {
        let g = Self::new(disk_len, block_size)?;
        if g.block_count() <= MAX_TRANSFER_BLOCKS {
            return Ok(g);
        }
        let fits = disk_len
            .div_ceil(MAX_TRANSFER_BLOCKS)
            .next_power_of_two()
            .max(u64::from(MIN_BLOCK_SIZE));
        Err(StorageError::TooManyBlocks {
            disk_len,
            block_size,
            blocks: g.block_count(),
            max: MAX_TRANSFER_BLOCKS,
            fits,
        })
    }

    /// Disk size in bytes.
    pub fn disk_len(&self) -> u64 {
        self.disk_len
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of blocks (the last one may be short).
    pub fn block_count(&self) -> u64 {
        self.disk_len.div_ceil(u64::from(self.block_size))
    }

    /// Byte offset where `block` starts.
    pub fn block_offset(&self, block: u64) -> u64 {
        block * u64::from(self.block_size)
    }

    /// Length in bytes of `block` (short for the last block).
    pub fn block_len(&self, block: u64) -> usize {
        let start = self.block_offset(block);
        let end = (start + u64::from(self.block_size)).min(self.disk_len);
        end.saturating_sub(start) as usize
    }

    /// The block holding byte `offset`.
    pub fn block_of(&self, offset: u64) -> u64 {
        offset / u64::from(self.block_size)
    }

    /// Blocks touched by the byte range `offset..offset+len` (empty for len 0).
    pub fn blocks_touching(&self, offset: u64, len: u64) -> Range<u64> {
        if len == 0 {
            return 0..0;
        }
        self.block_of(offset)..self.block_of(offset + len - 1) + 1
    }

    /// Whether the byte range `offset..offset+len` covers all of `block`.
    pub fn covers_block(&self, offset: u64, len: u64, block: u64) -> bool {
        let start = self.block_offset(block);
        let end = start + self.block_len(block) as u64;
        offset <= start && offset + len >= end
    }

    /// Checks that `offset..offset+len` lies within the disk.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.disk_len => Ok(()),
            _ => Err(StorageError::OutOfRange {
                offset,
                len,
                disk_len: self.disk_len,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_between_sites_refuses_a_block_size_that_makes_too_many_blocks() {
        let tib = 1u64 << 40;
        assert!(Geometry::for_transfer(4 * tib, DEFAULT_BLOCK_SIZE).is_ok());
        let e = Geometry::for_transfer(tib, MIN_BLOCK_SIZE).unwrap_err();
        match &e {
            StorageError::TooManyBlocks { blocks, fits, .. } => {
                assert_eq!(*blocks, tib / 4096);
                assert_eq!(*fits, 16384);
                assert!(Geometry::for_transfer(tib, *fits as u32).is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("block_size_kib"), "{e}");
        assert!(matches!(
            Geometry::for_transfer(1 << 20, 3000),
            Err(StorageError::BadBlockSize { block_size: 3000 })
        ));
    }

    #[test]
    fn short_last_block_and_ranges() {
        let g = Geometry::new(3 * 65536 + 100, DEFAULT_BLOCK_SIZE).unwrap();
        assert_eq!(g.block_count(), 4);
        assert_eq!(g.block_len(3), 100);
        assert_eq!(g.block_len(0), 65536);
        assert_eq!(g.blocks_touching(65535, 2), 0..2);
        assert_eq!(g.blocks_touching(65536, 65536), 1..2);
        assert_eq!(g.blocks_touching(5, 0), 0..0);
        assert!(g.covers_block(3 * 65536, 100, 3));
        assert!(!g.covers_block(3 * 65536 + 1, 99, 3));
        assert!(g.check_range(3 * 65536, 100).is_ok());
        assert!(g.check_range(3 * 65536, 101).is_err());
        assert!(g.check_range(u64::MAX, 2).is_err());
    }

    #[test]
    fn rejects_odd_block_sizes() {
        assert!(Geometry::new(1 << 20, 3000).is_err());
        assert!(Geometry::new(1 << 20, 2048).is_err());
        assert!(Geometry::new(1 << 20, 1 << 25).is_err());
    }
}
