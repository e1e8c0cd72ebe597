//! Throughput of one channel through the parser, and through the parser
//! and the emitter (what a relay does), on one core: a main channel of
//! page records (3/4 data pages, 1/4 zero pages) and a multifd channel of
//! full 128-page packets, each 16 MiB of page data, pushed in 64 KiB reads.
//!
//! Run: `cargo bench -p wanmig-qemu-stream --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wanmig_qemu_stream::{
    BlockList, BlockName, Emitter, Event, MultifdHello, MultifdPacket, Page, PageFraming, Parser,
    RamBlock, ZeroPage,
};

const PAGES: u64 = 4096;
const READ: usize = 64 << 10;

fn page(i: u64) -> Bytes {
    Bytes::from(
        (0..4096u32)
            .map(|b| (b as u64 ^ i) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn emit(events: &[Event]) -> Vec<u8> {
    let mut e = Emitter::new();
    let mut out = Vec::new();
    for ev in events {
        e.emit(ev, &mut out).unwrap();
    }
    out
}

fn main_channel() -> Vec<u8> {
    let ram = BlockName::new(&b"pc.ram"[..]).unwrap();
    let mut head = Vec::new();
    head.extend_from_slice(b"QEVM\0\0\0\x03\x07\0\0\0\x0dpc-i440fx-7.2");
    head.extend_from_slice(b"\x01\0\0\0\x02\x03ram\0\0\0\0\0\0\0\x04");
    let mut events = vec![
        Event::Verbatim(Bytes::from(head)),
        Event::BlockList(BlockList {
            total: PAGES * 4096,
            blocks: vec![RamBlock {
                name: ram.clone(),
                used_length: PAGES * 4096,
                gpa: None,
            }],
        }),
        Event::Verbatim(Bytes::from_static(
            b"\0\0\0\0\0\0\0\x10\x7e\0\0\0\x02\x02\0\0\0\x02",
        )),
    ];
    for i in 0..PAGES {
        events.push(if i % 4 == 3 {
            Event::Zero(ZeroPage {
                block: ram.clone(),
                offset: i * 4096,
                fill: 0,
                continued: i > 0,
            })
        } else {
            Event::Page(Page {
                block: ram.clone(),
                offset: i * 4096,
                data: page(i),
                framing: PageFraming::Record { continued: i > 0 },
            })
        });
    }
    events.push(Event::Verbatim(Bytes::from_static(
        b"\0\0\0\0\0\0\0\x10\x7e\0\0\0\x02",
    )));
    emit(&events)
}

fn multifd_channel() -> Vec<u8> {
    let ram = BlockName::new(&b"pc.ram"[..]).unwrap();
    let mut name = vec![0u8; 256];
    name[..6].copy_from_slice(b"pc.ram");
    let mut events = vec![Event::MultifdHello(MultifdHello {
        uuid: [0; 16],
        channel: 0,
    })];
    for p in 0..PAGES / 128 {
        let offsets: Vec<u64> = (0..128).map(|i| (p * 128 + i) * 4096).collect();
        events.push(Event::MultifdPacket(MultifdPacket {
            flags: 0,
            pages_alloc: 128,
            normal_pages: 128,
            next_packet_size: 128 * 4096,
            packet_num: p,
            ramblock: Bytes::from(name.clone()),
            offsets: offsets.clone(),
        }));
        for o in offsets {
            events.push(Event::Page(Page {
                block: ram.clone(),
                offset: o,
                data: page(o),
                framing: PageFraming::Packet,
            }));
        }
    }
    emit(&events)
}

fn relay(input: &[u8], make: fn() -> Parser, with_emit: bool) -> usize {
    let mut p = make();
    let mut e = Emitter::new();
    let mut out = Vec::with_capacity(2 * READ);
    let mut total = 0;
    for chunk in input.chunks(READ) {
        p.push(chunk);
        while let Some(ev) = p.poll() {
            if with_emit {
                e.emit(&ev, &mut out).unwrap();
            } else {
                black_box(&ev);
            }
        }
        total += out.len();
        out.clear();
    }
    total
}

fn bench(c: &mut Criterion) {
    for (name, input, make) in [
        ("main", main_channel(), Parser::main as fn() -> Parser),
        (
            "multifd",
            multifd_channel(),
            Parser::multifd as fn() -> Parser,
        ),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.sample_size(10);
        g.bench_function("parse", |b| b.iter(|| relay(&input, make, false)));
        g.bench_function("parse+emit", |b| {
            b.iter(|| assert_eq!(relay(&input, make, true), input.len()))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
