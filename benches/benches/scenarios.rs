//! The end-to-end migration scenario: issue #5's figures, measured side by
//! side in one run on this machine. A 512 MiB guest holding the demo memory
//! mix and dirtying 5 MiB/s moves between two sites over an emulated
//! 250 Mbit/s, 100 ms RTT WAN (the `wanmig demo` path: real KVM, real QUIC,
//! the real overlay with a live TCP session):
//!
//! 1. with data reduction (cold page store), then a clone of the same image
//!    to the same site (warm page store);
//! 2. the same move with reduction off (plain pre-copy).
//!
//! Prints a table and writes `target/scenarios.json`. Needs /dev/kvm;
//! without it, prints why and exits. `WANMIG_SCENARIO_MEM=128MiB` shrinks
//! the guest for a quick look.

use std::time::Duration;

use wanmig_gateway::demo::{self, DemoOptions, DemoReport};

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn row(name: &str, r: &DemoReport) {
    println!(
        "  {name:<28} {:>8} {:>10} {:>6} {:>10.1} {:>7.1}% {:>9.2}x  {}",
        r.total_ms,
        r.downtime_ms.map_or("-".into(), |d| format!("{d:.0}")),
        r.rounds,
        mib(r.wire_bytes),
        100.0 * r.wire_bytes as f64 / r.guest_mem_bytes as f64,
        r.reduction,
        if r.ok() { "verified" } else { "CHECKS FAILED" }
    );
}

fn main() {
    if let Err(why) = wanmig_testenv::kvm_status() {
        println!("scenarios: skipped, needs KVM: {why}");
        return;
    }
    let mem = std::env::var("WANMIG_SCENARIO_MEM")
        .ok()
        .map(|v| {
            wanmig_netem::units::parse_size(&v).expect("WANMIG_SCENARIO_MEM: a size like 128MiB")
        })
        .unwrap_or(512 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let base = DemoOptions {
        rtt: Duration::from_millis(100),
        rate_bps: 250_000_000,
        mem_bytes: mem,
        dirty_bytes_per_sec: 5 << 20,
        ..DemoOptions::default()
    };
    let reduced = runtime
        .block_on(demo::run(
            DemoOptions {
                warm_clone: true,
                ..base.clone()
            },
            |_| {},
        ))
        .expect("the reduced migration runs");
    let raw = runtime
        .block_on(demo::run(
            DemoOptions {
                reduction: false,
                ..base.clone()
            },
            |_| {},
        ))
        .expect("the unreduced migration runs");

    println!(
        "migration scenario: {} MiB guest, demo memory mix, dirtying 5 MiB/s, 250 Mbit/s, 100 ms RTT",
        mem >> 20
    );
    println!(
        "  {:<28} {:>8} {:>10} {:>6} {:>10} {:>8} {:>10}",
        "run", "total ms", "downtime", "rounds", "wire MiB", "of mem", "reduction"
    );
    row("reduced, cold page store", &reduced);
    row("raw pre-copy (reduction off)", &raw);
    if let Some(c) = &reduced.warm_clone {
        println!(
            "  {:<28} {:>8} {:>10} {:>6} {:>10.1} {:>7.1}% {:>9.2}x  {}",
            "clone, warm page store",
            c.total_ms,
            c.downtime_ms.map_or("-".into(), |d| format!("{d:.0}")),
            "",
            mib(c.wire_bytes),
            100.0 * c.wire_bytes as f64 / mem as f64,
            c.reduction,
            if c.memory_verified && c.workload_verified {
                "verified"
            } else {
                "CHECKS FAILED"
            }
        );
        println!(
            "  warm vs cold wire bytes: {:.1}x less",
            reduced.wire_bytes as f64 / c.wire_bytes.max(1) as f64
        );
    }
    println!(
        "  reduced vs raw: time {:.2}x, wire bytes {:.2}x; downtime goal <= {} ms (300 ms + one RTT)",
        raw.total_ms as f64 / reduced.total_ms.max(1) as f64,
        raw.wire_bytes as f64 / reduced.wire_bytes.max(1) as f64,
        300 + 100
    );
    let json = serde_json::json!({ "reduced": reduced, "raw": raw });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scenarios.json");
    match std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("  wrote {}", out.display()),
        Err(e) => println!("  could not write {}: {e}", out.display()),
    }
}
