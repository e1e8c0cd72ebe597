//! Channels built the way QEMU 7.2 writes them, with the events a parser
//! should find in them: the structure around RAM records is written by
//! hand (as in `docs/qemu-stream.md`), the records themselves through the
//! crate's [`Emitter`].

use bytes::Bytes;
use wanmig_qemu_stream::format::{ram_flag, MULTIFD_MAGIC, MULTIFD_RAMBLOCK_LEN};
use wanmig_qemu_stream::{
    BlockList, BlockName, Emitter, Event, MultifdHello, MultifdPacket, Page, PageFraming, RamBlock,
    ZeroPage,
};
use wanmig_wire::{Be, WriteExt};

pub fn name(s: &str) -> BlockName {
    BlockName::new(s.as_bytes().to_vec()).unwrap()
}

/// A page whose bytes depend on `seed`.
pub fn page_data(seed: u64) -> Bytes {
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

/// A channel under construction: its bytes and the events a parser should
/// yield for them (adjacent verbatim runs merged).
#[derive(Default)]
pub struct Channel {
    pub bytes: Vec<u8>,
    pub events: Vec<Event>,
    emitter: Emitter,
}

impl Channel {
    /// Appends bytes a parser relays verbatim.
    pub fn verbatim(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        match self.events.last_mut() {
            Some(Event::Verbatim(v)) => {
                let mut m = v.to_vec();
                m.extend_from_slice(b);
                *v = Bytes::from(m);
            }
            _ => self.events.push(Event::Verbatim(Bytes::copy_from_slice(b))),
        }
        self
    }

    /// Appends an event's bytes (through the emitter).
    pub fn event(&mut self, ev: Event) -> &mut Self {
        if let Event::Verbatim(b) = &ev {
            let b = b.clone();
            return self.verbatim(&b);
        }
        self.emitter.emit(&ev, &mut self.bytes).unwrap();
        self.events.push(ev);
        self
    }

    /// An announced event that carries no bytes.
    pub fn expect(&mut self, ev: Event) -> &mut Self {
        self.events.push(ev);
        self
    }

    // ---- main channel ------------------------------------------------------

    /// The file header and a configuration section for `machine`, with
    /// extra subsection bytes.
    pub fn header(&mut self, machine: &str, subsections: &[u8]) -> &mut Self {
        let mut b = Vec::new();
        b.put(Be(0x5145_564du32));
        b.put(Be(3u32));
        b.push(0x07);
        b.put(Be(machine.len() as u32));
        b.extend_from_slice(machine.as_bytes());
        b.extend_from_slice(subsections);
        self.verbatim(&b)
    }

    /// A `START` (0x01) or `FULL` (0x04) section header.
    pub fn section_start(&mut self, kind: u8, id: u32, idstr: &str, version: u32) -> &mut Self {
        let mut b = vec![kind];
        b.put(Be(id));
        b.push(idstr.len() as u8);
        b.extend_from_slice(idstr.as_bytes());
        b.put(Be(0u32));
        b.put(Be(version));
        self.verbatim(&b)
    }

    /// A `PART` (0x02) or `END` (0x03) section header.
    pub fn section_part(&mut self, kind: u8, id: u32) -> &mut Self {
        let mut b = vec![kind];
        b.put(Be(id));
        self.verbatim(&b)
    }

    /// The end-of-section record and the section footer.
    pub fn eos_footer(&mut self, id: u32) -> &mut Self {
        let mut b = Vec::new();
        b.put(Be(ram_flag::EOS));
        b.push(0x7e);
        b.put(Be(id));
        self.verbatim(&b)
    }

    /// A command with its data.
    pub fn command(&mut self, cmd: u16, data: &[u8]) -> &mut Self {
        let mut b = vec![0x08];
        b.put(Be(cmd));
        b.put(Be(data.len() as u16));
        b.extend_from_slice(data);
        self.verbatim(&b)
    }

    pub fn blocks(&mut self, blocks: &[(&str, u64)]) -> &mut Self {
        let blocks: Vec<RamBlock> = blocks
            .iter()
            .map(|&(n, len)| RamBlock {
                name: name(n),
                used_length: len,
                gpa: None,
            })
            .collect();
        let total = blocks.iter().map(|b| b.used_length).sum();
        self.event(Event::BlockList(BlockList { total, blocks }))
    }

    pub fn page(&mut self, block: &str, offset: u64, continued: bool, seed: u64) -> &mut Self {
        self.event(Event::Page(Page {
            block: name(block),
            offset,
            data: page_data(seed),
            framing: PageFraming::Record { continued },
        }))
    }

    pub fn zero(&mut self, block: &str, offset: u64, continued: bool) -> &mut Self {
        self.event(Event::Zero(ZeroPage {
            block: name(block),
            offset,
            fill: 0,
            continued,
        }))
    }

    /// A small precopy stream: setup, one part with pages of two blocks,
    /// the end part, device state, EOF and vmdesc.
    pub fn precopy() -> Self {
        let mut c = Channel::default();
        c.header("pc-i440fx-7.2", &[])
            .section_start(0x01, 2, "ram", 4)
            .blocks(&[("pc.ram", 0x20_0000), ("pc.bios", 0x4_0000)])
            .eos_footer(2)
            .section_part(0x02, 2)
            .page("pc.ram", 0x1000, false, 1)
            .zero("pc.ram", 0x2000, true)
            .page("pc.bios", 0x3_f000, false, 2)
            .page("pc.ram", 0x5000, false, 3)
            .eos_footer(2)
            .section_part(0x03, 2)
            .zero("pc.ram", 0x1000, true)
            .eos_footer(2)
            .device_state();
        c
    }

    /// FULL sections, EOF and a vmdesc: relayed verbatim.
    pub fn device_state(&mut self) -> &mut Self {
        self.section_start(0x04, 0, "timer", 2)
            .verbatim(&[0x12; 40])
            .verbatim(&[0x7e, 0, 0, 0, 0])
            .verbatim(&[0x00, 0x06, 0, 0, 0, 2])
            .verbatim(b"{}")
    }

    // ---- multifd channel ---------------------------------------------------

    pub fn hello(&mut self, channel: u8) -> &mut Self {
        self.event(Event::MultifdHello(MultifdHello {
            uuid: [0; 16],
            channel,
        }))
    }

    /// A packet header with `pages` pages of `block` (their data follows
    /// from `seed`), then the pages. Offsets past `pages` keep `stale`.
    pub fn packet(
        &mut self,
        flags: u32,
        block: &str,
        pages: &[u64],
        stale: u64,
        num: u64,
        seed: u64,
    ) -> &mut Self {
        let mut ramblock = vec![0u8; MULTIFD_RAMBLOCK_LEN];
        ramblock[..block.len()].copy_from_slice(block.as_bytes());
        let mut offsets = pages.to_vec();
        offsets.resize(128, stale);
        self.event(Event::MultifdPacket(MultifdPacket {
            flags,
            pages_alloc: 128,
            normal_pages: pages.len() as u32,
            next_packet_size: (pages.len() * 4096) as u32,
            packet_num: num,
            ramblock: Bytes::from(ramblock),
            offsets,
        }));
        for (i, &o) in pages.iter().enumerate() {
            self.event(Event::Page(Page {
                block: name(block),
                offset: o,
                data: page_data(seed + i as u64),
                framing: PageFraming::Packet,
            }));
        }
        self
    }

    /// A multifd channel: hello, two packets of pages, a sync packet that
    /// keeps the last packet's ramblock and offsets.
    pub fn multifd() -> Self {
        let mut c = Channel::default();
        c.hello(1)
            .packet(1, "pc.ram", &[], 0, 1, 0)
            .packet(0, "pc.ram", &[0x1000, 0x9000, 0x3000], 0, 4, 10)
            .packet(0, "pc.ram", &[0x2000], 0x9000, 7, 20)
            .packet(1, "pc.ram", &[], 0x9000, 9, 0);
        c
    }
}

/// The raw bytes of a multifd packet header with the given fields.
pub fn raw_packet_header(flags: u32, normal: u32, reserved: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.put(Be(MULTIFD_MAGIC));
    b.put(Be(1u32));
    b.put(Be(flags));
    b.put(Be(128u32));
    b.put(Be(normal));
    b.put(Be(normal * 4096));
    b.put(Be(5u64));
    b.extend_from_slice(&[reserved; 32]);
    let mut rb = [0u8; 256];
    rb[..6].copy_from_slice(b"pc.ram");
    b.extend_from_slice(&rb);
    for i in 0..128u64 {
        b.put(Be(i * 4096));
    }
    b
}
