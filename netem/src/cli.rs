//! The `wanmig netem` command: run a UDP relay or a TUN link with netem-like
//! flags, or talk to a running one's control endpoint.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};

use crate::control::{self, LinkControl};
use crate::error::NetemError;
use crate::link_args::LinkArgs;
use crate::relay::{RelayConfig, UdpRelay};
use crate::tun::{TunLink, TunLinkConfig};

/// Userspace WAN emulator (this kernel has no sch_netem).
#[derive(Debug, Args)]
pub struct NetemArgs {
    #[command(subcommand)]
    pub command: NetemCommand,
}

#[derive(Debug, Subcommand)]
pub enum NetemCommand {
    /// Relay UDP from --listen to --upstream through an emulated link
    /// (each client address gets its own upstream socket, so replies come
    /// back through the reverse direction).
    Udp(UdpArgs),
    /// Join two existing network namespaces with TUN devices and an
    /// emulated point-to-point link (needs root).
    Tun(TunArgs),
    /// Cut, restore or read the counters of a running emulator.
    Ctl(CtlArgs),
}

#[derive(Debug, Args)]
pub struct UdpArgs {
    /// Address to receive client datagrams on, e.g. 127.0.0.1:4433.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address to relay them to, e.g. 127.0.0.1:4434.
    #[arg(long)]
    pub upstream: SocketAddr,
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct TunArgs {
    /// Namespace of side A (as `ip netns list` shows it).
    #[arg(long)]
    pub ns_a: String,
    /// Namespace of side B.
    #[arg(long)]
    pub ns_b: String,
    /// Side A's address (198.18.0.0/15 is the benchmarking range).
    #[arg(long, default_value = "198.18.0.1")]
    pub addr_a: Ipv4Addr,
    /// Side B's address.
    #[arg(long, default_value = "198.18.0.2")]
    pub addr_b: Ipv4Addr,
    /// MTU of both TUN devices.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u16,
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Serve cut/restore/stats on this loopback TCP address
    /// (see `wanmig netem ctl`).
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// Seed of the random decisions; the same seed replays them.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The emulator's --control address.
    #[arg(long)]
    pub control: SocketAddr,
    pub action: CtlAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CtlAction {
    /// Drop everything in both directions.
    Cut,
    /// Undo `cut`.
    Restore,
    /// Print the counters as JSON.
    Stats,
}

async fn serve_until_ctrl_c(
    control: Option<SocketAddr>,
    target: Arc<dyn LinkControl>,
) -> Result<(), NetemError> {
    let _server = match control {
        Some(addr) => {
            let s = control::serve(addr, target).await?;
            println!("control endpoint on {}", s.local_addr());
            Some(s)
        }
        None => None,
    };
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| NetemError::io("waiting for Ctrl-C", e))
}

/// Runs `wanmig netem ...` until Ctrl-C (or, for `ctl`, one request).
pub async fn run(args: NetemArgs) -> Result<(), NetemError> {
    match args.command {
        NetemCommand::Udp(a) => {
            let (forward, reverse) = a.link.to_params()?;
            let relay = UdpRelay::start(RelayConfig {
                listen: a.listen,
                upstream: a.upstream,
                forward,
                reverse,
                seed: a.run.seed,
            })
            .await?;
            println!("relaying {} -> {}", relay.local_addr(), a.upstream);
            serve_until_ctrl_c(a.run.control, Arc::new(relay.clone())).await?;
            relay.shutdown().await;
            Ok(())
        }
        NetemCommand::Tun(a) => {
            let (forward, reverse) = a.link.to_params()?;
            let link = TunLink::start(TunLinkConfig {
                ns_a: a.ns_a.clone(),
                ns_b: a.ns_b.clone(),
                addr_a: a.addr_a,
                addr_b: a.addr_b,
                mtu: a.mtu,
                forward,
                reverse,
                seed: a.run.seed,
            })
            .await?;
            let (da, db) = link.devices();
            println!(
                "linking {} ({da}, {}) <-> {} ({db}, {})",
                a.ns_a, a.addr_a, a.ns_b, a.addr_b
            );
            serve_until_ctrl_c(a.run.control, Arc::new(link.clone())).await?;
            link.shutdown().await;
            Ok(())
        }
        NetemCommand::Ctl(c) => {
            let cmd = match c.action {
                CtlAction::Cut => "cut",
                CtlAction::Restore => "restore",
                CtlAction::Stats => "stats",
            };
            println!("{}", control::request(c.control, cmd).await?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        netem: NetemArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("netem").chain(args.iter().copied()))
    }

    fn udp(args: &[&str]) -> Result<UdpArgs, clap::Error> {
        let mut full = vec![
            "udp",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
        ];
        full.extend_from_slice(args);
        match parse(&full)?.netem.command {
            NetemCommand::Udp(u) => Ok(u),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn udp_takes_the_link_flags() {
        let u = udp(&["--rtt", "100ms", "--rate", "250Mbps", "--loss", "1%"]).unwrap();
        let (f, r) = u.link.to_params().unwrap();
        assert_eq!(f.delay, Duration::from_millis(50));
        assert_eq!(f.rate_bps, Some(250_000_000));
        assert_eq!(r, f);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = udp(&["--rate", "fast"]).unwrap_err().to_string();
        assert!(e.contains("--rate") && e.contains("250mbit"), "{e}");
        let e = parse(&["udp", "--listen", "nowhere", "--upstream", "127.0.0.1:2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--listen"), "{e}");
    }

    #[test]
    fn ctl_and_tun_parse() {
        let cli = parse(&["ctl", "--control", "127.0.0.1:7000", "cut"]).unwrap();
        assert!(matches!(
            cli.netem.command,
            NetemCommand::Ctl(CtlArgs {
                action: CtlAction::Cut,
                ..
            })
        ));
        let cli = parse(&["tun", "--ns-a", "x", "--ns-b", "y", "--delay", "5ms"]).unwrap();
        let NetemCommand::Tun(t) = cli.netem.command else {
            panic!()
        };
        assert_eq!(t.addr_b, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(
            t.link.to_params().unwrap().1.delay,
            Duration::from_millis(5)
        );
    }
}
