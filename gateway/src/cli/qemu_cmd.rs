//! `wanmig qemu accept NAME --qmp PATH` (at the destination site) and
//! `wanmig qemu migrate NAME --qmp PATH --to SITE` (at the source site):
//! QEMU live migrations through the gateways. The migrate command starts
//! the move at the local gateway and follows it with a progress bar
//! (QEMU's `query-migrate` and the relay's wire counters) until it ends,
//! then prints the report (`--json`: the final status as JSON).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use wanmig_gateway::qemu::api::AcceptRequest;
use wanmig_gateway::qemu::{MoveRequest, MoveState};
use wanmig_units::{format_size, parse_duration};

use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct QemuArgs {
    #[command(subcommand)]
    pub command: QemuCommand,
}

#[derive(Debug, Subcommand)]
pub enum QemuCommand {
    /// Register a destination QEMU at this site. Start it with the source's
    /// machine type, devices, memory size and `-uuid`, and with
    /// `-incoming defer -qmp unix:PATH,server=on,wait=off`; the gateway
    /// sets its migration capabilities as the source's and runs
    /// `migrate-incoming` when the migration arrives.
    Accept {
        /// The migration's name (the source site's `wanmig qemu migrate`
        /// names it too).
        name: String,
        /// The destination QEMU's QMP socket.
        #[arg(long)]
        qmp: PathBuf,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Live-migrate the QEMU behind a QMP socket at this site to another
    /// site, through the gateways (register the destination there first).
    Migrate {
        /// The migration's name, as registered at the destination.
        name: String,
        /// The source QEMU's QMP socket.
        #[arg(long)]
        qmp: PathBuf,
        /// The destination site.
        #[arg(long)]
        to: String,
        /// The source QEMU's downtime limit, e.g. 300ms. The bandwidth is
        /// left to the gateway.
        #[arg(long, value_parser = parse_duration, default_value = "300ms")]
        downtime: Duration,
        /// Dedup scope at the destination (default: the gateway's).
        #[arg(long)]
        scope: Option<String>,
        /// Print the final status as JSON instead of the progress display.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

pub async fn run(args: QemuArgs) -> anyhow::Result<()> {
    match args.command {
        QemuCommand::Accept { name, qmp, target } => {
            let client = target.client()?;
            let qmp = std::path::absolute(&qmp).unwrap_or(qmp);
            client
                .qemu_accept(&AcceptRequest {
                    name: name.clone(),
                    qmp,
                })
                .await?;
            println!("destination QEMU registered as '{name}'");
            Ok(())
        }
        QemuCommand::Migrate {
            name,
            qmp,
            to,
            downtime,
            scope,
            json,
            target,
        } => {
            let client = target.client()?;
            let qmp = std::path::absolute(&qmp).unwrap_or(qmp);
            client
                .qemu_migrate(&MoveRequest {
                    name: name.clone(),
                    qmp,
                    to,
                    downtime,
                    scope,
                })
                .await?;
            let bar = if json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(1)
            };
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let status = loop {
                let s = client.qemu_migration(&name).await?;
                let sent = s.qemu.transferred;
                bar.set_length(sent + s.qemu.remaining.max(1));
                bar.set_position(sent);
                bar.set_message(format!(
                    "QEMU {}: {} sent, {} left; wire {} ({} pages reduced, {} zero)",
                    s.qemu.status,
                    format_size(sent),
                    format_size(s.qemu.remaining),
                    format_size(s.relay.wire_bytes),
                    s.relay.pages,
                    s.relay.zero_pages,
                ));
                if s.state != MoveState::Running {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else if let Some(r) = &status.report {
                println!(
                    "{}: {:?} in {} ms, downtime {} ms (QEMU's), {} from QEMU as {} on the wire ({:.1}%); {} pages reduced, {} zero pages, {} verbatim",
                    status.name,
                    status.state,
                    r.total_ms,
                    r.downtime_ms.map_or("?".into(), |d| d.to_string()),
                    format_size(r.qemu_bytes),
                    format_size(r.wire_bytes),
                    100.0 * r.wire_bytes as f64 / r.qemu_bytes.max(1) as f64,
                    r.pages_reduced,
                    r.zero_pages,
                    format_size(r.verbatim_bytes),
                );
                for u in &r.unreduced {
                    println!("  {u}");
                }
            }
            match (status.state, &status.error) {
                (MoveState::Completed, _) => Ok(()),
                (_, Some(e)) => bail!("{e}"),
                _ => bail!("the migration failed"),
            }
        }
    }
}
