//! Page identity for the reduction pipeline. wanmig's codec keys pages by
//! one `u64` (its guest frame number); QEMU names a page by RAMBlock and
//! byte offset. [`PageIds`] numbers the RAMBlocks of one migration and
//! packs a page's block number and page index into that `u64`:
//!
//! ```text
//! gfn = block_number << 40 | offset / 4096
//! ```
//!
//! 40 bits of page index cover 4 PiB per block; 24 bits of block number
//! far more blocks than QEMU has (a dozen for a PC with a few devices).
//! The source gateway numbers blocks in the order it meets them, on any
//! channel (a multifd page can name a block before the main channel's
//! block list has been parsed), and tells the destination gateway each new
//! number before the first page that uses it ([`PageIds::define`] there).

use std::collections::HashMap;

use crate::event::BlockName;
use crate::format::PAGE_SIZE;

/// Bits of page index in a gfn.
pub const PAGE_INDEX_BITS: u32 = 40;
/// Most RAMBlocks one migration can number.
pub const MAX_BLOCKS: u32 = 1 << (64 - PAGE_INDEX_BITS);

/// A RAMBlock numbering that cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageIdError {
    #[error("more than {MAX_BLOCKS} RAMBlocks in one migration")]
    TooManyBlocks,
    #[error(
        "block number {number} is already {existing}, not {name}; the peer's numbering disagrees"
    )]
    Redefined {
        number: u32,
        existing: BlockName,
        name: BlockName,
    },
    #[error("block number {number} skips ahead of the {expected} blocks defined so far")]
    OutOfOrder { number: u32, expected: u32 },
}

/// The RAMBlocks of one migration, numbered densely from 0.
#[derive(Debug, Default, Clone)]
pub struct PageIds {
    names: Vec<BlockName>,
    numbers: HashMap<BlockName, u32>,
}

impl PageIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of `name`, giving it the next free one on first sight;
    /// the flag says whether it was new (then the destination must learn
    /// it before any page that uses it).
    pub fn intern(&mut self, name: &BlockName) -> Result<(u32, bool), PageIdError> {
        if let Some(&n) = self.numbers.get(name) {
            return Ok((n, false));
        }
        let n = u32::try_from(self.names.len())
            .ok()
            .filter(|&n| n < MAX_BLOCKS)
            .ok_or(PageIdError::TooManyBlocks)?;
        self.names.push(name.clone());
        self.numbers.insert(name.clone(), n);
        Ok((n, true))
    }

    /// Learns the sender's number for `name` (the next number, or one
    /// already known with the same name).
    pub fn define(&mut self, number: u32, name: BlockName) -> Result<(), PageIdError> {
        match self.names.get(number as usize) {
            Some(existing) if *existing == name => Ok(()),
            Some(existing) => Err(PageIdError::Redefined {
                number,
                existing: existing.clone(),
                name,
            }),
            None if number as usize == self.names.len() => self.intern(&name).map(|_| ()),
            None => Err(PageIdError::OutOfOrder {
                number,
                expected: self.names.len() as u32,
            }),
        }
    }

    /// The number of `name`, if it has one.
    pub fn number(&self, name: &BlockName) -> Option<u32> {
        self.numbers.get(name).copied()
    }

    /// The block numbered `number`.
    pub fn name(&self, number: u32) -> Option<&BlockName> {
        self.names.get(number as usize)
    }

    /// Blocks numbered so far.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The gfn of the page at `offset` in block `number`; `None` when the
    /// offset is not page-aligned or lies beyond 4 PiB, or the number is
    /// out of range.
    pub fn gfn(number: u32, offset: u64) -> Option<u64> {
        let page = offset / PAGE_SIZE as u64;
        (offset % PAGE_SIZE as u64 == 0 && page >> PAGE_INDEX_BITS == 0 && number < MAX_BLOCKS)
            .then_some(u64::from(number) << PAGE_INDEX_BITS | page)
    }

    /// The gfn of the page at `offset` in block `name`, numbering the block
    /// if new (see [`PageIds::intern`]); `None` for an offset [`PageIds::gfn`]
    /// refuses, without numbering the block: `true` (announce the block)
    /// comes with the first gfn the block yields.
    pub fn gfn_of(
        &mut self,
        name: &BlockName,
        offset: u64,
    ) -> Result<Option<(u64, bool)>, PageIdError> {
        if Self::gfn(0, offset).is_none() {
            return Ok(None);
        }
        let (n, new) = self.intern(name)?;
        Ok(Self::gfn(n, offset).map(|g| (g, new)))
    }

    /// The block and byte offset of `gfn`, if its block is known.
    pub fn locate(&self, gfn: u64) -> Option<(&BlockName, u64)> {
        let number = u32::try_from(gfn >> PAGE_INDEX_BITS).ok()?;
        let page = gfn & ((1 << PAGE_INDEX_BITS) - 1);
        Some((self.name(number)?, page * PAGE_SIZE as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> BlockName {
        BlockName::new(s.as_bytes().to_vec()).unwrap()
    }

    /// A refused offset does not number its block, so the first page that
    /// yields a gfn still says to announce the block.
    #[test]
    fn a_refused_offset_leaves_the_block_unnumbered() {
        let mut ids = PageIds::new();
        assert_eq!(ids.gfn_of(&name("pc.ram"), 0x1001), Ok(None));
        assert_eq!(ids.gfn_of(&name("pc.ram"), 1 << 60), Ok(None));
        assert!(ids.is_empty());
        assert_eq!(ids.gfn_of(&name("pc.ram"), 0x1000), Ok(Some((1, true))));
        assert_eq!(ids.gfn_of(&name("pc.ram"), 0x2000), Ok(Some((2, false))));
    }

    #[test]
    fn both_ends_map_pages_to_the_same_gfns() {
        let mut src = PageIds::new();
        let mut dst = PageIds::new();
        for (block, offset) in [
            ("pc.ram", 0x1000u64),
            ("pc.bios", 0),
            ("pc.ram", 0x7fff_f000),
        ] {
            let (gfn, new) = src.gfn_of(&name(block), offset).unwrap().unwrap();
            let n = src.number(&name(block)).unwrap();
            if new {
                dst.define(n, name(block)).unwrap();
            }
            let (b, off) = dst.locate(gfn).unwrap();
            assert_eq!((b, off), (&name(block), offset));
        }
        assert_eq!(src.len(), 2);
        assert_eq!(PageIds::gfn(1, 0x2000), Some((1 << 40) | 2));
    }

    #[test]
    fn unaligned_or_huge_offsets_and_bad_numbering_are_refused() {
        assert_eq!(PageIds::gfn(0, 0x1001), None);
        assert_eq!(PageIds::gfn(0, 1 << 52), None);
        assert_eq!(PageIds::gfn(MAX_BLOCKS, 0), None);
        let mut dst = PageIds::new();
        assert!(matches!(
            dst.define(1, name("a")),
            Err(PageIdError::OutOfOrder {
                number: 1,
                expected: 0
            })
        ));
        dst.define(0, name("a")).unwrap();
        dst.define(0, name("a")).unwrap();
        assert!(matches!(
            dst.define(0, name("b")),
            Err(PageIdError::Redefined { .. })
        ));
        assert_eq!(dst.locate(5 << 40), None);
    }
}
