//! Codec throughput per core (one thread), per record kind and on the demo
//! mix, for encode and decode; the demo mix's reduction ratio with a cold
//! and a warm destination store; encode speed and wire share by level
//! (LZ4 = -8); and what long-distance matching buys on the demo mix and on
//! memory holding the same text at unaligned offsets.
//!
//! Run: `cargo bench -p wanmig-codec --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wanmig_codec::mix::{self, MixSpec, PageKind};
use wanmig_codec::{
    ContentStore, Decoder, DecoderConfig, Encoder, EncoderConfig, Fingerprint, Gfn, Inventory,
    LongDistance, NoStore, PageBytes, PageStore, PAGE_SIZE,
};

const PAGES: usize = 4096; // 16 MiB per iteration

fn pages(buf: &[u8]) -> impl Iterator<Item = (Gfn, &PageBytes)> {
    buf.chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, p)| (Gfn(i as u64), p.try_into().expect("page")))
}

/// A workload: the pages to encode, and how to set up encoder and decoder
/// so that the pages take the intended record kind.
struct Workload {
    name: &'static str,
    /// Sent before the measured pages (delta bases); not measured.
    prior: Option<Vec<u8>>,
    pages: Vec<u8>,
    inventory: Inventory,
}

fn workloads() -> Vec<Workload> {
    let text = mix::generate(1, PAGES, &MixSpec::only(PageKind::Text));
    // Same pages with a few bytes changed in each: re-sent → deltas.
    let mut edited = text.clone();
    for (i, p) in edited.chunks_exact_mut(PAGE_SIZE).enumerate() {
        for k in 0..6 {
            p[(i * 97 + k * 613) % PAGE_SIZE] ^= 0x5a;
        }
    }
    let held = mix::generate(2, PAGES, &MixSpec::only(PageKind::Text));
    let held_inv = Inventory::from_fingerprints(
        held.chunks_exact(PAGE_SIZE)
            .map(|p| Fingerprint::of(p.try_into().expect("page")))
            .collect::<Vec<_>>()
            .iter(),
    );
    vec![
        Workload {
            name: "zero",
            prior: None,
            pages: mix::generate(1, PAGES, &MixSpec::only(PageKind::Zero)),
            inventory: Inventory::new(),
        },
        Workload {
            name: "ref",
            prior: None,
            pages: held,
            inventory: held_inv,
        },
        Workload {
            name: "delta",
            prior: Some(text.clone()),
            pages: edited,
            inventory: Inventory::new(),
        },
        Workload {
            name: "text",
            prior: None,
            pages: text,
            inventory: Inventory::new(),
        },
        Workload {
            name: "incompressible",
            prior: None,
            pages: mix::generate(1, PAGES, &MixSpec::only(PageKind::Incompressible)),
            inventory: Inventory::new(),
        },
        Workload {
            name: "demo_mix",
            prior: None,
            pages: mix::generate(42, PAGES, &MixSpec::demo()),
            inventory: Inventory::new(),
        },
    ]
}

fn primed_encoder(w: &Workload) -> Encoder {
    let mut enc = Encoder::new(EncoderConfig::default(), w.inventory.clone()).expect("encoder");
    if let Some(prior) = &w.prior {
        black_box(enc.encode(pages(prior)));
    }
    enc
}

/// A decoder holding what the destination holds for `w`, and the batches.
fn primed_decoder(w: &Workload) -> (Decoder<NoStore>, Vec<Vec<u8>>) {
    let mut enc = primed_encoder(w);
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).expect("decoder");
    let mut ref_src = Encoder::new(EncoderConfig::default(), Inventory::new()).expect("encoder");
    if w.name == "ref" {
        // The destination received this content before.
        for b in ref_src.encode(pages(&w.pages)) {
            dec.decode(&b).expect("decode");
        }
    }
    if let Some(prior) = &w.prior {
        let mut e2 = Encoder::new(EncoderConfig::default(), Inventory::new()).expect("encoder");
        for b in e2.encode(pages(prior)) {
            dec.decode(&b).expect("decode");
        }
    }
    let batches = enc.encode(pages(&w.pages));
    (dec, batches)
}

fn migrate<S: ContentStore>(enc: &mut Encoder, dec: &mut Decoder<S>, mem: &[u8]) -> u64 {
    let mut wire = 0u64;
    for b in enc.encode(pages(mem)) {
        wire += b.len() as u64;
        let d = dec.decode(&b).expect("decode");
        assert!(d.nacks.is_empty(), "unexpected NACK in the ratio run");
    }
    wire
}

fn report_ratios() {
    let n = 16_384; // 64 MiB of guest memory
    let mem = mix::generate(7, n, &MixSpec::demo());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PageStore::open(dir.path(), 1 << 30).expect("store");
    let mut enc = Encoder::new(EncoderConfig::default(), store.inventory()).expect("encoder");
    let mut dec = Decoder::new(DecoderConfig::default(), store).expect("decoder");
    let cold = migrate(&mut enc, &mut dec, &mem);
    let s = enc.stats();
    let store = dec.into_store();
    let mut enc2 = Encoder::new(EncoderConfig::default(), store.inventory()).expect("encoder");
    let mut dec2 = Decoder::new(DecoderConfig::default(), store).expect("decoder");
    let warm = migrate(&mut enc2, &mut dec2, &mem);
    let guest = (n * PAGE_SIZE) as f64;
    println!(
        "demo mix, {} MiB: pages zero {} ref {} delta {} compressed {} raw {}",
        (n * PAGE_SIZE) >> 20,
        s.zero,
        s.refs(),
        s.delta,
        s.compressed,
        s.raw
    );
    println!(
        "demo mix reduction, cold store: {:.2}x (wire = {:.1}% of guest memory)",
        guest / cold as f64,
        100.0 * cold as f64 / guest
    );
    println!(
        "demo mix reduction, warm store: {:.2}x (wire = {:.2}% of guest memory)",
        guest / warm as f64,
        100.0 * warm as f64 / guest
    );
}

/// Memory holding one 1 MiB text (a log, a file in the page cache) 16
/// times, each copy `13 * j` bytes further along than page-aligned: page
/// dedup finds nothing, a long-distance window finds every copy.
fn shifted_copies() -> Vec<u8> {
    let blob = mix::generate(5, 256, &MixSpec::only(PageKind::Text));
    let mut mem = vec![0u8; PAGES * PAGE_SIZE];
    for (j, copy) in mem.chunks_exact_mut(blob.len()).enumerate() {
        let shift = 13 * j + 1;
        copy[..shift].fill(b' ');
        copy[shift..].copy_from_slice(&blob[..blob.len() - shift]);
    }
    mem
}

/// Wire bytes ÷ guest bytes of `mem` at `level`, with or without the
/// long-distance stream, checked to decode exactly.
fn wire_share(mem: &[u8], level: i32, long: Option<LongDistance>) -> f64 {
    let cfg = EncoderConfig {
        level,
        long_distance: long,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, Inventory::new()).expect("encoder");
    let mut dec = Decoder::new(DecoderConfig::default(), NoStore).expect("decoder");
    let mut wire = 0usize;
    let mut pages_out = 0usize;
    for b in enc.encode(pages(mem)) {
        wire += b.len();
        let d = dec.decode(&b).expect("decode");
        for (g, p) in d.pages {
            let at = g.0 as usize * PAGE_SIZE;
            assert!(mem[at..at + PAGE_SIZE] == p[..], "{g} differs");
            pages_out += 1;
        }
    }
    assert_eq!(pages_out * PAGE_SIZE, mem.len());
    wire as f64 / mem.len() as f64
}

fn report_long_distance() {
    let ld = Some(LongDistance::default());
    let demo = mix::generate(42, PAGES, &MixSpec::demo());
    let shifted = shifted_copies();
    for (name, mem) in [("demo mix", &demo), ("unaligned copies", &shifted)] {
        for level in [1, 3, 6] {
            println!(
                "{name} at level {level}: wire = {:.1}% of guest memory per batch, {:.1}% with long-distance matching (window 2^{})",
                100.0 * wire_share(mem, level, None),
                100.0 * wire_share(mem, level, ld),
                LongDistance::default().window_log,
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    report_ratios();
    report_long_distance();
    let ws = workloads();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes((PAGES * PAGE_SIZE) as u64));
    g.sample_size(10);
    for w in &ws {
        g.bench_function(w.name, |b| {
            b.iter_batched(
                || primed_encoder(w),
                |mut enc| black_box(enc.encode(pages(&w.pages))),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    // The level controller's menu: demo-mix encode speed by zstd level.
    let mut g = c.benchmark_group("encode_demo_mix_by_level");
    g.throughput(Throughput::Bytes((PAGES * PAGE_SIZE) as u64));
    g.sample_size(10);
    let demo = ws.iter().find(|w| w.name == "demo_mix").expect("demo");
    for level in [wanmig_codec::LZ4_LEVEL, -5, -1, 1, 3, 6] {
        let wire: usize = {
            let mut enc = primed_encoder(demo);
            enc.set_level(level).expect("level");
            enc.encode(pages(&demo.pages)).iter().map(Vec::len).sum()
        };
        println!(
            "demo mix at level {level}: wire = {:.1}% of guest memory",
            100.0 * wire as f64 / demo.pages.len() as f64
        );
        g.bench_function(format!("level_{level}"), |b| {
            b.iter_batched(
                || {
                    let mut enc = primed_encoder(demo);
                    enc.set_level(level).expect("level");
                    enc
                },
                |mut enc| black_box(enc.encode(pages(&demo.pages))),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    // Long-distance matching costs CPU: encode speed with it, by level.
    let mut g = c.benchmark_group("encode_demo_mix_long_distance");
    g.throughput(Throughput::Bytes((PAGES * PAGE_SIZE) as u64));
    g.sample_size(10);
    for level in [1, 3] {
        g.bench_function(format!("level_{level}"), |b| {
            b.iter_batched(
                || {
                    let cfg = EncoderConfig {
                        level,
                        long_distance: Some(LongDistance::default()),
                        ..EncoderConfig::default()
                    };
                    Encoder::new(cfg, Inventory::new()).expect("encoder")
                },
                |mut enc| black_box(enc.encode(pages(&demo.pages))),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes((PAGES * PAGE_SIZE) as u64));
    g.sample_size(10);
    for w in &ws {
        g.bench_function(w.name, |b| {
            b.iter_batched(
                || primed_decoder(w),
                |(mut dec, batches)| {
                    for batch in &batches {
                        let d = dec.decode(batch).expect("decode");
                        assert!(d.nacks.is_empty());
                        black_box(d);
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    // The demo mix encoded with LZ4 and through the long-distance stream.
    let demo = ws.iter().find(|w| w.name == "demo_mix").expect("demo");
    for (name, level, long) in [
        ("demo_mix_lz4", wanmig_codec::LZ4_LEVEL, None),
        ("demo_mix_long_distance", 3, Some(LongDistance::default())),
    ] {
        let cfg = EncoderConfig {
            level,
            long_distance: long,
            ..EncoderConfig::default()
        };
        let batches = Encoder::new(cfg, Inventory::new())
            .expect("encoder")
            .encode(pages(&demo.pages));
        g.bench_function(name, |b| {
            b.iter_batched(
                || Decoder::new(DecoderConfig::default(), NoStore).expect("decoder"),
                |mut dec| {
                    for batch in &batches {
                        black_box(dec.decode(batch).expect("decode"));
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    // Decode into a real on-disk page store (every page recorded).
    let demo = ws.iter().find(|w| w.name == "demo_mix").expect("demo");
    g.bench_function("demo_mix_into_page_store", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = PageStore::open(dir.path(), 1 << 30).expect("store");
                let dec = Decoder::new(DecoderConfig::default(), store).expect("decoder");
                let mut enc = primed_encoder(demo);
                (dir, dec, enc.encode(pages(&demo.pages)))
            },
            |(_dir, mut dec, batches)| {
                for batch in &batches {
                    black_box(dec.decode(batch).expect("decode"));
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let mut g = c.benchmark_group("mix");
    g.throughput(Throughput::Bytes((PAGES * PAGE_SIZE) as u64));
    g.sample_size(10);
    let mut buf = vec![0u8; PAGES * PAGE_SIZE];
    g.bench_function("generate_demo", |b| {
        b.iter(|| mix::fill(42, 0, &MixSpec::demo(), black_box(&mut buf)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
