//! `wanmig demo`: the main job with embedded defaults. Two sites run in this
//! process on loopback, joined by the WAN emulator (100 ms RTT, 250 Mbit/s
//! by default); a KVM guest whose memory holds the documented demo mix
//! (see `wanmig_codec::mix`) and keeps dirtying memory runs at site A; a
//! smoltcp client at site A holds a TCP session to the guest's echo service
//! across the stretched L2 segment; the guest live-migrates to site B
//! through the gateways; then the demo checks what an operator would: the
//! memory digests matched at the handover, the guest's own deterministic
//! results continue exactly as an unmigrated run's, and the TCP session
//! survived with every byte in order. The VM has a disk by default
//! ([`disk`]): after the compute move the follow-on storage copy brings it
//! to site B, and the demo checks the copy against what the guest wrote.
//!
//! The knobs the scenario matrix turns — memory mix, guest workload
//! ([`guest`]), link jitter and bursty loss — are options here, and the
//! report carries the per-run series the matrix plots ([`series`]).
//!
//! Errors are `anyhow`: this is an edge (a command), not a library API.

pub mod disk;
pub mod echo_client;
pub mod guest;
pub mod series;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use wanmig_codec::PerKind;
use wanmig_migration::machine::{MemoryWorkloadConfig, NetConfig, VmConfig};
use wanmig_vmm::workload_model::first_mismatch;

use crate::lab::{Link, MeshBuilder};
use crate::migration::{MigrateRequest, MigrationRecord, Outcome};
use crate::vms::{VmHost, VmHosting};
use disk::StorageReport;
use echo_client::{EchoClient, EchoClientConfig, EchoStats};
use guest::GuestShape;
pub use guest::{GuestWorkload, MemoryMix};
use series::{ProgressSample, Series};

const SITE_A: &str = "site-a";
const SITE_B: &str = "site-b";
const SEGMENT: &str = "lan";
const VM: &str = "demo-vm";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const GUEST_MAC: [u8; 6] = [0x02, 0x57, 0x4d, 0x00, 0x00, 0x10];
const CLIENT_MAC: [u8; 6] = [0x02, 0x57, 0x4d, 0x00, 0x00, 0x20];
const ECHO_PORT: u16 = 7000;
/// How often the demo reads the source's migration record.
const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// What the demo runs (every field has a default; see `wanmig demo --help`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The emulated WAN between the two sites (site A → B is `forward`).
    pub link: Link,
    pub mem_bytes: u64,
    /// What the guest's memory holds.
    pub mix: MemoryMix,
    /// How hard the guest dirties memory.
    pub workload: GuestWorkload,
    /// Bytes per second the moderate workload dirties.
    pub dirty_bytes_per_sec: u64,
    /// Pages in the workload's working set.
    pub working_set_pages: u64,
    pub downtime: Duration,
    /// Bytes per second the TCP client offers.
    pub echo_rate: u64,
    pub seed: u64,
    /// `false`: send every page raw (the plain pre-copy baseline).
    pub reduction: bool,
    /// After the first move, migrate a second VM booted from the same
    /// memory image to the same site: the destination's page store is then
    /// warm, and the report says how much that saves.
    pub warm_clone: bool,
    /// After the move to site B, move the VM back to site A (the TCP session
    /// must survive both moves).
    pub round_trip: bool,
    /// `Some(bytes)`: the VM gets a sparse disk of this size that its disk
    /// workload writes, and the storage copy follows the compute move.
    pub disk_bytes: Option<u64>,
    /// `Some(dir)`: at the end, write each site's `/metrics` page to
    /// `dir/<site>.prom`.
    pub metrics_out: Option<std::path::PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            link: Link::wan(Duration::from_millis(100), 250_000_000),
            mem_bytes: 512 << 20,
            mix: MemoryMix::Busy,
            workload: GuestWorkload::Moderate,
            dirty_bytes_per_sec: 5 << 20,
            working_set_pages: 8192,
            downtime: Duration::from_millis(300),
            echo_rate: 256 << 10,
            seed: 0x00de_0001,
            reduction: true,
            warm_clone: false,
            round_trip: false,
            disk_bytes: Some(64 << 20),
            metrics_out: None,
        }
    }
}

impl DemoOptions {
    /// The round-trip time of the emulated WAN (both directions' delays).
    pub fn rtt(&self) -> Duration {
        self.link.forward.delay + self.link.reverse.delay
    }

    /// The bottleneck rate from site A to site B in bit/s (0: unlimited).
    pub fn rate_bps(&self) -> u64 {
        self.link.forward.rate_bps.unwrap_or(0)
    }

    /// The bytes per second the guest dirties under this workload.
    pub fn effective_dirty_rate(&self) -> u64 {
        self.workload
            .dirty_bytes_per_sec(self.dirty_bytes_per_sec, self.rate_bps())
    }

    fn guest(&self) -> GuestShape {
        GuestShape {
            mem_bytes: self.mem_bytes,
            mix: self.mix,
            seed: self.seed,
            dirty_bytes_per_sec: self.effective_dirty_rate(),
            working_set_pages: self.working_set_pages,
            page_writes: self.workload.page_writes(),
        }
    }
}

/// The emulated WAN, as the report states it (site A → B).
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    pub rtt_ms: f64,
    pub rate_mbit: f64,
    pub loss_percent: f64,
    /// "none", "random", "bursty (Gilbert-Elliott, mean burst N packets)"
    /// (see [`wanmig_netem::LossModel`]'s `Display`).
    pub loss_model: String,
    pub jitter_ms: f64,
}

impl LinkReport {
    fn of(opts: &DemoOptions) -> Self {
        let f = &opts.link.forward;
        LinkReport {
            rtt_ms: opts.rtt().as_secs_f64() * 1e3,
            rate_mbit: opts.rate_bps() as f64 / 1e6,
            loss_percent: f.loss.mean_loss() * 100.0,
            loss_model: f.loss.to_string(),
            jitter_ms: f.jitter.as_secs_f64() * 1e3,
        }
    }
}

/// The codec bytes a migration took on the wire, by page kind. Kinds whose
/// records have a fixed size in the batch format
/// ([`wanmig_codec::PageKind::fixed_wire_bytes`]) are counted exactly in `fixed`; the
/// others share the compressed section, so `shared_section_and_headers` is
/// the rest of the wire bytes (that section and the batch headers).
#[derive(Debug, Clone, Serialize, Default)]
pub struct WireByKind {
    pub fixed: PerKind,
    pub shared_section_and_headers: u64,
}

impl WireByKind {
    fn from_progress(p: &crate::migration::Progress) -> Self {
        let fixed = p.by_kind.fixed_wire_bytes();
        WireByKind {
            fixed,
            shared_section_and_headers: p.bytes_out.saturating_sub(fixed.total()),
        }
    }
}

/// The guest's TCP session, as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct TcpReport {
    #[serde(flatten)]
    pub stats: EchoStats,
    /// Bytes verified after the VM resumed at site B.
    pub bytes_verified_after_move: u64,
}

/// The demo's result (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub link: LinkReport,
    pub migration_id: String,
    pub outcome: String,
    pub total_ms: u64,
    pub downtime_ms: Option<f64>,
    /// The downtime goal, ms, and whether the pause met it.
    pub downtime_goal_ms: Option<f64>,
    pub downtime_met: Option<bool>,
    /// When missed: the largest part of the pause and the pause in parts.
    pub downtime_miss: Option<String>,
    pub downtime_why: Option<String>,
    pub rounds: u32,
    pub guest_mem_bytes: u64,
    /// Guest page bytes the source relayed (all rounds).
    pub guest_bytes_sent: u64,
    pub wire_bytes: u64,
    /// Guest bytes sent ÷ wire bytes.
    pub reduction: f64,
    /// Pages relayed, by what the encoder made of them.
    pub pages: PerKind,
    /// BLAKE3 of guest memory at the handover, equal at both sites.
    pub memory_digest: Option<String>,
    pub memory_verified: bool,
    /// The guest's memory-workload digests at site B equal an unmigrated
    /// run's at the same iterations.
    pub workload_verified: bool,
    pub workload_iterations_checked: u64,
    pub tcp_session_survived: bool,
    pub tcp: TcpReport,
    /// "fresh", "busy" or "incompressible".
    pub mix: String,
    /// "idle", "moderate" or "write-heavy".
    pub workload: String,
    /// Bytes per second the guest's memory workload was set to dirty.
    pub dirty_bytes_per_sec: u64,
    /// How the pre-copy converged (normal, auto-converge, smart stop, …),
    /// as the source's migration record states it.
    pub convergence: Option<String>,
    /// Why the source stopped the VM for the final round.
    pub stop_reason: Option<String>,
    /// Highest guest throttle (percent) auto-converge applied.
    pub max_throttle: Option<u8>,
    /// Bytes of the VM's vCPU/device state blob.
    pub state_bytes: Option<u64>,
    /// Pages sent in each round (round 0 = all of memory; the final
    /// stop-and-copy round last).
    pub round_pages: Vec<u64>,
    pub wire_by_kind: WireByKind,
    /// The source's progress every ~100 ms (goodput over time).
    pub progress_series: Vec<ProgressSample>,
    /// The follow-on storage migration, when the VM has a disk.
    pub storage: Option<StorageReport>,
    /// The second migration (a clone of the same image to the same site),
    /// when asked for.
    pub warm_clone: Option<CloneReport>,
    /// The move back to site A, when asked for.
    pub return_move: Option<ReturnReport>,
}

/// The move back from site B to site A.
#[derive(Debug, Clone, Serialize)]
pub struct ReturnReport {
    pub outcome: String,
    pub total_ms: u64,
    pub downtime_ms: Option<f64>,
    pub wire_bytes: u64,
    pub memory_verified: bool,
    pub workload_verified: bool,
    /// Bytes the TCP client verified after the VM resumed at site A again.
    pub tcp_bytes_verified_after_return: u64,
}

/// The warm-store migration of a clone.
#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub outcome: String,
    pub total_ms: u64,
    pub downtime_ms: Option<f64>,
    pub guest_bytes_sent: u64,
    pub wire_bytes: u64,
    pub reduction: f64,
    /// Pages relayed, by what the encoder made of them.
    pub pages: PerKind,
    pub memory_verified: bool,
    pub workload_verified: bool,
}

impl DemoReport {
    /// Whether everything the demo checks held.
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Succeeded.label()
            && self.warm_clone.as_ref().is_none_or(|c| {
                c.outcome == Outcome::Succeeded.label() && c.memory_verified && c.workload_verified
            })
            && self.return_move.as_ref().is_none_or(|r| {
                r.outcome == Outcome::Succeeded.label()
                    && r.memory_verified
                    && r.workload_verified
                    && r.tcp_bytes_verified_after_return >= 128 << 10
            })
            && self.storage.as_ref().is_none_or(|s| s.verified)
            && self.memory_verified
            && self.workload_verified
            && self.tcp_session_survived
    }
}

/// Checks the guest's reported digests against an unmigrated run.
fn check_workload(
    shape: &GuestShape,
    w: &MemoryWorkloadConfig,
    samples: Vec<(u64, u64)>,
    site: &str,
) -> bool {
    match first_mismatch(w, shape.initial_working_set(), samples) {
        None => true,
        Some((it, got, want)) => {
            tracing::error!(
                site,
                iteration = it,
                got,
                want,
                "guest digest differs from the unmigrated run"
            );
            false
        }
    }
}

/// The VM's memory-workload samples at this host.
fn samples_of(host: &VmHost, vm: &str) -> Vec<(u64, u64)> {
    host.reports(vm)
        .map(|r| {
            r.mem_samples()
                .iter()
                .map(|s| (s.iteration, s.digest))
                .collect()
        })
        .unwrap_or_default()
}

fn samples(host: &VmHost) -> Vec<(u64, u64)> {
    samples_of(host, VM)
}

/// One migration as the source saw it.
struct Moved {
    outcome: Outcome,
    record: MigrationRecord,
    total_ms: u64,
    series: Vec<ProgressSample>,
    round_pages: Vec<u64>,
}

/// Migrates `vm` from `from` to `to`, feeding `progress` and sampling the
/// source's record every [`SAMPLE_PERIOD`].
async fn migrate(
    from: &crate::GatewayHandle,
    vm: &str,
    to: &str,
    downtime: Duration,
    progress: &mut impl FnMut(&MigrationRecord),
) -> Result<Moved> {
    let started = Instant::now();
    let (id, mut task) = from
        .migration()
        .begin(MigrateRequest {
            vm: vm.into(),
            to: to.into(),
            downtime: Some(downtime),
            scope: None,
        })
        .context("starting the migration")?;
    let mut series = Series::default();
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            r = &mut task => break r.context("migration task")?,
            _ = tick.tick() => {
                if let Some(rec) = from.migration().record(&id) {
                    series.observe(started.elapsed().as_millis() as u64, &rec);
                    progress(&rec);
                }
            }
        }
    };
    let total_ms = started.elapsed().as_millis() as u64;
    let record = from
        .migration()
        .record(&id)
        .context("the migration's record is gone")?;
    series.observe(total_ms, &record);
    progress(&record);
    let (series, round_pages) = series.finish(&record);
    Ok(Moved {
        outcome,
        record,
        total_ms,
        series,
        round_pages,
    })
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the demo; `progress` sees the migration record while it runs.
pub async fn run(
    opts: DemoOptions,
    mut progress: impl FnMut(&MigrationRecord),
) -> Result<DemoReport> {
    for params in [&opts.link.forward, &opts.link.reverse] {
        params
            .validate()
            .context("the emulated link's settings (--rtt, --rate, --loss, --jitter, ...)")?;
    }
    let shape = opts.guest();
    let mesh = MeshBuilder::new(2)
        .link(opts.link.clone())
        .hints(opts.rate_bps() as f64 / 1e6, opts.rtt())
        .extra_config(&format!(
            "[overlay]\n[[overlay.segment]]\nname = \"{SEGMENT}\"\nvni = 100\n\n\
             [migration]\nstore_dir = \"stores/{{site}}\"\n{}",
            if opts.reduction {
                ""
            } else {
                "[migration.codec]\nreduce = false\n"
            }
        ))
        .start()
        .await
        .context("starting the two sites")?;
    if !mesh.wait_all_up(Duration::from_secs(20)).await {
        bail!("the two gateways did not peer within 20 s");
    }
    let (gw_a, gw_b) = (mesh.gw(SITE_A), mesh.gw(SITE_B));

    // The guest, with realistic memory content, at site A.
    // Where the gateways' default `[vms] image_dirs` / `disk_dirs` are.
    let (images, disks) = (mesh.dir().join("images"), mesh.dir().join("disks"));
    for d in [&images, &disks] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let image = images.join("demo-memory.img");
    let (img, sh) = (image.clone(), shape.clone());
    tokio::task::spawn_blocking(move || sh.write_memory_image(&img))
        .await
        .context("memory image thread")??;
    let disk_seed = opts.seed ^ 0xd15c;
    let disk = match opts.disk_bytes {
        Some(bytes) => Some(disk::create(&disks.join("demo-vm.disk"), bytes, disk_seed)?),
        None => None,
    };
    let net = NetConfig {
        mac: GUEST_MAC,
        ip: GUEST_IP,
        prefix_len: 15,
        port: ECHO_PORT,
        tap: None,
        segment: Some(SEGMENT.into()),
    };
    let config = shape.vm_config(&image, net, disk);
    let workload = config.memory_workload.clone().expect("set above");
    let host_a: Arc<VmHost> = gw_a.vm_host().clone();
    let h = host_a.clone();
    let c = config.clone();
    tokio::task::spawn_blocking(move || h.start(VM, c))
        .await
        .context("VM start thread")?
        .context("starting the guest at site A")?;

    // The client at site A and its TCP session to the guest.
    let (_, client_port) = gw_a
        .overlay()
        .attach_port(SEGMENT)
        .await
        .context("attaching the client to the segment")?;
    let client = EchoClient::start(
        EchoClientConfig {
            mac: CLIENT_MAC,
            ip: CLIENT_IP,
            prefix_len: 15,
            server: GUEST_IP,
            port: ECHO_PORT,
            rate: opts.echo_rate,
        },
        client_port,
    )
    .context("starting the TCP client")?;
    let c = &client;
    if !tokio::task::block_in_place(|| c.wait_verified(64 << 10, Duration::from_secs(60))) {
        let overlay = gw_a.overlay().state().await.ok();
        let serial = host_a.serial(VM);
        let net = host_a.with_vm(VM, |v| {
            (
                v.reports().latest(wanmig_guest_abi::REPORT_NET_STATUS),
                v.reports().mem_samples().len(),
            )
        });
        bail!(
            "the TCP session to the guest did not carry 64 KiB within 60 s: client {:?}; \
             guest net status and memory samples {:?}; \
             segments at site A: {:?}; guest console (last lines): {:?}",
            client.stats(),
            net,
            overlay.map(|o| o.segments),
            serial.iter().rev().take(5).collect::<Vec<_>>()
        );
    }
    wait_for(
        "the guest's memory workload",
        Duration::from_secs(60),
        || samples(&host_a).len() >= 10,
    )
    .await?;

    let at_a = samples(&host_a);
    let at_a_ok = check_workload(&shape, &workload, at_a, SITE_A);
    if opts.disk_bytes.is_some() {
        wait_for("the guest's disk workload", Duration::from_secs(60), || {
            disk::guest_report(&host_a, VM).is_some_and(|r| r[0] >= 2)
        })
        .await?;
    }

    // The live migration.
    let Moved {
        outcome,
        record,
        total_ms,
        series,
        round_pages,
    } = migrate(gw_a, VM, SITE_B, opts.downtime, &mut progress).await?;
    let disk_at_source = disk::guest_report(&host_a, VM).map_or(0, |r| r[0]);
    let id = record.id.clone();
    let verified_at_move = client.stats().bytes_verified;

    let mut workload_verified = false;
    let mut checked = 0;
    let mut after_move = 0;
    if outcome == Outcome::Succeeded {
        let host_b = gw_b.vm_host().clone();
        // Let the guest run on at B, then compare its own results.
        wait_for(
            "the guest's memory workload at site B",
            Duration::from_secs(60),
            || samples(&host_b).len() >= 10,
        )
        .await?;
        let at_b = samples(&host_b);
        checked = at_b.len() as u64;
        workload_verified = at_a_ok && check_workload(&shape, &workload, at_b, SITE_B);
        let c = &client;
        let target = verified_at_move + (128 << 10);
        tokio::task::block_in_place(|| c.wait_verified(target, Duration::from_secs(60)));
        after_move = client
            .stats()
            .bytes_verified
            .saturating_sub(verified_at_move);
    }
    let storage = match (opts.disk_bytes, outcome) {
        (Some(_), Outcome::Succeeded) => {
            Some(check_storage(gw_b.vm_host(), disk_seed, disk_at_source).await)
        }
        _ => None,
    };
    let return_move = if opts.round_trip && outcome == Outcome::Succeeded {
        Some(move_back(&opts, &workload, gw_a, gw_b, &client, &mut progress).await?)
    } else {
        None
    };
    let tcp = client.stop();
    let tcp_session_survived = tcp.connected
        && !tcp.reset
        && tcp.mismatched == 0
        && tcp.error.is_none()
        && after_move >= 128 << 10;
    let warm_clone = if opts.warm_clone && outcome == Outcome::Succeeded {
        Some(migrate_clone(&opts, &config, gw_a, gw_b, &mut progress).await?)
    } else {
        None
    };
    let p = &record.progress;
    let report = DemoReport {
        link: LinkReport::of(&opts),
        migration_id: id,
        outcome: outcome.label().to_string(),
        total_ms,
        downtime_ms: record.downtime_ms,
        downtime_goal_ms: record.downtime_goal_ms,
        downtime_met: record.downtime_met,
        downtime_miss: record.downtime_miss.clone(),
        downtime_why: record.downtime_why.clone(),
        rounds: record.rounds,
        guest_mem_bytes: opts.mem_bytes,
        guest_bytes_sent: p.bytes_in,
        wire_bytes: p.bytes_out,
        reduction: p.reduction_ratio(),
        pages: p.by_kind,
        memory_verified: outcome == Outcome::Succeeded && record.memory_digest.is_some(),
        memory_digest: record.memory_digest.clone(),
        workload_verified,
        workload_iterations_checked: checked,
        tcp_session_survived,
        tcp: TcpReport {
            stats: tcp,
            bytes_verified_after_move: after_move,
        },
        mix: opts.mix.label().into(),
        workload: opts.workload.label().into(),
        dirty_bytes_per_sec: shape.dirty_bytes_per_sec,
        convergence: record.convergence.clone(),
        stop_reason: record.stop_reason.clone(),
        max_throttle: record.max_throttle,
        state_bytes: record.state_bytes,
        // The shim's own per-round counts when the record has them; else
        // what the sampling saw.
        round_pages: if record.round_pages.is_empty() {
            round_pages
        } else {
            record.round_pages.clone()
        },
        wire_by_kind: WireByKind::from_progress(p),
        progress_series: series,
        storage,
        warm_clone,
        return_move,
    };
    if let Some(dir) = &opts.metrics_out {
        save_metrics(&mesh, dir).await?;
    }
    mesh.shutdown().await;
    Ok(report)
}

/// Writes each site's `/metrics` page, as Prometheus would scrape it, to
/// `dir/<site>.prom`.
async fn save_metrics(mesh: &crate::lab::Mesh, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    for site in mesh.sites() {
        let addr = mesh
            .gw(site)
            .metrics_addr()
            .with_context(|| format!("{site} serves no /metrics"))?;
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("scraping {site}'s /metrics"))?
            .text()
            .await?;
        let path = dir.join(format!("{site}.prom"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Waits for the VM's disk to be local at `host` and for the guest to
/// report disk iterations there, then pauses the guest, checks the disk
/// against the guest-abi model of what the guest wrote, and lets it run
/// on. A copy or check that fails is reported (`verified: false`, `error`),
/// not returned as an error, so the rest of the report survives.
async fn check_storage(host: &Arc<VmHost>, seed: u64, at_source: u64) -> StorageReport {
    let mut out = StorageReport {
        disk_bytes: 0,
        wire_bytes: 0,
        total_ms: 0,
        verified: false,
        iterations: 0,
        iterations_at_source: at_source,
        guest_errors: 0,
        blocks_mismatched: 0,
        error: None,
    };
    if let Err(e) = verify_disk(host, seed, at_source, &mut out).await {
        tracing::error!("the demo's disk check failed: {e:#}");
        out.verified = false;
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn verify_disk(
    host: &Arc<VmHost>,
    seed: u64,
    at_source: u64,
    out: &mut StorageReport,
) -> Result<()> {
    let (path, disk_bytes, wire_bytes, total_ms) = disk::wait_local(host, VM).await?;
    (out.disk_bytes, out.wire_bytes, out.total_ms) = (disk_bytes, wire_bytes, total_ms);
    wait_for(
        "the guest's disk iterations at site B after the copy",
        Duration::from_secs(30),
        || disk::guest_report(host, VM).is_some_and(|r| r[0] > at_source),
    )
    .await?;
    host.with_vm(VM, |v| v.pause())
        .context("the VM is gone from site B")?
        .context("pausing the guest to check its disk")?;
    let report = disk::guest_report(host, VM);
    let p = path.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let image = std::fs::read(&p)?;
        let bad = report.map(|r| disk::mismatched_blocks(&image, seed, r[0]));
        Ok::<_, std::io::Error>((image.len() as u64, bad))
    })
    .await;
    host.with_vm(VM, |v| v.resume())
        .context("the VM is gone from site B")?
        .context("resuming the guest after the disk check")?;
    let (len, mismatched) = checked
        .context("disk check thread")?
        .with_context(|| format!("reading the destination disk {}", path.display()))?;
    let [iterations, _, _, errors] = report.context("the guest's disk report vanished")?;
    let mismatched = mismatched.unwrap_or(u64::MAX);
    if mismatched > 0 {
        tracing::error!(
            mismatched,
            iterations,
            "the destination disk differs from what the guest wrote"
        );
    }
    out.iterations = iterations;
    out.guest_errors = errors;
    out.blocks_mismatched = mismatched;
    out.verified = mismatched == 0 && errors == 0 && len == disk_bytes;
    Ok(())
}

/// Boots a second VM from the same memory image at site A (no NIC) and
/// migrates it to site B, whose page store now holds the first VM's pages.
async fn migrate_clone(
    opts: &DemoOptions,
    config: &VmConfig,
    gw_a: &crate::GatewayHandle,
    gw_b: &crate::GatewayHandle,
    progress: &mut impl FnMut(&MigrationRecord),
) -> Result<CloneReport> {
    const CLONE: &str = "demo-vm-clone";
    let workload = config.memory_workload.clone().expect("the demo sets it");
    // The clone has no NIC, and no disk: the original's source disk is
    // the first VM's.
    let clone = VmConfig {
        net: None,
        disk: None,
        ..config.clone()
    };
    let host_a = gw_a.vm_host().clone();
    let h = host_a.clone();
    tokio::task::spawn_blocking(move || h.start(CLONE, clone))
        .await
        .context("VM start thread")?
        .context("starting the clone at site A")?;
    wait_for(
        "the clone's memory workload",
        Duration::from_secs(60),
        || samples_of(&host_a, CLONE).len() >= 5,
    )
    .await?;
    let Moved {
        outcome,
        record,
        total_ms,
        ..
    } = migrate(gw_a, CLONE, SITE_B, opts.downtime, progress).await?;
    let mut workload_verified = false;
    if outcome == Outcome::Succeeded {
        let host_b = gw_b.vm_host().clone();
        wait_for(
            "the clone's memory workload at site B",
            Duration::from_secs(60),
            || samples_of(&host_b, CLONE).len() >= 5,
        )
        .await?;
        workload_verified =
            check_workload(&opts.guest(), &workload, samples_of(&host_b, CLONE), SITE_B);
    }
    let p = &record.progress;
    Ok(CloneReport {
        outcome: outcome.label().to_string(),
        total_ms,
        downtime_ms: record.downtime_ms,
        guest_bytes_sent: p.bytes_in,
        wire_bytes: p.bytes_out,
        reduction: p.reduction_ratio(),
        pages: p.by_kind,
        memory_verified: outcome == Outcome::Succeeded && record.memory_digest.is_some(),
        workload_verified,
    })
}

/// Moves the VM from site B back to site A while the client keeps its TCP
/// session, and checks the guest's results and the session afterwards.
async fn move_back(
    opts: &DemoOptions,
    workload: &MemoryWorkloadConfig,
    gw_a: &crate::GatewayHandle,
    gw_b: &crate::GatewayHandle,
    client: &EchoClient,
    progress: &mut impl FnMut(&MigrationRecord),
) -> Result<ReturnReport> {
    let last_at_b = samples(gw_b.vm_host()).last().map_or(0, |s| s.0);
    let Moved {
        outcome,
        record,
        total_ms,
        ..
    } = migrate(gw_b, VM, SITE_A, opts.downtime, progress).await?;
    let verified_at_return = client.stats().bytes_verified;
    let mut workload_verified = false;
    let mut after = 0;
    if outcome == Outcome::Succeeded {
        let host_a = gw_a.vm_host().clone();
        wait_for(
            "the guest's memory workload back at site A",
            Duration::from_secs(60),
            || {
                samples(&host_a)
                    .last()
                    .is_some_and(|s| s.0 >= last_at_b + 10)
            },
        )
        .await?;
        let fresh: Vec<(u64, u64)> = samples(&host_a)
            .into_iter()
            .filter(|s| s.0 > last_at_b)
            .collect();
        workload_verified = check_workload(&opts.guest(), workload, fresh, SITE_A);
        let target = verified_at_return + (128 << 10);
        tokio::task::block_in_place(|| client.wait_verified(target, Duration::from_secs(60)));
        after = client
            .stats()
            .bytes_verified
            .saturating_sub(verified_at_return);
    }
    Ok(ReturnReport {
        outcome: outcome.label().to_string(),
        total_ms,
        downtime_ms: record.downtime_ms,
        wire_bytes: record.progress.bytes_out,
        memory_verified: outcome == Outcome::Succeeded && record.memory_digest.is_some(),
        workload_verified,
        tcp_bytes_verified_after_return: after,
    })
}
