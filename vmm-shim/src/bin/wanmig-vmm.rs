//! `wanmig-vmm`: run the test guest on KVM, receive a live migration, or
//! tell a running shim to migrate its VM (through its control socket).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wanmig_migration::admin::RunExit;
use wanmig_migration::machine::{DiskConfig, MemoryWorkloadConfig, NetConfig, VmConfig};
use wanmig_migration::policy::PlannerConfig;
use wanmig_units::parse_size;
use wanmig_vmm::admin::{self, AdminRequest, AdminResponse, Endpoint};
use wanmig_vmm::{ReceiveOptions, Vm};

#[derive(Parser)]
#[command(
    name = "wanmig-vmm",
    version,
    about = "wanmig's KVM VMM shim: runs the test guest and live-migrates it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the `run` arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Start a VM (or wait for one to arrive with --incoming) and run it
    /// until the guest exits or the VM is migrated away.
    Run(RunArgs),
    /// Tell the shim behind a control socket to migrate its VM.
    Migrate {
        /// The running shim's control socket (its `run --control`).
        #[arg(long)]
        control: PathBuf,
        /// Destination: unix:/path/to.sock or tcp:host:port (a shim started
        /// with `run --incoming` there).
        #[arg(long)]
        to: String,
        /// Downtime budget in milliseconds.
        #[arg(long, default_value_t = 300)]
        downtime_ms: u64,
        /// Cancel the migration after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// Highest vCPU throttle auto-converge may apply, percent (0 = off).
        #[arg(long, default_value_t = 80)]
        max_throttle: u8,
    },
    /// Print the status of the shim behind a control socket as JSON.
    Status {
        /// The running shim's control socket.
        #[arg(long)]
        control: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Guest memory in bytes, e.g. 64M or 1G (K, M, G are powers of 1024,
    /// as KiB, MiB, GiB and QEMU's -m; kB, MB, GB powers of 1000).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    mem: u64,
    /// What the guest runs: `idle` or `memory` (the dirtying workload).
    #[arg(long, default_value = "idle")]
    workload: String,
    /// Memory workload: seed of its deterministic sequence.
    #[arg(long, default_value_t = 1)]
    mem_seed: u64,
    /// Memory workload: working set in pages.
    #[arg(long, default_value_t = 2048)]
    working_set_pages: u64,
    /// Memory workload: pages written per iteration.
    #[arg(long, default_value_t = 64)]
    pages_per_iteration: u64,
    /// Memory workload: iterations to run (0 = forever).
    #[arg(long, default_value_t = 0)]
    iterations: u64,
    /// Memory workload: minimum microseconds per iteration (0 = flat out).
    #[arg(long, default_value_t = 0)]
    iteration_period_us: u64,
    /// A raw disk file for the virtio-blk device; the guest runs its disk
    /// workload on it (writes and verifies deterministic blocks).
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Disk workload: seed of the block contents.
    #[arg(long, default_value_t = 1)]
    disk_seed: u64,
    /// Disk workload: blocks written and verified per iteration.
    #[arg(long, default_value_t = 64)]
    disk_blocks_per_iteration: u64,
    /// Disk workload: iterations (0 = forever).
    #[arg(long, default_value_t = 0)]
    disk_iterations: u64,
    /// Give the guest a virtio-net card with this static IPv4 address and
    /// run its TCP echo service (status on --net-port + 1). Needs --tap.
    #[arg(long)]
    net_ip: Option<std::net::Ipv4Addr>,
    /// Prefix length of --net-ip.
    #[arg(long, default_value_t = 24)]
    net_prefix_len: u8,
    /// MAC address of the card, e.g. 02:00:00:00:00:01.
    #[arg(long, default_value = "02:77:6d:00:00:01", value_parser = parse_mac)]
    net_mac: [u8; 6],
    /// TCP port of the echo service.
    #[arg(long, default_value_t = 7000)]
    net_port: u16,
    /// TAP device backing the card (created by the shim; needs CAP_NET_ADMIN).
    #[arg(long)]
    tap: Option<String>,
    /// Write the guest's serial console to this file (default: the log).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Preload guest memory from this file before boot.
    #[arg(long)]
    mem_image: Option<PathBuf>,
    /// Listen here (unix:/path or tcp:host:port) for an incoming migration
    /// instead of booting; the VM configuration must match the source's.
    #[arg(long)]
    incoming: Option<String>,
    /// Serve a control socket here (status, migrate).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Take the whole VM configuration from this JSON file (a serialized
    /// `VmConfig`, as a gateway hosting VMs in processes writes it) instead
    /// of the flags above.
    #[arg(long)]
    config_json: Option<PathBuf>,
    /// With --incoming: once the VM runs here, write the migration's report
    /// (pages received, memory digest, time) to this file as JSON, before
    /// the control socket is served.
    #[arg(long)]
    incoming_report: Option<PathBuf>,
    /// With --incoming: longest silence from the source, in seconds, before
    /// the migration is given up (the gateway holds a confirmed VM paused
    /// while it settles a lost link, so it asks for more than the default).
    #[arg(long, default_value_t = 60)]
    incoming_idle_timeout_s: u64,
    /// With --incoming: longest wait, in seconds, for the handover after
    /// confirming the VM's state; 0 waits until the stream closes (the
    /// gateway holds a confirmed VM parked until the lost link is settled).
    #[arg(long, default_value_t = 60)]
    incoming_handover_timeout_s: u64,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    parts.try_into().map_err(|_| {
        format!("`{s}` is not a MAC address; use six hex bytes like 02:00:00:00:00:01")
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text unless on a terminal: the gateway keeps the shim's
        // stderr in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args),
        Cmd::Migrate {
            control,
            to,
            downtime_ms,
            timeout_s,
            max_throttle,
        } => {
            let planner = PlannerConfig {
                downtime_budget: Duration::from_millis(downtime_ms),
                total_timeout: Duration::from_secs(timeout_s),
                auto_converge: max_throttle > 0,
                max_throttle: max_throttle.min(99),
                ..Default::default()
            };
            let resp = admin::request(
                &control,
                &AdminRequest::Migrate {
                    to,
                    planner: Some(planner),
                },
            )
            .with_context(|| format!("cannot talk to the shim at {}", control.display()))?;
            println!("{}", serde_json::to_string_pretty(&resp)?);
            match resp {
                AdminResponse::Error { message, .. } => bail!("migration failed: {message}"),
                AdminResponse::HandedOver { message } => {
                    bail!("the VM was handed over but not confirmed: {message}")
                }
                _ => {}
            }
            Ok(())
        }
        Cmd::Status { control } => {
            let resp = admin::request(&control, &AdminRequest::Status)
                .with_context(|| format!("cannot talk to the shim at {}", control.display()))?;
            println!("{}", serde_json::to_string_pretty(&resp)?);
            Ok(())
        }
    }
}

fn vm_config(a: &RunArgs) -> Result<VmConfig> {
    if let Some(path) = &a.config_json {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --config-json {}", path.display()))?;
        let config: VmConfig = serde_json::from_str(&text).with_context(|| {
            format!("--config-json {} is not a VM configuration", path.display())
        })?;
        config.validate()?;
        return Ok(config);
    }
    let memory_workload = match a.workload.as_str() {
        "idle" => None,
        "memory" => Some(MemoryWorkloadConfig {
            seed: a.mem_seed,
            working_set_pages: a.working_set_pages,
            pages_per_iteration: a.pages_per_iteration,
            iterations: a.iterations,
            iteration_period: Duration::from_micros(a.iteration_period_us),
            page_writes: Default::default(),
        }),
        other => bail!("unknown --workload `{other}`; use `idle` or `memory`"),
    };
    let disk = a.disk.as_ref().map(|path| DiskConfig {
        path: path.clone(),
        seed: a.disk_seed,
        blocks_per_iteration: a.disk_blocks_per_iteration,
        iterations: a.disk_iterations,
    });
    let net = match (a.net_ip, &a.tap) {
        (Some(ip), Some(tap)) => Some(NetConfig {
            mac: a.net_mac,
            ip,
            prefix_len: a.net_prefix_len,
            port: a.net_port,
            tap: Some(tap.clone()),
            segment: None,
        }),
        (Some(_), None) => {
            bail!("--net-ip needs --tap NAME: the card must be backed by a TAP device")
        }
        (None, Some(_)) => bail!("--tap needs --net-ip: give the guest an address"),
        (None, None) => None,
    };
    let config = VmConfig {
        mem_size: a.mem,
        memory_workload,
        net,
        disk,
        mem_image: a.mem_image.clone(),
    };
    config.validate()?;
    Ok(config)
}

fn serial_sink(path: &Option<PathBuf>) -> Result<wanmig_vmm::serial::SerialSink> {
    Ok(match path {
        Some(p) => {
            let mut f = std::fs::File::create(p)
                .with_context(|| format!("cannot create the serial log {}", p.display()))?;
            Box::new(move |line: &str| {
                let _ = writeln!(f, "{line}");
            })
        }
        None => Box::new(|line: &str| tracing::info!(target: "guest", "{line}")),
    })
}

fn run(a: RunArgs) -> Result<()> {
    let config = vm_config(&a)?;
    let sink = serial_sink(&a.serial_log)?;
    let vm = match &a.incoming {
        Some(addr) => {
            let endpoint: Endpoint = addr.parse().map_err(anyhow::Error::msg)?;
            tracing::info!("waiting for an incoming migration on {endpoint}");
            let mut stream = endpoint
                .accept_one()
                .with_context(|| format!("cannot accept a migration on {endpoint}"))?;
            let opts = ReceiveOptions {
                idle_timeout: Duration::from_secs(a.incoming_idle_timeout_s.max(1)),
                handover_timeout: (a.incoming_handover_timeout_s > 0)
                    .then(|| Duration::from_secs(a.incoming_handover_timeout_s)),
            };
            let (vm, report) = wanmig_vmm::receive_from(&mut stream, config, sink, &opts)
                .context("incoming migration failed; no VM runs here")?;
            tracing::info!(
                pages = report.pages_received,
                digest = %report.memory_digest,
                "migration received; the VM runs here now"
            );
            if let Some(path) = &a.incoming_report {
                // Written whole (temporary file, then rename): a reader never
                // sees half a report.
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec(&report)?)
                    .and_then(|_| std::fs::rename(&tmp, path))
                    .with_context(|| {
                        format!("cannot write --incoming-report {}", path.display())
                    })?;
            }
            vm
        }
        None => {
            let vm = Vm::create(config, sink).context("cannot create the VM")?;
            vm.start()?;
            vm
        }
    };
    let watch = vm.exit_watch();
    let vm = Arc::new(Mutex::new(vm));
    let (migrated_tx, migrated_rx) = std::sync::mpsc::channel();
    if let Some(path) = &a.control {
        admin::serve(path, vm.clone(), migrated_tx)
            .with_context(|| format!("cannot serve the control socket {}", path.display()))?;
    }
    let exit = loop {
        if let Some(e) = watch.wait(Duration::from_secs(3600)) {
            break e;
        }
    };
    if let Some(path) = &a.control {
        let _ = std::fs::remove_file(path);
    }
    match exit {
        RunExit::Guest(0) => {
            tracing::info!("the guest finished");
            Ok(())
        }
        RunExit::Stopped => {
            // Let the control socket deliver the migration report first.
            let _ = migrated_rx.recv_timeout(Duration::from_secs(30));
            tracing::info!("the VM was migrated away");
            Ok(())
        }
        other => bail!("the VM ended abnormally: {other:?}"),
    }
}
