//! Encodes (and optionally decodes) the demo memory mix once, for profiling
//! the codec under `valgrind --tool=callgrind` (instruction counts are
//! repeatable on a noisy shared machine, unlike wall-clock timings).
//!
//! Run: `cargo build --release -p wanmig-codec --example profile_encode &&
//! valgrind --tool=callgrind target/release/examples/profile_encode 4096 1`
//! Arguments: pages (default 4096), zstd level (default 1), `decode` to
//! profile the decoder instead.

use wanmig_codec::mix::{self, MixSpec};
use wanmig_codec::{
    Decoder, DecoderConfig, Encoder, EncoderConfig, Gfn, Inventory, NoStore, PAGE_SIZE,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let level: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let decode = args.next().as_deref() == Some("decode");
    let mem = mix::generate(42, n, &MixSpec::demo());
    let cfg = EncoderConfig {
        level,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, Inventory::new()).expect("encoder");
    let batches = enc.encode(
        mem.chunks_exact(PAGE_SIZE)
            .enumerate()
            .map(|(i, p)| (Gfn(i as u64), p.try_into().expect("page"))),
    );
    let wire: usize = batches.iter().map(Vec::len).sum();
    println!(
        "{n} pages at level {level}: {} batches, wire {:.1}% of guest memory",
        batches.len(),
        100.0 * wire as f64 / mem.len() as f64
    );
    if decode {
        let mut dec = Decoder::new(DecoderConfig::default(), NoStore).expect("decoder");
        let mut pages = 0;
        for b in &batches {
            pages += dec.decode(b).expect("decode").pages.len();
        }
        println!("decoded {pages} pages");
    }
}
