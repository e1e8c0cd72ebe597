//! `wanmig storage`: the follow-on storage copy of migrated VMs.
//! `wanmig storage migrate VM` (run against the site where the VM runs now)
//! starts or resumes the background copy of a disk left at the source by
//! `wanmig migrate --no-storage` and follows it with a progress display
//! (blocks local, wire rate, ETA) until the disk is local and verified;
//! `wanmig storage status` lists the disks copied to and from this site.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use wanmig_gateway::vms::DiskState;
use wanmig_units::{format_size, parse_duration};

use super::disk_copy::{copy_bar, dest_sample, show, CopyProgress, StorageReport};
use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct StorageArgs {
    #[command(subcommand)]
    pub command: StorageCommand,
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy a migrated VM's disk to the site where the VM runs now (after
    /// `wanmig migrate --no-storage`; for a copy already running, follow
    /// it). Run it against that site's gateway.
    Migrate(StorageMigrateArgs),
    /// List the disks copied to and from this site.
    Status(StorageStatusArgs),
}

#[derive(Debug, Args)]
pub struct StorageMigrateArgs {
    /// The VM whose disk to bring here, as named at this site.
    pub vm: String,
    /// Print the final report as JSON instead of the progress display.
    #[arg(long)]
    pub json: bool,
    /// Return right after starting the copy.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up following when the copy reports no progress for this long,
    /// e.g. 2m (the copy itself keeps running).
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    pub stall_timeout: Duration,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Args)]
pub struct StorageStatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}

async fn migrate(args: StorageMigrateArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let started = client.storage_migrate(&args.vm).await?;
    if args.no_wait {
        if let Some(d) = &started.disk {
            println!("{}: disk {d}", args.vm);
        }
        return Ok(());
    }
    let bar = copy_bar(args.json);
    let mut progress = CopyProgress::default();
    let report = loop {
        let s = client.storage(&args.vm).await?;
        let Some(disk) = s.disk else {
            bail!(
                "VM {} has no disk copied to {} (it may have moved on; see `wanmig vm list`)",
                args.vm,
                s.site
            );
        };
        if let Some(r) = StorageReport::from_disk(&disk) {
            break r;
        }
        match &disk {
            DiskState::Failed { from, reason } => {
                bar.finish_and_clear();
                bail!(
                    "the copy of {}'s disk from {from} failed: {reason}",
                    args.vm
                )
            }
            d => {
                if let Some(sample) = dest_sample(d) {
                    let now = Instant::now();
                    show(&bar, &progress.update(sample, now));
                    if progress.stalled_for(now) > args.stall_timeout {
                        bar.finish_and_clear();
                        bail!(
                            "the copy of {}'s disk reported no progress for {:?}: {d}; it resumes by itself when the link to the source returns (`wanmig storage status` shows it)",
                            args.vm,
                            args.stall_timeout
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!(
            "disk of {} is local at {}\n{}",
            args.vm,
            started.site,
            report.text()
        );
    }
    if !report.verified {
        bail!(
            "the disk of {} is local at {} but the source did not confirm its end-of-copy check; the source keeps its copy: see `wanmig storage status` at the source before removing it",
            args.vm,
            started.site
        );
    }
    Ok(())
}

fn render(list: &wanmig_gateway::migration::api::StorageList) -> String {
    let mut out = String::new();
    if list.disks.is_empty() && list.exports.is_empty() {
        return format!("no disks are copied to or from {}\n", list.site);
    }
    for (vm, d) in &list.disks {
        out.push_str(&format!("{vm}: disk {d}\n"));
    }
    for e in &list.exports {
        let state = if e.released {
            format!(
                "released after a verified copy ({} on the wire)",
                format_size(e.wire_bytes)
            )
        } else if let Some(err) = &e.error {
            format!("failed: {err}")
        } else if !e.background {
            "served on demand (remote-only at the destination)".to_string()
        } else if e.total_blocks > 0 {
            format!(
                "copying ({}/{} blocks local there)",
                e.local_blocks, e.total_blocks
            )
        } else {
            "waiting for the destination".to_string()
        };
        out.push_str(&format!(
            "{}: exported to {}: {state}\n",
            e.name,
            e.to.as_deref().unwrap_or("-")
        ));
    }
    out
}

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    match args.command {
        StorageCommand::Migrate(a) => migrate(a).await,
        StorageCommand::Status(a) => {
            let list = a.target.client()?.storage_list().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", render(&list));
            }
            Ok(())
        }
    }
}
