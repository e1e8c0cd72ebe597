//! The demo VM's disk: a sparse file the guest's disk workload writes and
//! verifies while it runs, the wait for the follow-on storage copy to make
//! it local at the destination, and the check of the destination's copy
//! against the guest-abi model of what the guest wrote.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use wanmig_guest_abi::virtio::{disk_block_fill, disk_iteration_block, DISK_BLOCK_WORDS};
use wanmig_migration::machine::DiskConfig;

use crate::vms::{DiskState, VmHost};

/// Bytes per disk-workload block (one sector).
const BLOCK: u64 = 512;
/// Blocks the guest writes and verifies per disk iteration.
pub const BLOCKS_PER_ITERATION: u64 = 64;
/// How long the follow-on storage copy may take before the demo gives up.
const COPY_TIMEOUT: Duration = Duration::from_secs(180);

/// The storage part of the demo's report.
#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    pub disk_bytes: u64,
    /// Bytes the storage copy put on the WAN.
    pub wire_bytes: u64,
    /// From the copy's start to the disk being local at the destination.
    pub total_ms: u64,
    /// The destination's disk equals the guest-abi model of the disk after
    /// the guest's last reported disk iteration, and the guest reported no
    /// disk verification errors.
    pub verified: bool,
    /// Disk iterations the guest had finished when the disk was checked.
    pub iterations: u64,
    /// Disk iterations the guest finished at the source before the move.
    pub iterations_at_source: u64,
    /// Disk verification errors the guest reported.
    pub guest_errors: u64,
    /// Blocks that differ from the model (0 when verified).
    pub blocks_mismatched: u64,
    /// Why the copy or the check failed, when it did.
    pub error: Option<String>,
}

/// Creates a sparse disk of `bytes` at `path` and the VM's disk config.
pub fn create(path: &Path, bytes: u64, seed: u64) -> Result<DiskConfig> {
    if bytes == 0 || bytes % BLOCK != 0 {
        bail!("--disk must be a positive multiple of 512 bytes (got {bytes})");
    }
    std::fs::File::create(path)
        .and_then(|f| f.set_len(bytes))
        .with_context(|| format!("creating the sparse disk {}", path.display()))?;
    Ok(DiskConfig {
        path: path.to_path_buf(),
        seed,
        blocks_per_iteration: BLOCKS_PER_ITERATION,
        iterations: 0,
    })
}

/// The guest's latest disk report: `[iteration, digest, verified, errors]`.
pub fn guest_report(host: &VmHost, vm: &str) -> Option<[u64; 4]> {
    host.reports(vm)?
        .latest(wanmig_guest_abi::REPORT_DISK_ITERATION)
        .map(|r| [r.values[0], r.values[1], r.values[2], r.values[3]])
}

/// Waits until the VM's disk at `host` is local; returns where it lives and
/// the copy's figures.
pub async fn wait_local(host: &VmHost, vm: &str) -> Result<(PathBuf, u64, u64, u64)> {
    let deadline = Instant::now() + COPY_TIMEOUT;
    loop {
        match host.disk_state(vm) {
            Some(DiskState::Local {
                path,
                disk_bytes,
                wire_bytes,
                total_ms,
                ..
            }) => return Ok((path, disk_bytes, wire_bytes, total_ms)),
            Some(DiskState::Failed { reason, from }) => {
                bail!("the storage copy from {from} failed: {reason}")
            }
            other => {
                if Instant::now() > deadline {
                    bail!(
                        "the storage copy did not finish within {COPY_TIMEOUT:?} (state: {})",
                        other.map_or("none".into(), |s| s.to_string())
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which iteration last wrote each block after `done` complete iterations
/// (`None`: never written, still a hole).
fn last_writers(done: u64, total_blocks: u64) -> Vec<Option<u64>> {
    let mut last = vec![None; total_blocks as usize];
    let span = BLOCKS_PER_ITERATION.min(total_blocks);
    // Every block is rewritten within this many iterations.
    let lookback = total_blocks.div_ceil(span) + 1;
    for i in done.saturating_sub(lookback)..done {
        for k in 0..span {
            let b = disk_iteration_block(i, k, BLOCKS_PER_ITERATION, total_blocks);
            last[b as usize] = Some(i);
        }
    }
    last
}

fn block_matches(got: &[u8], seed: u64, block: u64, writer: Option<u64>) -> bool {
    match writer {
        None => got.iter().all(|&b| b == 0),
        Some(i) => {
            let mut words = [0u64; DISK_BLOCK_WORDS];
            disk_block_fill(seed, i, block, &mut words);
            got.chunks_exact(8)
                .zip(words.iter())
                .all(|(c, w)| c == w.to_le_bytes())
        }
    }
}

/// Compares `image` with the model after the guest reported iteration
/// `reported` (so `reported + 1` iterations are complete; the guest may be
/// part way through the next one, so each block may also hold that one's
/// content). Returns the blocks that differ.
pub fn mismatched_blocks(image: &[u8], seed: u64, reported: u64) -> u64 {
    let total = image.len() as u64 / BLOCK;
    let done = last_writers(reported + 1, total);
    let partial = last_writers(reported + 2, total);
    let mut bad = 0;
    for block in 0..total {
        let got = &image[(block * BLOCK) as usize..((block + 1) * BLOCK) as usize];
        let b = block as usize;
        if !block_matches(got, seed, block, done[b]) && !block_matches(got, seed, block, partial[b])
        {
            bad += 1;
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_image(seed: u64, total: u64, iterations: u64) -> Vec<u8> {
        let mut img = vec![0u8; (total * BLOCK) as usize];
        let mut words = [0u64; DISK_BLOCK_WORDS];
        for i in 0..iterations {
            for k in 0..BLOCKS_PER_ITERATION.min(total) {
                let b = disk_iteration_block(i, k, BLOCKS_PER_ITERATION, total);
                disk_block_fill(seed, i, b, &mut words);
                let at = (b * BLOCK) as usize;
                for (j, w) in words.iter().enumerate() {
                    img[at + 8 * j..at + 8 * j + 8].copy_from_slice(&w.to_le_bytes());
                }
            }
        }
        img
    }

    #[test]
    fn an_image_the_guest_wrote_matches_and_a_changed_one_does_not() {
        let (seed, total) = (7, 1000);
        // Enough iterations to wrap around the disk.
        let img = model_image(seed, total, 40);
        assert_eq!(mismatched_blocks(&img, seed, 39), 0);
        // Part way through iteration 40: still consistent.
        let ahead = model_image(seed, total, 41);
        assert_eq!(mismatched_blocks(&ahead, seed, 39), 0);
        // A flipped byte, or a disk two iterations behind, is caught.
        let mut bad = img.clone();
        bad[BLOCK as usize * 3 + 5] ^= 1;
        assert_eq!(mismatched_blocks(&bad, seed, 39), 1);
        assert!(mismatched_blocks(&model_image(seed, total, 38), seed, 39) > 0);
        // Untouched blocks must be holes.
        let mut young = model_image(seed, total, 2);
        assert_eq!(mismatched_blocks(&young, seed, 1), 0);
        young[(total * BLOCK - 1) as usize] = 1;
        assert_eq!(mismatched_blocks(&young, seed, 1), 1);
    }
}
