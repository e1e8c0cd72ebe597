//! Offline codec measurements on the real-memory corpus (no link, no
//! network): for each image, the bytes wanmig's codec produces and the CPU
//! it spends, beside what QEMU 7.2's multifd + zstd would send and what
//! plain zstd makes of the image's distinct pages. Prints three tables and
//! writes them as JSON.
//!
//! ```sh
//! cargo bench -p wanmig-benches --bench corpus_codec
//! WANMIG_CORPUS_IMAGES=linux-pagecache-256m cargo bench -p wanmig-benches --bench corpus_codec
//! ```
//!
//! Images missing from the corpus are built first (`benches/corpus/build.sh`:
//! minutes per 2 GiB guest under TCG; needs root and QEMU).
//!
//! Columns:
//! - **QEMU**: `multifd_model`, 2 channels, zstd level 1 (QEMU's default).
//! - **wanmig cold**: one `Encoder` with the gateway's default
//!   `EncoderConfig` (level 1, 32-page batches) and an empty inventory, fed
//!   the image in page order in the shim's messages of `BATCH_PAGES`
//!   pages, as the gateway feeds it. Then the same with one setting
//!   changed ([`VARIANTS`]): level 3 (where the level controller goes on a
//!   250 Mbit/s link with spare CPU), 128-page batches (QEMU's packet
//!   size), the long-distance stream (`LongDistance::default()`, level 1)
//!   and one zstd frame per batch instead of the default context stream
//!   (`context_window_log = 0`).
//! - **wanmig warm**: the same image again, with the inventory of a page
//!   store that holds it: the cold level-1 stream decoded into a
//!   `PageStore`, as a destination site keeps it.
//! - **zstd**: the distinct non-zero pages concatenated in image order,
//!   compressed whole at level 1, and at level 3 with a 128 MiB window and
//!   long-distance matching (`zstd --long=27`).
//!
//! Bytes are codec output only (QEMU: channel payload and headers; wanmig:
//! batches), without transport framing. CPU is this thread's CPU time per
//! GiB of image (zero pages included), encode only. Every wanmig stream is
//! decoded again and checked page by page against the image.
//!
//! Environment: `WANMIG_CORPUS_IMAGES` (comma-separated names; default
//! `corpus::BENCH_IMAGES`), `WANMIG_CORPUS_DIR` (see `corpus::dir`),
//! `WANMIG_REPORT_DIR` (default `target/corpus-codec`, relative to the
//! workspace root).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use wanmig_benches::corpus::{self, Census, Image};
use wanmig_benches::qemu::multifd_model::{MultifdBytes, MultifdZstd};
use wanmig_codec::{
    Decoder, DecoderConfig, Encoder, EncoderConfig, EncoderStats, Gfn, Inventory, LongDistance,
    PageBytes, PageStore, PAGE_SIZE,
};
use wanmig_migration::shim::BATCH_PAGES;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .expect("CLOCK_THREAD_CPUTIME_ID is supported on Linux")
}

/// Runs `f` and returns its result and the CPU time it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = thread_cpu();
    let r = f();
    (r, thread_cpu() - t0)
}

/// One codec's result on one image.
#[derive(Debug, Clone, Serialize)]
struct Measure {
    bytes: u64,
    cpu_s: f64,
}

/// A change to `EncoderConfig::default()`.
type Change = fn(&mut EncoderConfig);

/// The cold encoder settings measured beside the default.
const VARIANTS: &[(&str, Change)] = &[
    ("level 3", |c| c.level = 3),
    ("128-page batches", |c| c.batch_pages = 128),
    ("long-distance", |c| {
        c.long_distance = Some(LongDistance::default())
    }),
    ("one zstd frame per batch", |c| c.context_window_log = 0),
];

#[derive(Debug, Serialize)]
struct Variant {
    name: &'static str,
    #[serde(flatten)]
    measure: Measure,
}

#[derive(Debug, Serialize)]
struct Row {
    image: String,
    description: String,
    image_bytes: u64,
    pages: u64,
    zero_pages: u64,
    distinct_pages: u64,
    build_seconds: u64,
    qemu: Measure,
    qemu_detail: MultifdBytes,
    wanmig_cold: Measure,
    wanmig_cold_stats: Stats,
    /// The cold encoder with one setting changed ([`VARIANTS`]).
    wanmig_cold_variants: Vec<Variant>,
    wanmig_warm: Measure,
    wanmig_warm_stats: Stats,
    zstd1_distinct: Measure,
    zstd_long27_distinct: Measure,
}

/// The encoder's page counts (a serializable copy of `EncoderStats`).
#[derive(Debug, Clone, Serialize)]
struct Stats {
    zero: u64,
    ref_inventory: u64,
    ref_session: u64,
    delta: u64,
    compressed: u64,
    raw: u64,
    batches: u64,
    /// NACKs the destination sent while decoding.
    nacks: u64,
}

impl Stats {
    fn new(s: &EncoderStats, nacks: u64) -> Self {
        Stats {
            zero: s.zero,
            ref_inventory: s.ref_inventory,
            ref_session: s.ref_session,
            delta: s.delta,
            compressed: s.compressed,
            raw: s.raw,
            batches: s.batches,
            nacks,
        }
    }
}

fn pages(image: &[u8]) -> impl Iterator<Item = (Gfn, &PageBytes)> {
    image
        .chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, p)| (Gfn(i as u64), p.try_into().expect("a whole page")))
}

/// Encodes `image` with one encoder, in the gateway's message-sized calls.
fn encode(
    image: &[u8],
    cfg: EncoderConfig,
    inventory: Inventory,
) -> Result<(Vec<Vec<u8>>, EncoderStats, Duration)> {
    let mut enc = Encoder::new(cfg, inventory).context("encoder config")?;
    let mut batches = Vec::new();
    let all: Vec<(Gfn, &PageBytes)> = pages(image).collect();
    let ((), cpu) = timed(|| {
        for msg in all.chunks(BATCH_PAGES) {
            batches.extend(enc.encode(msg.iter().copied()));
        }
    });
    Ok((batches, enc.stats(), cpu))
}

fn measure(batches: &[Vec<u8>], cpu: Duration) -> Measure {
    Measure {
        bytes: batches.iter().map(|b| b.len() as u64).sum(),
        cpu_s: cpu.as_secs_f64(),
    }
}

/// Decodes `batches` into `store` and checks every page against `image`;
/// returns the NACK count.
fn decode_and_check(image: &[u8], batches: &[Vec<u8>], store: &mut PageStore) -> Result<u64> {
    let mut dec = Decoder::new(DecoderConfig::default(), store)?;
    let mut delivered = vec![false; image.len() / PAGE_SIZE];
    let mut nacks = 0;
    for b in batches {
        let out = dec.decode(b).context("decoding wanmig's own batch")?;
        nacks += out.nacks.len() as u64;
        for (gfn, page) in out.pages {
            let i = gfn.0 as usize;
            ensure!(
                page[..] == image[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                "page {i} decoded wrong"
            );
            delivered[i] = true;
        }
    }
    let missing = delivered.iter().filter(|d| !**d).count() as u64;
    ensure!(
        missing == nacks,
        "{missing} pages not delivered, {nacks} NACKed"
    );
    Ok(nacks)
}

fn zstd_distinct(distinct: &[u8], long: bool) -> Result<Measure> {
    use zstd::zstd_safe::CParameter;
    let level = if long { 3 } else { 1 };
    let mut c = zstd::bulk::Compressor::new(level)?;
    if long {
        c.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
        c.set_parameter(CParameter::WindowLog(27))?;
    }
    let (out, cpu) = timed(|| c.compress(distinct));
    Ok(Measure {
        bytes: out?.len() as u64,
        cpu_s: cpu.as_secs_f64(),
    })
}

fn measure_image(img: &Image) -> Result<Row> {
    let name = &img.meta.name;
    eprintln!("corpus_codec: {name}: reading {}", img.path.display());
    let data = img.read()?;
    let census = Census::of(&data);

    eprintln!("corpus_codec: {name}: QEMU multifd model");
    let (qemu, qemu_cpu) = timed(|| MultifdZstd::default().send(&data, |_, _| {}));
    let qemu = qemu?;

    eprintln!("corpus_codec: {name}: wanmig cold");
    let (cold, cold_stats, cold_cpu) = encode(&data, EncoderConfig::default(), Inventory::new())?;
    let store_dir = tempfile::tempdir().context("a directory for the page store")?;
    let mut store = PageStore::open(store_dir.path(), data.len() as u64)?;
    let cold_nacks = decode_and_check(&data, &cold, &mut store)?;

    eprintln!("corpus_codec: {name}: wanmig warm");
    let (warm, warm_stats, warm_cpu) = encode(&data, EncoderConfig::default(), store.inventory())?;
    let warm_nacks = decode_and_check(&data, &warm, &mut store)?;
    drop(store);

    let mut variants = Vec::new();
    for (i, (variant, change)) in VARIANTS.iter().enumerate() {
        eprintln!("corpus_codec: {name}: wanmig cold, {variant}");
        let mut cfg = EncoderConfig::default();
        change(&mut cfg);
        let (batches, _, cpu) = encode(&data, cfg, Inventory::new())?;
        let mut fresh = PageStore::open(&store_dir.path().join(i.to_string()), data.len() as u64)?;
        decode_and_check(&data, &batches, &mut fresh)?;
        variants.push(Variant {
            name: variant,
            measure: measure(&batches, cpu),
        });
    }

    eprintln!("corpus_codec: {name}: zstd on the distinct pages");
    let distinct = census.distinct_bytes(&data);
    let z1 = zstd_distinct(&distinct, false)?;
    let zl = zstd_distinct(&distinct, true)?;

    Ok(Row {
        image: name.clone(),
        description: img.meta.description.clone(),
        image_bytes: data.len() as u64,
        pages: census.pages,
        zero_pages: census.zero,
        distinct_pages: census.distinct.len() as u64,
        build_seconds: img.meta.build_seconds,
        qemu: Measure {
            bytes: qemu.total(),
            cpu_s: qemu_cpu.as_secs_f64(),
        },
        qemu_detail: qemu,
        wanmig_cold: measure(&cold, cold_cpu),
        wanmig_cold_stats: Stats::new(&cold_stats, cold_nacks),
        wanmig_cold_variants: variants,
        wanmig_warm: measure(&warm, warm_cpu),
        wanmig_warm_stats: Stats::new(&warm_stats, warm_nacks),
        zstd1_distinct: z1,
        zstd_long27_distinct: zl,
    })
}

fn print_tables(rows: &[Row]) {
    let mib = |b: u64| b as f64 / MIB;
    println!("\n## Images\n");
    println!("| image | MiB | zero pages | non-zero MiB | distinct MiB | built in |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.1}% | {:.1} | {:.1} | {} s |",
            r.image,
            mib(r.image_bytes),
            r.zero_pages as f64 * 100.0 / r.pages as f64,
            mib((r.pages - r.zero_pages) * PAGE_SIZE as u64),
            mib(r.distinct_pages * PAGE_SIZE as u64),
            r.build_seconds
        );
    }

    let variant_heads: String = VARIANTS
        .iter()
        .map(|(v, _)| format!(" wanmig cold, {v} |"))
        .collect();
    let rule = "---|".repeat(VARIANTS.len());

    println!("\n## Bytes out, MiB (× QEMU's)\n");
    println!(
        "| image | QEMU multifd×2 zstd-1 | wanmig cold |{variant_heads} wanmig warm | zstd -1, distinct pages | zstd --long=27, distinct pages |"
    );
    println!("|---|---|---|{rule}---|---|---|");
    for r in rows {
        let q = r.qemu.bytes as f64;
        let cell = |m: &Measure| format!(" {:.1} ({:.2}×) |", mib(m.bytes), m.bytes as f64 / q);
        let variants: String = r
            .wanmig_cold_variants
            .iter()
            .map(|v| cell(&v.measure))
            .collect();
        println!(
            "| {} | {:.1} |{}{}{}{}{}",
            r.image,
            mib(r.qemu.bytes),
            cell(&r.wanmig_cold),
            variants,
            cell(&r.wanmig_warm),
            cell(&r.zstd1_distinct),
            cell(&r.zstd_long27_distinct),
        );
    }

    println!("\n## Encode CPU, seconds per GiB of image\n");
    println!("| image | QEMU multifd×2 zstd-1 | wanmig cold |{variant_heads} wanmig warm |");
    println!("|---|---|---|{rule}---|");
    for r in rows {
        let gib = r.image_bytes as f64 / GIB;
        let s = |m: &Measure| format!(" {:.2} |", m.cpu_s / gib);
        let variants: String = r
            .wanmig_cold_variants
            .iter()
            .map(|v| s(&v.measure))
            .collect();
        println!(
            "| {} |{}{}{}{}",
            r.image,
            s(&r.qemu),
            s(&r.wanmig_cold),
            variants,
            s(&r.wanmig_warm),
        );
    }

    println!("\n## wanmig's records, pages (cold / warm)\n");
    println!(
        "| image | zero | ref to store | ref in session | delta | zstd | raw | batches | NACKs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (c, w) = (&r.wanmig_cold_stats, &r.wanmig_warm_stats);
        println!(
            "| {} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} |",
            r.image,
            c.zero,
            w.zero,
            c.ref_inventory,
            w.ref_inventory,
            c.ref_session,
            w.ref_session,
            c.delta,
            w.delta,
            c.compressed,
            w.compressed,
            c.raw,
            w.raw,
            c.batches,
            w.batches,
            c.nacks,
            w.nacks
        );
    }
}

fn main() -> Result<()> {
    let names: Vec<String> = match std::env::var("WANMIG_CORPUS_IMAGES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => corpus::BENCH_IMAGES.iter().map(|s| s.to_string()).collect(),
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let images = corpus::ensure(&refs)?;
    let mut rows = Vec::new();
    for img in &images {
        rows.push(measure_image(img).with_context(|| format!("measuring {}", img.meta.name))?);
    }
    print_tables(&rows);

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let out_dir = std::env::var_os("WANMIG_REPORT_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target/corpus-codec"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join("corpus_codec.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}
