//! Follow-on storage copy through two real gateways over the emulated WAN
//! (250 Mbit/s, 100 ms RTT): a 1 GiB ext4 image holding
//! copies of real text (`/usr/share/doc`) and binaries (`/usr/bin`) plus
//! free space, built without mounting by `mke2fs -d` (Debian's e2fsprogs;
//! without it the storage crate's synthetic image generator stands in, and
//! the output says so). Measures the copy time, payload bytes on the wire
//! against the source's allocated bytes, and the latency of 4 KiB reads at
//! the destination during the copy — reads of blocks still at the source
//! (fetched on demand) beside reads of blocks already local. Then a second
//! disk with the same content is copied against the destination's now warm
//! page store (`[migration] store_dir`; disk pages dedup like memory pages)
//! and its wire bytes are compared. Prints the figures and writes
//! `target/storage_wan.json`.
//!
//! ```sh
//! cargo bench -p wanmig-benches --bench storage_wan
//! ```
//!
//! No KVM or root needed (loopback UDP through the userspace emulator).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use wanmig_gateway::lab::MeshBuilder;
use wanmig_storage::testdisk::{build_image, ImageMix};
use wanmig_storage::{ReleasePolicy, RemoteDisk, RemoteDiskConfig, SourceDisk};

const DISK: u64 = 1 << 30;
const RTT: Duration = Duration::from_millis(100);
const RATE_BPS: u64 = 250_000_000;
const READ: usize = 4096;

/// Builds the ext4 image; `Ok(false)` when mke2fs is not installed.
fn build_ext4(img: &Path, staging: &Path) -> anyhow::Result<bool> {
    if Command::new("mke2fs").arg("-V").output().is_err() {
        return Ok(false);
    }
    std::fs::create_dir_all(staging)?;
    for (src, name) in [("/usr/share/doc", "doc"), ("/usr/bin", "bin")] {
        let st = Command::new("cp")
            .args(["-a", "--no-preserve=ownership", src])
            .arg(staging.join(name))
            .status()
            .context("running cp")?;
        if !st.success() {
            bail!("copying {src} into the staging directory failed");
        }
    }
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(staging)
        .arg(img)
        .arg("1G")
        .output()
        .context("running mke2fs")?;
    if !out.status.success() {
        bail!(
            "mke2fs -d failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)?
        .set_len(DISK)?;
    std::fs::remove_dir_all(staging)?;
    Ok(true)
}

#[derive(Default)]
struct Latencies {
    on_demand: Vec<Duration>,
    local: Vec<Duration>,
}

fn percentile(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// Reads 4 KiB at random allocated offsets every few milliseconds until
/// stopped, timing each and classing it by whether its block was local.
fn reader(
    disk: Arc<RemoteDisk>,
    extents: Vec<std::ops::Range<u64>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Latencies> {
    std::thread::spawn(move || {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let total: u64 = extents.iter().map(|e| e.end - e.start).sum();
        let bs = u64::from(disk.geometry().block_size());
        let mut lat = Latencies::default();
        let mut buf = vec![0u8; READ];
        while !stop.load(Ordering::Acquire) && total > 0 {
            // A uniformly random allocated byte, aligned down to 4 KiB.
            let mut k = rng.random_range(0..total);
            let mut off = 0;
            for e in &extents {
                let len = e.end - e.start;
                if k < len {
                    off = (e.start + k) & !(READ as u64 - 1);
                    break;
                }
                k -= len;
            }
            let off = off.min(DISK - READ as u64);
            let local = disk.is_block_local(off / bs);
            let t = Instant::now();
            if let Err(e) = disk.read_at(off, &mut buf) {
                eprintln!("read at {off} failed: {e}");
                break;
            }
            let took = t.elapsed();
            if local {
                lat.local.push(took);
            } else {
                lat.on_demand.push(took);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        lat
    })
}

async fn run() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir_in(root.join("target")).context("temp dir in target/")?;
    let src = work.path().join("src.img");
    let t = Instant::now();
    let image = if build_ext4(&src, &work.path().join("staging"))? {
        "ext4 (mke2fs -d: /usr/share/doc + /usr/bin, rest free)"
    } else {
        println!(
            "storage_wan: mke2fs not found (Debian: e2fsprogs); using the synthetic test image"
        );
        build_image(
            &src,
            DISK,
            ImageMix {
                text: 30,
                binary: 25,
                random: 10,
                zeros: 5,
                partial: 30,
            },
            1,
        )?;
        "synthetic (wanmig_storage::testdisk)"
    };
    let source = SourceDisk::open(&src, DISK, wanmig_storage::DEFAULT_BLOCK_SIZE)?;
    let allocated = source.allocated_bytes();
    let extents = source.extents().to_vec();
    drop(source);
    println!(
        "storage_wan: {image}, {} MiB allocated of {} MiB (built in {:.1} s)",
        allocated >> 20,
        DISK >> 20,
        t.elapsed().as_secs_f64()
    );

    let mesh = MeshBuilder::new(2)
        .wan(RTT, RATE_BPS)
        .extra_config("[migration]\nstore_dir = \"store-{site}\"\nstore_cap_mib = 2048\n")
        .start()
        .await?;
    if !mesh.wait_all_up(Duration::from_secs(20)).await {
        bail!("the two gateways did not connect");
    }
    let a = mesh.gw("site-a").storage().clone();
    let b = mesh.gw("site-b").storage().clone();
    a.export("bench.img", &src, DISK, ReleasePolicy::Keep, "site-b")?;
    let dst = work.path().join("dst.img");
    let started = Instant::now();
    let import = b
        .import(
            "site-a",
            "bench.img",
            &dst,
            DISK,
            RemoteDiskConfig::default(),
        )
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = reader(Arc::clone(import.disk()), extents, Arc::clone(&stop));
    let report = import.finish().await?;
    let copy = started.elapsed();
    stop.store(true, Ordering::Release);
    let mut lat = reads
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;

    // A second disk with the same content, against the warm page store.
    let src2 = work.path().join("src2.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&src2)
        .status()?;
    if !st.success() {
        bail!("copying the image for the second disk failed");
    }
    a.export("bench2.img", &src2, DISK, ReleasePolicy::Keep, "site-b")?;
    let started2 = Instant::now();
    let second = b
        .import(
            "site-a",
            "bench2.img",
            &work.path().join("dst2.img"),
            DISK,
            RemoteDiskConfig::default(),
        )
        .await?
        .finish()
        .await?;
    let copy2 = started2.elapsed();
    mesh.shutdown().await;

    let (d50, d99) = (
        percentile(&mut lat.on_demand, 0.5),
        percentile(&mut lat.on_demand, 0.99),
    );
    let (l50, l99) = (
        percentile(&mut lat.local, 0.5),
        percentile(&mut lat.local, 0.99),
    );
    let ratio = report.wire_bytes as f64 / allocated.max(1) as f64;
    println!(
        "storage_wan: 1 GiB over {} Mbit/s, {} ms RTT: copy {:.1} s, wire {:.1} MiB for {:.1} MiB allocated ({:.0}%), verified {}",
        RATE_BPS / 1_000_000,
        RTT.as_millis(),
        copy.as_secs_f64(),
        report.wire_bytes as f64 / (1 << 20) as f64,
        allocated as f64 / (1 << 20) as f64,
        ratio * 100.0,
        report.verified
    );
    println!(
        "storage_wan: guest 4 KiB reads during the copy: on demand p50 {d50:.1} ms p99 {d99:.1} ms (n={}), local p50 {l50:.3} ms p99 {l99:.3} ms (n={})",
        lat.on_demand.len(),
        lat.local.len()
    );
    println!(
        "storage_wan: a second disk with the same content (warm page store): copy {:.1} s, wire {:.1} MiB ({:.1}% of the first copy's), verified {}",
        copy2.as_secs_f64(),
        second.wire_bytes as f64 / (1 << 20) as f64,
        second.wire_bytes as f64 * 100.0 / report.wire_bytes.max(1) as f64,
        second.verified
    );
    let json = serde_json::json!({
        "image": image,
        "disk_bytes": DISK,
        "allocated_bytes": allocated,
        "link": { "rtt_ms": RTT.as_millis() as u64, "rate_bps": RATE_BPS },
        "copy_ms": copy.as_millis() as u64,
        "wire_bytes": report.wire_bytes,
        "wire_over_allocated": ratio,
        "verified": report.verified,
        "reads_on_demand": { "n": lat.on_demand.len(), "p50_ms": d50, "p99_ms": d99 },
        "reads_local": { "n": lat.local.len(), "p50_ms": l50, "p99_ms": l99 },
        "second_copy_same_content": {
            "copy_ms": copy2.as_millis() as u64,
            "wire_bytes": second.wire_bytes,
            "verified": second.verified,
        },
    });
    let out = root.join("target/storage_wan.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("storage_wan: wrote {}", out.display());
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("storage_wan: {e:#}");
        std::process::exit(1);
    }
}
