//! `wanmig vm start|list`: place a VM at the local site and list the VMs
//! there. `vm start` builds the VM's configuration from its flags: the
//! network card on a segment (`--net`, with a MAC and an address derived
//! from the VM's name unless given), a disk and a memory image (checked by
//! the gateway against its `[vms]` directories).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use wanmig_migration::machine::{DiskConfig, MemoryWorkloadConfig, NetConfig, VmConfig};
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
    pub net: NetArgs,
    #[command(flatten)]
    pub files: FileArgs,
    #[command(flatten)]
    pub target: ControlTarget,
}

/// The VM's network card.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Give the VM a network card plugged into this overlay segment (a name
    /// under the gateway's [[overlay.segment]]). Wherever the VM runs, that
    /// site's gateway plugs the card into the segment of the same name, so
    /// the VM keeps its MAC, address and TCP sessions when it migrates. The
    /// guest serves TCP echo on --port and a status line on --port + 1.
    #[arg(long, value_name = "SEGMENT")]
    pub net: Option<String>,
    /// The card's MAC address (aa:bb:cc:dd:ee:ff, unicast). Default:
    /// 02:57:4d followed by three bytes derived from the VM's name (a
    /// locally administered address, the same for the same name).
    #[arg(long, value_name = "MAC", requires = "net", value_parser = parse_mac)]
    pub mac: Option<[u8; 6]>,
    /// The guest's static IPv4 address and prefix length (the guest has no
    /// DHCP). Default: an address in 10.77.0.0/16 derived from the VM's
    /// name; give one for VMs that must reach a particular subnet, and to
    /// rule out two names mapping to the same address.
    #[arg(long, value_name = "ADDR/PREFIX", requires = "net", value_parser = parse_ip_prefix)]
    pub ip: Option<(Ipv4Addr, u8)>,
    /// TCP port of the guest's echo service (its status port is PORT + 1).
    #[arg(long, value_name = "PORT", default_value_t = 7000, requires = "net",
          value_parser = clap::value_parser!(u16).range(1..65535))]
    pub port: u16,
}

/// Host files the VM uses. The gateway allows only regular files, reached
/// without symlinks or '..', under the directories its config names
/// ([vms] image_dirs and disk_dirs); a relative path is taken from the
/// current directory.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// Attach this raw file as the VM's virtio-block disk; it must lie
    /// under one of the gateway's [vms] disk_dirs. The test guest writes
    /// and verifies its own deterministic blocks on it, overwriting what
    /// was there. The disk follows the VM when it migrates (with [vms] host
    /// = "in-process", the default).
    #[arg(long, value_name = "FILE")]
    pub disk: Option<PathBuf>,
    /// Preload guest memory from this file (its first --mem bytes); it must
    /// lie under one of the gateway's [vms] image_dirs. VMs started from
    /// the same image share pages the page store can deduplicate.
    #[arg(long, value_name = "FILE")]
    pub mem_image: Option<PathBuf>,
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

/// Seed of the disk workload of a VM started with `--disk`.
const DISK_SEED: u64 = 0xd15c;
/// Blocks the disk workload writes and verifies per iteration.
const DISK_BLOCKS_PER_ITERATION: u64 = 8;
/// The first three bytes of a MAC derived from a VM's name.
const MAC_PREFIX: [u8; 3] = [0x02, 0x57, 0x4d];
/// The subnet an address derived from a VM's name lies in.
const DEFAULT_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 16);

/// FNV-1a of `name`: written out because the defaults it derives must be
/// the same on every build and host, which std's hasher does not promise.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The MAC `--mac` defaults to for VM `name`.
fn default_mac(name: &str) -> [u8; 6] {
    let h = name_hash(name).to_be_bytes();
    [
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        h[5],
        h[6],
        h[7],
    ]
}

/// The address `--ip` defaults to for VM `name`: a host of
/// [`DEFAULT_NET`], never its network or broadcast address.
fn default_ip(name: &str) -> (Ipv4Addr, u8) {
    let (net, prefix) = DEFAULT_NET;
    let hosts = (1u64 << (32 - prefix)) - 2;
    let host = 1 + name_hash(name) % hosts;
    (Ipv4Addr::from(u32::from(net) + host as u32), prefix)
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address; write six hex bytes, as 02:57:4d:00:00:10");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; a network card needs a unicast one (even first byte)"
        ));
    }
    if mac == [0; 6] {
        return Err("00:00:00:00:00:00 is not a usable MAC address".into());
    }
    Ok(mac)
}

fn parse_ip_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{s:?} is not ADDR/PREFIX; write e.g. 198.18.0.10/15");
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(1..=30).contains(&prefix) {
        return Err(format!(
            "prefix /{prefix} leaves no room for a peer; use /1 to /30"
        ));
    }
    let host_mask = u32::MAX >> prefix;
    let host = u32::from(ip) & host_mask;
    if host == 0 || host == host_mask {
        return Err(format!(
            "{ip} is the network or broadcast address of /{prefix}; pick a host address"
        ));
    }
    Ok((ip, prefix))
}

/// `path` made absolute against the current directory (the gateway only
/// takes absolute paths), without resolving symlinks: the gateway refuses
/// those itself.
fn absolute(flag: &str, path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{flag} {}", path.display()))
}

/// The VM configuration `a` asks for.
fn vm_config(a: &StartArgs) -> anyhow::Result<VmConfig> {
    let net = a.net.net.as_ref().map(|segment| {
        let (ip, prefix_len) = a.net.ip.unwrap_or_else(|| default_ip(&a.name));
        NetConfig {
            mac: a.net.mac.unwrap_or_else(|| default_mac(&a.name)),
            ip,
            prefix_len,
            port: a.net.port,
            tap: None,
            segment: Some(segment.clone()),
        }
    });
    let disk = match &a.files.disk {
        Some(p) => Some(DiskConfig {
            path: absolute("--disk", p)?,
            seed: DISK_SEED,
            blocks_per_iteration: DISK_BLOCKS_PER_ITERATION,
            iterations: 0,
        }),
        None => None,
    };
    let mem_image = match &a.files.mem_image {
        Some(p) => Some(absolute("--mem-image", p)?),
        None => None,
    };
    Ok(VmConfig {
        mem_size: a.mem,
        memory_workload: (a.workload == Workload::Memory).then_some(MemoryWorkloadConfig {
            seed: a.seed,
            working_set_pages: a.working_set,
            pages_per_iteration: a.pages_per_iteration,
            iterations: 0,
            iteration_period: a.period,
            page_writes: Default::default(),
        }),
        net,
        disk,
        mem_image,
    })
}

/// The flag that sets each configuration key the gateway may name in a
/// refusal.
const FLAG_OF_KEY: [(&str, &str); 4] = [
    ("mem_image", "--mem-image"),
    ("disk.path", "--disk"),
    ("net.segment", "--net"),
    ("mem_size", "--mem"),
];

async fn start(a: StartArgs) -> anyhow::Result<()> {
    let config = vm_config(&a)?;
    let client = a.target.client()?;
    if let Err(e) = client.start_vm(&a.name, &config).await {
        let text = e.to_string();
        let flags: Vec<&str> = FLAG_OF_KEY
            .iter()
            .filter(|(key, _)| text.contains(key))
            .map(|(_, flag)| *flag)
            .collect();
        let what = if flags.is_empty() {
            format!("starting VM '{}'", a.name)
        } else {
            format!("starting VM '{}': check {}", a.name, flags.join(", "))
        };
        return Err(anyhow::Error::new(e).context(what));
    }
    let site = client.vms().await.map(|v| v.site).unwrap_or_default();
    println!(
        "VM '{}' runs at {} ({} of memory)",
        a.name,
        site,
        format_size(a.mem)
    );
    if let Some(n) = &config.net {
        println!(
            "  network: segment {} as {}/{} (MAC {}), echo on TCP port {}",
            n.segment.as_deref().unwrap_or("-"),
            n.ip,
            n.prefix_len,
            format_mac(&n.mac),
            n.port
        );
    }
    Ok(())
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_defaults_are_stable_unicast_and_host_addresses() {
        let mac = default_mac("web1");
        assert_eq!(mac, default_mac("web1"));
        assert_ne!(mac, default_mac("web2"));
        assert_eq!(mac[..3], MAC_PREFIX);
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(parse_mac(&format_mac(&mac)), Ok(mac));
        for name in ["web1", "web2", "a", "db-17"] {
            let (ip, prefix) = default_ip(name);
            assert_eq!(prefix, 16);
            let o = ip.octets();
            assert_eq!(o[..2], [10, 77], "{ip}");
            assert!(o[2..] != [0, 0] && o[2..] != [255, 255], "{ip}");
            assert_eq!(parse_ip_prefix(&format!("{ip}/{prefix}")), Ok((ip, prefix)));
        }
    }

    #[test]
    fn bad_macs_and_addresses_are_refused_with_what_to_write() {
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:01",
            "zz:00:00:00:00:01",
            "2:0:0:0:0:1",
        ] {
            assert!(
                parse_mac(bad).unwrap_err().contains("six hex bytes"),
                "{bad}"
            );
        }
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_ip_prefix("10.0.0.1")
            .unwrap_err()
            .contains("ADDR/PREFIX"));
        assert!(parse_ip_prefix("10.0.0.0/24")
            .unwrap_err()
            .contains("network"));
        assert!(parse_ip_prefix("10.0.0.255/24")
            .unwrap_err()
            .contains("broadcast"));
        assert!(parse_ip_prefix("10.0.0.1/31").unwrap_err().contains("/30"));
    }
}
