//! The scenario matrix (see `wanmig_benches::scenario`): each
//! scenario moves a KVM guest between two sites over the emulated WAN with
//! wanmig and then with plain pre-copy (reduction off), on the same link in
//! the same run, and QEMU's own migration where asked; prints progress and
//! an ETA, and writes per-run JSON, `scenarios.json` and `report.md` with
//! SVG charts.
//!
//! ```sh
//! WANMIG_SCENARIO_SET=full WANMIG_REPORT_DIR=docs/report cargo bench -p wanmig-benches --bench scenarios
//! ```
//!
//! Environment:
//! - `WANMIG_SCENARIO_SET`: `quick` (3 CI-size scenarios, ~2 min),
//!   `report` (22 scenarios: the sweeps the charts need, ~18 min; the
//!   default) or `full` (67: every link with the moderate busy guest, and
//!   every guest × mix at 50 ms / 250 Mbit/s clean and 150 ms / 100 Mbit/s
//!   1% bursty; about 40 minutes on 2 cores).
//! - `WANMIG_REPORT_DIR`: where to write (default `target/scenarios`);
//!   relative paths are taken from the workspace root.
//! - `WANMIG_SCENARIO_QEMU`: `never`, `clean` (clean links with the
//!   moderate busy guest; default) or `always`. QEMU needs root and
//!   Debian's qemu-system-x86; without them its column says why not.
//! - `WANMIG_SCENARIO_FILTER`: run only scenarios whose name contains this.
//!
//! Needs /dev/kvm; without it, prints why and exits.

use wanmig_benches::scenario::matrix::Set;
use wanmig_benches::scenario::run::QemuPolicy;
use wanmig_benches::scenario::{run_set, RunnerOptions};

fn main() {
    if let Err(why) = wanmig_testenv::kvm_status() {
        println!("scenarios: skipped, needs KVM: {why}");
        return;
    }
    let set = match std::env::var("WANMIG_SCENARIO_SET") {
        Ok(v) => Set::parse(&v).unwrap_or_else(|| {
            eprintln!("WANMIG_SCENARIO_SET={v:?}: use quick, report or full");
            std::process::exit(2)
        }),
        Err(_) => Set::Report,
    };
    let qemu = match std::env::var("WANMIG_SCENARIO_QEMU").as_deref() {
        Ok("never") => QemuPolicy::Never,
        Ok("always") => QemuPolicy::Always,
        Ok("clean") | Err(_) => QemuPolicy::CleanLinks,
        Ok(other) => {
            eprintln!("WANMIG_SCENARIO_QEMU={other:?}: use never, clean or always");
            std::process::exit(2)
        }
    };
    let out_dir = wanmig_benches::scenario::report_dir();
    let opts = RunnerOptions {
        set,
        out_dir,
        qemu,
        filter: std::env::var("WANMIG_SCENARIO_FILTER").ok(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run_set(&opts)) {
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.wanmig.ok).count();
            if failed > 0 {
                println!("scenarios: {failed} wanmig run(s) failed their checks (see the report)");
            }
        }
        Err(e) => {
            eprintln!("scenarios: {e:#}");
            std::process::exit(1)
        }
    }
}
