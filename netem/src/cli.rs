//! The `wanmig netem` command: run a UDP relay or a TUN link with netem-like
//! flags, or talk to a running one's control endpoint.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::control::{self, LinkControl};
use crate::error::NetemError;
use crate::loss::LossModel;
use crate::params::{JitterDist, LinkParams};
use crate::relay::{RelayConfig, UdpRelay};
use crate::tun::{TunLink, TunLinkConfig};
use crate::units::{
    parse_duration, parse_loss_model, parse_percent, parse_rate, parse_size, LossSpec,
};

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

/// The link knobs. Every flag applies to both directions; a `--reverse-*`
/// flag overrides it for the reverse direction (upstream → client, or
/// B → A).
#[derive(Debug, Clone, Default, Args)]
pub struct LinkArgs {
    /// One-way delay, e.g. 50ms (so RTT = 2 × delay).
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Delay variation, e.g. 5ms (does not reorder unless --reorder).
    #[arg(long, value_parser = parse_duration)]
    pub jitter: Option<Duration>,
    /// Distribution of the jitter.
    #[arg(long, value_enum)]
    pub jitter_dist: Option<DistArg>,
    /// Random loss, e.g. 0.1%.
    #[arg(long, value_parser = parse_percent)]
    pub loss: Option<f64>,
    /// `random` (use --loss) or bursty `gemodel:p,r,1-h,1-k` in percent,
    /// e.g. gemodel:1%,25% (netem's defaults for omitted values).
    #[arg(long, value_parser = parse_loss_model)]
    pub loss_model: Option<LossSpec>,
    /// Duplicate probability, e.g. 1%.
    #[arg(long, value_parser = parse_percent)]
    pub duplicate: Option<f64>,
    /// Probability that a packet skips the delay and overtakes, e.g. 5%.
    #[arg(long, value_parser = parse_percent)]
    pub reorder: Option<f64>,
    /// Bottleneck rate, e.g. 250mbit, 1gbit, 100kbit (0 = unlimited).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Queue in front of the bottleneck, e.g. 2MB or 512KiB (tail drop when
    /// full; default one bandwidth-delay product).
    #[arg(long, value_parser = parse_size)]
    pub queue: Option<u64>,

    /// Reverse-direction --delay.
    #[arg(long, value_parser = parse_duration)]
    pub reverse_delay: Option<Duration>,
    /// Reverse-direction --jitter.
    #[arg(long, value_parser = parse_duration)]
    pub reverse_jitter: Option<Duration>,
    /// Reverse-direction --loss.
    #[arg(long, value_parser = parse_percent)]
    pub reverse_loss: Option<f64>,
    /// Reverse-direction --loss-model.
    #[arg(long, value_parser = parse_loss_model)]
    pub reverse_loss_model: Option<LossSpec>,
    /// Reverse-direction --rate.
    #[arg(long, value_parser = parse_rate)]
    pub reverse_rate: Option<u64>,
    /// Reverse-direction --queue.
    #[arg(long, value_parser = parse_size)]
    pub reverse_queue: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistArg {
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

impl From<DistArg> for JitterDist {
    fn from(d: DistArg) -> Self {
        match d {
            DistArg::Uniform => JitterDist::Uniform,
            DistArg::Normal => JitterDist::Normal,
            DistArg::Pareto => JitterDist::Pareto,
            DistArg::Paretonormal => JitterDist::ParetoNormal,
        }
    }
}

fn loss_of(model: Option<LossSpec>, loss: Option<f64>) -> Result<LossModel, NetemError> {
    match (model, loss) {
        (Some(LossSpec::Gemodel(_)), Some(_)) => Err(NetemError::InvalidArg {
            flag: "--loss".into(),
            value: format!("{}%", loss.unwrap_or(0.0) * 100.0),
            reason: "--loss is random loss and cannot be combined with --loss-model gemodel:..."
                .into(),
        }),
        (Some(LossSpec::Gemodel(ge)), None) => Ok(ge),
        (_, Some(p)) => Ok(LossModel::Random { p }),
        (_, None) => Ok(LossModel::None),
    }
}

impl LinkArgs {
    /// The forward and reverse parameters these flags describe.
    pub fn to_params(&self) -> Result<(LinkParams, LinkParams), NetemError> {
        let delay = self.delay.unwrap_or_default();
        let rate = self.rate.unwrap_or(0);
        let fwd = LinkParams::wan(delay * 2, rate)
            .with_jitter(
                self.jitter.unwrap_or_default(),
                self.jitter_dist.map(Into::into).unwrap_or_default(),
            )
            .with_loss(loss_of(self.loss_model, self.loss)?)
            .with_duplicate(self.duplicate.unwrap_or(0.0))
            .with_reorder(self.reorder.unwrap_or(0.0));
        let fwd = match self.queue {
            Some(q) => fwd.with_queue_bytes(q),
            None => fwd,
        };
        let rev_delay = self.reverse_delay.unwrap_or(delay);
        let rev_rate = self.reverse_rate.unwrap_or(rate);
        // The default queue follows the reverse direction's own BDP.
        let mut rev = LinkParams {
            delay: rev_delay,
            rate_bps: (rev_rate > 0).then_some(rev_rate),
            queue_bytes: LinkParams::wan(rev_delay * 2, rev_rate).queue_bytes,
            ..fwd.clone()
        };
        if self.queue.is_some() {
            rev.queue_bytes = fwd.queue_bytes;
        }
        if let Some(q) = self.reverse_queue {
            rev.queue_bytes = q;
        }
        if let Some(j) = self.reverse_jitter {
            rev.jitter = j;
        }
        if self.reverse_loss.is_some() || self.reverse_loss_model.is_some() {
            rev.loss = loss_of(self.reverse_loss_model, self.reverse_loss)?;
        }
        fwd.validate()?;
        rev.validate()?;
        Ok((fwd, rev))
    }
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

    fn udp(args: &[&str]) -> (LinkParams, LinkParams) {
        let mut full = vec![
            "udp",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
        ];
        full.extend_from_slice(args);
        match parse(&full).unwrap().netem.command {
            NetemCommand::Udp(u) => u.link.to_params().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_become_params() {
        let (f, r) = udp(&[
            "--delay",
            "50ms",
            "--jitter",
            "5ms",
            "--jitter-dist",
            "normal",
            "--loss",
            "0.1%",
            "--duplicate",
            "1%",
            "--reorder",
            "2%",
            "--rate",
            "250mbit",
            "--queue",
            "2MB",
        ]);
        assert_eq!(f.delay, Duration::from_millis(50));
        assert_eq!(f.jitter, Duration::from_millis(5));
        assert_eq!(f.jitter_dist, JitterDist::Normal);
        assert_eq!(f.loss, LossModel::Random { p: 0.001 });
        assert_eq!((f.duplicate, f.reorder), (0.01, 0.02));
        assert_eq!(f.rate_bps, Some(250_000_000));
        assert_eq!(f.queue_bytes, 2_000_000);
        assert_eq!(r, f, "without overrides both directions match");
    }

    #[test]
    fn reverse_overrides_and_default_queue() {
        let (f, r) = udp(&[
            "--delay",
            "50ms",
            "--rate",
            "100mbit",
            "--reverse-delay",
            "10ms",
            "--reverse-rate",
            "10mbit",
            "--reverse-loss-model",
            "gemodel:1%,30%",
        ]);
        assert_eq!(f.queue_bytes, 1_250_000, "one BDP at 100 ms RTT");
        assert_eq!(r.delay, Duration::from_millis(10));
        assert_eq!(r.rate_bps, Some(10_000_000));
        assert_eq!(r.queue_bytes, 65_536, "BDP of 25 kB is below the minimum");
        assert_eq!(r.loss, LossModel::gemodel(0.01, Some(0.3), None, None));
        assert_eq!(f.loss, LossModel::None);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&[
            "udp",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--rate",
            "fast",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--rate") && e.contains("250mbit"), "{e}");
        let e = parse(&[
            "udp",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--loss",
            "200%",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--loss"), "{e}");
        let e = parse(&["udp", "--listen", "nowhere", "--upstream", "127.0.0.1:2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--listen"), "{e}");
        let cli = parse(&[
            "udp",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--loss",
            "1%",
            "--loss-model",
            "gemodel:1%",
        ])
        .unwrap();
        let NetemCommand::Udp(u) = cli.netem.command else {
            panic!()
        };
        let e = u.link.to_params().unwrap_err().to_string();
        assert!(e.contains("--loss"), "{e}");
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
