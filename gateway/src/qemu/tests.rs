//! The two sides of a QEMU relay joined in memory: channels built as QEMU
//! 7.2 writes them go through [`SourceRelay`], its frames through
//! [`DestRelay`], and what comes out must equal what went in, byte for
//! byte, for any chunking, with NACKed references held back until filled.

use bytes::Bytes;
use wanmig_codec::{Decoder, DecoderConfig, EncoderConfig, Fingerprint, Inventory, NoStore};
use wanmig_qemu_stream::format::{ram_flag, MULTIFD_FLAG_SYNC, MULTIFD_RAMBLOCK_LEN};
use wanmig_qemu_stream::{
    BlockList, BlockName, Emitter, Event, MultifdHello, MultifdPacket, Page, PageFraming, RamBlock,
    ZeroPage,
};
use wanmig_wire::{Be, FrameDecoder, WriteExt};

use super::dest::{Action, DestRelay};
use super::frames::{Frame, MAX_BODY};
use super::source::SourceRelay;

fn name(s: &str) -> BlockName {
    BlockName::new(s.as_bytes().to_vec()).unwrap()
}

fn page_data(seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(4096);
    while v.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // One random byte in eight, so zstd has something to do.
        v.extend_from_slice(&((x & 0xff) << 24).to_le_bytes());
    }
    Bytes::from(v)
}

struct Ch {
    bytes: Vec<u8>,
    emitter: Emitter,
}

impl Ch {
    fn new() -> Self {
        Ch {
            bytes: Vec::new(),
            emitter: Emitter::new(),
        }
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    fn ev(&mut self, ev: Event) -> &mut Self {
        self.emitter.emit(&ev, &mut self.bytes).unwrap();
        self
    }
}

const RAM: u64 = 64 * 4096;

/// A main channel: header, configuration, the RAM section's setup part
/// (block list), one iteration of pages (data, zero, continued, repeated
/// content), the end part, device state, EOF. With `multifd`, data pages
/// go to the multifd channel instead.
fn channels(multifd: bool, xbzrle: bool) -> Vec<Vec<u8>> {
    let ram = name("pc.ram");
    let mut main = Ch::new();
    let mut h = Vec::new();
    h.put(Be(0x5145_564du32));
    h.put(Be(3u32));
    h.push(0x07);
    h.put(Be(13u32));
    h.extend_from_slice(b"pc-i440fx-7.2");
    main.raw(&h);
    let mut start = vec![0x01];
    start.put(Be(2u32));
    start.push(3);
    start.extend_from_slice(b"ram");
    start.put(Be(0u32));
    start.put(Be(4u32));
    main.raw(&start);
    main.ev(Event::BlockList(BlockList {
        total: RAM + 4096,
        blocks: vec![
            RamBlock {
                name: ram.clone(),
                used_length: RAM,
                gpa: None,
            },
            RamBlock {
                name: name("pc.bios"),
                used_length: 4096,
                gpa: None,
            },
        ],
    }));
    let eos = |id: u32| {
        let mut b = Vec::new();
        b.put(Be(ram_flag::EOS));
        b.push(0x7e);
        b.put(Be(id));
        b
    };
    main.raw(&eos(2));
    let mut part = vec![0x02];
    part.put(Be(2u32));
    main.raw(&part);
    let mut mf = Ch::new();
    let mut packet_offsets = Vec::new();
    let mut packet_pages = Vec::new();
    for i in 0..RAM / 4096 {
        let offset = i * 4096;
        let continued = i > 0;
        match i % 4 {
            0 => {
                main.ev(Event::Zero(ZeroPage {
                    block: ram.clone(),
                    offset,
                    fill: 0,
                    continued,
                }));
            }
            k => {
                // k == 3 repeats content sent earlier (a session reference).
                let data = page_data(if k == 3 { 1 } else { i });
                if multifd {
                    packet_offsets.push(offset);
                    packet_pages.push(data);
                } else {
                    main.ev(Event::Page(Page {
                        block: ram.clone(),
                        offset,
                        data,
                        framing: PageFraming::Record { continued },
                    }));
                }
            }
        }
    }
    main.ev(Event::Page(Page {
        block: name("pc.bios"),
        offset: 0,
        data: page_data(7),
        framing: PageFraming::Record { continued: false },
    }));
    if xbzrle {
        // An xbzrle record for the bios page (`u8` 1, `be16` len, delta).
        let mut rec = Vec::new();
        rec.put(Be(ram_flag::XBZRLE | ram_flag::CONTINUE));
        rec.extend_from_slice(&[1, 0, 4, 1, 2, 3, 4]);
        main.raw(&rec);
    }
    if multifd {
        mf.ev(Event::MultifdHello(MultifdHello {
            uuid: [0; 16],
            channel: 0,
        }));
        let mut ramblock = b"pc.ram".to_vec();
        ramblock.resize(MULTIFD_RAMBLOCK_LEN, 0);
        let n = packet_offsets.len() as u32;
        let mut offsets = packet_offsets.clone();
        offsets.resize(128, 0);
        mf.ev(Event::MultifdPacket(MultifdPacket {
            flags: 0,
            pages_alloc: 128,
            normal_pages: n,
            next_packet_size: n * 4096,
            packet_num: 1,
            ramblock: Bytes::from(ramblock.clone()),
            offsets: offsets.clone(),
        }));
        for (o, d) in packet_offsets.iter().zip(&packet_pages) {
            mf.ev(Event::Page(Page {
                block: ram.clone(),
                offset: *o,
                data: d.clone(),
                framing: PageFraming::Packet,
            }));
        }
        mf.ev(Event::MultifdPacket(MultifdPacket {
            flags: MULTIFD_FLAG_SYNC,
            pages_alloc: 128,
            normal_pages: 0,
            next_packet_size: n * 4096,
            packet_num: 2,
            ramblock: Bytes::from(ramblock),
            offsets,
        }));
    }
    main.raw(&eos(2));
    let mut end = vec![0x03];
    end.put(Be(2u32));
    main.raw(&end);
    main.raw(&eos(2));
    // Device state: opaque to the parser, relayed verbatim.
    let mut full = vec![0x04];
    full.put(Be(3u32));
    full.push(6);
    full.extend_from_slice(b"timer0");
    full.put(Be(0u32));
    full.put(Be(2u32));
    full.extend_from_slice(&[0x55; 300]);
    main.raw(&full);
    main.raw(&[0x00]);
    let mut out = vec![main.bytes];
    if multifd {
        out.push(mf.bytes);
    }
    out
}

/// Runs `chans` through both sides with reads of `chunk` bytes, the
/// channels' reads interleaved; returns what the destination wrote per
/// channel and the frame bytes.
fn relay(chans: &[Vec<u8>], chunk: usize, inventory: Inventory) -> (Vec<Vec<u8>>, u64, u64) {
    let mut src = SourceRelay::new(EncoderConfig::default(), inventory).unwrap();
    let mut dst = DestRelay::new(Decoder::new(DecoderConfig::default(), NoStore).unwrap());
    let mut wire = Vec::new();
    for _ in chans {
        src.open_channel(&mut wire).unwrap();
    }
    let mut at = vec![0usize; chans.len()];
    while at.iter().zip(chans).any(|(a, c)| *a < c.len()) {
        for (i, c) in chans.iter().enumerate() {
            let end = (at[i] + chunk).min(c.len());
            if at[i] < end {
                src.push(i as u8, &c[at[i]..end], &mut wire).unwrap();
                at[i] = end;
            }
        }
    }
    for i in 0..chans.len() {
        src.end(i as u8, &mut wire).unwrap();
    }
    let mut outs = vec![Vec::new(); chans.len()];
    let mut closed = vec![false; chans.len()];
    let mut nack_count = 0u64;
    let mut dec = FrameDecoder::new(MAX_BODY);
    let mut pending = wire;
    let mut frame_bytes = 0u64;
    // Frames flow one way in `pending`; NACKs come back and their fills
    // join the queue, as on the stream.
    while !pending.is_empty() {
        frame_bytes += pending.len() as u64;
        dec.feed(&pending);
        pending = Vec::new();
        while let Some(raw) = dec.next().unwrap() {
            let f = Frame::read(raw.tag, &raw.body).unwrap();
            let mut actions = Vec::new();
            dst.on_frame(f, &mut actions).unwrap();
            for a in actions {
                match a {
                    Action::Open(_) => {}
                    Action::Write(ch, b) => outs[ch as usize].extend_from_slice(&b),
                    Action::Close(ch) => closed[ch as usize] = true,
                    Action::Nacks(list) => {
                        nack_count += list.len() as u64;
                        src.on_nacks(&list, &mut pending).unwrap();
                    }
                }
            }
        }
    }
    assert!(closed.iter().all(|c| *c), "every channel closes");
    assert!(dst.finished());
    (outs, frame_bytes, nack_count)
}

#[test]
fn precopy_and_multifd_channels_come_out_byte_identical_in_any_chunking() {
    for multifd in [false, true] {
        let chans = channels(multifd, false);
        for chunk in [1usize, 7, 4096, 65536, 1 << 20] {
            let (outs, frame_bytes, nacks) = relay(&chans, chunk, Inventory::new());
            assert_eq!(nacks, 0);
            for (i, (o, c)) in outs.iter().zip(&chans).enumerate() {
                assert!(
                    o == c,
                    "multifd {multifd}, chunk {chunk}: channel {i} differs"
                );
            }
            let total: usize = chans.iter().map(Vec::len).sum();
            if chunk >= 4096 {
                assert!(
                    (frame_bytes as usize) < total / 2,
                    "multifd {multifd}, chunk {chunk}: {frame_bytes} frame bytes for {total} QEMU bytes"
                );
            }
        }
    }
}

#[test]
fn a_reference_the_destination_cannot_resolve_holds_its_channel_until_filled() {
    // The source believes the destination holds page 1's content (its
    // inventory says so); the destination's store is empty, so it NACKs
    // and the channel waits for the fill.
    let mut inv = Inventory::new();
    inv.insert(&Fingerprint::of(page_data(1).as_ref().try_into().unwrap()));
    for multifd in [false, true] {
        let chans = channels(multifd, false);
        let (outs, _, nacks) = relay(&chans, 65536, inv.clone());
        assert!(nacks > 0, "the destination NACKed the reference");
        for (o, c) in outs.iter().zip(&chans) {
            assert!(
                o == c,
                "multifd {multifd}: a channel differs after the fill"
            );
        }
    }
}

#[test]
fn what_the_parser_does_not_reduce_is_relayed_verbatim_and_reported() {
    // An xbzrle record: the parser switches the channel to passthrough.
    let chans = channels(false, true);
    let main = &chans[0];
    let mut src = SourceRelay::new(EncoderConfig::default(), Inventory::new()).unwrap();
    let mut wire = Vec::new();
    src.open_channel(&mut wire).unwrap();
    src.push(0, main, &mut wire).unwrap();
    src.end(0, &mut wire).unwrap();
    assert_eq!(src.stats().passthrough.len(), 1, "{:?}", src.stats());
    let (outs, _, _) = relay(&chans, 4096, Inventory::new());
    assert!(outs[0] == chans[0]);
}
