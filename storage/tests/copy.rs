//! End-to-end storage copies over the in-process link with real files: the
//! background copy, on-demand reads during the copy, writes at the
//! destination, a link cut and restore, a destination crash and resume, and
//! bad source files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wanmig_storage::copy::{CopyConfig, InProcessCopy, LinkConfig};
use wanmig_storage::testdisk::{build_image, ImageMix};
use wanmig_storage::{
    disk_digest, release_source, PlannerConfig, ReleasePolicy, RemoteDiskConfig, StorageError,
};

const MIB: u64 = 1 << 20;
const BS: u64 = 64 * 1024;

struct Fixture {
    _dir: tempfile::TempDir,
    source: PathBuf,
    dest: PathBuf,
    len: u64,
}

fn fixture(len: u64, seed: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.img");
    let dest = dir.path().join("dest.img");
    build_image(&source, len, ImageMix::default(), seed).unwrap();
    Fixture {
        _dir: dir,
        source,
        dest,
        len,
    }
}

fn config(delay_ms: u64, rate_mbit: Option<u64>) -> CopyConfig {
    CopyConfig {
        disk: RemoteDiskConfig {
            planner: PlannerConfig {
                read_timeout: Duration::from_secs(20),
                request_timeout: Duration::from_secs(5),
                ..PlannerConfig::default()
            },
            persist_every_blocks: 16,
            ..RemoteDiskConfig::default()
        },
        link: LinkConfig {
            one_way_delay: Duration::from_millis(delay_ms),
            rate_bits_per_sec: rate_mbit.map(|m| m * 1_000_000),
            zstd_level: 1,
        },
    }
}

fn read_source(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, off)
        .unwrap();
    buf
}

/// A copy of the source with `writes` applied: what the destination must
/// hold at the end.
fn expected_digest(source: &Path, writes: &[(u64, Vec<u8>)]) -> blake3::Hash {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(source, tmp.path()).unwrap();
    let f = File::options().write(true).open(tmp.path()).unwrap();
    for (off, data) in writes {
        f.write_all_at(data, *off).unwrap();
    }
    disk_digest(tmp.path()).unwrap()
}

#[test]
fn background_copy_completes_with_identical_digest_and_skips_holes() {
    let fx = fixture(24 * MIB, 1);
    let before = disk_digest(&fx.source).unwrap();
    let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(0, None)).unwrap();
    assert!(
        copy.disk().wait_all_local(Duration::from_secs(60)),
        "copy did not finish: {:?}",
        copy.disk().progress()
    );
    copy.disk().complete().unwrap();
    assert!(copy.errors().is_empty(), "{:?}", copy.errors());
    let m = copy.disk().metrics().snapshot();
    let blocks = fx.len / BS;
    assert!(m.hole_blocks_skipped > blocks / 3, "holes skipped: {m:?}");
    assert_eq!(
        m.hole_blocks_skipped + m.blocks_copied,
        blocks,
        "every block is a hole or copied once: {m:?}"
    );
    assert!(m.bytes_before_reduction <= copy.source_allocated_bytes() + blocks * BS / 10);
    assert!(
        m.bytes_after_reduction < m.bytes_before_reduction * 3 / 4,
        "zero blocks and zstd shrink the copy: {m:?}"
    );
    copy.shutdown().unwrap();
    assert_eq!(disk_digest(&fx.dest).unwrap(), before);
    assert_eq!(disk_digest(&fx.source).unwrap(), before, "source untouched");
    // The sidecar says complete: re-opening needs nothing from the source.
    let again = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(0, None)).unwrap();
    assert!(again.disk().is_all_local());
    assert_eq!(again.requests_sent(), 0);
    // Release by policy only after completion.
    release_source(&fx.source, ReleasePolicy::Keep).unwrap();
    assert!(fx.source.exists());
}

#[test]
fn on_demand_reads_during_the_copy_return_source_bytes_fast() {
    let fx = fixture(32 * MIB, 2);
    // 20 ms one way, 40 Mbit/s: the background copy takes several seconds.
    let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(20, Some(40))).unwrap();
    let disk = Arc::clone(copy.disk());
    // Reads near the end of the disk, which the background copy reaches last.
    let mut offsets: Vec<u64> = (0..12)
        .map(|i| fx.len - (i + 1) * 2 * MIB + 4096 * i + 17)
        .collect();
    offsets.push(fx.len - 5000);
    for off in offsets {
        let len = 5000usize.min((fx.len - off) as usize);
        let mut buf = vec![0u8; len];
        disk.read_at(off, &mut buf).unwrap();
        assert_eq!(buf, read_source(&fx.source, off, len), "read at {off}");
    }
    let m = disk.metrics().snapshot();
    assert!(m.blocks_fetched_on_demand > 0, "{m:?}");
    assert!(
        m.demand_latency_count > 0 && m.demand_latency_p50 >= Duration::from_millis(40),
        "RTT is 40 ms: {m:?}"
    );
    assert!(
        disk.wait_all_local(Duration::from_secs(90)),
        "{:?}",
        disk.progress()
    );
    drop(copy);
    assert_eq!(
        disk_digest(&fx.dest).unwrap(),
        disk_digest(&fx.source).unwrap()
    );
}

#[test]
fn writes_at_the_destination_win_over_the_copy() {
    let fx = fixture(16 * MIB, 3);
    let source_before = disk_digest(&fx.source).unwrap();
    let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(5, Some(60))).unwrap();
    let disk = Arc::clone(copy.disk());
    let mut writes = Vec::new();
    // Whole blocks, unaligned spans over partial blocks, a short write, the last byte.
    for (i, &(off, len)) in [
        (10 * BS, BS as usize),
        (200 * BS + 100, 3 * BS as usize),
        (100 * BS + 7, 511),
        (fx.len - 1, 1),
        (3 * BS, 2 * BS as usize),
    ]
    .iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8 + 1))
            .collect();
        disk.write_at(off, &data).unwrap();
        let mut back = vec![0u8; len];
        disk.read_at(off, &mut back).unwrap();
        assert_eq!(back, data, "read-your-write at {off}");
        writes.push((off, data));
    }
    assert!(
        disk.wait_all_local(Duration::from_secs(60)),
        "{:?}",
        disk.progress()
    );
    disk.complete().unwrap();
    let m = disk.metrics().snapshot();
    // Blocks 10, 3 and 4 are written whole; those not holes at the source
    // became local by the write, not by the copy.
    assert!(m.blocks_written_locally >= 1, "{m:?}");
    drop(copy);
    assert_eq!(
        disk_digest(&fx.dest).unwrap(),
        expected_digest(&fx.source, &writes),
        "destination = source + writes at B"
    );
    assert_eq!(
        disk_digest(&fx.source).unwrap(),
        source_before,
        "the source copy is never written"
    );
}

#[test]
fn link_cut_stalls_io_and_the_copy_resumes_after_restore() {
    let fx = fixture(24 * MIB, 4);
    let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(10, Some(50))).unwrap();
    let disk = Arc::clone(copy.disk());
    // Let the copy make some progress, then cut.
    while disk.progress().0 < disk.progress().1 / 2 + 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    copy.cut();
    let at_cut = disk.progress().0;
    assert!(!disk.is_all_local());
    // A read of a block that is not local waits through the outage.
    // The last block with data at the source: the background copy, which
    // goes front to back, has not reached it.
    let missing = (0..fx.len / BS)
        .rev()
        .map(|b| b * BS)
        .find(|&off| {
            read_source(&fx.source, off, BS as usize)
                .iter()
                .any(|&x| x != 0)
        })
        .unwrap();
    let reader = {
        let disk = Arc::clone(&disk);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            disk.read_at(missing + 100, &mut buf).map(|_| buf)
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !reader.is_finished(),
        "the read waits while the link is cut"
    );
    let during = disk.progress().0;
    assert!(
        during <= at_cut + 2,
        "nothing arrives over a cut link ({at_cut} -> {during})"
    );
    copy.restore();
    let buf = reader
        .join()
        .unwrap()
        .expect("the waiting read completes after the link returns");
    assert_eq!(buf, read_source(&fx.source, missing + 100, 4096));
    assert!(
        disk.wait_all_local(Duration::from_secs(60)),
        "{:?}",
        disk.progress()
    );
    let stats = disk.planner_stats();
    assert!(
        stats.blocks_reissued > 0,
        "in-flight blocks were re-issued: {stats:?}"
    );
    assert!(copy.errors().is_empty(), "{:?}", copy.errors());
    drop(copy);
    assert_eq!(
        disk_digest(&fx.dest).unwrap(),
        disk_digest(&fx.source).unwrap(),
        "nothing lost"
    );
}

#[test]
fn a_long_outage_times_out_guest_io_with_a_clear_error() {
    let fx = fixture(8 * MIB, 5);
    let mut cfg = config(5, Some(20));
    cfg.disk.planner.read_timeout = Duration::from_millis(300);
    let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, cfg).unwrap();
    let disk = Arc::clone(copy.disk());
    copy.cut();
    // The last block with data at the source is not local yet (20 Mbit/s).
    let off = (0..fx.len / BS)
        .rev()
        .map(|b| b * BS)
        .find(|&o| {
            read_source(&fx.source, o, BS as usize)
                .iter()
                .any(|&x| x != 0)
        })
        .unwrap();
    let mut buf = vec![0xeeu8; 512];
    let err = disk.read_at(off, &mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let msg = err.to_string();
    assert!(msg.contains("timed out") && msg.contains("link"), "{msg}");
    assert!(buf.iter().all(|&b| b == 0xee), "no made-up data on timeout");
    let err = disk.write_at(off + 10, &[1, 2, 3]).unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "a partial write needs the block too"
    );
    assert!(disk.metrics().snapshot().fetch_timeouts >= 2);
    // After the outage everything completes and matches.
    copy.restore();
    assert!(disk.wait_all_local(Duration::from_secs(60)));
    disk.read_at(off, &mut buf).unwrap();
    assert_eq!(buf, read_source(&fx.source, off, 512));
    drop(copy);
    assert_eq!(
        disk_digest(&fx.dest).unwrap(),
        disk_digest(&fx.source).unwrap()
    );
}

#[test]
fn destination_crash_mid_copy_resumes_from_the_bitmap() {
    let fx = fixture(24 * MIB, 6);
    let source_before = disk_digest(&fx.source).unwrap();
    let total_data_blocks;
    let mut writes = Vec::new();
    {
        let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(5, Some(60))).unwrap();
        let disk = Arc::clone(copy.disk());
        let m0 = disk.metrics().snapshot();
        total_data_blocks = fx.len / BS - m0.hole_blocks_skipped;
        // Write at B and flush: these must survive the crash.
        let data = vec![0x5au8; 3 * BS as usize];
        disk.write_at(40 * BS + 99, &data).unwrap();
        writes.push((40 * BS + 99, data));
        disk.flush().unwrap();
        // Crash once the periodic save (from the tick thread) has recorded
        // half of the data blocks.
        let sidecar = disk.sidecar_path().to_owned();
        let holes = m0.hole_blocks_skipped;
        loop {
            let saved = wanmig_storage::PresenceBitmap::load(&sidecar, disk.geometry())
                .unwrap()
                .map_or(0, |b| b.present_count());
            if saved >= holes + total_data_blocks / 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!disk.is_all_local());
        // Crash: drop everything without a final persist.
        drop(copy);
        drop(disk);
    }
    assert_eq!(
        disk_digest(&fx.source).unwrap(),
        source_before,
        "the source stays complete and authoritative"
    );
    let copy = InProcessCopy::start(&fx.source, &fx.dest, fx.len, config(5, Some(60))).unwrap();
    let disk = Arc::clone(copy.disk());
    let (present_at_resume, total) = disk.progress();
    assert!(
        present_at_resume > total / 2,
        "resumed with progress: {present_at_resume}/{total}"
    );
    assert!(
        disk.wait_all_local(Duration::from_secs(60)),
        "{:?}",
        disk.progress()
    );
    let m = disk.metrics().snapshot();
    assert!(
        m.blocks_copied < total_data_blocks * 3 / 4,
        "only the rest is copied again: {m:?} of {total_data_blocks}"
    );
    disk.complete().unwrap();
    drop(copy);
    assert_eq!(
        disk_digest(&fx.dest).unwrap(),
        expected_digest(&fx.source, &writes),
        "flushed writes at B survive the crash"
    );
}

#[test]
fn bad_source_files_fail_before_anything_moves() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let len = 4 * MIB;
    let cfg = config(0, None);

    let err = InProcessCopy::start(&src, &dst, len, cfg).unwrap_err();
    assert!(matches!(err, StorageError::SourceMissing { .. }), "{err}");
    assert!(!dst.exists(), "nothing created at the destination");

    build_image(&src, len - 4096, ImageMix::default(), 9).unwrap();
    let err = InProcessCopy::start(&src, &dst, len, cfg).unwrap_err();
    assert!(matches!(err, StorageError::SourceTruncated { .. }), "{err}");
    assert!(err.to_string().contains(&src.display().to_string()));

    build_image(&src, len + BS, ImageMix::default(), 9).unwrap();
    let err = InProcessCopy::start(&src, &dst, len, cfg).unwrap_err();
    assert!(matches!(err, StorageError::SourceTooLarge { .. }), "{err}");
    assert!(!dst.exists());

    // A destination copy that belongs to another disk is refused too.
    build_image(&src, len, ImageMix::default(), 9).unwrap();
    std::fs::write(&dst, vec![1u8; 4096]).unwrap();
    std::fs::write(wanmig_storage::presence::sidecar_path(&dst), b"garbage").unwrap();
    let err = InProcessCopy::start(&src, &dst, len, cfg).unwrap_err();
    assert!(matches!(err, StorageError::PresenceCorrupt { .. }), "{err}");
    std::fs::remove_file(wanmig_storage::presence::sidecar_path(&dst)).unwrap();
    let err = InProcessCopy::start(&src, &dst, len, cfg).unwrap_err();
    assert!(
        matches!(err, StorageError::LocalSizeMismatch { .. }),
        "{err}"
    );
}
