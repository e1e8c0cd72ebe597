//! `wanmig probe`: asks the local gateway to send N bytes to a peer and
//! prints the goodput.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The peer site to send to.
    #[arg(long)]
    pub to: String,
    /// How many bytes to send: a number with an optional unit
    /// (K, M, G = 10³ⁿ; Ki, Mi, Gi = 2¹⁰ⁿ), e.g. 100M.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub bytes: u64,
    #[command(flatten)]
    pub target: ControlTarget,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `100`, `100K`, `64M`, `1G`, `512Ki`, `1Gi` (an optional trailing
/// `B` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 1000000, 64M, 1Gi)"))?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use K, M, G, Ki, Mi or Gi)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let spinner = (!args.json).then(|| {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or(ProgressStyle::default_spinner()),
        );
        pb.set_message(format!(
            "sending {} to {}",
            super::status_cmd::human_bytes(args.bytes),
            args.to
        ));
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let result = client.probe(&args.to, args.bytes).await;
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    let r = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} bytes to {} in {:.0} ms: {:.1} Mbit/s goodput (RTT {:.1} ms, {} packets lost)",
            r.bytes, r.peer, r.duration_ms, r.goodput_mbit, r.rtt_ms, r.lost_packets
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("64M"), Ok(64_000_000));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
