//! Parsing channels built as QEMU 7.2 writes them: which events come out,
//! where parsing stops and why, and that emitting the events gives the
//! input back.

mod common;

use common::synth::{self, name, Channel};
use common::{coalesce, emit_all, run};
use wanmig_qemu_stream::format::ram_flag;
use wanmig_qemu_stream::{BlockList, ChannelKind, Event, Parser, Phase, RamBlock, Unsupported};
use wanmig_wire::{Be, WriteExt};

/// Parses `c` in `sizes`-sized pieces; checks the events and the bytes
/// they emit.
fn check(parser: Parser, c: &Channel, sizes: &[usize]) -> Parser {
    let (events, parser) = run(parser, &c.bytes, sizes);
    assert_eq!(
        emit_all(&events),
        c.bytes,
        "emitted bytes differ from the input"
    );
    assert_eq!(coalesce(events), c.events);
    parser
}

#[test]
fn precopy_pages_come_out_with_their_blocks_in_any_chunking() {
    let c = Channel::precopy();
    for sizes in [&[][..], &[1], &[7, 3, 4096], &[4095, 4097]] {
        let p = check(Parser::new(), &c, sizes);
        assert_eq!(p.kind(), Some(ChannelKind::Main));
        assert_eq!(p.phase(), &Phase::DeviceState);
        let s = p.stats();
        assert_eq!((s.pages, s.zero_pages, s.ram_parts), (3, 2, 3));
        assert_eq!(s.bytes_in, c.bytes.len() as u64);
        assert!(!p.truncated());
    }
}

#[test]
fn a_continued_record_names_the_block_last_named_even_in_an_earlier_part() {
    let c = Channel::precopy();
    let (events, _) = run(Parser::main(), &c.bytes, &[]);
    let zeros: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Zero(z) => Some((z.block.clone(), z.offset, z.continued)),
            _ => None,
        })
        .collect();
    // The END part's zero page continues pc.ram, named in the PART before.
    assert_eq!(
        zeros,
        vec![
            (name("pc.ram"), 0x2000, true),
            (name("pc.ram"), 0x1000, true)
        ]
    );
}

#[test]
fn the_block_list_is_parsed_and_ignore_shared_adds_addresses() {
    // configuration/capabilities listing x-ignore-shared.
    let mut sub = vec![0x05, 26];
    sub.extend_from_slice(b"configuration/capabilities");
    sub.put(Be(1u32));
    sub.put(Be(1u32));
    sub.push(15);
    sub.extend_from_slice(b"x-ignore-shared");
    let list = BlockList {
        total: 0x3000,
        blocks: vec![
            RamBlock {
                name: name("pc.ram"),
                used_length: 0x2000,
                gpa: Some(0),
            },
            RamBlock {
                name: name("pc.bios"),
                used_length: 0x1000,
                gpa: Some(0xfffc_0000),
            },
        ],
    };
    let mut c = Channel::default();
    c.header("pc-q35-7.2", &sub)
        .section_start(0x01, 3, "ram", 4)
        .event(Event::BlockList(list))
        .eos_footer(3);
    let p = check(Parser::new(), &c, &[5]);
    assert_eq!(p.phase(), &Phase::Parsing);
}

#[test]
fn return_path_ping_and_a_postcopy_advise_without_huge_pages_keep_parsing() {
    let mut advise = Vec::new();
    advise.put(Be(4096u64));
    advise.put(Be(4096u64));
    let mut c = Channel::default();
    c.header("pc-i440fx-7.2", &[])
        .command(1, &[])
        .command(2, &[0, 0, 0, 1])
        .command(3, &advise)
        .section_start(0x01, 2, "ram", 4)
        .blocks(&[("pc.ram", 0x10_0000)])
        .eos_footer(2)
        .section_part(0x02, 2)
        .page("pc.ram", 0, false, 9)
        .eos_footer(2);
    let p = check(Parser::new(), &c, &[3]);
    assert_eq!(p.phase(), &Phase::Parsing);
    assert_eq!(p.stats().pages, 1);
}

/// A precopy start followed by `tail`, which should end parsing with `why`.
fn passthrough_case(tail: &[u8], why: Unsupported) {
    let mut c = Channel::default();
    c.header("pc-i440fx-7.2", &[])
        .section_start(0x01, 2, "ram", 4)
        .blocks(&[("pc.ram", 0x10_0000)])
        .eos_footer(2)
        .section_part(0x02, 2)
        .page("pc.ram", 0x4000, false, 5)
        .expect(Event::Passthrough(why.clone()))
        .verbatim(tail);
    for sizes in [&[][..], &[1], &[100]] {
        let p = check(Parser::new(), &c, sizes);
        assert_eq!(p.unsupported(), Some(&why));
        assert_eq!(p.stats().pages, 1);
    }
}

#[test]
fn xbzrle_compress_threads_rdma_and_unknown_flags_switch_to_passthrough() {
    let mut x = Vec::new();
    x.put(Be(0x5000u64 | ram_flag::XBZRLE | ram_flag::CONTINUE));
    x.extend_from_slice(&[1, 0, 3, 0xaa, 0xbb, 0xcc]);
    passthrough_case(&x, Unsupported::Xbzrle);

    let mut z = Vec::new();
    z.put(Be(0x5000u64 | ram_flag::COMPRESS_PAGE | ram_flag::CONTINUE));
    z.put(Be(3u32));
    z.extend_from_slice(&[0x78, 0x9c, 0x01]);
    passthrough_case(&z, Unsupported::CompressThreads);

    let mut h = Vec::new();
    h.put(Be(ram_flag::HOOK));
    passthrough_case(&h, Unsupported::Rdma);

    let mut u = Vec::new();
    u.put(Be(0x400u64));
    u.extend_from_slice(b"whatever follows");
    passthrough_case(&u, Unsupported::RamFlags(0x400));
}

#[test]
fn postcopy_colo_and_unknown_commands_switch_to_passthrough() {
    let eos_then = |cmd: u16, data: &[u8]| {
        let mut b = Vec::new();
        b.put(Be(ram_flag::EOS));
        b.push(0x08);
        b.put(Be(cmd));
        b.put(Be(data.len() as u16));
        b.extend_from_slice(data);
        b.extend_from_slice(&[0x02, 0, 0, 0, 2]);
        b
    };
    // The EOS before the command is parsed; the command is where it stops.
    let case = |cmd: u16, data: &[u8], why: Unsupported| {
        let tail = eos_then(cmd, data);
        let mut c = Channel::default();
        c.header("pc-i440fx-7.2", &[])
            .section_start(0x01, 2, "ram", 4)
            .blocks(&[("pc.ram", 0x10_0000)])
            .eos_footer(2)
            .section_part(0x02, 2)
            .page("pc.ram", 0x4000, false, 5)
            .verbatim(&tail[..8])
            .expect(Event::Passthrough(why.clone()))
            .verbatim(&tail[8..]);
        let p = check(Parser::new(), &c, &[2]);
        assert_eq!(p.unsupported(), Some(&why));
    };
    case(4, &[], Unsupported::Postcopy("listen"));
    case(
        7,
        &[0, 0, 1, 0],
        Unsupported::Postcopy("packaged device state"),
    );
    case(8, &[], Unsupported::Colo);
    case(42, &[1, 2], Unsupported::Command { cmd: 42, len: 2 });
    let mut huge = Vec::new();
    huge.put(Be(0x20_1000u64));
    huge.put(Be(4096u64));
    case(3, &huge, Unsupported::PostcopyHugePages(0x20_1000));
}

#[test]
fn a_live_section_other_than_ram_switches_to_passthrough() {
    let mut c = Channel::default();
    c.header("pc-i440fx-7.2", &[])
        .section_start(0x01, 2, "ram", 4)
        .blocks(&[("pc.ram", 0x10_0000)])
        .eos_footer(2)
        .expect(Event::Passthrough(Unsupported::LiveSection {
            idstr: "block".into(),
        }))
        .section_start(0x01, 3, "block", 1)
        .verbatim(&[9; 30]);
    let p = check(Parser::main(), &c, &[]);
    assert!(p.unsupported().unwrap().is_feature());
}

#[test]
fn unknown_configuration_subsections_and_page_sizes_switch_to_passthrough() {
    let mut sub = vec![0x05, 30];
    sub.extend_from_slice(b"configuration/target-page-bits");
    sub.put(Be(1u32));
    sub.put(Be(16u32));
    let mut c = Channel::default();
    c.verbatim(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3])
        .expect(Event::Passthrough(Unsupported::TargetPageBits(16)));
    let mut cfg = vec![0x07];
    cfg.put(Be(4u32));
    cfg.extend_from_slice(b"virt");
    cfg.extend_from_slice(&sub);
    c.verbatim(&cfg);
    check(Parser::new(), &c, &[1]);

    let mut c = Channel::default();
    c.verbatim(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3])
        .expect(Event::Passthrough(Unsupported::ConfigurationSubsection {
            name: "configuration/shiny".into(),
        }));
    let mut cfg = vec![0x07];
    cfg.put(Be(4u32));
    cfg.extend_from_slice(b"virt");
    cfg.push(0x05);
    cfg.push(19);
    cfg.extend_from_slice(b"configuration/shiny");
    cfg.extend_from_slice(&[0, 0, 0, 1, 7, 7]);
    c.verbatim(&cfg);
    check(Parser::new(), &c, &[]);
}

#[test]
fn other_stream_versions_and_unknown_channels_are_relayed_whole() {
    let mut c = Channel::default();
    c.expect(Event::Passthrough(Unsupported::StreamVersion(2)))
        .verbatim(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 2, 1, 2, 3]);
    check(Parser::new(), &c, &[1]);

    let mut c = Channel::default();
    c.expect(Event::Passthrough(Unsupported::UnknownChannel(*b"GET ")))
        .verbatim(b"GET / HTTP/1.1\r\n");
    let p = check(Parser::new(), &c, &[3]);
    assert_eq!(p.kind(), Some(ChannelKind::Other));
}

#[test]
fn a_channel_cut_inside_a_page_hands_back_what_it_had() {
    let c = Channel::precopy();
    // Cut in the middle of the second page's data.
    let cut = c
        .bytes
        .windows(8)
        .position(|w| w == &synth::page_data(2)[..8])
        .unwrap()
        + 100;
    let (events, p) = run(Parser::new(), &c.bytes[..cut], &[64]);
    assert!(p.truncated());
    assert_eq!(emit_all(&events), &c.bytes[..cut]);
    assert_eq!(p.stats().pages, 1);
    assert_eq!(p.buffered(), 0);
}

#[test]
fn multifd_packets_and_their_pages_come_out_and_stale_fields_survive() {
    let c = Channel::multifd();
    for sizes in [&[][..], &[1], &[1000, 4096, 3]] {
        let p = check(Parser::new(), &c, sizes);
        assert_eq!(p.kind(), Some(ChannelKind::Multifd));
        let s = p.stats();
        assert_eq!((s.pages, s.multifd_packets, s.multifd_syncs), (4, 4, 2));
    }
    let (events, _) = run(Parser::multifd(), &c.bytes, &[]);
    let pages: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Page(p) => Some((p.block.clone(), p.offset)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pages,
        [0x1000, 0x9000, 0x3000, 0x2000].map(|o| (name("pc.ram"), o))
    );
}

#[test]
fn multifd_compression_reserved_fields_and_unknown_flags_switch_to_passthrough() {
    let case = |header: Vec<u8>, why: Unsupported| {
        let mut c = Channel::default();
        c.hello(0)
            .packet(0, "pc.ram", &[0x1000], 0, 1, 3)
            .expect(Event::Passthrough(why.clone()))
            .verbatim(&header)
            .verbatim(&[0x55; 500]);
        let p = check(Parser::new(), &c, &[77]);
        assert_eq!(p.unsupported(), Some(&why));
    };
    case(
        synth::raw_packet_header(2 << 1, 1, 0),
        Unsupported::MultifdCompression(4),
    );
    case(
        synth::raw_packet_header(1 << 1, 1, 0),
        Unsupported::MultifdCompression(2),
    );
    case(
        synth::raw_packet_header(0, 1, 1),
        Unsupported::MultifdReserved,
    );
    case(
        synth::raw_packet_header(1 << 4, 0, 0),
        Unsupported::MultifdFlags(16),
    );
}
