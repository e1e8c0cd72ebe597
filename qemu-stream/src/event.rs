//! What a parser yields and an [`crate::Emitter`] turns back into bytes:
//! every byte of a channel is carried by exactly one [`Event`], in order.
//! Pages carry their data and where it goes (RAMBlock name and offset);
//! everything the gateway does not reduce is a [`Event::Verbatim`] run.

use bytes::Bytes;

use crate::format::PAGE_SIZE;
use crate::unsupported::Unsupported;

/// One step of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes to forward unchanged: the stream header and configuration,
    /// section headers and footers, commands, device state, end-of-section
    /// markers, and everything after a switch to passthrough.
    Verbatim(Bytes),
    /// The main channel's RAMBlock list (`RAM_SAVE_FLAG_MEM_SIZE`), sent in
    /// the RAM section's first part.
    BlockList(BlockList),
    /// A page with its data: a main-channel `RAM_SAVE_FLAG_PAGE` record, or
    /// one of the pages that follow a multifd packet header.
    Page(Page),
    /// A page of one repeated byte (main channel, `RAM_SAVE_FLAG_ZERO`).
    Zero(ZeroPage),
    /// The packet a multifd channel opens with.
    MultifdHello(MultifdHello),
    /// A multifd packet header; its `normal_pages` pages follow as
    /// [`Event::Page`]s with [`PageFraming::Packet`].
    MultifdPacket(MultifdPacket),
    /// The parser met something it does not reduce; the rest of the channel
    /// follows as [`Event::Verbatim`]. Carries no bytes.
    Passthrough(Unsupported),
}

/// A RAMBlock's name (`idstr`): at most 255 bytes, usually ASCII
/// (`pc.ram`, `/rom@etc/acpi/tables`). Kept as bytes: the stream does not
/// promise UTF-8, and re-emission must be exact.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockName(Bytes);

impl BlockName {
    /// The longest name a RAM record can carry (its length is one byte).
    pub const MAX_LEN: usize = 255;

    /// A name from its bytes; `None` when longer than [`Self::MAX_LEN`].
    pub fn new(bytes: impl Into<Bytes>) -> Option<Self> {
        let b = bytes.into();
        (b.len() <= Self::MAX_LEN).then_some(BlockName(b))
    }

    /// A name read from a one-byte length: copied out of the input buffer
    /// so it does not keep the buffer alive.
    pub(crate) fn from_wire(name: &[u8]) -> Self {
        let n = name.len().min(Self::MAX_LEN);
        BlockName(Bytes::copy_from_slice(&name[..n]))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for BlockName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for BlockName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// The RAMBlock list of the RAM section's first part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    /// The record's total RAM size (page-aligned): the sum of the blocks'
    /// `used_length`.
    pub total: u64,
    pub blocks: Vec<RamBlock>,
}

/// One RAMBlock of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    pub name: BlockName,
    /// Bytes of the block in use; pages lie below this offset.
    pub used_length: u64,
    /// With `x-ignore-shared` on: the block's guest-physical address.
    pub gpa: Option<u64>,
}

/// How a page's record is framed on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFraming {
    /// A main-channel record. `continued`: it carried
    /// `RAM_SAVE_FLAG_CONTINUE` (the block is the one last named on the
    /// channel and its name was left out).
    Record { continued: bool },
    /// Data after a multifd packet header (the header names block and
    /// offset).
    Packet,
}

/// A page with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub block: BlockName,
    /// Byte offset of the page in its block (page-aligned).
    pub offset: u64,
    /// Exactly [`PAGE_SIZE`] bytes.
    pub data: Bytes,
    pub framing: PageFraming,
}

impl Page {
    /// The data as a page, when it has the page's size.
    pub fn bytes(&self) -> Option<&[u8; PAGE_SIZE]> {
        self.data.as_ref().try_into().ok()
    }
}

/// A page of one repeated byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroPage {
    pub block: BlockName,
    pub offset: u64,
    /// The byte the page is filled with (QEMU sends only 0; the receiver
    /// honours any value).
    pub fill: u8,
    /// As [`PageFraming::Record`]'s `continued`.
    pub continued: bool,
}

/// The 64-byte packet (`MultiFDInit_t`) a multifd channel opens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultifdHello {
    /// The source's `-uuid` (all zeros when unset); the destination QEMU
    /// refuses the channel unless its own UUID is the same.
    pub uuid: [u8; 16],
    /// The channel's number, 0 to `multifd-channels` − 1.
    pub channel: u8,
}

/// A multifd packet header (`MultiFDPacket_t` and its offset array).
///
/// QEMU reuses one header buffer per channel, so fields a packet does not
/// set keep what an earlier packet wrote: a sync packet without pages
/// carries the previous packet's `ramblock` and `next_packet_size`, and
/// offsets past `normal_pages` are left over. They are kept to re-emit the
/// header exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultifdPacket {
    /// `MULTIFD_FLAG_*`: sync (bit 0) and compression (bits 1–3, 0 here).
    pub flags: u32,
    /// Entries of the offset array (128 for 4 KiB pages).
    pub pages_alloc: u32,
    /// Pages whose data follows the header.
    pub normal_pages: u32,
    /// Bytes of page data after the header (stale in a packet without pages).
    pub next_packet_size: u32,
    /// A number counting the source's packets over all channels.
    pub packet_num: u64,
    /// The 256-byte, NUL-padded ramblock field as sent.
    pub ramblock: Bytes,
    /// All `pages_alloc` offsets as sent; the first `normal_pages` are the
    /// offsets of the pages that follow.
    pub offsets: Vec<u64>,
}

impl MultifdPacket {
    /// Whether this packet ends a round ([`crate::format::MULTIFD_FLAG_SYNC`]).
    pub fn is_sync(&self) -> bool {
        self.flags & crate::format::MULTIFD_FLAG_SYNC != 0
    }

    /// The offsets of the pages that follow the header.
    pub fn page_offsets(&self) -> &[u64] {
        let n = (self.normal_pages as usize).min(self.offsets.len());
        &self.offsets[..n]
    }

    /// The block the pages go to: the ramblock field up to its first NUL.
    pub fn block(&self) -> BlockName {
        let end = self
            .ramblock
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.ramblock.len())
            .min(BlockName::MAX_LEN);
        BlockName(self.ramblock.slice(..end))
    }
}
