//! The demo guest's shape: which memory mix its image holds
//! ([`MemoryMix`]), how hard it dirties memory ([`GuestWorkload`]), and the
//! VM configuration, memory image and workload model built from them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use wanmig_codec::mix::{self, MixSpec, PageKind};
use wanmig_migration::machine::{
    DiskConfig, MemoryWorkloadConfig, NetConfig, PageWrites, VmConfig,
};
use wanmig_vmm::workload_model::HostWorkingSet;

/// What the guest's memory holds when the migration starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryMix {
    /// A freshly booted VM: 90% zero pages, 4% shared pages, 4% text,
    /// 2% sparse pointer pages, nothing incompressible.
    Fresh,
    /// A long-running VM: the documented demo mix (`MixSpec::demo`).
    #[default]
    Busy,
    /// Every page incompressible (encrypted or already-compressed data).
    Incompressible,
}

impl MemoryMix {
    pub fn spec(self) -> MixSpec {
        match self {
            MemoryMix::Fresh => MixSpec {
                zero: 0.90,
                duplicate: 0.04,
                text: 0.04,
                sparse: 0.02,
                incompressible: 0.0,
                duplicate_pool: 64,
            },
            MemoryMix::Busy => MixSpec::demo(),
            MemoryMix::Incompressible => MixSpec::only(PageKind::Incompressible),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            MemoryMix::Fresh => "fresh",
            MemoryMix::Busy => "busy",
            MemoryMix::Incompressible => "incompressible",
        }
    }
}

/// How fast the guest dirties memory while it migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuestWorkload {
    /// Barely touches memory (128 KiB/s).
    Idle,
    /// Dirties memory at the demo's `--dirty-rate` (5 MiB/s by default).
    #[default]
    Moderate,
    /// Dirties memory faster than the link carries it (twice the link rate,
    /// at least 16 MiB/s), over a working set larger than the downtime
    /// budget can send: plain pre-copy cannot converge, only auto-converge
    /// (throttling the guest) or a smart stop can. (Each page write changes
    /// one word, so wanmig's deltas of re-dirtied pages may still converge
    /// normally.)
    WriteHeavy,
    /// Like write-heavy, but each page write fills the whole page with
    /// fresh pseudo-random words: re-dirtied pages defeat deltas and
    /// compression, so wanmig too must throttle the guest or stop early.
    WriteHeavyPages,
}

/// The idle guest's dirty rate.
const IDLE_BYTES_PER_SEC: u64 = 128 << 10;

impl GuestWorkload {
    /// Bytes per second the guest dirties, given the moderate rate and the
    /// link rate.
    pub fn dirty_bytes_per_sec(self, moderate: u64, link_bps: u64) -> u64 {
        match self {
            GuestWorkload::Idle => IDLE_BYTES_PER_SEC,
            GuestWorkload::Moderate => moderate,
            GuestWorkload::WriteHeavy | GuestWorkload::WriteHeavyPages => {
                (link_bps / 4).max(16 << 20)
            }
        }
    }

    /// How each page write changes the page.
    pub fn page_writes(self) -> PageWrites {
        match self {
            GuestWorkload::WriteHeavyPages => PageWrites::Full,
            _ => PageWrites::Word,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            GuestWorkload::Idle => "idle",
            GuestWorkload::Moderate => "moderate",
            GuestWorkload::WriteHeavy => "write-heavy",
            GuestWorkload::WriteHeavyPages => "write-heavy-pages",
        }
    }
}

/// Most pages the memory workload writes per iteration; the iteration
/// period sets the dirty rate.
const PAGES_PER_ITERATION: u64 = 32;

/// The guest as the demo configures it.
#[derive(Debug, Clone)]
pub struct GuestShape {
    pub mem_bytes: u64,
    pub mix: MemoryMix,
    pub seed: u64,
    pub dirty_bytes_per_sec: u64,
    pub working_set_pages: u64,
    pub page_writes: PageWrites,
}

impl GuestShape {
    /// Writes the guest's memory image (the mix) to `path`.
    pub fn write_memory_image(&self, path: &Path) -> Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        let spec = self.mix.spec();
        let chunk_pages = 4096u64;
        let mut buf = vec![0u8; (chunk_pages * 4096) as usize];
        let pages = self.mem_bytes / 4096;
        let mut first = 0u64;
        while first < pages {
            let n = chunk_pages.min(pages - first);
            let part = &mut buf[..(n * 4096) as usize];
            mix::fill(self.seed, first, &spec, part);
            f.write_all(part)
                .with_context(|| format!("writing {}", path.display()))?;
            first += n;
        }
        f.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn memory_workload(&self) -> MemoryWorkloadConfig {
        let pages_per_sec = (self.dirty_bytes_per_sec / 4096).max(1);
        // At least ~8 iterations a second, so a slow (idle) guest still
        // reports the samples the demo checks within a few seconds.
        let per_iteration = (pages_per_sec / 8).clamp(1, PAGES_PER_ITERATION);
        let period = Duration::from_secs_f64(per_iteration as f64 / pages_per_sec as f64);
        MemoryWorkloadConfig {
            seed: self.seed,
            working_set_pages: self.working_set_pages,
            pages_per_iteration: per_iteration,
            iterations: 0,
            iteration_period: period,
            page_writes: self.page_writes,
        }
    }

    pub fn vm_config(
        &self,
        mem_image: &Path,
        net: NetConfig,
        disk: Option<DiskConfig>,
    ) -> VmConfig {
        VmConfig {
            mem_size: self.mem_bytes,
            memory_workload: Some(self.memory_workload()),
            net: Some(net),
            disk,
            mem_image: Some(PathBuf::from(mem_image)),
        }
    }

    /// The working set as the guest finds it: the mix from `WORKLOAD_BASE`
    /// on (the preloaded image covers it).
    pub fn initial_working_set(&self) -> HostWorkingSet {
        let base_page = wanmig_guest_abi::WORKLOAD_BASE / 4096;
        let mut bytes = vec![0u8; (self.working_set_pages * 4096) as usize];
        mix::fill(self.seed, base_page, &self.mix.spec(), &mut bytes);
        HostWorkingSet::from_bytes(self.working_set_pages, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mix_is_a_valid_spec_and_they_differ() {
        let specs: Vec<MixSpec> = [MemoryMix::Fresh, MemoryMix::Busy, MemoryMix::Incompressible]
            .iter()
            .map(|m| m.spec())
            .collect();
        for s in &specs {
            s.validate().unwrap();
        }
        assert!(specs[0].zero > specs[1].zero);
        assert_eq!(specs[2].incompressible, 1.0);
    }

    #[test]
    fn an_idle_guest_still_reports_several_iterations_a_second() {
        let shape = |rate| GuestShape {
            mem_bytes: 64 << 20,
            mix: MemoryMix::Busy,
            seed: 1,
            dirty_bytes_per_sec: rate,
            working_set_pages: 1024,
            page_writes: PageWrites::Word,
        };
        for rate in [128 << 10, 5 << 20, 64 << 20] {
            let w = shape(rate).memory_workload();
            let per_sec = w.pages_per_iteration as f64 / w.iteration_period.as_secs_f64();
            assert!(
                (per_sec * 4096.0 / rate as f64 - 1.0).abs() < 0.01,
                "{rate}: {w:?}"
            );
            assert!(
                w.iteration_period <= Duration::from_millis(130),
                "{rate}: {w:?}"
            );
        }
        assert_eq!(shape(5 << 20).memory_workload().pages_per_iteration, 32);
    }

    #[test]
    fn write_heavy_outruns_the_link_and_idle_barely_writes() {
        let link = 100_000_000;
        let heavy = GuestWorkload::WriteHeavy.dirty_bytes_per_sec(5 << 20, link);
        assert!(heavy * 8 > link, "{heavy} B/s does not outrun {link} bit/s");
        assert_eq!(
            GuestWorkload::Moderate.dirty_bytes_per_sec(5 << 20, link),
            5 << 20
        );
        assert!(GuestWorkload::Idle.dirty_bytes_per_sec(5 << 20, link) < 5 << 20);
    }

    #[test]
    fn write_heavy_pages_writes_whole_pages_at_the_write_heavy_rate() {
        let link = 250_000_000;
        assert_eq!(
            GuestWorkload::WriteHeavyPages.dirty_bytes_per_sec(5 << 20, link),
            GuestWorkload::WriteHeavy.dirty_bytes_per_sec(5 << 20, link)
        );
        assert_eq!(
            GuestWorkload::WriteHeavyPages.page_writes(),
            PageWrites::Full
        );
        for w in [
            GuestWorkload::Idle,
            GuestWorkload::Moderate,
            GuestWorkload::WriteHeavy,
        ] {
            assert_eq!(w.page_writes(), PageWrites::Word, "{w:?}");
        }
        let shape = GuestShape {
            mem_bytes: 64 << 20,
            mix: MemoryMix::Busy,
            seed: 1,
            dirty_bytes_per_sec: 25_000_000,
            working_set_pages: 1024,
            page_writes: GuestWorkload::WriteHeavyPages.page_writes(),
        };
        assert_eq!(shape.memory_workload().page_writes, PageWrites::Full);
    }
}
