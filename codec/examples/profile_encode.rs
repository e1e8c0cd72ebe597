//! Encodes (and optionally decodes) one of the benchmark workloads once,
//! for profiling the codec under `valgrind --tool=callgrind`: instruction
//! counts are repeatable on a noisy shared machine, unlike wall-clock
//! timings (which they do not replace: page faults and cache misses cost
//! time but few instructions).
//!
//! Run:
//! ```text
//! cargo build --release -p wanmig-codec --example profile_encode
//! valgrind --tool=callgrind --toggle-collect='wanmig_codec::encoder::Encoder::encode' \
//!     target/release/examples/profile_encode demo_mix 1
//! ```
//! Arguments: workload (zero, ref, delta, text, incompressible, demo_mix;
//! default demo_mix), level (default 1; -8 is LZ4), pages (default 4096),
//! `decode` to decode the batches as well.

use wanmig_codec::mix::{self, MixSpec, PageKind};
use wanmig_codec::{
    Decoder, DecoderConfig, Encoder, EncoderConfig, Fingerprint, Gfn, Inventory, NoStore,
    PageBytes, PAGE_SIZE,
};

fn pages(buf: &[u8]) -> impl Iterator<Item = (Gfn, &PageBytes)> {
    buf.chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, p)| (Gfn(i as u64), p.try_into().expect("page")))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "demo_mix".into());
    let level: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let decode = args.next().as_deref() == Some("decode");
    let cfg = EncoderConfig {
        level,
        ..EncoderConfig::default()
    };
    // The same workloads as benches/codec.rs.
    let text = || mix::generate(1, n, &MixSpec::only(PageKind::Text));
    let (mem, inventory, prior) = match kind.as_str() {
        "zero" => (vec![0u8; n * PAGE_SIZE], Inventory::new(), None),
        "ref" => {
            let held = mix::generate(2, n, &MixSpec::only(PageKind::Text));
            let fps: Vec<Fingerprint> = held
                .chunks_exact(PAGE_SIZE)
                .map(|p| Fingerprint::of(p.try_into().expect("page")))
                .collect();
            (held, Inventory::from_fingerprints(fps.iter()), None)
        }
        "delta" => {
            let mut edited = text();
            for (i, p) in edited.chunks_exact_mut(PAGE_SIZE).enumerate() {
                for k in 0..6 {
                    p[(i * 97 + k * 613) % PAGE_SIZE] ^= 0x5a;
                }
            }
            (edited, Inventory::new(), Some(text()))
        }
        "text" => (text(), Inventory::new(), None),
        "incompressible" => (
            mix::generate(1, n, &MixSpec::only(PageKind::Incompressible)),
            Inventory::new(),
            None,
        ),
        _ => (
            mix::generate(42, n, &MixSpec::demo()),
            Inventory::new(),
            None,
        ),
    };
    let mut enc = Encoder::new(cfg, inventory).expect("encoder");
    if let Some(prior) = &prior {
        std::hint::black_box(enc.encode(pages(prior)));
    }
    let before = enc.stats();
    let batches = enc.encode(pages(&mem));
    let wire = enc.stats().since(&before).bytes_out;
    println!(
        "{kind}, {n} pages at level {level}: {} batches, wire {:.1}% of guest memory",
        batches.len(),
        100.0 * wire as f64 / mem.len() as f64
    );
    if decode {
        let mut dec = Decoder::new(DecoderConfig::default(), NoStore).expect("decoder");
        if let Some(prior) = &prior {
            let mut e2 = Encoder::new(EncoderConfig::default(), Inventory::new()).expect("encoder");
            for b in e2.encode(pages(prior)) {
                dec.decode(&b).expect("decode");
            }
        }
        let mut n = 0;
        for b in &batches {
            n += dec.decode(b).expect("decode").pages.len();
        }
        println!("decoded {n} pages");
    }
}
