//! `wanmig migration settle`: the operator's decision on a VM this site
//! holds parked after the link failed during a migration's handover (see
//! `docs/runbook.md`). Before resuming, it asks the source site's gateway,
//! when told how, whether the VM runs there, and refuses if it does.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use wanmig_gateway::migration::Decision;
use wanmig_gateway::vms::VmState;

use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct MigrationArgs {
    #[command(subcommand)]
    pub command: MigrationCommand,
}

#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Resume or discard the VM of migration ID, which this site holds
    /// parked (paused) because the link failed after it confirmed the VM's
    /// state. Normally the source settles it when the link returns; settle
    /// it by hand only when the source site is gone or will stay
    /// unreachable. `wanmig status` lists parked migrations.
    Settle(SettleArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("decision").required(true).args(["resume", "discard"])))]
pub struct SettleArgs {
    /// The migration's id (the ID column of `wanmig status`).
    pub id: String,
    /// Run the VM here: only if the source site handed it over (its
    /// `wanmig status` says handover-unconfirmed) or is gone for good.
    #[arg(long)]
    pub resume: bool,
    /// Drop the copy held here: the VM runs (or will be restarted) at the
    /// source.
    #[arg(long)]
    pub discard: bool,
    /// The source site's gateway config file: with it (or
    /// --source-control), --resume first asks that gateway whether the VM
    /// runs there and refuses if it does. Without either, the source is
    /// not asked.
    #[arg(long, conflicts_with = "source_control")]
    pub source_config: Option<std::path::PathBuf>,
    /// The source site's control API address (a loopback address, e.g.
    /// through an SSH tunnel), with --source-token-file.
    #[arg(long, requires = "source_token_file")]
    pub source_control: Option<std::net::SocketAddr>,
    /// The source site's control API token file.
    #[arg(long)]
    pub source_token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub target: ControlTarget,
}

pub async fn run(args: MigrationArgs) -> anyhow::Result<()> {
    match args.command {
        MigrationCommand::Settle(a) => settle(a).await,
    }
}

async fn settle(a: SettleArgs) -> anyhow::Result<()> {
    let decision = if a.resume {
        Decision::Resume
    } else {
        Decision::Discard
    };
    let client = a.target.client()?;
    let record = client
        .migration(&a.id)
        .await
        .with_context(|| format!("looking up migration '{}' here", a.id))?;
    if !record.parked {
        bail!(
            "migration '{}' ({} from {}) is not parked here: nothing to settle (its outcome: {})",
            a.id,
            record.vm,
            record.from,
            record
                .outcome
                .map(|o| o.label())
                .unwrap_or("still in flight")
        );
    }
    if decision == Decision::Resume {
        let source = ControlTarget {
            config: a.source_config.clone(),
            control: a.source_control,
            token_file: a.source_token_file.clone(),
        };
        if source.config.is_some() || source.control.is_some() {
            let vms = source.client()?.vms().await.with_context(|| {
                format!(
                    "asking {} whether VM '{}' runs there (settle without --source-* only if that site is gone)",
                    record.from, record.vm
                )
            })?;
            if let Some(v) = vms
                .vms
                .iter()
                .find(|v| v.name == record.vm && v.state == VmState::Running)
            {
                bail!(
                    "VM '{}' runs at {}: resuming it here too would run two copies; settle with --discard instead (state there: {})",
                    v.name,
                    vms.site,
                    v.state
                );
            }
        } else {
            eprintln!(
                "warning: not asking {} whether VM '{}' runs there (no --source-config or --source-control); resuming here assumes it does not",
                record.from, record.vm
            );
        }
    }
    let r = client
        .settle_migration(&a.id, decision)
        .await
        .with_context(|| format!("settling migration '{}'", a.id))?;
    let what = match (decision, r.outcome) {
        (Decision::Resume, Some(wanmig_gateway::migration::Outcome::Succeeded)) => {
            format!("VM '{}' runs here now", r.vm)
        }
        (Decision::Resume, _) => format!(
            "resuming VM '{}' failed: {}",
            r.vm,
            r.error.unwrap_or_default()
        ),
        (Decision::Discard, _) => format!("the copy of VM '{}' held here is discarded", r.vm),
    };
    println!("{what}");
    Ok(())
}
