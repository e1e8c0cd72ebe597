//! Properties over generated input: for any bytes in any chunking the
//! parser neither panics nor loses a byte (emit ∘ parse is the identity),
//! and generated well-formed channels come out as the events they were
//! built from.

mod common;

use common::synth::{page_data, Channel};
use common::{coalesce, emit_all, run};
use proptest::prelude::*;
use wanmig_qemu_stream::{Event, Parser};

/// A parser of each kind.
fn parsers() -> impl Strategy<Value = fn() -> Parser> {
    prop_oneof![
        Just(Parser::new as fn() -> Parser),
        Just(Parser::main as fn() -> Parser),
        Just(Parser::multifd as fn() -> Parser),
    ]
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5000, 0..8)
}

/// Valid channels with bytes changed, inserted, cut: inputs that get past
/// the magic and into the grammar before going wrong.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        Just(Channel::precopy().bytes),
        Just(Channel::multifd().bytes)
    ];
    (
        base,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut b, edits, cut)| {
            for (at, v, how) in edits {
                let i = at.index(b.len());
                match how {
                    0 => b[i] = v,
                    1 => b.insert(i, v),
                    _ => {
                        b.remove(i);
                    }
                }
            }
            let keep = b.len() - cut.index(b.len() / 4 + 1);
            b.truncate(keep);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_come_back_unchanged(
        make in parsers(),
        input in prop::collection::vec(any::<u8>(), 0..3000),
        sizes in chunk_sizes(),
    ) {
        let (events, p) = run(make(), &input, &sizes);
        prop_assert_eq!(emit_all(&events), input);
        prop_assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn damaged_channels_come_back_unchanged(
        make in parsers(),
        input in mutated(),
        sizes in chunk_sizes(),
    ) {
        let (events, p) = run(make(), &input, &sizes);
        prop_assert_eq!(emit_all(&events), input);
        prop_assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn generated_precopy_channels_parse_into_their_events(
        parts in prop::collection::vec(
            prop::collection::vec((0usize..3, 0u64..64, any::<bool>(), any::<bool>()), 0..12),
            1..4,
        ),
        sizes in chunk_sizes(),
    ) {
        let blocks = [("pc.ram", 64 * 4096u64), ("pc.bios", 64 * 4096), ("/rom@etc/acpi/tables", 64 * 4096)];
        let mut c = Channel::default();
        c.header("pc-i440fx-7.2", &[])
            .section_start(0x01, 2, "ram", 4)
            .blocks(&blocks)
            .eos_footer(2);
        let mut last: Option<usize> = None;
        let mut seed = 0;
        let (mut pages, mut zeros) = (0, 0);
        for (n, part) in parts.iter().enumerate() {
            c.section_part(if n + 1 == parts.len() { 0x03 } else { 0x02 }, 2);
            for &(b, page, is_zero, try_continue) in part {
                let continued = try_continue && last == Some(b);
                let (name, _) = blocks[b];
                if is_zero {
                    c.zero(name, page * 4096, continued);
                    zeros += 1;
                } else {
                    seed += 1;
                    c.page(name, page * 4096, continued, seed);
                    pages += 1;
                }
                last = Some(b);
            }
            c.eos_footer(2);
        }
        c.device_state();
        let (events, p) = run(Parser::new(), &c.bytes, &sizes);
        prop_assert_eq!(emit_all(&events), c.bytes.clone());
        prop_assert_eq!(coalesce(events), c.events.clone());
        prop_assert_eq!((p.stats().pages, p.stats().zero_pages), (pages, zeros));
        prop_assert!(p.unsupported().is_none());
    }

    #[test]
    fn generated_multifd_channels_parse_into_their_events(
        packets in prop::collection::vec(
            (prop::collection::vec(0u64..4096, 0..20), any::<bool>(), any::<u64>()),
            1..8,
        ),
        sizes in chunk_sizes(),
    ) {
        let mut c = Channel::default();
        c.hello(3);
        let mut stale = 0;
        for (n, (pages, sync, num)) in packets.iter().enumerate() {
            let offsets: Vec<u64> = pages.iter().map(|p| p * 4096).collect();
            c.packet(u32::from(*sync), "pc.ram", &offsets, stale, *num, n as u64 * 100);
            stale = offsets.last().copied().unwrap_or(stale);
        }
        let (events, p) = run(Parser::new(), &c.bytes, &sizes);
        prop_assert_eq!(emit_all(&events), c.bytes.clone());
        prop_assert_eq!(coalesce(events), c.events.clone());
        let want: usize = packets.iter().map(|p| p.0.len()).sum();
        prop_assert_eq!(p.stats().pages, want as u64);
    }
}

#[test]
fn page_data_differs_per_seed() {
    // The generated pages must be distinguishable for the event checks to
    // mean anything.
    assert_ne!(page_data(1), page_data(2));
    assert!(coalesce(vec![Event::Verbatim(page_data(1))]).len() == 1);
}
