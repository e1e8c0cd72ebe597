//! `wanmig migrate VM --to SITE`: starts a live migration at the local
//! gateway and follows it with a progress display (round, remaining, dirty
//! set, wire rate, reduction ratio, ETA) until it ends; then, for a VM with a
//! disk, follows the storage copy to the destination (blocks local, wire
//! rate, ETA) until the destination's copy is verified and this site's copy
//! released, and prints the report (`--json`: the final record plus a
//! `storage` object). `--no-storage` moves compute only.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wanmig_gateway::migration::api::MigrateBody;
use wanmig_gateway::migration::{MigrateRequest, MigrationRecord, Outcome, Progress};
use wanmig_units::{format_rate, format_size, parse_duration, parse_rate, UnitError};

use super::disk_copy::{copy_bar, follow_export, StorageReport};
use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The VM to move, as named at this site.
    pub vm: String,
    /// The destination site.
    #[arg(long)]
    pub to: String,
    /// Longest acceptable pause of the VM, e.g. 300ms (the handover through
    /// the gateways adds one round trip). Default: the gateway's setting.
    #[arg(long, value_parser = parse_duration)]
    pub downtime: Option<Duration>,
    /// Cap on the migration's WAN rate in bits per second, e.g. 100mbit,
    /// 100Mbit/s, 100Mbps or 100M (k, M, G are powers of 1000; a rate in
    /// bytes per second times 8: 30 MB/s is 240mbit). Default: no cap.
    #[arg(long, value_parser = positive_rate)]
    pub bandwidth: Option<u64>,
    /// Dedup scope at the destination (its page store of that scope).
    /// Default: `[migration] scope`, else this site's name. The destination
    /// accepts only the scope named after this site and those its config
    /// lists for this site (`peers[i].scopes`).
    #[arg(long)]
    pub scope: Option<String>,
    /// Print the final record as JSON instead of the progress display.
    #[arg(long)]
    pub json: bool,
    /// Return right after starting, printing the migration id.
    #[arg(long)]
    pub no_wait: bool,
    /// Move compute only: the disk stays authoritative at this site and the
    /// VM reads missing blocks on demand from here; run `wanmig storage
    /// migrate VM` against the destination's gateway later to copy it.
    #[arg(long)]
    pub no_storage: bool,
    /// After the compute move, give up following the storage copy when it
    /// reports no progress for this long, e.g. 2m (the copy keeps running).
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    pub storage_stall_timeout: Duration,
    #[command(flatten)]
    pub target: ControlTarget,
}

/// A `--bandwidth`: a rate above zero (no cap is no `--bandwidth`).
fn positive_rate(s: &str) -> Result<u64, PositiveRateError> {
    match parse_rate(s)? {
        0 => Err(PositiveRateError::Zero),
        bps => Ok(bps),
    }
}

#[derive(Debug, thiserror::Error)]
enum PositiveRateError {
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("a cap of 0 would stop the migration; leave --bandwidth out for no cap")]
    Zero,
}

/// What the display shows at one poll (sans-IO: fed records and clock
/// readings).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub round: u32,
    /// Pages left in round 0 (later rounds' sizes are unknown up front).
    pub remaining_pages: Option<u64>,
    /// Pages dirty after the previous round (round 1 on).
    pub dirty_pages: Option<u64>,
    /// Bit/s on the WAN since the last poll.
    pub wire_bps: f64,
    pub ratio: f64,
    /// Time left in round 0 at the current wire rate.
    pub eta: Option<Duration>,
}

/// Turns successive records into [`View`]s.
#[derive(Debug, Default)]
pub struct ProgressView {
    last: Option<(Instant, Progress)>,
    rate: f64,
}

impl ProgressView {
    pub fn update(&mut self, p: &Progress, now: Instant) -> View {
        if let Some((t, prev)) = &self.last {
            let dt = now.saturating_duration_since(*t).as_secs_f64();
            if dt > 0.0 {
                let inst = p.bytes_out.saturating_sub(prev.bytes_out) as f64 * 8.0 / dt;
                // Smooth over a few polls.
                self.rate = if self.rate == 0.0 {
                    inst
                } else {
                    0.6 * self.rate + 0.4 * inst
                };
            }
        }
        self.last = Some((now, p.clone()));
        let remaining = (p.round == 0).then(|| p.memory_pages.saturating_sub(p.round_pages));
        let eta = match remaining {
            Some(r) if self.rate > 0.0 && p.pages > 0 => {
                let wire_per_page = p.bytes_out as f64 / p.pages as f64;
                Some(Duration::from_secs_f64(
                    r as f64 * wire_per_page * 8.0 / self.rate,
                ))
            }
            _ => None,
        };
        View {
            round: p.round,
            remaining_pages: remaining,
            dirty_pages: (p.round > 0).then_some(p.last_round_pages),
            wire_bps: self.rate,
            ratio: p.reduction_ratio(),
            eta,
        }
    }
}

impl View {
    pub fn line(&self) -> String {
        let mut s = format!("round {}", self.round);
        if let Some(r) = self.remaining_pages {
            s.push_str(&format!(", {} left", format_size(r * 4096)));
        }
        if let Some(d) = self.dirty_pages {
            s.push_str(&format!(", {} dirty", format_size(d * 4096)));
        }
        s.push_str(&format!(
            ", wire {}, reduction {:.1}x",
            format_rate(self.wire_bps),
            self.ratio
        ));
        if let Some(e) = self.eta {
            s.push_str(&format!(", ETA {:.1}s", e.as_secs_f64()));
        }
        s
    }
}

/// The final report as text.
pub fn report(r: &MigrationRecord) -> String {
    let p = &r.progress;
    let mut out = format!(
        "migration {} of {} from {} to {}: {}\n",
        r.id,
        r.vm,
        r.from,
        r.to,
        r.outcome.map(|o| o.label()).unwrap_or("in flight")
    );
    out.push_str(&format!(
        "  rounds {}, pages {}, {} of pages -> {} on the wire ({:.1}x; {})\n",
        p.round + 1,
        p.pages,
        format_size(p.bytes_in),
        format_size(p.bytes_out),
        p.reduction_ratio(),
        p.by_kind.describe()
    ));
    if let Some(d) = r.downtime_ms {
        let goal = match (r.downtime_goal_ms, r.downtime_met) {
            (Some(g), Some(true)) => format!(" (goal {g:.0} ms: met)"),
            (Some(g), Some(false)) => format!(" (goal {g:.0} ms: MISSED)"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  downtime {d:.0} ms{goal}, total {:.1} s\n",
            r.elapsed_ms as f64 / 1e3
        ));
    }
    if let Some(why) = &r.downtime_why {
        out.push_str(&format!("  warning: {why}\n"));
    }
    if let Some(d) = &r.memory_digest {
        out.push_str(&format!("  memory digest {d} (checked at both sites)\n"));
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("  error: {e}\n"));
    }
    if let Some(n) = &r.resolution {
        out.push_str(&format!("  after the link failure: {n}\n"));
    }
    out
}

/// `wanmig migrate --json`: the final record plus the storage copy.
#[derive(Debug, serde::Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    record: &'a MigrationRecord,
    /// `null` without a disk, after `--no-storage`, or when the compute move
    /// failed.
    storage: Option<StorageReport>,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let body = MigrateBody {
        request: MigrateRequest {
            vm: args.vm.clone(),
            to: args.to.clone(),
            downtime: args.downtime,
            scope: args.scope.clone(),
        },
        bandwidth_bps: args.bandwidth,
    };
    let started = if args.no_storage {
        client.migrate_compute_only(&body).await?
    } else {
        client.migrate(&body).await?
    };
    if args.no_wait {
        println!("{}", started.id);
        return Ok(());
    }
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} pages  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut view = ProgressView::default();
    let record = loop {
        let r = client.migration(&started.id).await?;
        let v = view.update(&r.progress, Instant::now());
        let len = match v.remaining_pages {
            Some(_) => r.progress.memory_pages,
            None => r.progress.last_round_pages.max(r.progress.round_pages),
        };
        bar.set_length(len.max(1));
        bar.set_position(r.progress.round_pages.min(len));
        bar.set_message(v.line());
        if r.finished() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    let mut storage = None;
    let mut storage_error = None;
    if record.outcome == Some(Outcome::Succeeded) && !args.no_storage {
        let bar = copy_bar(args.json);
        match follow_export(&client, &args.vm, &bar, args.storage_stall_timeout).await {
            Ok(r) => storage = r,
            Err(e) => storage_error = Some(e),
        }
        bar.finish_and_clear();
    }
    if args.json {
        let j = JsonReport {
            record: &record,
            storage: storage.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print!("{}", report(&record));
        if let Some(s) = &storage {
            print!("{}", s.text());
        } else if args.no_storage && record.outcome == Some(Outcome::Succeeded) {
            println!(
                "  storage: left at {} (read on demand); run `wanmig storage migrate {}` against {}'s gateway to copy it",
                record.from, record.vm, record.to
            );
        }
    }
    if let Some(e) = storage_error {
        return Err(e.context(format!(
            "{} runs at {}, but its disk copy did not finish",
            record.vm, record.to
        )));
    }
    match record.outcome {
        Some(Outcome::Succeeded) => Ok(()),
        Some(Outcome::FailedKeptAtSource) => {
            bail!(
                "the migration failed; {} keeps running at {}",
                record.vm,
                record.from
            )
        }
        _ => bail!(
            "the handover to {} is not confirmed yet; see `wanmig status` at both sites",
            record.to
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_report_is_the_record_plus_storage() {
        let record: MigrationRecord = serde_json::from_value(serde_json::json!({
            "id": "m1", "vm": "web", "from": "a", "to": "b",
            "direction": "outgoing", "phase": "opening",
            "progress": Progress::default(),
            "started_unix_ms": 1, "elapsed_ms": 5, "rounds": 0,
        }))
        .unwrap_or_else(|e| panic!("a minimal record: {e}"));
        let j = serde_json::to_value(JsonReport {
            record: &record,
            storage: Some(StorageReport {
                disk_bytes: 1 << 30,
                wire_bytes: 1 << 20,
                total_ms: 900,
                verified: true,
            }),
        })
        .unwrap();
        assert_eq!(j["vm"], "web");
        assert_eq!(j["storage"]["disk_bytes"], 1u64 << 30);
        assert_eq!(j["storage"]["verified"], true);
    }

    #[test]
    fn bandwidth_is_a_positive_bit_rate() {
        assert_eq!(positive_rate("100M").ok(), Some(100_000_000));
        assert_eq!(positive_rate("10Mbps").ok(), Some(10_000_000));
        assert_eq!(positive_rate("250Mbit/s").ok(), Some(250_000_000));
        assert!(matches!(positive_rate("0"), Err(PositiveRateError::Zero)));
        let e = positive_rate("10MB/s").unwrap_err().to_string();
        assert!(e.contains("80mbit"), "{e}");
        assert!(positive_rate("fast").is_err());
    }

    #[test]
    fn the_view_derives_rates_remaining_and_eta() {
        let t0 = Instant::now();
        let mut v = ProgressView::default();
        let mut p = Progress {
            memory_pages: 1000,
            round_pages: 100,
            pages: 100,
            bytes_in: 100 * 4096,
            bytes_out: 100_000,
            ..Progress::default()
        };
        let first = v.update(&p, t0);
        assert_eq!(first.remaining_pages, Some(900));
        assert_eq!(first.eta, None, "no rate yet");
        p.round_pages = 200;
        p.pages = 200;
        p.bytes_out = 200_000;
        let second = v.update(&p, t0 + Duration::from_secs(1));
        assert_eq!(second.wire_bps, 800_000.0);
        // 800 pages left at 1000 wire bytes each, 100 kB/s: 8 s.
        let eta = second.eta.unwrap().as_secs_f64();
        assert!((eta - 8.0).abs() < 1e-6, "{eta}");
        assert!(second.line().contains("round 0"), "{}", second.line());
        p.round = 1;
        p.last_round_pages = 1000;
        p.round_pages = 5;
        let third = v.update(&p, t0 + Duration::from_secs(2));
        assert_eq!(third.remaining_pages, None);
        assert_eq!(third.dirty_pages, Some(1000));
    }
}
