//! Live-migration figures on real KVM, between two VMs in one process over a
//! unix socket pair: pages per round and total pages sent vs memory size
//! (idle and dirtying guests), downtime of a 256 MiB dirtying guest, and a
//! guest that dirties faster than a rate-limited link can carry (it must
//! still converge, by auto-converge or smart stop). Prints the figures.
//!
//! Run: `cargo bench -p wanmig-vmm --bench migration`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};
use wanmig_migration::policy::PlannerConfig;
use wanmig_vmm::migration::{MigrationReport, MigrationStream};
use wanmig_vmm::{migrate_to, receive_from, MigrateOptions, ReceiveOptions, Vm};

/// A stream whose writes are paced to `bytes_per_sec` (a slow link).
struct RateLimited {
    inner: UnixStream,
    bytes_per_sec: f64,
    start: Instant,
    sent: u64,
}

impl Read for RateLimited {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for RateLimited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(64 << 10)])?;
        self.sent += n as u64;
        let due = Duration::from_secs_f64(self.sent as f64 / self.bytes_per_sec);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl MigrationStream for RateLimited {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.inner.set_timeouts(read, write)
    }
}

fn dirtying(
    working_set_pages: u64,
    pages_per_iteration: u64,
    period: Duration,
) -> Option<MemoryWorkloadConfig> {
    Some(MemoryWorkloadConfig {
        seed: 3,
        working_set_pages,
        pages_per_iteration,
        iterations: 0,
        iteration_period: period,
        page_writes: Default::default(),
    })
}

/// Boots `config`, lets it run `warmup`, migrates it, checks digests, and
/// returns the report and the guest's dirtying rate before migration.
fn migrate_once(
    config: &VmConfig,
    warmup: Duration,
    rate_limit: Option<f64>,
    planner: PlannerConfig,
) -> (MigrationReport, f64) {
    let mut src = Vm::create(config.clone(), Box::new(|_: &str| {})).expect("create the source VM");
    src.start().unwrap();
    std::thread::sleep(warmup);
    let iter_before = latest(&src);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let pages_per_iter = config
        .memory_workload
        .as_ref()
        .map(|w| w.pages_per_iteration)
        .unwrap_or(0);
    let dirty_rate =
        (latest(&src) - iter_before) as f64 * pages_per_iter as f64 / t.elapsed().as_secs_f64();

    let (a, mut b) = UnixStream::pair().unwrap();
    let dest_config = config.clone();
    let dest = std::thread::spawn(move || {
        receive_from(
            &mut b,
            dest_config,
            Box::new(|_: &str| {}),
            &ReceiveOptions::default(),
        )
    });
    let opts = MigrateOptions {
        planner,
        ..Default::default()
    };
    let report = match rate_limit {
        Some(bps) => {
            let mut s = RateLimited {
                inner: a,
                bytes_per_sec: bps,
                start: Instant::now(),
                sent: 0,
            };
            migrate_to(&mut src, &mut s, &opts)
        }
        None => {
            let mut s = a;
            migrate_to(&mut src, &mut s, &opts)
        }
    }
    .expect("migration");
    let (dst, incoming) = dest.join().unwrap().expect("destination");
    assert_eq!(report.memory_digest, incoming.memory_digest);
    // The guest runs on at the destination.
    let at = latest(&src);
    if config.memory_workload.is_some() {
        assert!(
            dst.wait_mem_iteration(at + 3, Duration::from_secs(30))
                .is_some(),
            "guest stalled after migration"
        );
    }
    (report, dirty_rate)
}

fn latest(vm: &Vm) -> u64 {
    vm.reports()
        .latest(wanmig_guest_abi::REPORT_MEM_ITERATION)
        .map(|r| r.values[0])
        .unwrap_or(0)
}

fn print_report(label: &str, r: &MigrationReport, dirty_rate: f64) {
    let per_round: Vec<String> = r.rounds.iter().map(|x| x.pages.to_string()).collect();
    println!(
        "{label:<34} mem {:>6} pages | rounds [{}] + final {} | total {} pages = {:.2}x mem | {:.1} MiB | downtime {:.1} ms | total {:.0} ms | {:?} ({:?}, max throttle {}%) | guest page writes {:.0}/s",
        r.memory_pages,
        per_round.join(", "),
        r.final_pages,
        r.total_pages_sent,
        r.total_pages_sent as f64 / r.memory_pages as f64,
        r.total_bytes_sent as f64 / (1 << 20) as f64,
        r.downtime.as_secs_f64() * 1e3,
        r.total_time.as_secs_f64() * 1e3,
        r.mode,
        r.stop_reason,
        r.max_throttle,
        dirty_rate,
    );
}

fn main() {
    if let Err(why) = wanmig_testenv::kvm_status() {
        println!("SKIPPED migration bench: needs KVM: {why}");
        return;
    }
    let warm = Duration::from_millis(300);

    println!("== pages per round and total pages vs memory size (unix socket) ==");
    for mib in [64u64, 256] {
        let idle = VmConfig {
            mem_size: mib << 20,
            ..Default::default()
        };
        let (r, d) = migrate_once(&idle, warm, None, PlannerConfig::default());
        print_report(&format!("idle {mib} MiB"), &r, d);
        let busy = VmConfig {
            mem_size: mib << 20,
            memory_workload: dirtying(4096, 64, Duration::from_micros(500)),
            ..Default::default()
        };
        let (r, d) = migrate_once(&busy, warm, None, PlannerConfig::default());
        print_report(&format!("dirtying {mib} MiB (16 MiB working set)"), &r, d);
    }

    println!("\n== downtime, 256 MiB guest dirtying below the link rate (unix socket) ==");
    let mut downtimes = Vec::new();
    for i in 0..5 {
        let busy = VmConfig {
            mem_size: 256 << 20,
            memory_workload: dirtying(16384, 64, Duration::from_millis(1)),
            ..Default::default()
        };
        let (r, d) = migrate_once(&busy, warm, None, PlannerConfig::default());
        print_report(&format!("run {i}"), &r, d);
        downtimes.push(r.downtime.as_secs_f64() * 1e3);
    }
    downtimes.sort_by(|a, b| a.total_cmp(b));
    println!(
        "downtime ms: min {:.1} median {:.1} max {:.1} (budget 300 ms)",
        downtimes[0],
        downtimes[downtimes.len() / 2],
        downtimes[downtimes.len() - 1]
    );

    println!("\n== dirty rate above the link rate: 64 MiB guests, link limited to 32 MiB/s ==");
    let hot = VmConfig {
        mem_size: 64 << 20,
        memory_workload: dirtying(8192, 256, Duration::ZERO),
        ..Default::default()
    };
    // One page per iteration: each write costs a control-port exit, so the
    // dirty rate is bound by vCPU time and throttling it bites.
    let cpu_bound = VmConfig {
        mem_size: 64 << 20,
        memory_workload: dirtying(12288, 1, Duration::ZERO),
        ..Default::default()
    };
    let no_ac = PlannerConfig {
        auto_converge: false,
        ..Default::default()
    };
    let ac95 = PlannerConfig {
        max_throttle: 95,
        ..Default::default()
    };
    for (label, config, planner) in [
        (
            "hot, auto-converge up to 80%",
            &hot,
            PlannerConfig::default(),
        ),
        ("hot, auto-converge off", &hot, no_ac),
        (
            "cpu-bound, auto-converge up to 80%",
            &cpu_bound,
            PlannerConfig::default(),
        ),
        ("cpu-bound, auto-converge up to 95%", &cpu_bound, ac95),
    ] {
        let (r, d) = migrate_once(config, warm, Some(32.0 * (1 << 20) as f64), planner);
        print_report(label, &r, d);
        for x in &r.rounds {
            println!(
                "    round {:>2}: {:>6} pages in {:>7.1} ms, {:>6} dirty after, throttle {}%",
                x.round, x.pages, x.elapsed_ms, x.dirty_after, x.throttle
            );
        }
    }
}
