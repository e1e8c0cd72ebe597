//! Encode speed by thread CPU time (best of 7 runs, a fresh encoder each
//! run, like the criterion bench): steadier than wall-clock figures when
//! the machine is shared, because time spent waiting for a core does not
//! count. It still counts page faults, cache misses and frequency changes.
//!
//! Run: `cargo run --release -p wanmig-codec --example cpu_rates [levels...]`
//! (default levels: -8 -5 -1 1 3; -8 is LZ4), then the long-distance
//! stream at levels 1 and 3 (its 128 MiB window is set up inside the
//! measurement, as in a session's first batches).

use std::time::Duration;

use wanmig_codec::mix::{self, MixSpec, PageKind};
use wanmig_codec::{
    Encoder, EncoderConfig, Fingerprint, Gfn, Inventory, LongDistance, PageBytes, PAGE_SIZE,
};

const PAGES: usize = 4096;

fn pages(buf: &[u8]) -> impl Iterator<Item = (Gfn, &PageBytes)> {
    buf.chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, p)| (Gfn(i as u64), p.try_into().expect("page")))
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a
    // constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Workload {
    name: &'static str,
    prior: Option<Vec<u8>>,
    mem: Vec<u8>,
    inventory: Inventory,
}

fn workloads() -> Vec<Workload> {
    let text = mix::generate(1, PAGES, &MixSpec::only(PageKind::Text));
    let mut edited = text.clone();
    for (i, p) in edited.chunks_exact_mut(PAGE_SIZE).enumerate() {
        for k in 0..6 {
            p[(i * 97 + k * 613) % PAGE_SIZE] ^= 0x5a;
        }
    }
    let held = mix::generate(2, PAGES, &MixSpec::only(PageKind::Text));
    let fps: Vec<Fingerprint> = held
        .chunks_exact(PAGE_SIZE)
        .map(|p| Fingerprint::of(p.try_into().expect("page")))
        .collect();
    let w = |name, prior, mem, inventory| Workload {
        name,
        prior,
        mem,
        inventory,
    };
    vec![
        w("zero", None, vec![0; PAGES * PAGE_SIZE], Inventory::new()),
        w("ref", None, held, Inventory::from_fingerprints(fps.iter())),
        w("delta", Some(text.clone()), edited, Inventory::new()),
        w("text", None, text, Inventory::new()),
        w(
            "incompressible",
            None,
            mix::generate(1, PAGES, &MixSpec::only(PageKind::Incompressible)),
            Inventory::new(),
        ),
        w(
            "demo_mix",
            None,
            mix::generate(42, PAGES, &MixSpec::demo()),
            Inventory::new(),
        ),
    ]
}

fn rate(w: &Workload, level: i32, long_distance: Option<LongDistance>) -> (f64, f64) {
    let mut best = Duration::MAX;
    let mut share = 0.0;
    for _ in 0..7 {
        let cfg = EncoderConfig {
            level,
            long_distance,
            ..EncoderConfig::default()
        };
        let mut enc = Encoder::new(cfg, w.inventory.clone()).expect("encoder");
        if let Some(prior) = &w.prior {
            std::hint::black_box(enc.encode(pages(prior)));
        }
        let t0 = thread_cpu();
        let batches = enc.encode(pages(&w.mem));
        best = best.min(thread_cpu() - t0);
        share = batches.iter().map(Vec::len).sum::<usize>() as f64 / w.mem.len() as f64;
        drop(batches);
    }
    let mib = w.mem.len() as f64 / (1 << 20) as f64;
    (mib / best.as_secs_f64(), share)
}

fn main() {
    let levels: Vec<i32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let levels = if levels.is_empty() {
        vec![-8, -5, -1, 1, 3]
    } else {
        levels
    };
    let ws = workloads();
    for w in &ws {
        if w.name != "demo_mix" {
            let (r, _) = rate(w, 1, None);
            println!(
                "encode {:<15} level 1: {r:7.0} MiB/s per CPU-second",
                w.name
            );
        }
    }
    let demo = ws.last().expect("demo mix");
    for &level in &levels {
        let (r, share) = rate(demo, level, None);
        println!(
            "encode demo_mix        level {level}: {r:7.0} MiB/s per CPU-second, wire {:.1}%",
            100.0 * share
        );
    }
    for level in [1, 3] {
        let (r, share) = rate(demo, level, Some(LongDistance::default()));
        println!(
            "encode demo_mix        level {level} long-distance: {r:7.0} MiB/s per CPU-second, wire {:.1}%",
            100.0 * share
        );
    }
}
