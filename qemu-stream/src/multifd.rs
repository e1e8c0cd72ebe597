//! A multifd channel's grammar: the 64-byte hello, then packets of a
//! header (with its offset array) followed by `normal_pages` pages of
//! data. Only compression `none` is parsed: a packet with zlib, zstd or
//! another method's data sends the channel to passthrough, as do unknown
//! flags and the reserved fields newer QEMUs fill (multifd zero pages).

use bytes::Bytes;
use wanmig_wire::Reader;

use crate::event::{BlockName, MultifdHello, MultifdPacket, PageFraming};
use crate::format::{
    MULTIFD_COMPRESSION_MASK, MULTIFD_FLAG_SYNC, MULTIFD_HELLO_LEN, MULTIFD_MAGIC,
    MULTIFD_MAX_PAGES, MULTIFD_RAMBLOCK_LEN, MULTIFD_VERSION, PAGE_MASK, PAGE_SIZE,
};
use crate::grammar::{be32, be64, consumed, Stop, Unit};
use crate::unsupported::Unsupported;

enum State {
    Hello,
    Header,
    /// The pages of the last packet: `offsets[next..]` are still to come.
    Pages {
        block: BlockName,
        offsets: Vec<u64>,
        next: usize,
    },
}

pub(crate) struct MultifdGrammar {
    state: State,
}

impl MultifdGrammar {
    pub(crate) fn new() -> Self {
        MultifdGrammar {
            state: State::Hello,
        }
    }

    /// Takes one unit off the front of `input`. Changes no state unless it
    /// returns `Ok`.
    pub(crate) fn parse(&mut self, input: &[u8]) -> Result<Unit, Stop> {
        let mut r = Reader::new(input);
        match &mut self.state {
            State::Hello => {
                let magic = be32(&mut r)?;
                if magic != MULTIFD_MAGIC {
                    return Err(Unsupported::UnknownChannel(magic.to_be_bytes()).into());
                }
                let version = be32(&mut r)?;
                if version != MULTIFD_VERSION {
                    return Err(Unsupported::MultifdVersion(version).into());
                }
                let uuid: [u8; 16] = r.array()?;
                let channel = r.get::<u8>()?;
                let reserved = r.bytes(MULTIFD_HELLO_LEN - 25)?;
                if reserved.iter().any(|&b| b != 0) {
                    return Err(Unsupported::MultifdReserved.into());
                }
                self.state = State::Header;
                Ok(Unit::Hello(
                    MULTIFD_HELLO_LEN,
                    MultifdHello { uuid, channel },
                ))
            }
            State::Header => {
                let packet = packet_header(&mut r)?;
                let len = consumed(input, &r);
                if packet.normal_pages > 0 {
                    self.state = State::Pages {
                        block: packet.block(),
                        offsets: packet.page_offsets().to_vec(),
                        next: 0,
                    };
                }
                Ok(Unit::Packet(len, packet))
            }
            State::Pages {
                block,
                offsets,
                next,
            } => {
                r.bytes(PAGE_SIZE)?;
                let Some(&offset) = offsets.get(*next) else {
                    // Not reached: the state holds only while pages remain.
                    self.state = State::Header;
                    return Ok(Unit::Verbatim(0));
                };
                let unit = Unit::Page {
                    len: PAGE_SIZE,
                    block: block.clone(),
                    offset,
                    framing: PageFraming::Packet,
                };
                *next += 1;
                if *next == offsets.len() {
                    self.state = State::Header;
                }
                Ok(unit)
            }
        }
    }
}

/// Reads a packet header and its offset array.
fn packet_header(r: &mut Reader<'_>) -> Result<MultifdPacket, Stop> {
    let magic = be32(r)?;
    if magic != MULTIFD_MAGIC {
        return Err(
            Unsupported::MultifdPacket("a packet does not start with the multifd magic").into(),
        );
    }
    let version = be32(r)?;
    if version != MULTIFD_VERSION {
        return Err(Unsupported::MultifdVersion(version).into());
    }
    let flags = be32(r)?;
    if flags & !(MULTIFD_FLAG_SYNC | MULTIFD_COMPRESSION_MASK) != 0 {
        return Err(Unsupported::MultifdFlags(flags).into());
    }
    let pages_alloc = be32(r)?;
    if pages_alloc > MULTIFD_MAX_PAGES {
        return Err(Unsupported::MultifdPacket("more than 128 pages per packet").into());
    }
    // Wait for the whole header before decoding the rest of it.
    let header_len = crate::format::MULTIFD_HEADER_LEN + 8 * pages_alloc as usize;
    if r.remaining() < header_len - 16 {
        return Err(Stop::Short);
    }
    let normal_pages = be32(r)?;
    if normal_pages > pages_alloc {
        return Err(Unsupported::MultifdPacket("more pages than the packet has room for").into());
    }
    if normal_pages > 0 && flags & MULTIFD_COMPRESSION_MASK != 0 {
        return Err(Unsupported::MultifdCompression(flags & MULTIFD_COMPRESSION_MASK).into());
    }
    let next_packet_size = be32(r)?;
    let packet_num = be64(r)?;
    if r.bytes(32)?.iter().any(|&b| b != 0) {
        return Err(Unsupported::MultifdReserved.into());
    }
    let ramblock = Bytes::copy_from_slice(r.bytes(MULTIFD_RAMBLOCK_LEN)?);
    let mut offsets = Vec::with_capacity(pages_alloc as usize);
    for _ in 0..pages_alloc {
        offsets.push(be64(r)?);
    }
    if offsets[..normal_pages as usize]
        .iter()
        .any(|&o| o & !PAGE_MASK != 0)
    {
        return Err(Unsupported::MultifdPacket("a page offset is not page-aligned").into());
    }
    Ok(MultifdPacket {
        flags,
        pages_alloc,
        normal_pages,
        next_packet_size,
        packet_num,
        ramblock,
        offsets,
    })
}
