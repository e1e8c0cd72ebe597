//! Real guest memory, QEMU 7.2 against wanmig over the same emulated link
//! in one run (see `wanmig_benches::real_memory`): QEMU's multifd ×2 +
//! zstd-1 migration, wanmig cold, and wanmig warm (a second VM from the
//! same image to the same site); prints a Markdown table per link (wire
//! MiB, total s, downtime ms, ratios to QEMU and to the physical floor)
//! and writes `real-memory.json`.
//!
//! ```sh
//! cargo bench -p wanmig-benches --bench real_memory
//! WANMIG_REAL_IMAGE=linux-pagecache-256m WANMIG_REAL_LOSS=0,0.1%,1% cargo bench -p wanmig-benches --bench real_memory
//! ```
//!
//! Environment:
//! - `WANMIG_REAL_IMAGE`: corpus image (default `linux-pagecache-2g`;
//!   `linux-pagecache-256m` for a quick run). Build it first with
//!   `benches/corpus/build.sh NAME`.
//! - `WANMIG_REAL_RTT` (default `100ms`), `WANMIG_REAL_RATE` (default
//!   `250mbit`).
//! - `WANMIG_REAL_LOSS`: random loss per packet, a comma-separated list
//!   (`0,0.1%,1%`); one comparison per entry (default `0`).
//! - `WANMIG_REAL_FLOOR_LEVEL`: zstd level of the physical floor (default
//!   19, the scenario floor's; many minutes of CPU for 2 GiB the first
//!   time, then cached beside the image; a lower level is quicker and
//!   gives a higher floor).
//! - `WANMIG_REPORT_DIR`: where `real-memory.json` goes (default
//!   `target/scenarios`, where the scenario report picks it up); relative
//!   paths are taken from the workspace root.
//!
//! Needs root, /dev/kvm and Debian's qemu-system-x86; without KVM or
//! namespaces it prints why and exits (QEMU's row says why it is missing).

use anyhow::{Context, Result};
use wanmig_benches::real_memory::{self, RealOptions};

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn options() -> Result<RealOptions> {
    let mut o = RealOptions::default();
    if let Some(v) = env("WANMIG_REAL_IMAGE") {
        o.image = v;
    }
    if let Some(v) = env("WANMIG_REAL_RTT") {
        o.rtt = wanmig_units::parse_duration(&v)
            .with_context(|| format!("WANMIG_REAL_RTT={v}: expected a duration like 100ms"))?;
    }
    if let Some(v) = env("WANMIG_REAL_RATE") {
        o.rate_bps = wanmig_units::parse_rate(&v)
            .with_context(|| format!("WANMIG_REAL_RATE={v}: expected a rate like 250mbit"))?;
    }
    if let Some(v) = env("WANMIG_REAL_LOSS") {
        o.losses = v
            .split(',')
            .map(|p| {
                wanmig_units::parse_percent(p).with_context(|| {
                    format!("WANMIG_REAL_LOSS={v}: expected percentages like 0,0.1%,1%")
                })
            })
            .collect::<Result<_>>()?;
    }
    if let Some(v) = env("WANMIG_REAL_FLOOR_LEVEL") {
        o.floor_level = v
            .trim()
            .parse()
            .ok()
            .filter(|l| (1..=22).contains(l))
            .with_context(|| format!("WANMIG_REAL_FLOOR_LEVEL={v}: expected a zstd level 1-22"))?;
    }
    Ok(o)
}

fn main() -> Result<()> {
    if let Err(why) = wanmig_testenv::kvm_status() {
        println!("real_memory: skipped, needs KVM: {why}");
        return Ok(());
    }
    if let Err(why) = wanmig_testenv::netns_status() {
        println!("real_memory: skipped, needs network namespaces: {why}");
        return Ok(());
    }
    let opts = options()?;
    let out_dir = wanmig_benches::scenario::report_dir();
    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building a tokio runtime")?
        .block_on(real_memory::run(&opts))?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(real_memory::JSON_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("real_memory: wrote {}", path.display());
    Ok(())
}
