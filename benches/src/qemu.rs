//! The QEMU baseline that wanmig's figures are compared with: QEMU's own
//! live migration of a VM whose RAM holds the same memory image as wanmig's
//! guest, over the same emulated link, with the bytes on the wire counted
//! at the link's interfaces.
//!
//! How it runs (all of it real: two QEMU processes, kernel TCP, a netem TUN
//! link between two network namespaces; needs root and
//! `qemu-system-x86_64`):
//!
//! - **Link.** Two namespaces joined by a [`TunLink`] whose two directions
//!   both get the scenario's delay (RTT/2), jitter, loss and rate (a queue
//!   of one bandwidth-delay product, as [`LinkParams::wan`]). Each namespace
//!   lets TCP receive windows grow to 32 MiB so they never limit the path;
//!   send buffers stay at the kernel's default (at most 4 MiB per socket:
//!   four multifd sockets hold several times the demo path's 3 MB BDP).
//!   Larger send buffers hurt QEMU: its bandwidth estimate counts bytes
//!   parked in socket buffers as sent, so it stops the guest with more
//!   still to cross and the downtime grows. The congestion controller is
//!   the kernel's default (named in the note).
//! - **QEMU.** Debian's QEMU, TCG (`-accel tcg`, works without KVM and is
//!   what a stock x86 package does everywhere), `-nodefaults`, no disk, no
//!   display, one vCPU, controlled over QMP on a unix socket ([`qmp`]). The
//!   destination starts with `-incoming defer`; both sides get the
//!   `multifd` capability, `multifd-compression=zstd` (QEMU's default
//!   level 1) and `multifd-channels` (4 by default: more parallel TCP flows
//!   fill a long fat pipe better); the source gets `downtime-limit` = the
//!   scenario's downtime and `max-bandwidth` = effectively unlimited (QEMU
//!   applies it to uncompressed bytes, so capping it at the link rate would
//!   throttle below what compression lets through). The source then runs
//!   `migrate tcp:…` and `query-migrate` is polled every 100 ms until it
//!   completes or fails, or the scenario's timeout passes (then
//!   `migrate_cancel`, `ok = false`).
//! - **Memory image.** Guest RAM is a private mapping of a file holding the
//!   codec's mix (`-object memory-backend-file,share=off`,
//!   `-machine memory-backend=…`): page `i` of guest RAM is page `i` of the
//!   mix with the same spec and seed — exactly what wanmig's shim preloads
//!   with `--mem-image`. [`QemuScenario::image`] maps a given file instead
//!   (a real guest's memory from the corpus). We chose that over `-device loader`: a loader blob
//!   may not cover the legacy ROM window at 0xA0000–0xFFFFF and the BIOS,
//!   so it could not place the whole image, and the file mapping costs no
//!   copy. No SeaBIOS runs (see the guest), so nothing else writes RAM.
//! - **Guest.** A 64 KiB firmware image ([`guest`], source in
//!   `testenv/qemu-guest/dirty.asm`) given with `-bios`: it enters 32-bit
//!   protected mode, takes 1000 PIT interrupts per second and on each one
//!   writes one word into pseudo-random pages of a working set at 8 MiB
//!   (wanmig's `WORKLOAD_BASE`, with the demo's 8192 pages by default) at
//!   `dirty_bytes_per_sec / 4096` pages per second; with a rate of 0 it
//!   halts for good (an idle guest). Before migrating, QEMU's own
//!   `calc-dirty-rate` (page sampling, 1 s; whole MiB/s) measures the rate
//!   the guest actually dirties at, and the result reports it.
//! - **Figures.** `total_ms` runs from `migrate` to the destination's
//!   `RESUME` event, `downtime_ms` from the source's `STOP` event to it
//!   (QMP event timestamps; both QEMUs share the host clock). QEMU's own
//!   `total-time` and `downtime` are reported beside them but are the
//!   source's view: pre-copy without a return path calls the migration
//!   complete once the last bytes sit in the source's socket buffers, which
//!   on a long fat link is well before they arrive. `wire_bytes` is the
//!   growth of the destination-side TUN device's `rx_bytes` (IP packets
//!   that crossed A → B: the migration stream with its TCP/IP headers),
//!   `sent_bytes` that of the source side's `tx_bytes` (also counting
//!   packets the emulated link dropped, which TCP sent again),
//!   `wire_bytes_reverse` the other direction (ACKs);
//!   `qemu_reported_bytes` is QEMU's `ram.transferred`, which counts pages
//!   at their uncompressed size. After the move the destination must be
//!   running and a spot check reads 16 pages outside the working set back
//!   from the destination (`pmemsave`) and compares them with the mix (or
//!   the image file).
//!
//! [`multifd_model`] computes offline what the same migration sends for a
//! memory image, without QEMU or a link.
//!
//! [`run_baseline`] is async (the TUN link runs on tokio; QEMU control runs
//! on a blocking thread); [`run_baseline_blocking`] wraps it in a runtime of
//! its own for callers outside one.

pub use wanmig_testenv::qemu::{guest, qmp};
#[path = "qemu/multifd_model.rs"]
pub mod multifd_model;
#[path = "qemu/status.rs"]
pub mod status;
#[path = "qemu/vm.rs"]
mod vm;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wanmig_codec::mix::{self, MixSpec};
use wanmig_netem::tun::{TunLink, TunLinkConfig, TunLinkHandle};
use wanmig_netem::{JitterDist, LinkParams, LossModel};
use wanmig_testenv::Netns;

use guest::DirtyParams;
use status::{MigrateStatus, Phase};
use vm::{QemuVm, Role};

const PAGE: u64 = 4096;
const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 79, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 79, 2);
const MIGRATION_PORT: u16 = 4444;
/// Pages compared after the move (see the module comment).
const SPOT_CHECK_PAGES: u64 = 16;

/// One QEMU migration to measure: the guest and the link.
#[derive(Debug, Clone, Serialize)]
pub struct QemuScenario {
    /// The memory mix in guest RAM (with `seed`, as the codec generates it).
    pub mix: MixSpec,
    /// Guest RAM from this file instead of `mix` (its size must be
    /// `mem_bytes`; QEMU maps it privately, so it is never written).
    pub image: Option<PathBuf>,
    pub seed: u64,
    /// Guest RAM; a whole number of MiB, at least 16 MiB.
    pub mem_bytes: u64,
    pub rtt: Duration,
    /// Link rate in bit/s (each direction); 0 = unlimited.
    pub rate_bps: u64,
    /// Random loss probability per packet, each direction (ignored when
    /// `loss_model` is set).
    pub loss: f64,
    /// Bursty loss (e.g. [`LossModel::gemodel`]) instead of `loss`.
    pub loss_model: Option<LossModel>,
    /// Uniform delay variation (± this) on each direction.
    pub jitter: Duration,
    /// Bytes per second the guest dirties (0 = idle guest).
    pub dirty_bytes_per_sec: u64,
    /// Pages the guest dirties from (at 8 MiB).
    pub working_set_pages: u64,
    /// QEMU's `downtime-limit`.
    pub downtime: Duration,
    /// QEMU's `multifd-channels`.
    pub multifd_channels: u8,
    /// Give up (cancel, `ok = false`) after this long; `None` = 60 s plus
    /// four times the guest's memory at the link rate.
    pub timeout: Option<Duration>,
}

impl QemuScenario {
    /// The demo's scenario: 512 MiB of the demo mix, 100 ms RTT,
    /// 250 Mbit/s, 5 MiB/s dirtying over 8192 pages, 300 ms downtime.
    pub fn demo() -> Self {
        QemuScenario {
            mix: MixSpec::demo(),
            image: None,
            seed: 0x00de_0001,
            mem_bytes: 512 << 20,
            rtt: Duration::from_millis(100),
            rate_bps: 250_000_000,
            loss: 0.0,
            loss_model: None,
            jitter: Duration::ZERO,
            dirty_bytes_per_sec: 5 << 20,
            working_set_pages: 8192,
            downtime: Duration::from_millis(300),
            multifd_channels: 4,
            timeout: None,
        }
    }

    /// One direction of the emulated link.
    pub fn link(&self) -> LinkParams {
        let mut p = LinkParams::wan(self.rtt, self.rate_bps);
        if !self.jitter.is_zero() {
            p = p.with_jitter(self.jitter, JitterDist::Uniform);
        }
        match &self.loss_model {
            Some(m) => p.with_loss(*m),
            None if self.loss > 0.0 => p.with_random_loss(self.loss),
            None => p,
        }
    }

    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or_else(|| {
            let at_rate = if self.rate_bps == 0 {
                0.0
            } else {
                self.mem_bytes as f64 * 8.0 / self.rate_bps as f64
            };
            Duration::from_secs(60) + Duration::from_secs_f64(4.0 * at_rate)
        })
    }

    fn dirty_params(&self) -> DirtyParams {
        let pages_per_sec = (self.dirty_bytes_per_sec / PAGE) as u32;
        if pages_per_sec == 0 {
            return DirtyParams::idle();
        }
        DirtyParams {
            pages_per_sec,
            ws_base: guest::WORKING_SET_BASE as u32,
            ws_pages: self.working_set_pages as u32,
            seed: self.seed as u32 | 1,
        }
    }

    /// Checks the knobs; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        self.mix
            .validate()
            .context("scenario.mix is not a valid memory mix")?;
        ensure!(
            self.mem_bytes >= 16 << 20 && self.mem_bytes % (1 << 20) == 0,
            "scenario.mem_bytes is {}, must be a whole number of MiB, at least 16 MiB",
            self.mem_bytes
        );
        ensure!(
            self.mem_bytes <= 3 << 30,
            "scenario.mem_bytes is {}, must be at most 3 GiB (the guest addresses RAM below 4 GiB)",
            self.mem_bytes
        );
        ensure!(
            (1..=255).contains(&self.multifd_channels),
            "scenario.multifd_channels must be 1..=255"
        );
        ensure!(
            self.dirty_bytes_per_sec / PAGE <= u32::MAX as u64,
            "scenario.dirty_bytes_per_sec is too large"
        );
        if self.dirty_bytes_per_sec >= PAGE {
            let end = guest::WORKING_SET_BASE + self.working_set_pages * PAGE;
            ensure!(
                self.working_set_pages >= 1 && end <= self.mem_bytes,
                "scenario.working_set_pages ({}) must be at least 1 and fit in guest memory above 8 MiB",
                self.working_set_pages
            );
        }
        self.link()
            .validate()
            .context("scenario's link parameters (rtt, rate_bps, loss, jitter) are invalid")?;
        if let Some(image) = &self.image {
            let len = std::fs::metadata(image)
                .with_context(|| format!("scenario.image: cannot read {}", image.display()))?
                .len();
            ensure!(
                len == self.mem_bytes,
                "scenario.image {} holds {len} bytes, scenario.mem_bytes says {}",
                image.display(),
                self.mem_bytes
            );
        }
        Ok(())
    }
}

impl Default for QemuScenario {
    fn default() -> Self {
        Self::demo()
    }
}

/// What one QEMU migration did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QemuResult {
    /// From `migrate` to the guest running at the destination (its RESUME
    /// event); to the end of polling if it never resumed.
    pub total_ms: u64,
    /// From the source's STOP event to the destination's RESUME event,
    /// once completed.
    pub downtime_ms: Option<f64>,
    /// QEMU's own `total-time` and `downtime`: the source's view, which
    /// ends when the last bytes are written into its sockets, before they
    /// have crossed the link (shorter than the real figures on a WAN).
    pub qemu_total_ms: Option<u64>,
    pub qemu_downtime_ms: Option<u64>,
    /// IP bytes that crossed the link from the source's namespace to the
    /// destination's (A → B, received at B's interface).
    pub wire_bytes: u64,
    /// IP bytes the source's namespace sent into the link (A's interface):
    /// `wire_bytes` plus what the emulated link dropped (random loss, or a
    /// full bottleneck queue), whose data TCP then sent again.
    pub sent_bytes: u64,
    /// IP bytes that crossed back (B → A, mostly ACKs).
    pub wire_bytes_reverse: u64,
    /// Packets the emulated link dropped A → B (loss and queue overflow).
    pub link_drops: u64,
    /// QEMU's `ram.transferred`: pages at their uncompressed size.
    pub qemu_reported_bytes: u64,
    /// Completed, destination running, spot check passed.
    pub ok: bool,
    /// How it ran and, when not ok, why.
    pub note: String,
    /// QEMU's final `status`.
    pub status: String,
    pub mem_bytes: u64,
    /// Pre-copy passes (`dirty-sync-count`).
    pub rounds: u64,
    pub zero_pages: u64,
    pub normal_pages: u64,
    /// The guest's dirty rate as QEMU measured it before the move (MiB/s);
    /// `None` for an idle guest.
    pub guest_dirty_mib_s: Option<f64>,
    pub memory_spot_check: bool,
    /// QEMU's run state at each end afterwards: "postmigrate" / "running"
    /// after a move; "running" / "" (not asked) when it did not complete.
    pub source_status: String,
    pub destination_status: String,
}

/// The `qemu-system-x86_64` to use, or why there is none.
pub fn available() -> Result<PathBuf, String> {
    wanmig_testenv::qemu::binary()
}

/// Runs [`run_baseline`] on a runtime of its own (do not call from inside a
/// tokio runtime).
pub fn run_baseline_blocking(s: &QemuScenario) -> Result<QemuResult> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building a tokio runtime for the QEMU baseline")?
        .block_on(run_baseline(s))
}

/// Migrates a QEMU guest holding `s`'s memory image over `s`'s link and
/// measures it. Needs root (namespaces, TUN) and QEMU; call inside a tokio
/// runtime (multi-threaded: the link's tasks run while QEMU is driven from
/// a blocking thread).
pub async fn run_baseline(s: &QemuScenario) -> Result<QemuResult> {
    s.validate()?;
    let qemu = available().map_err(anyhow::Error::msg)?;
    wanmig_testenv::netns_status().map_err(|why| anyhow::anyhow!("QEMU baseline: {why}"))?;

    let dir = tempfile::Builder::new()
        .prefix("wanmig-qemu-")
        .tempdir()
        .context("creating a scratch directory")?;
    let files = {
        let (s, dir) = (s.clone(), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || write_inputs(&s, &dir))
            .await
            .context("the image writer panicked")??
    };

    let ns_a = Netns::create("wmqa").context("creating namespace A")?;
    let ns_b = Netns::create("wmqb").context("creating namespace B")?;
    // Room for a bandwidth-delay product of TCP receive window. Newer
    // kernels refuse `net.core.*` inside a namespace ("Invalid argument");
    // QEMU then runs with the kernel's defaults, which may cap its rate on
    // long links, so say so rather than fail the run.
    for ns in [&ns_a, &ns_b] {
        for kv in [
            "net.ipv4.tcp_rmem=4096 131072 33554432",
            "net.core.rmem_max=33554432",
        ] {
            let o = ns.run(&["sysctl", "-q", "-w", kv]);
            if !o.status.success() {
                eprintln!(
                    "warning: setting {kv} in {} was refused ({}); QEMU's TCP keeps the kernel's default window",
                    ns.name(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
    }
    let link = TunLink::start(TunLinkConfig {
        ns_a: ns_a.name().to_string(),
        ns_b: ns_b.name().to_string(),
        addr_a: ADDR_A,
        addr_b: ADDR_B,
        mtu: 1500,
        forward: s.link(),
        reverse: s.link(),
        seed: s.seed ^ 0x9e3e,
    })
    .await
    .context("starting the emulated link")?;

    let outcome = {
        let run = Run {
            s: s.clone(),
            qemu,
            files,
            dir: dir.path().to_path_buf(),
            devs: (link.devices().0.to_string(), link.devices().1.to_string()),
            link: link.clone(),
            ns: (ns_a.name().to_string(), ns_b.name().to_string()),
        };
        tokio::task::spawn_blocking(move || run.migrate())
            .await
            .context("the QEMU driver thread panicked")
    };
    link.shutdown().await;
    drop((ns_a, ns_b));
    outcome?
}

struct Inputs {
    image: PathBuf,
    firmware: PathBuf,
}

/// Writes the memory image (the mix, page 0 on; unless the scenario names
/// an image file) and the firmware.
fn write_inputs(s: &QemuScenario, dir: &Path) -> Result<Inputs> {
    let firmware = dir.join("dirty.bin");
    std::fs::write(&firmware, guest::firmware(&s.dirty_params()))
        .with_context(|| format!("writing {}", firmware.display()))?;
    if let Some(image) = &s.image {
        return Ok(Inputs {
            image: image.clone(),
            firmware,
        });
    }
    let image = dir.join("memory.img");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?,
    );
    let chunk = 2048u64;
    let mut buf = vec![0u8; (chunk * PAGE) as usize];
    let pages = s.mem_bytes / PAGE;
    let mut first = 0;
    while first < pages {
        let n = chunk.min(pages - first);
        let part = &mut buf[..(n * PAGE) as usize];
        mix::fill(s.seed, first, &s.mix, part);
        f.write_all(part)
            .with_context(|| format!("writing {}", image.display()))?;
        first += n;
    }
    f.flush()
        .with_context(|| format!("writing {}", image.display()))?;
    Ok(Inputs { image, firmware })
}

/// Everything the blocking QEMU driver needs.
struct Run {
    s: QemuScenario,
    qemu: PathBuf,
    files: Inputs,
    dir: PathBuf,
    /// TUN device names in namespace A and B.
    devs: (String, String),
    link: TunLinkHandle,
    ns: (String, String),
}

/// Counter `stat` (`tx_bytes`, `rx_bytes`) of `dev` inside namespace `ns`.
fn if_counter(ns: &str, dev: &str, stat: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/{stat}");
    let o = wanmig_testenv::run(&["ip", "netns", "exec", ns, "cat", &path]);
    ensure!(
        o.status.success(),
        "reading {path} in {ns}: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    let text = String::from_utf8_lossy(&o.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("{path} in {ns} holds {text:?}, not a byte count"))
}

fn sysctl(ns: &str, key: &str) -> String {
    let o = wanmig_testenv::run(&["ip", "netns", "exec", ns, "sysctl", "-n", key]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The link's counters at one moment.
struct Counters {
    a_tx: u64,
    a_rx: u64,
    b_rx: u64,
    drops: u64,
}

impl Run {
    fn counters(&self) -> Result<Counters> {
        let (ns_a, ns_b) = (&self.ns.0, &self.ns.1);
        let (dev_a, dev_b) = (&self.devs.0, &self.devs.1);
        Ok(Counters {
            a_tx: if_counter(ns_a, dev_a, "tx_bytes")?,
            a_rx: if_counter(ns_a, dev_a, "rx_bytes")?,
            b_rx: if_counter(ns_b, dev_b, "rx_bytes")?,
            drops: self.link.stats().forward.dropped(),
        })
    }

    fn migrate(self) -> Result<QemuResult> {
        let s = &self.s;
        let mib = s.mem_bytes >> 20;
        let dst = QemuVm::start(
            &self.qemu,
            &self.ns.1,
            &self.dir,
            Role::Destination,
            mib,
            &self.files.firmware,
        )?;
        let src = QemuVm::start(
            &self.qemu,
            &self.ns.0,
            &self.dir,
            Role::Source {
                image: &self.files.image,
            },
            mib,
            &self.files.firmware,
        )?;
        self.drive(dst, src)
    }

    /// Runs the migration; both QEMUs are killed (by pid) when they drop
    /// at the end. An error carries what QEMU printed.
    fn drive(&self, dst: QemuVm, src: QemuVm) -> Result<QemuResult> {
        self.steps(&dst, &src)
            .with_context(|| format!("{}; {}", src.log_tail(), dst.log_tail()))
    }

    fn steps(&self, dst: &QemuVm, src: &QemuVm) -> Result<QemuResult> {
        let s = &self.s;
        let (mut dq, mut sq) = (dst.qmp()?, src.qmp()?);

        let channels = u64::from(s.multifd_channels);
        for q in [&mut dq, &mut sq] {
            q.execute(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "multifd", "state": true}]}),
            )?;
            q.execute(
                "migrate-set-parameters",
                json!({"multifd-channels": channels, "multifd-compression": "zstd"}),
            )?;
        }
        sq.execute(
            "migrate-set-parameters",
            json!({
                "downtime-limit": s.downtime.as_millis() as u64,
                // Bytes per second of uncompressed pages: "unlimited".
                "max-bandwidth": 1u64 << 40,
            }),
        )?;
        let uri = format!("tcp:{ADDR_B}:{MIGRATION_PORT}");
        dq.execute("migrate-incoming", json!({ "uri": uri }))?;

        let dirty = s.dirty_params();
        let guest_dirty_mib_s = if dirty.pages_per_sec > 0 {
            Some(measure_dirty_rate(&mut sq)?)
        } else {
            None
        };

        let before = self.counters()?;
        let started = Instant::now();
        let started_us = unix_us();
        sq.execute("migrate", json!({ "uri": uri }))?;
        let deadline = started + s.timeout();
        let (last, timed_out) = loop {
            let st = MigrateStatus::from_json(&sq.execute("query-migrate", json!({}))?);
            match st.phase() {
                Phase::Completed | Phase::Failed => break (st, false),
                Phase::Running if Instant::now() >= deadline => {
                    sq.execute("migrate_cancel", json!({}))?;
                    let mut fin = wait_cancelled(&mut sq, st.clone())?;
                    fin.keep_progress_from(&st);
                    break (fin, true);
                }
                Phase::Running => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let completed = last.phase() == Phase::Completed;

        // The source calls it complete once the last bytes are in its
        // sockets; the guest runs again when the destination has loaded
        // them and emits RESUME.
        let mut dst_status = String::new();
        if completed {
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let v = dq.execute("query-status", json!({}))?;
                dst_status = v["status"].as_str().unwrap_or("?").to_string();
                let resumed = dq.last_event("RESUME").is_some();
                if (dst_status == "running" && resumed) || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let wall_ms = started.elapsed().as_millis() as u64;
        let stopped_us = sq.last_event("STOP").and_then(|e| e.at_us);
        let resumed_us = dq.last_event("RESUME").and_then(|e| e.at_us);
        let after = self.counters()?;
        let src_status = sq.execute("query-status", json!({}))?["status"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let memory_spot_check = if completed {
            spot_check(s, &mut dq, &self.dir)?
        } else {
            false
        };

        let ok = completed && dst_status == "running" && memory_spot_check;
        let mut note = format!(
            "QEMU {} TCG, 1 vCPU, multifd x{channels} zstd, downtime-limit {} ms, max-bandwidth unlimited; kernel TCP {} over the netem TUN link; {}",
            qemu_version(&self.qemu),
            s.downtime.as_millis(),
            sysctl(&self.ns.0, "net.ipv4.tcp_congestion_control"),
            match guest_dirty_mib_s {
                Some(r) => format!(
                    "guest dirties {} pages/s over {} pages at 8 MiB (QEMU's page sampling saw {r:.0} MiB/s of distinct pages)",
                    dirty.pages_per_sec, dirty.ws_pages
                ),
                None => "idle guest".to_string(),
            }
        );
        if timed_out && !completed {
            note += &format!(
                "; did not converge within {:?}, cancelled ({} bytes still to send)",
                s.timeout(),
                last.ram_remaining
            );
        } else if !completed {
            note += &format!(
                "; migration {}: {}",
                last.status,
                last.error.as_deref().unwrap_or("QEMU gave no reason")
            );
        } else if dst_status != "running" {
            note += &format!("; destination is {dst_status:?}, not running");
        } else if !memory_spot_check {
            note += "; destination memory differs from the image (spot check)";
        }
        Ok(QemuResult {
            total_ms: match resumed_us {
                Some(r) if completed => r.saturating_sub(started_us) / 1000,
                _ => wall_ms,
            },
            downtime_ms: match (stopped_us, resumed_us) {
                (Some(stop), Some(resume)) if completed => {
                    Some(resume.saturating_sub(stop) as f64 / 1000.0)
                }
                _ => None,
            },
            qemu_total_ms: last.total_time_ms,
            qemu_downtime_ms: last.downtime_ms,
            wire_bytes: after.b_rx.saturating_sub(before.b_rx),
            sent_bytes: after.a_tx.saturating_sub(before.a_tx),
            wire_bytes_reverse: after.a_rx.saturating_sub(before.a_rx),
            link_drops: after.drops.saturating_sub(before.drops),
            qemu_reported_bytes: last.ram_transferred,
            ok,
            note,
            status: last.status,
            mem_bytes: s.mem_bytes,
            rounds: last.dirty_sync_count,
            zero_pages: last.zero_pages,
            normal_pages: last.normal_pages,
            guest_dirty_mib_s,
            memory_spot_check,
            source_status: src_status,
            destination_status: dst_status,
        })
    }
}

/// Polls `query-migrate` after `migrate_cancel` until QEMU has wound the
/// migration down (up to 10 s); returns the last status seen.
fn wait_cancelled(q: &mut qmp::Qmp, mut last: MigrateStatus) -> Result<MigrateStatus> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        last = MigrateStatus::from_json(&q.execute("query-migrate", json!({}))?);
        if matches!(last.status.as_str(), "cancelled" | "failed" | "completed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(last)
}

/// Now, in microseconds since the Unix epoch (the clock of QMP timestamps).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn qemu_version(qemu: &Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(3)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// QEMU's measurement of how fast the guest dirties memory (MiB/s).
fn measure_dirty_rate(q: &mut qmp::Qmp) -> Result<f64> {
    q.execute(
        "calc-dirty-rate",
        // Page sampling (hashes of sampled pages, the most it allows per GiB):
        // the dirty-bitmap mode makes QEMU 7.2 under TCG exit.
        json!({"calc-time": 1, "sample-pages": 10000}),
    )?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v = q.execute("query-dirty-rate", json!({}))?;
        if v["status"] == "measured" {
            return v["dirty-rate"]
                .as_f64()
                .context("query-dirty-rate: no dirty-rate in a measured reply");
        }
        if Instant::now() >= until {
            bail!("QEMU's calc-dirty-rate did not finish in 10 s: {v}");
        }
    }
}

/// The pages the spot check reads back: spread over guest RAM, outside the
/// guest's stack page and working set.
fn spot_pages(s: &QemuScenario) -> Vec<u64> {
    let pages = s.mem_bytes / PAGE;
    let ws_start = guest::WORKING_SET_BASE / PAGE;
    let ws_end = (ws_start + s.working_set_pages).min(pages);
    // Above the first MiB (legacy ROM/VGA window), outside the working set.
    let free = [256..ws_start, ws_end..pages];
    let total: u64 = free.iter().map(|r| r.end - r.start).sum();
    (0..SPOT_CHECK_PAGES)
        .map(|k| {
            let mut off = total * k / SPOT_CHECK_PAGES + k % 7;
            for r in &free {
                let len = r.end - r.start;
                if off < len {
                    return r.start + off;
                }
                off -= len;
            }
            pages - 1
        })
        .collect()
}

/// Reads [`spot_pages`] back from the destination and compares them with
/// the mix or the image file.
fn spot_check(s: &QemuScenario, q: &mut qmp::Qmp, dir: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let image = match &s.image {
        Some(p) => {
            Some(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?)
        }
        None => None,
    };
    let mut want = [0u8; PAGE as usize];
    for p in spot_pages(s) {
        let file = dir.join(format!("page-{p}.bin"));
        q.execute(
            "pmemsave",
            json!({"val": p * PAGE, "size": PAGE, "filename": file.to_string_lossy()}),
        )?;
        let got = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        match &image {
            Some(f) => f
                .read_exact_at(&mut want, p * PAGE)
                .with_context(|| format!("reading page {p} of the memory image"))?,
            None => mix::fill_page(s.seed, p, &s.mix, &mut want),
        }
        if got != want {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_scenario_is_valid_and_builds_its_link() {
        let s = QemuScenario::demo();
        s.validate().unwrap();
        let l = s.link();
        assert_eq!(l.delay, Duration::from_millis(50));
        assert_eq!(l.rate_bps, Some(250_000_000));
        assert_eq!(l.loss, LossModel::None);
        let d = s.dirty_params();
        assert_eq!(d.pages_per_sec, 1280);
        assert_eq!(d.ws_pages, 8192);
        assert_eq!(u64::from(d.ws_base), 8 << 20);
    }

    #[test]
    fn loss_jitter_and_idle_guest_map_through() {
        let s = QemuScenario {
            loss: 0.01,
            jitter: Duration::from_millis(2),
            dirty_bytes_per_sec: 0,
            ..QemuScenario::demo()
        };
        assert_eq!(s.link().loss, LossModel::Random { p: 0.01 });
        assert_eq!(s.link().jitter, Duration::from_millis(2));
        assert_eq!(s.dirty_params(), DirtyParams::idle());
        let ge = LossModel::gemodel(0.001, Some(0.1), None, None);
        let b = QemuScenario {
            loss_model: Some(ge),
            ..s
        };
        assert_eq!(b.link().loss, ge);
    }

    #[test]
    fn validation_names_the_bad_key() {
        let bad = |s: QemuScenario| format!("{:#}", s.validate().unwrap_err());
        let e = bad(QemuScenario {
            mem_bytes: (64 << 20) + 5,
            ..QemuScenario::demo()
        });
        assert!(e.contains("mem_bytes"), "{e}");
        let e = bad(QemuScenario {
            mem_bytes: 16 << 20,
            ..QemuScenario::demo()
        });
        assert!(e.contains("working_set_pages"), "{e}");
        let e = bad(QemuScenario {
            loss: 2.0,
            ..QemuScenario::demo()
        });
        assert!(e.contains("loss"), "{e}");
    }

    #[test]
    fn spot_pages_avoid_the_working_set_and_stay_in_memory() {
        for mem in [64u64 << 20, 512 << 20] {
            let s = QemuScenario {
                mem_bytes: mem,
                ..QemuScenario::demo()
            };
            let pages = spot_pages(&s);
            assert!(pages.len() >= 12, "{mem}: only {} pages", pages.len());
            let ws = 2048..2048 + s.working_set_pages;
            for p in pages {
                assert!(p < mem / PAGE && !ws.contains(&p) && p != guest::STACK_PAGE);
            }
        }
    }

    #[test]
    fn timeout_grows_with_memory_over_rate() {
        let s = QemuScenario::demo();
        // 512 MiB at 250 Mbit/s is ~17 s: 60 s + 4 x that.
        let t = s.timeout().as_secs_f64();
        assert!((t - (60.0 + 4.0 * 17.18)).abs() < 1.0, "{t}");
    }
}
