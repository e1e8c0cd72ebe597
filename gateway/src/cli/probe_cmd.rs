//! `wanmig probe`: asks the local gateway to send N bytes to a peer and
//! prints the goodput.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wanmig_units::{format_rate, format_size, parse_size};

use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The peer site to send to.
    #[arg(long)]
    pub to: String,
    /// How many bytes to send, e.g. 100M (K, M, G are powers of 1024, as
    /// KiB, MiB, GiB; kB, MB, GB powers of 1000).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub bytes: u64,
    #[command(flatten)]
    pub target: ControlTarget,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
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
            format_size(args.bytes),
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
            "{} bytes to {} in {:.0} ms: {} goodput (RTT {:.1} ms, {} packets lost)",
            r.bytes,
            r.peer,
            r.duration_ms,
            format_rate(r.goodput_mbit * 1e6),
            r.rtt_ms,
            r.lost_packets
        );
    }
    Ok(())
}
