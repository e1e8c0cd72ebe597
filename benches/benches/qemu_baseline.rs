//! The QEMU baseline of the demo scenario: QEMU 7.2's own live
//! migration (TCG, multifd x4 with zstd) of a 512 MiB guest holding the
//! demo memory mix and dirtying 5 MiB/s, over the emulated 100 ms RTT,
//! 250 Mbit/s link between two namespaces; bytes on the wire from the link's
//! interface counters. See `wanmig_benches::qemu` for how it runs.
//!
//! Run: `cargo bench -p wanmig-benches --bench qemu_baseline`
//! Environment: `WANMIG_QEMU_MEM=128MiB` shrinks the guest,
//! `WANMIG_QEMU_DIRTY=0` makes it idle. Needs root and
//! `qemu-system-x86_64` (Debian's qemu-system-x86); without them it prints
//! why and exits.

use anyhow::{Context, Result};
use wanmig_benches::qemu::{self, QemuScenario};

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn env_size(key: &str) -> Result<Option<u64>> {
    std::env::var(key)
        .ok()
        .map(|v| {
            wanmig_units::parse_size(&v)
                .with_context(|| format!("{key}={v}: expected a size like 128M"))
        })
        .transpose()
}

fn main() -> Result<()> {
    if let Err(why) = qemu::available() {
        println!("qemu_baseline: skipped: {why}");
        return Ok(());
    }
    if let Err(why) = wanmig_testenv::netns_status() {
        println!("qemu_baseline: skipped, needs network namespaces: {why}");
        return Ok(());
    }
    let mut s = QemuScenario::demo();
    if let Some(m) = env_size("WANMIG_QEMU_MEM")? {
        s.mem_bytes = m;
    }
    if let Some(d) = env_size("WANMIG_QEMU_DIRTY")? {
        s.dirty_bytes_per_sec = d;
    }
    println!(
        "qemu_baseline: {} MiB guest, demo memory mix, dirtying {} KiB/s, {} Mbit/s, {} ms RTT, downtime limit {} ms",
        s.mem_bytes >> 20,
        s.dirty_bytes_per_sec >> 10,
        s.rate_bps / 1_000_000,
        s.rtt.as_millis(),
        s.downtime.as_millis()
    );
    let r = qemu::run_baseline_blocking(&s)?;
    let opt = |v: Option<f64>| v.map_or("-".into(), |d| format!("{d:.0}"));
    println!(
        "  {:<7} {:>9} {:>11} {:>7} {:>9} {:>7} {:>11}   QEMU's own total/downtime ms",
        "outcome", "total ms", "downtime ms", "rounds", "wire MiB", "of RAM", "QEMU MiB",
    );
    println!(
        "  {:<7} {:>9} {:>11} {:>7} {:>9.1} {:>6.1}% {:>11.1}   {}/{}",
        if r.ok { "ok" } else { "FAILED" },
        r.total_ms,
        opt(r.downtime_ms),
        r.rounds,
        mib(r.wire_bytes),
        100.0 * r.wire_bytes as f64 / r.mem_bytes as f64,
        mib(r.qemu_reported_bytes),
        opt(r.qemu_total_ms.map(|v| v as f64)),
        opt(r.qemu_downtime_ms.map(|v| v as f64)),
    );
    println!(
        "  sent into the link {:.1} MiB ({} packets dropped by it); reverse direction {:.1} MiB; zero pages {}, data pages {}",
        mib(r.sent_bytes),
        r.link_drops,
        mib(r.wire_bytes_reverse),
        r.zero_pages,
        r.normal_pages
    );
    println!("  {}", r.note);
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
