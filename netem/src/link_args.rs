//! [`LinkArgs`]: the command-line flags of an emulated link, and the
//! [`LinkParams`] of its two directions they make. `wanmig netem udp|tun`
//! and `wanmig demo` flatten this one struct, so a new impairment is a
//! field of [`LinkParams`] plus a flag here, and every command that
//! emulates a link takes it.
//!
//! Values follow `wanmig-units`: rates in bits per second with decimal
//! prefixes, sizes in bytes with K/M/G as powers of 1024, durations like
//! `50ms`, percentages like `0.1%`.

use std::time::Duration;

use clap::{Args, ValueEnum};
use wanmig_units::{parse_duration, parse_percent, parse_rate, parse_size, UnitError};

use crate::error::NetemError;
use crate::loss::LossModel;
use crate::params::{JitterDist, LinkParams};

/// The link knobs. Every flag applies to both directions; a `--reverse-*`
/// flag overrides it for the reverse direction (upstream → client, or
/// B → A). An absent flag means no such impairment; a command may give
/// defaults of its own with clap's `mut_arg` (`wanmig demo` does for
/// `--rtt` and `--rate`).
#[derive(Debug, Clone, Default, Args)]
pub struct LinkArgs {
    /// Round-trip time, e.g. 100ms: each direction delays packets by half
    /// of it.
    #[arg(long, value_parser = parse_duration, conflicts_with = "delay")]
    pub rtt: Option<Duration>,
    /// One-way delay of each direction, e.g. 50ms (RTT = 2 × delay), instead
    /// of --rtt.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Delay variation, e.g. 5ms (does not reorder unless --reorder).
    #[arg(long, value_parser = parse_duration)]
    pub jitter: Option<Duration>,
    /// Distribution of the jitter (default: uniform).
    #[arg(long, value_enum)]
    pub jitter_dist: Option<DistArg>,
    /// Mean packet loss of each direction, e.g. 0.1%: independent, unless
    /// --loss-burst makes it bursty.
    #[arg(long, value_parser = parse_percent)]
    pub loss: Option<f64>,
    /// Make the --loss bursty (Gilbert-Elliott) with this mean burst length
    /// in packets, e.g. 4; --loss stays the mean loss rate.
    #[arg(long, value_name = "PACKETS", value_parser = parse_burst, conflicts_with = "loss_model")]
    pub loss_burst: Option<f64>,
    /// Loss by the Gilbert-Elliott chain's own probabilities instead:
    /// `gemodel:p,r,1-h,1-k` in percent, e.g. gemodel:1%,25% (netem's
    /// defaults for omitted values); `random` means use --loss.
    #[arg(long, value_parser = parse_loss_model)]
    pub loss_model: Option<LossSpec>,
    /// Duplicate probability, e.g. 1%.
    #[arg(long, value_parser = parse_percent)]
    pub duplicate: Option<f64>,
    /// Probability that a packet skips the delay and overtakes, e.g. 5%.
    #[arg(long, value_parser = parse_percent)]
    pub reorder: Option<f64>,
    /// Bottleneck rate in bits per second, e.g. 250mbit, 250Mbit/s,
    /// 250Mbps or 1G (k, M, G are powers of 1000; a rate in bytes per
    /// second times 8: 30 MB/s is 240mbit); 0 = unlimited.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Queue in front of the bottleneck in bytes, e.g. 2M or 512KiB (K, M,
    /// G are powers of 1024, as KiB, MiB, GiB; kB, MB, GB powers of 1000);
    /// tail drop when full. Default: one bandwidth-delay product, at least
    /// 64 KiB.
    #[arg(long, value_parser = parse_size)]
    pub queue: Option<u64>,

    /// Reverse-direction --delay.
    #[arg(long, value_parser = parse_duration)]
    pub reverse_delay: Option<Duration>,
    /// Reverse-direction --jitter.
    #[arg(long, value_parser = parse_duration)]
    pub reverse_jitter: Option<Duration>,
    /// Reverse-direction --loss. With any --reverse-loss* flag the reverse
    /// direction's loss comes from those flags alone.
    #[arg(long, value_parser = parse_percent)]
    pub reverse_loss: Option<f64>,
    /// Reverse-direction --loss-burst.
    #[arg(long, value_name = "PACKETS", value_parser = parse_burst, conflicts_with = "reverse_loss_model")]
    pub reverse_loss_burst: Option<f64>,
    /// Reverse-direction --loss-model.
    #[arg(long, value_parser = parse_loss_model)]
    pub reverse_loss_model: Option<LossSpec>,
    /// Reverse-direction --rate (bits per second, as --rate).
    #[arg(long, value_parser = parse_rate)]
    pub reverse_rate: Option<u64>,
    /// Reverse-direction --queue (bytes, as --queue).
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

/// A `--loss-model` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossSpec {
    /// Independent loss with the `--loss` probability.
    Random,
    /// Gilbert-Elliott loss by its probabilities.
    Gemodel(LossModel),
}

/// A link flag's value that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinkArgError {
    #[error("{0:?} is not a loss model; write `random` or `gemodel:p,r,1-h,1-k` in percent, e.g. gemodel:1%,25%")]
    NotALossModel(String),
    #[error("{0:?}: gemodel takes 1 to 4 percentages: p,r,1-h,1-k")]
    GemodelArity(String),
    #[error("{0:?} is not a burst length; write a number of packets, at least 1, e.g. 4")]
    NotABurst(String),
    #[error(transparent)]
    Unit(#[from] UnitError),
}

/// Parses `gemodel:P[,R[,1-H[,1-K]]]` (percentages, netem's defaults for
/// the omitted ones) or `random` (meaning: use `--loss`).
pub fn parse_loss_model(s: &str) -> Result<LossSpec, LinkArgError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("random") {
        return Ok(LossSpec::Random);
    }
    let Some(rest) = t.strip_prefix("gemodel:") else {
        return Err(LinkArgError::NotALossModel(s.to_string()));
    };
    let parts: Vec<f64> = rest
        .split(',')
        .map(parse_percent)
        .collect::<Result<_, _>>()?;
    if parts.is_empty() || parts.len() > 4 {
        return Err(LinkArgError::GemodelArity(s.to_string()));
    }
    Ok(LossSpec::Gemodel(LossModel::gemodel(
        parts[0],
        parts.get(1).copied(),
        parts.get(2).copied(),
        parts.get(3).copied(),
    )))
}

/// Parses a mean burst length in packets (at least 1).
pub fn parse_burst(s: &str) -> Result<f64, LinkArgError> {
    match s.trim().parse::<f64>() {
        Ok(b) if b.is_finite() && b >= 1.0 => Ok(b),
        _ => Err(LinkArgError::NotABurst(s.to_string())),
    }
}

/// The loss model that `--loss-model`, `--loss` and `--loss-burst` (or
/// their reverse forms, named by `prefix`) describe together.
fn loss_of(
    prefix: &str,
    model: Option<LossSpec>,
    loss: Option<f64>,
    burst: Option<f64>,
) -> Result<LossModel, NetemError> {
    match (model, loss) {
        (Some(LossSpec::Gemodel(_)), Some(p)) => Err(NetemError::InvalidArg {
            flag: format!("--{prefix}loss"),
            value: format!("{}%", p * 100.0),
            reason: format!(
                "--{prefix}loss is random loss and cannot be combined with --{prefix}loss-model gemodel:..."
            ),
        }),
        (Some(LossSpec::Gemodel(ge)), None) => Ok(ge),
        (_, loss) => Ok(LossModel::of_mean(loss.unwrap_or(0.0), burst)),
    }
}

impl LinkArgs {
    /// The forward and reverse parameters these flags describe, each
    /// validated.
    pub fn to_params(&self) -> Result<(LinkParams, LinkParams), NetemError> {
        let rtt = match (self.delay, self.rtt) {
            (Some(delay), _) => delay * 2,
            (None, Some(rtt)) => rtt,
            (None, None) => Duration::ZERO,
        };
        let rate = self.rate.unwrap_or(0);
        let fwd = LinkParams::wan(rtt, rate)
            .with_jitter(
                self.jitter.unwrap_or_default(),
                self.jitter_dist.map(Into::into).unwrap_or_default(),
            )
            .with_loss(loss_of("", self.loss_model, self.loss, self.loss_burst)?)
            .with_duplicate(self.duplicate.unwrap_or(0.0))
            .with_reorder(self.reorder.unwrap_or(0.0));
        let fwd = match self.queue {
            Some(q) => fwd.with_queue_bytes(q),
            None => fwd,
        };
        let rev_delay = self.reverse_delay.unwrap_or(fwd.delay);
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
        if self.reverse_loss.is_some()
            || self.reverse_loss_burst.is_some()
            || self.reverse_loss_model.is_some()
        {
            rev.loss = loss_of(
                "reverse-",
                self.reverse_loss_model,
                self.reverse_loss,
                self.reverse_loss_burst,
            )?;
        }
        fwd.validate()?;
        rev.validate()?;
        Ok((fwd, rev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        link: LinkArgs,
    }

    fn parse(args: &[&str]) -> Result<LinkArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("link").chain(args.iter().copied())).map(|c| c.link)
    }

    fn params(args: &[&str]) -> (LinkParams, LinkParams) {
        parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .to_params()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn flags_become_params() {
        let (f, r) = params(&[
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
            "2MiB",
        ]);
        assert_eq!(f.delay, Duration::from_millis(50));
        assert_eq!(f.jitter, Duration::from_millis(5));
        assert_eq!(f.jitter_dist, JitterDist::Normal);
        assert_eq!(f.loss, LossModel::Random { p: 0.001 });
        assert_eq!((f.duplicate, f.reorder), (0.01, 0.02));
        assert_eq!(f.rate_bps, Some(250_000_000));
        assert_eq!(f.queue_bytes, 2 << 20);
        assert_eq!(r, f, "without overrides both directions match");
    }

    #[test]
    fn no_flags_is_an_ideal_link() {
        let (f, r) = params(&[]);
        assert_eq!(f, LinkParams::ideal());
        assert_eq!(r, LinkParams::ideal());
    }

    #[test]
    fn rtt_is_twice_the_delay_and_the_two_conflict() {
        let (f, r) = params(&["--rtt", "100ms"]);
        assert_eq!(
            (f.delay, r.delay),
            (Duration::from_millis(50), Duration::from_millis(50))
        );
        let e = parse(&["--rtt", "100ms", "--delay", "50ms"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[test]
    fn loss_burst_makes_the_loss_bursty() {
        let (f, r) = params(&["--loss", "1%", "--loss-burst", "4"]);
        assert_eq!(
            f.loss,
            LossModel::Bursty {
                mean: 0.01,
                burst: 4.0
            }
        );
        assert_eq!(r.loss, f.loss);
        let (f, _) = params(&["--loss-burst", "4"]);
        assert_eq!(f.loss, LossModel::None, "no --loss, no loss");
        let e = parse(&["--loss-burst", "0.5"]).unwrap_err().to_string();
        assert!(
            e.contains("--loss-burst") && e.contains("at least 1"),
            "{e}"
        );
        let e = parse(&["--loss-burst", "4", "--loss-model", "gemodel:1%"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[test]
    fn reverse_overrides_and_default_queue() {
        let (f, r) = params(&[
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
        let (f, r) = params(&["--loss", "1%", "--loss-burst", "4", "--reverse-loss", "2%"]);
        assert_eq!(
            f.loss,
            LossModel::Bursty {
                mean: 0.01,
                burst: 4.0
            }
        );
        assert_eq!(r.loss, LossModel::Random { p: 0.02 });
    }

    #[test]
    fn bad_values_name_the_flag_and_what_to_write() {
        let e = parse(&["--rate", "fast"]).unwrap_err().to_string();
        assert!(e.contains("--rate") && e.contains("250mbit"), "{e}");
        let e = parse(&["--rate", "30MB/s"]).unwrap_err().to_string();
        assert!(e.contains("--rate") && e.contains("240mbit"), "{e}");
        let e = parse(&["--loss", "200%"]).unwrap_err().to_string();
        assert!(e.contains("--loss"), "{e}");
        let e = parse(&["--queue", "lots"]).unwrap_err().to_string();
        assert!(e.contains("--queue") && e.contains("powers of 1024"), "{e}");
        let e = parse(&["--loss", "1%", "--loss-model", "gemodel:1%"])
            .unwrap()
            .to_params()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--loss"), "{e}");
        let e = parse(&["--reverse-loss", "1%", "--reverse-loss-model", "gemodel:1%"])
            .unwrap()
            .to_params()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--reverse-loss"), "{e}");
    }

    #[test]
    fn loss_models() {
        assert_eq!(parse_loss_model("random").ok(), Some(LossSpec::Random));
        assert_eq!(
            parse_loss_model("gemodel:1%,25%,100%,0%").ok(),
            Some(LossSpec::Gemodel(LossModel::GilbertElliott {
                p: 0.01,
                r: 0.25,
                loss_bad: 1.0,
                loss_good: 0.0
            }))
        );
        assert_eq!(
            parse_loss_model("gemodel:10").ok(),
            Some(LossSpec::Gemodel(LossModel::gemodel(0.1, None, None, None)))
        );
        assert!(parse_loss_model("gemodel:").is_err());
        assert!(parse_loss_model("bursty").is_err());
        assert!(matches!(
            parse_loss_model("gemodel:1,2,3,4,5"),
            Err(LinkArgError::GemodelArity(_))
        ));
    }
}
