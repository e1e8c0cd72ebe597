//! The real-memory comparison: one guest memory image from the corpus
//! ([`crate::corpus`]) migrated over one emulated link, in one run, three
//! ways:
//!
//! - **QEMU 7.2**: its own live migration (multifd, 2 channels, zstd level
//!   1, `downtime-limit` 300 ms) of a QEMU guest whose RAM maps the image,
//!   run by [`crate::qemu`] between two namespaces joined by a netem TUN
//!   link;
//! - **wanmig cold**: two gateways ([`wanmig_gateway::lab`]: configs on
//!   disk with no `[migration]` section, so each keeps its default page
//!   store; a netem relay on the peer link), a VM at site A preloaded from
//!   the image (`mem_image`, hard-linked into the gateway's default
//!   `images/` directory) migrated to site B, whose store is empty;
//! - **wanmig warm**: a second VM from the same image migrated to the same
//!   site B, whose store now holds the first VM's pages.
//!
//! Both emulators are the same `wanmig_netem` link model with the same
//! parameters ([`QemuScenario::link`] feeds both). Wire bytes are IP bytes
//! that crossed the link from source to destination: QEMU's from the TUN
//! interface counters (IP + TCP headers), wanmig's from the relay's
//! delivered datagrams plus 28 bytes each (IPv4 + UDP headers). A wanmig
//! run counts as verified when it succeeded, the gateways' memory digests
//! matched at the handover (the record carries the digest) and the VM runs
//! at site B — the demo's memory check.
//!
//! Each row is set beside QEMU's and beside the image's physical floor
//! ([`floor`]: its distinct non-zero pages as one zstd stream with
//! long-distance matching, at the link rate, plus two round trips, with
//! nothing at the destination). At the floor's level 19 that takes many
//! minutes of CPU for a 2 GiB image, so the level is an option (a lower one
//! gives a higher, less strict floor; the table names it) and the result is
//! kept next to the image as `NAME.floor-LEVEL.json`, keyed by the image's
//! build stamp.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use wanmig_gateway::lab::{Link, Mesh, MeshBuilder};
use wanmig_gateway::migration::{MigrateRequest, MigrationRecord, Outcome};
use wanmig_gateway::vms::{VmHosting, VmState};
use wanmig_migration::machine::VmConfig;

use crate::corpus::{self, Image};
use crate::qemu::{self, QemuScenario};
use crate::scenario::floor::{self, Floor, ImageFloor, PageRewrite};
use crate::scenario::run::QemuOutcome;

const SITE_A: &str = "site-a";
const SITE_B: &str = "site-b";
/// The file the benchmark writes its [`RealReport`] to, in the report
/// directory.
pub const JSON_FILE: &str = "real-memory.json";
/// IPv4 and UDP headers around each relayed QUIC datagram.
const IP_UDP_HEADER: u64 = 28;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RealOptions {
    /// Corpus image name (`linux-pagecache-2g`).
    pub image: String,
    pub rtt: Duration,
    /// Link rate, bit/s, each direction.
    pub rate_bps: u64,
    /// Random loss per packet, each direction; one comparison per entry.
    pub losses: Vec<f64>,
    /// QEMU's `downtime-limit`; wanmig uses its configured default.
    pub qemu_downtime: Duration,
    pub qemu_channels: u8,
    /// zstd level of the floor's compression.
    pub floor_level: i32,
}

impl Default for RealOptions {
    /// The comparison of record: the 2 GiB page-cache guest, 100 ms RTT,
    /// 250 Mbit/s, no loss, QEMU multifd ×2 with 300 ms downtime-limit.
    fn default() -> Self {
        RealOptions {
            image: "linux-pagecache-2g".into(),
            rtt: Duration::from_millis(100),
            rate_bps: 250_000_000,
            losses: vec![0.0],
            qemu_downtime: Duration::from_millis(300),
            qemu_channels: 2,
            floor_level: floor::FLOOR_ZSTD_LEVEL,
        }
    }
}

/// One wanmig migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WanmigRun {
    pub vm: String,
    /// Outcome, memory digest present, VM running at site B.
    pub ok: bool,
    pub outcome: String,
    /// From the migrate request to the migration's end (the VM runs at B).
    pub total_ms: u64,
    pub downtime_ms: Option<f64>,
    /// IP bytes that crossed the link A → B during the migration.
    pub wire_bytes: u64,
    /// The migration's own count of batch bytes it sent.
    pub stream_bytes: u64,
    /// Page bytes before reduction.
    pub page_bytes: u64,
    pub memory_verified: bool,
    pub error: Option<String>,
    pub record: Option<MigrationRecord>,
}

/// One line of the printed table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub ok: bool,
    pub wire_bytes: u64,
    pub total_ms: u64,
    pub downtime_ms: Option<f64>,
    pub wire_over_qemu: Option<f64>,
    pub time_over_qemu: Option<f64>,
    pub time_over_floor: Option<f64>,
}

/// The three migrations over one link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRun {
    pub loss: f64,
    pub floor: Floor,
    pub qemu: QemuOutcome,
    pub cold: WanmigRun,
    pub warm: WanmigRun,
    pub rows: Vec<Row>,
    /// `/proc/loadavg` before and after (the machine may be shared).
    pub load_before: String,
    pub load_after: String,
    pub wall_s: f64,
}

/// The whole run, as written to `real-memory.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealReport {
    pub image: String,
    pub description: String,
    pub mem_bytes: u64,
    pub image_floor: ImageFloor,
    pub floor_level: i32,
    pub rtt_ms: u64,
    pub rate_bps: u64,
    pub qemu_downtime_ms: u64,
    pub qemu_channels: u8,
    pub runs: Vec<LinkRun>,
}

/// The floor file next to an image.
#[derive(Serialize, Deserialize)]
struct CachedFloor {
    stamp: String,
    zstd_level: i32,
    floor: ImageFloor,
}

/// The image's floor at zstd `level`, from `NAME.floor-LEVEL.json` when it
/// matches the image's stamp, else computed and stored there.
pub fn image_floor(image: &Image, level: i32) -> Result<ImageFloor> {
    let cache = image.path.with_extension(format!("floor-{level}.json"));
    if let Ok(text) = std::fs::read(&cache) {
        if let Ok(c) = serde_json::from_slice::<CachedFloor>(&text) {
            if c.stamp == image.meta.stamp && c.zstd_level == level {
                return Ok(c.floor);
            }
        }
    }
    let f = floor::file_floor(&image.path, level)?;
    let c = CachedFloor {
        stamp: image.meta.stamp.clone(),
        zstd_level: level,
        floor: f,
    };
    std::fs::write(&cache, serde_json::to_vec_pretty(&c)?)
        .with_context(|| format!("writing {}", cache.display()))?;
    Ok(f)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (num > 0.0 && den > 0.0).then(|| num / den)
}

/// Runs the comparison for every loss in `opts`, printing each table as
/// it completes. Needs root, KVM and QEMU (QEMU's row says why when it
/// could not run). Call inside a multi-threaded tokio runtime.
pub async fn run(opts: &RealOptions) -> Result<RealReport> {
    let image = corpus::open(&opts.image).with_context(|| {
        format!(
            "the corpus image {} is not built: run `{} {}`",
            opts.image,
            corpus::script().display(),
            opts.image
        )
    })?;
    let mem_bytes = image.meta.bytes;
    println!(
        "real_memory: {} ({} MiB): {}",
        opts.image,
        mem_bytes >> 20,
        image.meta.description
    );
    println!(
        "real_memory: the image's floor (zstd-{} of its distinct pages; cached)...",
        opts.floor_level
    );
    let image_floor = {
        let (i, level) = (image.clone(), opts.floor_level);
        tokio::task::spawn_blocking(move || image_floor(&i, level))
            .await
            .context("the floor thread panicked")??
    };
    let mut report = RealReport {
        image: opts.image.clone(),
        description: image.meta.description.clone(),
        mem_bytes,
        image_floor,
        floor_level: opts.floor_level,
        rtt_ms: opts.rtt.as_millis() as u64,
        rate_bps: opts.rate_bps,
        qemu_downtime_ms: opts.qemu_downtime.as_millis() as u64,
        qemu_channels: opts.qemu_channels,
        runs: Vec::new(),
    };
    for &loss in &opts.losses {
        let r = link_run(opts, &image, &image_floor, loss).await?;
        print_run(&report, &r);
        report.runs.push(r);
    }
    Ok(report)
}

async fn link_run(
    opts: &RealOptions,
    image: &Image,
    image_floor: &ImageFloor,
    loss: f64,
) -> Result<LinkRun> {
    let started = Instant::now();
    let load_before = load();
    let s = QemuScenario {
        image: Some(image.path.clone()),
        mem_bytes: image.meta.bytes,
        rtt: opts.rtt,
        rate_bps: opts.rate_bps,
        loss,
        dirty_bytes_per_sec: 0,
        downtime: opts.qemu_downtime,
        multifd_channels: opts.qemu_channels,
        ..QemuScenario::demo()
    };
    println!(
        "real_memory: loss {:.2}%: QEMU (multifd x{}, zstd-1)...",
        loss * 100.0,
        opts.qemu_channels
    );
    let qemu = match qemu::available() {
        Err(why) => QemuOutcome::NotRun { why },
        Ok(_) => match qemu::run_baseline(&s).await {
            Ok(r) => QemuOutcome::Ran(Box::new(r)),
            Err(e) => QemuOutcome::NotRun {
                why: format!("QEMU failed to run: {e:#}"),
            },
        },
    };
    println!(
        "real_memory: loss {:.2}%: wanmig cold, then warm...",
        loss * 100.0
    );
    let link = Link {
        forward: s.link(),
        reverse: s.link(),
    };
    let (cold, warm) = wanmig_pair(opts, image, link).await?;
    let floor = floor::floor(
        image_floor,
        opts.rate_bps,
        opts.rtt.as_secs_f64() * 1e3,
        0,
        0,
        PageRewrite::Word,
    );
    let rows = rows(&qemu, &cold, &warm, &floor);
    Ok(LinkRun {
        loss,
        floor,
        qemu,
        cold,
        warm,
        rows,
        load_before,
        load_after: load(),
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Two gateways over `link`; the cold and the warm migration.
async fn wanmig_pair(
    opts: &RealOptions,
    image: &Image,
    link: Link,
) -> Result<(WanmigRun, WanmigRun)> {
    // No `[transport]` keys: the gateway's defaults, as the shipped
    // example configs state them.
    let mesh = MeshBuilder::new(2)
        .link(link)
        .hints(opts.rate_bps as f64 / 1e6, opts.rtt)
        .transport("")
        .start()
        .await
        .context("starting two gateways")?;
    ensure!(
        mesh.wait_all_up(Duration::from_secs(60)).await,
        "the two gateways did not peer within 60 s"
    );
    let local = place_image(mesh.dir(), image)?;
    let cold = migrate_one(&mesh, "real-cold", &local, image.meta.bytes).await;
    let warm = migrate_one(&mesh, "real-warm", &local, image.meta.bytes).await;
    mesh.shutdown().await;
    Ok((cold, warm))
}

/// Puts the image into `images/` beside the gateways' configs (the
/// default `[vms] image_dirs`, where symlinks are refused): a hard link,
/// or a copy across file systems.
fn place_image(dir: &Path, image: &Image) -> Result<PathBuf> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let local = images.join(format!("{}.img", image.meta.name));
    if std::fs::hard_link(&image.path, &local).is_err() {
        std::fs::copy(&image.path, &local)
            .with_context(|| format!("copying {} to {}", image.path.display(), local.display()))?;
    }
    Ok(local)
}

/// Starts `vm` at site A from `image` and migrates it to site B.
async fn migrate_one(mesh: &Mesh, vm: &str, image: &Path, mem_bytes: u64) -> WanmigRun {
    let failed = |error: String| WanmigRun {
        vm: vm.into(),
        ok: false,
        outcome: "did-not-run".into(),
        total_ms: 0,
        downtime_ms: None,
        wire_bytes: 0,
        stream_bytes: 0,
        page_bytes: 0,
        memory_verified: false,
        error: Some(error),
        record: None,
    };
    let (a, b) = (mesh.gw(SITE_A), mesh.gw(SITE_B));
    let config = VmConfig {
        mem_size: mem_bytes,
        mem_image: Some(image.to_path_buf()),
        ..VmConfig::default()
    };
    let (host, name) = (a.vm_host().clone(), vm.to_string());
    match tokio::task::spawn_blocking(move || host.start(&name, config)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed(format!("starting {vm} at {SITE_A}: {e}")),
        Err(e) => return failed(format!("the VM start thread: {e}")),
    }
    let relay = mesh.relay(SITE_A, SITE_B);
    let before = relay.stats().forward;
    let started = Instant::now();
    let rec = match a
        .migration()
        .migrate(MigrateRequest {
            vm: vm.into(),
            to: SITE_B.into(),
            downtime: None,
            scope: None,
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(format!("starting the migration of {vm}: {e}")),
    };
    let total_ms = started.elapsed().as_millis() as u64;
    let after = relay.stats().forward;
    let packets = after.delivered.saturating_sub(before.delivered);
    let wire_bytes =
        after.delivered_bytes.saturating_sub(before.delivered_bytes) + packets * IP_UDP_HEADER;
    let succeeded = rec.outcome == Some(Outcome::Succeeded);
    let running = b.vm_host().state(vm) == Some(VmState::Running);
    let memory_verified = succeeded && rec.memory_digest.is_some();
    WanmigRun {
        vm: vm.into(),
        ok: memory_verified && running,
        outcome: rec
            .outcome
            .map_or("unfinished".into(), |o| o.label().into()),
        total_ms,
        downtime_ms: rec.downtime_ms,
        wire_bytes,
        stream_bytes: rec.progress.bytes_out,
        page_bytes: rec.progress.bytes_in,
        memory_verified,
        error: match (&rec.error, running) {
            (Some(e), _) => Some(e.clone()),
            (None, false) if succeeded => Some(format!("{vm} is not running at {SITE_B}")),
            _ => None,
        },
        record: Some(rec),
    }
}

fn rows(qemu: &QemuOutcome, cold: &WanmigRun, warm: &WanmigRun, floor: &Floor) -> Vec<Row> {
    let q = match qemu {
        QemuOutcome::Ran(q) if q.ok => Some(q),
        _ => None,
    };
    let row = |name: &str, ok: bool, wire: u64, total: u64, down: Option<f64>| Row {
        name: name.into(),
        ok,
        wire_bytes: wire,
        total_ms: total,
        downtime_ms: down,
        wire_over_qemu: q.and_then(|q| ratio(wire as f64, q.wire_bytes as f64)),
        time_over_qemu: q.and_then(|q| ratio(total as f64, q.total_ms as f64)),
        time_over_floor: ok.then(|| ratio(total as f64, floor.floor_ms)).flatten(),
    };
    let mut out = Vec::new();
    if let QemuOutcome::Ran(r) = qemu {
        out.push(row(
            "QEMU 7.2 multifd + zstd-1",
            r.ok,
            r.wire_bytes,
            r.total_ms,
            r.downtime_ms,
        ));
    }
    for (name, w) in [("wanmig cold", cold), ("wanmig warm (2nd VM)", warm)] {
        out.push(row(name, w.ok, w.wire_bytes, w.total_ms, w.downtime_ms));
    }
    out
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// The table of one link, in Markdown (the same text the report embeds).
pub fn table(report: &RealReport, r: &LinkRun) -> String {
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".into(), |x| format!("{x:.prec$}"));
    let mut t = format!(
        "{} ({} MiB), {} ms RTT, {} Mbit/s, {:.2}% random loss; floor {:.2} s ({:.1} MiB unique, zstd-{} compressed, at the link rate + 2 RTT)\n\n",
        report.image,
        report.mem_bytes >> 20,
        report.rtt_ms,
        report.rate_bps / 1_000_000,
        r.loss * 100.0,
        r.floor.floor_ms / 1e3,
        mib(r.floor.unique_compressed_bytes),
        report.floor_level,
    );
    t += "| run | wire MiB | total s | downtime ms | wire ÷ QEMU | time ÷ QEMU | time ÷ floor | checks |\n";
    t += "|---|---:|---:|---:|---:|---:|---:|---|\n";
    for row in &r.rows {
        t += &format!(
            "| {} | {:.1} | {:.2} | {} | {} | {} | {} | {} |\n",
            row.name,
            mib(row.wire_bytes),
            row.total_ms as f64 / 1e3,
            opt(row.downtime_ms, 0),
            opt(row.wire_over_qemu, 3),
            opt(row.time_over_qemu, 2),
            opt(row.time_over_floor, 2),
            if row.ok { "ok" } else { "FAILED" },
        );
    }
    t
}

fn print_run(report: &RealReport, r: &LinkRun) {
    println!("\n{}", table(report, r));
    if let QemuOutcome::NotRun { why } = &r.qemu {
        println!("QEMU did not run: {why}");
    }
    if let QemuOutcome::Ran(q) = &r.qemu {
        println!("QEMU: {}", q.note);
    }
    for w in [&r.cold, &r.warm] {
        println!(
            "{}: {} (stream {:.1} MiB for {:.1} MiB of pages){}",
            w.vm,
            w.outcome,
            mib(w.stream_bytes),
            mib(w.page_bytes),
            w.error
                .as_deref()
                .map_or(String::new(), |e| format!("; error: {e}"))
        );
    }
    println!(
        "load average before {} / after {}; {:.0} s",
        r.load_before, r.load_after, r.wall_s
    );
}

/// The report's "Real memory" section from `dir`'s [`JSON_FILE`], if the
/// benchmark wrote one there.
pub fn section(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(JSON_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let report: RealReport = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a real-memory report", path.display()))?;
    let mut s = format!(
        "## Real memory\n\n{}: {}. Migrated over the same emulated link by QEMU 7.2 \
         (multifd x{}, zstd-1, downtime-limit {} ms) and by wanmig (two gateways with the \
         shipped defaults; cold, then a second VM from the same image to the same site), \
         by `cargo bench -p wanmig-benches --bench real_memory`. Wire bytes are IP bytes \
         that crossed the link; the floor assumes nothing at the destination.\n\n",
        report.image, report.description, report.qemu_channels, report.qemu_downtime_ms
    );
    for r in &report.runs {
        s += &table(&report, r);
        s += &format!(
            "\nLoad average before / after: {} / {}.\n\n",
            r.load_before, r.load_after
        );
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanmig(vm: &str, ok: bool, wire: u64, ms: u64) -> WanmigRun {
        WanmigRun {
            vm: vm.into(),
            ok,
            outcome: "succeeded".into(),
            total_ms: ms,
            downtime_ms: Some(400.0),
            wire_bytes: wire,
            stream_bytes: wire,
            page_bytes: 1 << 30,
            memory_verified: ok,
            error: None,
            record: None,
        }
    }

    #[test]
    fn the_report_section_reads_back_what_the_bench_wrote() {
        let dir = tempfile::tempdir().unwrap();
        assert!(section(dir.path()).unwrap().is_none());
        let image = ImageFloor {
            mem_bytes: 1 << 30,
            zero_pages: 0,
            distinct_pages: 1,
            unique_compressed_bytes: 12_500_000,
        };
        // 12.5 MB at 100 Mbit/s is 1 s, plus two 50 ms round trips.
        let floor = floor::floor(&image, 100_000_000, 50.0, 0, 0, PageRewrite::Word);
        let qemu = QemuOutcome::NotRun {
            why: "no QEMU".into(),
        };
        let (cold, warm) = (
            wanmig("cold", true, 20 << 20, 2200),
            wanmig("warm", false, 1 << 20, 550),
        );
        let rows = rows(&qemu, &cold, &warm, &floor);
        assert_eq!(rows.len(), 2, "no QEMU row when QEMU did not run");
        assert!((rows[0].time_over_floor.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(rows[0].wire_over_qemu, None);
        assert_eq!(rows[1].time_over_floor, None, "a failed run has no ratio");
        let report = RealReport {
            image: "img".into(),
            description: "an image".into(),
            mem_bytes: 1 << 30,
            image_floor: image,
            floor_level: 3,
            rtt_ms: 100,
            rate_bps: 100_000_000,
            qemu_downtime_ms: 300,
            qemu_channels: 2,
            runs: vec![LinkRun {
                loss: 0.001,
                floor,
                qemu,
                cold,
                warm,
                rows,
                load_before: "1.00".into(),
                load_after: "2.00".into(),
                wall_s: 1.0,
            }],
        };
        std::fs::write(
            dir.path().join(JSON_FILE),
            serde_json::to_vec(&report).unwrap(),
        )
        .unwrap();
        let s = section(dir.path()).unwrap().unwrap();
        assert!(s.starts_with("## Real memory"), "{s}");
        assert!(s.contains("0.10% random loss; floor 1.10 s"), "{s}");
        assert!(
            s.contains("| wanmig cold | 20.0 | 2.20 | 400 | - | - | 2.00 | ok |"),
            "{s}"
        );
        assert!(s.contains("| FAILED |"), "{s}");
    }
}
