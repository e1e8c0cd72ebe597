//! The scenario matrix: links (RTT × rate × loss), guests (workload × memory
//! mix), and the named sets the runner offers (`quick`, `report`, `full`).
//! Pure data: no I/O.

use std::time::Duration;

use serde::Serialize;
use wanmig_gateway::demo::{DemoOptions, GuestWorkload, MemoryMix};
use wanmig_gateway::lab::Link;
use wanmig_netem::{JitterDist, LinkParams, LossModel};

/// RTTs of the matrix, milliseconds.
pub const RTTS_MS: [u64; 5] = [1, 20, 50, 100, 150];
/// Rates of the matrix, Mbit/s.
pub const RATES_MBIT: [u64; 3] = [100, 250, 1000];
/// Mean burst length of the bursty loss, packets.
pub const BURST_PACKETS: f64 = 4.0;
/// The disk of scenarios that have one.
pub const DISK_BYTES: u64 = 16 << 20;

/// Loss on each direction of a link. Lossy links also carry jitter (see
/// [`LinkSpec::jitter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// No loss, no jitter.
    Clean,
    /// 0.1% independent loss.
    Random01,
    /// 1% mean loss in Gilbert-Elliott bursts of [`BURST_PACKETS`] packets.
    Bursty1,
}

impl Loss {
    pub const ALL: [Loss; 3] = [Loss::Clean, Loss::Random01, Loss::Bursty1];

    pub fn mean(self) -> f64 {
        match self {
            Loss::Clean => 0.0,
            Loss::Random01 => 0.001,
            Loss::Bursty1 => 0.01,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Loss::Clean => "0%",
            Loss::Random01 => "0.1%",
            Loss::Bursty1 => "1% bursty",
        }
    }
}

/// One emulated link (both directions alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinkSpec {
    pub rtt_ms: u64,
    pub rate_mbit: u64,
    pub loss: Loss,
}

impl LinkSpec {
    pub fn new(rtt_ms: u64, rate_mbit: u64, loss: Loss) -> Self {
        LinkSpec {
            rtt_ms,
            rate_mbit,
            loss,
        }
    }

    pub fn rtt(&self) -> Duration {
        Duration::from_millis(self.rtt_ms)
    }

    pub fn rate_bps(&self) -> u64 {
        self.rate_mbit * 1_000_000
    }

    /// Lossy links get uniform jitter of ±5% of the one-way delay (at
    /// least 0.2 ms): loss on a WAN comes with queueing variation. Clean
    /// links have none.
    pub fn jitter(&self) -> Duration {
        match self.loss {
            Loss::Clean => Duration::ZERO,
            _ => Duration::from_micros((self.rtt_ms * 1000 / 2 / 20).max(200)),
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{} ms / {} Mbit/s / {}",
            self.rtt_ms,
            self.rate_mbit,
            self.loss.label()
        )
    }

    /// Both directions of the emulated link: this RTT and rate, the mean
    /// loss (bursty for [`Loss::Bursty1`]) and the jitter.
    pub fn link(&self) -> Link {
        let burst = (self.loss == Loss::Bursty1).then_some(BURST_PACKETS);
        let p = LinkParams::wan(self.rtt(), self.rate_bps())
            .with_loss(LossModel::of_mean(self.loss.mean(), burst))
            .with_jitter(self.jitter(), JitterDist::Uniform);
        Link {
            forward: p.clone(),
            reverse: p,
        }
    }

    pub fn slug(&self) -> String {
        let loss = match self.loss {
            Loss::Clean => "clean",
            Loss::Random01 => "loss0.1",
            Loss::Bursty1 => "loss1b",
        };
        format!("{}ms-{}M-{loss}", self.rtt_ms, self.rate_mbit)
    }

    /// Every link of the matrix (45).
    pub fn all() -> Vec<LinkSpec> {
        let mut v = Vec::new();
        for &rate in &RATES_MBIT {
            for &rtt in &RTTS_MS {
                for loss in Loss::ALL {
                    v.push(LinkSpec::new(rtt, rate, loss));
                }
            }
        }
        v
    }
}

/// One scenario: a guest on a link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub link: LinkSpec,
    pub workload: GuestWorkload,
    pub mix: MemoryMix,
    pub mem_bytes: u64,
    /// Pages the memory workload writes into.
    pub working_set_pages: u64,
    /// The VM's disk, when it has one.
    pub disk_bytes: Option<u64>,
    pub seed: u64,
}

impl Scenario {
    pub fn new(link: LinkSpec, workload: GuestWorkload, mix: MemoryMix, mem_bytes: u64) -> Self {
        Scenario {
            link,
            workload,
            mix,
            mem_bytes,
            // A quarter of memory, at most the demo's 32 MiB.
            working_set_pages: (mem_bytes / 4096 / 4).min(8192),
            disk_bytes: Some(DISK_BYTES),
            seed: 0x5ce_0001,
        }
    }

    /// The same scenario without the disk (memory migration only).
    pub fn without_disk(self) -> Self {
        Scenario {
            disk_bytes: None,
            ..self
        }
    }

    /// A file-name-safe unique name.
    pub fn slug(&self) -> String {
        format!(
            "{}-{}-{}-{}M",
            self.link.slug(),
            self.workload.label(),
            self.mix.label(),
            self.mem_bytes >> 20
        )
    }

    /// The demo's options for this scenario, with or without reduction.
    /// The raw pre-copy baseline runs without the disk: it is a baseline
    /// for the memory migration, which ends before the storage copy starts.
    pub fn demo_options(&self, reduction: bool) -> DemoOptions {
        DemoOptions {
            link: self.link.link(),
            mem_bytes: self.mem_bytes,
            mix: self.mix,
            workload: self.workload,
            working_set_pages: self.working_set_pages,
            disk_bytes: if reduction { self.disk_bytes } else { None },
            seed: self.seed,
            reduction,
            warm_clone: false,
            round_trip: false,
            ..DemoOptions::default()
        }
    }
}

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Set {
    /// Three 64 MiB scenarios (what CI runs).
    Quick,
    /// The sweeps the report's plots need, 128 MiB guests (22 scenarios).
    Report,
    /// Every link with the moderate busy guest, and every guest × mix at
    /// two reference links: 67 scenarios, 128 MiB guests, about 40 minutes
    /// on 2 cores.
    Full,
}

impl Set {
    pub fn parse(s: &str) -> Option<Set> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quick" => Some(Set::Quick),
            "report" => Some(Set::Report),
            "full" => Some(Set::Full),
            _ => None,
        }
    }

    /// The scenarios of this set, deduplicated, in run order.
    pub fn scenarios(self) -> Vec<Scenario> {
        use GuestWorkload::*;
        use MemoryMix::*;
        const MEM: u64 = 128 << 20;
        let mut v = Vec::new();
        match self {
            Set::Quick => v.extend(quick()),
            Set::Report => {
                // RTT sweep on a clean 250 Mbit/s link, rate sweep at 100 ms.
                for rtt in RTTS_MS {
                    v.push(Scenario::new(
                        LinkSpec::new(rtt, 250, Loss::Clean),
                        Moderate,
                        Busy,
                        MEM,
                    ));
                }
                for rate in RATES_MBIT {
                    v.push(Scenario::new(
                        LinkSpec::new(100, rate, Loss::Clean),
                        Moderate,
                        Busy,
                        MEM,
                    ));
                }
                // Loss at the reference link.
                for loss in [Loss::Random01, Loss::Bursty1] {
                    v.push(Scenario::new(
                        LinkSpec::new(100, 250, loss),
                        Moderate,
                        Busy,
                        MEM,
                    ));
                }
                v.extend(guest_sweep(LinkSpec::new(100, 250, Loss::Clean), MEM));
                // The hardest corner of the matrix: the slowest rate at
                // the longest RTT with bursty loss, with both
                // write-heavy guests (one word per write, and whole pages
                // that defeat deltas).
                for w in [WriteHeavy, WriteHeavyPages] {
                    v.push(Scenario::new(
                        LinkSpec::new(150, 100, Loss::Bursty1),
                        w,
                        Busy,
                        MEM,
                    ));
                }
            }
            Set::Full => {
                for link in LinkSpec::all() {
                    v.push(Scenario::new(link, Moderate, Busy, MEM));
                }
                v.extend(guest_sweep(LinkSpec::new(50, 250, Loss::Clean), MEM));
                v.extend(guest_sweep(LinkSpec::new(150, 100, Loss::Bursty1), MEM));
            }
        }
        let mut seen = std::collections::HashSet::new();
        v.retain(|s| seen.insert(s.slug()));
        v
    }
}

/// Every workload × mix at `link`.
fn guest_sweep(link: LinkSpec, mem: u64) -> Vec<Scenario> {
    let mut v = Vec::new();
    for w in [
        GuestWorkload::Idle,
        GuestWorkload::Moderate,
        GuestWorkload::WriteHeavy,
        GuestWorkload::WriteHeavyPages,
    ] {
        for m in [MemoryMix::Fresh, MemoryMix::Busy, MemoryMix::Incompressible] {
            v.push(Scenario::new(link, w, m, mem));
        }
    }
    v
}

/// The CI subset: small guests, each a different stress.
pub fn quick() -> Vec<Scenario> {
    const MEM: u64 = 64 << 20;
    vec![
        Scenario::new(
            LinkSpec::new(20, 250, Loss::Clean),
            GuestWorkload::Moderate,
            MemoryMix::Busy,
            MEM,
        ),
        Scenario::new(
            LinkSpec::new(50, 100, Loss::Bursty1),
            GuestWorkload::Moderate,
            MemoryMix::Busy,
            MEM,
        ),
        // Whole-page writes at twice the link rate: neither deltas nor
        // zstd shrink the re-sent pages, so wanmig, like raw pre-copy,
        // converges only by throttling the guest or stopping early.
        Scenario::new(
            LinkSpec::new(20, 100, Loss::Clean),
            GuestWorkload::WriteHeavyPages,
            MemoryMix::Busy,
            MEM,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_has_every_link_once_and_the_sets_are_unique() {
        let links = LinkSpec::all();
        assert_eq!(links.len(), 45);
        let slugs: std::collections::HashSet<_> = links.iter().map(|l| l.slug()).collect();
        assert_eq!(slugs.len(), 45);
        let full = Set::Full.scenarios();
        // 45 links, plus 2 × 12 guests minus the moderate busy ones
        // already in the link sweep.
        assert_eq!(full.len(), 45 + 2 * 11);
        assert_eq!(
            full.iter()
                .filter(|s| s.workload == GuestWorkload::WriteHeavyPages)
                .count(),
            2 * 3
        );
        assert_eq!(Set::Report.scenarios().len(), 22);
        assert_eq!(Set::Quick.scenarios().len(), 3);
        assert!(
            quick()
                .iter()
                .any(|s| s.workload == GuestWorkload::WriteHeavyPages),
            "CI runs the guest whose page writes defeat deltas"
        );
        assert_eq!(Set::parse("FULL"), Some(Set::Full));
        assert_eq!(Set::parse("everything"), None);
    }

    #[test]
    fn lossy_links_have_jitter_and_bursty_ones_a_burst_model() {
        let s = Scenario::new(
            LinkSpec::new(100, 250, Loss::Bursty1),
            GuestWorkload::Moderate,
            MemoryMix::Busy,
            64 << 20,
        );
        let o = s.demo_options(true);
        assert_eq!(o.link.forward.jitter, Duration::from_micros(2500));
        assert_eq!(
            o.link.forward.loss,
            LossModel::Bursty {
                mean: 0.01,
                burst: BURST_PACKETS
            }
        );
        assert_eq!(o.link.reverse, o.link.forward);
        assert!(!s.demo_options(false).reduction);
        assert_eq!(s.demo_options(true).disk_bytes, Some(DISK_BYTES));
        assert_eq!(
            s.demo_options(false).disk_bytes,
            None,
            "raw runs have no disk"
        );
        assert_eq!(s.clone().without_disk().demo_options(true).disk_bytes, None);
        assert!(quick().iter().all(|s| s.disk_bytes.is_some()));
        assert_eq!(
            LinkSpec::new(100, 250, Loss::Clean).jitter(),
            Duration::ZERO
        );
    }
}
