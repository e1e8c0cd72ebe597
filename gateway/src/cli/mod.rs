//! Command-line interface of `wanmig`: the clap definitions, logging setup
//! and dispatch to one module per subcommand (`*_cmd`). Subcommands share
//! only leaf modules: [`target`] (which gateway to ask), [`table`] (text
//! table layout), [`site_tables`] (a site's VM and migration tables) and
//! [`disk_copy`] (following a storage copy). Sizes, rates and durations are
//! parsed and printed by `wanmig-units`.

mod certs_cmd;
mod demo_cmd;
mod disk_copy;
mod gateway_cmd;
mod migrate_cmd;
mod migration_cmd;
mod probe_cmd;
mod qemu_cmd;
mod site_tables;
mod status_cmd;
mod storage_cmd;
mod table;
mod target;
mod vm_cmd;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// wanmig — live-migrate KVM VMs between datacentres over a WAN.
///
/// One gateway runs per site; gateways peer over QUIC with mutual TLS.
/// Start with `wanmig certs` to create the deployment's certificates, then
/// run `wanmig gateway --config site-a.toml` at every site, and watch the
/// mesh with `wanmig status`.
#[derive(Debug, Parser)]
#[command(name = "wanmig", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides this.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job, end to end with embedded defaults: two sites over an
    /// emulated 100 ms / 250 Mbit/s WAN, a KVM guest with a live TCP
    /// session migrated from site A to site B, verified; prints a report.
    Demo(demo_cmd::DemoArgs),
    /// Run this site's gateway (QUIC peering, control API, metrics).
    Gateway(gateway_cmd::GatewayArgs),
    /// Create the deployment CA and per-site certificates.
    Certs(certs_cmd::CertsArgs),
    /// Show the local gateway's peers, link state, RTT and traffic.
    Status(status_cmd::StatusArgs),
    /// Measure goodput to a peer site by sending N bytes over a fresh QUIC stream.
    Probe(probe_cmd::ProbeArgs),
    /// Live-migrate a VM from this site to another, with a progress display.
    Migrate(migrate_cmd::MigrateArgs),
    /// Settle a migration this site holds parked after a lost link.
    Migration(migration_cmd::MigrationArgs),
    /// Place VMs at this site and list them.
    Vm(vm_cmd::VmArgs),
    /// Copy a migrated VM's disk to where it runs now; list disk copies.
    Storage(storage_cmd::StorageArgs),
    /// Move QEMU VMs through the gateways: register a destination QEMU,
    /// migrate a source QEMU to another site.
    Qemu(qemu_cmd::QemuArgs),
    /// The userspace WAN emulator (delay, jitter, loss, rate, reorder, cuts).
    Netem(Box<wanmig_netem::cli::NetemArgs>),
    /// Print a shell completion script for `wanmig` to stdout.
    ///
    /// bash: `wanmig completions bash > /etc/bash_completion.d/wanmig`;
    /// zsh: `wanmig completions zsh > "${fpath[1]}/_wanmig"`;
    /// fish: `wanmig completions fish > ~/.config/fish/completions/wanmig.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Whether log lines get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set (<https://no-color.org>), so log files and journald
/// hold plain text.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs go to stderr; the daemon defaults to `info`, CLI commands to `warn`.
pub fn init_logging(cli: &Cli) {
    let base = match cli.command {
        Command::Gateway(_) | Command::Netem(_) => 2,
        _ => 1,
    };
    let level = match base + cli.verbose {
        0 | 1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => demo_cmd::run(a).await,
        Command::Gateway(a) => gateway_cmd::run(a).await,
        Command::Certs(a) => certs_cmd::run(a),
        Command::Status(a) => status_cmd::run(a).await,
        Command::Probe(a) => probe_cmd::run(a).await,
        Command::Migrate(a) => migrate_cmd::run(a).await,
        Command::Migration(a) => migration_cmd::run(a).await,
        Command::Vm(a) => vm_cmd::run(a).await,
        Command::Storage(a) => storage_cmd::run(a).await,
        Command::Qemu(a) => qemu_cmd::run(a).await,
        Command::Netem(a) => wanmig_netem::cli::run(*a).await.map_err(Into::into),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "wanmig", &mut std::io::stdout());
            Ok(())
        }
    }
}
