//! Storage-copy figures over the IN-PROCESS link (no gateway, no QUIC): the
//! link is modelled inside this process with a one-way delay and a
//! bottleneck rate; files, the remote-backed disk and the planner are real.
//!
//! 1. Scenario: a disk image (default 1 GiB, ~40% allocated: text,
//!    binaries, incompressible data, allocated zeros, free space) copied over
//!    250 Mbit/s with 50 ms one way (100 ms RTT), while a guest-like reader
//!    does random 4 KiB reads: copy time, wire bytes vs allocated bytes, read
//!    latency p50/p99 for blocks that were not local (on demand) vs local.
//! 2. Raw throughput of the in-process path without delay or rate limit.
//!
//! Run: `cargo bench -p wanmig-storage --bench copy`
//! (`WANMIG_BENCH_DISK_MIB=256` for a smaller disk; `WANMIG_BENCH_PERSIST=N`
//! sets how many arrived blocks trigger a bitmap save in part 2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use wanmig_storage::copy::{CopyConfig, InProcessCopy, LinkConfig};
use wanmig_storage::testdisk::{build_image, ImageMix};
use wanmig_storage::{disk_digest, RemoteDiskConfig};

const MIB: u64 = 1 << 20;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn pct(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "n/a".into();
    }
    format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0)
}

fn main() {
    // Ignore libtest-style arguments such as `--bench`.
    let disk_mib: u64 = std::env::var("WANMIG_BENCH_DISK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let len = disk_mib * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source.img");
    let t = Instant::now();
    let written = build_image(&source, len, ImageMix::default(), 42).expect("build image");
    println!(
        "image: {disk_mib} MiB disk, {:.1} MiB written, built in {:.1?}",
        written as f64 / MIB as f64,
        t.elapsed()
    );

    // 1. WAN scenario.
    let dest = dir.path().join("dest-wan.img");
    let cfg = CopyConfig {
        disk: RemoteDiskConfig::default(),
        link: LinkConfig {
            one_way_delay: Duration::from_millis(50),
            rate_bits_per_sec: Some(250_000_000),
            zstd_level: 1,
        },
    };
    let start = Instant::now();
    let copy = InProcessCopy::start(&source, &dest, len, cfg).expect("start copy");
    let disk = Arc::clone(copy.disk());
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let disk = Arc::clone(&disk);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let (mut demand, mut local) = (hist(), hist());
            let mut buf = vec![0u8; 4096];
            let bs = u64::from(disk.geometry().block_size());
            while !done.load(Ordering::Acquire) && !disk.is_all_local() {
                let off = rng.random_range(0..len / 4096) * 4096;
                let was_local = disk.is_block_local(off / bs);
                let t = Instant::now();
                if disk.read_at(off, &mut buf).is_err() {
                    break;
                }
                let us = t.elapsed().as_micros().max(1) as u64;
                let h = if was_local { &mut local } else { &mut demand };
                h.saturating_record(us);
                std::thread::sleep(Duration::from_millis(10));
            }
            (demand, local)
        })
    };
    let finished = disk.wait_all_local(Duration::from_secs(1800));
    let copy_time = start.elapsed();
    done.store(true, Ordering::Release);
    let (demand, local) = reader.join().expect("reader thread");
    disk.complete().expect("complete");
    let m = disk.metrics().snapshot();
    let allocated = copy.source_allocated_bytes();
    drop(copy);
    drop(disk);
    assert!(finished, "copy did not finish");
    assert_eq!(
        disk_digest(&dest).expect("digest"),
        disk_digest(&source).expect("digest"),
        "destination differs from source"
    );
    println!(
        "\n== in-process link, 250 Mbit/s, 50 ms one way (100 ms RTT), {disk_mib} MiB disk =="
    );
    println!("copy time                      {:.2?}", copy_time);
    println!(
        "allocated at source            {:.1} MiB",
        allocated as f64 / MIB as f64
    );
    println!(
        "sent blocks, logical           {:.1} MiB ({} blocks copied, {} on demand, {} holes skipped)",
        m.bytes_before_reduction as f64 / MIB as f64,
        m.blocks_copied,
        m.blocks_fetched_on_demand,
        m.hole_blocks_skipped
    );
    println!(
        "wire bytes (zero+zstd)         {:.1} MiB = {:.1}% of allocated",
        m.bytes_after_reduction as f64 / MIB as f64,
        100.0 * m.bytes_after_reduction as f64 / allocated.max(1) as f64
    );
    println!(
        "effective rate                 {:.1} Mbit/s on the wire, {:.1} MiB/s of disk",
        m.bytes_after_reduction as f64 * 8.0 / copy_time.as_secs_f64() / 1e6,
        len as f64 / MIB as f64 / copy_time.as_secs_f64()
    );
    println!(
        "guest 4 KiB reads, not local   n={:<5} p50 {}  p99 {}",
        demand.len(),
        pct(&demand, 0.5),
        pct(&demand, 0.99)
    );
    println!(
        "guest 4 KiB reads, local       n={:<5} p50 {}  p99 {}",
        local.len(),
        pct(&local, 0.5),
        pct(&local, 0.99)
    );
    println!(
        "on-demand fetch (request->arrival) p50 {:.2?} p99 {:.2?}",
        m.demand_latency_p50, m.demand_latency_p99
    );

    // 2. Unlimited in-process throughput.
    let dest = dir.path().join("dest-fast.img");
    let mut cfg = CopyConfig::default();
    if let Some(n) = std::env::var("WANMIG_BENCH_PERSIST")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.disk.persist_every_blocks = n;
    }
    let start = Instant::now();
    let copy = InProcessCopy::start(&source, &dest, len, cfg).expect("start copy");
    assert!(copy.disk().wait_all_local(Duration::from_secs(1800)));
    let elapsed = start.elapsed();
    let m = copy.disk().metrics().snapshot();
    drop(copy);
    println!("\n== in-process link, no delay, no rate limit ==");
    println!(
        "copy time {:.2?}: {:.0} MiB/s of disk, {:.0} MiB/s of sent blocks, {:.0} MiB/s on the wire",
        elapsed,
        len as f64 / MIB as f64 / elapsed.as_secs_f64(),
        m.bytes_before_reduction as f64 / MIB as f64 / elapsed.as_secs_f64(),
        m.bytes_after_reduction as f64 / MIB as f64 / elapsed.as_secs_f64()
    );
}
