//! `wanmig demo`: runs the whole job end to end in one process with
//! embedded defaults and prints a report (human or `--json`).

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wanmig_codec::PageKind;
use wanmig_gateway::demo::{self, DemoOptions, DemoReport, GuestWorkload, MemoryMix};
use wanmig_gateway::lab::Link;
use wanmig_gateway::migration::MigrationRecord;
use wanmig_netem::LinkArgs;
use wanmig_units::{format_rate, format_size, parse_duration, parse_size};

/// Two sites on loopback joined by the WAN emulator; a KVM guest at site A
/// with realistic memory content that keeps dirtying memory; a TCP client at
/// site A holding a session to the guest across the stretched L2 segment; a
/// live migration of the guest to site B through the gateways; then checks
/// that memory matched at the handover, that the guest's own deterministic
/// results continue exactly, and that the TCP session survived with every
/// byte in order. Needs /dev/kvm, not root. Exits non-zero when a check
/// fails.
///
/// The link flags are `wanmig netem`'s; the demo's link defaults to a
/// 100 ms RTT and 250 Mbit/s with no loss or jitter.
#[derive(Debug, Args)]
#[command(
    mut_arg("rtt", |a| a.default_value("100ms")),
    mut_arg("rate", |a| a.default_value("250mbit")),
)]
pub struct DemoArgs {
    /// Guest memory in bytes, e.g. 512M (K, M, G are powers of 1024, as
    /// KiB, MiB, GiB; kB, MB, GB powers of 1000), filled with the --mix.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    mem: u64,
    /// What guest memory holds: `fresh` (a freshly booted VM, 90% zero
    /// pages), `busy` (a long-running VM: 40% zero pages, 15% duplicated
    /// pages, 30% text, 5% sparse pointer pages, 10% incompressible) or
    /// `incompressible` (all pages).
    #[arg(long, value_enum, default_value = "busy")]
    mix: MemoryMix,
    /// How hard the guest dirties memory: `idle` (128 KiB/s), `moderate`
    /// (--dirty-rate), `write-heavy` (twice the link rate, at least
    /// 16 MiB/s, one word per page write: plain pre-copy converges only by
    /// auto-converge or smart stop) or `write-heavy-pages` (as fast, each
    /// write fills the whole page with random words, so deltas and zstd
    /// cannot shrink re-sent pages and wanmig must throttle the guest too).
    #[arg(long, value_enum, default_value = "moderate")]
    workload: GuestWorkload,
    /// How fast the moderate guest dirties memory: bytes per second, as a
    /// size (e.g. 5M is 5 MiB/s; K, M, G are powers of 1024).
    #[arg(long, default_value = "5MiB", value_parser = parse_size)]
    dirty_rate: u64,
    /// Size of the VM's sparse disk in bytes (e.g. 64M = 64 MiB; K, M, G
    /// are powers of 1024), which the guest's disk workload writes and
    /// which follows the VM to site B after the compute move.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    disk: u64,
    /// Run the VM without a disk (no storage migration).
    #[arg(long)]
    no_disk: bool,
    /// At the end, write each site's Prometheus metrics page (what its
    /// `/metrics` serves) to DIR/<site>.prom.
    #[arg(long, value_name = "DIR")]
    metrics_out: Option<std::path::PathBuf>,
    /// Downtime budget of the final stop-and-copy round.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    downtime: Duration,
    /// Send memory unreduced (plain pre-copy), to compare against.
    #[arg(long)]
    no_reduction: bool,
    /// After the move, migrate a second VM booted from the same image to the
    /// same site, whose page store is then warm.
    #[arg(long)]
    warm_clone: bool,
    /// After the move to site B, move the VM back to site A; the TCP session
    /// must survive both moves.
    #[arg(long)]
    round_trip: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten, next_help_heading = "The emulated WAN link")]
    link: LinkArgs,
}

fn progress_bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} migrating [{bar:30}] {pos}/{len} pages  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn show(bar: &ProgressBar, r: &MigrationRecord) {
    let p = &r.progress;
    bar.set_length(p.memory_pages.max(1));
    bar.set_position(if p.round == 0 {
        p.round_pages
    } else {
        p.memory_pages
    });
    bar.set_message(format!(
        "round {} ({} pages)  {:?}  wire {}  reduction {:.2}x",
        p.round,
        p.round_pages,
        r.phase,
        format_size(p.bytes_out),
        p.reduction_ratio()
    ));
}

fn print_human(r: &DemoReport) {
    println!(
        "wanmig demo — two sites, {:.0} ms RTT (jitter {:.0} ms), {}, {:.2}% loss ({})",
        r.link.rtt_ms,
        r.link.jitter_ms,
        format_rate(r.link.rate_mbit * 1e6),
        r.link.loss_percent,
        r.link.loss_model
    );
    println!(
        "  guest            {} memory mix, {} workload ({}/s dirtied)",
        r.mix,
        r.workload,
        format_size(r.dirty_bytes_per_sec)
    );
    println!("  migration {}: {}", r.migration_id, r.outcome);
    println!("  total time       {} ms", r.total_ms);
    let goal = match (r.downtime_goal_ms, r.downtime_met) {
        (Some(g), Some(true)) => format!(" (goal {g:.0} ms: met)"),
        (Some(g), Some(false)) => format!(" (goal {g:.0} ms: MISSED)"),
        _ => String::new(),
    };
    match r.downtime_ms {
        Some(d) => println!("  downtime         {d:.1} ms{goal}"),
        None => println!("  downtime         -"),
    }
    if let Some(why) = &r.downtime_why {
        println!("  warning          {why}");
    }
    println!(
        "  rounds           {} (pages per round {:?}; convergence {})",
        r.rounds,
        r.round_pages,
        r.convergence.as_deref().unwrap_or("-")
    );
    println!(
        "  guest memory     {} (sent {} over all rounds)",
        format_size(r.guest_mem_bytes),
        format_size(r.guest_bytes_sent)
    );
    println!(
        "  on the wire      {} ({:.1}% of guest memory), reduction {:.2}x",
        format_size(r.wire_bytes),
        100.0 * r.wire_bytes as f64 / r.guest_mem_bytes.max(1) as f64,
        r.reduction
    );
    println!("  pages            {}", r.pages.describe());
    println!(
        "  memory verified  {} (digest {})",
        r.memory_verified,
        r.memory_digest.as_deref().unwrap_or("-")
    );
    println!(
        "  guest results    {} ({} iterations at site B match an unmigrated run)",
        r.workload_verified, r.workload_iterations_checked
    );
    println!(
        "  TCP session      {} ({} bytes echoed in order, {} after the move, longest stall {} ms)",
        if r.tcp_session_survived {
            "survived"
        } else {
            "LOST"
        },
        r.tcp.stats.bytes_verified,
        r.tcp.bytes_verified_after_move,
        r.tcp.stats.longest_stall_ms
    );
    if let Some(s) = &r.storage {
        println!(
            "  disk             {} copied to site B in {} ms, {} on the wire, verified {} ({} guest iterations, {} errors)",
            format_size(s.disk_bytes),
            s.total_ms,
            format_size(s.wire_bytes),
            s.verified,
            s.iterations,
            s.guest_errors
        );
    }
    if let Some(b) = &r.return_move {
        println!(
            "  move back to A   {}: {} ms, downtime {}, {} on the wire, verified {}, {} TCP bytes in order after it",
            b.outcome,
            b.total_ms,
            b.downtime_ms.map_or("-".into(), |d| format!("{d:.1} ms")),
            format_size(b.wire_bytes),
            b.memory_verified && b.workload_verified,
            b.tcp_bytes_verified_after_return
        );
    }
    if let Some(c) = &r.warm_clone {
        println!(
            "  warm clone       {}: {} ms, {} on the wire, reduction {:.1}x, {} pages by reference, verified {}",
            c.outcome,
            c.total_ms,
            format_size(c.wire_bytes),
            c.reduction,
            c.pages[PageKind::Ref],
            c.memory_verified && c.workload_verified
        );
    }
}

/// The demo's options from its flags.
fn options(a: &DemoArgs) -> Result<DemoOptions> {
    let (forward, reverse) = a.link.to_params()?;
    Ok(DemoOptions {
        link: Link { forward, reverse },
        mem_bytes: a.mem,
        mix: a.mix,
        workload: a.workload,
        dirty_bytes_per_sec: a.dirty_rate,
        disk_bytes: (!a.no_disk).then_some(a.disk),
        downtime: a.downtime,
        reduction: !a.no_reduction,
        warm_clone: a.warm_clone,
        round_trip: a.round_trip,
        metrics_out: a.metrics_out.clone(),
        ..DemoOptions::default()
    })
}

pub async fn run(a: DemoArgs) -> Result<()> {
    let opts = options(&a)?;
    if let Err(e) = kvm_available() {
        bail!("wanmig demo needs /dev/kvm, read-write (it is not root-only): {e}");
    }
    let bar = progress_bar(a.json);
    let report = demo::run(opts, |r| show(&bar, r)).await;
    bar.finish_and_clear();
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    if !report.ok() {
        bail!("the demo's checks failed (see the report above)");
    }
    Ok(())
}

fn kvm_available() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};
    use wanmig_netem::LossModel;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn options_of(args: &[&str]) -> DemoOptions {
        let cli = Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        options(&cli.demo).unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
    }

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_documented_link_and_guest() {
        let o = options_of(&[]);
        let d = DemoOptions::default();
        assert_eq!(o.link.forward, d.link.forward);
        assert_eq!(o.link.reverse, d.link.reverse);
        assert_eq!(o.rtt(), Duration::from_millis(100));
        assert_eq!(o.rate_bps(), 250_000_000);
        assert_eq!(o.link.forward.loss, LossModel::None);
        assert_eq!(o.mem_bytes, 512 << 20);
        assert_eq!(o.dirty_bytes_per_sec, 5 << 20);
        assert_eq!(o.disk_bytes, Some(64 << 20));
    }

    #[test]
    fn link_flags_come_from_netem() {
        let o = options_of(&[
            "--rtt",
            "40ms",
            "--rate",
            "10Mbps",
            "--loss",
            "1%",
            "--loss-burst",
            "4",
            "--jitter",
            "2ms",
        ]);
        assert_eq!(o.rtt(), Duration::from_millis(40));
        assert_eq!(o.rate_bps(), 10_000_000, "Mbps is megabits");
        assert_eq!(
            o.link.forward.loss,
            LossModel::Bursty {
                mean: 0.01,
                burst: 4.0
            }
        );
        assert_eq!(o.link.forward.jitter, Duration::from_millis(2));
        // Flags only `wanmig netem` had before reach the demo too.
        let o = options_of(&[
            "--delay",
            "10ms",
            "--duplicate",
            "1%",
            "--reverse-rate",
            "5mbit",
        ]);
        assert_eq!(
            o.rtt(),
            Duration::from_millis(20),
            "--delay replaces the default --rtt"
        );
        assert_eq!(o.link.forward.duplicate, 0.01);
        assert_eq!(o.link.reverse.rate_bps, Some(5_000_000));
        assert_eq!(o.rate_bps(), 250_000_000);
    }

    #[test]
    fn sizes_are_binary() {
        let o = options_of(&["--mem", "64M", "--disk", "32M", "--dirty-rate", "1M"]);
        assert_eq!(o.mem_bytes, 64 << 20);
        assert_eq!(o.disk_bytes, Some(32 << 20));
        assert_eq!(o.dirty_bytes_per_sec, 1 << 20);
    }
}
