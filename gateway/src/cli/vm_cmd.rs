//! `wanmig vm start|list`: place a VM at the local site and list the VMs
//! there; also renders the VM and migration tables `wanmig status` shows.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use wanmig_gateway::control_client::ControlClient;
use wanmig_gateway::migration::api::VmList;
use wanmig_gateway::migration::{MigrationRecord, VmState};
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};

use super::status_cmd::human_bytes;
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
    /// Guest memory, e.g. 64M or 1G (binary units).
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
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
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

/// Parses a size with an optional binary suffix: `4096`, `64K`, `32M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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
        human_bytes(a.mem)
    );
    Ok(())
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The VMs of one site as a table.
pub fn render_vms(list: &VmList) -> String {
    if list.vms.is_empty() {
        return format!("no VMs at {}\n", list.site);
    }
    let mut rows = vec![["VM", "STATE", "MEMORY", "ITERATION", "DISK", "NOTE"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for v in &list.vms {
        let (state, note) = match &v.state {
            VmState::Running => ("running".to_string(), v.last_error.clone()),
            VmState::MigratingOut { to } => (format!("migrating to {to}"), None),
            VmState::Incoming { from } => (format!("arriving from {from}"), None),
            VmState::MigratedAway { to } => (format!("migrated to {to}"), None),
            VmState::HandoverUnconfirmed { to, reason } => {
                (format!("handed over to {to}?"), Some(reason.clone()))
            }
            VmState::Failed { reason } => ("failed".to_string(), Some(reason.clone())),
        };
        rows.push(vec![
            v.name.clone(),
            state,
            human_bytes(v.mem_size),
            v.iteration.to_string(),
            v.storage
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            note.unwrap_or_default(),
        ]);
    }
    table(rows)
}

/// Migrations (in flight and finished) as a table.
pub fn render_migrations(list: &[MigrationRecord]) -> String {
    if list.is_empty() {
        return "no migrations\n".into();
    }
    let mut rows = vec![[
        "ID", "VM", "FROM", "TO", "PHASE", "OUTCOME", "WIRE", "RATIO", "DOWNTIME", "NOTE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for r in list {
        let note = r
            .resolution
            .clone()
            .or_else(|| r.error.clone())
            .unwrap_or_default();
        rows.push(vec![
            r.id.clone(),
            r.vm.clone(),
            r.from.clone(),
            r.to.clone(),
            serde_json::to_value(r.phase)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            r.outcome
                .map(|o| o.label().to_string())
                .unwrap_or_else(|| "in flight".into()),
            if r.progress.bytes_out > 0 {
                human_bytes(r.progress.bytes_out)
            } else {
                "-".into()
            },
            if r.progress.bytes_out > 0 {
                format!("{:.1}x", r.progress.reduction_ratio())
            } else {
                "-".into()
            },
            r.downtime_ms
                .map(|d| format!("{d:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            note,
        ]);
    }
    table(rows)
}

/// The VM and migration sections of `wanmig status`.
pub async fn render_site(client: &ControlClient) -> anyhow::Result<String> {
    let vms = client.vms().await?;
    let migrations = client.migrations().await?;
    Ok(format!(
        "\nVMs at {}:\n{}\nmigrations:\n{}",
        vms.site,
        render_vms(&vms),
        render_migrations(&migrations.migrations)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanmig_gateway::migration::{DiskState, VmInfo};

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("32m"), Ok(32 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn vm_table_says_where_and_why() {
        let list = VmList {
            site: "site-a".into(),
            vms: vec![
                VmInfo {
                    name: "web".into(),
                    state: VmState::Running,
                    mem_size: 64 << 20,
                    iteration: 42,
                    last_error: Some("migration to site-b failed: link down".into()),
                    storage: Some(DiskState::Copying {
                        from: "site-b".into(),
                        path: "disks/web.disk".into(),
                        local_blocks: 0,
                        total_blocks: 0,
                        wire_bytes: 0,
                    }),
                },
                VmInfo {
                    name: "db".into(),
                    state: VmState::MigratedAway {
                        to: "site-b".into(),
                    },
                    mem_size: 32 << 20,
                    iteration: 7,
                    last_error: None,
                    storage: None,
                },
            ],
        };
        let t = render_vms(&list);
        assert!(t.contains("running") && t.contains("link down"), "{t}");
        assert!(t.contains("migrated to site-b"), "{t}");
        assert!(t.contains("copying from site-b"), "{t}");
        assert!(render_vms(&VmList {
            site: "x".into(),
            vms: vec![]
        })
        .contains("no VMs"));
    }
}
