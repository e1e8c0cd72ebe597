//! Target `qemu_stream`: QEMU migration channels (main and multifd)
//! through [`Parser`] in input-chosen pieces, the pages renumbered as the
//! gateways do, and back through [`Emitter`]; and arbitrary events
//! straight into an [`Emitter`], as a hostile peer gateway could send.
//!
//! Channel mode (first byte below 0x80): a parser that classifies the
//! channel itself, or one told it is a main or a multifd channel, gets the
//! input in pieces of input-chosen sizes, then the end of the channel.
//! Each page and zero page gets a gfn from the source side's [`PageIds`];
//! a newly numbered block is defined on a destination side's [`PageIds`],
//! which must locate the gfn back to the same block and offset; the page
//! is emitted from there. Checked: the emitted channel equals the input
//! byte for byte, nothing stays buffered at the end, and every page
//! carries 4 KiB.
//!
//! Event mode (first byte 0x80 and up): events built from the input
//! (pages of any size and offset, packet headers with any counts, block
//! lists) into one emitter. Checked: no panic, and a refused event
//! appends nothing.

use bytes::Bytes;
use wanmig_qemu_stream::format::{MULTIFD_MAGIC, MULTIFD_RAMBLOCK_LEN};
use wanmig_qemu_stream::{
    BlockList, BlockName, Emitter, Event, MultifdHello, MultifdPacket, Page, PageFraming, PageIds,
    Parser, RamBlock, ZeroPage,
};
use wanmig_wire::{Be, WriteExt};

use crate::input::{Input, Script};

const EVENT_MODE: u8 = 0x80;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    if mode >= EVENT_MODE {
        events(&mut input);
    } else {
        channel(mode, &mut input);
    }
}

fn channel(mode: u8, input: &mut Input<'_>) {
    let mut parser = match mode % 3 {
        0 => Parser::new(),
        1 => Parser::main(),
        _ => Parser::multifd(),
    };
    let sizes: Vec<usize> = (0..input.u8() % 8)
        .map(|_| usize::from(input.u16()).max(1))
        .collect();
    let stream = input.rest();

    let mut relay = Relay::default();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(stream.len());
        let end = (at + n).min(stream.len());
        parser.push(&stream[at..end]);
        at = end;
        i += 1;
        while let Some(ev) = parser.poll() {
            relay.carry(ev);
        }
    }
    parser.finish();
    while let Some(ev) = parser.poll() {
        relay.carry(ev);
    }
    assert_eq!(
        parser.buffered(),
        0,
        "bytes left in the parser after the end"
    );
    assert!(
        relay.out == stream,
        "the relayed channel differs from the input"
    );
}

/// The two gateways' view of one channel: the source numbers blocks, the
/// destination learns the numbers and rebuilds pages from gfns.
#[derive(Default)]
struct Relay {
    source: PageIds,
    dest: PageIds,
    emitter: Emitter,
    out: Vec<u8>,
}

impl Relay {
    fn carry(&mut self, ev: Event) {
        let ev = match ev {
            Event::Page(p) => {
                assert!(p.bytes().is_some(), "a page of {} bytes", p.data.len());
                match self.renumber(&p.block, p.offset) {
                    Some((block, offset)) => Event::Page(Page { block, offset, ..p }),
                    None => Event::Page(p),
                }
            }
            Event::Zero(z) => match self.renumber(&z.block, z.offset) {
                Some((block, offset)) => Event::Zero(ZeroPage { block, offset, ..z }),
                None => Event::Zero(z),
            },
            other => other,
        };
        self.emitter
            .emit(&ev, &mut self.out)
            .expect("a parser's events emit");
    }

    /// The block and offset the destination finds for the page's gfn;
    /// `None` for an offset no gfn names (the gateway relays it as is).
    fn renumber(&mut self, block: &BlockName, offset: u64) -> Option<(BlockName, u64)> {
        let (gfn, new) = self
            .source
            .gfn_of(block, offset)
            .expect("a channel has far fewer blocks than PageIds numbers")?;
        if new {
            let number = (gfn >> wanmig_qemu_stream::page_id::PAGE_INDEX_BITS) as u32;
            self.dest
                .define(number, block.clone())
                .expect("the destination follows the source's numbering");
        }
        let (b, o) = self.dest.locate(gfn).expect("a defined block locates");
        assert_eq!((b, o), (block, offset), "the gfn locates elsewhere");
        Some((b.clone(), o))
    }
}

fn events(input: &mut Input<'_>) {
    let mut emitter = Emitter::new();
    let mut out = Vec::new();
    while !input.is_empty() {
        let ev = match input.u8() % 7 {
            0 => Event::Verbatim(Bytes::copy_from_slice(input.blob())),
            1 => Event::Page(Page {
                block: name(input),
                offset: input.u64(),
                data: Bytes::copy_from_slice(input.blob()),
                framing: if input.bool() {
                    PageFraming::Packet
                } else {
                    PageFraming::Record {
                        continued: input.bool(),
                    }
                },
            }),
            2 => Event::Zero(ZeroPage {
                block: name(input),
                offset: input.u64(),
                fill: input.u8(),
                continued: input.bool(),
            }),
            3 => Event::MultifdHello(MultifdHello {
                uuid: input.bytes(16).try_into().unwrap_or([0; 16]),
                channel: input.u8(),
            }),
            4 => Event::MultifdPacket(MultifdPacket {
                flags: input.u32(),
                pages_alloc: input.u32(),
                normal_pages: input.u32(),
                next_packet_size: input.u32(),
                packet_num: input.u64(),
                ramblock: Bytes::copy_from_slice(input.blob()),
                offsets: (0..input.u8()).map(|_| input.u64()).collect(),
            }),
            5 => Event::BlockList(BlockList {
                total: input.u64(),
                blocks: (0..input.u8() % 16)
                    .map(|_| RamBlock {
                        name: name(input),
                        used_length: input.u64(),
                        gpa: input.bool().then(|| input.u64()),
                    })
                    .collect(),
            }),
            _ => Event::Passthrough(wanmig_qemu_stream::Unsupported::Colo),
        };
        let before = out.len();
        if emitter.emit(&ev, &mut out).is_err() {
            assert_eq!(out.len(), before, "a refused event appended bytes");
        }
    }
}

fn name(input: &mut Input<'_>) -> BlockName {
    let n = usize::from(input.u8());
    BlockName::new(input.bytes(n).to_vec()).expect("at most 255 bytes")
}

fn block(s: &str) -> BlockName {
    BlockName::new(s.as_bytes().to_vec()).expect("short name")
}

/// A page whose bytes depend on `seed`.
fn page_data(seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(4096);
    while v.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// A main channel as QEMU 7.2 writes a precopy migration (layouts in
/// `docs/qemu-stream.md`): the header and configuration, the RAM
/// section's setup with its block list, a part with pages and zero pages
/// of two blocks, the end part, device state, EOF and the vmdesc. RAM
/// records go through the crate's [`Emitter`].
fn precopy() -> Vec<u8> {
    let mut b = Vec::new();
    let mut e = Emitter::new();
    let mut ev = |b: &mut Vec<u8>, ev: Event| e.emit(&ev, b).expect("seed event emits");
    b.put(Be(0x5145_564du32));
    b.put(Be(3u32));
    b.push(0x07);
    let machine = b"pc-i440fx-7.2";
    b.put(Be(machine.len() as u32));
    b.extend_from_slice(machine);
    let section = |b: &mut Vec<u8>, kind: u8, id: u32| {
        b.push(kind);
        b.put(Be(id));
        if kind == 0x01 || kind == 0x04 {
            let idstr: &[u8] = if kind == 0x01 { b"ram" } else { b"timer" };
            b.push(idstr.len() as u8);
            b.extend_from_slice(idstr);
            b.put(Be(0u32));
            b.put(Be(if kind == 0x01 { 4u32 } else { 2 }));
        }
    };
    let eos = |b: &mut Vec<u8>| {
        b.put(Be(wanmig_qemu_stream::format::ram_flag::EOS));
        b.push(0x7e);
        b.put(Be(2u32));
    };
    section(&mut b, 0x01, 2);
    ev(
        &mut b,
        Event::BlockList(BlockList {
            total: 0x24_0000,
            blocks: vec![
                RamBlock {
                    name: block("pc.ram"),
                    used_length: 0x20_0000,
                    gpa: None,
                },
                RamBlock {
                    name: block("pc.bios"),
                    used_length: 0x4_0000,
                    gpa: None,
                },
            ],
        }),
    );
    eos(&mut b);
    section(&mut b, 0x02, 2);
    for (blk, offset, continued, seed) in [
        ("pc.ram", 0x1000, false, Some(1)),
        ("pc.ram", 0x2000, true, None),
        ("pc.bios", 0x3_f000, false, Some(2)),
        ("pc.bios", 0x3_e000, true, None),
        ("pc.ram", 0x5000, false, Some(3)),
    ] {
        let event = match seed {
            Some(s) => Event::Page(Page {
                block: block(blk),
                offset,
                data: page_data(s),
                framing: PageFraming::Record { continued },
            }),
            None => Event::Zero(ZeroPage {
                block: block(blk),
                offset,
                fill: 0,
                continued,
            }),
        };
        ev(&mut b, event);
    }
    eos(&mut b);
    section(&mut b, 0x03, 2);
    eos(&mut b);
    section(&mut b, 0x04, 0);
    b.extend_from_slice(&[0x12; 40]);
    b.extend_from_slice(&[0x7e, 0, 0, 0, 0]);
    b.extend_from_slice(&[0x00, 0x06, 0, 0, 0, 2]);
    b.extend_from_slice(b"{}");
    b
}

/// A multifd channel: the hello, a sync packet, packets with pages, and a
/// sync packet that keeps the last packet's ramblock and offsets.
fn multifd() -> Vec<u8> {
    let mut b = Vec::new();
    let mut e = Emitter::new();
    e.emit(
        &Event::MultifdHello(MultifdHello {
            uuid: [0; 16],
            channel: 1,
        }),
        &mut b,
    )
    .expect("hello emits");
    let mut stale_offsets = vec![0u64; 128];
    for (flags, pages, num, seed) in [
        (1u32, &[][..], 1u64, 0u64),
        (0, &[0x1000u64, 0x9000, 0x3000][..], 4, 10),
        (0, &[0x2000][..], 7, 20),
        (1, &[][..], 9, 0),
    ] {
        let mut ramblock = vec![0u8; MULTIFD_RAMBLOCK_LEN];
        ramblock[..6].copy_from_slice(b"pc.ram");
        stale_offsets[..pages.len()].copy_from_slice(pages);
        e.emit(
            &Event::MultifdPacket(MultifdPacket {
                flags,
                pages_alloc: 128,
                normal_pages: pages.len() as u32,
                next_packet_size: (pages.len() * 4096) as u32,
                packet_num: num,
                ramblock: Bytes::from(ramblock),
                offsets: stale_offsets.clone(),
            }),
            &mut b,
        )
        .expect("packet emits");
        for (i, &o) in pages.iter().enumerate() {
            e.emit(
                &Event::Page(Page {
                    block: block("pc.ram"),
                    offset: o,
                    data: page_data(seed + i as u64),
                    framing: PageFraming::Packet,
                }),
                &mut b,
            )
            .expect("page emits");
        }
    }
    debug_assert_eq!(&b[..4], &MULTIFD_MAGIC.to_be_bytes());
    b
}

/// The channel-mode input for `stream` read by parser `kind` (0: it
/// classifies, 1: main, 2: multifd) in pieces of `sizes`.
pub fn channel_input(kind: u8, sizes: &[u16], stream: &[u8]) -> Vec<u8> {
    let mut s = Script::new();
    s.u8(kind).u8(sizes.len() as u8);
    for &n in sizes {
        s.u16(n);
    }
    s.bytes(stream).finish()
}

/// Seeds: a precopy main channel and a multifd channel as QEMU 7.2 writes
/// them, whole and in pieces, each read by a classifying parser and by
/// one told its kind; the same channels cut short; and the events of both
/// in event mode. `wanmig-fuzz-seeds --qemu-captures` adds pieces of real
/// QEMU channels ([`capture_seeds`]).
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (kind, stream) in [(1u8, precopy()), (2, multifd())] {
        out.push(channel_input(0, &[], &stream));
        out.push(channel_input(kind, &[1, 7, 4096, 13], &stream));
        out.push(channel_input(kind, &[300], &stream[..stream.len() * 2 / 3]));
    }
    // Event mode: the multifd channel's events, one of them inconsistent.
    let mut s = Script::new();
    s.u8(EVENT_MODE)
        .u8(3)
        .bytes(&[7; 16])
        .u8(2)
        .u8(4)
        .u32(0)
        .u32(128)
        .u32(2)
        .u32(8192)
        .u64(3);
    let mut ramblock = vec![0u8; MULTIFD_RAMBLOCK_LEN];
    ramblock[..6].copy_from_slice(b"pc.ram");
    s.blob(&ramblock).u8(2).u64(0x1000).u64(0x2000);
    for off in [0x1000u64, 0x3000] {
        s.u8(1)
            .u8(6)
            .bytes(b"pc.ram")
            .u64(off)
            .blob(&page_data(off))
            .bool(true);
    }
    s.u8(5)
        .u64(0x1000)
        .u8(1)
        .u8(6)
        .bytes(b"pc.ram")
        .u64(0x1000)
        .bool(false);
    out.push(s.finish());
    out
}

/// Seeds from real QEMU channels captured to files (`precopy.bin`,
/// `multifd-channel-N.bin`, as the qemu-stream capture test writes them):
/// the first 48 KiB and the last 32 KiB of each, read whole and in pieces.
pub fn capture_seeds(dir: &std::path::Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    names.sort();
    for path in names {
        let bytes = std::fs::read(&path)?;
        let head = &bytes[..bytes.len().min(48 << 10)];
        let tail = &bytes[bytes.len().saturating_sub(32 << 10)..];
        out.push(channel_input(0, &[], head));
        out.push(channel_input(0, &[4096, 1, 333], head));
        // The tail starts mid-stream: a parser told the kind takes it.
        let kind = if bytes.starts_with(&MULTIFD_MAGIC.to_be_bytes()) {
            2
        } else {
            1
        };
        out.push(channel_input(kind, &[], tail));
    }
    Ok(out)
}
