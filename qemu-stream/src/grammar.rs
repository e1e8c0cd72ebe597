//! What the channel grammars ([`crate::main_channel`], [`crate::multifd`])
//! and the [`crate::parser::Parser`] that drives them share: the kind of a
//! channel, the units a grammar takes off its input, why it stops, and
//! the big-endian readers QEMU's formats need.

use wanmig_wire::{Be, Reader, UnexpectedEnd};

use crate::event::{BlockList, MultifdHello, MultifdPacket, PageFraming, ZeroPage};
use crate::format::{FILE_MAGIC, MULTIFD_MAGIC};
use crate::unsupported::Unsupported;

/// Which of a migration's channels a parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// The main channel: header, configuration, sections, commands.
    Main,
    /// A multifd channel: a hello packet, then packet headers and pages.
    Multifd,
    /// Neither (e.g. a postcopy preempt channel): relayed verbatim.
    Other,
}

impl ChannelKind {
    /// Classifies a channel by its first four bytes, as QEMU 8.0 and later
    /// do on accepting one (QEMU 7.2 takes its first connection as the main
    /// channel and the rest as multifd).
    pub fn classify(first: [u8; 4]) -> ChannelKind {
        match u32::from_be_bytes(first) {
            FILE_MAGIC => ChannelKind::Main,
            MULTIFD_MAGIC => ChannelKind::Multifd,
            _ => ChannelKind::Other,
        }
    }
}

/// Why a grammar could not take a unit off the front of its input.
pub(crate) enum Stop {
    /// The unit is incomplete: wait for more bytes.
    Short,
    /// The unit is not one this crate parses.
    Unsupported(Unsupported),
}

impl From<UnexpectedEnd> for Stop {
    fn from(_: UnexpectedEnd) -> Self {
        Stop::Short
    }
}

impl From<Unsupported> for Stop {
    fn from(u: Unsupported) -> Self {
        Stop::Unsupported(u)
    }
}

/// A unit a grammar took off the front of its input. Lengths are bytes of
/// input the unit spans.
pub(crate) enum Unit {
    /// Bytes to relay as they are (may be 0 when only the state changed).
    Verbatim(usize),
    /// Main channel: a RAM section part's end-of-section record (verbatim).
    PartEnd(usize),
    /// The channel's kind, from its first four bytes (nothing consumed).
    Classified(ChannelKind, [u8; 4]),
    /// A page record of `len` bytes whose last [`crate::format::PAGE_SIZE`] are the data.
    Page {
        len: usize,
        block: crate::event::BlockName,
        offset: u64,
        framing: PageFraming,
    },
    Zero(usize, ZeroPage),
    BlockList(usize, BlockList),
    Hello(usize, MultifdHello),
    Packet(usize, MultifdPacket),
    /// The rest of the main channel is device state (or follows its end):
    /// relay it verbatim, nothing is unsupported.
    DeviceState,
}

/// Reads a `be32`.
pub(crate) fn be32(r: &mut Reader<'_>) -> Result<u32, UnexpectedEnd> {
    r.get::<Be<u32>>().map(|v| v.0)
}

/// Reads a `be64`.
pub(crate) fn be64(r: &mut Reader<'_>) -> Result<u64, UnexpectedEnd> {
    r.get::<Be<u64>>().map(|v| v.0)
}

/// Bytes of `input` a reader has consumed.
pub(crate) fn consumed(input: &[u8], r: &Reader<'_>) -> usize {
    input.len() - r.remaining()
}
