//! `wanmig vm start|list`: place a VM at the local site and list the VMs
//! there.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};
use wanmig_units::{format_size, parse_duration, parse_size};

use super::site_tables::render_vms;
use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a VM (the wanmig test guest) at the local gateway's site.
    Start(StartArgs),
    /// List the VMs the local gateway knows: running, migrating, migrated
    /// away, failed (with the reason).
    List(ListArgs),
}

/// What the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Boots and idles.
    Idle,
    /// The deterministic memory workload (dirties pages, reports digests).
    Memory,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The VM's name, unique at the site (letters, digits, '-', '_', '.').
    pub name: String,
    /// Guest memory in bytes, e.g. 64M or 1G (K, M, G are powers of 1024,
    /// as KiB, MiB, GiB and QEMU's -m; kB, MB, GB powers of 1000).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub mem: u64,
    /// What the guest runs.
    #[arg(long, value_enum, default_value_t = Workload::Memory)]
    pub workload: Workload,
    /// Memory workload: pages of the working set.
    #[arg(long, default_value_t = 1024)]
    pub working_set: u64,
    /// Memory workload: pages written per iteration.
    #[arg(long, default_value_t = 16)]
    pub pages_per_iteration: u64,
    /// Memory workload: at most one iteration per this period (e.g. 1ms).
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub period: Duration,
    /// Memory workload: seed of its deterministic sequence.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}

pub async fn run(args: VmArgs) -> anyhow::Result<()> {
    match args.command {
        VmCommand::Start(a) => start(a).await,
        VmCommand::List(a) => {
            let client = a.target.client()?;
            let vms = client.vms().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
            } else {
                print!("{}", render_vms(&vms));
            }
            Ok(())
        }
    }
}

async fn start(a: StartArgs) -> anyhow::Result<()> {
    let config = VmConfig {
        mem_size: a.mem,
        memory_workload: (a.workload == Workload::Memory).then_some(MemoryWorkloadConfig {
            seed: a.seed,
            working_set_pages: a.working_set,
            pages_per_iteration: a.pages_per_iteration,
            iterations: 0,
            iteration_period: a.period,
            page_writes: Default::default(),
        }),
        ..VmConfig::default()
    };
    let client = a.target.client()?;
    client
        .start_vm(&a.name, &config)
        .await
        .with_context(|| format!("starting VM '{}'", a.name))?;
    println!(
        "VM '{}' runs at {} ({} of memory)",
        a.name,
        client.vms().await.map(|v| v.site).unwrap_or_default(),
        format_size(a.mem)
    );
    Ok(())
}
