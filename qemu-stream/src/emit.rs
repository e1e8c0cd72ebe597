//! [`Emitter`]: events back into a channel's bytes. For the events a
//! [`crate::Parser`] yields, emitting them in order reproduces the parsed
//! bytes exactly. Events that arrive from elsewhere (a peer gateway) are
//! checked: what would not re-create a well-formed record is an
//! [`EmitError`], never a panic or a malformed stream.

use wanmig_wire::{Be, WriteExt};

use crate::event::{BlockList, BlockName, Event, MultifdHello, MultifdPacket, PageFraming};
use crate::format::{
    ram_flag, MULTIFD_HELLO_LEN, MULTIFD_MAGIC, MULTIFD_MAX_PAGES, MULTIFD_RAMBLOCK_LEN,
    MULTIFD_VERSION, PAGE_MASK, PAGE_SIZE,
};
use crate::main_channel::MAX_BLOCKS;

/// An event that cannot be written as (part of) a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("a page carries {0} bytes of data, not 4096; the event stream is corrupt")]
    PageSize(usize),
    #[error("page offset {0:#x} is not page-aligned; the event stream is corrupt")]
    Unaligned(u64),
    #[error("a multifd page arrived with no packet header announcing it; the event stream is out of order")]
    PageOutsidePacket,
    #[error("a multifd packet announced {0} more pages before this event; the event stream is out of order")]
    PacketIncomplete(u32),
    #[error("a multifd page's offset {got:#x} differs from the packet header's {want:#x}; the event stream is out of order")]
    PageOffset { got: u64, want: u64 },
    #[error("the multifd packet header is inconsistent: {0}")]
    Packet(&'static str),
    #[error("the RAMBlock list is malformed: {0}")]
    BlockList(&'static str),
}

/// Writes one channel's events as bytes. Sans-IO: appends to a buffer the
/// caller writes to the socket.
#[derive(Debug, Default)]
pub struct Emitter {
    /// Offsets of the pages the last multifd packet header announced that
    /// have not been written yet (in order).
    pending: Vec<u64>,
    next: usize,
}

impl Emitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `ev`'s bytes to `out`. On error nothing is appended.
    pub fn emit(&mut self, ev: &Event, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let in_packet = self.next < self.pending.len();
        match ev {
            Event::Page(p) if p.framing == PageFraming::Packet => {
                if p.data.len() != PAGE_SIZE {
                    return Err(EmitError::PageSize(p.data.len()));
                }
                let want = *self
                    .pending
                    .get(self.next)
                    .ok_or(EmitError::PageOutsidePacket)?;
                if p.offset != want {
                    return Err(EmitError::PageOffset {
                        got: p.offset,
                        want,
                    });
                }
                self.next += 1;
                out.extend_from_slice(&p.data);
                return Ok(());
            }
            // Raw bytes (a channel relayed verbatim from here, or cut short
            // inside a packet) end any framing the emitter was following.
            Event::Passthrough(_) | Event::Verbatim(_) if in_packet => {
                self.pending.clear();
                self.next = 0;
            }
            Event::Passthrough(_) => return Ok(()),
            _ if in_packet => {
                return Err(EmitError::PacketIncomplete(
                    (self.pending.len() - self.next) as u32,
                ))
            }
            _ => {}
        }
        match ev {
            Event::Verbatim(b) => out.extend_from_slice(b),
            Event::Page(p) => {
                if p.data.len() != PAGE_SIZE {
                    return Err(EmitError::PageSize(p.data.len()));
                }
                let PageFraming::Record { continued } = p.framing else {
                    return Err(EmitError::PageOutsidePacket);
                };
                record_header(out, &p.block, p.offset, ram_flag::PAGE, continued)?;
                out.extend_from_slice(&p.data);
            }
            Event::Zero(z) => {
                record_header(out, &z.block, z.offset, ram_flag::ZERO, z.continued)?;
                out.push(z.fill);
            }
            Event::BlockList(l) => block_list(out, l)?,
            Event::MultifdHello(h) => hello(out, h),
            Event::MultifdPacket(p) => {
                packet(out, p)?;
                self.pending.clear();
                self.pending.extend_from_slice(p.page_offsets());
                self.next = 0;
            }
            Event::Passthrough(_) => {}
        }
        Ok(())
    }

    /// Whether a multifd packet's pages are still expected: a channel
    /// must not end (or switch to other events) in the middle of them.
    pub fn in_packet(&self) -> bool {
        self.next < self.pending.len()
    }
}

/// A main-channel page record's header: offset and flags, then the block
/// name unless the record continues the last named block.
fn record_header(
    out: &mut Vec<u8>,
    block: &BlockName,
    offset: u64,
    flag: u64,
    continued: bool,
) -> Result<(), EmitError> {
    if offset & !PAGE_MASK != 0 {
        return Err(EmitError::Unaligned(offset));
    }
    if continued {
        out.put(Be(offset | flag | ram_flag::CONTINUE));
    } else {
        out.put(Be(offset | flag));
        put_name(out, block);
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, name: &BlockName) {
    // `BlockName` holds at most 255 bytes.
    out.push(name.as_bytes().len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn block_list(out: &mut Vec<u8>, l: &BlockList) -> Result<(), EmitError> {
    if l.total & !PAGE_MASK != 0 {
        return Err(EmitError::BlockList("the total is not page-aligned"));
    }
    if l.blocks.len() > MAX_BLOCKS {
        return Err(EmitError::BlockList("more than 1024 RAMBlocks"));
    }
    let mut sum: u64 = 0;
    for b in &l.blocks {
        sum = sum
            .checked_add(b.used_length)
            .ok_or(EmitError::BlockList("the blocks' lengths overflow"))?;
    }
    if sum != l.total || l.blocks.iter().any(|b| b.used_length == 0) {
        return Err(EmitError::BlockList(
            "the blocks' lengths do not add up to the total",
        ));
    }
    let gpas = l.blocks.iter().filter(|b| b.gpa.is_some()).count();
    if gpas != 0 && gpas != l.blocks.len() {
        return Err(EmitError::BlockList("only some blocks carry a GPA"));
    }
    out.put(Be(l.total | ram_flag::MEM_SIZE));
    for b in &l.blocks {
        put_name(out, &b.name);
        out.put(Be(b.used_length));
        if let Some(gpa) = b.gpa {
            out.put(Be(gpa));
        }
    }
    Ok(())
}

fn hello(out: &mut Vec<u8>, h: &MultifdHello) {
    let start = out.len();
    out.put(Be(MULTIFD_MAGIC));
    out.put(Be(MULTIFD_VERSION));
    out.extend_from_slice(&h.uuid);
    out.push(h.channel);
    out.resize(start + MULTIFD_HELLO_LEN, 0);
}

fn packet(out: &mut Vec<u8>, p: &MultifdPacket) -> Result<(), EmitError> {
    if p.pages_alloc > MULTIFD_MAX_PAGES || p.offsets.len() != p.pages_alloc as usize {
        return Err(EmitError::Packet(
            "the offset array does not match pages_alloc",
        ));
    }
    if p.normal_pages > p.pages_alloc {
        return Err(EmitError::Packet("more pages than the packet has room for"));
    }
    if p.ramblock.len() != MULTIFD_RAMBLOCK_LEN {
        return Err(EmitError::Packet("the ramblock field is not 256 bytes"));
    }
    if let Some(&o) = p.page_offsets().iter().find(|&&o| o & !PAGE_MASK != 0) {
        return Err(EmitError::Unaligned(o));
    }
    out.put(Be(MULTIFD_MAGIC));
    out.put(Be(MULTIFD_VERSION));
    out.put(Be(p.flags));
    out.put(Be(p.pages_alloc));
    out.put(Be(p.normal_pages));
    out.put(Be(p.next_packet_size));
    out.put(Be(p.packet_num));
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(&p.ramblock);
    for &o in &p.offsets {
        out.put(Be(o));
    }
    Ok(())
}
